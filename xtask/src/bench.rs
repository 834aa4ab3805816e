//! `cargo xtask bench`: builds `sinkron` and `sinkron-bench` in release mode, makes sure the
//! local PostgreSQL is up, and runs the benchmark, which prints a Markdown table for
//! `BENCHMARKS.md`. Extra arguments go to `sinkron-bench` (`--secs N`, `--backends ...`).

use std::path::PathBuf;
use std::process::{exit, Command};

pub fn run(args: &[String]) {
    crate::postgres::ensure_running();
    crate::step(
        "release build",
        &[
            "build",
            "--release",
            "-p",
            "sinkron-server",
            "-p",
            "sinkron-bench",
            "--bins",
        ],
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let bench = target.join("release").join("sinkron-bench");
    eprintln!("==> bench: {} {}", bench.display(), args.join(" "));
    match Command::new(&bench).args(args).status() {
        Ok(s) if s.success() => {}
        Ok(s) => exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", bench.display());
            exit(1)
        }
    }
}
