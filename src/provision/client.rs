//! The service client as the CLI uses it: [`edgetwin_service`] does the HTTPS, the tokens, the
//! retries and IoT Hub's error envelope; this file turns its errors into [`ProvisionError`]s and
//! adds what only the CLI knows — which of its flags fixes the failure.

pub use edgetwin_service::{ClientOptions, QueryPage, ServiceClient};
use edgetwin_service::{Error, NetworkFailureKind};

use super::error::ProvisionError;

impl From<Error> for ProvisionError {
    fn from(error: Error) -> Self {
        match error {
            Error::ConnectionString(message) => ProvisionError::Input(message),
            Error::NoTrustedCa => ProvisionError::Tls(
                "no trusted CA certificates: the system has none; pass --ca-file (or set \
                     EDGETWIN_CA_FILE)"
                    .into(),
            ),
            Error::Tls(message) => ProvisionError::Tls(message),
            Error::Io { path, source } => ProvisionError::Io { path, source },
            Error::Request { operation, detail } => {
                ProvisionError::Input(format!("{operation}: bad request: {detail}"))
            }
            Error::Network {
                operation,
                host,
                failure,
            } => {
                let hint = match failure.kind {
                    NetworkFailureKind::UntrustedCertificate => {
                        ": pass the CA that signs it with --ca-file or EDGETWIN_CA_FILE \
                         (`edgetwin hub` prints its CA certificate's path)"
                    }
                    NetworkFailureKind::TlsHandshake => " (is the hub's CA trusted? see --ca-file)",
                    _ => "",
                };
                let attempts = match failure.attempts {
                    1 => String::new(),
                    n => format!(" (after {n} attempts)"),
                };
                ProvisionError::Network {
                    operation,
                    host,
                    detail: format!("{}{hint}{attempts}", failure.detail),
                }
            }
            Error::Service(mut e) => {
                if e.status == 429 && e.hint.is_none() {
                    e.hint = Some(
                        "IoT Hub throttled the request and the retries ran out; lower --rate"
                            .into(),
                    );
                }
                ProvisionError::Service(e)
            }
            Error::Protocol { operation, detail } => ProvisionError::Protocol { operation, detail },
        }
    }
}
