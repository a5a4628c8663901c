//! The session's protocol state, without I/O: the connection phases as an enum that carries
//! its data, inputs (`on_connack`, `on_suback`, `on_puback`, `on_publish`, `on_command`,
//! `on_tick`, `on_lost`, `on_disconnected`) that take `now` and return [`Action`]s for the driver
//! ([`crate::session`]) to perform.
//!
//! Every publish carries a [`Tag`]; the driver reports its PUBACK by tag. Outputs stay here until
//! their PUBACK: a drop puts the unacknowledged ones back in front of the outbox, in order, so
//! they are sent again on the next connection (at least once; exactly once from the client's
//! side unless the hub's PUBACK was lost with the connection). At most [`MAX_IN_FLIGHT`]
//! publishes are unacknowledged, so nothing ever waits inside rumqttc's queues.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use edgetwin_wire::topic::{
    method_response_topic, parse_outbound, reported_patch_topic, telemetry_topic, twin_get_topic,
    Outbound, PropertyBag, OUTPUT_NAME_PROPERTY,
};
use edgetwin_wire::twin::Properties;
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::desired::{DesiredState, DesiredUpdate, PatchOutcome};
use crate::message::Message;
use crate::reported::{ReportedAnswer, ReportedQueue};
use crate::rid::{RequestKind, RidTable};

/// Unacknowledged publishes per connection (rumqttc's own limit is 100).
pub const MAX_IN_FLIGHT: usize = 64;
/// Unanswered twin requests per connection.
const MAX_OUTSTANDING: usize = 32;
/// Pause before retrying a twin GET that failed.
const GET_RETRY: Duration = Duration::from_secs(1);

/// A publish's identity, assigned here; the driver maps it to the packet id.
pub type Tag = u64;

/// A reported patch's receipt, chosen by the driver.
pub type ReceiptId = u64;

/// How the hub answered a reported patch: the new reported `$version` (if it said) or the
/// status it refused the patch (or one of its properties) with.
pub type Settled = Result<Option<i64>, u16>;

/// Timing and limits of a session.
#[derive(Clone, Debug)]
pub struct Timing {
    /// From CONNACK to the controlled reconnect with a new token.
    pub renew_after: Duration,
    /// How long a renewal waits for unacknowledged publishes before disconnecting anyway.
    pub renew_drain: Duration,
    /// CONNECT (including credentials) timeout.
    pub connect_timeout: Duration,
    /// Twin request timeout.
    pub request_timeout: Duration,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// Outputs kept (queued and unacknowledged together).
    pub outbox_capacity: usize,
    /// How long shutdown waits when every handle was dropped without [`Command::Shutdown`].
    pub close_grace: Duration,
}

/// Where the connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Credentials and CONNECT are under way; the attempt fails at `deadline`.
    Connecting {
        /// End of this attempt.
        deadline: Instant,
    },
    /// SUBSCRIBE sent, waiting for SUBACK.
    Subscribing {
        /// When the token must be renewed.
        renew_at: Instant,
    },
    /// Waiting for the full twin.
    SyncingTwin {
        /// When the token must be renewed.
        renew_at: Instant,
    },
    /// In sync: outputs and reported patches flow.
    Live {
        /// When the token must be renewed.
        renew_at: Instant,
    },
    /// Draining unacknowledged publishes before reconnecting with a new token.
    Renewing {
        /// When draining began.
        since: Instant,
    },
    /// DISCONNECT requested.
    Disconnecting {
        /// True: reconnect right away (renewal); false: stop (shutdown).
        renewal: bool,
    },
    /// Waiting before the next attempt.
    BackingOff {
        /// When to try again.
        until: Instant,
    },
    /// Done.
    Stopped,
}

impl Phase {
    /// True while a connection is up (CONNACK received, not yet closed).
    pub fn is_connected(&self) -> bool {
        matches!(
            self,
            Phase::Subscribing { .. }
                | Phase::SyncingTwin { .. }
                | Phase::Live { .. }
                | Phase::Renewing { .. }
                | Phase::Disconnecting { .. }
        )
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// A controlled reconnect with a renewed SAS token.
    TokenRenewal,
    /// The application shut the client down.
    Shutdown,
    /// The hub refused one of the subscriptions the client needs.
    SubscriptionRefused,
    /// CONNACK or the credentials did not arrive in time.
    Timeout,
    /// The network, TLS or the hub ended the connection (a safe description).
    Lost(String),
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::TokenRenewal => f.write_str("token renewal"),
            DisconnectReason::Shutdown => f.write_str("shutdown"),
            DisconnectReason::SubscriptionRefused => f.write_str("the hub refused a subscription"),
            DisconnectReason::Timeout => f.write_str("connect timed out"),
            DisconnectReason::Lost(why) => f.write_str(why),
        }
    }
}

/// A direct method call, as the state machine sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodRequest {
    /// Method name.
    pub name: String,
    /// The `$rid` to answer.
    pub rid: String,
    /// Payload (JSON; `null` if empty, a string if not JSON).
    pub payload: Value,
}

/// A connection came or went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionChange {
    /// CONNACK received; the twin is being synchronised.
    Connected,
    /// The connection ended.
    Disconnected(DisconnectReason),
}

/// What the session tells the application; `M` is how a method call is carried (the state
/// machine's [`MethodRequest`], or the application's [`crate::MethodCall`] that can answer).
#[derive(Clone, Debug, PartialEq)]
pub enum Event<M> {
    /// The connection came or went.
    Connection(ConnectionChange),
    /// The desired state changed: the reconciled document, the patch (if any) and its version.
    Desired(DesiredUpdate),
    /// A direct method call.
    Method(M),
    /// A message arrived on a module input (routed by edgeHub or the hub).
    Input {
        /// The input name.
        input: String,
        /// The message.
        message: Message,
    },
    /// A reported patch was acknowledged.
    ReportedAcked {
        /// From queueing the oldest coalesced update to the acknowledgement.
        latency: Duration,
        /// The twin's new reported `$version`, if the hub said.
        version: Option<i64>,
    },
    /// The outbox was full: its oldest output was dropped ([`crate::Overflow::DropOldest`]).
    OutputDropped,
}

/// What the state machine tells the application.
pub type Notice = Event<MethodRequest>;

/// The notice of a connection that ended.
fn disconnected(reason: DisconnectReason) -> Notice {
    Event::Connection(ConnectionChange::Disconnected(reason))
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Fetch credentials, open a new connection and wait for CONNACK.
    Connect,
    /// Subscribe to these filters (QoS 1).
    Subscribe(Vec<String>),
    /// Publish at QoS 1 and report the PUBACK with [`Session::on_puback`].
    Publish {
        /// Identity of this publish.
        tag: Tag,
        /// Topic.
        topic: String,
        /// Body.
        payload: Vec<u8>,
    },
    /// Send DISCONNECT; then call [`Session::on_disconnected`].
    Disconnect,
    /// Close the connection without ceremony (it is already unusable).
    Drop,
    /// Tell the application.
    Notify(Notice),
    /// These reported patches are answered: the new reported `$version` (if the hub said) or
    /// the status of the refusal.
    Settle {
        /// The receipts settled.
        receipts: Vec<ReceiptId>,
        /// How.
        outcome: Settled,
    },
    /// The session is over.
    Stop,
}

/// What the application asks of the session.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Queue a reported-properties patch (sent until acknowledged), settling `receipt` (if any)
    /// with [`Action::Settle`] once the hub has answered it.
    Report(Properties, Option<ReceiptId>),
    /// Send a message to a module output (or, with no name, device telemetry).
    Output {
        /// Output name (`$.on`); `None` for a device's telemetry.
        output: Option<String>,
        /// The message.
        message: Message,
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
    /// Flush reported patches and outputs, disconnect and stop, giving up at `deadline`.
    Shutdown {
        /// When to stop waiting for the hub.
        deadline: Instant,
    },
    /// Every handle is gone: as [`Command::Shutdown`] with [`Timing::close_grace`].
    Close,
}

/// An output waiting for the connection or for its PUBACK.
#[derive(Clone, Debug, PartialEq)]
struct Output {
    /// Topic (carries the output name and properties).
    topic: String,
    /// Body.
    body: Vec<u8>,
}

/// What an unacknowledged publish was.
#[derive(Clone, Debug)]
enum Sent {
    /// An output: put back in the outbox if the connection drops first.
    Output(Output),
    /// Anything else (twin request, method response): its own logic covers a loss.
    Other,
}

/// The session's protocol state.
#[derive(Debug)]
pub struct Session {
    /// Where the connection is.
    phase: Phase,
    /// Timing and limits.
    timing: Timing,
    /// The device id, for topics.
    device_id: String,
    /// The module id, for topics; `None` for a device client.
    module_id: Option<String>,
    /// Twin request correlation.
    rids: RidTable,
    /// Desired reconciliation.
    desired: DesiredState,
    /// Reported patches until acknowledged.
    reported: ReportedQueue,
    /// Receipts of the patches coalesced into the pending one.
    receipts_pending: Vec<ReceiptId>,
    /// Receipts of the patch in flight (or of the refused patch whose properties are being
    /// re-sent one by one).
    receipts_in_flight: Vec<ReceiptId>,
    /// A property of the refused patch being re-sent one by one was refused too: its status.
    isolation_refused: Option<u16>,
    /// Outputs not yet sent on this connection, oldest first.
    outbox: VecDeque<Output>,
    /// Publishes sent on this connection and not yet acknowledged, by tag (in send order).
    unacked: BTreeMap<Tag, Sent>,
    /// Next tag.
    next_tag: Tag,
    /// Reconnect pacing.
    backoff: Backoff,
    /// Set by [`Command::Shutdown`] or [`Command::Close`].
    shutdown: Option<Instant>,
    /// When to retry a twin GET that failed with 429/5xx.
    get_retry_at: Option<Instant>,
    /// Outputs acknowledged by the hub, ever.
    delivered: u64,
    /// Outputs dropped because the outbox was full, ever.
    dropped: u64,
}

impl Session {
    /// A session about to connect for `device_id` (and `module_id`, for a module client).
    pub fn new(timing: Timing, device_id: &str, module_id: Option<&str>) -> Self {
        let backoff = Backoff::new(timing.backoff_base, timing.backoff_cap);
        Session {
            phase: Phase::Stopped,
            timing,
            device_id: device_id.to_owned(),
            module_id: module_id.map(str::to_owned),
            rids: RidTable::new(MAX_OUTSTANDING),
            desired: DesiredState::new(),
            reported: ReportedQueue::new(),
            receipts_pending: Vec::new(),
            receipts_in_flight: Vec::new(),
            isolation_refused: None,
            outbox: VecDeque::new(),
            unacked: BTreeMap::new(),
            next_tag: 0,
            backoff,
            shutdown: None,
            get_retry_at: None,
            delivered: 0,
            dropped: 0,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// True if no reported patch waits for delivery.
    pub fn reported_idle(&self) -> bool {
        self.reported.is_idle()
    }

    /// Outputs acknowledged by the hub, ever.
    pub fn outputs_delivered(&self) -> u64 {
        self.delivered
    }

    /// Outputs dropped because the outbox was full, ever.
    pub fn outputs_dropped(&self) -> u64 {
        self.dropped
    }

    /// Outputs queued or unacknowledged.
    pub fn outputs_pending(&self) -> usize {
        self.outbox.len() + self.unacked_outputs()
    }

    fn unacked_outputs(&self) -> usize {
        self.unacked
            .values()
            .filter(|s| matches!(s, Sent::Output(_)))
            .count()
    }

    /// The first connection attempt.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.connecting(now)
    }

    fn connecting(&mut self, now: Instant) -> Vec<Action> {
        self.phase = Phase::Connecting {
            deadline: now + self.timing.connect_timeout,
        };
        vec![Action::Connect]
    }

    /// The topic filters this client needs.
    fn filters(&self) -> Vec<String> {
        let mut filters = vec![
            "$iothub/twin/res/#".to_owned(),
            "$iothub/twin/PATCH/properties/desired/#".to_owned(),
            "$iothub/methods/POST/#".to_owned(),
        ];
        if let Some(module) = &self.module_id {
            filters.push(format!(
                "devices/{}/modules/{module}/inputs/#",
                self.device_id
            ));
        }
        filters
    }

    /// CONNACK arrived (accepted).
    pub fn on_connack(&mut self, now: Instant) -> Vec<Action> {
        if !matches!(self.phase, Phase::Connecting { .. }) {
            return Vec::new();
        }
        self.backoff.reset();
        self.phase = Phase::Subscribing {
            renew_at: now + self.timing.renew_after,
        };
        vec![
            Action::Notify(Notice::Connection(ConnectionChange::Connected)),
            Action::Subscribe(self.filters()),
        ]
    }

    /// SUBACK arrived; `granted` is false if any filter was refused. A refusal is a lost
    /// connection: a session without its twin or method subscription is not live.
    pub fn on_suback(&mut self, now: Instant, granted: bool, jitter: f64) -> Vec<Action> {
        let Phase::Subscribing { renew_at } = self.phase else {
            return Vec::new();
        };
        if !granted {
            warn!("the hub refused a subscription; reconnecting");
            let mut actions = vec![Action::Drop];
            actions.extend(self.on_lost(now, DisconnectReason::SubscriptionRefused, jitter));
            return actions;
        }
        self.phase = Phase::SyncingTwin { renew_at };
        let mut actions = Vec::new();
        self.request_twin(now, &mut actions);
        actions
    }

    /// The publish `tag` was acknowledged.
    pub fn on_puback(&mut self, now: Instant, tag: Tag) -> Vec<Action> {
        if let Some(Sent::Output(_)) = self.unacked.remove(&tag) {
            self.delivered += 1;
        }
        let mut actions = Vec::new();
        self.flush(now, &mut actions);
        self.check_drained(now, &mut actions);
        actions
    }

    /// The connection failed (network, TLS, CONNACK refusal, timeout): everything
    /// unacknowledged goes back, and the next attempt waits its backoff (`jitter` in 0..1).
    pub fn on_lost(&mut self, now: Instant, reason: DisconnectReason, jitter: f64) -> Vec<Action> {
        if self.phase == Phase::Stopped {
            return Vec::new();
        }
        let was_connected = self.phase.is_connected();
        self.requeue();
        let attempt = self.backoff.attempts() + 1;
        let stopping = self.should_stop(now);
        // One line per failure: what failed, and when the next attempt is.
        let delay = (!stopping).then(|| self.backoff.next_delay(jitter));
        match delay {
            Some(delay) => warn!(
                %reason,
                attempt,
                "connection failed; next attempt in {:.1} s",
                delay.as_secs_f64()
            ),
            None => warn!(%reason, attempt, "connection failed; stopping"),
        }
        let mut actions = Vec::new();
        if was_connected {
            actions.push(Action::Notify(disconnected(reason)));
        }
        let Some(delay) = delay else {
            return self.stop(actions);
        };
        self.phase = Phase::BackingOff { until: now + delay };
        actions
    }

    /// The DISCONNECT the session asked for went out.
    pub fn on_disconnected(&mut self, now: Instant) -> Vec<Action> {
        let Phase::Disconnecting { renewal } = self.phase else {
            return Vec::new();
        };
        self.requeue();
        let reason = if renewal {
            DisconnectReason::TokenRenewal
        } else {
            DisconnectReason::Shutdown
        };
        let mut actions = vec![Action::Notify(disconnected(reason))];
        if renewal && !self.should_stop(now) {
            info!("reconnecting with a renewed token");
            actions.extend(self.connecting(now));
            return actions;
        }
        self.stop(actions)
    }

    fn stop(&mut self, mut actions: Vec<Action>) -> Vec<Action> {
        self.phase = Phase::Stopped;
        actions.push(Action::Stop);
        actions
    }

    /// The connection is gone: outputs unacknowledged go back in front, in order; the reported
    /// patch in flight is re-sent; twin requests are forgotten.
    fn requeue(&mut self) {
        let unacked = std::mem::take(&mut self.unacked);
        for sent in unacked.into_values().rev() {
            if let Sent::Output(output) = sent {
                self.outbox.push_front(output);
            }
        }
        self.rids.clear();
        self.requeue_reported();
        self.get_retry_at = None;
    }

    /// The reported patch in flight goes back in front of the pending ones, with its receipts.
    fn requeue_reported(&mut self) {
        if self.reported.has_in_flight() && !self.reported.is_isolating() {
            let mut receipts = std::mem::take(&mut self.receipts_in_flight);
            receipts.append(&mut self.receipts_pending);
            self.receipts_pending = receipts;
        }
        self.reported.requeue_in_flight();
    }

    /// Shutdown is due: everything delivered, or its deadline passed.
    fn should_stop(&self, now: Instant) -> bool {
        match self.shutdown {
            Some(deadline) => {
                now >= deadline || (self.reported.is_idle() && self.outputs_pending() == 0)
            }
            None => false,
        }
    }

    /// A publish from the hub.
    pub fn on_publish(&mut self, now: Instant, topic: &str, payload: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.phase.is_connected() {
            return actions;
        }
        if let Some(action) = self.input(topic, payload) {
            actions.push(action);
            return actions;
        }
        match parse_outbound(topic) {
            Ok(Outbound::TwinResponse {
                status,
                rid,
                version,
            }) => self.on_twin_response(now, status, &rid, version, payload, &mut actions),
            Ok(Outbound::DesiredPatch { version }) => {
                self.on_desired_patch(now, version, payload, &mut actions)
            }
            Ok(Outbound::MethodRequest { method, rid }) => {
                let payload = if payload.iter().all(u8::is_ascii_whitespace) {
                    Value::Null
                } else {
                    serde_json::from_slice(payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(payload).into_owned())
                    })
                };
                actions.push(Action::Notify(Notice::Method(MethodRequest {
                    name: method,
                    rid,
                    payload,
                })));
            }
            Err(error) => warn!(%topic, %error, "ignoring a message on an unexpected topic"),
        }
        actions
    }

    /// A message on `devices/{d}/modules/{m}/inputs/{input}/{bag}`, if the topic is one.
    fn input(&self, topic: &str, payload: &[u8]) -> Option<Action> {
        let module = self.module_id.as_deref()?;
        let rest = topic
            .strip_prefix("devices/")?
            .strip_prefix(self.device_id.as_str())?
            .strip_prefix("/modules/")?
            .strip_prefix(module)?
            .strip_prefix("/inputs/")?;
        let (input, bag) = rest.split_once('/').unwrap_or((rest, ""));
        let bag = match PropertyBag::parse(bag) {
            Ok(bag) => bag,
            Err(error) => {
                warn!(%input, %error, "input message with a malformed property bag; ignored");
                return None;
            }
        };
        Some(Action::Notify(Notice::Input {
            input: input.to_owned(),
            message: Message::from_bag(payload.to_vec(), &bag),
        }))
    }

    fn on_twin_response(
        &mut self,
        now: Instant,
        status: u16,
        rid: &str,
        version: Option<i64>,
        payload: &[u8],
        actions: &mut Vec<Action>,
    ) {
        let Some(done) = self.rids.complete(rid, now) else {
            debug!(%rid, "twin response for no outstanding request");
            return;
        };
        match done.kind {
            RequestKind::TwinGet => self.on_twin(now, status, payload, actions),
            RequestKind::ReportedPatch => {
                match self.reported.on_answer(rid, status, now) {
                    ReportedAnswer::Acked { latency } => {
                        actions.push(Action::Notify(Notice::ReportedAcked { latency, version }));
                        self.settle_in_flight(Ok(version), actions);
                    }
                    ReportedAnswer::Rejected => {
                        warn!(
                            status,
                            body = %String::from_utf8_lossy(payload),
                            "the hub rejected a reported patch; dropped"
                        );
                        self.isolation_refused.get_or_insert(status);
                        self.settle_in_flight(Ok(version), actions);
                    }
                    ReportedAnswer::Retry => {
                        warn!(status, "reported patch throttled or failed; will retry");
                        if !self.reported.is_isolating() {
                            let mut receipts = std::mem::take(&mut self.receipts_in_flight);
                            receipts.append(&mut self.receipts_pending);
                            self.receipts_pending = receipts;
                        }
                    }
                    ReportedAnswer::Isolating => warn!(
                        status,
                        body = %String::from_utf8_lossy(payload),
                        "the hub rejected a reported patch; re-sending its properties one by one"
                    ),
                    ReportedAnswer::Unknown => {}
                }
                self.flush(now, actions);
                self.check_drained(now, actions);
            }
        }
    }

    /// Settles the receipts of the patch in flight once nothing of it is left to send: with
    /// `outcome`, unless one of its properties was refused.
    fn settle_in_flight(&mut self, outcome: Settled, actions: &mut Vec<Action>) {
        if self.reported.is_isolating() {
            return;
        }
        let outcome = match self.isolation_refused.take() {
            Some(status) => Err(status),
            None => outcome,
        };
        let receipts = std::mem::take(&mut self.receipts_in_flight);
        if !receipts.is_empty() {
            actions.push(Action::Settle { receipts, outcome });
        }
    }

    fn on_desired_patch(
        &mut self,
        now: Instant,
        version: Option<i64>,
        payload: &[u8],
        actions: &mut Vec<Action>,
    ) {
        let patch = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(patch)) => patch,
            _ => {
                warn!("desired patch body is not a JSON object; resyncing");
                return self.request_twin(now, actions);
            }
        };
        match self.desired.on_patch(patch, version) {
            PatchOutcome::Applied(update) => {
                info!(version = update.version, "desired patch applied");
                actions.push(Action::Notify(Notice::Desired(update)));
            }
            PatchOutcome::Ignored => debug!(?version, "desired patch already covered"),
            PatchOutcome::Resync => {
                info!(?version, last = ?self.desired.version(), "desired version gap; getting the full twin");
                self.request_twin(now, actions);
            }
        }
    }

    fn on_twin(&mut self, now: Instant, status: u16, payload: &[u8], actions: &mut Vec<Action>) {
        let desired = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(mut twin)) if status == 200 => match twin.remove("desired") {
                Some(Value::Object(desired)) => desired,
                _ => Properties::new(),
            },
            _ => {
                warn!(status, "twin GET failed; retrying");
                self.get_retry_at = Some(now + GET_RETRY);
                return;
            }
        };
        if let Some(update) = self.desired.on_full(desired) {
            info!(
                version = update.version,
                "desired properties synchronised from the full twin"
            );
            actions.push(Action::Notify(Notice::Desired(update)));
        }
        if self.desired.behind() {
            self.request_twin(now, actions);
        }
        if let Phase::SyncingTwin { renew_at } = self.phase {
            self.phase = Phase::Live { renew_at };
        }
        self.flush(now, actions);
    }

    /// Issues a publish with a new tag.
    fn publish(&mut self, topic: String, payload: Vec<u8>, sent: Sent) -> Action {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.unacked.insert(tag, sent);
        Action::Publish {
            tag,
            topic,
            payload,
        }
    }

    /// Room for one more unacknowledged publish.
    fn window_open(&self) -> bool {
        self.unacked.len() < MAX_IN_FLIGHT
    }

    /// Sends a twin GET unless one is outstanding.
    fn request_twin(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.rids.has(RequestKind::TwinGet) {
            return;
        }
        let Ok(rid) = self.rids.issue(RequestKind::TwinGet, now) else {
            return;
        };
        self.get_retry_at = None;
        actions.push(self.publish(twin_get_topic(&rid), b" ".to_vec(), Sent::Other));
    }

    /// Live and not draining: sends the next reported patch and as many outputs as the
    /// window allows.
    fn flush(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Live { .. }) {
            return;
        }
        if self.window_open() {
            let isolating = self.reported.is_isolating();
            if let Some(patch) = self.reported.take_sendable(now) {
                match self.rids.issue(RequestKind::ReportedPatch, now) {
                    Ok(rid) => {
                        if !isolating {
                            self.receipts_in_flight = std::mem::take(&mut self.receipts_pending);
                        }
                        let body = serde_json::to_vec(&patch).unwrap_or_default();
                        actions.push(self.publish(reported_patch_topic(&rid), body, Sent::Other));
                        self.reported.sent(rid, patch, now);
                    }
                    Err(_) => self.reported.restore(patch),
                }
            }
        }
        while self.window_open() {
            let Some(output) = self.outbox.pop_front() else {
                break;
            };
            let (topic, body) = (output.topic.clone(), output.body.clone());
            actions.push(self.publish(topic, body, Sent::Output(output)));
        }
    }

    /// A command from the application.
    pub fn on_command(&mut self, now: Instant, command: Command) -> Vec<Action> {
        let mut actions = Vec::new();
        match command {
            Command::Report(patch, receipt) => {
                self.reported.push(patch, now);
                self.receipts_pending.extend(receipt);
                self.flush(now, &mut actions);
            }
            Command::Output { output, message } => {
                let mut bag = message.property_bag();
                if let Some(name) = &output {
                    bag.insert(OUTPUT_NAME_PROPERTY, name.as_str());
                }
                let topic = telemetry_topic(&self.device_id, self.module_id.as_deref(), &bag);
                if self.outputs_pending() >= self.timing.outbox_capacity.max(1)
                    && self.outbox.pop_front().is_some()
                {
                    self.dropped += 1;
                    actions.push(Action::Notify(Notice::OutputDropped));
                }
                self.outbox.push_back(Output {
                    topic,
                    body: message.into_body(),
                });
                self.flush(now, &mut actions);
            }
            Command::MethodResponse { rid, status, body } => {
                if self.phase.is_connected()
                    && self.phase != (Phase::Disconnecting { renewal: false })
                {
                    actions.push(self.publish(
                        method_response_topic(status, &rid),
                        body,
                        Sent::Other,
                    ));
                } else {
                    warn!(%rid, "method response dropped: not connected");
                }
            }
            Command::Shutdown { deadline } => {
                info!("shutdown requested; flushing reported properties and outputs");
                self.shutdown = Some(self.shutdown.map_or(deadline, |d| d.min(deadline)));
                actions.extend(self.on_tick(now));
            }
            Command::Close => {
                if self.shutdown.is_none() {
                    self.shutdown = Some(now + self.timing.close_grace);
                }
                actions.extend(self.on_tick(now));
            }
        }
        actions
    }

    /// Timers: connect deadline, backoff, request timeouts, GET retries, token renewal,
    /// draining and shutdown.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.phase.clone() {
            Phase::Stopped => return actions,
            Phase::Connecting { deadline } => {
                if self.should_stop(now) {
                    actions.push(Action::Drop);
                    return self.stop(actions);
                }
                if now >= deadline {
                    actions.push(Action::Drop);
                    actions.extend(self.on_lost(now, DisconnectReason::Timeout, 0.5));
                }
                return actions;
            }
            Phase::BackingOff { until } => {
                if self.should_stop(now) {
                    return self.stop(actions);
                }
                if now >= until {
                    return self.connecting(now);
                }
                return actions;
            }
            Phase::Disconnecting { .. } => return actions,
            Phase::Subscribing { .. }
            | Phase::SyncingTwin { .. }
            | Phase::Live { .. }
            | Phase::Renewing { .. } => {}
        }
        for (rid, kind) in self.rids.expire(now, self.timing.request_timeout) {
            warn!(%rid, ?kind, "twin request timed out");
            match kind {
                RequestKind::TwinGet => self.get_retry_at = Some(now),
                RequestKind::ReportedPatch => self.requeue_reported(),
            }
        }
        if self.get_retry_at.is_some_and(|t| now >= t) {
            self.request_twin(now, &mut actions);
        }
        self.flush(now, &mut actions);
        if self.shutdown.is_some() {
            if self.should_stop(now) {
                self.phase = Phase::Disconnecting { renewal: false };
                actions.push(Action::Disconnect);
            }
            return actions;
        }
        match self.phase {
            Phase::Subscribing { renew_at }
            | Phase::SyncingTwin { renew_at }
            | Phase::Live { renew_at }
                if now >= renew_at =>
            {
                info!("renewing the SAS token: draining before reconnecting");
                self.phase = Phase::Renewing { since: now };
            }
            _ => {}
        }
        self.check_drained(now, &mut actions);
        actions
    }

    /// Renewing: disconnect once nothing is unacknowledged, or the drain time is up.
    fn check_drained(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if let Phase::Renewing { since } = self.phase {
            let drained = self.unacked.is_empty();
            if drained || now.saturating_duration_since(since) >= self.timing.renew_drain {
                self.phase = Phase::Disconnecting { renewal: true };
                actions.push(Action::Disconnect);
            }
        } else if self.shutdown.is_some()
            && self.phase.is_connected()
            && !matches!(self.phase, Phase::Disconnecting { .. })
            && self.should_stop(now)
        {
            self.phase = Phase::Disconnecting { renewal: false };
            actions.push(Action::Disconnect);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgetwin_wire::topic::{desired_patch_topic, method_request_topic, twin_response_topic};
    use serde_json::json;

    const SECOND: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing {
            renew_after: Duration::from_secs(100),
            renew_drain: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(8),
            outbox_capacity: 4,
            close_grace: Duration::from_secs(3),
        }
    }

    fn session() -> Session {
        Session::new(timing(), "d1", Some("m1"))
    }

    /// The publishes among `actions`: (tag, topic, payload).
    fn publishes(actions: &[Action]) -> Vec<(Tag, String, Vec<u8>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish {
                    tag,
                    topic,
                    payload,
                } => Some((*tag, topic.clone(), payload.clone())),
                _ => None,
            })
            .collect()
    }

    /// The notices among `actions`.
    fn notices(actions: &[Action]) -> Vec<Notice> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Notify(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn rid_of(topic: &str) -> String {
        topic.split("$rid=").nth(1).expect("a rid").to_owned()
    }

    fn output(n: u32) -> Command {
        Command::Output {
            output: Some("out".to_owned()),
            message: Message::new(n.to_string()),
        }
    }

    fn bodies(actions: &[Action]) -> Vec<String> {
        publishes(actions)
            .into_iter()
            .filter(|(_, topic, _)| topic.contains("/messages/events/"))
            .map(|(_, _, body)| String::from_utf8(body).unwrap())
            .collect()
    }

    /// Connects, subscribes and answers the twin GET with `desired`; returns the actions of the
    /// last step.
    fn go_live(s: &mut Session, now: Instant, desired: Value) -> Vec<Action> {
        assert_eq!(s.on_connack(now).len(), 2);
        let get = publishes(&s.on_suback(now, true, 0.5));
        let (tag, topic, _) = get[0].clone();
        s.on_puback(now, tag);
        let twin = json!({"desired": desired, "reported": {"$version": 1}});
        s.on_publish(
            now,
            &twin_response_topic(200, &rid_of(&topic), None),
            twin.to_string().as_bytes(),
        )
    }

    fn live() -> (Session, Instant) {
        let now = Instant::now();
        (live_at(now), now)
    }

    fn live_at(now: Instant) -> Session {
        let mut s = session();
        s.start(now);
        go_live(&mut s, now, json!({"$version": 1}));
        assert!(matches!(s.phase(), Phase::Live { .. }));
        s
    }

    #[test]
    fn a_new_session_starts_by_connecting_with_a_deadline() {
        let now = Instant::now();
        let mut s = session();
        assert_eq!(s.start(now), vec![Action::Connect]);
        assert_eq!(
            s.phase(),
            &Phase::Connecting {
                deadline: now + 10 * SECOND
            }
        );
    }

    #[test]
    fn connack_announces_the_connection_and_subscribes_to_twin_methods_and_inputs() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        let actions = s.on_connack(now);
        assert_eq!(
            actions[0],
            Action::Notify(Notice::Connection(ConnectionChange::Connected))
        );
        let Action::Subscribe(filters) = &actions[1] else {
            panic!("{actions:?}")
        };
        assert!(filters.contains(&"$iothub/methods/POST/#".to_owned()));
        assert!(filters.contains(&"devices/d1/modules/m1/inputs/#".to_owned()));
        assert_eq!(
            s.phase(),
            &Phase::Subscribing {
                renew_at: now + 100 * SECOND
            }
        );
    }

    #[test]
    fn a_device_client_does_not_subscribe_to_module_inputs() {
        let now = Instant::now();
        let mut s = Session::new(timing(), "d1", None);
        s.start(now);
        let actions = s.on_connack(now);
        let Action::Subscribe(filters) = &actions[1] else {
            panic!("{actions:?}")
        };
        assert!(filters.iter().all(|f| !f.contains("inputs")));
    }

    #[test]
    fn a_granted_subscription_asks_for_the_full_twin() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        s.on_connack(now);
        let actions = s.on_suback(now, true, 0.5);
        let sent = publishes(&actions);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].1.starts_with("$iothub/twin/GET/?$rid="));
        assert!(matches!(s.phase(), Phase::SyncingTwin { .. }));
    }

    #[test]
    fn a_refused_subscription_is_a_lost_connection_not_live() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        s.on_connack(now);
        let actions = s.on_suback(now, false, 0.0);
        assert_eq!(actions[0], Action::Drop);
        assert_eq!(
            notices(&actions),
            vec![disconnected(DisconnectReason::SubscriptionRefused)]
        );
        assert!(publishes(&actions).is_empty(), "no twin GET: {actions:?}");
        let Phase::BackingOff { until } = *s.phase() else {
            panic!("{:?}", s.phase())
        };
        assert!(until > now);
        // The backoff ends in a new attempt, not in Live.
        assert_eq!(s.on_tick(until), vec![Action::Connect]);
    }

    #[test]
    fn the_full_twin_makes_the_session_live_and_hands_over_the_desired_document() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        let actions = go_live(&mut s, now, json!({"$version": 4, "interval": 5}));
        let [Notice::Desired(update)] = <[Notice; 1]>::try_from(notices(&actions)).unwrap() else {
            panic!("{actions:?}")
        };
        assert_eq!(update.version, 4);
        assert_eq!(update.desired["interval"], json!(5));
        assert!(matches!(s.phase(), Phase::Live { .. }));
    }

    #[test]
    fn a_failed_twin_get_is_retried_after_a_pause() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        s.on_connack(now);
        let get = publishes(&s.on_suback(now, true, 0.5));
        let topic = twin_response_topic(503, &rid_of(&get[0].1), None);
        s.on_publish(now, &topic, b"{}");
        assert!(matches!(s.phase(), Phase::SyncingTwin { .. }));
        assert!(publishes(&s.on_tick(now + SECOND / 2)).is_empty());
        let retry = publishes(&s.on_tick(now + SECOND));
        assert!(retry[0].1.starts_with("$iothub/twin/GET/"), "{retry:?}");
    }

    #[test]
    fn outputs_wait_while_not_live_and_flow_once_live() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        assert!(publishes(&s.on_command(now, output(1))).is_empty());
        let actions = go_live(&mut s, now, json!({"$version": 1}));
        assert_eq!(bodies(&actions), vec!["1"]);
        let (_, topic, _) = &publishes(&actions)[0];
        assert!(topic.starts_with("devices/d1/modules/m1/messages/events/"));
        assert!(topic.contains("%24.on=out"), "{topic}");
    }

    #[test]
    fn outputs_in_flight_at_a_drop_are_resent_after_the_reconnect_exactly_once() {
        let (mut s, now) = live();
        let mut sent = Vec::new();
        for n in 1..=3 {
            sent.extend(publishes(&s.on_command(now, output(n))));
        }
        // The hub acknowledged the first only.
        s.on_puback(now, sent[0].0);
        let actions = s.on_lost(now, DisconnectReason::Lost("reset".into()), 0.0);
        assert_eq!(
            notices(&actions),
            vec![disconnected(DisconnectReason::Lost("reset".into()))]
        );
        assert_eq!(s.outputs_pending(), 2);
        // A fourth one while disconnected queues behind them.
        s.on_command(now, output(4));
        let Phase::BackingOff { until } = *s.phase() else {
            panic!()
        };
        assert_eq!(s.on_tick(until), vec![Action::Connect]);
        let actions = go_live(&mut s, until, json!({"$version": 1}));
        assert_eq!(bodies(&actions), vec!["2", "3", "4"]);
        // Acknowledged there, nothing is sent again.
        for (tag, _, _) in publishes(&actions) {
            s.on_puback(until, tag);
        }
        assert_eq!(s.outputs_pending(), 0);
        assert_eq!(s.outputs_delivered(), 4);
        let next = s.on_lost(until, DisconnectReason::Lost("again".into()), 0.0);
        assert!(publishes(&next).is_empty());
        assert_eq!(s.outputs_pending(), 0);
    }

    #[test]
    fn unacknowledged_publishes_never_exceed_the_window() {
        let mut timing = timing();
        timing.outbox_capacity = 1000;
        let now = Instant::now();
        let mut s = Session::new(timing, "d1", Some("m1"));
        s.start(now);
        go_live(&mut s, now, json!({"$version": 1}));
        let mut sent = Vec::new();
        for n in 0..200 {
            sent.extend(publishes(&s.on_command(now, output(n))));
        }
        assert_eq!(sent.len(), MAX_IN_FLIGHT);
        let more = publishes(&s.on_puback(now, sent[0].0));
        assert_eq!(more.len(), 1);
        assert_eq!(
            String::from_utf8_lossy(&more[0].2),
            MAX_IN_FLIGHT.to_string()
        );
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_output_and_counts_it() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        for n in 1..=4 {
            assert!(notices(&s.on_command(now, output(n))).is_empty());
        }
        let actions = s.on_command(now, output(5));
        assert_eq!(notices(&actions), vec![Notice::OutputDropped]);
        assert_eq!(s.outputs_dropped(), 1);
        let actions = go_live(&mut s, now, json!({"$version": 1}));
        assert_eq!(bodies(&actions), vec!["2", "3", "4", "5"]);
    }

    #[test]
    fn renewal_disconnects_as_soon_as_every_publish_is_acknowledged_then_reconnects() {
        let (mut s, now) = live();
        let sent = publishes(&s.on_command(now, output(1)));
        let at = now + 100 * SECOND;
        assert!(s.on_tick(at).is_empty());
        assert_eq!(s.phase(), &Phase::Renewing { since: at });
        // Renewing sends nothing new.
        assert!(publishes(&s.on_command(at, output(2))).is_empty());
        assert_eq!(s.on_puback(at, sent[0].0), vec![Action::Disconnect]);
        assert_eq!(s.phase(), &Phase::Disconnecting { renewal: true });
        let actions = s.on_disconnected(at);
        assert_eq!(
            actions,
            vec![
                Action::Notify(disconnected(DisconnectReason::TokenRenewal)),
                Action::Connect
            ]
        );
        assert_eq!(
            s.outputs_pending(),
            1,
            "output 2 waits for the new connection"
        );
    }

    #[test]
    fn renewal_waits_for_unacknowledged_publishes_only_so_long() {
        let (mut s, now) = live();
        s.on_command(now, output(1));
        let at = now + 100 * SECOND;
        s.on_tick(at);
        assert!(s.on_tick(at + 4 * SECOND).is_empty());
        assert_eq!(s.on_tick(at + 5 * SECOND), vec![Action::Disconnect]);
        s.on_disconnected(at + 5 * SECOND);
        // The unacknowledged output goes out again on the next connection.
        let actions = go_live(&mut s, at + 5 * SECOND, json!({"$version": 1}));
        assert_eq!(bodies(&actions), vec!["1"]);
    }

    #[test]
    fn shutdown_during_connect_stops_at_its_deadline() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        s.on_command(now, Command::Report(Properties::new(), None));
        let actions = s.on_command(
            now,
            Command::Shutdown {
                deadline: now + 2 * SECOND,
            },
        );
        assert!(actions.is_empty(), "{actions:?}");
        assert!(s.on_tick(now + SECOND).is_empty());
        assert_eq!(
            s.on_tick(now + 2 * SECOND),
            vec![Action::Drop, Action::Stop]
        );
        assert_eq!(s.phase(), &Phase::Stopped);
    }

    #[test]
    fn shutdown_with_nothing_to_deliver_stops_at_once() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        let actions = s.on_command(
            now,
            Command::Shutdown {
                deadline: now + 9 * SECOND,
            },
        );
        assert_eq!(actions, vec![Action::Drop, Action::Stop]);
    }

    #[test]
    fn a_connect_attempt_past_its_deadline_backs_off_then_tries_again() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        let actions = s.on_tick(now + 10 * SECOND);
        assert_eq!(actions, vec![Action::Drop]);
        let Phase::BackingOff { until } = *s.phase() else {
            panic!("{:?}", s.phase())
        };
        assert!(s.on_tick(until - SECOND / 10).is_empty());
        assert_eq!(s.on_tick(until), vec![Action::Connect]);
    }

    #[test]
    fn backoff_grows_with_each_failed_attempt_and_resets_on_connack() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        let mut delays = Vec::new();
        let mut at = now;
        for _ in 0..3 {
            s.on_lost(at, DisconnectReason::Lost("refused".into()), 1.0);
            let Phase::BackingOff { until } = *s.phase() else {
                panic!()
            };
            delays.push(until - at);
            at = until;
            s.on_tick(at);
        }
        assert!(delays[0] < delays[1] && delays[1] < delays[2], "{delays:?}");
        s.on_connack(at);
        s.on_lost(at, DisconnectReason::Lost("x".into()), 1.0);
        let Phase::BackingOff { until } = *s.phase() else {
            panic!()
        };
        assert_eq!(until - at, delays[0]);
    }

    #[test]
    fn shutdown_while_live_flushes_reported_and_outputs_then_disconnects_and_stops() {
        let (mut s, now) = live();
        let report = publishes(&s.on_command(
            now,
            Command::Report(json!({"a": 1}).as_object().unwrap().clone(), None),
        ));
        let out = publishes(&s.on_command(now, output(1)));
        let actions = s.on_command(
            now,
            Command::Shutdown {
                deadline: now + 5 * SECOND,
            },
        );
        assert!(!actions.contains(&Action::Disconnect));
        s.on_puback(now, out[0].0);
        s.on_puback(now, report[0].0);
        let topic = twin_response_topic(204, &rid_of(&report[0].1), Some(7));
        let actions = s.on_publish(now, &topic, b"");
        assert!(actions.contains(&Action::Disconnect), "{actions:?}");
        assert!(notices(&actions).contains(&Notice::ReportedAcked {
            latency: Duration::ZERO,
            version: Some(7)
        }));
        assert_eq!(
            s.on_disconnected(now),
            vec![
                Action::Notify(disconnected(DisconnectReason::Shutdown)),
                Action::Stop
            ]
        );
    }

    #[test]
    fn shutdown_while_live_disconnects_at_its_deadline_even_if_unacknowledged() {
        let (mut s, now) = live();
        s.on_command(now, output(1));
        s.on_command(
            now,
            Command::Shutdown {
                deadline: now + 5 * SECOND,
            },
        );
        assert!(s.on_tick(now + 4 * SECOND).is_empty());
        assert_eq!(s.on_tick(now + 5 * SECOND), vec![Action::Disconnect]);
    }

    #[test]
    fn dropping_every_handle_closes_after_the_grace() {
        let (mut s, now) = live();
        s.on_command(now, output(1));
        s.on_command(now, Command::Close);
        assert!(s.on_tick(now + 2 * SECOND).is_empty());
        assert_eq!(s.on_tick(now + 3 * SECOND), vec![Action::Disconnect]);
    }

    #[test]
    fn a_desired_patch_is_applied_in_order_and_a_gap_asks_for_the_full_twin() {
        let (mut s, now) = live();
        let actions = s.on_publish(now, &desired_patch_topic(2), br#"{"x":1,"$version":2}"#);
        let [Notice::Desired(update)] = <[Notice; 1]>::try_from(notices(&actions)).unwrap() else {
            panic!("{actions:?}")
        };
        assert_eq!((update.version, update.desired["x"].clone()), (2, json!(1)));
        let actions = s.on_publish(now, &desired_patch_topic(4), br#"{"x":3,"$version":4}"#);
        assert!(notices(&actions).is_empty());
        assert!(publishes(&actions)[0].1.starts_with("$iothub/twin/GET/"));
    }

    #[test]
    fn a_method_call_is_notified_and_its_answer_published() {
        let (mut s, now) = live();
        let actions = s.on_publish(now, &method_request_topic("ping", "7"), br#"{"a":1}"#);
        assert_eq!(
            notices(&actions),
            vec![Notice::Method(MethodRequest {
                name: "ping".into(),
                rid: "7".into(),
                payload: json!({"a": 1})
            })]
        );
        let actions = s.on_command(
            now,
            Command::MethodResponse {
                rid: "7".into(),
                status: 200,
                body: b"{}".to_vec(),
            },
        );
        assert_eq!(publishes(&actions)[0].1, "$iothub/methods/res/200/?$rid=7");
    }

    #[test]
    fn an_input_message_is_notified_with_its_name_and_properties() {
        let (mut s, now) = live();
        let topic = "devices/d1/modules/m1/inputs/input1/%24.ct=application%2Fjson&k=v";
        let actions = s.on_publish(now, topic, b"{}");
        let [Notice::Input { input, message }] =
            <[Notice; 1]>::try_from(notices(&actions)).unwrap()
        else {
            panic!("{actions:?}")
        };
        assert_eq!(input, "input1");
        assert_eq!(message.content_type(), Some("application/json"));
        assert_eq!(message.property("k"), Some("v"));
        assert_eq!(message.body(), b"{}");
    }

    #[test]
    fn a_reported_patch_waits_for_live_and_is_resent_after_a_drop() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        let patch = json!({"health": "ok"}).as_object().unwrap().clone();
        assert!(publishes(&s.on_command(now, Command::Report(patch, None))).is_empty());
        let actions = go_live(&mut s, now, json!({"$version": 1}));
        let sent = publishes(&actions);
        assert!(sent[0]
            .1
            .starts_with("$iothub/twin/PATCH/properties/reported/"));
        s.on_lost(now, DisconnectReason::Lost("x".into()), 0.0);
        assert!(!s.reported_idle());
        let Phase::BackingOff { until } = *s.phase() else {
            panic!()
        };
        s.on_tick(until);
        let again = publishes(&go_live(&mut s, until, json!({"$version": 1})));
        assert_eq!(again[0].2, sent[0].2);
    }

    fn report(s: &mut Session, now: Instant, patch: Value, receipt: ReceiptId) -> Vec<Action> {
        let patch = patch.as_object().unwrap().clone();
        s.on_command(now, Command::Report(patch, Some(receipt)))
    }

    fn settled(actions: &[Action]) -> Vec<(Vec<ReceiptId>, Settled)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Settle { receipts, outcome } => Some((receipts.clone(), *outcome)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn receipts_of_coalesced_reports_settle_together_with_the_new_reported_version() {
        let (mut s, now) = live();
        let first = publishes(&report(&mut s, now, json!({"a": 1}), 1));
        // Two more while the first is in flight: coalesced into the next patch.
        report(&mut s, now, json!({"b": 2}), 2);
        report(&mut s, now, json!({"c": 3}), 3);
        let answer = twin_response_topic(204, &rid_of(&first[0].1), Some(5));
        let actions = s.on_publish(now, &answer, b"");
        assert_eq!(settled(&actions), vec![(vec![1], Ok(Some(5)))]);
        let second = publishes(&actions);
        let answer = twin_response_topic(204, &rid_of(&second[0].1), Some(6));
        let actions = s.on_publish(now, &answer, b"");
        assert_eq!(settled(&actions), vec![(vec![2, 3], Ok(Some(6)))]);
    }

    #[test]
    fn a_receipt_survives_a_drop_and_settles_when_the_patch_lands_on_the_next_connection() {
        let (mut s, now) = live();
        report(&mut s, now, json!({"a": 1}), 9);
        s.on_lost(now, DisconnectReason::Lost("x".into()), 0.0);
        let Phase::BackingOff { until } = *s.phase() else {
            panic!()
        };
        s.on_tick(until);
        let sent = publishes(&go_live(&mut s, until, json!({"$version": 1})));
        let answer = twin_response_topic(204, &rid_of(&sent[0].1), Some(2));
        assert_eq!(
            settled(&s.on_publish(until, &answer, b"")),
            vec![(vec![9], Ok(Some(2)))]
        );
    }

    #[test]
    fn a_refused_report_settles_its_receipt_with_the_status() {
        let (mut s, now) = live();
        let sent = publishes(&report(&mut s, now, json!({"bad": 1}), 4));
        let answer = twin_response_topic(400, &rid_of(&sent[0].1), None);
        assert_eq!(
            settled(&s.on_publish(now, &answer, b"{}")),
            vec![(vec![4], Err(400))]
        );
    }

    #[test]
    fn a_throttled_report_keeps_its_receipt_until_the_retry_lands() {
        let (mut s, now) = live();
        let sent = publishes(&report(&mut s, now, json!({"a": 1}), 7));
        let answer = twin_response_topic(429, &rid_of(&sent[0].1), None);
        assert!(settled(&s.on_publish(now, &answer, b"")).is_empty());
        let retry = publishes(&s.on_tick(now + SECOND));
        let answer = twin_response_topic(204, &rid_of(&retry[0].1), Some(3));
        assert_eq!(
            settled(&s.on_publish(now + SECOND, &answer, b"")),
            vec![(vec![7], Ok(Some(3)))]
        );
    }

    /// A session in each connected phase, at `now`.
    fn in_every_connected_phase() -> Vec<(Session, Instant)> {
        let now = Instant::now();
        let mut subscribing = session();
        subscribing.start(now);
        subscribing.on_connack(now);
        let mut syncing = session();
        syncing.start(now);
        syncing.on_connack(now);
        syncing.on_suback(now, true, 0.5);
        let live = live_at(now);
        let mut renewing = live_at(now);
        renewing.on_command(now, output(1));
        renewing.on_tick(now + 100 * SECOND);
        let mut disconnecting = live_at(now);
        disconnecting.on_command(now, Command::Shutdown { deadline: now });
        vec![
            (subscribing, now),
            (syncing, now),
            (live, now),
            (renewing, now + 100 * SECOND),
            (disconnecting, now),
        ]
    }

    #[test]
    fn every_connected_phase_goes_to_backing_off_when_the_connection_is_lost() {
        for (mut s, now) in in_every_connected_phase() {
            let before = s.phase().clone();
            assert!(before.is_connected(), "{before:?}");
            if before == (Phase::Disconnecting { renewal: false }) {
                // Shutting down with nothing pending: the loss ends the session.
                let actions = s.on_lost(now, DisconnectReason::Lost("x".into()), 0.5);
                assert_eq!(actions.last(), Some(&Action::Stop), "{before:?}");
                continue;
            }
            let actions = s.on_lost(now, DisconnectReason::Lost("x".into()), 0.5);
            assert_eq!(
                notices(&actions),
                vec![disconnected(DisconnectReason::Lost("x".into()))],
                "{before:?}"
            );
            assert!(matches!(s.phase(), Phase::BackingOff { .. }), "{before:?}");
        }
    }

    #[test]
    fn a_token_due_while_subscribing_or_syncing_is_renewed_too() {
        for (mut s, now) in in_every_connected_phase().into_iter().take(2) {
            let before = s.phase().clone();
            s.on_tick(now + 100 * SECOND);
            // Subscribing has nothing unacknowledged; syncing drains its twin GET first.
            s.on_tick(now + 105 * SECOND);
            assert_eq!(
                s.phase(),
                &Phase::Disconnecting { renewal: true },
                "{before:?}"
            );
        }
    }

    #[test]
    fn shutdown_while_backing_off_stops_at_its_deadline_with_work_pending() {
        let now = Instant::now();
        let mut s = session();
        s.start(now);
        s.on_command(now, output(1));
        s.on_lost(now, DisconnectReason::Lost("x".into()), 1.0);
        s.on_command(
            now,
            Command::Shutdown {
                deadline: now + SECOND / 2,
            },
        );
        assert!(matches!(s.phase(), Phase::BackingOff { .. }));
        assert_eq!(s.on_tick(now + SECOND / 2), vec![Action::Stop]);
        assert_eq!(s.phase(), &Phase::Stopped);
        assert!(s.on_tick(now + SECOND).is_empty(), "stopped stays stopped");
    }

    #[test]
    fn late_inputs_for_another_phase_are_ignored() {
        let (mut s, now) = live();
        assert!(s.on_connack(now).is_empty());
        assert!(s.on_suback(now, false, 0.5).is_empty());
        assert!(s.on_disconnected(now).is_empty());
        assert!(matches!(s.phase(), Phase::Live { .. }));
    }
}
