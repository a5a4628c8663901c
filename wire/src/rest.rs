//! Service (data-plane) REST models, error envelopes and access policies (docs/spec/iothub-service-and-manifest.md A1,
//! A2.1, A2.11, A5).
//!
//! Models use camelCase JSON names. Optional fields are omitted when `None` so that inputs
//! from the SDKs (which omit unset fields) round-trip; the hub fills every field on output.
//! Exceptions that real hubs always serialize as `null` are noted on the type.

use crate::twin::Properties;
use crate::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A device identity (`PUT/GET /devices/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Device {
    /// Device id (`""` when absent on input).
    pub device_id: String,
    /// Hub-generated generation id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    /// Identity etag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `Disconnected` | `Connected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    /// `enabled` | `disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Free text, at most 128 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// ISO 8601 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_state_updated_time: Option<String>,
    /// ISO 8601 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_updated_time: Option<String>,
    /// ISO 8601 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    /// Pending C2D messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<i64>,
    /// Authentication (keys or thumbprints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    /// `{"iotEdge": bool}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// `ms-azure-iot-edge://{id}-{generationId}` for edge devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// Parent scopes (nested edge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
}

/// A module identity (`PUT/GET /devices/{id}/modules/{mid}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Module {
    /// Module id.
    pub module_id: String,
    /// e.g. `IotEdge` for identities created by the edge runtime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    /// Owning device id.
    pub device_id: String,
    /// Hub-generated generation id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<String>,
    /// Identity etag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `Disconnected` | `Connected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    /// ISO 8601 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_state_updated_time: Option<String>,
    /// ISO 8601 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    /// Pending C2D messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<i64>,
    /// Authentication (keys or thumbprints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
}

/// `authentication` of a device or module.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthenticationMechanism {
    /// `sas` | `selfSigned` | `certificateAuthority` | `none`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    /// Symmetric keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKey>,
    /// X.509 thumbprints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
}

/// `symmetricKey`; `None` keys serialize as `null`. `Debug` redacts the keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SymmetricKey {
    /// Primary base64 key.
    pub primary_key: Option<Secret>,
    /// Secondary base64 key.
    pub secondary_key: Option<Secret>,
}

/// `x509Thumbprint`; `None` thumbprints serialize as `null`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct X509Thumbprint {
    /// Primary thumbprint.
    pub primary_thumbprint: Option<String>,
    /// Secondary thumbprint.
    pub secondary_thumbprint: Option<String>,
}

/// `capabilities`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceCapabilities {
    /// True for IoT Edge devices.
    pub iot_edge: bool,
}

/// A device or module twin (service view, `GET/PATCH/PUT /twins/...`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Twin {
    /// Device id.
    pub device_id: String,
    /// Module id (module twins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Twin etag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Identity etag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_etag: Option<String>,
    /// Twin version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// `enabled` | `disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Status reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// ISO 8601 time (note: *Update*, not *Updated*).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_update_time: Option<String>,
    /// `Disconnected` | `Connected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<String>,
    /// ISO 8601 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<String>,
    /// Pending C2D messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_message_count: Option<i64>,
    /// `sas`, `selfSigned`, `certificateAuthority`, `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication_type: Option<String>,
    /// Thumbprints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
    /// PnP model id (`""` when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Capabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Device scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// Parent scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
    /// Tags (back-end only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Properties>,
    /// Desired and reported properties.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
    /// `{"<configId>": {"status": "Targeted"|"Applied"}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configurations: Option<Map<String, Value>>,
}

/// `properties` of a twin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TwinProperties {
    /// Desired properties (with `$metadata`, `$version` on output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<Properties>,
    /// Reported properties (with `$metadata`, `$version` on output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<Properties>,
}

/// A configuration / automatic (edge) deployment (`/configurations/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Configuration {
    /// Configuration id (lower-case).
    pub id: String,
    /// Schema version (az CLI sends `"2.0"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// Labels; `null` when there are none, never left out: IoT Hub returns the key on every
    /// configuration (the Azure CLI's own live test checks `labels` is `None` for a deployment
    /// created without, and its `deployment update` reads `parameters["labels"]` unguarded).
    pub labels: Option<BTreeMap<String, String>>,
    /// Content (modules / module / device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<ConfigurationContent>,
    /// Content type (real hubs return `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Target condition (query WHERE clause).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_condition: Option<String>,
    /// ISO 8601 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_time_utc: Option<String>,
    /// ISO 8601 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated_time_utc: Option<String>,
    /// Priority (higher wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Server-computed metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_metrics: Option<ConfigurationMetrics>,
    /// Custom metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ConfigurationMetrics>,
    /// Etag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl Configuration {
    /// Whether this is an automatic device management module configuration
    /// (`content.moduleContent`, neither `deviceContent` nor `modulesContent`), applied to module
    /// twins.
    pub fn is_module_configuration(&self) -> bool {
        self.content.as_ref().is_some_and(|c| {
            c.module_content.is_some() && c.device_content.is_none() && c.modules_content.is_none()
        })
    }

    /// Whether this is an automatic device management device configuration
    /// (`content.deviceContent`, no `modulesContent`), applied to device twins.
    pub fn is_device_configuration(&self) -> bool {
        self.content
            .as_ref()
            .is_some_and(|c| c.device_content.is_some() && c.modules_content.is_none())
    }
}

/// `content` of a configuration; also the body of `applyConfigurationContent`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigurationContent {
    /// Edge: module id -> `{"properties.desired": {...}}` (or flattened keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules_content: Option<Map<String, Value>>,
    /// ADM module configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_content: Option<Map<String, Value>>,
    /// ADM device configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_content: Option<Map<String, Value>>,
}

/// `systemMetrics` / `metrics`: `{results: {name: n}, queries: {name: query}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigurationMetrics {
    /// Metric name -> count.
    pub results: Map<String, Value>,
    /// Metric name -> query text.
    pub queries: Map<String, Value>,
}

/// The system metric counting the edge devices an IoT Edge deployment's target condition matches.
pub const TARGETED_COUNT: &str = "targetedCount";
/// The system metric counting the edge devices an IoT Edge deployment is applied to.
pub const APPLIED_COUNT: &str = "appliedCount";
/// The system metric counting the edge devices whose `$edgeAgent` reports the applied deployment
/// done (`lastDesiredStatus.code` 200 at the desired `$version`).
pub const REPORTED_SUCCESSFUL_COUNT: &str = "reportedSuccessfulCount";
/// The system metric counting the edge devices whose `$edgeAgent` reports the applied deployment
/// failed (another `lastDesiredStatus.code` at the desired `$version`).
pub const REPORTED_FAILED_COUNT: &str = "reportedFailedCount";

/// The condition of IoT Hub's reported-count queries that `$edgeAgent` has acted on the desired
/// properties it was last given.
pub const AGENT_AT_DESIRED_VERSION: &str =
    "properties.desired.$version = properties.reported.lastDesiredVersion";
/// The condition of `reportedSuccessfulCount` on top of [`AGENT_AT_DESIRED_VERSION`].
pub const AGENT_REPORTS_SUCCESS: &str = "properties.reported.lastDesiredStatus.code = 200";
/// The condition of `reportedFailedCount` on top of [`AGENT_AT_DESIRED_VERSION`].
pub const AGENT_REPORTS_FAILURE: &str = "properties.reported.lastDesiredStatus.code != 200";

/// IoT Hub's `systemMetrics.queries` of an IoT Edge deployment, keyed by the metric names of
/// `systemMetrics.results`, which `az iot edge deployment show-metric --mt system -m appliedCount`
/// looks up and runs through the query API (azure-iot-cli-extension
/// `azext_iot/operations/hub.py`, `iot_hub_configuration_metric_show`; Azure PowerShell's
/// `Invoke-AzIotHubDeploymentMetricsQuery` maps "applied" to `appliedCount` the same way).
/// The texts are IoT Hub's own, as a deployment read back from IoT Hub shows them and as
/// Azure/iotedge's end-to-end tests and Azure IoT Remote Monitoring's `EdgeDeviceStatus.cs` run
/// them: the deployment's status on the `$edgeAgent` module twin, and `$edgeAgent`'s
/// `lastDesiredVersion` / `lastDesiredStatus` (Azure/iotedge
/// `doc/reported_states_during_deployment.md`). The target condition is appended as IoT Hub
/// appends it, without parentheses.
pub fn edge_deployment_queries(id: &str, target_condition: &str) -> Map<String, Value> {
    let applied = format!(
        "select deviceId from devices.modules where moduleId = '$edgeAgent' and \
         configurations.[[{id}]].status = 'Applied'"
    );
    let reported = format!("{applied} and {AGENT_AT_DESIRED_VERSION}");
    [
        (
            TARGETED_COUNT,
            format!(
                "select deviceId from devices where capabilities.iotEdge = true and \
                 {target_condition}"
            ),
        ),
        (
            REPORTED_SUCCESSFUL_COUNT,
            format!("{reported} and {AGENT_REPORTS_SUCCESS}"),
        ),
        (
            REPORTED_FAILED_COUNT,
            format!("{reported} and {AGENT_REPORTS_FAILURE}"),
        ),
        (APPLIED_COUNT, applied),
    ]
    .into_iter()
    .map(|(name, query)| (name.to_owned(), Value::String(query)))
    .collect()
}

/// IoT Hub's `systemMetrics.queries` of an automatic device management (ADM) device
/// configuration (`content.deviceContent`): `targetedCount` selects the device twins the target
/// condition matches (empty when the configuration has none: it targets nothing), `appliedCount`
/// those whose own `configurations` say `Applied`. The texts are IoT Hub's, as a device
/// configuration read back from IoT Hub shows them (MicrosoftDocs/azure-docs,
/// `articles/iot-accelerators/iot-accelerators-remote-monitoring-bulk-configuration-update.md`:
/// `"appliedCount": "select deviceId from devices where configurations.[[firmware-update]].status
/// = 'Applied'"`, `"targetedCount": ""` for `"targetCondition": ""`); `az iot hub configuration
/// show-metric --mt system` runs them through the query API.
pub fn device_configuration_queries(id: &str, target_condition: &str) -> Map<String, Value> {
    let targeted = if target_condition.trim().is_empty() {
        String::new()
    } else {
        format!("select deviceId from devices where {target_condition}")
    };
    let applied =
        format!("select deviceId from devices where configurations.[[{id}]].status = 'Applied'");
    [(TARGETED_COUNT, targeted), (APPLIED_COUNT, applied)]
        .into_iter()
        .map(|(name, query)| (name.to_owned(), Value::String(query)))
        .collect()
}

/// The `systemMetrics.queries` of an ADM module configuration (`content.moduleContent`), as
/// [`device_configuration_queries`] over module twins: `targetedCount` selects the module twins
/// its target condition (`FROM devices.modules WHERE ...`) matches, `appliedCount` those whose
/// `configurations` say `Applied`. Microsoft publishes no module configuration read back from IoT
/// Hub: these texts follow the device configuration's and are not verified against IoT Hub's.
pub fn module_configuration_queries(id: &str, target_condition: &str) -> Map<String, Value> {
    let targeted = if target_condition.trim().is_empty() {
        String::new()
    } else {
        format!("select deviceId, moduleId {}", target_condition.trim())
    };
    let applied = format!(
        "select deviceId, moduleId from devices.modules where configurations.[[{id}]].status = \
         'Applied'"
    );
    [(TARGETED_COUNT, targeted), (APPLIED_COUNT, applied)]
        .into_iter()
        .map(|(name, query)| (name.to_owned(), Value::String(query)))
        .collect()
}

/// One item of a bulk registry operation (`POST /devices`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExportImportDevice {
    /// Device id.
    pub id: String,
    /// Module id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    /// Identity etag (JSON `eTag`).
    #[serde(rename = "eTag", skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// What to do with the item; IoT Hub's default is `createOrUpdate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_mode: Option<ImportMode>,
    /// `enabled` | `disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Status reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Authentication (omitted means SAS with generated keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthenticationMechanism>,
    /// Twin etag (JSON `twinETag`).
    #[serde(rename = "twinETag", skip_serializing_if = "Option::is_none")]
    pub twin_e_tag: Option<String>,
    /// Tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Properties>,
    /// Desired / reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
    /// Capabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Device scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_scope: Option<String>,
    /// Parent scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_scopes: Option<Vec<String>>,
}

/// The `importMode` of a bulk item (the service SDKs' `ImportMode`). IoT Hub reads it without
/// regard to case: Node's `azure-iothub` sends `Update` and `DeleteIfMatchETag`, Python's
/// `azure-iot-hub` and the REST reference `create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// Create, or overwrite an existing identity whatever its etag.
    CreateOrUpdate,
    /// Create; an existing identity is an error.
    Create,
    /// Overwrite an existing identity whatever its etag; a missing one is an error.
    Update,
    /// Overwrite an existing identity whose etag is `eTag`.
    UpdateIfMatchETag,
    /// Create, or overwrite an existing identity whose etag is `eTag`.
    CreateOrUpdateIfMatchETag,
    /// Delete whatever the etag.
    Delete,
    /// Delete if the etag is `eTag`.
    DeleteIfMatchETag,
    /// Merge `tags` and desired properties into the existing twin.
    UpdateTwin,
    /// Merge into the existing twin if its etag is `twinETag`.
    UpdateTwinIfMatchETag,
}

impl ImportMode {
    /// Every mode, in the service SDKs' order.
    pub const ALL: [ImportMode; 9] = [
        ImportMode::CreateOrUpdate,
        ImportMode::Create,
        ImportMode::Update,
        ImportMode::UpdateIfMatchETag,
        ImportMode::CreateOrUpdateIfMatchETag,
        ImportMode::Delete,
        ImportMode::DeleteIfMatchETag,
        ImportMode::UpdateTwin,
        ImportMode::UpdateTwinIfMatchETag,
    ];

    /// The wire name, as the REST reference writes it.
    pub fn name(self) -> &'static str {
        match self {
            ImportMode::CreateOrUpdate => "createOrUpdate",
            ImportMode::Create => "create",
            ImportMode::Update => "update",
            ImportMode::UpdateIfMatchETag => "updateIfMatchETag",
            ImportMode::CreateOrUpdateIfMatchETag => "createOrUpdateIfMatchETag",
            ImportMode::Delete => "delete",
            ImportMode::DeleteIfMatchETag => "deleteIfMatchETag",
            ImportMode::UpdateTwin => "updateTwin",
            ImportMode::UpdateTwinIfMatchETag => "updateTwinIfMatchETag",
        }
    }

    /// The mode named `name` in any case.
    pub fn parse(name: &str) -> Option<ImportMode> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Whether the item's `eTag` must match the identity's.
    pub fn checks_etag(self) -> bool {
        matches!(
            self,
            ImportMode::UpdateIfMatchETag
                | ImportMode::CreateOrUpdateIfMatchETag
                | ImportMode::DeleteIfMatchETag
        )
    }
}

impl std::fmt::Display for ImportMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ImportMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ImportMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ImportMode::parse(&name).ok_or_else(|| {
            let known: Vec<&str> = ImportMode::ALL.iter().map(|m| m.name()).collect();
            serde::de::Error::custom(format!(
                "importMode '{name}' is not one of {}",
                known.join(", ")
            ))
        })
    }
}

/// Result of a bulk registry operation (200 when successful, 400 otherwise).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BulkRegistryOperationResult {
    /// True when every item succeeded.
    pub is_successful: bool,
    /// Per-item errors.
    pub errors: Vec<DeviceRegistryOperationError>,
    /// Per-item warnings.
    pub warnings: Vec<DeviceRegistryOperationWarning>,
}

/// One failed bulk item; `moduleId` and `operation` serialize as `null` when `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceRegistryOperationError {
    /// Device id.
    pub device_id: String,
    /// Error code name, e.g. `DeviceAlreadyExists`.
    pub error_code: String,
    /// Error text.
    pub error_status: String,
    /// Module id.
    pub module_id: Option<String>,
    /// Operation.
    pub operation: Option<String>,
}

/// One bulk warning, e.g. `DeviceRegisteredWithoutTwin`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceRegistryOperationWarning {
    /// Device id.
    pub device_id: String,
    /// Warning code name.
    pub warning_code: String,
    /// Warning text.
    pub warning_status: String,
}

/// Direct method invocation body (`POST /twins/{id}[/modules/{mid}]/methods`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CloudToDeviceMethod {
    /// Method name.
    pub method_name: String,
    /// Any JSON (the Python SDK sends `""` when None).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// 5–300 s, default 30.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "seconds")]
    pub response_timeout_in_seconds: Option<u64>,
    /// 0–300 s, default 0.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "seconds")]
    pub connect_timeout_in_seconds: Option<u64>,
}

/// A number of seconds as IoT Hub reads it in a method invocation: a JSON number, or a string of
/// digits — the Azure CLI's `az iot hub invoke-device-method` sends `"responseTimeoutInSeconds":
/// "30"` and `"connectTimeoutInSeconds": "30"` (its `--timeout` default is the string `"30"`,
/// azure-iot-cli-extension `iot_device_method`), which IoT Hub accepts.
fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    match Option::<Seconds>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Seconds::Number(n)) => Ok(Some(n)),
        // Digits only: no sign, no spaces, which nothing shows IoT Hub to take.
        Some(Seconds::Text(text)) => text
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse().ok())
            .flatten()
            .map(Some)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid number of seconds {text:?}: expected a whole number"
                ))
            }),
    }
}

/// Direct method result `{"status": int, "payload": any}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CloudToDeviceMethodResult {
    /// Status returned by the device.
    pub status: i32,
    /// Payload returned by the device.
    pub payload: Value,
}

/// Query body `{"query": "..."}` (`POST /devices/query`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QuerySpecification {
    /// The query text.
    pub query: String,
}

/// `GET /statistics/devices` body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegistryStatistics {
    /// All devices.
    pub total_device_count: i64,
    /// Enabled devices.
    pub enabled_device_count: i64,
    /// Disabled devices.
    pub disabled_device_count: i64,
}

/// `GET /statistics/service` body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceStatistics {
    /// Connected devices.
    pub connected_device_count: i64,
}

/// `POST /configurations/testQueries` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigurationQueriesTestInput {
    /// Target condition to validate.
    pub target_condition: String,
    /// Custom metric queries to validate.
    pub custom_metric_queries: BTreeMap<String, String>,
}

/// `POST /configurations/testQueries` response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigurationQueriesTestResponse {
    /// Error of the target condition (empty if valid).
    pub target_condition_error: String,
    /// Errors per custom metric query.
    pub custom_metric_query_errors: BTreeMap<String, String>,
}

/// IoT Hub service error codes used by the emulator (docs/spec/iothub-service-and-manifest.md A2.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400004.
    ArgumentInvalid,
    /// 400005.
    ArgumentNull,
    /// 400006.
    IotHubFormatError,
    /// 400011.
    DeviceDefinedMultipleTimes,
    /// 400013.
    BulkRegistryOperationFailure,
    /// 400048 (number from the .NET SDK enum; unconfirmed on the wire).
    InvalidConfigurationTargetCondition,
    /// 400049 (number from the .NET SDK enum; unconfirmed on the wire).
    InvalidConfigurationContent,
    /// 400050 (number from the .NET SDK enum; unconfirmed on the wire).
    CannotModifyImmutableConfigurationContent,
    /// 401002.
    IotHubUnauthorizedAccess,
    /// 401005 (number from the .NET SDK enum; unconfirmed on the wire).
    SystemModuleModifyUnauthorizedAccess,
    /// 403002.
    IotHubQuotaExceeded,
    /// 403004: a device's cloud-to-device queue holds 50 messages already.
    DeviceMaximumQueueDepthExceeded,
    /// 404001.
    DeviceNotFound,
    /// 404002 (number from the .NET SDK enum; unconfirmed on the wire).
    JobNotFound,
    /// 404010.
    ModuleNotFound,
    /// 404103.
    DeviceNotOnline,
    /// 404012 (number from the .NET SDK enum; unconfirmed on the wire).
    ConfigurationNotFound,
    /// 409001.
    DeviceAlreadyExists,
    /// 409301.
    ModuleAlreadyExistsOnDevice,
    /// 409302 (number from the .NET SDK enum; unconfirmed on the wire).
    ConfigurationAlreadyExists,
    /// 409 for a scheduled job's id already taken (name and number unconfirmed: no SDK lists
    /// one; 409 as for every other id already taken).
    JobAlreadyExists,
    /// 412001.
    PreconditionFailed,
    /// 412002: a cloud-to-device message completed, rejected or abandoned with a lock token
    /// that is not (or no longer) its lock (.NET `DeviceMessageLockLostException`; the
    /// troubleshooting page "412002 DeviceMessageLockLost").
    DeviceMessageLockLost,
    /// 413001.
    MessageTooLarge,
    /// 413002.
    TooManyDevices,
    /// 429001.
    ThrottlingException,
    /// 429004: a job created while the hub already has its most active jobs (IoT Hub's
    /// "Troubleshoot Azure IoT Hub error codes", 429xxx table: "The maximum active job count has
    /// been exceeded").
    ThrottlingMaxActiveJobCountExceeded,
    /// 500001.
    ServerError,
    /// 503001.
    ServiceUnavailable,
    /// 504101 (unconfirmed).
    GatewayTimeout,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::ArgumentInvalid,
        ErrorCode::ArgumentNull,
        ErrorCode::IotHubFormatError,
        ErrorCode::DeviceDefinedMultipleTimes,
        ErrorCode::BulkRegistryOperationFailure,
        ErrorCode::InvalidConfigurationTargetCondition,
        ErrorCode::InvalidConfigurationContent,
        ErrorCode::CannotModifyImmutableConfigurationContent,
        ErrorCode::IotHubUnauthorizedAccess,
        ErrorCode::SystemModuleModifyUnauthorizedAccess,
        ErrorCode::IotHubQuotaExceeded,
        ErrorCode::DeviceMaximumQueueDepthExceeded,
        ErrorCode::DeviceNotFound,
        ErrorCode::JobNotFound,
        ErrorCode::ModuleNotFound,
        ErrorCode::DeviceNotOnline,
        ErrorCode::ConfigurationNotFound,
        ErrorCode::DeviceAlreadyExists,
        ErrorCode::ModuleAlreadyExistsOnDevice,
        ErrorCode::ConfigurationAlreadyExists,
        ErrorCode::JobAlreadyExists,
        ErrorCode::PreconditionFailed,
        ErrorCode::DeviceMessageLockLost,
        ErrorCode::MessageTooLarge,
        ErrorCode::TooManyDevices,
        ErrorCode::ThrottlingException,
        ErrorCode::ThrottlingMaxActiveJobCountExceeded,
        ErrorCode::ServerError,
        ErrorCode::ServiceUnavailable,
        ErrorCode::GatewayTimeout,
    ];

    /// The code name, as in `ErrorCode:<Name>` and the `iothub-errorcode` header.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::ArgumentInvalid => "ArgumentInvalid",
            ErrorCode::ArgumentNull => "ArgumentNull",
            ErrorCode::IotHubFormatError => "IotHubFormatError",
            ErrorCode::DeviceDefinedMultipleTimes => "DeviceDefinedMultipleTimes",
            ErrorCode::BulkRegistryOperationFailure => "BulkRegistryOperationFailure",
            ErrorCode::InvalidConfigurationTargetCondition => "InvalidConfigurationTargetCondition",
            ErrorCode::InvalidConfigurationContent => "InvalidConfigurationContent",
            ErrorCode::CannotModifyImmutableConfigurationContent => {
                "CannotModifyImmutableConfigurationContent"
            }
            ErrorCode::IotHubUnauthorizedAccess => "IotHubUnauthorizedAccess",
            ErrorCode::SystemModuleModifyUnauthorizedAccess => {
                "SystemModuleModifyUnauthorizedAccess"
            }
            ErrorCode::IotHubQuotaExceeded => "IotHubQuotaExceeded",
            ErrorCode::DeviceMaximumQueueDepthExceeded => "DeviceMaximumQueueDepthExceeded",
            ErrorCode::DeviceNotFound => "DeviceNotFound",
            ErrorCode::JobNotFound => "JobNotFound",
            ErrorCode::ModuleNotFound => "ModuleNotFound",
            ErrorCode::DeviceNotOnline => "DeviceNotOnline",
            ErrorCode::ConfigurationNotFound => "ConfigurationNotFound",
            ErrorCode::DeviceAlreadyExists => "DeviceAlreadyExists",
            ErrorCode::ModuleAlreadyExistsOnDevice => "ModuleAlreadyExistsOnDevice",
            ErrorCode::ConfigurationAlreadyExists => "ConfigurationAlreadyExists",
            ErrorCode::JobAlreadyExists => "JobAlreadyExists",
            ErrorCode::PreconditionFailed => "PreconditionFailed",
            ErrorCode::DeviceMessageLockLost => "DeviceMessageLockLost",
            ErrorCode::MessageTooLarge => "MessageTooLarge",
            ErrorCode::TooManyDevices => "TooManyDevices",
            ErrorCode::ThrottlingException => "ThrottlingException",
            ErrorCode::ThrottlingMaxActiveJobCountExceeded => "ThrottlingMaxActiveJobCountExceeded",
            ErrorCode::ServerError => "ServerError",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
            ErrorCode::GatewayTimeout => "GatewayTimeout",
        }
    }

    /// The six-digit error number (HTTP status × 1000 + n), e.g. 404001.
    pub fn number(self) -> u32 {
        match self {
            ErrorCode::ArgumentInvalid => 400004,
            ErrorCode::ArgumentNull => 400005,
            ErrorCode::IotHubFormatError => 400006,
            ErrorCode::DeviceDefinedMultipleTimes => 400011,
            ErrorCode::BulkRegistryOperationFailure => 400013,
            ErrorCode::InvalidConfigurationTargetCondition => 400048,
            ErrorCode::InvalidConfigurationContent => 400049,
            ErrorCode::CannotModifyImmutableConfigurationContent => 400050,
            ErrorCode::IotHubUnauthorizedAccess => 401002,
            ErrorCode::SystemModuleModifyUnauthorizedAccess => 401005,
            ErrorCode::IotHubQuotaExceeded => 403002,
            ErrorCode::DeviceMaximumQueueDepthExceeded => 403004,
            ErrorCode::DeviceNotFound => 404001,
            ErrorCode::JobNotFound => 404002,
            ErrorCode::ModuleNotFound => 404010,
            ErrorCode::ConfigurationNotFound => 404012,
            ErrorCode::DeviceNotOnline => 404103,
            ErrorCode::DeviceAlreadyExists => 409001,
            ErrorCode::ModuleAlreadyExistsOnDevice => 409301,
            ErrorCode::ConfigurationAlreadyExists => 409302,
            ErrorCode::JobAlreadyExists => 409303,
            ErrorCode::PreconditionFailed => 412001,
            ErrorCode::DeviceMessageLockLost => 412002,
            ErrorCode::MessageTooLarge => 413001,
            ErrorCode::TooManyDevices => 413002,
            ErrorCode::ThrottlingException => 429001,
            ErrorCode::ThrottlingMaxActiveJobCountExceeded => 429004,
            ErrorCode::ServerError => 500001,
            ErrorCode::ServiceUnavailable => 503001,
            ErrorCode::GatewayTimeout => 504101,
        }
    }

    /// The HTTP status (the leading three digits of [`number`](Self::number)).
    pub fn http_status(self) -> u16 {
        (self.number() / 1000) as u16
    }

    /// Looks a code up by name (exact match).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Looks a code up by number.
    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.number() == number)
    }
}

/// The name of the response header carrying the error code name.
pub const ERROR_CODE_HEADER: &str = "iothub-errorcode";

/// The classic error envelope:
/// `{"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:<id>-G:0-TimeStamp:<ts>"}`.
/// `tracking_id` is 32 hex digits, `timestamp` is `MM/dd/yyyy HH:mm:ss` (UTC).
pub fn error_body(code: ErrorCode, text: &str, tracking_id: &str, timestamp: &str) -> Value {
    let mut m = Map::new();
    m.insert(
        "Message".into(),
        Value::String(format!("ErrorCode:{};{}", code.name(), text)),
    );
    m.insert(
        "ExceptionMessage".into(),
        Value::String(format!(
            "Tracking ID:{tracking_id}-G:0-TimeStamp:{timestamp}"
        )),
    );
    Value::Object(m)
}

/// The 401 body of docs/spec/iothub-service-and-manifest.md A1: `ErrorCode:IotHubUnauthorizedAccess;Unauthorized`.
pub fn unauthorized_body(tracking_id: &str, timestamp: &str) -> Value {
    error_body(
        ErrorCode::IotHubUnauthorizedAccess,
        "Unauthorized",
        tracking_id,
        timestamp,
    )
}

/// The newer envelope (used for direct-method errors): `Message` is itself a JSON string
/// `{"errorCode":<n>,"trackingId":..,"message":..,"info":{},"timestampUtc":..}`.
pub fn error_body_v2(code: ErrorCode, text: &str, tracking_id: &str, timestamp_utc: &str) -> Value {
    let mut inner = Map::new();
    inner.insert("errorCode".into(), Value::from(code.number()));
    inner.insert("trackingId".into(), Value::from(tracking_id));
    inner.insert("message".into(), Value::from(text));
    inner.insert("info".into(), Value::Object(Map::new()));
    inner.insert("timestampUtc".into(), Value::from(timestamp_utc));
    let mut m = Map::new();
    m.insert(
        "Message".into(),
        Value::String(Value::Object(inner).to_string()),
    );
    m.insert(
        "ExceptionMessage".into(),
        Value::String(format!(
            "Tracking ID:{tracking_id}-G:0-TimeStamp:{timestamp_utc}"
        )),
    );
    Value::Object(m)
}

/// An error body parsed back, for clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceErrorInfo {
    /// Error code name, if found (or derived from a known number).
    pub code: Option<String>,
    /// Error number, if present (or derived from a known name).
    pub number: Option<u32>,
    /// Human-readable message (the raw body if it was not a known envelope).
    pub message: String,
}

fn flat_error(obj: &Map<String, Value>) -> Option<ServiceErrorInfo> {
    let number = obj.get("errorCode")?.as_u64()? as u32;
    let message = obj
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some(ServiceErrorInfo {
        code: ErrorCode::from_number(number).map(|c| c.name().to_owned()),
        number: Some(number),
        message,
    })
}

/// Parses the classic envelope, the newer JSON-in-`Message` envelope, or a flat
/// `{"errorCode":n,"message":..}` body. Anything else yields the body text as the message.
pub fn parse_error_body(body: &[u8]) -> ServiceErrorInfo {
    let text = String::from_utf8_lossy(body).trim().to_owned();
    let fallback = || ServiceErrorInfo {
        code: None,
        number: None,
        message: text.clone(),
    };
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&text) else {
        return fallback();
    };
    if let Some(info) = flat_error(&obj) {
        return info;
    }
    let Some(message) = obj
        .get("Message")
        .or_else(|| obj.get("message"))
        .and_then(Value::as_str)
    else {
        return fallback();
    };
    if let Ok(Value::Object(inner)) = serde_json::from_str::<Value>(message) {
        if let Some(info) = flat_error(&inner) {
            return info;
        }
    }
    if let Some(rest) = message.strip_prefix("ErrorCode:") {
        let (name, msg) = rest.split_once(';').unwrap_or((rest, ""));
        return ServiceErrorInfo {
            code: Some(name.to_owned()),
            number: ErrorCode::from_name(name).map(ErrorCode::number),
            message: msg.to_owned(),
        };
    }
    ServiceErrorInfo {
        code: None,
        number: None,
        message: message.to_owned(),
    }
}

/// Shared access policy permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read the identity registry.
    RegistryRead,
    /// Write the identity registry.
    RegistryWrite,
    /// Service-facing endpoints (twins, methods, query, C2D).
    ServiceConnect,
    /// Device-facing endpoints.
    DeviceConnect,
}

impl Permission {
    /// The permission name, e.g. `RegistryRead`.
    pub fn name(self) -> &'static str {
        match self {
            Permission::RegistryRead => "RegistryRead",
            Permission::RegistryWrite => "RegistryWrite",
            Permission::ServiceConnect => "ServiceConnect",
            Permission::DeviceConnect => "DeviceConnect",
        }
    }
}

const OWNER: &[Permission] = &[
    Permission::RegistryRead,
    Permission::RegistryWrite,
    Permission::ServiceConnect,
    Permission::DeviceConnect,
];

/// The default shared access policies of a hub and their permissions (docs/spec/iothub-service-and-manifest.md A1):
/// `iothubowner`, `service`, `device`, `registryRead`, `registryReadWrite`.
pub fn default_policies() -> Vec<(&'static str, &'static [Permission])> {
    vec![
        ("iothubowner", OWNER),
        ("service", &[Permission::ServiceConnect]),
        ("device", &[Permission::DeviceConnect]),
        ("registryRead", &[Permission::RegistryRead]),
        (
            "registryReadWrite",
            &[Permission::RegistryRead, Permission::RegistryWrite],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_device_as_the_python_sdk_sends_it_deserializes() {
        let body = r#"{"deviceId": "edge1", "status": "enabled", "authentication": {"symmetricKey": {}, "type": "sas"}, "capabilities": {"iotEdge": true}}"#;
        let d: Device = serde_json::from_str(body).unwrap();
        assert_eq!(d.device_id, "edge1");
        assert_eq!(d.status.as_deref(), Some("enabled"));
        let auth = d.authentication.unwrap();
        assert_eq!(auth.auth_type.as_deref(), Some("sas"));
        assert_eq!(auth.symmetric_key, Some(SymmetricKey::default()));
        assert_eq!(d.capabilities, Some(DeviceCapabilities { iot_edge: true }));
    }

    #[test]
    fn empty_string_keys_deserialize_as_empty_secrets() {
        let body = r#"{"deviceId":"d","authentication":{"symmetricKey":{"primaryKey":"","secondaryKey":""},"type":"sas"}}"#;
        let d: Device = serde_json::from_str(body).unwrap();
        let key = d.authentication.unwrap().symmetric_key.unwrap();
        assert_eq!(key.primary_key.unwrap().expose(), "");
    }

    #[test]
    fn a_full_device_response_round_trips() {
        let body = json!({"deviceId": "edge1", "generationId": "638412345678901234", "etag": "MTIzNDU2Nzg5",
            "connectionState": "Disconnected", "status": "enabled", "statusReason": "why",
            "connectionStateUpdatedTime": "0001-01-01T00:00:00", "statusUpdatedTime": "0001-01-01T00:00:00",
            "lastActivityTime": "0001-01-01T00:00:00", "cloudToDeviceMessageCount": 0,
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"},
                               "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}},
            "capabilities": {"iotEdge": true}, "deviceScope": "ms-azure-iot-edge://edge1-638412345678901234", "parentScopes": []});
        let d: Device = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(serde_json::to_value(&d).unwrap(), body);
        // keys are redacted in Debug
        assert!(!format!("{d:?}").contains("cHJpbWFyeQ=="));
    }

    #[test]
    fn missing_keys_and_thumbprints_serialize_as_null() {
        let v = serde_json::to_value(AuthenticationMechanism {
            auth_type: Some("sas".into()),
            symmetric_key: Some(SymmetricKey::default()),
            x509_thumbprint: Some(X509Thumbprint::default()),
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "sas", "symmetricKey": {"primaryKey": null, "secondaryKey": null},
                   "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}})
        );
    }

    #[test]
    fn a_module_twin_as_in_the_spec_deserializes() {
        let body = json!({"deviceId": "edge1", "moduleId": "$edgeAgent", "etag": "AAAAAAAAAAE=", "deviceEtag": "MTIzNDU2Nzg5",
            "status": "enabled", "statusUpdateTime": "0001-01-01T00:00:00Z", "connectionState": "Disconnected",
            "lastActivityTime": "0001-01-01T00:00:00Z", "cloudToDeviceMessageCount": 0, "authenticationType": "none",
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}, "modelId": "", "version": 1,
            "properties": {"desired": {"$metadata": {"$lastUpdated": "2026-01-01T00:00:00.0000000Z"}, "$version": 1},
                           "reported": {"$metadata": {"$lastUpdated": "2026-01-01T00:00:00.0000000Z"}, "$version": 1}}});
        let t: Twin = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(t.module_id.as_deref(), Some("$edgeAgent"));
        assert_eq!(t.version, Some(1));
        assert_eq!(serde_json::to_value(&t).unwrap(), body);
    }

    #[test]
    fn a_configuration_and_bulk_items_use_the_wire_names() {
        let cfg: Configuration = serde_json::from_value(json!({"id": "prod-base", "schemaVersion": "2.0",
            "labels": {"app": "x"}, "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {}}}},
            "contentType": null, "targetCondition": "tags.environment='prod'", "priority": 10,
            "metrics": {"results": {}, "queries": {"mymetric": "SELECT deviceId FROM devices"}}, "etag": "MQ=="}))
        .unwrap();
        assert_eq!(cfg.priority, Some(10));
        assert!(cfg
            .content
            .unwrap()
            .modules_content
            .unwrap()
            .contains_key("$edgeAgent"));
        let item = ExportImportDevice {
            id: "d1".into(),
            e_tag: Some("x".into()),
            twin_e_tag: Some("y".into()),
            import_mode: Some(ImportMode::Create),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&item).unwrap(),
            json!({"id": "d1", "eTag": "x", "importMode": "create", "twinETag": "y"})
        );
    }

    #[test]
    fn import_modes_are_read_in_any_case_and_written_as_the_rest_reference_does() {
        for (sent, mode) in [
            ("create", ImportMode::Create),
            ("Update", ImportMode::Update),
            ("DeleteIfMatchETag", ImportMode::DeleteIfMatchETag),
            (
                "createorupdateifmatchetag",
                ImportMode::CreateOrUpdateIfMatchETag,
            ),
        ] {
            let item: ExportImportDevice =
                serde_json::from_value(json!({"id": "d", "importMode": sent})).unwrap();
            assert_eq!(item.import_mode, Some(mode));
        }
        assert_eq!(
            serde_json::to_value(ImportMode::UpdateTwinIfMatchETag).unwrap(),
            json!("updateTwinIfMatchETag")
        );
        let error = serde_json::from_value::<ExportImportDevice>(
            json!({"id": "d", "importMode": "upsert"}),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("importMode 'upsert' is not one of create"),
            "{error}"
        );
    }

    #[test]
    fn a_bulk_failure_serializes_with_null_module_and_operation() {
        let r = BulkRegistryOperationResult {
            is_successful: false,
            errors: vec![DeviceRegistryOperationError {
                device_id: "d1".into(),
                error_code: "DeviceAlreadyExists".into(),
                error_status: "A device with ID 'd1' is already registered.".into(),
                module_id: None,
                operation: None,
            }],
            warnings: vec![],
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"isSuccessful": false, "errors": [{"deviceId": "d1", "errorCode": "DeviceAlreadyExists",
                "errorStatus": "A device with ID 'd1' is already registered.", "moduleId": null, "operation": null}], "warnings": []})
        );
    }

    #[test]
    fn method_timeouts_are_numbers_or_strings_of_digits_as_the_azure_cli_sends_them() {
        let m: CloudToDeviceMethod = serde_json::from_str(
            r#"{"methodName":"m","payload":null,"responseTimeoutInSeconds":"30","connectTimeoutInSeconds":"30"}"#,
        )
        .unwrap();
        assert_eq!(
            (m.response_timeout_in_seconds, m.connect_timeout_in_seconds),
            (Some(30), Some(30))
        );
        let m: CloudToDeviceMethod =
            serde_json::from_str(r#"{"methodName":"m","responseTimeoutInSeconds":null}"#).unwrap();
        assert_eq!(m.response_timeout_in_seconds, None);
        for bad in [
            r#""thirty""#,
            r#""-5""#,
            r#""+5""#,
            r#"" 5 ""#,
            r#""""#,
            "-5",
            "1.5",
            "true",
        ] {
            let body = format!(r#"{{"methodName":"m","responseTimeoutInSeconds":{bad}}}"#);
            assert!(
                serde_json::from_str::<CloudToDeviceMethod>(&body).is_err(),
                "{body} was accepted"
            );
        }
    }

    #[test]
    fn a_direct_method_body_deserializes() {
        let m: CloudToDeviceMethod = serde_json::from_str(
            r#"{"methodName":"reboot","payload":"","responseTimeoutInSeconds":30}"#,
        )
        .unwrap();
        assert_eq!(m.method_name, "reboot");
        assert_eq!(m.payload, Some(json!("")));
        assert_eq!(m.response_timeout_in_seconds, Some(30));
        assert_eq!(m.connect_timeout_in_seconds, None);
        let r = CloudToDeviceMethodResult {
            status: 200,
            payload: json!({"ok": true}),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":200,"payload":{"ok":true}}"#
        );
    }

    #[test]
    fn the_error_body_has_the_classic_format() {
        let v = error_body(
            ErrorCode::DeviceNotFound,
            "edge9",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "01/02/2026 03:04:05",
        );
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"Message":"ErrorCode:DeviceNotFound;edge9","ExceptionMessage":"Tracking ID:0f1e2d3c4b5a69788796a5b4c3d2e1f0-G:0-TimeStamp:01/02/2026 03:04:05"}"#
        );
        let u = unauthorized_body("ab", "ts");
        assert_eq!(
            u["Message"],
            "ErrorCode:IotHubUnauthorizedAccess;Unauthorized"
        );
    }

    #[test]
    fn error_codes_have_consistent_numbers_statuses_and_names() {
        assert_eq!(ErrorCode::DeviceNotFound.number(), 404001);
        assert_eq!(ErrorCode::DeviceNotFound.http_status(), 404);
        assert_eq!(ErrorCode::IotHubUnauthorizedAccess.http_status(), 401);
        assert_eq!(ErrorCode::GatewayTimeout.http_status(), 504);
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(c.name()), Some(c));
            assert_eq!(ErrorCode::from_number(c.number()), Some(c));
        }
    }

    #[test]
    fn both_error_envelopes_parse_back() {
        let classic = error_body(
            ErrorCode::DeviceAlreadyExists,
            "A device with ID 'd1' is already registered.",
            "t",
            "ts",
        );
        let info = parse_error_body(classic.to_string().as_bytes());
        assert_eq!(info.code.as_deref(), Some("DeviceAlreadyExists"));
        assert_eq!(info.number, Some(409001));
        assert_eq!(info.message, "A device with ID 'd1' is already registered.");

        let v2 = error_body_v2(
            ErrorCode::DeviceNotOnline,
            "Timed out waiting for device to connect.",
            "t",
            "ts",
        );
        let info = parse_error_body(v2.to_string().as_bytes());
        assert_eq!(info.code.as_deref(), Some("DeviceNotOnline"));
        assert_eq!(info.number, Some(404103));
        assert_eq!(info.message, "Timed out waiting for device to connect.");

        let flat = br#"{"errorCode":409301,"message":"Device d in IotHub h already contains Module m.","trackingId":"x","timestampUtc":"y","info":null}"#;
        let info = parse_error_body(flat);
        assert_eq!(info.code.as_deref(), Some("ModuleAlreadyExistsOnDevice"));
        assert_eq!(info.number, Some(409301));

        let info = parse_error_body(b"not json");
        assert_eq!(
            info,
            ServiceErrorInfo {
                code: None,
                number: None,
                message: "not json".into()
            }
        );
    }

    #[test]
    fn the_default_policies_match_the_documentation() {
        let p = default_policies();
        let names: Vec<_> = p.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "iothubowner",
                "service",
                "device",
                "registryRead",
                "registryReadWrite"
            ]
        );
        assert_eq!(p[0].1.len(), 4);
        assert_eq!(p[1].1, &[Permission::ServiceConnect]);
        assert_eq!(
            p[4].1,
            &[Permission::RegistryRead, Permission::RegistryWrite]
        );
        assert_eq!(Permission::DeviceConnect.name(), "DeviceConnect");
    }
}
