//! The CLI against a hub, as a new user meets it (issue 20): errors that will not go away are
//! said at once and name what to fix; what is transient is retried with progress on stderr.

#[allow(dead_code)]
mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Hub, HubOptions, TempDir, EDGETWIN};

/// How long an error that will not go away may take to be said.
const AT_ONCE: Duration = Duration::from_secs(2);

/// Runs `command`; its output and how long it took.
fn timed(command: &mut Command) -> (Output, Duration) {
    let started = Instant::now();
    let output = command.output().expect("run edgetwin");
    (output, started.elapsed())
}

/// The errors on stderr, after asserting the run failed: each `error:` line with the
/// `caused by:` lines under it (the error's causes).
fn error_lines(what: &str, output: &Output) -> Vec<String> {
    let stderr = support::stderr_of_failure(what, output);
    let mut errors: Vec<String> = Vec::new();
    for line in stderr.lines() {
        match errors.last_mut() {
            Some(error) if line.starts_with("caused by: ") => {
                error.push('\n');
                error.push_str(line);
            }
            _ if line.starts_with("error:") => errors.push(line.to_owned()),
            _ => {}
        }
    }
    errors
}

/// A CA certificate file (PEM) that signs nothing the hub serves.
fn unrelated_ca(dir: &TempDir) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let path = dir.join("unrelated-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

#[test]
fn provision_with_a_ca_that_does_not_sign_the_hub_fails_at_once_naming_the_tls_problem() {
    let dir = TempDir::new("cli-untrusted");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let (output, took) = timed(
        hub.edgetwin()
            .env("EDGETWIN_CA_FILE", unrelated_ca(&dir))
            .args(["provision", "--device", "d1"]),
    );
    let errors = error_lines("provision with an unrelated CA", &output);
    assert!(took < AT_ONCE, "took {took:?}: {errors:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    for expected in ["TLS", "not trusted", "--ca-file"] {
        assert!(
            errors[0].contains(expected),
            "{expected:?} in {}",
            errors[0]
        );
    }
}

#[test]
fn provision_with_no_hub_on_the_port_fails_at_once_saying_nothing_listens_there() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (output, took) = timed(Command::new(EDGETWIN).args([
        "provision",
        "--device",
        "d1",
        "--connection-string",
        &format!("HostName=localhost:{port};SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5"),
    ]));
    let errors = error_lines("provision with no hub", &output);
    assert!(took < AT_ONCE, "took {took:?}: {errors:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    for expected in ["refused", &format!("port {port}"), "is the hub running"] {
        assert!(
            errors[0].contains(expected),
            "{expected:?} in {}",
            errors[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_call_is_retried_with_progress_on_stderr_and_the_command_succeeds() {
    let dir = TempDir::new("cli-throttled");
    let hub = Hub::start(dir.path(), HubOptions::default());
    let (status, body) = hub
        .rest
        .call(
            "POST",
            "/edgetwin/faults/throttle",
            Some(json!({"operation": "GET /devices", "count": 1, "retryAfterSeconds": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (output, _) = timed(hub.edgetwin().args(["provision", "--device", "d1"]));
    let stdout = support::stdout_of_success("provision throttled once", &output);
    assert!(stdout.contains("d1"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains("retrying")).collect();
    assert_eq!(progress.len(), 1, "{stderr}");
    assert!(
        progress[0].contains("429") && progress[0].contains("attempt 2 of"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a log file: {stderr}"
    );
}

#[test]
fn a_connection_string_that_does_not_parse_is_said_with_what_is_wrong() {
    let (output, took) = timed(Command::new(EDGETWIN).args([
        "provision",
        "--device",
        "d1",
        "--connection-string",
        "foo",
    ]));
    let errors = error_lines("provision --connection-string foo", &output);
    assert!(took < AT_ONCE, "took {took:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    for expected in [
        "--connection-string",
        "not a key=value pair",
        "SharedAccessKeyName",
    ] {
        assert!(
            errors[0].contains(expected),
            "{expected:?} in {}",
            errors[0]
        );
    }
}

#[test]
fn a_ca_file_that_does_not_exist_is_named_with_its_option() {
    let (output, took) = timed(Command::new(EDGETWIN).args([
        "provision",
        "--device",
        "d1",
        "--ca-file",
        "/nonexistent.pem",
        "--connection-string",
        "HostName=localhost:1;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5",
    ]));
    let errors = error_lines("provision --ca-file /nonexistent.pem", &output);
    assert!(took < AT_ONCE, "took {took:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("--ca-file /nonexistent.pem") && errors[0].contains("No such file"),
        "{}",
        errors[0]
    );
}
