//! The IoT Edge module environment and workload API contract (docs/spec/iothub-device-protocol.md §8).
//!
//! A module learns its identity from `IOTEDGE_*` variables and obtains SAS signatures and the
//! trust bundle from the workload API (HTTP over a Unix socket). Reading goes through a lookup
//! function so nothing here touches the real process environment.

use crate::sas::STRICT;
use percent_encoding::utf8_percent_encode;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use thiserror::Error;

/// The variables edgeAgent sets on every custom module, in the order they are checked.
pub const IOTEDGE_VARIABLES: [&str; 8] = [
    "IOTEDGE_IOTHUBHOSTNAME",
    "IOTEDGE_DEVICEID",
    "IOTEDGE_MODULEID",
    "IOTEDGE_GATEWAYHOSTNAME",
    "IOTEDGE_MODULEGENERATIONID",
    "IOTEDGE_WORKLOADURI",
    "IOTEDGE_APIVERSION",
    "IOTEDGE_AUTHSCHEME",
];

/// Workload API versions aziot-edged accepts.
pub const WORKLOAD_API_VERSIONS: [&str; 7] = [
    "2018-06-28",
    "2019-01-30",
    "2019-10-22",
    "2019-11-05",
    "2020-07-07",
    "2021-12-07",
    "2022-08-03",
];

/// The workload API version of aziot-edged 1.4/1.5.
pub const WORKLOAD_API_VERSION: &str = "2022-08-03";

/// The only supported `IOTEDGE_AUTHSCHEME`.
pub const AUTH_SCHEME_SAS: &str = "sasToken";

/// Why the module environment is unusable. Names the variable; values are not secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EdgeEnvError {
    /// A required variable is not set (while other `IOTEDGE_*` variables are).
    #[error("environment variable `{0}` is not set")]
    Missing(&'static str),
    /// A variable is set but empty.
    #[error("environment variable `{0}` is empty")]
    Empty(&'static str),
    /// A variable has an unusable value.
    #[error("environment variable `{variable}` is malformed: {reason}")]
    Malformed {
        /// The variable name.
        variable: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Where the workload API listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadUri {
    /// `unix:///path/to/workload.sock`.
    Unix(PathBuf),
    /// `http://host:port` (supported by the C SDK).
    Http {
        /// Host name or IP (IPv6 without brackets).
        host: String,
        /// Port (80 if omitted).
        port: u16,
    },
}

/// Why a workload URI could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("workload URI `{uri}` is invalid: {reason}")]
pub struct WorkloadUriError {
    /// The URI as given.
    pub uri: String,
    /// What is wrong.
    pub reason: String,
}

impl std::str::FromStr for WorkloadUri {
    type Err = WorkloadUriError;

    /// Parses `unix:///path` and `http://host[:port][/]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| WorkloadUriError {
            uri: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(bad("expected unix:///absolute/path"));
            }
            return Ok(WorkloadUri::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            if authority.contains('/') {
                return Err(bad("expected http://host:port without a path"));
            }
            let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
                (host, after.strip_prefix(':'))
            } else {
                match authority.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (authority, None),
                }
            };
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            let port = match port {
                Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
                None => 80,
            };
            return Ok(WorkloadUri::Http {
                host: host.to_owned(),
                port,
            });
        }
        Err(bad("expected a unix:// or http:// URI"))
    }
}

impl std::fmt::Display for WorkloadUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkloadUri::Unix(path) => write!(f, "unix://{}", path.display()),
            WorkloadUri::Http { host, port } if host.contains(':') => {
                write!(f, "http://[{host}]:{port}")
            }
            WorkloadUri::Http { host, port } => write!(f, "http://{host}:{port}"),
        }
    }
}

/// A module's IoT Edge environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeEnvironment {
    /// `IOTEDGE_IOTHUBHOSTNAME`: IoT Hub host (username and SAS `sr`).
    pub iothub_host_name: String,
    /// `IOTEDGE_DEVICEID`.
    pub device_id: String,
    /// `IOTEDGE_MODULEID`.
    pub module_id: String,
    /// `IOTEDGE_GATEWAYHOSTNAME`: host to connect MQTT/TLS to (edgeHub).
    pub gateway_host_name: String,
    /// `IOTEDGE_MODULEGENERATIONID`.
    pub generation_id: String,
    /// `IOTEDGE_WORKLOADURI`.
    pub workload_uri: WorkloadUri,
    /// `IOTEDGE_APIVERSION`: workload API version.
    pub api_version: String,
    /// `IOTEDGE_AUTHSCHEME` (always `sasToken`).
    pub auth_scheme: String,
}

impl EdgeEnvironment {
    /// Reads the environment through `lookup`. `Ok(None)` if no `IOTEDGE_*` variable of
    /// [`IOTEDGE_VARIABLES`] is set; otherwise an error naming the first missing, empty or
    /// malformed variable. `IOTEDGE_AUTHSCHEME` is optional (default `sasToken`) but must be
    /// `sasToken` if set.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, EdgeEnvError> {
        let values: Vec<Option<String>> = IOTEDGE_VARIABLES.iter().map(|v| lookup(v)).collect();
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        let required = |i: usize| -> Result<String, EdgeEnvError> {
            match &values[i] {
                None => Err(EdgeEnvError::Missing(IOTEDGE_VARIABLES[i])),
                Some(v) if v.trim().is_empty() => Err(EdgeEnvError::Empty(IOTEDGE_VARIABLES[i])),
                Some(v) => Ok(v.trim().to_owned()),
            }
        };
        let iothub_host_name = required(0)?;
        let device_id = required(1)?;
        let module_id = required(2)?;
        let gateway_host_name = required(3)?;
        let generation_id = required(4)?;
        let workload_uri =
            required(5)?
                .parse::<WorkloadUri>()
                .map_err(|e| EdgeEnvError::Malformed {
                    variable: IOTEDGE_VARIABLES[5],
                    reason: e.to_string(),
                })?;
        let api_version = required(6)?;
        let auth_scheme = match values[7].as_deref().map(str::trim) {
            None | Some(AUTH_SCHEME_SAS) => AUTH_SCHEME_SAS.to_owned(),
            Some("") => return Err(EdgeEnvError::Empty(IOTEDGE_VARIABLES[7])),
            Some(v) => {
                return Err(EdgeEnvError::Malformed {
                    variable: IOTEDGE_VARIABLES[7],
                    reason: format!("unsupported scheme `{v}`, only `{AUTH_SCHEME_SAS}`"),
                })
            }
        };
        Ok(Some(EdgeEnvironment {
            iothub_host_name,
            device_id,
            module_id,
            gateway_host_name,
            generation_id,
            workload_uri,
            api_version,
            auth_scheme,
        }))
    }

    /// The SAS resource `{hub}/devices/{d}/modules/{m}`.
    pub fn resource(&self) -> String {
        format!(
            "{}/devices/{}/modules/{}",
            self.iothub_host_name, self.device_id, self.module_id
        )
    }

    /// All eight variables with their values, in [`IOTEDGE_VARIABLES`] order (for printing).
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let values = [
            self.iothub_host_name.clone(),
            self.device_id.clone(),
            self.module_id.clone(),
            self.gateway_host_name.clone(),
            self.generation_id.clone(),
            self.workload_uri.to_string(),
            self.api_version.clone(),
            self.auth_scheme.clone(),
        ];
        IOTEDGE_VARIABLES.into_iter().zip(values).collect()
    }

    /// The workload sign path for this module (see [`sign_path`]).
    pub fn sign_path(&self) -> String {
        sign_path(&self.module_id, &self.generation_id)
    }
}

/// Workload sign request body: `{"keyId":"primary","algo":"HMACSHA256","data":"<base64>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequest {
    /// Key id (`primary`).
    #[serde(rename = "keyId")]
    pub key_id: String,
    /// Algorithm (`HMACSHA256`).
    pub algo: String,
    /// Base64 of the bytes to sign.
    pub data: String,
}

impl SignRequest {
    /// A request to sign the SAS string for `resource` and `expiry` with the primary key.
    pub fn for_token(resource: &str, expiry: u64) -> Self {
        use base64::Engine as _;
        SignRequest {
            key_id: "primary".to_owned(),
            algo: "HMACSHA256".to_owned(),
            data: base64::engine::general_purpose::STANDARD
                .encode(crate::sas::string_to_sign(resource, expiry)),
        }
    }
}

/// Workload sign response `{"digest":"<base64 HMAC-SHA256>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResponse {
    /// Base64 digest.
    pub digest: String,
}

/// `GET /trust-bundle` response `{"certificate":"<PEM>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundleResponse {
    /// One or more PEM certificates.
    pub certificate: String,
}

/// Workload API error body `{"message":"..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadErrorBody {
    /// Error message.
    pub message: String,
}

/// `/modules/{pct(module)}/genid/{gen}/sign` (module id percent-encoded like Python
/// `quote(module_id, safe="")`, so `$edgeHub` becomes `%24edgeHub`).
pub fn sign_path(module_id: &str, generation_id: &str) -> String {
    format!(
        "/modules/{}/genid/{}/sign",
        utf8_percent_encode(module_id, STRICT),
        generation_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn full() -> HashMap<&'static str, String> {
        HashMap::from([
            ("IOTEDGE_IOTHUBHOSTNAME", "hub.azure-devices.net".to_owned()),
            ("IOTEDGE_DEVICEID", "edge1".to_owned()),
            ("IOTEDGE_MODULEID", "filter".to_owned()),
            ("IOTEDGE_GATEWAYHOSTNAME", "edgehost".to_owned()),
            (
                "IOTEDGE_MODULEGENERATIONID",
                "638412345678901234".to_owned(),
            ),
            (
                "IOTEDGE_WORKLOADURI",
                "unix:///var/run/iotedge/workload.sock".to_owned(),
            ),
            ("IOTEDGE_APIVERSION", "2022-08-03".to_owned()),
            ("IOTEDGE_AUTHSCHEME", "sasToken".to_owned()),
        ])
    }

    fn read(vars: &HashMap<&'static str, String>) -> Result<Option<EdgeEnvironment>, EdgeEnvError> {
        EdgeEnvironment::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn a_full_environment_is_read() {
        let env = read(&full()).unwrap().unwrap();
        assert_eq!(env.iothub_host_name, "hub.azure-devices.net");
        assert_eq!(env.module_id, "filter");
        assert_eq!(
            env.workload_uri,
            WorkloadUri::Unix(PathBuf::from("/var/run/iotedge/workload.sock"))
        );
        assert_eq!(
            env.resource(),
            "hub.azure-devices.net/devices/edge1/modules/filter"
        );
        assert_eq!(env.auth_scheme, "sasToken");
        let vars = env.to_vars();
        assert_eq!(vars.len(), 8);
        assert_eq!(
            vars[5],
            (
                "IOTEDGE_WORKLOADURI",
                "unix:///var/run/iotedge/workload.sock".to_owned()
            )
        );
        let back: HashMap<&'static str, String> = vars.into_iter().collect();
        assert_eq!(read(&back).unwrap().unwrap(), env);
    }

    #[test]
    fn the_auth_scheme_defaults_to_sas_token() {
        let mut vars = full();
        vars.remove("IOTEDGE_AUTHSCHEME");
        assert_eq!(read(&vars).unwrap().unwrap().auth_scheme, "sasToken");
    }

    #[test]
    fn another_auth_scheme_is_rejected_by_name() {
        let mut vars = full();
        vars.insert("IOTEDGE_AUTHSCHEME", "x509".into());
        let err = read(&vars).unwrap_err();
        assert!(matches!(
            err,
            EdgeEnvError::Malformed {
                variable: "IOTEDGE_AUTHSCHEME",
                ..
            }
        ));
    }

    #[test]
    fn a_missing_workload_uri_is_named() {
        let mut vars = full();
        vars.remove("IOTEDGE_WORKLOADURI");
        let err = read(&vars).unwrap_err();
        assert_eq!(err, EdgeEnvError::Missing("IOTEDGE_WORKLOADURI"));
        assert!(err.to_string().contains("IOTEDGE_WORKLOADURI"));
    }

    #[test]
    fn an_empty_variable_is_named() {
        let mut vars = full();
        vars.insert("IOTEDGE_DEVICEID", " ".into());
        assert_eq!(
            read(&vars).unwrap_err(),
            EdgeEnvError::Empty("IOTEDGE_DEVICEID")
        );
    }

    #[test]
    fn a_bad_workload_uri_is_named() {
        let mut vars = full();
        vars.insert("IOTEDGE_WORKLOADURI", "tcp://x:1".into());
        let err = read(&vars).unwrap_err();
        assert!(matches!(
            err,
            EdgeEnvError::Malformed {
                variable: "IOTEDGE_WORKLOADURI",
                ..
            }
        ));
        assert!(err.to_string().contains("IOTEDGE_WORKLOADURI"));
        assert!(err.to_string().contains("tcp://x:1"));
    }

    #[test]
    fn no_iotedge_variable_means_not_on_edge() {
        assert_eq!(EdgeEnvironment::from_lookup(|_| None).unwrap(), None);
    }

    #[test]
    fn workload_uris_parse_and_print() {
        assert_eq!(
            "http://127.0.0.1:15580".parse::<WorkloadUri>().unwrap(),
            WorkloadUri::Http {
                host: "127.0.0.1".into(),
                port: 15580
            }
        );
        assert_eq!(
            "http://workload:8080/".parse::<WorkloadUri>().unwrap(),
            WorkloadUri::Http {
                host: "workload".into(),
                port: 8080
            }
        );
        let v6 = "http://[::1]:9".parse::<WorkloadUri>().unwrap();
        assert_eq!(
            v6,
            WorkloadUri::Http {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(v6.to_string(), "http://[::1]:9");
        assert!("unix://relative".parse::<WorkloadUri>().is_err());
        assert!("http://:80".parse::<WorkloadUri>().is_err());
        assert!("http://h:99999".parse::<WorkloadUri>().is_err());
    }

    #[test]
    fn the_sign_path_percent_encodes_the_module_id() {
        assert_eq!(
            sign_path("$edgeHub", "123"),
            "/modules/%24edgeHub/genid/123/sign"
        );
        assert_eq!(sign_path("filter", "g"), "/modules/filter/genid/g/sign");
    }

    #[test]
    fn sign_bodies_use_the_workload_field_names() {
        let req = SignRequest::for_token("h/devices/d/modules/m", 10);
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["keyId"], "primary");
        assert_eq!(json["algo"], "HMACSHA256");
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .decode(&req.data)
            .unwrap();
        assert_eq!(data, b"h%2Fdevices%2Fd%2Fmodules%2Fm\n10");
        let resp: SignResponse = serde_json::from_str(r#"{"digest":"abc="}"#).unwrap();
        assert_eq!(resp.digest, "abc=");
        let tb: TrustBundleResponse = serde_json::from_str(r#"{"certificate":"PEM"}"#).unwrap();
        assert_eq!(tb.certificate, "PEM");
        let e: WorkloadErrorBody = serde_json::from_str(r#"{"message":"forbidden"}"#).unwrap();
        assert_eq!(e.message, "forbidden");
    }

    #[test]
    fn a_workload_signature_assembles_into_a_verifiable_token() {
        use crate::sas::{decode_key, sign_string, token_from_signature, SasToken};
        use crate::Secret;
        let key = Secret::new("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=");
        let env = read(&full()).unwrap().unwrap();
        let req = SignRequest::for_token(&env.resource(), 1000);
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .decode(&req.data)
            .unwrap();
        let digest = sign_string(
            &decode_key(key.expose()).unwrap(),
            std::str::from_utf8(&data).unwrap(),
        );
        let token = token_from_signature(&env.resource(), 1000, &digest, None);
        assert!(SasToken::parse(token.expose()).unwrap().verify(&key));
    }
}
