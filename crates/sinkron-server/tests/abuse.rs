//! The real binary under abuse on loopback, bounded in count and time: what an attacker can
//! make the server spend.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Backend, Data, Server};
use tokio::task::JoinSet;

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn a_login_flood_keeps_memory_bounded_and_gives_it_back() {
    let server = Server::start(Backend::Sqlite).await;
    let pid = server.pid();
    let before = status_kib(pid, "VmRSS:");
    // 48 clients, each on its own address (under the per-address rate), 5 wrong logins
    // each, for usernames that do not exist: each one costs a full argon2id hash (as a known
    // user's would), with every hashing slot busy throughout.
    let mut clients = JoinSet::new();
    for c in 0..48u8 {
        let http = client_at([127, 0, 1, c + 1]);
        let url = server.url("/api/auth/login");
        clients.spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..5 {
                let body =
                    json!({"username": format!("nobody-{c}-{i}"), "password": "not the password"});
                let status = http
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                statuses.push(status.unwrap_or(0));
            }
            statuses
        });
    }
    let mut refused = 0;
    while let Some(statuses) = clients.join_next().await {
        for status in statuses.expect("client") {
            assert!(
                matches!(status, 401 | 429),
                "a wrong login answers 401 (or 429), not {status}"
            );
            refused += usize::from(status == 401);
        }
    }
    assert!(
        refused >= 100,
        "most attempts were hashed and refused: {refused}"
    );
    let peak = status_kib(pid, "VmHWM:");
    assert!(
        peak < 200 * 1024,
        "resident memory peaked at {} MiB during the flood (from {} MiB)",
        peak / 1024,
        before / 1024
    );
    // Idle hashing threads give their memory back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = status_kib(pid, "VmRSS:");
        if now < 50 * 1024 {
            eprintln!(
                "login flood: {refused} refused; resident {} MiB before, peak {} MiB, {} MiB after",
                before / 1024,
                peak / 1024,
                now / 1024
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "resident memory still {} MiB 30 s after the flood",
            now / 1024
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

/// Open file handles of a process.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .count()
}

#[tokio::test]
async fn idle_sockets_are_capped_and_closed_and_the_server_keeps_answering() {
    let server = Server::start_with(
        Backend::Sqlite,
        &["--max-connections", "4", "--idle-timeout-secs", "1"],
    )
    .await;
    let pid = server.pid();
    let before = open_files(pid);
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Twenty sockets that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // The server answers anyway: once the idle ones are closed, the health check is served.
    let health = tokio::time::timeout(
        Duration::from_secs(20),
        server.http.get(server.url("/healthz")).send(),
    )
    .await
    .expect("the health check is answered while idle sockets pile up")
    .expect("a response");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    // At most the cap of them cost the process a file handle at any time (the rest waited
    // in the kernel's queue), and the server closed the first ones for idling.
    let held = open_files(pid).saturating_sub(before);
    assert!(held <= 4, "{held} more file handles than before the flood");
    let mut first = idle.remove(0);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut first, &mut byte),
    )
    .await
    .expect("the server closes an idle socket");
    assert_eq!(read.ok(), Some(0), "closed without a byte");
    server.stop().await;
}

/// A node for [`hoarder`]s, with `more` flags: pages as large as an operator may allow (a
/// hoarder's whole state of about 4 MB in one), an answer not taken given up after two
/// seconds, connections left idle after an answer closed after one.
async fn hoarders_node(more: &[&str]) -> Server {
    let flags = [
        "--request-timeout-secs",
        "2",
        "--idle-timeout-secs",
        "1",
        "--page-bytes",
        "8000000",
    ];
    let args: Vec<&str> = flags.iter().chain(more).copied().collect();
    Server::start_with(Backend::Sqlite, &args).await
}

/// A user `name` holding about 4 MB to pull: 1,000 values of 4,000 bytes.
async fn hoarder(server: &Server, name: &str) -> support::Account {
    let account = server.register(name).await;
    let value = serde_json::json!({"note": "x".repeat(4000)});
    for push in 0..10u64 {
        let mutations = (push * 100 + 1..=push * 100 + 100)
            .map(|id| support::mutation(id, "settings", &format!("k{id}"), value.clone(), id))
            .collect();
        let batch = support::batch(&format!("{name}-app"), mutations, None);
        server.push_ok(&account.token, &batch).await;
    }
    account
}

/// Waits until the server's process has no more open files than `before`: the connections
/// it gave up are closed.
async fn connections_given_up(pid: u32, before: usize) {
    let started = Instant::now();
    while open_files(pid) > before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} connections still open after 20 s",
            open_files(pid) - before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_answer_the_client_does_not_take_is_given_up_with_its_connection() {
    let server = hoarders_node(&[]).await;
    let account = hoarder(&server, "hoarder").await;
    let pid = server.pid();
    let before = open_files(pid);
    // As many pulls that read nothing as the user may have at once (4).
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(support::unread_pull(&server.base, &account.token).await);
    }
    // While their answers wait, they count as the user's requests at once: one more is
    // refused, so one user's unread answers hold at most four pages.
    assert_eq!(
        server.pull(&account.token, None).await.status,
        reqwest::StatusCode::TOO_MANY_REQUESTS
    );
    // Two seconds after each stopped taking its answer, the server has let it go: its
    // connection closed, and with it the answer it held.
    connections_given_up(pid, before).await;
    // What reaches each client now is what the sockets held on the way, not the answer.
    for mut stream in sockets {
        let mut taken = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut taken).await;
        assert!(
            taken.len() < 4_000_000,
            "{} bytes arrived: the whole answer",
            taken.len()
        );
    }
    // And the server goes on answering: a client that reads gets the whole answer.
    let answer = server.pull_ok(&account.token, None).await;
    assert_eq!(answer["changes"].as_array().map(Vec::len), Some(1000));
    server.stop().await;
}

#[tokio::test]
async fn unread_answers_of_all_users_together_are_bounded_on_a_node() {
    // Room for one answer of about 4 MB, not two.
    let server = hoarders_node(&["--held-answers-bytes-max", "6000000"]).await;
    let first = hoarder(&server, "first").await;
    let second = hoarder(&server, "second").await;
    let pid = server.pid();
    let before = open_files(pid);
    // One user's client takes nothing of its answer: the node holds it.
    let unread = support::unread_pull(&server.base, &first.token).await;
    // Another user's pull would hold as much again: refused for now, to be retried.
    let refused = server.pull(&second.token, None).await;
    assert_eq!(
        refused.status,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text
    );
    assert_eq!(refused.error_code(), "unavailable");
    assert_eq!(refused.headers["retry-after"], "2");
    // Small answers are not held back: the second user's push is answered.
    let value = serde_json::json!({"note": "late"});
    let write = support::mutation(1001, "settings", "late", value, 1001);
    server
        .push_ok(
            &second.token,
            &support::batch("second-app", vec![write], None),
        )
        .await;
    // Once the node has given the unread answer up with its connection, the pull goes
    // through: a first page of 1,000 changes, the push's after it.
    connections_given_up(pid, before).await;
    drop(unread);
    let answer = server.pull_ok(&second.token, None).await;
    assert_eq!(answer["changes"].as_array().map(Vec::len), Some(1000));
    assert_eq!(answer["more"], true);
    server.stop().await;
}

#[tokio::test]
async fn a_half_sent_header_does_not_hold_up_shutdown() {
    let server = Server::start_with(
        Backend::Sqlite,
        &["--shutdown-grace-secs", "2", "--idle-timeout-secs", "120"],
    )
    .await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a header");
    // The server has the partial header once a whole request behind it is answered.
    let health = server.http.get(server.url("/healthz")).send().await;
    assert_eq!(health.expect("health").status(), reqwest::StatusCode::OK);
    let (status, took) = server.terminate().await;
    assert!(status.success(), "a clean exit: {status}");
    assert!(
        took < Duration::from_secs(8),
        "SIGTERM took {took:?} with a half-sent header open"
    );
    drop(slow);
}

/// A client on another loopback address (Linux routes all of 127/8 to the loopback).
fn client_at(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .expect("client")
}

async fn login_status(
    client: &reqwest::Client,
    server: &Server,
    password: &str,
    forwarded_for: Option<&str>,
) -> u16 {
    let mut request = client
        .post(server.url("/api/auth/login"))
        .json(&json!({"username": "alice", "password": password}));
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    request.send().await.expect("login").status().as_u16()
}

#[tokio::test]
async fn guessing_a_password_locks_out_the_guesser_not_the_user() {
    let server = Server::start(Backend::Sqlite).await;
    server.register("alice").await;
    let attacker = client_at([127, 0, 0, 2]);
    for _ in 0..10 {
        assert_eq!(
            login_status(&attacker, &server, "not the password", None).await,
            401
        );
    }
    assert_eq!(
        login_status(&attacker, &server, "correct horse", None).await,
        429,
        "the guesser waits, even with the right password"
    );
    // Alice, from her own address, signs in at once.
    let alice = client_at([127, 0, 0, 3]);
    assert_eq!(
        login_status(&alice, &server, "correct horse", None).await,
        200
    );
    // X-Forwarded-For is not trusted from a client: it cannot buy the guesser new tries.
    assert_eq!(
        login_status(&attacker, &server, "not the password", Some("203.0.113.9")).await,
        429
    );
    server.stop().await;
}

#[tokio::test]
async fn a_user_signs_in_while_one_client_floods_the_login_route() {
    let server = std::sync::Arc::new(Server::start(Backend::Sqlite).await);
    server.register("alice").await;
    // One client, 32 connections, wrong logins for other names as fast as it is answered,
    // until alice has tried 10 times (bounded: at most 10 s).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut flood = JoinSet::new();
    for c in 0..32u32 {
        let (server, stop) = (server.clone(), stop.clone());
        flood.spawn(async move {
            let http = client_at([127, 0, 2, 1]);
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let body = json!({"username": format!("nobody-{c}-{sent}"), "password": "guess"});
                let _ = http
                    .post(server.url("/api/auth/login"))
                    .json(&body)
                    .send()
                    .await;
                sent += 1;
            }
            sent
        });
    }
    let alice = client_at([127, 0, 2, 2]);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(login_status(&alice, &server, "correct horse", None).await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u32 = flood.join_all().await.iter().sum();
    let signed_in = statuses.iter().filter(|s| **s == 200).count();
    eprintln!("alice signed in {signed_in} of 10 times while the flood sent {sent} logins");
    assert!(sent >= 100, "the flood ran: {sent}");
    assert_eq!(statuses, [200; 10], "every sign-in of alice's passes");
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_x_forwarded_for() {
    let server = Server::start_with(Backend::Sqlite, &["--trusted-proxy", "127.0.0.4"]).await;
    server.register("alice").await;
    let proxy = client_at([127, 0, 0, 4]);
    for _ in 0..10 {
        let status = login_status(&proxy, &server, "not the password", Some("203.0.113.7")).await;
        assert_eq!(status, 401);
    }
    let guesser = Some("203.0.113.7");
    assert_eq!(
        login_status(&proxy, &server, "not the password", guesser).await,
        429
    );
    // Another client through the same proxy; a spoofed first hop changes nothing.
    let user = Some("198.51.100.1, 203.0.113.8");
    assert_eq!(
        login_status(&proxy, &server, "correct horse", user).await,
        200
    );
    let spoofed = Some("198.51.100.2, 203.0.113.7");
    assert_eq!(
        login_status(&proxy, &server, "not the password", spoofed).await,
        429
    );
    server.stop().await;
}

#[tokio::test]
async fn behind_a_pool_of_proxies_named_by_their_network_a_client_is_one_client() {
    let server = Server::start_with(Backend::Sqlite, &["--trusted-proxy", "127.0.4.0/30"]).await;
    server.register("alice").await;
    // A load balancer's nodes take turns: the guesser's tries count together.
    let pool = [client_at([127, 0, 4, 1]), client_at([127, 0, 4, 2])];
    let guesser = Some("203.0.113.7");
    for proxy in pool.iter().cycle().take(10) {
        assert_eq!(
            login_status(proxy, &server, "not the password", guesser).await,
            401
        );
    }
    for proxy in &pool {
        assert_eq!(
            login_status(proxy, &server, "not the password", guesser).await,
            429
        );
    }
    // Another client through the pool signs in; an address outside the network is not a
    // proxy, and what it forwards is ignored (the guesser there is itself, not 203.0.113.7).
    assert_eq!(
        login_status(&pool[1], &server, "correct horse", Some("203.0.113.8")).await,
        200
    );
    let outside = client_at([127, 0, 4, 4]);
    assert_eq!(
        login_status(&outside, &server, "correct horse", guesser).await,
        200
    );
    server.stop().await;
}

/// `GET /api/user/me` from `client` with `token`: the status and `Retry-After`.
async fn poll_status(client: &reqwest::Client, server: &Server, token: &str) -> (u16, Option<u64>) {
    let r = client
        .get(server.url("/api/user/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("poll");
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").parse().expect("seconds"));
    (r.status().as_u16(), retry)
}

#[tokio::test]
async fn an_address_sending_tokens_that_are_not_valid_waits_and_users_elsewhere_do_not() {
    let server = Server::start(Backend::Sqlite).await;
    let alice = server.register("alice").await;
    // Tokens of the built-in shape that no session has: each one a session lookup.
    let guesser = client_at([127, 0, 0, 9]);
    let mut statuses = Vec::new();
    for n in 0..80u32 {
        let forged = format!("{n:064x}");
        statuses.push(poll_status(&guesser, &server, &forged).await);
    }
    let refused = statuses.iter().filter(|(s, _)| *s == 401).count();
    let held: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(
        statuses[..60].iter().all(|(s, _)| *s == 401),
        "{statuses:?}"
    );
    assert_eq!(refused + held.len(), 80, "{statuses:?}");
    assert!(
        held.len() >= 10,
        "past its burst the address is held: {statuses:?}"
    );
    assert!(
        held.iter()
            .all(|(_, retry)| retry.is_some_and(|s| (1..=2).contains(&s))),
        "{held:?}"
    );
    // Alice, from another address, polls as usual.
    let elsewhere = client_at([127, 0, 0, 10]);
    assert_eq!(poll_status(&elsewhere, &server, &alice.token).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn one_address_cannot_sign_in_or_sign_up_without_limit() {
    let server = Server::start(Backend::Sqlite).await;
    let bulk = client_at([127, 0, 0, 6]);
    let mut statuses = Vec::new();
    for i in 0..30 {
        // Short passwords: refused without hashing, yet each is an attempt.
        let body = json!({"username": format!("bulk{i}"), "password": "short"});
        let r = bulk
            .post(server.url("/api/auth/register"))
            .json(&body)
            .send()
            .await
            .expect("register");
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .expect("header")
                .parse()
                .expect("seconds");
            assert!((1..=60).contains(&retry), "Retry-After {retry}");
        }
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..20].iter().all(|s| *s == 422), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // Logins from that address wait too; another address signs up at once.
    assert_eq!(
        login_status(&bulk, &server, "correct horse", None).await,
        429
    );
    let other = client_at([127, 0, 0, 7]);
    let r = other
        .post(server.url("/api/auth/register"))
        .json(&json!({"username": "neighbour", "password": "correct horse"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_guesses_each_count_before_they_are_checked() {
    let server = Server::start(Backend::Sqlite).await;
    server.register("alice").await;
    let attacker = client_at([127, 0, 0, 8]);
    // Twenty at once (within the address's burst): only ten are checked.
    let mut guesses = JoinSet::new();
    for _ in 0..20 {
        let (attacker, url) = (attacker.clone(), server.url("/api/auth/login"));
        guesses.spawn(async move {
            let body = json!({"username": "alice", "password": "not the password"});
            let r = attacker.post(url).json(&body).send().await.expect("login");
            r.status().as_u16()
        });
    }
    let mut statuses = guesses.join_all().await;
    statuses.sort_unstable();
    assert_eq!(statuses, [[401; 10], [429; 10]].concat());
    server.stop().await;
}

#[tokio::test]
async fn on_postgres_guesses_through_every_node_count_together() {
    let data = Data::new(Backend::Postgres);
    let (a, b) = (data.start(&[]).await, data.start(&[]).await);
    a.register("alice").await;
    let attacker = client_at([127, 0, 0, 9]);
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            login_status(&attacker, node, "not the password", None).await,
            401
        );
    }
    for node in [&a, &b] {
        assert_eq!(
            login_status(&attacker, node, "correct horse", None).await,
            429,
            "the guesser waits on every node"
        );
    }
    // The user, from her own address, signs in through either node.
    let alice = client_at([127, 0, 0, 10]);
    assert_eq!(login_status(&alice, &b, "correct horse", None).await, 200);
    a.stop().await;
    b.stop().await;
}

/// A push of one record by `token`'s user as client `client`, id `id`: its status and how
/// long it took.
async fn timed_push(
    http: &reqwest::Client,
    server: &Server,
    token: &str,
    client: &str,
    id: u64,
) -> (u16, Duration) {
    let body = support::batch(
        client,
        vec![support::mutation(
            id,
            "likes",
            &format!("k{id}"),
            json!({}),
            id,
        )],
        None,
    );
    let started = Instant::now();
    let r = http
        .post(server.url("/api/user/me/changes"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("push");
    (r.status().as_u16(), started.elapsed())
}

#[tokio::test]
async fn one_user_flooding_pushes_is_held_back_and_others_push_as_usual() {
    // A small pool, as one node of many would have: without a per-user limit one user's
    // pushes (which queue on the user's row) take every connection.
    let server = Server::start_with(Backend::Postgres, &["--db-pool-size", "4"]).await;
    let (flooder, other) = (
        server.register("flooder").await,
        server.register("other").await,
    );
    let http = reqwest::Client::new();
    let server = std::sync::Arc::new(server);
    let mut flood = JoinSet::new();
    for i in 0..100u64 {
        let (http, server, token) = (http.clone(), server.clone(), flooder.token.clone());
        flood.spawn(async move {
            let mut statuses = Vec::new();
            for j in 0..5 {
                let id = i * 5 + j + 1;
                statuses.push(
                    timed_push(&http, &server, &token, &format!("f{i}"), id)
                        .await
                        .0,
                );
            }
            statuses
        });
    }
    let mut others = Vec::new();
    for id in 1..=20 {
        others.push(timed_push(&http, &server, &other.token, "o", id).await);
    }
    let flooded: Vec<u16> = flood.join_all().await.concat();
    let refused = flooded.iter().filter(|s| **s == 429).count();
    let mut latencies: Vec<Duration> = others.iter().map(|(_, took)| *took).collect();
    latencies.sort_unstable();
    eprintln!(
        "the other user's push latency during the flood: median {:?}, max {:?}; \
         the flooder's pushes refused: {refused} of {}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        flooded.len()
    );
    assert!(
        others.iter().all(|(status, _)| *status == 200),
        "the other user's pushes: {others:?}"
    );
    assert!(
        refused > 0 && flooded.iter().all(|s| *s == 200 || *s == 429),
        "the flooder is answered 429 past its limits, nothing else: {flooded:?}"
    );
    std::sync::Arc::into_inner(server)
        .expect("one handle")
        .stop()
        .await;
}

#[tokio::test]
async fn a_user_past_the_storage_quota_is_told_so_and_stores_nothing_of_the_push() {
    let server = Server::start_with(
        Backend::Sqlite,
        &["--user-records-max", "3", "--user-bytes-max", "1000"],
    )
    .await;
    let (ann, bob) = (server.register("ann").await, server.register("bob").await);
    let writes = |first: u64, count: u64, bytes: usize| {
        let value = json!({"text": "x".repeat(bytes)});
        let mutations = (first..first + count)
            .map(|id| support::mutation(id, "likes", &format!("k{id}"), value.clone(), id))
            .collect();
        support::batch("device", mutations, None)
    };
    server.push_ok(&ann.token, &writes(1, 3, 10)).await;
    let r = server.push(&ann.token, &writes(4, 1, 10)).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (413, "quota_exceeded")
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("3 records")));
    let r = server.push(&bob.token, &writes(1, 1, 2_000)).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (413, "quota_exceeded")
    );
    // Nothing of the refused pushes is stored; Bob, within his quota, pushes as usual.
    assert_eq!(server.state(&ann.token).await.len(), 3);
    assert!(server.state(&bob.token).await.is_empty());
    server.push_ok(&bob.token, &writes(2, 3, 10)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_busy_node_asks_clients_to_poll_less_often() {
    // No rate limit: the load is a few users pushing as fast as they can.
    let server = Server::start_with(
        Backend::Sqlite,
        &[
            "--poll-interval",
            "30",
            "--poll-busy-requests",
            "6",
            "--user-requests-per-minute",
            "0",
        ],
    )
    .await;
    let accounts = [
        server.register("busy-a").await,
        server.register("busy-b").await,
        server.register("busy-c").await,
    ];
    // One who only polls (the others use all their concurrency pushing).
    let watcher = server.register("watcher").await;
    // Calm: the base interval, on a 200 and on a 304 alike.
    let token = watcher.token.clone();
    let first = server.pull(&token, None).await;
    assert_eq!(first.header("sinkron-poll-interval"), Some("30"));
    let cursor = first.json()["cursor"].as_str().expect("cursor").to_owned();
    let etag = format!("\"{cursor}\"");
    let poll = || {
        reqwest::Client::new()
            .get(server.url(&format!("/api/user/me?lastSync={cursor}")))
            .bearer_auth(&token)
            .header("if-none-match", &etag)
            .send()
    };
    let calm = poll().await.expect("poll");
    assert_eq!(calm.status().as_u16(), 304);
    assert_eq!(calm.headers()["sinkron-poll-interval"], "30");

    // Busy: three users pushing four at a time (their concurrency limit) keep a dozen
    // requests in flight, twice the threshold, until the polls say so (at most 20 s).
    let http = reqwest::Client::new();
    let server = std::sync::Arc::new(server);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = JoinSet::new();
    for (u, account) in accounts.iter().enumerate() {
        for w in 0..4u64 {
            let (http, server, token, stop) = (
                http.clone(),
                server.clone(),
                account.token.clone(),
                stop.clone(),
            );
            load.spawn(async move {
                let mut id = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    id += 1;
                    timed_push(&http, &server, &token, &format!("w{u}-{w}"), id).await;
                }
            });
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut asked = 30;
    while asked == 30 && Instant::now() < deadline {
        let r = server.pull(&token, None).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text);
        asked = r
            .header("sinkron-poll-interval")
            .expect("the header")
            .parse()
            .expect("seconds");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join_all().await;
    assert!(
        asked >= 60,
        "a busy node asks for a longer interval, not {asked} s"
    );
    // Still asked for on the cheapest answer, right after the load.
    let after = reqwest::Client::new()
        .get(server.url(&format!("/api/user/me?lastSync={cursor}")))
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("poll");
    assert_eq!(after.status().as_u16(), 304);
    let after: u32 = after.headers()["sinkron-poll-interval"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 60, "{after}");
}
