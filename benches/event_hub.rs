//! Telemetry throughput through the hub (not a timed test): MQTT in, the Event Hub-compatible
//! endpoint out. Against a fresh `edgetwin hub` (ports 0):
//!
//! 1. D devices connect over MQTT/TLS and each publishes its share of N telemetry messages at
//!    QoS 1, keeping W unacknowledged at a time (a PUBACK comes after the message's group commit
//!    is fsynced: every acknowledged message is on disk);
//! 2. meanwhile one AMQP/TLS connection (SASL PLAIN with a service token, as Event Hubs clients
//!    may authenticate) receives on the 4 partitions of `$Default` from the start of the stream;
//! 3. printed: messages/s in (first publish to last PUBACK), messages/s out (first publish to
//!    last delivery), latency publish → delivery (p50, p99), the CPU time of the hub and of the
//!    bench's clients over that time (per message), the hub's RSS after, and the RSS each idle
//!    receiver adds (C more receivers attached and waiting, measured after; five on each
//!    partition of each consumer group, Event Hubs' most, so C ≤ 400 in 20 groups).
//!
//! ```text
//! cargo bench --bench event_hub -- --messages 100000 --devices 16 --window 200 --consumers 400
//! ```
//!
//! Release build of the hub (`cargo bench` builds it: see `support::edgetwin`).

use edgetwin_test_support as support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use edgetwin_wire::sas::generate_token;
use edgetwin_wire::Secret;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Session};
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use support::{load_average, read_packet, tls_connect, tls_trusting, Hub, HubOptions, TempDir};
use tokio::io::AsyncWriteExt;

/// The Event Hubs filter that names where a receiver starts.
const SELECTOR: &str = "apache.org:selector-filter:string";

/// Event Hubs' most receivers on one partition of one consumer group.
const MAX_READERS: usize = 5;

/// Microseconds since the Unix epoch: the publish time written into each message's body.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Publishes `count` messages as device `id` (key `key`), `window` unacknowledged at most;
/// returns when the last PUBACK came.
async fn publish(hub: Arc<Hub>, id: String, key: String, count: usize, window: usize) {
    let (stream, code) = support::mqtt_connect(&hub, &id, None, &key).await;
    assert_eq!(code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let acks = {
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut buffer = BytesMut::new();
            let mut acked = 0;
            while acked < count {
                if let Packet::PubAck(_) = read_packet(&mut reader, &mut buffer).await {
                    acked += 1;
                    permits.add_permits(1);
                }
            }
            reader
        })
    };
    let topic = format!("devices/{id}/messages/events/");
    for n in 0..count {
        permits.acquire().await.unwrap().forget();
        let mut publish = Publish::new(&topic, QoS::AtLeastOnce, format!("{} {n}", now_micros()));
        publish.pkid = (n % 65_000 + 1) as u16;
        let mut out = BytesMut::new();
        Packet::Publish(publish)
            .write(&mut out, usize::MAX)
            .unwrap();
        writer.write_all(&out).await.unwrap();
    }
    // done at the last PUBACK: disconnect (waiting for the read half to end instead waited for
    // the hub's keep-alive timeout, 15 s, which the figures of `eb638af` to `005829e` include)
    let reader = acks.await.unwrap();
    let mut stream = reader.unsplit(writer);
    let mut out = BytesMut::new();
    Packet::Disconnect.write(&mut out, usize::MAX).unwrap();
    stream.write_all(&out).await.unwrap();
    let _ = stream.shutdown().await;
}

/// An AMQP connection to the hub's Event Hub-compatible endpoint as `service` (SASL PLAIN with
/// a token) and a session on it.
async fn amqp_session(
    hub: &Hub,
) -> (
    fe2o3_amqp::connection::ConnectionHandle<()>,
    fe2o3_amqp::session::SessionHandle<()>,
) {
    let host = hub.host_name().to_owned();
    let stream = tls_connect(hub.amqp_port(), tls_trusting(&hub.ca()), host.clone())
        .await
        .expect("TLS to the AMQP port");
    let key = hub.info["policies"]["service"].as_str().unwrap();
    let token = generate_token(
        &Secret::new(key),
        &host,
        support::unix_now() as u64 + 3600,
        Some("service"),
    )
    .unwrap();
    let mut connection = Connection::builder()
        .container_id("bench-event-hub")
        .hostname(host.as_str())
        .sasl_profile(SaslProfile::Plain {
            username: format!("service@sas.root.{host}"),
            password: token.expose().to_owned(),
        })
        .open_with_stream(stream)
        .await
        .expect("AMQP open");
    let session = Session::begin(&mut connection).await.expect("AMQP begin");
    (connection, session)
}

/// The address of partition `partition` of consumer group `group`.
fn partition_address(hub: &Hub, group: &str, partition: usize) -> String {
    let name = hub.info["eventHubName"].as_str().unwrap();
    format!("{name}/ConsumerGroups/{group}/Partitions/{partition}")
}

/// The consumer group idle receiver `n` attaches to: `$Default`, then `idle-1`, `idle-2`, …,
/// each taking five receivers on each of the 4 partitions.
fn idle_group(n: usize) -> String {
    match n / (4 * MAX_READERS) {
        0 => "$Default".to_owned(),
        group => format!("idle-{group}"),
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    sorted[((sorted.len() as f64 * fraction) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let [messages, devices, window, consumers] = support::number_args([
        ("--messages", 100_000),
        ("--devices", 16),
        ("--window", 200),
        ("--consumers", 400),
    ]);
    let load_before = load_average();
    let dir = TempDir::new("bench-event-hub");
    // the groups the idle receivers need besides `$Default`
    let groups: Vec<String> = (1..consumers.div_ceil(4 * MAX_READERS))
        .flat_map(|n| ["--consumer-group".to_owned(), format!("idle-{n}")])
        .collect();
    let args: Vec<&str> = groups.iter().map(String::as_str).collect();
    let hub = Arc::new(Hub::start(
        dir.path(),
        HubOptions {
            args: &args,
            ..HubOptions::default()
        },
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let each = messages / devices;
    let total = each * devices;
    let (in_secs, out_secs, mut latencies, (hub_cpu, bench_cpu)) = runtime.block_on(async {
        let mut keys = Vec::new();
        for d in 0..devices {
            let id = format!("bench-{d}");
            keys.push((id.clone(), hub.rest.create_device(&id).await));
        }
        let (_connection, mut session) = amqp_session(&hub).await;
        let (latency_tx, mut latency_rx) = tokio::sync::mpsc::unbounded_channel();
        for partition in 0..4 {
            let mut receiver = Receiver::attach(
                &mut session,
                format!("bench-{partition}"),
                partition_address(&hub, "$Default", partition),
            )
            .await
            .expect("attach a partition receiver");
            let latency_tx = latency_tx.clone();
            tokio::spawn(async move {
                while let Ok(delivery) = receiver.recv::<Body<Value>>().await {
                    let received = now_micros();
                    let sent = match delivery.body() {
                        Body::Data(data) => {
                            let text = String::from_utf8_lossy(&data[0].0);
                            text.split(' ').next().unwrap().parse::<u64>().unwrap()
                        }
                        other => panic!("not a data body: {other:?}"),
                    };
                    let _ = receiver.accept(&delivery).await;
                    if latency_tx.send(received.saturating_sub(sent)).is_err() {
                        break;
                    }
                }
            });
        }
        let started = Instant::now();
        let cpu_before = (hub.proc.cpu_time(), support::cpu_time(std::process::id()));
        let publishers: Vec<_> = keys
            .into_iter()
            .map(|(id, key)| tokio::spawn(publish(hub.clone(), id, key, each, window)))
            .collect();
        for publisher in publishers {
            publisher.await.unwrap();
        }
        let in_secs = started.elapsed().as_secs_f64();
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            match tokio::time::timeout(Duration::from_secs(60), latency_rx.recv()).await {
                Ok(Some(latency)) => latencies.push(latency),
                _ => panic!("{} of {total} messages received", latencies.len()),
            }
        }
        let out_secs = started.elapsed().as_secs_f64();
        let cpu = (
            hub.proc.cpu_time() - cpu_before.0,
            support::cpu_time(std::process::id()) - cpu_before.1,
        );
        (in_secs, out_secs, latencies, cpu)
    });
    let (rss_kib, peak_kib) = hub.proc.memory_kib();
    // idle receivers: attached from the end of the stream, waiting
    let idle_kib = runtime.block_on(async {
        let (_connection, mut session) = amqp_session(&hub).await;
        let mut idle = Vec::with_capacity(consumers);
        for n in 0..consumers {
            let receiver = Receiver::builder()
                .name(format!("idle-{n}"))
                .source(
                    Source::builder()
                        .address(partition_address(&hub, &idle_group(n), n % 4))
                        .add_to_filter(
                            SELECTOR,
                            Described {
                                descriptor: Descriptor::Name(SELECTOR.into()),
                                value: Value::String(
                                    "amqp.annotation.x-opt-offset > '@latest'".into(),
                                ),
                            },
                        )
                        .build(),
                )
                .attach(&mut session)
                .await
                .expect("attach an idle receiver");
            idle.push(receiver);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (with_idle, _) = hub.proc.memory_kib();
        drop(idle);
        with_idle.saturating_sub(rss_kib)
    });
    latencies.sort_unstable();
    println!("| messages | devices | window | in (msg/s) | out (msg/s) | p50 / p99 latency (ms) | hub RSS after (peak) | per idle receiver |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {total} | {devices} | {window} | {:.0} | {:.0} | {:.1} / {:.1} | {:.1} MiB ({:.1} MiB) | {:.1} KiB ({consumers} attached) |",
        total as f64 / in_secs,
        total as f64 / out_secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        rss_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        idle_kib as f64 / consumers as f64,
    );
    println!(
        "CPU from the first publish to the last delivery: hub {:.2} s ({:.1} µs a message), \
         bench clients {:.2} s ({:.1} µs a message), over {out_secs:.2} s",
        hub_cpu.as_secs_f64(),
        hub_cpu.as_secs_f64() * 1e6 / total as f64,
        bench_cpu.as_secs_f64(),
        bench_cpu.as_secs_f64() * 1e6 / total as f64,
    );
    println!(
        "load average before: {load_before}; after: {}",
        load_average()
    );
}
