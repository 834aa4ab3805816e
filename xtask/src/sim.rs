//! The simulation's chores.
//!
//! * In `cargo xtask test`, after the workspace tests (which run the simulation's 200 seeds):
//!   the planted-bug checks. They need the simulation built with `--features planted-bugs`,
//!   a separate build, so they are their own step and never touch the normal build. The
//!   store's planted bugs are also shown to fail the storage conformance suite on SQLite and
//!   on PostgreSQL (the simulation runs on SQLite only).
//! * `cargo xtask sim ARGS` — the long mode: the simulation binary, optimised, with any of
//!   its arguments (`--seeds N`, `--start S`, `--seed S`, `--jobs J`).

use crate::step;

/// The planted-bug checks: each planted bug must be caught within a bounded number of seeds,
/// and each of the store's by the conformance suite on every backend.
pub fn planted(nextest: bool) {
    let args: &[&str] = if nextest {
        &[
            "nextest",
            "run",
            "-p",
            "sinkron-sim",
            "--features",
            "planted-bugs",
            "--test",
            "planted",
            "--no-fail-fast",
        ]
    } else {
        &[
            "test",
            "-p",
            "sinkron-sim",
            "--features",
            "planted-bugs",
            "--test",
            "planted",
        ]
    };
    step("simulation: planted bugs are caught", args);
    let args: &[&str] = if nextest {
        &[
            "nextest",
            "run",
            "-p",
            "sinkron-server",
            "--features",
            "planted-bugs",
            "--lib",
            "planted",
        ]
    } else {
        &[
            "test",
            "-p",
            "sinkron-server",
            "--features",
            "planted-bugs",
            "--lib",
            "planted",
        ]
    };
    step(
        "storage: planted bugs fail the conformance suite on every backend",
        args,
    );
}

/// `cargo xtask sim ARGS`: runs seeds in release mode.
pub fn long(args: &[String]) {
    let mut all = vec!["run", "--release", "-p", "sinkron-sim", "--"];
    all.extend(args.iter().map(String::as_str));
    step("simulation", &all);
}
