//! Connection tokens (JWT HS256) and API keys.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use thiserror::Error;

/// Seconds of clock skew accepted on `exp`.
pub const TOKEN_LEEWAY_S: u64 = 5;

/// Claims of a connection token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Connection info, attached to the client's publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// Why a token was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Bad signature, malformed, wrong algorithm.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies and mints connection tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenVerifier {
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// A verifier for `secret`.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = TOKEN_LEEWAY_S;
        // Audience and issuer checks come with the full auth layer; until
        // then a token that carries `aud` is not refused for it.
        validation.validate_aud = false;
        // `exp` is optional: tokens without it do not expire.
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

/// Mints an HS256 connection token for `user`, valid for `ttl` (forever when None).
pub fn mint_token(
    secret: &str,
    user: &str,
    ttl: Option<Duration>,
    info: Option<Box<RawValue>>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        sub: user.to_string(),
        exp: ttl.map(|ttl| unix_now().saturating_add(ttl.as_secs())),
        info,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The accepted API keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Vec<String>);

impl ApiKeys {
    /// The keys accepted on `/v1/api/*`.
    pub fn new(keys: Vec<String>) -> Self {
        Self(keys)
    }

    /// Whether `Authorization: Bearer <key>` carries a known key.
    pub fn check_header(&self, header: Option<&str>) -> bool {
        let Some(key) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        // Check every key so the time taken does not tell which one matched.
        self.0.iter().fold(false, |ok, k| {
            constant_time_eq(k.as_bytes(), key.as_bytes()) | ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mints_and_verifies() {
        let t = mint_token("secret-123", "alice", Some(Duration::from_secs(60)), None).unwrap();
        let v = TokenVerifier::new("secret-123");
        assert_eq!(v.verify(&t).unwrap().sub, "alice");
        assert!(matches!(
            TokenVerifier::new("other-secret").verify(&t),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(v.verify("garbage"), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn expired_is_told_apart() {
        let claims = Claims {
            sub: "bob".into(),
            exp: Some(unix_now() - 3600),
            info: None,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret-123"),
        )
        .unwrap();
        assert_eq!(
            TokenVerifier::new("secret-123").verify(&t).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn api_keys() {
        let keys = ApiKeys::new(vec!["backend-key".into()]);
        assert!(keys.check_header(Some("Bearer backend-key")));
        assert!(!keys.check_header(Some("Bearer backend-kez")));
        assert!(!keys.check_header(Some("backend-key")));
        assert!(!keys.check_header(None));
    }
}
