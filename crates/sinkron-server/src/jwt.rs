//! Sign-in by the site's own tokens: JSON Web Tokens that the site issues, verified here with
//! the `jsonwebtoken` crate (no hand-made crypto).
//!
//! It owns loading the site's keys (a shared HS256 secret, a PEM public key, or a JWKS key
//! set from a file or a URL), keeping a key set current, pinning each key to its algorithm
//! family, and the claims a token must carry: `sub` (the site's user id, 1–128 bytes), `exp`
//! (required), `nbf` (honoured), `iss` and `aud` when configured, with 60 s of leeway.
//!
//! A key set is read again on a schedule and when a token names a `kid` it does not hold:
//! that refetch is shared by every request that asks while it runs and happens at most once
//! per [`UNKNOWN_KID_COOLDOWN`], so made-up kids cannot make Sinkron hammer the site. A read
//! that fails keeps the keys of the last good one. A token whose key is known never waits
//! for a read. It must not touch storage: the handlers map the subject to Sinkron's per-user
//! state. Nothing here logs a token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{decode, decode_header, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{AuthMode, Config, JWKS_REFRESH_SECS_MAX};

/// Longest `sub` accepted, in bytes.
pub const SUBJECT_BYTES_MAX: usize = 128;
/// Longest token accepted, in bytes; anything longer is refused before it is parsed.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Clock difference tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Shortest HS256 secret accepted: RFC 7518 asks for a key as long as the hash.
const SECRET_BYTES_MIN: usize = 32;
/// Largest JWKS document read, from a file or a URL.
pub const JWKS_BYTES_MAX: usize = 1024 * 1024;
/// Longest a fetch of `--jwks-url` may take, from connecting to the document's last byte.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest time between two reads of a key set for tokens that name a `kid` it lacks; a
/// `kid` still unknown after the last one is refused until then.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// Longest a request whose token names an unknown `kid` waits for the key set's read.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(5);

/// Why a token was refused. Only `Expired` is told apart to the client (so it refreshes).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// A key and the algorithm family it is pinned to.
struct Key {
    key: DecodingKey,
    family: AlgorithmFamily,
}

/// A key set's keys by `kid`.
type Keys = HashMap<String, Key>;

/// The site's keys and the claims its tokens must carry.
pub struct JwtVerifier {
    /// A single key (secret or PEM), used whatever `kid` the token names.
    single: Option<Key>,
    /// A key set, selected by the token's `kid`.
    set: Option<Arc<KeySet>>,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

impl JwtVerifier {
    /// The verifier the configuration asks for, or `None` when JWT mode is off, after
    /// checking that the sign-in modes make sense. A key set is read now (fetched, for
    /// `--jwks-url`) and then kept current by a task on the current tokio runtime, which
    /// ends when the verifier is dropped. Each error is one line fit for an operator, naming
    /// the file or URL; no key material is ever in it.
    pub async fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let builtin = config.auth_enabled(AuthMode::Builtin);
        let jwt = config.auth_enabled(AuthMode::Jwt);
        if !builtin && !jwt {
            return Err("--auth names no way to sign in: use builtin, jwt or both".into());
        }
        if config.jwt_cookie.is_some() && !jwt {
            return Err("--jwt-cookie needs JWT mode: a key of the site and --auth jwt".into());
        }
        match (jwt, config.has_jwt_key()) {
            (true, true) => Self::load(config).await.map(Some),
            (true, false) => Err("--auth jwt needs the site's key: --jwt-hs256-secret-file, \
                                  --jwt-public-key-file, --jwks-file or --jwks-url"
                .into()),
            (false, true) => Err("a JWT key is configured but --auth leaves out jwt".into()),
            (false, false) => Ok(None),
        }
    }

    async fn load(config: &Config) -> Result<Self, String> {
        let (single, source) = if let Some(path) = &config.jwt_hs256_secret_file {
            (Some(secret_key(path)?), None)
        } else if let Some(path) = &config.jwt_public_key_file {
            (Some(public_key(path)?), None)
        } else if let Some(path) = &config.jwks_file {
            (None, Some(Source::File(path.clone())))
        } else if let Some(url) = &config.jwks_url {
            (None, Some(Source::url(url)?))
        } else {
            return Err("no JWT key is configured".into());
        };
        let set = match source {
            Some(source) => {
                let set = KeySet::load(source).await?;
                let secs = config.jwks_refresh_secs.clamp(1, JWKS_REFRESH_SECS_MAX);
                refresh_every(&set, Duration::from_secs(secs));
                Some(set)
            }
            None => None,
        };
        Ok(Self {
            single,
            set,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    /// Verifies a token and returns its subject (the site's user id). It waits only when the
    /// token names a `kid` that the key set lacks (see [`UNKNOWN_KID_WAIT`]).
    pub async fn verify(&self, token: &str) -> Result<String, TokenError> {
        if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Invalid("length"));
        }
        let header = decode_header(token).map_err(|_| TokenError::Invalid("header"))?;
        let set = match (&self.single, &self.set) {
            (Some(key), _) => return self.check(token, key),
            (None, Some(set)) => set,
            (None, None) => return Err(TokenError::Invalid("no key")),
        };
        let keys = set.keys();
        let Some(kid) = header.kid.as_deref() else {
            return match keys.values().next() {
                Some(key) if keys.len() == 1 => self.check(token, key),
                _ => Err(TokenError::Invalid("no kid")),
            };
        };
        if let Some(key) = keys.get(kid) {
            return self.check(token, key);
        }
        set.refetch_for_unknown_kid().await;
        let keys = set.keys();
        let key = keys.get(kid).ok_or(TokenError::Invalid("unknown kid"))?;
        self.check(token, key)
    }

    /// Checks a token's signature with `key` and its claims.
    fn check(&self, token: &str, key: &Key) -> Result<String, TokenError> {
        // Only the algorithms of the key's own family: `none`, or an HMAC token "signed" with
        // a public key, never gets to a verifier.
        let mut validation = Validation::new_for_family(key.family);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            // A site that does not configure an audience accepts tokens that name one.
            None => validation.validate_aud = false,
        }
        let data = decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::Invalid("not yet valid"),
                ErrorKind::InvalidSignature => TokenError::Invalid("signature"),
                ErrorKind::InvalidAlgorithm => TokenError::Invalid("algorithm"),
                ErrorKind::InvalidIssuer => TokenError::Invalid("issuer"),
                ErrorKind::InvalidAudience => TokenError::Invalid("audience"),
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                _ => TokenError::Invalid("malformed"),
            }
        })?;
        let subject = data.claims.sub.unwrap_or_default();
        if subject.is_empty() || subject.len() > SUBJECT_BYTES_MAX {
            return Err(TokenError::Invalid("sub length"));
        }
        Ok(subject)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn secret_key(path: &Path) -> Result<Key, String> {
    let mut secret = read(path, "JWT secret file")?;
    // A secret written with `echo` ends in a newline that is not part of it.
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.len() < SECRET_BYTES_MIN {
        return Err(format!(
            "the JWT secret in {} is {} bytes; use at least {SECRET_BYTES_MIN} random bytes",
            path.display(),
            secret.len()
        ));
    }
    let key = DecodingKey::from_secret(&secret)
        .map_err(|e| format!("unusable JWT secret in {}: {e}", path.display()))?;
    Ok(Key {
        key,
        family: AlgorithmFamily::Hmac,
    })
}

/// A PEM public key: RSA (RS256…), EC (ES256, ES384) or Ed25519 (EdDSA).
fn public_key(path: &Path) -> Result<Key, String> {
    let pem = read(path, "JWT public key file")?;
    let parsed = [
        (DecodingKey::from_rsa_pem(&pem), AlgorithmFamily::Rsa),
        (DecodingKey::from_ec_pem(&pem), AlgorithmFamily::Ec),
        (DecodingKey::from_ed_pem(&pem), AlgorithmFamily::Ed),
    ];
    parsed
        .into_iter()
        .find_map(|(key, family)| key.ok().map(|key| Key { key, family }))
        .ok_or_else(|| {
            format!(
                "{} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)",
                path.display()
            )
        })
}

/// Where a key set comes from.
enum Source {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
}

impl Source {
    /// `--jwks-url`'s source, once the URL is known to be `http://` or `https://`.
    fn url(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                format!(
                    "--jwks-url {:?} is not an http:// or https:// URL",
                    without_credentials(url)
                )
            })?;
        let client = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .connect_timeout(JWKS_FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            // Minutes apart, fetches gain nothing from a kept connection.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("sinkron/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make the HTTP client for --jwks-url: {e}"))?;
        Ok(Self::Url {
            url: parsed,
            client,
        })
    }

    /// How errors and the log name it: the path, or the URL without credentials.
    fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Url { url, .. } => without_credentials(url.as_str()),
        }
    }

    /// The document, at most [`JWKS_BYTES_MAX`] bytes.
    async fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::File(path) => read_file(path).await,
            Self::Url { url, client } => fetch(client, url).await.map_err(|e| {
                format!(
                    "cannot fetch the JWKS at {}: {e}",
                    without_credentials(url.as_str())
                )
            }),
        }
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let failed = |e: std::io::Error| format!("cannot read the JWKS file {}: {e}", path.display());
    let file = tokio::fs::File::open(path).await.map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(JWKS_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(failed)?;
    if bytes.len() > JWKS_BYTES_MAX {
        return Err(format!(
            "the JWKS file {} is larger than {JWKS_BYTES_MAX} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// A GET of the document, refused when it is not a success or is too large.
async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(describe)?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the answer is HTTP {status}"));
    }
    let too_large = || format!("the document is larger than {JWKS_BYTES_MAX} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > JWKS_BYTES_MAX as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > JWKS_BYTES_MAX {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A fetch's error with its causes, on one line, without the URL (the caller names it).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", JWKS_FETCH_TIMEOUT.as_secs());
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A URL as errors and the log show it: without a user name or password.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A key set kept current: where it comes from, the keys of its last good read, and the
/// last read for an unknown `kid`.
struct KeySet {
    source: Source,
    /// Replaced whole by a good read. A verify clones the `Arc` and lets go at once, and a
    /// read holds the write lock only for the swap, so neither ever waits on the other's I/O.
    keys: RwLock<Arc<Keys>>,
    /// Held across a read, so that reads take turns and an older document never replaces a
    /// newer one.
    reading: tokio::sync::Mutex<()>,
    /// The last read for an unknown `kid`: when it started, and whether it has ended.
    refetch: Mutex<Option<(Instant, watch::Receiver<bool>)>>,
}

impl KeySet {
    /// The key set as `source` holds it now.
    async fn load(source: Source) -> Result<Arc<Self>, String> {
        let keys = parse_key_set(&source.read().await?, &source.name())?;
        Ok(Arc::new(Self {
            source,
            keys: RwLock::new(Arc::new(keys)),
            reading: tokio::sync::Mutex::new(()),
            refetch: Mutex::new(None),
        }))
    }

    /// The keys of the last good read.
    fn keys(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the source again and swaps its keys in. A read that fails keeps the keys of the
    /// last good one and says why in the log.
    async fn refresh(&self, why: &'static str) {
        let _turn = self.reading.lock().await;
        let name = self.source.name();
        let read = match self.source.read().await {
            Ok(bytes) => parse_key_set(&bytes, &name),
            Err(e) => Err(e),
        };
        match read {
            Ok(keys) => {
                let keys = Arc::new(keys);
                let old = std::mem::replace(
                    &mut *self.keys.write().unwrap_or_else(PoisonError::into_inner),
                    keys.clone(),
                );
                if old.len() != keys.len() || old.keys().any(|kid| !keys.contains_key(kid)) {
                    let kids: Vec<&str> = keys.keys().map(String::as_str).collect();
                    tracing::info!(source = %name, ?kids, why, "the JWKS has other keys now");
                } else {
                    tracing::debug!(source = %name, why, "the JWKS has the same keys");
                }
            }
            Err(error) => {
                tracing::warn!(%error, why, "cannot read the JWKS again; keeping its keys");
            }
        }
    }

    /// Waits, at most [`UNKNOWN_KID_WAIT`], for a read of the source for a token whose `kid`
    /// the keys lack. Every request that asks while a read runs waits for that one; the next
    /// starts no sooner than [`UNKNOWN_KID_COOLDOWN`] after it began, and until then a request
    /// returns at once. The read runs in a task of its own, so a request that gives up does
    /// not cancel it.
    async fn refetch_for_unknown_kid(self: &Arc<Self>) {
        let mut ended = {
            let mut last = self.refetch.lock().unwrap_or_else(PoisonError::into_inner);
            match &*last {
                Some((started, ended)) if started.elapsed() < UNKNOWN_KID_COOLDOWN => ended.clone(),
                _ => {
                    let (tx, rx) = watch::channel(false);
                    *last = Some((Instant::now(), rx.clone()));
                    let set = Arc::clone(self);
                    tokio::spawn(async move {
                        set.refresh("a token names an unknown kid").await;
                        let _ = tx.send(true);
                    });
                    rx
                }
            }
        };
        // A read that failed to finish (its task gone) counts as ended.
        let _ = tokio::time::timeout(UNKNOWN_KID_WAIT, ended.wait_for(|ended| *ended)).await;
    }
}

/// Reads `set` again every `period` until it is dropped.
fn refresh_every(set: &Arc<KeySet>, period: Duration) {
    let set: Weak<KeySet> = Arc::downgrade(set);
    tokio::spawn(async move {
        let mut timer = tokio::time::interval_at(Instant::now() + period, period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            let Some(set) = set.upgrade() else { return };
            set.refresh("scheduled").await;
        }
    });
}

/// A JWKS document: every key needs a `kid`; shared secrets do not belong in a key set.
/// `name` is the file or URL it came from, for errors.
fn parse_key_set(text: &[u8], name: &str) -> Result<Keys, String> {
    let set: JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("{name} is not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| format!("key {i} of {name} has no \"kid\""))?;
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(ec)
                if matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384) =>
            {
                AlgorithmFamily::Ec
            }
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "key {kid:?} of {name} is a shared secret; use --jwt-hs256-secret-file for one"
                ))
            }
            _ => {
                return Err(format!(
                    "key {kid:?} of {name} has an unsupported type or curve"
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("key {kid:?} of {name} is unusable: {e}"))?;
        keys.insert(kid, Key { key, family });
    }
    if keys.is_empty() {
        return Err(format!("{name} holds no keys"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    fn verifier(secret: &[u8]) -> JwtVerifier {
        JwtVerifier {
            single: Some(Key {
                key: DecodingKey::from_secret(secret).unwrap(),
                family: AlgorithmFamily::Hmac,
            }),
            set: None,
            issuer: Some("https://site.example".into()),
            audience: None,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(secret: &[u8], claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).expect("key"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn claims_are_checked_with_a_minute_of_leeway() {
        let secret = [7u8; 32];
        let v = verifier(&secret);
        let iss = "https://site.example";
        let ok = token(&secret, json!({"sub": "u1", "exp": now() + 60, "iss": iss}));
        assert_eq!(v.verify(&ok).await, Ok("u1".into()));
        let late = token(&secret, json!({"sub": "u1", "exp": now() - 30, "iss": iss}));
        assert_eq!(v.verify(&late).await, Ok("u1".into()), "within the leeway");
        let expired = token(
            &secret,
            json!({"sub": "u1", "exp": now() - 120, "iss": iss}),
        );
        assert_eq!(v.verify(&expired).await, Err(TokenError::Expired));
        let early = token(
            &secret,
            json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300, "iss": iss}),
        );
        assert!(matches!(
            v.verify(&early).await,
            Err(TokenError::Invalid(_))
        ));
        let other_issuer = token(&secret, json!({"sub": "u1", "exp": now() + 60, "iss": "x"}));
        assert!(matches!(
            v.verify(&other_issuer).await,
            Err(TokenError::Invalid(_))
        ));
        let long_sub = "s".repeat(SUBJECT_BYTES_MAX + 1);
        let long = token(
            &secret,
            json!({"sub": long_sub, "exp": now() + 60, "iss": iss}),
        );
        assert!(matches!(v.verify(&long).await, Err(TokenError::Invalid(_))));
    }

    /// The site's JWKS endpoint on loopback: it counts its GETs and holds them while its
    /// gate is closed.
    struct Site {
        url: String,
        document: Arc<Mutex<serde_json::Value>>,
        gets: watch::Receiver<usize>,
        gate: watch::Sender<bool>,
    }

    #[derive(Clone)]
    struct SiteState {
        document: Arc<Mutex<serde_json::Value>>,
        gets: Arc<watch::Sender<usize>>,
        gate: watch::Receiver<bool>,
    }

    impl Site {
        async fn start(document: serde_json::Value) -> Self {
            async fn jwks(
                axum::extract::State(site): axum::extract::State<SiteState>,
            ) -> axum::Json<serde_json::Value> {
                site.gets.send_modify(|n| *n += 1);
                let mut gate = site.gate.clone();
                let _ = gate.wait_for(|open| *open).await;
                let document = site.document.lock().unwrap().clone();
                axum::Json(document)
            }
            let document = Arc::new(Mutex::new(document));
            let (gets_tx, gets) = watch::channel(0);
            let (gate, gate_rx) = watch::channel(true);
            let state = SiteState {
                document: document.clone(),
                gets: Arc::new(gets_tx),
                gate: gate_rx,
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
            let app = axum::Router::new()
                .route("/jwks.json", axum::routing::get(jwks))
                .with_state(state);
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self {
                url,
                document,
                gets,
                gate,
            }
        }

        fn gets(&self) -> usize {
            *self.gets.borrow()
        }

        async fn wait_for_gets(&self, n: usize) {
            let mut gets = self.gets.clone();
            tokio::time::timeout(Duration::from_secs(10), gets.wait_for(|g| *g >= n))
                .await
                .expect("the site is asked in time")
                .unwrap();
        }
    }

    fn rsa_pem(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn jwks(keys: &[(&str, &str)]) -> serde_json::Value {
        let keys: Vec<_> = keys
            .iter()
            .map(|(name, kid)| {
                let key = EncodingKey::from_rsa_pem(&rsa_pem(name)).unwrap();
                let mut jwk =
                    jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
                jwk.common.key_id = Some((*kid).into());
                jwk
            })
            .collect();
        json!({ "keys": keys })
    }

    fn rs256(name: &str, kid: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_rsa_pem(&rsa_pem(name)).unwrap();
        encode(&header, &json!({"sub": "u1", "exp": now() + 600}), &key).unwrap()
    }

    #[tokio::test]
    async fn unknown_kids_share_one_read_and_known_ones_do_not_wait_for_it() {
        let site = Site::start(jwks(&[("rsa1.key.pem", "a")])).await;
        let config = Config {
            jwks_url: Some(site.url.clone()),
            ..Config::default()
        };
        let v = JwtVerifier::from_config(&config).await.unwrap().unwrap();
        assert_eq!(site.gets(), 1, "read at start");
        let a = rs256("rsa1.key.pem", "a");
        assert_eq!(v.verify(&a).await, Ok("u1".into()));

        // The site adds key b, and holds the next read until the gate opens.
        *site.document.lock().unwrap() = jwks(&[("rsa1.key.pem", "a"), ("rsa2.key.pem", "b")]);
        site.gate.send_replace(false);
        let b = rs256("rsa2.key.pem", "b");
        let mut waiting: Vec<_> = (0..8).map(|_| Box::pin(v.verify(&b))).collect();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for request in &mut waiting {
            assert!(
                request.as_mut().poll(&mut cx).is_pending(),
                "waits for the read"
            );
        }
        site.wait_for_gets(2).await;
        let known = tokio::time::timeout(Duration::from_secs(5), v.verify(&a)).await;
        assert_eq!(known, Ok(Ok("u1".into())), "a known kid does not wait");
        site.gate.send_replace(true);
        for request in waiting {
            assert_eq!(request.await, Ok("u1".into()));
        }
        assert_eq!(site.gets(), 2, "one read for all of them");

        // Within the cooldown another unknown kid is refused at once, without a read.
        let c = rs256("rsa1.key.pem", "c");
        assert_eq!(v.verify(&c).await, Err(TokenError::Invalid("unknown kid")));
        assert_eq!(site.gets(), 2);
    }

    #[tokio::test]
    async fn a_read_that_hangs_is_waited_for_a_few_seconds_only() {
        let site = Site::start(jwks(&[("rsa1.key.pem", "a")])).await;
        let config = Config {
            jwks_url: Some(site.url.clone()),
            ..Config::default()
        };
        let v = JwtVerifier::from_config(&config).await.unwrap().unwrap();
        site.gate.send_replace(false);
        let started = Instant::now();
        let b = rs256("rsa2.key.pem", "b");
        let refused = tokio::time::timeout(UNKNOWN_KID_WAIT * 2, v.verify(&b)).await;
        assert_eq!(refused, Ok(Err(TokenError::Invalid("unknown kid"))));
        assert!(started.elapsed() >= UNKNOWN_KID_WAIT);
        assert_eq!(site.gets(), 2, "the read was asked for, and is still held");
    }
}
