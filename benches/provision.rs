//! Provisioning benchmark (not a timed test): 1,000 IoT Edge devices with a module identity each,
//! against a fresh local hub (`edgetwin hub`, ports 0) per measurement, done three ways:
//!
//! - `edgetwin provision --count N --prefix bench- --module edgetwin --rate 0` (bulk
//!   `POST /devices`, 100 devices in one request and their modules in the next, pacing off);
//! - Microsoft's Python service SDK (azure-iot-hub, `IoTHubRegistryManager`) the straightforward
//!   way: `create_device_with_sas` + `create_module_with_sas` per device;
//! - the same SDK with `bulk_create_or_update_devices`, 100 items per request (its
//!   `ExportImportDevice` has `module_id`, so modules go in bulk too: devices first, then their
//!   modules, since IoT Hub adds a module in bulk only to a device registered before the request).
//!
//! The Python side is `tests/python/bench_provision.py`, run with `.venv/bin/python` (override
//! with `EDGETWIN_BENCH_PYTHON`); `REQUESTS_CA_BUNDLE` points at the hub's CA. Everything runs as
//! processes, so wall times include process start-up (the in-process provisioning time is shown
//! too). Run it with the release build when the machine is idle:
//!
//! ```text
//! cargo bench --bench provision                  # N=1000, 3 runs of each
//! cargo bench --bench provision -- --count 200 --runs 1 --no-python
//! ```
//!
//! It prints a markdown table, the commands, and the load average before and after.

use edgetwin_test_support as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{load_average, Hub, HubOptions, TempDir};
const MODULE: &str = "edgetwin";
const PREFIX: &str = "bench-";

struct Options {
    count: usize,
    runs: usize,
    python: Option<PathBuf>,
}

fn options() -> Options {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut options = Options {
        count: 1000,
        runs: 3,
        python: Some(
            std::env::var_os("EDGETWIN_BENCH_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join(".venv/bin/python")),
        ),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--count" => options.count = value("--count"),
            "--runs" => options.runs = value("--runs").max(1),
            "--no-python" => options.python = None,
            // cargo bench passes --bench; other harness flags do not apply.
            _ => {}
        }
    }
    options
}

/// A fresh hub on `dir` (30 s to start).
fn start_hub(dir: &TempDir) -> Hub {
    let options = HubOptions {
        rust_log: Some("warn"),
        timeout: Duration::from_secs(30),
        ..HubOptions::default()
    };
    Hub::start(dir.path(), options)
}

/// `edgetwin twin get` of the last device's module: the work really happened.
fn check_last_module(hub: &Hub, count: usize) {
    let out = hub
        .edgetwin()
        .args(["twin", "get", "--device", &format!("{PREFIX}{count}")])
        .args(["--module", MODULE])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the last module is missing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One timed run.
struct Sample {
    wall: f64,
    inner: f64,
    requests: u64,
}

/// A way of provisioning: its label, the command shown, and how to run it on a hub.
struct Method {
    tool: &'static str,
    how: &'static str,
    command: String,
    run: Box<dyn Fn(&Hub) -> Sample>,
}

fn run_timed(command: &mut Command) -> (f64, String) {
    let started = Instant::now();
    let out = command.output().expect("run the provisioning command");
    let wall = started.elapsed().as_secs_f64();
    let what = format!("{:?} {:?}", command.get_program(), command.get_args());
    (wall, support::stdout_of_success(&what, &out))
}

fn edgetwin_method(count: usize) -> Method {
    let count_text = count.to_string();
    let args: Vec<String> = [
        "provision",
        "--count",
        &count_text,
        "--prefix",
        PREFIX,
        "--module",
        MODULE,
        "--rate",
        "0",
        "--output",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Method {
        tool: "edgetwin provision (Rust)",
        how: "bulk POST /devices, 100 devices, then their 100 modules",
        command: format!("edgetwin {}", args.join(" ")),
        run: Box::new(move |hub: &Hub| {
            let (wall, stdout) = run_timed(hub.edgetwin().args(&args));
            let report: Value = serde_json::from_str(&stdout).unwrap();
            let fleet = &report["fleet"];
            assert_eq!(fleet["devicesCreated"], count, "{report}");
            assert_eq!(fleet["modulesCreated"], count, "{report}");
            Sample {
                wall,
                inner: fleet["seconds"].as_f64().unwrap_or(f64::NAN),
                requests: fleet["httpAttempts"].as_u64().unwrap_or(0),
            }
        }),
    }
}

fn python_method(python: &Path, mode: &'static str, count: usize) -> Method {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/bench_provision.py");
    let how = match mode {
        "straightforward" => "IoTHubRegistryManager: create_device_with_sas + create_module_with_sas per device",
        _ => "IoTHubRegistryManager: bulk_create_or_update_devices, 100 devices, then their 100 modules",
    };
    let python = python.to_path_buf();
    Method {
        tool: "azure-iot-hub 2.7 (Python)",
        how,
        command: format!(
            "python tests/python/bench_provision.py --mode {mode} --count {count} --prefix {PREFIX} --module {MODULE}"
        ),
        run: Box::new(move |hub: &Hub| {
            let (wall, stdout) = run_timed(
                Command::new(&python)
                    .arg(&script)
                    .args(["--mode", mode, "--count", &count.to_string()])
                    .args(["--prefix", PREFIX, "--module", MODULE])
                    .env("IOTHUB_CONNECTION_STRING", hub.service_connection_string())
                    .env("REQUESTS_CA_BUNDLE", hub.ca()),
            );
            let line: Value = serde_json::from_str(stdout.trim()).unwrap();
            Sample {
                wall,
                inner: line["seconds"].as_f64().unwrap_or(f64::NAN),
                requests: line["requests"].as_u64().unwrap_or(0),
            }
        }),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let options = options();
    let mut methods = vec![edgetwin_method(options.count)];
    match &options.python {
        Some(python) if python.exists() => {
            methods.push(python_method(python, "straightforward", options.count));
            methods.push(python_method(python, "bulk", options.count));
        }
        Some(python) => eprintln!(
            "note: {} not found: Python rows skipped (set EDGETWIN_BENCH_PYTHON)",
            python.display()
        ),
        None => {}
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = load_average();
    eprintln!(
        "provisioning {} edge devices + {} modules, {} run(s) per method, a fresh hub per run; load average {load_before}",
        options.count, options.count, options.runs
    );
    let mut rows = Vec::new();
    for method in &methods {
        let mut samples = Vec::new();
        for run in 1..=options.runs {
            let dir = TempDir::new("bench-provision");
            let hub = start_hub(&dir);
            let sample = (method.run)(&hub);
            check_last_module(&hub, options.count);
            eprintln!(
                "  {} / {}: run {run}: {:.2}s wall, {:.2}s provisioning, {} requests (load {})",
                method.tool,
                method.how,
                sample.wall,
                sample.inner,
                sample.requests,
                load_average()
            );
            samples.push(sample);
        }
        rows.push((method, samples));
    }
    let load_after = load_average();

    println!();
    println!(
        "Provisioning {n} IoT Edge devices with a module identity each ({m} identities) against a fresh local `edgetwin hub` per run (release build, pacing off); median of {runs} run(s), min–max in brackets.",
        n = options.count,
        m = 2 * options.count,
        runs = options.runs
    );
    println!();
    println!(
        "| tool | how | HTTP requests | wall time, process (s) | provisioning (s) | identities/s |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (method, samples) in &rows {
        let walls: Vec<f64> = samples.iter().map(|s| s.wall).collect();
        let inners: Vec<f64> = samples.iter().map(|s| s.inner).collect();
        let (min, max) = walls
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), w| (lo.min(*w), hi.max(*w)));
        let wall = median(walls);
        println!(
            "| {} | {} | {} | {wall:.2} [{min:.2}–{max:.2}] | {:.2} | {:.0} |",
            method.tool,
            method.how,
            samples[0].requests,
            median(inners),
            (2 * options.count) as f64 / wall
        );
    }
    println!();
    println!("Commands (IOTHUB_CONNECTION_STRING = the hub's owner policy; EDGETWIN_CA_FILE / REQUESTS_CA_BUNDLE = its CA):");
    println!();
    for (method, _) in &rows {
        println!("    {}", method.command);
    }
    println!();
    println!(
        "Machine: {cores} core(s); load average (1, 5, 15 min) before {load_before}, after {load_after}. Hub: `edgetwin hub --data-dir <tmp> --mqtt-port 0 --https-port 0`, same binary."
    );
}
