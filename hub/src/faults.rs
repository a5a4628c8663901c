//! Faults on demand, for testing clients against the failures real networks and IoT Hub produce:
//! dropped connections, refused connects, tokens that expire early, throttling (429 with
//! `Retry-After`) and slow responses. Set through `/edgetwin/faults/*`; all off by default.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Answer chosen operations with 429 a number of times.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// Operation prefix, e.g. `PUT /devices`, `POST /devices`, `MQTT twin/GET`, `MQTT twin/PATCH`.
    pub operation: String,
    /// How many matching requests to throttle.
    pub count: u32,
    /// The `Retry-After` to send, in seconds.
    #[serde(default = "one")]
    pub retry_after_seconds: u32,
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

    /// Adds a delay.
    pub fn add_delay(&self, delay: Delay) {
        self.lock().delays.push(delay);
    }

    /// If `operation` is throttled now, consumes one use and returns the `Retry-After` seconds.
    pub fn take_throttle(&self, operation: &str) -> Option<u32> {
        let mut state = self.lock();
        let index = state
            .throttles
            .iter()
            .position(|t| operation.starts_with(&t.operation))?;
        let throttle = &mut state.throttles[index];
        let retry_after = throttle.retry_after_seconds;
        throttle.count = throttle.count.saturating_sub(1);
        if throttle.count == 0 {
            state.throttles.remove(index);
        }
        Some(retry_after)
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
        assert_eq!(faults.take_throttle("GET /devices/d1"), None);
        assert_eq!(faults.take_throttle("PUT /devices/d1"), Some(3));
        assert_eq!(faults.take_throttle("PUT /devices/d2"), Some(3));
        assert_eq!(faults.take_throttle("PUT /devices/d3"), None);
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
