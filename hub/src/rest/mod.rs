//! The service REST API (api-version 2021-04-12 and newer), served by the HTTPS front door
//! ([`crate::https`]): a request type with the path split and percent-decoded per segment, and a
//! dispatcher to the route files. A door: depends on the hub, its own handle ([`State`]) and the
//! leaves below (http, error, ids); never on the console, MQTT or the front door.

mod configurations;
mod device_bound;
mod device_messages;
mod digital_twins;
mod dps;
mod jobs;
mod local;
mod query;
mod registry;
mod twins;

pub use local::create_consumer_group;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use edgetwin_wire::rest::{ErrorCode, Permission};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::faults::{Faults, Injected};
use crate::http::{error_response, path_segments, query_pairs, read_body, BODY_TIMEOUT};
use crate::hub::{grants, is_device_facing, Caller, Hub};
use crate::ids;
use crate::store::PolicyRecord;
use crate::workload::WorkloadSockets;

/// What the REST routes reach beyond a request: the hub, the faults injected through
/// `/edgetwin/faults`, and the workload sockets that Edge environments name.
#[derive(Clone)]
pub struct State {
    /// The hub's core.
    pub hub: Arc<Hub>,
    /// Faults injected through `/edgetwin/faults` (MQTT shares them).
    pub faults: Arc<Faults>,
    /// The workload sockets being served.
    pub workload: Arc<WorkloadSockets>,
}

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
            Caller::EdgeDevice(device_id) | Caller::Device(device_id) => {
                Err(device_token_refused(device_id))
            }
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
    /// A message as the body instead of JSON: its bytes and its headers (a cloud-to-device
    /// message received over HTTPS).
    pub message: Option<(Vec<(String, String)>, Bytes)>,
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
            message: None,
        })
    }

    /// 204, no body.
    pub fn no_content() -> Result<Reply, ApiError> {
        Ok(Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
            etag: None,
            headers: Vec::new(),
            message: None,
        })
    }

    /// Adds an `ETag`.
    pub fn with_etag(mut self, etag: Option<String>) -> Self {
        self.etag = etag;
        self
    }
}

/// Answers one REST request as the caller its service token authenticates; see
/// [`authenticated`].
pub async fn handle(
    state: State,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let segments = path_segments(request.uri().path());
    if dps::serves_device(&segments) || dps::serves(&segments) {
        let mut authenticated = false;
        let mut response = if dps::serves_device(&segments) {
            dps::handle_device(&state.hub, request, &mut authenticated).await
        } else {
            dps::handle_service(&state.hub, request, &mut authenticated).await
        };
        if authenticated {
            response.extensions_mut().insert(Authenticated);
        }
        return response;
    }
    let hub = state.hub.clone();
    let authenticate = |headers: &hyper::HeaderMap, segments: &[String]| {
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
        hub.authenticate_service(authorization, segments)
    };
    serve_request(&state, request, authenticate).await
}

/// Marks the response to a request that passed authentication (a response extension).
#[derive(Clone, Copy, Debug)]
struct Authenticated;

/// Whether `response` answers a request that passed authentication.
pub fn authenticated<B>(response: &hyper::Response<B>) -> bool {
    response.extensions().get::<Authenticated>().is_some()
}

/// Answers one REST request as the caller `authenticate` finds for its headers and path (the
/// service token for REST clients; the console passes its session's policy). The response
/// carries [`Authenticated`] if the caller authenticated.
pub async fn serve_request(
    state: &State,
    request: hyper::Request<Incoming>,
    authenticate: impl FnOnce(&hyper::HeaderMap, &[String]) -> Result<Caller, ApiError>,
) -> hyper::Response<Full<Bytes>> {
    let mut authenticated = false;
    let mut response = respond(state, request, authenticate, &mut authenticated).await;
    if authenticated {
        response.extensions_mut().insert(Authenticated);
    }
    response
}

async fn respond(
    state: &State,
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
                if let Some(delay) = state.faults.delay_for(&operation) {
                    tokio::time::sleep(delay).await;
                }
                match state.faults.take(&operation) {
                    Some(Injected::Throttled { retry_after }) => {
                        return throttled_response(retry_after)
                    }
                    Some(Injected::Failed(error)) => return error_response(&error),
                    None => {}
                }
            }
            dispatch(state, request).await
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
    reply_response(response)
}

/// The HTTP response of a route's reply: its status, `ETag`, headers and JSON body.
fn reply_response(response: Reply) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder()
        .status(response.status)
        .header("x-ms-request-id", ids::tracking_id());
    if let Some(etag) = response.etag {
        builder = builder.header("ETag", format!("\"{etag}\""));
    }
    for (name, value) in response.headers {
        builder = builder.header(name, value);
    }
    let body = match (response.body, response.message) {
        (_, Some((headers, body))) => {
            for (name, value) in headers {
                match (
                    hyper::header::HeaderName::from_bytes(name.as_bytes()),
                    hyper::header::HeaderValue::from_bytes(value.as_bytes()),
                ) {
                    (Ok(name), Ok(value)) => builder = builder.header(name, value),
                    _ => tracing::info!(name, "a message property that is no HTTP header left out"),
                }
            }
            builder = builder.header("Content-Type", "application/octet-stream");
            body
        }
        (Some(body), None) => {
            builder = builder.header("Content-Type", "application/json; charset=utf-8");
            Bytes::from(body.to_string())
        }
        (None, None) => Bytes::new(),
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

async fn dispatch(state: &State, request: Request) -> Result<Reply, ApiError> {
    let hub = &state.hub;
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    match segments.first().copied() {
        Some("devices") if segments == ["devices", "query"] && request.method == Method::POST => {
            query::route(hub, &request).await
        }
        Some("devices") if is_device_facing(&request.segments) => {
            device_messages::route(hub, &request, &segments).await
        }
        Some("devices") | Some("statistics") => registry::route(state, &request, &segments).await,
        Some("twins") => twins::route(hub, &request, &segments).await,
        Some("digitaltwins") => digital_twins::route(hub, &request, &segments).await,
        Some("configurations") => configurations::route(hub, &request, &segments).await,
        Some("jobs") => jobs::route(hub, &request, &segments).await,
        Some("edgetwin") => local::route(state, &request, &segments).await,
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
