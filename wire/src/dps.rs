//! The Device Provisioning Service (DPS) wire contract: the service REST models (individual
//! enrollments, enrollment groups, registration states, bulk operations, queries) as Microsoft's
//! DPS REST reference (api-version 2021-10-01) and `azure-iot-provisioning-service` send them;
//! the device side's MQTT username and topics (Microsoft Learn, "Communicate with DPS using the
//! MQTT protocol"); group-derived keys; and the checks an enrollment must pass. Pure: the caller
//! gives the time and the keys it generated.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sas::{self, SasError};
use crate::twin::Properties;
use crate::Secret;

/// The api-version the device SDKs put in the MQTT username and HTTPS query (2019-03-31 is the
/// one Microsoft's MQTT page shows; the Python SDK sends 2019-03-31, Node 2019-03-31).
pub const DEVICE_API_VERSION: &str = "2019-03-31";

/// The `skn` of a device's registration token signed with a group-derived key.
pub const REGISTRATION_KEY_NAME: &str = "registration";

/// The shared access policy that a DPS connection string names.
pub const OWNER_POLICY: &str = "provisioningserviceowner";

/// Most enrollments in one bulk operation ("Bulk device enrollment operation with maximum of 10
/// enrollments", DPS REST reference, Individual Enrollment - Run Bulk Operation).
pub const MAX_BULK: usize = 10;

/// The `retry-after` the service asks a polling device to wait, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A DPS error: its HTTP status and the six-digit `errorCode` of the body
/// `{"errorCode":…,"trackingId":…,"message":…,"timestampUtc":…}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DpsError {
    /// `errorCode`: the HTTP status × 1000 + n.
    pub code: u32,
    /// Text for the caller; never a key or token.
    pub message: String,
}

impl DpsError {
    /// 400004: the request or a field of it is not valid (names what is wrong).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400004, message)
    }

    /// 401002: the token does not verify, or names no enrollment of this service.
    pub fn unauthorized() -> Self {
        Self::new(401002, "Unauthorized")
    }

    /// 404201: no individual enrollment or enrollment group with this id.
    pub fn enrollment_not_found(id: &str) -> Self {
        Self::new(404201, format!("Enrollment '{id}' not found"))
    }

    /// 404202: no registration state with this id.
    pub fn registration_not_found(id: &str) -> Self {
        Self::new(404202, format!("Registration '{id}' not found"))
    }

    /// 412002: the `If-Match` etag is not the record's.
    pub fn precondition_failed() -> Self {
        Self::new(
            412002,
            "Precondition failed: the If-Match etag does not match",
        )
    }

    /// 409203: bulk `create` of an enrollment that exists.
    pub fn conflict(id: &str) -> Self {
        Self::new(409203, format!("Enrollment '{id}' already exists"))
    }

    /// An error with this code and message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status (the code's leading three digits).
    pub fn http_status(&self) -> u16 {
        u16::try_from(self.code / 1000).unwrap_or(500)
    }

    /// The error body, with the request's tracking id and the time (ISO 8601).
    pub fn body(&self, tracking_id: &str, timestamp_utc: &str) -> Value {
        serde_json::json!({
            "errorCode": self.code,
            "trackingId": tracking_id,
            "message": self.message,
            "timestampUtc": timestamp_utc,
        })
    }
}

/// `attestation.symmetricKey`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    /// Primary key (base64); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<Secret>,
    /// Secondary key (base64); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<Secret>,
}

/// `attestation.x509` (DPS REST reference, `X509Attestation`): an individual enrollment's
/// `clientCertificates` (the device's own certificate), a group's `signingCertificates` (a root
/// or intermediate CA its devices chain to), or `caReferences` (names of certificates uploaded
/// to the service through Azure Resource Manager; refused here, see docs/dps.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Attestation {
    /// An individual enrollment's device certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<X509Certificates>,
    /// An enrollment group's signing (CA) certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<X509Certificates>,
    /// Certificates uploaded to the service, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_references: Option<Value>,
}

/// `X509Certificates`: a primary and an optional secondary certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Certificates {
    /// The primary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<X509CertificateWithInfo>,
    /// The secondary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509CertificateWithInfo>,
}

impl X509Certificates {
    /// The slots, primary first.
    pub fn slots(&self) -> impl Iterator<Item = &X509CertificateWithInfo> {
        self.primary.iter().chain(self.secondary.iter())
    }
}

/// `X509CertificateWithInfo`: the certificate as uploaded (PEM, or base64 DER) and what the
/// service read from it. The service shows `info` only; `certificate` goes in, never out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateWithInfo {
    /// The certificate as uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// What the service read from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<X509CertificateInfo>,
}

/// `X509CertificateInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateInfo {
    /// The subject's distinguished name (`CN=…, O=…`).
    pub subject_name: String,
    /// SHA-1 of the DER, upper-case hex.
    pub sha1_thumbprint: String,
    /// SHA-256 of the DER, upper-case hex.
    pub sha256_thumbprint: String,
    /// The issuer's distinguished name.
    pub issuer_name: String,
    /// The start of the validity period (ISO 8601).
    pub not_before_utc: String,
    /// The end of the validity period (ISO 8601).
    pub not_after_utc: String,
    /// The serial number, upper-case hex.
    pub serial_number: String,
    /// The X.509 version (3 for today's certificates).
    pub version: u8,
}

impl X509Attestation {
    /// The attestation as the service shows it: every `certificate` left out, its `info` kept.
    pub fn without_certificates(&mut self) {
        let sections = [
            &mut self.client_certificates,
            &mut self.signing_certificates,
        ];
        for certificates in sections.into_iter().flatten() {
            for slot in [&mut certificates.primary, &mut certificates.secondary]
                .into_iter()
                .flatten()
            {
                slot.certificate = None;
            }
        }
    }
}

/// `attestation`: symmetric keys or X.509 certificates; `tpm` is refused (not served yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationMechanism {
    /// `symmetricKey` | `x509` | `tpm`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The keys of a `symmetricKey` attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
    /// The certificates of an `x509` attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Attestation>,
    /// A `tpm` attestation (kept as sent; refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
}

impl AttestationMechanism {
    /// The primary and secondary keys of a symmetric-key attestation.
    pub fn keys(&self) -> Option<(&Secret, &Secret)> {
        let keys = self.symmetric_key.as_ref()?;
        Some((keys.primary_key.as_ref()?, keys.secondary_key.as_ref()?))
    }
}

/// `reprovisionPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Whether a device that registers again is assigned again (default true).
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    /// Whether its twin and identity move with it (default true); false resets the twin to the
    /// enrollment's `initialTwin`.
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// The enrollment fields individual enrollments and groups share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentCommon {
    /// How devices prove who they are.
    #[serde(default)]
    pub attestation: AttestationMechanism,
    /// `{"iotEdge": bool}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Value>,
    /// The hub to assign to (static allocation, legacy field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// `{"tags": {...}, "properties": {"desired": {...}}}` applied at the first registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<Value>,
    /// The record's etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `enabled` (default) | `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<String>,
    /// What a device that registers again gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// When the record was created (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// When the record last changed (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// `hashed` | `geoLatency` | `static` | `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<String>,
    /// The linked hubs to allocate over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<String>>,
    /// The webhook of `custom` allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<Value>,
    /// Device information (kept as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional_device_information: Option<Value>,
}

/// An individual enrollment (`/enrollments/{registrationId}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// The registration id, which is also the device id unless `deviceId` says otherwise.
    #[serde(default)]
    pub registration_id: String,
    /// The device id to create in the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The device's registration state (read only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
    /// The shared fields.
    #[serde(flatten)]
    pub common: EnrollmentCommon,
}

/// An enrollment group (`/enrollmentGroups/{enrollmentGroupId}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// The group's id.
    #[serde(default)]
    pub enrollment_group_id: String,
    /// The shared fields.
    #[serde(flatten)]
    pub common: EnrollmentCommon,
}

/// A device's registration state (`/registrations/{registrationId}`, and the
/// `registrationState` of an operation's status).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationState {
    /// The registration id.
    pub registration_id: String,
    /// When the device first registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// The hub the device was assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// Its device id there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `unassigned` | `assigning` | `assigned` | `failed` | `disabled`.
    pub status: String,
    /// `initialAssignment` | `deviceDataMigrated` | `deviceDataReset` |
    /// `reprovisionedToInitialAssignment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// Why a registration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Why a registration failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// The state's etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// A custom allocation's payload for the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// What a device registers with (`PUT …/register`, `iotdps-register`): its registration id and
/// an optional payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// The registration id (must be the one the token names, when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// Data for a custom allocation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// `RegistrationOperationStatus`: the answer to a registration and to its polling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    /// The operation's id, to poll with.
    pub operation_id: String,
    /// `assigning` | `assigned` | `failed` | `disabled`.
    pub status: String,
    /// The result, once the operation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
}

/// A bulk enrollment operation (`POST /enrollments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperation {
    /// The enrollments.
    pub enrollments: Vec<IndividualEnrollment>,
    /// What to do with each.
    pub mode: BulkMode,
}

/// `mode` of a bulk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BulkMode {
    /// Create each; an existing one is an error.
    Create,
    /// Create or replace each.
    Update,
    /// Replace each whose `etag` matches.
    UpdateIfMatchETag,
    /// Delete each.
    Delete,
}

/// One failed item of a bulk operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationError {
    /// The enrollment's registration id.
    pub registration_id: String,
    /// Its error code.
    pub error_code: u32,
    /// Why, in words.
    pub error_status: String,
}

/// The answer to a bulk operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationResult {
    /// Whether every item succeeded.
    pub is_successful: bool,
    /// The items that did not.
    pub errors: Vec<BulkEnrollmentOperationError>,
}

/// A query (`POST …/query`). DPS's queries select every record (`*`); the text is not
/// evaluated: the Azure CLI (IoT extension 0.25.0) sends the Python repr of its query object,
/// `{'additional_properties': {}, 'query': 'SELECT *'}`, as the text, and lists enrollments on
/// DPS with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuerySpecification {
    /// The query text.
    #[serde(default)]
    pub query: String,
}

/// Checks a registration id as DPS does ("Registration ID": up to 128 characters of letters,
/// digits and `- . _ :`, the last one a letter, digit or `-`; Microsoft Learn, DPS concepts).
pub fn check_registration_id(id: &str) -> Result<(), DpsError> {
    let bad = |why: &str| DpsError::invalid(format!("registration id '{id}' is not valid: {why}"));
    if id.is_empty() || id.len() > 128 {
        return Err(bad("it must be 1 to 128 characters long"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._:".contains(*c)))
    {
        return Err(bad(&format!(
            "'{c}' is not a letter, digit, '-', '.', '_' or ':'"
        )));
    }
    if id.ends_with(['.', '_', ':']) {
        return Err(bad("it must end with a letter, digit or '-'"));
    }
    Ok(())
}

/// A device's key derived from its group's key: `Base64(HMAC-SHA256(Base64Decode(groupKey),
/// registrationId))` (Microsoft Learn, "Derive a device key").
pub fn derive_device_key(group_key: &Secret, registration_id: &str) -> Result<Secret, SasError> {
    let key = sas::decode_key(group_key.expose())?;
    Ok(Secret::new(sas::sign_string(&key, registration_id)))
}

/// The SAS resource of a device's registration token: `{idScope}/registrations/{registrationId}`.
pub fn registration_resource(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// A DPS MQTT CONNECT username: `{idScope}/registrations/{registrationId}/api-version=…`
/// (more `&key=value` after it, such as the SDKs' `ClientVersion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    /// The id scope.
    pub id_scope: String,
    /// The registration id.
    pub registration_id: String,
}

/// Parses a DPS username; `None` if it is not one (then it is an IoT Hub username).
pub fn parse_username(username: &str) -> Option<Username> {
    let mut parts = username.splitn(4, '/');
    let (scope, literal, id, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (literal == "registrations" && rest.starts_with("api-version=") && !scope.is_empty()).then(
        || Username {
            id_scope: scope.to_owned(),
            registration_id: id.to_owned(),
        },
    )
}

/// What a device publishes to DPS over MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `$dps/registrations/PUT/iotdps-register/?$rid={rid}`.
    Register {
        /// The request id, echoed in the response topic.
        rid: String,
    },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}`.
    OperationStatus {
        /// The request id.
        rid: String,
        /// The operation to report on.
        operation_id: String,
    },
}

/// The topic filter a device subscribes to for DPS responses.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

/// Parses a topic a device publishes to DPS; `None` if it is not a DPS request with a `$rid`.
pub fn parse_request(topic: &str) -> Option<Request> {
    let (path, query) = topic.split_once("/?")?;
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let rid = params.get("$rid")?.to_string();
    match path {
        "$dps/registrations/PUT/iotdps-register" => Some(Request::Register { rid }),
        "$dps/registrations/GET/iotdps-get-operationstatus" => Some(Request::OperationStatus {
            rid,
            operation_id: params.get("operationId")?.to_string(),
        }),
        _ => None,
    }
}

/// The response topic: `$dps/registrations/res/{status}/?$rid={rid}`, with
/// `&retry-after={secs}` when the device should poll again.
pub fn response_topic(status: u16, rid: &str, retry_after: Option<u64>) -> String {
    match retry_after {
        Some(secs) => format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={secs}"),
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

/// Device-side HTTPS paths: `/{idScope}/registrations/{id}/register` and
/// `/{idScope}/registrations/{id}/operations/{operationId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePath {
    /// `PUT …/register`.
    Register {
        /// The id scope.
        id_scope: String,
        /// The registration id.
        registration_id: String,
    },
    /// `GET …/operations/{operationId}`.
    Operation {
        /// The id scope.
        id_scope: String,
        /// The registration id.
        registration_id: String,
        /// The operation.
        operation_id: String,
    },
}

/// Parses decoded path segments as a device-side DPS path.
pub fn parse_device_path(segments: &[String]) -> Option<DevicePath> {
    match segments {
        [scope, r, id, register] if r == "registrations" && register == "register" => {
            Some(DevicePath::Register {
                id_scope: scope.clone(),
                registration_id: id.clone(),
            })
        }
        [scope, r, id, operations, op] if r == "registrations" && operations == "operations" => {
            Some(DevicePath::Operation {
                id_scope: scope.clone(),
                registration_id: id.clone(),
                operation_id: op.clone(),
            })
        }
        _ => None,
    }
}

/// Whether an `If-Match` value names `etag` (`*` names any; quotes and `W/` are ignored, as the
/// Node service SDK sends the record's etag as it got it).
pub fn if_match_accepts(if_match: &str, etag: &str) -> bool {
    let value = if_match.trim();
    let value = value.strip_prefix("W/").unwrap_or(value).trim_matches('"');
    value == "*" || value == etag.trim_matches('"')
}

/// Checks the fields an enrollment's `common` part must have right and fills what the service
/// generates: keys when absent (the `existing` record's, or new ones `new_key` makes),
/// `provisioningStatus` `enabled`, the etag (`etag`), the creation time (kept from `existing`)
/// and `now` as the last update. `hub` is the only hub allocations may name.
pub fn prepare(
    common: &mut EnrollmentCommon,
    existing: Option<&EnrollmentCommon>,
    hub: &str,
    now: &str,
    etag: String,
    mut new_key: impl FnMut() -> Secret,
) -> Result<(), DpsError> {
    let attestation = &mut common.attestation;
    match attestation.kind.as_str() {
        "symmetricKey" => {
            let kept = existing
                .and_then(|e| e.attestation.symmetric_key.clone())
                .unwrap_or_default();
            let keys = attestation
                .symmetric_key
                .get_or_insert_with(Default::default);
            for (key, kept) in [
                (&mut keys.primary_key, kept.primary_key),
                (&mut keys.secondary_key, kept.secondary_key),
            ] {
                match key {
                    Some(k) if sas::decode_key(k.expose()).is_err() => {
                        return Err(DpsError::invalid(
                            "attestation.symmetricKey: a key is not valid base64",
                        ))
                    }
                    Some(_) => {}
                    // a record read back without its keys (GET hides them) keeps them
                    None => *key = Some(kept.unwrap_or_else(&mut new_key)),
                }
            }
        }
        // the certificates are read, and checked against the record's kind, by the service
        "x509" if attestation.x509.is_none() => {
            return Err(DpsError::invalid(
                "attestation.x509 is missing for attestation type 'x509'",
            ))
        }
        "x509" => {}
        "tpm" => {
            return Err(DpsError::invalid(
                "attestation type 'tpm' is not served by this local DPS yet (symmetricKey and x509 are)",
            ))
        }
        "" => return Err(DpsError::invalid("attestation.type is missing")),
        other => {
            return Err(DpsError::invalid(format!(
                "attestation type '{other}' is not one of symmetricKey, x509, tpm"
            )))
        }
    }
    match common.provisioning_status.as_deref() {
        None => common.provisioning_status = Some("enabled".into()),
        Some("enabled" | "disabled") => {}
        Some(other) => {
            return Err(DpsError::invalid(format!(
                "provisioningStatus '{other}' is not enabled or disabled"
            )))
        }
    }
    match common.allocation_policy.as_deref() {
        None | Some("hashed" | "static" | "geoLatency") => {}
        Some("custom") => {
            return Err(DpsError::invalid(
                "allocationPolicy 'custom' (webhooks) is not served by this local DPS yet",
            ))
        }
        Some(other) => {
            return Err(DpsError::invalid(format!(
                "allocationPolicy '{other}' is not one of hashed, geoLatency, static, custom"
            )))
        }
    }
    let named = common
        .iot_hub_host_name
        .iter()
        .chain(common.iot_hubs.iter().flatten());
    for name in named {
        if !name.eq_ignore_ascii_case(hub) {
            return Err(DpsError::invalid(format!(
                "IoT hub '{name}' is not linked to this provisioning service (only '{hub}' is)"
            )));
        }
    }
    if let Some(twin) = &common.initial_twin {
        initial_twin_sections(twin)?;
    }
    if let Some(capabilities) = &common.capabilities {
        if !capabilities.is_object() {
            return Err(DpsError::invalid("capabilities must be an object"));
        }
    }
    common.created_date_time_utc = Some(
        existing
            .and_then(|e| e.created_date_time_utc.clone())
            .unwrap_or_else(|| now.to_owned()),
    );
    common.last_updated_date_time_utc = Some(now.to_owned());
    common.etag = Some(etag);
    Ok(())
}

/// The tags and desired properties of an `initialTwin`, applied as sent.
pub fn initial_twin_sections(
    twin: &Value,
) -> Result<(Option<Properties>, Option<Properties>), DpsError> {
    let section = |value: Option<&Value>, name: &str| match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        Some(_) => Err(DpsError::invalid(format!(
            "initialTwin.{name} must be an object"
        ))),
    };
    let tags = section(twin.get("tags"), "tags")?;
    let desired = section(
        twin.get("properties").and_then(|p| p.get("desired")),
        "properties.desired",
    )?;
    Ok((tags, desired))
}

/// Whether an enrollment's `capabilities` make its devices IoT Edge devices.
pub fn is_edge(common: &EnrollmentCommon) -> bool {
    common
        .capabilities
        .as_ref()
        .and_then(|c| c.get("iotEdge"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// A continuation token for a query page that starts after `last_id`.
pub fn continuation_after(last_id: &str) -> String {
    STANDARD.encode(last_id)
}

/// The id a continuation token says to start after; `None` if it is not one of ours.
pub fn continuation_start(token: &str) -> Option<String> {
    String::from_utf8(STANDARD.decode(token).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> impl FnMut() -> Secret {
        let mut n = 0;
        move || {
            n += 1;
            Secret::new(STANDARD.encode(format!("key-{n}")))
        }
    }

    #[test]
    fn a_group_key_derives_the_device_key_microsoft_documents() {
        // the vector computed independently with Python's hmac (the az CLI's compute_device_key
        // does the same): base64(HMAC-SHA256(b"group-key-bytes", b"device-1"))
        let group = Secret::new("Z3JvdXAta2V5LWJ5dGVz");
        let derived = derive_device_key(&group, "device-1").unwrap();
        assert_eq!(
            derived.expose(),
            "PQkyQCsr8Z91SJmiB2hGZzenjJ9SHLvsSK9UtG1S8qM="
        );
        assert_ne!(
            derived,
            derive_device_key(&group, "device-2").unwrap(),
            "each registration id has its own key"
        );
        assert!(derive_device_key(&Secret::new("not base64!"), "d").is_err());
    }

    #[test]
    fn registration_ids_follow_the_dps_rule() {
        for ok in ["device-1", "a", "sn.007_888:abc-", &"x".repeat(128)] {
            check_registration_id(ok).unwrap();
        }
        for bad in [
            "",
            "a b",
            "dev/1",
            "dev#1",
            "ends.",
            "ends_",
            &"x".repeat(129),
        ] {
            let error = check_registration_id(bad).unwrap_err();
            assert_eq!(error.code, 400004, "{bad}");
        }
    }

    #[test]
    fn usernames_of_dps_and_of_iot_hub_are_told_apart() {
        assert_eq!(
            parse_username(
                "0ne000A1B2C/registrations/dev-1/api-version=2019-03-31&ClientVersion=x"
            ),
            Some(Username {
                id_scope: "0ne000A1B2C".into(),
                registration_id: "dev-1".into()
            })
        );
        assert_eq!(
            parse_username("localhost/dev-1/?api-version=2021-04-12"),
            None
        );
        assert_eq!(
            parse_username("localhost/registrations/api-version=2021-04-12"),
            None
        );
    }

    #[test]
    fn request_topics_parse_and_responses_carry_the_rid_and_retry_after() {
        assert_eq!(
            parse_request("$dps/registrations/PUT/iotdps-register/?$rid=7"),
            Some(Request::Register { rid: "7".into() })
        );
        assert_eq!(
            parse_request(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=8&operationId=op-1"
            ),
            Some(Request::OperationStatus {
                rid: "8".into(),
                operation_id: "op-1".into()
            })
        );
        assert_eq!(
            parse_request("$dps/registrations/PUT/iotdps-register/"),
            None
        );
        assert_eq!(
            response_topic(202, "7", Some(1)),
            "$dps/registrations/res/202/?$rid=7&retry-after=1"
        );
        assert_eq!(
            response_topic(200, "8", None),
            "$dps/registrations/res/200/?$rid=8"
        );
    }

    #[test]
    fn an_enrollment_as_the_node_sdk_sends_it_gets_keys_status_times_and_etag() {
        let body = json!({
            "registrationId": "dev-1",
            "attestation": {"type": "symmetricKey"},
            "initialTwin": {"tags": {"site": "a"}, "properties": {"desired": {"x": 1}}},
            "capabilities": {"iotEdge": true}
        });
        let mut enrollment: IndividualEnrollment = serde_json::from_value(body).unwrap();
        prepare(
            &mut enrollment.common,
            None,
            "hub.local",
            "T1",
            "e1".into(),
            keys(),
        )
        .unwrap();
        let c = &enrollment.common;
        let (primary, secondary) = c.attestation.keys().unwrap();
        assert_ne!(primary, secondary);
        assert_eq!(c.provisioning_status.as_deref(), Some("enabled"));
        assert_eq!(c.created_date_time_utc.as_deref(), Some("T1"));
        assert_eq!(c.etag.as_deref(), Some("e1"));
        assert!(is_edge(c));
        let shown = serde_json::to_value(&enrollment).unwrap();
        assert_eq!(
            shown["attestation"]["symmetricKey"]["primaryKey"],
            json!(primary.expose())
        );
        assert_eq!(shown["initialTwin"]["tags"], json!({"site": "a"}));

        let first = enrollment.common.clone();
        let mut update = enrollment.common.clone();
        prepare(
            &mut update,
            Some(&first),
            "hub.local",
            "T2",
            "e2".into(),
            keys(),
        )
        .unwrap();
        assert_eq!(update.created_date_time_utc.as_deref(), Some("T1"));
        assert_eq!(update.last_updated_date_time_utc.as_deref(), Some("T2"));
        assert_eq!(update.attestation, first.attestation, "given keys are kept");
        let mut read_back = enrollment.common.clone();
        read_back.attestation.symmetric_key = Some(SymmetricKeyAttestation::default());
        prepare(
            &mut read_back,
            Some(&first),
            "hub.local",
            "T3",
            "e3".into(),
            keys(),
        )
        .unwrap();
        assert_eq!(
            read_back.attestation, first.attestation,
            "absent keys are kept"
        );
    }

    #[test]
    fn enrollments_this_service_cannot_honour_are_refused_naming_the_field() {
        let refused = |body: Value| {
            let mut e: IndividualEnrollment = serde_json::from_value(body).unwrap();
            prepare(&mut e.common, None, "hub.local", "T", "e".into(), keys())
                .unwrap_err()
                .message
        };
        let sym = json!({"type": "symmetricKey"});
        assert!(refused(json!({"attestation": {"type": "x509"}})).contains("attestation.x509"));
        assert!(refused(json!({"attestation": {"type": "tpm"}})).contains("tpm"));
        assert!(refused(json!({})).contains("attestation.type"));
        assert!(
            refused(json!({"attestation": sym, "provisioningStatus": "on"}))
                .contains("provisioningStatus")
        );
        assert!(
            refused(json!({"attestation": sym, "iotHubs": ["other.hub"]})).contains("other.hub")
        );
        assert!(
            refused(json!({"attestation": sym, "allocationPolicy": "custom"})).contains("custom")
        );
        assert!(refused(json!({"attestation": sym, "initialTwin": {"tags": 3}})).contains("tags"));
        assert!(refused(
            json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "@@"}}})
        )
        .contains("base64"));
    }

    #[test]
    fn an_x509_attestation_is_shown_with_its_info_and_without_its_certificates() {
        let body = json!({"type": "x509", "x509": {
            "clientCertificates": {"primary": {"certificate": "-----BEGIN CERTIFICATE-----"}},
            "signingCertificates": {"secondary": {"certificate": "x", "info": {
                "subjectName": "CN=root", "sha1Thumbprint": "AB", "sha256Thumbprint": "CD",
                "issuerName": "CN=root", "notBeforeUtc": "2030-01-01T00:00:00Z",
                "notAfterUtc": "2031-01-01T00:00:00Z", "serialNumber": "01", "version": 3}}}
        }});
        let mut attestation: AttestationMechanism = serde_json::from_value(body).unwrap();
        let x509 = attestation.x509.as_mut().unwrap();
        x509.without_certificates();
        assert_eq!(
            serde_json::to_value(&attestation).unwrap()["x509"],
            json!({"clientCertificates": {"primary": {}}, "signingCertificates": {"secondary": {"info": {
                "subjectName": "CN=root", "sha1Thumbprint": "AB", "sha256Thumbprint": "CD",
                "issuerName": "CN=root", "notBeforeUtc": "2030-01-01T00:00:00Z",
                "notAfterUtc": "2031-01-01T00:00:00Z", "serialNumber": "01", "version": 3}}}})
        );
    }

    #[test]
    fn if_match_ignores_quotes_and_takes_a_star() {
        assert!(if_match_accepts("\"abc\"", "abc"));
        assert!(if_match_accepts("abc", "abc"));
        assert!(if_match_accepts("*", "abc"));
        assert!(!if_match_accepts("\"abd\"", "abc"));
    }

    #[test]
    fn continuations_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(
            continuation_start(&continuation_after("dev-9")).as_deref(),
            Some("dev-9")
        );
        assert_eq!(continuation_start("%%"), None);
    }

    #[test]
    fn device_paths_parse() {
        let seg = |p: &str| p.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            parse_device_path(&seg("0ne1/registrations/d1/register")),
            Some(DevicePath::Register {
                id_scope: "0ne1".into(),
                registration_id: "d1".into()
            })
        );
        assert!(matches!(
            parse_device_path(&seg("0ne1/registrations/d1/operations/o1")),
            Some(DevicePath::Operation { .. })
        ));
        assert_eq!(parse_device_path(&seg("registrations/d1")), None);
    }

    #[test]
    fn errors_carry_the_status_and_the_dps_body() {
        let e = DpsError::unauthorized();
        assert_eq!(e.http_status(), 401);
        assert_eq!(
            e.body("t", "now"),
            json!({"errorCode": 401002, "trackingId": "t", "message": "Unauthorized", "timestampUtc": "now"})
        );
    }
}
