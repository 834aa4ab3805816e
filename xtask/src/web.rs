//! The browser chores: the wasm engine, the npm packages, the demo and the Chromium tests.
//!
//! * `wasm`: builds `sinkron-wasm` for `wasm32-unknown-unknown` (profile `wasm`, on the nightly
//!   toolchain with `core` and `alloc` rebuilt under the `immediate-abort` panics), shrinks the
//!   module with `wasm-opt` from npm's `binaryen` into `packages/sinkron/src/wasm/sinkron.wasm`
//!   (it needs no generated glue), and prints what Sinkron adds to a page (gzip).
//! * `demo`: `wasm`, then the TypeScript checks and the demo's production build (`demo/dist`).
//! * `run`: `demo`, then `sinkron serve --static-dir demo/dist` (release build).
//! * `e2e`: the end-to-end scenarios in Debian's Chromium against the real server.
//! * `pack`: `wasm`, then the npm package's build and `npm pack` into `target/npm`.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The workspace root. `cargo run` sets `CARGO_MANIFEST_DIR` at run time; the compile-time
/// value is only a fallback, since a target dir shared by several checkouts may hold an
/// xtask binary built from another one.
fn root() -> PathBuf {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&manifest_dir)
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root) or `target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Runs a program in the workspace root, exiting with its status if it fails.
fn run(name: &str, program: &str, args: &[&str]) {
    run_command(name, Command::new(program).args(args));
}

/// Runs a prepared command in the workspace root, exiting with its status if it fails.
fn run_command(name: &str, command: &mut Command) {
    let program = command.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args = args.join(" ");
    let env: String = command
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={:?} ", k.to_str()?, v?)))
        .collect();
    eprintln!("==> {name}: {env}{program} {args}");
    match command.current_dir(root()).status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("error: {name} failed ({program} {args})");
            exit(s.code().unwrap_or(1))
        }
        Err(e) => {
            eprintln!("error: could not run `{program}` for {name}: {e}");
            exit(1)
        }
    }
}

fn succeeds(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the npm workspace when `node_modules` is missing or older than the lock file.
pub fn npm_install() {
    if succeeds("node", &["--version"]).is_none() {
        eprintln!("error: Node.js 20+ and npm are needed (Debian: apt-get install nodejs npm)");
        exit(1);
    }
    let root = root();
    let stamp = root.join("node_modules/.package-lock.json");
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let fresh = match (modified(&stamp), modified(&root.join("package-lock.json"))) {
        (Some(installed), Some(lock)) => installed >= lock,
        _ => false,
    };
    if !fresh {
        run("npm packages", "npm", &["ci", "--no-audit", "--no-fund"]);
    }
}

/// The toolchain of the browser build: a nightly, for `-Zbuild-std` with the
/// `immediate-abort` panic strategy (the standard library rebuilt without its panic
/// machinery: 0.4 kB gzip less, BENCHMARKS.md "Size"). Installed when missing; an installed
/// nightly is used as it is, never updated here.
const NIGHTLY: &str = "nightly";

fn ensure_nightly() {
    let has = |what: &str, name: &str| {
        succeeds(
            "rustup",
            &[what, "list", "--installed", "--toolchain", NIGHTLY],
        )
        .is_some_and(|list| list.lines().any(|l| l.trim().starts_with(name)))
    };
    if succeeds("rustup", &["run", NIGHTLY, "rustc", "--version"]).is_none() {
        run(
            "nightly toolchain",
            "rustup",
            &["toolchain", "install", NIGHTLY, "--profile", "minimal"],
        );
    }
    if !has("target", "wasm32-unknown-unknown") {
        let args = [
            "target",
            "add",
            "--toolchain",
            NIGHTLY,
            "wasm32-unknown-unknown",
        ];
        run("wasm target", "rustup", &args);
    }
    if !has("component", "rust-src") {
        let args = ["component", "add", "--toolchain", NIGHTLY, "rust-src"];
        run("standard library source", "rustup", &args);
    }
}

pub fn wasm() {
    ensure_nightly();
    // `RUSTFLAGS` replaces the target's flags in `.cargo/config.toml`: they are repeated
    // here. Only the wasm build sees these; every host crate builds on the stable toolchain.
    // No source locations or `Debug` formatting in the module either (a few bytes: nothing
    // prints them once panics just trap).
    let flags = "-Zunstable-options -Cpanic=immediate-abort -Cllvm-args=-inline-threshold=10 \
                 -Zlocation-detail=none -Zfmt-debug=none";
    run_command(
        "wasm build",
        Command::new("cargo")
            .args([
                &format!("+{NIGHTLY}"),
                "build",
                "-p",
                "sinkron-wasm",
                "--target",
                "wasm32-unknown-unknown",
                "--profile",
                "wasm",
                "-Zbuild-std=std,panic_abort",
            ])
            .env("RUSTFLAGS", flags)
            // Set by the `cargo xtask` running this, for the stable toolchain.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC"),
    );
    npm_install();
    let out = root().join("packages/sinkron/src/wasm");
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("error: could not create {}: {e}", out.display());
        exit(1);
    }
    let module = target_dir().join("wasm32-unknown-unknown/wasm/sinkron_wasm.wasm");
    let optimized = out.join("sinkron.wasm");
    run(
        "wasm-opt",
        "node_modules/.bin/wasm-opt",
        &[
            // Measured on the gzip size (BENCHMARKS.md): a function with one caller is
            // inlined only when small (binaryen's default inlines any size: everything ends up
            // in one 23 kB function that compresses worse); a second -Oz after binaryen's
            // flattening and re-looping, to a fixed point, finds about 0.1 kB more than one;
            // similar functions merged, and functions and locals ordered by use, last. Any
            // function of up to 4 (binaryen's measure; its default 2) is inlined everywhere.
            "--one-caller-inline-max-function-size=100",
            "--always-inline-max-function-size=4",
            "-Oz",
            "--flatten",
            "--rereloop",
            "-Oz",
            "--converge",
            "--merge-similar-functions",
            "-Oz",
            "--reorder-functions",
            "--reorder-locals",
            // Rust's stack sits below the data, from 1 MiB down: the first KiB is never
            // used, so binaryen may fold constant addresses into load/store offsets.
            "--low-memory-unused",
            // Custom sections the browser ignores (toolchain versions, feature list).
            "--strip-producers",
            "--strip-target-features",
            "--enable-bulk-memory",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-reference-types",
            "--enable-multivalue",
            &module.to_string_lossy(),
            "-o",
            &optimized.to_string_lossy(),
        ],
    );
    run("size", "node", &["packages/sinkron/scripts/size.mjs"]);
}

pub fn demo() {
    wasm();
    run("typecheck", "npm", &["run", "typecheck"]);
    run("demo build", "npm", &["run", "build", "-w", "sinkron-demo"]);
}

/// The npm package as the tarball an app installs (`npm install PATH.tgz`), in `target/npm`.
pub fn pack() {
    wasm();
    run("package build", "npm", &["run", "build", "-w", "sinkron"]);
    let out = target_dir().join("npm");
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("error: could not create {}: {e}", out.display());
        exit(1);
    }
    run(
        "npm pack",
        "npm",
        &[
            "pack",
            "-w",
            "sinkron",
            "--pack-destination",
            &out.to_string_lossy(),
        ],
    );
}

pub fn serve(extra: &[String]) {
    demo();
    let mut args: Vec<&str> = vec![
        "run",
        "--release",
        "--bin",
        "sinkron",
        "--",
        "serve",
        "--static-dir",
        "demo/dist",
    ];
    args.extend(extra.iter().map(String::as_str));
    run("server", env!("CARGO"), &args);
}

/// Debian's Chromium, installed when missing (as root; otherwise says how).
fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    eprintln!("==> installing Debian's chromium for the browser tests");
    let ok = Command::new("apt-get")
        .arg("update")
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "chromium"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok || !Path::new(CHROMIUM).exists() {
        eprintln!("error: {CHROMIUM} is missing; install it with `sudo apt-get install chromium`");
        exit(1);
    }
}

/// The npm package's unit tests (node's test runner, fakes of the browser APIs, the real
/// engine); the package must be built (`demo` builds it).
pub fn package_tests() {
    run("package tests", "npm", &["test", "-w", "sinkron"]);
}

/// The browser scenarios; the demo must be built (`demo`).
pub fn e2e() {
    ensure_chromium();
    run(
        "server binary",
        env!("CARGO"),
        &["build", "--bin", "sinkron"],
    );
    // The scenarios start the binary just built, wherever the target directory is.
    std::env::set_var("SINKRON_BIN", target_dir().join("debug/sinkron"));
    run("browser tests", "npm", &["run", "e2e"]);
}
