//! `edgetwin provision` and `edgetwin twin` run as processes against a real `edgetwin hub`
//! started in a temporary directory with ports 0.

use edgetwin_test_support as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use edgetwin::provision::{ClientOptions, ServiceClient};
use edgetwin_wire::connection_string::ConnectionString;
use serde_json::Value;
use support::{edgetwin, edgetwin_module, poll_blocking, HubOptions, Proc, TempDir, FAST_BACKOFF};

/// A hub process and its scratch directory, stopped and removed on drop.
struct Hub {
    // Declared first: the hub stops before its directory goes.
    hub: support::Hub,
    dir: TempDir,
}

impl Hub {
    fn start(name: &str) -> Hub {
        let dir = TempDir::new(&format!("provision-{name}"));
        let options = HubOptions {
            rust_log: Some("warn"),
            timeout: Duration::from_secs(20),
            ..HubOptions::default()
        };
        let hub = support::Hub::start(dir.path(), options);
        Hub { hub, dir }
    }

    fn service_string(&self) -> String {
        self.hub.service_connection_string().to_owned()
    }

    fn policy_string(&self, policy: &str) -> String {
        format!(
            "HostName=localhost:{};SharedAccessKeyName={policy};SharedAccessKey={}",
            self.hub.https_port(),
            self.policy_key(policy)
        )
    }

    fn policy_key(&self, policy: &str) -> &str {
        self.hub.info["policies"][policy].as_str().unwrap()
    }

    fn ca(&self) -> PathBuf {
        self.hub.ca()
    }

    /// Runs `edgetwin ARGS` in the hub's directory with the owner connection string in the
    /// environment, as an operator would after `export IOTHUB_CONNECTION_STRING=...`.
    fn run(&self, args: &[&str]) -> Output {
        self.hub
            .edgetwin()
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("REQUESTS_CA_BUNDLE")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run edgetwin")
    }

    fn run_ok(&self, args: &[&str]) -> String {
        support::stdout_of_success(&format!("edgetwin {args:?}"), &self.run(args))
    }

    /// Runs `edgetwin ARGS` expecting it to fail; returns its stderr.
    fn run_err(&self, args: &[&str]) -> String {
        support::stderr_of_failure(&format!("edgetwin {args:?}"), &self.run(args))
    }

    fn run_json(&self, args: &[&str]) -> Value {
        let stdout = self.run_ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// `edgetwin provision --device DEVICE --module edgetwin --output json`.
    fn provision_json(&self, device: &str) -> Value {
        self.run_json(&provision_module(device, &["--output", "json"]))
    }

    /// `edgetwin provision --devices-from FILE --module edgetwin --rate 0 --output json`.
    fn provision_fleet_json(&self, file: &Path) -> Value {
        self.run_json(&[
            "provision",
            "--devices-from",
            file.to_str().unwrap(),
            "--module",
            "edgetwin",
            "--rate",
            "0",
            "--output",
            "json",
        ])
    }

    /// `edgetwin twin update` of the device's edgetwin module with `desired`, as JSON.
    fn update_desired_json(&self, device: &str, desired: &str) -> Value {
        self.run_json(&[
            "twin",
            "update",
            "--device",
            device,
            "--module",
            "edgetwin",
            "--desired",
            desired,
            "--output",
            "json",
        ])
    }

    /// `edgetwin twin get` of the device, or of its `module`.
    fn twin(&self, device: &str, module: Option<&str>) -> Value {
        let mut args = vec!["twin", "get", "--device", device];
        if let Some(module) = module {
            args.extend(["--module", module]);
        }
        serde_json::from_str(&self.run_ok(&args)).unwrap()
    }

    /// The desired `telemetryInterval` of the device's edgetwin module (`null` if unset).
    fn desired_interval(&self, device: &str) -> Value {
        self.twin(device, Some("edgetwin"))["properties"]["desired"]["telemetryInterval"].clone()
    }

    /// An in-process service client with the owner policy.
    fn client(&self) -> ServiceClient {
        let cs: ConnectionString = self.service_string().parse().unwrap();
        let options = ClientOptions {
            ca_file: Some(self.ca()),
            ..ClientOptions::default()
        };
        ServiceClient::new(&cs, options).unwrap()
    }

    /// The primary key the hub holds for `device/edgetwin`, read in process.
    fn stored_module_key(&self, device: &str) -> String {
        let record = runtime()
            .block_on(self.client().get_module(device, "edgetwin"))
            .unwrap()
            .expect("module exists");
        let key = record
            .authentication
            .unwrap()
            .symmetric_key
            .unwrap()
            .primary_key
            .unwrap();
        key.expose().to_owned()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `text` to `name` in the hub's directory; returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// `provision --device DEVICE --module edgetwin` and `extra` arguments.
fn provision_module<'a>(device: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["provision", "--device", device, "--module", "edgetwin"];
    args.extend_from_slice(extra);
    args
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn key_of(connection_string: &str) -> String {
    let cs: ConnectionString = connection_string.parse().unwrap();
    cs.shared_access_key.unwrap().expose().to_owned()
}

#[test]
fn provisioning_twice_keeps_the_identities_and_keys_and_says_existing() {
    let hub = Hub::start("twice");
    let first = hub.provision_json("gw-1");
    let second = hub.provision_json("gw-1");
    assert_eq!(first["device"]["status"], "created");
    assert_eq!(first["module"]["status"], "created");
    assert_eq!(second["device"]["status"], "existing");
    assert_eq!(second["module"]["status"], "existing");
    for who in ["device", "module"] {
        assert_eq!(
            first[who]["connectionString"], second[who]["connectionString"],
            "{who} key changed"
        );
    }
    // Device strings use the hub host name without the REST port.
    let module = first["module"]["connectionString"].as_str().unwrap();
    assert!(module.starts_with("HostName=localhost;DeviceId=gw-1;ModuleId=edgetwin;"));

    let text = hub.run_ok(&["provision", "--device", "gw-1", "--module", "edgetwin"]);
    assert!(text.contains("device gw-1: existing"), "{text}");
    assert!(text.contains("module gw-1/edgetwin: existing"), "{text}");
}

#[test]
fn the_printed_module_connection_string_holds_the_key_the_hub_checks() {
    let hub = Hub::start("modulekey");
    let out = hub.provision_json("gw-2");
    let printed = key_of(out["module"]["connectionString"].as_str().unwrap());
    assert_eq!(printed, hub.stored_module_key("gw-2"));
    let device = runtime()
        .block_on(hub.client().get_device("gw-2"))
        .unwrap()
        .unwrap();
    assert!(device.capabilities.unwrap().iot_edge);
}

#[test]
fn secrets_go_to_a_private_file_and_not_to_stdout() {
    let hub = Hub::start("secrets");
    let file = hub.path("secrets.env");
    let stdout = hub.run_ok(&provision_module(
        "gw-3",
        &["--secrets-file", file.to_str().unwrap()],
    ));
    assert!(!stdout.contains("SharedAccessKey"), "{stdout}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("DEVICE_CONNECTION_STRING=\"HostName=localhost;DeviceId=gw-3;"));
    assert!(text.contains(
        "MODULE_CONNECTION_STRING=\"HostName=localhost;DeviceId=gw-3;ModuleId=edgetwin;"
    ));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_edge_config_written_for_a_device_is_one_the_edge_runtime_reads_and_is_private() {
    let hub = Hub::start("edgeconfig");
    let file = hub.path("config.toml");
    let stdout = hub.run_ok(&provision_module(
        "gw-edge",
        &["--edge-config", file.to_str().unwrap()],
    ));
    assert!(
        !stdout.contains(&std::fs::read_to_string(&file).unwrap()),
        "{stdout}"
    );
    let config = edgetwin_edge::config::EdgeConfig::load(&file).unwrap();
    let edgetwin_edge::config::Provisioning::Manual(manual) = &config.provisioning else {
        panic!("not manual provisioning: {config:?}");
    };
    assert_eq!(manual.device_id, "gw-edge");
    assert_eq!(config.hostname, "localhost");
    assert_eq!(manual.iothub_hostname, "localhost");
    assert!(config.trust_bundle_cert.unwrap().ends_with("ca.pem"));
    let device = runtime()
        .block_on(hub.client().get_device("gw-edge"))
        .unwrap()
        .unwrap();
    let key = device
        .authentication
        .unwrap()
        .symmetric_key
        .unwrap()
        .primary_key
        .unwrap();
    assert_eq!(manual.key.expose(), key.expose());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn twin_update_changes_the_module_twin_desired_properties() {
    let hub = Hub::start("twin");
    hub.run_ok(&["provision", "--device", "gw-4", "--module", "edgetwin"]);
    let change = hub.update_desired_json("gw-4", r#"{"telemetryInterval":122}"#);
    assert!(change["before"]["properties"]["desired"]
        .get("telemetryInterval")
        .is_none());
    assert_eq!(
        change["after"]["properties"]["desired"]["telemetryInterval"],
        122
    );
    let twin = hub.twin("gw-4", Some("edgetwin"));
    assert_eq!(twin["properties"]["desired"]["telemetryInterval"], 122);
    assert_eq!(twin["moduleId"], "edgetwin");

    // Text: the change and the new versions, not the twin twice.
    let text = hub.run_ok(&[
        "twin",
        "update",
        "--device",
        "gw-4",
        "--module",
        "edgetwin",
        "--desired",
        r#"{"telemetryInterval":30}"#,
        "--tags",
        r#"{"ring":"canary"}"#,
    ]);
    let lines: Vec<&str> = text.lines().collect();
    let twin = hub.twin("gw-4", Some("edgetwin"));
    let (version, desired_version) = (&twin["version"], &twin["properties"]["desired"]["$version"]);
    assert_eq!(
        lines,
        [
            format!(
                "gw-4/edgetwin: twin version {} -> {version}, desired $version {} -> {desired_version}",
                version.as_i64().unwrap() - 1,
                desired_version.as_i64().unwrap() - 1,
            )
            .as_str(),
            r#"  tags.ring: (unset) -> "canary""#,
            "  desired.telemetryInterval: 122 -> 30",
        ],
        "{text}"
    );
    assert_eq!(twin["tags"]["ring"], "canary");
}

#[test]
fn a_read_only_policy_gets_a_message_naming_the_missing_permission() {
    let hub = Hub::start("policy");
    let stderr = hub.run_err(&[
        "provision",
        "--connection-string",
        &hub.policy_string("registryRead"),
        "--device",
        "gw-5",
    ]);
    assert!(stderr.contains("RegistryWrite"), "{stderr}");
    assert!(stderr.contains("registryRead"), "{stderr}");
    assert!(
        !stderr.contains(hub.policy_key("registryRead")),
        "the key leaked: {stderr}"
    );
}

#[test]
fn a_missing_connection_string_is_explained() {
    let out = Command::new(edgetwin())
        .args(["provision", "--device", "x"])
        .current_dir(std::env::temp_dir())
        .env_remove("IOTHUB_CONNECTION_STRING")
        .output()
        .unwrap();
    let stderr = support::stderr_of_failure("edgetwin provision", &out);
    assert!(stderr.contains("IOTHUB_CONNECTION_STRING"), "{stderr}");
}

fn write_deployment(path: &Path, interval: u32) {
    let manifest = serde_json::json!({
        "modulesContent": {
            "$edgeAgent": {"properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
                "systemModules": {},
                "modules": {}
            }},
            "$edgeHub": {"properties.desired": {
                "schemaVersion": "1.1",
                "routes": {"up": "FROM /messages/* INTO $upstream"},
                "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
            }},
            "edgetwin": {"properties.desired": {"telemetryInterval": interval}}
        }
    });
    std::fs::write(path, manifest.to_string()).unwrap();
}

#[test]
fn a_deployment_applied_to_one_device_sets_its_module_twins() {
    let hub = Hub::start("apply");
    let manifest = hub.path("deployment.amd64.json");
    write_deployment(&manifest, 33);
    let text = hub.run_ok(&provision_module(
        "gw-6",
        &["--deployment", manifest.to_str().unwrap()],
    ));
    assert!(text.contains("deployment applied to device gw-6"), "{text}");
    assert_eq!(hub.desired_interval("gw-6"), 33);
}

#[test]
fn an_at_scale_deployment_reaches_the_devices_whose_tags_match_and_not_the_others() {
    let hub = Hub::start("atscale");
    let devices = hub.write(
        "devices.csv",
        "deviceId,environment,location.building\nprod-1,prod,43\nprod-2,prod,44\ntest-1,test,43\n",
    );
    let out = hub.provision_fleet_json(&devices);
    assert_eq!(out["fleet"]["devicesCreated"], 3);
    let manifest = hub.path("deployment.json");
    write_deployment(&manifest, 44);
    let deploy = [
        "provision",
        "--deployment",
        manifest.to_str().unwrap(),
        "--target-condition",
        "tags.environment='prod'",
        "--deployment-id",
        "edgetwin-prod",
        "--priority",
        "10",
    ];
    let text = hub.run_ok(&deploy);
    assert!(
        text.contains("edgetwin-prod") && text.contains("created"),
        "{text}"
    );
    let again = hub.run_ok(&deploy);
    assert!(again.contains("existing"), "{again}");

    assert_eq!(hub.desired_interval("prod-1"), 44);
    assert_eq!(hub.desired_interval("prod-2"), 44);
    assert_eq!(hub.desired_interval("test-1"), Value::Null);
}

#[test]
fn a_fleet_of_250_devices_takes_3_bulk_requests_and_a_rerun_finds_them_all() {
    let hub = Hub::start("fleet");
    // `provision` of gw-1 ... gw-250, unpaced, with `extra` arguments.
    let fleet = |extra: &[&'static str]| {
        let mut args = vec![
            "provision",
            "--count",
            "250",
            "--prefix",
            "gw-",
            "--rate",
            "0",
        ];
        args.extend_from_slice(extra);
        args
    };
    let args = fleet(&["--output", "json"]);
    let first = hub.run_json(&args);
    assert_eq!(first["fleet"]["devicesCreated"], 250);
    assert_eq!(first["fleet"]["bulkRequests"], 3);
    let second = hub.run_json(&args);
    assert_eq!(second["fleet"]["devicesCreated"], 0);
    assert_eq!(second["fleet"]["devicesExisting"], 250);
    assert_eq!(second["fleet"]["bulkRequests"], 3);

    // Resuming with a module: devices exist, modules are created, connection strings written.
    let secrets = hub.path("fleet.jsonl");
    let mut args = fleet(&["--module", "edgetwin", "--secrets-file"]);
    args.push(secrets.to_str().unwrap());
    let text = hub.run_ok(&args);
    assert!(
        text.contains("250 devices: 0 created, 250 existing; modules: 250 created, 0 existing"),
        "{text}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&secrets)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 250);
    let last = &lines[249];
    assert_eq!(last["deviceId"], "gw-250");
    let module_key = key_of(last["moduleConnectionString"].as_str().unwrap());
    assert_eq!(hub.stored_module_key("gw-250"), module_key);
}

#[test]
fn a_new_tagged_fleet_with_modules_sends_each_chunks_modules_after_its_devices_as_iot_hub_requires()
{
    let hub = Hub::start("fleet-modules");
    let args = [
        "provision",
        "--count",
        "250",
        "--prefix",
        "gw-",
        "--module",
        "m",
        "--tags",
        r#"{"ring":"canary"}"#,
        "--rate",
        "0",
        "--output",
        "json",
    ];
    let first = hub.run_json(&args);
    assert_eq!(first["fleet"]["devicesCreated"], 250, "{first}");
    assert_eq!(first["fleet"]["modulesCreated"], 250, "{first}");
    assert_eq!(first["fleet"]["failed"], serde_json::json!([]), "{first}");
    // 3 chunks of devices, each followed by its modules: the hub refuses a module whose device
    // the same request creates
    assert_eq!(first["fleet"]["bulkRequests"], 6, "{first}");
    assert_eq!(hub.twin("gw-250", Some("m"))["moduleId"], "m");
    // --tags reaches every device of the fleet, as the README's fleet example relies on
    assert_eq!(hub.twin("gw-250", None)["tags"]["ring"], "canary");
    assert_eq!(hub.twin("gw-1", None)["tags"]["ring"], "canary");
}

#[test]
fn the_connection_string_and_ca_are_read_from_dotenv_and_requests_ca_bundle() {
    let hub = Hub::start("dotenv");
    hub.write(
        ".env",
        &format!(
            "# written by iotedgedev\nIOTHUB_CONNECTION_STRING=\"{}\"\nDEVICE_CONNECTION_STRING=\"\"\n",
            hub.service_string()
        ),
    );
    let out = Command::new(edgetwin())
        .args(["provision", "--device", "gw-7"])
        .current_dir(hub.dir.path())
        .env_remove("IOTHUB_CONNECTION_STRING")
        .env_remove("EDGETWIN_CA_FILE")
        .env("REQUESTS_CA_BUNDLE", hub.ca())
        .output()
        .unwrap();
    let stdout = support::stdout_of_success("edgetwin provision", &out);
    assert!(stdout.contains("device gw-7: created"), "{stdout}");
}

/// A solution directory holding copies of the repository's `deployment.template.json` and
/// `modules/edgetwin/module.json` (so generation never writes into the repository).
fn copy_solution(hub: &Hub, name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = hub.path(name);
    std::fs::create_dir_all(dir.join("modules/edgetwin")).unwrap();
    std::fs::copy(
        repo.join("deployment.template.json"),
        dir.join("deployment.template.json"),
    )
    .unwrap();
    std::fs::copy(
        repo.join("modules/edgetwin/module.json"),
        dir.join("modules/edgetwin/module.json"),
    )
    .unwrap();
    dir
}

/// The image tag genconfig gives the edgetwin module for `platform`, from module.json.
fn image_tag(solution: &Path, platform: &str) -> String {
    let module: Value = serde_json::from_str(
        &std::fs::read_to_string(solution.join("modules/edgetwin/module.json")).unwrap(),
    )
    .unwrap();
    format!(
        "{}:{}-{platform}",
        module["image"]["repository"].as_str().unwrap(),
        module["image"]["tag"]["version"].as_str().unwrap()
    )
}

#[test]
fn provision_generates_validates_and_applies_the_repositorys_deployment_template() {
    let hub = Hub::start("manifest");
    let solution = copy_solution(&hub, "solution");
    let dir = solution.to_str().unwrap();
    let out = hub.run_json(&provision_module(
        "gw-m1",
        &[
            "--manifest-template",
            "deployment.template.json",
            "--platform",
            "arm64v8",
            "--dir",
            dir,
            "--output",
            "json",
        ],
    ));
    assert_eq!(out["manifest"]["platform"], "arm64v8");
    assert_eq!(out["manifest"]["valid"], true);
    assert_eq!(out["deployment"]["status"], "applied");
    assert!(solution.join("config/deployment.arm64v8.json").is_file());

    let agent = hub.twin("gw-m1", Some("$edgeAgent"));
    let module = &agent["properties"]["desired"]["modules"]["edgetwin"];
    assert_eq!(
        module["settings"]["image"],
        image_tag(&solution, "arm64v8"),
        "{agent}"
    );
    // createOptions reach the agent as a minified string, as iotedgedev writes them.
    assert!(module["settings"]["createOptions"]
        .as_str()
        .unwrap()
        .contains("\"9600/tcp\""));
    assert_eq!(hub.desired_interval("gw-m1"), 122);

    // --dir alone finds the solution's template; the platform defaults to amd64.
    let text = hub.run_ok(&provision_module("gw-m2", &["--dir", dir]));
    assert!(
        text.contains("(amd64, from deployment.template.json): valid"),
        "{text}"
    );
    assert!(
        text.contains("deployment applied to device gw-m2"),
        "{text}"
    );
    let agent = hub.twin("gw-m2", Some("$edgeAgent"));
    assert_eq!(
        agent["properties"]["desired"]["modules"]["edgetwin"]["settings"]["image"],
        image_tag(&solution, "amd64")
    );
    assert_eq!(hub.desired_interval("gw-m2"), 122);

    // At scale: the generated manifest becomes a configuration.
    let text = hub.run_ok(&[
        "provision",
        "--dir",
        dir,
        "--target-condition",
        "tags.ring='canary'",
        "--deployment-id",
        "edgetwin-canary",
    ]);
    assert!(text.contains("deployment edgetwin-canary"), "{text}");
    assert!(text.contains("created"), "{text}");
}

#[test]
fn an_invalid_generated_manifest_is_refused_naming_json_paths_and_nothing_is_provisioned() {
    let hub = Hub::start("badmanifest");
    let solution = copy_solution(&hub, "solution");
    let path = solution.join("deployment.template.json");
    let mut template: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    template["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["broken"] =
        "FROM nowhere INTO $upstream".into();
    template["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = "9.9".into();
    std::fs::write(&path, template.to_string()).unwrap();
    let stderr = hub.run_err(&provision_module(
        "gw-bad",
        &[
            "--manifest-template",
            "deployment.template.json",
            "--platform",
            "amd64",
            "--dir",
            solution.to_str().unwrap(),
        ],
    ));
    assert!(
        stderr.contains("modulesContent.$edgeHub.properties.desired.routes.broken"),
        "{stderr}"
    );
    assert!(
        stderr.contains("modulesContent.$edgeAgent.properties.desired.schemaVersion"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was provisioned"), "{stderr}");
    let device = runtime()
        .block_on(hub.client().get_device("gw-bad"))
        .unwrap();
    assert!(
        device.is_none(),
        "the device was created despite the invalid manifest"
    );

    // A template that cannot be generated at all is refused too, with its JSON path.
    let mut broken = template.clone();
    broken["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["edgetwin"]
        ["settings"]["image"] = 5.into();
    std::fs::write(&path, broken.to_string()).unwrap();
    let stderr = hub.run_err(&[
        "provision",
        "--device",
        "gw-bad",
        "--dir",
        solution.to_str().unwrap(),
    ]);
    assert!(stderr.contains("settings.image"), "{stderr}");
}

/// Polls the device's edgetwin module twin until `check` holds for its reported properties
/// (20 s); panics at once if the module exits.
fn wait_for_twin(
    hub: &Hub,
    device: &str,
    module: &mut Proc,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    poll_blocking(Duration::from_secs(20), Duration::from_millis(100), || {
        let twin = hub.twin(device, Some("edgetwin"));
        if check(&twin["properties"]["reported"]) {
            return Ok(twin);
        }
        if let Ok(Some(status)) = module.child.try_wait() {
            panic!(
                "the module exited ({status}) waiting for {what}:\n{}",
                module.log()
            );
        }
        let log = module.log();
        Err(move || format!("timed out waiting for {what}; twin: {twin}\nmodule log:\n{log}"))
    })
}

#[test]
fn the_printed_module_connection_string_connects_the_module_and_twin_update_reaches_it() {
    let hub = Hub::start("moduleconnect");
    let text = hub.run_ok(&["provision", "--device", "gw-c", "--module", "edgetwin"]);
    let connection_string = text
        .lines()
        .find_map(|l| l.strip_prefix("MODULE_CONNECTION_STRING="))
        .unwrap_or_else(|| panic!("no module connection string printed: {text}"))
        .to_owned();
    let ca = hub.ca();
    let mut vars = vec![
        ("EDGETWIN_CONNECTION_STRING", connection_string.as_str()),
        ("EDGETWIN_CA_FILE", ca.to_str().unwrap()),
    ];
    vars.extend(FAST_BACKOFF);
    vars.push(("RUST_LOG", "info"));
    let bin = edgetwin_module();
    let mut module = support::start_module(bin, hub.path("module.log"), hub.hub.mqtt_port(), &vars);

    let twin = wait_for_twin(
        &hub,
        "gw-c",
        &mut module,
        "the module's first report",
        |r| r["identitySource"] == "connectionString",
    );
    assert_eq!(twin["connectionState"], "Connected", "{twin}");

    let change = hub.update_desired_json("gw-c", r#"{"telemetryInterval":122}"#);
    let version = change["after"]["properties"]["desired"]["$version"]
        .as_i64()
        .unwrap();
    let twin = wait_for_twin(&hub, "gw-c", &mut module, "the 122 acknowledgement", |r| {
        r["telemetryInterval"]["ac"] == 200 && r["telemetryInterval"]["av"] == version
    });
    assert_eq!(
        twin["properties"]["reported"]["telemetryInterval"]["value"],
        122
    );
    assert!(
        !module.log().contains(key_of(&connection_string).as_str()),
        "the key leaked to the module log"
    );
}

#[test]
fn a_rerun_with_devices_from_applies_the_files_tags_to_existing_devices() {
    let hub = Hub::start("retag");
    let untagged = hub.write("devices.csv", "deviceId\nre-1\nre-2\nre-3\n");
    let first = hub.provision_fleet_json(&untagged);
    assert_eq!(first["fleet"]["devicesCreated"], 3);
    assert_eq!(first["fleet"]["tagsUpdated"], 0);

    let manifest = hub.path("deployment.json");
    write_deployment(&manifest, 55);
    hub.run_ok(&[
        "provision",
        "--deployment",
        manifest.to_str().unwrap(),
        "--target-condition",
        "tags.ring='canary'",
        "--deployment-id",
        "canary",
    ]);
    assert_eq!(hub.desired_interval("re-1"), Value::Null);

    // The edited file tags the existing devices; the deployment now selects two of them.
    let tagged = hub.write(
        "devices.jsonl",
        "{\"deviceId\":\"re-1\",\"tags\":{\"ring\":\"canary\",\"site\":{\"building\":43}}}\n\
         {\"deviceId\":\"re-2\",\"tags\":{\"ring\":\"canary\"}}\n\
         {\"deviceId\":\"re-3\",\"tags\":{\"ring\":\"stable\"}}\n",
    );
    // Tags set by someone else are kept: the file's tags are merged.
    hub.run_ok(&[
        "twin",
        "update",
        "--device",
        "re-1",
        "--tags",
        r#"{"owner":"ops"}"#,
    ]);
    let second = hub.provision_fleet_json(&tagged);
    assert_eq!(second["fleet"]["devicesExisting"], 3);
    assert_eq!(second["fleet"]["modulesExisting"], 3);
    assert_eq!(second["fleet"]["tagsUpdated"], 3);
    let tags = hub.twin("re-1", None)["tags"].clone();
    assert_eq!(
        tags,
        serde_json::json!({"owner":"ops","ring":"canary","site":{"building":43}})
    );
    assert_eq!(hub.desired_interval("re-1"), 55);
    assert_eq!(hub.desired_interval("re-2"), 55);
    assert_eq!(hub.desired_interval("re-3"), Value::Null);

    // Moving a device between rings is one edited line and a re-run.
    hub.write(
        "devices.csv",
        "deviceId,ring\nre-1,canary\nre-2,canary\nre-3,canary\n",
    );
    let text = hub.run_ok(&[
        "provision",
        "--devices-from",
        untagged.to_str().unwrap(),
        "--rate",
        "0",
    ]);
    assert!(
        text.contains("tags updated on 3 existing devices"),
        "{text}"
    );
    assert_eq!(hub.desired_interval("re-3"), 55);
}

#[test]
fn a_hub_answering_429_with_retry_after_is_retried_and_the_job_finishes() {
    let hub = Hub::start("throttled");
    let rest = support::Rest::new(&hub.hub.info, false);
    let runtime = runtime();
    let throttle =
        serde_json::json!({"operation": "PUT /devices/", "count": 2, "retryAfterSeconds": 1});
    let (status, _) =
        runtime.block_on(rest.call("POST", "/edgetwin/faults/throttle", Some(throttle)));
    assert_eq!(status, 200);

    let started = std::time::Instant::now();
    let result = hub.provision_json("gw-429");
    assert_eq!(result["device"]["status"], "created");
    assert_eq!(result["module"]["status"], "created");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two 429s with Retry-After: 1 must cost at least 2 s, took {:?}",
        started.elapsed()
    );
    let (_, faults) = runtime.block_on(rest.call("GET", "/edgetwin/faults", None));
    assert_eq!(
        faults["throttles"],
        serde_json::json!([]),
        "both throttled answers were used"
    );
}

#[test]
fn edge_env_prints_the_modules_iotedge_variables_as_shell_exports() {
    let hub = Hub::start("edge-env");
    hub.provision_json("gw-env");
    let text = hub.run_ok(&["edge-env", "--device", "gw-env", "--module", "edgetwin"]);
    let rest = support::Rest::new(&hub.hub.info, false);
    let expected = runtime().block_on(rest.edge_environment("gw-env", "edgetwin"));
    assert_eq!(expected.len(), 8, "{expected:?}");
    for (name, value) in &expected {
        assert!(
            text.contains(&format!("export {name}='{value}'\n")),
            "{name} missing in:\n{text}"
        );
    }
    let shell = Command::new("sh")
        .args([
            "-c",
            &format!("{text}\necho \"$IOTEDGE_DEVICEID/$IOTEDGE_MODULEID\""),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&shell.stdout).trim(),
        "gw-env/edgetwin"
    );

    let error = hub.run_err(&["edge-env", "--device", "nobody", "--module", "edgetwin"]);
    assert!(error.contains("nobody"), "{error}");
}
