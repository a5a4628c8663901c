//! Writable properties: desired values validated into the settings in force, each answered
//! with an IoT Plug and Play acknowledgement `{value, ac, av, ad}` (docs/spec/iothub-device-protocol.md §7). Pure.

use edgetwin_wire::twin::Properties;
use serde_json::{json, Map, Value};

/// Longest telemetry interval: one day.
pub const MAX_INTERVAL: u64 = 86_400;

/// A metric the module can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `/proc/loadavg`.
    Load,
    /// `/proc/meminfo`.
    Memory,
    /// `statvfs` of the disk path: used percent as `df` computes it.
    Disk,
    /// `/proc/uptime`.
    Uptime,
    /// `/sys/class/thermal/thermal_zone0/temp`, where present.
    Temperature,
}

impl Metric {
    /// Every metric, in telemetry order.
    pub const ALL: [Metric; 5] = [
        Metric::Load,
        Metric::Memory,
        Metric::Disk,
        Metric::Uptime,
        Metric::Temperature,
    ];

    /// The name used in the twin and in telemetry.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Load => "load",
            Metric::Memory => "memory",
            Metric::Disk => "disk",
            Metric::Uptime => "uptime",
            Metric::Temperature => "temperature",
        }
    }

    /// The metric of a name.
    pub fn from_name(name: &str) -> Option<Self> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Alert thresholds (also the `thresholds` table of the start-up configuration).
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// CPU temperature, °C.
    pub cpu_temperature: f64,
    /// Memory use, percent.
    pub memory_percent: f64,
    /// Disk use, percent.
    pub disk_percent: f64,
}

/// The settings in force.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Seconds between telemetry messages (1..=86400).
    pub telemetry_interval: u64,
    /// What telemetry carries.
    pub metrics: Vec<Metric>,
    /// When to alert.
    pub thresholds: Thresholds,
}

/// The writable property names.
pub const TELEMETRY_INTERVAL: &str = "telemetryInterval";
/// See [`TELEMETRY_INTERVAL`].
pub const METRICS: &str = "metrics";
/// See [`TELEMETRY_INTERVAL`].
pub const THRESHOLDS: &str = "thresholds";
/// Every writable property.
pub const WRITABLE: [&str; 3] = [TELEMETRY_INTERVAL, METRICS, THRESHOLDS];

impl Settings {
    /// Checks ranges; the reason is fit for `ad`.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(1..=MAX_INTERVAL).contains(&self.telemetry_interval) {
            return Err("telemetryInterval must be an integer number of seconds in 1..=86400");
        }
        if self.metrics.is_empty() {
            return Err("metrics must name at least one metric");
        }
        Ok(())
    }

    /// The twin value of a writable property.
    pub fn value_of(&self, name: &str) -> Value {
        match name {
            TELEMETRY_INTERVAL => json!(self.telemetry_interval),
            METRICS => Value::Array(self.metrics.iter().map(|m| Value::from(m.name())).collect()),
            _ => json!({
                "cpuTemperature": self.thresholds.cpu_temperature,
                "memoryPercent": self.thresholds.memory_percent,
                "diskPercent": self.thresholds.disk_percent,
            }),
        }
    }

    /// The settings as the `getConfig` method returns them.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        for name in WRITABLE {
            map.insert(name.to_owned(), self.value_of(name));
        }
        Value::Object(map)
    }
}

fn parse_interval(value: &Value) -> Result<u64, String> {
    let n = match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        _ => None,
    };
    match n {
        Some(n) if (1..=MAX_INTERVAL as i64).contains(&n) => Ok(n as u64),
        Some(n) => Err(format!("telemetryInterval {n} is out of range 1..=86400")),
        None => Err(format!(
            "telemetryInterval must be an integer number of seconds, got {value}"
        )),
    }
}

fn parse_metrics(value: &Value) -> Result<Vec<Metric>, String> {
    let Value::Array(items) = value else {
        return Err("metrics must be an array of metric names".into());
    };
    let mut metrics = Vec::new();
    for item in items {
        let name = item.as_str().unwrap_or_default();
        let metric = Metric::from_name(name).ok_or_else(|| {
            format!("unknown metric {item}; known: load, memory, disk, uptime, temperature")
        })?;
        if !metrics.contains(&metric) {
            metrics.push(metric);
        }
    }
    if metrics.is_empty() {
        return Err("metrics must name at least one metric".into());
    }
    Ok(metrics)
}

fn parse_thresholds(value: &Value, defaults: &Thresholds) -> Result<Thresholds, String> {
    let Value::Object(map) = value else {
        return Err("thresholds must be an object".into());
    };
    let mut t = *defaults;
    for (key, v) in map {
        let slot = match key.as_str() {
            "cpuTemperature" => &mut t.cpu_temperature,
            "memoryPercent" => &mut t.memory_percent,
            "diskPercent" => &mut t.disk_percent,
            _ => {
                return Err(format!(
                    "unknown threshold `{key}`; known: cpuTemperature, memoryPercent, diskPercent"
                ))
            }
        };
        if v.is_null() {
            continue; // deleted: back to the default
        }
        let n = v
            .as_f64()
            .ok_or_else(|| format!("threshold `{key}` must be a number"))?;
        let range = if key == "cpuTemperature" {
            -40.0..=150.0
        } else {
            0.0..=100.0
        };
        if !range.contains(&n) {
            return Err(format!(
                "threshold `{key}` {n} is out of range {}..={}",
                range.start(),
                range.end()
            ));
        }
        *slot = n;
    }
    Ok(t)
}

/// `text` cut (at a character boundary, marked with `…`) to the longest string IoT Hub accepts
/// as a twin value, so that a reason echoing a huge desired value cannot make the hub refuse the
/// acknowledgement.
fn fit_description(mut text: String) -> String {
    const ELLIPSIS: &str = "…";
    let limit = edgetwin_wire::twin::MAX_STRING_BYTES;
    if text.len() <= limit {
        return text;
    }
    let mut end = limit - ELLIPSIS.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(ELLIPSIS);
    text
}

/// The outcome of applying a desired update.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The settings now in force.
    pub settings: Settings,
    /// The reported patch with one acknowledgement per writable property touched.
    pub reported: Properties,
    /// Property names rejected.
    pub rejected: Vec<&'static str>,
}

/// Applies a desired update to `current`: for a patch, the writable properties it touches;
/// for a full document (`patch == None`), every writable property present, and those absent
/// that differ from `defaults` go back to the default. Values come from the merged `desired`
/// document, so partial `thresholds` patches combine. Invalid values keep the current value
/// and are acknowledged with `ac: 400` and the reason.
pub fn apply(
    current: &Settings,
    defaults: &Settings,
    desired: &Properties,
    patch: Option<&Properties>,
    version: i64,
) -> Applied {
    let mut next = current.clone();
    let mut reported = Properties::new();
    let mut rejected = Vec::new();
    for name in WRITABLE {
        let touched = match patch {
            Some(patch) => patch.contains_key(name),
            None => desired.contains_key(name) || current.value_of(name) != defaults.value_of(name),
        };
        if !touched {
            continue;
        }
        let outcome: Result<(), String> = match desired.get(name) {
            None | Some(Value::Null) => {
                match name {
                    TELEMETRY_INTERVAL => next.telemetry_interval = defaults.telemetry_interval,
                    METRICS => next.metrics = defaults.metrics.clone(),
                    _ => next.thresholds = defaults.thresholds,
                }
                Ok(())
            }
            Some(value) => match name {
                TELEMETRY_INTERVAL => parse_interval(value).map(|v| next.telemetry_interval = v),
                METRICS => parse_metrics(value).map(|v| next.metrics = v),
                _ => parse_thresholds(value, &defaults.thresholds).map(|v| next.thresholds = v),
            },
        };
        let ack = match outcome {
            Ok(()) => {
                let mut ack = json!({"value": next.value_of(name), "ac": 200, "av": version});
                if matches!(desired.get(name), None | Some(Value::Null)) {
                    ack["ad"] = json!("reset to the default");
                } else {
                    ack["ad"] = json!("applied");
                }
                ack
            }
            Err(reason) => {
                rejected.push(name);
                let ad = fit_description(reason);
                json!({"value": next.value_of(name), "ac": 400, "av": version, "ad": ad})
            }
        };
        reported.insert(name.to_owned(), ack);
    }
    Applied {
        settings: next,
        reported,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        Settings {
            telemetry_interval: 10,
            metrics: Metric::ALL.to_vec(),
            thresholds: Thresholds {
                cpu_temperature: 80.0,
                memory_percent: 90.0,
                disk_percent: 90.0,
            },
        }
    }

    fn props(v: Value) -> Properties {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_reason_echoing_a_huge_desired_value_fits_in_what_iot_hub_accepts() {
        let key = "é".repeat(5000);
        let d = props(json!({"thresholds": {key: 1}, "telemetryInterval": 30}));
        let a = apply(&defaults(), &defaults(), &d, Some(&d), 3);
        let ad = a.reported["thresholds"]["ad"].as_str().unwrap();
        assert!(
            ad.len() <= edgetwin_wire::twin::MAX_STRING_BYTES,
            "{}",
            ad.len()
        );
        assert!(ad.starts_with("unknown threshold") && ad.ends_with('…'));
        assert_eq!(a.reported["telemetryInterval"]["ac"], 200);
        edgetwin_wire::twin::validate_patch(edgetwin_wire::twin::Section::Reported, &a.reported)
            .expect("the acknowledgement is a patch IoT Hub accepts");
    }

    #[test]
    fn a_valid_interval_is_applied_and_acknowledged_with_the_desired_version() {
        let d = props(json!({"telemetryInterval": 122}));
        let a = apply(&defaults(), &defaults(), &d, Some(&d), 7);
        assert_eq!(a.settings.telemetry_interval, 122);
        assert_eq!(
            a.reported["telemetryInterval"],
            json!({"value": 122, "ac": 200, "av": 7, "ad": "applied"})
        );
        assert!(a.rejected.is_empty());
    }

    #[test]
    fn invalid_values_are_refused_with_400_and_the_previous_value_stays() {
        for bad in [json!("x"), json!(-5), json!(0), json!(86_401), json!(1.5)] {
            let d = props(json!({"telemetryInterval": bad}));
            let mut current = defaults();
            current.telemetry_interval = 30;
            let a = apply(&current, &defaults(), &d, Some(&d), 3);
            assert_eq!(a.settings.telemetry_interval, 30);
            let ack = &a.reported["telemetryInterval"];
            assert_eq!(ack["ac"], 400, "{bad}");
            assert_eq!(ack["value"], 30);
            assert_eq!(ack["av"], 3);
            assert!(ack["ad"].as_str().unwrap().contains("telemetryInterval"));
        }
    }

    #[test]
    fn metrics_must_be_known_names() {
        let d = props(json!({"metrics": ["load", "disk", "load"]}));
        let a = apply(&defaults(), &defaults(), &d, Some(&d), 2);
        assert_eq!(a.settings.metrics, vec![Metric::Load, Metric::Disk]);
        let d = props(json!({"metrics": ["load", "cpu"]}));
        let a = apply(&defaults(), &defaults(), &d, Some(&d), 3);
        assert_eq!(a.rejected, vec![METRICS]);
        assert_eq!(a.settings.metrics, Metric::ALL.to_vec());
    }

    #[test]
    fn thresholds_merge_partially_and_are_range_checked() {
        let d = props(json!({"thresholds": {"memoryPercent": 50}}));
        let a = apply(&defaults(), &defaults(), &d, Some(&d), 2);
        assert_eq!(a.settings.thresholds.memory_percent, 50.0);
        assert_eq!(a.settings.thresholds.disk_percent, 90.0);
        let d = props(json!({"thresholds": {"diskPercent": 150}}));
        let a = apply(&defaults(), &defaults(), &d, Some(&d), 3);
        assert_eq!(a.reported["thresholds"]["ac"], 400);
    }

    #[test]
    fn a_deleted_property_goes_back_to_the_default() {
        let mut current = defaults();
        current.telemetry_interval = 99;
        let patch = props(json!({"telemetryInterval": null}));
        let a = apply(&current, &defaults(), &Properties::new(), Some(&patch), 4);
        assert_eq!(a.settings.telemetry_interval, 10);
        assert_eq!(a.reported["telemetryInterval"]["ac"], 200);
    }

    #[test]
    fn a_full_document_touches_present_and_changed_properties_only() {
        let mut current = defaults();
        current.metrics = vec![Metric::Load];
        let full = props(json!({"telemetryInterval": 5, "other": 1}));
        let a = apply(&current, &defaults(), &full, None, 9);
        assert_eq!(a.settings.telemetry_interval, 5);
        assert_eq!(a.settings.metrics, Metric::ALL.to_vec());
        assert!(a.reported.contains_key("telemetryInterval"));
        assert!(a.reported.contains_key("metrics"));
        assert!(!a.reported.contains_key("thresholds"));
    }
}
