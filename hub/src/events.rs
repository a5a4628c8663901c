//! The Event Hub-compatible endpoint's model: telemetry kept in partitions, as IoT Hub's built-in
//! `messages/events` endpoint keeps it for `azure-eventhub`, `@azure/event-hubs` and
//! `az iot hub monitor-events`. Pure logic only (which partition a device's messages go to, where
//! a reader starts, what one stored event is); the rows live in the store (`events` table,
//! appended by the writer), and the AMQP door turns them into messages.
//!
//! Part of the core: depends on nothing else of the hub.

/// Partitions of the endpoint: IoT Hub's default (a hub's partition count is fixed at creation;
/// 4 unless chosen otherwise).
pub const PARTITIONS: u32 = 4;

/// The consumer group every Event Hub has.
pub const DEFAULT_CONSUMER_GROUP: &str = "$Default";

/// Most consumer groups of the endpoint, `$Default` included: IoT Hub's ("Each IoT hub can have
/// up to 20 consumer groups", iot-hub-devguide-messages-read-builtin; whether `$Default` counts
/// is not said, and here it does).
pub const MAX_CONSUMER_GROUPS: usize = 20;

/// Longest consumer group name (ARM's `Microsoft.Devices/IotHubs/eventHubEndpoints/ConsumerGroups`
/// reference: "Character limit: 1-50").
const MAX_CONSUMER_GROUP_NAME: usize = 50;

/// Why `name` cannot name a new consumer group, if it cannot: IoT Hub's rules (1 to 50
/// characters, "Alphanumerics, hyphens, periods, and underscores", the ARM template reference of
/// `Microsoft.Devices/IotHubs/eventHubEndpoints/ConsumerGroups`). `$Default` exists already and
/// is not created.
pub fn check_consumer_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_CONSUMER_GROUP_NAME {
        return Err(format!(
            "consumer group name '{name}' must be 1 to {MAX_CONSUMER_GROUP_NAME} characters long"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "consumer group name '{name}' has '{bad}': IoT Hub takes letters, digits, '-', '.' and '_' only"
        ));
    }
    Ok(())
}

/// How long and how much the endpoint keeps: events older than the retention time, and the
/// oldest of a partition beyond its share of the byte bound, are pruned, oldest first (a
/// partition always loses a prefix, so its sequence numbers stay contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long an event is kept, in milliseconds (IoT Hub: 1 to 7 days, 1 by default).
    pub max_age_ms: i64,
    /// Most bytes the whole endpoint keeps (each partition a [`PARTITIONS`]th), counted as
    /// offsets count them (body and properties, plus one per event).
    pub max_bytes: i64,
}

/// What a partition keeps at one instant: events enqueued at or after `oldest_ms` whose offset
/// is at least `lowest_offset`; an event below either bound is pruned, with every event before
/// it in its partition (the store's `prune_events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// The oldest enqueued time kept, in milliseconds since the Unix epoch.
    pub oldest_ms: i64,
    /// The lowest offset kept.
    pub lowest_offset: i64,
}

impl Retention {
    /// IoT Hub's default retention time: 1 day ("The default is one day, but it can be
    /// increased to seven days", iot-hub-devguide-messages-read-builtin).
    pub const DEFAULT_DAYS: u32 = 1;
    /// The byte bound by default: 1 GiB for the endpoint (IoT Hub has none besides its tier's
    /// quotas; this one bounds the disk a busy local hub takes).
    pub const DEFAULT_BYTES: i64 = 1 << 30;

    /// A retention of `days` days and `max_bytes` bytes.
    pub fn new(days: u32, max_bytes: i64) -> Self {
        Retention {
            max_age_ms: i64::from(days) * 24 * 3600 * 1000,
            max_bytes,
        }
    }

    /// What a partition whose next event would get offset `next_offset` keeps at `now_ms`: the
    /// suffix of its events that is younger than the retention time and fits its share of the
    /// byte bound.
    pub fn kept(&self, now_ms: i64, next_offset: i64) -> Kept {
        Kept {
            oldest_ms: now_ms.saturating_sub(self.max_age_ms),
            lowest_offset: next_offset.saturating_sub(self.max_bytes / i64::from(PARTITIONS)),
        }
    }
}

/// Parses a size as `--retention-bytes` takes it: bytes, or a number with `K`, `M`, `G` or `T`
/// (powers of 1024; `KiB`, `MB`… alike); the error says what is wrong.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (bytes, or a number with K, M, G or T)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches(['B', 'I'])
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("'{text}': unit '{unit}' is not one of K, M, G, T")),
    };
    number
        .checked_mul(1 << shift)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("'{text}' must be more than 0 and less than 8 EiB"))
}

/// The partition of a device's messages: always the same one for a device (modules share their
/// device's), as IoT Hub keeps a device's messages in order in one partition. IoT Hub's hash is
/// not documented; here it is FNV-1a (32 bits) of the device id's UTF-8 bytes, modulo
/// [`PARTITIONS`].
pub fn partition_of(device_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in device_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % PARTITIONS
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its partition.
    pub partition: u32,
    /// Its sequence number in the partition, from 0.
    pub sequence: i64,
    /// Its offset in the partition: the stored bytes (body and properties) of the events
    /// before it plus one per event (Event Hubs' offsets are byte positions too; clients treat
    /// them as opaque).
    pub offset: i64,
    /// When the hub accepted it, in milliseconds since the Unix epoch.
    pub enqueued_ms: i64,
    /// The sending device.
    pub device_id: String,
    /// The sending module, if any.
    pub module_id: Option<String>,
    /// System (`$.mid`, `$.cid`, `$.ct`, … as MQTT's property bag names them) and application
    /// properties, in the order they came.
    pub properties: Vec<(String, Option<String>)>,
    /// The body.
    pub body: Vec<u8>,
    /// Its place in the hub's message log (`/edgetwin/messages`, the console): every event of
    /// every partition in the order they were stored, from 1 (0 until it is stored).
    pub logged: i64,
}

/// Where a reader of a partition starts: the receiver link's
/// `apache.org:selector-filter:string`, as Event Hubs clients write it
/// (`amqp.annotation.x-opt-offset > '1234'`, `… x-opt-sequence-number >= '5'`,
/// `… x-opt-enqueued-time > '1700000000000'`, `… x-opt-offset > '@latest'`; the Azure CLI's
/// `amqp.annotation.x-opt-enqueuedtimeutc > 1700000000000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// After (or at, when `inclusive`) an offset; `-1` is the start of the partition.
    Offset {
        /// The offset.
        offset: i64,
        /// Whether the event at that offset is included.
        inclusive: bool,
    },
    /// After (or at) a sequence number.
    Sequence {
        /// The sequence number.
        sequence: i64,
        /// Whether that event is included.
        inclusive: bool,
    },
    /// Events enqueued after (or at) a time, in milliseconds since the Unix epoch.
    EnqueuedTime {
        /// The time.
        ms: i64,
        /// Whether an event enqueued at exactly that time is included.
        inclusive: bool,
    },
    /// Only events that arrive from now on.
    Latest,
}

impl StartAt {
    /// The position a link without a filter starts from: the start of the partition, as Event
    /// Hubs does.
    pub const BEGINNING: StartAt = StartAt::Offset {
        offset: -1,
        inclusive: false,
    };

    /// Parses a selector filter; the error says what is wrong with it.
    pub fn parse(selector: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "the selector filter \"{selector}\" is not of the form \
                 amqp.annotation.x-opt-(offset|sequence-number|enqueued-time) (>|>=) '<value>'"
            )
        };
        let rest = selector
            .trim()
            .strip_prefix("amqp.annotation.x-opt-")
            .ok_or_else(bad)?;
        let (field, rest) = rest.split_once(char::is_whitespace).ok_or_else(bad)?;
        let rest = rest.trim_start();
        let (inclusive, rest) = match rest.strip_prefix(">=") {
            Some(rest) => (true, rest),
            None => (false, rest.strip_prefix('>').ok_or_else(bad)?),
        };
        // quoted as the Event Hubs SDKs write it, or bare as uamqp-era clients do
        let value = rest.trim();
        let value = match value.strip_prefix('\'') {
            Some(quoted) => quoted.strip_suffix('\'').ok_or_else(bad)?,
            None => value,
        };
        let number = || {
            value
                .parse::<i64>()
                .map_err(|_| format!("{selector}: '{value}' is not a number"))
        };
        Ok(match field {
            "offset" if value == "@latest" => StartAt::Latest,
            "offset" => StartAt::Offset {
                offset: number()?,
                inclusive,
            },
            "sequence-number" => StartAt::Sequence {
                sequence: number()?,
                inclusive,
            },
            // `enqueuedtimeutc`: the name the Azure CLI's IoT extension (0.25) filters on
            "enqueued-time" | "enqueuedtimeutc" => StartAt::EnqueuedTime {
                ms: number()?,
                inclusive,
            },
            _ => return Err(bad()),
        })
    }
}

/// What a partition holds, for the management `READ` of `com.microsoft:partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionInfo {
    /// The oldest sequence number kept (0 when empty).
    pub begin_sequence: i64,
    /// The last sequence number given (-1 when nothing was ever enqueued).
    pub last_sequence: i64,
    /// The last event's offset (-1 when none).
    pub last_offset: i64,
    /// When the last event was enqueued, in milliseconds since the Unix epoch (0 when none).
    pub last_enqueued_ms: i64,
    /// Whether the partition holds no event.
    pub is_empty: bool,
}

impl PartitionInfo {
    /// An empty partition that never held an event.
    pub const EMPTY: PartitionInfo = PartitionInfo {
        begin_sequence: 0,
        last_sequence: -1,
        last_offset: -1,
        last_enqueued_ms: 0,
        is_empty: true,
    };
}

/// The partition id of a link address's last segment, if it names one of the endpoint's.
pub fn partition_id(text: &str) -> Option<u32> {
    text.parse::<u32>()
        .ok()
        .filter(|p| *p < PARTITIONS && p.to_string() == text)
}

/// How the identity that sent an event authenticated, for its `iothub-connection-auth-method`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMethod {
    /// A SAS token (of the identity's key, or of a policy with DeviceConnect).
    #[default]
    Sas,
    /// An X.509 certificate whose thumbprint is registered with the identity (`selfSigned`).
    SelfSigned,
    /// An X.509 certificate chain to a CA the hub trusts (`certificateAuthority`).
    CertificateAuthority,
}

/// The stored property that keeps an X.509 sender's [`AuthMethod`] with its event; one a device
/// sends is dropped ([`stamped`]), so that a device cannot claim another method.
pub const AUTH_PROPERTY: &str = "$.auth";

impl AuthMethod {
    /// Its name in [`AUTH_PROPERTY`]; a SAS event stores none.
    fn stored(self) -> Option<&'static str> {
        match self {
            AuthMethod::Sas => None,
            AuthMethod::SelfSigned => Some("selfSigned"),
            AuthMethod::CertificateAuthority => Some("certificateAuthority"),
        }
    }

    /// The method stored with an event's `properties`.
    pub fn of(properties: &[(String, Option<String>)]) -> AuthMethod {
        let stored = properties
            .iter()
            .find(|(name, _)| name == AUTH_PROPERTY)
            .and_then(|(_, value)| value.as_deref());
        [AuthMethod::SelfSigned, AuthMethod::CertificateAuthority]
            .into_iter()
            .find(|method| method.stored() == stored)
            .unwrap_or_default()
    }

    /// The `iothub-connection-auth-method` IoT Hub sets on an event of a device (or, `module`,
    /// a module) that authenticated this way: `{"scope":"device","type":"sas","issuer":"iothub",
    /// "acceptingIpFilterRule":null}` for a SAS token (Microsoft's quickstarts print it, e.g.
    /// iot-develop "Connect an IoT Plug and Play device"); for a CA-signed certificate
    /// `"type":"x509Certificate","issuer":"external"` (telemetry of Azure Sphere devices, which
    /// authenticate with their tenant CA: gloveboxes' azure_sphere_co2_monitor; IoT Hub's
    /// connection logs alike: MicrosoftLearning AZ-220 lab 17 "asset-track" devices, DPS-enrolled
    /// under a CA). For a thumbprint (self-signed) certificate no sample was found: the type is
    /// the same and the issuer `iothub`, IoT Hub itself holding the thumbprint as it holds SAS
    /// keys (the d2c guide lists only `"issuer": "iothub"`, MicrosoftDocs/azure-docs #8860).
    pub fn annotation(self, module: bool) -> String {
        let (kind, issuer) = match self {
            AuthMethod::Sas => ("sas", "iothub"),
            AuthMethod::SelfSigned => ("x509Certificate", "iothub"),
            AuthMethod::CertificateAuthority => ("x509Certificate", "external"),
        };
        serde_json::json!({
            "scope": if module { "module" } else { "device" },
            "type": kind,
            "issuer": issuer,
            "acceptingIpFilterRule": null,
        })
        .to_string()
    }
}

/// The properties a sender's message is stored with: its own, less any [`AUTH_PROPERTY`] it
/// claimed, and the hub's record of how it authenticated.
pub fn stamped(
    mut properties: Vec<(String, Option<String>)>,
    auth: AuthMethod,
) -> Vec<(String, Option<String>)> {
    properties.retain(|(name, _)| name != AUTH_PROPERTY);
    if let Some(stored) = auth.stored() {
        properties.push((AUTH_PROPERTY.to_owned(), Some(stored.to_owned())));
    }
    properties
}

/// The newest events of a partition, kept in memory as they are committed (the writer's
/// after-commit hook pushes them), so that a reader that has caught up with the store is handed
/// them without reading them back. Bounded by [`Recent::MAX_EVENTS`] and [`Recent::MAX_BYTES`]
/// (body and properties): a reader further behind reads the store, and so does one behind what
/// retention pruned ([`Recent::forget_before`]). Pure bookkeeping.
#[derive(Debug)]
pub struct Recent {
    /// The last sequence number stored in the partition (-1: none).
    last: i64,
    /// The kept events, contiguous, the last one's sequence number `last`.
    events: std::collections::VecDeque<std::sync::Arc<Event>>,
    /// Bytes of body and properties of `events`.
    bytes: usize,
    /// Whether events came since [`Recent::take_news`] last looked.
    news: bool,
}

impl Recent {
    /// Most events kept per partition.
    pub const MAX_EVENTS: usize = 1024;
    /// Most bytes (bodies and properties) kept per partition.
    pub const MAX_BYTES: usize = 256 * 1024;

    /// Nothing kept yet; the partition's last sequence number is `last` (-1: none).
    pub fn new(last: i64) -> Self {
        Recent {
            last,
            events: std::collections::VecDeque::new(),
            bytes: 0,
            news: false,
        }
    }

    /// Keeps a just committed event (the next of its partition), dropping the oldest kept
    /// beyond the bounds. An event that does not follow the last one (never, as the writer
    /// commits in order) restarts what is kept from it.
    pub fn push(&mut self, event: std::sync::Arc<Event>) {
        if event.sequence != self.last + 1 {
            self.events.clear();
            self.bytes = 0;
        }
        self.last = event.sequence;
        self.news = true;
        self.bytes += size_of_event(&event);
        self.events.push_back(event);
        while self.events.len() > Self::MAX_EVENTS || self.bytes > Self::MAX_BYTES {
            let Some(oldest) = self.events.pop_front() else {
                break;
            };
            self.bytes -= size_of_event(&oldest);
        }
    }

    /// Whether events were pushed since the last call: the writer wakes the readers once for a
    /// batch of them.
    pub fn take_news(&mut self) -> bool {
        std::mem::take(&mut self.news)
    }

    /// Forgets the kept events before sequence number `begin` (retention pruned them), so that
    /// a reader that has not read them yet reads the store, as if they had never been kept.
    pub fn forget_before(&mut self, begin: i64) {
        while let Some(oldest) = self.events.front() {
            if oldest.sequence >= begin {
                break;
            }
            self.bytes -= size_of_event(oldest);
            self.events.pop_front();
        }
    }

    /// At most `limit` events after sequence number `position`, oldest first, if every event
    /// after it is kept (none: `position` is the last); `None` when some are no longer kept
    /// (the store has them).
    pub fn after(&self, position: i64, limit: usize) -> Option<Vec<std::sync::Arc<Event>>> {
        if position >= self.last {
            return Some(Vec::new());
        }
        let first = self.events.front()?.sequence;
        let skip = usize::try_from(position + 1 - first).ok()?;
        Some(self.events.iter().skip(skip).take(limit).cloned().collect())
    }
}

/// What an event counts for in [`Recent::MAX_BYTES`].
fn size_of_event(event: &Event) -> usize {
    event.body.len()
        + event
            .properties
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, String::len))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_always_goes_to_the_same_partition_and_devices_spread_over_all() {
        assert_eq!(partition_of("sensor-1"), partition_of("sensor-1"));
        let used: std::collections::BTreeSet<u32> =
            (0..64).map(|i| partition_of(&format!("d{i}"))).collect();
        assert_eq!(used.len(), PARTITIONS as usize);
        // FNV-1a of "" is the offset basis 0x811c9dc5 = 2166136261, which is 1 modulo 4
        assert_eq!(partition_of(""), 1);
    }

    #[test]
    fn selectors_parse_as_the_event_hubs_clients_write_them() {
        assert_eq!(
            StartAt::parse("amqp.annotation.x-opt-offset > '-1'"),
            Ok(StartAt::BEGINNING)
        );
        assert_eq!(
            StartAt::parse("amqp.annotation.x-opt-offset > '@latest'"),
            Ok(StartAt::Latest)
        );
        assert_eq!(
            StartAt::parse("amqp.annotation.x-opt-sequence-number >= '5'"),
            Ok(StartAt::Sequence {
                sequence: 5,
                inclusive: true
            })
        );
        assert_eq!(
            StartAt::parse("amqp.annotation.x-opt-enqueued-time > '1700000000000'"),
            Ok(StartAt::EnqueuedTime {
                ms: 1_700_000_000_000,
                inclusive: false
            })
        );
        assert_eq!(
            StartAt::parse("amqp.annotation.x-opt-enqueuedtimeutc > 1700000000000"),
            Ok(StartAt::EnqueuedTime {
                ms: 1_700_000_000_000,
                inclusive: false
            })
        );
        for bad in [
            "",
            "amqp.annotation.x-opt-offset = '1'",
            "amqp.annotation.x-opt-offset > '1",
            "amqp.annotation.x-opt-color > '1'",
            "amqp.annotation.x-opt-sequence-number > 'x'",
        ] {
            assert!(StartAt::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn consumer_group_names_follow_iot_hubs_rules() {
        for good in ["a", "monitor-1", "stream.analytics_2", &"x".repeat(50)] {
            assert_eq!(check_consumer_group_name(good), Ok(()), "{good}");
        }
        let too_long = check_consumer_group_name(&"x".repeat(51)).unwrap_err();
        assert!(too_long.contains("1 to 50 characters"), "{too_long}");
        assert!(check_consumer_group_name("").is_err());
        for bad in ["$Default", "with space", "slash/y", "é"] {
            let why = check_consumer_group_name(bad).unwrap_err();
            assert!(why.contains("letters, digits"), "{bad}: {why}");
        }
    }

    #[test]
    fn retention_keeps_what_is_younger_than_the_time_and_within_the_partitions_share_of_bytes() {
        let day = 24 * 3600 * 1000;
        let now = 1_700_000_000_000;
        let retention = Retention::new(1, 4000);
        // a partition whose next offset is 10_000 keeps its last 1000 bytes (4000 / 4 partitions)
        // and what was enqueued in the last day
        assert_eq!(
            retention.kept(now, 10_000),
            Kept {
                oldest_ms: now - day,
                lowest_offset: 9000
            }
        );
        // an hour later, what was enqueued in the first hour of that day goes too
        assert_eq!(
            retention.kept(now + 3600 * 1000, 10_000).oldest_ms,
            now - day + 3600 * 1000
        );
        // a young partition keeps every byte
        assert!(retention.kept(now, 10).lowest_offset < 0);
        assert_eq!(Retention::new(7, 1).max_age_ms, 7 * day);
        assert_eq!(
            Retention::new(Retention::DEFAULT_DAYS, Retention::DEFAULT_BYTES).max_age_ms,
            day
        );
    }

    #[test]
    fn sizes_parse_in_bytes_or_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2 TB"), Ok(2 << 40));
        for bad in ["", "0", "K", "1.5G", "12Q", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partition_ids_are_the_endpoints_exactly() {
        assert_eq!(partition_id("0"), Some(0));
        assert_eq!(partition_id("3"), Some(3));
        assert_eq!(partition_id("4"), None);
        assert_eq!(partition_id("01"), None);
        assert_eq!(partition_id("x"), None);
    }

    #[test]
    fn the_auth_method_is_the_hubs_record_never_what_the_device_claims() {
        let claimed = vec![
            ("$.auth".to_owned(), Some("certificateAuthority".to_owned())),
            ("level".to_owned(), Some("high".to_owned())),
        ];
        let sas = stamped(claimed.clone(), AuthMethod::Sas);
        assert_eq!(sas, [("level".to_owned(), Some("high".to_owned()))]);
        assert_eq!(AuthMethod::of(&sas), AuthMethod::Sas);
        let thumbprint = stamped(claimed, AuthMethod::SelfSigned);
        assert_eq!(AuthMethod::of(&thumbprint), AuthMethod::SelfSigned);
        assert_eq!(
            AuthMethod::of(&stamped(Vec::new(), AuthMethod::CertificateAuthority)),
            AuthMethod::CertificateAuthority
        );
    }

    #[test]
    fn the_auth_method_reads_as_iot_hub_writes_it() {
        assert_eq!(
            AuthMethod::Sas.annotation(false),
            r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
        );
        assert_eq!(
            AuthMethod::CertificateAuthority.annotation(true),
            r#"{"scope":"module","type":"x509Certificate","issuer":"external","acceptingIpFilterRule":null}"#
        );
    }

    fn numbered(sequence: i64, body: usize) -> std::sync::Arc<Event> {
        std::sync::Arc::new(Event {
            partition: 0,
            sequence,
            offset: 0,
            enqueued_ms: 0,
            device_id: "d".into(),
            module_id: None,
            properties: vec![("k".into(), Some("v".into()))],
            body: vec![0; body],
            logged: 0,
        })
    }

    fn sequences(events: Option<Vec<std::sync::Arc<Event>>>) -> Option<Vec<i64>> {
        events.map(|events| events.iter().map(|e| e.sequence).collect())
    }

    #[test]
    fn recent_events_are_handed_only_when_every_one_after_the_position_is_kept() {
        let mut recent = Recent::new(4);
        // nothing after the last: nothing to read, anywhere
        assert_eq!(sequences(recent.after(4, 10)), Some(vec![]));
        // before the last, nothing kept: the store has them
        assert_eq!(sequences(recent.after(3, 10)), None);
        for sequence in 5..=8 {
            recent.push(numbered(sequence, 10));
        }
        assert_eq!(sequences(recent.after(4, 10)), Some(vec![5, 6, 7, 8]));
        assert_eq!(sequences(recent.after(6, 10)), Some(vec![7, 8]));
        assert_eq!(sequences(recent.after(4, 2)), Some(vec![5, 6]));
        assert_eq!(sequences(recent.after(3, 10)), None, "4 is not kept");
        assert!(recent.take_news(), "events came");
        assert!(!recent.take_news(), "none since");
        // retention pruned up to 6: a reader at 5 reads the store (which skips to 7)
        recent.forget_before(7);
        assert_eq!(sequences(recent.after(5, 10)), None);
        assert_eq!(sequences(recent.after(6, 10)), Some(vec![7, 8]));
        recent.forget_before(9);
        assert_eq!(sequences(recent.after(8, 10)), Some(vec![]));
        assert_eq!(sequences(recent.after(7, 10)), None);
        // a gap (never from the writer) restarts what is kept
        recent.push(numbered(20, 10));
        assert_eq!(sequences(recent.after(8, 10)), None);
        assert_eq!(sequences(recent.after(19, 10)), Some(vec![20]));
    }

    #[test]
    fn recent_events_are_bounded_in_count_and_bytes() {
        let mut recent = Recent::new(-1);
        let count = i64::try_from(Recent::MAX_EVENTS).unwrap();
        for sequence in 0..count + 10 {
            recent.push(numbered(sequence, 1));
        }
        assert_eq!(sequences(recent.after(9, 1)), Some(vec![10]));
        assert_eq!(recent.after(8, 1), None);
        // 64 KiB bodies: four fit in 256 KiB with their properties, not five
        let big = Recent::MAX_BYTES / 4 - 2;
        for sequence in count + 10..count + 20 {
            recent.push(numbered(sequence, big));
        }
        let last = count + 19;
        assert_eq!(
            sequences(recent.after(last - 4, 10)),
            Some(vec![last - 3, last - 2, last - 1, last])
        );
        assert_eq!(recent.after(last - 5, 10), None);
        // one event above the bound is not kept at all
        recent.push(numbered(last + 1, Recent::MAX_BYTES));
        assert_eq!(recent.after(last, 10), None);
        assert_eq!(sequences(recent.after(last + 1, 10)), Some(vec![]));
    }
}
