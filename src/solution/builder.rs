//! The OCI builders `edgetwin solution` drives, found in this order: docker with the buildx
//! plugin, podman, buildah; and the command lines each one takes to build, push and log in.
//! Pure: finding takes the lookups as functions, commands are argument vectors.

use super::plan::ImageBuild;

/// An image builder on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// `docker buildx build`.
    DockerBuildx,
    /// `podman build`.
    Podman,
    /// `buildah bud` (daemonless; Debian's 1.28 leaves `$BUILDPLATFORM` empty, so it is passed,
    /// and drops the `v8` of `linux/arm64/v8`, so it is set again after the build).
    Buildah,
}

impl Builder {
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
            Self::Podman => vec!["build".into()],
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

    /// After a build: buildah writes `linux/arm64` images without the `v8` variant docker
    /// gives them, so the image's config gets its platform's variant again (one squashed layer,
    /// as before), through a working container named after the module and `run` (this process's
    /// id). Nothing to do for the others or for platforms without a variant.
    pub fn after_build(self, image: &ImageBuild, run: u32) -> Vec<Vec<String>> {
        let variant = image.platform.split('/').nth(2);
        let (Self::Buildah, Some(variant)) = (self, variant) else {
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

    /// Logs in to `server` as `user`; the password goes to the builder's standard input.
    pub fn login(self, server: &str, user: &str) -> Vec<String> {
        ["login", "-u", user, "--password-stdin", server]
            .map(String::from)
            .to_vec()
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
    fn buildah_images_get_their_platform_variant_back_after_the_build() {
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
        assert!(Builder::Podman.after_build(&image(), 7).is_empty());
    }

    #[test]
    fn login_never_puts_the_password_on_the_command_line() {
        assert_eq!(
            Builder::Podman.login("reg.io", "me").join(" "),
            "login -u me --password-stdin reg.io"
        );
    }
}
