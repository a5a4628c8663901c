//! `edgetwin-edge`: the IoT Edge runtime for one device (also `edgetwin edge`).

use std::process::ExitCode;

use clap::Parser;

/// The IoT Edge runtime for one device: deploys `$edgeAgent`'s desired modules as containers
/// and reports them, with module identities and the workload API from the device's own key.
#[derive(Parser)]
#[command(name = "edgetwin-edge", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: edgetwin_edge::EdgeArgs,
}

fn main() -> ExitCode {
    edgetwin_edge::run::main(Cli::parse().command)
}
