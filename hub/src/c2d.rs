//! Cloud-to-device messages: each device's durable queue with IoT Hub's limits and the rules a
//! message follows from enqueued to completed or dead-lettered ("Understand cloud-to-device
//! messaging": 50 messages per device queue, 64 KB per message, a default time to live of one
//! hour, a maximum delivery count of 10). The rules are pure functions of the message and an
//! explicit time; the operations below run in a transaction of the writer. The doors (MQTT
//! delivery, the AMQP sender, HTTPS) are thin around them.
//!
//! Part of the core: depends on the store and the registry.

use edgetwin_wire::rest::ErrorCode;
use edgetwin_wire::topic::PropertyBag;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::store::Transaction;
use crate::writer::{Effect, Written};

/// Most messages waiting in one device's queue: the 51st is refused with
/// `DeviceMaximumQueueDepthExceeded` (403004).
pub const MAX_PENDING: usize = 50;
/// Largest body of a cloud-to-device message (IoT Hub: 64 KB).
pub const MAX_SIZE: usize = 64 * 1024;
/// Time to live of a message that names no expiry (IoT Hub's default: one hour).
pub const DEFAULT_TTL_MS: i64 = 60 * 60 * 1000;
/// Deliveries after which a message not completed is dead-lettered (IoT Hub's default: 10).
pub const MAX_DELIVERY_COUNT: u32 = 10;
/// The counter that numbers cloud-to-device messages (their sequence numbers).
const SEQUENCE_COUNTER: &str = "c2dSequence";

/// A cloud-to-device message in a device's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct C2dMessage {
    /// Its sequence number, unique in the hub (the row's key; not in the stored record).
    #[serde(skip)]
    pub sequence: i64,
    /// `message-id` as the sender set it.
    pub message_id: Option<String>,
    /// `correlation-id` as the sender set it.
    pub correlation_id: Option<String>,
    /// `user-id` as the sender set it.
    pub user_id: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// `content-encoding`.
    pub content_encoding: Option<String>,
    /// `iothub-ack`: `none`, `positive`, `negative` or `full`.
    pub ack: Option<String>,
    /// When it was enqueued (Unix milliseconds).
    pub enqueued_ms: i64,
    /// When it expires (Unix milliseconds).
    pub expiry_ms: i64,
    /// How many times it was handed to the device.
    pub delivery_count: u32,
    /// Application properties, in order.
    pub properties: Vec<(String, String)>,
    /// The body (the row's `body` column; not in the stored record).
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// Why a message left the queue without being completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetter {
    /// Its time to live passed.
    Expired,
    /// It was delivered [`MAX_DELIVERY_COUNT`] times without being completed.
    DeliveryCountExceeded,
}

/// Whether a message of `size` bytes may join a queue that holds `pending` messages.
pub fn admit(pending: usize, size: usize) -> Result<(), ApiError> {
    if size > MAX_SIZE {
        return Err(ApiError::new(
            ErrorCode::MessageTooLarge,
            format!("the cloud-to-device message is {size} bytes; the most is {MAX_SIZE}"),
        ));
    }
    if pending >= MAX_PENDING {
        return Err(ApiError::new(
            ErrorCode::DeviceMaximumQueueDepthExceeded,
            format!(
                "the device's cloud-to-device queue holds {pending} messages; the most is {MAX_PENDING}"
            ),
        ));
    }
    Ok(())
}

/// When a message enqueued at `now_ms` expires: the sender's absolute expiry if it named one,
/// else [`DEFAULT_TTL_MS`] from now.
pub fn expiry(now_ms: i64, requested_ms: Option<i64>) -> i64 {
    requested_ms.unwrap_or(now_ms + DEFAULT_TTL_MS)
}

/// Whether `message` must leave the queue at `now_ms` instead of being delivered again.
pub fn dead_letter(message: &C2dMessage, now_ms: i64) -> Option<DeadLetter> {
    if now_ms >= message.expiry_ms {
        Some(DeadLetter::Expired)
    } else if message.delivery_count >= MAX_DELIVERY_COUNT {
        Some(DeadLetter::DeliveryCountExceeded)
    } else {
        None
    }
}

/// The property bag of the MQTT topic `devices/{id}/messages/devicebound/{bag}`: system
/// properties (`$.mid`, `$.cid`, `$.uid`, `$.to`, `$.ct`, `$.ce`, `iothub-ack`), then the
/// application properties, each URL-encoded (the Python device SDK's
/// `mqtt_topic_iothub.extract_message_properties_from_topic` reads these keys, ignores `$.to`,
/// URL-decodes keys and values, and takes every other key as an application property).
pub fn topic_properties(device_id: &str, message: &C2dMessage) -> PropertyBag {
    let mut bag = PropertyBag::new();
    let system = [
        ("$.mid", &message.message_id),
        ("$.cid", &message.correlation_id),
        ("$.uid", &message.user_id),
    ];
    for (key, value) in system {
        if let Some(value) = value {
            bag.insert(key, value.as_str());
        }
    }
    bag.insert("$.to", format!("/devices/{device_id}/messages/deviceBound"));
    let content = [
        ("$.ct", &message.content_type),
        ("$.ce", &message.content_encoding),
        ("iothub-ack", &message.ack),
    ];
    for (key, value) in content {
        if let Some(value) = value {
            bag.insert(key, value.as_str());
        }
    }
    for (key, value) in &message.properties {
        bag.0.push((key.clone(), Some(value.clone())));
    }
    bag
}

/// Removes the messages of `device_id`'s queue that must leave it at `now_ms` and returns the
/// others, oldest first.
fn live_queue(
    tx: &Transaction<'_>,
    device_id: &str,
    now_ms: i64,
) -> Result<Vec<C2dMessage>, ApiError> {
    let mut live = Vec::new();
    for message in tx.c2d_queue(device_id)? {
        match dead_letter(&message, now_ms) {
            Some(reason) => {
                tracing::info!(
                    device_id,
                    sequence = message.sequence,
                    ?reason,
                    "cloud-to-device message dead-lettered"
                );
                tx.delete_c2d(device_id, message.sequence)?;
            }
            None => live.push(message),
        }
    }
    Ok(live)
}

/// Queues `message` for `device_id` at `now_ms` (its sequence number, enqueued time and
/// delivery count are set here) if the device exists and its queue has room; the device's
/// connection is told after the commit. Returns the sequence number.
pub fn enqueue(
    tx: &Transaction<'_>,
    device_id: &str,
    mut message: C2dMessage,
    now_ms: i64,
) -> Written<i64> {
    if tx.device(device_id)?.is_none() {
        return Err(ApiError::new(
            ErrorCode::DeviceNotFound,
            format!("device {device_id} is not registered"),
        ));
    }
    let pending = live_queue(tx, device_id, now_ms)?.len();
    admit(pending, message.body.len())?;
    message.sequence = tx.next_counter(SEQUENCE_COUNTER)?;
    message.enqueued_ms = now_ms;
    message.delivery_count = 0;
    tx.put_c2d(device_id, &message)?;
    let effect = Effect::CloudToDevice {
        device_id: device_id.to_owned(),
    };
    Ok((message.sequence, vec![effect]))
}

/// The messages of `device_id` to hand to it at `now_ms`, oldest first, skipping those in
/// `in_flight` (handed over and not yet answered): each one's delivery count goes up by one. A
/// message that expired or was delivered too often is dead-lettered instead.
pub fn deliver(
    tx: &Transaction<'_>,
    device_id: &str,
    in_flight: &[i64],
    now_ms: i64,
) -> Result<Vec<C2dMessage>, ApiError> {
    let mut delivered = Vec::new();
    for mut message in live_queue(tx, device_id, now_ms)? {
        if in_flight.contains(&message.sequence) {
            continue;
        }
        message.delivery_count += 1;
        tx.put_c2d(device_id, &message)?;
        delivered.push(message);
    }
    Ok(delivered)
}

/// Completes message `sequence` of `device_id`: it leaves the queue. `false` if it was no longer
/// there (completed already, or dead-lettered).
pub fn complete(tx: &Transaction<'_>, device_id: &str, sequence: i64) -> Result<bool, ApiError> {
    Ok(tx.delete_c2d(device_id, sequence)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn message(expiry_ms: i64, delivery_count: u32) -> C2dMessage {
        C2dMessage {
            expiry_ms,
            delivery_count,
            ..C2dMessage::default()
        }
    }

    #[test]
    fn the_fifty_first_message_and_a_body_over_64_kb_are_refused_as_iot_hub_refuses_them() {
        assert!(admit(MAX_PENDING - 1, MAX_SIZE).is_ok());
        let full = admit(MAX_PENDING, 10).unwrap_err();
        assert_eq!(full.code, ErrorCode::DeviceMaximumQueueDepthExceeded);
        assert_eq!(full.code.number(), 403004);
        let large = admit(0, MAX_SIZE + 1).unwrap_err();
        assert_eq!(large.code, ErrorCode::MessageTooLarge);
    }

    #[test]
    fn a_message_lives_an_hour_by_default_and_leaves_when_expired_or_delivered_ten_times() {
        assert_eq!(expiry(NOW, None), NOW + 3_600_000);
        assert_eq!(expiry(NOW, Some(NOW + 5)), NOW + 5);
        let fresh = message(NOW + 1, 0);
        assert_eq!(dead_letter(&fresh, NOW), None);
        assert_eq!(dead_letter(&fresh, NOW + 1), Some(DeadLetter::Expired));
        assert_eq!(dead_letter(&message(NOW + 1, 9), NOW), None);
        assert_eq!(
            dead_letter(&message(NOW + 1, 10), NOW),
            Some(DeadLetter::DeliveryCountExceeded)
        );
    }

    #[test]
    fn the_topic_carries_system_properties_then_url_encoded_application_properties() {
        let message = C2dMessage {
            message_id: Some("m 1".into()),
            correlation_id: Some("c/1".into()),
            ack: Some("full".into()),
            properties: vec![("color".into(), "dark blue&1".into())],
            ..message(NOW, 0)
        };
        assert_eq!(
            topic_properties("d1", &message).encode(),
            "%24.mid=m%201&%24.cid=c%2F1&%24.to=%2Fdevices%2Fd1%2Fmessages%2FdeviceBound\
             &iothub-ack=full&color=dark%20blue%261"
        );
    }

    #[test]
    fn the_queue_counts_deliveries_drops_expired_messages_and_survives_a_reopen() {
        let (mut store, dir) = crate::store::tests::temp_store("c2d");
        let device = edgetwin_wire::rest::Device::default();
        store
            .transaction(|tx| -> Result<(), ApiError> {
                crate::registry::create_device(tx, "d1", device)?;
                for (n, expiry_ms) in [(1, NOW + 10), (2, NOW + 1_000)] {
                    let body = vec![n];
                    let queued = C2dMessage {
                        expiry_ms,
                        body,
                        ..C2dMessage::default()
                    };
                    enqueue(tx, "d1", queued, NOW)?;
                }
                Ok(())
            })
            .unwrap();
        drop(store);
        let mut store = crate::store::Store::open(&dir.join("hub.db")).unwrap();
        store
            .transaction(|tx| -> Result<(), ApiError> {
                let first = deliver(tx, "d1", &[], NOW)?;
                assert_eq!(first.len(), 2);
                assert_eq!(first[0].body, vec![1]);
                assert_eq!(first[0].delivery_count, 1);
                // in flight: not handed over again
                assert!(
                    deliver(tx, "d1", &[first[0].sequence, first[1].sequence], NOW)?.is_empty()
                );
                // the first expired meanwhile: dead-lettered; the second is delivered again
                let again = deliver(tx, "d1", &[], NOW + 10)?;
                assert_eq!(again.len(), 1);
                assert_eq!(
                    (again[0].body.clone(), again[0].delivery_count),
                    (vec![2], 2)
                );
                assert!(complete(tx, "d1", again[0].sequence)?);
                assert!(!complete(tx, "d1", again[0].sequence)?);
                assert!(tx.c2d_queue("d1")?.is_empty());
                Ok(())
            })
            .unwrap();
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
