//! The SQLite backend of [`Store`]: one file, one node.
//!
//! It owns the SQL, the migrations in `migrations/sqlite/`, the connections (one writer, a
//! few readers, all in WAL mode) and an in-memory cache of sessions and user versions that
//! keeps the poll hot path off the database. Pushes are committed in groups: the pushes that
//! queue while the writer is busy are applied next in one transaction (at most
//! [`GROUP_PUSHES_MAX`] pushes and [`GROUP_MUTATIONS_MAX`] mutations), each in a savepoint
//! of its own, so they share one fsync and a failing one takes nothing of the others along. The cache is safe only because this process is
//! the file's sole server: [`SqliteStore::open`] takes an exclusive lock on `<path>.lock`, and
//! every write of the server goes through the one writer, which raises the cached version just
//! before it commits (so the cache is never behind the database).
//!
//! One other process may write while a server runs: `sinkron import`, which opens the file
//! with [`SqliteStore::open_beside_server`] (no lock) and commits short batches through the
//! same merge. The server notices another process's commits by `PRAGMA data_version` on its
//! writer, looked at every [`WATCH_PERIOD`], and then raises every cached version to the
//! database's; a pull raises its user's cached version to what it read, so a cursor it hands
//! out is never refused as ahead of the user. Until the server notices, polls may be answered
//! `304` as before the import: the imported records arrive at the next poll after that.
//!
//! It decides nothing of a push or a page: it reads the rows [`super::plan`] asks for and
//! writes what it returns. It must not validate requests or know HTTP; blocking calls run on
//! tokio's blocking pool, never on the async workers.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use sinkron_core::Change;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::plan::{PageLimit, PageRows, PageStart, Planner, Stored, UserState};
use super::{
    copy_err, restored_floor, subject_username, take_group, ClientMark, Held, OpenError, Page,
    PushBatch, PushJob, PushOutcome, SessionInfo, Store, StoreError, Usage, UserAccount, UserId,
};

/// The schema, in order. Never edit an applied file: add the next number.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "client_stamp_max",
        include_str!("../../migrations/sqlite/0002_client_stamp_max.sql"),
    ),
    (
        3,
        "user_subject",
        include_str!("../../migrations/sqlite/0003_user_subject.sql"),
    ),
    (
        4,
        "version_floor",
        include_str!("../../migrations/sqlite/0004_version_floor.sql"),
    ),
    (
        5,
        "session_last_used",
        include_str!("../../migrations/sqlite/0005_session_last_used.sql"),
    ),
    (
        6,
        "user_usage",
        include_str!("../../migrations/sqlite/0006_user_usage.sql"),
    ),
    (
        7,
        "erasures",
        include_str!("../../migrations/sqlite/0007_erasures.sql"),
    ),
    (
        8,
        "erasure_mark",
        include_str!("../../migrations/sqlite/0008_erasure_mark.sql"),
    ),
    (
        9,
        "ending_sessions",
        include_str!("../../migrations/sqlite/0009_ending_sessions.sql"),
    ),
    (
        11,
        "field_stamps",
        include_str!("../../migrations/sqlite/0011_field_stamps.sql"),
    ),
    (
        12,
        "cap_reads",
        include_str!("../../migrations/sqlite/0012_cap_reads.sql"),
    ),
];

/// Most pushes one group commit takes, and most mutations (a group takes its first push
/// whatever its size): a flood of pushes is committed in bounded transactions, one after the
/// other, rather than in one that grows with the queue.
const GROUP_PUSHES_MAX: usize = 256;
const GROUP_MUTATIONS_MAX: usize = 2_000;

/// Read connections; WAL lets them read while the writer writes.
const READERS: usize = 4;
/// How long a connection waits on a lock held by another before giving up.
const BUSY_TIMEOUT_MS: u64 = 5_000;
/// Past this many entries a cache map is dropped and refilled on demand.
const CACHE_ENTRIES_MAX: usize = 100_000;
/// How often a server looks for commits made by another process (`sinkron import`).
pub const WATCH_PERIOD: Duration = Duration::from_millis(200);

/// Sessions and versions known to be current. See the module doc for why this is safe.
#[derive(Default)]
struct Cache {
    /// Token hash → the session (its `version` unused: [`Cache::versions`] has it).
    tokens: HashMap<[u8; 32], SessionInfo>,
    /// User id → version; only ever raised.
    versions: HashMap<UserId, u64>,
    /// A site user's subject → user id; never changes once made.
    subjects: HashMap<Arc<str>, UserId>,
    /// Counts revocations, so a token read from the database before a concurrent revoke is
    /// not put back into the cache after the revoke evicted it.
    revocations: u64,
}

impl Cache {
    /// Raises a user's cached version; returns the highest known. A full map takes no new
    /// users (their polls read the database) rather than forget a version raised for a
    /// commit in progress, which could leave the cache behind the database.
    fn raise_version(&mut self, user_id: UserId, version: u64) -> u64 {
        if self.versions.len() >= CACHE_ENTRIES_MAX && !self.versions.contains_key(&user_id) {
            return version;
        }
        let slot = self.versions.entry(user_id).or_insert(version);
        *slot = (*slot).max(version);
        *slot
    }
}

/// Idle reader connections; a permit guarantees one is there.
struct Readers {
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

/// A reader connection on loan to one blocking task. Dropping it (even when the task
/// panicked, or when the request that started it was dropped) returns the connection before
/// the permit, so a permit always finds a connection.
struct Lease {
    conn: Option<Connection>,
    idle: Arc<Mutex<Vec<Connection>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            lock(&self.idle).push(conn);
        }
    }
}

pub struct SqliteStore {
    writer: Arc<tokio::sync::Mutex<Connection>>,
    /// Pushes not yet taken by a group commit.
    pushes: Arc<Mutex<VecDeque<PushJob>>>,
    readers: Readers,
    cache: Arc<Mutex<Cache>>,
    /// Held for the store's lifetime: the exclusive lock on `<path>.lock` (none for
    /// [`SqliteStore::open_beside_server`]).
    _lock: Option<File>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked: every update is one step.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqliteStore {
    /// Opens the file (creating it if missing), locks it against other servers, applies any
    /// pending migration and opens the reader connections.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Self::open_as(path, true)
    }

    /// Opens the file like [`SqliteStore::open`] but takes no lock, so it works beside a
    /// running server, which notices this store's commits (see the module doc). For
    /// `sinkron import` and `export`: it must not serve requests, as its cache does not
    /// follow the server's writes.
    pub fn open_beside_server(path: &Path) -> Result<Self, OpenError> {
        Self::open_as(path, false)
    }

    fn open_as(path: &Path, server: bool) -> Result<Self, OpenError> {
        let shown = path.display().to_string();
        let open_err = |reason: String| OpenError::Open {
            path: shown.clone(),
            reason,
        };

        let lock_file = if server {
            let mut lock_path = path.as_os_str().to_owned();
            lock_path.push(".lock");
            let lock_file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| open_err(format!("cannot create lock file: {e}")))?;
            match lock_file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(OpenError::Locked {
                        path: shown.clone(),
                        lock: Path::new(&lock_path).display().to_string(),
                    })
                }
                Err(TryLockError::Error(e)) => return Err(open_err(format!("cannot lock: {e}"))),
            }
            Some(lock_file)
        } else {
            None
        };

        let mut writer = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        configure(&writer).map_err(|e| open_err(e.to_string()))?;
        migrate(&mut writer).map_err(|e| open_err(e.to_string()))?;
        let seen = data_version(&writer).map_err(|e| open_err(e.to_string()))?;

        let mut idle = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| open_err(e.to_string()))?;
            conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
                .map_err(|e| open_err(e.to_string()))?;
            idle.push(conn);
        }

        let store = Self {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            pushes: Arc::new(Mutex::new(VecDeque::new())),
            readers: Readers {
                idle: Arc::new(Mutex::new(idle)),
                permits: Arc::new(Semaphore::new(READERS)),
            },
            cache: Arc::new(Mutex::new(Cache::default())),
            _lock: lock_file,
        };
        if server {
            let (writer, cache) = (Arc::downgrade(&store.writer), Arc::downgrade(&store.cache));
            std::thread::Builder::new()
                .name("sqlite-watch".into())
                .spawn(move || watch_other_writers(&writer, &cache, seen))
                .map_err(|e| open_err(format!("cannot start a thread: {e}")))?;
        }
        Ok(store)
    }

    /// Runs `f` on an idle reader connection, off the async workers.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("store closed".into()))?;
        let conn = lock(&self.readers.idle)
            .pop()
            .ok_or_else(|| StoreError::Other("no idle reader despite a permit".into()))?;
        let mut lease = Lease {
            conn: Some(conn),
            idle: self.readers.idle.clone(),
            _permit: permit,
        };
        tokio::task::spawn_blocking(move || match lease.conn.as_mut() {
            Some(conn) => f(conn),
            None => Err(StoreError::Other("lease without a connection".into())),
        })
        .await
        .map_err(|e| StoreError::Other(format!("reader task failed: {e}")))?
    }

    /// Runs `f` on the one writer connection, off the async workers. `f` also gets the cache,
    /// to update it after its commit while still the only writer.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Mutex<Cache>) -> Result<T, StoreError> + Send + 'static,
    {
        let mut conn = self.writer.clone().lock_owned().await;
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || f(&mut conn, &cache))
            .await
            .map_err(|e| StoreError::Other(format!("writer task failed: {e}")))?
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // journal_mode answers with a row, so it cannot go through execute_batch. It is also the
    // first statement that reads the file, so a file that is not a database fails here.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "cannot switch to WAL mode (journal_mode is {mode})"
        )));
    }
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    // FULL: an acknowledged push survives power loss, not just a crash of the process.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT    NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let newest: Option<i64> =
        conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if newest.unwrap_or(0) > known {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {} is newer than this sinkron knows ({known})",
            newest.unwrap_or(0)
        )));
    }
    for &(version, name, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !applied {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, now_ms_i64()],
            )?;
            tracing::info!(version, name, "applied migration");
        }
        tx.commit()?;
    }
    Ok(())
}

fn now_ms_i64() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn store_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict,
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Other(e.to_string()),
    }
}

/// Integers the protocol keeps as `u64` are stored as SQLite's `i64`; callers guarantee they
/// fit (ids are validated, timestamps clamped), so a failure here is a bug worth reporting.
fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Other(format!("{what} {v} does not fit in i64")))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_usize(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

/// Reads a page in the caller's transaction, so the version and the rows are one snapshot.
fn read_page(
    conn: &Connection,
    user_id: UserId,
    since: Option<u64>,
    limit: PageLimit,
) -> Result<Page, StoreError> {
    let (version, horizon): (i64, i64) = conn
        .prepare_cached("SELECT version, horizon FROM users WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([user_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(store_err)?
        .ok_or(StoreError::NotFound)?;
    let version = to_u64(version);
    let start = PageStart::new(since, to_u64(horizon), version);
    let limit_plus = i64::try_from(limit.changes.saturating_add(1)).unwrap_or(i64::MAX);
    let map_row = |r: &rusqlite::Row<'_>| {
        Ok(Change {
            collection: r.get(0)?,
            key: r.get(1)?,
            value: r.get(2)?,
            updated_at: to_u64(r.get(3)?),
            client_id: r.get(4)?,
            version: to_u64(r.get(5)?),
        })
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT collection, key, value, updated_at, client_id, version FROM records
             WHERE user_id = ?1 AND version > ?2 ORDER BY version LIMIT ?3",
        )
        .map_err(store_err)?;
    let rows = stmt
        .query_map(
            params![user_id, to_i64(start.after, "cursor")?, limit_plus],
            map_row,
        )
        .map_err(store_err)?;
    let mut page = PageRows::new(limit);
    for row in rows {
        if !page.take(row.map_err(store_err)?) {
            break;
        }
    }
    Ok(page.page(version, start))
}

/// Applies one push inside the caller's transaction (a savepoint of a group commit): reads
/// what the [`Planner`] asks for, then writes its [`Plan`](super::plan::Plan).
fn apply_push(
    tx: &Connection,
    user_id: UserId,
    batch: &PushBatch<'_>,
) -> Result<PushOutcome, StoreError> {
    let user = tx
        .prepare_cached("SELECT version, records, bytes, writes_after FROM users WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([user_id], |r| {
                Ok(UserState {
                    version: to_u64(r.get(0)?),
                    usage: Usage {
                        records: r.get(1)?,
                        bytes: r.get(2)?,
                    },
                    writes_after: to_u64(r.get(3)?),
                })
            })
            .optional()
        })
        .map_err(store_err)?
        .ok_or(StoreError::NotFound)?;
    let mark = tx
        .prepare_cached("SELECT ack, stamp_max FROM clients WHERE user_id = ?1 AND client_id = ?2")
        .and_then(|mut s| {
            s.query_row(params![user_id, batch.client_id], |r| {
                Ok(ClientMark {
                    ack: to_u64(r.get(0)?),
                    stamp_max: r.get::<_, Option<i64>>(1)?.map(to_u64),
                })
            })
            .optional()
        })
        .map_err(store_err)?
        .unwrap_or_default();
    let planner = Planner::new(*batch, user, mark)?;

    let mut stored = Vec::with_capacity(planner.keys().len());
    if !planner.keys().is_empty() {
        // The value and stamps only of a collection merged per field (?4).
        let mut stmt = tx
            .prepare_cached(
                "SELECT updated_at, client_id, LENGTH(CAST(value AS BLOB)),
                        CASE WHEN ?4 THEN value END, CASE WHEN ?4 THEN stamps END
                 FROM records WHERE user_id = ?1 AND collection = ?2 AND key = ?3",
            )
            .map_err(store_err)?;
        for (collection, key) in planner.keys() {
            let per_field = batch.merge_policy(collection).is_some();
            let row = stmt
                .query_row(params![user_id, collection, key, per_field], |r| {
                    Ok(Stored {
                        updated_at: to_u64(r.get(0)?),
                        client_id: r.get(1)?,
                        bytes: r.get::<_, Option<i64>>(2)?.map(to_usize),
                        value: r.get(3)?,
                        stamps: r.get(4)?,
                    })
                })
                .optional()
                .map_err(store_err)?;
            stored.push(row);
        }
    }
    let mut merge = planner.merge(stored)?;
    for cap in merge.caps() {
        let (mut live, total) = live_count(tx, user_id, &cap.collection)?;
        if total != merge.records_before() {
            // Counts that do not add up to the user's records: kept by a node older than
            // 0012 during an upgrade, or edited by hand. Count again.
            live = recount(tx, user_id, &cap.collection)?;
        }
        let wanted = merge.needed(cap, live);
        let mut oldest = oldest_live(tx, user_id, &cap.collection, wanted)?;
        // Fewer than the count promised: count again rather than evict by a wrong number.
        if i64::try_from(oldest.len()).unwrap_or(i64::MAX) < wanted {
            live = recount(tx, user_id, &cap.collection)?;
            oldest = oldest_live(tx, user_id, &cap.collection, merge.needed(cap, live))?;
        }
        merge.evict(cap, live, oldest);
    }
    let plan = merge.finish()?;

    let now = to_i64(batch.now_ms, "server time")?;
    if !plan.rows.is_empty() {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO records
                     (user_id, collection, key, value, updated_at, client_id, version, stored_at,
                      stamps)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (user_id, collection, key) DO UPDATE SET
                     value = excluded.value, updated_at = excluded.updated_at,
                     client_id = excluded.client_id, version = excluded.version,
                     stored_at = excluded.stored_at, stamps = excluded.stamps",
            )
            .map_err(store_err)?;
        for row in &plan.rows {
            stmt.execute(params![
                user_id,
                row.collection,
                row.key,
                row.value,
                to_i64(row.updated_at, "updatedAt")?,
                row.client_id,
                to_i64(row.version, "version")?,
                now,
                row.stamps,
            ])
            .map_err(store_err)?;
        }
        let version = to_i64(plan.version, "version")?;
        let usage = plan.usage;
        tx.prepare_cached(
            "UPDATE users SET version = ?2, records = records + ?3, bytes = bytes + ?4
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![user_id, version, usage.records, usage.bytes]))
        .map_err(store_err)?;
    }
    for &(collection, added) in &plan.counts {
        tx.prepare_cached(
            "INSERT INTO collection_counts (user_id, collection, live) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id, collection) DO UPDATE SET live = live + excluded.live",
        )
        .and_then(|mut s| s.execute(params![user_id, collection, added]))
        .map_err(store_err)?;
    }
    if let Some(mark) = plan.mark {
        let stamp_max = mark.stamp_max.map(|s| to_i64(s, "updatedAt")).transpose()?;
        let ack = to_i64(mark.ack, "ack")?;
        tx.prepare_cached(
            "INSERT INTO clients (user_id, client_id, ack, stamp_max) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id, client_id) DO UPDATE SET
                 ack = excluded.ack, stamp_max = excluded.stamp_max",
        )
        .and_then(|mut s| s.execute(params![user_id, batch.client_id, ack, stamp_max]))
        .map_err(store_err)?;
    }
    let page = match batch.since {
        Some(since) => Some(read_page(tx, user_id, Some(since), batch.limit)?),
        None => None,
    };
    Ok(plan.outcome(page))
}

/// How many records of `collection` hold a value, and of all the user's collections
/// (`collection_counts`, 0012).
fn live_count(
    tx: &Connection,
    user_id: UserId,
    collection: &str,
) -> Result<(i64, i64), StoreError> {
    tx.prepare_cached(
        "SELECT COALESCE(SUM(CASE WHEN collection = ?2 THEN live END), 0), COALESCE(SUM(live), 0)
         FROM collection_counts WHERE user_id = ?1",
    )
    .and_then(|mut s| s.query_row(params![user_id, collection], |r| Ok((r.get(0)?, r.get(1)?))))
    .map_err(store_err)
}

/// Counts the records holding a value in each of the user's collections again, keeps those
/// numbers and answers `collection`'s.
fn recount(tx: &Connection, user_id: UserId, collection: &str) -> Result<i64, StoreError> {
    for sql in [
        "DELETE FROM collection_counts WHERE user_id = ?1",
        "INSERT INTO collection_counts (user_id, collection, live)
         SELECT user_id, collection, COUNT(*) FROM records
         WHERE user_id = ?1 AND value IS NOT NULL GROUP BY collection",
    ] {
        tx.prepare_cached(sql)
            .and_then(|mut s| s.execute([user_id]))
            .map_err(store_err)?;
    }
    let (live, total) = live_count(tx, user_id, collection)?;
    tracing::warn!(
        user_id,
        total,
        "a user's collection counts were wrong: counted again"
    );
    Ok(live)
}

/// The oldest `n` records of `collection` holding a value, in a cap's order
/// (`records_live_age`, 0012).
fn oldest_live(
    tx: &Connection,
    user_id: UserId,
    collection: &str,
    n: i64,
) -> Result<Vec<Held>, StoreError> {
    if n <= 0 {
        return Ok(Vec::new());
    }
    tx.prepare_cached(
        "SELECT key, updated_at, client_id, LENGTH(CAST(value AS BLOB))
         FROM records INDEXED BY records_live_age
         WHERE user_id = ?1 AND collection = ?2 AND value IS NOT NULL
         ORDER BY updated_at, client_id, key LIMIT ?3",
    )
    .and_then(|mut s| {
        s.query_map(params![user_id, collection, n], |r| {
            Ok(Held {
                key: r.get(0)?,
                updated_at: to_u64(r.get(1)?),
                client_id: r.get(2)?,
                bytes: to_usize(r.get(3)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .map_err(store_err)
}

/// The id and version of the site's user with this subject.
fn find_subject(conn: &Connection, subject: &str) -> Result<Option<(i64, i64)>, StoreError> {
    conn.prepare_cached("SELECT id, version FROM users WHERE subject = ?1")
        .and_then(|mut s| {
            s.query_row([subject], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(store_err)
}

/// The collection and key of the user's newest record (by version), if any: its tombstone
/// marks where an erased or deleted user's whole state ends.
fn newest_record(
    conn: &Connection,
    user_id: UserId,
) -> Result<Option<(String, String)>, StoreError> {
    conn.prepare_cached(
        "SELECT collection, key FROM records WHERE user_id = ?1 ORDER BY version DESC LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row([user_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    })
    .map_err(store_err)
}

/// Applies queued pushes in one transaction, each in its own savepoint, then answers each.
fn commit_group(conn: &mut Connection, cache: &Mutex<Cache>, jobs: Vec<PushJob>) {
    let applied = (|| {
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err)?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let savepoint = tx.savepoint().map_err(store_err)?;
            let outcome = apply_push(&savepoint, job.user_id, &job.batch());
            if outcome.is_ok() {
                savepoint.commit().map_err(store_err)?;
            }
            // A failed push's savepoint rolls back when dropped.
            outcomes.push(outcome);
        }
        // The cached versions are raised before the commit makes the rows visible, so the
        // cache is never behind the database: a reader that sees the new rows (and hands out
        // their cursor) always finds that cursor issued, and a 304 (If-None-Match equal to
        // the cached version) is never sent while newer rows exist. A failed commit leaves the
        // cache ahead, which only costs a 200 instead of a 304 until the next push.
        let mut cached = lock(cache);
        for (job, outcome) in jobs.iter().zip(&outcomes) {
            if let Ok(outcome) = outcome {
                cached.raise_version(job.user_id, outcome.version);
            }
        }
        drop(cached);
        tx.commit().map_err(store_err)?;
        Ok::<_, StoreError>(outcomes)
    })();
    match applied {
        Ok(outcomes) => {
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.reply.send(outcome);
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(copy_err(&e)));
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> Result<UserId, StoreError> {
        let (username, password_hash) = (username.to_owned(), password_hash.to_owned());
        let now = to_i64(now_ms, "server time")?;
        self.write(move |conn, _| {
            conn.prepare_cached(
                "INSERT INTO users (username, password_hash, created_at, version, horizon)
                 SELECT ?1, ?2, ?3, value, value FROM meta WHERE key = 'version_floor'",
            )
            .and_then(|mut s| s.insert(params![username, password_hash, now]))
            .map_err(store_err)
        })
        .await
    }

    async fn find_user_by_name(&self, username: &str) -> Result<Option<UserAccount>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT id, username, password_hash FROM users WHERE username = ?1")
                .and_then(|mut s| {
                    s.query_row([username], |r| {
                        Ok(UserAccount {
                            id: r.get(0)?,
                            username: r.get(1)?,
                            password_hash: r.get(2)?,
                        })
                    })
                    .optional()
                })
                .map_err(store_err)
        })
        .await
    }

    async fn create_token(
        &self,
        user_id: UserId,
        token_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let hash = *token_hash;
        let now = to_i64(now_ms, "server time")?;
        self.write(move |conn, _| {
            conn.prepare_cached(
                "INSERT INTO tokens (token_hash, user_id, created_at, last_used_at)
                 VALUES (?1, ?2, ?3, ?3)",
            )
            .and_then(|mut s| s.execute(params![&hash[..], user_id, now]))
            .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    async fn touch_token(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<(), StoreError> {
        let hash = *token_hash;
        let now = to_i64(now_ms, "server time")?;
        self.write(move |conn, cache| {
            conn.prepare_cached("UPDATE tokens SET last_used_at = ?2 WHERE token_hash = ?1")
                .and_then(|mut s| s.execute(params![&hash[..], now]))
                .map_err(store_err)?;
            if let Some(session) = lock(cache).tokens.get_mut(&hash) {
                session.last_used_ms = session.last_used_ms.max(now_ms);
            }
            Ok(())
        })
        .await
    }

    async fn revoke_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        let hash = *token_hash;
        self.write(move |conn, cache| {
            conn.prepare_cached("DELETE FROM tokens WHERE token_hash = ?1")
                .and_then(|mut s| s.execute([&hash[..]]))
                .map_err(store_err)?;
            let mut cache = lock(cache);
            cache.revocations += 1;
            cache.tokens.remove(&hash);
            Ok(())
        })
        .await
    }

    async fn revoke_user_tokens(
        &self,
        user_id: UserId,
        keep: Option<[u8; 32]>,
    ) -> Result<u64, StoreError> {
        self.write(move |conn, cache| {
            let keep_bytes = keep.map(|k| k.to_vec()).unwrap_or_default();
            let ended = conn
                .prepare_cached("DELETE FROM tokens WHERE user_id = ?1 AND token_hash != ?2")
                .and_then(|mut s| s.execute(params![user_id, keep_bytes]))
                .map_err(store_err)?;
            let mut cache = lock(cache);
            cache.revocations += 1;
            cache
                .tokens
                .retain(|hash, s| s.user_id != user_id || Some(*hash) == keep);
            Ok(ended as u64)
        })
        .await
    }

    async fn set_password(&self, user_id: UserId, password_hash: &str) -> Result<(), StoreError> {
        let password_hash = password_hash.to_owned();
        self.write(move |conn, _| {
            conn.prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![user_id, password_hash]))
                .map_err(store_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_user(&self, user_id: UserId, now_ms: u64) -> Result<(), StoreError> {
        let now = to_i64(now_ms, "server time")?;
        self.write(move |conn, cache| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(store_err)?;
            let newest = newest_record(&tx, user_id)?;
            for sql in [
                "DELETE FROM records WHERE user_id = ?1",
                "DELETE FROM collection_counts WHERE user_id = ?1",
                "DELETE FROM clients WHERE user_id = ?1",
            ] {
                tx.prepare_cached(sql)
                    .and_then(|mut s| s.execute([user_id]))
                    .map_err(store_err)?;
            }
            // Above every version a device holds, storing no write (0009).
            let version: i64 = tx
                .prepare_cached(
                    "UPDATE users SET username = 'deleted:' || id, password_hash = '',
                         version = version + 1, horizon = version + 1,
                         writes_after = 9223372036854775807, deleted_at = ?2,
                         records = 0, bytes = 0
                     WHERE id = ?1 RETURNING version",
                )
                .and_then(|mut s| s.query_row(params![user_id, now], |r| r.get(0)))
                .optional()
                .map_err(store_err)?
                .ok_or(StoreError::NotFound)?;
            if let Some((collection, key)) = newest {
                tx.prepare_cached(
                    "INSERT INTO records
                         (user_id, collection, key, value, updated_at, client_id, version,
                          stored_at)
                     VALUES (?1, ?2, ?3, NULL, ?4, '', ?5, ?4)",
                )
                .and_then(|mut s| s.execute(params![user_id, collection, key, now, version]))
                .map_err(store_err)?;
            }
            let mut cache = lock(cache);
            cache.raise_version(user_id, to_u64(version));
            for session in cache.tokens.values_mut() {
                if session.user_id == user_id {
                    session.deleted_at = now_ms;
                }
            }
            drop(cache);
            tx.commit().map_err(store_err)
        })
        .await
    }

    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError> {
        let revocations = {
            let cache = lock(&self.cache);
            if let Some(session) = cache.tokens.get(token_hash) {
                if let Some(&version) = cache.versions.get(&session.user_id) {
                    return Ok(Some(SessionInfo {
                        version,
                        ..session.clone()
                    }));
                }
            }
            cache.revocations
        };
        let hash = *token_hash;
        let row = self
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT u.id, u.username, u.version, t.last_used_at, u.deleted_at
                     FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&hash[..]], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    })
                    .optional()
                })
                .map_err(store_err)
            })
            .await?;
        let Some((user_id, username, version, last_used, deleted_at)) = row else {
            return Ok(None);
        };
        let mut cache = lock(&self.cache);
        let session = SessionInfo {
            user_id,
            username: username.into(),
            version: cache.raise_version(user_id, to_u64(version)),
            last_used_ms: to_u64(last_used),
            deleted_at: to_u64(deleted_at),
        };
        if cache.revocations == revocations {
            if cache.tokens.len() >= CACHE_ENTRIES_MAX {
                cache.tokens.clear();
            }
            cache.tokens.insert(hash, session.clone());
        }
        Ok(Some(session))
    }

    async fn subject_session(&self, subject: &str, now_ms: u64) -> Result<SessionInfo, StoreError> {
        let cached = {
            let cache = lock(&self.cache);
            cache
                .subjects
                .get(subject)
                .and_then(|id| Some((*id, *cache.versions.get(id)?)))
        };
        let username: Arc<str> = subject.into();
        if let Some((user_id, version)) = cached {
            return Ok(SessionInfo {
                user_id,
                username,
                version,
                last_used_ms: now_ms,
                deleted_at: 0,
            });
        }
        let owned = subject.to_owned();
        let found = self.read(move |conn| find_subject(conn, &owned)).await?;
        let (user_id, version) = match found {
            Some(row) => row,
            None => {
                let owned = subject.to_owned();
                let now = to_i64(now_ms, "server time")?;
                self.write(move |conn, _| {
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(store_err)?;
                    // After an erasure of the subject: above its last version, and deaf to
                    // writes from before it (0007_erasures.sql).
                    let made = tx
                        .prepare_cached(
                            "INSERT INTO users
                             (username, password_hash, created_at, subject, version, horizon,
                              writes_after)
                         SELECT ?1, '', ?2, ?3, MAX(m.value, COALESCE(e.version + 1, 0)),
                                MAX(m.value, COALESCE(e.version + 1, 0)),
                                COALESCE(e.erased_at, 0)
                         FROM meta m LEFT JOIN erasures e ON e.subject = ?3
                         WHERE m.key = 'version_floor'
                         ON CONFLICT DO NOTHING",
                        )
                        .and_then(|mut s| s.execute(params![subject_username(&owned), now, owned]))
                        .map_err(store_err)?;
                    if made == 1 {
                        // Its first version is a tombstone of the erased user's newest
                        // record, so a device's reset ends above what it holds (0008).
                        tx.prepare_cached(
                            "INSERT INTO records
                                 (user_id, collection, key, value, updated_at, client_id,
                                  version, stored_at)
                             SELECT u.id, e.collection, e.key, NULL, e.erased_at, '',
                                    u.version, ?2
                             FROM users u JOIN erasures e ON e.subject = u.subject
                             WHERE u.subject = ?1 AND e.collection IS NOT NULL",
                        )
                        .and_then(|mut s| s.execute(params![owned, now]))
                        .map_err(store_err)?;
                    }
                    let found = find_subject(&tx, &owned)?.ok_or(StoreError::NotFound)?;
                    tx.commit().map_err(store_err)?;
                    Ok(found)
                })
                .await?
            }
        };
        let mut cache = lock(&self.cache);
        let version = cache.raise_version(user_id, to_u64(version));
        if cache.subjects.len() >= CACHE_ENTRIES_MAX {
            cache.subjects.clear();
        }
        cache.subjects.insert(username.clone(), user_id);
        Ok(SessionInfo {
            user_id,
            username,
            version,
            last_used_ms: now_ms,
            deleted_at: 0,
        })
    }

    async fn find_subject(&self, subject: &str) -> Result<Option<UserId>, StoreError> {
        let owned = subject.to_owned();
        let found = self.read(move |conn| find_subject(conn, &owned)).await?;
        Ok(found.map(|(id, _)| id))
    }

    async fn erase_subject(&self, subject: &str, now_ms: u64) -> Result<(), StoreError> {
        let owned = subject.to_owned();
        let now = to_i64(now_ms, "server time")?;
        self.write(move |conn, cache| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(store_err)?;
            let found = find_subject(&tx, &owned)?;
            let version = found.map_or(0, |(_, version)| version);
            let newest = match found {
                Some((user_id, _)) => newest_record(&tx, user_id)?,
                None => None,
            };
            let (collection, key) = newest.unzip();
            tx.prepare_cached(
                "INSERT INTO erasures (subject, version, erased_at, collection, key)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (subject) DO UPDATE SET
                     version = MAX(erasures.version, excluded.version),
                     erased_at = excluded.erased_at,
                     collection = COALESCE(excluded.collection, erasures.collection),
                     key = COALESCE(excluded.key, erasures.key)",
            )
            .and_then(|mut s| s.execute(params![owned, version, now, collection, key]))
            .map_err(store_err)?;
            if let Some((user_id, _)) = found {
                // Records, tokens and client marks go with it (ON DELETE CASCADE).
                tx.prepare_cached("DELETE FROM users WHERE id = ?1")
                    .and_then(|mut s| s.execute([user_id]))
                    .map_err(store_err)?;
            }
            tx.commit().map_err(store_err)?;
            if let Some((user_id, _)) = found {
                let mut cache = lock(cache);
                cache.revocations += 1;
                cache.tokens.retain(|_, s| s.user_id != user_id);
                cache.subjects.retain(|_, user| *user != user_id);
                cache.versions.remove(&user_id);
            }
            Ok(())
        })
        .await
    }

    async fn pull(
        &self,
        user_id: UserId,
        since: Option<u64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let page = self
            .read(move |conn| {
                // A deferred transaction: its first read fixes the WAL snapshot for the rest.
                let tx = conn.transaction().map_err(store_err)?;
                let page = read_page(&tx, user_id, since, limit)?;
                tx.commit().map_err(store_err)?;
                Ok(page)
            })
            .await?;
        // What was read is committed, so this never puts the cache ahead of the database;
        // after another process's commit it keeps the cursor handed out from being refused.
        lock(&self.cache).raise_version(user_id, page.version_seen());
        Ok(page)
    }

    async fn push(&self, user_id: UserId, batch: PushBatch<'_>) -> Result<PushOutcome, StoreError> {
        // The writer needs owned data; a batch is at most 1 MiB, so one copy is fine.
        let (job, answer) = PushJob::new(user_id, &batch);
        lock(&self.pushes).push_back(job);
        // Whoever holds the writer next commits the next group of queued pushes (this one, or
        // one queued earlier: every push starts a task, so none is left in the queue). The
        // commit runs in a task of its own, so a request dropped meanwhile cannot strand it.
        let (writer, pushes, cache) =
            (self.writer.clone(), self.pushes.clone(), self.cache.clone());
        tokio::spawn(async move {
            let mut conn = writer.lock_owned().await;
            let jobs = take_group(&mut lock(&pushes), GROUP_PUSHES_MAX, GROUP_MUTATIONS_MAX);
            if !jobs.is_empty() {
                let _ = tokio::task::spawn_blocking(move || {
                    commit_group(&mut conn, &cache, jobs);
                })
                .await;
            }
        });
        answer.wait().await
    }

    async fn mark_restored(&self, at_least: u64) -> Result<u64, StoreError> {
        let floor = self
            .write(move |conn, _| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(store_err)?;
                let (old, max): (i64, i64) = tx
                    .query_row(
                        "SELECT (SELECT value FROM meta WHERE key = 'version_floor'),
                                (SELECT COALESCE(MAX(version), 0) FROM users)",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(store_err)?;
                let floor = restored_floor(to_u64(old), to_u64(max), at_least);
                let floor_i = to_i64(floor, "version floor")?;
                // v ↦ v − old + floor: order kept, everything at or above the new floor.
                tx.execute(
                    "UPDATE records SET version = MAX(version, ?1) - ?1 + ?2",
                    params![old, floor_i],
                )
                .map_err(store_err)?;
                tx.execute(
                    "UPDATE users SET version = MAX(version, ?1) - ?1 + ?2,
                                      horizon = MAX(horizon, ?1) - ?1 + ?2",
                    params![old, floor_i],
                )
                .map_err(store_err)?;
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'version_floor'",
                    [floor_i],
                )
                .map_err(store_err)?;
                tx.commit().map_err(store_err)?;
                Ok(floor)
            })
            .await?;
        *lock(&self.cache) = Cache::default();
        Ok(floor)
    }

    async fn purge_expired(
        &self,
        used_before_ms: u64,
        _attempts_before_ms: u64,
        deleted_before_ms: u64,
    ) -> Result<u64, StoreError> {
        let before = i64::try_from(used_before_ms).unwrap_or(i64::MAX);
        let deleted_before = i64::try_from(deleted_before_ms).unwrap_or(i64::MAX);
        self.write(move |conn, cache| {
            let ended = conn
                .prepare_cached("DELETE FROM tokens WHERE last_used_at < ?1")
                .and_then(|mut s| s.execute([before]))
                .map_err(store_err)?;
            // Deleted accounts past their last day of answers, sessions and all. Their ids may
            // be used again by SQLite, so nothing of them may stay in the cache.
            let gone = conn
                .prepare_cached(
                    "DELETE FROM users WHERE deleted_at > 0 AND deleted_at < ?1 RETURNING id",
                )
                .and_then(|mut s| {
                    s.query_map([deleted_before], |r| r.get::<_, i64>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(store_err)?;
            if !gone.is_empty() {
                let mut cache = lock(cache);
                cache.revocations += 1;
                for user_id in gone {
                    cache.versions.remove(&user_id);
                    cache.tokens.retain(|_, s| s.user_id != user_id);
                    cache.subjects.retain(|_, user| *user != user_id);
                }
            }
            if ended > 0 {
                let mut cache = lock(cache);
                cache.revocations += 1;
                cache.tokens.retain(|_, s| s.last_used_ms >= used_before_ms);
            }
            Ok(ended as u64)
        })
        .await
    }

    async fn compact_tombstones(&self, stored_before_ms: u64) -> Result<u64, StoreError> {
        let before = i64::try_from(stored_before_ms).unwrap_or(i64::MAX);
        self.write(move |conn, _| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(store_err)?;
            // Each user's newest row stays, tombstone or not: a whole state then always ends
            // at its cursor's version, which is how a client tells what it lacks (gone) from
            // what it holds from a newer answer.
            tx.execute(
                "UPDATE users SET horizon = MAX(horizon, (
                     SELECT MAX(version) FROM records r
                     WHERE r.user_id = users.id AND r.value IS NULL AND r.stored_at <= ?1
                       AND r.version < users.version))
                 WHERE id IN (SELECT r.user_id FROM records r JOIN users u ON u.id = r.user_id
                              WHERE r.value IS NULL AND r.stored_at <= ?1
                                AND r.version < u.version)",
                [before],
            )
            .map_err(store_err)?;
            let deleted = tx
                .execute(
                    "DELETE FROM records WHERE value IS NULL AND stored_at <= ?1
                       AND version < (SELECT version FROM users u WHERE u.id = records.user_id)",
                    [before],
                )
                .map_err(store_err)?;
            tx.commit().map_err(store_err)?;
            Ok(u64::try_from(deleted).unwrap_or(0))
        })
        .await
    }

    async fn site_users(&self) -> Result<Vec<(UserId, String)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id, subject FROM users WHERE subject IS NOT NULL")
                .map_err(store_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(store_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(store_err)
        })
        .await
    }
}

/// Changes with every commit another connection makes to the file (never with this one's).
fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// A server's watch for another process's commits (`sinkron import`), until the store is
/// dropped: when the file's data version moved, every user's cached version is raised to the
/// database's. Raising (never lowering) keeps the rule that the cache is never behind the
/// database once the watch has run, whatever a concurrent reader caches from before.
fn watch_other_writers(
    writer: &Weak<tokio::sync::Mutex<Connection>>,
    cache: &Weak<Mutex<Cache>>,
    mut seen: i64,
) {
    loop {
        std::thread::sleep(WATCH_PERIOD);
        let (Some(writer), Some(cache)) = (writer.upgrade(), cache.upgrade()) else {
            return;
        };
        let conn = writer.blocking_lock();
        let read = data_version(&conn).and_then(|now| {
            if now == seen {
                return Ok(None);
            }
            let versions = conn
                .prepare_cached("SELECT id, version FROM users")?
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some((now, versions)))
        });
        drop(conn);
        match read {
            Ok(None) => {}
            Ok(Some((now, versions))) => {
                let mut cache = lock(&cache);
                for (user_id, version) in versions {
                    cache.raise_version(user_id, to_u64(version));
                }
                seen = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read versions another process wrote"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Quota;
    use sinkron_core::Mutation;

    #[tokio::test]
    async fn sqlite_passes_the_store_conformance_suite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("c.db")).expect("open");
        crate::store::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn reads_dropped_midway_give_their_connection_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("r.db")).expect("open");
        let id = store.create_user("dan", "phc", 1).await.expect("create");
        // A client hanging up drops its request's future while the blocking read runs.
        for _ in 0..READERS * 3 {
            let mut read = store.pull(id, None, 10.into());
            // Poll once, so the blocking read starts, then drop the future.
            std::future::poll_fn(|cx| {
                let _ = read.as_mut().poll(cx);
                std::task::Poll::Ready(())
            })
            .await;
        }
        for _ in 0..READERS * 3 {
            store
                .pull(id, None, 10.into())
                .await
                .expect("a reader is always there");
        }
    }

    #[tokio::test]
    async fn a_failing_push_in_a_group_commit_takes_nothing_of_the_others() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("g.db")).expect("open");
        let id = store.create_user("amy", "phc", 1).await.expect("create");
        let mutations = [Mutation {
            fields: None,
            id: 1,
            collection: "likes".into(),
            key: "k".into(),
            value: Some("{}".into()),
            updated_at: 5,
        }];
        let batch = PushBatch {
            client_id: "c1",
            mutations: &mutations,
            now_ms: 1_000,
            updated_at_max: 61_000,
            since: Some(0),
            limit: 10.into(),
            quota: Quota::UNLIMITED,
            caps: &[],
            merges: &[],
        };
        // Queued together, so committed in one group.
        let (missing, real, again) = tokio::join!(
            store.push(id + 1, batch),
            store.push(id, batch),
            store.push(id, batch)
        );
        assert!(matches!(missing, Err(StoreError::NotFound)));
        let real = real.expect("the real user's push");
        assert_eq!((real.applied, real.version), (1, 1));
        assert_eq!(real.page.expect("page").changes.len(), 1);
        let again = again.expect("the retry");
        assert_eq!(
            (again.applied, again.ack),
            (0, 1),
            "the retry sees the first push"
        );
        let page = store.pull(id, Some(0), 10.into()).await.expect("pull");
        assert_eq!(page.cursor, 1);
    }

    #[tokio::test]
    async fn a_wrong_collection_count_is_counted_again_not_evicted_by() {
        use crate::store::conformance::{
            a_fourth_like_evicts_only_the_oldest, miscounts, three_likes,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("n.db");
        let store = SqliteStore::open(&path).expect("open");
        for n in 0..3 {
            let id = three_likes(&store, &format!("miscounted{n}")).await;
            let miscount = &miscounts(id)[n];
            let count = || {
                Connection::open(&path)
                    .expect("open")
                    .query_row(
                        "SELECT live FROM collection_counts
                         WHERE user_id = ?1 AND collection = 'likes'",
                        [id],
                        |r| r.get::<_, i64>(0),
                    )
                    .expect("a count")
            };
            assert_eq!(count(), 3, "kept by the push");
            Connection::open(&path)
                .expect("open")
                .execute_batch(miscount)
                .expect("set wrong");
            a_fourth_like_evicts_only_the_oldest(&store, id).await;
            assert_eq!(count(), 3, "after {miscount:?}");
        }
    }

    #[tokio::test]
    async fn migration_0012_counts_the_records_already_stored() {
        use crate::store::conformance::three_likes;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("o.db");
        let store = SqliteStore::open(&path).expect("open");
        let id = three_likes(&store, "counted").await;
        let gone = [crate::store::conformance::m(4, "k1", None, 50)];
        store
            .push(id, crate::store::conformance::batch("c", &gone, None))
            .await
            .expect("push");
        drop(store);
        // Back to the schema before 0012, its rows and all.
        Connection::open(&path)
            .expect("open")
            .execute_batch(
                "DROP TABLE collection_counts; DROP INDEX records_live_age;
                 DELETE FROM schema_migrations WHERE version = 12;",
            )
            .expect("undo 0012");
        drop(SqliteStore::open(&path).expect("migrate"));
        let counts: Vec<(String, i64)> = Connection::open(&path)
            .expect("open")
            .prepare("SELECT collection, live FROM collection_counts WHERE user_id = ?1")
            .and_then(|mut s| {
                s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .expect("counts");
        assert_eq!(counts, [("likes".to_owned(), 2)], "the tombstone left out");
    }

    #[test]
    fn migrations_apply_once_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.db");
        drop(SqliteStore::open(&path).expect("first open"));
        drop(SqliteStore::open(&path).expect("second open"));
        let conn = Connection::open(&path).expect("open");
        let applied: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .expect("count");
        assert_eq!(
            applied,
            i64::try_from(MIGRATIONS.len()).expect("few migrations")
        );
    }
}
