//! createOptions: objects become minified, ASCII-escaped strings (Python
//! `json.dumps(obj, separators=(',', ':'))`), split into 512-character chunks stored as
//! `createOptions`, `createOptions01` … `createOptions07`.

use super::serialize::to_python_compact;
use super::value::{Object, Value};

/// Characters per twin string value (and so per createOptions chunk).
pub const CHUNK_CHARS: usize = 512;
/// At most this many chunks (4 KiB in all).
pub const MAX_CHUNKS: usize = 8;

/// The name of chunk `index`: `createOptions`, `createOptions01`, … `createOptions07`.
pub fn chunk_key(index: usize) -> String {
    if index == 0 {
        "createOptions".to_string()
    } else {
        format!("createOptions{index:02}")
    }
}

/// The string form of a createOptions value: strings are kept as given, anything else is
/// serialised compactly (`{}` → `"{}"`, `null` → `"null"`).
pub fn stringify(value: &Value) -> String {
    match value {
        Value::Str(s) => s.clone(),
        other => to_python_compact(other),
    }
}

/// Splits `s` into consecutive chunks of [`CHUNK_CHARS`] Unicode code points (the last may be
/// shorter). An empty string gives no chunks.
pub fn chunks(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars
        .chunks(CHUNK_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

/// Converts `settings.createOptions` in place as iotedgedev's `convert_create_options` does.
/// Returns `Err((characters, chunks))` when more than [`MAX_CHUNKS`] chunks would be needed
/// (then `settings` is left unchanged).
pub fn convert_settings(settings: &mut Object) -> Result<(), (usize, usize)> {
    let Some(value) = settings.get("createOptions") else {
        return Ok(());
    };
    let text = stringify(value);
    let parts = chunks(&text);
    if parts.len() > MAX_CHUNKS {
        return Err((text.chars().count(), parts.len()));
    }
    for (i, part) in parts.into_iter().enumerate() {
        // Chunk 0 replaces `createOptions` in place; the others are appended (or replace an
        // existing key of the same name in place), as Python dict assignment does.
        settings.insert(chunk_key(i), Value::Str(part));
    }
    Ok(())
}

/// The createOptions chunks present in `settings`, in order, stopping at the first gap
/// (`createOptions`, `createOptions01`, …): `(key, value)` pairs.
pub fn present_chunks(settings: &Object) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for i in 0..MAX_CHUNKS {
        let key = chunk_key(i);
        match settings.get(&key) {
            Some(v) => out.push((key, v)),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::value::parse;
    use super::*;

    fn settings(json: &str) -> Object {
        parse(json).unwrap().as_object().unwrap().clone()
    }

    #[test]
    fn object_becomes_minified_ascii_string() {
        let mut s = settings(
            r#"{"image": "x", "createOptions": {"HostConfig": {"Binds": ["/tmp:/tmp"]}, "Labels": {"x": "café"}}}"#,
        );
        convert_settings(&mut s).unwrap();
        assert_eq!(
            s.get("createOptions").and_then(Value::as_str),
            Some(r#"{"HostConfig":{"Binds":["/tmp:/tmp"]},"Labels":{"x":"caf\u00e9"}}"#)
        );
    }

    #[test]
    fn empty_and_null_and_strings() {
        let mut s = settings(r#"{"createOptions": {}}"#);
        convert_settings(&mut s).unwrap();
        assert_eq!(s.get("createOptions").and_then(Value::as_str), Some("{}"));
        let mut s = settings(r#"{"createOptions": null}"#);
        convert_settings(&mut s).unwrap();
        assert_eq!(s.get("createOptions").and_then(Value::as_str), Some("null"));
        let mut s = settings(r#"{"createOptions": ""}"#);
        convert_settings(&mut s).unwrap();
        assert_eq!(s.get("createOptions").and_then(Value::as_str), Some(""));
        assert_eq!(s.len(), 1);
        let mut s = settings(r#"{"createOptions": "{ \"a\" : 1 }"}"#);
        convert_settings(&mut s).unwrap();
        assert_eq!(
            s.get("createOptions").and_then(Value::as_str),
            Some("{ \"a\" : 1 }")
        );
    }

    #[test]
    fn long_options_split_at_512_after_the_last_key() {
        let long = "a".repeat(1100);
        let json = format!(r#"{{"createOptions": {{"Env": ["{long}"]}}, "image": "i"}}"#);
        let mut s = settings(&json);
        convert_settings(&mut s).unwrap();
        let keys: Vec<_> = s.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "createOptions",
                "image",
                "createOptions01",
                "createOptions02"
            ]
        );
        let total: String = present_chunks(&s)
            .iter()
            .map(|(_, v)| v.as_str().unwrap())
            .collect();
        assert_eq!(total, format!(r#"{{"Env":["{long}"]}}"#));
        assert_eq!(s.get("createOptions").unwrap().as_str().unwrap().len(), 512);
        assert_eq!(
            s.get("createOptions02").unwrap().as_str().unwrap().len(),
            1112 - 1024
        );
    }

    #[test]
    fn chunks_count_code_points_and_newlines() {
        let s = "é\n".repeat(300);
        let parts = chunks(&s);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].chars().count(), 512);
        assert_eq!(parts[1].chars().count(), 88);
    }

    #[test]
    fn more_than_eight_chunks_is_refused() {
        let json = format!(r#"{{"createOptions": "{}"}}"#, "b".repeat(8 * 512 + 1));
        let mut s = settings(&json);
        assert_eq!(convert_settings(&mut s), Err((4097, 9)));
        let json = format!(r#"{{"createOptions": "{}"}}"#, "b".repeat(8 * 512));
        let mut s = settings(&json);
        convert_settings(&mut s).unwrap();
        assert!(s.contains_key("createOptions07"));
    }
}
