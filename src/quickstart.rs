//! `edgetwin quickstart`: Microsoft's "module identity and module twin" quickstart, end to end on a
//! local hub, in one command. It starts `edgetwin hub` in-process, creates `myFirstDevice` and
//! `myFirstModule` (CreateIdentities), runs `edgetwin-module` as a child process with the device's
//! `IOTEDGE_*` environment (identity from the hub's workload API), sets the module twin's desired
//! `telemetryInterval` to 122 (UpdateModuleTwin), waits for the module's acknowledgement, and shows
//! the telemetry it sends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgetwin_service::MessageFilter;
use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::rest::{CloudToDeviceMethod, CloudToDeviceMethodResult};
use serde_json::{json, Value};

use crate::provision::identities::{ensure_device, ensure_module, Identity};
use crate::provision::{ClientOptions, ProvisionError, ServiceClient};

/// `println!` that ignores a closed stdout instead of panicking: a reader that went away (`| head`,
/// a test that read the banner) must not turn a clean stop into a crash.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The seed's identities.
pub const DEVICE_ID: &str = "myFirstDevice";
/// The seed's module.
pub const MODULE_ID: &str = "myFirstModule";
/// The seed's desired property value.
pub const TELEMETRY_INTERVAL: u64 = 122;
/// How long each step may take before the quickstart gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `edgetwin quickstart`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuickstartArgs {
    /// Hub data directory (default: a new temporary directory, removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the hub and the module running after the walkthrough, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// The `edgetwin-module` binary (default: next to this executable).
    #[arg(long)]
    pub module_binary: Option<PathBuf>,
}

/// Why the quickstart stopped.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    /// The hub did not start.
    #[error("the local hub did not start")]
    Hub(#[from] edgetwin_hub::HubError),
    /// A service call failed.
    #[error(transparent)]
    Service(#[from] crate::provision::ProvisionError),
    /// The module binary is missing or did not start.
    #[error("edgetwin-module: {0}")]
    Module(String),
    /// A step did not finish in time.
    #[error("timed out after {seconds} s waiting for {what}", seconds = STEP_TIMEOUT.as_secs(), what = .0)]
    Timeout(&'static str),
    /// A file could not be written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<edgetwin_service::Error> for QuickstartError {
    fn from(error: edgetwin_service::Error) -> Self {
        QuickstartError::Service(ProvisionError::from(error))
    }
}

/// A child process stopped with SIGTERM when dropped.
struct ModuleProcess(Child);

impl ModuleProcess {
    /// Sends SIGTERM and waits (as docker stop would); returns whether it exited 0.
    fn stop(&mut self) -> bool {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        false
    }
}

impl Drop for ModuleProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

fn step(number: u32, text: &str) {
    say!("\n[{number}/6] {text}");
}

fn indent(value: &Value) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_default()
        .lines()
        .map(|line| format!("      {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `probe` every 100 ms until it yields a value or the step times out.
async fn wait_for<T, F, Fut>(what: &'static str, mut probe: F) -> Result<T, QuickstartError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, QuickstartError>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(QuickstartError::Timeout(what));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn module_binary(args: &QuickstartArgs) -> Result<PathBuf, QuickstartError> {
    let path = match &args.module_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("edgetwin-module"),
    };
    if !path.is_file() {
        return Err(QuickstartError::Module(format!(
            "{} not found; install it beside edgetwin (cargo install --path modules/edgetwin) \
             or build both binaries (cargo build --release)",
            path.display()
        )));
    }
    Ok(path)
}

fn print_identity(identity: &Identity, what: &str) {
    say!("      {what}: {}", identity.presence.as_str());
    say!(
        "        connection string: {}",
        identity.connection_string.expose()
    );
}

/// Runs the quickstart.
pub async fn run(args: QuickstartArgs) -> Result<(), QuickstartError> {
    let started = Instant::now();
    let module_binary = module_binary(&args)?;
    let (data_dir, temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("edgetwin-quickstart-{}", std::process::id())),
            true,
        ),
    };
    say!("edgetwin quickstart: module identity and module twin, on a local IoT Hub");

    let mut config = edgetwin_hub::HubConfig::new(data_dir.clone());
    config.mqtt_port = 0;
    config.https_port = 0;
    config.amqp_port = 0;
    let hub = edgetwin_hub::start(config).await?;
    let info = hub.info.clone();
    step(1, "Local IoT Hub started");
    say!("      data directory: {}", data_dir.display());
    say!(
        "      MQTT (TLS) on port {}, service API at {}",
        info.mqtt_port,
        info.rest_url
    );

    let result = walkthrough(&info, &module_binary, &data_dir).await;
    if result.is_ok() && args.keep_running {
        say!(
            "\nThe hub and the module keep running (the module's log: {}):",
            data_dir.join("module.log").display()
        );
        for line in crate::hub_banner::lines(&info) {
            say!("{line}");
        }
        say!("Stop with Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
    }
    // The module goes first, as docker stop would stop it, while its hub is still there.
    let clean = result.map(|mut module| module.stop());
    hub.stop().await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    if !clean? {
        return Err(QuickstartError::Module("did not exit 0 on SIGTERM".into()));
    }
    say!(
        "\nDone in {:.1} s: the module exited 0 on SIGTERM and the hub stopped.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn walkthrough(
    info: &edgetwin_hub::HubInfo,
    module_binary: &Path,
    data_dir: &Path,
) -> Result<ModuleProcess, QuickstartError> {
    let service: ConnectionString = info
        .service_connection_string
        .expose()
        .parse()
        .map_err(|e| QuickstartError::Module(format!("hub connection string: {e}")))?;
    let options = ClientOptions {
        ca_file: Some(info.ca_certificate.clone()),
        ..ClientOptions::default()
    };
    let client = ServiceClient::new(&service, options)?;

    step(2, "Identities (the seed's CreateIdentities)");
    let device = ensure_device(&client, DEVICE_ID, true).await?;
    print_identity(&device, &format!("IoT Edge device {DEVICE_ID}"));
    let module = ensure_module(&client, DEVICE_ID, MODULE_ID).await?;
    print_identity(&module, &format!("module {DEVICE_ID}/{MODULE_ID}"));

    step(
        3,
        "edgetwin-module started as myFirstModule, identity from the hub's workload API",
    );
    let environment = client.edge_environment(DEVICE_ID, MODULE_ID).await?;
    for (name, value) in &environment {
        say!("      {name}={value}");
    }
    let log_path = data_dir.join("module.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(module_binary)
        .envs(&environment)
        .env("EDGETWIN_MQTT_PORT", info.mqtt_port.to_string())
        .env("EDGETWIN_METRICS_PORT", "0")
        .env("RuntimeLogLevel", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            QuickstartError::Module(format!("cannot start {}: {e}", module_binary.display()))
        })?;
    let process = std::cell::RefCell::new(ModuleProcess(child));
    let reported = wait_for("the module to connect and report", || async {
        let exited = process.borrow_mut().0.try_wait();
        if let Ok(Some(status)) = exited {
            return Err(QuickstartError::Module(format!(
                "exited early ({status}); see {}",
                log_path.display()
            )));
        }
        let twin = client.get_twin(DEVICE_ID, Some(MODULE_ID)).await?;
        let reported = &twin["properties"]["reported"];
        Ok(reported.get("startTime").map(|_| reported.clone()))
    })
    .await?;
    let text = |key: &str| reported[key].as_str().unwrap_or("?").to_owned();
    say!(
        "      connected: version {}, identity from {}, started {}; log in {}",
        text("version"),
        text("identitySource"),
        text("startTime"),
        log_path.display()
    );

    step(
        4,
        "Module twin before the update (the seed's UpdateModuleTwin)",
    );
    let before = client.get_twin(DEVICE_ID, Some(MODULE_ID)).await?;
    say!("{}", indent(&before["properties"]));

    step(
        5,
        &format!("Desired telemetryInterval set to {TELEMETRY_INTERVAL}; the twin after"),
    );
    let after = client
        .patch_twin(
            DEVICE_ID,
            Some(MODULE_ID),
            &json!({ "properties": { "desired": { "telemetryInterval": TELEMETRY_INTERVAL } } }),
        )
        .await?;
    let desired_version = after["properties"]["desired"]["$version"]
        .as_i64()
        .unwrap_or_default();
    say!("{}", indent(&after["properties"]["desired"]));
    let ack = wait_for("the module to acknowledge telemetryInterval", || async {
        let twin = client.get_twin(DEVICE_ID, Some(MODULE_ID)).await?;
        let ack = twin["properties"]["reported"]["telemetryInterval"].clone();
        Ok((ack["av"].as_i64() == Some(desired_version)).then_some(ack))
    })
    .await?;
    say!("      the module acknowledged in its reported properties:");
    say!("{}", indent(&json!({ "telemetryInterval": ack })));
    if ack["ac"] != 200 {
        return Err(QuickstartError::Module(format!(
            "the module refused the value: {ack}"
        )));
    }

    step(
        6,
        "Direct methods: ping, then sampleNow, which sends telemetry on output 'telemetry'",
    );
    let pong = invoke(&client, "ping").await?;
    say!(
        "      ping answered status {}: {}",
        pong.status,
        pong.payload
    );
    if pong.status != 200 || pong.payload["pong"] != true {
        let pong = json!({"status": pong.status, "payload": pong.payload});
        return Err(QuickstartError::Module(format!(
            "ping was not answered: {pong}"
        )));
    }
    let answer = invoke(&client, "sampleNow").await?;
    say!("      sampleNow answered status {}", answer.status);
    let messages = wait_for("the telemetry message", || async {
        let telemetry = client
            .messages(&MessageFilter {
                device_id: Some(DEVICE_ID),
                module_id: Some(MODULE_ID),
                output: Some("telemetry"),
                after: None,
            })
            .await?;
        Ok((!telemetry.is_empty()).then_some(telemetry))
    })
    .await?;
    for message in messages.iter().take(2) {
        let body: Value =
            serde_json::from_str(message["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        say!(
            "      #{} at {}:",
            message["sequence"],
            message["enqueuedTimeUtc"]
        );
        say!("{}", indent(&body));
    }
    Ok(process.into_inner())
}

/// Invokes the direct method `name` on the quickstart's module, with an empty payload.
async fn invoke(
    client: &ServiceClient,
    name: &str,
) -> Result<CloudToDeviceMethodResult, QuickstartError> {
    let method = CloudToDeviceMethod {
        method_name: name.into(),
        payload: Some(json!({})),
        response_timeout_in_seconds: Some(10),
        ..CloudToDeviceMethod::default()
    };
    Ok(client
        .invoke_module_method(DEVICE_ID, MODULE_ID, &method)
        .await?)
}
