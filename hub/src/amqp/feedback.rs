//! Cloud-to-device feedback over AMQP: a service's receiver link on
//! `/messages/serviceBound/feedback` (Node `azure-iothub` `Client.getFeedbackReceiver`, the Azure
//! CLI's `c2d-message send --wait`), authorised by a token whose policy grants `ServiceConnect`.
//! The feedback records the hub stored ([`crate::c2d_queue`]) go out in batches, one message per
//! batch as IoT Hub sends them (iot-hub-devguide-messages-c2d.md, "Message feedback"): the body a
//! JSON array of records, `content-type` `application/vnd.microsoft.iothub.feedback.json`,
//! `user-id` the hub's name, the `iothub-enqueuedtime` annotation. A batch leaves the store only
//! when the receiver accepts (or rejects) it; released, unsettled when the link ends, or not
//! settled within the lock it is sent again: at least once.

use std::time::Duration;

use edgetwin_wire::rest::Permission;
use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::messaging::{Data, Message, MessageAnnotations, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp, Value};

use super::Connection;
use crate::c2d::PendingFeedback;
use crate::c2d_queue;
use crate::ids;

/// How often an idle feedback link looks for new records (IoT Hub batches for up to 15 s).
const POLL: Duration = Duration::from_millis(500);

/// The content type of a feedback message.
const CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.feedback.json";

/// Whether a link address's path is `messages/serviceBound/feedback`.
pub fn is_feedback(segments: &[String]) -> bool {
    matches!(segments, [messages, servicebound, feedback]
        if messages.eq_ignore_ascii_case("messages")
            && servicebound.eq_ignore_ascii_case("servicebound")
            && feedback.eq_ignore_ascii_case("feedback"))
}

/// Sends feedback batches on a client's receiver link until it detaches: the next batch at once
/// after one accepted, after a pause when there is none or the last was released.
pub async fn serve_receiver_link(sender: Sender, segments: &[String], connection: &Connection) {
    let Some((mut sender, mut lease)) = connection
        .authorise_or_close(
            sender,
            segments,
            Permission::ServiceConnect,
            "feedback receiver",
        )
        .await
    else {
        return;
    };
    let hub = connection.state.hub.clone();
    let user_id = hub
        .host_name()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    loop {
        // between batches only: one sent is settled and its settlement stored whatever its
        // token does
        if !lease.holds() {
            tracing::info!("feedback receiver link closed: its token expired");
            let _ = sender.close_with_error(lease.token_invalid()).await;
            return;
        }
        let now_ms = ids::now_unix_ms();
        // read first, so that an idle link never waits for the writer
        let waiting = hub.read(|tx| c2d_queue::feedback_waiting(tx, now_ms));
        if waiting.unwrap_or(false) {
            let batch = match hub
                .write(move |tx| c2d_queue::take_feedback(tx, now_ms))
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "feedback not read");
                    Vec::new()
                }
            };
            if !batch.is_empty() {
                let outcome = sender
                    .send(feedback_message(&batch, &user_id, now_ms))
                    .await;
                let (done, ended) = match &outcome {
                    Ok(Outcome::Accepted(_) | Outcome::Rejected(_)) => (true, false),
                    Ok(_) => (false, false),
                    Err(_) => (false, true),
                };
                tracing::debug!(records = batch.len(), done, "feedback batch settled");
                if let Err(error) = hub
                    .write(move |tx| c2d_queue::settle_feedback(tx, &batch, done))
                    .await
                {
                    tracing::warn!(%error, "feedback settlement not stored");
                }
                if ended {
                    break;
                }
                if done {
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = sender.on_detach() => break,
            () = lease.lapsed() => {}
        }
    }
    let _ = sender.close().await;
}

/// The message that carries `batch`, made at `now_ms` on the hub named `user_id`.
fn feedback_message(batch: &[PendingFeedback], user_id: &str, now_ms: i64) -> Message<Data> {
    let records: Vec<_> = batch.iter().map(|p| &p.record).collect();
    let body = serde_json::to_vec(&records).unwrap_or_default();
    let properties = Properties {
        message_id: Some(crate::ids::tracking_id().into()),
        user_id: Some(Binary::from(user_id.as_bytes().to_vec())),
        content_type: Some(Symbol::from(CONTENT_TYPE)),
        ..Properties::default()
    };
    let annotations = MessageAnnotations::builder()
        .insert(
            Symbol::from("iothub-enqueuedtime"),
            Value::Timestamp(Timestamp::from_milliseconds(now_ms)),
        )
        .build();
    Message::builder()
        .properties(properties)
        .message_annotations(annotations)
        .data(Binary::from(body))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feedback_address_is_recognised_in_any_case() {
        let segments = |s: &str| super::super::address_segments(s);
        assert!(is_feedback(&segments("/messages/serviceBound/feedback")));
        assert!(is_feedback(&segments(
            "amqps://h/messages/servicebound/feedback"
        )));
        assert!(!is_feedback(&segments("/messages/devicebound")));
    }
}
