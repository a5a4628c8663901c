//! `edgetwin new`: a new IoT Edge solution in iotedgedev's layout (`deployment.template.json`,
//! `.env`, `modules/<name>/module.json` and a Dockerfile per platform) with a Rust module on
//! `edgetwin-client`, or (`--module` inside a solution) one more module, as `iotedgedev add`.
//!
//! The templates are embedded (`template/`). The edgetwin crates a module needs (`wire`, `client`,
//! and `hub` for its tests) are copied from the checkout into the solution's `edgetwin/` (a
//! workspace of their own, excluded from the solution's), and the modules depend on that copy by
//! path: the solution builds and tests offline, and its image builds, whose context is the
//! solution directory, need nothing outside it.

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
    /// The edgetwin checkout whose crates a new solution gets a copy of in `edgetwin/`
    /// [default: the one this binary was built from].
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
    /// The solution has no copy of the edgetwin crates.
    #[error("{0} holds no copy of the edgetwin crates (no client/Cargo.toml): a solution made by `edgetwin new` has one")]
    NotVendored(PathBuf),
    /// `deployment.template.json` lacks the sections a module goes into.
    #[error("{path}: {what} is missing or not an object")]
    Template {
        /// The template.
        path: PathBuf,
        /// The JSON path.
        what: &'static str,
    },
    /// A file could not be read, copied or written.
    #[error("file {}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `deployment.template.json` is not JSON.
    #[error("{} is not valid JSON", .path.display())]
    Json {
        /// The template.
        path: PathBuf,
        /// Where and why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// Why `edgetwin new` failed: what it was doing, with the [`ScaffoldError`] as the cause.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// Creating a new solution failed.
    #[error("cannot create the IoT Edge solution {}", .dir.display())]
    Solution {
        /// The solution directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: ScaffoldError,
    },
    /// Adding a module to the solution in the current directory failed.
    #[error("cannot add module `{module}` to the solution in the current directory")]
    AddModule {
        /// The module.
        module: String,
        /// Why.
        #[source]
        source: ScaffoldError,
    },
    /// Neither a solution nor `--module` was given.
    #[error("give a solution to create, or --module to add one to this solution")]
    NothingToDo,
    /// `--edgetwin-path` was given to add a module.
    #[error(
        "--edgetwin-path is for a new solution: a module added to this one uses its \
         {VENDOR_DIR}/ copy of the edgetwin crates"
    )]
    EdgetwinPathForModule,
}

/// The checkout's crates copied into a solution's [`VENDOR_DIR`]: every crate a module and its
/// tests depend on, and every crate those depend on.
pub const VENDORED_CRATES: [&str; 3] = ["wire", "client", "hub"];

/// Where a solution keeps its copy of the edgetwin crates.
pub const VENDOR_DIR: &str = "edgetwin";

/// The solution's files: (path, template).
const SOLUTION_FILES: [(&str, &str); 6] = [
    (
        "deployment.template.json",
        include_str!("template/deployment.template.json"),
    ),
    (".env", include_str!("template/env")),
    (".gitignore", include_str!("template/gitignore")),
    (".dockerignore", include_str!("template/dockerignore")),
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
    let failed = |source| ScaffoldError::File {
        path: path.to_owned(),
        source,
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
    vendor(edgetwin, &dir.join(VENDOR_DIR))?;
    add_module(dir, module)
}

fn check_checkout(edgetwin: &Path) -> Result<(), ScaffoldError> {
    if edgetwin.join("client/Cargo.toml").is_file() {
        Ok(())
    } else {
        Err(ScaffoldError::NoCheckout(edgetwin.to_owned()))
    }
}

/// Copies [`VENDORED_CRATES`] of the checkout `edgetwin` into `to`, with a `Cargo.toml` that
/// makes them a workspace of their own: the checkout's `[workspace.*]` tables (package,
/// dependencies, lints: what the crates inherit), less the crates not copied.
fn vendor(edgetwin: &Path, to: &Path) -> Result<(), ScaffoldError> {
    let manifest_path = edgetwin.join("Cargo.toml");
    let manifest =
        std::fs::read_to_string(&manifest_path).map_err(|source| ScaffoldError::File {
            path: manifest_path.clone(),
            source,
        })?;
    write(&to.join("Cargo.toml"), &vendored_manifest(&manifest))?;
    for name in VENDORED_CRATES {
        copy_tree(&edgetwin.join(name), &to.join(name))?;
    }
    Ok(())
}

/// The vendored workspace's manifest from the checkout's: its `[workspace.*]` tables as they are
/// (`[workspace]` itself names the copied crates instead), except dependencies on a path that is
/// not one of [`VENDORED_CRATES`].
fn vendored_manifest(checkout: &str) -> String {
    let members: Vec<String> = VENDORED_CRATES.iter().map(|c| format!("{c:?}")).collect();
    let mut out = format!(
        "# The edgetwin crates the modules depend on, copied by `edgetwin new` from an edgetwin\n\
         # checkout: a workspace of their own (the solution's excludes this directory).\n\
         [workspace]\nmembers = [{}]\nresolver = \"2\"\n\n",
        members.join(", ")
    );
    let mut keep = false;
    for line in checkout.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            keep = trimmed.starts_with("[workspace.");
        }
        let foreign_path = trimmed.contains("path = ")
            && !VENDORED_CRATES
                .iter()
                .any(|c| trimmed.contains(&format!("path = \"{c}\"")));
        if keep && !foreign_path {
            out.push_str(line);
            out.push('\n');
        }
    }
    format!("{}\n", out.trim_end())
}

/// Copies the directory `from` to `to`, leaving out build output (`target/`).
fn copy_tree(from: &Path, to: &Path) -> Result<(), ScaffoldError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| ScaffoldError::File { path, source }
    };
    std::fs::create_dir_all(to).map_err(failed(to))?;
    for entry in std::fs::read_dir(from).map_err(failed(from))? {
        let entry = entry.map_err(failed(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(failed(&source))?;
        if kind.is_dir() {
            if entry.file_name() != "target" {
                copy_tree(&source, &target)?;
            }
        } else if kind.is_file() {
            std::fs::copy(&source, &target).map_err(failed(&source))?;
        }
    }
    Ok(())
}

/// Adds module `module` to the solution `dir`: its files under `modules/`, its entry in
/// `deployment.template.json` and a route of its outputs upstream. It depends on the solution's
/// copy of the edgetwin crates.
pub fn add_module(dir: &Path, module: &str) -> Result<(), ScaffoldError> {
    check_module_name(module)?;
    let template_path = dir.join("deployment.template.json");
    if !template_path.is_file() {
        return Err(ScaffoldError::NotASolution(dir.to_owned()));
    }
    let vendored = dir.join(VENDOR_DIR);
    if !vendored.join("client/Cargo.toml").is_file() {
        return Err(ScaffoldError::NotVendored(vendored));
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
    let edgetwin = format!("../../{VENDOR_DIR}");
    let values = [
        ("module", module),
        ("crate", crate_name.as_str()),
        ("edgetwin", edgetwin.as_str()),
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
    let not_json = |source| ScaffoldError::Json {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ScaffoldError::File {
        path: path.to_owned(),
        source,
    })?;
    let mut template: Value = serde_json::from_str(&text).map_err(not_json)?;
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
    let mut out = serde_json::to_string_pretty(&template).map_err(not_json)?;
    out.push('\n');
    Ok(out)
}

/// Runs `edgetwin new`.
pub fn run(args: NewArgs) -> Result<(), NewError> {
    match args.solution {
        Some(dir) => {
            let edgetwin = args
                .edgetwin_path
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
            let edgetwin = edgetwin.canonicalize().unwrap_or(edgetwin);
            let module = args.module.as_deref().unwrap_or(DEFAULT_MODULE);
            new_solution(&dir, module, &edgetwin).map_err(|source| NewError::Solution {
                dir: dir.clone(),
                source,
            })?;
            println!(
                "created the IoT Edge solution {} with module {module}; next: cd {0} && cargo test",
                dir.display()
            );
        }
        None => {
            let module = args.module.ok_or(NewError::NothingToDo)?;
            if args.edgetwin_path.is_some() {
                return Err(NewError::EdgetwinPathForModule);
            }
            add_module(Path::new("."), &module).map_err(|source| NewError::AddModule {
                module: module.clone(),
                source,
            })?;
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
            // podman and buildah resolve no short name without registries.conf help.
            for from in text.lines().filter(|l| l.starts_with("FROM ")) {
                let mut words = from.split_whitespace().skip(1);
                let image = words.find(|w| !w.starts_with("--")).unwrap();
                assert!(
                    image == "scratch" || image.starts_with("docker.io/library/"),
                    "{from}"
                );
            }
        }
        // The module depends on the solution's own copy of the crates, which is complete.
        let module = std::fs::read_to_string(dir.join("modules/echo-mod/Cargo.toml")).unwrap();
        assert!(
            module.contains(r#"path = "../../edgetwin/client""#),
            "{module}"
        );
        for name in VENDORED_CRATES {
            assert!(dir.join(VENDOR_DIR).join(name).join("src/lib.rs").is_file());
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
        let error = add_module(&dir, "echo-mod").unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        let bare = dir.join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::copy(
            dir.join("deployment.template.json"),
            bare.join("deployment.template.json"),
        )
        .unwrap();
        let error = add_module(&bare, "other").unwrap_err();
        assert!(matches!(error, ScaffoldError::NotVendored(_)), "{error}");
        let error = add_module(&dir, "echo-mod").unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        let error = new_solution(&dir, "other", &checkout).unwrap_err();
        assert!(matches!(error, ScaffoldError::Exists(_)), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_vendored_crates_depend_only_on_each_other_and_the_registry() {
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in VENDORED_CRATES {
            let manifest = std::fs::read_to_string(checkout.join(name).join("Cargo.toml")).unwrap();
            for line in manifest.lines().filter(|l| l.starts_with("edgetwin-")) {
                let dependency = line.split(['.', ' ', '=']).next().unwrap();
                let dependency = dependency.trim_start_matches("edgetwin-");
                assert!(
                    VENDORED_CRATES.contains(&dependency),
                    "{name} depends on {line:?}, which is not copied"
                );
            }
        }
    }

    #[test]
    fn the_vendored_workspace_keeps_the_inherited_tables_and_drops_crates_not_copied() {
        let checkout = "[workspace]\nmembers = [\".\", \"wire\", \"edge\"]\n\n\
            [workspace.package]\nversion = \"0.1.0\"\n\n\
            [workspace.lints.rust]\nmissing_docs = \"warn\"\n\n\
            [workspace.dependencies]\nedgetwin-wire = { path = \"wire\" }\n\
            edgetwin-edge = { path = \"edge\" }\ntokio = { version = \"1\" }\n\n\
            [package]\nname = \"edgetwin\"\n\n[profile.release]\nlto = true\n";
        assert_eq!(
            vendored_manifest(checkout),
            "# The edgetwin crates the modules depend on, copied by `edgetwin new` from an edgetwin\n\
             # checkout: a workspace of their own (the solution's excludes this directory).\n\
             [workspace]\nmembers = [\"wire\", \"client\", \"hub\"]\nresolver = \"2\"\n\n\
             [workspace.package]\nversion = \"0.1.0\"\n\n\
             [workspace.lints.rust]\nmissing_docs = \"warn\"\n\n\
             [workspace.dependencies]\nedgetwin-wire = { path = \"wire\" }\ntokio = { version = \"1\" }\n"
        );
    }
}
