//! Desired-property reconciliation (docs/spec/iothub-device-protocol.md §4.9, §5.4, §6), without I/O.
//!
//! Desired notifications are never queued for a disconnected client, so after every CONNACK the
//! session GETs the full twin and compares `desired.$version` with the last applied one. Patches
//! are applied only when their version is exactly `last + 1`; older ones are ignored and a gap
//! asks for a new GET.

use edgetwin_wire::twin::{merge_patch, strip_system_keys, Properties};
use serde_json::Value;

/// The twin's `$version` key.
const VERSION: &str = "$version";

/// What the application must apply.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredUpdate {
    /// The complete desired document now in force (without `$version`).
    pub desired: Properties,
    /// The changed part: `None` for a full document (first sync or resync), else the patch
    /// (without `$version`; `null` members mean "deleted").
    pub patch: Option<Properties>,
    /// The desired `$version` this update brings the application to.
    pub version: i64,
}

/// What to do with a desired patch notification.
#[derive(Clone, Debug, PartialEq)]
pub enum PatchOutcome {
    /// Version `last + 1`: applied.
    Applied(DesiredUpdate),
    /// Already covered (version not above the last applied), or no baseline yet while a GET
    /// is pending: nothing to do.
    Ignored,
    /// A version was skipped (or the patch carries none): GET the full twin.
    Resync,
}

/// The reconciliation state of the desired section.
#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    /// The complete desired document as last applied (without `$version`).
    desired: Properties,
    /// `desired.$version` last applied; `None` before the first full GET.
    version: Option<i64>,
    /// The highest version any patch announced, to detect a GET answer older than a patch.
    highest_seen: Option<i64>,
}

/// `$version` of a document, if it is an integer.
fn version_of(doc: &Properties) -> Option<i64> {
    doc.get(VERSION).and_then(Value::as_i64)
}

impl DesiredState {
    /// No baseline yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last applied `desired.$version`.
    pub fn version(&self) -> Option<i64> {
        self.version
    }

    /// The desired document in force.
    pub fn desired(&self) -> &Properties {
        &self.desired
    }

    /// A full desired section from a twin GET. Returns an update unless its version is the one
    /// already applied. A document without `$version` is applied as version 0.
    pub fn on_full(&mut self, mut desired: Properties) -> Option<DesiredUpdate> {
        let version = version_of(&desired).unwrap_or(0);
        strip_system_keys(&mut desired);
        if self.version == Some(version) {
            return None;
        }
        self.desired = desired.clone();
        self.version = Some(version);
        Some(DesiredUpdate {
            desired,
            patch: None,
            version,
        })
    }

    /// True if a patch announced a version above the one applied (a GET answer was older
    /// than a notification): the caller should GET again.
    pub fn behind(&self) -> bool {
        matches!((self.highest_seen, self.version), (Some(seen), Some(v)) if seen > v)
    }

    /// A desired patch notification; `topic_version` is the `$version` of the topic, used when
    /// the body has none.
    pub fn on_patch(&mut self, mut patch: Properties, topic_version: Option<i64>) -> PatchOutcome {
        let Some(version) = version_of(&patch).or(topic_version) else {
            return PatchOutcome::Resync;
        };
        strip_system_keys(&mut patch);
        self.highest_seen = Some(self.highest_seen.map_or(version, |s| s.max(version)));
        let Some(last) = self.version else {
            // The GET sent after CONNACK has not been answered; it covers this patch.
            return PatchOutcome::Ignored;
        };
        if version <= last {
            PatchOutcome::Ignored
        } else if version == last + 1 {
            merge_patch(&mut self.desired, &patch);
            self.version = Some(version);
            PatchOutcome::Applied(DesiredUpdate {
                desired: self.desired.clone(),
                patch: Some(patch),
                version,
            })
        } else {
            PatchOutcome::Resync
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Properties {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn first_full_twin_is_applied_whole() {
        let mut s = DesiredState::new();
        let u = s
            .on_full(props(json!({"telemetryInterval": 5, "$version": 3})))
            .unwrap();
        assert_eq!(u.version, 3);
        assert_eq!(u.patch, None);
        assert_eq!(u.desired, props(json!({"telemetryInterval": 5})));
        assert_eq!(s.version(), Some(3));
    }

    #[test]
    fn a_full_twin_with_the_applied_version_changes_nothing() {
        let mut s = DesiredState::new();
        s.on_full(props(json!({"a": 1, "$version": 3})));
        assert_eq!(s.on_full(props(json!({"a": 1, "$version": 3}))), None);
    }

    #[test]
    fn changes_made_while_offline_arrive_with_the_next_full_twin() {
        let mut s = DesiredState::new();
        s.on_full(props(json!({"a": 1, "$version": 3})));
        let u = s.on_full(props(json!({"a": 2, "$version": 5}))).unwrap();
        assert_eq!(u.version, 5);
        assert_eq!(u.desired, props(json!({"a": 2})));
    }

    #[test]
    fn the_next_patch_is_merged_into_the_document() {
        let mut s = DesiredState::new();
        s.on_full(props(json!({"a": 1, "b": {"x": 1}, "$version": 3})));
        let PatchOutcome::Applied(u) = s.on_patch(
            props(json!({"b": {"y": 2}, "a": null, "$version": 4})),
            None,
        ) else {
            panic!("not applied")
        };
        assert_eq!(u.version, 4);
        assert_eq!(u.desired, props(json!({"b": {"x": 1, "y": 2}})));
        assert_eq!(u.patch, Some(props(json!({"b": {"y": 2}, "a": null}))));
    }

    #[test]
    fn old_or_duplicate_patches_are_ignored() {
        let mut s = DesiredState::new();
        s.on_full(props(json!({"a": 1, "$version": 5})));
        for old in [5, 2] {
            assert_eq!(
                s.on_patch(props(json!({"a": 0, "$version": old})), None),
                PatchOutcome::Ignored
            );
        }
        assert_eq!(s.desired(), &props(json!({"a": 1})));
    }

    #[test]
    fn a_version_gap_asks_for_a_full_get() {
        let mut s = DesiredState::new();
        s.on_full(props(json!({"a": 1, "$version": 5})));
        assert_eq!(
            s.on_patch(props(json!({"a": 3, "$version": 7})), None),
            PatchOutcome::Resync
        );
        assert!(s.behind());
        s.on_full(props(json!({"a": 3, "$version": 7})));
        assert!(!s.behind());
    }

    #[test]
    fn patches_before_the_first_get_answer_are_left_to_the_get() {
        let mut s = DesiredState::new();
        assert_eq!(
            s.on_patch(props(json!({"a": 3, "$version": 7})), None),
            PatchOutcome::Ignored
        );
        s.on_full(props(json!({"a": 2, "$version": 6})));
        assert!(
            s.behind(),
            "the GET answer is older than a patch already seen"
        );
    }

    #[test]
    fn a_patch_without_any_version_asks_for_a_full_get() {
        let mut s = DesiredState::new();
        s.on_full(props(json!({"$version": 1})));
        assert_eq!(
            s.on_patch(props(json!({"a": 1})), None),
            PatchOutcome::Resync
        );
        assert!(matches!(
            s.on_patch(props(json!({"a": 1})), Some(2)),
            PatchOutcome::Applied(_)
        ));
    }
}
