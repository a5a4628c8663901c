//! Routes between modules, as edgeHub runs them: a module's output is matched against the routes
//! in the device's `$edgeHub` desired properties (`routes.<name>`, a string or `{"route": ...}`)
//! and delivered to the inputs they name. `$upstream` messages stay in the message log, which
//! records everything that arrives. Delivery is to connected, subscribed modules only: the hub does
//! not store messages for offline modules (edgeHub does).

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

/// The routes of an edge device's `$edgeHub`. Routes that do not parse, or whose WHERE clause uses
/// more of edgeHub's query language than the hub evaluates, are skipped with a warning.
fn routes(tx: &Transaction<'_>, device_id: &str) -> Result<Vec<RunnableRoute>, ApiError> {
    let Some(twin) = tx.twin(&IdentityKey::module(device_id, "$edgeHub"))? else {
        return Ok(Vec::new());
    };
    let Some(Value::Object(routes)) = twin.desired.get("routes") else {
        return Ok(Vec::new());
    };
    Ok(routes
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
        .collect())
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

/// Delivers `message` to every module input its device's routes name; returns how many.
pub fn route(hub: &Hub, message: &RoutedMessage<'_>) -> usize {
    let routes = match hub.transact(|tx| routes(tx, message.device_id)) {
        Ok(routes) => routes,
        Err(error) => {
            tracing::warn!(device_id = message.device_id, message = %error.message, "cannot read routes");
            return 0;
        }
    };
    let document = condition_document(message);
    // What every delivered copy carries: the properties without the output name, plus the sender.
    let mut properties = PropertyBag::new();
    for (key, value) in &message.properties.0 {
        if key != topic::OUTPUT_NAME_PROPERTY {
            properties.0.push((key.clone(), value.clone()));
        }
    }
    properties.insert("$.cdid", message.device_id);
    if let Some(sender) = message.module_id {
        properties.insert("$.cmid", sender);
    }
    let mut delivered = 0;
    for (route, condition) in routes {
        let Sink::ModuleInput { module, input } = &route.sink else {
            continue;
        };
        if !route.takes(message.module_id, message.output)
            || condition.as_ref().is_some_and(|c| !c.matches(&document))
        {
            continue;
        }
        let target = IdentityKey::module(message.device_id, module).client_id();
        let outgoing = Outgoing {
            topic: topic::input_topic(message.device_id, module, input, &properties),
            payload: message.payload.clone(),
            at_least_once: true,
        };
        match hub
            .live
            .send(&target, Some(Feature::ModuleInputs), outgoing)
        {
            Ok(()) => delivered += 1,
            Err(why) => tracing::info!(
                target,
                input,
                ?why,
                "routed message not delivered: module offline"
            ),
        }
    }
    delivered
}
