//! Identity routes: `/devices[/{id}[/modules[/{mid}]]]`, bulk `POST /devices`,
//! `POST /devices/{id}/applyConfigurationContent` and `/statistics/*`.

use std::sync::Arc;

use edgetwin_wire::rest::{
    BulkRegistryOperationResult, ConfigurationContent, Device, DeviceCapabilities,
    DeviceRegistryOperationError, ErrorCode, ExportImportDevice, Module, Permission,
};
use hyper::Method;
use serde_json::json;

use super::{not_found, Reply, Request};
use crate::deployments;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::registry;
use crate::store::IdentityKey;
use crate::twins::{self, UpdateMode};

/// Most items in one bulk request, as IoT Hub allows.
pub const MAX_BULK_ITEMS: usize = 100;

/// Routes identity requests.
pub fn route(hub: &Arc<Hub>, request: &Request, segments: &[&str]) -> Result<Reply, ApiError> {
    let method = &request.method;
    match segments {
        ["statistics", "devices"] if method == Method::GET => {
            request.require(Permission::RegistryRead)?;
            let devices = hub.transact(|tx| Ok(tx.devices(usize::MAX >> 1)?))?;
            let enabled = devices
                .iter()
                .filter(|d| d.status.as_deref() == Some("enabled"))
                .count();
            Reply::ok(json!({
                "totalDeviceCount": devices.len(),
                "enabledDeviceCount": enabled,
                "disabledDeviceCount": devices.len() - enabled,
            }))
        }
        ["statistics", "service"] if method == Method::GET => {
            request.require(Permission::ServiceConnect)?;
            let devices = hub
                .live
                .client_ids()
                .iter()
                .filter(|c| !c.contains('/'))
                .count();
            Reply::ok(json!({ "connectedDeviceCount": devices }))
        }
        ["devices"] if method == Method::GET => {
            request.require(Permission::RegistryRead)?;
            let mut devices = hub.transact(|tx| Ok(tx.devices(request.top())?))?;
            for device in &mut devices {
                set_connection_state(hub, &mut device.connection_state, &device.device_id);
            }
            Reply::ok(devices)
        }
        ["devices"] if method == Method::POST => bulk(hub, request),
        ["devices", id] => device(hub, request, id),
        ["devices", id, "modules"] if method == Method::GET => {
            request.require(Permission::RegistryRead)?;
            let modules = hub.transact(|tx| {
                tx.device(id)?
                    .ok_or_else(|| registry::device_not_found(id))?;
                Ok(tx.modules(id)?)
            })?;
            Reply::ok(
                modules
                    .into_iter()
                    .map(|m| with_live_state(hub, m))
                    .collect::<Vec<_>>(),
            )
        }
        ["devices", id, "modules", module_id] => module(hub, request, id, module_id),
        ["devices", id, "applyConfigurationContent"] if method == Method::POST => {
            request.require(Permission::ServiceConnect)?;
            let content: ConfigurationContent = request.json()?;
            hub.transact_and_notify(|tx| Ok(((), deployments::apply_content(tx, id, &content)?)))?;
            Reply::no_content()
        }
        _ => Err(not_found(request)),
    }
}

fn is_edge(device: &Device) -> bool {
    device.capabilities.as_ref().is_some_and(|c| c.iot_edge)
}

/// A module identity was added to `device_id`: an edge device's workload socket is now wanted.
fn module_added(hub: &Arc<Hub>, device_id: &str) {
    let edge = hub
        .transact(|tx| Ok(tx.device(device_id)?))
        .ok()
        .flatten()
        .is_some_and(|device| is_edge(&device));
    if edge {
        hub.workload.ensure_or_log(device_id);
    }
}

fn set_connection_state(hub: &Hub, state: &mut Option<String>, client_id: &str) {
    let connected = hub.live.is_connected(client_id);
    *state = Some(
        if connected {
            "Connected"
        } else {
            "Disconnected"
        }
        .into(),
    );
}

fn with_live_state(hub: &Hub, mut module: Module) -> Module {
    let client_id = IdentityKey::module(&module.device_id, &module.module_id).client_id();
    set_connection_state(hub, &mut module.connection_state, &client_id);
    module
}

fn device(hub: &Arc<Hub>, request: &Request, id: &str) -> Result<Reply, ApiError> {
    let if_match = request.if_match.as_deref();
    let device = match request.method {
        Method::GET => {
            request.require(Permission::RegistryRead)?;
            let mut device =
                hub.transact(|tx| tx.device(id)?.ok_or_else(|| registry::device_not_found(id)))?;
            set_connection_state(hub, &mut device.connection_state, id);
            device
        }
        Method::PUT => {
            request.require(Permission::RegistryWrite)?;
            let input: Device = request.json()?;
            let device = hub.transact_and_notify(|tx| {
                let device = match if_match {
                    None => registry::create_device(tx, id, input)?,
                    Some(_) => registry::update_device(tx, id, input, if_match)?,
                };
                Ok((device, deployments::evaluate(tx)?))
            })?;
            if device.status.as_deref() == Some("disabled") {
                hub.live.kick_device(id);
            }
            device
        }
        Method::DELETE => {
            request.require(Permission::RegistryWrite)?;
            hub.transact(|tx| registry::delete_device(tx, id, if_match))?;
            hub.live.kick_device(id);
            hub.workload.remove(id);
            return Reply::no_content();
        }
        _ => return Err(not_found(request)),
    };
    let etag = device.etag.clone();
    Ok(Reply::ok(device)?.with_etag(etag))
}

fn module(
    hub: &Arc<Hub>,
    request: &Request,
    device_id: &str,
    module_id: &str,
) -> Result<Reply, ApiError> {
    let if_match = request.if_match.as_deref();
    let module = match request.method {
        Method::GET => {
            request.require(Permission::RegistryRead)?;
            hub.transact(|tx| {
                tx.device(device_id)?
                    .ok_or_else(|| registry::device_not_found(device_id))?;
                tx.module(device_id, module_id)?
                    .ok_or_else(|| registry::module_not_found(device_id, module_id))
            })?
        }
        Method::PUT => {
            request.require(Permission::RegistryWrite)?;
            let input: Module = request.json()?;
            let module = hub.transact(|tx| match if_match {
                None => registry::create_module(tx, device_id, module_id, input),
                Some(_) => registry::update_module(tx, device_id, module_id, input, if_match),
            })?;
            if if_match.is_none() {
                module_added(hub, device_id);
            }
            module
        }
        Method::DELETE => {
            request.require(Permission::RegistryWrite)?;
            hub.transact(|tx| registry::delete_module(tx, device_id, module_id, if_match))?;
            hub.live
                .kick(&IdentityKey::module(device_id, module_id).client_id());
            return Reply::no_content();
        }
        _ => return Err(not_found(request)),
    };
    let etag = module.etag.clone();
    Ok(Reply::ok(with_live_state(hub, module))?.with_etag(etag))
}

/// Bulk `POST /devices`: up to 100 items, each applied on its own; 400 with the per-item errors if
/// any failed (the others still land), as IoT Hub does.
fn bulk(hub: &Arc<Hub>, request: &Request) -> Result<Reply, ApiError> {
    request.require(Permission::RegistryWrite)?;
    let items: Vec<ExportImportDevice> = request.json_any()?;
    if items.len() > MAX_BULK_ITEMS {
        return Err(ApiError::new(
            ErrorCode::TooManyDevices,
            format!(
                "a bulk request holds at most {MAX_BULK_ITEMS} devices, this one has {}",
                items.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for item in &items {
        if !seen.insert((item.id.clone(), item.module_id.clone())) {
            return Err(ApiError::new(
                ErrorCode::DeviceDefinedMultipleTimes,
                format!("device '{}' appears more than once in the request", item.id),
            ));
        }
    }
    let mut errors = Vec::new();
    let labels: Vec<_> = items
        .iter()
        .map(|item| {
            (
                item.id.clone(),
                item.module_id.clone(),
                item.import_mode.clone(),
            )
        })
        .collect();
    let results = hub.transact_each_and_notify(items, bulk_item)?;
    for ((device_id, module_id, operation), result) in labels.into_iter().zip(results) {
        match result {
            Err(error) => errors.push(DeviceRegistryOperationError {
                device_id,
                error_code: error.code.name().to_owned(),
                error_status: error.message,
                module_id,
                operation,
            }),
            Ok(()) => match (module_id.is_some(), operation.as_deref()) {
                (true, Some("create")) => module_added(hub, &device_id),
                (false, Some("delete" | "deleteIfMatchETag")) => {
                    hub.live.kick_device(&device_id);
                    hub.workload.remove(&device_id);
                }
                _ => {}
            },
        }
    }
    hub.transact_and_notify(|tx| Ok(((), deployments::evaluate(tx)?)))?;
    let result = BulkRegistryOperationResult {
        is_successful: errors.is_empty(),
        errors,
        warnings: Vec::new(),
    };
    let failed = !result.is_successful;
    let mut reply = Reply::ok(result)?;
    if failed {
        reply.status = hyper::StatusCode::BAD_REQUEST;
    }
    Ok(reply)
}

fn bulk_item(
    tx: &crate::store::Transaction<'_>,
    item: ExportImportDevice,
) -> Result<((), Vec<twins::DesiredChange>), ApiError> {
    let mode = item
        .import_mode
        .clone()
        .unwrap_or_else(|| "createOrUpdate".into());
    let id = item.id.clone();
    let if_match = |etag: &Option<String>| etag.clone().unwrap_or_else(|| "*".into());
    if let Some(module_id) = item.module_id.clone() {
        let module = Module {
            module_id: module_id.clone(),
            device_id: id.clone(),
            authentication: item.authentication.clone(),
            ..Module::default()
        };
        match mode.as_str() {
            "create" => registry::create_module(tx, &id, &module_id, module).map(drop)?,
            "update" | "updateIfMatchETag" => {
                registry::update_module(tx, &id, &module_id, module, Some(&if_match(&item.e_tag)))
                    .map(drop)?
            }
            "delete" | "deleteIfMatchETag" => {
                registry::delete_module(tx, &id, &module_id, Some(&if_match(&item.e_tag)))?
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "importMode '{other}' is not supported for modules"
                )))
            }
        }
        return Ok(((), Vec::new()));
    }
    let device = Device {
        device_id: id.clone(),
        status: item.status.clone(),
        status_reason: item.status_reason.clone(),
        authentication: item.authentication.clone(),
        capabilities: item
            .capabilities
            .or(Some(DeviceCapabilities { iot_edge: false })),
        device_scope: item.device_scope.clone(),
        parent_scopes: item.parent_scopes.clone(),
        ..Device::default()
    };
    match mode.as_str() {
        "create" => registry::create_device(tx, &id, device).map(drop)?,
        "createOrUpdate" => match tx.device(&id)? {
            None => registry::create_device(tx, &id, device).map(drop)?,
            Some(_) => registry::update_device(tx, &id, device, Some("*")).map(drop)?,
        },
        "update" | "updateIfMatchETag" => {
            registry::update_device(tx, &id, device, Some(&if_match(&item.e_tag))).map(drop)?
        }
        "delete" | "deleteIfMatchETag" => {
            return registry::delete_device(tx, &id, Some(&if_match(&item.e_tag)))
                .map(|()| ((), Vec::new()))
        }
        "updateTwin" | "updateTwinIfMatchETag" => {}
        other => {
            return Err(ApiError::invalid(format!(
                "importMode '{other}' is not a known import mode"
            )))
        }
    }
    if item.tags.is_none()
        && item
            .properties
            .as_ref()
            .and_then(|p| p.desired.as_ref())
            .is_none()
    {
        return Ok(((), Vec::new()));
    }
    let twin = edgetwin_wire::rest::Twin {
        tags: item.tags,
        properties: item
            .properties
            .map(|p| edgetwin_wire::rest::TwinProperties {
                desired: p.desired,
                reported: None,
            }),
        ..edgetwin_wire::rest::Twin::default()
    };
    let if_match = (mode == "updateTwinIfMatchETag").then(|| if_match(&item.twin_e_tag));
    let change = twins::update_from_service(
        tx,
        &IdentityKey::device(&id),
        twin,
        UpdateMode::Merge,
        if_match.as_deref(),
    )?;
    Ok(((), change.into_iter().collect()))
}
