//! Several `sinkron serve` processes on one PostgreSQL database, as behind a load balancer:
//! what a node holds in memory is never staler than the database. Devices on different nodes
//! converge, concurrent pushes through different nodes never share a version and an
//! incremental puller on a third node misses none, a node killed mid-load loses no
//! acknowledged write; a write, a sign-out and an erasure on one node are seen by every node
//! at once, from memory or not, even while a node's LISTEN connection is cut.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sinkron_client::{Device, Options, Snapshot};
use support::{batch, mutation, try_reply, Backend, Data, Server};

const NODES: usize = 3;
const WAIT: Duration = Duration::from_secs(20);

async fn nodes(data: &Data) -> Vec<Server> {
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        // Many pushers of one user at once: the per-user limits are not under test here.
        let args = [&["--db-pool-size", "8"][..], &support::UNLIMITED].concat();
        nodes.push(data.start(&args).await);
    }
    nodes
}

fn options(seed: u64) -> Options {
    Options {
        config: sinkron_core::Config {
            interval_ms: 150,
            trigger_gap_ms: 0,
            push_delay_ms: 5,
            push_wait_ms_max: 50,
            backoff_base_ms: 20,
            backoff_ms_max: 200,
            // Writes to `history` as fast as they come: no playback-paced pushes.
            hot: Vec::new(),
            ..sinkron_core::Config::default()
        },
        seed,
        ..Options::default()
    }
}

fn synced(s: &Snapshot) -> bool {
    s.pending() == 0
        && s.status
            .as_ref()
            .is_some_and(|st| st.last_synced_at.is_some())
}

#[tokio::test]
async fn devices_on_different_nodes_converge() {
    let data = Data::new(Backend::Postgres);
    let nodes = nodes(&data).await;
    let devices: Vec<Device> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Device::start(&n.base, options(i as u64 + 1)))
        .collect();
    let session = devices[0].register("alice", "password1").await.unwrap();
    for d in &devices[1..] {
        d.sign_in(&session);
    }
    for (i, d) in devices.iter().enumerate() {
        d.write("history", &format!("ep-{i}"), Some(json!({"position": i})))
            .await
            .unwrap();
    }
    devices[2]
        .write("favorites", "show-1", Some(json!({"on": true})))
        .await
        .unwrap();
    for d in &devices {
        d.wait_for(WAIT, |s| {
            s.records["history"].len() == NODES
                && s.value("favorites", "show-1").is_some()
                && synced(s)
        })
        .await
        .unwrap();
    }
    // A delete made through one node reaches the devices of the others.
    devices[1].write("favorites", "show-1", None).await.unwrap();
    for d in &devices {
        d.wait_for(WAIT, |s| s.value("favorites", "show-1").is_none())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn concurrent_pushes_through_two_nodes_reach_a_puller_on_a_third_exactly_once() {
    let data = Data::new(Backend::Postgres);
    let nodes: Vec<Arc<Server>> = nodes(&data).await.into_iter().map(Arc::new).collect();
    let alice = nodes[0].register("alice").await;
    const PUSHERS: usize = 8;
    const BATCHES: u64 = 12;
    const PER_BATCH: u64 = 5;

    let finished = Arc::new(AtomicBool::new(false));
    let puller = {
        let (node, token, finished) = (nodes[2].clone(), alice.token.clone(), finished.clone());
        tokio::spawn(async move {
            let mut cursor = "0".to_owned();
            let mut seen: Vec<u64> = Vec::new();
            let mut keys: Vec<String> = Vec::new();
            loop {
                // Read the flag before pulling: a pull that starts after every push was
                // acknowledged must see them all.
                let was_finished = finished.load(Ordering::SeqCst);
                let body = node.pull_ok(&token, Some(&cursor)).await;
                for c in body["changes"].as_array().expect("changes") {
                    seen.push(c["version"].as_u64().expect("version"));
                    keys.push(c["key"].as_str().expect("key").to_owned());
                }
                cursor = body["cursor"].as_str().expect("cursor").to_owned();
                if was_finished && body["more"] == json!(false) {
                    return (cursor, seen, keys);
                }
            }
        })
    };

    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        // Pushers alternate between the first two nodes.
        let (node, token) = (nodes[p % 2].clone(), alice.token.clone());
        pushers.push(tokio::spawn(async move {
            let client = format!("device-{p}");
            let mut keys = Vec::new();
            for b in 0..BATCHES {
                let mutations = (0..PER_BATCH)
                    .map(|i| {
                        let id = b * PER_BATCH + i + 1;
                        let key = format!("{client}-{id}");
                        keys.push(key.clone());
                        mutation(id, "history", &key, json!({"id": id}), 1000 + id)
                    })
                    .collect();
                let body = node.push_ok(&token, &batch(&client, mutations, None)).await;
                assert_eq!(body["ack"], (b + 1) * PER_BATCH);
            }
            keys
        }));
    }
    let mut pushed = Vec::new();
    for p in pushers {
        pushed.extend(p.await.expect("pusher"));
    }
    finished.store(true, Ordering::SeqCst);
    let (cursor, seen, mut keys) = puller.await.expect("puller");

    let total = PUSHERS as u64 * BATCHES * PER_BATCH;
    assert_eq!(cursor, total.to_string());
    // Every version once, in order: no two pushes shared one, and none was skipped.
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    keys.sort();
    pushed.sort();
    assert_eq!(keys, pushed, "every write seen once");
}

/// Pushes `batches` batches of unique keys, each to the next node that answers, like a
/// client behind a load balancer; a batch whose answer was lost is sent again as it was.
/// Returns the keys of acknowledged writes.
async fn push_with_failover(
    nodes: Arc<Vec<String>>,
    token: String,
    client: String,
    batches: u64,
    acked: tokio::sync::watch::Sender<usize>,
) -> Vec<String> {
    const PER_BATCH: u64 = 4;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut keys = Vec::new();
    let mut node = 0;
    for b in 0..batches {
        let mutations: Vec<Value> = (0..PER_BATCH)
            .map(|i| {
                let id = b * PER_BATCH + i + 1;
                mutation(id, "likes", &format!("{client}-{id}"), json!({}), 1000)
            })
            .collect();
        let body = batch(&client, mutations, None).to_string();
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts <= 20, "{client}: no node took batch {b}");
            let req = http
                .request(Method::POST, format!("{}/api/user/me/changes", nodes[node]))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone());
            match try_reply(req).await {
                Ok(r) if r.status == StatusCode::OK => {
                    assert_eq!(r.json()["ack"], (b + 1) * PER_BATCH);
                    break;
                }
                Ok(r) if r.status.is_server_error() => node = (node + 1) % nodes.len(),
                Ok(r) => panic!("{client}: push answered {}: {}", r.status, r.text),
                // The node is gone: the load balancer sends the retry elsewhere.
                Err(_) => node = (node + 1) % nodes.len(),
            }
        }
        keys.extend((0..PER_BATCH).map(|i| format!("{client}-{}", b * PER_BATCH + i + 1)));
        acked.send_modify(|n| *n += 1);
    }
    keys
}

#[tokio::test]
async fn a_node_killed_during_a_push_load_loses_no_acknowledged_write() {
    let data = Data::new(Backend::Postgres);
    let mut nodes = nodes(&data).await;
    let alice = nodes[0].register("alice").await;
    let urls: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.base.clone()).collect());
    const PUSHERS: usize = 6;
    const BATCHES: u64 = 25;

    let (acked, mut progress) = tokio::sync::watch::channel(0usize);
    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        // Every pusher starts on the node that is about to die.
        pushers.push(tokio::spawn(push_with_failover(
            urls.clone(),
            alice.token.clone(),
            format!("device-{p}"),
            BATCHES,
            acked.clone(),
        )));
    }
    // Kill node 0 with the load under way: once as many batches as pushers are acknowledged.
    tokio::time::timeout(WAIT, progress.wait_for(|n| *n >= PUSHERS))
        .await
        .expect("batches are acknowledged in time")
        .expect("progress");
    let killed_after = *acked.borrow();
    nodes.remove(0).kill().await;

    let mut pushed = Vec::new();
    for p in pushers {
        pushed.extend(p.await.expect("pusher"));
    }
    let total = PUSHERS * BATCHES as usize;
    assert!(
        killed_after < total,
        "the node died while pushes were still coming ({killed_after} of {total})"
    );
    // Both survivors answer with the same state.
    let state = nodes[0].state(&alice.token).await;
    assert_eq!(state, nodes[1].state(&alice.token).await);
    let stored: Vec<&String> = state.keys().map(|(_, k)| k).collect();
    pushed.sort();
    let mut stored: Vec<String> = stored.into_iter().cloned().collect();
    stored.sort();
    assert_eq!(stored, pushed, "every acknowledged write is there");
    // Exactly once: each write took one version, so the version counts the writes.
    let body = nodes[1].pull_ok(&alice.token, None).await;
    assert_eq!(body["cursor"], json!(pushed.len().to_string()));
}

#[tokio::test]
async fn a_sign_out_on_one_node_is_401_on_every_node_at_once() {
    let data = Data::new(Backend::Postgres);
    let nodes = nodes(&data).await;
    hearing(&nodes).await;
    let alice = nodes[0].register("alice").await;
    // Every node has served the token twice, so its memory of it is warm.
    let mut tags = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let r = node.pull(&alice.token, Some("0")).await;
        assert_eq!(r.status, StatusCode::OK);
        tags.insert(i, r.header("etag").expect("etag").to_owned());
        assert_eq!(
            poll(node, &alice.token, "0").await.status,
            StatusCode::NOT_MODIFIED
        );
    }
    let r = nodes[0]
        .send(Method::POST, "/api/auth/logout", Some(&alice.token), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for (i, node) in nodes.iter().enumerate() {
        // Even the cheapest request, a conditional poll, is refused.
        let r = support::reply(
            node.http
                .get(node.url("/api/user/me?lastSync=0"))
                .bearer_auth(&alice.token)
                .header("if-none-match", &tags[&i]),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "node {i}");
        assert_eq!(r.error_code(), "unauthorized");
    }
}

/// `GET /api/user/me?lastSync=cursor` with `If-None-Match` naming that cursor: what a synced
/// device sends every interval.
async fn poll(node: &Server, token: &str, cursor: &str) -> support::Reply {
    support::reply(
        node.http
            .get(node.url(&format!("/api/user/me?lastSync={cursor}")))
            .bearer_auth(token)
            .header("if-none-match", format!("\"{cursor}\"")),
    )
    .await
}

/// Waits until every node answers polls from memory (its `/readyz` says plain `ready`).
async fn hearing(nodes: &[Server]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let r = support::reply(node.http.get(node.url("/readyz"))).await;
            if r.status == StatusCode::OK && r.text == "ready" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i} never heard changes: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes `round` through node `round`, then polls node `round + 1` at once from the cursor
/// before it: a 200 with the new cursor, never a 304 from a node's stale memory. Returns the
/// new cursor.
async fn write_and_poll_elsewhere(
    nodes: &[Server],
    token: &str,
    cursor: &str,
    round: u64,
) -> String {
    let i = usize::try_from(round).expect("round");
    let (writer, reader) = (&nodes[i % NODES], &nodes[(i + 1) % NODES]);
    // The reader knows the current version (a second poll is answered from its memory).
    for _ in 0..2 {
        assert_eq!(
            poll(reader, token, cursor).await.status,
            StatusCode::NOT_MODIFIED
        );
    }
    let like = mutation(
        round + 1,
        "likes",
        &format!("e{round}"),
        json!({"at": round}),
        1_000 + round,
    );
    let pushed = writer
        .push_ok(token, &batch("phone", vec![like], None))
        .await;
    let r = poll(reader, token, cursor).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "round {round}: node {} answered 304 after node {} acknowledged a write",
        (i + 1) % NODES,
        i % NODES
    );
    let body = r.json();
    assert_eq!(body["cursor"], pushed["cursor"], "round {round}");
    body["cursor"].as_str().expect("cursor").to_owned()
}

#[tokio::test]
async fn a_write_acknowledged_by_one_node_is_never_a_304_on_another() {
    let data = Data::new(Backend::Postgres);
    let nodes = nodes(&data).await;
    hearing(&nodes).await;
    let alice = nodes[0].register("alice").await;
    let mut cursor = "0".to_owned();
    for round in 0..60 {
        cursor = write_and_poll_elsewhere(&nodes, &alice.token, &cursor, round).await;
    }
}

#[tokio::test]
async fn a_dropped_listen_connection_never_yields_a_stale_304() {
    let data = Data::new(Backend::Postgres);
    let nodes = nodes(&data).await;
    hearing(&nodes).await;
    let alice = nodes[0].register("alice").await;
    let mut cursor = write_and_poll_elsewhere(&nodes, &alice.token, "0", 0).await;
    let (admin, connection) =
        tokio_postgres::connect(&support::postgres_admin_url(), tokio_postgres::NoTls)
            .await
            .expect("admin connection");
    tokio::spawn(connection);
    let mut round = 1;
    for _ in 0..3 {
        // Every node's memory is warm; then every node loses its LISTEN connection.
        for node in &nodes {
            assert_eq!(
                poll(node, &alice.token, &cursor).await.status,
                StatusCode::NOT_MODIFIED
            );
        }
        let killed: i64 = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'sinkron-listen'",
                &[&data.postgres_name().expect("postgres")],
            )
            .await
            .expect("terminate")
            .get(0);
        assert_eq!(killed, NODES as i64, "one listener per node");
        // Whether or not a node has noticed yet, a write is seen everywhere at once.
        for _ in 0..3 {
            cursor = write_and_poll_elsewhere(&nodes, &alice.token, &cursor, round).await;
            round += 1;
        }
        // Each node subscribes again and answers from memory, as true as before.
        hearing(&nodes).await;
        for _ in 0..3 {
            cursor = write_and_poll_elsewhere(&nodes, &alice.token, &cursor, round).await;
            round += 1;
        }
    }
}

/// A site erases its user through node A: a device polling node B (whose memory knew the
/// user) gets the reset at once, never a 304.
#[tokio::test]
async fn an_erasure_on_one_node_is_seen_by_every_node_at_once() {
    const KEY: &str = "an admin key of the site's backend, 48 characters";
    let data = Data::new(Backend::Postgres);
    let key_file = data.dir().join("admin.key");
    std::fs::write(&key_file, KEY).expect("key file");
    let (key, secret) = (
        key_file.display().to_string(),
        support::hs256_secret_path().display().to_string(),
    );
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let args = [
            "--admin-token-file",
            key.as_str(),
            "--auth",
            "builtin,jwt",
            "--jwt-hs256-secret-file",
            secret.as_str(),
        ];
        nodes.push(data.start(&args).await);
    }
    hearing(&nodes).await;
    let token = support::site_token("dana");
    let like = mutation(1, "likes", "e1", json!({"at": 1}), 1);
    let pushed = nodes[0]
        .push_ok(&token, &batch("phone", vec![like], None))
        .await;
    let cursor = pushed["cursor"].as_str().expect("cursor").to_owned();
    for node in &nodes {
        for _ in 0..2 {
            assert_eq!(
                poll(node, &token, &cursor).await.status,
                StatusCode::NOT_MODIFIED
            );
        }
    }
    let erased = nodes[0]
        .send(Method::DELETE, "/api/admin/users/dana", Some(KEY), None)
        .await;
    assert_eq!(erased.status, StatusCode::NO_CONTENT, "{}", erased.text);
    for (i, node) in nodes.iter().enumerate() {
        let r = poll(node, &token, &cursor).await;
        assert_eq!(r.status, StatusCode::OK, "node {i}");
        let body = r.json();
        assert_eq!(body["reset"], true, "node {i}: {body}");
        assert!(
            body["changes"]
                .as_array()
                .expect("changes")
                .iter()
                .all(|c| c["value"].is_null()),
            "node {i}: {body}"
        );
    }
}
