//! JWT mode against the real binary: the site's own tokens sign its users in, every bad token
//! is a 401 that writes nothing, and the built-in accounts go away unless asked to stay.
//!
//! Tokens are made here with the `jsonwebtoken` crate and the test keys in
//! `tests/fixtures/jwt` (see its README). A key set served by URL comes from a small HTTP
//! server inside the test ([`JwksSite`]) that counts how often Sinkron asks for it.

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{batch, mutation, run, Backend, Server};
use tokio::sync::watch;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).expect("fixture")
}

fn path_arg(name: &str) -> String {
    fixture(name).display().to_string()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256_secret() -> Vec<u8> {
    fixture_text("hs256.secret").trim_end().as_bytes().to_vec()
}

/// A token for `sub`, valid for ten minutes, signed with the HS256 test secret.
fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&hs256_secret()).expect("key"),
    )
    .expect("encode")
}

fn signed(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, key).expect("encode")
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture_text(name).as_bytes()).expect("rsa key")
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iat": now()})
}

async fn hs256_server(backend: Backend, extra: &[&str]) -> Server {
    let secret = path_arg("hs256.secret");
    let mut args = vec!["--jwt-hs256-secret-file", secret.as_str()];
    args.extend_from_slice(extra);
    Server::start_with(backend, &args).await
}

fn favorite(id: u64, show: &str, at: u64) -> Value {
    mutation(id, "favorites", show, json!({}), at)
}

async fn the_sites_tokens_sign_its_users_in(backend: Backend) {
    let server = hs256_server(backend, &[]).await;
    let phone = hs256(claims("site-user-42"));
    let first = server.pull_ok(&phone, None).await;
    assert_eq!(
        first["user"]["id"], "site-user-42",
        "the user id is the token's sub"
    );
    assert_eq!(first["cursor"], "0");
    let pushed = server
        .push_ok(
            &phone,
            &batch("phone", vec![favorite(1, "s01", 1_000)], None),
        )
        .await;
    assert_eq!(pushed["ack"], 1);

    // Another token for the same subject (another device) sees it; another subject does not.
    let laptop = hs256(json!({"sub": "site-user-42", "exp": now() + 60}));
    assert!(server
        .state(&laptop)
        .await
        .contains_key(&("favorites".into(), "s01".into())));
    let stranger = hs256(claims("site-user-43"));
    assert!(server.state(&stranger).await.is_empty());
    // A no-change poll with the site's token is a 304 like any other.
    let cursor = pushed["cursor"].as_str().expect("cursor").to_owned();
    let poll = server.pull(&laptop, Some(&cursor)).await;
    assert_eq!(poll.status, StatusCode::OK);
    let etag = poll.header("etag").expect("etag").to_owned();
    let r = support::reply(
        reqwest::Client::new()
            .get(server.url(&format!("/api/user/me?lastSync={cursor}")))
            .bearer_auth(&laptop)
            .header("if-none-match", etag),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}

async fn built_in_accounts_answer_404_in_jwt_mode_unless_kept(backend: Backend) {
    let server = hs256_server(backend, &[]).await;
    let body = Some(json!({"username": "alice", "password": "correct horse"}).to_string());
    for path in ["/api/auth/register", "/api/auth/login", "/api/auth/logout"] {
        let r = server.send(Method::POST, path, None, body.clone()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
        assert_eq!(r.error_code(), "not_found");
    }

    let both = hs256_server(backend, &["--auth", "builtin,jwt"]).await;
    let alice = both.register("alice").await;
    let site = hs256(claims("alice"));
    both.push_ok(&alice.token, &batch("a", vec![favorite(1, "s01", 1)], None))
        .await;
    // The built-in alice and the site's "alice" are different users.
    assert!(both.state(&site).await.is_empty());
    assert_eq!(both.state(&alice.token).await.len(), 1);
    // A site token is signed out at the site; Sinkron's logout refuses it plainly.
    let r = both
        .send(Method::POST, "/api/auth/logout", Some(&site), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}

/// Every token here must be a 401 with the given code, and write nothing.
async fn assert_refused(server: &Server, token: &str, code: &str, what: &str) {
    let r = server
        .push(token, &batch("evil", vec![favorite(1, "s66", 1)], None))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text);
    assert_eq!(r.error_code(), code, "{what}");
    let r = server.pull(token, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what} (pull)");
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn bad_tokens_are_401_and_write_nothing(backend: Backend) {
    let server = hs256_server(
        backend,
        &[
            "--jwt-issuer",
            "https://site.example",
            "--jwt-audience",
            "sinkron",
        ],
    )
    .await;
    let good = |sub: &str| json!({"sub": sub, "exp": now() + 600, "iss": "https://site.example", "aud": "sinkron"});
    let with = |patch: Value| {
        let mut c = good("victim");
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let accepted = hs256(good("victim"));
    assert_eq!(server.pull(&accepted, None).await.status, StatusCode::OK);

    let expired = hs256(with(json!({"exp": now() - 120})));
    assert_refused(&server, &expired, "token_expired", "expired").await;
    let cases: Vec<(&str, String)> = vec![
        (
            "nbf in the future",
            hs256(with(json!({"nbf": now() + 600}))),
        ),
        ("no exp", hs256(with(json!({"exp": null})))),
        ("no sub", hs256(with(json!({"sub": null})))),
        ("empty sub", hs256(with(json!({"sub": ""})))),
        (
            "sub over 128 bytes",
            hs256(with(json!({"sub": "s".repeat(129)}))),
        ),
        (
            "wrong issuer",
            hs256(with(json!({"iss": "https://evil.example"}))),
        ),
        (
            "wrong audience",
            hs256(with(json!({"aud": "someone-else"}))),
        ),
        (
            "bad signature",
            encode(
                &Header::new(Algorithm::HS256),
                &good("victim"),
                &EncodingKey::from_secret(b"another secret of at least thirty-two bytes")
                    .expect("key"),
            )
            .expect("encode"),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&good("victim"))
            ),
        ),
        (
            "an RS256 token against an HS256 secret",
            signed(
                Algorithm::RS256,
                &rsa_key("rsa1.key.pem"),
                None,
                good("victim"),
            ),
        ),
        (
            "64 KB",
            format!("{}.{}.x", "a".repeat(32 * 1024), "b".repeat(32 * 1024)),
        ),
        ("garbage", "not.a.token".into()),
        ("one segment", "garbage".into()),
    ];
    for (what, token) in &cases {
        assert_refused(&server, token, "unauthorized", what).await;
    }
    assert!(
        server.state(&accepted).await.is_empty(),
        "nothing was written"
    );
}

async fn public_keys_pin_their_algorithm(backend: Backend) {
    // RS256 with a PEM public key; an HS256 token "signed" with that public key is refused.
    let rsa = Server::start_with(
        backend,
        &["--jwt-public-key-file", &path_arg("rsa1.pub.pem")],
    )
    .await;
    let ok = signed(
        Algorithm::RS256,
        &rsa_key("rsa1.key.pem"),
        None,
        claims("r1"),
    );
    assert_eq!(rsa.pull(&ok, None).await.status, StatusCode::OK);
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims("r1"),
        &EncodingKey::from_secret(fixture_text("rsa1.pub.pem").as_bytes()).expect("key"),
    )
    .expect("encode");
    assert_refused(
        &rsa,
        &confused,
        "unauthorized",
        "HS256 signed with the public key",
    )
    .await;
    let other_key = signed(
        Algorithm::RS256,
        &rsa_key("rsa2.key.pem"),
        None,
        claims("r1"),
    );
    assert_refused(&rsa, &other_key, "unauthorized", "another RSA key").await;

    let ec = Server::start_with(backend, &["--jwt-public-key-file", &path_arg("ec.pub.pem")]).await;
    let key = EncodingKey::from_ec_pem(fixture_text("ec.key.pem").as_bytes()).expect("ec key");
    let ok = signed(Algorithm::ES256, &key, None, claims("e1"));
    assert_eq!(ec.pull(&ok, None).await.status, StatusCode::OK);

    let ed = Server::start_with(backend, &["--jwt-public-key-file", &path_arg("ed.pub.pem")]).await;
    let key = EncodingKey::from_ed_pem(fixture_text("ed.key.pem").as_bytes()).expect("ed key");
    let ok = signed(Algorithm::EdDSA, &key, None, claims("d1"));
    assert_eq!(ed.pull(&ok, None).await.status, StatusCode::OK);
    let rsa_token = signed(
        Algorithm::RS256,
        &rsa_key("rsa1.key.pem"),
        None,
        claims("d1"),
    );
    assert_refused(
        &ed,
        &rsa_token,
        "unauthorized",
        "RS256 against an Ed25519 key",
    )
    .await;
}

/// A JWKS document of the public halves of RSA test keys, as `(key file, kid)`.
fn jwks(keys: &[(&str, &str)]) -> Vec<u8> {
    let keys = keys
        .iter()
        .map(|(name, kid)| {
            let mut jwk = Jwk::from_encoding_key(&rsa_key(name), Algorithm::RS256).expect("jwk");
            jwk.common.key_id = Some((*kid).into());
            jwk
        })
        .collect();
    serde_json::to_vec(&JwkSet { keys }).expect("json")
}

async fn a_key_set_picks_the_key_by_kid(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(
        &jwks_file,
        jwks(&[("rsa1.key.pem", "2026-11"), ("rsa2.key.pem", "2026-12")]),
    )
    .expect("write");
    let server =
        Server::start_with(backend, &["--jwks-file", &jwks_file.display().to_string()]).await;
    for (key, kid) in [("rsa1.key.pem", "2026-11"), ("rsa2.key.pem", "2026-12")] {
        let token = signed(Algorithm::RS256, &rsa_key(key), Some(kid), claims("k1"));
        assert_eq!(
            server.pull(&token, None).await.status,
            StatusCode::OK,
            "{kid}"
        );
    }
    let swapped = signed(
        Algorithm::RS256,
        &rsa_key("rsa1.key.pem"),
        Some("2026-12"),
        claims("k1"),
    );
    assert_refused(&server, &swapped, "unauthorized", "the other key's kid").await;
    let unknown = signed(
        Algorithm::RS256,
        &rsa_key("rsa1.key.pem"),
        Some("2025-01"),
        claims("k1"),
    );
    assert_refused(&server, &unknown, "unauthorized", "an unknown kid").await;
    let none = signed(
        Algorithm::RS256,
        &rsa_key("rsa1.key.pem"),
        None,
        claims("k1"),
    );
    assert_refused(&server, &none, "unauthorized", "no kid with two keys").await;
}

on_every_backend!(
    the_sites_tokens_sign_its_users_in,
    built_in_accounts_answer_404_in_jwt_mode_unless_kept,
    bad_tokens_are_401_and_write_nothing,
    public_keys_pin_their_algorithm,
    a_key_set_picks_the_key_by_kid,
);

/// The first stderr line of a failed start, which must name the problem.
async fn start_failure(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("never-opened.db").display().to_string();
    let mut all = vec!["serve", "--addr", "127.0.0.1:0", "--database", &database];
    all.extend_from_slice(args);
    let out = run(&all).await;
    assert!(!out.status.success(), "{args:?} started");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        !std::path::Path::new(&database).exists(),
        "the database was not opened"
    );
    stderr
}

#[tokio::test]
async fn bad_jwt_settings_fail_at_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "too short\n").expect("write");
    let line = start_failure(&["--jwt-hs256-secret-file", &short.display().to_string()]).await;
    assert!(line.contains("at least 32"), "{line}");
    let line = start_failure(&["--jwt-hs256-secret-file", "/nonexistent/secret"]).await;
    assert!(line.contains("/nonexistent/secret"), "{line}");
    let line = start_failure(&["--jwt-public-key-file", &path_arg("hs256.secret")]).await;
    assert!(line.contains("not a PEM public key"), "{line}");
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, vec![b' '; 2 * 1024 * 1024]).expect("write");
    let line = start_failure(&["--jwks-file", &huge.display().to_string()]).await;
    assert!(line.contains("larger than"), "{line}");
    let line = start_failure(&["--auth", "jwt"]).await;
    assert!(line.contains("--jwt-hs256-secret-file"), "{line}");
    assert!(line.contains("--jwks-url"), "{line}");
    let line = start_failure(&[
        "--jwt-hs256-secret-file",
        &path_arg("hs256.secret"),
        "--jwks-file",
        &path_arg("hs256.secret"),
    ])
    .await;
    assert!(line.contains("cannot be used with"), "{line}");
}

/// How the site's JWKS endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// The document.
    Up,
    /// 503, as a site whose servers are down behind its load balancer.
    Unavailable,
    /// 200 with a body that is not a JWKS document.
    Garbage,
    /// Nothing: the connection is closed as soon as it is accepted.
    Down,
}

/// The site's JWKS endpoint, served from inside the test on loopback. It counts every
/// attempt to fetch the document, answered or not.
struct JwksSite {
    url: String,
    shared: Arc<SiteShared>,
}

struct SiteShared {
    document: Mutex<Vec<u8>>,
    answer: Mutex<Answer>,
    attempts: watch::Sender<usize>,
}

/// Accepts the site's connections, and closes them at once while the site is down.
struct SiteListener {
    listener: tokio::net::TcpListener,
    site: Arc<SiteShared>,
}

impl axum::serve::Listener for SiteListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            if *self.site.answer.lock().expect("lock") != Answer::Down {
                return (io, addr);
            }
            self.site.attempts.send_modify(|n| *n += 1);
            drop(io);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

async fn serve_jwks(
    axum::extract::State(site): axum::extract::State<Arc<SiteShared>>,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    site.attempts.send_modify(|n| *n += 1);
    let answer = *site.answer.lock().expect("lock");
    match answer {
        Answer::Up | Answer::Down => {
            let document = site.document.lock().expect("lock").clone();
            ([(header::CONTENT_TYPE, "application/json")], document).into_response()
        }
        Answer::Unavailable => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Answer::Garbage => "<html>down for maintenance</html>".into_response(),
    }
}

impl JwksSite {
    async fn start(document: Vec<u8>) -> Self {
        let shared = Arc::new(SiteShared {
            document: Mutex::new(document),
            answer: Mutex::new(Answer::Up),
            attempts: watch::channel(0).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("address")
        );
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(serve_jwks))
            .with_state(shared.clone());
        let listener = SiteListener {
            listener,
            site: shared.clone(),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, shared }
    }

    fn serve(&self, document: Vec<u8>) {
        *self.shared.document.lock().expect("lock") = document;
    }

    fn answer(&self, answer: Answer) {
        *self.shared.answer.lock().expect("lock") = answer;
    }

    fn attempts(&self) -> usize {
        *self.shared.attempts.borrow()
    }

    /// Waits until the site has been asked `n` times in all.
    async fn wait_for_attempts(&self, n: usize) {
        let mut attempts = self.shared.attempts.subscribe();
        tokio::time::timeout(Duration::from_secs(15), attempts.wait_for(|a| *a >= n))
            .await
            .unwrap_or_else(|_| panic!("the site was asked {} times, not {n}", self.attempts()))
            .expect("the site is up");
    }
}

/// A token for `k1` signed with a test key, naming `kid`.
fn rs256(key: &str, kid: &str) -> String {
    signed(Algorithm::RS256, &rsa_key(key), Some(kid), claims("k1"))
}

/// A kid that no key set holds.
fn made_up_kid() -> String {
    format!("made-up-{:016x}", rand::random::<u64>())
}

// Keys do not touch storage, so these run on one backend.

#[tokio::test]
async fn a_jwks_url_is_fetched_again_for_a_new_kid_but_not_for_every_one() {
    let site = JwksSite::start(jwks(&[("rsa1.key.pem", "2026-11")])).await;
    let server = Server::start_with(Backend::Sqlite, &["--jwks-url", &site.url]).await;
    assert_eq!(site.attempts(), 1, "fetched at start");
    let old = rs256("rsa1.key.pem", "2026-11");
    assert_eq!(server.pull(&old, None).await.status, StatusCode::OK);
    assert_eq!(site.attempts(), 1, "a known kid is not fetched for");

    // The site rotates: its document holds the new key next to the old, new tokens name it.
    site.serve(jwks(&[
        ("rsa1.key.pem", "2026-11"),
        ("rsa2.key.pem", "2026-12"),
    ]));
    let new = rs256("rsa2.key.pem", "2026-12");
    let r = server.pull(&new, None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the new kid, no restart: {}",
        r.text
    );
    assert_eq!(site.attempts(), 2, "one fetch for the new kid");
    assert_eq!(server.pull(&old, None).await.status, StatusCode::OK);

    // Made-up kids within the cooldown, one after another and many at once: refused, and
    // the site is not asked again.
    assert_refused(
        &server,
        &rs256("rsa1.key.pem", &made_up_kid()),
        "unauthorized",
        "a made-up kid",
    )
    .await;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let token = rs256("rsa1.key.pem", &made_up_kid());
        let request = server
            .http
            .get(server.url("/api/user/me"))
            .bearer_auth(token);
        burst.spawn(support::reply(request));
    }
    while let Some(reply) = burst.join_next().await {
        let reply = reply.expect("the request ran");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
        assert_eq!(reply.error_code(), "unauthorized");
    }
    assert_eq!(
        site.attempts(),
        2,
        "no fetch for made-up kids within the cooldown"
    );
    assert_eq!(server.pull(&new, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_jwks_url_that_fails_keeps_its_keys_and_the_schedule_picks_up_a_rotation() {
    let site = JwksSite::start(jwks(&[("rsa1.key.pem", "2026-11")])).await;
    let server = Server::start_with(
        Backend::Sqlite,
        &["--jwks-url", &site.url, "--jwks-refresh-secs", "1"],
    )
    .await;
    let old = rs256("rsa1.key.pem", "2026-11");
    assert_eq!(server.pull(&old, None).await.status, StatusCode::OK);
    // Spend the fetch for unknown kids (the next is 30 s away): from here on, only the
    // schedule fetches.
    let cooldown = std::time::Instant::now();
    assert_refused(
        &server,
        &rs256("rsa1.key.pem", &made_up_kid()),
        "unauthorized",
        "a made-up kid",
    )
    .await;

    for answer in [Answer::Unavailable, Answer::Garbage, Answer::Down] {
        site.answer(answer);
        // Two failed fetches, so the first is over (fetches take turns).
        let seen = site.attempts();
        site.wait_for_attempts(seen + 2).await;
        let r = server.pull(&old, None).await;
        assert_eq!(r.status, StatusCode::OK, "{answer:?}: {}", r.text);
    }

    // The site is back, and has dropped the old key for a new one.
    site.serve(jwks(&[("rsa2.key.pem", "2026-12")]));
    site.answer(Answer::Up);
    let new = rs256("rsa2.key.pem", "2026-12");
    for tries in 0.. {
        let seen = site.attempts();
        if server.pull(&new, None).await.status == StatusCode::OK {
            break;
        }
        assert!(tries < 10, "the schedule did not bring the new key in");
        site.wait_for_attempts(seen + 1).await;
    }
    assert!(
        cooldown.elapsed() < Duration::from_secs(30),
        "the test outlasted the cooldown, so a fetch for the new kid may have done it"
    );
    assert_refused(&server, &old, "unauthorized", "the dropped key").await;
}

#[tokio::test]
async fn a_rotated_jwks_file_is_read_again_for_a_new_kid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[("rsa1.key.pem", "2026-11")])).expect("write");
    let server = Server::start_with(
        Backend::Sqlite,
        &["--jwks-file", &path.display().to_string()],
    )
    .await;
    let old = rs256("rsa1.key.pem", "2026-11");
    assert_eq!(server.pull(&old, None).await.status, StatusCode::OK);

    // The site rotates the file: written whole beside it, then renamed over it.
    let next = dir.path().join("jwks.json.next");
    std::fs::write(&next, jwks(&[("rsa2.key.pem", "2026-12")])).expect("write");
    std::fs::rename(&next, &path).expect("rename");
    let new = rs256("rsa2.key.pem", "2026-12");
    let r = server.pull(&new, None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the new kid, no restart: {}",
        r.text
    );
    assert_refused(
        &server,
        &old,
        "unauthorized",
        "the key the file no longer holds",
    )
    .await;
}

/// The URL of a document with no Content-Length that goes on until the connection closes:
/// its size is known only by counting.
async fn endless_document() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/jwks.json",
        listener.local_addr().expect("address")
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0; 4096];
                let _ = stream.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"keys\": [";
                let _ = stream.write_all(head.as_bytes()).await;
                let spaces = vec![b' '; 64 * 1024];
                // Until the reader hangs up, or 4 MiB.
                for _ in 0..64 {
                    if stream.write_all(&spaces).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_jwks_url_that_cannot_be_fetched_at_start_stops_the_server() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("address")
        )
    };
    let line = start_failure(&["--jwks-url", &closed]).await;
    assert!(
        line.contains(&format!("cannot fetch the JWKS at {closed}")),
        "{line}"
    );

    let site = JwksSite::start(b"{\"keys\": \"none\"}".to_vec()).await;
    let line = start_failure(&["--jwks-url", &site.url]).await;
    assert!(
        line.contains(&format!("{} is not a JWKS document", site.url)),
        "{line}"
    );
    site.answer(Answer::Unavailable);
    let line = start_failure(&["--jwks-url", &site.url]).await;
    assert!(line.contains("HTTP 503"), "{line}");
    site.answer(Answer::Up);
    site.serve(vec![b' '; 2 * 1024 * 1024]);
    let line = start_failure(&["--jwks-url", &site.url]).await;
    assert!(line.contains("larger than"), "{line}");
    let endless = endless_document().await;
    let line = start_failure(&["--jwks-url", &endless]).await;
    assert!(line.contains("larger than"), "no Content-Length: {line}");

    let line = start_failure(&["--jwks-url", "ftp://site.example/jwks.json"]).await;
    assert!(line.contains("not an http:// or https:// URL"), "{line}");
    let line = start_failure(&["--jwks-url", &site.url, "--jwks-file", "/x.json"]).await;
    assert!(line.contains("cannot be used with"), "{line}");
    let line = start_failure(&[
        "--jwt-public-key-file",
        &path_arg("rsa1.pub.pem"),
        "--jwks-url",
        &site.url,
    ])
    .await;
    assert!(line.contains("cannot be used with"), "{line}");
}
