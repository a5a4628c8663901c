//! Start-up configuration in layers (the `config` crate): built-in defaults, then an optional
//! TOML file named by `EDGETWIN_CONFIG`, then `EDGETWIN_*` environment variables
//! (`EDGETWIN_MQTT_PORT`, `EDGETWIN_TELEMETRY_INTERVAL`, `EDGETWIN_THRESHOLDS__MEMORY_PERCENT`,
//! `EDGETWIN_METRICS=load,memory`, `EDGETWIN_METRICS_PORT`...). The twin's desired properties come last, at run time.

use std::time::Duration;

use serde::Deserialize;

use super::settings::{Metric, Settings, Thresholds};
use edgetwin_client::{Overflow, SessionConfig};

/// The variable naming the optional configuration file.
pub const CONFIG_FILE_VARIABLE: &str = "EDGETWIN_CONFIG";

/// The module's start-up configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// MQTT/TLS port of edgeHub or IoT Hub.
    pub mqtt_port: u16,
    /// SAS token lifetime in seconds (renewed at 80 %).
    pub sas_ttl_secs: u64,
    /// First reconnect delay in milliseconds.
    pub backoff_base_ms: u64,
    /// Longest reconnect delay in seconds.
    pub backoff_max_secs: u64,
    /// How long SIGTERM may spend flushing reported properties (docker gives 10 s).
    pub shutdown_grace_secs: u64,
    /// Default telemetry interval in seconds (until the twin says otherwise).
    pub telemetry_interval: u64,
    /// Default metrics.
    pub metrics: Vec<String>,
    /// Default thresholds.
    pub thresholds: Thresholds,
    /// A path on the filesystem whose usage is reported as `disk` (`EDGETWIN_DISK_PATH`, default
    /// `/`). In a container `/` is the container's own root, an overlay whose numbers are those of
    /// the filesystem holding the engine's storage (`/var/lib/docker` or
    /// `/var/lib/containers`); to watch another, bind-mount it and name the mount point.
    pub disk_path: String,
    /// Port of the Prometheus `/metrics` endpoint (9600 as edgeHub and edgeAgent; 0 = off).
    pub metrics_port: u16,
    /// Outputs kept while disconnected or unacknowledged; beyond it the oldest is dropped
    /// (counted in `edgetwin_module_outputs_dropped_total`).
    pub outbox_capacity: usize,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or a value has the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl ModuleConfig {
    /// Loads defaults, the optional file and the environment through `lookup`.
    pub fn load(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .set_default("mqtt_port", 8883)?
            .set_default("sas_ttl_secs", 3600)?
            .set_default("backoff_base_ms", 250)?
            .set_default("backoff_max_secs", 60)?
            .set_default("shutdown_grace_secs", 8)?
            .set_default("telemetry_interval", 10)?
            .set_default(
                "metrics",
                Metric::ALL.iter().map(|m| m.name()).collect::<Vec<_>>(),
            )?
            .set_default("thresholds.cpu_temperature", 80.0)?
            .set_default("thresholds.memory_percent", 90.0)?
            .set_default("thresholds.disk_percent", 90.0)?
            .set_default("disk_path", "/")?
            .set_default("metrics_port", 9600)?
            .set_default("outbox_capacity", 1024)?;
        if let Some(file) = lookup(CONFIG_FILE_VARIABLE).filter(|f| !f.is_empty()) {
            builder = builder
                .add_source(config::File::new(&file, config::FileFormat::Toml).required(true));
        }
        let vars: config::Map<String, String> = [
            "MQTT_PORT",
            "SAS_TTL_SECS",
            "BACKOFF_BASE_MS",
            "BACKOFF_MAX_SECS",
            "SHUTDOWN_GRACE_SECS",
            "TELEMETRY_INTERVAL",
            "METRICS",
            "THRESHOLDS__CPU_TEMPERATURE",
            "THRESHOLDS__MEMORY_PERCENT",
            "THRESHOLDS__DISK_PERCENT",
            "DISK_PATH",
            "METRICS_PORT",
            "OUTBOX_CAPACITY",
        ]
        .iter()
        .filter_map(|name| {
            let full = format!("EDGETWIN_{name}");
            lookup(&full).map(|v| (full, v))
        })
        .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("EDGETWIN")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("metrics")
                .source(Some(vars)),
        );
        let loaded: ModuleConfig = builder.build()?.try_deserialize()?;
        loaded.initial_settings()?;
        if loaded.outbox_capacity == 0 {
            return Err(ConfigError::Invalid(
                "outbox_capacity must be at least 1".into(),
            ));
        }
        if loaded.sas_ttl_secs < 2 {
            return Err(ConfigError::Invalid(
                "sas_ttl_secs must be at least 2".into(),
            ));
        }
        Ok(loaded)
    }

    /// The settings in force before the twin is read.
    pub fn initial_settings(&self) -> Result<Settings, ConfigError> {
        let metrics = self
            .metrics
            .iter()
            .map(|m| {
                Metric::from_name(m)
                    .ok_or_else(|| ConfigError::Invalid(format!("unknown metric `{m}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let settings = Settings {
            telemetry_interval: self.telemetry_interval,
            metrics,
            thresholds: self.thresholds,
        };
        settings
            .validate()
            .map_err(|reason| ConfigError::Invalid(reason.to_owned()))?;
        Ok(settings)
    }

    /// The session tuning this configuration asks for.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            mqtt_port: self.mqtt_port,
            sas_ttl: Duration::from_secs(self.sas_ttl_secs),
            backoff_base: Duration::from_millis(self.backoff_base_ms.max(1)),
            backoff_cap: Duration::from_secs(self.backoff_max_secs.max(1)),
            outbox_capacity: self.outbox_capacity,
            overflow: Overflow::DropOldest,
            client_type: format!("edgetwin-module/{}", env!("CARGO_PKG_VERSION")),
            ..SessionConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_apply_without_file_or_environment() {
        let c = ModuleConfig::load(lookup(&[])).unwrap();
        assert_eq!(c.mqtt_port, 8883);
        assert_eq!(c.telemetry_interval, 10);
        assert_eq!(c.metrics.len(), 5);
        assert_eq!(c.thresholds.memory_percent, 90.0);
        assert_eq!(c.metrics_port, 9600);
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = ModuleConfig::load(lookup(&[
            ("EDGETWIN_MQTT_PORT", "18883"),
            ("EDGETWIN_METRICS", "load,uptime"),
            ("EDGETWIN_THRESHOLDS__MEMORY_PERCENT", "75"),
            ("EDGETWIN_METRICS_PORT", "0"),
        ]))
        .unwrap();
        assert_eq!(c.mqtt_port, 18883);
        assert_eq!(c.metrics_port, 0);
        assert_eq!(c.metrics, vec!["load", "uptime"]);
        assert_eq!(c.thresholds.memory_percent, 75.0);
    }

    /// A scratch directory named after `tag` holding `module.toml` with `text`; the directory
    /// (for the caller to remove) and the file's path.
    fn config_file(tag: &str, text: &str) -> (std::path::PathBuf, String) {
        let dir =
            std::env::temp_dir().join(format!("edgetwin-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("module.toml");
        std::fs::write(&file, text).unwrap();
        (dir, file.to_string_lossy().into_owned())
    }

    #[test]
    fn the_file_sits_between_defaults_and_environment() {
        let (dir, path) = config_file("order", "mqtt_port = 1000\ntelemetry_interval = 30\n");
        let c = ModuleConfig::load(lookup(&[
            (CONFIG_FILE_VARIABLE, &path),
            ("EDGETWIN_MQTT_PORT", "2000"),
        ]))
        .unwrap();
        assert_eq!(c.mqtt_port, 2000);
        assert_eq!(c.telemetry_interval, 30);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named_instead_of_ignored() {
        let (dir, path) = config_file("typo", "telemetry_interval_secs = 30\n");
        let error = ModuleConfig::load(lookup(&[(CONFIG_FILE_VARIABLE, &path)])).unwrap_err();
        assert!(
            error.to_string().contains("telemetry_interval_secs"),
            "{error}"
        );
        std::fs::write(&path, "[thresholds]\ncpu_temp = 1\n").unwrap();
        let error = ModuleConfig::load(lookup(&[(CONFIG_FILE_VARIABLE, &path)])).unwrap_err();
        assert!(error.to_string().contains("cpu_temp"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(ModuleConfig::load(lookup(&[("EDGETWIN_MQTT_PORT", "x")])).is_err());
        assert!(ModuleConfig::load(lookup(&[("EDGETWIN_METRICS", "load,bogus")])).is_err());
        assert!(ModuleConfig::load(lookup(&[("EDGETWIN_TELEMETRY_INTERVAL", "0")])).is_err());
    }
}
