//! Claims-based security on `$cbs`, as IoT Hub and Event Hubs take it: a request whose
//! application properties are `operation: put-token`, `type: servicebus.windows.net:sastoken` (or
//! `azure-devices.net:sastoken`) and `name: <audience>`, with the SAS token as an AMQP string
//! body, answered on the client's `$cbs` receiver with `status-code` 200 (`OK`) or 401 and
//! the request's message id as correlation id. A token is checked as the REST API checks one
//! ([`crate::hub::Hub::authenticate_token`]) for the path of its audience, and then authorises
//! the links whose address it covers, until it expires.

use std::collections::HashMap;
use std::sync::Mutex;

use edgetwin_wire::rest::Permission;
use edgetwin_wire::sas::SasToken;
use fe2o3_amqp::link::Sender;
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
    match put_token(connection, &token, property(request, "name")) {
        // 200: Node `azure-iothub` (`common-amqp/amqp_cbs.js`) takes no other answer as
        // authenticated; the Event Hubs clients (`@azure/core-amqp`, pyamqp) take any 2xx
        Ok(()) => answer(200, "OK", Value::Null),
        Err(why) => answer(401, &why, Value::Null),
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
    let mut token = SasToken::parse(token).map_err(|e| format!("the token is malformed: {e}"))?;
    // the raw `sr` keeps its scheme: the signature is checked against what the client signed
    token.resource = without_scheme(&token.resource).to_owned();
    let audience = without_scheme(audience.unwrap_or(&token.resource)).to_owned();
    let segments = address_segments(&format!("amqps://{audience}"));
    let caller = connection
        .state
        .hub
        .authenticate_token(&token, &segments, true)
        .map_err(|e| e.message)?;
    let mut held = connection.grants.lock().unwrap_or_else(|e| e.into_inner());
    let now = ids::now_unix();
    held.retain(|grant| grant.expiry >= now);
    held.push(Grant {
        resource: token.resource.clone(),
        caller,
        expiry: token.expiry,
    });
    Ok(())
}

impl Connection {
    /// Refuses a link to the path `segments` unless a token the connection holds covers it and
    /// its policy grants `permission` (IoT Hub: `ServiceConnect` to read events).
    pub fn authorise(
        &self,
        segments: &[String],
        permission: Permission,
    ) -> Result<(), AmqpErrorFrame> {
        let now = ids::now_unix();
        let held = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let covering = held
            .iter()
            .filter(|g| g.expiry >= now && resource_covers(&g.resource, segments));
        let mut any = false;
        for grant in covering {
            any = true;
            if matches!(&grant.caller, Caller::Policy(policy) if grants(policy, permission)) {
                return Ok(());
            }
        }
        let description = if any {
            format!(
                "Unauthorized: the token's policy does not grant {}",
                permission.name()
            )
        } else {
            format!(
                "Unauthorized: no valid token covers '{}'; put one on $cbs first",
                segments.join("/")
            )
        };
        Err(AmqpErrorFrame::new(
            AmqpError::UnauthorizedAccess,
            Some(description),
            None,
        ))
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
}
