//! A PostgreSQL node's memory of sessions and versions: a poll whose answer has not changed
//! costs no query, on any number of nodes.
//!
//! Three rules keep it as true as the database:
//!
//! * **Told at commit.** Every change to a user's sessions or identity is NOTIFYed on the
//!   channel [`CHANNEL`] by triggers (`migrations/postgres/0010_notify.sql`); a user's new
//!   version by the node that made it, after its commit and before it answers ([`raised`]).
//!   One connection per node LISTENs and applies them here ([`Cache::heard`]). A version is
//!   only ever raised, and it is taken from a notification even when this node never asked
//!   for it, so a read that raced the notification cannot put an older one back. A node that
//!   fails between a commit and its announcement leaves other nodes behind until the user's
//!   next push (a retry announces too) or [`AGE_MAX`], whichever comes first; nobody was
//!   told of that write yet.
//! * **A barrier before an answer from memory.** A notification arrives a little after its
//!   commit. Before a request is answered from memory, the node sends an empty query on its
//!   listening connection and waits for the answer ([`Cache::fresh`]). A committing backend
//!   signals the listening ones before its `COMMIT` returns, and from PostgreSQL 15 on a
//!   backend sends the notifications it has been signalled of before it says it is ready
//!   for the next query (`postgres.c`, before `ReadyForQuery`). So when the empty query's
//!   answer comes, every notification committed before the request arrived came ahead of it
//!   and has been applied — a write acknowledged by one node, or a sign-out, is never
//!   answered with a stale `304` by another. One round trip serves every request that
//!   arrived while the previous one was in flight; it takes no transaction, no lock and no
//!   other node's time. Older servers get no memory (every poll reads the database), but
//!   their notifications still poke the push channel.
//! * **Dark when deaf.** While the connection is down, or a barrier takes longer than
//!   [`LAG`], the memory is off and every request reads the database; the listener then
//!   reconnects. The memory is emptied whenever the node (re)subscribes or forgets, and a
//!   read that began before that (or before an invalidation) is not remembered
//!   ([`Cache::epoch`]).
//!
//! Memory is bounded: past [`ENTRIES_MAX`] entries a map is emptied and refilled on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};

use super::{SessionInfo, UserId, VersionHook};

/// The channel every change is announced on (see `0010_notify.sql`).
pub const CHANNEL: &str = "sinkron";
/// What every node forgets now and then, so that nothing it holds is older than this.
pub const AGE_MAX: Duration = Duration::from_secs(300);
/// The notification that makes every node forget everything (a restore renumbered versions).
pub const EVERYTHING: &str = "*";

/// The notification of a user's new version.
pub fn raised(user_id: UserId, version: u64) -> String {
    format!("v {user_id} {version}")
}

/// The longest a barrier may take before the node stops trusting its memory.
pub const LAG: Duration = Duration::from_millis(500);
/// The most entries one map holds.
pub const ENTRIES_MAX: usize = 200_000;
/// The listener's connection's `application_name`.
pub const APPLICATION_NAME: &str = "sinkron-listen";
/// The serving lock: a PostgreSQL advisory lock of two keys (`"sink"`, 1) that every node
/// holds shared on its listener's connection while it serves, so that `sinkron restored`
/// (which needs it alone) can tell that nodes still serve the database.
pub const SERVING_LOCK: (i32, i32) = (0x7369_6e6b, 1);
/// The first and the longest wait before the listener connects again.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A session as remembered: everything but the version, which [`Memory::versions`] holds.
#[derive(Clone)]
struct Identity {
    user_id: UserId,
    username: Arc<str>,
    last_used_ms: u64,
    deleted_at: u64,
}

/// Looked up twice by every poll: a fast hash (keys are token hashes, user ids and subjects
/// the site vouched for, none of them chosen freely by a client).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Memory {
    tokens: Map<[u8; 32], Identity>,
    subjects: Map<Arc<str>, UserId>,
    /// Only ever raised, by a read or a notification.
    versions: Map<UserId, u64>,
    /// Raised by everything that forgets: a read that began under an older epoch is not
    /// remembered.
    epoch: u64,
    /// Subscribed: notifications are being applied.
    live: bool,
}

impl Memory {
    fn forget_all(&mut self) {
        self.tokens.clear();
        self.subjects.clear();
        self.versions.clear();
        self.epoch += 1;
    }

    fn raise(&mut self, user_id: UserId, version: u64) -> u64 {
        if self.versions.len() >= ENTRIES_MAX && !self.versions.contains_key(&user_id) {
            self.forget_all();
        }
        let slot = self.versions.entry(user_id).or_insert(version);
        *slot = (*slot).max(version);
        *slot
    }

    fn forget_user(&mut self, user_id: UserId) {
        self.versions.remove(&user_id);
        self.tokens.retain(|_, s| s.user_id != user_id);
        self.subjects.retain(|_, id| *id != user_id);
        self.epoch += 1;
    }
}

/// What the listener has heard of its barrier pings.
#[derive(Clone, Copy, Default)]
struct Heard {
    /// The highest ping that came back.
    delivered: u64,
    live: bool,
}

/// The first PostgreSQL (`server_version_num`) that sends the notifications it was told of
/// before answering a query: the barrier needs it.
pub const VERSION_MIN: i64 = 150_000;

pub struct Cache {
    memory: Mutex<Memory>,
    /// Pings started.
    started: Mutex<u64>,
    /// Wakes the listener to send a ping.
    wanted: Notify,
    heard: watch::Sender<Heard>,
    /// Told every version heard (the push channel's pokes).
    raised: std::sync::OnceLock<VersionHook>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cache {
    /// A cache kept true by a listener on `config`'s database, which runs until the returned
    /// [`Listening`] is dropped. The listener's connection holds the [`SERVING_LOCK`], shared.
    pub fn start(mut config: tokio_postgres::Config) -> (Arc<Cache>, Listening) {
        config.application_name(APPLICATION_NAME);
        let cache = Cache::dark();
        let task = tokio::spawn(listen(cache.clone(), config));
        (cache, Listening(task.abort_handle()))
    }

    /// A cache that is never live (every read goes to the database), without a listener:
    /// for a command that serves no device (`import`, `export`, `restored`).
    pub fn dark() -> Arc<Cache> {
        Arc::new(Cache {
            memory: Mutex::default(),
            started: Mutex::new(0),
            wanted: Notify::new(),
            heard: watch::Sender::new(Heard::default()),
            raised: std::sync::OnceLock::new(),
        })
    }

    /// The epoch to hand back to [`Cache::remember_session`] after a read, taken before it;
    /// `None` while the memory is off.
    pub fn epoch(&self) -> Option<u64> {
        let memory = lock(&self.memory);
        memory.live.then_some(memory.epoch)
    }

    /// The session of a token, if remembered. Call [`Cache::fresh`] before trusting it.
    pub fn session(&self, token_hash: &[u8; 32]) -> Option<SessionInfo> {
        let memory = lock(&self.memory);
        if !memory.live {
            return None;
        }
        let id = memory.tokens.get(token_hash)?;
        Some(SessionInfo {
            user_id: id.user_id,
            username: id.username.clone(),
            version: *memory.versions.get(&id.user_id)?,
            last_used_ms: id.last_used_ms,
            deleted_at: id.deleted_at,
        })
    }

    /// The user and version of a site's subject, if remembered. Call [`Cache::fresh`]
    /// before trusting it.
    pub fn subject(&self, subject: &str) -> Option<(UserId, u64)> {
        let memory = lock(&self.memory);
        if !memory.live {
            return None;
        }
        let id = *memory.subjects.get(subject)?;
        Some((id, *memory.versions.get(&id)?))
    }

    /// Remembers a session read under `epoch`, unless something was forgotten since.
    pub fn remember_session(&self, epoch: u64, token_hash: &[u8; 32], session: &SessionInfo) {
        let mut memory = lock(&self.memory);
        if !memory.live || memory.epoch != epoch {
            return;
        }
        memory.raise(session.user_id, session.version);
        if memory.tokens.len() >= ENTRIES_MAX {
            memory.tokens.clear();
        }
        memory.tokens.insert(
            *token_hash,
            Identity {
                user_id: session.user_id,
                username: session.username.clone(),
                last_used_ms: session.last_used_ms,
                deleted_at: session.deleted_at,
            },
        );
    }

    /// Remembers a subject's user and version read under `epoch`, unless something was
    /// forgotten since.
    pub fn remember_subject(&self, epoch: u64, subject: &Arc<str>, user_id: UserId, version: u64) {
        let mut memory = lock(&self.memory);
        if !memory.live || memory.epoch != epoch {
            return;
        }
        memory.raise(user_id, version);
        if memory.subjects.len() >= ENTRIES_MAX {
            memory.subjects.clear();
        }
        memory.subjects.insert(subject.clone(), user_id);
    }

    /// Calls `hook` with every version heard from now on (once; a second hook is ignored).
    pub fn on_raised(&self, hook: VersionHook) {
        let _ = self.raised.set(hook);
    }

    /// Waits until every change committed before this call has been applied: true once it
    /// has, false when the memory is off or the barrier lags past [`LAG`] (then read the
    /// database).
    pub async fn fresh(&self) -> bool {
        let mut heard = self.heard.subscribe();
        if !heard.borrow().live {
            return false;
        }
        // A ping started after this point: the one after the last one started.
        let target = *lock(&self.started) + 1;
        self.wanted.notify_one();
        let passed =
            tokio::time::timeout(LAG, heard.wait_for(|h| h.delivered >= target || !h.live)).await;
        matches!(passed, Ok(Ok(h)) if h.live && h.delivered >= target)
    }

    /// Ping `n` came back: everything committed before it started has been applied.
    fn delivered(&self, n: u64) {
        self.heard.send_if_modified(|h| {
            let later = n > h.delivered;
            h.delivered = h.delivered.max(n);
            later
        });
    }

    /// Applies one notification.
    fn heard(&self, channel: &str, payload: &str) {
        if channel != CHANNEL {
            return;
        }
        let mut memory = lock(&self.memory);
        let mut words = payload.split(' ');
        let parsed = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("v"), Some(id), Some(version), None) => id
                .parse()
                .ok()
                .zip(version.parse().ok())
                .map(|(id, version)| {
                    memory.raise(id, version);
                    if let Some(hook) = self.raised.get() {
                        hook(id, version);
                    }
                }),
            (Some("u"), Some(id), None, None) => id.parse().ok().map(|id| memory.forget_user(id)),
            (Some(EVERYTHING), None, None, None) => {
                memory.forget_all();
                Some(())
            }
            (Some("t"), Some(hex), None, None) => token_of(hex).map(|token| {
                memory.tokens.remove(&token);
                memory.epoch += 1;
            }),
            _ => None,
        };
        if parsed.is_none() {
            // Not understood: nothing remembered can be trusted.
            tracing::warn!(
                payload,
                "an unknown change notification; forgetting everything"
            );
            memory.forget_all();
        }
    }

    fn go_live(&self) {
        let mut memory = lock(&self.memory);
        memory.forget_all();
        memory.live = true;
        drop(memory);
        self.heard.send_modify(|h| h.live = true);
    }

    fn go_dark(&self) {
        let mut memory = lock(&self.memory);
        memory.forget_all();
        memory.live = false;
        drop(memory);
        self.heard.send_modify(|h| h.live = false);
    }

    fn start_ping(&self) -> u64 {
        let mut started = lock(&self.started);
        *started += 1;
        *started
    }
}

/// A 64-digit hex token hash.
fn token_of(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut token = [0u8; 32];
    for (i, byte) in token.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(token)
}

/// Stops the listener when dropped (with the store that owns it).
pub struct Listening(tokio::task::AbortHandle);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Subscribes, serves barriers until the connection fails or lags, goes dark, waits, again.
async fn listen(cache: Arc<Cache>, config: tokio_postgres::Config) {
    let mut wait = RECONNECT_MIN;
    loop {
        let (was_live, reason) = subscribed(&cache, &config).await;
        cache.go_dark();
        tracing::warn!(%reason, "change notifications stopped; polls read the database until they resume");
        if was_live {
            wait = RECONNECT_MIN;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// One subscription: returns whether it went live, and why it ended.
async fn subscribed(cache: &Arc<Cache>, config: &tokio_postgres::Config) -> (bool, String) {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return (false, format!("cannot connect: {e}")),
    };
    let (ended, mut end) = oneshot::channel();
    let heard = cache.clone();
    let driver = tokio::spawn(async move {
        let reason = loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => heard.heard(n.channel(), n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("connection failed: {e}"),
                None => break "connection closed".to_owned(),
            }
        };
        let _ = ended.send(reason);
    });
    let _driver = Listening(driver.abort_handle());
    let version = match server_version(&client).await {
        Ok(version) => version,
        Err(e) => return (false, format!("cannot read the server's version: {e}")),
    };
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        return (false, format!("LISTEN failed: {e}"));
    }
    // Held as long as this connection lives (it waits while `sinkron restored` holds it).
    let (a, b) = SERVING_LOCK;
    let serving = format!("SELECT pg_advisory_lock_shared({a}, {b})");
    if let Err(e) = client.batch_execute(&serving).await {
        return (false, format!("cannot take the serving lock: {e}"));
    }
    if version < VERSION_MIN {
        // Heard all the same: the push channel's pokes come from these notifications.
        tracing::warn!(
            version,
            "PostgreSQL before 15 gives no barrier: every poll reads the database"
        );
        return (true, end.await.unwrap_or_default());
    }
    cache.go_live();
    tracing::info!("listening for changes: polls are answered from memory");
    let mut aged = tokio::time::interval_at(tokio::time::Instant::now() + AGE_MAX, AGE_MAX);
    loop {
        tokio::select! {
            reason = &mut end => return (true, reason.unwrap_or_default()),
            _ = aged.tick() => {
                lock(&cache.memory).forget_all();
                continue;
            }
            () = cache.wanted.notified() => {}
        }
        let n = cache.start_ping();
        // An empty query: one message each way, nothing parsed, planned or locked. The
        // notifications it waits for come before its answer, and the driver above applies
        // each before it reads on.
        match tokio::time::timeout(LAG, client.batch_execute("")).await {
            Ok(Ok(())) => cache.delivered(n),
            Ok(Err(e)) => return (true, format!("barrier failed: {e}")),
            Err(_) => return (true, format!("a barrier took longer than {LAG:?}")),
        }
    }
}

/// The server's `server_version_num`, e.g. 150004.
async fn server_version(client: &tokio_postgres::Client) -> Result<i64, String> {
    let rows = client
        .simple_query("SHOW server_version_num")
        .await
        .map_err(|e| e.to_string())?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
            _ => None,
        })
        .ok_or_else(|| "no version in the answer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user_id: UserId, version: u64) -> SessionInfo {
        SessionInfo {
            user_id,
            username: "alice".into(),
            version,
            last_used_ms: 1,
            deleted_at: 0,
        }
    }

    fn live() -> Cache {
        let cache = Cache {
            memory: Mutex::default(),
            started: Mutex::new(0),
            wanted: Notify::new(),
            heard: watch::Sender::new(Heard::default()),
            raised: std::sync::OnceLock::new(),
        };
        cache.go_live();
        cache
    }

    #[test]
    fn a_notification_heard_during_a_read_wins_over_the_read() {
        let cache = live();
        let epoch = cache.epoch().unwrap();
        // The read saw version 3; a push to 4 was announced before the read was remembered.
        cache.heard(CHANNEL, "v 7 4");
        cache.remember_session(epoch, &[1; 32], &session(7, 3));
        assert_eq!(cache.session(&[1; 32]).unwrap().version, 4);
        cache.heard(CHANNEL, "v 7 5");
        assert_eq!(cache.session(&[1; 32]).unwrap().version, 5);
        cache.heard(CHANNEL, "v 7 2");
        assert_eq!(cache.session(&[1; 32]).unwrap().version, 5, "never lowered");
    }

    #[test]
    fn a_read_that_began_before_a_sign_out_is_not_remembered() {
        let cache = live();
        let epoch = cache.epoch().unwrap();
        cache.heard(CHANNEL, &format!("t {}", "01".repeat(32)));
        cache.remember_session(epoch, &[1; 32], &session(7, 3));
        assert!(cache.session(&[1; 32]).is_none());
        // A read after it is.
        let epoch = cache.epoch().unwrap();
        cache.remember_session(epoch, &[1; 32], &session(7, 3));
        assert!(cache.session(&[1; 32]).is_some());
        cache.heard(CHANNEL, &format!("t {}", "01".repeat(32)));
        assert!(cache.session(&[1; 32]).is_none(), "the sign-out forgets it");
    }

    #[test]
    fn a_user_change_forgets_the_users_sessions_and_subject() {
        let cache = live();
        let epoch = cache.epoch().unwrap();
        cache.remember_session(epoch, &[1; 32], &session(7, 3));
        cache.remember_session(epoch, &[2; 32], &session(8, 3));
        cache.remember_subject(epoch, &Arc::from("s7"), 7, 3);
        cache.heard(CHANNEL, "u 7");
        assert!(cache.session(&[1; 32]).is_none());
        assert!(cache.subject("s7").is_none());
        assert_eq!(cache.session(&[2; 32]).unwrap().version, 3, "others stay");
    }

    #[test]
    fn an_unknown_notification_or_a_restore_forgets_everything() {
        for payload in ["x", "v 7", "v seven 3", "t 0102", "u 7 8", "", EVERYTHING] {
            let cache = live();
            let epoch = cache.epoch().unwrap();
            cache.remember_session(epoch, &[1; 32], &session(7, 3));
            cache.heard(CHANNEL, payload);
            assert!(cache.session(&[1; 32]).is_none(), "{payload:?}");
        }
    }

    #[test]
    fn nothing_is_answered_or_remembered_while_dark() {
        let cache = live();
        let epoch = cache.epoch().unwrap();
        cache.remember_session(epoch, &[1; 32], &session(7, 3));
        cache.go_dark();
        assert!(cache.session(&[1; 32]).is_none());
        assert!(cache.epoch().is_none());
        cache.remember_session(epoch, &[1; 32], &session(7, 3));
        cache.go_live();
        assert!(
            cache.session(&[1; 32]).is_none(),
            "a new subscription starts empty"
        );
        cache.remember_session(epoch, &[1; 32], &session(7, 3));
        assert!(
            cache.session(&[1; 32]).is_none(),
            "a read from before it is stale"
        );
    }

    #[tokio::test]
    async fn a_barrier_waits_for_a_ping_started_after_it() {
        let cache = Arc::new(live());
        // Ping 1 is in flight when the request comes: it needs ping 2.
        assert_eq!(cache.start_ping(), 1);
        let waiting = tokio::spawn({
            let cache = cache.clone();
            async move { cache.fresh().await }
        });
        tokio::task::yield_now().await;
        cache.delivered(1);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "ping 1 left before the request");
        assert_eq!(cache.start_ping(), 2);
        cache.delivered(2);
        assert!(waiting.await.unwrap());
        // Going dark releases every waiter at once, untrusted.
        let waiting = tokio::spawn({
            let cache = cache.clone();
            async move { cache.fresh().await }
        });
        tokio::task::yield_now().await;
        cache.go_dark();
        assert!(!waiting.await.unwrap());
    }
}
