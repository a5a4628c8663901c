//! IoT Hub connection strings (docs/spec/iothub-device-protocol.md §1.2).
//!
//! `key=value` pairs joined by `;`, each pair split on the **first** `=` (base64 keys end
//! with `=`). Keys are case-sensitive and limited to the set the Python SDK accepts. Parse
//! errors name the offending key but never contain key material.

use crate::Secret;
use thiserror::Error;

/// A parsed IoT Hub connection string (device, module or service/policy form).
///
/// `Debug` is safe to log: key and signature are [`Secret`]s and print redacted.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConnectionString {
    /// `HostName`: the IoT Hub host (used in usernames and SAS `sr` even via a gateway).
    pub host_name: String,
    /// `DeviceId`.
    pub device_id: Option<String>,
    /// `ModuleId` (module strings only).
    pub module_id: Option<String>,
    /// `SharedAccessKeyName`: policy name (service/policy strings), becomes `skn`.
    pub shared_access_key_name: Option<String>,
    /// `SharedAccessKey`: base64 symmetric key.
    pub shared_access_key: Option<Secret>,
    /// `SharedAccessSignature`: a complete pre-built SAS token.
    pub shared_access_signature: Option<Secret>,
    /// `GatewayHostName`: host to open the TCP/TLS connection to.
    pub gateway_host_name: Option<String>,
    /// `x509=true`: certificate authentication, no key.
    pub x509: bool,
}

/// What kind of principal a connection string describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionStringKind {
    /// `HostName` + `DeviceId` (no `ModuleId`).
    Device,
    /// `HostName` + `DeviceId` + `ModuleId`.
    Module,
    /// `HostName` + `SharedAccessKeyName` + `SharedAccessKey` (policy / service).
    Service,
}

/// Why a connection string was rejected. Never contains key or signature values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectionStringError {
    /// The string was empty (or only `;`).
    #[error("connection string is empty")]
    Empty,
    /// Segment number `index` (0-based, empty segments not counted) has no `=`.
    #[error("connection string segment #{index} is not a key=value pair")]
    MalformedSegment {
        /// 0-based index of the offending non-empty segment.
        index: usize,
    },
    /// A key outside the allowed set (keys are case-sensitive).
    #[error("connection string contains unknown key `{0}`")]
    UnknownKey(String),
    /// A key outside the allowed set that is not named in the message: it is longer than any
    /// key name, or not a word, so it may be a secret (a key pasted without `SharedAccessKey=`).
    #[error(
        "connection string segment #{index} has an unknown key (not shown: it may be a secret; \
         is a `SharedAccessKey=` missing?)"
    )]
    UnknownKeyNotShown {
        /// 0-based index of the offending non-empty segment.
        index: usize,
    },
    /// A key given more than once.
    #[error("connection string contains key `{0}` more than once")]
    DuplicateKey(String),
    /// A required key is absent (or another key requires it).
    #[error("connection string is missing `{0}`")]
    Missing(&'static str),
    /// A key is present with an empty value.
    #[error("connection string key `{0}` has an empty value")]
    EmptyValue(&'static str),
    /// `x509` has a value other than `true`/`false`.
    #[error("connection string key `x509` must be `true` or `false`")]
    InvalidX509,
    /// `SharedAccessKey` together with `x509=true`.
    #[error("connection string must not contain both `SharedAccessKey` and `x509=true`")]
    KeyWithX509,
    /// `SharedAccessKey` is not (non-empty, standard) base64, so no token can be signed with it.
    #[error("connection string key `SharedAccessKey` is not valid base64 (IoT Hub's keys are)")]
    KeyNotBase64,
}

const KEYS: [&str; 8] = [
    "HostName",
    "SharedAccessKeyName",
    "SharedAccessKey",
    "SharedAccessSignature",
    "DeviceId",
    "ModuleId",
    "GatewayHostName",
    "x509",
];

impl ConnectionString {
    /// A device connection string `HostName=..;DeviceId=..;SharedAccessKey=..`.
    pub fn device(host: &str, device_id: &str, key: &Secret) -> Self {
        ConnectionString {
            host_name: host.to_owned(),
            device_id: Some(device_id.to_owned()),
            shared_access_key: Some(key.clone()),
            ..Default::default()
        }
    }

    /// A module connection string `HostName=..;DeviceId=..;ModuleId=..;SharedAccessKey=..`.
    pub fn module(host: &str, device_id: &str, module_id: &str, key: &Secret) -> Self {
        ConnectionString {
            host_name: host.to_owned(),
            device_id: Some(device_id.to_owned()),
            module_id: Some(module_id.to_owned()),
            shared_access_key: Some(key.clone()),
            ..Default::default()
        }
    }

    /// A service/policy connection string `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..`.
    pub fn service(host: &str, policy: &str, key: &Secret) -> Self {
        ConnectionString {
            host_name: host.to_owned(),
            shared_access_key_name: Some(policy.to_owned()),
            shared_access_key: Some(key.clone()),
            ..Default::default()
        }
    }

    /// Device, module or service, from which ids are present.
    pub fn kind(&self) -> ConnectionStringKind {
        match (&self.device_id, &self.module_id) {
            (Some(_), Some(_)) => ConnectionStringKind::Module,
            (Some(_), None) => ConnectionStringKind::Device,
            _ => ConnectionStringKind::Service,
        }
    }

    /// The SAS resource URI for this principal: `host/devices/d[/modules/m]`, or `host`.
    pub fn resource(&self) -> String {
        match (&self.device_id, &self.module_id) {
            (Some(d), Some(m)) => format!("{}/devices/{}/modules/{}", self.host_name, d, m),
            (Some(d), None) => format!("{}/devices/{}", self.host_name, d),
            _ => self.host_name.clone(),
        }
    }

    /// The host to open the network connection to: `GatewayHostName` if set, else `HostName`.
    pub fn connect_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }

    /// The full string including the key (explicitly named, since it is a secret).
    ///
    /// Keys are emitted in the order HostName, DeviceId, ModuleId, SharedAccessKeyName,
    /// SharedAccessKey, SharedAccessSignature, GatewayHostName, x509 (only when true).
    pub fn to_secret_string(&self) -> Secret {
        let mut parts: Vec<String> = vec![format!("HostName={}", self.host_name)];
        let mut push = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        push("DeviceId", self.device_id.as_deref());
        push("ModuleId", self.module_id.as_deref());
        push(
            "SharedAccessKeyName",
            self.shared_access_key_name.as_deref(),
        );
        push(
            "SharedAccessKey",
            self.shared_access_key.as_ref().map(Secret::expose),
        );
        push(
            "SharedAccessSignature",
            self.shared_access_signature.as_ref().map(Secret::expose),
        );
        push("GatewayHostName", self.gateway_host_name.as_deref());
        if self.x509 {
            parts.push("x509=true".to_owned());
        }
        Secret::new(parts.join(";"))
    }
}

/// The error for the unknown key `key` of segment `index`: named when it could be a key name
/// (ASCII letters, no longer than `SharedAccessSignature`), not shown otherwise, since a base64
/// key (even a 16-byte one: 22 characters before its `==`) may have been pasted as a segment.
fn unknown_key(key: &str, index: usize) -> ConnectionStringError {
    let longest = KEYS.iter().map(|k| k.len()).max().unwrap_or_default();
    if key.len() <= longest && key.bytes().all(|b| b.is_ascii_alphabetic()) {
        ConnectionStringError::UnknownKey(key.to_owned())
    } else {
        ConnectionStringError::UnknownKeyNotShown { index }
    }
}

impl std::str::FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut values: [Option<&str>; 8] = [None; 8];
        let mut any = false;
        for (index, segment) in s.split(';').filter(|seg| !seg.is_empty()).enumerate() {
            any = true;
            let (key, value) = segment
                .split_once('=')
                .ok_or(ConnectionStringError::MalformedSegment { index })?;
            let slot = KEYS
                .iter()
                .position(|k| *k == key)
                .ok_or_else(|| unknown_key(key, index))?;
            if values[slot].is_some() {
                return Err(ConnectionStringError::DuplicateKey(key.to_owned()));
            }
            values[slot] = Some(value);
        }
        if !any {
            return Err(ConnectionStringError::Empty);
        }
        // Reject present-but-empty values, naming the key.
        for (i, v) in values.iter().enumerate() {
            if *v == Some("") {
                return Err(ConnectionStringError::EmptyValue(KEYS[i]));
            }
        }
        let [host, key_name, key, sig, device, module, gateway, x509] = values;
        let x509 = match x509 {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(ConnectionStringError::InvalidX509),
        };
        let host = host.ok_or(ConnectionStringError::Missing("HostName"))?;
        if key.is_some() && x509 {
            return Err(ConnectionStringError::KeyWithX509);
        }
        if key.is_some_and(|key| crate::sas::decode_key(key).is_err()) {
            return Err(ConnectionStringError::KeyNotBase64);
        }
        if device.is_some() {
            if key.is_none() && sig.is_none() && !x509 {
                return Err(ConnectionStringError::Missing("SharedAccessKey"));
            }
        } else {
            if module.is_some() {
                return Err(ConnectionStringError::Missing("DeviceId"));
            }
            if key_name.is_none() {
                return Err(ConnectionStringError::Missing("DeviceId"));
            }
            if key.is_none() {
                return Err(ConnectionStringError::Missing("SharedAccessKey"));
            }
        }
        Ok(ConnectionString {
            host_name: host.to_owned(),
            device_id: device.map(str::to_owned),
            module_id: module.map(str::to_owned),
            shared_access_key_name: key_name.map(str::to_owned),
            shared_access_key: key.map(Secret::from),
            shared_access_signature: sig.map(Secret::from),
            gateway_host_name: gateway.map(str::to_owned),
            x509,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA==";

    fn parse(s: &str) -> Result<ConnectionString, ConnectionStringError> {
        s.parse()
    }

    #[test]
    fn a_device_string_parses_and_keeps_the_trailing_equals_of_the_key() {
        let cs = parse(&format!(
            "HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(cs.host_name, "h.azure-devices.net");
        assert_eq!(cs.device_id.as_deref(), Some("d1"));
        assert_eq!(cs.shared_access_key.as_ref().unwrap().expose(), KEY);
        assert_eq!(cs.kind(), ConnectionStringKind::Device);
        assert_eq!(cs.resource(), "h.azure-devices.net/devices/d1");
    }

    #[test]
    fn a_key_that_is_not_base64_is_refused_without_showing_it() {
        for key in ["not-base64!", "a2V5=x", "%%%%"] {
            let error =
                parse(&format!("HostName=h.net;DeviceId=d1;SharedAccessKey={key}")).unwrap_err();
            assert_eq!(error, ConnectionStringError::KeyNotBase64);
            assert!(!error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn a_module_string_via_an_edge_gateway_parses() {
        let cs = parse(&format!(
            "HostName=h.azure-devices.net;GatewayHostName=edge.local;DeviceId=d1;ModuleId=m1;SharedAccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(cs.kind(), ConnectionStringKind::Module);
        assert_eq!(cs.gateway_host_name.as_deref(), Some("edge.local"));
        assert_eq!(cs.connect_host(), "edge.local");
    }

    #[test]
    fn a_service_string_parses() {
        let cs = parse(&format!(
            "HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        ))
        .unwrap();
        assert_eq!(cs.kind(), ConnectionStringKind::Service);
        assert_eq!(cs.shared_access_key_name.as_deref(), Some("iothubowner"));
    }

    #[test]
    fn an_x509_device_string_parses_without_a_key() {
        let cs = parse("HostName=h.azure-devices.net;DeviceId=d1;x509=true").unwrap();
        assert!(cs.x509);
        assert!(cs.shared_access_key.is_none());
    }

    #[test]
    fn a_prebuilt_signature_is_accepted_for_a_device() {
        let cs = parse("HostName=h.net;DeviceId=d1;SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1").unwrap();
        assert!(cs.shared_access_signature.is_some());
    }

    #[test]
    fn empty_segments_are_ignored() {
        let cs = parse(&format!(
            ";HostName=h.net;;DeviceId=d1;SharedAccessKey={KEY};"
        ))
        .unwrap();
        assert_eq!(cs.device_id.as_deref(), Some("d1"));
    }

    #[test]
    fn an_unknown_key_is_rejected_by_name() {
        let err = parse(&format!(
            "HostName=h.net;DeviceId=d1;SharedAccessKey={KEY};ModelId=dtmi:x;1"
        ))
        .unwrap_err();
        assert_eq!(err, ConnectionStringError::UnknownKey("ModelId".into()));
        assert!(err.to_string().contains("ModelId"));
    }

    #[test]
    fn an_unknown_key_that_may_be_a_secret_is_not_shown() {
        for pasted in [KEY, "c2VjcmV0LWtleS0xNg==", "a+b/c==", "ab12cd=x"] {
            let err = parse(&format!("HostName=h.net;DeviceId=d1;{pasted}")).unwrap_err();
            assert_eq!(err, ConnectionStringError::UnknownKeyNotShown { index: 2 });
            let stem = pasted.split('=').next().unwrap();
            assert!(!err.to_string().contains(stem), "{err}");
        }
    }

    #[test]
    fn keys_are_case_sensitive() {
        let err = parse(&format!("hostname=h.net;DeviceId=d1;SharedAccessKey={KEY}")).unwrap_err();
        assert_eq!(err, ConnectionStringError::UnknownKey("hostname".into()));
    }

    #[test]
    fn a_duplicate_key_is_rejected_by_name() {
        let err = parse("HostName=h.net;DeviceId=d1;DeviceId=d2;x509=true").unwrap_err();
        assert_eq!(err, ConnectionStringError::DuplicateKey("DeviceId".into()));
    }

    #[test]
    fn a_key_together_with_x509_is_rejected_without_leaking_the_key() {
        let err = parse(&format!(
            "HostName=h.net;DeviceId=d1;SharedAccessKey={KEY};x509=true"
        ))
        .unwrap_err();
        assert_eq!(err, ConnectionStringError::KeyWithX509);
        assert!(!err.to_string().contains(KEY));
        assert!(!format!("{err:?}").contains(KEY));
    }

    #[test]
    fn missing_parts_are_named() {
        assert_eq!(
            parse(&format!("DeviceId=d1;SharedAccessKey={KEY}")).unwrap_err(),
            ConnectionStringError::Missing("HostName")
        );
        assert_eq!(
            parse("HostName=h.net;DeviceId=d1").unwrap_err(),
            ConnectionStringError::Missing("SharedAccessKey")
        );
        assert_eq!(
            parse("HostName=h.net;SharedAccessKeyName=p").unwrap_err(),
            ConnectionStringError::Missing("SharedAccessKey")
        );
        assert_eq!(
            parse(&format!("HostName=h.net;ModuleId=m;SharedAccessKey={KEY}")).unwrap_err(),
            ConnectionStringError::Missing("DeviceId")
        );
        assert_eq!(
            parse(&format!("HostName=h.net;SharedAccessKey={KEY}")).unwrap_err(),
            ConnectionStringError::Missing("DeviceId")
        );
    }

    #[test]
    fn a_segment_without_equals_is_rejected_by_position() {
        let err = parse("HostName=h.net;garbage").unwrap_err();
        assert_eq!(err, ConnectionStringError::MalformedSegment { index: 1 });
    }

    #[test]
    fn an_empty_value_is_rejected_by_key_name() {
        assert_eq!(
            parse("HostName=;DeviceId=d1;x509=true").unwrap_err(),
            ConnectionStringError::EmptyValue("HostName")
        );
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let cs = ConnectionString::device("h.net", "d1", &Secret::new(KEY));
        assert!(!format!("{cs:?}").contains(KEY));
    }

    #[test]
    fn to_secret_string_emits_keys_in_the_canonical_order_and_round_trips() {
        let mut cs = ConnectionString::module("h.net", "d1", "m1", &Secret::new(KEY));
        cs.gateway_host_name = Some("gw.local".into());
        let s = cs.to_secret_string();
        assert_eq!(
            s.expose(),
            format!("HostName=h.net;DeviceId=d1;ModuleId=m1;SharedAccessKey={KEY};GatewayHostName=gw.local")
        );
        assert_eq!(parse(s.expose()).unwrap(), cs);

        let svc = ConnectionString::service("h.net", "iothubowner", &Secret::new(KEY));
        assert_eq!(
            svc.to_secret_string().expose(),
            format!("HostName=h.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}")
        );
        let x = parse("x509=true;DeviceId=d1;HostName=h.net").unwrap();
        assert_eq!(
            x.to_secret_string().expose(),
            "HostName=h.net;DeviceId=d1;x509=true"
        );
    }
}
