//! `edgetwin hub` as an operator starts it: what it says when it cannot have IoT Hub's ports.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[allow(dead_code)]
mod support;

#[test]
fn a_hub_that_may_not_bind_443_says_so_in_one_line_and_names_the_ways_out() {
    let dir = support::TempDir::new("hub-cli-443");
    // the unprivileged user must be able to create the data directory's contents
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
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
