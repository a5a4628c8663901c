//! Shared access signature tokens (docs/spec/iothub-device-protocol.md §2, docs/spec/iothub-service-and-manifest.md A1).
//!
//! ```text
//! SharedAccessSignature sr={enc(resource)}&sig={enc(base64 HMAC)}&se={expiry}[&skn={policy}]
//! ```
//!
//! The string to sign is `enc(resource) + "\n" + se`; the HMAC key is the base64-decoded
//! symmetric key. Producers differ in hex case and encoding details, so verification tries the
//! raw `sr` as sent plus the common re-encodings. Signatures and keys are [`Secret`]s and never
//! appear in `Debug` output or error messages.

use crate::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Everything except ASCII alphanumerics and `-_.~` (Python `quote(s, safe="")`).
pub(crate) const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The token prefix (followed by one space).
pub const TOKEN_PREFIX: &str = "SharedAccessSignature";

/// The clock skew edgeHub allows when checking `se` (5 minutes).
pub const DEFAULT_SKEW_SECS: u64 = 300;

/// Why a SAS token or key was rejected. Never contains key or signature material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SasError {
    /// The token does not start with `SharedAccessSignature `.
    #[error("SAS token does not start with `SharedAccessSignature `")]
    MissingPrefix,
    /// A required field (`sr`, `sig`, `se`) is absent.
    #[error("SAS token is missing field `{0}`")]
    MissingField(&'static str),
    /// A field appears twice.
    #[error("SAS token contains field `{0}` more than once")]
    DuplicateField(String),
    /// `se` is not an unsigned integer.
    #[error("SAS token field `se` is not an integer number of seconds")]
    InvalidExpiry,
    /// The symmetric key is not valid (non-empty) base64.
    #[error("shared access key is not valid base64")]
    InvalidKey,
    /// A field is malformed (no `=`, bad percent-encoding, empty resource...). Names the field.
    #[error("SAS token field `{0}` is malformed")]
    MalformedField(String),
}

/// Percent-encodes everything except ASCII alphanumerics and `-_.~`, with upper-case hex
/// (Python `urllib.parse.quote(resource, safe="")`).
pub fn encode_resource(resource: &str) -> String {
    utf8_percent_encode(resource, STRICT).to_string()
}

/// `base64(HMAC-SHA256(key, string_to_sign))`, standard alphabet with padding.
pub fn sign_string(key: &[u8], string_to_sign: &str) -> String {
    sign_bytes(key, string_to_sign.as_bytes())
}

/// `base64(HMAC-SHA256(key, data))` over arbitrary bytes, as the Edge workload API's `sign` computes.
pub fn sign_bytes(key: &[u8], data: &[u8]) -> String {
    STANDARD.encode(hmac_bytes(key, data))
}

fn hmac_bytes(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Base64-decodes a symmetric key. Empty or invalid input is [`SasError::InvalidKey`].
pub fn decode_key(key_b64: &str) -> Result<Vec<u8>, SasError> {
    let bytes = STANDARD
        .decode(key_b64.trim())
        .map_err(|_| SasError::InvalidKey)?;
    if bytes.is_empty() {
        return Err(SasError::InvalidKey);
    }
    Ok(bytes)
}

/// The string a signer (e.g. the Edge workload API) must HMAC: `encode_resource(resource) + "\n" + expiry`.
pub fn string_to_sign(resource: &str, expiry: u64) -> String {
    format!("{}\n{}", encode_resource(resource), expiry)
}

/// Builds a token: `sr=encode_resource(resource)`, `sig` = percent-encoded base64 signature
/// (`+ / =` encoded), `se=expiry`, then `&skn=policy` if given.
pub fn generate_token(
    key_b64: &Secret,
    resource: &str,
    expiry: u64,
    policy: Option<&str>,
) -> Result<Secret, SasError> {
    let key = decode_key(key_b64.expose())?;
    let sig = sign_string(&key, &string_to_sign(resource, expiry));
    Ok(token_from_signature(resource, expiry, &sig, policy))
}

/// Assembles a token from a signature computed elsewhere (workload API); `signature_b64` is
/// the raw base64 digest.
pub fn token_from_signature(
    resource: &str,
    expiry: u64,
    signature_b64: &str,
    policy: Option<&str>,
) -> Secret {
    let mut token = format!(
        "{TOKEN_PREFIX} sr={}&sig={}&se={}",
        encode_resource(resource),
        utf8_percent_encode(signature_b64, STRICT),
        expiry
    );
    if let Some(p) = policy {
        token.push_str("&skn=");
        token.push_str(&encode_resource(p));
    }
    Secret::new(token)
}

/// A parsed SAS token. `Debug` is safe: the signature is a [`Secret`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as sent (still percent-encoded); this is what the producer signed.
    pub raw_resource: String,
    /// `sr` percent-decoded.
    pub resource: String,
    /// `sig` percent-decoded (the base64 digest).
    pub signature: Secret,
    /// `se` as an integer (Unix seconds).
    pub expiry: u64,
    /// `se` percent-decoded text, as used in the string to sign.
    pub expiry_text: String,
    /// `skn` percent-decoded, for policy-signed tokens.
    pub key_name: Option<String>,
}

fn decode_field(name: &str, value: &str) -> Result<String, SasError> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| SasError::MalformedField(name.to_owned()))
}

/// Upper-case percent hex digits turned to lower-case (`%2F` -> `%2f`).
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut pending = 0;
    for c in encoded.chars() {
        if pending > 0 {
            out.push(c.to_ascii_lowercase());
            pending -= 1;
        } else {
            if c == '%' {
                pending = 2;
            }
            out.push(c);
        }
    }
    out
}

/// Python `quote_plus(s, safe="")`: like [`encode_resource`] but space becomes `+`.
fn quote_plus(s: &str) -> String {
    s.split(' ')
        .map(encode_resource)
        .collect::<Vec<_>>()
        .join("+")
}

impl SasToken {
    /// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]` with fields in any order,
    /// case-insensitive names, percent-decoded values (the raw `sr` is kept too).
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let rest = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(SasError::MissingPrefix)?;
        if !rest.starts_with(char::is_whitespace) {
            return Err(SasError::MissingPrefix);
        }
        let rest = rest.trim();
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in rest.split('&').filter(|f| !f.is_empty()) {
            let (name, value) = match field.split_once('=') {
                Some(nv) => nv,
                None => return Err(SasError::MalformedField("<segment without '='>".to_owned())),
            };
            let slot = match name.to_ascii_lowercase().as_str() {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue, // unknown fields are ignored, like edgeHub
            };
            if slot.is_some() {
                return Err(SasError::DuplicateField(name.to_ascii_lowercase()));
            }
            *slot = Some(value);
        }
        let raw_resource = sr.ok_or(SasError::MissingField("sr"))?;
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let se = se.ok_or(SasError::MissingField("se"))?;
        let resource = decode_field("sr", raw_resource)?;
        if resource.is_empty() {
            return Err(SasError::MalformedField("sr".into()));
        }
        let signature = decode_field("sig", sig)?;
        if signature.is_empty() {
            return Err(SasError::MalformedField("sig".into()));
        }
        let expiry_text = decode_field("se", se)?;
        let expiry = expiry_text
            .parse::<u64>()
            .map_err(|_| SasError::InvalidExpiry)?;
        let key_name = skn.map(|v| decode_field("skn", v)).transpose()?;
        Ok(SasToken {
            raw_resource: raw_resource.to_owned(),
            resource,
            signature: Secret::new(signature),
            expiry,
            expiry_text,
            key_name,
        })
    }

    /// True if `base64(HMAC(key, X + "\n" + expiry_text))` equals the signature for `X` in:
    /// the raw `sr`, `encode_resource(resource)` (upper-case hex), the same with lower-case
    /// hex, and the `quote_plus` form (space as `+`) in both cases. Constant-time compare.
    /// An undecodable key or signature yields `false`.
    pub fn verify(&self, key_b64: &Secret) -> bool {
        let Ok(key) = decode_key(key_b64.expose()) else {
            return false;
        };
        self.verify_with(&key)
    }

    /// As [`Self::verify`], but with the key's text itself as the HMAC key, as Event Hubs and
    /// Service Bus clients sign (azure-eventhub's `generate_sas_token` HMACs with
    /// `key.encode("utf-8")`; IoT Hub's SDKs decode the base64 key first).
    pub fn verify_as_event_hubs(&self, key: &Secret) -> bool {
        self.verify_with(key.expose().as_bytes())
    }

    fn verify_with(&self, key: &[u8]) -> bool {
        let Ok(expected) = STANDARD.decode(self.signature.expose()) else {
            return false;
        };
        let upper = encode_resource(&self.resource);
        let plus = quote_plus(&self.resource);
        let mut candidates = vec![
            self.raw_resource.clone(),
            lower_hex(&upper),
            lower_hex(&plus),
            upper,
            plus,
        ];
        candidates.sort();
        candidates.dedup();
        let mut ok = false;
        for candidate in candidates {
            let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
            mac.update(candidate.as_bytes());
            mac.update(b"\n");
            mac.update(self.expiry_text.as_bytes());
            // verify_slice is constant-time; evaluate all candidates regardless.
            ok |= mac.verify_slice(&expected).is_ok();
        }
        ok
    }

    /// `expiry + skew < now`.
    pub fn is_expired(&self, now_unix: u64, skew_secs: u64) -> bool {
        self.expiry.saturating_add(skew_secs) < now_unix
    }

    /// The principal the decoded resource names: `host`, `host/devices/d` or
    /// `host/devices/d/modules/m`. Any other shape is [`SasScope::Hub`] with the first segment
    /// as host (e.g. `host/devices` as a service path prefix). A trailing `/` is ignored.
    pub fn scope(&self) -> Result<SasScope, SasError> {
        let resource = self.resource.strip_suffix('/').unwrap_or(&self.resource);
        let segs: Vec<&str> = resource.split('/').collect();
        let host = segs[0];
        if host.is_empty() {
            return Err(SasError::MalformedField("sr".into()));
        }
        let is = |i: usize, word: &str| segs[i].eq_ignore_ascii_case(word);
        Ok(match segs.len() {
            3 if is(1, "devices") && !segs[2].is_empty() => SasScope::Device {
                host: host.to_owned(),
                device_id: segs[2].to_owned(),
            },
            5 if is(1, "devices")
                && is(3, "modules")
                && !segs[2].is_empty()
                && !segs[4].is_empty() =>
            {
                SasScope::Module {
                    host: host.to_owned(),
                    device_id: segs[2].to_owned(),
                    module_id: segs[4].to_owned(),
                }
            }
            _ => SasScope::Hub {
                host: host.to_owned(),
            },
        })
    }
}

/// Which principal a token's resource covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SasScope {
    /// The hub itself (service tokens), possibly with a path prefix.
    Hub {
        /// Host (first segment of the resource).
        host: String,
    },
    /// `host/devices/{device_id}`.
    Device {
        /// Host.
        host: String,
        /// Device id.
        device_id: String,
    },
    /// `host/devices/{device_id}/modules/{module_id}`.
    Module {
        /// Host.
        host: String,
        /// Device id.
        device_id: String,
        /// Module id.
        module_id: String,
    },
}

impl SasScope {
    /// The host segment of the resource.
    pub fn host(&self) -> &str {
        match self {
            SasScope::Hub { host }
            | SasScope::Device { host, .. }
            | SasScope::Module { host, .. } => host,
        }
    }

    /// The device id, for device and module scopes.
    pub fn device_id(&self) -> Option<&str> {
        match self {
            SasScope::Hub { .. } => None,
            SasScope::Device { device_id, .. } | SasScope::Module { device_id, .. } => {
                Some(device_id)
            }
        }
    }

    /// The module id, for module scopes.
    pub fn module_id(&self) -> Option<&str> {
        match self {
            SasScope::Module { module_id, .. } => Some(module_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn key() -> Secret {
        Secret::new(KEY)
    }

    /// Builds a token exactly like a producer that signed `encoded_sr` would.
    fn manual_token(encoded_sr: &str, expiry: u64, extra: &str) -> String {
        let sig = sign_string(
            &decode_key(KEY).unwrap(),
            &format!("{encoded_sr}\n{expiry}"),
        );
        format!(
            "SharedAccessSignature sr={encoded_sr}&sig={}&se={expiry}{extra}",
            utf8_percent_encode(&sig, STRICT)
        )
    }

    #[test]
    fn encode_resource_matches_python_quote_with_no_safe_characters() {
        assert_eq!(
            encode_resource("myhub.azure-devices.net/devices/d1"),
            "myhub.azure-devices.net%2Fdevices%2Fd1"
        );
        assert_eq!(encode_resource("localhost:8443"), "localhost%3A8443");
        assert_eq!(encode_resource("a b~c_d-e$f#"), "a%20b~c_d-e%24f%23");
    }

    #[test]
    fn a_generated_token_parses_and_verifies() {
        let token = generate_token(
            &key(),
            "myhub.azure-devices.net/devices/d1",
            1_700_000_000,
            None,
        )
        .unwrap();
        assert!(token
            .expose()
            .starts_with("SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fd1&sig="));
        let parsed = SasToken::parse(token.expose()).unwrap();
        assert_eq!(parsed.resource, "myhub.azure-devices.net/devices/d1");
        assert_eq!(
            parsed.raw_resource,
            "myhub.azure-devices.net%2Fdevices%2Fd1"
        );
        assert_eq!(parsed.expiry, 1_700_000_000);
        assert_eq!(parsed.key_name, None);
        assert!(parsed.verify(&key()));
        assert_eq!(
            parsed.scope().unwrap(),
            SasScope::Device {
                host: "myhub.azure-devices.net".into(),
                device_id: "d1".into()
            }
        );
    }

    #[test]
    fn the_signature_in_a_generated_token_is_fully_percent_encoded() {
        let t = token_from_signature("h/devices/d", 5, "ab+/cd==", None);
        assert_eq!(
            t.expose(),
            "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=ab%2B%2Fcd%3D%3D&se=5"
        );
    }

    #[test]
    fn a_python_style_token_with_upper_case_hex_verifies() {
        let t = manual_token("myhub.azure-devices.net%2Fdevices%2Fd1", 1_700_000_000, "");
        assert!(SasToken::parse(&t).unwrap().verify(&key()));
    }

    #[test]
    fn a_c_style_token_with_lower_case_hex_verifies() {
        let t = manual_token(
            "myhub.azure-devices.net%2fdevices%2fd1%2fmodules%2fm1",
            42,
            "",
        );
        let parsed = SasToken::parse(&t).unwrap();
        assert!(parsed.verify(&key()));
        assert_eq!(parsed.scope().unwrap().module_id(), Some("m1"));
    }

    #[test]
    fn a_token_whose_sr_is_unencoded_but_signed_upper_case_verifies() {
        // sr sent raw, signature computed over the encoded form.
        let sig = sign_string(&decode_key(KEY).unwrap(), "h.net%2Fdevices%2Fd1\n99");
        let t = format!(
            "SharedAccessSignature sr=h.net/devices/d1&sig={}&se=99",
            utf8_percent_encode(&sig, STRICT)
        );
        assert!(SasToken::parse(&t).unwrap().verify(&key()));
    }

    #[test]
    fn fields_in_a_different_order_and_case_parse() {
        let t = manual_token("h.net%2Fdevices%2Fd1", 77, "");
        let body = t.strip_prefix("SharedAccessSignature ").unwrap();
        let mut parts: Vec<&str> = body.split('&').collect();
        parts.reverse();
        let reordered = format!("SharedAccessSignature {}", parts.join("&")).replace("se=", "SE=");
        let parsed = SasToken::parse(&reordered).unwrap();
        assert_eq!(parsed.expiry, 77);
        assert!(parsed.verify(&key()));
    }

    #[test]
    fn a_wrong_key_does_not_verify() {
        let token = generate_token(&key(), "h.net/devices/d1", 10, None).unwrap();
        let parsed = SasToken::parse(token.expose()).unwrap();
        assert!(!parsed.verify(&Secret::new("b3RoZXJrZXlvdGhlcmtleW90aGVya2V5b3RoZXJrZXk=")));
        assert!(!parsed.verify(&Secret::new("not base64!")));
    }

    #[test]
    fn a_tampered_expiry_does_not_verify() {
        let t = manual_token("h.net%2Fdevices%2Fd1", 100, "").replace("se=100", "se=200");
        assert!(!SasToken::parse(&t).unwrap().verify(&key()));
    }

    #[test]
    fn expiry_is_detected_with_skew() {
        let parsed = SasToken::parse(&manual_token("h%2Fdevices%2Fd", 1000, "")).unwrap();
        assert!(!parsed.is_expired(999, 0));
        assert!(!parsed.is_expired(1000, 0));
        assert!(parsed.is_expired(1001, 0));
        assert!(!parsed.is_expired(1300, DEFAULT_SKEW_SECS));
        assert!(parsed.is_expired(1301, DEFAULT_SKEW_SECS));
    }

    #[test]
    fn a_service_token_with_skn_and_a_host_with_port_verifies() {
        let token =
            generate_token(&key(), "localhost:8443", 1_900_000_000, Some("iothubowner")).unwrap();
        assert!(token.expose().contains("sr=localhost%3A8443&"));
        assert!(token.expose().ends_with("&skn=iothubowner"));
        let parsed = SasToken::parse(token.expose()).unwrap();
        assert_eq!(parsed.key_name.as_deref(), Some("iothubowner"));
        assert!(parsed.verify(&key()));
        let scope = parsed.scope().unwrap();
        assert_eq!(
            scope,
            SasScope::Hub {
                host: "localhost:8443".into()
            }
        );
        assert_eq!(scope.host(), "localhost:8443");
    }

    #[test]
    fn a_python_service_token_with_partially_encoded_sig_verifies() {
        // Python service SDK: sig = quote(b64) leaves '/' unescaped.
        let sig = sign_string(&decode_key(KEY).unwrap(), "hub.local\n55");
        let enc_sig = utf8_percent_encode(&sig, STRICT)
            .to_string()
            .replace("%2F", "/");
        let t = format!("SharedAccessSignature sr=hub.local&sig={enc_sig}&se=55&skn=service");
        assert!(SasToken::parse(&t).unwrap().verify(&key()));
    }

    #[test]
    fn a_service_path_prefix_is_a_hub_scope() {
        let parsed =
            SasToken::parse(&manual_token("h.net%2Fdevices", 1, "&skn=registryRead")).unwrap();
        assert_eq!(
            parsed.scope().unwrap(),
            SasScope::Hub {
                host: "h.net".into()
            }
        );
    }

    #[test]
    fn debug_of_a_token_does_not_contain_the_signature() {
        let token = generate_token(&key(), "h.net/devices/d1", 10, None).unwrap();
        let parsed = SasToken::parse(token.expose()).unwrap();
        let dbg = format!("{parsed:?}");
        assert!(!dbg.contains(parsed.signature.expose()));
        assert!(!format!("{token:?}").contains("sig="));
    }

    #[test]
    fn malformed_tokens_are_rejected_with_the_field_named() {
        assert_eq!(
            SasToken::parse("sr=a&sig=b&se=1").unwrap_err(),
            SasError::MissingPrefix
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignaturesr=a&sig=b&se=1").unwrap_err(),
            SasError::MissingPrefix
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sig=b&se=1").unwrap_err(),
            SasError::MissingField("sr")
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&se=1").unwrap_err(),
            SasError::MissingField("sig")
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b").unwrap_err(),
            SasError::MissingField("se")
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b&se=soon").unwrap_err(),
            SasError::InvalidExpiry
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sr=c&sig=b&se=1").unwrap_err(),
            SasError::DuplicateField("sr".into())
        );
    }

    #[test]
    fn invalid_keys_are_rejected_without_echoing_them() {
        let err = generate_token(&Secret::new("%%%secret%%%"), "h", 1, None).unwrap_err();
        assert_eq!(err, SasError::InvalidKey);
        assert!(!err.to_string().contains("secret"));
        assert_eq!(decode_key("").unwrap_err(), SasError::InvalidKey);
    }

    #[test]
    fn string_to_sign_is_the_encoded_resource_and_expiry() {
        assert_eq!(
            string_to_sign("h.net/devices/d1/modules/$edgeHub", 12),
            "h.net%2Fdevices%2Fd1%2Fmodules%2F%24edgeHub\n12"
        );
    }
}
