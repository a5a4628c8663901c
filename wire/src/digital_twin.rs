//! IoT Plug and Play digital twins: the digital twin IoT Hub derives from a device twin
//! (`GET /digitaltwins/{id}`) and the desired-property patch a JSON Patch on it
//! (`PATCH /digitaltwins/{id}`) makes.
//!
//! The shapes follow Microsoft's "Understand IoT Plug and Play digital twins"
//! (azure-docs `articles/iot/concepts-digital-twin.md`) and "IoT Plug and Play conventions"
//! (`articles/iot/concepts-convention.md`):
//! - the digital twin is `{"$dtId": id, <property>: value, <component>: {<property>: value,
//!   "$metadata": {...}}, "$metadata": {"$model": modelId, <property>: {...}}}`; a component is
//!   marked by its `$metadata` there and by `"__t": "c"` in the device twin's sections;
//! - a property's value is the reported one; a writable property reported as the convention's
//!   acknowledgement `{"value", "ac", "av", "ad"}` shows `value`, and its metadata gains
//!   `ackCode`, `ackVersion`, `ackDescription`;
//! - a desired property appears only in the metadata, as `desiredValue` and `desiredVersion`;
//!   `lastUpdateTime` is when the device last reported the property (the doc's change event
//!   for a newly desired value carries `desiredValue` and `desiredVersion` alone).
//!
//! Pure: no clock, no I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::twin::Properties;

/// The component marker a device twin section carries (`{"__t": "c"}`).
const COMPONENT_MARKER: (&str, &str) = ("__t", "c");

/// What a digital twin is made of: the device twin's sections and their metadata as stored.
#[derive(Clone, Copy, Debug)]
pub struct TwinSections<'a> {
    /// The device id (`$dtId`).
    pub device_id: &'a str,
    /// The model id the device announced (`""` when none): `$metadata.$model`, left out
    /// when empty (the doc lists `$model` as optional).
    pub model_id: &'a str,
    /// Desired properties, without `$version`/`$metadata`.
    pub desired: &'a Properties,
    /// Per-property desired metadata (`$lastUpdated`, `$lastUpdatedVersion`).
    pub desired_metadata: &'a Properties,
    /// `properties.desired.$version`, the `desiredVersion` of a property without its own.
    pub desired_version: i64,
    /// Reported properties, without `$version`/`$metadata`.
    pub reported: &'a Properties,
    /// Per-property reported metadata (`$lastUpdated`).
    pub reported_metadata: &'a Properties,
}

/// One property's entry in a digital twin's `$metadata`, in the doc's order.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct PropertyMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    desired_value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    desired_version: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_version: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_code: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_description: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_update_time: Option<Value>,
}

/// The properties and metadata of the default component or of one component, being built.
#[derive(Default)]
struct Part {
    values: Map<String, Value>,
    metadata: indexmap_like::Ordered<PropertyMetadata>,
}

impl Part {
    fn reported(&mut self, name: &str, value: &Value, metadata: Option<&Value>) {
        let entry = self.metadata.entry(name);
        let shown = match value {
            Value::Object(ack) if ack.contains_key("value") && ack.contains_key("ac") => {
                entry.ack_code = ack.get("ac").cloned();
                entry.ack_version = ack.get("av").cloned();
                entry.ack_description = ack.get("ad").cloned();
                ack.get("value").cloned().unwrap_or(Value::Null)
            }
            other => other.clone(),
        };
        entry.last_update_time = metadata.and_then(|m| m.get("$lastUpdated")).cloned();
        self.values.insert(name.to_owned(), shown);
    }

    fn desired(&mut self, name: &str, value: &Value, metadata: Option<&Value>, version: i64) {
        if value.is_null() {
            return;
        }
        let entry = self.metadata.entry(name);
        entry.desired_value = Some(value.clone());
        entry.desired_version = Some(
            metadata
                .and_then(|m| m.get("$lastUpdatedVersion"))
                .cloned()
                .unwrap_or(Value::from(version)),
        );
    }

    fn into_value(self, model_id: Option<&str>) -> Map<String, Value> {
        let mut out = self.values;
        let mut metadata = Map::new();
        if let Some(model) = model_id.filter(|m| !m.is_empty()) {
            metadata.insert("$model".into(), Value::from(model));
        }
        for (name, entry) in self.metadata.into_entries() {
            let value = serde_json::to_value(entry).unwrap_or(Value::Null);
            metadata.insert(name, value);
        }
        out.insert("$metadata".into(), Value::Object(metadata));
        out
    }
}

/// A small insertion-ordered map for the metadata entries (a property may get its reported
/// fields first and its desired ones later, and keeps its first position).
mod indexmap_like {
    /// Entries in insertion order.
    pub struct Ordered<T>(Vec<(String, T)>);

    impl<T> Default for Ordered<T> {
        fn default() -> Self {
            Ordered(Vec::new())
        }
    }

    impl<T: Default> Ordered<T> {
        /// The entry of `name`, added empty if missing.
        pub fn entry(&mut self, name: &str) -> &mut T {
            let at = match self.0.iter().position(|(n, _)| n == name) {
                Some(at) => at,
                None => {
                    self.0.push((name.to_owned(), T::default()));
                    self.0.len() - 1
                }
            };
            &mut self.0[at].1
        }

        /// Every entry, in insertion order.
        pub fn into_entries(self) -> Vec<(String, T)> {
            self.0
        }
    }
}

/// Whether a twin section's member is a component (`{"__t": "c", ...}`).
fn marked_component(value: &Value) -> bool {
    value.get(COMPONENT_MARKER.0).and_then(Value::as_str) == Some(COMPONENT_MARKER.1)
}

/// The names of the components in a device twin: the members either section marks.
pub fn component_names(desired: &Properties, reported: &Properties) -> BTreeSet<String> {
    desired
        .iter()
        .chain(reported)
        .filter(|(_, value)| marked_component(value))
        .map(|(name, _)| name.clone())
        .collect()
}

fn is_system(name: &str) -> bool {
    name.starts_with('$') || name == COMPONENT_MARKER.0
}

/// The digital twin IoT Hub serves for a device twin (see the module documentation).
pub fn digital_twin(twin: &TwinSections<'_>) -> Value {
    let mut root = Part::default();
    let mut parts: Vec<(String, Part)> = component_names(twin.desired, twin.reported)
        .into_iter()
        .map(|name| (name, Part::default()))
        .collect();
    let component =
        |parts: &[(String, Part)], name: &str| parts.iter().position(|(n, _)| n == name);
    let member_metadata = |section: &Properties, component: &str, property: &str| {
        section
            .get(component)
            .and_then(|c| c.get(property))
            .cloned()
    };
    for (name, value) in twin.reported.iter().filter(|(n, _)| !is_system(n)) {
        match (component(&parts, name), value) {
            (Some(at), Value::Object(members)) => {
                for (property, v) in members.iter().filter(|(n, _)| !is_system(n)) {
                    let metadata = member_metadata(twin.reported_metadata, name, property);
                    parts[at].1.reported(property, v, metadata.as_ref());
                }
            }
            _ => root.reported(name, value, twin.reported_metadata.get(name)),
        }
    }
    for (name, value) in twin.desired.iter().filter(|(n, _)| !is_system(n)) {
        match (component(&parts, name), value) {
            (Some(at), Value::Object(members)) => {
                for (property, v) in members.iter().filter(|(n, _)| !is_system(n)) {
                    let metadata = member_metadata(twin.desired_metadata, name, property);
                    parts[at]
                        .1
                        .desired(property, v, metadata.as_ref(), twin.desired_version);
                }
            }
            _ => root.desired(
                name,
                value,
                twin.desired_metadata.get(name),
                twin.desired_version,
            ),
        }
    }
    // `$dtId`, the properties, the components, then the twin's own `$metadata`, as in the doc.
    let mut root = root.into_value(Some(twin.model_id));
    let metadata = root.shift_remove("$metadata").unwrap_or(Value::Null);
    let mut out = Map::new();
    out.insert("$dtId".into(), Value::from(twin.device_id));
    out.extend(root);
    for (name, part) in parts {
        out.insert(name, Value::Object(part.into_value(None)));
    }
    out.insert("$metadata".into(), metadata);
    Value::Object(out)
}

/// One operation of a digital twin update (RFC 6902 JSON Patch), as
/// `az iot hub digital-twin update --json-patch` and `DigitalTwinClient.update_digital_twin`
/// send it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatchOperation {
    /// `add`, `replace` or `remove` (IoT Hub maps these onto desired properties).
    pub op: String,
    /// A JSON Pointer: `/property`, `/component/property`, deeper for a field of an object.
    pub path: String,
    /// The value for `add` and `replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// A digital twin update that cannot be applied; names the operation and path at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// An operation other than add, replace and remove.
    #[error("operation {index} ({op} {path}): only add, replace and remove are supported")]
    UnsupportedOp {
        /// Position of the operation in the patch.
        index: usize,
        /// The operation.
        op: String,
        /// Its path.
        path: String,
    },
    /// A path that names no writable property.
    #[error("operation {index} ({op} {path}): {reason}")]
    BadPath {
        /// Position of the operation in the patch.
        index: usize,
        /// The operation.
        op: String,
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The segments of a JSON Pointer (RFC 6901: `~1` is `/`, `~0` is `~`).
fn pointer_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// The desired-property merge patch (JSON merge patch, as a twin `PATCH` applies it) that the
/// digital twin update `ops` makes on a twin whose sections are `desired` and `reported`.
///
/// Each operation is applied in turn to a copy of the desired section — `/p` is the desired
/// property `p`; `/c/p` is property `p` of component `c` when `c` is a component of the twin or
/// not a property of it (the component gets its `"__t": "c"` marker, as the convention's
/// desired payloads show), and field `p` of the object property `c` otherwise; an object value
/// with a `$metadata` member added at `/c` is a component (the .NET SDK's
/// `UpdateOperationsUtility.AppendAddComponentOp` marks components that way) — and the result is
/// the difference between the section before and after: only what changed gets a new
/// `$lastUpdatedVersion`. Removing what is not there changes nothing.
pub fn desired_patch(
    ops: &[PatchOperation],
    desired: &Properties,
    reported: &Properties,
) -> Result<Properties, PatchError> {
    let components = component_names(desired, reported);
    let mut after = desired.clone();
    for (index, operation) in ops.iter().enumerate() {
        let bad = |reason: &str| PatchError::BadPath {
            index,
            op: operation.op.clone(),
            path: operation.path.clone(),
            reason: reason.to_owned(),
        };
        let segments = pointer_segments(&operation.path)
            .filter(|s| s.iter().all(|s| !s.is_empty()))
            .ok_or_else(|| {
                bad("the path must name a property, as /property or /component/property")
            })?;
        if segments
            .iter()
            .any(|s| s.starts_with('$') || s == COMPONENT_MARKER.0)
        {
            return Err(bad(
                "`$` members and the component marker cannot be written",
            ));
        }
        let head = &segments[0];
        let is_property = |name: &str| {
            !components.contains(name)
                && (desired.contains_key(name) || reported.contains_key(name))
        };
        let component = segments.len() > 1 && !is_property(head);
        match operation.op.as_str() {
            "add" | "replace" => {
                let mut value = operation
                    .value
                    .clone()
                    .ok_or_else(|| bad("add and replace need a value"))?;
                let whole_component = segments.len() == 1
                    && value
                        .as_object()
                        .is_some_and(|v| v.contains_key("$metadata"));
                if whole_component {
                    if let Value::Object(members) = &mut value {
                        members.shift_remove("$metadata");
                        members.insert(COMPONENT_MARKER.0.into(), COMPONENT_MARKER.1.into());
                    }
                }
                let mut node = &mut after;
                for (depth, key) in segments[..segments.len() - 1].iter().enumerate() {
                    let slot = node
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !slot.is_object() {
                        *slot = Value::Object(Map::new());
                    }
                    let Value::Object(inner) = slot else {
                        unreachable!("made an object above")
                    };
                    if depth == 0 && component {
                        inner.insert(COMPONENT_MARKER.0.into(), COMPONENT_MARKER.1.into());
                    }
                    node = inner;
                }
                node.insert(segments[segments.len() - 1].clone(), value);
            }
            "remove" => {
                let mut node = Some(&mut after);
                for key in &segments[..segments.len() - 1] {
                    node = node
                        .and_then(|n| n.get_mut(key))
                        .and_then(Value::as_object_mut);
                }
                if let Some(node) = node {
                    node.shift_remove(&segments[segments.len() - 1]);
                }
            }
            _ => {
                return Err(PatchError::UnsupportedOp {
                    index,
                    op: operation.op.clone(),
                    path: operation.path.clone(),
                })
            }
        }
    }
    Ok(difference(desired, &after))
}

/// The merge patch that turns `before` into `after`: changed members with their new value,
/// removed ones as `null`, objects compared member by member.
pub fn difference(before: &Properties, after: &Properties) -> Properties {
    let mut patch = Map::new();
    for (key, old) in before {
        if !after.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        } else if let (Value::Object(old), Some(Value::Object(new))) = (old, after.get(key)) {
            let inner = difference(old, new);
            if !inner.is_empty() {
                patch.insert(key.clone(), Value::Object(inner));
            }
        }
    }
    for (key, new) in after {
        match before.get(key) {
            Some(Value::Object(_)) if new.is_object() => {}
            Some(old) if old == new => {}
            _ => {
                patch.insert(key.clone(), new.clone());
            }
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Properties {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn ops(v: Value) -> Vec<PatchOperation> {
        serde_json::from_value(v).unwrap()
    }

    /// The doc's TemperatureController: a root property, a component with a read-only and an
    /// acknowledged writable property, desired at version 4.
    #[test]
    fn the_digital_twin_of_the_docs_temperature_controller_is_the_docs_own() {
        let desired = obj(json!({"thermostat1": {"__t": "c", "targetTemperature": 21.8}}));
        let desired_metadata = obj(json!({"thermostat1": {
            "$lastUpdated": "t4", "$lastUpdatedVersion": 4,
            "targetTemperature": {"$lastUpdated": "t4", "$lastUpdatedVersion": 4}}}));
        let reported = obj(json!({
            "serialNumber": "alwinexlepaho8329",
            "thermostat1": {"maxTempSinceLastReboot": 25.3, "__t": "c",
                "targetTemperature": {"value": 21.8, "ac": 200, "ad": "Successfully executed patch", "av": 4}}}));
        let reported_metadata = obj(json!({
            "serialNumber": {"$lastUpdated": "2020-07-17T06:10:31.9609233Z"},
            "thermostat1": {"$lastUpdated": "t",
                "maxTempSinceLastReboot": {"$lastUpdated": "2020-07-17T06:10:31.9609233Z"},
                "__t": {"$lastUpdated": "t"},
                "targetTemperature": {"$lastUpdated": "2020-07-17T06:11:04.9309159Z",
                    "value": {"$lastUpdated": "x"}}}}));
        let twin = digital_twin(&TwinSections {
            device_id: "sample-device",
            model_id: "dtmi:com:example:TemperatureController;1",
            desired: &desired,
            desired_metadata: &desired_metadata,
            desired_version: 4,
            reported: &reported,
            reported_metadata: &reported_metadata,
        });
        let expected = json!({
            "$dtId": "sample-device",
            "serialNumber": "alwinexlepaho8329",
            "thermostat1": {
                "maxTempSinceLastReboot": 25.3,
                "targetTemperature": 21.8,
                "$metadata": {
                    "maxTempSinceLastReboot": {"lastUpdateTime": "2020-07-17T06:10:31.9609233Z"},
                    "targetTemperature": {
                        "desiredValue": 21.8, "desiredVersion": 4, "ackVersion": 4, "ackCode": 200,
                        "ackDescription": "Successfully executed patch",
                        "lastUpdateTime": "2020-07-17T06:11:04.9309159Z"}
                }
            },
            "$metadata": {
                "$model": "dtmi:com:example:TemperatureController;1",
                "serialNumber": {"lastUpdateTime": "2020-07-17T06:10:31.9609233Z"}
            }
        });
        assert_eq!(twin, expected);
        let keys: Vec<_> = twin.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["$dtId", "serialNumber", "thermostat1", "$metadata"]);
        let entry = &twin["thermostat1"]["$metadata"]["targetTemperature"];
        let order: Vec<_> = entry.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            order,
            [
                "desiredValue",
                "desiredVersion",
                "ackVersion",
                "ackCode",
                "ackDescription",
                "lastUpdateTime"
            ]
        );
    }

    #[test]
    fn a_twin_without_a_model_or_properties_is_its_id_and_empty_metadata() {
        let empty = Properties::new();
        let twin = digital_twin(&TwinSections {
            device_id: "d1",
            model_id: "",
            desired: &empty,
            desired_metadata: &empty,
            desired_version: 1,
            reported: &empty,
            reported_metadata: &empty,
        });
        assert_eq!(twin, json!({"$dtId": "d1", "$metadata": {}}));
    }

    #[test]
    fn a_desired_only_property_shows_in_the_metadata_alone_at_its_own_version() {
        let desired = obj(json!({"fanSpeed": 2.0, "gone": null}));
        let desired_metadata =
            obj(json!({"fanSpeed": {"$lastUpdated": "t", "$lastUpdatedVersion": 2}}));
        let empty = Properties::new();
        let twin = digital_twin(&TwinSections {
            device_id: "d1",
            model_id: "dtmi:x;1",
            desired: &desired,
            desired_metadata: &desired_metadata,
            desired_version: 7,
            reported: &empty,
            reported_metadata: &empty,
        });
        assert_eq!(
            twin,
            json!({"$dtId": "d1", "$metadata": {"$model": "dtmi:x;1",
                "fanSpeed": {"desiredValue": 2.0, "desiredVersion": 2}}})
        );
    }

    #[test]
    fn property_and_component_paths_become_desired_members_with_the_component_marker() {
        let desired =
            obj(json!({"fanSpeed": 1, "thermostat1": {"__t": "c", "targetTemperature": 20}}));
        let reported = obj(json!({"serialNumber": "s", "config": {"a": 1}}));
        let patch = desired_patch(
            &ops(json!([
                {"op": "replace", "path": "/fanSpeed", "value": 2},
                {"op": "add", "path": "/thermostat1/targetTemperature", "value": 21},
                {"op": "add", "path": "/thermostat2/targetTemperature", "value": 22},
                {"op": "add", "path": "/config/b", "value": 3},
                {"op": "add", "path": "/sensor", "value": {"$metadata": {}, "brightness": 4}},
                {"op": "add", "path": "/a~1b", "value": true}
            ])),
            &desired,
            &reported,
        )
        .unwrap();
        assert_eq!(
            Value::Object(patch),
            json!({
                "fanSpeed": 2,
                "thermostat1": {"targetTemperature": 21},
                "thermostat2": {"__t": "c", "targetTemperature": 22},
                "config": {"b": 3},
                "sensor": {"brightness": 4, "__t": "c"},
                "a/b": true
            })
        );
    }

    #[test]
    fn removes_become_nulls_and_removing_what_is_absent_changes_nothing() {
        let desired =
            obj(json!({"fanSpeed": 1, "thermostat1": {"__t": "c", "targetTemperature": 20}}));
        let patch = desired_patch(
            &ops(json!([
                {"op": "remove", "path": "/fanSpeed"},
                {"op": "remove", "path": "/thermostat1/targetTemperature"},
                {"op": "remove", "path": "/nothing"},
                {"op": "remove", "path": "/nothing/here"}
            ])),
            &desired,
            &Properties::new(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(patch),
            json!({"fanSpeed": null, "thermostat1": {"targetTemperature": null}})
        );
    }

    #[test]
    fn an_object_value_replaces_the_stored_object_rather_than_merging_into_it() {
        let desired = obj(json!({"range": {"low": 1, "high": 9}}));
        let patch = desired_patch(
            &ops(json!([{"op": "replace", "path": "/range", "value": {"low": 2}}])),
            &desired,
            &Properties::new(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(patch),
            json!({"range": {"low": 2, "high": null}})
        );
    }

    #[test]
    fn a_bad_operation_names_its_position_op_and_path() {
        let empty = Properties::new();
        let err = |v: Value| {
            desired_patch(&ops(v), &empty, &empty)
                .unwrap_err()
                .to_string()
        };
        let move_op =
            err(json!([{"op": "add", "path": "/a", "value": 1}, {"op": "move", "path": "/b"}]));
        assert!(move_op.contains("operation 1 (move /b)"), "{move_op}");
        let root = err(json!([{"op": "add", "path": "", "value": 1}]));
        assert!(
            root.contains("operation 0 (add )") && root.contains("must name a property"),
            "{root}"
        );
        let system = err(json!([{"op": "add", "path": "/$metadata/x", "value": 1}]));
        assert!(
            system.contains("/$metadata/x") && system.contains("cannot be written"),
            "{system}"
        );
        let marker = err(json!([{"op": "add", "path": "/c/__t", "value": "x"}]));
        assert!(marker.contains("/c/__t"), "{marker}");
        let no_value = err(json!([{"op": "replace", "path": "/a"}]));
        assert!(
            no_value.contains("(replace /a)") && no_value.contains("need a value"),
            "{no_value}"
        );
        let empty_segment = err(json!([{"op": "add", "path": "/a//b", "value": 1}]));
        assert!(empty_segment.contains("/a//b"), "{empty_segment}");
    }

    #[test]
    fn the_difference_of_two_sections_is_the_merge_patch_between_them() {
        let before = obj(json!({"a": 1, "b": {"c": 1, "d": 2}, "e": 3, "f": {"g": 1}}));
        let after = obj(json!({"a": 1, "b": {"c": 1, "d": 4}, "f": 5, "h": {"i": 1}}));
        assert_eq!(
            Value::Object(difference(&before, &after)),
            json!({"e": null, "b": {"d": 4}, "f": 5, "h": {"i": 1}})
        );
    }
}
