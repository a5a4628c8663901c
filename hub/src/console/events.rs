//! The console's live stream (server-sent events): device-to-cloud messages of one device or
//! module as the hub logs them (`event: message`, `id:` its sequence so a reconnecting
//! `EventSource` resumes with `Last-Event-ID`), and the set of connected client ids whenever it
//! changes (`event: connections`). Streams are bounded fairly: at most [`STREAMS_PER_SESSION`]
//! per session and [`STREAMS_PER_POLICY`] per shared access policy, so the hub holds at most
//! `STREAMS_PER_POLICY` times its (fixed) number of policies, and every policy's room is its own:
//! a lesser key opening streams without end never takes the owner's. Each stream lasts at most
//! [`MAX_STREAM_LIFE`] (the browser reconnects) and ends at once when its session ends (sign-out,
//! eviction, expiry) or its response body is dropped — which is what happens to every connection
//! task when the hub stops.
//!
//! Depends on the hub (messages, live connections) only; never on a door.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::{mpsc, watch};

use crate::hub::Hub;
use crate::messages::MessageFilter;

/// Most event streams one session holds at once (a console tab holds one).
pub const STREAMS_PER_SESSION: usize = 4;
/// Most event streams the sessions of one shared access policy hold at once.
pub const STREAMS_PER_POLICY: usize = 8;
/// Longest one stream stays open; `EventSource` then reconnects on its own.
pub const MAX_STREAM_LIFE: Duration = Duration::from_secs(10 * 60);
/// A comment line is sent after this long without events, so proxies and the browser see life.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events buffered for a stream; beyond it the producer waits for the browser to read.
const BUFFER: usize = 64;

/// What one stream carries.
pub struct StreamRequest {
    /// Messages matching this (device, module, after a sequence); `None`: no messages.
    pub messages: Option<MessageFilter>,
    /// Whether connection changes are sent.
    pub connections: bool,
}

/// A response body fed by the stream's producer task.
pub struct EventStream {
    /// Events, already framed as SSE text.
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}

/// The streams open, counted per session and per policy.
#[derive(Default)]
pub struct Quota {
    open: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Session id -> streams open.
    by_session: HashMap<String, usize>,
    /// Policy name -> streams open.
    by_policy: HashMap<String, usize>,
}

/// Why a stream was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// The session holds [`STREAMS_PER_SESSION`].
    #[error(
        "this console session has {STREAMS_PER_SESSION} event streams open already: close a tab"
    )]
    Session,
    /// The policy's sessions hold [`STREAMS_PER_POLICY`].
    #[error("the console sessions of policy '{0}' have {STREAMS_PER_POLICY} event streams open already: close a tab or sign out elsewhere")]
    Policy(String),
}

/// One stream's place in the [`Quota`], given back on drop.
pub struct Slot {
    quota: Arc<Quota>,
    session: String,
    policy: String,
}

impl Quota {
    /// Takes a place for a stream of session `session` holding policy `policy`.
    pub fn take(self: &Arc<Self>, session: &str, policy: &str) -> Result<Slot, Full> {
        let mut counts = self.lock();
        if counts.by_session.get(session).copied().unwrap_or(0) >= STREAMS_PER_SESSION {
            return Err(Full::Session);
        }
        if counts.by_policy.get(policy).copied().unwrap_or(0) >= STREAMS_PER_POLICY {
            return Err(Full::Policy(policy.to_owned()));
        }
        *counts.by_session.entry(session.to_owned()).or_default() += 1;
        *counts.by_policy.entry(policy.to_owned()).or_default() += 1;
        Ok(Slot {
            quota: self.clone(),
            session: session.to_owned(),
            policy: policy.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.quota.lock();
        let Counts {
            by_session,
            by_policy,
        } = &mut *counts;
        release(by_session, &self.session);
        release(by_policy, &self.policy);
    }
}

/// One less under `key`; a count back to zero is removed.
fn release(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Starts a stream holding `slot`; it ends after `life` (at most [`MAX_STREAM_LIFE`]) or once
/// `session_end` reports its session gone, whichever comes first.
pub fn start(
    hub: Arc<Hub>,
    request: StreamRequest,
    slot: Slot,
    mut session_end: watch::Receiver<()>,
    life: Duration,
) -> EventStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _slot = slot;
        let life = life.min(MAX_STREAM_LIFE);
        tokio::select! {
            _ = tokio::time::timeout(life, produce(&hub, request, &tx)) => {}
            // Nothing is ever sent: `changed()` returns only when the session's sender is dropped.
            _ = session_end.changed() => {}
        }
    });
    EventStream { rx }
}

/// Feeds `tx` until the body is dropped.
async fn produce(hub: &Hub, mut request: StreamRequest, tx: &mpsc::Sender<Bytes>) {
    let mut logged = hub.logged_head();
    let mut connects = hub.live().subscribe();
    connects.mark_changed();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    let mut connected: Option<BTreeSet<String>> = None;
    if tx
        .send(Bytes::from_static(b"retry: 2000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let event = tokio::select! {
            () = tx.closed() => return,
            changed = logged.changed(), if request.messages.is_some() => {
                if changed.is_err() {
                    return;
                }
                request.messages.as_mut().map(|filter| messages(hub, filter)).unwrap_or_default()
            }
            changed = connects.changed(), if request.connections => {
                if changed.is_err() {
                    return;
                }
                let now: BTreeSet<String> = hub.live().client_ids().into_iter().collect();
                if connected.as_ref() == Some(&now) {
                    continue;
                }
                let event = connections_event(&now);
                connected = Some(now);
                event
            }
            _ = keepalive.tick() => ": keep-alive\n\n".to_owned(),
        };
        if event.is_empty() {
            continue;
        }
        keepalive.reset();
        if tx.send(Bytes::from(event)).await.is_err() {
            return;
        }
    }
}

/// The messages logged after `filter.after`, as events (advancing `filter.after`).
fn messages(hub: &Hub, filter: &mut MessageFilter) -> String {
    let mut text = String::new();
    let page = hub.messages(filter).unwrap_or_else(|error| {
        tracing::warn!(message = %error.message, "cannot read the message log for the console");
        Vec::new()
    });
    for message in page {
        filter.after = message.sequence;
        let data = serde_json::to_string(&message).unwrap_or_default();
        text.push_str(&format!(
            "id: {}\nevent: message\ndata: {data}\n\n",
            message.sequence
        ));
    }
    text
}

/// The `connections` event for the set of connected client ids.
fn connections_event(connected: &BTreeSet<String>) -> String {
    let data = serde_json::to_string(connected).unwrap_or_default();
    format!("event: connections\ndata: {data}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_session_and_per_policy_and_a_dropped_slot_gives_its_place_back() {
        let quota = Arc::new(Quota::default());
        let mut owner: Vec<Slot> = (0..STREAMS_PER_SESSION)
            .map(|_| quota.take("owner-1", "iothubowner").unwrap())
            .collect();
        assert_eq!(
            quota.take("owner-1", "iothubowner").err(),
            Some(Full::Session)
        );
        let mut reader = Vec::new();
        for session in 0.. {
            match quota.take(&format!("reader-{session}"), "registryRead") {
                Ok(slot) => reader.push(slot),
                Err(full) => {
                    assert_eq!(full, Full::Policy("registryRead".into()));
                    break;
                }
            }
        }
        assert_eq!(reader.len(), STREAMS_PER_POLICY);
        owner.push(quota.take("owner-2", "iothubowner").unwrap());
        drop(reader.pop());
        assert!(quota.take("reader-x", "registryRead").is_ok());
        drop(owner);
        assert!(!quota.lock().by_policy.contains_key("iothubowner"));
        assert!(!quota.lock().by_session.contains_key("owner-1"));
    }

    #[test]
    fn a_connections_event_is_one_sse_event_with_a_json_array() {
        let ids: BTreeSet<String> = ["d/m".to_owned(), "d".to_owned()].into();
        assert_eq!(
            connections_event(&ids),
            "event: connections\ndata: [\"d\",\"d/m\"]\n\n"
        );
    }
}
