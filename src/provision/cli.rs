//! The arguments of `edgetwin provision` and `edgetwin twin`, and their runners. The binary only
//! wires these in; output goes to stdout, progress and notes to stderr.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::client::{ClientOptions, ServiceClient};
use super::deploy::{self, AtScale};
use super::dps::{self, DpsFleet};
use super::edge_config;
use super::error::ProvisionError;
use super::fleet::{self, FleetOptions};
use super::identities::{self, Identity};
use super::manifest::{self, ManifestRequest};
use super::pacing::S1_REGISTRY_OPS_PER_MINUTE;
use super::query;
use super::settings;
use super::twin;

/// How the job reaches the hub.
#[derive(clap::Args, Debug, Clone)]
pub struct HubArgs {
    /// Service (shared access policy) connection string. Default: IOTHUB_CONNECTION_STRING from
    /// the environment, then from ./.env (as iotedgedev reads it).
    #[arg(long, value_name = "STRING")]
    pub connection_string: Option<String>,
    /// PEM file with the CA that signs the hub's certificate, trusted besides the system roots.
    /// Default: EDGETWIN_CA_FILE, then REQUESTS_CA_BUNDLE (as the Python SDK users set it).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// Options of `edge-env`.
#[derive(clap::Args, Debug, Clone)]
pub struct EdgeEnvArgs {
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// Edge device id.
    #[arg(long, value_name = "ID", value_parser = identity_id)]
    pub device: String,
    /// Module id.
    #[arg(long, value_name = "ID", value_parser = identity_id)]
    pub module: String,
}

/// Parses a `--device`/`--module` value: an IoT Hub id that a connection string can carry.
/// An id that goes into a connection string: an IoT Hub id without `;` or `=`.
fn identity_id(id: &str) -> Result<String, String> {
    edgetwin_wire::ids::check_connection_string_id(id)
        .map(|()| id.to_owned())
        .map_err(|why| format!("'{id}' {why}"))
}

/// An id that only goes into a REST path: any IoT Hub id (`;` and `=` included).
pub(crate) fn registry_id(id: &str) -> Result<String, String> {
    edgetwin_wire::ids::check_identity_id(id)
        .map(|()| id.to_owned())
        .map_err(|why| format!("'{id}' {why}"))
}

/// Text for people or JSON for scripts.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Options of `edgetwin provision`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProvisionArgs {
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// The device to create (kept if it exists).
    #[arg(long, value_name = "ID", value_parser = identity_id, conflicts_with_all = ["count", "devices_from"])]
    pub device: Option<String>,
    /// The module identity to create on the device(s) (kept if it exists).
    #[arg(long, value_name = "ID", value_parser = identity_id)]
    pub module: Option<String>,
    /// Create IoT Edge devices (`--edge false` for plain devices).
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub edge: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Write connection strings to this file (mode 0600) instead of printing them: `.env`
    /// lines for one device, JSON lines for a fleet.
    #[arg(long, value_name = "PATH")]
    pub secrets_file: Option<PathBuf>,
    /// Write the device's IoT Edge config.toml here (mode 0600): its connection string, the hub
    /// as gateway and the CA as trust bundle, for `edgetwin edge run` (one edge device only).
    #[arg(long, value_name = "PATH", requires = "device")]
    pub edge_config: Option<PathBuf>,
    /// Tags to merge into the device twin, a JSON object: of one device, or of every device of a
    /// fleet (a devices file's own tags win over these).
    #[arg(long, value_name = "JSON")]
    pub tags: Option<String>,
    /// What to deploy, and where (boxed: the flags are many and rarely all used).
    #[command(flatten)]
    pub deploy: Box<DeployArgs>,
    /// Create a fleet of N devices named PREFIX1..PREFIXN.
    #[arg(long, value_name = "N", conflicts_with = "devices_from")]
    pub count: Option<usize>,
    /// Device id prefix for --count.
    #[arg(long, default_value = "edge-", value_name = "PREFIX", value_parser = identity_id)]
    pub prefix: String,
    /// Create the devices listed in FILE: JSON lines {"deviceId":..,"tags":{..}} or CSV with a
    /// deviceId column and tag columns.
    #[arg(long, value_name = "FILE")]
    pub devices_from: Option<PathBuf>,
    /// Provisioning through the Device Provisioning Service instead (boxed, as `deploy`).
    #[command(flatten)]
    pub dps: Box<DpsArgs>,
    /// Identity-registry requests per minute for fleets (default: IoT Hub S1, one unit); 0 = no
    /// pacing. Tag updates of existing devices are paced to S1's twin-update quota unless 0.
    #[arg(long, default_value_t = S1_REGISTRY_OPS_PER_MINUTE, value_name = "PER_MINUTE")]
    pub rate: f64,
}

/// The `--dps` flags of `edgetwin provision`: a fleet that registers itself through DPS.
#[derive(clap::Args, Debug, Clone)]
pub struct DpsArgs {
    /// Provision the fleet (--count, --prefix) through the Device Provisioning Service instead:
    /// an enrollment group (kept if it exists), then per device its derived key in a ready aziot
    /// config.toml (`source = "dps"`) at OUT/<registration id>/config.toml, mode 0600. Nothing
    /// is created in the hub: the devices register themselves (docs/dps.md).
    #[arg(
        long,
        requires_all = ["count", "out", "id_scope"],
        conflicts_with_all = ["device", "devices_from", "secrets_file", "edge_config", "module"]
    )]
    pub dps: bool,
    /// DPS connection string (`edgetwin hub` prints one; on Azure, a shared access policy of the
    /// provisioning service).
    #[arg(
        long,
        value_name = "STRING",
        env = "DPS_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub dps_connection_string: Option<String>,
    /// The id scope the devices register under (`edgetwin hub` prints it).
    #[arg(long, value_name = "SCOPE")]
    pub id_scope: Option<String>,
    /// The DPS endpoint the devices dial: `https://<hub host>` for the local hub.
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://global.azure-devices-provisioning.net"
    )]
    pub global_endpoint: String,
    /// The enrollment group the --dps fleet registers through.
    #[arg(long, value_name = "ID", default_value = "edgetwin-fleet")]
    pub enrollment_group: String,
    /// Directory of the --dps fleet's config files.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// The deployment flags of `edgetwin provision`: a manifest file or one generated from the
/// solution's template, applied to `--device` or at scale.
#[derive(clap::Args, Debug, Clone)]
pub struct DeployArgs {
    /// Deployment manifest (config/deployment.<platform>.json) to apply to the device, or to
    /// deploy at scale with --target-condition and --deployment-id.
    #[arg(long, value_name = "FILE")]
    pub deployment: Option<PathBuf>,
    /// Generate the deployment manifest from this template (relative to --dir) as `edgetwin
    /// manifest gen` does, refuse it if validation fails, and apply it like --deployment.
    #[arg(long, value_name = "FILE", conflicts_with = "deployment")]
    pub manifest_template: Option<PathBuf>,
    /// Platform of the generated manifest: amd64, arm64v8, arm32v7 (any platform key of
    /// module.json) [default: $DEFAULT_PLATFORM or amd64]. Implies the manifest step.
    #[arg(long, value_name = "PLATFORM", conflicts_with = "deployment")]
    pub platform: Option<String>,
    /// The solution directory (deployment.template.json, modules/, .env) [default: the current
    /// directory]. Given without --deployment, a template found there is generated and applied.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Target condition of an at-scale deployment, e.g. "tags.environment='prod'".
    #[arg(long, value_name = "CONDITION", requires = "deployment_id")]
    pub target_condition: Option<String>,
    /// Priority of the at-scale deployment (higher wins).
    #[arg(long, default_value_t = 0, requires = "target_condition")]
    pub priority: i32,
    /// Id of the at-scale deployment (lower case).
    #[arg(long, value_name = "ID", requires = "target_condition")]
    pub deployment_id: Option<String>,
}

/// Options of `edgetwin twin`.
#[derive(clap::Args, Debug, Clone)]
pub struct TwinArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TwinCommand,
}

/// `twin get` / `twin update`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum TwinCommand {
    /// Print a device or module twin.
    Get(TwinTarget),
    /// Merge desired properties and/or tags into a twin; print each changed key and the new
    /// versions (`--output json`: the whole twin before and after).
    Update(TwinUpdateArgs),
}

/// Which twin.
#[derive(clap::Args, Debug, Clone)]
pub struct TwinTarget {
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// Device id.
    #[arg(long, value_name = "ID", value_parser = registry_id)]
    pub device: String,
    /// Module id (module twin); without it, the device twin.
    #[arg(long, value_name = "ID", value_parser = registry_id)]
    pub module: Option<String>,
}

/// Options of `twin update`.
#[derive(clap::Args, Debug, Clone)]
pub struct TwinUpdateArgs {
    /// Which twin.
    #[command(flatten)]
    pub target: TwinTarget,
    /// Desired properties to merge, a JSON object (`null` removes a key).
    #[arg(long, value_name = "JSON")]
    pub desired: Option<String>,
    /// Tags to merge, a JSON object.
    #[arg(long, value_name = "JSON")]
    pub tags: Option<String>,
    /// Output format: text prints what changed, json the whole twin before and after.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Options of `edgetwin query`.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    /// The query, e.g. "SELECT * FROM devices WHERE tags.environment = 'prod'".
    pub query: String,
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// Rows asked for per request (`x-ms-max-item-count`); every page is fetched either way.
    #[arg(long, value_name = "N")]
    pub page_size: Option<usize>,
    /// Output format: text prints one row per line, json one array of all rows.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Builds the client from the flags, the environment and `./.env`.
pub fn connect(args: &HubArgs) -> Result<ServiceClient, ProvisionError> {
    let dotenv = std::fs::read_to_string(".env").ok();
    let (connection_string, _) = settings::resolve_connection_string(
        args.connection_string.as_deref(),
        &env_var,
        dotenv.as_deref(),
    )?;
    connect_to(&connection_string, args)
}

/// A client for `connection_string` trusting the CA of `args` (`--ca-file`, then the
/// environment).
fn connect_to(
    connection_string: &edgetwin_wire::connection_string::ConnectionString,
    args: &HubArgs,
) -> Result<ServiceClient, ProvisionError> {
    let ca_file = settings::resolve_ca_file_and_origin(args.ca_file.clone(), &env_var);
    if let Some((path, origin)) = &ca_file {
        std::fs::File::open(path).map_err(|source| ProvisionError::CaFile {
            origin,
            path: path.clone(),
            source,
        })?;
    }
    let options = ClientOptions {
        ca_file: ca_file.map(|(path, _)| path),
        ..ClientOptions::default()
    };
    Ok(ServiceClient::new(connection_string, options)?)
}

/// `provision --dps`: the enrollment group, then one config.toml per device.
async fn run_dps(args: &ProvisionArgs) -> Result<(), ProvisionError> {
    let text = args.dps.dps_connection_string.as_deref().ok_or_else(|| {
        ProvisionError::Input(
            "--dps needs a DPS connection string: --dps-connection-string or \
             DPS_CONNECTION_STRING (`edgetwin hub` prints one)"
                .into(),
        )
    })?;
    let connection_string = text
        .parse::<edgetwin_wire::connection_string::ConnectionString>()
        .map_err(|e| ProvisionError::Input(format!("--dps-connection-string: {e}")))?;
    let client = connect_to(&connection_string, &args.hub)?;
    let fleet = DpsFleet {
        group: args.dps.enrollment_group.clone(),
        prefix: args.prefix.clone(),
        count: args.count.unwrap_or_default(),
        edge: args.edge,
        out: args.dps.out.clone().unwrap_or_default(),
        id_scope: args.dps.id_scope.clone().unwrap_or_default(),
        global_endpoint: args.dps.global_endpoint.clone(),
        ca_file: settings::resolve_ca_file(args.hub.ca_file.clone(), &env_var),
    };
    let started = std::time::Instant::now();
    let written = dps::provision(&client, &fleet).await?;
    eprintln!(
        "{} config.toml files for enrollment group '{}' written under {} in {:.2} s",
        written.len(),
        fleet.group,
        fleet.out.display(),
        started.elapsed().as_secs_f64()
    );
    if args.output == OutputFormat::Json {
        print_json(&json!({
            "enrollmentGroupId": fleet.group,
            "idScope": fleet.id_scope,
            "files": written,
        }));
    }
    Ok(())
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn identity_json(identity: &Identity, with_secret: bool) -> Value {
    let mut m = Map::new();
    m.insert("deviceId".into(), identity.device_id.clone().into());
    if let Some(module) = &identity.module_id {
        m.insert("moduleId".into(), module.clone().into());
    }
    m.insert("status".into(), identity.presence.as_str().into());
    if with_secret {
        m.insert(
            "connectionString".into(),
            identity.connection_string.expose().into(),
        );
    }
    if let Some(note) = &identity.note {
        m.insert("note".into(), note.clone().into());
    }
    Value::Object(m)
}

/// Runs `edgetwin provision`.
pub async fn run_provision(args: ProvisionArgs) -> Result<(), ProvisionError> {
    if args.dps.dps {
        return run_dps(&args).await;
    }
    // The manifest is generated and validated before anything is sent to the hub.
    let request = ManifestRequest {
        dir: args.deploy.dir.clone(),
        template: args.deploy.manifest_template.clone(),
        platform: args.deploy.platform.clone(),
        deployment_given: args.deploy.deployment.is_some(),
    };
    let cwd = std::env::current_dir().map_err(|source| ProvisionError::Io {
        path: ".".into(),
        source,
    })?;
    let generate = manifest::plan(&request, &cwd, &manifest::default_template, &|p| {
        p.is_file()
    });
    let deploying = generate.is_some() || args.deploy.deployment.is_some();
    let tags = args
        .tags
        .as_deref()
        .map(|t| twin::parse_object(t, "--tags"))
        .transpose()?;
    let fleet_devices = match (&args.devices_from, args.count) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|source| ProvisionError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Some(fleet::parse_devices_file(
                &text,
                &path.display().to_string(),
            )?)
        }
        (None, Some(count)) => Some(fleet::from_count(&args.prefix, count)),
        (None, None) => None,
    };
    let fleet_devices = match (fleet_devices, &tags) {
        (Some(devices), Some(tags)) => Some(fleet::with_common_tags(devices, tags)),
        (devices, _) => devices,
    };
    if args.device.is_none() && fleet_devices.is_none() && args.deploy.target_condition.is_none() {
        return Err(ProvisionError::Input(
            "nothing to do: give --device, --count or --devices-from (or --deployment with \
             --target-condition and --deployment-id)"
                .into(),
        ));
    }
    if tags.is_some() && args.device.is_none() && fleet_devices.is_none() {
        return Err(ProvisionError::Input(
            "--tags needs the devices to tag: --device, --count or --devices-from".into(),
        ));
    }
    if fleet_devices.is_some() && deploying && args.deploy.target_condition.is_none() {
        return Err(ProvisionError::Input(
            "a deployment for a fleet is an at-scale deployment: add --target-condition and \
             --deployment-id"
                .into(),
        ));
    }
    if args.deploy.target_condition.is_some() && !deploying {
        return Err(ProvisionError::Input(
            "--target-condition deploys a manifest: give --deployment, or --manifest-template \
             (or --dir with the solution's deployment.template.json)"
                .into(),
        ));
    }
    if args.module.is_some() && args.device.is_none() && fleet_devices.is_none() {
        return Err(ProvisionError::Input(
            "--module needs --device, --count or --devices-from".into(),
        ));
    }
    let generated = generate
        .map(|options| manifest::generate(&options))
        .transpose()?;
    let content = match &generated {
        Some(generated) => Some(generated.content.clone()),
        None => args
            .deploy
            .deployment
            .as_deref()
            .map(deploy::load_deployment)
            .transpose()?,
    };
    let client = connect(&args.hub)?;
    let json_out = args.output == OutputFormat::Json;
    let mut report = Map::new();
    report.insert(
        "hostName".into(),
        settings::device_host_name(client.host()).into(),
    );
    if let Some(generated) = &generated {
        if json_out {
            report.insert(
                "manifest".into(),
                json!({
                    "template": generated.template.display().to_string(),
                    "platform": generated.platform,
                    "path": generated.path.display().to_string(),
                    "valid": true,
                }),
            );
        } else {
            println!(
                "manifest {} ({}, from {}): valid",
                generated.path.display(),
                generated.platform,
                generated.template.display()
            );
        }
    }

    if let Some(device_id) = &args.device {
        let mut identities = vec![identities::ensure_device(&client, device_id, args.edge).await?];
        if let Some(module_id) = &args.module {
            identities.push(identities::ensure_module(&client, device_id, module_id).await?);
        }
        if let Some(tags) = tags {
            client
                .patch_twin(device_id, None, &twin::twin_patch(None, Some(tags)))
                .await?;
        }
        let print_secrets = args.secrets_file.is_none();
        if let Some(path) = &args.secrets_file {
            let mut text = String::new();
            for identity in &identities {
                text.push_str(&format!(
                    "{}=\"{}\"\n",
                    identity.env_name(),
                    identity.connection_string.expose()
                ));
            }
            fleet::write_private(path, &text)?;
        }
        if let Some(path) = &args.edge_config {
            let device = &identities[0];
            let host = device
                .connection_string
                .expose()
                .split(';')
                .find_map(|p| p.strip_prefix("HostName="));
            let ca_file = settings::resolve_ca_file(args.hub.ca_file.clone(), &env_var);
            let text = edge_config::render(
                host.unwrap_or_default(),
                device.connection_string.expose(),
                ca_file.as_deref(),
            );
            fleet::write_private(path, &text)?;
            eprintln!(
                "IoT Edge config.toml for {} written to {}",
                device.device_id,
                path.display()
            );
        }
        for identity in &identities {
            if let Some(note) = &identity.note {
                eprintln!("note: {note}");
            }
        }
        if json_out {
            report.insert(
                "device".into(),
                identity_json(&identities[0], print_secrets),
            );
            if let Some(module) = identities.get(1) {
                report.insert("module".into(), identity_json(module, print_secrets));
            }
        } else {
            for identity in &identities {
                match &identity.module_id {
                    None => println!(
                        "device {}: {}",
                        identity.device_id,
                        identity.presence.as_str()
                    ),
                    Some(m) => println!(
                        "module {}/{m}: {}",
                        identity.device_id,
                        identity.presence.as_str()
                    ),
                }
            }
            match &args.secrets_file {
                Some(path) => println!("connection strings written to {}", path.display()),
                None => {
                    for identity in &identities {
                        println!(
                            "{}={}",
                            identity.env_name(),
                            identity.connection_string.expose()
                        );
                    }
                }
            }
        }
    }

    if let Some(devices) = &fleet_devices {
        let options = FleetOptions {
            module_id: args.module.clone(),
            edge: args.edge,
            rate_per_minute: args.rate,
            secrets_file: args.secrets_file.clone(),
            progress: !json_out,
        };
        let summary = fleet::run(&client, devices, &options).await?;
        let failures: Vec<Value> = summary
            .failures
            .iter()
            .map(|f| json!({"deviceId": f.device_id, "moduleId": f.module_id, "errorCode": f.code, "message": f.message}))
            .collect();
        if json_out {
            report.insert(
                "fleet".into(),
                json!({
                    "devices": summary.devices,
                    "devicesCreated": summary.devices_created,
                    "devicesExisting": summary.devices_existing,
                    "modulesCreated": summary.modules_created,
                    "modulesExisting": summary.modules_existing,
                    "tagsUpdated": summary.tags_updated,
                    "failed": failures,
                    "bulkRequests": summary.bulk_requests,
                    "httpAttempts": summary.http_attempts,
                    "seconds": summary.elapsed.as_secs_f64(),
                }),
            );
        } else {
            for f in &summary.failures {
                let what = match &f.module_id {
                    Some(m) => format!("module {}/{m}", f.device_id),
                    None => format!("device {}", f.device_id),
                };
                println!("failed {what}: {} {}", f.code, f.message);
            }
            let retagged = if summary.tags_updated > 0 {
                format!(
                    "; tags updated on {} existing devices",
                    summary.tags_updated
                )
            } else {
                String::new()
            };
            println!(
                "fleet: {} devices: {} created, {} existing; modules: {} created, {} existing{retagged}; \
                 {} failed; {} bulk requests in {:.1}s",
                summary.devices,
                summary.devices_created,
                summary.devices_existing,
                summary.modules_created,
                summary.modules_existing,
                summary.failures.len(),
                summary.bulk_requests,
                summary.elapsed.as_secs_f64()
            );
            if let Some(path) = &args.secrets_file {
                println!("connection strings written to {}", path.display());
            }
        }
        if !summary.failures.is_empty() {
            if json_out {
                print_json(&Value::Object(report));
            }
            return Err(ProvisionError::Input(format!(
                "{} identities could not be created (re-run to retry; existing ones are kept)",
                summary.failures.len()
            )));
        }
    }

    if let Some(content) = &content {
        match (&args.deploy.target_condition, &args.deploy.deployment_id) {
            (Some(condition), Some(id)) => {
                let spec = AtScale {
                    id: id.clone(),
                    target_condition: condition.clone(),
                    priority: args.deploy.priority,
                };
                let outcome = deploy::deploy_at_scale(&client, &spec, content).await?;
                if json_out {
                    report.insert(
                        "deployment".into(),
                        json!({"id": id, "targetCondition": condition, "priority": args.deploy.priority, "status": outcome.as_str()}),
                    );
                } else {
                    println!(
                        "deployment {id} (target {condition}, priority {}): {}",
                        args.deploy.priority,
                        outcome.as_str()
                    );
                }
            }
            _ => {
                let Some(device_id) = &args.device else {
                    return Err(ProvisionError::Input(
                        "--deployment needs --device, or --target-condition and --deployment-id"
                            .into(),
                    ));
                };
                deploy::apply_to_device(&client, device_id, content).await?;
                if json_out {
                    report.insert(
                        "deployment".into(),
                        json!({"deviceId": device_id, "status": "applied"}),
                    );
                } else {
                    println!("deployment applied to device {device_id}");
                }
            }
        }
    }
    if json_out {
        print_json(&Value::Object(report));
    }
    Ok(())
}

/// Runs `edgetwin twin`.
pub async fn run_twin(args: TwinArgs) -> Result<(), ProvisionError> {
    match args.command {
        TwinCommand::Get(target) => {
            let client = connect(&target.hub)?;
            let twin = client
                .get_twin(&target.device, target.module.as_deref())
                .await?;
            print_json(&twin);
        }
        TwinCommand::Update(update) => {
            let desired = update
                .desired
                .as_deref()
                .map(|d| twin::parse_object(d, "--desired"))
                .transpose()?;
            let tags = update
                .tags
                .as_deref()
                .map(|t| twin::parse_object(t, "--tags"))
                .transpose()?;
            let target = &update.target;
            let client = connect(&target.hub)?;
            let change = twin::update(
                &client,
                &target.device,
                target.module.as_deref(),
                desired,
                tags,
            )
            .await?;
            match update.output {
                OutputFormat::Json => {
                    print_json(&json!({"before": change.before, "after": change.after}))
                }
                OutputFormat::Text => {
                    let twin = match &target.module {
                        Some(module) => format!("{}/{module}", target.device),
                        None => target.device.clone(),
                    };
                    for line in change.summary(&twin) {
                        println!("{line}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// `edgetwin query`: runs the query, follows every continuation, prints the rows.
pub async fn run_query(args: QueryArgs) -> Result<(), ProvisionError> {
    let client = connect(&args.hub)?;
    let result = query::run(&client, &args.query, args.page_size).await?;
    match args.output {
        OutputFormat::Json => print_json(&Value::Array(result.items)),
        OutputFormat::Text => {
            for item in &result.items {
                println!("{item}");
            }
            eprintln!(
                "{} row(s) of type {} in {} page(s)",
                result.items.len(),
                result.item_type.as_deref().unwrap_or("unknown"),
                result.pages
            );
        }
    }
    Ok(())
}

/// `edgetwin edge-env`: prints the `IOTEDGE_*` variables a module of an edge device gets from a
/// local `edgetwin hub`, as shell `export` lines (`eval "$(edgetwin edge-env ...)"`).
pub async fn run_edge_env(args: EdgeEnvArgs) -> Result<(), ProvisionError> {
    let client = connect(&args.hub)?;
    let environment = client.edge_environment(&args.device, &args.module).await?;
    for (name, value) in environment {
        println!("export {name}={}", shell_quote(&value));
    }
    Ok(())
}

/// `value` in single quotes, safe for any POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(
            shell_quote("unix:///tmp/a b.sock"),
            "'unix:///tmp/a b.sock'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
