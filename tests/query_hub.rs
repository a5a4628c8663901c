//! `edgetwin query` as a process against a real `edgetwin hub` (ports 0): the documented twin
//! queries over tags, desired properties and system properties, paging through continuation
//! tokens, module twins, and the errors IoT Hub gives.

use edgetwin_test_support as support;

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
    /// A hub with no devices yet, logging warnings only.
    fn empty(name: &str) -> Fleet {
        let dir = TempDir::new(&format!("query-{name}"));
        let options = HubOptions {
            rust_log: Some("warn"),
            timeout: Duration::from_secs(20),
            ..HubOptions::default()
        };
        Fleet {
            hub: support::Hub::start(dir.path(), options),
            _dir: dir,
        }
    }

    fn start(name: &str) -> Fleet {
        let fleet = Fleet::empty(name);
        let hub = &fleet.hub;
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
        fleet
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

/// The pages of `query` from the start, `size` rows a page, asked as `rest`'s caller; `between`
/// runs after the first page.
async fn all_pages(
    rest: &support::Rest,
    query: &str,
    size: &str,
    between: impl std::future::Future<Output = ()>,
) -> Vec<Value> {
    let (mut rows, mut token, mut between) = (Vec::new(), None, Some(between));
    loop {
        let (status, page, next) = rest.query_page(query, token.as_deref(), Some(size)).await;
        assert_eq!(status, 200, "{query}: {page}");
        rows.extend(page.as_array().unwrap().iter().cloned());
        if let Some(between) = between.take() {
            between.await;
        }
        match next {
            Some(next) => token = Some(next),
            None => return rows,
        }
    }
}

#[test]
fn a_grouped_query_is_grouped_once_and_its_pages_neither_repeat_nor_skip_a_group() {
    let fleet = Fleet::start("grouped-pages");
    let rest = &fleet.hub.rest;
    let query = "SELECT deviceId AS id, COUNT() AS n FROM devices GROUP BY deviceId";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(all_pages(rest, query, "2", async {
        // A device that sorts first, created after the first page: re-grouping on every page
        // would shift every later group by one and answer `d2` twice.
        let (status, body) = rest
            .call("PUT", "/devices/a0", Some(json!({"deviceId": "a0"})))
            .await;
        assert_eq!(status, 200, "{body}");
    }));
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d1", "d2", "d3", "d4", "d5", "d6", "edge1"]);
    assert!(rows.iter().all(|r| r["n"] == 1), "{rows:?}");
}

/// The decoded bytes of a continuation token with the count of rows returned (the decimal
/// before the first `:` of its text, after the 32 bytes of its MAC) replaced by `returned`.
fn with_returned(token: &str, returned: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut bytes = engine.decode(token).unwrap();
    let colon = 32 + bytes[32..].iter().position(|b| *b == b':').unwrap();
    bytes.splice(32..colon, returned.bytes());
    engine.encode(bytes)
}

/// `token` with the first `from` in its decoded bytes replaced by `to`.
fn replaced(token: &str, from: &str, to: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut bytes = engine.decode(token).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from} not in the token"));
    bytes.splice(at..at + from.len(), to.bytes());
    engine.encode(bytes)
}

#[test]
fn forged_continuation_tokens_and_page_sizes_iot_hub_would_not_take_are_400s() {
    let fleet = Fleet::start("tokens");
    let reader = support::Rest::with_policy(&fleet.hub.info, "registryRead", true);
    let query = "SELECT deviceId FROM devices";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (status, rows, token) = reader.query_page(query, None, Some("2")).await;
        assert_eq!((status, rows.as_array().unwrap().len()), (200, 2));
        let token = token.expect("a continuation after 2 of 7 rows");
        // The real token goes on after d2.
        let (status, rows, _) = reader.query_page(query, Some(&token), Some("2")).await;
        assert_eq!(rows[0]["deviceId"], "d3", "{status} {rows}");
        for (what, forged) in [
            (
                "skips to after d4",
                replaced(&token, "[\"d2\"]", "[\"d4\"]"),
            ),
            (
                "counts 2^64-1 rows returned",
                with_returned(&token, &u64::MAX.to_string()),
            ),
        ] {
            let (status, body, _) = reader.query_page(query, Some(&forged), Some("2")).await;
            assert_eq!(status, 400, "a token that {what}: {body}");
            assert!(body.to_string().contains("x-ms-continuation"), "{body}");
        }
        for size in ["0", "-1", "abc"] {
            let (status, body, _) = reader.query_page(query, None, Some(size)).await;
            assert_eq!(status, 400, "x-ms-max-item-count {size}: {body}");
            assert!(
                body.to_string().contains("x-ms-max-item-count"),
                "{size}: {body}"
            );
        }
        // What SDKs send: no header, or a page size; more than 100 is served 100 at a time.
        let (status, rows, _) = reader.query_page(query, None, None).await;
        assert_eq!((status, rows.as_array().unwrap().len()), (200, 7));
        let (status, rows, _) = reader.query_page(query, None, Some("5000")).await;
        assert_eq!((status, rows.as_array().unwrap().len()), (200, 7));
    });
}

/// Bulk-imports `count` devices `big-N` whose twins are near IoT Hub's size limits (8 KB of
/// tags, 28 KB of desired properties), 100 to a request.
async fn import_big_twins(hub: &support::Hub, count: usize) {
    let text = "x".repeat(4000);
    let desired: serde_json::Map<String, Value> =
        (0..7).map(|i| (format!("p{i}"), json!(text))).collect();
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|n| {
                json!({"id": format!("big-{n:05}"), "importMode": "create",
                       "tags": {"group": n % 10, "note": text},
                       "properties": {"desired": desired}})
            })
            .collect();
        let (status, body) = hub.rest.call("POST", "/devices", Some(json!(items))).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// A hub of `count` big twins ([`import_big_twins`]), its directory, and `clients`
/// registryRead REST clients.
async fn big_fleet(
    name: &str,
    count: usize,
    clients: usize,
) -> (Fleet, Vec<std::sync::Arc<support::Rest>>) {
    let fleet = Fleet::empty(name);
    let hub = &fleet.hub;
    import_big_twins(hub, count).await;
    let readers = (0..clients)
        .map(|_| support::Rest::with_policy(&hub.info, "registryRead", true).into())
        .collect();
    (fleet, readers)
}

const AGGREGATES: [&str; 2] = [
    "SELECT COUNT() AS n FROM devices",
    "SELECT tags.group AS g, COUNT() AS n FROM devices GROUP BY tags.group",
];

/// Runs `AGGREGATES` as `readers` (one each, alternating), all at once; the hub's largest RSS
/// meanwhile, in KiB, and the answers.
async fn aggregates_at_once(
    hub: &support::Hub,
    readers: &[std::sync::Arc<support::Rest>],
) -> (u64, Vec<Value>) {
    let started = readers.iter().enumerate().map(|(i, reader)| {
        let reader = reader.clone();
        tokio::spawn(async move {
            let query = AGGREGATES[i % 2];
            let (status, rows, _) = reader.query_page(query, None, None).await;
            assert_eq!(status, 200, "{query}: {rows}");
            rows
        })
    });
    let tasks: Vec<_> = started.collect();
    let mut most = hub.proc.memory_kib().0;
    while !tasks.iter().all(|t| t.is_finished()) {
        most = most.max(hub.proc.memory_kib().0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    (most, answers)
}

/// Loops `AGGREGATES` as each of `readers` until `stop`; how long each query took.
fn loop_aggregates(
    readers: &[std::sync::Arc<support::Rest>],
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Duration>>> {
    let looping = readers.iter().enumerate().map(|(i, reader)| {
        let (reader, stop) = (reader.clone(), stop.clone());
        tokio::spawn(async move {
            let mut took = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let (status, rows, _) = reader.query_page(AGGREGATES[i % 2], None, None).await;
                assert_eq!(status, 200, "{rows}");
                took.push(started.elapsed());
            }
            took
        })
    });
    looping.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_read_clients_aggregating_big_twins_neither_grow_the_hub_nor_delay_a_connect() {
    let (fleet, readers) = big_fleet("aggregates", 250, 8).await;
    let hub = &fleet.hub;

    // Four aggregates at once over 250 twins of ~36 KB: holding the twins would be ~40 MiB.
    let (before, _) = hub.proc.memory_kib();
    let (most, answers) = aggregates_at_once(hub, &readers[..4]).await;
    assert_eq!(answers[0], json!([{"n": 250}]));
    assert_eq!(answers[1].as_array().unwrap().len(), 10, "{}", answers[1]);
    assert!(
        most.saturating_sub(before) < 16 * 1024,
        "hub RSS {before} KiB before, {most} KiB at most during the aggregates"
    );

    // Eight clients loop them while a device connects ten times.
    let key = hub.rest.create_device("sensor").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops = loop_aggregates(&readers, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut connects = Vec::new();
    for _ in 0..10 {
        let (_stream, took) = support::mqtt_device(hub, "sensor", &key, &[]).await;
        connects.push(took);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut queries = Vec::new();
    for task in loops {
        queries.extend(task.await.unwrap());
    }
    queries.sort();
    let median_query = queries[queries.len() / 2];
    let slowest_connect = connects.iter().max().unwrap();
    // Waiting behind a query for a read connection, a CONNECT would take about half a query
    // or more; with connections of its own it takes what it takes alone.
    assert!(
        *slowest_connect < median_query / 2,
        "slowest CONNECT→CONNACK {slowest_connect:?}, median query {median_query:?} \
         (connects {connects:?})"
    );
}
