//! The registry phase: write latency as the fleet grows, with and without a deployment, and
//! CONNECT latency while writes run.
//!
//! On one fresh hub, for each fleet size in `--registry` (ascending): edge devices tagged
//! `fleet=registry` are added with bulk `POST /devices` of 100 until the fleet has that size;
//! then `--samples` twin tag PATCHes (on devices spread over the fleet) and as many single edge
//! device creates (`PUT /devices/{id}`) are timed one after another, first without a deployment,
//! then with one at-scale deployment of a module to the whole fleet (created, and deleted again
//! afterwards, each timed: those evaluate every device once, a page at a time; while it is
//! created, another connection PATCHes twins and the slowest of those is reported). At the largest size the hub's
//! memory is read; twin PATCHes from 32 service connections at once are timed; and CONNECT →
//! CONNACK of a plain device is timed (from a thread and runtime of the benchmark's own) alone,
//! while those 32 connections PATCH twins at 1,000 per second in all, while they GET twins at that
//! rate instead, and while they PATCH, then GET, as fast as the hub answers. GETs are the same
//! TLS and HTTP work without a write: they tell what the writes themselves cost CONNECT from what
//! sharing two cores with the load does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};
use serde_json::{json, Value};

use super::{
    auth, bulk_create, percentile, Identity, Mqtt, Options, Rest, Result, Row, Target, TlsConnector,
};

/// Plain devices that CONNECT is timed with.
const PROBES: usize = 100;
const DEPLOYMENT: &str = "registry-deployment";

fn device_id(n: usize) -> String {
    format!("reg-{n:06}")
}

/// Runs the registry phase and appends its rows.
pub async fn phase(options: &Options, rows: &mut Vec<Row>) -> Result<()> {
    let target = Target::start("registry")?;
    let mut rest = target.rest().await?;
    let probes: Vec<Identity> = (0..PROBES)
        .map(|i| Identity {
            device_id: format!("probe-{i:03}"),
            module_id: None,
        })
        .collect();
    let items = probes
        .iter()
        .map(|p| json!({ "id": p.device_id, "importMode": "create", "authentication": auth() }))
        .collect();
    bulk_create(&mut rest, items).await?;
    let mut sizes = options.registry.clone();
    sizes.sort_unstable();
    let (mut fleet, mut created) = (0, 0);
    for &size in &sizes {
        let t = Instant::now();
        let grown = size.saturating_sub(fleet);
        let items = (fleet..size.max(fleet))
            .map(|n| {
                json!({
                    "id": device_id(n), "importMode": "create", "authentication": auth(),
                    "capabilities": { "iotEdge": true }, "tags": { "fleet": "registry" },
                })
            })
            .collect();
        bulk_create(&mut rest, items).await?;
        fleet = fleet.max(size);
        eprintln!(
            "registry: {fleet} edge devices (+{grown} in {:.1?})",
            t.elapsed()
        );
        for deployed in [false, true] {
            let mut evaluation = String::new();
            if deployed {
                let (took, meanwhile) = create_deployment_while_patching(&target, fleet).await?;
                evaluation = format!(
                    "; deployment created in {:.2} s (hub then holds {} fds; {} PATCHes sent meanwhile: p50 {:.1} ms, slowest {:.1} ms)",
                    took.as_secs_f64(),
                    target.hub.fds(),
                    meanwhile.len(),
                    ms(percentile(&meanwhile, 0.5)),
                    ms(meanwhile.last().copied().unwrap_or_default())
                );
            }
            let mut patches = Vec::with_capacity(options.samples);
            let mut creates = Vec::with_capacity(options.samples);
            for i in 0..options.samples {
                let id = device_id(i * 7919 % fleet.max(1));
                let body = json!({ "tags": { "fleet": "registry", "sample": i } });
                patches.push(timed(&mut rest, "PATCH", &format!("/twins/{id}"), &body).await?);
                let id = format!("new-{created:06}");
                created += 1;
                let body = json!({ "deviceId": id, "capabilities": { "iotEdge": true } });
                creates.push(timed(&mut rest, "PUT", &format!("/devices/{id}"), &body).await?);
            }
            if deployed {
                let path = format!("/configurations/{DEPLOYMENT}");
                let took = timed(&mut rest, "DELETE", &path, &Value::Null).await?;
                evaluation.push_str(&format!(", deleted in {:.2} s", took.as_secs_f64()));
            }
            let with = if deployed { "with" } else { "without" };
            for (what, times) in [
                ("twin tag PATCH", &mut patches),
                ("device create (PUT)", &mut creates),
            ] {
                times.sort();
                rows.push((
                    format!("{what} at {fleet} edge devices, {with} a deployment"),
                    format!(
                        "p50 {:.1} ms, p99 {:.1} ms",
                        ms(percentile(times, 0.5)),
                        ms(percentile(times, 0.99))
                    ),
                    format!("{} writes one after another{evaluation}", times.len()),
                ));
            }
        }
    }
    let (rss, hwm) = target.hub.memory();
    rows.push((
        format!(
            "hub memory at {} registered devices",
            fleet + created + PROBES
        ),
        format!("VmRSS {rss:.0} MiB, VmHWM {hwm:.0} MiB"),
        format!("{} fds", target.hub.fds()),
    ));
    concurrent_patches(&target, options.samples, fleet, rows).await?;
    connect_latency(&target, &probes, options.samples, fleet, rows).await
}

/// Creates the deployment (timed) while another service connection PATCHes twins one after
/// another: the PUT's time and the PATCHes' times, sorted. The evaluation of every device goes a
/// page at a time, so the PATCHes get in between.
async fn create_deployment_while_patching(
    target: &Target,
    fleet: usize,
) -> Result<(Duration, Vec<Duration>)> {
    let mut deployer = target.rest().await?;
    let mut patcher = target.rest().await?;
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let creating = tokio::spawn(async move {
        let path = format!("/configurations/{DEPLOYMENT}");
        let took = timed(&mut deployer, "PUT", &path, &deployment()).await;
        finished.store(true, Ordering::Relaxed);
        took
    });
    let mut meanwhile = Vec::new();
    let mut i = 0;
    while !done.load(Ordering::Relaxed) {
        let id = device_id(i * 7919 % fleet.max(1));
        let body = json!({ "tags": { "fleet": "registry", "during": i } });
        meanwhile.push(timed(&mut patcher, "PATCH", &format!("/twins/{id}"), &body).await?);
        i += 1;
    }
    let took = creating.await??;
    meanwhile.sort();
    Ok((took, meanwhile))
}

/// Service connections that PATCH twins at the same time in the concurrent-writes measure, and
/// that keep up the load while CONNECT is timed.
const CONCURRENT: usize = 32;

/// Twin tag PATCHes from [`CONCURRENT`] service connections at once, each sending `samples`
/// one after another: every write's latency and how many the hub answers per second (writes
/// arriving together share a commit).
async fn concurrent_patches(
    target: &Target,
    samples: usize,
    fleet: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let mut connections = Vec::with_capacity(CONCURRENT);
    for _ in 0..CONCURRENT {
        connections.push(target.rest().await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut rest) in connections.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(samples);
            for i in 0..samples {
                let id = device_id((c * samples + i) * 7919 % fleet.max(1));
                let body = json!({ "tags": { "fleet": "registry", "concurrent": i } });
                times.push(timed(&mut rest, "PATCH", &format!("/twins/{id}"), &body).await?);
            }
            Ok::<_, super::Error>(times)
        }));
    }
    let mut times = Vec::with_capacity(CONCURRENT * samples);
    for task in tasks {
        times.extend(task.await??);
    }
    let elapsed = started.elapsed();
    times.sort();
    rows.push((
        format!("twin tag PATCH at {fleet} edge devices, {CONCURRENT} service connections at once"),
        format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99))
        ),
        format!(
            "{} writes in {:.2} s: {:.0} per second",
            times.len(),
            elapsed.as_secs_f64(),
            times.len() as f64 / elapsed.as_secs_f64()
        ),
    ));
    Ok(())
}

/// Requests per second in all of a paced load.
const PACED: u32 = 1000;

/// What the service connections keep sending while CONNECTs are timed.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// Twin tag PATCHes: writes, each fsynced.
    Writes,
    /// Twin GETs: the same TLS and HTTP work without a write, to tell what the writes themselves
    /// cost CONNECT from what sharing two cores with the load costs.
    Reads,
}

/// How fast the load is sent.
#[derive(Clone, Copy, PartialEq)]
enum Rate {
    /// [`PACED`] requests per second in all: a busy fleet back end.
    Paced,
    /// As fast as the hub answers.
    FlatOut,
}

/// CONNECT → CONNACK times of the probe devices alone, then under each load at each rate.
async fn connect_latency(
    target: &Target,
    probes: &[Identity],
    samples: usize,
    fleet: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let loads = [
        None,
        Some((Load::Writes, Rate::Paced)),
        Some((Load::Reads, Rate::Paced)),
        Some((Load::Writes, Rate::FlatOut)),
        Some((Load::Reads, Rate::FlatOut)),
    ];
    for load in loads {
        let (times, rate) = connects_under(target, probes, samples, fleet, load).await?;
        let (when, detail) = match load {
            None => (
                "alone".to_owned(),
                format!("{samples} connects one after another"),
            ),
            Some((what, pace)) => {
                let (verb, noun) = match what {
                    Load::Writes => ("PATCHes", "wrote"),
                    Load::Reads => ("GETs", "read"),
                };
                let how = match pace {
                    Rate::Paced => "at a steady rate",
                    Rate::FlatOut => "flat out",
                };
                (
                    format!("while twin {verb} run {how}"),
                    format!("{samples} connects; {CONCURRENT} service connections {noun} {rate:.0} twins/s meanwhile"),
                )
            }
        };
        rows.push((
            format!("CONNECT → CONNACK at {fleet} edge devices, {when}"),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms",
                ms(percentile(&times, 0.5)),
                ms(percentile(&times, 0.99))
            ),
            detail,
        ));
    }
    Ok(())
}

/// `samples` CONNECT → CONNACK times (sorted) while [`CONCURRENT`] service connections keep up
/// `load` (if any), and the load's requests per second.
async fn connects_under(
    target: &Target,
    probes: &[Identity],
    samples: usize,
    fleet: usize,
    load: Option<(Load, Rate)>,
) -> Result<(Vec<Duration>, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut services = Vec::new();
    for w in 0..load.map_or(0, |_| CONCURRENT) {
        let Some((what, pace)) = load else { break };
        let mut rest = target.rest().await?;
        let (stop, done) = (stop.clone(), done.clone());
        services.push(tokio::spawn(async move {
            let mut i = w;
            let period = Duration::from_secs_f64(CONCURRENT as f64 / PACED as f64);
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                if pace == Rate::Paced {
                    ticks.tick().await;
                }
                let path = format!("/twins/{}", device_id(i % fleet.max(1)));
                match what {
                    Load::Writes => {
                        let body = json!({ "tags": { "fleet": "registry", "load": i } });
                        call_ok(&mut rest, "PATCH", &path, &body).await?
                    }
                    Load::Reads => call_ok(&mut rest, "GET", &path, &Value::Null).await?,
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += CONCURRENT * 101;
            }
            Ok::<_, super::Error>(())
        }));
    }
    if load.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (d0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    let times = connects(target, probes, samples).await?;
    let rate = (done.load(Ordering::Relaxed) - d0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for service in services {
        service.await??;
    }
    Ok((times, rate))
}

/// Times `count` CONNECT → CONNACK exchanges (after TLS), cycling through `probes`; sorted.
/// The probe runs on a thread and runtime of its own, so that its times are the hub's and not
/// those of the benchmark's own tasks making the load.
async fn connects(target: &Target, probes: &[Identity], count: usize) -> Result<Vec<Duration>> {
    let (tls, addr, probes) = (target.tls.clone(), target.mqtt_addr, probes.to_vec());
    let probe = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime
            .block_on(timed_connects(&tls, addr, &probes, count))
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    let times = probe.join().map_err(|_| "the CONNECT probe panicked")??;
    Ok(times)
}

async fn timed_connects(
    tls: &TlsConnector,
    addr: SocketAddr,
    probes: &[Identity],
    count: usize,
) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let identity = &probes[i % probes.len()];
        let mut mqtt = Mqtt::new(super::tls_connect(tls, addr).await?);
        let connect = identity.connect_packet()?;
        let t = Instant::now();
        mqtt.send(connect).await?;
        match mqtt.next().await? {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {}
            other => return Err(format!("CONNECT refused: {other:?}").into()),
        }
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times)
}

fn deployment() -> Value {
    json!({
        "id": DEPLOYMENT,
        "targetCondition": "tags.fleet='registry'",
        "priority": 1,
        "content": { "modulesContent": {
            "$edgeAgent": { "properties.desired": {
                "schemaVersion": "1.1",
                "modules": { "filter": {
                    "type": "docker", "status": "running", "restartPolicy": "always",
                    "settings": { "image": "edgetwin/filter:0.1.0-arm32v7" },
                } },
            } },
        } },
    })
}

async fn call_ok(rest: &mut Rest, method: &str, path: &str, body: &Value) -> Result<()> {
    let (status, reply) = rest.call(method, path, body).await?;
    if !(200..300).contains(&status) {
        return Err(format!("{method} {path} failed: {status} {reply}").into());
    }
    Ok(())
}

/// How long a successful `call_ok` took.
async fn timed(rest: &mut Rest, method: &str, path: &str, body: &Value) -> Result<Duration> {
    let t = Instant::now();
    call_ok(rest, method, path, body).await?;
    Ok(t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
