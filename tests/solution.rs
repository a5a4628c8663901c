//! `edgetwin solution build` as a process: what it says when it cannot build. The builds
//! themselves run with a real builder in scripts/image-check.

use std::path::Path;
use std::process::Command;

fn solution(args: &[&str], path: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_edgetwin"))
        .arg("solution")
        .args(args)
        .arg("-C")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")))
        .env("PATH", path)
        .output()
        .unwrap();
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
