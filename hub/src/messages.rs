//! The bounded, inspectable log of device-to-cloud messages (telemetry and module outputs).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// How many messages the log keeps; older ones are dropped first.
pub const MESSAGE_LOG_CAPACITY: usize = 10_000;

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
    /// The body as UTF-8 text (invalid sequences replaced).
    pub body: String,
    /// When the hub accepted it.
    pub enqueued_time_utc: String,
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

/// The log.
#[derive(Default)]
pub struct MessageLog {
    /// Messages, oldest first, and the last sequence number given.
    inner: Mutex<(VecDeque<Message>, u64)>,
}

impl MessageLog {
    /// Appends a message, dropping the oldest beyond capacity; returns its sequence number.
    pub fn push(&self, mut message: Message) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.1 += 1;
        message.sequence = inner.1;
        if inner.0.len() == MESSAGE_LOG_CAPACITY {
            inner.0.pop_front();
        }
        inner.0.push_back(message);
        inner.1
    }

    /// The messages matching `filter`, oldest first.
    pub fn list(&self, filter: &MessageFilter) -> Vec<Message> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let matches = |wanted: &Option<String>, value: Option<&str>| {
            wanted.as_deref().is_none_or(|w| Some(w) == value)
        };
        inner
            .0
            .iter()
            .filter(|m| m.sequence > filter.after)
            .filter(|m| matches(&filter.device_id, Some(&m.device_id)))
            .filter(|m| matches(&filter.module_id, m.module_id.as_deref()))
            .filter(|m| matches(&filter.output, m.output.as_deref()))
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
            body: String::new(),
            enqueued_time_utc: String::new(),
        }
    }

    #[test]
    fn the_log_keeps_the_newest_messages_up_to_its_capacity() {
        let log = MessageLog::default();
        for _ in 0..MESSAGE_LOG_CAPACITY + 5 {
            log.push(message("d"));
        }
        let all = log.list(&MessageFilter::default());
        assert_eq!(all.len(), MESSAGE_LOG_CAPACITY);
        assert_eq!(all[0].sequence, 6);
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
