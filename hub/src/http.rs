//! HTTP helpers shared by the HTTPS front door (REST, console) and the workload sockets: server
//! settings with timeouts, bounded body reads, path and query decoding, and IoT Hub's error
//! response. A leaf: depends on the error type and ids only, never on the hub or a door.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use edgetwin_wire::rest as model;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::error::ApiError;
use crate::ids;

/// How long a client may take to send a request's headers (and, once idle between requests, to
/// start the next one).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/1.1 server settings for REST and the workload API: headers must arrive within
/// [`HEADER_TIMEOUT`].
pub fn http1_server() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
}

/// The body of `request`, at most `limit` bytes, within [`BODY_TIMEOUT`]; `None` if too large,
/// unreadable or too slow.
pub async fn read_body(body: Incoming, limit: usize) -> Option<Bytes> {
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => Some(collected.to_bytes()),
        _ => None,
    }
}

/// Splits a raw path on `/` and percent-decodes each segment.
pub fn path_segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// Parses a query string into decoded pairs (first occurrence wins).
pub fn query_pairs(query: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut pairs = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.entry(decode(k)).or_insert_with(|| decode(v));
    }
    pairs
}

/// The IoT Hub error response for `error`.
pub fn error_response(error: &ApiError) -> hyper::Response<Full<Bytes>> {
    let body = model::error_body(
        error.code,
        &error.message,
        &ids::tracking_id(),
        &ids::now_error_timestamp(),
    );
    hyper::Response::builder()
        .status(error.code.http_status())
        .header("Content-Type", "application/json; charset=utf-8")
        .header("iothub-errorcode", error.code.name())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_decoded_after_splitting_so_an_encoded_slash_stays_in_the_id() {
        assert_eq!(
            path_segments("/twins/d%2F1/modules/%24edgeAgent"),
            vec!["twins", "d/1", "modules", "$edgeAgent"]
        );
    }

    #[test]
    fn query_pairs_decode_and_keep_the_first_duplicate() {
        let pairs = query_pairs("api-version=2021-04-12&top=5&top=6&x=a%20b");
        assert_eq!(pairs["top"], "5");
        assert_eq!(pairs["x"], "a b");
    }
}
