//! The front doors: [`ModuleClient`] for an IoT Edge module, [`DeviceClient`] for a device
//! talking to IoT Hub directly. Both are one session ([`crate::session`]) and its event stream.

use std::time::Duration;

use edgetwin_wire::twin::Properties;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::IdentityError;
use crate::identity::Identity;
use crate::message::Message;
use crate::session::{spawn, ClientHandle, Event, Receipt, SendError, SessionConfig, SessionState};

/// The variable that overrides the MQTT port in [`ModuleClient::from_environment`].
pub const MQTT_PORT: &str = "EDGETWIN_MQTT_PORT";

/// A running session and its event stream: what [`ModuleClient`] and [`DeviceClient`] share
/// (both dereference to it).
#[derive(Debug)]
pub struct Connection {
    /// Who the session connects as.
    identity: Identity,
    /// Commands to the session.
    handle: ClientHandle,
    /// What the session tells the application.
    events: mpsc::Receiver<Event>,
    /// The session task, ended by [`Connection::shutdown`].
    task: JoinHandle<()>,
}

impl Connection {
    fn new(identity: Identity, config: SessionConfig) -> Self {
        let (handle, events, task) = spawn(identity.clone(), config);
        Connection {
            identity,
            handle,
            events,
            task,
        }
    }

    /// Who the session connects as (device, module, where the identity came from), for the
    /// application's logs.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The next event; `None` once the session has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// A cloneable handle to report, send and observe from other tasks.
    pub fn handle(&self) -> ClientHandle {
        self.handle.clone()
    }

    /// Queues a reported-properties patch (coalesced, re-sent until acknowledged); the receipt
    /// tells the new reported `$version` once the hub has answered.
    pub async fn report(&self, patch: Properties) -> Receipt {
        self.handle.report(patch).await
    }

    /// Where the session is.
    pub fn state(&self) -> SessionState {
        self.handle.state()
    }

    /// Delivers what is pending (within `grace`), disconnects and stops. `true` if nothing was
    /// left undelivered.
    async fn shutdown(self, grace: Duration) -> bool {
        let delivered =
            tokio::time::timeout(grace + Duration::from_secs(1), self.handle.shutdown(grace))
                .await
                .unwrap_or(false);
        self.task.abort();
        delivered
    }
}

/// An IoT Edge module's connection to edgeHub (or to IoT Hub, or to `edgetwin hub`): the module
/// twin kept in sync across reconnects and token renewals, direct methods, input messages and
/// outputs that survive disconnects.
///
/// Events come from [`Connection::next_event`]; [`Connection::handle`] gives a cloneable
/// handle for other tasks.
///
/// ```no_run
/// use edgetwin_client::{Event, Message, ModuleClient};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = ModuleClient::from_environment()?;
/// while let Some(event) = client.next_event().await {
///     match event {
///         Event::Input { input, message } if input == "input1" => {
///             if let Err(full) = client.send_output("output1", message) {
///                 eprintln!("dropped: {full}");
///             }
///         }
///         Event::Method(call) => call.respond(200, &serde_json::json!({})).await,
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ModuleClient {
    /// The session.
    connection: Connection,
}

impl ModuleClient {
    /// Connects with the identity in the process environment: the IoT Edge `IOTEDGE_*`
    /// variables (workload API), else `EdgeHubConnectionString` with
    /// `EdgeModuleCACertificateFile` (the Edge simulator), else `EDGETWIN_CONNECTION_STRING`
    /// (with `EDGETWIN_CA_FILE`). The MQTT port is 8883 (edgeHub's and IoT Hub's) unless
    /// `EDGETWIN_MQTT_PORT` says otherwise. Must be called inside a Tokio runtime.
    pub fn from_environment() -> Result<Self, IdentityError> {
        let lookup = |name: &str| std::env::var(name).ok();
        let mut config = SessionConfig::default();
        if let Some(port) = lookup(MQTT_PORT).filter(|p| !p.trim().is_empty()) {
            config.mqtt_port = port.trim().parse().map_err(|_| IdentityError::Unusable {
                variable: MQTT_PORT,
                reason: "not a port number (1-65535)",
            })?;
        }
        Self::from_lookup(lookup, config)
    }

    /// As [`ModuleClient::from_environment`], reading variables through `lookup` and tuned by
    /// `config` (the MQTT port, for one).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        config: SessionConfig,
    ) -> Result<Self, IdentityError> {
        Ok(Self::new(Identity::from_lookup(lookup)?, config))
    }

    /// Connects as `identity`.
    pub fn new(identity: Identity, config: SessionConfig) -> Self {
        ModuleClient {
            connection: Connection::new(identity, config),
        }
    }

    /// Sends `message` on output `output`; kept until the hub acknowledges it.
    pub fn send_output(&self, output: &str, message: Message) -> Result<(), SendError> {
        self.connection.handle.send_output(output, message)
    }

    /// Delivers what is pending (within `grace`), disconnects and stops. `true` if nothing was
    /// left undelivered.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.connection.shutdown(grace).await
    }
}

/// A device's connection to IoT Hub (or `edgetwin hub`): the device twin in sync, direct methods
/// and telemetry that survives disconnects, on the same session as [`ModuleClient`].
///
/// ```no_run
/// use edgetwin_client::{DeviceClient, Message, SessionConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = DeviceClient::from_connection_string(
///     "HostName=hub.local;DeviceId=d1;SharedAccessKey=...",
///     "/etc/ssl/certs/ca-certificates.crt",
///     SessionConfig::default(),
/// )?;
/// client.send_event(Message::json(&serde_json::json!({"temperature": 21.5})))?;
/// client.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DeviceClient {
    /// The session.
    connection: Connection,
}

impl DeviceClient {
    /// Connects with a device connection string, trusting the CA certificates in the PEM file
    /// `ca_file`. Must be called inside a Tokio runtime.
    pub fn from_connection_string(
        connection_string: &str,
        ca_file: &str,
        config: SessionConfig,
    ) -> Result<Self, IdentityError> {
        let identity = Identity::from_connection_string(connection_string, ca_file)?;
        Ok(DeviceClient {
            connection: Connection::new(identity, config),
        })
    }

    /// Sends device-to-cloud telemetry; kept until the hub acknowledges it.
    pub fn send_event(&self, message: Message) -> Result<(), SendError> {
        self.connection.handle.send_output("", message)
    }

    /// Delivers what is pending (within `grace`), disconnects and stops. `true` if nothing was
    /// left undelivered.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.connection.shutdown(grace).await
    }
}

impl std::ops::Deref for ModuleClient {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl std::ops::DerefMut for ModuleClient {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }
}

impl std::ops::Deref for DeviceClient {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl std::ops::DerefMut for DeviceClient {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }
}
