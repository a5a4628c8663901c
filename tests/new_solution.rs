//! `edgetwin new demo`: the generated solution's own `cargo test` and `cargo build` pass,
//! `edgetwin manifest gen` works in it, `edgetwin new --module` adds a second module, and the
//! built module, unchanged, acknowledges a desired property and answers `ping` against a real
//! `edgetwin hub` process, logging each step at info; with a workload socket that is not there it
//! says so at once, with when it tries again. (Its images are built by `scripts/image-check`.)
//!
//! The solution is written under this workspace's target directory (`target/new-solution/demo`,
//! made anew each run) and the nested cargo builds into that target directory itself: the
//! solution's dependencies resolve to the crates this workspace's tests just compiled (its copy of
//! the edgetwin crates keeps its path across runs), so little is compiled again. (`cargo test`
//! gives up its lock on the directory before it runs the tests.)

use edgetwin_test_support as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{poll, stdout_of_success, Hub, HubOptions, Proc, TempDir};

/// Where the nested cargo builds: this test's own target directory (it runs from
/// `<target>/debug/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_owned()
}

/// Where the solution is written.
fn solution_parent() -> PathBuf {
    target_dir().join("new-solution")
}

fn cargo(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    stdout_of_success(&format!("cargo {}", args.join(" ")), &out)
}

fn edgetwin(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(support::edgetwin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    stdout_of_success(&format!("edgetwin {}", args.join(" ")), &out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_solution_builds_passes_its_own_tests_and_its_module_runs_against_the_hub() {
    let scratch = TempDir::new("new-solution");
    let demo = solution_parent().join("demo");
    let _ = std::fs::remove_dir_all(&demo);
    std::fs::create_dir_all(solution_parent()).unwrap();
    edgetwin(&solution_parent(), &["new", "demo", "--module", "echo"]);
    for file in [
        "deployment.template.json",
        ".env",
        "modules/echo/module.json",
        "modules/echo/Dockerfile.amd64",
        "modules/echo/Dockerfile.arm64v8",
        "modules/echo/Dockerfile.arm32v7",
        "edgetwin/client/Cargo.toml",
        ".dockerignore",
    ] {
        assert!(demo.join(file).is_file(), "{file} missing");
    }
    edgetwin(&demo, &["new", "--module", "second"]);
    let out = Command::new(support::edgetwin())
        .args(["new", "--module", "third", "--edgetwin-path", "/elsewhere"])
        .current_dir(&demo)
        .output()
        .unwrap();
    let stderr = support::stderr_of_failure("edgetwin new --module --edgetwin-path", &out);
    assert!(
        stderr.contains("--edgetwin-path is for a new solution"),
        "{stderr}"
    );

    let tested = cargo(&demo, &["test", "--offline"]);
    assert!(
        tested.contains(
            "a_desired_property_is_acknowledged_an_input_is_echoed_and_ping_counts_it ... ok"
        ),
        "{tested}"
    );
    cargo(&demo, &["build", "--offline"]);
    edgetwin(&demo, &["manifest", "gen", "-P", "arm64v8"]);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(demo.join("config/deployment.arm64v8.json")).unwrap(),
    )
    .unwrap();
    let modules = &manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"];
    assert_eq!(
        modules["echo"]["settings"]["image"],
        "localhost:5000/echo:0.1.0-arm64v8"
    );
    assert!(modules["second"].is_object(), "{modules}");

    // The binary as built, with the environment IoT Edge would give it.
    let hub = Hub::start(
        scratch.path(),
        HubOptions {
            mqtt_port: 0,
            https_port: 0,
            ..HubOptions::default()
        },
    );
    hub.rest.create_edge_device("gw").await;
    hub.rest.create_module("gw", "echo").await;
    let env = hub.rest.edge_environment("gw", "echo").await;
    let mut command = Command::new(target_dir().join("debug/echo"));
    command
        .env_clear()
        .envs(&env)
        .env("EDGETWIN_MQTT_PORT", hub.mqtt_port().to_string());
    let mut module = Proc::spawn(&mut command, scratch.join("echo.log"));
    // The first patch may come with the full twin, the second comes as a patch.
    for level in [3, 4] {
        let desired = hub
            .rest
            .patch_desired("gw", "echo", json!({"level": level}))
            .await;
        let version = desired["$version"].clone();
        poll(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let reported = hub.rest.reported("gw", "echo").await;
                if reported["level"]["av"] == version && reported["level"]["ac"] == 200 {
                    return Ok(());
                }
                let log = module.log();
                Err(move || format!("not acknowledged: {reported}\n{log}"))
            },
        )
        .await;
    }
    let (status, body) = hub
        .rest
        .call(
            "POST",
            "/twins/gw/modules/echo/methods",
            Some(json!({"methodName": "ping", "payload": null, "responseTimeoutInSeconds": 10})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], json!({"pong": true, "echoed": 0}));
    module.assert_sigterm_exits_0(Duration::from_secs(10));
    // With no RUST_LOG: info, plain text in a file.
    let log = module.log();
    for step in [
        "INFO",
        "echo starting",
        "identity device=\"gw\" module=\"echo\" source=\"edgeWorkload\"",
        "connected",
        "twin received",
        "desired patch",
        "patch={\"level\":4}",
        "method ping",
        "SIGTERM: stopping",
    ] {
        assert!(
            log.contains(step),
            "{step:?} not in the module's log:\n{log}"
        );
    }
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");

    // A workload socket that is not there: the failure is logged at once, with the next try.
    let missing = scratch.join("no-such-workload.sock");
    let mut command = Command::new(target_dir().join("debug/echo"));
    command
        .env_clear()
        .envs(&env)
        .env(
            "IOTEDGE_WORKLOADURI",
            format!("unix://{}", missing.display()),
        )
        .env("EDGETWIN_MQTT_PORT", hub.mqtt_port().to_string());
    let mut module = Proc::spawn(&mut command, scratch.join("echo-bad-workload.log"));
    poll(
        Duration::from_secs(2),
        Duration::from_millis(50),
        || async {
            let log = module.log();
            let failure = log.lines().find(|line| {
                line.contains("WARN")
                    && line.contains("connection failed; next attempt in")
                    && line.contains(&*missing.to_string_lossy())
            });
            match failure {
                Some(_) => Ok(()),
                None => Err(move || format!("no failure naming the socket within 2 s:\n{log}")),
            }
        },
    )
    .await;
    module.assert_sigterm_exits_0(Duration::from_secs(10));
}
