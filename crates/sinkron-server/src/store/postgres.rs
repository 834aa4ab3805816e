//! The PostgreSQL backend of [`Store`]: any number of `sinkron` nodes on one database.
//!
//! It owns the SQL, the migrations in `migrations/postgres/` and a connection pool, of which
//! a few connections are shared by every poll (their one query each is pipelined). It keeps
//! nothing in memory that correctness needs — no session or version cache — so a write or a
//! sign-out on one node is seen by every node at its next request. Two rules make that hold:
//!
//! * **One user's pushes are serialised by the user's row.** A push starts by locking
//!   `users` (`FOR NO KEY UPDATE`), then reads the records it merges with, writes, raises
//!   `users.version` and commits. Under READ COMMITTED each statement after the lock sees
//!   everything committed before it, so versions are handed out in commit order: a
//!   transaction that commits version `v` committed every version below `v` before it.
//! * **A pull is one statement.** The user's version and horizon and the page of records are
//!   read by a single `SELECT`, so they come from one snapshot: the cursor it returns covers
//!   exactly the rows it returns, and by the rule above no row at or below that cursor can
//!   commit later. (Reading the version and the rows in two READ COMMITTED statements could
//!   pair a cursor with rows from different moments, and a client would skip a change.)
//!
//! Compaction locks the users it touches before their records, in id order, like a push
//! (one user) does, so the two never deadlock.
//!
//! It decides nothing of a push or a page: it reads the rows [`super::plan`] asks for and
//! writes what it returns. It must not validate requests or know HTTP.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use sinkron_core::Change;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::pg_cache::{self, Cache, Listening};
use super::plan::{PageStart, Planner, Stored, UserState};
use super::{
    restored_floor, subject_username, Attempts, ClientMark, Held, OpenError, Page, PushBatch,
    PushOutcome, SessionInfo, Store, StoreError, Usage, UserAccount, UserId,
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

/// A page in one statement, so the version, the horizon and the rows are one snapshot. The
/// cursor `$2` is honoured when it lies between the horizon and the version, or names a place
/// in a whole state ([`WHOLE_STATE`](super::plan::WHOLE_STATE), 2^62); otherwise (or when
/// NULL) the page is the whole state from the start, tombstones included: the rule of
/// [`PageStart`], which `read_page` applies to what this returns.
const PAGE_SQL: &str = "SELECT u.version, u.horizon,
            r.collection, r.key, r.value, r.updated_at, r.client_id, r.version
     FROM users u
     CROSS JOIN LATERAL (SELECT CASE
                 WHEN $2::int8 >= 4611686018427387904
                      AND $2::int8 - 4611686018427387904 <= u.version
                     THEN $2::int8 - 4611686018427387904
                 WHEN $2::int8 >= u.horizon AND $2::int8 <= u.version THEN $2::int8
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
const CURRENT_SQL: &str = "SELECT k.i, r.updated_at, r.client_id, octet_length(r.value)
     FROM records r
     JOIN unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS k(collection, key, i)
       ON r.collection = k.collection AND r.key = k.key
     WHERE r.user_id = $1";

/// Every write of a push in one statement: the winning records, the ack, the version.
const WRITE_SQL: &str = "WITH written AS (
         INSERT INTO records
             (user_id, collection, key, value, updated_at, client_id, version, stored_at)
         SELECT $1, w.collection, w.key, w.value, w.updated_at, w.client_id, w.version, $3
         FROM unnest($4::bytea[], $5::bytea[], $6::text[], $7::int8[], $8::int8[], $15::bytea[])
             AS w(collection, key, value, updated_at, version, client_id)
         ON CONFLICT (user_id, collection, key) DO UPDATE SET
             value = excluded.value, updated_at = excluded.updated_at,
             client_id = excluded.client_id, version = excluded.version,
             stored_at = excluded.stored_at
         RETURNING 1
     ), acked AS (
         INSERT INTO clients (user_id, client_id, ack, stamp_max)
         SELECT $1, $2, $9, $12 WHERE $10::bool
         ON CONFLICT (user_id, client_id) DO UPDATE SET
             ack = excluded.ack, stamp_max = excluded.stamp_max
         RETURNING 1
     )
     UPDATE users SET version = $11, records = records + $13, bytes = bytes + $14
     WHERE id = $1 AND cardinality($4::bytea[]) > 0";

pub struct PostgresStore {
    pool: Pool,
    /// Connections shared by every poll: their queries are pipelined (many requests in one
    /// write, many answers in one read), which costs far fewer wake-ups than a connection per
    /// request. A broken one is swapped for a fresh one from the pool.
    polls: Vec<std::sync::RwLock<Arc<Object>>>,
    next_poll: std::sync::atomic::AtomicUsize,
    /// Sessions and versions, kept true by every node's notifications ([`pg_cache`]).
    cache: Arc<Cache>,
    _listening: Listening,
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
    /// applies any pending migration.
    pub async fn open(url: &str, pool_size: usize) -> Result<Self, OpenError> {
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
        let (cache, listening) = Cache::start(listen_config);
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
    limit: usize,
) -> Result<Page, StoreError> {
    let since_i64 = since.map(|c| to_i64(c, "cursor")).transpose()?;
    let limit_plus = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(PAGE_SQL).await.map_err(store_err)?;
    let rows = client
        .query(&stmt, &[&user_id, &since_i64, &limit_plus])
        .await
        .map_err(store_err)?;
    let first = rows.first().ok_or(StoreError::NotFound)?;
    let version = to_u64(first.get(0));
    // The statement starts where this rule says; it cannot call it, as the version, the
    // horizon and the rows must come from one statement.
    let start = PageStart::new(since, to_u64(first.get(1)), version);
    let mut changes = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(change) = change_of(row)? {
            changes.push(change);
        }
    }
    Ok(Page::from_rows(changes, limit, version, start))
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
        let stmt = tx.prepare_cached(CURRENT_SQL).await.map_err(store_err)?;
        let rows = tx
            .query(&stmt, &[&user_id, &collections, &names])
            .await
            .map_err(store_err)?;
        for row in rows {
            // The key's place in the arrays, from 1.
            let place = usize::try_from(row.get::<_, i64>(0) - 1)
                .ok()
                .filter(|&i| i < stored.len())
                .ok_or_else(|| StoreError::Other("a stored row of no key".into()))?;
            stored[place] = Some(Stored {
                updated_at: to_u64(row.get(1)),
                client_id: text(row.get(2))?,
                bytes: row
                    .get::<_, Option<i32>>(3)
                    .map(|b| usize::try_from(b).unwrap_or(0)),
            });
        }
    }
    let mut merge = planner.merge(stored);
    for cap in merge.caps() {
        let rows = tx
            .query(
                "SELECT key, updated_at, client_id, octet_length(value) FROM records
                 WHERE user_id = $1 AND collection = $2 AND value IS NOT NULL",
                &[&user_id, &cap.collection.as_bytes()],
            )
            .await
            .map_err(store_err)?;
        let mut live = Vec::with_capacity(rows.len());
        for row in rows {
            live.push(Held {
                key: text(row.get(0))?,
                updated_at: to_u64(row.get(1)),
                client_id: text(row.get(2))?,
                bytes: usize::try_from(row.get::<_, i32>(3)).unwrap_or(0),
            });
        }
        merge.evict(cap, live);
    }
    let plan = merge.finish()?;

    if !plan.rows.is_empty() || plan.mark.is_some() {
        let rows = &plan.rows;
        let collections: Vec<&[u8]> = rows.iter().map(|w| w.collection.as_bytes()).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|w| w.key.as_bytes()).collect();
        let values: Vec<Option<&str>> = rows.iter().map(|w| w.value).collect();
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
        limit: usize,
    ) -> Result<Page, StoreError> {
        let client = self.client().await?;
        read_page(&client, user_id, since, limit).await
    }

    async fn push(&self, user_id: UserId, batch: PushBatch<'_>) -> Result<PushOutcome, StoreError> {
        let mut client = self.client().await?;
        let outcome = apply_push(&mut client, user_id, &batch).await?;
        // Also when nothing changed: a retry then heals a node that missed the announcement
        // of a commit whose node failed before sending it.
        announce(&client, &pg_cache::raised(user_id, outcome.version)).await?;
        Ok(outcome)
    }

    async fn mark_restored(&self, at_least: u64) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_err)?;
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

    #[tokio::test]
    async fn postgres_passes_the_store_conformance_suite() {
        let db = TestDatabase::create().await;
        let store = PostgresStore::open(&db.url, 4).await.expect("open");
        crate::store::conformance::run(&store).await;
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
