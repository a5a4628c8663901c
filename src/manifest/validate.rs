//! Validation of deployment manifests (and templates): required fields, types, schema versions,
//! createOptions sizes, module names and route syntax. Every finding names the JSON path.

use std::path::{Path, PathBuf};

use edgetwin_wire::route::{Route, Sink};

use super::create_options::{self, CHUNK_CHARS, MAX_CHUNKS};
use super::error::ManifestError;
use super::layout::{self, KeyPath};
use super::serialize::to_python_compact;
use super::value::{self, Object, Value};

/// What is being validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A generated manifest: createOptions are strings, images are resolved.
    Manifest,
    /// A template: createOptions may be objects, images may be `${...}` placeholders.
    Template,
}

/// `$edgeAgent` schema versions the agent accepts.
pub const AGENT_SCHEMA_VERSIONS: [&str; 2] = ["1.0", "1.1"];
/// `$edgeHub` schema versions the hub accepts.
pub const HUB_SCHEMA_VERSIONS: [&str; 4] = ["1.0", "1.1", "1.2", "1.3"];
/// Module twin desired properties limit (bytes of compact JSON).
pub const DESIRED_MAX_BYTES: usize = 32 * 1024;
/// Modules per deployment.
pub const MAX_MODULES: usize = 50;

const RESTART_POLICIES: [&str; 4] = ["never", "on-failure", "on-unhealthy", "always"];
const PULL_POLICIES: [&str; 2] = ["on-create", "never"];

/// Validates `doc` (read from `file`), returning every problem found.
pub fn validate(doc: &Value, file: &Path, mode: Mode) -> Vec<ManifestError> {
    let mut v = Validator {
        file: file.to_path_buf(),
        mode,
        findings: Vec::new(),
    };
    v.document(doc);
    v.findings
}

/// Reads and validates a file; a template (a `$schema-template` key) is validated as one.
pub fn validate_file(file: &Path) -> Result<Vec<ManifestError>, ManifestError> {
    let text = std::fs::read_to_string(file).map_err(|source| ManifestError::Io {
        file: file.to_path_buf(),
        source,
    })?;
    let doc = value::parse(&text).map_err(|e| ManifestError::Json {
        file: file.to_path_buf(),
        message: e.message,
        line: e.line,
        column: e.column,
    })?;
    let mode = match doc.as_object() {
        Some(o) if o.contains_key("$schema-template") => Mode::Template,
        _ => Mode::Manifest,
    };
    Ok(validate(&doc, file, mode))
}

/// `^[a-zA-Z0-9_-]+$`
pub fn is_valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `^[^.$# ]+$` (route and registry credential names)
fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['.', '$', '#', ' '])
}

fn is_valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| "+#$.".contains(c) || c.is_whitespace())
}

struct Validator {
    file: PathBuf,
    mode: Mode,
    findings: Vec<ManifestError>,
}

fn push(path: &[String], key: &str) -> KeyPath {
    let mut p = path.to_vec();
    p.push(key.to_string());
    p
}

impl Validator {
    fn err(&mut self, path: &[String], message: impl Into<String>) {
        self.findings.push(ManifestError::Invalid {
            file: self.file.clone(),
            path: if path.is_empty() {
                "$".to_string()
            } else {
                layout::render(path)
            },
            message: message.into(),
        });
    }

    /// The value at `key` of `obj`; reports it missing if `required`.
    fn field<'a>(
        &mut self,
        obj: &'a Object,
        path: &[String],
        key: &str,
        required: bool,
    ) -> Option<&'a Value> {
        let value = obj.get(key);
        if value.is_none() && required {
            self.err(&push(path, key), "required but missing");
        }
        value
    }

    /// Reports the value at `key` as not being `expected` (`"an object"`, ...).
    fn mistyped(&mut self, path: &[String], key: &str, expected: &str, found: &Value) {
        self.err(
            &push(path, key),
            format!("must be {expected}, not {}", found.type_name()),
        );
    }

    /// The object at `key` of `obj`; reports missing (if `required`) or mistyped values.
    fn object<'a>(
        &mut self,
        obj: &'a Object,
        path: &[String],
        key: &str,
        required: bool,
    ) -> Option<&'a Object> {
        match self.field(obj, path, key, required)? {
            Value::Object(o) => Some(o),
            other => {
                self.mistyped(path, key, "an object", other);
                None
            }
        }
    }

    fn string<'a>(
        &mut self,
        obj: &'a Object,
        path: &[String],
        key: &str,
        required: bool,
    ) -> Option<&'a str> {
        match self.field(obj, path, key, required)? {
            Value::Str(s) => Some(s),
            other => {
                self.mistyped(path, key, "a string", other);
                None
            }
        }
    }

    fn one_of(
        &mut self,
        obj: &Object,
        path: &[String],
        key: &str,
        required: bool,
        allowed: &[&str],
    ) {
        if let Some(s) = self.string(obj, path, key, required) {
            if !allowed.contains(&s) {
                let s = s.to_string();
                self.err(
                    &push(path, key),
                    format!("{s:?} is not one of {}", allowed.join(", ")),
                );
            }
        }
    }

    fn uint(
        &mut self,
        obj: &Object,
        path: &[String],
        key: &str,
        required: bool,
        max: u64,
    ) -> Option<u64> {
        match self.field(obj, path, key, required)? {
            Value::Int(i) => match i.parse::<u64>() {
                Ok(n) if n <= max => Some(n),
                _ => {
                    self.err(
                        &push(path, key),
                        format!("must be an integer from 0 to {max}, not {i}"),
                    );
                    None
                }
            },
            other => {
                self.mistyped(path, key, "an integer", other);
                None
            }
        }
    }

    fn document(&mut self, doc: &Value) {
        let Some(root) = doc.as_object() else {
            self.err(
                &[],
                format!(
                    "a deployment manifest must be a JSON object, not {}",
                    doc.type_name()
                ),
            );
            return;
        };
        if self.mode == Mode::Manifest && root.contains_key("$schema-template") {
            self.err(
                &["$schema-template".into()],
                "a generated manifest must not contain $schema-template",
            );
        }
        let layered = layout::is_layered(root);
        let Some(content_path) = layout::module_content_path(root) else {
            let path = if layered {
                vec!["content".into(), "modulesContent".into()]
            } else {
                vec!["modulesContent".into()]
            };
            self.err(&path, "required but missing");
            return;
        };
        let Some(content) = layout::get(doc, &content_path).and_then(Value::as_object) else {
            self.err(&content_path, "must be an object");
            return;
        };
        let agent = self.desired(content, &content_path, "$edgeAgent", !layered);
        let hub = self.desired(content, &content_path, "$edgeHub", !layered);
        let mut deployed: Vec<String> = Vec::new();
        if let Some((path, desired)) = agent {
            deployed = self.agent(desired, &path);
        } else if layered {
            // Layered deployments may set single modules through dotted keys.
            if let Some(users) = layout::user_modules(content) {
                for (name, rel) in users {
                    let path = [content_path.clone(), rel].concat();
                    if let Some(m) = layout::get(doc, &path) {
                        self.module(&name, m, &path, None);
                    }
                }
            }
        }
        if let Some((path, desired)) = hub {
            let known = if layered {
                None
            } else {
                Some(deployed.as_slice())
            };
            self.hub(desired, &path, known);
        }
        for (name, entry) in content.iter() {
            if name == "$edgeAgent" || name == "$edgeHub" {
                continue;
            }
            let path = push(&content_path, name);
            if !is_valid_module_name(name) {
                self.err(
                    &path,
                    format!("module name {name:?} must match ^[a-zA-Z0-9_-]+$"),
                );
            }
            let Some(entry) = entry.as_object() else {
                self.err(
                    &path,
                    format!("must be an object, not {}", entry.type_name()),
                );
                continue;
            };
            if !layered {
                self.desired(content, &content_path, name, true);
            }
            let size = to_python_compact(&Value::Object(entry.clone())).len();
            if size > DESIRED_MAX_BYTES {
                self.err(&path, format!("desired properties are {size} bytes; a module twin allows {DESIRED_MAX_BYTES}"));
            }
        }
    }

    /// `<module>.properties.desired` (dotted or nested), checked to be an object.
    fn desired<'a>(
        &mut self,
        content: &'a Object,
        base: &[String],
        module: &str,
        required: bool,
    ) -> Option<(KeyPath, &'a Object)> {
        let module_path = push(base, module);
        let Some(entry) = content.get(module) else {
            if required {
                self.err(&module_path, "required but missing");
            }
            return None;
        };
        if entry.as_object().is_none() {
            self.err(
                &module_path,
                format!("must be an object, not {}", entry.type_name()),
            );
            return None;
        }
        let Some(rel) = layout::desired_path(content, module) else {
            if required {
                self.err(
                    &push(&module_path, "properties.desired"),
                    "required but missing",
                );
            }
            return None;
        };
        let path = [base.to_vec(), rel.clone()].concat();
        match layout::get_in(content, &rel) {
            Some(Value::Object(o)) => Some((path, o)),
            Some(other) => {
                self.err(
                    &path,
                    format!("must be an object, not {}", other.type_name()),
                );
                None
            }
            None => None,
        }
    }

    fn schema_version(
        &mut self,
        desired: &Object,
        path: &[String],
        allowed: &[&str],
        who: &str,
    ) -> Option<String> {
        let version = self
            .string(desired, path, "schemaVersion", true)?
            .to_string();
        if !allowed.contains(&version.as_str()) {
            self.err(
                &push(path, "schemaVersion"),
                format!(
                    "{who} does not accept schemaVersion {version:?} (accepted: {})",
                    allowed.join(", ")
                ),
            );
            return None;
        }
        Some(version)
    }

    /// Checks `$edgeAgent` desired properties; returns the deployed user module names.
    fn agent(&mut self, desired: &Object, path: &[String]) -> Vec<String> {
        self.schema_version(desired, path, &AGENT_SCHEMA_VERSIONS, "edgeAgent");
        if let Some(runtime) = self.object(desired, path, "runtime", true) {
            let rpath = push(path, "runtime");
            if let Some(t) = self.string(runtime, &rpath, "type", true) {
                if t != "docker" {
                    let t = t.to_string();
                    self.err(&push(&rpath, "type"), format!("{t:?} is not \"docker\""));
                }
            }
            if let Some(settings) = self.object(runtime, &rpath, "settings", false) {
                let spath = push(&rpath, "settings");
                self.string(settings, &spath, "minDockerVersion", false);
                self.string(settings, &spath, "loggingOptions", false);
                if let Some(creds) = self.object(settings, &spath, "registryCredentials", false) {
                    let cpath = push(&spath, "registryCredentials");
                    for (name, cred) in creds.iter() {
                        let p = push(&cpath, name);
                        if !is_valid_key_name(name) {
                            self.err(&p, format!("registry credential name {name:?} must not contain '.', '$', '#' or spaces"));
                        }
                        let Some(cred) = cred.as_object() else {
                            self.err(&p, format!("must be an object, not {}", cred.type_name()));
                            continue;
                        };
                        self.string(cred, &p, "username", true);
                        self.string(cred, &p, "password", true);
                        if let Some(address) = self.string(cred, &p, "address", true) {
                            if address.is_empty() || address.contains(char::is_whitespace) {
                                self.err(
                                    &push(&p, "address"),
                                    "must be a non-empty registry address without whitespace",
                                );
                            }
                        }
                    }
                }
            }
        }
        if let Some(system) = self.object(desired, path, "systemModules", true) {
            let spath = push(path, "systemModules");
            for name in ["edgeAgent", "edgeHub"] {
                match system.get(name) {
                    Some(m) => self.module(name, m, &push(&spath, name), Some(name)),
                    None => self.err(&push(&spath, name), "required but missing"),
                }
            }
            for (name, _) in system.iter() {
                if name != "edgeAgent" && name != "edgeHub" {
                    self.err(
                        &push(&spath, name),
                        "unknown system module (only edgeAgent and edgeHub)",
                    );
                }
            }
        }
        let mut names = Vec::new();
        if let Some(modules) = self.object(desired, path, "modules", true) {
            let mpath = push(path, "modules");
            if modules.len() > MAX_MODULES {
                self.err(
                    &mpath,
                    format!(
                        "{} modules; a deployment allows at most {MAX_MODULES}",
                        modules.len()
                    ),
                );
            }
            for (name, m) in modules.iter() {
                let p = push(&mpath, name);
                if !is_valid_module_name(name) {
                    self.err(
                        &p,
                        format!("module name {name:?} must match ^[a-zA-Z0-9_-]+$"),
                    );
                }
                self.module(name, m, &p, None);
                names.push(name.clone());
            }
        }
        let size = to_python_compact(&Value::Object(desired.clone())).len();
        if size > DESIRED_MAX_BYTES {
            self.err(
                path,
                format!(
                    "desired properties are {size} bytes; a module twin allows {DESIRED_MAX_BYTES}"
                ),
            );
        }
        names
    }

    fn module(&mut self, _name: &str, module: &Value, path: &[String], system: Option<&str>) {
        let Some(m) = module.as_object() else {
            self.err(
                path,
                format!("must be an object, not {}", module.type_name()),
            );
            return;
        };
        if let Some(t) = self.string(m, path, "type", true) {
            if t != "docker" {
                let t = t.to_string();
                self.err(&push(path, "type"), format!("{t:?} is not \"docker\""));
            }
        }
        match system {
            Some("edgeAgent") => {
                for key in ["status", "restartPolicy"] {
                    if m.contains_key(key) {
                        self.err(
                            &push(path, key),
                            "not allowed for the edgeAgent system module",
                        );
                    }
                }
            }
            Some(_) => {
                self.one_of(m, path, "status", true, &["running"]);
                self.one_of(m, path, "restartPolicy", true, &RESTART_POLICIES);
            }
            None => {
                self.string(m, path, "version", false);
                self.one_of(m, path, "status", true, &["running", "stopped"]);
                self.one_of(m, path, "restartPolicy", true, &RESTART_POLICIES);
            }
        }
        self.one_of(m, path, "imagePullPolicy", false, &PULL_POLICIES);
        if system != Some("edgeAgent") {
            self.uint(m, path, "startupOrder", false, u32::MAX as u64);
        }
        if let Some(env) = self.object(m, path, "env", false) {
            let epath = push(path, "env");
            for (var, value) in env.iter() {
                let p = push(&epath, var);
                if !is_valid_env_name(var) {
                    self.err(&p, format!("environment variable name {var:?} must not contain + # $ . or whitespace"));
                }
                match value.as_object().and_then(|o| o.get("value")) {
                    Some(Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_)) => {}
                    Some(other) => self.err(
                        &push(&p, "value"),
                        format!(
                            "must be a string, number or boolean, not {}",
                            other.type_name()
                        ),
                    ),
                    None => self.err(&p, "must be an object {\"value\": ...}"),
                }
            }
        }
        if let Some(settings) = self.object(m, path, "settings", true) {
            let spath = push(path, "settings");
            if let Some(image) = self.string(settings, &spath, "image", true) {
                if image.trim().is_empty() {
                    self.err(&push(&spath, "image"), "must not be empty");
                } else if self.mode == Mode::Manifest && image.contains("${") {
                    let image = image.to_string();
                    self.err(
                        &push(&spath, "image"),
                        format!("unresolved placeholder in {image:?}"),
                    );
                }
            }
            self.create_options(settings, &spath);
        }
    }

    fn create_options(&mut self, settings: &Object, path: &[String]) {
        let Some(first) = settings.get("createOptions") else {
            for key in settings.keys() {
                if key.starts_with("createOptions") {
                    self.err(
                        &push(path, key),
                        "createOptions chunks without createOptions",
                    );
                }
            }
            return;
        };
        let chunks = create_options::present_chunks(settings);
        for key in settings.keys() {
            if let Some(suffix) = key.strip_prefix("createOptions") {
                if !suffix.is_empty() && !chunks.iter().any(|(k, _)| k == key) {
                    let why = if suffix.len() == 2
                        && suffix.bytes().all(|b| b.is_ascii_digit())
                        && suffix.parse::<usize>().is_ok_and(|n| n < MAX_CHUNKS)
                    {
                        "follows a gap in the createOptions chunks".to_string()
                    } else {
                        format!("createOptions has at most {MAX_CHUNKS} chunks (createOptions, createOptions01 … createOptions07)")
                    };
                    self.err(&push(path, key), why);
                }
            }
        }
        let combined = if self.mode == Mode::Template && !matches!(first, Value::Str(_)) {
            let text = create_options::stringify(first);
            let count = create_options::chunks(&text).len();
            if count > MAX_CHUNKS {
                self.err(
                    &push(path, "createOptions"),
                    format!("{} characters when serialised: more than {MAX_CHUNKS} chunks of {CHUNK_CHARS} (4 KiB)", text.chars().count()),
                );
            }
            text
        } else {
            let mut combined = String::new();
            for (key, value) in &chunks {
                match value {
                    Value::Str(s) => {
                        let n = s.chars().count();
                        if n > CHUNK_CHARS {
                            self.err(
                                &push(path, key),
                                format!(
                                    "{n} characters; each createOptions chunk allows {CHUNK_CHARS}"
                                ),
                            );
                        }
                        combined.push_str(s);
                    }
                    other => {
                        self.err(
                            &push(path, key),
                            format!("must be a string, not {}", other.type_name()),
                        );
                        return;
                    }
                }
            }
            let n = combined.chars().count();
            if n > CHUNK_CHARS * MAX_CHUNKS {
                self.err(
                    &push(path, "createOptions"),
                    format!(
                        "{n} characters in all; createOptions allows {} (4 KiB)",
                        CHUNK_CHARS * MAX_CHUNKS
                    ),
                );
            }
            combined
        };
        let trimmed = combined.trim();
        if trimmed.is_empty() {
            return;
        }
        match value::parse(trimmed) {
            Ok(Value::Object(_)) => {}
            Ok(other) => self.err(
                &push(path, "createOptions"),
                format!("must be a JSON object, not {}", other.type_name()),
            ),
            Err(e) => self.err(
                &push(path, "createOptions"),
                format!("is not valid JSON: {e}"),
            ),
        }
    }

    fn hub(&mut self, desired: &Object, path: &[String], deployed: Option<&[String]>) {
        let version = self.schema_version(desired, path, &HUB_SCHEMA_VERSIONS, "edgeHub");
        let at_least = |v: &str| version.as_deref().is_some_and(|have| have >= v);
        if let Some(routes) = self.object(desired, path, "routes", true) {
            let rpath = push(path, "routes");
            for (name, route) in routes.iter() {
                let p = push(&rpath, name);
                if !is_valid_key_name(name) {
                    self.err(
                        &p,
                        format!("route name {name:?} must not contain '.', '$', '#' or spaces"),
                    );
                }
                let (text, text_path) = match route {
                    Value::Str(s) => (s.as_str(), p.clone()),
                    Value::Object(o) if at_least("1.1") => {
                        self.uint(o, &p, "priority", false, 9);
                        self.uint(o, &p, "timeToLiveSecs", false, u32::MAX as u64);
                        match self.string(o, &p, "route", true) {
                            Some(s) => (s, push(&p, "route")),
                            None => continue,
                        }
                    }
                    Value::Object(_) => {
                        self.err(
                            &p,
                            "route objects need $edgeHub schemaVersion 1.1 or later; use a string",
                        );
                        continue;
                    }
                    other => {
                        self.err(
                            &p,
                            format!("must be a route string, not {}", other.type_name()),
                        );
                        continue;
                    }
                };
                match Route::parse(text) {
                    Ok(route) => {
                        if let (Some(deployed), Sink::ModuleInput { module, .. }) =
                            (deployed, &route.sink)
                        {
                            if !deployed.iter().any(|d| d == module) {
                                self.err(&text_path, format!("routes to module {module:?}, which the deployment does not contain"));
                            }
                        }
                    }
                    Err(why) => self.err(&text_path, format!("invalid route {text:?}: {why}")),
                }
            }
        }
        let required = version.is_some();
        if let Some(sf) = self.object(desired, path, "storeAndForwardConfiguration", required) {
            self.uint(
                sf,
                &push(path, "storeAndForwardConfiguration"),
                "timeToLiveSecs",
                true,
                u32::MAX as u64,
            );
        }
        if desired.contains_key("mqttBroker") && version.is_some() && !at_least("1.2") {
            self.err(
                &push(path, "mqttBroker"),
                "needs $edgeHub schemaVersion 1.2 or later",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_checked_with_the_shared_route_grammar() {
        let broken = Route::parse("FROM /messages/* INTO $downstream").unwrap_err();
        assert!(broken.to_string().contains("$downstream"));
        assert!(Route::parse(
            "FROM /messages/modules/a/outputs/* WHERE $body.x > 1 INTO $upstream"
        )
        .is_ok());
    }

    #[test]
    fn names() {
        assert!(is_valid_module_name("edge-twin_2"));
        assert!(!is_valid_module_name("edge.twin"));
        assert!(!is_valid_module_name(""));
        assert!(is_valid_key_name("telemetryToUpstream"));
        assert!(!is_valid_key_name("a.b"));
    }
}
