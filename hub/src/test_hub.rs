//! An in-process hub for module authors' tests: [`TestHub::start`] runs the real hub on free
//! ports in a fresh temporary directory; narrow methods create an IoT Edge device and module,
//! hand out the module's `IOTEDGE_*` environment, set desired properties, read reported ones and
//! outputs, and inject faults. Every method goes through the hub's own service REST API, as a
//! back-end service would, so a test exercises nothing a real deployment would not.
//!
//! ```no_run
//! # async fn example() -> Result<(), edgetwin_hub::TestHubError> {
//! let hub = edgetwin_hub::TestHub::start().await?;
//! let env = hub.create_edge_module("gateway", "filter").await?;
//! // start the module with `env` (and `hub.mqtt_port()`), then:
//! let version = hub.patch_desired("gateway", "filter", serde_json::json!({"limit": 3})).await?;
//! let reported = hub.reported("gateway", "filter").await?;
//! # let _ = (env, version, reported);
//! hub.stop().await;
//! # Ok(()) }
//! ```
//!
//! Above everything: depends on the crate's public API (`start`) only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgetwin_wire::sas::generate_token;
use edgetwin_wire::Secret;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::{start, HubConfig, HubError, RunningHub};

/// The service API version the test hub's calls use.
const API_VERSION: &str = "2021-04-12";

/// Why a test hub call failed.
#[derive(Debug, thiserror::Error)]
pub enum TestHubError {
    /// The hub did not start.
    #[error("the test hub did not start")]
    Start(#[from] HubError),
    /// The temporary directory could not be made.
    #[error("cannot create the test hub's directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The REST call did not complete.
    #[error("{call}: {reason}")]
    Call {
        /// Method and path.
        call: String,
        /// What failed.
        reason: String,
    },
    /// The hub answered with an error status.
    #[error("{call} answered {status}: {body}")]
    Status {
        /// Method and path.
        call: String,
        /// HTTP status.
        status: u16,
        /// The error body.
        body: Value,
    },
}

/// A hub running inside the test process, removed with its directory on [`TestHub::stop`] (or
/// drop).
pub struct TestHub {
    /// The listeners; `None` once stopped.
    running: Option<RunningHub>,
    /// The temporary data directory.
    dir: PathBuf,
    /// TLS trusting the hub's CA.
    tls: Arc<rustls::ClientConfig>,
    /// The `iothubowner` key.
    owner: Secret,
}

/// Distinguishes the directories of test hubs started by one process.
static STARTED: AtomicU64 = AtomicU64::new(0);

impl TestHub {
    /// Starts a hub on free MQTT and HTTPS ports in a new temporary directory.
    pub async fn start() -> Result<TestHub, TestHubError> {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("edgetwin-test-hub-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| TestHubError::Dir {
            path: dir.clone(),
            source,
        })?;
        let mut config = HubConfig::new(dir.join("data"));
        config.mqtt_port = 0;
        config.https_port = 0;
        let running = start(config).await?;
        let tls = client_config_trusting(&running.info.ca_certificate).map_err(|reason| {
            TestHubError::Call {
                call: "read the hub's CA certificate".into(),
                reason,
            }
        })?;
        let owner = running
            .info
            .policies
            .get("iothubowner")
            .cloned()
            .unwrap_or_else(|| Secret::new(""));
        Ok(TestHub {
            running: Some(running),
            dir,
            tls,
            owner,
        })
    }

    fn info(&self) -> &crate::HubInfo {
        &self.running.as_ref().expect("running until stopped").info
    }

    /// The MQTT (TLS) port modules connect to.
    pub fn mqtt_port(&self) -> u16 {
        self.info().mqtt_port
    }

    /// The HTTPS port (service REST API, MQTT over WebSockets).
    pub fn https_port(&self) -> u16 {
        self.info().https_port
    }

    /// The CA certificate clients must trust.
    pub fn ca_certificate(&self) -> &Path {
        &self.info().ca_certificate
    }

    /// The `iothubowner` connection string, for a service client.
    pub fn service_connection_string(&self) -> &Secret {
        &self.info().service_connection_string
    }

    /// Creates the IoT Edge device `device` (if missing) and its module `module`; returns the
    /// module's `IOTEDGE_*` environment, as IoT Edge would set it (workload API included).
    pub async fn create_edge_module(
        &self,
        device: &str,
        module: &str,
    ) -> Result<BTreeMap<String, String>, TestHubError> {
        let (status, _) = self
            .call("GET", &format!("/devices/{}", pct(device)), None)
            .await?;
        if status == 404 {
            let body = json!({"deviceId": device, "capabilities": {"iotEdge": true}});
            self.ok("PUT", &format!("/devices/{}", pct(device)), Some(body))
                .await?;
        }
        let body = json!({"moduleId": module, "deviceId": device});
        self.ok(
            "PUT",
            &format!("/devices/{}/modules/{}", pct(device), pct(module)),
            Some(body),
        )
        .await?;
        self.edge_environment(device, module).await
    }

    /// The module's `IOTEDGE_*` environment.
    pub async fn edge_environment(
        &self,
        device: &str,
        module: &str,
    ) -> Result<BTreeMap<String, String>, TestHubError> {
        let path = format!(
            "/edgetwin/devices/{}/modules/{}/edgeEnvironment",
            pct(device),
            pct(module)
        );
        let body = self.ok("GET", &path, None).await?;
        Ok(body
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect())
    }

    /// Patches the module twin's desired properties; returns the new desired `$version`.
    pub async fn patch_desired(
        &self,
        device: &str,
        module: &str,
        desired: Value,
    ) -> Result<i64, TestHubError> {
        let body = json!({"properties": {"desired": desired}});
        let twin = self
            .ok(
                "PATCH",
                &format!("/twins/{}/modules/{}", pct(device), pct(module)),
                Some(body),
            )
            .await?;
        Ok(twin["properties"]["desired"]["$version"]
            .as_i64()
            .unwrap_or_default())
    }

    /// The module twin's reported properties (with `$version` and `$metadata`).
    pub async fn reported(&self, device: &str, module: &str) -> Result<Value, TestHubError> {
        let twin = self
            .ok(
                "GET",
                &format!("/twins/{}/modules/{}", pct(device), pct(module)),
                None,
            )
            .await?;
        Ok(twin["properties"]["reported"].clone())
    }

    /// Every message the module sent on `output` that the hub's message log still holds,
    /// oldest first: `sequence`, `properties`, `body` (text) or `bodyBase64`.
    pub async fn outputs(
        &self,
        device: &str,
        module: &str,
        output: &str,
    ) -> Result<Vec<Value>, TestHubError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let path = format!(
                "/edgetwin/messages?deviceId={}&moduleId={}&output={}&after={after}",
                pct(device),
                pct(module),
                pct(output)
            );
            let page = self.ok("GET", &path, None).await?;
            let page = page.as_array().cloned().unwrap_or_default();
            // a page is cut by count or by bytes, so only an empty one says there is no more
            let Some(last) = page.last().and_then(|m| m["sequence"].as_u64()) else {
                return Ok(all);
            };
            after = last;
            all.extend(page);
        }
    }

    /// Invokes direct method `method` on the module; returns the status and payload it answered.
    pub async fn invoke(
        &self,
        device: &str,
        module: &str,
        method: &str,
        payload: Value,
    ) -> Result<(i64, Value), TestHubError> {
        let body =
            json!({"methodName": method, "payload": payload, "responseTimeoutInSeconds": 10});
        let answer = self
            .ok(
                "POST",
                &format!("/twins/{}/modules/{}/methods", pct(device), pct(module)),
                Some(body),
            )
            .await?;
        Ok((
            answer["status"].as_i64().unwrap_or_default(),
            answer["payload"].clone(),
        ))
    }

    /// Applies a deployment's `modulesContent` to the edge device, as
    /// `POST /devices/{device}/applyConfigurationContent` does.
    pub async fn apply_modules_content(
        &self,
        device: &str,
        modules_content: Value,
    ) -> Result<(), TestHubError> {
        let body = json!({"modulesContent": modules_content});
        let path = format!("/devices/{}/applyConfigurationContent", pct(device));
        self.ok("POST", &path, Some(body)).await.map(drop)
    }

    /// Sets the edge device's `$edgeHub` routes (`{"name": "FROM ... INTO ..."}`), which the
    /// hub runs as edgeHub would.
    pub async fn set_routes(&self, device: &str, routes: Value) -> Result<(), TestHubError> {
        let edge_hub = json!({
            "schemaVersion": "1.1",
            "routes": routes,
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
        });
        self.apply_modules_content(
            device,
            json!({"$edgeHub": {"properties.desired": edge_hub}}),
        )
        .await
    }

    /// Closes the module's MQTT connection now, as a network failure would.
    pub async fn drop_connection(&self, device: &str, module: &str) -> Result<(), TestHubError> {
        let body = json!({"clientId": format!("{device}/{module}")});
        self.ok("POST", "/edgetwin/faults/disconnect", Some(body))
            .await
            .map(drop)
    }

    /// Injects any fault of `/edgetwin/faults/{kind}` (`refuseConnects`, `tokenLifetime`,
    /// `throttle`, `delay`, ...) with its JSON body.
    pub async fn fault(&self, kind: &str, body: Value) -> Result<Value, TestHubError> {
        self.ok(
            "POST",
            &format!("/edgetwin/faults/{}", pct(kind)),
            Some(body),
        )
        .await
    }

    /// Stops the hub and removes its directory.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A call that must answer 2xx; returns the JSON body.
    async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, TestHubError> {
        match self.call(method, path, body).await? {
            (status, body) if status < 300 => Ok(body),
            (status, body) => Err(TestHubError::Status {
                call: format!("{method} {path}"),
                status,
                body,
            }),
        }
    }

    /// One service REST call as `iothubowner`, on a new connection; the status and the JSON
    /// body (`null` when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), TestHubError> {
        let failed = |reason: String| TestHubError::Call {
            call: format!("{method} {path}"),
            reason,
        };
        let info = self.info();
        let resource = crate::service_host(&info.host_name, info.https_port);
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
            + 3600;
        let token = generate_token(&self.owner, &resource, expiry, Some("iothubowner"))
            .map_err(|e| failed(e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", info.https_port))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(info.host_name.clone())
            .map_err(|e| failed(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(connection);
        let sep = if path.contains('?') { '&' } else { '?' };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{path}{sep}api-version={API_VERSION}"))
            .header("Host", &resource)
            .header("Authorization", token.expose())
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        // Without `stop`, the listeners end with the runtime; the directory goes now.
        if self.running.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A rustls client configuration trusting only the CA certificates in the PEM file `ca`.
fn client_config_trusting(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `text` percent-encoded for a path segment or a query value: IoT Hub ids may hold `#`, `?`, `%`
/// and `+`, which would otherwise end the path or change the id.
fn pct(text: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_with_characters_that_mean_something_in_a_url_reach_the_hub_whole() {
        let hub = TestHub::start().await.unwrap();
        let (device, module) = ("gw#1?a=%41", "m+$1");
        let env = hub.create_edge_module(device, module).await.unwrap();
        assert_eq!(env["IOTEDGE_DEVICEID"], device);
        assert_eq!(env["IOTEDGE_MODULEID"], module);
        let version = hub
            .patch_desired(device, module, json!({"telemetryInterval": 122}))
            .await
            .unwrap();
        assert_eq!(version, 2);
        assert!(hub.reported(device, module).await.unwrap()["$version"].is_i64());
        assert!(hub
            .outputs(device, module, "out#1")
            .await
            .unwrap()
            .is_empty());
        hub.stop().await;
    }
}
