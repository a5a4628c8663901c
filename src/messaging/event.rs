//! One telemetry event as `edgetwin monitor` prints it. Pure: an AMQP message in, a JSON value
//! or a text line out.
//!
//! The JSON is `az iot hub monitor-events`'s (azure-iot-cli-extension,
//! `azext_iot/monitor/parsers/common_parser.py`): `{"event": {"origin", "module", "interface",
//! "component", "payload", "properties": {"system", "application"}, "annotations"}}`, so that a
//! script written against the Azure CLI reads it unchanged — with `enqueuedTime` added, and one
//! object per line instead of indented (a stream for `jq`, not a document). Where az prints
//! `{{non-decodable payload}}` this prints the bytes in base64 and says so in
//! `payloadEncoding`; where az parses the payload as JSON only when the content type says
//! `application/json`, this also parses an object or array sent without a content type (most
//! devices set none, and az shows those as escaped strings).

use base64::Engine as _;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use serde_json::{json, Map, Value as Json};

/// Which properties to print (az's `--properties sys app anno all`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyKind {
    /// System properties: message id, correlation id, content type and encoding...
    Sys,
    /// Application properties the device set.
    App,
    /// Message annotations: IoT Hub's `iothub-*` and Event Hubs' `x-opt-*`.
    Anno,
    /// All three.
    All,
}

/// The property groups asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shown {
    /// System properties.
    pub system: bool,
    /// Application properties.
    pub application: bool,
    /// Annotations.
    pub annotations: bool,
}

impl Shown {
    /// The groups `kinds` name.
    pub fn from_kinds(kinds: &[PropertyKind]) -> Shown {
        let has = |k| kinds.contains(&k) || kinds.contains(&PropertyKind::All);
        Shown {
            system: has(PropertyKind::Sys),
            application: has(PropertyKind::App),
            annotations: has(PropertyKind::Anno),
        }
    }
}

/// An event read off a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `iothub-connection-device-id`.
    pub origin: String,
    /// `iothub-connection-module-id`, empty for a device's own telemetry.
    pub module: String,
    /// `iothub-interface-name` or `dt-dataschema` (IoT Plug and Play).
    pub interface: String,
    /// `dt-subject` (an IoT Plug and Play component).
    pub component: String,
    /// `iothub-enqueuedtime` (else `x-opt-enqueued-time`), ms since the Unix epoch.
    pub enqueued_ms: Option<i64>,
    /// `x-opt-sequence-number`: where a reconnect resumes.
    pub sequence: Option<i64>,
    /// The body, decoded.
    pub payload: Json,
    /// Whether `payload` is the body in base64 (not text in a known charset).
    pub base64: bool,
    /// System properties by az's names (`message_id`, `content_type`...).
    pub system: Map<String, Json>,
    /// Application properties.
    pub application: Map<String, Json>,
    /// Message annotations.
    pub annotations: Map<String, Json>,
}

/// An AMQP value as JSON: numbers and strings as such, timestamps as ms since the epoch (as
/// az shows them), binary in base64, anything else by its debug text.
fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::String(s) => json!(s),
        Value::Symbol(s) => json!(s.as_str()),
        Value::Ubyte(n) => json!(n),
        Value::Ushort(n) => json!(n),
        Value::Uint(n) => json!(n),
        Value::Ulong(n) => json!(n),
        Value::Byte(n) => json!(n),
        Value::Short(n) => json!(n),
        Value::Int(n) => json!(n),
        Value::Long(n) => json!(n),
        Value::Float(n) => json!(n.into_inner()),
        Value::Double(n) => json!(n.into_inner()),
        Value::Timestamp(t) => json!(t.milliseconds()),
        Value::Binary(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Uuid(u) => json!(edgetwin_wire::ids::uuid_text(u.as_inner())),
        other => json!(format!("{other:?}")),
    }
}

/// A simple (application property) value as JSON.
fn simple_json(value: &SimpleValue) -> Json {
    value_json(&Value::from(value.clone()))
}

/// A message or correlation id as JSON text.
fn id_json(id: &MessageId) -> Json {
    match id {
        MessageId::String(s) => json!(s),
        MessageId::Ulong(n) => json!(n.to_string()),
        MessageId::Uuid(u) => json!(edgetwin_wire::ids::uuid_text(u.as_inner())),
        MessageId::Binary(b) => json!(String::from_utf8_lossy(b)),
    }
}

/// The body's bytes: its data sections, or an AMQP string or binary value.
fn body_bytes(body: &Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(sections) => sections.iter().flat_map(|d| d.0.to_vec()).collect(),
        Body::Value(value) => match &value.0 {
            Value::String(text) => text.clone().into_bytes(),
            Value::Binary(bytes) => bytes.to_vec(),
            other => value_json(other).to_string().into_bytes(),
        },
        Body::Sequence(_) | Body::Empty => Vec::new(),
    }
}

/// Text from `bytes` in the charset `encoding` names (UTF-8 when none; UTF-16 little-endian
/// unless it says BE); `None` when the charset is another one or the bytes are not in it.
fn decode_text(bytes: &[u8], encoding: Option<&str>) -> Option<String> {
    let encoding = encoding.unwrap_or("utf-8").to_ascii_lowercase();
    match encoding.as_str() {
        "utf-8" | "utf8" => String::from_utf8(bytes.to_vec()).ok(),
        "utf-16" | "utf-16le" | "utf-16be" => {
            let pairs = bytes.chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return None;
            }
            let big = encoding.ends_with("be");
            let units: Vec<u16> = pairs
                .map(|c| {
                    if big {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    }
                })
                .collect();
            String::from_utf16(&units)
                .ok()
                .map(|s| s.trim_start_matches('\u{feff}').to_owned())
        }
        _ => None,
    }
}

/// The payload as printed, and whether it is base64: JSON when the content type says so (or
/// none is set and the text is an object or array), else the text, else base64.
pub fn payload(bytes: &[u8], content_type: Option<&str>, encoding: Option<&str>) -> (Json, bool) {
    let Some(text) = decode_text(bytes, encoding) else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        return (Json::String(encoded), true);
    };
    let parse = match content_type {
        Some(ct) => ct.to_ascii_lowercase().contains("json"),
        None => text.trim_start().starts_with(['{', '[']),
    };
    match parse.then(|| serde_json::from_str::<Json>(&text)) {
        Some(Ok(value)) => (value, false),
        _ => (Json::String(text), false),
    }
}

impl Event {
    /// Reads an event as the Event Hub-compatible endpoint delivers it.
    pub fn from_message(message: &Message<Body<Value>>) -> Event {
        let mut annotations = Map::new();
        if let Some(found) = &message.message_annotations {
            for (key, value) in found.iter() {
                let key = match key {
                    OwnedKey::Symbol(s) => s.as_str().to_owned(),
                    OwnedKey::Ulong(n) => n.to_string(),
                };
                annotations.insert(key, value_json(value));
            }
        }
        let text = |key: &str| {
            annotations
                .get(key)
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let interface = match text("iothub-interface-name") {
            name if name.is_empty() => text("dt-dataschema"),
            name => name,
        };
        let number = |key: &str| annotations.get(key).and_then(Json::as_i64);
        let mut system = Map::new();
        let mut content_type = None;
        let mut content_encoding = None;
        if let Some(p) = &message.properties {
            let mut put = |name: &str, value: Option<Json>| {
                if let Some(value) = value {
                    system.insert(name.to_owned(), value);
                }
            };
            put("message_id", p.message_id.as_ref().map(id_json));
            put(
                "user_id",
                p.user_id
                    .as_ref()
                    .map(|b| json!(String::from_utf8_lossy(b))),
            );
            put("to", p.to.as_ref().map(|s| json!(s)));
            put("subject", p.subject.as_ref().map(|s| json!(s)));
            put("reply_to", p.reply_to.as_ref().map(|s| json!(s)));
            put("correlation_id", p.correlation_id.as_ref().map(id_json));
            put(
                "content_type",
                p.content_type.as_ref().map(|s| json!(s.as_str())),
            );
            put(
                "content_encoding",
                p.content_encoding.as_ref().map(|s| json!(s.as_str())),
            );
            put(
                "absolute_expiry_time",
                p.absolute_expiry_time
                    .as_ref()
                    .map(|t| json!(t.milliseconds())),
            );
            put(
                "creation_time",
                p.creation_time.as_ref().map(|t| json!(t.milliseconds())),
            );
            put("group_id", p.group_id.as_ref().map(|s| json!(s)));
            content_type = p.content_type.as_ref().map(|s| s.as_str().to_owned());
            content_encoding = p.content_encoding.as_ref().map(|s| s.as_str().to_owned());
        }
        let mut application = Map::new();
        if let Some(found) = &message.application_properties {
            for (key, value) in found.0.iter() {
                application.insert(key.clone(), simple_json(value));
            }
        }
        let (payload, base64) = payload(
            &body_bytes(&message.body),
            content_type.as_deref(),
            content_encoding.as_deref(),
        );
        Event {
            origin: text("iothub-connection-device-id"),
            module: text("iothub-connection-module-id"),
            interface,
            component: text("dt-subject"),
            enqueued_ms: number("iothub-enqueuedtime").or_else(|| number("x-opt-enqueued-time")),
            sequence: number("x-opt-sequence-number"),
            payload,
            base64,
            system,
            application,
            annotations,
        }
    }

    /// The event as az prints it (see the module's documentation), on one line.
    pub fn to_json(&self, shown: Shown) -> Json {
        let mut event = Map::new();
        event.insert("origin".into(), json!(self.origin));
        event.insert("module".into(), json!(self.module));
        event.insert("interface".into(), json!(self.interface));
        event.insert("component".into(), json!(self.component));
        if let Some(ms) = self.enqueued_ms {
            event.insert("enqueuedTime".into(), json!(super::start::rfc3339(ms)));
        }
        if shown.system || shown.application {
            let mut properties = Map::new();
            if shown.system {
                properties.insert("system".into(), Json::Object(self.system.clone()));
            }
            if shown.application {
                properties.insert("application".into(), Json::Object(self.application.clone()));
            }
            event.insert("properties".into(), Json::Object(properties));
        }
        if shown.annotations {
            event.insert("annotations".into(), Json::Object(self.annotations.clone()));
        }
        event.insert("payload".into(), self.payload.clone());
        if self.base64 {
            event.insert("payloadEncoding".into(), json!("base64"));
        }
        json!({ "event": event })
    }

    /// The event for people: `<time> <device>[/<module>]: <payload>`, then one indented line
    /// per property group asked for.
    pub fn to_text(&self, shown: Shown) -> String {
        let time = self
            .enqueued_ms
            .map(super::start::rfc3339)
            .unwrap_or_else(|| "-".to_owned());
        let who = if self.module.is_empty() {
            self.origin.clone()
        } else {
            format!("{}/{}", self.origin, self.module)
        };
        let payload = match &self.payload {
            Json::String(text) if self.base64 => format!("(base64) {text}"),
            Json::String(text) => text.clone(),
            other => other.to_string(),
        };
        let mut text = format!("{time} {who}: {payload}");
        let groups = [
            (shown.system, "system", &self.system),
            (shown.application, "application", &self.application),
            (shown.annotations, "annotations", &self.annotations),
        ];
        for (_, name, map) in groups.into_iter().filter(|(on, _, _)| *on) {
            let pairs: Vec<String> = map
                .iter()
                .map(|(k, v)| match v {
                    Json::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            let pairs = if pairs.is_empty() {
                "(none)".to_owned()
            } else {
                pairs.join(", ")
            };
            text.push_str(&format!("\n    {name}: {pairs}"));
        }
        text
    }
}

/// Whether `id` matches `pattern`, where `*` is any run of characters and `?` one (az's
/// `--device-id` wildcards).
pub fn matches(pattern: &str, id: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = id.chars().collect();
    go(&p, &s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::{
        ApplicationProperties, Data, MessageAnnotations, Properties,
    };
    use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp};

    fn telemetry(body: &[u8], content_type: Option<&str>) -> Message<Body<Value>> {
        let annotations = MessageAnnotations::builder()
            .insert(
                Symbol::from("iothub-connection-device-id"),
                Value::String("d1".into()),
            )
            .insert(
                Symbol::from("iothub-connection-module-id"),
                Value::String("m1".into()),
            )
            .insert(
                Symbol::from("iothub-enqueuedtime"),
                Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_123)),
            )
            .insert(Symbol::from("x-opt-sequence-number"), Value::Long(41))
            .build();
        Message::builder()
            .message_annotations(annotations)
            .properties(Properties {
                message_id: Some(MessageId::String("mid".into())),
                content_type: content_type.map(Symbol::from),
                ..Properties::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("level", SimpleValue::String("high".into()))
                    .build(),
            )
            .body(Body::Data(vec![Data(Binary::from(body.to_vec()))].into()))
            .build()
    }

    #[test]
    fn an_event_prints_as_az_does_with_the_groups_asked_for() {
        let event = Event::from_message(&telemetry(br#"{"t":21.5}"#, Some("application/json")));
        assert_eq!(event.sequence, Some(41));
        let all = Shown::from_kinds(&[PropertyKind::All]);
        assert_eq!(
            event.to_json(Shown::from_kinds(&[PropertyKind::App])),
            json!({"event": {
                "origin": "d1", "module": "m1", "interface": "", "component": "",
                "enqueuedTime": "2023-11-14T22:13:20.123Z",
                "properties": {"application": {"level": "high"}},
                "payload": {"t": 21.5}
            }})
        );
        let full = event.to_json(all);
        assert_eq!(
            full["event"]["properties"]["system"],
            json!({"message_id": "mid", "content_type": "application/json"})
        );
        assert_eq!(full["event"]["annotations"]["x-opt-sequence-number"], 41);
        assert!(event.to_json(Shown::default())["event"]
            .get("properties")
            .is_none());
        assert_eq!(
            event.to_text(Shown::from_kinds(&[PropertyKind::App])),
            "2023-11-14T22:13:20.123Z d1/m1: {\"t\":21.5}\n    application: level=high"
        );
    }

    #[test]
    fn payloads_are_json_text_or_base64_as_their_type_and_encoding_say() {
        assert_eq!(payload(b"[1,2]", None, None), (json!([1, 2]), false));
        assert_eq!(payload(b"42", None, None), (json!("42"), false));
        assert_eq!(
            payload(b"42", Some("application/json"), None),
            (json!(42), false)
        );
        assert_eq!(
            payload(b"{broken", Some("application/json"), Some("utf-8")),
            (json!("{broken"), false)
        );
        assert_eq!(
            payload(b"{\"a\":1}", Some("text/plain"), None).0,
            json!("{\"a\":1}")
        );
        assert_eq!(
            payload(&[0x68, 0, 0x69, 0], None, Some("utf-16")),
            (json!("hi"), false)
        );
        assert_eq!(
            payload(&[0xff, 0xfe, 0x00], None, None),
            (json!("//4A"), true)
        );
        assert_eq!(payload(b"hi", None, Some("gzip")), (json!("aGk="), true));
    }

    #[test]
    fn ids_match_exactly_or_by_wildcards() {
        assert!(matches("dev-1", "dev-1"));
        assert!(!matches("dev-1", "dev-10"));
        assert!(matches("dev-*", "dev-10"));
        assert!(matches("d?v*", "dav"));
        assert!(!matches("d?v", "dv"));
        assert!(matches("*", ""));
    }
}
