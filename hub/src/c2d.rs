//! Cloud-to-device messages: each device's durable queue with IoT Hub's limits and the rules a
//! message follows from enqueued to completed or dead-lettered ("Understand cloud-to-device
//! messaging", MicrosoftDocs azure-docs `articles/iot-hub/iot-hub-devguide-messages-c2d.md`: 50
//! messages per device queue, 64 KB per message, a default time to live of one hour, a maximum
//! delivery count of 10, a lock of one minute), and the feedback records a message's fate makes.
//! The rules are pure functions of the message and an explicit time; [`crate::c2d_queue`] applies
//! them in a transaction of the writer, and the doors (MQTT delivery, HTTPS receive and settle,
//! the AMQP sender and feedback receiver) are thin around that.
//!
//! A leaf of the core: depends on nothing else of the hub but [`crate::ids`]' time format.

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
/// How long a message received over HTTPS stays locked (invisible to other receives) before it
/// is back in the queue: "The length of this timeout is one minute and can't be changed"
/// (iot-hub-devguide-messages-c2d.md). The Azure CLI asks for another in the
/// `IotHub-MessageLockTimeout` header; the hub, as the doc says, keeps one minute.
pub const LOCK_TIMEOUT_MS: i64 = 60_000;

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
    /// Whether the sender named the expiry (`absolute-expiry-time`); HTTPS's `iothub-expiry`
    /// is empty otherwise.
    #[serde(default)]
    pub expiry_requested: bool,
    /// The lock token of the HTTPS receive that holds the message, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_token: Option<String>,
    /// Until when that lock holds (Unix milliseconds).
    #[serde(default)]
    pub locked_until_ms: i64,
    /// The body (the row's `body` column; not in the stored record).
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// How a message left its queue: the `statusCode` (and `description`) of its feedback record
/// (iot-hub-devguide-messages-c2d.md, "Message feedback": Success, Expired,
/// DeliveryCountExceeded, Rejected, Purged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The device completed it.
    Success,
    /// Its time to live passed.
    Expired,
    /// It was delivered (or abandoned) [`MAX_DELIVERY_COUNT`] times without being completed.
    DeliveryCountExceeded,
    /// The device rejected it (HTTPS).
    Rejected,
    /// The service purged the device's queue.
    Purged,
}

impl Fate {
    /// The feedback record's `statusCode`. Its `description` is the same text: the doc's
    /// example has `"description": "Success"`, and no other description is documented.
    pub fn status_code(self) -> &'static str {
        match self {
            Fate::Success => "Success",
            Fate::Expired => "Expired",
            Fate::DeliveryCountExceeded => "DeliveryCountExceeded",
            Fate::Rejected => "Rejected",
            Fate::Purged => "Purged",
        }
    }

    /// Whether a message sent with `iothub-ack` = `ack` gets a feedback record for this fate:
    /// `positive` when completed, `negative` when dead-lettered (every other fate), `full` for
    /// both, `none` (or no ack) never.
    pub fn acknowledged(self, ack: Option<&str>) -> bool {
        match ack {
            Some("full") => true,
            Some("positive") => self == Fate::Success,
            Some("negative") => self != Fate::Success,
            _ => false,
        }
    }
}

/// One record of a feedback message's JSON array (iot-hub-devguide-messages-c2d.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRecord {
    /// The message id of the cloud-to-device message (empty if it had none).
    pub original_message_id: String,
    /// When its fate happened (ISO 8601 UTC): when it expired, else when it was settled.
    pub enqueued_time_utc: String,
    /// [`Fate::status_code`].
    pub status_code: String,
    /// The same text (see [`Fate::status_code`]).
    pub description: String,
    /// The device the message was for.
    pub device_id: String,
    /// That device's generation id.
    pub device_generation_id: String,
}

/// The feedback record `message` of `device_id` (generation `generation_id`) makes when it
/// leaves its queue at `now_ms` with `fate`, if its sender asked for one.
pub fn feedback(
    device_id: &str,
    generation_id: &str,
    message: &C2dMessage,
    fate: Fate,
    now_ms: i64,
) -> Option<FeedbackRecord> {
    if !fate.acknowledged(message.ack.as_deref()) {
        return None;
    }
    let at_ms = if fate == Fate::Expired {
        message.expiry_ms.min(now_ms)
    } else {
        now_ms
    };
    Some(FeedbackRecord {
        original_message_id: message.message_id.clone().unwrap_or_default(),
        enqueued_time_utc: iso_ms(at_ms),
        status_code: fate.status_code().to_owned(),
        description: fate.status_code().to_owned(),
        device_id: device_id.to_owned(),
        device_generation_id: generation_id.to_owned(),
    })
}

/// Most records in one feedback message: IoT Hub "sends out the feedback either when the batch
/// reaches to 64 messages, or in 15 seconds from last sent" (the hub sends what is there at once).
pub const FEEDBACK_BATCH: usize = 64;
/// How long a feedback record waits for a receiver (`feedback.ttlAsIso8601`, default one hour).
pub const FEEDBACK_TTL_MS: i64 = 60 * 60 * 1000;
/// How long a feedback message sent waits for its receiver to settle it before it is sent again
/// (`feedback.lockDurationAsIso8601`, default 60 seconds).
pub const FEEDBACK_LOCK_MS: i64 = 60_000;
/// Sends after which an unsettled feedback record is dropped (`feedback.maxDeliveryCount`,
/// default 10).
pub const FEEDBACK_MAX_DELIVERY_COUNT: u32 = 10;

/// A feedback record in the store, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFeedback {
    /// Its key, in the order records were made.
    pub sequence: i64,
    /// When it was made (Unix milliseconds).
    pub created_ms: i64,
    /// Until when the message that carries it waits for its receiver's settlement.
    pub locked_until_ms: i64,
    /// How many times it was sent.
    pub delivery_count: u32,
    /// The record.
    pub record: FeedbackRecord,
}

/// What to do with a stored feedback record at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackDue {
    /// Send it (again).
    Send,
    /// Its last send still waits for a settlement.
    Wait,
    /// Drop it: it expired, or was sent [`FEEDBACK_MAX_DELIVERY_COUNT`] times.
    Drop,
}

/// What to do with `pending` at `now_ms`.
pub fn feedback_due(pending: &PendingFeedback, now_ms: i64) -> FeedbackDue {
    if now_ms >= pending.created_ms + FEEDBACK_TTL_MS {
        FeedbackDue::Drop
    } else if now_ms < pending.locked_until_ms {
        FeedbackDue::Wait
    } else if pending.delivery_count >= FEEDBACK_MAX_DELIVERY_COUNT {
        FeedbackDue::Drop
    } else {
        FeedbackDue::Send
    }
}

/// Unix milliseconds as ISO 8601 UTC.
fn iso_ms(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    crate::ids::iso(at)
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

/// Whether `message` must leave the queue at `now_ms` instead of being delivered again, and why.
pub fn dead_letter(message: &C2dMessage, now_ms: i64) -> Option<Fate> {
    if now_ms >= message.expiry_ms {
        Some(Fate::Expired)
    } else if message.delivery_count >= MAX_DELIVERY_COUNT {
        Some(Fate::DeliveryCountExceeded)
    } else {
        None
    }
}

/// Whether `message` may be handed to the device at `now_ms`: no HTTPS receive holds it, or its
/// lock timed out ("messages automatically transition from the Invisible state back to the
/// Enqueued state after a visibility timeout").
pub fn is_available(message: &C2dMessage, now_ms: i64) -> bool {
    message.lock_token.is_none() || now_ms >= message.locked_until_ms
}

/// Locks `message` with `token` for [`LOCK_TIMEOUT_MS`] from `now_ms` (an HTTPS receive). The
/// delivery count does not change: "If the lock expires, the message returns to Enqueued but
/// the delivery count does not increment" (iot-hub-devguide-messages-c2d.md).
pub fn lock(message: &mut C2dMessage, token: String, now_ms: i64) {
    message.lock_token = Some(token);
    message.locked_until_ms = now_ms + LOCK_TIMEOUT_MS;
}

/// What a device does with a message it holds the lock of (HTTPS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// `DELETE …/deviceBound/{lockToken}`: done with it.
    Complete,
    /// `DELETE …/deviceBound/{lockToken}?reject`: dead-letter it.
    Reject,
    /// `POST …/deviceBound/{lockToken}/abandon`: put it back in the queue.
    Abandon,
}

/// The lock token named is not the message's lock, or the lock timed out (IoT Hub: 412002
/// `DeviceMessageLockLost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLost;

/// Settles `message` with the lock `token` at `now_ms`: the fate with which it leaves the queue,
/// or `None` when abandoned back into it (its lock released, its delivery count one more: "Each
/// explicit abandon transitions a message from Invisible back to Enqueued and increments the
/// delivery count"; the abandon that reaches [`MAX_DELIVERY_COUNT`] dead-letters it).
pub fn settle(
    message: &mut C2dMessage,
    token: &str,
    how: Settlement,
    now_ms: i64,
) -> Result<Option<Fate>, LockLost> {
    if message.lock_token.as_deref() != Some(token) || now_ms >= message.locked_until_ms {
        return Err(LockLost);
    }
    match how {
        Settlement::Complete => Ok(Some(Fate::Success)),
        Settlement::Reject => Ok(Some(Fate::Rejected)),
        Settlement::Abandon => {
            message.lock_token = None;
            message.locked_until_ms = 0;
            message.delivery_count += 1;
            Ok((message.delivery_count >= MAX_DELIVERY_COUNT)
                .then_some(Fate::DeliveryCountExceeded))
        }
    }
}

/// The devices, among `expiries` (each queued message's device and expiry), with a message
/// expired at `now_ms`, each once: the sweep dead-letters those (and makes their feedback)
/// while nobody touches their queue.
pub fn expired_devices(expiries: &[(String, i64)], now_ms: i64) -> Vec<String> {
    let mut devices: Vec<String> = expiries
        .iter()
        .filter(|(_, expiry_ms)| now_ms >= *expiry_ms)
        .map(|(device_id, _)| device_id.clone())
        .collect();
    devices.sort();
    devices.dedup();
    devices
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

/// The response headers of an HTTPS receive (`GET /devices/{id}/messages/deviceBound`) besides
/// `ETag` (the lock token in quotes), as the clients read them: `iothub-messageid`, `-to`,
/// `-expiry`, `-correlationid` and `iothub-app-{name}` (azure-iot-sdk-node
/// `azure-iot-http-base` `Http.toMessage`), `iothub-sequencenumber`, `-userid`, `-ack`,
/// `-deliverycount`, `-enqueuedtime`, `ContentType`, `ContentEncoding` (the Azure CLI's
/// `MESSAGING_HTTP_C2D_SYSTEM_PROPERTIES`; the C SDK's `iothubtransporthttp.c` reads the content
/// type and encoding under those two names). Absent ids are empty values and times read
/// `MM/dd/yyyy hh:mm:ss AM`, UTC, as in the Azure CLI's recorded IoT Hub answers
/// (azure-iot-cli-extension's device-messaging test fixtures; not confirmed against IoT Hub).
pub fn https_headers(device_id: &str, message: &C2dMessage) -> Vec<(String, String)> {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let mut headers = vec![
        ("iothub-messageid".to_owned(), text(&message.message_id)),
        (
            "iothub-correlationid".to_owned(),
            text(&message.correlation_id),
        ),
        ("iothub-userid".to_owned(), text(&message.user_id)),
        (
            "iothub-to".to_owned(),
            format!("/devices/{device_id}/messages/deviceBound"),
        ),
        (
            "iothub-sequencenumber".to_owned(),
            message.sequence.to_string(),
        ),
        (
            "iothub-enqueuedtime".to_owned(),
            clock_time(message.enqueued_ms),
        ),
        (
            "iothub-expiry".to_owned(),
            if message.expiry_requested {
                clock_time(message.expiry_ms)
            } else {
                String::new()
            },
        ),
        (
            "iothub-deliverycount".to_owned(),
            message.delivery_count.to_string(),
        ),
    ];
    let optional = [
        ("iothub-ack", &message.ack),
        ("ContentType", &message.content_type),
        ("ContentEncoding", &message.content_encoding),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            headers.push((name.to_owned(), value.clone()));
        }
    }
    for (name, value) in &message.properties {
        headers.push((format!("iothub-app-{name}"), value.clone()));
    }
    headers
}

/// Unix milliseconds as `MM/dd/yyyy hh:mm:ss AM` (UTC), .NET's invariant `G` format.
fn clock_time(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (hour, period) = match at.hour() {
        0 => (12, "AM"),
        h @ 1..=11 => (h, "AM"),
        12 => (12, "PM"),
        h => (h - 12, "PM"),
    };
    format!(
        "{:02}/{:02}/{:04} {hour:02}:{:02}:{:02} {period}",
        u8::from(at.month()),
        at.day(),
        at.year(),
        at.minute(),
        at.second()
    )
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
        assert_eq!(dead_letter(&fresh, NOW + 1), Some(Fate::Expired));
        assert_eq!(dead_letter(&message(NOW + 1, 9), NOW), None);
        assert_eq!(
            dead_letter(&message(NOW + 1, 10), NOW),
            Some(Fate::DeliveryCountExceeded)
        );
    }

    #[test]
    fn a_lock_holds_a_minute_and_only_its_token_settles_the_message() {
        let mut held = message(NOW + 3_600_000, 0);
        assert!(is_available(&held, NOW));
        lock(&mut held, "t1".into(), NOW);
        assert!(!is_available(&held, NOW + LOCK_TIMEOUT_MS - 1));
        assert!(is_available(&held, NOW + LOCK_TIMEOUT_MS));
        assert_eq!(
            held.delivery_count, 0,
            "a lock does not count as a delivery"
        );
        let settled = |how, at| settle(&mut held.clone(), "t1", how, at);
        assert_eq!(
            settle(&mut held.clone(), "t2", Settlement::Complete, NOW),
            Err(LockLost)
        );
        assert_eq!(
            settled(Settlement::Complete, NOW + LOCK_TIMEOUT_MS),
            Err(LockLost)
        );
        assert_eq!(settled(Settlement::Complete, NOW), Ok(Some(Fate::Success)));
        assert_eq!(settled(Settlement::Reject, NOW), Ok(Some(Fate::Rejected)));
    }

    #[test]
    fn each_abandon_counts_a_delivery_and_the_tenth_dead_letters_the_message() {
        let mut held = message(NOW + 3_600_000, 0);
        for n in 1..MAX_DELIVERY_COUNT {
            lock(&mut held, format!("t{n}"), NOW);
            let token = format!("t{n}");
            assert_eq!(
                settle(&mut held, &token, Settlement::Abandon, NOW),
                Ok(None)
            );
            assert_eq!((held.delivery_count, held.lock_token.clone()), (n, None));
            assert_eq!(
                settle(&mut held, &token, Settlement::Abandon, NOW),
                Err(LockLost)
            );
        }
        lock(&mut held, "last".into(), NOW);
        assert_eq!(
            settle(&mut held, "last", Settlement::Abandon, NOW),
            Ok(Some(Fate::DeliveryCountExceeded))
        );
    }

    #[test]
    fn feedback_follows_the_ack_and_an_expiry_is_dated_when_it_happened() {
        use Fate::*;
        for (ack, wanted) in [
            (
                Some("full"),
                vec![Success, Expired, DeliveryCountExceeded, Rejected, Purged],
            ),
            (Some("positive"), vec![Success]),
            (
                Some("negative"),
                vec![Expired, DeliveryCountExceeded, Rejected, Purged],
            ),
            (Some("none"), vec![]),
            (None, vec![]),
        ] {
            for fate in [Success, Expired, DeliveryCountExceeded, Rejected, Purged] {
                assert_eq!(
                    fate.acknowledged(ack),
                    wanted.contains(&fate),
                    "{ack:?} {fate:?}"
                );
            }
        }
        let sent = C2dMessage {
            message_id: Some("m1".into()),
            ack: Some("negative".into()),
            ..message(NOW, 0)
        };
        assert_eq!(feedback("d1", "g1", &sent, Success, NOW + 5), None);
        assert_eq!(
            feedback("d1", "g1", &sent, Expired, NOW + 5),
            Some(FeedbackRecord {
                original_message_id: "m1".into(),
                enqueued_time_utc: "2023-11-14T22:13:20.0000000Z".into(),
                status_code: "Expired".into(),
                description: "Expired".into(),
                device_id: "d1".into(),
                device_generation_id: "g1".into(),
            })
        );
        let json =
            serde_json::to_value(feedback("d1", "g1", &sent, Rejected, NOW).unwrap()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "description",
                "deviceGenerationId",
                "deviceId",
                "enqueuedTimeUtc",
                "originalMessageId",
                "statusCode"
            ]
        );
    }

    #[test]
    fn a_feedback_record_is_sent_until_settled_within_its_ttl_and_delivery_count() {
        let pending = |created_ms, locked_until_ms, delivery_count| PendingFeedback {
            sequence: 1,
            created_ms,
            locked_until_ms,
            delivery_count,
            record: feedback(
                "d",
                "g",
                &C2dMessage {
                    ack: Some("full".into()),
                    ..message(NOW, 0)
                },
                Fate::Success,
                NOW,
            )
            .unwrap(),
        };
        assert_eq!(feedback_due(&pending(NOW, 0, 0), NOW), FeedbackDue::Send);
        assert_eq!(
            feedback_due(&pending(NOW, NOW + 1, 1), NOW),
            FeedbackDue::Wait
        );
        assert_eq!(feedback_due(&pending(NOW, NOW, 1), NOW), FeedbackDue::Send);
        assert_eq!(
            feedback_due(&pending(NOW, 0, FEEDBACK_MAX_DELIVERY_COUNT), NOW),
            FeedbackDue::Drop
        );
        assert_eq!(
            feedback_due(&pending(NOW - FEEDBACK_TTL_MS, 0, 0), NOW),
            FeedbackDue::Drop
        );
    }

    #[test]
    fn the_sweep_finds_each_device_with_an_expired_message_once() {
        let expiries = [
            ("b".to_owned(), NOW),
            ("a".to_owned(), NOW - 1),
            ("b".to_owned(), NOW - 5),
            ("c".to_owned(), NOW + 1),
        ];
        assert_eq!(expired_devices(&expiries, NOW), ["a", "b"]);
        assert!(expired_devices(&expiries, NOW - 10).is_empty());
    }

    #[test]
    fn https_headers_carry_the_system_properties_the_clients_read() {
        let received = C2dMessage {
            sequence: 7,
            message_id: Some("m1".into()),
            content_type: Some("application/json".into()),
            ack: Some("full".into()),
            enqueued_ms: NOW,
            delivery_count: 2,
            properties: vec![("color".into(), "blue".into())],
            ..message(NOW + 13 * 3_600_000, 0)
        };
        let headers = https_headers("d1", &received);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("iothub-messageid"), Some("m1"));
        assert_eq!(get("iothub-correlationid"), Some(""));
        assert_eq!(get("iothub-to"), Some("/devices/d1/messages/deviceBound"));
        assert_eq!(get("iothub-sequencenumber"), Some("7"));
        assert_eq!(get("iothub-enqueuedtime"), Some("11/14/2023 10:13:20 PM"));
        assert_eq!(get("iothub-expiry"), Some(""));
        assert_eq!(get("iothub-deliverycount"), Some("2"));
        assert_eq!(get("iothub-ack"), Some("full"));
        assert_eq!(get("ContentType"), Some("application/json"));
        assert_eq!(get("ContentEncoding"), None);
        assert_eq!(get("iothub-app-color"), Some("blue"));
        let requested = C2dMessage {
            expiry_requested: true,
            ..received
        };
        assert_eq!(
            https_headers("d1", &requested)
                .into_iter()
                .find(|(n, _)| n == "iothub-expiry"),
            Some(("iothub-expiry".into(), "11/15/2023 11:13:20 AM".into()))
        );
        assert_eq!(clock_time(NOW - 22 * 3_600_000), "11/14/2023 12:13:20 AM");
        assert_eq!(clock_time(NOW - 10 * 3_600_000), "11/14/2023 12:13:20 PM");
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
