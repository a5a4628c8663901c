//! The container entrypoint: the identity from the IoT Edge environment, then [`{{crate}}::run`]
//! until SIGTERM (docker stop) or Ctrl-C.

use std::process::ExitCode;

use edgetwin_client::ModuleClient;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let client = match ModuleClient::from_environment() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("{{module}}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            eprintln!("{{module}}: cannot handle SIGTERM: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    {{crate}}::run(client, stop).await;
    ExitCode::SUCCESS
}
