//! Reported-property delivery: patches are queued, coalesced and re-sent until the hub
//! acknowledges them (204), across disconnects and token renewals. Pure state, no I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use edgetwin_wire::twin::Properties;
use serde_json::Value;

/// Merges `newer` into `older` as a later patch would apply, but keeps `null` members (they
/// delete on the hub) so that sending the result equals sending both in order.
pub fn coalesce(older: &mut Properties, newer: &Properties) {
    for (key, value) in newer {
        match (older.get_mut(key), value) {
            (Some(Value::Object(old)), Value::Object(new)) => coalesce(old, new),
            _ => {
                older.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The patch on the wire, waiting for its answer.
#[derive(Clone, Debug)]
struct InFlight {
    /// Its request id.
    rid: String,
    /// What was sent, to put back if the answer never comes.
    patch: Properties,
    /// When it was sent.
    sent_at: Instant,
}

/// How a twin response for a reported patch was handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportedAnswer {
    /// 2xx: delivered.
    Acked {
        /// Time from the oldest queued update to the acknowledgement.
        latency: Duration,
    },
    /// 4xx other than 429: the hub refuses this patch of one property; retrying cannot help.
    /// Dropped.
    Rejected,
    /// 4xx other than 429 for a patch of several properties: each is sent again on its own, so
    /// that only the one the hub refuses is dropped.
    Isolating,
    /// 429 or 5xx: put back and retried after a pause.
    Retry,
    /// The rid is not the one in flight (late answer from an old connection).
    Unknown,
}

/// At most one patch in flight; everything else coalesced into one pending patch.
#[derive(Debug, Default)]
pub struct ReportedQueue {
    /// Updates not yet sent, merged in order.
    pending: Option<Properties>,
    /// When the oldest pending update was queued (for latency).
    pending_since: Option<Instant>,
    /// The patch sent and not yet answered.
    in_flight: Option<InFlight>,
    /// Not before this instant (after a 429/5xx).
    retry_at: Option<Instant>,
    /// One-property patches split from a refused patch, sent one by one before `pending`.
    isolated: VecDeque<Properties>,
}

impl ReportedQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an update.
    pub fn push(&mut self, patch: Properties, now: Instant) {
        match &mut self.pending {
            Some(pending) => coalesce(pending, &patch),
            None => {
                self.pending = Some(patch);
                self.pending_since.get_or_insert(now);
            }
        }
    }

    /// The patch to send now, if nothing is in flight and no retry pause is running. The caller
    /// must then call [`ReportedQueue::sent`] or [`ReportedQueue::restore`].
    pub fn take_sendable(&mut self, now: Instant) -> Option<Properties> {
        if self.in_flight.is_some() || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        self.retry_at = None;
        self.isolated.pop_front().or_else(|| self.pending.take())
    }

    /// Records that `patch` went out with request id `rid`.
    pub fn sent(&mut self, rid: String, patch: Properties, now: Instant) {
        self.in_flight = Some(InFlight {
            rid,
            patch,
            sent_at: now,
        });
    }

    /// Puts back a patch taken with [`ReportedQueue::take_sendable`] that could not be sent.
    pub fn restore(&mut self, patch: Properties) {
        self.pending = Some(match self.pending.take() {
            Some(newer) => {
                let mut merged = patch;
                coalesce(&mut merged, &newer);
                merged
            }
            None => patch,
        });
    }

    /// Handles the twin response for `rid` with `status`.
    pub fn on_answer(&mut self, rid: &str, status: u16, now: Instant) -> ReportedAnswer {
        match &self.in_flight {
            Some(f) if f.rid == rid => {}
            _ => return ReportedAnswer::Unknown,
        }
        let flight = self.in_flight.take().expect("checked above");
        match status {
            200..=299 => {
                let since = self.pending_since.take().unwrap_or(flight.sent_at);
                if self.pending.is_some() {
                    self.pending_since = Some(now);
                }
                ReportedAnswer::Acked {
                    latency: now.saturating_duration_since(since),
                }
            }
            429 | 500..=599 => {
                self.restore(flight.patch);
                self.retry_at = Some(now + Duration::from_secs(1));
                ReportedAnswer::Retry
            }
            _ if flight.patch.len() > 1 => {
                self.isolated.extend(
                    flight
                        .patch
                        .into_iter()
                        .map(|(key, value)| Properties::from_iter([(key, value)])),
                );
                ReportedAnswer::Isolating
            }
            _ => {
                if self.pending.is_none() && self.isolated.is_empty() {
                    self.pending_since = None;
                }
                ReportedAnswer::Rejected
            }
        }
    }

    /// The connection is gone (or the answer timed out): the patch in flight goes back in
    /// front of the pending ones.
    pub fn requeue_in_flight(&mut self) {
        if let Some(flight) = self.in_flight.take() {
            self.restore(flight.patch);
        }
    }

    /// The in-flight patch if it has waited longer than `timeout`.
    pub fn in_flight_timed_out(&self, now: Instant, timeout: Duration) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| now.saturating_duration_since(f.sent_at) >= timeout)
    }

    /// True while the properties of a refused patch are being re-sent one by one.
    pub fn is_isolating(&self) -> bool {
        !self.isolated.is_empty()
    }

    /// True if nothing is pending or in flight.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && self.in_flight.is_none() && self.isolated.is_empty()
    }

    /// True if a patch waits for its answer.
    pub fn has_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Properties {
        v.as_object().unwrap().clone()
    }

    /// A queue whose only patch was sent with request id `rid`.
    fn in_flight(rid: &str, patch: Properties, now: Instant) -> ReportedQueue {
        let mut q = ReportedQueue::new();
        q.push(patch, now);
        let p = q.take_sendable(now).unwrap();
        q.sent(rid.into(), p, now);
        q
    }

    #[test]
    fn coalescing_keeps_nulls_and_merges_objects() {
        let mut a = props(json!({"x": {"a": 1, "b": 2}, "y": 1, "z": null}));
        coalesce(&mut a, &props(json!({"x": {"b": null, "c": 3}, "y": null})));
        assert_eq!(
            a,
            props(json!({"x": {"a": 1, "b": null, "c": 3}, "y": null, "z": null}))
        );
    }

    #[test]
    fn one_patch_in_flight_and_later_updates_coalesce_behind_it() {
        let now = Instant::now();
        let mut q = in_flight("1", props(json!({"a": 1})), now);
        q.push(props(json!({"b": 1})), now);
        q.push(props(json!({"b": 2, "c": 1})), now);
        assert!(q.take_sendable(now).is_none(), "one in flight at a time");
        assert!(matches!(
            q.on_answer("1", 204, now),
            ReportedAnswer::Acked { .. }
        ));
        assert_eq!(q.take_sendable(now), Some(props(json!({"b": 2, "c": 1}))));
    }

    #[test]
    fn a_patch_lost_with_the_connection_is_sent_again_before_newer_ones() {
        let now = Instant::now();
        let mut q = in_flight("1", props(json!({"a": 1, "b": 1})), now);
        q.push(props(json!({"b": 2})), now);
        q.requeue_in_flight();
        assert_eq!(q.on_answer("1", 204, now), ReportedAnswer::Unknown);
        assert_eq!(q.take_sendable(now), Some(props(json!({"a": 1, "b": 2}))));
    }

    #[test]
    fn throttled_patches_are_retried_after_a_pause() {
        let now = Instant::now();
        let mut q = in_flight("7", props(json!({"a": 1})), now);
        assert_eq!(q.on_answer("7", 429, now), ReportedAnswer::Retry);
        assert!(q.take_sendable(now).is_none());
        let later = now + Duration::from_secs(2);
        assert_eq!(q.take_sendable(later), Some(props(json!({"a": 1}))));
    }

    #[test]
    fn rejected_patches_are_dropped() {
        let now = Instant::now();
        let mut q = in_flight("7", props(json!({"a": 1})), now);
        assert_eq!(q.on_answer("7", 400, now), ReportedAnswer::Rejected);
        assert!(q.is_idle());
    }

    #[test]
    fn a_refused_merged_patch_is_split_so_only_the_bad_property_is_dropped() {
        let now = Instant::now();
        let mut q = in_flight("1", props(json!({"good": 1, "bad": "x"})), now);
        q.push(props(json!({"later": true})), now);
        assert_eq!(q.on_answer("1", 400, now), ReportedAnswer::Isolating);
        let first = q.take_sendable(now).unwrap();
        assert_eq!(first, props(json!({"good": 1})));
        q.sent("2".into(), first, now);
        assert!(matches!(
            q.on_answer("2", 204, now),
            ReportedAnswer::Acked { .. }
        ));
        let second = q.take_sendable(now).unwrap();
        assert_eq!(second, props(json!({"bad": "x"})));
        q.sent("3".into(), second, now);
        assert_eq!(q.on_answer("3", 400, now), ReportedAnswer::Rejected);
        assert_eq!(q.take_sendable(now), Some(props(json!({"later": true}))));
    }

    #[test]
    fn timeouts_are_detected_on_the_in_flight_patch() {
        let now = Instant::now();
        let q = in_flight("1", props(json!({"a": 1})), now);
        assert!(!q.in_flight_timed_out(now, Duration::from_secs(30)));
        assert!(q.in_flight_timed_out(now + Duration::from_secs(30), Duration::from_secs(30)));
    }
}
