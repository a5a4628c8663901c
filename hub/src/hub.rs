//! The hub's core, handed as `Arc<Hub>` to every door: the store (its writer and readers),
//! queries, live connections, methods in flight, the message log and the shared access policies.
//! Operations that span storage and live connections (twin changes that notify devices, method
//! calls, service authentication) live here. Depends on the domain modules below it (store,
//! writer, twins, deployments, registry, live, …); never on a door (mqtt, https, rest, console,
//! workload).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgetwin_wire::dps::DpsError;
use edgetwin_wire::query::Query;
use edgetwin_wire::rest::{CloudToDeviceMethod, CloudToDeviceMethodResult, ErrorCode, Permission};
use edgetwin_wire::sas::{SasScope, SasToken};
use edgetwin_wire::topic::{self, Feature};
use edgetwin_wire::Secret;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::events::{self, Event};
use crate::ids;
use crate::live::{LiveConnections, Outgoing, Undelivered};
use crate::messages::{Message, MessageFilter};
use crate::methods::{MethodResponse, PendingMethods};
use crate::queries::Queries;
use crate::store::{
    off_the_async_worker, IdentityKey, PolicyRecord, Readers, Store, StoreError, Transaction,
};
use crate::twins::{self, DesiredChange};
use crate::writer::{Committing, Effect, Writer, Written};

/// Most jobs active at once unless configured: IoT Hub S1's (and Free's). IoT Hub's "quotas and
/// throttling" page, Other limits, Jobs: "Maximum concurrent jobs is 1 (for Free and S1), 5 (for
/// S2), and 10 (for S3). However, the max concurrent device import/export jobs is 1 for all
/// tiers." (import and export jobs are not served here: `rest/jobs.rs`). The REST door refuses
/// one more (`jobs::admit`).
pub const DEFAULT_MAX_ACTIVE_JOBS: usize = 1;

/// Largest direct-method request payload IoT Hub accepts (128 KB of JSON).
pub const MAX_METHOD_PAYLOAD: usize = 128 * 1024;

/// Longest direct-method timeout IoT Hub accepts, in seconds.
pub const MAX_METHOD_TIMEOUT_SECS: u64 = 300;

/// Read-only connections for CONNECT authentication and the other short reads (queries have
/// their own, [`Queries`]): reads from concurrent connections rarely wait for one another.
const READERS: usize = 4;

/// The hub's database, opened and checked, before the hub runs on it: its read-only connections
/// can be handed to what serves beside the hub (the workload sockets) first.
pub struct Database {
    /// The database file.
    path: PathBuf,
    /// The write connection, which the writer takes.
    store: Store,
    /// Read-only connections for reads, which never wait behind a write and its fsync.
    readers: Arc<Readers>,
    /// Shared access policies.
    policies: Vec<PolicyRecord>,
    /// The provisioning service's id scope and policy.
    dps: crate::dps::Service,
}

impl Database {
    /// Opens the store in `data_dir`, creating the default shared access policies on first start
    /// if `fresh_allowed` (otherwise a database without policies is refused: it was lost), and
    /// finishes the deployment evaluations the last run left pending.
    pub fn open(data_dir: &Path, fresh_allowed: bool) -> Result<Self, StoreError> {
        let path = data_dir.join("hub.db");
        let mut store = Store::open(&path)?;
        let policies = store.transaction(|tx| {
            let mut policies = tx.policies()?;
            policies.retain(|p| !crate::dps::is_dps_policy(p));
            if policies.is_empty() && !fresh_allowed {
                return Err(StoreError::Lost { path: path.clone() });
            }
            if policies.is_empty() {
                for (name, permissions) in edgetwin_wire::rest::default_policies() {
                    let policy = PolicyRecord {
                        name: name.to_owned(),
                        primary_key: ids::new_key(),
                        secondary_key: ids::new_key(),
                        permissions: permissions.iter().map(|p| p.name().to_owned()).collect(),
                    };
                    tx.put_policy(&policy)?;
                    policies.push(policy);
                }
            }
            Ok::<_, StoreError>(policies)
        })?;
        let dps = store.transaction(crate::dps::Service::open)?;
        if store.transaction(|tx| tx.counter(crate::store::EVALUATIONS_PENDING))? > 0 {
            // a configuration change whose evaluation the last run did not finish, or a
            // database whose targeting rows are new
            if let Err(error) = store.transaction(crate::deployments::evaluate_all) {
                tracing::error!(%error, "evaluating deployments at start failed");
            }
        }
        Ok(Self {
            readers: Arc::new(Readers::open(&path, READERS)?),
            path,
            store,
            policies,
            dps,
        })
    }

    /// Links the hubs of `specs` to the provisioning service beside this one, `own_host`
    /// (`edgetwin hub --dps-linked-hub`).
    pub fn link_dps_hubs(
        &mut self,
        own_host: &str,
        specs: Vec<edgetwin_wire::dps::LinkedHubSpec>,
    ) -> Result<(), crate::dps::LinkError> {
        self.dps.link(own_host, specs)
    }

    /// The read-only connections, shared with the hub that will run on this database.
    pub fn readers(&self) -> Arc<Readers> {
        self.readers.clone()
    }
}

/// The hub's core state; its doors reach it through the methods below.
pub struct Hub {
    /// IoT Hub host name: in connection strings, SAS resources and MQTT usernames.
    host_name: String,
    /// The one writer of the store, which also applies the effects of each write in commit
    /// order.
    writer: Writer,
    /// Read-only connections for reads, which never wait behind a write and its fsync.
    readers: Arc<Readers>,
    /// Queries' own read connections, queue and continuation key.
    queries: Queries,
    /// Live MQTT connections.
    live: Arc<LiveConnections>,
    /// Direct methods waiting for a response.
    methods: PendingMethods,
    /// Shared access policies (loaded at start).
    policies: Vec<PolicyRecord>,
    /// The local Device Provisioning Service (id scope, policy, operations).
    dps: crate::dps::Service,
    /// The last sequence number stored in each Event Hub-compatible partition and its newest
    /// events, for its readers to wait on and take; set after each commit.
    event_heads: Arc<Vec<watch::Sender<events::Recent>>>,
    /// The last place given in the message log (0: none), for the console's streams to wait
    /// on; set after each commit.
    logged_head: Arc<watch::Sender<i64>>,
    /// Wakes the job runner when a job is created or cancelled.
    jobs_changed: tokio::sync::Notify,
    /// Most jobs active at once (`--max-active-jobs`).
    max_active_jobs: usize,
}

impl Hub {
    /// Runs the hub named `host_name` on `database`: starts its writer. The effects of writes on
    /// the hub's own state (desired patches, disconnects) it applies itself; the others (on
    /// workload sockets, which are served beside the hub) go to `beside`, in the same order, on
    /// the writer's thread.
    pub fn start(
        database: Database,
        host_name: String,
        beside: impl Fn(&Effect) + Send + 'static,
    ) -> Result<Self, StoreError> {
        let Database {
            path,
            store,
            readers,
            policies,
            mut dps,
        } = database;
        dps.link_own(&host_name);
        let live = Arc::new(LiveConnections::default());
        let event_heads = Arc::new(
            (0..events::PARTITIONS)
                .map(|partition| {
                    let last = readers.read(|tx| tx.partition_info(partition))?;
                    Ok(watch::Sender::new(events::Recent::new(last.last_sequence)))
                })
                .collect::<Result<Vec<_>, StoreError>>()?,
        );
        let logged_head = Arc::new(watch::Sender::new(readers.read(|tx| tx.last_logged())?));
        let hook = {
            let live = live.clone();
            let heads = event_heads.clone();
            let logged_head = logged_head.clone();
            move |effect: &Effect| match effect {
                Effect::Event(event) => {
                    let partition = usize::try_from(event.partition).ok();
                    if let Some(head) = partition.and_then(|p| heads.get(p)) {
                        // the readers are woken once the whole batch is there (`flush`)
                        head.send_if_modified(|recent| {
                            recent.push(event.clone());
                            false
                        });
                    }
                    logged_head.send_replace(event.logged);
                }
                Effect::Pruned { partition, begin } => {
                    let partition = usize::try_from(*partition).ok();
                    if let Some(head) = partition.and_then(|p| heads.get(p)) {
                        // nothing new to read: the readers are not woken
                        head.send_if_modified(|recent| {
                            recent.forget_before(*begin);
                            false
                        });
                    }
                }
                Effect::Desired(change) => notify_desired(&live, change),
                Effect::Kick { client_id } => live.kick(client_id),
                Effect::KickDevice { device_id } => live.kick_device(device_id),
                Effect::CloudToDevice { device_id } => live.notify_cloud_to_device(device_id),
                Effect::OpenWorkloadSocket { .. } | Effect::CloseWorkloadSocket { .. } => {
                    beside(effect)
                }
            }
        };
        let flush = {
            let heads = event_heads.clone();
            move || {
                for head in heads.iter() {
                    head.send_if_modified(events::Recent::take_news);
                }
            }
        };
        Ok(Self {
            readers,
            queries: Queries::open(&path)?,
            writer: Writer::start(store, hook, flush).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?,
            host_name,
            live,
            methods: PendingMethods::default(),
            policies,
            dps,
            event_heads,
            logged_head,
            jobs_changed: tokio::sync::Notify::new(),
            max_active_jobs: DEFAULT_MAX_ACTIVE_JOBS,
        })
    }

    /// The hub, holding at most `max_active_jobs` jobs active at once (IoT Hub S1's 1 unless
    /// set).
    pub fn with_max_active_jobs(mut self, max_active_jobs: usize) -> Self {
        self.max_active_jobs = max_active_jobs;
        self
    }

    /// Most jobs active (queued, scheduled or running) at once; one more is refused.
    pub fn max_active_jobs(&self) -> usize {
        self.max_active_jobs
    }

    /// IoT Hub host name: in connection strings, SAS resources and MQTT usernames.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The shared access policies.
    pub fn policies(&self) -> &[PolicyRecord] {
        &self.policies
    }

    /// The local Device Provisioning Service.
    pub fn dps(&self) -> &crate::dps::Service {
        &self.dps
    }

    /// The live MQTT connections: who is connected, and sending to them.
    pub fn live(&self) -> &LiveConnections {
        &self.live
    }

    /// Direct methods waiting for a device's response.
    pub fn methods(&self) -> &PendingMethods {
        &self.methods
    }

    /// One page of the message log: the events the Event Hub-compatible endpoint keeps that
    /// `filter` takes ([`crate::messages::page`]).
    pub fn messages(&self, filter: &MessageFilter) -> Result<Vec<Message>, ApiError> {
        self.read(|tx| Ok(crate::messages::page(tx, filter)?))
    }

    /// The last place given in the message log (0: none), changing after each commit of an
    /// event.
    pub fn logged_head(&self) -> watch::Receiver<i64> {
        self.logged_head.subscribe()
    }

    /// Notified when a scheduled job is created or cancelled (the job runner waits on it).
    pub fn jobs_changed(&self) -> &tokio::sync::Notify {
        &self.jobs_changed
    }

    /// One page of `query` (whose text is `text`), at most `max_item_count` rows after the
    /// `continuation` token, with the next page's token if more rows follow
    /// ([`Queries::page`]).
    pub async fn query(
        &self,
        text: &str,
        query: &Query,
        continuation: Option<&str>,
        max_item_count: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ApiError> {
        self.queries
            .page(&self.live, text, query, continuation, max_item_count)
            .await
    }

    /// How many rows `query` (whose text is `text`) returns over its whole FROM collection
    /// (custom metrics): counted again only once the store changed, or after a minute.
    pub async fn count_rows(&self, text: &str, query: &Query) -> Result<usize, ApiError> {
        let commits = self.writer.commits();
        self.queries
            .count_rows(&self.live, text, query, commits)
            .await
    }

    /// Runs `f` in one read transaction on a read-only connection: it never waits for the
    /// writer, and sees every change committed before it started.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        off_the_async_worker(|| self.readers.read(f))
    }

    /// Runs `f` in a transaction of the writer and waits for its commit.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.writer.write(move |tx| Ok((f(tx)?, Vec::new()))).await
    }

    /// Runs `f` in a transaction of the writer and waits for its commit, after which (in commit
    /// order with every other change, before the answer) the [`Effect`]s it returns happen:
    /// subscribed clients are told about desired-property changes, clients are disconnected,
    /// workload sockets open or close.
    pub async fn write_with_effects<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Written<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.writer.write(f).await
    }

    /// Runs `f`, a Device Provisioning Service change, in a transaction of the writer (under a
    /// savepoint, so a refused change leaves nothing behind) and waits for its commit.
    pub async fn write_dps<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DpsError> + Send + 'static,
    ) -> Result<T, DpsError> {
        let mut f = Some(f);
        let results = self
            .write(move |tx| {
                Ok(tx.each([()], |tx, ()| match f.take() {
                    Some(f) => f(tx),
                    None => Err(DpsError::new(500001, "DPS change run twice")),
                })?)
            })
            .await?;
        results
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(DpsError::new(500001, "DPS change did not run")))
    }

    /// Checks a registering device's SAS token ([`crate::dps::attest`]).
    pub fn dps_attest(
        &self,
        id_scope: &str,
        registration_id: &str,
        token: &SasToken,
    ) -> Result<crate::dps::Attested, DpsError> {
        self.read(|tx| {
            Ok(crate::dps::attest(
                tx,
                &self.dps,
                id_scope,
                registration_id,
                token,
                ids::now_unix(),
            ))
        })?
    }

    /// Checks a registering device's client certificates ([`crate::dps_x509::attest`]).
    pub fn dps_attest_x509(
        &self,
        id_scope: &str,
        registration_id: &str,
        chain: &crate::x509::ClientChain,
    ) -> Result<crate::dps::Attested, DpsError> {
        self.read(|tx| {
            Ok(crate::dps_x509::attest(
                tx,
                self.dps.id_scope(),
                id_scope,
                registration_id,
                chain,
                i64::try_from(ids::now_unix()).unwrap_or(i64::MAX),
            ))
        })?
    }

    /// Queues a reported-properties patch from `key`'s device or module for the next group
    /// commit (waiting only for room in the queue) and returns the handle to its new
    /// `reported.$version`, so that a connection can keep reading meanwhile. A patch from
    /// `$edgeAgent` also records what it reports of its deployment (the reported counts).
    pub async fn submit_reported(
        &self,
        key: IdentityKey,
        body: Bytes,
    ) -> Result<Committing<i64>, ApiError> {
        self.writer
            .submit(move |tx| {
                let version = twins::patch_reported(tx, &key, &body)?;
                if key.module_id.as_deref() == Some(crate::registry::EDGE_AGENT) {
                    crate::deployments::record_agent_report(tx, &key.device_id)?;
                }
                Ok((version, Vec::new()))
            })
            .await
    }

    /// Takes a device-to-cloud message (telemetry, or a module's output) from `key`: if it goes
    /// `upstream` to IoT Hub, queues it for its Event Hub-compatible partition
    /// ([`Self::submit_event`]), which the message log reads too; the handle resolves once it is
    /// stored. `None`: not upstream, nothing to store or wait for. `auth`: how the sender
    /// authenticated, kept with the event for its `iothub-connection-auth-method`.
    pub async fn accept_telemetry(
        &self,
        key: &IdentityKey,
        properties: Vec<(String, Option<String>)>,
        payload: &[u8],
        upstream: bool,
        auth: events::AuthMethod,
    ) -> Result<Option<Committing<i64>>, ApiError> {
        if !upstream {
            return Ok(None);
        }
        let event = Event {
            partition: events::partition_of(&key.device_id),
            sequence: 0,
            offset: 0,
            enqueued_ms: ids::now_unix_ms(),
            device_id: key.device_id.clone(),
            module_id: key.module_id.clone(),
            properties: events::stamped(properties, auth),
            body: payload.to_vec(),
            logged: 0,
        };
        self.submit_event(event).await.map(Some)
    }

    /// Queues a device-to-cloud message for its Event Hub-compatible partition (waiting only for
    /// room in the queue) and returns the handle to its sequence number, known once committed;
    /// the partition's readers are told after the commit.
    pub async fn submit_event(&self, event: Event) -> Result<Committing<i64>, ApiError> {
        self.writer
            .submit(move |tx| {
                let stored = tx.append_event(event)?;
                Ok((stored.sequence, vec![Effect::Event(Arc::new(stored))]))
            })
            .await
    }

    /// Prunes at most `limit` of the oldest events of `partition` that `retention` does not
    /// keep now (the store's `prune_events`), and has its readers forget them; how many went.
    pub async fn prune_events(
        &self,
        partition: u32,
        retention: events::Retention,
        limit: usize,
    ) -> Result<usize, ApiError> {
        self.writer
            .write(move |tx| {
                let pruned = tx.prune_events(partition, &retention, ids::now_unix_ms(), limit)?;
                let mut effects = Vec::new();
                if pruned > 0 {
                    let begin = tx.partition_info(partition)?.begin_sequence;
                    effects.push(Effect::Pruned { partition, begin });
                }
                Ok((pruned, effects))
            })
            .await
    }

    /// The last sequence number stored in `partition` (-1: none) and its newest events,
    /// changing after each commit of an event there; `None` for a partition the endpoint does
    /// not have.
    pub fn event_head(&self, partition: u32) -> Option<watch::Receiver<events::Recent>> {
        let head = self.event_heads.get(usize::try_from(partition).ok()?)?;
        Some(head.subscribe())
    }

    /// Stops taking writes and waits until every queued one is committed and answered.
    pub async fn drain_writes(&self) {
        self.writer.drain().await;
    }

    /// Who a service token authenticates, if its signature, expiry and host are right and its
    /// `sr` (a URI prefix) covers the request's path `segments`: a shared access policy (`skn`),
    /// or, without `skn`, an IoT Edge device signing with its own key ([`Caller::EdgeDevice`]).
    pub fn authenticate_service(
        &self,
        authorization: Option<&str>,
        segments: &[String],
    ) -> Result<Caller, ApiError> {
        self.authenticate_token(&parse_authorization(authorization)?, segments, false)
    }

    /// Who a parsed service token authenticates for the path `segments` (see
    /// [`Self::authenticate_service`]); the AMQP door's CBS hands its tokens here, with the
    /// `sr` scheme (`sb://`, `amqps://`) taken off, and `event_hubs_signing` to take policy
    /// signatures made as Event Hubs clients make them too ([`SasToken::verify_as_event_hubs`]).
    pub fn authenticate_token(
        &self,
        token: &SasToken,
        segments: &[String],
        event_hubs_signing: bool,
    ) -> Result<Caller, ApiError> {
        let scope = self.checked_scope(token, segments)?;
        let Some(name) = token.key_name.as_deref() else {
            return self.authenticate_edge_device(token, &scope, segments);
        };
        let policy = self
            .policies
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| unauthorized("unknown policy"))?;
        verified_policy(token, policy, event_hubs_signing)
    }

    /// Who a token authenticates on the Device Provisioning Service's service API: the
    /// `provisioningserviceowner` policy of a DPS connection string, checked as
    /// [`Hub::authenticate_service`] checks IoT Hub's policies.
    pub fn authenticate_dps_service(
        &self,
        authorization: Option<&str>,
        segments: &[String],
    ) -> Result<Caller, ApiError> {
        let token = parse_authorization(authorization)?;
        self.checked_scope(&token, segments)?;
        let policy = self.dps.policy();
        if token.key_name.as_deref() != Some(policy.name.as_str()) {
            return Err(unauthorized("not the provisioning service's policy"));
        }
        verified_policy(&token, policy, false)
    }

    /// The scope of a service token whose host is this hub's, whose `sr` covers the path
    /// `segments` and which has not expired (its signature not checked yet).
    fn checked_scope(&self, token: &SasToken, segments: &[String]) -> Result<SasScope, ApiError> {
        let scope = token.scope().map_err(|_| unauthorized("malformed sr"))?;
        if !host_matches(scope.host(), &self.host_name) {
            return Err(unauthorized("sr names another hub"));
        }
        if !resource_covers(&token.resource, segments) {
            return Err(unauthorized("sr does not cover the requested path"));
        }
        if token.is_expired(ids::now_unix(), 0) {
            return Err(unauthorized("token expired"));
        }
        Ok(scope)
    }

    /// A token without `skn` whose `sr` is `{host}/devices/{id}`, signed with the key of that
    /// enabled IoT Edge device, as aziot-identityd signs its module requests
    /// (Azure/iot-identity-service `aziot-cloud-client-async` `connector.rs`: audience
    /// `{hub}/devices/{device}` lower-cased, no `skn`). The device is the one the path names (its
    /// `sr` covers the path, ignoring case); a module's token is refused.
    fn authenticate_edge_device(
        &self,
        token: &SasToken,
        scope: &SasScope,
        segments: &[String],
    ) -> Result<Caller, ApiError> {
        if !matches!(scope, SasScope::Device { .. }) {
            return Err(unauthorized(
                "a token without skn must be a device's (sr {host}/devices/{id})",
            ));
        }
        let device_id = segments
            .get(1)
            .ok_or_else(|| unauthorized("a device token names no device of the path"))?;
        let device_facing = is_device_facing(segments);
        let keys = self.read(|tx| {
            let edge = tx
                .device(device_id)?
                .is_some_and(|d| d.capabilities.is_some_and(|c| c.iot_edge));
            if !edge && !device_facing {
                return Ok(None);
            }
            crate::registry::connect_keys(tx, &IdentityKey::device(device_id))
        })?;
        let keys = keys.ok_or_else(|| {
            unauthorized(
                "a device token is accepted from an enabled IoT Edge device with SAS keys only",
            )
        })?;
        if !keys.iter().any(|key| token.verify(key)) {
            return Err(unauthorized("bad signature"));
        }
        Ok(if device_facing {
            Caller::Device(device_id.clone())
        } else {
            Caller::EdgeDevice(device_id.clone())
        })
    }

    /// Calls a direct method on a connected, subscribed client and waits for its answer.
    pub async fn invoke_method(
        &self,
        key: &IdentityKey,
        request: CloudToDeviceMethod,
    ) -> Result<CloudToDeviceMethodResult, ApiError> {
        if !topic::is_valid_method_name(&request.method_name) {
            return Err(ApiError::invalid(format!(
                "methodName '{}' is not a valid method name",
                request.method_name
            )));
        }
        let timeout = request.response_timeout_in_seconds.unwrap_or(30);
        if !(5..=MAX_METHOD_TIMEOUT_SECS).contains(&timeout) {
            return Err(ApiError::invalid(format!(
                "responseTimeoutInSeconds {timeout} must be between 5 and {MAX_METHOD_TIMEOUT_SECS}"
            )));
        }
        let client_id = key.client_id();
        // IoT Hub hands the device the payload's JSON text, and an empty body when the payload is
        // null or missing: the C SDK special-cases that size 0 ("A NULL payload was sent from the
        // service", Azure/azure-iot-sdk-c#2097 for #1924) and the Python device SDK failed on it
        // with "Expecting value: line 1 column 1" (Azure/azure-iot-sdk-python#761, #1081).
        let payload = match request.payload {
            None | Some(serde_json::Value::Null) => Bytes::new(),
            Some(json) => Bytes::from(json.to_string()),
        };
        if payload.len() > MAX_METHOD_PAYLOAD {
            return Err(ApiError::invalid(format!(
                "the payload of '{}' is {} bytes; IoT Hub allows {MAX_METHOD_PAYLOAD}",
                request.method_name,
                payload.len()
            )));
        }
        let (rid, response) = self.methods.start(&client_id);
        let message = Outgoing {
            topic: topic::method_request_topic(&request.method_name, &rid),
            payload,
            at_least_once: false,
        };
        if let Err(why) = self.live.send(&client_id, Some(Feature::Methods), message) {
            self.methods.abandon(&client_id, &rid);
            let text = match why {
                Undelivered::NotListening => {
                    "the device is not online or does not listen for methods"
                }
                Undelivered::Overloaded => "the device is not keeping up and was disconnected",
            };
            return Err(ApiError::new(ErrorCode::DeviceNotOnline, text));
        }
        match tokio::time::timeout(Duration::from_secs(timeout), response).await {
            Ok(Ok(MethodResponse { status, payload })) => Ok(CloudToDeviceMethodResult {
                status,
                payload: if payload.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&payload).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&payload).into())
                    })
                },
            }),
            Ok(Err(_)) | Err(_) => {
                self.methods.abandon(&client_id, &rid);
                Err(ApiError::new(
                    ErrorCode::GatewayTimeout,
                    format!(
                        "the device did not answer '{}' within {timeout} s",
                        request.method_name
                    ),
                ))
            }
        }
    }
}

/// A service `PATCH` (merge) or `PUT` (replace) of the twin `key` in `tx`, then the deployments
/// and configurations that now target its device or module: the desired changes to tell the
/// clients about. The one write path of `/twins/{id}` and of twin jobs.
pub fn update_twin(
    tx: &Transaction<'_>,
    key: &IdentityKey,
    input: edgetwin_wire::rest::Twin,
    mode: twins::UpdateMode,
    if_match: Option<&str>,
) -> Result<Vec<DesiredChange>, ApiError> {
    let change = twins::update_from_service(tx, key, input, mode, if_match)?;
    let mut changes: Vec<_> = change.into_iter().collect();
    if key.module_id.is_none() {
        changes.extend(crate::deployments::evaluate_devices(
            tx,
            [key.device_id.as_str()],
        )?);
    } else {
        let deployments = crate::deployments::Deployments::load(tx)?;
        changes.extend(deployments.evaluate_module_configurations(tx, &key.device_id)?);
    }
    Ok(changes)
}

/// Who a service request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A shared access policy (the token's `skn`), with its permissions.
    Policy(PolicyRecord),
    /// An IoT Edge device with its own token, as aziot-identityd manages the device's module
    /// identities (`PUT`, `GET`, `DELETE /devices/{id}/modules[/{m}]`, api-version
    /// 2017-11-08-preview, Azure/iot-identity-service `aziot-cloud-client-async` `hub/mod.rs`):
    /// it may manage its own modules and nothing else.
    EdgeDevice(String),
    /// A device with its own token on its device-facing HTTPS endpoints
    /// (`/devices/{id}/messages/events`, `…/deviceBound`), any enabled device with SAS keys.
    Device(String),
}

/// Whether a path is a device-facing HTTPS endpoint a device's own token may call:
/// `/devices/{id}/messages/events` (device-to-cloud messages) and
/// `/devices/{id}/messages/deviceBound[/{lockToken}[/abandon]]` (cloud-to-device messages; any
/// case, as Node `azure-iot-device-http` writes `devicebound`).
pub fn is_device_facing(segments: &[String]) -> bool {
    match segments {
        [devices, _, messages, queue, rest @ ..]
            if devices == "devices" && messages == "messages" =>
        {
            (queue == "events" && rest.is_empty())
                || (queue.eq_ignore_ascii_case("deviceBound")
                    && match rest {
                        [] | [_] => true,
                        [_, abandon] => abandon == "abandon",
                        _ => false,
                    })
        }
        _ => false,
    }
}

/// The `Authorization` header's SAS token.
fn parse_authorization(authorization: Option<&str>) -> Result<SasToken, ApiError> {
    SasToken::parse(authorization.ok_or_else(|| unauthorized("no Authorization header"))?)
        .map_err(|_| unauthorized("malformed SharedAccessSignature"))
}

/// The policy `policy` as the caller, if one of its keys signed `token` (or, with
/// `event_hubs_signing`, signed it as Event Hubs clients sign).
fn verified_policy(
    token: &SasToken,
    policy: &PolicyRecord,
    event_hubs_signing: bool,
) -> Result<Caller, ApiError> {
    let signed_with =
        |key: &Secret| token.verify(key) || (event_hubs_signing && token.verify_as_event_hubs(key));
    if !(signed_with(&policy.primary_key) || signed_with(&policy.secondary_key)) {
        return Err(unauthorized("bad signature"));
    }
    Ok(Caller::Policy(policy.clone()))
}

/// IoT Hub's refusal of a token (the reason goes to the log only).
fn unauthorized(why: &str) -> ApiError {
    tracing::info!(reason = why, "service request refused");
    ApiError::new(ErrorCode::IotHubUnauthorizedAccess, "Unauthorized")
}

/// Tells the client whose twin changed about a committed desired change (run by the writer).
fn notify_desired(live: &LiveConnections, change: &DesiredChange) {
    let message = Outgoing {
        topic: topic::desired_patch_topic(change.version),
        payload: change.notification.clone(),
        at_least_once: true,
    };
    let client_id = change.key.client_id();
    if live
        .send(&client_id, Some(Feature::DesiredPatches), message)
        .is_ok()
    {
        tracing::debug!(client_id, version = change.version, "desired patch sent");
    }
}

/// Whether a permission list holds `permission`.
pub fn grants(policy: &PolicyRecord, permission: Permission) -> bool {
    policy.permissions.iter().any(|p| p == permission.name())
}

/// Whether a token's decoded `sr` (`host[/segment...]`) is a prefix, segment by segment and
/// ignoring case, of a request's path `segments`: `{hub}/devices/d1` covers `/devices/d1/modules/m`
/// but not `/devices/d10` or `/twins/d1`.
pub fn resource_covers(resource: &str, segments: &[String]) -> bool {
    let scope: Vec<&str> = resource
        .split('/')
        .skip(1)
        .filter(|s| !s.is_empty())
        .collect();
    scope.len() <= segments.len()
        && scope
            .iter()
            .zip(segments)
            .all(|(want, got)| want.eq_ignore_ascii_case(got))
}

/// Whether a host from a token (maybe with `:port`) names this hub (case-insensitive).
pub fn host_matches(token_host: &str, hub_host: &str) -> bool {
    let strip = |h: &str| {
        h.rsplit_once(':')
            .map_or(h, |(host, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    host
                } else {
                    h
                }
            })
            .to_ascii_lowercase()
    };
    strip(token_host) == strip(hub_host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployments::tests::{counts, ring_a};
    use crate::store::EVALUATIONS_PENDING;
    use serde_json::json;

    #[test]
    fn an_sr_path_limits_a_service_token_to_the_paths_under_it() {
        let path = |p: &str| p.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert!(resource_covers("h", &path("devices/d2")));
        assert!(resource_covers("h/", &path("faults")));
        assert!(resource_covers("h/devices/d1", &path("devices/d1")));
        assert!(resource_covers(
            "h/devices/D1",
            &path("devices/d1/modules/m")
        ));
        assert!(!resource_covers("h/devices/d1", &path("devices/d10")));
        assert!(!resource_covers("h/devices/d1", &path("devices/d2")));
        assert!(!resource_covers("h/devices/d1", &path("devices")));
        assert!(!resource_covers("h/devices/d1", &path("edgetwin/faults")));
    }

    #[test]
    fn token_hosts_match_with_or_without_port_and_case() {
        assert!(host_matches("LocalHost:8443", "localhost"));
        assert!(host_matches("localhost", "localhost"));
        assert!(!host_matches("other", "localhost"));
    }

    #[test]
    fn an_evaluation_the_last_run_did_not_finish_is_finished_at_the_next_start_and_only_then() {
        for pending in [0, 1] {
            let dir = std::env::temp_dir().join(format!(
                "edgetwin-unfinished-{pending}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut store = Store::open(&dir.join("hub.db")).unwrap();
            store
                .transaction(|tx| {
                    ring_a(tx, 3)?;
                    // as a database that was evaluated, then saw `pending` unfinished changes
                    tx.clear_counter(EVALUATIONS_PENDING)?;
                    Ok::<_, ApiError>(tx.add_to_counter(EVALUATIONS_PENDING, pending)?)
                })
                .unwrap();
            drop(store);
            let database = Database::open(&dir, true).unwrap();
            let hub = Hub::start(database, "localhost".into(), |_| {}).unwrap();
            let (evaluated, left) = hub
                .read(|tx| {
                    let evaluated = tx.configuration("ring-a")?.unwrap().system_metrics;
                    Ok((evaluated.is_some(), tx.counter(EVALUATIONS_PENDING)?))
                })
                .unwrap();
            assert_eq!((evaluated, left), (pending == 1, 0), "pending {pending}");
            if pending == 1 {
                assert_eq!(hub.read(counts).unwrap(), (json!(3), json!(3)));
            }
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[tokio::test]
    async fn committed_events_are_handed_to_readers_and_forgotten_once_pruned() {
        let dir = std::env::temp_dir().join(format!("edgetwin-recent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let hub = Hub::start(
            Database::open(&dir, true).unwrap(),
            "localhost".into(),
            |_| {},
        )
        .unwrap();
        let partition = events::partition_of("d1");
        let head = hub.event_head(partition).unwrap();
        for n in 0..10u8 {
            let event = Event {
                partition,
                sequence: 0,
                offset: 0,
                enqueued_ms: ids::now_unix_ms(),
                device_id: "d1".into(),
                module_id: None,
                properties: Vec::new(),
                body: vec![n; 100],
                logged: 0,
            };
            hub.submit_event(event)
                .await
                .unwrap()
                .outcome()
                .await
                .unwrap();
        }
        let kept = |after| {
            head.borrow().after(after, 100).map(|events| {
                events
                    .iter()
                    .map(|e| (e.sequence, e.body[0]))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(kept(-1), Some((0..10).map(|n| (n, n as u8)).collect()));
        // 4 * 450 bytes for the whole endpoint: 450 for this partition, the last 4 events
        let retention = events::Retention::new(1, 4 * 450);
        assert_eq!(
            hub.prune_events(partition, retention, 100).await.unwrap(),
            6
        );
        assert_eq!(
            kept(-1),
            None,
            "the pruned events are read from the store, which skips them"
        );
        assert_eq!(kept(5), Some((6..10).map(|n| (n, n as u8)).collect()));
        hub.drain_writes().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
