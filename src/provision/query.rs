//! `edgetwin query`: runs an IoT Hub query and follows its continuation tokens to the last page.

use serde_json::Value;

use super::client::{QueryPage, ServiceClient};
use super::error::ProvisionError;

/// Every row of a query, with the kind the hub gave them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    /// `x-ms-item-type` of the first page (`twin` or `raw`).
    pub item_type: Option<String>,
    /// All rows, in order.
    pub items: Vec<Value>,
    /// How many pages it took.
    pub pages: usize,
}

/// Appends `page` to `result`; the token to ask for next, or `None` when this was the last page.
/// A token equal to the one just used would loop forever and is an error.
pub fn absorb(
    result: &mut QueryResult,
    page: QueryPage,
    previous: Option<&str>,
) -> Result<Option<String>, ProvisionError> {
    if result.pages == 0 {
        result.item_type = page.item_type;
    }
    result.pages += 1;
    result.items.extend(page.items);
    match page.continuation {
        Some(next) if Some(next.as_str()) == previous => Err(ProvisionError::Protocol {
            operation: "run the query".into(),
            detail: "the hub answered the same continuation token twice".into(),
        }),
        next => Ok(next),
    }
}

/// Runs `query`, `page_size` rows per request if given, until the hub sends no continuation.
pub async fn run(
    client: &ServiceClient,
    query: &str,
    page_size: Option<usize>,
) -> Result<QueryResult, ProvisionError> {
    let mut result = QueryResult::default();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .query_page(query, token.as_deref(), page_size)
            .await?;
        match absorb(&mut result, page, token.as_deref())? {
            Some(next) => token = Some(next),
            None => return Ok(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(items: Vec<Value>, item_type: &str, continuation: Option<&str>) -> QueryPage {
        QueryPage {
            items,
            item_type: Some(item_type.into()),
            continuation: continuation.map(str::to_owned),
        }
    }

    #[test]
    fn pages_are_joined_in_order_until_one_comes_without_a_token() {
        let mut result = QueryResult::default();
        let next = absorb(&mut result, page(vec![json!(1)], "twin", Some("t1")), None).unwrap();
        assert_eq!(next.as_deref(), Some("t1"));
        let next = absorb(&mut result, page(vec![json!(2)], "twin", None), Some("t1")).unwrap();
        assert_eq!(next, None);
        assert_eq!(result.items, [json!(1), json!(2)]);
        assert_eq!(
            (result.item_type.as_deref(), result.pages),
            (Some("twin"), 2)
        );
    }

    #[test]
    fn the_same_token_twice_is_an_error_not_an_endless_loop() {
        let mut result = QueryResult {
            item_type: None,
            items: Vec::new(),
            pages: 1,
        };
        let error = absorb(&mut result, page(vec![], "raw", Some("t")), Some("t")).unwrap_err();
        assert!(error.to_string().contains("continuation"), "{error}");
    }
}
