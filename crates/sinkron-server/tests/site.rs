//! The web app served with `--static-dir`, as a browser and a prober meet it: its files,
//! client-side routes, what is never served, the page's security headers, and `/readyz`.

mod support;

use reqwest::StatusCode;
use support::{reply, Backend, Data};

#[tokio::test]
async fn the_app_is_served_with_its_headers_and_nothing_else_is() {
    let data = Data::new(Backend::Sqlite);
    let app = data.dir().join("app");
    std::fs::create_dir_all(app.join("assets")).expect("dirs");
    std::fs::write(app.join("index.html"), "<!doctype html><title>app</title>").expect("write");
    std::fs::write(app.join("assets/app-1.js"), "console.log(1)").expect("write");
    std::fs::write(app.join(".env"), "SECRET=1").expect("write");
    std::fs::create_dir_all(app.join(".git")).expect("dirs");
    std::fs::write(app.join(".git/config"), "[core]").expect("write");
    let outside = data.dir().join("outside.txt");
    std::fs::write(&outside, "not part of the app").expect("write");
    std::os::unix::fs::symlink(&outside, app.join("leak.txt")).expect("symlink");
    std::os::unix::fs::symlink(app.join("assets/app-1.js"), app.join("inside.js"))
        .expect("symlink");
    let server = data
        .start(&["--static-dir", app.to_str().expect("utf-8")])
        .await;
    let get = |path: &str| reply(server.http.get(server.url(path)));

    let page = get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("<title>app</title>"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval'"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));

    let script = get("/assets/app-1.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert_eq!(script.text, "console.log(1)");
    assert_eq!(script.header("x-content-type-options"), Some("nosniff"));
    // A client-side route is the app; a missing asset is not.
    let route = get("/history/s01").await;
    assert_eq!(route.status, StatusCode::OK);
    assert!(route.text.contains("<title>app</title>"));
    assert_eq!(
        get("/inside.js").await.text,
        "console.log(1)",
        "a symlink inside is fine"
    );
    for path in [
        "/assets/app-0.js",
        "/assets/missing/deep.css",
        "/.env",
        "/.git/config",
        "/%2eenv",
        "/assets/%2e%2e/.env",
        "/leak.txt",
    ] {
        let r = get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            !r.text.contains("SECRET") && !r.text.contains("not part of the app"),
            "{path}"
        );
        assert_eq!(r.error_code(), "not_found", "{path}");
    }

    // Liveness and readiness: both answer while the database does.
    assert_eq!(get("/healthz").await.text, "ok");
    let ready = get("/readyz").await;
    assert_eq!(
        (ready.status, ready.text.as_str()),
        (StatusCode::OK, "ready")
    );
    server.stop().await;
}
