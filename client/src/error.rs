//! Errors of the module client. Messages never contain keys, signatures or tokens.

use std::path::PathBuf;

use edgetwin_wire::connection_string::ConnectionStringError;
use edgetwin_wire::edge::EdgeEnvError;
use edgetwin_wire::sas::SasError;

/// Why no identity could be read from the environment. Each names the variable.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// An `IOTEDGE_*` variable is missing, empty or malformed.
    #[error(transparent)]
    Edge(#[from] EdgeEnvError),
    /// A connection-string variable does not parse.
    #[error("environment variable `{variable}` is malformed: {source}")]
    ConnectionString {
        /// The variable.
        variable: &'static str,
        /// Why.
        source: ConnectionStringError,
    },
    /// A connection string is not a module (or device) identity with a key or token.
    #[error("environment variable `{variable}` is unusable: {reason}")]
    Unusable {
        /// The variable.
        variable: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A connection string given as an argument is malformed or unusable (the message never
    /// contains its key).
    #[error("the connection string is unusable: {0}")]
    Argument(String),
    /// A variable required by another is not set.
    #[error("environment variable `{0}` is not set")]
    Missing(&'static str),
    /// The CA file a variable names cannot be read or holds no PEM certificate.
    #[error("environment variable `{variable}` names {}, which {reason}", path.display())]
    CaFile {
        /// The variable.
        variable: &'static str,
        /// The file it names.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No CA file variable is set and the system CA bundle cannot be used.
    #[error(
        "environment variable `{variable}` is not set and the system CA bundle {}, used instead, \
         {reason}",
        path.display()
    )]
    SystemCaFile {
        /// The variable that would name a CA file.
        variable: &'static str,
        /// The system bundle.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing to identify with.
    #[error(
        "no identity: set the IOTEDGE_* variables (IoT Edge), EdgeHubConnectionString and \
         EdgeModuleCACertificateFile (Edge simulator), or EDGETWIN_CONNECTION_STRING"
    )]
    None,
}

/// Why the workload API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The socket could not be reached.
    #[error("cannot connect to the workload API at {uri}: {source}")]
    Connect {
        /// The workload URI.
        uri: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("workload API request {path} failed: {source}")]
    Http {
        /// Request path (no secrets).
        path: String,
        /// The HTTP error.
        source: hyper::Error,
    },
    /// The API answered with an error status.
    #[error("workload API {path} answered {status}: {message}")]
    Status {
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The `message` of the error body (or the body text).
        message: String,
    },
    /// The response body is not what the contract says.
    #[error("workload API {path} returned an unexpected body: {source}")]
    Body {
        /// Request path.
        path: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// No answer in time.
    #[error("workload API {path} did not answer in time")]
    Timeout {
        /// Request path.
        path: String,
    },
}

/// Why a connection attempt or session failed. All of these are retried.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The workload API failed (trust bundle or signing).
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The CA file could not be read.
    #[error("cannot read CA certificate file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The trust bundle holds no usable certificate.
    #[error("trust bundle has no usable certificate: {0}")]
    TrustBundle(String),
    /// A SAS token could not be made.
    #[error("cannot create a SAS token: {0}")]
    Sas(#[from] SasError),
    /// MQTT connection error (TLS, socket, CONNACK refusal...).
    #[error("MQTT connection failed: {0}")]
    Mqtt(Box<rumqttc::ConnectionError>),
    /// The MQTT request queue refused a request.
    #[error("MQTT request queue: {0}")]
    Queue(Box<rumqttc::ClientError>),
    /// CONNACK or SUBACK did not arrive in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
}

impl From<rumqttc::ConnectionError> for ClientError {
    fn from(error: rumqttc::ConnectionError) -> Self {
        ClientError::Mqtt(Box::new(error))
    }
}

impl From<rumqttc::ClientError> for ClientError {
    fn from(error: rumqttc::ClientError) -> Self {
        ClientError::Queue(Box::new(error))
    }
}
