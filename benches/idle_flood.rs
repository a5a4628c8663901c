//! Idle flood: N unauthenticated TLS connections opened against `edgetwin hub`'s MQTT port and
//! left idle, then one well-behaved device connects. Numbers, not a pass/fail test (issue 14's
//! "with 20,000 idle unauthenticated TLS connections opened against it, a well-behaved device
//! still connects and the hub's CPU stays below one core"):
//!
//! - how many flood connections completed their TLS handshake, and how many the hub has closed
//!   (its per-listener cap closes the oldest unauthenticated one when full; TLS and CONNECT
//!   timeouts close the rest);
//! - the device's CONNECT → CONNACK time while the flood is open;
//! - the hub's CPU (user + system, from `/proc/<pid>/stat`) over the flood, in cores.
//!
//! The flood runs in child processes of this bench (`FLOOD_PER_CHILD` connections each), so that
//! no single process needs more file descriptors than the usual hard limit.
//!
//! ```text
//! cargo bench --bench idle_flood                        # 20000 connections
//! cargo bench --bench idle_flood -- --connections 5000
//! ```

use edgetwin_test_support as support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Hub, HubOptions, TempDir};
use tokio::io::AsyncReadExt;

/// Connections one flood child opens.
const FLOOD_PER_CHILD: usize = 5000;
/// Set in a flood child: `port,count,ca-file,host`.
const CHILD_VARIABLE: &str = "EDGETWIN_IDLE_FLOOD_CHILD";

/// A flood child: opens `count` TLS connections (64 at a time), prints how many completed, then
/// holds them until its stdin closes, and prints how many the hub had closed by then.
fn flood_child(spec: &str) {
    let mut parts = spec.splitn(4, ',');
    let port: u16 = parts.next().unwrap().parse().unwrap();
    let count: usize = parts.next().unwrap().parse().unwrap();
    let ca = parts.next().unwrap().to_owned();
    let host = parts.next().unwrap().to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let tls = support::tls_trusting(Path::new(&ca));
        let mut streams = Vec::with_capacity(count);
        let mut batch = tokio::task::JoinSet::new();
        let mut started = 0;
        while streams.len() + batch.len() < count || !batch.is_empty() {
            while started < count && batch.len() < 64 {
                batch.spawn(support::tls_connect(port, tls.clone(), host.clone()));
                started += 1;
            }
            match batch.join_next().await {
                Some(Ok(Ok(stream))) => streams.push(stream),
                Some(_) => {}
                None => break,
            }
        }
        println!("open {}", streams.len());
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        let mut closed = 0;
        for mut stream in streams {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                closed += 1;
            }
        }
        println!("closed {closed}");
    });
}

/// The sum over the flood children of the number on each one's next line, after `label`.
fn sum_of(lines: &mut [impl Iterator<Item = std::io::Result<String>>], label: &str) -> usize {
    lines
        .iter_mut()
        .map(|l| {
            let line = l.next().expect("a flood child ended").unwrap();
            line.strip_prefix(label).unwrap().parse::<usize>().unwrap()
        })
        .sum()
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_VARIABLE) {
        flood_child(&spec);
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let connections: usize = args
        .iter()
        .position(|a| a == "--connections")
        .and_then(|i| args.get(i + 1))
        .map_or(20_000, |n| n.parse().expect("--connections N"));
    let dir = TempDir::new("bench-idle-flood");
    let mut hub = Hub::start(
        dir.path(),
        HubOptions {
            rust_log: Some("warn"),
            ..HubOptions::default()
        },
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = runtime.block_on(async {
        let (status, body) = hub
            .rest
            .call("PUT", "/devices/well-behaved", Some(serde_json::json!({})))
            .await;
        assert_eq!(status, 200, "{body}");
        body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let baseline = runtime
        .block_on(support::mqtt_device(&hub, "well-behaved", &key, &[]))
        .1;
    let pid = hub.proc.child.id();
    let cpu_before = support::cpu_time(pid).as_secs_f64();
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    let mut left = connections;
    while left > 0 {
        let count = left.min(FLOOD_PER_CHILD);
        left -= count;
        let spec = format!(
            "{},{count},{},{}",
            hub.mqtt_port(),
            hub.ca().display(),
            hub.host_name()
        );
        children.push(
            Command::new(&exe)
                .env(CHILD_VARIABLE, spec)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let mut lines: Vec<_> = children
        .iter_mut()
        .map(|c| std::io::BufReader::new(c.stdout.take().unwrap()).lines())
        .collect();
    let opened = sum_of(&mut lines, "open ");
    let flood_secs = started.elapsed().as_secs_f64();
    let during = runtime
        .block_on(support::mqtt_device(&hub, "well-behaved", &key, &[]))
        .1;
    std::thread::sleep(Duration::from_secs(5));
    let wall = started.elapsed().as_secs_f64();
    let cores = (support::cpu_time(pid).as_secs_f64() - cpu_before) / wall;
    for child in &mut children {
        drop(child.stdin.take());
    }
    let closed = sum_of(&mut lines, "closed ");
    for mut child in children {
        let _ = child.wait();
    }
    println!("idle flood against the MQTT port: {connections} TLS connections asked for");
    println!("  completed the TLS handshake:  {opened} in {flood_secs:.1} s");
    println!("  closed by the hub by the end: {closed}");
    println!("  device CONNECT→CONNACK:       {baseline:?} before, {during:?} during the flood");
    println!("  hub CPU over {wall:.1} s:        {cores:.2} cores");
    assert!(hub.proc.running(), "the hub exited during the flood");
}
