//! AMQP 1.0 over TLS (port 5671), on `fe2o3-amqp`'s acceptor: the service side IoT Hub serves
//! over AMQP. Today that is the Event Hub-compatible endpoint ([`eventhub`]): its partitions,
//! consumer group `$Default`, the `$management` node, and the redirect IoT Hub answers on
//! `messages/events`. Authentication is IoT Hub's: SASL ANONYMOUS then CBS `put-token` on `$cbs`
//! ([`cbs`]), or SASL PLAIN with a SAS token as password (`{policy}@sas.root.{hub}`). A connection
//! that puts no valid token within [`TOKEN_DEADLINE`] of its open is closed, as Service Bus closes
//! it.
//!
//! A door: depends on the hub and its own handle ([`State`]), never on another door.

mod c2d;
mod cbs;
mod eventhub;
mod feedback;
mod padding;
mod readers;
mod websocket;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAcceptor,
    SessionAcceptor, SupportedReceiverSettleModes, SupportedSenderSettleModes,
};
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::definitions::{
    AmqpError, Error as AmqpErrorFrame, ReceiverSettleMode, SenderSettleMode,
};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Array, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::hub::Hub;
use crate::listener::{self, Limits};

pub use eventhub::event_hub_name;
pub use websocket::{is_amqp_upgrade, upgrade as upgrade_websocket};

/// What AMQP connections reach: the hub, and where the Event Hub-compatible endpoint is.
#[derive(Clone)]
pub struct State {
    /// The hub's core.
    pub hub: Arc<Hub>,
    /// The AMQP port clients reach (5671 on IoT Hub), named in redirects.
    pub port: u16,
    /// The receivers on each partition of each consumer group, across connections.
    readers: Arc<readers::PartitionReaders>,
}

impl State {
    /// The door's state for `hub`, reached on AMQP port `port`, with no receiver yet.
    pub fn new(hub: Arc<Hub>, port: u16) -> Self {
        Self {
            hub,
            port,
            readers: Arc::default(),
        }
    }
}

/// Most links a session may attach at once.
const MAX_LINKS: u32 = 1024;

/// How long a client has to finish the AMQP open, once its transport (TLS, or a WebSocket
/// inside TLS) is up.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a connection has, from its open, to put a valid token on `$cbs` (unless SASL PLAIN
/// authenticated it): Service Bus's, which IoT Hub's AMQP endpoint is built on, "A valid token
/// must be set successfully using a *put-token* request for some entity node within 20 seconds
/// after the connection has been established, otherwise the connection is unilaterally dropped by
/// Service Bus" ("AMQP 1.0 in Azure Service Bus and Event Hubs protocol guide",
/// service-bus-amqp-protocol-guide.md, "Claims-based authorization").
const TOKEN_DEADLINE: Duration = Duration::from_secs(20);

/// Where a connection stands against its token deadline.
#[derive(Debug, PartialEq)]
enum TokenDeadline {
    /// A valid token came in time: the connection stays, whatever its tokens do later.
    Met,
    /// None yet: look again after this long.
    Pending(Duration),
    /// None came in time: the connection is closed.
    Missed,
}

/// Where a connection opened at `opened` stands at `now`, a valid token first put at
/// `first_token` (if ever), `limit` after the open the deadline (a token put later is too late,
/// even if the hub looks late).
fn token_deadline(
    opened: Instant,
    first_token: Option<Instant>,
    now: Instant,
    limit: Duration,
) -> TokenDeadline {
    let deadline = opened + limit;
    match first_token {
        Some(at) if at <= deadline => TokenDeadline::Met,
        _ if now < deadline => TokenDeadline::Pending(deadline - now),
        _ => TokenDeadline::Missed,
    }
}

/// Accepts AMQP connections until `shutdown` turns true, each in its own task, within `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    state: State,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    listener::serve_tls(
        listener,
        "AMQP",
        tls,
        limits,
        shutdown,
        move |stream, peer, admission| {
            serve_stream(stream, peer.to_string(), state.clone(), move || {
                admission.established()
            })
        },
    )
    .await;
}

/// Serves one AMQP connection over `stream` (TLS on 5671, or a WebSocket on the HTTPS port):
/// its open (with SASL when the client's protocol header asks for it), then its sessions until
/// it ends. `opened` runs once the connection is open.
async fn serve_stream<S>(stream: S, peer: String, state: State, opened: impl FnOnce())
where
    S: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let connection = Arc::new(Connection::new(state));
    let open = tokio::time::timeout(OPEN_TIMEOUT, async {
        let mut stream = stream;
        // The client's protocol header says whether SASL comes first: the Event Hubs SDKs and
        // uamqp send SASL's; Node `azure-iothub` (rhea) opens AMQP at once and authenticates
        // with CBS only, which IoT Hub takes too.
        let mut header = [0u8; 8];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("no AMQP protocol header: {e}"))?;
        let stream = padding::Padded::new(Replayed {
            header,
            replayed: 0,
            inner: stream,
        });
        let builder = ConnectionAcceptor::builder().container_id(connection.state.hub.host_name());
        if header[4] == SASL_PROTOCOL_ID {
            let sasl = Sasl {
                connection: connection.clone(),
            };
            builder.sasl_acceptor(sasl).build().accept(stream).await
        } else {
            builder.build().accept(stream).await
        }
        .map_err(|e| format!("AMQP open failed: {e}"))
    })
    .await;
    let mut amqp = match open {
        Ok(Ok(amqp)) => amqp,
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "AMQP connection refused");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "AMQP open timed out");
            return;
        }
    };
    opened();
    let opened_at = Instant::now();
    // Sessions (and their links) end with this task: dropping the set aborts them, dropping the
    // connection handle closes the connection.
    let mut sessions = JoinSet::new();
    // handle-max below its default, so that it is written out: pyamqp compares against it
    let session_acceptor = SessionAcceptor::builder().handle_max(MAX_LINKS).build();
    loop {
        let session = tokio::select! {
            session = session_acceptor.accept(&mut amqp) => match session {
                Ok(session) => session,
                Err(_) => break,
            },
            () = connection.token_missed(opened_at) => {
                tracing::info!(%peer, "AMQP connection closed: no valid token put in time");
                let _ = amqp.close_with_error(no_token_in_time()).await;
                break;
            }
        };
        while sessions.try_join_next().is_some() {}
        sessions.spawn(serve_session(session, connection.clone()));
    }
    tracing::debug!(%peer, "AMQP connection ended");
}

/// What a connection that put no valid token within [`TOKEN_DEADLINE`] is closed with. Microsoft
/// documents the drop, not its error: `amqp:unauthorized-access` is the hub's choice.
fn no_token_in_time() -> AmqpErrorFrame {
    AmqpErrorFrame::new(
        AmqpError::UnauthorizedAccess,
        Some(format!(
            "no valid token was put on $cbs within {} seconds of the connection's open \
             (edgetwin, as Service Bus drops such a connection)",
            TOKEN_DEADLINE.as_secs()
        )),
        None,
    )
}

/// The protocol id of SASL in an AMQP protocol header (`AMQP 3 1 0 0`).
const SASL_PROTOCOL_ID: u8 = 3;

/// A stream whose first bytes, already read to look at them, are read again.
#[derive(Debug)]
struct Replayed<S> {
    /// The bytes read first.
    header: [u8; 8],
    /// How many of them were read again.
    replayed: usize,
    /// The stream.
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.replayed < self.header.len() {
            let rest = &self.header[self.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replayed += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts the links of a session, each served in its own task until the session ends.
async fn serve_session(mut session: ListenerSessionHandle, connection: Arc<Connection>) {
    // Event Hubs sends events settled; so do `$cbs` and `$management` their answers.
    let acceptor = LinkAcceptor::builder()
        .supported_sender_settle_modes(SupportedSenderSettleModes::Settled)
        .fallback_sender_settle_mode(SenderSettleMode::Settled)
        .build();
    // A service's cloud-to-device sender waits for each message's outcome (unsettled, as the
    // SDKs send); the hub settles first (uamqp asks for `second`, and would wait forever for a
    // settlement the hub waits for too).
    let devicebound_acceptor = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .build();
    // Feedback goes out unsettled, for the service to settle; the receiver settles first.
    let feedback_acceptor = LinkAcceptor::builder()
        .fallback_sender_settle_mode(SenderSettleMode::Unsettled)
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .build();
    let nodes = Arc::new(cbs::ReplyLinks::default());
    let mut links = JoinSet::new();
    while let Some(attach) = session.next_incoming_attach().await {
        while links.try_join_next().is_some() {}
        let wanted = eventhub::Wanted {
            address: link_address(&attach),
            selector: selector(&attach),
            receiver_name: receiver_name(&attach),
            epoch: epoch(&attach),
        };
        let segments = address_segments(&wanted.address);
        let devicebound = c2d::is_devicebound(&segments);
        let feedback = feedback::is_feedback(&segments);
        tracing::debug!(address = %wanted.address, devicebound, "AMQP link attaching");
        let accepted = if devicebound {
            devicebound_acceptor
                .accept_incoming_attach(attach, &mut session)
                .await
        } else if feedback {
            feedback_acceptor
                .accept_incoming_attach(attach, &mut session)
                .await
        } else {
            acceptor.accept_incoming_attach(attach, &mut session).await
        };
        let endpoint = match accepted {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::info!(address = %wanted.address, %error, "AMQP link refused");
                continue;
            }
        };
        let connection = connection.clone();
        let nodes = nodes.clone();
        links.spawn(async move {
            match endpoint {
                LinkEndpoint::Sender(sender) if feedback => {
                    feedback::serve_receiver_link(sender, &segments, &connection).await
                }
                LinkEndpoint::Sender(sender) => {
                    eventhub::serve_sender(sender, &wanted, &connection, &nodes).await
                }
                LinkEndpoint::Receiver(receiver) if devicebound => {
                    c2d::serve_sender_link(receiver, &segments, &connection).await
                }
                LinkEndpoint::Receiver(receiver) => {
                    serve_requests(receiver, &wanted.address, &connection, &nodes).await
                }
            }
        });
    }
}

/// Serves a link the client sends on: requests to `$cbs` or `$management`; any other address is
/// refused with `amqp:not-found`.
pub async fn serve_requests(
    mut receiver: Receiver,
    address: &str,
    connection: &Connection,
    replies: &cbs::ReplyLinks,
) {
    let Some(node) = cbs::node_of(address) else {
        let error = AmqpErrorFrame::new(
            AmqpError::NotFound,
            Some(format!("the hub takes no messages on '{address}'")),
            None,
        );
        let _ = receiver.close_with_error(error).await;
        return;
    };
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::debug!(node, %error, "AMQP request link ended");
                break;
            }
        };
        let _ = receiver.accept(&delivery).await;
        let request = delivery.into_message();
        let answer = match node {
            cbs::CBS => cbs::on_put_token(connection, &request),
            _ => eventhub::on_management(connection, &request),
        };
        let answer = cbs::with_correlation(answer, &request);
        replies.answer(node, answer).await;
    }
    let _ = receiver.close().await;
}

/// The address a link attaches to: its source's when the client receives (the hub sends), its
/// target's when the client sends.
fn link_address(attach: &Attach) -> String {
    use fe2o3_amqp::types::definitions::Role;
    use fe2o3_amqp::types::messaging::TargetArchetype;
    match attach.role {
        Role::Receiver => attach
            .source
            .as_ref()
            .and_then(|s| s.address.clone())
            .unwrap_or_default(),
        Role::Sender => match attach.target.as_deref() {
            Some(TargetArchetype::Target(target)) => target.address.clone().unwrap_or_default(),
            _ => String::new(),
        },
    }
}

/// The text of a receiver's selector filter (Event Hubs' `apache.org:selector-filter:string`,
/// described by that symbol or by its code 0x468C00000004, with a string or, from some clients,
/// binary value).
fn selector(attach: &Attach) -> Option<String> {
    let filters = attach.source.as_ref()?.filter.as_ref()?;
    filters.iter().find_map(|(_, filter)| {
        let value = match filter {
            Value::Described(described) => &described.value,
            other => other,
        };
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Binary(bytes) => String::from_utf8(bytes.to_vec()).ok(),
            _ => None,
        }
        .filter(|text| text.contains("amqp.annotation.x-opt-"))
    })
}

/// Property `name` of an attach, if it has it.
fn attach_property<'a>(attach: &'a Attach, name: &str) -> Option<&'a Value> {
    attach.properties.as_ref()?.get(&Symbol::from(name))
}

/// The name a receiver gives itself in its attach's `com.microsoft:receiver-name` property
/// (Event Hubs clients set it; Event Hubs names receivers by it in errors).
fn receiver_name(attach: &Attach) -> Option<String> {
    match attach_property(attach, "com.microsoft:receiver-name")? {
        Value::String(name) => Some(name.clone()),
        _ => None,
    }
}

/// The epoch (owner level) a receiver claims in its attach's `com.microsoft:epoch` property.
fn epoch(attach: &Attach) -> Option<i64> {
    match attach_property(attach, "com.microsoft:epoch")? {
        Value::Long(epoch) => Some(*epoch),
        Value::Int(epoch) => Some(i64::from(*epoch)),
        Value::Uint(epoch) => Some(i64::from(*epoch)),
        Value::Ulong(epoch) => i64::try_from(*epoch).ok(),
        _ => None,
    }
}

/// The path segments of a link address, without `amqps://host[:port]/`: `$cbs` is `["$cbs"]`,
/// `amqps://hub/messages/events/$management` is `["messages", "events", "$management"]`.
pub fn address_segments(address: &str) -> Vec<String> {
    let path = match address.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => address,
    };
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One AMQP connection: what its tokens authorise.
pub struct Connection {
    /// The door's handle.
    state: State,
    /// Tokens put on `$cbs` (or given as SASL PLAIN password, or as a `$management` request's
    /// `security_token`), one per audience.
    grants: Mutex<Vec<cbs::Grant>>,
    /// When the first valid token was put on `$cbs` (or given as SASL PLAIN password).
    first_token: OnceLock<Instant>,
}

impl Connection {
    fn new(state: State) -> Self {
        Self {
            state,
            grants: Mutex::default(),
            first_token: OnceLock::new(),
        }
    }

    /// Notes that a valid token was put on `$cbs` (or given as SASL PLAIN password).
    fn token_put(&self) {
        let _ = self.first_token.set(Instant::now());
    }

    /// Resolves once the connection, opened at `opened`, has missed its [`TOKEN_DEADLINE`]; never
    /// if it met it.
    async fn token_missed(&self, opened: Instant) {
        loop {
            let now = Instant::now();
            match token_deadline(opened, self.first_token.get().copied(), now, TOKEN_DEADLINE) {
                TokenDeadline::Met => std::future::pending().await,
                TokenDeadline::Pending(wait) => tokio::time::sleep(wait).await,
                TokenDeadline::Missed => return,
            }
        }
    }
}

/// IoT Hub's SASL: ANONYMOUS or MSSBCBS (the client then puts tokens on `$cbs`), or PLAIN with
/// `{policy}@sas.root.{hub}` and a SAS token as password, as the older service SDKs and the
/// Azure CLI's uamqp connections authenticate.
#[derive(Clone)]
struct Sasl {
    connection: Arc<Connection>,
}

impl SaslAcceptor for Sasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from("MSSBCBS"),
            Symbol::from("ANONYMOUS"),
            Symbol::from("PLAIN"),
        ])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let code = match init.mechanism.as_str() {
            // MSSBCBS: Service Bus's "the client authenticates with CBS", which uamqp's token
            // authentication asks for (the Azure CLI's monitor-events); ANONYMOUS alike
            "MSSBCBS" | "ANONYMOUS" => SaslCode::Ok,
            "PLAIN" => {
                let response = init.initial_response.map(|b| b.into_vec());
                let mut fields = response.as_deref().unwrap_or_default().split(|b| *b == 0);
                let _authzid = fields.next();
                let (_user, password) = (fields.next(), fields.next());
                match password.map(String::from_utf8_lossy) {
                    Some(token) if cbs::put_token(&self.connection, &token, None).is_ok() => {
                        self.connection.token_put();
                        SaslCode::Ok
                    }
                    _ => SaslCode::Auth,
                }
            }
            _ => SaslCode::Auth,
        };
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Auth,
            additional_data: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_must_put_a_valid_token_within_the_deadline_of_its_open() {
        let opened = Instant::now();
        let limit = Duration::from_secs(20);
        let at = |secs: u64| opened + Duration::from_secs(secs);
        assert_eq!(
            token_deadline(opened, None, at(5), limit),
            TokenDeadline::Pending(Duration::from_secs(15))
        );
        assert_eq!(
            token_deadline(opened, None, at(20), limit),
            TokenDeadline::Missed
        );
        assert_eq!(
            token_deadline(opened, Some(at(20)), at(60), limit),
            TokenDeadline::Met,
            "a token put at the deadline is in time, for good"
        );
        assert_eq!(
            token_deadline(opened, Some(at(21)), at(21), limit),
            TokenDeadline::Missed,
            "a token put after the deadline is too late, even before the hub looks"
        );
        // SASL PLAIN's token comes before the open
        assert_eq!(
            token_deadline(at(1), Some(opened), at(1), limit),
            TokenDeadline::Met
        );
    }

    #[test]
    fn addresses_lose_their_scheme_and_host() {
        assert_eq!(address_segments("$cbs"), ["$cbs"]);
        assert_eq!(
            address_segments("amqps://h:5671/messages/events/$management"),
            ["messages", "events", "$management"]
        );
        assert_eq!(
            address_segments("eh/ConsumerGroups/$Default/Partitions/1"),
            ["eh", "ConsumerGroups", "$Default", "Partitions", "1"]
        );
        assert!(address_segments("amqps://h").is_empty());
    }
}
