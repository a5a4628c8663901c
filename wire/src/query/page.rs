//! Paging of query results: `x-ms-max-item-count` asks for a page size, `x-ms-continuation`
//! carries an opaque token to the next page and comes back only while more rows remain.
//!
//! The token is a [`Cursor`] with a fingerprint of the query text, so a token is refused with
//! another query or when it was not issued by a hub at all.

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

/// Where the next page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Rows already returned (for TOP, and the offset into grouped results).
    pub returned: usize,
    /// The key of the last document returned by a query whose rows follow its documents in
    /// key order: the next page starts after it, without reading what came before.
    pub after: Option<Vec<String>>,
}

impl Cursor {
    /// The cursor of a continuation token of `query_text`; the start without a token.
    pub fn decode(token: Option<&str>, query_text: &str) -> Result<Cursor, BadContinuation> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Cursor::default());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|_| BadContinuation)?;
        let text = String::from_utf8(bytes).map_err(|_| BadContinuation)?;
        let mut parts = text.splitn(3, ':');
        let (Some(returned), Some(print), Some(after)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(BadContinuation);
        };
        if print != format!("{:016x}", fingerprint(query_text)) {
            return Err(BadContinuation);
        }
        Ok(Cursor {
            returned: returned.parse().map_err(|_| BadContinuation)?,
            after: match after {
                "" => None,
                key => Some(serde_json::from_str(key).map_err(|_| BadContinuation)?),
            },
        })
    }

    /// The continuation token of this cursor for `query_text`.
    pub fn encode(&self, query_text: &str) -> String {
        let after = self
            .after
            .as_ref()
            .map(|key| serde_json::Value::from(key.clone()).to_string())
            .unwrap_or_default();
        let token = format!("{}:{:016x}:{after}", self.returned, fingerprint(query_text));
        base64::engine::general_purpose::STANDARD.encode(token)
    }
}

/// The page size for an `x-ms-max-item-count` header value.
pub fn page_size(header: Option<&str>) -> usize {
    header
        .and_then(|h| h.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .map_or(DEFAULT_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE))
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
    fn a_cursor_survives_its_token_and_no_token_is_the_start() {
        let cursor = Cursor {
            returned: 7,
            after: Some(vec!["d:1".into(), "$edgeAgent".into()]),
        };
        let token = cursor.encode(QUERY);
        assert_eq!(Cursor::decode(Some(&token), QUERY), Ok(cursor));
        let plain = Cursor {
            returned: 3,
            after: None,
        };
        assert_eq!(Cursor::decode(Some(&plain.encode(QUERY)), QUERY), Ok(plain));
        assert_eq!(Cursor::decode(None, QUERY), Ok(Cursor::default()));
        assert_eq!(Cursor::decode(Some(""), QUERY), Ok(Cursor::default()));
    }

    #[test]
    fn a_token_of_another_query_or_not_a_token_at_all_is_refused() {
        let token = Cursor::default().encode(QUERY);
        let other = "SELECT * FROM devices.modules";
        assert_eq!(Cursor::decode(Some(&token), other), Err(BadContinuation));
        for bad in ["not base64!", "bm90IGEgdG9rZW4=", "Mzo6"] {
            assert_eq!(
                Cursor::decode(Some(bad), QUERY),
                Err(BadContinuation),
                "{bad}"
            );
        }
    }
}
