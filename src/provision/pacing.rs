//! Client-side pacing of identity-registry requests, so a fleet run stays under the hub's
//! throttle instead of filling its queue and collecting 429s. Pure: the caller passes the clock.

use std::time::{Duration, Instant};

/// IoT Hub S1 (and Free, B1) identity-registry quota: 100 operations per minute per unit.
pub const S1_REGISTRY_OPS_PER_MINUTE: f64 = 100.0;

/// IoT Hub S1 (and Free) twin-update quota: 50 device and module twin updates per second.
pub const S1_TWIN_UPDATES_PER_SECOND: f64 = 50.0;

/// Spaces requests evenly at a fixed rate; the first request goes at once.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Time between two requests; `None` when pacing is off.
    interval: Option<Duration>,
    /// The earliest moment the next request may start.
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate` requests per minute; `0` (or a negative or non-finite value) turns
    /// pacing off.
    pub fn per_minute(rate: f64) -> Self {
        let interval =
            (rate.is_finite() && rate > 0.0).then(|| Duration::from_secs_f64(60.0 / rate));
        Pacer {
            interval,
            next: None,
        }
    }

    /// The time between two requests, if pacing is on.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Books the next slot at or after `now` and returns how long to wait for it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let Some(interval) = self.interval else {
            return Duration::ZERO;
        };
        let slot = match self.next {
            Some(next) if next > now => next,
            _ => now,
        };
        self.next = Some(slot + interval);
        slot - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s1_rate_spaces_requests_six_tenths_of_a_second_apart() {
        let mut pacer = Pacer::per_minute(S1_REGISTRY_OPS_PER_MINUTE);
        let t0 = Instant::now();
        assert_eq!(pacer.reserve(t0), Duration::ZERO);
        assert_eq!(pacer.reserve(t0), Duration::from_millis(600));
        assert_eq!(pacer.reserve(t0), Duration::from_millis(1200));
    }

    #[test]
    fn an_idle_pacer_does_not_bank_credit_for_a_burst() {
        let mut pacer = Pacer::per_minute(60.0);
        let t0 = Instant::now();
        pacer.reserve(t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(pacer.reserve(later), Duration::ZERO);
        assert_eq!(pacer.reserve(later), Duration::from_secs(1));
    }

    #[test]
    fn rate_zero_turns_pacing_off() {
        let mut pacer = Pacer::per_minute(0.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(pacer.reserve(t0), Duration::ZERO);
        }
        assert_eq!(pacer.interval(), None);
    }
}
