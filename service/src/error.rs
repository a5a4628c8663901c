//! What a service call can fail with. Messages are safe to print: they never contain keys, SAS
//! tokens or connection strings.
//!
//! IoT Hub answers an error with a status, an `iothub-errorcode` header and a JSON envelope
//! `{"Message": "ErrorCode:<name>;<text>", "ExceptionMessage": "Tracking ID:…"}` (or the newer
//! JSON-in-`Message` form), as the Azure IoT SDKs parse it; [`edgetwin_wire::rest::parse_error_body`]
//! reads every form and [`ServiceError`] keeps its parts.

use thiserror::Error;

/// An error answer from IoT Hub, decoded from its error envelope and `iothub-errorcode` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// What the caller was doing, e.g. `create device 'gw-1'`.
    pub operation: String,
    /// HTTP status.
    pub status: u16,
    /// IoT Hub error code name (`DeviceNotFound`...), from the body or the header.
    pub code: Option<String>,
    /// The hub's message text.
    pub message: String,
    /// What to do about it, when the client knows (e.g. the permission an operation needs).
    pub hint: Option<String>,
}

impl ServiceError {
    /// True when the hub answered with this error code name.
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: IoT Hub answered {}", self.operation, self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServiceError {}

/// Why no answer came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkFailureKind {
    /// The hub's certificate is not signed by a trusted CA: the same on every attempt.
    UntrustedCertificate,
    /// TLS itself refused the connection for another reason: the same on every attempt.
    TlsRefused,
    /// The TLS handshake broke off (is the hub's CA the right one?).
    TlsHandshake,
    /// The host name never resolved, or nothing listened on the port before the hub was ever
    /// reached: a typo or a hub not running.
    Unreachable,
    /// A reset, a timeout, a resolver or a hub restarting: worth another attempt.
    Transient,
}

impl NetworkFailureKind {
    /// Whether another attempt can change the outcome.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            NetworkFailureKind::TlsHandshake | NetworkFailureKind::Transient
        )
    }
}

/// A failure to get an answer, after the retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFailure {
    /// What kind of failure.
    pub kind: NetworkFailureKind,
    /// What went wrong (connect, TLS, timeout...).
    pub detail: String,
    /// Attempts made (1 when it was not retried).
    pub attempts: u32,
}

impl std::fmt::Display for NetworkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

/// Everything a service client can fail with.
#[derive(Debug, Error)]
pub enum Error {
    /// The connection string cannot sign service requests (no policy, a key that is not
    /// base64, a bad host name).
    #[error("{0}")]
    ConnectionString(String),
    /// TLS configuration (CA file, roots).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Nothing to trust: no CA file given and the system has no CA certificates.
    #[error("TLS setup: no trusted CA certificates: the system has none and no CA file was given")]
    NoTrustedCa,
    /// A CA file could not be read.
    #[error("cannot read the CA certificate file {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be built (a header value that is not visible ASCII...).
    #[error("{operation}: bad request: {detail}")]
    Request {
        /// What the caller was doing.
        operation: String,
        /// What is wrong.
        detail: String,
    },
    /// The hub could not be reached, or stopped answering, after the retries.
    #[error("{operation}: cannot reach IoT Hub at {host}: {failure}")]
    Network {
        /// What the caller was doing.
        operation: String,
        /// host[:port].
        host: String,
        /// What went wrong.
        failure: NetworkFailure,
    },
    /// The hub answered with an error.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The hub answered 2xx with a body this client cannot read.
    #[error("{operation}: unexpected answer from IoT Hub: {detail}")]
    Protocol {
        /// What the caller was doing.
        operation: String,
        /// What is wrong with the answer.
        detail: String,
    },
}

impl Error {
    /// The service error inside, if the hub answered with one.
    pub fn service(&self) -> Option<&ServiceError> {
        match self {
            Error::Service(e) => Some(e),
            _ => None,
        }
    }
}
