//! The IoT Edge workload API's requests, as aziot-edged answers them (`GET /trust-bundle`,
//! `POST /modules/{m}/genid/{g}/sign`): parsing and checking a request, and the error answers,
//! shared by every server of the API (the hub's per-device sockets, `edgetwin edge`'s
//! per-module sockets). Pure: the server looks the key up and sends the answer.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use percent_encoding::percent_decode_str;

use crate::edge::{
    SignRequest, SignResponse, TrustBundleResponse, WorkloadErrorBody, WORKLOAD_API_VERSIONS,
};

/// Largest sign request body read.
pub const MAX_BODY: usize = 64 * 1024;

/// Which of an identity's keys signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyId {
    /// `primary`.
    Primary,
    /// `secondary`.
    Secondary,
}

/// A request the workload API serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadRequest {
    /// `GET /trust-bundle` (or `/manifest-trust-bundle`).
    TrustBundle,
    /// `POST /modules/{module}/genid/{generation}/sign`: HMAC-SHA256 of `data` with the key.
    Sign {
        /// The module asking.
        module_id: String,
        /// Its generation id.
        generation_id: String,
        /// Which key.
        key: KeyId,
        /// The bytes to sign (decoded from base64).
        data: Vec<u8>,
    },
}

/// An answer: HTTP status and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadAnswer {
    /// HTTP status code.
    pub status: u16,
    /// The JSON body.
    pub body: String,
}

impl WorkloadAnswer {
    /// An error answer with aziot-edged's `{"message": …}` body.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let body = serde_json::to_string(&WorkloadErrorBody {
            message: message.into(),
        })
        .unwrap_or_default();
        WorkloadAnswer { status, body }
    }

    /// 200 with the trust bundle.
    pub fn trust_bundle(pem: &str) -> Self {
        let body = serde_json::to_string(&TrustBundleResponse {
            certificate: pem.to_owned(),
        })
        .unwrap_or_default();
        WorkloadAnswer { status: 200, body }
    }

    /// 200 with `base64(HMAC-SHA256(key, data))`.
    pub fn signed(key: &[u8], data: &[u8]) -> Self {
        let digest = crate::sas::sign_bytes(key, data);
        let body = serde_json::to_string(&SignResponse { digest }).unwrap_or_default();
        WorkloadAnswer { status: 200, body }
    }
}

/// Reads one request: method, path, raw query, whether the body is JSON (no `Content-Type`
/// counts as JSON) and the body. An error is the answer to send.
pub fn parse_request(
    method: &str,
    path: &str,
    query: &str,
    json_body: bool,
    body: &[u8],
) -> Result<WorkloadRequest, WorkloadAnswer> {
    let api_version = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "api-version")
        .map(|(_, v)| percent_decode_str(v).decode_utf8_lossy().into_owned());
    match api_version {
        None => return Err(WorkloadAnswer::error(400, "api-version not specified")),
        Some(v) if !WORKLOAD_API_VERSIONS.contains(&v.as_str()) => {
            return Err(WorkloadAnswer::error(
                400,
                format!("invalid api-version \"{v}\""),
            ))
        }
        Some(_) => {}
    }
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method, segments.as_slice()) {
        ("GET", ["trust-bundle"] | ["manifest-trust-bundle"]) => Ok(WorkloadRequest::TrustBundle),
        ("POST", ["modules", module_id, "genid", generation_id, "sign"]) => {
            if !json_body {
                return Err(WorkloadAnswer::error(
                    400,
                    "missing request body (Content-Type is not JSON)",
                ));
            }
            let request: SignRequest = serde_json::from_slice(body)
                .map_err(|e| WorkloadAnswer::error(422, format!("invalid request body: {e}")))?;
            let key = match request.key_id.as_str() {
                "primary" => KeyId::Primary,
                "secondary" => KeyId::Secondary,
                other => {
                    return Err(WorkloadAnswer::error(
                        400,
                        format!(
                        "invalid parameter: keyId '{other}' is neither 'primary' nor 'secondary'"
                    ),
                    ))
                }
            };
            if request.algo != "HMACSHA256" {
                return Err(WorkloadAnswer::error(
                    400,
                    format!(
                        "invalid parameter: algo '{}' is not HMACSHA256",
                        request.algo
                    ),
                ));
            }
            let data = BASE64
                .decode(request.data.as_bytes())
                .map_err(|_| WorkloadAnswer::error(400, "invalid parameter: data is not base64"))?;
            Ok(WorkloadRequest::Sign {
                module_id: (*module_id).to_owned(),
                generation_id: (*generation_id).to_owned(),
                key,
                data,
            })
        }
        _ => Err(WorkloadAnswer::error(404, "not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "api-version=2019-01-30";

    #[test]
    fn a_sign_request_is_read_with_its_module_generation_key_and_data() {
        let body = br#"{"keyId":"primary","algo":"HMACSHA256","data":"aGVsbG8="}"#;
        let request = parse_request("POST", "/modules/m%241/genid/g1/sign", Q, true, body).unwrap();
        assert_eq!(
            request,
            WorkloadRequest::Sign {
                module_id: "m$1".into(),
                generation_id: "g1".into(),
                key: KeyId::Primary,
                data: b"hello".to_vec(),
            }
        );
        assert_eq!(
            parse_request("GET", "/trust-bundle", Q, true, b"").unwrap(),
            WorkloadRequest::TrustBundle
        );
    }

    #[test]
    fn bad_requests_get_aziot_edgeds_statuses() {
        let sign = "/modules/m/genid/g/sign";
        // method, path, query, JSON body, body, status
        type Case<'a> = (&'a str, &'a str, &'a str, bool, &'a [u8], u16);
        let cases: [Case<'_>; 7] = [
            ("GET", "/trust-bundle", "", true, b"", 400),
            (
                "GET",
                "/trust-bundle",
                "api-version=1999-01-01",
                true,
                b"",
                400,
            ),
            ("POST", sign, Q, false, b"{}", 400),
            ("POST", sign, Q, true, b"{", 422),
            (
                "POST",
                sign,
                Q,
                true,
                br#"{"keyId":"tertiary","algo":"HMACSHA256","data":""}"#,
                400,
            ),
            (
                "POST",
                sign,
                Q,
                true,
                br#"{"keyId":"primary","algo":"MD5","data":""}"#,
                400,
            ),
            ("DELETE", "/trust-bundle", Q, true, b"", 404),
        ];
        for (method, path, query, json, body, status) in cases {
            let answer = parse_request(method, path, query, json, body).unwrap_err();
            assert_eq!(answer.status, status, "{method} {path} {query}");
            assert!(answer.body.starts_with("{\"message\":"), "{}", answer.body);
        }
    }

    #[test]
    fn a_signature_is_the_base64_hmac_of_the_data() {
        let answer = WorkloadAnswer::signed(b"key", b"data");
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body,
            format!(
                "{{\"digest\":\"{}\"}}",
                crate::sas::sign_bytes(b"key", b"data")
            )
        );
    }
}
