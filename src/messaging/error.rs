//! Errors of `edgetwin monitor` and `edgetwin c2d send`. Messages never contain keys, tokens or
//! connection strings; each names what is wrong and, where a flag fixes it, the flag.

use edgetwin_wire::rest::ErrorCode;
use thiserror::Error;

use crate::provision::ProvisionError;

/// Everything the AMQP commands can fail with.
#[derive(Debug, Error)]
pub enum MessagingError {
    /// The connection string or the CA file (the same rules as `edgetwin provision`).
    #[error(transparent)]
    Settings(#[from] ProvisionError),
    /// A flag's value is not usable.
    #[error("{0}")]
    Input(String),
    /// Nothing answers at the AMQP address, or the connection broke.
    #[error("cannot reach the hub's AMQP endpoint {address}: {detail}")]
    Network {
        /// host:port.
        address: String,
        /// What failed, with a hint when there is one.
        detail: String,
    },
    /// TLS refused the hub (or the hub refused TLS).
    #[error("TLS with {address}: {detail}")]
    Tls {
        /// host:port.
        address: String,
        /// What failed, with a hint.
        detail: String,
    },
    /// The hub refused the credentials: CBS `put-token` answered other than 200/202.
    #[error(
        "IoT Hub refused the credentials of the connection string from {origin} ({status}: \
         {description}); check its SharedAccessKeyName and SharedAccessKey, and that the policy \
         grants ServiceConnect"
    )]
    Unauthorized {
        /// Where the connection string came from (`--connection-string`, the variable...).
        origin: &'static str,
        /// The `status-code` of the answer.
        status: i64,
        /// The `status-description`.
        description: String,
    },
    /// The hub answered, but not as an IoT Hub does (a link refused, a missing redirect...).
    #[error("{operation}: {detail}")]
    Protocol {
        /// What the command was doing.
        operation: String,
        /// What went wrong.
        detail: String,
    },
    /// The hub detached or refused a link with an error that will come again (an unknown
    /// consumer group, a token that does not cover it...).
    #[error("{what}: the hub refused it ({condition}): {description}")]
    LinkRefused {
        /// The link: what it reads or writes, and where.
        what: String,
        /// The AMQP error condition, e.g. `amqp:not-found`.
        condition: String,
        /// The hub's description.
        description: String,
    },
    /// The hub refused a cloud-to-device message.
    #[error("cloud-to-device message to '{device}' refused: {} ({}): {description}", code.name(), code.number())]
    Refused {
        /// The device.
        device: String,
        /// IoT Hub's error code for the refusal.
        code: ErrorCode,
        /// The hub's description, or what the code means.
        description: String,
    },
    /// `monitor --count N --timeout S` ended before N events came.
    #[error("{got} of {wanted} events within --timeout {secs} s")]
    TooFew {
        /// Events printed.
        got: u64,
        /// `--count`.
        wanted: u64,
        /// `--timeout`.
        secs: u64,
    },
}

impl MessagingError {
    /// Whether trying again later may help (the hub restarting, a connection dropped), as
    /// opposed to a refusal that will come again (credentials, TLS trust, bad input).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MessagingError::Network { .. } | MessagingError::Protocol { .. }
        )
    }
}
