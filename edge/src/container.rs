//! How a module becomes a container and a container is read back: the Docker Engine API
//! create body built from a module's deployment (create options, env, labels as edgeAgent sets
//! them, the workload socket mounted, the network), and [`Observed`] read from an inspect
//! answer. Pure.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::deployment::ModuleSpec;
use crate::plan::Observed;

/// The label edgeAgent marks its containers with, and its value.
pub const OWNER_LABEL: &str = "net.azure-devices.edge.owner";
/// [`OWNER_LABEL`]'s value.
pub const OWNER: &str = "Microsoft.Azure.Devices.Edge.Agent";
/// The deployment's `version` (edgeAgent's label).
pub const VERSION_LABEL: &str = "net.azure-devices.edge.version";
/// The restart policy (edgeAgent's label).
pub const RESTART_POLICY_LABEL: &str = "net.azure-devices.edge.restartPolicy";
/// The desired status (edgeAgent's label).
pub const DESIRED_STATUS_LABEL: &str = "net.azure-devices.edge.desiredStatus";
/// The create options as deployed (edgeAgent's label).
pub const CREATE_OPTIONS_LABEL: &str = "net.azure-devices.edge.normalizedCreateOptions";
/// [`ModuleSpec::fingerprint`]: what the container was made from.
pub const FINGERPRINT_LABEL: &str = "io.edgetwin.fingerprint";
/// Where a module finds its workload socket, as under aziot-edged.
pub const WORKLOAD_SOCKET_IN_CONTAINER: &str = "/var/run/iotedge/workload.sock";
/// The directory of [`WORKLOAD_SOCKET_IN_CONTAINER`], bound from the module's own directory on
/// the host: a directory, not the socket file, so a socket made again after a restart of the
/// runtime is the one the container sees.
pub const WORKLOAD_DIR_IN_CONTAINER: &str = "/var/run/iotedge";

/// What the create body needs beyond the module's deployment.
pub struct Placement<'a> {
    /// `IOTEDGE_*` and the other variables the runtime gives every module.
    pub runtime_env: &'a [(String, String)],
    /// The host directory holding the module's workload socket.
    pub workload_dir: &'a str,
    /// The network to attach it to, unless its create options choose one.
    pub network: &'a str,
}

/// The `POST /containers/create` body: the module's create options, with the image, the
/// environment (deployment `env` over create-option `Env` over the runtime's variables), the
/// labels, the workload socket's directory bound in and the network.
pub fn create_body(spec: &ModuleSpec, placement: &Placement<'_>) -> Value {
    let mut body = spec.create_options.clone();
    body.insert("Image".into(), json!(spec.image));
    let mut env: BTreeMap<String, String> = placement.runtime_env.iter().cloned().collect();
    if let Some(Value::Array(given)) = body.get("Env") {
        for entry in given.iter().filter_map(Value::as_str) {
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    body.insert(
        "Env".into(),
        json!(env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()),
    );
    let mut labels = match body.remove("Labels") {
        Some(Value::Object(labels)) => labels,
        _ => Map::new(),
    };
    for (name, value) in [
        (OWNER_LABEL, OWNER.to_owned()),
        (VERSION_LABEL, spec.version.clone()),
        (RESTART_POLICY_LABEL, spec.restart_policy.name().to_owned()),
        (DESIRED_STATUS_LABEL, spec.status.name().to_owned()),
        (
            CREATE_OPTIONS_LABEL,
            Value::Object(spec.create_options.clone()).to_string(),
        ),
        (FINGERPRINT_LABEL, spec.fingerprint()),
    ] {
        labels.insert(name.into(), json!(value));
    }
    body.insert("Labels".into(), Value::Object(labels));
    let host_config = body.entry("HostConfig").or_insert_with(|| json!({}));
    if !host_config.is_object() {
        *host_config = json!({});
    }
    let bind = format!("{}:{WORKLOAD_DIR_IN_CONTAINER}", placement.workload_dir);
    match host_config.get_mut("Binds") {
        Some(Value::Array(binds)) => binds.push(json!(bind)),
        _ => host_config["Binds"] = json!([bind]),
    }
    if host_config.get("NetworkMode").is_none() {
        host_config["NetworkMode"] = json!(placement.network);
    }
    Value::Object(body)
}

fn time_of(state: &Value, key: &str) -> Option<OffsetDateTime> {
    let text = state.get(key)?.as_str()?;
    // The engine's "never" is the zero time.
    if text.starts_with("0001-01-01") {
        return None;
    }
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// The module name of a container (its name without the leading `/`).
pub fn module_name(inspect: &Value) -> Option<String> {
    inspect
        .get("Name")
        .and_then(Value::as_str)
        .map(|n| n.trim_start_matches('/').to_owned())
}

/// Reads a `GET /containers/{id}/json` answer.
pub fn observed(inspect: &Value) -> Option<Observed> {
    let state = inspect.get("State")?;
    let labels = inspect.get("Config").and_then(|c| c.get("Labels"));
    Some(Observed {
        container_id: inspect.get("Id")?.as_str()?.to_owned(),
        fingerprint: labels
            .and_then(|l| l.get(FINGERPRINT_LABEL))
            .and_then(Value::as_str)
            .map(str::to_owned),
        image: inspect
            .get("Config")
            .and_then(|c| c.get("Image"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        image_id: inspect
            .get("Image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        running: state
            .get("Running")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        exit_code: state.get("ExitCode").and_then(Value::as_i64).unwrap_or(0),
        started_at: time_of(state, "StartedAt"),
        finished_at: time_of(state, "FinishedAt"),
        unhealthy: state
            .get("Health")
            .and_then(|h| h.get("Status"))
            .and_then(Value::as_str)
            == Some("unhealthy"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{DesiredStatus, ImagePullPolicy, RestartPolicy};

    fn spec(create_options: Value) -> ModuleSpec {
        ModuleSpec {
            name: "edgetwin".into(),
            version: "1.0".into(),
            image: "localhost:5000/edgetwin:1".into(),
            create_options_text: create_options.to_string(),
            create_options: create_options.as_object().cloned().unwrap(),
            env: BTreeMap::from([("RuntimeLogLevel".into(), "debug".into())]),
            status: DesiredStatus::Running,
            restart_policy: RestartPolicy::Always,
            image_pull_policy: ImagePullPolicy::OnCreate,
            startup_order: 0,
        }
    }

    fn placement_env() -> Vec<(String, String)> {
        vec![
            ("IOTEDGE_MODULEID".into(), "edgetwin".into()),
            ("RuntimeLogLevel".into(), "info".into()),
        ]
    }

    #[test]
    fn the_create_body_keeps_create_options_and_adds_env_labels_socket_and_network() {
        let spec = spec(json!({
            "Env": ["A=1", "RuntimeLogLevel=warn"],
            "Labels": {"mine": "yes"},
            "HostConfig": {"Binds": ["/sys/class/thermal:/sys/class/thermal:ro"], "PortBindings": {"9600/tcp": [{"HostPort": "9600"}]}}
        }));
        let env = placement_env();
        let body = create_body(
            &spec,
            &Placement {
                runtime_env: &env,
                workload_dir: "/data/mnt/m",
                network: "azure-iot-edge",
            },
        );
        assert_eq!(body["Image"], "localhost:5000/edgetwin:1");
        assert_eq!(
            body["Env"],
            json!(["A=1", "IOTEDGE_MODULEID=edgetwin", "RuntimeLogLevel=debug"])
        );
        assert_eq!(body["Labels"]["mine"], "yes");
        assert_eq!(body["Labels"][OWNER_LABEL], OWNER);
        assert_eq!(body["Labels"][FINGERPRINT_LABEL], spec.fingerprint());
        assert_eq!(
            body["HostConfig"]["Binds"],
            json!([
                "/sys/class/thermal:/sys/class/thermal:ro",
                "/data/mnt/m:/var/run/iotedge"
            ])
        );
        assert_eq!(
            body["HostConfig"]["PortBindings"]["9600/tcp"][0]["HostPort"],
            "9600"
        );
        assert_eq!(body["HostConfig"]["NetworkMode"], "azure-iot-edge");
    }

    #[test]
    fn a_network_chosen_in_create_options_is_kept() {
        let env = placement_env();
        let body = create_body(
            &spec(json!({"HostConfig": {"NetworkMode": "none"}})),
            &Placement {
                runtime_env: &env,
                workload_dir: "/s",
                network: "host",
            },
        );
        assert_eq!(body["HostConfig"]["NetworkMode"], "none");
        assert_eq!(body["HostConfig"]["Binds"], json!(["/s:/var/run/iotedge"]));
    }

    #[test]
    fn an_inspect_answer_is_read_into_what_the_plan_needs() {
        let inspect = json!({
            "Id": "abc", "Name": "/edgetwin", "Image": "sha256:123",
            "Config": {"Image": "localhost:5000/edgetwin:1", "Labels": {FINGERPRINT_LABEL: "f1"}},
            "State": {"Running": false, "ExitCode": 1, "StartedAt": "2026-12-06T23:00:00.123456789Z",
                "FinishedAt": "2026-12-06T23:00:05Z", "Health": {"Status": "unhealthy"}}
        });
        let observed = observed(&inspect).unwrap();
        assert_eq!(module_name(&inspect).as_deref(), Some("edgetwin"));
        assert_eq!(observed.container_id, "abc");
        assert_eq!(observed.fingerprint.as_deref(), Some("f1"));
        assert_eq!(observed.image_id, "sha256:123");
        assert!(!observed.running && observed.unhealthy);
        assert_eq!(observed.exit_code, 1);
        assert_eq!(observed.started_at.unwrap().unix_timestamp(), 1_796_598_000);
        let never = json!({"Id": "x", "State": {"Running": false, "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}});
        assert_eq!(super::observed(&never).unwrap().started_at, None);
    }
}
