//! Queries in IoT Hub's query language ([`edgetwin_wire::query`]) over the device or module
//! twins of the store, or devices' parts in scheduled jobs (`FROM devices.jobs`), one page at a
//! time (the REST route, `rest/query.rs`, reads the request and
//! writes the headers). Depends on the store, twins and live connections only; never on a door.
//!
//! Queries have read connections of their own ([`Queries`]), at most one query a slot: however
//! many clients query, they queue among themselves and never hold the connections that device
//! authentication and the other short reads use.
//!
//! A page is read in one store transaction (a plain read, no write): identity keys from the
//! continuation's key on, a chunk at a time, and the twins behind them, only as many as the page
//! needs, so paging through N twins reads each about once. A grouped or aggregate query reads
//! every twin of the collection once, one at a time into per-group accumulators; when its rows
//! take more than one page the hub keeps them (bounded, [`GroupedRows`]) and serves the next
//! pages from them, so paging G groups reads the twins once, not once a page.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgetwin_wire::query::exec::Page;
use edgetwin_wire::query::page::{self, BadContinuation, Cursor, TokenKey};
use edgetwin_wire::query::{Collection, Query};
use edgetwin_wire::rest::ErrorCode;
use serde_json::Value;

use crate::error::ApiError;
use crate::live::LiveConnections;
use crate::store::{off_the_async_worker, IdentityKey, Readers, StoreError, Transaction};
use crate::twins;

/// Grouped rows kept for the next pages, all queries together, in bytes of their JSON and its
/// `String`s.
const GROUPED_BYTES: usize = 16 << 20;

/// Grouped results kept at most, whatever their size.
const GROUPED_RESULTS: usize = 64;

/// How long grouped rows are kept after their last page was served.
const GROUPED_FOR: Duration = Duration::from_secs(300);

/// Row counts kept at most ([`RowCounts`]).
const COUNTS_KEPT: usize = 256;

/// How long a row count is kept while the store does not change: twins also show their
/// connection state, which changes without a write.
const COUNTED_FOR: Duration = Duration::from_secs(60);

/// What queries run on: their own read connections, the slots that queue them, the key that
/// signs their continuation tokens and the grouped rows kept for next pages.
pub struct Queries {
    /// One read connection a slot.
    readers: Readers,
    /// A query runs holding one; the others wait their turn, first come first served, without
    /// holding a thread.
    slots: tokio::sync::Semaphore,
    /// Signs continuation tokens, drawn at start: a token is good for this hub run.
    key: TokenKey,
    /// Rows of grouped and aggregate queries whose next pages are still to be asked for.
    grouped: Mutex<GroupedRows>,
    /// Row counts of the queries counted lately.
    counts: Mutex<RowCounts>,
}

impl Queries {
    /// Opens the query connections to the database at `path`: one a slot, half the cores (at
    /// least one), so that queries leave the other cores to devices.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let slots = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        Ok(Self {
            readers: Readers::open(path, slots)?,
            slots: tokio::sync::Semaphore::new(slots),
            key: TokenKey::new(rand::random()),
            grouped: Mutex::default(),
            counts: Mutex::default(),
        })
    }

    /// One page of `query` (whose text is `text`): at most `max_item_count` rows (IoT Hub's
    /// `x-ms-max-item-count`) after the `continuation` token, with the next page's token if more
    /// rows follow. Twins show their connection state from `live`.
    pub async fn page(
        &self,
        live: &LiveConnections,
        text: &str,
        query: &Query,
        continuation: Option<&str>,
        max_item_count: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ApiError> {
        let cursor = Cursor::decode(continuation, text, &self.key)?;
        let size = page::page_size(max_item_count).map_err(|e| ApiError::invalid(e.to_string()))?;
        let page = if query.is_aggregate() {
            self.grouped_page(live, query, &cursor, size, Instant::now())
                .await?
        } else {
            let after = cursor.after.as_deref();
            self.read(|tx| query.page(documents(live, tx, query.from, after)?, &cursor, size))
                .await?
        };
        Ok((
            page.rows,
            page.next.map(|next| next.encode(text, &self.key)),
        ))
    }

    /// How many rows `query` (whose text is `text`) returns over the whole of its FROM
    /// collection (a configuration's custom metric), with the store at `commits` transactions
    /// committed: counted in one read transaction on a query connection, a pass over every twin,
    /// unless the same text was counted with the store unchanged since, less than
    /// [`COUNTED_FOR`] ago (a console polling the configurations of an idle hub scans nothing).
    pub async fn count_rows(
        &self,
        live: &LiveConnections,
        text: &str,
        query: &Query,
        commits: u64,
    ) -> Result<usize, ApiError> {
        if let Some(rows) = self.counts().get(text, commits, Instant::now()) {
            return Ok(rows);
        }
        let rows = self
            .read(|tx| {
                let twins = documents(live, tx, query.from, None)?.map(|item| item.map(|(_, d)| d));
                query.count_rows(twins)
            })
            .await?;
        self.counts().keep(text, commits, Instant::now(), rows);
        Ok(rows)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, RowCounts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one read transaction on a query connection once a slot is free.
    async fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the query slots are never closed");
        off_the_async_worker(|| self.readers.read(f))
    }

    fn grouped(&self) -> std::sync::MutexGuard<'_, GroupedRows> {
        self.grouped.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl From<BadContinuation> for ApiError {
    fn from(error: BadContinuation) -> Self {
        ApiError::invalid(error.to_string())
    }
}

impl Queries {
    /// A page of a grouped or aggregate query: from the rows kept for the cursor, or from a pass
    /// over every twin (then kept when more pages follow).
    async fn grouped_page(
        &self,
        live: &LiveConnections,
        query: &Query,
        cursor: &Cursor,
        size: usize,
        now: Instant,
    ) -> Result<Page, ApiError> {
        let queries = self;
        let kept = cursor
            .rows
            .and_then(|id| Some((id, queries.grouped().rows(id, now)?)));
        let (id, rows) = match kept {
            Some((id, rows)) => (Some(id), rows),
            None => {
                let rows = queries
                    .read(|tx| {
                        let twins =
                            documents(live, tx, query.from, None)?.map(|item| item.map(|(_, d)| d));
                        query.aggregate(twins)
                    })
                    .await?;
                (None, rows.iter().map(Value::to_string).collect())
            }
        };
        let (range, next) = query.page_range(rows.len(), cursor, size)?;
        let page = rows[range]
            .iter()
            .map(|row| serde_json::from_str(row))
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| ApiError::new(ErrorCode::ServerError, e.to_string()))?;
        let next = match next {
            Some(next) => Some(Cursor {
                rows: id.or_else(|| queries.grouped().keep(rows, now)),
                ..next
            }),
            None => {
                if let Some(id) = id {
                    queries.grouped().forget(id);
                }
                None
            }
        };
        Ok(Page { rows: page, next })
    }
}

/// A document of a collection with its place in the collection's order.
type Keyed = Result<(Vec<String>, Value), ApiError>;

/// Each document of `from` after the place `after` (a continuation token's), with its place,
/// read as they are consumed: twins, or devices' parts in jobs.
fn documents<'t>(
    live: &'t LiveConnections,
    tx: &'t Transaction<'t>,
    from: Collection,
    after: Option<&[String]>,
) -> Result<Box<dyn Iterator<Item = Keyed> + 't>, ApiError> {
    if from == Collection::Jobs {
        return Ok(Box::new(DeviceJobs::new(tx, after)?));
    }
    let after = after.map(|order| key_of(from, order)).transpose()?;
    Ok(Box::new(Keys::new(tx, from, after).map(move |key| {
        let key = key?;
        Ok((order_of(&key), view(live, tx, &key)?))
    })))
}

/// Devices' parts in jobs by job then device, read from the store a chunk at a time.
struct DeviceJobs<'t> {
    /// The open read transaction.
    tx: &'t Transaction<'t>,
    /// The last (job, device) handed out; the next read starts after it.
    after: Option<(String, String)>,
    /// Records read and not yet handed out.
    buffer: std::vec::IntoIter<edgetwin_wire::job::DeviceJob>,
    /// The store has no records left after `after`.
    exhausted: bool,
}

impl<'t> DeviceJobs<'t> {
    fn new(tx: &'t Transaction<'t>, after: Option<&[String]>) -> Result<Self, ApiError> {
        let after = match after {
            None => None,
            Some([job, device]) => Some((job.clone(), device.clone())),
            Some(_) => return Err(ApiError::invalid(BadContinuation.to_string())),
        };
        Ok(Self {
            tx,
            after,
            buffer: Vec::new().into_iter(),
            exhausted: false,
        })
    }
}

impl Iterator for DeviceJobs<'_> {
    type Item = Keyed;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.len() == 0 && !self.exhausted {
            let after = self.after.as_ref().map(|(j, d)| (j.as_str(), d.as_str()));
            match self.tx.device_jobs(after, KEYS_PER_READ) {
                Ok(records) => {
                    self.exhausted = records.len() < KEYS_PER_READ;
                    self.buffer = records.into_iter();
                }
                Err(e) => {
                    self.exhausted = true;
                    return Some(Err(e.into()));
                }
            }
        }
        let record = self.buffer.next()?;
        let order = vec![record.job_id.clone(), record.device_id.clone()];
        self.after = Some((record.job_id.clone(), record.device_id.clone()));
        Some(
            serde_json::to_value(record)
                .map(|doc| (order, doc))
                .map_err(|e| ApiError::new(ErrorCode::ServerError, e.to_string())),
        )
    }
}

/// Row counts by query text, each with the store's commit count it was taken at and when: at
/// most [`COUNTS_KEPT`], each good for [`COUNTED_FOR`] while the commit count is the same.
#[derive(Default)]
struct RowCounts {
    /// Query text -> (commits, counted at, rows).
    entries: std::collections::HashMap<String, (u64, Instant, usize)>,
}

impl RowCounts {
    /// The rows counted for `text` with the store at `commits`, if that is still good at `now`.
    fn get(&self, text: &str, commits: u64, now: Instant) -> Option<usize> {
        let &(at_commits, at, rows) = self.entries.get(text)?;
        (at_commits == commits && now.saturating_duration_since(at) < COUNTED_FOR).then_some(rows)
    }

    /// Keeps `rows` for `text`, counted with the store at `commits`; the oldest count goes when
    /// [`COUNTS_KEPT`] are kept.
    fn keep(&mut self, text: &str, commits: u64, now: Instant, rows: usize) {
        if self.entries.len() >= COUNTS_KEPT && !self.entries.contains_key(text) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, at, _))| *at)
                .map(|(text, _)| text.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(text.to_owned(), (commits, now, rows));
    }
}

/// Rows of grouped and aggregate queries kept for their next pages (each row's JSON), by an id
/// their continuation tokens carry: at most [`GROUPED_BYTES`] (the rows' text and their
/// `String`s) and [`GROUPED_RESULTS`] in all, each for [`GROUPED_FOR`] after its last page was
/// served; the least recently used go first.
/// A page whose rows are gone is computed again (the same rows while the twins did not change).
#[derive(Default)]
struct GroupedRows {
    /// The results kept, each with its id, size in bytes and when it was last used.
    entries: Vec<(u64, Arc<[String]>, usize, Instant)>,
    /// Their bytes in all.
    bytes: usize,
}

impl GroupedRows {
    /// Keeps `rows` and answers their id; `None` when they alone are over the bound.
    fn keep(&mut self, rows: Arc<[String]>, now: Instant) -> Option<u64> {
        let bytes: usize = rows
            .iter()
            .map(|row| row.capacity() + std::mem::size_of::<String>())
            .sum();
        if bytes > GROUPED_BYTES {
            return None;
        }
        self.expire(now);
        while !self.entries.is_empty()
            && (self.bytes + bytes > GROUPED_BYTES || self.entries.len() >= GROUPED_RESULTS)
        {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].3)
                .unwrap_or_default();
            self.bytes -= self.entries.swap_remove(oldest).2;
        }
        let id = rand::random();
        self.entries.push((id, rows, bytes, now));
        self.bytes += bytes;
        Some(id)
    }

    /// The rows kept under `id`, if still kept (and now used).
    fn rows(&mut self, id: u64, now: Instant) -> Option<Arc<[String]>> {
        self.expire(now);
        let entry = self.entries.iter_mut().find(|e| e.0 == id)?;
        entry.3 = now;
        Some(entry.1.clone())
    }

    /// Drops the rows kept under `id` (their last page was served).
    fn forget(&mut self, id: u64) {
        if let Some(i) = self.entries.iter().position(|e| e.0 == id) {
            self.bytes -= self.entries.swap_remove(i).2;
        }
    }

    /// Drops the rows unused for [`GROUPED_FOR`].
    fn expire(&mut self, now: Instant) {
        let bytes = &mut self.bytes;
        self.entries.retain(|e| {
            let keep = now.saturating_duration_since(e.3) < GROUPED_FOR;
            if !keep {
                *bytes -= e.2;
            }
            keep
        });
    }
}

/// How many keys one store read fetches while a page is filled.
const KEYS_PER_READ: usize = 256;

/// The identity keys of a collection in order from a key on, read from the store a chunk at a
/// time as the page consumes them.
struct Keys<'t> {
    /// The open read transaction.
    tx: &'t Transaction<'t>,
    /// Module twins or device twins.
    modules: bool,
    /// The last key handed out (or the cursor's); the next read starts after it.
    after: Option<IdentityKey>,
    /// Keys read and not yet handed out.
    buffer: std::vec::IntoIter<IdentityKey>,
    /// The store has no keys left after `after`.
    exhausted: bool,
}

impl<'t> Keys<'t> {
    fn new(tx: &'t Transaction<'t>, from: Collection, after: Option<IdentityKey>) -> Self {
        Self {
            tx,
            modules: from == Collection::Modules,
            after,
            buffer: Vec::new().into_iter(),
            exhausted: false,
        }
    }
}

impl Iterator for Keys<'_> {
    type Item = Result<IdentityKey, ApiError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.len() == 0 && !self.exhausted {
            match self
                .tx
                .identity_keys(self.modules, self.after.as_ref(), KEYS_PER_READ)
            {
                Ok(keys) => {
                    self.exhausted = keys.len() < KEYS_PER_READ;
                    self.buffer = keys.into_iter();
                }
                Err(e) => {
                    self.exhausted = true;
                    return Some(Err(e.into()));
                }
            }
        }
        let key = self.buffer.next()?;
        self.after = Some(key.clone());
        Some(Ok(key))
    }
}

/// A twin's place in the collection's order, as continuation tokens carry it.
fn order_of(key: &IdentityKey) -> Vec<String> {
    std::iter::once(key.device_id.clone())
        .chain(key.module_id.clone())
        .collect()
}

/// The identity a continuation token's position names.
fn key_of(from: Collection, order: &[String]) -> Result<IdentityKey, ApiError> {
    match (from, order) {
        (Collection::Devices, [device]) => Ok(IdentityKey::device(device)),
        (Collection::Modules, [device, module]) => Ok(IdentityKey::module(device, module)),
        _ => Err(ApiError::invalid(BadContinuation.to_string())),
    }
}

/// The twin as the service API shows it, as JSON.
fn view(
    live: &LiveConnections,
    tx: &Transaction<'_>,
    key: &IdentityKey,
) -> Result<Value, ApiError> {
    let connected = live.is_connected(&key.client_id());
    let twin = twins::service_view(tx, key, connected)?;
    serde_json::to_value(twin).map_err(|e| ApiError::new(ErrorCode::ServerError, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(count: usize, each: usize) -> Arc<[String]> {
        (0..count).map(|_| "x".repeat(each)).collect()
    }

    #[test]
    fn a_row_count_is_good_while_the_store_is_unchanged_for_a_while_and_the_oldest_goes_first() {
        let start = Instant::now();
        let mut counts = RowCounts::default();
        counts.keep("q", 7, start, 3);
        assert_eq!(counts.get("q", 7, start + Duration::from_secs(59)), Some(3));
        assert_eq!(counts.get("q", 8, start), None, "a commit since");
        assert_eq!(counts.get("q", 7, start + COUNTED_FOR), None, "too old");
        assert_eq!(counts.get("other", 7, start), None);
        for n in 1..COUNTS_KEPT {
            counts.keep(
                &format!("q{n}"),
                7,
                start + Duration::from_millis(n as u64),
                n,
            );
        }
        assert_eq!(counts.entries.len(), COUNTS_KEPT);
        counts.keep("new", 7, start + Duration::from_secs(1), 0);
        assert_eq!(counts.entries.len(), COUNTS_KEPT);
        assert_eq!(
            counts.get("q", 7, start + Duration::from_secs(1)),
            None,
            "the oldest went"
        );
        assert_eq!(counts.get("q1", 7, start + Duration::from_secs(1)), Some(1));
    }

    #[test]
    fn grouped_rows_are_kept_until_unused_for_a_while_or_forgotten() {
        let start = Instant::now();
        let mut kept = GroupedRows::default();
        let id = kept.keep(rows(3, 10), start).unwrap();
        assert_eq!(kept.rows(id, start + GROUPED_FOR / 2).unwrap().len(), 3);
        // Used at half time: kept until a whole GROUPED_FOR after that.
        assert!(kept.rows(id, start + GROUPED_FOR).is_some());
        assert!(kept.rows(id, start + GROUPED_FOR * 3).is_none());
        assert_eq!(kept.bytes, 0);
        let id = kept.keep(rows(3, 10), start).unwrap();
        kept.forget(id);
        assert!(kept.rows(id, start).is_none());
        assert_eq!(kept.bytes, 0);
    }

    #[test]
    fn grouped_rows_stay_under_their_bounds_dropping_the_least_recently_used() {
        let start = Instant::now();
        let mut kept = GroupedRows::default();
        assert_eq!(kept.keep(rows(1, GROUPED_BYTES + 1), start), None);
        // A third of the bound, less what each row's `String` counts.
        let third = GROUPED_BYTES / 3 - 64;
        let ids: Vec<u64> = (0..3)
            .map(|i| {
                let at = start + Duration::from_secs(i);
                kept.keep(rows(1, third), at).unwrap()
            })
            .collect();
        // The first is used again: the second is the least recently used.
        kept.rows(ids[0], start + Duration::from_secs(5));
        let fourth = kept
            .keep(rows(1, third), start + Duration::from_secs(6))
            .unwrap();
        assert!(kept.rows(ids[1], start + Duration::from_secs(7)).is_none());
        for id in [ids[0], ids[2], fourth] {
            assert!(kept.rows(id, start + Duration::from_secs(7)).is_some());
        }
        assert!(kept.bytes <= GROUPED_BYTES);
        let mut many = GroupedRows::default();
        for i in 0..GROUPED_RESULTS as u64 + 10 {
            many.keep(rows(1, 1), start + Duration::from_millis(i));
        }
        assert_eq!(many.entries.len(), GROUPED_RESULTS);
    }
}
