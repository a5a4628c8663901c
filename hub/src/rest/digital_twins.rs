//! IoT Plug and Play digital twin routes (REST reference "Digital Twin": Get Digital Twin,
//! Update Digital Twin, Invoke Root Level Command, Invoke Component Command):
//! `/digitaltwins/{id}` (GET, PATCH) and `/digitaltwins/{id}[/components/{component}]/commands/
//! {command}` (POST). The digital twin is a view of the device twin
//! ([`edgetwin_wire::digital_twin`]); an update maps onto its desired properties and a command
//! is a direct method, `{command}` or `{component}*{command}` ("IoT Plug and Play
//! conventions", Commands).
//!
//! The responses are those the service SDKs expect (azure-iot-hub's and the Azure CLI's
//! generated `DigitalTwinOperations`): GET 200 with `ETag`; PATCH 202 with `ETag` and no body;
//! a command 200 with the device's payload as the body and its status in
//! `x-ms-command-statuscode`.
//!
//! Part of the REST door: depends on the hub and twins; never on another door.

use std::sync::Arc;

use edgetwin_wire::digital_twin::{self, PatchOperation};
use edgetwin_wire::rest::{CloudToDeviceMethod, Permission, Twin, TwinProperties};
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::twins::{invoke, update};
use super::{not_found, Reply, Request};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::store::IdentityKey;
use crate::twins::{self, UpdateMode};

/// Routes digital twin requests.
pub async fn route(
    hub: &Arc<Hub>,
    request: &Request,
    segments: &[&str],
) -> Result<Reply, ApiError> {
    match segments {
        ["digitaltwins", id] if request.method == Method::GET => get(hub, request, id),
        ["digitaltwins", id] if request.method == Method::PATCH => patch(hub, request, id).await,
        ["digitaltwins", id, "commands", command] if request.method == Method::POST => {
            invoke_command(hub, request, id, (*command).to_owned()).await
        }
        ["digitaltwins", id, "components", component, "commands", command]
            if request.method == Method::POST =>
        {
            invoke_command(hub, request, id, format!("{component}*{command}")).await
        }
        _ => Err(not_found(request)),
    }
}

fn get(hub: &Arc<Hub>, request: &Request, id: &str) -> Result<Reply, ApiError> {
    request.require(Permission::ServiceConnect)?;
    let (view, etag) = hub.read(|tx| twins::digital_twin_view(tx, id))?;
    Ok(Reply::ok(view)?.with_etag(Some(etag)))
}

async fn patch(hub: &Arc<Hub>, request: &Request, id: &str) -> Result<Reply, ApiError> {
    request.require(Permission::ServiceConnect)?;
    let ops: Vec<PatchOperation> = request.json_any()?;
    let key = IdentityKey::device(id);
    let stored = key.clone();
    let twin = update(
        hub,
        key,
        UpdateMode::Merge,
        request.if_match.clone(),
        move |tx| {
            let (desired, reported) = twins::sections(tx, &stored)?;
            let patch = digital_twin::desired_patch(&ops, &desired, &reported).map_err(|e| {
                ApiError::invalid(format!("the digital twin patch is not valid: {e}"))
            })?;
            Ok(Twin {
                properties: Some(TwinProperties {
                    desired: Some(patch).filter(|p| !p.is_empty()),
                    reported: None,
                }),
                ..Twin::default()
            })
        },
    )
    .await?;
    Ok(Reply {
        status: StatusCode::ACCEPTED,
        body: None,
        etag: twin.etag,
        headers: Vec::new(),
        message: None,
    })
}

/// A timeout in seconds from the query string, as the SDKs send it (`connectTimeoutInSeconds`,
/// `responseTimeoutInSeconds`).
fn seconds(request: &Request, name: &str) -> Result<Option<u64>, ApiError> {
    request
        .query
        .get(name)
        .map(|value| {
            value.parse().map_err(|_| {
                ApiError::invalid(format!("{name} '{value}' is not a whole number of seconds"))
            })
        })
        .transpose()
}

async fn invoke_command(
    hub: &Arc<Hub>,
    request: &Request,
    id: &str,
    method_name: String,
) -> Result<Reply, ApiError> {
    request.require(Permission::ServiceConnect)?;
    let payload = if request.body.trim_ascii().is_empty() {
        None
    } else {
        Some(request.json_any::<Value>()?)
    };
    let call = CloudToDeviceMethod {
        method_name,
        payload,
        response_timeout_in_seconds: seconds(request, "responseTimeoutInSeconds")?,
        connect_timeout_in_seconds: seconds(request, "connectTimeoutInSeconds")?,
    };
    let result = invoke(hub, &IdentityKey::device(id), call).await?;
    let mut reply = Reply::ok(result.payload)?;
    reply
        .headers
        .push(("x-ms-command-statuscode", result.status.to_string()));
    Ok(reply)
}
