//! `edgetwin solution build` and `edgetwin solution push`: run the builder for every image of
//! the platform ([`super::plan`]), then push each to the registry its tag names, logging in first
//! when `.env` has credentials for that registry (`CONTAINER_REGISTRY_SERVER`,
//! `CONTAINER_REGISTRY_USERNAME`, `CONTAINER_REGISTRY_PASSWORD`, as iotedgedev reads them).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use edgetwin_wire::Secret;

use super::builder::{build_platform, Builder};
use super::{plan, ImageBuild, SolutionError};
use crate::manifest::generate::solution_env;
use crate::manifest::Env;

/// Options of `edgetwin solution`.
#[derive(clap::Args, Debug)]
pub struct SolutionArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SolutionCommand,
}

/// The `solution` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SolutionCommand {
    /// Build the image of every modules/*/module.json for the platform, tagged as
    /// `iotedgedev solution build` tags it, with docker buildx, podman or buildah (`--builder`, or
    /// the first found).
    Build {
        /// Which solution and platform.
        #[command(flatten)]
        solution: SolutionOptions,
        /// Push the images too.
        #[arg(long)]
        push: bool,
    },
    /// Build and push the images (as `iotedgedev solution push`).
    Push {
        /// Which solution and platform.
        #[command(flatten)]
        solution: SolutionOptions,
        /// Push images built before, without building.
        #[arg(long)]
        no_build: bool,
    },
}

/// What `build` and `push` share.
#[derive(clap::Args, Debug)]
pub struct SolutionOptions {
    /// Target platform: amd64, arm64v8, arm32v7 (a platform key of module.json)
    /// [default: $DEFAULT_PLATFORM or amd64].
    #[arg(short = 'P', long)]
    pub platform: Option<String>,
    /// The solution directory [default: the current directory].
    #[arg(short = 'C', long = "dir")]
    pub dir: Option<PathBuf>,
    /// One more builder argument after module.json's buildOptions; repeatable
    /// (`--build-option=-v --build-option=/a:/a:ro`).
    #[arg(long = "build-option", value_name = "ARG", allow_hyphen_values = true)]
    pub build_options: Vec<String>,
    /// The image builder: docker (with buildx), podman or buildah
    /// [default: the first of them on PATH, in that order].
    #[arg(long, env = "EDGETWIN_BUILDER", value_name = "docker|podman|buildah")]
    pub builder: Option<String>,
}

/// Runs `edgetwin solution ...`.
pub fn run(args: SolutionArgs) -> Result<(), SolutionError> {
    let (options, build, push) = match args.command {
        SolutionCommand::Build { solution, push } => (solution, true, push),
        SolutionCommand::Push { solution, no_build } => (solution, !no_build, true),
    };
    run_steps(&options, build, push)
}

fn run_steps(options: &SolutionOptions, build: bool, push: bool) -> Result<(), SolutionError> {
    let wanted = options
        .builder
        .as_deref()
        .filter(|name| !name.trim().is_empty())
        .map(Builder::from_name)
        .transpose()?;
    let dir = options.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let env = solution_env(&dir, Env::from_process())?;
    let platform = options
        .platform
        .clone()
        .unwrap_or_else(|| env.get_stripped("DEFAULT_PLATFORM").to_owned());
    let images = plan(&dir, &platform, &env)?;
    let builder = Builder::choose(wanted, on_path, || {
        Command::new("docker")
            .args(["buildx", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    if push {
        login(builder, &env, &images)?;
    }
    for image in &images {
        if build {
            println!(
                "building {} ({}) from {} with {}",
                image.tag,
                image.platform,
                image.dockerfile.display(),
                builder.program()
            );
            let args = builder.build(image, build_platform(), &options.build_options, push);
            let what = format!("building {}", image.tag);
            execute(builder, builder.program(), &args, &what, None)?;
            let steps = builder.after_build(image, std::process::id());
            if !steps.is_empty() && !on_path("buildah") {
                eprintln!(
                    "warning: {} lacks the variant of {}: {builder} drops it and cannot set it \
                     again, and buildah, which can, is not on PATH",
                    image.tag, image.platform
                );
            } else {
                for args in steps {
                    let what = format!("setting the platform of {}", image.tag);
                    execute(builder, "buildah", &args, &what, None)?;
                }
            }
        }
        if let Some(args) = builder.push(&image.tag, build).filter(|_| push) {
            println!("pushing {}", image.tag);
            let what = format!("pushing {}", image.tag);
            execute(builder, builder.program(), &args, &what, None)?;
        }
    }
    let done = if push { "built and pushed" } else { "built" };
    let done = if build { done } else { "pushed" };
    println!(
        "{done} {} image(s) for {platform} with {}",
        images.len(),
        builder.program()
    );
    Ok(())
}

/// Logs in to the `.env` registry when it has a user name and an image is tagged for it;
/// otherwise pushes go anonymously, as with iotedgedev.
fn login(builder: Builder, env: &Env, images: &[ImageBuild]) -> Result<(), SolutionError> {
    let server = env.get_stripped("CONTAINER_REGISTRY_SERVER");
    let user = env.get_stripped("CONTAINER_REGISTRY_USERNAME");
    let for_server = |image: &ImageBuild| {
        image
            .tag
            .split('/')
            .next()
            .unwrap_or_default()
            .eq_ignore_ascii_case(server)
    };
    if server.is_empty() || user.is_empty() || !images.iter().any(for_server) {
        return Ok(());
    }
    let password = Secret::new(env.get_stripped("CONTAINER_REGISTRY_PASSWORD"));
    println!("logging in to {server} as {user}");
    let args = builder.login(server, user);
    execute(
        builder,
        builder.program(),
        &args,
        &format!("logging in to {server}"),
        Some(&password),
    )
}

/// Runs `program` (the builder's, or buildah after a podman build) with `args` (output to the
/// terminal), `stdin` on its standard input. The error output of podman and buildah also goes
/// through this process, which keeps its end for [`Builder::short_name_hint`].
fn execute(
    builder: Builder,
    program: &str,
    args: &[String],
    what: &str,
    stdin: Option<&Secret>,
) -> Result<(), SolutionError> {
    let spawn_error = |source| SolutionError::Spawn {
        program: program.to_owned(),
        source,
    };
    let keep_stderr = builder.resolves_short_names_by_config();
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if keep_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .map_err(spawn_error)?;
    let stderr = child
        .stderr
        .take()
        .map(|pipe| std::thread::spawn(move || pass_on(pipe)));
    if let (Some(secret), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(secret.expose().as_bytes())
            .map_err(spawn_error)?;
    }
    let status = child.wait().map_err(spawn_error)?;
    let stderr = stderr
        .and_then(|thread| thread.join().ok())
        .unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(SolutionError::Failed {
            what: what.to_owned(),
            status,
            command: format!("{program} {}", args.join(" ")),
            hint: builder.short_name_hint(&stderr),
        })
    }
}

/// Copies a builder's error output to this process's as it comes, and returns its last 64 KiB.
fn pass_on(mut pipe: impl Read) -> String {
    const KEEP: usize = 64 * 1024;
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    let mut out = std::io::stderr();
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                let _ = out.write_all(&buffer[..n]);
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > 2 * KEEP {
                    kept.drain(..kept.len() - KEEP);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Whether an executable `program` is in one of PATH's directories.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir: PathBuf| {
        let file: &Path = &dir.join(program);
        file.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
