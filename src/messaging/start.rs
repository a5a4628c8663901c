//! Where `edgetwin monitor` starts reading each partition, as the selector filter Event Hubs
//! receivers send (`apache.org:selector-filter:string`), and the times it reads and prints.
//! Pure: the current time is passed in.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only events enqueued from now on (the default, as az's monitor-events).
    Latest,
    /// Every event the partitions keep (`--from-start`).
    Beginning,
    /// Events enqueued after a time, ms since the Unix epoch (`--since`).
    Since(i64),
    /// Events after a sequence number: where a reconnect resumes a partition.
    After(i64),
}

impl Start {
    /// The selector filter text (Event Hubs' SQL-like filter on the annotations).
    pub fn selector(self) -> String {
        let (annotation, value) = match self {
            Start::Latest => ("offset", "@latest".to_owned()),
            Start::Beginning => ("offset", "-1".to_owned()),
            Start::Since(ms) => ("enqueued-time", ms.to_string()),
            Start::After(sequence) => ("sequence-number", sequence.to_string()),
        };
        format!("amqp.annotation.x-opt-{annotation} > '{value}'")
    }
}

/// Parses `--since`: an RFC 3339 time (`2026-12-07T12:00:00Z`) or a span back from `now_ms`
/// (`90s`, `15m`, `2h`, `1d`); the error says what is accepted.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((time.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let unit_ms = match text.chars().last() {
        Some('s') => 1_000,
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => 86_400_000,
        _ => 0,
    };
    let number = text
        .get(..text.len().saturating_sub(1))
        .map(str::parse::<i64>);
    match number {
        Some(Ok(n)) if unit_ms > 0 && n >= 0 => Ok(now_ms - n.saturating_mul(unit_ms)),
        _ => Err(format!(
            "--since '{text}' is neither an RFC 3339 time (2026-12-07T12:00:00Z) nor a span back \
             from now (90s, 15m, 2h, 1d)"
        )),
    }
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_the_selectors_the_hub_and_event_hubs_read() {
        assert_eq!(
            Start::Latest.selector(),
            "amqp.annotation.x-opt-offset > '@latest'"
        );
        assert_eq!(
            Start::Beginning.selector(),
            "amqp.annotation.x-opt-offset > '-1'"
        );
        assert_eq!(
            Start::Since(1_700_000_000_000).selector(),
            "amqp.annotation.x-opt-enqueued-time > '1700000000000'"
        );
        assert_eq!(
            Start::After(7).selector(),
            "amqp.annotation.x-opt-sequence-number > '7'"
        );
    }

    #[test]
    fn since_takes_a_time_or_a_span_back_from_now() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_since("2023-11-14T22:13:20Z", now), Ok(now));
        assert_eq!(parse_since("90s", now), Ok(now - 90_000));
        assert_eq!(parse_since("15m", now), Ok(now - 900_000));
        assert_eq!(parse_since("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_since("1d", now), Ok(now - 86_400_000));
        for bad in ["", "m", "-5m", "5w", "yesterday", "5é"] {
            assert!(
                parse_since(bad, now).unwrap_err().contains("--since"),
                "{bad}"
            );
        }
    }

    #[test]
    fn times_print_in_utc_with_milliseconds() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
