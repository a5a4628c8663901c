//! Scale benchmark of the local hub (not a timed test): how many authenticated TLS MQTT
//! connections it holds and in how much memory, how fast one at-scale deployment reaches every
//! one of them, how many reported patches per second it acknowledges with SQLite durability, and
//! how registry writes and CONNECTs fare as the registry grows to 100,000 edge devices.
//!
//! ```text
//! cargo bench -p edgetwin-hub --bench scale -- --connections 10000 --registry 1000,10000,100000
//! ```
//!
//! Each phase runs a hub in a child process (this same binary, `--serve-hub DIR`) so that its
//! memory can be read from `/proc/<pid>/status`. The connection phase
//! 1. creates `connections / modules-per-device` edge devices tagged `fleet=bench`, then their
//!    `modules-per-device` modules (IoT Hub adds modules only to devices registered in an earlier
//!    request), plus `reported-connections` plain devices, with bulk `POST /devices` of 100
//!    items (all with one known SAS key, so tokens are signed here);
//! 2. opens one TLS MQTT connection per module (MQTT packets encoded directly with
//!    `rumqttc::mqttbytes::v4`, no client library per connection), each subscribed to
//!    `$iothub/twin/PATCH/properties/desired/#`;
//! 3. creates one at-scale deployment (`PUT /configurations/{id}`, target condition on the tag,
//!    content for every module) and times until every connection has its desired patch;
//! 4. with all those connections still held, opens `reported-connections` more connections that
//!    each keep `in-flight` reported patches pipelined and counts the `204` responses per second.
//!
//! The registry phase is described in [`registry`].
//!
//! It prints a markdown table. Options: `--connections N` (10000; 0 skips the connection phase),
//! `--modules-per-device M` (1), `--reported-connections C` (100), `--in-flight K` (32),
//! `--reported-secs S` (10), `--registry SIZES` (`1000,10000,100000`; empty skips the registry
//! phase), `--samples S` (200 timed writes and CONNECTs per measure).

#[path = "scale/registry.rs"]
mod registry;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use edgetwin_wire::sas;
use edgetwin_wire::Secret;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// One SAS key for every identity the benchmark creates (base64 of 32 bytes).
const KEY: &str = "YmVuY2htYXJrLWtleS1mb3ItZWRnZXR3aW4taHViISE=";
/// TLS + CONNECT handshakes in progress at once.
const CONNECT_CONCURRENCY: usize = 64;
const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";
const MAX_PACKET: usize = 300 * 1024;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
struct Options {
    connections: usize,
    modules_per_device: usize,
    reported_connections: usize,
    in_flight: usize,
    reported_secs: u64,
    /// Fleet sizes (edge devices) at which the registry phase measures write latency.
    registry: Vec<usize>,
    /// Writes (and CONNECTs) timed per measure in the registry phase.
    samples: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-hub") {
        let dir = PathBuf::from(args.get(i + 1).ok_or("--serve-hub DIR")?);
        return serve_hub(dir);
    }
    let mut options = Options {
        connections: 10_000,
        modules_per_device: 1,
        reported_connections: 100,
        in_flight: 32,
        reported_secs: 10,
        registry: vec![1_000, 10_000, 100_000],
        samples: 200,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || -> Result<usize> {
            Ok(it
                .next()
                .ok_or_else(|| format!("{arg} needs a value"))?
                .parse()?)
        };
        match arg.as_str() {
            "--connections" => options.connections = value()?,
            "--modules-per-device" => options.modules_per_device = value()?.max(1),
            "--reported-connections" => options.reported_connections = value()?,
            "--in-flight" => options.in_flight = value()?.max(1),
            "--reported-secs" => options.reported_secs = value()? as u64,
            "--samples" => options.samples = value()?.max(1),
            "--registry" => {
                let list = it.next().ok_or("--registry needs a value")?;
                options.registry = list
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--bench" => {} // cargo bench passes it to harness = false benches
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut rows = Vec::new();
        let started = Instant::now();
        let load_before = load_average();
        if options.connections > 0 {
            connection_phase(&options, &mut rows).await?;
        }
        if !options.registry.is_empty() {
            registry::phase(&options, &mut rows).await?;
        }
        print_table(&args, started, &load_before, rows);
        Ok(())
    })
}

/// The child process: a hub on a fresh data directory with ports 0, until stdin closes.
fn serve_hub(dir: PathBuf) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut config = edgetwin_hub::HubConfig::new(dir);
        config.mqtt_port = 0;
        config.https_port = 0;
        let hub = edgetwin_hub::start(config).await?;
        println!("ready");
        std::io::stdout().flush()?;
        // The parent holds our stdin; when it exits (or drops it) the hub stops.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await?;
        hub.stop().await;
        Ok(())
    })
}

/// The hub child process.
struct HubProcess {
    child: Child,
    dir: PathBuf,
    info: Value,
}

impl HubProcess {
    /// Starts a hub on a fresh data directory named after `phase`.
    fn start(phase: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("edgetwin-scale-{phase}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve-hub")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            return Err(format!("hub did not start: {line:?}").into());
        }
        let info: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("hub.json"))?)?;
        Ok(Self { child, dir, info })
    }

    /// `(VmRSS, VmHWM)` in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(f64::NAN, |kib| kib / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// TLS to the hub, trusting its CA.
fn tls_connector(ca_path: &Path) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_path)?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn tls_connect(tls: &TlsConnector, addr: SocketAddr) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(tls.connect(name, tcp).await?)
}

/// A service REST client on one kept-alive HTTPS connection.
struct Rest {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    token: String,
}

impl Rest {
    async fn connect(tls: &TlsConnector, addr: SocketAddr, owner_key: &str) -> Result<Self> {
        let stream = tls_connect(tls, addr).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let expiry = unix_now() + 24 * 3600;
        let token = sas::generate_token(
            &Secret::new(owner_key),
            "localhost",
            expiry,
            Some("iothubowner"),
        )?;
        Ok(Self {
            sender,
            token: token.expose().to_owned(),
        })
    }

    async fn call(&mut self, method: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{path}?api-version=2021-04-12"))
            .header("host", "localhost")
            .header("authorization", &self.token)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An MQTT identity the benchmark connects as.
#[derive(Clone)]
struct Identity {
    device_id: String,
    module_id: Option<String>,
}

impl Identity {
    fn client_id(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/{m}", self.device_id),
            None => self.device_id.clone(),
        }
    }

    fn connect_packet(&self) -> Result<Packet> {
        let mut resource = format!("localhost/devices/{}", self.device_id);
        if let Some(m) = &self.module_id {
            resource.push_str(&format!("/modules/{m}"));
        }
        let token =
            sas::generate_token(&Secret::new(KEY), &resource, unix_now() + 24 * 3600, None)?;
        let mut connect = Connect::new(self.client_id());
        connect.keep_alive = 0;
        connect.clean_session = true;
        connect.set_login(
            format!("localhost/{}/?api-version=2021-04-12", self.client_id()),
            token.expose(),
        );
        Ok(Packet::Connect(connect))
    }
}

/// MQTT packets over one TLS stream, encoded and decoded with `mqttbytes`.
struct Mqtt<S> {
    stream: S,
    buffer: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Mqtt<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(512),
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<()> {
        let mut out = BytesMut::with_capacity(packet.size() + 8);
        packet.write(&mut out, MAX_PACKET)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<Option<Packet>> {
        read_packet(&mut self.stream, &mut self.buffer).await
    }

    /// CONNECT (expects CONNACK 0), then SUBSCRIBE to `filter` (expects SUBACK success).
    async fn handshake(&mut self, identity: &Identity, filter: &str) -> Result<()> {
        self.send(identity.connect_packet()?).await?;
        match self.next().await? {
            Some(Packet::ConnAck(ack))
                if ack.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success => {}
            other => {
                return Err(
                    format!("CONNECT of {} refused: {other:?}", identity.client_id()).into(),
                )
            }
        }
        self.send(Packet::Subscribe(Subscribe::new(filter, QoS::AtLeastOnce)))
            .await?;
        match self.next().await? {
            Some(Packet::SubAck(ack))
                if ack.return_codes.iter().all(|c| {
                    !matches!(c, rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure)
                }) => {}
            other => return Err(format!("SUBSCRIBE refused: {other:?}").into()),
        }
        Ok(())
    }
}

async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
) -> Result<Option<Packet>> {
    loop {
        match Packet::read(buffer, MAX_PACKET) {
            Ok(packet) => return Ok(Some(packet)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("malformed packet from the hub: {e}").into()),
        }
        if reader.read_buf(buffer).await? == 0 {
            return Ok(None);
        }
    }
}

/// Creates identities with bulk `POST /devices`, 100 items per request.
async fn bulk_create(rest: &mut Rest, items: Vec<Value>) -> Result<()> {
    for chunk in items.chunks(100) {
        let (status, body) = rest
            .call("POST", "/devices", &Value::from(chunk.to_vec()))
            .await?;
        if status != 200 {
            let mut body = body.to_string();
            body.truncate(400);
            return Err(format!("bulk create failed: {status} {body}…").into());
        }
    }
    Ok(())
}

fn auth() -> Value {
    json!({ "type": "sas", "symmetricKey": { "primaryKey": KEY, "secondaryKey": KEY } })
}

/// What the held connections report back.
struct Held {
    /// Connections up and subscribed.
    ready: AtomicUsize,
    /// Connections that ended (should stay 0 while held).
    closed: AtomicUsize,
    /// Desired patches received (time of arrival).
    desired: mpsc::UnboundedSender<Instant>,
    stop: AtomicBool,
}

async fn hold_connection(
    tls: TlsConnector,
    addr: SocketAddr,
    identity: Identity,
    held: Arc<Held>,
    gate: Arc<Semaphore>,
) -> Result<()> {
    let permit = gate.acquire_owned().await?;
    let mut mqtt = Mqtt::new(tls_connect(&tls, addr).await?);
    mqtt.handshake(&identity, DESIRED_FILTER).await?;
    // The connection no longer needs its handshake-sized buffers.
    mqtt.buffer = BytesMut::new();
    drop(permit);
    held.ready.fetch_add(1, Ordering::Relaxed);
    let result = async {
        while let Some(packet) = mqtt.next().await? {
            if let Packet::Publish(publish) = packet {
                if publish
                    .topic
                    .starts_with("$iothub/twin/PATCH/properties/desired/")
                {
                    let _ = held.desired.send(Instant::now());
                }
                if publish.qos == QoS::AtLeastOnce {
                    mqtt.send(Packet::PubAck(PubAck::new(publish.pkid))).await?;
                }
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    if !held.stop.load(Ordering::Relaxed) {
        held.closed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// Counters of the reported-patch phase.
#[derive(Default)]
struct Reported {
    acked: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// One connection that keeps `in_flight` reported patches pipelined until told to stop.
async fn report(
    tls: TlsConnector,
    addr: SocketAddr,
    identity: Identity,
    in_flight: usize,
    counters: Arc<Reported>,
) -> Result<()> {
    let mut mqtt = Mqtt::new(tls_connect(&tls, addr).await?);
    mqtt.handshake(&identity, "$iothub/twin/res/#").await?;
    let (mut reader, mut writer) = tokio::io::split(mqtt.stream);
    let window = Arc::new(Semaphore::new(in_flight));
    let writer_window = window.clone();
    let writer_counters = counters.clone();
    let writing = tokio::spawn(async move {
        let mut rid: u64 = 0;
        let mut out = BytesMut::new();
        while !writer_counters.stop.load(Ordering::Relaxed) {
            // Take whatever window is free and send that many patches in one write.
            let permit = writer_window.acquire().await?;
            permit.forget();
            let mut n = 1;
            while let Ok(p) = writer_window.try_acquire() {
                p.forget();
                n += 1;
            }
            for _ in 0..n {
                rid += 1;
                let publish = Publish::new(
                    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                    QoS::AtMostOnce,
                    format!(
                        r#"{{"counter":{rid},"state":{{"temperature":{},"ok":true}}}}"#,
                        rid % 97
                    ),
                );
                Packet::Publish(publish).write(&mut out, MAX_PACKET)?;
            }
            writer.write_all(&out).await?;
            out.clear();
        }
        Ok::<_, Error>(())
    });
    let mut buffer = BytesMut::with_capacity(4096);
    while !counters.stop.load(Ordering::Relaxed) {
        let packet = tokio::select! {
            p = read_packet(&mut reader, &mut buffer) => p?,
            () = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        match packet {
            Some(Packet::Publish(publish)) if publish.topic.starts_with("$iothub/twin/res/") => {
                if publish.topic.starts_with("$iothub/twin/res/204/") {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
                window.add_permits(1);
            }
            Some(_) => {}
            None => return Err("hub closed a reporting connection".into()),
        }
    }
    window.add_permits(in_flight);
    let _ = writing.await;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A table row: what was measured, the result, details.
type Row = (String, String, String);

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A hub process and how to reach it.
struct Target {
    hub: HubProcess,
    mqtt_addr: SocketAddr,
    rest_addr: SocketAddr,
    tls: TlsConnector,
    owner_key: String,
}

impl Target {
    fn start(phase: &str) -> Result<Self> {
        let hub = HubProcess::start(phase)?;
        let mqtt_addr = format!("127.0.0.1:{}", hub.info["mqttPort"]).parse()?;
        let rest_addr = format!("127.0.0.1:{}", hub.info["httpsPort"]).parse()?;
        let tls = tls_connector(Path::new(
            hub.info["caCertificate"]
                .as_str()
                .ok_or("no caCertificate")?,
        ))?;
        let owner_key = hub.info["policies"]["iothubowner"]
            .as_str()
            .ok_or("no iothubowner key")?
            .to_owned();
        Ok(Self {
            hub,
            mqtt_addr,
            rest_addr,
            tls,
            owner_key,
        })
    }

    async fn rest(&self) -> Result<Rest> {
        Rest::connect(&self.tls, self.rest_addr, &self.owner_key).await
    }
}

/// Connections held, deployment fan-out and reported-patch throughput (steps 1–4 above).
async fn connection_phase(options: &Options, rows: &mut Vec<Row>) -> Result<()> {
    let target = Target::start("connections")?;
    let (hub, mqtt_addr, tls) = (&target.hub, target.mqtt_addr, target.tls.clone());
    let mut rest = target.rest().await?;
    let (rss0, _) = hub.memory();
    eprintln!("hub started: {rss0:.1} MiB");

    // 1. Identities.
    let per = options.modules_per_device;
    let devices = options.connections.div_ceil(per);
    let mut identities = Vec::with_capacity(options.connections);
    // IoT Hub adds modules only to devices registered in an earlier request: devices go first
    let (mut items, mut module_items) = (Vec::new(), Vec::new());
    for d in 0..devices {
        let device_id = format!("scale-{d:05}");
        items.push(json!({
            "id": device_id, "importMode": "create", "authentication": auth(),
            "capabilities": { "iotEdge": true }, "tags": { "fleet": "bench" },
        }));
        for m in 0..per {
            if identities.len() == options.connections {
                break;
            }
            let module_id = format!("m{m}");
            module_items.push(json!({
                "id": device_id, "moduleId": module_id, "importMode": "create", "authentication": auth(),
            }));
            identities.push(Identity {
                device_id: device_id.clone(),
                module_id: Some(module_id),
            });
        }
    }
    let reporters: Vec<Identity> = (0..options.reported_connections)
        .map(|i| Identity {
            device_id: format!("reporter-{i:03}"),
            module_id: None,
        })
        .collect();
    for r in &reporters {
        items.push(json!({ "id": r.device_id, "importMode": "create", "authentication": auth() }));
    }
    let t = Instant::now();
    let item_count = items.len() + module_items.len();
    bulk_create(&mut rest, items).await?;
    bulk_create(&mut rest, module_items).await?;
    let create_time = t.elapsed();
    eprintln!("created {item_count} identities in {create_time:.1?}");
    rows.push((
        "identities created (bulk POST /devices, 100 per request)".into(),
        format!(
            "{devices} edge devices × {per} modules + {} devices",
            reporters.len()
        ),
        format!(
            "{:.1} s ({:.0} items/s)",
            create_time.as_secs_f64(),
            item_count as f64 / create_time.as_secs_f64()
        ),
    ));

    // 2. Connections.
    let (desired_tx, mut desired_rx) = mpsc::unbounded_channel();
    let held = Arc::new(Held {
        ready: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        desired: desired_tx,
        stop: AtomicBool::new(false),
    });
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let failures = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    for identity in &identities {
        let (tls, held, gate, failures) =
            (tls.clone(), held.clone(), gate.clone(), failures.clone());
        let identity = identity.clone();
        tokio::spawn(async move {
            let client_id = identity.client_id();
            let result = hold_connection(tls, mqtt_addr, identity, held.clone(), gate).await;
            if let Err(error) = result {
                if held.stop.load(Ordering::Relaxed) {
                    return; // the hub is stopping at the end of the benchmark
                }
                if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("connection {client_id} failed: {error}");
                }
            }
        });
    }
    loop {
        let (ready, failed) = (
            held.ready.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
        );
        if ready + failed >= identities.len() {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            return Err(format!("only {ready} of {} connections came up", identities.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_held, hwm_held) = hub.memory();
    let ready = held.ready.load(Ordering::Relaxed);
    eprintln!(
        "{ready} connections up in {connect_time:.1?}; hub RSS {rss_held:.0} MiB, {} fds",
        hub.fds()
    );
    rows.push((
        "connections up (TLS + CONNECT + SUBSCRIBE desired)".into(),
        format!("{ready} of {}", identities.len()),
        format!(
            "{:.1} s ({:.0} connects/s)",
            connect_time.as_secs_f64(),
            ready as f64 / connect_time.as_secs_f64()
        ),
    ));
    rows.push((
        "hub memory with every connection held".into(),
        format!("VmRSS {rss_held:.0} MiB, VmHWM {hwm_held:.0} MiB"),
        format!(
            "{:.1} KiB per connection (above the idle hub's {rss0:.0} MiB)",
            (rss_held - rss0) * 1024.0 / ready.max(1) as f64
        ),
    ));

    // 3. Fan-out: one at-scale deployment for every module.
    let modules: serde_json::Map<String, Value> = (0..per)
        .map(|m| {
            (
                format!("m{m}"),
                json!({ "properties.desired": { "setting": "fan-out", "deployedAt": unix_now() } }),
            )
        })
        .collect();
    let deployment = json!({
        "id": "scale-fanout",
        "targetCondition": "tags.fleet='bench'",
        "priority": 10,
        "content": { "modulesContent": modules },
    });
    let t = Instant::now();
    let (status, body) = rest
        .call("PUT", "/configurations/scale-fanout", &deployment)
        .await?;
    let put_time = t.elapsed();
    if status != 200 {
        return Err(format!("PUT /configurations failed: {status} {body}").into());
    }
    let mut arrivals = Vec::with_capacity(ready);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while arrivals.len() < ready {
        match tokio::time::timeout_at(deadline, desired_rx.recv()).await {
            Ok(Some(at)) => arrivals.push(at.saturating_duration_since(t)),
            _ => break,
        }
    }
    arrivals.sort();
    let last = arrivals.last().copied().unwrap_or_default();
    eprintln!(
        "fan-out: {} of {ready} in {last:.2?} (PUT answered in {put_time:.2?})",
        arrivals.len()
    );
    rows.push((
        "fan-out: one deployment (PUT /configurations) to every connection".into(),
        format!("{} of {ready} received their desired patch", arrivals.len()),
        format!(
            "all in {:.2} s (PUT answered {:.2} s; p50 {:.2} s, p99 {:.2} s)",
            last.as_secs_f64(),
            put_time.as_secs_f64(),
            percentile(&arrivals, 0.5).as_secs_f64(),
            percentile(&arrivals, 0.99).as_secs_f64()
        ),
    ));

    // 4. Reported patches, pipelined, with every other connection still held.
    let counters = Arc::new(Reported::default());
    let mut reporting = Vec::new();
    for identity in reporters {
        let (tls, counters) = (tls.clone(), counters.clone());
        reporting.push(tokio::spawn(report(
            tls,
            mqtt_addr,
            identity,
            options.in_flight,
            counters,
        )));
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // connect and warm up
    let (a0, t0) = (counters.acked.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(options.reported_secs)).await;
    let (a1, elapsed) = (counters.acked.load(Ordering::Relaxed), t0.elapsed());
    counters.stop.store(true, Ordering::Relaxed);
    let mut reporter_errors = 0;
    for task in reporting {
        if let Ok(Err(error)) = task.await {
            reporter_errors += 1;
            eprintln!("reporting connection failed: {error}");
        }
    }
    let rate = (a1 - a0) as f64 / elapsed.as_secs_f64();
    eprintln!("reported: {rate:.0} acked/s");
    rows.push((
        format!(
            "reported patches acknowledged (204) per second, {} connections × {} in flight",
            options.reported_connections, options.in_flight
        ),
        format!("{rate:.0} /s"),
        format!(
            "{} acked in {:.1} s; {} non-204, {reporter_errors} connections failed",
            a1 - a0,
            elapsed.as_secs_f64(),
            counters.failed.load(Ordering::Relaxed)
        ),
    ));

    let (rss_end, hwm_end) = hub.memory();
    let still = held.ready.load(Ordering::Relaxed) - held.closed.load(Ordering::Relaxed);
    rows.push((
        "connections still held at the end".into(),
        format!("{still} of {}", identities.len()),
        format!("hub VmRSS {rss_end:.0} MiB, VmHWM {hwm_end:.0} MiB"),
    ));
    held.stop.store(true, Ordering::Relaxed);
    Ok(())
}

fn print_table(args: &[String], started: Instant, load_before: &str, rows: Vec<Row>) {
    println!();
    println!(
        "Command: `cargo bench -p edgetwin-hub --bench scale -- {}`  ",
        args.iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "Machine: {} cores; load average before {load_before}, after {}; total {:.0} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("| measure | result | detail |");
    println!("| --- | --- | --- |");
    for (what, result, detail) in rows {
        println!("| {what} | {result} | {detail} |");
    }
}
