//! The hub's message log (`GET /edgetwin/messages`, the console's telemetry page): the events
//! the Event Hub-compatible endpoint keeps (the store's `events` table), every partition in the
//! order they were stored, as JSON. It shows what reached IoT Hub, as `az iot hub
//! monitor-events` would: it survives restarts, and loses what retention prunes; a module's
//! message that its device's routes deliver only to other modules (and not to `$upstream`) never
//! reaches IoT Hub, and is not in it. A read returns at most [`MAX_READ_MESSAGES`] messages and
//! about [`MAX_READ_BYTES`] of bodies (page on with `after`), so readers cannot make the hub copy
//! the whole log at once.
//!
//! Part of the core: depends on the events' model and the store only.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::events::Event;
use crate::store::{StoreError, Transaction};

/// Most messages one read returns.
pub const MAX_READ_MESSAGES: usize = 1000;
/// Bytes of bodies and properties after which a read stops adding messages.
pub const MAX_READ_BYTES: usize = 4 * 1024 * 1024;

/// One message as the log shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Its place in the log, increasing from 1 across restarts.
    pub sequence: u64,
    /// The sending device.
    pub device_id: String,
    /// The sending module, if any.
    pub module_id: Option<String>,
    /// The module output (`$.on`), if any.
    pub output: Option<String>,
    /// System (`$.x`) and application properties.
    pub properties: BTreeMap<String, Option<String>>,
    /// The body, if it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, if it is not UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// When the hub accepted it.
    pub enqueued_time_utc: String,
}

impl Message {
    /// `body` and `body_base64` for a payload: text when it is UTF-8, else base64 (never mangled).
    pub fn body_of(payload: &[u8]) -> (Option<String>, Option<String>) {
        use base64::Engine as _;
        match std::str::from_utf8(payload) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        }
    }

    /// A stored event as the log shows it.
    pub fn of_event(event: &Event) -> Self {
        let (body, body_base64) = Self::body_of(&event.body);
        let enqueued = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(event.enqueued_ms) * 1_000_000,
        )
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        Message {
            sequence: u64::try_from(event.logged).unwrap_or(0),
            device_id: event.device_id.clone(),
            module_id: event.module_id.clone(),
            output: output_of(event).map(str::to_owned),
            // the hub's own record of how the sender authenticated is not the sender's
            properties: event
                .properties
                .iter()
                .filter(|(key, _)| key != crate::events::AUTH_PROPERTY)
                .cloned()
                .collect(),
            body,
            body_base64,
            enqueued_time_utc: crate::ids::iso(enqueued),
        }
    }
}

/// The module output an event was sent on (`$.on`), if any.
fn output_of(event: &Event) -> Option<&str> {
    event
        .properties
        .iter()
        .find(|(key, _)| key == edgetwin_wire::topic::OUTPUT_NAME_PROPERTY)
        .and_then(|(_, value)| value.as_deref())
}

/// What an event counts against [`MAX_READ_BYTES`].
fn size(event: &Event) -> usize {
    let properties: usize = event
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
        .sum();
    event.body.len() + properties + 128
}

/// Which messages a reader wants.
#[derive(Debug, Default)]
pub struct MessageFilter {
    /// Only from this device.
    pub device_id: Option<String>,
    /// Only from this module.
    pub module_id: Option<String>,
    /// Only on this output.
    pub output: Option<String>,
    /// Only with a sequence above this.
    pub after: u64,
}

impl MessageFilter {
    /// Whether the filter takes `event` (its device is matched by the store's search).
    fn takes(&self, event: &Event) -> bool {
        let matches = |wanted: &Option<String>, value: Option<&str>| {
            wanted.as_deref().is_none_or(|w| Some(w) == value)
        };
        matches(&self.module_id, event.module_id.as_deref())
            && matches(&self.output, output_of(event))
    }
}

/// The oldest logged messages matching `filter`, at most [`MAX_READ_MESSAGES`] and about
/// [`MAX_READ_BYTES`] (always at least one if any match).
pub fn page(tx: &Transaction<'_>, filter: &MessageFilter) -> Result<Vec<Message>, StoreError> {
    let (mut count, mut bytes) = (0, 0);
    let events = tx.logged_events(
        i64::try_from(filter.after).unwrap_or(i64::MAX),
        filter.device_id.as_deref(),
        |event| filter.takes(event),
        |next| {
            let size = size(next);
            let full = count >= MAX_READ_MESSAGES || (count > 0 && bytes + size > MAX_READ_BYTES);
            count += 1;
            bytes += size;
            full
        },
    )?;
    Ok(events.iter().map(Message::of_event).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    fn event(device: &str, module: Option<&str>, output: Option<&str>, body: Vec<u8>) -> Event {
        Event {
            partition: crate::events::partition_of(device),
            sequence: 0,
            offset: 0,
            enqueued_ms: 1_700_000_000_123,
            device_id: device.into(),
            module_id: module.map(Into::into),
            properties: output
                .map(|o| vec![("$.on".to_owned(), Some(o.to_owned()))])
                .unwrap_or_default(),
            body,
            logged: 0,
        }
    }

    #[test]
    fn the_log_lists_stored_events_in_order_filtered_and_in_bounded_pages() {
        let (mut store, dir) = temp_store("message-log");
        store
            .transaction(|tx| -> Result<(), StoreError> {
                tx.append_event(event("a", Some("m"), Some("out"), b"one".to_vec()))?;
                tx.append_event(event("b", None, None, vec![0xff, 0x00]))?;
                tx.append_event(event("a", Some("m"), Some("other"), b"two".to_vec()))?;
                tx.append_event(Event {
                    properties: vec![
                        (
                            crate::events::AUTH_PROPERTY.into(),
                            Some("selfSigned".into()),
                        ),
                        ("k".into(), Some("v".into())),
                    ],
                    ..event("a", None, None, b"three".to_vec())
                })?;
                for _ in 0..20 {
                    tx.append_event(event("c", None, None, vec![b'x'; 250 * 1024]))?;
                }
                let all = page(tx, &MessageFilter::default())?;
                let sequences: Vec<u64> = all.iter().map(|m| m.sequence).collect();
                assert_eq!(
                    sequences[..4],
                    [1, 2, 3, 4],
                    "every partition, in stored order"
                );
                assert_eq!(all[1].body_base64.as_deref(), Some("/wA="));
                assert_eq!(all[0].output.as_deref(), Some("out"));
                assert_eq!(all[0].enqueued_time_utc, "2023-11-14T22:13:20.1230000Z");
                let shown: Vec<&String> = all[3].properties.keys().collect();
                assert_eq!(
                    shown,
                    ["k"],
                    "the hub's record of the sender's authentication is its own"
                );
                let bytes: usize = all
                    .iter()
                    .filter_map(|m| m.body.as_ref())
                    .map(String::len)
                    .sum();
                assert!(
                    bytes <= MAX_READ_BYTES && all.len() < 24,
                    "a page bounded by bytes"
                );
                let filter = |device: &str, module: Option<&str>, output: Option<&str>, after| {
                    MessageFilter {
                        device_id: Some(device.into()),
                        module_id: module.map(Into::into),
                        output: output.map(Into::into),
                        after,
                    }
                };
                let bodies = |filter: MessageFilter| -> Vec<String> {
                    page(tx, &filter)
                        .unwrap()
                        .into_iter()
                        .map(|m| m.body.unwrap_or_default())
                        .collect()
                };
                assert_eq!(bodies(filter("a", None, None, 0)), ["one", "two", "three"]);
                assert_eq!(bodies(filter("a", Some("m"), None, 1)), ["two"]);
                assert_eq!(bodies(filter("a", None, Some("out"), 0)), ["one"]);
                let next = page(
                    tx,
                    &MessageFilter {
                        after: *sequences.last().unwrap(),
                        ..MessageFilter::default()
                    },
                )?;
                assert_eq!(next[0].sequence, *sequences.last().unwrap() + 1);
                Ok(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
