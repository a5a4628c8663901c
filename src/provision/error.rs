//! Errors of the provisioning job. Messages are safe to print: they never contain keys, SAS
//! tokens or connection strings. The full cause chain is kept in `source()`.

use edgetwin_wire::connection_string::ConnectionStringError;
use thiserror::Error;

/// An error answer from IoT Hub, decoded from its error envelope and `iothub-errorcode` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// What the job was doing, e.g. `create device 'gw-1'`.
    pub operation: String,
    /// HTTP status.
    pub status: u16,
    /// IoT Hub error code name (`DeviceNotFound`...), from the body or the header.
    pub code: Option<String>,
    /// The hub's message text.
    pub message: String,
    /// What to do about it, when the job knows (e.g. the permission an operation needs).
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

/// Everything the provisioning job can fail with.
#[derive(Debug, Error)]
pub enum ProvisionError {
    /// No connection string anywhere.
    #[error(
        "no IoT Hub connection string: pass --connection-string, set IOTHUB_CONNECTION_STRING, \
         or put IOTHUB_CONNECTION_STRING in .env"
    )]
    NoConnectionString,
    /// The connection string does not parse.
    #[error(
        "the connection string from {origin} is not valid (a service connection string is \
         HostName=<hub>;SharedAccessKeyName=<policy>;SharedAccessKey=<key>)"
    )]
    ConnectionString {
        /// Where it came from.
        origin: &'static str,
        /// Why it does not parse (never contains the key).
        #[source]
        source: ConnectionStringError,
    },
    /// Bad command-line input or input file.
    #[error("{0}")]
    Input(String),
    /// A JSON argument (`--desired`, `--tags`) or file (`--deployment`) does not parse.
    #[error("{what} is not valid JSON")]
    Json {
        /// The argument (`--desired`) or file.
        what: String,
        /// Where and why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The CA certificate file (`--ca-file`, `EDGETWIN_CA_FILE`...) cannot be read.
    #[error("{origin} {}: cannot read the CA certificate file", path.display())]
    CaFile {
        /// Where it was named: the flag or the environment variable.
        origin: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The deployment manifest cannot be generated from the solution's template.
    #[error("cannot generate the deployment manifest (solution directory {})", dir.display())]
    Manifest {
        /// The solution directory.
        dir: std::path::PathBuf,
        /// What is wrong with the template, module.json or `.env`.
        #[source]
        source: crate::manifest::ManifestError,
    },
    /// TLS configuration (CA file, roots).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The hub could not be reached, or stopped answering, after the retries.
    #[error("{operation}: cannot reach IoT Hub at {host}: {detail}")]
    Network {
        /// What the job was doing.
        operation: String,
        /// host[:port].
        host: String,
        /// What went wrong (connect, TLS, timeout...).
        detail: String,
    },
    /// The hub answered with an error.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The hub answered 2xx with a body this client cannot read.
    #[error("{operation}: unexpected answer from IoT Hub: {detail}")]
    Protocol {
        /// What the job was doing.
        operation: String,
        /// What is wrong with the answer.
        detail: String,
    },
    /// A local file could not be read or written.
    #[error("file {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ProvisionError {
    /// The service error inside, if the hub answered with one.
    pub fn service(&self) -> Option<&ServiceError> {
        match self {
            ProvisionError::Service(e) => Some(e),
            _ => None,
        }
    }
}
