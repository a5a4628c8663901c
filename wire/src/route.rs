//! edgeHub routes: `FROM <source> [WHERE <condition>] INTO <sink>` (docs/spec/iothub-service-and-manifest.md B1), parsed once
//! and shared by the manifest validator and the local hub's router.
//!
//! Sources: `/*`, `/messages/*`, `/messages/modules/*`, `/messages/modules/{m}/*`,
//! `/messages/modules/{m}/outputs/*`, `/messages/modules/{m}/outputs/{o}` and
//! `/twinChangeNotifications`. Sinks: `$upstream` and `BrokeredEndpoint("/modules/{m}/inputs/{i}")`.
//! Keywords are case-insensitive. The WHERE clause is kept as text: edgeHub's message query
//! language is larger than [`Condition`], so a route is valid whatever its condition says, and
//! [`Route::compiled_condition`] compiles the subset this crate evaluates.

use crate::condition::{Condition, ConditionError};

/// A route that does not parse, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No `FROM ... INTO ...` shape.
    #[error("a route must read `FROM <source> [WHERE <condition>] INTO <sink>`")]
    Shape,
    /// The source is not one edgeHub knows.
    #[error("unknown route source '{0}'")]
    Source(String),
    /// The sink is not `$upstream` or `BrokeredEndpoint(\"/modules/{{m}}/inputs/{{i}}\")`.
    #[error("unknown route sink '{0}'; use $upstream or BrokeredEndpoint(\"/modules/<module>/inputs/<input>\")")]
    Sink(String),
    /// `WHERE` with nothing after it.
    #[error("WHERE needs a condition")]
    EmptyCondition,
}

/// Which messages a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `/*` or `/messages/*`: every message.
    All,
    /// `/messages/modules/*`: every module's messages.
    AllModules,
    /// `/messages/modules/{m}/*`: all messages of one module.
    Module(String),
    /// `/messages/modules/{m}/outputs/*` or `.../outputs/{o}`: one module's outputs (all or one).
    Output {
        /// The module.
        module: String,
        /// The output, `None` for any.
        output: Option<String>,
    },
    /// `/twinChangeNotifications`: twin changes, not messages.
    TwinChangeNotifications,
}

/// Where a route delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// IoT Hub.
    Upstream,
    /// A module's input.
    ModuleInput {
        /// The module.
        module: String,
        /// The input name.
        input: String,
    },
}

/// A parsed route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Which messages.
    pub source: Source,
    /// The WHERE clause, as written.
    pub condition: Option<String>,
    /// Where they go.
    pub sink: Sink,
}

/// Finds `keyword` (case-insensitive, surrounded by whitespace) in `text`; returns its byte range.
fn find_keyword(text: &str, keyword: &str) -> Option<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let needle = format!(" {} ", keyword.to_ascii_lowercase());
    lower.find(&needle).map(|i| (i + 1, i + 1 + keyword.len()))
}

impl Route {
    /// Parses a route string.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let text = text.trim();
        if !text
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("FROM "))
        {
            return Err(RouteError::Shape);
        }
        let body = &text[4..];
        let (into_start, into_end) = find_keyword(body, "INTO").ok_or(RouteError::Shape)?;
        let (head, sink) = (&body[..into_start], body[into_end..].trim());
        let (source, condition) = match find_keyword(&format!("{head} "), "WHERE") {
            Some((start, end)) => {
                let condition = head.get(end..).unwrap_or("").trim();
                if condition.is_empty() {
                    return Err(RouteError::EmptyCondition);
                }
                (head[..start].trim(), Some(condition.to_owned()))
            }
            None => (head.trim(), None),
        };
        Ok(Route {
            source: parse_source(source)?,
            condition,
            sink: parse_sink(sink)?,
        })
    }

    /// The WHERE clause compiled for evaluation, if there is one; an error if it uses more of
    /// edgeHub's query language than [`Condition`] supports.
    pub fn compiled_condition(&self) -> Option<Result<Condition, ConditionError>> {
        self.condition.as_deref().map(Condition::parse)
    }

    /// Whether a message from `module` (`None`: the device itself) on `output` is taken.
    pub fn takes(&self, module: Option<&str>, output: Option<&str>) -> bool {
        match (&self.source, module) {
            (Source::All, _) => true,
            (Source::AllModules, Some(_)) => true,
            (Source::Module(m), Some(from)) => m == from,
            (
                Source::Output {
                    module: m,
                    output: o,
                },
                Some(from),
            ) => m == from && output.is_some() && o.as_deref().is_none_or(|o| Some(o) == output),
            _ => false,
        }
    }
}

fn parse_source(source: &str) -> Result<Source, RouteError> {
    let unknown = || RouteError::Source(source.to_owned());
    let segments: Vec<&str> = source.split('/').collect();
    let named = |s: &str| !s.is_empty() && s != "*";
    match segments.as_slice() {
        ["", "*"] | ["", "messages", "*"] => Ok(Source::All),
        ["", "twinChangeNotifications"] => Ok(Source::TwinChangeNotifications),
        ["", "messages", "modules", "*"] => Ok(Source::AllModules),
        ["", "messages", "modules", m, "*"] if named(m) => Ok(Source::Module((*m).to_owned())),
        ["", "messages", "modules", m, "outputs", o] if named(m) && !o.is_empty() => {
            Ok(Source::Output {
                module: (*m).to_owned(),
                output: (*o != "*").then(|| (*o).to_owned()),
            })
        }
        _ => Err(unknown()),
    }
}

fn parse_sink(sink: &str) -> Result<Sink, RouteError> {
    if sink.eq_ignore_ascii_case("$upstream") {
        return Ok(Sink::Upstream);
    }
    let unknown = || RouteError::Sink(sink.to_owned());
    let prefix = "brokeredendpoint(";
    if !sink.to_ascii_lowercase().starts_with(prefix) || !sink.ends_with(')') {
        return Err(unknown());
    }
    let inner = sink[prefix.len()..sink.len() - 1].trim();
    let path = inner
        .strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .ok_or_else(unknown)?;
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["", "modules", m, "inputs", i] if !m.is_empty() && !i.is_empty() => {
            Ok(Sink::ModuleInput {
                module: (*m).to_owned(),
                input: (*i).to_owned(),
            })
        }
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_output_routed_to_another_module_input_parses() {
        let route =
            Route::parse(r#"FROM /messages/modules/sensor/outputs/temp INTO BrokeredEndpoint("/modules/filter/inputs/in1")"#)
                .unwrap();
        assert_eq!(
            route.source,
            Source::Output {
                module: "sensor".into(),
                output: Some("temp".into())
            }
        );
        assert_eq!(
            route.sink,
            Sink::ModuleInput {
                module: "filter".into(),
                input: "in1".into()
            }
        );
        assert!(route.takes(Some("sensor"), Some("temp")));
        assert!(!route.takes(Some("sensor"), Some("other")));
        assert!(!route.takes(Some("sensor"), None));
        assert!(!route.takes(None, Some("temp")));
    }

    #[test]
    fn upstream_routes_with_wildcards_and_conditions_parse_case_insensitively() {
        let route = Route::parse(
            "from /messages/modules/edgetwin/outputs/* where level = 'high' into $upstream",
        )
        .unwrap();
        assert_eq!(route.sink, Sink::Upstream);
        assert!(route.condition.is_some());
        assert!(route.takes(Some("edgetwin"), Some("alerts")));
        assert!(Route::parse("FROM /* INTO $upstream")
            .unwrap()
            .takes(None, None));
        assert!(Route::parse("FROM /messages/modules/* INTO $upstream")
            .unwrap()
            .takes(Some("m"), None));
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        assert_eq!(
            Route::parse("/messages/* INTO $upstream"),
            Err(RouteError::Shape)
        );
        assert!(matches!(
            Route::parse("FROM /nope INTO $upstream"),
            Err(RouteError::Source(_))
        ));
        assert!(matches!(
            Route::parse("FROM /* INTO somewhere"),
            Err(RouteError::Sink(_))
        ));
        assert!(matches!(
            Route::parse(r#"FROM /* INTO BrokeredEndpoint("/modules/m/outputs/x")"#),
            Err(RouteError::Sink(_))
        ));
        assert_eq!(
            Route::parse("FROM /* WHERE INTO $upstream"),
            Err(RouteError::EmptyCondition)
        );
        let unsupported =
            Route::parse("FROM /* WHERE STARTS_WITH($connectionModuleId, 'a') INTO $upstream")
                .unwrap();
        assert!(
            unsupported.compiled_condition().unwrap().is_err(),
            "valid for edgeHub, not evaluable here"
        );
        assert!(
            !Route::parse("FROM /twinChangeNotifications INTO $upstream")
                .unwrap()
                .takes(Some("m"), None)
        );
    }
}
