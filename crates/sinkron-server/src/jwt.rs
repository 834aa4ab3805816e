//! Sign-in by the site's own tokens: JSON Web Tokens that the site issues, verified here with
//! the `jsonwebtoken` crate (no hand-made crypto).
//!
//! It owns loading the site's keys (a shared HS256 secret, a PEM public key, or a JWKS key
//! set), pinning each key to its algorithm family, and the claims a token must carry: `sub`
//! (the site's user id, 1–128 bytes), `exp` (required), `nbf` (honoured), `iss` and `aud` when
//! configured, with 60 s of leeway. It must not touch storage: the handlers map the subject to
//! Sinkron's per-user state. Nothing here logs a token.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{decode, decode_header, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{AuthMode, Config};

/// Longest `sub` accepted, in bytes.
pub const SUBJECT_BYTES_MAX: usize = 128;
/// Longest token accepted, in bytes; anything longer is refused before it is parsed.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Clock difference tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Shortest HS256 secret accepted: RFC 7518 asks for a key as long as the hash.
const SECRET_BYTES_MIN: usize = 32;

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

/// The site's keys and the claims its tokens must carry.
pub struct JwtVerifier {
    /// A single key (secret or PEM), used whatever `kid` the token names.
    single: Option<Key>,
    /// A key set, selected by the token's `kid`.
    set: HashMap<String, Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

impl JwtVerifier {
    /// The verifier the configuration asks for, or `None` when JWT mode is off, after
    /// checking that the sign-in modes make sense. Each error is one line fit for an
    /// operator, naming the file; no key material is ever in it.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let builtin = config.auth_enabled(AuthMode::Builtin);
        let jwt = config.auth_enabled(AuthMode::Jwt);
        if !builtin && !jwt {
            return Err("--auth names no way to sign in: use builtin, jwt or both".into());
        }
        if config.jwt_cookie.is_some() && !jwt {
            return Err("--jwt-cookie needs JWT mode: a key of the site and --auth jwt".into());
        }
        let verifier = Self::load(config)?;
        match (jwt, verifier) {
            (true, None) => Err("--auth jwt needs the site's key: --jwt-hs256-secret-file, \
                                 --jwt-public-key-file or --jwks-file"
                .into()),
            (true, verifier) => Ok(verifier),
            (false, Some(_)) => Err("a JWT key is configured but --auth leaves out jwt".into()),
            (false, None) => Ok(None),
        }
    }

    fn load(config: &Config) -> Result<Option<Self>, String> {
        let single = if let Some(path) = &config.jwt_hs256_secret_file {
            Some(secret_key(path)?)
        } else if let Some(path) = &config.jwt_public_key_file {
            Some(public_key(path)?)
        } else {
            None
        };
        let set = match &config.jwks_file {
            Some(path) => key_set(path)?,
            None => HashMap::new(),
        };
        if single.is_none() && set.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            single,
            set,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        }))
    }

    /// Verifies a token and returns its subject (the site's user id).
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Invalid("length"));
        }
        let header = decode_header(token).map_err(|_| TokenError::Invalid("header"))?;
        let key = match (&self.single, header.kid.as_deref()) {
            (Some(key), _) => key,
            (None, Some(kid)) => self
                .set
                .get(kid)
                .ok_or(TokenError::Invalid("unknown kid"))?,
            (None, None) if self.set.len() == 1 => self.set.values().next().expect("one key"),
            (None, None) => return Err(TokenError::Invalid("no kid")),
        };
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

/// A JWKS document: every key needs a `kid`; shared secrets do not belong in a key set.
fn key_set(path: &Path) -> Result<HashMap<String, Key>, String> {
    let text = read(path, "JWKS file")?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a JWKS document: {e}", path.display()))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| format!("key {i} of {} has no \"kid\"", path.display()))?;
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
                    "key {kid:?} of {} is a shared secret; use --jwt-hs256-secret-file for one",
                    path.display()
                ))
            }
            _ => {
                return Err(format!(
                    "key {kid:?} of {} has an unsupported type or curve",
                    path.display()
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("key {kid:?} of {} is unusable: {e}", path.display()))?;
        keys.insert(kid, Key { key, family });
    }
    if keys.is_empty() {
        return Err(format!("{} holds no keys", path.display()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    fn verifier(secret: &[u8]) -> JwtVerifier {
        JwtVerifier {
            single: Some(Key {
                key: DecodingKey::from_secret(secret).unwrap(),
                family: AlgorithmFamily::Hmac,
            }),
            set: HashMap::new(),
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

    #[test]
    fn claims_are_checked_with_a_minute_of_leeway() {
        let secret = [7u8; 32];
        let v = verifier(&secret);
        let iss = "https://site.example";
        let ok = token(&secret, json!({"sub": "u1", "exp": now() + 60, "iss": iss}));
        assert_eq!(v.verify(&ok), Ok("u1".into()));
        let late = token(&secret, json!({"sub": "u1", "exp": now() - 30, "iss": iss}));
        assert_eq!(v.verify(&late), Ok("u1".into()), "within the leeway");
        let expired = token(
            &secret,
            json!({"sub": "u1", "exp": now() - 120, "iss": iss}),
        );
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        let early = token(
            &secret,
            json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300, "iss": iss}),
        );
        assert!(matches!(v.verify(&early), Err(TokenError::Invalid(_))));
        let other_issuer = token(&secret, json!({"sub": "u1", "exp": now() + 60, "iss": "x"}));
        assert!(matches!(
            v.verify(&other_issuer),
            Err(TokenError::Invalid(_))
        ));
        let long_sub = "s".repeat(SUBJECT_BYTES_MAX + 1);
        let long = token(
            &secret,
            json!({"sub": long_sub, "exp": now() + 60, "iss": iss}),
        );
        assert!(matches!(v.verify(&long), Err(TokenError::Invalid(_))));
    }
}
