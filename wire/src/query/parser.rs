//! Recursive descent over the tokens: whole queries ([`parse_query`]) and bare conditions
//! ([`parse_condition`], the target conditions of deployments).
//!
//! Precedence, loosest first: `OR`, `AND`, `NOT`, comparison / `IN` / `NIN`, `+ -`, `* / %`,
//! unary `-`. Keywords and function names are case-insensitive.

use serde_json::Value;

use super::ast::{Aggregate, BinaryOp, Collection, Expr, Function, Path, Projected, Projection};
use super::ast::{Query, Select};
use super::error::QueryError;
use super::lexer::{tokenize, Spanned, Token};

/// IoT Hub's limit on the length of a query expression, in characters.
pub const MAX_QUERY_CHARS: usize = 8192;

/// Deepest nesting of parentheses, `NOT`, `-` and arrays: the parser and the evaluator recurse,
/// and 8192 characters of `(` must not exhaust a thread's stack.
pub const MAX_DEPTH: usize = 64;

/// Words that cannot start a property path.
const RESERVED: [&str; 15] = [
    "SELECT", "TOP", "FROM", "WHERE", "GROUP", "BY", "AS", "AND", "OR", "NOT", "IN", "NIN", "TRUE",
    "FALSE", "NULL",
];

/// Parses a whole query.
pub fn parse_query(text: &str) -> Result<Query, QueryError> {
    let mut parser = Parser::new(text)?;
    let query = parser.query()?;
    parser.end()?;
    Ok(query)
}

/// Parses a condition (the WHERE part without the keyword).
pub fn parse_condition(text: &str) -> Result<Expr, QueryError> {
    let mut parser = Parser::new(text)?;
    let condition = parser.or()?;
    parser.end()?;
    Ok(condition)
}

/// The tokens and the position in them.
struct Parser {
    /// All tokens, ending with [`Token::End`].
    tokens: Vec<Spanned>,
    /// Index of the next token.
    next: usize,
    /// Current nesting, bounded by [`MAX_DEPTH`].
    depth: usize,
    /// Paths of the WHERE condition are written `devices.jobs.<property>` (`FROM devices.jobs`):
    /// the prefix is dropped, the properties are the job record's.
    jobs_paths: bool,
}

impl Parser {
    fn new(text: &str) -> Result<Self, QueryError> {
        let chars = text.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(QueryError::new(
                0,
                format!("the query has {chars} characters; the limit is {MAX_QUERY_CHARS}"),
            ));
        }
        Ok(Self {
            tokens: tokenize(text)?,
            next: 0,
            depth: 0,
            jobs_paths: false,
        })
    }

    fn peek(&self) -> &Spanned {
        &self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn offset(&self) -> usize {
        self.peek().offset
    }

    fn advance(&mut self) -> Spanned {
        let token = self.peek().clone();
        if token.token != Token::End {
            self.next += 1;
        }
        token
    }

    fn error(&self, reason: impl Into<String>) -> QueryError {
        QueryError::new(self.offset(), reason)
    }

    fn end(&self) -> Result<(), QueryError> {
        match self.peek().token {
            Token::End => Ok(()),
            _ => Err(self.error("unexpected text after the end of the query")),
        }
    }

    /// Consumes `word` if it comes next: a keyword (case-insensitive) or a symbol.
    fn eat(&mut self, word: &str) -> bool {
        let found = match &self.peek().token {
            Token::Ident(ident) => ident.eq_ignore_ascii_case(word),
            Token::Symbol(symbol) => *symbol == word,
            _ => false,
        };
        if found {
            self.next += 1;
        }
        found
    }

    /// Consumes `word`, or fails saying it was expected.
    fn expect(&mut self, word: &str) -> Result<(), QueryError> {
        if self.eat(word) {
            return Ok(());
        }
        Err(self.error(format!("expected '{word}'")))
    }

    fn query(&mut self) -> Result<Query, QueryError> {
        self.expect("SELECT")?;
        let top = if self.eat("TOP") {
            match self.advance().token {
                Token::Number(n) if n.as_u64().is_some() => {
                    Some(usize::try_from(n.as_u64().unwrap_or(0)).unwrap_or(usize::MAX))
                }
                _ => return Err(self.error_before("TOP takes a whole number")),
            }
        } else {
            None
        };
        let select_at = self.offset();
        let select = if self.eat("*") {
            Select::All
        } else {
            let mut items = vec![self.projection()?];
            while self.eat(",") {
                items.push(self.projection()?);
            }
            Select::Items(items)
        };
        self.expect("FROM")?;
        let from = self.collection()?;
        if from == Collection::Jobs {
            // "Queries for IoT Hub jobs": projections and aggregates are not supported
            // (only SELECT *).
            if select != Select::All {
                return Err(QueryError::new(
                    select_at,
                    "FROM devices.jobs takes SELECT * only",
                ));
            }
            self.jobs_paths = true;
        }
        let filter = if self.eat("WHERE") {
            Some(self.or()?)
        } else {
            None
        };
        let group_by = if self.eat("GROUP") {
            self.expect("BY")?;
            Some(self.path()?)
        } else {
            None
        };
        check_select(&select, group_by.as_ref())
            .map_err(|reason| QueryError::new(select_at, reason))?;
        Ok(Query {
            top,
            select,
            from,
            filter,
            group_by,
        })
    }

    /// An error at the token just consumed.
    fn error_before(&self, reason: &str) -> QueryError {
        let at = self.tokens[self.next.saturating_sub(1)].offset;
        QueryError::new(at, reason)
    }

    fn collection(&mut self) -> Result<Collection, QueryError> {
        let at = self.offset();
        let path = self.path()?;
        let names: Vec<String> = path.0.iter().map(|s| s.to_ascii_lowercase()).collect();
        match names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["devices"] => Ok(Collection::Devices),
            ["devices", "modules"] => Ok(Collection::Modules),
            ["devices", "jobs"] => Ok(Collection::Jobs),
            _ => Err(QueryError::new(
                at,
                "FROM takes devices, devices.modules or devices.jobs",
            )),
        }
    }

    fn projection(&mut self) -> Result<Projection, QueryError> {
        let aggregate = [
            ("COUNT", Aggregate::Count),
            ("AVG", Aggregate::Avg),
            ("SUM", Aggregate::Sum),
            ("MIN", Aggregate::Min),
            ("MAX", Aggregate::Max),
        ]
        .into_iter()
        .find(|(name, _)| {
            matches!(&self.peek().token, Token::Ident(w) if w.eq_ignore_ascii_case(name))
                && self.tokens.get(self.next + 1).map(|t| &t.token) == Some(&Token::Symbol("("))
        });
        let value = match aggregate {
            Some((_, kind)) => {
                self.next += 2;
                let path = match kind {
                    Aggregate::Count => None,
                    _ => Some(self.path()?),
                };
                self.expect(")")?;
                Projected::Aggregate(kind, path)
            }
            None => Projected::Path(self.path()?),
        };
        let alias = if self.eat("AS") {
            match self.advance().token {
                Token::Ident(alias) => Some(alias),
                _ => return Err(self.error_before("AS takes a name")),
            }
        } else {
            None
        };
        Ok(Projection { value, alias })
    }

    fn path(&mut self) -> Result<Path, QueryError> {
        let mut segments = vec![match self.advance().token {
            Token::Ident(name) if !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&name)) => name,
            _ => return Err(self.error_before("expected a property path")),
        }];
        while self.eat(".") {
            match self.advance().token {
                Token::Ident(name) | Token::Segment(name) => segments.push(name),
                _ => return Err(self.error_before("expected a property name after '.'")),
            }
        }
        let prefixed = segments.len() > 2
            && segments[0].eq_ignore_ascii_case("devices")
            && segments[1].eq_ignore_ascii_case("jobs");
        if self.jobs_paths && prefixed {
            segments.drain(..2);
        }
        Ok(Path(segments))
    }

    /// Runs `f` one nesting level deeper; too deep is an error rather than a stack overflow.
    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, QueryError>,
    ) -> Result<T, QueryError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        self.nested(|p| p.level(&[("OR", BinaryOp::Or)], Self::and))
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        self.level(&[("AND", BinaryOp::And)], Self::not)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.eat("NOT") {
            return Ok(Expr::Not(Box::new(self.nested(Self::not)?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let left = self.additive()?;
        for (keyword, negated) in [("IN", false), ("NIN", true)] {
            if self.eat(keyword) {
                let at = self.offset();
                let Value::Array(list) = self.constant()? else {
                    return Err(QueryError::new(
                        at,
                        format!("{keyword} takes a constant array"),
                    ));
                };
                return Ok(Expr::In {
                    value: Box::new(left),
                    list,
                    negated,
                });
            }
        }
        let op = [
            ("=", BinaryOp::Eq),
            ("!=", BinaryOp::Ne),
            ("<>", BinaryOp::Ne),
            ("<", BinaryOp::Lt),
            (">", BinaryOp::Gt),
            ("<=", BinaryOp::Le),
            (">=", BinaryOp::Ge),
        ]
        .into_iter()
        .find(|(symbol, _)| self.eat(symbol));
        match op {
            Some((_, op)) => Ok(Expr::Binary(Box::new(left), op, Box::new(self.additive()?))),
            None => Ok(left),
        }
    }

    fn additive(&mut self) -> Result<Expr, QueryError> {
        self.level(
            &[("+", BinaryOp::Add), ("-", BinaryOp::Sub)],
            Self::multiplicative,
        )
    }

    fn multiplicative(&mut self) -> Result<Expr, QueryError> {
        let ops = [
            ("*", BinaryOp::Mul),
            ("/", BinaryOp::Div),
            ("%", BinaryOp::Mod),
        ];
        self.level(&ops, Self::unary)
    }

    /// One left-associative precedence level: `next (op next)*` for the operators in `ops`
    /// (keywords such as `AND`, or symbols).
    fn level(
        &mut self,
        ops: &[(&str, BinaryOp)],
        next: fn(&mut Self) -> Result<Expr, QueryError>,
    ) -> Result<Expr, QueryError> {
        let mut left = next(self)?;
        while let Some(op) = ops
            .iter()
            .find(|(word, _)| self.eat(word))
            .map(|(_, op)| *op)
        {
            left = Expr::Binary(Box::new(left), op, Box::new(next(self)?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.eat("-") {
            return Ok(Expr::Negate(Box::new(self.nested(Self::unary)?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let at = self.offset();
        match self.peek().token.clone() {
            Token::Symbol("(") => {
                self.next += 1;
                let inner = self.or()?;
                self.expect(")")?;
                Ok(inner)
            }
            Token::Ident(word) if word.eq_ignore_ascii_case("undefined") => {
                self.next += 1;
                Ok(Expr::Undefined)
            }
            Token::Ident(word)
                if self.tokens.get(self.next + 1).map(|t| &t.token)
                    == Some(&Token::Symbol("(")) =>
            {
                self.call(&word, at)
            }
            Token::Ident(word) if !is_literal(&word) => Ok(Expr::Path(self.path()?)),
            Token::End => Err(self.error("expected a value")),
            _ => Ok(Expr::Constant(self.constant()?)),
        }
    }

    fn call(&mut self, name: &str, at: usize) -> Result<Expr, QueryError> {
        let Some((function, _, arity)) = Function::ALL
            .into_iter()
            .find(|(_, n, _)| n.eq_ignore_ascii_case(name))
        else {
            let known: Vec<&str> = Function::ALL.iter().map(|(_, n, _)| *n).collect();
            return Err(QueryError::new(
                at,
                format!(
                    "unknown function '{name}'; twin queries know {}",
                    known.join(", ")
                ),
            ));
        };
        self.next += 2;
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(if function == Function::IsDefined {
                    Expr::Path(self.path()?)
                } else {
                    self.or()?
                });
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        if args.len() != arity {
            return Err(QueryError::new(
                at,
                format!(
                    "{} takes {arity} argument(s), not {}",
                    name.to_ascii_uppercase(),
                    args.len()
                ),
            ));
        }
        Ok(Expr::Call(function, args))
    }

    /// A constant: string, number (optionally negative), `true`, `false`, `null` or an array
    /// of constants.
    fn constant(&mut self) -> Result<Value, QueryError> {
        let token = self.advance();
        match token.token {
            Token::Str(s) => Ok(Value::String(s)),
            Token::Number(n) => Ok(Value::Number(n)),
            Token::Symbol("-") => match self.advance().token {
                Token::Number(n) => negative(&n)
                    .map(Value::Number)
                    .ok_or_else(|| self.error_before("invalid number")),
                _ => Err(self.error_before("expected a number after '-'")),
            },
            Token::Ident(word) if is_literal(&word) => {
                Ok(match word.to_ascii_lowercase().as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => Value::Null,
                })
            }
            Token::Symbol("[") => {
                let mut values = Vec::new();
                if self.eat("]") {
                    return Ok(Value::Array(values));
                }
                loop {
                    values.push(self.nested(Self::constant)?);
                    if self.eat("]") {
                        return Ok(Value::Array(values));
                    }
                    self.expect(",")?;
                }
            }
            _ => Err(QueryError::new(
                token.offset,
                "expected a constant (string, number, true, false, null or array)",
            )),
        }
    }
}

fn is_literal(word: &str) -> bool {
    ["true", "false", "null"]
        .iter()
        .any(|l| l.eq_ignore_ascii_case(word))
}

fn negative(n: &serde_json::Number) -> Option<serde_json::Number> {
    if let Some(i) = n.as_i64() {
        return Some((-i).into());
    }
    serde_json::Number::from_f64(-n.as_f64()?)
}

/// Rules of the SELECT list: without GROUP BY a list is either all aggregates or all
/// properties; with GROUP BY the properties must be the grouped one.
fn check_select(select: &Select, group_by: Option<&Path>) -> Result<(), String> {
    let Select::Items(items) = select else {
        return match group_by {
            Some(_) => Err(
                "SELECT * cannot be grouped; select the GROUP BY property and aggregates".into(),
            ),
            None => Ok(()),
        };
    };
    let aggregates = items
        .iter()
        .filter(|p| matches!(p.value, Projected::Aggregate(..)))
        .count();
    for item in items {
        if let Projected::Path(path) = &item.value {
            match group_by {
                Some(group) if !path.same_as(group) => {
                    return Err(format!(
                        "'{}' is not the GROUP BY property; select it and aggregates",
                        path.0.join(".")
                    ))
                }
                None if aggregates > 0 => {
                    return Err(format!(
                        "'{}' cannot be selected next to an aggregate without GROUP BY",
                        path.0.join(".")
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}
