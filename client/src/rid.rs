//! `$rid` correlation of twin requests and their responses (docs/spec/iothub-device-protocol.md §4.11), without I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a request id was issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `$iothub/twin/GET/`.
    TwinGet,
    /// `$iothub/twin/PATCH/properties/reported/`.
    ReportedPatch,
}

/// A request waiting for its `$iothub/twin/res/...` answer.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    /// What the answer completes.
    kind: RequestKind,
    /// When it was sent, for timeouts and latency.
    sent_at: Instant,
}

/// The table is full: too many requests are unanswered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many outstanding twin requests ({0})")]
pub struct TableFull(pub usize);

/// Issues unique request ids and matches responses to them.
#[derive(Debug)]
pub struct RidTable {
    /// Next id; a counter that keeps growing across reconnects so a late answer from an old
    /// connection can never be mistaken for a new request's.
    next: u64,
    /// Unanswered requests by id.
    outstanding: HashMap<String, Outstanding>,
    /// Bound on unanswered requests.
    capacity: usize,
}

/// A matched response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    /// What the request was.
    pub kind: RequestKind,
    /// Time from send to answer.
    pub latency: Duration,
}

impl RidTable {
    /// An empty table holding at most `capacity` unanswered requests.
    pub fn new(capacity: usize) -> Self {
        RidTable {
            next: 1,
            outstanding: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Registers a new request and returns its id (decimal, like the C SDK's).
    pub fn issue(&mut self, kind: RequestKind, now: Instant) -> Result<String, TableFull> {
        if self.outstanding.len() >= self.capacity {
            return Err(TableFull(self.capacity));
        }
        let rid = self.next.to_string();
        self.next += 1;
        self.outstanding
            .insert(rid.clone(), Outstanding { kind, sent_at: now });
        Ok(rid)
    }

    /// Matches a response; `None` for unknown (late, duplicate or foreign) ids.
    pub fn complete(&mut self, rid: &str, now: Instant) -> Option<Completed> {
        self.outstanding.remove(rid).map(|o| Completed {
            kind: o.kind,
            latency: now.saturating_duration_since(o.sent_at),
        })
    }

    /// Removes and returns the requests older than `timeout`.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<(String, RequestKind)> {
        let expired: Vec<(String, RequestKind)> = self
            .outstanding
            .iter()
            .filter(|(_, o)| now.saturating_duration_since(o.sent_at) >= timeout)
            .map(|(rid, o)| (rid.clone(), o.kind))
            .collect();
        for (rid, _) in &expired {
            self.outstanding.remove(rid);
        }
        expired
    }

    /// Forgets every outstanding request (the connection they were sent on is gone).
    pub fn clear(&mut self) {
        self.outstanding.clear();
    }

    /// True if a request of this kind is unanswered.
    pub fn has(&self, kind: RequestKind) -> bool {
        self.outstanding.values().any(|o| o.kind == kind)
    }

    /// Number of unanswered requests.
    pub fn len(&self) -> usize {
        self.outstanding.len()
    }

    /// True if nothing is unanswered.
    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_responses_match_their_request() {
        let now = Instant::now();
        let mut t = RidTable::new(8);
        let a = t.issue(RequestKind::TwinGet, now).unwrap();
        let b = t.issue(RequestKind::ReportedPatch, now).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.len(), 2);
        let later = now + Duration::from_millis(5);
        let done = t.complete(&b, later).unwrap();
        assert_eq!(done.kind, RequestKind::ReportedPatch);
        assert_eq!(done.latency, Duration::from_millis(5));
        assert_eq!(t.complete(&a, later).unwrap().kind, RequestKind::TwinGet);
        assert!(t.is_empty());
    }

    #[test]
    fn unknown_or_duplicate_responses_are_ignored() {
        let now = Instant::now();
        let mut t = RidTable::new(8);
        let a = t.issue(RequestKind::TwinGet, now).unwrap();
        assert!(t.complete("999", now).is_none());
        assert!(t.complete(&a, now).is_some());
        assert!(t.complete(&a, now).is_none());
    }

    #[test]
    fn ids_keep_growing_after_clear_so_late_answers_do_not_match() {
        let now = Instant::now();
        let mut t = RidTable::new(8);
        let old = t.issue(RequestKind::TwinGet, now).unwrap();
        t.clear();
        let new = t.issue(RequestKind::TwinGet, now).unwrap();
        assert_ne!(old, new);
        assert!(t.complete(&old, now).is_none());
        assert!(t.has(RequestKind::TwinGet));
        assert!(!t.has(RequestKind::ReportedPatch));
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut t = RidTable::new(2);
        t.issue(RequestKind::TwinGet, now).unwrap();
        t.issue(RequestKind::TwinGet, now).unwrap();
        assert_eq!(t.issue(RequestKind::TwinGet, now), Err(TableFull(2)));
    }

    #[test]
    fn expire_removes_only_requests_older_than_the_timeout() {
        let now = Instant::now();
        let mut t = RidTable::new(8);
        let old = t.issue(RequestKind::ReportedPatch, now).unwrap();
        let young = t
            .issue(RequestKind::TwinGet, now + Duration::from_secs(50))
            .unwrap();
        let expired = t.expire(now + Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(expired, vec![(old, RequestKind::ReportedPatch)]);
        assert!(t.complete(&young, now).is_some());
    }
}
