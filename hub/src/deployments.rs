//! Deployments: `applyConfigurationContent` on one edge device, at-scale deployments chosen by
//! target condition and priority, and the rules that turn `modulesContent` into module twins'
//! desired properties.
//!
//! As on IoT Hub, a deployment's status on a device (`Applied`, or `Targeted` when a
//! higher-priority deployment won) is written on the device's `$edgeAgent` module twin as
//! `configurations.<id>.status`, not on the device twin (Azure/iotedge
//! `doc/reported_states_during_deployment.md`, "Configuration section"), which is where IoT Hub's
//! own `appliedCount` query looks ([`edgetwin_wire::rest::edge_deployment_queries`]). What
//! `$edgeAgent` reports of it (`lastDesiredVersion`, `lastDesiredStatus.code`) is kept on the
//! device's targeting rows, so that `reportedSuccessfulCount` and `reportedFailedCount` are
//! counted, not queried, and a reported patch updates one device's rows.
//!
//! Part of the core's domain: depends on the store, registry, twins and layers; never on the hub or
//! a door.

use std::sync::LazyLock;

use edgetwin_wire::condition::Condition;
use edgetwin_wire::rest::{
    Configuration, ConfigurationContent, AGENT_AT_DESIRED_VERSION, AGENT_REPORTS_FAILURE,
    AGENT_REPORTS_SUCCESS,
};
use edgetwin_wire::twin::Properties;
use serde_json::{json, Value};

use crate::adm;
use crate::error::ApiError;
use crate::layers;
use crate::registry;
use crate::registry::EDGE_AGENT;
use crate::store::{IdentityKey, Transaction, TwinRecord, EVALUATIONS_PENDING};
use crate::twins::{self, DesiredChange};

/// Replaces the desired properties of every module named in `content.modulesContent` on
/// `device_id`. Module twins not named are untouched. A module without an identity yet is left
/// to the edge runtime to create, as on IoT Hub (edgeAgent has aziot-identityd create the
/// identities of the modules its deployment names only after it received it); it gets its
/// desired properties from the deployment when it is created ([`give_new_module_its_content`]).
pub fn apply_content(
    tx: &Transaction<'_>,
    device_id: &str,
    content: &ConfigurationContent,
) -> Result<Vec<DesiredChange>, ApiError> {
    let device = tx
        .device(device_id)?
        .ok_or_else(|| registry::device_not_found(device_id))?;
    if !device.capabilities.as_ref().is_some_and(|c| c.iot_edge) {
        return Err(ApiError::invalid(format!(
            "device '{device_id}' is not an IoT Edge device; modulesContent applies to edge devices only"
        )));
    }
    let modules = content.modules_content.as_ref().ok_or_else(|| {
        ApiError::new(
            edgetwin_wire::rest::ErrorCode::InvalidConfigurationContent,
            "The content provided for configuration is invalid: modulesContent is missing",
        )
    })?;
    let mut changes = Vec::new();
    for (module_id, section) in modules {
        let desired = desired_of(module_id, section)?;
        if tx.module(device_id, module_id)?.is_none() {
            tracing::info!(
                device_id,
                module_id,
                "deployment names a module without an identity yet: applied when it is created"
            );
            continue;
        }
        changes.push(twins::replace_desired(
            tx,
            &IdentityKey::module(device_id, module_id),
            desired,
        )?);
    }
    if modules.contains_key(EDGE_AGENT) {
        // a new desired `$version`: what `$edgeAgent` reported was about the one before
        record_agent_report(tx, device_id)?;
    }
    Ok(changes)
}

/// `applyConfigurationContent` on one edge device (`az iot edge set-modules`): applies `content`
/// ([`apply_content`]) and keeps its `modulesContent` as the device's, replacing what an earlier
/// call kept, so that module identities created later get their desired properties from it.
pub fn apply_configuration_content(
    tx: &Transaction<'_>,
    device_id: &str,
    content: &ConfigurationContent,
) -> Result<Vec<DesiredChange>, ApiError> {
    let changes = apply_content(tx, device_id, content)?;
    if let Some(modules) = &content.modules_content {
        tx.put_applied_content(device_id, modules)?;
    }
    Ok(changes)
}

/// Gives the module identity `module_id`, just created on `device_id` (by a service policy, by
/// the edge device itself as aziot-identityd does, or in bulk), the desired properties the
/// device's deployment has for it, in the transaction that created it: those of the at-scale
/// deployments in force on the device if a base deployment applies to it, otherwise those of the
/// `modulesContent` last given to it by `applyConfigurationContent`. A module the deployment does
/// not name, or a device that is not an edge device, keeps the empty desired properties of a new
/// twin.
///
/// IoT Hub documents that a deployment manifest carries "the desired properties of any extra
/// module twins" (learn.microsoft.com/azure/iot-edge/module-composition) and that edgeAgent
/// creates the modules a deployment names, which it can only do after receiving it; it does not
/// document when a module twin created after the deployment gets them. Production shows that it
/// does: every deployment with module twin settings (the C# module tutorial's
/// `TemperatureThreshold`, the quickstart's `telemetryInterval`) reaches modules whose identities
/// edgeAgent created afterwards, and IoT Hub keeps re-applying a deployment's module twin content
/// (manual edits are reverted: Azure/iotedge#5139, Azure/iotedge#6913). Per-device and automatic
/// deployments are not combined on IoT Hub ("once you start targeting IoT Edge devices with
/// automatic deployments, per-device deployments are no longer supported":
/// learn.microsoft.com/azure/iot-edge/module-deployment-monitoring), hence the at-scale content
/// first.
pub fn give_new_module_its_content(
    tx: &Transaction<'_>,
    deployments: &Deployments,
    device_id: &str,
    module_id: &str,
) -> Result<Vec<DesiredChange>, ApiError> {
    if !tx
        .device(device_id)?
        .is_some_and(|d| d.capabilities.as_ref().is_some_and(|c| c.iot_edge))
    {
        return Ok(Vec::new());
    }
    let modules = match deployments.content_in_force(tx, device_id)? {
        Some(content) => content.modules_content.unwrap_or_default(),
        None => tx.applied_content(device_id)?.unwrap_or_default(),
    };
    let Some(section) = modules.get(module_id) else {
        return Ok(Vec::new());
    };
    let desired = desired_of(module_id, section)?;
    let key = IdentityKey::module(device_id, module_id);
    Ok(vec![twins::replace_desired(tx, &key, desired)?])
}

/// The `$edgeAgent` conditions of IoT Hub's `reportedSuccessfulCount` and `reportedFailedCount`
/// queries, parsed once.
static AGENT_OUTCOMES: LazyLock<(Condition, Condition)> = LazyLock::new(|| {
    let parse = |outcome: &str| {
        Condition::parse(&format!("{AGENT_AT_DESIRED_VERSION} AND {outcome}"))
            .expect("IoT Hub's own conditions parse")
    };
    (parse(AGENT_REPORTS_SUCCESS), parse(AGENT_REPORTS_FAILURE))
});

/// What `$edgeAgent` reports of the desired properties it was last given, judged by the very
/// conditions of IoT Hub's queries, so that the counts and the queries agree: `Some(true)` when
/// it reports `lastDesiredStatus.code` 200 at the desired `$version`, `Some(false)` another code
/// at that version, `None` nothing yet at that version.
pub fn agent_outcome(agent: &TwinRecord) -> Option<bool> {
    let reported = |name: &str| agent.reported.get(name).cloned().unwrap_or(Value::Null);
    // only what the conditions read, not the whole (up to 32 KiB) desired section
    let document = json!({ "properties": {
        "desired": { "$version": agent.desired_version },
        "reported": {
            "lastDesiredVersion": reported("lastDesiredVersion"),
            "lastDesiredStatus": reported("lastDesiredStatus"),
        },
    }});
    let (success, failure) = &*AGENT_OUTCOMES;
    if success.matches(&document) {
        Some(true)
    } else if failure.matches(&document) {
        Some(false)
    } else {
        None
    }
}

/// Records on `device_id`'s targeting rows what its `$edgeAgent` reports now (after a reported
/// patch from it, or a new desired `$version`): one device's rows, never a fleet scan.
pub fn record_agent_report(tx: &Transaction<'_>, device_id: &str) -> Result<(), ApiError> {
    let outcome = tx
        .twin(&IdentityKey::module(device_id, EDGE_AGENT))?
        .and_then(|agent| agent_outcome(&agent));
    Ok(tx.set_reported(device_id, outcome)?)
}

/// Whether a configuration is a layered deployment (`properties.desired.<path>` entries).
fn is_layered(configuration: &Configuration) -> bool {
    configuration
        .content
        .as_ref()
        .and_then(|c| c.modules_content.as_ref())
        .is_some_and(|m| layers::kind(m) == Ok(layers::Kind::Layered))
}

/// The desired properties in a `modulesContent` entry: `{"properties.desired": {...}}`.
fn desired_of(module_id: &str, section: &Value) -> Result<Properties, ApiError> {
    let invalid = |what: &str| {
        ApiError::new(
            edgetwin_wire::rest::ErrorCode::InvalidConfigurationContent,
            format!("The content provided for configuration is invalid: modulesContent.{module_id} {what}"),
        )
    };
    match section.get("properties.desired") {
        Some(Value::Object(desired)) => Ok(desired.clone()),
        Some(_) => Err(invalid("'properties.desired' must be an object")),
        None => Err(invalid("has no 'properties.desired'")),
    }
}

/// The at-scale deployments devices are evaluated against, loaded and parsed once per
/// transaction: those with `modulesContent` and a target condition that parses.
pub struct Deployments {
    /// Each deployment with its parsed target condition and whether it is layered.
    configurations: Vec<(Configuration, Condition, bool)>,
    /// The automatic device management device configurations ([`crate::adm`]).
    device_configurations: Vec<adm::AdmConfiguration>,
    /// The automatic device management module configurations ([`crate::adm`]).
    module_configurations: Vec<adm::AdmConfiguration>,
    /// Those not evaluated yet, which get their system metrics once evaluated.
    unevaluated: Vec<Configuration>,
}

impl Deployments {
    /// Loads the at-scale deployments stored in `tx`.
    pub fn load(tx: &Transaction<'_>) -> Result<Self, ApiError> {
        let stored = tx.stored_configurations(usize::MAX >> 1)?;
        let device_configurations = stored
            .iter()
            .filter_map(adm::AdmConfiguration::device)
            .collect();
        let module_configurations = stored
            .iter()
            .filter_map(adm::AdmConfiguration::module)
            .collect();
        let unevaluated = stored
            .iter()
            .filter(|c| !crate::store::is_evaluated(c))
            .cloned()
            .collect();
        let configurations = stored
            .into_iter()
            .filter(|c| {
                c.content
                    .as_ref()
                    .is_some_and(|c| c.modules_content.is_some())
            })
            .filter_map(|c| {
                let condition = Condition::parse(c.target_condition.as_deref()?).ok()?;
                let layered = is_layered(&c);
                Some((c, condition, layered))
            })
            .collect();
        Ok(Self {
            configurations,
            device_configurations,
            module_configurations,
            unevaluated,
        })
    }

    /// The deployments that match the device `document` (as target conditions see it), and of
    /// them the applied ones: the matching base deployment with the highest priority (ties: the
    /// newest), then the matching layered deployments of a higher priority, lowest first, so
    /// that the highest priority is merged last and wins.
    fn select(&self, document: &Value) -> Selection {
        let configurations = &self.configurations;
        let matching: Vec<usize> = (0..configurations.len())
            .filter(|&i| configurations[i].1.matches(document))
            .collect();
        let rank = |i: usize| {
            (
                configurations[i].0.priority.unwrap_or(0),
                configurations[i].0.created_time_utc.clone(),
            )
        };
        let base = matching
            .iter()
            .copied()
            .filter(|&i| !configurations[i].2)
            .max_by_key(|&i| rank(i));
        let mut layers: Vec<usize> = match base {
            Some(b) => matching
                .iter()
                .copied()
                .filter(|&i| configurations[i].2 && rank(i).0 > rank(b).0)
                .collect(),
            None => Vec::new(),
        };
        layers.sort_by_key(|&i| rank(i));
        let applied = base.into_iter().chain(layers.iter().copied()).collect();
        Selection {
            matching,
            applied,
            layers,
        }
    }

    /// The content of the applied deployments `selection` names: the base with its layers merged
    /// over it; `None` without a base deployment.
    fn content_of(&self, selection: &Selection) -> Option<ConfigurationContent> {
        let content_of = |i: usize| self.configurations[i].0.content.clone().unwrap_or_default();
        let base = content_of(*selection.applied.first()?);
        let layers: Vec<ConfigurationContent> =
            selection.layers.iter().map(|&i| content_of(i)).collect();
        Some(layers::compose(&base, &layers.iter().collect::<Vec<_>>()))
    }

    /// The content the at-scale deployments in force give the edge device `device_id`'s modules
    /// (see [`Self::evaluate_device`]), or `None` when no base deployment applies to it.
    pub fn content_in_force(
        &self,
        tx: &Transaction<'_>,
        device_id: &str,
    ) -> Result<Option<ConfigurationContent>, ApiError> {
        let Some(device) = tx.device(device_id)? else {
            return Ok(None);
        };
        let Some(twin) = tx.twin(&IdentityKey::device(device_id))? else {
            return Ok(None);
        };
        let selection = self.select(&target_document(&device, &twin));
        Ok(self.content_of(&selection))
    }

    /// Re-evaluates the configurations against one device: its IoT Edge deployments
    /// ([`Self::evaluate_edge`]), its automatic device management device configurations and the
    /// module configurations on its modules ([`adm::evaluate`]). The device's targeting rows,
    /// from which the system metrics are counted, are replaced.
    pub fn evaluate_device(
        &self,
        tx: &Transaction<'_>,
        device_id: &str,
    ) -> Result<Vec<DesiredChange>, ApiError> {
        let (Some(device), Some(twin)) = (
            tx.device(device_id)?,
            tx.twin(&IdentityKey::device(device_id))?,
        ) else {
            tx.set_targeting(device_id, &[], None)?;
            tx.set_module_targeting(device_id, &[])?;
            return Ok(Vec::new());
        };
        let document = target_document(&device, &twin);
        let mut targeting = Vec::new();
        let mut changes = Vec::new();
        let mut reported = None;
        if device.capabilities.as_ref().is_some_and(|c| c.iot_edge) {
            reported =
                self.evaluate_edge(tx, device_id, &document, &mut targeting, &mut changes)?;
        }
        changes.extend(adm::evaluate(
            tx,
            &self.device_configurations,
            &IdentityKey::device(device_id),
            &document,
            &mut targeting,
        )?);
        let targeting: Vec<(&str, bool)> = targeting
            .iter()
            .map(|(id, applied)| (id.as_str(), *applied))
            .collect();
        tx.set_targeting(device_id, &targeting, reported)?;
        changes.extend(self.evaluate_module_configurations(tx, device_id)?);
        Ok(changes)
    }

    /// Re-evaluates the automatic device management module configurations against the modules
    /// of `device_id` (not the IoT Edge runtime's own, whose twins deployments set), and replaces
    /// the device's module targeting rows.
    pub fn evaluate_module_configurations(
        &self,
        tx: &Transaction<'_>,
        device_id: &str,
    ) -> Result<Vec<DesiredChange>, ApiError> {
        let mut changes = Vec::new();
        let mut rows = Vec::new();
        for module in tx.modules(device_id)? {
            if module.module_id.starts_with('$') {
                continue;
            }
            let key = IdentityKey::module(device_id, &module.module_id);
            let Some(twin) = tx.twin(&key)? else {
                continue;
            };
            let document = json!({
                "deviceId": device_id,
                "moduleId": module.module_id,
                "tags": twin.tags,
                "properties": { "desired": twin.desired, "reported": twin.reported },
            });
            let mut targeting = Vec::new();
            changes.extend(adm::evaluate(
                tx,
                &self.module_configurations,
                &key,
                &document,
                &mut targeting,
            )?);
            rows.extend(
                targeting
                    .into_iter()
                    .map(|(id, applied)| (module.module_id.clone(), id, applied)),
            );
        }
        let rows: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|(module_id, id, applied)| (module_id.as_str(), id.as_str(), *applied))
            .collect();
        tx.set_module_targeting(device_id, &rows)?;
        Ok(changes)
    }

    /// Re-evaluates the deployments against one edge device (`document` as target conditions
    /// see it): the matching base deployment with the highest priority (ties: the newest) is
    /// applied with the matching layered deployments of a higher priority merged over it
    /// ([`crate::layers`]); the other matches are marked `Targeted`. A device that matches no
    /// base deployment keeps its modules. The statuses are written on the device's `$edgeAgent`
    /// twin and pushed to `targeting`; returns what `$edgeAgent` reports.
    fn evaluate_edge(
        &self,
        tx: &Transaction<'_>,
        device_id: &str,
        document: &Value,
        targeting: &mut Vec<(String, bool)>,
        changes: &mut Vec<DesiredChange>,
    ) -> Result<Option<bool>, ApiError> {
        let configurations = &self.configurations;
        let agent_key = IdentityKey::module(device_id, EDGE_AGENT);
        let Some(mut agent) = tx.twin(&agent_key)? else {
            return Ok(None);
        };
        let selection = self.select(document);
        let mut statuses = Properties::new();
        for &i in &selection.matching {
            let is_applied = selection.applied.contains(&i);
            let status = if is_applied { "Applied" } else { "Targeted" };
            statuses.insert(configurations[i].0.id.clone(), json!({ "status": status }));
            targeting.push((configurations[i].0.id.clone(), is_applied));
        }
        if statuses != agent.configurations {
            changes.extend(self.apply(tx, device_id, &agent.configurations, &selection)?);
            // applying replaced `$edgeAgent`'s desired properties (a new `$version`)
            agent = tx.twin(&agent_key)?.unwrap_or(agent);
            agent.configurations = statuses;
            tx.put_twin(&agent_key, &agent)?;
        }
        Ok(agent_outcome(&agent))
    }

    /// Applies the deployments `selection` applies (the base first, then its layers merged over
    /// it) to `device_id`'s modules, unless exactly they were applied already by the statuses
    /// `before`; without a base deployment the modules are kept.
    fn apply(
        &self,
        tx: &Transaction<'_>,
        device_id: &str,
        before: &Properties,
        selection: &Selection,
    ) -> Result<Vec<DesiredChange>, ApiError> {
        let configurations = &self.configurations;
        let applied = &selection.applied;
        let applied_before = applied.iter().all(|&i| {
            before
                .get(&configurations[i].0.id)
                .is_some_and(|s| s["status"] == "Applied")
        }) && before.values().filter(|s| s["status"] == "Applied").count()
            == applied.len();
        match self.content_of(selection) {
            Some(content) if !applied_before => apply_content(tx, device_id, &content),
            _ => Ok(Vec::new()),
        }
    }
}

/// Which deployments match a device, and which of them apply to it.
struct Selection {
    /// The deployments whose target condition the device matches.
    matching: Vec<usize>,
    /// Those applied: the base deployment first, then its layers.
    applied: Vec<usize>,
    /// The applied layered deployments, lowest priority first.
    layers: Vec<usize>,
}

/// A device as target conditions see it.
fn target_document(device: &edgetwin_wire::rest::Device, twin: &TwinRecord) -> Value {
    json!({
        "deviceId": device.device_id,
        "status": device.status,
        "capabilities": device.capabilities,
        "tags": twin.tags,
        "properties": { "desired": twin.desired, "reported": twin.reported },
    })
}

/// Re-evaluates the deployments against the devices `device_ids` only, after writes to them
/// (see [`Deployments::evaluate_device`]).
pub fn evaluate_devices<'a>(
    tx: &Transaction<'_>,
    device_ids: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<DesiredChange>, ApiError> {
    let deployments = Deployments::load(tx)?;
    let mut changes = Vec::new();
    for device_id in device_ids {
        changes.extend(deployments.evaluate_device(tx, device_id)?);
    }
    Ok(changes)
}

/// Devices evaluated in one writer job after a configuration change: other writes get their turn
/// between two pages instead of waiting for the whole fleet.
pub const EVALUATION_PAGE: usize = 1000;

/// Re-evaluates every at-scale deployment against every device in one transaction, at start
/// (a configuration change found unfinished, or a database from before the targeting rows), and
/// clears [`EVALUATIONS_PENDING`]. Nobody is connected yet, so the desired changes are not kept.
pub fn evaluate_all(tx: &Transaction<'_>) -> Result<(), ApiError> {
    let mut after = None;
    while let (_, Some(last)) = evaluate_page(tx, after.as_deref(), EVALUATION_PAGE)? {
        after = Some(last);
    }
    Ok(tx.clear_counter(EVALUATIONS_PENDING)?)
}

/// Re-evaluates every at-scale deployment against up to `limit` devices after `after` (in id
/// order), after a configuration changed, and gives each deployment its system metrics (kept
/// current from then on by the targeting rows, see [`Transaction::configuration`]). Returns the changes and, if there may be more devices, the
/// last one evaluated: the next page starts after it.
pub fn evaluate_page(
    tx: &Transaction<'_>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<DesiredChange>, Option<String>), ApiError> {
    let deployments = Deployments::load(tx)?;
    let after = after.map(IdentityKey::device);
    let devices = tx.identity_keys(false, after.as_ref(), limit)?;
    let mut changes = Vec::new();
    for device in &devices {
        changes.extend(deployments.evaluate_device(tx, &device.device_id)?);
    }
    for configuration in &deployments.unevaluated {
        let evaluated = deployments
            .configurations
            .iter()
            .any(|(c, _, _)| c.id == configuration.id)
            || configuration.is_device_configuration()
            || configuration.is_module_configuration();
        if evaluated {
            let mut configuration = configuration.clone();
            configuration.system_metrics = Some(tx.system_metrics(&configuration)?);
            tx.put_configuration(&configuration)?;
        }
    }
    let next = (devices.len() == limit)
        .then(|| devices.last().map(|d| d.device_id.clone()))
        .flatten();
    Ok((changes, next))
}

#[cfg(test)]
pub(crate) mod tests {
    use edgetwin_wire::rest::{Device, DeviceCapabilities};

    use super::*;
    use crate::store::Store;

    fn on_ring(tx: &Transaction<'_>, device_id: &str, ring: &str) -> Result<(), ApiError> {
        let mut twin = tx
            .twin(&IdentityKey::device(device_id))?
            .unwrap_or_default();
        twin.tags.insert("ring".into(), json!(ring));
        Ok(tx.put_twin(&IdentityKey::device(device_id), &twin)?)
    }

    pub(crate) fn counts(tx: &Transaction<'_>) -> Result<(Value, Value), ApiError> {
        let configuration = tx.configuration("ring-a")?.expect("stored");
        let results = configuration.system_metrics.expect("evaluated").results;
        Ok((
            results[edgetwin_wire::rest::TARGETED_COUNT].clone(),
            results[edgetwin_wire::rest::APPLIED_COUNT].clone(),
        ))
    }

    /// Edge devices `d1`..`d{count}` on ring `a`, and the deployment `ring-a` targeting the ring,
    /// not evaluated yet.
    pub(crate) fn ring_a(tx: &Transaction<'_>, count: usize) -> Result<(), ApiError> {
        for n in 1..=count {
            let id = format!("d{n}");
            tx.put_device(&Device {
                device_id: id.clone(),
                capabilities: Some(DeviceCapabilities { iot_edge: true }),
                ..Device::default()
            })?;
            tx.put_twin(&IdentityKey::device(&id), &TwinRecord::default())?;
            tx.put_module(&edgetwin_wire::rest::Module {
                device_id: id.clone(),
                module_id: EDGE_AGENT.into(),
                ..edgetwin_wire::rest::Module::default()
            })?;
            tx.put_twin(
                &IdentityKey::module(&id, EDGE_AGENT),
                &TwinRecord::default(),
            )?;
            on_ring(tx, &id, "a")?;
        }
        let modules = json!({ "$edgeAgent": { "properties.desired": { "v": 1 } } });
        tx.put_configuration(&Configuration {
            id: "ring-a".into(),
            target_condition: Some("tags.ring = 'a'".into()),
            content: Some(ConfigurationContent {
                modules_content: modules.as_object().cloned(),
                ..ConfigurationContent::default()
            }),
            ..Configuration::default()
        })?;
        Ok(())
    }

    #[test]
    fn pages_of_devices_evaluate_each_device_once_and_the_last_page_says_there_is_no_more() {
        let dir = std::env::temp_dir().join(format!("edgetwin-pages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = Store::open(&dir.join("hub.db")).unwrap();
        store
            .transaction(|tx| {
                ring_a(tx, 5)?;
                let mut pages = Vec::new();
                let mut after = None;
                loop {
                    let (_, next) = evaluate_page(tx, after.as_deref(), 2)?;
                    pages.push((next.clone(), counts(tx)?.0));
                    match next {
                        Some(last) => after = Some(last),
                        None => break,
                    }
                }
                let expected = [
                    (Some("d2".to_owned()), json!(2)),
                    (Some("d4".to_owned()), json!(4)),
                    (None, json!(5)),
                ];
                assert_eq!(pages, expected);
                Ok::<_, ApiError>(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_device_write_moves_only_that_devices_counts_and_a_deleted_device_leaves_them() {
        let dir = std::env::temp_dir().join(format!("edgetwin-deploy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = Store::open(&dir.join("hub.db")).unwrap();
        let step = |store: &mut Store, f: &dyn Fn(&Transaction<'_>) -> Result<(), ApiError>| {
            store.transaction(|tx| f(tx)).unwrap();
        };
        step(&mut store, &|tx| {
            ring_a(tx, 3)?;
            evaluate_all(tx)?;
            assert_eq!(counts(tx)?, (json!(3), json!(3)));
            Ok(())
        });
        step(&mut store, &|tx| {
            on_ring(tx, "d1", "b")?;
            // d2 leaves the ring too, but is not re-evaluated: only d1 was written
            on_ring(tx, "d2", "b")?;
            evaluate_devices(tx, ["d1"])?;
            assert_eq!(counts(tx)?, (json!(2), json!(2)));
            tx.delete_device("d3")?;
            assert_eq!(counts(tx)?, (json!(1), json!(1)));
            Ok(())
        });
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_new_module_gets_the_at_scale_content_in_force_on_its_device_before_the_content_applied_to_it(
    ) {
        let (mut store, dir) = crate::store::tests::temp_store("new-module");
        let content = |value: &str| ConfigurationContent {
            modules_content: json!({ "m": { "properties.desired": { "v": value } } })
                .as_object()
                .cloned(),
            ..ConfigurationContent::default()
        };
        store
            .transaction(|tx| {
                ring_a(tx, 3)?;
                tx.put_configuration(&Configuration {
                    id: "d1-only".into(),
                    target_condition: Some("deviceId = 'd1'".into()),
                    priority: Some(10),
                    content: Some(content("at scale")),
                    ..Configuration::default()
                })?;
                // d2 leaves the ring: no at-scale deployment applies to it
                on_ring(tx, "d2", "b")?;
                evaluate_all(tx)?;
                for device in ["d1", "d2", "d3"] {
                    apply_configuration_content(tx, device, &content("per device"))?;
                }
                let deployments = Deployments::load(tx)?;
                let mut seen = Vec::new();
                for device in ["d1", "d2", "d3"] {
                    crate::registry::create_module(
                        tx,
                        device,
                        "m",
                        edgetwin_wire::rest::Module::default(),
                    )?;
                    let changes = give_new_module_its_content(tx, &deployments, device, "m")?;
                    let twin = tx.twin(&IdentityKey::module(device, "m"))?.unwrap();
                    let versions = changes.iter().map(|c| c.version).collect::<Vec<_>>();
                    seen.push((twin.desired.get("v").cloned(), versions, twin.version));
                }
                assert_eq!(
                    seen,
                    [
                        (Some(json!("at scale")), vec![2], 2),
                        (Some(json!("per device")), vec![2], 2),
                        (None, vec![], 1),
                    ],
                    "d1: its at-scale deployment; d2: the content applied to it; d3: ring-a, \
                     in force, does not name m"
                );
                Ok::<_, ApiError>(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// `$edgeAgent` of `device_id` reports `code` at the desired `$version` (or, with `behind`,
    /// at the one before).
    fn agent_reports(
        tx: &Transaction<'_>,
        device_id: &str,
        code: u16,
        behind: bool,
    ) -> Result<(), ApiError> {
        let key = IdentityKey::module(device_id, EDGE_AGENT);
        let mut agent = tx.twin(&key)?.expect("an edge device has $edgeAgent");
        let version = agent.desired_version - i64::from(behind);
        agent
            .reported
            .insert("lastDesiredVersion".into(), json!(version));
        agent
            .reported
            .insert("lastDesiredStatus".into(), json!({ "code": code }));
        tx.put_twin(&key, &agent)?;
        record_agent_report(tx, device_id)
    }

    #[test]
    fn status_lives_on_edge_agent_and_its_reports_move_the_reported_counts_of_that_device_only() {
        let (mut store, dir) = crate::store::tests::temp_store("reported");
        store
            .transaction(|tx| {
                ring_a(tx, 3)?;
                evaluate_all(tx)?;
                let agent = tx.twin(&IdentityKey::module("d1", EDGE_AGENT))?.unwrap();
                assert_eq!(
                    agent.configurations["ring-a"],
                    json!({ "status": "Applied" })
                );
                let device = tx.twin(&IdentityKey::device("d1"))?.unwrap();
                assert!(device.configurations.is_empty(), "not on the device twin");
                let reported = |tx: &Transaction<'_>| {
                    let counts = tx.targeting_counts("ring-a")?;
                    Ok::<_, ApiError>((counts.succeeded, counts.failed))
                };
                assert_eq!(reported(tx)?, (0, 0));
                agent_reports(tx, "d1", 200, false)?;
                agent_reports(tx, "d2", 400, false)?;
                agent_reports(tx, "d3", 200, true)?;
                assert_eq!(reported(tx)?, (1, 1), "d3 reported an older version");
                let results = tx.configuration("ring-a")?.unwrap().system_metrics.unwrap();
                assert_eq!(
                    results.results[edgetwin_wire::rest::REPORTED_SUCCESSFUL_COUNT],
                    json!(1)
                );
                // a new desired version: what d1 reported is about the one before
                let content = tx.configuration("ring-a")?.unwrap().content.unwrap();
                apply_content(tx, "d1", &content)?;
                assert_eq!(reported(tx)?, (0, 1));
                // a device evaluated again keeps what its agent reports
                evaluate_devices(tx, ["d2"])?;
                assert_eq!(reported(tx)?, (0, 1));
                Ok::<_, ApiError>(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
