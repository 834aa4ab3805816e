//! Makes sure the local PostgreSQL the server tests and the benchmark use answers at
//! 127.0.0.1:5432: starts the Debian cluster when it is stopped, and installs PostgreSQL from
//! Debian's packages when it is missing altogether.
//!
//! Skipped when `SINKRON_TEST_POSTGRES_URL` points the tests at another server.

use std::path::Path;
use std::process::{exit, Command, Stdio};

/// Ensures PostgreSQL answers on loopback, or exits with one line saying why it cannot.
pub fn ensure_running() {
    if std::env::var_os("SINKRON_TEST_POSTGRES_URL").is_some() {
        return;
    }
    if ready() {
        return;
    }
    if !Path::new("/etc/postgresql").is_dir() {
        eprintln!("==> postgres: not installed, installing it from Debian's packages");
        run("apt-get", &["update", "-q"]);
        run(
            "apt-get",
            &[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "postgresql",
            ],
        );
    }
    for version in clusters() {
        eprintln!("==> postgres: starting cluster {version}/main");
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "start"])
            .status();
    }
    // pg_ctlcluster returns once the server accepts connections; check rather than trust.
    let waited = Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-t", "30"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !waited {
        eprintln!(
            "error: PostgreSQL does not answer at 127.0.0.1:5432 (pg_ctlcluster start failed?)"
        );
        exit(1);
    }
    trust_loopback();
}

fn ready() -> bool {
    Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-q"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The installed major versions, e.g. `["15"]`.
fn clusters() -> Vec<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
}

/// The tests connect as `postgres` over TCP without a password. A freshly installed cluster
/// asks for one; let loopback in (this is a test machine's throwaway cluster).
fn trust_loopback() {
    let ok = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-Atqc", "select 1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return;
    }
    eprintln!("==> postgres: allowing trust authentication on loopback for user postgres");
    for version in clusters() {
        let hba = format!("/etc/postgresql/{version}/main/pg_hba.conf");
        let Ok(text) = std::fs::read_to_string(&hba) else {
            continue;
        };
        let rule = "host all postgres 127.0.0.1/32 trust\n";
        if !text.contains(rule) {
            let _ = std::fs::write(&hba, format!("{rule}{text}"));
        }
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "reload"])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let ok = Command::new(program)
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("error: `{program} {}` failed", args.join(" "));
        exit(1);
    }
}
