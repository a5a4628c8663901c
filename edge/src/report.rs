//! `$edgeAgent`'s reported properties, in the shape edgeAgent writes them (Azure/iotedge
//! `doc/reported_states_during_deployment.md`, `IoTHubReporter.cs`, `AgentState.cs`,
//! `DockerReportedConfig`): `schemaVersion`, `version`, `lastDesiredVersion`,
//! `lastDesiredStatus {code, description}`, `runtime`, `systemModules` and `modules` with
//! `runtimeStatus`, `statusDescription`, `exitCode`, `lastStartTimeUtc`, `lastExitTimeUtc`,
//! `restartCount`, `lastRestartTimeUtc`, the desired settings and the running image's hash —
//! and the diff between two documents, since only what changed is sent. Pure.

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::deployment::{Deployment, ModuleSpec};
use crate::plan::{self, ModuleRecord, Observed};

/// The reported `schemaVersion`.
pub const REPORTED_SCHEMA_VERSION: &str = "1.1";
/// What edgeAgent reports for a time that has not happened (`DateTime.MinValue`).
pub const NEVER: &str = "0001-01-01T00:00:00";

/// A time as edgeAgent reports it: UTC, seven fractional digits, no zone suffix.
pub fn utc(time: Option<OffsetDateTime>) -> String {
    let Some(time) = time else {
        return NEVER.to_owned();
    };
    let time = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.nanosecond() / 100
    )
}

/// `lastDesiredStatus`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredStatusReport {
    /// 200, 400, 406, 412, 417 or 500 (edgeAgent's `DeploymentStatusCode`).
    pub code: u16,
    /// What happened, empty on success.
    pub description: String,
}

/// The settings a module was deployed with, as reported.
fn settings(spec: &ModuleSpec, observed: Option<&Observed>) -> Value {
    let mut settings = json!({
        "image": spec.image,
        "createOptions": if spec.create_options_text.is_empty() { "{}" } else { &spec.create_options_text },
    });
    if let Some(observed) = observed {
        settings["imageHash"] = json!(observed.image_id);
    }
    settings
}

/// One module's reported entry.
pub fn module_entry(
    spec: &ModuleSpec,
    observed: Option<&Observed>,
    record: &ModuleRecord,
) -> Value {
    let (runtime_status, description) = plan::runtime_status(spec, observed, record);
    let env: Map<String, Value> = spec
        .env
        .iter()
        .map(|(name, value)| (name.clone(), json!({ "value": value })))
        .collect();
    json!({
        "type": "docker",
        "version": spec.version,
        "status": spec.status.name(),
        "restartPolicy": spec.restart_policy.name(),
        "imagePullPolicy": spec.image_pull_policy.name(),
        "startupOrder": spec.startup_order,
        "runtimeStatus": runtime_status.name(),
        "statusDescription": description,
        "exitCode": observed.map_or(0, |o| o.exit_code),
        "lastStartTimeUtc": utc(observed.and_then(|o| o.started_at)),
        "lastExitTimeUtc": utc(observed.and_then(|o| o.finished_at)),
        "restartCount": record.restart_count,
        "lastRestartTimeUtc": utc(record.last_restart),
        "settings": settings(spec, observed),
        "env": env,
    })
}

/// `systemModules.edgeHub` when the IoT Hub itself is the device's gateway (`edgetwin hub`
/// plays edgeHub): running while the agent is connected to it.
pub fn hub_as_edge_hub(
    spec: Option<&ModuleSpec>,
    host: &str,
    connected: bool,
    since: OffsetDateTime,
) -> Value {
    let (status, description) = if connected {
        ("running", format!("served by the IoT Hub at {host}"))
    } else {
        ("unknown", format!("the IoT Hub at {host} is not reachable"))
    };
    let mut entry = json!({
        "type": "docker",
        "status": "running",
        "restartPolicy": "always",
        "runtimeStatus": status,
        "statusDescription": description,
        "exitCode": 0,
        "lastStartTimeUtc": utc(Some(since)),
        "lastExitTimeUtc": NEVER,
        "restartCount": 0,
        "lastRestartTimeUtc": NEVER,
    });
    if let Some(spec) = spec {
        entry["settings"] = settings(spec, None);
    }
    entry
}

/// Everything the agent reports, assembled from its parts.
pub struct AgentReport<'a> {
    /// The last desired `$version` acted on.
    pub last_desired_version: Option<i64>,
    /// How acting on it went.
    pub last_desired_status: &'a DesiredStatusReport,
    /// The deployment in force (the last one that could be read).
    pub deployment: Option<&'a Deployment>,
    /// The edgeAgent image (the deployment's, else config.toml's).
    pub agent_image: &'a str,
    /// When the runtime started.
    pub started: OffsetDateTime,
    /// `systemModules.edgeHub`, if any.
    pub edge_hub: Option<Value>,
    /// `modules.<name>`.
    pub modules: Map<String, Value>,
}

impl AgentReport<'_> {
    /// The reported document.
    pub fn document(&self) -> Map<String, Value> {
        let runtime_settings = self
            .deployment
            .map(|d| Value::Object(d.runtime_settings.clone()))
            .unwrap_or_else(|| json!({}));
        let mut system = Map::new();
        system.insert(
            "edgeAgent".into(),
            json!({
                "type": "docker",
                "runtimeStatus": "running",
                "statusDescription": "running",
                "exitCode": 0,
                "lastStartTimeUtc": utc(Some(self.started)),
                "lastExitTimeUtc": NEVER,
                "imagePullPolicy": "on-create",
                "settings": { "image": self.agent_image, "createOptions": "{}" },
            }),
        );
        if let Some(hub) = &self.edge_hub {
            system.insert("edgeHub".into(), hub.clone());
        }
        let mut document = Map::new();
        document.insert("schemaVersion".into(), json!(REPORTED_SCHEMA_VERSION));
        document.insert(
            "version".into(),
            json!({ "version": env!("CARGO_PKG_VERSION"), "build": "edgetwin-edge", "commit": "" }),
        );
        if let Some(version) = self.last_desired_version {
            document.insert("lastDesiredVersion".into(), json!(version));
        }
        document.insert(
            "lastDesiredStatus".into(),
            json!({
                "code": self.last_desired_status.code,
                "description": self.last_desired_status.description,
            }),
        );
        document.insert(
            "runtime".into(),
            json!({
                "type": "docker",
                "settings": runtime_settings,
                "platform": {
                    "os": std::env::consts::OS,
                    "architecture": std::env::consts::ARCH,
                    "version": env!("CARGO_PKG_VERSION"),
                },
            }),
        );
        document.insert("systemModules".into(), Value::Object(system));
        document.insert("modules".into(), Value::Object(self.modules.clone()));
        document
    }
}

/// The patch that turns `old` into `new`: changed members, objects diffed member by member,
/// removed members as `null` (a twin patch deletes with `null`).
pub fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(Value::Object(before)), Value::Object(after)) => {
                let inner = diff(before, after);
                if !inner.is_empty() {
                    patch.insert(key.clone(), Value::Object(inner));
                }
            }
            (Some(before), after) if before == after => {}
            (_, after) => {
                patch.insert(key.clone(), after.clone());
            }
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        patch.insert(key.clone(), Value::Null);
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{DesiredStatus, ImagePullPolicy, RestartPolicy};
    use std::collections::BTreeMap;

    fn spec() -> ModuleSpec {
        ModuleSpec {
            name: "edgetwin".into(),
            version: "1.0".into(),
            image: "localhost:5000/edgetwin:0.1.0-amd64".into(),
            create_options_text: "{\"HostConfig\":{}}".into(),
            create_options: Map::new(),
            env: BTreeMap::from([("RuntimeLogLevel".into(), "info".into())]),
            status: DesiredStatus::Running,
            restart_policy: RestartPolicy::Always,
            image_pull_policy: ImagePullPolicy::OnCreate,
            startup_order: 1,
        }
    }

    fn at(unix: i64, nanos: u32) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix)
            .unwrap()
            .replace_nanosecond(nanos)
            .unwrap()
    }

    #[test]
    fn times_are_written_as_edge_agent_writes_them() {
        assert_eq!(
            utc(Some(at(1_623_457_666, 383_870_412))),
            "2021-06-12T00:27:46.3838704"
        );
        assert_eq!(utc(None), NEVER);
    }

    #[test]
    fn a_running_module_is_reported_with_its_settings_hash_and_env() {
        let spec = spec();
        let observed = Observed {
            container_id: "c".into(),
            fingerprint: Some(spec.fingerprint()),
            image: spec.image.clone(),
            image_id: "sha256:abc".into(),
            running: true,
            exit_code: 0,
            started_at: Some(at(1_623_457_666, 0)),
            finished_at: None,
            unhealthy: false,
        };
        let entry = module_entry(&spec, Some(&observed), &ModuleRecord::default());
        assert_eq!(entry["runtimeStatus"], "running");
        assert_eq!(entry["status"], "running");
        assert_eq!(entry["restartPolicy"], "always");
        assert_eq!(
            entry["settings"],
            json!({"image": spec.image, "imageHash": "sha256:abc", "createOptions": "{\"HostConfig\":{}}"})
        );
        assert_eq!(entry["env"], json!({"RuntimeLogLevel": {"value": "info"}}));
        assert_eq!(entry["lastStartTimeUtc"], "2021-06-12T00:27:46.0000000");
        assert_eq!(entry["lastExitTimeUtc"], NEVER);
        assert_eq!(entry["restartCount"], 0);
    }

    #[test]
    fn the_document_has_edge_agents_top_level_members() {
        let status = DesiredStatusReport {
            code: 200,
            description: String::new(),
        };
        let report = AgentReport {
            last_desired_version: Some(4),
            last_desired_status: &status,
            deployment: None,
            agent_image: "mcr.microsoft.com/azureiotedge-agent:1.5",
            started: at(0, 0),
            edge_hub: Some(hub_as_edge_hub(None, "localhost", true, at(0, 0))),
            modules: Map::new(),
        };
        let document = report.document();
        let keys: Vec<_> = document.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "schemaVersion",
                "version",
                "lastDesiredVersion",
                "lastDesiredStatus",
                "runtime",
                "systemModules",
                "modules"
            ]
        );
        assert_eq!(
            document["lastDesiredStatus"],
            json!({"code": 200, "description": ""})
        );
        assert_eq!(
            document["systemModules"]["edgeHub"]["runtimeStatus"],
            "running"
        );
        assert_eq!(
            document["systemModules"]["edgeAgent"]["runtimeStatus"],
            "running"
        );
    }

    #[test]
    fn the_diff_sends_only_changes_and_deletes_with_null() {
        let old =
            json!({"a": 1, "m": {"x": {"s": "running", "n": 0}, "gone": {"s": 1}}, "k": "same"});
        let new = json!({"a": 2, "m": {"x": {"s": "backoff", "n": 0}}, "k": "same", "new": true});
        let patch = diff(old.as_object().unwrap(), new.as_object().unwrap());
        assert_eq!(
            Value::Object(patch),
            json!({"a": 2, "m": {"x": {"s": "backoff"}, "gone": null}, "new": true})
        );
        assert!(diff(new.as_object().unwrap(), new.as_object().unwrap()).is_empty());
    }
}
