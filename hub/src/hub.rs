//! The hub's shared state, handed as `Arc<Hub>` to every listener: the store, live connections,
//! methods in flight, the message log and the shared access policies. Operations that span
//! storage and live connections (twin changes that notify devices, method calls) live here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgetwin_wire::rest::{CloudToDeviceMethod, CloudToDeviceMethodResult, ErrorCode, Permission};
use edgetwin_wire::sas::{SasScope, SasToken};
use edgetwin_wire::topic::{self, Feature};

use crate::console::Console;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::ids;
use crate::live::{LiveConnections, Outgoing, Undelivered};
use crate::messages::MessageLog;
use crate::methods::{MethodResponse, PendingMethods};
use crate::rest::query::Queries;
use crate::store::{IdentityKey, PolicyRecord, Readers, Store, StoreError, Transaction};
use crate::twins::{self, DesiredChange};
use crate::workload::WorkloadSockets;
use crate::writer::{Committing, Writer, Written};

/// Largest direct-method request payload IoT Hub accepts (128 KB of JSON).
pub const MAX_METHOD_PAYLOAD: usize = 128 * 1024;

/// Longest direct-method timeout IoT Hub accepts, in seconds.
pub const MAX_METHOD_TIMEOUT_SECS: u64 = 300;

/// Read-only connections for CONNECT authentication and the other short reads (queries have
/// their own, [`Queries`]): reads from concurrent connections rarely wait for one another.
const READERS: usize = 4;

/// Everything the listeners share.
pub struct Hub {
    /// IoT Hub host name: in connection strings, SAS resources and MQTT usernames.
    pub host_name: String,
    /// The one writer of the store, which also tells clients about desired changes in commit
    /// order.
    writer: Writer,
    /// Read-only connections for reads, which never wait behind a write and its fsync.
    readers: Readers,
    /// Queries' own read connections, queue and continuation key.
    pub queries: Queries,
    /// Live MQTT connections.
    pub live: Arc<LiveConnections>,
    /// Direct methods waiting for a response.
    pub methods: PendingMethods,
    /// Telemetry and module outputs.
    pub messages: MessageLog,
    /// Shared access policies (loaded at start).
    pub policies: Vec<PolicyRecord>,
    /// The CA certificate (PEM), served as the workload trust bundle.
    pub ca_pem: String,
    /// The workload sockets being served.
    pub workload: WorkloadSockets,
    /// Faults injected through `/edgetwin/faults`.
    pub faults: Faults,
    /// The web console's sessions and event streams.
    pub console: Console,
}

impl Hub {
    /// Opens the store in `data_dir`, creating the default shared access policies on first start
    /// if `fresh_allowed` (otherwise a database without policies is refused: it was lost).
    pub fn open(
        data_dir: &Path,
        host_name: String,
        ca_pem: String,
        workload: WorkloadSockets,
        fresh_allowed: bool,
    ) -> Result<Self, StoreError> {
        let path = data_dir.join("hub.db");
        let mut store = Store::open(&path)?;
        let policies = store.transaction(|tx| {
            let mut policies = tx.policies()?;
            if policies.is_empty() && !fresh_allowed {
                return Err(StoreError::Lost { path: path.clone() });
            }
            if policies.is_empty() {
                for (name, permissions) in edgetwin_wire::rest::default_policies() {
                    let policy = PolicyRecord {
                        name: name.to_owned(),
                        primary_key: ids::new_key(),
                        secondary_key: ids::new_key(),
                        permissions: permissions.iter().map(|p| p.name().to_owned()).collect(),
                    };
                    tx.put_policy(&policy)?;
                    policies.push(policy);
                }
            }
            Ok::<_, StoreError>(policies)
        })?;
        if store.transaction(|tx| tx.counter(crate::store::EVALUATIONS_PENDING))? > 0 {
            // a configuration change whose evaluation the last run did not finish, or a
            // database whose targeting rows are new
            if let Err(error) = store.transaction(crate::deployments::evaluate_all) {
                tracing::error!(%error, "evaluating deployments at start failed");
            }
        }
        let live = Arc::new(LiveConnections::default());
        let hook = {
            let live = live.clone();
            move |change: &DesiredChange| notify_desired(&live, change)
        };
        Ok(Self {
            readers: Readers::open(&path, READERS)?,
            queries: Queries::open(&path)?,
            writer: Writer::start(store, hook).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?,
            host_name,
            live,
            methods: PendingMethods::default(),
            messages: MessageLog::default(),
            policies,
            ca_pem,
            workload,
            faults: Faults::default(),
            console: Console::default(),
        })
    }

    /// Runs `f` in one read transaction on a read-only connection: it never waits for the
    /// writer, and sees every change committed before it started.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        off_the_async_worker(|| self.readers.read(f))
    }

    /// Runs `f` in a transaction of the writer and waits for its commit.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.writer.write(move |tx| Ok((f(tx)?, Vec::new()))).await
    }

    /// Runs `f` in a transaction of the writer and waits for its commit, after which (in commit
    /// order with every other change) subscribed clients are told about the desired-property
    /// changes it made.
    pub async fn write_and_notify<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Written<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.writer.write(f).await
    }

    /// Queues a reported-properties patch from `key`'s device or module for the next group
    /// commit (waiting only for room in the queue) and returns the handle to its new
    /// `reported.$version`, so that a connection can keep reading meanwhile. A patch from
    /// `$edgeAgent` also records what it reports of its deployment (the reported counts).
    pub async fn submit_reported(
        &self,
        key: IdentityKey,
        body: Bytes,
    ) -> Result<Committing<i64>, ApiError> {
        self.writer
            .submit(move |tx| {
                let version = twins::patch_reported(tx, &key, &body)?;
                if key.module_id.as_deref() == Some(crate::registry::EDGE_AGENT) {
                    crate::deployments::record_agent_report(tx, &key.device_id)?;
                }
                Ok((version, Vec::new()))
            })
            .await
    }

    /// Stops taking writes and waits until every queued one is committed and answered.
    pub async fn drain_writes(&self) {
        self.writer.drain().await;
    }

    /// Who a service token authenticates, if its signature, expiry and host are right and its
    /// `sr` (a URI prefix) covers the request's path `segments`: a shared access policy (`skn`),
    /// or, without `skn`, an IoT Edge device signing with its own key ([`Caller::EdgeDevice`]).
    pub fn authenticate_service(
        &self,
        authorization: Option<&str>,
        segments: &[String],
    ) -> Result<Caller, ApiError> {
        let token =
            SasToken::parse(authorization.ok_or_else(|| unauthorized("no Authorization header"))?)
                .map_err(|_| unauthorized("malformed SharedAccessSignature"))?;
        let scope = token.scope().map_err(|_| unauthorized("malformed sr"))?;
        if !host_matches(scope.host(), &self.host_name) {
            return Err(unauthorized("sr names another hub"));
        }
        if !resource_covers(&token.resource, segments) {
            return Err(unauthorized("sr does not cover the requested path"));
        }
        if token.is_expired(ids::now_unix(), 0) {
            return Err(unauthorized("token expired"));
        }
        let Some(name) = token.key_name.as_deref() else {
            return self.authenticate_edge_device(&token, &scope, segments);
        };
        let policy = self
            .policies
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| unauthorized("unknown policy"))?;
        if !(token.verify(&policy.primary_key) || token.verify(&policy.secondary_key)) {
            return Err(unauthorized("bad signature"));
        }
        Ok(Caller::Policy(policy.clone()))
    }

    /// A token without `skn` whose `sr` is `{host}/devices/{id}`, signed with the key of that
    /// enabled IoT Edge device, as aziot-identityd signs its module requests
    /// (Azure/iot-identity-service `aziot-cloud-client-async` `connector.rs`: audience
    /// `{hub}/devices/{device}` lower-cased, no `skn`). The device is the one the path names (its
    /// `sr` covers the path, ignoring case); a module's token is refused.
    fn authenticate_edge_device(
        &self,
        token: &SasToken,
        scope: &SasScope,
        segments: &[String],
    ) -> Result<Caller, ApiError> {
        if !matches!(scope, SasScope::Device { .. }) {
            return Err(unauthorized(
                "a token without skn must be a device's (sr {host}/devices/{id})",
            ));
        }
        let device_id = segments
            .get(1)
            .ok_or_else(|| unauthorized("a device token names no device of the path"))?;
        let keys = self.read(|tx| {
            let edge = tx
                .device(device_id)?
                .is_some_and(|d| d.capabilities.is_some_and(|c| c.iot_edge));
            if !edge {
                return Ok(None);
            }
            crate::registry::connect_keys(tx, &IdentityKey::device(device_id))
        })?;
        let keys = keys.ok_or_else(|| {
            unauthorized(
                "a device token is accepted from an enabled IoT Edge device with SAS keys only",
            )
        })?;
        if !keys.iter().any(|key| token.verify(key)) {
            return Err(unauthorized("bad signature"));
        }
        Ok(Caller::EdgeDevice(device_id.clone()))
    }

    /// Calls a direct method on a connected, subscribed client and waits for its answer.
    pub async fn invoke_method(
        &self,
        key: &IdentityKey,
        request: CloudToDeviceMethod,
    ) -> Result<CloudToDeviceMethodResult, ApiError> {
        if !topic::is_valid_method_name(&request.method_name) {
            return Err(ApiError::invalid(format!(
                "methodName '{}' is not a valid method name",
                request.method_name
            )));
        }
        let timeout = request.response_timeout_in_seconds.unwrap_or(30);
        if !(5..=MAX_METHOD_TIMEOUT_SECS).contains(&timeout) {
            return Err(ApiError::invalid(format!(
                "responseTimeoutInSeconds {timeout} must be between 5 and {MAX_METHOD_TIMEOUT_SECS}"
            )));
        }
        let client_id = key.client_id();
        // IoT Hub hands the device the payload's JSON text, and an empty body when the payload is
        // null or missing: the C SDK special-cases that size 0 ("A NULL payload was sent from the
        // service", Azure/azure-iot-sdk-c#2097 for #1924) and the Python device SDK failed on it
        // with "Expecting value: line 1 column 1" (Azure/azure-iot-sdk-python#761, #1081).
        let payload = match request.payload {
            None | Some(serde_json::Value::Null) => Bytes::new(),
            Some(json) => Bytes::from(json.to_string()),
        };
        if payload.len() > MAX_METHOD_PAYLOAD {
            return Err(ApiError::invalid(format!(
                "the payload of '{}' is {} bytes; IoT Hub allows {MAX_METHOD_PAYLOAD}",
                request.method_name,
                payload.len()
            )));
        }
        let (rid, response) = self.methods.start(&client_id);
        let message = Outgoing {
            topic: topic::method_request_topic(&request.method_name, &rid),
            payload,
            at_least_once: false,
        };
        if let Err(why) = self.live.send(&client_id, Some(Feature::Methods), message) {
            self.methods.abandon(&client_id, &rid);
            let text = match why {
                Undelivered::NotListening => {
                    "the device is not online or does not listen for methods"
                }
                Undelivered::Overloaded => "the device is not keeping up and was disconnected",
            };
            return Err(ApiError::new(ErrorCode::DeviceNotOnline, text));
        }
        match tokio::time::timeout(Duration::from_secs(timeout), response).await {
            Ok(Ok(MethodResponse { status, payload })) => Ok(CloudToDeviceMethodResult {
                status,
                payload: if payload.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&payload).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&payload).into())
                    })
                },
            }),
            Ok(Err(_)) | Err(_) => {
                self.methods.abandon(&client_id, &rid);
                Err(ApiError::new(
                    ErrorCode::GatewayTimeout,
                    format!(
                        "the device did not answer '{}' within {timeout} s",
                        request.method_name
                    ),
                ))
            }
        }
    }
}

/// Who a service request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A shared access policy (the token's `skn`), with its permissions.
    Policy(PolicyRecord),
    /// An IoT Edge device with its own token, as aziot-identityd manages the device's module
    /// identities (`PUT`, `GET`, `DELETE /devices/{id}/modules[/{m}]`, api-version
    /// 2017-11-08-preview, Azure/iot-identity-service `aziot-cloud-client-async` `hub/mod.rs`):
    /// it may manage its own modules and nothing else.
    EdgeDevice(String),
}

/// IoT Hub's refusal of a token (the reason goes to the log only).
fn unauthorized(why: &str) -> ApiError {
    tracing::info!(reason = why, "service request refused");
    ApiError::new(ErrorCode::IotHubUnauthorizedAccess, "Unauthorized")
}

/// Tells the client whose twin changed about a committed desired change (run by the writer).
fn notify_desired(live: &LiveConnections, change: &DesiredChange) {
    let message = Outgoing {
        topic: topic::desired_patch_topic(change.version),
        payload: change.notification.clone(),
        at_least_once: true,
    };
    let client_id = change.key.client_id();
    if live
        .send(&client_id, Some(Feature::DesiredPatches), message)
        .is_ok()
    {
        tracing::debug!(client_id, version = change.version, "desired patch sent");
    }
}

/// Runs blocking store reads so that, on a multi-threaded runtime, the worker's other tasks
/// move to another thread meanwhile instead of waiting behind it.
pub(crate) fn off_the_async_worker<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Whether a permission list holds `permission`.
pub fn grants(policy: &PolicyRecord, permission: Permission) -> bool {
    policy.permissions.iter().any(|p| p == permission.name())
}

/// Whether a token's decoded `sr` (`host[/segment...]`) is a prefix, segment by segment and
/// ignoring case, of a request's path `segments`: `{hub}/devices/d1` covers `/devices/d1/modules/m`
/// but not `/devices/d10` or `/twins/d1`.
pub fn resource_covers(resource: &str, segments: &[String]) -> bool {
    let scope: Vec<&str> = resource
        .split('/')
        .skip(1)
        .filter(|s| !s.is_empty())
        .collect();
    scope.len() <= segments.len()
        && scope
            .iter()
            .zip(segments)
            .all(|(want, got)| want.eq_ignore_ascii_case(got))
}

/// Whether a host from a token (maybe with `:port`) names this hub (case-insensitive).
pub fn host_matches(token_host: &str, hub_host: &str) -> bool {
    let strip = |h: &str| {
        h.rsplit_once(':')
            .map_or(h, |(host, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    host
                } else {
                    h
                }
            })
            .to_ascii_lowercase()
    };
    strip(token_host) == strip(hub_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sr_path_limits_a_service_token_to_the_paths_under_it() {
        let path = |p: &str| p.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert!(resource_covers("h", &path("devices/d2")));
        assert!(resource_covers("h/", &path("faults")));
        assert!(resource_covers("h/devices/d1", &path("devices/d1")));
        assert!(resource_covers(
            "h/devices/D1",
            &path("devices/d1/modules/m")
        ));
        assert!(!resource_covers("h/devices/d1", &path("devices/d10")));
        assert!(!resource_covers("h/devices/d1", &path("devices/d2")));
        assert!(!resource_covers("h/devices/d1", &path("devices")));
        assert!(!resource_covers("h/devices/d1", &path("edgetwin/faults")));
    }

    #[test]
    fn token_hosts_match_with_or_without_port_and_case() {
        assert!(host_matches("LocalHost:8443", "localhost"));
        assert!(host_matches("localhost", "localhost"));
        assert!(!host_matches("other", "localhost"));
    }
}
