//! `edgetwin solution build` and `edgetwin solution push`: run the builder for every image of
//! the platform ([`super::plan`]), then push each to the registry its tag names, logging in first
//! when `.env` has credentials for that registry (`CONTAINER_REGISTRY_SERVER`,
//! `CONTAINER_REGISTRY_USERNAME`, `CONTAINER_REGISTRY_PASSWORD`, as iotedgedev reads them).

use std::io::Write;
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
    /// `iotedgedev solution build` tags it, with docker buildx, podman or buildah (the first found).
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
}

/// Runs `edgetwin solution ...`; `Err` carries the message for `error: ...` (exit 1).
pub fn run(args: SolutionArgs) -> Result<(), String> {
    let (options, build, push) = match args.command {
        SolutionCommand::Build { solution, push } => (solution, true, push),
        SolutionCommand::Push { solution, no_build } => (solution, !no_build, true),
    };
    run_steps(&options, build, push).map_err(|error| {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    })
}

fn run_steps(options: &SolutionOptions, build: bool, push: bool) -> Result<(), SolutionError> {
    let dir = options.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let env = solution_env(&dir, Env::from_process())?;
    let platform = options
        .platform
        .clone()
        .unwrap_or_else(|| env.get_stripped("DEFAULT_PLATFORM").to_owned());
    let images = plan(&dir, &platform, &env)?;
    let builder = Builder::find(on_path, || {
        Command::new("docker")
            .args(["buildx", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .ok_or(SolutionError::NoBuilder)?;
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
            execute(builder, &args, &format!("building {}", image.tag), None)?;
            for args in builder.after_build(image, std::process::id()) {
                let what = format!("setting the platform of {}", image.tag);
                execute(builder, &args, &what, None)?;
            }
        }
        if let Some(args) = builder.push(&image.tag, build).filter(|_| push) {
            println!("pushing {}", image.tag);
            execute(builder, &args, &format!("pushing {}", image.tag), None)?;
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
        &args,
        &format!("logging in to {server}"),
        Some(&password),
    )
}

/// Runs the builder with `args` (output to the terminal), `stdin` on its standard input.
fn execute(
    builder: Builder,
    args: &[String],
    what: &str,
    stdin: Option<&Secret>,
) -> Result<(), SolutionError> {
    let program = builder.program();
    let spawn_error = |source| SolutionError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(secret), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(secret.expose().as_bytes())
            .map_err(spawn_error)?;
    }
    let status = child.wait().map_err(spawn_error)?;
    if status.success() {
        Ok(())
    } else {
        Err(SolutionError::Failed {
            what: what.to_owned(),
            status,
            command: format!("{program} {}", args.join(" ")),
        })
    }
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
