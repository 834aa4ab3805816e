//! The embedding example (`examples/embedded.rs`), served on loopback: the site's own routes
//! and Sinkron's nested ones in one app, Sinkron trusting the site's sessions.

#[path = "../examples/embedded.rs"]
#[allow(dead_code)]
mod embedded;

use reqwest::StatusCode;
use serde_json::{json, Value};

struct Site {
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn serve() -> Site {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = sinkron_server::store::open(&dir.path().join("site.db").display().to_string())
        .expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, embedded::app(store)).await });
    Site {
        url,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Site {
    /// Signs in at the site; returns the `Cookie` header value of its session.
    async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .http
            .post(format!("{}/login", self.url))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), StatusCode::OK);
        let set = r.headers()["set-cookie"]
            .to_str()
            .expect("ascii")
            .to_owned();
        set.split(';').next().expect("name=value").to_owned()
    }

    async fn push(&self, cookie: &str, site: &str, key: &str) -> reqwest::Response {
        let body = json!({"clientId": "tab", "mutations": [
            {"id": 1, "collection": "favorites", "key": key, "value": {}, "updatedAt": 1}
        ]});
        self.http
            .post(format!("{}/sync/api/user/me/changes", self.url))
            .header("cookie", cookie)
            .header("sec-fetch-site", site)
            .json(&body)
            .send()
            .await
            .expect("push")
    }

    async fn me(&self, cookie: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/sync/api/user/me", self.url))
            .header("cookie", cookie)
            .send()
            .await
            .expect("pull");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("json")
    }
}

#[tokio::test]
async fn the_site_and_sinkron_share_one_app_and_the_sites_sessions() {
    let site = serve().await;
    let home = site.http.get(&site.url).send().await.expect("home");
    assert_eq!(
        home.text().await.expect("text"),
        "The site's own home page."
    );

    // Not signed in at the site: Sinkron answers 401, in its own JSON.
    let r = site
        .http
        .get(format!("{}/sync/api/user/me", site.url))
        .send()
        .await
        .expect("pull");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "unauthorized"
    );

    let alice = site.login("alice", "wonderland").await;
    assert_eq!(
        site.push(&alice, "same-origin", "s01").await.status(),
        StatusCode::OK
    );
    let state = site.me(&alice).await;
    assert_eq!(state["user"]["id"], "alice", "the site's user id");
    assert_eq!(state["changes"][0]["key"], "s01");

    // Another site's page cannot use alice's cookie to write.
    let r = site.push(&alice, "cross-site", "s66").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Bob is another user; a made-up session is nobody.
    let bob = site.login("bob", "builder1").await;
    assert_eq!(site.me(&bob).await["changes"], json!([]));
    let r = site.push("site_session=forged", "same-origin", "s02").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Sinkron's own accounts are off in a site that signs its users in itself.
    let r = site
        .http
        .post(format!("{}/sync/api/auth/register", site.url))
        .json(&json!({"username": "mallory", "password": "correct horse"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        site.me(&alice).await["changes"].as_array().map(Vec::len),
        Some(1)
    );
}
