//! The bounded, inspectable log of device-to-cloud messages (telemetry and module outputs),
//! capped by count and by bytes; a read returns at most [`MAX_READ_MESSAGES`] messages and about
//! [`MAX_READ_BYTES`] of bodies (page on with `after`), so readers cannot make the hub copy the
//! whole log at once.
//!
//! Part of the core: depends on nothing else of the hub.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::watch;

/// How many messages the log keeps; older ones are dropped first.
pub const MESSAGE_LOG_CAPACITY: usize = 10_000;
/// How many bytes of bodies and properties the log keeps; older messages are dropped first.
pub const MESSAGE_LOG_BYTES: usize = 64 * 1024 * 1024;
/// Most messages one read returns.
pub const MAX_READ_MESSAGES: usize = 1000;
/// Bytes of bodies and properties after which a read stops adding messages.
pub const MAX_READ_BYTES: usize = 4 * 1024 * 1024;

/// One message as it arrived.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Position in the hub's message stream, increasing from 1.
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

    /// What the message counts against the byte caps.
    fn size(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let properties: usize = self.properties.iter().map(|(k, v)| k.len() + text(v)).sum();
        text(&self.body) + text(&self.body_base64) + properties + 128
    }
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

/// The messages held and what they cost.
#[derive(Default)]
struct Held {
    /// Messages, oldest first.
    messages: VecDeque<Message>,
    /// The last sequence number given.
    sequence: u64,
    /// Sum of [`Message::size`] over `messages`.
    bytes: usize,
}

/// The log.
pub struct MessageLog {
    /// What is held.
    inner: Mutex<Held>,
    /// The last sequence number given, for live readers to wait on.
    latest: watch::Sender<u64>,
}

impl Default for MessageLog {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            latest: watch::Sender::new(0),
        }
    }
}

impl MessageLog {
    /// The last sequence number given (0 before the first message).
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// A receiver that changes whenever a message is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Appends a message, dropping the oldest beyond the count and byte caps; returns its
    /// sequence number.
    pub fn push(&self, mut message: Message) -> u64 {
        let mut held = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        held.sequence += 1;
        message.sequence = held.sequence;
        held.bytes += message.size();
        held.messages.push_back(message);
        while held.messages.len() > MESSAGE_LOG_CAPACITY || held.bytes > MESSAGE_LOG_BYTES {
            match held.messages.pop_front() {
                Some(old) => held.bytes -= old.size(),
                None => break,
            }
        }
        let sequence = held.sequence;
        drop(held);
        self.latest.send_replace(sequence);
        sequence
    }

    /// The oldest messages matching `filter`, at most [`MAX_READ_MESSAGES`] and about
    /// [`MAX_READ_BYTES`] (always at least one if any match).
    pub fn list(&self, filter: &MessageFilter) -> Vec<Message> {
        let held = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let matches = |wanted: &Option<String>, value: Option<&str>| {
            wanted.as_deref().is_none_or(|w| Some(w) == value)
        };
        let mut bytes = 0;
        held.messages
            .iter()
            .filter(|m| m.sequence > filter.after)
            .filter(|m| matches(&filter.device_id, Some(&m.device_id)))
            .filter(|m| matches(&filter.module_id, m.module_id.as_deref()))
            .filter(|m| matches(&filter.output, m.output.as_deref()))
            .take(MAX_READ_MESSAGES)
            .take_while(|m| {
                let size = m.size();
                let fits = bytes == 0 || bytes + size <= MAX_READ_BYTES;
                bytes += size;
                fits
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(device: &str) -> Message {
        Message {
            sequence: 0,
            device_id: device.into(),
            module_id: None,
            output: None,
            properties: BTreeMap::new(),
            body: Some(String::new()),
            body_base64: None,
            enqueued_time_utc: String::new(),
        }
    }

    fn sized(kib: usize) -> Message {
        let (body, body_base64) = Message::body_of(&vec![b'x'; kib * 1024]);
        Message {
            body,
            body_base64,
            ..message("d")
        }
    }

    #[test]
    fn the_log_is_capped_by_bytes_as_well_as_by_count() {
        let log = MessageLog::default();
        let count = MESSAGE_LOG_BYTES / (250 * 1024) + 50;
        for _ in 0..count {
            log.push(sized(250));
        }
        let held = log.inner.lock().unwrap();
        assert!(held.bytes <= MESSAGE_LOG_BYTES, "{} bytes held", held.bytes);
        assert!(held.messages.len() < count);
        assert_eq!(held.messages.back().unwrap().sequence, count as u64);
    }

    #[test]
    fn a_read_returns_a_bounded_page_and_the_next_one_follows_with_after() {
        let log = MessageLog::default();
        for _ in 0..40 {
            log.push(sized(250));
        }
        let first = log.list(&MessageFilter::default());
        let bytes: usize = first.iter().map(Message::size).sum();
        assert!(bytes <= MAX_READ_BYTES && !first.is_empty());
        assert!(first.len() < 40);
        let next = log.list(&MessageFilter {
            after: first.last().unwrap().sequence,
            ..MessageFilter::default()
        });
        assert_eq!(next[0].sequence, first.last().unwrap().sequence + 1);
    }

    #[test]
    fn binary_bodies_come_back_in_base64_unchanged() {
        let payload = [0xff, 0x00, 0xfe, b'a'];
        let (body, body_base64) = Message::body_of(&payload);
        assert_eq!(body, None);
        assert_eq!(body_base64.as_deref(), Some("/wD+YQ=="));
        assert_eq!(
            Message::body_of(b"{\"t\":1}").0.as_deref(),
            Some("{\"t\":1}")
        );
    }

    #[test]
    fn the_log_keeps_the_newest_messages_up_to_its_capacity() {
        let log = MessageLog::default();
        for _ in 0..MESSAGE_LOG_CAPACITY + 5 {
            log.push(message("d"));
        }
        let held = log.inner.lock().unwrap();
        assert_eq!(held.messages.len(), MESSAGE_LOG_CAPACITY);
        assert_eq!(held.messages[0].sequence, 6);
    }

    #[test]
    fn a_subscriber_is_told_of_each_appended_message() {
        let log = MessageLog::default();
        let mut subscriber = log.subscribe();
        assert!(!subscriber.has_changed().unwrap());
        let sequence = log.push(message("d"));
        assert!(subscriber.has_changed().unwrap());
        assert_eq!(*subscriber.borrow_and_update(), sequence);
        assert_eq!(log.latest(), sequence);
    }

    #[test]
    fn filters_select_by_device_and_sequence() {
        let log = MessageLog::default();
        log.push(message("a"));
        log.push(message("b"));
        log.push(message("a"));
        let filter = MessageFilter {
            device_id: Some("a".into()),
            after: 1,
            ..MessageFilter::default()
        };
        let found: Vec<u64> = log.list(&filter).iter().map(|m| m.sequence).collect();
        assert_eq!(found, vec![3]);
    }
}
