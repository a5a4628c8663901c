//! `edgetwin new`: a new IoT Edge solution in iotedgedev's layout (`deployment.template.json`,
//! `.env`, `modules/<name>/module.json` and a Dockerfile per platform) with a Rust module on
//! `edgetwin-client`, or (`--module` inside a solution) one more module, as `iotedgedev add`.
//!
//! The templates are embedded (`template/`); the module depends on the edgetwin crates by path, so
//! the solution builds and tests offline.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The module iotedgedev names when none is given.
pub const DEFAULT_MODULE: &str = "filtermodule";

/// Options of `edgetwin new`.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The solution directory to create; omit it to add `--module` to the solution in the current
    /// directory.
    pub solution: Option<PathBuf>,
    /// The module's name: lowercase letters and digits, starting with a letter, with `_`, `__`
    /// or dashes between them [default: filtermodule for a new solution].
    #[arg(long)]
    pub module: Option<String>,
    /// The edgetwin checkout the module's `path =` dependencies point at [default: the one this
    /// binary was built from].
    #[arg(long)]
    pub edgetwin_path: Option<PathBuf>,
}

/// Why `edgetwin new` failed; each names the file or the value.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The module name is unusable.
    #[error("module name `{0}`: use lowercase letters and digits, starting with a letter (at most 64), with `_`, `__` or dashes only between them, as a docker repository name allows")]
    ModuleName(String),
    /// The solution directory exists and is not empty.
    #[error("{0} already exists and is not empty")]
    Exists(PathBuf),
    /// No `deployment.template.json` where a module was to be added.
    #[error("{0} is not an IoT Edge solution (no deployment.template.json); give a solution name to create one")]
    NotASolution(PathBuf),
    /// The module is already there.
    #[error("module `{module}` already exists in {path}")]
    ModuleExists {
        /// The module.
        module: String,
        /// Where it was found.
        path: PathBuf,
    },
    /// The edgetwin checkout has no `client` crate.
    #[error("{0} is not an edgetwin checkout (no client/Cargo.toml); pass --edgetwin-path")]
    NoCheckout(PathBuf),
    /// `deployment.template.json` lacks the sections a module goes into.
    #[error("{path}: {what} is missing or not an object")]
    Template {
        /// The template.
        path: PathBuf,
        /// The JSON path.
        what: &'static str,
    },
    /// A file could not be read, parsed or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The solution's files: (path, template).
const SOLUTION_FILES: [(&str, &str); 5] = [
    (
        "deployment.template.json",
        include_str!("template/deployment.template.json"),
    ),
    (".env", include_str!("template/env")),
    (".gitignore", include_str!("template/gitignore")),
    ("Cargo.toml", include_str!("template/Cargo.toml")),
    ("README.md", include_str!("template/README.md")),
];

/// A module's files under `modules/<name>/`: (path, template).
const MODULE_FILES: [(&str, &str); 5] = [
    ("Cargo.toml", include_str!("template/module/Cargo.toml")),
    ("module.json", include_str!("template/module/module.json")),
    ("src/lib.rs", include_str!("template/module/src/lib.rs")),
    ("src/main.rs", include_str!("template/module/src/main.rs")),
    (
        "tests/module.rs",
        include_str!("template/module/tests/module.rs"),
    ),
];

/// One Dockerfile template for every platform.
const DOCKERFILE: &str = include_str!("template/module/Dockerfile");

/// A platform of `module.json`: (iotedgedev name, docker platform, Rust target, clang target).
const PLATFORMS: [(&str, &str, &str, &str); 3] = [
    (
        "amd64",
        "amd64",
        "x86_64-unknown-linux-musl",
        "x86_64-linux-musl",
    ),
    (
        "arm64v8",
        "arm64",
        "aarch64-unknown-linux-musl",
        "aarch64-linux-musl",
    ),
    (
        "arm32v7",
        "arm/v7",
        "armv7-unknown-linux-musleabihf",
        "armv7-linux-musleabihf",
    ),
];

/// Fills `{{key}}` placeholders.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

/// Checks a module name: it becomes a crate, a binary, a docker repository and a module id. A
/// docker repository path component is lowercase letters and digits with separators only
/// between them: `_`, `__`, or one or more `-` (the distribution reference grammar).
pub fn check_module_name(name: &str) -> Result<(), ScaffoldError> {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let separators_ok = name
        .split(alphanumeric)
        .filter(|separator| !separator.is_empty())
        .all(|separator| matches!(separator, "_" | "__") || separator.chars().all(|c| c == '-'));
    let starts_ok = name.starts_with(|c: char| c.is_ascii_lowercase());
    let ends_ok = name.ends_with(alphanumeric);
    if starts_ok && ends_ok && separators_ok && name.len() <= 64 {
        Ok(())
    } else {
        Err(ScaffoldError::ModuleName(name.to_owned()))
    }
}

fn write(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    let failed = |e: std::io::Error| ScaffoldError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::write(path, text).map_err(failed)
}

/// Creates the solution `dir` with module `module`, depending on the checkout `edgetwin`.
pub fn new_solution(dir: &Path, module: &str, edgetwin: &Path) -> Result<(), ScaffoldError> {
    check_module_name(module)?;
    check_checkout(edgetwin)?;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ScaffoldError::Exists(dir.to_owned()));
    }
    let solution = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "solution".to_owned());
    for (path, template) in SOLUTION_FILES {
        write(&dir.join(path), &fill(template, &[("solution", &solution)]))?;
    }
    // The checkout's lock file: the solution resolves to the same versions (and builds offline
    // from the same registry cache); cargo drops what the solution does not use.
    if let Ok(lock) = std::fs::read_to_string(edgetwin.join("Cargo.lock")) {
        write(&dir.join("Cargo.lock"), &lock)?;
    }
    add_module(dir, module, edgetwin)
}

fn check_checkout(edgetwin: &Path) -> Result<(), ScaffoldError> {
    if edgetwin.join("client/Cargo.toml").is_file() {
        Ok(())
    } else {
        Err(ScaffoldError::NoCheckout(edgetwin.to_owned()))
    }
}

/// Adds module `module` to the solution `dir`: its files under `modules/`, its entry in
/// `deployment.template.json` and a route of its outputs upstream.
pub fn add_module(dir: &Path, module: &str, edgetwin: &Path) -> Result<(), ScaffoldError> {
    check_module_name(module)?;
    check_checkout(edgetwin)?;
    let template_path = dir.join("deployment.template.json");
    if !template_path.is_file() {
        return Err(ScaffoldError::NotASolution(dir.to_owned()));
    }
    let module_dir = dir.join("modules").join(module);
    if module_dir.exists() {
        return Err(ScaffoldError::ModuleExists {
            module: module.to_owned(),
            path: module_dir,
        });
    }
    let template = add_to_template(&template_path, module)?;
    let crate_name = module.replace('-', "_");
    let edgetwin = edgetwin.to_string_lossy();
    let values = [
        ("module", module),
        ("crate", crate_name.as_str()),
        ("edgetwin", edgetwin.as_ref()),
    ];
    for (path, text) in MODULE_FILES {
        write(&module_dir.join(path), &fill(text, &values))?;
    }
    for (platform, docker, target, clang) in PLATFORMS {
        let lower = target.replace('-', "_");
        let upper = lower.to_ascii_uppercase();
        let values = [
            ("module", module),
            ("platform", platform),
            ("docker_platform", docker),
            ("target", target),
            ("target_lower", lower.as_str()),
            ("target_upper", upper.as_str()),
            ("clang_target", clang),
        ];
        let path = module_dir.join(format!("Dockerfile.{platform}"));
        write(&path, &fill(DOCKERFILE, &values))?;
    }
    write(&template_path, &template)
}

/// `deployment.template.json` with `module` added to edgeAgent's modules and its outputs routed
/// upstream.
fn add_to_template(path: &Path, module: &str) -> Result<String, ScaffoldError> {
    let failed = |reason: String| ScaffoldError::File {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let mut template: Value = serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
    let missing = |what| ScaffoldError::Template {
        path: path.to_owned(),
        what,
    };
    let content = &mut template["modulesContent"];
    let modules = content["$edgeAgent"]["properties.desired"]["modules"]
        .as_object_mut()
        .ok_or_else(|| missing("modulesContent.$edgeAgent.properties.desired.modules"))?;
    if modules.contains_key(module) {
        return Err(ScaffoldError::ModuleExists {
            module: module.to_owned(),
            path: path.to_owned(),
        });
    }
    modules.insert(
        module.to_owned(),
        json!({
            "version": "1.0",
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "settings": {
                "image": format!("${{MODULES.{module}}}"),
                "createOptions": {}
            }
        }),
    );
    let routes = content["$edgeHub"]["properties.desired"]["routes"]
        .as_object_mut()
        .ok_or_else(|| missing("modulesContent.$edgeHub.properties.desired.routes"))?;
    routes.insert(
        format!("{}ToIoTHub", module.replace('-', "_")),
        json!(format!(
            "FROM /messages/modules/{module}/outputs/* INTO $upstream"
        )),
    );
    let mut out = serde_json::to_string_pretty(&template).map_err(|e| failed(e.to_string()))?;
    out.push('\n');
    Ok(out)
}

/// Runs `edgetwin new`; `Err` carries the message for `error: ...` (exit 1).
pub fn run(args: NewArgs) -> Result<(), String> {
    let edgetwin = args
        .edgetwin_path
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let edgetwin = edgetwin.canonicalize().unwrap_or(edgetwin);
    match args.solution {
        Some(dir) => {
            let module = args.module.as_deref().unwrap_or(DEFAULT_MODULE);
            new_solution(&dir, module, &edgetwin).map_err(|e| e.to_string())?;
            println!(
                "created the IoT Edge solution {} with module {module}; next: cd {0} && cargo test",
                dir.display()
            );
        }
        None => {
            let module = args
                .module
                .ok_or("give a solution to create, or --module to add one to this solution")?;
            add_module(Path::new("."), &module, &edgetwin).map_err(|e| e.to_string())?;
            println!("added module {module} under modules/{module}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_that_cannot_be_a_crate_and_an_image_are_refused_by_name() {
        let too_long = "x".repeat(65);
        let bad = [
            "", "Upper", "1st", "a b", "a/b", "mod-", "m_", "a___b", "a-_b", "a.b",
        ];
        for bad in bad.into_iter().chain([too_long.as_str()]) {
            let error = check_module_name(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
        for good in ["filtermodule", "my-module", "m_2", "a__b", "a--b", "m"] {
            check_module_name(good).unwrap();
        }
    }

    #[test]
    fn placeholders_are_filled_everywhere() {
        assert_eq!(
            fill("{{a}}-{{b}}-{{a}}", &[("a", "x"), ("b", "y")]),
            "x-y-x"
        );
    }

    #[test]
    fn every_platform_dockerfile_names_its_target_and_no_placeholder_is_left() {
        let dir = std::env::temp_dir().join(format!("edgetwin-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let checkout = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        new_solution(&dir, "echo-mod", &checkout).unwrap();
        for (platform, _, target, _) in PLATFORMS {
            let path = dir.join(format!("modules/echo-mod/Dockerfile.{platform}"));
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.contains(&format!("--target {target}")), "{text}");
            assert!(!text.contains("{{"), "{text}");
        }
        let template: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("deployment.template.json")).unwrap(),
        )
        .unwrap();
        let content = &template["modulesContent"];
        assert_eq!(
            content["$edgeAgent"]["properties.desired"]["modules"]["echo-mod"]["settings"]["image"],
            "${MODULES.echo-mod}"
        );
        assert_eq!(
            content["$edgeHub"]["properties.desired"]["routes"]["echo_modToIoTHub"],
            "FROM /messages/modules/echo-mod/outputs/* INTO $upstream"
        );
        let error = add_module(&dir, "echo-mod", &checkout).unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        let error = new_solution(&dir, "other", &checkout).unwrap_err();
        assert!(matches!(error, ScaffoldError::Exists(_)), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
