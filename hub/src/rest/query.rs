//! `POST /devices/query`: IoT Hub's query language ([`edgetwin_wire::query`]) over the device or
//! module twins of the store, one page per request (`x-ms-max-item-count`, `x-ms-continuation`),
//! with the rows' kind in `x-ms-item-type`.
//!
//! A page is read in one store transaction (a plain read, no write): the keys of the collection,
//! then twin after twin from the continuation's key on, only as many as the page needs, so
//! paging through N twins reads each about once instead of N/page times. Grouped and aggregate
//! queries read every twin of the collection.

use std::sync::Arc;

use edgetwin_wire::query::exec::ITEM_TYPE_HEADER;
use edgetwin_wire::query::page::{self, Cursor, CONTINUATION_HEADER, MAX_ITEM_COUNT_HEADER};
use edgetwin_wire::query::{parse_query, Collection};
use edgetwin_wire::rest::{ErrorCode, Permission, QuerySpecification};
use serde_json::Value;

use super::{Reply, Request};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::store::{IdentityKey, Transaction};
use crate::twins;

/// Runs the query of the body and answers one page of its rows.
pub fn route(hub: &Arc<Hub>, request: &Request) -> Result<Reply, ApiError> {
    request.require(Permission::RegistryRead)?;
    // Without a query IoT Hub answers `ErrorCode:ArgumentNull;BadRequest`
    // (Azure/azure-iot-sdks#941).
    let specification: QuerySpecification = if request.body.is_empty() {
        QuerySpecification::default()
    } else {
        request.json()?
    };
    let text = specification.query;
    if text.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::ArgumentNull,
            "BadRequest: the body has no query; send {\"query\": \"SELECT ...\"}",
        ));
    }
    let query = parse_query(&text).map_err(|e| {
        // IoT Hub's own wording for a query it cannot run (MicrosoftDocs/azure-docs#110329),
        // then where and what.
        ApiError::invalid(format!(
            "The query is invalid. Please check the format of the query and try again. Query \
             error {e}"
        ))
    })?;
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let cursor = Cursor::decode(header(CONTINUATION_HEADER), &text)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let size = page::page_size(header(MAX_ITEM_COUNT_HEADER));
    let page = hub.read(|tx| {
        let documents = keys(tx, query.from, cursor.after.as_deref())?
            .into_iter()
            .map(|(order, key)| Ok((order, view(hub, tx, &key)?)));
        query.page(documents, &cursor, size)
    })?;
    let mut reply = Reply::ok(page.rows)?;
    reply
        .headers
        .push((ITEM_TYPE_HEADER, query.item_type().name().to_owned()));
    reply.headers.extend(
        page.next
            .map(|next| (CONTINUATION_HEADER, next.encode(&text))),
    );
    Ok(reply)
}

/// The identities of the collection after `after`, ordered by device then module id, each with
/// its key in that order (`[deviceId]` or `[deviceId, moduleId]`). Devices before the cursor's
/// are skipped without listing their modules.
fn keys(
    tx: &Transaction<'_>,
    from: Collection,
    after: Option<&[String]>,
) -> Result<Vec<(Vec<String>, IdentityKey)>, ApiError> {
    let past = |order: &[String]| after.is_none_or(|after| order > after);
    let mut keys = Vec::new();
    // `devices(n)` is a LIMIT; this one is no limit at all.
    for device in tx.devices(i64::MAX as usize)? {
        let id = device.device_id;
        match from {
            Collection::Devices => {
                let order = vec![id.clone()];
                if past(&order) {
                    keys.push((order, IdentityKey::device(&id)));
                }
            }
            Collection::Modules => {
                if after
                    .and_then(|after| after.first())
                    .is_some_and(|first| id < *first)
                {
                    continue;
                }
                for module in tx.modules(&id)? {
                    let order = vec![id.clone(), module.module_id.clone()];
                    if past(&order) {
                        keys.push((order, IdentityKey::module(&id, &module.module_id)));
                    }
                }
            }
        }
    }
    Ok(keys)
}

/// The twin as the service API shows it, as JSON.
fn view(hub: &Hub, tx: &Transaction<'_>, key: &IdentityKey) -> Result<Value, ApiError> {
    let connected = hub.live.is_connected(&key.client_id());
    let twin = twins::service_view(tx, key, connected)?;
    serde_json::to_value(twin).map_err(|e| ApiError::new(ErrorCode::ServerError, e.to_string()))
}
