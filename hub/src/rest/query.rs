//! `POST /devices/query`: IoT Hub's query language ([`edgetwin_wire::query`]) over the device or
//! module twins of the store, one page per request (`x-ms-max-item-count`, `x-ms-continuation`),
//! with the rows' kind in `x-ms-item-type`.
//!
//! The twins are read in one store transaction (a plain read, no write) and the query runs
//! after the store is released, so a large query does not hold up twin updates while it
//! filters and groups.

use std::sync::Arc;

use edgetwin_wire::query::exec::ITEM_TYPE_HEADER;
use edgetwin_wire::query::page::{self, CONTINUATION_HEADER, MAX_ITEM_COUNT_HEADER};
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
    let specification: QuerySpecification = match request.body.is_empty() {
        true => QuerySpecification::default(),
        false => request.json()?,
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
    let twins = hub.transact(|tx| collection(hub, tx, query.from))?;
    let rows = query.run(&twins);
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let size = page::page_size(header(MAX_ITEM_COUNT_HEADER));
    let (rows, next) = page::page(rows, &text, header(CONTINUATION_HEADER), size)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let mut reply = Reply::ok(rows)?;
    reply
        .headers
        .push((ITEM_TYPE_HEADER, query.item_type().name().to_owned()));
    reply
        .headers
        .extend(next.map(|token| (CONTINUATION_HEADER, token)));
    Ok(reply)
}

/// Every twin of the collection as the service API shows it, ordered by device then module id.
fn collection(hub: &Hub, tx: &Transaction<'_>, from: Collection) -> Result<Vec<Value>, ApiError> {
    let mut twins = Vec::new();
    // `devices(n)` is a LIMIT; this one is no limit at all.
    for device in tx.devices(i64::MAX as usize)? {
        let keys = match from {
            Collection::Devices => vec![IdentityKey::device(&device.device_id)],
            Collection::Modules => tx
                .modules(&device.device_id)?
                .iter()
                .map(|m| IdentityKey::module(&m.device_id, &m.module_id))
                .collect(),
        };
        for key in keys {
            let connected = hub.live.is_connected(&key.client_id());
            let view = twins::service_view(tx, &key, connected)?;
            twins.push(
                serde_json::to_value(view)
                    .map_err(|e| ApiError::new(ErrorCode::ServerError, e.to_string()))?,
            );
        }
    }
    Ok(twins)
}
