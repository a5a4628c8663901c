//! `edgetwin quickstart` as a user runs it: one process, the seed's flow end to end, exit 0, and
//! nothing left running; with `--keep-running`, what `edgetwin hub` prints, and its exports work.

use edgetwin_test_support as support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Proc, TempDir};

fn quickstart(data_dir: &PathBuf) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_edgetwin"))
        .args(["quickstart", "--data-dir"])
        .arg(data_dir)
        .arg("--module-binary")
        .arg(support::edgetwin_module())
        .output()
        .expect("run edgetwin quickstart");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn the_quickstart_shows_the_seed_flow_and_leaves_nothing_running() {
    let data_dir =
        std::env::temp_dir().join(format!("edgetwin-quickstart-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);

    let (ok, text) = quickstart(&data_dir);
    assert!(ok, "quickstart failed:\n{text}");
    for expected in [
        "IoT Edge device myFirstDevice: created",
        "module myFirstDevice/myFirstModule: created",
        "IOTEDGE_WORKLOADURI=unix://",
        "identity from edgeWorkload",
        "\"telemetryInterval\": 122",
        "\"ac\": 200",
        "ping answered status 200: {\"pong\":true",
        "sampleNow answered status 200",
        "\"uptime\"",
        "the module exited 0 on SIGTERM",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let sockets: Vec<_> = std::fs::read_dir(data_dir.join("workload"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(!sockets.is_empty(), "the quickstart's module had no socket");
    for socket in sockets {
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "the hub still listens on {} after the quickstart ended",
            socket.display()
        );
    }
    let log = std::fs::read_to_string(data_dir.join("module.log")).unwrap();
    assert!(
        log.contains("<6>"),
        "module log lines carry the syslog prefix:\n{log}"
    );

    let (ok, text) = quickstart(&data_dir);
    assert!(ok, "second quickstart failed:\n{text}");
    assert!(
        text.contains("IoT Edge device myFirstDevice: existing"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn keep_running_prints_what_edgetwin_hub_prints_and_its_exports_reach_the_hub() {
    let scratch = TempDir::new("quickstart-keep");
    let mut quickstart = Proc::spawn_with_stdout(
        Command::new(env!("CARGO_BIN_EXE_edgetwin"))
            .args(["quickstart", "--keep-running", "--module-binary"])
            .arg(support::edgetwin_module())
            .arg("--data-dir")
            .arg(scratch.join("hub")),
        Stdio::piped(),
        scratch.join("quickstart.log"),
    );
    // Its stdout up to the line that says it now waits, read on a thread so that a quickstart
    // that never gets there fails the test instead of hanging it.
    let stdout = quickstart.child.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let last = line == "Stop with Ctrl-C.";
            if lines.send(line).is_err() || last {
                break;
            }
        }
    });
    let mut text = String::new();
    while !text.ends_with("Stop with Ctrl-C.\n") {
        match printed.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => text += &(line + "\n"),
            Err(_) => panic!("no `Stop with Ctrl-C.`:\n{text}\n{}", quickstart.log()),
        }
    }
    let banner = text.split("keep running").nth(1).unwrap_or_default();
    let field = |prefix: &str| {
        banner
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` after the walkthrough:\n{text}"))
            .trim()
            .trim_matches('\'')
            .to_owned()
    };
    let ca = field("CA certificate:");
    assert!(PathBuf::from(&ca).is_file(), "{ca}: no such CA file");
    assert!(field("web console:").starts_with("https://"), "{text}");
    assert!(
        field("workload sockets:").contains("hub/workload"),
        "{text}"
    );
    assert!(field("export REQUESTS_CA_BUNDLE=") == ca, "{text}");
    let connection_string = field("export IOTHUB_CONNECTION_STRING=");
    // The exports as a user pastes them reach the hub the quickstart keeps running.
    let out = Command::new(env!("CARGO_BIN_EXE_edgetwin"))
        .args([
            "twin",
            "get",
            "--device",
            "myFirstDevice",
            "--module",
            "myFirstModule",
        ])
        .env("IOTHUB_CONNECTION_STRING", connection_string)
        .env("REQUESTS_CA_BUNDLE", &ca)
        .current_dir(scratch.path())
        .output()
        .unwrap();
    let twin = support::stdout_of_success("twin get with the printed exports", &out);
    assert!(twin.contains("\"telemetryInterval\": 122"), "{twin}");
    quickstart.signal(libc::SIGINT);
    assert_eq!(
        quickstart.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        quickstart.log()
    );
}
