//! Who is signed in on a request: the [`Authenticator`] trait, Sinkron's two implementations
//! of it ([`BuiltinTokens`], Sinkron's own accounts; [`SiteTokens`], the site's JSON Web
//! Tokens), and the [`AuthUser`] extractor every `/api/user/*` route uses.
//!
//! A site that mounts Sinkron inside its own axum app implements [`Authenticator`] over its
//! own session lookup and hands it to [`crate::AppState::with_authenticator`]: Sinkron then
//! keeps each of the site's users' data under the user id the site returns. It owns turning a
//! request's credentials into an identity and the CSRF rule for ambient credentials; it must
//! not touch records.

use std::sync::Arc;

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::jwt::{JwtVerifier, TokenError, SUBJECT_BYTES_MAX, TOKEN_BYTES_MAX};
use crate::store::{SessionInfo, Store, StoreError, UserId};
use crate::{now_ms, AppState};

/// Who a request is from.
#[derive(Clone, Debug)]
pub enum Identity {
    /// One of Sinkron's built-in accounts, by its session.
    Account {
        session: SessionInfo,
        /// What signing out revokes.
        token_hash: [u8; 32],
    },
    /// A user of the site, by the site's own user id (1–128 bytes). Sinkron keeps that user's
    /// data apart from every other, creating it empty the first time it sees the id.
    Subject(String),
}

/// Why an authenticator did not sign a request in.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The request carries no credentials of this authenticator's kind: ask the next one.
    #[error("no credentials of this kind")]
    NotMine,
    /// Credentials of this kind that are not valid: 401 `unauthorized`.
    #[error("invalid credentials")]
    Invalid,
    /// Valid credentials that have expired: 401 `token_expired` (the client refreshes them).
    #[error("expired credentials")]
    Expired,
    /// A change from another site signed in by credentials the browser sends on its own (a
    /// cookie): 403 `forbidden_origin`.
    #[error("a change from another origin")]
    ForbiddenOrigin,
    /// Storage failed while checking: 503, or 500.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signs requests in. Implementations are asked in order; the first that does not answer
/// [`Refusal::NotMine`] decides. Nothing an implementation returns is logged.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, request: &Parts) -> Result<Identity, Refusal>;
}

/// How long a deleted account's sessions are still answered, with the emptied account: a
/// day, so a device that comes online within it drops its copy and its unsent writes.
pub const DELETED_ACCOUNT_ANSWERED_MS: u64 = 24 * 3600 * 1000;

/// Sinkron's own accounts: `Authorization: Bearer` with a token issued by `/api/auth/login`
/// (64 lowercase hex digits), stored as its SHA-256 only.
pub struct BuiltinTokens {
    pub store: Arc<dyn Store>,
    /// A session unused for this long has ended (`--session-idle-secs`).
    pub idle_ms: u64,
}

impl BuiltinTokens {
    /// What [`Authenticator::authenticate`] does at `now_ms`, callable without boxing its
    /// future: this is the poll path of every built-in session. A session unused for
    /// [`BuiltinTokens::idle_ms`] is deleted and refused as expired; a use is recorded when
    /// the last recorded one is a thirtieth of that old (a day, by default), so the hot path
    /// writes about once a day per session.
    pub async fn check(&self, request: &Parts, now_ms: u64) -> Result<Identity, Refusal> {
        let token = bearer(&request.headers)
            .filter(|t| is_builtin_token(t))
            .ok_or(Refusal::NotMine)?;
        let token_hash = hash_token(token);
        let session = match polled(request) {
            Some(version) => self.store.polled_session(&token_hash, version).await?,
            None => self.store.session(&token_hash).await?,
        }
        .ok_or(Refusal::Invalid)?;
        let idle = now_ms.saturating_sub(session.last_used_ms);
        if idle >= self.idle_ms {
            self.store.revoke_token(&token_hash).await?;
            return Err(Refusal::Expired);
        }
        if session.deleted_at > 0 {
            // The account was deleted: for a day its devices are answered with its emptied
            // state (they drop their copy and their unsent writes), then refused.
            if now_ms.saturating_sub(session.deleted_at) >= DELETED_ACCOUNT_ANSWERED_MS {
                self.store.revoke_token(&token_hash).await?;
                return Err(Refusal::Invalid);
            }
        } else if idle >= self.idle_ms / 30 {
            self.store.touch_token(&token_hash, now_ms).await?;
        }
        Ok(Identity::Account {
            session,
            token_hash,
        })
    }
}

#[async_trait]
impl Authenticator for BuiltinTokens {
    async fn authenticate(&self, request: &Parts) -> Result<Identity, Refusal> {
        self.check(request, now_ms()).await
    }
}

/// The site's JSON Web Tokens (JWT mode): `Authorization: Bearer`, or the site's cookie
/// when `cookie` is set, in which case a change must come from the site or an allowed origin.
pub struct SiteTokens {
    pub verifier: JwtVerifier,
    pub cookie: Option<String>,
    /// The origins besides the server's own that a cookie-signed change may come from.
    pub origins: Arc<[HeaderValue]>,
}

#[async_trait]
impl Authenticator for SiteTokens {
    async fn authenticate(&self, request: &Parts) -> Result<Identity, Refusal> {
        let token = match bearer(&request.headers) {
            Some(token) => token,
            None => {
                let name = self.cookie.as_deref().ok_or(Refusal::NotMine)?;
                let token = cookie(&request.headers, name).ok_or(Refusal::NotMine)?;
                // The browser sends the cookie on its own, whoever's page asks.
                if !request.method.is_safe()
                    && !same_origin_or_allowed(&request.headers, &self.origins)
                {
                    return Err(Refusal::ForbiddenOrigin);
                }
                token
            }
        };
        match self.verifier.verify(token).await {
            Ok(subject) => Ok(Identity::Subject(subject)),
            Err(TokenError::Expired) => Err(Refusal::Expired),
            Err(TokenError::Invalid(_)) => Err(Refusal::Invalid),
        }
    }
}

/// The address a request came from: the peer, or behind a `--trusted-proxy` the nearest
/// address in `X-Forwarded-For` that is not a trusted proxy. `None` when the server was not
/// given the peer (a router driven without a socket, or mounted in a site's own app). An
/// IPv4 address seen as IPv6 (`::ffff:10.0.0.7`, the peer of a server listening on `[::]`)
/// is taken as the IPv4 address it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    pub fn of(parts: &Parts, trusted: &[IpNet]) -> Self {
        Self::of_head(&parts.extensions, &parts.headers, trusted)
    }

    /// [`ClientIp::of`] a request's extensions and headers.
    pub fn of_head(
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
        trusted: &[IpNet],
    ) -> Self {
        let Some(ConnectInfo(peer)) = extensions.get::<ConnectInfo<SocketAddr>>() else {
            return ClientIp(None);
        };
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
        let mut ip = peer.ip().to_canonical();
        if is_trusted(&ip) {
            // Every entry of every line, as bytes: an entry that is not an address (whatever
            // bytes the client put there) is a malformed hop, never skipped over.
            let forwarded = headers
                .get_all("x-forwarded-for")
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .map(|a| {
                    std::str::from_utf8(a)
                        .ok()
                        .and_then(|a| a.trim().parse::<IpAddr>().ok())
                        .map(|a| a.to_canonical())
                })
                .collect::<Vec<_>>();
            // Right to left: each proxy appends the address it got the request from.
            for address in forwarded.into_iter().rev() {
                match address {
                    Some(a) if is_trusted(&a) => ip = a,
                    Some(a) => {
                        ip = a;
                        break;
                    }
                    None => break,
                }
            }
        }
        ClientIp(Some(ip))
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp::of(parts, &state.config.trusted_proxies))
    }
}

/// The signed-in user of a request, as the first [`Authenticator`] that knows it says.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub user_id: UserId,
    /// The user's id on the wire: a built-in account's number, or the site's user id.
    pub public_id: Arc<str>,
    pub username: Arc<str>,
    /// The user's version when the request was authenticated.
    pub version: u64,
    /// The hash of a built-in token (what logout revokes); `None` for the site's users.
    pub token_hash: Option<[u8; 32]>,
    /// The account was deleted: its devices are answered with nothing for a while.
    pub ending: bool,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // An address that sent too many credentials that are not valid waits before any are
        // looked at (a lookup may read the database).
        let ip = ClientIp::of(parts, &state.config.trusted_proxies);
        state.refused.check(ip)?;
        let refusal = 'asked: {
            if let Some(builtin) = &state.builtin {
                match builtin.check(parts, state.now_ms()).await {
                    Err(Refusal::NotMine) => {}
                    Err(refusal) => break 'asked refusal,
                    Ok(identity) => return Self::of(identity, parts, state).await,
                }
            }
            for authenticator in state.authenticators.iter() {
                match authenticator.authenticate(parts).await {
                    Err(Refusal::NotMine) => continue,
                    Err(refusal) => break 'asked refusal,
                    Ok(identity) => return Self::of(identity, parts, state).await,
                }
            }
            return Err(ApiError::unauthorized());
        };
        if matches!(refusal, Refusal::Invalid) {
            state.refused.refused(ip);
        }
        Err(refused(refusal))
    }
}

impl AuthUser {
    async fn of(identity: Identity, parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        match identity {
            Identity::Account {
                session,
                token_hash,
            } => Ok(Self {
                user_id: session.user_id,
                public_id: session.user_id.to_string().into(),
                username: session.username,
                version: session.version,
                token_hash: Some(token_hash),
                ending: session.deleted_at > 0,
            }),
            Identity::Subject(subject) => {
                if subject.is_empty() || subject.len() > SUBJECT_BYTES_MAX {
                    tracing::warn!(
                        bytes = subject.len(),
                        "an authenticator returned a user id that is not 1 to 128 bytes"
                    );
                    return Err(ApiError::unauthorized());
                }
                let (store, now_ms) = (&state.store, state.now_ms());
                let session = match polled(parts) {
                    Some(version) => {
                        store
                            .polled_subject_session(&subject, now_ms, version)
                            .await?
                    }
                    None => store.subject_session(&subject, now_ms).await?,
                };
                let subject: Arc<str> = subject.into();
                Ok(Self {
                    user_id: session.user_id,
                    public_id: subject.clone(),
                    username: subject,
                    version: session.version,
                    token_hash: None,
                    ending: false,
                })
            }
        }
    }
}

/// The version a conditional poll names (a `GET` with `If-None-Match`): when it is the
/// user's, the answer is a `304`, which the store may then give from memory.
fn polled(request: &Parts) -> Option<u64> {
    if request.method != axum::http::Method::GET {
        return None;
    }
    crate::sync::named_versions(&request.headers).next()
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::NotMine | Refusal::Invalid => ApiError::unauthorized(),
        Refusal::Expired => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "the session has expired: sign in again, or get a fresh token from the site",
        ),
        Refusal::ForbiddenOrigin => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "a change signed in by cookie must come from the site or an allowed origin",
        ),
        Refusal::Store(e) => e.into(),
    }
}

/// The token of a `Bearer` header, if it has one of a sane length.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= TOKEN_BYTES_MAX)
        .then_some(token)
}

/// The value of cookie `name`, if the request carries it with a sane length.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty() && v.len() <= TOKEN_BYTES_MAX)
}

/// Whether a request comes from this server's own origin or an allowed one, as a browser
/// tells it: `Sec-Fetch-Site: same-origin`, or an `Origin` that is allowed or names this host.
/// A request with neither header is not from a browser, so it cannot carry a victim's cookie
/// on another site's behalf. An authenticator of ambient credentials (cookies) refuses a
/// change for which this is false.
pub fn same_origin_or_allowed(headers: &HeaderMap, allowed: &[HeaderValue]) -> bool {
    let site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
    if site == Some(b"same-origin") {
        return true;
    }
    match headers.get(header::ORIGIN) {
        Some(origin) => {
            let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
            let authority = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, authority)| authority.as_bytes());
            allowed.contains(origin) || (authority.is_some() && authority == host)
        }
        None => site.is_none(),
    }
}

/// Whether a token has the shape of Sinkron's own: 64 lowercase hex digits, as
/// `/api/auth/login` makes them. Anything else cannot be one, so it never reaches storage.
pub(crate) fn is_builtin_token(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(crate) fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_be_well_formed() {
        let mut h = HeaderMap::new();
        let token = "ab".repeat(32);
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert_eq!(bearer(&h), Some(token.as_str()));
        assert!(is_builtin_token(&token));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer short".parse().unwrap());
        assert_eq!(bearer(&h), Some("short"));
        assert!(!is_builtin_token("short"));
        let huge = format!("Bearer {}", "a".repeat(TOKEN_BYTES_MAX + 1));
        h.insert(header::AUTHORIZATION, huge.parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; site=tok; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "site"), Some("tok"));
        assert_eq!(cookie(&h, "sit"), None);
        h.insert(header::COOKIE, "site=".parse().unwrap());
        assert_eq!(cookie(&h, "site"), None);
    }
}

#[cfg(test)]
mod props;
