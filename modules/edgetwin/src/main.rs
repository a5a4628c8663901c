//! `edgetwin-module`: the container entrypoint of the gateway-health IoT Edge module. It depends
//! on `edgetwin-client` and `edgetwin-wire` only, never on the CLI or the hub.
//!
//! Configuration errors and an unusable identity exit 1 with one clear message; connection and
//! authentication failures are retried inside the process and never end it. SIGTERM/SIGINT
//! flush pending reported properties, disconnect and exit 0.

use std::process::ExitCode;

use edgetwin_client::Identity;
use edgetwin_module::{self as module, ModuleConfig};

/// What `--help` prints: the module is configured by its environment, as IoT Edge runs it.
const HELP: &str = "\
edgetwin-module: the gateway-health IoT Edge module (module twin, telemetry, direct methods)

Usage: edgetwin-module [--help | --version]

Configured by its environment, as IoT Edge starts it. Identity, the first set found:
  IOTEDGE_*                       IoT Edge: the workload API signs tokens and gives the CA
  EdgeHubConnectionString         the Edge simulator and IDEs: a module connection string,
    + EdgeModuleCACertificateFile   and the CA certificate (PEM) that signs the gateway's
  EDGETWIN_CONNECTION_STRING      a module connection string straight to IoT Hub,
    + EDGETWIN_CA_FILE              and the CA (PEM; default: the system bundle)
Settings (defaults, then the TOML file EDGETWIN_CONFIG names, then these; at run time the twin's
desired telemetryInterval, metrics and thresholds win):
  EDGETWIN_TELEMETRY_INTERVAL, EDGETWIN_METRICS, EDGETWIN_THRESHOLDS__*, EDGETWIN_DISK_PATH,
  EDGETWIN_METRICS_PORT, EDGETWIN_MQTT_PORT, EDGETWIN_SAS_TTL_SECS, EDGETWIN_BACKOFF_BASE_MS,
  EDGETWIN_BACKOFF_MAX_SECS, EDGETWIN_SHUTDOWN_GRACE_SECS, EDGETWIN_OUTBOX_CAPACITY
Logging: RUST_LOG (a tracing filter), else RuntimeLogLevel (edgeAgent's level names).
A missing or unusable variable is one error line naming it, and exit code 1. SIGTERM flushes
pending reported properties and exits 0.
";

fn main() -> ExitCode {
    // Arguments are only asked for help or the version, never to start.
    if let Some(arg) = std::env::args().nth(1) {
        use std::io::Write as _;
        match arg.as_str() {
            "--help" | "-h" => {
                let _ = std::io::stdout().write_all(HELP.as_bytes());
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                let _ = writeln!(
                    std::io::stdout(),
                    "edgetwin-module {}",
                    env!("CARGO_PKG_VERSION")
                );
                return ExitCode::SUCCESS;
            }
            other => {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: unexpected argument {other:?}: edgetwin-module is configured by its \
                     environment (see --help)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let env = |name: &str| std::env::var(name).ok();
    module::logging::init(env);
    let config = match ModuleConfig::load(env) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let identity = match Identity::from_lookup(env) {
        Ok(identity) => identity,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(module::run(config, identity)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "stopped");
            ExitCode::FAILURE
        }
    }
}
