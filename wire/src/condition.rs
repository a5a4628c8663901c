//! Target conditions of configurations and deployments: the WHERE-clause subset of IoT Hub's query
//! language (service spec A4) — `AND`, `OR`, `NOT`, parentheses, comparisons (`=`, `!=`, `<>`, `<`,
//! `>`, `<=`, `>=`), `IN`/`NIN` over constant arrays, and `IS_DEFINED(path)`, over twin paths
//! such as `tags.environment`, `deviceId` or `properties.reported.fw`.
//!
//! A comparison with a missing property, or between values of different types, is *undefined*;
//! a condition selects a twin only when it evaluates to `true`.

use serde_json::Value;

/// A parse error, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target condition at character {offset}: {reason}")]
pub struct ConditionError {
    /// Byte offset in the condition text.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Both hold.
    And(Box<Condition>, Box<Condition>),
    /// Either holds.
    Or(Box<Condition>, Box<Condition>),
    /// The inner one is false.
    Not(Box<Condition>),
    /// `path op constant` (or the reverse).
    Compare(Operand, Op, Operand),
    /// `path IN [..]` (`negated`: `NIN`).
    In {
        /// The twin path.
        path: Vec<String>,
        /// The constants.
        values: Vec<Value>,
        /// `NIN`.
        negated: bool,
    },
    /// `IS_DEFINED(path)`.
    IsDefined(Vec<String>),
}

/// A comparison operand.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A twin path, split on dots.
    Path(Vec<String>),
    /// A constant.
    Constant(Value),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
}

impl Condition {
    /// Parses a condition such as `tags.environment='prod' AND deviceId IN ['a','b']`.
    pub fn parse(text: &str) -> Result<Self, ConditionError> {
        let mut parser = Parser { text, pos: 0 };
        let condition = parser.or()?;
        parser.skip_space();
        if parser.pos < text.len() {
            return Err(parser.error("unexpected text after the condition"));
        }
        Ok(condition)
    }

    /// Whether `twin` (a twin document: `deviceId`, `tags`, `properties`, ...) is selected.
    pub fn matches(&self, twin: &Value) -> bool {
        self.eval(twin) == Some(true)
    }

    /// Three-valued evaluation: `None` is undefined.
    fn eval(&self, twin: &Value) -> Option<bool> {
        match self {
            Condition::And(a, b) => match (a.eval(twin), b.eval(twin)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Condition::Or(a, b) => match (a.eval(twin), b.eval(twin)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Condition::Not(inner) => inner.eval(twin).map(|v| !v),
            Condition::IsDefined(path) => Some(lookup(twin, path).is_some()),
            Condition::In {
                path,
                values,
                negated,
            } => {
                let value = lookup(twin, path)?;
                let found = values
                    .iter()
                    .any(|v| compare(value, Op::Eq, v) == Some(true));
                Some(found != *negated)
            }
            Condition::Compare(left, op, right) => {
                let resolve = |operand: &Operand| match operand {
                    Operand::Path(path) => lookup(twin, path).cloned(),
                    Operand::Constant(value) => Some(value.clone()),
                };
                compare(&resolve(left)?, *op, &resolve(right)?)
            }
        }
    }
}

fn lookup<'a>(twin: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(twin, |node, key| node.as_object()?.get(key))
}

fn compare(left: &Value, op: Op, right: &Value) -> Option<bool> {
    use std::cmp::Ordering;
    let ordering = match (left, right) {
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?)?,
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Null, Value::Null) => Ordering::Equal,
        _ => return None,
    };
    Some(match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne => ordering != Ordering::Equal,
        Op::Lt => ordering == Ordering::Less,
        Op::Gt => ordering == Ordering::Greater,
        Op::Le => ordering != Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
    })
}

/// A recursive-descent parser over the condition text.
struct Parser<'a> {
    /// The whole condition.
    text: &'a str,
    /// Current byte offset.
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> ConditionError {
        ConditionError {
            offset: self.pos,
            reason: reason.to_owned(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    /// Consumes `keyword` (case-insensitive, whole word) if it comes next.
    fn keyword(&mut self, keyword: &str) -> bool {
        self.skip_space();
        let rest = self.rest();
        // `get`, not indexing: the byte after a keyword's length may be inside a multi-byte char.
        let matches = rest
            .get(..keyword.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(keyword))
            && !rest[keyword.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if matches {
            self.pos += keyword.len();
        }
        matches
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(symbol) {
            self.pos += symbol.len();
            return true;
        }
        false
    }

    fn or(&mut self) -> Result<Condition, ConditionError> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Condition::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition, ConditionError> {
        let mut left = self.not()?;
        while self.keyword("AND") {
            left = Condition::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Condition, ConditionError> {
        if self.keyword("NOT") {
            return Ok(Condition::Not(Box::new(self.not()?)));
        }
        if self.symbol("(") {
            let inner = self.or()?;
            if !self.symbol(")") {
                return Err(self.error("expected ')'"));
            }
            return Ok(inner);
        }
        if self.keyword("IS_DEFINED") {
            if !self.symbol("(") {
                return Err(self.error("expected '(' after IS_DEFINED"));
            }
            let path = self.path()?;
            if !self.symbol(")") {
                return Err(self.error("expected ')'"));
            }
            return Ok(Condition::IsDefined(path));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Condition, ConditionError> {
        let left = self.operand()?;
        if let Operand::Path(path) = &left {
            for (keyword, negated) in [("IN", false), ("NIN", true)] {
                if self.keyword(keyword) {
                    let Value::Array(values) = self.constant()? else {
                        return Err(self.error("IN and NIN take a constant array"));
                    };
                    return Ok(Condition::In {
                        path: path.clone(),
                        values,
                        negated,
                    });
                }
            }
        }
        let op = [
            ("<>", Op::Ne),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("=", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .into_iter()
        .find(|(symbol, _)| self.symbol(symbol))
        .map(|(_, op)| op)
        .ok_or_else(|| {
            self.error("expected a comparison operator (=, !=, <>, <, >, <=, >=, IN, NIN)")
        })?;
        let right = self.operand()?;
        Ok(Condition::Compare(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, ConditionError> {
        self.skip_space();
        match self.rest().chars().next() {
            Some(c) if c.is_ascii_alphabetic() || c == '$' || c == '_' || c == '[' => {
                let start = self.pos;
                for literal in ["true", "false", "null"] {
                    if self.keyword(literal) {
                        return Ok(Operand::Constant(
                            serde_json::from_str(literal).unwrap_or(Value::Null),
                        ));
                    }
                }
                self.pos = start;
                Ok(Operand::Path(self.path()?))
            }
            _ => Ok(Operand::Constant(self.constant()?)),
        }
    }

    fn path(&mut self) -> Result<Vec<String>, ConditionError> {
        self.skip_space();
        let mut segments = Vec::new();
        loop {
            let rest = self.rest().to_owned();
            let segment = if let Some(quoted) = rest.strip_prefix("[[") {
                let end = quoted
                    .find("]]")
                    .ok_or_else(|| self.error("unterminated [[ ]] segment"))?;
                self.pos += end + 4;
                quoted[..end].to_owned()
            } else {
                let len = rest
                    .find(|c: char| {
                        !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-')
                    })
                    .unwrap_or(rest.len());
                if len == 0 {
                    return Err(self.error("expected a property path"));
                }
                self.pos += len;
                rest[..len].to_owned()
            };
            segments.push(segment);
            if !self.rest().starts_with('.') {
                return Ok(segments);
            }
            self.pos += 1;
        }
    }

    fn constant(&mut self) -> Result<Value, ConditionError> {
        self.skip_space();
        let rest = self.rest().to_owned();
        match rest.chars().next() {
            Some(quote @ ('\'' | '"')) => {
                let mut value = String::new();
                let mut chars = rest[1..].char_indices();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, escaped)) => value.push(escaped),
                            None => break,
                        },
                        c if c == quote => {
                            self.pos += i + 2;
                            return Ok(Value::String(value));
                        }
                        c => value.push(c),
                    }
                }
                Err(self.error("unterminated string"))
            }
            Some('[') => {
                self.pos += 1;
                let mut values = Vec::new();
                if self.symbol("]") {
                    return Ok(Value::Array(values));
                }
                loop {
                    values.push(self.constant()?);
                    if self.symbol("]") {
                        return Ok(Value::Array(values));
                    }
                    if !self.symbol(",") {
                        return Err(self.error("expected ',' or ']'"));
                    }
                }
            }
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let len = rest
                    .find(|c: char| !(c.is_ascii_digit() || "-+.eE".contains(c)))
                    .unwrap_or(rest.len());
                let number: Value =
                    serde_json::from_str(&rest[..len]).map_err(|_| self.error("invalid number"))?;
                self.pos += len;
                Ok(number)
            }
            _ => {
                for literal in ["true", "false", "null"] {
                    if self.keyword(literal) {
                        return Ok(serde_json::from_str(literal).unwrap_or(Value::Null));
                    }
                }
                Err(self.error("expected a constant (string, number, true, false, null or array)"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
