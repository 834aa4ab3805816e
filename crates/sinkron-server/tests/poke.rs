//! The optional push channel (`--poke sse`) against the real binary: off by default (404), a
//! stream that says the current version then each new one, pokes from another node through
//! PostgreSQL, the bounds per user, and a shutdown that does not wait for open streams.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{batch, mutation, Backend, Data, Server};

const WAIT: Duration = Duration::from_secs(20);
const EVENTS: &str = "/api/user/me/events";

/// An open event stream, read as it arrives.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(node: &Server, token: &str) -> Self {
        let response = node
            .http
            .get(node.url(EVENTS))
            .bearer_auth(token)
            .send()
            .await
            .expect("the server answers");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The data of the next `poke` event.
    async fn poke(&mut self) -> u64 {
        tokio::time::timeout(WAIT, async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let event: String = self.buffer.drain(..end + 2).collect();
                    if event.lines().any(|l| l == "event: poke") {
                        let data = event
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .expect("a poke has data");
                        return data.parse().expect("the data is a version");
                    }
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .expect("the stream stays open")
                    .expect("the stream does not end");
                self.buffer
                    .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
            }
        })
        .await
        .expect("a poke within the wait")
    }
}

fn like(id: u64) -> serde_json::Value {
    batch(
        "phone",
        vec![mutation(
            id,
            "likes",
            &format!("e{id}"),
            json!({"at": id}),
            id,
        )],
        None,
    )
}

#[tokio::test]
async fn without_poke_the_route_is_not_found() {
    let server = Server::start(Backend::Sqlite).await;
    let alice = server.register("alice").await;
    let r = server
        .send(Method::GET, EVENTS, Some(&alice.token), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");
}

#[tokio::test]
async fn a_stream_says_the_version_then_each_new_one() {
    let server = Server::start_with(Backend::Sqlite, &["--poke", "sse"]).await;
    let alice = server.register("alice").await;
    let r = server.send(Method::GET, EVENTS, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a session is needed");
    server.push_ok(&alice.token, &like(1)).await;
    let mut stream = Stream::open(&server, &alice.token).await;
    assert_eq!(stream.poke().await, 1, "first what the user is at");
    let pushed = server.push_ok(&alice.token, &like(2)).await;
    assert_eq!(pushed["cursor"], "2");
    assert_eq!(stream.poke().await, 2);
    // Another user's write is not told.
    let bob = server.register("bob").await;
    server.push_ok(&bob.token, &like(1)).await;
    server.push_ok(&alice.token, &like(3)).await;
    assert_eq!(stream.poke().await, 3);
}

#[tokio::test]
async fn a_write_through_one_node_pokes_a_stream_on_another() {
    let data = Data::new(Backend::Postgres);
    let (a, b) = (
        data.start(&["--poke", "sse"]).await,
        data.start(&["--poke", "sse"]).await,
    );
    let alice = a.register("alice").await;
    let mut stream = Stream::open(&b, &alice.token).await;
    assert_eq!(stream.poke().await, 0);
    for id in 1..=3 {
        let pushed = a.push_ok(&alice.token, &like(id)).await;
        assert_eq!(stream.poke().await.to_string(), pushed["cursor"]);
    }
}

#[tokio::test]
async fn a_user_holds_a_few_streams_at_most() {
    let server = Server::start_with(Backend::Sqlite, &["--poke", "sse"]).await;
    let alice = server.register("alice").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(Stream::open(&server, &alice.token).await);
    }
    let r = server
        .send(Method::GET, EVENTS, Some(&alice.token), None)
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.header("retry-after").is_some());
    // Another user is not held back by Alice's streams.
    let bob = server.register("bob").await;
    let mut bobs = Stream::open(&server, &bob.token).await;
    assert_eq!(bobs.poke().await, 0);
}

#[tokio::test]
async fn a_shutdown_ends_open_streams_at_once() {
    let server = Server::start_with(
        Backend::Sqlite,
        &["--poke", "sse", "--shutdown-grace-secs", "20"],
    )
    .await;
    let alice = server.register("alice").await;
    let mut stream = Stream::open(&server, &alice.token).await;
    assert_eq!(stream.poke().await, 0);
    let (status, took) = server.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(10),
        "the open stream held the shutdown for {took:?}"
    );
}

/// What an open stream costs the node: prints the resident memory per stream (the figure in
/// BENCHMARKS.md) with 1,000 streams of 250 users open, each told its version.
#[tokio::test]
async fn an_open_stream_costs_the_node_a_few_kilobytes() {
    const USERS: usize = 250;
    // The site's users (no sign-up throttle in the way).
    let secret = support::hs256_secret_path().display().to_string();
    let args = [
        "--poke",
        "sse",
        "--auth",
        "jwt",
        "--jwt-hs256-secret-file",
        &secret,
    ];
    let server =
        Server::start_with(Backend::Sqlite, &[&args[..], &support::UNLIMITED].concat()).await;
    let tokens: Vec<String> = (0..USERS)
        .map(|u| support::site_token(&format!("viewer{u}")))
        .collect();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
    };
    // Warm: one stream per user opened and closed, so what is left is what streams hold.
    for token in &tokens {
        let mut s = Stream::open(&server, token).await;
        assert_eq!(s.poke().await, 0);
    }
    let before = rss();
    let mut open = Vec::new();
    for round in 0..4 {
        for token in &tokens {
            // Each open stream holds a connection of its own, as a browser's does.
            let mut s = Stream::open(&server, token).await;
            assert_eq!(s.poke().await, 0, "round {round}");
            open.push(s);
        }
    }
    let after = rss();
    let per_stream = (after.saturating_sub(before) * 1024) / open.len() as u64;
    println!(
        "{} open streams: {} KiB resident before, {} KiB after: {} bytes per stream",
        open.len(),
        before,
        after,
        per_stream
    );
    assert!(per_stream < 64 * 1024, "{per_stream} bytes per stream");
}
