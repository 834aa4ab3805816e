//! Another origin and the site's cookie, against the real binary: CORS answers only for the
//! allowed origins, and a change signed in by cookie must come from the site or an allowed
//! origin (CSRF), while bearer tokens, which no other site can make a browser send, are
//! unaffected.

mod support;

use std::path::PathBuf;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{batch, mutation, reply, run, Backend, Server};

const SITE: &str = "http://tv.test:8000";
const COOKIE: &str = "site_session";

fn secret_file() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt/hs256.secret")
        .display()
        .to_string()
}

fn token(sub: &str) -> String {
    let secret = std::fs::read_to_string(secret_file()).expect("secret");
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret.trim_end().as_bytes()).expect("key"),
    )
    .expect("encode")
}

async fn server(backend: Backend) -> Server {
    let secret = secret_file();
    let args = [
        "--jwt-hs256-secret-file",
        secret.as_str(),
        "--jwt-cookie",
        COOKIE,
        "--cors-origin",
        SITE,
    ];
    Server::start_with(backend, &args).await
}

fn header<'a>(r: &'a support::Reply, name: &str) -> Option<&'a str> {
    r.header(name)
}

async fn only_allowed_origins_get_cors_answers(backend: Backend) {
    let server = server(backend).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &str| {
        http.request(Method::OPTIONS, server.url("/api/user/me/changes"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
    };
    let allowed = reply(preflight(SITE)).await;
    assert!(allowed.status.is_success(), "{}", allowed.status);
    assert_eq!(header(&allowed, "access-control-allow-origin"), Some(SITE));
    assert_eq!(
        header(&allowed, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(header(&allowed, "access-control-max-age"), Some("3600"));
    // The API's methods: an app on another origin may delete its user's account too.
    assert_eq!(
        header(&allowed, "access-control-allow-methods"),
        Some("GET,POST,DELETE")
    );
    let headers = header(&allowed, "access-control-allow-headers").unwrap_or("");
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );

    let other = reply(preflight("http://evil.test")).await;
    assert_eq!(header(&other, "access-control-allow-origin"), None);

    // A real request from the site may read the ETag (for its 304s).
    let r = reply(
        http.get(server.url("/api/user/me"))
            .bearer_auth(token("u1"))
            .header("origin", SITE),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(SITE));
    let exposed = header(&r, "access-control-expose-headers")
        .unwrap_or("")
        .to_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("retry-after"),
        "{exposed}"
    );
}

async fn a_cookie_signed_change_must_come_from_the_site(backend: Backend) {
    let server = server(backend).await;
    let http = reqwest::Client::new();
    let cookie = format!("theme=dark; {COOKIE}={}", token("u2"));
    let push = |n: u64, headers: &[(&str, &str)]| {
        let mut req = http
            .post(server.url("/api/user/me/changes"))
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .body(
                batch(
                    "tab",
                    vec![mutation(n, "favorites", &format!("s{n}"), json!({}), n)],
                    None,
                )
                .to_string(),
            );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        reply(req)
    };

    // Refused: another site's page, by Origin or by Sec-Fetch-Site alone.
    for headers in [
        vec![
            ("origin", "http://evil.test"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![("sec-fetch-site", "cross-site")],
        vec![
            ("origin", "http://tv.test:9999"),
            ("sec-fetch-site", "same-site"),
        ],
    ] {
        let r = push(1, &headers).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.text);
        assert_eq!(r.error_code(), "forbidden_origin");
    }
    // Taken: the site itself, an allowed origin, this server's own origin, and a client that is
    // not a browser at all.
    let own = server.url("");
    let own = own.trim_end_matches('/');
    let cases = [
        vec![("sec-fetch-site", "same-origin")],
        vec![("origin", SITE), ("sec-fetch-site", "same-site")],
        vec![("origin", own)],
        vec![],
    ];
    for (i, headers) in cases.iter().enumerate() {
        let r = push(i as u64 + 2, headers).await;
        assert_eq!(r.status, StatusCode::OK, "{headers:?}: {}", r.text);
    }
    // Reading with the cookie needs no origin check; only the four taken changes are stored.
    let r = reply(
        http.get(server.url("/api/user/me"))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let keys: Vec<String> = r.json()["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["key"].as_str().expect("key").to_owned())
        .collect();
    assert_eq!(keys, ["s2", "s3", "s4", "s5"]);

    // A bearer token is never sent by a browser on its own: no origin check for it.
    let r = server
        .send(
            Method::POST,
            "/api/user/me/changes",
            Some(&token("u2")),
            Some(
                batch(
                    "tab2",
                    vec![mutation(1, "favorites", "s9", json!({}), 9)],
                    None,
                )
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Without the cookie mode's cookie, a request is not signed in at all.
    let r = reply(
        http.get(server.url("/api/user/me"))
            .header("cookie", format!("other={}", token("u2"))),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

on_every_backend!(
    only_allowed_origins_get_cors_answers,
    a_cookie_signed_change_must_come_from_the_site,
);

#[tokio::test]
async fn bad_origin_and_cookie_settings_fail_at_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("never-opened.db").display().to_string();
    for (args, expected) in [
        (
            vec!["--cors-origin", "https://tv.example/"],
            "not an origin",
        ),
        (vec!["--cors-origin", "tv.example"], "not an origin"),
        (vec!["--cors-origin", "ftp://tv.example"], "not an origin"),
        (vec!["--jwt-cookie", "s"], "--jwt-cookie needs JWT mode"),
    ] {
        let mut all = vec!["serve", "--addr", "127.0.0.1:0", "--database", &database];
        all.extend_from_slice(&args);
        let out = run(&all).await;
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!std::path::Path::new(&database).exists());
}
