//! Live MQTT connections: who is connected, what each subscribed to, and the channel that carries
//! server-to-client publishes to the task owning the socket. One live connection per client id; a
//! new CONNECT kicks the previous one, as IoT Hub does.
//!
//! Part of the core: depends on nothing else of the hub.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use edgetwin_wire::topic::Feature;
use tokio::sync::{mpsc, watch, Notify};

/// Capacity of each connection's outgoing queue; a client that falls this far behind is dropped
/// (it resynchronises its twin when it reconnects).
pub const OUTGOING_QUEUE: usize = 256;

/// Most bytes (topics and payloads) waiting in one connection's outgoing queue; a client that
/// lets more pile up is dropped, so a device that stops reading costs at most this much.
pub const OUTGOING_BYTES: usize = 1024 * 1024;

/// A message the hub sends to a connected client.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// Whether to send at QoS 1 (else 0).
    pub at_least_once: bool,
}

/// Handle to one live connection.
struct LiveConnection {
    /// Distinguishes this connection from a later one with the same client id.
    id: u64,
    /// Server-to-client publishes.
    outgoing: mpsc::Sender<Outgoing>,
    /// Bytes waiting in `outgoing` (shared with the connection's [`OutgoingQueue`]).
    queued_bytes: Arc<AtomicUsize>,
    /// Features the client subscribed to.
    features: HashSet<Feature>,
    /// Told when the connection must close (new connection, slow consumer, device deleted).
    kick: Arc<Notify>,
    /// Told when a cloud-to-device message was queued for the client.
    cloud_to_device: Arc<Notify>,
}

/// What a connection task gets when it registers.
pub struct Registration {
    /// Its id, for `unregister` and `set_features`.
    pub id: u64,
    /// Where its outgoing publishes arrive.
    pub outgoing: OutgoingQueue,
    /// Notified when it must close.
    pub kick: Arc<Notify>,
    /// Notified when a cloud-to-device message was queued for it.
    pub cloud_to_device: Arc<Notify>,
}

/// The receiving end of a connection's outgoing publishes, which keeps the byte count.
pub struct OutgoingQueue {
    /// The publishes.
    rx: mpsc::Receiver<Outgoing>,
    /// Bytes waiting, decreased as messages are taken.
    queued_bytes: Arc<AtomicUsize>,
}

impl OutgoingQueue {
    /// The next publish, `None` once the hub dropped the connection's sender.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let message = self.rx.recv().await?;
        self.queued_bytes
            .fetch_sub(size_of(&message), Ordering::Relaxed);
        Some(message)
    }

    /// The next publish if one is waiting.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let message = self.rx.try_recv().ok()?;
        self.queued_bytes
            .fetch_sub(size_of(&message), Ordering::Relaxed);
        Some(message)
    }
}

/// What a queued message counts against [`OUTGOING_BYTES`].
fn size_of(message: &Outgoing) -> usize {
    message.topic.len() + message.payload.len()
}

/// Why a publish could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The client is not connected, or not subscribed to the feature.
    NotListening,
    /// The client's queue was full; it has been disconnected.
    Overloaded,
}

/// Every live connection, by client id.
#[derive(Default)]
pub struct LiveConnections {
    /// client id -> connection.
    by_client: Mutex<HashMap<String, LiveConnection>>,
    /// Source of connection ids.
    next_id: AtomicU64,
    /// Counts connects and disconnects, for live readers (the console) to wait on.
    changes: watch::Sender<u64>,
}

impl LiveConnections {
    /// Registers a new connection for `client_id`, kicking any previous one.
    pub fn register(&self, client_id: &str, features: HashSet<Feature>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let kick = Arc::new(Notify::new());
        let cloud_to_device = Arc::new(Notify::new());
        let previous = self.lock().insert(
            client_id.to_owned(),
            LiveConnection {
                id,
                outgoing: tx,
                queued_bytes: queued_bytes.clone(),
                features,
                kick: kick.clone(),
                cloud_to_device: cloud_to_device.clone(),
            },
        );
        if let Some(previous) = previous {
            tracing::info!(client_id, "new connection replaces the previous one");
            previous.kick.notify_one();
        }
        self.changes.send_modify(|n| *n += 1);
        Registration {
            id,
            outgoing: OutgoingQueue { rx, queued_bytes },
            kick,
            cloud_to_device,
        }
    }

    /// Removes a connection (only if it is still the current one for its client id).
    pub fn unregister(&self, client_id: &str, id: u64) {
        let mut map = self.lock();
        if map.get(client_id).is_some_and(|c| c.id == id) {
            map.remove(client_id);
            drop(map);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Replaces the subscribed features of a connection.
    pub fn set_features(&self, client_id: &str, id: u64, features: HashSet<Feature>) {
        if let Some(connection) = self.lock().get_mut(client_id).filter(|c| c.id == id) {
            connection.features = features;
        }
    }

    /// Whether `client_id` is connected.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.lock().contains_key(client_id)
    }

    /// A receiver that changes whenever a client connects or disconnects.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Client ids of every live connection.
    pub fn client_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Queues `message` for `client_id` if it is connected and subscribed to `feature` (`None`:
    /// deliver regardless of subscriptions, as twin responses are).
    pub fn send(
        &self,
        client_id: &str,
        feature: Option<Feature>,
        message: Outgoing,
    ) -> Result<(), Undelivered> {
        let mut map = self.lock();
        let Some(connection) = map.get(client_id) else {
            return Err(Undelivered::NotListening);
        };
        if feature.is_some_and(|f| !connection.features.contains(&f)) {
            return Err(Undelivered::NotListening);
        }
        let size = size_of(&message);
        let queued = connection.queued_bytes.fetch_add(size, Ordering::Relaxed) + size;
        if queued > OUTGOING_BYTES || connection.outgoing.try_send(message).is_err() {
            tracing::warn!(
                client_id,
                queued_bytes = queued,
                "outgoing queue full or closed: disconnecting the client"
            );
            connection.kick.notify_one();
            map.remove(client_id);
            drop(map);
            self.changes.send_modify(|n| *n += 1);
            return Err(Undelivered::Overloaded);
        }
        Ok(())
    }

    /// Tells `client_id`'s connection, if any, that a cloud-to-device message was queued for it.
    pub fn notify_cloud_to_device(&self, client_id: &str) {
        if let Some(connection) = self.lock().get(client_id) {
            connection.cloud_to_device.notify_one();
        }
    }

    /// Disconnects `client_id` if connected. Removing it here leaves the connection's own
    /// `unregister` nothing to remove, so subscribers are told here.
    pub fn kick(&self, client_id: &str) {
        let removed = self.lock().remove(client_id);
        if let Some(connection) = removed {
            connection.kick.notify_one();
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Disconnects every client whose id is `device_id` or starts with `device_id/`.
    pub fn kick_device(&self, device_id: &str) {
        let prefix = format!("{device_id}/");
        let mut map = self.lock();
        let before = map.len();
        map.retain(|client_id, connection| {
            let belongs = client_id == device_id || client_id.starts_with(&prefix);
            if belongs {
                connection.kick.notify_one();
            }
            !belongs
        });
        let kicked = map.len() < before;
        drop(map);
        if kicked {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveConnection>> {
        self.by_client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Outgoing {
        Outgoing {
            topic: "t".into(),
            payload: Bytes::new(),
            at_least_once: false,
        }
    }

    #[tokio::test]
    async fn a_second_connection_kicks_the_first_and_a_late_unregister_keeps_the_second() {
        let live = LiveConnections::default();
        let first = live.register("d1", HashSet::new());
        let second = live.register("d1", HashSet::new());
        tokio::time::timeout(std::time::Duration::from_secs(1), first.kick.notified())
            .await
            .expect("first connection kicked");
        live.unregister("d1", first.id);
        assert!(live.is_connected("d1"));
        live.unregister("d1", second.id);
        assert!(!live.is_connected("d1"));
    }

    #[test]
    fn subscribers_are_told_of_connects_and_of_disconnects_of_the_current_connection_only() {
        let live = LiveConnections::default();
        let mut changes = live.subscribe();
        let first = live.register("d1", HashSet::new());
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let second = live.register("d1", HashSet::new());
        changes.mark_unchanged();
        live.unregister("d1", first.id);
        assert!(!changes.has_changed().unwrap());
        live.unregister("d1", second.id);
        assert!(changes.has_changed().unwrap());
    }

    #[test]
    fn subscribers_are_told_when_the_hub_kicks_a_client_or_a_device() {
        let live = LiveConnections::default();
        let mut changes = live.subscribe();
        let module = live.register("d1/m1", HashSet::new());
        live.register("d2", HashSet::new());
        changes.mark_unchanged();
        live.kick("d1/m1");
        assert!(changes.has_changed().unwrap(), "kick");
        changes.mark_unchanged();
        // The kicked connection's own unregister then finds nothing to remove.
        live.unregister("d1/m1", module.id);
        live.kick("d1/m1");
        live.kick_device("d1");
        assert!(!changes.has_changed().unwrap(), "nothing was connected");
        live.kick_device("d2");
        assert!(changes.has_changed().unwrap(), "kick_device");
        assert!(live.client_ids().is_empty());
    }

    #[test]
    fn publishes_reach_only_clients_subscribed_to_the_feature() {
        let live = LiveConnections::default();
        let mut reg = live.register("d1", HashSet::from([Feature::DesiredPatches]));
        assert_eq!(
            live.send("d1", Some(Feature::Methods), message()),
            Err(Undelivered::NotListening)
        );
        assert_eq!(
            live.send("d1", Some(Feature::DesiredPatches), message()),
            Ok(())
        );
        assert_eq!(
            live.send("d2", None, message()),
            Err(Undelivered::NotListening)
        );
        assert!(reg.outgoing.try_recv().is_some());
        assert!(reg.outgoing.try_recv().is_none());
    }

    #[test]
    fn a_client_that_stops_reading_is_disconnected_instead_of_growing_memory() {
        let live = LiveConnections::default();
        let _reg = live.register("d1", HashSet::new());
        for _ in 0..OUTGOING_QUEUE {
            live.send("d1", None, message()).unwrap();
        }
        assert_eq!(
            live.send("d1", None, message()),
            Err(Undelivered::Overloaded)
        );
        assert!(!live.is_connected("d1"));
    }

    #[test]
    fn a_client_is_disconnected_once_its_unread_messages_exceed_the_byte_budget() {
        let live = LiveConnections::default();
        let mut reg = live.register("d1", HashSet::new());
        let big = || Outgoing {
            payload: Bytes::from(vec![b'x'; 100 * 1024]),
            ..message()
        };
        for _ in 0..3 {
            live.send("d1", None, big()).unwrap();
            assert!(reg.outgoing.try_recv().is_some(), "read as it comes");
        }
        let fits = OUTGOING_BYTES / (100 * 1024 + 1);
        for _ in 0..fits {
            live.send("d1", None, big()).unwrap();
        }
        assert_eq!(live.send("d1", None, big()), Err(Undelivered::Overloaded));
        assert!(!live.is_connected("d1"));
    }
}
