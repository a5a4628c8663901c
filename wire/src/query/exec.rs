//! Running a parsed query over the documents of its collection: filter, group, project, TOP.
//! One pass over the documents, then one pass over the groups.

use std::collections::HashMap;
use std::convert::Infallible;

use serde_json::{Map, Value};

use super::ast::{Aggregate, Projected, Projection, Query, Select};
use super::eval::{holds, json_number, lookup};
use super::page::Cursor;

/// One page of a query's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The rows.
    pub rows: Vec<Value>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

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

    /// Every result row over `documents` (all of the FROM collection, in a stable order).
    pub fn run(&self, documents: &[Value]) -> Vec<Value> {
        let keyed = documents
            .iter()
            .map(|d| Ok::<_, Infallible>((Vec::new(), d.clone())));
        match self.page(keyed, &Cursor::default(), usize::MAX) {
            Ok(page) => page.rows,
            Err(never) => match never {},
        }
    }

    /// One page of at most `size` rows from `cursor` on. `documents` yields each document of
    /// the FROM collection with its key, in key order, starting after `cursor.after` (the
    /// caller skips what came before without reading it) and is read only as far as the page
    /// needs; a grouped or aggregate query reads them all and pages its rows by offset.
    pub fn page<E>(
        &self,
        documents: impl Iterator<Item = Result<(Vec<String>, Value), E>>,
        cursor: &Cursor,
        size: usize,
    ) -> Result<Page, E> {
        let remaining = self
            .top
            .map_or(usize::MAX, |top| top.saturating_sub(cursor.returned));
        let limit = size.min(remaining);
        let matching = documents.filter(|item| match (item, &self.filter) {
            (Ok((_, document)), Some(condition)) => holds(condition, document),
            _ => true,
        });
        let (rows, after, more) = match &self.select {
            Select::Items(items) if self.is_aggregate() => {
                let documents = matching
                    .map(|item| item.map(|(_, d)| d))
                    .collect::<Result<Vec<_>, E>>()?;
                let mut rows: Vec<Value> = groups(self, documents.iter())
                    .into_iter()
                    .skip(cursor.returned)
                    .map(|group| aggregate_row(items, &group))
                    .collect();
                let more = rows.len() > limit;
                rows.truncate(limit);
                (rows, None, more)
            }
            select => {
                let (mut rows, mut after, mut more) = (Vec::new(), None, false);
                for item in matching {
                    let (key, document) = item?;
                    if rows.len() == limit {
                        more = true;
                        break;
                    }
                    rows.push(match select {
                        Select::Items(items) => project(items, &document),
                        Select::All => document,
                    });
                    after = Some(key);
                }
                (rows, after, more)
            }
        };
        let next = (more && rows.len() < remaining).then(|| Cursor {
            returned: cursor.returned + rows.len(),
            after,
        });
        Ok(Page { rows, next })
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

/// One row of a grouped or aggregate query. An aggregate without `AS` is named `$1`, `$2`, ...
/// in the order of such aggregates, as IoT Hub's engine names them (`select count() from
/// devices` answers `[{"$1": n}]`).
fn aggregate_row(items: &[Projection], group: &[&Value]) -> Value {
    let mut row = Map::new();
    let mut unnamed = 0;
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
                let name = item.alias.clone().unwrap_or_else(|| {
                    unnamed += 1;
                    format!("${unnamed}")
                });
                match value {
                    Some(value) => (name, value),
                    None => continue,
                }
            }
        };
        row.insert(name, value);
    }
    Value::Object(row)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::super::parse_query;
    use super::*;

    /// Ten devices `d0`..`d9` keyed by id, starting after `after`; counts the documents read.
    fn devices<'a>(
        after: Option<&'a [String]>,
        read: &'a Cell<usize>,
    ) -> impl Iterator<Item = Result<(Vec<String>, Value), ()>> + 'a {
        (0..10)
            .map(|n| {
                (
                    vec![format!("d{n}")],
                    json!({ "deviceId": format!("d{n}"), "n": n }),
                )
            })
            .filter(move |(key, _)| after.is_none_or(|after| key.as_slice() > after))
            .map(move |item| {
                read.set(read.get() + 1);
                Ok(item)
            })
    }

    fn all_pages(text: &str, size: usize) -> (Vec<Value>, Vec<usize>) {
        let query = parse_query(text).unwrap();
        let (mut rows, mut reads, mut cursor) = (Vec::new(), Vec::new(), Cursor::default());
        loop {
            let read = Cell::new(0);
            let page = query
                .page(devices(cursor.after.as_deref(), &read), &cursor, size)
                .unwrap();
            rows.extend(page.rows);
            reads.push(read.get());
            match page.next {
                Some(next) => cursor = next,
                None => return (rows, reads),
            }
        }
    }

    #[test]
    fn pages_resume_after_the_last_key_and_read_only_what_the_page_needs() {
        let (rows, reads) = all_pages("SELECT deviceId FROM devices WHERE n % 2 = 0", 2);
        let ids: Vec<&str> = rows
            .iter()
            .map(|r| r["deviceId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["d0", "d2", "d4", "d6", "d8"]);
        // Page 1 reads d0..d4 (d4 only to learn that more rows match), page 2 reads d3..d8,
        // page 3 reads d7..d9 and finds nothing more: never the documents before the cursor.
        assert_eq!(reads, [5, 6, 3]);
    }

    #[test]
    fn top_ends_the_paging_even_when_more_documents_match() {
        let (rows, _) = all_pages("SELECT TOP 3 * FROM devices", 2);
        assert_eq!(rows.len(), 3);
        let (rows, reads) = all_pages("SELECT TOP 2 * FROM devices", 2);
        assert_eq!((rows.len(), reads.len()), (2, 1));
    }

    #[test]
    fn grouped_rows_are_paged_by_offset() {
        let (rows, _) = all_pages("SELECT n AS n, COUNT() AS c FROM devices GROUP BY n", 3);
        let ns: Vec<i64> = rows.iter().map(|r| r["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_store_error_while_reading_is_the_pages_error() {
        let query = parse_query("SELECT * FROM devices").unwrap();
        let failing = [Ok((vec!["a".to_owned()], json!({}))), Err("disk")].into_iter();
        assert_eq!(query.page(failing, &Cursor::default(), 10), Err("disk"));
    }
}
