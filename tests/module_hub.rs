//! End-to-end tests of `edgetwin-module` against the real `edgetwin hub` over real sockets:
//! identity through the hub's workload API, desired settings acknowledged, invalid values
//! refused, telemetry delivered, recovery after a hub restart, and SIGTERM exiting 0.

use edgetwin_test_support as support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgetwin_wire::rest::CloudToDeviceMethod;
use serde_json::{json, Value};
use support::{
    edgetwin_module, module_connection_string, poll, Hub, HubOptions, Proc, TempDir, FAST_BACKOFF,
};

const DEVICE: &str = "gw";
const MODULE: &str = "health";

/// How long the module may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// `edgetwin hub` on `dir` with these ports (0: any).
fn start_hub(dir: &Path, mqtt_port: u16, https_port: u16) -> Hub {
    Hub::start(
        dir,
        HubOptions {
            mqtt_port,
            https_port,
            ..HubOptions::default()
        },
    )
}

/// A hub in a new scratch directory, with the edge device and the module created; the module's
/// `IOTEDGE_*` environment from [`Hub::provision`].
async fn provisioned_hub(tag: &str) -> (TempDir, Hub, BTreeMap<String, String>) {
    let dir = TempDir::new(tag);
    let hub = start_hub(dir.path(), 0, 0);
    let env = hub.provision().await;
    (dir, hub, env)
}

/// The calls these tests make on DEVICE/MODULE, through the hub's REST API.
trait ModuleHub {
    /// Creates the edge device and the module; returns the module's IOTEDGE_* environment
    /// (and its key, as `__MODULE_KEY`).
    async fn provision(&self) -> BTreeMap<String, String>;

    /// Calls a direct method on the module; returns the method's status and payload.
    async fn invoke(&self, method: &str) -> (i64, Value);

    /// Patches desired properties; returns the new desired `$version`.
    async fn patch_desired(&self, desired: Value) -> i64;

    /// Sets a fault through `/edgetwin/faults/{kind}`.
    async fn fault(&self, kind: &str, body: Value) -> Value;

    /// The faults in force.
    async fn faults(&self) -> Value;

    /// The module twin's reported properties.
    async fn reported(&self) -> Value;

    /// The module's telemetry messages, oldest first.
    async fn telemetry(&self) -> Vec<Value>;

    /// Polls the reported twin until `check` holds (10 s).
    async fn wait_reported(
        &self,
        what: &str,
        module: &Proc,
        check: impl Fn(&Value) -> bool,
    ) -> Value;

    /// Polls the reported twin until the module acknowledges `name` at desired `version` with
    /// 200 (10 s).
    async fn wait_ack(&self, what: &str, module: &Proc, name: &str, version: i64) -> Value;
}

impl ModuleHub for Hub {
    async fn provision(&self) -> BTreeMap<String, String> {
        self.rest.create_edge_device(DEVICE).await;
        let key = self.rest.create_module(DEVICE, MODULE).await;
        let mut env = self.rest.edge_environment(DEVICE, MODULE).await;
        env.insert("__MODULE_KEY".into(), key);
        env
    }

    async fn invoke(&self, method: &str) -> (i64, Value) {
        let call = CloudToDeviceMethod {
            method_name: method.to_owned(),
            payload: Some(Value::Null),
            response_timeout_in_seconds: Some(5),
            ..CloudToDeviceMethod::default()
        };
        let answer = self
            .rest
            .client()
            .invoke_module_method(DEVICE, MODULE, &call)
            .await;
        let answer = answer.unwrap_or_else(|e| panic!("invoke {method}: {e}"));
        (i64::from(answer.status), answer.payload)
    }

    async fn patch_desired(&self, desired: Value) -> i64 {
        let desired = self.rest.patch_desired(DEVICE, MODULE, desired).await;
        desired["$version"].as_i64().unwrap()
    }

    async fn fault(&self, kind: &str, body: Value) -> Value {
        let (status, answer) = self
            .rest
            .call("POST", &format!("/edgetwin/faults/{kind}"), Some(body))
            .await;
        assert_eq!(status, 200, "fault {kind}: {answer}");
        answer
    }

    async fn faults(&self) -> Value {
        let (status, answer) = self.rest.call("GET", "/edgetwin/faults", None).await;
        assert_eq!(status, 200, "faults: {answer}");
        answer
    }

    async fn reported(&self) -> Value {
        self.rest.reported(DEVICE, MODULE).await
    }

    async fn telemetry(&self) -> Vec<Value> {
        self.rest.telemetry(DEVICE, MODULE).await
    }

    async fn wait_reported(
        &self,
        what: &str,
        module: &Proc,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        poll(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                let reported = self.reported().await;
                if check(&reported) {
                    return Ok(reported);
                }
                Err(move || {
                    format!(
                        "timed out waiting for {what}; reported: {reported}\nmodule log:\n{}",
                        module.log()
                    )
                })
            },
        )
        .await
    }

    async fn wait_ack(&self, what: &str, module: &Proc, name: &str, version: i64) -> Value {
        self.wait_reported(what, module, |r| ack_of(r, name) == (200, version))
            .await
    }
}

fn start_module(dir: &Path, env: &BTreeMap<String, String>, mqtt_port: u16) -> Proc {
    start_module_with(dir, env, mqtt_port, &[])
}

/// `edgetwin-module` with the edge environment `env` (but for our `__` keys), a fast backoff,
/// debug logs to `dir/module.log`, and `extra` variables.
fn start_module_with(
    dir: &Path,
    env: &BTreeMap<String, String>,
    mqtt_port: u16,
    extra: &[(&str, &str)],
) -> Proc {
    let mut vars: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    vars.extend(FAST_BACKOFF);
    vars.push(("RUST_LOG", "debug,rumqttc=info"));
    vars.extend_from_slice(extra);
    let bin = edgetwin_module();
    support::start_module(bin, dir.join("module.log"), mqtt_port, &vars)
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
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let metrics = scrape(port).await;
            if check(&metrics) {
                return Ok(metrics);
            }
            Err(move || {
                format!(
                    "timed out waiting for metrics: {what}; {metrics:?}\n{}",
                    module.log()
                )
            })
        },
    )
    .await
}

/// Waits until `module`'s log contains `text` (10 s).
async fn wait_log(module: &Proc, text: &str, what: &str) {
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            if module.log().contains(text) {
                return Ok(());
            }
            Err(|| format!("{what}: {}", module.log()))
        },
    )
    .await
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
    let (dir, hub, env) = provisioned_hub("module-twin").await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 1})).await;
    let mut module = start_module(dir.path(), &env, hub.mqtt_port());

    // The desired value set before start is applied from the full twin and acknowledged.
    let reported = hub
        .wait_ack("interval 1 acknowledged", &module, "telemetryInterval", v1)
        .await;
    assert_eq!(reported["telemetryInterval"]["value"], 1);
    assert_eq!(reported["identitySource"], "edgeWorkload");
    assert!(reported["startTime"].is_string());
    assert!(reported["version"].is_string());

    // Telemetry arrives on the `telemetry` output at the interval.
    let messages = poll(
        Duration::from_secs(8),
        Duration::from_millis(100),
        || async {
            let messages = hub.telemetry().await;
            if messages.len() >= 2 {
                return Ok(messages);
            }
            let module = &module;
            Err(move || format!("telemetry did not arrive: {messages:?}\n{}", module.log()))
        },
    )
    .await;
    let body: Value = serde_json::from_str(messages[0]["body"].as_str().unwrap()).unwrap();
    assert!(body["timestamp"].is_string(), "{body}");
    assert!(body["uptime"].is_number(), "{body}");
    assert!(body["memory"]["usedPercent"].is_number(), "{body}");
    // The last telemetry time is a method answer, not a twin update.
    let (status, ping) = hub.invoke("ping").await;
    assert_eq!(status, 200);
    assert!(ping["lastTelemetryTime"].is_string(), "{ping}");
    assert!(hub.reported().await.get("lastTelemetryTime").is_none());

    // A change through the REST API is acknowledged with the new desired version.
    let v2 = hub.patch_desired(json!({"telemetryInterval": 122})).await;
    let reported = hub
        .wait_ack(
            "interval 122 acknowledged",
            &module,
            "telemetryInterval",
            v2,
        )
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
    poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            if hub.telemetry().await.len() > before {
                return Ok(());
            }
            Err(|| "sampleNow sent no telemetry".to_owned())
        },
    )
    .await;
    assert_eq!(hub.invoke("bogus").await.0, 404);

    // SIGTERM flushes and exits 0.
    module.assert_sigterm_exits_0(EXIT_TIMEOUT);
    let log = module.log();
    assert!(
        log.lines().any(|l| l.starts_with("<6> ")),
        "syslog prefix missing:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_killed_and_restarted_is_recovered_from_and_a_change_made_meanwhile_is_applied() {
    let (dir, hub, env) = provisioned_hub("module-restart").await;
    let (mqtt_port, https_port) = (hub.mqtt_port(), hub.https_port());
    let v1 = hub.patch_desired(json!({"telemetryInterval": 30})).await;
    let mut module = start_module(dir.path(), &env, mqtt_port);
    hub.wait_ack("first ack", &module, "telemetryInterval", v1)
        .await;

    // SIGKILL the hub: no DISCONNECT, no flush. The module notices, retries and must not exit.
    let Hub { mut proc, .. } = hub;
    proc.signal(libc::SIGKILL);
    assert!(
        proc.wait_exit(Duration::from_secs(10)).is_some(),
        "hub did not die"
    );
    drop(proc);
    wait_log(&module, "connection failed", "the module did not notice").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a few failed attempts
    assert!(module.running(), "module exited: {}", module.log());

    // Restart on the same ports and data and change desired at once: the module is still
    // backing off, so only its twin GET after CONNACK can bring the change.
    let hub = start_hub(dir.path(), mqtt_port, https_port);
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

    module.assert_sigterm_exits_0(EXIT_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_change_made_while_the_connection_is_dropped_and_refused_is_applied_when_it_comes_back(
) {
    let (dir, hub, env) = provisioned_hub("module-faults").await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 30})).await;
    let metrics_port = free_port();
    let mut module = start_module_with(
        dir.path(),
        &env,
        hub.mqtt_port(),
        &[("EDGETWIN_METRICS_PORT", &metrics_port.to_string())],
    );
    hub.wait_ack("first ack", &module, "telemetryInterval", v1)
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
        .wait_ack(
            "ack after the connection came back",
            &module,
            "telemetryInterval",
            v2,
        )
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

    module.assert_sigterm_exits_0(EXIT_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_renewals_of_a_5_second_token_in_a_row_lose_no_desired_patch_and_no_reported_update() {
    const RENEWALS: usize = 10;
    let (dir, hub, env) = provisioned_hub("module-renew").await;
    let v0 = hub.patch_desired(json!({"telemetryInterval": 1})).await;
    // The hub closes any connection 5 s after CONNECT whatever the token says; the module's
    // tokens live 5 s and are renewed at 80 %, every 4 s, by a controlled reconnect.
    hub.fault("tokenLifetime", json!({"seconds": 5})).await;
    let metrics_port = free_port();
    let mut module = start_module_with(
        dir.path(),
        &env,
        hub.mqtt_port(),
        &[
            ("EDGETWIN_SAS_TTL_SECS", "5"),
            ("EDGETWIN_METRICS_PORT", &metrics_port.to_string()),
        ],
    );
    hub.wait_ack("first ack", &module, "telemetryInterval", v0)
        .await;
    let renewals = |m: &Proc| m.log().matches("reconnecting with a renewed token").count();
    let started = Instant::now();
    let telemetry_before = hub.telemetry().await.len();

    // Desired patches flow the whole time, one after another: each one must be acknowledged
    // with its own version and value, whichever connection it lands on.
    let mut versions = Vec::new();
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
            .wait_ack("a threshold patch acknowledged", &module, "thresholds", v)
            .await;
        assert_eq!(
            reported["thresholds"]["value"]["cpuTemperature"],
            json!(f64::from(celsius))
        );
        versions.push(v);
    }
    let elapsed = started.elapsed();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "desired versions are not consecutive: {versions:?}"
    );

    // Stop telemetry; the last telemetry time `ping` answers is the last telemetry sent.
    let v_end = hub.patch_desired(json!({"telemetryInterval": 3600})).await;
    hub.wait_ack("interval 3600", &module, "telemetryInterval", v_end)
        .await;
    let messages = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let messages = hub.telemetry().await;
            let last = messages
                .last()
                .and_then(|m| serde_json::from_str::<Value>(m["body"].as_str()?).ok())
                .map(|b| b["timestamp"].clone());
            if last.is_some()
                && last.as_ref() == Some(&hub.invoke("ping").await.1["lastTelemetryTime"])
            {
                return Ok(messages);
            }
            let module = &module;
            Err(move || {
                format!(
                    "last telemetry {last:?} is not the lastTelemetryTime `ping` answers\n{}",
                    module.log()
                )
            })
        },
    )
    .await;
    let sent = messages.len() - telemetry_before;
    let secs = elapsed.as_secs() as usize;
    assert!(
        sent + 3 >= secs,
        "telemetry stalled: {sent} messages in {secs} s"
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
         {sent} telemetry messages",
        renewals(&module),
        versions.len(),
    );
    module.assert_sigterm_exits_0(EXIT_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_seconds_of_telemetry_every_second_move_the_reported_version_only_with_state_changes(
) {
    let (dir, hub, env) = provisioned_hub("module-twin-cost").await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 1})).await;
    let mut module = start_module(dir.path(), &env, hub.mqtt_port());
    hub.wait_ack("interval 1 acknowledged", &module, "telemetryInterval", v1)
        .await;
    let before = hub.reported().await["$version"].as_i64().unwrap();
    let telemetry_before = hub.telemetry().await.len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = hub.reported().await["$version"].as_i64().unwrap();
    let sent = hub.telemetry().await.len() - telemetry_before;
    assert!(sent >= 18, "only {sent} telemetry messages in 20 s");
    // Reported updates are twin updates, metered and throttled by IoT Hub: a health change may
    // move the version (at most a handful), a telemetry message never does.
    assert!(
        after - before <= 3,
        "reported $version went {before} -> {after} over {sent} telemetry messages"
    );
    eprintln!("{sent} telemetry messages in 20 s; reported $version {before} -> {after}");
    module.assert_sigterm_exits_0(EXIT_TIMEOUT);
}

/// Injects fault `kind` (`body`) on the module's next two reported patches: the acknowledgement
/// of a desired change must still land, after exactly two retries, and the fault be used up.
async fn a_reported_patch_failed_twice_by_is_retried_and_lands(tag: &str, kind: &str, body: Value) {
    let (dir, hub, env) = provisioned_hub(tag).await;
    // No telemetry during the test: the only reported patch is the acknowledgement.
    let v1 = hub.patch_desired(json!({"telemetryInterval": 3600})).await;
    let mut module = start_module(dir.path(), &env, hub.mqtt_port());
    hub.wait_ack("first ack", &module, "telemetryInterval", v1)
        .await;
    hub.fault(kind, body).await;
    let v2 = hub
        .patch_desired(json!({"thresholds": {"diskPercent": 97}}))
        .await;
    let reported = hub
        .wait_ack("the failed ack", &module, "thresholds", v2)
        .await;
    assert_eq!(reported["thresholds"]["value"]["diskPercent"], json!(97.0));
    let log = module.log();
    assert_eq!(
        log.matches("reported patch throttled or failed; will retry")
            .count(),
        2,
        "{log}"
    );
    let faults = hub.faults().await;
    assert_eq!(faults["throttles"], json!([]));
    assert_eq!(faults["serverErrors"], json!([]));
    assert!(module.running(), "{log}");
    module.assert_sigterm_exits_0(EXIT_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_reported_patch_is_retried_and_lands() {
    a_reported_patch_failed_twice_by_is_retried_and_lands(
        "module-throttle",
        "throttle",
        json!({"operation": "MQTT twin/PATCH", "count": 2, "retryAfterSeconds": 1}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_patch_answered_503_is_retried_and_lands() {
    a_reported_patch_failed_twice_by_is_retried_and_lands(
        "module-503",
        "serverError",
        json!({"operation": "MQTT twin/PATCH", "count": 2, "status": 503}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_get_answered_500_at_start_is_retried_and_the_desired_state_applied() {
    let (dir, hub, env) = provisioned_hub("module-500").await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 3600})).await;
    let faults = hub
        .fault(
            "serverError",
            json!({"operation": "MQTT twin/GET", "count": 2, "status": 500}),
        )
        .await;
    assert_eq!(faults["serverErrors"][0]["status"], 500);
    let mut module = start_module(dir.path(), &env, hub.mqtt_port());
    hub.wait_ack(
        "ack after two failed GETs",
        &module,
        "telemetryInterval",
        v1,
    )
    .await;
    let log = module.log();
    assert_eq!(log.matches("twin GET failed; retrying").count(), 2, "{log}");
    assert!(log.contains("status=500"), "{log}");
    assert_eq!(hub.faults().await["serverErrors"], json!([]));
    module.assert_sigterm_exits_0(EXIT_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_cut_off_waits_for_the_hub_flushes_the_buffered_outputs_and_exits_0() {
    let (dir, hub, env) = provisioned_hub("module-sigterm").await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 1})).await;
    let mut module = start_module(dir.path(), &env, hub.mqtt_port());
    hub.wait_ack("first ack", &module, "telemetryInterval", v1)
        .await;

    // Cut off for 3 s. Telemetry ticks meanwhile leave outputs waiting in the outbox.
    hub.fault("refuseConnects", json!({"seconds": 3})).await;
    let cut = Instant::now();
    let cut_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    hub.fault("disconnect", json!({"clientId": module_client_id()}))
        .await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
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
        log.contains("reported properties and outputs flushed; stopped"),
        "{log}"
    );
    // The telemetry buffered while cut off went out.
    let buffered = hub
        .telemetry()
        .await
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(m["body"].as_str()?).ok())
        .filter(|body| {
            body["timestamp"]
                .as_str()
                .is_some_and(|t| t > cut_at.as_str())
        })
        .count();
    assert!(
        buffered >= 1,
        "no telemetry from the cut-off time arrived\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_connection_string_and_ca_file_work_without_the_workload_api() {
    let (dir, hub, env) = provisioned_hub("module-cs").await;
    let v1 = hub.patch_desired(json!({"telemetryInterval": 122})).await;
    let connection_string =
        module_connection_string(hub.host_name(), DEVICE, MODULE, &env["__MODULE_KEY"]);
    let ca = hub.info["caCertificate"].as_str().unwrap();
    let only_cs = BTreeMap::new();
    let mut module = start_module_with(
        dir.path(),
        &only_cs,
        hub.mqtt_port(),
        &[
            ("EDGETWIN_CONNECTION_STRING", connection_string.as_str()),
            ("EDGETWIN_CA_FILE", ca),
        ],
    );
    let reported = hub
        .wait_ack(
            "ack through a connection string",
            &module,
            "telemetryInterval",
            v1,
        )
        .await;
    assert_eq!(reported["identitySource"], "connectionString");
    assert!(
        !module.log().contains(&env["__MODULE_KEY"]),
        "key leaked to the log"
    );
    module.assert_sigterm_exits_0(EXIT_TIMEOUT);
}

#[test]
fn a_missing_edge_variable_is_one_clear_error_naming_it() {
    let dir = TempDir::new("module-env");
    let log = dir.join("module.log");
    let status = Command::new(edgetwin_module())
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

/// Runs `edgetwin-module` with only `vars` (and port 0 for its metrics) and `args`; its exit code
/// within 5 s (`None` if it still ran, then killed), stdout and stderr.
fn run_module_briefly(
    dir: &TempDir,
    tag: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let (out, err) = (
        dir.join(format!("{tag}.out")),
        dir.join(format!("{tag}.err")),
    );
    let mut module = Proc::spawn_with_stdout(
        Command::new(edgetwin_module())
            .args(args)
            .env_clear()
            .env("EDGETWIN_METRICS_PORT", "0")
            .envs(vars.iter().copied()),
        Stdio::from(std::fs::File::create(&out).unwrap()),
        err.clone(),
    );
    let code = module.wait_exit(Duration::from_secs(5));
    drop(module);
    (code, support::read_log(&out), support::read_log(&err))
}

/// A case of a bad environment: a tag, the variables, the variable named, what is said.
type BadVariableCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);

#[test]
fn a_key_that_is_not_base64_a_missing_ca_file_or_a_device_connection_string_is_one_error_line_naming_the_variable_and_exit_1(
) {
    let dir = TempDir::new("module-bad-vars");
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let ca = ca.to_str().unwrap();
    let module_cs = "HostName=localhost;DeviceId=gw;ModuleId=m;SharedAccessKey=a2V5";
    // (tag, environment, the variable the line must name, what it must say)
    let cases: [BadVariableCase<'_>; 4] = [
        (
            "not-base64",
            &[
                (
                    "EDGETWIN_CONNECTION_STRING",
                    "HostName=localhost;DeviceId=gw;ModuleId=m;SharedAccessKey=not-base64!",
                ),
                ("EDGETWIN_CA_FILE", ca),
            ],
            "EDGETWIN_CONNECTION_STRING",
            "not valid base64",
        ),
        (
            "missing-ca",
            &[
                ("EdgeHubConnectionString", module_cs),
                ("EdgeModuleCACertificateFile", "/nonexistent/edge-ca.pem"),
            ],
            "EdgeModuleCACertificateFile",
            "/nonexistent/edge-ca.pem",
        ),
        (
            "device-string",
            &[
                (
                    "EDGETWIN_CONNECTION_STRING",
                    "HostName=localhost;DeviceId=gw;SharedAccessKey=a2V5",
                ),
                ("EDGETWIN_CA_FILE", ca),
            ],
            "EDGETWIN_CONNECTION_STRING",
            "ModuleId",
        ),
        (
            "device-string-simulator",
            &[
                (
                    "EdgeHubConnectionString",
                    "HostName=localhost;DeviceId=gw;SharedAccessKey=a2V5",
                ),
                ("EdgeModuleCACertificateFile", ca),
            ],
            "EdgeHubConnectionString",
            "ModuleId",
        ),
    ];
    for (tag, vars, variable, what) in cases {
        let (code, _, stderr) = run_module_briefly(&dir, tag, &[], vars);
        assert_eq!(code, Some(1), "{tag}: exit code\n{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{tag}: one line\n{stderr}");
        assert!(lines[0].starts_with("<3> "), "{tag}: an error\n{stderr}");
        assert!(lines[0].contains(variable), "{tag}: {variable:?}\n{stderr}");
        assert!(lines[0].contains(what), "{tag}: {what:?}\n{stderr}");
        assert!(
            !lines[0].contains("not-base64!"),
            "{tag}: key shown\n{stderr}"
        );
    }
}

#[test]
fn help_and_version_print_and_exit_0_without_starting() {
    let dir = TempDir::new("module-help");
    for (arg, expected) in [
        ("--help", "EdgeModuleCACertificateFile"),
        ("-h", "EDGETWIN_CONNECTION_STRING"),
        (
            "--version",
            concat!("edgetwin-module ", env!("CARGO_PKG_VERSION")),
        ),
        ("-V", concat!("edgetwin-module ", env!("CARGO_PKG_VERSION"))),
    ] {
        let (code, stdout, stderr) = run_module_briefly(&dir, arg, &[arg], &[]);
        assert_eq!(code, Some(0), "{arg}\n{stdout}\n{stderr}");
        assert!(stdout.contains(expected), "{arg}: {expected:?}\n{stdout}");
        assert_eq!(stderr, "", "{arg}: logged as if starting");
    }
    let (code, _, stderr) = run_module_briefly(&dir, "bogus", &["--bogus"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--bogus") && stderr.contains("--help"),
        "{stderr}"
    );
}
