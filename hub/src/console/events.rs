//! The console's live stream (server-sent events): device-to-cloud messages of one device or
//! module as the hub logs them (`event: message`, `id:` its sequence so a reconnecting
//! `EventSource` resumes with `Last-Event-ID`), and the set of connected client ids whenever it
//! changes (`event: connections`). Streams are bounded: at most [`MAX_STREAMS`] at once, each for
//! at most [`MAX_STREAM_LIFE`] (the browser reconnects), and each ends as soon as its response
//! body is dropped — which is what happens to every connection task when the hub stops.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::hub::Hub;
use crate::messages::MessageFilter;

/// Most event streams open at once across all sessions.
pub const MAX_STREAMS: usize = 16;
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

/// Starts a stream holding `permit` (one of [`MAX_STREAMS`]).
pub fn start(hub: Arc<Hub>, request: StreamRequest, permit: OwnedSemaphorePermit) -> EventStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(MAX_STREAM_LIFE, produce(&hub, request, &tx)).await;
    });
    EventStream { rx }
}

/// Feeds `tx` until the body is dropped.
async fn produce(hub: &Hub, mut request: StreamRequest, tx: &mpsc::Sender<Bytes>) {
    let mut logged = hub.messages.subscribe();
    let mut connects = hub.live.subscribe();
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
                let now: BTreeSet<String> = hub.live.client_ids().into_iter().collect();
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
    for message in hub.messages.list(filter) {
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
    fn a_connections_event_is_one_sse_event_with_a_json_array() {
        let ids: BTreeSet<String> = ["d/m".to_owned(), "d".to_owned()].into();
        assert_eq!(
            connections_event(&ids),
            "event: connections\ndata: [\"d\",\"d/m\"]\n\n"
        );
    }
}
