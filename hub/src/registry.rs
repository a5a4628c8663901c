//! The identity registry: devices and modules, with IoT Hub's rules for ids, keys, etags and the
//! system modules of edge devices. Every function runs inside one store transaction.
//!
//! Part of the core's domain: depends on the store, error and ids; never on the hub or a door.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use edgetwin_wire::rest::{
    AuthenticationMechanism, Device, DeviceCapabilities, ErrorCode, Module, SymmetricKey,
    X509Thumbprint,
};
use edgetwin_wire::Secret;

use crate::error::ApiError;
use crate::ids::{self, NEVER};
use crate::store::{IdentityKey, Transaction, TwinRecord};

/// The system modules IoT Hub creates for every edge device.
pub const SYSTEM_MODULES: [&str; 2] = [EDGE_AGENT, "$edgeHub"];

/// The IoT Edge agent's module id, whose twin carries the deployment and its status.
pub const EDGE_AGENT: &str = "$edgeAgent";

/// Checks an id against IoT Hub's rules: 1-128 ASCII letters, digits and `-:.+%_#*?!(),=@;$'`.
pub fn validate_id(kind: &str, id: &str) -> Result<(), ApiError> {
    edgetwin_wire::ids::check_identity_id(id)
        .map_err(|why| ApiError::invalid(format!("{kind} '{id}' {why}")))
}

/// Completes the authentication of a new or updated identity: SAS keys are generated when none are
/// given, given keys must be base64 of 16 to 64 bytes.
fn complete_authentication(
    given: Option<AuthenticationMechanism>,
    field: &str,
) -> Result<AuthenticationMechanism, ApiError> {
    let mut auth = given.unwrap_or_default();
    let auth_type = auth.auth_type.clone().unwrap_or_else(|| "sas".to_owned());
    if auth_type != "sas" && auth_type != "none" {
        return Err(ApiError::invalid(format!(
            "{field}.type '{auth_type}' is not supported by this hub (only sas)"
        )));
    }
    let keys = auth.symmetric_key.take().unwrap_or_default();
    let filled = |k: &Option<Secret>| k.as_ref().is_some_and(|s| !s.expose().is_empty());
    let symmetric_key = if auth_type == "none" {
        SymmetricKey::default()
    } else if !filled(&keys.primary_key) && !filled(&keys.secondary_key) {
        SymmetricKey {
            primary_key: Some(ids::new_key()),
            secondary_key: Some(ids::new_key()),
        }
    } else {
        for (name, key) in [
            ("primaryKey", &keys.primary_key),
            ("secondaryKey", &keys.secondary_key),
        ] {
            let valid = key.as_ref().is_some_and(|k| {
                BASE64
                    .decode(k.expose())
                    .is_ok_and(|bytes| (16..=64).contains(&bytes.len()))
            });
            if !valid {
                return Err(ApiError::invalid(format!(
                    "{field}.symmetricKey.{name} must be base64 of 16 to 64 bytes"
                )));
            }
        }
        keys
    };
    Ok(AuthenticationMechanism {
        auth_type: Some(auth_type),
        symmetric_key: Some(symmetric_key),
        x509_thumbprint: Some(X509Thumbprint::default()),
    })
}

fn check_if_match(if_match: Option<&str>, etag: Option<&str>) -> Result<(), ApiError> {
    match if_match {
        Some(value) if !ids::if_match_accepts(value, etag.unwrap_or_default()) => {
            Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the If-Match etag does not match the current etag",
            ))
        }
        _ => Ok(()),
    }
}

fn new_twin() -> TwinRecord {
    let now = ids::now_iso();
    TwinRecord {
        desired_version: 1,
        reported_version: 1,
        version: 1,
        desired_updated: now.clone(),
        reported_updated: now.clone(),
        tags_updated: now,
        ..TwinRecord::default()
    }
}

/// Creates a device (`PUT /devices/{id}` without If-Match, or bulk `create`).
pub fn create_device(tx: &Transaction<'_>, id: &str, input: Device) -> Result<Device, ApiError> {
    validate_id("deviceId", id)?;
    if !input.device_id.is_empty() && input.device_id != id {
        return Err(ApiError::invalid(format!(
            "deviceId '{}' in the body does not match '{id}' in the path",
            input.device_id
        )));
    }
    if tx.device(id)?.is_some() {
        return Err(ApiError::new(
            ErrorCode::DeviceAlreadyExists,
            format!("A device with ID '{id}' is already registered."),
        ));
    }
    let generation_id = ids::generation_id();
    let iot_edge = input.capabilities.as_ref().is_some_and(|c| c.iot_edge);
    let device_scope = if iot_edge {
        format!("ms-azure-iot-edge://{id}-{generation_id}")
    } else {
        leaf_scope(tx, input.device_scope.as_deref().unwrap_or_default())?
    };
    let parent_scopes = if iot_edge {
        edge_parent_scopes(tx, id, input.parent_scopes.as_deref().unwrap_or_default())?
    } else {
        scopes_of_leaf(&device_scope)
    };
    let device = Device {
        device_id: id.to_owned(),
        etag: Some(ids::counter_etag(tx.next_counter("etag")?)),
        connection_state: Some("Disconnected".into()),
        status: Some(validate_status(input.status, "status")?),
        status_reason: input.status_reason,
        connection_state_updated_time: Some(NEVER.into()),
        status_updated_time: Some(NEVER.into()),
        last_activity_time: Some(NEVER.into()),
        cloud_to_device_message_count: Some(0),
        authentication: Some(complete_authentication(
            input.authentication,
            "authentication",
        )?),
        capabilities: Some(DeviceCapabilities { iot_edge }),
        device_scope: Some(device_scope),
        parent_scopes: Some(parent_scopes),
        generation_id: Some(generation_id),
    };
    tx.put_device(&device)?;
    tx.put_twin(&IdentityKey::device(id), &new_twin())?;
    if iot_edge {
        for module_id in SYSTEM_MODULES {
            let module = new_module(tx, id, module_id, None, Some("none"))?;
            tx.put_module(&module)?;
            tx.put_twin(&IdentityKey::module(id, module_id), &new_twin())?;
        }
    }
    Ok(device)
}

fn validate_status(status: Option<String>, field: &str) -> Result<String, ApiError> {
    match status.as_deref() {
        None | Some("enabled") => Ok("enabled".into()),
        Some("disabled") => Ok("disabled".into()),
        Some(other) => Err(ApiError::invalid(format!(
            "{field} '{other}' must be 'enabled' or 'disabled'"
        ))),
    }
}

/// Updates a device (`PUT /devices/{id}` with If-Match): status, reason and keys may change; the
/// generation id, scope and capabilities of an existing device stay.
pub fn update_device(
    tx: &Transaction<'_>,
    id: &str,
    input: Device,
    if_match: Option<&str>,
) -> Result<Device, ApiError> {
    let mut device = tx.device(id)?.ok_or_else(|| device_not_found(id))?;
    check_if_match(if_match, device.etag.as_deref())?;
    if let Some(scope) = input.device_scope.as_deref() {
        if let Some(scope) = changed_device_scope(tx, &device, scope)? {
            device.parent_scopes = Some(scopes_of_leaf(&scope));
            device.device_scope = Some(scope);
        }
    }
    let is_edge = device.capabilities.as_ref().is_some_and(|c| c.iot_edge);
    match input.parent_scopes {
        // unchanged scopes stay, even if the parent has gone since
        Some(scopes) if is_edge && device.parent_scopes.as_ref() != Some(&scopes) => {
            device.parent_scopes = Some(edge_parent_scopes(tx, id, &scopes)?);
        }
        _ => {}
    }
    let status = validate_status(input.status, "status")?;
    if device.status.as_deref() != Some(status.as_str()) {
        device.status_updated_time = Some(ids::now_iso());
    }
    device.status = Some(status);
    device.status_reason = input.status_reason;
    if input.authentication.is_some() {
        device.authentication = Some(complete_authentication(
            input.authentication,
            "authentication",
        )?);
    }
    device.etag = Some(ids::counter_etag(tx.next_counter("etag")?));
    tx.put_device(&device)?;
    Ok(device)
}

/// The new `deviceScope` an update asks for, if it changes it. IoT Hub generates an edge device's
/// scope and refuses a change; a leaf device's scope is its parent edge device's (nested edge),
/// so it must be empty or the scope of an existing edge device.
fn changed_device_scope(
    tx: &Transaction<'_>,
    device: &Device,
    scope: &str,
) -> Result<Option<String>, ApiError> {
    if device.device_scope.as_deref().unwrap_or_default() == scope {
        return Ok(None);
    }
    let is_edge = device.capabilities.as_ref().is_some_and(|c| c.iot_edge);
    if is_edge {
        return Err(ApiError::invalid(format!(
            "deviceScope of IoT Edge device '{}' is generated by IoT Hub and cannot be changed",
            device.device_id
        )));
    }
    leaf_scope(tx, scope).map(Some)
}

/// A leaf device's `deviceScope`: empty, or the scope of its parent, an existing edge device.
fn leaf_scope(tx: &Transaction<'_>, scope: &str) -> Result<String, ApiError> {
    if scope.is_empty() || parent_of_scope(tx, scope)?.is_some() {
        return Ok(scope.to_owned());
    }
    Err(ApiError::invalid(format!(
        "deviceScope '{scope}' is not the scope of an IoT Edge device in this hub"
    )))
}

/// A leaf device's `parentScopes`, which IoT Hub derives from its `deviceScope` ("The scopes of
/// the upper level edge devices if applicable", Device - Create Or Update, REST reference).
fn scopes_of_leaf(device_scope: &str) -> Vec<String> {
    if device_scope.is_empty() {
        Vec::new()
    } else {
        vec![device_scope.to_owned()]
    }
}

/// An edge device's `parentScopes` as given (nested IoT Edge: `az iot hub device-identity parent
/// set` and `az iot edge devices create` write them this way): none, or the scope of one other
/// existing edge device.
fn edge_parent_scopes(
    tx: &Transaction<'_>,
    id: &str,
    scopes: &[String],
) -> Result<Vec<String>, ApiError> {
    match scopes {
        [] => Ok(Vec::new()),
        [scope] => match parent_of_scope(tx, scope)? {
            Some(parent) if parent.device_id != id => Ok(vec![scope.clone()]),
            Some(_) => Err(ApiError::invalid(format!(
                "parentScopes: IoT Edge device '{id}' cannot be its own parent"
            ))),
            None => Err(ApiError::invalid(format!(
                "parentScopes: '{scope}' is not the scope of an IoT Edge device in this hub"
            ))),
        },
        _ => Err(ApiError::invalid(format!(
            "parentScopes of IoT Edge device '{id}' holds {} scopes; a device has one parent",
            scopes.len()
        ))),
    }
}

/// The edge device whose scope is `scope` (`ms-azure-iot-edge://{deviceId}-{generationId}`).
fn parent_of_scope(tx: &Transaction<'_>, scope: &str) -> Result<Option<Device>, ApiError> {
    let Some(rest) = scope.strip_prefix("ms-azure-iot-edge://") else {
        return Ok(None);
    };
    let Some((parent_id, _generation)) = rest.rsplit_once('-') else {
        return Ok(None);
    };
    Ok(tx.device(parent_id)?.filter(|parent| {
        parent.capabilities.as_ref().is_some_and(|c| c.iot_edge)
            && parent.device_scope.as_deref() == Some(scope)
    }))
}

/// Deletes a device with its modules and twins.
pub fn delete_device(
    tx: &Transaction<'_>,
    id: &str,
    if_match: Option<&str>,
) -> Result<(), ApiError> {
    let device = tx.device(id)?.ok_or_else(|| device_not_found(id))?;
    check_if_match(if_match, device.etag.as_deref())?;
    tx.delete_device(id)?;
    Ok(())
}

/// `DeviceNotFound` for `id`.
pub fn device_not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::DeviceNotFound, id.to_owned())
}

/// `ModuleNotFound` for `device_id/module_id`.
pub fn module_not_found(device_id: &str, module_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ModuleNotFound,
        format!("Module {module_id} not found on device {device_id}"),
    )
}

fn new_module(
    tx: &Transaction<'_>,
    device_id: &str,
    module_id: &str,
    authentication: Option<AuthenticationMechanism>,
    auth_type: Option<&str>,
) -> Result<Module, ApiError> {
    let authentication = match auth_type {
        Some(t) => AuthenticationMechanism {
            auth_type: Some(t.to_owned()),
            ..AuthenticationMechanism::default()
        },
        None => authentication.unwrap_or_default(),
    };
    Ok(Module {
        module_id: module_id.to_owned(),
        managed_by: None,
        device_id: device_id.to_owned(),
        generation_id: Some(ids::generation_id()),
        etag: Some(ids::counter_etag(tx.next_counter("etag")?)),
        connection_state: Some("Disconnected".into()),
        connection_state_updated_time: Some(NEVER.into()),
        last_activity_time: Some(NEVER.into()),
        cloud_to_device_message_count: Some(0),
        authentication: Some(complete_authentication(
            Some(authentication),
            "authentication",
        )?),
    })
}

fn reject_system_module(module_id: &str) -> Result<(), ApiError> {
    if SYSTEM_MODULES.contains(&module_id) {
        return Err(ApiError::new(
            ErrorCode::SystemModuleModifyUnauthorizedAccess,
            "Unauthorized to modify reserved module.",
        ));
    }
    Ok(())
}

/// Creates a module identity (`PUT /devices/{d}/modules/{m}` without If-Match).
pub fn create_module(
    tx: &Transaction<'_>,
    device_id: &str,
    module_id: &str,
    input: Module,
) -> Result<Module, ApiError> {
    validate_id("moduleId", module_id)?;
    reject_system_module(module_id)?;
    tx.device(device_id)?
        .ok_or_else(|| device_not_found(device_id))?;
    if tx.module(device_id, module_id)?.is_some() {
        return Err(ApiError::new(
            ErrorCode::ModuleAlreadyExistsOnDevice,
            format!("Device {device_id} already contains Module {module_id}."),
        ));
    }
    let mut module = new_module(tx, device_id, module_id, input.authentication, None)?;
    module.managed_by = input.managed_by;
    tx.put_module(&module)?;
    tx.put_twin(&IdentityKey::module(device_id, module_id), &new_twin())?;
    Ok(module)
}

/// Updates a module identity (`PUT` with If-Match): keys and `managedBy` may change. Only the
/// edge device itself (`by_own_device`) may update `$edgeAgent` and `$edgeHub`: their keys are set
/// by the device's IoT Edge runtime, which aziot-identityd does with `update_module` (`GET` the
/// module, then `PUT` derived SAS keys with `If-Match: *`: Azure/iot-identity-service
/// `aziot-identityd` `identity.rs` `update_module_identity`).
pub fn update_module(
    tx: &Transaction<'_>,
    device_id: &str,
    module_id: &str,
    input: Module,
    if_match: Option<&str>,
    by_own_device: bool,
) -> Result<Module, ApiError> {
    if !by_own_device {
        reject_system_module(module_id)?;
    }
    let mut module = tx
        .module(device_id, module_id)?
        .ok_or_else(|| module_not_found(device_id, module_id))?;
    check_if_match(if_match, module.etag.as_deref())?;
    if input.authentication.is_some() {
        module.authentication = Some(complete_authentication(
            input.authentication,
            "authentication",
        )?);
    }
    module.managed_by = input.managed_by.or(module.managed_by);
    module.etag = Some(ids::counter_etag(tx.next_counter("etag")?));
    tx.put_module(&module)?;
    Ok(module)
}

/// Deletes a module identity and its twin.
pub fn delete_module(
    tx: &Transaction<'_>,
    device_id: &str,
    module_id: &str,
    if_match: Option<&str>,
) -> Result<(), ApiError> {
    reject_system_module(module_id)?;
    let module = tx
        .module(device_id, module_id)?
        .ok_or_else(|| module_not_found(device_id, module_id))?;
    check_if_match(if_match, module.etag.as_deref())?;
    tx.delete_module(device_id, module_id)?;
    Ok(())
}

/// The SAS keys of an identity, if it authenticates with SAS and is enabled.
pub fn connect_keys(
    tx: &Transaction<'_>,
    key: &IdentityKey,
) -> Result<Option<Vec<Secret>>, ApiError> {
    let device = match tx.device(&key.device_id)? {
        Some(device) if device.status.as_deref() != Some("disabled") => device,
        _ => return Ok(None),
    };
    let authentication = match &key.module_id {
        None => device.authentication,
        Some(module_id) => match tx.module(&key.device_id, module_id)? {
            Some(module) => module.authentication,
            None => return Ok(None),
        },
    };
    let keys = authentication
        .and_then(|a| a.symmetric_key)
        .map(|k| k.primary_key.into_iter().chain(k.secondary_key).collect())
        .filter(|keys: &Vec<Secret>| !keys.is_empty());
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_id_names_the_field_the_id_and_the_character() {
        let error = validate_id("moduleId", "has space").unwrap_err();
        assert_eq!(
            error.message,
            "moduleId 'has space' contains ' ', which IoT Hub does not allow"
        );
    }

    #[test]
    fn empty_keys_are_generated_and_bad_keys_are_named() {
        let generated = complete_authentication(
            Some(AuthenticationMechanism {
                auth_type: Some("sas".into()),
                symmetric_key: Some(SymmetricKey {
                    primary_key: Some(Secret::new("")),
                    secondary_key: Some(Secret::new("")),
                }),
                x509_thumbprint: None,
            }),
            "authentication",
        )
        .unwrap();
        let keys = generated.symmetric_key.unwrap();
        assert_eq!(keys.primary_key.unwrap().expose().len(), 44);
        let error = complete_authentication(
            Some(AuthenticationMechanism {
                auth_type: None,
                symmetric_key: Some(SymmetricKey {
                    primary_key: Some(Secret::new("not base64!")),
                    secondary_key: Some(ids::new_key()),
                }),
                x509_thumbprint: None,
            }),
            "authentication",
        )
        .unwrap_err();
        assert!(error
            .message
            .contains("authentication.symmetricKey.primaryKey"));
        assert!(!error.message.contains("not base64!"));
    }
}
