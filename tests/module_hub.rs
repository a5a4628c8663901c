//! End-to-end tests of `edgetwin-module` against the real `edgetwin hub` over real sockets:
//! identity through the hub's workload API, desired settings acknowledged, invalid values
//! refused, telemetry delivered, recovery after a hub restart, and SIGTERM exiting 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgetwin_wire::sas::generate_token;
use edgetwin_wire::Secret;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const DEVICE: &str = "gw";
const MODULE: &str = "health";

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("edgetwin-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process by its id.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running hub and how to reach it.
struct Hub {
    proc: Proc,
    info: Value,
    tls: Arc<rustls::ClientConfig>,
}

fn start_hub(dir: &Path, mqtt_port: u16, rest_port: u16) -> Hub {
    let info_path = dir.join("hub.json");
    let _ = std::fs::remove_file(&info_path);
    let log = dir.join(format!("hub-{}.log", Instant::now().elapsed().as_nanos()));
    let child = Command::new(env!("CARGO_BIN_EXE_edgetwin"))
        .args(["hub", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--mqtt-port", &mqtt_port.to_string()])
        .args(["--rest-port", &rest_port.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the hub");
    let mut proc = Proc { child, log };
    let info_path = dir.join("data").join("hub.json");
    let _ = std::fs::remove_file(&info_path);
    let deadline = Instant::now() + Duration::from_secs(10);
    let info: Value = loop {
        assert!(proc.running(), "hub exited: {}", proc.log());
        assert!(
            Instant::now() < deadline,
            "hub did not start: {}",
            proc.log()
        );
        if let Ok(text) = std::fs::read_to_string(&info_path) {
            if let Ok(info) = serde_json::from_str::<Value>(&text) {
                if info["mqttPort"].as_u64().unwrap_or(0) != 0 {
                    break info;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ca = std::fs::read(info["caCertificate"].as_str().unwrap()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Hub {
        proc,
        info,
        tls: Arc::new(tls),
    }
}

impl Hub {
    fn mqtt_port(&self) -> u16 {
        self.info["mqttPort"].as_u64().unwrap() as u16
    }

    fn rest_port(&self) -> u16 {
        self.info["restPort"].as_u64().unwrap() as u16
    }

    /// One REST call with a fresh service SAS; returns status and JSON body (`null` if empty).
    async fn rest(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let host = self.info["hostName"].as_str().unwrap();
        let port = self.rest_port();
        let key = Secret::new(self.info["policies"]["iothubowner"].as_str().unwrap());
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let token =
            generate_token(&key, &format!("{host}:{port}"), expiry, Some("iothubowner")).unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let sep = if path.contains('?') { '&' } else { '?' };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{path}{sep}api-version=2021-04-12"))
            .header("Host", format!("{host}:{port}"))
            .header("Authorization", token.expose())
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    /// Creates the edge device and the module; returns the module's IOTEDGE_* environment.
    async fn provision(&self) -> BTreeMap<String, String> {
        let (status, body) = self
            .rest(
                "PUT",
                &format!("/devices/{DEVICE}"),
                Some(json!({"deviceId": DEVICE, "capabilities": {"iotEdge": true}})),
            )
            .await;
        assert!(status < 300, "create device: {status} {body}");
        let (status, body) = self
            .rest(
                "PUT",
                &format!("/devices/{DEVICE}/modules/{MODULE}"),
                Some(json!({"moduleId": MODULE, "deviceId": DEVICE})),
            )
            .await;
        assert!(status < 300, "create module: {status} {body}");
        let key = body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .expect("module key")
            .to_owned();
        let (status, body) = self
            .rest(
                "GET",
                &format!("/edgetwin/devices/{DEVICE}/modules/{MODULE}/edgeEnvironment"),
                None,
            )
            .await;
        assert_eq!(status, 200, "edge environment: {body}");
        let mut env: BTreeMap<String, String> = body
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        env.insert("__MODULE_KEY".into(), key);
        env
    }

    /// Calls a direct method on the module; returns the method's status and payload.
    async fn invoke(&self, method: &str) -> (i64, Value) {
        let (status, body) = self
            .rest(
                "POST",
                &format!("/twins/{DEVICE}/modules/{MODULE}/methods"),
                Some(json!({"methodName": method, "payload": null, "responseTimeoutInSeconds": 5})),
            )
            .await;
        assert_eq!(status, 200, "invoke {method}: {body}");
        (
            body["status"].as_i64().unwrap_or(-1),
            body["payload"].clone(),
        )
    }

    /// Patches desired properties; returns the new desired `$version`.
    async fn patch_desired(&self, desired: Value) -> i64 {
        let (status, body) = self
            .rest(
                "PATCH",
                &format!("/twins/{DEVICE}/modules/{MODULE}"),
                Some(json!({"properties": {"desired": desired}})),
            )
            .await;
        assert_eq!(status, 200, "patch twin: {body}");
        body["properties"]["desired"]["$version"].as_i64().unwrap()
    }

    /// Sets a fault through `/edgetwin/faults/{kind}`.
    async fn fault(&self, kind: &str, body: Value) -> Value {
        let (status, answer) = self
            .rest("POST", &format!("/edgetwin/faults/{kind}"), Some(body))
            .await;
        assert_eq!(status, 200, "fault {kind}: {answer}");
        answer
    }

    async fn faults(&self) -> Value {
        let (status, answer) = self.rest("GET", "/edgetwin/faults", None).await;
        assert_eq!(status, 200, "faults: {answer}");
        answer
    }

    async fn reported(&self) -> Value {
        let (status, body) = self
            .rest("GET", &format!("/twins/{DEVICE}/modules/{MODULE}"), None)
            .await;
        assert_eq!(status, 200, "get twin: {body}");
        body["properties"]["reported"].clone()
    }

    async fn telemetry(&self) -> Vec<Value> {
        let (status, body) = self
            .rest(
                "GET",
                &format!("/edgetwin/messages?deviceId={DEVICE}&moduleId={MODULE}&output=telemetry"),
                None,
            )
            .await;
        assert_eq!(status, 200, "messages: {body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// Polls the reported twin until `check` holds.
    async fn wait_reported(
        &self,
        what: &str,
        module: &Proc,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reported = self.reported().await;
            if check(&reported) {
                return reported;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; reported: {reported}\nmodule log:\n{}",
                module.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn start_module(dir: &Path, env: &BTreeMap<String, String>, mqtt_port: u16) -> Proc {
    start_module_with(dir, env, mqtt_port, &[])
}

fn start_module_with(
    dir: &Path,
    env: &BTreeMap<String, String>,
    mqtt_port: u16,
    extra: &[(&str, &str)],
) -> Proc {
    let log = dir.join("module.log");
    let child = Command::new(env!("CARGO_BIN_EXE_edgetwin-module"))
        .env_clear()
        .envs(env.iter().filter(|(k, _)| !k.starts_with("__")))
        .env("EDGETWIN_MQTT_PORT", mqtt_port.to_string())
        .env("EDGETWIN_BACKOFF_BASE_MS", "100")
        .env("EDGETWIN_BACKOFF_MAX_SECS", "1")
        .env("RUST_LOG", "debug,rumqttc=info")
        .env("EDGETWIN_METRICS_PORT", "0")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the module");
    Proc { child, log }
}

/// The module's MQTT client id on the hub.
fn module_client_id() -> String {
    format!("{DEVICE}/{MODULE}")
}

/// A TCP port free right now on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Scrapes `GET /metrics` on `port`: sample name (with labels) to value.
async fn scrape(port: u16) -> BTreeMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_owned(), value.parse::<f64>().expect("a number"))
        })
        .collect()
}

/// Scrapes until `check` holds (10 s).
async fn wait_metrics(
    port: u16,
    what: &str,
    module: &Proc,
    check: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(port).await;
        if check(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for metrics: {what}; {metrics:?}\n{}",
            module.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ack_of(reported: &Value, name: &str) -> (i64, i64) {
    let ack = &reported[name];
    (
        ack["ac"].as_i64().unwrap_or(0),
        ack["av"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_applies_desired_settings_refuses_invalid_ones_sends_telemetry_and_exits_0_on_sigterm(
) {
    let dir = TempDir::new("module-twin");
    let hub = start_hub(&dir.0, 0, 0);
    let env = hub.provision().await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 1})).await;
    let mut module = start_module(&dir.0, &env, hub.mqtt_port());

    // The desired value set before start is applied from the full twin and acknowledged.
    let reported = hub
        .wait_reported("interval 1 acknowledged", &module, |r| {
            ack_of(r, "telemetryInterval") == (200, v1)
        })
        .await;
    assert_eq!(reported["telemetryInterval"]["value"], 1);
    assert_eq!(reported["identitySource"], "edgeWorkload");
    assert!(reported["startTime"].is_string());
    assert!(reported["version"].is_string());

    // Telemetry arrives on the `telemetry` output at the interval.
    let deadline = Instant::now() + Duration::from_secs(8);
    let messages = loop {
        let messages = hub.telemetry().await;
        if messages.len() >= 2 {
            break messages;
        }
        assert!(
            Instant::now() < deadline,
            "telemetry did not arrive: {messages:?}\n{}",
            module.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body: Value = serde_json::from_str(messages[0]["body"].as_str().unwrap()).unwrap();
    assert!(body["timestamp"].is_string(), "{body}");
    assert!(body["uptime"].is_number(), "{body}");
    assert!(body["memory"]["usedPercent"].is_number(), "{body}");
    hub.wait_reported("lastTelemetryTime", &module, |r| {
        r["lastTelemetryTime"].is_string()
    })
    .await;

    // A change through the REST API is acknowledged with the new desired version.
    let v2 = hub.patch_desired(json!({"telemetryInterval": 122})).await;
    let reported = hub
        .wait_reported("interval 122 acknowledged", &module, |r| {
            ack_of(r, "telemetryInterval") == (200, v2)
        })
        .await;
    assert_eq!(reported["telemetryInterval"]["value"], 122);

    // Invalid values get ac 400, the previous value stays, and the module keeps running.
    for bad in [json!("x"), json!(-5)] {
        let v = hub.patch_desired(json!({"telemetryInterval": bad})).await;
        let reported = hub
            .wait_reported("invalid value refused", &module, |r| {
                ack_of(r, "telemetryInterval") == (400, v)
            })
            .await;
        assert_eq!(reported["telemetryInterval"]["value"], 122);
        assert!(reported["telemetryInterval"]["ad"].is_string());
        assert!(module.running(), "module exited: {}", module.log());
    }

    // Direct methods.
    let (status, payload) = hub.invoke("ping").await;
    assert_eq!((status, payload["pong"].clone()), (200, json!(true)));
    let (status, payload) = hub.invoke("getConfig").await;
    assert_eq!(status, 200);
    assert_eq!(payload["settings"]["telemetryInterval"], 122);
    let before = hub.telemetry().await.len();
    let (status, payload) = hub.invoke("sampleNow").await;
    assert_eq!(status, 200);
    assert!(payload["timestamp"].is_string(), "{payload}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.telemetry().await.len() <= before {
        assert!(Instant::now() < deadline, "sampleNow sent no telemetry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hub.invoke("bogus").await.0, 404);

    // SIGTERM flushes and exits 0.
    module.signal(libc::SIGTERM);
    let code = module.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "module log:\n{}", module.log());
    let log = module.log();
    assert!(
        log.lines().any(|l| l.starts_with("<6> ")),
        "syslog prefix missing:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_killed_and_restarted_is_recovered_from_and_a_change_made_meanwhile_is_applied() {
    let dir = TempDir::new("module-restart");
    let hub = start_hub(&dir.0, 0, 0);
    let env = hub.provision().await;
    let (mqtt_port, rest_port) = (hub.mqtt_port(), hub.rest_port());
    let v1 = hub.patch_desired(json!({"telemetryInterval": 30})).await;
    let mut module = start_module(&dir.0, &env, mqtt_port);
    hub.wait_reported("first ack", &module, |r| {
        ack_of(r, "telemetryInterval") == (200, v1)
    })
    .await;

    // SIGKILL the hub: no DISCONNECT, no flush. The module notices, retries and must not exit.
    let Hub { mut proc, .. } = hub;
    proc.signal(libc::SIGKILL);
    assert!(
        proc.wait_exit(Duration::from_secs(10)).is_some(),
        "hub did not die"
    );
    drop(proc);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !module.log().contains("connection failed") {
        assert!(
            Instant::now() < deadline,
            "the module did not notice: {}",
            module.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // a few failed attempts
    assert!(module.running(), "module exited: {}", module.log());

    // Restart on the same ports and data and change desired at once: the module is still
    // backing off, so only its twin GET after CONNACK can bring the change.
    let hub = start_hub(&dir.0, mqtt_port, rest_port);
    let v2 = hub
        .patch_desired(json!({"telemetryInterval": 45, "metrics": ["load", "uptime"]}))
        .await;
    let reported = hub
        .wait_reported("ack after the hub came back", &module, |r| {
            ack_of(r, "telemetryInterval") == (200, v2) && ack_of(r, "metrics") == (200, v2)
        })
        .await;
    assert_eq!(reported["telemetryInterval"]["value"], 45);
    assert_eq!(reported["metrics"]["value"], json!(["load", "uptime"]));
    assert!(module.running());

    module.signal(libc::SIGTERM);
    assert_eq!(
        module.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        module.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_change_made_while_the_connection_is_dropped_and_refused_is_applied_when_it_comes_back(
) {
    let dir = TempDir::new("module-faults");
    let hub = start_hub(&dir.0, 0, 0);
    let env = hub.provision().await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 30})).await;
    let metrics_port = free_port();
    let mut module = start_module_with(
        &dir.0,
        &env,
        hub.mqtt_port(),
        &[("EDGETWIN_METRICS_PORT", &metrics_port.to_string())],
    );
    hub.wait_reported("first ack", &module, |r| {
        ack_of(r, "telemetryInterval") == (200, v1)
    })
    .await;
    wait_metrics(metrics_port, "live at v1", &module, |m| {
        m["edgetwin_module_connected"] == 1.0
            && m["edgetwin_module_desired_version"] == v1 as f64
            && m["edgetwin_module_reconnects_total"] == 0.0
    })
    .await;

    // Cut the connection and refuse new ones for 3 s; change desired meanwhile.
    hub.fault("refuseConnects", json!({"seconds": 3})).await;
    let cut = Instant::now();
    let answer = hub
        .fault("disconnect", json!({"clientId": module_client_id()}))
        .await;
    assert_eq!(answer["disconnected"], json!([module_client_id()]));
    let v2 = hub.patch_desired(json!({"telemetryInterval": 45})).await;
    // The comeback's first twin GET is throttled too: it must be retried.
    hub.fault(
        "throttle",
        json!({"operation": "MQTT twin/GET", "count": 1, "retryAfterSeconds": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ack_of(&hub.reported().await, "telemetryInterval"),
        (200, v1),
        "acknowledged while cut off?"
    );
    assert!(
        module.log().contains("connection failed"),
        "{}",
        module.log()
    );
    let metrics = scrape(metrics_port).await;
    assert_eq!(metrics["edgetwin_module_connected"], 0.0, "{metrics:?}");
    assert!(module.running(), "module exited: {}", module.log());

    // Back: applied and acknowledged.
    let reported = hub
        .wait_reported("ack after the connection came back", &module, |r| {
            ack_of(r, "telemetryInterval") == (200, v2)
        })
        .await;
    assert!(cut.elapsed() >= Duration::from_millis(2900), "too early");
    assert_eq!(reported["telemetryInterval"]["value"], 45);
    let log = module.log();
    assert!(log.contains("twin GET failed; retrying"), "{log}");
    assert_eq!(hub.faults().await["throttles"], json!([]));
    let metrics = wait_metrics(metrics_port, "live at v2", &module, |m| {
        m["edgetwin_module_connected"] == 1.0 && m["edgetwin_module_desired_version"] == v2 as f64
    })
    .await;
    assert!(
        metrics["edgetwin_module_reconnects_total"] >= 1.0,
        "{metrics:?}"
    );
    assert!(
        metrics["edgetwin_module_disconnects_total{reason=\"lost\"}"] >= 1.0,
        "{metrics:?}"
    );
    assert_eq!(
        metrics["edgetwin_module_session_state{state=\"live\"}"],
        1.0
    );
    assert!(
        metrics["edgetwin_module_reported_patch_latency_seconds_count"] >= 2.0,
        "{metrics:?}"
    );
    assert_eq!(
        metrics["edgetwin_module_reported_patch_latency_seconds_bucket{le=\"+Inf\"}"],
        metrics["edgetwin_module_reported_patch_latency_seconds_count"]
    );

    module.signal(libc::SIGTERM);
    assert_eq!(module.wait_exit(Duration::from_secs(10)), Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_renewals_of_a_5_second_token_in_a_row_lose_no_desired_patch_and_no_reported_update() {
    const RENEWALS: usize = 10;
    let dir = TempDir::new("module-renew");
    let hub = start_hub(&dir.0, 0, 0);
    let env = hub.provision().await;
    let v0 = hub.patch_desired(json!({"telemetryInterval": 1})).await;
    // The hub closes any connection 5 s after CONNECT whatever the token says; the module's
    // tokens live 5 s and are renewed at 80 %, every 4 s, by a controlled reconnect.
    hub.fault("tokenLifetime", json!({"seconds": 5})).await;
    let metrics_port = free_port();
    let mut module = start_module_with(
        &dir.0,
        &env,
        hub.mqtt_port(),
        &[
            ("EDGETWIN_SAS_TTL_SECS", "5"),
            ("EDGETWIN_METRICS_PORT", &metrics_port.to_string()),
        ],
    );
    hub.wait_reported("first ack", &module, |r| {
        ack_of(r, "telemetryInterval") == (200, v0)
    })
    .await;
    let renewals = |m: &Proc| m.log().matches("reconnecting with a renewed token").count();
    let started = Instant::now();
    let telemetry_before = hub.telemetry().await.len();

    // Desired patches flow the whole time, one after another: each one must be acknowledged
    // with its own version and value, whichever connection it lands on.
    let mut versions = Vec::new();
    let mut telemetry_times = std::collections::BTreeSet::new();
    let mut i = 0;
    while renewals(&module) < RENEWALS {
        assert!(
            started.elapsed() < Duration::from_secs(55),
            "only {} renewals:\n{}",
            renewals(&module),
            module.log()
        );
        i += 1;
        let celsius = 100 + i % 50;
        let v = hub
            .patch_desired(json!({"thresholds": {"cpuTemperature": celsius}}))
            .await;
        let reported = hub
            .wait_reported("a threshold patch acknowledged", &module, |r| {
                ack_of(r, "thresholds") == (200, v)
            })
            .await;
        assert_eq!(
            reported["thresholds"]["value"]["cpuTemperature"],
            json!(f64::from(celsius))
        );
        if let Some(t) = reported["lastTelemetryTime"].as_str() {
            telemetry_times.insert(t.to_owned());
        }
        versions.push(v);
    }
    let elapsed = started.elapsed();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "desired versions are not consecutive: {versions:?}"
    );

    // Stop telemetry; the last reported lastTelemetryTime is the last telemetry sent.
    let v_end = hub.patch_desired(json!({"telemetryInterval": 3600})).await;
    hub.wait_reported("interval 3600", &module, |r| {
        ack_of(r, "telemetryInterval") == (200, v_end)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let messages = loop {
        let messages = hub.telemetry().await;
        let last = messages
            .last()
            .and_then(|m| serde_json::from_str::<Value>(m["body"].as_str()?).ok())
            .map(|b| b["timestamp"].clone());
        if last.is_some() && last.as_ref() == Some(&hub.reported().await["lastTelemetryTime"]) {
            break messages;
        }
        assert!(
            Instant::now() < deadline,
            "last telemetry {last:?} is not the reported lastTelemetryTime\n{}",
            module.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sent = messages.len() - telemetry_before;
    let secs = elapsed.as_secs() as usize;
    assert!(
        sent + 3 >= secs,
        "telemetry stalled: {sent} messages in {secs} s"
    );
    assert!(
        telemetry_times.len() + 4 >= secs,
        "reported lastTelemetryTime moved only {} times in {secs} s",
        telemetry_times.len()
    );

    // Evidence from both sides: every renewal was a controlled reconnect before expiry.
    let log = module.log();
    assert!(
        !log.contains("connection failed"),
        "a connection was lost:\n{log}"
    );
    let hub_log = hub.proc.log();
    let connects = hub_log
        .lines()
        .filter(|l| l.contains("client connected") && l.contains(&module_client_id()))
        .count();
    assert!(
        connects > RENEWALS,
        "hub saw {connects} connects:\n{hub_log}"
    );
    assert!(
        !hub_log.contains("SAS token expired"),
        "the hub had to close an expired connection:\n{hub_log}"
    );
    let metrics = scrape(metrics_port).await;
    assert!(
        metrics["edgetwin_module_disconnects_total{reason=\"tokenRenewal\"}"] >= RENEWALS as f64,
        "{metrics:?}"
    );
    assert_eq!(
        metrics["edgetwin_module_disconnects_total{reason=\"lost\"}"],
        0.0
    );
    eprintln!(
        "{} renewals in {elapsed:?}; {} desired patches acknowledged one by one; \
         {sent} telemetry messages; {} distinct lastTelemetryTime seen",
        renewals(&module),
        versions.len(),
        telemetry_times.len()
    );
    module.signal(libc::SIGTERM);
    assert_eq!(module.wait_exit(Duration::from_secs(10)), Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_reported_patch_is_retried_and_lands() {
    let dir = TempDir::new("module-throttle");
    let hub = start_hub(&dir.0, 0, 0);
    let env = hub.provision().await;
    // No telemetry during the test: the only reported patch is the acknowledgement.
    let v1 = hub.patch_desired(json!({"telemetryInterval": 3600})).await;
    let mut module = start_module(&dir.0, &env, hub.mqtt_port());
    hub.wait_reported("first ack", &module, |r| {
        ack_of(r, "telemetryInterval") == (200, v1)
    })
    .await;
    hub.fault(
        "throttle",
        json!({"operation": "MQTT twin/PATCH", "count": 2, "retryAfterSeconds": 1}),
    )
    .await;
    let v2 = hub
        .patch_desired(json!({"thresholds": {"diskPercent": 97}}))
        .await;
    let reported = hub
        .wait_reported("the throttled ack", &module, |r| {
            ack_of(r, "thresholds") == (200, v2)
        })
        .await;
    assert_eq!(reported["thresholds"]["value"]["diskPercent"], json!(97.0));
    let log = module.log();
    assert_eq!(
        log.matches("reported patch throttled or failed; will retry")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(hub.faults().await["throttles"], json!([]));
    assert!(module.running(), "{log}");
    module.signal(libc::SIGTERM);
    assert_eq!(module.wait_exit(Duration::from_secs(10)), Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_cut_off_waits_for_the_hub_flushes_the_pending_reported_update_and_exits_0() {
    let dir = TempDir::new("module-sigterm");
    let hub = start_hub(&dir.0, 0, 0);
    let env = hub.provision().await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 1})).await;
    let mut module = start_module(&dir.0, &env, hub.mqtt_port());
    hub.wait_reported("first ack and telemetry", &module, |r| {
        ack_of(r, "telemetryInterval") == (200, v1) && r["lastTelemetryTime"].is_string()
    })
    .await;

    // Cut off for 3 s. Telemetry ticks meanwhile leave a lastTelemetryTime update pending.
    hub.fault("refuseConnects", json!({"seconds": 3})).await;
    let cut = Instant::now();
    hub.fault("disconnect", json!({"clientId": module_client_id()}))
        .await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let stale = hub.reported().await["lastTelemetryTime"].clone();
    assert!(
        module.log().contains("connection failed"),
        "{}",
        module.log()
    );

    // SIGTERM now: the module must wait for the hub (within its 8 s grace), deliver, exit 0.
    module.signal(libc::SIGTERM);
    let code = module.wait_exit(Duration::from_secs(12));
    assert_eq!(code, Some(0), "{}", module.log());
    assert!(
        cut.elapsed() >= Duration::from_millis(2900),
        "exited before the hub accepted connections again: {}",
        module.log()
    );
    let log = module.log();
    assert!(
        log.contains("reported properties flushed; stopped"),
        "{log}"
    );
    let reported = hub.reported().await;
    let flushed = reported["lastTelemetryTime"].as_str().unwrap_or_default();
    assert!(
        flushed > stale.as_str().unwrap_or_default(),
        "pending update lost: {flushed} vs {stale}\n{log}"
    );
    // The telemetry buffered while cut off went out too, and the last one is the one reported.
    let messages = hub.telemetry().await;
    let last: Value =
        serde_json::from_str(messages.last().unwrap()["body"].as_str().unwrap()).unwrap();
    assert_eq!(last["timestamp"], json!(flushed), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_connection_string_and_ca_file_work_without_the_workload_api() {
    let dir = TempDir::new("module-cs");
    let hub = start_hub(&dir.0, 0, 0);
    let env = hub.provision().await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 122})).await;
    let host = hub.info["hostName"].as_str().unwrap();
    let connection_string = format!(
        "HostName={host};DeviceId={DEVICE};ModuleId={MODULE};SharedAccessKey={}",
        env["__MODULE_KEY"]
    );
    let ca = hub.info["caCertificate"].as_str().unwrap();
    let only_cs = BTreeMap::new();
    let mut module = start_module_with(
        &dir.0,
        &only_cs,
        hub.mqtt_port(),
        &[
            ("EDGETWIN_CONNECTION_STRING", connection_string.as_str()),
            ("EDGETWIN_CA_FILE", ca),
        ],
    );
    let reported = hub
        .wait_reported("ack through a connection string", &module, |r| {
            ack_of(r, "telemetryInterval") == (200, v1)
        })
        .await;
    assert_eq!(reported["identitySource"], "connectionString");
    assert!(
        !module.log().contains(&env["__MODULE_KEY"]),
        "key leaked to the log"
    );
    module.signal(libc::SIGTERM);
    assert_eq!(
        module.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        module.log()
    );
}

#[test]
fn a_missing_edge_variable_is_one_clear_error_naming_it() {
    let dir = TempDir::new("module-env");
    let log = dir.0.join("module.log");
    let status = Command::new(env!("CARGO_BIN_EXE_edgetwin-module"))
        .env_clear()
        .env("IOTEDGE_IOTHUBHOSTNAME", "localhost")
        .env("IOTEDGE_DEVICEID", DEVICE)
        .env("IOTEDGE_MODULEID", MODULE)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("IOTEDGE_GATEWAYHOSTNAME"), "{text}");
    assert!(text.starts_with("<3> "), "{text}");
}
