//! The PostgreSQL backend of [`Store`]: any number of `sinkron` nodes on one database.
//!
//! It owns the SQL, the migrations in `migrations/postgres/` and a connection pool, of which
//! a few connections are shared by every poll (their one query each is pipelined). It keeps
//! nothing in memory that correctness needs — no session or version cache — so a write or a
//! sign-out on one node is seen by every node at its next request. Two rules make that hold:
//!
//! * **One user's pushes are serialised by the user's row.** A push starts by locking
//!   `users` (`FOR NO KEY UPDATE`), then reads the records it merges with, writes, raises
//!   `users.version` and commits (with the other pushes of its group). Under READ COMMITTED each statement after the lock sees
//!   everything committed before it, so versions are handed out in commit order: a
//!   transaction that commits version `v` committed every version below `v` before it.
//! * **A pull is one statement.** The user's version and horizon and the page of records are
//!   read by a single `SELECT`, so they come from one snapshot: the cursor it returns covers
//!   exactly the rows it returns, and by the rule above no row at or below that cursor can
//!   commit later. (Reading the version and the rows in two READ COMMITTED statements could
//!   pair a cursor with rows from different moments, and a client would skip a change.)
//!
//! Pushes are committed in groups: the pushes queued on a node while its committers are busy
//! ([`GROUPS_IN_FLIGHT`] at a time, each on a pooled connection) are applied next in one
//! transaction — at most [`GROUP_PUSHES_MAX`] of them and [`GROUP_MUTATIONS_MAX`] mutations —
//! with one statement per step for all of them (lock the users' rows in id order, read the
//! stored records, read the capped collections, write), so a group costs about as many round
//! trips and one WAL flush as a single push did. Pushes of one user in a group apply one after
//! the other in arrival order, in waves (the first push of each user, then the second, …),
//! each seeing the ones before it. A push the plan refuses writes nothing and fails alone; a
//! statement that fails rolls the group back and its pushes are applied again one at a time.
//! A push is answered once its group has committed, and the group's new versions are then
//! announced (`NOTIFY`, never inside the push transaction: PostgreSQL serialises the commits
//! of transactions that notify).
//!
//! Compaction locks the users it touches before their records, in id order, like a group of
//! pushes does, so the two never deadlock.
//!
//! It decides nothing of a push or a page: it reads the rows [`super::plan`] asks for and
//! writes what it returns. It must not validate requests or know HTTP.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
    Transaction,
};
use futures_util::TryStreamExt;
use sinkron_core::Change;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::pg_cache::{self, Cache, Listening};
use super::plan::{PageLimit, PageRows, PageStart, Plan, Planner, Stored, UserState, WholeCursor};
use super::{
    copy_err, restored_floor, subject_username, take_group, Attempts, Cap, ClientMark, Held,
    OpenError, Page, PushBatch, PushJob, PushOutcome, SessionInfo, Store, StoreError, Usage,
    UserAccount, UserId,
};

/// The schema, in order. Never edit an applied file: add the next number.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "client_stamp_max",
        include_str!("../../migrations/postgres/0002_client_stamp_max.sql"),
    ),
    (
        3,
        "user_subject",
        include_str!("../../migrations/postgres/0003_user_subject.sql"),
    ),
    (
        4,
        "version_floor",
        include_str!("../../migrations/postgres/0004_version_floor.sql"),
    ),
    (
        5,
        "session_last_used",
        include_str!("../../migrations/postgres/0005_session_last_used.sql"),
    ),
    (
        6,
        "user_usage",
        include_str!("../../migrations/postgres/0006_user_usage.sql"),
    ),
    (
        7,
        "erasures",
        include_str!("../../migrations/postgres/0007_erasures.sql"),
    ),
    (
        8,
        "erasure_mark",
        include_str!("../../migrations/postgres/0008_erasure_mark.sql"),
    ),
    (
        9,
        "ending_sessions",
        include_str!("../../migrations/postgres/0009_ending_sessions.sql"),
    ),
    (
        10,
        "notify",
        include_str!("../../migrations/postgres/0010_notify.sql"),
    ),
    (
        11,
        "field_stamps",
        include_str!("../../migrations/postgres/0011_field_stamps.sql"),
    ),
    (
        12,
        "cap_reads",
        include_str!("../../migrations/postgres/0012_cap_reads.sql"),
    ),
];

/// The key of the advisory lock held while migrating ("sinkron" in ASCII).
const MIGRATION_LOCK: i64 = 0x73_69_6e_6b_72_6f_6e;
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a free pooled connection before it is answered 503.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// Users whose tombstones one compaction transaction handles.
const COMPACTION_USERS_MAX: i64 = 1_000;

/// The poll path: token hash → user → version, one indexed lookup each.
const SESSION_SQL: &str = "SELECT u.id, u.username, u.version, t.last_used_at, u.deleted_at
     FROM tokens t
     JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1";

/// A page in one statement, so the version, the horizon and the rows are one snapshot. A
/// place in a whole state (`$2`, the rows after it, of a whole state begun at version `$4`,
/// NULL when unknown: a [`WholeCursor`]) is honoured while the horizon has not passed its
/// start; a cursor (`$5`) when it lies between the horizon and the version; otherwise (or
/// when both are NULL) the page is the whole state from the start, tombstones included: the
/// rule of [`PageStart`], which `read_page` applies to what this returns.
const PAGE_SQL: &str = "SELECT u.version, u.horizon,
            r.collection, r.key, r.value, r.updated_at, r.client_id, r.version
     FROM users u
     CROSS JOIN LATERAL (SELECT CASE
                 WHEN $2::int8 <= u.version
                      AND ($4::int8 IS NULL OR $4::int8 BETWEEN u.horizon AND u.version)
                     THEN $2::int8
                 WHEN $5::int8 >= u.horizon AND $5::int8 <= u.version THEN $5::int8
                 ELSE 0 END AS after) f
     LEFT JOIN LATERAL (
         SELECT r.collection, r.key, r.value, r.updated_at, r.client_id, r.version
         FROM records r
         WHERE r.user_id = u.id
           AND r.version > f.after
         ORDER BY r.version
         LIMIT $3
     ) r ON true
     WHERE u.id = $1";

/// Locks the user's row for the rest of the push and reads the client's ack.
const LOCK_SQL: &str = "SELECT u.version, c.ack, c.stamp_max, u.records, u.bytes, u.writes_after
     FROM users u LEFT JOIN clients c ON c.user_id = u.id AND c.client_id = $2
     WHERE u.id = $1 FOR NO KEY UPDATE OF u";

/// The stored order keys of the records a batch writes to, and their values' sizes, each with
/// its key's place in the arrays (from 1).
const CURRENT_SQL: &str = "SELECT k.i, r.updated_at, r.client_id, octet_length(r.value),
            CASE WHEN k.per_field THEN r.value END, CASE WHEN k.per_field THEN r.stamps END
     FROM records r
     JOIN unnest($2::bytea[], $3::bytea[], $4::bool[])
         WITH ORDINALITY AS k(collection, key, per_field, i)
       ON r.collection = k.collection AND r.key = k.key
     WHERE r.user_id = $1";

/// Every write of a push in one statement: the winning records, the ack, the collections'
/// counts, the version.
const WRITE_SQL: &str = "WITH written AS (
         INSERT INTO records
             (user_id, collection, key, value, updated_at, client_id, version, stored_at,
              stamps)
         SELECT $1, w.collection, w.key, w.value, w.updated_at, w.client_id, w.version, $3,
                w.stamps
         FROM unnest($4::bytea[], $5::bytea[], $6::text[], $7::int8[], $8::int8[], $15::bytea[],
                     $16::text[])
             AS w(collection, key, value, updated_at, version, client_id, stamps)
         ON CONFLICT (user_id, collection, key) DO UPDATE SET
             value = excluded.value, updated_at = excluded.updated_at,
             client_id = excluded.client_id, version = excluded.version,
             stored_at = excluded.stored_at, stamps = excluded.stamps
         RETURNING 1
     ), acked AS (
         INSERT INTO clients (user_id, client_id, ack, stamp_max)
         SELECT $1, $2, $9, $12 WHERE $10::bool
         ON CONFLICT (user_id, client_id) DO UPDATE SET
             ack = excluded.ack, stamp_max = excluded.stamp_max
         RETURNING 1
     ), counted AS (
         INSERT INTO collection_counts (user_id, collection, live)
         SELECT $1, n.collection, n.live FROM unnest($17::bytea[], $18::int8[]) AS n(collection, live)
         ON CONFLICT (user_id, collection) DO UPDATE SET
             live = collection_counts.live + excluded.live
         RETURNING 1
     )
     UPDATE users SET version = $11, records = records + $13, bytes = bytes + $14
     WHERE id = $1 AND cardinality($4::bytea[]) > 0";

/// Most pushes one group commit takes: each adds its statements' rows, and the group holds
/// every one of its users' row locks until it commits.
const GROUP_PUSHES_MAX: usize = 32;
/// Most mutations one group commit takes (a group takes its first push whatever its size).
const GROUP_MUTATIONS_MAX: usize = 2_000;
/// Group commits in flight at once on one node, each on a pooled connection: while one
/// waits for its flush, the next is formed and applied.
const GROUPS_IN_FLIGHT: usize = 2;

/// Locks the rows of a wave's users, in id order (so two groups never deadlock), and reads
/// each push's client's ack. `i` is the push's place in the arrays, from 1.
const GROUP_LOCK_SQL: &str =
    "SELECT p.i, u.version, c.ack, c.stamp_max, u.records, u.bytes, u.writes_after
     FROM unnest($1::int8[], $2::bytea[]) WITH ORDINALITY AS p(user_id, client_id, i)
     JOIN users u ON u.id = p.user_id
     LEFT JOIN clients c ON c.user_id = u.id AND c.client_id = p.client_id
     ORDER BY u.id FOR NO KEY UPDATE OF u";

/// [`CURRENT_SQL`] for every push of a wave: each key with its user.
const GROUP_CURRENT_SQL: &str = "SELECT k.i, r.updated_at, r.client_id, octet_length(r.value),
            CASE WHEN k.per_field THEN r.value END, CASE WHEN k.per_field THEN r.stamps END
     FROM unnest($1::int8[], $2::bytea[], $3::bytea[], $4::bool[])
         WITH ORDINALITY AS k(user_id, collection, key, per_field, i)
     JOIN records r ON r.user_id = k.user_id AND r.collection = k.collection AND r.key = k.key";

/// For each capped collection pushes may take past its cap (user, collection and
/// [`Merge::unread`](super::plan::Merge::unread)), how many of its records hold a value and
/// of all the user's collections (`collection_counts`), and the oldest records the eviction
/// needs, in the cap's order (`records_live_age`, 0012): a row with no record when it needs
/// none. `i` is the place in the arrays, from 1.
const OLDEST_SQL: &str = "SELECT c.i, n.live, n.total, o.key, o.updated_at, o.client_id,
            octet_length(o.value)
     FROM unnest($1::int8[], $2::bytea[], $3::int8[])
         WITH ORDINALITY AS c(user_id, collection, unread, i)
     CROSS JOIN LATERAL (
         SELECT COALESCE(sum(k.live) FILTER (WHERE k.collection = c.collection), 0)::int8
                    AS live,
                COALESCE(sum(k.live), 0)::int8 AS total
         FROM collection_counts k WHERE k.user_id = c.user_id
     ) n
     LEFT JOIN LATERAL (
         SELECT r.key, r.updated_at, r.client_id, r.value FROM records r
         WHERE r.user_id = c.user_id AND r.collection = c.collection AND r.value IS NOT NULL
         ORDER BY r.updated_at, r.client_id, r.key
         LIMIT greatest(n.live - c.unread, 0)
     ) o ON true";

/// Counts the records holding a value in each of a user's collections again (after
/// [`UNCOUNT_SQL`]), and keeps those numbers.
const RECOUNT_SQL: &str = "INSERT INTO collection_counts (user_id, collection, live)
     SELECT $1, collection, count(*) FROM records
     WHERE user_id = $1 AND value IS NOT NULL GROUP BY collection
     ON CONFLICT (user_id, collection) DO UPDATE SET live = excluded.live";
/// Before [`RECOUNT_SQL`]: a collection with no record left counts none.
const UNCOUNT_SQL: &str = "UPDATE collection_counts SET live = 0 WHERE user_id = $1";

/// [`WRITE_SQL`] for every push of a wave: the records, the clients' marks, the collections'
/// counts, the users' versions and usage.
const GROUP_WRITE_SQL: &str = "WITH written AS (
         INSERT INTO records
             (user_id, collection, key, value, updated_at, client_id, version, stored_at,
              stamps)
         SELECT w.user_id, w.collection, w.key, w.value, w.updated_at, w.client_id, w.version,
                w.stored_at, w.stamps
         FROM unnest($1::int8[], $2::bytea[], $3::bytea[], $4::text[], $5::int8[], $6::int8[],
                     $7::bytea[], $8::int8[], $17::text[])
             AS w(user_id, collection, key, value, updated_at, version, client_id, stored_at,
                  stamps)
         ON CONFLICT (user_id, collection, key) DO UPDATE SET
             value = excluded.value, updated_at = excluded.updated_at,
             client_id = excluded.client_id, version = excluded.version,
             stored_at = excluded.stored_at, stamps = excluded.stamps
         RETURNING 1
     ), acked AS (
         INSERT INTO clients (user_id, client_id, ack, stamp_max)
         SELECT a.user_id, a.client_id, a.ack, a.stamp_max
         FROM unnest($9::int8[], $10::bytea[], $11::int8[], $12::int8[])
             AS a(user_id, client_id, ack, stamp_max)
         ON CONFLICT (user_id, client_id) DO UPDATE SET
             ack = excluded.ack, stamp_max = excluded.stamp_max
         RETURNING 1
     ), counted AS (
         INSERT INTO collection_counts (user_id, collection, live)
         SELECT n.user_id, n.collection, n.live
         FROM unnest($18::int8[], $19::bytea[], $20::int8[]) AS n(user_id, collection, live)
         ON CONFLICT (user_id, collection) DO UPDATE SET
             live = collection_counts.live + excluded.live
         RETURNING 1
     )
     UPDATE users u SET version = v.version, records = u.records + v.records,
                        bytes = u.bytes + v.bytes
     FROM unnest($13::int8[], $14::int8[], $15::int8[], $16::int8[])
         AS v(id, version, records, bytes)
     WHERE u.id = v.id";

/// Group commits made, and those applied again one push at a time.
#[derive(Default)]
struct GroupCounts {
    made: AtomicU64,
    one_by_one: AtomicU64,
}

pub struct PostgresStore {
    pool: Pool,
    /// Pushes not yet taken by a group commit, in arrival order.
    pushes: Arc<Mutex<VecDeque<PushJob>>>,
    /// One permit per group commit in flight ([`GROUPS_IN_FLIGHT`]).
    committers: Arc<tokio::sync::Semaphore>,
    /// Counts of group commits, for the tests.
    groups: Arc<GroupCounts>,
    /// Connections shared by every poll: their queries are pipelined (many requests in one
    /// write, many answers in one read), which costs far fewer wake-ups than a connection per
    /// request. A broken one is swapped for a fresh one from the pool.
    polls: Vec<std::sync::RwLock<Arc<Object>>>,
    next_poll: std::sync::atomic::AtomicUsize,
    /// Sessions and versions, kept true by every node's notifications ([`pg_cache`]).
    cache: Arc<Cache>,
    /// The listener of a node serving devices (none for a command).
    _listening: Option<Listening>,
}

/// A URL without its password, fit for logs and error messages.
fn shown(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

impl PostgresStore {
    /// Connects (a pool of at most `pool_size` connections), checks the database answers and
    /// applies any pending migration, for a node serving devices: it remembers sessions and
    /// versions, kept true by a listener ([`Cache`]) whose connection holds the serving lock.
    pub async fn open(url: &str, pool_size: usize) -> Result<Self, OpenError> {
        Self::open_as(url, pool_size, true).await
    }

    /// [`PostgresStore::open`] for a command that serves no device (`import`, `export`,
    /// `restored`): no listener, no serving lock; every read goes to the database.
    pub async fn open_for_command(url: &str, pool_size: usize) -> Result<Self, OpenError> {
        Self::open_as(url, pool_size, false).await
    }

    async fn open_as(url: &str, pool_size: usize, serves: bool) -> Result<Self, OpenError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            OpenError::InvalidUrl(format!("invalid PostgreSQL URL: {}", reason(&e)))
        })?;
        if config.get_user().is_none() {
            return Err(OpenError::InvalidUrl(
                "invalid PostgreSQL URL: it names no user (postgres://USER@HOST/DB)".into(),
            ));
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("sinkron");
        let shown = shown(&config);
        let fail = |reason: String| OpenError::Open {
            path: shown.clone(),
            reason,
        };
        let listen_config = config.clone();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // No query to check a connection before each use: the poll path is one round
                // trip. A broken connection fails its request with 503 and is dropped.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| fail(pool_reason(&e)))?;
        migrate(&mut client)
            .await
            .map_err(|e| fail(e.to_string()))?;
        drop(client);
        let (cache, listening) = if serves {
            let (cache, listening) = Cache::start(listen_config);
            (cache, Some(listening))
        } else {
            (Cache::dark(), None)
        };
        // A quarter of the pool, at most one per core, serves polls; the rest serves everything
        // else. A pool below 4 has none: polls then take pooled connections like the rest.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut polls = Vec::new();
        for _ in 0..(pool_size / 4).min(cores) {
            let client = pool.get().await.map_err(|e| fail(pool_reason(&e)))?;
            polls.push(std::sync::RwLock::new(Arc::new(client)));
        }
        Ok(Self {
            pool,
            pushes: Arc::default(),
            committers: Arc::new(tokio::sync::Semaphore::new(GROUPS_IN_FLIGHT)),
            groups: Arc::default(),
            polls,
            next_poll: std::sync::atomic::AtomicUsize::new(0),
            cache,
            _listening: listening,
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(pool_reason(&e)))
    }

    /// A token's session from the database: [`SESSION_SQL`] on a shared poll connection.
    async fn read_session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError> {
        if self.polls.is_empty() {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(SESSION_SQL)
                .await
                .map_err(store_err)?;
            let row = client
                .query_opt(&stmt, &[&&token_hash[..]])
                .await
                .map_err(store_err)?;
            return Ok(row.map(|r| session_of(&r)));
        }
        let slot = &self.polls[self
            .next_poll
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.polls.len()];
        let client = slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let answer = async {
            let stmt = client.prepare_cached(SESSION_SQL).await?;
            client.query_opt(&stmt, &[&&token_hash[..]]).await
        }
        .await;
        let row = match answer {
            Ok(row) => row,
            Err(e) => {
                if client.is_closed() {
                    // Replace the dead connection once; concurrent failures find it replaced.
                    let fresh = self.client().await?;
                    let mut current = slot
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if Arc::ptr_eq(&current, &client) {
                        *current = Arc::new(fresh);
                    }
                }
                return Err(store_err(e));
            }
        };
        Ok(row.map(|r| session_of(&r)))
    }

    /// A site's subject's user and version, made the first time it is seen.
    async fn read_subject(&self, subject: &str, now_ms: u64) -> Result<(UserId, u64), StoreError> {
        let now = to_i64(now_ms, "server time")?;
        let client = self.client().await?;
        let find = client
            .prepare_cached("SELECT id, version FROM users WHERE subject = $1")
            .await
            .map_err(store_err)?;
        let mut row = client
            .query_opt(&find, &[&subject])
            .await
            .map_err(store_err)?;
        if row.is_none() {
            // First sight of this subject; a concurrent first request may create it instead.
            let create = client
                .prepare_cached(
                    // After an erasure of the subject: above its last version, deaf to
                    // writes from before it (0007_erasures.sql), and its first version a
                    // tombstone of the erased user's newest record, so a device's reset ends
                    // above what it holds (0008). One statement: all of it or none.
                    "WITH made AS (
                         INSERT INTO users
                             (username, password_hash, created_at, subject, version, horizon,
                              writes_after)
                         SELECT $1, '', $2, $3, GREATEST(m.value, COALESCE(e.version + 1, 0)),
                                GREATEST(m.value, COALESCE(e.version + 1, 0)),
                                COALESCE(e.erased_at, 0)
                         FROM meta m LEFT JOIN erasures e ON e.subject = $3
                         WHERE m.key = 'version_floor'
                         ON CONFLICT DO NOTHING
                         RETURNING id, version
                     )
                     INSERT INTO records
                         (user_id, collection, key, value, updated_at, client_id, version,
                          stored_at)
                     SELECT made.id, e.collection, e.key, NULL, e.erased_at, ''::bytea,
                            made.version, $2
                     FROM made JOIN erasures e ON e.subject = $3
                     WHERE e.collection IS NOT NULL",
                )
                .await
                .map_err(store_err)?;
            client
                .execute(&create, &[&subject_username(subject), &now, &subject])
                .await
                .map_err(store_err)?;
            row = client
                .query_opt(&find, &[&subject])
                .await
                .map_err(store_err)?;
        }
        let row = row.ok_or(StoreError::NotFound)?;
        Ok((row.get(0), to_u64(row.get(1))))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queue stays consistent even if a holder panicked: every update is one step.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_owned()
}

/// An error and its causes on one line: tokio-postgres keeps the useful part ("connection
/// refused", "database \"x\" does not exist") in the source chain.
fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = first_line(e);
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = first_line(cause);
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn pool_reason(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => reason(e),
        PoolError::Timeout(_) => "timed out waiting for a database connection".into(),
        other => first_line(other),
    }
}

#[derive(Debug, thiserror::Error)]
enum MigrateError {
    #[error("{0}")]
    Db(String),
    #[error("database schema version {found} is newer than this sinkron knows ({known})")]
    TooNew { found: i64, known: i64 },
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(reason(&e))
    }
}

/// Applies pending migrations in one transaction under a transaction-scoped advisory lock:
/// nodes starting at once queue here, and each later one finds the work done. A failed
/// migration rolls back whole and releases the lock.
async fn migrate(client: &mut Object) -> Result<(), MigrateError> {
    let tx = client.transaction().await?;
    // No `NOTICE` for what already exists (`IF NOT EXISTS … skipping`): at every start it
    // reached the log as an info line of the driver's.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             name       TEXT   NOT NULL,
             applied_at BIGINT NOT NULL
         )",
    )
    .await?;
    let newest: Option<i64> = tx
        .query_one("SELECT MAX(version) FROM schema_migrations", &[])
        .await?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    let newest = newest.unwrap_or(0);
    if newest > known {
        return Err(MigrateError::TooNew {
            found: newest,
            known,
        });
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > newest) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[&version, &name, &now_ms_i64()],
        )
        .await?;
        tracing::info!(version, name, "applied migration");
    }
    tx.commit().await?;
    Ok(())
}

fn now_ms_i64() -> i64 {
    i64::try_from(crate::now_ms()).unwrap_or(i64::MAX)
}

fn store_err(e: tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection itself failed.
        return StoreError::Unavailable(reason(&e));
    };
    if *code == SqlState::UNIQUE_VIOLATION {
        StoreError::Conflict
    } else if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::READ_ONLY_SQL_TRANSACTION,
    ]
    .contains(code)
        || code.code().starts_with("08")
    {
        StoreError::Unavailable(reason(&e))
    } else {
        StoreError::Other(reason(&e))
    }
}

/// Integers the protocol keeps as `u64` are stored as `BIGINT`; callers guarantee they fit
/// (ids are validated, timestamps clamped), so a failure here is a bug worth reporting.
fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Other(format!("{what} {v} does not fit in i64")))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Text the server stored from a Rust `String` comes back as the same UTF-8.
fn text(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Other("stored text is not UTF-8".into()))
}

/// Reads one page with [`PAGE_SQL`] on any client or transaction.
async fn read_page<C: GenericClient>(
    client: &C,
    user_id: UserId,
    since: Option<u64>,
    limit: PageLimit,
) -> Result<Page, StoreError> {
    let place = since.and_then(WholeCursor::parse);
    let int = |v: Option<u64>| v.map(|v| to_i64(v, "cursor")).transpose();
    let (after, began) = (
        int(place.map(|p| p.after))?,
        int(place.and_then(|p| p.began))?,
    );
    let cursor = int(since.filter(|_| place.is_none()))?;
    let limit_plus = i64::try_from(limit.changes.saturating_add(1)).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(PAGE_SQL).await.map_err(store_err)?;
    let params: [&(dyn ToSql + Sync); 5] = [&user_id, &after, &limit_plus, &began, &cursor];
    let rows = client.query_raw(&stmt, params).await.map_err(store_err)?;
    futures_util::pin_mut!(rows);
    // Every row carries the user's version and horizon; a user with no rows after the
    // cursor has one row with no record.
    let first = rows
        .try_next()
        .await
        .map_err(store_err)?
        .ok_or(StoreError::NotFound)?;
    let version = to_u64(first.get(0));
    // The statement starts where this rule says; it cannot call it, as the version, the
    // horizon and the rows must come from one statement.
    let start = PageStart::new(since, to_u64(first.get(1)), version);
    let mut page = PageRows::new(limit);
    let mut row = Some(first);
    while let Some(r) = row {
        if let Some(change) = change_of(&r)? {
            if !page.take(change) {
                // The rest of the rows are read and dropped by the driver.
                break;
            }
        }
        row = rows.try_next().await.map_err(store_err)?;
    }
    Ok(page.page(version, start))
}

/// What [`read_oldest`] reads for one cap a push may take its user past.
struct CapRead<'c> {
    user_id: UserId,
    cap: &'c Cap,
    /// [`Merge::unread`](super::plan::Merge::unread).
    unread: i64,
    /// [`Merge::records_before`](super::plan::Merge::records_before): what the user's
    /// collection counts must add up to.
    records: i64,
}

/// Reads with [`OLDEST_SQL`], for each cap, how many records of its collection hold a value
/// and the oldest the eviction needs. Counts that do not add up to the user's records (kept
/// by a node older than 0012 during an upgrade, or edited by hand), or that promised more
/// records than there are, are counted again ([`RECOUNT_SQL`]) rather than evicted by.
async fn read_oldest<C: GenericClient>(
    client: &C,
    reads: &[CapRead<'_>],
) -> Result<Vec<(i64, Vec<Held>)>, StoreError> {
    let mut live = read_oldest_once(client, reads).await?;
    for (read, (count, total, oldest)) in reads.iter().zip(&mut live) {
        let needed = (*count - read.unread).clamp(0, (*count).max(0));
        let fewer = i64::try_from(oldest.len()).unwrap_or(i64::MAX) < needed;
        if *total != read.records || fewer {
            for sql in [UNCOUNT_SQL, RECOUNT_SQL] {
                let stmt = client.prepare_cached(sql).await.map_err(store_err)?;
                client
                    .execute(&stmt, &[&read.user_id])
                    .await
                    .map_err(store_err)?;
            }
            tracing::warn!(
                user_id = read.user_id,
                total = *total,
                "a user's collection counts were wrong: counted again"
            );
            let again = read_oldest_once(client, std::slice::from_ref(read)).await?;
            (*count, *total, *oldest) = again.into_iter().next().unwrap_or_default();
        }
    }
    Ok(live
        .into_iter()
        .map(|(count, _, oldest)| (count, oldest))
        .collect())
}

/// One read of [`read_oldest`]: each cap's count, the user's total and the oldest records.
async fn read_oldest_once<C: GenericClient>(
    client: &C,
    reads: &[CapRead<'_>],
) -> Result<Vec<(i64, i64, Vec<Held>)>, StoreError> {
    let users: Vec<UserId> = reads.iter().map(|r| r.user_id).collect();
    let collections: Vec<&[u8]> = reads.iter().map(|r| r.cap.collection.as_bytes()).collect();
    let unread: Vec<i64> = reads.iter().map(|r| r.unread).collect();
    let stmt = client.prepare_cached(OLDEST_SQL).await.map_err(store_err)?;
    let rows = client
        .query(&stmt, &[&users, &collections, &unread])
        .await
        .map_err(store_err)?;
    let mut live: Vec<(i64, i64, Vec<Held>)> = reads.iter().map(|_| (0, 0, Vec::new())).collect();
    for row in rows {
        let (count, total, oldest) = &mut live[place_of(&row, reads.len())?];
        (*count, *total) = (row.get(1), row.get(2));
        if let Some(key) = row.get::<_, Option<Vec<u8>>>(3) {
            oldest.push(Held {
                key: text(key)?,
                updated_at: to_u64(row.get(4)),
                client_id: text(row.get(5))?,
                bytes: usize::try_from(row.get::<_, i32>(6)).unwrap_or(0),
            });
        }
    }
    Ok(live)
}

/// The record columns of a [`PAGE_SQL`] row; `None` for a user without matching records.
fn change_of(row: &Row) -> Result<Option<Change>, StoreError> {
    let Some(version) = row.get::<_, Option<i64>>(7) else {
        return Ok(None);
    };
    Ok(Some(Change {
        collection: text(row.get(2))?,
        key: text(row.get(3))?,
        value: row.get(4),
        updated_at: to_u64(row.get(5)),
        client_id: text(row.get(6))?,
        version: to_u64(version),
    }))
}

/// A site's user's session: the subject is its name, and it is used now.
fn subject_info(subject: Arc<str>, user_id: UserId, version: u64, now_ms: u64) -> SessionInfo {
    SessionInfo {
        user_id,
        username: subject,
        version,
        last_used_ms: now_ms,
        deleted_at: 0,
    }
}

/// A [`SESSION_SQL`] row.
fn session_of(row: &Row) -> SessionInfo {
    SessionInfo {
        user_id: row.get(0),
        username: Arc::from(row.get::<_, &str>(1)),
        version: to_u64(row.get(2)),
        last_used_ms: to_u64(row.get(3)),
        deleted_at: to_u64(row.get(4)),
    }
}

/// Tells every node a user's new version (or [`pg_cache::EVERYTHING`]) after the commit that
/// made it, in a transaction of its own: the changes the triggers of `0010_notify.sql` leave
/// out. It writes nothing to the log, so it waits for no flush.
async fn announce(client: &Object, payload: &str) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached("SELECT pg_notify($1, $2)")
        .await
        .map_err(store_err)?;
    client
        .execute(&stmt, &[&pg_cache::CHANNEL, &payload])
        .await
        .map_err(store_err)?;
    Ok(())
}

/// Commits a group of pushes on a pooled connection, announces the users' new versions and
/// answers each push.
async fn commit_group(pool: &Pool, jobs: Vec<PushJob>, counts: &GroupCounts) {
    let outcomes = match pool.get().await {
        Ok(mut client) => {
            let mut outcomes = apply_group(&mut client, &jobs, counts).await;
            // Also when nothing changed: a retry then heals a node that missed the
            // announcement of a commit whose node failed before sending it.
            let payloads: Vec<String> = jobs
                .iter()
                .zip(&outcomes)
                .filter_map(|(job, o)| {
                    Some(pg_cache::raised(job.user_id, o.as_ref().ok()?.version))
                })
                .collect();
            if !payloads.is_empty() {
                if let Err(e) = announce_all(&client, &payloads).await {
                    for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                        *o = Err(copy_err(&e));
                    }
                }
            }
            outcomes
        }
        Err(e) => {
            let e = StoreError::Unavailable(pool_reason(&e));
            jobs.iter().map(|_| Err(copy_err(&e))).collect()
        }
    };
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        let _ = job.reply.send(outcome);
    }
}

/// Applies a group of pushes in one transaction, one outcome per push in the group's order.
/// A push refused by the plan (ids reused, quota, no such user) writes nothing and takes
/// nothing of the others along. A statement that fails rolls the group back, and its pushes
/// are applied again one at a time, each in a transaction of its own, so one push's failure
/// is its own. A failed commit is every push's failure.
async fn apply_group(
    client: &mut Object,
    jobs: &[PushJob],
    counts: &GroupCounts,
) -> Vec<Result<PushOutcome, StoreError>> {
    let batches: Vec<PushBatch<'_>> = jobs.iter().map(PushJob::batch).collect();
    let users: Vec<UserId> = jobs.iter().map(|j| j.user_id).collect();
    let failed = {
        let tried = async {
            let tx = client.transaction().await.map_err(store_err)?;
            let outcomes = apply_waves(&tx, &users, &batches).await?;
            Ok::<_, StoreError>((tx, outcomes))
        }
        .await;
        match tried {
            Ok((tx, outcomes)) => {
                return match tx.commit().await {
                    Ok(()) => outcomes,
                    Err(e) => {
                        let e = store_err(e);
                        jobs.iter().map(|_| Err(copy_err(&e))).collect()
                    }
                };
            }
            Err(e) => e,
        }
    };
    if jobs.len() == 1 {
        return vec![Err(failed)];
    }
    counts.one_by_one.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        pushes = jobs.len(),
        error = %failed,
        "a group of pushes failed; applying them one at a time"
    );
    let mut outcomes = Vec::with_capacity(jobs.len());
    for (user_id, batch) in users.iter().zip(&batches) {
        outcomes.push(apply_push(client, *user_id, batch).await);
    }
    outcomes
}

/// Applies a group in waves inside its transaction: the first push of each user, then the
/// second of each user that has one, and so on, so each user's pushes apply in arrival order
/// and each sees the ones before it.
async fn apply_waves(
    tx: &Transaction<'_>,
    users: &[UserId],
    batches: &[PushBatch<'_>],
) -> Result<Vec<Result<PushOutcome, StoreError>>, StoreError> {
    let mut waves: Vec<Vec<usize>> = Vec::new();
    let mut pushes_of: HashMap<UserId, usize> = HashMap::new();
    for (i, user_id) in users.iter().enumerate() {
        let k = pushes_of.entry(*user_id).or_insert(0);
        if waves.len() == *k {
            waves.push(Vec::new());
        }
        waves[*k].push(i);
        *k += 1;
    }
    let mut outcomes: Vec<Option<Result<PushOutcome, StoreError>>> =
        users.iter().map(|_| None).collect();
    for wave in &waves {
        apply_wave(tx, users, batches, wave, &mut outcomes).await?;
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(StoreError::Other("a push without an outcome".into()))))
        .collect())
}

/// A row's place (`i`, from 1) in a statement's arrays of `len` entries.
fn place_of(row: &Row, len: usize) -> Result<usize, StoreError> {
    usize::try_from(row.get::<_, i64>(0) - 1)
        .ok()
        .filter(|&i| i < len)
        .ok_or_else(|| StoreError::Other("a row of no place".into()))
}

/// Applies one wave: pushes of different users, with one statement for each step of all of
/// them ([`GROUP_LOCK_SQL`], [`GROUP_CURRENT_SQL`], [`OLDEST_SQL`], [`GROUP_WRITE_SQL`]),
/// then the pages of those that asked for one.
async fn apply_wave<'a>(
    tx: &Transaction<'_>,
    users: &[UserId],
    batches: &[PushBatch<'a>],
    wave: &[usize],
    outcomes: &mut [Option<Result<PushOutcome, StoreError>>],
) -> Result<(), StoreError> {
    // 1. The users' rows, locked, and the clients' marks.
    let ids: Vec<UserId> = wave.iter().map(|&p| users[p]).collect();
    let clients: Vec<&[u8]> = wave
        .iter()
        .map(|&p| batches[p].client_id.as_bytes())
        .collect();
    let stmt = tx.prepare_cached(GROUP_LOCK_SQL).await.map_err(store_err)?;
    let mut found: Vec<Option<(UserState, ClientMark)>> = vec![None; wave.len()];
    for row in tx
        .query(&stmt, &[&ids, &clients])
        .await
        .map_err(store_err)?
    {
        found[place_of(&row, wave.len())?] = Some((
            UserState {
                version: to_u64(row.get(1)),
                usage: Usage {
                    records: row.get(4),
                    bytes: row.get(5),
                },
                writes_after: to_u64(row.get(6)),
            },
            ClientMark {
                ack: row.get::<_, Option<i64>>(2).map_or(0, to_u64),
                stamp_max: row.get::<_, Option<i64>>(3).map(to_u64),
            },
        ));
    }
    // (push, its planner) of the pushes still going.
    let mut planners: Vec<(usize, Planner<'a>)> = Vec::with_capacity(wave.len());
    for (&p, found) in wave.iter().zip(found) {
        let planned = found
            .ok_or(StoreError::NotFound)
            .and_then(|(user, mark)| Planner::new(batches[p], user, mark));
        match planned {
            Ok(planner) => planners.push((p, planner)),
            Err(e) => outcomes[p] = Some(Err(e)),
        }
    }

    // 2. The stored rows of the records they write.
    let mut owners: Vec<(usize, usize)> = Vec::new();
    let (mut key_users, mut collections, mut names) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_field = Vec::new();
    for (n, (p, planner)) in planners.iter().enumerate() {
        for (place, (collection, key)) in planner.keys().iter().enumerate() {
            owners.push((n, place));
            key_users.push(users[*p]);
            collections.push(collection.as_bytes());
            names.push(key.as_bytes());
            per_field.push(batches[*p].merge_policy(collection).is_some());
        }
    }
    let mut stored: Vec<Vec<Option<Stored>>> = planners
        .iter()
        .map(|(_, planner)| vec![None; planner.keys().len()])
        .collect();
    if !owners.is_empty() {
        let stmt = tx
            .prepare_cached(GROUP_CURRENT_SQL)
            .await
            .map_err(store_err)?;
        let rows = tx
            .query(&stmt, &[&key_users, &collections, &names, &per_field])
            .await
            .map_err(store_err)?;
        for row in rows {
            let (n, place) = owners[place_of(&row, owners.len())?];
            stored[n][place] = Some(stored_row(&row)?);
        }
    }
    let mut merges = Vec::with_capacity(planners.len());
    for ((p, planner), stored) in planners.into_iter().zip(stored) {
        match planner.merge(stored) {
            Ok(merge) => merges.push((p, merge)),
            Err(e) => outcomes[p] = Some(Err(e)),
        }
    }

    // 3. The live records of the capped collections they may take past their cap.
    let capped: Vec<(usize, &Cap)> = merges
        .iter()
        .enumerate()
        .flat_map(|(n, (_, merge))| merge.caps().into_iter().map(move |cap| (n, cap)))
        .collect();
    if !capped.is_empty() {
        let reads: Vec<CapRead> = capped
            .iter()
            .map(|&(n, cap)| CapRead {
                user_id: users[merges[n].0],
                cap,
                unread: merges[n].1.unread(cap),
                records: merges[n].1.records_before(),
            })
            .collect();
        let live = read_oldest(tx, &reads).await?;
        for ((n, cap), (live, oldest)) in capped.into_iter().zip(live) {
            merges[n].1.evict(cap, live, oldest);
        }
    }
    let mut plans: Vec<(usize, Plan<'a>)> = Vec::with_capacity(merges.len());
    for (p, merge) in merges {
        match merge.finish() {
            Ok(plan) => plans.push((p, plan)),
            Err(e) => outcomes[p] = Some(Err(e)),
        }
    }

    // 4. Every write of every plan in one statement.
    write_plans(tx, users, batches, &plans).await?;

    // 5. The pages asked for, read after the writes; pipelined on the connection.
    let pages = plans.iter().map(|(p, _)| async move {
        match batches[*p].since {
            Some(since) => read_page(tx, users[*p], Some(since), batches[*p].limit)
                .await
                .map(Some),
            None => Ok(None),
        }
    });
    let pages = futures_util::future::join_all(pages).await;
    for ((p, plan), page) in plans.iter().zip(pages) {
        outcomes[*p] = Some(Ok(plan.outcome(page?)));
    }
    Ok(())
}

/// Writes a wave's plans with [`GROUP_WRITE_SQL`].
async fn write_plans(
    tx: &Transaction<'_>,
    users: &[UserId],
    batches: &[PushBatch<'_>],
    plans: &[(usize, Plan<'_>)],
) -> Result<(), StoreError> {
    let mut rows = WaveRows::default();
    for (p, plan) in plans {
        let (user_id, batch) = (users[*p], &batches[*p]);
        let now = to_i64(batch.now_ms, "server time")?;
        for w in &plan.rows {
            rows.user_ids.push(user_id);
            rows.collections.push(w.collection.as_bytes());
            rows.keys.push(w.key.as_bytes());
            rows.values.push(w.value.as_deref());
            rows.field_stamps.push(w.stamps.as_deref());
            rows.updated.push(to_i64(w.updated_at, "updatedAt")?);
            rows.versions.push(to_i64(w.version, "version")?);
            rows.writers.push(w.client_id.as_bytes());
            rows.stored_at.push(now);
        }
        if let Some(mark) = plan.mark {
            rows.acked_users.push(user_id);
            rows.acked_clients.push(batch.client_id.as_bytes());
            rows.acks.push(to_i64(mark.ack, "ack")?);
            rows.stamps
                .push(mark.stamp_max.map(|s| to_i64(s, "updatedAt")).transpose()?);
        }
        if !plan.rows.is_empty() {
            rows.raised_users.push(user_id);
            rows.raised_versions.push(to_i64(plan.version, "version")?);
            rows.records.push(plan.usage.records);
            rows.bytes.push(plan.usage.bytes);
        }
        for &(collection, added) in &plan.counts {
            rows.counted_users.push(user_id);
            rows.counted.push(collection.as_bytes());
            rows.added.push(added);
        }
    }
    if rows.user_ids.is_empty() && rows.acked_users.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(GROUP_WRITE_SQL)
        .await
        .map_err(store_err)?;
    tx.execute(
        &stmt,
        &[
            &rows.user_ids,
            &rows.collections,
            &rows.keys,
            &rows.values,
            &rows.updated,
            &rows.versions,
            &rows.writers,
            &rows.stored_at,
            &rows.acked_users,
            &rows.acked_clients,
            &rows.acks,
            &rows.stamps,
            &rows.raised_users,
            &rows.raised_versions,
            &rows.records,
            &rows.bytes,
            &rows.field_stamps,
            &rows.counted_users,
            &rows.counted,
            &rows.added,
        ],
    )
    .await
    .map_err(store_err)?;
    Ok(())
}

/// The columns of [`GROUP_WRITE_SQL`]'s arrays.
#[derive(Default)]
struct WaveRows<'a> {
    user_ids: Vec<UserId>,
    collections: Vec<&'a [u8]>,
    keys: Vec<&'a [u8]>,
    values: Vec<Option<&'a str>>,
    updated: Vec<i64>,
    versions: Vec<i64>,
    writers: Vec<&'a [u8]>,
    stored_at: Vec<i64>,
    acked_users: Vec<UserId>,
    acked_clients: Vec<&'a [u8]>,
    acks: Vec<i64>,
    stamps: Vec<Option<i64>>,
    raised_users: Vec<UserId>,
    raised_versions: Vec<i64>,
    records: Vec<i64>,
    bytes: Vec<i64>,
    /// The records' per-field stamps ([`sinkron_core::merge::Stamps`]).
    field_stamps: Vec<Option<&'a str>>,
    /// What each collection's count of records holding a value changes by.
    counted_users: Vec<UserId>,
    counted: Vec<&'a [u8]>,
    added: Vec<i64>,
}

/// A row of [`CURRENT_SQL`] or [`GROUP_CURRENT_SQL`] as the push's plan reads it.
fn stored_row(row: &tokio_postgres::Row) -> Result<Stored, StoreError> {
    Ok(Stored {
        updated_at: to_u64(row.get(1)),
        client_id: text(row.get(2))?,
        bytes: row
            .get::<_, Option<i32>>(3)
            .map(|b| usize::try_from(b).unwrap_or(0)),
        value: row.get(4),
        stamps: row.get(5),
    })
}

/// Tells every node the new versions of a group's users in one statement, after the commit
/// that made them ([`announce`]).
async fn announce_all(client: &Object, payloads: &[String]) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .await
        .map_err(store_err)?;
    client
        .execute(&stmt, &[&pg_cache::CHANNEL, &payloads])
        .await
        .map_err(store_err)?;
    Ok(())
}

/// Applies one push in a transaction: locks the user's row, reads what the [`Planner`] asks
/// for, then writes its [`Plan`](super::plan::Plan) in one statement.
async fn apply_push(
    client: &mut Object,
    user_id: UserId,
    batch: &PushBatch<'_>,
) -> Result<PushOutcome, StoreError> {
    let tx = client.transaction().await.map_err(store_err)?;
    let client_id = batch.client_id.as_bytes();
    let lock = tx.prepare_cached(LOCK_SQL).await.map_err(store_err)?;
    let row = tx
        .query_opt(&lock, &[&user_id, &client_id])
        .await
        .map_err(store_err)?
        .ok_or(StoreError::NotFound)?;
    let user = UserState {
        version: to_u64(row.get(0)),
        usage: Usage {
            records: row.get(3),
            bytes: row.get(4),
        },
        writes_after: to_u64(row.get(5)),
    };
    let mark = ClientMark {
        ack: row.get::<_, Option<i64>>(1).map_or(0, to_u64),
        stamp_max: row.get::<_, Option<i64>>(2).map(to_u64),
    };
    let planner = Planner::new(*batch, user, mark)?;

    let keys = planner.keys();
    let mut stored: Vec<Option<Stored>> = vec![None; keys.len()];
    if !keys.is_empty() {
        let collections: Vec<&[u8]> = keys.iter().map(|k| k.0.as_bytes()).collect();
        let names: Vec<&[u8]> = keys.iter().map(|k| k.1.as_bytes()).collect();
        let per_field: Vec<bool> = keys
            .iter()
            .map(|k| batch.merge_policy(k.0).is_some())
            .collect();
        let stmt = tx.prepare_cached(CURRENT_SQL).await.map_err(store_err)?;
        let rows = tx
            .query(&stmt, &[&user_id, &collections, &names, &per_field])
            .await
            .map_err(store_err)?;
        for row in rows {
            // The key's place in the arrays, from 1.
            let place = usize::try_from(row.get::<_, i64>(0) - 1)
                .ok()
                .filter(|&i| i < stored.len())
                .ok_or_else(|| StoreError::Other("a stored row of no key".into()))?;
            stored[place] = Some(stored_row(&row)?);
        }
    }
    let mut merge = planner.merge(stored)?;
    let caps = merge.caps();
    if !caps.is_empty() {
        let reads: Vec<CapRead> = caps
            .iter()
            .map(|&cap| CapRead {
                user_id,
                cap,
                unread: merge.unread(cap),
                records: merge.records_before(),
            })
            .collect();
        let live = read_oldest(&tx, &reads).await?;
        for (cap, (live, oldest)) in caps.into_iter().zip(live) {
            merge.evict(cap, live, oldest);
        }
    }
    let plan = merge.finish()?;

    if !plan.rows.is_empty() || plan.mark.is_some() {
        let rows = &plan.rows;
        let collections: Vec<&[u8]> = rows.iter().map(|w| w.collection.as_bytes()).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|w| w.key.as_bytes()).collect();
        let values: Vec<Option<&str>> = rows.iter().map(|w| w.value.as_deref()).collect();
        let stamps: Vec<Option<&str>> = rows.iter().map(|w| w.stamps.as_deref()).collect();
        let updated = rows
            .iter()
            .map(|w| to_i64(w.updated_at, "updatedAt"))
            .collect::<Result<Vec<_>, _>>()?;
        let versions = rows
            .iter()
            .map(|w| to_i64(w.version, "version"))
            .collect::<Result<Vec<_>, _>>()?;
        let writers: Vec<&[u8]> = rows.iter().map(|w| w.client_id.as_bytes()).collect();
        let now = to_i64(batch.now_ms, "server time")?;
        let after = plan.mark.unwrap_or(mark);
        let ack = to_i64(after.ack, "ack")?;
        let stamp_max = after
            .stamp_max
            .map(|s| to_i64(s, "updatedAt"))
            .transpose()?;
        let version = to_i64(plan.version, "version")?;
        let counted: Vec<&[u8]> = plan.counts.iter().map(|c| c.0.as_bytes()).collect();
        let added: Vec<i64> = plan.counts.iter().map(|c| c.1).collect();
        let stmt = tx.prepare_cached(WRITE_SQL).await.map_err(store_err)?;
        tx.execute(
            &stmt,
            &[
                &user_id,
                &client_id,
                &now,
                &collections,
                &keys,
                &values,
                &updated,
                &versions,
                &ack,
                &plan.mark.is_some(),
                &version,
                &stamp_max,
                &plan.usage.records,
                &plan.usage.bytes,
                &writers,
                &stamps,
                &counted,
                &added,
            ],
        )
        .await
        .map_err(store_err)?;
    }
    let page = match batch.since {
        Some(since) => Some(read_page(&tx, user_id, Some(since), batch.limit).await?),
        None => None,
    };
    tx.commit().await.map_err(store_err)?;
    Ok(plan.outcome(page))
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> Result<UserId, StoreError> {
        let now = to_i64(now_ms, "server time")?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO users (username, password_hash, created_at, version, horizon)
                 SELECT $1, $2, $3, value, value FROM meta WHERE key = 'version_floor'
                 RETURNING id",
            )
            .await
            .map_err(store_err)?;
        let row = client
            .query_one(&stmt, &[&username, &password_hash, &now])
            .await
            .map_err(store_err)?;
        Ok(row.get(0))
    }

    async fn find_user_by_name(&self, username: &str) -> Result<Option<UserAccount>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, username, password_hash FROM users WHERE username = $1")
            .await
            .map_err(store_err)?;
        let row = client
            .query_opt(&stmt, &[&username])
            .await
            .map_err(store_err)?;
        Ok(row.map(|r| UserAccount {
            id: r.get(0),
            username: r.get(1),
            password_hash: r.get(2),
        }))
    }

    async fn create_token(
        &self,
        user_id: UserId,
        token_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let now = to_i64(now_ms, "server time")?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO tokens (token_hash, user_id, created_at, last_used_at)
                 VALUES ($1, $2, $3, $3)",
            )
            .await
            .map_err(store_err)?;
        client
            .execute(&stmt, &[&&token_hash[..], &user_id, &now])
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn touch_token(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<(), StoreError> {
        let now = to_i64(now_ms, "server time")?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE tokens SET last_used_at = $2 WHERE token_hash = $1 AND last_used_at < $2",
            )
            .await
            .map_err(store_err)?;
        client
            .execute(&stmt, &[&&token_hash[..], &now])
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn count_attempt(
        &self,
        key: &[u8; 32],
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Option<Attempts>, StoreError> {
        let now = to_i64(now_ms, "server time")?;
        let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // One statement, so concurrent attempts on any node each count (Attempts::next).
        let stmt = client
            .prepare_cached(
                "INSERT INTO login_attempts AS a (key, attempts, since) VALUES ($1, 1, $2)
                 ON CONFLICT (key) DO UPDATE SET
                     attempts = CASE WHEN $2 < a.since + $3 THEN a.attempts + 1 ELSE 1 END,
                     since = CASE WHEN $2 < a.since + $3 THEN a.since ELSE $2 END
                 RETURNING attempts, since",
            )
            .await
            .map_err(store_err)?;
        let row = client
            .query_one(&stmt, &[&&key[..], &now, &window])
            .await
            .map_err(store_err)?;
        Ok(Some(Attempts {
            count: u32::try_from(row.get::<_, i32>(0)).unwrap_or(u32::MAX),
            since_ms: to_u64(row.get(1)),
        }))
    }

    async fn clear_attempts(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM login_attempts WHERE key = $1")
            .await
            .map_err(store_err)?;
        client
            .execute(&stmt, &[&&key[..]])
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn purge_expired(
        &self,
        used_before_ms: u64,
        attempts_before_ms: u64,
        deleted_before_ms: u64,
    ) -> Result<u64, StoreError> {
        let deleted_before = i64::try_from(deleted_before_ms).unwrap_or(i64::MAX);
        let used_before = i64::try_from(used_before_ms).unwrap_or(i64::MAX);
        let attempts_before = i64::try_from(attempts_before_ms).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let ended = client
            .execute(
                "DELETE FROM tokens WHERE last_used_at < $1",
                &[&used_before],
            )
            .await
            .map_err(store_err)?;
        // Deleted accounts past their last day of answers, sessions and all.
        client
            .execute(
                "DELETE FROM users WHERE deleted_at > 0 AND deleted_at < $1",
                &[&deleted_before],
            )
            .await
            .map_err(store_err)?;
        client
            .execute(
                "DELETE FROM login_attempts WHERE since < $1",
                &[&attempts_before],
            )
            .await
            .map_err(store_err)?;
        Ok(ended)
    }

    async fn revoke_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM tokens WHERE token_hash = $1")
            .await
            .map_err(store_err)?;
        client
            .execute(&stmt, &[&&token_hash[..]])
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn revoke_user_tokens(
        &self,
        user_id: UserId,
        keep: Option<[u8; 32]>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let keep = keep.map(|k| k.to_vec()).unwrap_or_default();
        client
            .execute(
                "DELETE FROM tokens WHERE user_id = $1 AND token_hash != $2",
                &[&user_id, &keep],
            )
            .await
            .map_err(store_err)
    }

    async fn set_password(&self, user_id: UserId, password_hash: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE users SET password_hash = $2 WHERE id = $1",
                &[&user_id, &password_hash],
            )
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn delete_user(&self, user_id: UserId, now_ms: u64) -> Result<(), StoreError> {
        let now = to_i64(now_ms, "server time")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_err)?;
        // The user's row first, as a push locks it: a push in progress finishes before.
        tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user_id])
            .await
            .map_err(store_err)?
            .ok_or(StoreError::NotFound)?;
        let newest = tx
            .query_opt(
                "SELECT collection, key FROM records WHERE user_id = $1
                 ORDER BY version DESC LIMIT 1",
                &[&user_id],
            )
            .await
            .map_err(store_err)?;
        for sql in [
            "DELETE FROM records WHERE user_id = $1",
            "DELETE FROM collection_counts WHERE user_id = $1",
            "DELETE FROM clients WHERE user_id = $1",
        ] {
            tx.execute(sql, &[&user_id]).await.map_err(store_err)?;
        }
        // Above every version a device holds, storing no write (0009).
        let version: i64 = tx
            .query_one(
                "UPDATE users SET username = 'deleted:' || id, password_hash = '',
                     version = version + 1, horizon = version + 1,
                     writes_after = 9223372036854775807, deleted_at = $2,
                     records = 0, bytes = 0
                 WHERE id = $1 RETURNING version",
                &[&user_id, &now],
            )
            .await
            .map_err(store_err)?
            .get(0);
        if let Some(row) = newest {
            let (collection, key): (&[u8], &[u8]) = (row.get(0), row.get(1));
            tx.execute(
                "INSERT INTO records
                     (user_id, collection, key, value, updated_at, client_id, version,
                      stored_at)
                 VALUES ($1, $2, $3, NULL, $4, ''::bytea, $5, $4)",
                &[&user_id, &collection, &key, &now, &version],
            )
            .await
            .map_err(store_err)?;
        }
        tx.commit().await.map_err(store_err)
    }

    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError> {
        let epoch = self.cache.epoch();
        let session = self.read_session(token_hash).await?;
        if let (Some(epoch), Some(session)) = (epoch, &session) {
            self.cache.remember_session(epoch, token_hash, session);
        }
        Ok(session)
    }

    async fn polled_session(
        &self,
        token_hash: &[u8; 32],
        polled: u64,
    ) -> Result<Option<SessionInfo>, StoreError> {
        let current = |cache: &Cache| cache.session(token_hash).filter(|s| s.version == polled);
        if current(&self.cache).is_some() && self.cache.fresh().await {
            if let Some(session) = current(&self.cache) {
                return Ok(Some(session));
            }
        }
        self.session(token_hash).await
    }

    async fn subject_session(&self, subject: &str, now_ms: u64) -> Result<SessionInfo, StoreError> {
        let epoch = self.cache.epoch();
        let (user_id, version) = self.read_subject(subject, now_ms).await?;
        let username: Arc<str> = subject.into();
        if let Some(epoch) = epoch {
            self.cache
                .remember_subject(epoch, &username, user_id, version);
        }
        Ok(subject_info(username, user_id, version, now_ms))
    }

    async fn polled_subject_session(
        &self,
        subject: &str,
        now_ms: u64,
        polled: u64,
    ) -> Result<SessionInfo, StoreError> {
        let current = |cache: &Cache| cache.subject(subject).filter(|s| s.1 == polled);
        if current(&self.cache).is_some() && self.cache.fresh().await {
            if let Some((user_id, version)) = current(&self.cache) {
                return Ok(subject_info(subject.into(), user_id, version, now_ms));
            }
        }
        self.subject_session(subject, now_ms).await
    }

    async fn find_subject(&self, subject: &str) -> Result<Option<UserId>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id FROM users WHERE subject = $1")
            .await
            .map_err(store_err)?;
        let row = client
            .query_opt(&stmt, &[&subject])
            .await
            .map_err(store_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn erase_subject(&self, subject: &str, now_ms: u64) -> Result<(), StoreError> {
        let now = to_i64(now_ms, "server time")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_err)?;
        // The user's row first, as a push locks it: a push in progress finishes before.
        let found = tx
            .query_opt(
                "SELECT id, version FROM users WHERE subject = $1 FOR UPDATE",
                &[&subject],
            )
            .await
            .map_err(store_err)?;
        let version: i64 = found.as_ref().map_or(0, |r| r.get(1));
        let user_id: Option<i64> = found.as_ref().map(|r| r.get(0));
        // The erased user's newest record: its tombstone marks a later user's first version.
        tx.execute(
            "INSERT INTO erasures (subject, version, erased_at, collection, key)
             SELECT $1, $2, $3, r.collection, r.key
             FROM (SELECT 1) one
             LEFT JOIN LATERAL (SELECT collection, key FROM records WHERE user_id = $4
                                ORDER BY version DESC LIMIT 1) r ON true
             ON CONFLICT (subject) DO UPDATE SET
                 version = GREATEST(erasures.version, excluded.version),
                 erased_at = excluded.erased_at,
                 collection = COALESCE(excluded.collection, erasures.collection),
                 key = COALESCE(excluded.key, erasures.key)",
            &[&subject, &version, &now, &user_id],
        )
        .await
        .map_err(store_err)?;
        if let Some(row) = found {
            let user_id: i64 = row.get(0);
            // Records, tokens and client marks go with it (ON DELETE CASCADE).
            tx.execute("DELETE FROM users WHERE id = $1", &[&user_id])
                .await
                .map_err(store_err)?;
        }
        tx.commit().await.map_err(store_err)
    }

    async fn pull(
        &self,
        user_id: UserId,
        since: Option<u64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let client = self.client().await?;
        read_page(&client, user_id, since, limit).await
    }

    async fn push(&self, user_id: UserId, batch: PushBatch<'_>) -> Result<PushOutcome, StoreError> {
        let (job, answer) = PushJob::new(user_id, &batch);
        lock(&self.pushes).push_back(job);
        // The next free committer takes a group of the queued pushes, this one or others
        // (each push starts one try, so none is left behind).
        let (pool, pushes, committers, groups) = (
            self.pool.clone(),
            self.pushes.clone(),
            self.committers.clone(),
            self.groups.clone(),
        );
        tokio::spawn(async move {
            let Ok(_permit) = committers.acquire_owned().await else {
                return;
            };
            let jobs = take_group(&mut lock(&pushes), GROUP_PUSHES_MAX, GROUP_MUTATIONS_MAX);
            if !jobs.is_empty() {
                groups.made.fetch_add(1, Ordering::Relaxed);
                commit_group(&pool, jobs, &groups).await;
            }
        });
        answer.wait().await
    }

    async fn mark_restored(&self, at_least: u64) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_err)?;
        // No node may serve meanwhile (each holds the serving lock shared, see `pg_cache`):
        // one would go on handing out versions of the lost history from its memory. Held
        // alone until the commit, so a node starting now waits before it remembers anything.
        let (a, b) = pg_cache::SERVING_LOCK;
        let alone: bool = tx
            .query_one(&format!("SELECT pg_try_advisory_xact_lock({a}, {b})"), &[])
            .await
            .map_err(store_err)?
            .get(0);
        if !alone {
            let row = tx
                .query_one(
                    &format!(
                        "SELECT count(DISTINCT pid) FROM pg_locks
                          WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database
                                WHERE datname = current_database())
                            AND classid = {a} AND objid = {b} AND objsubid = 2 AND granted"
                    ),
                    &[],
                )
                .await
                .map_err(store_err)?;
            let nodes: i64 = row.get(0);
            return Err(StoreError::Serving(to_u64(nodes)));
        }
        let row = tx
            .query_one(
                "SELECT (SELECT value FROM meta WHERE key = 'version_floor'),
                        (SELECT COALESCE(MAX(version), 0) FROM users)",
                &[],
            )
            .await
            .map_err(store_err)?;
        let (old, max): (i64, i64) = (row.get(0), row.get(1));
        let floor = restored_floor(to_u64(old), to_u64(max), at_least);
        let floor_i = to_i64(floor, "version floor")?;
        // v ↦ v − old + floor: order kept, everything at or above the new floor.
        tx.execute(
            "UPDATE records SET version = GREATEST(version, $1) - $1 + $2",
            &[&old, &floor_i],
        )
        .await
        .map_err(store_err)?;
        tx.execute(
            "UPDATE users SET version = GREATEST(version, $1) - $1 + $2,
                              horizon = GREATEST(horizon, $1) - $1 + $2",
            &[&old, &floor_i],
        )
        .await
        .map_err(store_err)?;
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'version_floor'",
            &[&floor_i],
        )
        .await
        .map_err(store_err)?;
        tx.commit().await.map_err(store_err)?;
        announce(&client, pg_cache::EVERYTHING).await?;
        Ok(floor)
    }

    async fn compact_tombstones(&self, stored_before_ms: u64) -> Result<u64, StoreError> {
        let before = i64::try_from(stored_before_ms).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let mut deleted = 0u64;
        loop {
            let tx = client.transaction().await.map_err(store_err)?;
            // Users first, in id order, as a push locks its one user before its records.
            let users: Vec<i64> = tx
                .query(
                    "SELECT id FROM users WHERE id IN (
                         SELECT DISTINCT r.user_id FROM records r JOIN users u ON u.id = r.user_id
                         WHERE r.value IS NULL AND r.stored_at <= $1 AND r.version < u.version
                         LIMIT $2)
                     ORDER BY id FOR NO KEY UPDATE",
                    &[&before, &COMPACTION_USERS_MAX],
                )
                .await
                .map_err(store_err)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if users.is_empty() {
                tx.commit().await.map_err(store_err)?;
                return Ok(deleted);
            }
            let row = tx
                .query_one(
                    "WITH gone AS (
                         DELETE FROM records r USING users u
                         WHERE r.user_id = ANY($2) AND u.id = r.user_id
                           AND r.value IS NULL AND r.stored_at <= $1 AND r.version < u.version
                         RETURNING r.user_id, r.version
                     ), highest AS (
                         SELECT user_id, MAX(version) AS version FROM gone GROUP BY user_id
                     ), raised AS (
                         UPDATE users u SET horizon = GREATEST(u.horizon, h.version)
                         FROM highest h WHERE u.id = h.user_id
                         RETURNING 1
                     )
                     SELECT (SELECT COUNT(*) FROM gone), (SELECT COUNT(*) FROM raised)",
                    &[&before, &users],
                )
                .await
                .map_err(store_err)?;
            tx.commit().await.map_err(store_err)?;
            deleted += to_u64(row.get(0));
        }
    }

    fn on_version_raised(&self, hook: super::VersionHook) {
        self.cache.on_raised(hook);
    }

    fn polls_from_memory(&self) -> bool {
        self.cache.epoch().is_some()
    }

    async fn site_users(&self) -> Result<Vec<(UserId, String)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, subject FROM users WHERE subject IS NOT NULL",
                &[],
            )
            .await
            .map_err(store_err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Quota;
    use sinkron_core::Mutation;

    /// The server tests' PostgreSQL: `SINKRON_TEST_POSTGRES_URL`, else the local one with
    /// trust authentication.
    pub fn admin_url() -> String {
        std::env::var("SINKRON_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// A uniquely named, empty database, dropped with the value.
    pub struct TestDatabase {
        pub name: String,
        pub url: String,
    }

    impl TestDatabase {
        pub async fn create() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "sinkron_unit_{}_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                crate::now_ms()
            );
            let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls)
                .await
                .expect("PostgreSQL answers (start it: pg_ctlcluster 15 main start)");
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create a test database");
            drop(client);
            let _ = task.await;
            let base = admin_url();
            let url = match base.rsplit_once('/') {
                Some((head, _)) => format!("{head}/{name}"),
                None => base,
            };
            Self { name, url }
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let name = self.name.clone();
            // Drop cannot await; a thread with its own runtime can.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.ok()?;
                    tokio::spawn(conn);
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                        .ok()
                })
            })
            .join();
        }
    }

    use crate::store::conformance::batch;

    fn put(id: u64, key: &str, value: &str, updated_at: u64) -> Mutation {
        crate::store::conformance::m(id, key, Some(value), updated_at)
    }

    /// Group commits made, and those applied again one push at a time.
    fn groups(store: &PostgresStore) -> (u64, u64) {
        (
            store.groups.made.load(Ordering::Relaxed),
            store.groups.one_by_one.load(Ordering::Relaxed),
        )
    }

    /// Group commits made since `before`, and those applied again one push at a time.
    fn groups_since(store: &PostgresStore, before: (u64, u64)) -> (u64, u64) {
        let now = groups(store);
        (now.0 - before.0, now.1 - before.1)
    }

    #[tokio::test]
    async fn concurrent_pushes_of_many_users_share_commits_and_each_get_their_own_answer() {
        let db = TestDatabase::create().await;
        let store = PostgresStore::open(&db.url, 4).await.expect("open");
        // More than a group takes.
        let users = GROUP_PUSHES_MAX + 8;
        let mut ids = Vec::new();
        for u in 0..users {
            ids.push(
                store
                    .create_user(&format!("u{u}"), "phc", 1)
                    .await
                    .expect("create"),
            );
        }
        // The same keys and client id for everyone, each user's own values and stamps.
        let stamp = |u: usize| 100 + 10 * u as u64;
        let sent: Vec<Vec<Mutation>> = (0..users)
            .map(|u| {
                (0..3)
                    .map(|i| put(i + 1, &format!("k{i}"), &format!("{{\"u\":{u}}}"), stamp(u)))
                    .collect()
            })
            .collect();
        let before = groups(&store);
        let outcomes = futures_util::future::join_all(
            ids.iter()
                .zip(&sent)
                .map(|(&id, m)| store.push(id, batch("c", m, Some(0)))),
        )
        .await;
        assert_eq!(
            groups_since(&store, before),
            (users.div_ceil(GROUP_PUSHES_MAX) as u64, 0),
            "queued pushes share commits, with no push applied alone"
        );
        for (u, outcome) in outcomes.into_iter().enumerate() {
            let outcome = outcome.unwrap_or_else(|e| panic!("user {u}'s push: {e}"));
            assert_eq!(
                (outcome.applied, outcome.ack, outcome.version),
                (3, 3, 3),
                "user {u}"
            );
            let page = outcome.page.expect("a page was asked for");
            let values: Vec<_> = page
                .changes
                .iter()
                .map(|c| (c.key.as_str(), c.value.as_deref()))
                .collect();
            let own = format!("{{\"u\":{u}}}");
            assert_eq!(
                values,
                [
                    ("k0", Some(own.as_str())),
                    ("k1", Some(own.as_str())),
                    ("k2", Some(own.as_str()))
                ],
                "user {u}'s answer holds its own records"
            );
            let stored = store.pull(ids[u], None, 100.into()).await.expect("pull");
            assert_eq!(stored.changes, page.changes, "user {u}'s stored records");
        }
        // Again, merging with what each user stored: k0 newer than the user's own stored
        // write for even users, older for odd ones (and between other users' stamps).
        let again: Vec<Vec<Mutation>> = (0..users)
            .map(|u| {
                let at = if u % 2 == 0 {
                    stamp(u) + 5
                } else {
                    stamp(u) - 5
                };
                vec![put(4, "k0", "\"again\"", at)]
            })
            .collect();
        let before = groups(&store);
        let outcomes = futures_util::future::join_all(
            ids.iter()
                .zip(&again)
                .map(|(&id, m)| store.push(id, batch("c", m, Some(3)))),
        )
        .await;
        assert_eq!(groups_since(&store, before).1, 0, "no push applied alone");
        for (u, outcome) in outcomes.into_iter().enumerate() {
            let outcome = outcome.unwrap_or_else(|e| panic!("user {u}'s second push: {e}"));
            let won = u % 2 == 0;
            assert_eq!(
                (outcome.applied, outcome.ack, outcome.version),
                (usize::from(won), 4, 3 + u64::from(won)),
                "user {u}'s second push merged with its own records"
            );
            let page = outcome.page.expect("a page was asked for");
            assert_eq!(page.changes.len(), usize::from(won), "user {u}");
        }
    }

    #[tokio::test]
    async fn a_failing_push_in_a_group_fails_alone() {
        let db = TestDatabase::create().await;
        let store = PostgresStore::open(&db.url, 4).await.expect("open");
        let mut ids = Vec::new();
        for u in 0..4 {
            ids.push(
                store
                    .create_user(&format!("u{u}"), "phc", 1)
                    .await
                    .expect("create"),
            );
        }
        let reused_first = [put(1, "r", "1", 5)];
        store
            .push(ids[3], batch("r", &reused_first, None))
            .await
            .expect("the first use of id 1");
        let good = [put(1, "a", "{}", 5), put(2, "b", "{}", 6)];
        let reused = [put(1, "r", "2", 99)];
        let over = PushBatch {
            quota: Quota {
                records: 1,
                bytes: u64::MAX,
            },
            ..batch("q", &good, Some(0))
        };
        let missing = ids.iter().max().expect("users") + 1_000;

        // Refused by the plan: no such user, past the quota, ids reused.
        let before = groups(&store);
        let (a, none, quota, b, reuse) = tokio::join!(
            store.push(ids[0], batch("c", &good, Some(0))),
            store.push(missing, batch("c", &good, None)),
            store.push(ids[2], over),
            store.push(ids[1], batch("c", &good, Some(0))),
            store.push(ids[3], batch("r", &reused, None)),
        );
        assert_eq!(
            groups_since(&store, before),
            (1, 0),
            "one group, applied whole"
        );
        assert!(matches!(none, Err(StoreError::NotFound)), "{none:?}");
        assert!(
            matches!(
                quota,
                Err(StoreError::QuotaExceeded {
                    what: "records",
                    ..
                })
            ),
            "{quota:?}"
        );
        assert!(
            matches!(reuse, Err(StoreError::IdsReused { ack: 1 })),
            "{reuse:?}"
        );
        for outcome in [a, b] {
            let outcome = outcome.expect("a good push beside refused ones");
            assert_eq!((outcome.applied, outcome.version), (2, 2));
            assert_eq!(outcome.page.expect("page").changes.len(), 2);
        }
        assert!(
            store
                .pull(ids[2], None, 10.into())
                .await
                .expect("pull")
                .changes
                .is_empty(),
            "the refused push wrote nothing"
        );

        // Failed by the database (PostgreSQL text holds no NUL): the group is applied again
        // one push at a time, and only that push fails.
        let bad = [put(3, "nul", "\"\u{0}\"", 7)];
        let more = [put(3, "c", "{}", 7)];
        let before = groups(&store);
        let (a, bad, b) = tokio::join!(
            store.push(ids[0], batch("c", &more, Some(2))),
            store.push(ids[2], batch("q", &bad, None)),
            store.push(ids[1], batch("c", &more, Some(2))),
        );
        assert_eq!(
            groups_since(&store, before),
            (1, 1),
            "one group, applied again alone"
        );
        assert!(matches!(bad, Err(StoreError::Other(_))), "{bad:?}");
        for outcome in [a, b] {
            let outcome = outcome.expect("a good push beside a failing one");
            assert_eq!((outcome.applied, outcome.ack, outcome.version), (1, 3, 3));
            assert_eq!(outcome.page.expect("page").changes.len(), 1);
        }
        assert!(
            store
                .pull(ids[2], None, 10.into())
                .await
                .expect("pull")
                .changes
                .is_empty(),
            "the failed push wrote nothing"
        );
    }

    #[tokio::test]
    async fn pushes_of_one_user_in_a_group_apply_in_order() {
        let db = TestDatabase::create().await;
        let store = PostgresStore::open(&db.url, 4).await.expect("open");
        let amy = store.create_user("amy", "phc", 1).await.expect("create");
        let bob = store.create_user("bob", "phc", 1).await.expect("create");
        let first = [put(1, "k", "1", 5)];
        let second = [put(2, "k", "2", 6), put(3, "j", "3", 6)];
        let other = [put(1, "k", "b", 5)];
        let before = groups(&store);
        let (one, theirs, two, retry) = tokio::join!(
            store.push(amy, batch("c", &first, Some(0))),
            store.push(bob, batch("c", &other, Some(0))),
            store.push(amy, batch("c", &second, Some(1))),
            store.push(amy, batch("c", &first, Some(0))),
        );
        assert_eq!(
            groups_since(&store, before),
            (1, 0),
            "one group, applied whole"
        );
        let one = one.expect("first");
        assert_eq!(
            (one.applied, one.ack, one.version),
            (1, 1, 1),
            "the first push first"
        );
        let two = two.expect("second");
        assert_eq!(
            (two.applied, two.ack, two.version),
            (2, 3, 3),
            "then the second"
        );
        let page = two.page.expect("page");
        let seen: Vec<_> = page
            .changes
            .iter()
            .map(|c| (c.key.as_str(), c.version))
            .collect();
        assert_eq!(
            seen,
            [("k", 2), ("j", 3)],
            "the second's answer is after the first"
        );
        let retry = retry.expect("retry");
        assert_eq!(
            (retry.applied, retry.ack, retry.version),
            (0, 3, 3),
            "the retry sees both"
        );
        assert_eq!(retry.page.expect("page").changes.len(), 2);
        let theirs = theirs.expect("bob");
        assert_eq!((theirs.applied, theirs.ack, theirs.version), (1, 1, 1));
    }

    #[tokio::test]
    async fn postgres_passes_the_store_conformance_suite() {
        let db = TestDatabase::create().await;
        let store = PostgresStore::open(&db.url, 4).await.expect("open");
        crate::store::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn a_wrong_collection_count_is_counted_again_not_evicted_by() {
        use crate::store::conformance::{
            a_fourth_like_evicts_only_the_oldest, miscounts, three_likes,
        };
        let db = TestDatabase::create().await;
        let store = PostgresStore::open(&db.url, 4).await.expect("open");
        let (admin, conn) = tokio_postgres::connect(&db.url, NoTls)
            .await
            .expect("admin");
        tokio::spawn(conn);
        for n in 0..3 {
            let id = three_likes(&store, &format!("miscounted{n}")).await;
            let count = || async {
                admin
                    .query_one(
                        "SELECT live FROM collection_counts
                         WHERE user_id = $1 AND collection = 'likes'",
                        &[&id],
                    )
                    .await
                    .expect("a count")
                    .get::<_, i64>(0)
            };
            assert_eq!(count().await, 3, "kept by the push");
            let miscount = &miscounts(id)[n];
            admin.batch_execute(miscount).await.expect("set wrong");
            a_fourth_like_evicts_only_the_oldest(&store, id).await;
            assert_eq!(count().await, 3, "after {miscount:?}");
        }
    }

    #[tokio::test]
    async fn migration_0012_counts_the_records_already_stored() {
        use crate::store::conformance::{batch, m, three_likes};
        let db = TestDatabase::create().await;
        let store = PostgresStore::open(&db.url, 4).await.expect("open");
        let id = three_likes(&store, "counted").await;
        let gone = [m(4, "k1", None, 50)];
        store.push(id, batch("c", &gone, None)).await.expect("push");
        drop(store);
        let (admin, conn) = tokio_postgres::connect(&db.url, NoTls)
            .await
            .expect("admin");
        tokio::spawn(conn);
        // Back to the schema before 0012, its rows and all.
        admin
            .batch_execute(
                "DROP TABLE collection_counts; DROP INDEX records_live_age;
                 DELETE FROM schema_migrations WHERE version = 12;",
            )
            .await
            .expect("undo 0012");
        drop(PostgresStore::open(&db.url, 4).await.expect("migrate"));
        let counts: Vec<(Vec<u8>, i64)> = admin
            .query(
                "SELECT collection, live FROM collection_counts WHERE user_id = $1",
                &[&id],
            )
            .await
            .expect("counts")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(counts, [(b"likes".to_vec(), 2)], "the tombstone left out");
    }

    #[tokio::test]
    async fn polls_recover_when_their_shared_connection_is_killed() {
        let db = TestDatabase::create().await;
        let store = PostgresStore::open(&db.url, 4).await.expect("open");
        let id = store.create_user("kim", "phc", 1).await.expect("create");
        let token = [3u8; 32];
        store.create_token(id, &token, 1).await.expect("token");
        assert!(store.session(&token).await.expect("session").is_some());
        let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls)
            .await
            .expect("admin");
        tokio::spawn(conn);
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&db.name],
            )
            .await
            .expect("terminate");
        // Polls on a dead connection fail as unavailable (503, retried by clients) until it
        // is replaced; within a few they answer again.
        let mut answered = false;
        for _ in 0..5 {
            match store.session(&token).await {
                Ok(Some(s)) => {
                    assert_eq!(s.user_id, id);
                    answered = true;
                    break;
                }
                Ok(None) => panic!("the token is still valid"),
                Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e}"),
            }
        }
        assert!(answered, "polls answer again after a reconnect");
    }

    #[tokio::test]
    async fn nodes_migrating_at_once_apply_each_migration_once() {
        let db = TestDatabase::create().await;
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = db.url.clone();
                tokio::spawn(async move { PostgresStore::open(&url, 1).await })
            })
            .collect();
        let mut stores = Vec::new();
        for open in opens {
            let store = open.await.expect("open task");
            stores.push(store.unwrap_or_else(|e| panic!("every node opens: {e}")));
        }
        let client = stores[0].client().await.expect("client");
        let applied: i64 = client
            .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            applied,
            i64::try_from(MIGRATIONS.len()).expect("few migrations")
        );
    }
}
