//! The HTTP contract of protocol v1 against the real binary: auth, pull, push, limits,
//! malformed input, concurrency, paging and isolation.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use support::{batch, mutation, reply, try_reply, Backend, Server};

fn creds(username: &str, password: &str) -> Option<String> {
    Some(json!({"username": username, "password": password}).to_string())
}

fn cursor_of(body: &Value) -> String {
    body["cursor"]
        .as_str()
        .expect("cursor is a string")
        .to_owned()
}

async fn healthz_answers_200(backend: Backend) {
    let server = Server::start(backend).await;
    let r = server.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn register_login_logout_flow(backend: Backend) {
    let server = Server::start(backend).await;
    let r = server
        .send(
            Method::POST,
            "/api/auth/register",
            None,
            creds("alice", "correct horse"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "a token is never cached"
    );
    let body = r.json();
    let first = body["token"].as_str().expect("token").to_owned();
    assert_eq!(first.len(), 64);
    assert_eq!(body["user"]["username"], "alice");
    let id = body["user"]["id"].as_str().expect("id is a string");
    assert!(
        id.parse::<i64>().is_ok(),
        "id is an integer in a string: {id}"
    );

    let me = server.pull_ok(&first, None).await;
    assert_eq!(me["user"], body["user"]);
    assert_eq!(me["cursor"], "0");
    assert_eq!(me["changes"], json!([]));
    assert_eq!(me["more"], false);
    assert!(me["serverTime"].as_u64().is_some());

    let r = server
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            creds("alice", "correct horse"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let second = r.json()["token"].as_str().expect("token").to_owned();
    assert_ne!(first, second);
    assert_eq!(r.json()["user"], body["user"]);

    let r = server
        .send(Method::POST, "/api/auth/logout", Some(&first), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The logged-out token stops working at once; the other session is untouched.
    let r = server.pull(&first, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = server
        .send(Method::POST, "/api/auth/logout", Some(&first), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    server.pull_ok(&second, None).await;
}

async fn wrong_password_and_unknown_user_get_the_same_401(backend: Backend) {
    let server = Server::start(backend).await;
    server.register("alice").await;
    let wrong = server
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            creds("alice", "wrong password"),
        )
        .await;
    let unknown = server
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            creds("nobody", "correct horse"),
        )
        .await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.error_code(), "invalid_credentials");
    }
    assert_eq!(wrong.text, unknown.text);
}

async fn a_taken_username_is_409(backend: Backend) {
    let server = Server::start(backend).await;
    server.register("alice").await;
    let r = server
        .send(
            Method::POST,
            "/api/auth/register",
            None,
            creds("alice", "another password"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error_code(), "username_taken");
}

async fn usernames_and_passwords_are_validated(backend: Backend) {
    let server = Server::start(backend).await;
    let long_name = "a".repeat(33);
    let long_password = "p".repeat(129);
    let cases = [
        ("ab", "correct horse", "invalid_username"),
        (long_name.as_str(), "correct horse", "invalid_username"),
        ("Alice", "correct horse", "invalid_username"),
        ("al ice", "correct horse", "invalid_username"),
        ("al/ice", "correct horse", "invalid_username"),
        ("alice", "short", "invalid_password"),
        ("alice", long_password.as_str(), "invalid_password"),
    ];
    for (username, password, code) in cases {
        let r = server
            .send(
                Method::POST,
                "/api/auth/register",
                None,
                creds(username, password),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{username:?}/{password:?}"
        );
        assert_eq!(r.error_code(), code, "{username:?}/{password:?}");
    }
    // The edges are accepted.
    for (username, password) in [("a_b", "12345678"), (&*"z.-9".repeat(8), &*"p".repeat(128))] {
        let r = server
            .send(
                Method::POST,
                "/api/auth/register",
                None,
                creds(username, password),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{username:?}: {}", r.text);
    }
}

async fn user_routes_need_a_valid_bearer_token(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let unknown = "0123456789abcdef".repeat(4);
    let headers: Vec<Option<String>> = vec![
        None,
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Basic {}", alice.token)),
        Some(format!("Bearer {}", &alice.token[..63])),
        Some(format!("Bearer {}x", alice.token)),
        Some(format!("Bearer {unknown}")),
        Some(format!("Bearer {}", alice.token.to_uppercase())),
        Some("Bearer not-a-token-at-all".into()),
        Some(format!("Bearer {}", "a".repeat(10_000))),
    ];
    for (method, path) in [
        (Method::GET, "/api/user/me"),
        (Method::POST, "/api/user/me/changes"),
        (Method::POST, "/api/auth/logout"),
    ] {
        for h in &headers {
            let mut req = server.http.request(method.clone(), server.url(path));
            if let Some(h) = h {
                req = req.header(header::AUTHORIZATION, h);
            }
            let r = reply(req.body(batch("c1", vec![], None).to_string())).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {h:?}"
            );
            assert_eq!(r.error_code(), "unauthorized");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
}

async fn logins_are_throttled_after_ten_failures(backend: Backend) {
    let server = Server::start(backend).await;
    server.register("alice").await;
    for _ in 0..10 {
        let r = server
            .send(
                Method::POST,
                "/api/auth/login",
                None,
                creds("alice", "wrong password"),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Even the right password waits now.
    let r = server
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            creds("alice", "correct horse"),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "rate_limited");
    let retry_after: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    // Other usernames are not affected.
    server.register("bob").await;
    let r = server
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            creds("bob", "correct horse"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn unchanged_state_answers_304_without_a_body(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![mutation(1, "likes", "e1", json!({"v": 1}), 5)],
                None,
            ),
        )
        .await;
    let r = server.pull(&alice.token, Some("0")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(r.header("cache-control"), Some("no-cache, private"));
    let etag = r.header("etag").expect("etag").to_owned();

    let poll = || {
        reply(
            server
                .http
                .get(server.url("/api/user/me?lastSync=1"))
                .bearer_auth(&alice.token)
                .header(header::IF_NONE_MATCH, &etag),
        )
    };
    let r = poll().await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.text, "");
    assert_eq!(r.header("etag"), Some("\"1\""));

    // Another device writes: the same poll now gets the change and a new tag.
    server
        .push_ok(
            &alice.token,
            &batch(
                "c2",
                vec![mutation(1, "likes", "e2", json!({"v": 2}), 6)],
                None,
            ),
        )
        .await;
    let r = poll().await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("etag"), Some("\"2\""));
    let body = r.json();
    assert_eq!(body["changes"].as_array().expect("changes").len(), 1);
    assert_eq!(body["changes"][0]["key"], "e2");
}

async fn invalid_cursors_are_400(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    server
        .push_ok(
            &alice.token,
            &batch("c1", vec![mutation(1, "likes", "e1", json!({}), 5)], None),
        )
        .await;
    for cursor in [
        "abc",
        "-1",
        "1.5",
        "+1",
        "2",
        "%31",
        "18446744073709551616",
        "",
    ] {
        let r = server.pull(&alice.token, Some(cursor)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "lastSync={cursor:?}");
        assert_eq!(r.error_code(), "invalid_cursor");
        // In a push too, and then nothing of the batch is applied.
        let r = server
            .push(
                &alice.token,
                &batch(
                    "c1",
                    vec![mutation(2, "likes", "x", json!({}), 5)],
                    Some(cursor),
                ),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "push lastSync={cursor:?}"
        );
        assert_eq!(r.error_code(), "invalid_cursor");
    }
    assert_eq!(server.state(&alice.token).await.len(), 1);
    assert_eq!(server.pull_ok(&alice.token, None).await["cursor"], "1");
}

async fn full_and_incremental_pulls_carry_tombstones(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let body = server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![
                    mutation(1, "favorites", "a", json!({"on": true}), 5),
                    mutation(2, "favorites", "b", json!({"on": true}), 5),
                    mutation(3, "favorites", "a", json!(null), 6),
                ],
                Some("0"),
            ),
        )
        .await;
    assert_eq!(body["ack"], 3);
    assert_eq!(body["cursor"], "3");
    let changes = body["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "latest state per record: {body}");
    assert_eq!(changes[0]["key"], "b");
    assert_eq!(changes[0]["version"], 2);
    assert_eq!(changes[1]["key"], "a");
    assert_eq!(changes[1]["value"], json!(null));
    assert_eq!(changes[1]["version"], 3);
    assert_eq!(changes[1]["clientId"], "c1");
    assert_eq!(changes[1]["updatedAt"], 6);

    // The whole state holds the tombstone too: a client can tell a record that is gone from
    // one it holds from a newer answer.
    let full = server.pull_ok(&alice.token, None).await;
    assert_eq!(full["changes"], body["changes"]);
    assert_eq!(full["cursor"], "3");
    let since_zero = server.pull_ok(&alice.token, Some("0")).await;
    assert_eq!(since_zero["changes"], body["changes"]);
}

async fn a_retried_batch_is_applied_once(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let body = batch(
        "c1",
        vec![
            mutation(1, "history", "ep1", json!({"pos": 10}), 100),
            mutation(2, "history", "ep2", json!({"pos": 20}), 100),
            mutation(3, "likes", "ep1", json!({}), 100),
        ],
        None,
    );
    let first = server.push_ok(&alice.token, &body).await;
    assert_eq!(first["ack"], 3);
    assert_eq!(first["cursor"], "3");
    let second = server.push_ok(&alice.token, &body).await;
    assert_eq!(second["ack"], 3);
    assert_eq!(second["cursor"], "3", "no version bump on a retry");
    // A retry overlapping a new mutation applies only the new one.
    let mut overlap = body.clone();
    overlap["mutations"]
        .as_array_mut()
        .expect("mutations")
        .push(mutation(4, "history", "ep3", json!({"pos": 1}), 100));
    let third = server.push_ok(&alice.token, &overlap).await;
    assert_eq!(third["ack"], 4);
    assert_eq!(third["cursor"], "4");
    // A copy at or below the ack stamped no later than anything the client sent is a
    // retry (a sent mutation never changes): skipped, whatever it carries.
    let stale = server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![mutation(2, "history", "ep2", json!({"pos": 99}), 100)],
                None,
            ),
        )
        .await;
    assert_eq!(stale["ack"], 4);
    let state = server.state(&alice.token).await;
    assert_eq!(state.len(), 4);
    assert_eq!(
        state[&("history".into(), "ep2".into())]["value"],
        json!({"pos": 20})
    );
}

async fn reused_ids_are_refused_with_the_ack_and_nothing_is_lost(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let first = batch(
        "tab",
        vec![mutation(1, "favorites", "s01", json!({}), 1_000)],
        None,
    );
    assert_eq!(server.push_ok(&alice.token, &first).await["ack"], 1);

    // The same client id, numbering from 1 again (a reloaded tab that lost its numbering),
    // with a new write stamped later than anything it sent: not a retry. Skipping it would
    // lose it, so the whole batch is refused with the ack and nothing of it is applied.
    let reused = batch(
        "tab",
        vec![
            mutation(1, "favorites", "s02", json!({}), 2_000),
            mutation(2, "favorites", "s03", json!({}), 2_001),
        ],
        None,
    );
    let refused = server.push(&alice.token, &reused).await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert_eq!(refused.error_code(), "mutation_id_reused");
    assert_eq!(refused.json()["error"]["ack"], 1);
    assert_eq!(server.state(&alice.token).await.len(), 1);

    // Renumbered above the ack, as the engine does, both arrive.
    let renumbered = batch(
        "tab",
        vec![
            mutation(2, "favorites", "s02", json!({}), 2_000),
            mutation(3, "favorites", "s03", json!({}), 2_001),
        ],
        None,
    );
    assert_eq!(server.push_ok(&alice.token, &renumbered).await["ack"], 3);
    // The first batch retried late is still a retry: skipped, not refused.
    assert_eq!(server.push_ok(&alice.token, &first).await["ack"], 3);
    let state = server.state(&alice.token).await;
    let keys: Vec<&str> = state.keys().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys, ["s01", "s02", "s03"]);
    // Another client id is not affected by this one's ack.
    let other = batch(
        "phone",
        vec![mutation(1, "favorites", "s04", json!({}), 500)],
        None,
    );
    assert_eq!(server.push_ok(&alice.token, &other).await["ack"], 1);
}

async fn an_invalid_mutation_rejects_the_whole_batch(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let r = server
        .push(
            &alice.token,
            &batch(
                "c1",
                vec![
                    mutation(1, "likes", "good", json!({}), 5),
                    mutation(2, "nope", "bad", json!({}), 5),
                ],
                None,
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_code(), "invalid_mutation");
    let message = r.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(
        message.contains("mutations[1]") && message.contains("collection"),
        "{message}"
    );
    // Named by its id too, so a client can set that write aside and push the others again;
    // a broken numbering names no write.
    assert_eq!(r.json()["error"]["mutation"], 2);
    let good = || mutation(1, "likes", "good", json!({}), 5);
    let renumbered = server
        .push(&alice.token, &batch("c1", vec![good(), good()], None))
        .await;
    assert_eq!(renumbered.error_code(), "invalid_mutation");
    assert_eq!(renumbered.json()["error"].get("mutation"), None);
    let me = server.pull_ok(&alice.token, Some("0")).await;
    assert_eq!(me["changes"], json!([]));
    assert_eq!(me["cursor"], "0");
    // The ack did not move either: id 1 is still applied later.
    let ok = server
        .push_ok(
            &alice.token,
            &batch("c1", vec![mutation(1, "likes", "good", json!({}), 5)], None),
        )
        .await;
    assert_eq!(ok["ack"], 1);
    assert_eq!(ok["cursor"], "1");
}

async fn the_newest_write_wins_and_ties_break_by_client_id(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let write = |client: &'static str, id: u64, v: i64, at: u64| {
        batch(
            client,
            vec![mutation(id, "settings", "theme", json!({"v": v}), at)],
            None,
        )
    };
    let t = server.push_ok(&alice.token, &write("b", 1, 1, 100)).await;
    assert_eq!(t["cursor"], "1");
    // Older: loses, changes nothing, but is acknowledged.
    let t = server.push_ok(&alice.token, &write("z", 1, 2, 99)).await;
    assert_eq!(
        (t["ack"].clone(), t["cursor"].clone()),
        (json!(1), json!("1"))
    );
    // Same time, smaller client id: loses.
    let t = server.push_ok(&alice.token, &write("a", 1, 3, 100)).await;
    assert_eq!(t["cursor"], "1");
    // The same version again (same time, same client): changes nothing.
    let t = server.push_ok(&alice.token, &write("b", 2, 4, 100)).await;
    assert_eq!(t["cursor"], "1");
    // Same time, larger client id: wins.
    let t = server.push_ok(&alice.token, &write("c", 1, 5, 100)).await;
    assert_eq!(t["cursor"], "2");
    // Newer: wins whatever the client id.
    let t = server.push_ok(&alice.token, &write("a", 2, 6, 101)).await;
    assert_eq!(t["cursor"], "3");
    let state = server.state(&alice.token).await;
    let theme = &state[&("settings".into(), "theme".into())];
    assert_eq!(theme["value"], json!({"v": 6}));
    assert_eq!(theme["clientId"], "a");
    assert_eq!(theme["updatedAt"], 101);
    assert_eq!(theme["version"], 3);
    // A delete is a write like any other: an older one loses to the value.
    let t = server
        .push_ok(
            &alice.token,
            &batch(
                "z",
                vec![mutation(2, "settings", "theme", json!(null), 100)],
                None,
            ),
        )
        .await;
    assert_eq!(t["cursor"], "3");
}

async fn timestamps_from_the_future_are_clamped(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let far_future = 4_000_000_000_000u64; // the year 2096
    let body = server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![mutation(1, "history", "ep", json!({}), far_future)],
                Some("0"),
            ),
        )
        .await;
    let server_time = body["serverTime"].as_u64().expect("serverTime");
    let stored = body["changes"][0]["updatedAt"].as_u64().expect("updatedAt");
    assert!(stored <= server_time + 60_000, "{stored} vs {server_time}");
    assert!(stored >= server_time, "clamped to the limit, not below it");
    // A correct device writing a moment later now wins.
    let later = server
        .push_ok(
            &alice.token,
            &batch(
                "c2",
                vec![mutation(1, "history", "ep", json!({"n": 2}), stored + 1)],
                None,
            ),
        )
        .await;
    assert_eq!(later["cursor"], "2");
}

async fn push_limits_are_enforced_and_nothing_is_applied(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let m = |id: u64| mutation(id, "likes", &format!("k{id}"), json!({}), 5);
    let many: Vec<Value> = (1..=501).map(m).collect();
    let big_value = json!({"s": "x".repeat(4097 - 8)});
    assert_eq!(big_value.to_string().len(), 4097);
    let huge = json!({"s": "x".repeat(1024 * 1024)});

    let raw = |mutations: &str| format!(r#"{{"clientId":"c1","mutations":[{mutations}]}}"#);
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "501 mutations",
            batch("c1", many, None).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_mutations",
        ),
        (
            "body over 1 MiB",
            batch("c1", vec![mutation(1, "likes", "k", huge, 5)], None).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "value of 4 KiB + 1",
            batch("c1", vec![mutation(1, "likes", "k", big_value, 5)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "129-char key",
            batch(
                "c1",
                vec![mutation(1, "likes", &"k".repeat(129), json!({}), 5)],
                None,
            )
            .to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "empty key",
            batch("c1", vec![mutation(1, "likes", "", json!({}), 5)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "65-char clientId",
            batch(&"c".repeat(65), vec![m(1)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_client_id",
        ),
        (
            "empty clientId",
            batch("", vec![m(1)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_client_id",
        ),
        (
            "unknown collection",
            batch("c1", vec![mutation(1, "notes", "k", json!({}), 5)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "array value",
            batch("c1", vec![mutation(1, "likes", "k", json!([1]), 5)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "string value",
            batch("c1", vec![mutation(1, "likes", "k", json!("s"), 5)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "number value",
            batch("c1", vec![mutation(1, "likes", "k", json!(1), 5)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "bool value",
            batch("c1", vec![mutation(1, "likes", "k", json!(true), 5)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "a number beyond the double range in the value",
            raw(r#"{"id":1,"collection":"likes","key":"k","value":{"p":[1,1e400]},"updatedAt":5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "negative updatedAt",
            raw(r#"{"id":1,"collection":"likes","key":"k","value":{},"updatedAt":-1}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "float updatedAt",
            raw(r#"{"id":1,"collection":"likes","key":"k","value":{},"updatedAt":1.5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "string updatedAt",
            raw(r#"{"id":1,"collection":"likes","key":"k","value":{},"updatedAt":"5"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "id 0",
            batch("c1", vec![m(0)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "negative id",
            raw(r#"{"id":-1,"collection":"likes","key":"k","value":{},"updatedAt":5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "id beyond i64",
            raw(
                r#"{"id":9223372036854775808,"collection":"likes","key":"k","value":{},"updatedAt":5}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "repeated id",
            batch("c1", vec![m(1), m(2), m(2)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "decreasing id",
            batch("c1", vec![m(3), m(2)], None).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mutation",
        ),
        (
            "missing value",
            raw(r#"{"id":1,"collection":"likes","key":"k","updatedAt":5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (name, body, status, code) in cases {
        // A body over the limit is answered before it is read and the connection is closed;
        // a client still sending may see the reset before the answer. Only such transport
        // errors are retried: any answer must be the expected one.
        let mut attempts = 0;
        let r = loop {
            attempts += 1;
            let req = server
                .http
                .post(server.url("/api/user/me/changes"))
                .bearer_auth(&alice.token)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            match try_reply(req).await {
                Ok(r) => break r,
                Err(e) if attempts < 5 => eprintln!("{name}: retrying after {e}"),
                Err(e) => panic!("{name}: no answer in {attempts} attempts: {e}"),
            }
        };
        assert_eq!(r.status, status, "{name}: {}", r.text);
        assert_eq!(r.error_code(), code, "{name}");
    }
    let me = server.pull_ok(&alice.token, Some("0")).await;
    assert_eq!(me["changes"], json!([]), "nothing applied");

    // The limits themselves are accepted.
    let edge_value = json!({"s": "x".repeat(4096 - 8)});
    assert_eq!(edge_value.to_string().len(), 4096);
    let mut edges: Vec<Value> = (1..=498).map(m).collect();
    edges.push(mutation(499, "likes", &"k".repeat(128), json!({}), 5));
    edges.push(mutation(500, "likes", "edge", edge_value, 5));
    let body = server
        .push_ok(&alice.token, &batch(&"c".repeat(64), edges, None))
        .await;
    assert_eq!(body["ack"], 500);
    assert_eq!(body["cursor"], "500");
}

async fn malformed_requests_get_a_json_4xx_and_apply_nothing(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let token = alice.token.as_str();
    let good_mutation = r#"{"id":1,"collection":"likes","key":"k","value":{},"updatedAt":5}"#;
    let changes = "/api/user/me/changes";
    let cases: Vec<(Method, &str, Option<&str>, Option<String>)> = vec![
        (Method::POST, changes, Some(token), Some("{".into())),
        (Method::POST, changes, Some(token), Some("".into())),
        (Method::POST, changes, Some(token), Some("not json".into())),
        (Method::POST, changes, Some(token), Some(format!(r#"{{"clientId":"c1","mutations":[{good_mutation}]"#))),
        (Method::POST, changes, Some(token), Some(format!(r#"{{"clientId":"c1","mutations":[{good_mutation}]}} trailing"#))),
        (Method::POST, changes, Some(token), Some("null".into())),
        (Method::POST, changes, Some(token), Some("[]".into())),
        (Method::POST, changes, Some(token), Some("42".into())),
        (Method::POST, changes, Some(token), Some(r#"{"mutations":[]}"#.into())),
        (Method::POST, changes, Some(token), Some(r#"{"clientId":"c1"}"#.into())),
        (Method::POST, changes, Some(token), Some(format!(r#"{{"clientId":1,"mutations":[{good_mutation}]}}"#))),
        (Method::POST, changes, Some(token), Some(format!(r#"{{"clientId":"c1","mutations":{good_mutation}}}"#))),
        (Method::POST, changes, Some(token), Some(format!(r#"{{"clientId":"c1","mutations":[{good_mutation}],"lastSync":5}}"#))),
        (Method::POST, changes, Some(token), Some(r#"{"clientId":"c1","mutations":[{"id":1,"collection":"likes","key":"k","value":{},"updatedAt":5,"id":2}]}"#.into())),
        (Method::POST, changes, Some(token), Some(r#"{"clientId":"c1","mutations":[{"id":1,"collection":"likes","key":"k","value":{"a":},"updatedAt":5}]}"#.into())),
        (Method::POST, changes, Some(token), Some(r#"{"clientId":"c1","mutations":[{"id":1,"collection":["likes"],"key":"k","value":{},"updatedAt":5}]}"#.into())),
        (Method::POST, changes, Some(token), Some(r#"{"clientId":"c1","mutations":[{"id":1e3,"collection":"likes","key":"k","value":{},"updatedAt":5}]}"#.into())),
        (Method::POST, changes, Some(token), Some("{\"clientId\":\"c1\",\"mutations\":[{\"id\":1,\"collection\":\"likes\",\"key\":\"\u{0}\\ud800\",\"value\":{},\"updatedAt\":5}]}".into())),
        (Method::PUT, changes, Some(token), Some(format!(r#"{{"clientId":"c1","mutations":[{good_mutation}]}}"#))),
        (Method::GET, changes, Some(token), None),
        (Method::DELETE, changes, Some(token), None),
        (Method::POST, "/api/user/me", Some(token), Some(format!(r#"{{"clientId":"c1","mutations":[{good_mutation}]}}"#))),
        (Method::GET, "/api/auth/login", None, None),
        (Method::PATCH, "/api/auth/register", None, None),
        (Method::POST, "/api/auth/register", None, Some("{".into())),
        (Method::POST, "/api/auth/register", None, Some(r#"{"username":"bob"}"#.into())),
        (Method::POST, "/api/auth/login", None, Some(r#"{"username":1,"password":2}"#.into())),
        (Method::GET, "/", None, None),
        (Method::GET, "/api", None, None),
        (Method::GET, "/api/user/other", Some(token), None),
        (Method::POST, "/api/user/me/changes/extra", Some(token), None),
        (Method::GET, "/api/user/me/../me/changes", Some(token), None),
        (Method::GET, "/healthz/x", None, None),
    ];
    for (method, path, token, body) in cases {
        let label = format!("{method} {path} {body:?}");
        let r = server.send(method, path, token, body).await;
        assert!(
            r.status.is_client_error(),
            "{label}: {} {}",
            r.status,
            r.text
        );
        r.error_code();
    }

    // Odd headers.
    let huge = "x".repeat(60 * 1024);
    let weird: Vec<(&str, String)> = vec![
        ("authorization", format!("Bearer {huge}")),
        ("authorization", format!("Bearer {token}, Bearer {token}x")),
        ("x-junk", huge.clone()),
        ("content-type", "application/x-www-form-urlencoded".into()),
        ("content-length", "5".into()),
    ];
    for (name, value) in weird {
        let mut req = server
            .http
            .post(server.url(changes))
            .header(name, value.as_str())
            .body(format!(
                r#"{{"clientId":"c1","mutations":[{good_mutation}] BROKEN"#
            ));
        if name != "authorization" {
            req = req.bearer_auth(token);
        }
        let r = match req.send().await {
            Ok(res) => {
                let status = res.status();
                let text = res.text().await.unwrap_or_default();
                (status, text)
            }
            // A client-side refusal (e.g. a lying content-length) is fine: nothing was sent.
            Err(_) => continue,
        };
        assert!(r.0.is_client_error(), "{name}: {} {}", r.0, r.1);
        let body: Value = serde_json::from_str(&r.1).expect("JSON error body");
        assert!(body["error"]["code"].is_string(), "{name}: {body}");
    }

    let me = server.pull_ok(&alice.token, Some("0")).await;
    assert_eq!(me["changes"], json!([]), "nothing applied");
    assert_eq!(me["cursor"], "0");
}

/// The newest-wins winner of a set of writes, computed independently of the server.
fn expected_winners(writes: &[(String, String, u64, String, Value)]) -> BTreeMap<String, Value> {
    let mut winners: HashMap<String, (u64, String, Value)> = HashMap::new();
    for (_, key, at, client, value) in writes {
        let candidate = (*at, client.clone(), value.clone());
        match winners.get(key) {
            Some(cur) if (cur.0, &cur.1) >= (candidate.0, &candidate.1) => {}
            _ => {
                winners.insert(key.clone(), candidate);
            }
        }
    }
    winners
        .into_iter()
        .filter(|(_, w)| !w.2.is_null())
        .map(|(k, w)| (k, w.2))
        .collect()
}

async fn concurrent_pushers_and_an_incremental_puller_converge_missing_nothing(backend: Backend) {
    // One user loaded at once on purpose: storage under concurrency, not the limits.
    let server = Arc::new(Server::start_with(backend, &support::UNLIMITED).await);
    let alice = server.register("alice").await;
    const PUSHERS: usize = 8;
    const BATCHES: u64 = 15;
    const PER_BATCH: u64 = 4;

    let done = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let puller = {
        let (server, token, finished) = (server.clone(), alice.token.clone(), finished.clone());
        tokio::spawn(async move {
            let mut cursor = "0".to_owned();
            let mut last_version = 0u64;
            let mut seen: Vec<u64> = Vec::new();
            let mut state: BTreeMap<String, Value> = BTreeMap::new();
            loop {
                // Read the flag before pulling: a pull that starts after every push was
                // acknowledged must see them all.
                let was_finished = finished.load(std::sync::atomic::Ordering::SeqCst);
                let body = server.pull_ok(&token, Some(&cursor)).await;
                for c in body["changes"].as_array().expect("changes") {
                    let v = c["version"].as_u64().expect("version");
                    assert!(
                        v > last_version,
                        "versions only increase: {v} after {last_version}"
                    );
                    last_version = v;
                    seen.push(v);
                    let key = c["key"].as_str().expect("key").to_owned();
                    if c["value"].is_null() {
                        state.remove(&key);
                    } else {
                        state.insert(key, c["value"].clone());
                    }
                }
                cursor = cursor_of(&body);
                if was_finished && body["more"] == json!(false) {
                    return (cursor, seen, state);
                }
            }
        })
    };

    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let (server, token) = (server.clone(), alice.token.clone());
        pushers.push(tokio::spawn(async move {
            let client = format!("device-{p}");
            let mut writes = Vec::new();
            for b in 0..BATCHES {
                let mut mutations = Vec::new();
                for i in 0..PER_BATCH {
                    let id = b * PER_BATCH + i + 1;
                    // A unique key per write, so each version stays visible.
                    let key = format!("{client}-{id}");
                    let value = json!({"by": p, "id": id});
                    mutations.push(mutation(id, "history", &key, value.clone(), 1000 + id));
                    writes.push(key);
                }
                let body = server
                    .push_ok(&token, &batch(&client, mutations, None))
                    .await;
                assert_eq!(body["ack"], (b + 1) * PER_BATCH);
            }
            writes
        }));
    }
    let mut all_keys = Vec::new();
    for p in pushers {
        all_keys.extend(p.await.expect("pusher"));
    }
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    done.notify_waiters();
    let (cursor, seen, state) = puller.await.expect("puller");

    let total = PUSHERS as u64 * BATCHES * PER_BATCH;
    assert_eq!(cursor, total.to_string());
    // Every version was seen exactly once, in order: nothing missed, nothing repeated.
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    assert_eq!(state.len(), all_keys.len());
    let server_state = server.state(&alice.token).await;
    let server_state: BTreeMap<String, Value> = server_state
        .into_iter()
        .map(|((_, k), c)| (k, c["value"].clone()))
        .collect();
    assert_eq!(state, server_state);
}

async fn contested_keys_converge_to_the_newest_write(backend: Backend) {
    let server = Arc::new(Server::start_with(backend, &support::UNLIMITED).await);
    let alice = server.register("alice").await;
    let mut tasks = Vec::new();
    for p in 0..8u64 {
        let (server, token) = (server.clone(), alice.token.clone());
        tasks.push(tokio::spawn(async move {
            let client = format!("device-{p}");
            let mut writes = Vec::new();
            for b in 0..10u64 {
                let mut mutations = Vec::new();
                for i in 0..3u64 {
                    let id = b * 3 + i + 1;
                    let key = format!("k{}", (p + id) % 5);
                    // Few distinct times, so ties between devices are common.
                    let at = 100 + (p * 7 + id * 3) % 4;
                    let value = if (p + id) % 7 == 0 {
                        json!(null)
                    } else {
                        json!({"by": p, "id": id})
                    };
                    mutations.push(mutation(id, "likes", &key, value.clone(), at));
                    writes.push(("likes".to_owned(), key, at, client.clone(), value));
                }
                server
                    .push_ok(&token, &batch(&client, mutations, None))
                    .await;
            }
            writes
        }));
    }
    let mut writes = Vec::new();
    for t in tasks {
        writes.extend(t.await.expect("pusher"));
    }
    let state: BTreeMap<String, Value> = server
        .state(&alice.token)
        .await
        .into_iter()
        .map(|((_, k), c)| (k, c["value"].clone()))
        .collect();
    assert_eq!(state, expected_winners(&writes));
}

async fn push_records(server: &Server, token: &str, count: u64) {
    let mut id = 1;
    while id <= count {
        let end = (id + 499).min(count);
        let mutations = (id..=end)
            // Likes: history is capped (1,000 by default), likes are not.
            .map(|i| mutation(i, "likes", &format!("ep{i:05}"), json!({"pos": i}), 1000))
            .collect();
        server.push_ok(token, &batch("bulk", mutations, None)).await;
        id = end + 1;
    }
}

async fn pulls_page_by_the_default_page_size(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    push_records(&server, &alice.token, 1500).await;

    // A pull without a cursor is the whole state: the cursor of its first page names the
    // place inside it (after version 1000, of a whole state begun at 1500: 2^62 + 2^61 +
    // 1500 * 2^32 + 1000), not a version.
    let inside = (1u64 << 62 | 1 << 61 | 1500 << 32 | 1000).to_string();
    for (start, next) in [(None, inside.as_str()), (Some("0"), "1000")] {
        let first = server.pull_ok(&alice.token, start).await;
        assert_eq!(first["changes"].as_array().expect("changes").len(), 1000);
        assert_eq!(first["more"], true);
        assert_eq!(first["cursor"], next);
        let r = server.pull(&alice.token, Some(next)).await;
        assert_eq!(r.header("etag"), Some("\"1500\""));
        let second = r.json();
        assert_eq!(second["changes"].as_array().expect("changes").len(), 500);
        assert_eq!(second["more"], false);
        assert_eq!(second["cursor"], "1500");
        assert_eq!(second["changes"][0]["version"], 1001);
    }
    // The form of servers before (2^62 + 1000, its start unknown) goes on as it did.
    let older = server
        .pull_ok(&alice.token, Some("4611686018427388904"))
        .await;
    assert_eq!(
        (older["cursor"].as_str(), older["more"].as_bool()),
        (Some("1500"), Some(false))
    );
    assert_eq!(older["changes"][0]["version"], 1001);
    assert_eq!(server.state(&alice.token).await.len(), 1500);
}

async fn a_small_page_size_pages_pulls_and_push_answers(backend: Backend) {
    let server = Server::start_with(backend, &["--page-size", "7"]).await;
    let alice = server.register("alice").await;
    push_records(&server, &alice.token, 20).await;
    let mut cursor = "0".to_owned();
    let mut sizes = Vec::new();
    loop {
        let body = server.pull_ok(&alice.token, Some(&cursor)).await;
        sizes.push(body["changes"].as_array().expect("changes").len());
        cursor = cursor_of(&body);
        if body["more"] == json!(false) {
            break;
        }
    }
    assert_eq!(sizes, [7, 7, 6]);
    assert_eq!(cursor, "20");
    let body = server
        .push_ok(&alice.token, &batch("other", vec![], Some("0")))
        .await;
    assert_eq!(body["changes"].as_array().expect("changes").len(), 7);
    assert_eq!(body["more"], true);
    assert_eq!(body["cursor"], "7");
}

/// Large values page by bytes, not only by count: 100 records of about 4 KiB (420 KB) come in
/// pages of at most 256 KiB (and one change more, the one that crossed it), so a slow link
/// reads each page within its request timeout.
async fn large_values_page_by_the_default_byte_budget(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let big = "x".repeat(4000);
    for first in [1, 51] {
        let mutations = (first..first + 50)
            .map(|i| {
                mutation(
                    i,
                    "likes",
                    &format!("ep{i:03}"),
                    json!({ "note": big }),
                    1000,
                )
            })
            .collect();
        server
            .push_ok(&alice.token, &batch("bulk", mutations, None))
            .await;
    }
    const BUDGET: usize = 256 * 1024;
    let one = 110 + "likes".len() + "ep001".len() + "bulk".len() + r#"{"note":""}"#.len() + 4000;
    let mut keys = std::collections::BTreeSet::new();
    let (mut cursor, mut pages) = (None::<String>, Vec::new());
    loop {
        let r = server.pull(&alice.token, cursor.as_deref()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let body = r.json();
        let changes = body["changes"].as_array().expect("changes");
        pages.push((changes.len(), r.text.len()));
        keys.extend(
            changes
                .iter()
                .map(|c| c["key"].as_str().expect("key").to_owned()),
        );
        cursor = Some(cursor_of(&body));
        if body["more"] == json!(false) {
            break;
        }
    }
    // 256 KiB hold 63 such changes (4,135 bytes each, as counted); the 64th crosses it and
    // goes on the next page.
    let per_page = BUDGET / one;
    assert_eq!(pages.len(), 100usize.div_ceil(per_page), "{pages:?}");
    for &(count, bytes) in &pages {
        assert!(count <= per_page && bytes <= BUDGET, "{pages:?}");
    }
    assert_eq!(keys.len(), 100);
    assert_eq!(cursor.as_deref(), Some("100"));
    // A push's answer pages its changes the same way.
    let body = server
        .push_ok(&alice.token, &batch("other", vec![], Some("0")))
        .await;
    let changes = body["changes"].as_array().expect("changes");
    assert_eq!((changes.len(), &body["more"]), (per_page, &json!(true)));
    assert_eq!(
        cursor_of(&body),
        changes[per_page - 1]["version"].to_string()
    );
}

async fn users_never_see_each_others_records(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![mutation(1, "favorites", "show", json!({"a": 1}), 5)],
                None,
            ),
        )
        .await;
    server
        .push_ok(
            &alice.token,
            &batch(
                "c1",
                vec![mutation(2, "favorites", "other", json!({"a": 2}), 5)],
                None,
            ),
        )
        .await;
    let b = server.pull_ok(&bob.token, Some("0")).await;
    assert_eq!(b["changes"], json!([]));
    assert_eq!(b["user"]["username"], "bob");
    // Alice's cursor is not Bob's.
    assert_eq!(
        server.pull(&bob.token, Some("2")).await.status,
        StatusCode::BAD_REQUEST
    );
    // Same collection, key and client id: separate records and separate acks.
    let pushed = server
        .push_ok(
            &bob.token,
            &batch(
                "c1",
                vec![mutation(1, "favorites", "show", json!({"b": 1}), 1)],
                Some("0"),
            ),
        )
        .await;
    assert_eq!(pushed["ack"], 1);
    assert_eq!(pushed["cursor"], "1");
    assert_eq!(pushed["changes"].as_array().expect("changes").len(), 1);
    let a = server.state(&alice.token).await;
    assert_eq!(
        a[&("favorites".into(), "show".into())]["value"],
        json!({"a": 1})
    );
    let b = server.state(&bob.token).await;
    assert_eq!(b.len(), 1);
    assert_eq!(
        b[&("favorites".into(), "show".into())]["value"],
        json!({"b": 1})
    );
}

/// Pushes of many users at once through one node (committed in groups on both backends):
/// each lands in its own user's records and each answer is its own.
async fn concurrent_pushes_of_many_users_each_get_their_own_answer(backend: Backend) {
    // Within the sign-in burst one address may make.
    const USERS: usize = 16;
    let server = Arc::new(Server::start(backend).await);
    let mut tokens = Vec::new();
    for u in 0..USERS {
        tokens.push(server.register(&format!("user{u}")).await.token);
    }
    for round in 1..=2u64 {
        let pushes: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(u, token)| {
                let (server, token) = (server.clone(), token.clone());
                tokio::spawn(async move {
                    // The same client id, collection and keys for every user.
                    let m = mutation(round, "favorites", &format!("k{round}"), json!({"u": u}), 5);
                    let last = (round - 1).to_string();
                    server
                        .push_ok(&token, &batch("c1", vec![m], Some(&last)))
                        .await
                })
            })
            .collect();
        for (u, push) in pushes.into_iter().enumerate() {
            let answer = push.await.expect("pusher");
            assert_eq!(answer["ack"], round, "user {u}, round {round}");
            assert_eq!(
                answer["cursor"],
                round.to_string(),
                "user {u}, round {round}"
            );
            let changes = answer["changes"].as_array().expect("changes");
            assert_eq!(changes.len(), 1, "user {u}, round {round}: {changes:?}");
            assert_eq!(changes[0]["key"], format!("k{round}"));
            assert_eq!(
                changes[0]["value"],
                json!({"u": u}),
                "user {u}, round {round}"
            );
        }
    }
    for (u, token) in tokens.iter().enumerate() {
        let state = server.state(token).await;
        let values: Vec<_> = state.values().map(|c| c["value"].clone()).collect();
        assert_eq!(
            values,
            [json!({"u": u}), json!({"u": u})],
            "user {u}'s records"
        );
    }
}

async fn a_body_not_declared_as_json_is_415_and_writes_nothing(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let body = batch("c1", vec![mutation(1, "likes", "k", json!({}), 5)], None).to_string();
    let send = |path: &str, body: String, content_type: Option<&'static str>| {
        let mut req = server
            .http
            .post(server.url(path))
            .bearer_auth(&alice.token)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        reply(req)
    };
    // None: what another site's page can send without a preflight (a typeless Blob).
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data"),
        None,
    ] {
        let r = send("/api/user/me/changes", body.clone(), ct).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(r.error_code(), "unsupported_media_type");
        let credentials = json!({"username": "mallory", "password": "correct horse"}).to_string();
        let r = send("/api/auth/register", credentials, ct).await;
        assert_eq!(
            r.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "register, {ct:?}"
        );
    }
    assert_eq!(
        server.pull_ok(&alice.token, Some("0")).await["changes"],
        json!([])
    );
    let taken = send(
        "/api/auth/register",
        json!({"username": "mallory", "password": "correct horse"}).to_string(),
        Some("application/json"),
    )
    .await;
    assert_eq!(
        taken.status,
        StatusCode::CREATED,
        "no account was made before"
    );
    assert_eq!(
        send(
            "/api/user/me/changes",
            body.clone(),
            Some("application/json; charset=utf-8")
        )
        .await
        .status,
        StatusCode::OK
    );
}

/// A second session of the same account, by logging in again.
async fn login(server: &Server, username: &str, password: &str) -> String {
    let r = server
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            creds(username, password),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "login {username}: {}", r.text);
    r.json()["token"].as_str().expect("token").to_owned()
}

async fn sessions_end_everywhere_on_request_password_change_and_deletion(backend: Backend) {
    let server = Server::start(backend).await;
    let alice = server.register("alice").await;
    let phone = login(&server, "alice", "correct horse").await;
    let live = |token: String| {
        let server = &server;
        async move { server.pull(&token, None).await.status == StatusCode::OK }
    };

    // Sign out everywhere: every session ends, this one included.
    let r = server
        .send(Method::POST, "/api/auth/logout-all", Some(&phone), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!live(alice.token.clone()).await && !live(phone.clone()).await);

    // A password change needs the current password and ends every other session.
    let laptop = login(&server, "alice", "correct horse").await;
    let tv = login(&server, "alice", "correct horse").await;
    let change = |password: &str, new: &str| {
        Some(json!({"password": password, "newPassword": new}).to_string())
    };
    let wrong = server
        .send(
            Method::POST,
            "/api/auth/password",
            Some(&laptop),
            change("guess", "battery staple"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.error_code(), "invalid_credentials");
    let short = server
        .send(
            Method::POST,
            "/api/auth/password",
            Some(&laptop),
            change("correct horse", "short"),
        )
        .await;
    assert_eq!(short.error_code(), "invalid_password");
    let r = server
        .send(
            Method::POST,
            "/api/auth/password",
            Some(&laptop),
            change("correct horse", "battery staple"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(
        live(laptop.clone()).await,
        "the session that changed it stays"
    );
    assert!(!live(tv).await, "every other session ended");
    let old = server
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            creds("alice", "correct horse"),
        )
        .await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let desk = login(&server, "alice", "battery staple").await;

    // Deleting the account erases it: sessions end, records go, the name is free again.
    let push = batch(
        "c1",
        vec![mutation(1, "favorites", "s1", json!({}), 5)],
        None,
    );
    server.push_ok(&desk, &push).await;
    let confirm = |password: &str| Some(json!({"password": password}).to_string());
    let wrong = server
        .send(
            Method::DELETE,
            "/api/auth/account",
            Some(&desk),
            confirm("correct horse"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        live(desk.clone()).await,
        "nothing deleted on a wrong password"
    );
    let r = server
        .send(
            Method::DELETE,
            "/api/auth/account",
            Some(&desk),
            confirm("battery staple"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    // Each device's next request is its session's last: the account's whole state, which
    // holds no record (the device drops its copy), its old writes taken and not stored.
    let last = server.pull_ok(&desk, Some("1")).await;
    assert_eq!(last["reset"], true, "{last}");
    let changes = last["changes"].as_array().expect("changes");
    assert!(
        !changes.is_empty() && changes.iter().all(|c| c["value"].is_null()),
        "{last}"
    );
    let old = batch(
        "c2",
        vec![mutation(1, "favorites", "s2", json!({}), 5)],
        Some("1"),
    );
    let last = server.push_ok(&laptop, &old).await;
    assert_eq!(
        (&last["ack"], &last["reset"]),
        (&json!(1), &json!(true)),
        "{last}"
    );
    assert!(last["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .all(|c| c["value"].is_null()));
    // For a day the sessions keep getting the emptied account, which stores nothing and
    // cannot be managed; then they are refused (a virtual-clock test in the crate shows it).
    let again_desk = server.pull_ok(&desk, None).await;
    assert!(again_desk["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .all(|c| c["value"].is_null()));
    let r = server
        .send(Method::POST, "/api/auth/logout-all", Some(&desk), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let again = server.register("alice").await;
    assert_eq!(
        server.pull_ok(&again.token, None).await["changes"],
        json!([])
    );
}

/// `--merge-fields history:completed`: a like on the phone and a position on the TV, each a
/// write of the fields it changed over a stale copy, both survive; `completed` stays true.
async fn a_collection_merged_per_field_keeps_every_devices_field(backend: Backend) {
    let server = Server::start_with(backend, &["--merge-fields", "history:completed"]).await;
    let alice = server.register("alice").await;
    let write = |id: u64, value: Value, at: u64, fields: &[&str]| {
        let mut m = mutation(id, "history", "s01e01", value, at);
        m["fields"] = json!(fields);
        m
    };
    let tv = json!({"position": 10, "liked": false, "completed": false});
    server
        .push_ok(
            &alice.token,
            &batch("tv", vec![mutation(1, "history", "s01e01", tv, 10)], None),
        )
        .await;
    let phone = json!({"position": 10, "liked": true, "completed": false});
    server
        .push_ok(
            &alice.token,
            &batch("phone", vec![write(1, phone, 20, &["liked"])], None),
        )
        .await;
    let done = json!({"position": 1800, "liked": false, "completed": true});
    server
        .push_ok(
            &alice.token,
            &batch(
                "tv",
                vec![write(2, done, 30, &["position", "completed"])],
                None,
            ),
        )
        .await;
    // An old device, whole records only, writes later from a copy of before.
    let old = json!({"position": 12, "completed": false});
    server
        .push_ok(
            &alice.token,
            &batch("old", vec![mutation(1, "history", "s01e01", old, 40)], None),
        )
        .await;
    let state = server.state(&alice.token).await;
    let record = &state[&("history".to_owned(), "s01e01".to_owned())];
    assert_eq!(
        record["value"],
        json!({"position": 12, "liked": true, "completed": true})
    );
    assert_eq!(
        (record["updatedAt"].as_u64(), record["clientId"].as_str()),
        (Some(40), Some("old"))
    );
    // Other collections are still merged whole.
    for (id, at, like) in [(2, 50, 1), (3, 60, -1)] {
        let m = mutation(id, "likes", "s01e01", json!({"like": like}), at);
        server
            .push_ok(&alice.token, &batch("phone", vec![m], None))
            .await;
    }
    let state = server.state(&alice.token).await;
    assert_eq!(
        state[&("likes".to_owned(), "s01e01".to_owned())]["value"],
        json!({"like": -1})
    );
    // A write that would make the merged record larger than a value may be is refused by
    // its id, so the client sets it aside and pushes the others again; nothing is applied.
    let half = |field: &str| {
        let mut value = json!({});
        value[field] = json!("x".repeat(sinkron_core::limits::VALUE_BYTES_MAX / 2));
        value
    };
    server
        .push_ok(
            &alice.token,
            &batch("tv", vec![write(3, half("a"), 80, &["a"])], None),
        )
        .await;
    let r = server
        .push(
            &alice.token,
            &batch(
                "tv",
                vec![
                    mutation(4, "likes", "s02e01", json!({"like": 1}), 81),
                    write(5, half("b"), 81, &["b"]),
                ],
                None,
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_code(), "invalid_mutation");
    assert_eq!(r.json()["error"]["mutation"], 5, "{}", r.json());
    let state = server.state(&alice.token).await;
    assert!(!state.contains_key(&("likes".to_owned(), "s02e01".to_owned())));
    // The names a write gives are checked.
    for (fields, value, why) in [
        (json!(["a", "a"]), json!({"a": 1}), "twice"),
        (json!([""]), json!({}), "characters"),
        (json!(["b"]), Value::Null, "delete"),
    ] {
        let mut m = mutation(9, "history", "x", value, 70);
        m["fields"] = fields;
        let r = server.push(&alice.token, &batch("tv", vec![m], None)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        let message = r.json()["error"]["message"]
            .as_str()
            .expect("message")
            .to_owned();
        assert!(
            message.starts_with("mutations[0].fields") && message.contains(why),
            "{message}"
        );
    }
}

on_every_backend!(
    sessions_end_everywhere_on_request_password_change_and_deletion,
    healthz_answers_200,
    register_login_logout_flow,
    wrong_password_and_unknown_user_get_the_same_401,
    a_taken_username_is_409,
    usernames_and_passwords_are_validated,
    user_routes_need_a_valid_bearer_token,
    logins_are_throttled_after_ten_failures,
    unchanged_state_answers_304_without_a_body,
    invalid_cursors_are_400,
    full_and_incremental_pulls_carry_tombstones,
    a_retried_batch_is_applied_once,
    reused_ids_are_refused_with_the_ack_and_nothing_is_lost,
    an_invalid_mutation_rejects_the_whole_batch,
    the_newest_write_wins_and_ties_break_by_client_id,
    timestamps_from_the_future_are_clamped,
    push_limits_are_enforced_and_nothing_is_applied,
    malformed_requests_get_a_json_4xx_and_apply_nothing,
    concurrent_pushers_and_an_incremental_puller_converge_missing_nothing,
    contested_keys_converge_to_the_newest_write,
    pulls_page_by_the_default_page_size,
    a_small_page_size_pages_pulls_and_push_answers,
    large_values_page_by_the_default_byte_budget,
    users_never_see_each_others_records,
    a_body_not_declared_as_json_is_415_and_writes_nothing,
    concurrent_pushes_of_many_users_each_get_their_own_answer,
    a_collection_merged_per_field_keeps_every_devices_field,
);
