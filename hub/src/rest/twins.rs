//! Twin and direct-method routes: `/twins/{id}[/modules/{mid}]` (GET, PATCH, PUT) and
//! `/twins/{id}[/modules/{mid}]/methods` (POST).
//!
//! Part of the REST door: depends on the hub, twins and deployments; never on another door.

use std::sync::Arc;

use edgetwin_wire::rest::{CloudToDeviceMethod, Permission, Twin};
use hyper::Method;

use super::{not_found, Reply, Request};
use crate::error::ApiError;
use crate::hub::{update_twin, Hub};
use crate::registry;
use crate::store::IdentityKey;
use crate::twins::{self, UpdateMode};
use crate::writer::Effect;

/// Routes twin and method requests.
pub async fn route(
    hub: &Arc<Hub>,
    request: &Request,
    segments: &[&str],
) -> Result<Reply, ApiError> {
    match segments {
        ["twins", id] => twin(hub, request, IdentityKey::device(id)).await,
        ["twins", id, "modules", module_id] => {
            twin(hub, request, IdentityKey::module(id, module_id)).await
        }
        ["twins", id, "methods"] if request.method == Method::POST => {
            method(hub, request, IdentityKey::device(id)).await
        }
        ["twins", id, "modules", module_id, "methods"] if request.method == Method::POST => {
            method(hub, request, IdentityKey::module(id, module_id)).await
        }
        _ => Err(not_found(request)),
    }
}

async fn twin(hub: &Arc<Hub>, request: &Request, key: IdentityKey) -> Result<Reply, ApiError> {
    request.require(Permission::ServiceConnect)?;
    let mode = match request.method {
        Method::GET => None,
        Method::PATCH => Some(UpdateMode::Merge),
        Method::PUT => Some(UpdateMode::Replace),
        _ => return Err(not_found(request)),
    };
    let connected = hub.live().is_connected(&key.client_id());
    let view = match mode {
        None => hub.read(|tx| twins::service_view(tx, &key, connected))?,
        Some(mode) => {
            let input: Twin = request.json()?;
            let if_match = request.if_match.clone();
            hub.write_with_effects(move |tx| {
                let changes = update_twin(tx, &key, input, mode, if_match.as_deref())?;
                Ok((
                    twins::service_view(tx, &key, connected)?,
                    Effect::desired(changes),
                ))
            })
            .await?
        }
    };
    let etag = view.etag.clone();
    Ok(Reply::ok(view)?.with_etag(etag))
}

async fn method(hub: &Arc<Hub>, request: &Request, key: IdentityKey) -> Result<Reply, ApiError> {
    request.require(Permission::ServiceConnect)?;
    let call: CloudToDeviceMethod = request.json()?;
    hub.read(|tx| match &key.module_id {
        None => tx
            .device(&key.device_id)?
            .map(drop)
            .ok_or_else(|| registry::device_not_found(&key.device_id)),
        Some(m) => tx
            .module(&key.device_id, m)?
            .map(drop)
            .ok_or_else(|| registry::module_not_found(&key.device_id, m)),
    })?;
    Reply::ok(hub.invoke_method(&key, call).await?)
}
