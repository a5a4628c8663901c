//! Running a parsed query over the documents of its collection: filter, group, project, TOP.
//! One pass over the documents, then one pass over the groups.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::ast::{Aggregate, Projected, Projection, Query, Select};
use super::eval::{holds, json_number, lookup};

/// Response header naming the [`ItemType`] of the rows.
pub const ITEM_TYPE_HEADER: &str = "x-ms-item-type";

/// What the rows of a result are, sent as `x-ms-item-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    /// Whole twin documents (`SELECT *`).
    Twin,
    /// Projections and aggregates: plain JSON objects.
    Raw,
}

impl ItemType {
    /// The header value.
    pub fn name(self) -> &'static str {
        match self {
            ItemType::Twin => "twin",
            ItemType::Raw => "raw",
        }
    }
}

impl Query {
    /// The kind of rows this query returns.
    pub fn item_type(&self) -> ItemType {
        match self.select {
            Select::All => ItemType::Twin,
            Select::Items(_) => ItemType::Raw,
        }
    }

    /// The result rows over `documents` (all of the FROM collection, in a stable order).
    pub fn run(&self, documents: &[Value]) -> Vec<Value> {
        let selected = documents.iter().filter(|d| {
            self.filter
                .as_ref()
                .is_none_or(|condition| holds(condition, d))
        });
        let mut rows: Vec<Value> = match &self.select {
            Select::All => selected.cloned().collect(),
            Select::Items(items) if self.is_aggregate() => groups(self, selected)
                .into_iter()
                .map(|group| aggregate_row(items, &group))
                .collect(),
            Select::Items(items) => selected.map(|d| project(items, d)).collect(),
        };
        if let Some(top) = self.top {
            rows.truncate(top);
        }
        rows
    }

    fn is_aggregate(&self) -> bool {
        self.group_by.is_some()
            || matches!(&self.select, Select::Items(items)
                if items.iter().any(|p| matches!(p.value, Projected::Aggregate(..))))
    }
}

/// The documents grouped by the GROUP BY value (one group without GROUP BY), groups in the
/// order their first document came; a missing value is a group of its own.
fn groups<'a>(query: &Query, documents: impl Iterator<Item = &'a Value>) -> Vec<Vec<&'a Value>> {
    let mut index: HashMap<Option<String>, usize> = HashMap::new();
    let mut groups: Vec<Vec<&Value>> = Vec::new();
    for document in documents {
        let key = query
            .group_by
            .as_ref()
            .and_then(|path| lookup(document, path).map(|(_, v)| v.to_string()));
        let next = groups.len();
        let i = *index.entry(key).or_insert(next);
        if i == next {
            groups.push(Vec::new());
        }
        groups[i].push(document);
    }
    if groups.is_empty() && query.group_by.is_none() {
        // `SELECT COUNT() AS n FROM devices` over no devices is one row saying 0.
        groups.push(Vec::new());
    }
    groups
}

/// One projected row: each property under its alias, or its own name; missing ones are left out.
fn project(items: &[Projection], document: &Value) -> Value {
    let mut row = Map::new();
    for item in items {
        if let Projected::Path(path) = &item.value {
            if let Some((key, value)) = lookup(document, path) {
                row.insert(
                    item.alias.clone().unwrap_or_else(|| key.to_owned()),
                    value.clone(),
                );
            }
        }
    }
    Value::Object(row)
}

/// One row of a grouped or aggregate query.
fn aggregate_row(items: &[Projection], group: &[&Value]) -> Value {
    let mut row = Map::new();
    for item in items {
        let (name, value) = match &item.value {
            Projected::Path(path) => match group.first().and_then(|d| lookup(d, path)) {
                Some((key, value)) => (
                    item.alias.clone().unwrap_or_else(|| key.to_owned()),
                    value.clone(),
                ),
                None => continue,
            },
            Projected::Aggregate(kind, path) => {
                let numbers: Vec<f64> = path
                    .iter()
                    .flat_map(|path| group.iter().filter_map(|d| lookup(d, path)?.1.as_f64()))
                    .collect();
                let value = match kind {
                    Aggregate::Count => Some(Value::from(group.len())),
                    Aggregate::Sum => json_number(numbers.iter().sum()),
                    Aggregate::Avg => (!numbers.is_empty())
                        .then(|| json_number(numbers.iter().sum::<f64>() / numbers.len() as f64))
                        .flatten(),
                    Aggregate::Min => numbers
                        .iter()
                        .copied()
                        .reduce(f64::min)
                        .and_then(json_number),
                    Aggregate::Max => numbers
                        .iter()
                        .copied()
                        .reduce(f64::max)
                        .and_then(json_number),
                };
                match value {
                    Some(value) => (item.alias.clone().unwrap_or_default(), value),
                    None => continue,
                }
            }
        };
        row.insert(name, value);
    }
    Value::Object(row)
}
