//! Identity routes: `/devices[/{id}[/modules[/{mid}]]]`, bulk `POST /devices`,
//! `POST /devices/{id}/applyConfigurationContent` and `/statistics/*`.
//!
//! Part of the REST door: depends on the hub, registry and deployments; never on another door.

use std::collections::HashSet;

use edgetwin_wire::rest::{
    BulkRegistryOperationResult, ConfigurationContent, Device, DeviceCapabilities,
    DeviceRegistryOperationError, ErrorCode, ExportImportDevice, ImportMode, Module, Permission,
};
use hyper::Method;
use serde_json::json;

use super::{not_found, Reply, Request, State};
use crate::deployments;
use crate::error::ApiError;
use crate::hub::{Caller, Hub};
use crate::registry;
use crate::store::IdentityKey;
use crate::twins::{self, UpdateMode};
use crate::writer::Effect;

/// Most items in one bulk request, as IoT Hub allows.
pub const MAX_BULK_ITEMS: usize = 100;

/// Routes identity requests.
pub async fn route(state: &State, request: &Request, segments: &[&str]) -> Result<Reply, ApiError> {
    let hub = &state.hub;
    let method = &request.method;
    match segments {
        ["statistics", "devices"] if method == Method::GET => {
            request.require(Permission::RegistryRead)?;
            let (total, enabled) = hub.read(|tx| Ok(tx.device_counts()?))?;
            Reply::ok(json!({
                "totalDeviceCount": total,
                "enabledDeviceCount": enabled,
                "disabledDeviceCount": total - enabled,
            }))
        }
        ["statistics", "service"] if method == Method::GET => {
            request.require(Permission::ServiceConnect)?;
            let devices = hub
                .live()
                .client_ids()
                .iter()
                .filter(|c| !c.contains('/'))
                .count();
            Reply::ok(json!({ "connectedDeviceCount": devices }))
        }
        ["devices"] if method == Method::GET => {
            request.require(Permission::RegistryRead)?;
            let mut devices = hub.read(|tx| Ok(tx.devices(request.top())?))?;
            for device in &mut devices {
                set_connection_state(hub, &mut device.connection_state, &device.device_id);
            }
            Reply::ok(devices)
        }
        ["devices"] if method == Method::POST => bulk(state, request).await,
        ["devices", id] => device(state, request, id).await,
        ["devices", id, "modules"] if method == Method::GET => {
            request.require_for_modules_of(id, Permission::RegistryRead)?;
            let modules = hub.read(|tx| {
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
        ["devices", id, "modules", module_id] => module(state, request, id, module_id).await,
        // IoT Hub's "purge command queue": `{"totalMessagesPurged": n, "deviceId": id}`
        ["devices", id, "commands"] if method == Method::DELETE => {
            request.require(Permission::ServiceConnect)?;
            let device_id = (*id).to_owned();
            let purged = hub
                .write(move |tx| crate::c2d_queue::purge(tx, &device_id, crate::ids::now_unix_ms()))
                .await?;
            Reply::ok(serde_json::json!({"totalMessagesPurged": purged, "deviceId": id}))
        }
        ["devices", id, "applyConfigurationContent"] if method == Method::POST => {
            request.require(Permission::ServiceConnect)?;
            let content: ConfigurationContent = request.json()?;
            // An edge device told to run modules on its own (not by an at-scale deployment,
            // which would open a socket per targeted device): its modules will want the
            // device's workload socket.
            let runs_modules = content
                .modules_content
                .as_ref()
                .and_then(|modules| modules.get("$edgeAgent")?.get("properties.desired"))
                .and_then(|desired| desired.get("modules"))
                .is_some_and(|modules| !modules.is_null());
            let device_id = id.to_string();
            hub.write_with_effects(move |tx| {
                let changes = deployments::apply_configuration_content(tx, &device_id, &content)?;
                let mut effects = Effect::desired(changes);
                if runs_modules {
                    tx.want_workload_socket(&device_id)?;
                    effects.push(Effect::OpenWorkloadSocket { device_id });
                }
                Ok(((), effects))
            })
            .await?;
            Reply::no_content()
        }
        _ => Err(not_found(request)),
    }
}

fn is_edge(device: &Device) -> bool {
    device.capabilities.as_ref().is_some_and(|c| c.iot_edge)
}

fn set_connection_state(hub: &Hub, state: &mut Option<String>, client_id: &str) {
    let connected = hub.live().is_connected(client_id);
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

async fn device(state: &State, request: &Request, id: &str) -> Result<Reply, ApiError> {
    let hub = &state.hub;
    let if_match = request.if_match.clone();
    let device = match request.method {
        Method::GET => {
            request.require(Permission::RegistryRead)?;
            let mut device =
                hub.read(|tx| tx.device(id)?.ok_or_else(|| registry::device_not_found(id)))?;
            set_connection_state(hub, &mut device.connection_state, id);
            device
        }
        Method::PUT => {
            request.require(Permission::RegistryWrite)?;
            let input: Device = request.json()?;
            let device_id = id.to_owned();
            let device = hub
                .write_with_effects(move |tx| {
                    let id = device_id.as_str();
                    let device = match if_match {
                        None => registry::create_device(tx, id, input)?,
                        Some(_) => registry::update_device(tx, id, input, if_match.as_deref())?,
                    };
                    let mut effects = Effect::desired(deployments::evaluate_devices(tx, [id])?);
                    if device.status.as_deref() == Some("disabled") {
                        effects.push(Effect::KickDevice {
                            device_id: id.to_owned(),
                        });
                    }
                    Ok((device, effects))
                })
                .await?;
            device
        }
        Method::DELETE => {
            request.require(Permission::RegistryWrite)?;
            let device_id = id.to_owned();
            hub.write_with_effects(move |tx| {
                registry::delete_device(tx, &device_id, if_match.as_deref())?;
                Ok(((), device_deleted(device_id)))
            })
            .await?;
            return Reply::no_content();
        }
        _ => return Err(not_found(request)),
    };
    let etag = device.etag.clone();
    Ok(Reply::ok(device)?.with_etag(etag))
}

async fn module(
    state: &State,
    request: &Request,
    device_id: &str,
    module_id: &str,
) -> Result<Reply, ApiError> {
    let hub = &state.hub;
    let if_match = request.if_match.clone();
    let ids = (device_id.to_owned(), module_id.to_owned());
    let module = match request.method {
        Method::GET => {
            request.require_for_modules_of(device_id, Permission::RegistryRead)?;
            hub.read(|tx| {
                tx.device(device_id)?
                    .ok_or_else(|| registry::device_not_found(device_id))?;
                tx.module(device_id, module_id)?
                    .ok_or_else(|| registry::module_not_found(device_id, module_id))
            })?
        }
        Method::PUT => {
            request.require_for_modules_of(device_id, Permission::RegistryWrite)?;
            let by_own_device = matches!(request.caller, Caller::EdgeDevice(_));
            let input: Module = request.json()?;
            let added = if_match.is_none();
            let module = hub
                .write_with_effects(move |tx| {
                    let (device_id, module_id) = (ids.0.as_str(), ids.1.as_str());
                    let mut effects = Vec::new();
                    let module = match if_match.as_deref() {
                        None => {
                            let module = registry::create_module(tx, device_id, module_id, input)?;
                            // a new module twin gets what the device's deployment has for it
                            let deployments = deployments::Deployments::load(tx)?;
                            let mut changes = deployments::give_new_module_its_content(
                                tx,
                                &deployments,
                                device_id,
                                module_id,
                            )?;
                            // and what the module configurations targeting it set
                            changes
                                .extend(deployments.evaluate_module_configurations(tx, device_id)?);
                            effects = Effect::desired(changes);
                            module
                        }
                        etag => registry::update_module(
                            tx,
                            device_id,
                            module_id,
                            input,
                            etag,
                            by_own_device,
                        )?,
                    };
                    // a module identity added to an edge device: its workload socket is wanted
                    if added && tx.device(device_id)?.is_some_and(|d| is_edge(&d)) {
                        tx.want_workload_socket(device_id)?;
                        effects.push(Effect::OpenWorkloadSocket {
                            device_id: device_id.to_owned(),
                        });
                    }
                    Ok((module, effects))
                })
                .await?;
            module
        }
        Method::DELETE => {
            request.require_for_modules_of(device_id, Permission::RegistryWrite)?;
            hub.write_with_effects(move |tx| {
                registry::delete_module(tx, &ids.0, &ids.1, if_match.as_deref())?;
                let client_id = IdentityKey::module(&ids.0, &ids.1).client_id();
                Ok(((), vec![Effect::Kick { client_id }]))
            })
            .await?;
            return Reply::no_content();
        }
        _ => return Err(not_found(request)),
    };
    let etag = module.etag.clone();
    Ok(Reply::ok(with_live_state(hub, module))?.with_etag(etag))
}

/// Bulk `POST /devices`: up to 100 items, each applied on its own; 400 with the per-item errors if
/// any failed (the others still land), as IoT Hub does.
async fn bulk(state: &State, request: &Request) -> Result<Reply, ApiError> {
    let hub = &state.hub;
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
    // IoT Hub adds a module only to a device registered before the request: a device and its
    // modules in one request fail the modules with DeviceNotFound.
    let registered_before: HashSet<String> = hub.read(|tx| {
        let mut registered = HashSet::new();
        for item in items.iter().filter(|i| i.module_id.is_some()) {
            if tx.device(&item.id)?.is_some() {
                registered.insert(item.id.clone());
            }
        }
        Ok(registered)
    })?;
    let mut errors = Vec::new();
    let labels: Vec<_> = items
        .iter()
        .map(|item| {
            (
                item.id.clone(),
                item.module_id.clone(),
                item.import_mode.unwrap_or(ImportMode::CreateOrUpdate),
            )
        })
        .collect();
    let devices: std::collections::BTreeSet<String> = items.iter().map(|i| i.id.clone()).collect();
    // The items (a savepoint each: a failing one is rolled back alone), then the deployments
    // evaluated once for the request's devices, in one transaction.
    let results = hub
        .write_with_effects(move |tx| {
            let mut effects = Vec::new();
            let deployments = deployments::Deployments::load(tx)?;
            let results: Vec<Result<(), ApiError>> = tx
                .each(items, |tx, item| {
                    bulk_item(tx, item, &registered_before, &deployments)
                })?
                .into_iter()
                .map(|result| result.map(|((), item_effects)| effects.extend(item_effects)))
                .collect();
            let devices = devices.iter().map(String::as_str);
            effects.extend(Effect::desired(deployments::evaluate_devices(tx, devices)?));
            Ok((results, effects))
        })
        .await?;
    for ((device_id, module_id, mode), result) in labels.into_iter().zip(results) {
        if let Err(error) = result {
            errors.push(DeviceRegistryOperationError {
                device_id,
                error_code: error.code.name().to_owned(),
                error_status: error.message,
                module_id,
                operation: Some(mode.name().to_owned()),
            });
        }
    }

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

/// The `If-Match` a bulk item's etag stands for: its exact value (the body's etags are compared
/// as they are, quoted or not), or `*` for the modes that ignore etags.
fn item_if_match(checks: bool, etag: &Option<String>, field: &str) -> Result<String, ApiError> {
    if !checks {
        return Ok("*".into());
    }
    match etag.as_deref().map(|e| e.trim_matches('"')) {
        Some(etag) if !etag.is_empty() => Ok(format!("\"{etag}\"")),
        _ => Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            format!("{field} is required by this importMode"),
        )),
    }
}

/// Applies one bulk item inside the request's transaction.
fn bulk_item(
    tx: &crate::store::Transaction<'_>,
    item: ExportImportDevice,
    registered_before: &HashSet<String>,
    deployments: &deployments::Deployments,
) -> Result<((), Vec<Effect>), ApiError> {
    let mode = item.import_mode.unwrap_or(ImportMode::CreateOrUpdate);
    let id = item.id.clone();
    if item.module_id.is_some() && !registered_before.contains(&id) {
        return Err(ApiError::new(
            ErrorCode::DeviceNotFound,
            format!(
                "device '{id}' must be registered before a request adds its modules; send the \
                 device in an earlier request"
            ),
        ));
    }
    let identity = BulkIdentity::of(&item);
    let twin_mode = matches!(
        mode,
        ImportMode::UpdateTwin | ImportMode::UpdateTwinIfMatchETag
    );
    // the etag applies only to an identity that exists: createOrUpdateIfMatchETag creates a
    // missing one without it
    let if_match = || item_if_match(mode.checks_etag(), &item.e_tag, "eTag");
    let mut changes = Vec::new();
    match mode {
        ImportMode::Create => changes = identity.create(tx, deployments)?,
        ImportMode::CreateOrUpdate | ImportMode::CreateOrUpdateIfMatchETag => {
            if identity.exists(tx)? {
                identity.update(tx, &if_match()?)?;
            } else {
                changes = identity.create(tx, deployments)?;
            }
        }
        ImportMode::Update | ImportMode::UpdateIfMatchETag => identity.update(tx, &if_match()?)?,
        ImportMode::Delete | ImportMode::DeleteIfMatchETag => {
            identity.delete(tx, &if_match()?)?;
            // Modules imported in bulk open no workload socket (a fleet imported in bulk would
            // hold one file descriptor per edge device), now or at a restart; theirs opens when
            // a module's Edge environment is asked for. A deleted device's closes.
            return Ok(((), identity.deleted()));
        }
        ImportMode::UpdateTwin | ImportMode::UpdateTwinIfMatchETag => {
            if !identity.exists(tx)? {
                return Err(identity.not_found());
            }
        }
    }
    let desired = item.properties.and_then(|p| p.desired);
    if item.tags.is_none() && desired.is_none() {
        return Ok(((), Effect::desired(changes)));
    }
    let twin = edgetwin_wire::rest::Twin {
        tags: item.tags,
        properties: Some(edgetwin_wire::rest::TwinProperties {
            desired,
            reported: None,
        }),
        ..edgetwin_wire::rest::Twin::default()
    };
    let twin_if_match = item_if_match(
        mode == ImportMode::UpdateTwinIfMatchETag,
        &item.twin_e_tag,
        "twinETag",
    )?;
    let change = twins::update_from_service(
        tx,
        &identity.key(),
        twin,
        UpdateMode::Merge,
        twin_mode.then_some(twin_if_match.as_str()),
    )?;
    changes.extend(change);
    Ok(((), Effect::desired(changes)))
}

/// What follows the deletion of a device: its clients are disconnected and its workload socket
/// closed.
fn device_deleted(device_id: String) -> Vec<Effect> {
    vec![
        Effect::KickDevice {
            device_id: device_id.clone(),
        },
        Effect::CloseWorkloadSocket { device_id },
    ]
}

/// The identity a bulk item names: a device or one of its modules, with what the item sets.
enum BulkIdentity {
    /// A device item (no `moduleId`).
    Device(Device),
    /// A module item.
    Module(Module),
}

impl BulkIdentity {
    fn of(item: &ExportImportDevice) -> Self {
        match &item.module_id {
            Some(module_id) => BulkIdentity::Module(Module {
                module_id: module_id.clone(),
                device_id: item.id.clone(),
                authentication: item.authentication.clone(),
                ..Module::default()
            }),
            None => BulkIdentity::Device(Device {
                device_id: item.id.clone(),
                status: item.status.clone(),
                status_reason: item.status_reason.clone(),
                authentication: item.authentication.clone(),
                capabilities: item
                    .capabilities
                    .or(Some(DeviceCapabilities { iot_edge: false })),
                device_scope: item.device_scope.clone(),
                parent_scopes: item.parent_scopes.clone(),
                ..Device::default()
            }),
        }
    }

    fn key(&self) -> IdentityKey {
        match self {
            BulkIdentity::Device(d) => IdentityKey::device(&d.device_id),
            BulkIdentity::Module(m) => IdentityKey::module(&m.device_id, &m.module_id),
        }
    }

    fn not_found(&self) -> ApiError {
        match self {
            BulkIdentity::Device(d) => registry::device_not_found(&d.device_id),
            BulkIdentity::Module(m) => registry::module_not_found(&m.device_id, &m.module_id),
        }
    }

    fn exists(&self, tx: &crate::store::Transaction<'_>) -> Result<bool, ApiError> {
        Ok(match self {
            BulkIdentity::Device(d) => tx.device(&d.device_id)?.is_some(),
            BulkIdentity::Module(m) => tx.module(&m.device_id, &m.module_id)?.is_some(),
        })
    }

    /// Creates the identity; a module gets what its device's deployment has for it (the
    /// desired changes returned).
    fn create(
        &self,
        tx: &crate::store::Transaction<'_>,
        deployments: &deployments::Deployments,
    ) -> Result<Vec<twins::DesiredChange>, ApiError> {
        match self {
            BulkIdentity::Device(d) => {
                registry::create_device(tx, &d.device_id, d.clone())?;
                Ok(Vec::new())
            }
            BulkIdentity::Module(m) => {
                registry::create_module(tx, &m.device_id, &m.module_id, m.clone())?;
                deployments::give_new_module_its_content(
                    tx,
                    deployments,
                    &m.device_id,
                    &m.module_id,
                )
            }
        }
    }

    fn update(&self, tx: &crate::store::Transaction<'_>, if_match: &str) -> Result<(), ApiError> {
        match self {
            BulkIdentity::Device(d) => {
                registry::update_device(tx, &d.device_id, d.clone(), Some(if_match)).map(drop)
            }
            BulkIdentity::Module(m) => registry::update_module(
                tx,
                &m.device_id,
                &m.module_id,
                m.clone(),
                Some(if_match),
                false,
            )
            .map(drop),
        }
    }

    /// What follows the deletion of the identity in a bulk request: a device's
    /// [`device_deleted`]; nothing for a module.
    fn deleted(&self) -> Vec<Effect> {
        match self {
            BulkIdentity::Device(d) => device_deleted(d.device_id.clone()),
            BulkIdentity::Module(_) => Vec::new(),
        }
    }

    fn delete(&self, tx: &crate::store::Transaction<'_>, if_match: &str) -> Result<(), ApiError> {
        match self {
            BulkIdentity::Device(d) => registry::delete_device(tx, &d.device_id, Some(if_match)),
            BulkIdentity::Module(m) => {
                registry::delete_module(tx, &m.device_id, &m.module_id, Some(if_match))
            }
        }
    }
}
