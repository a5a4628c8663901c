//! Fleets: many edge devices, each with the module identity, through bulk `POST /devices`
//! (100 items per request), paced to the hub's identity-registry quota. IoT Hub adds a module only
//! to a device registered before the request, so each chunk of 100 devices is one request and
//! their modules the next one. Resumable: identities that exist are counted as existing and
//! kept, so a re-run after an interruption finishes the job. Tags from a devices file are set on
//! new devices by the create item and merged into existing devices' twins, so a re-run with an
//! edited file re-tags the fleet for target conditions.
//!
//! Keys of created identities are generated here (32 random bytes, as IoT Hub generates them) so
//! their connection strings are known without reading every identity back; keys of existing
//! identities are read back only when a secrets file is asked for.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::rest::{
    AuthenticationMechanism, DeviceCapabilities, ExportImportDevice, ImportMode, SymmetricKey,
};
use edgetwin_wire::Secret;
use rand::RngCore;
use serde_json::{Map, Value};

use super::client::ServiceClient;
use super::error::ProvisionError;
use super::identities::primary_key;
use super::pacing::{Pacer, S1_TWIN_UPDATES_PER_SECOND};
use super::settings::device_host_name;
use super::twin::twin_patch;

/// Most items in one bulk request (IoT Hub's limit).
pub const MAX_BULK_ITEMS: usize = 100;

/// A device of the fleet and the tags its twin starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetDevice {
    /// Device id.
    pub id: String,
    /// Initial device twin tags (target conditions select on them).
    pub tags: Option<Map<String, Value>>,
}

/// `{prefix}1` … `{prefix}{count}`.
pub fn from_count(prefix: &str, count: usize) -> Vec<FleetDevice> {
    (1..=count)
        .map(|i| FleetDevice {
            id: format!("{prefix}{i}"),
            tags: None,
        })
        .collect()
}

/// The fleet with `tags` on every device, under each device's own tags (which win a shared key).
pub fn with_common_tags(devices: Vec<FleetDevice>, tags: &Map<String, Value>) -> Vec<FleetDevice> {
    devices
        .into_iter()
        .map(|mut device| {
            let mut merged = tags.clone();
            merged.extend(device.tags.take().unwrap_or_default());
            device.tags = Some(merged);
            device
        })
        .collect()
}

/// Splits one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields.into_iter().map(|f| f.trim().to_owned()).collect()
}

/// Sets `tags[a][b]` for a column named `a.b` (a leading `tags.` is dropped).
fn set_tag(tags: &mut Map<String, Value>, column: &str, value: &str) {
    let path = column.strip_prefix("tags.").unwrap_or(column);
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut node = tags;
    for part in parts {
        let entry = node
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        node = next;
    }
    node.insert(last.to_owned(), Value::String(value.to_owned()));
}

/// Parses a devices file: JSON lines (`{"deviceId":"gw-1","tags":{...}}`, `id` also accepted)
/// or CSV with a header whose first column is `deviceId` (or `id`) and whose other columns are
/// tags (`location.building` nests; values are strings; empty cells are skipped). Errors name the
/// line. Ids must be unique.
pub fn parse_devices_file(text: &str, origin: &str) -> Result<Vec<FleetDevice>, ProvisionError> {
    let bad = |line: usize, why: String| ProvisionError::Input(format!("{origin}:{line}: {why}"));
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let mut devices = Vec::new();
    let Some((first_no, first)) = lines.next() else {
        return Ok(devices);
    };
    if first.starts_with('{') {
        for (no, line) in std::iter::once((first_no, first)).chain(lines) {
            let value: Value =
                serde_json::from_str(line).map_err(|e| bad(no, format!("not valid JSON: {e}")))?;
            let id = value
                .get("deviceId")
                .or_else(|| value.get("id"))
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| bad(no, "no \"deviceId\" string".into()))?;
            let tags = match value.get("tags") {
                None | Some(Value::Null) => None,
                Some(Value::Object(tags)) => Some(tags.clone()),
                Some(_) => return Err(bad(no, "\"tags\" must be an object".into())),
            };
            devices.push(FleetDevice {
                id: id.to_owned(),
                tags,
            });
        }
    } else {
        let header = csv_fields(first);
        if !matches!(header.first().map(String::as_str), Some("deviceId" | "id")) {
            return Err(bad(
                first_no,
                "the CSV header must start with deviceId (or give JSON lines)".into(),
            ));
        }
        for (no, line) in lines {
            let fields = csv_fields(line);
            if fields.len() > header.len() {
                return Err(bad(
                    no,
                    format!("{} fields, the header has {}", fields.len(), header.len()),
                ));
            }
            let id = fields
                .first()
                .filter(|id| !id.is_empty())
                .ok_or_else(|| bad(no, "empty deviceId".into()))?;
            let mut tags = Map::new();
            for (column, value) in header.iter().zip(&fields).skip(1) {
                if !value.is_empty() {
                    set_tag(&mut tags, column, value);
                }
            }
            devices.push(FleetDevice {
                id: id.clone(),
                tags: (!tags.is_empty()).then_some(tags),
            });
        }
    }
    for device in &devices {
        edgetwin_wire::ids::check_connection_string_id(&device.id).map_err(|why| {
            ProvisionError::Input(format!("{origin}: deviceId '{}' {why}", device.id))
        })?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = devices.iter().find(|d| !seen.insert(d.id.as_str())) {
        return Err(ProvisionError::Input(format!(
            "{origin}: device '{}' is listed more than once",
            dup.id
        )));
    }
    Ok(devices)
}

/// A new random 32-byte key, base64, as IoT Hub generates.
pub fn new_key() -> Secret {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    Secret::new(BASE64.encode(bytes))
}

fn sas(key: &Secret) -> AuthenticationMechanism {
    AuthenticationMechanism {
        auth_type: Some("sas".into()),
        symmetric_key: Some(SymmetricKey {
            primary_key: Some(key.clone()),
            secondary_key: Some(new_key()),
        }),
        x509_thumbprint: None,
    }
}

/// One bulk request item with the primary key it carries.
#[derive(Debug, Clone)]
pub struct PlannedItem {
    /// The bulk item.
    pub item: ExportImportDevice,
    /// Its primary key (known if the hub creates it).
    pub key: Secret,
}

/// Up to [`MAX_BULK_ITEMS`] devices and their modules: the devices go in one bulk request, the
/// modules in the next, since IoT Hub refuses a module whose device the same request creates.
#[derive(Debug, Clone, Default)]
pub struct PlannedChunk {
    /// Device items.
    pub devices: Vec<PlannedItem>,
    /// Module items, one per device when a module is asked for.
    pub modules: Vec<PlannedItem>,
}

/// Groups the fleet into chunks of at most [`MAX_BULK_ITEMS`] devices, each chunk's modules
/// planned for the request after its devices. Pure apart from `keys`.
pub fn plan_batches(
    devices: &[FleetDevice],
    module_id: Option<&str>,
    edge: bool,
    keys: &mut dyn FnMut() -> Secret,
) -> Vec<PlannedChunk> {
    devices
        .chunks(MAX_BULK_ITEMS)
        .map(|chunk| {
            let mut planned = PlannedChunk::default();
            for device in chunk {
                let key = keys();
                planned.devices.push(PlannedItem {
                    item: ExportImportDevice {
                        id: device.id.clone(),
                        import_mode: Some(ImportMode::Create),
                        status: Some("enabled".into()),
                        authentication: Some(sas(&key)),
                        capabilities: Some(DeviceCapabilities { iot_edge: edge }),
                        tags: device.tags.clone(),
                        ..ExportImportDevice::default()
                    },
                    key,
                });
                if let Some(module_id) = module_id {
                    let key = keys();
                    planned.modules.push(PlannedItem {
                        item: ExportImportDevice {
                            id: device.id.clone(),
                            module_id: Some(module_id.to_owned()),
                            import_mode: Some(ImportMode::Create),
                            authentication: Some(sas(&key)),
                            ..ExportImportDevice::default()
                        },
                        key,
                    });
                }
            }
            planned
        })
        .collect()
}

/// An identity the fleet run could not create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Device id.
    pub device_id: String,
    /// Module id, for a module item.
    pub module_id: Option<String>,
    /// IoT Hub error code name.
    pub code: String,
    /// IoT Hub's message.
    pub message: String,
}

/// What a fleet run did.
#[derive(Debug, Clone, Default)]
pub struct FleetSummary {
    /// Devices asked for.
    pub devices: usize,
    /// Devices created by this run.
    pub devices_created: usize,
    /// Devices that already existed.
    pub devices_existing: usize,
    /// Modules created by this run.
    pub modules_created: usize,
    /// Modules that already existed.
    pub modules_existing: usize,
    /// Existing devices whose twin tags were updated from the devices file.
    pub tags_updated: usize,
    /// Items that failed for another reason.
    pub failures: Vec<Failure>,
    /// Bulk requests sent (retries not counted).
    pub bulk_requests: usize,
    /// HTTP attempts, retries included.
    pub http_attempts: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// The outcome of one item of a bulk response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemOutcome {
    Created,
    Existing,
    Failed,
}

fn is_already_exists(code: &str) -> bool {
    matches!(code, "DeviceAlreadyExists" | "ModuleAlreadyExistsOnDevice")
}

/// Twin updates per minute for tag updates: IoT Hub S1's twin-update quota when registry pacing
/// is on (`rate > 0`), none when it is off.
pub fn twin_update_rate(registry_rate_per_minute: f64) -> f64 {
    if registry_rate_per_minute.is_finite() && registry_rate_per_minute > 0.0 {
        S1_TWIN_UPDATES_PER_SECOND * 60.0
    } else {
        0.0
    }
}

/// Options of a fleet run.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Module identity to create on each device.
    pub module_id: Option<String>,
    /// Create IoT Edge devices.
    pub edge: bool,
    /// Identity-registry requests per minute; 0 for no pacing.
    pub rate_per_minute: f64,
    /// Where to write connection strings (JSON lines, mode 0600).
    pub secrets_file: Option<std::path::PathBuf>,
    /// Show a progress line on stderr when it is a terminal.
    pub progress: bool,
}

fn show_progress(enabled: bool, done: usize, total: usize) {
    if enabled {
        let mut err = std::io::stderr();
        let _ = write!(err, "\rprovisioning devices: {done}/{total}");
        if done == total {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// What the bulk requests of a run have created or found so far.
#[derive(Default)]
struct Outcomes {
    /// (device, module) -> primary key, for created identities.
    created_keys: HashMap<(String, Option<String>), Secret>,
    /// Identities that already existed (their keys are read back for a secrets file).
    existing: Vec<(String, Option<String>)>,
    /// Existing devices whose tags the devices file sets.
    retag: Vec<(String, Map<String, Value>)>,
}

impl Outcomes {
    /// Sends one bulk request and records each item's outcome; returns the ids of the devices
    /// that failed.
    async fn send(
        &mut self,
        client: &ServiceClient,
        batch: &[PlannedItem],
        summary: &mut FleetSummary,
    ) -> Result<std::collections::HashSet<String>, ProvisionError> {
        let items: Vec<ExportImportDevice> = batch.iter().map(|p| p.item.clone()).collect();
        let result = client.bulk(&items).await?;
        summary.bulk_requests += 1;
        let errors: HashMap<(String, Option<String>), (String, String)> = result
            .errors
            .into_iter()
            .map(|e| ((e.device_id, e.module_id), (e.error_code, e.error_status)))
            .collect();
        let mut failed_devices = std::collections::HashSet::new();
        for planned in batch {
            let key = (planned.item.id.clone(), planned.item.module_id.clone());
            let is_module = key.1.is_some();
            let outcome = match errors.get(&key) {
                None => ItemOutcome::Created,
                Some((code, _)) if is_already_exists(code) => ItemOutcome::Existing,
                Some((code, message)) => {
                    summary.failures.push(Failure {
                        device_id: key.0.clone(),
                        module_id: key.1.clone(),
                        code: code.clone(),
                        message: message.clone(),
                    });
                    if !is_module {
                        failed_devices.insert(key.0.clone());
                    }
                    ItemOutcome::Failed
                }
            };
            match (outcome, is_module) {
                (ItemOutcome::Created, false) => summary.devices_created += 1,
                (ItemOutcome::Created, true) => summary.modules_created += 1,
                (ItemOutcome::Existing, false) => summary.devices_existing += 1,
                (ItemOutcome::Existing, true) => summary.modules_existing += 1,
                (ItemOutcome::Failed, _) => {}
            }
            match outcome {
                ItemOutcome::Created => {
                    self.created_keys.insert(key, planned.key.clone());
                }
                ItemOutcome::Existing => {
                    if let (false, Some(tags)) = (is_module, planned.item.tags.as_ref()) {
                        self.retag.push((key.0.clone(), tags.clone()));
                    }
                    self.existing.push(key);
                }
                ItemOutcome::Failed => {}
            }
        }
        Ok(failed_devices)
    }
}

/// Creates the fleet. Identities that exist are kept and counted as existing.
pub async fn run(
    client: &ServiceClient,
    devices: &[FleetDevice],
    options: &FleetOptions,
) -> Result<FleetSummary, ProvisionError> {
    let started = Instant::now();
    let attempts_before = client.attempts();
    let mut pacer = Pacer::per_minute(options.rate_per_minute);
    let mut twin_pacer = Pacer::per_minute(twin_update_rate(options.rate_per_minute));
    let batches = plan_batches(
        devices,
        options.module_id.as_deref(),
        options.edge,
        &mut new_key,
    );
    let progress = options.progress && std::io::stderr().is_terminal();
    let mut summary = FleetSummary {
        devices: devices.len(),
        ..FleetSummary::default()
    };
    let mut outcomes = Outcomes::default();
    let mut done = 0;
    for chunk in &batches {
        tokio::time::sleep(pacer.reserve(Instant::now())).await;
        let failed_devices = outcomes.send(client, &chunk.devices, &mut summary).await?;
        // A module of a device that could not be created would only fail with DeviceNotFound.
        let modules: Vec<PlannedItem> = chunk
            .modules
            .iter()
            .filter(|m| !failed_devices.contains(&m.item.id))
            .cloned()
            .collect();
        if !modules.is_empty() {
            tokio::time::sleep(pacer.reserve(Instant::now())).await;
            outcomes.send(client, &modules, &mut summary).await?;
        }
        // A create item's tags only reach new devices: existing ones get a twin PATCH (merge),
        // so a re-run with an edited devices file lets target conditions select them.
        for (device_id, tags) in std::mem::take(&mut outcomes.retag) {
            tokio::time::sleep(twin_pacer.reserve(Instant::now())).await;
            let patch = twin_patch(None, Some(tags));
            match client.patch_twin(&device_id, None, &patch).await {
                Ok(_) => summary.tags_updated += 1,
                Err(edgetwin_service::Error::Service(e)) => summary.failures.push(Failure {
                    device_id,
                    module_id: None,
                    code: e.code.clone().unwrap_or_else(|| e.status.to_string()),
                    message: format!("updating the twin tags: {}", e.message),
                }),
                Err(e) => return Err(e.into()),
            }
        }
        done += chunk.devices.len();
        show_progress(progress, done, devices.len());
    }
    let Outcomes {
        mut created_keys,
        existing,
        ..
    } = outcomes;
    if let Some(path) = &options.secrets_file {
        // Existing identities' keys are read back (paced too); nothing is rotated.
        for (device_id, module_id) in existing {
            tokio::time::sleep(pacer.reserve(Instant::now())).await;
            let key = match &module_id {
                None => client
                    .get_device(&device_id)
                    .await?
                    .map(|d| {
                        primary_key(d.authentication.as_ref(), &format!("device '{device_id}'"))
                    })
                    .transpose()?,
                Some(m) => client
                    .get_module(&device_id, m)
                    .await?
                    .map(|d| {
                        primary_key(
                            d.authentication.as_ref(),
                            &format!("module '{device_id}/{m}'"),
                        )
                    })
                    .transpose()?,
            };
            if let Some(key) = key {
                created_keys.insert((device_id, module_id), key);
            }
        }
        let host = device_host_name(client.host());
        let mut lines = String::new();
        for device in devices {
            let device_key = created_keys.get(&(device.id.clone(), None));
            let module_key = options.module_id.as_ref().and_then(|m| {
                created_keys
                    .get(&(device.id.clone(), Some(m.clone())))
                    .map(|k| (m, k))
            });
            let mut line = Map::new();
            line.insert("deviceId".into(), device.id.clone().into());
            if let Some(key) = device_key {
                line.insert(
                    "deviceConnectionString".into(),
                    ConnectionString::device(host, &device.id, key)
                        .to_secret_string()
                        .expose()
                        .into(),
                );
            }
            if let Some((m, key)) = module_key {
                line.insert("moduleId".into(), m.clone().into());
                line.insert(
                    "moduleConnectionString".into(),
                    ConnectionString::module(host, &device.id, m, key)
                        .to_secret_string()
                        .expose()
                        .into(),
                );
            }
            lines.push_str(&Value::Object(line).to_string());
            lines.push('\n');
        }
        write_private(path, &lines)?;
    }
    summary.http_attempts = client.attempts() - attempts_before;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Writes `text` to `path` readable by the owner only (0600), replacing the file.
pub fn write_private(path: &Path, text: &str) -> Result<(), ProvisionError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| ProvisionError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its mode on open: tighten it before writing secrets.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_keys() -> impl FnMut() -> Secret {
        let mut n = 0;
        move || {
            n += 1;
            Secret::new(format!("k{n}"))
        }
    }

    #[test]
    fn two_hundred_fifty_devices_without_modules_take_three_requests() {
        let devices = from_count("gw-", 250);
        let chunks = plan_batches(&devices, None, true, &mut fixed_keys());
        assert_eq!(
            chunks.iter().map(|c| c.devices.len()).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        assert!(chunks.iter().all(|c| c.modules.is_empty()));
        assert_eq!(chunks[0].devices[0].item.id, "gw-1");
        assert_eq!(chunks[2].devices[49].item.id, "gw-250");
    }

    #[test]
    fn modules_go_in_the_request_after_their_devices_never_in_the_same_one() {
        let devices = from_count("gw-", 101);
        let chunks = plan_batches(&devices, Some("edgetwin"), true, &mut fixed_keys());
        assert_eq!(chunks.len(), 2);
        for chunk in &chunks {
            assert!(chunk.devices.iter().all(|d| d.item.module_id.is_none()));
            let device_ids: Vec<&str> = chunk.devices.iter().map(|d| d.item.id.as_str()).collect();
            let module_devices: Vec<&str> =
                chunk.modules.iter().map(|m| m.item.id.as_str()).collect();
            assert_eq!(device_ids, module_devices);
            assert!(chunk
                .modules
                .iter()
                .all(|m| m.item.module_id.as_deref() == Some("edgetwin")));
        }
        assert_eq!(chunks[1].devices.len(), 1);
        let device = &chunks[0].devices[0].item;
        assert_eq!(device.import_mode, Some(ImportMode::Create));
        assert_eq!(
            device.capabilities,
            Some(DeviceCapabilities { iot_edge: true })
        );
    }

    #[test]
    fn common_tags_reach_every_device_and_a_devices_own_tags_win() {
        let common = serde_json::json!({"ring": "canary", "site": "a"});
        let common = common.as_object().unwrap();
        let mut devices = from_count("gw-", 2);
        devices[1].tags = serde_json::json!({"site": "b"}).as_object().cloned();
        let tagged = with_common_tags(devices, common);
        assert_eq!(
            Value::Object(tagged[0].tags.clone().unwrap()),
            serde_json::json!({"ring": "canary", "site": "a"})
        );
        assert_eq!(
            Value::Object(tagged[1].tags.clone().unwrap()),
            serde_json::json!({"ring": "canary", "site": "b"})
        );
    }

    #[test]
    fn json_lines_carry_ids_and_tags() {
        let text = "{\"deviceId\":\"a\",\"tags\":{\"env\":\"prod\",\"n\":3}}\n\n{\"id\":\"b\"}\n";
        let devices = parse_devices_file(text, "f").unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].tags.as_ref().unwrap()["n"], 3);
        assert_eq!(devices[1].id, "b");
        assert_eq!(devices[1].tags, None);
    }

    #[test]
    fn csv_columns_become_nested_string_tags() {
        let text =
            "deviceId,env,location.building,tags.ring\ngw-1,prod,\"4,3\",canary\ngw-2,test,,\n";
        let devices = parse_devices_file(text, "f").unwrap();
        assert_eq!(
            Value::Object(devices[0].tags.clone().unwrap()),
            serde_json::json!({"env":"prod","location":{"building":"4,3"},"ring":"canary"})
        );
        assert_eq!(
            Value::Object(devices[1].tags.clone().unwrap()),
            serde_json::json!({"env":"test"})
        );
    }

    #[test]
    fn bad_lines_and_duplicates_are_named() {
        let err = parse_devices_file("{\"deviceId\":\"a\"}\n{oops\n", "f.jsonl").unwrap_err();
        assert!(err.to_string().starts_with("f.jsonl:2:"), "{err}");
        let err = parse_devices_file("name,env\na,b\n", "f.csv").unwrap_err();
        assert!(err.to_string().contains("deviceId"), "{err}");
        let err = parse_devices_file("deviceId\na\na\n", "f.csv").unwrap_err();
        assert!(
            err.to_string().contains("'a' is listed more than once"),
            "{err}"
        );
    }

    #[test]
    fn generated_keys_are_44_characters_of_base64() {
        let key = new_key();
        assert_eq!(key.expose().len(), 44);
        assert_ne!(key, new_key());
    }

    #[test]
    fn tag_updates_follow_the_twin_quota_only_when_pacing_is_on() {
        assert_eq!(twin_update_rate(100.0), 3000.0);
        assert_eq!(twin_update_rate(0.0), 0.0);
        assert_eq!(twin_update_rate(f64::NAN), 0.0);
    }
}
