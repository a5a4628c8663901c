//! `edgetwin twin get` and `edgetwin twin update`: read a device or module twin, or merge
//! desired properties and tags into it, printing the twin before and after as the seed's
//! UpdateModuleTwin app does.

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
        Err(e) => Err(ProvisionError::Input(format!(
            "{flag} is not valid JSON: {e}"
        ))),
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
    let before = client.get_twin(device_id, module_id).await?;
    let after = client
        .patch_twin(device_id, module_id, &twin_patch(desired, tags))
        .await?;
    Ok(TwinChange { before, after })
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
    fn desired_must_be_a_json_object() {
        assert!(parse_object("122", "--desired")
            .unwrap_err()
            .to_string()
            .contains("--desired"));
        assert!(parse_object("{", "--desired").is_err());
    }
}
