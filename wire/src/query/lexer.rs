//! Tokens of the query language, each with the byte offset where it starts.
//!
//! Identifiers are `[A-Za-z_$][A-Za-z0-9_$]*` (keywords are identifiers the parser compares
//! case-insensitively); `[[any text]]` right after a `.` is one quoted path segment (IoT Hub's
//! `configurations.[[id]].status`); strings take single or double quotes with the escapes the
//! language reference allows (`\'`, `\"`, `\\`, `\uXXXX`); numbers are decimal or `0x` hex.

use super::error::QueryError;

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// A name or a keyword, as written.
    Ident(String),
    /// `[[text]]` after a `.`: a path segment that may hold any character.
    Segment(String),
    /// A string literal, unescaped.
    Str(String),
    /// A number literal.
    Number(serde_json::Number),
    /// A punctuation or operator symbol: `( ) [ ] , . * + - / % = != <> < > <= >=`.
    Symbol(&'static str),
    /// The end of the text.
    End,
}

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned {
    /// The token.
    pub token: Token,
    /// Byte offset in the query text.
    pub offset: usize,
}

/// Symbols, longest first so that `<=` wins over `<`.
const SYMBOLS: [&str; 18] = [
    "!=", "<>", "<=", ">=", "(", ")", "[", "]", ",", ".", "*", "+", "-", "/", "%", "=", "<", ">",
];

/// Splits `text` into tokens, ending with [`Token::End`].
pub fn tokenize(text: &str) -> Result<Vec<Spanned>, QueryError> {
    let mut tokens: Vec<Spanned> = Vec::new();
    let mut pos = 0;
    while let Some(c) = text[pos..].chars().next() {
        if c.is_whitespace() {
            pos += c.len_utf8();
            continue;
        }
        let rest = &text[pos..];
        let after_dot = matches!(
            tokens.last(),
            Some(Spanned {
                token: Token::Symbol("."),
                ..
            })
        );
        let (token, len) = if after_dot && rest.starts_with("[[") {
            let end = rest[2..]
                .find("]]")
                .ok_or_else(|| QueryError::new(pos, "unterminated [[ ]] segment"))?;
            (Token::Segment(rest[2..2 + end].to_owned()), end + 4)
        } else if c == '\'' || c == '"' {
            string(rest, pos)?
        } else if c.is_ascii_digit() {
            number(rest, pos)?
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let len = identifier_length(rest);
            (Token::Ident(rest[..len].to_owned()), len)
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            (Token::Symbol(symbol), symbol.len())
        } else {
            return Err(QueryError::new(pos, format!("unexpected character '{c}'")));
        };
        tokens.push(Spanned { token, offset: pos });
        pos += len;
    }
    tokens.push(Spanned {
        token: Token::End,
        offset: text.len(),
    });
    Ok(tokens)
}

/// The length of the name at the start of `rest`. A `-` between two name characters belongs
/// to the name (twin keys may hold `-`, and target conditions such as `tags.site-id='x'` have
/// always meant that key); with a space on either side it subtracts.
fn identifier_length(rest: &str) -> usize {
    let bytes = rest.as_bytes();
    let name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    let mut len = 0;
    while let Some(&b) = bytes.get(len) {
        let hyphen_inside = b == b'-' && len > 0 && bytes.get(len + 1).is_some_and(|&n| name(n));
        if !(name(b) || hyphen_inside) {
            break;
        }
        len += 1;
    }
    len
}

/// A quoted string at the start of `rest` (which starts at `offset`): the value and its length.
fn string(rest: &str, offset: usize) -> Result<(Token, usize), QueryError> {
    let mut chars = rest.char_indices();
    let quote = chars.next().map(|(_, q)| q).unwrap_or('\'');
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped @ ('\'' | '"' | '\\'))) => value.push(escaped),
                Some((j, 'u')) => {
                    let hex = rest.get(j + 1..j + 5).unwrap_or("");
                    let code = u32::from_str_radix(hex, 16)
                        .ok()
                        .filter(|_| hex.len() == 4)
                        .and_then(char::from_u32)
                        .ok_or_else(|| {
                            QueryError::new(offset + i, "\\u needs four hexadecimal digits")
                        })?;
                    value.push(code);
                    for _ in 0..4 {
                        chars.next();
                    }
                }
                _ => {
                    return Err(QueryError::new(
                        offset + i,
                        "unknown escape; use \\', \\\", \\\\ or \\uXXXX",
                    ))
                }
            },
            c if c == quote => return Ok((Token::Str(value), i + 1)),
            c => value.push(c),
        }
    }
    Err(QueryError::new(offset, "unterminated string"))
}

/// A number at the start of `rest`: decimal (`12`, `1.5`, `2e3`) or hexadecimal (`0x1F`).
fn number(rest: &str, offset: usize) -> Result<(Token, usize), QueryError> {
    let invalid = || QueryError::new(offset, "invalid number");
    if let Some(hex) = rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X")) {
        let len = hex
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(hex.len());
        let value = u64::from_str_radix(&hex[..len], 16).map_err(|_| invalid())?;
        return Ok((Token::Number(value.into()), len + 2));
    }
    let bytes = rest.as_bytes();
    let mut len = 0;
    let mut previous = b' ';
    while let Some(&b) = bytes.get(len) {
        let sign_of_exponent = (b == b'+' || b == b'-') && (previous == b'e' || previous == b'E');
        if !(b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || sign_of_exponent) {
            break;
        }
        previous = b;
        len += 1;
    }
    let number: serde_json::Number = serde_json::from_str(&rest[..len]).map_err(|_| invalid())?;
    Ok((Token::Number(number), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Token> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|s| s.token)
            .collect()
    }

    #[test]
    fn a_comparison_splits_into_path_operator_and_literal_tokens() {
        assert_eq!(
            kinds("tags.a<='x'"),
            vec![
                Token::Ident("tags".into()),
                Token::Symbol("."),
                Token::Ident("a".into()),
                Token::Symbol("<="),
                Token::Str("x".into()),
                Token::End
            ]
        );
    }

    #[test]
    fn a_double_bracket_after_a_dot_is_one_segment_but_elsewhere_nested_arrays() {
        assert_eq!(
            kinds("configurations.[[my.id]]")[2],
            Token::Segment("my.id".into())
        );
        assert_eq!(kinds("[[1]]")[0], Token::Symbol("["));
    }

    #[test]
    fn strings_unescape_the_documented_escapes_and_refuse_others() {
        assert_eq!(
            kinds(r#"'it\'s \u00e9 \\ \"'"#)[0],
            Token::Str("it's é \\ \"".into())
        );
        assert_eq!(tokenize(r"'a\n'").unwrap_err().offset, 2);
        assert!(tokenize(r"'\u12'").is_err());
        assert_eq!(tokenize("x = 'open").unwrap_err().offset, 4);
    }

    #[test]
    fn numbers_are_decimal_with_exponent_or_hexadecimal() {
        assert_eq!(kinds("0x1F")[0], Token::Number(31.into()));
        assert_eq!(
            kinds("2.5e-1")[0],
            Token::Number(serde_json::Number::from_f64(0.25).unwrap())
        );
        assert_eq!(kinds("3-1")[1], Token::Symbol("-"));
    }

    #[test]
    fn a_hyphen_between_name_characters_is_part_of_the_name_and_spaced_it_subtracts() {
        assert_eq!(kinds("tags.site-id")[2], Token::Ident("site-id".into()));
        assert_eq!(kinds("a - b")[1], Token::Symbol("-"));
        assert_eq!(kinds("a-")[1], Token::Symbol("-"));
        assert_eq!(kinds("a--b")[1], Token::Symbol("-"));
        assert!(tokenize("1.2.3").is_err());
    }

    #[test]
    fn an_unknown_character_names_its_offset() {
        let error = tokenize("tags.a = #").unwrap_err();
        assert_eq!(error.offset, 9);
        assert!(error.reason.contains('#'));
    }
}
