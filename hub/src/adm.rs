//! Automatic device management (ADM): device configurations (`content.deviceContent`) and module
//! configurations (`content.moduleContent`, a target condition `FROM devices.modules WHERE ...`),
//! which set desired properties on the device (module) twins their target condition matches, and
//! say so in each twin's own `configurations` (`{"<id>": {"status": "Applied"|"Targeted"}}`; an
//! IoT Edge deployment's status lives on `$edgeAgent` instead, see [`crate::deployments`]).
//! Module configurations leave the IoT Edge runtime's own modules (`$edgeAgent`, `$edgeHub`)
//! alone: deployments set their twins.
//!
//! What IoT Hub documents and this follows (MicrosoftDocs/azure-docs,
//! `includes/iot-hub-automatic-device-management-portal.md`, "Twin settings", "Target devices",
//! "Modify a configuration", "Delete a configuration"):
//! - each `deviceContent` key is a twin path, `properties.desired.<path>`, and its value "the JSON
//!   content to insert at that location"; the rest of the desired properties is untouched, and a
//!   `null` value removes a property ("If you wish to remove an existing property, specify the
//!   property value to `null`"): the settings are applied as a JSON merge patch;
//! - "If two or more configurations target the same twin path, the content from the highest
//!   priority configuration applies"; ties: "the one created most recently wins". Each matching
//!   configuration is applied for the paths no higher one sets ("Applied ... can include partial
//!   modifications if a separate, higher priority configuration also made changes"); one whose
//!   every path a higher configuration sets is `Targeted`;
//! - a twin that no longer meets a configuration's target condition has "the settings from the
//!   configuration removed" (set to `null`) and takes the next configuration's;
//! - "When you delete a configuration, any device twins take on their next highest priority
//!   configuration. If device twins don't meet the target condition of any other configuration,
//!   then no other settings are applied": the next configuration's settings are written, and the
//!   deleted configuration's stay where no other sets them.
//!
//! Settings are written when the set of configurations applied to a twin changes (it comes into
//! scope, leaves it, or a configuration is created or deleted), not again on every evaluation.
//!
//! Part of the core's domain: depends on the store and twins; never on the hub or a door.

use edgetwin_wire::condition::Condition;
use edgetwin_wire::rest::{Configuration, ErrorCode};
use edgetwin_wire::twin::{self, Properties, Section};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::store::{IdentityKey, Transaction};
use crate::twins::{self, DesiredChange};

/// The twin path prefix of every `deviceContent` key.
const DESIRED: &str = "properties.desired";

/// One setting of a device configuration: the path below `properties.desired` and its value.
type Setting = (Vec<String>, Value);

/// The settings of a `deviceContent` or `moduleContent` (`field`): each key `properties.desired`
/// (an object merged into the desired properties) or `properties.desired.<path>`.
fn settings_of(content: &Map<String, Value>, field: &str) -> Result<Vec<Setting>, String> {
    content
        .iter()
        .map(|(key, value)| {
            let path: Vec<String> = match key.strip_prefix(DESIRED) {
                Some("") => Vec::new(),
                Some(rest) if rest.starts_with('.') => {
                    rest[1..].split('.').map(str::to_owned).collect()
                }
                _ => {
                    return Err(format!(
                        "{field} key '{key}' is not a twin path: it must be \
                         '{DESIRED}' or start with '{DESIRED}.'"
                    ))
                }
            };
            if path.iter().any(String::is_empty) {
                return Err(format!("{field} key '{key}' has an empty segment"));
            }
            if path.is_empty() && !value.is_object() {
                return Err(format!("{field} '{DESIRED}' must be an object"));
            }
            Ok((path, value.clone()))
        })
        .collect()
}

/// Sets `value` at `path` in the merge patch `patch`, replacing what an earlier setting put
/// there; the empty path merges an object's members at the top.
fn set(patch: &mut Properties, path: &[String], value: Value) {
    match path {
        [] => patch.extend(value.as_object().cloned().unwrap_or_default()),
        [last] => {
            patch.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = patch.entry(first.clone()).or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            if let Value::Object(inner) = entry {
                set(inner, rest, value);
            }
        }
    }
}

/// Checks a configuration's `deviceContent` or `moduleContent` (`field`) when it is created:
/// twin paths, and the desired patch they make valid as a twin's (depth, key names, sizes).
pub fn validate(content: &Map<String, Value>, field: &str) -> Result<(), ApiError> {
    let invalid = |why: String| {
        ApiError::new(
            ErrorCode::InvalidConfigurationContent,
            format!("The content provided for configuration is invalid: {why}"),
        )
    };
    let mut patch = Properties::new();
    for (path, value) in settings_of(content, field).map_err(invalid)? {
        set(&mut patch, &path, value);
    }
    twin::validate_patch(Section::Desired, &patch).map_err(|e| invalid(e.to_string()))
}

/// A device or module configuration as evaluation needs it: parsed once per transaction.
pub struct AdmConfiguration {
    /// The configuration id.
    id: String,
    /// Priority, then creation time: the higher wins.
    rank: (i32, String),
    /// Its settings.
    settings: Vec<Setting>,
    /// Its target condition; `None` (empty or not parsed) targets no twin.
    condition: Option<Condition>,
}

impl AdmConfiguration {
    /// `configuration` parsed, if it is a device configuration whose content is valid.
    pub fn device(configuration: &Configuration) -> Option<Self> {
        if !configuration.is_device_configuration() {
            return None;
        }
        let content = configuration.content.as_ref()?.device_content.as_ref()?;
        Self::parsed(configuration, content, "deviceContent", Condition::parse)
    }

    /// `configuration` parsed, if it is a module configuration whose content is valid.
    pub fn module(configuration: &Configuration) -> Option<Self> {
        if !configuration.is_module_configuration() {
            return None;
        }
        let content = configuration.content.as_ref()?.module_content.as_ref()?;
        Self::parsed(
            configuration,
            content,
            "moduleContent",
            Condition::parse_module,
        )
    }

    fn parsed<E>(
        configuration: &Configuration,
        content: &Map<String, Value>,
        field: &str,
        parse: impl Fn(&str) -> Result<Condition, E>,
    ) -> Option<Self> {
        Some(Self {
            id: configuration.id.clone(),
            rank: (
                configuration.priority.unwrap_or(0),
                configuration.created_time_utc.clone().unwrap_or_default(),
            ),
            settings: settings_of(content, field).ok()?,
            condition: configuration
                .target_condition
                .as_deref()
                .and_then(|c| parse(c).ok()),
        })
    }
}

/// What evaluating the device configurations on one twin gives.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// The twin's new `configurations`: id -> `{"status": "Applied"|"Targeted"}`.
    pub statuses: Properties,
    /// The desired merge patch to apply, when the configurations applied changed.
    pub patch: Option<Properties>,
}

/// Which of `configurations` apply to the twin `document` (as target conditions see it) whose
/// `configurations` were `before`, and the desired patch that takes it there (see the module
/// documentation for IoT Hub's rules).
pub fn settle(
    configurations: &[AdmConfiguration],
    document: &Value,
    before: &Properties,
) -> Outcome {
    let mut matching: Vec<&AdmConfiguration> = configurations
        .iter()
        .filter(|c| c.condition.as_ref().is_some_and(|t| t.matches(document)))
        .collect();
    matching.sort_by(|a, b| a.rank.cmp(&b.rank));
    let mut statuses = Properties::new();
    let mut applied = Vec::new();
    for (i, configuration) in matching.iter().enumerate() {
        let higher = &matching[i + 1..];
        let set_by_higher = |path: &Vec<String>| {
            higher
                .iter()
                .any(|h| h.settings.iter().any(|(p, _)| path.starts_with(p)))
        };
        let wins = configuration.settings.is_empty()
            || configuration
                .settings
                .iter()
                .any(|(path, _)| !set_by_higher(path));
        let status = if wins { "Applied" } else { "Targeted" };
        statuses.insert(configuration.id.clone(), json!({ "status": status }));
        if wins {
            applied.push(*configuration);
        }
    }
    let was_applied = |id: &str| before.get(id).is_some_and(|s| s["status"] == "Applied");
    let unchanged = applied.iter().all(|c| was_applied(&c.id))
        && before.values().filter(|s| s["status"] == "Applied").count() == applied.len();
    if unchanged {
        return Outcome {
            statuses,
            patch: None,
        };
    }
    let mut patch = Properties::new();
    for gone in configurations
        .iter()
        .filter(|c| was_applied(&c.id) && !applied.iter().any(|a| a.id == c.id))
    {
        for (path, _) in &gone.settings {
            set(&mut patch, path, Value::Null);
        }
    }
    for configuration in &applied {
        for (path, value) in &configuration.settings {
            set(&mut patch, path, value.clone());
        }
    }
    Outcome {
        statuses,
        patch: Some(patch).filter(|p| !p.is_empty()),
    }
}

/// Evaluates the device (module) configurations on the twin of `key` (`document` as target
/// conditions see it): applies the desired patch [`settle`] gives, writes the statuses on the
/// twin, and adds (configuration id, applied) to `targeting` for each match.
pub fn evaluate(
    tx: &Transaction<'_>,
    configurations: &[AdmConfiguration],
    key: &IdentityKey,
    document: &Value,
    targeting: &mut Vec<(String, bool)>,
) -> Result<Option<DesiredChange>, ApiError> {
    let Some(twin) = tx.twin(key)? else {
        return Ok(None);
    };
    if configurations.is_empty() && twin.configurations.is_empty() {
        return Ok(None);
    }
    let outcome = settle(configurations, document, &twin.configurations);
    targeting.extend(
        outcome
            .statuses
            .iter()
            .map(|(id, s)| (id.clone(), s["status"] == "Applied")),
    );
    if outcome.statuses == twin.configurations {
        return Ok(None);
    }
    let change = outcome
        .patch
        .map(|patch| twins::merge_desired(tx, key, patch))
        .transpose()?;
    let mut twin = tx.twin(key)?.unwrap_or(twin);
    twin.configurations = outcome.statuses;
    tx.put_twin(key, &twin)?;
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configuration(id: &str, priority: i32, condition: &str, content: Value) -> AdmConfiguration {
        AdmConfiguration::device(&Configuration {
            id: id.into(),
            priority: Some(priority),
            created_time_utc: Some(format!("2026-01-01T00:00:0{priority}Z")),
            target_condition: Some(condition.into()),
            content: Some(edgetwin_wire::rest::ConfigurationContent {
                device_content: content.as_object().cloned(),
                ..Default::default()
            }),
            ..Configuration::default()
        })
        .expect("a device configuration")
    }

    fn statuses(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(id, s)| ((*id).to_owned(), json!({ "status": s })))
            .collect()
    }

    #[test]
    fn the_highest_priority_wins_a_shared_path_and_one_overridden_everywhere_is_targeted() {
        let configurations = [
            configuration(
                "low",
                1,
                "tags.x = 'y'",
                json!({
                    "properties.desired.fw": { "version": "1.0" },
                    "properties.desired.interval": 5,
                }),
            ),
            configuration(
                "high",
                2,
                "tags.x = 'y'",
                json!({ "properties.desired.fw.version": "2.0" }),
            ),
            configuration(
                "hidden",
                0,
                "tags.x = 'y'",
                json!({ "properties.desired.interval": 1 }),
            ),
            configuration(
                "other",
                9,
                "tags.x = 'z'",
                json!({ "properties.desired.interval": 9 }),
            ),
        ];
        let outcome = settle(
            &configurations,
            &json!({ "tags": { "x": "y" } }),
            &Properties::new(),
        );
        assert_eq!(
            outcome,
            Outcome {
                statuses: statuses(&[
                    ("hidden", "Targeted"),
                    ("low", "Applied"),
                    ("high", "Applied")
                ]),
                patch: json!({ "fw": { "version": "2.0" }, "interval": 5 })
                    .as_object()
                    .cloned(),
            }
        );
    }

    #[test]
    fn settings_are_written_when_the_applied_set_changes_and_removed_when_the_twin_leaves() {
        let configurations = [configuration(
            "a",
            1,
            "tags.x = 'y'",
            json!({ "properties.desired.fw": "1.0" }),
        )];
        let applied = statuses(&[("a", "Applied")]);
        let inside = json!({ "tags": { "x": "y" } });
        assert_eq!(
            settle(&configurations, &inside, &applied).patch,
            None,
            "already applied"
        );
        let left = settle(&configurations, &json!({ "tags": { "x": "z" } }), &applied);
        assert_eq!(
            left,
            Outcome {
                statuses: Properties::new(),
                patch: json!({ "fw": null }).as_object().cloned()
            }
        );
        // a deleted configuration (no longer among them) leaves its settings
        assert_eq!(
            settle(&[], &inside, &applied),
            Outcome {
                statuses: Properties::new(),
                patch: None
            }
        );
    }

    #[test]
    fn the_same_priority_goes_to_the_newest_and_no_target_condition_targets_nothing() {
        let older = configuration(
            "older",
            3,
            "tags.x = 'y'",
            json!({ "properties.desired.v": 1 }),
        );
        let mut newer = configuration(
            "newer",
            3,
            "tags.x = 'y'",
            json!({ "properties.desired.v": 2 }),
        );
        newer.rank.1 = "2026-02-01T00:00:00Z".into();
        let none = configuration("none", 9, "", json!({ "properties.desired.v": 3 }));
        let outcome = settle(
            &[newer, older, none],
            &json!({ "tags": { "x": "y" } }),
            &Properties::new(),
        );
        assert_eq!(
            outcome.statuses,
            statuses(&[("older", "Targeted"), ("newer", "Applied")])
        );
        assert_eq!(outcome.patch, json!({ "v": 2 }).as_object().cloned());
    }

    #[test]
    fn device_content_keys_must_be_desired_twin_paths() {
        let content = |v: Value| v.as_object().cloned().unwrap();
        assert!(validate(
            &content(json!({ "properties.desired.a.b": 1, "properties.desired": { "c": 2 } })),
            "deviceContent"
        )
        .is_ok());
        for bad in [
            json!({ "properties.reported.a": 1 }),
            json!({ "properties.desiredx": 1 }),
            json!({ "properties.desired..a": 1 }),
            json!({ "properties.desired": 1 }),
        ] {
            assert!(
                validate(&content(bad.clone()), "moduleContent").is_err(),
                "{bad}"
            );
        }
    }
}
