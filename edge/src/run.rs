//! `edgetwin edge run`: from config.toml to a running agent — the data directory made, the
//! device provisioned (from the file, or through DPS), the engine checked, `$edgeAgent`'s
//! identity taken with the device's key, and the agent started. Errors that will not go away
//! (config, a refused registration, no engine, a refused key) end the process at once with one
//! line; an unreachable hub or DPS is waited for.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use edgetwin_client::{Identity, ModuleClient, SessionConfig};
use edgetwin_wire::connection_string::ConnectionString;

use crate::agent::Agent;
use crate::config::{ConfigError, EdgeConfig, Provisioning};
use crate::docker::{self, Engine, EngineError};
use crate::dps::{self, DpsError};
use crate::identity::{self, Identities, IdentityError};
use crate::workload::WorkloadSockets;

/// The CA bundle trusted for the hub when config.toml names no `trust_bundle_cert`.
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// `$edgeAgent`'s module id.
const EDGE_AGENT: &str = "$edgeAgent";
/// Longest wait between attempts to reach the hub at start.
const MAX_START_RETRY: Duration = Duration::from_secs(60);

/// `edgetwin edge` subcommands.
#[derive(clap::Subcommand)]
pub enum EdgeArgs {
    /// Run the runtime: deploy $edgeAgent's desired modules and report them.
    Run(RunArgs),
}

/// Options of `edgetwin edge run`; they override config.toml.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The device's IoT Edge config.toml.
    #[arg(
        long,
        short = 'c',
        env = "EDGETWIN_EDGE_CONFIG",
        default_value = "/etc/aziot/config.toml"
    )]
    pub config: PathBuf,
    /// Directory for the master identity key, the DPS assignment and the modules' workload
    /// sockets.
    #[arg(
        long,
        env = "EDGETWIN_EDGE_DATA_DIR",
        default_value = "/var/lib/edgetwin-edge"
    )]
    pub data_dir: PathBuf,
    /// The container engine's Docker API socket (overrides [moby_runtime] uri).
    #[arg(long)]
    pub moby_uri: Option<String>,
    /// The network modules join (overrides [moby_runtime] network; `host` for the host's).
    #[arg(long)]
    pub network: Option<String>,
    /// Seconds between looks at the containers.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reconcile_secs: u64,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// config.toml is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine URI is not one the runtime can use.
    #[error("{0}")]
    EngineUri(String),
    /// No engine answers.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The data directory cannot be made.
    #[error("cannot make the data directory {}", .path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The trust bundle cannot be read.
    #[error("cannot read the trust bundle {}", .path.display())]
    TrustBundle {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// DPS provisioning failed.
    #[error(transparent)]
    Dps(#[from] DpsError),
    /// The trust bundle has no usable CA certificate.
    #[error("the trust bundle {}: {reason}", .path.display())]
    TrustBundleInvalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `$edgeAgent`'s identity cannot be had.
    #[error("$edgeAgent: {0}")]
    Identity(#[from] IdentityError),
    /// `$edgeAgent` cannot connect.
    #[error("$edgeAgent: {0}")]
    Client(String),
}

/// Runs a subcommand; the exit code.
pub fn main(args: EdgeArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let EdgeArgs::Run(args) = args;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", edgetwin_wire::report::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Starts the runtime and runs it until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let mut config = EdgeConfig::load(&args.config)?;
    if let Some(uri) = args.moby_uri {
        config.moby_uri = uri;
    }
    if let Some(network) = args.network {
        config.network = network;
    }
    for key in &config.unused {
        tracing::info!(key = %key, "config.toml: not used by edgetwin edge");
    }
    let data_dir = &args.data_dir;
    make_private_dir(data_dir).map_err(|source| RunError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let ca_file = config
        .trust_bundle_cert
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_FILE));
    let trust_pem = std::fs::read_to_string(&ca_file).map_err(|source| RunError::TrustBundle {
        path: ca_file.clone(),
        source,
    })?;
    let device = match &config.provisioning {
        Provisioning::Manual(device) => device.clone(),
        Provisioning::Dps(settings) => {
            let tls = edgetwin_client::identity::tls_config(&trust_pem).map_err(|e| {
                RunError::TrustBundleInvalid {
                    path: ca_file.clone(),
                    reason: e.to_string(),
                }
            })?;
            dps::provision(settings, tokio_rustls::TlsConnector::from(tls), data_dir).await?
        }
    };
    let engine = Engine::new(&docker::socket_of(&config.moby_uri).map_err(RunError::EngineUri)?);
    engine.ping().await?;
    let master = identity::master_key(&data_dir.join("master_identity.key"))?;
    let identities = Identities::new(device.clone(), &trust_pem, master)?;
    let agent_identity = wait_for_hub(&identities).await?;
    let connection = ConnectionString::module(
        &device.iothub_hostname,
        &device.device_id,
        EDGE_AGENT,
        &agent_identity.primary,
    );
    let client_identity =
        Identity::from_connection_string(connection.to_secret_string().expose(), &ca_file)
            .map_err(|e| RunError::Client(e.to_string()))?;
    let client = ModuleClient::new(client_identity, SessionConfig::default());
    let sockets = WorkloadSockets::new(data_dir.join("mnt"), identities.clone(), trust_pem);
    tracing::info!(
        device = %device.device_id,
        hub = %device.iothub_hostname,
        engine = %config.moby_uri,
        "edge runtime started"
    );
    Agent::new(config, engine, identities, sockets, client)
        .run(Duration::from_secs(args.reconcile_secs), shutdown_signal())
        .await;
    Ok(())
}

/// `$edgeAgent`'s identity, waiting while the hub cannot be reached; a refusal ends the wait.
async fn wait_for_hub(identities: &Identities) -> Result<identity::ModuleIdentity, RunError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match identities.ensure(EDGE_AGENT).await {
            Ok(identity) => return Ok(identity),
            Err(error @ IdentityError::Unreachable { .. }) => {
                tracing::warn!(%error, retry_in_secs = wait.as_secs(), "waiting for IoT Hub");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_START_RETRY);
            }
            Err(error) => return Err(error.into()),
        }
    }
}

fn make_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
