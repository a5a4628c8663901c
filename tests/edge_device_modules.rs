//! An IoT Edge device managing its own module identities with its own SAS key, as
//! aziot-identityd does (Azure/iot-identity-service `identity/aziot-cloud-client-async`:
//! `hub/mod.rs` sends `PUT`/`GET`/`DELETE /devices/{d}/modules[/{m}]` at api-version
//! 2017-11-08-preview, `If-Match: *` on update and delete; `connector.rs` signs the token for the
//! lower-cased audience `{hub}/devices/{d}` without `skn`), against a real `edgetwin hub` over
//! TLS (ports 0): what it may do, and everything else it is refused with IoT Hub's 401
//! `IotHubUnauthorizedAccess`. And the hub with its workload API switched off.

use edgetwin_test_support as support;

use edgetwin_wire::sas::generate_token;
use edgetwin_wire::Secret;
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use serde_json::{json, Value};
use support::{mqtt_connect, unix_now};

/// The api-version aziot-identityd sends (`aziot-cloud-client-async` `hub/mod.rs`).
const AZIOT_API_VERSION: &str = "2017-11-08-preview";

/// Two base64 keys of 32 bytes, as aziot-keyd derives module keys.
const MODULE_KEYS: [&str; 2] = [
    "bW9kdWxlLWtleS1wcmltYXJ5LTAxMjM0NTY3ODlhYmM=",
    "bW9kdWxlLWtleS1zZWNvbmRhcnktMDEyMzQ1Njc4OWE=",
];

/// A hub, with the calls these tests make.
struct Setup(support::HubSetup);

impl std::ops::Deref for Setup {
    type Target = support::HubSetup;
    fn deref(&self) -> &support::HubSetup {
        &self.0
    }
}

impl Setup {
    fn start(name: &str, args: &'static [&'static str]) -> Setup {
        Setup(support::HubSetup::start(
            &format!("edge-modules-{name}"),
            args,
        ))
    }

    /// Creates a device (an IoT Edge device if `edge`) as `iothubowner`; returns its primary key.
    fn device(&self, id: &str, edge: bool) -> String {
        let body = json!({ "deviceId": id, "capabilities": { "iotEdge": edge } });
        let (status, device) = self.owner("PUT", &format!("/devices/{id}"), Some(body));
        assert_eq!(status, 200, "create {id}: {device}");
        device["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A call with `token`, at aziot's api-version, with `If-Match: *` as aziot sends it on
    /// update and delete.
    fn call(
        &self,
        token: &Secret,
        method: &str,
        path: &str,
        body: Option<Value>,
        if_match: bool,
    ) -> (u16, Value) {
        let path = format!("{path}?api-version={AZIOT_API_VERSION}");
        let headers: &[(&str, &str)] = if if_match { &[("If-Match", "*")] } else { &[] };
        self.runtime.block_on(
            self.hub
                .rest
                .call_as(method, &path, body, token.expose(), headers),
        )
    }

    /// A token for `resource` (below the hub's host name, lower-cased as aziot signs it) signed
    /// with `key`, without `skn`.
    fn token(&self, resource: &str, key: &str) -> Secret {
        let audience = format!("{}/{resource}", self.hub.host_name()).to_lowercase();
        generate_token(&Secret::new(key), &audience, unix_now() as u64 + 600, None).unwrap()
    }

    /// Whether `device/module` gets a CONNACK accepting `key`.
    fn connects(&self, device: &str, module: &str, key: &str) -> bool {
        let (_, code) = self
            .runtime
            .block_on(mqtt_connect(&self.hub, device, Some(module), key));
        code == ConnectReturnCode::Success
    }
}

/// A module body as aziot-identityd's `create_module`/`update_module` sends it.
fn aziot_module(device: &str, module: &str) -> Value {
    json!({
        "moduleId": module,
        "managedBy": "iotEdge",
        "deviceId": device,
        "generationId": null,
        "authentication": { "type": "sas", "symmetricKey": {
            "primaryKey": MODULE_KEYS[0], "secondaryKey": MODULE_KEYS[1] } },
    })
}

/// Panics unless the answer is IoT Hub's 401 with its error code in the body.
fn assert_unauthorized((status, body): (u16, Value), what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    assert!(
        body["Message"]
            .as_str()
            .is_some_and(|m| m.contains("IotHubUnauthorizedAccess")),
        "{what}: {body}"
    );
}

#[test]
fn an_edge_device_creates_reads_lists_updates_and_deletes_its_own_modules_with_its_own_token() {
    let setup = Setup::start("own", &[]);
    let key = setup.device("Gateway-1", true);
    let token = setup.token("devices/Gateway-1", &key);
    let path = "/devices/Gateway-1/modules/sensor";

    let body = aziot_module("Gateway-1", "sensor");
    let (status, created) = setup.call(&token, "PUT", path, Some(body.clone()), false);
    assert_eq!(status, 200, "create: {created}");
    assert_eq!(
        created["authentication"]["symmetricKey"]["primaryKey"],
        MODULE_KEYS[0]
    );
    assert_eq!(created["managedBy"], "iotEdge");
    let (status, read) = setup.call(&token, "GET", path, None, false);
    assert_eq!((status, &read["moduleId"]), (200, &json!("sensor")));
    let (status, listed) = setup.call(&token, "GET", "/devices/Gateway-1/modules", None, false);
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["moduleId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        (status, ids),
        (200, vec!["$edgeAgent", "$edgeHub", "sensor"])
    );
    let (status, updated) = setup.call(&token, "PUT", path, Some(body), true);
    assert_eq!(status, 200, "update with If-Match *: {updated}");

    assert!(
        setup.connects("Gateway-1", "sensor", MODULE_KEYS[0]),
        "the module connects with the key its device gave it"
    );

    let (status, _) = setup.call(&token, "DELETE", path, None, true);
    assert_eq!(status, 204);
    let (status, _) = setup.owner("GET", path, None);
    assert_eq!(status, 404, "deleted");
}

#[test]
fn only_the_edge_device_itself_gives_edge_agent_its_keys_as_aziot_identityd_does() {
    let setup = Setup::start("agent", &[]);
    let key = setup.device("gw", true);
    let path = "/devices/gw/modules/$edgeAgent";
    let body = aziot_module("gw", "$edgeAgent");
    let (status, refused) = setup.runtime.block_on(setup.hub.rest.call_as(
        "PUT",
        &format!("{path}?api-version=2021-04-12"),
        Some(body.clone()),
        owner_token(&setup).expose(),
        &[("If-Match", "*")],
    ));
    assert_eq!(status, 401, "{refused}");
    assert!(refused["Message"]
        .as_str()
        .is_some_and(|m| m.contains("SystemModuleModifyUnauthorizedAccess")));
    assert!(!setup.connects("gw", "$edgeAgent", MODULE_KEYS[0]));

    let token = setup.token("devices/gw", &key);
    let (status, existing) = setup.call(&token, "GET", path, None, false);
    assert_eq!(status, 200, "{existing}");
    let (status, updated) = setup.call(&token, "PUT", path, Some(body), true);
    assert_eq!(status, 200, "{updated}");
    assert!(setup.connects("gw", "$edgeAgent", MODULE_KEYS[0]));
    let (status, _) = setup.call(&token, "DELETE", path, None, true);
    assert_ne!(status, 204, "system modules are not deleted");
}

#[test]
fn a_device_token_is_refused_for_other_devices_registry_wide_routes_twins_non_edge_devices_and_modules(
) {
    let setup = Setup::start("refused", &[]);
    let key = setup.device("gw", true);
    let other_key = setup.device("gw2", true);
    let leaf_key = setup.device("leaf", false);
    let own = setup.token("devices/gw", &key);
    let module = aziot_module("gw", "m");

    // its own device token, anywhere but its own modules
    for (method, path) in [
        ("GET", "/devices/gw2/modules"),
        ("PUT", "/devices/gw2/modules/m"),
        ("GET", "/devices"),
        ("GET", "/devices/gw"),
        ("DELETE", "/devices/gw"),
        ("GET", "/twins/gw"),
        ("GET", "/twins/gw2"),
        ("GET", "/twins/gw/modules/$edgeAgent"),
        ("GET", "/configurations"),
        ("POST", "/devices/query"),
        ("POST", "/devices/gw/applyConfigurationContent"),
        ("GET", "/statistics/devices"),
    ] {
        let body = (method != "GET").then(|| module.clone());
        assert_unauthorized(
            setup.call(&own, method, path, body, false),
            &format!("{method} {path}"),
        );
    }
    // another device's sr signed with this device's key, and the other way round
    let forged = setup.token("devices/gw2", &key);
    assert_unauthorized(
        setup.call(&forged, "GET", "/devices/gw2/modules", None, false),
        "sr of gw2, key of gw",
    );
    // a device that is not an IoT Edge device manages no modules
    let leaf = setup.token("devices/leaf", &leaf_key);
    assert_unauthorized(
        setup.call(
            &leaf,
            "PUT",
            "/devices/leaf/modules/m",
            Some(aziot_module("leaf", "m")),
            false,
        ),
        "a leaf device",
    );
    // a disabled edge device neither
    let (status, mut device) = setup.owner("GET", "/devices/gw2", None);
    assert_eq!(status, 200);
    device["status"] = json!("disabled");
    let (status, _) = setup.runtime.block_on(setup.hub.rest.call_as(
        "PUT",
        "/devices/gw2?api-version=2021-04-12",
        Some(device),
        owner_token(&setup).expose(),
        &[("If-Match", "*")],
    ));
    assert_eq!(status, 200, "disable gw2");
    let disabled = setup.token("devices/gw2", &other_key);
    assert_unauthorized(
        setup.call(&disabled, "GET", "/devices/gw2/modules", None, false),
        "a disabled device",
    );
    // a module's own token manages no modules, not even its siblings
    let (status, _) = setup.call(&own, "PUT", "/devices/gw/modules/m", Some(module), false);
    assert_eq!(status, 200);
    let module_token = setup.token("devices/gw/modules/m", MODULE_KEYS[0]);
    assert_unauthorized(
        setup.call(
            &module_token,
            "PUT",
            "/devices/gw/modules/m2",
            Some(aziot_module("gw", "m2")),
            false,
        ),
        "a module's token",
    );
    assert_unauthorized(
        setup.call(&module_token, "GET", "/devices/gw/modules/m", None, false),
        "a module's token reading itself",
    );
    // nothing of it landed
    let (_, modules) = setup.owner("GET", "/devices/gw2/modules", None);
    assert_eq!(
        modules.as_array().unwrap().len(),
        2,
        "gw2 has its system modules only"
    );
}

/// An `iothubowner` token for the whole hub.
fn owner_token(setup: &Setup) -> Secret {
    let key = setup.hub.info["policies"]["iothubowner"].as_str().unwrap();
    let resource = format!("{}:{}", setup.hub.host_name(), setup.hub.https_port());
    generate_token(
        &Secret::new(key),
        &resource,
        unix_now() as u64 + 600,
        Some("iothubowner"),
    )
    .unwrap()
}

#[test]
fn a_hub_without_its_workload_api_serves_no_socket_and_refuses_edge_environments_clearly() {
    let setup = Setup::start("no-workload", &["--no-workload-api"]);
    assert!(
        setup.hub.info.get("workloadDir").is_none(),
        "hub.json names no socket directory"
    );
    let key = setup.device("gw", true);
    let own = setup.token("devices/gw", &key);
    let (status, _) = setup.call(
        &own,
        "PUT",
        "/devices/gw/modules/m",
        Some(aziot_module("gw", "m")),
        false,
    );
    assert_eq!(status, 200, "module identities are still managed");
    let (status, body) = setup.owner(
        "GET",
        "/edgetwin/devices/gw/modules/m/edgeEnvironment",
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["Message"]
            .as_str()
            .is_some_and(|m| m.contains("--no-workload-api")),
        "the refusal says why: {body}"
    );
    let workload = setup.dir.join("hub").join("workload");
    assert!(!workload.exists(), "no socket directory: {workload:?}");
    assert!(setup.connects("gw", "m", MODULE_KEYS[0]), "MQTT is served");
}
