//! `edgetwin`: the operator CLI. `edgetwin hub` runs a local IoT Hub.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, test and ship Azure IoT Edge modules in Rust.
#[derive(Parser)]
#[command(name = "edgetwin", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
enum Command {
    /// Every subcommand but `edge`, run by [`run`].
    #[command(flatten)]
    Cli(CliCommand),
    /// The IoT Edge runtime for one device (what aziot-edged and edgeAgent are): read
    /// config.toml, deploy $edgeAgent's desired modules as containers and report them.
    #[command(subcommand)]
    Edge(edgetwin_edge::EdgeArgs),
}

/// The subcommands that share this binary's logging and runtime (`edge` sets up its own).
#[derive(Subcommand)]
enum CliCommand {
    /// The whole story on a local hub in one command: provision myFirstDevice/myFirstModule, run
    /// edgetwin-module, set the desired telemetryInterval to 122, watch it acknowledge and send.
    Quickstart(edgetwin::quickstart::QuickstartArgs),
    /// Run a local IoT Hub: device MQTT over TLS, the service REST API and the Edge workload API,
    /// with state kept in the data directory.
    Hub(HubArgs),
    /// Create device and module identities (idempotent), print their connection strings, and
    /// apply a deployment manifest to one device or at scale; `--count`/`--devices-from` for fleets.
    Provision(edgetwin::provision::cli::ProvisionArgs),
    /// Print the IOTEDGE_* variables a module of an edge device uses with a local `edgetwin hub`,
    /// as shell export lines.
    EdgeEnv(edgetwin::provision::cli::EdgeEnvArgs),
    /// Read or update a device or module twin through the service API.
    Twin(edgetwin::provision::cli::TwinArgs),
    /// Run an IoT Hub query over device or module twins (every page) and print the rows.
    Query(edgetwin::provision::cli::QueryArgs),
    /// Print device and module telemetry as it arrives (the Event Hub-compatible endpoint over
    /// AMQP, as `az iot hub monitor-events`), filtered by --device/--module, as text or JSON.
    Monitor(edgetwin::messaging::monitor::MonitorArgs),
    /// Send a cloud-to-device message to a device (AMQP, as the service SDKs send it).
    C2d(edgetwin::messaging::c2d::C2dArgs),
    /// Generate deployment manifests as `iotedgedev solution genconfig` does, and validate them.
    Manifest(edgetwin::manifest::cli::ManifestArgs),
    /// Build and push the solution's module images as `iotedgedev solution build`/`push` do.
    Solution(edgetwin::solution::cli::SolutionArgs),
    /// Create an IoT Edge solution (iotedgedev's layout) with a Rust module on edgetwin-client,
    /// or add a module (`--module NAME`) to the solution in the current directory.
    New(edgetwin::scaffold::NewArgs),
}

/// Why a subcommand failed: each family's error, whose causes `main` prints one per line
/// ([`edgetwin_wire::report::error_chain`]); exit status 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// The async runtime could not be made.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// `edgetwin quickstart`.
    #[error(transparent)]
    Quickstart(#[from] edgetwin::quickstart::QuickstartError),
    /// `edgetwin hub`: the hub did not start.
    #[error(transparent)]
    Hub(#[from] edgetwin_hub::HubError),
    /// `edgetwin hub backup`.
    #[error("cannot back up the hub database in {} to {}", data_dir.display(), to.display())]
    Backup {
        /// The hub's data directory.
        data_dir: PathBuf,
        /// The backup file.
        to: PathBuf,
        /// Why.
        #[source]
        source: edgetwin_hub::HubError,
    },
    /// `edgetwin provision`, `edge-env`, `twin` and `query`.
    #[error(transparent)]
    Provision(#[from] edgetwin::provision::ProvisionError),
    /// `edgetwin monitor` and `edgetwin c2d`.
    #[error(transparent)]
    Messaging(#[from] edgetwin::messaging::MessagingError),
    /// `edgetwin manifest`.
    #[error(transparent)]
    Manifest(#[from] edgetwin::manifest::cli::ManifestCommandError),
    /// `edgetwin solution`.
    #[error(transparent)]
    Solution(#[from] edgetwin::solution::SolutionError),
    /// `edgetwin new`.
    #[error(transparent)]
    New(#[from] edgetwin::scaffold::NewError),
}

/// Options of `edgetwin hub`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct HubArgs {
    /// Something else than running the hub.
    #[command(subcommand)]
    action: Option<HubAction>,
    /// Directory for the database, certificates and workload sockets.
    #[arg(long, env = "EDGETWIN_HUB_DATA_DIR", default_value = ".edgetwin/hub")]
    data_dir: PathBuf,
    /// IoT Hub host name used in connection strings and certificates.
    #[arg(long, env = "EDGETWIN_HUB_HOST_NAME", default_value = "localhost")]
    host_name: String,
    /// Another name (DNS or IP) the TLS certificate must cover; repeatable.
    #[arg(long = "san")]
    extra_names: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// MQTT over TLS port (the Python device SDK only dials 8883).
    #[arg(long, default_value_t = 8883)]
    mqtt_port: u16,
    /// HTTPS port for the service REST API and MQTT over WebSockets, as IoT Hub's 443 (the SDKs
    /// dial 443; any other port appears in the connection strings; 0: any free port).
    #[arg(long, alias = "rest-port", default_value_t = edgetwin_hub::IOT_HUB_HTTPS_PORT)]
    https_port: u16,
    /// AMQP over TLS port: the Event Hub-compatible endpoint, as IoT Hub's 5671 (the Event Hubs
    /// SDKs dial 5671; 0: any free port).
    #[arg(long, default_value_t = edgetwin_hub::IOT_HUB_AMQP_PORT)]
    amqp_port: u16,
    /// A PEM file of CA certificates that `certificateAuthority` (x509_ca) devices may chain to,
    /// beside the hub's own CA; repeatable.
    #[arg(long = "device-ca", value_name = "FILE")]
    device_cas: Vec<PathBuf>,
    /// Another IoT hub the Device Provisioning Service may assign devices to, beside this one:
    /// its service connection string, with `;AllocationWeight=N` (default 1),
    /// `;ApplyAllocationPolicy=false` and `;CaFile=<PEM>` if needed; repeatable (docs/dps.md).
    #[arg(long = "dps-linked-hub", value_name = "CONNECTION_STRING",
          value_parser = edgetwin_wire::dps::parse_linked_hub)]
    dps_linked_hubs: Vec<edgetwin_wire::dps::LinkedHubSpec>,
    /// A consumer group of the Event Hub-compatible endpoint, besides $Default, created at start
    /// unless it exists (kept in the database, as groups created with PUT
    /// /edgetwin/consumerGroups/NAME); repeatable. IoT Hub's rules: 1 to 50 letters, digits, '-',
    /// '.', '_'; at most 20 groups.
    #[arg(long = "consumer-group", value_name = "NAME")]
    consumer_groups: Vec<String>,
    /// Days the Event Hub-compatible endpoint keeps telemetry, 1 to 7 as IoT Hub's retention
    /// time (its default: 1).
    #[arg(long, value_name = "DAYS", default_value_t = edgetwin_hub::Retention::DEFAULT_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=7))]
    retention_days: u32,
    /// Most bytes the Event Hub-compatible endpoint keeps, each of its 4 partitions a quarter,
    /// oldest pruned first: bytes, or with K, M, G, T (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = edgetwin_hub::parse_size)]
    retention_bytes: i64,
    /// Make a new hub (new keys) if hub.json exists but the database is missing or empty.
    #[arg(long)]
    reset: bool,
    /// Serve no IoT Edge workload API: a plain IoT Hub, for modules run by an IoT Edge runtime
    /// (`edgetwin edge run`, aziot-edged) that serves its own.
    #[arg(long)]
    no_workload_api: bool,
    /// Most workload sockets served at once (one per edge device in use, each a file
    /// descriptor); default: an eighth of the open-file limit, between 8 and 1024.
    #[arg(long, value_name = "N")]
    max_workload_sockets: Option<usize>,
    /// Most scheduled jobs (/jobs/v2) queued, scheduled for later or running at once; one more is
    /// refused with 429 ThrottlingMaxActiveJobCountExceeded, as IoT Hub does: 1 on Free and S1,
    /// 5 on S2, 10 on S3.
    #[arg(long, value_name = "N", default_value_t = edgetwin_hub::DEFAULT_MAX_ACTIVE_JOBS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_active_jobs: usize,
}

/// What `edgetwin hub` does instead of running.
#[derive(Subcommand)]
enum HubAction {
    /// Copy the hub's database to a new file, consistent and self-contained, safe while the hub
    /// runs (SQLite's VACUUM INTO). Restore: stop the hub, delete hub.db-wal and hub.db-shm, put
    /// the file back as hub.db.
    Backup(BackupArgs),
}

/// Options of `edgetwin hub backup`.
#[derive(clap::Args)]
struct BackupArgs {
    /// The hub's data directory.
    #[arg(long, env = "EDGETWIN_HUB_DATA_DIR", default_value = ".edgetwin/hub")]
    data_dir: PathBuf,
    /// The new file to write (it must not exist; it holds every key, and is made 0600).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
}

/// `println!` that ignores a closed or full stdout instead of panicking: the hub keeps serving
/// whoever reads its banner.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let command = match Cli::parse().command {
        // The edge runtime sets up its own logging and runtime (one thread, as on a Pi).
        Command::Edge(args) => return edgetwin_edge::run::main(args),
        Command::Cli(command) => command,
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", edgetwin_wire::report::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Sets up logging and the runtime, and runs `command`.
fn run(command: CliCommand) -> Result<(), CliError> {
    // The quickstart's own progress lines are its output (the hub inside it only logs
    // problems), as monitor's events and c2d's one line are theirs.
    let default_level = match command {
        // the quickstart's lines and monitor's events are the output
        CliCommand::Quickstart(_) | CliCommand::Monitor(_) | CliCommand::C2d(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(edgetwin_client::log_writer::Lossy::stderr())
        // Colour only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    match command {
        CliCommand::Quickstart(args) => runtime.block_on(edgetwin::quickstart::run(args))?,
        CliCommand::Hub(HubArgs {
            action: Some(HubAction::Backup(args)),
            ..
        }) => {
            edgetwin_hub::backup(&args.data_dir, &args.to).map_err(|source| CliError::Backup {
                data_dir: args.data_dir.clone(),
                to: args.to.clone(),
                source,
            })?;
            out!("backed up to {}", args.to.display());
        }
        CliCommand::Hub(args) => runtime.block_on(run_hub(args))?,
        CliCommand::Provision(args) => {
            runtime.block_on(edgetwin::provision::cli::run_provision(args))?
        }
        CliCommand::Twin(args) => runtime.block_on(edgetwin::provision::cli::run_twin(args))?,
        CliCommand::Query(args) => runtime.block_on(edgetwin::provision::cli::run_query(args))?,
        CliCommand::Monitor(args) => runtime.block_on(edgetwin::messaging::monitor::run(args))?,
        CliCommand::C2d(args) => runtime.block_on(edgetwin::messaging::c2d::run(args))?,
        CliCommand::EdgeEnv(args) => {
            runtime.block_on(edgetwin::provision::cli::run_edge_env(args))?
        }
        CliCommand::Manifest(args) => edgetwin::manifest::cli::run(args)?,
        CliCommand::Solution(args) => edgetwin::solution::cli::run(args)?,
        CliCommand::New(args) => edgetwin::scaffold::run(args)?,
    }
    Ok(())
}

async fn run_hub(args: HubArgs) -> Result<(), edgetwin_hub::HubError> {
    let config = edgetwin_hub::HubConfig {
        data_dir: args.data_dir,
        host_name: args.host_name,
        extra_names: args.extra_names,
        bind: args.bind,
        mqtt_port: args.mqtt_port,
        https_port: args.https_port,
        amqp_port: args.amqp_port,
        max_connections: None,
        write_timeout: edgetwin_hub::DEFAULT_WRITE_TIMEOUT,
        reset: args.reset,
        workload_api: !args.no_workload_api,
        max_workload_sockets: args.max_workload_sockets,
        device_cas: args.device_cas,
        dps_linked_hubs: args.dps_linked_hubs,
        consumer_groups: args.consumer_groups,
        retention: edgetwin_hub::Retention::new(args.retention_days, args.retention_bytes),
        max_active_jobs: args.max_active_jobs,
    };
    let hub = edgetwin_hub::start(config).await?;
    out!("edgetwin hub is running");
    for line in edgetwin::hub_banner::lines(&hub.info) {
        out!("{line}");
    }
    out!("Stop with Ctrl-C.");
    edgetwin::signals::stopped().await;
    tracing::info!("stopping");
    hub.stop().await;
    Ok(())
}
