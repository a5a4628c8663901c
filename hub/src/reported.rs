//! Group commit for reported-property patches, the hub's hottest write: patches from every
//! connection queue here, a writer applies everything queued in one SQLite transaction (one
//! savepoint per patch, one fsync per batch) and only then answers each with its new `$version`.
//! Durability is unchanged — nothing is acknowledged before it is on disk — while the fsync cost
//! is shared by the whole batch.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use edgetwin_wire::rest::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::store::{IdentityKey, Store};
use crate::twins;

/// Most patches applied in one transaction.
const MAX_BATCH: usize = 512;
/// Patches that may wait for the writer before senders wait for room.
const QUEUE: usize = 4096;

/// A patch waiting for the writer.
struct Pending {
    /// Whose reported properties.
    key: IdentityKey,
    /// The patch as the device sent it.
    body: Bytes,
    /// Where the outcome goes.
    reply: oneshot::Sender<Result<i64, ApiError>>,
}

/// The queue in front of the writer task.
pub struct ReportedWriter {
    /// Sends patches to the writer; taken (closed) by [`ReportedWriter::drain`].
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    /// The writer task, awaited by [`ReportedWriter::drain`].
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ReportedWriter {
    /// Starts the writer task over `store`.
    pub fn start(store: Arc<Mutex<Store>>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, rx));
        Self {
            queue: Mutex::new(Some(queue)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Stops taking patches and waits until every queued one is committed and answered.
    pub async fn drain(&self) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Queues a reported patch (waiting only for room in the queue) and returns the handle to
    /// its outcome, so that a connection can keep reading while the patch waits for its commit.
    /// Patches are applied in the order they are submitted.
    pub async fn submit(&self, key: IdentityKey, body: Bytes) -> Result<Committing, ApiError> {
        let (reply, outcome) = oneshot::channel();
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(unavailable)?;
        queue
            .send(Pending { key, body, reply })
            .await
            .map_err(|_| unavailable())?;
        Ok(Committing(outcome))
    }
}

/// A submitted reported patch waiting for its group commit.
pub struct Committing(oneshot::Receiver<Result<i64, ApiError>>);

impl Committing {
    /// Waits for the commit; the new `reported.$version`. Cancel-safe: awaiting it again after
    /// a cancelled wait still yields the outcome.
    pub async fn outcome(&mut self) -> Result<i64, ApiError> {
        (&mut self.0).await.map_err(|_| unavailable())?
    }

    /// The outcome if the commit is already done, without waiting.
    pub fn try_outcome(&mut self) -> Option<Result<i64, ApiError>> {
        match self.0.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(unavailable())),
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::new(ErrorCode::ServiceUnavailable, "the hub is shutting down")
}

async fn run(store: Arc<Mutex<Store>>, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let store = store.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            let (work, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|p| ((p.key, p.body), p.reply))
                .unzip();
            let results = store.each_in_one_transaction(work, |tx, (key, body)| {
                twins::patch_reported(tx, &key, &body)
            });
            (results, replies)
        })
        .await;
        let Ok((results, replies)) = applied else {
            tracing::error!("reported-patch writer panicked");
            continue;
        };
        match results {
            Ok(results) => {
                for (result, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                tracing::error!(%error, "group commit of reported patches failed");
                for reply in replies {
                    let _ = reply.send(Err(ApiError::new(
                        ErrorCode::ServerError,
                        "internal storage error",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TwinRecord;

    #[tokio::test]
    async fn drain_commits_and_answers_everything_queued_then_refuses_more() {
        let dir = std::env::temp_dir().join(format!("edgetwin-drain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = Store::open(&dir.join("hub.db")).unwrap();
        let key = IdentityKey::device("d1");
        store
            .transaction(|tx| tx.put_twin(&key, &TwinRecord::default()))
            .unwrap();
        let store = Arc::new(Mutex::new(store));
        let writer = ReportedWriter::start(store.clone());
        let mut waiting = Vec::new();
        for n in 0..50 {
            let body = Bytes::from(format!(r#"{{"n":{n}}}"#));
            waiting.push(writer.submit(key.clone(), body).await.unwrap());
        }
        writer.drain().await;
        for committing in &mut waiting {
            assert!(committing.try_outcome().is_some_and(|r| r.is_ok()));
        }
        let twin = store
            .lock()
            .unwrap()
            .transaction(|tx| tx.twin(&key))
            .unwrap()
            .unwrap();
        assert_eq!(twin.reported["n"], 49);
        let refused = writer.submit(key, Bytes::from("{}")).await;
        assert!(refused.is_err(), "a drained writer took a patch");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
