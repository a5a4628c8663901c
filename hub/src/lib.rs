//! `edgetwin-hub`: a local Azure IoT Hub on one machine. Device MQTT 3.1.1 over TLS, the service
//! REST API over HTTPS, the IoT Edge workload API on unix sockets, and durable state in SQLite —
//! faithful enough that Microsoft's SDKs run against it unchanged.
//!
//! Start it with [`start`]; the returned [`RunningHub`] tells where everything listens.
//!
//! Inside, every import points down (`scripts/import-cycles` checks it, in `scripts/test`):
//! - **doors** on top, each with its own handle: `mqtt` (`mqtt::State`: hub, faults), the HTTPS
//!   front door `https` routing to `console`, MQTT over WebSockets and `rest` (`rest::State`:
//!   hub, faults, workload sockets), and the `workload` sockets (`workload::Api`: the store's
//!   readers and the CA), fed by the writer's after-commit hook;
//! - the **core**, `hub::Hub` (no pub fields): the store's `writer` (whose result carries each
//!   write's effects, applied in commit order), readers, `queries`, `live` connections,
//!   `methods`, `messages`, policies, and beside it the `job_runner` that runs scheduled jobs;
//!   its domain below it: `registry`, `twins`, `deployments`, `adm`, `layers`, `jobs`, `store`;
//! - **leaves** at the bottom: `http`, `listener`, `error`, `ids`, `certs`, `x509` (client
//!   certificates), `data_lock`.
//!
//! As a crate it depends on `edgetwin-wire`, and on `edgetwin-service` for [`TestHub`]'s calls;
//! never on the module SDK, the runtime or the CLI.

mod adm;
mod amqp;
mod c2d;
mod c2d_queue;
mod certs;
mod console;
mod data_lock;
mod deployments;
mod dps;
mod dps_x509;
mod error;
mod events;
mod faults;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod http;
mod https;
mod hub;
mod ids;
mod job_runner;
mod jobs;
mod layers;
mod listener;
mod live;
mod messages;
mod methods;
mod mqtt;
mod provisioning;
mod queries;
mod registry;
mod rest;
mod retention;
mod routing;
mod store;
mod test_hub;
mod twins;
mod webhook;
mod websocket;
mod workload;
mod writer;
mod x509;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::Secret;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use certs::CertError;
pub use data_lock::LockError;
pub use events::{parse_size, Retention};
pub use hub::DEFAULT_MAX_ACTIVE_JOBS;
pub use store::StoreError;
pub use test_hub::{TestHub, TestHubError};

/// How long a write may wait for a peer that does not read, unless configured.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors kept free of connections for the database, certificates, logs and the
/// workload sockets.
const RESERVED_FILES: u64 = 512;

/// How to run the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Directory for the database, certificates and workload sockets.
    pub data_dir: PathBuf,
    /// The IoT Hub host name clients use (connection strings, SAS `sr`, TLS name).
    pub host_name: String,
    /// More names the server certificate must cover (besides localhost, 127.0.0.1, ::1).
    pub extra_names: Vec<String>,
    /// Address the listeners bind to.
    pub bind: IpAddr,
    /// MQTT over TLS port (IoT Hub: 8883; 0 picks a free port).
    pub mqtt_port: u16,
    /// HTTPS port serving the service REST API and MQTT over WebSockets (IoT Hub: 443; 0 picks a
    /// free port). Connection strings carry it unless it is 443, as IoT Hub's never carry one.
    pub https_port: u16,
    /// AMQP over TLS port: the Event Hub-compatible endpoint (IoT Hub: 5671, which the Event Hubs
    /// SDKs dial; 0 picks a free port).
    pub amqp_port: u16,
    /// Most connections each TCP listener holds; `None` derives it from the open-file limit.
    pub max_connections: Option<usize>,
    /// Longest a write may wait for a peer that does not read before it is disconnected.
    pub write_timeout: Duration,
    /// Start a new hub (new keys) even though `hub.json` says one ran here and its database is
    /// missing or empty.
    pub reset: bool,
    /// Serve the IoT Edge workload API (a socket per edge device in use, as aziot-edged serves
    /// modules); `false` makes the hub a plain IoT Hub, for modules run by an IoT Edge runtime.
    pub workload_api: bool,
    /// Most workload sockets served at once (each holds a file descriptor); `None` derives it
    /// from the open-file limit ([`default_workload_sockets`]).
    pub max_workload_sockets: Option<usize>,
    /// PEM files of more CAs whose certificates `certificateAuthority` devices may chain to,
    /// beside the hub's own CA.
    pub device_cas: Vec<PathBuf>,
    /// More hubs the provisioning service may assign devices to, beside this one
    /// (`--dps-linked-hub`; docs/dps.md).
    pub dps_linked_hubs: Vec<edgetwin_wire::dps::LinkedHubSpec>,
    /// Consumer groups of the Event Hub-compatible endpoint to create at start unless they exist
    /// (besides `$Default`; IoT Hub creates them through Azure Resource Manager).
    pub consumer_groups: Vec<String>,
    /// How long and how much the Event Hub-compatible endpoint keeps (IoT Hub: 1 day).
    pub retention: Retention,
    /// Most scheduled jobs active (queued, scheduled or running) at once; one more is refused
    /// with 429 ThrottlingMaxActiveJobCountExceeded. IoT Hub: 1 on Free and S1
    /// ([`DEFAULT_MAX_ACTIVE_JOBS`]), 5 on S2, 10 on S3.
    pub max_active_jobs: usize,
}

/// IoT Hub's HTTPS port, which connection strings leave implicit.
pub const IOT_HUB_HTTPS_PORT: u16 = 443;
/// IoT Hub's (and Event Hubs') AMQP over TLS port, which Event Hub connection strings cannot name.
pub const IOT_HUB_AMQP_PORT: u16 = 5671;

impl HubConfig {
    /// Defaults as IoT Hub has them: `localhost`, loopback, MQTT on 8883, HTTPS on 443.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            host_name: "localhost".into(),
            extra_names: Vec::new(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            mqtt_port: 8883,
            https_port: IOT_HUB_HTTPS_PORT,
            amqp_port: IOT_HUB_AMQP_PORT,
            max_connections: None,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            reset: false,
            workload_api: true,
            max_workload_sockets: None,
            device_cas: Vec::new(),
            dps_linked_hubs: Vec::new(),
            consumer_groups: Vec::new(),
            retention: Retention::new(Retention::DEFAULT_DAYS, Retention::DEFAULT_BYTES),
            max_active_jobs: DEFAULT_MAX_ACTIVE_JOBS,
        }
    }
}

/// The service host name of connection strings: the host name alone on IoT Hub's port 443, so
/// that every SDK works with it unchanged, `host:port` on any other port.
pub fn service_host(host_name: &str, https_port: u16) -> String {
    if https_port == IOT_HUB_HTTPS_PORT {
        host_name.to_owned()
    } else {
        format!("{host_name}:{https_port}")
    }
}

/// The policy whose key the Event Hub-compatible connection string carries: IoT Hub's portal
/// shows that endpoint's connection string with `service`, which grants `ServiceConnect`.
const EVENT_HUB_POLICY: &str = "service";

/// The Event Hub-compatible connection string, as IoT Hub's portal shows it (Built-in
/// endpoints): `Endpoint=sb://{host}/;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath=…`.
/// Event Hubs clients dial port 5671 of that host; on another `--amqp-port` they need their
/// custom endpoint option.
pub fn event_hub_connection_string(host_name: &str, event_hub_name: &str, key: &Secret) -> Secret {
    Secret::new(format!(
        "Endpoint=sb://{host_name}/;SharedAccessKeyName={EVENT_HUB_POLICY};SharedAccessKey={};EntityPath={event_hub_name}",
        key.expose()
    ))
}

/// Where a running hub listens and how to reach it; written to `hub.json` in the data directory.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubInfo {
    /// IoT Hub host name.
    pub host_name: String,
    /// `iothubowner` connection string for the service API.
    pub service_connection_string: Secret,
    /// Every shared access policy's primary key, by name.
    pub policies: std::collections::BTreeMap<String, Secret>,
    /// The local Device Provisioning Service, on the same ports (docs/dps.md).
    pub dps: DpsInfo,
    /// The CA certificate clients must trust.
    pub ca_certificate: PathBuf,
    /// MQTT port.
    pub mqtt_port: u16,
    /// HTTPS port: the REST API and MQTT over WebSockets (`/$iothub/websocket`).
    pub https_port: u16,
    /// AMQP over TLS port: the Event Hub-compatible endpoint.
    pub amqp_port: u16,
    /// The Event Hub-compatible name (`EntityPath`).
    pub event_hub_name: String,
    /// The Event Hub-compatible connection string (policy `service`), for `azure-eventhub`,
    /// `@azure/event-hubs` and other Event Hubs consumers (a secret).
    pub event_hub_connection_string: Secret,
    /// REST base URL.
    pub rest_url: String,
    /// The link that opens the web console signed in as `iothubowner`, once (then sign in with
    /// a service connection string; a secret).
    pub console_url: Secret,
    /// Directory of the workload sockets (one per edge device in use; a module's
    /// `edgeEnvironment` names its socket); none when the workload API is switched off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_dir: Option<PathBuf>,
}

/// How to reach the hub's Device Provisioning Service: devices register on the hub's own MQTT
/// and HTTPS ports (the global endpoint is the hub's host name), and the service API takes a
/// DPS connection string.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DpsInfo {
    /// The id scope devices register under.
    pub id_scope: String,
    /// The host devices dial (`provisioning_host`, aziot's `global_endpoint` host).
    pub global_endpoint: String,
    /// `HostName=…;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=…`.
    pub connection_string: Secret,
    /// The hubs devices may be assigned to, this one first, with their allocation weights.
    pub linked_hubs: Vec<LinkedHubInfo>,
}

/// A hub the provisioning service may assign devices to (`hub.json`'s `dps.linkedHubs`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedHubInfo {
    /// Its host name, as enrollments name it in `iotHubs`.
    pub name: String,
    /// Its share of `hashed` allocations.
    pub allocation_weight: u32,
    /// Whether allocations over every linked hub include it.
    pub apply_allocation_policy: bool,
}

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Certificates could not be created or loaded.
    #[error(transparent)]
    Certificates(#[from] CertError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another hub runs on the data directory (or it could not be locked).
    #[error(transparent)]
    DataDir(#[from] LockError),
    /// A port below 1024 could not be bound without the privilege to.
    #[error(
        "cannot bind {what} on {addr}: ports below 1024 need root or CAP_NET_BIND_SERVICE; run as \
         root, grant it with `sudo setcap cap_net_bind_service=+ep <path to edgetwin>`, or choose \
         another port with {flag} (connection strings then carry that port)"
    )]
    PrivilegedPort {
        /// What the port serves.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The flag that picks another port.
        flag: &'static str,
    },
    /// A consumer group asked for with `--consumer-group` could not be created.
    #[error("--consumer-group {name}: {message}")]
    ConsumerGroup {
        /// The name asked for.
        name: String,
        /// Why it could not be created.
        message: String,
    },
    /// A port could not be bound, or the data directory written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Writes a consistent copy of the database of the hub in `data_dir` to the new file `to`
/// (mode 0600), safe while that hub runs: restoring is putting it back as `hub.db` in a data
/// directory (with the `hub.json` and certificates, or without them for new ones).
pub fn backup(data_dir: &std::path::Path, to: &std::path::Path) -> Result<(), HubError> {
    Ok(store::backup(&data_dir.join("hub.db"), to)?)
}

/// A hub serving in the background.
pub struct RunningHub {
    /// Where it listens.
    pub info: HubInfo,
    /// Turns true to stop every listener.
    shutdown: watch::Sender<bool>,
    /// The listener tasks; each ends once its connections have.
    tasks: Vec<JoinHandle<()>>,
    /// The hub's core, whose writer drains last.
    hub: Arc<hub::Hub>,
    /// The workload sockets, stopped before the writer drains.
    workload: Arc<workload::WorkloadSockets>,
    /// Runs the MQTT listener and its connections.
    _device_side: DeviceRuntime,
    /// The data directory's lock, released last (after the writer drained).
    _data_lock: data_lock::DataDirLock,
}

/// The runtime of the device side (MQTT over TCP/TLS), separate from the one that serves the
/// service side (REST, console, workload API), so that a CONNECT or a reported patch never waits
/// in a run queue behind service requests (the scale bench times CONNECT under REST loads). Shut
/// down without blocking when dropped, in async code too.
struct DeviceRuntime {
    /// Where the device side's tasks are spawned.
    handle: tokio::runtime::Handle,
    /// The runtime, taken when dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl DeviceRuntime {
    /// One worker per core, threads named `edgetwin-mqtt`.
    fn start() -> Result<Self, HubError> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("edgetwin-mqtt")
            .enable_all()
            .build()
            .map(|runtime| Self {
                handle: runtime.handle().clone(),
                runtime: Some(runtime),
            })
            .map_err(|source| HubError::Io {
                what: "start the MQTT runtime".into(),
                source,
            })
    }

    /// Runs `task` on the device side.
    fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for DeviceRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl RunningHub {
    /// Stops accepting, closes every connection, waits for every connection task to end, then
    /// for the store's writer to commit what is queued.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.workload.stop_all().await;
        self.hub.drain_writes().await;
    }
}

/// Raises the open-file limit to its hard limit, logging what it got (1024 assumed when it
/// cannot be read).
fn open_file_limit() -> u64 {
    match listener::raise_open_file_limit() {
        Ok(files) => {
            tracing::info!(open_files = files, "open-file limit");
            files
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit; assuming 1024");
            1024
        }
    }
}

/// The workload sockets a hub serves at once unless configured: an eighth of the open-file limit
/// (out of the descriptors [`RESERVED_FILES`] keeps from connections), between 8 and 1,024.
pub fn default_workload_sockets(open_files: u64) -> usize {
    usize::try_from((open_files / 8).clamp(8, 1024)).unwrap_or(1024)
}

/// The connection limits of each TCP listener: the configured cap, or the open-file limit `files`
/// less what the hub keeps for itself. Listeners that together run out of descriptors back off
/// their accepts, and idle peers are timed out, so one full listener never starves the process.
fn tcp_limits(config: &HubConfig, files: u64) -> listener::Limits {
    let from_files =
        usize::try_from(files.saturating_sub(RESERVED_FILES).max(64)).unwrap_or(usize::MAX);
    listener::Limits {
        max_connections: config.max_connections.unwrap_or(from_files),
        write_timeout: config.write_timeout,
    }
}

/// Opens the data directory and starts the MQTT, REST and workload listeners.
pub async fn start(config: HubConfig) -> Result<RunningHub, HubError> {
    let io = |what: String| move |source| HubError::Io { what, source };
    data_lock::create(&config.data_dir)?;
    let data_dir = config
        .data_dir
        .canonicalize()
        .map_err(io(format!("resolve {}", config.data_dir.display())))?;
    // Before anything in the directory is touched: a second hub must not take the first one's
    // workload sockets, database or certificates.
    let data_lock = data_lock::DataDirLock::acquire(&data_dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The database and hub.json hold every key: only the hub's user may enter.
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("make {} private", data_dir.display())))?;
    }
    let mut names = vec![config.host_name.clone()];
    names.extend(config.extra_names.iter().cloned());
    let tls = certs::load_or_create(&data_dir.join("certs"), &names)?;
    let mut device_cas = certs::read_certificates(&tls.ca_path)?;
    for path in &config.device_cas {
        device_cas.extend(certs::read_certificates(path)?);
    }
    let device_cas = Arc::new(x509::DeviceCas::new(device_cas).map_err(CertError::from)?);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let files = open_file_limit();
    let fresh_allowed = config.reset || !data_dir.join("hub.json").exists();
    let mut database = hub::Database::open(&data_dir, fresh_allowed)?;
    database
        .link_dps_hubs(&config.host_name, config.dps_linked_hubs.clone())
        .map_err(|e| HubError::Io {
            what: "link the provisioning service's hubs".into(),
            source: std::io::Error::other(e),
        })?;
    let workload_dir = config.workload_api.then(|| data_dir.join("workload"));
    let workload = Arc::new(match &workload_dir {
        Some(dir) => workload::WorkloadSockets::new(
            dir.clone(),
            config
                .max_workload_sockets
                .unwrap_or_else(|| default_workload_sockets(files)),
            workload::Api::new(database.readers(), tls.ca_pem.clone()),
        ),
        None => workload::WorkloadSockets::off(),
    });
    // The writer opens and closes workload sockets once the writes that ask for it commit.
    let beside = workload.after_commit(tokio::runtime::Handle::current());
    let hub = Arc::new(
        hub::Hub::start(database, config.host_name.clone(), beside)?
            .with_max_active_jobs(config.max_active_jobs),
    );

    for name in &config.consumer_groups {
        rest::create_consumer_group(&hub, name)
            .await
            .map_err(|error| HubError::ConsumerGroup {
                name: name.clone(),
                message: error.message,
            })?;
    }

    let mqtt_listener = bind(config.bind, config.mqtt_port, "MQTT", "--mqtt-port").await?;
    let https_listener = bind(config.bind, config.https_port, "HTTPS", "--https-port").await?;
    let amqp_listener = bind(config.bind, config.amqp_port, "AMQP", "--amqp-port").await?;
    let local_port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or_default();
    let (mqtt_port, https_port) = (local_port(&mqtt_listener), local_port(&https_listener));
    let amqp_port = local_port(&amqp_listener);
    let acceptor = TlsAcceptor::from(tls.server_config.clone());
    let limits = tcp_limits(&config, files);

    // Only now, with the listeners bound, the recorded workload sockets (at most the cap): however
    // many there are, they can never take the descriptors the listeners need.
    let edge_devices = hub
        .read(|tx| match workload.is_on() {
            true => Ok(tx.workload_socket_devices()?),
            false => Ok(Vec::new()),
        })
        .map_err(|e| HubError::Io {
            what: "list the workload sockets to serve".into(),
            source: std::io::Error::other(e.message),
        })?;
    for (served, device_id) in edge_devices.iter().enumerate() {
        match workload.ensure(device_id) {
            Ok(_) => {}
            Err(error @ workload::SocketError::Full { .. }) => {
                let left = edge_devices.len() - served;
                tracing::error!(%error, left, "workload sockets left closed");
                break;
            }
            Err(error) => tracing::error!(device_id, %error, "no workload socket"),
        }
    }

    let console = Arc::new(console::Console::default());
    let owner = hub
        .policies()
        .iter()
        .find(|p| p.name == "iothubowner")
        .map(|p| p.primary_key.clone())
        .unwrap_or_else(|| Secret::new(""));
    let service_host = service_host(&config.host_name, https_port);
    let event_hub_name = amqp::event_hub_name(&config.host_name);
    let event_hub_key = hub
        .policies()
        .iter()
        .find(|p| p.name == EVENT_HUB_POLICY)
        .map(|p| p.primary_key.clone())
        .unwrap_or_else(|| Secret::new(""));
    let info = HubInfo {
        host_name: config.host_name.clone(),
        service_connection_string: ConnectionString::service(&service_host, "iothubowner", &owner)
            .to_secret_string(),
        policies: hub
            .policies()
            .iter()
            .map(|p| (p.name.clone(), p.primary_key.clone()))
            .collect(),
        dps: DpsInfo {
            id_scope: hub.dps().id_scope().to_owned(),
            global_endpoint: service_host.clone(),
            connection_string: ConnectionString::service(
                &service_host,
                &hub.dps().policy().name,
                &hub.dps().policy().primary_key,
            )
            .to_secret_string(),
            linked_hubs: hub
                .dps()
                .linked_hubs()
                .iter()
                .map(|linked| LinkedHubInfo {
                    name: linked.host_name.clone(),
                    allocation_weight: linked.allocation_weight,
                    apply_allocation_policy: linked.apply_allocation_policy,
                })
                .collect(),
        },
        ca_certificate: tls.ca_path.clone(),
        mqtt_port,
        https_port,
        amqp_port,
        event_hub_connection_string: event_hub_connection_string(
            &config.host_name,
            &event_hub_name,
            &event_hub_key,
        ),
        event_hub_name,
        rest_url: format!("https://{service_host}"),
        console_url: Secret::new(format!(
            "https://{service_host}{}",
            console
                .sign_in_path()
                .map(|path| path.expose().to_owned())
                .unwrap_or_default()
        )),
        workload_dir,
    };
    // hub.json holds the keys on purpose (mode 0600, beside the database that holds them too).
    let info_json = serde_json::to_string_pretty(&info).unwrap_or_default();
    certs::write_private(&data_dir.join("hub.json"), &info_json)?;

    // Each door gets its own handle: the core, and what the door alone needs beside it.
    let mqtt = mqtt::State {
        hub: hub.clone(),
        faults: Arc::new(faults::Faults::default()),
        device_cas,
    };
    let rest = rest::State {
        hub: hub.clone(),
        faults: mqtt.faults.clone(),
        workload: workload.clone(),
    };
    let amqp = amqp::State::new(hub.clone(), amqp_port);
    let doors = https::Doors {
        rest,
        console,
        mqtt: mqtt.clone(),
        amqp: amqp.clone(),
    };
    let device_side = DeviceRuntime::start()?;
    let tasks = vec![
        device_side.spawn(mqtt::serve(
            mqtt_listener,
            acceptor.clone(),
            mqtt,
            limits,
            shutdown.clone(),
        )),
        tokio::spawn(amqp::serve(
            amqp_listener,
            acceptor.clone(),
            amqp,
            limits,
            shutdown.clone(),
        )),
        tokio::spawn(job_runner::run(hub.clone(), shutdown.clone())),
        tokio::spawn(retention::run(
            hub.clone(),
            config.retention,
            shutdown.clone(),
        )),
        tokio::spawn(c2d_queue::run_sweep(hub.clone(), shutdown.clone())),
        tokio::spawn(https::serve(
            https_listener,
            acceptor,
            doors,
            limits,
            shutdown,
        )),
    ];
    Ok(RunningHub {
        info,
        shutdown: shutdown_tx,
        tasks,
        hub,
        workload,
        _device_side: device_side,
        _data_lock: data_lock,
    })
}

/// Binds a listener; a refused privileged port says how to get it or which flag picks another.
async fn bind(
    ip: IpAddr,
    port: u16,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, HubError> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied && port < 1024 {
            HubError::PrivilegedPort { what, addr, flag }
        } else {
            HubError::Io {
                what: format!("bind {what} on {addr}"),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn connection_strings_name_no_port_on_443_as_iot_hub_does() {
        assert_eq!(service_host("hub.local", 443), "hub.local");
        assert_eq!(service_host("localhost", 8443), "localhost:8443");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_closes_every_connection_and_returns_once_their_tasks_ended() {
        let dir = std::env::temp_dir().join(format!("edgetwin-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = HubConfig::new(dir.clone());
        config.mqtt_port = 0;
        config.https_port = 0;
        config.amqp_port = 0;
        let hub = start(config).await.unwrap();
        let connect = |port| tokio::net::TcpStream::connect(("127.0.0.1", port));
        let mut mqtt = connect(hub.info.mqtt_port).await.unwrap();
        let mut rest = connect(hub.info.https_port).await.unwrap();
        let mut amqp = connect(hub.info.amqp_port).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::time::timeout(Duration::from_secs(10), hub.stop())
            .await
            .expect("stop() did not return");
        for stream in [&mut mqtt, &mut rest, &mut amqp] {
            let mut buf = [0u8; 8];
            let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0) | Err(_))), "still open: {read:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
