//! Messages: what a module sends to an output and receives on an input, with the system
//! properties IoT Hub carries in the topic's property bag (docs/spec/iothub-device-protocol.md §4.7).

use edgetwin_wire::topic::PropertyBag;

/// `$.ct`: content type.
const CONTENT_TYPE: &str = "$.ct";
/// `$.ce`: content encoding.
const CONTENT_ENCODING: &str = "$.ce";
/// `$.mid`: message id.
const MESSAGE_ID: &str = "$.mid";
/// `$.cid`: correlation id.
const CORRELATION_ID: &str = "$.cid";

/// A device-to-cloud message, module output or module input.
///
/// ```
/// use edgetwin_client::Message;
///
/// let message = Message::json(&serde_json::json!({"temperature": 21.5}))
///     .with_message_id("m-1")
///     .with_property("alert", "false");
/// assert_eq!(message.content_type(), Some("application/json"));
/// assert_eq!(message.property("alert"), Some("false"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The payload, opaque to the hub.
    body: Vec<u8>,
    /// `$.ct`, used by IoT Hub routing queries on the body.
    content_type: Option<String>,
    /// `$.ce`, likewise.
    content_encoding: Option<String>,
    /// `$.mid`.
    message_id: Option<String>,
    /// `$.cid`.
    correlation_id: Option<String>,
    /// Application properties, in order.
    properties: Vec<(String, String)>,
}

impl Message {
    /// A message with `body` and no properties.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    /// A JSON body with content type `application/json` and encoding `utf-8`, so that IoT Hub
    /// routing queries can read the body.
    pub fn json(value: &serde_json::Value) -> Self {
        Message::new(value.to_string())
            .with_content_type("application/json")
            .with_content_encoding("utf-8")
    }

    /// Sets `$.ct`.
    pub fn with_content_type(mut self, value: impl Into<String>) -> Self {
        self.content_type = Some(value.into());
        self
    }

    /// Sets `$.ce`.
    pub fn with_content_encoding(mut self, value: impl Into<String>) -> Self {
        self.content_encoding = Some(value.into());
        self
    }

    /// Sets `$.mid`.
    pub fn with_message_id(mut self, value: impl Into<String>) -> Self {
        self.message_id = Some(value.into());
        self
    }

    /// Sets `$.cid`.
    pub fn with_correlation_id(mut self, value: impl Into<String>) -> Self {
        self.correlation_id = Some(value.into());
        self
    }

    /// Adds an application property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// The payload.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The payload, owned.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// `$.ct`.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// `$.ce`.
    pub fn content_encoding(&self) -> Option<&str> {
        self.content_encoding.as_deref()
    }

    /// `$.mid`.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// `$.cid`.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// An application property.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Application properties, in order.
    pub fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The property bag for the topic: system properties first, then application ones.
    pub(crate) fn property_bag(&self) -> PropertyBag {
        let mut bag = PropertyBag::new();
        let system = [
            (CONTENT_TYPE, &self.content_type),
            (CONTENT_ENCODING, &self.content_encoding),
            (MESSAGE_ID, &self.message_id),
            (CORRELATION_ID, &self.correlation_id),
        ];
        for (key, value) in system {
            if let Some(value) = value {
                bag.insert(key, value.as_str());
            }
        }
        for (key, value) in &self.properties {
            bag.insert(key.as_str(), value.as_str());
        }
        bag
    }

    /// A message received with `bag` (system properties other than the four above, such as
    /// `$.on` or `$.cdid`, stay application-visible under their own names).
    pub(crate) fn from_bag(body: Vec<u8>, bag: &PropertyBag) -> Self {
        let mut message = Message::new(body);
        for (key, value) in bag.iter() {
            let value = value.unwrap_or_default().to_owned();
            match key {
                CONTENT_TYPE => message.content_type = Some(value),
                CONTENT_ENCODING => message.content_encoding = Some(value),
                MESSAGE_ID => message.message_id = Some(value),
                CORRELATION_ID => message.correlation_id = Some(value),
                _ => message.properties.push((key.to_owned(), value)),
            }
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_application_properties_survive_a_trip_through_the_property_bag() {
        let sent = Message::new("x")
            .with_content_type("text/plain")
            .with_content_encoding("utf-8")
            .with_message_id("m 1")
            .with_correlation_id("c/2")
            .with_property("k", "v&w");
        let bag = PropertyBag::parse(&sent.property_bag().encode()).unwrap();
        assert_eq!(Message::from_bag(b"x".to_vec(), &bag), sent);
    }
}
