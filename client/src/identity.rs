//! Who the module is and how it proves it (docs/spec/iothub-device-protocol.md §1.2, §8.1, §8.3): the IoT Edge environment
//! (workload-signed SAS, trust bundle), the Edge simulator's `EdgeHubConnectionString`, or a
//! module connection string straight to IoT Hub.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgetwin_wire::connection_string::{ConnectionString, ConnectionStringKind};
use edgetwin_wire::edge::EdgeEnvironment;
use edgetwin_wire::sas::{generate_token, token_from_signature};
use edgetwin_wire::Secret;

use super::error::{ClientError, IdentityError};
use super::workload;

/// The simulator / IDE-debug connection string variable.
pub const EDGE_HUB_CONNECTION_STRING: &str = "EdgeHubConnectionString";
/// The simulator's CA file variable.
pub const EDGE_MODULE_CA_FILE: &str = "EdgeModuleCACertificateFile";
/// A module connection string straight to IoT Hub.
pub const CONNECTION_STRING: &str = "EDGETWIN_CONNECTION_STRING";
/// The CA file for [`CONNECTION_STRING`] (default: the system bundle).
pub const CA_FILE: &str = "EDGETWIN_CA_FILE";
/// Where the system CA bundle usually is (Debian/Alpine).
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the identity came from (reported as `identitySource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// `IOTEDGE_*` variables and the workload API.
    EdgeWorkload,
    /// `EdgeHubConnectionString` + `EdgeModuleCACertificateFile`.
    EdgeHubConnectionString,
    /// `EDGETWIN_CONNECTION_STRING`.
    ConnectionString,
}

impl IdentitySource {
    /// The name reported in the twin.
    pub fn name(self) -> &'static str {
        match self {
            IdentitySource::EdgeWorkload => "edgeWorkload",
            IdentitySource::EdgeHubConnectionString => "edgeHubConnectionString",
            IdentitySource::ConnectionString => "connectionString",
        }
    }
}

/// A module identity.
#[derive(Clone, Debug)]
pub enum Identity {
    /// Inside IoT Edge: the key stays in the workload API.
    Edge(EdgeEnvironment),
    /// From a connection string (the key, if any, is a [`Secret`]).
    ConnectionString {
        /// The parsed string.
        connection: ConnectionString,
        /// The CA PEM file the server is trusted through.
        ca_file: PathBuf,
        /// Which variable it came from.
        source: IdentitySource,
    },
}

/// What one connection attempt needs, fetched fresh for every attempt.
pub struct Credentials {
    /// The CONNECT password.
    pub token: Secret,
    /// The TLS client configuration trusting the server's CA.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Identity {
    /// Reads the identity through `lookup` (the process environment in production): the
    /// `IOTEDGE_*` set first, then `EdgeHubConnectionString` (with `EdgeModuleCACertificateFile`),
    /// then `EDGETWIN_CONNECTION_STRING` (with optional `EDGETWIN_CA_FILE`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, IdentityError> {
        let present = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let edge_hub = present(EDGE_HUB_CONNECTION_STRING);
        match EdgeEnvironment::from_lookup(&lookup) {
            Ok(Some(env)) => return Ok(Identity::Edge(env)),
            Ok(None) => {}
            // Like the Python SDK: an incomplete IOTEDGE_* set falls back to the simulator
            // string when one is given; otherwise the missing variable is the error.
            Err(e) if edge_hub.is_none() => return Err(e.into()),
            Err(_) => {}
        }
        if let Some(text) = edge_hub {
            let connection = parse_module_string(EDGE_HUB_CONNECTION_STRING, &text)?;
            require_module_id(EDGE_HUB_CONNECTION_STRING, &connection)?;
            let ca_file = PathBuf::from(
                present(EDGE_MODULE_CA_FILE).ok_or(IdentityError::Missing(EDGE_MODULE_CA_FILE))?,
            );
            check_ca_file(&ca_file).map_err(|reason| IdentityError::CaFile {
                variable: EDGE_MODULE_CA_FILE,
                path: ca_file.clone(),
                reason,
            })?;
            return Ok(Identity::ConnectionString {
                connection,
                ca_file,
                source: IdentitySource::EdgeHubConnectionString,
            });
        }
        if let Some(text) = present(CONNECTION_STRING) {
            let connection = parse_module_string(CONNECTION_STRING, &text)?;
            require_module_id(CONNECTION_STRING, &connection)?;
            let ca_file = match present(CA_FILE) {
                Some(path) => {
                    let path = PathBuf::from(path);
                    check_ca_file(&path).map_err(|reason| IdentityError::CaFile {
                        variable: CA_FILE,
                        path: path.clone(),
                        reason,
                    })?;
                    path
                }
                None => {
                    let path = PathBuf::from(SYSTEM_CA_FILE);
                    check_ca_file(&path).map_err(|reason| IdentityError::SystemCaFile {
                        variable: CA_FILE,
                        path: path.clone(),
                        reason,
                    })?;
                    path
                }
            };
            return Ok(Identity::ConnectionString {
                connection,
                ca_file,
                source: IdentitySource::ConnectionString,
            });
        }
        Err(IdentityError::None)
    }

    /// A device or module identity from a connection string (`HostName=...;DeviceId=...;
    /// [ModuleId=...;]SharedAccessKey=...` or `SharedAccessSignature=...`), trusting the CA
    /// certificates in the PEM file `ca_file`.
    pub fn from_connection_string(
        text: &str,
        ca_file: impl Into<PathBuf>,
    ) -> Result<Self, IdentityError> {
        let connection = parse_module_string("", text).map_err(|error| match error {
            IdentityError::ConnectionString { source, .. } => {
                IdentityError::Argument(source.to_string())
            }
            IdentityError::Unusable { reason, .. } => IdentityError::Argument(reason.to_owned()),
            other => other,
        })?;
        Ok(Identity::ConnectionString {
            connection,
            ca_file: ca_file.into(),
            source: IdentitySource::ConnectionString,
        })
    }

    /// Where the identity came from.
    pub fn source(&self) -> IdentitySource {
        match self {
            Identity::Edge(_) => IdentitySource::EdgeWorkload,
            Identity::ConnectionString { source, .. } => *source,
        }
    }

    /// The IoT Hub host name (username and SAS resource).
    pub fn hub_host(&self) -> &str {
        match self {
            Identity::Edge(env) => &env.iothub_host_name,
            Identity::ConnectionString { connection, .. } => &connection.host_name,
        }
    }

    /// The host the MQTT/TLS connection goes to (and the TLS name checked).
    pub fn connect_host(&self) -> &str {
        match self {
            Identity::Edge(env) => &env.gateway_host_name,
            Identity::ConnectionString { connection, .. } => connection.connect_host(),
        }
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        match self {
            Identity::Edge(env) => &env.device_id,
            Identity::ConnectionString { connection, .. } => {
                connection.device_id.as_deref().unwrap_or_default()
            }
        }
    }

    /// The module id (`None` for a device connection string).
    pub fn module_id(&self) -> Option<&str> {
        match self {
            Identity::Edge(env) => Some(&env.module_id),
            Identity::ConnectionString { connection, .. } => connection.module_id.as_deref(),
        }
    }

    /// A fresh token valid for `ttl` from `now_unix`, and the TLS trust, fetched again for
    /// every connection attempt (the trust bundle can rotate).
    pub async fn credentials(
        &self,
        now_unix: u64,
        ttl: Duration,
    ) -> Result<Credentials, ClientError> {
        let expiry = now_unix + ttl.as_secs().max(1);
        match self {
            Identity::Edge(env) => {
                let bundle = workload::trust_bundle(env).await?;
                let tls = tls_config(&bundle)?;
                let digest = workload::sign_token(env, expiry).await?;
                let token = token_from_signature(&env.resource(), expiry, &digest, None);
                Ok(Credentials { token, tls })
            }
            Identity::ConnectionString {
                connection,
                ca_file,
                ..
            } => {
                let pem = tokio::fs::read_to_string(ca_file).await.map_err(|source| {
                    ClientError::CaFile {
                        path: ca_file.clone(),
                        source,
                    }
                })?;
                let tls = tls_config(&pem)?;
                let token = match (
                    &connection.shared_access_key,
                    &connection.shared_access_signature,
                ) {
                    (Some(key), _) => generate_token(key, &connection.resource(), expiry, None)?,
                    (None, Some(sas)) => sas.clone(),
                    (None, None) => unreachable!("checked when the identity was read"),
                };
                Ok(Credentials { token, tls })
            }
        }
    }
}

/// A module's connection string must name the module: a device's would run as module "".
fn require_module_id(
    variable: &'static str,
    connection: &ConnectionString,
) -> Result<(), IdentityError> {
    match connection.kind() {
        ConnectionStringKind::Module => Ok(()),
        _ => Err(IdentityError::Unusable {
            variable,
            reason:
                "it has no ModuleId: a device connection string; a module needs its module \
                     connection string (HostName=...;DeviceId=...;ModuleId=...;SharedAccessKey=...)",
        }),
    }
}

/// Whether `path` can be read and holds at least one PEM certificate (whether the certificate
/// is one TLS accepts is found out at connect); what is wrong if not.
fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut reader = pem.as_slice();
    let first = rustls_pemfile::certs(&mut reader).next();
    match first {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(format!("is not a PEM certificate file: {e}")),
        None => Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned()),
    }
}

/// Parses a connection string of a device or module with a key or a token.
fn parse_module_string(
    variable: &'static str,
    text: &str,
) -> Result<ConnectionString, IdentityError> {
    let connection: ConnectionString = text
        .parse()
        .map_err(|source| IdentityError::ConnectionString { variable, source })?;
    if connection.kind() == ConnectionStringKind::Service {
        return Err(IdentityError::Unusable {
            variable,
            reason: "a service (policy) connection string; a module connection string is needed",
        });
    }
    if connection.shared_access_key.is_none() && connection.shared_access_signature.is_none() {
        return Err(IdentityError::Unusable {
            variable,
            reason:
                "neither SharedAccessKey nor SharedAccessSignature is set (x509 is not supported)",
        });
    }
    Ok(connection)
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting only the PEM
/// certificates given.
pub fn tls_config(pem: &str) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let roots = edgetwin_wire::tls::roots_from_pem(pem.as_bytes())
        .map_err(|e| ClientError::TrustBundle(e.to_string()))?;
    edgetwin_wire::tls::client_config(roots).map_err(|e| ClientError::TrustBundle(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const EDGE: [(&str, &str); 8] = [
        ("IOTEDGE_IOTHUBHOSTNAME", "hub.example.net"),
        ("IOTEDGE_DEVICEID", "gw"),
        ("IOTEDGE_MODULEID", "health"),
        ("IOTEDGE_GATEWAYHOSTNAME", "localhost"),
        ("IOTEDGE_MODULEGENERATIONID", "g1"),
        ("IOTEDGE_WORKLOADURI", "unix:///tmp/w.sock"),
        ("IOTEDGE_APIVERSION", "2022-08-03"),
        ("IOTEDGE_AUTHSCHEME", "sasToken"),
    ];

    #[test]
    fn the_edge_environment_comes_first() {
        let mut all = EDGE.to_vec();
        all.push((
            CONNECTION_STRING,
            "HostName=h.net;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5",
        ));
        let id = Identity::from_lookup(env(&all)).unwrap();
        assert_eq!(id.source(), IdentitySource::EdgeWorkload);
        assert_eq!(id.hub_host(), "hub.example.net");
        assert_eq!(id.connect_host(), "localhost");
        assert_eq!(id.device_id(), "gw");
        assert_eq!(id.module_id(), Some("health"));
    }

    #[test]
    fn a_missing_edge_variable_is_named() {
        let partial: Vec<_> = EDGE
            .iter()
            .copied()
            .filter(|(k, _)| *k != "IOTEDGE_MODULEGENERATIONID")
            .collect();
        let err = Identity::from_lookup(env(&partial)).unwrap_err();
        assert!(
            err.to_string().contains("IOTEDGE_MODULEGENERATIONID"),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_workload_uri_is_named() {
        let mut bad: Vec<_> = EDGE.to_vec();
        bad[5].1 = "tcp://x";
        let err = Identity::from_lookup(env(&bad)).unwrap_err();
        assert!(err.to_string().contains("IOTEDGE_WORKLOADURI"), "{err}");
    }

    #[test]
    fn the_simulator_string_needs_its_ca_file() {
        let cs =
            "HostName=h.net;DeviceId=gw;ModuleId=m;SharedAccessKey=a2V5;GatewayHostName=localhost";
        let err = Identity::from_lookup(env(&[(EDGE_HUB_CONNECTION_STRING, cs)])).unwrap_err();
        assert!(err.to_string().contains(EDGE_MODULE_CA_FILE), "{err}");
        let ca = test_ca_file("simulator");
        let id = Identity::from_lookup(env(&[
            (EDGE_HUB_CONNECTION_STRING, cs),
            (EDGE_MODULE_CA_FILE, ca.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(id.source(), IdentitySource::EdgeHubConnectionString);
        assert_eq!(id.connect_host(), "localhost");
        assert_eq!(id.hub_host(), "h.net");
    }

    /// A scratch file holding one (made-up) PEM certificate block.
    fn test_ca_file(tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "edgetwin-identity-{tag}-{}.pem",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        path
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_named_by_its_variable() {
        let cs = "HostName=h.net;DeviceId=gw;ModuleId=m;SharedAccessKey=a2V5";
        let err = Identity::from_lookup(env(&[
            (EDGE_HUB_CONNECTION_STRING, cs),
            (EDGE_MODULE_CA_FILE, "/nonexistent/ca.pem"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains(EDGE_MODULE_CA_FILE), "{err}");
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(err.contains("cannot be read"), "{err}");
        let not_pem = test_ca_file("not-pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = Identity::from_lookup(env(&[
            (CONNECTION_STRING, cs),
            (CA_FILE, not_pem.to_str().unwrap()),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains(CA_FILE), "{err}");
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_device_connection_string_for_a_module_is_refused_naming_the_variable() {
        let ca = test_ca_file("device-string");
        for variable in [CONNECTION_STRING, EDGE_HUB_CONNECTION_STRING] {
            let err = Identity::from_lookup(env(&[
                (variable, "HostName=h.net;DeviceId=gw;SharedAccessKey=a2V5"),
                (CA_FILE, ca.to_str().unwrap()),
                (EDGE_MODULE_CA_FILE, ca.to_str().unwrap()),
            ]))
            .unwrap_err()
            .to_string();
            assert!(err.contains(variable), "{err}");
            assert!(err.contains("no ModuleId"), "{err}");
        }
    }

    #[test]
    fn a_key_that_is_not_base64_is_named_by_its_variable_without_showing_it() {
        let err = Identity::from_lookup(env(&[(
            CONNECTION_STRING,
            "HostName=h.net;DeviceId=gw;ModuleId=m;SharedAccessKey=not-base64!",
        )]))
        .unwrap_err()
        .to_string();
        assert!(err.contains(CONNECTION_STRING), "{err}");
        assert!(err.contains("not valid base64"), "{err}");
        assert!(!err.contains("not-base64!"), "{err}");
    }

    #[test]
    fn a_malformed_connection_string_is_named_without_its_key() {
        let err = Identity::from_lookup(env(&[(
            CONNECTION_STRING,
            "HostName=h.net;DeviceId=gw;SharedAccessKey=c2VjcmV0;Bogus=1",
        )]))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(CONNECTION_STRING), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        let err = Identity::from_lookup(env(&[(
            CONNECTION_STRING,
            "HostName=h.net;SharedAccessKeyName=owner;SharedAccessKey=c2VjcmV0",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("service"), "{err}");
    }

    #[test]
    fn no_identity_at_all_says_what_to_set() {
        let err = Identity::from_lookup(env(&[])).unwrap_err();
        assert!(err.to_string().contains("IOTEDGE_"), "{err}");
    }

    #[test]
    fn tls_config_needs_a_certificate() {
        assert!(tls_config("not a pem").is_err());
    }

    #[test]
    fn a_bad_connection_string_argument_is_named_as_such_without_its_key() {
        let error =
            Identity::from_connection_string("HostName=h;SharedAccessKey=c2VjcmV0", "ca.pem")
                .unwrap_err()
                .to_string();
        assert!(
            error.starts_with("the connection string is unusable"),
            "{error}"
        );
        assert!(!error.contains("c2VjcmV0"), "{error}");
        let policy = "HostName=h;SharedAccessKeyName=owner;SharedAccessKey=c2VjcmV0";
        let error = Identity::from_connection_string(policy, "ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("service (policy) connection string"),
            "{error}"
        );
    }
}
