//! The service REST API over HTTPS (api-version 2021-04-12 and newer): one listener, a request
//! type with the path split and percent-decoded per segment, and a dispatcher to the route files.
//! As on IoT Hub's port 443, the same listener upgrades `GET /$iothub/websocket` to MQTT over
//! WebSockets.

mod configurations;
mod local;
mod query;
mod registry;
mod twins;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgetwin_wire::rest::{self as model, ErrorCode, Permission};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::error::ApiError;
use crate::faults::Injected;
use crate::hub::{grants, Caller, Hub};
use crate::ids;
use crate::listener::{self, Admission, Limits};
use crate::store::PolicyRecord;

/// Largest request body accepted (bulk requests of 100 devices with twins fit easily).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// A parsed service request.
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Path segments, each percent-decoded after splitting on `/`.
    pub segments: Vec<String>,
    /// Query parameters, decoded.
    pub query: HashMap<String, String>,
    /// The `If-Match` header, raw.
    pub if_match: Option<String>,
    /// Every request header (query paging reads `x-ms-max-item-count`, `x-ms-continuation`).
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Who authenticated.
    pub caller: Caller,
}

impl Request {
    /// Whether the caller's policy grants `permission` (a device's own token grants none); for
    /// an operation whose side effect needs more than the operation itself.
    pub fn may(&self, permission: Permission) -> bool {
        matches!(&self.caller, Caller::Policy(policy) if grants(policy, permission))
    }

    /// Refuses the request unless the caller's policy grants `permission` (a device's own token
    /// grants none).
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        match &self.caller {
            Caller::Policy(policy) if grants(policy, permission) => Ok(()),
            Caller::Policy(policy) => Err(permission_missing(policy, permission)),
            Caller::EdgeDevice(device_id) => Err(device_token_refused(device_id)),
        }
    }

    /// Refuses a request on the module identities of `device_id` unless the caller is that IoT
    /// Edge device with its own token, or its policy grants `permission`.
    pub fn require_for_modules_of(
        &self,
        device_id: &str,
        permission: Permission,
    ) -> Result<(), ApiError> {
        match &self.caller {
            Caller::EdgeDevice(caller) if caller == device_id => Ok(()),
            _ => self.require(permission),
        }
    }

    /// The body, a JSON object, decoded as `T`; a bad body names what is wrong. (serde would
    /// also read a struct from a JSON array; IoT Hub takes only objects.)
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let trimmed = self.body.trim_ascii_start();
        if trimmed.first() == Some(&b'[') {
            return Err(ApiError::new(
                ErrorCode::IotHubFormatError,
                "the request body is not valid: a JSON object is expected, not an array",
            ));
        }
        self.json_any()
    }

    /// The body decoded as `T`, which may be a list (bulk requests).
    pub fn json_any<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::new(
                ErrorCode::IotHubFormatError,
                format!("the request body is not valid: {e}"),
            )
        })
    }

    /// A numeric query parameter `top` clamped to 1..=1000 (default 1000).
    pub fn top(&self) -> usize {
        self.query
            .get("top")
            .and_then(|t| t.parse::<usize>().ok())
            .filter(|t| (1..=1000).contains(t))
            .unwrap_or(1000)
    }
}

/// IoT Hub's refusal of a request whose policy lacks `permission` (logged).
pub fn permission_missing(policy: &PolicyRecord, permission: Permission) -> ApiError {
    tracing::info!(policy = %policy.name, permission = permission.name(), "permission missing");
    ApiError::new(
        ErrorCode::IotHubUnauthorizedAccess,
        format!(
            "Unauthorized: the shared access policy '{}' does not grant {}",
            policy.name,
            permission.name()
        ),
    )
}

/// IoT Hub's refusal of a device's own token outside its module identities (logged).
fn device_token_refused(device_id: &str) -> ApiError {
    tracing::info!(
        device_id,
        "a device token may manage that device's module identities only"
    );
    ApiError::new(
        ErrorCode::IotHubUnauthorizedAccess,
        "Unauthorized: a device's own token may manage that IoT Edge device's module identities only",
    )
}

/// What a route answers.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body (none for 204).
    pub body: Option<Value>,
    /// The entity's etag, sent as `ETag`.
    pub etag: Option<String>,
    /// Further response headers (`x-ms-item-type`, `x-ms-continuation` of queries).
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn ok(body: impl serde::Serialize) -> Result<Reply, ApiError> {
        Ok(Reply {
            status: StatusCode::OK,
            body: Some(
                serde_json::to_value(body)
                    .map_err(|e| ApiError::new(ErrorCode::ServerError, e.to_string()))?,
            ),
            etag: None,
            headers: Vec::new(),
        })
    }

    /// 204, no body.
    pub fn no_content() -> Result<Reply, ApiError> {
        Ok(Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
            etag: None,
            headers: Vec::new(),
        })
    }

    /// Adds an `ETag`.
    pub fn with_etag(mut self, etag: Option<String>) -> Self {
        self.etag = etag;
        self
    }
}

/// How long a client may take to send a request's headers (and, once idle between requests, to
/// start the next one).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepts HTTPS connections until `shutdown` turns true, within `limits`. A connection upgraded
/// to MQTT over WebSockets goes on within the same connection task, so the listener's cap,
/// eviction of unauthenticated peers and `stop()` cover it too.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    hub: Arc<Hub>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    listener::serve(
        listener,
        "HTTPS",
        limits,
        shutdown,
        move |socket, peer, admission| {
            let (tls, hub) = (tls.clone(), hub.clone());
            async move {
                let Ok(Ok(stream)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(socket)).await
                else {
                    tracing::info!(%peer, "HTTPS TLS handshake failed");
                    return;
                };
                let upgraded: UpgradedSlot = Arc::default();
                let slot = upgraded.clone();
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        let (hub, slot, admission) = (hub.clone(), slot.clone(), admission.clone());
                        async move {
                            let path = request.uri().path();
                            if path == crate::mqtt::WEBSOCKET_PATH {
                                let response = websocket(hub, request, admission, &slot);
                                return Ok::<_, Infallible>(response.map(BodyExt::boxed));
                            }
                            if crate::console::serves(path) {
                                return Ok(crate::console::handle(hub, request, peer.ip()).await);
                            }
                            let response = handle(hub, request).await;
                            // A client that authenticated is kept when the listener is full.
                            if response.extensions().get::<Authenticated>().is_some() {
                                admission.established();
                            }
                            Ok(response.map(BodyExt::boxed))
                        }
                    });
                if let Err(error) = http1_server()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(%peer, %error, "HTTPS connection ended");
                }
                let mqtt = upgraded.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(mqtt) = mqtt {
                    mqtt.await;
                }
            }
        },
    )
    .await;
}

/// Where an upgrade leaves the MQTT connection it starts, for the connection task to run.
type UpgradedSlot =
    Arc<std::sync::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>>;

/// Upgrades to MQTT over WebSockets (the MQTT session is left in `slot`), or answers 400 naming
/// what the upgrade request lacks.
fn websocket(
    hub: Arc<Hub>,
    request: hyper::Request<Incoming>,
    admission: Admission,
    slot: &UpgradedSlot,
) -> hyper::Response<Full<Bytes>> {
    match crate::mqtt::upgrade_websocket(hub, request, move || admission.established()) {
        Ok((response, mqtt)) => {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::pin(mqtt));
            response
        }
        Err(refused) => {
            tracing::info!(reason = refused.0, "WebSocket upgrade refused");
            error_response(&ApiError::invalid(refused.0))
        }
    }
}

/// HTTP/1.1 server settings for REST and the workload API: headers must arrive within
/// [`HEADER_TIMEOUT`].
pub fn http1_server() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
}

/// The body of `request`, at most `limit` bytes, within [`BODY_TIMEOUT`]; `None` if too large,
/// unreadable or too slow.
pub async fn read_body(body: Incoming, limit: usize) -> Option<Bytes> {
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => Some(collected.to_bytes()),
        _ => None,
    }
}

/// Splits a raw path on `/` and percent-decodes each segment.
pub fn path_segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// Parses a query string into decoded pairs (first occurrence wins).
pub fn query_pairs(query: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut pairs = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.entry(decode(k)).or_insert_with(|| decode(v));
    }
    pairs
}

pub(crate) async fn handle(
    hub: Arc<Hub>,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let authenticate = |headers: &hyper::HeaderMap, segments: &[String]| {
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
        hub.authenticate_service(authorization, segments)
    };
    serve_request(&hub, request, authenticate).await
}

/// Marks the response to a request that passed authentication (a response extension).
#[derive(Clone, Copy, Debug)]
struct Authenticated;

/// Answers one REST request as the caller `authenticate` finds for its headers and path (the
/// service token for REST clients; the console passes its session's policy). The response
/// carries [`Authenticated`] if the caller authenticated.
pub async fn serve_request(
    hub: &Arc<Hub>,
    request: hyper::Request<Incoming>,
    authenticate: impl FnOnce(&hyper::HeaderMap, &[String]) -> Result<Caller, ApiError>,
) -> hyper::Response<Full<Bytes>> {
    let mut authenticated = false;
    let mut response = respond(hub, request, authenticate, &mut authenticated).await;
    if authenticated {
        response.extensions_mut().insert(Authenticated);
    }
    response
}

async fn respond(
    hub: &Arc<Hub>,
    request: hyper::Request<Incoming>,
    authenticate: impl FnOnce(&hyper::HeaderMap, &[String]) -> Result<Caller, ApiError>,
    authenticated: &mut bool,
) -> hyper::Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let reply = match parse(request, authenticate).await {
        Ok(request) => {
            *authenticated = true;
            let operation = format!("{} /{}", request.method, request.segments.join("/"));
            if !operation.contains(" /edgetwin/faults") {
                if let Some(delay) = hub.faults.delay_for(&operation) {
                    tokio::time::sleep(delay).await;
                }
                match hub.faults.take(&operation) {
                    Some(Injected::Throttled { retry_after }) => {
                        return throttled_response(retry_after)
                    }
                    Some(Injected::Failed(error)) => return error_response(&error),
                    None => {}
                }
            }
            dispatch(hub, request).await
        }
        Err(error) => Err(error),
    };
    let response = match reply {
        Ok(reply) => reply,
        Err(error) => {
            if error.code == ErrorCode::ServerError {
                tracing::error!(%method, path, message = %error.message, "request failed");
            } else {
                tracing::debug!(%method, path, code = error.code.name(), message = %error.message, "request refused");
            }
            return error_response(&error);
        }
    };
    let mut builder = hyper::Response::builder()
        .status(response.status)
        .header("x-ms-request-id", ids::tracking_id());
    if let Some(etag) = response.etag {
        builder = builder.header("ETag", format!("\"{etag}\""));
    }
    for (name, value) in response.headers {
        builder = builder.header(name, value);
    }
    let body = match response.body {
        Some(body) => {
            builder = builder.header("Content-Type", "application/json; charset=utf-8");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// 429 ThrottlingException with `Retry-After`, for an injected throttle.
fn throttled_response(retry_after: u32) -> hyper::Response<Full<Bytes>> {
    let error = Injected::Throttled { retry_after }.error();
    let mut response = error_response(&error);
    if let Ok(value) = hyper::header::HeaderValue::from_str(&retry_after.to_string()) {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, value);
    }
    response
}

/// The IoT Hub error response for `error`.
pub fn error_response(error: &ApiError) -> hyper::Response<Full<Bytes>> {
    let body = model::error_body(
        error.code,
        &error.message,
        &ids::tracking_id(),
        &ids::now_error_timestamp(),
    );
    hyper::Response::builder()
        .status(error.code.http_status())
        .header("Content-Type", "application/json; charset=utf-8")
        .header("iothub-errorcode", error.code.name())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

async fn parse(
    request: hyper::Request<Incoming>,
    authenticate: impl FnOnce(&hyper::HeaderMap, &[String]) -> Result<Caller, ApiError>,
) -> Result<Request, ApiError> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let query = query_pairs(request.uri().query().unwrap_or(""));
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return Err(ApiError::invalid(
            "api-version is missing from the query string",
        ));
    }
    let segments = path_segments(request.uri().path());
    let caller = authenticate(request.headers(), &segments)?;
    let if_match = header("if-match");
    let headers = request.headers().clone();
    let method = request.method().clone();
    let body = read_body(request.into_body(), MAX_BODY)
        .await
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "request body exceeds {MAX_BODY} bytes or took over {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?;
    Ok(Request {
        method,
        segments,
        query,
        if_match,
        headers,
        body,
        caller,
    })
}

async fn dispatch(hub: &Arc<Hub>, request: Request) -> Result<Reply, ApiError> {
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    match segments.first().copied() {
        Some("devices") if segments == ["devices", "query"] && request.method == Method::POST => {
            query::route(hub, &request)
        }
        Some("devices") | Some("statistics") => registry::route(hub, &request, &segments).await,
        Some("twins") => twins::route(hub, &request, &segments).await,
        Some("configurations") => configurations::route(hub, &request, &segments).await,
        Some("edgetwin") => local::route(hub, &request, &segments).await,
        _ => Err(not_found(&request)),
    }
}

/// The answer for a path or method this hub does not serve.
pub fn not_found(request: &Request) -> ApiError {
    ApiError::new(
        ErrorCode::ArgumentInvalid,
        format!(
            "{} /{} is not an IoT Hub operation this hub serves",
            request.method,
            request.segments.join("/")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_decoded_after_splitting_so_an_encoded_slash_stays_in_the_id() {
        assert_eq!(
            path_segments("/twins/d%2F1/modules/%24edgeAgent"),
            vec!["twins", "d/1", "modules", "$edgeAgent"]
        );
    }

    #[test]
    fn query_pairs_decode_and_keep_the_first_duplicate() {
        let pairs = query_pairs("api-version=2021-04-12&top=5&top=6&x=a%20b");
        assert_eq!(pairs["top"], "5");
        assert_eq!(pairs["x"], "a b");
    }
}
