//! The module application: desired settings applied and acknowledged, reported state, the
//! telemetry loop, alerts and direct methods, and orderly shutdown on SIGTERM/SIGINT.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgetwin_wire::twin::Properties;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::config::ModuleConfig;
use super::metrics::{self, Sample};
use super::prometheus::{self, Stats};
use super::settings::{self, Settings};
use edgetwin_client::{
    self as client, ClientHandle, ConnectionChange, DesiredUpdate, DisconnectReason, Event,
    Identity, Message,
};

/// The telemetry output.
pub const TELEMETRY_OUTPUT: &str = "telemetry";
/// The alerts output.
pub const ALERTS_OUTPUT: &str = "alerts";

/// Why the module could not run.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// Configuration is unusable.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
}

/// RFC 3339 UTC now.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Now in Unix seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn props(value: Value) -> Properties {
    match value {
        Value::Object(map) => map,
        _ => Properties::new(),
    }
}

/// The running application's state.
struct App {
    /// The session.
    client: ClientHandle,
    /// Start-up configuration.
    config: ModuleConfig,
    /// Settings before any twin value (defaults, file, environment).
    defaults: Settings,
    /// Settings in force.
    settings: Settings,
    /// Desired version last applied.
    desired_version: Option<i64>,
    /// Thresholds crossed by the last sample.
    crossed: Vec<&'static str>,
    /// Identity source name (for `getConfig`).
    identity_source: &'static str,
    /// Counters for the Prometheus endpoint.
    stats: Arc<Stats>,
    /// When the last telemetry was sampled (RFC 3339), for the `ping` answer.
    last_telemetry_time: Option<String>,
}

fn ticker(seconds: u64) -> Interval {
    let period = Duration::from_secs(seconds.max(1));
    let mut ticker = interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Runs the module until SIGTERM or SIGINT; connection problems are retried, never fatal.
pub async fn run(config: ModuleConfig, identity: Identity) -> Result<(), ModuleError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(ModuleError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ModuleError::Signals)?;
    let defaults = config.initial_settings()?;
    let identity_source = identity.source().name();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        identity = identity_source,
        device = identity.device_id(),
        module = identity.module_id().unwrap_or_default(),
        "edgetwin-module starting"
    );
    let (client, mut events, session) = client::spawn(identity, config.session());
    let stats = Stats::new();
    let exporter = if config.metrics_port == 0 {
        None
    } else {
        match prometheus::bind(config.metrics_port).await {
            Ok(listener) => Some(tokio::spawn(prometheus::serve(
                listener,
                stats.clone(),
                client.state_watch(),
            ))),
            Err(error) => {
                // Metrics are an aid, not the job: run without them rather than crash-loop.
                warn!(port = config.metrics_port, %error, "cannot serve Prometheus metrics");
                None
            }
        }
    };
    let mut app = App {
        client,
        settings: defaults.clone(),
        defaults,
        config,
        desired_version: None,
        crossed: Vec::new(),
        identity_source,
        stats,
        last_telemetry_time: None,
    };
    app.client
        .report(props(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "startTime": now_rfc3339(),
            "identitySource": identity_source,
            "health": {"status": "ok", "crossed": []},
        })))
        .await;
    let mut telemetry = ticker(app.settings.telemetry_interval);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    if app.on_event(event).await {
                        telemetry = ticker(app.settings.telemetry_interval);
                    }
                }
                None => break,
            },
            _ = telemetry.tick() => {
                app.send_telemetry().await;
            }
            _ = terminate.recv() => { info!("SIGTERM received"); break; }
            _ = interrupt.recv() => { info!("SIGINT received"); break; }
        }
    }
    let grace = Duration::from_secs(app.config.shutdown_grace_secs);
    let flushed = tokio::time::timeout(grace + Duration::from_secs(1), app.client.shutdown(grace))
        .await
        .unwrap_or(false);
    session.abort();
    if let Some(exporter) = exporter {
        exporter.abort();
    }
    if flushed {
        info!("reported properties and outputs flushed; stopped");
    } else {
        warn!("stopped with reported properties or outputs not delivered");
    }
    Ok(())
}

impl App {
    /// Handles a session event; true if the telemetry interval changed.
    async fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Connection(ConnectionChange::Connected) => {
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                info!("connected to the hub");
            }
            Event::Connection(ConnectionChange::Disconnected(reason)) => {
                let counter = if reason == DisconnectReason::TokenRenewal {
                    &self.stats.renewals
                } else {
                    &self.stats.losses
                };
                counter.fetch_add(1, Ordering::Relaxed);
                info!(%reason, "disconnected");
            }
            Event::ReportedAcked { latency, .. } => {
                if self.stats.reported_acked() == 0 {
                    info!(
                        latency_ms = latency.as_millis() as u64,
                        "first reported patch acknowledged: in sync"
                    );
                }
                self.stats.observe_reported_latency(latency);
            }
            Event::Desired(update) => return self.on_desired(update).await,
            Event::Method(call) => {
                let (status, body) = self.on_method(call.name(), call.payload()).await;
                info!(method = %call.name(), status, "direct method");
                call.respond(status, &body).await;
            }
            Event::OutputDropped => {
                self.stats.outputs_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Event::Input { input, .. } => {
                debug!(%input, "input message ignored: this module reads no inputs");
            }
        }
        false
    }

    async fn on_desired(&mut self, update: DesiredUpdate) -> bool {
        let applied = settings::apply(
            &self.settings,
            &self.defaults,
            &update.desired,
            update.patch.as_ref(),
            update.version,
        );
        for name in &applied.rejected {
            warn!(
                property = name,
                version = update.version,
                "invalid desired value refused"
            );
        }
        let interval_changed =
            applied.settings.telemetry_interval != self.settings.telemetry_interval;
        self.settings = applied.settings;
        self.desired_version = Some(update.version);
        self.stats
            .desired_version
            .store(update.version, Ordering::Relaxed);
        info!(
            version = update.version,
            telemetry_interval = self.settings.telemetry_interval,
            "desired properties applied"
        );
        if !applied.reported.is_empty() {
            self.client.report(applied.reported).await;
        }
        interval_changed
    }

    async fn on_method(&mut self, name: &str, _payload: &Value) -> (i32, Value) {
        match name {
            "ping" => (
                200,
                json!({
                    "pong": true,
                    "time": now_rfc3339(),
                    "lastTelemetryTime": self.last_telemetry_time,
                    "telemetrySent": self.stats.telemetry_sent.load(Ordering::Relaxed),
                }),
            ),
            "sampleNow" => (200, self.send_telemetry().await),
            "getConfig" => (
                200,
                json!({
                    "settings": self.settings.to_json(),
                    "desiredVersion": self.desired_version,
                    "identitySource": self.identity_source,
                    "version": env!("CARGO_PKG_VERSION"),
                    "mqttPort": self.config.mqtt_port,
                    "sasTtlSecs": self.config.sas_ttl_secs,
                }),
            ),
            _ => (404, json!({"message": format!("unknown method `{name}`")})),
        }
    }

    /// Sends a JSON document to a module output (the session drops the oldest output when
    /// its outbox is full; only a stopped session refuses).
    fn send_json(&self, output: &str, body: &Value) {
        if let Err(error) = self.client.send_output(output, Message::json(body)) {
            warn!(%output, %error, "output not sent");
        }
    }

    /// Samples, sends telemetry (and alerts), reports health when it changes; returns the body.
    async fn send_telemetry(&mut self) -> Value {
        let disk_path = self.config.disk_path.clone();
        let sample = tokio::task::spawn_blocking(move || metrics::sample(&disk_path))
            .await
            .unwrap_or_else(|_| Sample::default());
        let timestamp = now_rfc3339();
        let body = sample.telemetry(&self.settings.metrics, &timestamp);
        self.send_json(TELEMETRY_OUTPUT, &body);
        self.stats.telemetry_sent.fetch_add(1, Ordering::Relaxed);
        let crossed = sample.crossed(&self.settings.thresholds);
        for (name, value, threshold) in &crossed {
            if !self.crossed.contains(name) {
                warn!(
                    threshold = name,
                    value,
                    limit = threshold,
                    "threshold crossed"
                );
                let alert = json!({
                    "alert": name, "value": value, "threshold": threshold, "timestamp": timestamp,
                });
                self.send_json(ALERTS_OUTPUT, &alert);
                self.stats.alerts_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats
            .last_telemetry_time
            .store(unix_now(), Ordering::Relaxed);
        self.last_telemetry_time = Some(timestamp);
        let names: Vec<&'static str> = crossed.iter().map(|c| c.0).collect();
        if names != self.crossed {
            let status = if names.is_empty() { "ok" } else { "alert" };
            let patch = json!({"health": {"status": status, "crossed": names}});
            self.crossed = names;
            self.client.report(props(patch)).await;
        }
        body
    }
}
