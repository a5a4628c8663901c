//! Running a parsed query over the documents of its collection: filter, group, project, TOP.
//! One pass over the documents; a grouped or aggregate query keeps, per group, only the values
//! its rows need (the first document's projected properties, counts, sums, bounds), never the
//! documents.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::ast::{Aggregate, Collection, Projected, Projection, Query, Select};
use super::eval::{holds, json_number, lookup};
use super::page::{BadContinuation, Cursor};

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
    /// Devices' parts in jobs (`SELECT * FROM devices.jobs`; the .NET SDK's `QueryResultType`
    /// names it `deviceJob`).
    DeviceJob,
}

impl ItemType {
    /// The header value.
    pub fn name(self) -> &'static str {
        match self {
            ItemType::Twin => "twin",
            ItemType::Raw => "raw",
            ItemType::DeviceJob => "deviceJob",
        }
    }
}

impl Query {
    /// The kind of rows this query returns.
    pub fn item_type(&self) -> ItemType {
        match self.select {
            Select::All if self.from == Collection::Jobs => ItemType::DeviceJob,
            Select::All => ItemType::Twin,
            Select::Items(_) => ItemType::Raw,
        }
    }

    /// Every result row over `documents` (all of the FROM collection, in a stable order).
    pub fn run(&self, documents: &[Value]) -> Vec<Value> {
        let keyed = documents
            .iter()
            .map(|d| Ok::<_, BadContinuation>((Vec::new(), d.clone())));
        self.page(keyed, &Cursor::default(), usize::MAX)
            .expect("documents in memory cannot fail and the start counts no rows")
            .rows
    }

    /// One page of at most `size` rows from `cursor` on. `documents` yields each document of
    /// the FROM collection with its key, in key order, starting after `cursor.after` (the
    /// caller skips what came before without reading it) and is read only as far as the page
    /// needs; a grouped or aggregate query reads them all ([`Query::aggregate`]) and pages its
    /// rows by offset ([`Query::page_range`]). A cursor whose count of rows returned cannot grow
    /// by this page is refused.
    pub fn page<E: From<BadContinuation>>(
        &self,
        documents: impl Iterator<Item = Result<(Vec<String>, Value), E>>,
        cursor: &Cursor,
        size: usize,
    ) -> Result<Page, E> {
        if self.is_aggregate() {
            let mut rows = self.aggregate(documents.map(|item| item.map(|(_, d)| d)))?;
            let (range, next) = self.page_range(rows.len(), cursor, size)?;
            rows.truncate(range.end);
            rows.drain(..range.start);
            return Ok(Page { rows, next });
        }
        let limit = size.min(self.remaining(cursor));
        let (mut rows, mut after, mut more) = (Vec::new(), None, false);
        for item in documents.filter(|item| self.keeps(item.as_ref().map(|(_, d)| d))) {
            let (key, document) = item?;
            if rows.len() == limit {
                more = true;
                break;
            }
            rows.push(match &self.select {
                Select::Items(items) => project(items, &document),
                Select::All => document,
            });
            after = Some(key);
        }
        let next = self
            .next(cursor, rows.len(), more)?
            .map(|next| Cursor { after, ..next });
        Ok(Page { rows, next })
    }

    /// How many rows the query returns over `documents` (all of the FROM collection), without
    /// keeping them: what a configuration's custom metric counts ("the metric represents the
    /// number of rows returned by the query", IoT Hub's automatic device management docs).
    pub fn count_rows<E>(
        &self,
        documents: impl Iterator<Item = Result<Value, E>>,
    ) -> Result<usize, E> {
        if self.is_aggregate() {
            return Ok(self.aggregate(documents)?.len());
        }
        let mut count = 0;
        for document in documents.filter(|item| self.keeps(item.as_ref())) {
            document?;
            count += 1;
        }
        Ok(count.min(self.remaining(&Cursor::default())))
    }

    /// Whether the query groups or aggregates: its rows are computed from every matching
    /// document ([`Query::aggregate`]), not one row a document.
    pub fn is_aggregate(&self) -> bool {
        self.group_by.is_some()
            || matches!(&self.select, Select::Items(items)
                if items.iter().any(|p| matches!(p.value, Projected::Aggregate(..))))
    }

    /// Every row of a grouped or aggregate query over `documents` (all of the FROM collection,
    /// filtered here), in one pass that holds one accumulator per group and no document: rows
    /// in the order each group's first document came, a missing GROUP BY value a group of its
    /// own; without GROUP BY one row, even over no documents.
    pub fn aggregate<E>(
        &self,
        documents: impl Iterator<Item = Result<Value, E>>,
    ) -> Result<Vec<Value>, E> {
        let items = match &self.select {
            Select::Items(items) => items.as_slice(),
            Select::All => &[],
        };
        let mut index: HashMap<Option<String>, usize> = HashMap::new();
        let mut groups: Vec<Group> = Vec::new();
        for document in documents.filter(|item| self.keeps(item.as_ref())) {
            let document = document?;
            let key = self
                .group_by
                .as_ref()
                .and_then(|path| lookup(&document, path).map(|(_, v)| v.to_string()));
            let next = groups.len();
            let i = *index.entry(key).or_insert(next);
            if i == next {
                groups.push(Group::new(items, &document));
            }
            groups[i].add(items, &document);
        }
        if groups.is_empty() && self.group_by.is_none() {
            // `SELECT COUNT() AS n FROM devices` over no devices is one row saying 0.
            groups.push(Group::new(items, &Value::Null));
        }
        Ok(groups.into_iter().map(|g| g.row(items)).collect())
    }

    /// Which of a grouped or aggregate query's `total` rows (all of them, as
    /// [`Query::aggregate`] gives them) make the page of at most `size` from `cursor` on, and
    /// the cursor after it.
    pub fn page_range(
        &self,
        total: usize,
        cursor: &Cursor,
        size: usize,
    ) -> Result<(std::ops::Range<usize>, Option<Cursor>), BadContinuation> {
        let start = cursor.returned.min(total);
        let count = size.min(self.remaining(cursor)).min(total - start);
        let next = self.next(cursor, count, start + count < total)?;
        Ok((start..start + count, next))
    }

    /// Rows TOP still allows after `cursor`.
    fn remaining(&self, cursor: &Cursor) -> usize {
        self.top
            .map_or(usize::MAX, |top| top.saturating_sub(cursor.returned))
    }

    /// The cursor after a page of `count` rows from `cursor`, if `more` rows match and TOP
    /// allows more; a count past `usize::MAX` is refused.
    fn next(
        &self,
        cursor: &Cursor,
        count: usize,
        more: bool,
    ) -> Result<Option<Cursor>, BadContinuation> {
        let returned = cursor.returned.checked_add(count).ok_or(BadContinuation)?;
        Ok((more && count < self.remaining(cursor)).then(|| Cursor {
            returned,
            ..Cursor::default()
        }))
    }

    /// Whether an item read is kept: a document the WHERE clause holds for, or a read error
    /// (for the caller to see).
    fn keeps<E>(&self, item: Result<&Value, &E>) -> bool {
        match (item, &self.filter) {
            (Ok(document), Some(condition)) => holds(condition, document),
            _ => true,
        }
    }
}

/// What a group's row needs, gathered one document at a time.
struct Group {
    /// The first document's value of each projected property (its name and value), by the
    /// projection's place; `None` for aggregates and missing properties.
    first: Vec<Option<(String, Value)>>,
    /// Documents in the group.
    count: usize,
    /// The numbers each aggregate saw, by the projection's place.
    numbers: Vec<Numbers>,
}

/// Sum, count and bounds of the numbers an aggregate saw, in document order.
#[derive(Default)]
struct Numbers {
    count: usize,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
}

impl Group {
    /// An empty group whose projected properties are `document`'s.
    fn new(items: &[Projection], document: &Value) -> Self {
        let first = items
            .iter()
            .map(|item| match &item.value {
                Projected::Path(path) => lookup(document, path).map(|(key, value)| {
                    (
                        item.alias.clone().unwrap_or_else(|| key.to_owned()),
                        value.clone(),
                    )
                }),
                Projected::Aggregate(..) => None,
            })
            .collect();
        Self {
            first,
            count: 0,
            numbers: items.iter().map(|_| Numbers::default()).collect(),
        }
    }

    /// Counts `document` in.
    fn add(&mut self, items: &[Projection], document: &Value) {
        self.count += 1;
        for (item, numbers) in items.iter().zip(&mut self.numbers) {
            if let Projected::Aggregate(_, Some(path)) = &item.value {
                if let Some(n) = lookup(document, path).and_then(|(_, v)| v.as_f64()) {
                    numbers.count += 1;
                    numbers.sum += n;
                    numbers.min = Some(numbers.min.map_or(n, |m| m.min(n)));
                    numbers.max = Some(numbers.max.map_or(n, |m| m.max(n)));
                }
            }
        }
    }

    /// The group's row. An aggregate without `AS` is named `$1`, `$2`, ... in the order of
    /// such aggregates, as IoT Hub's engine names them (`select count() from devices` answers
    /// `[{"$1": n}]`); missing properties and aggregates without a value are left out.
    fn row(self, items: &[Projection]) -> Value {
        let mut row = Map::new();
        let mut unnamed = 0;
        for ((item, first), numbers) in items.iter().zip(self.first).zip(self.numbers) {
            let (name, value) = match &item.value {
                Projected::Path(_) => match first {
                    Some(named) => named,
                    None => continue,
                },
                Projected::Aggregate(kind, _) => {
                    let value = match kind {
                        Aggregate::Count => Some(Value::from(self.count)),
                        Aggregate::Sum => json_number(numbers.sum),
                        Aggregate::Avg => (numbers.count > 0)
                            .then(|| json_number(numbers.sum / numbers.count as f64))
                            .flatten(),
                        Aggregate::Min => numbers.min.and_then(json_number),
                        Aggregate::Max => numbers.max.and_then(json_number),
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::super::parse_query;
    use super::*;

    /// Why a read failed, in these tests.
    #[derive(Debug, PartialEq)]
    enum ReadError {
        Disk,
        Cursor,
    }

    impl From<BadContinuation> for ReadError {
        fn from(_: BadContinuation) -> Self {
            ReadError::Cursor
        }
    }

    /// Ten devices `d0`..`d9` keyed by id, starting after `after`; counts the documents read.
    fn devices<'a>(
        after: Option<&'a [String]>,
        read: &'a Cell<usize>,
    ) -> impl Iterator<Item = Result<(Vec<String>, Value), ReadError>> + 'a {
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
        let failing = [Ok((vec!["a".to_owned()], json!({}))), Err(ReadError::Disk)].into_iter();
        assert_eq!(
            query.page(failing, &Cursor::default(), 10),
            Err(ReadError::Disk)
        );
    }

    #[test]
    fn a_cursor_that_counts_near_the_largest_number_is_refused_not_wrapped() {
        let cursor = Cursor {
            returned: usize::MAX - 1,
            ..Cursor::default()
        };
        let read = Cell::new(0);
        let query = parse_query("SELECT * FROM devices").unwrap();
        assert_eq!(
            query.page(devices(None, &read), &cursor, 5),
            Err(ReadError::Cursor)
        );
        let grouped = parse_query("SELECT n AS n, COUNT() AS c FROM devices GROUP BY n").unwrap();
        let cursor = Cursor {
            returned: usize::MAX,
            ..Cursor::default()
        };
        // Past the rows there is nothing to page: an empty last page.
        assert_eq!(grouped.page_range(10, &cursor, 5), Ok((10..10, None)));
    }

    #[test]
    fn an_aggregate_reads_the_documents_as_they_come_in_one_pass() {
        let query = parse_query(
            "SELECT g AS g, COUNT() AS c, SUM(n) AS s, MIN(n) AS lo, MAX(n) AS hi, AVG(n) AS a \
             FROM devices WHERE n >= 0 GROUP BY g",
        )
        .unwrap();
        let read = Cell::new(0);
        let documents = (0..10_000).map(|n| {
            read.set(read.get() + 1);
            Ok::<_, ReadError>(json!({ "g": n % 3, "n": n }))
        });
        let rows = query.aggregate(documents).unwrap();
        assert_eq!(read.get(), 10_000);
        assert_eq!(
            rows,
            [
                json!({ "g": 0, "c": 3334, "s": 16668333, "lo": 0, "hi": 9999, "a": 4999.5 }),
                json!({ "g": 1, "c": 3333, "s": 16661667, "lo": 1, "hi": 9997, "a": 4999 }),
                json!({ "g": 2, "c": 3333, "s": 16665000, "lo": 2, "hi": 9998, "a": 5000 }),
            ]
        );
    }
}
