//! edgetwin's own routes under `/edgetwin/` (not part of IoT Hub): the Edge environment of a module,
//! the telemetry log, the Event Hub-compatible endpoint's consumer groups, and fault injection. They use the same service authentication as the IoT Hub routes.
//!
//! Part of the REST door: depends on the hub and its handle (faults, workload sockets); never on
//! another door.

use std::time::Duration;

use edgetwin_wire::edge::{EdgeEnvironment, WorkloadUri, WORKLOAD_API_VERSION};
use edgetwin_wire::rest::{ErrorCode, Permission};
use hyper::Method;

use super::{not_found, Reply, Request, State};
use crate::error::ApiError;
use crate::events;
use crate::faults::{Delay, ServerError, Throttle};
use crate::hub::Hub;
use crate::messages::MessageFilter;
use crate::registry;
use crate::store::GroupAdded;
use crate::workload::{SocketError, WorkloadSockets};
use crate::writer::Effect;

/// Routes `/edgetwin/...`.
pub async fn route(state: &State, request: &Request, segments: &[&str]) -> Result<Reply, ApiError> {
    let hub = &state.hub;
    match segments {
        ["edgetwin", "devices", device_id, "modules", module_id, "edgeEnvironment"]
            if request.method == Method::GET =>
        {
            request.require(Permission::RegistryRead)?;
            let open = match request.may(Permission::RegistryWrite) {
                true => Open::IfClosed,
                false => Open::Never,
            };
            let environment =
                edge_environment(hub, &state.workload, device_id, module_id, open).await?;
            let vars: serde_json::Map<String, serde_json::Value> = environment
                .to_vars()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            Reply::ok(vars)
        }
        ["edgetwin", "messages"] if request.method == Method::GET => {
            request.require(Permission::ServiceConnect)?;
            let filter = MessageFilter {
                device_id: request.query.get("deviceId").cloned(),
                module_id: request.query.get("moduleId").cloned(),
                output: request.query.get("output").cloned(),
                after: request
                    .query
                    .get("after")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
            };
            Reply::ok(hub.messages(&filter)?)
        }
        ["edgetwin", "faults", ..] => faults(state, request, &segments[2..]),
        ["edgetwin", "consumerGroups", rest @ ..] => consumer_groups(hub, request, rest).await,
        _ => Err(not_found(request)),
    }
}

/// `/edgetwin/faults[/kind]`: GET shows, DELETE lifts all, POST adds one (iothubowner only).
fn faults(state: &State, request: &Request, kind: &[&str]) -> Result<Reply, ApiError> {
    let (hub, faults) = (&state.hub, &state.faults);
    request.require(Permission::RegistryWrite)?;
    request.require(Permission::ServiceConnect)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Seconds {
        seconds: u64,
    }
    /// Longest fault duration accepted (a year): later instants do not fit the clock.
    const MAX_FAULT_SECONDS: u64 = 365 * 24 * 3600;
    let seconds = |request: &Request| -> Result<Duration, ApiError> {
        let Seconds { seconds } = request.json()?;
        if seconds > MAX_FAULT_SECONDS {
            return Err(ApiError::invalid(format!(
                "seconds {seconds} is more than {MAX_FAULT_SECONDS}"
            )));
        }
        Ok(Duration::from_secs(seconds))
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Disconnect {
        client_id: Option<String>,
    }
    match (&request.method, kind) {
        (&Method::GET, []) => Reply::ok(faults.report()),
        (&Method::DELETE, []) => {
            faults.clear();
            Reply::no_content()
        }
        (&Method::POST, ["disconnect"]) => {
            let body: Disconnect = if request.body.is_empty() {
                Disconnect { client_id: None }
            } else {
                request.json()?
            };
            let targets = match body.client_id {
                Some(client_id) => vec![client_id],
                None => hub.live().client_ids(),
            };
            for client_id in &targets {
                hub.live().kick(client_id);
            }
            Reply::ok(serde_json::json!({ "disconnected": targets }))
        }
        (&Method::POST, ["refuseConnects"]) => {
            faults.refuse_connects_for(seconds(request)?);
            Reply::ok(faults.report())
        }
        (&Method::POST, ["tokenLifetime"]) => {
            let lifetime = seconds(request)?;
            faults.set_token_lifetime((!lifetime.is_zero()).then_some(lifetime));
            Reply::ok(faults.report())
        }
        (&Method::POST, ["throttle"]) => {
            faults.add_throttle(request.json::<Throttle>()?);
            Reply::ok(faults.report())
        }
        (&Method::POST, ["serverError"]) => {
            faults.add_server_error(request.json::<ServerError>()?)?;
            Reply::ok(faults.report())
        }
        (&Method::POST, ["delay"]) => {
            faults.add_delay(request.json::<Delay>()?);
            Reply::ok(faults.report())
        }
        _ => Err(not_found(request)),
    }
}

/// `/edgetwin/consumerGroups[/{name}]`: the consumer groups of the Event Hub-compatible
/// endpoint, which IoT Hub manages through Azure Resource Manager only (`az iot hub
/// consumer-group create`): GET lists them (ServiceConnect, as reading events), PUT creates one
/// (idempotent, as ARM's PUT), DELETE removes one (RegistryWrite and ServiceConnect, as
/// iothubowner has). Kept in `hub.db`, across restarts.
async fn consumer_groups(hub: &Hub, request: &Request, name: &[&str]) -> Result<Reply, ApiError> {
    request.require(Permission::ServiceConnect)?;
    let named = |name: &str| serde_json::json!({ "name": name });
    match (&request.method, name) {
        (&Method::GET, []) => {
            let mut names = vec![events::DEFAULT_CONSUMER_GROUP.to_owned()];
            names.extend(hub.read(|tx| Ok(tx.consumer_groups()?))?);
            Reply::ok(names.iter().map(|n| named(n)).collect::<Vec<_>>())
        }
        (&Method::PUT, [name]) => {
            request.require(Permission::RegistryWrite)?;
            Reply::ok(named(&create_consumer_group(hub, name).await?))
        }
        (&Method::DELETE, [name]) => {
            request.require(Permission::RegistryWrite)?;
            if name.eq_ignore_ascii_case(events::DEFAULT_CONSUMER_GROUP) {
                return Err(ApiError::invalid(
                    "consumer group $Default cannot be deleted (IoT Hub's cannot either)",
                ));
            }
            let name = (*name).to_owned();
            let message = format!("consumer group '{name}' does not exist");
            match hub
                .write(move |tx| Ok(tx.delete_consumer_group(&name)?))
                .await?
            {
                true => Reply::no_content(),
                false => Err(ApiError::new(ErrorCode::ArgumentInvalid, message)),
            }
        }
        _ => Err(not_found(request)),
    }
}

/// Creates consumer group `name` unless it exists; its name as stored (the first spelling
/// wins, names being case-insensitive), or why it cannot be created: a name against IoT Hub's
/// rules, or the hub's [`events::MAX_CONSUMER_GROUPS`] reached.
pub async fn create_consumer_group(hub: &Hub, name: &str) -> Result<String, ApiError> {
    if !name.eq_ignore_ascii_case(events::DEFAULT_CONSUMER_GROUP) {
        events::check_consumer_group_name(name).map_err(ApiError::invalid)?;
    }
    let wanted = name.to_owned();
    let added = hub
        .write(move |tx| Ok(tx.add_consumer_group(&wanted, events::MAX_CONSUMER_GROUPS)?))
        .await?;
    match added {
        GroupAdded::Added | GroupAdded::Existed => Ok(name.to_owned()),
        GroupAdded::Full => Err(ApiError::new(
            ErrorCode::IotHubQuotaExceeded,
            format!(
                "consumer group '{name}' not created: the hub has {} consumer groups, IoT Hub's \
                 most ($Default included)",
                events::MAX_CONSUMER_GROUPS
            ),
        )),
    }
}

/// Whether asking for an environment may open the device's workload socket.
pub enum Open {
    /// The caller may write the registry: the socket is recorded and served (within the cap).
    IfClosed,
    /// The caller may only read: nothing is created, and a socket not served already is
    /// refused as a missing RegistryWrite, saying so.
    Never,
}

/// The `IOTEDGE_*` environment a module of an edge device gets when it runs against this hub.
/// With [`Open::IfClosed`], from now on the device's workload socket is served, across
/// restarts, until it is deleted; with [`Open::Never`] this is a read that creates nothing.
pub async fn edge_environment(
    hub: &Hub,
    workload: &WorkloadSockets,
    device_id: &str,
    module_id: &str,
    open: Open,
) -> Result<EdgeEnvironment, ApiError> {
    if !workload.is_on() {
        return Err(ApiError::invalid(SocketError::Off.to_string()));
    }
    let socket_error = |error: SocketError| match error {
        SocketError::Full { .. } => {
            ApiError::new(ErrorCode::IotHubQuotaExceeded, error.to_string())
        }
        SocketError::InvalidId { .. } => ApiError::invalid(error.to_string()),
        _ => {
            tracing::error!(device_id, %error, "no workload socket");
            ApiError::new(ErrorCode::ServerError, error.to_string())
        }
    };
    let record = matches!(open, Open::IfClosed);
    if record {
        workload.has_room_for(device_id).map_err(socket_error)?;
    }
    let (device, module) = (device_id.to_owned(), module_id.to_owned());
    let check = move |tx: &crate::store::Transaction<'_>| {
        let (device_id, module_id) = (device.as_str(), module.as_str());
        let device = tx
            .device(device_id)?
            .ok_or_else(|| registry::device_not_found(device_id))?;
        if !device.capabilities.as_ref().is_some_and(|c| c.iot_edge) {
            return Err(ApiError::invalid(format!(
                "device '{device_id}' is not an IoT Edge device"
            )));
        }
        let module = tx
            .module(device_id, module_id)?
            .ok_or_else(|| registry::module_not_found(device_id, module_id))?;
        let mut effects = Vec::new();
        if record {
            tx.want_workload_socket(device_id)?;
            effects.push(Effect::OpenWorkloadSocket {
                device_id: device_id.to_owned(),
            });
        }
        Ok((module, effects))
    };
    let module = match open {
        Open::IfClosed => hub.write_with_effects(check).await?,
        Open::Never => hub.read(|tx| Ok(check(tx)?.0))?,
    };
    let socket = match open {
        // served since the write committed: its path, or why it could not be served
        Open::IfClosed => workload.ensure(device_id).map_err(socket_error)?,
        Open::Never if workload.is_serving(device_id) => {
            workload.path_of(device_id).map_err(socket_error)?
        }
        Open::Never => {
            return Err(ApiError::new(
                ErrorCode::IotHubUnauthorizedAccess,
                format!(
                    "Unauthorized: the workload socket of edge device '{device_id}' is not open, \
                     and opening it needs RegistryWrite, which this shared access policy does \
                     not grant (a read creates nothing); ask once with iothubowner or \
                     registryReadWrite"
                ),
            ))
        }
    };
    Ok(EdgeEnvironment {
        iothub_host_name: hub.host_name().to_owned(),
        device_id: device_id.to_owned(),
        module_id: module_id.to_owned(),
        gateway_host_name: hub.host_name().to_owned(),
        generation_id: module.generation_id.unwrap_or_default(),
        workload_uri: WorkloadUri::Unix(socket),
        api_version: WORKLOAD_API_VERSION.to_owned(),
        auth_scheme: "sasToken".to_owned(),
    })
}
