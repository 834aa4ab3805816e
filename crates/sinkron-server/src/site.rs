//! The web app served at `/` with `--static-dir` (the demo, or a site's own build).
//!
//! It owns which files are served and the headers a page gets: a file of the directory as it
//! is; `index.html` for any other path (the app's client-side routes), except under
//! `/assets/`, where a missing file is a 404 (a stale bundle must fail loudly, not load HTML
//! as JavaScript). Dotfiles, and symlinks that lead out of the directory, are never served.
//! Every answer carries a Content Security Policy the app runs under (scripts and styles of
//! its own origin, WebAssembly, requests to any API origin), `nosniff`, no framing and no
//! referrer. It must not serve anything of the API.

use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use percent_encoding::percent_decode_str;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::ApiError;

/// The page's Content Security Policy: the app's own scripts and styles, WebAssembly
/// (`wasm-unsafe-eval`), images inline or its own, and requests to any origin (the API may
/// live on another one, `?api=`); no plugins, no framing, no `<base>` or form posts
/// elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' \
     'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; connect-src *; \
     object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

/// The app's files under `dir`, with its headers.
pub fn router(dir: &Path) -> Router {
    // Symlinks are judged by where they lead, against the directory's own real path.
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let files = ServeDir::new(&root);
    let index = ServeFile::new(root.join("index.html"));
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    Router::new()
        .fallback(move |request: Request| {
            serve(request, root.clone(), files.clone(), index.clone())
        })
        .layer(set(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::REFERRER_POLICY, "no-referrer"))
}

async fn serve(request: Request, root: PathBuf, files: ServeDir, index: ServeFile) -> Response {
    let not_found = || ApiError::from_status(StatusCode::NOT_FOUND).into_response();
    let Ok(path) = percent_decode_str(request.uri().path()).decode_utf8() else {
        return not_found();
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // `.env`, `.git/…`, and `..` (which ServeDir refuses too).
    if segments.iter().any(|s| s.starts_with('.')) {
        return not_found();
    }
    let wanted = segments.iter().fold(root.clone(), |p, s| p.join(s));
    let answer = match tokio::fs::canonicalize(&wanted).await {
        Ok(real) if !real.starts_with(&root) => return not_found(),
        Ok(_) => files.oneshot(request).await,
        Err(_) if segments.first() == Some(&"assets") => return not_found(),
        Err(_) => index.oneshot(request).await,
    };
    match answer {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}
