//! The device-facing HTTPS endpoints, from the device's own token or a policy with
//! `DeviceConnect`: `POST /devices/{id}/messages/events`, device-to-cloud messages as IoT Hub's
//! "Send Device Event" takes them (204 No Content once stored, in the message log and the Event
//! Hub-compatible endpoint, as MQTT telemetry), and `/devices/{id}/messages/deviceBound`, the
//! device's cloud-to-device queue ([`super::device_bound`]). Application properties come as `iothub-app-{name}`
//! headers and system properties as `iothub-messageid`, `iothub-correlationid`, `iothub-userid`,
//! `iothub-contenttype`, `iothub-contentencoding`; they are kept as MQTT's property bag names them
//! (`$.mid`, `$.cid`, `$.uid`, `$.ct`, `$.ce`), so the log reads the same whichever protocol sent.
//! A batch (`Content-Type: application/vnd.microsoft.iothub.json`) holds several messages.

use std::collections::BTreeMap;

use edgetwin_wire::rest::{ErrorCode, Permission};
use hyper::Method;

use super::{not_found, Reply, Request};
use crate::error::ApiError;
use crate::events::AuthMethod;
use crate::hub::{Caller, Hub};
use crate::store::IdentityKey;

/// Largest device-to-cloud message IoT Hub accepts (256 KB).
const MAX_MESSAGE: usize = 256 * 1024;

/// The HTTPS header of each system property, with its name in an MQTT property bag.
const SYSTEM_PROPERTIES: [(&str, &str); 5] = [
    ("iothub-messageid", "$.mid"),
    ("iothub-correlationid", "$.cid"),
    ("iothub-userid", "$.uid"),
    ("iothub-contenttype", "$.ct"),
    ("iothub-contentencoding", "$.ce"),
];

/// The prefix of an application property's header.
const APP_PREFIX: &str = "iothub-app-";

/// Routes `POST /devices/{id}/messages/events` and `/devices/{id}/messages/deviceBound…`.
pub async fn route(hub: &Hub, request: &Request, segments: &[&str]) -> Result<Reply, ApiError> {
    let [_, device_id, _, queue, rest @ ..] = segments else {
        return Err(not_found(request));
    };
    match &request.caller {
        Caller::Device(caller) if caller == device_id => {}
        _ => request.require(Permission::DeviceConnect)?,
    }
    if hub.read(|tx| Ok(tx.device(device_id)?.is_none()))? {
        return Err(crate::registry::device_not_found(device_id));
    }
    if queue.eq_ignore_ascii_case("deviceBound") {
        return super::device_bound::route(hub, request, device_id, rest).await;
    }
    match (*queue, rest, &request.method) {
        ("events", [], &Method::POST) => send_event(hub, request, device_id).await,
        _ => Err(not_found(request)),
    }
}

/// Takes the message (or batch), answered once every message of it is stored.
async fn send_event(hub: &Hub, request: &Request, device_id: &str) -> Result<Reply, ApiError> {
    if request.body.len() > MAX_MESSAGE {
        return Err(ApiError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "the message is {} bytes; IoT Hub takes at most {MAX_MESSAGE}",
                request.body.len()
            ),
        ));
    }
    let is_batch = request
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(BATCH_CONTENT_TYPE.as_bytes()));
    let messages = if is_batch {
        batch(&request.body)?
    } else {
        let headers = request
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()));
        vec![(properties_of(headers, "")?, request.body.to_vec())]
    };
    let key = IdentityKey::device(device_id);
    let mut stored = Vec::with_capacity(messages.len());
    for (properties, payload) in messages {
        let properties = properties.into_iter().collect();
        stored.extend(
            hub.accept_telemetry(&key, properties, &payload, true, AuthMethod::Sas)
                .await?,
        );
    }
    for mut committing in stored {
        committing.outcome().await?;
    }
    Reply::no_content()
}

/// The content type of a batch: a JSON array of `{"body": base64, "properties": {header: value}}`
/// (azure-iot-device-http's `sendEventBatch`, SRS_NODE_DEVICE_HTTP_05_003).
const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.json";

/// A message's properties (as the message log keeps them) and its body.
type Received = (BTreeMap<String, Option<String>>, Vec<u8>);

/// One message of a batch.
#[derive(serde::Deserialize)]
struct BatchedMessage {
    body: String,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

/// The messages of a batch, each with its properties and decoded body; an entry that is not a
/// message, or a body that is not base64, refuses the whole batch, naming the entry.
fn batch(body: &[u8]) -> Result<Vec<Received>, ApiError> {
    use base64::Engine as _;
    let entries: Vec<BatchedMessage> = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "a {BATCH_CONTENT_TYPE} body must be a JSON array of {{\"body\": base64, \"properties\": {{…}}}}: {e}"
        ))
    })?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(entry.body.as_bytes())
                .map_err(|e| ApiError::invalid(format!("[{i}].body is not base64: {e}")))?;
            let properties = entry
                .properties
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()));
            Ok((
                properties_of(properties, &format!("[{i}].properties."))?,
                payload,
            ))
        })
        .collect()
}

/// A message's system and application properties from its headers (or a batch entry's
/// `properties`, `at` naming it in errors), named as headers are: lower case. Over HTTPS,
/// "property names and values can only contain ASCII alphanumeric characters, plus
/// {'!', '#', '$', '%', '&', ''', '*', '+', '-', '.', '^', '_', '`', '|', '~'}" (MicrosoftDocs
/// azure-docs, `articles/iot-hub/iot-hub-devguide-messages-construct.md`): an application property
/// with another character refuses the message, naming the property.
fn properties_of<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    at: &str,
) -> Result<BTreeMap<String, Option<String>>, ApiError> {
    let mut properties = BTreeMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let key = match SYSTEM_PROPERTIES.iter().find(|(header, _)| *header == name) {
            Some((_, bag_name)) => (*bag_name).to_owned(),
            None => match name.strip_prefix(APP_PREFIX) {
                Some(app) if !app.is_empty() => {
                    if !app
                        .bytes()
                        .chain(value.iter().copied())
                        .all(is_property_char)
                    {
                        return Err(ApiError::invalid(format!(
                            "{at}{name}: application property names and values sent over HTTPS \
                             can only contain ASCII letters, digits and !#$%&'*+-.^_`|~"
                        )));
                    }
                    app.to_owned()
                }
                _ => continue,
            },
        };
        let value = std::str::from_utf8(value)
            .map_err(|_| ApiError::invalid(format!("{at}{name}: the value is not UTF-8")))?;
        properties.insert(key, Some(value.to_owned()));
    }
    Ok(properties)
}

/// Whether IoT Hub takes `byte` in an application property sent over HTTPS (HTTP's `tchar`).
fn is_property_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_the_properties_mqtt_would_carry_and_others_are_left_out() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("iothub-app-level", "info".parse().unwrap());
        headers.insert("iothub-messageid", "m-1".parse().unwrap());
        headers.insert("iothub-contenttype", "application/json".parse().unwrap());
        headers.insert("iothub-app-", "nameless".parse().unwrap());
        headers.insert("authorization", "SharedAccessSignature x".parse().unwrap());
        headers.insert("content-type", "text/plain".parse().unwrap());
        let expected: BTreeMap<String, Option<String>> = [
            ("$.ct", "application/json"),
            ("$.mid", "m-1"),
            ("level", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
        .collect();
        let pairs = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()));
        assert_eq!(properties_of(pairs, "").unwrap(), expected);
    }

    #[test]
    fn application_properties_outside_the_https_charset_are_refused_naming_them() {
        let ok = [("iothub-app-a.b~c", &b"x-1_y|z`'*"[..])];
        assert!(properties_of(ok.into_iter(), "").is_ok());
        for bad in [
            ("iothub-app-level", &b"two words"[..]),
            ("iothub-app-path", b"a/b"),
            ("iothub-app-k", "\u{e9}t\u{e9}".as_bytes()),
            ("iothub-app-k:v", b"x"),
        ] {
            let error = properties_of([bad].into_iter(), "[3].properties.").unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains(&format!("[3].properties.{}", bad.0)),
                "{error}"
            );
        }
        // system properties keep their own formats (a message id may hold ':')
        let system = [("iothub-messageid", &b"urn:m:1"[..])];
        assert!(properties_of(system.into_iter(), "").is_ok());
    }

    #[test]
    fn a_batch_is_its_messages_or_an_error_naming_the_entry() {
        let messages =
            batch(br#"[{"body": "YQ==", "properties": {"iothub-app-k": "v"}}, {"body": "Yg=="}]"#)
                .unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].1, b"a");
        assert_eq!(messages[0].0["k"], Some("v".to_owned()));
        assert_eq!(messages[1].1, b"b");
        let error = batch(br#"[{"body": "YQ=="}, {"body": "not base64!"}]"#).unwrap_err();
        assert!(error.to_string().contains("[1].body"), "{error}");
    }
}
