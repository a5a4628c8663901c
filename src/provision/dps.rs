//! `edgetwin provision --dps`: a fleet that provisions itself through the Device Provisioning
//! Service, as operators onboard one in production: a symmetric-key enrollment group (kept if it
//! exists), then per device its key derived from the group's
//! (`Base64(HMAC-SHA256(Base64Decode(groupKey), registrationId))`) in a ready aziot
//! `config.toml` (`[provisioning] source = "dps"`), one directory per device, mode 0600. The
//! devices register themselves when they start; nothing is created in the hub here.

use std::path::{Path, PathBuf};

use edgetwin_wire::dps::{self, AttestationMechanism, EnrollmentCommon, EnrollmentGroup};
use edgetwin_wire::Secret;
use serde_json::json;

use super::client::ServiceClient;
use super::edge_config;
use super::error::ProvisionError;
use super::fleet::write_private;

/// What to write for the fleet.
#[derive(Debug, Clone)]
pub struct DpsFleet {
    /// The enrollment group's id.
    pub group: String,
    /// Registration ids are `{prefix}1` … `{prefix}{count}`.
    pub prefix: String,
    /// How many devices.
    pub count: usize,
    /// Whether the group's devices are IoT Edge devices.
    pub edge: bool,
    /// `{out}/{registration id}/config.toml`.
    pub out: PathBuf,
    /// The id scope devices register under.
    pub id_scope: String,
    /// The DPS endpoint URL the devices dial.
    pub global_endpoint: String,
    /// The CA the devices trust, if not the system's.
    pub ca_file: Option<PathBuf>,
}

/// Makes (or reads) the enrollment group through `client` (signed with a DPS connection string)
/// and writes every device's config; returns the files written.
pub async fn provision(
    client: &ServiceClient,
    fleet: &DpsFleet,
) -> Result<Vec<PathBuf>, ProvisionError> {
    let key = group_key(client, fleet).await?;
    let mut written = Vec::with_capacity(fleet.count);
    for n in 1..=fleet.count {
        let registration_id = format!("{}{n}", fleet.prefix);
        dps::check_registration_id(&registration_id)
            .map_err(|e| ProvisionError::Input(format!("--prefix: {}", e.message)))?;
        let device_key = dps::derive_device_key(&key, &registration_id).map_err(|_| {
            ProvisionError::Input(format!(
                "enrollment group '{}' has a key that is not base64",
                fleet.group
            ))
        })?;
        let dir = fleet.out.join(&registration_id);
        create_private_dir(&dir)?;
        let path = dir.join("config.toml");
        write_private(
            &path,
            &edge_config::render_dps(
                &fleet.global_endpoint,
                &fleet.id_scope,
                &registration_id,
                device_key.expose(),
                fleet.ca_file.as_deref(),
            ),
        )?;
        written.push(path);
    }
    Ok(written)
}

/// The group's primary key: from its attestation mechanism, or from the group created now.
async fn group_key(client: &ServiceClient, fleet: &DpsFleet) -> Result<Secret, ProvisionError> {
    let attestation = match client.enrollment_group_attestation(&fleet.group).await? {
        Some(attestation) => attestation,
        None => {
            let group = EnrollmentGroup {
                enrollment_group_id: fleet.group.clone(),
                common: EnrollmentCommon {
                    attestation: AttestationMechanism {
                        kind: "symmetricKey".into(),
                        ..AttestationMechanism::default()
                    },
                    capabilities: Some(json!({ "iotEdge": fleet.edge })),
                    ..EnrollmentCommon::default()
                },
            };
            client
                .put_enrollment_group(&group)
                .await?
                .common
                .attestation
        }
    };
    attestation
        .keys()
        .map(|(primary, _)| primary.clone())
        .ok_or_else(|| {
            ProvisionError::Input(format!(
                "enrollment group '{}' does not use symmetric keys (its attestation is '{}')",
                fleet.group, attestation.kind
            ))
        })
}

/// Creates `dir` (and its parents) mode 0700: it holds a device's key.
fn create_private_dir(dir: &Path) -> Result<(), ProvisionError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ProvisionError::Io {
            path: dir.display().to_string(),
            source,
        })
}
