//! A deployment's module twin content (`modulesContent.<module>.properties.desired`) reaching a
//! module whose identity does not exist yet when the deployment is applied, against a real
//! `edgetwin hub` over TLS (ports 0). On IoT Hub the edge runtime creates module identities only
//! after it received its deployment (edgeAgent asks aziot-identityd, which sends
//! `PUT /devices/{d}/modules/{m}` with the device's own SAS token at api-version
//! 2017-11-08-preview), and the modules still start with the desired properties the deployment
//! gives them: so the hub keeps the device's deployment content and applies a module's section
//! when that module identity is created.

use edgetwin_test_support as support;

use edgetwin_wire::sas::generate_token;
use edgetwin_wire::Secret;
use serde_json::{json, Value};
use support::unix_now;

/// The api-version aziot-identityd sends (`aziot-cloud-client-async` `hub/mod.rs`).
const AZIOT_API_VERSION: &str = "2017-11-08-preview";

/// A hub, with the calls these tests make.
struct Setup(support::HubSetup);

impl std::ops::Deref for Setup {
    type Target = support::HubSetup;
    fn deref(&self) -> &support::HubSetup {
        &self.0
    }
}

impl Setup {
    fn start(name: &str) -> Setup {
        Setup(support::HubSetup::start(
            &format!("module-content-{name}"),
            &[],
        ))
    }

    /// Creates the IoT Edge device `id` (with the twin `tags`) as `iothubowner`; returns its
    /// primary key.
    fn edge_device(&self, id: &str, tags: Option<Value>) -> String {
        let body = json!({ "deviceId": id, "capabilities": { "iotEdge": true } });
        let (status, device) = self.owner("PUT", &format!("/devices/{id}"), Some(body));
        assert_eq!(status, 200, "create {id}: {device}");
        if let Some(tags) = tags {
            let (status, twin) = self.owner(
                "PATCH",
                &format!("/twins/{id}"),
                Some(json!({ "tags": tags })),
            );
            assert_eq!(status, 200, "tag {id}: {twin}");
        }
        device["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The edge device `device` creates its module `module` with its own token, as
    /// aziot-identityd does for edgeAgent.
    fn device_creates_module(&self, device: &str, device_key: &str, module: &str) {
        let audience = format!("{}/devices/{device}", self.hub.host_name()).to_lowercase();
        let token: Secret = generate_token(
            &Secret::new(device_key),
            &audience,
            unix_now() as u64 + 600,
            None,
        )
        .unwrap();
        let body = json!({
            "moduleId": module,
            "managedBy": "iotEdge",
            "deviceId": device,
            "generationId": null,
            "authentication": { "type": "sas", "symmetricKey": {
                "primaryKey": "bW9kdWxlLWtleS1wcmltYXJ5LTAxMjM0NTY3ODlhYmM=",
                "secondaryKey": "bW9kdWxlLWtleS1zZWNvbmRhcnktMDEyMzQ1Njc4OWE=" } },
        });
        let path = format!("/devices/{device}/modules/{module}?api-version={AZIOT_API_VERSION}");
        let (status, created) = self.runtime.block_on(self.hub.rest.call_as(
            "PUT",
            &path,
            Some(body),
            token.expose(),
            &[],
        ));
        assert_eq!(status, 200, "{device} creates {module}: {created}");
    }

    /// `applyConfigurationContent` of `modules_content` on `device`.
    fn set_modules(&self, device: &str, modules_content: Value) {
        let (status, body) = self.owner(
            "POST",
            &format!("/devices/{device}/applyConfigurationContent"),
            Some(json!({ "modulesContent": modules_content })),
        );
        assert!(status < 300, "applyConfigurationContent: {status} {body}");
    }

    /// The module twin as the service API answers `GET /twins/{d}/modules/{m}`.
    fn module_twin(&self, device: &str, module: &str) -> Value {
        let (status, twin) = self.owner("GET", &format!("/twins/{device}/modules/{module}"), None);
        assert_eq!(status, 200, "twin of {device}/{module}: {twin}");
        twin
    }
}

/// A manifest running module `m`, whose module twin it gives `telemetryInterval` = `interval`.
fn manifest(interval: u32) -> Value {
    json!({
        "$edgeAgent": { "properties.desired": {
            "schemaVersion": "1.1",
            "runtime": { "type": "docker", "settings": {} },
            "systemModules": {},
            "modules": { "m": { "type": "docker", "status": "running",
                "restartPolicy": "always", "settings": { "image": "localhost:5000/m:1.0" } } },
        }},
        "$edgeHub": { "properties.desired": { "schemaVersion": "1.2", "routes": {},
            "storeAndForwardConfiguration": { "timeToLiveSecs": 7200 } } },
        "m": { "properties.desired": { "telemetryInterval": interval } },
    })
}

/// The desired properties without `$version` and `$metadata`.
fn user_desired(twin: &Value) -> serde_json::Map<String, Value> {
    let mut desired = twin["properties"]["desired"].as_object().unwrap().clone();
    desired.retain(|k, _| !k.starts_with('$'));
    desired
}

#[test]
fn a_module_the_edge_device_creates_after_apply_configuration_content_gets_its_desired_properties()
{
    let setup = Setup::start("set-modules");
    let key = setup.edge_device("gw", None);
    setup.set_modules("gw", manifest(122));
    setup.device_creates_module("gw", &key, "m");
    let twin = setup.module_twin("gw", "m");
    assert_eq!(
        twin["properties"]["desired"]["telemetryInterval"], 122,
        "{twin}"
    );
    assert_eq!(
        twin["properties"]["desired"]["$version"], 2,
        "one application after the new twin's version 1: {twin}"
    );
    assert_eq!(twin["version"], 2, "{twin}");
}

#[test]
fn a_module_the_edge_device_creates_after_an_at_scale_deployment_targeted_it_gets_its_desired_properties(
) {
    let setup = Setup::start("at-scale");
    let key = setup.edge_device("gw", Some(json!({ "ring": "canary" })));
    let other_key = setup.edge_device("gw-other", Some(json!({ "ring": "stable" })));
    let (status, body) = setup.owner(
        "PUT",
        "/configurations/canary",
        Some(json!({
            "id": "canary",
            "targetCondition": "tags.ring='canary'",
            "priority": 10,
            "content": { "modulesContent": manifest(122) },
        })),
    );
    assert_eq!(status, 200, "create the deployment: {body}");
    setup.device_creates_module("gw", &key, "m");
    setup.device_creates_module("gw-other", &other_key, "m");
    let targeted = setup.module_twin("gw", "m");
    assert_eq!(
        targeted["properties"]["desired"]["telemetryInterval"], 122,
        "{targeted}"
    );
    let untargeted = setup.module_twin("gw-other", "m");
    assert!(
        user_desired(&untargeted).is_empty(),
        "a device the deployment does not target: {untargeted}"
    );
}

#[test]
fn a_module_the_deployment_does_not_name_is_created_with_empty_desired_properties() {
    let setup = Setup::start("not-named");
    let key = setup.edge_device("gw", None);
    setup.set_modules("gw", manifest(122));
    setup.device_creates_module("gw", &key, "other");
    let twin = setup.module_twin("gw", "other");
    assert!(user_desired(&twin).is_empty(), "{twin}");
    assert_eq!(twin["properties"]["desired"]["$version"], 1, "{twin}");
}

#[test]
fn a_device_deleted_and_created_again_does_not_inherit_the_content_applied_to_the_old_one() {
    let setup = Setup::start("re-created");
    setup.edge_device("gw", None);
    setup.set_modules("gw", manifest(122));
    let (status, body) = setup.owner("DELETE", "/devices/gw", None);
    assert_eq!(status, 204, "delete: {body}");
    let key = setup.edge_device("gw", None);
    setup.device_creates_module("gw", &key, "m");
    let twin = setup.module_twin("gw", "m");
    assert!(user_desired(&twin).is_empty(), "{twin}");
}
