//! `edgetwin monitor` and `edgetwin c2d send`: the hub's AMQP side as a service client sees it,
//! for users without the Azure CLI.
//!
//! - [`connect`]: TLS, AMQP open, CBS `put-token` with the policy of the service connection
//!   string (the only I/O besides the commands' links).
//! - [`monitor`]: telemetry from the Event Hub-compatible endpoint, printed as it arrives.
//! - [`event`], [`start`]: pure — an event as JSON or text, where reading starts.
//! - [`c2d`]: a cloud-to-device message on `/messages/devicebound`.
//! - [`error`]: what they fail with.

pub mod c2d;
pub mod connect;
pub mod error;
pub mod event;
pub mod monitor;
pub mod start;

pub use error::MessagingError;

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
