//! The client sync engine: one browser tab's (or one native device's) sync state, as a
//! sans-IO state machine.
//!
//! The engine decides everything — what to persist, what to tell other tabs, when to pull and
//! push, what wins — and does nothing itself. A driver (the browser's TypeScript, the native
//! tokio client, the simulation) feeds it what happened and executes what it asks for:
//!
//! * **Getters** read the merged view ([`Engine::get`], [`Engine::collection`]) and the
//!   [`Status`].
//! * **`handle_*`** report what happened: a timer fired, visibility, focus, connectivity,
//!   leadership, a message from another tab, an HTTP reply.
//! * **Mutators** carry the app's commands: [`Engine::write`], [`Engine::sign_in`],
//!   [`Engine::sign_out`], [`Engine::flush`], and the `restore_*` calls that load what a
//!   previous run persisted.
//! * **`poll_*`** say what to do next. After every input the driver drains
//!   [`Engine::poll_command`] until it returns `None`, then asks [`Engine::poll_timeout`] for
//!   the next deadline and calls [`Engine::handle_timeout`] when it passes. Waking early is
//!   harmless.
//!
//! Every input carries `now` in milliseconds since the Unix epoch; the engine reads no clock
//! and no entropy (the seed comes in at construction).
//!
//! ## State
//! The view of a record is the newest (by `(updatedAt, clientId)`) of three layers:
//! * `confirmed` — what the server holds, each record tagged with the server's per-user
//!   `version`; server data replaces it only with a higher version, so a stale reply or a late
//!   message from another tab can never roll it back;
//! * the `outbox` — this tab's writes not yet acknowledged, coalesced per key;
//! * `foreign` — other tabs' writes not yet acknowledged, learned from their broadcasts.
//!
//! Only the leader tab polls. Any tab pushes its own outbox. Every page of server data a tab
//! receives is broadcast with the cursor it started from and the cursor it ends at, so other
//! tabs apply it without a request and adopt the cursor when it continues their own.

use alloc::borrow::ToOwned;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::hash::{BuildHasherDefault, Hasher};

use hashbrown::HashMap;

use crate::clock::Clock;
use crate::protocol::{Change, Mutation, MUTATIONS_MAX};
use crate::record::{Record, RecordKey};
use crate::rng::Rng;

/// A deterministic hash map: the same inputs give the same iteration order on every run and
/// every platform, which keeps simulations reproducible. Keys are the user's own record keys,
/// so a small multiplicative hash (FxHash's) is enough, and it is a fraction of SipHash's size
/// in WebAssembly.
type Map<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The engine's policies. Every duration is in milliseconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Time between background pulls of the leader tab.
    pub interval_ms: u64,
    /// Random spread of each interval, in percent either way, so tabs and devices do not
    /// pull in lockstep.
    pub interval_jitter_percent: u64,
    /// A focus, visibility, online or sign-in trigger within this long after the last pull
    /// is dropped: a burst of such events costs one request.
    pub trigger_gap_ms: u64,
    /// A push waits this long after the last write, so a burst of writes is one request.
    pub push_delay_ms: u64,
    /// ... but a steady stream of writes never delays a push longer than this.
    pub push_wait_ms_max: u64,
    /// Most mutations in one push.
    pub push_batch_max: usize,
    /// Budget of a `keepalive` flush body; browsers refuse keepalive bodies above 64 KiB.
    pub keepalive_bytes_max: usize,
    /// First retry delay cap after a failure; doubles with each failure in a row.
    pub backoff_base_ms: u64,
    /// Largest retry delay cap. A retry never waits longer than `interval_ms` either: a
    /// server that is down costs each device at most what polling it would.
    pub backoff_ms_max: u64,
    /// Pull the account's state right after sign-in (else at the next interval or focus).
    pub pull_on_sign_in: bool,
    /// Pull when the window gets focus or the tab becomes visible again (a tab that opens
    /// still learns the state, from the leader).
    pub pull_on_focus: bool,
    /// Pull when the browser comes back online.
    pub pull_on_online: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval_ms: 30_000,
            interval_jitter_percent: 10,
            trigger_gap_ms: 2_000,
            push_delay_ms: 300,
            push_wait_ms_max: 3_000,
            push_batch_max: 100,
            keepalive_bytes_max: 60 * 1024,
            backoff_base_ms: 1_000,
            backoff_ms_max: 60_000,
            pull_on_sign_in: true,
            pull_on_focus: true,
            pull_on_online: true,
        }
    }
}

impl Config {
    /// The defaults with another pull interval.
    pub fn with_interval(interval_ms: u64) -> Config {
        Config {
            interval_ms,
            ..Config::default()
        }
    }
}

/// What the engine asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Write to this device's durable storage (shared by the device's tabs).
    Persist(Persist),
    /// Post to the device's other tabs.
    Broadcast(TabMessage),
    /// Send an HTTP request and report its outcome with [`Engine::handle_reply`] and this id.
    /// With `fresh_token` the request retries one the server answered `token_expired`: the
    /// driver asks the site's token provider for a new token instead of a cached one.
    Send {
        id: u64,
        request: Request,
        fresh_token: bool,
    },
    /// Ask for (`true`) or give up (`false`) the device's leader lock.
    Leadership(bool),
    /// Tell the UI something changed.
    Notify(Notice),
}

/// Storage writes. `scope` is the signed-in user's id, or `None` for the guest's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Store a confirmed record (tombstones included).
    Record {
        scope: Option<String>,
        change: Change,
    },
    /// Drop every confirmed record of the scope (a `reset` follows).
    ClearRecords { scope: Option<String> },
    /// Store the pull cursor.
    Cursor {
        scope: Option<String>,
        cursor: Option<String>,
    },
    /// Replace this tab's outbox and its numbering. Kept even when `mutations` is empty
    /// (until the scope is wiped): a tab that reloads under the same client id restores
    /// `next_id`, so it never reuses an id the server has already acknowledged.
    Outbox {
        scope: Option<String>,
        client_id: String,
        /// The id the client's next write takes; every id below it has been used.
        next_id: u64,
        mutations: Vec<Mutation>,
    },
    /// Forget everything of the scope: records, cursor, outboxes.
    Wipe { scope: Option<String> },
}

/// What the UI should re-read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// These records' view may have changed.
    Changed(Vec<RecordKey>),
    /// Every record may have changed (sign-in, sign-out, reset).
    Everything,
    /// [`Engine::status`] changed.
    Status,
}

/// An HTTP request the engine wants sent. The driver adds the bearer token; for a pull with
/// a cursor it also sends `If-None-Match: "<cursor>"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /api/user/me[?lastSync=cursor]`
    Pull { last_sync: Option<String> },
    /// `POST /api/user/me/changes`
    Push {
        client_id: String,
        mutations: Vec<Mutation>,
        last_sync: Option<String>,
        /// Send with `fetch(..., {keepalive: true})`: the page is being hidden or closed.
        keepalive: bool,
    },
}

/// A page of server state, from a pull or a push answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub cursor: String,
    pub changes: Vec<Change>,
    pub more: bool,
    pub reset: bool,
    pub server_time: u64,
}

/// The outcome of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 200 to a pull.
    Pulled(Page),
    /// 200 to a push.
    Pushed { ack: u64, page: Page },
    /// 304 to a pull: nothing changed.
    NotModified,
    /// No answer (network error, timeout) or an error status.
    Failed(Failure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No HTTP answer at all.
    Network,
    /// 401: the session is gone; the engine stops calling the API until the next sign-in.
    Unauthorized,
    /// 401 `token_expired`: the site's token has expired. The engine sends the request again
    /// at once with a fresh token (`Command::Send::fresh_token`); if that one is refused as
    /// well, it is [`Failure::Unauthorized`]. Queued writes stay queued throughout.
    TokenExpired,
    /// 429 or 5xx: try again later, not before `Retry-After` if the server gave one.
    Unavailable { retry_after_ms: Option<u64> },
    /// 409 `mutation_id_reused`: the push carried ids at or below the server's `ack` for
    /// this client id with writes the server has never seen, so this client lost its
    /// numbering. Nothing was applied; the writes are renumbered above `ack` and sent again.
    IdsReused { ack: u64 },
    /// Any other 4xx: the request can never succeed as it is.
    Rejected { status: u16 },
}

impl Failure {
    /// What an answer other than 200 or 304 means: the one classification every driver
    /// uses. `status` 0 means no answer at all (a network error, or a body that could not be
    /// read); `retry_after_ms` is the `Retry-After` header; `ack` is the `ack` field of the
    /// error body, which only a 409 `mutation_id_reused` carries; `code` is the error body's
    /// `code`, if it had one.
    pub fn from_status(
        status: u16,
        retry_after_ms: Option<u64>,
        ack: Option<u64>,
        code: Option<&str>,
    ) -> Failure {
        match (status, ack) {
            (0 | 408, _) => Failure::Network,
            (401, _) if code == Some("token_expired") => Failure::TokenExpired,
            (401, _) => Failure::Unauthorized,
            (409, Some(ack)) => Failure::IdsReused { ack },
            (429 | 500..=599, _) => Failure::Unavailable { retry_after_ms },
            _ => Failure::Rejected { status },
        }
    }
}

/// A message between the tabs of one device. Tabs ignore messages of another scope, so one
/// user's records never reach a tab showing another user (or a guest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TabMessage {
    pub scope: Option<String>,
    pub body: TabBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TabBody {
    /// A tab wrote a record (optimistically; not acknowledged yet).
    Wrote {
        id: u64,
        key: RecordKey,
        record: Record,
    },
    /// A tab received server state: the changes after cursor `from`, up to cursor `to`.
    Synced {
        from: Option<String>,
        to: String,
        reset: bool,
        changes: Vec<Change>,
    },
    /// The server acknowledged a tab's mutations up to `ack`.
    Acked { client_id: String, ack: u64 },
    /// A tab that is not the leader was focused: the leader should pull.
    PullWanted,
    /// A tab signed in; every tab of the device follows.
    SignedIn,
    /// A tab signed out; every tab of the device wipes the user's data.
    SignedOut,
}

/// What the sync status UI shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub signed_in: bool,
    pub online: bool,
    pub visible: bool,
    pub leader: bool,
    /// Writes of this tab not yet acknowledged by the server.
    pub pending: usize,
    /// A request is on its way.
    pub syncing: bool,
    /// When this tab last received server state (local time).
    pub last_synced_at: Option<u64>,
    pub error: Option<SyncError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncError {
    /// The server did not answer; the engine is retrying with backoff.
    Unreachable,
    /// The session ended (401); sign in again.
    Unauthorized,
    /// The server refused a push with this status; those writes were dropped.
    Rejected(u16),
}

/// Why a write was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    InvalidCollection,
    InvalidKey,
    /// The value is not a JSON object text.
    InvalidValue,
    ValueTooLarge,
}

impl WriteError {
    pub fn code(&self) -> &'static str {
        match self {
            WriteError::InvalidCollection => "invalid_collection",
            WriteError::InvalidKey => "invalid_key",
            WriteError::InvalidValue => "invalid_value",
            WriteError::ValueTooLarge => "value_too_large",
        }
    }
}

#[derive(Clone, Debug)]
struct Stored {
    record: Record,
    version: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    id: u64,
    key: RecordKey,
    record: Record,
}

#[derive(Clone, Debug)]
struct Acked {
    /// The request whose answer acknowledged the write.
    by: u64,
    /// The first request id sent after the acknowledgement arrived. Ids order sends, not
    /// answers: a request sent earlier (a pull beside a keepalive flush, say) may have been
    /// answered from a state before the write.
    after: u64,
    pending: Pending,
}

#[derive(Clone, Debug)]
struct InFlight {
    id: u64,
    /// The cursor the request was sent with (for pulls and pushes).
    last_sync: Option<String>,
    /// For pushes: the highest mutation id sent.
    pushed_max: Option<u64>,
    /// A keepalive flush runs beside the regular request and its failure is ignored.
    keepalive: bool,
    /// Sent with a token fresh from the site's provider (a retry after `token_expired`).
    fresh_token: bool,
}

/// The sync engine of one tab. See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    rng: Rng,
    clock: Clock,
    client_id: String,
    user: Option<String>,
    visible: bool,
    online: bool,
    leader: bool,
    /// Whether we currently hold or wait for the leader lock.
    leadership_asked: bool,
    /// A push was acknowledged without the server's state (it was sent without a cursor), so
    /// its writes stay in view until a later answer of this tab shows that state: one must
    /// come even if there is nothing else to send.
    state_wanted: bool,
    /// Whether the driver has reported visibility yet.
    visibility_reported: bool,
    unauthorized: bool,
    /// The last request was refused with `token_expired`: the next one asks for a new token.
    fresh_token: bool,

    confirmed: Map<RecordKey, Stored>,
    cursor: Option<String>,
    outbox: Vec<Pending>,
    next_id: u64,
    /// Every mutation id at or below this was sent at least once and must not change.
    sent_max: u64,
    /// A few entries at most (one per key other tabs are writing right now): a list is
    /// smaller than another hash map in the browser build.
    foreign: Vec<Pending>,
    /// This tab's acknowledged writes, kept in view until an answer shows the server state
    /// after them (so they never flicker out of view): the acknowledging push's own answer,
    /// or the answer to a request sent after the acknowledgement arrived.
    acked: Vec<Acked>,

    in_flight: Vec<InFlight>,
    next_request_id: u64,
    pull_due: Option<u64>,
    pull_wanted: bool,
    last_pull_at: Option<u64>,
    first_write_at: Option<u64>,
    last_write_at: Option<u64>,
    failures: u32,
    retry_at: Option<u64>,
    last_synced_at: Option<u64>,
    error: Option<SyncError>,

    commands: VecDeque<Command>,
    last_status: Option<Status>,
    /// The latest `now` seen, to notice the device clock jumping backwards.
    last_now: Option<u64>,
}

impl Engine {
    /// A fresh engine: a guest, visible and online until told otherwise. `seed` must differ
    /// between tabs (the browser passes `crypto.getRandomValues`); it picks the client id and
    /// the jitter.
    pub fn new(config: Config, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let client_id = rng.client_id();
        Engine {
            config,
            rng,
            clock: Clock::default(),
            client_id,
            user: None,
            visible: true,
            online: true,
            leader: false,
            leadership_asked: false,
            state_wanted: false,
            visibility_reported: false,
            unauthorized: false,
            fresh_token: false,
            confirmed: Map::default(),
            cursor: None,
            outbox: Vec::new(),
            next_id: 1,
            sent_max: 0,
            foreign: Vec::new(),
            acked: Vec::new(),
            in_flight: Vec::new(),
            next_request_id: 1,
            pull_due: None,
            pull_wanted: false,
            last_pull_at: None,
            first_write_at: None,
            last_write_at: None,
            failures: 0,
            retry_at: None,
            last_synced_at: None,
            error: None,
            commands: VecDeque::new(),
            last_status: None,
            last_now: None,
        }
    }

    // ----- getters -----

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The signed-in user's id, or `None` for a guest.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The newest version of a record this tab knows of, tombstones included.
    pub fn get(&self, key: &RecordKey) -> Option<&Record> {
        let mut best = self.confirmed.get(key).map(|s| &s.record);
        let own = self.outbox.iter().rev().find(|p| &p.key == key);
        let acked = self
            .acked
            .iter()
            .rev()
            .map(|a| &a.pending)
            .find(|p| &p.key == key);
        let candidates = own.into_iter().chain(acked).chain(self.foreign_get(key));
        for candidate in candidates {
            if best.is_none_or(|b| candidate.record.wins_over(b)) {
                best = Some(&candidate.record);
            }
        }
        best
    }

    /// The live records of a collection (tombstones left out), in no particular order.
    pub fn collection(&self, collection: &str) -> Vec<(&str, &Record)> {
        let mut out: Vec<(&str, &Record)> = Vec::new();
        // Each key once: confirmed keys first, then unconfirmed ones not seen before.
        let unconfirmed = self
            .outbox
            .iter()
            .chain(self.acked.iter().map(|a| &a.pending))
            .map(|p| &p.key)
            .chain(self.foreign.iter().map(|p| &p.key));
        let mut extra: Vec<&RecordKey> = Vec::new();
        for key in unconfirmed {
            if key.collection == collection
                && !self.confirmed.contains_key(key)
                && !extra.contains(&key)
            {
                extra.push(key);
            }
        }
        let confirmed = self.confirmed.keys().filter(|k| k.collection == collection);
        for key in confirmed.chain(extra) {
            if let Some(record) = self.get(key).filter(|r| !r.is_tombstone()) {
                out.push((key.key.as_str(), record));
            }
        }
        out
    }

    pub fn status(&self) -> Status {
        Status {
            signed_in: self.user.is_some(),
            online: self.online,
            visible: self.visible,
            leader: self.leader,
            pending: self.outbox.len(),
            syncing: !self.in_flight.is_empty(),
            last_synced_at: self.last_synced_at,
            error: self.error.clone(),
        }
    }

    /// This tab's unacknowledged mutations, oldest first.
    pub fn outbox(&self) -> Vec<Mutation> {
        self.outbox.iter().map(Pending::mutation).collect()
    }

    // ----- poll -----

    /// The next thing to do, or `None` when there is nothing until [`Engine::poll_timeout`].
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Engine::handle_timeout`] should be called next, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.regular_in_flight() {
            return None;
        }
        let mut deadline: Option<u64> = None;
        let mut consider = |t: u64| deadline = Some(deadline.map_or(t, |d| d.min(t)));
        if self.can_push() {
            if let Some(t) = self.push_due() {
                consider(t);
            }
        }
        if self.state_wanted
            && self.outbox.is_empty()
            && self.api_usable()
            && (self.can_pull() || self.cursor.is_some())
        {
            consider(self.retry_at.unwrap_or(0));
        }
        if self.can_pull() {
            if self.pull_wanted {
                consider(self.retry_at.unwrap_or(0));
            } else if let Some(t) = self.pull_due {
                consider(t.max(self.retry_at.unwrap_or(0)));
            }
        }
        deadline
    }

    // ----- handle -----

    pub fn handle_timeout(&mut self, now: u64) {
        self.observe_time(now);
        self.finish(now);
    }

    /// The tab became visible (`true`) or hidden (`false`). Hiding flushes the outbox with a
    /// keepalive request and gives up leadership, so a hidden tab never polls and a visible
    /// one takes over.
    /// The first report (the driver's, when the tab opens) counts as a change: a tab that
    /// opens visible wants the current state like one that becomes visible.
    pub fn handle_visibility(&mut self, now: u64, visible: bool) {
        self.observe_time(now);
        let first = !self.visibility_reported;
        self.visibility_reported = true;
        if self.visible == visible && !first {
            return self.finish(now);
        }
        self.visible = visible;
        // Opening counts as becoming visible, focus setting or not: a new tab learns the state.
        if visible && (first || self.config.pull_on_focus) {
            self.want_pull(now);
        } else if !visible {
            self.flush_outbox();
        }
        self.finish(now);
    }

    /// The window got focus.
    pub fn handle_focus(&mut self, now: u64) {
        self.observe_time(now);
        if self.config.pull_on_focus {
            self.want_pull(now);
        }
        self.finish(now);
    }

    /// The browser went online or offline.
    pub fn handle_online(&mut self, now: u64, online: bool) {
        self.observe_time(now);
        if self.online != online {
            self.online = online;
            if online {
                // Coming back is news: retry at once instead of waiting out the backoff.
                self.failures = 0;
                self.retry_at = None;
                if self.config.pull_on_online {
                    self.want_pull(now);
                }
            }
        }
        self.finish(now);
    }

    /// The driver got (`true`) or lost (`false`) the device's leader lock.
    pub fn handle_leadership(&mut self, now: u64, leader: bool) {
        self.observe_time(now);
        if leader && !self.leadership_asked {
            // A grant that arrives after we gave the request up: hand it straight back.
            self.commands.push_back(Command::Leadership(false));
            return self.finish(now);
        }
        if self.leader != leader {
            self.leader = leader;
            if leader {
                // A new leader pulls at once: it may be a tab shown again, which is a trigger
                // like focus. With focus pulls off, a tab that pulled within the interval (it
                // led until it was hidden) keeps that cadence instead.
                let interval = self.config.interval_ms;
                let cadence = self
                    .last_pull_at
                    .filter(|&t| !self.config.pull_on_focus && now < t.saturating_add(interval));
                match cadence {
                    Some(t) => self.schedule_next_pull(t),
                    None => self.pull_wanted = true,
                }
            } else {
                self.pull_due = None;
            }
        }
        self.finish(now);
    }

    /// A message from another tab of this device.
    pub fn handle_tab_message(&mut self, now: u64, message: TabMessage) {
        self.observe_time(now);
        let ours = message.scope == self.user;
        match message.body {
            TabBody::SignedIn => {
                if let Some(user) = message.scope {
                    if !ours {
                        self.enter(Some(user));
                    }
                }
            }
            TabBody::SignedOut if ours && self.user.is_some() => {
                self.enter(None);
            }
            _ if !ours => {}
            TabBody::SignedOut => {}
            TabBody::Wrote { id, key, record } => {
                self.clock.observe(record.updated_at);
                let newer = self
                    .foreign_get(&key)
                    .is_none_or(|f| record.wins_over(&f.record));
                if newer {
                    self.foreign.retain(|f| f.key != key);
                    self.foreign.push(Pending {
                        id,
                        key: key.clone(),
                        record,
                    });
                    self.notify_changed(vec![key]);
                }
            }
            TabBody::Synced {
                from,
                to,
                reset,
                changes,
            } => {
                let continues = from == self.cursor;
                // The device's leader saw the server's state: so does this tab.
                self.last_synced_at = Some(now);
                let keys = self.apply_changes(reset, changes);
                if continues || reset {
                    self.set_cursor(Some(to));
                }
                if reset {
                    self.commands.push_back(Command::Notify(Notice::Everything));
                } else {
                    self.notify_changed(keys);
                }
            }
            TabBody::Acked { client_id, ack } => {
                let before = self.foreign.len();
                let mut keys = Vec::new();
                self.foreign.retain(|f| {
                    let keep = !(f.record.client_id == client_id && f.id <= ack);
                    if !keep {
                        keys.push(f.key.clone());
                    }
                    keep
                });
                if self.foreign.len() != before {
                    self.notify_changed(keys);
                }
            }
            TabBody::PullWanted => {
                if self.leader {
                    match (self.pulled_recently(now), self.cursor.clone()) {
                        // The state was just pulled: share that instead of pulling again.
                        (true, Some(cursor)) if self.last_synced_at.is_some() => {
                            self.broadcast(TabBody::Synced {
                                from: Some(cursor.clone()),
                                to: cursor,
                                reset: false,
                                changes: Vec::new(),
                            });
                        }
                        _ => self.want_pull(now),
                    }
                }
            }
        }
        self.finish(now);
    }

    /// The outcome of the request sent as `Command::Send { id, .. }`. Replies to requests
    /// the engine no longer waits for (sent before a sign-out, say) are ignored.
    pub fn handle_reply(&mut self, now: u64, id: u64, reply: Reply) {
        self.observe_time(now);
        let Some(index) = self.in_flight.iter().position(|f| f.id == id) else {
            return self.finish(now);
        };
        let request = self.in_flight.swap_remove(index);
        match reply {
            Reply::Pulled(page) => {
                self.succeeded();
                self.last_pull_at = Some(now);
                let complete = !page.more;
                self.apply_page(now, request.last_sync, page);
                if complete {
                    self.settle_acked(|a| request.id >= a.after);
                }
            }
            Reply::NotModified => {
                self.succeeded();
                self.last_pull_at = Some(now);
                self.last_synced_at = Some(now);
                self.settle_acked(|a| request.id >= a.after);
                self.schedule_next_pull(now);
                // The other tabs learn that the device is up to date, too.
                if let Some(cursor) = request.last_sync {
                    self.broadcast(TabBody::Synced {
                        from: Some(cursor.clone()),
                        to: cursor,
                        reset: false,
                        changes: Vec::new(),
                    });
                }
            }
            Reply::Pushed { ack, page } => {
                self.succeeded();
                self.acknowledge(ack, Some(request.id));
                // Sent with a cursor, the answer holds the server state after this push.
                // Sent without one it holds no state, and its cursor must not be adopted.
                if request.last_sync.is_some() {
                    let complete = !page.more;
                    self.apply_page(now, request.last_sync, page);
                    if complete {
                        self.settle_acked(|a| a.by == request.id || request.id >= a.after);
                    } else {
                        // The rest of the state follows in pages; a tab that does not poll
                        // asks for them itself.
                        self.state_wanted = !self.acked.is_empty();
                    }
                } else {
                    self.clock.sync_to_server(now, page.server_time);
                    if self.acked.iter().any(|a| a.by == request.id) {
                        self.state_wanted = true;
                    }
                }
            }
            Reply::Failed(_) if request.keepalive => {}
            Reply::Failed(Failure::TokenExpired) if !request.fresh_token => {
                // Again at once, with a new token: a push's mutations are still queued (so
                // the push is due now), a pull is asked for again.
                self.fresh_token = true;
                if request.pushed_max.is_none() {
                    self.pull_wanted = true;
                }
            }
            Reply::Failed(Failure::Unauthorized | Failure::TokenExpired) => {
                self.unauthorized = true;
                self.fresh_token = false;
                self.error = Some(SyncError::Unauthorized);
            }
            Reply::Failed(Failure::Rejected { status }) => {
                self.error = Some(SyncError::Rejected(status));
                match request.pushed_max {
                    // A push the server will never take: drop it rather than retry forever.
                    Some(max) => self.acknowledge(max, None),
                    // A pull with a cursor the server does not accept: what we hold is not
                    // from this server's history (a restored or replaced database, say), so
                    // none of it can be trusted to be newer. Start over from nothing.
                    None => {
                        self.confirmed.clear();
                        self.commands
                            .push_back(Command::Persist(Persist::ClearRecords {
                                scope: self.user.clone(),
                            }));
                        self.commands.push_back(Command::Notify(Notice::Everything));
                        self.set_cursor(None);
                        self.pull_wanted = true;
                    }
                }
            }
            Reply::Failed(Failure::IdsReused { ack }) => {
                if request.pushed_max.is_some() {
                    self.renumber_above(ack);
                }
            }
            Reply::Failed(Failure::Network) => self.failed(now, None),
            Reply::Failed(Failure::Unavailable { retry_after_ms }) => {
                self.failed(now, retry_after_ms)
            }
        }
        self.finish(now);
    }

    // ----- mutators -----

    /// Writes a record: `value` is JSON object text, or `None` to delete. The view, storage
    /// and the other tabs see it at once; the server gets it with the next push.
    pub fn write(
        &mut self,
        now: u64,
        collection: &str,
        key: &str,
        value: Option<String>,
    ) -> Result<(), WriteError> {
        crate::limits::check_write(collection, key, value.as_deref())?;
        self.observe_time(now);
        let record = Record {
            value,
            updated_at: self.clock.stamp(now),
            client_id: self.client_id.clone(),
        };
        let key = RecordKey::new(collection, key);
        let sent_max = self.sent_max;
        // Coalesce with the queued write to the same key unless that one was already sent.
        let id = match self.outbox.iter_mut().rev().find(|p| p.key == key) {
            Some(p) if p.id > sent_max => {
                p.record = record.clone();
                p.id
            }
            _ => {
                let id = self.next_id;
                self.next_id += 1;
                self.outbox.push(Pending {
                    id,
                    key: key.clone(),
                    record: record.clone(),
                });
                id
            }
        };
        self.persist_outbox();
        self.broadcast(TabBody::Wrote {
            id,
            key: key.clone(),
            record,
        });
        self.notify_changed(vec![key]);
        self.first_write_at.get_or_insert(now);
        self.last_write_at = Some(now);
        self.finish(now);
        Ok(())
    }

    /// Signs in as `user` (the server's user id). The guest's writes stay queued and are
    /// pushed into the account, then the account's state is pulled. The other tabs follow.
    pub fn sign_in(&mut self, now: u64, user: &str) {
        self.observe_time(now);
        if self.user.as_deref() == Some(user) {
            // Signing in again after a 401 resumes syncing with the queued writes intact.
            if self.unauthorized {
                self.unauthorized = false;
                self.error = None;
                self.pull_wanted = true;
            }
            return self.finish(now);
        }
        if self.user.is_some() {
            self.sign_out(now);
        }
        self.enter(Some(user.to_owned()));
        self.broadcast(TabBody::SignedIn);
        self.finish(now);
    }

    /// Signs out: sends what is still queued (keepalive), then wipes the user's data from
    /// memory and storage and becomes an empty guest with a new client id. The other tabs
    /// follow.
    pub fn sign_out(&mut self, now: u64) {
        self.observe_time(now);
        if self.user.is_none() {
            return self.finish(now);
        }
        self.flush_outbox();
        self.broadcast(TabBody::SignedOut);
        self.enter(None);
        self.finish(now);
    }

    /// Sends the whole outbox at once with `keepalive` (within the keepalive budget): the
    /// page is being hidden or closed. What does not fit stays queued and persisted.
    pub fn flush(&mut self, now: u64) {
        self.observe_time(now);
        self.flush_outbox();
        self.finish(now);
    }

    fn flush_outbox(&mut self) {
        if !self.can_push() {
            return;
        }
        let mut bytes = 64 + self.client_id.len();
        let mut mutations = Vec::new();
        for p in &self.outbox {
            bytes += p.approximate_bytes();
            if bytes > self.config.keepalive_bytes_max || mutations.len() == MUTATIONS_MAX {
                break;
            }
            mutations.push(p.mutation());
        }
        if mutations.is_empty() {
            return;
        }
        let last_sync = self.cursor.clone();
        self.send_push(mutations, last_sync, true);
    }

    /// Loads a confirmed record persisted by an earlier run (before any other input).
    pub fn restore_record(&mut self, change: Change) {
        self.clock.observe(change.updated_at);
        self.store_change(change);
    }

    /// Loads the persisted cursor.
    pub fn restore_cursor(&mut self, cursor: Option<String>) {
        self.cursor = cursor;
    }

    /// Loads a persisted outbox and takes over its client id and numbering (`next_id`, as
    /// the last [`Persist::Outbox`] stored it), so a reloaded tab resends its writes under
    /// the same ids, the server dedupes them, and its new writes take ids the server has
    /// never acknowledged. The restored mutations may have reached the server already, so a
    /// new write never joins them: it takes a new id (the server would skip it as a retry
    /// otherwise). A driver with nothing stored for a client id restores nothing and keeps
    /// the engine's fresh client id: an id is only ever reused together with its numbering.
    pub fn restore_outbox(&mut self, client_id: String, next_id: u64, mutations: Vec<Mutation>) {
        self.client_id = client_id;
        self.outbox.clear();
        self.next_id = next_id.max(1);
        #[cfg(feature = "planted-bugs")]
        if crate::planted::planted(crate::planted::Bug::ForgottenNumbering) {
            self.next_id = 1;
        }
        for m in mutations {
            self.clock.observe(m.updated_at);
            self.next_id = self.next_id.max(m.id + 1);
            self.sent_max = self.sent_max.max(m.id);
            self.outbox.push(Pending {
                id: m.id,
                key: RecordKey::new(m.collection, m.key),
                record: Record {
                    value: m.value,
                    updated_at: m.updated_at,
                    client_id: self.client_id.clone(),
                },
            });
        }
    }

    /// Loads the signed-in user persisted by the driver (before any other input).
    pub fn restore_user(&mut self, user: Option<String>) {
        self.user = user;
    }

    // ----- internals -----

    /// Keeps deadlines meaningful when the device clock jumps backwards: every local time the
    /// engine holds moves back with it. Otherwise a clock set back an hour would hold every
    /// push, retry and pull for an hour, and treat every trigger as "just pulled".
    fn observe_time(&mut self, now: u64) {
        if let Some(back) = self.last_now.and_then(|last| last.checked_sub(now)) {
            let shift = |t: &mut Option<u64>| *t = t.map(|t| t.saturating_sub(back));
            shift(&mut self.pull_due);
            shift(&mut self.last_pull_at);
            shift(&mut self.first_write_at);
            shift(&mut self.last_write_at);
            shift(&mut self.retry_at);
            shift(&mut self.last_synced_at);
        }
        self.last_now = Some(now);
    }

    /// Switches to `user`'s scope (or the guest's), dropping every trace of the previous one.
    fn enter(&mut self, user: Option<String>) {
        let previous = self.user.take();
        let was_guest = previous.is_none();
        self.in_flight.clear();
        self.confirmed.clear();
        self.foreign.clear();
        self.acked.clear();
        self.cursor = None;
        self.pull_due = None;
        self.pull_wanted = false;
        self.last_pull_at = None;
        self.failures = 0;
        self.retry_at = None;
        self.last_synced_at = None;
        self.error = None;
        self.unauthorized = false;
        self.fresh_token = false;
        self.state_wanted = false;
        self.commands.push_back(Command::Persist(Persist::Wipe {
            scope: previous.clone(),
        }));
        if was_guest && user.is_some() {
            // The guest's own writes move into the account.
        } else {
            self.outbox.clear();
            self.client_id = self.rng.client_id();
            self.next_id = 1;
            self.sent_max = 0;
            self.first_write_at = None;
            self.last_write_at = None;
        }
        self.user = user;
        if self.user.is_some() {
            // The guest's writes are due at once.
            self.first_write_at = None;
            self.last_write_at = None;
            self.pull_wanted = self.config.pull_on_sign_in;
        }
        self.persist_outbox();
        self.commands.push_back(Command::Notify(Notice::Everything));
    }

    fn finish(&mut self, now: u64) {
        self.sync_leadership();
        self.schedule(now);
        let status = self.status();
        if self.last_status.as_ref() != Some(&status) {
            self.last_status = Some(status);
            self.commands.push_back(Command::Notify(Notice::Status));
        }
    }

    /// Asks for leadership while signed in and visible; gives it up otherwise.
    fn sync_leadership(&mut self) {
        let want = self.user.is_some() && self.visible && !self.unauthorized;
        if want != self.leadership_asked {
            self.leadership_asked = want;
            self.commands.push_back(Command::Leadership(want));
            if !want {
                self.leader = false;
                self.pull_due = None;
            }
        }
    }

    /// Sends the next request if one is due.
    fn schedule(&mut self, now: u64) {
        if self.regular_in_flight() {
            return;
        }
        if self.can_pull() && !self.pull_wanted && self.pull_due.is_none() {
            self.schedule_next_pull(now);
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        if self.can_push() && self.push_due().is_some_and(|t| t <= now) {
            let mutations: Vec<Mutation> = self
                .outbox
                .iter()
                .take(self.config.push_batch_max.min(MUTATIONS_MAX))
                .map(Pending::mutation)
                .collect();
            // A tab that has never pulled learns the account's state first, so its own
            // writes do not flicker out of view between the push and the pull.
            if self.cursor.is_some() || !self.can_pull() {
                let last_sync = self.cursor.clone();
                self.send_push(mutations, last_sync, false);
                return;
            }
            self.pull_wanted = true;
        }
        // Cleared only by an answer that carries the state, so a lost request is retried.
        if self.state_wanted && self.outbox.is_empty() && self.api_usable() {
            if self.can_pull() {
                self.pull_wanted = true;
            } else if let Some(cursor) = self.cursor.clone() {
                // Not the leader: an empty push with our cursor answers with the state.
                self.send_push(Vec::new(), Some(cursor), false);
                return;
            }
        }
        if self.can_pull() && (self.pull_wanted || self.pull_due.is_some_and(|t| t <= now)) {
            self.pull_wanted = false;
            self.pull_due = None;
            self.last_pull_at = Some(now);
            let last_sync = self.cursor.clone();
            let id = self.next_request();
            let fresh_token = core::mem::take(&mut self.fresh_token);
            self.in_flight.push(InFlight {
                id,
                last_sync: last_sync.clone(),
                pushed_max: None,
                keepalive: false,
                fresh_token,
            });
            self.commands.push_back(Command::Send {
                id,
                request: Request::Pull { last_sync },
                fresh_token,
            });
        }
    }

    fn send_push(&mut self, mutations: Vec<Mutation>, last_sync: Option<String>, keepalive: bool) {
        let pushed_max = mutations.last().map(|m| m.id);
        self.sent_max = self.sent_max.max(pushed_max.unwrap_or(0));
        let id = self.next_request();
        // A keepalive flush beside the regular requests leaves the retry's new token to them.
        let fresh_token = !keepalive && core::mem::take(&mut self.fresh_token);
        self.in_flight.push(InFlight {
            id,
            last_sync: last_sync.clone(),
            pushed_max,
            keepalive,
            fresh_token,
        });
        if !keepalive {
            self.first_write_at = None;
            self.last_write_at = None;
        }
        self.commands.push_back(Command::Send {
            id,
            request: Request::Push {
                client_id: self.client_id.clone(),
                mutations,
                last_sync,
                keepalive,
            },
            fresh_token,
        });
    }

    fn next_request(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    fn regular_in_flight(&self) -> bool {
        self.in_flight.iter().any(|f| !f.keepalive)
    }

    fn api_usable(&self) -> bool {
        self.user.is_some() && self.online && !self.unauthorized
    }

    fn can_push(&self) -> bool {
        self.api_usable() && !self.outbox.is_empty()
    }

    fn can_pull(&self) -> bool {
        self.api_usable() && self.visible && self.leader
    }

    /// When the outbox should be pushed: shortly after the last write, but never much later
    /// than the first one; at once for writes left over from before (a restart, a sign-in,
    /// a failed push).
    fn push_due(&self) -> Option<u64> {
        if self.outbox.is_empty() {
            return None;
        }
        let due = match (self.first_write_at, self.last_write_at) {
            (Some(first), Some(last)) => {
                (last + self.config.push_delay_ms).min(first + self.config.push_wait_ms_max)
            }
            _ => 0,
        };
        Some(due.max(self.retry_at.unwrap_or(0)))
    }

    /// A trigger (focus, visibility, online, sign-in): pull now, unless a pull just happened.
    fn want_pull(&mut self, now: u64) {
        if !self.api_usable() || !self.visible {
            return;
        }
        if !self.leader {
            // The leader pulls for the whole device.
            self.broadcast(TabBody::PullWanted);
            return;
        }
        if !self.pulled_recently(now) {
            self.pull_wanted = true;
        }
    }

    /// Within the trigger gap of the last pull: its state is still fresh.
    fn pulled_recently(&self, now: u64) -> bool {
        self.last_pull_at
            .is_some_and(|t| now < t + self.config.trigger_gap_ms)
    }

    fn schedule_next_pull(&mut self, now: u64) {
        let interval = self.config.interval_ms;
        let spread = interval * self.config.interval_jitter_percent / 100;
        let jittered = interval - spread + self.rng.below_or_equal(2 * spread);
        self.pull_due = Some(now + jittered);
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        if matches!(self.error, Some(SyncError::Unreachable)) {
            self.error = None;
        }
    }

    /// Exponential backoff with full jitter, never sooner than the server's `Retry-After`.
    fn failed(&mut self, now: u64, retry_after_ms: Option<u64>) {
        self.failures = self.failures.saturating_add(1);
        let exponent = (self.failures - 1).min(20);
        let cap = (self.config.backoff_base_ms << exponent)
            .min(self.config.backoff_ms_max)
            .min(self.config.interval_ms);
        let delay = self
            .rng
            .below_or_equal(cap)
            .max(retry_after_ms.unwrap_or(0));
        self.retry_at = Some(now + delay);
        self.error = Some(SyncError::Unreachable);
    }

    /// Drops this tab's mutations up to `ack` and tells the other tabs. Writes the server
    /// took (`by` is the acknowledging request) stay in view until its state is known.
    fn acknowledge(&mut self, ack: u64, by: Option<u64>) {
        let before = self.outbox.len();
        let mut kept = Vec::with_capacity(self.outbox.len());
        for p in self.outbox.drain(..) {
            if p.id > ack {
                kept.push(p);
            } else if let Some(request) = by {
                self.acked.push(Acked {
                    by: request,
                    after: self.next_request_id,
                    pending: p,
                });
            }
        }
        self.outbox = kept;
        if self.outbox.len() != before {
            self.persist_outbox();
            self.broadcast(TabBody::Acked {
                client_id: self.client_id.clone(),
                ack,
            });
        }
    }

    /// Forgets acknowledged writes whose acknowledging request passes `settled` (an answer
    /// that shows the server state after them). The state is still wanted while any remain:
    /// an answer to a request sent before a write was acknowledged does not show it.
    fn settle_acked(&mut self, settled: impl Fn(&Acked) -> bool) {
        let mut keys = Vec::new();
        self.acked.retain(|a| {
            let keep = !settled(a);
            if !keep {
                keys.push(a.pending.key.clone());
            }
            keep
        });
        self.state_wanted = !self.acked.is_empty();
        self.notify_changed(keys);
    }

    fn apply_page(&mut self, now: u64, from: Option<String>, page: Page) {
        self.clock.sync_to_server(now, page.server_time);
        // A pull without a cursor is the whole state: it replaces whatever we had.
        let reset = page.reset || from.is_none();
        let keys = self.apply_changes(reset, page.changes.clone());
        self.set_cursor(Some(page.cursor.clone()));
        self.broadcast(TabBody::Synced {
            from,
            to: page.cursor,
            reset,
            changes: page.changes,
        });
        self.last_synced_at = Some(now);
        if reset {
            self.commands.push_back(Command::Notify(Notice::Everything));
        } else {
            self.notify_changed(keys);
        }
        if page.more {
            self.pull_wanted = true;
        } else {
            self.schedule_next_pull(now);
        }
    }

    /// Applies server changes to the confirmed layer; returns the keys touched.
    ///
    /// A `reset` page is the whole state, tombstones included, up to its highest version: a
    /// record it lacks at or below that version is gone (compacted). One we hold above it
    /// came from a newer answer (a reply or another tab's message can be older than what we
    /// hold) and stays, like any record against an older version.
    fn apply_changes(&mut self, reset: bool, changes: Vec<Change>) -> Vec<RecordKey> {
        if reset {
            let covered = changes.iter().map(|c| c.version).max().unwrap_or(0);
            self.confirmed.retain(|_, s| s.version > covered);
            self.commands
                .push_back(Command::Persist(Persist::ClearRecords {
                    scope: self.user.clone(),
                }));
            for (key, stored) in &self.confirmed {
                self.commands.push_back(Command::Persist(Persist::Record {
                    scope: self.user.clone(),
                    change: Change {
                        collection: key.collection.clone(),
                        key: key.key.clone(),
                        value: stored.record.value.clone(),
                        updated_at: stored.record.updated_at,
                        client_id: stored.record.client_id.clone(),
                        version: stored.version,
                    },
                }));
            }
        }
        let mut keys = Vec::new();
        for change in changes {
            self.clock.observe(change.updated_at);
            let key = RecordKey::new(change.collection.as_str(), change.key.as_str());
            if self.store_change(change.clone()) {
                self.commands.push_back(Command::Persist(Persist::Record {
                    scope: self.user.clone(),
                    change,
                }));
                keys.push(key);
            }
        }
        keys
    }

    /// Stores a server change unless a later version is already confirmed.
    fn store_change(&mut self, change: Change) -> bool {
        let key = RecordKey::new(change.collection, change.key);
        if self
            .confirmed
            .get(&key)
            .is_some_and(|s| s.version >= change.version)
        {
            return false;
        }
        let record = Record {
            value: change.value,
            updated_at: change.updated_at,
            client_id: change.client_id,
        };
        #[cfg(feature = "planted-bugs")]
        if crate::planted::planted(crate::planted::Bug::PullOverwritesPending) {
            self.outbox.retain(|p| p.key != key);
        }
        // Another tab's write is settled once the server holds it or something newer. The
        // server may hold it with an earlier `updatedAt` (clamped: it was stamped by a clock
        // running ahead), so "holds it" is the same writer and value, whatever the stamp:
        // otherwise the unclamped copy would outrank newer writes in this view forever.
        if self
            .foreign_get(&key)
            .is_some_and(|f| !f.record.wins_over(&record) || same_write(&f.record, &record))
        {
            self.foreign.retain(|f| f.key != key);
        }
        // This tab's acknowledged writes, once their exact stored copy arrives. Not by
        // `same_write`: an earlier write of this tab with the same value (a delete, a `{}`)
        // matches that too, and would hide the later one. A clamped copy is settled instead
        // by the answer that shows the state after the push (`settle_acked`).
        let before = self.acked.len();
        self.acked
            .retain(|a| !(a.pending.key == key && a.pending.record == record));
        if self.acked.len() != before {
            self.commands
                .push_back(Command::Notify(Notice::Changed(vec![key.clone()])));
        }
        self.confirmed.insert(
            key,
            Stored {
                record,
                version: change.version,
            },
        );
        true
    }

    fn set_cursor(&mut self, cursor: Option<String>) {
        if self.cursor != cursor {
            self.cursor = cursor.clone();
            self.commands.push_back(Command::Persist(Persist::Cursor {
                scope: self.user.clone(),
                cursor,
            }));
        }
    }

    fn persist_outbox(&mut self) {
        self.commands.push_back(Command::Persist(Persist::Outbox {
            scope: self.user.clone(),
            client_id: self.client_id.clone(),
            next_id: self.next_id,
            mutations: self.outbox(),
        }));
    }

    /// The server holds ids up to `ack` of this client id for other writes (this client's
    /// numbering was lost): every pending write takes a new id above both `ack` and every id
    /// this engine has used, and is sent again at once. Nothing is dropped, and a late copy
    /// of the refused batch (a keepalive flush, say) is refused the same way.
    fn renumber_above(&mut self, ack: u64) {
        self.next_id = self.next_id.max(ack.saturating_add(1));
        for p in &mut self.outbox {
            p.id = self.next_id;
            self.next_id += 1;
        }
        self.persist_outbox();
    }

    fn broadcast(&mut self, body: TabBody) {
        self.commands.push_back(Command::Broadcast(TabMessage {
            scope: self.user.clone(),
            body,
        }));
    }

    /// Another tab's unacknowledged write to `key`, if any.
    fn foreign_get(&self, key: &RecordKey) -> Option<&Pending> {
        self.foreign.iter().find(|f| &f.key == key)
    }

    fn notify_changed(&mut self, keys: Vec<RecordKey>) {
        if !keys.is_empty() {
            self.commands
                .push_back(Command::Notify(Notice::Changed(keys)));
        }
    }
}

impl Pending {
    fn mutation(&self) -> Mutation {
        Mutation {
            id: self.id,
            collection: self.key.collection.clone(),
            key: self.key.key.clone(),
            value: self.record.value.clone(),
            updated_at: self.record.updated_at,
        }
    }

    /// The size of this mutation in a JSON body, roughly but never below the real size.
    fn approximate_bytes(&self) -> usize {
        96 + self.key.collection.len()
            + self.key.key.len() * 6
            + self.record.value.as_ref().map_or(4, String::len)
    }
}

/// Whether `stored` is `written` as the server keeps it: the same writer and value; the
/// server may have clamped the timestamp.
fn same_write(written: &Record, stored: &Record) -> bool {
    written.client_id == stored.client_id
        && written.value == stored.value
        && stored.updated_at <= written.updated_at
}

#[cfg(test)]
mod tests;
