//! Gateway health measurements from `/proc`, `statvfs` and `/sys/class/thermal`, the telemetry
//! document built from them, and threshold checks. Parsers are pure and unit-tested.

use serde_json::{json, Map, Value};

use super::settings::{Metric, Thresholds};

/// One measurement of everything the module knows how to read (absent parts are `None`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// 1, 5 and 15 minute load averages.
    pub load: Option<[f64; 3]>,
    /// Memory in KiB: total and available.
    pub memory: Option<(u64, u64)>,
    /// Disk in bytes: total and available.
    pub disk: Option<(u64, u64)>,
    /// Seconds since boot.
    pub uptime: Option<f64>,
    /// CPU temperature, °C.
    pub temperature: Option<f64>,
}

/// `/proc/loadavg`: `0.52 0.58 0.59 1/467 12345`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    Some([it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?])
}

/// `/proc/meminfo`: `(MemTotal, MemAvailable)` in KiB.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// `/proc/uptime`: the first number.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `thermal_zone*/temp`: millidegrees Celsius.
pub fn parse_temperature(text: &str) -> Option<f64> {
    text.trim().parse::<i64>().ok().map(|m| m as f64 / 1000.0)
}

/// `(total, available)` bytes of the filesystem holding `path`.
pub fn disk_usage(path: &str) -> Option<(u64, u64)> {
    let c_path = std::ffi::CString::new(path).ok()?;
    // SAFETY: `statvfs` only writes into the zeroed struct we own and reads the C string.
    // SAFETY: an all-zero `statvfs` is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `statvfs` reads the NUL-terminated path and writes only into `stat`, which we own.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

/// Reads everything now.
pub fn sample(disk_path: &str) -> Sample {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    Sample {
        load: read("/proc/loadavg").as_deref().and_then(parse_loadavg),
        memory: read("/proc/meminfo").as_deref().and_then(parse_meminfo),
        disk: disk_usage(disk_path),
        uptime: read("/proc/uptime").as_deref().and_then(parse_uptime),
        temperature: read("/sys/class/thermal/thermal_zone0/temp")
            .as_deref()
            .and_then(parse_temperature),
    }
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (used as f64 * 1000.0 / total as f64).round() / 10.0
    }
}

impl Sample {
    /// Memory use in percent.
    pub fn memory_percent(&self) -> Option<f64> {
        self.memory
            .map(|(total, avail)| percent(total.saturating_sub(avail), total))
    }

    /// Disk use in percent.
    pub fn disk_percent(&self) -> Option<f64> {
        self.disk
            .map(|(total, avail)| percent(total.saturating_sub(avail), total))
    }

    /// The telemetry body: the selected metrics that could be read, plus `timestamp`.
    pub fn telemetry(&self, metrics: &[Metric], timestamp: &str) -> Value {
        let mut body = Map::new();
        body.insert("timestamp".into(), json!(timestamp));
        for metric in metrics {
            let value = match metric {
                Metric::Load => self
                    .load
                    .map(|[a, b, c]| json!({"1m": a, "5m": b, "15m": c})),
                Metric::Memory => self.memory.map(|(total, avail)| {
                    json!({"totalKiB": total, "availableKiB": avail, "usedPercent": self.memory_percent()})
                }),
                Metric::Disk => self.disk.map(|(total, avail)| {
                    json!({"totalBytes": total, "availableBytes": avail, "usedPercent": self.disk_percent()})
                }),
                Metric::Uptime => self.uptime.map(|u| json!(u)),
                Metric::Temperature => self.temperature.map(|t| json!(t)),
            };
            if let Some(value) = value {
                body.insert(metric.name().into(), value);
            }
        }
        Value::Object(body)
    }

    /// The thresholds this sample crosses: `(name, value, threshold)`.
    pub fn crossed(&self, t: &Thresholds) -> Vec<(&'static str, f64, f64)> {
        let mut out = Vec::new();
        let mut check = |name, value: Option<f64>, limit: f64| {
            if let Some(v) = value.filter(|v| *v > limit) {
                out.push((name, v, limit));
            }
        };
        check("cpuTemperature", self.temperature, t.cpu_temperature);
        check("memoryPercent", self.memory_percent(), t.memory_percent);
        check("diskPercent", self.disk_percent(), t.disk_percent);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 1/467 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let meminfo =
            "MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    2000000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((8_000_000, 2_000_000)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_uptime("12345.67 100.0\n"), Some(12345.67));
        assert_eq!(parse_temperature("48312\n"), Some(48.312));
    }

    #[test]
    fn telemetry_holds_only_the_selected_metrics() {
        let s = Sample {
            load: Some([1.0, 2.0, 3.0]),
            memory: Some((1000, 250)),
            disk: Some((100, 50)),
            uptime: Some(5.0),
            temperature: None,
        };
        let t = s.telemetry(&[Metric::Memory, Metric::Temperature], "T");
        assert_eq!(
            t,
            json!({"timestamp": "T", "memory": {"totalKiB": 1000, "availableKiB": 250, "usedPercent": 75.0}})
        );
    }

    #[test]
    fn crossed_thresholds_are_listed() {
        let s = Sample {
            memory: Some((1000, 50)),
            disk: Some((100, 50)),
            temperature: Some(85.0),
            ..Sample::default()
        };
        let t = Thresholds {
            cpu_temperature: 80.0,
            memory_percent: 90.0,
            disk_percent: 90.0,
        };
        let names: Vec<_> = s.crossed(&t).into_iter().map(|c| c.0).collect();
        assert_eq!(names, vec!["cpuTemperature", "memoryPercent"]);
    }

    #[test]
    fn the_root_filesystem_has_a_size() {
        let (total, avail) = disk_usage("/").unwrap();
        assert!(total > 0 && avail <= total);
    }
}
