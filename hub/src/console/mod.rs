//! The web console at `/console` on the hub's HTTPS port: a sign-in (the printed link or a service
//! connection string), the front end built into the binary, the hub's own REST API under
//! `/console/api/...` answered as the session's shared access policy (so IoT Hub's validation and
//! permissions apply unchanged), and a server-sent event stream of messages and connection state.
//! Mutating requests need the `SameSite=Strict` session cookie and the session's CSRF token in
//! the [`auth::CSRF_HEADER`] header. Failed sign-ins are throttled per client address and
//! hub-wide ([`throttle`]); sessions and event streams are capped per policy, so a lesser key
//! cannot push the owner out.
//!
//! A door on the HTTPS front door ([`crate::https`]): depends on the hub, the REST door (whose
//! routes it answers as the session's policy) and the http leaf; never on the front door or MQTT.

mod assets;
mod auth;
mod events;
mod provisioning;
mod throttle;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgetwin_wire::rest::{ErrorCode, Permission};
use edgetwin_wire::Secret;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};

use crate::error::ApiError;
use crate::http::{error_response, query_pairs, read_body};
use crate::hub::{grants, Caller, Hub};
use crate::ids;
use crate::messages::MessageFilter;
use crate::rest::{self, serve_request};
use crate::store::PolicyRecord;
use assets::Asset;
use auth::{Session, Sessions, SignInError, Started};
use throttle::SignInThrottle;

/// Where the console is served.
pub const PREFIX: &str = "/console";
/// Largest sign-in body (a connection string fits many times over).
const MAX_SIGN_IN_BODY: usize = 8 * 1024;

/// A console response body: a whole body, or an event stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// The console's state in the hub: who is signed in, the event streams open and the failed
/// sign-ins.
pub struct Console {
    /// The link token and the sessions.
    sessions: Sessions,
    /// The event streams open, per session and per policy.
    streams: Arc<events::Quota>,
    /// Failed sign-ins, per client address and hub-wide.
    throttle: Arc<SignInThrottle>,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            sessions: Sessions::new(auth::random_token()),
            streams: Arc::default(),
            throttle: Arc::new(SignInThrottle::new(Instant::now())),
        }
    }
}

impl Console {
    /// The path and query of the link that signs a browser in once (a secret: it holds the
    /// token); `None` once it was used.
    pub fn sign_in_path(&self) -> Option<Secret> {
        let token = self.sessions.link_token()?;
        Some(Secret::new(format!("{PREFIX}/?token={}", token.expose())))
    }
}

/// Whether `path` belongs to the console.
pub fn serves(path: &str) -> bool {
    path == PREFIX || path.starts_with("/console/")
}

/// Answers a request under [`PREFIX`] from client address `peer`.
/// `console` is the console's state, `rest` the REST door its API requests go to.
pub async fn handle(
    console: &Console,
    rest: &rest::State,
    request: hyper::Request<Incoming>,
    peer: IpAddr,
) -> hyper::Response<Body> {
    let hub = &rest.hub;
    let now = ids::now_unix();
    let name = request.uri().path()[PREFIX.len()..]
        .trim_start_matches('/')
        .to_owned();
    let session = session_of(console, hub, request.headers(), now);
    let method = request.method().clone();
    let mut response = match (&method, name.as_str()) {
        (&Method::GET, "") => page(console, &request, session, peer, now).await,
        (&Method::POST, "signin") => sign_in(console, hub, request, peer, now).await,
        (_, "api") => Err(ApiError::invalid("/console/api needs a REST path after it")),
        (_, api) if api.starts_with("api/") => proxy(rest, request, session).await,
        (&Method::POST, "signout") => sign_out(console, &request, session),
        (&Method::GET, "session") => describe(hub, session),
        (&Method::GET, "provisioning") => provisioning_view(hub, session),
        (&Method::GET, "events") => stream(console, hub, &request, session),
        (&Method::GET, file) => assets::file(file)
            .map(asset)
            .ok_or_else(|| not_found(&name)),
        _ => Err(not_found(&name)),
    }
    .unwrap_or_else(|error| {
        tracing::debug!(%method, path = name, code = error.code.name(), "console request refused");
        error_response(&error).map(BodyExt::boxed)
    });
    for (header, value) in assets::SECURITY_HEADERS {
        response
            .headers_mut()
            .insert(header, hyper::header::HeaderValue::from_static(value));
    }
    response
}

/// A request's signed-in session.
struct SignedIn {
    /// The session id (the cookie's value).
    id: Secret,
    /// The session.
    session: Session,
    /// Its shared access policy, whose permissions the console has.
    policy: PolicyRecord,
}

/// The signed-in session of the request's cookie, with its policy.
fn session_of(
    console: &Console,
    hub: &Hub,
    headers: &hyper::HeaderMap,
    now: u64,
) -> Option<SignedIn> {
    let id = headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| auth::cookie(v, auth::COOKIE))?;
    let session = console.sessions.get(id, now)?;
    let policy = hub
        .policies()
        .iter()
        .find(|p| p.name == session.policy)?
        .clone();
    Some(SignedIn {
        id: Secret::new(id),
        session,
        policy,
    })
}

/// The session, or 401.
fn signed_in(session: Option<SignedIn>) -> Result<SignedIn, ApiError> {
    session.ok_or_else(not_signed_in)
}

fn not_signed_in() -> ApiError {
    ApiError::new(
        ErrorCode::IotHubUnauthorizedAccess,
        "not signed in to the console (or the session expired): sign in again",
    )
}

/// `GET /console/`: the link's token signs in (once) and redirects to a clean URL; then the
/// console for a signed-in browser, the sign-in page for any other.
async fn page(
    console: &Console,
    request: &hyper::Request<Incoming>,
    session: Option<SignedIn>,
    peer: IpAddr,
    now: u64,
) -> Result<hyper::Response<Body>, ApiError> {
    let query = query_pairs(request.uri().query().unwrap_or(""));
    if let Some(token) = query.get("token") {
        return Ok(match console.sessions.sign_in_with_link(token, now) {
            Ok(started) => signed_in_redirect(&started),
            Err(error) => match refused(console, peer, &error).await {
                Some(throttled) => throttled,
                None => redirect(&format!("{PREFIX}/#{}", urlencode(&error.to_string()))),
            },
        });
    }
    Ok(asset(if session.is_some() {
        assets::APP
    } else {
        assets::SIGN_IN
    }))
}

/// `POST /console/signin` with `{"connectionString": ...}` (JSON, so that a cross-site form
/// cannot send it): starts a session with that string's policy.
async fn sign_in(
    console: &Console,
    hub: &Hub,
    request: hyper::Request<Incoming>,
    peer: IpAddr,
    now: u64,
) -> Result<hyper::Response<Body>, ApiError> {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if !header("content-type").starts_with("application/json")
        || !matches!(header("sec-fetch-site").as_str(), "" | "same-origin")
    {
        return Err(ApiError::invalid(
            "sign in from the console's own sign-in page (a JSON body from the same origin)",
        ));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SignIn {
        connection_string: Secret,
    }
    let body = read_body(request.into_body(), MAX_SIGN_IN_BODY)
        .await
        .ok_or_else(|| ApiError::invalid("the sign-in body is too large or too slow"))?;
    let SignIn { connection_string } = serde_json::from_slice(&body).map_err(|_| {
        ApiError::invalid("the sign-in body must be {\"connectionString\": \"...\"}")
    })?;
    let started = match console.sessions.sign_in_with_connection_string(
        connection_string.expose(),
        hub.host_name(),
        hub.policies(),
        now,
    ) {
        Ok(started) => started,
        Err(error) => {
            if let Some(throttled) = refused(console, peer, &error).await {
                return Ok(throttled);
            }
            let code = match error {
                SignInError::Unauthorized => ErrorCode::IotHubUnauthorizedAccess,
                _ => ErrorCode::ArgumentInvalid,
            };
            return Err(ApiError::new(code, error.to_string()));
        }
    };
    tracing::info!(policy = started.session.policy, "console signed in");
    let mut response = empty(StatusCode::NO_CONTENT);
    set_cookie(&mut response, &auth::set_cookie(&started.id));
    Ok(response)
}

/// Counts a failed sign-in from `peer`: logs it if it is the first in a while (and schedules the
/// counted report of those after it), and past the address's or the hub's allowance holds the
/// answer and returns the 429 to send instead of the refusal.
async fn refused(
    console: &Console,
    peer: IpAddr,
    error: &SignInError,
) -> Option<hyper::Response<Body>> {
    let failure = console.throttle.fail(peer, Instant::now());
    if failure.opens_report {
        tracing::info!(%peer, reason = %error, "console sign-in refused");
        let throttle = console.throttle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(throttle::REPORT_INTERVAL).await;
                let Some(refused) = throttle.take_report() else {
                    break;
                };
                tracing::info!(
                    refused,
                    seconds = throttle::REPORT_INTERVAL.as_secs(),
                    "console sign-ins refused meanwhile"
                );
            }
        });
    }
    if failure.hold.is_zero() {
        return None;
    }
    tokio::time::sleep(failure.hold).await;
    let retry_after = failure.hold.as_secs().max(1);
    let error = ApiError::new(
        ErrorCode::ThrottlingException,
        format!(
            "too many failed console sign-ins from this address or on this hub: the right key \
             still signs in at once, wrong ones are answered more slowly (retry in {retry_after} s)"
        ),
    );
    let mut response = error_response(&error).map(BodyExt::boxed);
    response
        .headers_mut()
        .insert(hyper::header::RETRY_AFTER, retry_after.into());
    Some(response)
}

/// `POST /console/signout`: ends the session and, at once, its event streams.
fn sign_out(
    console: &Console,
    request: &hyper::Request<Incoming>,
    session: Option<SignedIn>,
) -> Result<hyper::Response<Body>, ApiError> {
    let SignedIn { id, session, .. } = signed_in(session)?;
    check_csrf(request, &session)?;
    console.sessions.end(id.expose());
    let mut response = empty(StatusCode::NO_CONTENT);
    set_cookie(&mut response, &auth::clear_cookie());
    Ok(response)
}

/// `GET /console/session`: the policy, its permissions and the CSRF token, for the front end.
fn describe(hub: &Hub, session: Option<SignedIn>) -> Result<hyper::Response<Body>, ApiError> {
    let SignedIn {
        session, policy, ..
    } = signed_in(session)?;
    let body = serde_json::json!({
        "hostName": hub.host_name(),
        "policy": policy.name,
        "permissions": policy.permissions,
        "csrfToken": session.csrf.expose(),
    });
    Ok(json(&body))
}

/// `GET /console/provisioning`: the Device Provisioning Service's enrollments and registrations
/// ([`provisioning`]), to a session whose policy has `RegistryRead`.
fn provisioning_view(
    hub: &Hub,
    session: Option<SignedIn>,
) -> Result<hyper::Response<Body>, ApiError> {
    let SignedIn { policy, .. } = signed_in(session)?;
    if !grants(&policy, Permission::RegistryRead) {
        return Err(ApiError::new(
            ErrorCode::IotHubUnauthorizedAccess,
            format!(
                "the policy '{}' lacks RegistryRead, which the provisioning page needs",
                policy.name
            ),
        ));
    }
    let view = hub.read(|tx| Ok(provisioning::read(tx)?))?;
    Ok(json(&view))
}

/// `/console/api/{REST path}`: the hub's REST API as the session's policy.
async fn proxy(
    rest: &rest::State,
    mut request: hyper::Request<Incoming>,
    session: Option<SignedIn>,
) -> Result<hyper::Response<Body>, ApiError> {
    let SignedIn {
        session, policy, ..
    } = signed_in(session)?;
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        check_csrf(&request, &session)?;
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("")
        .strip_prefix("/console/api")
        .unwrap_or("")
        .to_owned();
    *request.uri_mut() = path_and_query
        .parse()
        .map_err(|_| ApiError::invalid("the REST path after /console/api is not a valid URI"))?;
    let response = serve_request(rest, request, move |_, _| Ok(Caller::Policy(policy))).await;
    Ok(response.map(BodyExt::boxed))
}

/// `GET /console/events?deviceId=&moduleId=`: messages (with `ServiceConnect`) and connection
/// state (with `RegistryRead`) as server-sent events.
fn stream(
    console: &Console,
    hub: &Arc<Hub>,
    request: &hyper::Request<Incoming>,
    session: Option<SignedIn>,
) -> Result<hyper::Response<Body>, ApiError> {
    let SignedIn {
        id,
        session,
        policy,
    } = signed_in(session)?;
    let query = query_pairs(request.uri().query().unwrap_or(""));
    let resume = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.get("after").map(String::as_str))
        .map(|after| {
            after
                .parse::<u64>()
                .map_err(|_| ApiError::invalid(format!("after '{after}' is not a sequence number")))
        })
        .transpose()?;
    let messages = query.get("deviceId").map(|device_id| MessageFilter {
        device_id: Some(device_id.clone()),
        module_id: query.get("moduleId").cloned(),
        output: None,
        after: resume.unwrap_or_else(|| u64::try_from(*hub.logged_head().borrow()).unwrap_or(0)),
    });
    if messages.is_some() && !grants(&policy, Permission::ServiceConnect) {
        return Err(rest::permission_missing(
            &policy,
            Permission::ServiceConnect,
        ));
    }
    let connections = grants(&policy, Permission::RegistryRead);
    let slot = console
        .streams
        .take(id.expose(), &policy.name)
        .map_err(|full| ApiError::new(ErrorCode::ThrottlingException, full.to_string()))?;
    let session_end = console
        .sessions
        .watch_end(id.expose())
        .ok_or_else(not_signed_in)?;
    let body = events::start(
        hub.clone(),
        events::StreamRequest {
            messages,
            connections,
        },
        slot,
        session_end,
        Duration::from_secs(session.seconds_left(ids::now_unix())),
    );
    Ok(hyper::Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| empty(StatusCode::INTERNAL_SERVER_ERROR)))
}

/// Refuses a mutating request without the session's CSRF token.
fn check_csrf(request: &hyper::Request<Incoming>, session: &Session) -> Result<(), ApiError> {
    let header = request
        .headers()
        .get(auth::CSRF_HEADER)
        .and_then(|v| v.to_str().ok());
    if auth::csrf_matches(session, header) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::IotHubUnauthorizedAccess,
        format!(
            "the {} header is missing or not this session's",
            auth::CSRF_HEADER
        ),
    ))
}

fn signed_in_redirect(started: &Started) -> hyper::Response<Body> {
    tracing::info!(policy = started.session.policy, "console signed in by link");
    let mut response = redirect(&format!("{PREFIX}/"));
    set_cookie(&mut response, &auth::set_cookie(&started.id));
    response
}

fn set_cookie(response: &mut hyper::Response<Body>, value: &str) {
    if let Ok(value) = hyper::header::HeaderValue::from_str(value) {
        response
            .headers_mut()
            .insert(hyper::header::SET_COOKIE, value);
    }
}

fn redirect(location: &str) -> hyper::Response<Body> {
    let mut response = empty(StatusCode::SEE_OTHER);
    if let Ok(value) = hyper::header::HeaderValue::from_str(location) {
        response
            .headers_mut()
            .insert(hyper::header::LOCATION, value);
    }
    response
}

fn asset(asset: Asset) -> hyper::Response<Body> {
    hyper::Response::builder()
        .header("content-type", asset.content_type)
        .body(Full::new(Bytes::from_static(asset.body.as_bytes())).boxed())
        .unwrap_or_else(|_| empty(StatusCode::INTERNAL_SERVER_ERROR))
}

fn json(body: &serde_json::Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| empty(StatusCode::INTERNAL_SERVER_ERROR))
}

fn empty(status: StatusCode) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = status;
    response
}

fn not_found(name: &str) -> ApiError {
    ApiError::invalid(format!("/console/{name} is not a console page"))
}

/// Percent-encodes `text` for a URL fragment.
fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
