//! Sinkron's server: accounts, the pull/push sync API and storage, over HTTP with axum.
//!
//! It owns the HTTP contract of protocol v1 ([`auth`], [`sync`], [`error`]), the server
//! configuration ([`config`]) and storage behind the [`store::Store`] trait. It must not
//! decide merges on its own: the newest-wins order comes from `sinkron-core`, so the browser
//! and the server cannot disagree. [`app`] builds the whole service without a socket, so
//! tests can drive it with `tower::ServiceExt::oneshot`; `main.rs` only parses, opens, serves.

pub mod admin;
pub mod auth;
pub mod authn;
pub mod config;
pub mod error;
pub mod jwt;
pub mod limits;
pub mod listen;
pub mod pace;
pub mod password;
pub mod poke;
pub mod site;
pub mod store;
pub mod sync;
pub mod transfer;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use sinkron_core::protocol::BODY_BYTES_MAX;
use tower::util::MapResponseLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use config::Config;
use error::ApiError;
use store::Store;

/// The server's clock, in milliseconds since the Unix epoch: [`now_ms`] unless a test or the
/// simulation swaps in a virtual one with [`AppState::with_clock`].
pub type ServerClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What every handler shares: one `Arc`, so the clone axum makes for each request is one
/// atomic increment, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The fields of [`AppState`], reached through it.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// In-memory guards of the sign-in routes (hashing slots, login throttle).
    guards: Arc<auth::AuthGuards>,
    /// Per-user limits of the sync routes.
    limits: Arc<limits::UserLimits>,
    /// Credentials refused per client address.
    refused: Arc<limits::RefusedCredentials>,
    /// The poll interval this node asks for (`Sinkron-Poll-Interval`), by its load.
    pacer: Arc<pace::Pacer>,
    /// The `--collection-caps`.
    caps: Arc<[store::Cap]>,
    /// The `--merge-fields`.
    merges: Arc<[store::FieldMerge]>,
    /// The site's backend key (`--admin-token-file`): the admin routes exist with it only.
    admin_key: Option<admin::AdminKey>,
    /// Sinkron's own accounts' tokens, when those accounts are on (their routes too).
    builtin: Option<Arc<authn::BuiltinTokens>>,
    /// Who else may sign requests in, asked in order after the built-in tokens: the site's
    /// tokens (JWT mode), a site's own sessions (when embedded).
    authenticators: Arc<[Arc<dyn authn::Authenticator>]>,
    /// The `--cors-origin`s: CORS for them, and the cross-site origins a cookie-signed change
    /// may come from.
    cors_origins: Arc<[HeaderValue]>,
    /// Stamps sync answers (`serverTime`) and bounds future `updatedAt`s.
    clock: ServerClock,
    /// The push channel's streams, with `--poke sse`.
    pub pokes: Option<Arc<poke::Pokes>>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        // `sinkron serve` refuses bad origins at start; a library user's are logged and left out.
        let cors_origins = config.cors_origins().unwrap_or_else(|e| {
            tracing::error!("{e}; no CORS");
            Vec::new()
        });
        let builtin = config.auth_enabled(config::AuthMode::Builtin).then(|| {
            Arc::new(authn::BuiltinTokens {
                store: store.clone(),
                idle_ms: config.session_idle_secs.saturating_mul(1000),
            })
        });
        // `sinkron serve` refuses bad caps at start; a library user's are logged and left out.
        let caps = config
            .rules
            .caps()
            .unwrap_or_else(|e| {
                tracing::error!("{e}; no collection caps");
                Vec::new()
            })
            .into_iter()
            .map(|(collection, max)| store::Cap { collection, max })
            .collect();
        let merges = config.rules.merges().unwrap_or_else(|e| {
            tracing::error!("{e}; no collection is merged per field");
            Vec::new()
        });
        let limits = Arc::new(limits::UserLimits::new(
            config.user_requests_per_minute,
            config.user_concurrency,
            usize::try_from(config.held_answers_bytes_max).unwrap_or(usize::MAX),
        ));
        let pacer = Arc::new(pace::Pacer::new(
            config.poll_interval,
            config.poll_interval_max,
            config.poll_busy_requests,
        ));
        let pokes = (config.poke == config::Poke::Sse).then(|| {
            let pokes = Arc::new(poke::Pokes::new(
                usize::try_from(config.poke_streams_max).unwrap_or(usize::MAX),
            ));
            // Every node's commits, where the store hears them (PostgreSQL).
            let told = pokes.clone();
            store.on_version_raised(Arc::new(move |user_id, version| {
                told.poke(user_id, version);
            }));
            pokes
        });
        Self(Arc::new(Shared {
            builtin,
            authenticators: Arc::new([]),
            cors_origins: cors_origins.into(),
            store,
            config: Arc::new(config),
            guards: Arc::new(auth::AuthGuards::default()),
            limits,
            refused: Arc::default(),
            pacer,
            admin_key: None,
            caps,
            merges: merges.into(),
            clock: Arc::new(now_ms),
            pokes,
        }))
    }

    /// The same state verifying the site's tokens with `jwt` (JWT mode), from the bearer
    /// header or, with `--jwt-cookie`, the site's cookie.
    pub fn with_jwt(self, jwt: Option<jwt::JwtVerifier>) -> Self {
        match jwt {
            Some(verifier) => {
                let site = authn::SiteTokens {
                    verifier,
                    cookie: self.config.jwt_cookie.clone(),
                    origins: self.cors_origins.clone(),
                };
                self.with_authenticator(Arc::new(site))
            }
            None => self,
        }
    }

    /// The same state also signing requests in with `authenticator`, asked after the ones it
    /// has: how a site that embeds Sinkron lets its own sessions in (see [`api`]). A site
    /// that brings its own sign-in has its own accounts, so Sinkron's built-in ones go off
    /// unless the configuration's `auth` names `builtin`.
    pub fn with_authenticator(self, authenticator: Arc<dyn authn::Authenticator>) -> Self {
        let keep_builtin = !self.config.auth.is_empty();
        let mut authenticators = self.authenticators.to_vec();
        authenticators.push(authenticator);
        Self(Arc::new(Shared {
            builtin: self.builtin.clone().filter(|_| keep_builtin),
            authenticators: authenticators.into(),
            ..(*self.0).clone()
        }))
    }

    /// The same state with the site's backend API, signed in by `key`.
    pub fn with_admin_key(self, key: Option<admin::AdminKey>) -> Self {
        Self(Arc::new(Shared {
            admin_key: key,
            ..(*self.0).clone()
        }))
    }

    /// The same state on another clock, e.g. the simulation's virtual time.
    pub fn with_clock(self, clock: ServerClock) -> Self {
        Self(Arc::new(Shared {
            clock,
            ..(*self.0).clone()
        }))
    }

    /// Wrong passwords given to the built-in accounts since the last call.
    pub fn take_failed_sign_ins(&self) -> u64 {
        self.guards.take_failures()
    }

    /// The time by this state's clock.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }
}

/// Milliseconds since the Unix epoch, by the server's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The whole HTTP service.
pub fn app(state: AppState) -> Router {
    let router = api_routes(&state)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready));
    let router = match &state.config.static_dir {
        // A web app: unknown `/api/…` paths still answer our JSON 404, everything else is
        // the app's (`site.rs`).
        Some(dir) => router
            .route(
                "/api/{*rest}",
                any(|| async { ApiError::from_status(StatusCode::NOT_FOUND) }),
            )
            .fallback_service(site::router(dir)),
        None => router.fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) }),
    };
    let cors = cors_of(&state);
    with_cors(with_layers(router, state), cors)
}

/// `/readyz`: the process is up (that is `/healthz`) and its storage answers a lookup like
/// the one every poll makes; 503 `unavailable` otherwise, so a load balancer sends no traffic
/// to a node whose database is gone. A PostgreSQL node that does not hear the other nodes'
/// changes is ready all the same (its polls read the database) and says so.
async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match state.store.session(&[0; 32]).await {
        Ok(_) if state.store.polls_from_memory() => "ready".into_response(),
        Ok(_) => "ready; polls read the database: change notifications are down".into_response(),
        Err(e) => {
            // Said for an operator, not as to a client ("busy; try again"); the cause is logged.
            let mut error = ApiError::from(e);
            if error.status == StatusCode::SERVICE_UNAVAILABLE {
                error.message = "not ready: the database does not answer (the log says why)".into();
            }
            error.into_response()
        }
    }
}

/// Sinkron's API for a site's own axum app: the sync routes (and the built-in account routes
/// when they are on), with the limits, timeout, JSON errors and CORS of `sinkron serve`, and
/// the site's users signed in by its own [`authn::Authenticator`]
/// ([`AppState::with_authenticator`]). Mount it under a path of the site's, e.g.
/// `site.nest_service("/sync", sinkron_server::api(state))`; the browser package's
/// `baseUrl` is then `https://site.example/sync`. `examples/embedded.rs` is a whole site.
pub fn api(state: AppState) -> Router {
    let router =
        api_routes(&state).fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) });
    let cors = cors_of(&state);
    with_cors(with_layers(router, state), cors)
}

/// The API's routes: sync, the built-in accounts' when they are on, the site's backend API
/// when it has a key.
fn api_routes(state: &AppState) -> Router<AppState> {
    let mut router = Router::new().merge(sync::router());
    if state.pokes.is_some() {
        router = router.merge(poke::router());
    }
    if state.builtin.is_some() {
        router = router.merge(auth::router());
    }
    if state.admin_key.is_some() {
        router = router.merge(admin::router());
    }
    router
}

/// What every request passes through: JSON 405s, body limits, the timeout, panics as 500s,
/// JSON errors, one log line per request at info (method, route, client address, status,
/// latency: never a header, a query or a body), sensitive headers.
fn with_layers(router: Router<AppState>, state: AppState) -> Router {
    let timeout = Duration::from_secs(state.config.request_timeout_secs);
    let trusted: Arc<[ipnet::IpNet]> = state.config.trusted_proxies.clone().into();
    router
        .method_not_allowed_fallback(|| async {
            ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .with_state(state)
        // One layer, so one boxed service per route: each `Router::layer` boxes every route
        // again, and a request then clones every box inside it. Outermost first.
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([
                    header::AUTHORIZATION,
                    header::COOKIE,
                ]))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(move |req: &Request| {
                            // Nothing is logged per request (the usual setting under load): no
                            // span, and the client's address is not read from the headers.
                            if !tracing::enabled!(tracing::Level::INFO) {
                                return tracing::Span::none();
                            }
                            let route = req
                                .extensions()
                                .get::<MatchedPath>()
                                .map_or("<unmatched>", MatchedPath::as_str);
                            let client =
                                authn::ClientIp::of_head(req.extensions(), req.headers(), &trusted);
                            match client.0 {
                                Some(ip) => tracing::info_span!("request", method = %req.method(), route = %route, client = %ip),
                                None => tracing::info_span!("request", method = %req.method(), route = %route),
                            }
                        })
                        .on_response(|res: &Response, latency: Duration, _: &tracing::Span| {
                            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                            tracing::info!(status = res.status().as_u16(), micros, "answered");
                        })
                        // No second line at ERROR for a 5xx: a failure of ours logs its own
                        // cause (`ApiError::internal` at ERROR, storage at WARN), and a
                        // refusal on purpose (a full answer budget, busy storage) is an answer.
                        .on_failure(()),
                )
                .layer(MapResponseLayer::new(json_errors))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    timeout,
                ))
                // The timeout's own answer needs a body type with a default.
                .layer(MapResponseLayer::new(with_body))
                .layer(RequestBodyLimitLayer::new(BODY_BYTES_MAX))
                .layer(DefaultBodyLimit::max(BODY_BYTES_MAX)),
        )
}

fn cors_of(state: &AppState) -> Option<CorsLayer> {
    (!state.cors_origins.is_empty())
        .then(|| cors(&state.cors_origins, state.config.jwt_cookie.is_some()))
}

/// Outermost: a preflight is answered before routing.
fn with_cors(router: Router, cors: Option<CorsLayer>) -> Router {
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the allowed origins: the API's methods (`DELETE` for an account's deletion) and
/// headers, `ETag` and `Retry-After` readable, preflights cached for an hour, credentials
/// (cookies) when the token may come from one.
fn cors(origins: &[HeaderValue], credentials: bool) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
        ])
        .expose_headers([
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static(pace::POLL_INTERVAL_HEADER),
        ])
        .max_age(Duration::from_secs(3600))
        .allow_credentials(credentials)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

/// A response with axum's body, whatever body a layer gave it.
fn with_body<B>(res: axum::http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    res.map(axum::body::Body::new)
}

/// Gives errors made outside our handlers (body limit, timeout, router) our JSON body, so
/// every error a client sees has the same shape.
fn json_errors<B>(res: axum::http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        return with_body(res);
    }
    let allow = res.headers().get(header::ALLOW).cloned();
    let mut fixed = ApiError::from_status(status).into_response();
    if let Some(allow) = allow {
        fixed.headers_mut().insert(header::ALLOW, allow);
    }
    fixed
}

#[cfg(test)]
mod tests {
    //! The service in-process, without a socket.

    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn test_app() -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store::open(&dir.path().join("t.db").display().to_string()).expect("store");
        (app(AppState::new(store, Config::default())), dir)
    }

    async fn call(app: &Router, req: Request) -> (StatusCode, serde_json::Value) {
        let res = app.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_get_json_errors() {
        let (app, _dir) = test_app();
        let get = |uri: &str| Request::get(uri).body(Body::empty()).expect("request");
        let (status, body) = call(&app, get("/nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        let (status, body) = call(&app, get("/api/auth/login")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");
        let (status, _) = call(&app, get("/healthz")).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_session_unused_too_long_ends_and_each_use_extends_it() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store::open(&dir.path().join("t.db").display().to_string()).expect("store");
        let day = 86_400_000;
        let clock = Arc::new(AtomicU64::new(1_000 * day));
        let now = clock.clone();
        let config = Config {
            session_idle_secs: 30 * 86_400,
            ..Config::default()
        };
        let state =
            AppState::new(store, config).with_clock(Arc::new(move || now.load(Ordering::Relaxed)));
        let app = app(state);
        let register = Request::post("/api/auth/register")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"username":"ann","password":"correct horse"}"#,
            ))
            .expect("request");
        let (status, session) = call(&app, register).await;
        assert_eq!(status, StatusCode::CREATED);
        let token = session["token"].as_str().expect("token").to_owned();
        let pull = || {
            Request::get("/api/user/me")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request")
        };
        // Used every 29 days, the session lives on past 30 days from its start.
        for _ in 0..3 {
            clock.fetch_add(29 * day, Ordering::Relaxed);
            assert_eq!(call(&app, pull()).await.0, StatusCode::OK);
        }
        clock.fetch_add(30 * day, Ordering::Relaxed);
        let (status, body) = call(&app, pull()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "token_expired");
        // It was deleted: from now on it is unknown.
        let (status, body) = call(&app, pull()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");
    }

    #[tokio::test]
    async fn a_deleted_accounts_sessions_get_nothing_for_a_day_then_401() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store::open(&dir.path().join("t.db").display().to_string()).expect("store");
        let clock = Arc::new(AtomicU64::new(1_000_000_000));
        let now = clock.clone();
        let app = app(AppState::new(store, Config::default())
            .with_clock(Arc::new(move || now.load(Ordering::Relaxed))));
        let register = Request::post("/api/auth/register")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"username":"ann","password":"correct horse"}"#,
            ))
            .expect("request");
        let token = call(&app, register).await.1["token"]
            .as_str()
            .expect("token")
            .to_owned();
        let with_token = |req: axum::http::request::Builder| {
            req.header(header::AUTHORIZATION, format!("Bearer {token}"))
        };
        let delete = with_token(Request::delete("/api/auth/account"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"password":"correct horse"}"#))
            .expect("request");
        assert_eq!(call(&app, delete).await.0, StatusCode::NO_CONTENT);
        let pull = || {
            with_token(Request::get("/api/user/me"))
                .body(Body::empty())
                .expect("request")
        };
        clock.fetch_add(authn::DELETED_ACCOUNT_ANSWERED_MS - 1, Ordering::Relaxed);
        let (status, body) = call(&app, pull()).await;
        assert_eq!(
            (status, &body["changes"]),
            (StatusCode::OK, &serde_json::json!([]))
        );
        clock.fetch_add(1, Ordering::Relaxed);
        let (status, body) = call(&app, pull()).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::UNAUTHORIZED, &serde_json::json!("unauthorized"))
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_413_before_it_is_read() {
        let (app, _dir) = test_app();
        let req = Request::post("/api/auth/register")
            .header(header::CONTENT_LENGTH, BODY_BYTES_MAX + 1)
            .body(Body::from(vec![b' '; BODY_BYTES_MAX + 1]))
            .expect("request");
        let (status, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "payload_too_large");
    }
}
