//! IoT Hub's query language over device and module twins, and the target conditions of
//! deployments (the same expressions without SELECT): one grammar for the hub's
//! `POST /devices/query`, its deployment evaluation and edgeHub route conditions.
//!
//! - [`lexer`]: tokens with their offsets.
//! - [`ast`]: the syntax tree.
//! - [`parser`]: [`parse_query`] and [`parse_condition`], errors carry the offset.
//! - [`eval`]: expressions over one twin document, three-valued.
//! - [`exec`]: a query over its collection: filter, GROUP BY, projections, aggregates, TOP.
//! - [`page`]: `x-ms-max-item-count` and `x-ms-continuation`.
//!
//! What it follows: "IoT Hub query language for device and module twins, jobs, and message
//! routing" and "Queries for IoT Hub device and module twins" (Microsoft Learn); functions of
//! twin queries are `IS_DEFINED`, the `IS_<type>` family, `STARTSWITH`/`ENDSWITH` (IoT Hub
//! refuses `STARTS_WITH` in twin queries, MicrosoftDocs/azure-docs#110329) and `ARRAY_CONTAINS`
//! (what the Azure CLI's `device-identity children list` queries with).

pub mod ast;
pub mod error;
pub mod eval;
pub mod exec;
pub mod lexer;
pub mod page;
pub mod parser;

pub use ast::{Collection, Expr, Query};
pub use error::QueryError;
pub use eval::holds;
pub use exec::ItemType;
pub use parser::{parse_condition, parse_query};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Device twins shaped like the documentation's sample twin: three report a successful
    /// telemetry configuration, two pending, one an error; four are in the US.
    fn devices() -> Vec<Value> {
        let twin = |id: &str, region: &str, status: &str, frequency: u32, connectivity: &str| {
            json!({
                "deviceId": id, "etag": "AAAAAAAAAAc=", "status": "enabled",
                "connectionState": if id == "d6" { "Connected" } else { "Disconnected" },
                "lastActivityTime": "0001-01-01T00:00:00Z",
                "tags": { "location": { "region": region, "plant": "Redmond43" } },
                "properties": {
                    "desired": { "telemetryConfig": { "sendFrequencyInSecs": frequency }, "$version": 4 },
                    "reported": {
                        "connectivity": connectivity,
                        "telemetryConfig": { "sendFrequencyInSecs": frequency, "status": status },
                        "$version": 7
                    }
                }
            })
        };
        vec![
            twin("d1", "US", "Success", 300, "wired"),
            twin("d2", "US", "Success", 30, "wifi"),
            twin("d3", "EU", "Success", 300, "cellular"),
            twin("d4", "US", "Pending", 60, "wired"),
            twin("d5", "EU", "Pending", 300, "cellular"),
            twin("d6", "US", "Error", 10, "wifi"),
            json!({ "deviceId": "bare", "status": "disabled", "connectionState": "Disconnected",
                    "tags": {}, "properties": { "desired": {}, "reported": {} } }),
        ]
    }

    fn modules() -> Vec<Value> {
        let module = |device: &str, module: &str, status: &str| {
            json!({ "deviceId": device, "moduleId": module,
                    "properties": { "reported": { "status": status } } })
        };
        vec![
            module("device1", "scanner", "scanning"),
            module("device2", "scanner", "idle"),
            module("device3", "scanner", "scanning"),
            module("device2", "other", "scanning"),
        ]
    }

    /// Each device's part in two jobs, as `FROM devices.jobs` reads them.
    fn device_jobs() -> Vec<Value> {
        let record = |device: &str, job: &str, status: &str| {
            json!({ "deviceId": device, "jobId": job, "jobType": "scheduleUpdateTwin",
                    "status": status, "outcome": { "deviceMethodResponse": null } })
        };
        vec![
            record("d1", "j1", "completed"),
            record("d2", "j1", "failed"),
            record("d1", "j2", "pending"),
        ]
    }

    #[test]
    fn devices_jobs_are_queried_with_their_devices_jobs_prefix_as_the_documentation_writes_them() {
        let rows = run("SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'd1'");
        assert_eq!(ids(&rows, "jobId"), ["j1", "j2"]);
        let rows = run("SELECT * FROM devices.jobs
                        WHERE devices.jobs.jobId = 'j1' AND devices.jobs.status = 'completed'");
        assert_eq!(ids(&rows, "deviceId"), ["d1"]);
        assert_eq!(run("SELECT * FROM devices.jobs").len(), 3);
        let query = parse_query("SELECT * FROM devices.jobs").unwrap();
        assert_eq!(query.item_type(), ItemType::DeviceJob);
    }

    fn run(text: &str) -> Vec<Value> {
        let query = parse_query(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let documents = match query.from {
            Collection::Devices => devices(),
            Collection::Modules => modules(),
            Collection::Jobs => device_jobs(),
        };
        query.run(&documents)
    }

    fn ids(rows: &[Value], key: &str) -> Vec<String> {
        rows.iter()
            .map(|r| r[key].as_str().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn select_star_from_devices_returns_every_device_twin_whole() {
        let rows = run("SELECT * FROM devices");
        assert_eq!(rows, devices());
        assert_eq!(
            parse_query("SELECT * FROM devices").unwrap().item_type(),
            ItemType::Twin
        );
    }

    #[test]
    fn the_documented_where_clauses_select_what_the_documentation_says() {
        assert_eq!(
            ids(
                &run("SELECT * FROM devices WHERE tags.location.region = 'US'"),
                "deviceId"
            ),
            ["d1", "d2", "d4", "d6"]
        );
        assert_eq!(
            ids(
                &run("SELECT * FROM devices
                        WHERE tags.location.region = 'US'
                          AND properties.reported.telemetryConfig.sendFrequencyInSecs >= 60"),
                "deviceId"
            ),
            ["d1", "d4"]
        );
        assert_eq!(
            ids(
                &run("SELECT * FROM devices WHERE properties.reported.connectivity IN ['wired', 'wifi']"),
                "deviceId"
            ),
            ["d1", "d2", "d4", "d6"]
        );
        assert_eq!(
            ids(
                &run("SELECT * FROM devices WHERE is_defined(properties.reported.connectivity)"),
                "deviceId"
            ),
            ["d1", "d2", "d3", "d4", "d5", "d6"]
        );
    }

    #[test]
    fn count_as_an_alias_is_one_row_with_the_alias_as_written() {
        assert_eq!(
            run("SELECT COUNT() as totalNumberOfDevices FROM devices"),
            [json!({ "totalNumberOfDevices": 7 })]
        );
        assert_eq!(
            run("SELECT COUNT() AS n FROM devices WHERE deviceId = 'nobody'"),
            [json!({ "n": 0 })]
        );
        let query = parse_query("SELECT COUNT() AS n FROM devices").unwrap();
        assert_eq!(query.item_type(), ItemType::Raw);
    }

    #[test]
    fn aggregates_without_a_name_are_numbered_dollar_one_dollar_two() {
        assert_eq!(run("SELECT COUNT() FROM devices"), [json!({ "$1": 7 })]);
        assert_eq!(
            run("SELECT COUNT(), MAX(tags.missing), SUM(properties.desired.telemetryConfig.sendFrequencyInSecs) FROM devices WHERE tags.location.region = 'EU'"),
            [json!({ "$1": 2, "$3": 600 })]
        );
    }

    #[test]
    fn group_by_counts_the_devices_in_each_telemetry_configuration_status() {
        let rows = run(
            "SELECT properties.reported.telemetryConfig.status AS status,
                            COUNT() AS numberOfDevices
                          FROM devices
                          GROUP BY properties.reported.telemetryConfig.status",
        );
        assert_eq!(
            rows,
            [
                json!({ "status": "Success", "numberOfDevices": 3 }),
                json!({ "status": "Pending", "numberOfDevices": 2 }),
                json!({ "status": "Error", "numberOfDevices": 1 }),
                json!({ "numberOfDevices": 1 }),
            ]
        );
    }

    #[test]
    fn a_projection_returns_the_selected_properties_under_the_documents_own_names() {
        assert_eq!(
            run("SELECT DeviceId, LastActivityTime FROM devices WHERE status = 'enabled' AND connectionState = 'Disconnected'"),
            ["d1", "d2", "d3", "d4", "d5"]
                .map(|id| json!({ "deviceId": id, "lastActivityTime": "0001-01-01T00:00:00Z" }))
        );
        assert_eq!(
            run("SELECT LastActivityTime FROM devices WHERE status = 'enabled'").len(),
            6
        );
        assert_eq!(
            run("SELECT deviceId, tags.location.region AS r FROM devices WHERE deviceId = 'd3'"),
            [json!({ "deviceId": "d3", "r": "EU" })]
        );
    }

    #[test]
    fn module_twin_queries_read_devices_modules() {
        assert_eq!(run("SELECT * FROM devices.modules").len(), 4);
        let scanning =
            run("Select * from devices.modules where properties.reported.status = 'scanning'");
        assert_eq!(
            ids(&scanning, "deviceId"),
            ["device1", "device3", "device2"]
        );
        let subset = run("Select * from devices.modules
                            where properties.reported.status = 'scanning'
                            and deviceId IN ['device1', 'device2']");
        assert_eq!(ids(&subset, "moduleId"), ["scanner", "other"]);
    }

    #[test]
    fn top_limits_the_rows_and_aggregates_sum_average_and_bound() {
        assert_eq!(run("SELECT TOP 2 * FROM devices").len(), 2);
        assert_eq!(
            run(
                "SELECT SUM(properties.desired.telemetryConfig.sendFrequencyInSecs) AS s,
                        AVG(properties.desired.telemetryConfig.sendFrequencyInSecs) AS a,
                        MIN(properties.desired.telemetryConfig.sendFrequencyInSecs) AS lo,
                        MAX(properties.desired.telemetryConfig.sendFrequencyInSecs) AS hi
                 FROM devices WHERE tags.location.region = 'EU'"
            ),
            [json!({ "s": 600, "a": 300, "lo": 300, "hi": 300 })]
        );
    }

    #[test]
    fn syntax_errors_name_the_offset_of_the_problem() {
        let cases = [
            ("SELECT * FROM devices WHERE", 27),
            ("SELECT * FROM devices WHERE tags.a = ", 37),
            ("SELECT * FORM devices", 9),
            ("SELECT * FROM things", 14),
            ("SELECT deviceId FROM devices.jobs", 7),
            ("SELECT deviceId, COUNT() AS n FROM devices", 7),
            (
                "SELECT tags.a AS a, COUNT() AS n FROM devices GROUP BY tags.b",
                7,
            ),
            ("SELECT * FROM devices GROUP BY tags.a", 7),
            ("SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'a')", 28),
            ("SELECT * FROM devices WHERE IS_DEFINED(tags.a, tags.b)", 28),
            ("SELECT * FROM devices WHERE tags.a IN 'x'", 38),
            ("SELECT * FROM devices extra", 22),
            ("SELECT TOP x * FROM devices", 11),
        ];
        for (text, offset) in cases {
            let error = parse_query(text).unwrap_err();
            assert_eq!(error.offset, offset, "{text}: {error}");
        }
        let long = format!(
            "SELECT * FROM devices WHERE deviceId = '{}'",
            "x".repeat(8200)
        );
        assert!(parse_query(&long).unwrap_err().reason.contains("8192"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for deep in [
            "(".repeat(4000),
            "NOT ".repeat(2000),
            "- ".repeat(4000),
            "[".repeat(4000),
        ] {
            let text = format!("SELECT * FROM devices WHERE {deep}");
            assert!(
                parse_query(&text).unwrap_err().reason.contains("nested"),
                "{deep:.8}"
            );
        }
    }

    #[test]
    fn keywords_are_case_insensitive_and_configuration_ids_may_be_bracketed() {
        let query = parse_query(
            "select deviceId from DEVICES.modules where moduleId = '$edgeAgent' and configurations.[[my-deploy.v1]].status = 'Applied'",
        )
        .unwrap();
        let twin = json!({ "deviceId": "e1", "moduleId": "$edgeAgent",
                           "configurations": { "my-deploy.v1": { "status": "Applied" } } });
        assert_eq!(query.run(&[twin]), [json!({ "deviceId": "e1" })]);
    }

    #[test]
    fn iot_hubs_own_queries_of_a_device_configuration_and_row_counts_of_custom_metrics() {
        let twin = |device: &str, ring: &str, status: Option<&str>| {
            let mut twin = json!({ "deviceId": device, "tags": { "ring": ring } });
            if let Some(status) = status {
                twin["configurations"] = json!({ "fw": { "status": status } });
            }
            twin
        };
        let twins = [
            twin("d1", "a", Some("Applied")),
            twin("d2", "a", Some("Targeted")),
            twin("d3", "b", None),
        ];
        let queries = crate::rest::device_configuration_queries("fw", "tags.ring = 'a'");
        let count = |text: &str| {
            let query = parse_query(text).unwrap();
            let documents = twins.iter().cloned().map(Ok::<_, ()>);
            query.count_rows(documents).unwrap()
        };
        assert_eq!(count(queries["targetedCount"].as_str().unwrap()), 2);
        assert_eq!(count(queries["appliedCount"].as_str().unwrap()), 1);
        assert_eq!(count("SELECT TOP 1 deviceId FROM devices"), 1);
        assert_eq!(count("SELECT COUNT() AS n FROM devices"), 1, "one row");
        let empty = crate::rest::device_configuration_queries("fw", " ");
        assert_eq!(
            empty["targetedCount"], "",
            "IoT Hub's text without a target condition"
        );
    }

    #[test]
    fn iot_hubs_own_system_metric_queries_of_an_edge_deployment_count_what_edge_agent_reported() {
        // `$edgeAgent` twins: done at the desired version, failed at it, still applying an older
        // one, and only targeted (a higher-priority deployment won); one module that is not
        // `$edgeAgent` claims success too.
        let agent = |device: &str, module: &str, status: &str, version: i64, code: Value| {
            json!({ "deviceId": device, "moduleId": module,
                    "configurations": { "ring-a": { "status": status } },
                    "properties": {
                        "desired": { "$version": 4 },
                        "reported": { "lastDesiredVersion": version,
                                      "lastDesiredStatus": { "code": code } } } })
        };
        let modules = [
            agent("done", "$edgeAgent", "Applied", 4, json!(200)),
            agent("failed", "$edgeAgent", "Applied", 4, json!(400)),
            agent("applying", "$edgeAgent", "Applied", 3, json!(200)),
            agent("outranked", "$edgeAgent", "Targeted", 4, json!(200)),
            agent("done", "edgetwin", "Applied", 4, json!(200)),
        ];
        let queries = crate::rest::edge_deployment_queries("ring-a", "tags.ring = 'a'");
        let rows = |metric: &str| {
            let query = parse_query(queries[metric].as_str().unwrap()).unwrap();
            ids(&query.run(&modules), "deviceId")
        };
        assert_eq!(
            rows(crate::rest::APPLIED_COUNT),
            ["done", "failed", "applying"]
        );
        assert_eq!(rows(crate::rest::REPORTED_SUCCESSFUL_COUNT), ["done"]);
        assert_eq!(rows(crate::rest::REPORTED_FAILED_COUNT), ["failed"]);
        let targeted = parse_query(queries[crate::rest::TARGETED_COUNT].as_str().unwrap()).unwrap();
        let device = |id: &str, edge: bool, ring: &str| json!({ "deviceId": id, "capabilities": { "iotEdge": edge }, "tags": { "ring": ring } });
        let devices = [
            device("edge-a", true, "a"),
            device("leaf-a", false, "a"),
            device("edge-b", true, "b"),
        ];
        assert_eq!(ids(&targeted.run(&devices), "deviceId"), ["edge-a"]);
    }
}
