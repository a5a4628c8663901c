//! `edgetwin hub` as an operator starts it: what it says when it cannot have IoT Hub's ports, and
//! when another hub already runs on its data directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{workload_call, Hub, HubOptions, TempDir};

use edgetwin_test_support as support;

#[test]
fn a_hub_that_may_not_bind_443_says_so_in_one_line_and_names_the_ways_out() {
    let dir = support::TempDir::new("hub-cli-443");
    // the unprivileged user must be able to create the data directory's contents
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut command = if is_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(env!("CARGO_BIN_EXE_edgetwin"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_edgetwin"))
    };
    let output = command
        .arg("hub")
        .arg("--data-dir")
        .arg(dir.join("hub"))
        .args(["--mqtt-port", "0", "--https-port", "443"])
        .output()
        .expect("run edgetwin hub");
    let stderr = support::stderr_of_failure("edgetwin hub --https-port 443 unprivileged", &output);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    for expected in [
        "HTTPS",
        "443",
        "CAP_NET_BIND_SERVICE",
        "setcap",
        "--https-port",
    ] {
        assert!(
            errors[0].contains(expected),
            "{expected:?} in {:?}",
            errors[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hub_on_the_same_data_directory_is_refused_at_once_naming_the_first_and_the_first_keeps_serving(
) {
    let dir = TempDir::new("hub-cli-twice");
    let first = Hub::start(
        dir.path(),
        HubOptions {
            rust_log: Some("info"),
            ..HubOptions::default()
        },
    );
    first.rest.create_edge_device("gw").await;
    first.rest.create_module("gw", "m").await;
    let env = first.rest.edge_environment("gw", "m").await;
    let socket = PathBuf::from(env["IOTEDGE_WORKLOADURI"].strip_prefix("unix://").unwrap());
    let sign_path = format!(
        "/modules/m/genid/{}/sign?api-version=2022-08-03",
        env["IOTEDGE_MODULEGENERATIONID"]
    );
    let sign = || {
        workload_call(
            &socket,
            "POST",
            &sign_path,
            Some(json!({"keyId": "primary", "algo": "HMACSHA256", "data": "aGVsbG8="})),
        )
    };
    let (status, signed) = sign();
    assert_eq!(status, 200, "{signed}");
    let socket_inode = std::fs::metadata(&socket).unwrap().ino();
    let data_dir = dir.join("hub").canonicalize().unwrap();
    let written_before = written(&data_dir);

    // Other ports, so that only the data directory is shared.
    let started = Instant::now();
    let mut second = support::Proc::spawn_with_stdout(
        Command::new(support::edgetwin())
            .args(["hub", "--data-dir"])
            .arg(&data_dir)
            .args(["--mqtt-port", "0", "--https-port", "0", "--amqp-port", "0"]),
        Stdio::null(),
        dir.join("second.log"),
    );
    let code = second.wait_exit(Duration::from_secs(2));
    let took = started.elapsed();
    let stderr = second.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the second hub did not exit non-zero within 2 s ({code:?} after {took:?}):\n{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    for expected in [
        data_dir.display().to_string(),
        format!("pid {}", first.proc.child.id()),
    ] {
        assert!(
            errors[0].contains(&expected),
            "{expected:?} in {:?}",
            errors[0]
        );
    }

    // The first hub's sockets, database and certificates are as they were, and it serves.
    assert_eq!(std::fs::metadata(&socket).unwrap().ino(), socket_inode);
    assert_eq!(
        written(&data_dir),
        written_before,
        "the second hub rewrote hub.json or the certificates"
    );
    let (status, body) = first.rest.call("GET", "/devices/gw", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, again) = sign();
    assert_eq!((status, &again), (200, &signed));
    // Its log, written to a file, is plain text: no colour codes.
    let log = first.proc.log();
    assert!(
        log.contains(" INFO ") && !log.contains('\u{1b}'),
        "the hub's log file:\n{log}"
    );
}

/// When `hub.json` and each file under `certs/` of the data directory `dir` were last written.
fn written(dir: &std::path::Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut files = vec![dir.join("hub.json")];
    files.extend(
        std::fs::read_dir(dir.join("certs"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let modified = std::fs::metadata(&f).unwrap().modified().unwrap();
            (f, modified)
        })
        .collect()
}

#[test]
fn a_data_dir_that_is_a_file_or_another_users_directory_is_one_line_saying_so() {
    let dir = TempDir::new("hub-cli-data-dir");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    // Another user's directory: as root, ours (root's) for a hub run as nobody; otherwise
    // root's own /.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let others = match is_root {
        true => {
            let others = dir.join("roots");
            std::fs::create_dir(&others).unwrap();
            others
        }
        false => PathBuf::from("/"),
    };
    let hub = || {
        let mut command = match is_root {
            true => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
                c.arg(support::edgetwin());
                c
            }
            false => Command::new(support::edgetwin()),
        };
        command.args([
            "hub",
            "--mqtt-port",
            "0",
            "--https-port",
            "0",
            "--amqp-port",
            "0",
            "--data-dir",
        ]);
        command
    };
    // The file must be reachable by the hub's user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (data_dir, expected) in [
        (&file, "is a file, not a directory"),
        (&others, "belongs to another user"),
    ] {
        let output = hub().arg(data_dir).output().expect("run edgetwin hub");
        let stderr = support::stderr_of_failure("edgetwin hub on a bad data dir", &output);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
        for expected in [expected, &data_dir.display().to_string(), "--data-dir"] {
            assert!(
                errors[0].contains(expected),
                "{expected:?} in {:?}",
                errors[0]
            );
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
    if is_root {
        assert!(
            std::fs::read_dir(&others).unwrap().next().is_none(),
            "the hub wrote into another user's directory"
        );
    }
}
