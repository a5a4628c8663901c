//! An AMQP connection to IoT Hub as the service SDKs open one: TLS on 5671 with the CA the other
//! commands trust (`--ca-file`, `EDGETWIN_CA_FILE`, `REQUESTS_CA_BUNDLE`, the system's roots),
//! SASL ANONYMOUS, then a policy SAS token put on `$cbs` (Python `azure-iot-hub`'s
//! `iothub_amqp_client.py`: `sr` = the hub's host name, `skn` = the policy, audience the host,
//! type `servicebus.windows.net:sastoken`). The only file of [`crate::messaging`] that opens
//! sockets.

use std::time::Duration;

use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::{sas, Secret};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Session};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::error::MessagingError;
use crate::provision::cli::HubArgs;
use crate::provision::settings;

/// IoT Hub's AMQP over TLS port.
pub const IOT_HUB_AMQP_PORT: u16 = 5671;

/// How long connecting, the TLS handshake, the AMQP open and one CBS answer may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Lifetime of the tokens put on `$cbs` (a long-lived connection puts a new one every
/// [`RENEW_EVERY`]).
const TOKEN_TTL_SECS: u64 = 3600;

/// What the AMQP commands need from the flags: the hub, its policy key and the TLS trust.
pub struct Hub {
    /// The host name (without the REST port a local hub's `HostName` may carry).
    pub host: String,
    /// The AMQP port.
    pub port: u16,
    /// The shared access policy.
    policy: String,
    /// Its key; never printed.
    key: Secret,
    /// Where the connection string came from, for messages.
    pub origin: &'static str,
    /// TLS trusting the CA of the flags.
    tls: TlsConnector,
}

impl Hub {
    /// Resolves the connection string and the CA as `edgetwin provision` does, and checks the
    /// key before anything is dialled.
    pub fn from_args(args: &HubArgs, port: u16) -> Result<Hub, MessagingError> {
        let dotenv = std::fs::read_to_string(".env").ok();
        let env = |name: &str| std::env::var(name).ok();
        let (connection_string, source) = settings::resolve_connection_string(
            args.connection_string.as_deref(),
            &env,
            dotenv.as_deref(),
        )?;
        let origin = source.describe();
        let ConnectionString {
            host_name,
            shared_access_key_name: Some(policy),
            shared_access_key: Some(key),
            ..
        } = connection_string
        else {
            return Err(MessagingError::Input(format!(
                "the connection string from {origin} has no SharedAccessKeyName/SharedAccessKey"
            )));
        };
        if sas::decode_key(key.expose()).is_err() {
            return Err(MessagingError::Input(format!(
                "the SharedAccessKey of the connection string from {origin} is not valid base64"
            )));
        }
        let ca_file = settings::resolve_ca_file_and_origin(args.ca_file.clone(), &env);
        if let Some((path, origin)) = &ca_file {
            if let Err(source) = std::fs::File::open(path) {
                return Err(crate::provision::ProvisionError::CaFile {
                    origin,
                    path: path.clone(),
                    source,
                }
                .into());
            }
        }
        let options = edgetwin_service::ClientOptions {
            ca_file: ca_file.map(|(path, _)| path),
            ..edgetwin_service::ClientOptions::default()
        };
        let tls = edgetwin_service::client::tls_connector(&options)
            .map_err(|e| MessagingError::Settings(e.into()))?;
        Ok(Hub {
            host: settings::device_host_name(&host_name).to_owned(),
            port,
            policy,
            key,
            origin,
            tls,
        })
    }

    /// A policy token for `resource` (an `sr`), valid [`TOKEN_TTL_SECS`].
    fn token(&self, resource: &str) -> Result<Secret, MessagingError> {
        let expiry = super::now_ms().div_euclid(1000) as u64 + TOKEN_TTL_SECS;
        sas::generate_token(&self.key, resource, expiry, Some(&self.policy))
            .map_err(|e| MessagingError::Input(format!("cannot sign a token: {e}")))
    }

    /// An authenticated AMQP session with `host:port`, its token for `resource` put on `$cbs`.
    pub async fn open(
        &self,
        host: &str,
        port: u16,
        resource: &str,
    ) -> Result<Amqp, MessagingError> {
        let mut amqp = Amqp::open(host, port, &self.tls, resource).await?;
        self.renew(&mut amqp).await?;
        Ok(amqp)
    }

    /// Puts a new token on `amqp`'s `$cbs` before the one it holds expires (IoT Hub and Event
    /// Hubs close links whose token has expired; the SDKs renew theirs the same way).
    pub async fn renew(&self, amqp: &mut Amqp) -> Result<(), MessagingError> {
        let resource = amqp.resource.clone();
        amqp.put_token(&resource, &self.token(&resource)?, self.origin)
            .await
    }
}

/// How often a long-lived connection puts a new token: at 80% of its lifetime.
pub const RENEW_EVERY: Duration = Duration::from_secs(TOKEN_TTL_SECS * 4 / 5);

/// An open connection and its one session.
pub struct Amqp {
    /// host:port, for messages.
    pub address: String,
    /// The connection.
    connection: ConnectionHandle<()>,
    /// The session links attach to.
    pub session: SessionHandle<()>,
    /// The `sr` of its tokens.
    resource: String,
}

/// `future` within [`STEP_TIMEOUT`], else a network error saying what timed out.
async fn within<T>(
    address: &str,
    what: &str,
    future: impl std::future::Future<Output = Result<T, MessagingError>>,
) -> Result<T, MessagingError> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| {
            Err(MessagingError::Network {
                address: address.to_owned(),
                detail: format!("{what} timed out after {} s", STEP_TIMEOUT.as_secs()),
            })
        })
}

impl Amqp {
    /// TCP, TLS (server name `host`), AMQP open with SASL ANONYMOUS, one session.
    async fn open(
        host: &str,
        port: u16,
        tls: &TlsConnector,
        resource: &str,
    ) -> Result<Amqp, MessagingError> {
        let address = format!("{host}:{port}");
        let network = |detail: String| MessagingError::Network {
            address: address.clone(),
            detail,
        };
        let tcp = within(&address, "connecting", async {
            TcpStream::connect((host, port)).await.map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    " (is the hub running, and is its AMQP port --amqp-port?)"
                } else {
                    ""
                };
                network(format!("{e}{hint}"))
            })
        })
        .await?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| MessagingError::Input(format!("'{host}' is not a valid host name")))?;
        let stream = within(&address, "the TLS handshake", async {
            tls.connect(name, tcp)
                .await
                .map_err(|e| tls_failed(&address, &e))
        })
        .await?;
        let container = format!("edgetwin-{:016x}", rand::random::<u64>());
        let mut connection = within(&address, "the AMQP open", async {
            Connection::builder()
                .container_id(container)
                .hostname(host)
                .sasl_profile(SaslProfile::Anonymous)
                .open_with_stream(stream)
                .await
                .map_err(|e| network(format!("AMQP open failed: {e}")))
        })
        .await?;
        let session = match Session::begin(&mut connection).await {
            Ok(session) => session,
            Err(e) => {
                let _ = connection.close().await;
                return Err(network(format!("AMQP session refused: {e}")));
            }
        };
        Ok(Amqp {
            address,
            connection,
            session,
            resource: resource.to_owned(),
        })
    }

    /// Sends one request to `node` (`$cbs`, `$management`) with `properties` and `body`, and
    /// returns the answer's `status-code`, `status-description` and body, as the CBS and Event
    /// Hubs management nodes answer on the client's receiver of `node`.
    pub async fn request(
        &mut self,
        node: &str,
        properties: &[(&str, &str)],
        body: Value,
    ) -> Result<(i64, String, Value), MessagingError> {
        let operation = format!("the {node} request to {}", self.address);
        let protocol = |detail: String| MessagingError::Protocol {
            operation: operation.clone(),
            detail,
        };
        let reply_to = format!("edgetwin-{}", node.trim_start_matches('$'));
        let mut sender = Sender::attach(&mut self.session, format!("{reply_to}-sender"), node)
            .await
            .map_err(|e| protocol(format!("sender refused: {e}")))?;
        let mut receiver = Receiver::builder()
            .name(format!("{reply_to}-receiver"))
            .source(node)
            .target(reply_to.as_str())
            .attach(&mut self.session)
            .await
            .map_err(|e| protocol(format!("receiver refused: {e}")))?;
        let mut application = ApplicationProperties::builder();
        for (key, value) in properties {
            application = application.insert(*key, SimpleValue::String((*value).to_owned()));
        }
        let request = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(format!("{reply_to}-request"))),
                reply_to: Some(reply_to.clone()),
                ..Properties::default()
            })
            .application_properties(application.build())
            .body(Body::Value(AmqpValue(body)))
            .build();
        let address = self.address.clone();
        let answer = within(&address, &format!("the {node} answer"), async {
            sender
                .send(request)
                .await
                .map_err(|e| protocol(format!("not sent: {e}")))?;
            let delivery = receiver
                .recv::<Body<Value>>()
                .await
                .map_err(|e| protocol(format!("no answer: {e}")))?;
            let _ = receiver.accept(&delivery).await;
            Ok(delivery.into_message())
        })
        .await?;
        let _ = sender.close().await;
        let _ = receiver.close().await;
        let property = |name: &str| {
            answer
                .application_properties
                .as_ref()
                .and_then(|p| p.0.get(name).cloned())
        };
        let status = match property("status-code") {
            Some(SimpleValue::Int(n)) => i64::from(n),
            Some(SimpleValue::Long(n)) => n,
            Some(SimpleValue::Uint(n)) => i64::from(n),
            other => return Err(protocol(format!("answered with status {other:?}"))),
        };
        let description = match property("status-description") {
            Some(SimpleValue::String(text)) => text,
            _ => String::new(),
        };
        let body = match answer.body {
            Body::Value(AmqpValue(value)) => value,
            _ => Value::Null,
        };
        Ok((status, description, body))
    }

    /// Puts `token` for `audience` on `$cbs`: 200 or 202 is accepted; anything else is the hub
    /// refusing the connection string from `origin`.
    async fn put_token(
        &mut self,
        audience: &str,
        token: &Secret,
        origin: &'static str,
    ) -> Result<(), MessagingError> {
        let properties = [
            ("operation", "put-token"),
            ("type", "servicebus.windows.net:sastoken"),
            ("name", audience),
        ];
        let token = Value::String(token.expose().to_owned());
        match self.request("$cbs", &properties, token).await? {
            (200 | 202, _, _) => Ok(()),
            (status, description, _) => Err(MessagingError::Unauthorized {
                origin,
                status,
                description,
            }),
        }
    }

    /// Closes the connection (its session and links with it), waiting a little for the hub.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.session.end().await;
            let _ = self.connection.close().await;
        })
        .await;
    }
}

/// A failed TLS handshake: TLS refusing the hub (an untrusted certificate names the flag)
/// will happen again; the connection dropping during the handshake (a hub restarting) may not.
fn tls_failed(address: &str, error: &std::io::Error) -> MessagingError {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let detail = match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            "the hub's certificate is not trusted ({why:?}): pass the CA that signs it with \
             --ca-file or EDGETWIN_CA_FILE (`edgetwin hub` prints its CA certificate's path)"
        ),
        Some(other) => other.to_string(),
        None => {
            return MessagingError::Network {
                address: address.to_owned(),
                detail: format!("TLS handshake: {error}"),
            }
        }
    };
    MessagingError::Tls {
        address: address.to_owned(),
        detail,
    }
}
