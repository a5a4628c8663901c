//! Direct methods in flight: a REST invocation waits here for the device's response on
//! `$iothub/methods/res/{status}/?$rid={rid}`, or for its timeout.
//!
//! Part of the core: depends on nothing else of the hub.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::oneshot;

/// A device's answer to a method call.
#[derive(Debug)]
pub struct MethodResponse {
    /// The status the device chose.
    pub status: i32,
    /// The payload it returned (JSON or empty).
    pub payload: Bytes,
}

/// Calls waiting for their response, keyed by (client id, `$rid`).
#[derive(Default)]
pub struct PendingMethods {
    /// Waiters.
    waiting: Mutex<HashMap<(String, String), oneshot::Sender<MethodResponse>>>,
    /// Source of `$rid`s (lower-case hex, as edgeHub uses).
    next_rid: AtomicU64,
}

impl PendingMethods {
    /// Registers a call to `client_id`; returns its `$rid` and where the response will arrive.
    pub fn start(&self, client_id: &str) -> (String, oneshot::Receiver<MethodResponse>) {
        let rid = format!("{:x}", self.next_rid.fetch_add(1, Ordering::Relaxed) + 1);
        let (tx, rx) = oneshot::channel();
        self.lock().insert((client_id.to_owned(), rid.clone()), tx);
        (rid, rx)
    }

    /// Delivers a device's response; false if no call waits for it (late or unknown `$rid`).
    pub fn complete(&self, client_id: &str, rid: &str, response: MethodResponse) -> bool {
        let waiter = self.lock().remove(&(client_id.to_owned(), rid.to_owned()));
        waiter.is_some_and(|tx| tx.send(response).is_ok())
    }

    /// Forgets a call that timed out or could not be sent.
    pub fn abandon(&self, client_id: &str, rid: &str) {
        self.lock().remove(&(client_id.to_owned(), rid.to_owned()));
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), oneshot::Sender<MethodResponse>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_response_reaches_its_caller_once_and_only_from_the_same_client() {
        let pending = PendingMethods::default();
        let (rid, rx) = pending.start("d1/m1");
        let response = || MethodResponse {
            status: 200,
            payload: Bytes::from_static(b"{}"),
        };
        assert!(!pending.complete("d2/m1", &rid, response()));
        assert!(pending.complete("d1/m1", &rid, response()));
        assert!(!pending.complete("d1/m1", &rid, response()));
        assert_eq!(rx.await.unwrap().status, 200);
    }
}
