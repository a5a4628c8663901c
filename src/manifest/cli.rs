//! `edgetwin manifest gen` and `edgetwin manifest validate`.

use std::path::PathBuf;

use super::{genconfig, validate_file, Env, GenOptions, ManifestError};

/// Options of `edgetwin manifest`.
#[derive(clap::Args, Debug)]
pub struct ManifestArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ManifestCommand,
}

/// The `manifest` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ManifestCommand {
    /// Write config/deployment.<platform>.json from deployment.template.json, modules/*/module.json
    /// and .env exactly as `iotedgedev solution genconfig -P <platform>` does, then validate it.
    /// Run in the solution directory.
    Gen(GenArgs),
    /// Validate a deployment manifest (or a template, if it has `$schema-template`).
    Validate(ValidateArgs),
}

/// Options of `edgetwin manifest gen`.
#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// The template [default: $DEPLOYMENT_CONFIG_TEMPLATE_FILE or deployment.template.json].
    #[arg(short = 'f', long = "template", visible_alias = "file")]
    pub template: Option<PathBuf>,
    /// Target platform: amd64, arm64v8, arm32v7 (any platform key of module.json)
    /// [default: $DEFAULT_PLATFORM or amd64].
    #[arg(short = 'P', long)]
    pub platform: Option<String>,
    /// Exit 1 when the generated manifest fails validation (it is written in any case).
    #[arg(long)]
    pub fail_on_validation_error: bool,
    /// The solution directory [default: the current directory].
    #[arg(short = 'C', long = "dir")]
    pub dir: Option<PathBuf>,
}

/// Options of `edgetwin manifest validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The manifest to check.
    pub file: PathBuf,
}

fn report(findings: &[ManifestError]) {
    for finding in findings {
        eprintln!("invalid: {finding}");
    }
}

/// Why `edgetwin manifest ...` failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ManifestCommandError {
    /// No manifest could be generated, or the file could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The current directory (the default solution directory) is unusable.
    #[error("cannot use the current directory as the solution directory (give one with -C)")]
    CurrentDir(#[source] std::io::Error),
    /// `gen --fail-on-validation-error`: the manifest was written but is not valid.
    #[error("deployment manifest validation failed: {}", .0.display())]
    GeneratedInvalid(PathBuf),
    /// `validate`: the file is not a valid manifest (the problems are on the lines above).
    #[error("{} is not a valid deployment manifest", .0.display())]
    Invalid(PathBuf),
}

/// Runs `edgetwin manifest ...`.
pub fn run(args: ManifestArgs) -> Result<(), ManifestCommandError> {
    match args.command {
        ManifestCommand::Gen(gen) => {
            let dir = match gen.dir {
                Some(dir) => dir,
                None => std::env::current_dir().map_err(ManifestCommandError::CurrentDir)?,
            };
            let options = GenOptions {
                dir,
                template: gen.template,
                platform: gen.platform,
            };
            let generated = genconfig(&options, Env::from_process())?;
            println!("{}", generated.output.display());
            if generated.findings.is_empty() {
                println!(
                    "validation passed: {} ({})",
                    generated.output.display(),
                    generated.platform
                );
                Ok(())
            } else {
                println!(
                    "validation failed: {} problem(s) in {}",
                    generated.findings.len(),
                    generated.output.display()
                );
                report(&generated.findings);
                if gen.fail_on_validation_error {
                    Err(ManifestCommandError::GeneratedInvalid(generated.output))
                } else {
                    Ok(())
                }
            }
        }
        ManifestCommand::Validate(v) => {
            let findings = validate_file(&v.file)?;
            if findings.is_empty() {
                println!("validation passed: {}", v.file.display());
                Ok(())
            } else {
                println!(
                    "validation failed: {} problem(s) in {}",
                    findings.len(),
                    v.file.display()
                );
                report(&findings);
                Err(ManifestCommandError::Invalid(v.file))
            }
        }
    }
}
