//! Sinkron's deterministic simulation: many users, devices and tabs, each tab running the real
//! [`sinkron_core::Engine`], against the real server ([`sinkron_server::app`] over SQLite), with
//! lost, duplicated, delayed and reordered messages, partitions, server and tab crashes, wrong
//! clocks, tombstone compaction and sessions ended elsewhere — all decided by one `u64` seed,
//! so any failure replays exactly.
//!
//! It owns the simulated world — the network, each device's `localStorage`, `BroadcastChannel`
//! and Web Lock, the virtual clock — and the invariants of `DESIGN.md`, checked at every step
//! (safety), then after healing everything (liveness). It must not read the real clock or
//! any entropy, and must not change what it tests: the engine and the server run unmodified,
//! driven only through their public APIs.
//!
//! One run: [`run`] derives [`Params`] from the seed, builds a [`World`](world::World), runs
//! the safety phase (user actions and faults at random, every step checked), then the liveness
//! phase (faults healed, writes stopped, every device online and visible) until everything
//! agrees or the step budget runs out.

pub mod params;
mod rng;
pub mod server;
mod trace;
pub mod world;

use std::fmt;

pub use params::Params;

/// A broken invariant (or a simulation that could not run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant, e.g. `"6 one poller per device"`.
    pub invariant: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: &'static str, detail: impl Into<String>) -> Self {
        Violation {
            invariant,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {}: {}", self.invariant, self.detail)
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub params: Params,
    /// Steps taken in both phases.
    pub steps: u64,
    /// Virtual milliseconds the run lasted.
    pub elapsed_ms: u64,
    /// Hash of the whole trace: the same seed must give the same hash.
    pub trace_hash: u64,
    pub violation: Option<Violation>,
    /// The last events before the end (or the violation), oldest first.
    pub trace_tail: Vec<String>,
    /// Requests the server answered.
    pub requests: u64,
}

/// Runs one seed with the parameters it derives.
pub fn run(seed: u64) -> Outcome {
    run_with(seed, Params::from_seed(seed))
}

/// Runs one seed with the given parameters (to override a knob).
pub fn run_with(seed: u64, params: Params) -> Outcome {
    world::World::run(seed, params)
}
