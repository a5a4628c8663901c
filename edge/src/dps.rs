//! Provisioning through the Device Provisioning Service at start, as aziot-identityd does with
//! `[provisioning] source = "dps"` (Azure/iot-identity-service, the DPS client of
//! `aziot-cloud-client-async`, `dps/src/lib.rs`): `PUT {global_endpoint}/{idScope}/registrations/
//! {registrationId}/register` with body `{"registrationId"}` and a SAS token for the audience
//! `{idScope}/registrations/{registrationId}` signed with the device's (derived) key and no
//! `skn`, then `GET …/operations/{operationId}` until the status is no longer `assigning`; the
//! answer's `assignedHub` and `deviceId` with the same key are then the device's identity, as
//! manual provisioning gives it.
//!
//! Differences from aziot, on purpose: the poll waits the `retry-after` DPS answers (aziot waits
//! a fixed 10 s); connection errors, 5xx and 429 are retried with backoff for as long as it
//! takes (the runtime is a daemon) where aziot gives up after its `req_retries`; an assignment
//! still `assigning` after [`ASSIGNMENT_TIMEOUT`] (aziot's 120 s) registers again.
//!
//! The assignment is cached in the data directory ([`CACHE_FILE`], mode 0600), as aziot keeps
//! its `device_info` in its home directory: a restart with the same `global_endpoint`,
//! `id_scope` and `registration_id` reuses it without registering; delete the file (or change
//! one of those) to register again. The key is never written there.
//!
//! Pure and unit-tested with explicit time: the requests, the interpretation of answers and the
//! plan of calls ([`Planner`]). I/O: [`provision`] over [`crate::http`].

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgetwin_wire::dps::{
    registration_resource, DeviceRegistration, RegistrationOperationStatus, DEVICE_API_VERSION,
};
use edgetwin_wire::Secret;
use hyper::{Method, Request};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{DeviceCredentials, DpsProvisioning};

/// The assignment cache in the data directory.
pub const CACHE_FILE: &str = "dps_assignment.json";
/// How long an operation may stay `assigning` before registering again (aziot's
/// `DPS_ASSIGNMENT_TIMEOUT_SECS`).
pub const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The wait between polls when DPS answers no `retry-after` (the device SDKs' default).
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// The longest wait between attempts after transient failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one HTTPS exchange may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The lifetime of a registration token.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Where DPS assigned the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// `assignedHub`.
    pub assigned_hub: String,
    /// `deviceId`.
    pub device_id: String,
}

/// The cache file's content: the assignment and what it was made for.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cache {
    global_endpoint: String,
    id_scope: String,
    registration_id: String,
    #[serde(flatten)]
    assignment: Assignment,
}

/// The cache file's text for `assignment` of `dps`.
pub fn cache_text(dps: &DpsProvisioning, assignment: &Assignment) -> String {
    let cache = Cache {
        global_endpoint: dps.global_endpoint.clone(),
        id_scope: dps.id_scope.clone(),
        registration_id: dps.registration_id.clone(),
        assignment: assignment.clone(),
    };
    serde_json::to_string_pretty(&cache).unwrap_or_default()
}

/// The cached assignment, if `text` is one made for `dps`'s endpoint, scope and registration.
pub fn cached_assignment(dps: &DpsProvisioning, text: &str) -> Option<Assignment> {
    let cache: Cache = serde_json::from_str(text).ok()?;
    (cache.global_endpoint == dps.global_endpoint
        && cache.id_scope == dps.id_scope
        && cache.registration_id == dps.registration_id
        && !cache.assignment.assigned_hub.is_empty()
        && !cache.assignment.device_id.is_empty())
    .then_some(cache.assignment)
}

/// The device identity an assignment gives: the assigned hub and device id with the key the
/// device registered with.
pub fn credentials(dps: &DpsProvisioning, assignment: &Assignment) -> DeviceCredentials {
    DeviceCredentials {
        iothub_hostname: assignment.assigned_hub.clone(),
        device_id: assignment.device_id.clone(),
        key: dps.key.clone(),
    }
}

/// A call to DPS's device API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `PUT …/register`.
    Register,
    /// `GET …/operations/{operationId}`.
    Poll(String),
}

impl Call {
    /// The method, the path and query, and the JSON body of the call for `dps`.
    pub fn request(&self, dps: &DpsProvisioning) -> (Method, String, Option<Value>) {
        let base = format!(
            "/{}/registrations/{}",
            enc(&dps.id_scope),
            enc(&dps.registration_id)
        );
        match self {
            Call::Register => {
                let body = DeviceRegistration {
                    registration_id: Some(dps.registration_id.clone()),
                    payload: None,
                };
                (
                    Method::PUT,
                    format!("{base}/register?api-version={DEVICE_API_VERSION}"),
                    serde_json::to_value(body).ok(),
                )
            }
            Call::Poll(operation_id) => (
                Method::GET,
                format!(
                    "{base}/operations/{}?api-version={DEVICE_API_VERSION}",
                    enc(operation_id)
                ),
                None,
            ),
        }
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The registration token valid until `expiry` (Unix seconds): audience
/// `{idScope}/registrations/{registrationId}`, no `skn` (the key is the device's own, derived
/// or individual, as aziot signs it).
pub fn token(dps: &DpsProvisioning, expiry: u64) -> Secret {
    let resource = registration_resource(&dps.id_scope, &dps.registration_id);
    edgetwin_wire::sas::generate_token(&dps.key, &resource, expiry, None)
        .unwrap_or_else(|_| Secret::new(String::new()))
}

/// What one answer of DPS means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device is assigned.
    Assigned(Assignment),
    /// Still `assigning`: poll this operation after the wait DPS asked for, if it did.
    Assigning {
        /// The operation to poll.
        operation_id: String,
        /// `retry-after`.
        retry_after: Option<Duration>,
    },
    /// Worth trying again: the connection failed, 5xx, 429.
    Transient {
        /// `retry-after`, if DPS gave one.
        retry_after: Option<Duration>,
        /// What happened, for the log.
        reason: String,
    },
    /// DPS refused, or the registration ended `failed` or `disabled`: what DPS said.
    Refused(String),
}

/// Interprets an answer: HTTP `status`, its `retry-after` header and body.
pub fn interpret(status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    let retry_after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if status == 429 || status >= 500 {
        return Outcome::Transient {
            retry_after,
            reason: format!("{status}{}", error_text(json.as_ref(), body)),
        };
    }
    if !(200..300).contains(&status) {
        return Outcome::Refused(format!("{status}{}", error_text(json.as_ref(), body)));
    }
    let answer = match json.map(serde_json::from_value::<RegistrationOperationStatus>) {
        Some(Ok(answer)) => answer,
        _ => {
            return Outcome::Refused(format!(
                "{status} with a body that is not a registration operation status: {}",
                String::from_utf8_lossy(body)
            ))
        }
    };
    let state = answer.registration_state.as_ref();
    match answer.status.as_str() {
        "assigned" => {
            match state.and_then(|s| Some((s.assigned_hub.clone()?, s.device_id.clone()?))) {
                Some((assigned_hub, device_id)) => Outcome::Assigned(Assignment {
                    assigned_hub,
                    device_id,
                }),
                None => Outcome::Refused(
                    "status assigned without registrationState.assignedHub and deviceId".to_owned(),
                ),
            }
        }
        "assigning" | "unassigned" => Outcome::Assigning {
            operation_id: answer.operation_id,
            retry_after,
        },
        other => {
            let mut text = format!("status {other}");
            if let Some(state) = state {
                if let Some(sub) = &state.substatus {
                    text.push_str(&format!(" ({sub})"));
                }
                if let Some(code) = state.error_code {
                    text.push_str(&format!(", errorCode {code}"));
                }
                if let Some(message) = &state.error_message {
                    text.push_str(&format!(": {message}"));
                }
            }
            Outcome::Refused(text)
        }
    }
}

/// `, errorCode N: message` from DPS's error body, or the body as text.
fn error_text(json: Option<&Value>, body: &[u8]) -> String {
    let Some(json) = json else {
        let text = String::from_utf8_lossy(body);
        return if text.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", text.trim())
        };
    };
    let mut text = String::new();
    if let Some(code) = json.get("errorCode") {
        text.push_str(&format!(", errorCode {code}"));
    }
    if let Some(message) = json
        .get("message")
        .or_else(|| json.get("Message"))
        .and_then(Value::as_str)
    {
        text.push_str(&format!(": {message}"));
    }
    text
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Make `call` after waiting `after`.
    Call {
        /// The call.
        call: Call,
        /// The wait before it.
        after: Duration,
    },
    /// Done: the device is assigned.
    Assigned(Assignment),
    /// Give up: what DPS said.
    Refused(String),
}

/// The plan of calls from the first registration to an assignment, with time given explicitly
/// (the time since any fixed instant).
#[derive(Debug, Default)]
pub struct Planner {
    /// Transient failures in a row.
    failures: u32,
    /// When the current operation was first seen `assigning`.
    assigning_since: Option<Duration>,
}

impl Planner {
    /// The first call: register now.
    pub fn first() -> Next {
        Next::Call {
            call: Call::Register,
            after: Duration::ZERO,
        }
    }

    /// The wait after `failures` transient failures in a row: 1 s, 2 s, 4 s, … up to
    /// [`MAX_BACKOFF`].
    pub fn backoff(failures: u32) -> Duration {
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF)
    }

    /// What to do after `call` had `outcome` at time `now`.
    pub fn next(&mut self, call: &Call, outcome: Outcome, now: Duration) -> Next {
        match outcome {
            Outcome::Assigned(assignment) => Next::Assigned(assignment),
            Outcome::Refused(message) => Next::Refused(message),
            Outcome::Assigning {
                operation_id,
                retry_after,
            } => {
                self.failures = 0;
                let since = *self.assigning_since.get_or_insert(now);
                if now.saturating_sub(since) >= ASSIGNMENT_TIMEOUT {
                    self.assigning_since = None;
                    self.failures = 1;
                    return Next::Call {
                        call: Call::Register,
                        after: Self::backoff(1),
                    };
                }
                Next::Call {
                    call: Call::Poll(operation_id),
                    after: retry_after.unwrap_or(DEFAULT_POLL).min(MAX_BACKOFF),
                }
            }
            Outcome::Transient { retry_after, .. } => {
                self.failures = self.failures.saturating_add(1);
                Next::Call {
                    call: call.clone(),
                    after: retry_after
                        .unwrap_or_else(|| Self::backoff(self.failures))
                        .min(MAX_BACKOFF),
                }
            }
        }
    }
}

/// Why DPS provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum DpsError {
    /// DPS refused the registration, or it ended failed or disabled.
    #[error(
        "DPS {endpoint} refused registration {registration_id} (id scope {id_scope}): {message}"
    )]
    Refused {
        /// `global_endpoint`.
        endpoint: String,
        /// `id_scope`.
        id_scope: String,
        /// `registration_id`.
        registration_id: String,
        /// What DPS said.
        message: String,
    },
    /// The assignment cannot be cached.
    #[error("cannot write the DPS assignment cache {path}")]
    Cache {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The device's identity: the cached assignment in `data_dir` if there is one for this
/// registration, else registers through DPS (trusting `trust_pem`'s CAs) and caches it.
pub async fn provision(
    dps: &DpsProvisioning,
    tls: TlsConnector,
    data_dir: &Path,
) -> Result<DeviceCredentials, DpsError> {
    let cache = data_dir.join(CACHE_FILE);
    if let Some(assignment) = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|text| cached_assignment(dps, &text))
    {
        tracing::info!(hub = %assignment.assigned_hub, device = %assignment.device_id,
            cache = %cache.display(), "DPS: using the cached assignment");
        return Ok(credentials(dps, &assignment));
    }
    let assignment = register(dps, tls).await?;
    tracing::info!(hub = %assignment.assigned_hub, device = %assignment.device_id,
        registration = %dps.registration_id, "DPS: assigned");
    write_private(&cache, &cache_text(dps, &assignment)).map_err(|source| DpsError::Cache {
        path: cache.display().to_string(),
        source,
    })?;
    Ok(credentials(dps, &assignment))
}

/// Registers and polls until DPS assigns the device or refuses it.
async fn register(dps: &DpsProvisioning, tls: TlsConnector) -> Result<Assignment, DpsError> {
    let start = Instant::now();
    let mut planner = Planner::default();
    let mut next = Planner::first();
    loop {
        let (call, after) = match next {
            Next::Call { call, after } => (call, after),
            Next::Assigned(assignment) => return Ok(assignment),
            Next::Refused(message) => {
                return Err(DpsError::Refused {
                    endpoint: dps.global_endpoint.clone(),
                    id_scope: dps.id_scope.clone(),
                    registration_id: dps.registration_id.clone(),
                    message,
                })
            }
        };
        tokio::time::sleep(after).await;
        let outcome = exchange(dps, &tls, &call).await;
        if let Outcome::Transient { reason, .. } = &outcome {
            tracing::warn!(endpoint = %dps.global_endpoint, %reason, "DPS: retrying");
        }
        next = planner.next(&call, outcome, start.elapsed());
    }
}

/// One call over a new TLS connection; transport failures are transient.
async fn exchange(dps: &DpsProvisioning, tls: &TlsConnector, call: &Call) -> Outcome {
    let transient = |reason: String| Outcome::Transient {
        retry_after: None,
        reason,
    };
    let (host, port) = host_port(&dps.global_endpoint);
    let authority = dps.global_endpoint.trim_start_matches("https://");
    let (method, path, body) = call.request(dps);
    let expiry = SystemTime::now()
        .checked_add(TOKEN_TTL)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let attempt = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let request = Request::builder()
            .method(method)
            .uri(path.as_str())
            .header("Host", authority)
            .header("Authorization", token(dps, expiry).expose())
            .header(
                "User-Agent",
                format!("edgetwin-edge/{}", env!("CARGO_PKG_VERSION")),
            );
        crate::http::exchange_with_headers(stream, request, body.as_ref()).await
    };
    match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
        Err(_) => transient(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
        Ok(Err(reason)) => transient(reason),
        Ok(Ok((status, headers, bytes))) => interpret(
            status.as_u16(),
            headers.get("retry-after").and_then(|v| v.to_str().ok()),
            &bytes,
        ),
    }
}

/// The host and port of `global_endpoint` (`https://host[:port]`, 443 by default; an IPv6
/// address in brackets).
pub fn host_port(global_endpoint: &str) -> (String, u16) {
    let authority = global_endpoint.trim_start_matches("https://");
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().unwrap_or(443)),
        _ => (authority, 443),
    };
    (
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    )
}

/// Writes `text` to `path` with mode 0600 (replacing it).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn dps() -> DpsProvisioning {
        DpsProvisioning {
            global_endpoint: "https://localhost:8443".into(),
            id_scope: "0ne0000ABCD".into(),
            registration_id: "pi-1".into(),
            key: Secret::new(KEY.to_owned()),
        }
    }

    #[test]
    fn requests_are_aziots_register_and_operation_status() {
        let (method, path, body) = Call::Register.request(&dps());
        assert_eq!(method, Method::PUT);
        assert_eq!(
            path,
            "/0ne0000ABCD/registrations/pi%2D1/register?api-version=2019-03-31"
        );
        assert_eq!(body, Some(serde_json::json!({ "registrationId": "pi-1" })));
        let (method, path, body) = Call::Poll("4.abc".into()).request(&dps());
        assert_eq!(method, Method::GET);
        assert_eq!(
            path,
            "/0ne0000ABCD/registrations/pi%2D1/operations/4%2Eabc?api-version=2019-03-31"
        );
        assert_eq!(body, None);
    }

    #[test]
    fn the_token_names_the_registration_signed_with_the_device_key_without_skn() {
        let token = token(&dps(), 1_700_000_000);
        let token = token.expose();
        assert!(
            token.starts_with("SharedAccessSignature sr=0ne0000ABCD%2Fregistrations%2Fpi-1&sig="),
            "{token}"
        );
        assert!(token.ends_with("&se=1700000000"), "{token}");
        assert!(!token.contains("skn="), "{token}");
        let sig = edgetwin_wire::sas::sign_string(
            &edgetwin_wire::sas::decode_key(KEY).unwrap(),
            "0ne0000ABCD%2Fregistrations%2Fpi-1\n1700000000",
        );
        assert!(
            token.contains(&utf8_percent_encode(&sig, NON_ALPHANUMERIC).to_string()),
            "{token}"
        );
    }

    #[test]
    fn answers_are_interpreted_as_dps_gives_them() {
        let assigning = br#"{"operationId":"op","status":"assigning"}"#;
        assert_eq!(
            interpret(202, Some("3"), assigning),
            Outcome::Assigning {
                operation_id: "op".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        let assigned = br#"{"operationId":"op","status":"assigned","registrationState":{"registrationId":"pi-1","status":"assigned","assignedHub":"hub.local","deviceId":"pi-1"}}"#;
        assert_eq!(
            interpret(200, None, assigned),
            Outcome::Assigned(Assignment {
                assigned_hub: "hub.local".into(),
                device_id: "pi-1".into()
            })
        );
        let disabled = br#"{"operationId":"op","status":"disabled","registrationState":{"registrationId":"pi-1","status":"disabled","errorCode":401005,"errorMessage":"enrollment disabled"}}"#;
        assert_eq!(
            interpret(200, None, disabled),
            Outcome::Refused("status disabled, errorCode 401005: enrollment disabled".into())
        );
        let unauthorized =
            br#"{"errorCode":401002,"trackingId":"t","message":"Unauthorized","timestampUtc":"x"}"#;
        assert_eq!(
            interpret(401, None, unauthorized),
            Outcome::Refused("401, errorCode 401002: Unauthorized".into())
        );
        assert_eq!(
            interpret(429, Some("7"), b""),
            Outcome::Transient {
                retry_after: Some(Duration::from_secs(7)),
                reason: "429".into()
            }
        );
        assert!(matches!(
            interpret(503, None, b"busy"),
            Outcome::Transient { retry_after: None, reason } if reason == "503: busy"
        ));
        assert!(matches!(interpret(200, None, b"{}"), Outcome::Refused(_)));
        assert!(matches!(
            interpret(200, None, br#"{"operationId":"op","status":"assigned"}"#),
            Outcome::Refused(m) if m.contains("without registrationState")
        ));
    }

    #[test]
    fn the_plan_polls_as_asked_backs_off_on_transient_failures_and_reregisters_after_the_timeout() {
        let mut plan = Planner::default();
        assert_eq!(
            Planner::first(),
            Next::Call {
                call: Call::Register,
                after: Duration::ZERO
            }
        );
        let transient = || Outcome::Transient {
            retry_after: None,
            reason: "refused".into(),
        };
        let secs = Duration::from_secs;
        let waits: Vec<_> = (0..8)
            .map(|i| match plan.next(&Call::Register, transient(), secs(i)) {
                Next::Call { call, after } => {
                    assert_eq!(call, Call::Register);
                    after.as_secs()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        let assigning = |retry_after| Outcome::Assigning {
            operation_id: "op".into(),
            retry_after,
        };
        assert_eq!(
            plan.next(&Call::Register, assigning(Some(secs(1))), secs(10)),
            Next::Call {
                call: Call::Poll("op".into()),
                after: secs(1)
            }
        );
        let poll = Call::Poll("op".into());
        assert_eq!(
            plan.next(&poll, transient(), secs(11)),
            Next::Call {
                call: poll.clone(),
                after: secs(1)
            },
            "a failed poll polls again, the backoff starting over after a good answer"
        );
        assert_eq!(
            plan.next(&poll, assigning(None), secs(12)),
            Next::Call {
                call: poll.clone(),
                after: DEFAULT_POLL
            }
        );
        assert_eq!(
            plan.next(&poll, assigning(None), secs(130)),
            Next::Call {
                call: Call::Register,
                after: secs(1)
            },
            "still assigning 120 s after the first answer: register again"
        );
        assert_eq!(
            plan.next(&poll, Outcome::Refused("401".into()), secs(131)),
            Next::Refused("401".into())
        );
    }

    #[test]
    fn the_cache_is_reused_only_for_the_same_endpoint_scope_and_registration() {
        let assignment = Assignment {
            assigned_hub: "hub.local".into(),
            device_id: "pi-1".into(),
        };
        let text = cache_text(&dps(), &assignment);
        assert!(!text.contains(KEY), "{text}");
        assert_eq!(cached_assignment(&dps(), &text), Some(assignment.clone()));
        let other = DpsProvisioning {
            registration_id: "pi-2".into(),
            ..dps()
        };
        assert_eq!(cached_assignment(&other, &text), None);
        assert_eq!(cached_assignment(&dps(), "not json"), None);
        let device = credentials(&dps(), &assignment);
        assert_eq!(
            (device.iothub_hostname.as_str(), device.device_id.as_str()),
            ("hub.local", "pi-1")
        );
        assert_eq!(device.key.expose(), KEY);
    }

    #[test]
    fn the_endpoint_gives_host_and_port() {
        assert_eq!(host_port("https://localhost"), ("localhost".into(), 443));
        assert_eq!(
            host_port("https://localhost:8443"),
            ("localhost".into(), 8443)
        );
        assert_eq!(host_port("https://[::1]:8443"), ("::1".into(), 8443));
        assert_eq!(host_port("https://[::1]"), ("::1".into(), 443));
    }
}
