//! `edgetwin-module`: the container entrypoint of the gateway-health IoT Edge module.
//!
//! Configuration errors and an unusable identity exit 1 with one clear message; connection and
//! authentication failures are retried inside the process and never end it. SIGTERM/SIGINT
//! flush pending reported properties, disconnect and exit 0.

use std::process::ExitCode;

use edgetwin::module::{self, ModuleConfig};
use edgetwin_client::Identity;

fn main() -> ExitCode {
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
