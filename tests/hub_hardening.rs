//! The hub against hostile and unlucky input, end to end over real sockets (issue 14): ids that
//! look like paths never reach the file system, workload sockets exist only while an edge device
//! can use them, and the workload API signs only what it is asked for.

use edgetwin_test_support as support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use std::time::Duration;

use support::{poll, workload_call, Hub, HubOptions, LogOutput, TempDir};

/// Asserts that `socket` answers `GET /trust-bundle` with a certificate.
fn serves_trust_bundle(socket: &Path) {
    let (status, bundle) =
        workload_call(socket, "GET", "/trust-bundle?api-version=2022-08-03", None);
    assert_eq!(status, 200, "{bundle}");
    assert!(bundle["certificate"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

/// A hub in a new scratch directory named after `tag`, with edge device `device` and its module
/// `m`; that module's `IOTEDGE_*` environment.
async fn hub_with_module(
    tag: &str,
    device: &str,
) -> (TempDir, Hub, std::collections::BTreeMap<String, String>) {
    let dir = TempDir::new(tag);
    let hub = Hub::start(dir.path(), HubOptions::default());
    hub.rest.create_edge_device(device).await;
    hub.rest.create_module(device, "m").await;
    let env = hub.rest.edge_environment(device, "m").await;
    (dir, hub, env)
}

/// The socket path in a module's `IOTEDGE_WORKLOADURI`.
fn socket_of(hub: &Hub, env: &std::collections::BTreeMap<String, String>) -> PathBuf {
    let uri = &env["IOTEDGE_WORKLOADURI"];
    let path = PathBuf::from(uri.strip_prefix("unix://").expect("a unix:// workload URI"));
    assert!(
        path.starts_with(hub.info["workloadDir"].as_str().unwrap()),
        "{uri} is not in the workload directory"
    );
    path
}

/// The entries of a directory, sorted (empty if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// How many sockets the process `pid` holds open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// Waits up to `timeout` for process `pid` to hold no more than `count` sockets.
async fn sockets_fall_back_to(pid: u32, count: usize, timeout: Duration) {
    poll(timeout, Duration::from_millis(50), || async move {
        let now = open_sockets(pid);
        (now <= count)
            .then_some(())
            .ok_or(move || format!("the hub holds {now} sockets, {count} before"))
    })
    .await;
}

#[tokio::test]
async fn bulk_edge_ids_that_look_like_paths_are_refused_and_touch_nothing_outside_the_data_directory(
) {
    let dir = TempDir::new("bulk-paths");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let victim = dir.join("victim.sock");
    std::fs::write(&victim, "keep me").unwrap();
    let before = entries(dir.path());
    let sockets_before = open_sockets(hub.proc.child.id());
    let items: Vec<Value> = ["../victim", "../../escaped/x", "a/b", "..", "../new-dir/y"]
        .iter()
        .map(|id| json!({"id": id, "importMode": "create", "capabilities": {"iotEdge": true}}))
        .collect();
    let (status, body) = hub.rest.call("POST", "/devices", Some(json!(items))).await;
    assert_eq!(status, 400, "{body}");
    let refused: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(
        refused,
        ["../victim", "../../escaped/x", "a/b", "../new-dir/y"]
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert_eq!(entries(dir.path()), before);
    assert!(!dir.path().parent().unwrap().join("escaped").exists());
    assert!(entries(Path::new(hub.info["workloadDir"].as_str().unwrap())).is_empty());
    sockets_fall_back_to(hub.proc.child.id(), sockets_before, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_edge_device_has_a_workload_socket_only_from_when_a_module_can_use_it_until_it_is_deleted(
) {
    let dir = TempDir::new("socket-demand");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let workload_dir = PathBuf::from(hub.info["workloadDir"].as_str().unwrap());
    for n in 0..20 {
        hub.rest.create_edge_device(&format!("idle-{n}")).await;
    }
    assert!(
        entries(&workload_dir).is_empty(),
        "edge devices without modules got sockets: {:?}",
        entries(&workload_dir)
    );

    hub.rest.create_edge_device("gw").await;
    let env = hub.rest.edge_environment("gw", "$edgeAgent").await;
    let socket = socket_of(&hub, &env);
    serves_trust_bundle(&socket);

    hub.rest.create_edge_device("gw2").await;
    hub.rest.create_module("gw2", "filter").await;
    assert_eq!(
        entries(&workload_dir).len(),
        2,
        "a new module gets its socket"
    );

    let (status, body) = hub.rest.call("DELETE", "/devices/gw", None).await;
    assert_eq!(status, 204, "{body}");
    assert!(!socket.exists(), "the deleted device's socket file stays");
    assert!(UnixStream::connect(&socket).is_err());
    let (status, body) = hub
        .rest
        .call(
            "POST",
            "/devices",
            Some(json!([{"id": "gw2", "importMode": "delete"}])),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        entries(&workload_dir).is_empty(),
        "{:?}",
        entries(&workload_dir)
    );
}

#[tokio::test]
async fn an_edge_fleet_imported_in_bulk_gets_no_sockets_until_asked_not_even_after_a_restart() {
    let dir = TempDir::new("socket-bulk");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let workload_dir = PathBuf::from(hub.info["workloadDir"].as_str().unwrap());
    let devices: Vec<Value> = (0..50)
        .map(|n| json!({"id": format!("edge-{n}"), "importMode": "create", "capabilities": {"iotEdge": true}}))
        .collect();
    let modules: Vec<Value> = (0..50)
        .map(|n| json!({"id": format!("edge-{n}"), "moduleId": "m", "importMode": "create"}))
        .collect();
    for items in [devices, modules] {
        let (status, body) = hub.rest.call("POST", "/devices", Some(json!(items))).await;
        assert_eq!(status, 200, "{body}");
    }
    let env = hub.rest.edge_environment("edge-7", "m").await;
    assert_eq!(entries(&workload_dir).len(), 1, "only the asked-for socket");
    drop(hub);

    let hub = Hub::start(dir.path(), HubOptions::default());
    assert_eq!(
        entries(&workload_dir).len(),
        1,
        "a restart opened sockets for the fleet: {:?}",
        entries(&workload_dir)
    );
    serves_trust_bundle(&socket_of(&hub, &env));
}

#[tokio::test]
async fn a_128_character_edge_device_id_gets_a_socket_its_environment_points_at() {
    let (_dir, hub, env) = hub_with_module("long-id", &"g".repeat(128)).await;
    let socket = socket_of(&hub, &env);
    serves_trust_bundle(&socket);
}

#[tokio::test]
async fn an_edge_device_with_a_module_has_its_socket_again_after_a_restart() {
    let (dir, hub, env) = hub_with_module("socket-restart", "gw").await;
    drop(hub);
    let hub = Hub::start(dir.path(), HubOptions::default());
    let socket = socket_of(&hub, &env);
    serves_trust_bundle(&socket);
}

#[tokio::test]
async fn the_workload_api_signs_with_the_key_and_incarnation_asked_for_or_refuses() {
    let (_dir, hub, env) = hub_with_module("sign-rules", "gw").await;
    let (_, module) = hub.rest.call("GET", "/devices/gw/modules/m", None).await;
    let key = |which: &str| {
        module["authentication"]["symmetricKey"][which]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (primary, secondary) = (key("primaryKey"), key("secondaryKey"));
    let socket = socket_of(&hub, &env);
    let generation = &env["IOTEDGE_MODULEGENERATIONID"];
    let data = "aGVsbG8="; // "hello"
    let sign = |generation: &str, key_id: &str, algo: &str| {
        workload_call(
            &socket,
            "POST",
            &format!("/modules/m/genid/{generation}/sign?api-version=2022-08-03"),
            Some(json!({"keyId": key_id, "algo": algo, "data": data})),
        )
    };
    let expected = |key: &str| {
        let key = edgetwin_wire::sas::decode_key(key).unwrap();
        edgetwin_wire::sas::sign_bytes(&key, b"hello")
    };

    let (status, body) = sign(generation, "primary", "HMACSHA256");
    assert_eq!(
        (status, body["digest"].as_str()),
        (200, Some(expected(&primary).as_str()))
    );
    let (status, body) = sign(generation, "secondary", "HMACSHA256");
    assert_eq!(
        (status, body["digest"].as_str()),
        (200, Some(expected(&secondary).as_str()))
    );
    let (status, body) = sign(generation, "tertiary", "HMACSHA256");
    assert_eq!(status, 400, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("keyId 'tertiary'"));
    let (status, body) = sign(generation, "primary", "HMACSHA1");
    assert_eq!(status, 400, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("algo 'HMACSHA1'"));
    let (status, body) = sign("1", "primary", "HMACSHA256");
    assert_eq!(status, 404, "{body}");

    let (status, _) = hub.rest.call("DELETE", "/devices/gw/modules/m", None).await;
    assert_eq!(status, 204);
    hub.rest.create_module("gw", "m").await;
    let (status, body) = sign(generation, "primary", "HMACSHA256");
    assert_eq!(
        status, 404,
        "a re-created module's old generation still signs: {body}"
    );
}

/// A TLS connection to the hub's REST port.
async fn rest_tls(hub: &Hub) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", hub.https_port()))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(support::tls_trusting(&hub.ca()));
    let name = rustls::pki_types::ServerName::try_from(hub.host_name().to_owned()).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Sends `bytes` one per second until the hub closes the connection; the seconds it took.
async fn trickle_until_closed<S>(mut stream: S, bytes: &[u8]) -> u64
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    for byte in bytes.iter().cycle() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        let answer = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = answer {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never closed");
    }
    started.elapsed().as_secs()
}

#[tokio::test]
async fn https_clients_that_send_nothing_or_trickle_headers_or_a_body_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("slow-rest");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let silent_tcp = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", hub.https_port()))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut buf)).await;
        started.elapsed().as_secs()
    };
    let silent_tls = async {
        let mut tls = rest_tls(&hub).await;
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(60), tls.read(&mut buf)).await;
        started.elapsed().as_secs()
    };
    let trickled_headers = async {
        let tls = rest_tls(&hub).await;
        trickle_until_closed(tls, b"GET /devices?api-version=2021-04-12 HTTP/1.1\r\nX: ").await
    };
    let trickled_body = async {
        let mut tls = rest_tls(&hub).await;
        tls.write_all(
            b"PUT /devices/d?api-version=2021-04-12 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
        trickle_until_closed(tls, b"{").await
    };
    let (tcp, tls, headers, body) =
        tokio::join!(silent_tcp, silent_tls, trickled_headers, trickled_body);
    for (what, secs) in [
        ("silent TCP", tcp),
        ("silent TLS", tls),
        ("trickled headers", headers),
        ("trickled body", body),
    ] {
        assert!(secs <= 45, "{what} stayed open {secs} s");
    }
    let (status, _) = hub.rest.call("GET", "/devices", None).await;
    assert_eq!(status, 200, "the hub still serves others");
}

/// Starts `edgetwin-module` for `gw/m` of `hub` with debug logs written to `output`.
async fn module_of(hub: &Hub, dir: &Path, output: LogOutput) -> support::Proc {
    hub.rest.create_edge_device("gw").await;
    hub.rest.create_module("gw", "m").await;
    let env = hub.rest.edge_environment("gw", "m").await;
    let mut command = std::process::Command::new(support::edgetwin_module());
    command
        .env_clear()
        .env("EDGETWIN_MQTT_PORT", hub.mqtt_port().to_string())
        .env("EDGETWIN_METRICS_PORT", "0")
        .env("RUST_LOG", "debug")
        .envs(&env)
        .envs(support::FAST_BACKOFF);
    let mut module = output.spawn(&mut command, dir.join("module.log"));
    if output == LogOutput::ClosedPipe {
        module.close_output();
    }
    module
}

/// Waits until `gw/m` is connected and has reported something, and then is still connected.
async fn module_connects_and_reports(hub: &Hub, module: &mut support::Proc) {
    poll(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let (_, identity) = hub.rest.call("GET", "/devices/gw/modules/m", None).await;
            let reported = hub.rest.reported("gw", "m").await;
            let reported_something = reported
                .as_object()
                .is_some_and(|r| r.keys().any(|k| !k.starts_with('$')));
            (identity["connectionState"] == "Connected" && reported_something)
                .then_some(())
                .ok_or(move || format!("not connected and reporting: {identity} {reported}"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(module.running(), "the module exited");
    let (_, identity) = hub.rest.call("GET", "/devices/gw/modules/m", None).await;
    assert_eq!(identity["connectionState"], "Connected");
}

#[tokio::test]
async fn a_hub_whose_log_reader_went_away_still_connects_devices_and_commits_writes() {
    let dir = TempDir::new("hub-closed-log");
    let options = HubOptions {
        rust_log: Some("debug"),
        output: LogOutput::ClosedPipe,
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), options);
    let mut module = module_of(&hub, dir.path(), LogOutput::File).await;
    module_connects_and_reports(&hub, &mut module).await;
    let desired = hub
        .rest
        .patch_desired("gw", "m", json!({"telemetryInterval": 7}))
        .await;
    assert!(desired["$version"].as_i64().unwrap() >= 2);
}

#[tokio::test]
async fn a_hub_logging_to_a_full_disk_still_connects_devices_and_commits_writes() {
    let dir = TempDir::new("hub-full-disk");
    let options = HubOptions {
        rust_log: Some("debug"),
        output: LogOutput::FullDisk,
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), options);
    let mut module = module_of(&hub, dir.path(), LogOutput::File).await;
    module_connects_and_reports(&hub, &mut module).await;
    let reported = hub.rest.reported("gw", "m").await;
    assert!(reported["$version"].as_i64().unwrap() >= 2, "{reported}");
}

#[tokio::test]
async fn a_module_whose_log_reader_went_away_keeps_running() {
    let dir = TempDir::new("module-closed-log");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let mut module = module_of(&hub, dir.path(), LogOutput::ClosedPipe).await;
    module_connects_and_reports(&hub, &mut module).await;
}

#[tokio::test]
async fn a_module_logging_to_a_full_disk_keeps_running() {
    let dir = TempDir::new("module-full-disk");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let mut module = module_of(&hub, dir.path(), LogOutput::FullDisk).await;
    module_connects_and_reports(&hub, &mut module).await;
}

#[tokio::test]
async fn a_service_token_whose_sr_names_one_device_reaches_only_that_device() {
    let dir = TempDir::new("sr-prefix");
    let hub = Hub::start(dir.path(), HubOptions::default());
    for id in ["d1", "d10", "d2"] {
        hub.rest.create_device(id).await;
    }
    let host = hub.host_name().to_owned();
    let scoped = support::Rest::scoped(&hub.info, &format!("{host}/devices/d1"));
    let (status, body) = scoped.call("GET", "/devices/d1", None).await;
    assert_eq!(status, 200, "{body}");
    for (method, path) in [
        ("GET", "/devices/d2"),
        ("GET", "/devices/d10"),
        ("GET", "/devices"),
        ("DELETE", "/devices/d2"),
        ("GET", "/edgetwin/faults"),
        ("DELETE", "/edgetwin/faults"),
    ] {
        let (status, body) = scoped.call(method, path, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
    }
    let (status, _) = hub.rest.call("GET", "/devices/d2", None).await;
    assert_eq!(status, 200, "d2 was deleted through a token for d1");
}

#[tokio::test]
async fn the_connecting_identity_is_the_usernames_exactly_while_the_sr_may_be_lower_case_as_documented(
) {
    use rumqttc::mqttbytes::v4::ConnectReturnCode::{NotAuthorized, Success};
    let dir = TempDir::new("id-case");
    let hub = Hub::start(dir.path(), HubOptions::default());
    for id in ["abc", "ABC"] {
        hub.rest.create_device(id).await;
    }
    let (lower_key, upper_key) = (
        hub.rest.device_key("abc").await,
        hub.rest.device_key("ABC").await,
    );
    let host = hub.host_name().to_owned();
    for (sr, key, expected, why) in [
        (
            "abc",
            &upper_key,
            Success,
            "the lower-case sr IoT Hub's guide specifies",
        ),
        ("ABC", &upper_key, Success, "the sr as given"),
        ("abc", &lower_key, NotAuthorized, "abc's own token"),
        ("ABC", &lower_key, NotAuthorized, "abc's key, sr naming ABC"),
        ("abd", &upper_key, NotAuthorized, "another device's sr"),
    ] {
        let connect =
            support::connect_packet_scoped(&hub, "ABC", &format!("{host}/devices/{sr}"), key);
        let (_, code) = support::mqtt_connect_with(&hub, &connect).await;
        assert_eq!(code, expected, "connecting as ABC with {why}");
    }
}

#[tokio::test]
async fn the_database_and_its_journal_are_private_to_the_hubs_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("private-files");
    let hub = Hub::start(dir.path(), HubOptions::default());
    hub.rest.create_edge_device("gw").await;
    let data = dir.join("hub");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for name in ["hub.db", "hub.db-wal", "hub.db-shm", "hub.json"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
}

/// Starts a hub whose data directory holds only `database` as its `hub.db` (as a restore from
/// a copy does), and asserts device `id` is in it.
async fn restored_hub_has_device(database: &Path, id: &str) {
    let dir = TempDir::new("restored");
    std::fs::create_dir_all(dir.join("hub")).unwrap();
    std::fs::copy(database, dir.join("hub").join("hub.db")).unwrap();
    let hub = Hub::start(dir.path(), HubOptions::default());
    let (status, device) = hub.rest.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(status, 200, "device {id} is not in the copy: {device}");
}

#[tokio::test]
async fn after_a_clean_stop_hub_db_alone_holds_every_write() {
    let dir = TempDir::new("clean-stop-copy");
    let mut hub = Hub::start(dir.path(), HubOptions::default());
    hub.rest.create_device("kept").await;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        hub.proc.signal(signal);
        assert_eq!(hub.proc.wait_exit(Duration::from_secs(10)), Some(0));
        let copy = dir.join("copy.db");
        std::fs::copy(dir.join("hub").join("hub.db"), &copy).unwrap();
        restored_hub_has_device(&copy, "kept").await;
        std::fs::remove_file(copy).unwrap();
        hub = Hub::start(dir.path(), HubOptions::default());
    }
}

#[tokio::test]
async fn hub_backup_copies_a_running_hub_to_one_private_file_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("backup");
    let hub = Hub::start(dir.path(), HubOptions::default());
    hub.rest.create_device("backed-up").await;
    let backup = dir.join("hub-backup.db");
    let run = || {
        hub.edgetwin()
            .args(["hub", "backup", "--data-dir"])
            .arg(dir.join("hub"))
            .arg("--to")
            .arg(&backup)
            .output()
            .unwrap()
    };
    support::stdout_of_success("edgetwin hub backup", &run());
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds every key");
    let again = support::stderr_of_failure("a backup onto an existing file", &run());
    assert!(again.contains("exists already"), "{again}");
    restored_hub_has_device(&backup, "backed-up").await;
}

/// `edgetwin hub` on `dir/hub` with `args`, expected to refuse to start: its exit code and log.
fn hub_refusing(dir: &Path, args: &[&str]) -> (i32, String) {
    let log = dir.join("refused.log");
    let mut command = std::process::Command::new(support::edgetwin());
    command
        .args(["hub", "--data-dir"])
        .arg(dir.join("hub"))
        .args(["--mqtt-port", "0", "--https-port", "0"])
        .args(args);
    let mut proc = support::Proc::spawn(&mut command, log.clone());
    let code = proc.wait_exit(Duration::from_secs(10));
    (code.expect("the hub started"), support::read_log(&log))
}

/// Runs `sql` on the stopped hub's database in `dir/hub`.
fn edit_database(dir: &Path, sql: &str) {
    let db = rusqlite::Connection::open(dir.join("hub/hub.db")).unwrap();
    db.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn a_hub_that_lost_its_database_refuses_to_start_fresh_unless_told_to_reset() {
    let dir = TempDir::new("lost-db");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let keys = hub.info["policies"].clone();
    drop(hub);
    for file in ["hub.db", "hub.db-wal", "hub.db-shm"] {
        let _ = std::fs::remove_file(dir.join("hub").join(file));
    }
    let info_before = std::fs::read_to_string(dir.join("hub/hub.json")).unwrap();
    let (code, log) = hub_refusing(dir.path(), &[]);
    assert_ne!(code, 0);
    assert!(log.contains("--reset") && log.contains("hub.db"), "{log}");
    assert_eq!(
        std::fs::read_to_string(dir.join("hub/hub.json")).unwrap(),
        info_before,
        "hub.json was overwritten"
    );
    let (code, _) = hub_refusing(dir.path(), &[]);
    assert_ne!(
        code, 0,
        "an empty database left by the refusal is refused too"
    );

    let mut command = std::process::Command::new(support::edgetwin());
    command
        .args([
            "hub",
            "--reset",
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--data-dir",
        ])
        .arg(dir.join("hub"));
    let mut reset = support::Proc::spawn(&mut command, dir.join("reset.log"));
    let info: Value =
        support::poll_blocking(Duration::from_secs(10), Duration::from_millis(50), || {
            assert!(reset.running(), "--reset did not start: {}", reset.log());
            // hub.json stays from the refused start: wait for the one with the new keys
            std::fs::read_to_string(dir.join("hub/hub.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .filter(|info| info["policies"] != keys)
                .ok_or(|| "no hub.json with new keys".to_owned())
        });
    assert_ne!(info["policies"], keys, "--reset makes new keys");
}

#[tokio::test]
async fn a_damaged_record_is_named_by_its_identity_and_other_writes_keep_working() {
    let dir = TempDir::new("damaged-row");
    let hub = Hub::start(dir.path(), HubOptions::default());
    for id in ["d1", "d2"] {
        hub.rest.create_device(id).await;
    }
    drop(hub);
    edit_database(
        dir.path(),
        "UPDATE twins SET record = '{not json' WHERE device_id = 'd1';
         UPDATE identities SET record = '{not json' WHERE device_id = 'd1' AND module_id = '';",
    );
    let hub = Hub::start(dir.path(), HubOptions::default());
    let (status, body) = hub
        .rest
        .call("PUT", "/devices/d3", Some(json!({"deviceId": "d3"})))
        .await;
    assert_eq!(status, 200, "an unrelated write failed: {body}");
    let (status, body) = hub
        .rest
        .call("PATCH", "/twins/d2", Some(json!({"tags": {"a": 1}})))
        .await;
    assert_eq!(status, 200, "an unrelated twin write failed: {body}");
    for path in ["/devices/d1", "/devices", "/twins/d1"] {
        let (status, body) = hub.rest.call("GET", path, None).await;
        assert_eq!(status, 500, "{path}: {body}");
        let message = body["Message"].as_str().unwrap_or_default().to_owned() + &body.to_string();
        assert!(
            message.contains("device d1") || message.contains("twin d1"),
            "{path} does not name the record: {body}"
        );
    }
}

#[tokio::test]
async fn a_damaged_database_page_stops_the_start_with_what_the_check_found() {
    use std::io::{Seek, SeekFrom};
    let dir = TempDir::new("damaged-page");
    let hub = Hub::start(dir.path(), HubOptions::default());
    for n in 0..50 {
        hub.rest.create_edge_device(&format!("gw-{n}")).await;
    }
    drop(hub);
    edit_database(dir.path(), "PRAGMA wal_checkpoint(TRUNCATE);");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("hub/hub.db"))
        .unwrap();
    let page = 4096;
    file.seek(SeekFrom::Start(3 * page)).unwrap();
    file.write_all(&vec![0xA5; page as usize]).unwrap();
    drop(file);
    let (code, log) = hub_refusing(dir.path(), &[]);
    assert_ne!(code, 0);
    assert!(log.contains("is damaged"), "{log}");
}

#[test]
fn provision_refuses_an_id_that_would_make_a_connection_string_name_another_identity() {
    for args in [
        &["provision", "--device", "x;ModuleId=evil"][..],
        &[
            "provision",
            "--device",
            "x",
            "--module",
            "m;SharedAccessKey=k",
        ],
        &["edge-env", "--device", "gw=1", "--module", "m"],
    ] {
        let out = std::process::Command::new(support::edgetwin())
            .args(args)
            .env(
                "IOTHUB_CONNECTION_STRING",
                "HostName=h;SharedAccessKeyName=n;SharedAccessKey=a2V5",
            )
            .output()
            .unwrap();
        let stderr = support::stderr_of_failure("provision", &out);
        assert!(
            stderr.contains("which a connection string cannot carry"),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("DeviceId="));
    }
}

#[tokio::test]
async fn bodies_and_values_iot_hub_refuses_are_refused_and_the_hub_keeps_serving() {
    let dir = TempDir::new("low-items");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let (status, body) = hub
        .rest
        .call("PUT", "/devices/arr", Some(json!(["arr", null, "enabled"])))
        .await;
    assert_eq!(status, 400, "an array created a device: {body}");
    let (status, _) = hub.rest.call("GET", "/devices/arr", None).await;
    assert_eq!(status, 404);

    for fault in ["refuseConnects", "tokenLifetime"] {
        let (status, body) = hub
            .rest
            .call(
                "POST",
                &format!("/edgetwin/faults/{fault}"),
                Some(json!({"seconds": u64::MAX})),
            )
            .await;
        assert_eq!(status, 400, "{fault}: {body}");
        assert!(body.to_string().contains("seconds"), "{body}");
    }

    hub.rest.create_edge_device("gw").await;
    hub.rest.create_module("gw", "m").await;
    let big = "x".repeat(128 * 1024);
    let (status, body) = hub
        .rest
        .call(
            "POST",
            "/twins/gw/modules/m/methods",
            Some(json!({"methodName": "echo", "payload": big, "responseTimeoutInSeconds": 5})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("131072"), "{body}");
    let (status, _) = hub.rest.call("GET", "/devices/gw", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9() {
    let dir = TempDir::new("kill-9");
    let hub = Hub::start(dir.path(), HubOptions::default());
    hub.rest.create_edge_device("gw").await;
    let mut acknowledged = Vec::new();
    for n in 0..30 {
        let (status, body) = hub
            .rest
            .call(
                "PATCH",
                "/twins/gw",
                Some(json!({"tags": {format!("t{n}"): n}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        acknowledged.push(n);
    }
    hub.proc.signal(libc::SIGKILL);
    drop(hub);
    let hub = Hub::start(dir.path(), HubOptions::default());
    let (status, twin) = hub.rest.call("GET", "/twins/gw", None).await;
    assert_eq!(status, 200, "{twin}");
    for n in acknowledged {
        assert_eq!(
            twin["tags"][format!("t{n}")],
            n,
            "tag t{n} was lost: {twin}"
        );
    }
}

/// Configuration content that tells `$edgeAgent` to run a module `m`.
fn content_of_modules() -> Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {"m": {"type": "docker"}}}},
        "$edgeHub": {"properties.desired": {"routes": {}}},
    }})
}

#[tokio::test]
async fn an_edge_device_told_to_run_modules_gets_its_socket_and_keeps_it_across_a_restart_but_a_deployments_targets_do_not(
) {
    let dir = TempDir::new("socket-configured");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let workload_dir = PathBuf::from(hub.info["workloadDir"].as_str().unwrap());
    hub.rest.create_edge_device("gw").await;
    let apply = "/devices/gw/applyConfigurationContent";
    let (status, body) = hub
        .rest
        .call("POST", apply, Some(content_of_modules()))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        entries(&workload_dir).len(),
        1,
        "no socket for applied content"
    );

    hub.rest.create_edge_device("gw2").await;
    let tags = json!({"tags": {"env": "prod"}});
    let (status, body) = hub.rest.call("PATCH", "/twins/gw2", Some(tags)).await;
    assert_eq!(status, 200, "{body}");
    let deployment = json!({
        "id": "prod",
        "content": content_of_modules(),
        "targetCondition": "tags.env='prod'",
        "priority": 1,
    });
    let (status, body) = hub
        .rest
        .call("PUT", "/configurations/prod", Some(deployment))
        .await;
    assert_eq!(status, 200, "{body}");
    // an at-scale deployment would otherwise hold a socket per targeted edge device
    let (_, twin) = hub
        .rest
        .call("GET", "/twins/gw2/modules/$edgeAgent", None)
        .await;
    assert!(
        twin["properties"]["desired"]["modules"]["m"].is_object(),
        "{twin}"
    );
    assert_eq!(
        entries(&workload_dir).len(),
        1,
        "a deployment's target got a socket"
    );

    drop(hub);
    for entry in entries(&workload_dir) {
        std::fs::remove_file(workload_dir.join(entry)).unwrap();
    }
    let _hub = Hub::start(dir.path(), HubOptions::default());
    assert_eq!(
        entries(&workload_dir).len(),
        1,
        "the applied content's socket is not back after the restart"
    );
}

#[tokio::test]
async fn a_device_that_stops_reading_is_disconnected_and_its_queue_freed() {
    let dir = TempDir::new("not-reading");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let key = hub.rest.create_device("slow").await;
    let pid = hub.proc.child.id();
    let sockets_before = open_sockets(pid);
    let filters = ["$iothub/twin/PATCH/properties/desired/#"];
    let (_never_read, _) = support::mqtt_device(&hub, "slow", &key, &filters).await;
    let started = std::time::Instant::now();
    for n in 0..300 {
        let desired: serde_json::Map<String, Value> = (0..6)
            .map(|i| (format!("p{i}"), json!(format!("{n}{}", "x".repeat(3500)))))
            .collect();
        let patch = json!({"properties": {"desired": desired}});
        let (status, body) = hub.rest.call("PATCH", "/twins/slow", Some(patch)).await;
        assert_eq!(status, 200, "{body}");
    }
    // Its connection is closed on the hub's side (the write timeout), though it never read.
    sockets_fall_back_to(pid, sockets_before, Duration::from_secs(45)).await;
    let (_, device) = hub.rest.call("GET", "/devices/slow", None).await;
    assert_eq!(device["connectionState"], "Disconnected");
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// How many file descriptors the process `pid` holds.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Bulk-imports the edge devices `ids`, each with module `m`, 100 to a request as IoT Hub takes.
async fn import_edge_fleet(hub: &Hub, ids: &[String]) {
    for chunk in ids.chunks(100) {
        let devices: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"id": id, "importMode": "create", "capabilities": {"iotEdge": true}}))
            .collect();
        let modules: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"id": id, "moduleId": "m", "importMode": "create"}))
            .collect();
        for items in [devices, modules] {
            let (status, body) = hub.rest.call("POST", "/devices", Some(json!(items))).await;
            assert_eq!(status, 200, "{body}");
        }
    }
}

/// The workload sockets under `dir` that something listens on.
fn listening_sockets(dir: &Path) -> usize {
    entries(dir)
        .iter()
        .filter(|name| UnixStream::connect(dir.join(name)).is_ok())
        .count()
}

#[tokio::test]
async fn a_registry_read_key_opens_no_workload_socket_the_sockets_are_capped_and_a_restart_with_fewer_files_still_binds(
) {
    let dir = TempDir::new("socket-fds");
    let options = |files| HubOptions {
        keep_alive: true,
        open_files: Some(files),
        ..HubOptions::default()
    };
    // 1,024 files: at most 1024 / 8 = 128 workload sockets.
    let hub = Hub::start(dir.path(), options(1024));
    let workload_dir = PathBuf::from(hub.info["workloadDir"].as_str().unwrap());
    let pid = hub.proc.child.id();
    let fleet: Vec<String> = (0..150).map(|n| format!("edge-{n}")).collect();
    import_edge_fleet(&hub, &fleet).await;
    let environment = |id: &str| format!("/edgetwin/devices/{id}/modules/m/edgeEnvironment");

    let reader = support::Rest::with_policy(&hub.info, "registryRead", true);
    let files_before = open_files(pid);
    for id in &fleet {
        let (status, body) = reader.call("GET", &environment(id), None).await;
        assert_eq!(status, 401, "a read opened {id}'s socket: {body}");
        assert!(
            body["Message"]
                .as_str()
                .is_some_and(|m| m.contains("RegistryWrite")),
            "{body}"
        );
    }
    assert!(
        entries(&workload_dir).is_empty(),
        "{:?}",
        entries(&workload_dir)
    );
    let files_after = open_files(pid);
    assert!(
        files_after <= files_before + 2,
        "registryRead GETs took {files_before} → {files_after} file descriptors"
    );

    let (mut opened, mut refused) = (0, 0);
    for id in &fleet {
        let (status, body) = hub.rest.call("GET", &environment(id), None).await;
        match status {
            200 => opened += 1,
            403 => {
                let message = body["Message"].as_str().unwrap_or_default();
                assert!(message.contains("--max-workload-sockets"), "{body}");
                refused += 1;
            }
            _ => panic!("{id}: {status} {body}"),
        }
    }
    assert_eq!((opened, refused), (128, 22));
    assert_eq!(listening_sockets(&workload_dir), 128);
    assert!(open_files(pid) < 1024 - 512, "{} files", open_files(pid));
    let (status, body) = reader.call("GET", &environment("edge-0"), None).await;
    assert_eq!(
        status, 200,
        "a read of an open socket's environment: {body}"
    );

    // 100 files: no room for the 128 recorded sockets, but the listeners bind first, and the
    // hub serves what its cap (100 / 8 = 12) allows.
    drop(hub);
    let hub = Hub::start(dir.path(), options(100));
    assert_eq!(listening_sockets(&workload_dir), 12);
    let key = hub.rest.create_device("plain").await;
    let (_connection, code) = support::mqtt_connect(&hub, "plain", None, &key).await;
    assert_eq!(code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
}

/// Upgrades a TLS connection to the hub's HTTPS port to MQTT over WebSockets.
async fn websocket(hub: &Hub) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = rest_tls(hub).await;
    tls.write_all(
        b"GET /$iothub/websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tls.read(&mut byte).await.unwrap(), 1, "closed: {answer:?}");
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 101"), "{answer:?}");
    tls
}

/// A client frame (masked, with a zero mask) of `len` zero bytes: `opcode` 2 starts a binary
/// message, 0 continues it; `fin` false leaves the message unfinished.
fn ws_frame(opcode: u8, fin: bool, len: u16) -> Vec<u8> {
    let mut frame = vec![u8::from(fin) << 7 | opcode, 0x80 | 126];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.resize(frame.len() + usize::from(len), 0);
    frame
}

/// Streams one never-finished binary message until the hub closes the connection or `limit`
/// bytes are out; the bytes sent, whether the hub closed the connection within 10 s (well
/// inside the 30 s CONNECT timeout), and the connection.
async fn stream_unfinished_message<S>(mut stream: S, limit: usize) -> (usize, bool, S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (first, rest) = (ws_frame(2, false, 60_000), ws_frame(0, false, 60_000));
    let mut sent = 0;
    while sent < limit {
        let frame = if sent == 0 { &first } else { &rest };
        match tokio::time::timeout(Duration::from_secs(10), stream.write_all(frame)).await {
            Ok(Ok(())) => sent += frame.len(),
            Ok(Err(_)) => return (sent, true, stream),
            Err(_) => return (sent, false, stream),
        }
    }
    let mut buf = [0u8; 64];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
    };
    (sent, closed, stream)
}

#[tokio::test]
async fn websocket_clients_streaming_an_unfinished_message_are_cut_off_and_forty_cost_the_hub_under_64_mib(
) {
    let dir = TempDir::new("ws-unfinished");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let (sent, closed, _) = stream_unfinished_message(websocket(&hub).await, 16 << 20).await;
    assert!(closed, "still open after {sent} bytes of one message");
    // The hub stops at one MQTT packet (256 KiB); what `sent` counts beyond that sits in the
    // kernel's socket buffers until the close (the client's send buffer alone grows to
    // net.ipv4.tcp_wmem's 4 MiB): 4.38 MB was seen once in 2026-12 runs, 16 MiB means no cut.
    assert!(sent <= 6 << 20, "{sent} bytes were taken before the cut");

    let (rss_before, _) = hub.proc.memory_kib();
    let mut clients = Vec::new();
    for _ in 0..40 {
        let ws = websocket(&hub).await;
        clients.push(tokio::spawn(stream_unfinished_message(ws, 3 << 20)));
    }
    let mut streams = Vec::new();
    for client in clients {
        streams.push(client.await.unwrap());
    }
    let (_, peak) = hub.proc.memory_kib();
    let cost_mib = peak.saturating_sub(rss_before) / 1024;
    eprintln!(
        "40 WebSocket clients: hub RSS {rss_before} KiB before, peak {peak} KiB, +{cost_mib} MiB"
    );
    let held = streams.iter().filter(|(_, closed, _)| !closed).count();
    assert_eq!(held, 0, "{held} of 40 clients were held");
    assert!(cost_mib <= 64, "40 clients cost the hub {cost_mib} MiB");
    drop(streams);
    let (status, _) = hub.rest.call("GET", "/devices", None).await;
    assert_eq!(status, 200, "the hub still serves others");
}

#[tokio::test]
async fn a_connect_with_its_reserved_flag_set_is_refused_by_closing_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("connect-reserved");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let key = hub.rest.create_device("d").await;
    let mut connect = support::connect_packet(&hub, "d", None, &key);
    let level = connect
        .windows(5)
        .position(|w| w == b"MQTT\x04")
        .expect("protocol name and level");
    assert_eq!(
        connect[level + 5],
        0xC2,
        "username, password, clean session"
    );
    connect[level + 5] |= 0x01;
    let tls = support::tls_trusting(&hub.ca());
    let mut stream = support::tls_connect(hub.mqtt_port(), tls, hub.host_name().to_owned())
        .await
        .unwrap();
    stream.write_all(&connect).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "answered {answer:02x?} ({read:?}) instead of closing the connection"
    );
    let (_connection, code) = support::mqtt_connect(&hub, "d", None, &key).await;
    assert_eq!(code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
}
