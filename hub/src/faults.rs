//! Faults on demand, for testing clients against the failures real networks and IoT Hub produce:
//! dropped connections, refused connects, tokens that expire early, throttling (429 with
//! `Retry-After`), server errors (500, 503) and slow responses. Set through `/edgetwin/faults/*`;
//! all off by default.
//!
//! Door state shared by REST and MQTT (never the hub's): depends on the error type only.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgetwin_wire::rest::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Answer chosen operations with 429 a number of times.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// Operation prefix, e.g. `PUT /devices`, `POST /devices`, `MQTT twin/GET`, `MQTT twin/PATCH`,
    /// `MQTT messages/events` (telemetry and module outputs).
    pub operation: String,
    /// How many matching requests to throttle.
    pub count: u32,
    /// The `Retry-After` to send, in seconds.
    #[serde(default = "one")]
    pub retry_after_seconds: u32,
}

/// Answer chosen operations with a server error a number of times: what IoT Hub answers when it
/// fails on its side (500 `ServerError`) or is briefly unavailable (503 `ServiceUnavailable`),
/// which device SDKs retry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerError {
    /// Operation prefix, as for [`Throttle`].
    pub operation: String,
    /// How many matching requests to fail.
    pub count: u32,
    /// 500 or 503.
    #[serde(default = "five_hundred")]
    pub status: u16,
}

impl ServerError {
    /// The error answered, or why `status` cannot be injected.
    pub fn error(&self) -> Result<ApiError, ApiError> {
        let code = match self.status {
            500 => ErrorCode::ServerError,
            503 => ErrorCode::ServiceUnavailable,
            other => {
                return Err(ApiError::invalid(format!(
                    "status {other}: a server error fault is 500 (ServerError) or 503 \
                     (ServiceUnavailable)"
                )))
            }
        };
        Ok(ApiError::new(code, "server error (injected fault)"))
    }
}

/// What an operation is answered instead, by an injected fault.
#[derive(Debug, PartialEq, Eq)]
pub enum Injected {
    /// 429, with `Retry-After` in seconds.
    Throttled {
        /// The `Retry-After` seconds.
        retry_after: u32,
    },
    /// A server error.
    Failed(ApiError),
}

impl Injected {
    /// The error to answer.
    pub fn error(&self) -> ApiError {
        match self {
            Injected::Throttled { .. } => {
                ApiError::new(ErrorCode::ThrottlingException, "throttled (injected fault)")
            }
            Injected::Failed(error) => error.clone(),
        }
    }
}

/// Delay chosen operations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    /// REST operation prefix (`GET /devices`, ...; delays apply to REST requests only); empty
    /// matches every request.
    #[serde(default)]
    pub operation: String,
    /// The delay.
    pub milliseconds: u64,
}

fn one() -> u32 {
    1
}

fn five_hundred() -> u16 {
    500
}

/// A fault that answers a number of matching operations.
trait Counted {
    fn operation(&self) -> &str;
    fn count(&mut self) -> &mut u32;
}

impl Counted for Throttle {
    fn operation(&self) -> &str {
        &self.operation
    }
    fn count(&mut self) -> &mut u32 {
        &mut self.count
    }
}

impl Counted for ServerError {
    fn operation(&self) -> &str {
        &self.operation
    }
    fn count(&mut self) -> &mut u32 {
        &mut self.count
    }
}

/// The first fault of `faults` matching `operation`, one use consumed (removed at its last).
fn take<T: Counted + Clone>(faults: &mut Vec<T>, operation: &str) -> Option<T> {
    let index = faults
        .iter()
        .position(|f| operation.starts_with(f.operation()))?;
    let fault = faults[index].clone();
    let count = faults[index].count();
    *count = count.saturating_sub(1);
    if *count == 0 {
        faults.remove(index);
    }
    Some(fault)
}

/// The faults in force, as `GET /edgetwin/faults` shows them.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultReport {
    /// Seconds during which CONNECTs are still refused with CONNACK 3.
    pub refuse_connects_seconds: u64,
    /// Longest life given to new connections, in seconds, whatever their token says.
    pub token_lifetime_seconds: Option<u64>,
    /// Pending throttles.
    pub throttles: Vec<Throttle>,
    /// Pending server errors.
    pub server_errors: Vec<ServerError>,
    /// Delays.
    pub delays: Vec<Delay>,
}

/// The fault state.
#[derive(Default)]
pub struct Faults {
    /// Everything, behind one lock (faults are rare and cheap to check).
    state: Mutex<State>,
}

/// The mutable part of [`Faults`].
#[derive(Default)]
struct State {
    /// Refuse CONNECT until then.
    refuse_connects_until: Option<Instant>,
    /// Cap on a new connection's life.
    token_lifetime: Option<Duration>,
    /// Pending throttles.
    throttles: Vec<Throttle>,
    /// Pending server errors.
    server_errors: Vec<ServerError>,
    /// Delays.
    delays: Vec<Delay>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuse CONNECTs (CONNACK 3, server unavailable) for `duration`.
    pub fn refuse_connects_for(&self, duration: Duration) {
        self.lock().refuse_connects_until = Some(Instant::now() + duration);
    }

    /// Whether a CONNECT must be refused now.
    pub fn refuses_connects(&self) -> bool {
        self.lock()
            .refuse_connects_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Caps the life of new connections (`None` lifts the cap).
    pub fn set_token_lifetime(&self, lifetime: Option<Duration>) {
        self.lock().token_lifetime = lifetime;
    }

    /// How long a new connection whose token is valid for `token_life` may live.
    pub fn connection_life(&self, token_life: Duration) -> Duration {
        self.lock()
            .token_lifetime
            .map_or(token_life, |cap| cap.min(token_life))
    }

    /// Adds a throttle.
    pub fn add_throttle(&self, throttle: Throttle) {
        self.lock().throttles.push(throttle);
    }

    /// Adds a server error fault, or says why its status cannot be injected.
    pub fn add_server_error(&self, fault: ServerError) -> Result<(), ApiError> {
        fault.error()?;
        self.lock().server_errors.push(fault);
        Ok(())
    }

    /// Adds a delay.
    pub fn add_delay(&self, delay: Delay) {
        self.lock().delays.push(delay);
    }

    /// If a fault answers `operation` now (a throttle first, then a server error), consumes one
    /// use of it and returns what to answer.
    pub fn take(&self, operation: &str) -> Option<Injected> {
        let mut state = self.lock();
        if let Some(throttle) = take(&mut state.throttles, operation) {
            return Some(Injected::Throttled {
                retry_after: throttle.retry_after_seconds,
            });
        }
        let fault = take(&mut state.server_errors, operation)?;
        fault.error().ok().map(Injected::Failed)
    }

    /// The delay to apply to `operation`, if any.
    pub fn delay_for(&self, operation: &str) -> Option<Duration> {
        self.lock()
            .delays
            .iter()
            .find(|d| operation.starts_with(&d.operation))
            .map(|d| Duration::from_millis(d.milliseconds))
    }

    /// Lifts every fault.
    pub fn clear(&self) {
        *self.lock() = State::default();
    }

    /// What is in force.
    pub fn report(&self) -> FaultReport {
        let state = self.lock();
        FaultReport {
            refuse_connects_seconds: state.refuse_connects_until.map_or(0, |until| {
                until.saturating_duration_since(Instant::now()).as_secs()
            }),
            token_lifetime_seconds: state.token_lifetime.map(|d| d.as_secs()),
            throttles: state.throttles.clone(),
            server_errors: state.server_errors.clone(),
            delays: state.delays.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_answers_its_count_of_matching_operations_then_lifts() {
        let faults = Faults::default();
        faults.add_throttle(Throttle {
            operation: "PUT /devices".into(),
            count: 2,
            retry_after_seconds: 3,
        });
        let throttled = Some(Injected::Throttled { retry_after: 3 });
        assert_eq!(faults.take("GET /devices/d1"), None);
        assert_eq!(faults.take("PUT /devices/d1"), throttled);
        assert_eq!(faults.take("PUT /devices/d2"), throttled);
        assert_eq!(faults.take("PUT /devices/d3"), None);
    }

    #[test]
    fn a_server_error_answers_its_count_after_any_throttle_and_only_500_or_503_is_taken() {
        let faults = Faults::default();
        let fault = |status| ServerError {
            operation: "MQTT twin/GET".into(),
            count: 1,
            status,
        };
        let refused = faults.add_server_error(fault(502)).unwrap_err();
        assert!(refused.message.contains("502"), "{}", refused.message);
        faults.add_server_error(fault(503)).unwrap();
        faults.add_throttle(Throttle {
            operation: "MQTT twin/".into(),
            count: 1,
            retry_after_seconds: 1,
        });
        assert_eq!(
            faults.take("MQTT twin/GET"),
            Some(Injected::Throttled { retry_after: 1 })
        );
        let failed = faults.take("MQTT twin/GET").unwrap().error();
        assert_eq!(failed.code, ErrorCode::ServiceUnavailable);
        assert_eq!(failed.code.http_status(), 503);
        assert_eq!(faults.take("MQTT twin/GET"), None);
        assert!(faults.report().server_errors.is_empty());
    }

    #[test]
    fn the_token_lifetime_cap_shortens_but_never_lengthens_a_connection() {
        let faults = Faults::default();
        assert_eq!(
            faults.connection_life(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        faults.set_token_lifetime(Some(Duration::from_secs(5)));
        assert_eq!(
            faults.connection_life(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        assert_eq!(
            faults.connection_life(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        faults.clear();
        assert!(!faults.refuses_connects());
        assert_eq!(
            faults.connection_life(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
