//! Module projects (`modules/<folder>/module.json`) and the image placeholders they define:
//! `${MODULES.<folder>}`, `${MODULES.<folder>.<platform>}`, `${MODULES.<folder>.debug}` and the
//! same forms with base `MODULEDIR<path>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::env::Env;
use super::error::ManifestError;
use super::expand::expandvars;
use super::serialize::float_repr;
use super::value::{self, Value};

/// A loaded module.json.
#[derive(Debug, Clone)]
pub struct ModuleProject {
    /// The module.json file.
    pub file: PathBuf,
    /// Its content after variable expansion.
    pub json: Value,
}

/// Placeholder text (e.g. `${MODULES.edgetwin}`) → image tag.
pub type PlaceholderMap = BTreeMap<String, String>;

/// Python's `str(value)` for the JSON values a module.json may hold.
fn py_str(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.clone(),
        Value::Float(f) => float_repr(*f)
            .replace("Infinity", "inf")
            .replace("NaN", "nan"),
        Value::Str(s) => s.clone(),
        other => super::serialize::to_python_compact(other),
    }
}

impl ModuleProject {
    /// Loads `<dir>/module.json`, expanding environment variables in its text first.
    pub fn load(dir: &Path, env: &Env) -> Result<Self, ManifestError> {
        let file = dir.join("module.json");
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            file: file.clone(),
            source,
        })?;
        let json = value::parse(&expandvars(&text, env)).map_err(|e| ManifestError::Json {
            file: file.clone(),
            message: e.message,
            line: e.line,
            column: e.column,
        })?;
        Ok(Self { file, json })
    }

    fn image(&self) -> Option<&value::Object> {
        self.json.as_object()?.get("image")?.as_object()
    }

    fn field_error(&self, path: &str, message: &str) -> ManifestError {
        ManifestError::Template {
            file: self.file.clone(),
            path: path.to_string(),
            message: message.to_string(),
        }
    }

    /// `image.repository` (default `""`).
    pub fn repository(&self) -> Result<String, ManifestError> {
        match self.image().and_then(|i| i.get("repository")) {
            None => Ok(String::new()),
            Some(Value::Str(s)) => Ok(s.clone()),
            Some(other) => Err(self.field_error(
                "image.repository",
                &format!("must be a string, not {}", other.type_name()),
            )),
        }
    }

    /// `image.tag.version` (default `"0.0.0"`), as Python formats it.
    pub fn version(&self) -> String {
        self.image()
            .and_then(|i| i.get("tag"))
            .and_then(Value::as_object)
            .and_then(|t| t.get("version"))
            .map(py_str)
            .unwrap_or_else(|| "0.0.0".to_string())
    }

    /// The keys of `image.tag.platforms`, in order.
    pub fn platforms(&self) -> Result<Vec<String>, ManifestError> {
        match self
            .image()
            .and_then(|i| i.get("tag"))
            .and_then(Value::as_object)
            .and_then(|t| t.get("platforms"))
        {
            None => Ok(Vec::new()),
            Some(Value::Str(s)) if s.is_empty() => Ok(Vec::new()),
            Some(Value::Object(o)) => Ok(o.keys().cloned().collect()),
            Some(other) => Err(self.field_error(
                "image.tag.platforms",
                &format!("must be an object, not {}", other.type_name()),
            )),
        }
    }

    /// The image tag for `platform`: `lower(repository):version[-CONTAINER_TAG]-platform`.
    pub fn tag(&self, platform: &str, container_tag: &str) -> Result<String, ManifestError> {
        let container_tag = if container_tag.is_empty() {
            String::new()
        } else {
            format!("-{container_tag}")
        };
        Ok(format!(
            "{}:{}{}-{}",
            self.repository()?.to_lowercase(),
            self.version(),
            container_tag,
            platform
        ))
    }

    /// The module's folder (where module.json is).
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    fn image_str(&self, path: &[&str]) -> Option<&str> {
        let (last, parents) = path.split_last()?;
        let mut object = self.image()?;
        for key in parents {
            object = object.get(key)?.as_object()?;
        }
        object.get(last)?.as_str()
    }

    /// The Dockerfile of `platform` (`image.tag.platforms.<platform>`, relative to the module's
    /// folder), as iotedgedev's `get_dockerfile_by_platform` finds it.
    pub fn dockerfile(&self, platform: &str) -> Result<PathBuf, ManifestError> {
        self.image_str(&["tag", "platforms", platform])
            .map(|file| self.dir().join(file))
            .ok_or_else(|| {
                self.field_error(
                    &format!("image.tag.platforms.{platform}"),
                    "no Dockerfile is defined for this platform",
                )
            })
    }

    /// The build context (`image.contextPath`, default `.`, relative to the module's folder).
    pub fn context_path(&self) -> PathBuf {
        self.dir()
            .join(self.image_str(&["contextPath"]).unwrap_or("."))
    }

    /// `image.buildOptions`: extra builder arguments, each entry split at whitespace.
    pub fn build_options(&self) -> Result<Vec<String>, ManifestError> {
        match self.image().and_then(|i| i.get("buildOptions")) {
            None => Ok(Vec::new()),
            Some(Value::Array(options)) => options
                .iter()
                .enumerate()
                .map(|(i, option)| {
                    option.as_str().ok_or_else(|| {
                        self.field_error(
                            &format!("image.buildOptions[{i}]"),
                            &format!("must be a string, not {}", option.type_name()),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|options| {
                    options
                        .iter()
                        .flat_map(|o| o.split_whitespace().map(str::to_owned))
                        .collect()
                }),
            Some(other) => Err(self.field_error(
                "image.buildOptions",
                &format!("must be an array, not {}", other.type_name()),
            )),
        }
    }

    /// Registers this module's placeholders under `base` (`MODULES.<folder>` or
    /// `MODULEDIR<path>`) for the selected `platform`.
    pub fn register(
        &self,
        base: &str,
        platform: &str,
        container_tag: &str,
        map: &mut PlaceholderMap,
    ) -> Result<(), ManifestError> {
        for p in self.platforms()? {
            let tag = self.tag(&p, container_tag)?;
            map.insert(format!("${{{base}.{p}}}"), tag.clone());
            if p == platform {
                map.insert(format!("${{{base}}}"), tag.clone());
            } else if p == format!("{platform}.debug") {
                map.insert(format!("${{{base}.debug}}"), tag.clone());
            }
            map.insert(tag.clone(), tag);
        }
        Ok(())
    }
}

/// Scans `<modules_dir>/*/module.json` and registers `${MODULES.<folder>...}` placeholders.
pub fn scan_modules_dir(
    modules_dir: &Path,
    env: &Env,
    platform: &str,
    container_tag: &str,
    map: &mut PlaceholderMap,
) -> Result<(), ManifestError> {
    for (name, dir) in module_folders(modules_dir)? {
        let module = ModuleProject::load(&dir, env)?;
        module.register(&format!("MODULES.{name}"), platform, container_tag, map)?;
    }
    Ok(())
}

/// The folders of `<modules_dir>/*` that hold a module.json, by name (none if the directory is
/// missing).
pub fn module_folders(modules_dir: &Path) -> Result<Vec<(String, PathBuf)>, ManifestError> {
    if !modules_dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(modules_dir).map_err(|source| ManifestError::Io {
        file: modules_dir.to_path_buf(),
        source,
    })?;
    let mut folders: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(_, p)| p.join("module.json").exists())
        .collect();
    folders.sort();
    Ok(folders)
}

/// The path inside `${MODULEDIR<path>...}` as Python's
/// `re.search(r'\${MODULEDIR<(.+)>(\..+)?}', image)` captures it (greedy, no newlines).
pub fn moduledir_path(image: &str) -> Option<String> {
    const OPEN: &str = "${MODULEDIR<";
    let mut from = 0;
    while let Some(found) = image[from..].find(OPEN) {
        let start = from + found + OPEN.len();
        let line = &image[start..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        // Greedy group 1: the last '>' (with at least one character before it) after which
        // `(\..+)?}` matches.
        let candidates: Vec<usize> = line
            .char_indices()
            .filter(|(i, c)| *c == '>' && *i > 0)
            .map(|(i, _)| i)
            .collect();
        for &gt in candidates.iter().rev() {
            let rest = &line[gt + 1..];
            let ok = rest.starts_with('}')
                || rest
                    .strip_prefix('.')
                    .is_some_and(|r| r.char_indices().any(|(i, c)| c == '}' && i > 0));
            if ok {
                return Some(line[..gt].to_string());
            }
        }
        from = from + found + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(json: &str) -> ModuleProject {
        ModuleProject {
            file: PathBuf::from("modules/modA/module.json"),
            json: value::parse(json).unwrap(),
        }
    }

    #[test]
    fn spec_worked_example() {
        let env = Env::from_pairs([(
            "CONTAINER_REGISTRY_SERVER".to_string(),
            "MyAcr.azurecr.io".to_string(),
        )]);
        let text = r#"{"image": {"repository": "${CONTAINER_REGISTRY_SERVER}/ModA",
            "tag": {"version": "0.0.9", "platforms": {"amd64": "./Dockerfile.amd64",
            "amd64.debug": "./Dockerfile.amd64.debug", "arm32v7": "./Dockerfile.arm32v7"}}}}"#;
        let m = ModuleProject {
            file: PathBuf::from("module.json"),
            json: value::parse(&expandvars(text, &env)).unwrap(),
        };
        let mut map = PlaceholderMap::new();
        m.register("MODULES.modA", "amd64", "", &mut map).unwrap();
        assert_eq!(map["${MODULES.modA}"], "myacr.azurecr.io/moda:0.0.9-amd64");
        assert_eq!(
            map["${MODULES.modA.debug}"],
            "myacr.azurecr.io/moda:0.0.9-amd64.debug"
        );
        assert_eq!(
            map["${MODULES.modA.arm32v7}"],
            "myacr.azurecr.io/moda:0.0.9-arm32v7"
        );
        assert!(!map.contains_key("${MODULES.nope}"));
        let mut map = PlaceholderMap::new();
        m.register("MODULES.modA", "arm64v8", "", &mut map).unwrap();
        assert!(!map.contains_key("${MODULES.modA}"));
        assert!(!map.contains_key("${MODULES.modA.debug}"));
    }

    #[test]
    fn container_tag_and_defaults() {
        let m = project(
            r#"{"image": {"repository": "Reg/M1", "tag": {"version": "1.0.0-RC", "platforms": {"amd64": "x"}}}}"#,
        );
        assert_eq!(
            m.tag("amd64", "ci42").unwrap(),
            "reg/m1:1.0.0-RC-ci42-amd64"
        );
        let m = project(r#"{"image": {"tag": {"platforms": {"amd64": "x"}}}}"#);
        assert_eq!(m.tag("amd64", "").unwrap(), ":0.0.0-amd64");
        let m = project(
            r#"{"image": {"repository": "${CONTAINER_REGISTRY_SERVER}/m1", "tag": {"version": 1.5}}}"#,
        );
        assert_eq!(
            m.tag("amd64", "").unwrap(),
            "${container_registry_server}/m1:1.5-amd64"
        );
        assert!(m.platforms().unwrap().is_empty());
    }

    #[test]
    fn moduledir_regex() {
        assert_eq!(
            moduledir_path("${MODULEDIR<../m>}").as_deref(),
            Some("../m")
        );
        assert_eq!(
            moduledir_path("${MODULEDIR<../m>.debug}").as_deref(),
            Some("../m")
        );
        assert_eq!(
            moduledir_path("x/${MODULEDIR<a>b>.amd64}").as_deref(),
            Some("a>b")
        );
        assert_eq!(moduledir_path("${MODULEDIR<>}"), None);
        assert_eq!(moduledir_path("${MODULEDIR<a>x}"), None);
        assert_eq!(moduledir_path("${MODULES.a}"), None);
    }
}
