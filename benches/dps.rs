//! DPS registration benchmark (not a timed test): a fleet registering through the hub's Device
//! Provisioning Service over MQTT with one symmetric-key enrollment group, as devices flashed
//! with one image do. Against a fresh `edgetwin hub` (ports 0):
//!
//! 1. `edgetwin provision --dps --count N` makes the group and writes the N aziot `config.toml`
//!    files (timed: the fleet's configuration);
//! 2. N devices, at most C at a time, each with the key of its file: TLS to the MQTT port,
//!    CONNECT (`{idScope}/registrations/{id}/api-version=2019-03-31`, SAS with
//!    `skn=registration`), SUBSCRIBE `$dps/registrations/res/#`, PUBLISH `iotdps-register`, the
//!    202, then `iotdps-get-operationstatus` until `assigned` (timed: registrations per second).
//!    The devices poll at once instead of waiting the 202's `retry-after` (1 s), which the SDKs
//!    honour: this measures the hub, not the wait;
//! 3. the hub's resident memory after.
//!
//! With `--linked 1`, a second hub is linked with `--dps-linked-hub`: the group names no hub, so
//! `hashed` allocation sends about half the devices there, each created through that hub's
//! service REST API during its registration.
//!
//! ```text
//! cargo bench --bench dps -- --count 10000 --concurrency 256 [--linked 1]
//! ```
//!
//! It prints a markdown table and the load average before and after.

use edgetwin_test_support as support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use edgetwin_wire::dps;
use edgetwin_wire::sas::generate_token;
use edgetwin_wire::Secret;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use support::{load_average, read_packet, tls_connect, tls_trusting, Hub, HubOptions, TempDir};
use tokio::io::AsyncWriteExt;

/// The hub under load, and what a device needs to reach it.
struct Target {
    port: u16,
    host: String,
    id_scope: String,
    tls: Arc<rustls::ClientConfig>,
}

/// Registers `registration_id` with `key`; panics unless it ends `assigned`.
async fn register(target: &Target, registration_id: &str, key: &str) {
    let mut stream = tls_connect(target.port, target.tls.clone(), target.host.clone())
        .await
        .expect("TLS to the MQTT port");
    let resource = dps::registration_resource(&target.id_scope, registration_id);
    let token = generate_token(
        &Secret::new(key),
        &resource,
        support::unix_now() as u64 + 3600,
        Some(dps::REGISTRATION_KEY_NAME),
    )
    .unwrap();
    let mut connect = Connect::new(registration_id);
    connect.set_login(
        format!("{resource}/api-version={}", dps::DEVICE_API_VERSION),
        token.expose(),
    );
    let packets = [
        Packet::Connect(connect),
        Packet::Subscribe(Subscribe::new(dps::RESPONSE_FILTER, QoS::AtMostOnce)),
        Packet::Publish(Publish::new(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            QoS::AtMostOnce,
            format!("{{\"registrationId\":\"{registration_id}\"}}"),
        )),
    ];
    send(&mut stream, packets).await;
    let mut buffer = BytesMut::new();
    loop {
        match read_packet(&mut stream, &mut buffer).await {
            Packet::Publish(publish)
                if publish.topic.starts_with("$dps/registrations/res/202/") =>
            {
                let status: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
                let operation = status["operationId"].as_str().unwrap().to_owned();
                let poll = Publish::new(
                    format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={operation}"),
                    QoS::AtMostOnce,
                    " ",
                );
                send(&mut stream, [Packet::Publish(poll)]).await;
            }
            Packet::Publish(publish)
                if publish.topic.starts_with("$dps/registrations/res/200/") =>
            {
                let status: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
                assert_eq!(status["status"], "assigned", "{status}");
                break;
            }
            Packet::Publish(publish) => panic!("{registration_id}: {}", publish.topic),
            Packet::ConnAck(ack) => {
                assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success)
            }
            _ => {}
        }
    }
    send(&mut stream, [Packet::Disconnect]).await;
}

async fn send<const N: usize>(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    packets: [Packet; N],
) {
    let mut out = BytesMut::new();
    for packet in packets {
        packet.write(&mut out, usize::MAX).unwrap();
    }
    stream.write_all(&out).await.unwrap();
}

/// The registration id and key of each `config.toml` under `out`.
fn devices(out: &Path) -> Vec<(String, String)> {
    let mut devices: Vec<(String, String)> = std::fs::read_dir(out)
        .unwrap()
        .map(|entry| {
            let dir = entry.unwrap().path();
            let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("symmetric_key = { value = \""))
                .and_then(|rest| rest.strip_suffix("\" }"))
                .unwrap()
                .to_owned();
            (dir.file_name().unwrap().to_string_lossy().into_owned(), key)
        })
        .collect();
    devices.sort();
    devices
}

fn main() {
    let [count, concurrency, linked] =
        support::number_args([("--count", 10_000), ("--concurrency", 256), ("--linked", 0)]);
    let load_before = load_average();
    let dir = TempDir::new("bench-dps");
    let (hub_dir, other_dir) = (dir.join("hub"), dir.join("linked"));
    for path in [&hub_dir, &other_dir] {
        std::fs::create_dir_all(path).unwrap();
    }
    let other = (linked > 0).then(|| Hub::start(&other_dir, HubOptions::default()));
    let link = other.as_ref().map(|other| {
        let ca = other.ca();
        format!(
            "{};CaFile={}",
            other.service_connection_string(),
            ca.display()
        )
    });
    let link_args: Vec<&str> = match &link {
        Some(link) => vec!["--dps-linked-hub", link],
        None => Vec::new(),
    };
    let hub = Hub::start(
        &hub_dir,
        HubOptions {
            args: &link_args,
            ..HubOptions::default()
        },
    );
    let id_scope = hub.info["dps"]["idScope"].as_str().unwrap().to_owned();
    let out = dir.join("fleet");
    let started = Instant::now();
    let status = Command::new(support::edgetwin())
        .args([
            "provision",
            "--dps",
            "--prefix",
            "bench-",
            "--id-scope",
            &id_scope,
        ])
        .args(["--count", &count.to_string(), "--out"])
        .arg(&out)
        .args([
            "--global-endpoint",
            &format!("https://{}:{}", hub.host_name(), hub.https_port()),
        ])
        .arg("--ca-file")
        .arg(hub.ca())
        .env(
            "DPS_CONNECTION_STRING",
            hub.info["dps"]["connectionString"].as_str().unwrap(),
        )
        .status()
        .unwrap();
    assert!(status.success(), "edgetwin provision --dps failed");
    let configured = started.elapsed();
    let devices = devices(&out);
    assert_eq!(devices.len(), count);

    let target = Arc::new(Target {
        port: hub.mqtt_port(),
        host: hub.host_name().to_owned(),
        id_scope,
        tls: tls_trusting(&hub.ca()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = Vec::with_capacity(count);
        for (registration_id, key) in devices {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                register(&target, &registration_id, &key).await;
                drop(permit);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let registered = started.elapsed();
    let (rss, peak) = hub.proc.memory_kib();
    println!("| devices | concurrency | linked hubs | `provision --dps` (config files) | registrations over MQTT | per second | hub RSS after (peak) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {count} | {concurrency} | {} | {:.2} s | {:.1} s | {:.0} | {} MiB ({} MiB) |",
        1 + usize::from(other.is_some()),
        configured.as_secs_f64(),
        registered.as_secs_f64(),
        count as f64 / registered.as_secs_f64(),
        rss / 1024,
        peak / 1024
    );
    println!(
        "\nload average before: {load_before}; after: {}",
        load_average()
    );
}
