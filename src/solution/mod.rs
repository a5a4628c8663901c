//! `edgetwin solution build` and `edgetwin solution push`: what `iotedgedev solution build` and
//! `push` do for a solution's modules, with whichever OCI builder the machine has.
//!
//! One job per file: [`plan`] (which images a platform needs: every `modules/*/module.json` with
//! that platform, tagged as iotedgedev tags them), [`builder`] (finding docker buildx, podman or
//! buildah, and the command lines each one takes), [`cli`] (the subcommands: running them).

pub mod builder;
pub mod cli;
pub mod plan;

pub use builder::Builder;
pub use plan::{oci_platform, plan, ImageBuild};

use std::path::PathBuf;

use crate::manifest::ManifestError;

/// What went wrong while building or pushing a solution's images.
#[derive(Debug, thiserror::Error)]
pub enum SolutionError {
    /// A module.json or `.env` could not be used.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The platform has no OCI equivalent.
    #[error("unknown platform {0:?}: expected amd64, arm64v8, arm32v7 or windows-amd64 (with an optional .debug)")]
    UnknownPlatform(String),
    /// No module of the solution has the platform.
    #[error("no module in {}/*/module.json has the platform {platform:?}", modules_dir.display())]
    NoModules {
        /// The modules folder.
        modules_dir: PathBuf,
        /// The platform asked for.
        platform: String,
    },
    /// Neither docker buildx, podman nor buildah is on PATH.
    #[error("no image builder found: install Docker with the buildx plugin, podman or buildah (on Debian: apt-get install buildah)")]
    NoBuilder,
    /// `--builder` (or `EDGETWIN_BUILDER`) names no builder.
    #[error("unknown builder {0:?} (--builder or EDGETWIN_BUILDER): the choices are docker, podman and buildah")]
    UnknownBuilder(String),
    /// The builder `--builder` (or `EDGETWIN_BUILDER`) chose is not on this machine.
    #[error("{}", builder_missing(*wanted, *docker_without_buildx, present))]
    BuilderMissing {
        /// The builder asked for.
        wanted: Builder,
        /// It is docker, which is on PATH but `docker buildx version` fails.
        docker_without_buildx: bool,
        /// The builders that are on this machine.
        present: Vec<Builder>,
    },
    /// The builder could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The builder failed.
    #[error("{what} failed ({status}): {command}{}", hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
    Failed {
        /// What was being done (`build localhost:5000/edgetwin:0.1.0-amd64`).
        what: String,
        /// The exit status.
        status: std::process::ExitStatus,
        /// The command line (it never carries a password).
        command: String,
        /// What to do about it, when the builder's output says ([`Builder::short_name_hint`]).
        hint: Option<String>,
    },
}

/// The message of [`SolutionError::BuilderMissing`].
fn builder_missing(wanted: Builder, docker_without_buildx: bool, present: &[Builder]) -> String {
    let why = if docker_without_buildx {
        "docker is on PATH but `docker buildx version` fails (install the buildx plugin)".to_owned()
    } else {
        format!("{wanted} is not on PATH")
    };
    let here = match present {
        [] => "this machine has none of them (install Docker with the buildx plugin, podman or buildah; on Debian: apt-get install buildah)".to_owned(),
        present => format!(
            "this machine has {}",
            present.iter().map(|b| b.program()).collect::<Vec<_>>().join(" and ")
        ),
    };
    format!("--builder {wanted} (or EDGETWIN_BUILDER): {why}; the choices are docker, podman and buildah, and {here}")
}
