//! Cloud-to-device messages: each device's durable queue with IoT Hub's limits and the rules a
//! message follows from enqueued to completed or dead-lettered ("Understand cloud-to-device
//! messaging": 50 messages per device queue, 64 KB per message, a default time to live of one
//! hour, a maximum delivery count of 10). The rules are pure functions of the message and an
//! explicit time; [`crate::c2d_queue`] applies them in a transaction of the writer, and the doors
//! (MQTT delivery, the AMQP sender) are thin around that.
//!
//! A leaf of the core: depends on nothing else of the hub.

use edgetwin_wire::topic::PropertyBag;
use serde::{Deserialize, Serialize};

/// Most messages waiting in one device's queue: the 51st is refused with
/// `DeviceMaximumQueueDepthExceeded` (403004).
pub const MAX_PENDING: usize = 50;
/// Largest body of a cloud-to-device message (IoT Hub: 64 KB).
pub const MAX_SIZE: usize = 64 * 1024;
/// Time to live of a message that names no expiry (IoT Hub's default: one hour).
pub const DEFAULT_TTL_MS: i64 = 60 * 60 * 1000;
/// Deliveries after which a message not completed is dead-lettered (IoT Hub's default: 10).
pub const MAX_DELIVERY_COUNT: u32 = 10;

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

/// Why a message may not join a device's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its body is over [`MAX_SIZE`] bytes (IoT Hub: `MessageTooLarge`).
    TooLarge {
        /// The body's size.
        size: usize,
    },
    /// The queue holds [`MAX_PENDING`] messages (IoT Hub: `DeviceMaximumQueueDepthExceeded`).
    QueueFull,
}

/// Whether a message of `size` bytes may join a queue that holds `pending` messages.
pub fn admit(pending: usize, size: usize) -> Result<(), Refused> {
    if size > MAX_SIZE {
        return Err(Refused::TooLarge { size });
    }
    if pending >= MAX_PENDING {
        return Err(Refused::QueueFull);
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
        assert_eq!(admit(MAX_PENDING, 10), Err(Refused::QueueFull));
        assert_eq!(
            admit(0, MAX_SIZE + 1),
            Err(Refused::TooLarge { size: MAX_SIZE + 1 })
        );
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
}
