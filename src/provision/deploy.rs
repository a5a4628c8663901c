//! A deployment manifest (`config/deployment.<platform>.json`) applied to one edge device with
//! `applyConfigurationContent`, or to every device matching a target condition as an at-scale
//! deployment (a configuration). Creating the same at-scale deployment twice is a no-op.

use std::path::Path;

use edgetwin_wire::rest::{Configuration, ConfigurationContent};
use serde_json::{Map, Value};

use super::client::ServiceClient;
use super::error::ProvisionError;

/// What happened to an at-scale deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentOutcome {
    /// A new configuration.
    Created,
    /// It existed with the same content; target condition or priority were changed.
    Updated,
    /// It existed with the same content, condition and priority.
    Existing,
}

impl DeploymentOutcome {
    /// `created`, `updated` or `existing`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentOutcome::Created => "created",
            DeploymentOutcome::Updated => "updated",
            DeploymentOutcome::Existing => "existing",
        }
    }
}

/// Reads the `modulesContent` of a deployment manifest from JSON text: either a manifest
/// (`{"modulesContent": {...}}`, what `manifest gen` and iotedgedev write) or a configuration
/// (`{"content": {"modulesContent": {...}}}`, what `az iot edge deployment` takes).
pub fn parse_deployment(text: &str, origin: &str) -> Result<ConfigurationContent, ProvisionError> {
    let value: Value = serde_json::from_str(text).map_err(|source| ProvisionError::Json {
        what: origin.to_owned(),
        source,
    })?;
    let (modules, path) = match value.get("content") {
        Some(content) => (content.get("modulesContent"), "$.content.modulesContent"),
        None => (value.get("modulesContent"), "$.modulesContent"),
    };
    let Some(modules) = modules else {
        return Err(ProvisionError::Input(format!(
            "{origin}: {path} is missing; a deployment manifest has modulesContent with $edgeAgent and $edgeHub"
        )));
    };
    let Value::Object(modules) = modules else {
        return Err(ProvisionError::Input(format!(
            "{origin}: {path} must be an object"
        )));
    };
    for system in ["$edgeAgent", "$edgeHub"] {
        match modules
            .get(system)
            .and_then(|m| m.get("properties.desired"))
        {
            Some(Value::Object(_)) => {}
            _ => {
                return Err(ProvisionError::Input(format!(
                    "{origin}: {path}.{system}[\"properties.desired\"] is missing or not an object"
                )))
            }
        }
    }
    Ok(ConfigurationContent {
        modules_content: Some(modules.clone()),
        ..ConfigurationContent::default()
    })
}

/// Reads and checks a deployment manifest file.
pub fn load_deployment(path: &Path) -> Result<ConfigurationContent, ProvisionError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProvisionError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_deployment(&text, &path.display().to_string())
}

/// Checks a deployment (configuration) id as IoT Hub does: 1 to 128 characters, lower case, no
/// spaces and none of `& ^ [ ] { } \ | " < > /`.
pub fn check_deployment_id(id: &str) -> Result<(), ProvisionError> {
    edgetwin_wire::ids::check_configuration_id(id)
        .map_err(|why| ProvisionError::Input(format!("--deployment-id '{id}' {why}")))
}

/// Applies `content` to one edge device (its `$edgeAgent`, `$edgeHub` and module twins).
pub async fn apply_to_device(
    client: &ServiceClient,
    device_id: &str,
    content: &ConfigurationContent,
) -> Result<(), ProvisionError> {
    client.apply_configuration_content(device_id, content).await
}

/// The at-scale deployment to create.
#[derive(Debug, Clone)]
pub struct AtScale {
    /// Configuration id.
    pub id: String,
    /// Which devices it reaches, e.g. `tags.environment='prod'`.
    pub target_condition: String,
    /// Higher wins among deployments targeting the same device.
    pub priority: i32,
}

/// Creates the at-scale deployment, or keeps it if it exists with the same content (updating
/// target condition and priority, the fields IoT Hub lets change). Different content under the
/// same id is an error: IoT Hub configurations' content is immutable.
pub async fn deploy_at_scale(
    client: &ServiceClient,
    spec: &AtScale,
    content: &ConfigurationContent,
) -> Result<DeploymentOutcome, ProvisionError> {
    check_deployment_id(&spec.id)?;
    let wanted = Configuration {
        id: spec.id.clone(),
        schema_version: None,
        labels: None,
        content: Some(content.clone()),
        target_condition: Some(spec.target_condition.clone()),
        priority: Some(spec.priority),
        ..Configuration::default()
    };
    let existing = match client.get_configuration(&spec.id).await? {
        Some(existing) => existing,
        None => match client.put_configuration(&wanted, None).await {
            Ok(_) => return Ok(DeploymentOutcome::Created),
            Err(ProvisionError::Service(e)) if e.is("ConfigurationAlreadyExists") => client
                .get_configuration(&spec.id)
                .await?
                .ok_or(ProvisionError::Service(e))?,
            Err(e) => return Err(e),
        },
    };
    let same_content = modules_of(existing.content.as_ref()) == modules_of(Some(content));
    if !same_content {
        return Err(ProvisionError::Input(format!(
            "deployment '{}' already exists with different content; IoT Hub does not let a \
             deployment's content change: choose a new --deployment-id (and delete the old one)",
            spec.id
        )));
    }
    if existing.target_condition.as_deref() == Some(spec.target_condition.as_str())
        && existing.priority.unwrap_or(0) == spec.priority
    {
        return Ok(DeploymentOutcome::Existing);
    }
    let update = Configuration {
        etag: existing.etag.clone(),
        ..wanted
    };
    let etag = existing.etag.unwrap_or_else(|| "*".into());
    client.put_configuration(&update, Some(&etag)).await?;
    Ok(DeploymentOutcome::Updated)
}

fn modules_of(content: Option<&ConfigurationContent>) -> Option<&Map<String, Value>> {
    content.and_then(|c| c.modules_content.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{"modulesContent":{"$edgeAgent":{"properties.desired":{"schemaVersion":"1.1"}},"$edgeHub":{"properties.desired":{"routes":{}}},"edgetwin":{"properties.desired":{"telemetryInterval":10}}}}"#;

    #[test]
    fn a_manifest_and_a_configuration_both_yield_modules_content() {
        let a = parse_deployment(MANIFEST, "m.json").unwrap();
        let wrapped = format!(r#"{{"id":"x","content":{MANIFEST}}}"#);
        let b = parse_deployment(&wrapped, "c.json").unwrap();
        assert_eq!(a, b);
        assert!(a.modules_content.unwrap().contains_key("edgetwin"));
    }

    #[test]
    fn a_manifest_without_edge_hub_names_the_json_path() {
        let text = r#"{"modulesContent":{"$edgeAgent":{"properties.desired":{}}}}"#;
        let err = parse_deployment(text, "m.json").unwrap_err().to_string();
        assert!(
            err.contains("$.modulesContent.$edgeHub[\"properties.desired\"]"),
            "{err}"
        );
        let err = parse_deployment("{}", "m.json").unwrap_err().to_string();
        assert!(err.contains("$.modulesContent is missing"), "{err}");
    }

    #[test]
    fn deployment_ids_follow_iot_hub_rules() {
        assert!(check_deployment_id("edgetwin-prod-1").is_ok());
        assert!(check_deployment_id("Prod").is_err());
        assert!(check_deployment_id("a b").is_err());
        assert!(check_deployment_id("a/b").is_err());
        assert!(check_deployment_id("").is_err());
        assert!(check_deployment_id(&"a".repeat(129)).is_err());
    }
}
