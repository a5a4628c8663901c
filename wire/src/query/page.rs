//! Paging of query results: `x-ms-max-item-count` asks for a page size, `x-ms-continuation`
//! carries an opaque token to the next page and comes back only while more rows remain.
//!
//! The token is a [`Cursor`] signed with HMAC-SHA256 under a [`TokenKey`] the hub draws at
//! start, over the query text and the cursor: a token is refused with another query, when it
//! was changed, or when this hub run did not issue it.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

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

/// Length of a token's MAC (HMAC-SHA256).
const MAC_LEN: usize = 32;

/// A continuation token that is not one of this query's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("x-ms-continuation is not a continuation token of this query")]
pub struct BadContinuation;

/// An `x-ms-max-item-count` that is not a page size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("x-ms-max-item-count '{0}' is not a page size: send a whole number from 1 on (pages hold at most {MAX_PAGE_SIZE} rows), or leave the header out for {DEFAULT_PAGE_SIZE}")]
pub struct BadPageSize(pub String);

/// The secret continuation tokens are signed with.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// A key of these bytes (a hub draws them at random when it starts).
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The MAC of a token's `payload` for `query_text`: the text's length, the text, the payload.
    fn mac(&self, query_text: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(&(query_text.len() as u64).to_be_bytes());
        mac.update(query_text.as_bytes());
        mac.update(payload);
        mac
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Where the next page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Rows already returned (for TOP, and the offset into grouped results).
    pub returned: usize,
    /// The key of the last document returned by a query whose rows follow its documents in
    /// key order: the next page starts after it, without reading what came before.
    pub after: Option<Vec<String>>,
    /// The rows of a grouped or aggregate query the hub computed for its first page and keeps
    /// for the next ones (an id the hub gave them).
    pub rows: Option<u64>,
}

impl Cursor {
    /// The cursor of a continuation token of `query_text` signed with `key`; the start without
    /// a token.
    pub fn decode(
        token: Option<&str>,
        query_text: &str,
        key: &TokenKey,
    ) -> Result<Cursor, BadContinuation> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Cursor::default());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|_| BadContinuation)?;
        if bytes.len() < MAC_LEN {
            return Err(BadContinuation);
        }
        let (tag, payload) = bytes.split_at(MAC_LEN);
        key.mac(query_text, payload)
            .verify_slice(tag)
            .map_err(|_| BadContinuation)?;
        let text = std::str::from_utf8(payload).map_err(|_| BadContinuation)?;
        let mut parts = text.splitn(3, ':');
        let (Some(returned), Some(rows), Some(after)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(BadContinuation);
        };
        Ok(Cursor {
            returned: returned.parse().map_err(|_| BadContinuation)?,
            rows: match rows {
                "" => None,
                id => Some(id.parse().map_err(|_| BadContinuation)?),
            },
            after: match after {
                "" => None,
                key => Some(serde_json::from_str(key).map_err(|_| BadContinuation)?),
            },
        })
    }

    /// The continuation token of this cursor for `query_text`, signed with `key`.
    pub fn encode(&self, query_text: &str, key: &TokenKey) -> String {
        let after = self
            .after
            .as_ref()
            .map(|key| serde_json::Value::from(key.clone()).to_string())
            .unwrap_or_default();
        let rows = self.rows.map(|id| id.to_string()).unwrap_or_default();
        let payload = format!("{}:{rows}:{after}", self.returned);
        let mut token = key
            .mac(query_text, payload.as_bytes())
            .finalize()
            .into_bytes()
            .to_vec();
        token.extend_from_slice(payload.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(token)
    }
}

/// The page size for an `x-ms-max-item-count` header value: [`DEFAULT_PAGE_SIZE`] without
/// one, at most [`MAX_PAGE_SIZE`]. Zero, a negative number or not a number is refused: IoT
/// Hub's SDKs send the header only with a page size they were given (azure-iot-sdk-node
/// `registry.ts`: `if (pageSize) headers['x-ms-max-item-count'] = pageSize`, and its tests
/// assert the header is absent otherwise) and the Azure CLI's IoT extension refuses a
/// `--top` of 0 or -1 before sending (azure-iot-cli-extension `test_device_list_invalid_args`),
/// so no SDK depends on a lenient answer and the hub is not more lenient than IoT Hub is known
/// to be.
pub fn page_size(header: Option<&str>) -> Result<usize, BadPageSize> {
    let Some(header) = header else {
        return Ok(DEFAULT_PAGE_SIZE);
    };
    match header.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n.min(MAX_PAGE_SIZE)),
        _ => Err(BadPageSize(header.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: &str = "SELECT * FROM devices";

    fn key() -> TokenKey {
        TokenKey::new([7; 32])
    }

    #[test]
    fn the_page_size_defaults_to_100_larger_requests_are_capped_and_nonsense_is_refused() {
        assert_eq!(page_size(None), Ok(100));
        assert_eq!(page_size(Some("2")), Ok(2));
        assert_eq!(page_size(Some("5000")), Ok(MAX_PAGE_SIZE));
        for bad in ["0", "-1", "abc", "", "1.5"] {
            let error = page_size(Some(bad)).unwrap_err();
            assert!(error.to_string().contains("x-ms-max-item-count"), "{error}");
        }
    }

    #[test]
    fn a_cursor_survives_its_token_and_no_token_is_the_start() {
        let cursor = Cursor {
            returned: 7,
            after: Some(vec!["d:1".into(), "$edgeAgent".into()]),
            rows: None,
        };
        let token = cursor.encode(QUERY, &key());
        assert_eq!(Cursor::decode(Some(&token), QUERY, &key()), Ok(cursor));
        let grouped = Cursor {
            returned: 300,
            after: None,
            rows: Some(u64::MAX),
        };
        let token = grouped.encode(QUERY, &key());
        assert_eq!(Cursor::decode(Some(&token), QUERY, &key()), Ok(grouped));
        assert_eq!(Cursor::decode(None, QUERY, &key()), Ok(Cursor::default()));
        assert_eq!(
            Cursor::decode(Some(""), QUERY, &key()),
            Ok(Cursor::default())
        );
    }

    #[test]
    fn a_token_of_another_query_another_key_forged_or_not_a_token_at_all_is_refused() {
        let token = Cursor::default().encode(QUERY, &key());
        let other = "SELECT * FROM devices.modules";
        assert_eq!(
            Cursor::decode(Some(&token), other, &key()),
            Err(BadContinuation)
        );
        assert_eq!(
            Cursor::decode(Some(&token), QUERY, &TokenKey::new([8; 32])),
            Err(BadContinuation)
        );
        // The payload of a real token with `returned` raised to the largest number, its MAC
        // kept: what an attacker who read one token could send.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&token)
            .unwrap();
        let mut forged = bytes[..MAC_LEN].to_vec();
        forged.extend_from_slice(format!("{}::", u64::MAX).as_bytes());
        let forged = base64::engine::general_purpose::STANDARD.encode(forged);
        assert_eq!(
            Cursor::decode(Some(&forged), QUERY, &key()),
            Err(BadContinuation)
        );
        for bad in ["not base64!", "bm90IGEgdG9rZW4=", "Mzo6"] {
            assert_eq!(
                Cursor::decode(Some(bad), QUERY, &key()),
                Err(BadContinuation),
                "{bad}"
            );
        }
    }
}
