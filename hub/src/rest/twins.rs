//! Twin and direct-method routes: `/twins/{id}[/modules/{mid}]` (GET, PATCH, PUT) and
//! `/twins/{id}[/modules/{mid}]/methods` (POST).
//!
//! Part of the REST door: depends on the hub, twins and deployments; never on another door.

use std::sync::Arc;

use edgetwin_wire::rest::{CloudToDeviceMethod, CloudToDeviceMethodResult, Permission, Twin};
use hyper::Method;

use super::{not_found, Reply, Request};
use crate::error::ApiError;
use crate::hub::{update_twin, Hub};
use crate::registry;
use crate::store::{IdentityKey, Transaction};
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
    let view = match mode {
        None => {
            let connected = hub.live().is_connected(&key.client_id());
            hub.read(|tx| twins::service_view(tx, &key, connected))?
        }
        Some(mode) => {
            let input: Twin = request.json()?;
            update(hub, key, mode, request.if_match.clone(), move |_| Ok(input)).await?
        }
    };
    let etag = view.etag.clone();
    Ok(Reply::ok(view)?.with_etag(etag))
}

/// Updates `key`'s tags and desired properties by the twin `input` makes from the stored one
/// (in the same transaction), as a service `PATCH` or `PUT` does, and re-evaluates the
/// deployments and configurations targeting it ([`update_twin`], the write path twin jobs
/// share); returns the twin as the service sees it.
pub(super) async fn update(
    hub: &Arc<Hub>,
    key: IdentityKey,
    mode: UpdateMode,
    if_match: Option<String>,
    input: impl FnOnce(&Transaction<'_>) -> Result<Twin, ApiError> + Send + 'static,
) -> Result<Twin, ApiError> {
    let connected = hub.live().is_connected(&key.client_id());
    hub.write_with_effects(move |tx| {
        let input = input(tx)?;
        let changes = update_twin(tx, &key, input, mode, if_match.as_deref())?;
        Ok((
            twins::service_view(tx, &key, connected)?,
            Effect::desired(changes),
        ))
    })
    .await
}

async fn method(hub: &Arc<Hub>, request: &Request, key: IdentityKey) -> Result<Reply, ApiError> {
    request.require(Permission::ServiceConnect)?;
    let call: CloudToDeviceMethod = request.json()?;
    Reply::ok(invoke(hub, &key, call).await?)
}

/// Invokes a direct method on `key` once it is known to exist.
pub(super) async fn invoke(
    hub: &Arc<Hub>,
    key: &IdentityKey,
    call: CloudToDeviceMethod,
) -> Result<CloudToDeviceMethodResult, ApiError> {
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
    hub.invoke_method(key, call).await
}
