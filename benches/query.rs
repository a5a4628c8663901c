//! Query benchmark (not a timed test): a fresh local hub (`edgetwin hub`, ports 0) with N IoT
//! Edge devices, each with one module (so 4 twins a device: the device, `$edgeAgent`, `$edgeHub`
//! and the module), then `edgetwin query ... --output json` for whole-collection queries that
//! page through every twin and for aggregates that read them all. Wall times include the CLI's
//! process start-up and every page it follows. Run it with the release build when the machine
//! is idle:
//!
//! ```text
//! cargo bench --bench query                    # N=10000, median of 5 runs
//! cargo bench --bench query -- --count 1000 --runs 3
//! ```
//!
//! It prints a markdown table and the load average before and after.

use edgetwin_test_support as support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{load_average, number_args, stdout_of_success, Hub, HubOptions, TempDir};

const QUERIES: [&str; 5] = [
    "SELECT COUNT() AS n FROM devices",
    "SELECT * FROM devices",
    "SELECT * FROM devices.modules",
    "SELECT deviceId FROM devices WHERE STARTSWITH(deviceId, 'bench-1')",
    "SELECT moduleId, COUNT() AS n FROM devices.modules GROUP BY moduleId",
];

fn main() {
    let [count, runs] = number_args([("--count", 10_000), ("--runs", 5)]);
    println!("load average before: {}", load_average());
    let dir = TempDir::new("bench-query");
    let options = HubOptions {
        rust_log: Some("warn"),
        timeout: Duration::from_secs(60),
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), options);
    let count_arg = count.to_string();
    let out = hub
        .edgetwin()
        .args(["provision", "--count", &count_arg, "--prefix", "bench-"])
        .args(["--module", "edgetwin", "--rate", "0"])
        .output()
        .unwrap();
    stdout_of_success("edgetwin provision", &out);

    println!(
        "\n{count} edge devices, {} twins; median of {runs} runs\n",
        count * 4
    );
    println!("| query | rows | wall time |");
    println!("|---|---:|---:|");
    for query in QUERIES {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let out = hub
                .edgetwin()
                .args(["query", query, "--output", "json"])
                .output()
                .unwrap();
            times.push(start.elapsed());
            let stdout = stdout_of_success(query, &out);
            rows = serde_json::from_str::<Vec<Value>>(&stdout).unwrap().len();
        }
        times.sort();
        let median = times[times.len() / 2];
        println!("| `{query}` | {rows} | {:.2} s |", median.as_secs_f64());
    }
    println!("\nload average after: {}", load_average());
}
