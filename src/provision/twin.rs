//! `edgetwin twin get` and `edgetwin twin update`: read a device or module twin, or merge
//! desired properties and tags into it. An update prints what changed and the new versions (the
//! twin before and after, as the seed's UpdateModuleTwin app prints them, with `--output json`).

use serde_json::{Map, Value};

use super::client::ServiceClient;
use super::error::ProvisionError;

/// Parses a `--desired` or `--tags` argument: a JSON object.
pub fn parse_object(text: &str, flag: &str) -> Result<Map<String, Value>, ProvisionError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ProvisionError::Input(format!(
            "{flag} must be a JSON object, e.g. '{{\"telemetryInterval\":122}}'"
        ))),
        Err(source) => Err(ProvisionError::Json {
            what: flag.to_owned(),
            source,
        }),
    }
}

/// The PATCH body for desired properties and tags (JSON merge: `null` removes a key).
pub fn twin_patch(desired: Option<Map<String, Value>>, tags: Option<Map<String, Value>>) -> Value {
    let mut patch = Map::new();
    if let Some(tags) = tags {
        patch.insert("tags".into(), Value::Object(tags));
    }
    if let Some(desired) = desired {
        let mut properties = Map::new();
        properties.insert("desired".into(), Value::Object(desired));
        patch.insert("properties".into(), Value::Object(properties));
    }
    Value::Object(patch)
}

/// The twin before and after an update.
#[derive(Debug, Clone)]
pub struct TwinChange {
    /// As read before the patch.
    pub before: Value,
    /// As the hub returned it after the patch.
    pub after: Value,
    /// The patch sent ([`twin_patch`]).
    pub patch: Value,
}

/// Longest value shown in a summary line before it is cut with `…`.
const SHOWN_VALUE_CHARS: usize = 60;

/// A twin value as a summary shows it: compact JSON, `(unset)` when absent, cut when long.
fn shown(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "(unset)".to_owned();
    };
    let text = value.to_string();
    match text.char_indices().nth(SHOWN_VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

impl TwinChange {
    /// What `twin update` prints: a line naming the twin with its new versions, then one line
    /// per key the patch touched, `section.key: before -> after`:
    ///
    /// ```text
    /// gw/edgetwin: twin version 4 -> 5, desired $version 2 -> 3
    ///   desired.telemetryInterval: 10 -> 122
    /// ```
    pub fn summary(&self, twin: &str) -> Vec<String> {
        let version = |twin: &Value, path: &str| shown(twin.pointer(path));
        let mut lines = vec![format!(
            "{twin}: twin version {} -> {}, desired $version {} -> {}",
            version(&self.before, "/version"),
            version(&self.after, "/version"),
            version(&self.before, "/properties/desired/$version"),
            version(&self.after, "/properties/desired/$version"),
        )];
        for (section, path) in [("tags", "/tags"), ("desired", "/properties/desired")] {
            let Some(Value::Object(keys)) = self.patch.pointer(path) else {
                continue;
            };
            let value = |twin: &Value, key: &str| {
                twin.pointer(path)
                    .and_then(|section| section.get(key))
                    .cloned()
            };
            for key in keys.keys() {
                lines.push(format!(
                    "  {section}.{key}: {} -> {}",
                    shown(value(&self.before, key).as_ref()),
                    shown(value(&self.after, key).as_ref()),
                ));
            }
        }
        lines
    }
}

/// Reads the twin, merges the patch, and returns both versions.
pub async fn update(
    client: &ServiceClient,
    device_id: &str,
    module_id: Option<&str>,
    desired: Option<Map<String, Value>>,
    tags: Option<Map<String, Value>>,
) -> Result<TwinChange, ProvisionError> {
    if desired.is_none() && tags.is_none() {
        return Err(ProvisionError::Input(
            "nothing to update: give --desired and/or --tags".into(),
        ));
    }
    let patch = twin_patch(desired, tags);
    let before = client.get_twin(device_id, module_id).await?;
    let after = client.patch_twin(device_id, module_id, &patch).await?;
    Ok(TwinChange {
        before,
        after,
        patch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_patch_carries_tags_and_desired_properties() {
        let desired = parse_object(r#"{"telemetryInterval":122,"old":null}"#, "--desired").unwrap();
        let tags = parse_object(r#"{"ring":"canary"}"#, "--tags").unwrap();
        assert_eq!(
            twin_patch(Some(desired), Some(tags)),
            json!({"tags":{"ring":"canary"},"properties":{"desired":{"telemetryInterval":122,"old":null}}})
        );
        assert_eq!(twin_patch(None, None), json!({}));
    }

    #[test]
    fn the_summary_is_the_new_versions_and_one_line_per_touched_key() {
        let long = "x".repeat(100);
        let change = TwinChange {
            before: json!({"version": 4, "tags": {"ring": "stable"},
                "properties": {"desired": {"$version": 2, "a": 1, "gone": true, "other": 5}}}),
            after: json!({"version": 6, "tags": {"ring": "canary"},
                "properties": {"desired": {"$version": 3, "a": {"b": 2}, "new": long, "other": 5}}}),
            patch: twin_patch(
                Some(parse_object(r#"{"a":{"b":2},"gone":null,"new":"x"}"#, "--desired").unwrap()),
                Some(parse_object(r#"{"ring":"canary"}"#, "--tags").unwrap()),
            ),
        };
        let cut = format!("\"{}…", "x".repeat(SHOWN_VALUE_CHARS - 1));
        assert_eq!(
            change.summary("gw/m"),
            vec![
                "gw/m: twin version 4 -> 6, desired $version 2 -> 3".to_owned(),
                r#"  tags.ring: "stable" -> "canary""#.to_owned(),
                r#"  desired.a: 1 -> {"b":2}"#.to_owned(),
                "  desired.gone: true -> (unset)".to_owned(),
                format!("  desired.new: (unset) -> {cut}"),
            ]
        );
    }

    #[test]
    fn desired_must_be_a_json_object() {
        assert!(parse_object("122", "--desired")
            .unwrap_err()
            .to_string()
            .contains("--desired"));
        assert!(parse_object("{", "--desired").is_err());
    }
}
