//! Sinkron's built-in accounts: register, login, logout (who a request is from is
//! [`crate::authn`]'s).
//!
//! It owns credential rules, the use of password hashing (argon2id on dedicated threads with
//! a bounded queue: [`crate::password`]), token issue (32 random bytes, stored only as
//! SHA-256) and the sign-in throttles. It must not touch records or know how tokens are
//! stored.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use argon2::Block;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use rand::TryRngCore;
use sinkron_core::protocol::{Credentials, Session, User};

use crate::authn::{hash_token, AuthUser, ClientIp};
use crate::error::{ApiError, AppJson};
use crate::password::{self, Busy, Hashers};
use crate::store::{Attempts, Store, StoreError, UserId};
use crate::AppState;

const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=32;
const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=128;
/// Password checks per username and client address without a success, within a window of
/// [`LOGIN_WINDOW_MS`]; past them that client waits for the window to end.
const LOGIN_ATTEMPTS_MAX: u32 = 10;
pub const LOGIN_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Hash requests allowed to wait for a hashing thread; past that a flood gets 429.
const HASH_QUEUE_MAX: usize = 64;
/// Usernames tracked by the throttle before stale entries are swept.
const THROTTLE_ENTRIES_MAX: usize = 10_000;
/// Sign-in attempts (register or login, whatever the outcome) per client address: a steady
/// rate and a burst (a household or an office behind one address stays well under it).
const ATTEMPTS_PER_MINUTE: u32 = 60;
const ATTEMPTS_BURST: u32 = 20;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
        .route("/api/auth/logout-all", post(logout_all))
        .route("/api/auth/password", post(change_password))
        .route("/api/auth/account", axum::routing::delete(delete_account))
}

/// `POST /api/auth/password`: the current password and the new one.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PasswordChange {
    password: String,
    new_password: String,
}

/// `DELETE /api/auth/account`: the password, to confirm.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirmation {
    password: String,
}

/// In-memory guards of the sign-in routes. Losing them on restart is harmless.
pub struct AuthGuards {
    /// One hashing thread per core (argon2 is CPU-bound), each with its own memory.
    hashers: Hashers,
    /// Password checks per (username, client address), when the store keeps no shared count
    /// (one node).
    checks: Mutex<HashMap<[u8; 32], Attempts>>,
    /// Sign-in attempts per client address (`governor`): guessing across usernames, or
    /// making accounts in bulk, from one client.
    attempts: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// Wrong passwords given since [`AuthGuards::take_failures`] was last called.
    failures: std::sync::atomic::AtomicU64,
}

impl Default for AuthGuards {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            hashers: Hashers::new(cores, HASH_QUEUE_MAX),
            checks: Mutex::new(HashMap::new()),
            failures: std::sync::atomic::AtomicU64::new(0),
            attempts: governor::RateLimiter::keyed(
                governor::Quota::per_minute(nonzero(ATTEMPTS_PER_MINUTE))
                    .allow_burst(nonzero(ATTEMPTS_BURST)),
            ),
        }
    }
}

impl AuthGuards {
    /// Runs password work on a hashing thread (with that thread's memory); 429 when too
    /// many are already waiting.
    async fn hash_job<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let result = self.hashers.submit(job).map_err(|busy| match busy {
            Busy::Full => ApiError::rate_limited(1),
            Busy::Gone => ApiError::internal("the hashing threads are gone"),
        })?;
        result
            .await
            .map_err(|_| ApiError::internal("a hashing job was dropped"))
    }

    /// One sign-in attempt from `ip`: 429 with the seconds to wait past the rate. Without an
    /// address (a router driven without a socket) nothing is counted.
    fn attempt(&self, ip: ClientIp) -> Result<(), ApiError> {
        use governor::clock::{Clock, DefaultClock};
        let Some(ip) = ip.0 else { return Ok(()) };
        if self.attempts.len() >= THROTTLE_ENTRIES_MAX {
            self.attempts.retain_recent();
        }
        self.attempts.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::rate_limited(crate::limits::seconds(wait))
        })
    }

    /// Counts a password check under `key` (a [`throttle_key`]) before it runs, so that
    /// concurrent checks all count: 429 with the seconds to wait once more than
    /// [`LOGIN_ATTEMPTS_MAX`] were made in the window without a success. The count is the
    /// store's, shared by every node, when it keeps one; else this node's.
    async fn begin_check(
        &self,
        store: &dyn Store,
        key: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let attempts = match store.count_attempt(key, now_ms, LOGIN_WINDOW_MS).await? {
            Some(shared) => shared,
            None => self.count_here(key, now_ms),
        };
        if attempts.count <= LOGIN_ATTEMPTS_MAX {
            return Ok(());
        }
        let ends = attempts.since_ms.saturating_add(LOGIN_WINDOW_MS);
        Err(ApiError::rate_limited(
            ends.saturating_sub(now_ms).div_ceil(1000).max(1),
        ))
    }

    fn count_here(&self, key: &[u8; 32], now_ms: u64) -> Attempts {
        let mut map = self.checks.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= THROTTLE_ENTRIES_MAX && !map.contains_key(key) {
            map.retain(|_, a| now_ms < a.since_ms.saturating_add(LOGIN_WINDOW_MS));
        }
        let next = Attempts::next(map.get(key).copied(), now_ms, LOGIN_WINDOW_MS);
        map.insert(*key, next);
        next
    }

    /// How many wrong passwords were given since the last call (the server logs it).
    pub fn take_failures(&self) -> u64 {
        self.failures.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    fn failed(&self) {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The check under `key` succeeded: its count starts again.
    async fn checked(&self, store: &dyn Store, key: &[u8; 32]) -> Result<(), ApiError> {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        Ok(store.clear_attempts(key).await?)
    }
}

/// An answer that carries a token is never kept by a cache on the way or in the browser.
const NO_STORE: [(axum::http::HeaderName, &str); 1] =
    [(axum::http::header::CACHE_CONTROL, "no-store")];

/// What the login throttle counts checks by: the username, from one client address (hashed,
/// so that no address is kept in the clear). A client that guesses one user's password is
/// held back; the user, from elsewhere, is not (an account-wide count would let anyone lock
/// anyone out).
fn throttle_key(username: &str, ip: ClientIp) -> [u8; 32] {
    let key = match ip.0 {
        Some(ip) => format!("{username} {ip}"),
        None => username.to_owned(),
    };
    hash_token(&key)
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(ApiError::internal)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A real hash of a password nobody knows, verified against for unknown usernames so that
/// timing does not tell which usernames exist.
fn dummy_hash(memory: &mut Vec<Block>) -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        password::hash(
            memory,
            "sinkron: no such user; this password is never accepted",
        )
        .unwrap_or_default()
    })
}

fn validate_username(username: &str) -> Result<(), ApiError> {
    let ok = USERNAME_CHARS.contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_username",
            "username must be 3 to 32 characters of a-z, 0-9, '_', '.' or '-'",
        )
    })
}

fn validate_password(password: &str) -> Result<(), ApiError> {
    PASSWORD_CHARS
        .contains(&password.chars().count())
        .then_some(())
        .ok_or_else(|| {
            ApiError::unprocessable("invalid_password", "password must be 8 to 128 characters")
        })
}

fn session(token: String, user_id: UserId, username: String) -> Session {
    Session {
        token,
        user: User {
            id: user_id.to_string(),
            username,
        },
    }
}

async fn issue_token(state: &AppState, user_id: UserId) -> Result<String, ApiError> {
    let token = new_token()?;
    state
        .store
        .create_token(user_id, &hash_token(&token), state.now_ms())
        .await?;
    Ok(token)
}

async fn register(
    State(state): State<AppState>,
    ip: ClientIp,
    AppJson(creds): AppJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    state.guards.attempt(ip)?;
    validate_username(&creds.username)?;
    validate_password(&creds.password)?;
    let taken = || ApiError::new(StatusCode::CONFLICT, "username_taken", "username is taken");
    // The password is hashed whether or not the name is free, so that an answer takes as
    // long (and costs the asker as much) for a taken name as for a free one.
    let password = creds.password;
    let phc = state
        .guards
        .hash_job(move |memory| password::hash(memory, &password))
        .await?
        .map_err(ApiError::internal)?;
    let user_id = match state
        .store
        .create_user(&creds.username, &phc, state.now_ms())
        .await
    {
        Ok(id) => id,
        Err(StoreError::Conflict) => return Err(taken()),
        Err(e) => return Err(e.into()),
    };
    let token = issue_token(&state, user_id).await?;
    Ok((
        StatusCode::CREATED,
        NO_STORE,
        axum::Json(session(token, user_id, creds.username)),
    ))
}

async fn login(
    State(state): State<AppState>,
    ip: ClientIp,
    AppJson(creds): AppJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        )
    };
    state.guards.attempt(ip)?;
    // A username that breaks the rules cannot exist; no need to hash or to track it.
    if validate_username(&creds.username).is_err() || validate_password(&creds.password).is_err() {
        return Err(invalid());
    }
    let key = throttle_key(&creds.username, ip);
    state
        .guards
        .begin_check(state.store.as_ref(), &key, state.now_ms())
        .await?;
    let account = state.store.find_user_by_name(&creds.username).await?;
    let phc = account.as_ref().map(|a| a.password_hash.clone());
    let password = creds.password;
    let verified = state
        .guards
        .hash_job(move |memory| match phc {
            Some(phc) => password::verify(memory, &password, &phc),
            None => {
                let dummy = dummy_hash(memory);
                password::verify(memory, &password, dummy);
                false
            }
        })
        .await?;
    let Some(account) = account.filter(|_| verified) else {
        state.guards.failed();
        return Err(invalid());
    };
    state.guards.checked(state.store.as_ref(), &key).await?;
    let token = issue_token(&state, account.id).await?;
    Ok((
        NO_STORE,
        axum::Json(session(token, account.id, account.username)),
    ))
}

async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    let token_hash = own_session(&user)?;
    state.store.revoke_token(&token_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The built-in session a request signed in with; a site's user has none here, and a deleted
/// account's last request may not manage it.
fn own_session(user: &AuthUser) -> Result<[u8; 32], ApiError> {
    if user.ending {
        return Err(ApiError::unauthorized());
    }
    user.token_hash.ok_or_else(|| {
        ApiError::bad_request("a site's user signs out and manages the account at the site")
    })
}

/// `POST /api/auth/logout-all`: signs out every device of the account, this one included.
async fn logout_all(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    own_session(&user)?;
    state.store.revoke_user_tokens(user.user_id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks the signed-in user's password (a hash job, throttled like a login); 401
/// `invalid_credentials` when wrong.
async fn confirm_password(
    state: &AppState,
    user: &AuthUser,
    ip: ClientIp,
    password: String,
) -> Result<(), ApiError> {
    let username = user.username.to_string();
    let key = throttle_key(&username, ip);
    state
        .guards
        .begin_check(state.store.as_ref(), &key, state.now_ms())
        .await?;
    let account = state.store.find_user_by_name(&username).await?;
    let phc = account
        .filter(|a| a.id == user.user_id)
        .map(|a| a.password_hash)
        .ok_or_else(|| ApiError::internal("the signed-in account was not found"))?;
    let verified = state
        .guards
        .hash_job(move |memory| password::verify(memory, &password, &phc))
        .await?;
    if !verified {
        state.guards.failed();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong password",
        ));
    }
    state.guards.checked(state.store.as_ref(), &key).await
}

/// `POST /api/auth/password`: a new password; every other session of the account ends.
async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    ip: ClientIp,
    AppJson(change): AppJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let keep = own_session(&user)?;
    validate_password(&change.new_password)?;
    confirm_password(&state, &user, ip, change.password).await?;
    let new_password = change.new_password;
    let phc = state
        .guards
        .hash_job(move |memory| password::hash(memory, &new_password))
        .await?
        .map_err(ApiError::internal)?;
    state.store.set_password(user.user_id, &phc).await?;
    state
        .store
        .revoke_user_tokens(user.user_id, Some(keep))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/auth/account`: erases the account and everything stored for it; every
/// device's session ends (its next request is a 401 `unauthorized`).
async fn delete_account(
    State(state): State<AppState>,
    user: AuthUser,
    ip: ClientIp,
    AppJson(confirmation): AppJson<Confirmation>,
) -> Result<StatusCode, ApiError> {
    own_session(&user)?;
    confirm_password(&state, &user, ip, confirmation.password).await?;
    state
        .store
        .delete_user(user.user_id, state.now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_rules() {
        assert!(validate_username("abc").is_ok());
        assert!(validate_username("a_b.c-9").is_ok());
        assert!(validate_username("ab").is_err());
        assert!(validate_username("Abc").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username(&"a".repeat(33)).is_err());
        assert!(validate_username("ümlaut").is_err());
    }

    #[test]
    fn attempts_count_in_a_window_that_restarts_once_it_has_passed() {
        let first = Attempts::next(None, 1_000, 300);
        assert_eq!(
            first,
            Attempts {
                count: 1,
                since_ms: 1_000
            }
        );
        let second = Attempts::next(Some(first), 1_299, 300);
        assert_eq!(
            second,
            Attempts {
                count: 2,
                since_ms: 1_000
            }
        );
        assert_eq!(
            Attempts::next(Some(second), 1_300, 300),
            Attempts {
                count: 1,
                since_ms: 1_300
            }
        );
    }

    #[test]
    fn the_eleventh_check_in_a_window_waits_for_its_end_and_other_keys_do_not() {
        let guards = AuthGuards::default();
        let bob = throttle_key("bob", ClientIp(None));
        for _ in 0..LOGIN_ATTEMPTS_MAX {
            assert!(guards.count_here(&bob, 0).count <= LOGIN_ATTEMPTS_MAX);
        }
        assert_eq!(guards.count_here(&bob, 1_000).count, LOGIN_ATTEMPTS_MAX + 1);
        let alice = throttle_key("alice", ClientIp(None));
        assert_eq!(guards.count_here(&alice, 1_000).count, 1);
        assert_eq!(guards.count_here(&bob, LOGIN_WINDOW_MS).count, 1);
    }
}
