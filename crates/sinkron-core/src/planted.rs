//! Known bugs, planted on purpose so the simulation can show that it finds them.
//!
//! Compiled only with the `planted-bugs` feature, which is off by default and enabled by
//! nothing but the simulation's planted-bug checks (`cargo xtask sim-planted`). Each planted
//! site is a few lines under `#[cfg(feature = "planted-bugs")]` that consult [`planted`]; a
//! run switches one bug on with [`plant`] before it starts.

use core::sync::atomic::{AtomicU32, Ordering};

/// The bugs the simulation must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Bug {
    /// The server stores whatever arrives last instead of the newest write.
    ArrivalOrder = 1,
    /// The server's cursor is a timestamp (a record's version is its `updatedAt`).
    TimestampCursor = 2,
    /// The server applies mutations at or below the client's ack again.
    NoDedupe = 4,
    /// A pulled change drops the tab's pending write to the same key.
    PullOverwritesPending = 8,
    /// A tab restored under its old client id forgets its numbering and starts at id 1.
    ForgottenNumbering = 16,
    /// A 401 does not stop the tab: it retries as after a network failure.
    RetryAfterUnauthorized = 32,
    /// Signing in does not take the writes an earlier sign-out left parked for the user.
    ForgottenParked = 64,
    /// Per-field merge, not commutative: a field's write older than a delete that arrived
    /// before it comes back.
    MergeOrder = 128,
    /// Per-field merge, not idempotent: a write applied again removes the fields it set.
    MergeTwice = 256,
    /// Per-field merge, not newest-wins: a field takes whatever write of it arrives last.
    MergeArrival = 512,
    /// A cap reads only as many of a collection's oldest records as it evicts, forgetting
    /// that a record the push rewrote may be among them (and is then not one to evict).
    CapReadsTooFew = 1024,
    /// A push the server refused for one write it names drops the whole batch, the valid
    /// writes with it.
    RefusalDropsBatch = 2048,
    /// A queued write takes the next write to its key whatever fields each sets, keeping
    /// its own list (and a delete takes the place of the last queued write only, as that
    /// rule did): a later delete then names fields (and is refused), a later write's other
    /// fields are not sent as set.
    CoalesceAcrossFields = 4096,
    /// A hot write made offline is stamped now, not as of the last sync: a second of playback
    /// from a stale copy then undoes progress another device made since.
    OfflineStampedNow = 8192,
    /// A hot write made while the tab's requests fail (the browser saying online) is stamped
    /// now: only the browser's offline flag counts as cut off.
    UnreachableStampedNow = 16384,
    /// A server-rendered snapshot older than the stored cursor (a page from a cache) is
    /// taken: a record deleted since, whose tombstone is gone, comes back for good.
    StaleSnapshotTaken = 32768,
    /// Writes of one push stamped past the server's bound are all stored at the bound: two
    /// writes of one record, one stamp, and the first stays.
    ClampKeepsFirst = 65536,
    /// A tab that takes over a gone tab's unsent writes leaves them shown as that tab's, here
    /// and in the other tabs: here they hide the writes taken (then dropped with the stored
    /// copy), there they stay for good.
    TakeoverKeepsForeign = 131072,
    /// A server-rendered snapshot is compared with the stored cursor alone: with none stored
    /// (another tab receives a whole state), one older than the records stored is taken.
    SnapshotIgnoresRecords = 262144,
    /// A tab told by another that the device is cut off (`TabBody::Unreachable`) does not
    /// count itself so: beside the leader, a position played from a stale copy is stamped now.
    UnreachableIgnored = 524288,
    /// A leader cut off answers a tab's request for a pull without telling it the device is
    /// cut off: a tab opened during the outage stamps its positions now.
    AskerNotTold = 1048576,
    /// A tab whose own requests failed (it led through an outage) keeps saying the server
    /// cannot be reached after the device's next leader has synced.
    UnreachableLingers = 2097152,
    /// A 4xx without the server's error code (a proxy's page) is taken as the server's
    /// refusal: the writes of a push it answers are dropped.
    ProxyRefusalTaken = 4194304,
    /// A whole record takes the place of the queued one of its key whatever fields each
    /// holds: where the server merges per field, a field only the queued one held is never
    /// sent.
    WholeWritesCoalesce = 8388608,
    /// A tab taking over a gone tab's writes skips those older than what it shows: where the
    /// server merges per field, an older write of another field, or an older delete, is lost.
    TakeoverSkipsOlder = 16777216,
    /// The guest's scope wiped at a sign-in drops the outboxes of the guest's tabs gone,
    /// instead of keeping them to be taken over: their writes are lost.
    GuestTabsDropped = 33554432,
    /// A wipe that keeps the outboxes holding writes removes those it reads as empty: one
    /// another tab filled since (a copy of the storage may lag) goes, its writes with it.
    WipeDropsEmpty = 134217728,
    /// The leader's pulls wipe the guest's outboxes: those of the guest's tabs gone not yet
    /// taken over (a guest tab's writes that reached the storage after the sign-in) are lost.
    LeaderDropsGuest = 268435456,
    /// A push that leaves queued writes behind (its budget spent) carries the id of the
    /// outbox's last write on its own last one: its answer acknowledges the writes left
    /// behind too, and they are dropped unsent.
    PushCutAcksAll = 536870912,
    /// A later write of a key takes the place of (or, a delete, undoes) a queued write that
    /// set a sticky field `true`, unsent: the server never keeps that `true`.
    StickyCoalesced = 1073741824,
    /// A tab taking over a gone tab's stored writes drops the stored copy even when it heard
    /// that tab write one the copy it read lacks (its copy of the storage lags): that write
    /// is lost.
    TakeoverDropsLagging = 2147483648,
}

impl Bug {
    pub const ALL: [Bug; 31] = [
        Bug::ArrivalOrder,
        Bug::TimestampCursor,
        Bug::NoDedupe,
        Bug::PullOverwritesPending,
        Bug::ForgottenNumbering,
        Bug::RetryAfterUnauthorized,
        Bug::ForgottenParked,
        Bug::MergeOrder,
        Bug::MergeTwice,
        Bug::MergeArrival,
        Bug::CapReadsTooFew,
        Bug::RefusalDropsBatch,
        Bug::CoalesceAcrossFields,
        Bug::OfflineStampedNow,
        Bug::UnreachableStampedNow,
        Bug::StaleSnapshotTaken,
        Bug::ClampKeepsFirst,
        Bug::TakeoverKeepsForeign,
        Bug::SnapshotIgnoresRecords,
        Bug::UnreachableIgnored,
        Bug::AskerNotTold,
        Bug::UnreachableLingers,
        Bug::ProxyRefusalTaken,
        Bug::WholeWritesCoalesce,
        Bug::TakeoverSkipsOlder,
        Bug::GuestTabsDropped,
        Bug::WipeDropsEmpty,
        Bug::LeaderDropsGuest,
        Bug::PushCutAcksAll,
        Bug::StickyCoalesced,
        Bug::TakeoverDropsLagging,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Bug::ArrivalOrder => "arrival-order",
            Bug::TimestampCursor => "timestamp-cursor",
            Bug::NoDedupe => "no-dedupe",
            Bug::PullOverwritesPending => "pull-overwrites-pending",
            Bug::ForgottenNumbering => "forgotten-numbering",
            Bug::RetryAfterUnauthorized => "retry-after-401",
            Bug::ForgottenParked => "forgotten-parked",
            Bug::MergeOrder => "merge-order",
            Bug::MergeTwice => "merge-twice",
            Bug::MergeArrival => "merge-arrival",
            Bug::CapReadsTooFew => "cap-reads-too-few",
            Bug::RefusalDropsBatch => "refusal-drops-batch",
            Bug::CoalesceAcrossFields => "coalesce-across-fields",
            Bug::OfflineStampedNow => "offline-stamped-now",
            Bug::UnreachableStampedNow => "unreachable-stamped-now",
            Bug::StaleSnapshotTaken => "stale-snapshot-taken",
            Bug::ClampKeepsFirst => "clamp-keeps-first",
            Bug::TakeoverKeepsForeign => "takeover-keeps-foreign",
            Bug::SnapshotIgnoresRecords => "snapshot-ignores-records",
            Bug::UnreachableIgnored => "unreachable-ignored",
            Bug::AskerNotTold => "asker-not-told",
            Bug::UnreachableLingers => "unreachable-lingers",
            Bug::ProxyRefusalTaken => "proxy-refusal-taken",
            Bug::WholeWritesCoalesce => "whole-writes-coalesce",
            Bug::TakeoverSkipsOlder => "takeover-skips-older",
            Bug::GuestTabsDropped => "guest-tabs-dropped",
            Bug::WipeDropsEmpty => "wipe-drops-empty",
            Bug::LeaderDropsGuest => "leader-drops-guest",
            Bug::PushCutAcksAll => "push-cut-acks-all",
            Bug::StickyCoalesced => "sticky-coalesced",
            Bug::TakeoverDropsLagging => "takeover-drops-lagging",
        }
    }
}

static PLANTED: AtomicU32 = AtomicU32::new(0);

/// Switches `bug` on for the rest of the process.
pub fn plant(bug: Bug) {
    PLANTED.fetch_or(bug as u32, Ordering::Relaxed);
}

/// Whether `bug` is switched on.
pub fn planted(bug: Bug) -> bool {
    PLANTED.load(Ordering::Relaxed) & bug as u32 != 0
}
