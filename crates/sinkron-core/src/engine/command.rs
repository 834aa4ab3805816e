//! What passes between the engine and its driver: the commands it asks for ([`Command`] and
//! what they carry), the outcomes the driver reports back ([`Reply`], [`Failure`]), the
//! messages between tabs ([`TabMessage`]) and what the UI shows ([`Status`]).
//!
//! Plain data: no decision lives here, except [`Failure::from_status`], the one place an HTTP
//! answer becomes a failure kind.

use alloc::string::String;
use alloc::vec::Vec;

use crate::protocol::{Change, Mutation};
use crate::record::{Record, RecordKey};

#[cfg(doc)]
use super::Engine;

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
    /// Open (`true`) or close (`false`) the poke stream, `GET /api/user/me/events` with the
    /// user's credentials ([`crate::Config::pokes`]). Report each poke's version with
    /// [`Engine::handle_poke`], and a stream that ends unasked for with
    /// [`Engine::handle_pokes_ended`].
    Pokes(bool),
    /// Tell the UI something changed.
    Notify(Notice),
    /// Ask the app for the data of `scope` it kept before Sinkron (with
    /// [`crate::Config::adopt_legacy`], once per device and scope); hand it to
    /// [`Engine::adopt`].
    Adopt { scope: Option<String> },
    /// Hand [`Engine::unpark`] each stored outbox of `scope` that holds writes and whose tab
    /// is gone (its tab lock free; a driver that cannot tell hands them all), with its scope,
    /// as stored when the lock is held: of the user's scope after the user signed in on this
    /// tab (outboxes parked there when the user last signed out before they were confirmed)
    /// and as the leader pulls (outboxes of tabs closed, or kept by the back/forward cache,
    /// with writes they could not send); of the guest's (`None`) after the user signed in on
    /// this tab and as the leader pulls (the guest's tabs gone, with writes they could not
    /// send: their writes join the account).
    Unpark { scope: Option<String> },
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
    /// Forget the outbox `client_id` stored in `scope`: one left parked (the user signed out
    /// before its writes were confirmed; see [`Persist::Wipe`]) whose writes are confirmed
    /// now or queued again by this tab, or this tab's own as it leaves the scope (its client
    /// id is then no tab's).
    DropOutbox {
        scope: Option<String>,
        client_id: String,
    },
    /// Forget everything of the scope: records, cursor, outboxes — but with `keep_pending`,
    /// every outbox: those that still hold writes are sent from another scope later. The
    /// user's (signed out before they were confirmed) are the account's, sent at its next
    /// sign-in here; the guest's (wiped as the guest signs in, or follows another tab's
    /// sign-in) join the account: each tab still open carries its own writes over as it
    /// follows, and those of the guest's tabs gone are taken over ([`Command::Unpark`]). The
    /// tab drops its own outbox itself when it holds none, or as it leaves the guest's scope
    /// ([`Persist::DropOutbox`]), and each other tab its own as it follows. A tab's copy of
    /// the storage may lag behind another tab's (Chromium copies `localStorage` between tabs
    /// later, often after a channel message): an outbox it sees empty may hold writes another
    /// tab stored since, and removing or moving it would drop them. Without `keep_pending`
    /// (the user signed out with `discard`), nothing of the scope stays.
    Wipe {
        scope: Option<String>,
        keep_pending: bool,
    },
    /// The user scopes whose data from before Sinkron was adopted on this device
    /// (device-wide), to restore with [`Engine::restore_adopted`].
    Adopted { scopes: Vec<Option<String>> },
    /// The sessions signed out on this device that the server has not yet ended (device-wide,
    /// not per scope), to restore with [`Engine::restore_ending_sessions`].
    EndingSessions { tokens: Vec<String> },
    /// The storage is full ([`Engine::handle_storage_full`]): drop these stored records (they
    /// stay in view) and mark the scope's stored records incomplete until the next
    /// [`Persist::ClearRecords`]. A driver restoring a scope so marked passes
    /// `records_complete: false` to [`Engine::restore_cursor`].
    Evict {
        scope: Option<String>,
        keys: Vec<RecordKey>,
    },
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
    /// `POST /api/auth/logout` with `token` (a signed-out session of Sinkron's own
    /// accounts), with `keepalive`: the server ends the session.
    EndSession { token: String },
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
    /// 2xx to a request whose answer holds nothing to read ([`Request::EndSession`]).
    Done,
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
    /// 400 `invalid_cursor`: the cursor sent is not from this server's history (a replaced
    /// database, or one restored from an older backup): the copy is dropped and the whole
    /// state pulled; a push's writes stay queued and go again.
    CursorRefused,
    /// Any other 4xx of the server's (with its error `code`): the request can never succeed
    /// as it is. `mutation` is the `mutation` field of the error body: the id of the one
    /// write of a push that the server refused (422 `invalid_mutation`); nothing of the push
    /// was applied, so the others go again.
    Rejected { status: u16, mutation: Option<u64> },
}

impl Failure {
    /// What an answer other than 200 or 304 means: the one classification every driver
    /// uses. `status` 0 means no answer at all (a network error, or a body that could not be
    /// read); `retry_after_ms` is the `Retry-After` header; `ack` is the `ack` field of the
    /// error body, which only a 409 `mutation_id_reused` carries; `code` is the error body's
    /// `code`, if it had one, and `mutation` its `mutation` (a refused write's id).
    pub fn from_status(
        status: u16,
        retry_after_ms: Option<u64>,
        ack: Option<u64>,
        code: Option<&str>,
        mutation: Option<u64>,
    ) -> Failure {
        #[cfg(feature = "planted-bugs")]
        let code = code.or_else(|| {
            crate::planted::planted(crate::planted::Bug::ProxyRefusalTaken).then_some("")
        });
        match (status, ack) {
            (0 | 408, _) => Failure::Network,
            (401, _) if code == Some("token_expired") => Failure::TokenExpired,
            (401, _) => Failure::Unauthorized,
            (409, Some(ack)) => Failure::IdsReused { ack },
            (429 | 500..=599, _) => Failure::Unavailable { retry_after_ms },
            (400, _) if code == Some("invalid_cursor") => Failure::CursorRefused,
            // No error code: not the server's answer but a proxy's, a firewall's, a
            // maintenance page's. The request may be fine: tried again later, nothing dropped.
            _ if code.is_none() => Failure::Unavailable { retry_after_ms },
            _ => Failure::Rejected { status, mutation },
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
    /// `reset`: the first page of a whole state; `more`: pages follow; `gone`, on the last
    /// page of a whole state: the records it dropped (in none of its pages), which a tab
    /// that did not see its first pages drops too.
    Synced {
        from: Option<String>,
        to: String,
        reset: bool,
        more: bool,
        changes: Vec<Change>,
        gone: Option<Vec<RecordKey>>,
    },
    /// The server acknowledged a tab's mutations up to `ack`.
    Acked { client_id: String, ack: u64 },
    /// A tab that is not the leader was focused: the leader should pull.
    PullWanted,
    /// A tab's request failed (no answer, or an error the server gave): until a tab hears
    /// the server's state again, every tab counts itself cut off (`Engine::cut_off`).
    Unreachable,
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
