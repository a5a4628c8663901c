//! `edgetwin edge run` provisioning through DPS from the config.toml `edgetwin provision --dps`
//! writes, as aziot-identityd does with `[provisioning] source = "dps"`: real processes — an
//! `edgetwin hub` (ports 0, its DPS on the same HTTPS port), `edgetwin provision --dps --count 1`
//! and `edgetwin edge run`. No container engine is needed: the runtime registers before it
//! looks for the engine, so the run ends at the missing engine with the device already assigned
//! (and created in the hub as an IoT Edge device), or ends at DPS's refusal before it.

use edgetwin_test_support as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The registration id `provision --dps --count 1 --prefix pi-` writes.
const REGISTRATION_ID: &str = "pi-1";

/// A hub, with the calls these tests make.
struct Setup(support::HubSetup);

impl std::ops::Deref for Setup {
    type Target = support::HubSetup;
    fn deref(&self) -> &support::HubSetup {
        &self.0
    }
}

impl Setup {
    /// A hub, and the config.toml of one device of a `provision --dps` fleet.
    fn start(name: &str) -> (Setup, PathBuf) {
        let setup = support::HubSetup::start(&format!("edge-dps-{name}"), &[]);
        let (hub, dir) = (&setup.hub, &setup.dir);
        let dps = &hub.info["dps"];
        let out = dir.join("fleet");
        let output = hub
            .edgetwin()
            .env(
                "DPS_CONNECTION_STRING",
                dps["connectionString"].as_str().unwrap(),
            )
            .args(["provision", "--dps", "--count", "1", "--prefix", "pi-"])
            .arg("--out")
            .arg(&out)
            .args(["--id-scope", dps["idScope"].as_str().unwrap()])
            .args([
                "--global-endpoint",
                &format!("https://{}", dps["globalEndpoint"].as_str().unwrap()),
            ])
            .arg("--ca-file")
            .arg(hub.ca())
            .output()
            .unwrap();
        support::stdout_of_success("provision --dps", &output);
        let config = out.join(REGISTRATION_ID).join("config.toml");
        (Setup(setup), config)
    }

    /// `edgetwin edge run` with `config`, its data in `data`, and an engine socket that does not
    /// exist.
    fn edge_run(&self, config: &Path) -> Output {
        Command::new(support::edgetwin())
            .env_remove("EDGETWIN_EDGE_CONFIG")
            .env_remove("EDGETWIN_EDGE_DATA_DIR")
            .args(["edge", "run", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--moby-uri")
            .arg(format!(
                "unix://{}",
                self.dir.join("no-engine.sock").display()
            ))
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("edge-data")
    }

    fn device(&self) -> (u16, Value) {
        self.owner("GET", &format!("/devices/{REGISTRATION_ID}"), None)
    }
}

#[test]
fn edge_run_registers_through_dps_its_device_is_an_edge_device_and_a_restart_uses_the_cache() {
    let (setup, config) = Setup::start("register");
    let output = setup.edge_run(&config);
    let stderr = support::stderr_of_failure("edge run without an engine", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("DPS: assigned"), "{stderr}");
    assert!(
        !stderr.contains("DPS: using the cached assignment"),
        "{stderr}"
    );
    let (status, device) = setup.device();
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["capabilities"]["iotEdge"], true, "{device}");

    let cache = setup.data_dir().join("dps_assignment.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", cache.display());
    let cached: Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    assert_eq!(cached["deviceId"], REGISTRATION_ID, "{cached}");
    assert_eq!(cached["assignedHub"], setup.hub.host_name(), "{cached}");

    // A restart uses the cache: with the device deleted in the hub, it is not registered again.
    let (status, _) = setup.runtime.block_on(setup.hub.rest.call(
        "DELETE",
        &format!("/devices/{REGISTRATION_ID}"),
        None,
    ));
    assert_eq!(status, 204);
    let output = setup.edge_run(&config);
    let stderr = support::stderr_of_failure("edge run again", &output);
    assert!(
        stderr.contains("DPS: using the cached assignment"),
        "{stderr}"
    );
    assert_eq!(setup.device().0, 404);
}

#[test]
fn a_wrong_key_is_refused_with_what_dps_said_and_nothing_is_created() {
    let (setup, config) = Setup::start("wrong-key");
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("symmetric_key = { value = \"").unwrap();
    let end = start + text[start..].find(" }").unwrap();
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMDE=";
    let text = format!(
        "{}symmetric_key = {{ value = \"{wrong}\"{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&config, text).unwrap();
    let output = setup.edge_run(&config);
    let stderr = support::stderr_of_failure("edge run with a wrong key", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let scope = setup.hub.info["dps"]["idScope"].as_str().unwrap();
    let endpoint = setup.hub.info["dps"]["globalEndpoint"].as_str().unwrap();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: DPS https://{endpoint} refused registration {REGISTRATION_ID} (id scope {scope}): 401, errorCode 401002"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "{stderr}");
    assert_eq!(setup.device().0, 404);
    assert!(!setup.data_dir().join("dps_assignment.json").exists());
}
