//! edgetwin's own routes under `/edgetwin/` (not part of IoT Hub): the Edge environment of a module
//! and the telemetry log. They use the same service authentication as the IoT Hub routes.

use std::sync::Arc;

use edgetwin_wire::edge::{EdgeEnvironment, WorkloadUri, WORKLOAD_API_VERSION};
use edgetwin_wire::rest::Permission;
use hyper::Method;

use super::{not_found, Reply, Request};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::messages::MessageFilter;
use crate::registry;

/// Routes `/edgetwin/...`.
pub fn route(hub: &Arc<Hub>, request: &Request, segments: &[&str]) -> Result<Reply, ApiError> {
    match segments {
        ["edgetwin", "devices", device_id, "modules", module_id, "edgeEnvironment"]
            if request.method == Method::GET =>
        {
            request.require(Permission::RegistryRead)?;
            let environment = edge_environment(hub, device_id, module_id)?;
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
            Reply::ok(hub.messages.list(&filter))
        }
        _ => Err(not_found(request)),
    }
}

/// The `IOTEDGE_*` environment a module of an edge device gets when it runs against this hub.
pub fn edge_environment(
    hub: &Hub,
    device_id: &str,
    module_id: &str,
) -> Result<EdgeEnvironment, ApiError> {
    let module = hub.transact(|tx| {
        let device = tx
            .device(device_id)?
            .ok_or_else(|| registry::device_not_found(device_id))?;
        if !device.capabilities.as_ref().is_some_and(|c| c.iot_edge) {
            return Err(ApiError::invalid(format!(
                "device '{device_id}' is not an IoT Edge device"
            )));
        }
        tx.module(device_id, module_id)?
            .ok_or_else(|| registry::module_not_found(device_id, module_id))
    })?;
    Ok(EdgeEnvironment {
        iothub_host_name: hub.host_name.clone(),
        device_id: device_id.to_owned(),
        module_id: module_id.to_owned(),
        gateway_host_name: hub.host_name.clone(),
        generation_id: module.generation_id.unwrap_or_default(),
        workload_uri: WorkloadUri::Unix(crate::workload::socket_path(&hub.workload_dir, device_id)),
        api_version: WORKLOAD_API_VERSION.to_owned(),
        auth_scheme: "sasToken".to_owned(),
    })
}
