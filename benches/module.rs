//! `edgetwin-module` side by side with the same job done by Microsoft's Python module client
//! (`azure-iot-device`, `tests/python/bench_module.py`) against one local hub. Numbers, not a
//! pass/fail test:
//!
//! - stripped release binary size (`cargo build --release --bin edgetwin-module
//!   --no-default-features`, built here into `target/bench-module`), and that it does not link
//!   SQLite (the hub's store);
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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgetwin_wire::sas::generate_token;
use edgetwin_wire::Secret;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const MQTT_PORT: u16 = 8883;
const DEVICE: &str = "bench-gw";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Proc {
    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child by its id.
        unsafe {
            libc::kill(self.0.id() as i32, signal);
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().ok().flatten() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `VmRSS` and `VmHWM` in KiB.
    fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

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

/// The service REST API over one kept-alive TLS connection (re-opened when it breaks).
struct Rest {
    host: String,
    port: u16,
    key: Secret,
    tls: Arc<rustls::ClientConfig>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Rest {
    async fn connect(&mut self) -> SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to the REST API");
        tcp.set_nodelay(true).unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from(self.host.clone()).unwrap();
        let stream = connector.connect(name, tcp).await.expect("TLS");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let expiry = unix_now() as u64 + 3600;
        let resource = format!("{}:{}", self.host, self.port);
        let token = generate_token(&self.key, &resource, expiry, Some("iothubowner")).unwrap();
        let sep = if path.contains('?') { '&' } else { '?' };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        for _ in 0..2 {
            let mut sender = match self.sender.take() {
                Some(sender) if !sender.is_closed() => sender,
                _ => self.connect().await,
            };
            if sender.ready().await.is_err() {
                continue;
            }
            let request = hyper::Request::builder()
                .method(method)
                .uri(format!("{path}{sep}api-version=2021-04-12"))
                .header("Host", &resource)
                .header("Authorization", token.expose())
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            let Ok(response) = sender.send_request(request).await else {
                continue;
            };
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            self.sender = Some(sender);
            return (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            );
        }
        panic!("{method} {path} failed twice");
    }

    async fn put_module(&mut self, module: &str) -> String {
        let (status, body) = self
            .call(
                "PUT",
                &format!("/devices/{DEVICE}/modules/{module}"),
                Some(json!({"moduleId": module, "deviceId": DEVICE})),
            )
            .await;
        assert!(status < 300, "create module: {status} {body}");
        body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Patches desired; returns the new `$version` and the hub's `$lastUpdated` of desired.
    async fn patch_desired(&mut self, module: &str, desired: Value) -> (i64, f64) {
        let (status, body) = self
            .call(
                "PATCH",
                &format!("/twins/{DEVICE}/modules/{module}"),
                Some(json!({"properties": {"desired": desired}})),
            )
            .await;
        assert_eq!(status, 200, "patch: {body}");
        let desired = &body["properties"]["desired"];
        (
            desired["$version"].as_i64().unwrap(),
            iso_seconds(desired["$metadata"]["$lastUpdated"].as_str().unwrap()).unwrap(),
        )
    }

    async fn reported(&mut self, module: &str) -> Value {
        let (status, body) = self
            .call("GET", &format!("/twins/{DEVICE}/modules/{module}"), None)
            .await;
        assert_eq!(status, 200, "twin: {body}");
        body["properties"]["reported"].clone()
    }

    /// Polls until the `name` acknowledgement carries `av == version`; returns the reported
    /// section and when the poll saw it.
    async fn wait_ack(&mut self, module: &str, name: &str, version: i64) -> (Value, Instant) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reported = self.reported(module).await;
            if reported[name]["av"].as_i64() == Some(version) {
                return (reported, Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "{module}: no ack of {name} v{version}: {reported}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn telemetry_count(&mut self, module: &str) -> usize {
        let (_, body) = self
            .call(
                "GET",
                &format!("/edgetwin/messages?deviceId={DEVICE}&moduleId={module}&output=telemetry"),
                None,
            )
            .await;
        body.as_array().map_or(0, Vec::len)
    }
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
    eprintln!("building: cargo build --release --bin edgetwin-module --no-default-features --target-dir {}", target.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(ROOT)
        .args([
            "build",
            "--release",
            "--bin",
            "edgetwin-module",
            "--no-default-features",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "module build failed");
    target.join("release").join("edgetwin-module")
}

/// Whether the binary carries SQLite (it must not: only the hub uses it).
fn links_sqlite(bin: &Path) -> bool {
    let bytes = std::fs::read(bin).unwrap();
    [b"SQLite format 3".as_slice(), b"sqlite3_".as_slice()]
        .iter()
        .any(|needle| bytes.windows(needle.len()).any(|w| w == *needle))
}

fn start_hub(dir: &Path) -> (Proc, Value) {
    let data = dir.join("data");
    let child = Command::new(env!("CARGO_BIN_EXE_edgetwin"))
        .args(["hub", "--data-dir"])
        .arg(&data)
        .args(["--mqtt-port", &MQTT_PORT.to_string(), "--rest-port", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("hub.log")).unwrap())
        .spawn()
        .expect("start the hub");
    let mut hub = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(data.join("hub.json")) {
            if let Ok(info) = serde_json::from_str::<Value>(&text) {
                if info["mqttPort"].as_u64() == Some(u64::from(MQTT_PORT)) {
                    return (hub, info);
                }
            }
        }
        assert!(hub.0.try_wait().unwrap().is_none(), "the hub exited");
        assert!(Instant::now() < deadline, "the hub did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    rest: &mut Rest,
    client: &Client,
    module: &str,
    connection_string: &str,
    ca: &str,
    dir: &Path,
    settle: Duration,
    patches: usize,
) -> Numbers {
    let mut numbers = Numbers::default();
    rest.patch_desired(module, json!({"telemetryInterval": 1}))
        .await;
    let log = dir.join(format!("{module}.log"));
    let t0 = unix_now();
    let started = Instant::now();
    let mut proc = match client {
        Client::Rust(bin) => Proc(
            Command::new(bin)
                .env_clear()
                .env("EDGETWIN_CONNECTION_STRING", connection_string)
                .env("EDGETWIN_CA_FILE", ca)
                .env("EDGETWIN_MQTT_PORT", MQTT_PORT.to_string())
                .env("EDGETWIN_TELEMETRY_INTERVAL", "1")
                .env("EDGETWIN_METRICS_PORT", "0")
                .env(
                    "RUST_LOG",
                    std::env::var("EDGETWIN_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start edgetwin-module"),
        ),
        Client::Python(python) => Proc(
            Command::new(python)
                .arg(Path::new(ROOT).join("tests/python/bench_module.py"))
                .env("EDGETWIN_CONNECTION_STRING", connection_string)
                .env("EDGETWIN_CA_FILE", ca)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start the Python module"),
        ),
    };

    // Start to the first acknowledged reported patch, by the client's own clock.
    numbers.first_ack_ms = match client {
        Client::Rust(_) => loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("first reported patch")) {
                // `<6> 2026-01-01 12:00:00.123 +00:00 [INF] ...`
                let clock = line.split_whitespace().nth(2).unwrap();
                let at = clock_seconds(clock).unwrap();
                break day_diff(at, t0 % 86_400.0) * 1000.0;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no ack: {text}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        },
        Client::Python(_) => {
            let stdout = proc.0.stdout.take().unwrap();
            let line = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line
            })
            .await
            .unwrap();
            let event: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
                panic!(
                    "python: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
            (event["time"].as_f64().unwrap() - t0) * 1000.0
        }
    };

    // Steady memory with telemetry every second.
    tokio::time::sleep(settle.saturating_sub(started.elapsed())).await;
    (numbers.rss_kib, numbers.hwm_kib) = proc.memory();
    numbers.telemetry = rest.telemetry_count(module).await;

    // Desired → reported acknowledgement, one patch at a time, telemetry stopped.
    let (v, _) = rest
        .patch_desired(module, json!({"telemetryInterval": 3600}))
        .await;
    rest.wait_ack(module, "telemetryInterval", v).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut hub_ms = Vec::with_capacity(patches);
    let mut observed_ms = Vec::with_capacity(patches);
    for i in 0..patches {
        let sent = Instant::now();
        let (v, desired_at) = rest
            .patch_desired(
                module,
                json!({"thresholds": {"cpuTemperature": 100 + (i % 50)}}),
            )
            .await;
        let (reported, seen) = rest.wait_ack(module, "thresholds", v).await;
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
    numbers.rss_after_kib = proc.memory().0;

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

    let dir = std::env::temp_dir().join(format!("edgetwin-bench-module-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (hub, info) = start_hub(&dir);
    let ca = info["caCertificate"].as_str().unwrap().to_owned();
    let host = info["hostName"].as_str().unwrap().to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(&ca).unwrap().as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rust, py) = runtime.block_on(async {
        let mut rest = Rest {
            host: host.clone(),
            port: info["restPort"].as_u64().unwrap() as u16,
            key: Secret::new(info["policies"]["iothubowner"].as_str().unwrap()),
            tls: Arc::new(tls),
            sender: None,
        };
        let (status, body) = rest
            .call(
                "PUT",
                &format!("/devices/{DEVICE}"),
                Some(json!({"deviceId": DEVICE, "capabilities": {"iotEdge": true}})),
            )
            .await;
        assert!(status < 300, "create device: {status} {body}");
        let cs = |module: &str, key: &str| {
            format!("HostName={host};DeviceId={DEVICE};ModuleId={module};SharedAccessKey={key}")
        };
        let key = rest.put_module("rs").await;
        eprintln!("running edgetwin-module ...");
        let rust = run_client(
            &mut rest,
            &Client::Rust(module_bin.clone()),
            "rs",
            &cs("rs", &key),
            &ca,
            &dir,
            settle,
            patches,
        )
        .await;
        let py = if python {
            let key = rest.put_module("py").await;
            eprintln!("running azure-iot-device ...");
            Some(
                run_client(
                    &mut rest,
                    &Client::Python(python_bin.clone()),
                    "py",
                    &cs("py", &key),
                    &ca,
                    &dir,
                    settle,
                    patches,
                )
                .await,
            )
        } else {
            None
        };
        (rust, py)
    });
    drop(hub);

    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let col = |f: &dyn Fn(&Numbers) -> String| {
        (
            f(&rust),
            py.as_ref().map_or_else(|| "not run".to_owned(), f),
        )
    };
    let rows: Vec<(&str, (String, String), &str)> = vec![
        (
            "steady RSS after ~10 s, telemetry every 1 s (VmRSS)",
            col(&|n| mib(n.rss_kib)),
            "≤ 8 MiB and ≥ 5× less than Python",
        ),
        (
            "peak RSS (VmHWM) / RSS after the patches",
            col(&|n| format!("{} / {}", mib(n.hwm_kib), mib(n.rss_after_kib))),
            "",
        ),
        (
            "process start → first acknowledged reported patch",
            col(&|n| format!("{:.1} ms", n.first_ack_ms)),
            "< 50 ms",
        ),
        (
            "desired patch → reported ack, p50 (hub clock)",
            col(&|n| format!("{:.2} ms", n.p50_ms)),
            "",
        ),
        (
            "desired patch → reported ack, p99 (hub clock)",
            col(&|n| format!("{:.2} ms", n.p99_ms)),
            "",
        ),
        (
            "desired patch → reported ack, max (hub clock)",
            col(&|n| format!("{:.2} ms", n.max_ms)),
            "",
        ),
        (
            "PATCH sent → ack seen by polling REST, p50",
            col(&|n| format!("{:.2} ms", n.observed_p50_ms)),
            "",
        ),
        (
            "telemetry messages in the first ~10 s",
            col(&|n| n.telemetry.to_string()),
            "",
        ),
        (
            "exit code on SIGTERM",
            col(&|n| format!("{:?}", n.exit)),
            "0",
        ),
    ];
    println!();
    println!(
        "| {patches} patches, hub on loopback | edgetwin-module (Rust) | azure-iot-device (Python) | goal |"
    );
    println!("|---|---|---|---|");
    println!(
        "| stripped release binary | {:.2} MiB ({size} bytes){} | (interpreter + packages) | ≤ 6 MiB |",
        size as f64 / 1_048_576.0,
        if sqlite { ", LINKS SQLite" } else { ", no SQLite" }
    );
    for (name, (r, p), goal) in rows {
        println!("| {name} | {r} | {p} | {goal} |");
    }
    if let Some(py) = &py {
        if rust.rss_kib > 0 {
            println!(
                "\nPython / Rust steady RSS: {:.1}x",
                py.rss_kib as f64 / rust.rss_kib as f64
            );
        }
    }
    println!(
        "\nmachine: {cpus} CPUs, load average {}; command: cargo bench --bench module -- --patches {patches}",
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    if std::env::var_os("EDGETWIN_BENCH_KEEP").is_some() {
        println!("logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
