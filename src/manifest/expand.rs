//! Python's `os.path.expandvars` (POSIX), as iotedgedev applies it to templates and module.json.

use super::env::Env;

/// Expands `$NAME` (`NAME` = ASCII `[A-Za-z0-9_]+`) and `${TEXT}` (any text without `}`) once,
/// left to right. A name that is set (even to an empty value) is replaced by its value, which is
/// not rescanned; anything else is left untouched.
pub fn expandvars(text: &str, env: &Env) -> String {
    if !text.contains('$') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0; // bytes of `text` already copied to `out`
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let (name, end) = match bytes.get(i + 1) {
            Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => {
                let mut j = i + 1;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                (&text[i + 1..j], j)
            }
            Some(b'{') => match text[i + 2..].find('}') {
                Some(k) => (&text[i + 2..i + 2 + k], i + 2 + k + 1),
                None => {
                    i += 1;
                    continue;
                }
            },
            _ => {
                i += 1;
                continue;
            }
        };
        if let Some(value) = env.get(name) {
            out.push_str(&text[copied..i]);
            out.push_str(value);
            copied = end;
        }
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn expands_set_names_and_keeps_the_rest() {
        let e = env(&[
            ("EDGE_RUNTIME_VERSION", "1.5"),
            ("EMPTY", ""),
            ("upstream", "X"),
            ("A", "$B"),
            ("B", "no"),
        ]);
        assert_eq!(
            expandvars("agent:${EDGE_RUNTIME_VERSION} $EDGE_RUNTIME_VERSION.x", &e),
            "agent:1.5 1.5.x"
        );
        assert_eq!(expandvars("[${EMPTY}]", &e), "[]");
        assert_eq!(
            expandvars("${MODULES.edgetwin} ${UNSET} $UNSET", &e),
            "${MODULES.edgetwin} ${UNSET} $UNSET"
        );
        assert_eq!(expandvars("INTO $upstream", &e), "INTO X");
        assert_eq!(
            expandvars("$A", &e),
            "$B",
            "substituted text is not rescanned"
        );
        assert_eq!(expandvars("$$upstream ${ $", &e), "$X ${ $");
        assert_eq!(expandvars("$edgeAgent é $", &e), "$edgeAgent é $");
    }

    #[test]
    fn braces_take_any_text() {
        let e = env(&[("a.b", "dot"), ("", "empty-name")]);
        assert_eq!(expandvars("${a.b}", &e), "dot");
        assert_eq!(expandvars("${}", &e), "empty-name");
    }
}
