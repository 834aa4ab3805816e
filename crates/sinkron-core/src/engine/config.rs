//! The engine's policies: how often the leader pulls, how long a push waits, how retries back
//! off, and which events pull.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// The engine's policies. Every duration is in milliseconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Time between background pulls of the leader tab: the shortest, whatever the server
    /// says.
    pub interval_ms: u64,
    /// The longest the server's `Sinkron-Poll-Interval` may stretch the interval to
    /// ([`crate::Engine::handle_poll_interval`]).
    pub interval_ms_max: u64,
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
    /// Collections whose writes are hot, with how often at most (ms) a push carries them
    /// while they keep coming: a playback position, written every second while a video plays,
    /// costs one push per this interval instead of one per write. A hot write still reaches
    /// the view, the storage and the other tabs at once, and goes with any push sooner (a
    /// write to another collection, [`crate::Engine::push_now`] at a pause or a seek, the
    /// page being hidden, coming back online, signing out). Offline, or with its last request
    /// failed (cut off while the browser says online), a hot write is stamped as of the last
    /// sync ([`crate::Clock::as_of`]), not now.
    pub hot: Vec<(String, u64)>,
    /// Sticky field names: where the server merges a collection per field and keeps a field
    /// `true` once any write set it (`--merge-fields history:completed`), a queued write whose
    /// value holds it `true` is never replaced or undone unsent by a later write of its key
    /// whose value does not (an un-mark, a delete, a whole record holding `false`): both go,
    /// in order, so the server keeps the `true` as it would had the first been sent on its
    /// own. Declared to match the server's; a name applies in every collection (where the
    /// server merges whole records, or the field is not sticky, the extra write changes
    /// nothing: the later one wins).
    pub sticky: Vec<String>,
    /// Most mutations in one push.
    pub push_batch_max: usize,
    /// Budget of a push's body, in bytes, its writes counted at their largest as JSON: a push
    /// carries the oldest queued writes that fit (the first whatever its size; no write is
    /// near this large), the rest go in the next. A slow uplink must carry a push within the
    /// request timeout (60 KiB take 6 s at 10 KB/s, where 100 writes of the largest values
    /// are over 400 kB), and browsers refuse `keepalive` bodies above 64 KiB.
    pub push_bytes_max: usize,
    /// First retry delay cap after a failure; doubles with each failure in a row.
    pub backoff_base_ms: u64,
    /// Largest retry delay cap. A retry never waits longer than the pull interval either: a
    /// server that is down costs each device at most what polling it would.
    pub backoff_ms_max: u64,
    /// Pull the account's state right after sign-in (else at the next interval or focus).
    pub pull_on_sign_in: bool,
    /// Pull when the window gets focus or the tab becomes visible again (a tab that opens
    /// still learns the state, from the leader).
    pub pull_on_focus: bool,
    /// Pull when the browser comes back online.
    pub pull_on_online: bool,
    /// The app adopts data it kept before Sinkron: the engine asks for it once per device
    /// and user scope ([`crate::Command::Adopt`]).
    pub adopt_legacy: bool,
    /// Hold the server's poke stream open from the visible leader tab
    /// ([`crate::Command::Pokes`]; a server run with `--poke sse`): the leader pulls as soon
    /// as the user's version rises elsewhere. Polling goes on as without it.
    pub pokes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval_ms: 30_000,
            interval_ms_max: 600_000,
            interval_jitter_percent: 10,
            trigger_gap_ms: 2_000,
            push_delay_ms: 300,
            push_wait_ms_max: 3_000,
            hot: vec![(String::from("history"), 30_000)],
            sticky: Vec::new(),
            push_batch_max: 100,
            push_bytes_max: 60 * 1024,
            backoff_base_ms: 1_000,
            backoff_ms_max: 60_000,
            pull_on_sign_in: true,
            pull_on_focus: true,
            pull_on_online: true,
            adopt_legacy: false,
            pokes: false,
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
