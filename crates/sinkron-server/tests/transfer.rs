//! `sinkron import` and `sinkron export` as an operator runs them, on SQLite and PostgreSQL:
//! bad lines reported and skipped (or, with `--strict`, the end of the run), a second run
//! that changes nothing, a device's newer write that an older imported one does not replace,
//! an import beside a server taking pushes (whose devices see the imported records at their
//! next poll), and an export that imports into a fresh database and exports the same bytes.
//!
//! The site's users are signed in with HS256 tokens made from `tests/fixtures/jwt`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{header, StatusCode};
use serde_json::{json, Value};
use support::{batch, mutation, site_token, Backend, Data, Server, BIN, UNLIMITED};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The longest one import or export may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a device may see `304` after an import ended.
const PICKUP_TIMEOUT: Duration = Duration::from_secs(10);

async fn start(data: &Data) -> Server {
    let secret = support::hs256_secret_path().display().to_string();
    let mut args = vec!["--jwt-hs256-secret-file", secret.as_str()];
    args.extend_from_slice(&UNLIMITED);
    data.start(&args).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Runs the binary to completion, with `stdin` as its standard input.
async fn sinkron(args: &[&str], stdin: Option<Vec<u8>>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("SINKRON_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the sinkron binary starts");
    if let Some(bytes) = stdin {
        let mut input = child.stdin.take().expect("piped stdin");
        input.write_all(&bytes).await.expect("write stdin");
        drop(input);
    }
    tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("the run ends in time")
        .expect("its output is readable")
}

async fn import(data: &Data, file: &Path, extra: &[&str]) -> Output {
    let (url, file) = (data.url(), file.display().to_string());
    let mut args = vec!["import", "--database", url.as_str()];
    args.extend_from_slice(extra);
    args.push(file.as_str());
    sinkron(&args, None).await
}

/// An export that must succeed: its standard output.
async fn export(data: &Data, extra: &[&str]) -> String {
    let url = data.url();
    let mut args = vec!["export", "--database", url.as_str()];
    args.extend_from_slice(extra);
    let out = sinkron(&args, None).await;
    assert!(out.status.success(), "export: {}", text(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The summary on standard output: (imported, older than stored, invalid).
fn counts(out: &Output) -> (u64, u64, u64) {
    let stdout = text(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let numbers: Vec<u64> = line
        .split(", ")
        .map(|part| {
            part.rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a summary, not {stdout:?}"))
        })
        .collect();
    assert_eq!(numbers.len(), 3, "{stdout:?}");
    (numbers[0], numbers[1], numbers[2])
}

/// The `line N` of every invalid line reported on standard error.
fn reported(out: &Output) -> Vec<(u64, String)> {
    text(&out.stderr)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("line ")?;
            let (n, reason) = rest.split_once(": ")?;
            Some((n.parse().ok()?, reason.to_owned()))
        })
        .collect()
}

/// One record as `export` writes it.
fn line(user: &str, collection: &str, key: &str, value: Option<&str>, at: u64) -> String {
    let s = |v: &str| serde_json::to_string(v).expect("string");
    format!(
        "{{\"user\":{},\"collection\":{},\"key\":{},\"value\":{},\"updatedAt\":{at}}}",
        s(user),
        s(collection),
        s(key),
        value.unwrap_or("null")
    )
}

/// What an export of these good lines is: sorted by user, collection, key, bytewise.
fn exported(lines: &[(String, String, String, String)]) -> String {
    let mut sorted: Vec<_> = lines.to_vec();
    sorted.sort();
    sorted.into_iter().map(|(_, _, _, l)| l + "\n").collect()
}

const COLLECTIONS: [&str; 4] = ["history", "favorites", "likes", "settings"];

/// Good records of three users, one in ten a delete: (user, collection, key, line).
fn good_records() -> Vec<(String, String, String, String)> {
    let base = 1_700_000_000_000u64;
    (0..900u64)
        .map(|i| {
            let user = format!("site-{}", i % 3);
            let collection = COLLECTIONS[(i % 4) as usize].to_owned();
            let key = format!("show-{i}");
            let value = format!(r#"{{"n":{i},"title":"Épisode \"{i}\"","at":{}.5}}"#, i * 7);
            let value = (i % 10 != 9).then_some(value);
            let l = line(&user, &collection, &key, value.as_deref(), base + i);
            (user, collection, key, l)
        })
        .collect()
}

/// Bad lines, each with what its report must say.
fn bad_lines() -> Vec<(String, &'static str)> {
    let big = format!(r#"{{"s":"{}"}}"#, "x".repeat(5000));
    vec![
        ("not json at all".to_owned(), "not JSON"),
        (
            line("site-0", "watchlist", "k", Some("{}"), 1),
            "collection: unknown collection",
        ),
        (line("site-0", "likes", "", Some("{}"), 1), "key: must be"),
        (line("site-0", "likes", "k", Some("[1,2]"), 1), "value:"),
        (
            line("site-0", "likes", "k", Some(r#"{"p":1e400}"#), 1),
            "double",
        ),
        (line("site-0", "likes", "k", Some(&big), 1), "bytes"),
        (line(&"u".repeat(129), "likes", "k", Some("{}"), 1), "user:"),
        (
            r#"{"user":"site-0","collection":"likes","key":"k","value":{}}"#.to_owned(),
            "missing field `updatedAt`",
        ),
        (
            r#"{"user":"site-0","collection":"likes","key":"k","value":{},"updatedAt":-5}"#
                .to_owned(),
            "invalid value",
        ),
    ]
}

/// The good lines with the bad ones among them (and a blank line, which is no record);
/// returns the dump and, per bad line, its number and expected reason.
fn dump_with_bad_lines(
    good: &[(String, String, String, String)],
) -> (String, Vec<(u64, &'static str)>) {
    let bad = bad_lines();
    let mut dump = String::new();
    let mut expected = Vec::new();
    let mut number = 0u64;
    let mut bad_iter = bad.into_iter();
    for (i, (_, _, _, l)) in good.iter().enumerate() {
        if i % 97 == 50 {
            if let Some((b, reason)) = bad_iter.next() {
                number += 1;
                dump.push_str(&b);
                dump.push('\n');
                expected.push((number, reason));
            }
        }
        if i == 400 {
            number += 1;
            dump.push_str("   \n");
        }
        number += 1;
        dump.push_str(l);
        dump.push('\n');
    }
    assert_eq!(expected.len(), bad_lines().len(), "every bad line placed");
    (dump, expected)
}

async fn bad_lines_are_skipped_and_a_second_run_changes_nothing(backend: Backend) {
    let data = Data::new(backend);
    let good = good_records();
    let (dump, expected) = dump_with_bad_lines(&good);
    let file = data.dir().join("dump.jsonl");
    std::fs::write(&file, &dump).expect("write the dump");

    let out = import(&data, &file, &[]).await;
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    assert_eq!(counts(&out), (900, 0, expected.len() as u64));
    let lines = reported(&out);
    assert_eq!(
        lines.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        expected.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "{}",
        text(&out.stderr)
    );
    for ((n, reason), (_, expect)) in lines.iter().zip(&expected) {
        assert!(
            reason.contains(expect),
            "line {n}: {reason:?} lacks {expect:?}"
        );
    }
    let first = export(&data, &[]).await;
    assert_eq!(first, exported(&good));

    // Again, beside a running server: nothing changes, not even a version.
    let server = start(&data).await;
    let site0 = site_token("site-0");
    let before = server.pull_ok(&site0, None).await;
    let again = import(&data, &file, &[]).await;
    assert!(again.status.success(), "import: {}", text(&again.stderr));
    assert_eq!(counts(&again), (0, 900, expected.len() as u64));
    let after = server.pull_ok(&site0, None).await;
    assert_eq!(after["cursor"], before["cursor"]);
    assert_eq!(after["changes"], before["changes"]);
    assert_eq!(export(&data, &[]).await, first);
    server.stop().await;

    // --strict: the lines before the first bad one, none after it.
    let strict = Data::new(backend);
    let out = import(&strict, &file, &["--strict"]).await;
    assert!(!out.status.success());
    let first_bad = expected[0].0;
    let before_it = (first_bad - 1) as usize;
    assert_eq!(counts(&out), (before_it as u64, 0, 1));
    assert_eq!(reported(&out).len(), 1, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("stopped at the invalid line {first_bad}")));
    assert_eq!(export(&strict, &[]).await, exported(&good[..before_it]));
}

async fn a_devices_newer_write_survives_an_older_import(backend: Backend) {
    let data = Data::new(backend);
    let server = start(&data).await;
    let phone = site_token("site-7");
    let now = now_ms();
    let pushed = server
        .push_ok(
            &phone,
            &batch(
                "phone",
                vec![
                    mutation(1, "history", "e1", json!({"position": 120}), now),
                    mutation(2, "likes", "e2", Value::Null, now),
                ],
                Some("0"),
            ),
        )
        .await;
    let cursor = pushed["cursor"].as_str().expect("cursor").to_owned();

    let old = now - 60_000;
    let dump = [
        line("site-7", "history", "e1", Some(r#"{"position":5}"#), old),
        line("site-7", "likes", "e2", Some(r#"{"liked":true}"#), old),
        line("site-7", "favorites", "e3", Some(r#"{"added":1}"#), old),
    ]
    .join("\n");
    let file = data.dir().join("dump.jsonl");
    std::fs::write(&file, dump).expect("write the dump");
    let out = import(&data, &file, &[]).await;
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    assert_eq!(counts(&out), (1, 2, 0));

    let state = server.state(&phone).await;
    assert_eq!(state.len(), 2, "{state:?}");
    let e1 = &state[&("history".to_owned(), "e1".to_owned())];
    assert_eq!(e1["value"], json!({"position": 120}));
    assert_eq!(e1["updatedAt"], json!(now));
    assert!(!state.contains_key(&("likes".to_owned(), "e2".to_owned())));
    let e3 = &state[&("favorites".to_owned(), "e3".to_owned())];
    assert_eq!(e3["value"], json!({"added": 1}));
    assert_eq!(e3["updatedAt"], json!(old));

    // The device's next pull brings exactly the imported record.
    let next = server.pull_ok(&phone, Some(&cursor)).await;
    let keys: Vec<&str> = next["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["e3"]);
    server.stop().await;
}

/// Polls as an idle device does (`If-None-Match` its cursor) until the answer is not `304`.
async fn poll_until_changed(server: &Server, token: &str, cursor: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PICKUP_TIMEOUT;
    loop {
        let r = support::reply(
            server
                .http
                .get(server.url(&format!("/api/user/me?lastSync={cursor}")))
                .bearer_auth(token)
                .header(header::IF_NONE_MATCH, format!("\"{cursor}\"")),
        )
        .await;
        match r.status {
            StatusCode::OK => return r.json(),
            StatusCode::NOT_MODIFIED => {}
            other => panic!("poll: {other} {}", r.text),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the imported records never reached the device"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn an_import_runs_beside_a_server_taking_pushes(backend: Backend) {
    let data = Data::new(backend);
    let server = Arc::new(start(&data).await);
    let users: Vec<String> = (0..4).map(|u| format!("live-{u}")).collect();
    let old = now_ms() - 86_400_000;

    // An idle device of a user who pushes nothing: it must see the import at its next poll.
    let quiet = site_token("quiet");
    let quiet_cursor = server.pull_ok(&quiet, None).await["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();

    let mut dump = String::new();
    for i in 0..2_000 {
        for user in users.iter().chain(std::iter::once(&"quiet".to_owned())) {
            let value = format!(r#"{{"imported":{i}}}"#);
            dump.push_str(&line(
                user,
                "favorites",
                &format!("imp-{i}"),
                Some(&value),
                old + i,
            ));
            dump.push('\n');
        }
        if i < 50 {
            // Records the devices write too, later: the devices' must stay.
            for user in &users {
                dump.push_str(&line(user, "likes", &format!("dev-{i}"), Some("{}"), old));
                dump.push('\n');
            }
        }
    }
    let file = data.dir().join("dump.jsonl");
    std::fs::write(&file, dump).expect("write the dump");
    let total = 2_000 * 5 + 50 * 4;

    let importing = Arc::new(AtomicBool::new(true));
    let during = Arc::new(AtomicU64::new(0));
    let mut devices = Vec::new();
    for user in users.clone() {
        let (server, importing, during) = (server.clone(), importing.clone(), during.clone());
        devices.push(tokio::spawn(async move {
            let device = site_token(&user);
            let mut id = 0u64;
            // Every key at least once, and on until the import is over.
            loop {
                let i = id % 50;
                id += 1;
                let stamp = now_ms();
                let r = server
                    .push(
                        &device,
                        &batch(
                            "device",
                            vec![mutation(
                                id,
                                "likes",
                                &format!("dev-{i}"),
                                json!({"dev": id}),
                                stamp,
                            )],
                            None,
                        ),
                    )
                    .await;
                assert_eq!(
                    r.status,
                    StatusCode::OK,
                    "push during the import: {}",
                    r.text
                );
                if importing.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::SeqCst);
                } else if id >= 50 {
                    return id;
                }
            }
        }));
    }
    let out = import(&data, &file, &[]).await;
    importing.store(false, Ordering::SeqCst);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let mut last_ids = Vec::new();
    for device in devices {
        last_ids.push(device.await.expect("the device's pushes"));
    }
    assert!(
        during.load(Ordering::SeqCst) > 0,
        "pushes ran during the import"
    );
    let (imported, older, invalid) = counts(&out);
    assert_eq!((imported + older, invalid), (total, 0));
    assert!(imported >= 2_000 * 5, "{imported}");

    for (user, last) in users.iter().zip(last_ids) {
        let state = server.state(&site_token(user)).await;
        let mut latest: BTreeMap<String, u64> = BTreeMap::new();
        for id in 1..=last {
            latest.insert(format!("dev-{}", (id - 1) % 50), id);
        }
        for (key, id) in latest {
            let record = &state[&("likes".to_owned(), key.clone())];
            assert_eq!(record["value"], json!({"dev": id}), "{user} {key}");
        }
        for i in 0..2_000 {
            let record = &state[&("favorites".to_owned(), format!("imp-{i}"))];
            assert_eq!(record["value"], json!({"imported": i}), "{user} imp-{i}");
        }
        assert_eq!(state.len(), 2_050, "{user}");
    }

    let changed = poll_until_changed(&server, &quiet, &quiet_cursor).await;
    assert!(!changed["changes"].as_array().expect("changes").is_empty());
    assert_eq!(server.state(&quiet).await.len(), 2_000);
    drop(server);
}

async fn an_export_imports_into_a_fresh_database_as_the_same_bytes(backend: Backend) {
    let data = Data::new(backend);
    let server = start(&data).await;
    let now = now_ms();
    // Values as devices send them, spacing and number spelling kept.
    let raw = |id: u64, collection: &str, key: &str, value: &str, at: u64| {
        format!(
            r#"{{"id":{id},"collection":{},"key":{},"value":{value},"updatedAt":{at}}}"#,
            serde_json::to_string(collection).expect("s"),
            serde_json::to_string(key).expect("s")
        )
    };
    for (user, extra) in [("b/c", 0), ("ü-user", 1), ("a", 2)] {
        let body = format!(
            r#"{{"clientId":"dev-{extra}","mutations":[{},{},{},{}]}}"#,
            raw(
                1,
                "history",
                "e1",
                r#"{ "position": 1.50, "t": "x\"y" }"#,
                now - 5
            ),
            raw(
                2,
                "settings",
                "théme",
                r#"{"dark":true,"nested":{"a":[1,2e3]}}"#,
                now - 4
            ),
            raw(3, "likes", "gone", r#"{"x":1}"#, now - 3),
            raw(4, "likes", "gone", "null", now - 2 + extra),
        );
        let r = server
            .send(
                reqwest::Method::POST,
                "/api/user/me/changes",
                Some(&site_token(user)),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "push: {}", r.text);
    }
    let file = data.dir().join("extra.jsonl");
    std::fs::write(
        &file,
        line("z", "favorites", "f1", Some(r#"{"since": 3}"#), 42) + "\n",
    )
    .expect("write");
    let out = import(&data, &file, &[]).await;
    assert_eq!(counts(&out), (1, 0, 0), "{}", text(&out.stderr));

    let dump = export(&data, &[]).await;
    let users: Vec<&str> = dump
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            match v["user"].as_str().expect("user") {
                "a" => "a",
                "b/c" => "b/c",
                "ü-user" => "ü-user",
                "z" => "z",
                other => panic!("unexpected user {other}"),
            }
        })
        .collect();
    assert_eq!(users.len(), 3 * 3 + 1);
    let mut sorted = users.clone();
    sorted.sort_unstable();
    assert_eq!(users, sorted, "users in bytewise order");
    assert!(
        dump.contains(r#""value":{ "position": 1.50, "t": "x\"y" }"#),
        "{dump}"
    );
    assert!(dump.contains(r#""key":"gone","value":null"#), "{dump}");
    let only_a = export(&data, &["--user", "a"]).await;
    let a_lines: String = dump
        .lines()
        .filter(|l| l.starts_with(r#"{"user":"a","#))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(only_a, a_lines);
    let url = data.url();
    let missing = sinkron(&["export", "--database", &url, "--user", "nobody"], None).await;
    assert!(!missing.status.success());
    server.stop().await;

    // Into a fresh database of each kind, from standard input.
    for target in [Backend::Sqlite, Backend::Postgres] {
        let fresh = Data::new(target);
        let url = fresh.url();
        let out = sinkron(
            &["import", "--database", &url, "-"],
            Some(dump.clone().into_bytes()),
        )
        .await;
        assert!(out.status.success(), "import: {}", text(&out.stderr));
        assert_eq!(counts(&out), (10, 0, 0));
        assert_eq!(export(&fresh, &[]).await, dump, "{backend:?} to {target:?}");
    }
}

#[tokio::test]
async fn the_commands_are_listed_with_their_flags() {
    let top = sinkron(&["--help"], None).await;
    let top = text(&top.stdout);
    assert!(top.contains("import") && top.contains("export"), "{top}");
    let help = sinkron(&["import", "--help"], None).await;
    assert!(help.status.success());
    let help = text(&help.stdout);
    for flag in [
        "--database",
        "--collections",
        "--max-future-ms",
        "--strict",
        "[FILE]",
    ] {
        assert!(help.contains(flag), "import --help mentions {flag}");
    }
    let help = text(&sinkron(&["export", "--help"], None).await.stdout);
    for flag in ["--database", "--user", "--output"] {
        assert!(help.contains(flag), "export --help mentions {flag}");
    }
    let missing = sinkron(
        &["import", "--database", "x.db", "/no/such/file.jsonl"],
        None,
    )
    .await;
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("cannot read /no/such/file.jsonl"));
}

async fn collection_caps_apply_as_to_a_push(backend: Backend) {
    let data = Data::new(backend);
    let dump: String = (0..5u64)
        .map(|i| line("fan", "history", &format!("e{i}"), Some("{}"), 100 + i) + "\n")
        .collect();
    let file = data.dir().join("dump.jsonl");
    std::fs::write(&file, dump).expect("write the dump");
    let out = import(&data, &file, &["--collection-caps", "history=3"]).await;
    assert_eq!(counts(&out), (5, 0, 0), "{}", text(&out.stderr));
    // The two oldest are deletions, with their own stamps, as a push past the cap leaves them.
    let expected: String = (0..5u64)
        .map(|i| {
            let value = (i >= 2).then_some("{}");
            line("fan", "history", &format!("e{i}"), value, 100 + i) + "\n"
        })
        .collect();
    assert_eq!(export(&data, &[]).await, expected);
    let bad = import(&data, &file, &["--collection-caps", "watchlist=3"]).await;
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("watchlist"),
        "{}",
        text(&bad.stderr)
    );
}

on_every_backend!(
    collection_caps_apply_as_to_a_push,
    bad_lines_are_skipped_and_a_second_run_changes_nothing,
    a_devices_newer_write_survives_an_older_import,
    an_import_runs_beside_a_server_taking_pushes,
    an_export_imports_into_a_fresh_database_as_the_same_bytes,
);
