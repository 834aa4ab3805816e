//! Sinkron's core: everything about syncing that must be decided exactly once.
//!
//! It owns the record model and the newest-wins merge ([`record`]), the client clock rule
//! ([`clock`]), the wire types of protocol v1 ([`protocol`]), the client sync engine, a
//! sans-IO state machine ([`engine`]), which stored outbox a starting tab takes over
//! ([`adopt`]), the limits of a write that the engine and the server both check
//! ([`limits`]), and the per-field merge of the collections declared so ([`merge`], with
//! the `serde` feature: the server and the simulation apply it).
//!
//! It must not do I/O: no clock, no entropy, no threads, no async runtime, no HTTP and no
//! storage. Time and randomness come in as arguments; what to do comes out as commands. The
//! server, the native client, the simulation and the browser build all call into this crate,
//! so the browser and the server can never disagree on a merge.
//!
//! The crate compiles to WebAssembly under a tight size budget, so the engine avoids `f64`
//! formatting, tree and hash maps (its records are a sorted list) and sorting; serde is behind
//! the `serde` feature, which only the server and the native client enable. It is `no_std` (with `alloc`), so the browser build
//! carries none of std's panic and formatting machinery.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod adopt;
pub mod clock;
pub mod engine;
pub mod limits;
#[cfg(feature = "serde")]
pub mod merge;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod protocol;
pub mod record;
mod rng;

pub use clock::Clock;
pub use engine::{Command, Config, Engine, Notice, Page, Persist, Reply, Request, Status};
pub use protocol::{Change, Mutation};
pub use record::{Record, RecordKey};
