//! The console's view of the hub's Device Provisioning Service (`GET /console/provisioning`):
//! individual enrollments, enrollment groups and registration states, as rows without any key or
//! certificate. A console session is an IoT Hub policy, not a DPS one; what it is shown here is
//! what `RegistryRead` reads of the registry anyway (ids, states, which hub a device went to), so
//! that is the permission it needs. The DPS service API itself still takes a DPS connection string.

use edgetwin_wire::dps::{
    DeviceRegistrationState, EnrollmentCommon, EnrollmentGroup, IndividualEnrollment,
};
use serde_json::{json, Value};

use crate::store::{DpsTable, StoreError, Transaction};

/// Most records of each kind shown (the first by id); `truncated` says when there are more.
pub const SHOWN: usize = 200;

/// What an enrollment (individual or group) shows: attestation type, status, allocation.
fn enrollment_fields(common: &EnrollmentCommon) -> Value {
    json!({
        "attestation": common.attestation.kind,
        "provisioningStatus": common.provisioning_status.as_deref().unwrap_or("enabled"),
        "allocationPolicy": common.allocation_policy.as_deref().unwrap_or("hashed"),
        "iotEdge": common
            .capabilities
            .as_ref()
            .and_then(|c| c.get("iotEdge"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Adds `id_field: id` to `fields` (an object).
fn with_id(mut fields: Value, id_field: &str, id: &str) -> Value {
    fields[id_field] = json!(id);
    fields
}

/// The view from what is stored, at most `shown` of each kind (pure: the rows and whether any
/// kind had more).
pub fn view(
    enrollments: &[IndividualEnrollment],
    groups: &[EnrollmentGroup],
    registrations: &[(DeviceRegistrationState, Option<String>)],
    shown: usize,
) -> Value {
    let truncated = [enrollments.len(), groups.len(), registrations.len()]
        .iter()
        .any(|&n| n > shown);
    let enrollments: Vec<Value> = enrollments
        .iter()
        .take(shown)
        .map(|e| {
            let mut row = with_id(
                enrollment_fields(&e.common),
                "registrationId",
                &e.registration_id,
            );
            row["deviceId"] = json!(e.device_id);
            row
        })
        .collect();
    let groups: Vec<Value> = groups
        .iter()
        .take(shown)
        .map(|g| {
            with_id(
                enrollment_fields(&g.common),
                "enrollmentGroupId",
                &g.enrollment_group_id,
            )
        })
        .collect();
    let registrations: Vec<Value> = registrations
        .iter()
        .take(shown)
        .map(|(state, group)| {
            json!({
                "registrationId": state.registration_id,
                "enrollmentGroupId": group,
                "status": state.status,
                "substatus": state.substatus,
                "deviceId": state.device_id,
                "assignedHub": state.assigned_hub,
                "errorCode": state.error_code,
                "lastUpdatedDateTimeUtc": state.last_updated_date_time_utc,
            })
        })
        .collect();
    json!({
        "enrollments": enrollments,
        "enrollmentGroups": groups,
        "registrations": registrations,
        "truncated": truncated,
    })
}

/// Reads the view from the store.
pub fn read(tx: &Transaction<'_>) -> Result<Value, StoreError> {
    let enrollments: Vec<IndividualEnrollment> =
        tx.dps_records(DpsTable::Enrollments, "", SHOWN + 1, None)?;
    let groups: Vec<EnrollmentGroup> = tx.dps_records(DpsTable::Groups, "", SHOWN + 1, None)?;
    let registrations = crate::dps::registrations(tx, SHOWN + 1)?;
    Ok(view(&enrollments, &groups, &registrations, SHOWN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgetwin_wire::dps::{AttestationMechanism, SymmetricKeyAttestation};
    use edgetwin_wire::Secret;

    fn common(kind: &str) -> EnrollmentCommon {
        EnrollmentCommon {
            attestation: AttestationMechanism {
                kind: kind.into(),
                symmetric_key: Some(SymmetricKeyAttestation {
                    primary_key: Some(Secret::new("cHJpbWFyeS1rZXk=")),
                    secondary_key: Some(Secret::new("c2Vjb25kYXJ5LWtleQ==")),
                }),
                ..AttestationMechanism::default()
            },
            capabilities: Some(json!({"iotEdge": true})),
            ..EnrollmentCommon::default()
        }
    }

    #[test]
    fn rows_show_ids_states_and_hubs_but_never_a_key() {
        let enrollment = IndividualEnrollment {
            registration_id: "pi-1".into(),
            device_id: Some("pi-1-device".into()),
            common: common("symmetricKey"),
            ..IndividualEnrollment::default()
        };
        let group = EnrollmentGroup {
            enrollment_group_id: "fleet".into(),
            common: EnrollmentCommon {
                provisioning_status: Some("disabled".into()),
                allocation_policy: Some("static".into()),
                ..common("x509")
            },
        };
        let state = DeviceRegistrationState {
            registration_id: "pi-2".into(),
            status: "assigned".into(),
            device_id: Some("pi-2".into()),
            assigned_hub: Some("localhost".into()),
            ..DeviceRegistrationState::default()
        };
        let view = view(
            &[enrollment],
            &[group],
            &[(state, Some("fleet".into()))],
            10,
        );
        let text = view.to_string();
        assert!(
            !text.contains("cHJpbWFyeS1rZXk=") && !text.contains("c2Vjb25kYXJ5"),
            "{text}"
        );
        assert_eq!(view["enrollments"][0]["registrationId"], "pi-1");
        assert_eq!(view["enrollments"][0]["deviceId"], "pi-1-device");
        assert_eq!(view["enrollments"][0]["attestation"], "symmetricKey");
        assert_eq!(view["enrollments"][0]["provisioningStatus"], "enabled");
        assert_eq!(view["enrollments"][0]["allocationPolicy"], "hashed");
        assert_eq!(view["enrollments"][0]["iotEdge"], true);
        assert_eq!(
            view["enrollmentGroups"][0]["provisioningStatus"],
            "disabled"
        );
        assert_eq!(view["enrollmentGroups"][0]["allocationPolicy"], "static");
        assert_eq!(view["registrations"][0]["enrollmentGroupId"], "fleet");
        assert_eq!(view["registrations"][0]["assignedHub"], "localhost");
        assert_eq!(view["truncated"], false);
    }

    #[test]
    fn more_records_than_shown_are_cut_and_said_so() {
        let states: Vec<_> = (0..3)
            .map(|n| {
                let state = DeviceRegistrationState {
                    registration_id: format!("d{n}"),
                    status: "assigned".into(),
                    ..DeviceRegistrationState::default()
                };
                (state, None)
            })
            .collect();
        let view = view(&[], &[], &states, 2);
        assert_eq!(view["registrations"].as_array().unwrap().len(), 2);
        assert_eq!(view["truncated"], true);
    }
}
