//! Paging of query results: `x-ms-max-item-count` asks for a page size, `x-ms-continuation`
//! carries an opaque token to the next page and comes back only while more rows remain.
//!
//! The token names the position of the next row and a fingerprint of the query text, so a
//! token is refused with another query or when it was not issued by a hub at all.

use base64::Engine as _;

/// Request header: the page size asked for.
pub const MAX_ITEM_COUNT_HEADER: &str = "x-ms-max-item-count";

/// Request and response header: the token of the next page.
pub const CONTINUATION_HEADER: &str = "x-ms-continuation";

/// Page size when the request does not ask for one.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// The largest page served; larger requests get this many (the service "may use a different
/// value if the value specified is not acceptable", REST reference). The query language guide
/// gives SDK page sizes "up to 100".
pub const MAX_PAGE_SIZE: usize = 100;

/// A continuation token that is not one of this query's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("x-ms-continuation is not a continuation token of this query")]
pub struct BadContinuation;

/// The page size for an `x-ms-max-item-count` header value.
pub fn page_size(header: Option<&str>) -> usize {
    header
        .and_then(|h| h.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .map_or(DEFAULT_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE))
}

/// One page of `rows` for `query_text`, starting where `continuation` says (the first row
/// without one), and the token of the next page if rows remain.
pub fn page<T>(
    mut rows: Vec<T>,
    query_text: &str,
    continuation: Option<&str>,
    size: usize,
) -> Result<(Vec<T>, Option<String>), BadContinuation> {
    let start = match continuation.filter(|c| !c.is_empty()) {
        Some(token) => decode(token, query_text)?,
        None => 0,
    };
    if start > rows.len() {
        return Err(BadContinuation);
    }
    let end = start.saturating_add(size).min(rows.len());
    let next = (end < rows.len()).then(|| encode(end, query_text));
    rows.truncate(end);
    Ok((rows.split_off(start), next))
}

fn encode(offset: usize, query_text: &str) -> String {
    let token = format!("{offset}:{:016x}", fingerprint(query_text));
    base64::engine::general_purpose::STANDARD.encode(token)
}

fn decode(token: &str, query_text: &str) -> Result<usize, BadContinuation> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| BadContinuation)?;
    let text = String::from_utf8(bytes).map_err(|_| BadContinuation)?;
    let (offset, print) = text.split_once(':').ok_or(BadContinuation)?;
    if print != format!("{:016x}", fingerprint(query_text)) {
        return Err(BadContinuation);
    }
    offset.parse().map_err(|_| BadContinuation)
}

/// FNV-1a over the query text: stable across runs and builds, unlike `DefaultHasher`.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &str = "SELECT * FROM devices";

    #[test]
    fn the_page_size_defaults_to_100_and_larger_requests_are_capped() {
        assert_eq!(page_size(None), 100);
        assert_eq!(page_size(Some("2")), 2);
        assert_eq!(page_size(Some("5000")), MAX_PAGE_SIZE);
        assert_eq!(page_size(Some("0")), 100);
        assert_eq!(page_size(Some("many")), 100);
    }

    #[test]
    fn following_the_tokens_returns_every_row_once_and_the_last_page_has_no_token() {
        let rows: Vec<u32> = (0..5).collect();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (page, next) = page(rows.clone(), QUERY, token.as_deref(), 2).unwrap();
            assert!(page.len() <= 2);
            seen.extend(page);
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, rows);
        assert_eq!(page(rows, QUERY, None, 5).unwrap().1, None);
    }

    #[test]
    fn a_token_of_another_query_or_not_a_token_at_all_is_refused() {
        let (_, token) = page(vec![1, 2, 3], QUERY, None, 1).unwrap();
        let token = token.unwrap();
        assert!(page(vec![1, 2, 3], QUERY, Some(&token), 1).is_ok());
        assert_eq!(
            page(
                vec![1, 2, 3],
                "SELECT * FROM devices.modules",
                Some(&token),
                1
            ),
            Err(BadContinuation)
        );
        assert_eq!(
            page(vec![1], QUERY, Some("not base64!"), 1),
            Err(BadContinuation)
        );
        assert_eq!(
            page(vec![1], QUERY, Some(&encode(7, QUERY)), 1),
            Err(BadContinuation)
        );
    }
}
