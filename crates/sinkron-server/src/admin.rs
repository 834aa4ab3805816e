//! The site's backend API: a server key (`--admin-token-file`) lets the site's own backend
//! write for one of its users, read everything stored for a user, and erase a user.
//!
//! Users are addressed by the site's user id (the `sub` of its tokens, or what its
//! [`crate::authn::Authenticator`] returns). The key is compared in constant time, is never
//! a user's credential, and no user's credential is valid here. It owns these routes and the
//! key check; pushes go through the same validation and storage rules as a device's
//! ([`crate::sync`]), erasure is the store's.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sinkron_core::protocol::{PushRequest, User};
use sinkron_core::Change;
use subtle::ConstantTimeEq;

use crate::authn::bearer;
use crate::error::{ApiError, AppJson};
use crate::jwt::SUBJECT_BYTES_MAX;
use crate::AppState;

/// The shortest admin key accepted: 32 characters (e.g. `openssl rand -hex 32` gives 64).
pub const ADMIN_KEY_CHARS_MIN: usize = 32;

/// The server key, kept as its SHA-256 only, so that comparing it takes the same time
/// whatever the presented key's length.
#[derive(Clone)]
pub struct AdminKey(Arc<[u8; 32]>);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

impl AdminKey {
    /// The key in a file (surrounding whitespace ignored); refused when shorter than
    /// [`ADMIN_KEY_CHARS_MIN`].
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the admin key file {}: {e}", path.display()))?;
        Self::new(text.trim()).ok_or_else(|| {
            format!(
                "the admin key in {} is shorter than {ADMIN_KEY_CHARS_MIN} characters",
                path.display()
            )
        })
    }

    pub fn new(key: &str) -> Option<Self> {
        (key.chars().count() >= ADMIN_KEY_CHARS_MIN)
            .then(|| Self(Arc::new(Sha256::digest(key.as_bytes()).into())))
    }

    /// Whether a request carries this key as its bearer token.
    fn admits(&self, parts: &Parts) -> bool {
        let Some(presented) = bearer(&parts.headers) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&*self.0).into()
    }
}

/// A request signed with the admin key.
struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match &state.admin_key {
            Some(key) if key.admits(parts) => Ok(Admin),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users/{user}", get(read_user).delete(erase_user))
        .route("/api/admin/users/{user}/changes", post(push_for_user))
}

fn check_user_id(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > SUBJECT_BYTES_MAX {
        return Err(ApiError::unprocessable(
            "invalid_user",
            "a user id is 1 to 128 bytes",
        ));
    }
    Ok(())
}

/// `POST /api/admin/users/{user}/changes`: a push on the user's behalf, with the body, the
/// rules and the answer of a device's push; the user is created (empty) if new, and the
/// user's devices get the changes at their next pull.
async fn push_for_user(
    State(state): State<AppState>,
    _: Admin,
    Path(user): Path<String>,
    AppJson(req): AppJson<PushRequest>,
) -> Result<Response, ApiError> {
    check_user_id(&user)?;
    let session = state.store.subject_session(&user, state.now_ms()).await?;
    crate::sync::push_for(&state, session.user_id, session.version, &req, None).await
}

/// Everything stored for a user.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserData {
    user: User,
    /// The user's version: what a device that holds all of `records` has as its cursor.
    cursor: String,
    /// Every stored record, deletions (tombstones, `value: null`) included, by version.
    records: Vec<Change>,
}

/// `GET /api/admin/users/{user}`: everything stored for the user (an access request); 404
/// `user_not_found` for a user Sinkron has never seen or has erased.
async fn read_user(
    State(state): State<AppState>,
    _: Admin,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    check_user_id(&user)?;
    let user_id =
        state.store.find_subject(&user).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no such user")
        })?;
    let mut records = Vec::new();
    let mut since = None;
    let cursor = loop {
        let page = state
            .store
            .pull(user_id, since, state.config.page_limit())
            .await?;
        records.extend(page.changes);
        if !page.more {
            break page.cursor;
        }
        since = Some(page.cursor);
    };
    let body = UserData {
        user: User {
            id: user.clone(),
            username: user,
        },
        cursor: cursor.to_string(),
        records,
    };
    Ok(axum::Json(body).into_response())
}

/// `DELETE /api/admin/users/{user}`: erases the user — records, tombstones, client marks —
/// at once on every node. A device of the user that syncs again is answered with a reset
/// of nothing (it drops its copy), and writes it made before the erasure are acknowledged
/// without being stored, so nothing of the user comes back. 204 whether or not the user had
/// data (a device may still hold some).
async fn erase_user(
    State(state): State<AppState>,
    _: Admin,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_user_id(&user)?;
    state.store.erase_subject(&user, state.now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}
