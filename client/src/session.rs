//! The driver: one task runs the pure [`crate::state::Session`] over rumqttc, with one async fn
//! per phase (connecting, connected, backing off), each listening for application commands
//! (shutdown among them) and the timer.
//!
//! A new rumqttc `EventLoop` is built for every connection so that each CONNECT carries a fresh
//! SAS token and a freshly fetched trust bundle. Nothing is lost with it: the state machine
//! keeps every output until its PUBACK and at most [`crate::state::MAX_IN_FLIGHT`] publishes
//! are handed to rumqttc at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgetwin_wire::topic::{client_id, username};
use edgetwin_wire::twin::Properties;
use edgetwin_wire::DEVICE_API_VERSION;
use rumqttc::{
    AsyncClient, EventLoop, Incoming, MqttOptions, Outgoing, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::error::ClientError;
use crate::identity::Identity;
use crate::message::Message;
use crate::state::{
    Action, Command, ConnectionChange, DisconnectReason, Notice, Phase, ReceiptId, Session,
    Settled, Tag, Timing,
};

/// Largest packet accepted from the hub: a full twin (2 × 32 KiB of properties plus metadata)
/// and 128 KiB method payloads fit with room to spare.
const MAX_INCOMING_PACKET: usize = 512 * 1024;
/// Largest packet sent: IoT Hub's 256 KiB message limit plus topic and header.
const MAX_OUTGOING_PACKET: usize = 264 * 1024;
/// How often timers (renewal, request timeouts, retries) are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long a token renewal waits for unacknowledged publishes before disconnecting anyway.
const RENEW_DRAIN: Duration = Duration::from_secs(5);
/// Commands waiting for the session task.
const COMMAND_QUEUE: usize = 1024;

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
    /// Outputs kept while disconnected or unacknowledged.
    pub outbox_capacity: usize,
    /// What [`ClientHandle::send_output`] does when the outbox is full.
    pub overflow: Overflow,
    /// The `DeviceClientType` sent in the CONNECT username.
    pub client_type: String,
}

/// What a full outbox does with one more output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse it: [`SendError::Full`] hands it back.
    Reject,
    /// Accept it and drop the oldest queued output (counted in
    /// [`ClientHandle::outputs_dropped`]).
    DropOldest,
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
            outbox_capacity: 1024,
            overflow: Overflow::Reject,
            client_type: crate::client_type(),
        }
    }
}

impl SessionConfig {
    fn timing(&self) -> Timing {
        Timing {
            renew_after: self.sas_ttl.mul_f64(self.renew_fraction.clamp(0.1, 0.95)),
            renew_drain: RENEW_DRAIN,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            outbox_capacity: self.outbox_capacity,
            close_grace: self.request_timeout,
        }
    }
}

/// Where the session is (a copy of the phase without its data, for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Fetching credentials and waiting for CONNACK.
    Connecting,
    /// Waiting for SUBACK.
    Subscribing,
    /// Waiting for the full twin.
    SyncingTwin,
    /// In sync; reported patches and outputs flow.
    Live,
    /// Draining in-flight work before reconnecting with a fresh token.
    RenewingToken,
    /// Waiting before the next attempt.
    BackingOff,
    /// Done, or disconnecting to be done.
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

impl From<&Phase> for SessionState {
    fn from(phase: &Phase) -> Self {
        match phase {
            Phase::Connecting { .. } => SessionState::Connecting,
            Phase::Subscribing { .. } => SessionState::Subscribing,
            Phase::SyncingTwin { .. } => SessionState::SyncingTwin,
            Phase::Live { .. } => SessionState::Live,
            Phase::Renewing { .. } | Phase::Disconnecting { renewal: true } => {
                SessionState::RenewingToken
            }
            Phase::BackingOff { .. } => SessionState::BackingOff,
            Phase::Disconnecting { renewal: false } | Phase::Stopped => SessionState::Stopped,
        }
    }
}

/// A direct method call; answer it with [`MethodCall::respond`] (IoT Hub waits up to the
/// caller's response timeout).
#[derive(Debug)]
pub struct MethodCall {
    /// Method name.
    name: String,
    /// Payload (JSON; `null` if empty).
    payload: Value,
    /// The `$rid` to answer.
    rid: String,
    /// The session's command queue; weak, so an unanswered call never keeps the session alive.
    responder: mpsc::WeakSender<Request>,
}

impl MethodCall {
    /// The method name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The request payload (`null` if empty, a JSON string if the body was not JSON).
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// Answers the call with `status` (200 for success, by convention) and a JSON `body`.
    pub async fn respond(self, status: i32, body: &Value) {
        let Some(commands) = self.responder.upgrade() else {
            return;
        };
        let command = Command::MethodResponse {
            rid: self.rid,
            status,
            body: serde_json::to_vec(body).unwrap_or_default(),
        };
        let _ = commands.send(Request::Core(command)).await;
    }
}

/// What the session tells the application.
pub type Event = crate::state::Event<MethodCall>;

/// Why an output was not accepted; the message is handed back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The outbox holds [`SessionConfig::outbox_capacity`] outputs already.
    #[error("the outbox is full")]
    Full(Box<Message>),
    /// The session has stopped.
    #[error("the session has stopped")]
    Closed(Box<Message>),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Message {
        match self {
            SendError::Full(message) | SendError::Closed(message) => *message,
        }
    }
}

/// Output counters shared by the handle and the session task.
#[derive(Debug, Default)]
struct Counters {
    /// Outputs accepted by [`ClientHandle::send_output`].
    accepted: AtomicU64,
    /// Outputs acknowledged by the hub or dropped.
    settled: AtomicU64,
    /// Outputs dropped because the outbox was full.
    dropped: AtomicU64,
}

/// A request to the session task.
#[derive(Debug)]
pub(crate) enum Request {
    /// For the state machine.
    Core(Command),
    /// Shutdown, with whom to tell when done.
    Shutdown(Instant, oneshot::Sender<bool>),
    /// A reported patch and whom to tell how it went.
    Report(Properties, oneshot::Sender<Settled>),
}

/// Why a reported patch was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The hub refused it (or one of its properties) with this status; retrying cannot help.
    #[error("the hub refused the reported patch with status {0}")]
    Refused(u16),
    /// The session stopped before the hub answered.
    #[error("the session stopped before the hub answered the reported patch")]
    Stopped,
}

/// The answer to one [`ClientHandle::report`], for callers that need it (most do not: the
/// patch is re-sent until answered whether or not anyone waits).
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Settled>);

impl Receipt {
    /// Waits for the hub's answer: the twin's new reported `$version` (`None` if the hub did
    /// not say). Patches queued together are answered together.
    pub async fn delivered(self) -> Result<Option<i64>, ReportError> {
        match self.0.await {
            Ok(Ok(version)) => Ok(version),
            Ok(Err(status)) => Err(ReportError::Refused(status)),
            Err(_) => Err(ReportError::Stopped),
        }
    }
}

/// The application's side of a running session.
#[derive(Clone, Debug)]
pub struct ClientHandle {
    /// Requests to the session task.
    commands: mpsc::Sender<Request>,
    /// The session's current state.
    state: watch::Receiver<SessionState>,
    /// Output accounting.
    counters: Arc<Counters>,
    /// Outbox bound.
    capacity: u64,
    /// What a full outbox does.
    overflow: Overflow,
}

impl ClientHandle {
    /// Queues a reported patch; it is coalesced with others and re-sent until acknowledged.
    /// The receipt tells the new reported `$version` once the hub has answered.
    pub async fn report(&self, patch: Properties) -> Receipt {
        let (settled, receipt) = oneshot::channel();
        let _ = self.commands.send(Request::Report(patch, settled)).await;
        Receipt(receipt)
    }

    /// Sends `message` to module output `output` (or, for a device client, as telemetry when
    /// `output` is empty). Kept until the hub acknowledges it, across reconnects.
    pub fn send_output(&self, output: &str, message: Message) -> Result<(), SendError> {
        // reserve the slot first, so that two handles cannot both take the last one
        let accepted_before = self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let pending = accepted_before.saturating_sub(self.counters.settled.load(Ordering::Relaxed));
        if self.overflow == Overflow::Reject && pending >= self.capacity {
            self.counters.accepted.fetch_sub(1, Ordering::Relaxed);
            return Err(SendError::Full(Box::new(message)));
        }
        let output = (!output.is_empty()).then(|| output.to_owned());
        let sent = self
            .commands
            .try_send(Request::Core(Command::Output { output, message }));
        if sent.is_err() {
            self.counters.accepted.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Request::Core(Command::Output {
                message,
                ..
            }))) => Err(SendError::Full(Box::new(message))),
            Err(mpsc::error::TrySendError::Closed(Request::Core(Command::Output {
                message,
                ..
            }))) => Err(SendError::Closed(Box::new(message))),
            Err(_) => unreachable!("the request sent is an output"),
        }
    }

    /// Outputs dropped because the outbox was full ([`Overflow::DropOldest`]).
    pub fn outputs_dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Flushes pending reported properties and outputs (until `grace` has passed),
    /// disconnects and stops the session. Returns `true` if nothing was left undelivered.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let deadline = Instant::now() + grace;
        if self
            .commands
            .send(Request::Shutdown(deadline, done))
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

/// Starts the session task: the handle, the event stream and the task.
pub fn spawn(
    identity: Identity,
    config: SessionConfig,
) -> (
    ClientHandle,
    mpsc::Receiver<Event>,
    tokio::task::JoinHandle<()>,
) {
    let (command_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (events, event_rx) = mpsc::channel(64);
    let (state_tx, state) = watch::channel(SessionState::Connecting);
    let counters = Arc::new(Counters::default());
    let core = Session::new(config.timing(), identity.device_id(), identity.module_id());
    let handle = ClientHandle {
        commands: command_tx.clone(),
        state,
        counters: counters.clone(),
        capacity: config.outbox_capacity as u64,
        overflow: config.overflow,
    };
    let driver = Driver {
        core,
        identity,
        config,
        commands,
        responder: command_tx.downgrade(),
        commands_open: true,
        events,
        state: state_tx,
        counters,
        done: None,
        receipts: HashMap::new(),
        next_receipt: 0,
    };
    (handle, event_rx, tokio::spawn(driver.run()))
}

/// One connection's I/O.
struct Link {
    /// The request side.
    client: AsyncClient,
    /// The network side.
    eventloop: EventLoop,
    /// Tags handed to rumqttc whose packet id is not known yet, in order.
    unnumbered: VecDeque<Tag>,
    /// Tags by packet id, until PUBACK.
    by_pkid: HashMap<u16, Tag>,
}

/// The session task.
struct Driver {
    /// The protocol state.
    core: Session,
    /// Who we are.
    identity: Identity,
    /// Tuning.
    config: SessionConfig,
    /// Requests from the application.
    commands: mpsc::Receiver<Request>,
    /// Given to method calls so that they can answer.
    responder: mpsc::WeakSender<Request>,
    /// False once every handle is dropped.
    commands_open: bool,
    /// Notifications to the application.
    events: mpsc::Sender<Event>,
    /// Published state.
    state: watch::Sender<SessionState>,
    /// Output accounting shared with the handles.
    counters: Arc<Counters>,
    /// Told when the session stops.
    done: Option<oneshot::Sender<bool>>,
    /// Who waits for which reported patch.
    receipts: HashMap<ReceiptId, oneshot::Sender<Settled>>,
    /// The next receipt id.
    next_receipt: ReceiptId,
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

/// Fetches credentials, opens the connection and waits for a successful CONNACK.
async fn open(identity: Identity, config: SessionConfig) -> Result<Link, ClientError> {
    let credentials = identity
        .credentials(now_unix_ceil(), config.sas_ttl)
        .await?;
    let device = identity.device_id();
    let module = identity.module_id();
    let mut options = MqttOptions::new(
        client_id(device, module),
        identity.connect_host(),
        config.mqtt_port,
    );
    options
        .set_credentials(
            username(
                identity.hub_host(),
                device,
                module,
                DEVICE_API_VERSION,
                &config.client_type,
            ),
            credentials.token.expose(),
        )
        .set_clean_session(false)
        .set_keep_alive(config.keep_alive)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            credentials.tls,
        )));
    let (client, mut eventloop) = AsyncClient::new(options, 2 * crate::state::MAX_IN_FLIGHT);
    eventloop
        .network_options
        .set_connection_timeout(config.connect_timeout.as_secs().max(1));
    // Without it, a reported patch sent right after the PUBACK of a desired patch waits
    // for the hub's delayed ACK (Nagle): ~40 ms on every acknowledgement.
    eventloop.network_options.set_tcp_nodelay(true);
    loop {
        if let rumqttc::Event::Incoming(Incoming::ConnAck(_)) = eventloop.poll().await? {
            return Ok(Link {
                client,
                eventloop,
                unnumbered: VecDeque::new(),
                by_pkid: HashMap::new(),
            });
        }
    }
}

impl Driver {
    async fn run(mut self) {
        let actions = self.core.start(Instant::now());
        self.perform(actions, None).await;
        let mut link = None;
        loop {
            link = match self.core.phase().clone() {
                Phase::Stopped => break,
                Phase::Connecting { .. } => self.connecting().await,
                Phase::BackingOff { .. } => {
                    self.backing_off().await;
                    None
                }
                _ => match link {
                    Some(link) => self.connected(link).await,
                    None => {
                        // Unreachable by construction: connected phases begin with a link.
                        let actions = self.core.on_lost(
                            Instant::now(),
                            DisconnectReason::Lost("no connection".to_owned()),
                            rand::random(),
                        );
                        self.perform(actions, None).await;
                        None
                    }
                },
            };
        }
        let delivered = self.core.reported_idle() && self.core.outputs_pending() == 0;
        if !delivered {
            warn!("stopping with reported properties or outputs not acknowledged");
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(delivered);
        }
    }

    /// Publishes the phase and the output counters.
    fn publish_state(&self) {
        let state = SessionState::from(self.core.phase());
        // receivers wake only on a change: this runs after every tick
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            if changed {
                debug!(state = state.name(), "session state");
                *current = state;
            }
            changed
        });
        self.counters.settled.store(
            self.core.outputs_delivered() + self.core.outputs_dropped(),
            Ordering::Relaxed,
        );
        self.counters
            .dropped
            .store(self.core.outputs_dropped(), Ordering::Relaxed);
    }

    /// Carries out the state machine's actions on `link` (if connected).
    async fn perform(&mut self, actions: Vec<Action>, mut link: Option<&mut Link>) {
        for action in actions {
            match action {
                Action::Connect | Action::Stop | Action::Drop => {}
                Action::Subscribe(filters) => {
                    if let Some(link) = link.as_deref_mut() {
                        let filters = filters
                            .into_iter()
                            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                        if let Err(error) = link.client.try_subscribe_many(filters) {
                            warn!(%error, "subscribe not queued");
                        }
                    }
                }
                Action::Publish {
                    tag,
                    topic,
                    payload,
                } => {
                    if let Some(link) = link.as_deref_mut() {
                        match link
                            .client
                            .try_publish(topic, QoS::AtLeastOnce, false, payload)
                        {
                            Ok(()) => link.unnumbered.push_back(tag),
                            Err(error) => warn!(%error, "publish not queued"),
                        }
                    }
                }
                Action::Disconnect => {
                    if let Some(link) = link.as_deref_mut() {
                        if let Err(error) = link.client.try_disconnect() {
                            warn!(%error, "disconnect not queued");
                        }
                    }
                }
                Action::Notify(notice) => self.notify(notice).await,
                Action::Settle { receipts, outcome } => {
                    for id in receipts {
                        if let Some(settled) = self.receipts.remove(&id) {
                            let _ = settled.send(outcome);
                        }
                    }
                }
            }
        }
        self.publish_state();
    }

    async fn notify(&mut self, notice: Notice) {
        let event = match notice {
            Notice::Connection(change) => {
                match &change {
                    ConnectionChange::Connected => info!(
                        host = self.identity.connect_host(),
                        port = self.config.mqtt_port,
                        "connected"
                    ),
                    ConnectionChange::Disconnected(reason) => info!(%reason, "disconnected"),
                }
                Event::Connection(change)
            }
            Notice::Desired(update) => Event::Desired(update),
            Notice::Method(request) => Event::Method(MethodCall {
                name: request.name,
                payload: request.payload,
                rid: request.rid,
                responder: self.responder.clone(),
            }),
            Notice::Input { input, message } => Event::Input { input, message },
            Notice::ReportedAcked { latency, version } => {
                debug!(
                    latency_ms = latency.as_millis() as u64,
                    ?version,
                    "reported acknowledged"
                );
                Event::ReportedAcked { latency, version }
            }
            Notice::OutputDropped => {
                warn!("outbox full; dropped the oldest output");
                Event::OutputDropped
            }
        };
        let _ = self.events.send(event).await;
    }

    /// Turns a request into state machine input.
    fn command(&mut self, request: Option<Request>) -> Command {
        match request {
            Some(Request::Core(command)) => command,
            Some(Request::Shutdown(deadline, done)) => {
                self.done = Some(done);
                Command::Shutdown { deadline }
            }
            Some(Request::Report(patch, settled)) => {
                let id = self.next_receipt;
                self.next_receipt += 1;
                self.receipts.insert(id, settled);
                Command::Report(patch, Some(id))
            }
            None => {
                self.commands_open = false;
                Command::Close
            }
        }
    }

    /// The next application command or timer tick, as state machine input.
    async fn next_input(&mut self, tick: &mut tokio::time::Interval) -> Vec<Action> {
        tokio::select! {
            request = self.commands.recv(), if self.commands_open => {
                let command = self.command(request);
                self.core.on_command(Instant::now(), command)
            }
            _ = tick.tick() => self.core.on_tick(Instant::now()),
        }
    }

    /// Connecting: credentials and CONNACK, while still taking commands and ticks (a shutdown
    /// during connect stops at its deadline).
    async fn connecting(&mut self) -> Option<Link> {
        let attempt = open(self.identity.clone(), self.config.clone());
        tokio::pin!(attempt);
        let mut tick = ticker();
        loop {
            let actions = tokio::select! {
                result = &mut attempt => {
                    let now = Instant::now();
                    let mut link = match result {
                        Ok(link) => link,
                        Err(error) => {
                            let reason = DisconnectReason::Lost(error.to_string());
                            let actions = self.core.on_lost(now, reason, rand::random());
                            self.perform(actions, None).await;
                            return None;
                        }
                    };
                    let actions = self.core.on_connack(now);
                    self.perform(actions, Some(&mut link)).await;
                    return Some(link);
                }
                actions = self.next_input(&mut tick) => actions,
            };
            self.perform(actions, None).await;
            if !matches!(self.core.phase(), Phase::Connecting { .. }) {
                return None;
            }
        }
    }

    /// Backing off until the phase's deadline (the core's tick ends it), still taking commands.
    async fn backing_off(&mut self) {
        let mut tick = ticker();
        loop {
            let actions = self.next_input(&mut tick).await;
            self.perform(actions, None).await;
            if !matches!(self.core.phase(), Phase::BackingOff { .. }) {
                return;
            }
        }
    }

    /// Connected (subscribing, syncing, live, renewing, disconnecting): one event loop.
    async fn connected(&mut self, mut link: Link) -> Option<Link> {
        let mut tick = ticker();
        loop {
            let actions = tokio::select! {
                polled = link.eventloop.poll() => self.on_mqtt(&mut link, polled),
                actions = self.next_input(&mut tick) => actions,
            };
            self.perform(actions, Some(&mut link)).await;
            if !self.core.phase().is_connected() {
                return None;
            }
        }
    }

    /// One rumqttc event as state machine input.
    fn on_mqtt(
        &mut self,
        link: &mut Link,
        polled: Result<rumqttc::Event, rumqttc::ConnectionError>,
    ) -> Vec<Action> {
        let now = Instant::now();
        match polled {
            Ok(rumqttc::Event::Incoming(Incoming::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                debug!(codes = ?ack.return_codes, "subscribed");
                self.core.on_suback(now, granted, rand::random())
            }
            Ok(rumqttc::Event::Incoming(Incoming::PubAck(ack))) => {
                match link.by_pkid.remove(&ack.pkid) {
                    Some(tag) => self.core.on_puback(now, tag),
                    None => Vec::new(),
                }
            }
            Ok(rumqttc::Event::Incoming(Incoming::Publish(publish))) => {
                self.core.on_publish(now, &publish.topic, &publish.payload)
            }
            Ok(rumqttc::Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(tag) = link.unnumbered.pop_front() {
                    link.by_pkid.insert(pkid, tag);
                }
                Vec::new()
            }
            Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => self.core.on_disconnected(now),
            Ok(_) => Vec::new(),
            Err(error) => {
                let reason = DisconnectReason::Lost(ClientError::from(error).to_string());
                self.core.on_lost(now, reason, rand::random())
            }
        }
    }
}

/// The timer of every phase.
fn ticker() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
