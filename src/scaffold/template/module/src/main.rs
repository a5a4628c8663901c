//! The container entrypoint: logging (stderr, `RUST_LOG` or `info`), the identity from the IoT
//! Edge environment, then [`{{crate}}::run`] until SIGTERM (docker stop) or Ctrl-C.

use std::io::IsTerminal;
use std::process::ExitCode;

use edgetwin_client::ModuleClient;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// The log filter when `RUST_LOG` is unset: this module's steps and the client's connection
/// changes and retries, without the MQTT library's chatter.
const DEFAULT_LOG: &str = "info,rumqttc=warn";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    info!(version = env!("CARGO_PKG_VERSION"), "{{module}} starting");
    let client = match ModuleClient::from_environment() {
        Ok(client) => client,
        Err(error) => {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let identity = client.identity();
    info!(
        device = identity.device_id(),
        module = identity.module_id().unwrap_or_default(),
        source = identity.source().name(),
        hub = identity.connect_host(),
        "identity"
    );
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            error!("cannot handle SIGTERM: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => info!("Ctrl-C: stopping"),
        }
    };
    {{crate}}::run(client, stop).await;
    info!("stopped");
    ExitCode::SUCCESS
}
