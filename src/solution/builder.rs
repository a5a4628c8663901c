//! The OCI builders `edgetwin solution` drives, chosen with `--builder` or found in this order:
//! docker with the buildx plugin, podman, buildah; the command lines each one takes to build,
//! push and log in; and what to tell a user whose build failed on a short image name.
//! Pure: finding takes the lookups as functions, commands are argument vectors.

use super::plan::ImageBuild;
use super::SolutionError;

/// An image builder on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// `docker buildx build`.
    DockerBuildx,
    /// `podman build` (Debian's 4.3 builds with buildah 1.28 inside, with the same two faults).
    Podman,
    /// `buildah bud` (daemonless; Debian's 1.28 leaves `$BUILDPLATFORM` empty, so it is passed,
    /// and drops the `v8` of `linux/arm64/v8`, so it is set again after the build). An empty
    /// `$BUILDPLATFORM` makes `FROM --platform=$BUILDPLATFORM` ask for the target platform's
    /// base, which is not the local one: a pull, and with a short name a short-name error.
    Buildah,
}

impl Builder {
    /// Every builder, in the order the automatic choice tries them.
    pub const ALL: [Self; 3] = [Self::DockerBuildx, Self::Podman, Self::Buildah];

    /// The builder a `--builder` (or `EDGETWIN_BUILDER`) value names: `docker`, `podman` or
    /// `buildah`, in any case.
    pub fn from_name(name: &str) -> Result<Self, SolutionError> {
        Self::ALL
            .into_iter()
            .find(|builder| builder.program().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| SolutionError::UnknownBuilder(name.to_owned()))
    }

    /// The builder to use: `wanted` when it is present (an error naming the builders that are
    /// when it is not), else the first present, as [`Builder::find`].
    pub fn choose(
        wanted: Option<Self>,
        on_path: impl Fn(&str) -> bool,
        buildx_works: impl FnOnce() -> bool,
    ) -> Result<Self, SolutionError> {
        let Some(wanted) = wanted else {
            return Self::find(on_path, buildx_works).ok_or(SolutionError::NoBuilder);
        };
        let docker = on_path("docker");
        let buildx = docker && buildx_works();
        let present: Vec<Self> = Self::ALL
            .into_iter()
            .filter(|builder| match builder {
                Self::DockerBuildx => buildx,
                _ => on_path(builder.program()),
            })
            .collect();
        if present.contains(&wanted) {
            Ok(wanted)
        } else {
            Err(SolutionError::BuilderMissing {
                wanted,
                docker_without_buildx: wanted == Self::DockerBuildx && docker,
                present,
            })
        }
    }

    /// The first builder present: `on_path(program)` says whether a program is on PATH,
    /// `buildx_works()` whether `docker buildx version` succeeds (docker without buildx is
    /// skipped: the Dockerfiles use `FROM --platform=$BUILDPLATFORM`).
    pub fn find(
        on_path: impl Fn(&str) -> bool,
        buildx_works: impl FnOnce() -> bool,
    ) -> Option<Self> {
        if on_path("docker") && buildx_works() {
            Some(Self::DockerBuildx)
        } else if on_path("podman") {
            Some(Self::Podman)
        } else if on_path("buildah") {
            Some(Self::Buildah)
        } else {
            None
        }
    }

    /// The program to run.
    pub fn program(self) -> &'static str {
        match self {
            Self::DockerBuildx => "docker",
            Self::Podman => "podman",
            Self::Buildah => "buildah",
        }
    }

    /// Builds `image` for its platform on a `build_platform` machine (`linux/amd64`), after the
    /// module.json options the `extra` ones. With buildx, `push` pushes from the build (else the
    /// image is loaded into docker); the others push with [`Builder::push`].
    pub fn build(
        self,
        image: &ImageBuild,
        build_platform: &str,
        extra: &[String],
        push: bool,
    ) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Self::DockerBuildx => vec!["buildx".into(), "build".into()],
            Self::Podman => vec![
                "build".into(),
                "--build-arg".into(),
                format!("BUILDPLATFORM={build_platform}"),
            ],
            Self::Buildah => vec![
                "bud".into(),
                "--build-arg".into(),
                format!("BUILDPLATFORM={build_platform}"),
            ],
        };
        args.extend(["--platform".into(), image.platform.into()]);
        args.extend([
            "-f".into(),
            image.dockerfile.display().to_string(),
            "-t".into(),
            image.tag.clone(),
        ]);
        args.extend(image.options.iter().chain(extra).cloned());
        if self == Self::DockerBuildx {
            args.push(if push { "--push" } else { "--load" }.into());
        }
        args.push(image.context.display().to_string());
        args
    }

    /// After a build: buildah (and podman, which builds with it) writes `linux/arm64` images
    /// without the `v8` variant docker gives them, so the image's config gets its platform's
    /// variant again (one squashed layer, as before), through a working container named after the
    /// module and `run` (this process's id). The steps are buildah's (podman has no command that
    /// sets a variant; both keep their images in the same storage). Nothing to do for docker or
    /// for platforms without a variant.
    pub fn after_build(self, image: &ImageBuild, run: u32) -> Vec<Vec<String>> {
        let variant = image.platform.split('/').nth(2);
        let (Self::Buildah | Self::Podman, Some(variant)) = (self, variant) else {
            return Vec::new();
        };
        let container = format!("edgetwin-variant-{}-{run}", image.module);
        let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        vec![
            args(&[
                "from",
                "--quiet",
                "--pull-never",
                "--name",
                &container,
                &image.tag,
            ]),
            args(&["config", "--variant", variant, &container]),
            args(&[
                "commit", "--quiet", "--squash", "--rm", &container, &image.tag,
            ]),
        ]
    }

    /// Pushes a built `tag` to the registry it names; `None` after a buildx build that pushed.
    pub fn push(self, tag: &str, built_with_push: bool) -> Option<Vec<String>> {
        match self {
            Self::DockerBuildx if built_with_push => None,
            Self::DockerBuildx | Self::Podman => Some(vec!["push".into(), tag.into()]),
            Self::Buildah => Some(vec!["push".into(), tag.into(), format!("docker://{tag}")]),
        }
    }

    /// Whether the build's error output is worth keeping for [`Builder::short_name_hint`]:
    /// podman and buildah resolve a short name (`FROM rust:1`) only through registries.conf.
    pub fn resolves_short_names_by_config(self) -> bool {
        self != Self::DockerBuildx
    }

    /// What to add to a failed build's error when the builder's output (`stderr`) says it could
    /// not resolve a short image name: where the name comes from and the two ways out.
    pub fn short_name_hint(self, stderr: &str) -> Option<String> {
        if !self.resolves_short_names_by_config() {
            return None;
        }
        let program = self.program();
        let ways_out = |example: &str| {
            format!(
                "write it fully qualified in the Dockerfile's FROM line ({example}), or give it an \
                 alias in registries.conf (containers-registries.conf(5)), or build with \
                 --builder docker"
            )
        };
        if let Some(at) = stderr.find("short-name \"") {
            let rest = &stderr[at + "short-name \"".len()..];
            let name = &rest[..rest.find('"')?];
            return Some(format!(
                "{program} could not resolve the short image name \"{name}\": {}",
                ways_out(&qualified(name))
            ));
        }
        stderr
            .contains("short-name resolution enforced but cannot prompt without a TTY")
            .then(|| {
                format!(
                    "{program} cannot choose a registry for a short image name without asking: {}",
                    ways_out("docker.io/library/rust:1, not rust:1")
                )
            })
    }

    /// Logs in to `server` as `user`; the password goes to the builder's standard input.
    pub fn login(self, server: &str, user: &str) -> Vec<String> {
        ["login", "-u", user, "--password-stdin", server]
            .map(String::from)
            .to_vec()
    }
}

impl std::fmt::Display for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.program())
    }
}

/// A short image name as docker reads it: `rust:1` is `docker.io/library/rust:1`, `me/m:1` is
/// `docker.io/me/m:1`; a name whose first part is a host (a dot, a port or `localhost`) is as is.
pub fn qualified(name: &str) -> String {
    let first = name.split('/').next().unwrap_or_default();
    if name.contains('/') && (first.contains(['.', ':']) || first == "localhost") {
        name.to_owned()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

/// The OCI platform of the machine running the build (`linux/amd64`), for `$BUILDPLATFORM`.
pub fn build_platform() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "linux/arm64",
        "arm" => "linux/arm/v7",
        _ => "linux/amd64",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn image() -> ImageBuild {
        ImageBuild {
            module: "edgetwin".into(),
            tag: "localhost:5000/edgetwin:0.1.0-arm32v7".into(),
            dockerfile: PathBuf::from("/s/Dockerfile.arm32v7"),
            context: PathBuf::from("/s"),
            platform: "linux/arm/v7",
            options: vec!["--add-host=h:127.0.0.1".into()],
        }
    }

    #[test]
    fn docker_buildx_comes_first_then_podman_then_buildah() {
        let only = |names: &'static [&'static str]| move |p: &str| names.contains(&p);
        assert_eq!(
            Builder::find(only(&["docker", "podman", "buildah"]), || true),
            Some(Builder::DockerBuildx)
        );
        assert_eq!(
            Builder::find(only(&["docker", "buildah"]), || false),
            Some(Builder::Buildah)
        );
        assert_eq!(
            Builder::find(only(&["podman", "buildah"]), || unreachable!()),
            Some(Builder::Podman)
        );
        assert_eq!(Builder::find(only(&[]), || unreachable!()), None);
    }

    #[test]
    fn a_chosen_builder_is_used_when_it_is_present_whatever_comes_first() {
        let only = |names: &'static [&'static str]| move |p: &str| names.contains(&p);
        let all = only(&["docker", "podman", "buildah"]);
        assert_eq!(
            Builder::choose(Some(Builder::Buildah), all, || true).unwrap(),
            Builder::Buildah
        );
        assert_eq!(
            Builder::choose(Some(Builder::Podman), only(&["podman"]), || unreachable!()).unwrap(),
            Builder::Podman
        );
        assert_eq!(
            Builder::choose(Some(Builder::DockerBuildx), all, || true).unwrap(),
            Builder::DockerBuildx
        );
        // None chosen: the first found, as before.
        assert_eq!(
            Builder::choose(None, only(&["podman", "buildah"]), || unreachable!()).unwrap(),
            Builder::Podman
        );
        assert!(matches!(
            Builder::choose(None, only(&[]), || unreachable!()),
            Err(SolutionError::NoBuilder)
        ));
    }

    #[test]
    fn a_chosen_builder_that_is_missing_is_named_with_the_choices_and_what_is_here() {
        let only = |names: &'static [&'static str]| move |p: &str| names.contains(&p);
        let error = Builder::choose(Some(Builder::Podman), only(&["docker", "buildah"]), || true)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--builder podman (or EDGETWIN_BUILDER): podman is not on PATH; the choices are \
             docker, podman and buildah, and this machine has docker and buildah"
        );
        let error = Builder::choose(
            Some(Builder::DockerBuildx),
            only(&["docker", "podman"]),
            || false,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--builder docker (or EDGETWIN_BUILDER): docker is on PATH but `docker buildx version` \
             fails (install the buildx plugin); the choices are docker, podman and buildah, and \
             this machine has podman"
        );
        let error =
            Builder::choose(Some(Builder::Buildah), only(&[]), || unreachable!()).unwrap_err();
        assert!(
            error.to_string().ends_with(
                "this machine has none of them (install Docker with the buildx plugin, podman \
                 or buildah; on Debian: apt-get install buildah)"
            ),
            "{error}"
        );
    }

    #[test]
    fn builders_are_named_as_their_programs() {
        assert_eq!(Builder::from_name("docker").unwrap(), Builder::DockerBuildx);
        assert_eq!(Builder::from_name("Podman").unwrap(), Builder::Podman);
        assert_eq!(Builder::from_name("buildah").unwrap(), Builder::Buildah);
        assert_eq!(
            Builder::from_name("kaniko").unwrap_err().to_string(),
            "unknown builder \"kaniko\" (--builder or EDGETWIN_BUILDER): the choices are docker, \
             podman and buildah"
        );
        for builder in Builder::ALL {
            assert_eq!(Builder::from_name(&builder.to_string()).unwrap(), builder);
        }
    }

    #[test]
    fn a_short_name_podman_cannot_resolve_gets_the_ways_out() {
        let podman =
            "STEP 1/9: FROM rust:1.95-slim-bookworm AS build\nError: creating build container: \
            short-name \"rust:1.95-slim-bookworm\" did not resolve to an alias and no \
            unqualified-search registries are defined in \"/etc/containers/registries.conf\"\n";
        assert_eq!(
            Builder::Podman.short_name_hint(podman).unwrap(),
            "podman could not resolve the short image name \"rust:1.95-slim-bookworm\": write it \
             fully qualified in the Dockerfile's FROM line (docker.io/library/rust:1.95-slim-bookworm), \
             or give it an alias in registries.conf (containers-registries.conf(5)), or build with \
             --builder docker"
        );
        assert!(Builder::Buildah
            .short_name_hint("Error: short-name resolution enforced but cannot prompt without a TTY")
            .unwrap()
            .starts_with("buildah cannot choose a registry for a short image name without asking: write it fully qualified in the Dockerfile's FROM line (docker.io/library/rust:1, not rust:1)"));
        assert_eq!(
            Builder::Podman.short_name_hint("Error: no space left on device"),
            None
        );
        assert_eq!(Builder::DockerBuildx.short_name_hint(podman), None);
    }

    #[test]
    fn short_names_qualify_as_docker_reads_them() {
        assert_eq!(qualified("rust:1"), "docker.io/library/rust:1");
        assert_eq!(qualified("me/module:1"), "docker.io/me/module:1");
        assert_eq!(qualified("localhost:5000/m:1"), "localhost:5000/m:1");
        assert_eq!(qualified("localhost/m"), "localhost/m");
        assert_eq!(qualified("reg.example/a/b:1"), "reg.example/a/b:1");
    }

    #[test]
    fn buildx_builds_for_the_platform_and_pushes_from_the_build() {
        let args = Builder::DockerBuildx.build(&image(), "linux/amd64", &[], true);
        assert_eq!(
            args.join(" "),
            "buildx build --platform linux/arm/v7 -f /s/Dockerfile.arm32v7 -t localhost:5000/edgetwin:0.1.0-arm32v7 --add-host=h:127.0.0.1 --push /s"
        );
        assert_eq!(Builder::DockerBuildx.push("t", true), None);
        assert_eq!(
            Builder::DockerBuildx.build(&image(), "linux/amd64", &[], false)[9],
            "--load"
        );
    }

    #[test]
    fn buildah_gets_the_build_platform_and_pushes_to_the_registry_the_tag_names() {
        let extra = ["-v".to_string(), "/a:/a:ro".to_string()];
        let args = Builder::Buildah.build(&image(), "linux/amd64", &extra, true);
        assert_eq!(
            args.join(" "),
            "bud --build-arg BUILDPLATFORM=linux/amd64 --platform linux/arm/v7 -f /s/Dockerfile.arm32v7 -t localhost:5000/edgetwin:0.1.0-arm32v7 --add-host=h:127.0.0.1 -v /a:/a:ro /s"
        );
        assert_eq!(
            Builder::Buildah
                .push("r/m:1-amd64", true)
                .unwrap()
                .join(" "),
            "push r/m:1-amd64 docker://r/m:1-amd64"
        );
        assert_eq!(
            Builder::Podman
                .push("r/m:1-amd64", false)
                .unwrap()
                .join(" "),
            "push r/m:1-amd64"
        );
    }

    #[test]
    fn podman_gets_the_build_platform_too() {
        let args = Builder::Podman.build(&image(), "linux/amd64", &[], true);
        assert_eq!(
            args.join(" "),
            "build --build-arg BUILDPLATFORM=linux/amd64 --platform linux/arm/v7 -f /s/Dockerfile.arm32v7 -t localhost:5000/edgetwin:0.1.0-arm32v7 --add-host=h:127.0.0.1 /s"
        );
    }

    #[test]
    fn buildah_and_podman_images_get_their_platform_variant_back_after_the_build() {
        let steps: Vec<String> = Builder::Buildah
            .after_build(&image(), 7)
            .iter()
            .map(|a| a.join(" "))
            .collect();
        assert_eq!(
            steps,
            [
                "from --quiet --pull-never --name edgetwin-variant-edgetwin-7 localhost:5000/edgetwin:0.1.0-arm32v7",
                "config --variant v7 edgetwin-variant-edgetwin-7",
                "commit --quiet --squash --rm edgetwin-variant-edgetwin-7 localhost:5000/edgetwin:0.1.0-arm32v7",
            ]
        );
        let amd64 = ImageBuild {
            platform: "linux/amd64",
            ..image()
        };
        assert!(Builder::Buildah.after_build(&amd64, 7).is_empty());
        assert_eq!(
            Builder::Podman.after_build(&image(), 7),
            Builder::Buildah.after_build(&image(), 7)
        );
        assert!(Builder::DockerBuildx.after_build(&image(), 7).is_empty());
    }

    #[test]
    fn login_never_puts_the_password_on_the_command_line() {
        assert_eq!(
            Builder::Podman.login("reg.io", "me").join(" "),
            "login -u me --password-stdin reg.io"
        );
    }
}
