//! Evaluation of expressions against one JSON document (a twin), with IoT Hub's three values:
//! a value, or *undefined* (`None`) for a missing property and for any operation on operands
//! of the wrong type. A condition holds only when it evaluates to boolean `true`.
//!
//! Comparisons are defined between primitives of the same type only (no coercion); `AND`,
//! `OR` and `NOT` are three-valued; attribute names match case-insensitively when no key
//! matches exactly (`SELECT DeviceId` returns `deviceId`).

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use super::ast::{BinaryOp, Expr, Function, Path};

/// Finds `path` in `document`: the value and the key it was found under (the document's own
/// spelling of the last segment). The twin's own top-level properties match in any case (IoT
/// Hub's `SELECT DeviceId, LastActivityTime` returns `deviceId`, `lastActivityTime`); below them
/// (tags, desired and reported properties) names are case-sensitive, as twin keys are.
pub fn lookup<'a>(document: &'a Value, path: &Path) -> Option<(&'a str, &'a Value)> {
    let mut node = document;
    let mut key = "";
    for (depth, segment) in path.0.iter().enumerate() {
        let object = node.as_object()?;
        let (k, v) = object.get_key_value(segment.as_str()).or_else(|| {
            (depth == 0)
                .then(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(segment)))
                .flatten()
        })?;
        key = k;
        node = v;
    }
    Some((key, node))
}

/// Whether `condition` holds for `document`.
pub fn holds(condition: &Expr, document: &Value) -> bool {
    matches!(
        evaluate(condition, document).as_deref(),
        Some(Value::Bool(true))
    )
}

/// The value of `expr` for `document`; `None` is undefined.
pub fn evaluate<'a>(expr: &'a Expr, document: &'a Value) -> Option<Cow<'a, Value>> {
    match expr {
        Expr::Path(path) => lookup(document, path).map(|(_, v)| Cow::Borrowed(v)),
        Expr::Constant(value) => Some(Cow::Borrowed(value)),
        Expr::Undefined => None,
        Expr::Not(inner) => Some(owned(Value::Bool(!truth(inner, document)?))),
        Expr::Negate(inner) => number(-evaluate(inner, document)?.as_f64()?),
        Expr::Binary(left, BinaryOp::And, right) => {
            match (truth(left, document), truth(right, document)) {
                (Some(false), _) | (_, Some(false)) => Some(owned(Value::Bool(false))),
                (Some(true), Some(true)) => Some(owned(Value::Bool(true))),
                _ => None,
            }
        }
        Expr::Binary(left, BinaryOp::Or, right) => {
            match (truth(left, document), truth(right, document)) {
                (Some(true), _) | (_, Some(true)) => Some(owned(Value::Bool(true))),
                (Some(false), Some(false)) => Some(owned(Value::Bool(false))),
                _ => None,
            }
        }
        Expr::Binary(left, op, right) => {
            let (left, right) = (evaluate(left, document)?, evaluate(right, document)?);
            binary(&left, *op, &right)
        }
        Expr::In {
            value,
            list,
            negated,
        } => {
            let value = evaluate(value, document)?;
            let found = list
                .iter()
                .any(|item| compare(&value, item) == Some(Ordering::Equal));
            Some(owned(Value::Bool(found != *negated)))
        }
        Expr::Call(function, args) => call(*function, args, document),
    }
}

fn owned<'a>(value: Value) -> Cow<'a, Value> {
    Cow::Owned(value)
}

fn number<'a>(value: f64) -> Option<Cow<'a, Value>> {
    json_number(value).map(owned)
}

/// A computed number as JSON: whole results stay integers, as in the documents (`2 + 1` is
/// `3`, not `3.0`); `None` for infinities and NaN.
pub(super) fn json_number(value: f64) -> Option<Value> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        return Some(Value::from(value as i64));
    }
    serde_json::Number::from_f64(value).map(Value::Number)
}

/// A boolean operand of `AND`, `OR`, `NOT`; anything else is undefined.
fn truth(expr: &Expr, document: &Value) -> Option<bool> {
    evaluate(expr, document)?.as_bool()
}

/// Orders two primitives of the same type; `None` for other pairs.
fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

fn binary<'a>(left: &Value, op: BinaryOp, right: &Value) -> Option<Cow<'a, Value>> {
    let ordering = || compare(left, right);
    let boolean = |b: bool| Some(owned(Value::Bool(b)));
    let (a, b) = (left.as_f64(), right.as_f64());
    match op {
        BinaryOp::Eq => boolean(ordering()? == Ordering::Equal),
        BinaryOp::Ne => boolean(ordering()? != Ordering::Equal),
        BinaryOp::Lt => boolean(ordering()? == Ordering::Less),
        BinaryOp::Gt => boolean(ordering()? == Ordering::Greater),
        BinaryOp::Le => boolean(ordering()? != Ordering::Greater),
        BinaryOp::Ge => boolean(ordering()? != Ordering::Less),
        BinaryOp::Add => number(a? + b?),
        BinaryOp::Sub => number(a? - b?),
        BinaryOp::Mul => number(a? * b?),
        BinaryOp::Div => number(a? / b.filter(|b| *b != 0.0)?),
        BinaryOp::Mod => number(a? % b.filter(|b| *b != 0.0)?),
        BinaryOp::And | BinaryOp::Or => None,
    }
}

fn call<'a>(function: Function, args: &'a [Expr], document: &'a Value) -> Option<Cow<'a, Value>> {
    let value = args.first().and_then(|arg| evaluate(arg, document));
    let is =
        |test: fn(&Value) -> bool| Some(owned(Value::Bool(value.as_deref().is_some_and(test))));
    match function {
        Function::IsDefined => Some(owned(Value::Bool(value.is_some()))),
        Function::IsArray => is(Value::is_array),
        Function::IsBool => is(Value::is_boolean),
        Function::IsNull => is(Value::is_null),
        Function::IsNumber => is(Value::is_number),
        Function::IsObject => is(Value::is_object),
        Function::IsPrimitive => is(|v| !(v.is_array() || v.is_object())),
        Function::IsString => is(Value::is_string),
        Function::StartsWith | Function::EndsWith => {
            let text = value?;
            let other = evaluate(args.get(1)?, document)?;
            let (text, other) = (text.as_str()?, other.as_str()?);
            Some(owned(Value::Bool(if function == Function::StartsWith {
                text.starts_with(other)
            } else {
                text.ends_with(other)
            })))
        }
        Function::ArrayContains => {
            let array = value?;
            let wanted = evaluate(args.get(1)?, document)?;
            let found = array
                .as_array()?
                .iter()
                .any(|element| compare(element, &wanted).is_some_and(|o| o == Ordering::Equal));
            Some(owned(Value::Bool(found)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_condition;
    use super::*;
    use serde_json::json;

    fn twin() -> Value {
        json!({
            "deviceId": "gw-1",
            "status": "enabled",
            "tags": { "ring": 2, "name": "edge-gateway", "none": null, "list": [1, 2] },
            "properties": { "desired": { "interval": 30 }, "reported": { "interval": 30 } },
        })
    }

    fn check(condition: &str) -> bool {
        holds(&parse_condition(condition).unwrap(), &twin())
    }

    #[test]
    fn attribute_names_match_case_insensitively_and_keep_the_documents_spelling() {
        let path = Path(vec!["DeviceID".into()]);
        assert_eq!(lookup(&twin(), &path), Some(("deviceId", &json!("gw-1"))));
        assert!(check("DEVICEID = 'gw-1'"));
    }

    #[test]
    fn names_below_the_twins_own_properties_are_case_sensitive_as_twin_keys_are() {
        assert!(check("TAGS.ring = 2"));
        assert!(!check("tags.RING = 2"));
        assert!(!check("properties.Desired.interval = 30"));
    }

    #[test]
    fn array_contains_finds_an_equal_primitive_and_is_undefined_on_what_is_not_an_array() {
        assert!(check(
            "ARRAY_CONTAINS(tags.list, 2) AND array_contains(tags.list, 1.0)"
        ));
        assert!(!check("ARRAY_CONTAINS(tags.list, 3)"));
        assert!(!check("ARRAY_CONTAINS(tags.list, '2')"));
        assert!(!check("ARRAY_CONTAINS(tags.ring, 2)"));
        assert!(!check("NOT ARRAY_CONTAINS(tags.ring, 2)"));
        assert!(!check("ARRAY_CONTAINS(tags.missing, 2)"));
    }

    #[test]
    fn type_functions_test_the_json_type_and_are_false_for_a_missing_property() {
        assert!(check(
            "IS_STRING(deviceId) AND IS_NUMBER(tags.ring) AND is_array(tags.list)"
        ));
        assert!(check(
            "IS_NULL(tags.none) AND IS_DEFINED(tags.none) AND IS_PRIMITIVE(tags.none)"
        ));
        assert!(check("IS_OBJECT(tags) AND IS_BOOL(tags.ring = 2)"));
        assert!(check(
            "NOT IS_STRING(tags.missing) AND NOT IS_DEFINED(tags.missing)"
        ));
    }

    #[test]
    fn startswith_and_endswith_compare_strings_and_are_undefined_for_other_types() {
        assert!(check(
            "STARTSWITH(deviceId, 'gw-') AND ENDSWITH(tags.name, 'gateway')"
        ));
        assert!(!check("STARTSWITH(tags.ring, '2')"));
        assert!(!check("NOT STARTSWITH(tags.ring, '2')"));
    }

    #[test]
    fn arithmetic_works_on_numbers_and_comparisons_between_two_properties() {
        assert!(check("tags.ring * 15 = properties.desired.interval"));
        assert!(check(
            "properties.desired.interval = properties.reported.interval"
        ));
        assert!(check(
            "tags.ring % 2 = 0 AND -tags.ring < 0 AND 7 / 2 = 3.5"
        ));
        assert!(!check("tags.ring / 0 = 1"));
        assert!(!check("tags.name + 1 = 1"));
    }

    #[test]
    fn undefined_propagates_through_not_but_a_known_false_side_decides_and_or() {
        assert!(!check("NOT tags.missing = 1"));
        assert!(!check("tags.missing = 1 AND tags.ring = 2"));
        assert!(check("tags.missing = 1 OR tags.ring = 2"));
        assert!(check("NOT (tags.missing = 1 AND tags.ring = 3)"));
        assert!(!check("tags.ring = undefined"));
    }

    #[test]
    fn objects_and_arrays_never_compare() {
        assert!(!check("tags = tags"));
        assert!(!check("tags.list = [1, 2]"));
        assert!(check("tags.ring IN [1, 2] AND tags.ring NIN ['2']"));
    }
}
