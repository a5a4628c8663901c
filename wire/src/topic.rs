//! MQTT client ids, usernames and topic names (docs/spec/iothub-device-protocol.md §3.2 and §4).
//!
//! Ids are never percent-encoded inside client ids, usernames or topics; property bags are.
//! Subscription filters are classified as literal strings — `#` and `+` are legal id
//! characters, so no wildcard matching is ever applied to the id part (§4.12).

use crate::sas::STRICT;
use percent_encoding::{percent_decode_str, utf8_percent_encode};
use thiserror::Error;

/// Why a topic, username or property bag was rejected. Names the offending input
/// (topics and usernames carry no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Not one of the documented IoT Hub topics.
    #[error("unsupported topic `{0}`")]
    UnknownTopic(String),
    /// A telemetry topic naming a different device/module than the connected identity.
    #[error("topic `{topic}` does not belong to the connected identity `{identity}`")]
    WrongIdentity {
        /// The topic as published.
        topic: String,
        /// `device` or `device/module` of the connection.
        identity: String,
    },
    /// A request topic without the required `$rid` property.
    #[error("topic `{0}` has no `$rid`")]
    MissingRid(String),
    /// A status code segment that is not a number.
    #[error("topic `{0}` has an invalid status code")]
    InvalidStatus(String),
    /// A `$version` property that is not an integer.
    #[error("topic `{0}` has an invalid `$version`")]
    InvalidVersion(String),
    /// A property bag that cannot be decoded; names the bag and the reason.
    #[error("property bag `{bag}` is malformed: {reason}")]
    MalformedPropertyBag {
        /// The bag as received.
        bag: String,
        /// What is wrong.
        reason: String,
    },
    /// A CONNECT username that does not follow `host/device[/module]/?query`.
    #[error("username `{username}` is malformed: {reason}")]
    MalformedUsername {
        /// The username as received.
        username: String,
        /// What is wrong.
        reason: String,
    },
}

fn pct(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

fn unpct(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// MQTT client id: `{device}` or `{device}/{module}`.
pub fn client_id(device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        Some(m) => format!("{device_id}/{m}"),
        None => device_id.to_owned(),
    }
}

/// CONNECT username: `{host}/{device}[/{module}]/?api-version={v}&DeviceClientType={enc(t)}`.
/// `DeviceClientType` is omitted when `client_type` is empty.
pub fn username(
    host: &str,
    device_id: &str,
    module_id: Option<&str>,
    api_version: &str,
    client_type: &str,
) -> String {
    let mut u = format!(
        "{host}/{}/?api-version={}",
        client_id(device_id, module_id),
        pct(api_version)
    );
    if !client_type.is_empty() {
        u.push_str("&DeviceClientType=");
        u.push_str(&pct(client_type));
    }
    u
}

/// A parsed CONNECT username.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Username {
    /// Host segment (should equal the hub HostName).
    pub host: String,
    /// Device id.
    pub device_id: String,
    /// Module id, for module connections.
    pub module_id: Option<String>,
    /// `api-version` (not validated); `None` when the username has none, which IoT Hub accepts
    /// (see [`parse_username`]).
    pub api_version: Option<String>,
    /// `DeviceClientType`, URL-decoded.
    pub client_type: Option<String>,
    /// `model-id` (PnP), URL-decoded.
    pub model_id: Option<String>,
}

/// Parses a CONNECT username following edgeHub's `MqttUsernameParser`: `host/dev/?q`,
/// `host/dev/mod/?q`, or the legacy forms without `?` (`host/dev[/mod]/api-version=...`).
/// Query values are URL-decoded and the first of duplicates wins.
///
/// Unlike edgeHub, which requires `api-version`, IoT Hub accepts a username without one — bare
/// `host/dev[/mod][/]` included: its MQTT doc only recommends it ("It's recommended to include
/// api-version in the field. Otherwise it could cause unexpected behaviors", "Communicate with an
/// IoT hub using the MQTT protocol"), the doc's own Python sample once used `host/dev` and a
/// Microsoft engineer "tested without using api-version and was able to connect and send\receive
/// messages" (MicrosoftDocs/azure-docs#16306). An empty `api-version` counts as none.
pub fn parse_username(username: &str) -> Result<Username, TopicError> {
    let bad = |reason: &str| TopicError::MalformedUsername {
        username: username.to_owned(),
        reason: reason.to_owned(),
    };
    let segs: Vec<&str> = username.split('/').collect();
    let last = segs.last().copied().unwrap_or_default();
    let (ids, query): (&[&str], String) = if let Some(q) = last.strip_prefix('?') {
        match segs.len() {
            3 | 4 => (&segs[1..segs.len() - 1], q.to_owned()),
            _ => {
                return Err(bad(
                    "expected host/device/?query or host/device/module/?query",
                ))
            }
        }
    } else if let Some(at) = segs.iter().position(|s| s.starts_with("api-version=")) {
        // Legacy: host/dev[/mod]/api-version=...[&|/]DeviceClientType=...
        if !(2..=3).contains(&at) {
            return Err(bad("expected host/device[/module]/api-version=..."));
        }
        let q = segs[at..]
            .join("/")
            .replace("/DeviceClientType=", "&DeviceClientType=")
            .replace("/model-id=", "&model-id=");
        (&segs[1..at], q)
    } else {
        // No query at all: host/dev[/mod], with or without a trailing `/`.
        let end = if segs.len() > 2 && last.is_empty() {
            segs.len() - 1
        } else {
            segs.len()
        };
        if !(2..=3).contains(&end) {
            return Err(bad(
                "expected host/device/?query or host/device/module/?query",
            ));
        }
        (&segs[1..end], String::new())
    };
    let host = segs[0];
    if host.is_empty() {
        return Err(bad("empty host segment"));
    }
    let device_id = ids[0];
    if device_id.is_empty() {
        return Err(bad("empty device id"));
    }
    let module_id = match ids.get(1).copied() {
        Some("") => return Err(bad("empty module id")),
        Some(m) => Some(m.to_owned()),
        None => None,
    };
    let mut api_version = None;
    let mut client_type = None;
    let mut model_id = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = unpct(v).ok_or_else(|| bad(&format!("query value of `{k}` is not valid UTF-8")))?;
        let slot = match k {
            "api-version" => &mut api_version,
            "DeviceClientType" => &mut client_type,
            "model-id" => &mut model_id,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v);
        }
    }
    Ok(Username {
        host: host.to_owned(),
        device_id: device_id.to_owned(),
        module_id,
        api_version: api_version.filter(|v| !v.is_empty()),
        client_type,
        model_id: model_id.filter(|m| !m.is_empty()),
    })
}

/// An ordered MQTT property bag (`k1=v1&k2&k3=`). A key alone has a `None` value; `key=`
/// is an empty string. Keys and values are stored decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PropertyBag(pub Vec<(String, Option<String>)>);

impl PropertyBag {
    /// An empty bag.
    pub fn new() -> Self {
        PropertyBag(Vec::new())
    }

    /// Parses `k=v&k2=v2` (percent-decoding keys and values; `+` stays `+`). Empty pairs are
    /// skipped; an empty key or invalid UTF-8 is an error naming the bag.
    pub fn parse(bag: &str) -> Result<Self, TopicError> {
        let bad = |reason: String| TopicError::MalformedPropertyBag {
            bag: bag.to_owned(),
            reason,
        };
        let mut out = Vec::new();
        for pair in bag.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            let key = unpct(k).ok_or_else(|| bad(format!("key `{k}` is not valid UTF-8")))?;
            if key.is_empty() {
                return Err(bad("empty key".to_owned()));
            }
            let value = match v {
                Some(v) => Some(
                    unpct(v).ok_or_else(|| bad(format!("value of `{key}` is not valid UTF-8")))?,
                ),
                None => None,
            };
            out.push((key, value));
        }
        Ok(PropertyBag(out))
    }

    /// Encodes as `k=v&k2` with keys and values percent-encoded (only alphanumerics and
    /// `-_.~` are left as is, so `$.on` becomes `%24.on` and `/` becomes `%2F`).
    pub fn encode(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{}={}", pct(k), pct(v)),
                None => pct(k),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The value of the first entry with this key; `None` if absent or valueless.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// True if the key is present (with or without a value).
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Sets `key=value`, replacing the first existing entry in place or appending.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.set(key.into(), Some(value.into()));
    }

    /// Sets a valueless `key`, replacing the first existing entry in place or appending.
    pub fn insert_flag(&mut self, key: impl Into<String>) {
        self.set(key.into(), None);
    }

    fn set(&mut self, key: String, value: Option<String>) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes all entries with this key, returning the first one's value.
    pub fn remove(&mut self, key: &str) -> Option<Option<String>> {
        let first = self.0.iter().position(|(k, _)| k == key)?;
        let value = self.0[first].1.clone();
        self.0.retain(|(k, _)| k != key);
        Some(value)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over `(key, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

/// System property key of a module output name.
pub const OUTPUT_NAME_PROPERTY: &str = "$.on";

/// What a client publishes, as seen by the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Telemetry or module output (`output` from `$.on`).
    Telemetry {
        /// Module output name, from `$.on`.
        output: Option<String>,
        /// The decoded property bag.
        properties: PropertyBag,
    },
    /// `$iothub/twin/GET/?$rid={rid}`.
    TwinGet {
        /// Request id, verbatim.
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}` (`$rid` optional: no response).
    ReportedPatch {
        /// Request id, verbatim.
        rid: Option<String>,
    },
    /// `$iothub/methods/res/{status}/?$rid={rid}`.
    MethodResponse {
        /// Application status.
        status: i32,
        /// Request id, verbatim.
        rid: String,
    },
}

const TWIN_GET: &str = "$iothub/twin/GET/";
const REPORTED_PATCH: &str = "$iothub/twin/PATCH/properties/reported";
const METHOD_RES: &str = "$iothub/methods/res/";
const TWIN_RES: &str = "$iothub/twin/res/";
const DESIRED_PATCH: &str = "$iothub/twin/PATCH/properties/desired";
const METHOD_POST: &str = "$iothub/methods/POST/";

/// Raw (not decoded) `k=v` pairs of a `?`-query; `$rid` values are echoed verbatim.
fn raw_query(q: &str) -> Vec<(&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

fn query_value<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    raw_query(q)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Splits `{rest}` of a request topic into its `?query` (accepting `?q`, `/?q`, `` or `/`).
fn request_query(rest: &str) -> Option<&str> {
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('?')
}

/// Parses a PUBLISH topic from a connected identity. Telemetry must name that same identity
/// (`devices/{d}/messages/events[/bag][/]` or `devices/{d}/modules/{m}/messages/events...`).
pub fn parse_inbound(
    topic: &str,
    device_id: &str,
    module_id: Option<&str>,
) -> Result<Inbound, TopicError> {
    let unknown = || TopicError::UnknownTopic(topic.to_owned());
    if let Some(rest) = topic.strip_prefix(TWIN_GET) {
        let q = request_query(rest).ok_or_else(unknown)?;
        let rid = query_value(q, "$rid")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| TopicError::MissingRid(topic.to_owned()))?;
        return Ok(Inbound::TwinGet {
            rid: rid.to_owned(),
        });
    }
    if let Some(rest) = topic.strip_prefix(REPORTED_PATCH) {
        let q = request_query(rest).ok_or_else(unknown)?;
        let rid = query_value(q, "$rid")
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        return Ok(Inbound::ReportedPatch { rid });
    }
    if let Some(rest) = topic.strip_prefix(METHOD_RES) {
        let (status, rest) = rest.split_once('/').ok_or_else(unknown)?;
        let status = status
            .parse::<i32>()
            .map_err(|_| TopicError::InvalidStatus(topic.to_owned()))?;
        let q = rest.strip_prefix('?').ok_or_else(unknown)?;
        let rid = query_value(q, "$rid")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| TopicError::MissingRid(topic.to_owned()))?;
        return Ok(Inbound::MethodResponse {
            status,
            rid: rid.to_owned(),
        });
    }
    if topic.starts_with("devices/") && topic.contains("/messages/events") {
        let own = match module_id {
            Some(m) => format!("devices/{device_id}/modules/{m}/messages/events"),
            None => format!("devices/{device_id}/messages/events"),
        };
        let rest = match topic.strip_prefix(own.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => {
                return Err(TopicError::WrongIdentity {
                    topic: topic.to_owned(),
                    identity: client_id(device_id, module_id),
                })
            }
        };
        let bag = rest.strip_prefix('/').unwrap_or(rest);
        let bag = bag.strip_suffix('/').unwrap_or(bag);
        if bag.contains('/') {
            return Err(unknown());
        }
        let properties = PropertyBag::parse(bag)?;
        let output = properties.get(OUTPUT_NAME_PROPERTY).map(str::to_owned);
        return Ok(Inbound::Telemetry { output, properties });
    }
    Err(unknown())
}

/// A subscription feature, from a SUBSCRIBE filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `$iothub/twin/res/#`.
    TwinResponses,
    /// `$iothub/twin/PATCH/properties/desired/#` (prefix).
    DesiredPatches,
    /// `$iothub/methods/POST/#` (prefix).
    Methods,
    /// `devices/{d}/messages/devicebound/#` (devices only).
    CloudToDevice,
    /// `devices/{d}/modules/{m}/inputs/#` or `devices/{d}/modules/{m}/#` (modules only).
    ModuleInputs,
}

/// Classifies a SUBSCRIBE filter for the connected identity, comparing literal strings (no
/// wildcard matching on ids). `None` for unknown filters or filters of another identity.
pub fn classify_filter(filter: &str, device_id: &str, module_id: Option<&str>) -> Option<Feature> {
    if filter == "$iothub/twin/res/#" {
        return Some(Feature::TwinResponses);
    }
    if filter.starts_with("$iothub/twin/PATCH/properties/desired/") {
        return Some(Feature::DesiredPatches);
    }
    if filter.starts_with(METHOD_POST) {
        return Some(Feature::Methods);
    }
    match module_id {
        None => (filter == format!("devices/{device_id}/messages/devicebound/#"))
            .then_some(Feature::CloudToDevice),
        Some(m) => {
            let base = format!("devices/{device_id}/modules/{m}/");
            let rest = filter.strip_prefix(base.as_str())?;
            (rest == "inputs/#" || rest == "#").then_some(Feature::ModuleInputs)
        }
    }
}

/// The subscription a hub-to-client topic is delivered through, so the hub can publish it at no
/// more than the QoS that subscription was granted (MQTT 3.1.1 §3.8.4).
pub fn feature_of_outgoing(topic: &str) -> Option<Feature> {
    if topic.starts_with(TWIN_RES) {
        Some(Feature::TwinResponses)
    } else if topic.starts_with(DESIRED_PATCH) {
        Some(Feature::DesiredPatches)
    } else if topic.starts_with(METHOD_POST) {
        Some(Feature::Methods)
    } else if topic.contains("/messages/devicebound/") {
        Some(Feature::CloudToDevice)
    } else if topic.contains("/inputs/") {
        Some(Feature::ModuleInputs)
    } else {
        None
    }
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
pub fn twin_response_topic(status: u16, rid: &str, version: Option<i64>) -> String {
    match version {
        Some(v) => format!("{TWIN_RES}{status}/?$rid={rid}&$version={v}"),
        None => format!("{TWIN_RES}{status}/?$rid={rid}"),
    }
}

/// `$iothub/twin/PATCH/properties/desired/?$version={v}`.
pub fn desired_patch_topic(version: i64) -> String {
    format!("{DESIRED_PATCH}/?$version={version}")
}

/// `$iothub/methods/POST/{method}/?$rid={rid}`.
pub fn method_request_topic(method: &str, rid: &str) -> String {
    format!("{METHOD_POST}{method}/?$rid={rid}")
}

/// `$iothub/twin/GET/?$rid={rid}`.
pub fn twin_get_topic(rid: &str) -> String {
    format!("{TWIN_GET}?$rid={rid}")
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
pub fn reported_patch_topic(rid: &str) -> String {
    format!("{REPORTED_PATCH}/?$rid={rid}")
}

/// `$iothub/methods/res/{status}/?$rid={rid}`.
pub fn method_response_topic(status: i32, rid: &str) -> String {
    format!("{METHOD_RES}{status}/?$rid={rid}")
}

/// `devices/{d}[/modules/{m}]/messages/events/{bag}`; a module output is `$.on` in the bag.
pub fn telemetry_topic(
    device_id: &str,
    module_id: Option<&str>,
    properties: &PropertyBag,
) -> String {
    match module_id {
        Some(m) => format!(
            "devices/{device_id}/modules/{m}/messages/events/{}",
            properties.encode()
        ),
        None => format!(
            "devices/{device_id}/messages/events/{}",
            properties.encode()
        ),
    }
}

/// `devices/{d}/messages/devicebound/{bag}` (the `/` after `devicebound` is always present).
pub fn c2d_topic(device_id: &str, properties: &PropertyBag) -> String {
    format!(
        "devices/{device_id}/messages/devicebound/{}",
        properties.encode()
    )
}

/// `devices/{d}/modules/{m}/inputs/{input}/{bag}` (the `/` after the input name is always
/// present; the C SDK requires it). The input name is not encoded.
pub fn input_topic(
    device_id: &str,
    module_id: &str,
    input: &str,
    properties: &PropertyBag,
) -> String {
    format!(
        "devices/{device_id}/modules/{module_id}/inputs/{input}/{}",
        properties.encode()
    )
}

/// What the server publishes, parsed client side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
    TwinResponse {
        /// HTTP-like status.
        status: u16,
        /// Echoed request id.
        rid: String,
        /// New reported version (204 responses).
        version: Option<i64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}`.
    DesiredPatch {
        /// Desired version from the topic (the body carries it too).
        version: Option<i64>,
    },
    /// `$iothub/methods/POST/{method}/?$rid={rid}`.
    MethodRequest {
        /// Method name.
        method: String,
        /// Request id to echo in the response.
        rid: String,
    },
}

/// Parses a server PUBLISH topic (twin response, desired patch or method request).
pub fn parse_outbound(topic: &str) -> Result<Outbound, TopicError> {
    let unknown = || TopicError::UnknownTopic(topic.to_owned());
    let version_of = |q: &str| -> Result<Option<i64>, TopicError> {
        query_value(q, "$version")
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| TopicError::InvalidVersion(topic.to_owned()))
            })
            .transpose()
    };
    if let Some(rest) = topic.strip_prefix(TWIN_RES) {
        let (status, rest) = rest.split_once('/').ok_or_else(unknown)?;
        let status = status
            .parse::<u16>()
            .map_err(|_| TopicError::InvalidStatus(topic.to_owned()))?;
        let q = rest.strip_prefix('?').ok_or_else(unknown)?;
        let rid = query_value(q, "$rid")
            .ok_or_else(|| TopicError::MissingRid(topic.to_owned()))?
            .to_owned();
        return Ok(Outbound::TwinResponse {
            status,
            rid,
            version: version_of(q)?,
        });
    }
    if let Some(rest) = topic.strip_prefix(DESIRED_PATCH) {
        let q = request_query(rest).ok_or_else(unknown)?;
        return Ok(Outbound::DesiredPatch {
            version: version_of(q)?,
        });
    }
    if let Some(rest) = topic.strip_prefix(METHOD_POST) {
        let (method, rest) = rest.split_once('/').ok_or_else(unknown)?;
        let q = rest.strip_prefix('?').ok_or_else(unknown)?;
        let rid = query_value(q, "$rid")
            .ok_or_else(|| TopicError::MissingRid(topic.to_owned()))?
            .to_owned();
        return Ok(Outbound::MethodRequest {
            method: method.to_owned(),
            rid,
        });
    }
    Err(unknown())
}

/// Method names: non-empty printable US-ASCII, excluding
/// `$ ( ) < > @ , ; : \ " / [ ] ? = { }`, SP and HT (docs/spec/iothub-device-protocol.md §4.10).
pub fn is_valid_method_name(name: &str) -> bool {
    const FORBIDDEN: &[u8] = b"$()<>@,;:\\\"/[]?={}";
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !FORBIDDEN.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_the_hub_publishes_maps_to_the_subscription_that_delivers_it() {
        let bag = PropertyBag::default();
        // ids chosen to look like other topics' words
        let (device, module) = ("inputs", "messages");
        let cases = [
            (twin_response_topic(200, "1", None), "$iothub/twin/res/#"),
            (twin_response_topic(204, "2", Some(7)), "$iothub/twin/res/#"),
            (
                desired_patch_topic(3),
                "$iothub/twin/PATCH/properties/desired/#",
            ),
            (method_request_topic("ping", "4"), "$iothub/methods/POST/#"),
            (
                input_topic(device, module, "devicebound", &bag),
                "devices/inputs/modules/messages/inputs/#",
            ),
        ];
        for (topic, filter) in &cases {
            let subscribed = classify_filter(filter, device, Some(module));
            assert!(subscribed.is_some(), "{filter} is a filter the hub knows");
            assert_eq!(feature_of_outgoing(topic), subscribed, "{topic}");
        }
        assert_eq!(
            feature_of_outgoing(&c2d_topic(device, &bag)),
            classify_filter("devices/inputs/messages/devicebound/#", device, None)
        );
        assert_eq!(feature_of_outgoing("devices/d/messages/events/"), None);
    }

    #[test]
    fn client_ids_join_device_and_module_with_a_slash() {
        assert_eq!(client_id("d1", None), "d1");
        assert_eq!(client_id("d1", Some("m1")), "d1/m1");
    }

    #[test]
    fn a_python_style_username_is_built_and_parsed() {
        let ua = "azure-iot-device-iothub-py/2.14.0(3.11.2;Linux 6.1;x86_64)";
        let u = username("h.azure-devices.net", "d1", Some("m1"), "2019-10-01", ua);
        assert_eq!(
            u,
            "h.azure-devices.net/d1/m1/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0%283.11.2%3BLinux%206.1%3Bx86_64%29"
        );
        let p = parse_username(&u).unwrap();
        assert_eq!(p.host, "h.azure-devices.net");
        assert_eq!(p.device_id, "d1");
        assert_eq!(p.module_id.as_deref(), Some("m1"));
        assert_eq!(p.api_version.as_deref(), Some("2019-10-01"));
        assert_eq!(p.client_type.as_deref(), Some(ua));
        assert_eq!(p.model_id, None);
    }

    #[test]
    fn a_c_sdk_username_with_lower_case_hex_and_model_id_is_parsed() {
        let u = "hub.local/dev1/?api-version=2020-09-30&DeviceClientType=iothubclient%2f1.9.0%20(native%3b%20Linux%3b%20aarch64)&model-id=dtmi%3acom%3aexample%3bThermostat%3b1";
        let p = parse_username(u).unwrap();
        assert_eq!(p.device_id, "dev1");
        assert_eq!(p.module_id, None);
        assert_eq!(
            p.client_type.as_deref(),
            Some("iothubclient/1.9.0 (native; Linux; aarch64)")
        );
        assert_eq!(p.model_id.as_deref(), Some("dtmi:com:example;Thermostat;1"));
    }

    #[test]
    fn a_legacy_username_without_question_mark_is_parsed() {
        let p = parse_username(
            "h.net/d1/api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.1",
        )
        .unwrap();
        assert_eq!(p.device_id, "d1");
        assert_eq!(p.api_version.as_deref(), Some("2017-06-30"));
        assert_eq!(
            p.client_type.as_deref(),
            Some("Microsoft.Azure.Devices.Client/1.5.1")
        );
        let p = parse_username("h.net/d1/m1/api-version=2018-06-30&DeviceClientType=x").unwrap();
        assert_eq!(p.module_id.as_deref(), Some("m1"));
    }

    #[test]
    fn a_username_without_api_version_is_parsed_as_iot_hub_accepts_it() {
        let ids = |u: &str| {
            let p = parse_username(u).unwrap();
            assert_eq!(p.api_version, None, "{u}");
            (p.device_id, p.module_id)
        };
        assert_eq!(ids("h.net/d1/?DeviceClientType=x"), ("d1".into(), None));
        assert_eq!(ids("h.net/d1/?api-version="), ("d1".into(), None));
        assert_eq!(ids("h.net/d1/"), ("d1".into(), None));
        assert_eq!(ids("h.net/d1"), ("d1".into(), None));
        assert_eq!(ids("h.net/d1/m1/"), ("d1".into(), Some("m1".into())));
        assert_eq!(ids("h.net/d1/m1"), ("d1".into(), Some("m1".into())));
    }

    #[test]
    fn a_username_with_too_many_or_too_few_segments_is_rejected_naming_it() {
        let err = parse_username("h.net/a/b/c/?api-version=1").unwrap_err();
        assert!(err.to_string().contains("h.net/a/b/c/?api-version=1"));
        for bad in [
            "h.net",
            "h.net/",
            "h.net//",
            "h.net/a/b/c",
            "h.net/a/b/c/",
            "/d1/",
        ] {
            assert!(parse_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn duplicate_query_keys_keep_the_first_value() {
        let p = parse_username("h/d/?api-version=1&api-version=2").unwrap();
        assert_eq!(p.api_version.as_deref(), Some("1"));
    }

    #[test]
    fn a_module_output_topic_yields_the_output_name() {
        let t = "devices/e1/modules/filter/messages/events/%24.on=alerts&%24.ct=application%2Fjson";
        match parse_inbound(t, "e1", Some("filter")).unwrap() {
            Inbound::Telemetry { output, properties } => {
                assert_eq!(output.as_deref(), Some("alerts"));
                assert_eq!(properties.get("$.ct"), Some("application/json"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn all_trailing_slash_variants_of_telemetry_are_accepted() {
        for t in [
            "devices/d1/messages/events",
            "devices/d1/messages/events/",
            "devices/d1/messages/events/a=1",
            "devices/d1/messages/events/a=1/",
        ] {
            let parsed = parse_inbound(t, "d1", None).unwrap();
            assert!(
                matches!(parsed, Inbound::Telemetry { output: None, .. }),
                "{t}"
            );
        }
        match parse_inbound("devices/d1/messages/events/a=1/", "d1", None).unwrap() {
            Inbound::Telemetry { properties, .. } => assert_eq!(properties.get("a"), Some("1")),
            _ => unreachable!(),
        }
    }

    #[test]
    fn telemetry_for_another_identity_is_rejected() {
        let err = parse_inbound("devices/d2/messages/events/", "d1", None).unwrap_err();
        assert!(matches!(err, TopicError::WrongIdentity { .. }));
        assert!(err.to_string().contains("devices/d2/messages/events/"));
        // a device prefix of another id
        assert!(parse_inbound("devices/d10/messages/events/", "d1", None).is_err());
        // module publishing on the device topic and vice versa
        assert!(parse_inbound("devices/d1/messages/events/", "d1", Some("m1")).is_err());
        assert!(parse_inbound("devices/d1/modules/m1/messages/events/", "d1", None).is_err());
        assert!(parse_inbound("devices/d1/modules/m2/messages/events/", "d1", Some("m1")).is_err());
    }

    #[test]
    fn twin_and_method_requests_are_parsed() {
        assert_eq!(
            parse_inbound("$iothub/twin/GET/?$rid=abc-1", "d", None).unwrap(),
            Inbound::TwinGet {
                rid: "abc-1".into()
            }
        );
        assert_eq!(
            parse_inbound("$iothub/twin/PATCH/properties/reported/?$rid=7", "d", None).unwrap(),
            Inbound::ReportedPatch {
                rid: Some("7".into())
            }
        );
        assert_eq!(
            parse_inbound("$iothub/twin/PATCH/properties/reported/", "d", None).unwrap(),
            Inbound::ReportedPatch { rid: None }
        );
        assert_eq!(
            parse_inbound("$iothub/methods/res/200/?$rid=1f", "d", None).unwrap(),
            Inbound::MethodResponse {
                status: 200,
                rid: "1f".into()
            }
        );
        assert_eq!(
            parse_inbound("$iothub/methods/res/-1/?$rid=1f", "d", None).unwrap(),
            Inbound::MethodResponse {
                status: -1,
                rid: "1f".into()
            }
        );
    }

    #[test]
    fn a_twin_get_without_rid_is_rejected() {
        assert_eq!(
            parse_inbound("$iothub/twin/GET/", "d", None).unwrap_err(),
            TopicError::MissingRid("$iothub/twin/GET/".into())
        );
        assert!(matches!(
            parse_inbound("$iothub/methods/res/abc/?$rid=1", "d", None).unwrap_err(),
            TopicError::InvalidStatus(_)
        ));
    }

    #[test]
    fn unknown_topics_are_rejected_naming_the_topic() {
        let err = parse_inbound("$iothub/other", "d", None).unwrap_err();
        assert_eq!(err, TopicError::UnknownTopic("$iothub/other".into()));
        assert!(err.to_string().contains("$iothub/other"));
    }

    #[test]
    fn twin_response_topics_have_the_shapes_the_sdks_parse() {
        assert_eq!(
            twin_response_topic(200, "r1", None),
            "$iothub/twin/res/200/?$rid=r1"
        );
        assert_eq!(
            twin_response_topic(204, "r2", Some(5)),
            "$iothub/twin/res/204/?$rid=r2&$version=5"
        );
        assert_eq!(
            parse_outbound("$iothub/twin/res/204/?$rid=r2&$version=5").unwrap(),
            Outbound::TwinResponse {
                status: 204,
                rid: "r2".into(),
                version: Some(5)
            }
        );
    }

    #[test]
    fn other_topic_builders_round_trip_through_the_parsers() {
        assert_eq!(
            desired_patch_topic(3),
            "$iothub/twin/PATCH/properties/desired/?$version=3"
        );
        assert_eq!(
            parse_outbound(&desired_patch_topic(3)).unwrap(),
            Outbound::DesiredPatch { version: Some(3) }
        );
        assert_eq!(
            method_request_topic("reboot", "a1"),
            "$iothub/methods/POST/reboot/?$rid=a1"
        );
        assert_eq!(
            parse_outbound(&method_request_topic("reboot", "a1")).unwrap(),
            Outbound::MethodRequest {
                method: "reboot".into(),
                rid: "a1".into()
            }
        );
        assert_eq!(twin_get_topic("9"), "$iothub/twin/GET/?$rid=9");
        assert_eq!(
            parse_inbound(&reported_patch_topic("9"), "d", None).unwrap(),
            Inbound::ReportedPatch {
                rid: Some("9".into())
            }
        );
        assert_eq!(
            method_response_topic(404, "z"),
            "$iothub/methods/res/404/?$rid=z"
        );
        assert!(parse_outbound("devices/d/messages/devicebound/").is_err());
    }

    #[test]
    fn telemetry_topics_encode_the_output_name_as_a_system_property() {
        let mut bag = PropertyBag::new();
        bag.insert("$.on", "alerts");
        bag.insert("$.ct", "application/json");
        let t = telemetry_topic("e1", Some("filter"), &bag);
        assert_eq!(
            t,
            "devices/e1/modules/filter/messages/events/%24.on=alerts&%24.ct=application%2Fjson"
        );
        assert_eq!(
            telemetry_topic("d1", None, &PropertyBag::new()),
            "devices/d1/messages/events/"
        );
        assert_eq!(
            c2d_topic("d1", &PropertyBag::new()),
            "devices/d1/messages/devicebound/"
        );
        assert_eq!(
            input_topic("d1", "m1", "in1", &PropertyBag::new()),
            "devices/d1/modules/m1/inputs/in1/"
        );
    }

    #[test]
    fn property_bags_parse_flags_empty_values_and_round_trip() {
        let bag = PropertyBag::parse("a=1&flag&empty=&%24.mid=x%2Fy&sp=a%20b&plus=a+b").unwrap();
        assert_eq!(bag.get("a"), Some("1"));
        assert_eq!(bag.get("flag"), None);
        assert!(bag.contains_key("flag"));
        assert_eq!(bag.get("empty"), Some(""));
        assert_eq!(bag.get("$.mid"), Some("x/y"));
        assert_eq!(bag.get("sp"), Some("a b"));
        assert_eq!(bag.get("plus"), Some("a+b"));
        assert_eq!(PropertyBag::parse(&bag.encode()).unwrap(), bag);
        assert!(PropertyBag::parse("").unwrap().is_empty());
        assert!(PropertyBag::parse("=v").is_err());
    }

    #[test]
    fn property_bag_insert_replaces_in_place() {
        let mut bag = PropertyBag::parse("a=1&b=2").unwrap();
        bag.insert("a", "3");
        bag.insert_flag("c");
        assert_eq!(bag.encode(), "a=3&b=2&c");
        assert_eq!(bag.remove("b"), Some(Some("2".into())));
        assert_eq!(bag.len(), 2);
    }

    #[test]
    fn filters_are_classified_literally_even_with_wildcard_characters_in_ids() {
        assert_eq!(
            classify_filter("$iothub/twin/res/#", "d", None),
            Some(Feature::TwinResponses)
        );
        assert_eq!(
            classify_filter("$iothub/twin/PATCH/properties/desired/#", "d", None),
            Some(Feature::DesiredPatches)
        );
        assert_eq!(
            classify_filter("$iothub/methods/POST/#", "d", None),
            Some(Feature::Methods)
        );
        assert_eq!(
            classify_filter("devices/d#1/messages/devicebound/#", "d#1", None),
            Some(Feature::CloudToDevice)
        );
        assert_eq!(
            classify_filter("devices/d+/modules/m#/inputs/#", "d+", Some("m#")),
            Some(Feature::ModuleInputs)
        );
        assert_eq!(
            classify_filter("devices/d1/modules/m1/#", "d1", Some("m1")),
            Some(Feature::ModuleInputs)
        );
        // wildcards are not expanded, other identities are ignored
        assert_eq!(
            classify_filter("devices/+/messages/devicebound/#", "d1", None),
            None
        );
        assert_eq!(
            classify_filter("devices/d2/messages/devicebound/#", "d1", None),
            None
        );
        assert_eq!(
            classify_filter("devices/d1/messages/devicebound/#", "d1", Some("m1")),
            None
        );
        assert_eq!(
            classify_filter("devices/d1/modules/m1/inputs/#", "d1", None),
            None
        );
        assert_eq!(classify_filter("#", "d1", None), None);
    }

    #[test]
    fn method_names_follow_the_documented_character_rules() {
        assert!(is_valid_method_name("reboot"));
        assert!(is_valid_method_name("thermostat*getMaxMinReport"));
        assert!(!is_valid_method_name(""));
        assert!(!is_valid_method_name("a b"));
        assert!(!is_valid_method_name("a/b"));
        assert!(!is_valid_method_name("$x"));
        assert!(!is_valid_method_name("tab\there"));
        assert!(!is_valid_method_name("é"));
    }
}
