//! The job runner: one task that starts each scheduled job when it is due and runs it over its
//! devices. A job's devices are selected once, at its start, by its query over the device twins
//! (the hub's query engine, on the query connections and slots every query shares); each device
//! is then updated through the write path of `PATCH /twins/{id}` (so that a desired patch reaches
//! a connected device) or called through the hub's direct methods (so that a connected device
//! SDK answers it), a few devices at a time and at most [`RUNNING_JOBS`] jobs at a time, so that
//! jobs never starve other clients. Each device's outcome is stored as it ends; a cancel or the
//! job's `maxExecutionTimeInSeconds` stops the devices not tried yet.
//!
//! Across a restart (jobs are in the store): a scheduled job starts when due; a job that was
//! running goes on with the devices it had not tried, as IoT Hub, a durable service, finishes
//! the jobs it accepted; a device whose direct method was in flight when the hub stopped is
//! failed, not called again (a method need not be safe to repeat), while a device whose twin
//! update was in flight is updated again (a merge of the same patch: the same result).
//!
//! Part of the core's edge: depends on the hub, the pure job life (`jobs`) and the store's
//! records; never on a door.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgetwin_wire::job::{DeviceJobStatus, JobResponse, JobStatus, JobType};
use edgetwin_wire::query::parse_query;
use edgetwin_wire::rest::ErrorCode;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::ApiError;
use crate::hub::{update_twin, Hub};
use crate::jobs::{self, Step};
use crate::store::IdentityKey;
use crate::twins::UpdateMode;
use crate::writer::Effect;

/// Jobs that run at once; the others due wait, `queued`.
const RUNNING_JOBS: usize = 2;

/// Devices of one job updated or called at once.
const DEVICES_AT_ONCE: usize = 8;

/// Devices read from the store at a time while a job runs.
const DEVICES_PER_READ: usize = 64;

/// Longest sleep with nothing due (a job created meanwhile wakes the runner anyway).
const IDLE: Duration = Duration::from_secs(3600);

/// How long to wait before looking again after the store could not be read.
const RETRY: Duration = Duration::from_secs(5);

/// Runs the hub's scheduled jobs until `shutdown` turns true; the jobs running then are stopped
/// where they are (and resumed at the next start).
pub async fn run(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
    while !*shutdown.borrow() {
        let now = OffsetDateTime::now_utc();
        let mut sleep = IDLE;
        match hub.read(|tx| Ok(tx.active_jobs()?)) {
            Ok(active) => {
                for job in active {
                    if running.values().any(|id| *id == job.job_id) {
                        continue;
                    }
                    match jobs::next_step(&job, now) {
                        Step::Start | Step::Resume if running.len() < RUNNING_JOBS => {
                            let job_id = job.job_id.clone();
                            let task = tasks.spawn(run_job(hub.clone(), job));
                            running.insert(task.id(), job_id);
                        }
                        Step::WaitUntil(start) => {
                            let wait = Duration::try_from(start - now).unwrap_or_default();
                            sleep = sleep.min(wait);
                        }
                        Step::Start | Step::Resume | Step::Done => {}
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the scheduled jobs");
                sleep = RETRY;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = hub.jobs_changed().notified() => {}
            Some(ended) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                running.remove(&id);
            }
            _ = shutdown.changed() => {}
        }
    }
    tasks.shutdown().await;
}

/// Runs one job to its end, logging why it could not (then waiting [`RETRY`] before the runner
/// picks it up again, so that a store that keeps failing is not retried in a tight loop).
async fn run_job(hub: Arc<Hub>, job: JobResponse) {
    let job_id = job.job_id.clone();
    if let Err(error) = try_run_job(&hub, job).await {
        tracing::error!(job_id, %error, "scheduled job stopped; retrying");
        tokio::time::sleep(RETRY).await;
    }
}

async fn try_run_job(hub: &Arc<Hub>, job: JobResponse) -> Result<(), ApiError> {
    let Some(job) = begin(hub, job).await? else {
        return Ok(());
    };
    let deadline = jobs::deadline(&job);
    let mut devices = JoinSet::new();
    let mut after: Option<String> = None;
    'devices: loop {
        let (id, from) = (job.job_id.clone(), after.clone());
        let batch = hub.read(move |tx| {
            Ok(tx.job_devices_in(
                &id,
                DeviceJobStatus::Pending,
                from.as_deref(),
                DEVICES_PER_READ,
            )?)
        })?;
        let Some(last) = batch.last() else { break };
        after = Some(last.clone());
        for device_id in batch {
            while devices.len() >= DEVICES_AT_ONCE {
                devices.join_next().await;
            }
            // looked at once a slot is free: a cancel or the deadline meanwhile stops the rest
            let status = hub.read(|tx| Ok(tx.job(&job.job_id)?.map(|j| j.status)))?;
            if status != Some(JobStatus::Running) || OffsetDateTime::now_utc() >= deadline {
                break 'devices;
            }
            devices.spawn(run_device(hub.clone(), job.clone(), device_id));
        }
    }
    while devices.join_next().await.is_some() {}
    end(hub, &job.job_id).await
}

/// Starts a due job (its devices selected and recorded pending), or picks up one that was running
/// when the hub stopped; `None` if it was cancelled meanwhile.
async fn begin(hub: &Arc<Hub>, job: JobResponse) -> Result<Option<JobResponse>, ApiError> {
    let now = OffsetDateTime::now_utc();
    if job.status == JobStatus::Running {
        let stopped = ApiError::new(
            ErrorCode::ServerError,
            "the hub stopped while this device's direct method was in flight; it was not called again",
        );
        let resumed = job.clone();
        hub.write(move |tx| {
            tx.move_job_devices(&resumed.job_id, DeviceJobStatus::Running, |device_id| {
                jobs::device_failed(&resumed, device_id, &stopped, now)
            })?;
            Ok(())
        })
        .await?;
        return Ok(Some(job));
    }
    let job_id = job.job_id.clone();
    let devices = match select_devices(hub, &job.query_condition).await {
        Ok(devices) => devices,
        Err(error) if error.code != ErrorCode::ServerError => {
            // the query itself cannot be run: no retry will run it
            let reason = format!("its queryCondition could not be run: {}", error.message);
            hub.write(move |tx| {
                if let Some(mut job) = tx.job(&job_id)? {
                    if jobs::fail(&mut job, reason, now) {
                        tx.put_job(&job)?;
                    }
                }
                Ok(())
            })
            .await?;
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    hub.write(move |tx| {
        let Some(mut job) = tx.job(&job_id)? else {
            return Ok(None);
        };
        if !jobs::start(&mut job) {
            return Ok(None);
        }
        for device_id in &devices {
            tx.put_device_job(&jobs::device_record(
                &job,
                device_id,
                DeviceJobStatus::Pending,
                now,
            ))?;
        }
        tx.put_job(&job)?;
        Ok(Some(job))
    })
    .await
}

/// The ids of the device twins a job's `queryCondition` selects, read a page at a time.
async fn select_devices(hub: &Hub, query_condition: &str) -> Result<Vec<String>, ApiError> {
    let text = jobs::selection_query(query_condition);
    let query = parse_query(&text).map_err(|e| ApiError::invalid(e.to_string()))?;
    let mut devices = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let (rows, next) = hub
            .query(&text, &query, continuation.as_deref(), None)
            .await?;
        devices.extend(
            rows.iter()
                .filter_map(|row| row["deviceId"].as_str().map(str::to_owned)),
        );
        match next {
            Some(next) => continuation = Some(next),
            None => return Ok(devices),
        }
    }
}

/// Updates or calls one device of a running job and records how it went.
async fn run_device(hub: Arc<Hub>, job: JobResponse, device_id: String) {
    let key = IdentityKey::device(&device_id);
    let outcome = match job.job_type {
        JobType::ScheduleUpdateTwin => {
            let (patch, job) = (job.update_twin.clone().unwrap_or_default(), job.clone());
            let device = device_id.clone();
            hub.write_with_effects(move |tx| {
                let changes = update_twin(tx, &key, patch, UpdateMode::Merge, None)?;
                let now = OffsetDateTime::now_utc();
                let done = jobs::device_record(&job, &device, DeviceJobStatus::Completed, now);
                tx.put_device_job(&done)?;
                Ok(((), Effect::desired(changes)))
            })
            .await
        }
        JobType::ScheduleDeviceMethod => call_device(&hub, &job, &device_id, key).await,
    };
    let Err(error) = outcome else { return };
    let now = OffsetDateTime::now_utc();
    let failed = jobs::device_failed(&job, &device_id, &error, now);
    if let Err(error) = hub.write(move |tx| Ok(tx.put_device_job(&failed)?)).await {
        tracing::error!(job_id = job.job_id, device_id, %error, "cannot record a device's failure");
    }
}

/// Calls a method job's method on one device, recorded running while it is in flight and
/// completed with the device's answer.
async fn call_device(
    hub: &Hub,
    job: &JobResponse,
    device_id: &str,
    key: IdentityKey,
) -> Result<(), ApiError> {
    let running = jobs::device_record(
        job,
        device_id,
        DeviceJobStatus::Running,
        OffsetDateTime::now_utc(),
    );
    hub.write(move |tx| Ok(tx.put_device_job(&running)?))
        .await?;
    let method = job.cloud_to_device_method.clone().unwrap_or_default();
    let answer = hub.invoke_method(&key, method).await?;
    let mut done = jobs::device_record(
        job,
        device_id,
        DeviceJobStatus::Completed,
        OffsetDateTime::now_utc(),
    );
    done.outcome.device_method_response =
        Some(json!({"status": answer.status, "payload": answer.payload}));
    hub.write(move |tx| Ok(tx.put_device_job(&done)?)).await
}

/// Ends a job whose devices were all tried, or that was cancelled or ran out of time: the devices
/// left are marked cancelled (a cancel) or failed (out of time), and the job completed or failed.
async fn end(hub: &Hub, job_id: &str) -> Result<(), ApiError> {
    let job_id = job_id.to_owned();
    hub.write(move |tx| {
        let Some(mut job) = tx.job(&job_id)? else {
            return Ok(());
        };
        let now = OffsetDateTime::now_utc();
        if job.status == JobStatus::Cancelled {
            tx.move_job_devices(&job_id, DeviceJobStatus::Pending, |device_id| {
                jobs::device_record(&job, device_id, DeviceJobStatus::Cancelled, now)
            })?;
            return Ok(());
        }
        let out_of_time = ApiError::new(
            ErrorCode::GatewayTimeout,
            format!(
                "the job's maxExecutionTimeInSeconds ({} s) passed before this device was tried",
                job.max_execution_time_in_seconds
            ),
        );
        let left = tx.move_job_devices(&job_id, DeviceJobStatus::Pending, |device_id| {
            jobs::device_failed(&job, device_id, &out_of_time, now)
        })?;
        if jobs::finish(&mut job, i64::try_from(left).unwrap_or(i64::MAX), now) {
            tx.put_job(&job)?;
        }
        Ok(())
    })
    .await
}
