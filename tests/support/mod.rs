//! `edgetwin-test-support`: scaffolding shared by the end-to-end tests and the benches (a
//! dev-dependency, `use edgetwin_test_support as support;`): scratch
//! directories, child processes, `edgetwin hub` started on a scratch directory and its
//! `hub.json`, the service REST API signed with a SAS token, `edgetwin-module` started with its
//! environment, and polling with a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgetwin_service::{ClientOptions, MessageFilter, Request, ServiceClient};
use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::rest::{Device, DeviceCapabilities, Module, Permission};
use edgetwin_wire::sas::generate_token;
use edgetwin_wire::Secret;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use serde_json::{json, Value};

/// The directory of this build's binaries: cargo builds a package's binaries before its tests
/// and benches, into the directory whose `deps/` holds the test or bench executable.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The `edgetwin` binary of this build (hub, provision, twin, quickstart).
pub fn edgetwin() -> PathBuf {
    bin_dir().join("edgetwin")
}

/// The variables (and prefixes) cargo sets for a test process, left out of a `cargo build` run from
/// a test: build scripts that watch them (ring's watches `CARGO_PKG_NAME`) would see them change
/// and be rerun, with everything built above them.
const CARGO_TEST_VARIABLES: [&str; 6] = [
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
];

/// The `edgetwin-module` binary (package `edgetwin-module`, `modules/edgetwin/`) of this build's
/// profile, next to [`edgetwin`]. Cargo names only a test's own package's binaries
/// (`CARGO_BIN_EXE_*`), so the first call in a test process builds it with `cargo build` (a no-op
/// when up to date): the tests never run a stale module. The CLI's package is selected too, so
/// that dependencies get the features `cargo build` gives them and are not built a second time.
pub fn edgetwin_module() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let dir = bin_dir();
        let profile = match dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") => "dev",
            Some(name) => name,
            None => panic!("no profile directory at {}", dir.display()),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut command = Command::new(cargo);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if CARGO_TEST_VARIABLES.iter().any(|v| name.starts_with(v)) {
                command.env_remove(&*name);
            }
        }
        let status = command
            .args([
                "build",
                "--quiet",
                "-p",
                "edgetwin",
                "-p",
                "edgetwin-module",
            ])
            .args(["--bin", "edgetwin-module"])
            .args(["--profile", profile, "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
            .arg("--target-dir")
            .arg(dir.parent().expect("the target directory"))
            .status()
            .expect("run cargo to build edgetwin-module");
        assert!(
            status.success(),
            "cargo build --bin edgetwin-module: {status}"
        );
        let bin = dir.join("edgetwin-module");
        assert!(bin.is_file(), "cargo built no {}", bin.display());
        bin
    })
}

/// Reconnect backoff short enough for tests (100 ms base, 1 s cap), as `edgetwin-module`
/// environment variables.
pub const FAST_BACKOFF: [(&str, &str); 2] = [
    ("EDGETWIN_BACKOFF_BASE_MS", "100"),
    ("EDGETWIN_BACKOFF_MAX_SECS", "1"),
];

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`, or `?`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The CPU time process `pid` used so far, user and system (its threads' included), from
/// `/proc/<pid>/stat`; zero when unknown.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // after the command's name, which may hold spaces: state is field 3, utime 14, stime 15
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    match u64::try_from(per_second) {
        Ok(per_second) if per_second > 0 => Duration::from_micros(ticks * 1_000_000 / per_second),
        _ => Duration::ZERO,
    }
}

/// Calls `attempt` every `every` until it gives `Ok`; once `timeout` has passed since the first
/// call, panics with the message made by the last `Err` (a closure, so that an expensive message
/// such as a process log is only read when it is needed).
pub async fn poll<T, E, F, Fut>(timeout: Duration, every: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: FnOnce() -> String,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(why) => assert!(Instant::now() < deadline, "{}", why()),
        }
        tokio::time::sleep(every).await;
    }
}

/// [`poll`] for a blocking `attempt`, sleeping the thread between calls.
pub fn poll_blocking<T, E, F>(timeout: Duration, every: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Result<T, E>,
    E: FnOnce() -> String,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(done) => return done,
            Err(why) => assert!(Instant::now() < deadline, "{}", why()),
        }
        std::thread::sleep(every);
    }
}

/// A scratch directory under the system temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `edgetwin-{tag}-{pid}-{random}`, empty.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "edgetwin-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// Leaves the directory on disk and returns its path.
    pub fn keep(self) -> PathBuf {
        let mut this = ManuallyDrop::new(self);
        std::mem::take(&mut this.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process whose stderr goes to a log file; killed on drop if it still runs.
pub struct Proc {
    /// The process.
    pub child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `command` with stdout discarded and stderr written to `log`.
    pub fn spawn(command: &mut Command, log: PathBuf) -> Proc {
        Self::spawn_with_stdout(command, Stdio::null(), log)
    }

    /// Spawns `command` with the given stdout and stderr written to `log`.
    pub fn spawn_with_stdout(command: &mut Command, stdout: Stdio, log: PathBuf) -> Proc {
        let stderr =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = command
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
        Proc { child, log }
    }

    /// Spawns `command` with stdout and stderr piped to us; [`Proc::close_output`] closes our
    /// ends, as a log reader that went away does.
    pub fn spawn_piped(command: &mut Command) -> Proc {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
        Proc {
            child,
            log: PathBuf::from("/dev/null"),
        }
    }

    /// Closes our ends of the process's stdout and stderr pipes (see [`Proc::spawn_piped`]).
    pub fn close_output(&mut self) {
        drop(self.child.stdout.take());
        drop(self.child.stderr.take());
    }

    /// Sends `signal` (`libc::SIGTERM`, `libc::SIGKILL`, ...) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process by its id.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `timeout` for the process to exit; its exit code (-1 for a signal), or `None`
    /// if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and asserts that the process exits 0 within `timeout`.
    pub fn assert_sigterm_exits_0(&mut self, timeout: Duration) {
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(timeout);
        assert_eq!(code, Some(0), "exit on SIGTERM; log:\n{}", self.log());
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// The CPU time the process used so far ([`cpu_time`]).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.child.id())
    }

    /// `VmRSS` and `VmHWM` in KiB, from `/proc/<pid>/status` (0 when unknown).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
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

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The text of a log file, empty if there is none.
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The stdout of a finished command, after asserting that it succeeded (`what` names it in the
/// failure message, with its stdout and stderr).
pub fn stdout_of_success(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The stderr of a finished command, after asserting that it failed (`what` names it in the
/// failure message, with its stdout).
pub fn stderr_of_failure(what: &str, out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded\nstdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How to start `edgetwin hub`.
pub struct HubOptions<'a> {
    /// 0 for any free port.
    pub mqtt_port: u16,
    /// 0 for any free port.
    pub https_port: u16,
    /// 0 for any free port.
    pub amqp_port: u16,
    /// The hub's `RUST_LOG`; `None` inherits ours.
    pub rust_log: Option<&'a str>,
    /// How long the hub may take to write `hub.json`.
    pub timeout: Duration,
    /// Whether [`Hub::rest`] keeps one connection alive across calls.
    pub keep_alive: bool,
    /// Where the hub's stderr goes (its log).
    pub output: LogOutput,
    /// More `edgetwin hub` arguments (`--no-workload-api`).
    pub args: &'a [&'a str],
    /// The hub's open-file limit (`RLIMIT_NOFILE`, soft and hard, so it cannot raise it);
    /// `None` inherits ours.
    pub open_files: Option<u64>,
}

/// Where a process under test writes its log (stderr; stdout too for the unlucky cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// A log file in the test's directory.
    File,
    /// Pipes whose reader (the test) goes away once the process started.
    ClosedPipe,
    /// `/dev/full`: every write fails as on a full disk.
    FullDisk,
}

impl LogOutput {
    /// Spawns `command` writing to this output (`log` for [`LogOutput::File`]).
    pub fn spawn(self, command: &mut Command, log: PathBuf) -> Proc {
        match self {
            LogOutput::File => Proc::spawn(command, log),
            LogOutput::ClosedPipe => Proc::spawn_piped(command),
            LogOutput::FullDisk => Proc::spawn(command, PathBuf::from("/dev/full")),
        }
    }
}

impl Default for HubOptions<'_> {
    fn default() -> Self {
        HubOptions {
            mqtt_port: 0,
            https_port: 0,
            amqp_port: 0,
            rust_log: None,
            timeout: Duration::from_secs(10),
            keep_alive: false,
            output: LogOutput::File,
            args: &[],
            open_files: None,
        }
    }
}

/// A hub with its data in its own temporary directory, and a runtime for blocking tests to
/// call its REST API with.
pub struct HubSetup {
    /// Declared first: the hub stops before its directory goes.
    pub hub: Hub,
    /// The test's directory: the hub's data and log, and whatever else the test puts there.
    pub dir: TempDir,
    /// A current-thread runtime for [`HubSetup::owner`] and other async calls.
    pub runtime: tokio::runtime::Runtime,
}

impl HubSetup {
    /// Starts a hub (log level `warn`, more `args`) in a new directory tagged `tag`.
    pub fn start(tag: &str, args: &[&str]) -> HubSetup {
        let dir = TempDir::new(tag);
        let options = HubOptions {
            rust_log: Some("warn"),
            timeout: Duration::from_secs(20),
            args,
            ..HubOptions::default()
        };
        let hub = Hub::start(dir.path(), options);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        HubSetup { hub, dir, runtime }
    }

    /// A service REST call as `iothubowner`: the status and the JSON body.
    pub fn owner(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.runtime
            .block_on(self.hub.rest.call(method, path, body))
    }
}

/// A running `edgetwin hub` (killed on drop), what its `hub.json` says, and its REST API.
pub struct Hub {
    /// The `edgetwin hub` process.
    pub proc: Proc,
    /// `hub.json`: ports, host name, CA certificate path, policies and their keys.
    pub info: Value,
    /// The service REST API as `iothubowner`.
    pub rest: Rest,
}

impl Hub {
    /// Starts `edgetwin hub` with its data in `dir/hub` (kept across restarts) and its stderr in
    /// `dir/hub.log` (`hub-1.log`, ... for later starts), and waits for its `hub.json` (a stale
    /// one is removed first) to name the MQTT port, the requested one if any. Panics if the hub
    /// exits or does not get there within `options.timeout`.
    pub fn start(dir: &Path, options: HubOptions<'_>) -> Hub {
        let data = dir.join("hub");
        let info_path = data.join("hub.json");
        let _ = std::fs::remove_file(&info_path);
        let log = (0..)
            .map(|n| match n {
                0 => dir.join("hub.log"),
                n => dir.join(format!("hub-{n}.log")),
            })
            .find(|log| !log.exists())
            .unwrap();
        let mut command = Command::new(edgetwin());
        command
            .args(["hub", "--data-dir"])
            .arg(&data)
            .args(["--mqtt-port", &options.mqtt_port.to_string()])
            .args(["--https-port", &options.https_port.to_string()])
            .args(["--amqp-port", &options.amqp_port.to_string()])
            .args(options.args);
        if let Some(filter) = options.rust_log {
            command.env("RUST_LOG", filter);
        }
        if let Some(files) = options.open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads the struct it is given.
            unsafe {
                command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                });
            }
        }
        let mut proc = options.output.spawn(&mut command, log.clone());
        let log = &log;
        let every = Duration::from_millis(20);
        let info = poll_blocking(options.timeout, every, || {
            assert!(proc.running(), "the hub exited: {}", proc.log());
            let info = std::fs::read_to_string(&info_path)
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .filter(|info| {
                    let port = info["mqttPort"].as_u64().unwrap_or(0);
                    port != 0 && (options.mqtt_port == 0 || port == u64::from(options.mqtt_port))
                });
            info.ok_or(move || format!("the hub did not start: {}", read_log(log)))
        });
        if options.output == LogOutput::ClosedPipe {
            proc.close_output();
        }
        let rest = Rest::new(&info, options.keep_alive);
        Hub { proc, info, rest }
    }

    /// The MQTT (TLS) port.
    pub fn mqtt_port(&self) -> u16 {
        self.info["mqttPort"].as_u64().unwrap() as u16
    }

    /// The AMQP (TLS) port: the Event Hub-compatible endpoint.
    pub fn amqp_port(&self) -> u16 {
        self.info["amqpPort"].as_u64().unwrap() as u16
    }

    /// The HTTPS port (service REST API, MQTT over WebSockets, console).
    pub fn https_port(&self) -> u16 {
        self.info["httpsPort"].as_u64().unwrap() as u16
    }

    /// The host name its certificates are made for.
    pub fn host_name(&self) -> &str {
        self.info["hostName"].as_str().unwrap()
    }

    /// Its CA certificate file.
    pub fn ca(&self) -> PathBuf {
        PathBuf::from(self.info["caCertificate"].as_str().unwrap())
    }

    /// The owner (`iothubowner`) connection string.
    pub fn service_connection_string(&self) -> &str {
        self.info["serviceConnectionString"].as_str().unwrap()
    }

    /// `edgetwin` with the owner connection string and the CA in its environment, as an
    /// operator runs it after `export IOTHUB_CONNECTION_STRING=...`.
    pub fn edgetwin(&self) -> Command {
        let mut command = Command::new(edgetwin());
        command
            .env("IOTHUB_CONNECTION_STRING", self.service_connection_string())
            .env("EDGETWIN_CA_FILE", self.ca());
        command
    }
}

/// A TLS connection to `port` on loopback trusting `tls`, for the server name `host`.
pub async fn tls_connect(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    host: String,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

/// The CONNECT packet of device `device` or its module `module` (SAS `key`) of `hub`, as bytes.
pub fn connect_packet(hub: &Hub, device: &str, module: Option<&str>, key: &str) -> bytes::BytesMut {
    let host = hub.host_name().to_owned();
    let (client_id, resource) = match module {
        Some(module) => (
            format!("{device}/{module}"),
            format!("{host}/devices/{device}/modules/{module}"),
        ),
        None => (device.to_owned(), format!("{host}/devices/{device}")),
    };
    connect_packet_scoped(hub, &client_id, &resource, key)
}

/// The CONNECT packet of client id `client_id` of `hub` with a token for `resource` (its `sr`)
/// signed with `key`, as bytes.
pub fn connect_packet_scoped(
    hub: &Hub,
    client_id: &str,
    resource: &str,
    key: &str,
) -> bytes::BytesMut {
    use rumqttc::mqttbytes::v4::{Connect, Packet};
    let host = hub.host_name().to_owned();
    let token =
        generate_token(&Secret::new(key), resource, unix_now() as u64 + 3600, None).unwrap();
    let mut connect = Connect::new(client_id);
    connect.set_login(
        format!("{host}/{client_id}/?api-version=2021-04-12"),
        token.expose(),
    );
    let mut out = bytes::BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .unwrap();
    out
}

/// A raw MQTT connection of device `device` or its module `module` (SAS `key`) to `hub`, and
/// the CONNACK's return code.
pub async fn mqtt_connect(
    hub: &Hub,
    device: &str,
    module: Option<&str>,
    key: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    rumqttc::mqttbytes::v4::ConnectReturnCode,
) {
    mqtt_connect_with(hub, &connect_packet(hub, device, module, key)).await
}

/// A raw MQTT connection to `hub` that sent `connect` (a CONNECT packet's bytes), and the
/// CONNACK's return code.
pub async fn mqtt_connect_with(
    hub: &Hub,
    connect: &[u8],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    rumqttc::mqttbytes::v4::ConnectReturnCode,
) {
    use rumqttc::mqttbytes::v4::Packet;
    use tokio::io::AsyncWriteExt;
    let host = hub.host_name().to_owned();
    let mut stream = tls_connect(hub.mqtt_port(), tls_trusting(&hub.ca()), host)
        .await
        .expect("TLS to the MQTT port");
    stream.write_all(connect).await.unwrap();
    let mut buffer = bytes::BytesMut::new();
    match read_packet(&mut stream, &mut buffer).await {
        Packet::ConnAck(ack) => (stream, ack.code),
        other => panic!("not a CONNACK: {other:?}"),
    }
}

/// A raw MQTT connection of device `id` (SAS `key`) to `hub`, after a successful CONNACK, with
/// `subscriptions` subscribed (their SUBACK read); and how long CONNECT → CONNACK took.
pub async fn mqtt_device(
    hub: &Hub,
    id: &str,
    key: &str,
    subscriptions: &[&str],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Duration,
) {
    use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet, Subscribe};
    use tokio::io::AsyncWriteExt;
    let started = Instant::now();
    let (mut stream, code) = mqtt_connect(hub, id, None, key).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let took = started.elapsed();
    let mut buffer = bytes::BytesMut::new();
    for filter in subscriptions {
        let mut out = bytes::BytesMut::new();
        let subscribe = Subscribe::new(*filter, rumqttc::mqttbytes::QoS::AtLeastOnce);
        Packet::Subscribe(subscribe)
            .write(&mut out, usize::MAX)
            .unwrap();
        stream.write_all(&out).await.unwrap();
        let suback = read_packet(&mut stream, &mut buffer).await;
        assert!(
            matches!(suback, Packet::SubAck(_)),
            "no SUBACK for {filter}"
        );
    }
    (stream, took)
}

/// The next MQTT packet from `stream`, reading into `buffer` as needed; panics if it closes.
pub async fn read_packet(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buffer: &mut bytes::BytesMut,
) -> rumqttc::mqttbytes::v4::Packet {
    use tokio::io::AsyncReadExt;
    loop {
        match rumqttc::mqttbytes::v4::Packet::read(buffer, 1 << 20) {
            Ok(packet) => return packet,
            Err(_) => assert_ne!(stream.read_buf(buffer).await.unwrap(), 0, "closed"),
        }
    }
}

/// A TLS client configuration trusting only the CA certificate in `ca_file`.
pub fn tls_trusting(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let ca = std::fs::read(ca_file).unwrap_or_else(|e| panic!("{}: {e}", ca_file.display()));
    let roots = edgetwin_wire::tls::roots_from_pem(&ca).unwrap();
    edgetwin_wire::tls::client_config(roots).unwrap()
}

/// `HostName=...;DeviceId=...;ModuleId=...;SharedAccessKey=...`.
pub fn module_connection_string(host: &str, device: &str, module: &str, key: &str) -> String {
    format!("HostName={host};DeviceId={device};ModuleId={module};SharedAccessKey={key}")
}

/// The hub's service REST API as the `iothubowner` policy (or another), through
/// [`edgetwin_service::ServiceClient`] trusting the hub's CA, without retries: every answer as it
/// came; either a new connection per call or one kept alive (and re-opened once when it broke).
pub struct Rest {
    client: ServiceClient,
    /// The shared access policy and its key, for tokens of another `sr` ([`Rest::scoped`]).
    policy: String,
    key: Secret,
    /// The tokens' `sr`; `None` for the whole hub (`host:port`).
    sr: Option<String>,
}

/// The numbers of a benchmark's command line, `--name N` for each of `defaults` (name and
/// default), in their order; other arguments (cargo bench adds `--bench`) are ignored.
pub fn number_args<const N: usize>(defaults: [(&str, usize); N]) -> [usize; N] {
    let mut values = defaults.map(|(_, value)| value);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if let Some(index) = defaults.iter().position(|(name, _)| *name == arg) {
            values[index] = args
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"));
        }
    }
    values
}

/// The primary key of a device or module identity as the service API shows it.
pub fn primary_key(identity: &Value) -> String {
    identity["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap_or_else(|| panic!("no primary key in {identity}"))
        .to_owned()
}

impl Rest {
    /// Registers device `id` (SAS, keys made by the hub) and returns its primary key.
    pub async fn create_device(&self, id: &str) -> String {
        let path = format!("/devices/{id}");
        let (status, device) = self
            .call("PUT", &path, Some(serde_json::json!({"deviceId": id})))
            .await;
        assert_eq!(status, 200, "PUT {path}: {device}");
        primary_key(&device)
    }

    /// The primary key of device `id`.
    pub async fn device_key(&self, id: &str) -> String {
        let path = format!("/devices/{id}");
        let (status, device) = self.call("GET", &path, None).await;
        assert_eq!(status, 200, "GET {path}: {device}");
        primary_key(&device)
    }

    /// For the hub that wrote `info` (its `hub.json`).
    pub fn new(info: &Value, keep_alive: bool) -> Rest {
        Rest::with_policy(info, "iothubowner", keep_alive)
    }

    /// The same API signed with shared access policy `policy` (`registryRead`, ...).
    pub fn with_policy(info: &Value, policy: &str, keep_alive: bool) -> Rest {
        let host = format!(
            "{}:{}",
            info["hostName"].as_str().unwrap(),
            info["httpsPort"].as_u64().unwrap()
        );
        let key = Secret::new(info["policies"][policy].as_str().unwrap());
        let options = ClientOptions {
            keep_alive,
            ..ClientOptions::trusting_only(info["caCertificate"].as_str().unwrap())
        };
        let connection_string = ConnectionString::service(&host, policy, &key);
        Rest {
            client: ServiceClient::new(&connection_string, options).unwrap(),
            policy: policy.to_owned(),
            key,
            sr: None,
        }
    }

    /// The same API with tokens whose `sr` is `sr` (a URI prefix such as `host/devices/d1`).
    pub fn scoped(info: &Value, sr: &str) -> Rest {
        Rest {
            sr: Some(sr.to_owned()),
            ..Rest::new(info, false)
        }
    }

    /// The service client underneath (its typed calls).
    pub fn client(&self) -> &ServiceClient {
        &self.client
    }

    /// A new HTTPS connection to the hub (for requests of the caller's own making).
    pub async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        self.client.connect().await
    }

    /// One call (`api-version` added to `path`); returns the status and the JSON body (`null`
    /// when empty or not JSON).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, body) = self.call_with_headers(method, path, body, &[]).await;
        (status, body)
    }

    /// One call (`api-version` added to `path`) with `headers`; returns the status, the
    /// response's headers and the JSON body (`null` when empty or not JSON).
    pub async fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, Value) {
        let mut request = request(method, path, body, headers);
        if let Some(sr) = &self.sr {
            let expiry = unix_now() as u64 + 3600;
            request.authorization =
                Some(generate_token(&self.key, sr, expiry, Some(&self.policy)).unwrap());
        }
        self.exchange(&request).await
    }

    /// One page of `query` (`POST /devices/query`) from `continuation`, `max_item_count` as
    /// the header sends it: the status, the rows (or the error) and the next continuation.
    pub async fn query_page(
        &self,
        query: &str,
        continuation: Option<&str>,
        max_item_count: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        let headers: Vec<(&str, &str)> = [
            continuation.map(|token| ("x-ms-continuation", token)),
            max_item_count.map(|size| ("x-ms-max-item-count", size)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let (status, headers, body) = self
            .call_with_headers(
                "POST",
                "/devices/query",
                Some(json!({ "query": query })),
                &headers,
            )
            .await;
        let next = headers
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, body, next)
    }

    /// One call of `path` as it is (its own `api-version`), with `authorization` and `headers`
    /// of the caller's making; returns the status and the JSON body (`null` when empty or not
    /// JSON).
    pub async fn call_as(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        authorization: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = request(method, path, body, headers);
        request.api_version = false;
        request.authorization = Some(Secret::new(authorization));
        let (status, _, body) = self.exchange(&request).await;
        (status, body)
    }

    /// Sends `request`; panics if no answer came.
    async fn exchange(&self, request: &Request) -> (u16, hyper::HeaderMap, Value) {
        match self.client.send(request).await {
            Ok(response) => {
                let body = response.json_or_null();
                (response.status, response.headers, body)
            }
            Err(e) => panic!("{} failed: {e}", request.operation),
        }
    }

    /// Creates the IoT Edge device `device`.
    pub async fn create_edge_device(&self, device: &str) {
        let edge = Device {
            device_id: device.to_owned(),
            capabilities: Some(DeviceCapabilities { iot_edge: true }),
            ..Device::default()
        };
        let result = self.client.create_device(&edge).await;
        result.unwrap_or_else(|e| panic!("create device: {e}"));
    }

    /// Creates the module identity `device/module`; returns its primary key.
    pub async fn create_module(&self, device: &str, module: &str) -> String {
        let identity = Module {
            module_id: module.to_owned(),
            device_id: device.to_owned(),
            ..Module::default()
        };
        let created = self.client.create_module(&identity).await;
        let created = created.unwrap_or_else(|e| panic!("create module: {e}"));
        created
            .authentication
            .and_then(|a| a.symmetric_key)
            .and_then(|k| k.primary_key)
            .expect("module key")
            .expose()
            .to_owned()
    }

    /// The `IOTEDGE_*` environment the hub gives the module, as IoT Edge would.
    pub async fn edge_environment(&self, device: &str, module: &str) -> BTreeMap<String, String> {
        let env = self.client.edge_environment(device, module).await;
        env.unwrap_or_else(|e| panic!("edge environment: {e}"))
    }

    /// Patches the module twin's desired properties; returns the new desired section (with
    /// `$version` and `$metadata`).
    pub async fn patch_desired(&self, device: &str, module: &str, desired: Value) -> Value {
        let patch = json!({"properties": {"desired": desired}});
        let twin = self.client.patch_twin(device, Some(module), &patch).await;
        twin.unwrap_or_else(|e| panic!("patch twin: {e}"))["properties"]["desired"].clone()
    }

    /// The module twin's reported properties.
    pub async fn reported(&self, device: &str, module: &str) -> Value {
        let twin = self.client.get_twin(device, Some(module)).await;
        twin.unwrap_or_else(|e| panic!("get twin: {e}"))["properties"]["reported"].clone()
    }

    /// The messages the module sent on its `telemetry` output, oldest first.
    pub async fn telemetry(&self, device: &str, module: &str) -> Vec<Value> {
        let filter = MessageFilter {
            device_id: Some(device),
            module_id: Some(module),
            output: Some("telemetry"),
            after: None,
        };
        let messages = self.client.messages(&filter).await;
        messages.unwrap_or_else(|e| panic!("messages: {e}"))
    }
}

/// A request of `method` on `path` (as it is) with a JSON `body` and `headers`, named
/// `METHOD path` in messages.
fn request(method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Request {
    let method_name = hyper::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = Request::raw(
        method_name,
        path,
        Permission::ServiceConnect,
        format!("{method} {path}"),
    );
    if let Some(body) = body {
        request = request.json(&body);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// Starts `bin` (an `edgetwin-module`) with an empty environment but for `EDGETWIN_MQTT_PORT`,
/// `EDGETWIN_METRICS_PORT=0` and `vars` (which come later, so they win); stdout discarded,
/// stderr written to `log`.
pub fn start_module(bin: &Path, log: PathBuf, mqtt_port: u16, vars: &[(&str, &str)]) -> Proc {
    Proc::spawn(
        Command::new(bin)
            .env_clear()
            .env("EDGETWIN_MQTT_PORT", mqtt_port.to_string())
            .env("EDGETWIN_METRICS_PORT", "0")
            .envs(vars.iter().copied()),
        log,
    )
}

/// One HTTP/1.1 request over the unix socket `socket` (a workload API); the status and the JSON
/// body (`null` if none).
pub fn workload_call(socket: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}
