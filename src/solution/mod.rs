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
    #[error("{what} failed ({status}): {command}")]
    Failed {
        /// What was being done (`build localhost:5000/edgetwin:0.1.0-amd64`).
        what: String,
        /// The exit status.
        status: std::process::ExitStatus,
        /// The command line (it never carries a password).
        command: String,
    },
}
