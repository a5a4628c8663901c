//! Reconnect pacing: capped exponential backoff with jitter, as a pure policy.
//!
//! rumqttc reconnects on the next poll with no delay; the session asks this policy how long to
//! wait instead. The random part is passed in so the policy is deterministic under test.

use std::time::Duration;

/// Capped exponential backoff with "equal jitter": attempt `n` waits a delay drawn from
/// `[d/2, d]` where `d = min(cap, base * 2^n)`.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// Delay of the first retry before jitter.
    base: Duration,
    /// Upper bound of any delay (edgeAgent-style restarts are minutes; we stay well below).
    cap: Duration,
    /// Consecutive failures since the last success.
    attempt: u32,
}

impl Backoff {
    /// A policy starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base: base.max(Duration::from_millis(1)),
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; `jitter` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let ceiling = self.base.saturating_mul(factor).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(0.5 + 0.5 * jitter)
    }

    /// Forgets past failures (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Consecutive failures so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    #[test]
    fn delays_double_with_each_failure_until_the_cap() {
        let mut b = policy();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[2], Duration::from_millis(400));
        assert_eq!(delays[6], Duration::from_millis(6400));
        assert_eq!(delays[7], Duration::from_secs(10));
        assert_eq!(delays[9], Duration::from_secs(10));
    }

    #[test]
    fn jitter_keeps_the_delay_between_half_and_the_full_ceiling() {
        let mut low = policy();
        let mut high = policy();
        for _ in 0..5 {
            let l = low.next_delay(0.0);
            let h = high.next_delay(0.999);
            assert!(l * 2 >= h.mul_f64(0.99), "{l:?} vs {h:?}");
            assert!(l <= h);
        }
        assert_eq!(policy().next_delay(0.0), Duration::from_millis(50));
    }

    #[test]
    fn never_exceeds_the_cap_even_after_many_failures() {
        let mut b = policy();
        for _ in 0..1000 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(10));
        }
        assert_eq!(b.attempts(), 1000);
    }

    #[test]
    fn reset_starts_over_from_the_base_delay() {
        let mut b = policy();
        b.next_delay(1.0);
        b.next_delay(1.0);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        assert_eq!(policy().next_delay(7.0), Duration::from_millis(100));
        assert_eq!(policy().next_delay(f64::NAN), Duration::from_millis(50));
    }
}
