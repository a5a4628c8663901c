//! The Device Provisioning Service's REST API on the hub's HTTPS port, told apart from IoT Hub's
//! by its paths: the service side (`/enrollments`, `/enrollmentGroups`, `/registrations`, signed
//! with a DPS connection string's `provisioningserviceowner` policy) and the device side
//! (`/{idScope}/registrations/{id}/register`, `…/operations/{operationId}`, signed with the
//! device's enrollment or group-derived key). Errors take DPS's envelope
//! (`{"errorCode", "trackingId", "message", "timestampUtc"}`). A thin door over
//! [`crate::dps`]; depends on the hub and the REST request/reply types.

use bytes::Bytes;
use edgetwin_wire::dps::{
    self, BulkEnrollmentOperation, BulkEnrollmentOperationError, BulkEnrollmentOperationResult,
    BulkMode, DevicePath, DeviceRegistration, DpsError, EnrollmentGroup, IndividualEnrollment,
    QuerySpecification,
};
use edgetwin_wire::query::page::{CONTINUATION_HEADER, MAX_ITEM_COUNT_HEADER};
use edgetwin_wire::sas::SasToken;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use serde::Serialize;

use super::{parse, reply_response, Reply, Request};
use crate::dps::{Put, Record};
use crate::hub::{Caller, Hub};
use crate::ids;
use crate::store::DpsTable;
use crate::x509::ClientChain;

/// Most records in one query page unless `x-ms-max-item-count` asks for fewer.
const MAX_PAGE: usize = 1000;

/// Whether a path is the DPS service API's.
pub fn serves(segments: &[String]) -> bool {
    segments.first().is_some_and(|first| {
        ["enrollments", "enrollmentgroups", "registrations"]
            .iter()
            .any(|s| first.eq_ignore_ascii_case(s))
    })
}

/// Whether a path is the DPS device API's.
pub fn serves_device(segments: &[String]) -> bool {
    dps::parse_device_path(segments).is_some()
}

/// Answers a DPS service request; `authenticated` turns true once its token verified.
pub async fn handle_service(
    hub: &Hub,
    request: hyper::Request<Incoming>,
    authenticated: &mut bool,
) -> hyper::Response<Full<Bytes>> {
    let authenticate = |headers: &hyper::HeaderMap, segments: &[String]| {
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
        hub.authenticate_dps_service(authorization, segments)
    };
    let result = match parse(request, authenticate).await {
        Ok(request) => {
            *authenticated = true;
            route(hub, &request).await
        }
        Err(error) => Err(error.into()),
    };
    respond(result)
}

/// Answers a DPS device request (register, poll); `authenticated` turns true once the
/// device's token verified.
pub async fn handle_device(
    hub: &Hub,
    request: hyper::Request<Incoming>,
    authenticated: &mut bool,
) -> hyper::Response<Full<Bytes>> {
    let result = device(hub, request, authenticated).await;
    respond(result)
}

async fn device(
    hub: &Hub,
    request: hyper::Request<Incoming>,
    authenticated: &mut bool,
) -> Result<Reply, DpsError> {
    let segments = crate::http::path_segments(request.uri().path());
    let path =
        dps::parse_device_path(&segments).ok_or_else(|| DpsError::new(404001, "Not found"))?;
    let (id_scope, registration_id) = match &path {
        DevicePath::Register {
            id_scope,
            registration_id,
        }
        | DevicePath::Operation {
            id_scope,
            registration_id,
            ..
        } => (id_scope.clone(), registration_id.clone()),
    };
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    // no token and a client certificate from the TLS handshake: X.509 attestation
    let chain = request
        .extensions()
        .get::<ClientChain>()
        .filter(|chain| chain.leaf().is_some());
    let attested = match (authorization, chain) {
        (None, Some(chain)) => hub.dps_attest_x509(&id_scope, &registration_id, chain)?,
        _ => {
            let token = authorization
                .and_then(|v| SasToken::parse(v).ok())
                .ok_or_else(DpsError::unauthorized)?;
            hub.dps_attest(&id_scope, &registration_id, &token)?
        }
    };
    *authenticated = true;
    let method = request.method().clone();
    let body = crate::http::read_body(request.into_body(), 64 * 1024)
        .await
        .ok_or_else(|| DpsError::new(413001, "the request body is too large or too slow"))?;
    match (method, path) {
        (Method::PUT, DevicePath::Register { .. }) => {
            let registration: DeviceRegistration = if body.is_empty() {
                DeviceRegistration::default()
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| DpsError::invalid(format!("the request body is not valid: {e}")))?
            };
            if let Some(id) = registration.registration_id.as_deref() {
                if id != registration_id {
                    return Err(DpsError::invalid(format!(
                        "registrationId '{id}' in the body is not '{registration_id}' of the path"
                    )));
                }
            }
            let status = hub.dps_register(attested, registration.payload).await?;
            let mut reply = reply(StatusCode::ACCEPTED, &status)?;
            // the device SDKs wait this long before polling (as the MQTT topic's `retry-after`)
            reply
                .headers
                .push(("retry-after", dps::RETRY_AFTER_SECS.to_string()));
            Ok(reply)
        }
        (Method::GET, DevicePath::Operation { operation_id, .. }) => {
            let status = hub
                .dps()
                .operations()
                .get(&registration_id, &operation_id)
                .ok_or_else(|| {
                    DpsError::new(404203, format!("operation '{operation_id}' not found"))
                })?;
            reply(StatusCode::OK, &status)
        }
        (method, _) => Err(DpsError::new(
            405001,
            format!("{method} is not served on this path"),
        )),
    }
}

async fn route(hub: &Hub, request: &Request) -> Result<Reply, DpsError> {
    let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
    let kind = segments[0].to_ascii_lowercase();
    let method = &request.method;
    match (kind.as_str(), &segments[1..]) {
        ("enrollments", []) if method == Method::POST => bulk(hub, request).await,
        ("enrollments", rest) => record::<IndividualEnrollment>(hub, request, rest).await,
        ("enrollmentgroups", rest) => record::<EnrollmentGroup>(hub, request, rest).await,
        ("registrations", [group, "query"]) if method == Method::POST => {
            require(request, "RegistrationStatusRead")?;
            let (after, limit) = paging(request)?;
            let group = (*group).to_owned();
            let page = hub.read(|tx| {
                Ok(crate::dps::registrations_of_group(
                    tx, &group, &after, limit,
                ))
            })??;
            page_reply(page, limit, "DeviceRegistration", |r| &r.registration_id)
        }
        ("registrations", [id]) if method == Method::GET => {
            require(request, "RegistrationStatusRead")?;
            let state = hub.read(|tx| Ok(crate::dps::registration(tx, id)))??;
            let etag = state.etag.clone();
            Ok(reply(StatusCode::OK, &state)?.with_etag(etag))
        }
        ("registrations", [id]) if method == Method::DELETE => {
            require(request, "RegistrationStatusWrite")?;
            let (id, if_match) = ((*id).to_owned(), request.if_match.clone());
            hub.write_dps(move |tx| crate::dps::delete_registration(tx, &id, if_match.as_deref()))
                .await?;
            no_content()
        }
        _ => Err(not_found(request)),
    }
}

/// The routes of one record kind: `PUT`/`GET`/`DELETE /{kind}/{id}`, `POST /{kind}/query`,
/// `POST /{kind}/{id}/attestationmechanism`.
async fn record<R: Record>(hub: &Hub, request: &Request, rest: &[&str]) -> Result<Reply, DpsError> {
    let method = &request.method;
    match rest {
        ["query"] if method == Method::POST => {
            require(request, "EnrollmentRead")?;
            // the body must be a query specification; its text selects every record (see
            // `QuerySpecification`)
            if !request.body.is_empty() {
                json::<QuerySpecification>(request)?;
            }
            let (after, limit) = paging(request)?;
            let page: Vec<R> =
                hub.read(|tx| Ok(tx.dps_records(R::TABLE, &after, limit, None)))??;
            let page: Vec<R> = page.into_iter().map(without_keys).collect();
            let item_type = match R::TABLE {
                DpsTable::Groups => "EnrollmentGroup",
                _ => "Enrollment",
            };
            page_reply(page, limit, item_type, |r| r.id())
        }
        [id] if method == Method::GET => {
            require(request, "EnrollmentRead")?;
            let record: R = without_keys(hub.read(|tx| Ok(crate::dps::get(tx, id)))??);
            let etag = record.common().etag.clone();
            Ok(reply(StatusCode::OK, &record)?.with_etag(etag))
        }
        [id] if method == Method::PUT => {
            require(request, "EnrollmentWrite")?;
            let input: R = json(request)?;
            let (id, if_match, host) = (
                (*id).to_owned(),
                request.if_match.clone(),
                hub.host_name().to_owned(),
            );
            let stored = hub
                .write_dps(move |tx| {
                    crate::dps::put(
                        tx,
                        &id,
                        input,
                        if_match.as_deref(),
                        Put::CreateOrReplace,
                        &host,
                    )
                })
                .await?;
            let etag = stored.common().etag.clone();
            Ok(reply(StatusCode::OK, &without_certificates(stored))?.with_etag(etag))
        }
        [id] if method == Method::DELETE => {
            require(request, "EnrollmentWrite")?;
            let (id, if_match) = ((*id).to_owned(), request.if_match.clone());
            hub.write_dps(move |tx| crate::dps::delete::<R>(tx, &id, if_match.as_deref()))
                .await?;
            no_content()
        }
        [id, attestation]
            if method == Method::POST
                && attestation.eq_ignore_ascii_case("attestationmechanism") =>
        {
            require(request, "EnrollmentRead")?;
            let record: R = without_certificates(hub.read(|tx| Ok(crate::dps::get(tx, id)))??);
            reply(StatusCode::OK, &record.common().attestation)
        }
        _ => Err(not_found(request)),
    }
}

/// A record as `GET` and queries show it: without its symmetric keys, which only its creation
/// and `…/attestationmechanism` reveal (hence the Azure CLI's `--show-keys`, which asks for the
/// attestation mechanism after the `GET`), and without the certificates of an X.509
/// attestation, of which DPS shows only the `info` it read from them.
fn without_keys<R: Record>(record: R) -> R {
    let mut record = without_certificates(record);
    if let Some(keys) = record.common_mut().attestation.symmetric_key.as_mut() {
        *keys = Default::default();
    }
    record
}

/// A record as every answer shows it: an X.509 attestation's certificates go in, never out
/// (see [`dps::X509CertificateWithInfo`]).
fn without_certificates<R: Record>(mut record: R) -> R {
    if let Some(x509) = record.common_mut().attestation.x509.as_mut() {
        x509.without_certificates();
    }
    record
}

/// `POST /enrollments`: at most ten enrollments, each created, replaced or deleted on its own.
async fn bulk(hub: &Hub, request: &Request) -> Result<Reply, DpsError> {
    require(request, "EnrollmentWrite")?;
    let operation: BulkEnrollmentOperation = json(request)?;
    if operation.enrollments.len() > dps::MAX_BULK {
        return Err(DpsError::invalid(format!(
            "a bulk operation takes at most {} enrollments, not {}",
            dps::MAX_BULK,
            operation.enrollments.len()
        )));
    }
    let host = hub.host_name().to_owned();
    let results = hub
        .write_dps(move |tx| {
            let mode = operation.mode;
            Ok(tx.each(operation.enrollments, |tx, enrollment| {
                let id = enrollment.registration_id.clone();
                let outcome = match mode {
                    BulkMode::Create => {
                        crate::dps::put(tx, &id, enrollment, None, Put::Create, &host).map(drop)
                    }
                    BulkMode::Update => {
                        crate::dps::put(tx, &id, enrollment, None, Put::CreateOrReplace, &host)
                            .map(drop)
                    }
                    BulkMode::UpdateIfMatchETag => {
                        let etag = enrollment.common.etag.clone().unwrap_or_default();
                        crate::dps::put(
                            tx,
                            &id,
                            enrollment,
                            Some(&format!("\"{etag}\"")),
                            Put::CreateOrReplace,
                            &host,
                        )
                        .map(drop)
                    }
                    BulkMode::Delete => crate::dps::delete::<IndividualEnrollment>(
                        tx,
                        &id,
                        enrollment.common.etag.as_deref(),
                    ),
                };
                outcome.map_err(|error| (id, error))
            })?)
        })
        .await?;
    let errors: Vec<BulkEnrollmentOperationError> = results
        .into_iter()
        .filter_map(Result::err)
        .map(|(registration_id, error)| BulkEnrollmentOperationError {
            registration_id,
            error_code: error.code,
            error_status: error.message,
        })
        .collect();
    reply(
        StatusCode::OK,
        &BulkEnrollmentOperationResult {
            is_successful: errors.is_empty(),
            errors,
        },
    )
}

/// A bulk item's error is its registration id and why; a savepoint the store could not take
/// fails the whole request, for no item in particular.
impl From<crate::store::StoreError> for (String, DpsError) {
    fn from(error: crate::store::StoreError) -> Self {
        (String::new(), error.into())
    }
}

/// Refuses the request unless its policy grants the DPS permission `name`.
fn require(request: &Request, name: &str) -> Result<(), DpsError> {
    match &request.caller {
        Caller::Policy(policy) if policy.permissions.iter().any(|p| p == name) => Ok(()),
        _ => Err(DpsError::unauthorized()),
    }
}

/// The body decoded as `T`.
fn json<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, DpsError> {
    serde_json::from_slice(&request.body)
        .map_err(|e| DpsError::invalid(format!("the request body is not valid: {e}")))
}

/// Where a query page starts (`x-ms-continuation`) and how many records it holds at most
/// (`x-ms-max-item-count`, 1 to 1000).
fn paging(request: &Request) -> Result<(String, usize), DpsError> {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let after = match header(CONTINUATION_HEADER).filter(|t| !t.is_empty()) {
        Some(token) => dps::continuation_start(token).ok_or_else(|| {
            DpsError::invalid("x-ms-continuation is not a token this service gave")
        })?,
        None => String::new(),
    };
    let limit = match header(MAX_ITEM_COUNT_HEADER) {
        Some(count) => count
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                DpsError::invalid(format!("x-ms-max-item-count must be 1 to {MAX_PAGE}"))
            })?,
        None => MAX_PAGE,
    };
    Ok((after, limit))
}

/// A query page, with `x-ms-continuation` when it is full (more may follow).
fn page_reply<T: Serialize>(
    page: Vec<T>,
    limit: usize,
    item_type: &str,
    id: impl Fn(&T) -> &str,
) -> Result<Reply, DpsError> {
    let next = (page.len() == limit)
        .then(|| page.last().map(|last| dps::continuation_after(id(last))))
        .flatten();
    let mut reply = reply(StatusCode::OK, &page)?;
    reply.headers.push(("x-ms-item-type", item_type.to_owned()));
    reply
        .headers
        .extend(next.map(|next| (CONTINUATION_HEADER, next)));
    Ok(reply)
}

fn reply(status: StatusCode, body: &impl Serialize) -> Result<Reply, DpsError> {
    let mut reply = Reply::ok(body)?;
    reply.status = status;
    Ok(reply)
}

fn no_content() -> Result<Reply, DpsError> {
    Ok(Reply::no_content()?)
}

fn not_found(request: &Request) -> DpsError {
    DpsError::new(
        404001,
        format!(
            "{} /{} is not a provisioning service operation this hub serves",
            request.method,
            request.segments.join("/")
        ),
    )
}

/// The response for a route's result: its reply, or the DPS error envelope with
/// `x-ms-error-code`.
fn respond(result: Result<Reply, DpsError>) -> hyper::Response<Full<Bytes>> {
    match result {
        Ok(reply) => reply_response(reply),
        Err(error) => {
            tracing::debug!(code = error.code, message = %error.message, "DPS request refused");
            let body = error.body(&ids::tracking_id(), &ids::now_iso());
            hyper::Response::builder()
                .status(error.http_status())
                .header("Content-Type", "application/json; charset=utf-8")
                .header("x-ms-error-code", error.code.to_string())
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
        }
    }
}
