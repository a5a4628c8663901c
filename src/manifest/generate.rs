//! `iotedgedev solution genconfig`, step by step (spec Part B2, steps 1–12).

use std::path::{Path, PathBuf};

use super::create_options::{self, MAX_CHUNKS};
use super::env::Env;
use super::error::ManifestError;
use super::expand::expandvars;
use super::layout::{self, KeyPath};
use super::modules::{moduledir_path, scan_modules_dir, ModuleProject, PlaceholderMap};
use super::serialize::to_python_indent2;
use super::validate;
use super::value::{self, Value};

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct GenOptions {
    /// The solution directory (iotedgedev's current working directory).
    pub dir: PathBuf,
    /// The template, relative to `dir` (default `$DEPLOYMENT_CONFIG_TEMPLATE_FILE`).
    pub template: Option<PathBuf>,
    /// The platform (default `$DEFAULT_PLATFORM`, then `amd64`).
    pub platform: Option<String>,
}

/// The result of a generation.
#[derive(Debug)]
pub struct Generated {
    /// The template that was read (as given, relative to the solution directory).
    pub template: PathBuf,
    /// The platform used.
    pub platform: String,
    /// The manifest written, as iotedgedev names it (`config/deployment.amd64.json`), relative
    /// to the solution directory unless `CONFIG_OUTPUT_DIR` is absolute.
    pub output: PathBuf,
    /// The manifest.
    pub manifest: Value,
    /// The exact text written.
    pub text: String,
    /// Validation findings (the file is written before validation, as iotedgedev does).
    pub findings: Vec<ManifestError>,
}

/// Reads `path` (relative to `dir`), expands variables and parses it.
fn load_expanded(dir: &Path, path: &Path, env: &Env) -> Result<Value, ManifestError> {
    let full = dir.join(path);
    let text = std::fs::read_to_string(&full).map_err(|source| ManifestError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    value::parse(&expandvars(&text, env)).map_err(|e| ManifestError::Json {
        file: path.to_path_buf(),
        message: e.message,
        line: e.line,
        column: e.column,
    })
}

/// The environment iotedgedev works with: the process environment, then `.env` from `dir`
/// (existing variables win), then iotedgedev's defaults.
pub fn solution_env(dir: &Path, mut env: Env) -> Result<Env, ManifestError> {
    let dotenv = env.dotenv_path(dir);
    env.load_dotenv(&dotenv)?;
    env.apply_iotedgedev_defaults();
    Ok(env)
}

/// iotedgedev's `get_deployment_manifest_name`.
pub fn manifest_name(template: &Path, schema_template: &str, platform: &str, env: &Env) -> String {
    if let Some(name) = env.get("DEPLOYMENT_CONFIG_FILE") {
        return name.to_string();
    }
    let suffix = if schema_template > "0.0.1" {
        format!(".{platform}")
    } else {
        String::new()
    };
    let base = template
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = if let Some(p) = base.strip_suffix(".template.json") {
        p.to_string()
    } else if let Some(p) = base.strip_suffix(".json") {
        p.to_string()
    } else {
        "deployment".to_string()
    };
    format!("{prefix}{suffix}.json")
}

fn template_error(file: &Path, path: &[String], message: impl Into<String>) -> ManifestError {
    ManifestError::Template {
        file: file.to_path_buf(),
        path: layout::render(path),
        message: message.into(),
    }
}

fn concat(a: &[String], b: &[String]) -> KeyPath {
    a.iter().chain(b).cloned().collect()
}

/// The module folder of an image placeholder that resolves only for the selected platform
/// (`${MODULES.<folder>}`, `${MODULEDIR<dir>}`, each also with `.debug`), and whether it is the
/// debug one; `template_dir` gives the directory `MODULEDIR` paths are relative to.
fn platform_placeholder(
    image: &str,
    modules_dir: &Path,
    template_dir: impl Fn() -> PathBuf,
) -> Option<(PathBuf, bool)> {
    let inner = image.strip_prefix("${")?.strip_suffix('}')?;
    let (inner, debug) = match inner.strip_suffix(".debug") {
        Some(base) => (base, true),
        None => (inner, false),
    };
    if let Some(folder) = inner.strip_prefix("MODULES.") {
        return (!folder.is_empty() && !folder.contains(['.', '/']))
            .then(|| (modules_dir.join(folder), debug));
    }
    let path = inner.strip_prefix("MODULEDIR<")?.strip_suffix('>')?;
    (moduledir_path(image).as_deref() == Some(path)).then(|| (template_dir().join(path), debug))
}

/// Runs genconfig with `env` as the process environment: writes the manifest and validates it.
pub fn genconfig(options: &GenOptions, env: Env) -> Result<Generated, ManifestError> {
    let dir = &options.dir;
    // Steps 1–2.
    let env = solution_env(dir, env)?;
    let default_template = PathBuf::from(env.get_stripped("DEPLOYMENT_CONFIG_TEMPLATE_FILE"));
    let template = options.template.clone().unwrap_or(default_template.clone());
    let platform = options
        .platform
        .clone()
        .unwrap_or_else(|| env.get_stripped("DEFAULT_PLATFORM").to_string());
    // At start-up iotedgedev parses the default template to name the default manifest.
    let default_doc =
        if !env.contains("DEPLOYMENT_CONFIG_FILE") && dir.join(&default_template).is_file() {
            Some(load_expanded(dir, &default_template, &env)?)
        } else {
            None
        };

    // Steps 3–4 (the default template is not read a second time).
    let mut doc = match default_doc {
        Some(doc) if template == default_template => doc,
        _ => load_expanded(dir, &template, &env)?,
    };
    let root = doc
        .as_object()
        .ok_or_else(|| template_error(&template, &[], "the template must be a JSON object"))?;
    // Step 5.
    let layered = layout::is_layered(root);
    let content_path = layout::module_content_path(root)
        .ok_or_else(|| template_error(&template, &["modulesContent".into()], "missing"))?;
    let content = layout::get(&doc, &content_path)
        .and_then(Value::as_object)
        .ok_or_else(|| template_error(&template, &content_path, "must be an object"))?;
    let agent_desired: KeyPath = concat(
        &content_path,
        &["$edgeAgent".into(), "properties".into(), "desired".into()],
    );
    // A layered deployment may leave out either list; a full one must have both.
    let required = |found: Option<Vec<(String, KeyPath)>>, key: &str| match found {
        Some(m) => Ok(m),
        None if layered => Ok(Vec::new()),
        None => Err(template_error(
            &template,
            &concat(&agent_desired, &[key.into()]),
            "missing (required in a non-layered deployment)",
        )),
    };
    let users = required(layout::user_modules(content), "modules")?;
    let systems = required(layout::system_modules(content), "systemModules")?;
    let absolute = |p: &KeyPath| concat(&content_path, p);

    // Step 6: placeholders from module projects.
    let container_tag = env.get_stripped("CONTAINER_TAG").to_string();
    let template_dir = template.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut placeholders = PlaceholderMap::new();
    let modules_dir = dir
        .join(&template_dir)
        .join(env.get_stripped("MODULES_PATH"));
    scan_modules_dir(
        &modules_dir,
        &env,
        &platform,
        &container_tag,
        &mut placeholders,
    )?;
    let mut user_images: Vec<(String, String)> = Vec::new();
    for (name, path) in &users {
        let image_path = concat(&absolute(path), &["settings".into(), "image".into()]);
        let image = match layout::get(&doc, &image_path) {
            Some(Value::Str(s)) => s.clone(),
            Some(other) => {
                return Err(template_error(
                    &template,
                    &image_path,
                    format!("must be a string, not {}", other.type_name()),
                ))
            }
            None => {
                return Err(template_error(
                    &template,
                    &image_path,
                    "missing: every user module needs settings.image",
                ))
            }
        };
        if let Some(module_dir) = moduledir_path(&image) {
            let project_dir = dir.join(&template_dir).join(&module_dir);
            if !project_dir.join("module.json").exists() {
                return Err(ManifestError::MissingModuleJson {
                    file: template.clone(),
                    path: layout::render(&image_path),
                    dir: template_dir.join(&module_dir),
                });
            }
            let module = ModuleProject::load(&project_dir, &env)?;
            module.register(
                &format!("MODULEDIR<{module_dir}>"),
                &platform,
                &container_tag,
                &mut placeholders,
            )?;
        }
        user_images.push((name.clone(), image));
    }

    // A placeholder that needs the platform, of a module without it, would be left in the
    // manifest unresolved: say so instead of writing it.
    for (name, image) in &user_images {
        if placeholders.contains_key(image) {
            continue;
        }
        let Some((project_dir, debug)) =
            platform_placeholder(image, &modules_dir, || dir.join(&template_dir))
        else {
            continue;
        };
        if !project_dir.join("module.json").is_file() {
            continue;
        }
        let module = ModuleProject::load(&project_dir, &env)?;
        // A `.debug` placeholder of a platform the module has, but without its debug image, is
        // left as iotedgedev leaves it (debug images are optional); a platform the module does
        // not have at all is refused.
        let platforms = module.platforms()?;
        let debug_platform = format!("{platform}.debug");
        let has = |p: &String| *p == platform || (debug && *p == debug_platform);
        if !platforms.iter().any(has) {
            return Err(ManifestError::NoSuchPlatform {
                file: module.file,
                module: name.clone(),
                platform: platform.clone(),
                platforms,
            });
        }
    }

    // All modules by name, user modules first; a system module of the same name replaces the
    // user module (Python `dict.update`).
    let mut all: Vec<(String, KeyPath)> = Vec::new();
    for (name, path) in users.iter().chain(systems.iter()) {
        match all.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = path.clone(),
            None => all.push((name.clone(), path.clone())),
        }
    }

    // Step 7: replace images (user modules whose image equals a registered placeholder).
    for (name, image) in &user_images {
        let Some(tag) = placeholders.get(image) else {
            continue;
        };
        let Some((_, path)) = all.iter().find(|(n, _)| n == name) else {
            continue;
        };
        if let Some(module) =
            layout::get_mut(&mut doc, &absolute(path)).and_then(Value::as_object_mut)
        {
            let settings = match module.get_mut("settings") {
                Some(Value::Object(s)) => s,
                _ => {
                    module.insert("settings", Value::Object(Default::default()));
                    module
                        .get_mut("settings")
                        .and_then(Value::as_object_mut)
                        .expect("just inserted")
                }
            };
            settings.insert("image", Value::Str(tag.clone()));
        }
    }

    // Step 8: createOptions.
    for (name, path) in &all {
        let settings_path = concat(&absolute(path), &["settings".into()]);
        let Some(settings) =
            layout::get_mut(&mut doc, &settings_path).and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Err((chars, chunks)) = create_options::convert_settings(settings) {
            debug_assert!(chunks > MAX_CHUNKS);
            return Err(ManifestError::CreateOptionsTooBig {
                file: template.clone(),
                path: layout::render(&concat(&settings_path, &["createOptions".into()])),
                module: name.clone(),
                chars,
                chunks,
            });
        }
    }

    // Step 9.
    let root = doc.as_object_mut().expect("checked above");
    let schema_template = match root.remove("$schema-template") {
        None => String::new(),
        Some(Value::Str(s)) => s,
        Some(other) => {
            return Err(template_error(
                &template,
                &["$schema-template".into()],
                format!("must be a string, not {}", other.type_name()),
            ))
        }
    };

    // Steps 10–11.
    let output_dir = PathBuf::from(env.get_stripped("CONFIG_OUTPUT_DIR"));
    let output = output_dir.join(manifest_name(&template, &schema_template, &platform, &env));
    let text = to_python_indent2(&doc);
    std::fs::create_dir_all(dir.join(&output_dir)).map_err(|source| ManifestError::Io {
        file: output_dir.clone(),
        source,
    })?;
    std::fs::write(dir.join(&output), &text).map_err(|source| ManifestError::Io {
        file: output.clone(),
        source,
    })?;

    // Step 12.
    let findings = validate::validate(&doc, &output, validate::Mode::Manifest);
    Ok(Generated {
        template,
        platform,
        output,
        manifest: doc,
        text,
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names() {
        let env = Env::default();
        let n = |t: &str, s: &str| manifest_name(Path::new(t), s, "amd64", &env);
        assert_eq!(
            n("deployment.template.json", "4.0.0"),
            "deployment.amd64.json"
        );
        assert_eq!(
            n("deployment.debug.template.json", "4.0.0"),
            "deployment.debug.amd64.json"
        );
        assert_eq!(n("deployment.template.json", ""), "deployment.json");
        assert_eq!(n("layer.template.json", ""), "layer.json");
        assert_eq!(n("sub/x.json", "0.0.1"), "x.json");
        assert_eq!(n("weird.txt", "1"), "deployment.amd64.json");
        let env = Env::from_pairs([("DEPLOYMENT_CONFIG_FILE".into(), "fixed.json".into())]);
        assert_eq!(
            manifest_name(Path::new("a.template.json"), "4.0.0", "x", &env),
            "fixed.json"
        );
    }
}
