//! Target conditions of configurations and deployments: the WHERE clause of IoT Hub's query
//! language (docs/spec/iothub-service-and-manifest.md A4) without the keyword, e.g. `tags.environment='prod' AND deviceId IN
//! ['a','b']`. The grammar and its evaluation are [`crate::query`]'s; this is the name the
//! deployment code and edgeHub routes use for "a condition over one twin".
//!
//! A comparison with a missing property, or between values of different types, is *undefined*;
//! a condition selects a twin only when it evaluates to `true`.

use serde_json::Value;

use crate::query::{self, Expr, QueryError};

/// A condition that does not parse, with the byte offset where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target condition at character {offset}: {reason}")]
pub struct ConditionError {
    /// Byte offset in the condition text.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

impl From<QueryError> for ConditionError {
    fn from(error: QueryError) -> Self {
        Self {
            offset: error.offset,
            reason: error.reason,
        }
    }
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition(Expr);

impl Condition {
    /// Parses a condition such as `tags.environment='prod' AND deviceId IN ['a','b']`.
    pub fn parse(text: &str) -> Result<Self, ConditionError> {
        Ok(Self(query::parse_condition(text)?))
    }

    /// Parses the target condition of an automatic module configuration (`content.moduleContent`),
    /// which names its collection: `FROM devices.modules WHERE tags.environment='test'` (the
    /// keywords in any case). IoT Hub's documentation writes module conditions so ("For module
    /// configurations, ... `from devices.modules where tags.environment='test'`": MicrosoftDocs
    /// azure-docs, `articles/iot-hub/iot-hub-automatic-device-management-cli.md`), and the Azure
    /// CLI refuses a module configuration whose condition does not start with it (azure-iot-cli-
    /// extension 0.9.0, "the target condition starting with 'from devices.modules where' is
    /// enforced").
    pub fn parse_module(text: &str) -> Result<Self, ConditionError> {
        let mut rest = text.trim_start();
        for keyword in ["from", "devices.modules", "where"] {
            let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if !rest[..word_end].eq_ignore_ascii_case(keyword) {
                return Err(ConditionError {
                    offset: text.len() - rest.len(),
                    reason: "a module configuration's target condition must start with \
                             'FROM devices.modules WHERE'"
                        .into(),
                });
            }
            rest = rest[word_end..].trim_start();
        }
        let start = text.len() - rest.len();
        Self::parse(rest).map_err(|e| ConditionError {
            offset: e.offset + start,
            reason: e.reason,
        })
    }

    /// Whether `twin` (a twin document: `deviceId`, `tags`, `properties`, ...) is selected.
    pub fn matches(&self, twin: &Value) -> bool {
        query::holds(&self.0, twin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn module_conditions_name_their_collection_in_any_case() {
        let module = json!({ "deviceId": "d", "moduleId": "m", "tags": { "environment": "test" } });
        let condition =
            Condition::parse_module("from devices.modules where tags.environment='test'").unwrap();
        assert!(condition.matches(&module));
        let upper =
            Condition::parse_module("  FROM  devices.modules\tWHERE moduleId = 'm'").unwrap();
        assert!(upper.matches(&module));
        let missing = Condition::parse_module("tags.environment='test'").unwrap_err();
        assert_eq!(missing.offset, 0);
        assert!(missing.reason.contains("FROM devices.modules WHERE"));
        let devices = Condition::parse_module("FROM devices WHERE tags.a = 1").unwrap_err();
        assert_eq!(devices.offset, 5);
        let bad = Condition::parse_module("FROM devices.modules WHERE tags.a = ").unwrap_err();
        assert!(bad.offset >= "FROM devices.modules WHERE ".len(), "{bad:?}");
    }

    fn twin() -> Value {
        json!({
            "deviceId": "gw-1",
            "tags": { "environment": "prod", "location": { "building": "43" }, "ring": 2 },
            "properties": { "reported": { "fw": "1.2.0" } },
            "capabilities": { "iotEdge": true },
        })
    }

    #[test]
    fn a_multi_byte_char_where_a_keyword_could_end_is_an_error_not_a_panic() {
        // Found by the condition_route fuzz target: `keyword` sliced `rest[..3]` inside `؏`.
        let text = "NOT (properties\u{64d}\u{60f}rod';;;;;;;;;;;;;; AND deviceId IN ['d1','d2']gs.nested.x.y)";
        assert!(Condition::parse(text).is_err());
        for text in [
            "é",
            "tags.a = 'x' Aé",
            "tags.a = 'x' ANé",
            "NOé",
            "tags.a Ié ['x']",
        ] {
            assert!(Condition::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn tag_and_device_id_conditions_select_the_right_twins() {
        let t = twin();
        assert!(Condition::parse("tags.environment='prod'")
            .unwrap()
            .matches(&t));
        assert!(!Condition::parse("tags.environment='test'")
            .unwrap()
            .matches(&t));
        assert!(
            Condition::parse("tags.location.building = '43' AND tags.environment=\"prod\"")
                .unwrap()
                .matches(&t)
        );
        assert!(Condition::parse("deviceId IN ['gw-0', 'gw-1']")
            .unwrap()
            .matches(&t));
        assert!(Condition::parse("deviceId NIN ['gw-0']")
            .unwrap()
            .matches(&t));
        assert!(
            Condition::parse("tags.ring >= 2 and capabilities.iotEdge = true")
                .unwrap()
                .matches(&t)
        );
        assert!(
            Condition::parse("(tags.ring < 2) OR properties.reported.fw <> '1.0'")
                .unwrap()
                .matches(&t)
        );
    }

    #[test]
    fn a_missing_property_is_undefined_so_neither_it_nor_its_negation_selects() {
        let t = twin();
        assert!(!Condition::parse("tags.missing='x'").unwrap().matches(&t));
        assert!(!Condition::parse("NOT tags.missing='x'")
            .unwrap()
            .matches(&t));
        assert!(Condition::parse("NOT IS_DEFINED(tags.missing)")
            .unwrap()
            .matches(&t));
        assert!(
            !Condition::parse("tags.ring = '2'").unwrap().matches(&t),
            "no coercion between types"
        );
    }

    #[test]
    fn errors_give_the_position_of_the_problem() {
        let error = Condition::parse("tags.env = ").unwrap_err();
        assert_eq!(error.offset, 11);
        assert!(Condition::parse("tags.env == 'x'").is_err());
        assert!(Condition::parse("tags.env = 'x' extra").is_err());
        assert!(Condition::parse("tags.env = 'unterminated").is_err());
    }
}
