//! The deployment in `$edgeAgent`'s desired properties, read as edgeAgent reads it
//! (Azure/iotedge `edge-agent/src/Microsoft.Azure.Devices.Edge.Agent.Core/DeploymentConfig.cs`,
//! `DockerConfig`, the deployment JSON schema): `schemaVersion` 1.0/1.1, `runtime` with
//! `registryCredentials`, `systemModules`, `modules` with `settings.image`, `createOptions` (and the
//! `createOptions01`… chunks iotedgedev splits long options into), `env`, `status`,
//! `restartPolicy`, `startupOrder`, `imagePullPolicy`, `version`.
//!
//! A deployment that cannot be read is refused whole with the status code edgeAgent reports
//! (`DeploymentStatusCode`: 400 ConfigFormatError, 412 InvalidSchemaVersion, 417 ConfigEmptyError)
//! and a description naming the field; nothing running is changed for it. Pure.

use std::collections::BTreeMap;

use edgetwin_wire::twin::Properties;
use edgetwin_wire::Secret;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The schema versions this runtime reads (edgeAgent 1.x reads 1.0 and 1.1).
pub const SUPPORTED_SCHEMA_VERSIONS: [&str; 2] = ["1.0", "1.1"];
/// `startupOrder` when none is given: last (`uint.MaxValue` in edgeAgent).
pub const DEFAULT_STARTUP_ORDER: u32 = u32::MAX;
/// The most `createOptions` chunks iotedgedev writes (`createOptions` + `01`…`07`).
const MAX_CREATE_OPTIONS_CHUNKS: usize = 8;

/// What a module should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DesiredStatus {
    /// Started and kept running per its restart policy.
    Running,
    /// Created (or kept) but not running.
    Stopped,
}

impl DesiredStatus {
    /// The name in the deployment.
    pub fn name(self) -> &'static str {
        match self {
            DesiredStatus::Running => "running",
            DesiredStatus::Stopped => "stopped",
        }
    }
}

/// When an exited module is started again, ordered as edgeAgent orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RestartPolicy {
    /// Never restarted.
    Never,
    /// Restarted when it exits with a non-zero code.
    OnFailure,
    /// Restarted when it fails or its health check says unhealthy.
    OnUnhealthy,
    /// Always restarted.
    Always,
}

impl RestartPolicy {
    /// The name in the deployment.
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::OnUnhealthy => "on-unhealthy",
            RestartPolicy::Always => "always",
        }
    }
}

/// When the image is pulled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Pulled when the container is created.
    OnCreate,
    /// Never pulled: the image must already be on the device.
    Never,
}

impl ImagePullPolicy {
    /// The name in the deployment.
    pub fn name(self) -> &'static str {
        match self {
            ImagePullPolicy::OnCreate => "on-create",
            ImagePullPolicy::Never => "never",
        }
    }
}

/// One module (or system module) of a deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleSpec {
    /// The module name (its module identity and container name).
    pub name: String,
    /// `version`: a change recreates the container.
    pub version: String,
    /// `settings.image`.
    pub image: String,
    /// `settings.createOptions` (+ chunks) as the deployment has it, a JSON string.
    pub create_options_text: String,
    /// The parsed create options (a JSON object).
    pub create_options: Map<String, Value>,
    /// `env`: name → value.
    pub env: BTreeMap<String, String>,
    /// `status`.
    pub status: DesiredStatus,
    /// `restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `imagePullPolicy`.
    pub image_pull_policy: ImagePullPolicy,
    /// `startupOrder`: lower starts first.
    pub startup_order: u32,
}

impl ModuleSpec {
    /// A digest of what a running container is made from (image, create options, env,
    /// version): when it changes, the container is recreated. Status and restart policy are not
    /// in it: they change without a new container.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!({
            "image": self.image,
            "createOptions": self.create_options,
            "env": self.env,
            "version": self.version,
        });
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Credentials for one registry (`runtime.settings.registryCredentials.<name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryCredential {
    /// `address`: the registry host (`host[:port]`).
    pub address: String,
    /// `username`.
    pub username: String,
    /// `password` (redacted in `Debug`).
    pub password: Secret,
}

/// A deployment as the agent applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    /// `schemaVersion`.
    pub schema_version: String,
    /// `runtime.settings` without the registry passwords (reported back as edgeAgent does).
    pub runtime_settings: Map<String, Value>,
    /// `runtime.settings.registryCredentials`.
    pub registry_credentials: Vec<RegistryCredential>,
    /// `systemModules.edgeAgent`.
    pub edge_agent_image: String,
    /// `systemModules.edgeHub`, when the deployment has one.
    pub edge_hub: Option<ModuleSpec>,
    /// `modules`, by name.
    pub modules: BTreeMap<String, ModuleSpec>,
}

impl Deployment {
    /// The registry credentials for `image`, matched on the image's registry host.
    pub fn credentials_for(&self, image: &str) -> Option<&RegistryCredential> {
        let host = registry_host(image)?;
        self.registry_credentials.iter().find(|c| c.address == host)
    }
}

/// The registry host of an image reference (`localhost:5000/m:1` → `localhost:5000`), if it has
/// one (the first path component has a dot or a colon or is `localhost`).
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// Why a deployment was refused, with the code edgeAgent reports in `lastDesiredStatus`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    /// No deployment: the desired properties are empty (417 ConfigEmptyError).
    #[error("the deployment is empty: $edgeAgent has no desired properties")]
    Empty,
    /// A schema version this runtime cannot read (412 InvalidSchemaVersion).
    #[error("schemaVersion {found} is not supported (supported: {})", SUPPORTED_SCHEMA_VERSIONS.join(", "))]
    SchemaVersion {
        /// The version found (or `missing`).
        found: String,
    },
    /// A field is missing or wrong (400 ConfigFormatError).
    #[error("{field} {reason}")]
    Format {
        /// The JSON path in `$edgeAgent`'s desired properties.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl DeploymentError {
    /// The `lastDesiredStatus.code` edgeAgent reports for it.
    pub fn code(&self) -> u16 {
        match self {
            DeploymentError::Empty => 417,
            DeploymentError::SchemaVersion { .. } => 412,
            DeploymentError::Format { .. } => 400,
        }
    }
}

fn format_error(field: impl Into<String>, reason: impl Into<String>) -> DeploymentError {
    DeploymentError::Format {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The module identity of a container: the system modules' identities are `$edgeAgent` and
/// `$edgeHub`; every other module's identity is its name.
pub fn identity_of(module: &str) -> String {
    match module {
        "edgeAgent" | "edgeHub" => format!("${module}"),
        other => other.to_owned(),
    }
}

/// Reads `$edgeAgent`'s desired properties (without `$version`).
pub fn parse(desired: &Properties) -> Result<Deployment, DeploymentError> {
    if desired.keys().all(|k| k.starts_with('$')) {
        return Err(DeploymentError::Empty);
    }
    let schema_version = match desired.get("schemaVersion") {
        Some(Value::String(v)) => v.clone(),
        Some(_) => return Err(format_error("schemaVersion", "must be a string")),
        None => {
            return Err(DeploymentError::SchemaVersion {
                found: "missing".into(),
            })
        }
    };
    if !schema_supported(&schema_version) {
        return Err(DeploymentError::SchemaVersion {
            found: schema_version,
        });
    }
    let runtime = object(desired.get("runtime"), "runtime")?;
    expect_docker(runtime, "runtime")?;
    let mut runtime_settings = match runtime.get("settings") {
        None => Map::new(),
        Some(settings) => object(Some(settings), "runtime.settings")?.clone(),
    };
    let registry_credentials = registry_credentials(&mut runtime_settings)?;
    let system = object(desired.get("systemModules"), "systemModules")?;
    let agent = object(system.get("edgeAgent"), "systemModules.edgeAgent")?;
    expect_docker(agent, "systemModules.edgeAgent")?;
    let agent_settings = object(agent.get("settings"), "systemModules.edgeAgent.settings")?;
    let edge_agent_image = image(agent_settings, "systemModules.edgeAgent.settings")?;
    let edge_hub = system
        .get("edgeHub")
        .map(|hub| module("edgeHub", hub, "systemModules.edgeHub"))
        .transpose()?;
    if let Some(other) = system.keys().find(|k| *k != "edgeAgent" && *k != "edgeHub") {
        return Err(format_error(
            format!("systemModules.{other}"),
            "is not a system module (edgeAgent and edgeHub are)",
        ));
    }
    let mut modules = BTreeMap::new();
    if let Some(list) = desired.get("modules") {
        for (name, spec) in object(Some(list), "modules")? {
            let path = format!("modules.{name}");
            check_module_name(name, &path)?;
            if identity_of(name) != *name {
                return Err(format_error(
                    path,
                    "is a system module's name (edgeAgent and edgeHub are under systemModules)",
                ));
            }
            modules.insert(name.clone(), module(name, spec, &path)?);
        }
    }
    Ok(Deployment {
        schema_version,
        runtime_settings,
        registry_credentials,
        edge_agent_image,
        edge_hub,
        modules,
    })
}

/// `1.0` and `1.1`, with an optional patch number (`1.1.0`), as edgeAgent accepts.
fn schema_supported(version: &str) -> bool {
    let mut parts = version.split('.');
    let major_minor = format!(
        "{}.{}",
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("")
    );
    let rest_ok = parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    rest_ok && SUPPORTED_SCHEMA_VERSIONS.contains(&major_minor.as_str())
}

fn object<'a>(
    value: Option<&'a Value>,
    field: &str,
) -> Result<&'a Map<String, Value>, DeploymentError> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(format_error(field, "must be an object")),
        None => Err(format_error(field, "is missing")),
    }
}

fn string<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, DeploymentError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format_error(format!("{path}.{key}"), "must be a string")),
    }
}

fn expect_docker(map: &Map<String, Value>, path: &str) -> Result<(), DeploymentError> {
    match string(map, "type", path)? {
        Some("docker") => Ok(()),
        Some(other) => Err(format_error(
            format!("{path}.type"),
            format!("is \"{other}\"; only \"docker\" is supported"),
        )),
        None => Err(format_error(format!("{path}.type"), "is missing")),
    }
}

fn image(settings: &Map<String, Value>, path: &str) -> Result<String, DeploymentError> {
    match string(settings, "image", path)? {
        Some(image) if !image.trim().is_empty() && !image.chars().any(char::is_whitespace) => {
            Ok(image.to_owned())
        }
        Some(_) => Err(format_error(
            format!("{path}.image"),
            "is not an image reference",
        )),
        None => Err(format_error(format!("{path}.image"), "is missing")),
    }
}

/// Container names are the module names, so a module name must be one Docker accepts.
fn check_module_name(name: &str, path: &str) -> Result<(), DeploymentError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if first_ok && rest_ok && name.len() <= 128 {
        Ok(())
    } else {
        Err(format_error(
            path,
            "is not a module name a container can have ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128)",
        ))
    }
}

fn module(name: &str, value: &Value, path: &str) -> Result<ModuleSpec, DeploymentError> {
    let spec = object(Some(value), path)?;
    expect_docker(spec, path)?;
    let settings_path = format!("{path}.settings");
    let settings = object(spec.get("settings"), &settings_path)?;
    let image = image(settings, &settings_path)?;
    let create_options_text = create_options(settings, &settings_path)?;
    let create_options = if create_options_text.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(&create_options_text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(format_error(
                    format!("{settings_path}.createOptions"),
                    "must be a JSON object",
                ))
            }
            Err(e) => {
                return Err(format_error(
                    format!("{settings_path}.createOptions"),
                    format!("is not valid JSON: {e}"),
                ))
            }
        }
    };
    let status = match string(spec, "status", path)? {
        None | Some("running") => DesiredStatus::Running,
        Some("stopped") => DesiredStatus::Stopped,
        Some(other) => {
            return Err(format_error(
                format!("{path}.status"),
                format!("is \"{other}\"; \"running\" or \"stopped\""),
            ))
        }
    };
    let restart_policy = match string(spec, "restartPolicy", path)? {
        Some("never") => RestartPolicy::Never,
        Some("on-failure") => RestartPolicy::OnFailure,
        // edgeAgent's default (`Constants.DefaultRestartPolicy`).
        None | Some("on-unhealthy") => RestartPolicy::OnUnhealthy,
        Some("always") => RestartPolicy::Always,
        Some(other) => {
            return Err(format_error(
                format!("{path}.restartPolicy"),
                format!("is \"{other}\"; never, on-failure, on-unhealthy or always"),
            ))
        }
    };
    let image_pull_policy = match string(spec, "imagePullPolicy", path)? {
        None | Some("on-create") => ImagePullPolicy::OnCreate,
        Some("never") => ImagePullPolicy::Never,
        Some(other) => {
            return Err(format_error(
                format!("{path}.imagePullPolicy"),
                format!("is \"{other}\"; on-create or never"),
            ))
        }
    };
    let startup_order = match spec.get("startupOrder") {
        None | Some(Value::Null) => DEFAULT_STARTUP_ORDER,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                format_error(
                    format!("{path}.startupOrder"),
                    "must be a whole number from 0 to 4294967295",
                )
            })?,
    };
    let version = match spec.get("version") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(format_error(format!("{path}.version"), "must be a string")),
    };
    Ok(ModuleSpec {
        name: name.to_owned(),
        version,
        image,
        create_options_text,
        create_options,
        env: env(spec, path)?,
        status,
        restart_policy,
        image_pull_policy,
        startup_order,
    })
}

/// `createOptions` followed by `createOptions01`…`07`, concatenated; a gap in the numbering or
/// a chunk that is not a string names the field.
fn create_options(settings: &Map<String, Value>, path: &str) -> Result<String, DeploymentError> {
    let mut text = String::new();
    let mut ended = false;
    for index in 0..MAX_CREATE_OPTIONS_CHUNKS {
        let key = if index == 0 {
            "createOptions".to_owned()
        } else {
            format!("createOptions{index:02}")
        };
        match settings.get(&key) {
            None => ended = true,
            Some(Value::String(chunk)) if !ended => text.push_str(chunk),
            Some(Value::String(_)) => {
                return Err(format_error(
                    format!("{path}.{key}"),
                    "follows a missing chunk",
                ))
            }
            Some(_) => {
                return Err(format_error(
                    format!("{path}.{key}"),
                    "must be a JSON string",
                ))
            }
        }
    }
    if let Some(extra) = settings.keys().find(|k| {
        k.starts_with("createOptions")
            && k.len() == "createOptions".len() + 2
            && k.as_str() > "createOptions07"
    }) {
        return Err(format_error(
            format!("{path}.{extra}"),
            "is beyond the last chunk (createOptions07)",
        ));
    }
    Ok(text)
}

fn env(spec: &Map<String, Value>, path: &str) -> Result<BTreeMap<String, String>, DeploymentError> {
    let mut env = BTreeMap::new();
    let Some(list) = spec.get("env") else {
        return Ok(env);
    };
    for (name, entry) in object(Some(list), &format!("{path}.env"))? {
        let field = format!("{path}.env.{name}.value");
        let value = match entry.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(_) => return Err(format_error(field, "must be a string, number or boolean")),
            None => return Err(format_error(field, "is missing")),
        };
        if name.is_empty() || name.contains('=') {
            return Err(format_error(
                format!("{path}.env.{name}"),
                "is not a variable name",
            ));
        }
        env.insert(name.clone(), value);
    }
    Ok(env)
}

/// Reads `registryCredentials` out of `settings`, leaving only what is reported (addresses and
/// user names, never passwords).
fn registry_credentials(
    settings: &mut Map<String, Value>,
) -> Result<Vec<RegistryCredential>, DeploymentError> {
    let Some(list) = settings.get_mut("registryCredentials") else {
        return Ok(Vec::new());
    };
    let path = "runtime.settings.registryCredentials";
    let Value::Object(entries) = list else {
        return Err(format_error(path, "must be an object"));
    };
    let mut credentials = Vec::new();
    for (name, entry) in entries.iter_mut() {
        let entry_path = format!("{path}.{name}");
        let Value::Object(fields) = entry else {
            return Err(format_error(entry_path, "must be an object"));
        };
        let field = |key: &str| match fields.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(format_error(
                format!("{entry_path}.{key}"),
                "must be a non-empty string",
            )),
        };
        credentials.push(RegistryCredential {
            address: field("address")?,
            username: field("username")?,
            password: Secret::new(field("password")?),
        });
        fields.remove("password");
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired(value: Value) -> Properties {
        value.as_object().cloned().unwrap()
    }

    fn minimal() -> Value {
        json!({
            "schemaVersion": "1.1",
            "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25",
                "registryCredentials": {"local": {"address": "localhost:5000", "username": "u", "password": "p@ss"}}}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5", "createOptions": "{}"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                    "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5", "createOptions": "{}"}}
            },
            "modules": {
                "edgetwin": {"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always",
                    "startupOrder": 2,
                    "env": {"RuntimeLogLevel": {"value": "info"}, "N": {"value": 3}},
                    "settings": {"image": "localhost:5000/edgetwin:0.1.0-amd64",
                        "createOptions": "{\"HostConfig\":{\"Binds\":[\"/a:/b\"]",
                        "createOptions01": ",\"NetworkMode\":\"host\"}}"}}
            }
        })
    }

    #[test]
    fn a_generated_manifest_is_read_with_its_chunks_env_and_credentials() {
        let deployment = parse(&desired(minimal())).unwrap();
        assert_eq!(deployment.schema_version, "1.1");
        let module = &deployment.modules["edgetwin"];
        assert_eq!(module.image, "localhost:5000/edgetwin:0.1.0-amd64");
        assert_eq!(module.create_options["HostConfig"]["NetworkMode"], "host");
        assert_eq!(module.env["N"], "3");
        assert_eq!(module.status, DesiredStatus::Running);
        assert_eq!(module.restart_policy, RestartPolicy::Always);
        assert_eq!(module.startup_order, 2);
        assert_eq!(deployment.edge_hub.as_ref().unwrap().name, "edgeHub");
        let credential = deployment.credentials_for(&module.image).unwrap();
        assert_eq!(
            (credential.username.as_str(), credential.password.expose()),
            ("u", "p@ss")
        );
        assert_eq!(
            deployment.runtime_settings["registryCredentials"]["local"],
            json!({"address": "localhost:5000", "username": "u"}),
            "passwords are not kept for reporting"
        );
        assert!(!format!("{deployment:?}").contains("p@ss"));
    }

    #[test]
    fn defaults_are_edge_agents() {
        let mut value = minimal();
        value["modules"]["edgetwin"] = json!({"type": "docker", "settings": {"image": "m:1"}});
        let module = &parse(&desired(value)).unwrap().modules["edgetwin"];
        assert_eq!(module.restart_policy, RestartPolicy::OnUnhealthy);
        assert_eq!(module.image_pull_policy, ImagePullPolicy::OnCreate);
        assert_eq!(module.startup_order, DEFAULT_STARTUP_ORDER);
        assert!(module.create_options.is_empty());
    }

    #[test]
    fn the_fingerprint_changes_with_image_env_options_and_version_but_not_status() {
        let base = parse(&desired(minimal())).unwrap().modules["edgetwin"].clone();
        let mut other = base.clone();
        other.status = DesiredStatus::Stopped;
        other.restart_policy = RestartPolicy::Never;
        assert_eq!(base.fingerprint(), other.fingerprint());
        for change in [
            |m: &mut ModuleSpec| m.image.push('2'),
            |m: &mut ModuleSpec| {
                m.env.insert("X".into(), "1".into());
            },
            |m: &mut ModuleSpec| m.version.push('1'),
            |m: &mut ModuleSpec| {
                m.create_options.insert("User".into(), json!("1"));
            },
        ] {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(base.fingerprint(), changed.fingerprint());
        }
    }

    #[test]
    fn empty_and_unsupported_schema_deployments_get_417_and_412() {
        let error = parse(&desired(json!({"$metadata": {}}))).unwrap_err();
        assert_eq!(error.code(), 417);
        for version in ["2.0", "1.2", "1", "x"] {
            let mut value = minimal();
            value["schemaVersion"] = json!(version);
            let error = parse(&desired(value)).unwrap_err();
            assert_eq!(error.code(), 412, "{version}");
            assert!(error.to_string().contains(version));
        }
        let mut value = minimal();
        value["schemaVersion"] = json!("1.0.2");
        assert!(parse(&desired(value)).is_ok());
    }

    #[test]
    fn format_errors_name_the_field_with_code_400() {
        type Change = fn(&mut Value);
        let cases: [(Change, &str); 8] = [
            (
                |v| v["modules"]["edgetwin"]["settings"]["createOptions"] = json!("{bad"),
                "modules.edgetwin.settings.createOptions",
            ),
            (
                |v| v["modules"]["edgetwin"]["settings"]["image"] = json!(""),
                "modules.edgetwin.settings.image",
            ),
            (
                |v| v["modules"]["edgetwin"]["status"] = json!("paused"),
                "modules.edgetwin.status",
            ),
            (
                |v| v["modules"]["edgetwin"]["restartPolicy"] = json!("sometimes"),
                "modules.edgetwin.restartPolicy",
            ),
            (
                |v| v["modules"]["edgetwin"]["startupOrder"] = json!(-1),
                "modules.edgetwin.startupOrder",
            ),
            (
                |v| v["modules"]["edgetwin"]["env"]["X"] = json!({"v": 1}),
                "modules.edgetwin.env.X.value",
            ),
            (|v| v["runtime"]["type"] = json!("rkt"), "runtime.type"),
            (|v| v["modules"]["bad name"] = json!({}), "modules.bad name"),
        ];
        for (change, field) in cases {
            let mut value = minimal();
            change(&mut value);
            let error = parse(&desired(value)).unwrap_err();
            assert_eq!(error.code(), 400, "{field}");
            assert!(
                error.to_string().starts_with(field),
                "{error} should name {field}"
            );
        }
    }

    #[test]
    fn system_module_names_are_their_identities_and_not_module_names() {
        assert_eq!(identity_of("edgeHub"), "$edgeHub");
        assert_eq!(identity_of("edgetwin"), "edgetwin");
        let mut value = minimal();
        value["modules"]["edgeHub"] = value["modules"]["edgetwin"].clone();
        let error = parse(&desired(value)).unwrap_err();
        assert_eq!(error.code(), 400);
        assert!(
            error
                .to_string()
                .starts_with("modules.edgeHub is a system module's name"),
            "{error}"
        );
    }

    #[test]
    fn a_chunk_after_a_gap_is_refused() {
        let mut value = minimal();
        value["modules"]["edgetwin"]["settings"]["createOptions03"] = json!("}");
        let error = parse(&desired(value)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "modules.edgetwin.settings.createOptions03 follows a missing chunk"
        );
    }

    #[test]
    fn registry_hosts_are_told_from_docker_hub_names() {
        assert_eq!(registry_host("localhost:5000/a:1"), Some("localhost:5000"));
        assert_eq!(
            registry_host("myacr.azurecr.io/a/b:1"),
            Some("myacr.azurecr.io")
        );
        assert_eq!(registry_host("library/a:1"), None);
        assert_eq!(registry_host("a"), None);
    }
}
