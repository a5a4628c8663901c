//! `POST /devices/query`: reads the query from the body and the paging headers
//! (`x-ms-max-item-count`, `x-ms-continuation`), runs one page of it on the hub
//! ([`crate::queries`]) and answers the rows with their kind in `x-ms-item-type`. Depends on the
//! hub and the REST request/reply types only.

use edgetwin_wire::query::exec::ITEM_TYPE_HEADER;
use edgetwin_wire::query::page::{CONTINUATION_HEADER, MAX_ITEM_COUNT_HEADER};
use edgetwin_wire::query::parse_query;
use edgetwin_wire::rest::{ErrorCode, Permission, QuerySpecification};

use super::{Reply, Request};
use crate::error::ApiError;
use crate::hub::Hub;

/// Runs the query of the body and answers one page of its rows.
pub async fn route(hub: &Hub, request: &Request) -> Result<Reply, ApiError> {
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
    let (rows, next) = hub
        .query(
            &text,
            &query,
            header(CONTINUATION_HEADER),
            header(MAX_ITEM_COUNT_HEADER),
        )
        .await?;
    let mut reply = Reply::ok(rows)?;
    reply
        .headers
        .push((ITEM_TYPE_HEADER, query.item_type().name().to_owned()));
    reply
        .headers
        .extend(next.map(|next| (CONTINUATION_HEADER, next)));
    Ok(reply)
}
