//! The MQTT session: one task owns the rumqttc event loop and walks the connection states
//! (connecting, subscribing, syncing the twin, live, renewing the token, backing off).
//!
//! A new rumqttc `EventLoop` is built for every connection so that each CONNECT carries a fresh
//! SAS token and a freshly fetched trust bundle. Everything the application asked for survives
//! reconnects: reported patches stay queued until answered with 2xx, outputs wait in a bounded
//! outbox, and the desired state is reconciled by a full twin GET after every CONNACK.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgetwin_wire::topic::{
    client_id, method_response_topic, parse_outbound, reported_patch_topic, telemetry_topic,
    twin_get_topic, username, Outbound, PropertyBag, OUTPUT_NAME_PROPERTY,
};
use edgetwin_wire::twin::Properties;
use edgetwin_wire::DEVICE_API_VERSION;
use rumqttc::{
    AsyncClient, EventLoop, Incoming, MqttOptions, Outgoing, QoS, SubscribeFilter,
    TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::desired::{DesiredState, DesiredUpdate, PatchOutcome};
use super::error::ClientError;
use super::identity::Identity;
use super::reported::{ReportedAnswer, ReportedQueue};
use super::rid::{RequestKind, RidTable};

/// Largest packet accepted from the hub: a full twin (2 × 32 KiB of properties plus metadata)
/// and 128 KiB method payloads fit with room to spare.
const MAX_INCOMING_PACKET: usize = 512 * 1024;
/// Largest packet sent: IoT Hub's 256 KiB message limit plus topic and header.
const MAX_OUTGOING_PACKET: usize = 264 * 1024;
/// Outputs kept while disconnected; the oldest is dropped beyond this.
const OUTBOX_CAPACITY: usize = 128;
/// Unanswered twin requests per connection.
const MAX_OUTSTANDING: usize = 32;
/// How often timers (renewal, request timeouts, retries) are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long a token renewal waits for in-flight work before disconnecting anyway.
const RENEW_DRAIN: Duration = Duration::from_secs(5);

/// Session tuning.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// MQTT/TLS port of the hub or gateway (8883 on IoT Hub and edgeHub).
    pub mqtt_port: u16,
    /// SAS token lifetime; the session reconnects with a new token at `renew_fraction` of it.
    pub sas_ttl: Duration,
    /// Fraction of the TTL after which the token is renewed (0.8, as the C SDK).
    pub renew_fraction: f64,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// Twin request timeout.
    pub request_timeout: Duration,
    /// CONNECT (including credentials) timeout.
    pub connect_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            mqtt_port: 8883,
            sas_ttl: Duration::from_secs(3600),
            renew_fraction: 0.8,
            keep_alive: Duration::from_secs(60),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// Where the session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Fetching credentials and waiting for CONNACK.
    Connecting,
    /// Waiting for SUBACK.
    Subscribing,
    /// Waiting for the full twin.
    SyncingTwin,
    /// In sync; reported patches flow.
    Live,
    /// Draining in-flight work before reconnecting with a fresh token.
    RenewingToken,
    /// Waiting before the next attempt.
    BackingOff,
    /// Done (after shutdown).
    Stopped,
}

impl SessionState {
    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SessionState::Connecting => "connecting",
            SessionState::Subscribing => "subscribing",
            SessionState::SyncingTwin => "syncingTwin",
            SessionState::Live => "live",
            SessionState::RenewingToken => "renewingToken",
            SessionState::BackingOff => "backingOff",
            SessionState::Stopped => "stopped",
        }
    }
}

/// What the application asks of the session.
#[derive(Debug)]
pub enum Command {
    /// Queue a reported-properties patch (sent until acknowledged).
    Report(Properties),
    /// Send a message to a module output.
    Output {
        /// Output name (`$.on`).
        output: String,
        /// Body (JSON).
        body: Vec<u8>,
    },
    /// Answer a direct method.
    MethodResponse {
        /// The request's `$rid`.
        rid: String,
        /// Status code.
        status: i32,
        /// Body (JSON).
        body: Vec<u8>,
    },
    /// Flush pending reported properties and disconnect, giving up at `deadline`.
    Shutdown {
        /// When to stop waiting for the hub.
        deadline: Instant,
        /// Told when the session is done; `true` if everything was delivered.
        done: oneshot::Sender<bool>,
    },
}

/// What the session tells the application.
#[derive(Debug)]
pub enum Event {
    /// CONNACK received.
    Connected,
    /// The connection ended (renewal, error or shutdown).
    Disconnected {
        /// Why (safe to log).
        reason: String,
        /// True for a controlled reconnect with a renewed token.
        renewal: bool,
    },
    /// The desired state changed.
    Desired(DesiredUpdate),
    /// A direct method call; answer with [`Command::MethodResponse`].
    Method {
        /// Method name.
        name: String,
        /// Request id to answer.
        rid: String,
        /// Payload (JSON; `null` if empty).
        payload: Value,
    },
    /// A reported patch was acknowledged.
    ReportedAcked {
        /// From queueing the oldest coalesced update to the acknowledgement.
        latency: Duration,
    },
}

/// The application's side of a running session.
#[derive(Clone)]
pub struct ClientHandle {
    /// Requests to the session task.
    commands: mpsc::Sender<Command>,
    /// The session's current state.
    state: watch::Receiver<SessionState>,
}

impl ClientHandle {
    /// Queues a reported patch.
    pub async fn report(&self, patch: Properties) {
        let _ = self.commands.send(Command::Report(patch)).await;
    }

    /// Sends `body` to output `output` (buffered while disconnected).
    pub async fn send_output(&self, output: &str, body: Vec<u8>) {
        let _ = self
            .commands
            .send(Command::Output {
                output: output.to_owned(),
                body,
            })
            .await;
    }

    /// Answers a direct method.
    pub async fn respond(&self, rid: String, status: i32, body: Vec<u8>) {
        let _ = self
            .commands
            .send(Command::MethodResponse { rid, status, body })
            .await;
    }

    /// Flushes pending reported properties (until `grace` has passed), disconnects and stops
    /// the session. Returns `true` if nothing was left undelivered.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let deadline = Instant::now() + grace;
        if self
            .commands
            .send(Command::Shutdown { deadline, done })
            .await
            .is_err()
        {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    /// The current session state.
    pub fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    /// A receiver of the session state, for observers that must not keep the session alive
    /// (holding a [`ClientHandle`] would).
    pub fn state_watch(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }
}

/// Starts the session task.
pub fn spawn(
    identity: Identity,
    config: SessionConfig,
) -> (
    ClientHandle,
    mpsc::Receiver<Event>,
    tokio::task::JoinHandle<()>,
) {
    let (command_tx, commands) = mpsc::channel(1024);
    let (events, event_rx) = mpsc::channel(64);
    let (state_tx, state) = watch::channel(SessionState::Connecting);
    let backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let session = Session {
        identity,
        config,
        commands,
        commands_open: true,
        events,
        state: state_tx,
        rids: RidTable::new(MAX_OUTSTANDING),
        desired: DesiredState::new(),
        reported: ReportedQueue::new(),
        outbox: VecDeque::new(),
        backoff,
        shutdown: None,
        get_retry_at: None,
    };
    let task = tokio::spawn(session.run());
    (
        ClientHandle {
            commands: command_tx,
            state,
        },
        event_rx,
        task,
    )
}

/// How one connection ended.
enum Outcome {
    /// Token renewal: reconnect right away.
    Renew,
    /// Shutdown completed.
    Stopped,
    /// The connection failed; back off.
    Lost(ClientError),
}

/// The session task's state.
struct Session {
    /// Who we are.
    identity: Identity,
    /// Tuning.
    config: SessionConfig,
    /// Requests from the application.
    commands: mpsc::Receiver<Command>,
    /// False once every handle is dropped.
    commands_open: bool,
    /// Notifications to the application.
    events: mpsc::Sender<Event>,
    /// Published state.
    state: watch::Sender<SessionState>,
    /// Twin request correlation.
    rids: RidTable,
    /// Desired reconciliation.
    desired: DesiredState,
    /// Reported patches until acknowledged.
    reported: ReportedQueue,
    /// Outputs waiting for a connection.
    outbox: VecDeque<(String, Vec<u8>)>,
    /// Reconnect pacing.
    backoff: Backoff,
    /// Set by [`Command::Shutdown`].
    shutdown: Option<(Instant, oneshot::Sender<bool>)>,
    /// When to retry a twin GET that failed with 429/5xx.
    get_retry_at: Option<Instant>,
}

/// Per-connection bookkeeping.
struct Link {
    /// The request side of this connection's event loop.
    client: AsyncClient,
    /// QoS 1 publishes not yet acknowledged.
    unacked: usize,
    /// When to renew the token.
    renew_at: Instant,
    /// When draining for renewal began.
    draining_since: Option<Instant>,
    /// DISCONNECT requested.
    disconnecting: bool,
}

/// Now in whole Unix seconds, rounded up: a token made with `expiry = now + ttl` is then valid
/// for at least `ttl` from this instant (rounding down would cost up to a second of its life
/// and let the hub close the connection before the renewal at 80 % of the TTL).
fn now_unix_ceil() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or_default()
}

impl Session {
    fn set_state(&self, state: SessionState) {
        if *self.state.borrow() != state {
            debug!(state = state.name(), "session state");
        }
        let _ = self.state.send(state);
    }

    fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    /// Shutdown requested and either everything is delivered or the deadline passed.
    fn should_stop(&self) -> bool {
        match &self.shutdown {
            Some((deadline, _)) => self.reported.is_idle() || Instant::now() >= *deadline,
            None => !self.commands_open && self.reported.is_idle(),
        }
    }

    async fn run(mut self) {
        loop {
            if self.should_stop() {
                break;
            }
            self.set_state(SessionState::Connecting);
            let attempt = self.connect().await;
            let outcome = match attempt {
                Ok((client, eventloop)) => {
                    self.backoff.reset();
                    info!(
                        host = self.identity.connect_host(),
                        port = self.config.mqtt_port,
                        "connected"
                    );
                    self.emit(Event::Connected).await;
                    let outcome = self.serve(client, eventloop).await;
                    self.rids.clear();
                    self.reported.requeue_in_flight();
                    let reason = match &outcome {
                        Outcome::Renew => "token renewal".to_owned(),
                        Outcome::Stopped => "shutdown".to_owned(),
                        Outcome::Lost(e) => e.to_string(),
                    };
                    let renewal = matches!(outcome, Outcome::Renew);
                    self.emit(Event::Disconnected { reason, renewal }).await;
                    outcome
                }
                Err(error) => Outcome::Lost(error),
            };
            match outcome {
                Outcome::Renew => {
                    info!("reconnecting with a renewed token");
                    continue;
                }
                Outcome::Stopped => break,
                Outcome::Lost(error) => {
                    warn!(error = %error, attempt = self.backoff.attempts() + 1, "connection failed");
                }
            }
            if self.should_stop() {
                break;
            }
            let delay = self.backoff.next_delay(rand::random::<f64>());
            self.set_state(SessionState::BackingOff);
            debug!(delay_ms = delay.as_millis() as u64, "backing off");
            self.idle(delay).await;
        }
        self.set_state(SessionState::Stopped);
        let delivered = self.reported.is_idle();
        if !delivered {
            warn!("stopping with reported properties not acknowledged");
        }
        if let Some((_, done)) = self.shutdown.take() {
            let _ = done.send(delivered);
        }
    }

    /// Waits `delay` while still taking commands; returns early when a shutdown deadline passes.
    async fn idle(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            let deadline = self
                .shutdown
                .as_ref()
                .map(|(d, _)| tokio::time::Instant::from_std(*d));
            let wake = deadline.map_or(until, |d| d.min(until));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => return,
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => self.on_command(None, command),
                    None => self.commands_open = false,
                },
            }
            if self.should_stop() {
                return;
            }
        }
    }

    /// Fetches credentials and waits for a successful CONNACK.
    async fn connect(&mut self) -> Result<(AsyncClient, EventLoop), ClientError> {
        let timeout = self.config.connect_timeout;
        let credentials = tokio::time::timeout(
            timeout,
            self.identity
                .credentials(now_unix_ceil(), self.config.sas_ttl),
        )
        .await
        .map_err(|_| ClientError::Timeout("fetching credentials"))??;
        let device = self.identity.device_id();
        let module = self.identity.module_id();
        let mut options = MqttOptions::new(
            client_id(device, module),
            self.identity.connect_host(),
            self.config.mqtt_port,
        );
        options
            .set_credentials(
                username(
                    self.identity.hub_host(),
                    device,
                    module,
                    DEVICE_API_VERSION,
                    &crate::client_type(),
                ),
                credentials.token.expose(),
            )
            .set_clean_session(false)
            .set_keep_alive(self.config.keep_alive)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                credentials.tls,
            )));
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        eventloop
            .network_options
            .set_connection_timeout(timeout.as_secs().max(1));
        // Without it, a reported patch sent right after the PUBACK of a desired patch waits
        // for the hub's delayed ACK (Nagle): ~40 ms on every acknowledgement.
        eventloop.network_options.set_tcp_nodelay(true);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Err(_) => return Err(ClientError::Timeout("CONNACK")),
                Ok(Err(error)) => return Err(error.into()),
                Ok(Ok(rumqttc::Event::Incoming(Incoming::ConnAck(_)))) => {
                    return Ok((client, eventloop))
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, client: AsyncClient, mut eventloop: EventLoop) -> Outcome {
        let renew_after = self
            .config
            .sas_ttl
            .mul_f64(self.config.renew_fraction.clamp(0.1, 0.95));
        let mut link = Link {
            client,
            unacked: 0,
            renew_at: Instant::now() + renew_after,
            draining_since: None,
            disconnecting: false,
        };
        self.set_state(SessionState::Subscribing);
        let filters = [
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/#",
            "$iothub/methods/POST/#",
        ]
        .map(|f| SubscribeFilter::new(f.to_owned(), QoS::AtLeastOnce));
        if let Err(error) = link.client.try_subscribe_many(filters) {
            return Outcome::Lost(error.into());
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                polled = eventloop.poll() => match polled {
                    Ok(event) => {
                        if let Some(outcome) = self.on_mqtt(&mut link, event).await {
                            return outcome;
                        }
                    }
                    Err(error) => return Outcome::Lost(error.into()),
                },
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => self.on_command(Some(&mut link), command),
                    None => self.commands_open = false,
                },
                _ = tick.tick() => {
                    if let Err(error) = self.on_tick(&mut link) {
                        return Outcome::Lost(error);
                    }
                }
            }
        }
    }

    /// Handles one MQTT event; `Some` ends the connection.
    async fn on_mqtt(&mut self, link: &mut Link, event: rumqttc::Event) -> Option<Outcome> {
        match event {
            rumqttc::Event::Incoming(Incoming::SubAck(ack)) => {
                debug!(codes = ?ack.return_codes, "subscribed");
                if self.state() == SessionState::Subscribing {
                    self.set_state(SessionState::SyncingTwin);
                    if let Err(error) = self.request_twin(link) {
                        return Some(Outcome::Lost(error));
                    }
                }
            }
            rumqttc::Event::Incoming(Incoming::PubAck(_)) => {
                link.unacked = link.unacked.saturating_sub(1);
            }
            rumqttc::Event::Incoming(Incoming::Publish(publish)) => {
                if let Err(error) = self
                    .on_publish(link, &publish.topic, &publish.payload)
                    .await
                {
                    return Some(Outcome::Lost(error));
                }
            }
            rumqttc::Event::Outgoing(Outgoing::Disconnect) => {
                return Some(if self.shutdown.is_some() || !self.commands_open {
                    Outcome::Stopped
                } else {
                    Outcome::Renew
                });
            }
            _ => {}
        }
        None
    }

    /// Sends a twin GET unless one is already outstanding.
    fn request_twin(&mut self, link: &mut Link) -> Result<(), ClientError> {
        if self.rids.has(RequestKind::TwinGet) {
            return Ok(());
        }
        let Ok(rid) = self.rids.issue(RequestKind::TwinGet, Instant::now()) else {
            return Ok(());
        };
        self.get_retry_at = None;
        link.client
            .try_publish(twin_get_topic(&rid), QoS::AtLeastOnce, false, " ")?;
        link.unacked += 1;
        Ok(())
    }

    async fn on_publish(
        &mut self,
        link: &mut Link,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let parsed = match parse_outbound(topic) {
            Ok(parsed) => parsed,
            Err(error) => {
                warn!(%topic, %error, "ignoring a message on an unexpected topic");
                return Ok(());
            }
        };
        let now = Instant::now();
        match parsed {
            Outbound::TwinResponse { status, rid, .. } => {
                let Some(done) = self.rids.complete(&rid, now) else {
                    debug!(%rid, "twin response for no outstanding request");
                    return Ok(());
                };
                match done.kind {
                    RequestKind::TwinGet => self.on_twin(link, status, payload).await?,
                    RequestKind::ReportedPatch => {
                        match self.reported.on_answer(&rid, status, now) {
                            ReportedAnswer::Acked { latency } => {
                                debug!(
                                    latency_ms = latency.as_millis() as u64,
                                    "reported acknowledged"
                                );
                                self.emit(Event::ReportedAcked { latency }).await;
                            }
                            ReportedAnswer::Rejected => warn!(
                                status,
                                body = %String::from_utf8_lossy(payload),
                                "the hub rejected a reported patch; dropped"
                            ),
                            ReportedAnswer::Retry => {
                                warn!(status, "reported patch throttled or failed; will retry")
                            }
                            ReportedAnswer::Isolating => warn!(
                                status,
                                body = %String::from_utf8_lossy(payload),
                                "the hub rejected a reported patch; re-sending its properties one by one"
                            ),
                            ReportedAnswer::Unknown => {}
                        }
                        self.flush_reported(link)?;
                    }
                }
            }
            Outbound::DesiredPatch { version } => {
                let patch = match serde_json::from_slice::<Value>(payload) {
                    Ok(Value::Object(patch)) => patch,
                    _ => {
                        warn!("desired patch body is not a JSON object; resyncing");
                        return self.request_twin(link);
                    }
                };
                match self.desired.on_patch(patch, version) {
                    PatchOutcome::Applied(update) => {
                        info!(version = update.version, "desired patch applied");
                        self.emit(Event::Desired(update)).await;
                    }
                    PatchOutcome::Ignored => debug!(?version, "desired patch already covered"),
                    PatchOutcome::Resync => {
                        info!(?version, last = ?self.desired.version(), "desired version gap; getting the full twin");
                        self.request_twin(link)?;
                    }
                }
            }
            Outbound::MethodRequest { method, rid } => {
                let payload = if payload.iter().all(u8::is_ascii_whitespace) {
                    Value::Null
                } else {
                    serde_json::from_slice(payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(payload).into_owned())
                    })
                };
                self.emit(Event::Method {
                    name: method,
                    rid,
                    payload,
                })
                .await;
            }
        }
        Ok(())
    }

    async fn on_twin(
        &mut self,
        link: &mut Link,
        status: u16,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        if status != 200 {
            warn!(status, "twin GET failed; retrying");
            self.get_retry_at = Some(Instant::now() + Duration::from_secs(1));
            return Ok(());
        }
        let desired = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(mut twin)) => match twin.remove("desired") {
                Some(Value::Object(desired)) => desired,
                _ => Properties::new(),
            },
            _ => {
                warn!("twin GET body is not a JSON object; retrying");
                self.get_retry_at = Some(Instant::now() + Duration::from_secs(1));
                return Ok(());
            }
        };
        match self.desired.on_full(desired) {
            Some(update) => {
                info!(
                    version = update.version,
                    "desired properties synchronised from the full twin"
                );
                self.emit(Event::Desired(update)).await;
            }
            None => debug!(version = ?self.desired.version(), "twin unchanged"),
        }
        if self.desired.behind() {
            self.request_twin(link)?;
        }
        if self.state() == SessionState::SyncingTwin {
            self.set_state(SessionState::Live);
        }
        self.flush_outbox(link);
        self.flush_reported(link)
    }

    /// Sends the next reported patch if the connection allows it.
    fn flush_reported(&mut self, link: &mut Link) -> Result<(), ClientError> {
        if self.state() != SessionState::Live || link.disconnecting {
            return Ok(());
        }
        let now = Instant::now();
        let Some(patch) = self.reported.take_sendable(now) else {
            return Ok(());
        };
        let rid = match self.rids.issue(RequestKind::ReportedPatch, now) {
            Ok(rid) => rid,
            Err(_) => {
                self.reported.restore(patch);
                return Ok(());
            }
        };
        let body = serde_json::to_vec(&patch).unwrap_or_default();
        match link
            .client
            .try_publish(reported_patch_topic(&rid), QoS::AtLeastOnce, false, body)
        {
            Ok(()) => {
                link.unacked += 1;
                self.reported.sent(rid, patch, now);
                Ok(())
            }
            Err(error) => {
                self.rids.complete(&rid, now);
                self.reported.restore(patch);
                Err(error.into())
            }
        }
    }

    /// Sends buffered outputs while the connection is up and not draining.
    fn flush_outbox(&mut self, link: &mut Link) {
        if link.disconnecting || link.draining_since.is_some() {
            return;
        }
        while let Some((output, body)) = self.outbox.pop_front() {
            let mut bag = PropertyBag::new();
            bag.insert(OUTPUT_NAME_PROPERTY, output.as_str());
            bag.insert("$.ct", "application/json");
            bag.insert("$.ce", "utf-8");
            let topic = telemetry_topic(self.identity.device_id(), self.identity.module_id(), &bag);
            match link
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, body)
            {
                Ok(()) => link.unacked += 1,
                Err(error) => {
                    warn!(%error, "output not queued; keeping it for later");
                    if let rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p)) = error {
                        self.outbox.push_front((output, p.payload.to_vec()));
                    }
                    return;
                }
            }
        }
    }

    fn on_command(&mut self, link: Option<&mut Link>, command: Command) {
        match command {
            Command::Report(patch) => {
                self.reported.push(patch, Instant::now());
                if let Some(link) = link {
                    if let Err(error) = self.flush_reported(link) {
                        warn!(%error, "reported patch not sent yet");
                    }
                }
            }
            Command::Output { output, body } => {
                if self.outbox.len() >= OUTBOX_CAPACITY {
                    warn!(output = %output, "outbox full; dropping the oldest message");
                    self.outbox.pop_front();
                }
                self.outbox.push_back((output, body));
                if let Some(link) = link {
                    if self.state() == SessionState::Live {
                        self.flush_outbox(link);
                    }
                }
            }
            Command::MethodResponse { rid, status, body } => match link {
                Some(link) if !link.disconnecting => {
                    if let Err(error) = link.client.try_publish(
                        method_response_topic(status, &rid),
                        QoS::AtLeastOnce,
                        false,
                        body,
                    ) {
                        warn!(%error, %rid, "method response not sent");
                    } else {
                        link.unacked += 1;
                    }
                }
                _ => warn!(%rid, "method response dropped: not connected"),
            },
            Command::Shutdown { deadline, done } => {
                info!("shutdown requested; flushing reported properties");
                self.shutdown = Some((deadline, done));
            }
        }
    }

    /// Timers: request timeouts, GET retries, token renewal and draining.
    fn on_tick(&mut self, link: &mut Link) -> Result<(), ClientError> {
        let now = Instant::now();
        for (rid, kind) in self.rids.expire(now, self.config.request_timeout) {
            warn!(%rid, ?kind, "twin request timed out");
            match kind {
                RequestKind::TwinGet => self.get_retry_at = Some(now),
                RequestKind::ReportedPatch => self.reported.requeue_in_flight(),
            }
        }
        if self.get_retry_at.is_some_and(|t| now >= t) && !link.disconnecting {
            self.request_twin(link)?;
        }
        self.flush_reported(link)?;
        if self.state() == SessionState::Live {
            self.flush_outbox(link);
        }
        if link.disconnecting {
            return Ok(());
        }
        let stopping = self.shutdown.is_some() || !self.commands_open;
        if stopping {
            let past_deadline = self.shutdown.as_ref().is_some_and(|(d, _)| now >= *d);
            if (self.reported.is_idle() && link.unacked == 0) || past_deadline {
                link.client.try_disconnect()?;
                link.disconnecting = true;
            }
            return Ok(());
        }
        if now >= link.renew_at {
            let since = *link.draining_since.get_or_insert_with(|| {
                self.set_state(SessionState::RenewingToken);
                info!("renewing the SAS token: draining before reconnecting");
                now
            });
            let drained = !self.reported.has_in_flight() && link.unacked == 0;
            if drained || now.saturating_duration_since(since) >= RENEW_DRAIN {
                link.client.try_disconnect()?;
                link.disconnecting = true;
            }
        }
        Ok(())
    }
}
