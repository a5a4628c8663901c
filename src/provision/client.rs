//! The IoT Hub service REST client: one HTTPS connection (re-opened when the hub closes it),
//! service SAS tokens renewed before they expire, retries per [`RetryPolicy`], and IoT Hub error
//! envelopes decoded into [`ServiceError`]s. This file is the only one that touches the network.

use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::query::exec::ITEM_TYPE_HEADER;
use edgetwin_wire::query::page;
use edgetwin_wire::rest::{
    parse_error_body, BulkRegistryOperationResult, Configuration, ConfigurationContent, Device,
    ExportImportDevice, Module, Permission, QuerySpecification, ERROR_CODE_HEADER,
};
use edgetwin_wire::{sas, Secret, SERVICE_API_VERSION};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::Method;
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::backoff::{parse_retry_after, Outcome, RetryPolicy};
use super::error::{ProvisionError, ServiceError};

/// Path segments are encoded like the Python SDK does: everything but `A-Za-z0-9-_.~`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Largest response body read (a list of 1000 devices fits many times over).
const MAX_RESPONSE: usize = 32 * 1024 * 1024;

/// Lifetime of a service SAS token, as the Python SDK uses.
pub const TOKEN_TTL_SECS: u64 = 3600;

/// True when a token expiring at `expiry` should be replaced at `now`: after 80% of its lifetime
/// (so a long fleet run never sends an expired token), or once it is past.
pub fn needs_renewal(expiry: u64, now: u64, ttl: u64) -> bool {
    now + ttl / 5 >= expiry
}

/// How the client reaches the hub.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// PEM file with CA certificates to trust besides the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Retry policy for every request.
    pub retry: RetryPolicy,
    /// Time limit of one attempt (connect, send, read).
    pub attempt_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ca_file: None,
            retry: RetryPolicy::default(),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

/// One service operation to perform.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Path segments, unencoded (`["twins", "d1", "modules", "$edgeAgent"]`).
    pub segments: Vec<String>,
    /// JSON body.
    pub body: Option<Bytes>,
    /// `If-Match` value.
    pub if_match: Option<String>,
    /// Further request headers (`x-ms-max-item-count`, `x-ms-continuation` of queries).
    pub headers: Vec<(&'static str, String)>,
    /// What the job is doing, for messages: `create device 'gw-1'`.
    pub operation: String,
    /// The policy permission the operation needs, named in the message of a 401.
    pub permission: Permission,
}

impl Call {
    /// A call without body.
    pub fn new(
        method: Method,
        segments: &[&str],
        permission: Permission,
        operation: String,
    ) -> Self {
        Call {
            method,
            segments: segments.iter().map(|s| (*s).to_owned()).collect(),
            body: None,
            if_match: None,
            headers: Vec::new(),
            operation,
            permission,
        }
    }

    /// Adds a JSON body.
    pub fn json(mut self, body: &impl serde::Serialize) -> Self {
        self.body = Some(Bytes::from(serde_json::to_vec(body).unwrap_or_default()));
        self
    }

    /// The request path and query: segments percent-encoded one by one, plus `api-version`.
    pub fn path_and_query(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            path.extend(utf8_percent_encode(segment, SEGMENT));
        }
        format!("{path}?api-version={SERVICE_API_VERSION}")
    }
}

/// One page of a query's answer.
#[derive(Debug, Clone)]
pub struct QueryPage {
    /// The rows.
    pub items: Vec<Value>,
    /// `x-ms-item-type`: `twin` for whole twins, `raw` for projections and aggregates.
    pub item_type: Option<String>,
    /// `x-ms-continuation`: the token of the next page, `None` on the last one.
    pub continuation: Option<String>,
}

/// An answer from the hub, after retries.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
    /// The `iothub-errorcode` header.
    pub error_code: Option<String>,
    /// Every response header (queries answer `x-ms-item-type` and `x-ms-continuation`).
    pub headers: hyper::HeaderMap,
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
    /// The open connection, reused between requests.
    connection: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
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

fn load_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, ProvisionError> {
    let file = std::fs::File::open(path).map_err(|source| ProvisionError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| ProvisionError::Tls(format!("{}: not a PEM file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ProvisionError::Tls(format!(
            "{}: no certificates found",
            path.display()
        )));
    }
    Ok(certs)
}

fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, ProvisionError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in load_pem(path)? {
            roots
                .add(cert)
                .map_err(|e| ProvisionError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        return Err(ProvisionError::Tls(
            "no trusted CA certificates: the system has none; pass --ca-file (or set EDGETWIN_CA_FILE)"
                .into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ProvisionError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What one attempt produced.
enum Attempt {
    /// The hub answered (whatever the status), maybe with a `Retry-After`.
    Answer(RawResponse, Option<Duration>),
    /// No answer; whether another attempt could change that.
    Failed(String, Lasting),
}

/// Whether a failure to get an answer can go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lasting {
    /// A reset, a timeout, a busy resolver: worth another attempt.
    Transient,
    /// An untrusted certificate; an unknown host or nothing listening before the hub was ever
    /// reached: the same on every attempt, so said at once.
    Permanent,
}

/// Why a TLS handshake failed, and whether it will fail again: a certificate the client does not
/// trust (or any other refusal by TLS itself) will; a connection dropped mid-handshake may not.
fn classify_tls(error: &std::io::Error) -> (String, Lasting) {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => (
            format!(
                "TLS: the hub's certificate is not trusted ({why:?}): pass the CA that signs it with \
                 --ca-file or EDGETWIN_CA_FILE (`edgetwin hub` prints its CA certificate's path)"
            ),
            Lasting::Permanent,
        ),
        Some(other) => (format!("TLS: {other}"), Lasting::Permanent),
        None => (
            format!("TLS: {error} (is the hub's CA trusted? see --ca-file)"),
            Lasting::Transient,
        ),
    }
}

impl ServiceClient {
    /// A client for the hub and policy of `connection_string` (a service connection string).
    pub fn new(
        connection_string: &ConnectionString,
        options: ClientOptions,
    ) -> Result<Self, ProvisionError> {
        let (Some(policy), Some(key)) = (
            connection_string.shared_access_key_name.clone(),
            connection_string.shared_access_key.clone(),
        ) else {
            return Err(ProvisionError::Input(
                "the connection string has no SharedAccessKeyName/SharedAccessKey".into(),
            ));
        };
        sas::decode_key(key.expose()).map_err(|_| {
            ProvisionError::Input(
                "the connection string's SharedAccessKey is not valid base64".into(),
            )
        })?;
        let host = connection_string.host_name.clone();
        let (name, port) = split_host(&host);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            ProvisionError::Input(format!("HostName '{host}' is not a valid host name"))
        })?;
        Ok(ServiceClient {
            tls: tls_connector(options.ca_file.as_deref())?,
            host,
            server_name,
            port,
            policy,
            key,
            token: Mutex::new(None),
            connection: tokio::sync::Mutex::new(None),
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
    fn token(&self) -> Result<Secret, ProvisionError> {
        let now = now_unix();
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, expiry)) = cached.as_ref() {
            if !needs_renewal(*expiry, now, TOKEN_TTL_SECS) {
                return Ok(token.clone());
            }
        }
        let expiry = now + TOKEN_TTL_SECS;
        let token = sas::generate_token(&self.key, &self.host, expiry, Some(&self.policy))
            .map_err(|e| ProvisionError::Input(format!("cannot sign a service token: {e}")))?;
        *cached = Some((token.clone(), expiry));
        Ok(token)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, (String, Lasting)> {
        let name = split_host(&self.host).0;
        let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name, self.port))
            .await
            .map_err(|e| {
                // A name never resolved is a typo or a missing hosts entry, said at once; one
                // that resolved earlier in the run is a resolver having a bad moment.
                let lasting = match self.reached.load(Ordering::Relaxed) {
                    true => Lasting::Transient,
                    false => Lasting::Permanent,
                };
                (format!("cannot resolve host name '{name}': {e}"), lasting)
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
                (detail, Lasting::Permanent)
            } else {
                (format!("connect: {e}"), Lasting::Transient)
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
            .map_err(|e| (format!("HTTP: {e}"), Lasting::Transient))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn attempt(&self, call: &Call, token: &Secret) -> Result<Attempt, ProvisionError> {
        let mut builder = hyper::Request::builder()
            .method(call.method.clone())
            .uri(call.path_and_query())
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::AUTHORIZATION, token.expose())
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("edgetwin/", env!("CARGO_PKG_VERSION")),
            );
        if call.body.is_some() {
            builder = builder.header(
                hyper::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            );
        }
        if let Some(if_match) = &call.if_match {
            builder = builder.header(hyper::header::IF_MATCH, if_match);
        }
        for (name, value) in &call.headers {
            builder = builder.header(*name, value);
        }
        let request = builder
            .body(Full::new(call.body.clone().unwrap_or_default()))
            .map_err(|e| ProvisionError::Input(format!("{}: bad request: {e}", call.operation)))?;
        let mut slot = self.connection.lock().await;
        let reusable = match slot.take() {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match reusable {
            Some(sender) => sender,
            None => match self.connect().await {
                Ok(sender) => sender,
                Err((detail, lasting)) => return Ok(Attempt::Failed(detail, lasting)),
            },
        };
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => return Ok(Attempt::Failed(format!("HTTP: {e}"), Lasting::Transient)),
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after").as_deref().and_then(parse_retry_after);
        let error_code = header(ERROR_CODE_HEADER);
        let headers = response.headers().clone();
        let body = match Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return Ok(Attempt::Failed(
                    format!("reading the answer: {e}"),
                    Lasting::Transient,
                ))
            }
        };
        *slot = Some(sender);
        Ok(Attempt::Answer(
            RawResponse {
                status,
                body,
                error_code,
                headers,
            },
            retry_after,
        ))
    }

    /// Sends `call`, retrying per the policy; returns the final answer whatever its status.
    pub async fn execute(&self, call: &Call) -> Result<RawResponse, ProvisionError> {
        let mut attempt = 1u32;
        loop {
            let token = self.token()?;
            let result =
                tokio::time::timeout(self.options.attempt_timeout, self.attempt(call, &token))
                    .await
                    .unwrap_or_else(|_| {
                        Ok(Attempt::Failed(
                            format!("no answer within {:?}", self.options.attempt_timeout),
                            Lasting::Transient,
                        ))
                    })?;
            let (outcome, retry_after) = match &result {
                Attempt::Answer(raw, retry_after) => (Outcome::Status(raw.status), *retry_after),
                Attempt::Failed(..) => (Outcome::Network, None),
            };
            let jitter = rand::random::<f64>();
            let decision = match &result {
                Attempt::Failed(_, Lasting::Permanent) => None,
                _ => self
                    .options
                    .retry
                    .decide(attempt, outcome, retry_after, jitter),
            };
            match decision {
                Some(wait) => {
                    // Progress, so that a wait is never silent.
                    let why = match &result {
                        Attempt::Failed(detail, _) => {
                            *self.connection.lock().await = None;
                            detail.clone()
                        }
                        Attempt::Answer(raw, _) => format!("IoT Hub answered {}", raw.status),
                    };
                    tracing::warn!(
                        "{}: {why}; retrying in {wait:.1?} (attempt {} of {})",
                        call.operation,
                        attempt + 1,
                        self.options.retry.max_attempts
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => {
                    return match result {
                        Attempt::Answer(raw, _) => Ok(raw),
                        Attempt::Failed(detail, _) => Err(ProvisionError::Network {
                            operation: call.operation.clone(),
                            host: self.host.clone(),
                            detail: if attempt > 1 {
                                format!("{detail} (after {attempt} attempts)")
                            } else {
                                detail
                            },
                        }),
                    };
                }
            }
        }
    }

    /// Turns an error answer into a [`ServiceError`] with a hint where one helps.
    pub fn service_error(&self, call: &Call, raw: &RawResponse) -> ServiceError {
        let info = parse_error_body(&raw.body);
        let code = info.code.or_else(|| raw.error_code.clone());
        let hint = match raw.status {
            401 if code.as_deref() != Some("SystemModuleModifyUnauthorizedAccess") => {
                Some(format!(
                    "{} needs the {} permission; check that shared access policy '{}' grants it \
                 (iothubowner grants all), and that its key is current",
                    call.operation,
                    call.permission.name(),
                    self.policy
                ))
            }
            429 => {
                Some("IoT Hub throttled the request and the retries ran out; lower --rate".into())
            }
            _ => None,
        };
        ServiceError {
            operation: call.operation.clone(),
            status: raw.status,
            code,
            message: info.message,
            hint,
        }
    }

    /// Sends `call` and expects a 2xx answer; other answers become errors.
    async fn execute_ok(&self, call: &Call) -> Result<RawResponse, ProvisionError> {
        let raw = self.execute(call).await?;
        if !(200..300).contains(&raw.status) {
            return Err(self.service_error(call, &raw).into());
        }
        Ok(raw)
    }

    /// Sends `call` and decodes a 2xx JSON answer; other answers become errors.
    pub async fn call_json<T: DeserializeOwned>(&self, call: &Call) -> Result<T, ProvisionError> {
        let raw = self.execute_ok(call).await?;
        serde_json::from_slice(&raw.body).map_err(|e| ProvisionError::Protocol {
            operation: call.operation.clone(),
            detail: e.to_string(),
        })
    }

    /// Sends `call` and expects a 2xx answer whose body is ignored.
    pub async fn call_empty(&self, call: &Call) -> Result<(), ProvisionError> {
        self.execute_ok(call).await.map(drop)
    }

    /// Like [`call_json`](Self::call_json), but `None` on a 404 with one of `absent_codes`.
    async fn call_optional<T: DeserializeOwned>(
        &self,
        call: &Call,
        absent_codes: &[&str],
    ) -> Result<Option<T>, ProvisionError> {
        match self.call_json(call).await {
            Ok(value) => Ok(Some(value)),
            Err(ProvisionError::Service(e))
                if e.status == 404 && absent_codes.iter().any(|c| e.is(c)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /devices/{id}`; `None` if the device does not exist.
    pub async fn get_device(&self, id: &str) -> Result<Option<Device>, ProvisionError> {
        let call = Call::new(
            Method::GET,
            &["devices", id],
            Permission::RegistryRead,
            format!("read device '{id}'"),
        );
        self.call_optional(&call, &["DeviceNotFound"]).await
    }

    /// `PUT /devices/{id}` without `If-Match`: create only (409 DeviceAlreadyExists otherwise).
    pub async fn create_device(&self, device: &Device) -> Result<Device, ProvisionError> {
        let call = Call::new(
            Method::PUT,
            &["devices", &device.device_id],
            Permission::RegistryWrite,
            format!("create device '{}'", device.device_id),
        )
        .json(device);
        self.call_json(&call).await
    }

    /// `GET /devices/{id}/modules/{mid}`; `None` if the module does not exist.
    pub async fn get_module(
        &self,
        device_id: &str,
        module_id: &str,
    ) -> Result<Option<Module>, ProvisionError> {
        let call = Call::new(
            Method::GET,
            &["devices", device_id, "modules", module_id],
            Permission::RegistryRead,
            format!("read module '{device_id}/{module_id}'"),
        );
        self.call_optional(&call, &["ModuleNotFound"]).await
    }

    /// `PUT /devices/{id}/modules/{mid}` without `If-Match`: create only.
    pub async fn create_module(&self, module: &Module) -> Result<Module, ProvisionError> {
        let call = Call::new(
            Method::PUT,
            &["devices", &module.device_id, "modules", &module.module_id],
            Permission::RegistryWrite,
            format!("create module '{}/{}'", module.device_id, module.module_id),
        )
        .json(module);
        self.call_json(&call).await
    }

    fn twin_segments<'a>(device_id: &'a str, module_id: Option<&'a str>) -> Vec<&'a str> {
        match module_id {
            Some(m) => vec!["twins", device_id, "modules", m],
            None => vec!["twins", device_id],
        }
    }

    fn twin_name(device_id: &str, module_id: Option<&str>) -> String {
        match module_id {
            Some(m) => format!("module twin '{device_id}/{m}'"),
            None => format!("device twin '{device_id}'"),
        }
    }

    /// The `IOTEDGE_*` environment a module of an edge device gets from a local `edgetwin hub`
    /// (`GET /edgetwin/devices/{d}/modules/{m}/edgeEnvironment`; not an IoT Hub operation).
    pub async fn edge_environment(
        &self,
        device_id: &str,
        module_id: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ProvisionError> {
        let call = Call::new(
            Method::GET,
            &[
                "edgetwin",
                "devices",
                device_id,
                "modules",
                module_id,
                "edgeEnvironment",
            ],
            Permission::RegistryRead,
            format!("read the Edge environment of module '{device_id}/{module_id}'"),
        );
        self.call_json(&call).await
    }

    /// `GET /twins/{id}[/modules/{mid}]`, the whole twin as JSON.
    pub async fn get_twin(
        &self,
        device_id: &str,
        module_id: Option<&str>,
    ) -> Result<Value, ProvisionError> {
        let call = Call::new(
            Method::GET,
            &Self::twin_segments(device_id, module_id),
            Permission::ServiceConnect,
            format!("read {}", Self::twin_name(device_id, module_id)),
        );
        self.call_json(&call).await
    }

    /// `PATCH /twins/{id}[/modules/{mid}]` with a partial twin (`tags`, `properties.desired`).
    pub async fn patch_twin(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        patch: &Value,
    ) -> Result<Value, ProvisionError> {
        let mut call = Call::new(
            Method::PATCH,
            &Self::twin_segments(device_id, module_id),
            Permission::ServiceConnect,
            format!("update {}", Self::twin_name(device_id, module_id)),
        )
        .json(patch);
        call.if_match = Some("*".into());
        self.call_json(&call).await
    }

    /// `POST /devices/query`: one page of the query's rows, from `continuation` (the first page
    /// without one), at most `max_item_count` rows if given.
    pub async fn query_page(
        &self,
        query: &str,
        continuation: Option<&str>,
        max_item_count: Option<usize>,
    ) -> Result<QueryPage, ProvisionError> {
        let mut call = Call::new(
            Method::POST,
            &["devices", "query"],
            Permission::RegistryRead,
            "run the query".into(),
        )
        .json(&QuerySpecification {
            query: query.to_owned(),
        });
        call.headers
            .extend(max_item_count.map(|n| (page::MAX_ITEM_COUNT_HEADER, n.to_string())));
        call.headers
            .extend(continuation.map(|token| (page::CONTINUATION_HEADER, token.to_owned())));
        let raw = self.execute_ok(&call).await?;
        let header = |name: &str| {
            raw.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(QueryPage {
            items: serde_json::from_slice(&raw.body).map_err(|e| ProvisionError::Protocol {
                operation: call.operation.clone(),
                detail: e.to_string(),
            })?,
            item_type: header(ITEM_TYPE_HEADER),
            continuation: header(page::CONTINUATION_HEADER).filter(|t| !t.is_empty()),
        })
    }

    /// `POST /devices/{id}/applyConfigurationContent` (204).
    pub async fn apply_configuration_content(
        &self,
        device_id: &str,
        content: &ConfigurationContent,
    ) -> Result<(), ProvisionError> {
        let call = Call::new(
            Method::POST,
            &["devices", device_id, "applyConfigurationContent"],
            Permission::ServiceConnect,
            format!("apply the deployment to device '{device_id}'"),
        )
        .json(content);
        self.call_empty(&call).await
    }

    /// `GET /configurations/{id}`; `None` if absent.
    pub async fn get_configuration(
        &self,
        id: &str,
    ) -> Result<Option<Configuration>, ProvisionError> {
        let call = Call::new(
            Method::GET,
            &["configurations", id],
            Permission::RegistryRead,
            format!("read deployment '{id}'"),
        );
        self.call_optional(&call, &["ConfigurationNotFound"]).await
    }

    /// `PUT /configurations/{id}`: create when `if_match` is `None`, else update.
    pub async fn put_configuration(
        &self,
        configuration: &Configuration,
        if_match: Option<&str>,
    ) -> Result<Configuration, ProvisionError> {
        let mut call = Call::new(
            Method::PUT,
            &["configurations", &configuration.id],
            Permission::RegistryWrite,
            format!(
                "{} deployment '{}'",
                if if_match.is_some() {
                    "update"
                } else {
                    "create"
                },
                configuration.id
            ),
        )
        .json(configuration);
        call.if_match = if_match.map(|e| format!("\"{}\"", e.trim_matches('"')));
        self.call_json(&call).await
    }

    /// Bulk `POST /devices` (at most 100 items). Both 200 and a 400 carrying per-item errors are
    /// answers; a 400 without a bulk result (the whole request refused) is an error.
    pub async fn bulk(
        &self,
        items: &[ExportImportDevice],
    ) -> Result<BulkRegistryOperationResult, ProvisionError> {
        let call = Call::new(
            Method::POST,
            &["devices"],
            Permission::RegistryWrite,
            format!("bulk registry request ({} items)", items.len()),
        )
        .json(&items);
        let raw = self.execute(&call).await?;
        let parsed = serde_json::from_slice::<Value>(&raw.body)
            .ok()
            .filter(|v| v.get("isSuccessful").is_some())
            .and_then(|v| serde_json::from_value::<BulkRegistryOperationResult>(v).ok());
        match (raw.status, parsed) {
            (200 | 400, Some(result)) => Ok(result),
            (200..=299, None) => Err(ProvisionError::Protocol {
                operation: call.operation,
                detail: "the answer is not a BulkRegistryOperationResult".into(),
            }),
            _ => Err(self.service_error(&call, &raw).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_after_four_fifths_of_their_lifetime() {
        assert!(!needs_renewal(3600, 0, 3600));
        assert!(!needs_renewal(3600, 2879, 3600));
        assert!(needs_renewal(3600, 2880, 3600));
        assert!(needs_renewal(3600, 4000, 3600));
    }

    #[test]
    fn path_segments_are_encoded_one_by_one() {
        let call = Call::new(
            Method::GET,
            &["twins", "d 1/x", "modules", "$edgeAgent"],
            Permission::ServiceConnect,
            String::new(),
        );
        assert_eq!(
            call.path_and_query(),
            format!("/twins/d%201%2Fx/modules/%24edgeAgent?api-version={SERVICE_API_VERSION}")
        );
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
        let key = "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA==";
        let cs: ConnectionString =
            format!("HostName=h.net;SharedAccessKeyName=p;SharedAccessKey={key}")
                .parse()
                .unwrap();
        let client = ServiceClient::new(&cs, ClientOptions::default()).unwrap();
        client.token().unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains(key), "{debug}");
        assert!(!debug.contains("sig="), "{debug}");
    }

    #[test]
    fn a_401_names_the_permission_the_operation_needs() {
        let key = "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA==";
        let cs: ConnectionString =
            format!("HostName=h.net;SharedAccessKeyName=registryRead;SharedAccessKey={key}")
                .parse()
                .unwrap();
        let client = ServiceClient::new(&cs, ClientOptions::default()).unwrap();
        let call = Call::new(
            Method::PUT,
            &["devices", "d"],
            Permission::RegistryWrite,
            "create device 'd'".into(),
        );
        let raw = RawResponse {
            status: 401,
            body: Bytes::from_static(
                br#"{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized","ExceptionMessage":"x"}"#,
            ),
            error_code: Some("IotHubUnauthorizedAccess".into()),
            headers: hyper::HeaderMap::new(),
        };
        let text = client.service_error(&call, &raw).to_string();
        assert!(text.contains("RegistryWrite"), "{text}");
        assert!(text.contains("registryRead"), "{text}");
        assert!(text.contains("IotHubUnauthorizedAccess"), "{text}");
    }
}
