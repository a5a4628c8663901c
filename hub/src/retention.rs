//! Retention of the Event Hub-compatible endpoint: one task that prunes each partition's oldest
//! events once they are older than the retention time or beyond the partition's share of the
//! byte bound ([`Retention`]), every [`INTERVAL`] and at start. Appending an event never prunes:
//! each pruning is its own write of at most [`BATCH`] events, queued behind the telemetry being
//! written, so the writer is never held longer than one batch takes. Between two rounds a
//! partition may hold up to an interval's worth of events beyond the byte bound.
//!
//! Part of the core's edge: depends on the hub and the pure retention rule (`events`); never on
//! a door.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::events::{Retention, PARTITIONS};
use crate::hub::Hub;

/// How often the partitions are pruned.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Most events pruned in one write.
const BATCH: usize = 5_000;

/// Prunes the partitions at start and every [`INTERVAL`] until `shutdown` turns true.
pub async fn run(hub: Arc<Hub>, retention: Retention, mut shutdown: watch::Receiver<bool>) {
    loop {
        for partition in 0..PARTITIONS {
            loop {
                let pruned = hub.prune_events(partition, retention, BATCH).await;
                match pruned {
                    Ok(pruned) if pruned == BATCH => tokio::task::yield_now().await,
                    Ok(pruned) => {
                        if pruned > 0 {
                            tracing::debug!(partition, pruned, "events pruned");
                        }
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(partition, message = %error.message, "cannot prune events");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
