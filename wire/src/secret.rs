//! A string that must never be printed: symmetric keys, SAS signatures and tokens,
//! connection strings containing keys.
//!
//! [`Secret`] has a redacting [`Debug`](std::fmt::Debug) implementation and deliberately no
//! [`Display`](std::fmt::Display); the value is only reachable through [`Secret::expose`].

use serde::{Deserialize, Serialize};

/// A secret string (key, signature, token). Serializes transparently as the plain string,
/// but `Debug` prints `Secret(<redacted>)`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value as a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Returns the secret value. Call sites are easy to audit by searching for `expose`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_does_not_contain_the_value() {
        let s = Secret::new("c3VwZXJzZWNyZXQ=");
        let dbg = format!("{s:?}");
        assert_eq!(dbg, "Secret(<redacted>)");
        assert!(!dbg.contains("c3VwZXJzZWNyZXQ="));
    }

    #[test]
    fn expose_returns_the_wrapped_value() {
        assert_eq!(Secret::from("abc").expose(), "abc");
        assert_eq!(Secret::from(String::from("xyz")).expose(), "xyz");
    }

    #[test]
    fn serializes_as_a_plain_json_string() {
        let s = Secret::new("k=");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"k=\"");
        let back: Secret = serde_json::from_str("\"k=\"").unwrap();
        assert_eq!(back, s);
    }
}
