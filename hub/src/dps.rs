//! The local Device Provisioning Service's domain: enrollments and enrollment groups (stored as
//! the DPS REST models of `edgetwin_wire::dps`), attestation of a registering device by its SAS
//! token, and the steps of registration (`crate::provisioning` runs them): what it starts from
//! ([`Plan`]), the identity and twin written on the assigned hub (this one, or a linked hub
//! through its service REST API), the custom allocation webhook's call, and the registration
//! state stored. The hubs are the hub itself and those `--dps-linked-hub` links.
//!
//! Below the hub's core, beside `registry` and `twins`: depends on them, on the store, the
//! service client and the `webhook` leaf; never on a door.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use edgetwin_service::{ClientOptions, RetryPolicy, ServiceClient};
use edgetwin_wire::connection_string::ConnectionString;
use edgetwin_wire::dps::{
    self, AllocationRequest, AllocationResponse, DeviceRegistrationState, DeviceRuntimeContext,
    DpsError, EnrollmentCommon, EnrollmentGroup, IndividualEnrollment, LinkedHub, LinkedHubSpec,
    RegistrationOperationStatus,
};
use edgetwin_wire::rest::{
    AuthenticationMechanism, Device, DeviceCapabilities, SymmetricKey, Twin, TwinProperties,
};
use edgetwin_wire::sas::SasToken;
use edgetwin_wire::twin::Properties;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids;
use crate::registry;
use crate::store::{DpsTable, IdentityKey, PolicyRecord, StoreError, Transaction};
use crate::twins::{self, UpdateMode};

/// The counter that holds this hub's id scope (a random number, made once).
const ID_SCOPE_COUNTER: &str = "dpsIdScope";

/// Operations remembered for polling; the oldest are forgotten past this.
const MAX_OPERATIONS: usize = 100_000;

/// Permission names of the DPS policy (the portal's "Service configuration", "Enrollment read",
/// "Enrollment write", "Registration status read", "Registration status write").
pub const PERMISSIONS: [&str; 5] = [
    "ServiceConfig",
    "EnrollmentRead",
    "EnrollmentWrite",
    "RegistrationStatusRead",
    "RegistrationStatusWrite",
];

/// The provisioning service of a hub: its id scope, its shared access policy and the
/// registration operations devices poll.
pub struct Service {
    /// `0ne` and eight hex digits, made once per hub.
    id_scope: String,
    /// `provisioningserviceowner`.
    policy: PolicyRecord,
    /// Registration operations by id, for polling.
    operations: Operations,
    /// The hubs devices may be assigned to: this hub first, then the linked ones.
    linked: Vec<LinkedHub>,
    /// The service clients of the linked hubs (not this one), by lower-case host name.
    clients: HashMap<String, Arc<ServiceClient>>,
}

/// Why a linked hub could not be linked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The value is not a linked hub's connection string.
    #[error("--dps-linked-hub: {0}")]
    Invalid(String),
    /// A service client could not be made for it (its CA file, its key).
    #[error("--dps-linked-hub '{host}'")]
    Client {
        /// The hub.
        host: String,
        /// Why.
        #[source]
        source: Box<edgetwin_service::Error>,
    },
}

impl Service {
    /// Loads the service of the database `tx` belongs to, creating its policy and id scope the
    /// first time (a database from before DPS gets them too).
    pub fn open(tx: &Transaction<'_>) -> Result<Self, StoreError> {
        let policy = match tx
            .policies()?
            .into_iter()
            .find(|p| p.name == dps::OWNER_POLICY)
        {
            Some(policy) => policy,
            None => {
                let policy = PolicyRecord {
                    name: dps::OWNER_POLICY.to_owned(),
                    primary_key: ids::new_key(),
                    secondary_key: ids::new_key(),
                    permissions: PERMISSIONS.iter().map(|p| (*p).to_owned()).collect(),
                };
                tx.put_policy(&policy)?;
                policy
            }
        };
        let mut scope = tx.counter(ID_SCOPE_COUNTER)?;
        if scope == 0 {
            scope =
                tx.add_to_counter(ID_SCOPE_COUNTER, 1 + i64::from(rand::random::<u32>() >> 1))?;
        }
        Ok(Self {
            id_scope: format!("0ne{scope:08X}"),
            policy,
            operations: Operations::default(),
            linked: Vec::new(),
            clients: HashMap::new(),
        })
    }

    /// Links this hub, `own_host`, first (weight 1, allocation applied), and each of `specs` (a
    /// hub named twice, or this hub again, is refused).
    pub fn link(&mut self, own_host: &str, specs: Vec<LinkedHubSpec>) -> Result<(), LinkError> {
        self.linked = vec![LinkedHub::new(own_host)];
        for spec in specs {
            let host = spec.hub.host_name.clone();
            if dps::find_hub(&self.linked, &host).is_some() {
                return Err(LinkError::Invalid(format!(
                    "IoT hub '{host}' is linked twice"
                )));
            }
            let connection: ConnectionString = spec
                .connection_string
                .expose()
                .parse()
                .map_err(|e| LinkError::Invalid(format!("'{host}': {e}")))?;
            let options = ClientOptions {
                system_roots: spec.ca_file.is_none(),
                ca_file: spec.ca_file.map(Into::into),
                // a device waits for its registration: a few quick retries, then it fails
                retry: RetryPolicy {
                    max_attempts: 4,
                    base: std::time::Duration::from_millis(200),
                    cap: std::time::Duration::from_secs(2),
                    max_retry_after: std::time::Duration::from_secs(5),
                },
                attempt_timeout: std::time::Duration::from_secs(10),
                keep_alive: true,
            };
            let client =
                ServiceClient::new(&connection, options).map_err(|source| LinkError::Client {
                    host: host.clone(),
                    source: Box::new(source),
                })?;
            self.clients
                .insert(host.to_ascii_lowercase(), Arc::new(client));
            self.linked.push(spec.hub);
        }
        Ok(())
    }

    /// Links this hub alone, `own_host`, unless [`link`](Self::link) linked hubs already.
    pub fn link_own(&mut self, own_host: &str) {
        if self.linked.is_empty() {
            self.linked.push(LinkedHub::new(own_host));
        }
    }

    /// The hubs devices may be assigned to, this one first.
    pub fn linked_hubs(&self) -> &[LinkedHub] {
        &self.linked
    }

    /// Whether `host` is this hub.
    pub fn is_own(&self, host: &str) -> bool {
        self.linked
            .first()
            .is_some_and(|own| own.host_name.eq_ignore_ascii_case(host))
    }

    /// The service client of the linked hub `host` (`None` for this hub, or one not linked).
    pub fn client(&self, host: &str) -> Option<Arc<ServiceClient>> {
        self.clients.get(&host.to_ascii_lowercase()).cloned()
    }

    /// Asks the enrollment's custom allocation webhook where the device of `plan` goes, among
    /// `linked_hubs` (Microsoft Learn, "Understand custom allocation policies": the
    /// AllocationRequest, and the AllocationResponse read by
    /// [`dps::read_allocation_response`]); a call that fails is 400207.
    pub async fn allocate_by_webhook(
        &self,
        plan: &Plan,
        payload: Option<serde_json::Value>,
        linked_hubs: Vec<String>,
    ) -> Result<AllocationResponse, DpsError> {
        let definition = dps::custom_webhook(&plan.common)?;
        let (field, enrollment) = plan.enrollment.clone();
        let current = plan.current();
        let request = AllocationRequest {
            individual_enrollment: (field == "individualEnrollment").then(|| enrollment.clone()),
            enrollment_group: (field == "enrollmentGroup").then_some(enrollment),
            device_runtime_context: DeviceRuntimeContext {
                registration_id: plan.registration_id.clone(),
                current_iot_hub_host_name: current.map(|(hub, _)| hub.to_owned()),
                current_device_id: current.map(|(_, id)| id.to_owned()),
                // an X.509 device's certificate details are not sent (not served yet)
                symmetric_key: (plan.common.attestation.kind == "symmetricKey")
                    .then(|| serde_json::json!({})),
                payload,
            },
            linked_hubs,
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let (status, answer) = crate::webhook::post_json(&definition.webhook_url, body)
            .await
            .map_err(|error| {
                tracing::info!(%error, "custom allocation webhook failed");
                dps::custom_allocation_failed(format!("with no answer: {error}"))
            })?;
        dps::read_allocation_response(status, &answer, &request.linked_hubs)
    }

    /// The id scope devices name.
    pub fn id_scope(&self) -> &str {
        &self.id_scope
    }

    /// The `provisioningserviceowner` policy.
    pub fn policy(&self) -> &PolicyRecord {
        &self.policy
    }

    /// The operations devices poll.
    pub fn operations(&self) -> &Operations {
        &self.operations
    }
}

/// Whether a policy is the DPS one (kept out of the IoT Hub's policies).
pub fn is_dps_policy(policy: &PolicyRecord) -> bool {
    policy.name == dps::OWNER_POLICY
}

/// Registration operations, by id, with the registration id that started each.
#[derive(Default)]
pub struct Operations {
    /// The operations.
    inner: Mutex<Remembered>,
}

/// The operations remembered, and their ids oldest first (to forget the oldest).
#[derive(Default)]
struct Remembered {
    /// Operation id -> (registration id, finished status).
    by_id: HashMap<String, (String, RegistrationOperationStatus)>,
    /// Operation ids, oldest first.
    order: VecDeque<String>,
}

impl Operations {
    /// Remembers a finished operation of `registration_id`.
    pub fn record(&self, registration_id: &str, status: RegistrationOperationStatus) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Remembered { by_id, order } = &mut *inner;
        order.push_back(status.operation_id.clone());
        by_id.insert(
            status.operation_id.clone(),
            (registration_id.to_owned(), status),
        );
        while order.len() > MAX_OPERATIONS {
            if let Some(old) = order.pop_front() {
                by_id.remove(&old);
            }
        }
    }

    /// The operation `operation_id` of `registration_id`.
    pub fn get(
        &self,
        registration_id: &str,
        operation_id: &str,
    ) -> Option<RegistrationOperationStatus> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_id
            .get(operation_id)
            .filter(|(id, _)| id == registration_id)
            .map(|(_, status)| status.clone())
    }
}

impl From<StoreError> for DpsError {
    fn from(error: StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<ApiError> for DpsError {
    fn from(error: ApiError) -> Self {
        DpsError::new(error.code.number(), error.message)
    }
}

/// An enrollment record kind: individual enrollments and groups are stored and checked alike.
pub trait Record: Serialize + for<'de> Deserialize<'de> + Send + 'static {
    /// Where it is stored.
    const TABLE: DpsTable;
    /// The id field's name in the body.
    const ID_FIELD: &'static str;
    /// Its id in the body.
    fn id(&self) -> &str;
    /// Sets its id.
    fn set_id(&mut self, id: &str);
    /// The shared fields.
    fn common(&self) -> &EnrollmentCommon;
    /// The shared fields, to fill.
    fn common_mut(&mut self) -> &mut EnrollmentCommon;
}

impl Record for IndividualEnrollment {
    const TABLE: DpsTable = DpsTable::Enrollments;
    const ID_FIELD: &'static str = "registrationId";
    fn id(&self) -> &str {
        &self.registration_id
    }
    fn set_id(&mut self, id: &str) {
        id.clone_into(&mut self.registration_id);
    }
    fn common(&self) -> &EnrollmentCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut EnrollmentCommon {
        &mut self.common
    }
}

impl Record for EnrollmentGroup {
    const TABLE: DpsTable = DpsTable::Groups;
    const ID_FIELD: &'static str = "enrollmentGroupId";
    fn id(&self) -> &str {
        &self.enrollment_group_id
    }
    fn set_id(&mut self, id: &str) {
        id.clone_into(&mut self.enrollment_group_id);
    }
    fn common(&self) -> &EnrollmentCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut EnrollmentCommon {
        &mut self.common
    }
}

/// What a `PUT` or bulk item may do to an existing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Create only; an existing record is a conflict.
    Create,
    /// Create, or replace if `If-Match` (when given) names the stored etag.
    CreateOrReplace,
}

/// Creates or replaces the record `id` with `input` (whose id, when given, must be `id`);
/// allocations may name only the `linked` hubs.
pub fn put<R: Record>(
    tx: &Transaction<'_>,
    id: &str,
    mut input: R,
    if_match: Option<&str>,
    put: Put,
    linked: &[LinkedHub],
) -> Result<R, DpsError> {
    if R::TABLE == DpsTable::Enrollments {
        dps::check_registration_id(id)?;
    } else if id.is_empty() || id.len() > 128 {
        return Err(DpsError::invalid(
            "enrollmentGroupId must be 1 to 128 characters",
        ));
    }
    if !input.id().is_empty() && input.id() != id {
        return Err(DpsError::invalid(format!(
            "{} '{}' in the body does not match '{id}' in the path",
            R::ID_FIELD,
            input.id()
        )));
    }
    input.set_id(id);
    let existing: Option<R> = tx.dps_record(R::TABLE, id)?;
    if let Some(existing) = &existing {
        if put == Put::Create {
            return Err(DpsError::conflict(id));
        }
        check_if_match(if_match, existing.common())?;
    } else if if_match.is_some_and(|m| m.trim().trim_matches('"') != "*") {
        // an etag names a version of a record that does not exist
        return Err(DpsError::enrollment_not_found(id));
    }
    let etag = ids::counter_etag(tx.next_counter("etag")?);
    crate::dps_x509::prepare(
        R::TABLE,
        input.common_mut(),
        existing.as_ref().map(Record::common),
    )?;
    dps::prepare(
        input.common_mut(),
        existing.as_ref().map(Record::common),
        linked,
        &ids::now_iso(),
        etag,
        ids::new_key,
    )?;
    tx.put_dps_record(R::TABLE, id, None, &input)?;
    Ok(input)
}

/// The record `id`.
pub fn get<R: Record>(tx: &Transaction<'_>, id: &str) -> Result<R, DpsError> {
    tx.dps_record(R::TABLE, id)?
        .ok_or_else(|| DpsError::enrollment_not_found(id))
}

/// Deletes the record `id` if `If-Match` (when given) names its etag.
pub fn delete<R: Record>(
    tx: &Transaction<'_>,
    id: &str,
    if_match: Option<&str>,
) -> Result<(), DpsError> {
    let existing: R = get(tx, id)?;
    check_if_match(if_match, existing.common())?;
    tx.delete_dps_record(R::TABLE, id)?;
    Ok(())
}

fn check_if_match(if_match: Option<&str>, common: &EnrollmentCommon) -> Result<(), DpsError> {
    match (if_match, common.etag.as_deref()) {
        (Some(want), Some(etag)) if !dps::if_match_accepts(want, etag) => {
            Err(DpsError::precondition_failed())
        }
        _ => Ok(()),
    }
}

pub use crate::dps_x509::Attested;

/// Checks a device's registration token for `registration_id` under `id_scope`: the scope must
/// be this service's, the token's `sr` `{idScope}/registrations/{registrationId}` (ignoring
/// case), unexpired, its `skn` absent or `registration` (Microsoft documents `registration`; the
/// Python device SDK sends none), and signed with the key of the registration id's individual
/// enrollment if it has one, otherwise with a key derived from an enrollment group's. Every refusal is 401002
/// `Unauthorized`, the reason logged; the token expires by `now_unix`.
pub fn attest(
    tx: &Transaction<'_>,
    service: &Service,
    id_scope: &str,
    registration_id: &str,
    token: &SasToken,
    now_unix: u64,
) -> Result<Attested, DpsError> {
    let refuse = |why: &str| {
        tracing::info!(registration_id, reason = why, "DPS registration refused");
        DpsError::unauthorized()
    };
    if id_scope != service.id_scope() {
        return Err(refuse("unknown id scope"));
    }
    dps::check_registration_id(registration_id)?;
    if !token
        .resource
        .eq_ignore_ascii_case(&dps::registration_resource(id_scope, registration_id))
    {
        return Err(refuse("sr is not {idScope}/registrations/{registrationId}"));
    }
    if token.is_expired(now_unix, 0) {
        return Err(refuse("token expired"));
    }
    let attested = |group: Option<String>| Attested {
        registration_id: registration_id.to_owned(),
        group,
        thumbprint: None,
    };
    if !matches!(
        token.key_name.as_deref(),
        None | Some(dps::REGISTRATION_KEY_NAME)
    ) {
        return Err(refuse("skn is neither absent nor 'registration'"));
    }
    // An individual enrollment of the registration id comes first, as in DPS; then the groups.
    let enrollment: Option<IndividualEnrollment> =
        tx.dps_record(DpsTable::Enrollments, registration_id)?;
    if let Some(enrollment) = enrollment {
        let keys = enrollment
            .common
            .attestation
            .keys()
            .ok_or_else(|| refuse("the individual enrollment has no symmetric keys"))?;
        if token.verify(keys.0) || token.verify(keys.1) {
            return Ok(attested(None));
        }
        return Err(refuse("signature does not verify"));
    }
    let mut after = String::new();
    loop {
        let groups: Vec<EnrollmentGroup> = tx.dps_records(DpsTable::Groups, &after, 100, None)?;
        for group in &groups {
            if let Some((primary, secondary)) = group.common.attestation.keys() {
                let derived =
                    [primary, secondary].map(|key| dps::derive_device_key(key, registration_id));
                if derived.iter().flatten().any(|key| token.verify(key)) {
                    return Ok(attested(Some(group.enrollment_group_id.clone())));
                }
            }
        }
        match groups.last() {
            Some(last) => last.enrollment_group_id.clone_into(&mut after),
            None => return Err(refuse("no enrollment's key verifies")),
        }
    }
}

/// A registration state as stored, with the group it came through.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRegistration {
    /// The state the REST API shows.
    state: DeviceRegistrationState,
    /// The enrollment group, if any.
    group: Option<String>,
}

/// What a registration starts from, read in one transaction: the enrollment, the identity it
/// gives the device, and the device's last registration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The registration id.
    pub registration_id: String,
    /// The enrollment group the device registers through, if any.
    pub group: Option<String>,
    /// The enrollment's shared fields.
    pub common: EnrollmentCommon,
    /// The enrollment as a custom allocation webhook sees it (no keys), under the field that
    /// names its kind (`individualEnrollment` or `enrollmentGroup`).
    pub enrollment: (&'static str, serde_json::Value),
    /// The identity to create or update on the assigned hub.
    pub device: Device,
    /// The device's last registration state, if any.
    pub previous: Option<DeviceRegistrationState>,
}

impl Plan {
    /// Whether the enrollment is disabled (nothing is then stored).
    pub fn disabled(&self) -> bool {
        self.common.provisioning_status.as_deref() == Some("disabled")
    }

    /// The hub and device id of the device's last assignment, if it was assigned.
    pub fn current(&self) -> Option<(&str, &str)> {
        let previous = self.previous.as_ref().filter(|p| p.status == "assigned")?;
        Some((
            previous.assigned_hub.as_deref()?,
            previous.device_id.as_deref()?,
        ))
    }

    /// `disabled`, for a disabled enrollment.
    pub fn disabled_state(&self) -> DeviceRegistrationState {
        DeviceRegistrationState {
            registration_id: self.registration_id.clone(),
            status: "disabled".into(),
            last_updated_date_time_utc: Some(ids::now_iso()),
            ..Default::default()
        }
    }

    /// `assigned` to `hub` with `substatus`, the webhook's `payload` for the device.
    pub fn assigned_state(
        &self,
        hub: &str,
        substatus: &str,
        payload: Option<serde_json::Value>,
    ) -> DeviceRegistrationState {
        DeviceRegistrationState {
            registration_id: self.registration_id.clone(),
            assigned_hub: Some(hub.to_owned()),
            device_id: Some(self.device.device_id.clone()),
            status: "assigned".into(),
            substatus: Some(substatus.to_owned()),
            payload,
            ..Default::default()
        }
    }

    /// `failed` with DPS's `errorCode` and `errorMessage`.
    pub fn failed_state(&self, error: &DpsError) -> DeviceRegistrationState {
        DeviceRegistrationState {
            registration_id: self.registration_id.clone(),
            status: "failed".into(),
            error_code: Some(error.code),
            error_message: Some(error.message.clone()),
            ..Default::default()
        }
    }
}

/// Reads what registering an attested device starts from ([`Plan`]): its enrollment, the
/// identity (the enrollment's keys, or for a group the keys derived for the registration id;
/// `iotEdge` from its capabilities) and its last registration.
pub fn plan(tx: &Transaction<'_>, attested: &Attested) -> Result<Plan, DpsError> {
    let registration_id = attested.registration_id.as_str();
    let (common, device_id, keys, enrollment) = match &attested.group {
        None => {
            let enrollment: IndividualEnrollment = get(tx, registration_id)?;
            let keys = enrollment
                .common
                .attestation
                .keys()
                .map(|(p, s)| (p.clone(), s.clone()));
            let device_id = enrollment
                .device_id
                .clone()
                .unwrap_or_else(|| registration_id.to_owned());
            let shown = without_keys(&enrollment, "individualEnrollment");
            (enrollment.common, device_id, keys, shown)
        }
        Some(group_id) => {
            let group: EnrollmentGroup = get(tx, group_id)?;
            let keys = match group.common.attestation.keys() {
                Some((p, s)) => Some((
                    dps::derive_device_key(p, registration_id)
                        .map_err(|e| DpsError::invalid(e.to_string()))?,
                    dps::derive_device_key(s, registration_id)
                        .map_err(|e| DpsError::invalid(e.to_string()))?,
                )),
                None => None,
            };
            let shown = without_keys(&group, "enrollmentGroup");
            (group.common, registration_id.to_owned(), keys, shown)
        }
    };
    let authentication = match (&attested.thumbprint, keys) {
        (Some(thumbprint), _) => crate::dps_x509::authentication(thumbprint),
        (None, Some((primary, secondary))) => AuthenticationMechanism {
            auth_type: Some("sas".into()),
            symmetric_key: Some(SymmetricKey {
                primary_key: Some(primary),
                secondary_key: Some(secondary),
            }),
            ..Default::default()
        },
        (None, None) => return Err(DpsError::unauthorized()),
    };
    let device = Device {
        device_id,
        status: Some("enabled".into()),
        authentication: Some(authentication),
        capabilities: Some(DeviceCapabilities {
            iot_edge: dps::is_edge(&common),
        }),
        ..Default::default()
    };
    let previous: Option<StoredRegistration> =
        tx.dps_record(DpsTable::Registrations, registration_id)?;
    Ok(Plan {
        registration_id: registration_id.to_owned(),
        group: attested.group.clone(),
        common,
        enrollment,
        device,
        previous: previous.map(|p| p.state),
    })
}

/// A record as JSON without its symmetric keys, under `field`.
fn without_keys<R: Record>(record: &R, field: &'static str) -> (&'static str, serde_json::Value) {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    if let Some(attestation) = value.get_mut("attestation").and_then(|a| a.as_object_mut()) {
        attestation.remove("symmetricKey");
    }
    (field, value)
}

/// The tags and desired properties DPS writes to a device's twin.
pub type TwinSections = (Properties, Properties);

/// The sections of an initial twin (empty ones when there is none).
pub fn initial_sections(twin: Option<&serde_json::Value>) -> Result<TwinSections, DpsError> {
    let (tags, desired) = match twin {
        Some(twin) => dps::initial_twin_sections(twin)?,
        None => (None, None),
    };
    Ok((tags.unwrap_or_default(), desired.unwrap_or_default()))
}

/// The twin sections of a service-view twin (`$`-prefixed metadata left out).
pub fn twin_sections(twin: &serde_json::Value) -> TwinSections {
    let section = |value: Option<&serde_json::Value>| {
        value
            .and_then(serde_json::Value::as_object)
            .map(|map| {
                map.iter()
                    .filter(|(k, _)| !k.starts_with('$'))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    (
        section(twin.get("tags")),
        section(twin.get("properties").and_then(|p| p.get("desired"))),
    )
}

/// The twin of `device_id` on this hub, if the device exists.
pub fn local_twin(tx: &Transaction<'_>, device_id: &str) -> Result<Option<TwinSections>, DpsError> {
    Ok(tx
        .twin(&IdentityKey::device(device_id))?
        .map(|record| (record.tags, record.desired)))
}

/// The update that gives the `existing` device the authentication of `device` (what DPS
/// assigns), keeping its status and capabilities.
fn rekeyed(existing: &Device, device: Device) -> Device {
    Device {
        device_id: device.device_id,
        status: existing.status.clone(),
        status_reason: existing.status_reason.clone(),
        capabilities: existing.capabilities,
        authentication: device.authentication,
        ..Default::default()
    }
}

/// Creates `device` on this hub, or gives an existing one its keys (status and capabilities
/// kept); then writes `twin` to it, unless `only_if_created` and the device existed.
pub fn assign_here(
    tx: &Transaction<'_>,
    device: Device,
    twin: Option<&TwinSections>,
    only_if_created: bool,
) -> Result<(), DpsError> {
    let id = device.device_id.clone();
    let created = match tx.device(&id)? {
        None => {
            registry::create_device(tx, &id, device)?;
            true
        }
        Some(existing) => {
            registry::update_device(tx, &id, rekeyed(&existing, device), None)?;
            false
        }
    };
    if let Some((tags, desired)) = twin.filter(|_| created || !only_if_created) {
        let twin = Twin {
            tags: Some(tags.clone()),
            properties: Some(TwinProperties {
                desired: Some(desired.clone()),
                reported: None,
            }),
            ..Default::default()
        };
        twins::update_from_service(
            tx,
            &IdentityKey::device(&id),
            twin,
            UpdateMode::Replace,
            None,
        )?;
    }
    Ok(())
}

/// [`assign_here`] on a linked hub, through its service REST API (`client` retries what is
/// transient); a hub that refuses is 500001 naming the hub and its answer.
pub async fn assign_remote(
    client: &ServiceClient,
    device: Device,
    twin: Option<&TwinSections>,
    only_if_created: bool,
) -> Result<(), DpsError> {
    let refused = |error: edgetwin_service::Error| hub_failed(client, &error);
    let id = device.device_id.clone();
    let created = match client.get_device(&id).await.map_err(refused)? {
        None => {
            client.create_device(&device).await.map_err(refused)?;
            true
        }
        Some(existing) => {
            client
                .replace_device(&rekeyed(&existing, device))
                .await
                .map_err(refused)?;
            false
        }
    };
    if let Some((tags, desired)) = twin.filter(|_| created || !only_if_created) {
        let twin = serde_json::json!({"tags": tags, "properties": {"desired": desired}});
        client.replace_twin(&id, &twin).await.map_err(refused)?;
    }
    Ok(())
}

/// The twin of `device_id` on a linked hub, if the device exists there.
pub async fn remote_twin(
    client: &ServiceClient,
    device_id: &str,
) -> Result<Option<TwinSections>, DpsError> {
    if client
        .get_device(device_id)
        .await
        .map_err(|e| hub_failed(client, &e))?
        .is_none()
    {
        return Ok(None);
    }
    let twin = client
        .get_twin(device_id, None)
        .await
        .map_err(|e| hub_failed(client, &e))?;
    Ok(Some(twin_sections(&twin)))
}

/// 500001: a linked hub refused or could not be reached (the code DPS gives is not documented;
/// a guess).
fn hub_failed(client: &ServiceClient, error: &edgetwin_service::Error) -> DpsError {
    DpsError::new(
        500001,
        format!("the linked IoT hub '{}' failed: {error}", client.host()),
    )
}

/// Stores a registration's `state` (its creation time kept from the last one, a new etag, the
/// time) under its enrollment `group`; the state as stored.
pub fn record(
    tx: &Transaction<'_>,
    mut state: DeviceRegistrationState,
    group: Option<String>,
) -> Result<DeviceRegistrationState, DpsError> {
    let now = ids::now_iso();
    let previous: Option<StoredRegistration> =
        tx.dps_record(DpsTable::Registrations, &state.registration_id)?;
    state.created_date_time_utc = Some(
        previous
            .and_then(|p| p.state.created_date_time_utc)
            .unwrap_or_else(|| now.clone()),
    );
    state.last_updated_date_time_utc = Some(now);
    state.etag = Some(ids::counter_etag(tx.next_counter("etag")?));
    let id = state.registration_id.clone();
    let stored = StoredRegistration {
        state: state.clone(),
        group: group.clone(),
    };
    tx.put_dps_record(DpsTable::Registrations, &id, group.as_deref(), &stored)?;
    Ok(state)
}

/// The first `limit` registration states by registration id, each with the enrollment group it
/// came through (for the console).
pub fn registrations(
    tx: &Transaction<'_>,
    limit: usize,
) -> Result<Vec<(DeviceRegistrationState, Option<String>)>, StoreError> {
    let stored: Vec<StoredRegistration> =
        tx.dps_records(DpsTable::Registrations, "", limit, None)?;
    Ok(stored.into_iter().map(|r| (r.state, r.group)).collect())
}

/// The registration state `id`.
pub fn registration(tx: &Transaction<'_>, id: &str) -> Result<DeviceRegistrationState, DpsError> {
    let stored: StoredRegistration = tx
        .dps_record(DpsTable::Registrations, id)?
        .ok_or_else(|| DpsError::registration_not_found(id))?;
    Ok(stored.state)
}

/// Deletes the registration state `id` (the device identity stays, as in DPS) if `If-Match`
/// (when given) names its etag.
pub fn delete_registration(
    tx: &Transaction<'_>,
    id: &str,
    if_match: Option<&str>,
) -> Result<(), DpsError> {
    let state = registration(tx, id)?;
    if let (Some(want), Some(etag)) = (if_match, state.etag.as_deref()) {
        if !dps::if_match_accepts(want, etag) {
            return Err(DpsError::precondition_failed());
        }
    }
    tx.delete_dps_record(DpsTable::Registrations, id)?;
    Ok(())
}

/// One page of registration states of `group`, after `after`.
pub fn registrations_of_group(
    tx: &Transaction<'_>,
    group: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<DeviceRegistrationState>, DpsError> {
    let stored: Vec<StoredRegistration> =
        tx.dps_records(DpsTable::Registrations, after, limit, Some(group))?;
    Ok(stored.into_iter().map(|s| s.state).collect())
}

/// A new operation id.
pub fn operation_id() -> String {
    format!(
        "4.{:016x}.{}",
        rand::random::<u64>(),
        edgetwin_wire::ids::uuid_v4(rand::random())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;
    use edgetwin_wire::sas::generate_token;
    use edgetwin_wire::Secret;

    const NOW: u64 = 1_800_000_000;

    fn token(key: &Secret, scope: &str, id: &str, skn: Option<&str>, expiry: u64) -> SasToken {
        let resource = dps::registration_resource(scope, id);
        let text = generate_token(key, &resource, expiry, skn).unwrap();
        SasToken::parse(text.expose()).unwrap()
    }

    #[test]
    fn a_token_attests_by_its_individual_enrollment_first_then_by_a_groups_derived_key() {
        let (mut store, dir) = temp_store("dps-attest");
        store
            .transaction(|tx| {
                let service = Service::open(tx)?;
                let scope = service.id_scope().to_owned();
                let hub = [LinkedHub::new("hub")];
                let group: EnrollmentGroup = serde_json::from_value(serde_json::json!({
                    "attestation": {"type": "symmetricKey"}
                }))
                .unwrap();
                let group = put(tx, "fleet", group, None, Put::Create, &hub).unwrap();
                let group_key = group.common.attestation.keys().unwrap().0.clone();
                let individual: IndividualEnrollment = serde_json::from_value(serde_json::json!({
                    "attestation": {"type": "symmetricKey"}
                }))
                .unwrap();
                let individual = put(tx, "solo", individual, None, Put::Create, &hub).unwrap();
                let solo_key = individual.common.attestation.keys().unwrap().1.clone();
                let derived = dps::derive_device_key(&group_key, "pi-1").unwrap();
                let check = |id: &str, token: &SasToken, now: u64| {
                    attest(tx, &service, &scope, id, token, now).map(|a| a.group)
                };
                let ok = token(&derived, &scope, "pi-1", Some("registration"), NOW + 60);
                assert_eq!(check("pi-1", &ok, NOW), Ok(Some("fleet".to_owned())));
                let python = token(&derived, &scope, "pi-1", None, NOW + 60);
                assert_eq!(check("pi-1", &python, NOW), Ok(Some("fleet".to_owned())));
                let secondary = token(&solo_key, &scope, "solo", None, NOW + 60);
                assert_eq!(check("solo", &secondary, NOW), Ok(None));
                // the group's key is not the individual enrollment's: refused, not tried on groups
                let solo_by_group = dps::derive_device_key(&group_key, "solo").unwrap();
                let refused = token(&solo_by_group, &scope, "solo", None, NOW + 60);
                assert_eq!(check("solo", &refused, NOW).unwrap_err().code, 401002);
                let expired = token(&derived, &scope, "pi-1", None, NOW - 1);
                assert_eq!(check("pi-1", &expired, NOW).unwrap_err().code, 401002);
                let other_id = token(&derived, &scope, "pi-2", None, NOW + 60);
                assert_eq!(check("pi-2", &other_id, NOW).unwrap_err().code, 401002);
                let elsewhere = token(&derived, "0ne00000000", "pi-1", None, NOW + 60);
                let unknown = attest(tx, &service, "0ne00000000", "pi-1", &elsewhere, NOW);
                assert_eq!(unknown.unwrap_err().code, 401002);
                let policy = token(&derived, &scope, "pi-1", Some("iothubowner"), NOW + 60);
                assert_eq!(check("pi-1", &policy, NOW).unwrap_err().code, 401002);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_id_scope_and_policy_are_made_once_and_kept() {
        let (mut store, dir) = temp_store("dps-scope");
        let first = store.transaction(Service::open).unwrap();
        let again = store.transaction(Service::open).unwrap();
        assert_eq!(first.id_scope(), again.id_scope());
        assert!(first.id_scope().starts_with("0ne") && first.id_scope().len() == 11);
        assert_eq!(first.policy().primary_key, again.policy().primary_key);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_oldest_operations_are_forgotten_past_the_cap_and_each_is_its_registrations() {
        let operations = Operations::default();
        let status = |id: &str| RegistrationOperationStatus {
            operation_id: id.to_owned(),
            status: "assigned".into(),
            registration_state: None,
        };
        for n in 0..=MAX_OPERATIONS {
            operations.record("d", status(&n.to_string()));
        }
        assert!(operations.get("d", "0").is_none());
        assert!(operations.get("d", "1").is_some());
        assert!(operations.get("other", "1").is_none());
    }
}
