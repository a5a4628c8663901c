//! Each device's cloud-to-device queue in the store: the rules of [`crate::c2d`] applied in a
//! transaction of the writer (enqueue, deliver over MQTT, receive and settle over HTTPS,
//! complete, purge, the expiry sweep), with the feedback records each message's fate makes, and
//! the feedback queue the AMQP feedback receiver takes them from.
//!
//! Part of the core: depends on the store, the writer and the rules of [`crate::c2d`].

use std::time::Duration;

use edgetwin_wire::rest::ErrorCode;
use tokio::sync::watch;

use crate::c2d::{self, C2dMessage, Fate, FeedbackDue, PendingFeedback, Refused, Settlement};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::store::Transaction;
use crate::writer::{Effect, Written};

/// The counter that numbers cloud-to-device messages (their sequence numbers).
const SEQUENCE_COUNTER: &str = "c2dSequence";

/// How often the sweep looks for expired messages.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The error IoT Hub answers a refused message with.
fn refusal(refused: Refused, pending: usize) -> ApiError {
    match refused {
        Refused::TooLarge { size } => ApiError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "the cloud-to-device message is {size} bytes; the most is {}",
                c2d::MAX_SIZE
            ),
        ),
        Refused::QueueFull => ApiError::new(
            ErrorCode::DeviceMaximumQueueDepthExceeded,
            format!(
                "the device's cloud-to-device queue holds {pending} messages; the most is {}",
                c2d::MAX_PENDING
            ),
        ),
    }
}

/// Removes `message` of `device_id` from its queue with `fate` at `now_ms`, storing the feedback
/// record its sender asked for.
fn leave(
    tx: &Transaction<'_>,
    device_id: &str,
    message: &C2dMessage,
    fate: Fate,
    now_ms: i64,
) -> Result<(), ApiError> {
    tracing::info!(
        device_id,
        sequence = message.sequence,
        status = fate.status_code(),
        "cloud-to-device message left the queue"
    );
    tx.delete_c2d(device_id, message.sequence)?;
    let generation_id = tx
        .device(device_id)?
        .and_then(|d| d.generation_id)
        .unwrap_or_default();
    if let Some(record) = c2d::feedback(device_id, &generation_id, message, fate, now_ms) {
        tx.put_c2d_feedback(device_id, &record, now_ms)?;
    }
    Ok(())
}

/// Dead-letters the messages of `device_id`'s queue that must leave it at `now_ms` and returns
/// the others, oldest first.
fn live_queue(
    tx: &Transaction<'_>,
    device_id: &str,
    now_ms: i64,
) -> Result<Vec<C2dMessage>, ApiError> {
    let mut live = Vec::new();
    for message in tx.c2d_queue(device_id)? {
        match c2d::dead_letter(&message, now_ms) {
            Some(fate) => leave(tx, device_id, &message, fate, now_ms)?,
            None => live.push(message),
        }
    }
    Ok(live)
}

/// Queues `message` for `device_id` at `now_ms` (its sequence number, enqueued time and
/// delivery count are set here) if the device exists and its queue has room; the device's
/// connection is told after the commit. Returns the sequence number.
pub fn enqueue(
    tx: &Transaction<'_>,
    device_id: &str,
    mut message: C2dMessage,
    now_ms: i64,
) -> Written<i64> {
    if tx.device(device_id)?.is_none() {
        return Err(ApiError::new(
            ErrorCode::DeviceNotFound,
            format!("device {device_id} is not registered"),
        ));
    }
    let pending = live_queue(tx, device_id, now_ms)?.len();
    c2d::admit(pending, message.body.len()).map_err(|refused| refusal(refused, pending))?;
    message.sequence = tx.next_counter(SEQUENCE_COUNTER)?;
    message.enqueued_ms = now_ms;
    message.delivery_count = 0;
    tx.put_c2d(device_id, &message)?;
    let effect = Effect::CloudToDevice {
        device_id: device_id.to_owned(),
    };
    Ok((message.sequence, vec![effect]))
}

/// The messages of `device_id` to hand to it over MQTT at `now_ms`, oldest first, skipping those
/// in `in_flight` (handed over and not yet answered) and those an HTTPS receive holds locked:
/// each one's delivery count goes up by one. A message that expired or was delivered too often
/// is dead-lettered instead.
pub fn deliver(
    tx: &Transaction<'_>,
    device_id: &str,
    in_flight: &[i64],
    now_ms: i64,
) -> Result<Vec<C2dMessage>, ApiError> {
    let mut delivered = Vec::new();
    for mut message in live_queue(tx, device_id, now_ms)? {
        if in_flight.contains(&message.sequence) || !c2d::is_available(&message, now_ms) {
            continue;
        }
        message.delivery_count += 1;
        tx.put_c2d(device_id, &message)?;
        delivered.push(message);
    }
    Ok(delivered)
}

/// Completes message `sequence` of `device_id` (MQTT's PUBACK) at `now_ms`: it leaves the queue.
/// `false` if it was no longer there (completed already, or dead-lettered).
pub fn complete(
    tx: &Transaction<'_>,
    device_id: &str,
    sequence: i64,
    now_ms: i64,
) -> Result<bool, ApiError> {
    let queue = tx.c2d_queue(device_id)?;
    let Some(message) = queue.iter().find(|m| m.sequence == sequence) else {
        return Ok(false);
    };
    leave(tx, device_id, message, Fate::Success, now_ms)?;
    Ok(true)
}

/// The oldest message of `device_id` no receive holds at `now_ms`, locked with `lock_token` for
/// [`c2d::LOCK_TIMEOUT_MS`] (an HTTPS receive); `None` if there is none.
pub fn receive(
    tx: &Transaction<'_>,
    device_id: &str,
    lock_token: &str,
    now_ms: i64,
) -> Result<Option<C2dMessage>, ApiError> {
    let available = live_queue(tx, device_id, now_ms)?
        .into_iter()
        .find(|m| c2d::is_available(m, now_ms));
    let Some(mut message) = available else {
        return Ok(None);
    };
    c2d::lock(&mut message, lock_token.to_owned(), now_ms);
    tx.put_c2d(device_id, &message)?;
    Ok(Some(message))
}

/// Completes, rejects or abandons the message of `device_id` that `lock_token` holds at
/// `now_ms`; a token that holds none (unknown, settled already, or timed out) is refused with
/// 412002 `DeviceMessageLockLost`.
pub fn settle(
    tx: &Transaction<'_>,
    device_id: &str,
    lock_token: &str,
    how: Settlement,
    now_ms: i64,
) -> Result<(), ApiError> {
    let lost = || {
        ApiError::new(
            ErrorCode::DeviceMessageLockLost,
            format!(
                "lock token {lock_token} holds no cloud-to-device message of {device_id} \
                 (settled already, or its lock of {} s timed out)",
                c2d::LOCK_TIMEOUT_MS / 1000
            ),
        )
    };
    let held = live_queue(tx, device_id, now_ms)?
        .into_iter()
        .find(|m| m.lock_token.as_deref() == Some(lock_token));
    let Some(mut message) = held else {
        return Err(lost());
    };
    match c2d::settle(&mut message, lock_token, how, now_ms).map_err(|_| lost())? {
        Some(fate) => leave(tx, device_id, &message, fate, now_ms),
        None => Ok(tx.put_c2d(device_id, &message)?),
    }
}

/// Empties `device_id`'s queue (IoT Hub's "purge command queue") at `now_ms`, each message with
/// its `Purged` feedback if asked for; how many messages it held.
pub fn purge(tx: &Transaction<'_>, device_id: &str, now_ms: i64) -> Result<usize, ApiError> {
    if tx.device(device_id)?.is_none() {
        return Err(crate::registry::device_not_found(device_id));
    }
    let queue = tx.c2d_queue(device_id)?;
    for message in &queue {
        leave(tx, device_id, message, Fate::Purged, now_ms)?;
    }
    Ok(queue.len())
}

/// Dead-letters every expired message at `now_ms` (with its feedback); how many devices had one.
pub fn sweep(tx: &Transaction<'_>, now_ms: i64) -> Result<usize, ApiError> {
    let devices = c2d::expired_devices(&tx.c2d_expiries()?, now_ms);
    for device_id in &devices {
        live_queue(tx, device_id, now_ms)?;
    }
    Ok(devices.len())
}

/// Runs the expiry sweep every [`SWEEP_EVERY`] until `shutdown` turns true: an expired message
/// is dead-lettered, and its `Expired` feedback made, while nobody touches its queue. A read
/// first, so that a hub with nothing expired never waits for the writer.
pub async fn run_sweep(hub: std::sync::Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        let now_ms = crate::ids::now_unix_ms();
        let due = hub.read(|tx| Ok(c2d::expired_devices(&tx.c2d_expiries()?, now_ms)));
        if due.is_ok_and(|devices| !devices.is_empty()) {
            if let Err(error) = hub.write(move |tx| sweep(tx, now_ms)).await {
                tracing::warn!(%error, "cloud-to-device expiry sweep failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Takes the feedback records to send at `now_ms`, oldest first, at most
/// [`c2d::FEEDBACK_BATCH`]: each is locked for [`c2d::FEEDBACK_LOCK_MS`] (sent again after, if
/// not settled) and counted as sent once more; expired and too often sent ones are dropped.
pub fn take_feedback(tx: &Transaction<'_>, now_ms: i64) -> Result<Vec<PendingFeedback>, ApiError> {
    let mut batch = Vec::new();
    for mut pending in tx.c2d_feedback()? {
        match c2d::feedback_due(&pending, now_ms) {
            FeedbackDue::Drop => tx.delete_c2d_feedback(pending.sequence)?,
            FeedbackDue::Send if batch.len() < c2d::FEEDBACK_BATCH => {
                pending.delivery_count += 1;
                pending.locked_until_ms = now_ms + c2d::FEEDBACK_LOCK_MS;
                tx.lock_c2d_feedback(
                    pending.sequence,
                    pending.locked_until_ms,
                    pending.delivery_count,
                )?;
                batch.push(pending);
            }
            FeedbackDue::Send | FeedbackDue::Wait => {}
        }
    }
    Ok(batch)
}

/// Whether a feedback record is due at `now_ms` (a read, before [`take_feedback`] writes).
pub fn feedback_waiting(tx: &Transaction<'_>, now_ms: i64) -> Result<bool, ApiError> {
    Ok(tx
        .c2d_feedback()?
        .iter()
        .any(|p| c2d::feedback_due(p, now_ms) != FeedbackDue::Wait))
}

/// Settles a batch of feedback records its receiver answered: `done` (accepted or rejected) drops
/// them; otherwise (released, modified) they are sent again.
pub fn settle_feedback(
    tx: &Transaction<'_>,
    batch: &[PendingFeedback],
    done: bool,
) -> Result<(), ApiError> {
    for pending in batch {
        if done {
            tx.delete_c2d_feedback(pending.sequence)?;
        } else {
            tx.lock_c2d_feedback(pending.sequence, 0, pending.delivery_count)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn the_queue_counts_deliveries_drops_expired_messages_and_survives_a_reopen() {
        let (mut store, dir) = crate::store::tests::temp_store("c2d");
        let device = edgetwin_wire::rest::Device::default();
        store
            .transaction(|tx| -> Result<(), ApiError> {
                crate::registry::create_device(tx, "d1", device)?;
                for (n, expiry_ms) in [(1, NOW + 10), (2, NOW + 1_000)] {
                    let body = vec![n];
                    let queued = C2dMessage {
                        expiry_ms,
                        body,
                        ..C2dMessage::default()
                    };
                    enqueue(tx, "d1", queued, NOW)?;
                }
                Ok(())
            })
            .unwrap();
        drop(store);
        let mut store = crate::store::Store::open(&dir.join("hub.db")).unwrap();
        store
            .transaction(|tx| -> Result<(), ApiError> {
                let first = deliver(tx, "d1", &[], NOW)?;
                assert_eq!(first.len(), 2);
                assert_eq!(first[0].body, vec![1]);
                assert_eq!(first[0].delivery_count, 1);
                // in flight: not handed over again
                assert!(
                    deliver(tx, "d1", &[first[0].sequence, first[1].sequence], NOW)?.is_empty()
                );
                // the first expired meanwhile: dead-lettered; the second is delivered again
                let again = deliver(tx, "d1", &[], NOW + 10)?;
                assert_eq!(again.len(), 1);
                assert_eq!(
                    (again[0].body.clone(), again[0].delivery_count),
                    (vec![2], 2)
                );
                assert!(complete(tx, "d1", again[0].sequence, NOW)?);
                assert!(!complete(tx, "d1", again[0].sequence, NOW)?);
                assert!(tx.c2d_queue("d1")?.is_empty());
                enqueue(tx, "d1", C2dMessage::default(), NOW)?;
                assert_eq!(purge(tx, "d1", NOW)?, 1);
                assert_eq!(
                    purge(tx, "nobody", NOW).unwrap_err().code,
                    ErrorCode::DeviceNotFound
                );
                Ok(())
            })
            .unwrap();
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
    #[test]
    fn a_locked_message_is_hidden_until_settled_and_every_fate_leaves_its_feedback_once() {
        let (mut store, dir) = crate::store::tests::temp_store("c2d-https");
        store
            .transaction(|tx| -> Result<(), ApiError> {
                crate::registry::create_device(tx, "d1", edgetwin_wire::rest::Device::default())?;
                let full = |n: u8, expiry_ms| C2dMessage {
                    message_id: Some(format!("m{n}")),
                    ack: Some("full".into()),
                    expiry_ms,
                    body: vec![n],
                    ..C2dMessage::default()
                };
                for n in 1..=4 {
                    enqueue(tx, "d1", full(n, NOW + 60_000 * i64::from(n)), NOW)?;
                }
                let first = receive(tx, "d1", "t1", NOW)?.unwrap();
                assert_eq!(first.body, vec![1]);
                // held: neither received again nor delivered over MQTT
                assert_eq!(receive(tx, "d1", "t2", NOW)?.unwrap().body, vec![2]);
                let over_mqtt: Vec<_> = deliver(tx, "d1", &[], NOW)?
                    .iter()
                    .map(|m| m.body[0])
                    .collect();
                assert_eq!(over_mqtt, [3, 4]);
                let lost = settle(tx, "d1", "nope", Settlement::Complete, NOW).unwrap_err();
                assert_eq!(lost.code, ErrorCode::DeviceMessageLockLost);
                settle(tx, "d1", "t1", Settlement::Complete, NOW)?;
                settle(tx, "d1", "t2", Settlement::Reject, NOW)?;
                assert_eq!(
                    settle(tx, "d1", "t2", Settlement::Reject, NOW)
                        .unwrap_err()
                        .code,
                    ErrorCode::DeviceMessageLockLost
                );
                // m3 expires at NOW + 3 min: the sweep dead-letters it with its feedback
                assert_eq!(sweep(tx, NOW + 180_000)?, 1);
                assert_eq!(purge(tx, "d1", NOW + 180_000)?, 1);
                let batch = take_feedback(tx, NOW + 180_000)?;
                let fates: Vec<_> = batch
                    .iter()
                    .map(|p| {
                        (
                            p.record.original_message_id.as_str(),
                            p.record.status_code.as_str(),
                        )
                    })
                    .collect();
                assert_eq!(
                    fates,
                    [
                        ("m1", "Success"),
                        ("m2", "Rejected"),
                        ("m3", "Expired"),
                        ("m4", "Purged")
                    ]
                );
                // locked while its message waits for a settlement; released, sent again
                assert!(take_feedback(tx, NOW + 180_000)?.is_empty());
                settle_feedback(tx, &batch, false)?;
                let again = take_feedback(tx, NOW + 180_000)?;
                assert_eq!(again.len(), 4);
                assert_eq!(again[0].delivery_count, 2);
                settle_feedback(tx, &again, true)?;
                assert!(!feedback_waiting(tx, NOW + 10_000_000)?);
                Ok(())
            })
            .unwrap();
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
