//! Twin documents: merge patches, validation and size limits (docs/spec/iothub-device-protocol.md §5, docs/spec/iothub-service-and-manifest.md A2.4).
//!
//! Patches are JSON merge patches (RFC 7386). Validation errors name the JSON path of the
//! offending property, rooted at the section (`reported.a.b`, `desired.x[2]`, `tags.t`).

use serde_json::{Map, Value};
use thiserror::Error;

/// A twin section's properties (ordered JSON object).
pub type Properties = Map<String, Value>;

/// Which twin section a document belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// `properties.desired`.
    Desired,
    /// `properties.reported`.
    Reported,
    /// `tags`.
    Tags,
}

impl Section {
    /// The JSON path root used in errors: `desired`, `reported` or `tags`.
    pub fn name(self) -> &'static str {
        match self {
            Section::Desired => "desired",
            Section::Reported => "reported",
            Section::Tags => "tags",
        }
    }

    /// The size limit of the section in bytes ([`MAX_TAGS_BYTES`] or [`MAX_SECTION_BYTES`]).
    pub fn size_limit(self) -> usize {
        match self {
            Section::Tags => MAX_TAGS_BYTES,
            _ => MAX_SECTION_BYTES,
        }
    }
}

/// Maximum nesting depth of objects, counted from the section root.
pub const MAX_DEPTH: usize = 10;
/// Maximum key length in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Maximum string value length in UTF-8 bytes.
pub const MAX_STRING_BYTES: usize = 4096;
/// Maximum size of desired / reported sections.
pub const MAX_SECTION_BYTES: usize = 32 * 1024;
/// Maximum size of tags.
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
/// Smallest allowed integer value (-2^52).
pub const MIN_INT: i64 = -4503599627370496;
/// Largest allowed integer value (2^52 - 1).
pub const MAX_INT: i64 = 4503599627370495;

/// Why a twin patch or section was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TwinError {
    /// A property violates a rule; `path` is its JSON path (e.g. `reported.a.b`).
    #[error("invalid twin property `{path}`: {reason}")]
    Invalid {
        /// JSON path from the section root, e.g. `reported.a.b` or `desired.x[2]`.
        path: String,
        /// Which rule was violated.
        reason: String,
    },
    /// A section exceeds its size limit after merging.
    #[error("twin section `{section}` is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// `desired`, `reported` or `tags`.
        section: &'static str,
        /// Size as IoT Hub counts it.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// JSON merge patch (RFC 7386): objects merged recursively, `null` deletes, anything else
/// (including arrays) replaces. Key order of the target is preserved; new keys are appended.
pub fn merge_patch(target: &mut Properties, patch: &Properties) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.shift_remove(key);
            }
            Value::Object(sub) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(inner) = slot {
                    merge_patch(inner, sub);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

fn invalid(path: &str, reason: impl Into<String>) -> TwinError {
    TwinError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn check_key(path: &str, key: &str) -> Result<(), TwinError> {
    if key.is_empty() {
        return Err(invalid(path, "empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(
            path,
            format!("key is {} bytes, more than {MAX_KEY_BYTES}", key.len()),
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| c.is_control() || matches!(c, '.' | '$' | ' '))
    {
        return Err(invalid(
            path,
            format!(
                "key `{}` contains forbidden character {c:?}",
                key.escape_debug()
            ),
        ));
    }
    Ok(())
}

fn check_value(path: &str, value: &Value, depth: usize, in_array: bool) -> Result<(), TwinError> {
    match value {
        Value::Null if in_array => Err(invalid(path, "null is not allowed inside arrays")),
        Value::Null | Value::Bool(_) => Ok(()),
        Value::Number(n) => {
            let in_range = if let Some(i) = n.as_i64() {
                (MIN_INT..=MAX_INT).contains(&i)
            } else {
                // u64 above i64::MAX is out of range; floats are allowed
                n.as_u64().is_none()
            };
            if in_range {
                Ok(())
            } else {
                Err(invalid(
                    path,
                    format!("integer {n} is outside {MIN_INT}..={MAX_INT}"),
                ))
            }
        }
        Value::String(s) if s.len() > MAX_STRING_BYTES => Err(invalid(
            path,
            format!("string is {} bytes, more than {MAX_STRING_BYTES}", s.len()),
        )),
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            // an array is a value at its key's depth; objects inside it nest further
            for (i, item) in items.iter().enumerate() {
                check_value(&format!("{path}[{i}]"), item, depth, true)?;
            }
            Ok(())
        }
        Value::Object(_) if depth > MAX_DEPTH => Err(invalid(
            path,
            format!("objects nested deeper than {MAX_DEPTH} levels"),
        )),
        Value::Object(map) => check_object(path, map, depth),
    }
}

/// `map` is the value at `path`, which sits at nesting `depth` (section root = 0). IoT Hub allows
/// objects down to depth 10, whose members may be leaves (`tags.one…ten.property`).
fn check_object(path: &str, map: &Properties, depth: usize) -> Result<(), TwinError> {
    for (key, value) in map {
        let child = format!("{path}.{key}");
        check_key(&child, key)?;
        check_value(&child, value, depth + 1, false)?;
    }
    Ok(())
}

/// Validates a patch before applying it: keys (no control characters, `.`, `$` or space,
/// at most 1 KB), depth at most 10 from the section root, strings at most 4 KB, integers in
/// range, arrays allowed but without `null` elements. At the patch root `$version` and
/// `$metadata` are ignored (see [`strip_system_keys`]); any other `$` key is an error.
pub fn validate_patch(section: Section, patch: &Properties) -> Result<(), TwinError> {
    let root = section.name();
    for (key, value) in patch {
        let path = format!("{root}.{key}");
        if key == "$version" || key == "$metadata" {
            continue;
        }
        check_key(&path, key)?;
        check_value(&path, value, 1, false)?;
    }
    Ok(())
}

fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 1,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(value_size).sum(),
        Value::Object(map) => section_size(map),
    }
}

/// Size as IoT Hub counts it: the sum of key lengths plus value lengths (numbers 8, booleans
/// 4, strings their UTF-8 bytes, `null` 1, objects and arrays recursively), excluding keys
/// starting with `$` (`$version`, `$metadata`).
pub fn section_size(props: &Properties) -> usize {
    props
        .iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| k.len() + value_size(v))
        .sum()
}

/// Checks a whole section (after merging) against its size limit.
pub fn check_section_size(section: Section, props: &Properties) -> Result<(), TwinError> {
    let size = section_size(props);
    let limit = section.size_limit();
    if size > limit {
        return Err(TwinError::TooLarge {
            section: section.name(),
            size,
            limit,
        });
    }
    Ok(())
}

/// When a twin property last changed: the leaf of IoT Hub's per-property `$metadata`,
/// `{"$lastUpdated": at}`, with `"$lastUpdatedVersion"` (the section's `$version` then) in
/// desired properties only ("Twin metadata", IoT Hub device twin guide).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp<'a> {
    /// ISO 8601 time of the change.
    pub at: &'a str,
    /// The desired `$version` the change made; `None` for reported properties.
    pub version: Option<i64>,
}

impl Stamp<'_> {
    fn write(&self, node: &mut Properties) {
        node.insert("$lastUpdated".to_owned(), Value::from(self.at));
        if let Some(version) = self.version {
            node.insert("$lastUpdatedVersion".to_owned(), Value::from(version));
        }
    }
}

/// Updates a section's per-property `metadata` for a merge `patch` applied to it: every
/// property the patch sets, and every object above it up to the section, is stamped; a property
/// the patch removes loses its metadata; a value that replaces an object drops the object's.
/// For a replaced section, start from an empty `metadata` with the whole new section as `patch`.
pub fn stamp_metadata(metadata: &mut Properties, patch: &Properties, stamp: Stamp<'_>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                metadata.shift_remove(key);
            }
            Value::Object(inner_patch) => {
                let slot = metadata
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(inner) = slot {
                    stamp_metadata(inner, inner_patch, stamp);
                }
            }
            _ => {
                let mut leaf = Map::new();
                stamp.write(&mut leaf);
                metadata.insert(key.clone(), Value::Object(leaf));
            }
        }
    }
    stamp.write(metadata);
}

/// Removes `$version` and `$metadata` at the root (from input patches).
pub fn strip_system_keys(props: &mut Properties) {
    props.shift_remove("$version");
    props.shift_remove("$metadata");
}

fn with_version(props: &Properties, version: i64) -> Value {
    let mut out = props.clone();
    strip_system_keys(&mut out);
    out.insert("$version".to_owned(), Value::from(version));
    Value::Object(out)
}

/// The MQTT GET body: `{"desired": {..., "$version": dv}, "reported": {..., "$version": rv}}`
/// (no `$metadata`).
pub fn device_view(
    desired: &Properties,
    desired_version: i64,
    reported: &Properties,
    reported_version: i64,
) -> Value {
    let mut out = Map::new();
    out.insert("desired".into(), with_version(desired, desired_version));
    out.insert("reported".into(), with_version(reported, reported_version));
    Value::Object(out)
}

/// The desired-patch notification body: the patch plus `"$version": v`.
pub fn desired_notification(patch: &Properties, version: i64) -> Value {
    with_version(patch, version)
}

/// What a device is told when its desired section is replaced: the whole new section, with
/// every member the old one had and the new one lacks set to `null` (at any depth). A device
/// merges patches with nulls as deletes (edgeAgent's `EdgeAgentConnection.ApplyPatchAsync`,
/// `JsonEx.Merge(desired, patch, treatNullAsDelete: true)`), so without the nulls a module
/// removed by a new deployment would stay in its view of the twin.
pub fn replace_notification(old: &Properties, new: &Properties) -> Properties {
    let mut notification = new.clone();
    for (key, before) in old {
        match (before, notification.get_mut(key)) {
            (_, None) => {
                notification.insert(key.clone(), Value::Null);
            }
            (Value::Object(before), Some(Value::Object(after))) => {
                *after = replace_notification(before, after);
            }
            _ => {}
        }
    }
    notification
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

    #[test]
    fn a_replace_is_told_as_the_new_section_with_removed_members_null_at_any_depth() {
        let old =
            obj(json!({"modules": {"a": {"x": 1}, "gone": {"y": 2}}, "top": 1, "kept": {"z": 1}}));
        let new = obj(json!({"modules": {"a": {"x": 2}}, "kept": 5}));
        assert_eq!(
            Value::Object(replace_notification(&old, &new)),
            json!({"modules": {"a": {"x": 2}, "gone": null}, "kept": 5, "top": null})
        );
        let mut merged = old.clone();
        merge_patch(&mut merged, &replace_notification(&old, &new));
        assert_eq!(
            merged, new,
            "merging the notification gives the new section"
        );
    }

    #[test]
    fn merge_with_null_deletes_nested_members_and_replaces_arrays() {
        let mut target = obj(json!({"a": {"b": 1, "c": 2}, "arr": [1, 2], "keep": true}));
        merge_patch(
            &mut target,
            &obj(json!({"a": {"b": null, "d": {"e": null, "f": 3}}, "arr": [3], "new": "x"})),
        );
        assert_eq!(
            Value::Object(target),
            json!({"a": {"c": 2, "d": {"f": 3}}, "arr": [3], "keep": true, "new": "x"})
        );
    }

    #[test]
    fn merge_replaces_a_scalar_with_an_object_and_deletes_top_level_keys() {
        let mut target = obj(json!({"a": 1, "z": 0, "b": 2}));
        merge_patch(&mut target, &obj(json!({"a": {"x": 1}, "z": null})));
        assert_eq!(
            Value::Object(target.clone()),
            json!({"a": {"x": 1}, "b": 2})
        );
        // order preserved after a delete
        assert_eq!(target.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    fn nested(depth: usize) -> Properties {
        // depth 1 = {"k1": 1}; depth n = {"k1": {"k2": ... {"kn": 1}}}
        let mut v = json!(1);
        for i in (2..=depth).rev() {
            v = json!({ format!("k{i}"): v });
        }
        obj(json!({ "k1": v }))
    }

    #[test]
    fn ten_nested_objects_with_a_leaf_are_accepted_as_iot_hub_documents() {
        // k1..k10 are objects, k11 is the leaf: `tags.one…ten.property` in IoT Hub's docs
        validate_patch(Section::Reported, &nested(11)).unwrap();
    }

    #[test]
    fn metadata_stamps_what_a_patch_sets_and_the_objects_above_it_and_forgets_what_it_removes() {
        let first = Stamp {
            at: "t1",
            version: Some(2),
        };
        let mut metadata = Properties::new();
        stamp_metadata(
            &mut metadata,
            &obj(json!({"interval": 5, "config": {"mode": "a", "level": 1}})),
            first,
        );
        let second = Stamp {
            at: "t2",
            version: Some(3),
        };
        stamp_metadata(
            &mut metadata,
            &obj(json!({"config": {"mode": "b", "level": null}})),
            second,
        );
        assert_eq!(
            Value::Object(metadata.clone()),
            json!({
                "interval": {"$lastUpdated": "t1", "$lastUpdatedVersion": 2},
                "config": {
                    "mode": {"$lastUpdated": "t2", "$lastUpdatedVersion": 3},
                    "$lastUpdated": "t2", "$lastUpdatedVersion": 3
                },
                "$lastUpdated": "t2", "$lastUpdatedVersion": 3
            })
        );
        let reported = Stamp {
            at: "t3",
            version: None,
        };
        stamp_metadata(&mut metadata, &obj(json!({"config": 7})), reported);
        assert_eq!(metadata["config"], json!({"$lastUpdated": "t3"}));
    }

    #[test]
    fn objects_inside_arrays_count_towards_depth() {
        let mut deep = nested(11);
        let v = deep.remove("k1").unwrap();
        let err = validate_patch(Section::Desired, &obj(json!({"a": [{"k1": v}]}))).unwrap_err();
        assert!(err.to_string().contains("desired.a[0].k1.k2"), "{err}");
    }

    #[test]
    fn eleven_nested_objects_are_rejected_with_the_path_of_the_deepest() {
        let err = validate_patch(Section::Reported, &nested(12)).unwrap_err();
        match &err {
            TwinError::Invalid { path, .. } => {
                assert_eq!(path, "reported.k1.k2.k3.k4.k5.k6.k7.k8.k9.k10.k11")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("reported.k1.k2"));
    }

    #[test]
    fn a_section_over_32_kb_is_rejected() {
        let big = "x".repeat(4000);
        let mut props = Properties::new();
        for i in 0..9 {
            props.insert(format!("p{i}"), Value::String(big.clone()));
        }
        assert!(section_size(&props) > 33 * 1000);
        let err = check_section_size(Section::Desired, &props).unwrap_err();
        assert!(matches!(
            err,
            TwinError::TooLarge {
                section: "desired",
                limit: MAX_SECTION_BYTES,
                ..
            }
        ));
        assert!(check_section_size(Section::Tags, &obj(json!({"t": "x".repeat(9000)}))).is_err());
        check_section_size(Section::Reported, &obj(json!({"t": "x".repeat(9000)}))).unwrap();
    }

    #[test]
    fn a_key_with_a_dot_is_rejected_naming_it() {
        let err = validate_patch(Section::Desired, &obj(json!({"ok": {"a.b": 1}}))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("desired.ok.a.b"), "{text}");
        assert!(text.contains("`a.b`"), "{text}");
    }

    #[test]
    fn keys_with_space_control_or_dollar_are_rejected() {
        for bad in [
            json!({"a b": 1}),
            json!({"a\u{1}": 1}),
            json!({"x": {"$y": 1}}),
        ] {
            assert!(validate_patch(Section::Reported, &obj(bad)).is_err());
        }
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(validate_patch(Section::Tags, &obj(json!({ long: 1 }))).is_err());
    }

    #[test]
    fn arrays_are_accepted_but_not_null_elements() {
        validate_patch(
            Section::Reported,
            &obj(json!({"arr": [1, "a", {"k": [true]}]})),
        )
        .unwrap();
        let err = validate_patch(Section::Desired, &obj(json!({"x": [1, 2, null]}))).unwrap_err();
        assert_eq!(
            err,
            TwinError::Invalid {
                path: "desired.x[2]".into(),
                reason: "null is not allowed inside arrays".into()
            }
        );
    }

    #[test]
    fn a_dollar_key_at_the_root_is_rejected_except_version_and_metadata() {
        let err = validate_patch(Section::Reported, &obj(json!({"$foo": 1}))).unwrap_err();
        assert!(err.to_string().contains("reported.$foo"));
        validate_patch(
            Section::Reported,
            &obj(json!({"$version": 3, "$metadata": {"$lastUpdated": "x"}, "a": null})),
        )
        .unwrap();
    }

    #[test]
    fn strings_and_integers_out_of_range_are_rejected() {
        let long = "s".repeat(MAX_STRING_BYTES + 1);
        assert!(validate_patch(Section::Reported, &obj(json!({ "s": long }))).is_err());
        assert!(validate_patch(Section::Reported, &obj(json!({"i": MAX_INT + 1}))).is_err());
        assert!(validate_patch(Section::Reported, &obj(json!({"i": u64::MAX}))).is_err());
        validate_patch(Section::Reported, &obj(json!({"i": MIN_INT, "f": 1.5e300}))).unwrap();
    }

    #[test]
    fn section_size_counts_keys_and_values_like_iot_hub() {
        let props = obj(json!({"ab": 1, "c": true, "d": "xyz", "e": {"f": null}, "$version": 4}));
        // ab+8, c+4, d+3, e + (f+1)
        assert_eq!(section_size(&props), 2 + 8 + 1 + 4 + 1 + 3 + 1 + (1 + 1));
    }

    #[test]
    fn strip_system_keys_removes_version_and_metadata_only() {
        let mut p = obj(json!({"$version": 1, "a": 1, "$metadata": {}, "$other": 2}));
        strip_system_keys(&mut p);
        assert_eq!(Value::Object(p), json!({"a": 1, "$other": 2}));
    }

    #[test]
    fn the_device_view_carries_both_versions() {
        let v = device_view(
            &obj(json!({"telemetryInterval": 5, "$version": 99})),
            12,
            &obj(json!({"fw": "1.2.0"})),
            123,
        );
        assert_eq!(
            v,
            json!({"desired": {"telemetryInterval": 5, "$version": 12}, "reported": {"fw": "1.2.0", "$version": 123}})
        );
    }

    #[test]
    fn a_desired_notification_contains_the_version() {
        let v = desired_notification(&obj(json!({"a": null, "b": 2})), 7);
        assert_eq!(v, json!({"a": null, "b": 2, "$version": 7}));
    }
}
