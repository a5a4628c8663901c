//! `edgetwin quickstart` as a user runs it: one process, the seed's flow end to end, exit 0, and
//! nothing left running.

use std::path::PathBuf;
use std::process::Command;

fn quickstart(data_dir: &PathBuf) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_edgetwin"))
        .args(["quickstart", "--data-dir"])
        .arg(data_dir)
        .arg("--module-binary")
        .arg(env!("CARGO_BIN_EXE_edgetwin-module"))
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
