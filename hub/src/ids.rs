//! Generated values: symmetric keys, generation ids, etags, tracking ids and timestamps.
//!
//! A leaf: depends on nothing else of the hub.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use edgetwin_wire::Secret;
use rand::RngCore;

/// A new random 32-byte symmetric key, base64 (44 characters), as IoT Hub generates.
pub fn new_key() -> Secret {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    Secret::new(BASE64.encode(bytes))
}

/// A generation id: an 18-digit decimal string, unique per identity incarnation.
pub fn generation_id() -> String {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let random = rand::random::<u32>() % 1000;
    format!("{:015}{random:03}", (nanos / 1000) % 1_000_000_000_000_000)
}

/// An identity or configuration etag: base64 of a decimal counter.
pub fn counter_etag(counter: i64) -> String {
    BASE64.encode(counter.to_string())
}

/// A twin etag: base64 of the twin version as 8 big-endian bytes.
pub fn twin_etag(version: i64) -> String {
    BASE64.encode(version.to_be_bytes())
}

/// 32 lower-case hex digits for `Tracking ID` in error bodies.
pub fn tracking_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Now in ISO 8601 UTC with 7 fractional digits, as IoT Hub writes twin metadata.
pub fn now_iso() -> String {
    iso(time::OffsetDateTime::now_utc())
}

/// `at` in ISO 8601 UTC with 7 fractional digits, as IoT Hub writes times.
pub fn iso(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond() / 100
    )
}

/// Now as `MM/dd/yyyy HH:mm:ss`, the timestamp format of IoT Hub's error bodies.
pub fn now_error_timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:02}/{:02}/{:04} {:02}:{:02}:{:02}",
        u8::from(now.month()),
        now.day(),
        now.year(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The "never" timestamp of identities that have not done something yet.
pub const NEVER: &str = "0001-01-01T00:00:00";

/// Whether `if_match` (a raw `If-Match` header value) matches `etag`: `*` in any quoting matches
/// everything, otherwise the value without `W/` and quotes must equal the etag.
///
/// IoT Hub ignores an etag that is not in double quotes (RFC 7232's form), so an unquoted one
/// matches everything here too: the SDKs only began quoting in 2019–2021 after users found their
/// concurrency checks did nothing (azure-iot-sdk-node #606 and PR #613, azure-iot-sdk-java #574,
/// azure-iot-sdk-python #716 and PR #754). A test that relies on one passes nowhere.
pub fn if_match_accepts(if_match: &str, etag: &str) -> bool {
    let value = if_match.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    if value != "*" && !(value.len() >= 2 && value.starts_with('"') && value.ends_with('"')) {
        tracing::debug!(
            if_match,
            "If-Match etag without double quotes ignored, as IoT Hub ignores it"
        );
        return true;
    }
    let value = value.trim_matches('"');
    value == "*" || value == etag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_takes_quoted_and_bare_stars_and_etags() {
        assert!(if_match_accepts("\"*\"", "MQ=="));
        assert!(if_match_accepts("*", "MQ=="));
        assert!(if_match_accepts("\"MQ==\"", "MQ=="));
        assert!(if_match_accepts("W/\"MQ==\"", "MQ=="));
        assert!(!if_match_accepts("\"Mg==\"", "MQ=="));
    }

    #[test]
    fn an_unquoted_etag_is_ignored_as_iot_hub_ignores_it() {
        assert!(if_match_accepts("MQ==", "MQ=="));
        assert!(if_match_accepts("Mg==", "MQ=="));
        assert!(if_match_accepts("\"Mg==", "MQ=="));
    }

    #[test]
    fn keys_are_44_base64_characters_and_differ() {
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.expose().len(), 44);
        assert_ne!(a, b);
    }

    #[test]
    fn twin_etags_match_iot_hub_format() {
        assert_eq!(twin_etag(1), "AAAAAAAAAAE=");
        assert_eq!(counter_etag(1), "MQ==");
    }
}
