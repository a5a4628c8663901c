//! The retry policy of the service client: which outcomes are retried and how long to wait.
//! Pure (the jitter is passed in), so it is unit-tested without a clock or a network.
//!
//! IoT Hub gives POST and PATCH no retries of its own and answers 429 when a throttle's queue is
//! full, so every request is retried on 408, 429, 500, 502, 503, 504 and network errors, with
//! capped exponential backoff and jitter; a `Retry-After` header sets the floor of the wait.

use std::time::Duration;

/// What one attempt ended with, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The hub answered with this HTTP status.
    Status(u16),
    /// No answer: connect, TLS, write, read or timeout failure.
    Network,
}

/// How often and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts in total (the first one included); 1 disables retries.
    pub max_attempts: u32,
    /// Wait before the first retry, doubled for each further one.
    pub base: Duration,
    /// Largest computed wait (before `Retry-After` is considered).
    pub cap: Duration,
    /// Largest `Retry-After` honoured, so a bogus header cannot stall the job for hours.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// True for outcomes worth another attempt: network errors, 408, 429 and the transient 5xx
/// (500, 502, 503, 504; not 501 or 505, which will not change).
pub fn is_retryable(outcome: Outcome) -> bool {
    match outcome {
        Outcome::Network => true,
        Outcome::Status(status) => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
    }
}

/// Parses a `Retry-After` header given as delta-seconds (integer or decimal). HTTP dates are not
/// used by IoT Hub and yield `None` (the computed backoff then applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The computed wait before retry number `retry` (1 for the first retry): `base * 2^(retry-1)`
    /// capped at `cap`, then "equal jitter": half of it fixed, half scaled by `jitter` in `[0, 1)`.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(31);
        let full = self.base.saturating_mul(1u32 << exponent).min(self.cap);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// Whether to retry after `attempt` attempts (1 after the first) ended with `outcome`, and if
    /// so how long to wait. A `Retry-After` (capped at `max_retry_after`) is a floor: the wait is
    /// never shorter than what the hub asked for.
    pub fn decide(
        &self,
        attempt: u32,
        outcome: Outcome,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts || !is_retryable(outcome) {
            return None;
        }
        let computed = self.backoff(attempt, jitter);
        Some(match retry_after {
            Some(asked) => computed.max(asked.min(self.max_retry_after)),
            None => computed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn throttling_server_errors_and_network_failures_are_retried() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(Outcome::Status(status)), "{status}");
        }
        assert!(is_retryable(Outcome::Network));
    }

    #[test]
    fn client_errors_and_permanent_server_errors_are_not_retried() {
        for status in [200, 204, 400, 401, 403, 404, 409, 412, 413, 501, 505] {
            assert!(!is_retryable(Outcome::Status(status)), "{status}");
            assert_eq!(policy().decide(1, Outcome::Status(status), None, 0.5), None);
        }
    }

    #[test]
    fn the_wait_doubles_per_retry_and_stops_growing_at_the_cap() {
        let p = policy();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(p.backoff(4, 1.0), Duration::from_millis(800));
        assert_eq!(p.backoff(5, 1.0), Duration::from_millis(1000));
        assert_eq!(p.backoff(40, 1.0), Duration::from_millis(1000));
    }

    #[test]
    fn jitter_spreads_the_wait_between_half_and_all_of_it() {
        let p = policy();
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(300));
        assert_eq!(p.backoff(3, 7.0), Duration::from_millis(400));
    }

    #[test]
    fn retry_after_is_a_floor_and_is_itself_capped() {
        let p = policy();
        let asked = Some(Duration::from_secs(3));
        assert_eq!(
            p.decide(1, Outcome::Status(429), asked, 0.0),
            Some(Duration::from_secs(3))
        );
        let tiny = Some(Duration::from_millis(1));
        assert_eq!(
            p.decide(3, Outcome::Status(429), tiny, 1.0),
            Some(Duration::from_millis(400))
        );
        let huge = Some(Duration::from_secs(3600));
        assert_eq!(
            p.decide(1, Outcome::Status(503), huge, 0.0),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn attempts_stop_at_the_limit() {
        let p = policy();
        assert!(p.decide(4, Outcome::Network, None, 0.0).is_some());
        assert_eq!(p.decide(5, Outcome::Network, None, 0.0), None);
        assert_eq!(
            RetryPolicy::none().decide(1, Outcome::Network, None, 0.0),
            None
        );
    }

    #[test]
    fn retry_after_parses_delta_seconds_only() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
