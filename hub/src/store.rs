//! Durable state in SQLite (WAL, `synchronous=FULL`): identities, twins, configurations, shared access
//! policies and persistent MQTT sessions. Every method that changes state commits before it
//! returns, so whatever the hub acknowledges survives `kill -9` and power loss.
//!
//! Records are stored as JSON documents of the wire models; the store knows nothing of REST or
//! MQTT, only of keys and documents.
//!
//! The bottom of the core: depends on nothing else of the hub.

use std::path::Path;

use edgetwin_wire::job::{DeviceJob, DeviceJobStatistics, DeviceJobStatus, JobResponse};
use edgetwin_wire::rest::{
    Configuration, ConfigurationMetrics, Device, Module, APPLIED_COUNT, REPORTED_FAILED_COUNT,
    REPORTED_SUCCESSFUL_COUNT, TARGETED_COUNT,
};
use edgetwin_wire::twin::Properties;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// `PRAGMA quick_check` found the database damaged.
    #[error("database {} is damaged ({problems}); restore it from a backup or recover it with sqlite3's .recover", .path.display())]
    Damaged {
        /// The database file.
        path: std::path::PathBuf,
        /// What the check reported (at most five problems).
        problems: String,
    },
    /// The database is missing or empty although the hub has run here before (`hub.json`).
    #[error("database {} is missing or empty, but hub.json says this hub has run here before; starting fresh would replace every key: restore the database, or start with --reset to make a new hub", .path.display())]
    Lost {
        /// The database file.
        path: std::path::PathBuf,
    },
    /// A database file could not be created or made private.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored document did not decode (the database was edited by hand or is corrupt).
    #[error("stored document {what} is not valid: {source}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

/// Which identity a row belongs to: a device, or a module of a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    /// The device id.
    pub device_id: String,
    /// The module id, `None` for the device itself.
    pub module_id: Option<String>,
}

impl IdentityKey {
    /// The key of a device.
    pub fn device(device_id: &str) -> Self {
        Self {
            device_id: device_id.to_owned(),
            module_id: None,
        }
    }

    /// The key of a module.
    pub fn module(device_id: &str, module_id: &str) -> Self {
        Self {
            device_id: device_id.to_owned(),
            module_id: Some(module_id.to_owned()),
        }
    }

    /// The MQTT client id of this identity (`d` or `d/m`).
    pub fn client_id(&self) -> String {
        edgetwin_wire::topic::client_id(&self.device_id, self.module_id.as_deref())
    }

    fn module_column(&self) -> &str {
        self.module_id.as_deref().unwrap_or("")
    }
}

/// The twin of a device or module as the hub keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TwinRecord {
    /// Back-end tags (never visible to the device).
    pub tags: Properties,
    /// Desired properties without `$version`/`$metadata`.
    pub desired: Properties,
    /// `properties.desired.$version`.
    pub desired_version: i64,
    /// Reported properties without `$version`/`$metadata`.
    pub reported: Properties,
    /// `properties.reported.$version`.
    pub reported_version: i64,
    /// The twin's `version`, bumped on every change; the etag derives from it.
    pub version: i64,
    /// When desired last changed (ISO 8601).
    pub desired_updated: String,
    /// When reported last changed (ISO 8601).
    pub reported_updated: String,
    /// When tags last changed (ISO 8601).
    pub tags_updated: String,
    /// Desired properties' per-property `$metadata` (`$lastUpdated`, `$lastUpdatedVersion`);
    /// empty in a twin stored before it was kept, which then shows the section's alone.
    #[serde(default)]
    pub desired_metadata: Properties,
    /// Reported properties' per-property `$metadata` (`$lastUpdated`).
    #[serde(default)]
    pub reported_metadata: Properties,
    /// Deployments targeting the device, on its `$edgeAgent` module twin as IoT Hub keeps them:
    /// configuration id -> `{"status": "Applied"|"Targeted"}`.
    pub configurations: Properties,
    /// The IoT Plug and Play model id the device or module last announced in its MQTT
    /// CONNECT username (`model-id`); `""` until it does: the twin's `modelId`.
    #[serde(default)]
    pub model_id: String,
}

/// A shared access policy of the hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Policy name, the token's `skn`.
    pub name: String,
    /// Primary key (base64).
    pub primary_key: edgetwin_wire::Secret,
    /// Secondary key (base64).
    pub secondary_key: edgetwin_wire::Secret,
    /// Permission names (`RegistryRead`, ...).
    pub permissions: Vec<String>,
}

/// The database.
pub struct Store {
    /// The write connection, owned by the hub's one writer (`crate::writer`).
    conn: Connection,
}

/// Whether `name` is a table of the database.
fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |row| row.get::<_, i64>(0),
    )? > 0)
}

/// Whether `table` has a column `name`.
fn has_column(conn: &Connection, table: &str, name: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, name],
        |row| row.get::<_, i64>(0),
    )? > 0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identities (
    device_id TEXT NOT NULL, module_id TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (device_id, module_id));
CREATE TABLE IF NOT EXISTS twins (
    device_id TEXT NOT NULL, module_id TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (device_id, module_id));
CREATE TABLE IF NOT EXISTS configurations (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (name TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, filters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS targeting (
    configuration_id TEXT NOT NULL, device_id TEXT NOT NULL, applied INTEGER NOT NULL,
    reported INTEGER,
    PRIMARY KEY (configuration_id, device_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS targeting_by_device ON targeting (device_id);
CREATE TABLE IF NOT EXISTS module_targeting (
    configuration_id TEXT NOT NULL, device_id TEXT NOT NULL, module_id TEXT NOT NULL,
    applied INTEGER NOT NULL,
    PRIMARY KEY (configuration_id, device_id, module_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS module_targeting_by_device ON module_targeting (device_id);
CREATE TABLE IF NOT EXISTS workload_sockets (device_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied_content (
    device_id TEXT PRIMARY KEY, modules_content TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dps_enrollments (id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dps_groups (id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dps_registrations (
    id TEXT PRIMARY KEY, group_id TEXT, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    partition INTEGER NOT NULL, sequence INTEGER NOT NULL, offset INTEGER NOT NULL,
    enqueued_ms INTEGER NOT NULL, device_id TEXT NOT NULL, module_id TEXT,
    properties TEXT NOT NULL, body BLOB NOT NULL, logged INTEGER NOT NULL,
    PRIMARY KEY (partition, sequence)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumer_groups (name TEXT PRIMARY KEY COLLATE NOCASE) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events_pruned (
    partition INTEGER PRIMARY KEY, sequence INTEGER NOT NULL, offset INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, enqueued_ms INTEGER NOT NULL, logged INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, job_type TEXT NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS c2d (
    device_id TEXT NOT NULL, sequence INTEGER NOT NULL, record TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (device_id, sequence)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS c2d_feedback (
    sequence INTEGER PRIMARY KEY, device_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL, delivery_count INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_devices (
    job_id TEXT NOT NULL, device_id TEXT NOT NULL, status TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (job_id, device_id)) WITHOUT ROWID;
";

/// The last event enqueued in a partition, as the next one's numbers need it.
struct LastEvent {
    /// Its sequence number.
    sequence: i64,
    /// Its offset.
    offset: i64,
    /// The offset of the event after it.
    next_offset: i64,
    /// When it was enqueued.
    enqueued_ms: i64,
    /// Its place in the message log.
    logged: i64,
}

/// What [`Transaction::add_consumer_group`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAdded {
    /// The group was created.
    Added,
    /// A group of that name (case-insensitively) existed already; nothing changed.
    Existed,
    /// The endpoint has as many groups as it may; nothing changed.
    Full,
}

/// The Device Provisioning Service's records, each a JSON document keyed by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpsTable {
    /// Individual enrollments, by registration id.
    Enrollments,
    /// Enrollment groups, by group id.
    Groups,
    /// Registration states, by registration id (with the group that attested them).
    Registrations,
}

impl DpsTable {
    fn name(self) -> &'static str {
        match self {
            DpsTable::Enrollments => "dps_enrollments",
            DpsTable::Groups => "dps_groups",
            DpsTable::Registrations => "dps_registrations",
        }
    }
}

/// Fills `workload_sockets` in a database written before it existed, with the edge devices that
/// hub gave a socket at its start: those with a module besides `$edgeAgent` and `$edgeHub`, or
/// whose `$edgeAgent` was told to run modules.
const WORKLOAD_SOCKETS_BEFORE: &str = "
INSERT OR IGNORE INTO workload_sockets (device_id)
SELECT m.device_id FROM identities m JOIN identities d
  ON d.device_id = m.device_id AND d.module_id = ''
WHERE m.module_id NOT IN ('', '$edgeAgent', '$edgeHub')
  AND CASE WHEN json_valid(d.record) THEN json_extract(d.record, '$.capabilities.iotEdge') END = 1
UNION
SELECT device_id FROM twins
WHERE module_id = '$edgeAgent'
  AND CASE WHEN json_valid(record) THEN json_extract(record, '$.desired.modules') END IS NOT NULL;
";

/// Brings a database from before deployment status moved to `$edgeAgent` up to date: the
/// targeting rows get the `reported` column (what `$edgeAgent` reports, counted as
/// `reportedSuccessfulCount` / `reportedFailedCount`), and the statuses those hubs wrote on device
/// twins are removed (a full evaluation writes them on `$edgeAgent`).
const REPORTED_BEFORE: &str = "
ALTER TABLE targeting ADD COLUMN reported INTEGER;
UPDATE twins SET record = json_set(record, '$.configurations', json('{}'))
WHERE module_id = '' AND json_valid(record)
  AND json_extract(record, '$.configurations') <> '{}';
";

/// A database from before the message log read the events: each event gets its place in the
/// log (`logged`) in the order the events were enqueued, and the log's index.
const LOGGED_BEFORE: &str = "
ALTER TABLE events ADD COLUMN logged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events_pruned ADD COLUMN logged INTEGER NOT NULL DEFAULT 0;
UPDATE events SET logged = (SELECT n FROM (SELECT partition AS p, sequence AS s,
    row_number() OVER (ORDER BY enqueued_ms, partition, sequence) AS n FROM events)
    WHERE p = events.partition AND s = events.sequence);
";

/// The message log's order: every event by its place in it.
const LOGGED_INDEX: &str = "CREATE INDEX IF NOT EXISTS events_by_logged ON events (logged);";

/// The counter of configuration changes whose evaluation of every device has not finished: a hub
/// that finds it above zero at start (it stopped meanwhile, or the database is from before the
/// targeting rows) evaluates every device again.
pub const EVALUATIONS_PENDING: &str = "evaluationsPending";

/// How many devices a deployment targets, is applied to, and whose `$edgeAgent` reports it done or
/// failed at the desired version (its targeting rows counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetingCounts {
    /// `targetedCount`.
    pub targeted: i64,
    /// `appliedCount`.
    pub applied: i64,
    /// `reportedSuccessfulCount`.
    pub succeeded: i64,
    /// `reportedFailedCount`.
    pub failed: i64,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        make_private(path)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let problems: Vec<String> = conn
            .prepare("PRAGMA quick_check(5)")?
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        if problems != ["ok"] {
            return Err(StoreError::Damaged {
                path: path.to_owned(),
                problems: problems.join("; "),
            });
        }
        let targeting_created = !has_table(&conn, "targeting")?;
        let workload_sockets_created = !has_table(&conn, "workload_sockets")?;
        let reported_missing = !targeting_created && !has_column(&conn, "targeting", "reported")?;
        let logged_missing = has_table(&conn, "events")? && !has_column(&conn, "events", "logged")?;
        conn.execute_batch(SCHEMA)?;
        if reported_missing {
            conn.execute_batch(REPORTED_BEFORE)?;
        }
        if logged_missing {
            conn.execute_batch(LOGGED_BEFORE)?;
        }
        conn.execute_batch(LOGGED_INDEX)?;
        if targeting_created || reported_missing {
            // a fresh database, or one from before incremental evaluation or before the
            // reported outcomes: its targeting rows are filled by one full evaluation
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (?1, 1)
                 ON CONFLICT(name) DO UPDATE SET value = value + 1",
                params![EVALUATIONS_PENDING],
            )?;
        }
        if workload_sockets_created {
            // a database from before the sockets were recorded: the devices that had one then
            conn.execute_batch(WORKLOAD_SOCKETS_BEFORE)?;
        }
        Ok(Self { conn })
    }

    /// Runs `f` inside one transaction: all of its writes land, or none.
    pub fn transaction<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        in_transaction(&mut self.conn, f)
    }

    /// Group commit: runs `f` on every item inside one transaction, each item under its own
    /// savepoint so that a failing item is rolled back alone, then commits once. The results come
    /// back in order; if the commit itself fails, the error is returned and nothing is stored.
    pub fn each_in_one_transaction<I, T, E: From<StoreError>>(
        &mut self,
        items: impl IntoIterator<Item = I>,
        f: impl FnMut(&Transaction<'_>, I) -> Result<T, E>,
    ) -> Result<Vec<Result<T, E>>, StoreError> {
        let tx = self.conn.transaction()?;
        let results = Transaction { tx: &tx }.each(items, f)?;
        tx.commit()?;
        Ok(results)
    }

    /// Moves every committed write from the write-ahead log into the database file and empties
    /// the log (`wal_checkpoint(TRUNCATE)`), so that `hub.db` alone holds everything: done at a
    /// clean stop, once the writer has committed its last batch. `Ok(false)` if a reader kept
    /// part of the log from being moved (it stays in `hub.db-wal`, still safe).
    pub fn checkpoint(&self) -> Result<bool, StoreError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        Ok(busy == 0)
    }
}

/// Writes a consistent copy of the database at `database` to the new file `to` (mode 0600: it
/// holds every key) with SQLite's `VACUUM INTO`: one self-contained file, taken in one read
/// transaction, so it is safe while the hub runs and writes. `to` must not exist.
pub fn backup(database: &Path, to: &Path) -> Result<(), StoreError> {
    use rusqlite::OpenFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    if !database.is_file() {
        return Err(io(database)(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no hub database here: --data-dir must be the directory `edgetwin hub` keeps its state in",
        )));
    }
    let Some(target) = to.to_str() else {
        return Err(io(to)(std::io::Error::other(
            "the backup's path is not UTF-8",
        )));
    };
    // Opened read-write (never created) so that the log and its index can be read as the hub
    // writes them; nothing is written to the database.
    let conn = Connection::open_with_flags(
        database,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => io(to)(std::io::Error::new(
                source.kind(),
                "exists already: a backup is written to a new file",
            )),
            _ => io(to)(source),
        })?;
    if let Err(error) = conn.execute("VACUUM INTO ?1", [target]) {
        let _ = std::fs::remove_file(to);
        return Err(error.into());
    }
    Ok(())
}

fn in_transaction<T, E: From<StoreError>>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let tx = conn.transaction().map_err(StoreError::from)?;
    let result = f(&Transaction { tx: &tx })?;
    tx.commit().map_err(StoreError::from)?;
    Ok(result)
}

/// Runs blocking store reads so that, on a multi-threaded runtime, the worker's other tasks
/// move to another thread meanwhile instead of waiting behind it.
pub fn off_the_async_worker<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Read-only connections to the database, so that reads (CONNECT authentication, twin GETs,
/// listings, queries) see the last commit without waiting for the writer and its fsync: in WAL
/// mode readers and the one writer do not block each other.
pub struct Readers {
    /// The connections; a read takes the first free one.
    connections: Vec<std::sync::Mutex<Connection>>,
    /// Where a read that finds none free waits: round robin.
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    /// Opens `count` read-only connections to the database at `path`, which [`Store::open`]
    /// has created.
    pub fn open(path: &Path, count: usize) -> Result<Self, StoreError> {
        let connections = (0..count.max(1))
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                Ok(std::sync::Mutex::new(conn))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Self {
            connections,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Runs `f` in one read transaction (a consistent snapshot); a write in `f` fails.
    pub fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self
            .connections
            .iter()
            .find_map(|c| c.try_lock().ok())
            .unwrap_or_else(|| {
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.connections[i % self.connections.len()]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
            });
        in_transaction(&mut conn, f)
    }
}

/// Creates the database file mode 0600 if it is missing and makes it and its `-wal` and `-shm`
/// files 0600 if they exist (SQLite gives the files it creates the database file's mode).
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a deployment was evaluated once (its system metrics are counted from then on).
pub fn is_evaluated(configuration: &Configuration) -> bool {
    configuration
        .system_metrics
        .as_ref()
        .is_some_and(|m| m.results.contains_key(TARGETED_COUNT))
}

/// Reads and writes inside one transaction.
pub struct Transaction<'a> {
    /// The open SQLite transaction.
    tx: &'a rusqlite::Transaction<'a>,
}

impl Transaction<'_> {
    /// Runs `f` on every item, each under its own savepoint (nested in any enclosing one), so
    /// that a failing item is rolled back alone; the results come back in order. The error is
    /// a savepoint that could not be taken or rolled back, after which nothing should commit.
    pub fn each<I, T, E: From<StoreError>>(
        &self,
        items: impl IntoIterator<Item = I>,
        mut f: impl FnMut(&Transaction<'_>, I) -> Result<T, E>,
    ) -> Result<Vec<Result<T, E>>, StoreError> {
        let mut results = Vec::new();
        for item in items {
            // prepared once per connection: the group commit runs these around every job
            self.tx.prepare_cached("SAVEPOINT item")?.execute([])?;
            let result = f(self, item);
            if result.is_err() {
                self.tx.prepare_cached("ROLLBACK TO item")?.execute([])?;
            }
            self.tx.prepare_cached("RELEASE item")?.execute([])?;
            results.push(result);
        }
        Ok(results)
    }

    fn get_doc<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        what: impl FnOnce() -> String,
    ) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self
            .tx
            .query_row(sql, params, |row| row.get(0))
            .optional()?;
        text.map(|t| decode(&t, what)).transpose()
    }

    /// Decodes the rows of `sql`, which selects a record's key, then the record; a record that
    /// does not decode is named as `{kind} {key}`.
    fn list_docs<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        kind: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.tx.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (key, text) = row?;
            decode(&text, || format!("{kind} {key}"))
        })
        .collect()
    }

    /// The DPS record `id` of `table`.
    pub fn dps_record<T: DeserializeOwned>(
        &self,
        table: DpsTable,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get_doc(
            &format!("SELECT record FROM {} WHERE id = ?1", table.name()),
            params![id],
            || format!("{} {id}", table.name()),
        )
    }

    /// Stores the DPS record `id` of `table` (insert or replace); `group` is the enrollment
    /// group a registration came through.
    pub fn put_dps_record<T: Serialize>(
        &self,
        table: DpsTable,
        id: &str,
        group: Option<&str>,
        record: &T,
    ) -> Result<(), StoreError> {
        match table {
            DpsTable::Registrations => self.tx.execute(
                "INSERT OR REPLACE INTO dps_registrations (id, group_id, record) VALUES (?1, ?2, ?3)",
                params![id, group, encode(record)],
            )?,
            _ => self.tx.execute(
                &format!("INSERT OR REPLACE INTO {} (id, record) VALUES (?1, ?2)", table.name()),
                params![id, encode(record)],
            )?,
        };
        Ok(())
    }

    /// Deletes the DPS record `id` of `table`; whether there was one.
    pub fn delete_dps_record(&self, table: DpsTable, id: &str) -> Result<bool, StoreError> {
        let sql = format!("DELETE FROM {} WHERE id = ?1", table.name());
        Ok(self.tx.execute(&sql, params![id])? > 0)
    }

    /// Up to `limit` records of `table` whose id sorts after `after`, by id; for registrations,
    /// only those of `group` when given.
    pub fn dps_records<T: DeserializeOwned>(
        &self,
        table: DpsTable,
        after: &str,
        limit: usize,
        group: Option<&str>,
    ) -> Result<Vec<T>, StoreError> {
        let filter = match group {
            Some(_) => "AND group_id = ?3",
            None => "AND ?3 IS NULL",
        };
        self.list_docs(
            &format!(
                "SELECT id, record FROM {} WHERE id > ?1 {filter} ORDER BY id LIMIT ?2",
                table.name()
            ),
            params![after, limit as i64, group],
            table.name(),
        )
    }

    /// The device identity `device_id`.
    pub fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        self.get_doc(
            "SELECT record FROM identities WHERE device_id = ?1 AND module_id = ''",
            params![device_id],
            || format!("device {device_id}"),
        )
    }

    /// How many devices are registered, and how many of them are enabled (counted in the
    /// database: the registry's statistics cost no document decoding).
    pub fn device_counts(&self) -> Result<(usize, usize), StoreError> {
        let (total, enabled): (i64, i64) = self.tx.query_row(
            "SELECT count(*), coalesce(sum(CASE WHEN json_valid(record)
                 THEN json_extract(record, '$.status') = 'enabled' END), 0)
             FROM identities WHERE module_id = ''",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((total as usize, enabled as usize))
    }

    /// Up to `top` device identities, ordered by id.
    pub fn devices(&self, top: usize) -> Result<Vec<Device>, StoreError> {
        self.list_docs(
            "SELECT device_id, record FROM identities WHERE module_id = '' ORDER BY device_id LIMIT ?1",
            params![top as i64],
            "device",
        )
    }

    /// Stores a device identity (insert or replace).
    pub fn put_device(&self, device: &Device) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO identities (device_id, module_id, record) VALUES (?1, '', ?2)",
            params![device.device_id, encode(device)],
        )?;
        Ok(())
    }

    /// Deletes a device with its modules, twins, session and the content last applied to it.
    pub fn delete_device(&self, device_id: &str) -> Result<(), StoreError> {
        for table in [
            "identities",
            "twins",
            "targeting",
            "module_targeting",
            "workload_sockets",
            "applied_content",
            "c2d",
            "c2d_feedback",
        ] {
            self.tx.execute(
                &format!("DELETE FROM {table} WHERE device_id = ?1"),
                params![device_id],
            )?;
        }
        self.tx.execute(
            "DELETE FROM sessions WHERE client_id = ?1 OR client_id LIKE ?2 ESCAPE '\\'",
            params![device_id, format!("{}/%", escape_like(device_id))],
        )?;
        Ok(())
    }

    /// The module identity `device_id/module_id`.
    pub fn module(&self, device_id: &str, module_id: &str) -> Result<Option<Module>, StoreError> {
        self.get_doc(
            "SELECT record FROM identities WHERE device_id = ?1 AND module_id = ?2",
            params![device_id, module_id],
            || format!("module {device_id}/{module_id}"),
        )
    }

    /// The module identities of a device, ordered by id.
    pub fn modules(&self, device_id: &str) -> Result<Vec<Module>, StoreError> {
        self.list_docs(
            "SELECT device_id || '/' || module_id, record FROM identities
             WHERE device_id = ?1 AND module_id <> '' ORDER BY module_id",
            params![device_id],
            "module",
        )
    }

    /// The edge devices whose workload socket was wanted (and whose socket the hub therefore
    /// serves from its start on), ordered.
    pub fn workload_socket_devices(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT device_id FROM workload_sockets ORDER BY device_id")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that `device_id`'s workload socket is wanted: served until the device is deleted,
    /// across restarts.
    pub fn want_workload_socket(&self, device_id: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO workload_sockets (device_id) VALUES (?1)")?
            .execute(params![device_id])?;
        Ok(())
    }

    /// The `modulesContent` last applied to `device_id` by `applyConfigurationContent`, kept so
    /// that a module identity created later gets its desired properties from it.
    pub fn applied_content(&self, device_id: &str) -> Result<Option<Properties>, StoreError> {
        self.get_doc(
            "SELECT modules_content FROM applied_content WHERE device_id = ?1",
            params![device_id],
            || format!("applied content of {device_id}"),
        )
    }

    /// Replaces the `modulesContent` last applied to `device_id` by `applyConfigurationContent`
    /// (one row per device, deleted with it).
    pub fn put_applied_content(
        &self,
        device_id: &str,
        modules_content: &Properties,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO applied_content (device_id, modules_content) VALUES (?1, ?2)",
            )?
            .execute(params![device_id, encode(modules_content)])?;
        Ok(())
    }

    /// Stores a module identity (insert or replace).
    pub fn put_module(&self, module: &Module) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO identities (device_id, module_id, record) VALUES (?1, ?2, ?3)",
            params![module.device_id, module.module_id, encode(module)],
        )?;
        Ok(())
    }

    /// Deletes a module with its twin, targeting rows and session.
    pub fn delete_module(&self, device_id: &str, module_id: &str) -> Result<(), StoreError> {
        for table in ["identities", "twins", "module_targeting"] {
            self.tx.execute(
                &format!("DELETE FROM {table} WHERE device_id = ?1 AND module_id = ?2"),
                params![device_id, module_id],
            )?;
        }
        self.delete_session(&IdentityKey::module(device_id, module_id).client_id())
    }

    /// The twin of an identity.
    pub fn twin(&self, key: &IdentityKey) -> Result<Option<TwinRecord>, StoreError> {
        self.get_doc(
            "SELECT record FROM twins WHERE device_id = ?1 AND module_id = ?2",
            params![key.device_id, key.module_column()],
            || format!("twin {}", key.client_id()),
        )
    }

    /// Stores the twin of an identity.
    pub fn put_twin(&self, key: &IdentityKey, twin: &TwinRecord) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO twins (device_id, module_id, record) VALUES (?1, ?2, ?3)",
            params![key.device_id, key.module_column(), encode(twin)],
        )?;
        Ok(())
    }

    /// Up to `limit` identity keys after `after` in (device id, module id) order: devices only,
    /// or modules only (`modules`). Keys alone, no documents: queries page through them.
    pub fn identity_keys(
        &self,
        modules: bool,
        after: Option<&IdentityKey>,
        limit: usize,
    ) -> Result<Vec<IdentityKey>, StoreError> {
        let sql = if modules {
            "SELECT device_id, module_id FROM identities WHERE module_id <> ''
             AND (device_id, module_id) > (?1, ?2) ORDER BY device_id, module_id LIMIT ?3"
        } else {
            "SELECT device_id, module_id FROM identities WHERE module_id = ''
             AND (device_id, module_id) > (?1, ?2) ORDER BY device_id LIMIT ?3"
        };
        let (device, module) =
            after.map_or(("", ""), |k| (k.device_id.as_str(), k.module_column()));
        let mut stmt = self.tx.prepare_cached(sql)?;
        let rows = stmt.query_map(params![device, module, limit as i64], |row| {
            let (device_id, module_id): (String, String) = (row.get(0)?, row.get(1)?);
            Ok(IdentityKey {
                device_id,
                module_id: Some(module_id).filter(|m| !m.is_empty()),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A configuration by id. A deployment's system metrics are the live counts of its targeting
    /// rows ([`Self::system_metrics`]).
    pub fn configuration(&self, id: &str) -> Result<Option<Configuration>, StoreError> {
        self.get_doc(
            "SELECT record FROM configurations WHERE id = ?1",
            params![id],
            || format!("configuration {id}"),
        )?
        .map(|c| self.with_counts(c))
        .transpose()
    }

    /// Up to `top` configurations, ordered by id, with live counts as [`Self::configuration`].
    pub fn configurations(&self, top: usize) -> Result<Vec<Configuration>, StoreError> {
        self.stored_configurations(top)?
            .into_iter()
            .map(|c| self.with_counts(c))
            .collect()
    }

    /// Up to `top` configurations as stored, without counting their targeting rows: for
    /// evaluation, which must not cost O(fleet) per write.
    pub fn stored_configurations(&self, top: usize) -> Result<Vec<Configuration>, StoreError> {
        self.list_docs(
            "SELECT id, record FROM configurations ORDER BY id LIMIT ?1",
            params![top as i64],
            "configuration",
        )
    }

    /// `configuration` with its live system metrics, if it is a deployment that was evaluated.
    fn with_counts(&self, mut configuration: Configuration) -> Result<Configuration, StoreError> {
        if is_evaluated(&configuration) {
            configuration.system_metrics = Some(self.system_metrics(&configuration)?);
        }
        Ok(configuration)
    }

    /// An IoT Edge deployment's or a device configuration's `systemMetrics` as IoT Hub returns
    /// them: the counts of its targeting rows, and IoT Hub's queries that select the same devices
    /// ([`edgetwin_wire::rest::edge_deployment_queries`],
    /// [`edgetwin_wire::rest::device_configuration_queries`]).
    pub fn system_metrics(
        &self,
        configuration: &Configuration,
    ) -> Result<ConfigurationMetrics, StoreError> {
        let counts = self.targeting_counts(&configuration.id)?;
        let target_condition = configuration
            .target_condition
            .as_deref()
            .unwrap_or_default();
        type Queries = fn(&str, &str) -> serde_json::Map<String, serde_json::Value>;
        let adm_queries: Option<Queries> = if configuration.is_device_configuration() {
            Some(edgetwin_wire::rest::device_configuration_queries)
        } else if configuration.is_module_configuration() {
            Some(edgetwin_wire::rest::module_configuration_queries)
        } else {
            None
        };
        if let Some(queries) = adm_queries {
            let results = [
                (TARGETED_COUNT, counts.targeted),
                (APPLIED_COUNT, counts.applied),
            ]
            .into_iter()
            .map(|(name, count)| (name.to_owned(), count.into()))
            .collect();
            let queries = queries(&configuration.id, target_condition);
            return Ok(ConfigurationMetrics { results, queries });
        }
        let results = [
            (TARGETED_COUNT, counts.targeted),
            (APPLIED_COUNT, counts.applied),
            (REPORTED_SUCCESSFUL_COUNT, counts.succeeded),
            (REPORTED_FAILED_COUNT, counts.failed),
        ]
        .into_iter()
        .map(|(name, count)| (name.to_owned(), count.into()))
        .collect();
        let queries =
            edgetwin_wire::rest::edge_deployment_queries(&configuration.id, target_condition);
        Ok(ConfigurationMetrics { results, queries })
    }

    /// How many devices a deployment targets, is applied to, and is reported done or failed on.
    pub fn targeting_counts(&self, configuration_id: &str) -> Result<TargetingCounts, StoreError> {
        Ok(self.tx.query_row(
            "SELECT count(*), coalesce(sum(applied), 0),
                 coalesce(sum(applied AND reported = 1), 0),
                 coalesce(sum(applied AND reported = 0), 0)
             FROM (SELECT applied, reported FROM targeting WHERE configuration_id = ?1
                   UNION ALL
                   SELECT applied, NULL FROM module_targeting WHERE configuration_id = ?1)",
            params![configuration_id],
            |row| {
                Ok(TargetingCounts {
                    targeted: row.get(0)?,
                    applied: row.get(1)?,
                    succeeded: row.get(2)?,
                    failed: row.get(3)?,
                })
            },
        )?)
    }

    /// Replaces the deployments a device is targeted by: (configuration id, applied) pairs, with
    /// what its `$edgeAgent` reports of the deployment it was given (`Some(true)` done,
    /// `Some(false)` failed, `None` not reported at the desired version).
    pub fn set_targeting(
        &self,
        device_id: &str,
        targets: &[(&str, bool)],
        reported: Option<bool>,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM targeting WHERE device_id = ?1")?
            .execute(params![device_id])?;
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO targeting (configuration_id, device_id, applied, reported)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (configuration_id, applied) in targets {
            insert.execute(params![configuration_id, device_id, applied, reported])?;
        }
        Ok(())
    }

    /// Replaces the module configurations the modules of a device are targeted by: (module id,
    /// configuration id, applied) triples.
    pub fn set_module_targeting(
        &self,
        device_id: &str,
        targets: &[(&str, &str, bool)],
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM module_targeting WHERE device_id = ?1")?
            .execute(params![device_id])?;
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO module_targeting (configuration_id, device_id, module_id, applied)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (module_id, configuration_id, applied) in targets {
            insert.execute(params![configuration_id, device_id, module_id, applied])?;
        }
        Ok(())
    }

    /// Records what a device's `$edgeAgent` now reports (see [`Self::set_targeting`]) on the
    /// device's targeting rows: a reported patch costs one indexed update, not a fleet scan.
    pub fn set_reported(&self, device_id: &str, reported: Option<bool>) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE targeting SET reported = ?2 WHERE device_id = ?1")?
            .execute(params![device_id, reported])?;
        Ok(())
    }

    /// Stores a configuration.
    pub fn put_configuration(&self, configuration: &Configuration) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO configurations (id, record) VALUES (?1, ?2)",
            params![configuration.id, encode(configuration)],
        )?;
        Ok(())
    }

    /// Deletes a configuration.
    pub fn delete_configuration(&self, id: &str) -> Result<(), StoreError> {
        self.tx
            .execute("DELETE FROM configurations WHERE id = ?1", params![id])?;
        for table in ["targeting", "module_targeting"] {
            self.tx.execute(
                &format!("DELETE FROM {table} WHERE configuration_id = ?1"),
                params![id],
            )?;
        }
        Ok(())
    }

    /// The scheduled job `job_id`, with its statistics counted from its devices' records.
    pub fn job(&self, job_id: &str) -> Result<Option<JobResponse>, StoreError> {
        self.get_doc(
            "SELECT record FROM jobs WHERE job_id = ?1",
            params![job_id],
            || format!("job {job_id}"),
        )?
        .map(|job| self.with_statistics(job))
        .transpose()
    }

    /// Up to `limit` scheduled jobs after the id `after`, by id, of `job_type` and in `status`
    /// if given, with their statistics.
    pub fn jobs(
        &self,
        job_type: Option<&str>,
        status: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobResponse>, StoreError> {
        let jobs: Vec<JobResponse> = self.list_docs(
            "SELECT job_id, record FROM jobs
             WHERE (?1 IS NULL OR job_type = ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR job_id > ?3)
             ORDER BY job_id LIMIT ?4",
            params![job_type, status, after, limit as i64],
            "job",
        )?;
        jobs.into_iter().map(|j| self.with_statistics(j)).collect()
    }

    /// Every job not over yet (queued, scheduled or running), as stored.
    pub fn active_jobs(&self) -> Result<Vec<JobResponse>, StoreError> {
        self.list_docs(
            "SELECT job_id, record FROM jobs
             WHERE status IN ('queued', 'scheduled', 'running') ORDER BY job_id",
            [],
            "job",
        )
    }

    /// Stores a scheduled job (its statistics are counted when it is read).
    pub fn put_job(&self, job: &JobResponse) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO jobs (job_id, job_type, status, record) VALUES (?1, ?2, ?3, ?4)",
            params![
                job.job_id,
                job.job_type.name(),
                job.status.name(),
                encode(job)
            ],
        )?;
        Ok(())
    }

    /// Stores one device's part in a job.
    pub fn put_device_job(&self, record: &DeviceJob) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO job_devices (job_id, device_id, status, record)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                record.job_id,
                record.device_id,
                record.status.name(),
                encode(record)
            ],
        )?;
        Ok(())
    }

    /// Up to `limit` devices of `job_id` in `status` after the device `after`, by id.
    pub fn job_devices_in(
        &self,
        job_id: &str,
        status: DeviceJobStatus,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT device_id FROM job_devices
             WHERE job_id = ?1 AND status = ?2 AND (?3 IS NULL OR device_id > ?3)
             ORDER BY device_id LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![job_id, status.name(), after, limit as i64], |row| {
            row.get(0)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves every device of `job_id` in status `from` to the record `to` makes of it.
    pub fn move_job_devices(
        &self,
        job_id: &str,
        from: DeviceJobStatus,
        to: impl Fn(&str) -> DeviceJob,
    ) -> Result<usize, StoreError> {
        let devices = self.job_devices_in(job_id, from, None, i64::MAX as usize)?;
        for device_id in &devices {
            self.put_device_job(&to(device_id))?;
        }
        Ok(devices.len())
    }

    /// The records of up to `limit` devices' parts in jobs after the (job, device) `after`, by
    /// job then device (`FROM devices.jobs`).
    pub fn device_jobs(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<DeviceJob>, StoreError> {
        let (job, device) = after.unzip();
        self.list_docs(
            "SELECT job_id || '/' || device_id, record FROM job_devices
             WHERE ?1 IS NULL OR (job_id, device_id) > (?1, ?2)
             ORDER BY job_id, device_id LIMIT ?3",
            params![job, device, limit as i64],
            "device job",
        )
    }

    /// `job` with its statistics counted from its devices' records.
    fn with_statistics(&self, mut job: JobResponse) -> Result<JobResponse, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT status, count(*) FROM job_devices WHERE job_id = ?1 GROUP BY status",
        )?;
        let rows = stmt.query_map(params![job.job_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut counts = Vec::new();
        for row in rows {
            let (status, count) = row?;
            let status: DeviceJobStatus = decode(&format!("\"{status}\""), || {
                format!("the device statuses of job {}", job.job_id)
            })?;
            counts.push((status, count));
        }
        job.device_job_statistics = DeviceJobStatistics::count(&counts);
        Ok(job)
    }

    /// Every shared access policy.
    pub fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        self.list_docs(
            "SELECT name, record FROM policies ORDER BY name",
            [],
            "policy",
        )
    }

    /// Stores a shared access policy.
    pub fn put_policy(&self, policy: &PolicyRecord) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO policies (name, record) VALUES (?1, ?2)",
            params![policy.name, encode(policy)],
        )?;
        Ok(())
    }

    /// The subscription filters persisted for an MQTT client id.
    pub fn session(&self, client_id: &str) -> Result<Option<Vec<SessionFilter>>, StoreError> {
        self.get_doc(
            "SELECT filters FROM sessions WHERE client_id = ?1",
            params![client_id],
            || format!("session {client_id}"),
        )
    }

    /// Persists the subscription filters of an MQTT client id.
    pub fn put_session(
        &self,
        client_id: &str,
        filters: &[SessionFilter],
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO sessions (client_id, filters) VALUES (?1, ?2)",
            params![client_id, encode(&filters)],
        )?;
        Ok(())
    }

    /// Forgets the session of an MQTT client id.
    pub fn delete_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "DELETE FROM sessions WHERE client_id = ?1",
            params![client_id],
        )?;
        Ok(())
    }

    /// The cloud-to-device messages queued for `device_id`, oldest first.
    pub fn c2d_queue(&self, device_id: &str) -> Result<Vec<crate::c2d::C2dMessage>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT sequence, record, body FROM c2d WHERE device_id = ?1 ORDER BY sequence",
        )?;
        let rows = stmt.query_map(params![device_id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (sequence, record, body) = row?;
            let mut message: crate::c2d::C2dMessage = decode(&record, || {
                format!("cloud-to-device message {sequence} of {device_id}")
            })?;
            message.sequence = sequence;
            message.body = body;
            Ok(message)
        })
        .collect()
    }

    /// Stores (or replaces) a cloud-to-device message of `device_id`.
    pub fn put_c2d(
        &self,
        device_id: &str,
        message: &crate::c2d::C2dMessage,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO c2d (device_id, sequence, record, body)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                device_id,
                message.sequence,
                encode(message),
                message.body
            ])?;
        Ok(())
    }

    /// Removes a cloud-to-device message of `device_id`; whether it was there.
    pub fn delete_c2d(&self, device_id: &str, sequence: i64) -> Result<bool, StoreError> {
        Ok(self.tx.execute(
            "DELETE FROM c2d WHERE device_id = ?1 AND sequence = ?2",
            params![device_id, sequence],
        )? > 0)
    }

    /// Every queued cloud-to-device message's device and expiry (Unix milliseconds), for the
    /// sweep that dead-letters expired ones.
    pub fn c2d_expiries(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT device_id, CAST(json_extract(record, '$.expiryMs') AS INTEGER) FROM c2d",
        )?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Appends a feedback record about a message of `device_id`, made at `now_ms`.
    pub fn put_c2d_feedback(
        &self,
        device_id: &str,
        record: &crate::c2d::FeedbackRecord,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO c2d_feedback (device_id, created_ms, locked_until_ms, delivery_count,
                 record) VALUES (?1, ?2, 0, 0, ?3)",
            )?
            .execute(params![device_id, now_ms, encode(record)])?;
        Ok(())
    }

    /// The feedback records not settled yet, oldest first.
    pub fn c2d_feedback(&self) -> Result<Vec<crate::c2d::PendingFeedback>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT sequence, created_ms, locked_until_ms, delivery_count, record
             FROM c2d_feedback ORDER BY sequence",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, u32>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?;
        rows.map(|row| {
            let (sequence, created_ms, locked_until_ms, delivery_count, record) = row?;
            Ok(crate::c2d::PendingFeedback {
                sequence,
                created_ms,
                locked_until_ms,
                delivery_count,
                record: decode(&record, || format!("feedback record {sequence}"))?,
            })
        })
        .collect()
    }

    /// Stores a feedback record's lock and delivery count.
    pub fn lock_c2d_feedback(
        &self,
        sequence: i64,
        locked_until_ms: i64,
        delivery_count: u32,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE c2d_feedback SET locked_until_ms = ?2, delivery_count = ?3
                 WHERE sequence = ?1",
            )?
            .execute(params![sequence, locked_until_ms, delivery_count])?;
        Ok(())
    }

    /// Removes a feedback record.
    pub fn delete_c2d_feedback(&self, sequence: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM c2d_feedback WHERE sequence = ?1")?
            .execute(params![sequence])?;
        Ok(())
    }

    /// Appends `event` to its partition with the next sequence number and offset (those of
    /// `event` are ignored) and returns the event as stored. Nothing is pruned here
    /// ([`Transaction::prune_events`] is).
    pub fn append_event(
        &self,
        mut event: crate::events::Event,
    ) -> Result<crate::events::Event, StoreError> {
        let last = self.last_event(event.partition)?;
        (event.sequence, event.offset) = match last {
            Some(last) => (last.sequence + 1, last.next_offset),
            None => (0, 0),
        };
        event.logged = self.last_logged()? + 1;
        self.tx
            .prepare_cached(
                "INSERT INTO events (partition, sequence, offset, enqueued_ms, device_id,
                 module_id, properties, body, logged) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                event.partition,
                event.sequence,
                event.offset,
                event.enqueued_ms,
                event.device_id,
                event.module_id,
                encode(&event.properties),
                event.body,
                event.logged
            ])?;
        Ok(event)
    }

    /// The last place given in the message log (0: none), kept or pruned (a partition pruned
    /// whole keeps its last event's).
    pub fn last_logged(&self) -> Result<i64, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT max(coalesce((SELECT max(logged) FROM events), 0),
                 coalesce((SELECT max(logged) FROM events_pruned), 0))",
            )?
            .query_row([], |row| row.get(0))?)
    }

    /// The last event ever enqueued in `partition`, kept or pruned (`None`: never one).
    fn last_event(&self, partition: u32) -> Result<Option<LastEvent>, StoreError> {
        let kept = self
            .tx
            .prepare_cached(
                "SELECT sequence, offset + length(body) + length(properties) + 1, enqueued_ms,
                 offset, logged FROM events WHERE partition = ?1 ORDER BY sequence DESC LIMIT 1",
            )?
            .query_row(params![partition], |row| {
                Ok(LastEvent {
                    sequence: row.get(0)?,
                    next_offset: row.get(1)?,
                    enqueued_ms: row.get(2)?,
                    offset: row.get(3)?,
                    logged: row.get(4)?,
                })
            })
            .optional()?;
        if kept.is_some() {
            return Ok(kept);
        }
        // every event pruned: the last one's numbers were kept
        Ok(self
            .tx
            .query_row(
                "SELECT sequence, offset, next_offset, enqueued_ms, logged FROM events_pruned
                 WHERE partition = ?1",
                params![partition],
                |row| {
                    Ok(LastEvent {
                        sequence: row.get(0)?,
                        offset: row.get(1)?,
                        next_offset: row.get(2)?,
                        enqueued_ms: row.get(3)?,
                        logged: row.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Prunes at most `limit` of the oldest events of `partition` that `retention` does not
    /// keep at `now_ms` (oldest first, so the partition keeps a suffix); how many it pruned.
    pub fn prune_events(
        &self,
        partition: u32,
        retention: &crate::events::Retention,
        now_ms: i64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let Some(last) = self.last_event(partition)? else {
            return Ok(0);
        };
        let kept = retention.kept(now_ms, last.next_offset);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // the newest event that goes, within `limit` of the oldest: every event before it goes
        // too (an event enqueued earlier than one before it, the clock having gone back, goes
        // with the prefix)
        let through: Option<i64> = self.tx.query_row(
            "SELECT max(sequence) FROM (SELECT sequence, enqueued_ms, offset FROM events
             WHERE partition = ?1 ORDER BY sequence LIMIT ?4)
             WHERE enqueued_ms < ?2 OR offset < ?3",
            params![partition, kept.oldest_ms, kept.lowest_offset, limit],
            |row| row.get(0),
        )?;
        let Some(through) = through else {
            return Ok(0);
        };
        if through == last.sequence {
            self.tx.execute(
                "INSERT INTO events_pruned (partition, sequence, offset, next_offset, enqueued_ms,
                 logged) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(partition) DO UPDATE
                 SET sequence = ?2, offset = ?3, next_offset = ?4, enqueued_ms = ?5, logged = ?6",
                params![
                    partition,
                    last.sequence,
                    last.offset,
                    last.next_offset,
                    last.enqueued_ms,
                    last.logged
                ],
            )?;
        }
        Ok(self.tx.execute(
            "DELETE FROM events WHERE partition = ?1 AND sequence <= ?2",
            params![partition, through],
        )?)
    }

    /// The consumer groups created besides `$Default`, by name.
    pub fn consumer_groups(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT name FROM consumer_groups ORDER BY name")?;
        let names = stmt.query_map([], |row| row.get(0))?;
        Ok(names.collect::<Result<_, _>>()?)
    }

    /// Whether consumer group `name` exists (`$Default` always does; names are
    /// case-insensitive, as Event Hubs' entity paths).
    pub fn consumer_group_exists(&self, name: &str) -> Result<bool, StoreError> {
        if name.eq_ignore_ascii_case(crate::events::DEFAULT_CONSUMER_GROUP) {
            return Ok(true);
        }
        Ok(self
            .tx
            .query_row(
                "SELECT 1 FROM consumer_groups WHERE name = ?1",
                params![name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Adds consumer group `name` unless it exists or the endpoint has `max` groups already
    /// (`$Default` counted).
    pub fn add_consumer_group(&self, name: &str, max: usize) -> Result<GroupAdded, StoreError> {
        if self.consumer_group_exists(name)? {
            return Ok(GroupAdded::Existed);
        }
        if self.consumer_groups()?.len() + 1 >= max {
            return Ok(GroupAdded::Full);
        }
        self.tx.execute(
            "INSERT INTO consumer_groups (name) VALUES (?1)",
            params![name],
        )?;
        Ok(GroupAdded::Added)
    }

    /// Removes consumer group `name`; whether it was there.
    pub fn delete_consumer_group(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .execute("DELETE FROM consumer_groups WHERE name = ?1", params![name])?
            > 0)
    }

    /// At most `limit` events of `partition` with a sequence number above `after`, oldest first.
    pub fn events_after(
        &self,
        partition: u32,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::events::Event>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT partition, sequence, offset, enqueued_ms, device_id, module_id, properties,
             body, logged FROM events WHERE partition = ?1 AND sequence > ?2 ORDER BY sequence
             LIMIT ?3",
        )?;
        let rows = stmt.query(params![
            partition,
            after,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ])?;
        rows.mapped(event_of_row)
            .map(|event| event.map_err(StoreError::from).and_then(|event| event))
            .collect()
    }

    /// The message log: the events of `device_id` (or of every device) in the order they
    /// were stored, from the first after place `after`, that `keep` keeps, until `full` (asked
    /// before each one is added) says the page is full.
    pub fn logged_events(
        &self,
        after: i64,
        device_id: Option<&str>,
        mut keep: impl FnMut(&crate::events::Event) -> bool,
        mut full: impl FnMut(&crate::events::Event) -> bool,
    ) -> Result<Vec<crate::events::Event>, StoreError> {
        let partition = device_id.map(crate::events::partition_of);
        let mut stmt = self.tx.prepare_cached(
            "SELECT partition, sequence, offset, enqueued_ms, device_id, module_id, properties,
             body, logged FROM events
             WHERE logged > ?1 AND (?2 IS NULL OR (partition = ?2 AND device_id = ?3))
             ORDER BY logged",
        )?;
        let mut rows = stmt.query(params![after, partition, device_id])?;
        let mut kept = Vec::new();
        while let Some(row) = rows.next()? {
            let event = event_of_row(row)??;
            if !keep(&event) {
                continue;
            }
            if full(&event) {
                break;
            }
            kept.push(event);
        }
        Ok(kept)
    }

    /// The sequence number before the first event of `partition` that `admits` (a filter
    /// column and bound: `offset > ?`, …), or the last sequence number if none does.
    pub fn event_position(
        &self,
        partition: u32,
        start: crate::events::StartAt,
    ) -> Result<i64, StoreError> {
        use crate::events::StartAt;
        let (column, bound, inclusive) = match start {
            StartAt::Offset { offset, inclusive } => ("offset", offset, inclusive),
            StartAt::Sequence {
                sequence,
                inclusive,
            } => ("sequence", sequence, inclusive),
            StartAt::EnqueuedTime { ms, inclusive } => ("enqueued_ms", ms, inclusive),
            StartAt::Latest => return Ok(self.partition_info(partition)?.last_sequence),
        };
        let operator = if inclusive { ">=" } else { ">" };
        let first: Option<i64> = self.tx.query_row(
            &format!(
                "SELECT min(sequence) FROM events WHERE partition = ?1 AND {column} {operator} ?2"
            ),
            params![partition, bound],
            |row| row.get(0),
        )?;
        match first {
            Some(sequence) => Ok(sequence - 1),
            None => Ok(self.partition_info(partition)?.last_sequence),
        }
    }

    /// What `partition` holds.
    pub fn partition_info(
        &self,
        partition: u32,
    ) -> Result<crate::events::PartitionInfo, StoreError> {
        let Some(last) = self.last_event(partition)? else {
            return Ok(crate::events::PartitionInfo::EMPTY);
        };
        let begin: Option<i64> = self.tx.query_row(
            "SELECT min(sequence) FROM events WHERE partition = ?1",
            params![partition],
            |row| row.get(0),
        )?;
        Ok(crate::events::PartitionInfo {
            // all pruned: the next event's number, as Event Hubs reports an expired partition
            begin_sequence: begin.unwrap_or(last.sequence + 1),
            last_sequence: last.sequence,
            last_offset: last.offset,
            last_enqueued_ms: last.enqueued_ms,
            is_empty: begin.is_none(),
        })
    }

    /// Increments and returns the named counter (generation ids, etags).
    pub fn next_counter(&self, name: &str) -> Result<i64, StoreError> {
        self.add_to_counter(name, 1)
    }

    /// The named counter's value (0 if it was never set).
    pub fn counter(&self, name: &str) -> Result<i64, StoreError> {
        Ok(self
            .tx
            .query_row(
                "SELECT value FROM counters WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Sets the named counter back to 0.
    pub fn clear_counter(&self, name: &str) -> Result<(), StoreError> {
        self.tx
            .execute("DELETE FROM counters WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// Adds `delta` to the named counter (created at 0) and returns its new value.
    pub fn add_to_counter(&self, name: &str, delta: i64) -> Result<i64, StoreError> {
        self.tx.execute(
            "INSERT INTO counters (name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = value + ?2",
            params![name, delta],
        )?;
        Ok(self.tx.query_row(
            "SELECT value FROM counters WHERE name = ?1",
            params![name],
            |row| row.get(0),
        )?)
    }
}

/// A subscription of a persistent MQTT session and the QoS it was granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredFilter")]
pub struct SessionFilter {
    /// The topic filter.
    pub filter: String,
    /// The granted QoS (0 or 1).
    pub qos: u8,
}

/// How a filter is stored: `{"filter":…,"qos":…}`, or a bare string (QoS 1) as hubs before the
/// QoS was kept wrote it.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredFilter {
    WithQos { filter: String, qos: u8 },
    Bare(String),
}

impl From<StoredFilter> for SessionFilter {
    fn from(stored: StoredFilter) -> Self {
        match stored {
            StoredFilter::WithQos { filter, qos } => SessionFilter { filter, qos },
            StoredFilter::Bare(filter) => SessionFilter { filter, qos: 1 },
        }
    }
}

/// The event of a row of `partition, sequence, offset, enqueued_ms, device_id, module_id,
/// properties, body, logged` (a stored document that does not decode is the inner error).
fn event_of_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<crate::events::Event, StoreError>> {
    let partition: u32 = row.get(0)?;
    let sequence: i64 = row.get(1)?;
    let properties: String = row.get(6)?;
    let event = crate::events::Event {
        partition,
        sequence,
        offset: row.get(2)?,
        enqueued_ms: row.get(3)?,
        device_id: row.get(4)?,
        module_id: row.get(5)?,
        properties: Vec::new(),
        body: row.get(7)?,
        logged: row.get(8)?,
    };
    Ok(decode(&properties, || {
        format!("event {sequence} of partition {partition}")
    })
    .map(|properties| crate::events::Event {
        properties,
        ..event
    }))
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("wire models always serialise")
}

fn decode<T: DeserializeOwned>(text: &str, what: impl FnOnce() -> String) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        what: what(),
        source,
    })
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh store in a scratch directory named after `name` (returned, for the test to remove).
    pub(crate) fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("edgetwin-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (Store::open(&dir.join("hub.db")).unwrap(), dir)
    }

    #[test]
    fn events_get_consecutive_sequence_numbers_and_growing_offsets_per_partition_and_positions_resolve(
    ) {
        use crate::events::{Event, PartitionInfo, StartAt};
        let (mut store, dir) = temp_store("events");
        let event = |partition, ms, body: &str| Event {
            partition,
            sequence: 99,
            offset: 99,
            enqueued_ms: ms,
            device_id: "d".into(),
            module_id: Some("m".into()),
            properties: vec![("$.mid".into(), Some("1".into())), ("flag".into(), None)],
            body: body.as_bytes().to_vec(),
            logged: 0,
        };
        let stored = store
            .transaction(|tx| {
                assert_eq!(tx.partition_info(0)?, PartitionInfo::EMPTY);
                let a = tx.append_event(event(0, 1000, "a"))?;
                let b = tx.append_event(event(0, 2000, "bb"))?;
                let other = tx.append_event(event(1, 1500, "x"))?;
                Ok::<_, StoreError>((a, b, other))
            })
            .unwrap();
        let (a, b, other) = stored;
        assert_eq!((a.sequence, a.offset), (0, 0));
        assert_eq!(b.sequence, 1);
        assert!(b.offset > a.offset);
        assert_eq!((other.sequence, other.offset), (0, 0));
        store
            .transaction(|tx| {
                assert_eq!(tx.events_after(0, -1, 10)?, vec![a.clone(), b.clone()]);
                assert_eq!(tx.events_after(0, 0, 1)?, vec![b.clone()]);
                let info = tx.partition_info(0)?;
                assert_eq!(
                    (info.begin_sequence, info.last_sequence, info.last_offset),
                    (0, 1, b.offset)
                );
                assert_eq!((info.last_enqueued_ms, info.is_empty), (2000, false));
                let at = |start| tx.event_position(0, start).unwrap();
                assert_eq!(at(StartAt::BEGINNING), -1);
                assert_eq!(at(StartAt::Latest), 1);
                let offset = |offset, inclusive| StartAt::Offset { offset, inclusive };
                assert_eq!(at(offset(a.offset, false)), 0);
                assert_eq!(at(offset(a.offset, true)), -1);
                let sequence = |sequence, inclusive| StartAt::Sequence {
                    sequence,
                    inclusive,
                };
                assert_eq!(at(sequence(0, false)), 0);
                assert_eq!(at(sequence(1, true)), 0);
                assert_eq!(
                    at(sequence(7, true)),
                    1,
                    "past the end: from the next event on"
                );
                let time = |ms, inclusive| StartAt::EnqueuedTime { ms, inclusive };
                assert_eq!(at(time(1000, false)), 0);
                assert_eq!(at(time(1000, true)), -1);
                assert_eq!(at(time(5000, false)), 1);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pruning_drops_the_oldest_events_by_age_and_bytes_and_numbering_goes_on_even_when_all_went() {
        use crate::events::{Event, Retention, StartAt};
        let (mut store, dir) = temp_store("retention");
        let day = 24 * 3600 * 1000;
        let event = |ms| Event {
            partition: 2,
            sequence: 0,
            offset: 0,
            enqueued_ms: ms,
            device_id: "d".into(),
            module_id: None,
            properties: Vec::new(),
            body: vec![b'x'; 7], // 10 bytes of offset each, with `[]` and the one per event
            logged: 0,
        };
        // 10 events a day old, then 10 new ones; 4 partitions share 400 bytes: 100 each
        let retention = Retention::new(1, 400);
        let now = 10 * day;
        store
            .transaction(|tx| {
                for n in 0..20 {
                    let ms = if n < 10 { now - day - 1 } else { now };
                    tx.append_event(event(ms))?;
                }
                // by age (the first 10), in batches of at most `limit`
                assert_eq!(tx.prune_events(2, &retention, now, 4)?, 4);
                assert_eq!(tx.prune_events(2, &retention, now, 100)?, 6);
                assert_eq!(tx.partition_info(2)?.begin_sequence, 10);
                // by bytes: 10 more events, 200 bytes held, the oldest 100 go
                for _ in 0..10 {
                    tx.append_event(event(now))?;
                }
                assert_eq!(tx.prune_events(2, &retention, now, 100)?, 10);
                assert_eq!(tx.prune_events(2, &retention, now, 100)?, 0, "nothing more");
                let info = tx.partition_info(2)?;
                assert_eq!((info.begin_sequence, info.last_sequence), (20, 29));
                // a reader asking for a pruned offset or sequence starts at the earliest kept
                let pruned = StartAt::Offset {
                    offset: 50,
                    inclusive: true,
                };
                assert_eq!(tx.event_position(2, pruned)?, 19);
                let sequence = StartAt::Sequence {
                    sequence: 3,
                    inclusive: false,
                };
                assert_eq!(tx.event_position(2, sequence)?, 19);
                // a day later everything goes, and the next event is still number 30
                assert_eq!(tx.prune_events(2, &retention, now + day + 1, 100)?, 10);
                let info = tx.partition_info(2)?;
                assert!(info.is_empty);
                assert_eq!((info.begin_sequence, info.last_sequence), (30, 29));
                assert_eq!(info.last_offset, 290);
                let next = tx.append_event(event(now + day + 1))?;
                assert_eq!((next.sequence, next.offset), (30, 300));
                assert_eq!(
                    next.logged, 31,
                    "the message log goes on after its last place too"
                );
                Ok::<_, StoreError>(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn consumer_groups_are_case_insensitive_default_always_exists_and_the_quota_holds() {
        let (mut store, dir) = temp_store("consumer-groups");
        store
            .transaction(|tx| {
                assert!(tx.consumer_group_exists("$default")?);
                assert!(!tx.consumer_group_exists("monitor")?);
                assert_eq!(tx.add_consumer_group("Monitor", 3)?, GroupAdded::Added);
                assert_eq!(tx.add_consumer_group("monitor", 3)?, GroupAdded::Existed);
                assert_eq!(tx.add_consumer_group("$Default", 3)?, GroupAdded::Existed);
                assert!(tx.consumer_group_exists("MONITOR")?);
                assert_eq!(tx.add_consumer_group("b", 3)?, GroupAdded::Added);
                assert_eq!(tx.add_consumer_group("c", 3)?, GroupAdded::Full);
                assert_eq!(
                    tx.consumer_groups()?,
                    ["b", "Monitor"],
                    "ordered case-insensitively"
                );
                assert!(tx.delete_consumer_group("MONITOR")?);
                assert!(!tx.delete_consumer_group("MONITOR")?);
                assert_eq!(tx.consumer_groups()?, ["b"]);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_store_writes_ahead_and_syncs_every_commit_so_an_acknowledged_write_survives_a_crash() {
        let (store, dir) = temp_store("durability");
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let synchronous: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(
            (mode.as_str(), synchronous),
            ("wal", 2),
            "WAL with synchronous=FULL"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_transaction_leaves_nothing_behind() {
        let (mut store, dir) = temp_store("rollback");
        let key = IdentityKey::device("d1");
        let result: Result<(), StoreError> = store.transaction(|tx| {
            tx.put_twin(&key, &TwinRecord::default())?;
            Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
        });
        assert!(result.is_err());
        let twin = store.transaction(|tx| tx.twin(&key)).unwrap();
        assert_eq!(twin, None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failing_item_of_a_group_commit_is_rolled_back_alone() {
        let (mut store, dir) = temp_store("group");
        let results = store
            .each_in_one_transaction(["a", "fail", "c"], |tx, id| {
                tx.put_twin(&IdentityKey::device(id), &TwinRecord::default())?;
                if id == "fail" {
                    return Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows));
                }
                Ok(id)
            })
            .unwrap();
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
        let stored = store
            .transaction(|tx| {
                Ok::<_, StoreError>(
                    ["a", "fail", "c"]
                        .map(|id| tx.twin(&IdentityKey::device(id)).unwrap().is_some()),
                )
            })
            .unwrap();
        assert_eq!(stored, [true, false, true]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_a_database_without_targeting_rows_asks_for_a_full_evaluation() {
        let (mut store, dir) = temp_store("targeting");
        let pending = |store: &mut Store| {
            store
                .transaction(|tx| tx.counter(EVALUATIONS_PENDING))
                .unwrap()
        };
        assert_eq!(pending(&mut store), 1, "a fresh database");
        store
            .transaction(|tx| tx.clear_counter(EVALUATIONS_PENDING))
            .unwrap();
        drop(store);
        let mut reopened = Store::open(&dir.join("hub.db")).unwrap();
        assert_eq!(pending(&mut reopened), 0);
        reopened.conn.execute_batch("DROP TABLE targeting").unwrap();
        drop(reopened);
        let mut older = Store::open(&dir.join("hub.db")).unwrap();
        assert_eq!(pending(&mut older), 1, "a database from before the table");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_database_from_before_reported_outcomes_drops_device_twin_statuses_and_is_evaluated_again()
    {
        let (mut store, dir) = temp_store("reported-outcomes");
        let mut twin = TwinRecord::default();
        twin.configurations
            .insert("ring-a".into(), serde_json::json!({ "status": "Applied" }));
        store
            .transaction(|tx| {
                tx.clear_counter(EVALUATIONS_PENDING)?;
                tx.put_twin(&IdentityKey::device("d1"), &twin)?;
                tx.put_twin(&IdentityKey::module("d1", "$edgeAgent"), &twin)
            })
            .unwrap();
        store
            .conn
            .execute_batch("ALTER TABLE targeting DROP COLUMN reported")
            .unwrap();
        drop(store);
        let mut older = Store::open(&dir.join("hub.db")).unwrap();
        let (pending, device, agent) = older
            .transaction(|tx| {
                Ok::<_, StoreError>((
                    tx.counter(EVALUATIONS_PENDING)?,
                    tx.twin(&IdentityKey::device("d1"))?.unwrap(),
                    tx.twin(&IdentityKey::module("d1", "$edgeAgent"))?.unwrap(),
                ))
            })
            .unwrap();
        assert_eq!(pending, 1, "evaluated again at start");
        assert!(device.configurations.is_empty());
        assert_eq!(agent, twin, "module twins are left as they are");
        assert!(has_column(&older.conn, "targeting", "reported").unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_database_from_before_the_message_log_read_the_events_logs_them_in_enqueued_order() {
        let (store, dir) = temp_store("logged-before");
        store
            .conn
            .execute_batch(
                "DROP TABLE events; DROP TABLE events_pruned;
                 CREATE TABLE events (
                    partition INTEGER NOT NULL, sequence INTEGER NOT NULL,
                    offset INTEGER NOT NULL, enqueued_ms INTEGER NOT NULL,
                    device_id TEXT NOT NULL, module_id TEXT, properties TEXT NOT NULL,
                    body BLOB NOT NULL, PRIMARY KEY (partition, sequence)) WITHOUT ROWID;
                 CREATE TABLE events_pruned (
                    partition INTEGER PRIMARY KEY, sequence INTEGER NOT NULL,
                    offset INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                    enqueued_ms INTEGER NOT NULL);
                 INSERT INTO events VALUES (2, 0, 0, 3000, 'late', NULL, '[]', x'33');
                 INSERT INTO events VALUES (1, 0, 0, 1000, 'early', NULL, '[]', x'31');
                 INSERT INTO events VALUES (1, 1, 4, 2000, 'early', NULL, '[]', x'32');",
            )
            .unwrap();
        drop(store);
        let mut reopened = Store::open(&dir.join("hub.db")).unwrap();
        let (logged, next) = reopened
            .transaction(|tx| {
                let logged: Vec<(i64, Vec<u8>)> = tx
                    .logged_events(0, None, |_| true, |_| false)?
                    .into_iter()
                    .map(|event| (event.logged, event.body))
                    .collect();
                let next = tx.append_event(crate::events::Event {
                    partition: 0,
                    sequence: 0,
                    offset: 0,
                    enqueued_ms: 4000,
                    device_id: "new".into(),
                    module_id: None,
                    properties: Vec::new(),
                    body: Vec::new(),
                    logged: 0,
                })?;
                Ok::<_, StoreError>((logged, next.logged))
            })
            .unwrap();
        assert_eq!(
            logged,
            [(1, b"1".to_vec()), (2, b"2".to_vec()), (3, b"3".to_vec())]
        );
        assert_eq!(next, 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_database_from_before_socket_records_keeps_the_sockets_its_hub_served_and_no_more() {
        let (mut store, dir) = temp_store("socket-records");
        let edge = Device {
            capabilities: Some(edgetwin_wire::rest::DeviceCapabilities { iot_edge: true }),
            ..Device::default()
        };
        let module = |device_id: &str, module_id: &str| Module {
            device_id: device_id.into(),
            module_id: module_id.into(),
            ..Module::default()
        };
        store
            .transaction(|tx| {
                for id in ["with-module", "system-only", "configured"] {
                    tx.put_device(&Device {
                        device_id: id.into(),
                        ..edge.clone()
                    })?;
                    tx.put_module(&module(id, "$edgeAgent"))?;
                }
                tx.put_device(&Device {
                    device_id: "leaf".into(),
                    ..Device::default()
                })?;
                tx.put_module(&module("leaf", "m"))?;
                tx.put_module(&module("with-module", "m"))?;
                let mut agent = TwinRecord::default();
                agent
                    .desired
                    .insert("modules".into(), serde_json::json!({}));
                tx.put_twin(&IdentityKey::module("configured", "$edgeAgent"), &agent)
            })
            .unwrap();
        store
            .conn
            .execute_batch("DROP TABLE workload_sockets")
            .unwrap();
        drop(store);
        let mut reopened = Store::open(&dir.join("hub.db")).unwrap();
        let recorded = reopened
            .transaction(|tx| tx.workload_socket_devices())
            .unwrap();
        assert_eq!(recorded, ["configured", "with-module"]);
        reopened
            .transaction(|tx| {
                tx.want_workload_socket("leaf")?;
                tx.delete_device("with-module")
            })
            .unwrap();
        drop(reopened);
        let again = Store::open(&dir.join("hub.db"))
            .unwrap()
            .transaction(|tx| tx.workload_socket_devices());
        assert_eq!(
            again.unwrap(),
            ["configured", "leaf"],
            "recorded once, forgotten with the device"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_database_from_before_applied_content_gets_the_table_and_a_device_keeps_one_row_until_deleted(
    ) {
        let (store, dir) = temp_store("applied-content");
        store
            .conn
            .execute_batch("DROP TABLE applied_content")
            .unwrap();
        drop(store);
        let mut older = Store::open(&dir.join("hub.db")).unwrap();
        let content = |v: i64| {
            serde_json::json!({ "m": { "properties.desired": { "v": v } } })
                .as_object()
                .cloned()
                .unwrap()
        };
        let (replaced, deleted) = older
            .transaction(|tx| {
                tx.put_applied_content("gw", &content(1))?;
                tx.put_applied_content("gw", &content(2))?;
                let replaced = tx.applied_content("gw")?;
                tx.delete_device("gw")?;
                Ok::<_, StoreError>((replaced, tx.applied_content("gw")?))
            })
            .unwrap();
        assert_eq!(replaced, Some(content(2)), "replaced on each apply");
        assert_eq!(deleted, None, "deleted with the device");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn device_counts_count_devices_not_modules_and_only_enabled_ones_as_enabled() {
        let (mut store, dir) = temp_store("counts");
        let device = |id: &str, status: Option<&str>| Device {
            device_id: id.into(),
            status: status.map(str::to_owned),
            ..Device::default()
        };
        let counts = store
            .transaction(|tx| {
                tx.put_device(&device("a", Some("enabled")))?;
                tx.put_device(&device("b", Some("disabled")))?;
                tx.put_device(&device("c", None))?;
                tx.put_module(&Module {
                    device_id: "a".into(),
                    module_id: "m".into(),
                    ..Module::default()
                })?;
                tx.device_counts()
            })
            .unwrap();
        assert_eq!(counts, (3, 1));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_reader_sees_each_commit_and_cannot_write() {
        let (mut store, dir) = temp_store("readers");
        let readers = Readers::open(&dir.join("hub.db"), 2).unwrap();
        let key = IdentityKey::device("d1");
        let read = || readers.read(|tx| tx.twin(&key)).unwrap();
        assert_eq!(read(), None);
        store
            .transaction(|tx| tx.put_twin(&key, &TwinRecord::default()))
            .unwrap();
        assert_eq!(read(), Some(TwinRecord::default()));
        let write =
            readers.read(|tx| tx.put_twin(&IdentityKey::device("d2"), &TwinRecord::default()));
        assert!(write.is_err(), "a read-only connection refuses writes");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn deleting_a_device_removes_its_module_sessions_but_not_a_device_whose_id_shares_the_prefix() {
        let (mut store, dir) = temp_store("sessions");
        store
            .transaction(|tx| {
                tx.put_session("d_1/m", &[filter("a")])?;
                tx.put_session("dx1/m", &[filter("b")])?;
                tx.delete_device("d_1")
            })
            .unwrap();
        let (gone, kept) = store
            .transaction(|tx| Ok::<_, StoreError>((tx.session("d_1/m")?, tx.session("dx1/m")?)))
            .unwrap();
        assert_eq!(gone, None);
        assert_eq!(kept, Some(vec![filter("b")]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn filter(f: &str) -> SessionFilter {
        SessionFilter {
            filter: f.into(),
            qos: 0,
        }
    }

    #[test]
    fn sessions_stored_before_the_qos_was_kept_read_as_qos_1() {
        let old: Vec<SessionFilter> =
            serde_json::from_str(r#"["$iothub/twin/res/#",{"filter":"x","qos":0}]"#).unwrap();
        assert_eq!(old[0].qos, 1);
        assert_eq!(old[1], filter("x"));
    }
}
