//! Twins: the service view (REST), the device view (MQTT), and the three ways a twin changes —
//! the back end patches or replaces tags and desired properties, a deployment replaces desired
//! properties wholesale, and the device patches reported properties. Versions, etags and size
//! limits follow IoT Hub; every change is validated before anything is stored.
//!
//! Part of the core's domain: depends on the store, registry, error and ids; never on the hub or a
//! door.

use edgetwin_wire::digital_twin::{self, TwinSections};
use edgetwin_wire::rest::{ErrorCode, Twin, TwinProperties};
use edgetwin_wire::twin::{self, Properties, Section, Stamp};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::ids;
use crate::registry::{self, SYSTEM_MODULES};
use crate::store::{IdentityKey, Transaction, TwinRecord};

/// A change of desired properties that subscribed clients must be told about, kept as the
/// notification's bytes: a deployment to 100,000 edge devices holds one per device until its
/// commit, and bytes take a fraction of the memory of the parsed JSON.
#[derive(Debug, Clone)]
pub struct DesiredChange {
    /// Whose twin changed.
    pub key: IdentityKey,
    /// The new `desired.$version`.
    pub version: i64,
    /// The desired-patch notification: the patch as applied (or, after a replace, the whole new
    /// section with the members it removed set to `null`) with `$version`.
    pub notification: bytes::Bytes,
}

impl DesiredChange {
    /// The change of `key`'s desired properties by `patch`, now at `version`.
    pub fn new(key: IdentityKey, patch: &Properties, version: i64) -> Self {
        let body = twin::desired_notification(patch, version).to_string();
        Self {
            key,
            version,
            notification: bytes::Bytes::from(body),
        }
    }
}

/// How a service request changes tags and desired properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// `PATCH`: JSON merge patch.
    Merge,
    /// `PUT`: the sections present in the body replace the stored ones.
    Replace,
}

fn load(tx: &Transaction<'_>, key: &IdentityKey) -> Result<TwinRecord, ApiError> {
    tx.twin(key)?.ok_or_else(|| match &key.module_id {
        None => registry::device_not_found(&key.device_id),
        Some(module_id) => registry::module_not_found(&key.device_id, module_id),
    })
}

/// A section as the service sees it: its properties, `$metadata` per property as IoT Hub keeps
/// it (only the section's `$lastUpdated` for a twin no property of which changed since it was
/// created, or stored before the hub kept per-property metadata), and `$version`.
fn with_metadata(
    props: &Properties,
    metadata: &Properties,
    version: i64,
    updated: &str,
) -> Properties {
    let mut section = props.clone();
    let metadata = if metadata.is_empty() {
        json!({ "$lastUpdated": updated })
    } else {
        Value::Object(metadata.clone())
    };
    section.insert("$metadata".into(), metadata);
    section.insert("$version".into(), json!(version));
    section
}

/// The stamp of a desired change that made `version`.
fn desired_stamp(at: &str, version: i64) -> Stamp<'_> {
    Stamp {
        at,
        version: Some(version),
    }
}

/// The twin as the service API returns it.
pub fn service_view(
    tx: &Transaction<'_>,
    key: &IdentityKey,
    connected: bool,
) -> Result<Twin, ApiError> {
    let record = load(tx, key)?;
    let device = tx
        .device(&key.device_id)?
        .ok_or_else(|| registry::device_not_found(&key.device_id))?;
    let (auth, etag) = match &key.module_id {
        None => (device.authentication.clone(), device.etag.clone()),
        Some(module_id) => {
            let module = tx
                .module(&key.device_id, module_id)?
                .ok_or_else(|| registry::module_not_found(&key.device_id, module_id))?;
            (module.authentication, module.etag)
        }
    };
    let is_device = key.module_id.is_none();
    let auth = auth.unwrap_or_default();
    Ok(Twin {
        device_id: key.device_id.clone(),
        module_id: key.module_id.clone(),
        etag: Some(ids::twin_etag(record.version)),
        device_etag: etag,
        version: Some(record.version),
        status: device.status.clone(),
        status_reason: device.status_reason.clone().filter(|_| is_device),
        status_update_time: Some(format!("{}Z", ids::NEVER)),
        connection_state: Some(
            if connected {
                "Connected"
            } else {
                "Disconnected"
            }
            .into(),
        ),
        last_activity_time: Some(format!("{}Z", ids::NEVER)),
        cloud_to_device_message_count: Some(0),
        authentication_type: auth.auth_type,
        x509_thumbprint: Some(auth.x509_thumbprint.unwrap_or_default()),
        model_id: Some(record.model_id.clone()),
        capabilities: device.capabilities.filter(|_| is_device),
        device_scope: device.device_scope.clone().filter(|_| is_device),
        parent_scopes: device.parent_scopes.clone().filter(|_| is_device),
        tags: Some(record.tags.clone()),
        properties: Some(TwinProperties {
            desired: Some(with_metadata(
                &record.desired,
                &record.desired_metadata,
                record.desired_version,
                &record.desired_updated,
            )),
            reported: Some(with_metadata(
                &record.reported,
                &record.reported_metadata,
                record.reported_version,
                &record.reported_updated,
            )),
        }),
        configurations: Some(record.configurations.clone()).filter(|c| !c.is_empty()),
    })
}

/// A device's IoT Plug and Play digital twin (`GET /digitaltwins/{id}`) and the twin's etag.
pub fn digital_twin_view(
    tx: &Transaction<'_>,
    device_id: &str,
) -> Result<(Value, String), ApiError> {
    let record = load(tx, &IdentityKey::device(device_id))?;
    let view = digital_twin::digital_twin(&TwinSections {
        device_id,
        model_id: &record.model_id,
        desired: &record.desired,
        desired_metadata: &record.desired_metadata,
        desired_version: record.desired_version,
        reported: &record.reported,
        reported_metadata: &record.reported_metadata,
    });
    Ok((view, ids::twin_etag(record.version)))
}

/// The desired and reported properties of `key`'s twin, as stored (a digital twin update reads
/// them to map its JSON Patch onto desired properties).
pub fn sections(
    tx: &Transaction<'_>,
    key: &IdentityKey,
) -> Result<(Properties, Properties), ApiError> {
    let record = load(tx, key)?;
    Ok((record.desired, record.reported))
}

/// Records the model id `key` announced when it connected; the twin's version does not change
/// (`modelId` is no property). A connection without one leaves the last announced in place.
pub fn announce_model(
    tx: &Transaction<'_>,
    key: &IdentityKey,
    model_id: &str,
) -> Result<(), ApiError> {
    let mut record = load(tx, key)?;
    if record.model_id != model_id {
        record.model_id = model_id.to_owned();
        tx.put_twin(key, &record)?;
    }
    Ok(())
}

/// The twin as a device sees it over MQTT: `{"desired": {..., "$version"}, "reported": {...}}`.
pub fn device_view(tx: &Transaction<'_>, key: &IdentityKey) -> Result<Value, ApiError> {
    let record = load(tx, key)?;
    Ok(twin::device_view(
        &record.desired,
        record.desired_version,
        &record.reported,
        record.reported_version,
    ))
}

fn invalid_twin(error: twin::TwinError) -> ApiError {
    ApiError::invalid(error.to_string())
}

fn take_object(
    value: Option<Properties>,
    section: Section,
) -> Result<Option<Properties>, ApiError> {
    let Some(mut props) = value else {
        return Ok(None);
    };
    twin::strip_system_keys(&mut props);
    twin::validate_patch(section, &props).map_err(invalid_twin)?;
    Ok(Some(props))
}

/// Applies a service `PATCH` or `PUT` of tags and desired properties.
pub fn update_from_service(
    tx: &Transaction<'_>,
    key: &IdentityKey,
    input: Twin,
    mode: UpdateMode,
    if_match: Option<&str>,
) -> Result<Option<DesiredChange>, ApiError> {
    if key
        .module_id
        .as_deref()
        .is_some_and(|m| SYSTEM_MODULES.contains(&m))
    {
        return Err(ApiError::new(
            ErrorCode::SystemModuleModifyUnauthorizedAccess,
            "Unauthorized to modify reserved module.",
        ));
    }
    let mut record = load(tx, key)?;
    if let Some(value) = if_match {
        if !ids::if_match_accepts(value, &ids::twin_etag(record.version)) {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the If-Match etag does not match the twin's etag",
            ));
        }
    }
    let properties = input.properties.unwrap_or_default();
    if properties.reported.is_some() {
        return Err(ApiError::invalid(
            "properties.reported cannot be changed by the service; only the device reports",
        ));
    }
    let tags = take_object(input.tags, Section::Tags)?;
    let desired = take_object(properties.desired, Section::Desired)?;
    let now = ids::now_iso();
    if let Some(tags) = tags {
        match mode {
            UpdateMode::Merge => twin::merge_patch(&mut record.tags, &tags),
            UpdateMode::Replace => record.tags = tags,
        }
        twin::check_section_size(Section::Tags, &record.tags).map_err(invalid_twin)?;
        record.tags_updated = now.clone();
    }
    let change = match desired {
        Some(patch) => {
            let notified = change_desired(&mut record, patch, mode, &now)?;
            Some(DesiredChange::new(
                key.clone(),
                &notified,
                record.desired_version,
            ))
        }
        None => None,
    };
    record.version += 1;
    tx.put_twin(key, &record)?;
    Ok(change)
}

/// Replaces the whole desired section (deployments and `applyConfigurationContent`).
pub fn replace_desired(
    tx: &Transaction<'_>,
    key: &IdentityKey,
    desired: Properties,
) -> Result<DesiredChange, ApiError> {
    write_desired(tx, key, desired, UpdateMode::Replace)
}

/// Merges a desired patch into a twin (automatic device management configurations): a JSON
/// merge patch, as a service `PATCH` applies it, with a new `$version` and `$metadata`.
pub fn merge_desired(
    tx: &Transaction<'_>,
    key: &IdentityKey,
    patch: Properties,
) -> Result<DesiredChange, ApiError> {
    write_desired(tx, key, patch, UpdateMode::Merge)
}

fn write_desired(
    tx: &Transaction<'_>,
    key: &IdentityKey,
    mut desired: Properties,
    mode: UpdateMode,
) -> Result<DesiredChange, ApiError> {
    let mut record = load(tx, key)?;
    twin::strip_system_keys(&mut desired);
    twin::validate_patch(Section::Desired, &desired).map_err(invalid_twin)?;
    let notified = change_desired(&mut record, desired, mode, &ids::now_iso())?;
    record.version += 1;
    tx.put_twin(key, &record)?;
    Ok(DesiredChange::new(
        key.clone(),
        &notified,
        record.desired_version,
    ))
}

/// Changes a twin's desired properties by a validated `patch` (merged, or replacing the
/// section), with a new `$version` and per-property `$metadata` stamped `now`; returns what the
/// device's desired-patch notification carries.
fn change_desired(
    record: &mut TwinRecord,
    patch: Properties,
    mode: UpdateMode,
    now: &str,
) -> Result<Properties, ApiError> {
    record.desired_version += 1;
    let stamp = desired_stamp(now, record.desired_version);
    let notified = match mode {
        UpdateMode::Merge => {
            twin::merge_patch(&mut record.desired, &patch);
            twin::stamp_metadata(&mut record.desired_metadata, &patch, stamp);
            patch
        }
        UpdateMode::Replace => {
            let notified = twin::replace_notification(&record.desired, &patch);
            record.desired_metadata = Properties::new();
            twin::stamp_metadata(&mut record.desired_metadata, &patch, stamp);
            record.desired = patch;
            notified
        }
    };
    twin::check_section_size(Section::Desired, &record.desired).map_err(invalid_twin)?;
    record.desired_updated = now.to_owned();
    Ok(notified)
}

/// Applies a reported-properties patch from the device; returns the new `reported.$version`.
pub fn patch_reported(
    tx: &Transaction<'_>,
    key: &IdentityKey,
    body: &[u8],
) -> Result<i64, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::ArgumentInvalid,
            format!("reported patch is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(mut patch) = value else {
        return Err(ApiError::invalid("reported patch must be a JSON object"));
    };
    twin::strip_system_keys(&mut patch);
    twin::validate_patch(Section::Reported, &patch).map_err(invalid_twin)?;
    let mut record = load(tx, key)?;
    twin::merge_patch(&mut record.reported, &patch);
    twin::check_section_size(Section::Reported, &record.reported).map_err(invalid_twin)?;
    let now = ids::now_iso();
    let stamp = Stamp {
        at: &now,
        version: None,
    };
    twin::stamp_metadata(&mut record.reported_metadata, &patch, stamp);
    record.reported_version += 1;
    record.reported_updated = now;
    record.version += 1;
    tx.put_twin(key, &record)?;
    Ok(record.reported_version)
}
