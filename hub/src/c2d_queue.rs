//! Each device's cloud-to-device queue in the store: the rules of [`crate::c2d`] applied in a
//! transaction of the writer (enqueue, deliver, complete), for the doors to call.
//!
//! Part of the core: depends on the store, the writer and the rules of [`crate::c2d`].

use edgetwin_wire::rest::ErrorCode;

use crate::c2d::{self, C2dMessage, Refused};
use crate::error::ApiError;
use crate::store::Transaction;
use crate::writer::{Effect, Written};

/// The counter that numbers cloud-to-device messages (their sequence numbers).
const SEQUENCE_COUNTER: &str = "c2dSequence";

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

/// Removes the messages of `device_id`'s queue that must leave it at `now_ms` and returns the
/// others, oldest first.
fn live_queue(
    tx: &Transaction<'_>,
    device_id: &str,
    now_ms: i64,
) -> Result<Vec<C2dMessage>, ApiError> {
    let mut live = Vec::new();
    for message in tx.c2d_queue(device_id)? {
        match c2d::dead_letter(&message, now_ms) {
            Some(reason) => {
                tracing::info!(
                    device_id,
                    sequence = message.sequence,
                    ?reason,
                    "cloud-to-device message dead-lettered"
                );
                tx.delete_c2d(device_id, message.sequence)?;
            }
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

/// The messages of `device_id` to hand to it at `now_ms`, oldest first, skipping those in
/// `in_flight` (handed over and not yet answered): each one's delivery count goes up by one. A
/// message that expired or was delivered too often is dead-lettered instead.
pub fn deliver(
    tx: &Transaction<'_>,
    device_id: &str,
    in_flight: &[i64],
    now_ms: i64,
) -> Result<Vec<C2dMessage>, ApiError> {
    let mut delivered = Vec::new();
    for mut message in live_queue(tx, device_id, now_ms)? {
        if in_flight.contains(&message.sequence) {
            continue;
        }
        message.delivery_count += 1;
        tx.put_c2d(device_id, &message)?;
        delivered.push(message);
    }
    Ok(delivered)
}

/// Completes message `sequence` of `device_id`: it leaves the queue. `false` if it was no longer
/// there (completed already, or dead-lettered).
pub fn complete(tx: &Transaction<'_>, device_id: &str, sequence: i64) -> Result<bool, ApiError> {
    Ok(tx.delete_c2d(device_id, sequence)?)
}

/// Empties `device_id`'s queue (IoT Hub's "purge command queue"); how many messages it held.
pub fn purge(tx: &Transaction<'_>, device_id: &str) -> Result<usize, ApiError> {
    if tx.device(device_id)?.is_none() {
        return Err(crate::registry::device_not_found(device_id));
    }
    Ok(tx.purge_c2d(device_id)?)
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
                assert!(complete(tx, "d1", again[0].sequence)?);
                assert!(!complete(tx, "d1", again[0].sequence)?);
                assert!(tx.c2d_queue("d1")?.is_empty());
                enqueue(tx, "d1", C2dMessage::default(), NOW)?;
                assert_eq!(purge(tx, "d1")?, 1);
                assert_eq!(
                    purge(tx, "nobody").unwrap_err().code,
                    ErrorCode::DeviceNotFound
                );
                Ok(())
            })
            .unwrap();
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
