//! Module identities, as IoT Edge's identity service makes them (Azure/iot-identity-service
//! `identity/aziot-identityd/src/identity.rs`, `create_module_identity`): the device itself,
//! with a SAS token from its own key (`sr={hub}/devices/{device}`), creates each deployed
//! module on the hub (`PUT /devices/{d}/modules/{m}?api-version=2017-11-08-preview`, the version
//! aziot's hub client uses), then gives it keys derived from a master identity key that never
//! leaves the device: `HMAC-SHA256(master, "{module}:{generationId}:primary")` (and
//! `:secondary`), as aziot-keyd derives them. The master key is 32 random bytes in the data
//! directory (mode 0600), made on first start. Modules created here are `managedBy: IotEdge`,
//! and only those are ever deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use edgetwin_wire::rest::{AuthenticationMechanism, Module, SymmetricKey};
use edgetwin_wire::workload::KeyId;
use edgetwin_wire::Secret;
use hyper::{Method, Request, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rand::RngCore;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::DeviceCredentials;

/// The api-version aziot's hub client sends for module identities.
pub const MODULE_API_VERSION: &str = "2017-11-08-preview";
/// `managedBy` of the identities the runtime creates (edgeAgent's `IotEdge`).
pub const MANAGED_BY: &str = "IotEdge";
/// The IoT Hub HTTPS port.
const HTTPS_PORT: u16 = 443;
/// How long one registry call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The lifetime of the device's SAS tokens for registry calls.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Why a module identity could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The master identity key cannot be read or made.
    #[error("master identity key {path}: {source}")]
    MasterKey {
        /// The key file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The hub cannot be reached.
    #[error("cannot reach IoT Hub {host}: {reason}")]
    Unreachable {
        /// The hub.
        host: String,
        /// Why.
        reason: String,
    },
    /// The hub refused the call.
    #[error("IoT Hub refused {what} with {status}: {message}")]
    Refused {
        /// The call.
        what: String,
        /// HTTP status.
        status: StatusCode,
        /// IoT Hub's message.
        message: String,
    },
}

/// A module's identity on the hub with the key the runtime derived for it.
#[derive(Clone, Debug)]
pub struct ModuleIdentity {
    /// The module id.
    pub module_id: String,
    /// The hub's generation id (a recreated identity gets a new one, and new keys).
    pub generation_id: String,
    /// The primary key, base64.
    pub primary: Secret,
    /// The secondary key, base64.
    pub secondary: Secret,
}

/// Reads the master identity key at `path`, making it (32 random bytes, mode 0600) if absent.
pub fn master_key(path: &Path) -> Result<Secret, IdentityError> {
    let error = |source| IdentityError::MasterKey {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = Secret::new(text.trim().to_owned());
            edgetwin_wire::sas::decode_key(key.expose()).map_err(|_| {
                error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not base64",
                ))
            })?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut bytes = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut bytes);
            let key = Secret::new(BASE64.encode(bytes));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(error)?;
            file.write_all(key.expose().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(error)?;
            Ok(key)
        }
        Err(e) => Err(error(e)),
    }
}

/// `base64(HMAC-SHA256(master, "{module}:{generation}:{primary|secondary}"))`.
pub fn derive_key(master: &Secret, module_id: &str, generation_id: &str, key: KeyId) -> Secret {
    let which = match key {
        KeyId::Primary => "primary",
        KeyId::Secondary => "secondary",
    };
    let master = edgetwin_wire::sas::decode_key(master.expose()).unwrap_or_default();
    let data = format!("{module_id}:{generation_id}:{which}");
    Secret::new(edgetwin_wire::sas::sign_bytes(&master, data.as_bytes()))
}

/// The device's registry client and the identities it made.
pub struct Identities {
    /// The device and its key.
    device: DeviceCredentials,
    /// TLS to the hub.
    tls: TlsConnector,
    /// The master identity key.
    master: Secret,
    /// Identities made or checked since start, by module id.
    known: Mutex<BTreeMap<String, ModuleIdentity>>,
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

impl Identities {
    /// A client for `device`, trusting the CA certificates in `trust_pem`.
    pub fn new(
        device: DeviceCredentials,
        trust_pem: &str,
        master: Secret,
    ) -> Result<Arc<Self>, IdentityError> {
        let tls = edgetwin_client::identity::tls_config(trust_pem).map_err(|e| {
            IdentityError::Unreachable {
                host: device.iothub_hostname.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(Arc::new(Identities {
            device,
            tls: TlsConnector::from(tls),
            master,
            known: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The device and its key.
    pub fn device(&self) -> &DeviceCredentials {
        &self.device
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device.device_id
    }

    /// The key of a module identity made or checked since start, if its generation matches.
    pub fn key_for(&self, module_id: &str, generation_id: &str, key: KeyId) -> Option<Vec<u8>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let identity = known
            .get(module_id)
            .filter(|i| i.generation_id == generation_id)?;
        let secret = match key {
            KeyId::Primary => &identity.primary,
            KeyId::Secondary => &identity.secondary,
        };
        edgetwin_wire::sas::decode_key(secret.expose()).ok()
    }

    /// Whether a module's identity was made or checked since start.
    pub fn is_known(&self, module_id: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(module_id)
    }

    fn token(&self) -> Secret {
        let expiry = SystemTime::now()
            .checked_add(TOKEN_TTL)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let resource = format!(
            "{}/devices/{}",
            self.device.iothub_hostname, self.device.device_id
        );
        edgetwin_wire::sas::generate_token(&self.device.key, &resource, expiry, None)
            .unwrap_or_else(|_| Secret::new(String::new()))
    }

    async fn call(
        &self,
        what: &str,
        method: Method,
        module_id: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), IdentityError> {
        let host = self.device.iothub_hostname.clone();
        let unreachable = |reason: String| IdentityError::Unreachable {
            host: host.clone(),
            reason,
        };
        let mut path = format!("/devices/{}/modules", enc(&self.device.device_id));
        if let Some(module_id) = module_id {
            path.push('/');
            path.push_str(&enc(module_id));
        }
        path.push_str(&format!("?api-version={MODULE_API_VERSION}"));
        let exchange = async {
            let tcp = TcpStream::connect((host.as_str(), HTTPS_PORT))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| unreachable(e.to_string()))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            let mut request = Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .header("Host", host.as_str())
                .header("Authorization", self.token().expose())
                .header(
                    "User-Agent",
                    format!("edgetwin-edge/{}", env!("CARGO_PKG_VERSION")),
                );
            if (method == Method::PUT && body.and_then(|b| b.get("authentication")).is_some())
                || method == Method::DELETE
            {
                request = request.header("If-Match", "*");
            }
            crate::http::exchange(tls, request, body)
                .await
                .map_err(unreachable)
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))??;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok((status, bytes));
        }
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("Message")
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(IdentityError::Refused {
            what: what.to_owned(),
            status,
            message,
        })
    }

    fn module_of(what: &str, bytes: &[u8]) -> Result<Module, IdentityError> {
        serde_json::from_slice(bytes).map_err(|e| IdentityError::Refused {
            what: what.to_owned(),
            status: StatusCode::OK,
            message: format!("the answer is not a module identity: {e}"),
        })
    }

    /// Makes sure module `module_id` exists on the hub with the keys derived for it, creating
    /// or updating it as aziot-identityd does; remembered for the workload API.
    pub async fn ensure(&self, module_id: &str) -> Result<ModuleIdentity, IdentityError> {
        let what = format!("module identity {}/{module_id}", self.device.device_id);
        let (status, bytes) = self.call(&what, Method::GET, Some(module_id), None).await?;
        let mut module = if status == StatusCode::NOT_FOUND {
            let create = serde_json::json!({
                "moduleId": module_id,
                "deviceId": self.device.device_id,
                "managedBy": MANAGED_BY,
            });
            let (_, bytes) = self
                .call(&what, Method::PUT, Some(module_id), Some(&create))
                .await?;
            Self::module_of(&what, &bytes)?
        } else {
            Self::module_of(&what, &bytes)?
        };
        let generation_id = module.generation_id.clone().unwrap_or_default();
        let primary = derive_key(&self.master, module_id, &generation_id, KeyId::Primary);
        let secondary = derive_key(&self.master, module_id, &generation_id, KeyId::Secondary);
        let current = module
            .authentication
            .as_ref()
            .and_then(|a| a.symmetric_key.as_ref())
            .and_then(|k| k.primary_key.as_ref())
            .is_some_and(|k| k.expose() == primary.expose());
        if !current {
            module.authentication = Some(AuthenticationMechanism {
                auth_type: Some("sas".into()),
                symmetric_key: Some(SymmetricKey {
                    primary_key: Some(primary.clone()),
                    secondary_key: Some(secondary.clone()),
                }),
                x509_thumbprint: None,
            });
            let body = serde_json::to_value(&module).unwrap_or_default();
            self.call(&what, Method::PUT, Some(module_id), Some(&body))
                .await?;
        }
        let identity = ModuleIdentity {
            module_id: module_id.to_owned(),
            generation_id,
            primary,
            secondary,
        };
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(module_id.to_owned(), identity.clone());
        Ok(identity)
    }

    /// Deletes module identities the runtime manages (`managedBy: IotEdge`) that are not in
    /// `keep`; `$edgeAgent` and `$edgeHub` are never deleted.
    pub async fn remove_others(&self, keep: &[&str]) -> Result<Vec<String>, IdentityError> {
        let what = format!("module identities of {}", self.device.device_id);
        let (_, bytes) = self.call(&what, Method::GET, None, None).await?;
        let modules: Vec<Module> = serde_json::from_slice(&bytes).unwrap_or_default();
        let mut removed = Vec::new();
        for module in modules {
            let id = module.module_id.as_str();
            if module.managed_by.as_deref() != Some(MANAGED_BY)
                || keep.contains(&id)
                || id.starts_with('$')
            {
                continue;
            }
            self.call(
                &format!("delete module identity {id}"),
                Method::DELETE,
                Some(id),
                None,
            )
            .await?;
            self.known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            removed.push(module.module_id);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_keys_are_derived_from_the_master_key_module_and_generation() {
        let master = Secret::new(BASE64.encode([7u8; 32]));
        let primary = derive_key(&master, "edgetwin", "g1", KeyId::Primary);
        let expected = edgetwin_wire::sas::sign_bytes(&[7u8; 32], b"edgetwin:g1:primary");
        assert_eq!(primary.expose(), expected);
        assert_ne!(
            primary.expose(),
            derive_key(&master, "edgetwin", "g1", KeyId::Secondary).expose()
        );
        assert_ne!(
            primary.expose(),
            derive_key(&master, "edgetwin", "g2", KeyId::Primary).expose()
        );
    }

    #[test]
    fn the_master_key_is_made_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("edgetwin-edge-master-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let _ = std::fs::remove_file(&path);
        let made = master_key(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(master_key(&path).unwrap().expose(), made.expose());
        std::fs::write(&path, "not base64!").unwrap();
        let error = master_key(&path).unwrap_err().to_string();
        assert!(
            error.contains("master.key") && error.contains("not base64"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
