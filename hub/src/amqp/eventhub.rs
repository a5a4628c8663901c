//! The Event Hub-compatible endpoint over AMQP: receivers on
//! `{eventHubName}/ConsumerGroups/{group}/Partitions/{0..3}` (`$Default`, or a group created
//! with `--consumer-group` or `/edgetwin/consumerGroups`; each reader independent of the others)
//! get the telemetry the hub stored
//! (from the position their selector filter names), each event with the annotations and
//! properties IoT Hub sets ("Understand and use IoT Hub messages", iot-hub-devguide-messages-
//! construct: `iothub-connection-device-id`, `iothub-connection-module-id`,
//! `iothub-connection-auth-method`, `iothub-enqueuedtime`, `iothub-message-source`, and Event
//! Hubs' `x-opt-sequence-number`, `x-opt-offset`, `x-opt-enqueued-time`); `$management` answers
//! `READ` of `com.microsoft:eventhub` and `com.microsoft:partition`; a receiver on IoT Hub's own
//! `messages/events` (and its `$management`) is redirected to the Event Hub name as IoT Hub does
//! (`amqp:link:redirect` with `hostname`, `network-host`, `port`, `address`: what
//! azure-iot-cli-extension's `_evaluate_redirect` reads to find the endpoint).
//!
//! The Event Hub is named after the hub ([`event_hub_name`]) and served on the hub's own host and
//! AMQP port.

use std::sync::Arc;

use edgetwin_wire::rest::Permission;
use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::definitions::{
    AmqpError, Error as AmqpErrorFrame, ErrorCondition, Fields, LinkError,
};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Message, MessageAnnotations, Properties,
};
use fe2o3_amqp::types::primitives::{
    Array, Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value,
};

use super::cbs::{self, NodeMessage, ReplyLinks};
use super::readers::{self, Refusal};
use super::{address_segments, Connection};
use crate::events::{self, AuthMethod, Event, StartAt, PARTITIONS};
use crate::ids;

/// Most events read from the store at once for one receiver.
const BATCH: usize = 100;

/// The Event Hub-compatible name of a hub: its name, the first label of its host name (IoT Hub
/// names its own `iothub-ehub-{hub}-…`; clients take the name from the connection string).
pub fn event_hub_name(host_name: &str) -> String {
    host_name.split('.').next().unwrap_or(host_name).to_owned()
}

/// What a client's receiver link asks for.
pub struct Wanted {
    /// The link's source address.
    pub address: String,
    /// Its selector filter's text, if any.
    pub selector: Option<String>,
    /// The name it gives itself (`com.microsoft:receiver-name`), if any.
    pub receiver_name: Option<String>,
    /// The epoch (owner level) it claims (`com.microsoft:epoch`), if any.
    pub epoch: Option<i64>,
}

/// Serves a link the hub sends on: answers of `$cbs` / `$management`, a partition's events, or
/// the redirect from `messages/events`; anything else is refused as Event Hubs refuses it.
pub async fn serve_sender(
    mut sender: Sender,
    wanted: &Wanted,
    connection: &Connection,
    replies: &ReplyLinks,
) {
    let segments = address_segments(&wanted.address);
    if is_iot_hub_events(&segments) {
        // before `$management`: IoT Hub redirects `messages/events/$management` too
        let name = event_hub_name(connection.state.hub.host_name());
        let error = redirect(connection, &name, &segments[2..]);
        let _ = sender.close_with_error(error).await;
        return;
    }
    if let Some(node) = cbs::node_of(&wanted.address) {
        return replies.serve(node, sender).await;
    }
    let (partition, start, mut lease, mut reading) =
        match partition_reader(&segments, wanted, connection) {
            Ok(reader) => reader,
            Err(error) => {
                tracing::info!(address = %wanted.address, %error, "AMQP receiver refused");
                let _ = sender.close_with_error(error).await;
                return;
            }
        };
    let ended = tokio::select! {
        ended = stream(&mut sender, partition, start, connection) => ended,
        () = lease.lapsed() => Ended::TokenExpired,
        why = reading.displaced() => Ended::Displaced(why),
    };
    match ended {
        Ended::Detached => {}
        Ended::Closed => {
            let _ = sender.close().await;
        }
        Ended::TokenExpired => {
            tracing::info!(address = %wanted.address, "event receiver closed: its token expired");
            let error = renew_token(sender.name(), connection.state.hub.host_name(), &lease);
            let _ = sender.close_with_error(error).await;
        }
        Ended::Displaced(why) => {
            tracing::info!(address = %wanted.address, "event receiver displaced by an epoch receiver");
            let error = AmqpErrorFrame::new(LinkError::Stolen, Some(why), None);
            let _ = sender.close_with_error(error).await;
        }
    }
}

/// Why a partition's stream of events ended.
enum Ended {
    /// The client detached the link.
    Detached,
    /// The hub stops serving it (the store failed, the hub stops).
    Closed,
    /// No token authorises the link any more.
    TokenExpired,
    /// A receiver with an epoch at least its own took the partition: why, in Event Hubs' words.
    Displaced(String),
}

/// What Event Hubs (and so IoT Hub's Event Hub-compatible endpoint) detaches a receiver with when
/// the token that authorised it expired and none renewed it: `amqp:link:detach-forced`, "The link
/// '…' is force detached. Code: RenewToken. Details: Unauthorized access. 'Listen' claim(s) are
/// required to perform this operation. Resource: 'sb://…/consumergroups/$default/partitions/2'.."
/// (an IoT Hub's built-in endpoint read with azure-messaging-eventhubs: Azure/azure-sdk-for-java
/// #13871 and Azure/azure-iot-sdk-java #880; the same on Service Bus with `detach` `closed: true`,
/// dapr/components-contrib #809, Azure/azure-sdk-for-js #22963).
fn renew_token(link: &str, host: &str, lease: &cbs::Lease<'_>) -> AmqpErrorFrame {
    AmqpErrorFrame::new(
        LinkError::DetachForced,
        Some(format!(
            "The link '{link}' is force detached. Code: RenewToken. Details: Unauthorized \
             access. 'Listen' claim(s) are required to perform this operation. Resource: \
             'sb://{host}/{}'. (edgetwin: the token put on $cbs for it expired and no put-token \
             renewed it)",
            lease.path().to_lowercase()
        )),
        None,
    )
}

/// An `amqp:not-found` error.
fn not_found(description: String) -> AmqpErrorFrame {
    AmqpErrorFrame::new(AmqpError::NotFound, Some(description), None)
}

/// Whether a path is IoT Hub's own `messages/events[/…]`.
fn is_iot_hub_events(segments: &[String]) -> bool {
    matches!(segments, [messages, events, ..]
        if messages.eq_ignore_ascii_case("messages") && events.eq_ignore_ascii_case("events"))
}

/// The partition and start position a receiver link asks for, with its place among the
/// partition's receivers, or the error to detach it with.
fn partition_reader<'c>(
    segments: &[String],
    wanted: &Wanted,
    connection: &'c Connection,
) -> Result<(u32, StartAt, cbs::Lease<'c>, readers::Reading), AmqpErrorFrame> {
    let hub = &connection.state.hub;
    let name = event_hub_name(hub.host_name());
    if !segments
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case(&name))
    {
        return Err(not_found(format!(
            "The messaging entity '{}' could not be found; this hub's Event Hub-compatible name is '{name}'",
            segments.first().map_or("", String::as_str)
        )));
    }
    let lease = connection.authorise(segments, Permission::ServiceConnect)?;
    let [_, groups, group, partitions, partition] = segments else {
        return Err(not_found(format!(
            "'{}' is not {name}/ConsumerGroups/<group>/Partitions/<id>",
            segments.join("/")
        )));
    };
    if !groups.eq_ignore_ascii_case("ConsumerGroups")
        || !partitions.eq_ignore_ascii_case("Partitions")
    {
        return Err(not_found(format!(
            "'{}' is not {name}/ConsumerGroups/<group>/Partitions/<id>",
            segments.join("/")
        )));
    }
    let exists = hub
        .read(|tx| Ok(tx.consumer_group_exists(group)?))
        .map_err(|error| AmqpErrorFrame::new(AmqpError::InternalError, error.message, None))?;
    if !exists {
        // Event Hubs' words for a consumer group it does not have: `amqp:not-found`, "The
        // messaging entity '{namespace}:eventhub:{hub}~32766|{group}' could not be found"
        // (logstash-plugins/logstash-input-azure_event_hubs#32, microsoft/AzureMonitorAddonForSplunk#8)
        return Err(not_found(format!(
            "The messaging entity '{}:eventhub:{name}~32766|{group}' could not be found. \
             (edgetwin: create consumer groups with `edgetwin hub --consumer-group NAME` or \
             PUT /edgetwin/consumerGroups/NAME)",
            hub.host_name()
        )));
    }
    let partition = events::partition_id(partition).ok_or_else(|| {
        AmqpErrorFrame::new(
            ErrorCondition::Custom(Symbol::from("com.microsoft:argument-out-of-range")),
            Some(format!(
                "The specified partition '{partition}' is invalid for an EventHub partition sender or receiver. It should be between 0 and {}.",
                PARTITIONS - 1
            )),
            None,
        )
    })?;
    let start = match &wanted.selector {
        Some(selector) => StartAt::parse(selector).map_err(|why| {
            AmqpErrorFrame::new(
                ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error")),
                Some(why),
                None,
            )
        })?,
        None => StartAt::BEGINNING,
    };
    let reading = connection
        .state
        .readers
        .join(group, partition, wanted.receiver_name.clone(), wanted.epoch)
        .map_err(|refusal| match refusal {
            Refusal::Full(why) => {
                AmqpErrorFrame::new(AmqpError::ResourceLimitExceeded, Some(why), None)
            }
            Refusal::Held(why) => AmqpErrorFrame::new(LinkError::Stolen, Some(why), None),
        })?;
    Ok((partition, start, lease, reading))
}

/// IoT Hub's answer to a receiver on `messages/events{rest}`: the same path on the Event Hub
/// name, at this host and AMQP port.
fn redirect(connection: &Connection, name: &str, rest: &[String]) -> AmqpErrorFrame {
    let host = connection.state.hub.host_name().to_owned();
    let mut path = vec![name.to_owned()];
    path.extend(rest.iter().cloned());
    let address = format!(
        "amqps://{host}:{}/{}",
        connection.state.port,
        path.join("/")
    );
    let mut info = Fields::new();
    info.insert(Symbol::from("hostname"), Value::String(host.clone()));
    info.insert(Symbol::from("network-host"), Value::String(host));
    info.insert(
        Symbol::from("port"),
        Value::Int(i32::from(connection.state.port)),
    );
    info.insert(Symbol::from("address"), Value::String(address.clone()));
    AmqpErrorFrame::new(
        LinkError::Redirect,
        Some(format!("the Event Hub-compatible endpoint is {address}")),
        info,
    )
}

/// Sends a partition's events from `start` on, then each new one as it is stored, until the
/// client detaches or the hub stops serving it. Events after the reader's position are taken
/// from the partition's [`Recent`](events::Recent) events (handed over by the writer after their
/// commit) when those reach back to it, else read from the store: a reader that has caught up
/// never reads the store again unless it falls behind.
async fn stream(
    sender: &mut Sender,
    partition: u32,
    start: StartAt,
    connection: &Connection,
) -> Ended {
    let hub = &connection.state.hub;
    let Some(mut head) = hub.event_head(partition) else {
        return Ended::Closed;
    };
    let mut position = match hub.read(|tx| Ok(tx.event_position(partition, start)?)) {
        Ok(position) => position,
        Err(error) => {
            tracing::warn!(partition, message = %error.message, "cannot read the partition");
            return Ended::Closed;
        }
    };
    loop {
        // marked seen before reading: a commit after this wakes the wait below
        let recent = head.borrow_and_update().after(position, BATCH);
        let batch = match recent {
            Some(batch) => batch,
            None => match hub.read(|tx| Ok(tx.events_after(partition, position, BATCH)?)) {
                Ok(batch) => batch.into_iter().map(Arc::new).collect(),
                Err(error) => {
                    tracing::warn!(partition, message = %error.message, "cannot read the partition");
                    return Ended::Closed;
                }
            },
        };
        if batch.is_empty() {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return Ended::Closed },
                _ = sender.on_detach() => return Ended::Detached,
            }
            continue;
        }
        for event in batch {
            position = event.sequence;
            if let Err(error) = sender.send(event_message(&event)).await {
                tracing::debug!(partition, %error, "event receiver gone");
                return Ended::Detached;
            }
        }
    }
}

/// An event as IoT Hub's Event Hub-compatible endpoint delivers it.
pub fn event_message(event: &Event) -> Message<Data> {
    let enqueued = Value::Timestamp(Timestamp::from_milliseconds(event.enqueued_ms));
    let mut annotations = MessageAnnotations::builder()
        .insert(
            Symbol::from("x-opt-sequence-number"),
            Value::Long(event.sequence),
        )
        .insert(
            Symbol::from("x-opt-offset"),
            Value::String(event.offset.to_string()),
        )
        .insert(Symbol::from("x-opt-enqueued-time"), enqueued.clone())
        .insert(
            Symbol::from("iothub-connection-device-id"),
            Value::String(event.device_id.clone()),
        );
    if let Some(module) = &event.module_id {
        annotations = annotations.insert(
            Symbol::from("iothub-connection-module-id"),
            Value::String(module.clone()),
        );
    }
    let auth_method = AuthMethod::of(&event.properties).annotation(event.module_id.is_some());
    annotations = annotations
        .insert(
            Symbol::from("iothub-connection-auth-method"),
            Value::String(auth_method),
        )
        .insert(Symbol::from("iothub-enqueuedtime"), enqueued)
        .insert(
            Symbol::from("iothub-message-source"),
            Value::String("Telemetry".into()),
        );
    let mut properties = Properties::default();
    let mut application = ApplicationProperties::builder();
    for (key, value) in &event.properties {
        let text = value.clone().unwrap_or_default();
        match key.as_str() {
            "$.mid" => properties.message_id = Some(text.into()),
            "$.cid" => properties.correlation_id = Some(text.into()),
            "$.uid" => properties.user_id = Some(Binary::from(text.into_bytes())),
            "$.ct" => properties.content_type = Some(Symbol::from(text)),
            "$.ce" => properties.content_encoding = Some(Symbol::from(text)),
            "$.ctime" => {
                application =
                    application.insert("iothub-creation-time-utc", SimpleValue::String(text));
            }
            "$.ifid" => {
                annotations =
                    annotations.insert(Symbol::from("iothub-interface-name"), Value::String(text));
            }
            system if system.starts_with("$.") => {}
            name => application = application.insert(name, SimpleValue::String(text)),
        }
    }
    Message::builder()
        .message_annotations(annotations.build())
        .properties(properties)
        .application_properties(application.build())
        .data(Binary::from(event.body.clone()))
        .build()
}

/// Answers a `$management` request: `READ` of `com.microsoft:eventhub` or
/// `com.microsoft:partition`, from a connection whose token (put on `$cbs`, or the request's
/// `security_token`) grants `ServiceConnect` on the Event Hub.
pub fn on_management(connection: &Connection, request: &NodeMessage) -> NodeMessage {
    let hub = &connection.state.hub;
    let name = event_hub_name(hub.host_name());
    if let Some(token) = cbs::property(request, "security_token") {
        let audience = format!("{}/{name}", hub.host_name());
        if let Err(why) = cbs::put_token(connection, token, Some(&audience)) {
            return cbs::answer(401, &why, Value::Null);
        }
    }
    if let Err(error) =
        connection.authorise(std::slice::from_ref(&name), Permission::ServiceConnect)
    {
        let why = error.description.unwrap_or_default();
        return cbs::answer(401, &why, Value::Null);
    }
    if cbs::property(request, "operation") != Some("READ") {
        return cbs::answer(
            400,
            "the $management node takes operation READ only",
            Value::Null,
        );
    }
    if cbs::property(request, "name") != Some(name.as_str()) {
        return cbs::answer(
            404,
            &format!("this hub's Event Hub-compatible name is '{name}'"),
            Value::Null,
        );
    }
    let text = |s: &str| Value::String(s.to_owned());
    let mut body = OrderedMap::new();
    body.insert(text("name"), text(&name));
    match cbs::property(request, "type") {
        Some(kind @ "com.microsoft:eventhub") => {
            let ids: Vec<Value> = (0..PARTITIONS).map(|p| text(&p.to_string())).collect();
            body.insert(text("type"), text(kind));
            body.insert(
                text("created_at"),
                Value::Timestamp(Timestamp::from_milliseconds(ids::now_unix_ms())),
            );
            body.insert(text("partition_count"), Value::Int(PARTITIONS as i32));
            body.insert(text("partition_ids"), Value::Array(Array::from(ids)));
        }
        Some(kind @ "com.microsoft:partition") => {
            let asked = cbs::property(request, "partition").unwrap_or_default();
            let Some(partition) = events::partition_id(asked) else {
                return cbs::answer(
                    400,
                    &format!("partition '{asked}' is not one of 0..{}", PARTITIONS - 1),
                    Value::Null,
                );
            };
            let info = match hub.read(|tx| Ok(tx.partition_info(partition)?)) {
                Ok(info) => info,
                Err(error) => return cbs::answer(500, &error.message, Value::Null),
            };
            body.insert(text("type"), text(kind));
            body.insert(text("partition"), text(asked));
            body.insert(
                text("begin_sequence_number"),
                Value::Long(info.begin_sequence),
            );
            body.insert(
                text("last_enqueued_sequence_number"),
                Value::Long(info.last_sequence),
            );
            body.insert(
                text("last_enqueued_offset"),
                text(&info.last_offset.to_string()),
            );
            body.insert(
                text("last_enqueued_time_utc"),
                Value::Timestamp(Timestamp::from_milliseconds(info.last_enqueued_ms)),
            );
            body.insert(text("is_partition_empty"), Value::Bool(info.is_empty));
        }
        other => {
            return cbs::answer(
                400,
                &format!(
                    "type {other:?} is neither com.microsoft:eventhub nor com.microsoft:partition"
                ),
                Value::Null,
            )
        }
    }
    cbs::answer(200, "OK", Value::Map(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::annotations::OwnedKey;

    #[test]
    fn the_event_hub_is_named_after_the_hub() {
        assert_eq!(event_hub_name("myhub.azure-devices.net"), "myhub");
        assert_eq!(event_hub_name("localhost"), "localhost");
    }

    #[test]
    fn an_event_carries_iot_hubs_annotations_and_properties() {
        let event = Event {
            partition: 1,
            sequence: 7,
            offset: 1234,
            enqueued_ms: 1_700_000_000_123,
            device_id: "d1".into(),
            module_id: Some("m1".into()),
            properties: vec![
                ("$.mid".into(), Some("mid-1".into())),
                ("$.cid".into(), Some("cid-1".into())),
                ("$.ct".into(), Some("application/json".into())),
                ("$.ce".into(), Some("utf-8".into())),
                ("$.on".into(), Some("out1".into())),
                ("level".into(), Some("high".into())),
                ("flag".into(), None),
            ],
            body: b"{\"t\":1}".to_vec(),
            logged: 0,
        };
        let message = event_message(&event);
        let annotations = message.message_annotations.unwrap();
        let get = |key: &str| annotations.get(&OwnedKey::from(Symbol::from(key))).cloned();
        assert_eq!(get("x-opt-sequence-number"), Some(Value::Long(7)));
        assert_eq!(get("x-opt-offset"), Some(Value::String("1234".into())));
        let enqueued = Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_123));
        assert_eq!(get("x-opt-enqueued-time"), Some(enqueued.clone()));
        assert_eq!(get("iothub-enqueuedtime"), Some(enqueued));
        assert_eq!(
            get("iothub-connection-device-id"),
            Some(Value::String("d1".into()))
        );
        assert_eq!(
            get("iothub-connection-module-id"),
            Some(Value::String("m1".into()))
        );
        assert_eq!(
            get("iothub-message-source"),
            Some(Value::String("Telemetry".into()))
        );
        let properties = message.properties.unwrap();
        assert_eq!(properties.message_id, Some("mid-1".to_owned().into()));
        assert_eq!(properties.correlation_id, Some("cid-1".to_owned().into()));
        assert_eq!(
            properties.content_type,
            Some(Symbol::from("application/json"))
        );
        assert_eq!(properties.content_encoding, Some(Symbol::from("utf-8")));
        let application = message.application_properties.unwrap();
        assert_eq!(
            application.0.get("level"),
            Some(&SimpleValue::String("high".into()))
        );
        assert_eq!(
            application.0.get("flag"),
            Some(&SimpleValue::String(String::new()))
        );
        assert!(application.0.get("$.on").is_none());
        assert_eq!(message.body.0.as_ref(), b"{\"t\":1}");
    }
}
