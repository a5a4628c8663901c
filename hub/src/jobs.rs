//! Scheduled jobs (`/jobs/v2`), their life as plain functions of the job and the time: a request
//! checked and planned into a job ([`plan`]), what the runner does next ([`next_step`]), a start
//! ([`start`]), a cancel ([`cancel`]), the end ([`finish`]), each device's record
//! ([`device_record`]). No I/O and
//! no clock: the runner (`job_runner.rs`) and the REST door (`rest/jobs.rs`) pass `now`.
//!
//! What IoT Hub does, and where it is written:
//! - the request's fields and the job's, and the Azure CLI's `queryCondition` `*` for every
//!   device: azure-iot-hub (Python) `protocol/models/job_request.py`, `job_response.py`;
//!   azure-iothub (Node) `job_client.js`; azure-iot-cli-extension
//!   `azext_iot/iothub/providers/job.py` ("Use query condition '*' if you need to run job on all
//!   devices");
//! - a twin job is a forced update: its `updateTwin.etag` must be `*` (the CLI's comment
//!   "scheduleUpdateTwin job type is a force update, which only accepts '*' as the Etag";
//!   MicrosoftDocs/azure-docs#29484, where a job without it was refused);
//! - a job whose `type` is not one of the two is refused with 400 (MicrosoftDocs/azure-docs#29484
//!   found `scheduleDirectMethod` refused);
//! - the hub holds at most a few active jobs at once, and refuses one more with 429
//!   `ThrottlingMaxActiveJobCountExceeded` ([`admit`],
//!   [`DEFAULT_MAX_ACTIVE_JOBS`](crate::hub::DEFAULT_MAX_ACTIVE_JOBS)).
//!
//! Chosen here, where no source says: `maxExecutionTimeInSeconds` counts from `startTime` and
//! defaults to 3600 (the Node SDK's default); a job past it stops trying devices and ends
//! `failed`; a job whose devices were all tried ends `completed` whatever each device's outcome
//! (the statistics count them).

use edgetwin_wire::job::{
    DeviceJob, DeviceJobError, DeviceJobOutcome, DeviceJobStatistics, DeviceJobStatus, JobRequest,
    JobResponse, JobStatus, JobType,
};
use edgetwin_wire::query::parse_query;
use edgetwin_wire::rest::{CloudToDeviceMethod, ErrorCode};
use edgetwin_wire::topic;
use edgetwin_wire::twin::{self, Section};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::hub::{MAX_METHOD_PAYLOAD, MAX_METHOD_TIMEOUT_SECS};
use crate::ids;

/// `maxExecutionTimeInSeconds` when the request has none (the Node SDK's default).
pub const DEFAULT_MAX_EXECUTION_SECS: u64 = 3600;

/// Refuses a new job while the active ones among `jobs` already number `max_active`: 429
/// `ThrottlingMaxActiveJobCountExceeded` (429004), as IoT Hub answers a job over its cap
/// (Azure/azure-iot-sdk-csharp#361: `{"Message":"ErrorCode:ThrottlingMaxActiveJobCountExceeded;
/// 429",...}` on `PUT /jobs/v2/{id}`; the C# SDK's e2e tests retry job creation on that
/// ThrottlingException, "Concurrent jobs can be rejected", #1471).
///
/// Active means queued, scheduled for later or running; completed, failed and cancelled jobs
/// are not. IoT Hub's pages say "concurrent" and "active" without defining either: that a job
/// waiting for its start time counts is a guess, the strict reading, so that code which works
/// here works on IoT Hub. (Azure/azure-iot-sdk-csharp#608 saw a running import job block the
/// next until it completed.)
///
/// `jobs` may hold jobs over too (the store lists only those not over): they do not count.
pub fn admit(jobs: &[JobResponse], max_active: usize) -> Result<(), ApiError> {
    let active: Vec<&JobResponse> = jobs.iter().filter(|j| !j.status.is_final()).collect();
    if active.len() < max_active {
        return Ok(());
    }
    let names: Vec<String> = active
        .iter()
        .map(|job| format!("'{}' ({})", job.job_id, job.status.name()))
        .collect();
    Err(ApiError::new(
        ErrorCode::ThrottlingMaxActiveJobCountExceeded,
        format!(
            "the hub runs at most {max_active} active job(s) (queued, scheduled or running) and              has {}: {}; cancel one or wait for it to end (--max-active-jobs; IoT Hub allows 1 on              Free and S1, 5 on S2, 10 on S3)",
            active.len(),
            names.join(", ")
        ),
    ))
}

/// Longest job id accepted, as for device ids.
const MAX_JOB_ID: usize = 128;

/// Longest `queryCondition` (IoT Hub's query length limit, "Queries for IoT Hub jobs").
const MAX_QUERY_CONDITION: usize = 8192;

/// Checks a `PUT /jobs/v2/{job_id}` request and plans the job it asks for, created `now`: the
/// errors name the field that is wrong.
pub fn plan(
    job_id: &str,
    request: JobRequest,
    now: OffsetDateTime,
) -> Result<JobResponse, ApiError> {
    if job_id.is_empty() || job_id.len() > MAX_JOB_ID || job_id.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "jobId '{job_id}' must be 1 to {MAX_JOB_ID} printable characters"
        )));
    }
    if let Some(body_id) = request.job_id.as_deref().filter(|id| *id != job_id) {
        return Err(ApiError::invalid(format!(
            "jobId '{body_id}' of the body differs from '{job_id}' of the path"
        )));
    }
    let job_type = match request.job_type.as_deref() {
        None | Some("") => return Err(ApiError::invalid("type is missing: scheduleUpdateTwin or scheduleDeviceMethod")),
        Some(name) => JobType::from_name(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "type '{name}' is not a scheduled job's: scheduleUpdateTwin or scheduleDeviceMethod \
                 (import and export jobs are not served by this hub)"
            ))
        })?,
    };
    let query_condition = request.query_condition.unwrap_or_default();
    if query_condition.trim().is_empty() {
        return Err(ApiError::invalid(
            "queryCondition is missing: a WHERE condition over device twins, or '*' for every device",
        ));
    }
    if query_condition.len() > MAX_QUERY_CONDITION {
        return Err(ApiError::invalid(format!(
            "queryCondition is {} characters; IoT Hub allows {MAX_QUERY_CONDITION}",
            query_condition.len()
        )));
    }
    parse_query(&selection_query(&query_condition)).map_err(|e| {
        ApiError::invalid(format!(
            "queryCondition '{query_condition}' is not valid: {e}"
        ))
    })?;
    let (update_twin, cloud_to_device_method) = match job_type {
        JobType::ScheduleUpdateTwin => (Some(check_twin_patch(request.update_twin)?), None),
        JobType::ScheduleDeviceMethod => {
            (None, Some(check_method(request.cloud_to_device_method)?))
        }
    };
    let start = match request.start_time.as_deref() {
        None | Some("") => now,
        Some(text) => parse_time(text, "startTime")?,
    };
    let max_execution_time_in_seconds = match request.max_execution_time_in_seconds {
        None => DEFAULT_MAX_EXECUTION_SECS,
        Some(0) => {
            return Err(ApiError::invalid(
                "maxExecutionTimeInSeconds must be above 0",
            ))
        }
        Some(seconds) => seconds,
    };
    Ok(JobResponse {
        job_id: job_id.to_owned(),
        query_condition,
        created_time: ids::iso(now),
        start_time: ids::iso(start),
        end_time: None,
        max_execution_time_in_seconds,
        job_type,
        cloud_to_device_method,
        update_twin,
        status: if start > now {
            JobStatus::Scheduled
        } else {
            JobStatus::Queued
        },
        failure_reason: None,
        status_message: None,
        device_job_statistics: DeviceJobStatistics::default(),
    })
}

/// The twin patch of a twin job: tags and desired properties only, valid as a service `PATCH`,
/// with `etag` `*`.
fn check_twin_patch(
    patch: Option<edgetwin_wire::rest::Twin>,
) -> Result<edgetwin_wire::rest::Twin, ApiError> {
    let patch = patch.ok_or_else(|| {
        ApiError::invalid("updateTwin is missing: a scheduleUpdateTwin job needs the twin patch")
    })?;
    if patch.etag.as_deref() != Some("*") {
        return Err(ApiError::invalid(
            "updateTwin.etag must be '*': a scheduleUpdateTwin job updates every twin it selects \
             whatever its etag",
        ));
    }
    let properties = patch.properties.clone().unwrap_or_default();
    if properties.reported.is_some() {
        return Err(ApiError::invalid(
            "updateTwin.properties.reported cannot be changed by the service; only the device reports",
        ));
    }
    if patch.tags.is_none() && properties.desired.is_none() {
        return Err(ApiError::invalid(
            "updateTwin changes nothing: give tags or properties.desired",
        ));
    }
    for (section, value) in [
        (Section::Tags, &patch.tags),
        (Section::Desired, &properties.desired),
    ] {
        let Some(mut object) = value.clone() else {
            continue;
        };
        twin::strip_system_keys(&mut object);
        twin::validate_patch(section, &object)
            .map_err(|e| ApiError::invalid(format!("updateTwin: {e}")))?;
    }
    Ok(patch)
}

/// The method of a method job, with IoT Hub's bounds.
fn check_method(method: Option<CloudToDeviceMethod>) -> Result<CloudToDeviceMethod, ApiError> {
    let method = method.ok_or_else(|| {
        ApiError::invalid(
            "cloudToDeviceMethod is missing: a scheduleDeviceMethod job needs the method to call",
        )
    })?;
    if !topic::is_valid_method_name(&method.method_name) {
        return Err(ApiError::invalid(format!(
            "cloudToDeviceMethod.methodName '{}' is not a valid method name",
            method.method_name
        )));
    }
    let response = method.response_timeout_in_seconds.unwrap_or(30);
    if !(5..=MAX_METHOD_TIMEOUT_SECS).contains(&response) {
        return Err(ApiError::invalid(format!(
            "cloudToDeviceMethod.responseTimeoutInSeconds {response} must be between 5 and \
             {MAX_METHOD_TIMEOUT_SECS}"
        )));
    }
    if method.connect_timeout_in_seconds.unwrap_or(0) > MAX_METHOD_TIMEOUT_SECS {
        return Err(ApiError::invalid(format!(
            "cloudToDeviceMethod.connectTimeoutInSeconds must be at most {MAX_METHOD_TIMEOUT_SECS}"
        )));
    }
    let payload = method.payload.as_ref().map_or(0, |p| p.to_string().len());
    if payload > MAX_METHOD_PAYLOAD {
        return Err(ApiError::invalid(format!(
            "cloudToDeviceMethod.payload is {payload} bytes; IoT Hub allows {MAX_METHOD_PAYLOAD}"
        )));
    }
    Ok(method)
}

/// An ISO 8601 time of the request's `field`.
pub fn parse_time(text: &str, field: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        ApiError::invalid(format!(
            "{field} '{text}' is not an ISO 8601 time with a zone (like 2026-12-07T09:00:00Z): {e}"
        ))
    })
}

/// The query that selects a job's devices from its `queryCondition` (`*`: every device).
pub fn selection_query(query_condition: &str) -> String {
    match query_condition.trim() {
        "*" => "SELECT deviceId FROM devices".to_owned(),
        condition => format!("SELECT deviceId FROM devices WHERE {condition}"),
    }
}

/// What the runner does with a job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start it: select its devices and try them.
    Start,
    /// Go on trying its devices (it was running when the hub last stopped).
    Resume,
    /// Nothing before this time.
    WaitUntil(OffsetDateTime),
    /// Nothing ever again (it is over).
    Done,
}

/// What the runner does with `job` at `now`.
pub fn next_step(job: &JobResponse, now: OffsetDateTime) -> Step {
    match job.status {
        JobStatus::Queued | JobStatus::Scheduled => {
            match parse_time(&job.start_time, "startTime") {
                Ok(start) if start > now => Step::WaitUntil(start),
                _ => Step::Start,
            }
        }
        JobStatus::Running => Step::Resume,
        JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled => Step::Done,
    }
}

/// When `job` must stop trying devices: `maxExecutionTimeInSeconds` after its start time.
pub fn deadline(job: &JobResponse) -> OffsetDateTime {
    let start = parse_time(&job.start_time, "startTime").unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let seconds = i64::try_from(job.max_execution_time_in_seconds).unwrap_or(i64::MAX);
    start.saturating_add(time::Duration::seconds(seconds))
}

/// Starts a queued or scheduled job; `false` (nothing changed) if it is no longer waiting (it was
/// cancelled meanwhile).
pub fn start(job: &mut JobResponse) -> bool {
    if !matches!(job.status, JobStatus::Queued | JobStatus::Scheduled) {
        return false;
    }
    job.status = JobStatus::Running;
    true
}

/// Cancels a job that is not over, at `now`; a job that is over stays as it is (`false`).
pub fn cancel(job: &mut JobResponse, now: OffsetDateTime) -> bool {
    if job.status.is_final() {
        return false;
    }
    job.status = JobStatus::Cancelled;
    job.status_message = Some("cancelled by the back end".to_owned());
    job.end_time = Some(ids::iso(now));
    true
}

/// Fails a job that is not over at `now`, saying why (its query could not be run); a job that is
/// over stays as it is (`false`).
pub fn fail(job: &mut JobResponse, reason: String, now: OffsetDateTime) -> bool {
    if job.status.is_final() {
        return false;
    }
    job.status = JobStatus::Failed;
    job.failure_reason = Some(reason);
    job.end_time = Some(ids::iso(now));
    true
}

/// Ends a running job at `now`, once its devices were tried or its time is up: `completed` when
/// none is left pending, `failed` past its deadline with devices left. A cancelled job stays
/// cancelled (`false`: nothing changed).
pub fn finish(job: &mut JobResponse, pending: i64, now: OffsetDateTime) -> bool {
    if job.status != JobStatus::Running {
        return false;
    }
    if pending > 0 {
        job.status = JobStatus::Failed;
        job.failure_reason = Some(format!(
            "the job ran past its maxExecutionTimeInSeconds ({} s) with {pending} devices not \
             tried",
            job.max_execution_time_in_seconds
        ));
    } else {
        job.status = JobStatus::Completed;
    }
    job.end_time = Some(ids::iso(now));
    true
}

/// The record of `device_id`'s part in `job`, now `status` at `now`.
pub fn device_record(
    job: &JobResponse,
    device_id: &str,
    status: DeviceJobStatus,
    now: OffsetDateTime,
) -> DeviceJob {
    let now = ids::iso(now);
    DeviceJob {
        device_id: device_id.to_owned(),
        job_id: job.job_id.clone(),
        job_type: job.job_type,
        status,
        start_time_utc: job.start_time.clone(),
        end_time_utc: matches!(
            status,
            DeviceJobStatus::Completed | DeviceJobStatus::Failed | DeviceJobStatus::Cancelled
        )
        .then(|| now.clone()),
        created_date_time_utc: job.created_time.clone(),
        last_updated_date_time_utc: now,
        outcome: DeviceJobOutcome::default(),
        error: None,
    }
}

/// The record of a device whose part failed with `error`.
pub fn device_failed(
    job: &JobResponse,
    device_id: &str,
    error: &ApiError,
    now: OffsetDateTime,
) -> DeviceJob {
    DeviceJob {
        error: Some(DeviceJobError {
            code: error.code.name().to_owned(),
            description: error.message.clone(),
        }),
        ..device_record(job, device_id, DeviceJobStatus::Failed, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-07 09:00:00 UTC);

    fn request(body: serde_json::Value) -> JobRequest {
        serde_json::from_value(body).unwrap()
    }

    fn twin_job(extra: serde_json::Value) -> serde_json::Value {
        let mut body = json!({
            "jobId": "j1", "type": "scheduleUpdateTwin", "queryCondition": "tags.floor = 3",
            "updateTwin": {"etag": "*", "properties": {"desired": {"mode": "eco"}}}
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    }

    fn refused(body: serde_json::Value) -> String {
        let error = plan("j1", request(body), NOW).unwrap_err();
        assert_eq!(error.code, ErrorCode::ArgumentInvalid, "{}", error.message);
        error.message
    }

    #[test]
    fn a_job_due_now_is_queued_and_one_for_later_is_scheduled_until_its_start() {
        let job = plan("j1", request(twin_job(json!({}))), NOW).unwrap();
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.start_time, "2026-12-07T09:00:00.0000000Z");
        assert_eq!(
            job.max_execution_time_in_seconds,
            DEFAULT_MAX_EXECUTION_SECS
        );
        assert_eq!(next_step(&job, NOW), Step::Start);
        let later = plan(
            "j1",
            request(twin_job(
                json!({"startTime": "2026-12-07T10:00:00.123Z", "maxExecutionTimeInSeconds": 60}),
            )),
            NOW,
        )
        .unwrap();
        assert_eq!(later.status, JobStatus::Scheduled);
        let start = datetime!(2026-12-07 10:00:00.123 UTC);
        assert_eq!(next_step(&later, NOW), Step::WaitUntil(start));
        assert_eq!(next_step(&later, start), Step::Start);
        assert_eq!(deadline(&later), start + time::Duration::seconds(60));
    }

    #[test]
    fn a_bad_request_is_refused_naming_the_field() {
        for (body, field) in [
            (twin_job(json!({"type": null})), "type is missing"),
            (
                twin_job(json!({"type": "scheduleDirectMethod"})),
                "type 'scheduleDirectMethod'",
            ),
            (twin_job(json!({"type": "export"})), "import and export"),
            (
                twin_job(json!({"queryCondition": " "})),
                "queryCondition is missing",
            ),
            (
                twin_job(json!({"queryCondition": "tags.x ="})),
                "queryCondition 'tags.x ='",
            ),
            (
                twin_job(json!({"updateTwin": null})),
                "updateTwin is missing",
            ),
            (
                twin_job(json!({"updateTwin": {"properties": {"desired": {"a": 1}}}})),
                "updateTwin.etag",
            ),
            (
                twin_job(
                    json!({"updateTwin": {"etag": "*", "properties": {"reported": {"a": 1}}}}),
                ),
                "properties.reported",
            ),
            (
                twin_job(json!({"updateTwin": {"etag": "*"}})),
                "changes nothing",
            ),
            (
                twin_job(json!({"startTime": "tomorrow"})),
                "startTime 'tomorrow'",
            ),
            (
                twin_job(json!({"maxExecutionTimeInSeconds": 0})),
                "maxExecutionTimeInSeconds",
            ),
            (twin_job(json!({"jobId": "other"})), "jobId 'other'"),
            (
                json!({"type": "scheduleDeviceMethod", "queryCondition": "*"}),
                "cloudToDeviceMethod is missing",
            ),
            (
                json!({"type": "scheduleDeviceMethod", "queryCondition": "*",
                    "cloudToDeviceMethod": {"methodName": "a/b"}}),
                "methodName 'a/b'",
            ),
            (
                json!({"type": "scheduleDeviceMethod", "queryCondition": "*",
                    "cloudToDeviceMethod": {"methodName": "m", "responseTimeoutInSeconds": 1}}),
                "responseTimeoutInSeconds 1",
            ),
        ] {
            let message = refused(body.clone());
            assert!(message.contains(field), "{body}: {message}");
        }
        assert!(plan("", request(twin_job(json!({"jobId": null}))), NOW).is_err());
    }

    #[test]
    fn the_cli_star_selects_every_device_and_a_condition_filters_them() {
        assert_eq!(selection_query(" * "), "SELECT deviceId FROM devices");
        assert_eq!(
            selection_query("deviceId IN ['a']"),
            "SELECT deviceId FROM devices WHERE deviceId IN ['a']"
        );
        let job = plan(
            "j",
            request(
                json!({"type": "scheduleDeviceMethod", "queryCondition": "*",
                           "cloudToDeviceMethod": {"methodName": "reboot"}}),
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(job.cloud_to_device_method.unwrap().method_name, "reboot");
    }

    #[test]
    fn a_job_over_the_active_cap_is_refused_429_naming_the_active_ones_and_ended_ones_do_not_count()
    {
        let queued = plan("queued", request(twin_job(json!({"jobId": "queued"}))), NOW).unwrap();
        let later = json!({"jobId": "later", "startTime": "2026-12-07T10:00:00Z"});
        let scheduled = plan("later", request(twin_job(later)), NOW).unwrap();
        let mut running = plan(
            "running",
            request(twin_job(json!({"jobId": "running"}))),
            NOW,
        )
        .unwrap();
        assert!(start(&mut running));
        let mut cancelled = plan("gone", request(twin_job(json!({"jobId": "gone"}))), NOW).unwrap();
        assert!(cancel(&mut cancelled, NOW));
        let mut completed = plan("done", request(twin_job(json!({"jobId": "done"}))), NOW).unwrap();
        assert!(start(&mut completed) && finish(&mut completed, 0, NOW));
        let mut failed =
            plan("failed", request(twin_job(json!({"jobId": "failed"}))), NOW).unwrap();
        assert!(fail(&mut failed, "no".into(), NOW));

        assert!(admit(&[], crate::hub::DEFAULT_MAX_ACTIVE_JOBS).is_ok());
        let over = [cancelled.clone(), completed.clone(), failed.clone()];
        assert!(admit(&over, 1).is_ok(), "ended jobs do not count");
        for active in [&queued, &scheduled, &running] {
            let error = admit(&[active.clone(), cancelled.clone()], 1).unwrap_err();
            assert_eq!(error.code, ErrorCode::ThrottlingMaxActiveJobCountExceeded);
            assert_eq!(error.code.http_status(), 429);
            assert_eq!(error.code.number(), 429004);
            let name = format!("'{}' ({})", active.job_id, active.status.name());
            assert!(error.message.contains(&name), "{}", error.message);
            assert!(!error.message.contains("'gone'"), "{}", error.message);
        }
        let three = [queued, scheduled, running];
        assert!(admit(&three, 5).is_ok(), "S2's 5");
        assert!(admit(&three, 3).is_err());
    }

    #[test]
    fn a_cancel_stops_a_job_not_over_and_leaves_one_that_is() {
        let mut job = plan("j1", request(twin_job(json!({}))), NOW).unwrap();
        assert!(cancel(&mut job, NOW));
        assert_eq!(job.status, JobStatus::Cancelled);
        assert!(!start(&mut job), "a cancelled job never starts");
        assert!(!finish(&mut job, 0, NOW), "nor completes");
        assert!(!cancel(&mut job, NOW));
        assert_eq!(next_step(&job, NOW), Step::Done);
    }

    #[test]
    fn a_job_whose_query_cannot_run_fails_saying_why_unless_it_is_over() {
        let mut job = plan("j1", request(twin_job(json!({}))), NOW).unwrap();
        assert!(fail(&mut job, "no".into(), NOW));
        assert_eq!(
            (job.status, job.failure_reason.as_deref()),
            (JobStatus::Failed, Some("no"))
        );
        assert!(!fail(&mut job, "again".into(), NOW));
        assert!(!start(&mut job));
    }

    #[test]
    fn a_running_job_completes_once_every_device_was_tried_and_fails_with_devices_left() {
        let mut job = plan("j1", request(twin_job(json!({}))), NOW).unwrap();
        assert!(start(&mut job));
        assert_eq!(next_step(&job, NOW), Step::Resume);
        let mut late = job.clone();
        assert!(finish(&mut job, 0, NOW));
        assert_eq!(
            (job.status, job.end_time.as_deref()),
            (JobStatus::Completed, Some("2026-12-07T09:00:00.0000000Z"))
        );
        assert!(finish(&mut late, 2, NOW));
        assert_eq!(late.status, JobStatus::Failed);
        assert!(late.failure_reason.unwrap().contains("2 devices not tried"));
    }

    #[test]
    fn a_device_record_ends_when_its_part_does_and_names_its_error() {
        let job = plan("j1", request(twin_job(json!({}))), NOW).unwrap();
        let later = NOW + time::Duration::seconds(5);
        let pending = device_record(&job, "d1", DeviceJobStatus::Pending, NOW);
        assert_eq!(pending.end_time_utc, None);
        let failed = device_failed(
            &job,
            "d1",
            &ApiError::new(ErrorCode::DeviceNotFound, "gone"),
            later,
        );
        assert_eq!(
            failed.end_time_utc.as_deref(),
            Some("2026-12-07T09:00:05.0000000Z")
        );
        assert_eq!(failed.error.unwrap().code, "DeviceNotFound");
    }
}
