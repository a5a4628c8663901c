//! Configuration routes: `/configurations[/{id}]` (create, get, list, delete).
//!
//! Part of the REST door: depends on the hub and deployments; never on another door.

use std::sync::Arc;

use edgetwin_wire::condition::Condition;
use edgetwin_wire::query::parse_query;
use edgetwin_wire::rest::{Configuration, ErrorCode, Permission};
use hyper::Method;

use super::{not_found, Reply, Request};
use crate::deployments;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::ids;
use crate::store::Transaction;
use crate::writer::Effect;

/// Routes configuration requests.
pub async fn route(
    hub: &Arc<Hub>,
    request: &Request,
    segments: &[&str],
) -> Result<Reply, ApiError> {
    match (segments, &request.method) {
        (["configurations"], &Method::GET) => {
            request.require(Permission::RegistryRead)?;
            let mut configurations = hub.read(|tx| Ok(tx.configurations(request.top())?))?;
            for configuration in &mut configurations {
                count_custom_metrics(hub, configuration).await?;
            }
            Reply::ok(configurations)
        }
        (["configurations", id], &Method::GET) => {
            request.require(Permission::RegistryRead)?;
            let mut configuration =
                hub.read(|tx| tx.configuration(id)?.ok_or_else(|| not_found_error(id)))?;
            count_custom_metrics(hub, &mut configuration).await?;
            let etag = configuration.etag.clone();
            Ok(Reply::ok(configuration)?.with_etag(etag))
        }
        (["configurations", id], &Method::PUT) => {
            request.require(Permission::RegistryWrite)?;
            let input: Configuration = request.json()?;
            let (id, if_match) = (id.to_string(), request.if_match.clone());
            // answered with the configuration as stored, before its evaluation's counts
            let configuration =
                change_and_evaluate(hub, move |tx| put(tx, &id, input, if_match.as_deref()))
                    .await?;
            let etag = configuration.etag.clone();
            Ok(Reply::ok(configuration)?.with_etag(etag))
        }
        (["configurations", id], &Method::DELETE) => {
            request.require(Permission::RegistryWrite)?;
            let (id, if_match) = (id.to_string(), request.if_match.clone());
            change_and_evaluate(hub, move |tx| {
                let existing = tx.configuration(&id)?.ok_or_else(|| not_found_error(&id))?;
                if let Some(value) = if_match.as_deref() {
                    if !ids::if_match_accepts(value, existing.etag.as_deref().unwrap_or_default()) {
                        return Err(ApiError::new(
                            ErrorCode::PreconditionFailed,
                            "the If-Match etag does not match",
                        ));
                    }
                }
                Ok(tx.delete_configuration(&id)?)
            })
            .await?;
            Reply::no_content()
        }
        _ => Err(not_found(request)),
    }
}

/// Applies a configuration `change`, then re-evaluates the deployments against every device, a
/// page of [`deployments::EVALUATION_PAGE`] devices per writer job so that other writes get in
/// between (a fleet of 100,000 would otherwise hold every write for seconds). Returns once every
/// device was evaluated; the evaluation goes on if the caller goes away, and a hub stopped
/// meanwhile finishes it at its next start ([`crate::store::EVALUATIONS_PENDING`]).
async fn change_and_evaluate<T: Send + 'static>(
    hub: &Arc<Hub>,
    change: impl FnOnce(&Transaction<'_>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let page = |tx: &Transaction<'_>, after: Option<&str>| {
        let (changes, next) = deployments::evaluate_page(tx, after, deployments::EVALUATION_PAGE)?;
        if next.is_none() {
            tx.add_to_counter(crate::store::EVALUATIONS_PENDING, -1)?;
        }
        Ok::<_, ApiError>((next, Effect::desired(changes)))
    };
    let (value, mut next) = hub
        .write_with_effects(move |tx| {
            let value = change(tx)?;
            tx.add_to_counter(crate::store::EVALUATIONS_PENDING, 1)?;
            let (next, changes) = page(tx, None)?;
            Ok(((value, next), changes))
        })
        .await?;
    let hub = hub.clone();
    tokio::spawn(async move {
        while let Some(after) = next {
            next = hub
                .write_with_effects(move |tx| page(tx, Some(&after)))
                .await?;
        }
        Ok::<_, ApiError>(())
    })
    .await
    .map_err(|_| ApiError::new(ErrorCode::ServerError, "deployment evaluation failed"))??;
    Ok(value)
}

/// Fills a configuration's custom `metrics.results`: each query of `metrics.queries` run over
/// the twins now, counted ("The metric represents the number of rows returned by the query":
/// MicrosoftDocs/azure-docs, `includes/iot-hub-automatic-device-management-portal.md`,
/// "Metrics"). IoT Hub recomputes them every five minutes; the hub counts when the configuration
/// is read, a pass over the twins per query (IoT Hub allows five), unless the store did not
/// change since that query was last counted (see [`Hub::count_rows`]). A query that does not
/// parse has no result (creating the configuration does not check it).
async fn count_custom_metrics(
    hub: &Arc<Hub>,
    configuration: &mut Configuration,
) -> Result<(), ApiError> {
    let Some(metrics) = configuration.metrics.as_mut() else {
        return Ok(());
    };
    for (name, text) in &metrics.queries {
        let Some(text) = text.as_str() else {
            continue;
        };
        let Ok(query) = parse_query(text) else {
            continue;
        };
        let count = hub.count_rows(text, &query).await?;
        metrics.results.insert(name.clone(), count.into());
    }
    Ok(())
}

/// Checks the target condition `input` brings for the configuration `kind` (a module
/// configuration's names its collection, see [`Condition::parse_module`]); an empty one targets
/// nothing.
fn check_target_condition(kind: &Configuration, input: &Configuration) -> Result<(), ApiError> {
    let Some(condition) = input
        .target_condition
        .as_deref()
        .filter(|c| !c.trim().is_empty())
    else {
        return Ok(());
    };
    let parsed = if kind.is_module_configuration() {
        Condition::parse_module(condition)
    } else {
        Condition::parse(condition)
    };
    parsed.map(drop).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidConfigurationTargetCondition,
            format!("targetCondition: {e}"),
        )
    })
}

fn not_found_error(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ConfigurationNotFound,
        format!("Configuration '{id}' not found"),
    )
}

/// Validates a configuration id: at most 128 lower-case characters without spaces or `&^[]{}\|"<>/`.
fn validate_id(id: &str) -> Result<(), ApiError> {
    edgetwin_wire::ids::check_configuration_id(id)
        .map_err(|why| ApiError::invalid(format!("configuration id '{id}' {why}")))
}

fn put(
    tx: &crate::store::Transaction<'_>,
    id: &str,
    mut input: Configuration,
    if_match: Option<&str>,
) -> Result<Configuration, ApiError> {
    validate_id(id)?;
    let now = ids::now_iso();
    let existing = tx.configuration(id)?;
    let configuration = match (existing, if_match) {
        (Some(_), None) => {
            return Err(ApiError::new(
                ErrorCode::ConfigurationAlreadyExists,
                format!("Configuration '{id}' already exists"),
            ))
        }
        (None, _) => {
            check_target_condition(&input, &input)?;
            if let Some(modules) = input
                .content
                .as_ref()
                .and_then(|c| c.modules_content.as_ref())
            {
                crate::layers::kind(modules).map_err(|why| {
                    ApiError::new(
                        ErrorCode::InvalidConfigurationContent,
                        format!("The content provided for configuration is invalid: {why}"),
                    )
                })?;
            }
            if let Some(content) = &input.content {
                for (field, settings) in [
                    ("deviceContent", &content.device_content),
                    ("moduleContent", &content.module_content),
                ] {
                    if let Some(settings) = settings {
                        crate::adm::validate(settings, field)?;
                    }
                }
            }
            if input.priority.is_some_and(|p| p < 0) {
                return Err(ApiError::invalid("priority must not be negative"));
            }
            input.id = id.to_owned();
            // a configuration's own schema, which the SDKs send as "1.0" (azure-iothub's
            // addConfiguration fills it in when missing: SRS_NODE_IOTHUB_REGISTRY_18_009)
            input.schema_version = input.schema_version.or(Some("1.0".into()));
            input.created_time_utc = Some(now.clone());
            input.last_updated_time_utc = Some(now);
            input.priority = input.priority.or(Some(0));
            // as IoT Hub answers a configuration created without one (the Azure CLI's live
            // test of a layered deployment checks `targetCondition` is "")
            input.target_condition = input.target_condition.or(Some(String::new()));
            input.etag = Some(ids::counter_etag(tx.next_counter("etag")?));
            input
        }
        (Some(mut existing), Some(value)) => {
            if !ids::if_match_accepts(value, existing.etag.as_deref().unwrap_or_default()) {
                return Err(ApiError::new(
                    ErrorCode::PreconditionFailed,
                    "the If-Match etag does not match",
                ));
            }
            if input.content.is_some() && input.content != existing.content {
                return Err(ApiError::new(
                    ErrorCode::CannotModifyImmutableConfigurationContent,
                    "the content of a configuration cannot change; create a new configuration",
                ));
            }
            check_target_condition(&existing, &input)?;
            existing.target_condition = input.target_condition.or(existing.target_condition);
            existing.priority = input.priority.or(existing.priority);
            existing.labels = input.labels.or(existing.labels);
            existing.metrics = input.metrics.or(existing.metrics);
            existing.last_updated_time_utc = Some(now);
            existing.etag = Some(ids::counter_etag(tx.next_counter("etag")?));
            existing
        }
    };
    tx.put_configuration(&configuration)?;
    Ok(configuration)
}
