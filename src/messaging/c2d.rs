//! `edgetwin c2d send`: one cloud-to-device message over AMQP, as the service SDKs send it — a
//! sender link to `/messages/devicebound`, the device named in `to` =
//! `/devices/{id}/messages/devicebound` (Python `azure-iot-hub`'s
//! `iothub_amqp_client.send_message_to_device`; the id percent-encoded as Node `azure-iothub`'s
//! `Amqp.send` does with `encodeURIComponent`), a message id (a random UUID unless given, as the
//! Python SDK does), the acknowledgement asked for in the application property `iothub-ack`,
//! and the expiry as `absolute-expiry-time`. A refusal is reported with IoT Hub's error code, as
//! Node `azure-iothub` translates the AMQP conditions (`amqp_common_errors.js`,
//! `amqp_service_errors.js`).

use edgetwin_wire::rest::ErrorCode;
use fe2o3_amqp::link::{Sender, SenderAttachError};
use fe2o3_amqp::types::definitions::{
    AmqpError, Error as AmqpErrorFrame, ErrorCondition, LinkError,
};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp};

use super::connect::{Hub, IOT_HUB_AMQP_PORT};
use super::error::MessagingError;
use crate::provision::cli::HubArgs;

/// Options of `edgetwin c2d`.
#[derive(clap::Args, Debug, Clone)]
pub struct C2dArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: C2dCommand,
}

/// `c2d send`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum C2dCommand {
    /// Queue a message for a device (it receives it over MQTT, AMQP or HTTPS).
    Send(SendArgs),
}

/// The acknowledgement (feedback) a message asks for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Feedback when the device completes or rejects it, or it expires.
    Full,
    /// Feedback when the device completes it.
    Positive,
    /// Feedback when the device rejects it or it expires.
    Negative,
}

impl Ack {
    /// The value of `iothub-ack`.
    fn as_str(self) -> &'static str {
        match self {
            Ack::Full => "full",
            Ack::Positive => "positive",
            Ack::Negative => "negative",
        }
    }
}

/// Options of `c2d send`.
#[derive(clap::Args, Debug, Clone)]
pub struct SendArgs {
    /// Hub connection.
    #[command(flatten)]
    pub hub: HubArgs,
    /// The hub's AMQP over TLS port (IoT Hub's is 5671; `edgetwin hub --amqp-port`).
    #[arg(long, value_name = "PORT", default_value_t = IOT_HUB_AMQP_PORT)]
    pub amqp_port: u16,
    /// The device.
    #[arg(long, value_name = "ID", value_parser = crate::provision::cli::registry_id)]
    pub device: String,
    /// The body, as UTF-8 text.
    #[arg(long, value_name = "TEXT")]
    pub data: String,
    /// Message id (default: a random UUID).
    #[arg(long, value_name = "ID")]
    pub message_id: Option<String>,
    /// Correlation id.
    #[arg(long, value_name = "ID")]
    pub correlation_id: Option<String>,
    /// Ask for feedback.
    #[arg(long, value_enum)]
    pub ack: Option<Ack>,
    /// Seconds until the message expires (default: the hub's, 1 hour on IoT Hub).
    #[arg(long, value_name = "SECS")]
    pub expiry: Option<u64>,
    /// An application property, KEY=VALUE; repeatable.
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = property)]
    pub properties: Vec<(String, String)>,
    /// Content type, e.g. application/json.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Content encoding, e.g. utf-8.
    #[arg(long, value_name = "ENCODING")]
    pub content_encoding: Option<String>,
}

/// Parses `--property KEY=VALUE`.
fn property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

/// A random UUID (version 4), hyphenated.
fn random_uuid() -> String {
    edgetwin_wire::ids::uuid_v4(rand::random())
}

/// The message `args` describe, with `message_id`, expiring `--expiry` seconds after `now_ms`.
pub fn message(args: &SendArgs, message_id: &str, now_ms: i64) -> Message<Data> {
    let device = edgetwin_service::request::encode(&args.device).to_string();
    let properties = Properties {
        message_id: Some(MessageId::String(message_id.to_owned())),
        to: Some(format!("/devices/{device}/messages/devicebound")),
        correlation_id: args.correlation_id.clone().map(MessageId::String),
        content_type: args.content_type.clone().map(Symbol::from),
        content_encoding: args.content_encoding.clone().map(Symbol::from),
        absolute_expiry_time: args.expiry.map(|secs| {
            let ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            Timestamp::from_milliseconds(now_ms.saturating_add(ms))
        }),
        ..Properties::default()
    };
    let mut application = ApplicationProperties::builder();
    if let Some(ack) = args.ack {
        application = application.insert("iothub-ack", SimpleValue::String(ack.as_str().into()));
    }
    for (key, value) in &args.properties {
        application = application.insert(key.as_str(), SimpleValue::String(value.clone()));
    }
    Message::builder()
        .properties(properties)
        .application_properties(application.build())
        .data(Binary::from(args.data.as_bytes().to_vec()))
        .build()
}

/// IoT Hub's error code for an AMQP refusal condition.
fn code_of(condition: &ErrorCondition) -> ErrorCode {
    match condition {
        ErrorCondition::AmqpError(AmqpError::NotFound) => ErrorCode::DeviceNotFound,
        ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded) => {
            ErrorCode::DeviceMaximumQueueDepthExceeded
        }
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess) => {
            ErrorCode::IotHubUnauthorizedAccess
        }
        ErrorCondition::LinkError(LinkError::MessageSizeExceeded) => ErrorCode::MessageTooLarge,
        ErrorCondition::Custom(symbol) if symbol.as_str() == "com.microsoft:argument-error" => {
            ErrorCode::ArgumentInvalid
        }
        _ => ErrorCode::ServerError,
    }
}

/// The refusal `error` as an error naming the device and IoT Hub's code.
fn refused(device: &str, error: Option<&AmqpErrorFrame>) -> MessagingError {
    let (code, description) = match error {
        Some(error) => (
            code_of(&error.condition),
            error.description.clone().unwrap_or_default(),
        ),
        None => (ErrorCode::ServerError, "rejected without a reason".into()),
    };
    let description = match (code, description.is_empty()) {
        (ErrorCode::DeviceNotFound, true) => "the device is not registered in the hub".into(),
        (ErrorCode::DeviceMaximumQueueDepthExceeded, true) => {
            "the device's queue is full (IoT Hub keeps 50 messages per device)".into()
        }
        (ErrorCode::MessageTooLarge, true) => "the body is over 64 KB".into(),
        _ => description,
    };
    MessagingError::Refused {
        device: device.to_owned(),
        code,
        description,
    }
}

/// Runs `edgetwin c2d`.
pub async fn run(args: C2dArgs) -> Result<(), MessagingError> {
    let C2dCommand::Send(args) = args.command;
    let hub = Hub::from_args(&args.hub, args.amqp_port)?;
    let mut amqp = hub.open(&hub.host, hub.port, &hub.host).await?;
    let sent = async {
        let mut sender = Sender::builder()
            .name("edgetwin-c2d-sender")
            .target("/messages/devicebound")
            .attach(&mut amqp.session)
            .await
            .map_err(|e| match e {
                SenderAttachError::RemoteClosedWithError(error) => {
                    refused(&args.device, Some(&error))
                }
                other => MessagingError::Protocol {
                    operation: format!("opening /messages/devicebound at {}", amqp.address),
                    detail: other.to_string(),
                },
            })?;
        let id = args.message_id.clone().unwrap_or_else(random_uuid);
        let outcome = sender
            .send(message(&args, &id, super::now_ms()))
            .await
            .map_err(|e| match e {
                fe2o3_amqp::link::SendError::MessageSizeExceeded(_) => MessagingError::Refused {
                    device: args.device.clone(),
                    code: ErrorCode::MessageTooLarge,
                    description: "the message is larger than the hub takes".into(),
                },
                other => MessagingError::Network {
                    address: amqp.address.clone(),
                    detail: format!("the message was not sent: {other}"),
                },
            })?;
        let _ = sender.close().await;
        match outcome {
            Outcome::Accepted(_) => Ok(id),
            Outcome::Rejected(rejected) => Err(refused(&args.device, rejected.error.as_ref())),
            other => Err(MessagingError::Protocol {
                operation: format!("sending to '{}'", args.device),
                detail: format!("the hub answered {other:?}"),
            }),
        }
    }
    .await;
    amqp.close().await;
    let id = sent?;
    println!("sent message {id} to {}", args.device);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        send: SendArgs,
    }

    #[test]
    fn the_message_carries_what_the_service_sdks_set() {
        let args = Cli::parse_from([
            "c2d",
            "--device",
            "a#b",
            "--data",
            "hello",
            "--correlation-id",
            "c-1",
            "--ack",
            "full",
            "--expiry",
            "60",
            "--property",
            "color=dark blue",
            "--property",
            "eq=a=b",
            "--content-type",
            "application/json",
        ])
        .send;
        let m = message(&args, "m-1", 1_000);
        let p = m.properties.unwrap();
        assert_eq!(p.to.as_deref(), Some("/devices/a%23b/messages/devicebound"));
        assert_eq!(p.message_id, Some(MessageId::String("m-1".into())));
        assert_eq!(p.correlation_id, Some(MessageId::String("c-1".into())));
        assert_eq!(p.content_type, Some(Symbol::from("application/json")));
        assert_eq!(
            p.absolute_expiry_time,
            Some(Timestamp::from_milliseconds(61_000))
        );
        let a = m.application_properties.unwrap();
        assert_eq!(
            a.0.get("iothub-ack"),
            Some(&SimpleValue::String("full".into()))
        );
        assert_eq!(
            a.0.get("color"),
            Some(&SimpleValue::String("dark blue".into()))
        );
        assert_eq!(a.0.get("eq"), Some(&SimpleValue::String("a=b".into())));
        assert_eq!(m.body.0.as_ref(), b"hello");
    }

    #[test]
    fn refusals_carry_iot_hubs_error_codes() {
        let error = AmqpErrorFrame::new(AmqpError::ResourceLimitExceeded, None, None);
        let text = refused("d1", Some(&error)).to_string();
        assert!(text.contains("'d1'"), "{text}");
        assert!(
            text.contains("DeviceMaximumQueueDepthExceeded (403004)"),
            "{text}"
        );
        let error = AmqpErrorFrame::new(AmqpError::NotFound, Some("gone".into()), None);
        assert!(refused("d1", Some(&error))
            .to_string()
            .contains("DeviceNotFound (404001): gone"));
        assert!(property("novalue").is_err() && property("=v").is_err());
    }

    #[test]
    fn generated_message_ids_are_version_4_uuids() {
        let id = random_uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
