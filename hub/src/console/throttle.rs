//! Failed console sign-ins, slowed down and counted. Every attempt is checked, so the right key
//! signs in at once whatever else arrives from the same address: only failures are throttled.
//! Failures fill a leaky bucket per client address and one for the whole hub; past a bucket's
//! free allowance each further failure is answered 429 (with `Retry-After`) only after a hold that
//! doubles with every failure over it, up to [`MAX_HOLD`]. One client then guesses at a few keys
//! a second instead of a thousand (the keys are 256 random bits, so the hold is about the cost of
//! a flood, not the odds of a guess). The log gets the first failure of a quiet period, then one
//! line per [`REPORT_INTERVAL`] with the count, never a line per failure. Pure and time-explicit;
//! the handlers in `mod.rs` sleep and log.
//!
//! A leaf of the console: depends on nothing else of the hub.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may have in its bucket before they are held.
const FREE_PER_ADDRESS: f64 = 5.0;
/// Failures per second an address's bucket forgets.
const LEAK_PER_ADDRESS: f64 = 1.0;
/// Failures the hub may have in its bucket, from all addresses, before they are held.
const FREE_GLOBAL: f64 = 50.0;
/// Failures per second the hub's bucket forgets.
const LEAK_GLOBAL: f64 = 10.0;
/// The hold of the first failure over an allowance; each further one doubles it.
const FIRST_HOLD: Duration = Duration::from_millis(250);
/// The longest a failure is held.
pub const MAX_HOLD: Duration = Duration::from_secs(4);
/// Addresses remembered at most; beyond it only the hub's bucket counts for new ones.
const MAX_ADDRESSES: usize = 4096;
/// How often the failures of a busy period are reported in the log, as one line.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// A leaky bucket of failures.
#[derive(Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            level: 0.0,
            at: now,
        }
    }

    /// The level at `now`, after leaking `leak` per second since the last update.
    fn leaked(&self, now: Instant, leak: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.level - elapsed * leak).max(0.0)
    }

    /// Adds one failure at `now`; the hold it earns past `free`.
    fn fail(&mut self, now: Instant, leak: f64, free: f64) -> Duration {
        self.level = self.leaked(now, leak) + 1.0;
        self.at = now;
        let over = self.level - free;
        if over < 1.0 {
            return Duration::ZERO;
        }
        // over is at least 1; the doubling is capped long before the float could overflow
        let doublings = (over - 1.0).min(16.0) as u32;
        FIRST_HOLD.saturating_mul(1 << doublings).min(MAX_HOLD)
    }
}

/// What to do with one failed sign-in.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// How long to hold the answer; zero: answer at once, as any refusal.
    pub hold: Duration,
    /// Whether this failure opens a report interval: log it now, and report the count of the
    /// ones after it every [`REPORT_INTERVAL`] until an interval passes without any.
    pub opens_report: bool,
}

/// The buckets and the report interval.
pub struct SignInThrottle {
    state: Mutex<State>,
}

struct State {
    by_address: HashMap<IpAddr, Bucket>,
    global: Bucket,
    /// Failures since the report interval opened, not logged yet; `None`: no interval open.
    unreported: Option<u64>,
}

impl SignInThrottle {
    /// No failures yet, at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                by_address: HashMap::new(),
                global: Bucket::new(now),
                unreported: None,
            }),
        }
    }

    /// Counts a failed sign-in from `address` at `now`.
    pub fn fail(&self, address: IpAddr, now: Instant) -> Failure {
        let mut state = self.lock();
        let global = state.global.fail(now, LEAK_GLOBAL, FREE_GLOBAL);
        if state.by_address.len() >= MAX_ADDRESSES && !state.by_address.contains_key(&address) {
            state
                .by_address
                .retain(|_, bucket| bucket.leaked(now, LEAK_PER_ADDRESS) > 0.0);
        }
        let own = match state.by_address.len() < MAX_ADDRESSES {
            true => state
                .by_address
                .entry(address)
                .or_insert_with(|| Bucket::new(now))
                .fail(now, LEAK_PER_ADDRESS, FREE_PER_ADDRESS),
            false => state
                .by_address
                .get_mut(&address)
                .map_or(Duration::ZERO, |b| {
                    b.fail(now, LEAK_PER_ADDRESS, FREE_PER_ADDRESS)
                }),
        };
        let opens_report = match &mut state.unreported {
            Some(count) => {
                *count += 1;
                false
            }
            None => {
                state.unreported = Some(0);
                true
            }
        };
        Failure {
            hold: own.max(global),
            opens_report,
        }
    }

    /// At the end of a report interval: the failures counted in it (the interval goes on), or
    /// `None` if there were none (the interval closes; the next failure is logged on its own).
    pub fn take_report(&self) -> Option<u64> {
        let mut state = self.lock();
        match state.unreported {
            Some(0) | None => {
                state.unreported = None;
                None
            }
            Some(count) => {
                state.unreported = Some(0);
                Some(count)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn an_addresss_failures_are_free_then_held_longer_each_time_up_to_the_cap_and_forgotten() {
        let t0 = Instant::now();
        let throttle = SignInThrottle::new(t0);
        for _ in 0..5 {
            assert_eq!(throttle.fail(A, t0).hold, Duration::ZERO);
        }
        let holds: Vec<Duration> = (0..6).map(|_| throttle.fail(A, t0).hold).collect();
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(
            holds,
            [ms(250), ms(500), ms(1000), ms(2000), MAX_HOLD, MAX_HOLD]
        );
        assert_eq!(throttle.fail(B, t0).hold, Duration::ZERO, "another address");
        let later = t0 + Duration::from_secs(60);
        assert_eq!(throttle.fail(A, later).hold, Duration::ZERO, "forgotten");
    }

    #[test]
    fn failures_from_many_addresses_are_held_by_the_hubs_own_bucket() {
        let t0 = Instant::now();
        let throttle = SignInThrottle::new(t0);
        let address = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..50 {
            assert_eq!(throttle.fail(address(i), t0).hold, Duration::ZERO);
        }
        assert_eq!(throttle.fail(address(50), t0).hold, FIRST_HOLD);
    }

    #[test]
    fn the_addresses_remembered_are_bounded() {
        let t0 = Instant::now();
        let throttle = SignInThrottle::new(t0);
        for i in 0..MAX_ADDRESSES as u32 + 100 {
            throttle.fail(IpAddr::V4(std::net::Ipv4Addr::from(i)), t0);
        }
        assert_eq!(throttle.lock().by_address.len(), MAX_ADDRESSES);
        let later = t0 + Duration::from_secs(60);
        throttle.fail(B, later);
        assert_eq!(throttle.lock().by_address.len(), 1);
    }

    #[test]
    fn the_first_failure_is_logged_then_one_count_per_interval_until_a_quiet_one() {
        let t0 = Instant::now();
        let throttle = SignInThrottle::new(t0);
        assert!(throttle.fail(A, t0).opens_report);
        assert!(!throttle.fail(A, t0).opens_report);
        assert!(!throttle.fail(B, t0).opens_report);
        assert_eq!(throttle.take_report(), Some(2));
        throttle.fail(A, t0);
        assert_eq!(throttle.take_report(), Some(1));
        assert_eq!(throttle.take_report(), None);
        assert!(throttle.fail(A, t0).opens_report);
    }
}
