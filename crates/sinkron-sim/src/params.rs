//! What a seed decides before the run starts: how many actors, how often each fault strikes,
//! how long each phase lasts. Every field is a plain knob a test may override.

use std::fmt;

use crate::rng::Rng;
use sinkron_core::Config;

/// The shape of one run. [`Params::from_seed`] derives it; tests may change any field.
#[derive(Clone, Debug)]
pub struct Params {
    pub users: usize,
    /// Devices per user (each starts owned by that user).
    pub devices_per_user: Vec<usize>,
    /// Tabs each device opens at the start; a device never has more than `tabs_max` open.
    pub tabs_initial: Vec<usize>,
    pub tabs_max: usize,
    /// Per mille of devices that start as a guest.
    pub guest_per_mille: u64,
    /// Per mille of sign-ins that pick another user than the device's owner (a shared device).
    pub shared_sign_in_per_mille: u64,
    /// Each device's clock error at the start, in milliseconds (within ±1 hour).
    pub skews_ms: Vec<i64>,
    /// Per mille of requests lost on the way to the server.
    pub drop_request_per_mille: u64,
    /// Per mille of responses lost after the server applied the request.
    pub drop_response_per_mille: u64,
    /// Per mille of requests delivered twice.
    pub duplicate_per_mille: u64,
    /// Per mille of requests, sent with the token the tab already had, that find it expired
    /// (401 `token_expired`); the retry with a fresh token from the site passes.
    pub token_expired_per_mille: u64,
    /// One-way latency bounds; each packet draws its own, so packets overtake each other.
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
    /// How long a client waits for an answer that never comes.
    pub request_timeout_ms: u64,
    /// Mean gap between two user actions or faults.
    pub action_gap_ms_mean: u64,
    /// Per mille of actions that are a fault (partition, server crash, clock jump) rather
    /// than something a user does.
    pub fault_per_mille: u64,
    /// Virtual time of the safety phase (faults on, writes on).
    pub safety_ms: u64,
    /// Steps the liveness phase may take to converge before the seed fails.
    pub liveness_steps_max: u64,
    /// Virtual time the liveness phase may take to converge before the seed fails.
    pub liveness_ms_max: u64,
    /// Events kept as text for the failure report.
    pub trace_tail: usize,
    /// Most changes in one answer (the server's `--page-size`): small enough in some runs
    /// that whole states and pulls come in pages (`more`).
    pub page_size: u32,
    /// About the most bytes of changes in one answer (the server's `--page-bytes`): in some
    /// runs small enough (a few changes) that pages are cut by their bytes.
    pub page_bytes: u32,
    /// About the most bytes of writes in one push (the engine's `Config::push_bytes_max`): in
    /// some runs small enough (a few writes) that an outbox leaves in several pushes.
    pub push_bytes: u32,
    /// The interval the server asks clients to poll at (`--poll-interval`, seconds): the
    /// default 30 (the clients' own), or longer in some runs.
    pub poll_interval_secs: u32,
    /// Whether the server's faults include compacting tombstones (with a retention of
    /// seconds), so devices behind the horizon get resets, whole states in pages among them.
    pub compaction: bool,
    /// Whether the site may end a device's session elsewhere (the user signed out on another
    /// page of the site, a password change): that device's requests are refused with 401
    /// until the user signs in again on it.
    pub revocation: bool,
    /// Per mille of requests a proxy in front of the server answers with an error page of its
    /// own: a 4xx without the server's error body.
    pub proxy_error_per_mille: u64,
    /// The longest a tab's write to `localStorage` takes to reach another tab's copy of it
    /// (0: at once). Chromium keeps a copy per renderer and copies writes between them later,
    /// often after a `BroadcastChannel` message sent after the write (see `device::Op`).
    pub storage_lag_ms_max: u64,
}

impl Params {
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_5EED);
        let users = rng.range(1, 3) as usize;
        let devices_per_user: Vec<usize> = (0..users).map(|_| rng.range(2, 4) as usize).collect();
        let devices: usize = devices_per_user.iter().sum();
        let tabs_initial = (0..devices).map(|_| rng.range(1, 3) as usize).collect();
        let skews_ms = (0..devices)
            .map(|_| match rng.range(0, 3) {
                // Most clocks are about right; some are badly wrong either way.
                0 | 1 => rng.range_i64(-2_000, 2_000),
                _ => rng.range_i64(-3_600_000, 3_600_000),
            })
            .collect();
        let latency_ms_min = rng.range(1, 50);
        Params {
            users,
            devices_per_user,
            tabs_initial,
            tabs_max: 3,
            guest_per_mille: rng.range(0, 400),
            shared_sign_in_per_mille: rng.range(0, 100),
            skews_ms,
            drop_request_per_mille: rng.range(0, 150),
            drop_response_per_mille: rng.range(0, 150),
            duplicate_per_mille: rng.range(0, 100),
            latency_ms_min,
            latency_ms_max: latency_ms_min + rng.range(0, 3_000),
            request_timeout_ms: 10_000,
            action_gap_ms_mean: rng.range(200, 3_000),
            fault_per_mille: rng.range(10, 80),
            safety_ms: rng.range(3, 10) * 60_000,
            liveness_steps_max: 200_000,
            liveness_ms_max: 10 * 60_000,
            trace_tail: 60,
            // Drawn last, so the knobs above stay what they were for every seed.
            page_size: if rng.chance(500) {
                rng.range(1, 8) as u32
            } else {
                1000
            },
            token_expired_per_mille: if rng.chance(500) {
                rng.range(1, 300)
            } else {
                0
            },
            poll_interval_secs: if rng.chance(300) {
                rng.range(31, 180) as u32
            } else {
                30
            },
            compaction: rng.chance(400),
            revocation: rng.chance(300),
            proxy_error_per_mille: if rng.chance(300) {
                rng.range(1, 200)
            } else {
                0
            },
            storage_lag_ms_max: if rng.chance(500) { rng.range(1, 50) } else { 0 },
            page_bytes: if rng.chance(400) {
                rng.range(1024, 4096) as u32
            } else {
                256 << 10
            },
            push_bytes: if rng.chance(400) {
                rng.range(256, 2048) as u32
            } else {
                Config::default().push_bytes_max as u32
            },
        }
    }

    pub fn devices(&self) -> usize {
        self.devices_per_user.iter().sum()
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let skews: Vec<String> = self.skews_ms.iter().map(|s| format!("{s}")).collect();
        write!(
            f,
            "users={} devices={:?} tabs={:?} guests={}‰ shared={}‰ skew_ms=[{}] \
             drop_req={}‰ drop_resp={}‰ dup={}‰ latency={}..{}ms action_gap={}ms faults={}‰ \
             safety={}s page={} page_bytes={} push_bytes={} token_expired={}‰ poll={}s compaction={} revocation={} \
             proxy_error={}‰ storage_lag={}ms",
            self.users,
            self.devices_per_user,
            self.tabs_initial,
            self.guest_per_mille,
            self.shared_sign_in_per_mille,
            skews.join(","),
            self.drop_request_per_mille,
            self.drop_response_per_mille,
            self.duplicate_per_mille,
            self.latency_ms_min,
            self.latency_ms_max,
            self.action_gap_ms_mean,
            self.fault_per_mille,
            self.safety_ms / 1000,
            self.page_size,
            self.page_bytes,
            self.push_bytes,
            self.token_expired_per_mille,
            self.poll_interval_secs,
            self.compaction,
            self.revocation,
            self.proxy_error_per_mille,
            self.storage_lag_ms_max,
        )
    }
}
