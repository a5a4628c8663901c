//! One service API request as the client sends it, and the answer as it came back. Pure: no
//! I/O, so paths and headers are unit-tested.

use bytes::Bytes;
use edgetwin_wire::rest::Permission;
use edgetwin_wire::{Secret, SERVICE_API_VERSION};
use hyper::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;

/// Path segments are encoded like the Python SDK does: everything but `A-Za-z0-9-_.~`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `text` percent-encoded as a path segment or a query value: IoT Hub ids may hold `#`, `?`,
/// `%`, `+` and `/`, which would otherwise end the path or change the id.
pub fn encode(text: &str) -> percent_encoding::PercentEncode<'_> {
    utf8_percent_encode(text, SEGMENT)
}

/// One service operation to perform.
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// The path, percent-encoded, with any query (`/edgetwin/messages?deviceId=d1`).
    pub path: String,
    /// Whether `api-version` is added to the query (off for a path that carries its own).
    pub api_version: bool,
    /// JSON body.
    pub body: Option<Bytes>,
    /// `If-Match` value.
    pub if_match: Option<String>,
    /// Further request headers (`x-ms-max-item-count`, `x-ms-continuation` of queries).
    pub headers: Vec<(String, String)>,
    /// The `Authorization` value to send instead of the client's own token (a token of the
    /// caller's making); `None` for the client's.
    pub authorization: Option<Secret>,
    /// What the caller is doing, for messages: `create device 'gw-1'`.
    pub operation: String,
    /// The policy permission the operation needs, named in the message of a 401.
    pub permission: Permission,
}

impl Request {
    /// A request of the path made of `segments`, each percent-encoded (`["twins", "d1",
    /// "modules", "$edgeAgent"]`).
    pub fn new(
        method: Method,
        segments: &[&str],
        permission: Permission,
        operation: impl Into<String>,
    ) -> Self {
        let mut path = String::new();
        for segment in segments {
            path.push('/');
            path.extend(encode(segment));
        }
        Request::raw(method, path, permission, operation)
    }

    /// A request of `path` as it is (already encoded; a query allowed).
    pub fn raw(
        method: Method,
        path: impl Into<String>,
        permission: Permission,
        operation: impl Into<String>,
    ) -> Self {
        Request {
            method,
            path: path.into(),
            api_version: true,
            body: None,
            if_match: None,
            headers: Vec::new(),
            authorization: None,
            operation: operation.into(),
            permission,
        }
    }

    /// With `body` as JSON.
    pub fn json(mut self, body: &impl serde::Serialize) -> Self {
        self.body = Some(Bytes::from(serde_json::to_vec(body).unwrap_or_default()));
        self
    }

    /// With the header `name: value`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The request path and query, with `api-version` added unless turned off.
    pub fn path_and_query(&self) -> String {
        match self.api_version {
            false => self.path.clone(),
            true => {
                let sep = if self.path.contains('?') { '&' } else { '?' };
                format!("{}{sep}api-version={SERVICE_API_VERSION}", self.path)
            }
        }
    }
}

/// An answer from the hub, whatever its status.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Every response header (queries answer `x-ms-item-type` and `x-ms-continuation`).
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The header `name` as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    /// The body as JSON, `null` when it is empty or not JSON (for callers that look at what
    /// the hub sent whatever it was).
    pub fn json_or_null(&self) -> serde_json::Value {
        self.json().unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded_one_by_one() {
        let request = Request::new(
            Method::GET,
            &["twins", "d 1/x", "modules", "$edgeAgent"],
            Permission::ServiceConnect,
            "",
        );
        assert_eq!(
            request.path_and_query(),
            format!("/twins/d%201%2Fx/modules/%24edgeAgent?api-version={SERVICE_API_VERSION}")
        );
    }

    #[test]
    fn the_api_version_joins_a_query_the_path_already_has() {
        let request = Request::raw(
            Method::GET,
            "/edgetwin/messages?after=3",
            Permission::ServiceConnect,
            "",
        );
        assert_eq!(
            request.path_and_query(),
            format!("/edgetwin/messages?after=3&api-version={SERVICE_API_VERSION}")
        );
        let own = Request {
            api_version: false,
            ..request
        };
        assert_eq!(own.path_and_query(), "/edgetwin/messages?after=3");
    }
}
