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
//! The view of a record is the newest (by `(updatedAt, clientId)`) of its layers (the `view`
//! module):
//! * `confirmed` — what the server holds, each record tagged with the server's per-user
//!   `version`; server data replaces it only with a higher version, so a stale reply or a late
//!   message from another tab can never roll it back;
//! * the `outbox` — this tab's writes not yet acknowledged, coalesced per key, and `acked` —
//!   its acknowledged writes until an answer shows the server's state after them;
//! * `foreign` — other tabs' writes not yet acknowledged, learned from their broadcasts.
//!
//! The driver-facing types are in `command` (re-exported here), the policies in [`Config`].
//!
//! ## Deadlines
//! Every deadline (push, pull, poll, the state after a push, the retry's backoff) is one entry
//! of a timer table (the `timers` module), set where it is decided: a write arms the push, an
//! answer plans the next poll, a failure the backoff, losing the leader lock stops the poll.
//! [`Engine::poll_timeout`] is the earliest entry that can act; at the end of every input the
//! engine sends for the first one that is due. Both ask one predicate when an entry can act,
//! so the engine never asks to be woken for nothing, and a request it wants always has a
//! deadline.
//!
//! Only the leader tab polls. Any tab pushes its own outbox. Every page of server data a tab
//! receives is broadcast with the cursor it started from and the cursor it ends at, so other
//! tabs apply it without a request and adopt the cursor when it continues their own.

use alloc::borrow::ToOwned;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::clock::Clock;
use crate::protocol::{Change, Mutation, MUTATIONS_MAX, WHOLE_STATE};
use crate::record::{holds_fields_of, sets_true, Record, RecordKey};
use crate::rng::Rng;

mod command;
mod config;
mod timers;
mod view;

pub use command::{
    Command, Failure, Notice, Page, Persist, Reply, Request, Status, SyncError, TabBody, TabMessage,
};
pub use config::Config;
use timers::{Timer, TimerTable};
use view::{Pending, View};

/// The collection whose oldest records leave a full device storage first: the one that
/// grows without end (the server caps it too).
pub const EVICTABLE: &str = "history";

/// Why a write was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    InvalidCollection,
    InvalidKey,
    /// The value is not a JSON object text.
    InvalidValue,
    ValueTooLarge,
    /// The fields a write names break [`crate::limits::check_fields`].
    InvalidFields,
}

impl WriteError {
    pub fn code(&self) -> &'static str {
        match self {
            WriteError::InvalidCollection => "invalid_collection",
            WriteError::InvalidKey => "invalid_key",
            WriteError::InvalidValue => "invalid_value",
            WriteError::ValueTooLarge => "value_too_large",
            WriteError::InvalidFields => "invalid_fields",
        }
    }
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

/// The writes a tab still had queued as it left a user, flushed on the way out. They stay
/// stored as that user's (`Persist::Wipe` keeps them) until the flush's answer confirms all
/// of them (its `ack` reaches `last`); otherwise they are sent at the user's next sign-in
/// here, whole (a confirmed one again ties with itself: the server keeps one value).
#[derive(Debug)]
struct Parked {
    request: u64,
    scope: String,
    client_id: String,
    last: u64,
}

/// A cursor as a number, when it is a decimal one (the server's are). Folded by hand: the
/// standard parser costs the browser build more than all of this rule.
fn cursor_number(cursor: &str) -> Option<u64> {
    if cursor.is_empty() {
        return None;
    }
    cursor.bytes().try_fold(0u64, |n, b| {
        let digit = b.wrapping_sub(b'0');
        (digit < 10).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Whether a cursor names a place inside a whole state sent in pages ([`WHOLE_STATE`]): 19
/// digits or more (2^62 has 19; versions, below 2^53, at most 16).
fn inside_whole(cursor: &str) -> bool {
    cursor.len() > 18
}

/// Whether the value of the queued write `p` holds a sticky field ([`Config::sticky`], a
/// name in any collection) `true` where `new`, a later write of its key, does not: `new` may
/// then neither take `p`'s place nor undo it unsent, or the server might never keep that `true`.
/// (A write of other fields that holds the `true` as the record showed it is kept too, which
/// is safe; `new` takes a queued write's place only setting the same fields, or whole.)
#[inline(never)]
fn sticky_over(sticky: &[String], p: &Pending, new: &Record) -> bool {
    #[cfg(feature = "planted-bugs")]
    if crate::planted::planted(crate::planted::Bug::StickyCoalesced) {
        return false;
    }
    let holds = |r: &Record, name| r.value.as_deref().is_some_and(|v| sets_true(v, name));
    sticky
        .iter()
        .any(|name| holds(&p.record, name) && !holds(new, name))
}

/// An acknowledgement of every write of a client id (a gone tab's, taken over by
/// [`Engine::unpark`]): the largest whole number a JavaScript message carries exactly.
const ACK_ALL: u64 = (1 << 53) - 1;

/// A whole state arriving in pages (see `Engine::apply_changes`).
#[derive(Debug)]
struct Whole {
    /// The cursor of its latest page, which its next page continues from.
    at: String,
    /// The highest version among its rows so far.
    top: u64,
}

/// Where a page of server changes stands: the cursor it was asked from (`None`: the whole
/// state), its own cursor, whether it starts a whole state (`reset`) and whether pages
/// follow, and whether this tab would move its cursor to it (outside a whole state):
/// `adopted`, its own answers, and another tab's pages that continue from its cursor.
struct PageOf<'a> {
    from: Option<&'a str>,
    to: &'a str,
    reset: bool,
    more: bool,
    adopted: bool,
    /// Another tab's message: what the whole state it ended dropped.
    gone: Option<&'a [RecordKey]>,
}

/// Where the poke stream stands ([`Config::pokes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Closed,
    /// The driver holds it open.
    Open,
    /// It ended unasked for: opened again after the server's next answer to a request, so a
    /// stream that cannot stay open costs no more than polling.
    Ended,
    /// The server has no poke stream (404): never again in this tab.
    Refused,
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
    /// Whether the driver has reported visibility yet.
    visibility_reported: bool,
    unauthorized: bool,
    /// The last request was refused with `token_expired`: the next one asks for a new token.
    fresh_token: bool,

    view: View,
    /// Records of this scope were evicted from the storage (`Persist::Evict`) since it was
    /// last written whole.
    storage_cut: bool,
    cursor: Option<String>,
    /// The whole state being received, while its pages arrive.
    whole: Option<Whole>,
    next_id: u64,
    /// Every mutation id at or below this was sent at least once and must not change.
    sent_max: u64,

    in_flight: Vec<InFlight>,
    next_request_id: u64,
    /// The first request sent since the user last signed in again as the same user.
    signed_in_from: u64,
    /// Every deadline: see `timers`.
    timers: TimerTable,
    last_pull_at: Option<u64>,
    /// The last pull was a server-rendered page's snapshot ([`Engine::handle_snapshot`]),
    /// and this tab has not led since.
    from_snapshot: bool,
    /// The interval the server last asked for (`Sinkron-Poll-Interval`), in ms.
    server_interval_ms: Option<u64>,
    /// The scopes whose data from before Sinkron is adopted ([`Engine::adopt`]).
    adopted: Vec<Option<String>>,
    /// Signed-out sessions the server has not ended yet, oldest first ([`Engine::end_session`]);
    /// the newest is ended first.
    ending: Vec<String>,
    /// The request ending the newest of them, when one is out.
    ending_in_flight: Option<u64>,
    ending_failures: u32,
    /// The flush a signing-out tab sent, until it is answered ([`Engine::sign_out`]).
    parked: Option<Parked>,
    /// The first id of the writes queued since the last sign-in, for the takeovers it asked
    /// for (0 once a later pull asks again): those below it were queued before (the
    /// guest's, written after the sign-out that parked what [`Engine::unpark`] then takes).
    unparked_from: u64,
    /// Inside [`Engine::sign_in`], which asks for the takeovers itself.
    signing_in: bool,
    /// The first write of the burst the next push takes: a push never waits much longer.
    /// Hot writes (`Config::hot`) are not part of bursts.
    first_write_at: Option<u64>,
    /// When the last push carrying hot writes was sent.
    hot_sent_at: Option<u64>,
    /// A keepalive flush failed and what is queued has not been pushed at once since.
    flush_failed: bool,
    failures: u32,
    /// Another tab's request failed ([`TabBody::Unreachable`]) since this tab last heard
    /// the server's state: the device is cut off, though this tab's own requests have not
    /// failed (it may have made none).
    told_cut_off: bool,
    last_synced_at: Option<u64>,
    error: Option<SyncError>,
    /// The poke stream ([`Config::pokes`]).
    stream: Stream,
    /// The highest version a poke announced since the last pull was sent.
    poked: u64,

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
            visibility_reported: false,
            unauthorized: false,
            fresh_token: false,
            view: View::default(),
            storage_cut: false,
            cursor: None,
            whole: None,
            next_id: 1,
            sent_max: 0,
            in_flight: Vec::new(),
            next_request_id: 1,
            signed_in_from: 0,
            timers: TimerTable::default(),
            last_pull_at: None,
            from_snapshot: false,
            server_interval_ms: None,
            adopted: Vec::new(),
            ending: Vec::new(),
            ending_in_flight: None,
            ending_failures: 0,
            parked: None,
            unparked_from: 0,
            signing_in: false,
            first_write_at: None,
            hot_sent_at: None,
            flush_failed: false,
            failures: 0,
            told_cut_off: false,
            last_synced_at: None,
            error: None,
            stream: Stream::Closed,
            poked: 0,
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

    /// Whether this tab is receiving a whole state in pages (for the simulation's checks).
    pub fn receiving_whole_state(&self) -> bool {
        self.whole.is_some()
    }

    /// The copy of a record this tab holds from the server (under any write not yet
    /// acknowledged), tombstones included: for the simulation's checks.
    pub fn confirmed(&self, key: &RecordKey) -> Option<&Record> {
        self.view.confirmed(key)
    }

    /// The newest version of a record this tab knows of, tombstones included.
    pub fn get(&self, key: &RecordKey) -> Option<&Record> {
        self.view.get(key)
    }

    /// The live records of a collection (tombstones left out), in no particular order.
    pub fn collection(&self, collection: &str) -> Vec<(&str, &Record)> {
        self.view.collection(collection, None)
    }

    /// [`Engine::collection`] with `only`: that key's record alone (if live), in a list of
    /// none or one.
    pub fn records(&self, collection: &str, only: Option<&str>) -> Vec<(&str, &Record)> {
        self.view.collection(collection, only)
    }

    pub fn status(&self) -> Status {
        Status {
            signed_in: self.user.is_some(),
            online: self.online,
            visible: self.visible,
            leader: self.leader,
            pending: self.view.outbox.len(),
            syncing: !self.in_flight.is_empty(),
            last_synced_at: self.last_synced_at,
            // Until the user signs in again, what a request still out learns later (no
            // network, a refused push) does not hide that the session is over.
            // Told that another tab's request failed, this one shows the device cut off too.
            error: if self.unauthorized {
                Some(SyncError::Unauthorized)
            } else if self.told_cut_off && self.error.is_none() {
                Some(SyncError::Unreachable)
            } else {
                self.error.clone()
            },
        }
    }

    /// When this tab last saw the server's state (its own sync or its leader's), on its
    /// clock: [`Status::last_synced_at`] without building the whole status.
    pub fn last_synced_at(&self) -> Option<u64> {
        self.last_synced_at
    }

    /// Whether this tab counts itself cut off from the server: the browser says offline, or
    /// its last request failed (a captive portal, a dead network behind a live link), or
    /// another tab's did since this tab last heard the server's state (the leader's pulls, a
    /// tab playing beside it that has made no request yet). A hot write made then is stamped
    /// as of the last sync, not now (see `Engine::write_stamped`).
    pub fn cut_off(&self) -> bool {
        !self.online || self.failures > 0 || self.told_cut_off
    }

    /// This tab's unacknowledged mutations, oldest first.
    pub fn outbox(&self) -> Vec<Mutation> {
        self.view.outbox(usize::MAX, usize::MAX)
    }

    // ----- poll -----

    /// The next thing to do, or `None` when there is nothing until [`Engine::poll_timeout`].
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Engine::handle_timeout`] should be called next, if ever: the earliest deadline
    /// in the timer table of a timer that can act.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.next(&|timer| self.ready(timer))
    }

    // ----- handle -----

    /// The deadline from [`Engine::poll_timeout`] has come: sends what is due. Waking early
    /// is harmless.
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
        self.push_flushed();
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
                // Coming back is news: retry at once instead of waiting out the backoff, and
                // push what waited, hot writes included.
                self.failures = 0;
                self.told_cut_off = false;
                self.timers.stop(Timer::Retry);
                if !self.view.outbox.is_empty() {
                    self.timers.set(Timer::Push, 0);
                }
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
                // like focus (the user wants the current state, however recent the last
                // pull). A page that started from its snapshot, or with focus pulls off a tab
                // that pulled within the interval (it led until it was hidden), keeps that
                // cadence instead.
                let interval = self.interval();
                let keep = core::mem::take(&mut self.from_snapshot) || !self.config.pull_on_focus;
                let cadence = self
                    .last_pull_at
                    .filter(|&t| keep && now < t.saturating_add(interval));
                match cadence {
                    Some(t) => self.plan_poll(t),
                    None => self.timers.set(Timer::Pull, 0),
                }
            } else {
                self.timers.stop(Timer::Poll);
            }
        }
        self.finish(now);
    }

    /// A message from another tab of this device.
    pub fn handle_tab_message(&mut self, now: u64, message: TabMessage) {
        self.observe_time(now);
        let ours = message.scope == self.user;
        match message.body {
            // Another tab signed its user in, or this tab's out: this one follows.
            TabBody::SignedIn | TabBody::SignedOut => {
                let to = match message.body {
                    TabBody::SignedIn => message.scope,
                    _ => None,
                };
                if to != self.user && (to.is_some() || ours) {
                    self.park();
                    self.enter(to, false);
                }
            }
            _ if !ours => {}
            TabBody::Wrote { id, key, record } => {
                self.clock.observe(record.updated_at);
                if self.view.hear_write(id, &key, record) {
                    self.notify_changed(vec![key]);
                }
            }
            TabBody::Synced {
                from,
                to,
                reset,
                more,
                changes,
                gone,
            } => {
                let continues = from == self.cursor;
                // The device's leader saw the server's state: so does this tab, and what its
                // own requests last met (it may have led through an outage) is over. Their
                // hold (`Timer::Retry`, a server's `Retry-After`) stands.
                self.last_synced_at = Some(now);
                self.told_cut_off = false;
                let over = true;
                #[cfg(feature = "planted-bugs")]
                let over =
                    over && !crate::planted::planted(crate::planted::Bug::UnreachableLingers);
                if over {
                    self.failures = 0;
                    if matches!(self.error, Some(SyncError::Unreachable)) {
                        self.error = None;
                    }
                }
                let of = PageOf {
                    from: from.as_deref(),
                    to: &to,
                    reset,
                    more,
                    adopted: continues,
                    gone: gone.as_deref(),
                };
                let (keys, gone) = self.apply_changes(of, &changes);
                let ended = gone.is_some();
                if ended {
                    self.notify_everything();
                } else {
                    self.notify_changed(keys);
                }
            }
            TabBody::Acked { client_id, ack } => self.hear_ack(&client_id, ack),
            TabBody::Unreachable => {
                self.told_cut_off = true;
                #[cfg(feature = "planted-bugs")]
                if crate::planted::planted(crate::planted::Bug::UnreachableIgnored) {
                    self.told_cut_off = false;
                }
            }
            TabBody::PullWanted => {
                if self.leader {
                    // The asking tab may have just opened and not heard that the device is
                    // cut off: told at once, not at this tab's next failure.
                    let told = self.cut_off();
                    #[cfg(feature = "planted-bugs")]
                    let told = told && !crate::planted::planted(crate::planted::Bug::AskerNotTold);
                    if told {
                        self.broadcast(TabBody::Unreachable);
                    }
                    match (self.pulled_recently(now), self.cursor.clone()) {
                        // The state was just pulled: share that instead of pulling again.
                        // Not inside a whole state: its cursor is no state to share; nor
                        // when that pull failed (cut off, this tab has none to share).
                        (true, Some(cursor))
                            if self.last_synced_at.is_some()
                                && self.whole.is_none()
                                && !self.cut_off() =>
                        {
                            self.broadcast(TabBody::Synced {
                                from: Some(cursor.clone()),
                                to: cursor,
                                reset: false,
                                more: false,
                                changes: Vec::new(),
                                gone: None,
                            });
                        }
                        _ => self.want_pull(now),
                    }
                }
            }
        }
        self.finish(now);
    }

    /// The state the site's server pulled for `user` (`GET /api/user/me` without a cursor)
    /// to render this page: when `user` is the one signed in here, it is taken as this tab's
    /// pull of `now`, a whole state applied like any (what is stored here and newer stays),
    /// so the page shows what it was rendered from and makes no first pull; the leader
    /// polls from its cursor an interval later. Returns whether it was taken: a snapshot of
    /// another user, or with no one signed in here, is not, nor one older than the stored
    /// cursor or records (a page from a cache), and the leader pulls at once as without one. An older
    /// one taken could bring back a record deleted since whose tombstone is gone, compacted
    /// on the server and dropped here by a whole state, and no later pull would correct it.
    /// (A cursor is read as a number here, as for what a whole state covers; a snapshot's
    /// cursor that is not one is taken only where no cursor that is one is stored.)
    pub fn handle_snapshot(&mut self, now: u64, user: &str, page: Page) -> bool {
        self.observe_time(now);
        let taken = self.user.as_deref() == Some(user) && self.not_older(&page.cursor);
        if taken {
            self.timers.stop(Timer::Pull);
            self.last_pull_at = Some(now);
            self.from_snapshot = true;
            self.apply_page(now, None, page);
        }
        self.finish(now);
        taken
    }

    /// Whether `cursor` (a snapshot's) is at or past the stored one and the version of every
    /// record stored: with no cursor stored (none is while a whole state arrives, or after a
    /// sign-in) the records still tell how far the device got. The first page of a
    /// whole state in pages names a place in it, not a version (`PROTOCOL.md`, Paging): it
    /// counts as older than any stored cursor (reading the version the whole state began at
    /// out of it would tell, for more bytes than the browser build has).
    fn not_older(&self, cursor: &str) -> bool {
        #[cfg(feature = "planted-bugs")]
        if crate::planted::planted(crate::planted::Bug::StaleSnapshotTaken) {
            return true;
        }
        #[cfg(feature = "planted-bugs")]
        if crate::planted::planted(crate::planted::Bug::SnapshotIgnoresRecords) {
            let version = cursor_number(cursor).filter(|&n| n < WHOLE_STATE);
            return version.unwrap_or(0) >= self.cursor_version();
        }
        let version = cursor_number(cursor).filter(|&n| n < WHOLE_STATE);
        version.unwrap_or(0) >= self.cursor_version().max(self.view.top_version())
    }

    /// The stored cursor as a version (0 for none, or one that is not a number).
    fn cursor_version(&self) -> u64 {
        self.cursor.as_deref().and_then(cursor_number).unwrap_or(0)
    }

    /// The server's `Sinkron-Poll-Interval` on an answer (converted to ms): how often it
    /// wants to be polled. Call it before [`Engine::handle_reply`] with that answer. From the
    /// next poll on, the leader waits the longer of its own interval and this one, at most
    /// [`Config::interval_ms_max`], with the usual jitter; retries wait at most as long.
    pub fn handle_poll_interval(&mut self, interval_ms: u64) {
        self.server_interval_ms = Some(interval_ms);
    }

    /// The poke stream says the user's version is now `version`. The leader pulls unless its
    /// cursor is there already (a poke for its own push, say); with a request in flight, it
    /// waits for that answer first.
    pub fn handle_poke(&mut self, now: u64, version: u64) {
        self.observe_time(now);
        if self.stream == Stream::Open {
            self.poked = self.poked.max(version);
        }
        self.finish(now);
    }

    /// The poke stream ended without [`Command::Pokes`]`(false)`, with the HTTP status of its
    /// answer (0: none, or cut off). Pulls go on as before; the stream is opened again after
    /// the server's next answer, or never, if the server has none (404).
    pub fn handle_pokes_ended(&mut self, now: u64, status: u16) {
        self.observe_time(now);
        if self.stream == Stream::Open {
            self.stream = if status == 404 {
                Stream::Refused
            } else {
                Stream::Ended
            };
        }
        self.finish(now);
    }

    /// The outcome of the request sent as `Command::Send { id, .. }`. Replies to requests
    /// the engine no longer waits for (sent before a sign-out, say) are ignored.
    pub fn handle_reply(&mut self, now: u64, id: u64, reply: Reply) {
        self.observe_time(now);
        if self.ending_in_flight == Some(id) {
            self.session_ended(now, reply);
            return self.finish(now);
        }
        if let Some(parked) = self.parked.take_if(|p| p.request == id) {
            if matches!(reply, Reply::Pushed { ack, .. } if ack >= parked.last) {
                self.commands
                    .push_back(Command::Persist(Persist::DropOutbox {
                        scope: Some(parked.scope),
                        client_id: parked.client_id,
                    }));
            }
            return self.finish(now);
        }
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
                    self.settle_acked(None, request.id);
                }
            }
            Reply::NotModified => {
                self.succeeded();
                self.last_pull_at = Some(now);
                self.last_synced_at = Some(now);
                self.settle_acked(None, request.id);
                self.plan_poll(now);
                // The other tabs learn that the device is up to date, too.
                if let Some(cursor) = request.last_sync {
                    self.broadcast(TabBody::Synced {
                        from: Some(cursor.clone()),
                        to: cursor,
                        reset: false,
                        more: false,
                        changes: Vec::new(),
                        gone: None,
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
                        self.settle_acked(Some(request.id), request.id);
                    } else {
                        // The rest of the state follows in pages; a tab that does not poll
                        // asks for them itself.
                        self.want_state(!self.view.acked.is_empty());
                    }
                } else {
                    self.clock.sync_to_server(now, page.server_time);
                    if self.view.acked.iter().any(|a| a.by == request.id) {
                        self.want_state(true);
                    }
                }
            }
            // A keepalive flush's failures are left to the regular requests (a push at once,
            // once the page is visible: `push_flushed`), but for a 401: the session is over,
            // whichever request learns it first.
            Reply::Failed(ref f) if request.keepalive && *f != Failure::Unauthorized => {
                self.flush_failed = true;
                self.push_flushed()
            }
            Reply::Failed(Failure::TokenExpired) if !request.fresh_token => {
                // Again at once, with a new token: a push's mutations are still queued (so
                // the push is due now), a pull is asked for again.
                self.fresh_token = true;
                if request.pushed_max.is_none() {
                    self.timers.set(Timer::Pull, 0);
                }
            }
            // A refusal of what was sent before the user signed in again is the ended
            // session's: what that carried goes again, with the new one.
            #[cfg(feature = "planted-bugs")]
            Reply::Failed(Failure::Unauthorized | Failure::TokenExpired)
                if crate::planted::planted(crate::planted::Bug::RetryAfterUnauthorized) =>
            {
                self.failed(now, None)
            }
            Reply::Failed(Failure::Unauthorized | Failure::TokenExpired) => {
                if request.id >= self.signed_in_from {
                    self.unauthorized = true;
                    self.fresh_token = false;
                }
            }
            Reply::Failed(Failure::Rejected { status, mutation }) => {
                self.error = Some(SyncError::Rejected(status));
                match request.pushed_max {
                    Some(max) => {
                        // The one write the server names as refused keeps its id and is
                        // dropped with the push; the others (nothing of the push was
                        // applied) take new ids and go again at once. Without a name, the
                        // push is one the server will never take: dropped rather than
                        // retried forever.
                        let refused = mutation
                            .filter(|&m| m <= max && self.view.outbox.iter().any(|p| p.id == m));
                        #[cfg(feature = "planted-bugs")]
                        let refused = refused.filter(|_| {
                            !crate::planted::planted(crate::planted::Bug::RefusalDropsBatch)
                        });
                        if let Some(m) = refused {
                            self.renumber_above(max, m);
                        }
                        self.acknowledge(max, None);
                        self.push_leftovers();
                        // What was refused shows no more.
                        self.notify_everything();
                    }
                    // A pull the server refuses (a route or an origin it does not serve):
                    // nothing of the copy is in question. Tried again after a backoff.
                    None => self.failed(now, None),
                }
            }
            // What we hold is not from this server's history (a replaced database, say), so
            // none of it can be trusted to be newer: start over from nothing. A push's writes
            // were not applied; they stay queued and go again, after the whole state.
            Reply::Failed(Failure::CursorRefused) if request.last_sync.is_some() => {
                self.view.clear_confirmed();
                self.commands
                    .push_back(Command::Persist(Persist::ClearRecords {
                        scope: self.user.clone(),
                    }));
                self.notify_everything();
                self.set_cursor(None);
                self.timers.set(Timer::Pull, 0);
                if request.pushed_max.is_some() {
                    self.push_leftovers();
                }
            }
            Reply::Failed(Failure::IdsReused { ack }) => {
                if request.pushed_max.is_some() {
                    self.renumber_above(ack, 0);
                }
            }
            // An answer with nothing in it to a pull or a push is not one; nor is a refused
            // cursor that was never sent.
            Reply::Failed(Failure::Network | Failure::CursorRefused) | Reply::Done => {
                self.failed(now, None)
            }
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
        self.write_fields(now, collection, key, value, None)
    }

    /// A write that sets only `fields` of the record (`None`: the whole record), for a
    /// collection the server merges field by field ([`Mutation::fields`]): the app's value
    /// shows here at once, and on the server the other fields keep what other devices wrote.
    /// A write still queued for the key takes this one only when both set the same fields
    /// (and it is not a delete this one would undo); otherwise this one is queued beside it
    /// and sent after it.
    pub fn write_fields(
        &mut self,
        now: u64,
        collection: &str,
        key: &str,
        value: Option<String>,
        fields: Option<Vec<String>>,
    ) -> Result<(), WriteError> {
        crate::limits::check_write(collection, key, value.as_deref())?;
        // Where the core can parse (a native engine), the value is read whole: text that only
        // looks like an object would otherwise be queued and refused by the server. (The
        // browser's values come from its own JSON reader.)
        #[cfg(feature = "serde")]
        if let Some(text) = &value {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                .map_err(|_| WriteError::InvalidValue)?;
        }
        if let Some(names) = &fields {
            crate::limits::check_fields(names, value.is_some())
                .map_err(|_| WriteError::InvalidFields)?;
        }
        self.write_stamped(now, RecordKey::new(collection, key), value, None, fields);
        self.finish(now);
        Ok(())
    }

    /// A write stamped by the clock, or with `stamp` (an adopted record's own time). Out of
    /// line: inlined into both callers it would cost the browser build a kilobyte.
    #[inline(never)]
    fn write_stamped(
        &mut self,
        now: u64,
        key: RecordKey,
        value: Option<String>,
        stamp: Option<u64>,
        fields: Option<Vec<String>>,
    ) {
        self.observe_time(now);
        let hot = self.hot_every(&key.collection);
        let cut_off = self.cut_off();
        #[cfg(feature = "planted-bugs")]
        let cut_off = if crate::planted::planted(crate::planted::Bug::UnreachableStampedNow) {
            !self.online
        } else {
            cut_off && !crate::planted::planted(crate::planted::Bug::OfflineStampedNow)
        };
        let updated_at = match stamp {
            Some(stamp) => stamp,
            // Cut off, a hot write (the playback position, resumed from this device's copy)
            // continues what the device knew: stamped just after its last sync (or, opened
            // offline, the newest stamp it holds) and the copy it replaces, not now, so
            // progress made elsewhere since (which this device could not see) wins over it
            // on the server. (A guest's continues nothing of an account's: stamped now, it
            // joins the account at sign-in by its time.)
            None if hot.is_some() && cut_off && self.user.is_some() => self.clock.as_of(
                self.last_synced_at,
                self.view.get(&key).map_or(0, |r| r.updated_at),
            ),
            None => self.clock.stamp(now),
        };
        let record = Record {
            value,
            updated_at,
            client_id: self.client_id.clone(),
        };
        let sent_max = self.sent_max;
        #[cfg(feature = "planted-bugs")]
        let any_fields = crate::planted::planted(crate::planted::Bug::CoalesceAcrossFields);
        #[cfg(not(feature = "planted-bugs"))]
        let any_fields = false;
        // A delete removes the whole record, so it undoes every write of the key still
        // queued: they go, and the delete is queued in their place. A record toggled while
        // its writes wait thus queues a delete and a write at most. A write of some fields
        // undoes the queued writes of the same fields to the key alike, wherever they are
        // (writes of other fields between commute with it): fields written in turn queue
        // one write per set of fields, not one per write. But a queued write holding a
        // sticky field `true` that this one does not stays (`sticky_over`): marked and
        // un-marked in turn, a field its writes name queues two writes at most (a later
        // `true` undoes both); written whole, one more for each un-mark until they are sent.
        let per_field = record.value.is_some() && fields.is_some();
        // (Only writes older than this one: one taken over from a gone tab may be older
        // than what this tab queued, and goes beside it.)
        if (record.value.is_none() || per_field) && !any_fields {
            (self.view.outbox).retain(|p| {
                p.id <= sent_max
                    || p.key != key
                    || !record.wins_over(&p.record)
                    || per_field && (p.fields != fields || p.record.value.is_none())
                    || sticky_over(&self.config.sticky, p, &record)
            });
        }
        // Coalesce with the queued write to the same key unless that one was already sent,
        // sets other fields (a write of other fields goes beside it), or is a delete that
        // this write would undo: where the server merges per field, the delete removes fields
        // this write does not name, so both go, in order. A whole record there sets the
        // fields its value holds: it takes a queued one's place only holding all of its.
        #[cfg(feature = "planted-bugs")]
        let any_whole = crate::planted::planted(crate::planted::Bug::WholeWritesCoalesce);
        #[cfg(not(feature = "planted-bugs"))]
        let any_whole = false;
        let takes_place = |old: &str| {
            fields.is_some()
                || any_whole
                || (record.value.as_deref()).is_none_or(|new| holds_fields_of(new, old))
        };
        // The last queued write to the key.
        let mut last = None;
        for p in &mut self.view.outbox {
            if p.key == key {
                last = Some(p);
            }
        }
        let id = match last {
            Some(p)
                if p.id > sent_max
                    && p.fields == fields
                    && record.wins_over(&p.record)
                    && p.record.value.as_deref().is_some_and(takes_place)
                    && !sticky_over(&self.config.sticky, p, &record)
                    || any_fields
                        && p.id > sent_max
                        && (p.record.value.is_some() || record.value.is_none()) =>
            {
                p.record = record.clone();
                p.id
            }
            _ => {
                let id = self.next_id;
                self.next_id += 1;
                self.view.outbox.push(Pending {
                    id,
                    key: key.clone(),
                    record: record.clone(),
                    fields,
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
        match hot {
            // Shortly after the last write, but never much later than the first one.
            None => {
                let first = *self.first_write_at.get_or_insert(now);
                let due =
                    (now + self.config.push_delay_ms).min(first + self.config.push_wait_ms_max);
                self.timers.set(Timer::Push, due);
            }
            // A hot write goes an interval after the last push that carried one, unless a push
            // is planned sooner (another write's, a retry's, what a push left), which takes it.
            Some(every) => {
                let earliest = self.hot_sent_at.map_or(0, |sent| sent + every);
                let due = (now + self.config.push_delay_ms).max(earliest);
                if self.timers.get(Timer::Push).is_none_or(|set| set > due) {
                    self.timers.set(Timer::Push, due);
                }
            }
        }
    }

    /// How often at most a push carries writes of `collection`, if they are hot.
    fn hot_every(&self, collection: &str) -> Option<u64> {
        self.config
            .hot
            .iter()
            .find(|(c, _)| c == collection)
            .map(|(_, every)| *every)
    }

    /// Pushes what is queued, hot writes included, as if none were hot: after the usual
    /// short wait (`Config::push_delay_ms`, so the steps of a drag along a seek bar are one
    /// push). The app calls it at the moments that matter: a pause, a seek, the end of an
    /// episode. With nothing queued it pulls instead (unless the state was just pulled), so
    /// that what the app does next starts from the server's state: the player calls it as
    /// it opens, and resumes from another device's further progress rather than writing
    /// over it from a stale copy. (A push's answer brings that state too.)
    pub fn push_now(&mut self, now: u64) {
        self.observe_time(now);
        if self.view.outbox.is_empty() {
            self.want_pull(now);
        } else {
            let soon = now + self.config.push_delay_ms;
            let due = self
                .first_write_at
                .map_or(soon, |first| soon.min(first + self.config.push_wait_ms_max));
            self.timers.set(Timer::Push, due);
        }
        self.finish(now);
    }

    /// Signs in as `user` (the server's user id). The guest's writes stay queued and are
    /// pushed into the account, those the guest's tabs gone left stored too (taken over
    /// from the guest's scope, [`Command::Unpark`] of `None`), then the account's state is
    /// pulled. The other tabs follow.
    pub fn sign_in(&mut self, now: u64, user: &str) {
        self.observe_time(now);
        if self.user.as_deref() == Some(user) {
            // Signing in again after a 401 resumes syncing with the queued writes intact. A
            // 401 to a request sent before is the ended session's (see `handle_reply`).
            self.signed_in_from = self.next_request_id;
            if self.unauthorized {
                self.unauthorized = false;
                self.error = None;
                self.timers.set(Timer::Pull, 0);
            }
            return self.finish(now);
        }
        if self.user.is_some() {
            self.sign_out(now, false);
        }
        self.enter(Some(user.to_owned()), false);
        #[cfg(feature = "planted-bugs")]
        self.planted_guest_wipe(crate::planted::Bug::GuestTabsDropped);
        self.broadcast(TabBody::SignedIn);
        self.unparked_from = self.next_id;
        // What was left unconfirmed when the user last signed out here goes now.
        #[cfg(feature = "planted-bugs")]
        if crate::planted::planted(crate::planted::Bug::ForgottenParked) {
            return self.finish(now);
        }
        self.commands.push_back(Command::Unpark {
            scope: Some(user.to_owned()),
        });
        // The guest's tabs gone: their writes join the account.
        self.commands.push_back(Command::Unpark { scope: None });
        // Its own pull, if it pulls now, asks for no takeover again.
        self.signing_in = true;
        self.finish(now);
        self.signing_in = false;
    }

    /// Signs out and becomes an empty guest with a new client id; the other tabs follow.
    /// The user's data leaves memory and storage, except the writes not yet confirmed: they
    /// are flushed (keepalive) and, until that flush is confirmed, stay stored for the
    /// account, to be sent at its next sign-in on this device ([`Command::Unpark`]). With
    /// `discard` they are dropped instead. Returns how many writes this tab had queued for
    /// the user (none for a guest, whose writes stay).
    pub fn sign_out(&mut self, now: u64, discard: bool) -> usize {
        self.observe_time(now);
        let mut queued = 0;
        if self.user.is_some() {
            queued = self.view.outbox.len();
            if discard {
                self.view.outbox.clear();
            }
            self.park();
            self.broadcast(TabBody::SignedOut);
            self.enter(None, discard);
        }
        self.finish(now);
        queued
    }

    /// Flushes what is queued as the tab leaves its user, and remembers the flush: its answer
    /// tells which of the parked writes are confirmed ([`Parked`]).
    fn park(&mut self) {
        let request = self.next_request_id;
        self.flush_outbox();
        if let (Some(scope), Some(last)) = (self.user.clone(), self.view.outbox.last()) {
            if self.next_request_id != request {
                self.parked = Some(Parked {
                    request,
                    scope,
                    client_id: self.client_id.clone(),
                    last: last.id,
                });
            }
        }
    }

    /// Takes the writes a gone tab left stored for the signed-in user on this device
    /// ([`Command::Unpark`]: parked by a sign-out, or unsent when it closed), those of the
    /// stored outbox of `client_id`: they join this tab's queue with their own times, and the
    /// stored copy goes; this tab and the others stop showing them as that tab's. (A driver
    /// that hands them over later than the command reads the outbox of the user signed in
    /// then.) Each is sent, even one older than what the tab shows (where the server merges
    /// per field, an older write of another field, or an older delete, still counts); the
    /// tab shows the newest. A write the tab queued before it signed in (as the guest, so
    /// after the sign-out that parked these) stays the newer, whatever the times say (a
    /// guest's clock is not set by the server's): in the takeovers the sign-in asked for, a
    /// parked write of its key is stamped just before it. (Later, what is taken over was
    /// written signed in, after the guest's writes, and keeps its time.) An outbox of the
    /// guest's scope (`scope` `None`: a guest tab gone) was written as the guest too, by the
    /// same clock: its writes keep their times. `scope` is the one the outbox is stored in:
    /// one of another user (signed out since it was asked for) is not taken.
    pub fn unpark(
        &mut self,
        now: u64,
        scope: Option<String>,
        client_id: String,
        mutations: Vec<Mutation>,
    ) {
        self.observe_time(now);
        // Of the user's scope or the guest's: not of a user signed out since it was asked for.
        let taken = scope.is_none() || scope == self.user;
        if self.user.is_some() && taken && client_id != self.client_id {
            // Written as the guest.
            let guest = scope.is_none();
            // A write this tab heard the gone tab make that is not among those read (by its
            // time: a tab renumbers what a refusal sends again): this tab's copy of the
            // storage lags the other tab's (a write just before it closed). Those read are
            // taken, but the stored copy stays, to be taken again, whole, at the next pull
            // (the same writes twice, with their times: the server keeps one).
            #[cfg(feature = "planted-bugs")]
            let heed = !crate::planted::planted(crate::planted::Bug::TakeoverDropsLagging);
            #[cfg(not(feature = "planted-bugs"))]
            let heed = true;
            let lags = heed
                && (self.view.foreign.iter()).any(|f| {
                    f.record.client_id == client_id
                        && !mutations
                            .iter()
                            .any(|m| m.updated_at == f.record.updated_at)
                });
            // This tab and the others showed them as the gone tab's writes (its messages, or
            // its stored outbox), which that tab will never acknowledge now: shown so, they
            // would hide the same writes taken here (then dropped with the stored copy) and
            // stay in the other tabs' view for good.
            #[cfg(feature = "planted-bugs")]
            let forget = !crate::planted::planted(crate::planted::Bug::TakeoverKeepsForeign);
            #[cfg(not(feature = "planted-bugs"))]
            let forget = true;
            if forget {
                self.hear_ack(&client_id, ACK_ALL);
                self.broadcast(TabBody::Acked {
                    client_id: client_id.clone(),
                    ack: ACK_ALL,
                });
            }
            for m in mutations {
                let key = RecordKey::new(m.collection, m.key);
                // A write this tab queued as the guest, after the sign-out that parked these,
                // is the newer whatever the clocks say (a guest's is not set by the server's;
                // the guest's is sent at the sign-in): the parked write goes just before it.
                let mut at = m.updated_at;
                for p in &self.view.outbox {
                    if p.key == key && p.id < self.unparked_from && !guest {
                        at = at.min(p.record.updated_at.saturating_sub(1));
                    }
                }
                // Older than what this tab shows or not: where the server merges per field,
                // an older write of another field, or a delete, still counts.
                #[cfg(feature = "planted-bugs")]
                if crate::planted::planted(crate::planted::Bug::TakeoverSkipsOlder)
                    && self.view.get(&key).is_some_and(|r| r.updated_at >= at)
                {
                    continue;
                }
                self.clock.observe(m.updated_at);
                self.write_stamped(now, key, m.value, Some(at), m.fields);
            }
            if !lags {
                (self.commands)
                    .push_back(Command::Persist(Persist::DropOutbox { scope, client_id }));
            }
            // Left over from a tab gone, they go at once, hot writes too (an interval's wait
            // is for the positions of what plays here).
            self.push_leftovers();
        }
        self.finish(now);
    }

    /// The session of Sinkron's own accounts that was just signed out (its `token`) is to be
    /// ended on the server too ([`Request::EndSession`]): at once, and again with a backoff
    /// (at most one pull interval) until the server has answered, whether or not this tab
    /// or the page lives that long — the token is kept in the device's storage until then
    /// ([`Persist::EndingSessions`]), and a tab that starts later takes over. An answer that
    /// the session is gone (401) or can never be ended (another 4xx) ends the attempts too.
    pub fn end_session(&mut self, now: u64, token: String) {
        self.observe_time(now);
        if !token.is_empty() && !self.ending.contains(&token) {
            self.ending.push(token);
            self.persist_ending();
            self.timers.set(Timer::EndSession, now);
        }
        self.finish(now);
    }

    /// Loads the sessions a previous page signed out but did not get the server to end.
    pub fn restore_ending_sessions(&mut self, tokens: Vec<String>) {
        self.ending = tokens;
        if !self.ending.is_empty() {
            self.timers.set(Timer::EndSession, 0);
        }
    }

    fn persist_ending(&mut self) {
        self.commands
            .push_back(Command::Persist(Persist::EndingSessions {
                tokens: self.ending.clone(),
            }));
    }

    /// The answer to the request ending the first session: done, or again after a backoff.
    fn session_ended(&mut self, now: u64, reply: Reply) {
        self.ending_in_flight = None;
        let retry_after = match reply {
            Reply::Failed(Failure::Network | Failure::TokenExpired) => Some(None),
            Reply::Failed(Failure::Unavailable { retry_after_ms }) => Some(retry_after_ms),
            _ => None,
        };
        match retry_after {
            Some(retry_after_ms) => {
                self.ending_failures = self.ending_failures.saturating_add(1);
                let delay = self.backoff(self.ending_failures, retry_after_ms);
                self.timers.set(Timer::EndSession, now + delay);
            }
            None => {
                self.ending_failures = 0;
                // Newest first (`pop`: no `Vec::remove` in the browser build).
                self.ending.pop();
                self.persist_ending();
                if !self.ending.is_empty() {
                    self.timers.set(Timer::EndSession, now);
                }
            }
        }
    }

    /// Sends the whole outbox at once with `keepalive` (within the keepalive budget): the
    /// page is being hidden or closed. What does not fit stays queued and persisted.
    pub fn flush(&mut self, now: u64) {
        self.observe_time(now);
        self.flush_outbox();
        self.finish(now);
    }

    /// After a keepalive flush failed (the network or the server down as the page was
    /// hidden), what is queued is pushed at once as soon as the tab is visible, hot writes
    /// included: the flush counted as the hot interval's push, so they would wait out the
    /// interval. A flush still on its way when the page is shown again is left to its answer.
    fn push_flushed(&mut self) {
        if self.visible && core::mem::take(&mut self.flush_failed) && !self.view.outbox.is_empty() {
            self.timers.set(Timer::Push, 0);
        }
    }

    fn flush_outbox(&mut self) {
        if !self.can_push() {
            return;
        }
        let mutations = self.view.outbox(MUTATIONS_MAX, self.config.push_bytes_max);
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

    /// Loads the persisted cursor. `records_complete` is false when the stored records were
    /// cut by a [`Persist::Evict`] since the last whole state: then the cursor no longer
    /// stands for what the device holds, and the next pull takes the whole state instead.
    pub fn restore_cursor(&mut self, cursor: Option<String>, records_complete: bool) {
        // A place inside a whole state (stored by an older version) continues one whose
        // first pages this tab did not see: start it again instead.
        self.cursor = cursor.filter(|c| records_complete && !inside_whole(c));
        self.storage_cut = !records_complete;
    }

    /// The driver could not store something of `scope`: the device's storage is full. Frees
    /// room by the core's rule: the oldest quarter (at least one) of the scope's stored
    /// [`EVICTABLE`] records leave the storage, not the view. Either way the stored records
    /// are marked incomplete ([`Persist::Evict`], with no keys when nothing could go), since
    /// what fails to be stored is missing from them too: no restart trusts the stored cursor
    /// until a whole state is stored again. Returns whether anything was freed, after which
    /// the driver tries again; nothing is when nothing of the scope is left to evict, or the
    /// scope is not this tab's (then nothing is marked: this tab does not know that scope).
    pub fn handle_storage_full(&mut self, scope: Option<&str>) -> bool {
        if scope != self.user.as_deref() {
            return false;
        }
        let keys = self.view.evict_oldest(EVICTABLE);
        let freed = !keys.is_empty();
        self.storage_cut = true;
        self.commands.push_back(Command::Persist(Persist::Evict {
            scope: self.user.clone(),
            keys,
        }));
        freed
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
        self.view.outbox.clear();
        self.next_id = next_id.max(1);
        #[cfg(feature = "planted-bugs")]
        if crate::planted::planted(crate::planted::Bug::ForgottenNumbering) {
            self.next_id = 1;
        }
        for m in mutations {
            self.clock.observe(m.updated_at);
            self.next_id = self.next_id.max(m.id + 1);
            self.sent_max = self.sent_max.max(m.id);
            self.view.outbox.push(Pending {
                id: m.id,
                key: RecordKey::new(m.collection, m.key),
                record: Record {
                    value: m.value,
                    updated_at: m.updated_at,
                    client_id: self.client_id.clone(),
                },
                fields: m.fields,
            });
        }
        // Taken over, its numbering moves on in storage: a page that held the id and comes
        // back from the back/forward cache sees that another took it meanwhile (and reloads
        // rather than reuse ids that one may have sent), even when nothing else changed.
        self.next_id += 1;
        self.persist_outbox();
        // Writes left over from before are due at once.
        self.push_leftovers();
    }

    /// Loads the signed-in user persisted by the driver (before any other input).
    pub fn restore_user(&mut self, user: Option<String>) {
        self.user = user;
        self.want_adoption();
    }

    /// Loads the scopes whose data from before Sinkron was adopted on this device
    /// ([`Persist::Adopted`]); before [`Engine::restore_user`].
    pub fn restore_adopted(&mut self, scopes: Vec<Option<String>>) {
        self.adopted = scopes;
    }

    /// Asks the app for the scope's data from before Sinkron, unless it was adopted.
    fn want_adoption(&mut self) {
        if self.config.adopt_legacy && !self.adopted.contains(&self.user) {
            self.commands.push_back(Command::Adopt {
                scope: self.user.clone(),
            });
        }
    }

    /// The app's data of `scope` from before Sinkron ([`Command::Adopt`]): each record
    /// `(key, value, updated_at)` becomes a local write stamped with its own `updated_at`
    /// (no later than now), so it syncs and the newest write wins against what the server
    /// already holds; the scope is then marked adopted for good ([`Persist::Adopted`]). All
    /// or nothing: one record the engine would refuse refuses them all and nothing is marked,
    /// so the app can be asked again. Data for a scope this tab has left is dropped (the
    /// next tab in that scope asks again).
    pub fn adopt(
        &mut self,
        now: u64,
        scope: Option<&str>,
        records: Vec<(RecordKey, Option<String>, Option<u64>)>,
    ) -> Result<(), WriteError> {
        if scope != self.user.as_deref() {
            return Ok(());
        }
        for (key, value, _) in &records {
            crate::limits::check_write(&key.collection, &key.key, value.as_deref())?;
        }
        for (key, value, updated_at) in records {
            self.take_stamped(now, key, value, updated_at.map(|t| t.min(now)), None);
        }
        self.adopted.push(self.user.clone());
        self.commands.push_back(Command::Persist(Persist::Adopted {
            scopes: self.adopted.clone(),
        }));
        self.finish(now);
        Ok(())
    }

    // ----- internals -----

    /// Writes a record that carries its own time (an adopted one), unless what
    /// this tab shows for the key is newer: such a record must not even replace a queued
    /// write. The clock notes the time, so the tab's next write is newer still.
    fn take_stamped(
        &mut self,
        now: u64,
        key: RecordKey,
        value: Option<String>,
        stamp: Option<u64>,
        fields: Option<Vec<String>>,
    ) {
        self.clock.observe(stamp.unwrap_or(0));
        let shown = self.view.get(&key).map(|r| r.updated_at);
        if stamp.is_none_or(|t| shown.is_none_or(|s| s < t)) {
            self.write_stamped(now, key, value, stamp, fields);
        }
    }

    /// Keeps deadlines meaningful when the device clock jumps backwards: every local time the
    /// engine holds moves back with it. Otherwise a clock set back an hour would hold every
    /// push, retry and pull for an hour, and treat every trigger as "just pulled".
    // Every input calls this first: inlined into each (at opt-level 3) it added 3 kB to the
    // release WebAssembly build.
    #[inline(never)]
    fn observe_time(&mut self, now: u64) {
        if let Some(back) = self.last_now.and_then(|last| last.checked_sub(now)) {
            self.timers.shift_back(back);
            let shift = |t: &mut Option<u64>| *t = t.map(|t| t.saturating_sub(back));
            shift(&mut self.last_pull_at);
            shift(&mut self.first_write_at);
            shift(&mut self.hot_sent_at);
            shift(&mut self.last_synced_at);
        }
        self.last_now = Some(now);
    }

    /// Switches to `user`'s scope (or the guest's), dropping every trace of the previous one
    /// but its writes not yet confirmed, which stay stored for that account unless `discard`
    /// (see [`Engine::sign_out`]); the guest's, this tab's and those its tabs gone left
    /// stored, join the account.
    fn enter(&mut self, user: Option<String>, discard: bool) {
        let previous = self.user.take();
        let was_guest = previous.is_none();
        // The stream was the previous user's.
        if self.stream == Stream::Open {
            self.commands.push_back(Command::Pokes(false));
        }
        if self.stream != Stream::Refused {
            self.stream = Stream::Closed;
        }
        self.poked = 0;
        self.in_flight.clear();
        self.view.clear_all_but_outbox();
        self.cursor = None;
        // A whole state being received was the previous user's.
        self.whole = None;
        // Every deadline was the previous user's, but ending a signed-out session goes on.
        let ending = self.timers.get(Timer::EndSession);
        self.timers = TimerTable::default();
        if let Some(at) = ending {
            self.timers.set(Timer::EndSession, at);
        }
        self.last_pull_at = None;
        self.failures = 0;
        self.told_cut_off = false;
        self.last_synced_at = None;
        self.error = None;
        self.unauthorized = false;
        self.fresh_token = false;
        let keep_pending = !discard;
        // The scope's outboxes stay (see `Persist::Wipe`), but this tab's own goes unless it
        // holds writes parked for the account; a guest tab carries its writes into the
        // account (below), so their stored copy goes.
        if keep_pending && (was_guest || self.view.outbox.is_empty()) {
            self.commands
                .push_back(Command::Persist(Persist::DropOutbox {
                    scope: previous.clone(),
                    client_id: self.client_id.clone(),
                }));
        }
        self.commands.push_back(Command::Persist(Persist::Wipe {
            keep_pending,
            scope: previous,
        }));
        if was_guest && user.is_some() {
            // The guest's own writes move into the account.
        } else {
            self.view.outbox.clear();
            self.client_id = self.rng.client_id();
            self.next_id = 1;
            self.sent_max = 0;
        }
        // What is still queued (the guest's writes, carried into the account) is due at once.
        self.push_leftovers();
        self.user = user;
        if self.user.is_some() && self.config.pull_on_sign_in {
            self.timers.set(Timer::Pull, 0);
        }
        self.persist_outbox();
        self.notify_everything();
        self.want_adoption();
    }

    fn finish(&mut self, now: u64) {
        self.sync_leadership();
        self.sync_pokes();
        self.fire_due(now);
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
                self.timers.stop(Timer::Poll);
            }
        }
    }

    /// Holds the poke stream open while this tab pulls for the device, and pulls once a poke
    /// names a version above the cursor and no answer that may carry it is awaited.
    fn sync_pokes(&mut self) {
        let want = self.config.pokes && self.can_pull();
        if want && self.stream == Stream::Closed || !want && self.stream == Stream::Open {
            self.stream = if want { Stream::Open } else { Stream::Closed };
            self.commands.push_back(Command::Pokes(want));
        }
        if self.stream == Stream::Open
            && self.poked > self.cursor_version()
            && !self.regular_in_flight()
        {
            self.timers.set(Timer::Pull, 0);
        }
    }

    /// Whether `timer` can act now: firing it sends a request. Nothing is sent while a
    /// regular request is in flight (its answer decides what comes next), and nothing without
    /// a signed-in user, a connection and a session. The one place that says when each timer
    /// counts: [`Engine::poll_timeout`] and [`Engine::fire_due`] both ask it.
    fn ready(&self, timer: Timer) -> bool {
        if timer == Timer::EndSession {
            // After the sign-out's flush is answered: it needs the session.
            return self.online
                && self.ending_in_flight.is_none()
                && self.parked.is_none()
                && !self.ending.is_empty();
        }
        if self.regular_in_flight() {
            return false;
        }
        match timer {
            Timer::Push => self.can_push(),
            // With writes queued, their push carries the state. A tab that does not poll
            // asks with an empty push, which needs the cursor the state continues.
            Timer::State => {
                self.view.outbox.is_empty()
                    && self.api_usable()
                    && (self.can_pull() || self.cursor.is_some())
            }
            Timer::Pull | Timer::Poll => self.can_pull(),
            // A hold on the others, never due itself.
            Timer::Retry => false,
            Timer::EndSession => false,
        }
    }

    /// Sends the request that is due, if one is. A leader that can pull and has no pull
    /// planned (after a failed pull, say, or a sign-in that does not pull) plans its next
    /// poll first.
    fn fire_due(&mut self, now: u64) {
        let planned = self.timers.is_set(Timer::Pull) || self.timers.is_set(Timer::Poll);
        if !planned && self.ready(Timer::Poll) {
            self.plan_poll(now);
        }
        // A regular request and the end of a session go out independently: at most one of
        // each.
        for _ in 0..2 {
            match self.timers.expired(now, &|timer| self.ready(timer)) {
                Some(timer) => self.fire(timer, now),
                None => break,
            }
        }
    }

    /// Sends the request `timer` stands for; it is ready and due. Out of line: `fire_due`
    /// calls it twice, and two inlined copies would cost the browser build a kilobyte.
    #[inline(never)]
    fn fire(&mut self, timer: Timer, now: u64) {
        if timer == Timer::EndSession {
            return self.send_end_session();
        }
        let pull = match timer {
            // A tab that has never pulled learns the account's state first, so its own
            // writes do not flicker out of view between the push and the pull.
            Timer::Push => self.cursor.is_none() && self.can_pull(),
            // Not the leader: an empty push with our cursor answers with the state. The timer
            // stays set until an answer carries the state, so a lost request is retried.
            Timer::State => self.can_pull(),
            Timer::Pull | Timer::Poll => true,
            Timer::Retry | Timer::EndSession => return,
        };
        if pull {
            return self.send_pull(now);
        }
        let mutations: Vec<Mutation> = match timer {
            Timer::Push => self.view.outbox(
                self.config.push_batch_max.min(MUTATIONS_MAX),
                self.config.push_bytes_max,
            ),
            _ => Vec::new(),
        };
        #[cfg(feature = "planted-bugs")]
        let mutations = self.planted_cut_acks_all(mutations);
        let last_sync = self.cursor.clone();
        self.send_push(mutations, last_sync, false);
    }

    fn send_end_session(&mut self) {
        self.timers.stop(Timer::EndSession);
        let Some(token) = self.ending.last().cloned() else {
            return;
        };
        let id = self.next_request();
        self.ending_in_flight = Some(id);
        self.commands.push_back(Command::Send {
            id,
            request: Request::EndSession { token },
            fresh_token: false,
        });
    }

    /// A planted bug: a push that leaves queued writes behind carries the id of the outbox's
    /// last write on its own last one.
    #[cfg(feature = "planted-bugs")]
    fn planted_cut_acks_all(&self, mut mutations: Vec<Mutation>) -> Vec<Mutation> {
        if crate::planted::planted(crate::planted::Bug::PushCutAcksAll)
            && mutations.len() < self.view.outbox.len()
        {
            if let (Some(sent), Some(queued)) = (mutations.last_mut(), self.view.outbox.last()) {
                sent.id = queued.id;
            }
        }
        mutations
    }

    /// A planted bug: the guest's scope wiped with its outboxes, those of the guest's tabs gone
    /// with them (by the tab that signs in, or the leader as it pulls).
    #[cfg(feature = "planted-bugs")]
    fn planted_guest_wipe(&mut self, bug: crate::planted::Bug) {
        if crate::planted::planted(bug) {
            self.commands.push_back(Command::Persist(Persist::Wipe {
                scope: None,
                keep_pending: false,
            }));
        }
    }

    fn send_pull(&mut self, now: u64) {
        self.timers.stop(Timer::Pull);
        self.timers.stop(Timer::Poll);
        self.last_pull_at = Some(now);
        self.poked = 0;
        // The device's leader sends what closed tabs could not: it pulls while the user
        // watches, so they go within a pull interval, not at the next start of a tab.
        if let Some(user) = self.user.clone().filter(|_| !self.signing_in) {
            // What is taken over from now on was written signed in, after the guest's writes.
            self.unparked_from = 0;
            // The guest's tabs gone since the sign-in (a guest tab's writes that reached the
            // storage as the device signed in, its tab closed before it followed) join the
            // account too, taken over from the guest's scope. The rest of the guest's scope
            // goes, but its outboxes: a live guest tab carries its own into the account as it
            // follows, and this tab's copy of the storage may still show one that tab has
            // filled since.
            self.commands.push_back(Command::Persist(Persist::Wipe {
                scope: None,
                keep_pending: true,
            }));
            #[cfg(feature = "planted-bugs")]
            self.planted_guest_wipe(crate::planted::Bug::LeaderDropsGuest);
            self.commands.push_back(Command::Unpark { scope: None });
            self.commands
                .push_back(Command::Unpark { scope: Some(user) });
        }
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

    fn send_push(&mut self, mutations: Vec<Mutation>, last_sync: Option<String>, keepalive: bool) {
        if mutations
            .iter()
            .any(|m| self.hot_every(&m.collection).is_some())
        {
            self.hot_sent_at = self.last_now;
        }
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
            // What this push leaves queued (more than a batch, or all of it if it fails) goes
            // at once after its answer.
            self.push_leftovers();
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
        self.api_usable() && !self.view.outbox.is_empty()
    }

    fn can_pull(&self) -> bool {
        self.api_usable() && self.visible && self.leader
    }

    /// Everything queued is due at once: writes left over from before (a restart, a
    /// sign-in) or by the last push.
    fn push_leftovers(&mut self) {
        self.first_write_at = None;
        if self.view.outbox.is_empty() {
            self.timers.stop(Timer::Push);
        } else {
            self.timers.set(Timer::Push, 0);
        }
    }

    /// A trigger (focus, visibility, online, sign-in): pull now, unless a pull just happened.
    fn want_pull(&mut self, now: u64) {
        if !self.api_usable() || !self.visible || self.pulled_recently(now) {
            return;
        }
        if self.leader {
            self.timers.set(Timer::Pull, 0);
        } else {
            // The leader pulls for the whole device.
            self.broadcast(TabBody::PullWanted);
        }
    }

    /// Within the trigger gap of the last pull: its state is still fresh.
    fn pulled_recently(&self, now: u64) -> bool {
        self.last_pull_at
            .is_some_and(|t| now < t + self.config.trigger_gap_ms)
    }

    /// The pull interval: the app's, stretched to what the server asks for (never shortened),
    /// up to the ceiling.
    fn interval(&self) -> u64 {
        let asked = self
            .server_interval_ms
            .unwrap_or(0)
            .min(self.config.interval_ms_max);
        self.config.interval_ms.max(asked)
    }

    /// The leader's next background pull: an interval after `from`, give or take the jitter.
    fn plan_poll(&mut self, from: u64) {
        let interval = self.interval();
        let spread = interval * self.config.interval_jitter_percent / 100;
        let jittered = interval - spread + self.rng.below_or_equal(2 * spread);
        self.timers.set(Timer::Poll, from + jittered);
    }

    /// Asks for the server's state after an acknowledged push, or stops asking.
    fn want_state(&mut self, wanted: bool) {
        if wanted {
            self.timers.set(Timer::State, 0);
        } else {
            self.timers.stop(Timer::State);
        }
    }

    fn succeeded(&mut self) {
        if self.stream == Stream::Ended {
            self.stream = Stream::Closed;
        }
        self.failures = 0;
        self.told_cut_off = false;
        self.timers.stop(Timer::Retry);
        if matches!(self.error, Some(SyncError::Unreachable)) {
            self.error = None;
        }
    }

    /// Exponential backoff with full jitter, never sooner than the server's `Retry-After`.
    fn failed(&mut self, now: u64, retry_after_ms: Option<u64>) {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff(self.failures, retry_after_ms);
        self.timers.set(Timer::Retry, now + delay);
        self.error = Some(SyncError::Unreachable);
        // The other tabs count themselves cut off too (see `Engine::cut_off`).
        self.broadcast(TabBody::Unreachable);
    }

    /// The wait after `failures` failures in a row (at least one): full jitter under a cap
    /// that doubles with each, at most the pull interval, never sooner than `Retry-After`.
    fn backoff(&mut self, failures: u32, retry_after_ms: Option<u64>) -> u64 {
        let exponent = failures.saturating_sub(1).min(20);
        let cap = (self.config.backoff_base_ms << exponent)
            .min(self.config.backoff_ms_max)
            .min(self.interval());
        self.rng
            .below_or_equal(cap)
            .max(retry_after_ms.unwrap_or(0))
    }

    /// Drops this tab's mutations up to `ack` and tells the other tabs. Writes the server
    /// took (`by` is the acknowledging request) stay in view until its state is known.
    fn acknowledge(&mut self, ack: u64, by: Option<u64>) {
        let by = by.map(|request| (request, self.next_request_id));
        if self.view.acknowledge(ack, by) {
            if self.view.outbox.is_empty() {
                self.timers.stop(Timer::Push);
            }
            self.persist_outbox();
            self.broadcast(TabBody::Acked {
                client_id: self.client_id.clone(),
                ack,
            });
        }
    }

    /// Forgets the acknowledged writes that an answer to request `sent` shows the server
    /// state after: those it acknowledged itself (`by`), and those acknowledged before it
    /// was sent. The state is still wanted while any remain: an answer to a request sent
    /// before a write was acknowledged does not show it.
    fn settle_acked(&mut self, by: Option<u64>, sent: u64) {
        let keys = self.view.settle_acked(by, sent);
        self.want_state(!self.view.acked.is_empty());
        self.notify_changed(keys);
    }

    fn apply_page(&mut self, now: u64, from: Option<String>, page: Page) {
        self.clock.sync_to_server(now, page.server_time);
        // A pull without a cursor is the whole state: it replaces whatever we had.
        let reset = page.reset || from.is_none();
        let of = PageOf {
            from: from.as_deref(),
            to: &page.cursor,
            reset,
            more: page.more,
            adopted: true,
            gone: None,
        };
        let (keys, gone) = self.apply_changes(of, &page.changes);
        let ended = gone.is_some();
        self.broadcast(TabBody::Synced {
            from,
            to: page.cursor,
            reset,
            more: page.more,
            changes: page.changes,
            gone,
        });
        self.last_synced_at = Some(now);
        if ended {
            self.notify_everything();
        } else {
            self.notify_changed(keys);
        }
        if page.more {
            self.timers.set(Timer::Pull, 0);
        } else {
            self.plan_poll(now);
        }
    }

    /// Applies a page of server changes to the confirmed layer and moves the cursor to it
    /// when it should; returns the keys touched, and when the page ended a whole state, the
    /// keys it dropped (everything may have changed).
    ///
    /// A whole state (a `reset`, or the answer to a pull without a cursor) may come in pages,
    /// continuing from one another's cursors. Only once its last page has arrived is it
    /// known what it lacks: then each record none of its pages held is dropped (compacted on
    /// the server), unless held at a version above the state's (it came from a newer answer;
    /// answers and other tabs' messages can arrive out of order). Records stay until then,
    /// so a record whose row sits on a later page never vanishes from view between pages.
    ///
    /// The cursor is inside a whole state only while this tab follows it, and is never
    /// stored there (see `set_cursor`). A page of another whole state is applied, but does
    /// not move the cursor (nor does another tab's reset begin one while this tab receives
    /// another, unless it continues from this tab's cursor); a page outside any whole state
    /// that the cursor moves to gives it up (the next pull from that cursor starts a new one
    /// if it must), unless it was asked from inside the whole state this tab follows, which
    /// another tab's page moved on meanwhile. The tab whose answer ends a whole state tells
    /// the others what it dropped (`gone`): every other tab drops the same (at versions up to
    /// that state's) and moves its cursor there, giving up its own if it followed another.
    ///
    /// A record deleted while its whole state arrives, whose tombstone is compacted before
    /// the page that would carry it, would stay: the server's `--tombstone-ttl-secs` (30 days
    /// by default) must be far longer than any whole state takes to arrive.
    fn apply_changes(
        &mut self,
        page: PageOf<'_>,
        changes: &[Change],
    ) -> (Vec<RecordKey>, Option<Vec<RecordKey>>) {
        // Part of the whole state followed: a page continuing from its latest page's cursor.
        // A copy of an earlier page (answers and messages can come twice) is not, and needs
        // not be: a record new since its first copy sits on a later page.
        let continues = self
            .whole
            .as_ref()
            .is_some_and(|w| Some(w.at.as_str()) == page.from);
        // A reset begins a whole state: this tab's own, another tab's that continues from
        // this tab's cursor (the server began the one received again), or any when this tab
        // receives none. Another tab's reset while this tab receives another is applied, and
        // its end taken, as any other's page: this tab's own end still drops what its pages
        // lacked.
        let begin = page.reset && (page.adopted || self.whole.is_none());
        let part = begin || continues;
        // Where this tab's own answer does not continue the whole state it follows although
        // it was asked from inside a whole state (two requests from one page's cursor are
        // answered apart, and another tab's answer moved the whole state on), it does not
        // give it up: the cursor stays with the latest page, whose continuation ends it.
        let inside = inside_whole(page.to)
            || (!part && self.whole.is_some() && page.from.is_some_and(inside_whole));
        if begin {
            self.view.begin_whole();
            self.whole = Some(Whole {
                at: String::new(),
                top: 0,
            });
        } else if !part && !inside && page.adopted {
            self.whole = None;
        }
        let keys = self.store_changes(changes, part);
        // The last page's cursor is the server's version of the state (see PROTOCOL.md).
        let version = cursor_number(page.to).filter(|v| *v < WHOLE_STATE);
        let gone = match self.whole.as_mut().filter(|_| part) {
            Some(whole) if page.more => {
                page.to.clone_into(&mut whole.at);
                None
            }
            Some(whole) => {
                let covered = version.unwrap_or(0).max(whole.top);
                self.whole = None;
                Some(self.view.end_whole(covered))
            }
            // Another tab's last page of a whole state this tab does not follow: it holds
            // what this tab's own would (every tab hears every page), so this tab takes it
            // instead (a tab hidden in the middle of its own would never end it).
            None => match page.gone {
                Some(gone) if !page.more => {
                    self.whole = None;
                    self.view.drop_gone(gone, version.unwrap_or(u64::MAX));
                    // Only the tab whose answer ended it tells the others.
                    Some(Vec::new())
                }
                _ => None,
            },
        };
        if part || gone.is_some() || (page.adopted && !inside) {
            self.set_cursor(Some(page.to.to_owned()));
        }
        // The tab that ended it rewrites the storage when it dropped records, or when the
        // storage lacks some (`Persist::Evict`): else every record it stored came through a
        // page, and the storage is right already. Another tab's end is that tab's to write.
        if page.gone.is_none()
            && gone
                .as_ref()
                .is_some_and(|g| !g.is_empty() || self.storage_cut)
        {
            self.storage_cut = false;
            self.commands
                .push_back(Command::Persist(Persist::ClearRecords {
                    scope: self.user.clone(),
                }));
            for change in self.view.confirmed_changes() {
                self.commands.push_back(Command::Persist(Persist::Record {
                    scope: self.user.clone(),
                    change,
                }));
            }
        }
        (keys, gone)
    }

    /// Stores server changes, and persists those stored; returns their keys. `whole`: they
    /// are a page of the whole state followed.
    fn store_changes(&mut self, changes: &[Change], whole: bool) -> Vec<RecordKey> {
        let mut keys = Vec::new();
        for change in changes {
            self.clock.observe(change.updated_at);
            let key = RecordKey::new(change.collection.as_str(), change.key.as_str());
            let version = change.version;
            if self.store_change(change.clone()) {
                self.commands.push_back(Command::Persist(Persist::Record {
                    scope: self.user.clone(),
                    change: change.clone(),
                }));
                keys.push(key.clone());
            }
            if whole {
                self.view.seen_in_whole(&key);
                if let Some(whole) = &mut self.whole {
                    whole.top = whole.top.max(version);
                }
            }
        }
        keys
    }

    /// Stores a server change unless a later version is already confirmed; an acknowledged
    /// write of this tab that it settles leaves the view.
    fn store_change(&mut self, change: Change) -> bool {
        let key = RecordKey::new(change.collection.as_str(), change.key.as_str());
        let acked = self.view.acked.len();
        let stored = self.view.store(change);
        if self.view.acked.len() != acked {
            self.commands
                .push_back(Command::Notify(Notice::Changed(vec![key])));
        }
        stored
    }

    /// Moves the cursor. Inside a whole state the stored cursor stays where it was: a tab
    /// reloaded or opened between its pages starts it again, or learns its end from the tab
    /// that ends it, rather than ending it without knowing what its first pages held.
    fn set_cursor(&mut self, cursor: Option<String>) {
        if self.cursor != cursor {
            self.cursor = cursor.clone();
            if cursor.as_deref().is_some_and(inside_whole) {
                return;
            }
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
    /// of the refused batch (a keepalive flush, say) is refused the same way. The write `but`
    /// (one the server refused, 0 for none) keeps its id, to be dropped by an acknowledgement.
    fn renumber_above(&mut self, ack: u64, but: u64) {
        self.next_id = self.next_id.max(ack.saturating_add(1));
        for p in self.view.outbox.iter_mut().filter(|p| p.id != but) {
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

    /// Another tab's writes up to `ack` are settled (`Acked`): they leave the view.
    fn hear_ack(&mut self, client_id: &str, ack: u64) {
        let keys = self.view.hear_ack(client_id, ack);
        self.notify_changed(keys);
    }

    /// Everything the app reads may have changed.
    fn notify_everything(&mut self) {
        self.commands.push_back(Command::Notify(Notice::Everything));
    }

    fn notify_changed(&mut self, keys: Vec<RecordKey>) {
        if !keys.is_empty() {
            self.commands
                .push_back(Command::Notify(Notice::Changed(keys)));
        }
    }
}

#[cfg(test)]
mod tests;
