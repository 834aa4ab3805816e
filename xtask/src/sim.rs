//! The simulation's chores.
//!
//! * In `cargo xtask test`, after the workspace tests (which run the simulation's 200 seeds):
//!   the planted-bug checks. They need the simulation built with `--features planted-bugs`,
//!   a separate build, so they are their own step and never touch the normal build.
//! * `cargo xtask sim ARGS` — the long mode: the simulation binary, optimised, with any of
//!   its arguments (`--seeds N`, `--start S`, `--seed S`, `--jobs J`).

use crate::step;

/// The planted-bug checks: each planted bug must be caught within a bounded number of seeds.
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
}

/// `cargo xtask sim ARGS`: runs seeds in release mode.
pub fn long(args: &[String]) {
    let mut all = vec!["run", "--release", "-p", "sinkron-sim", "--"];
    all.extend(args.iter().map(String::as_str));
    step("simulation", &all);
}
