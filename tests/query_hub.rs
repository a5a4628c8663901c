//! `edgetwin query` as a process against a real `edgetwin hub` (ports 0): the documented twin
//! queries over tags, desired properties and system properties, paging through continuation
//! tokens, module twins, and the errors IoT Hub gives.

#[allow(dead_code)]
mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use support::{stderr_of_failure, stdout_of_success, HubOptions, TempDir};

/// A hub with six devices tagged like the documentation's sample twin (four in the US) whose
/// desired `telemetryConfig.sendFrequencyInSecs` differs, one IoT Edge device with a module.
struct Fleet {
    // Declared first: the hub stops before its directory goes.
    hub: support::Hub,
    _dir: TempDir,
}

const REGIONS: [(&str, &str, u32); 6] = [
    ("d1", "US", 300),
    ("d2", "US", 30),
    ("d3", "EU", 300),
    ("d4", "US", 60),
    ("d5", "EU", 300),
    ("d6", "US", 10),
];

impl Fleet {
    fn start(name: &str) -> Fleet {
        let dir = TempDir::new(&format!("query-{name}"));
        let options = HubOptions {
            rust_log: Some("warn"),
            timeout: Duration::from_secs(20),
            ..HubOptions::default()
        };
        let hub = support::Hub::start(dir.path(), options);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for (id, region, frequency) in REGIONS {
                let (status, body) = hub
                    .rest
                    .call("PUT", &format!("/devices/{id}"), Some(json!({"deviceId": id})))
                    .await;
                assert!(status < 300, "create {id}: {status} {body}");
                let patch = json!({
                    "tags": {"location": {"region": region, "plant": "Redmond43"}},
                    "properties": {"desired": {"telemetryConfig": {"sendFrequencyInSecs": frequency}}}
                });
                let (status, body) = hub
                    .rest
                    .call("PATCH", &format!("/twins/{id}"), Some(patch))
                    .await;
                assert_eq!(status, 200, "tag {id}: {body}");
            }
            hub.rest.create_edge_device("edge1").await;
            hub.rest.create_module("edge1", "scanner").await;
            hub.rest
                .patch_desired("edge1", "scanner", json!({"mode": "scanning"}))
                .await;
        });
        Fleet { hub, _dir: dir }
    }

    /// `edgetwin query QUERY ARGS`.
    fn run(&self, query: &str, args: &[&str]) -> Output {
        self.hub
            .edgetwin()
            .args(["query", query])
            .args(args)
            .output()
            .unwrap()
    }

    /// `edgetwin query QUERY --output json ARGS`: all rows.
    fn query(&self, query: &str, args: &[&str]) -> Vec<Value> {
        let out = self.run(query, &[&["--output", "json"], args].concat());
        let stdout = stdout_of_success(&format!("edgetwin query {query}"), &out);
        serde_json::from_str::<Vec<Value>>(&stdout).unwrap()
    }

    fn device_ids(&self, query: &str) -> Vec<String> {
        self.query(query, &[])
            .iter()
            .map(|twin| twin["deviceId"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[test]
fn the_documented_device_twin_queries_return_what_iot_hub_documents() {
    let fleet = Fleet::start("docs");
    let all = fleet.query("SELECT * FROM devices", &[]);
    assert_eq!(all.len(), 7);
    let d1 = &all[0];
    for field in [
        "deviceId",
        "etag",
        "deviceEtag",
        "status",
        "statusUpdateTime",
        "connectionState",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "authenticationType",
        "x509Thumbprint",
        "modelId",
        "capabilities",
        "version",
        "tags",
        "properties",
    ] {
        assert!(d1.get(field).is_some(), "SELECT * twin lacks {field}: {d1}");
    }
    assert!(d1["properties"]["desired"]["$version"].is_number(), "{d1}");
    assert!(d1["properties"]["desired"]["$metadata"].is_object(), "{d1}");

    assert_eq!(
        fleet.device_ids("SELECT * FROM devices WHERE tags.location.region = 'US'"),
        ["d1", "d2", "d4", "d6"]
    );
    assert_eq!(
        fleet.device_ids(
            "SELECT * FROM devices WHERE tags.location.region = 'US' \
             AND properties.desired.telemetryConfig.sendFrequencyInSecs >= 60"
        ),
        ["d1", "d4"]
    );
    assert_eq!(
        fleet.device_ids(
            "SELECT * FROM devices WHERE deviceId IN ['d3', 'edge1'] OR STARTSWITH(deviceId, 'd6')"
        ),
        ["d3", "d6", "edge1"]
    );
    assert_eq!(
        fleet.device_ids("SELECT * FROM devices WHERE capabilities.iotEdge = true"),
        ["edge1"]
    );
    assert_eq!(
        fleet.device_ids("SELECT * FROM devices WHERE NOT is_defined(tags.location)"),
        ["edge1"]
    );
    assert_eq!(
        fleet.query("SELECT COUNT() as totalNumberOfDevices FROM devices", &[]),
        [json!({"totalNumberOfDevices": 7})]
    );
    assert_eq!(
        fleet.query(
            "SELECT tags.location.region AS region, COUNT() AS numberOfDevices FROM devices \
             WHERE is_defined(tags.location) GROUP BY tags.location.region",
            &[]
        ),
        [
            json!({"region": "US", "numberOfDevices": 4}),
            json!({"region": "EU", "numberOfDevices": 2})
        ]
    );
    let projected = fleet.query(
        "SELECT DeviceId, LastActivityTime FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected' AND deviceId = 'd2'",
        &[],
    );
    assert_eq!(projected.len(), 1);
    let keys: Vec<&String> = projected[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["deviceId", "lastActivityTime"], "{projected:?}");
}

#[test]
fn module_twins_are_queried_from_devices_modules() {
    let fleet = Fleet::start("modules");
    let modules = fleet.query("SELECT * FROM devices.modules", &[]);
    let ids: Vec<(&str, &str)> = modules
        .iter()
        .map(|m| {
            (
                m["deviceId"].as_str().unwrap(),
                m["moduleId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("edge1", "$edgeAgent"),
            ("edge1", "$edgeHub"),
            ("edge1", "scanner")
        ]
    );
    // Paged two at a time, the continuation resumes after (device, module): the same three.
    assert_eq!(
        fleet.query("SELECT * FROM devices.modules", &["--page-size", "2"]),
        modules
    );
    let scanning = fleet.query(
        "SELECT deviceId, moduleId FROM devices.modules WHERE properties.desired.mode = 'scanning' AND deviceId IN ['edge1', 'd1']",
        &[],
    );
    assert_eq!(
        scanning,
        [json!({"deviceId": "edge1", "moduleId": "scanner"})]
    );
}

#[test]
fn a_small_page_size_takes_several_pages_and_still_returns_every_row_once() {
    let fleet = Fleet::start("paging");
    let out = fleet.run("SELECT deviceId FROM devices", &["--page-size", "2"]);
    let stdout = stdout_of_success("edgetwin query --page-size 2", &out);
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d1", "d2", "d3", "d4", "d5", "d6", "edge1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("7 row(s) of type raw in 4 page(s)"),
        "{stderr}"
    );
    assert_eq!(
        fleet
            .query("SELECT TOP 3 * FROM devices", &["--page-size", "2"])
            .len(),
        3
    );
}

#[test]
fn an_invalid_query_is_a_400_saying_where_and_other_devices_keep_being_served() {
    let fleet = Fleet::start("errors");
    let out = fleet.run("SELECT * FROM devices WHERE tags.location.region = ", &[]);
    let stderr = stderr_of_failure("a query without its constant", &out);
    assert!(stderr.contains("400"), "{stderr}");
    assert!(stderr.contains("ArgumentInvalid"), "{stderr}");
    assert!(stderr.contains("The query is invalid"), "{stderr}");
    assert!(stderr.contains("character 51"), "{stderr}");

    let out = fleet.run(
        "SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'd')",
        &[],
    );
    let stderr = stderr_of_failure("STARTS_WITH in a twin query", &out);
    assert!(
        stderr.contains("unknown function 'STARTS_WITH'"),
        "{stderr}"
    );

    assert_eq!(
        fleet.query("SELECT COUNT() AS n FROM devices", &[]),
        [json!({"n": 7})]
    );
}

#[test]
fn queries_need_registry_read() {
    let fleet = Fleet::start("policy");
    // The owner's connection string with another policy's name and key.
    let policy = |name: &str| {
        let owner = fleet.hub.service_connection_string();
        let host = owner.split(';').next().unwrap();
        let key = fleet.hub.info["policies"][name].as_str().unwrap();
        format!("{host};SharedAccessKeyName={name};SharedAccessKey={key}")
    };
    let out = fleet.run(
        "SELECT * FROM devices",
        &["--connection-string", &policy("service")],
    );
    let stderr = stderr_of_failure("a query with the service policy", &out);
    assert!(stderr.contains("RegistryRead"), "{stderr}");
    let reader = fleet.query(
        "SELECT COUNT() AS n FROM devices",
        &["--connection-string", &policy("registryRead")],
    );
    assert_eq!(reader, [json!({"n": 7})]);
}
