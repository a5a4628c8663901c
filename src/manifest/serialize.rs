//! Serialisation compatible with Python's `json.dumps`/`json.dump` (default `ensure_ascii=True`).
//!
//! [`to_python_indent2`] reproduces `json.dump(obj, f, indent=2)` byte for byte (no trailing
//! newline); [`to_python_compact`] reproduces `json.dumps(obj, separators=(',', ':'))`.

use super::value::Value;

/// `json.dump(value, f, indent=2)`: two-space indent, `": "` after keys, no trailing newline.
pub fn to_python_indent2(value: &Value) -> String {
    let mut out = String::new();
    write_indented(&mut out, value, 0);
    out
}

/// `json.dumps(value, separators=(',', ':'))`: minified, ASCII-escaped, key order kept.
pub fn to_python_compact(value: &Value) -> String {
    let mut out = String::new();
    write_compact(&mut out, value);
    out
}

fn newline(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn write_indented(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                write_indented(out, item, level + 1);
            }
            newline(out, level);
            out.push(']');
        }
        Value::Object(object) if !object.is_empty() => {
            out.push('{');
            for (i, (key, item)) in object.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                write_string(out, key);
                out.push_str(": ");
                write_indented(out, item, level + 1);
            }
            newline(out, level);
            out.push('}');
        }
        other => write_scalar(out, other),
    }
}

fn write_compact(out: &mut String, value: &Value) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_compact(out, item);
            }
            out.push(']');
        }
        Value::Object(object) => {
            out.push('{');
            for (i, (key, item)) in object.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_compact(out, item);
            }
            out.push('}');
        }
        other => write_scalar(out, other),
    }
}

fn write_scalar(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(text) => out.push_str(text),
        Value::Float(f) => out.push_str(&float_repr(*f)),
        Value::Str(s) => write_string(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// A JSON string literal as Python's `ensure_ascii` encoder writes it: `"` and `\` escaped,
/// `\n \r \t \b \f` short, everything else outside `' '..='~'` as lowercase `\uXXXX`
/// (astral characters as surrogate pairs).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `float.__repr__` as `json` uses it (`NaN`, `Infinity`, `-Infinity` for the specials):
/// shortest round-trip digits; scientific notation when the decimal exponent is below -4 or at
/// least 16 (`1e-05`, `1e+16`), otherwise positional with at least one fractional digit (`1000.0`).
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e17", "0e0", "-0e0".
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exponent) {
        let mut out = String::from(sign);
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        out.push_str(&format!("e{exp_sign}{:02}", exponent.abs()));
        return out;
    }
    let point = exponent + 1; // digits before the decimal point
    let mut out = String::from(sign);
    if point <= 0 {
        out.push_str("0.");
        for _ in 0..(-point) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let point = point as usize;
        if digits.len() <= point {
            out.push_str(&digits);
            for _ in digits.len()..point {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::value::parse;
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (1000.0, "1000.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (0.1, "0.1"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
            (123.456, "123.456"),
            (f64::INFINITY, "Infinity"),
        ];
        for (f, expected) in cases {
            assert_eq!(float_repr(f), expected, "{f:e}");
        }
    }

    #[test]
    fn indent2_layout() {
        let v = parse(r#"{"a": [1, 2.50, {}], "b": {"c": []}, "d": "caf\u00e9\u007f/"}"#).unwrap();
        assert_eq!(
            to_python_indent2(&v),
            "{\n  \"a\": [\n    1,\n    2.5,\n    {}\n  ],\n  \"b\": {\n    \"c\": []\n  },\n  \"d\": \"caf\\u00e9\\u007f/\"\n}"
        );
    }

    #[test]
    fn compact_matches_spec_example() {
        let v = parse(r#"{"HostConfig":{"Binds":["/tmp:/tmp"]},"Labels":{"x":"café"}}"#).unwrap();
        assert_eq!(
            to_python_compact(&v),
            r#"{"HostConfig":{"Binds":["/tmp:/tmp"]},"Labels":{"x":"caf\u00e9"}}"#
        );
        let v = parse("\"\\ud83d\\ude00\\b\\u0001\"").unwrap();
        assert_eq!(to_python_compact(&v), r#""\ud83d\ude00\b\u0001""#);
    }
}
