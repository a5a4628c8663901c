//! Scheduled jobs (`/jobs/v2`): the request a back end sends to schedule a twin update or a
//! direct method over a query of device twins, the job IoT Hub answers with, and the per-device
//! record that `SELECT * FROM devices.jobs` reads.
//!
//! The shapes follow what Microsoft's clients send and read: azure-iot-hub (Python)
//! `protocol/models/job_request.py`, `job_response.py`, `device_job_statistics.py`;
//! azure-iothub (Node) `job_client.js` (`scheduleTwinUpdate`, `scheduleDeviceMethod`,
//! `_getJobsFunc`); the Azure CLI's `azext_iot/iothub/providers/job.py` and, for the per-device
//! record, "Queries for IoT Hub jobs" (Microsoft Learn, `query-jobs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rest::{CloudToDeviceMethod, Twin};

/// The two kinds of scheduled job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobType {
    /// Tags and desired properties merged into every selected device twin.
    ScheduleUpdateTwin,
    /// A direct method invoked on every selected device.
    ScheduleDeviceMethod,
}

impl JobType {
    /// The name on the wire (`type` of the job, `jobType` of the query string).
    pub fn name(self) -> &'static str {
        match self {
            JobType::ScheduleUpdateTwin => "scheduleUpdateTwin",
            JobType::ScheduleDeviceMethod => "scheduleDeviceMethod",
        }
    }

    /// The type named `name`, if it is a scheduled job's.
    pub fn from_name(name: &str) -> Option<Self> {
        [JobType::ScheduleUpdateTwin, JobType::ScheduleDeviceMethod]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

/// Where a job is in its life (the Azure CLI waits for `completed`, `failed` or `cancelled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobStatus {
    /// Due now, waiting for its turn to run.
    Queued,
    /// Waiting for its start time.
    Scheduled,
    /// Running over its devices.
    Running,
    /// Every selected device was tried (each device's own outcome is in the statistics).
    Completed,
    /// Stopped before every device was tried (its `failureReason` says why).
    Failed,
    /// Cancelled by the back end.
    Cancelled,
}

impl JobStatus {
    /// The name on the wire (`status`, and `jobStatus` of the query string).
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            JobStatus::Queued,
            JobStatus::Scheduled,
            JobStatus::Running,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// Whether the job is over (nothing will change it again).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// `PUT /jobs/v2/{jobId}` body. Every field is optional here so that the hub can name what is
/// missing or wrong.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JobRequest {
    /// The job's id (the path's; the SDKs send both).
    pub job_id: Option<String>,
    /// `scheduleUpdateTwin` or `scheduleDeviceMethod`.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// The method of a `scheduleDeviceMethod` job.
    pub cloud_to_device_method: Option<CloudToDeviceMethod>,
    /// The patch of a `scheduleUpdateTwin` job (tags, `properties.desired`, `etag: "*"`).
    pub update_twin: Option<Twin>,
    /// The WHERE condition over device twins that selects the devices (`*`: every device).
    pub query_condition: Option<String>,
    /// When to start (ISO 8601); now if missing.
    pub start_time: Option<String>,
    /// How long the job may run once started.
    pub max_execution_time_in_seconds: Option<u64>,
}

/// How many of a job's devices are where (`deviceJobStatistics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceJobStatistics {
    /// Devices the query selected.
    pub device_count: i64,
    /// Devices whose update or method failed (or was never tried: cancelled, timed out).
    pub failed_count: i64,
    /// Devices updated, or that answered the method.
    pub succeeded_count: i64,
    /// Devices being updated or called now.
    pub running_count: i64,
    /// Devices not tried yet.
    pub pending_count: i64,
}

impl DeviceJobStatistics {
    /// The statistics of a job from how many of its devices are in each status. Devices a cancel
    /// left untried count as pending.
    pub fn count(counts: &[(DeviceJobStatus, i64)]) -> Self {
        let mut stats = Self::default();
        for &(status, count) in counts {
            stats.device_count += count;
            match status {
                DeviceJobStatus::Pending | DeviceJobStatus::Cancelled => {
                    stats.pending_count += count
                }
                DeviceJobStatus::Running => stats.running_count += count,
                DeviceJobStatus::Completed => stats.succeeded_count += count,
                DeviceJobStatus::Failed => stats.failed_count += count,
            }
        }
        stats
    }
}

/// A job as IoT Hub answers it (`PUT`, `GET`, `POST …/cancel`, and each item of
/// `GET /jobs/v2/query`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResponse {
    /// The job's id.
    pub job_id: String,
    /// The WHERE condition that selects its devices.
    pub query_condition: String,
    /// When it was created (ISO 8601).
    pub created_time: String,
    /// When it starts or started (ISO 8601).
    pub start_time: String,
    /// When it ended (ISO 8601), once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// How long it may run once started.
    pub max_execution_time_in_seconds: u64,
    /// Its type.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// The method of a `scheduleDeviceMethod` job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_to_device_method: Option<CloudToDeviceMethod>,
    /// The patch of a `scheduleUpdateTwin` job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_twin: Option<Twin>,
    /// Where it is in its life.
    pub status: JobStatus,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// A word on its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Its devices, counted by where they are.
    #[serde(default)]
    pub device_job_statistics: DeviceJobStatistics,
}

/// Where one device is in a job (`devices.jobs[].status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceJobStatus {
    /// Not tried yet.
    Pending,
    /// Being updated or called.
    Running,
    /// Updated, or the method answered.
    Completed,
    /// The update or the method failed (its `error` says why).
    Failed,
    /// Never tried: the job was cancelled first.
    Cancelled,
}

impl DeviceJobStatus {
    /// The name on the wire, as stored.
    pub fn name(self) -> &'static str {
        match self {
            DeviceJobStatus::Pending => "pending",
            DeviceJobStatus::Running => "running",
            DeviceJobStatus::Completed => "completed",
            DeviceJobStatus::Failed => "failed",
            DeviceJobStatus::Cancelled => "cancelled",
        }
    }
}

/// What a device's part of a method job returned (`outcome`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJobOutcome {
    /// The device's answer to the method (`{"status", "payload"}`); null for twin jobs.
    pub device_method_response: Option<Value>,
}

/// Why a device's part of a job failed (`error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJobError {
    /// IoT Hub's error code (`DeviceNotOnline`, `GatewayTimeout`, …).
    pub code: String,
    /// What went wrong.
    pub description: String,
}

/// One device's part in a job, as `SELECT * FROM devices.jobs` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJob {
    /// The device.
    pub device_id: String,
    /// The job.
    pub job_id: String,
    /// The job's type.
    pub job_type: JobType,
    /// Where the device is in the job.
    pub status: DeviceJobStatus,
    /// When the job started (ISO 8601).
    pub start_time_utc: String,
    /// When the device's part ended (ISO 8601), once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<String>,
    /// When the job was created (ISO 8601).
    pub created_date_time_utc: String,
    /// When this record last changed (ISO 8601).
    pub last_updated_date_time_utc: String,
    /// The method's answer (method jobs).
    pub outcome: DeviceJobOutcome,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<DeviceJobError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_request_of_each_sdk_reads_as_sent() {
        // azure-iothub (Node) scheduleDeviceMethod; the Azure CLI sends its timeouts as numbers
        // here and the Python SDK as numbers too.
        let node: JobRequest = serde_json::from_value(json!({
            "jobId": "j1", "type": "scheduleDeviceMethod",
            "cloudToDeviceMethod": {"methodName": "reboot", "payload": null, "responseTimeoutInSeconds": 30},
            "startTime": "2026-12-07T09:00:00.000Z", "maxExecutionTimeInSeconds": 3600,
            "queryCondition": "deviceId IN ['d1']"
        }))
        .unwrap();
        assert_eq!(node.job_type.as_deref(), Some("scheduleDeviceMethod"));
        assert_eq!(
            node.cloud_to_device_method
                .unwrap()
                .response_timeout_in_seconds,
            Some(30)
        );
        let cli: JobRequest = serde_json::from_value(json!({
            "jobId": "j2", "type": "scheduleUpdateTwin",
            "updateTwin": {"properties": {"desired": {"a": 1}}, "etag": "*"},
            "queryCondition": "*", "maxExecutionTimeInSeconds": 3600
        }))
        .unwrap();
        assert_eq!(cli.update_twin.unwrap().etag.as_deref(), Some("*"));
        assert_eq!(cli.start_time, None);
    }

    #[test]
    fn statistics_count_each_device_once() {
        let stats = DeviceJobStatistics::count(&[
            (DeviceJobStatus::Completed, 3),
            (DeviceJobStatus::Failed, 1),
            (DeviceJobStatus::Running, 2),
            (DeviceJobStatus::Pending, 4),
            (DeviceJobStatus::Cancelled, 5),
        ]);
        assert_eq!(
            stats,
            DeviceJobStatistics {
                device_count: 15,
                failed_count: 1,
                succeeded_count: 3,
                running_count: 2,
                pending_count: 9,
            }
        );
    }

    #[test]
    fn names_on_the_wire_round_trip() {
        for t in [JobType::ScheduleUpdateTwin, JobType::ScheduleDeviceMethod] {
            assert_eq!(JobType::from_name(t.name()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.name()));
        }
        assert_eq!(JobType::from_name("export"), None);
        assert_eq!(
            JobStatus::from_name("cancelled"),
            Some(JobStatus::Cancelled)
        );
        assert_eq!(
            serde_json::to_value(JobStatus::Scheduled).unwrap(),
            json!("scheduled")
        );
        assert!(JobStatus::Failed.is_final() && !JobStatus::Running.is_final());
    }
}
