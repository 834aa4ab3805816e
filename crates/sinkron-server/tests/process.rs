//! The `sinkron` binary as an operator meets it: flags, startup failures, restarts, crashes
//! and tombstone compaction at start, on SQLite and on PostgreSQL.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::{batch, mutation, postgres_admin_url, run, Backend, Data};

fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A startup failure is non-zero, one line on stderr, and not a panic.
fn assert_one_line_failure(out: &std::process::Output, expect: &str) {
    let lines = stderr_lines(out);
    assert!(!out.status.success(), "exit status {}", out.status);
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {lines:#?}");
    assert!(!lines[0].contains("panicked"), "{}", lines[0]);
    assert!(
        lines[0].to_lowercase().contains(&expect.to_lowercase()),
        "{:?} should mention {expect:?}",
        lines[0]
    );
}

#[tokio::test]
async fn help_exits_zero_and_lists_serve() {
    let out = run(&["--help"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
    let out = run(&["serve", "--help"]).await;
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--addr",
        "--database",
        "--db-pool-size",
        "--collections",
        "--max-future-ms",
        "--page-size",
        "--page-bytes",
        "--tombstone-ttl-secs",
    ] {
        assert!(help.contains(flag), "help mentions {flag}");
    }
}

#[tokio::test]
async fn bad_flags_fail_with_one_line() {
    assert_one_line_failure(&run(&["serve", "--bogus"]).await, "--bogus");
    assert_one_line_failure(&run(&["serve", "--addr", "nowhere"]).await, "--addr");
    assert_one_line_failure(&run(&["serve", "--page-size", "0"]).await, "--page-size");
    assert_one_line_failure(
        &run(&["serve", "--page-bytes", "1023"]).await,
        "--page-bytes",
    );
    for (proxy, expect) in [
        ("proxy.example", "neither an address"),
        ("10.0.0.0/33", "neither an address"),
        ("0.0.0.0/0", "trusts every address"),
    ] {
        let out = run(&["serve", "--trusted-proxy", proxy]).await;
        assert_one_line_failure(&out, expect);
    }
    for (flags, expect) in [
        (&["--collections="][..], "1 to 64 characters"),
        (&["--collections=a,,b"][..], "--collections"),
        (
            &["--poll-interval", "100", "--poll-interval-max", "50"][..],
            "above",
        ),
    ] {
        let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--database", ":memory:"];
        args.extend(flags);
        assert_one_line_failure(&run(&args).await, expect);
    }
    // A maintenance command names what it lacks, and points at its own help.
    for command in ["restored", "import", "export"] {
        let out = run(&[command]).await;
        assert_one_line_failure(&out, "--database");
        let help = format!("sinkron {command} --help");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&help),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn unusable_sqlite_databases_fail_with_one_clear_line() {
    let data = Data::new(Backend::Sqlite);
    let dir = data.dir();
    let missing_dir = dir.join("no/such/dir/s.db");
    let not_a_db = dir.join("notes.txt");
    std::fs::write(
        &not_a_db,
        "this is not a database, just some text ".repeat(100),
    )
    .expect("write a file");
    let cases = [
        (missing_dir.display().to_string(), "cannot open database"),
        (not_a_db.display().to_string(), "not a database"),
        (dir.display().to_string(), "cannot open database"),
        (
            "mysql://localhost/db".to_owned(),
            "unsupported database URL",
        ),
    ];
    for (url, expect) in cases {
        let out = run(&["serve", "--addr", "127.0.0.1:0", "--database", &url]).await;
        assert_one_line_failure(&out, expect);
    }
    // A mistyped path for a command that reads or marks a database is refused: it does not
    // pass for an empty database, and nothing is created.
    let typo = dir.join("typo.db").display().to_string();
    for command in [vec!["restored"], vec!["export", "-o", "/dev/null"]] {
        let mut args = command.clone();
        args.extend(["--database", &typo]);
        let out = run(&args).await;
        assert_one_line_failure(&out, "no database at");
        assert!(
            !dir.join("typo.db").exists(),
            "{command:?} created the file"
        );
    }
}

#[tokio::test]
async fn unreachable_or_misconfigured_postgres_fails_with_one_clear_line() {
    let admin = postgres_admin_url();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("the admin URL names a database");
    let missing_db = format!("{base}/sinkron_no_such_database");
    let cases = [
        // Nothing listens on port 1.
        (
            "postgres://postgres:secret@127.0.0.1:1/db".to_owned(),
            "connection refused",
        ),
        (missing_db, "does not exist"),
        (
            "postgresql://postgres@127.0.0.1:notaport/db".to_owned(),
            "invalid PostgreSQL URL",
        ),
        ("postgres://127.0.0.1/db".to_owned(), "names no user"),
    ];
    for (url, expect) in cases {
        let out = run(&["serve", "--addr", "127.0.0.1:0", "--database", &url]).await;
        assert_one_line_failure(&out, expect);
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("secret"),
            "no password in the error"
        );
    }
}

/// A SIGTERM the moment the server says it listens (an orchestrator stopping it at once) is a
/// clean stop, not a kill: the handler is in place before the line is printed.
#[tokio::test]
async fn a_sigterm_right_after_listening_is_a_clean_stop() {
    let data = Data::new(Backend::Sqlite);
    for _ in 0..5 {
        data.start(&[]).await.stop().await;
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_file_is_refused() {
    let data = Data::new(Backend::Sqlite);
    let server = data.start(&[]).await;
    let url = format!("sqlite://{}", data.db_path().display());
    let out = run(&["serve", "--addr", "127.0.0.1:0", "--database", &url]).await;
    assert_one_line_failure(&out, "in use by another sinkron server");
    // The first one is unaffected.
    let alice = server.register("alice").await;
    server.pull_ok(&alice.token, None).await;
    server.stop().await;
}

async fn acknowledged_pushes_and_sessions_survive_a_sigterm_restart(backend: Backend) {
    let data = Data::new(backend);
    let server = data.start(&[]).await;
    let alice = server.register("alice").await;
    let pushed = server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![mutation(1, "history", "ep1", json!({"pos": 42}), 1000)],
                None,
            ),
        )
        .await;
    let before = server.state(&alice.token).await;
    server.stop().await;

    let server = data.start(&[]).await;
    assert_eq!(server.state(&alice.token).await, before);
    // The ack survived too: a retry of the same batch is still a no-op...
    let retried = server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![mutation(1, "history", "ep1", json!({"pos": 42}), 1000)],
                None,
            ),
        )
        .await;
    assert_eq!(retried["ack"], pushed["ack"]);
    assert_eq!(retried["cursor"], pushed["cursor"]);
    // ... and so did what tells a retry from a reused id: a later write under id 1 is refused.
    let reused = server
        .push(
            &alice.token,
            &batch(
                "c1",
                vec![mutation(1, "history", "ep1", json!({"pos": 1}), 9000)],
                None,
            ),
        )
        .await;
    assert_eq!(reused.status, 409, "{}", reused.text);
    assert_eq!(reused.json()["error"]["ack"], 1);
    assert_eq!(server.state(&alice.token).await, before);
    server.stop().await;
}

async fn acknowledged_pushes_survive_kill_9(backend: Backend) {
    let data = Data::new(backend);
    let server = data.start(&[]).await;
    let alice = server.register("alice").await;
    let mut last = json!(null);
    for i in 1..=20u64 {
        last = server
            .push_ok(
                &alice.token,
                &batch(
                    "c1",
                    vec![mutation(i, "likes", &format!("e{i}"), json!({"i": i}), i)],
                    None,
                ),
            )
            .await;
    }
    // Killed right after the last acknowledgement: no shutdown code runs.
    server.kill().await;

    let server = data.start(&[]).await;
    let state = server.state(&alice.token).await;
    assert_eq!(state.len(), 20);
    for i in 1..=20u64 {
        let change = &state[&("likes".to_owned(), format!("e{i}"))];
        assert_eq!(change["value"], json!({"i": i}));
    }
    assert_eq!(
        server.pull_ok(&alice.token, None).await["cursor"],
        last["cursor"]
    );
    server.stop().await;
}

async fn a_cursor_behind_compacted_tombstones_gets_a_reset(backend: Backend) {
    let data = Data::new(backend);
    let server = data.start(&[]).await;
    let alice = server.register("alice").await;
    let put = server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![
                    mutation(1, "favorites", "a", json!({"on": true}), 10),
                    mutation(2, "favorites", "b", json!({"on": true}), 10),
                ],
                None,
            ),
        )
        .await;
    let old_cursor = put["cursor"].as_str().expect("cursor").to_owned();
    let deleted = server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![
                    mutation(3, "favorites", "a", json!(null), 20),
                    // The newest row is never compacted: one after the tombstone.
                    mutation(4, "favorites", "c", json!({"on": true}), 21),
                ],
                None,
            ),
        )
        .await;
    let cursor_after_delete = deleted["cursor"].as_str().expect("cursor").to_owned();
    // Before compaction the old cursor sees the tombstone.
    let body = server.pull_ok(&alice.token, Some(&old_cursor)).await;
    assert_eq!(body["changes"][0]["value"], json!(null));
    assert!(body.get("reset").is_none());
    server.stop().await;

    // A TTL of 0 compacts every tombstone at start.
    let server = data.start(&["--tombstone-ttl-secs", "0"]).await;
    let body = server.pull_ok(&alice.token, Some(&old_cursor)).await;
    assert_eq!(body["reset"], json!(true), "{body}");
    let changes = body["changes"].as_array().expect("changes");
    assert_eq!(
        changes.len(),
        2,
        "the whole state, the compacted tombstone gone: {body}"
    );
    assert_eq!(changes[0]["key"], "b");
    assert_eq!(changes[1]["key"], "c");
    assert_eq!(body["cursor"], json!(cursor_after_delete));
    // A push answer resets the same way.
    let pushed = server
        .push_ok(&alice.token, &batch("c2", vec![], Some(&old_cursor)))
        .await;
    assert_eq!(pushed["reset"], json!(true));
    // A client that had seen the tombstone is not reset.
    let body = server
        .pull_ok(&alice.token, Some(&cursor_after_delete))
        .await;
    assert!(body.get("reset").is_none(), "{body}");
    assert_eq!(body["changes"], json!([]));
    server.stop().await;
}

async fn the_environment_configures_the_server(backend: Backend) {
    let data = Data::new(backend);
    let server = data
        .start_by_env(&[
            ("SINKRON_PAGE_SIZE", "2"),
            ("SINKRON_COLLECTIONS", "notes,likes"),
        ])
        .await;
    let alice = server.register("alice").await;
    let mutations = (1..=3)
        .map(|i| mutation(i, "notes", &format!("n{i}"), json!({}), 5))
        .collect();
    let body = server
        .push_ok(&alice.token, &batch("c1", mutations, Some("0")))
        .await;
    assert_eq!(body["changes"].as_array().expect("changes").len(), 2);
    assert_eq!(body["more"], true);
    let r = server
        .push(
            &alice.token,
            &batch("c1", vec![mutation(4, "history", "h", json!({}), 5)], None),
        )
        .await;
    assert_eq!(
        r.error_code(),
        "invalid_mutation",
        "history is not configured"
    );
    server.stop().await;
    if backend == Backend::Sqlite {
        assert!(
            data.db_path().exists(),
            "the database named by SINKRON_DATABASE_URL"
        );
    }
}

/// The documented backup and restore (docs/DEPLOYMENT.md, "Backup"): an online backup, more
/// writes that the restore then loses, `sinkron restored`, and a device that synced the lost
/// writes: it is answered with a reset whose records are all newer than any it holds, so it
/// keeps nothing of the lost history.
async fn a_device_after_a_restore_is_reset_instead_of_diverging(backend: Backend) {
    let data = Data::new(backend);
    let server = data.start(&[]).await;
    let alice = server.register("alice").await;
    let first = batch(
        "tv",
        vec![mutation(1, "favorites", "s1", json!({}), 1_000)],
        None,
    );
    server.push_ok(&alice.token, &first).await;
    let backup = data.dir().join("backup");
    let command = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    };
    let url = data.url();
    match backend {
        // The documented `sqlite3 … "VACUUM INTO …"`, through the same SQLite library.
        Backend::Sqlite => {
            let db = rusqlite::Connection::open(data.db_path()).expect("open");
            db.execute("VACUUM INTO ?1", [backup.to_str().expect("utf-8")])
                .expect("online backup");
        }
        Backend::Postgres => command(
            "pg_dump",
            &["-Fc", "-f", backup.to_str().expect("utf-8"), &url],
        ),
    }
    // Writes after the backup, which the device pulls: the restore loses them.
    let lost = batch(
        "tv",
        vec![
            mutation(2, "favorites", "s2", json!({}), 2_000),
            mutation(3, "favorites", "s1", json!({"pinned": true}), 3_000),
        ],
        None,
    );
    server.push_ok(&alice.token, &lost).await;
    let device = server.pull_ok(&alice.token, None).await;
    let device_cursor = device["cursor"].as_str().expect("cursor").to_owned();
    let device_versions: Vec<u64> = device["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["version"].as_u64().expect("version"))
        .collect();
    if backend == Backend::Postgres {
        // Forgetting to stop a node: refused, and nothing changed (the device's cursor is
        // still this history's). SQLite's server holds the file's lock the same way.
        let out = run(&["restored", "--database", &url]).await;
        assert_one_line_failure(&out, "1 server node(s) still serve this database");
        let page = server.pull_ok(&alice.token, Some(&device_cursor)).await;
        assert_eq!(page["changes"], json!([]), "{page}");
        assert_ne!(page["reset"], json!(true), "{page}");
    }
    let data = server.stop().await;
    match backend {
        Backend::Sqlite => {
            for suffix in ["-wal", "-shm"] {
                let mut side = data.db_path().into_os_string();
                side.push(suffix);
                let _ = std::fs::remove_file(side);
            }
            std::fs::copy(&backup, data.db_path()).expect("restore the file");
        }
        Backend::Postgres => command(
            "pg_restore",
            &[
                "--clean",
                "--if-exists",
                "-d",
                &url,
                backup.to_str().expect("utf-8"),
            ],
        ),
    }
    let out = run(&["restored", "--database", &url]).await;
    assert!(out.status.success(), "sinkron restored: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("marked as restored"));

    let server = data.start(&[]).await;
    // The lost history's cursor, and one the restored history also issued: both reset.
    for cursor in [device_cursor.as_str(), "1"] {
        let page = server.pull_ok(&alice.token, Some(cursor)).await;
        assert_eq!(page["reset"], true, "cursor {cursor}: {page}");
        let changes = page["changes"].as_array().expect("changes");
        let keys: Vec<&str> = changes
            .iter()
            .map(|c| c["key"].as_str().expect("key"))
            .collect();
        assert_eq!(keys, ["s1"], "the restored state, whole");
        assert_eq!(changes[0]["value"], json!({}));
        let newest_held = device_versions.iter().max().copied().unwrap_or(0);
        assert!(
            changes
                .iter()
                .all(|c| c["version"].as_u64().expect("v") > newest_held),
            "every record of the reset is newer than any the device holds: {page}"
        );
    }
    // Syncing goes on from the new history: a write, then a 304 at its cursor.
    let again = batch(
        "tv",
        vec![mutation(4, "favorites", "s3", json!({}), 4_000)],
        None,
    );
    server.push_ok(&alice.token, &again).await;
    let now = server.pull_ok(&alice.token, None).await;
    let cursor = now["cursor"].as_str().expect("cursor");
    assert_eq!(
        server.pull(&alice.token, Some(cursor)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        server.pull_ok(&alice.token, Some(cursor)).await["changes"],
        json!([])
    );
    // A user who signs up now starts from the new floor too.
    let bob = server.register("bob").await;
    let fresh = server.pull_ok(&bob.token, None).await;
    let floor: u64 = fresh["cursor"]
        .as_str()
        .expect("cursor")
        .parse()
        .expect("digits");
    assert!(floor > device_cursor.parse::<u64>().expect("digits"));
    server.stop().await;
}

on_every_backend!(
    a_device_after_a_restore_is_reset_instead_of_diverging,
    acknowledged_pushes_and_sessions_survive_a_sigterm_restart,
    acknowledged_pushes_survive_kill_9,
    a_cursor_behind_compacted_tombstones_gets_a_reset,
    the_environment_configures_the_server,
);

#[tokio::test]
async fn each_request_is_one_info_line_with_its_client_and_never_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let server = Logged::start(&url, "info", &[]).await;
    let (http, base, token) = (
        server.http.clone(),
        server.base.clone(),
        server.token.clone(),
    );
    let pull = |token: String| {
        http.get(format!("{base}/api/user/me?lastSync=0"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(pull(token.clone()).await.expect("pull").status(), 200);
    assert_eq!(pull("f".repeat(64)).await.expect("pull").status(), 401);
    let wrong = json!({"username": "ann", "password": "not the password"});
    let r = http
        .post(format!("{base}/api/auth/login"))
        .json(&wrong)
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 401);
    let log = server.log().await;
    let line_with = |parts: &[&str]| {
        log.lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
    };
    for (route, status) in [
        ("route=/api/auth/register", "status=201"),
        ("route=/api/user/me", "status=200"),
        ("route=/api/user/me", "status=401"),
        ("route=/api/auth/login", "status=401"),
    ] {
        let found = line_with(&[
            "INFO",
            "method=",
            route,
            "client=127.0.0.1",
            status,
            "micros=",
        ]);
        assert!(found.is_some(), "no line for {route} {status} in:\n{log}");
    }
    assert!(!log.contains(&token), "a token was logged:\n{log}");
    assert!(!log.contains("lastSync"), "a query was logged:\n{log}");
    assert!(!log.contains("correct horse") && !log.contains("not the password"));
}

/// At `SINKRON_LOG=debug` the server's own debug lines are written, but not the PostgreSQL
/// driver's, which carry each statement's parameters: password hashes, record values.
#[tokio::test]
async fn debug_logs_leave_out_the_database_drivers_parameters() {
    let database = support::PostgresDatabase::create();
    let server = Logged::start(&database.url, "debug", &[]).await;
    let push = batch(
        "c1",
        vec![mutation(
            1,
            "likes",
            "e1",
            json!({"note": "private-note"}),
            5,
        )],
        None,
    );
    assert_eq!(server.push(&push).await.status(), 200);
    let log = server.log().await;
    assert!(log.contains("DEBUG"), "debug lines are written:\n{log}");
    assert!(
        !log.contains("$argon2id$"),
        "a password hash was logged:\n{log}"
    );
    assert!(
        !log.contains("private-note"),
        "a record value was logged:\n{log}"
    );
}

/// A new user's first push past a cap evicts as the cap says and warns of nothing: the
/// warning that collection counts were wrong is for counts edited by hand.
#[tokio::test]
async fn a_first_push_past_a_cap_is_no_cause_for_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let postgres = support::PostgresDatabase::create();
    let sqlite = format!("sqlite://{}", dir.path().join("s.db").display());
    for url in [sqlite, postgres.url.clone()] {
        let server = Logged::start(&url, "info", &["--collection-caps", "history=3"]).await;
        let writes = (1..=4)
            .map(|n| mutation(n, "history", &format!("e{n}"), json!({"p": n}), 10 + n))
            .collect();
        let r = server.push(&batch("c1", writes, Some("0"))).await;
        let page: serde_json::Value = r.json().await.expect("a push answer");
        let live = page["changes"].as_array().expect("changes").iter();
        let kept: Vec<&str> = live
            .filter(|c| !c["value"].is_null())
            .map(|c| c["key"].as_str().expect("key"))
            .collect();
        assert_eq!(kept, ["e2", "e3", "e4"], "the oldest evicted: {page}");
        let log = server.log().await;
        assert!(!log.contains("counts were wrong"), "{url}:\n{log}");
    }
}

/// A 503 the node answers on purpose (here: its budget of unread answers is spent) is one
/// line at INFO, like any answer, not an ERROR: under a flood of such requests an ERROR a
/// refusal would bury the errors that need someone.
#[tokio::test]
async fn a_refusal_for_a_full_answer_budget_is_no_error_in_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let args = [
        "--held-answers-bytes-max",
        "1",
        "--page-bytes",
        "8000000",
        "--request-timeout-secs",
        "2",
    ];
    let server = Logged::start(&url, "info", &args).await;
    // About 4 MB to pull, more than the sockets on the way hold: an answer the node holds
    // until its client has taken it.
    for first in (1..=1000).step_by(100) {
        let writes = (first..first + 100)
            .map(|n| {
                mutation(
                    n,
                    "likes",
                    &format!("e{n}"),
                    json!({"note": "x".repeat(4000)}),
                    n,
                )
            })
            .collect();
        assert_eq!(server.push(&batch("c1", writes, None)).await.status(), 200);
    }
    // A pull whose answer is not read: the budget is spent while it waits.
    let _unread = support::unread_pull(&server.base, &server.token).await;
    let refused = server
        .http
        .get(format!("{}/api/user/me", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .expect("pull");
    assert_eq!(refused.status(), 503);
    let log = server.log().await;
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("status=503")),
        "the refusal is logged as an answer:\n{log}"
    );
    assert!(!log.contains("ERROR"), "an error was logged:\n{log}");
}

/// A `sinkron serve` whose log is read at the end: started on `url` with `args`, at
/// `SINKRON_LOG=log`, with an account `ann` registered.
struct Logged {
    child: tokio::process::Child,
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Logged {
    async fn start(url: &str, log: &str, args: &[&str]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::new(support::BIN)
            .args(["serve", "--addr", "127.0.0.1:0", "--database", url])
            .args(args)
            .env("SINKRON_LOG", log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the sinkron binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let first = BufReader::new(stdout).lines().next_line().await;
        let line = first.expect("stdout").expect("a line");
        let base = line
            .strip_prefix("listening on ")
            .expect("its address")
            .to_owned();
        let http = reqwest::Client::new();
        let session: serde_json::Value = http
            .post(format!("{base}/api/auth/register"))
            .json(&json!({"username": "ann", "password": "correct horse"}))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("a session");
        let token = session["token"].as_str().expect("token").to_owned();
        Self {
            child,
            base,
            token,
            http,
        }
    }

    /// Ann's push, answered.
    async fn push(&self, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/user/me/changes", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("push")
    }

    /// Stops the server; its log.
    async fn log(mut self) -> String {
        self.child.start_kill().expect("kill");
        let out = self.child.wait_with_output().await.expect("output");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}
