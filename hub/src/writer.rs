//! The store's one writer: a thread that owns the write connection. Every change (REST writes,
//! reported patches, persistent sessions) queues here as a job; the thread takes what is queued
//! (up to [`MAX_BATCH`] jobs), runs each under its own savepoint inside one transaction (a failing
//! job is rolled back alone), commits once (one fsync for the whole batch: group commit), and only
//! then, in commit order, hands each job's [`Effect`]s (desired patches to send, clients to
//! disconnect, workload sockets to open or close) to the after-commit hook and answers it. Nothing
//! is answered before it is on disk, nothing happens outside the store before the change that
//! causes it is committed, no async worker ever waits for the disk or for another writer, and reads
//! go to [`crate::store::Readers`] meanwhile. Part of the core: depends on the store and twins
//! only.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use edgetwin_wire::rest::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::store::{Store, StoreError, Transaction};
use crate::twins::DesiredChange;

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;
/// Jobs that may wait for the writer before submitters wait for room.
const QUEUE: usize = 4096;

/// What a job returns: its value and the effects of its changes outside the store.
pub type Written<T> = Result<(T, Vec<Effect>), ApiError>;

/// What a committed write makes happen outside the store, applied by the after-commit hook in
/// commit order, before the write is answered.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Tell the client whose desired properties changed.
    Desired(DesiredChange),
    /// Disconnect one client (a deleted module identity).
    Kick {
        /// The client (`device` or `device/module`).
        client_id: String,
    },
    /// Disconnect a device and every module of it (deleted or disabled).
    KickDevice {
        /// The device.
        device_id: String,
    },
    /// Serve the workload socket of an edge device (its modules will want it).
    OpenWorkloadSocket {
        /// The edge device.
        device_id: String,
    },
    /// Stop serving the workload socket of a deleted device, and remove it.
    CloseWorkloadSocket {
        /// The deleted device.
        device_id: String,
    },
    /// Tell a device's connection that a cloud-to-device message was queued for it.
    CloudToDevice {
        /// The device.
        device_id: String,
    },
    /// Hand a stored event to the readers of its Event Hub-compatible partition (and tell the
    /// message log's).
    Event(Arc<crate::events::Event>),
    /// Tell the readers of an Event Hub-compatible partition that retention pruned its events
    /// before sequence number `begin`.
    Pruned {
        /// The partition.
        partition: u32,
        /// Its first event kept.
        begin: i64,
    },
}

impl Effect {
    /// Desired-property changes as effects.
    pub fn desired(changes: impl IntoIterator<Item = DesiredChange>) -> Vec<Effect> {
        changes.into_iter().map(Effect::Desired).collect()
    }
}

/// A queued unit of work, type-erased so that jobs of every result type share the queue.
trait Job: Send {
    /// Runs the work inside the batch's transaction; `false` when it failed, so that its changes
    /// must be rolled back.
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Once the batch's commit succeeded (`committed`) or failed: hands the effects to `hook`
    /// (only if committed) and answers the submitter.
    fn finish(self: Box<Self>, committed: bool, hook: &dyn Fn(&Effect));
}

/// A job with its work, its outcome once run, and where the answer goes.
struct Work<F, T> {
    work: Option<F>,
    outcome: Option<Written<T>>,
    reply: oneshot::Sender<Result<T, ApiError>>,
}

impl<F, T> Job for Work<F, T>
where
    F: FnOnce(&Transaction<'_>) -> Written<T> + Send,
    T: Send,
{
    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A panicking job fails alone; the writer and the other jobs of the batch carry on.
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| work(tx))).unwrap_or_else(|_| {
                tracing::error!("a store write panicked; it was rolled back");
                Err(storage_error())
            });
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, committed: bool, hook: &dyn Fn(&Effect)) {
        let answer = match self.outcome {
            Some(Ok((value, effects))) if committed => {
                for effect in &effects {
                    hook(effect);
                }
                Ok(value)
            }
            Some(Err(error)) if committed => Err(error),
            _ => Err(storage_error()),
        };
        let _ = self.reply.send(answer);
    }
}

/// The queue in front of the writer thread.
pub struct Writer {
    /// Sends jobs to the thread; taken (closed) by [`Writer::drain`].
    queue: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    /// Resolves (with an error: its sender is dropped) when the thread has ended.
    ended: Mutex<Option<oneshot::Receiver<()>>>,
    /// Transactions committed since the start, counted before their jobs are answered.
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer thread, which owns `store` from now on. `hook` is called on that thread
    /// after each commit, once per effect, in commit order; it must not wait for a write.
    /// `flush` is called there after the effects of each batch were handed to `hook` (once a
    /// batch rather than once an effect: to wake whoever waits for them once).
    pub fn start(
        store: Store,
        hook: impl Fn(&Effect) + Send + 'static,
        flush: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let (ended_tx, ended) = oneshot::channel::<()>();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        std::thread::Builder::new()
            .name("edgetwin-writer".into())
            .spawn(move || {
                write_batches(store, jobs, &hook, &flush, &counted);
                drop(ended_tx);
            })?;
        Ok(Self {
            queue: Mutex::new(Some(queue)),
            ended: Mutex::new(Some(ended)),
            commits,
        })
    }

    /// How many transactions were committed since the start: unchanged between two reads, the
    /// store did not change (a write's answer comes after its commit is counted).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    /// Queues `work` (waiting only for room in the queue) and returns the handle to its answer,
    /// so that a caller can go on while the job waits for its commit. Jobs are applied in the
    /// order they are submitted.
    pub async fn submit<T, F>(&self, work: F) -> Result<Committing<T>, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Written<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(unavailable)?;
        let job: Box<dyn Job> = Box::new(Work {
            work: Some(work),
            outcome: None,
            reply,
        });
        queue.send(job).await.map_err(|_| unavailable())?;
        Ok(Committing(answer))
    }

    /// Queues `work` and waits for its commit.
    pub async fn write<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Written<T> + Send + 'static,
    {
        self.submit(work).await?.outcome().await
    }

    /// Stops taking jobs and waits until every queued one is committed and answered.
    pub async fn drain(&self) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(ended) = ended {
            let _ = ended.await;
        }
    }
}

/// The writer thread: one transaction per batch of queued jobs, until the queue closes.
fn write_batches(
    mut store: Store,
    mut jobs: mpsc::Receiver<Box<dyn Job>>,
    hook: &dyn Fn(&Effect),
    flush: &dyn Fn(),
    commits: &AtomicU64,
) {
    /// A job that failed inside the batch (its own answer says why).
    struct Failed;
    impl From<StoreError> for Failed {
        fn from(_: StoreError) -> Self {
            Failed
        }
    }
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = store.each_in_one_transaction(batch.iter_mut(), |tx, job| {
            if job.run(tx) {
                Ok(())
            } else {
                Err(Failed)
            }
        });
        match &commit {
            Ok(_) => {
                commits.fetch_add(1, Ordering::Release);
            }
            Err(error) => {
                tracing::error!(%error, jobs = batch.len(), "a store commit failed; nothing of it was stored");
            }
        }
        for job in batch {
            job.finish(commit.is_ok(), hook);
        }
        flush();
    }
    // The queue closed: a clean stop. Leave everything in hub.db itself, so that a copy of that
    // one file is the whole hub.
    match store.checkpoint() {
        Ok(true) => tracing::debug!("database checkpointed"),
        Ok(false) => tracing::warn!(
            "database checkpoint incomplete: a reader held the log; the rest stays in hub.db-wal"
        ),
        Err(error) => {
            tracing::error!(%error, "database checkpoint at stop failed; the log stays in hub.db-wal")
        }
    }
}

/// A submitted job waiting for its commit.
pub struct Committing<T>(oneshot::Receiver<Result<T, ApiError>>);

impl<T> Committing<T> {
    /// Waits for the commit and the job's answer. Cancel-safe: awaiting it again after a
    /// cancelled wait still yields the answer.
    pub async fn outcome(&mut self) -> Result<T, ApiError> {
        (&mut self.0).await.map_err(|_| unavailable())?
    }

    /// The answer if the commit is already done, without waiting.
    pub fn try_outcome(&mut self) -> Option<Result<T, ApiError>> {
        match self.0.try_recv() {
            Ok(answer) => Some(answer),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(unavailable())),
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::new(ErrorCode::ServiceUnavailable, "the hub is shutting down")
}

fn storage_error() -> ApiError {
    ApiError::new(ErrorCode::ServerError, "internal storage error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;
    use crate::store::{IdentityKey, TwinRecord};
    use std::sync::Arc;

    fn put(id: &'static str) -> impl FnOnce(&Transaction<'_>) -> Written<()> + Send {
        move |tx| {
            tx.put_twin(&IdentityKey::device(id), &TwinRecord::default())?;
            Ok(((), Vec::new()))
        }
    }

    fn stored(dir: &std::path::Path, id: &str) -> bool {
        let readers = crate::store::Readers::open(&dir.join("hub.db"), 1).unwrap();
        readers
            .read(|tx| tx.twin(&IdentityKey::device(id)))
            .unwrap()
            .is_some()
    }

    #[tokio::test]
    async fn drain_commits_and_answers_everything_queued_then_refuses_more() {
        let (store, dir) = temp_store("drain");
        let writer = Writer::start(store, |_| {}, || {}).unwrap();
        let mut waiting = Vec::new();
        for n in 0..50 {
            let key = IdentityKey::device("d1");
            waiting.push(
                writer
                    .submit(move |tx| {
                        let mut twin = tx.twin(&key)?.unwrap_or_default();
                        twin.version = n;
                        tx.put_twin(&key, &twin)?;
                        Ok((n, Vec::new()))
                    })
                    .await
                    .unwrap(),
            );
        }
        writer.drain().await;
        for (n, committing) in waiting.iter_mut().enumerate() {
            assert_eq!(committing.try_outcome().unwrap().unwrap(), n as i64);
        }
        let readers = crate::store::Readers::open(&dir.join("hub.db"), 1).unwrap();
        let twin = readers.read(|tx| tx.twin(&IdentityKey::device("d1")));
        assert_eq!(twin.unwrap().unwrap().version, 49, "applied in order");
        assert!(
            writer.write(put("d2")).await.is_err(),
            "a drained writer took a job"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_failing_or_panicking_job_is_rolled_back_alone_and_the_writer_goes_on() {
        let (store, dir) = temp_store("failing");
        let writer = Writer::start(store, |_| {}, || {}).unwrap();
        let failing = writer
            .submit(|tx| {
                tx.put_twin(&IdentityKey::device("failed"), &TwinRecord::default())?;
                Err::<((), _), _>(ApiError::invalid("refused"))
            })
            .await
            .unwrap();
        let panicking = writer
            .submit(|tx| -> Written<()> {
                tx.put_twin(&IdentityKey::device("panicked"), &TwinRecord::default())?;
                panic!("a bug in a job");
            })
            .await
            .unwrap();
        let kept = writer.submit(put("kept")).await.unwrap();
        let mut answers = (failing, panicking, kept);
        assert_eq!(answers.0.outcome().await.unwrap_err().message, "refused");
        assert_eq!(
            answers.1.outcome().await.unwrap_err().code,
            ErrorCode::ServerError
        );
        assert!(answers.2.outcome().await.is_ok());
        writer.write(put("after")).await.unwrap();
        writer.drain().await;
        let found = ["failed", "panicked", "kept", "after"].map(|id| stored(&dir, id));
        assert_eq!(found, [false, false, true, true]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn items_of_a_job_roll_back_alone_inside_the_jobs_own_savepoint() {
        let (store, dir) = temp_store("nested");
        let writer = Writer::start(store, |_| {}, || {}).unwrap();
        let bulk = writer
            .submit(|tx| {
                let results = tx.each(["a", "bad", "c"], |tx, id| {
                    tx.put_twin(&IdentityKey::device(id), &TwinRecord::default())?;
                    if id == "bad" {
                        return Err(ApiError::invalid("bad item"));
                    }
                    Ok(())
                })?;
                Ok((results.iter().filter(|r| r.is_ok()).count(), Vec::new()))
            })
            .await
            .unwrap();
        let failing = writer
            .submit(|tx| {
                tx.put_twin(&IdentityKey::device("job"), &TwinRecord::default())?;
                Err::<((), _), _>(ApiError::invalid("whole job refused"))
            })
            .await
            .unwrap();
        let (mut bulk, mut failing) = (bulk, failing);
        assert_eq!(bulk.outcome().await.unwrap(), 2);
        assert!(failing.outcome().await.is_err());
        writer.drain().await;
        let found = ["a", "bad", "c", "job"].map(|id| stored(&dir, id));
        assert_eq!(found, [true, false, true, false]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_hook_sees_committed_changes_in_commit_order_before_the_answer() {
        let (store, dir) = temp_store("hook");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let writer = Writer::start(
            store,
            move |effect| {
                if let Effect::Desired(change) = effect {
                    log.lock().unwrap().push(change.version);
                }
            },
            || {},
        )
        .unwrap();
        let change =
            |version| DesiredChange::new(IdentityKey::device("d1"), &Default::default(), version);
        let mut pending = Vec::new();
        for version in 1..=20 {
            let changes = vec![Effect::Desired(change(version))];
            pending.push(writer.submit(move |_| Ok(((), changes))).await.unwrap());
        }
        pending.last_mut().unwrap().outcome().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), (1..=20).collect::<Vec<i64>>());
        writer.drain().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
