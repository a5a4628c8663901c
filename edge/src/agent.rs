//! The agent: connected to the hub as `$edgeAgent` (on `edgetwin-client`), it reads the
//! deployment from the twin's desired properties, and every few seconds (and at once on a new
//! deployment) observes its containers, plans ([`crate::plan`]), carries the actions out through
//! the engine, and reports what runs ([`crate::report`], only the diff). It answers edgeAgent's
//! direct methods `ping`, `RestartModule` and `GetModuleLogs`.
//!
//! When the device's gateway is the hub itself (config `hostname` = the hub's host name, as with
//! `edgetwin hub`, which plays edgeHub), no edgeHub container is run and `systemModules.edgeHub`
//! is reported from the connection to the hub; otherwise `systemModules.edgeHub` is run from the
//! deployment like any module.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use edgetwin_client::{ConnectionChange, Event, MethodCall, ModuleClient};
use edgetwin_wire::edge::{EdgeEnvironment, WorkloadUri, AUTH_SCHEME_SAS};
use edgetwin_wire::twin::Properties;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::config::EdgeConfig;
use crate::container::{self, Placement, WORKLOAD_SOCKET_IN_CONTAINER};
use crate::deployment::{self, Deployment, ImagePullPolicy, ModuleSpec};
use crate::docker::{Engine, EngineError};
use crate::identity::Identities;
use crate::plan::{self, Action, ModuleRecord, Observed};
use crate::report::{self, AgentReport, DesiredStatusReport};
use crate::workload::WorkloadSockets;

/// The workload API version modules are told to use (aziot-edged 1.4/1.5's).
const MODULE_WORKLOAD_API_VERSION: &str = "2019-01-30";

/// The agent's state between events.
pub struct Agent {
    /// config.toml.
    pub(crate) config: EdgeConfig,
    /// The container engine.
    pub(crate) engine: Engine,
    /// Module identities and their keys.
    pub(crate) identities: Arc<Identities>,
    /// The modules' workload sockets.
    pub(crate) sockets: WorkloadSockets,
    /// `$edgeAgent`'s connection.
    pub(crate) client: ModuleClient,
    /// When the runtime started.
    pub(crate) started: OffsetDateTime,
    /// The latest desired properties and their `$version`.
    desired: Option<(Properties, i64)>,
    /// The last deployment that could be read: what is applied.
    in_force: Option<Deployment>,
    /// `lastDesiredVersion`.
    last_version: Option<i64>,
    /// Whether the latest deployment could be read (else its error is the status).
    refused: Option<DesiredStatusReport>,
    /// What the agent remembers of each module.
    records: BTreeMap<String, ModuleRecord>,
    /// The module names whose identities were last reconciled.
    identity_set: Option<BTreeSet<String>>,
    /// The last reported document.
    reported: Map<String, Value>,
    /// Whether `$edgeAgent` is connected to the hub.
    connected: bool,
}

impl Agent {
    /// An agent over its parts.
    pub fn new(
        config: EdgeConfig,
        engine: Engine,
        identities: Arc<Identities>,
        sockets: WorkloadSockets,
        client: ModuleClient,
    ) -> Self {
        Agent {
            config,
            engine,
            identities,
            sockets,
            client,
            started: OffsetDateTime::now_utc(),
            desired: None,
            in_force: None,
            last_version: None,
            refused: None,
            records: BTreeMap::new(),
            identity_set: None,
            reported: Map::new(),
            connected: false,
        }
    }

    /// Whether the hub itself is the modules' gateway (edgetwin hub plays edgeHub).
    fn hub_is_gateway(&self) -> bool {
        self.config
            .hostname
            .eq_ignore_ascii_case(&self.identities.device().iothub_hostname)
    }

    /// Runs until `shutdown` resolves or the session ends: reconciles every `every` and at
    /// once on a new deployment.
    pub async fn run(mut self, every: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                event = self.client.next_event() => match event {
                    None => break,
                    Some(event) => self.on_event(event).await,
                },
                _ = tick.tick() => self.reconcile().await,
            }
        }
        // As edgeAgent does when it stops: 406, the runtime is not there to act.
        let patch = json!({"lastDesiredStatus": {"code": 406, "description": "the IoT Edge runtime is stopped"}});
        if let Some(patch) = patch.as_object() {
            let _ = self.client.report(patch.clone()).await;
        }
        self.client.shutdown(Duration::from_secs(5)).await;
        tracing::info!(
            "edge runtime stopped; modules keep running and are adopted at the next start"
        );
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Desired(update) => {
                tracing::info!(version = update.version, "deployment received");
                self.desired = Some((update.desired, update.version));
                self.reconcile().await;
            }
            Event::Method(call) => self.on_method(call).await,
            Event::Connection(ConnectionChange::Connected) => {
                self.connected = true;
                tracing::info!("connected to IoT Hub as $edgeAgent");
            }
            Event::Connection(ConnectionChange::Disconnected(reason)) => {
                self.connected = false;
                tracing::warn!(?reason, "disconnected from IoT Hub");
            }
            _ => {}
        }
    }

    /// Reads the latest deployment, applies the one in force and reports.
    async fn reconcile(&mut self) {
        if let Some((desired, version)) = &self.desired {
            if self.last_version != Some(*version) {
                self.last_version = Some(*version);
                match deployment::parse(desired) {
                    Ok(deployment) => {
                        self.refused = None;
                        self.in_force = Some(deployment);
                    }
                    Err(error) => {
                        tracing::error!(version, %error, "deployment refused; what runs is left as it is");
                        self.refused = Some(DesiredStatusReport {
                            code: error.code(),
                            description: error.to_string(),
                        });
                    }
                }
            }
        }
        let Some(deployment) = self.in_force.clone() else {
            self.report(&BTreeMap::new(), None).await;
            return;
        };
        let modules = self.deployed_modules(&deployment);
        let (observed, engine_error) = match self.apply(&modules).await {
            Ok(observed) => (observed, None),
            Err(error) => {
                tracing::error!(%error, "cannot read the containers");
                (BTreeMap::new(), Some(error))
            }
        };
        let failure = engine_error
            .map(|e| format!("container engine: {e}"))
            .or_else(|| {
                modules.values().find_map(|spec| {
                    let failure = self.records.get(&spec.name)?.failure.as_ref()?;
                    (failure.fingerprint == spec.fingerprint())
                        .then(|| format!("module {}: {}", spec.name, failure.description))
                })
            });
        let status = DesiredStatusReport {
            code: if failure.is_some() { 500 } else { 200 },
            description: failure.unwrap_or_default(),
        };
        self.report(&observed, Some((&deployment, status))).await;
    }

    /// The modules the agent runs: the deployment's, and edgeHub unless the hub is the gateway.
    fn deployed_modules(&self, deployment: &Deployment) -> BTreeMap<String, ModuleSpec> {
        let mut modules = deployment.modules.clone();
        if let Some(hub) = deployment
            .edge_hub
            .as_ref()
            .filter(|_| !self.hub_is_gateway())
        {
            modules.insert(hub.name.clone(), hub.clone());
        }
        modules
    }

    /// The agent's containers by module name.
    async fn observe(&self) -> Result<BTreeMap<String, Observed>, EngineError> {
        let mut observed = BTreeMap::new();
        for id in self.engine.owned_containers().await? {
            let inspect = match self.engine.inspect(&id).await {
                Ok(inspect) => inspect,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            if let (Some(name), Some(container)) = (
                container::module_name(&inspect),
                container::observed(&inspect),
            ) {
                observed.insert(name, container);
            }
        }
        Ok(observed)
    }

    /// One round: observe, plan, act; what the engine shows afterwards (looked at again only if
    /// something was done). Failures of one module are recorded on it; an engine that cannot be
    /// read is the error.
    async fn apply(
        &mut self,
        modules: &BTreeMap<String, ModuleSpec>,
    ) -> Result<BTreeMap<String, Observed>, EngineError> {
        let now = OffsetDateTime::now_utc();
        let observed = self.observe().await?;
        for (name, record) in &mut self.records {
            record.observe(observed.get(name), now);
        }
        // Adopted containers (after a restart of the runtime) need their identity and socket.
        for name in observed.keys().filter(|n| modules.contains_key(*n)) {
            if self.identities.is_known(&deployment::identity_of(name)) {
                continue;
            }
            if let Err(error) = self.prepare(name).await {
                tracing::warn!(module = %name, %error, "cannot serve the workload API for an adopted module");
            }
        }
        let actions = plan::plan(modules, &observed, &self.records, now);
        let acted = !actions.is_empty();
        for action in actions {
            self.act(action, modules, now).await;
        }
        self.reconcile_identities(modules).await;
        if acted {
            self.observe().await
        } else {
            Ok(observed)
        }
    }

    /// Makes the module's identity and workload socket (both named by its identity,
    /// [`deployment::identity_of`]); the generation id and the socket's directory.
    async fn prepare(&self, module: &str) -> Result<(String, std::path::PathBuf), String> {
        let identity_id = deployment::identity_of(module);
        let identity = self
            .identities
            .ensure(&identity_id)
            .await
            .map_err(|e| format!("cannot make its module identity: {e}"))?;
        let dir = self
            .sockets
            .ensure(&identity_id)
            .map_err(|e| format!("cannot make its workload socket: {e}"))?;
        Ok((identity.generation_id, dir))
    }

    async fn act(
        &mut self,
        action: Action,
        modules: &BTreeMap<String, ModuleSpec>,
        now: OffsetDateTime,
    ) {
        tracing::info!(?action, "acting");
        let (module, result) = match action {
            Action::Create {
                module,
                replace,
                start,
            } => {
                let result = match modules.get(&module) {
                    Some(spec) => self.create(spec, replace.as_deref(), start).await,
                    None => Ok(()),
                };
                if result.is_ok() {
                    let record = self.records.entry(module.clone()).or_default();
                    record.failure = None;
                    record.stopped_by_agent = false;
                }
                (module, result)
            }
            Action::Start {
                module,
                container_id,
            } => {
                let result = match self.prepare(&module).await {
                    Ok(_) => self
                        .engine
                        .start(&container_id)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                if result.is_ok() {
                    let record = self.records.entry(module.clone()).or_default();
                    record.stopped_by_agent = false;
                    record.failure = None;
                }
                (module, result.map_err(|e| format!("cannot start: {e}")))
            }
            Action::Restart {
                module,
                container_id,
            } => {
                let result = self
                    .engine
                    .restart(&container_id)
                    .await
                    .map_err(|e| format!("cannot restart: {e}"));
                if result.is_ok() {
                    self.records
                        .entry(module.clone())
                        .or_default()
                        .restarted(now);
                }
                (module, result)
            }
            Action::Stop {
                module,
                container_id,
            } => {
                let result = self
                    .engine
                    .stop(&container_id)
                    .await
                    .map_err(|e| format!("cannot stop: {e}"));
                self.records
                    .entry(module.clone())
                    .or_default()
                    .stopped_by_agent = true;
                (module, result)
            }
            Action::Remove {
                module,
                container_id,
            } => {
                let result = self
                    .engine
                    .remove(&container_id)
                    .await
                    .map_err(|e| format!("cannot remove: {e}"));
                if result.is_ok() {
                    self.sockets.remove(&deployment::identity_of(&module));
                    self.records.remove(&module);
                }
                (module, result)
            }
        };
        if let Err(description) = result {
            tracing::error!(module = %module, %description, "module action failed");
            if let Some(spec) = modules.get(&module) {
                self.records.entry(module.clone()).or_default().failed(
                    &spec.fingerprint(),
                    description,
                    now,
                );
            }
        }
    }

    /// Pulls (per policy), replaces the old container, creates and starts.
    async fn create(
        &self,
        spec: &ModuleSpec,
        replace: Option<&str>,
        start: bool,
    ) -> Result<(), String> {
        let (generation_id, dir) = self.prepare(&spec.name).await?;
        match spec.image_pull_policy {
            ImagePullPolicy::OnCreate => {
                let credentials = self
                    .in_force
                    .as_ref()
                    .and_then(|d| d.credentials_for(&spec.image));
                self.engine
                    .pull(&spec.image, credentials)
                    .await
                    .map_err(|e| format!("cannot pull image {}: {}", spec.image, cause(&e)))?;
            }
            ImagePullPolicy::Never => {
                let present = self
                    .engine
                    .has_image(&spec.image)
                    .await
                    .map_err(|e| e.to_string())?;
                if !present {
                    return Err(format!(
                        "image {} is not on the device and imagePullPolicy is never",
                        spec.image
                    ));
                }
            }
        }
        if let Some(old) = replace {
            self.engine.remove(old).await.map_err(|e| e.to_string())?;
        }
        let env = self.module_env(&deployment::identity_of(&spec.name), &generation_id);
        let dir = dir.display().to_string();
        let body = container::create_body(
            spec,
            &Placement {
                runtime_env: &env,
                workload_dir: &dir,
                network: &self.config.network,
            },
        );
        let id = match self.engine.create(&spec.name, &body).await {
            Ok(id) => id,
            // A container of that name the agent does not own (or left half-made): replace it.
            Err(EngineError::Api { status, .. }) if status == hyper::StatusCode::CONFLICT => {
                self.engine
                    .remove(&spec.name)
                    .await
                    .map_err(|e| e.to_string())?;
                self.engine
                    .create(&spec.name, &body)
                    .await
                    .map_err(|e| format!("cannot create: {e}"))?
            }
            Err(e) => return Err(format!("cannot create: {e}")),
        };
        if start {
            self.engine
                .start(&id)
                .await
                .map_err(|e| format!("cannot start: {e}"))?;
        }
        Ok(())
    }

    /// The `IOTEDGE_*` variables of a module, as aziot-edged sets them.
    fn module_env(&self, module: &str, generation_id: &str) -> Vec<(String, String)> {
        let env = EdgeEnvironment {
            iothub_host_name: self.identities.device().iothub_hostname.clone(),
            device_id: self.identities.device().device_id.clone(),
            module_id: module.to_owned(),
            gateway_host_name: self.config.hostname.clone(),
            generation_id: generation_id.to_owned(),
            workload_uri: WorkloadUri::Unix(WORKLOAD_SOCKET_IN_CONTAINER.into()),
            api_version: MODULE_WORKLOAD_API_VERSION.to_owned(),
            auth_scheme: AUTH_SCHEME_SAS.to_owned(),
        };
        env.to_vars()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    /// Deletes the identities of modules no longer deployed, when the set of modules changed.
    async fn reconcile_identities(&mut self, modules: &BTreeMap<String, ModuleSpec>) {
        let names: BTreeSet<String> = modules.keys().cloned().collect();
        if self.identity_set.as_ref() == Some(&names) {
            return;
        }
        let keep: Vec<&str> = names.iter().map(String::as_str).collect();
        match self.identities.remove_others(&keep).await {
            Ok(removed) => {
                for module in removed {
                    tracing::info!(module = %module, "module identity deleted");
                }
                self.identity_set = Some(names);
            }
            Err(error) => tracing::warn!(%error, "cannot reconcile module identities"),
        }
    }

    /// Sends the reported properties that changed.
    async fn report(
        &mut self,
        observed: &BTreeMap<String, Observed>,
        applied: Option<(&Deployment, DesiredStatusReport)>,
    ) {
        let empty = ModuleRecord::default();
        let (deployment, status, modules) = match applied {
            Some((deployment, status)) => {
                let entries: Map<String, Value> = deployment
                    .modules
                    .values()
                    .map(|spec| {
                        let record = self.records.get(&spec.name).unwrap_or(&empty);
                        (
                            spec.name.clone(),
                            report::module_entry(spec, observed.get(&spec.name), record),
                        )
                    })
                    .collect();
                (Some(deployment), status, entries)
            }
            None => (
                None,
                DesiredStatusReport {
                    code: 417,
                    description: "no deployment has been received".into(),
                },
                Map::new(),
            ),
        };
        let status = self.refused.clone().unwrap_or(status);
        let edge_hub = deployment.and_then(|d| d.edge_hub.as_ref()).map(|hub| {
            if self.hub_is_gateway() {
                report::hub_as_edge_hub(
                    Some(hub),
                    &self.identities.device().iothub_hostname,
                    self.connected,
                    self.started,
                )
            } else {
                let record = self.records.get(&hub.name).unwrap_or(&empty);
                report::module_entry(hub, observed.get(&hub.name), record)
            }
        });
        let agent_image = deployment
            .map(|d| d.edge_agent_image.clone())
            .or_else(|| self.config.agent_image.clone())
            .unwrap_or_default();
        let document = AgentReport {
            last_desired_version: self.last_version,
            last_desired_status: &status,
            deployment,
            agent_image: &agent_image,
            started: self.started,
            edge_hub,
            modules,
        }
        .document();
        let patch = report::diff(&self.reported, &document);
        if patch.is_empty() {
            return;
        }
        tracing::debug!(patch = %serde_json::Value::Object(patch.clone()), "reporting");
        let _ = self.client.report(patch).await;
        self.reported = document;
    }

    async fn on_method(&mut self, call: MethodCall) {
        let (status, body) = match call.name() {
            "ping" => (200, Value::Null),
            "RestartModule" => self.restart_module(call.payload()).await,
            "GetModuleLogs" => self.module_logs(call.payload()).await,
            other => (
                404,
                json!({ "message": format!("method {other} is not implemented by edgeAgent") }),
            ),
        };
        call.respond(status, &body).await;
    }

    async fn restart_module(&mut self, payload: &Value) -> (i32, Value) {
        let Some(id) = payload.get("id").and_then(Value::as_str) else {
            return (
                400,
                json!({ "message": "the payload has no \"id\" naming the module" }),
            );
        };
        let observed = match self.observe().await {
            Ok(observed) => observed,
            Err(e) => return (500, json!({ "message": e.to_string() })),
        };
        let Some(container) = observed.get(id) else {
            return (
                404,
                json!({ "message": format!("module {id} is not deployed on this device") }),
            );
        };
        match self.engine.restart(&container.container_id).await {
            Ok(()) => {
                self.records
                    .entry(id.to_owned())
                    .or_default()
                    .restarted(OffsetDateTime::now_utc());
                (200, Value::Null)
            }
            Err(e) => (500, json!({ "message": e.to_string() })),
        }
    }

    async fn module_logs(&self, payload: &Value) -> (i32, Value) {
        let Some(items) = payload.get("items").and_then(Value::as_array) else {
            return (
                400,
                json!({ "message": "the payload has no \"items\" list" }),
            );
        };
        if payload
            .get("encoding")
            .and_then(Value::as_str)
            .is_some_and(|e| e != "none")
        {
            return (
                400,
                json!({ "message": "only \"encoding\": \"none\" is supported" }),
            );
        }
        let observed = match self.observe().await {
            Ok(observed) => observed,
            Err(e) => return (500, json!({ "message": e.to_string() })),
        };
        let mut answers = Vec::new();
        for item in items {
            let Some(id) = item.get("id").and_then(Value::as_str) else {
                return (400, json!({ "message": "an item has no \"id\"" }));
            };
            let filter = item.get("filter");
            let tail = filter
                .and_then(|f| f.get("tail"))
                .and_then(Value::as_u64)
                .map(|t| t.min(u64::from(u32::MAX)) as u32);
            let since = match filter.and_then(|f| f.get("since")) {
                None | Some(Value::Null) => None,
                Some(value) => match since_unix(value, OffsetDateTime::now_utc()) {
                    Some(since) => Some(since),
                    None => {
                        return (
                            400,
                            json!({ "message": format!("filter.since of {id} is not a time, a unix time or a duration (30s, 10m, 1h, 2d)") }),
                        )
                    }
                },
            };
            let Some(container) = observed.get(id) else {
                return (
                    404,
                    json!({ "message": format!("module {id} is not deployed on this device") }),
                );
            };
            match self.engine.logs(&container.container_id, tail, since).await {
                Ok(text) => answers.push(json!({ "id": id, "payload": text })),
                Err(e) => return (500, json!({ "message": e.to_string() })),
            }
        }
        (200, Value::Array(answers))
    }
}

/// The innermost message of an engine error, for a status description.
fn cause(error: &EngineError) -> String {
    match error {
        EngineError::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// `filter.since` of `GetModuleLogs`: unix seconds, an RFC 3339 time, or a duration before now
/// (`30s`, `10m`, `1h`, `2d`), as edgeAgent takes it.
pub fn since_unix(value: &Value, now: OffsetDateTime) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let text = value.as_str()?.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    if let Ok(time) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Some(time.unix_timestamp());
    }
    let unit = text.chars().last()?;
    let amount: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let seconds = match unit {
        's' => amount,
        'm' => amount.checked_mul(60)?,
        'h' => amount.checked_mul(3600)?,
        'd' => amount.checked_mul(86_400)?,
        _ => return None,
    };
    Some(now.unix_timestamp() - seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_since_takes_unix_times_rfc3339_and_durations() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(since_unix(&json!(1_700_000_000), now), Some(1_700_000_000));
        assert_eq!(since_unix(&json!("1700000000"), now), Some(1_700_000_000));
        assert_eq!(
            since_unix(&json!("2026-12-06T23:00:00Z"), now),
            Some(1_796_598_000)
        );
        assert_eq!(since_unix(&json!("10m"), now), Some(1_800_000_000 - 600));
        assert_eq!(since_unix(&json!("2d"), now), Some(1_800_000_000 - 172_800));
        assert_eq!(since_unix(&json!("soon"), now), None);
        assert_eq!(since_unix(&json!({}), now), None);
    }
}
