//! [`ServiceClient`]: one hub and one shared access policy; HTTPS connections (one kept alive
//! and re-opened when the hub closes it, or one per request), policy SAS tokens renewed before
//! they expire, retries per [`RetryPolicy`], and IoT Hub error envelopes decoded into
//! [`ServiceError`]s. The only file of the crate that touches the network.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::rest::{parse_error_body, ERROR_CODE_HEADER};
use edgetwin_wire::{sas, Secret};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, NetworkFailure, NetworkFailureKind, ServiceError};
use crate::request::{Request, Response};
use crate::retry::{parse_retry_after, Outcome, RetryPolicy};

/// Largest response body read (a list of 1000 devices fits many times over).
const MAX_RESPONSE: usize = 32 * 1024 * 1024;

/// Lifetime of a service SAS token, as the Python SDK uses.
pub const TOKEN_TTL_SECS: u64 = 3600;

/// True when a token expiring at `expiry` should be replaced at `now`: after 80% of its lifetime
/// (so a long run never sends an expired token), or once it is past.
pub fn needs_renewal(expiry: u64, now: u64, ttl: u64) -> bool {
    now + ttl / 5 >= expiry
}

/// How the client reaches the hub.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// PEM file with CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Whether the system's CA certificates are trusted too (off for a local hub's tests,
    /// which trust its CA only).
    pub system_roots: bool,
    /// Retry policy for every request.
    pub retry: RetryPolicy,
    /// Time limit of one attempt (connect, send, read).
    pub attempt_timeout: Duration,
    /// Whether one connection is kept between requests (else each request opens its own).
    pub keep_alive: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ca_file: None,
            system_roots: true,
            retry: RetryPolicy::default(),
            attempt_timeout: Duration::from_secs(60),
            keep_alive: true,
        }
    }
}

impl ClientOptions {
    /// Trusting only the CA certificates of `ca_file`, without retries: how tests reach a
    /// local hub, seeing every answer as it came.
    pub fn trusting_only(ca_file: impl Into<PathBuf>) -> Self {
        ClientOptions {
            ca_file: Some(ca_file.into()),
            system_roots: false,
            retry: RetryPolicy::none(),
            ..ClientOptions::default()
        }
    }
}

/// A service (shared access policy) client for one hub.
pub struct ServiceClient {
    /// `HostName` from the connection string, maybe with a port; used in `Host` and `sr`.
    host: String,
    /// The TLS server name (host without port).
    server_name: ServerName<'static>,
    /// TCP port (443 unless the host name says otherwise).
    port: u16,
    /// Shared access policy name (`skn`).
    policy: String,
    /// The policy key; never logged.
    key: Secret,
    /// TLS with the trusted roots.
    tls: TlsConnector,
    /// The current token and its expiry (unix seconds).
    token: Mutex<Option<(Secret, u64)>>,
    /// The connection kept between requests (taken out while a request uses it).
    connection: Mutex<Option<SendRequest<Full<Bytes>>>>,
    /// Options.
    options: ClientOptions,
    /// Attempts sent (for summaries and tests).
    attempts: AtomicU64,
    /// Whether a TLS connection to the hub was ever made: refused before that means nothing
    /// listens there, after it a hub restarting.
    reached: AtomicBool,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("host", &self.host)
            .field("policy", &self.policy)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn split_host(host: &str) -> (&str, u16) {
    match host.rsplit_once(':') {
        Some((name, port)) => match port.parse() {
            Ok(port) => (name, port),
            Err(_) => (host, 443),
        },
        None => (host, 443),
    }
}

/// TLS trusting the CA certificates of `options.ca_file` and, if asked, the system's (also
/// what the CLI's AMQP commands dial with).
pub fn tls_connector(options: &ClientOptions) -> Result<TlsConnector, Error> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        roots = edgetwin_wire::tls::roots_from_pem(&pem)
            .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    }
    if options.system_roots {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    if roots.is_empty() {
        return Err(Error::NoTrustedCa);
    }
    let config = edgetwin_wire::tls::client_config(roots).map_err(|e| Error::Tls(e.to_string()))?;
    Ok(TlsConnector::from(config))
}

/// What one attempt produced.
enum Attempt {
    /// The hub answered (whatever the status), maybe with a `Retry-After`.
    Answer(Response, Option<Duration>),
    /// No answer.
    Failed(String, NetworkFailureKind),
}

/// Why a TLS handshake failed, and whether it will fail again: a certificate the client does not
/// trust (or any other refusal by TLS itself) will; a connection dropped mid-handshake may not.
fn classify_tls(error: &std::io::Error) -> (String, NetworkFailureKind) {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => (
            format!("TLS: the hub's certificate is not trusted ({why:?})"),
            NetworkFailureKind::UntrustedCertificate,
        ),
        Some(other) => (format!("TLS: {other}"), NetworkFailureKind::TlsRefused),
        None => (format!("TLS: {error}"), NetworkFailureKind::TlsHandshake),
    }
}

impl ServiceClient {
    /// A client for the hub and policy of `connection_string` (a service connection string).
    pub fn new(
        connection_string: &ConnectionString,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let (Some(policy), Some(key)) = (
            connection_string.shared_access_key_name.clone(),
            connection_string.shared_access_key.clone(),
        ) else {
            return Err(Error::ConnectionString(
                "the connection string has no SharedAccessKeyName/SharedAccessKey".into(),
            ));
        };
        sas::decode_key(key.expose()).map_err(|_| {
            Error::ConnectionString(
                "the connection string's SharedAccessKey is not valid base64".into(),
            )
        })?;
        let host = connection_string.host_name.clone();
        let (name, port) = split_host(&host);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            Error::ConnectionString(format!("HostName '{host}' is not a valid host name"))
        })?;
        Ok(ServiceClient {
            tls: tls_connector(&options)?,
            host,
            server_name,
            port,
            policy,
            key,
            token: Mutex::new(None),
            connection: Mutex::new(None),
            options,
            attempts: AtomicU64::new(0),
            reached: AtomicBool::new(false),
        })
    }

    /// `HostName` of the connection string (may carry a port).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The shared access policy name.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// HTTP attempts sent so far (retries included).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The current service token, renewed at 80% of its lifetime.
    fn token(&self) -> Result<Secret, Error> {
        let now = now_unix();
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, expiry)) = cached.as_ref() {
            if !needs_renewal(*expiry, now, TOKEN_TTL_SECS) {
                return Ok(token.clone());
            }
        }
        let expiry = now + TOKEN_TTL_SECS;
        let token = sas::generate_token(&self.key, &self.host, expiry, Some(&self.policy))
            .map_err(|e| Error::ConnectionString(format!("cannot sign a service token: {e}")))?;
        *cached = Some((token.clone(), expiry));
        Ok(token)
    }

    /// A new HTTPS connection to the hub, for requests of the caller's own making (the console's
    /// pages, raw HTTP); the message says what failed.
    pub async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        self.open().await.map_err(|(detail, _)| detail)
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, (String, NetworkFailureKind)> {
        let name = split_host(&self.host).0;
        let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name, self.port))
            .await
            .map_err(|e| {
                // A name never resolved is a typo or a missing hosts entry, said at once; one
                // that resolved earlier in the run is a resolver having a bad moment.
                let kind = match self.reached.load(Ordering::Relaxed) {
                    true => NetworkFailureKind::Transient,
                    false => NetworkFailureKind::Unreachable,
                };
                (format!("cannot resolve host name '{name}': {e}"), kind)
            })?
            .collect();
        let tcp = TcpStream::connect(&addresses[..]).await.map_err(|e| {
            // Refused before the hub was ever reached: nothing listens there (a hub that
            // restarts in the middle of a run is waited for).
            if e.kind() == std::io::ErrorKind::ConnectionRefused
                && !self.reached.load(Ordering::Relaxed)
            {
                let detail = format!(
                    "connect: {e}: nothing listens on {name} port {} (is the hub running?)",
                    self.port
                );
                (detail, NetworkFailureKind::Unreachable)
            } else {
                (format!("connect: {e}"), NetworkFailureKind::Transient)
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| classify_tls(&e))?;
        self.reached.store(true, Ordering::Relaxed);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| (format!("HTTP: {e}"), NetworkFailureKind::Transient))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn build(
        &self,
        request: &Request,
        token: &Secret,
    ) -> Result<hyper::Request<Full<Bytes>>, Error> {
        let authorization = request.authorization.as_ref().unwrap_or(token);
        let mut builder = hyper::Request::builder()
            .method(request.method.clone())
            .uri(request.path_and_query())
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::AUTHORIZATION, authorization.expose())
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("edgetwin/", env!("CARGO_PKG_VERSION")),
            );
        if request.body.is_some() {
            builder = builder.header(
                hyper::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            );
        }
        if let Some(if_match) = &request.if_match {
            builder = builder.header(hyper::header::IF_MATCH, if_match);
        }
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(request.body.clone().unwrap_or_default()))
            .map_err(|e| Error::Request {
                operation: request.operation.clone(),
                detail: e.to_string(),
            })
    }

    /// One attempt: on the kept connection if there is one that still works (and once more on
    /// a new one if it broke before answering, as a connection the hub closed while idle does),
    /// else on a new one.
    async fn attempt(&self, request: &Request, token: &Secret) -> Result<Attempt, Error> {
        let kept = match self.options.keep_alive {
            true => self
                .connection
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
            false => None,
        };
        let mut kept = match kept {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let (sender, response) = loop {
            let reused = kept.is_some();
            let mut sender = match kept.take() {
                Some(sender) => sender,
                None => match self.open().await {
                    Ok(sender) => sender,
                    Err((detail, kind)) => return Ok(Attempt::Failed(detail, kind)),
                },
            };
            self.attempts.fetch_add(1, Ordering::Relaxed);
            match sender.send_request(self.build(request, token)?).await {
                Ok(response) => break (sender, response),
                Err(_) if reused => continue,
                Err(e) => {
                    return Ok(Attempt::Failed(
                        format!("HTTP: {e}"),
                        NetworkFailureKind::Transient,
                    ))
                }
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return Ok(Attempt::Failed(
                    format!("reading the answer: {e}"),
                    NetworkFailureKind::Transient,
                ))
            }
        };
        if self.options.keep_alive {
            *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        }
        let response = Response {
            status,
            headers,
            body,
        };
        let retry_after = response.header("retry-after").and_then(parse_retry_after);
        Ok(Attempt::Answer(response, retry_after))
    }

    /// Sends `request`, retrying per the policy; returns the final answer whatever its status.
    pub async fn send(&self, request: &Request) -> Result<Response, Error> {
        let mut attempt = 1u32;
        loop {
            let token = self.token()?;
            let result =
                tokio::time::timeout(self.options.attempt_timeout, self.attempt(request, &token))
                    .await
                    .unwrap_or_else(|_| {
                        Ok(Attempt::Failed(
                            format!("no answer within {:?}", self.options.attempt_timeout),
                            NetworkFailureKind::Transient,
                        ))
                    })?;
            let decision = match &result {
                Attempt::Failed(_, kind) if !kind.is_transient() => None,
                Attempt::Failed(..) => {
                    self.options
                        .retry
                        .decide(attempt, Outcome::Network, None, rand::random())
                }
                Attempt::Answer(response, retry_after) => self.options.retry.decide(
                    attempt,
                    Outcome::Status(response.status),
                    *retry_after,
                    rand::random(),
                ),
            };
            let Some(wait) = decision else {
                return match result {
                    Attempt::Answer(response, _) => Ok(response),
                    Attempt::Failed(detail, kind) => Err(Error::Network {
                        operation: request.operation.clone(),
                        host: self.host.clone(),
                        failure: NetworkFailure {
                            kind,
                            detail,
                            attempts: attempt,
                        },
                    }),
                };
            };
            // Progress, so that a wait is never silent.
            let why = match &result {
                Attempt::Failed(detail, _) => {
                    *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    detail.clone()
                }
                Attempt::Answer(response, _) => format!("IoT Hub answered {}", response.status),
            };
            tracing::warn!(
                "{}: {why}; retrying in {wait:.1?} (attempt {} of {})",
                request.operation,
                attempt + 1,
                self.options.retry.max_attempts
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Turns an error answer into a [`ServiceError`]; a 401 names the permission the operation
    /// needs and the policy that lacks it.
    pub fn service_error(&self, request: &Request, response: &Response) -> ServiceError {
        let info = parse_error_body(&response.body);
        let code = info
            .code
            .or_else(|| response.header(ERROR_CODE_HEADER).map(str::to_owned));
        let hint = match response.status {
            401 if code.as_deref() != Some("SystemModuleModifyUnauthorizedAccess") => {
                Some(format!(
                    "{} needs the {} permission; check that shared access policy '{}' grants it \
                     (iothubowner grants all), and that its key is current",
                    request.operation,
                    request.permission.name(),
                    self.policy
                ))
            }
            _ => None,
        };
        ServiceError {
            operation: request.operation.clone(),
            status: response.status,
            code,
            message: info.message,
            hint,
        }
    }

    /// Sends `request` and expects a 2xx answer; other answers become [`Error::Service`].
    pub async fn send_ok(&self, request: &Request) -> Result<Response, Error> {
        let response = self.send(request).await?;
        if !(200..300).contains(&response.status) {
            return Err(self.service_error(request, &response).into());
        }
        Ok(response)
    }

    /// Sends `request` and decodes a 2xx JSON answer; other answers become errors.
    pub async fn call_json<T: DeserializeOwned>(&self, request: &Request) -> Result<T, Error> {
        let response = self.send_ok(request).await?;
        response.json().map_err(|e| Error::Protocol {
            operation: request.operation.clone(),
            detail: e.to_string(),
        })
    }

    /// Sends `request` and expects a 2xx answer whose body is ignored.
    pub async fn call_empty(&self, request: &Request) -> Result<(), Error> {
        self.send_ok(request).await.map(drop)
    }

    /// Like [`call_json`](Self::call_json), but `None` on a 404 with one of `absent_codes`.
    pub async fn call_optional<T: DeserializeOwned>(
        &self,
        request: &Request,
        absent_codes: &[&str],
    ) -> Result<Option<T>, Error> {
        match self.call_json(request).await {
            Ok(value) => Ok(Some(value)),
            Err(Error::Service(e)) if e.status == 404 && absent_codes.iter().any(|c| e.is(c)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgetwin_wire::rest::Permission;
    use hyper::Method;

    const KEY: &str = "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA==";

    fn client(policy: &str) -> ServiceClient {
        let cs: ConnectionString =
            format!("HostName=h.net;SharedAccessKeyName={policy};SharedAccessKey={KEY}")
                .parse()
                .unwrap();
        ServiceClient::new(&cs, ClientOptions::default()).unwrap()
    }

    #[test]
    fn tokens_are_renewed_after_four_fifths_of_their_lifetime() {
        assert!(!needs_renewal(3600, 0, 3600));
        assert!(!needs_renewal(3600, 2879, 3600));
        assert!(needs_renewal(3600, 2880, 3600));
        assert!(needs_renewal(3600, 4000, 3600));
    }

    #[test]
    fn the_port_comes_from_the_host_name() {
        assert_eq!(split_host("localhost:8443"), ("localhost", 8443));
        assert_eq!(
            split_host("h.azure-devices.net"),
            ("h.azure-devices.net", 443)
        );
    }

    #[test]
    fn debug_does_not_show_the_policy_key() {
        let client = client("p");
        client.token().unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains(KEY), "{debug}");
        assert!(!debug.contains("sig="), "{debug}");
    }

    #[test]
    fn a_401_names_the_permission_the_operation_needs() {
        let client = client("registryRead");
        let request = Request::new(
            Method::PUT,
            &["devices", "d"],
            Permission::RegistryWrite,
            "create device 'd'",
        );
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            ERROR_CODE_HEADER,
            "IotHubUnauthorizedAccess".parse().unwrap(),
        );
        let response = Response {
            status: 401,
            headers,
            body: Bytes::from_static(
                br#"{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized","ExceptionMessage":"x"}"#,
            ),
        };
        let text = client.service_error(&request, &response).to_string();
        assert!(text.contains("RegistryWrite"), "{text}");
        assert!(text.contains("registryRead"), "{text}");
        assert!(text.contains("IotHubUnauthorizedAccess"), "{text}");
    }

    #[test]
    fn a_connection_string_without_a_policy_is_refused_without_its_key() {
        let cs: ConnectionString = format!("HostName=h.net;DeviceId=d;SharedAccessKey={KEY}")
            .parse()
            .unwrap();
        let err = ServiceClient::new(&cs, ClientOptions::default()).unwrap_err();
        assert!(matches!(err, Error::ConnectionString(_)), "{err:?}");
        assert!(!err.to_string().contains(KEY), "{err}");
    }
}
