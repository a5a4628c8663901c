//! A device's registration with the provisioning service, from its attestation to its
//! registration state: the allocation (`edgetwin_wire::dps::allocate`, or the enrollment's
//! custom allocation webhook), the identity and twin written on the assigned hub (this one, or a
//! linked hub through its service REST API), reprovisioning as the enrollment's policy says
//! (`edgetwin_wire::dps::reprovision`: the twin migrated from the old hub, or reset to the
//! initial twin; the old hub's identity removed), and the state stored and remembered for
//! polling.
//!
//! Beside the core, as `job_runner` is: depends on the hub and on `dps`; the DPS doors call it.

use edgetwin_wire::dps::{self, Allocation, DpsError, RegistrationOperationStatus, TwinFate};
use edgetwin_wire::rest::ErrorCode;
use serde_json::Value;

use crate::dps::{Attested, Plan, TwinSections};
use crate::hub::Hub;
use crate::writer::Effect;

/// Registers an attested device and remembers the finished operation for polling; answers the
/// operation as DPS first does, `assigning`, with its id. A registration the enrollment or a
/// hub refuses finishes `failed` (its `errorCode` and `errorMessage` in the state).
pub async fn register(
    hub: &Hub,
    attested: Attested,
    payload: Option<Value>,
) -> Result<RegistrationOperationStatus, DpsError> {
    let plan = hub.read(|tx| Ok(crate::dps::plan(tx, &attested)))??;
    let state = if plan.disabled() {
        plan.disabled_state()
    } else {
        let state = match assign(hub, &plan, payload).await {
            Ok(state) => state,
            Err(error) => {
                tracing::info!(
                    registration_id = plan.registration_id,
                    code = error.code,
                    message = %error.message,
                    "DPS registration failed"
                );
                plan.failed_state(&error)
            }
        };
        let group = plan.group.clone();
        hub.write_dps(move |tx| crate::dps::record(tx, state, group))
            .await?
    };
    let operation_id = crate::dps::operation_id();
    let finished = RegistrationOperationStatus {
        operation_id: operation_id.clone(),
        status: state.status.clone(),
        registration_state: Some(state),
    };
    hub.dps()
        .operations()
        .record(&plan.registration_id, finished);
    Ok(RegistrationOperationStatus {
        operation_id,
        status: "assigning".into(),
        registration_state: None,
    })
}

/// Allocates the device of `plan`, writes its identity and twin on the hub allocated, removes
/// it from the hub it leaves; the `assigned` state.
async fn assign(
    hub: &Hub,
    plan: &Plan,
    payload: Option<Value>,
) -> Result<dps::DeviceRegistrationState, DpsError> {
    let service = hub.dps();
    let policy = plan.common.reprovision_policy.unwrap_or_default();
    let current = plan.current();
    let stays = current
        .map(|(hub, _)| hub)
        .filter(|_| !policy.update_hub_assignment);
    let allocation = dps::allocate(
        &plan.common,
        service.linked_hubs(),
        &plan.registration_id,
        stays,
    )?;
    let (target, webhook_twin, payload) = match allocation {
        Allocation::Hub(target) => (target, None, None),
        Allocation::Custom { linked_hubs } => {
            let answer = service
                .allocate_by_webhook(plan, payload, linked_hubs)
                .await?;
            (
                answer.iot_hub_host_name,
                answer.initial_twin,
                answer.payload,
            )
        }
    };
    let (fate, substatus, leaves) = dps::reprovision(current.map(|(h, _)| h), &target, policy);
    let twin = match (fate, current) {
        (TwinFate::Initial | TwinFate::Reset, _) => Some(crate::dps::initial_sections(
            // the webhook's initial twin, where one applies, else the enrollment's (Microsoft
            // Learn, custom allocation policies, "Implementation details")
            webhook_twin.as_ref().or(plan.common.initial_twin.as_ref()),
        )?),
        (TwinFate::Migrated, Some((old_hub, old_id))) => twin_on(hub, old_hub, old_id).await?,
        _ => None,
    };
    write_identity(hub, &target, plan, twin, fate == TwinFate::Initial).await?;
    if let Some((old_hub, old_id)) = current.filter(|_| leaves) {
        // the device is assigned: a copy left behind is logged, not a failed registration
        if let Err(error) = remove(hub, old_hub, old_id).await {
            tracing::warn!(old_hub, device_id = old_id, code = error.code, message = %error.message,
                "the device moved, its identity on the old hub could not be removed");
        }
    }
    Ok(plan.assigned_state(&target, substatus, payload))
}

/// The twin of `device_id` on `host` (this hub or a linked one), if it is there.
async fn twin_on(hub: &Hub, host: &str, device_id: &str) -> Result<Option<TwinSections>, DpsError> {
    if hub.dps().is_own(host) {
        return hub.read(|tx| Ok(crate::dps::local_twin(tx, device_id)))?;
    }
    match hub.dps().client(host) {
        Some(client) => crate::dps::remote_twin(&client, device_id).await,
        None => {
            tracing::warn!(
                host,
                "the device's old hub is no longer linked: its twin stays there"
            );
            Ok(None)
        }
    }
}

/// Creates or updates the identity of `plan` on `host` with `twin`
/// ([`crate::dps::assign_here`], [`crate::dps::assign_remote`]).
async fn write_identity(
    hub: &Hub,
    host: &str,
    plan: &Plan,
    twin: Option<TwinSections>,
    only_if_created: bool,
) -> Result<(), DpsError> {
    let device = plan.device.clone();
    if hub.dps().is_own(host) {
        return hub
            .write_dps(move |tx| {
                crate::dps::assign_here(tx, device, twin.as_ref(), only_if_created)
            })
            .await;
    }
    let client = hub
        .dps()
        .client(host)
        .ok_or_else(|| DpsError::new(500001, format!("IoT hub '{host}' is not linked")))?;
    crate::dps::assign_remote(&client, device, twin.as_ref(), only_if_created).await
}

/// Deletes `device_id` from `host` (a connected device of this hub is disconnected); one that
/// is not there is no error.
async fn remove(hub: &Hub, host: &str, device_id: &str) -> Result<(), DpsError> {
    if hub.dps().is_own(host) {
        let id = device_id.to_owned();
        return match hub
            .write_with_effects(move |tx| {
                crate::registry::delete_device(tx, &id, None)?;
                Ok(((), vec![Effect::KickDevice { device_id: id }]))
            })
            .await
        {
            Err(error) if error.code == ErrorCode::DeviceNotFound => Ok(()),
            other => Ok(other?),
        };
    }
    match hub.dps().client(host) {
        Some(client) => client
            .delete_device(device_id)
            .await
            .map_err(|e| DpsError::new(500001, format!("IoT hub '{host}': {e}"))),
        None => Err(DpsError::new(
            500001,
            format!("IoT hub '{host}' is no longer linked"),
        )),
    }
}
