//! Logs an IoT Edge operator can filter (docs/spec/iothub-device-protocol.md §9): every line starts with the syslog severity
//! (`<6>` info), then `yyyy-MM-dd HH:mm:ss.fff +00:00 [INF]`. The level comes from `RUST_LOG`
//! (a tracing filter) or else `RuntimeLogLevel` (edgeAgent's Serilog names).

use std::fmt;

use time::macros::format_description;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The line format.
pub struct SyslogFormat;

/// Syslog severity digit and three-letter tag of a level.
pub fn severity(level: Level) -> (u8, &'static str) {
    match level {
        Level::ERROR => (3, "ERR"),
        Level::WARN => (4, "WRN"),
        Level::INFO => (6, "INF"),
        Level::DEBUG => (7, "DBG"),
        Level::TRACE => (7, "VRB"),
    }
}

impl<S, N> FormatEvent<S, N> for SyslogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let (sev, tag) = severity(*meta.level());
        let now = time::OffsetDateTime::now_utc()
            .format(format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
            ))
            .unwrap_or_default();
        write!(
            writer,
            "<{sev}> {now} +00:00 [{tag}] [{}] - ",
            meta.target()
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The tracing filter: `RUST_LOG` if set, else `RuntimeLogLevel` mapped to a level (anything
/// after its first `,` is ignored, as .NET components do), else `info`.
pub fn filter_directive(rust_log: Option<&str>, runtime_log_level: Option<&str>) -> String {
    if let Some(filter) = rust_log.map(str::trim).filter(|f| !f.is_empty()) {
        return filter.to_owned();
    }
    let level = runtime_log_level
        .and_then(|l| l.split(',').next())
        .map(|l| l.trim().to_ascii_lowercase());
    let level = match level.as_deref() {
        Some("verbose" | "trace") => "trace",
        Some("debug") => "debug",
        Some("warning" | "warn") => "warn",
        Some("error" | "fatal") => "error",
        _ => "info",
    };
    match level {
        "trace" | "debug" => level.to_owned(),
        _ => format!("{level},rumqttc=warn"),
    }
}

/// Installs the global subscriber (stderr, as docker logs expect; a line that cannot be written
/// is dropped and counted, never a reason to stop).
pub fn init(lookup: impl Fn(&str) -> Option<String>) {
    let directive = filter_directive(
        lookup("RUST_LOG").as_deref(),
        lookup("RuntimeLogLevel").as_deref(),
    );
    let filter = tracing_subscriber::EnvFilter::try_new(&directive)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .event_format(SyslogFormat)
        .with_env_filter(filter)
        .with_writer(edgetwin_client::log_writer::Lossy::stderr())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_runtime_log_level() {
        assert_eq!(
            filter_directive(Some("debug,x=trace"), Some("Error")),
            "debug,x=trace"
        );
    }

    #[test]
    fn runtime_log_level_uses_serilog_names() {
        assert_eq!(
            filter_directive(None, Some("Information")),
            "info,rumqttc=warn"
        );
        assert_eq!(filter_directive(None, Some("Warning")), "warn,rumqttc=warn");
        assert_eq!(filter_directive(None, Some("verbose")), "trace");
        assert_eq!(filter_directive(None, Some("Debug,foo")), "debug");
        assert_eq!(filter_directive(None, Some("fatal")), "error,rumqttc=warn");
        assert_eq!(filter_directive(None, None), "info,rumqttc=warn");
    }

    #[test]
    fn severities_follow_syslog() {
        assert_eq!(severity(Level::INFO), (6, "INF"));
        assert_eq!(severity(Level::ERROR).0, 3);
        assert_eq!(severity(Level::WARN).0, 4);
        assert_eq!(severity(Level::DEBUG).0, 7);
    }
}
