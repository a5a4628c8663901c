//! Scheduled job routes (`/jobs/v2`): `PUT /jobs/v2/{id}` schedules a job, `GET
//! /jobs/v2/{id}` reads it, `POST /jobs/v2/{id}/cancel` cancels it, `GET
//! /jobs/v2/query?jobType=&jobStatus=` lists them a page at a time (`x-ms-max-item-count`,
//! `x-ms-continuation`, as the Azure CLI's `_execute_query` and the Node SDK's `Query` page,
//! the body a JSON array: azure-iot-cli-extension's generated `query_scheduled_jobs` reads
//! `[object]` with "link tokens … in the headers"). `GET /jobs` (import and export jobs, which
//! this hub does not run) answers an empty list, so that `az iot hub job list` works; creating
//! one (`POST /jobs/create`) is refused, naming what is not served.
//!
//! A job created while the hub already has `--max-active-jobs` jobs queued, scheduled or running
//! is refused with 429 `ThrottlingMaxActiveJobCountExceeded` and not stored ([`jobs::admit`] says
//! where IoT Hub's limit is written). Import and export jobs have their own cap on IoT Hub (1 on
//! every tier) and are not served here, so they count against nothing.
//!
//! Permissions (chosen strict where IoT Hub's documentation is silent): scheduling and
//! cancelling need `RegistryWrite` and `ServiceConnect` (a job writes twins and calls devices);
//! reading needs `RegistryRead`.
//!
//! Part of the REST door: depends on the hub and the pure job life (`jobs`); the job runner
//! (`job_runner.rs`) runs what these routes store.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as TOKEN;
use base64::Engine;
use edgetwin_wire::job::{JobRequest, JobStatus, JobType};
use edgetwin_wire::query::page::{self, CONTINUATION_HEADER, MAX_ITEM_COUNT_HEADER};
use edgetwin_wire::rest::{ErrorCode, Permission};
use hyper::Method;
use time::OffsetDateTime;

use super::{not_found, Reply, Request};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::jobs;

/// Routes job requests.
pub async fn route(hub: &Hub, request: &Request, segments: &[&str]) -> Result<Reply, ApiError> {
    match (segments, &request.method) {
        (["jobs"], &Method::GET) => {
            request.require(Permission::RegistryRead)?;
            Reply::ok(Vec::<serde_json::Value>::new())
        }
        (["jobs", "v2", "query"], &Method::GET) => query(hub, request),
        (["jobs", "v2", id], &Method::GET) => {
            request.require(Permission::RegistryRead)?;
            Reply::ok(hub.read(|tx| tx.job(id)?.ok_or_else(|| job_not_found(id)))?)
        }
        (["jobs", "v2", id], &Method::PUT) => create(hub, request, id).await,
        (["jobs", "v2", id, "cancel"], &Method::POST) => cancel(hub, request, id).await,
        (["jobs", "create"], _) | (["jobs", _], _) => Err(ApiError::invalid(format!(
            "{} /{}: import and export jobs (devices to or from blob storage) are not served by \
             this hub; scheduled jobs (/jobs/v2) are",
            request.method,
            segments.join("/")
        ))),
        _ => Err(not_found(request)),
    }
}

/// IoT Hub's answer for a job id it does not know.
fn job_not_found(job_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::JobNotFound,
        format!("JobNotFound: the job '{job_id}' does not exist"),
    )
}

async fn create(hub: &Hub, request: &Request, job_id: &str) -> Result<Reply, ApiError> {
    request.require(Permission::RegistryWrite)?;
    request.require(Permission::ServiceConnect)?;
    let body: JobRequest = request.json()?;
    let job = jobs::plan(job_id, body, OffsetDateTime::now_utc())?;
    let max_active = hub.max_active_jobs();
    let job = hub
        .write(move |tx| {
            if tx.job(&job.job_id)?.is_some() {
                return Err(ApiError::new(
                    ErrorCode::JobAlreadyExists,
                    format!("a job with id '{}' already exists", job.job_id),
                ));
            }
            // In the same transaction as the insert: two creations at once cannot both pass.
            jobs::admit(&tx.active_jobs()?, max_active)?;
            tx.put_job(&job)?;
            Ok(job)
        })
        .await?;
    hub.jobs_changed().notify_one();
    Reply::ok(job)
}

async fn cancel(hub: &Hub, request: &Request, job_id: &str) -> Result<Reply, ApiError> {
    request.require(Permission::RegistryWrite)?;
    request.require(Permission::ServiceConnect)?;
    let job_id = job_id.to_owned();
    let job = hub
        .write(move |tx| {
            let mut job = tx.job(&job_id)?.ok_or_else(|| job_not_found(&job_id))?;
            if jobs::cancel(&mut job, OffsetDateTime::now_utc()) {
                tx.put_job(&job)?;
            }
            Ok(job)
        })
        .await?;
    hub.jobs_changed().notify_one();
    Reply::ok(job)
}

/// One page of the jobs of `jobType` in `jobStatus` (each optional).
fn query(hub: &Hub, request: &Request) -> Result<Reply, ApiError> {
    request.require(Permission::RegistryRead)?;
    let job_type = match request.query.get("jobType").filter(|t| !t.is_empty()) {
        Some(name) => Some(JobType::from_name(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "jobType '{name}' is not a scheduled job's: scheduleUpdateTwin or scheduleDeviceMethod"
            ))
        })?),
        None => None,
    };
    let status = match request.query.get("jobStatus").filter(|s| !s.is_empty()) {
        Some(name) => Some(JobStatus::from_name(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "jobStatus '{name}' is not a job status: queued, scheduled, running, completed, \
                 failed or cancelled"
            ))
        })?),
        None => None,
    };
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let size = page::page_size(header(MAX_ITEM_COUNT_HEADER))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let after = header(CONTINUATION_HEADER)
        .map(|token| {
            TOKEN
                .decode(token)
                .ok()
                .and_then(|id| String::from_utf8(id).ok())
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{CONTINUATION_HEADER} is not a token this hub gave"
                    ))
                })
        })
        .transpose()?;
    let mut jobs = hub.read(|tx| {
        Ok(tx.jobs(
            job_type.map(JobType::name),
            status.map(JobStatus::name),
            after.as_deref(),
            size + 1,
        )?)
    })?;
    let next = (jobs.len() > size).then(|| {
        jobs.truncate(size);
        TOKEN.encode(jobs[size - 1].job_id.as_bytes())
    });
    let mut reply = Reply::ok(jobs)?;
    reply
        .headers
        .extend(next.map(|next| (CONTINUATION_HEADER, next)));
    Ok(reply)
}
