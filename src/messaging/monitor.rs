//! `edgetwin monitor`: telemetry as it arrives, read from the hub's Event Hub-compatible
//! endpoint the way `az iot hub monitor-events` reads it (azure-iot-cli-extension,
//! `azext_iot/monitor/builders/hub_target_builder.py` and `monitor/telemetry.py`): a receiver on
//! `messages/events` that IoT Hub answers with `amqp:link:redirect` to the Event Hub-compatible
//! name, the partition ids from that Event Hub's `$management` node (`READ` of
//! `com.microsoft:eventhub`), then one receiver per partition of the consumer group with a
//! selector filter saying where to start. A dropped connection is opened again, each partition
//! resuming after the last sequence number printed.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use fe2o3_amqp::link::{LinkStateError, Receiver, ReceiverAttachError, RecvError};
use fe2o3_amqp::types::definitions::{Error as AmqpErrorFrame, ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::connect::{Amqp, Hub, IOT_HUB_AMQP_PORT, RENEW_EVERY};
use super::error::MessagingError;
use super::event::{self, Event, PropertyKind, Shown};
use super::start::{self, Start};
use crate::provision::cli::HubArgs;

/// Options of `edgetwin monitor`.
#[derive(clap::Args, Debug, Clone)]
pub struct MonitorArgs {
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// The hub's AMQP over TLS port (IoT Hub's is 5671; `edgetwin hub --amqp-port`).
    #[arg(long, value_name = "PORT", default_value_t = IOT_HUB_AMQP_PORT)]
    pub amqp_port: u16,
    /// Only events of this device; `*` and `?` are wildcards.
    #[arg(long, short = 'd', value_name = "ID")]
    pub device: Option<String>,
    /// Only events of this module; `*` and `?` are wildcards.
    #[arg(long, short = 'm', value_name = "ID")]
    pub module: Option<String>,
    /// Print properties too: sys (system), app (application), anno (annotations), all; alone,
    /// all of them.
    #[arg(
        long,
        short = 'p',
        value_enum,
        num_args = 0..,
        value_delimiter = ',',
        default_missing_value = "all",
        value_name = "KIND"
    )]
    pub properties: Vec<PropertyKind>,
    /// One JSON object per line, shaped as `az iot hub monitor-events` prints each event.
    #[arg(long)]
    pub json: bool,
    /// Every event the hub keeps, not only those arriving from now on.
    #[arg(long, conflicts_with = "since")]
    pub from_start: bool,
    /// Events enqueued since TIME: RFC 3339 (2026-12-07T12:00:00Z) or a span back (15m, 2h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Stop after N events (those the filters keep).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after SECS without an event; with --count, fewer than N events is an error.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// The consumer group to read through.
    #[arg(long, value_name = "NAME", default_value = "$Default")]
    pub consumer_group: String,
}

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a partition's task reports: an event, or why its link ended.
type Report = (String, Result<Event, MessagingError>);

/// Runs `edgetwin monitor` until --count, --timeout, Ctrl-C/SIGTERM or a refusal.
pub async fn run(args: MonitorArgs) -> Result<(), MessagingError> {
    let hub = Hub::from_args(&args.hub, args.amqp_port)?;
    let start = match (&args.since, args.from_start) {
        (Some(text), _) => {
            Start::Since(start::parse_since(text, super::now_ms()).map_err(MessagingError::Input)?)
        }
        (None, true) => Start::Beginning,
        (None, false) => Start::Latest,
    };
    let mut monitor = Monitor {
        args: &args,
        shown: Shown::from_kinds(&args.properties),
        printed: 0,
        positions: HashMap::new(),
    };
    let stop = crate::signals::stopped();
    tokio::pin!(stop);
    let idle = args.timeout.filter(|s| *s > 0).map(Duration::from_secs);
    let idle_deadline = || idle.map(|d| tokio::time::Instant::now() + d);
    let mut deadline = idle_deadline();
    let mut backoff = Duration::from_secs(1);
    let mut first_connect_ms = None;
    loop {
        let starting = match (first_connect_ms, start) {
            // a reconnect loses nothing of what arrived while the monitor was away
            (Some(ms), Start::Latest) => Start::Since(ms),
            _ => start,
        };
        let connected = tokio::select! {
            connected = connect(&hub, &args.consumer_group, starting, &monitor.positions) => connected,
            _ = &mut stop => return Ok(()),
            _ = sleep_until(deadline) => return monitor.timed_out(),
        };
        let (mut amqp, partitions, mut reports) = match connected {
            Ok(connected) => connected,
            Err(error) if first_connect_ms.is_none() || !error.is_transient() => return Err(error),
            Err(error) => {
                eprintln!("{error}; trying again in {} s", backoff.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if first_connect_ms.is_none() {
            first_connect_ms = Some(super::now_ms());
            eprintln!(
                "monitoring {} partitions at {}, {}; Ctrl-C to stop",
                partitions.len(),
                amqp.address,
                match start {
                    Start::Latest => "from now on".to_owned(),
                    Start::Beginning => "from the start".to_owned(),
                    _ => format!("since {}", args.since.as_deref().unwrap_or_default()),
                }
            );
        } else {
            eprintln!("reconnected to {}", amqp.address);
        }
        backoff = Duration::from_secs(1);
        let mut renewal =
            tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
        let lost = loop {
            tokio::select! {
                _ = renewal.tick() => if let Err(error) = hub.renew(&mut amqp).await {
                    break error;
                },
                report = reports.recv() => match report {
                    Some((partition, Ok(event))) => {
                        if let Some(sequence) = event.sequence {
                            monitor.positions.insert(partition, sequence);
                        }
                        match monitor.show(&event) {
                            Printing::Skipped => {}
                            Printing::Printed => deadline = idle_deadline(),
                            Printing::Done => { amqp.close().await; return Ok(()) }
                        }
                    }
                    Some((_, Err(error))) => break error,
                    None => break MessagingError::Network {
                        address: amqp.address.clone(),
                        detail: "every partition's link ended".into(),
                    },
                },
                _ = &mut stop => { amqp.close().await; return Ok(()) }
                _ = sleep_until(deadline) => { amqp.close().await; return monitor.timed_out() }
            }
        };
        amqp.close().await;
        if !lost.is_transient() {
            return Err(lost);
        }
        eprintln!("{lost}; reconnecting");
    }
}

/// What became of one event.
enum Printing {
    /// The filters dropped it.
    Skipped,
    /// Printed.
    Printed,
    /// Printed, and --count is reached (or stdout is gone): stop.
    Done,
}

/// The printing side of a run.
struct Monitor<'a> {
    /// The flags.
    args: &'a MonitorArgs,
    /// Which properties to print.
    shown: Shown,
    /// Events printed so far.
    printed: u64,
    /// The last sequence number seen, by partition id.
    positions: HashMap<String, i64>,
}

impl Monitor<'_> {
    /// Prints `event` if it passes --device and --module.
    fn show(&mut self, event: &Event) -> Printing {
        let keep = |pattern: &Option<String>, id: &str| {
            pattern.as_deref().is_none_or(|p| event::matches(p, id))
        };
        if !keep(&self.args.device, &event.origin) || !keep(&self.args.module, &event.module) {
            return Printing::Skipped;
        }
        let line = if self.args.json {
            event.to_json(self.shown).to_string()
        } else {
            event.to_text(self.shown)
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Printing::Done;
        }
        self.printed += 1;
        match self.args.count {
            Some(count) if self.printed >= count => Printing::Done,
            _ => Printing::Printed,
        }
    }

    /// The end of a run at --timeout: an error when --count was not reached.
    fn timed_out(&self) -> Result<(), MessagingError> {
        match self.args.count {
            Some(wanted) if self.printed < wanted => Err(MessagingError::TooFew {
                got: self.printed,
                wanted,
                secs: self.args.timeout.unwrap_or_default(),
            }),
            _ => Ok(()),
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Where IoT Hub redirects `messages/events`: host, port and the Event Hub-compatible name.
#[derive(Debug, PartialEq, Eq)]
struct Redirect {
    host: String,
    port: u16,
    name: String,
}

/// The redirect in a link error (`amqp:link:redirect` with `hostname`, `port` and `address`
/// `amqps://host:port/name[/…]`, what az's `_evaluate_redirect` reads).
fn redirect_of(error: &AmqpErrorFrame, default_port: u16) -> Option<Redirect> {
    if error.condition != ErrorCondition::LinkError(LinkError::Redirect) {
        return None;
    }
    let info = error.info.as_ref()?;
    let field = |name: &str| info.get(&Symbol::from(name));
    let address = match field("address")? {
        Value::String(address) => address.clone(),
        _ => return None,
    };
    let path = address
        .split_once("://")
        .map_or(address.as_str(), |(_, rest)| rest);
    let (authority, path) = path.split_once('/')?;
    let name = path.split('/').next().filter(|n| !n.is_empty())?.to_owned();
    let host = match field("hostname") {
        Some(Value::String(host)) => host.clone(),
        _ => authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_owned(),
    };
    let port = match field("port") {
        Some(Value::Int(port)) => u16::try_from(*port).ok(),
        Some(Value::Uint(port)) => u16::try_from(*port).ok(),
        _ => None,
    }
    .unwrap_or(default_port);
    Some(Redirect { host, port, name })
}

/// The error a link was detached or refused with, if the peer gave one.
fn link_error_of_state(error: &LinkStateError) -> Option<&AmqpErrorFrame> {
    match error {
        LinkStateError::RemoteDetachedWithError(e) | LinkStateError::RemoteClosedWithError(e) => {
            Some(e)
        }
        _ => None,
    }
}

/// Whether a link error may go away by itself (the hub or Event Hubs restarting, a link moved
/// elsewhere, throttling), as the Event Hubs SDKs retry it; other conditions will come again.
fn is_transient(condition: &ErrorCondition) -> bool {
    use fe2o3_amqp::types::definitions::{AmqpError, ConnectionError};
    match condition {
        ErrorCondition::AmqpError(error) => {
            matches!(
                error,
                AmqpError::InternalError | AmqpError::ResourceLimitExceeded
            )
        }
        ErrorCondition::ConnectionError(ConnectionError::ConnectionForced) => true,
        ErrorCondition::LinkError(error) => {
            matches!(error, LinkError::DetachForced | LinkError::Stolen)
        }
        ErrorCondition::Custom(symbol) => matches!(
            symbol.as_str(),
            "com.microsoft:server-busy" | "com.microsoft:timeout"
        ),
        _ => false,
    }
}

/// The error of the link `what` the hub detached with `error`: a network error (reconnect)
/// when transient, else a refusal.
fn link_failed(what: &str, address: &str, error: &AmqpErrorFrame) -> MessagingError {
    let description = error.description.clone().unwrap_or_default();
    if is_transient(&error.condition) {
        return MessagingError::Network {
            address: address.to_owned(),
            detail: format!("{what}: {description}"),
        };
    }
    MessagingError::LinkRefused {
        what: format!("{what} at {address}"),
        condition: condition_name(&error.condition),
        description,
    }
}

/// An error condition's symbol, e.g. `amqp:not-found`.
fn condition_name(condition: &ErrorCondition) -> String {
    let symbol = match condition {
        ErrorCondition::AmqpError(e) => Symbol::from(e),
        ErrorCondition::ConnectionError(e) => Symbol::from(e),
        ErrorCondition::SessionError(e) => Symbol::from(e),
        ErrorCondition::LinkError(e) => Symbol::from(e),
        ErrorCondition::Custom(symbol) => symbol.clone(),
    };
    symbol.0
}

/// Asks IoT Hub where `messages/events` is served.
async fn find_event_hub(amqp: &mut Amqp, default_port: u16) -> Result<Redirect, MessagingError> {
    let protocol = |detail: String| MessagingError::Protocol {
        operation: format!("opening messages/events at {}", amqp.address),
        detail,
    };
    let attached = Receiver::builder()
        .name("edgetwin-monitor-redirect")
        .source("messages/events")
        .target("edgetwin-monitor")
        .attach(&mut amqp.session)
        .await;
    let error = match attached {
        Err(ReceiverAttachError::RemoteClosedWithError(error)) => error,
        Err(other) => return Err(protocol(format!("refused: {other}"))),
        Ok(mut receiver) => {
            // IoT Hub takes the attach, then detaches with the redirect
            let outcome =
                tokio::time::timeout(Duration::from_secs(30), receiver.recv::<Body<Value>>()).await;
            match outcome {
                Ok(Err(RecvError::LinkStateError(state))) => match link_error_of_state(&state) {
                    Some(error) => error.clone(),
                    None => return Err(protocol(format!("detached: {state}"))),
                },
                Ok(Err(other)) => return Err(protocol(other.to_string())),
                Ok(Ok(_)) => return Err(protocol("an event instead of a redirect".into())),
                Err(_) => return Err(protocol("no redirect within 30 s".into())),
            }
        }
    };
    redirect_of(&error, default_port)
        .ok_or_else(|| link_failed("messages/events", &amqp.address, &error))
}

/// The partition ids of the Event Hub `name` (its `$management` node's `READ`).
async fn partition_ids(amqp: &mut Amqp, name: &str) -> Result<Vec<String>, MessagingError> {
    let properties = [
        ("operation", "READ"),
        ("name", name),
        ("type", "com.microsoft:eventhub"),
    ];
    let node = format!("{name}/$management");
    let (status, description, body) = amqp.request(&node, &properties, Value::Null).await?;
    let protocol = |detail: String| MessagingError::Protocol {
        operation: format!("reading the partitions of '{name}' at {}", amqp.address),
        detail,
    };
    if status != 200 {
        return Err(protocol(format!("{status}: {description}")));
    }
    let Value::Map(map) = body else {
        return Err(protocol("the answer has no map body".into()));
    };
    let ids = match map.get(&Value::String("partition_ids".into())) {
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|id| match id {
                Value::String(id) => Some(id.clone()),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Some(Value::List(ids)) => ids
            .iter()
            .filter_map(|id| match id {
                Value::String(id) => Some(id.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if ids.is_empty() {
        return Err(protocol("no partition_ids in the answer".into()));
    }
    Ok(ids)
}

/// Connects, follows the redirect, and attaches one receiver per partition, each served by a
/// task that reports on the returned channel; partitions with a position resume after it.
async fn connect(
    hub: &Hub,
    group: &str,
    start: Start,
    positions: &HashMap<String, i64>,
) -> Result<(Amqp, Vec<String>, mpsc::Receiver<Report>), MessagingError> {
    let mut amqp = hub.open(&hub.host, hub.port, &hub.host).await?;
    let redirect = find_event_hub(&mut amqp, hub.port).await?;
    if (redirect.host.as_str(), redirect.port) != (hub.host.as_str(), hub.port) {
        // another host (IoT Hub's Event Hubs namespace): a token for the Event Hub there, as
        // az's `_build_auth_container` signs it
        amqp.close().await;
        let resource = format!("sb://{}/{}", redirect.host, redirect.name);
        amqp = hub.open(&redirect.host, redirect.port, &resource).await?;
    }
    let ids = partition_ids(&mut amqp, &redirect.name).await?;
    let (tx, rx) = mpsc::channel(256);
    let mut tasks = JoinSet::new();
    for id in &ids {
        let from = positions.get(id).map_or(start, |seq| Start::After(*seq));
        let address = format!("{}/ConsumerGroups/{group}/Partitions/{id}", redirect.name);
        let filter = Symbol::from("apache.org:selector-filter:string");
        let source = Source::builder()
            .address(address.clone())
            .add_to_filter(
                filter.clone(),
                Described {
                    descriptor: Descriptor::Name(filter),
                    value: Value::String(from.selector()),
                },
            )
            .build();
        let receiver = Receiver::builder()
            .name(format!("edgetwin-monitor-{id}"))
            .source(source)
            .target("edgetwin-monitor")
            .sender_settle_mode(fe2o3_amqp::types::definitions::SenderSettleMode::Settled)
            .attach(&mut amqp.session)
            .await
            .map_err(|e| match &e {
                ReceiverAttachError::RemoteClosedWithError(error) => {
                    link_failed(&address, &amqp.address, error)
                }
                other => MessagingError::Protocol {
                    operation: format!("reading {address} at {}", amqp.address),
                    detail: other.to_string(),
                },
            })?;
        tasks.spawn(read_partition(
            receiver,
            address,
            amqp.address.clone(),
            tx.clone(),
        ));
    }
    // the tasks end with their links, when the connection closes
    tasks.detach_all();
    Ok((amqp, ids, rx))
}

/// Reports each event of the receiver of `partition` (the link's address) until its link ends.
async fn read_partition(
    mut receiver: Receiver,
    partition: String,
    address: String,
    reports: mpsc::Sender<Report>,
) {
    let id = partition.rsplit('/').next().unwrap_or_default().to_owned();
    loop {
        let report = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => Ok(Event::from_message(delivery.message())),
            Err(RecvError::LinkStateError(state)) => Err(match link_error_of_state(&state) {
                Some(error) => link_failed(&partition, &address, error),
                None => MessagingError::Network {
                    address: address.clone(),
                    detail: format!("{partition}: {state}"),
                },
            }),
            Err(error) => Err(MessagingError::Network {
                address: address.clone(),
                detail: format!("{partition}: {error}"),
            }),
        };
        let end = report.is_err();
        if reports.send((id.clone(), report)).await.is_err() || end {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::definitions::{AmqpError, Fields};

    #[test]
    fn the_redirect_names_the_event_hub_host_port_and_name() {
        let mut info = Fields::new();
        info.insert(Symbol::from("hostname"), Value::String("localhost".into()));
        info.insert(Symbol::from("port"), Value::Int(5672));
        info.insert(
            Symbol::from("address"),
            Value::String("amqps://localhost:5672/myhub/$management".into()),
        );
        let error = AmqpErrorFrame::new(LinkError::Redirect, None, info);
        assert_eq!(
            redirect_of(&error, 5671),
            Some(Redirect {
                host: "localhost".into(),
                port: 5672,
                name: "myhub".into()
            })
        );
        let refused = AmqpErrorFrame::new(AmqpError::NotFound, None, None);
        assert_eq!(redirect_of(&refused, 5671), None);
    }

    #[test]
    fn a_link_detached_by_a_restart_is_retried_and_a_refusal_is_not() {
        let forced = AmqpErrorFrame::new(LinkError::DetachForced, None, None);
        assert!(link_failed("p0", "h:5671", &forced).is_transient());
        let busy = AmqpErrorFrame::new(
            ErrorCondition::Custom(Symbol::from("com.microsoft:server-busy")),
            None,
            None,
        );
        assert!(link_failed("p0", "h:5671", &busy).is_transient());
        let missing = AmqpErrorFrame::new(AmqpError::NotFound, Some("no group".into()), None);
        let error = link_failed("eh/ConsumerGroups/x/Partitions/0", "h:5671", &missing);
        assert!(!error.is_transient());
        assert_eq!(
            error.to_string(),
            "eh/ConsumerGroups/x/Partitions/0 at h:5671: the hub refused it (amqp:not-found): no group"
        );
    }
}
