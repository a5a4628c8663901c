//! Read-only query load benchmark (not a timed test): a fresh local hub (`edgetwin hub`, ports
//! 0) with N device twins (`edgetwin provision`), then what `registryRead` clients can cost
//! everyone else:
//!
//! - CONNECT→CONNACK of a device, alone and while 8 `registryRead` clients loop scans
//!   (`WHERE deviceId = 'nobody'`) and GROUP BYs over every twin;
//! - the hub's RSS (sampled every 5 ms) during 8 concurrent aggregates over every twin;
//! - `edgetwin query --output json` paging a GROUP BY of one group a twin (N groups), and of
//!   a quarter of them (TOP), to see that paging is linear.
//!
//! Run it with the release build when the machine is idle:
//!
//! ```text
//! cargo bench --bench query_load                  # N=20000, 200 CONNECTs a phase
//! cargo bench --bench query_load -- --count 5000 --connects 100
//! ```

use edgetwin_test_support as support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{load_average, number_args, stdout_of_success, Hub, HubOptions, Rest, TempDir};

const SCAN: &str = "SELECT * FROM devices WHERE deviceId = 'nobody'";
const GROUP_BY: &str = "SELECT status AS s, COUNT() AS n FROM devices GROUP BY status";
const COUNT: &str = "SELECT COUNT() AS n FROM devices";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let [count, connects] = number_args([("--count", 20_000), ("--connects", 200)]);
    println!("load average before: {}", load_average());
    let dir = TempDir::new("bench-query-load");
    let options = HubOptions {
        rust_log: Some("warn"),
        timeout: Duration::from_secs(60),
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), options);
    let out = hub
        .edgetwin()
        .args([
            "provision",
            "--count",
            &count.to_string(),
            "--prefix",
            "bench-",
        ])
        .args(["--rate", "0"])
        .output()
        .unwrap();
    stdout_of_success("edgetwin provision", &out);
    let key = hub.rest.create_device("sensor").await;
    let readers: Vec<Arc<Rest>> = (0..8)
        .map(|_| Arc::new(Rest::with_policy(&hub.info, "registryRead", true)))
        .collect();
    let twins = count + 1;

    println!("\n{twins} device twins\n");
    println!("| measure | result |");
    println!("|---|---|");
    let alone = connect_times(&hub, &key, connects).await;
    println!("| CONNECT→CONNACK alone | {} |", percentiles(alone));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = readers
        .iter()
        .enumerate()
        .map(|(i, reader)| {
            let (reader, stop) = (reader.clone(), stop.clone());
            tokio::spawn(async move {
                let mut done = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let query = [SCAN, GROUP_BY][i % 2];
                    let (status, rows, _) = reader.query_page(query, None, None).await;
                    assert_eq!(status, 200, "{query}: {rows}");
                    done += 1;
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let loaded = connect_times(&hub, &key, connects).await;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut queries = 0;
    for task in loops {
        queries += task.await.unwrap();
    }
    println!(
        "| CONNECT→CONNACK while 8 registryRead clients loop scans and GROUP BYs ({:.1} queries/s) | {} |",
        queries as f64 / seconds,
        percentiles(loaded)
    );

    let (before, _) = hub.proc.memory_kib();
    let tasks: Vec<_> = readers
        .iter()
        .enumerate()
        .map(|(i, reader)| {
            let reader = reader.clone();
            tokio::spawn(async move {
                let query = [COUNT, GROUP_BY][i % 2];
                let (status, rows, _) = reader.query_page(query, None, None).await;
                assert_eq!(status, 200, "{query}: {rows}");
            })
        })
        .collect();
    let started = Instant::now();
    let mut most = before;
    while !tasks.iter().all(|t| t.is_finished()) {
        most = most.max(hub.proc.memory_kib().0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "| hub RSS during 8 concurrent aggregates (all answered in {:.2} s) | {:.1} MiB before, {:.1} MiB peak |",
        started.elapsed().as_secs_f64(),
        before as f64 / 1024.0,
        most as f64 / 1024.0
    );

    for groups in [twins / 4, twins] {
        let query = format!(
            "SELECT TOP {groups} deviceId AS id, COUNT() AS n FROM devices GROUP BY deviceId"
        );
        let started = Instant::now();
        let out = hub
            .edgetwin()
            .args(["query", &query, "--output", "json"])
            .output()
            .unwrap();
        let took = started.elapsed();
        let stdout = stdout_of_success(&query, &out);
        let rows = serde_json::from_str::<Vec<Value>>(&stdout).unwrap().len();
        assert_eq!(rows, groups);
        println!(
            "| `edgetwin query` paging a GROUP BY of {groups} groups ({} pages) | {:.2} s |",
            groups.div_ceil(100),
            took.as_secs_f64()
        );
    }
    println!("\nload average after: {}", load_average());
}

/// `count` CONNECT→CONNACK times of device `sensor`, one after another.
async fn connect_times(hub: &Hub, key: &str, count: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let (_stream, took) = support::mqtt_device(hub, "sensor", key, &[]).await;
        times.push(took);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    times
}

/// `p50 … ms, p99 … ms, max … ms` of `times`.
fn percentiles(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}
