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

use edgetwin_service::{ClientOptions, MessageFilter, Request, ServiceClient};
use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::rest::{
    CloudToDeviceMethod, ConfigurationContent, Device, DeviceCapabilities, Module, Permission,
};
use edgetwin_wire::Secret;
use hyper::Method;
use serde_json::{json, Value};

use crate::{start, HubConfig, HubError, RunningHub};

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
    /// A service REST call did not complete, or the hub answered it with an error (its
    /// status, IoT Hub error code and message are in the [`edgetwin_service::ServiceError`]).
    #[error(transparent)]
    Service(#[from] edgetwin_service::Error),
}

/// A hub running inside the test process, removed with its directory on [`TestHub::stop`] (or
/// drop).
pub struct TestHub {
    /// The listeners; `None` once stopped.
    running: Option<RunningHub>,
    /// The temporary data directory.
    dir: PathBuf,
    /// The service REST API as `iothubowner`, trusting the hub's CA only.
    service: ServiceClient,
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
        config.amqp_port = 0;
        let running = start(config).await?;
        let owner: ConnectionString = running
            .info
            .service_connection_string
            .expose()
            .parse()
            .map_err(|e| {
                edgetwin_service::Error::ConnectionString(format!(
                    "the hub's owner connection string: {e}"
                ))
            })?;
        let options = ClientOptions {
            keep_alive: false,
            ..ClientOptions::trusting_only(&running.info.ca_certificate)
        };
        let service = ServiceClient::new(&owner, options)?;
        Ok(TestHub {
            running: Some(running),
            dir,
            service,
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

    /// The hub's service REST API as `iothubowner` (trusting the hub's CA), for calls the
    /// methods here do not make.
    pub fn service(&self) -> &ServiceClient {
        &self.service
    }

    /// Creates the IoT Edge device `device` (if missing) and its module `module`; returns the
    /// module's `IOTEDGE_*` environment, as IoT Edge would set it (workload API included).
    pub async fn create_edge_module(
        &self,
        device: &str,
        module: &str,
    ) -> Result<BTreeMap<String, String>, TestHubError> {
        if self.service.get_device(device).await?.is_none() {
            let edge = Device {
                device_id: device.to_owned(),
                capabilities: Some(DeviceCapabilities { iot_edge: true }),
                ..Device::default()
            };
            self.service.create_device(&edge).await?;
        }
        let identity = Module {
            module_id: module.to_owned(),
            device_id: device.to_owned(),
            ..Module::default()
        };
        self.service.create_module(&identity).await?;
        self.edge_environment(device, module).await
    }

    /// The module's `IOTEDGE_*` environment.
    pub async fn edge_environment(
        &self,
        device: &str,
        module: &str,
    ) -> Result<BTreeMap<String, String>, TestHubError> {
        Ok(self.service.edge_environment(device, module).await?)
    }

    /// Patches the module twin's desired properties; returns the new desired `$version`.
    pub async fn patch_desired(
        &self,
        device: &str,
        module: &str,
        desired: Value,
    ) -> Result<i64, TestHubError> {
        let patch = json!({"properties": {"desired": desired}});
        let twin = self
            .service
            .patch_twin(device, Some(module), &patch)
            .await?;
        Ok(twin["properties"]["desired"]["$version"]
            .as_i64()
            .unwrap_or_default())
    }

    /// The module twin's reported properties (with `$version` and `$metadata`).
    pub async fn reported(&self, device: &str, module: &str) -> Result<Value, TestHubError> {
        let twin = self.service.get_twin(device, Some(module)).await?;
        Ok(twin["properties"]["reported"].clone())
    }

    /// Every message the module sent on `output` that reached IoT Hub and the hub still keeps,
    /// oldest first: `sequence`, `properties`, `body` (text) or `bodyBase64`. An output reaches IoT
    /// Hub when a route sends it `INTO $upstream`, or any output while the device has no routes
    /// (as on IoT Edge, a message no route names goes nowhere).
    pub async fn outputs(
        &self,
        device: &str,
        module: &str,
        output: &str,
    ) -> Result<Vec<Value>, TestHubError> {
        let mut all = Vec::new();
        let mut filter = MessageFilter {
            device_id: Some(device),
            module_id: Some(module),
            output: Some(output),
            after: Some(0),
        };
        loop {
            let page = self.service.messages(&filter).await?;
            // a page is cut by count or by bytes, so only an empty one says there is no more
            let Some(last) = page.last().and_then(|m| m["sequence"].as_u64()) else {
                return Ok(all);
            };
            filter.after = Some(last);
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
        let method = CloudToDeviceMethod {
            method_name: method.to_owned(),
            payload: Some(payload),
            response_timeout_in_seconds: Some(10),
            ..CloudToDeviceMethod::default()
        };
        let answer = self
            .service
            .invoke_module_method(device, module, &method)
            .await?;
        Ok((i64::from(answer.status), answer.payload))
    }

    /// Applies a deployment's `modulesContent` to the edge device, as
    /// `POST /devices/{device}/applyConfigurationContent` does.
    pub async fn apply_modules_content(
        &self,
        device: &str,
        modules_content: Value,
    ) -> Result<(), TestHubError> {
        // A value that is not a JSON object sends no `modulesContent` at all.
        let content = ConfigurationContent {
            modules_content: modules_content.as_object().cloned(),
            ..ConfigurationContent::default()
        };
        Ok(self
            .service
            .apply_configuration_content(device, &content)
            .await?)
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
        self.fault("disconnect", body).await.map(drop)
    }

    /// Injects any fault of `/edgetwin/faults/{kind}` (`refuseConnects`, `tokenLifetime`,
    /// `throttle`, `delay`, ...) with its JSON body.
    pub async fn fault(&self, kind: &str, body: Value) -> Result<Value, TestHubError> {
        let request = Request::new(
            Method::POST,
            &["edgetwin", "faults", kind],
            Permission::ServiceConnect,
            format!("inject fault '{kind}'"),
        )
        .json(&body);
        Ok(self.service.call_json(&request).await?)
    }

    /// Stops the hub and removes its directory.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// One service REST call as `iothubowner` (`path` percent-encoded, `api-version` added);
    /// the status and the JSON body (`null` when empty), whatever the status.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), TestHubError> {
        let operation = format!("{method} {path}");
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| {
            edgetwin_service::Error::Request {
                operation: operation.clone(),
                detail: e.to_string(),
            }
        })?;
        let mut request = Request::raw(method, path, Permission::ServiceConnect, operation);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = self.service.send(&request).await?;
        Ok((response.status, response.json_or_null()))
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
