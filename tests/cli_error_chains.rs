//! What `edgetwin` says when a subcommand fails (issue 21): `error: <what failed>`, then one
//! `caused by: <why>` line per cause, each said once, and exit status 1. One real bad input per
//! subcommand family, with its whole error output; none needs a hub.

#[allow(dead_code)]
mod support;

use std::path::Path;
use std::process::Command;

use support::{edgetwin_module, TempDir, EDGETWIN};

/// `edgetwin args…` run in `dir`, with no connection string, CA file or log filter from the
/// environment that runs the tests.
fn edgetwin(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(EDGETWIN);
    command
        .current_dir(dir)
        .args(args)
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("EDGETWIN_CA_FILE")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("RUST_LOG")
        .env_remove("EDGETWIN_HUB_DATA_DIR")
        .env_remove("EDGETWIN_EDGE_CONFIG");
    command
}

/// Runs `command`, asserts it exits 1 printing nothing but `expected` (its lines) on stderr, and
/// returns stderr.
fn fails_with(command: &mut Command, expected: &[&str]) -> String {
    let output = command.output().expect("run edgetwin");
    let stderr = support::stderr_of_failure(&format!("{command:?}"), &output);
    assert_eq!(output.status.code(), Some(1), "{command:?}\n{stderr}");
    assert_eq!(stderr, format!("{}\n", expected.join("\n")), "{command:?}");
    stderr
}

#[test]
fn provision_says_why_a_connection_string_does_not_parse_on_its_own_line_and_never_its_key() {
    let dir = TempDir::new("chain-provision");
    const SHAPE: &str = "(a service connection string is \
                         HostName=<hub>;SharedAccessKeyName=<policy>;SharedAccessKey=<key>)";
    let top = format!("error: the connection string from --connection-string is not valid {SHAPE}");
    fails_with(
        &mut edgetwin(
            dir.path(),
            &[
                "provision",
                "--device",
                "d1",
                "--connection-string",
                "HostName=x;SharedAccessKeyName=iothubowner",
            ],
        ),
        &[
            &top,
            "caused by: connection string is missing `SharedAccessKey`",
        ],
    );
    let key = "c2VjcmV0LWtleS1ub3QtdG8tc2hvdw==";
    let stderr = fails_with(
        &mut edgetwin(
            dir.path(),
            &[
                "provision",
                "--device",
                "d1",
                "--connection-string",
                &format!("HostName=x;SharedAccessKeyName=iothubowner;SharedAccessKey={key};{key}"),
            ],
        ),
        &[
            &top,
            "caused by: connection string segment #3 has an unknown key (not shown: it may be a \
             secret; is a `SharedAccessKey=` missing?)",
        ],
    );
    assert!(!stderr.contains("c2VjcmV0"), "the key is shown: {stderr}");
}

#[test]
fn provision_names_the_json_path_of_a_template_that_cannot_be_generated_as_the_cause() {
    let dir = TempDir::new("chain-template");
    std::fs::write(
        dir.join("deployment.template.json"),
        r#"{"modulesContent": {
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1",
                "runtime": {"type": "docker", "settings": {}}, "systemModules": {},
                "modules": {"m": {"type": "docker", "settings": {"image": 5}}}}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {}}}}}"#,
    )
    .unwrap();
    fails_with(
        &mut edgetwin(dir.path(), &["provision", "--device", "d1", "--dir", "."]),
        &[
            "error: cannot generate the deployment manifest (solution directory .)",
            "caused by: deployment.template.json: \
             modulesContent.$edgeAgent.properties.desired.modules.m.settings.image: \
             must be a string, not integer",
        ],
    );
}

#[test]
fn twin_says_where_a_desired_patch_stops_being_json() {
    let dir = TempDir::new("chain-twin");
    fails_with(
        &mut edgetwin(
            dir.path(),
            &[
                "twin",
                "update",
                "--device",
                "d1",
                "--desired",
                r#"{"telemetryInterval":}"#,
            ],
        ),
        &[
            "error: --desired is not valid JSON",
            "caused by: expected value at line 1 column 22",
        ],
    );
}

#[test]
fn manifest_validate_names_the_file_and_why_it_cannot_be_read() {
    let dir = TempDir::new("chain-manifest");
    fails_with(
        &mut edgetwin(dir.path(), &["manifest", "validate", "missing.json"]),
        &[
            "error: file missing.json",
            "caused by: No such file or directory (os error 2)",
        ],
    );
}

#[test]
fn solution_says_a_module_json_cannot_be_read_and_why_once() {
    let dir = TempDir::new("chain-solution");
    std::fs::create_dir_all(dir.join("modules/m/module.json")).unwrap();
    fails_with(
        &mut edgetwin(dir.path(), &["solution", "build", "-C", "."]),
        &[
            "error: file ./modules/m/module.json",
            "caused by: Is a directory (os error 21)",
        ],
    );
}

#[test]
fn new_says_what_it_was_creating_and_why_the_module_name_is_refused() {
    let dir = TempDir::new("chain-new");
    fails_with(
        &mut edgetwin(dir.path(), &["new", "sol", "--module", "Upper"]),
        &[
            "error: cannot create the IoT Edge solution sol",
            "caused by: module name `Upper`: use lowercase letters and digits, starting with a \
             letter (at most 64), with `_`, `__` or dashes only between them, as a docker \
             repository name allows",
        ],
    );
    assert!(!dir.join("sol").exists(), "a solution was started");
}

#[test]
fn hub_backup_says_what_it_was_backing_up_and_that_there_is_no_database() {
    let dir = TempDir::new("chain-hub");
    let data = dir.path().display().to_string();
    let to = dir.join("backup.db").display().to_string();
    fails_with(
        &mut edgetwin(
            dir.path(),
            &["hub", "backup", "--data-dir", &data, "--to", &to],
        ),
        &[
            &format!("error: cannot back up the hub database in {data} to {to}"),
            &format!(
                "caused by: {data}/hub.db: no hub database here: --data-dir must be the \
                 directory `edgetwin hub` keeps its state in"
            ),
        ],
    );
}

#[test]
fn quickstart_says_its_hub_did_not_start_and_why() {
    let dir = TempDir::new("chain-quickstart");
    std::fs::write(dir.join("a-file"), "not a directory").unwrap();
    let output = edgetwin(
        dir.path(),
        &[
            "quickstart",
            "--module-binary",
            edgetwin_module().to_str().unwrap(),
            "--data-dir",
            "a-file",
        ],
    )
    .output()
    .expect("run edgetwin quickstart");
    let stderr = support::stderr_of_failure("quickstart on a file", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: the local hub did not start\n\
         caused by: the data directory a-file is a file, not a directory: remove it or choose \
         another --data-dir\n"
    );
}

#[test]
fn edge_run_names_the_config_file_it_cannot_read_and_why() {
    let dir = TempDir::new("chain-edge");
    let config = dir.join("config.toml").display().to_string();
    fails_with(
        &mut edgetwin(
            dir.path(),
            &["edge", "run", "--config", &config, "--data-dir", "data"],
        ),
        &[
            &format!("error: cannot read {config}"),
            "caused by: No such file or directory (os error 2)",
        ],
    );
}
