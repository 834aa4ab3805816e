//! `cargo xtask <chore>`: the one entry point for the project's chores.
//!
//! * `cargo xtask test` — the whole test suite, exactly what CI runs: formatting, lints, then
//!   every test of the workspace (with cargo-nextest when installed, else `cargo test`). The
//!   server tests need PostgreSQL on 127.0.0.1:5432; it is started (or installed) first.
//!   Then the browser side: the wasm engine, the TypeScript checks, the demo build and the
//!   scenarios in Debian's Chromium (`web.rs`).
//! * `cargo xtask run` — builds the demo and serves it with the sync server on
//!   http://127.0.0.1:8080 (`web.rs`; also `wasm`, `demo`, `e2e` on their own, and `pack`,
//!   the npm package as a tarball an app installs).
//! * `cargo xtask sim ARGS` — the simulation's long mode, in release mode; `cargo xtask test`
//!   also runs its planted-bug checks (`sim.rs`).
//! * `cargo xtask bench` — the server benchmark (release build, loopback only), a Markdown
//!   table for `BENCHMARKS.md`.
//!
//! It only orchestrates other tools; no project logic lives here.

mod bench;
mod postgres;
mod sim;
mod web;

use std::process::{exit, Command};

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("test") => test(),
        Some("sim") => sim::long(&args.collect::<Vec<_>>()),
        Some("bench") => bench::run(&args.collect::<Vec<_>>()),
        Some("wasm") => web::wasm(),
        Some("demo") => web::demo(),
        Some("run") => web::serve(&args.collect::<Vec<_>>()),
        Some("e2e") => web::e2e(),
        Some("pack") => web::pack(),
        Some("help") | Some("--help") | Some("-h") | None => usage(0),
        Some(other) => {
            eprintln!("error: unknown chore `{other}`");
            usage(2)
        }
    }
}

fn usage(code: i32) -> ! {
    eprintln!(
        "usage: cargo xtask <chore>\n\nchores:\n  run     build the demo and serve it with the sync server at http://127.0.0.1:8080\n  test    run the whole test suite (what CI runs)\n  bench   run the server benchmark (release build)\n  wasm    build the browser engine and print its size\n  demo    build the demo site (demo/dist)\n  e2e     run the browser scenarios (after `demo`)\n  pack    build the npm package into an installable tarball (target/npm)\n  sim     run simulation seeds in release mode (--seeds N [--start S] | --seed S)"
    );
    exit(code)
}

fn test() {
    step("formatting", &["fmt", "--all", "--", "--check"]);
    step(
        "lints",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    );
    postgres::ensure_running();
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if nextest {
        step(
            "tests",
            &["nextest", "run", "--workspace", "--no-fail-fast"],
        );
    } else {
        eprintln!("note: cargo-nextest not found, using cargo test (cargo install cargo-nextest for a faster run)");
        step("tests", &["test", "--workspace", "--no-fail-fast"]);
    }
    sim::planted(nextest);
    // Last, so the run ends with the browser scenarios' summary.
    web::demo();
    web::package_tests();
    web::e2e();
}

/// Runs `cargo <args>`, exiting with its status if it fails.
fn step(name: &str, args: &[&str]) {
    eprintln!("==> {name}: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO")).args(args).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("error: {name} failed (cargo {})", args.join(" "));
            exit(s.code().unwrap_or(1))
        }
        Err(e) => {
            eprintln!("error: could not run cargo for {name}: {e}");
            exit(1)
        }
    }
}
