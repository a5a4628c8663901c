//! `POST /devices/query`: IoT Hub's query language ([`edgetwin_wire::query`]) over the device or
//! module twins of the store, one page per request (`x-ms-max-item-count`, `x-ms-continuation`),
//! with the rows' kind in `x-ms-item-type`.
//!
//! A page is read in one store transaction (a plain read, no write): identity keys from the
//! continuation's key on, a chunk at a time, and the twins behind them, only as many as the page
//! needs, so paging through N twins reads each about once. Grouped and aggregate queries read
//! every twin of the collection.

use std::sync::Arc;

use edgetwin_wire::query::exec::ITEM_TYPE_HEADER;
use edgetwin_wire::query::page::{
    self, BadContinuation, Cursor, CONTINUATION_HEADER, MAX_ITEM_COUNT_HEADER,
};
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
    let after = cursor
        .after
        .as_deref()
        .map(|order| key_of(query.from, order))
        .transpose()?;
    let page = hub.read(|tx| {
        let documents = Keys::new(tx, query.from, after).map(|key| {
            let key = key?;
            Ok((order_of(&key), view(hub, tx, &key)?))
        });
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

/// How many keys one store read fetches while a page is filled.
const KEYS_PER_READ: usize = 256;

/// The identity keys of a collection in order from a key on, read from the store a chunk at a
/// time as the page consumes them.
struct Keys<'t> {
    /// The open read transaction.
    tx: &'t Transaction<'t>,
    /// Module twins or device twins.
    modules: bool,
    /// The last key handed out (or the cursor's); the next read starts after it.
    after: Option<IdentityKey>,
    /// Keys read and not yet handed out.
    buffer: std::vec::IntoIter<IdentityKey>,
    /// The store has no keys left after `after`.
    exhausted: bool,
}

impl<'t> Keys<'t> {
    fn new(tx: &'t Transaction<'t>, from: Collection, after: Option<IdentityKey>) -> Self {
        Self {
            tx,
            modules: from == Collection::Modules,
            after,
            buffer: Vec::new().into_iter(),
            exhausted: false,
        }
    }
}

impl Iterator for Keys<'_> {
    type Item = Result<IdentityKey, ApiError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.len() == 0 && !self.exhausted {
            match self
                .tx
                .identity_keys(self.modules, self.after.as_ref(), KEYS_PER_READ)
            {
                Ok(keys) => {
                    self.exhausted = keys.len() < KEYS_PER_READ;
                    self.buffer = keys.into_iter();
                }
                Err(e) => {
                    self.exhausted = true;
                    return Some(Err(e.into()));
                }
            }
        }
        let key = self.buffer.next()?;
        self.after = Some(key.clone());
        Some(Ok(key))
    }
}

/// A twin's place in the collection's order, as continuation tokens carry it.
fn order_of(key: &IdentityKey) -> Vec<String> {
    std::iter::once(key.device_id.clone())
        .chain(key.module_id.clone())
        .collect()
}

/// The identity a continuation token's position names.
fn key_of(from: Collection, order: &[String]) -> Result<IdentityKey, ApiError> {
    match (from, order) {
        (Collection::Devices, [device]) => Ok(IdentityKey::device(device)),
        (Collection::Modules, [device, module]) => Ok(IdentityKey::module(device, module)),
        _ => Err(ApiError::invalid(BadContinuation.to_string())),
    }
}

/// The twin as the service API shows it, as JSON.
fn view(hub: &Hub, tx: &Transaction<'_>, key: &IdentityKey) -> Result<Value, ApiError> {
    let connected = hub.live.is_connected(&key.client_id());
    let twin = twins::service_view(tx, key, connected)?;
    serde_json::to_value(twin).map_err(|e| ApiError::new(ErrorCode::ServerError, e.to_string()))
}
