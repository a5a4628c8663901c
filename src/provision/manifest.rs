//! The manifest step of `edgetwin provision`: generate `config/deployment.<platform>.json` from
//! the solution's `deployment.template.json` exactly as `edgetwin manifest gen` (and
//! `iotedgedev solution genconfig`) does, refuse it if validation fails, and hand its
//! `modulesContent` to [`deploy`](super::deploy). Runs before anything is sent to the hub, so an
//! invalid manifest provisions nothing.

use std::path::{Path, PathBuf};

use edgetwin_wire::rest::ConfigurationContent;

use super::deploy;
use super::error::ProvisionError;
use crate::manifest::{self, Env, GenOptions};

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct ManifestRequest {
    /// `--dir`: the solution directory.
    pub dir: Option<PathBuf>,
    /// `--manifest-template`, relative to the solution directory.
    pub template: Option<PathBuf>,
    /// `--platform`.
    pub platform: Option<String>,
    /// Whether `--deployment` was given (it wins: no generation).
    pub deployment_given: bool,
}

/// Decides whether the manifest step runs: always with `--manifest-template` or `--platform`;
/// with only `--dir`, when the solution's default template (`$DEPLOYMENT_CONFIG_TEMPLATE_FILE`,
/// else `deployment.template.json`) exists; never with `--deployment`. `default_template` gives
/// the default template of a solution directory; `exists` checks a path.
pub fn plan(
    request: &ManifestRequest,
    cwd: &Path,
    default_template: &dyn Fn(&Path) -> PathBuf,
    exists: &dyn Fn(&Path) -> bool,
) -> Option<GenOptions> {
    if request.deployment_given {
        return None;
    }
    let explicit = request.template.is_some() || request.platform.is_some();
    let dir = request.dir.clone().unwrap_or_else(|| cwd.to_path_buf());
    if !explicit {
        request.dir.as_ref()?;
        if !exists(&dir.join(default_template(&dir))) {
            return None;
        }
    }
    Some(GenOptions {
        dir,
        template: request.template.clone(),
        platform: request.platform.clone(),
    })
}

/// The default template of the solution in `dir`, as genconfig picks it (`.env` read).
pub fn default_template(dir: &Path) -> PathBuf {
    manifest::generate::solution_env(dir, Env::from_process())
        .map(|env| PathBuf::from(env.get_stripped("DEPLOYMENT_CONFIG_TEMPLATE_FILE")))
        .unwrap_or_else(|_| PathBuf::from("deployment.template.json"))
}

/// A generated, valid manifest ready to apply.
#[derive(Debug, Clone)]
pub struct GeneratedDeployment {
    /// The template read (relative to the solution directory).
    pub template: PathBuf,
    /// The platform.
    pub platform: String,
    /// The manifest written (solution directory joined with genconfig's output path).
    pub path: PathBuf,
    /// Its `modulesContent`.
    pub content: ConfigurationContent,
}

/// Joins validation findings into one error; each line names the file and the JSON path.
pub fn refuse(path: &Path, findings: &[String]) -> ProvisionError {
    let mut text = format!(
        "the generated deployment manifest {} is not valid ({} problem(s)); nothing was provisioned:",
        path.display(),
        findings.len()
    );
    for finding in findings {
        text.push_str("\n  ");
        text.push_str(finding);
    }
    ProvisionError::Input(text)
}

/// Runs genconfig (which writes the manifest), refuses an invalid result, and reads its
/// `modulesContent`.
pub fn generate(options: &GenOptions) -> Result<GeneratedDeployment, ProvisionError> {
    let generated = manifest::genconfig(options, Env::from_process()).map_err(|source| {
        ProvisionError::Manifest {
            dir: options.dir.clone(),
            source,
        }
    })?;
    let path = options.dir.join(&generated.output);
    if !generated.findings.is_empty() {
        let findings: Vec<String> = generated.findings.iter().map(|f| f.to_string()).collect();
        return Err(refuse(&path, &findings));
    }
    let content = deploy::parse_deployment(&generated.text, &path.display().to_string())?;
    Ok(GeneratedDeployment {
        template: generated.template,
        platform: generated.platform,
        path,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(_: &Path) -> PathBuf {
        PathBuf::from("deployment.template.json")
    }

    #[test]
    fn a_deployment_file_wins_over_generation() {
        let request = ManifestRequest {
            template: Some("deployment.template.json".into()),
            deployment_given: true,
            ..ManifestRequest::default()
        };
        assert!(plan(&request, Path::new("/cwd"), &template, &|_| true).is_none());
    }

    #[test]
    fn a_template_or_platform_flag_asks_for_generation_in_the_current_directory() {
        let request = ManifestRequest {
            platform: Some("arm64v8".into()),
            ..ManifestRequest::default()
        };
        let options = plan(&request, Path::new("/cwd"), &template, &|_| false).unwrap();
        assert_eq!(options.dir, Path::new("/cwd"));
        assert_eq!(options.platform.as_deref(), Some("arm64v8"));
        assert_eq!(options.template, None);
    }

    #[test]
    fn a_solution_directory_generates_only_when_its_template_exists() {
        let request = ManifestRequest {
            dir: Some("/sol".into()),
            ..ManifestRequest::default()
        };
        let found = |p: &Path| p == Path::new("/sol/deployment.template.json");
        let options = plan(&request, Path::new("/cwd"), &template, &found).unwrap();
        assert_eq!(options.dir, Path::new("/sol"));
        assert!(plan(&request, Path::new("/cwd"), &template, &|_| false).is_none());
        // Without --dir nothing is generated implicitly, even in a solution directory.
        let none = ManifestRequest::default();
        assert!(plan(&none, Path::new("/sol"), &template, &|_| true).is_none());
    }

    #[test]
    fn the_refusal_lists_every_finding() {
        let err = refuse(
            Path::new("config/deployment.amd64.json"),
            &["a: $.x: bad".into(), "a: $.y: bad".into()],
        )
        .to_string();
        assert!(err.contains("config/deployment.amd64.json"), "{err}");
        assert!(err.contains("2 problem(s)") && err.contains("$.x") && err.contains("$.y"));
        assert!(err.contains("nothing was provisioned"), "{err}");
    }
}
