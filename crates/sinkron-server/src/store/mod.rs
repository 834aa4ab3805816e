//! Storage behind one trait, [`Store`], which speaks the protocol (accounts, sign-in tokens,
//! pull since a cursor, apply a push batch atomically), not SQL.
//!
//! It owns the storage semantics every backend must share: per-user versions, newest-wins
//! merge, per-client acknowledgements, tombstone compaction and its horizon. The rules of a
//! push and of a page are written once, in [`plan`], a pure module every backend calls
//! between its reads and its writes. It must not know HTTP, parse requests or validate
//! input: callers hand it validated values. Only the backend modules ([`sqlite`],
//! [`postgres`]) know SQL. The backend is chosen once, from the database URL, by [`connect`].

#[cfg(test)]
pub(crate) mod conformance;
pub mod pg_cache;
pub mod plan;
pub mod postgres;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use sinkron_core::{Change, Mutation};

pub use plan::{Cap, ClientMark, FieldMerge, Held, PageLimit, Quota, Usage};

/// Told a user and the user's new version ([`Store::on_version_raised`]).
pub type VersionHook = Arc<dyn Fn(UserId, u64) + Send + Sync>;

/// A user's id: the integer primary key. On the wire it is a JSON string.
pub type UserId = i64;

/// The `username` a site's user gets: `jwt:` and the subject. No built-in username can hold
/// a `:`, so the two kinds never collide.
pub fn subject_username(subject: &str) -> String {
    format!("jwt:{subject}")
}

/// What can go wrong in storage. A constraint the client broke is [`StoreError::Conflict`]
/// (it becomes a 4xx); everything else is the server's problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row the call is about does not exist (e.g. a user deleted under a live session).
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken, e.g. a username that is taken.
    #[error("conflict")]
    Conflict,
    /// A push carried ids at or below the client's ack with writes that are not retries of
    /// what the server took under those ids ([`PushBatch::check_retries`]). Nothing was
    /// applied.
    #[error("mutation ids at or below the ack {ack} reused")]
    IdsReused { ack: u64 },
    /// The batch would take the user past the storage quota ([`Quota::check`]). Nothing was
    /// applied.
    #[error("the user's storage quota of {limit} {what} would be exceeded")]
    QuotaExceeded { what: &'static str, limit: u64 },
    /// A write of a collection merged per field would make the stored record larger than a
    /// value may be. Nothing was applied.
    #[error("{collection}/{key} would hold {bytes} bytes once merged")]
    MergedTooLarge {
        /// The id of the write that would make it so.
        mutation: u64,
        collection: String,
        key: String,
        bytes: usize,
    },
    /// The backend is busy or unreachable; trying again later may work.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Server nodes still serve the database (`sinkron restored` on PostgreSQL): this many
    /// hold the serving lock.
    #[error(
        "{0} server node(s) still serve this database; stop every node (`sinkron serve`), then \
         run this again"
    )]
    Serving(u64),
    /// Anything else. The detail is for the logs only.
    #[error("storage failure: {0}")]
    Other(String),
}

/// An account as sign-in needs it.
#[derive(Clone, Debug)]
pub struct UserAccount {
    pub id: UserId,
    pub username: String,
    /// The argon2id PHC string.
    pub password_hash: String,
}

/// What a bearer token resolves to: enough to answer a poll without another query.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub user_id: UserId,
    pub username: Arc<str>,
    /// The user's current version, i.e. the cursor a fully synced client holds.
    pub version: u64,
    /// When a request last came with this session's token, as last recorded by
    /// [`Store::touch_token`] (a site's user, who has no token here: now).
    pub last_used_ms: u64,
    /// When the account was deleted ([`Store::delete_user`]), 0 while it lives.
    pub deleted_at: u64,
}

/// A sign-in throttle's count for one key: attempts in the current window, this one
/// included, and when the window began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempts {
    pub count: u32,
    pub since_ms: u64,
}

impl Attempts {
    /// The count after one more attempt at `now_ms`: the window restarts once `window_ms`
    /// has passed since it began. Every throttle counts with this one rule (the shared
    /// counter in SQL says the same).
    pub fn next(previous: Option<Attempts>, now_ms: u64, window_ms: u64) -> Attempts {
        match previous {
            Some(p) if now_ms < p.since_ms.saturating_add(window_ms) => Attempts {
                count: p.count.saturating_add(1),
                since_ms: p.since_ms,
            },
            _ => Attempts {
                count: 1,
                since_ms: now_ms,
            },
        }
    }
}

/// One page of a pull.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// Ordered by version, ascending.
    pub changes: Vec<Change>,
    /// Where the next pull starts: the last change's version when `more`, else the user's
    /// version.
    pub cursor: u64,
    /// Whether changes remain after this page.
    pub more: bool,
    /// Whether this is the whole state because the given cursor was behind the compaction
    /// horizon: the client must drop what it holds and start over.
    pub reset: bool,
}

/// A validated push batch.
#[derive(Clone, Copy, Debug)]
pub struct PushBatch<'a> {
    pub client_id: &'a str,
    /// Ids strictly increasing, collections known, values checked.
    pub mutations: &'a [Mutation],
    /// The server clock, stamped on stored rows (tombstone compaction goes by it).
    pub now_ms: u64,
    /// Larger `updated_at` values are clamped down to this (`now_ms + max_future_ms`).
    pub updated_at_max: u64,
    /// The client's cursor: when given, the outcome carries the changes since it.
    pub since: Option<u64>,
    /// What the returned page may hold.
    pub limit: PageLimit,
    /// What the user may store at most after the batch.
    pub quota: Quota,
    /// The capped collections ([`Cap`]).
    pub caps: &'a [Cap],
    /// The collections merged per field ([`FieldMerge`]).
    pub merges: &'a [FieldMerge],
}

impl PushBatch<'_> {
    /// The per-field merges of the collections this batch writes to.
    pub fn merges_touched(&self) -> impl Iterator<Item = &FieldMerge> {
        self.merges
            .iter()
            .filter(|f| self.mutations.iter().any(|m| m.collection == f.collection))
    }

    /// The caps of the collections this batch adds records to (a write of a value).
    pub fn caps_touched(&self) -> impl Iterator<Item = &Cap> {
        self.caps.iter().filter(|cap| {
            self.mutations
                .iter()
                .any(|m| m.value.is_some() && m.collection == cap.collection)
        })
    }
}

/// A push waiting for a group commit (SQLite's writer, a PostgreSQL node's committers),
/// with where to send its outcome. It owns a copy of the batch (at most 1 MiB), so the
/// commit runs in a task of its own and a request dropped meanwhile cannot strand it.
struct PushJob {
    user_id: UserId,
    client_id: String,
    mutations: Vec<Mutation>,
    now_ms: u64,
    updated_at_max: u64,
    since: Option<u64>,
    limit: PageLimit,
    quota: Quota,
    caps: Vec<Cap>,
    merges: Vec<FieldMerge>,
    reply: tokio::sync::oneshot::Sender<Result<PushOutcome, StoreError>>,
}

impl PushJob {
    /// The job and where its outcome arrives.
    fn new(user_id: UserId, batch: &PushBatch<'_>) -> (Self, PushAnswer) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Self {
            user_id,
            client_id: batch.client_id.to_owned(),
            mutations: batch.mutations.to_vec(),
            now_ms: batch.now_ms,
            updated_at_max: batch.updated_at_max,
            since: batch.since,
            limit: batch.limit,
            quota: batch.quota,
            caps: batch.caps_touched().cloned().collect(),
            merges: batch.merges_touched().cloned().collect(),
            reply,
        };
        (job, PushAnswer(answer))
    }

    fn batch(&self) -> PushBatch<'_> {
        PushBatch {
            client_id: &self.client_id,
            mutations: &self.mutations,
            now_ms: self.now_ms,
            updated_at_max: self.updated_at_max,
            since: self.since,
            limit: self.limit,
            quota: self.quota,
            caps: &self.caps,
            merges: &self.merges,
        }
    }
}

/// The outcome of a [`PushJob`], once its group is committed.
struct PushAnswer(tokio::sync::oneshot::Receiver<Result<PushOutcome, StoreError>>);

impl PushAnswer {
    async fn wait(self) -> Result<PushOutcome, StoreError> {
        self.0
            .await
            .map_err(|_| StoreError::Other("the push was dropped without an outcome".into()))?
    }
}

/// Takes the next group off a backend's queue of pushes: in arrival order, at most `pushes`
/// of them and `mutations` mutations in all, but always the first (a push is at most
/// [`sinkron_core::limits`]' batch). However many pushes queue up, a group's transaction, its
/// memory and the wait of the pushes in it stay bounded.
fn take_group(
    queue: &mut std::collections::VecDeque<PushJob>,
    pushes: usize,
    mutations: usize,
) -> Vec<PushJob> {
    let mut group = Vec::new();
    let mut taken = 0;
    while let Some(job) = queue.front() {
        let more = taken + job.mutations.len();
        if group.len() == pushes || (!group.is_empty() && more > mutations) {
            break;
        }
        taken = more;
        group.extend(queue.pop_front());
    }
    group
}

/// The same error again, for each push of a group whose commit failed.
fn copy_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict => StoreError::Conflict,
        StoreError::IdsReused { ack } => StoreError::IdsReused { ack: *ack },
        StoreError::QuotaExceeded { what, limit } => StoreError::QuotaExceeded {
            what,
            limit: *limit,
        },
        StoreError::MergedTooLarge {
            mutation,
            collection,
            key,
            bytes,
        } => StoreError::MergedTooLarge {
            mutation: *mutation,
            collection: collection.clone(),
            key: key.clone(),
            bytes: *bytes,
        },
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Serving(nodes) => StoreError::Serving(*nodes),
        StoreError::Other(m) => StoreError::Other(m.clone()),
    }
}

/// What a push did.
#[derive(Clone, Debug)]
pub struct PushOutcome {
    /// The highest mutation id applied for this client, now or before.
    pub ack: u64,
    /// The user's version after the push.
    pub version: u64,
    /// How many mutations won and were stored.
    pub applied: usize,
    /// The changes since `since`, when it was given, read in the push's transaction.
    pub page: Option<Page>,
}

/// Storage of accounts, tokens and records. Every method is atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an account; [`StoreError::Conflict`] if the username is taken.
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> Result<UserId, StoreError>;

    async fn find_user_by_name(&self, username: &str) -> Result<Option<UserAccount>, StoreError>;

    /// Stores a sign-in token, by its SHA-256 only.
    async fn create_token(
        &self,
        user_id: UserId,
        token_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError>;

    /// Records that a request came with the token at `now_ms` (see
    /// [`SessionInfo::last_used_ms`]).
    async fn touch_token(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<(), StoreError>;

    /// Forgets a token; it must stop resolving at once, on every node.
    async fn revoke_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError>;

    /// Ends every session of the user except `keep` (the caller's own, when given), at once
    /// on every node; returns how many ended.
    async fn revoke_user_tokens(
        &self,
        user_id: UserId,
        keep: Option<[u8; 32]>,
    ) -> Result<u64, StoreError>;

    /// Replaces the user's password hash.
    async fn set_password(&self, user_id: UserId, password_hash: &str) -> Result<(), StoreError>;

    /// Deletes one of Sinkron's own accounts at `now_ms`, at once on every node: its records
    /// and client marks go, its username is freed, its password cleared, and
    /// [`SessionInfo::deleted_at`] is set. Its sessions still resolve, to an account whose
    /// whole state (after its last version: a reset for every device) is one tombstone of
    /// its newest record, and which acknowledges every write without storing it — so a
    /// signed-in device drops its copy and its outbox. [`Store::purge_expired`] removes the
    /// account.
    async fn delete_user(&self, user_id: UserId, now_ms: u64) -> Result<(), StoreError>;

    /// Resolves a token to its user and the user's version in one call: this is the poll hot
    /// path, so backends may answer it from memory when that is safe.
    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError>;

    /// The user a verified site token names by its `sub`, created (empty) the first time the
    /// subject is seen, with the user's version: the poll path of JWT mode. `username` is the
    /// subject.
    async fn subject_session(&self, subject: &str, now_ms: u64) -> Result<SessionInfo, StoreError>;

    /// [`Store::session`] for a poll that names the version it holds (`If-None-Match`): when
    /// that is the user's version the answer is a `304`, and a backend may then answer from
    /// memory that is provably current (PostgreSQL: [`pg_cache`]).
    async fn polled_session(
        &self,
        token_hash: &[u8; 32],
        _polled: u64,
    ) -> Result<Option<SessionInfo>, StoreError> {
        self.session(token_hash).await
    }

    /// [`Store::subject_session`] for a poll that names the version it holds, as
    /// [`Store::polled_session`].
    async fn polled_subject_session(
        &self,
        subject: &str,
        now_ms: u64,
        _polled: u64,
    ) -> Result<SessionInfo, StoreError> {
        self.subject_session(subject, now_ms).await
    }

    /// The user a site's user id names, if Sinkron has one (never creates it).
    async fn find_subject(&self, subject: &str) -> Result<Option<UserId>, StoreError>;

    /// Erases the site's user `subject` (if stored): the user and every record, tombstone
    /// and client mark, at once on every node, and remembers the erasure: a user made for
    /// the same subject later starts with its version and horizon above the erased user's
    /// last version (a device's old cursor gets a reset) and acknowledges without storing
    /// every write stamped at or before `now_ms` (nothing comes back from an outbox).
    async fn erase_subject(&self, subject: &str, now_ms: u64) -> Result<(), StoreError>;

    /// Changes after `since`, or the whole state (every stored record, tombstones included)
    /// when `since` is `None` or behind the compaction horizon (then `reset`), as much as
    /// `limit` allows ([`Page::from_rows`]). Reads one consistent snapshot.
    async fn pull(
        &self,
        user_id: UserId,
        since: Option<u64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError>;

    /// Applies a batch and the client's acknowledgement atomically: mutations at or below the
    /// client's ack are skipped, each remaining one is merged newest-wins and every winner
    /// bumps the user's version by one. A backend decides none of it: it reads what
    /// [`plan::Planner`] asks for and writes the plan.
    async fn push(&self, user_id: UserId, batch: PushBatch<'_>) -> Result<PushOutcome, StoreError>;

    /// Counts one sign-in attempt under `key` in a counter every node shares, atomically
    /// ([`Attempts::next`]). `None` when the backend serves one node only: the server then
    /// counts in memory.
    async fn count_attempt(
        &self,
        _key: &[u8; 32],
        _now_ms: u64,
        _window_ms: u64,
    ) -> Result<Option<Attempts>, StoreError> {
        Ok(None)
    }

    /// Forgets the attempts counted under `key` by [`Store::count_attempt`].
    async fn clear_attempts(&self, _key: &[u8; 32]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Deletes the sessions last used before `used_before_ms` (they stop resolving at once,
    /// on every node), the shared attempt windows begun before `attempts_before_ms`, and
    /// the accounts deleted before `deleted_before_ms` with their sessions. Returns how many
    /// sessions ended.
    async fn purge_expired(
        &self,
        used_before_ms: u64,
        attempts_before_ms: u64,
        deleted_before_ms: u64,
    ) -> Result<u64, StoreError>;

    /// Deletes tombstones stored at or before `stored_before_ms`, except each user's newest
    /// row (so a whole state always ends at its cursor's version), and raises each affected
    /// user's horizon to the highest version deleted. Returns how many were deleted.
    async fn compact_tombstones(&self, stored_before_ms: u64) -> Result<u64, StoreError>;

    /// After a restore from backup, with no server running: makes every version of the
    /// database (users', records', horizons) start again above every version the lost
    /// history could have issued, and above `at_least` (the caller's clock × 1,000: at most
    /// a thousand changes per millisecond were ever made), order kept. A device's cursor from
    /// before is then behind its user's horizon (a reset), and the records of the reset page
    /// are newer than any the device holds, so nothing of the lost history survives on it.
    /// Users created later start from the new floor. Returns the floor.
    async fn mark_restored(&self, at_least: u64) -> Result<u64, StoreError>;

    /// Calls `hook` with a user and a new version whenever this store hears of a commit that
    /// raised it, made by any node (PostgreSQL: the announcements of [`pg_cache`]). A backend
    /// that serves one node hears nothing here: the push handler tells its node itself.
    fn on_version_raised(&self, _hook: VersionHook) {}

    /// Whether a poll whose answer has not changed is answered from memory now: on
    /// PostgreSQL while the node hears every change ([`pg_cache`]), on SQLite always.
    fn polls_from_memory(&self) -> bool {
        true
    }

    /// Every site's user (JWT mode): its id and subject, in no particular order. Built-in
    /// accounts are left out. `sinkron export` reads each one's records with [`Store::pull`].
    async fn site_users(&self) -> Result<Vec<(UserId, String)>, StoreError>;
}

/// The version floor after a restore: above the old floor, every stored version and
/// `at_least`.
pub fn restored_floor(old_floor: u64, max_version: u64, at_least: u64) -> u64 {
    at_least
        .max(max_version.saturating_add(1))
        .max(old_floor.saturating_add(1))
}

/// Why storage could not be opened. Each message is one line fit for an operator.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL's scheme alone: the rest may carry a password.
    #[error("unsupported database URL scheme \"{0}://\": use sqlite://PATH, sqlite:///ABSOLUTE/PATH, a plain file path or postgres://USER@HOST/DB")]
    UnsupportedScheme(String),
    #[error("{0}")]
    InvalidUrl(String),
    #[error("PostgreSQL is opened with store::connect, not store::open")]
    NeedsConnect,
    #[error("empty database path")]
    EmptyPath,
    #[error("no database at {0}: nothing was created; check the path")]
    Missing(String),
    #[error("database {path} is in use by another sinkron server (lock file {lock})")]
    Locked { path: String, lock: String },
    #[error("cannot open database {path}: {reason}")]
    Open { path: String, reason: String },
}

/// The storage a database URL names.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// The whole `postgres://` or `postgresql://` URL (it may carry a password).
    Postgres(String),
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.write_str("Postgres(<redacted>)"),
        }
    }
}

/// How to open storage, besides the URL.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// Most connections to PostgreSQL held at once (SQLite ignores it).
    pub pool_size: usize,
    /// A node serving devices (`sinkron serve`), not a command: on PostgreSQL it remembers
    /// sessions and versions, kept true by a listener that holds the serving lock
    /// (`pg_cache::SERVING_LOCK`) while it runs.
    pub serves: bool,
}

/// Refuses a SQLite database that does not exist, for the commands that only read or mark one
/// (an operator's typo must not pass for an empty database).
pub fn existing(database: &str) -> Result<(), OpenError> {
    match DatabaseUrl::parse(database)? {
        DatabaseUrl::Sqlite(path) if !path.exists() => {
            Err(OpenError::Missing(path.display().to_string()))
        }
        _ => Ok(()),
    }
}

impl DatabaseUrl {
    /// `sqlite://relative.db`, `sqlite:///absolute.db`, `sqlite:path`, a plain path, or
    /// `postgres://USER[:PASS]@HOST[:PORT]/DB` (also `postgresql://`).
    pub fn parse(url: &str) -> Result<Self, OpenError> {
        let path = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        } else if let Some((scheme, _)) = url.split_once("://") {
            return Err(OpenError::UnsupportedScheme(scheme.to_owned()));
        } else {
            url
        };
        if path.is_empty() {
            return Err(OpenError::EmptyPath);
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }
}

/// Opens (creating and migrating if needed) the storage a database URL names: SQLite or
/// PostgreSQL.
pub async fn connect(url: &str, options: ConnectOptions) -> Result<Arc<dyn Store>, OpenError> {
    match DatabaseUrl::parse(url)? {
        DatabaseUrl::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(&path)?)),
        DatabaseUrl::Postgres(url) if options.serves => Ok(Arc::new(
            postgres::PostgresStore::open(&url, options.pool_size).await?,
        )),
        DatabaseUrl::Postgres(url) => Ok(Arc::new(
            postgres::PostgresStore::open_for_command(&url, options.pool_size).await?,
        )),
    }
}

/// Opens a SQLite database without a runtime (PostgreSQL needs [`connect`]).
pub fn open(url: &str) -> Result<Arc<dyn Store>, OpenError> {
    match DatabaseUrl::parse(url)? {
        DatabaseUrl::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(&path)?)),
        DatabaseUrl::Postgres(_) => Err(OpenError::NeedsConnect),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_takes_pushes_in_order_up_to_its_bounds_and_always_one() {
        let job = |n: usize| {
            let mutations: Vec<Mutation> = (1..=n as u64)
                .map(|id| conformance::m(id, &format!("k{id}"), None, 1))
                .collect();
            PushJob::new(1, &conformance::batch("c", &mutations, None)).0
        };
        let sizes = |group: &[PushJob]| group.iter().map(|j| j.mutations.len()).collect::<Vec<_>>();
        let mut queue: std::collections::VecDeque<PushJob> =
            [3, 4, 5, 9, 1, 1, 1].into_iter().map(job).collect();
        assert_eq!(
            sizes(&take_group(&mut queue, 10, 8)),
            [3, 4],
            "3 + 4 + 5 > 8"
        );
        assert_eq!(sizes(&take_group(&mut queue, 10, 8)), [5]);
        assert_eq!(
            sizes(&take_group(&mut queue, 10, 8)),
            [9],
            "the first, whatever its size"
        );
        assert_eq!(
            sizes(&take_group(&mut queue, 2, 8)),
            [1, 1],
            "two pushes at most"
        );
        assert_eq!(sizes(&take_group(&mut queue, 2, 8)), [1]);
        assert!(take_group(&mut queue, 2, 8).is_empty());
    }

    #[test]
    fn database_urls_name_a_sqlite_file_or_a_postgres_database() {
        let sqlite = |p: &str| Ok::<_, ()>(DatabaseUrl::Sqlite(PathBuf::from(p)));
        let parse = |u: &str| DatabaseUrl::parse(u).map_err(|_| ());
        assert_eq!(parse("sqlite://data/s.db"), sqlite("data/s.db"));
        assert_eq!(parse("sqlite:///var/s.db"), sqlite("/var/s.db"));
        assert_eq!(parse("s.db"), sqlite("s.db"));
        for url in ["postgres://u@h/db", "postgresql://u:p@h:5433/db"] {
            assert_eq!(parse(url), Ok(DatabaseUrl::Postgres(url.into())));
        }
        assert!(!format!(
            "{:?}",
            DatabaseUrl::Postgres("postgres://u:secret@h/d".into())
        )
        .contains("secret"));
        assert!(matches!(
            DatabaseUrl::parse("mysql://h/db"),
            Err(OpenError::UnsupportedScheme(_))
        ));
        // A mistyped scheme names the scheme, never the password after it.
        let typo = DatabaseUrl::parse("postgress://ops:TypoPass1@h/db").expect_err("refused");
        let message = typo.to_string();
        assert!(
            message.contains("\"postgress://\"") && !message.contains("TypoPass1"),
            "{message}"
        );
        assert!(matches!(
            DatabaseUrl::parse("sqlite://"),
            Err(OpenError::EmptyPath)
        ));
    }
}
