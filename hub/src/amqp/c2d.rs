//! The service side of cloud-to-device messages over AMQP: a client's sender link to
//! `/messages/devicebound`, authorised by a token whose policy grants `ServiceConnect`. Each
//! message names its device in `to` (`/devices/{id}/messages/devicebound`, as Python
//! `azure-iot-hub`'s `iothub_amqp_client.send_message_to_device` and Node `azure-iothub`'s
//! `Amqp.send` set it) and is queued ([`crate::c2d::enqueue`]); its outcome is `accepted`, or
//! `rejected` with the condition Node `azure-iothub` translates (`amqp_service_errors.js`:
//! `amqp:resource-limit-exceeded` is `DeviceMaximumQueueDepthExceededError`;
//! `amqp_common_errors.js`: `amqp:not-found`, `amqp:link:message-size-exceeded`,
//! `com.microsoft:argument-error`).

use edgetwin_wire::rest::{ErrorCode, Permission};
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::definitions::{
    AmqpError, Error as AmqpErrorFrame, ErrorCondition, LinkError,
};
use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};

use super::Connection;
use crate::c2d::{self, C2dMessage};
use crate::c2d_queue;
use crate::error::ApiError;
use crate::ids;

/// Whether a link address's path is `messages/devicebound`.
pub fn is_devicebound(segments: &[String]) -> bool {
    matches!(segments, [messages, devicebound]
        if messages.eq_ignore_ascii_case("messages") && devicebound.eq_ignore_ascii_case("devicebound"))
}

/// Takes the messages of a client's sender link to `/messages/devicebound` until it detaches.
pub async fn serve_sender_link(receiver: Receiver, segments: &[String], connection: &Connection) {
    let Some((mut receiver, mut lease)) = connection
        .authorise_or_close(
            receiver,
            segments,
            Permission::ServiceConnect,
            "cloud-to-device sender",
        )
        .await
    else {
        return;
    };
    loop {
        // between messages only: one taken is queued and settled whatever its token does
        let received = tokio::select! {
            received = receiver.recv::<Body<Value>>() => received,
            () = lease.lapsed() => {
                tracing::info!("cloud-to-device sender link closed: its token expired");
                let _ = receiver.close_with_error(lease.token_invalid()).await;
                return;
            }
        };
        let delivery = match received {
            Ok(delivery) => {
                tracing::debug!("cloud-to-device message received");
                delivery
            }
            Err(error) => {
                tracing::debug!(%error, "cloud-to-device sender link ended");
                break;
            }
        };
        let queued = match to_queue(delivery.message(), ids::now_unix_ms()) {
            Ok((device_id, message)) => {
                connection
                    .state
                    .hub
                    .write_with_effects(move |tx| {
                        c2d_queue::enqueue(tx, &device_id, message, ids::now_unix_ms())
                    })
                    .await
            }
            Err(error) => Err(error),
        };
        let settled = match queued {
            Ok(_) => receiver.accept(&delivery).await,
            Err(error) => {
                tracing::info!(%error, "cloud-to-device message refused");
                receiver.reject(&delivery, rejection(&error)).await
            }
        };
        if let Err(error) = settled {
            tracing::debug!(%error, "cloud-to-device outcome not sent");
            break;
        }
    }
    let _ = receiver.close().await;
}

/// The AMQP error a refused message is rejected with.
fn rejection(error: &ApiError) -> AmqpErrorFrame {
    let condition = match error.code {
        ErrorCode::DeviceNotFound => ErrorCondition::AmqpError(AmqpError::NotFound),
        ErrorCode::DeviceMaximumQueueDepthExceeded => {
            ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded)
        }
        ErrorCode::MessageTooLarge => ErrorCondition::LinkError(LinkError::MessageSizeExceeded),
        ErrorCode::ArgumentInvalid => ErrorCondition::Custom("com.microsoft:argument-error".into()),
        _ => ErrorCondition::AmqpError(AmqpError::InternalError),
    };
    AmqpErrorFrame::new(condition, Some(error.message.clone()), None)
}

/// The device a message is for and the message to queue, from what the sender set: `to`,
/// `message-id`, `correlation-id`, `user-id`, `content-type`, `content-encoding`,
/// `absolute-expiry-time` (else [`c2d::DEFAULT_TTL_MS`] from `now_ms`), the application property
/// `iothub-ack`, the other application properties, and the body.
fn to_queue(message: &Message<Body<Value>>, now_ms: i64) -> Result<(String, C2dMessage), ApiError> {
    let properties = message.properties.clone().unwrap_or_default();
    let to = properties.to.clone().ok_or_else(|| {
        ApiError::invalid("the message has no 'to' (/devices/{id}/messages/devicebound)")
    })?;
    let device_id = device_of(&to)?;
    let mut queued = C2dMessage {
        message_id: properties.message_id.map(id_text),
        correlation_id: properties.correlation_id.map(id_text),
        user_id: properties
            .user_id
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        content_type: properties.content_type.map(|s| s.0),
        content_encoding: properties.content_encoding.map(|s| s.0),
        expiry_requested: properties.absolute_expiry_time.is_some(),
        expiry_ms: c2d::expiry(
            now_ms,
            properties.absolute_expiry_time.map(|t| t.milliseconds()),
        ),
        body: body_bytes(&message.body)?,
        ..C2dMessage::default()
    };
    if let Some(application) = &message.application_properties {
        for (key, value) in application.0.iter() {
            let text = simple_text(value);
            if key == "iothub-ack" {
                queued.ack = Some(text);
            } else {
                queued.properties.push((key.clone(), text));
            }
        }
    }
    Ok((device_id, queued))
}

/// The device of `to` = `/devices/{id}/messages/devicebound` (the id percent-encoded, as Node
/// `azure-iothub` encodes it with `encodeURIComponent`).
fn device_of(to: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "'to' is '{to}', not /devices/{{id}}/messages/devicebound"
        ))
    };
    let segments: Vec<&str> = to.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["devices", id, messages, devicebound]
            if messages.eq_ignore_ascii_case("messages")
                && devicebound.eq_ignore_ascii_case("devicebound")
                && !id.is_empty() =>
        {
            percent_encoding::percent_decode_str(id)
                .decode_utf8()
                .map(|id| id.into_owned())
                .map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// A message or correlation id as text (a UUID hyphenated, as the SDKs show it).
fn id_text(id: MessageId) -> String {
    match id {
        MessageId::String(text) => text,
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(uuid) => edgetwin_wire::ids::uuid_text(&uuid.into_inner()),
        MessageId::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// An application property's value as text.
fn simple_text(value: &SimpleValue) -> String {
    match value {
        SimpleValue::String(text) => text.clone(),
        SimpleValue::Symbol(symbol) => symbol.0.clone(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Double(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// The bytes of a body: its data sections, or an AMQP string or binary value.
fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, ApiError> {
    match body {
        Body::Data(sections) => Ok(sections.iter().flat_map(|d| d.0.to_vec()).collect()),
        Body::Value(value) => match &value.0 {
            Value::String(text) => Ok(text.clone().into_bytes()),
            Value::Binary(bytes) => Ok(bytes.to_vec()),
            _ => Err(ApiError::invalid(
                "the body must be data, a string or binary",
            )),
        },
        Body::Empty => Ok(Vec::new()),
        Body::Sequence(_) => Err(ApiError::invalid(
            "the body must be data, a string or binary",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_comes_from_to_as_the_sdks_set_it() {
        assert_eq!(device_of("/devices/d1/messages/devicebound").unwrap(), "d1");
        assert_eq!(
            device_of("/devices/a%23b/messages/deviceBound").unwrap(),
            "a#b"
        );
        assert!(device_of("/devices//messages/devicebound").is_err());
        assert!(device_of("/devices/d1/messages/events").is_err());
    }

    #[test]
    fn uuid_message_ids_read_as_the_sdks_write_them() {
        let uuid = fe2o3_amqp::types::primitives::Uuid::from([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        assert_eq!(
            id_text(MessageId::Uuid(uuid)),
            "12345678-9abc-def0-0123-456789abcdef"
        );
    }
}
