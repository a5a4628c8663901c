//! Layered deployments, as IoT Edge documents them: a deployment whose `modulesContent` entries
//! are `properties.desired.<path>` keys (`"$edgeHub": {"properties.desired.routes.r1": "FROM …"}`)
//! is layered; on a device, the layered deployments that target it with a higher priority than
//! its base deployment are merged over the base in priority order (the higher priority wins a
//! path both set), so their routes and modules add to the base's. A layered deployment on a
//! device without a base deployment is targeted but not applied. Pure: no store, no I/O.
//!
//! A leaf: depends on nothing else of the hub.

use edgetwin_wire::rest::ConfigurationContent;
use serde_json::{Map, Value};

/// The key of a base deployment's module entry.
const DESIRED: &str = "properties.desired";

/// What kind of deployment a `modulesContent` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every entry is `{"properties.desired": {…}}`.
    Base,
    /// Every entry holds only `properties.desired.<path>` keys.
    Layered,
}

/// The kind of `modules_content`, or what makes it neither (naming the module and key).
pub fn kind(modules_content: &Map<String, Value>) -> Result<Kind, String> {
    let mut kinds = Vec::new();
    for (module_id, entry) in modules_content {
        let Value::Object(entry) = entry else {
            return Err(format!("modulesContent.{module_id} must be an object"));
        };
        for key in entry.keys() {
            let entry_kind = if key == DESIRED {
                Kind::Base
            } else if key
                .strip_prefix(DESIRED)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|path| path.split('.').all(|part| !part.is_empty()))
            {
                Kind::Layered
            } else {
                return Err(format!(
                    "modulesContent.{module_id} has '{key}': entries are 'properties.desired' \
                     or, in a layered deployment, 'properties.desired.<path>'"
                ));
            };
            kinds.push(entry_kind);
        }
    }
    match (kinds.contains(&Kind::Base), kinds.contains(&Kind::Layered)) {
        (true, true) => Err(
            "modulesContent mixes 'properties.desired' with 'properties.desired.<path>' entries: \
             a deployment is either a base or a layered one"
                .into(),
        ),
        (false, true) => Ok(Kind::Layered),
        _ => Ok(Kind::Base),
    }
}

/// The base content with `layers` (lowest priority first) merged over it: each
/// `properties.desired.a.b` value replaces `a.b` of that module's desired properties, creating
/// the objects on the way.
pub fn compose(
    base: &ConfigurationContent,
    layers: &[&ConfigurationContent],
) -> ConfigurationContent {
    let mut modules = base.modules_content.clone().unwrap_or_default();
    for layer in layers {
        for (module_id, entry) in layer.modules_content.iter().flatten() {
            let Value::Object(entry) = entry else {
                continue;
            };
            let section = modules
                .entry(module_id.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Some(section) = section.as_object_mut() else {
                continue;
            };
            let desired = section
                .entry(DESIRED)
                .or_insert_with(|| Value::Object(Map::new()));
            for (key, value) in entry {
                let Some(path) = key.strip_prefix(DESIRED).and_then(|r| r.strip_prefix('.')) else {
                    continue;
                };
                set_path(desired, path, value.clone());
            }
        }
    }
    ConfigurationContent {
        modules_content: Some(modules),
        ..base.clone()
    }
}

/// Sets `target.a.b.c = value` for `path` "a.b.c", replacing non-objects on the way.
fn set_path(target: &mut Value, path: &str, value: Value) {
    let mut node = target;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        node = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(value: Value) -> ConfigurationContent {
        serde_json::from_value(json!({ "modulesContent": value })).unwrap()
    }

    #[test]
    fn entries_with_paths_make_a_layered_deployment_and_mixing_the_two_is_refused() {
        let base = content(json!({"$edgeHub": {"properties.desired": {"routes": {}}}}));
        let layered = content(
            json!({"$edgeHub": {"properties.desired.routes.r2": "FROM /x INTO $upstream"}}),
        );
        assert_eq!(kind(base.modules_content.as_ref().unwrap()), Ok(Kind::Base));
        assert_eq!(
            kind(layered.modules_content.as_ref().unwrap()),
            Ok(Kind::Layered)
        );
        let mixed = content(json!({
            "$edgeHub": {"properties.desired": {}},
            "m": {"properties.desired.x": 1}
        }));
        assert!(kind(mixed.modules_content.as_ref().unwrap())
            .unwrap_err()
            .contains("mixes"));
        let odd = content(json!({"m": {"properties.reported": {}}}));
        let error = kind(odd.modules_content.as_ref().unwrap()).unwrap_err();
        assert!(
            error.contains("modulesContent.m has 'properties.reported'"),
            "{error}"
        );
    }

    #[test]
    fn layers_add_routes_and_modules_to_the_base_and_the_higher_priority_wins_a_shared_path() {
        let base = content(json!({
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"r1": "FROM a INTO b"}}},
            "$edgeAgent": {"properties.desired": {"modules": {"m1": {"version": "1.0"}}}}
        }));
        let low = content(json!({
            "$edgeHub": {"properties.desired.routes.r2": "FROM low INTO $upstream"},
            "$edgeAgent": {"properties.desired.modules.m2": {"version": "2.0"}},
            "m2": {"properties.desired.telemetryInterval": 10}
        }));
        let high = content(json!({
            "$edgeHub": {"properties.desired.routes.r2": "FROM high INTO $upstream"},
            "m2": {"properties.desired.telemetryInterval": 122}
        }));
        let composed = compose(&base, &[&low, &high]);
        assert_eq!(
            Value::Object(composed.modules_content.unwrap()),
            json!({
                "$edgeHub": {"properties.desired": {"schemaVersion": "1.1",
                    "routes": {"r1": "FROM a INTO b", "r2": "FROM high INTO $upstream"}}},
                "$edgeAgent": {"properties.desired": {"modules": {
                    "m1": {"version": "1.0"}, "m2": {"version": "2.0"}}}},
                "m2": {"properties.desired": {"telemetryInterval": 122}}
            })
        );
    }
}
