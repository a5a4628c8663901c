//! Which images a platform needs: for every `modules/*/module.json` (the folder named by
//! `MODULES_PATH`) that lists the platform in `image.tag.platforms`, one image built from that
//! Dockerfile and context, tagged as iotedgedev tags it
//! (`lower(repository):version[-CONTAINER_TAG]-platform`, the tag the generated deployment
//! manifest names).

use std::path::{Path, PathBuf};

use super::SolutionError;
use crate::manifest::modules::{module_folders, ModuleProject};
use crate::manifest::Env;

/// One image to build and push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBuild {
    /// The module's folder name under `modules/`.
    pub module: String,
    /// The image tag, as the deployment manifest names it.
    pub tag: String,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// The build context (`image.contextPath`).
    pub context: PathBuf,
    /// The OCI platform (`linux/arm/v7`).
    pub platform: &'static str,
    /// `image.buildOptions`, passed to the builder as they are.
    pub options: Vec<String>,
}

/// The OCI platform of an iotedgedev platform name (`arm32v7` → `linux/arm/v7`); a `.debug`
/// platform builds for the same one.
pub fn oci_platform(platform: &str) -> Result<&'static str, SolutionError> {
    match platform.strip_suffix(".debug").unwrap_or(platform) {
        "amd64" => Ok("linux/amd64"),
        "arm64v8" => Ok("linux/arm64/v8"),
        "arm32v7" => Ok("linux/arm/v7"),
        "windows-amd64" => Ok("windows/amd64"),
        _ => Err(SolutionError::UnknownPlatform(platform.to_owned())),
    }
}

/// The images of the solution in `dir` for `platform`, with `env` the solution's environment
/// (process environment, `.env`, iotedgedev's defaults).
pub fn plan(dir: &Path, platform: &str, env: &Env) -> Result<Vec<ImageBuild>, SolutionError> {
    let oci = oci_platform(platform)?;
    let modules_dir = dir.join(env.get_stripped("MODULES_PATH"));
    let container_tag = env.get_stripped("CONTAINER_TAG");
    let mut builds = Vec::new();
    for (name, folder) in module_folders(&modules_dir)? {
        let module = ModuleProject::load(&folder, env)?;
        if !module.platforms()?.iter().any(|p| p == platform) {
            continue;
        }
        builds.push(ImageBuild {
            module: name,
            tag: module.tag(platform, container_tag)?,
            dockerfile: module.dockerfile(platform)?,
            context: module.context_path(),
            platform: oci,
            options: module.build_options()?,
        });
    }
    if builds.is_empty() {
        return Err(SolutionError::NoModules {
            modules_dir,
            platform: platform.to_owned(),
        });
    }
    Ok(builds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solution(name: &str, modules: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgetwin-plan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (folder, json) in modules {
            std::fs::create_dir_all(dir.join("modules").join(folder)).unwrap();
            std::fs::write(dir.join("modules").join(folder).join("module.json"), json).unwrap();
        }
        dir
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut env = Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env.apply_iotedgedev_defaults();
        env
    }

    const EDGETWIN: &str = r#"{"image": {"repository": "${REGISTRY}/EdgeTwin",
        "tag": {"version": "0.1.0", "platforms": {"amd64": "./Dockerfile.amd64",
        "arm32v7": "../../Dockerfile.arm32v7"}},
        "buildOptions": ["--add-host=example:127.0.0.1", "--build-arg A=1"], "contextPath": "../.."}}"#;

    #[test]
    fn every_module_with_the_platform_is_built_with_the_tag_the_manifest_names() {
        let dir = solution(
            "tags",
            &[
                ("edgetwin", EDGETWIN),
                (
                    "other",
                    r#"{"image": {"repository": "r/other", "tag": {"version": "2", "platforms": {"amd64": "Dockerfile"}}}}"#,
                ),
            ],
        );
        let builds = plan(
            &dir,
            "arm32v7",
            &env(&[("REGISTRY", "localhost:5000"), ("CONTAINER_TAG", " ci ")]),
        )
        .unwrap();
        let module_dir = dir.join("modules/edgetwin");
        assert_eq!(
            builds,
            vec![ImageBuild {
                module: "edgetwin".into(),
                tag: "localhost:5000/edgetwin:0.1.0-ci-arm32v7".into(),
                dockerfile: module_dir.join("../../Dockerfile.arm32v7"),
                context: module_dir.join("../.."),
                platform: "linux/arm/v7",
                options: vec![
                    "--add-host=example:127.0.0.1".into(),
                    "--build-arg".into(),
                    "A=1".into()
                ],
            }]
        );
        let amd64 = plan(&dir, "amd64", &env(&[("REGISTRY", "r")])).unwrap();
        let tags: Vec<_> = amd64
            .iter()
            .map(|b| (b.tag.as_str(), b.context.clone()))
            .collect();
        assert_eq!(
            tags,
            vec![
                ("r/edgetwin:0.1.0-amd64", module_dir.join("../..")),
                ("r/other:2-amd64", dir.join("modules/other").join(".")),
            ]
        );
    }

    #[test]
    fn a_platform_no_module_has_is_an_error_naming_the_modules_folder() {
        let dir = solution("none", &[("edgetwin", EDGETWIN)]);
        let error = plan(&dir, "arm64v8", &env(&[])).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "no module in {}/*/module.json has the platform \"arm64v8\"",
                dir.join("modules").display()
            )
        );
    }

    #[test]
    fn platforms_map_to_oci_platforms_and_unknown_ones_are_named() {
        assert_eq!(oci_platform("arm64v8").unwrap(), "linux/arm64/v8");
        assert_eq!(oci_platform("amd64.debug").unwrap(), "linux/amd64");
        let error = oci_platform("arm32").unwrap_err().to_string();
        assert!(error.starts_with("unknown platform \"arm32\""), "{error}");
    }

    #[test]
    fn build_options_must_be_strings() {
        let dir = solution(
            "options",
            &[(
                "m",
                r#"{"image": {"repository": "r/m", "tag": {"version": "1", "platforms": {"amd64": "D"}}, "buildOptions": [1]}}"#,
            )],
        );
        let error = plan(&dir, "amd64", &env(&[])).unwrap_err().to_string();
        assert!(
            error.contains("image.buildOptions[0]") && error.contains("must be a string"),
            "{error}"
        );
    }
}
