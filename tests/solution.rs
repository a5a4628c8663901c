//! `edgetwin solution build` as a process: what it says when it cannot build. The builds
//! themselves run with a real builder in scripts/image-check.

use std::path::Path;
use std::process::Command;

fn solution(args: &[&str], path: &str) -> (bool, String) {
    solution_with(args, path, None)
}

/// `edgetwin solution ARGS` with PATH `path` and `EDGETWIN_BUILDER` set to `builder` (else unset).
fn solution_with(args: &[&str], path: &str, builder: Option<&str>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgetwin"));
    command
        .arg("solution")
        .args(args)
        .arg("-C")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")))
        .env("PATH", path)
        .env_remove("EDGETWIN_BUILDER");
    if let Some(builder) = builder {
        command.env("EDGETWIN_BUILDER", builder);
    }
    let output = command.output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn a_machine_without_a_builder_gets_one_line_naming_what_to_install() {
    let empty = std::env::temp_dir().join(format!("edgetwin-no-builder-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, text) = solution(&["build", "--platform", "arm32v7"], empty.to_str().unwrap());
    assert!(!ok, "{text}");
    assert_eq!(
        text,
        "error: no image builder found: install Docker with the buildx plugin, podman or buildah \
         (on Debian: apt-get install buildah)\n"
    );
}

#[test]
fn a_platform_the_solution_has_no_dockerfile_for_is_named_before_any_build() {
    let (ok, text) = solution(&["push", "--platform", "windows-amd64"], "/nonexistent");
    assert!(!ok, "{text}");
    assert!(
        text.starts_with("error: no module in ")
            && text.contains("has the platform \"windows-amd64\""),
        "{text}"
    );
}

#[test]
fn a_builder_that_does_not_exist_is_one_line_naming_the_choices() {
    let expected =
        "error: unknown builder \"kaniko\" (--builder or EDGETWIN_BUILDER): the choices \
                    are docker, podman and buildah\n";
    let (ok, text) = solution(&["build", "--builder", "kaniko"], "/nonexistent");
    assert!(!ok, "{text}");
    assert_eq!(text, expected);
    let (ok, text) = solution_with(&["push", "--no-build"], "/nonexistent", Some("kaniko"));
    assert!(!ok, "{text}");
    assert_eq!(text, expected);
}

#[test]
fn a_chosen_builder_that_is_not_on_path_is_one_line_naming_the_choices_and_what_is_here() {
    let bin = std::env::temp_dir().join(format!("edgetwin-only-buildah-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    let buildah = bin.join("buildah");
    std::fs::write(&buildah, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(
        &buildah,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (ok, text) = solution_with(
        &["build", "--platform", "arm32v7", "--builder", "podman"],
        bin.to_str().unwrap(),
        Some("buildah"),
    );
    std::fs::remove_dir_all(&bin).unwrap();
    assert!(!ok, "{text}");
    assert_eq!(
        text,
        "error: --builder podman (or EDGETWIN_BUILDER): podman is not on PATH; the choices are \
         docker, podman and buildah, and this machine has buildah\n"
    );
}
