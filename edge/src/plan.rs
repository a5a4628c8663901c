//! The agent's plan: desired modules + what the container engine shows + what the agent
//! remembers + now → the actions to take and each module's runtime status. Pure, with explicit
//! time; [`crate::agent`] carries the actions out.
//!
//! Restarts follow edgeAgent's `RestartPolicyManager` (Azure/iotedge
//! `edge-agent/src/Microsoft.Azure.Devices.Edge.Agent.Core/RestartPolicyManager.cs`): an exited
//! module is restarted when its policy says so (`on-failure` and up for a non-zero exit code,
//! `always` for zero), after a cool-off of `min(10 s × 2^restartCount, 300 s)`; after
//! [`MAX_RESTART_COUNT`] restarts it is `failed` and left alone; a module that has run for
//! [`INTENSIVE_CARE`] has its restart count reset. A failed pull or create is retried on the
//! same schedule while the other modules go on.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use crate::deployment::{DesiredStatus, ModuleSpec, RestartPolicy};

/// Restarts after which a module is `failed` and no longer restarted (edgeAgent's
/// `MaxRestartCount`).
pub const MAX_RESTART_COUNT: u32 = 20;
/// The cool-off unit: the wait before restart `n` is `COOL_OFF_UNIT × 2^n`, capped.
pub const COOL_OFF_UNIT: Duration = Duration::from_secs(10);
/// The longest cool-off (edgeAgent's `MaxCoolOffPeriodSecs`).
pub const MAX_COOL_OFF: Duration = Duration::from_secs(300);
/// Running this long resets the restart count (edgeAgent's `IntensiveCareTime`).
pub const INTENSIVE_CARE: Duration = Duration::from_secs(600);

/// The wait before restart number `restart_count + 1`.
pub fn cool_off(restart_count: u32) -> Duration {
    let factor = 1u64.checked_shl(restart_count).unwrap_or(u64::MAX);
    COOL_OFF_UNIT
        .checked_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .map_or(MAX_COOL_OFF, |d| d.min(MAX_COOL_OFF))
}

/// One of the agent's containers as the engine shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The container id.
    pub container_id: String,
    /// The fingerprint label it was created with ([`ModuleSpec::fingerprint`]).
    pub fingerprint: Option<String>,
    /// The image it was created from, as named.
    pub image: String,
    /// The image's id (`sha256:…`), reported as `imageHash`.
    pub image_id: String,
    /// Whether it is running.
    pub running: bool,
    /// The last exit code.
    pub exit_code: i64,
    /// When it last started (`None`: never).
    pub started_at: Option<OffsetDateTime>,
    /// When it last exited (`None`: never).
    pub finished_at: Option<OffsetDateTime>,
    /// Whether its health check says unhealthy.
    pub unhealthy: bool,
}

/// An operation on a module that failed (pull, create, start), kept to pace retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The module's fingerprint it failed for: a new deployment of the module starts afresh.
    pub fingerprint: String,
    /// What failed, naming the image and the cause (reported as `statusDescription`).
    pub description: String,
    /// When it last failed.
    pub at: OffsetDateTime,
    /// Failures in a row.
    pub attempts: u32,
}

/// What the agent remembers of a module between plans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleRecord {
    /// Restarts since the count was last reset.
    pub restart_count: u32,
    /// When it was last restarted.
    pub last_restart: Option<OffsetDateTime>,
    /// The last failed operation, if the module has not been created since.
    pub failure: Option<Failure>,
    /// The agent stopped it (desired `stopped`): its exit is not a failure to restart from.
    pub stopped_by_agent: bool,
}

impl ModuleRecord {
    /// Takes in what the engine shows: a module running for [`INTENSIVE_CARE`] is healthy again
    /// and its restart count goes back to 0.
    pub fn observe(&mut self, observed: Option<&Observed>, now: OffsetDateTime) {
        if let Some(started) = observed.filter(|o| o.running).and_then(|o| o.started_at) {
            if now - started >= INTENSIVE_CARE {
                self.restart_count = 0;
            }
        }
    }

    /// Records a restart at `now`.
    pub fn restarted(&mut self, now: OffsetDateTime) {
        self.restart_count = self.restart_count.saturating_add(1);
        self.last_restart = Some(now);
    }

    /// Records a failed operation for the module with `fingerprint`.
    pub fn failed(&mut self, fingerprint: &str, description: String, now: OffsetDateTime) {
        let attempts = match &self.failure {
            Some(f) if f.fingerprint == fingerprint => f.attempts.saturating_add(1),
            _ => 1,
        };
        self.failure = Some(Failure {
            fingerprint: fingerprint.to_owned(),
            description,
            at: now,
            attempts,
        });
    }

    /// The failure that still applies to a module with `fingerprint`.
    fn failure_for(&self, fingerprint: &str) -> Option<&Failure> {
        self.failure
            .as_ref()
            .filter(|f| f.fingerprint == fingerprint)
    }
}

/// One step for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pull the image (per the pull policy), then remove `replace` if given (the old container
    /// keeps running until the new image is there), create the container and, if `start`,
    /// start it.
    Create {
        /// The module.
        module: String,
        /// The container it replaces.
        replace: Option<String>,
        /// Whether to start it.
        start: bool,
    },
    /// Start a container that is created but not running.
    Start {
        /// The module.
        module: String,
        /// Its container.
        container_id: String,
    },
    /// Restart a module per its restart policy (counted in `restartCount`).
    Restart {
        /// The module.
        module: String,
        /// Its container.
        container_id: String,
    },
    /// Stop a running container.
    Stop {
        /// The module.
        module: String,
        /// Its container.
        container_id: String,
    },
    /// Stop and remove the container of a module no longer deployed.
    Remove {
        /// The module.
        module: String,
        /// Its container.
        container_id: String,
    },
}

/// A module's `runtimeStatus`, as edgeAgent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeStatus {
    /// Running.
    Running,
    /// Exited and waiting out its cool-off before a restart.
    Backoff,
    /// Not running, as desired or after a clean exit.
    Stopped,
    /// Exited with an error and not restarted (policy, or too many restarts).
    Failed,
    /// Not known (not created yet).
    Unknown,
}

impl RuntimeStatus {
    /// The reported name.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeStatus::Running => "running",
            RuntimeStatus::Backoff => "backoff",
            RuntimeStatus::Stopped => "stopped",
            RuntimeStatus::Failed => "failed",
            RuntimeStatus::Unknown => "unknown",
        }
    }
}

/// Whether `policy` restarts a module that exited with `exit_code`.
fn restarts_after_exit(policy: RestartPolicy, exit_code: i64) -> bool {
    if exit_code == 0 {
        policy == RestartPolicy::Always
    } else {
        policy >= RestartPolicy::OnFailure
    }
}

/// Whether the retry of a failure (or restart number `count + 1`) is due at `now`.
fn due(since: OffsetDateTime, count: u32, now: OffsetDateTime) -> bool {
    now - since >= cool_off(count)
}

/// The actions that bring `observed` to `desired`: removals of modules no longer deployed
/// first, then each module in `startupOrder` (ties by name).
pub fn plan(
    desired: &BTreeMap<String, ModuleSpec>,
    observed: &BTreeMap<String, Observed>,
    records: &BTreeMap<String, ModuleRecord>,
    now: OffsetDateTime,
) -> Vec<Action> {
    let mut actions: Vec<Action> = observed
        .iter()
        .filter(|(name, _)| !desired.contains_key(*name))
        .map(|(name, o)| Action::Remove {
            module: name.clone(),
            container_id: o.container_id.clone(),
        })
        .collect();
    let mut ordered: Vec<&ModuleSpec> = desired.values().collect();
    ordered.sort_by(|a, b| (a.startup_order, &a.name).cmp(&(b.startup_order, &b.name)));
    let empty = ModuleRecord::default();
    for spec in ordered {
        let record = records.get(&spec.name).unwrap_or(&empty);
        if let Some(action) = module_action(spec, observed.get(&spec.name), record, now) {
            actions.push(action);
        }
    }
    actions
}

fn module_action(
    spec: &ModuleSpec,
    observed: Option<&Observed>,
    record: &ModuleRecord,
    now: OffsetDateTime,
) -> Option<Action> {
    let module = spec.name.clone();
    let fingerprint = spec.fingerprint();
    // A failed pull, create or start is retried on the cool-off schedule, then given up.
    if let Some(failure) = record.failure_for(&fingerprint) {
        if failure.attempts >= MAX_RESTART_COUNT || !due(failure.at, failure.attempts - 1, now) {
            return None;
        }
    }
    let current = observed.filter(|o| o.fingerprint.as_deref() == Some(fingerprint.as_str()));
    let Some(current) = current else {
        return Some(Action::Create {
            module,
            replace: observed.map(|o| o.container_id.clone()),
            start: spec.status == DesiredStatus::Running,
        });
    };
    let container_id = current.container_id.clone();
    let exited_at = current.finished_at.filter(|_| current.started_at.is_some());
    match (spec.status, current.running, exited_at) {
        (DesiredStatus::Stopped, true, _) => Some(Action::Stop {
            module,
            container_id,
        }),
        (DesiredStatus::Stopped, false, _) => None,
        (DesiredStatus::Running, true, _) => (current.unhealthy
            && spec.restart_policy >= RestartPolicy::OnUnhealthy
            && record.restart_count < MAX_RESTART_COUNT)
            .then_some(Action::Restart {
                module,
                container_id,
            }),
        // Created, or stopped by an earlier deployment, and never exited on its own.
        (DesiredStatus::Running, false, None) => Some(Action::Start {
            module,
            container_id,
        }),
        (DesiredStatus::Running, false, Some(_)) if record.stopped_by_agent => {
            Some(Action::Start {
                module,
                container_id,
            })
        }
        (DesiredStatus::Running, false, Some(exited)) => {
            (restarts_after_exit(spec.restart_policy, current.exit_code)
                && record.restart_count < MAX_RESTART_COUNT
                && due(exited, record.restart_count, now))
            .then_some(Action::Restart {
                module,
                container_id,
            })
        }
    }
}

/// A module's `runtimeStatus` and `statusDescription`.
pub fn runtime_status(
    spec: &ModuleSpec,
    observed: Option<&Observed>,
    record: &ModuleRecord,
) -> (RuntimeStatus, String) {
    let fingerprint = spec.fingerprint();
    if let Some(failure) = record.failure_for(&fingerprint) {
        if observed.is_none_or(|o| !o.running) {
            let status = if failure.attempts >= MAX_RESTART_COUNT {
                RuntimeStatus::Failed
            } else {
                RuntimeStatus::Backoff
            };
            return (status, failure.description.clone());
        }
    }
    let Some(observed) = observed else {
        return (RuntimeStatus::Unknown, "not created yet".into());
    };
    if observed.running {
        return (RuntimeStatus::Running, "running".into());
    }
    let code = observed.exit_code;
    if observed.finished_at.is_none() || observed.started_at.is_none() {
        return match spec.status {
            DesiredStatus::Stopped => (RuntimeStatus::Stopped, "stopped".into()),
            DesiredStatus::Running => (RuntimeStatus::Unknown, "created, not started yet".into()),
        };
    }
    if spec.status == DesiredStatus::Stopped {
        return (RuntimeStatus::Stopped, "stopped".into());
    }
    if !restarts_after_exit(spec.restart_policy, code) {
        return if code == 0 {
            (RuntimeStatus::Stopped, "exited with code 0".into())
        } else {
            (
                RuntimeStatus::Failed,
                format!(
                    "exited with code {code}; restart policy {} does not restart it",
                    spec.restart_policy.name()
                ),
            )
        };
    }
    if record.restart_count >= MAX_RESTART_COUNT {
        return (
            RuntimeStatus::Failed,
            format!(
                "exited with code {code} after {MAX_RESTART_COUNT} restarts; not restarted again"
            ),
        );
    }
    // No countdown in the text: it would change the reported properties at every look.
    (
        RuntimeStatus::Backoff,
        format!(
            "exited with code {code}; restart {} after a {} s cool-off",
            record.restart_count + 1,
            cool_off(record.restart_count).as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::ImagePullPolicy;
    use serde_json::Map;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn spec(name: &str, order: u32, policy: RestartPolicy) -> ModuleSpec {
        ModuleSpec {
            name: name.into(),
            version: "1.0".into(),
            image: format!("localhost:5000/{name}:1"),
            create_options_text: String::new(),
            create_options: Map::new(),
            env: BTreeMap::new(),
            status: DesiredStatus::Running,
            restart_policy: policy,
            image_pull_policy: ImagePullPolicy::OnCreate,
            startup_order: order,
        }
    }

    fn running(spec: &ModuleSpec, started: i64) -> Observed {
        Observed {
            container_id: format!("c-{}", spec.name),
            fingerprint: Some(spec.fingerprint()),
            image: spec.image.clone(),
            image_id: "sha256:1".into(),
            running: true,
            exit_code: 0,
            started_at: Some(t(started)),
            finished_at: None,
            unhealthy: false,
        }
    }

    fn exited(spec: &ModuleSpec, code: i64, at: i64) -> Observed {
        Observed {
            running: false,
            exit_code: code,
            finished_at: Some(t(at)),
            ..running(spec, at - 5)
        }
    }

    fn desired(specs: &[&ModuleSpec]) -> BTreeMap<String, ModuleSpec> {
        specs
            .iter()
            .map(|s| (s.name.clone(), (*s).clone()))
            .collect()
    }

    fn observed(list: &[Observed]) -> BTreeMap<String, Observed> {
        list.iter()
            .map(|o| {
                (
                    o.container_id.trim_start_matches("c-").to_owned(),
                    o.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn the_cool_off_doubles_from_ten_seconds_to_a_five_minute_cap() {
        let secs: Vec<u64> = (0..7).map(|n| cool_off(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(cool_off(64), MAX_COOL_OFF);
        assert_eq!(cool_off(u32::MAX), MAX_COOL_OFF);
    }

    #[test]
    fn new_modules_are_created_in_startup_order_then_by_name() {
        let (a, b, c) = (
            spec("zeta", 0, RestartPolicy::Always),
            spec("alpha", 1, RestartPolicy::Always),
            spec("beta", 1, RestartPolicy::Always),
        );
        let actions = plan(
            &desired(&[&a, &b, &c]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            t(0),
        );
        let names: Vec<_> = actions
            .iter()
            .map(|a| match a {
                Action::Create {
                    module,
                    start: true,
                    replace: None,
                } => module.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["zeta", "alpha", "beta"]);
    }

    #[test]
    fn a_running_module_that_matches_is_left_alone_and_a_removed_one_goes_first() {
        let a = spec("a", 0, RestartPolicy::Always);
        let old = spec("old", 0, RestartPolicy::Always);
        let actions = plan(
            &desired(&[&a]),
            &observed(&[running(&a, 0), running(&old, 0)]),
            &BTreeMap::new(),
            t(60),
        );
        assert_eq!(
            actions,
            [Action::Remove {
                module: "old".into(),
                container_id: "c-old".into()
            }]
        );
    }

    #[test]
    fn a_changed_module_is_recreated_replacing_its_old_container() {
        let a = spec("a", 0, RestartPolicy::Always);
        let mut newer = a.clone();
        newer.image = "localhost:5000/a:2".into();
        let actions = plan(
            &desired(&[&newer]),
            &observed(&[running(&a, 0)]),
            &BTreeMap::new(),
            t(60),
        );
        assert_eq!(
            actions,
            [Action::Create {
                module: "a".into(),
                replace: Some("c-a".into()),
                start: true
            }]
        );
    }

    #[test]
    fn desired_stopped_stops_a_running_module_and_running_starts_it_again() {
        let mut a = spec("a", 0, RestartPolicy::Always);
        a.status = DesiredStatus::Stopped;
        let actions = plan(
            &desired(&[&a]),
            &observed(&[running(&a, 0)]),
            &BTreeMap::new(),
            t(60),
        );
        assert_eq!(
            actions,
            [Action::Stop {
                module: "a".into(),
                container_id: "c-a".into()
            }]
        );
        let stopped = exited(&a, 0, 61);
        assert!(plan(
            &desired(&[&a]),
            &observed(std::slice::from_ref(&stopped)),
            &BTreeMap::new(),
            t(62)
        )
        .is_empty());
        assert_eq!(
            runtime_status(&a, Some(&stopped), &ModuleRecord::default()).0,
            RuntimeStatus::Stopped
        );
        a.status = DesiredStatus::Running;
        let start = [Action::Start {
            module: "a".into(),
            container_id: "c-a".into(),
        }];
        let records = BTreeMap::from([(
            "a".to_owned(),
            ModuleRecord {
                stopped_by_agent: true,
                ..ModuleRecord::default()
            },
        )]);
        assert_eq!(
            plan(
                &desired(&[&a]),
                &observed(std::slice::from_ref(&stopped)),
                &records,
                t(63)
            ),
            start
        );
        let created = Observed {
            started_at: None,
            finished_at: None,
            running: false,
            ..stopped
        };
        assert_eq!(
            plan(
                &desired(&[&a]),
                &observed(&[created]),
                &BTreeMap::new(),
                t(63)
            ),
            start
        );
    }

    #[test]
    fn a_module_that_exits_1_backs_off_on_the_doubling_schedule_and_fails_after_twenty_restarts() {
        let a = spec("a", 0, RestartPolicy::Always);
        let mut record = ModuleRecord::default();
        let mut exit_at = 100;
        for restart in 0..MAX_RESTART_COUNT {
            let wait = cool_off(restart).as_secs() as i64;
            let seen = observed(&[exited(&a, 1, exit_at)]);
            let records = BTreeMap::from([("a".to_owned(), record.clone())]);
            assert!(
                plan(&desired(&[&a]), &seen, &records, t(exit_at + wait - 1)).is_empty(),
                "restart {restart} too early"
            );
            let (status, description) = runtime_status(&a, seen.get("a"), &record);
            assert_eq!(status, RuntimeStatus::Backoff);
            assert!(
                description.starts_with("exited with code 1; restart"),
                "{description}"
            );
            assert_eq!(
                plan(&desired(&[&a]), &seen, &records, t(exit_at + wait)),
                [Action::Restart {
                    module: "a".into(),
                    container_id: "c-a".into()
                }],
                "restart {restart} is due after {wait} s"
            );
            record.restarted(t(exit_at + wait));
            exit_at += wait + 1;
        }
        assert_eq!(record.restart_count, MAX_RESTART_COUNT);
        let seen = observed(&[exited(&a, 1, exit_at)]);
        let records = BTreeMap::from([("a".to_owned(), record.clone())]);
        assert!(plan(&desired(&[&a]), &seen, &records, t(exit_at + 10_000)).is_empty());
        assert_eq!(
            runtime_status(&a, seen.get("a"), &record).0,
            RuntimeStatus::Failed
        );
    }

    #[test]
    fn restart_policies_decide_which_exits_restart() {
        let cases = [
            (RestartPolicy::Never, 1, RuntimeStatus::Failed, false),
            (RestartPolicy::Never, 0, RuntimeStatus::Stopped, false),
            (RestartPolicy::OnFailure, 1, RuntimeStatus::Backoff, true),
            (RestartPolicy::OnFailure, 0, RuntimeStatus::Stopped, false),
            (RestartPolicy::OnUnhealthy, 2, RuntimeStatus::Backoff, true),
            (RestartPolicy::Always, 0, RuntimeStatus::Backoff, true),
        ];
        for (policy, code, status, restarts) in cases {
            let a = spec("a", 0, policy);
            let seen = observed(&[exited(&a, code, 0)]);
            let actions = plan(&desired(&[&a]), &seen, &BTreeMap::new(), t(3600));
            assert_eq!(!actions.is_empty(), restarts, "{policy:?} exit {code}");
            assert_eq!(
                runtime_status(&a, seen.get("a"), &ModuleRecord::default()).0,
                status,
                "{policy:?} {code}"
            );
        }
    }

    #[test]
    fn ten_minutes_of_running_resets_the_restart_count() {
        let a = spec("a", 0, RestartPolicy::Always);
        let mut record = ModuleRecord {
            restart_count: 7,
            ..ModuleRecord::default()
        };
        record.observe(Some(&running(&a, 0)), t(599));
        assert_eq!(record.restart_count, 7);
        record.observe(Some(&running(&a, 0)), t(600));
        assert_eq!(record.restart_count, 0);
    }

    #[test]
    fn a_failed_pull_is_retried_on_the_cool_off_schedule_and_a_new_deployment_starts_afresh() {
        let a = spec("a", 0, RestartPolicy::Always);
        let mut record = ModuleRecord::default();
        record.failed(
            &a.fingerprint(),
            "cannot pull image localhost:5000/a:1: not found".into(),
            t(0),
        );
        let records = BTreeMap::from([("a".to_owned(), record.clone())]);
        assert!(plan(&desired(&[&a]), &BTreeMap::new(), &records, t(9)).is_empty());
        assert_eq!(
            plan(&desired(&[&a]), &BTreeMap::new(), &records, t(10)).len(),
            1
        );
        let (status, description) = runtime_status(&a, None, &record);
        assert_eq!(status, RuntimeStatus::Backoff);
        assert!(description.contains("localhost:5000/a:1"));
        record.failed(&a.fingerprint(), "again".into(), t(10));
        let records = BTreeMap::from([("a".to_owned(), record.clone())]);
        assert!(plan(&desired(&[&a]), &BTreeMap::new(), &records, t(29)).is_empty());
        assert_eq!(
            plan(&desired(&[&a]), &BTreeMap::new(), &records, t(30)).len(),
            1
        );
        let mut fixed = a.clone();
        fixed.image = "localhost:5000/a:2".into();
        assert_eq!(
            plan(&desired(&[&fixed]), &BTreeMap::new(), &records, t(11)).len(),
            1
        );
        assert_eq!(
            runtime_status(&fixed, None, &record).0,
            RuntimeStatus::Unknown
        );
    }

    #[test]
    fn an_unhealthy_module_is_restarted_only_by_on_unhealthy_and_always() {
        for (policy, restarts) in [
            (RestartPolicy::OnFailure, false),
            (RestartPolicy::OnUnhealthy, true),
            (RestartPolicy::Always, true),
        ] {
            let a = spec("a", 0, policy);
            let sick = Observed {
                unhealthy: true,
                ..running(&a, 0)
            };
            let actions = plan(&desired(&[&a]), &observed(&[sick]), &BTreeMap::new(), t(5));
            assert_eq!(!actions.is_empty(), restarts, "{policy:?}");
        }
    }
}
