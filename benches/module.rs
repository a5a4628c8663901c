//! `edgetwin-module` side by side with the same job done by Microsoft's Python module client
//! (`azure-iot-device`, `tests/python/bench_module.py`) against one local hub. Numbers, not a
//! pass/fail test:
//!
//! - stripped binary size with the image's `module` profile (`cargo build --profile module -p
//!   edgetwin-module`, the crate in `modules/edgetwin/`, as `scripts/build-module` builds it for
//!   the images; built here into `target/bench-module`), and that it does not link SQLite (the
//!   hub's store);
//! - time from process start to the first acknowledged reported patch;
//! - steady resident memory (VmRSS after ~10 s with telemetry every second);
//! - desired patch → reported acknowledgement latency, p50 and p99 over N patches made one after
//!   the other through the service REST API, measured with the hub's own clock: the reported
//!   section's `$metadata.$lastUpdated` minus the desired one's (telemetry is stopped for this
//!   phase so that only the acknowledgement updates reported properties).
//!
//! The Python SDK dials port 8883 only, so the hub listens there: nothing else may (CI's pytest
//! suite uses it too; this bench is not part of CI). Both clients use a module connection string
//! and the hub's CA file, one after the other (never at the same time).
//!
//! ```text
//! cargo bench --bench module                     # 200 patches
//! cargo bench --bench module -- --patches 500 --settle 10 --no-python
//! ```
//! `EDGETWIN_BENCH_MODULE_BIN=path` skips building the module; `EDGETWIN_BENCH_PYTHON=path`
//! chooses the interpreter (default `.venv/bin/python`); `EDGETWIN_BENCH_RUST_LOG` sets the
//! module's `RUST_LOG` (default `info`); `EDGETWIN_BENCH_KEEP=1` keeps the logs.

use edgetwin_test_support as support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{module_connection_string, poll, unix_now, Hub, HubOptions, Proc, Rest, TempDir};

const MQTT_PORT: u16 = 8883;
const DEVICE: &str = "bench-gw";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Seconds since UTC midnight of an `HH:MM:SS.fff…` clock.
fn clock_seconds(clock: &str) -> Option<f64> {
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.trim_end_matches('Z').parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// `2026-01-01T12:00:00.1234567Z` → seconds since UTC midnight.
fn iso_seconds(iso: &str) -> Option<f64> {
    clock_seconds(iso.split_once('T')?.1)
}

/// Difference of two times of day, across midnight.
fn day_diff(later: f64, earlier: f64) -> f64 {
    let d = later - earlier;
    if d < -43_200.0 {
        d + 86_400.0
    } else {
        d
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Patches `module`'s desired properties; returns the new `$version` and the hub's
/// `$lastUpdated` of desired (seconds since UTC midnight).
async fn patch_desired(rest: &Rest, module: &str, desired: Value) -> (i64, f64) {
    let desired = rest.patch_desired(DEVICE, module, desired).await;
    (
        desired["$version"].as_i64().unwrap(),
        iso_seconds(desired["$metadata"]["$lastUpdated"].as_str().unwrap()).unwrap(),
    )
}

/// Polls until the `name` acknowledgement carries `av == version` (30 s); returns the reported
/// section and when the poll saw it.
async fn wait_ack(rest: &Rest, module: &str, name: &str, version: i64) -> (Value, Instant) {
    poll(
        Duration::from_secs(30),
        Duration::from_millis(1),
        || async {
            let reported = rest.reported(DEVICE, module).await;
            if reported[name]["av"].as_i64() == Some(version) {
                return Ok((reported, Instant::now()));
            }
            Err(move || format!("{module}: no ack of {name} v{version}: {reported}"))
        },
    )
    .await
}

/// What one client measured.
#[derive(Default)]
struct Numbers {
    first_ack_ms: f64,
    rss_kib: u64,
    hwm_kib: u64,
    rss_after_kib: u64,
    telemetry: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    observed_p50_ms: f64,
    exit: Option<i32>,
}

enum Client {
    Rust(PathBuf),
    Python(PathBuf),
}

fn build_module() -> PathBuf {
    if let Ok(bin) = std::env::var("EDGETWIN_BENCH_MODULE_BIN") {
        return PathBuf::from(bin);
    }
    let target = Path::new(ROOT).join("target").join("bench-module");
    eprintln!(
        "building: cargo build --profile module -p edgetwin-module --target-dir {}",
        target.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(ROOT)
        .args([
            "build",
            "--profile",
            "module",
            "-p",
            "edgetwin-module",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "module build failed");
    target.join("module").join("edgetwin-module")
}

/// Whether the binary carries SQLite (it must not: only the hub uses it).
fn links_sqlite(bin: &Path) -> bool {
    let bytes = std::fs::read(bin).unwrap();
    [b"SQLite format 3".as_slice(), b"sqlite3_".as_slice()]
        .iter()
        .any(|needle| bytes.windows(needle.len()).any(|w| w == *needle))
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    rest: &Rest,
    client: &Client,
    module: &str,
    connection_string: &str,
    ca: &str,
    dir: &Path,
    settle: Duration,
    patches: usize,
) -> Numbers {
    let mut numbers = Numbers::default();
    patch_desired(rest, module, json!({"telemetryInterval": 1})).await;
    let log = dir.join(format!("{module}.log"));
    let t0 = unix_now();
    let started = Instant::now();
    let mut proc = match client {
        Client::Rust(bin) => {
            let rust_log =
                std::env::var("EDGETWIN_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
            let vars = [
                ("EDGETWIN_CONNECTION_STRING", connection_string),
                ("EDGETWIN_CA_FILE", ca),
                ("EDGETWIN_TELEMETRY_INTERVAL", "1"),
                ("RUST_LOG", &rust_log),
            ];
            support::start_module(bin, log.clone(), MQTT_PORT, &vars)
        }
        Client::Python(python) => Proc::spawn_with_stdout(
            Command::new(python)
                .arg(Path::new(ROOT).join("tests/python/bench_module.py"))
                .env("EDGETWIN_CONNECTION_STRING", connection_string)
                .env("EDGETWIN_CA_FILE", ca),
            Stdio::piped(),
            log.clone(),
        ),
    };

    // Start to the first acknowledged reported patch, by the client's own clock.
    numbers.first_ack_ms = match client {
        Client::Rust(_) => {
            let proc = &proc;
            poll(
                Duration::from_secs(30),
                Duration::from_millis(5),
                || async {
                    let text = proc.log();
                    if let Some(line) = text.lines().find(|l| l.contains("first reported patch")) {
                        // `<6> 2026-01-01 12:00:00.123 +00:00 [INF] ...`
                        let clock = line.split_whitespace().nth(2).unwrap();
                        let at = clock_seconds(clock).unwrap();
                        return Ok(day_diff(at, t0 % 86_400.0) * 1000.0);
                    }
                    Err(move || format!("no ack: {text}"))
                },
            )
            .await
        }
        Client::Python(_) => {
            let stdout = proc.child.stdout.take().unwrap();
            let line = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line
            })
            .await
            .unwrap();
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("python: {line:?}\n{}", support::read_log(&log)));
            (event["time"].as_f64().unwrap() - t0) * 1000.0
        }
    };

    // Steady memory with telemetry every second.
    tokio::time::sleep(settle.saturating_sub(started.elapsed())).await;
    (numbers.rss_kib, numbers.hwm_kib) = proc.memory_kib();
    numbers.telemetry = rest.telemetry(DEVICE, module).await.len();

    // Desired → reported acknowledgement, one patch at a time, telemetry stopped.
    let (v, _) = patch_desired(rest, module, json!({"telemetryInterval": 3600})).await;
    wait_ack(rest, module, "telemetryInterval", v).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut hub_ms = Vec::with_capacity(patches);
    let mut observed_ms = Vec::with_capacity(patches);
    for i in 0..patches {
        let sent = Instant::now();
        let thresholds = json!({"thresholds": {"cpuTemperature": 100 + (i % 50)}});
        let (v, desired_at) = patch_desired(rest, module, thresholds).await;
        let (reported, seen) = wait_ack(rest, module, "thresholds", v).await;
        let reported_at =
            iso_seconds(reported["$metadata"]["$lastUpdated"].as_str().unwrap()).unwrap();
        hub_ms.push(day_diff(reported_at, desired_at) * 1000.0);
        observed_ms.push(seen.duration_since(sent).as_secs_f64() * 1000.0);
    }
    hub_ms.sort_by(f64::total_cmp);
    observed_ms.sort_by(f64::total_cmp);
    numbers.p50_ms = percentile(&hub_ms, 50.0);
    numbers.p99_ms = percentile(&hub_ms, 99.0);
    numbers.max_ms = percentile(&hub_ms, 100.0);
    numbers.observed_p50_ms = percentile(&observed_ms, 50.0);
    numbers.rss_after_kib = proc.memory_kib().0;

    proc.signal(libc::SIGTERM);
    numbers.exit = proc.wait_exit(Duration::from_secs(15));
    numbers
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn main() {
    let mut patches = 200;
    let mut settle = Duration::from_secs(10);
    let mut python = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--patches" => patches = args.next().unwrap().parse().unwrap(),
            "--settle" => settle = Duration::from_secs(args.next().unwrap().parse().unwrap()),
            "--no-python" => python = false,
            "--bench" => {}
            other => eprintln!("ignoring argument {other}"),
        }
    }
    if std::net::TcpListener::bind(("0.0.0.0", MQTT_PORT)).is_err() {
        eprintln!("port {MQTT_PORT} is in use (another hub or the pytest suite?); stop it first");
        std::process::exit(2);
    }
    let module_bin = build_module();
    let size = std::fs::metadata(&module_bin).unwrap().len();
    let sqlite = links_sqlite(&module_bin);
    let python_bin = std::env::var("EDGETWIN_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(ROOT).join(".venv/bin/python"));
    let python = python && python_bin.exists();

    let dir = TempDir::new("bench-module");
    let options = HubOptions {
        mqtt_port: MQTT_PORT,
        rust_log: Some("warn"),
        timeout: Duration::from_secs(15),
        keep_alive: true,
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), options);
    let ca = hub.ca().to_str().unwrap().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rust, py) = runtime.block_on(async {
        hub.rest.create_edge_device(DEVICE).await;
        // Creates the module identity, then runs `client` as that module.
        let measure = |client: Client, module: &'static str| {
            let (hub, ca, dir) = (&hub, &ca, &dir);
            async move {
                let key = hub.rest.create_module(DEVICE, module).await;
                let cs = module_connection_string(hub.host_name(), DEVICE, module, &key);
                let (rest, dir) = (&hub.rest, dir.path());
                run_client(rest, &client, module, &cs, ca, dir, settle, patches).await
            }
        };
        eprintln!("running edgetwin-module ...");
        let rust = measure(Client::Rust(module_bin.clone()), "rs").await;
        let py = if python {
            eprintln!("running azure-iot-device ...");
            Some(measure(Client::Python(python_bin.clone()), "py").await)
        } else {
            None
        };
        (rust, py)
    });
    drop(hub);

    let loadavg = support::load_average();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "| {patches} patches, hub on loopback | edgetwin-module (Rust) | azure-iot-device (Python) | goal |"
    );
    println!("|---|---|---|---|");
    println!(
        "| stripped binary (module profile) | {:.2} MiB ({size} bytes){} | (interpreter + packages) | ≤ 6 MiB |",
        size as f64 / 1_048_576.0,
        if sqlite { ", LINKS SQLite" } else { ", no SQLite" }
    );
    // One row: what, each client's number, the goal.
    let row = |name: &str, number: &dyn Fn(&Numbers) -> String, goal: &str| {
        let python = py.as_ref().map_or_else(|| "not run".to_owned(), number);
        println!("| {name} | {} | {python} | {goal} |", number(&rust));
    };
    row(
        "steady RSS after ~10 s, telemetry every 1 s (VmRSS)",
        &|n| mib(n.rss_kib),
        "≤ 8 MiB and ≥ 5× less than Python",
    );
    row(
        "peak RSS (VmHWM) / RSS after the patches",
        &|n| format!("{} / {}", mib(n.hwm_kib), mib(n.rss_after_kib)),
        "",
    );
    type Stat = fn(&Numbers) -> f64;
    let ms = |decimals: usize, get: Stat| move |n: &Numbers| format!("{:.*} ms", decimals, get(n));
    row(
        "process start → first acknowledged reported patch",
        &ms(1, |n| n.first_ack_ms),
        "< 50 ms",
    );
    let percentiles: [(&str, Stat); 3] = [
        ("p50", |n| n.p50_ms),
        ("p99", |n| n.p99_ms),
        ("max", |n| n.max_ms),
    ];
    for (which, get) in percentiles {
        let name = format!("desired patch → reported ack, {which} (hub clock)");
        row(&name, &ms(2, get), "");
    }
    row(
        "PATCH sent → ack seen by polling REST, p50",
        &ms(2, |n| n.observed_p50_ms),
        "",
    );
    row(
        "telemetry messages in the first ~10 s",
        &|n| n.telemetry.to_string(),
        "",
    );
    row("exit code on SIGTERM", &|n| format!("{:?}", n.exit), "0");
    if let Some(py) = &py {
        if rust.rss_kib > 0 {
            println!(
                "\nPython / Rust steady RSS: {:.1}x",
                py.rss_kib as f64 / rust.rss_kib as f64
            );
        }
    }
    println!(
        "\nmachine: {cpus} CPUs, load average {loadavg}; command: cargo bench --bench module -- --patches {patches}"
    );
    if std::env::var_os("EDGETWIN_BENCH_KEEP").is_some() {
        println!("logs kept in {}", dir.keep().display());
    }
}
