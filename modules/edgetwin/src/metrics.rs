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
    /// The filesystem of the disk path.
    pub disk: Option<DiskUsage>,
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

/// A filesystem's size in bytes, as `statvfs` gives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Every block (`f_blocks`), including those reserved for root.
    pub total: u64,
    /// Free blocks (`f_bfree`), including those reserved for root.
    pub free: u64,
    /// Free blocks an unprivileged process may use (`f_bavail`).
    pub available: u64,
}

impl DiskUsage {
    /// From `statvfs` fields: block counts in units of `fragment_size` (`f_frsize`).
    pub fn from_blocks(fragment_size: u64, blocks: u64, free: u64, available: u64) -> Self {
        DiskUsage {
            total: blocks.saturating_mul(fragment_size),
            free: free.saturating_mul(fragment_size),
            available: available.saturating_mul(fragment_size),
        }
    }

    /// Bytes in use: total less free.
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }

    /// Use in percent as `df` computes it (coreutils, and POSIX `df -P`'s "capacity"): used over
    /// what a user can reach, used + available, so the blocks reserved for root count neither as
    /// used nor as room. (`1 - available / total` counted the reserve as used: on a disk with a
    /// large reserve, 70 where `df` says 13.) Rounded up to 0.1, as `df` rounds up to 1.
    pub fn used_percent(&self) -> f64 {
        let used = self.used();
        let reachable = used.saturating_add(self.available);
        if reachable == 0 {
            return 0.0;
        }
        (used as f64 * 1000.0 / reachable as f64).ceil() / 10.0
    }
}

/// The usage of the filesystem holding `path` (`statvfs`), `None` if it cannot be read.
pub fn disk_usage(path: &str) -> Option<DiskUsage> {
    let c_path = std::ffi::CString::new(path).ok()?;
    // SAFETY: `statvfs` only writes into the zeroed struct we own and reads the C string.
    // SAFETY: an all-zero `statvfs` is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `statvfs` reads the NUL-terminated path and writes only into `stat`, which we own.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    Some(DiskUsage::from_blocks(
        stat.f_frsize as u64,
        stat.f_blocks as u64,
        stat.f_bfree as u64,
        stat.f_bavail as u64,
    ))
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

    /// Disk use in percent, as `df` says it.
    pub fn disk_percent(&self) -> Option<f64> {
        self.disk.as_ref().map(DiskUsage::used_percent)
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
                Metric::Disk => self.disk.map(|disk| {
                    json!({
                        "totalBytes": disk.total,
                        "usedBytes": disk.used(),
                        "availableBytes": disk.available,
                        "usedPercent": disk.used_percent(),
                    })
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
            disk: Some(DiskUsage::from_blocks(1, 100, 50, 50)),
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
            disk: Some(DiskUsage::from_blocks(1, 100, 50, 50)),
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
    fn disk_use_is_used_over_used_plus_available_as_df_says_it() {
        // 1000 blocks of 4 KiB, 870 free of which 300 are available to users (570 reserved):
        // 130 used of 430 reachable is 30.3 %, not 1 - 300/1000 = 70 %.
        let disk = DiskUsage::from_blocks(4096, 1000, 870, 300);
        assert_eq!(disk.total, 4_096_000);
        assert_eq!(disk.used(), 130 * 4096);
        assert_eq!(disk.available, 300 * 4096);
        assert_eq!(disk.used_percent(), 30.3);
        // No reserve: used over total; rounded up as df rounds (1/3 is 33.4, df says 34 %).
        assert_eq!(DiskUsage::from_blocks(1, 3, 2, 2).used_percent(), 33.4);
        assert_eq!(DiskUsage::from_blocks(1, 10, 10, 10).used_percent(), 0.0);
        // Full, with only the reserve left: 100 %, as df says.
        assert_eq!(DiskUsage::from_blocks(1, 100, 5, 0).used_percent(), 100.0);
        // An empty or pseudo filesystem (all zero): 0, not NaN.
        assert_eq!(DiskUsage::default().used_percent(), 0.0);
    }

    #[test]
    fn disk_use_of_a_directory_agrees_with_df() {
        let dir = std::env::temp_dir();
        let disk = disk_usage(dir.to_str().unwrap()).unwrap();
        assert!(disk.total > 0 && disk.available <= disk.free && disk.free <= disk.total);
        // POSIX `df -P -k`: "Capacity" is the rounded-up percentage of used over used + available.
        let out = std::process::Command::new("df")
            .args(["-P", "-k"])
            .arg(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let capacity: f64 = text
            .lines()
            .nth(1)
            .and_then(|row| row.split_whitespace().nth(4))
            .and_then(|c| c.trim_end_matches('%').parse().ok())
            .unwrap_or_else(|| panic!("no capacity in df's output: {text}"));
        // Other writers may change the disk between the two reads: within a point.
        let ours = disk.used_percent();
        assert!(
            (ours.ceil() - capacity).abs() <= 1.0,
            "{} is {ours} % used; df -P says {capacity} %",
            dir.display()
        );
        assert!(disk_usage("/nonexistent/edgetwin").is_none());
    }
}
