//! Claims-based security on `$cbs`, as IoT Hub and Event Hubs take it: a request whose
//! application properties are `operation: put-token`, `type: servicebus.windows.net:sastoken` (or
//! `azure-devices.net:sastoken`) and `name: <audience>`, with the SAS token as an AMQP string
//! body, answered on the client's `$cbs` receiver with `status-code` 200 (`OK`) or 401 and
//! the request's message id as correlation id. A token is checked as the REST API checks one
//! ([`crate::hub::Hub::authenticate_token`]) for the path of its audience, and then authorises
//! the links whose address it covers, until it expires. A connection holds one token per audience
//! (a later put replaces it) for at most [`MAX_AUDIENCES`] audiences.
//!
//! A link lives as long as a token covers it ([`Lease`]), not just at its attach: "The client is
//! subsequently responsible for keeping track of token expiration. When a token expires, Service
//! Bus promptly drops all links on the connection to the respective entity. To prevent problem
//! occurring, the client can replace the token for the node with a new one at any time through the
//! virtual $cbs management node with the same put-token gesture" ("AMQP 1.0 in Azure Service Bus
//! and Event Hubs protocol guide", service-bus-amqp-protocol-guide.md, "Claims-based
//! authorization"). So a put-token that the hub takes, for a path covering a link and with the
//! permission it needs, extends that link (every link it covers, whichever token authorised it at
//! attach); one refused (a wrong signature, an expired token) or for another path or a policy
//! without the permission extends nothing. The link is closed once its second `se` is past (a token
//! is valid through its `se`, as [`SasToken::is_expired`] reads it), with the error of the door
//! that served it. IoT Hub itself is reported to cut late, 5 to 10 minutes after expiry
//! (Azure/azure-iot-sdk-c#163, Azure/azure-iot-sdk-java#304); the hub cuts at once, never later

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use edgetwin_wire::rest::Permission;
use edgetwin_wire::sas::SasToken;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorFrame};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use tokio::sync::mpsc;

use super::{address_segments, Connection};
use crate::hub::{grants, resource_covers, Caller};
use crate::ids;

/// A token a connection holds.
pub struct Grant {
    /// The audience it was put for (the put-token's `name`, else its `sr`), without scheme: a
    /// later token for the same audience replaces it.
    audience: String,
    /// Its decoded `sr` without scheme: `host[/path]`.
    resource: String,
    /// Who it authenticates.
    caller: Caller,
    /// When it expires (Unix seconds).
    expiry: u64,
}

/// A request or answer on `$cbs` / `$management`.
pub type NodeMessage = Message<Body<Value>>;

/// Answers kept for a receiver the client has not attached yet, per node: a client may send its
/// first request before the hub has taken the attach of the receiver it sent just before (uamqp
/// does), and that answer must wait for it, not be lost.
const WAITING_ANSWERS: usize = 16;

/// Where a node's answers go: the client's attached receiver, or a wait for it.
enum ReplyLink {
    /// The receiver is attached: answers go to the task serving it.
    Attached(mpsc::Sender<NodeMessage>),
    /// Not attached yet: at most [`WAITING_ANSWERS`] answers wait for it.
    Waiting(Vec<NodeMessage>),
}

/// The client's receivers of `$cbs` and `$management` answers in one session, by node.
#[derive(Default)]
pub struct ReplyLinks(Mutex<HashMap<String, ReplyLink>>);

impl ReplyLinks {
    /// Serves the client's receiver of `node`'s answers until the client detaches it: first the
    /// answers that waited for it, then each one as it comes.
    pub async fn serve(&self, node: &str, mut sender: Sender) {
        let (tx, mut rx) = mpsc::channel(16);
        let waiting = match self.lock().insert(node.to_owned(), ReplyLink::Attached(tx)) {
            Some(ReplyLink::Waiting(waiting)) => waiting,
            _ => Vec::new(),
        };
        let mut open = true;
        for answer in waiting {
            if open {
                open = send_answer(&mut sender, node, answer).await;
            }
        }
        while open {
            open = tokio::select! {
                answer = rx.recv() => match answer {
                    Some(answer) => send_answer(&mut sender, node, answer).await,
                    None => false,
                },
                _ = sender.on_detach() => false,
            };
        }
        self.lock().remove(node);
        let _ = sender.close().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ReplyLink>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an answer to the client's receiver of `node`, or keeps it until the client attaches
    /// one (dropped past [`WAITING_ANSWERS`]).
    pub async fn answer(&self, node: &str, answer: NodeMessage) {
        let link = {
            let mut links = self.lock();
            match links
                .entry(node.to_owned())
                .or_insert_with(|| ReplyLink::Waiting(Vec::new()))
            {
                ReplyLink::Attached(link) => link.clone(),
                ReplyLink::Waiting(waiting) if waiting.len() < WAITING_ANSWERS => {
                    waiting.push(answer);
                    return;
                }
                ReplyLink::Waiting(_) => {
                    tracing::info!(node, "AMQP answer dropped: no receiver attached");
                    return;
                }
            }
        };
        let _ = link.send(answer).await;
    }
}

/// Sends one answer on the client's receiver; whether the link is still usable.
async fn send_answer(sender: &mut Sender, node: &str, answer: NodeMessage) -> bool {
    match sender.send(answer).await {
        Ok(_) => true,
        Err(error) => {
            tracing::info!(node, %error, "AMQP answer not sent");
            false
        }
    }
}

/// The nodes the hub answers requests on.
pub const CBS: &str = "$cbs";
/// The management node.
pub const MANAGEMENT: &str = "$management";

/// The node a link address names, if it is `$cbs` or a `$management` (of the Event Hub or of
/// `messages/events`).
pub fn node_of(address: &str) -> Option<&'static str> {
    match address_segments(address).last().map(String::as_str) {
        Some(CBS) => Some(CBS),
        Some(MANAGEMENT) => Some(MANAGEMENT),
        _ => None,
    }
}

/// An application property of a request as text.
pub fn property<'a>(request: &'a NodeMessage, name: &str) -> Option<&'a str> {
    match request.application_properties.as_ref()?.0.get(name)? {
        SimpleValue::String(text) => Some(text),
        SimpleValue::Symbol(symbol) => Some(symbol.as_str()),
        _ => None,
    }
}

/// An answer with `status-code` and `status-description` and a body.
pub fn answer(status: i32, description: &str, body: Value) -> NodeMessage {
    let properties = ApplicationProperties::builder()
        .insert("status-code", SimpleValue::Int(status))
        .insert(
            "status-description",
            SimpleValue::String(description.into()),
        )
        .build();
    Message::builder()
        .application_properties(properties)
        .body(Body::Value(AmqpValue(body)))
        .build()
}

/// `answer` correlated to `request`: its message id (or, without one, its correlation id).
pub fn with_correlation(mut answer: NodeMessage, request: &NodeMessage) -> NodeMessage {
    let id: Option<MessageId> = request
        .properties
        .as_ref()
        .and_then(|p| p.message_id.clone().or_else(|| p.correlation_id.clone()));
    answer.properties = Some(Properties {
        correlation_id: id,
        ..Properties::default()
    });
    answer
}

/// Answers a `$cbs` request.
pub fn on_put_token(connection: &Connection, request: &NodeMessage) -> NodeMessage {
    if property(request, "operation") != Some("put-token") {
        return answer(
            400,
            "the $cbs node takes operation put-token only",
            Value::Null,
        );
    }
    let token = match &request.body {
        Body::Value(value) => match &value.0 {
            Value::String(token) => token.clone(),
            _ => return answer(400, "the token must be an AMQP string", Value::Null),
        },
        _ => return answer(400, "the token must be an AMQP value", Value::Null),
    };
    match checked_and_held(connection, &token, property(request, "name")) {
        // 200: Node `azure-iothub` (`common-amqp/amqp_cbs.js`) takes no other answer as
        // authenticated; the Event Hubs clients (`@azure/core-amqp`, pyamqp) take any 2xx
        Ok(()) => {
            connection.token_put();
            answer(200, "OK", Value::Null)
        }
        Err(refusal @ PutTokenRefusal::Invalid(_)) => {
            answer(401, &refusal.description(), Value::Null)
        }
        Err(refusal @ PutTokenRefusal::TooManyAudiences) => {
            answer(403, &refusal.description(), Value::Null)
        }
    }
}

/// Most audiences one connection holds tokens for: as many devices as the Java device SDK's
/// `MultiplexingClient` puts on one AMQPS connection (`MAX_MULTIPLEX_DEVICE_COUNT_AMQPS`, 1000,
/// each device a token of its own), so that no client grows the hub's memory without bound.
const MAX_AUDIENCES: usize = 1000;

/// Why a put-token is refused.
#[derive(Debug, PartialEq)]
enum PutTokenRefusal {
    /// The token is malformed, expired, wrongly signed or not for this hub (the description).
    Invalid(String),
    /// The connection holds [`MAX_AUDIENCES`] other audiences' tokens already.
    TooManyAudiences,
}

impl PutTokenRefusal {
    /// The description to answer with.
    fn description(self) -> String {
        match self {
            Self::Invalid(why) => why,
            Self::TooManyAudiences => format!(
                "the connection holds tokens for {MAX_AUDIENCES} audiences already; put the next \
                 for one of them, or open another connection"
            ),
        }
    }
}

/// The decoded `sr` (or audience) without its scheme: `sb://h/eh` is `h/eh`.
fn without_scheme(resource: &str) -> &str {
    resource
        .split_once("://")
        .map_or(resource, |(_, rest)| rest)
}

/// Checks a SAS token for `audience` (its own `sr` if none) and keeps it for the links it
/// covers; the error is the description to answer with.
pub fn put_token(
    connection: &Connection,
    token: &str,
    audience: Option<&str>,
) -> Result<(), String> {
    checked_and_held(connection, token, audience).map_err(PutTokenRefusal::description)
}

/// [`put_token`], with why it refused.
fn checked_and_held(
    connection: &Connection,
    token: &str,
    audience: Option<&str>,
) -> Result<(), PutTokenRefusal> {
    let invalid = PutTokenRefusal::Invalid;
    let mut token =
        SasToken::parse(token).map_err(|e| invalid(format!("the token is malformed: {e}")))?;
    // the raw `sr` keeps its scheme: the signature is checked against what the client signed
    token.resource = without_scheme(&token.resource).to_owned();
    let audience = without_scheme(audience.unwrap_or(&token.resource)).to_owned();
    let segments = address_segments(&format!("amqps://{audience}"));
    let caller = connection
        .state
        .hub
        .authenticate_token(&token, &segments, true)
        .map_err(|e| invalid(e.message))?;
    let mut held = connection.grants.lock().unwrap_or_else(|e| e.into_inner());
    hold(
        &mut held,
        Grant {
            audience,
            resource: token.resource.clone(),
            caller,
            expiry: token.expiry,
        },
        ids::now_unix(),
    )
}

/// Adds `grant` to the grants `held` at `now`, dropping the expired ones: it replaces the one
/// held for its audience, as Service Bus takes a put-token ("the client can replace the token
/// for the node with a new one at any time", the protocol guide's "Claims-based
/// authorization"), so that repeated puts (a `$management` request's `security_token`, a renewal)
/// never pile up; a new audience past [`MAX_AUDIENCES`] is refused.
fn hold(held: &mut Vec<Grant>, grant: Grant, now: u64) -> Result<(), PutTokenRefusal> {
    held.retain(|g| g.expiry >= now);
    if let Some(same) = held.iter_mut().find(|g| g.audience == grant.audience) {
        *same = grant;
        return Ok(());
    }
    if held.len() >= MAX_AUDIENCES {
        return Err(PutTokenRefusal::TooManyAudiences);
    }
    held.push(grant);
    Ok(())
}

impl Connection {
    /// Refuses a link to the path `segments` unless a token the connection holds covers it and
    /// its policy grants `permission` (IoT Hub: `ServiceConnect` to read events); else the
    /// link's [`Lease`], which ends when no token authorises it any more.
    pub fn authorise(
        &self,
        segments: &[String],
        permission: Permission,
    ) -> Result<Lease<'_>, AmqpErrorFrame> {
        let until = self.authorised_until(segments, permission)?;
        Ok(Lease {
            connection: self,
            segments: segments.to_vec(),
            permission,
            until,
        })
    }

    /// [`Connection::authorise`] for a link the client just attached (`what`, for the log): the
    /// link and its lease, or, refused, `None` once the link is closed with the refusal.
    pub async fn authorise_or_close<L: ServedLink>(
        &self,
        link: L,
        segments: &[String],
        permission: Permission,
        what: &str,
    ) -> Option<(L, Lease<'_>)> {
        match self.authorise(segments, permission) {
            Ok(lease) => Some((link, lease)),
            Err(error) => {
                tracing::info!(link = what, ?error, "AMQP link refused");
                link.refuse(error).await;
                None
            }
        }
    }

    /// [`authorised_until`] now, over the tokens the connection holds; the error is the one a
    /// link is refused with.
    fn authorised_until(
        &self,
        segments: &[String],
        permission: Permission,
    ) -> Result<u64, AmqpErrorFrame> {
        let held = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        authorised_until(&held, segments, permission, ids::now_unix()).map_err(|refusal| {
            let description = match refusal {
                Refusal::NotGranted => format!(
                    "Unauthorized: the token's policy does not grant {}",
                    permission.name()
                ),
                Refusal::NotCovered => format!(
                    "Unauthorized: no valid token covers '{}'; put one on $cbs first",
                    segments.join("/")
                ),
            };
            AmqpErrorFrame::new(AmqpError::UnauthorizedAccess, Some(description), None)
        })
    }
}

/// The hub's end of a link a client attached: a [`Sender`] (the client receives) or a
/// [`Receiver`] (the client sends).
pub trait ServedLink {
    /// Closes the link with `error` (a link already gone stays gone).
    fn refuse(self, error: AmqpErrorFrame) -> impl Future<Output = ()> + Send;
}

impl ServedLink for Sender {
    async fn refuse(self, error: AmqpErrorFrame) {
        let _ = self.close_with_error(error).await;
    }
}

impl ServedLink for Receiver {
    async fn refuse(self, error: AmqpErrorFrame) {
        let _ = self.close_with_error(error).await;
    }
}

/// Why no held token authorises a link.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// Tokens cover its path, but none of their policies grants the permission.
    NotGranted,
    /// No unexpired token covers its path.
    NotCovered,
}

/// Until when (Unix seconds, inclusive: a token is valid through its `se`) the `held` grants authorise a
/// link to the path `segments` that needs `permission`, at `now`: the latest expiry among the
/// unexpired grants that cover the path and whose policy grants the permission.
fn authorised_until(
    held: &[Grant],
    segments: &[String],
    permission: Permission,
    now: u64,
) -> Result<u64, Refusal> {
    let mut covering = held
        .iter()
        .filter(|g| g.expiry >= now && resource_covers(&g.resource, segments))
        .peekable();
    if covering.peek().is_none() {
        return Err(Refusal::NotCovered);
    }
    covering
        .filter(|g| matches!(&g.caller, Caller::Policy(policy) if grants(policy, permission)))
        .map(|g| g.expiry)
        .max()
        .ok_or(Refusal::NotGranted)
}

/// How long from `now_ms` (Unix milliseconds) until a token valid through second `until` has
/// expired.
fn time_to_lapse(until: u64, now_ms: i64) -> Duration {
    let lapse_ms = i64::try_from(until.saturating_add(1).saturating_mul(1000)).unwrap_or(i64::MAX);
    Duration::from_millis(u64::try_from(lapse_ms.saturating_sub(now_ms)).unwrap_or(0))
}

/// A link's authorisation: the path it serves, the permission it needs, and until when a token
/// the connection holds grants them; tokens put later for that path extend it.
pub struct Lease<'a> {
    /// The connection whose tokens authorise the link.
    connection: &'a Connection,
    /// The link's path.
    segments: Vec<String>,
    /// What the link needs.
    permission: Permission,
    /// Until when (Unix seconds, inclusive) the last check found it authorised.
    until: u64,
}

impl Lease<'_> {
    /// Whether a token still authorises the link now (looking again at the tokens held once the
    /// one found last has expired).
    pub fn holds(&mut self) -> bool {
        if ids::now_unix() <= self.until {
            return true;
        }
        match self
            .connection
            .authorised_until(&self.segments, self.permission)
        {
            Ok(until) => {
                self.until = until;
                true
            }
            Err(_) => false,
        }
    }

    /// Resolves once no token the connection holds authorises the link any more: when the
    /// latest covering one expires with no renewal put for the path.
    pub async fn lapsed(&mut self) {
        loop {
            tokio::time::sleep(time_to_lapse(self.until, ids::now_unix_ms())).await;
            if !self.holds() {
                return;
            }
        }
    }

    /// The link's path, for error descriptions.
    pub fn path(&self) -> String {
        self.segments.join("/")
    }

    /// What IoT Hub detaches one of its own links (not the Event Hub-compatible endpoint's)
    /// with when its token expired: `amqp:unauthorized-access`, "Token Invalid." (a remote
    /// detach the Java device SDK reports: Azure/azure-iot-sdk-java #180, and #365 where it
    /// comes every hour, the lifetime of the SDK's tokens then).
    pub fn token_invalid(&self) -> AmqpErrorFrame {
        AmqpErrorFrame::new(
            AmqpError::UnauthorizedAccess,
            Some(format!(
                "Token Invalid. (edgetwin: the token put on $cbs for '/{}' expired and no \
                 put-token renewed it)",
                self.path()
            )),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_their_node_by_the_addresses_last_segment() {
        assert_eq!(node_of("$cbs"), Some(CBS));
        assert_eq!(node_of("amqps://h/eh/$management"), Some(MANAGEMENT));
        assert_eq!(node_of("messages/events/$management"), Some(MANAGEMENT));
        assert_eq!(node_of("/messages/devicebound"), None);
    }

    #[tokio::test]
    async fn answers_wait_for_a_receiver_not_attached_yet_up_to_a_bound() {
        let links = ReplyLinks::default();
        for n in 0..=WAITING_ANSWERS {
            links
                .answer(CBS, answer(200, "OK", Value::String(n.to_string())))
                .await;
        }
        let kept = match links.lock().get(CBS) {
            Some(ReplyLink::Waiting(waiting)) => waiting.len(),
            _ => 0,
        };
        assert_eq!(kept, WAITING_ANSWERS, "the answers kept for the receiver");
    }

    #[test]
    fn schemes_come_off_resources() {
        assert_eq!(without_scheme("sb://h/eh"), "h/eh");
        assert_eq!(without_scheme("h/eh"), "h/eh");
    }

    fn grant(resource: &str, permissions: &[&str], expiry: u64) -> Grant {
        Grant {
            audience: resource.to_owned(),
            resource: resource.to_owned(),
            caller: Caller::Policy(crate::store::PolicyRecord {
                name: "p".into(),
                primary_key: edgetwin_wire::Secret::new(String::new()),
                secondary_key: edgetwin_wire::Secret::new(String::new()),
                permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            }),
            expiry,
        }
    }

    #[test]
    fn a_link_is_authorised_until_the_latest_covering_token_that_grants_its_permission() {
        let path = address_segments("eh/ConsumerGroups/$Default/Partitions/0");
        let read = Permission::ServiceConnect;
        let first = || grant("h/eh", &["ServiceConnect"], 100);
        assert_eq!(authorised_until(&[first()], &path, read, 50), Ok(100));
        // valid through its `se`, not a second more
        assert_eq!(authorised_until(&[first()], &path, read, 100), Ok(100));
        assert_eq!(
            authorised_until(&[first()], &path, read, 101),
            Err(Refusal::NotCovered)
        );
        let renewed = grant("h/eh", &["ServiceConnect"], 200);
        assert_eq!(
            authorised_until(&[first(), renewed], &path, read, 150),
            Ok(200),
            "a renewal for the path extends the link"
        );
        let other_path = grant("h/other", &["ServiceConnect"], 900);
        let no_permission = grant("h/eh", &["RegistryRead"], 900);
        assert_eq!(
            authorised_until(&[first(), other_path, no_permission], &path, read, 150),
            Err(Refusal::NotGranted),
            "a token for another path, or whose policy lacks the permission, extends nothing"
        );
    }

    #[test]
    fn a_token_replaces_the_one_held_for_its_audience_and_audiences_are_bounded() {
        let mut held = Vec::new();
        let audience = |n: usize| format!("h/devices/d{n}");
        for expiry in 100..200 {
            hold(&mut held, grant("h/eh", &["ServiceConnect"], expiry), 50).unwrap();
        }
        assert_eq!(
            held.len(),
            1,
            "a hundred puts for one audience hold one token"
        );
        assert_eq!(held[0].expiry, 199, "the latest put");

        for n in 1..MAX_AUDIENCES {
            hold(&mut held, grant(&audience(n), &[], 300), 50).unwrap();
        }
        assert_eq!(held.len(), MAX_AUDIENCES);
        assert_eq!(
            hold(&mut held, grant(&audience(MAX_AUDIENCES), &[], 300), 50),
            Err(PutTokenRefusal::TooManyAudiences)
        );
        assert_eq!(held.len(), MAX_AUDIENCES, "the refused token is not held");
        hold(&mut held, grant(&audience(1), &[], 400), 50).unwrap();
        assert_eq!(
            held.len(),
            MAX_AUDIENCES,
            "one held audience can still be renewed"
        );

        // past the first grant's expiry its place is free again
        hold(&mut held, grant(&audience(MAX_AUDIENCES), &[], 300), 250).unwrap();
        assert_eq!(held.len(), MAX_AUDIENCES);
        assert!(held.iter().all(|g| g.audience != "h/eh"));
    }

    #[test]
    fn a_lease_lapses_once_the_second_of_its_expiry_is_past() {
        assert_eq!(time_to_lapse(100, 99_000), Duration::from_secs(2));
        assert_eq!(time_to_lapse(100, 100_999), Duration::from_millis(1));
        assert_eq!(time_to_lapse(100, 101_000), Duration::ZERO);
        assert_eq!(time_to_lapse(100, 500_000), Duration::ZERO);
    }
}
