//! The Prometheus text endpoint (`GET /metrics`, port 9600 by default as edgeHub and edgeAgent
//! use for the IoT Edge metrics collector): session state, reconnects, the applied desired
//! version, reported-patch latency and telemetry sent.
//!
//! The counters are atomics updated by the application; [`render`] is pure. The server is a
//! small HTTP/1.1 responder (one request per connection, `Connection: close`) with bounded
//! connections, request size and time: scrapes are rare and tiny, a framework would cost more
//! memory than everything else here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use edgetwin_client::SessionState;

/// Upper bounds (seconds) of the reported-patch latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Connections served at once; more are closed right away.
const MAX_CONNECTIONS: usize = 4;
/// Largest request head read.
const MAX_REQUEST: usize = 4096;
/// Time a client has to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Every state, for the `edgetwin_module_session_state` enum gauge.
const STATES: [SessionState; 7] = [
    SessionState::Connecting,
    SessionState::Subscribing,
    SessionState::SyncingTwin,
    SessionState::Live,
    SessionState::RenewingToken,
    SessionState::BackingOff,
    SessionState::Stopped,
];

/// The module's counters, shared between the application (writer) and the endpoint (reader).
#[derive(Debug, Default)]
pub struct Stats {
    /// CONNACKs received.
    pub connects: AtomicU64,
    /// Connections ended by a controlled token renewal.
    pub renewals: AtomicU64,
    /// Connections lost (errors, refusals, hub gone).
    pub losses: AtomicU64,
    /// Desired `$version` last applied (-1 before the first).
    pub desired_version: AtomicI64,
    /// Telemetry messages handed to the session (buffered while disconnected).
    pub telemetry_sent: AtomicU64,
    /// Alerts handed to the session.
    pub alerts_sent: AtomicU64,
    /// Outputs dropped because the outbox was full.
    pub outputs_dropped: AtomicU64,
    /// When the last telemetry message was sampled, Unix seconds (0 before the first). A
    /// metric and a method answer, never a twin update: IoT Hub meters and throttles those.
    pub last_telemetry_time: AtomicU64,
    /// Reported-patch latency histogram: cumulative counts per bucket of [`LATENCY_BUCKETS`].
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// Acknowledged reported patches.
    latency_count: AtomicU64,
    /// Sum of their latencies, in microseconds.
    latency_sum_micros: AtomicU64,
    /// Process start, Unix seconds.
    pub start_time: AtomicU64,
}

impl Stats {
    /// Fresh counters, started now.
    pub fn new() -> Arc<Self> {
        let stats = Stats::default();
        stats.desired_version.store(-1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        stats.start_time.store(now, Ordering::Relaxed);
        Arc::new(stats)
    }

    /// Acknowledged reported patches so far.
    pub fn reported_acked(&self) -> u64 {
        self.latency_count.load(Ordering::Relaxed)
    }

    /// Records one acknowledged reported patch.
    pub fn observe_reported_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text (format 0.0.4) of `stats` with the session in `state`.
pub fn render(stats: &Stats, state: SessionState) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(2048);
    metric(
        &mut out,
        "edgetwin_module_connected",
        "gauge",
        "1 while the MQTT session is connected (subscribing, syncing, live or renewing).",
    );
    let connected = matches!(
        state,
        SessionState::Subscribing
            | SessionState::SyncingTwin
            | SessionState::Live
            | SessionState::RenewingToken
    );
    let _ = writeln!(out, "edgetwin_module_connected {}", u8::from(connected));
    metric(
        &mut out,
        "edgetwin_module_session_state",
        "gauge",
        "The session state (1 for the current one).",
    );
    for s in STATES {
        let _ = writeln!(
            out,
            "edgetwin_module_session_state{{state=\"{}\"}} {}",
            s.name(),
            u8::from(s == state)
        );
    }
    metric(
        &mut out,
        "edgetwin_module_connects_total",
        "counter",
        "Successful MQTT connections (CONNACK accepted).",
    );
    let connects = load(&stats.connects);
    let _ = writeln!(out, "edgetwin_module_connects_total {connects}");
    metric(
        &mut out,
        "edgetwin_module_reconnects_total",
        "counter",
        "Successful connections after the first (token renewals and recoveries).",
    );
    let _ = writeln!(
        out,
        "edgetwin_module_reconnects_total {}",
        connects.saturating_sub(1)
    );
    metric(
        &mut out,
        "edgetwin_module_disconnects_total",
        "counter",
        "Connections ended, by reason.",
    );
    let _ = writeln!(
        out,
        "edgetwin_module_disconnects_total{{reason=\"tokenRenewal\"}} {}",
        load(&stats.renewals)
    );
    let _ = writeln!(
        out,
        "edgetwin_module_disconnects_total{{reason=\"lost\"}} {}",
        load(&stats.losses)
    );
    metric(
        &mut out,
        "edgetwin_module_desired_version",
        "gauge",
        "The desired properties $version last applied (-1 before the first).",
    );
    let _ = writeln!(
        out,
        "edgetwin_module_desired_version {}",
        stats.desired_version.load(Ordering::Relaxed)
    );
    metric(
        &mut out,
        "edgetwin_module_reported_patch_latency_seconds",
        "histogram",
        "From queueing a reported update to the hub's acknowledgement (coalesced updates count once).",
    );
    for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&stats.latency_buckets) {
        let _ = writeln!(
            out,
            "edgetwin_module_reported_patch_latency_seconds_bucket{{le=\"{bound}\"}} {}",
            load(bucket)
        );
    }
    let count = load(&stats.latency_count);
    let _ = writeln!(
        out,
        "edgetwin_module_reported_patch_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "edgetwin_module_reported_patch_latency_seconds_sum {}",
        load(&stats.latency_sum_micros) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "edgetwin_module_reported_patch_latency_seconds_count {count}"
    );
    metric(
        &mut out,
        "edgetwin_module_telemetry_messages_sent_total",
        "counter",
        "Telemetry messages sent to the `telemetry` output (buffered while disconnected).",
    );
    let _ = writeln!(
        out,
        "edgetwin_module_telemetry_messages_sent_total {}",
        load(&stats.telemetry_sent)
    );
    metric(
        &mut out,
        "edgetwin_module_alerts_sent_total",
        "counter",
        "Alerts sent to the `alerts` output.",
    );
    let _ = writeln!(
        out,
        "edgetwin_module_alerts_sent_total {}",
        load(&stats.alerts_sent)
    );
    metric(
        &mut out,
        "edgetwin_module_outputs_dropped_total",
        "counter",
        "Outputs dropped, oldest first, because the outbox was full while disconnected.",
    );
    let _ = writeln!(
        out,
        "edgetwin_module_outputs_dropped_total {}",
        load(&stats.outputs_dropped)
    );
    metric(
        &mut out,
        "edgetwin_module_last_telemetry_time_seconds",
        "gauge",
        "When the last telemetry message was sampled, Unix seconds (0 before the first).",
    );
    let _ = writeln!(
        out,
        "edgetwin_module_last_telemetry_time_seconds {}",
        load(&stats.last_telemetry_time)
    );
    metric(
        &mut out,
        "edgetwin_module_start_time_seconds",
        "gauge",
        "Process start, Unix seconds.",
    );
    let _ = writeln!(
        out,
        "edgetwin_module_start_time_seconds {}",
        load(&stats.start_time)
    );
    out
}

/// The response to a request whose head is `head`.
fn respond(head: &[u8], stats: &Stats, state: SessionState) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(stats, state),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

async fn serve_one(
    mut stream: TcpStream,
    stats: &Stats,
    state: &watch::Receiver<SessionState>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_REQUEST {
            stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await?;
            return Ok(());
        }
    }
    let response = respond(&head, stats, *state.borrow());
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Binds the endpoint on all interfaces at `port`; errors are for the caller to log.
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", port)).await
}

/// Serves scrapes on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, state: watch::Receiver<SessionState>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Prometheus metrics at /metrics");
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "metrics endpoint busy; closing a connection");
            continue;
        };
        let stats = stats.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let served =
                tokio::time::timeout(REQUEST_TIMEOUT, serve_one(stream, &stats, &state)).await;
            if let Ok(Err(error)) = served {
                debug!(%peer, %error, "metrics endpoint: connection error");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_carries_state_counters_and_a_cumulative_histogram() {
        let stats = Stats::new();
        stats.connects.store(3, Ordering::Relaxed);
        stats.renewals.store(2, Ordering::Relaxed);
        stats.desired_version.store(7, Ordering::Relaxed);
        stats.telemetry_sent.store(5, Ordering::Relaxed);
        stats.outputs_dropped.store(4, Ordering::Relaxed);
        stats
            .last_telemetry_time
            .store(1_700_000_000, Ordering::Relaxed);
        stats.observe_reported_latency(Duration::from_millis(3));
        stats.observe_reported_latency(Duration::from_millis(300));
        let text = render(&stats, SessionState::Live);
        for line in [
            "edgetwin_module_connected 1",
            "edgetwin_module_session_state{state=\"live\"} 1",
            "edgetwin_module_session_state{state=\"backingOff\"} 0",
            "edgetwin_module_connects_total 3",
            "edgetwin_module_reconnects_total 2",
            "edgetwin_module_disconnects_total{reason=\"tokenRenewal\"} 2",
            "edgetwin_module_desired_version 7",
            "edgetwin_module_outputs_dropped_total 4",
            "edgetwin_module_last_telemetry_time_seconds 1700000000",
            "edgetwin_module_reported_patch_latency_seconds_bucket{le=\"0.0025\"} 0",
            "edgetwin_module_reported_patch_latency_seconds_bucket{le=\"0.005\"} 1",
            "edgetwin_module_reported_patch_latency_seconds_bucket{le=\"0.5\"} 2",
            "edgetwin_module_reported_patch_latency_seconds_bucket{le=\"+Inf\"} 2",
            "edgetwin_module_reported_patch_latency_seconds_sum 0.303",
            "edgetwin_module_reported_patch_latency_seconds_count 2",
            "edgetwin_module_telemetry_messages_sent_total 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert!(text.contains("# TYPE edgetwin_module_reported_patch_latency_seconds histogram"));
        let text = render(&Stats::new(), SessionState::BackingOff);
        assert!(text.contains("edgetwin_module_connected 0\n"));
        assert!(text.contains("edgetwin_module_reconnects_total 0\n"));
        assert!(text.contains("edgetwin_module_desired_version -1\n"));
    }

    #[test]
    fn only_get_metrics_is_served() {
        let stats = Stats::new();
        let ok = respond(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            &stats,
            SessionState::Live,
        );
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let missing = respond(b"GET / HTTP/1.1\r\n\r\n", &stats, SessionState::Live);
        assert!(missing.starts_with(b"HTTP/1.1 404"));
        let post = respond(
            b"POST /metrics HTTP/1.1\r\n\r\n",
            &stats,
            SessionState::Live,
        );
        assert!(post.starts_with(b"HTTP/1.1 405"));
        let head = respond(
            b"HEAD /metrics HTTP/1.1\r\n\r\n",
            &stats,
            SessionState::Live,
        );
        assert!(String::from_utf8(head).unwrap().ends_with("\r\n\r\n"));
    }
}
