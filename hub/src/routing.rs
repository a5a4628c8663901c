//! Routes between modules, as edgeHub runs them: a module's output is matched against the routes
//! in the device's `$edgeHub` desired properties (`routes.<name>`, a string or `{"route": ...}`)
//! and delivered to the inputs they name. Only what a route sends to `$upstream` reaches IoT Hub
//! (the Event Hub-compatible endpoint): on IoT Edge a module's message goes nowhere no route
//! names ("Learn how to deploy modules and establish routes in IoT Edge": `$upstream` is "IoT
//! Hub"). A device whose `$edgeHub` has no `routes` (no deployment: a module connected straight
//! to the hub, as in the module twin quickstart) sends everything upstream. The endpoint (and the
//! message log, which reads it) keeps only what goes upstream. Delivery is to connected,
//! subscribed modules only: the hub does not store messages for offline modules (edgeHub does).
//!
//! Used by the MQTT door: depends on the hub, live connections and the store; never on a door.

use bytes::Bytes;
use edgetwin_wire::condition::Condition;
use edgetwin_wire::route::{Route, Sink};
use edgetwin_wire::topic::{self, Feature, PropertyBag};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::hub::Hub;
use crate::live::Outgoing;
use crate::store::{IdentityKey, Transaction};

/// A message as a route sees it.
pub struct RoutedMessage<'a> {
    /// The sending device.
    pub device_id: &'a str,
    /// The sending module, if any.
    pub module_id: Option<&'a str>,
    /// The output it was sent on.
    pub output: Option<&'a str>,
    /// Its properties.
    pub properties: &'a PropertyBag,
    /// Its body.
    pub payload: &'a Bytes,
}

/// A route ready to run: the parsed route and its compiled WHERE clause.
type RunnableRoute = (Route, Option<Condition>);

/// The routes of an edge device's `$edgeHub`, or `None` if it has no `routes` (no deployment).
/// Routes that do not parse, or whose WHERE clause uses more of edgeHub's query language than the
/// hub evaluates, are skipped with a warning.
fn routes(tx: &Transaction<'_>, device_id: &str) -> Result<Option<Vec<RunnableRoute>>, ApiError> {
    let Some(twin) = tx.twin(&IdentityKey::module(device_id, "$edgeHub"))? else {
        return Ok(None);
    };
    let Some(Value::Object(routes)) = twin.desired.get("routes") else {
        return Ok(None);
    };
    Ok(Some(
        routes
            .iter()
            .filter_map(|(name, value)| {
                let text = value.as_str().or_else(|| value.get("route")?.as_str())?;
                let skip = |error: &dyn std::fmt::Display| {
                    tracing::warn!(device_id, route = name, %error, "skipping route");
                };
                let route = Route::parse(text).inspect_err(|e| skip(e)).ok()?;
                let condition = match route.compiled_condition() {
                    None => None,
                    Some(compiled) => Some(compiled.inspect_err(|e| skip(e)).ok()?),
                };
                Some((route, condition))
            })
            .collect(),
    ))
}

/// The document a route's WHERE clause is evaluated against: application properties, plus
/// `$connectionDeviceId`, `$connectionModuleId` and `$outputName`.
fn condition_document(message: &RoutedMessage<'_>) -> Value {
    let mut document = Map::new();
    for (key, value) in &message.properties.0 {
        if !key.starts_with("$.") {
            document.insert(
                key.clone(),
                value.clone().map_or(Value::Null, Value::String),
            );
        }
    }
    document.insert("$connectionDeviceId".into(), message.device_id.into());
    if let Some(module) = message.module_id {
        document.insert("$connectionModuleId".into(), module.into());
    }
    if let Some(output) = message.output {
        document.insert("$outputName".into(), output.into());
    }
    Value::Object(document)
}

/// What every delivered copy carries: the sender's properties without the output name and without
/// any `$.cdid`/`$.cmid` of its own (every copy of them: a sender cannot name another sender),
/// then the hub's `$.cdid` and, from a module, `$.cmid`.
fn delivered_properties(message: &RoutedMessage<'_>) -> PropertyBag {
    const SENDER: [&str; 2] = ["$.cdid", "$.cmid"];
    let mut properties = PropertyBag::new();
    for (key, value) in &message.properties.0 {
        if key != topic::OUTPUT_NAME_PROPERTY && !SENDER.contains(&key.as_str()) {
            properties.0.push((key.clone(), value.clone()));
        }
    }
    properties.insert("$.cdid", message.device_id);
    if let Some(sender) = message.module_id {
        properties.insert("$.cmid", sender);
    }
    properties
}

/// Where a module's message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// How many module inputs it was delivered to.
    pub delivered: usize,
    /// Whether it goes to IoT Hub: a route to `$upstream` took it, or the device has no routes.
    pub upstream: bool,
}

/// Delivers `message` to every module input its device's routes name, and says whether it goes
/// upstream. A device whose routes cannot be read sends it upstream (nothing is lost).
pub fn route(hub: &Hub, message: &RoutedMessage<'_>) -> Routed {
    let routes = match hub.read(|tx| routes(tx, message.device_id)) {
        Ok(Some(routes)) => routes,
        Ok(None) => {
            return Routed {
                delivered: 0,
                upstream: true,
            }
        }
        Err(error) => {
            tracing::warn!(device_id = message.device_id, message = %error.message, "cannot read routes");
            return Routed {
                delivered: 0,
                upstream: true,
            };
        }
    };
    let document = condition_document(message);
    let properties = delivered_properties(message);
    let mut routed = Routed {
        delivered: 0,
        upstream: false,
    };
    for (route, condition) in routes {
        if !route.takes(message.module_id, message.output)
            || condition.as_ref().is_some_and(|c| !c.matches(&document))
        {
            continue;
        }
        let Sink::ModuleInput { module, input } = &route.sink else {
            routed.upstream = true;
            continue;
        };
        let target = IdentityKey::module(message.device_id, module).client_id();
        let outgoing = Outgoing {
            topic: topic::input_topic(message.device_id, module, input, &properties),
            payload: message.payload.clone(),
            at_least_once: true,
        };
        match hub
            .live()
            .send(&target, Some(Feature::ModuleInputs), outgoing)
        {
            Ok(()) => routed.delivered += 1,
            Err(why) => tracing::info!(
                target,
                input,
                ?why,
                "routed message not delivered: module offline"
            ),
        }
    }
    routed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_cannot_spoof_the_connection_ids_by_repeating_them() {
        let properties =
            PropertyBag::parse("%24.cmid=evil&a=1&%24.cmid=evil2&%24.cdid=other&%24.cdid=x")
                .unwrap();
        let payload = Bytes::new();
        let message = RoutedMessage {
            device_id: "gw",
            module_id: Some("filter"),
            output: Some("out"),
            properties: &properties,
            payload: &payload,
        };
        let delivered = delivered_properties(&message);
        let values = |key: &str| -> Vec<Option<String>> {
            delivered
                .0
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(values("$.cmid"), [Some("filter".to_owned())]);
        assert_eq!(values("$.cdid"), [Some("gw".to_owned())]);
        assert_eq!(values("a"), [Some("1".to_owned())]);
        let from_device = RoutedMessage {
            module_id: None,
            ..message
        };
        assert!(delivered_properties(&from_device)
            .0
            .iter()
            .all(|(k, _)| k != "$.cmid"));
    }
}
