//! The site's backend API against the real binary, on both backends: the key, each route,
//! and an erasure while devices of the user are signed in.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{batch, mutation, site_token, Backend, Server};

const KEY: &str = "an admin key of the site's backend, 48 characters";

async fn server(backend: Backend) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key file");
    let (key, secret) = (
        key_file.display().to_string(),
        support::hs256_secret_path().display().to_string(),
    );
    let args = [
        "--admin-token-file",
        key.as_str(),
        "--auth",
        "builtin,jwt",
        "--jwt-hs256-secret-file",
        secret.as_str(),
    ];
    (Server::start_with(backend, &args).await, dir)
}

fn like(id: u64, key: &str, at: u64) -> Value {
    mutation(id, "likes", key, json!({"at": at}), at)
}

fn now_ms() -> u64 {
    jsonwebtoken::get_current_timestamp() * 1000
}

async fn admin(server: &Server, method: Method, user: &str, body: Option<Value>) -> support::Reply {
    let path = match &body {
        Some(_) => format!("/api/admin/users/{user}/changes"),
        None => format!("/api/admin/users/{user}"),
    };
    server
        .send(method, &path, Some(KEY), body.map(|b| b.to_string()))
        .await
}

async fn each_route_does_its_job_for_its_user_only(backend: Backend) {
    let (server, _dir) = server(backend).await;
    let (ann, bob) = (site_token("ann"), site_token("bob"));
    server
        .push_ok(&bob, &batch("bob-phone", vec![like(1, "b1", 10)], None))
        .await;
    // A write on Ann's behalf (Ann is new): her device gets it at its next pull.
    let pushed = admin(
        &server,
        Method::POST,
        "ann",
        Some(batch("tv", vec![like(1, "e1", 20)], None)),
    )
    .await;
    assert_eq!(pushed.status, StatusCode::OK, "{:?}", pushed.json());
    assert_eq!(pushed.json()["ack"], 1);
    let on_device = server.state(&ann).await;
    assert_eq!(
        on_device[&("likes".into(), "e1".into())]["value"],
        json!({"at": 20})
    );
    // The same push rules: an invalid batch is refused whole.
    let bad = batch("tv", vec![mutation(2, "nope", "x", json!({}), 1)], None);
    let r = admin(&server, Method::POST, "ann", Some(bad)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Everything stored for Ann, and only hers.
    let read = admin(&server, Method::GET, "ann", None).await;
    assert_eq!(read.status, StatusCode::OK);
    let body = read.json();
    assert_eq!(body["user"]["id"], "ann");
    let keys: Vec<&str> = body["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["e1"]);
    assert_eq!(body["cursor"], "1");
    let r = admin(&server, Method::GET, "nobody", None).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
    // Erase Ann: nothing of hers is left; Bob is untouched.
    let r = admin(&server, Method::DELETE, "ann", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = admin(&server, Method::GET, "ann", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(server.state(&bob).await.len(), 1);
}

async fn only_the_admin_key_opens_the_admin_routes(backend: Backend) {
    let (server, _dir) = server(backend).await;
    let account = server.register("carol").await;
    let site = site_token("carol-at-site");
    server.pull_ok(&site, None).await;
    for token in [
        account.token.as_str(),
        site.as_str(),
        "a wrong key of the site's backend, 48 characters",
    ] {
        for (method, path) in [
            (Method::GET, "/api/admin/users/carol-at-site"),
            (Method::DELETE, "/api/admin/users/carol-at-site"),
        ] {
            let r = server.send(method, path, Some(token), None).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{path} with {token:.12}…"
            );
        }
        let body = batch("x", vec![like(1, "k", 1)], None).to_string();
        let r = server
            .send(
                Method::POST,
                "/api/admin/users/carol-at-site/changes",
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = server
        .send(Method::GET, "/api/admin/users/carol-at-site", None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The admin key is no user's credential.
    let r = server
        .send(Method::GET, "/api/user/me", Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Nothing was erased by the refused requests.
    assert_eq!(
        admin(&server, Method::GET, "carol-at-site", None)
            .await
            .status,
        StatusCode::OK
    );
}

/// Two devices of the user, each with a cursor and writes not yet sent when the site erases
/// the user: each then drops its copy (a reset of nothing), and what they send of their old
/// writes is taken but not stored. A write made after the erasure is stored as usual.
async fn after_an_erasure_devices_drop_their_copy_and_push_nothing_of_it_back(backend: Backend) {
    let (server, _dir) = server(backend).await;
    let token = site_token("dana");
    let before = now_ms();
    let phone = server
        .push_ok(
            &token,
            &batch(
                "phone",
                vec![like(1, "e1", before), like(2, "e2", before)],
                None,
            ),
        )
        .await;
    let laptop = server.pull_ok(&token, None).await;
    let cursors = [
        phone["cursor"].as_str().expect("cursor"),
        laptop["cursor"].as_str().expect("cursor"),
    ];
    assert_eq!(
        admin(&server, Method::DELETE, "dana", None).await.status,
        StatusCode::NO_CONTENT
    );
    for (device, cursor) in ["phone", "laptop"].into_iter().zip(cursors) {
        // A pull from the old cursor: the whole state, which holds no record, and ends (with
        // a tombstone of the newest erased record) above every version the device holds.
        let pulled = server.pull_ok(&token, Some(cursor)).await;
        assert_eq!(pulled["reset"], true, "{device}: {pulled}");
        let changes = pulled["changes"].as_array().expect("changes");
        assert!(
            changes.iter().all(|c| c["value"].is_null()),
            "{device}: {pulled}"
        );
        let last = changes.last().and_then(|c| c["version"].as_u64());
        assert!(last > cursor.parse().ok(), "{device}: {pulled}");
        // The writes it had not sent, made before the erasure: acknowledged, not stored.
        let old = batch(
            device,
            vec![like(10, "e3", before), like(11, "e1", before + 1)],
            Some(cursor),
        );
        let pushed = server.push_ok(&token, &old).await;
        assert_eq!(pushed["ack"], 11, "{device}");
        assert_eq!(pushed["reset"], true, "{device}");
    }
    assert!(server.state(&token).await.is_empty(), "nothing came back");
    // The user goes on using the site: new writes are stored.
    let after = now_ms() + 1_000;
    server
        .push_ok(&token, &batch("phone", vec![like(12, "e4", after)], None))
        .await;
    let keys: Vec<String> = server
        .state(&token)
        .await
        .into_keys()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(keys, ["e4"]);
}

async fn without_a_key_the_admin_routes_are_404(backend: Backend) {
    let server = Server::start(backend).await;
    let r = server
        .send(Method::GET, "/api/admin/users/anyone", Some(KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

on_every_backend!(
    each_route_does_its_job_for_its_user_only,
    only_the_admin_key_opens_the_admin_routes,
    after_an_erasure_devices_drop_their_copy_and_push_nothing_of_it_back,
    without_a_key_the_admin_routes_are_404,
);
