//! A site that mounts Sinkron inside its own axum app.
//!
//! The site has its own users and its own sign-in (a session cookie), and its own pages.
//! Sinkron's API is nested under `/sync` and trusts the site's sessions through an
//! [`Authenticator`] the site implements over its session lookup; the browser package then
//! runs with `baseUrl: "/sync"`.
//!
//! ```text
//! cargo run -p sinkron-server --example embedded          # http://127.0.0.1:8090
//! curl -si -XPOST localhost:8090/login -d '{"username":"alice","password":"wonderland"}'
//! curl -s localhost:8090/sync/api/user/me -H 'cookie: site_session=…'
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::TryRngCore;
use serde_json::{json, Value};
use sinkron_server::authn::{cookie, same_origin_or_allowed, Authenticator, Identity, Refusal};
use sinkron_server::store::Store;
use sinkron_server::{AppState, Config};

/// The site's session cookie.
const SESSION_COOKIE: &str = "site_session";

/// The site's own accounts and sessions (a real site keeps these in its database).
#[derive(Clone, Default)]
pub struct Site {
    users: Arc<HashMap<&'static str, &'static str>>,
    sessions: Arc<Mutex<HashMap<String, String>>>,
}

impl Site {
    pub fn new() -> Self {
        Site {
            users: Arc::new(HashMap::from([
                ("alice", "wonderland"),
                ("bob", "builder1"),
            ])),
            sessions: Arc::default(),
        }
    }

    fn user_of(&self, session: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.get(session).cloned()
    }
}

/// Sinkron asks the site who is signed in: the site's user id, from its session cookie.
#[async_trait]
impl Authenticator for Site {
    async fn authenticate(&self, request: &Parts) -> Result<Identity, Refusal> {
        let session = cookie(&request.headers, SESSION_COOKIE).ok_or(Refusal::NotMine)?;
        // A cookie is sent by the browser on its own: a change must come from the site.
        if !request.method.is_safe() && !same_origin_or_allowed(&request.headers, &[]) {
            return Err(Refusal::ForbiddenOrigin);
        }
        self.user_of(session)
            .map(Identity::Subject)
            .ok_or(Refusal::Invalid)
    }
}

/// The whole site: its pages, its sign-in, and Sinkron under `/sync`.
pub fn app(store: Arc<dyn Store>) -> Router {
    let site = Site::new();
    // The site signs its users in (Sinkron's own accounts are off with it).
    let sync = AppState::new(store, Config::default()).with_authenticator(Arc::new(site.clone()));
    Router::new()
        .route("/", get(|| async { "The site's own home page." }))
        .route("/login", post(login))
        .with_state(site)
        .nest_service("/sync", sinkron_server::api(sync))
}

async fn login(State(site): State<Site>, Json(body): Json<Value>) -> Response {
    let (username, password) = (body["username"].as_str(), body["password"].as_str());
    let known = username
        .zip(password)
        .is_some_and(|(u, p)| site.users.get(u) == Some(&p));
    let Some(user) = username.filter(|_| known) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "wrong username or password"})),
        )
            .into_response();
    };
    let mut bytes = [0u8; 32];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let session: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    site.sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(session.clone(), user.to_owned());
    let cookie = format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Lax; Path=/");
    ([(header::SET_COOKIE, cookie)], Json(json!({"user": user}))).into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = sinkron_server::store::open("embedded.db")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(store)).await?;
    Ok(())
}
