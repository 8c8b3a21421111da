//! Connection tokens (JWT) and API keys; [`jwks`] fetches an identity
//! provider's keys.

pub mod jwks;

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
    /// Channels the connection is subscribed to server-side at connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Present only in channel tokens: a connection token must not have it.
    #[serde(default, skip_serializing)]
    pub channel: Option<String>,
}

/// Claims of a channel token: lets `sub` subscribe to `channel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelClaims {
    /// The user the token is for.
    pub sub: String,
    /// The channel it opens.
    pub channel: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
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
    /// The token names a key id (`kid`) that no key has: the remote JWKS
    /// may have rotated.
    #[error("invalid token: no key has the id {0:?}")]
    UnknownKey(String),
}

impl TokenError {
    /// What a client is told.
    pub fn into_message(self) -> String {
        match self {
            TokenError::Invalid(why) => why,
            e => e.to_string(),
        }
    }
}

/// A verification key: the key, the algorithms it may verify (its family's
/// only, so an HS token can never be checked against a public key), its `kid`.
pub(crate) type VerifyKey = (DecodingKey, Vec<Algorithm>, Option<String>);

/// The keys of a JSON Web Key Set.
pub(crate) fn keys_of_set(set: &jsonwebtoken::jwk::JwkSet) -> Result<Vec<VerifyKey>, String> {
    use Algorithm::*;
    use jsonwebtoken::jwk::AlgorithmParameters;
    set.keys
        .iter()
        .map(|jwk| {
            let algs = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
                AlgorithmParameters::EllipticCurve(_) => vec![ES256, ES384],
                AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
                AlgorithmParameters::OctetKey(_) => vec![HS256, HS384, HS512],
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("an unusable key: {e}"))?;
            Ok((key, algs, jwk.common.key_id.clone()))
        })
        .collect()
}

/// Verifies and mints connection tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<VerifyKey>,
    /// The identity provider's keys, fetched (see [`jwks`]).
    remote: Option<std::sync::Arc<jwks::RemoteJwks>>,
    validation: Validation,
}

/// The key configuration of connection tokens.
#[derive(Debug, Clone, Default)]
pub struct TokenKeys<'a> {
    /// HS256/384/512 secret.
    pub secret: Option<&'a str>,
    /// PEM files of RSA (RS256/384/512, PS*), EC (ES256/384) or Ed25519 (EdDSA) public keys.
    pub public_keys: &'a [std::path::PathBuf],
    /// Required `aud`, if any.
    pub audience: Option<&'a str>,
    /// Required `iss`, if any.
    pub issuer: Option<&'a str>,
    /// A JWKS file (the JSON of a JSON Web Key Set) of more public keys.
    pub jwks: Option<&'a std::path::Path>,
    /// The keys fetched from `auth.token_jwks_url`.
    pub remote: Option<std::sync::Arc<jwks::RemoteJwks>>,
}

impl TokenVerifier {
    /// A verifier for one HS256/384/512 secret.
    pub fn new(secret: &str) -> Self {
        Self::from_keys(&TokenKeys {
            secret: Some(secret),
            ..Default::default()
        })
        .unwrap_or_else(|_| Self {
            keys: Vec::new(),
            remote: None,
            validation: base_validation(None, None),
        })
    }

    /// A verifier for the configured keys; names a key file that cannot be used.
    pub fn from_keys(keys: &TokenKeys<'_>) -> Result<Self, String> {
        use Algorithm::*;
        let mut out = Vec::new();
        if let Some(secret) = keys.secret {
            out.push((
                DecodingKey::from_secret(secret.as_bytes()),
                vec![HS256, HS384, HS512],
                None,
            ));
        }
        if let Some(path) = keys.jwks {
            let text = std::fs::read(path)
                .map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&text)
                .map_err(|e| format!("the JWKS file {} is not a key set: {e}", path.display()))?;
            out.extend(
                keys_of_set(&set).map_err(|e| format!("the JWKS file {}: {e}", path.display()))?,
            );
        }
        for path in keys.public_keys {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read token key {}: {e}", path.display()))?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (k, vec![RS256, RS384, RS512, PS256, PS384, PS512])
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, vec![ES256, ES384])
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                (k, vec![EdDSA])
            } else {
                return Err(format!(
                    "token key {} is not an RSA, EC or Ed25519 public key in PEM",
                    path.display()
                ));
            };
            out.push((key.0, key.1, None));
        }
        Ok(Self {
            keys: out,
            remote: keys.remote.clone(),
            validation: base_validation(keys.audience, keys.issuer),
        })
    }

    /// Verifies a connection token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims: Claims = self.verify_as(token)?;
        if claims.channel.is_some() {
            return Err(TokenError::Invalid(
                "a channel token is not a connection token".into(),
            ));
        }
        Ok(claims)
    }

    /// Verifies a channel token and returns its claims.
    pub fn verify_channel(&self, token: &str) -> Result<ChannelClaims, TokenError> {
        self.verify_as(token)
    }

    fn verify_as<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let invalid = |e: jsonwebtoken::errors::Error| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid(e.to_string()),
        };
        // `alg: none` and unknown algorithms fail here.
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let alg = header.alg;
        let mut last = TokenError::Invalid(format!("no key accepts {alg:?} tokens"));
        let mut try_keys = |keys: &[VerifyKey]| {
            // A token naming its key (`kid`) is checked against that key only.
            let usable = keys.iter().filter(|(_, algs, kid)| {
                algs.contains(&alg) && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
            });
            for (key, _, _) in usable {
                let mut validation = self.validation.clone();
                validation.algorithms = vec![alg];
                match jsonwebtoken::decode::<T>(token, key, &validation) {
                    Ok(d) => return Some(Ok(d.claims)),
                    Err(e) => {
                        last = invalid(e);
                        if last == TokenError::Expired {
                            return Some(Err(TokenError::Expired));
                        }
                    }
                }
            }
            None
        };
        if let Some(done) = try_keys(&self.keys) {
            return done;
        }
        if let Some(remote) = &self.remote
            && let Some(done) = remote.with_keys(|keys| try_keys(keys))
        {
            return done;
        }
        let Some(remote) = &self.remote else {
            return Err(last);
        };
        // A key id no key has: the provider may have rotated.
        let named = |keys: &[VerifyKey]| keys.iter().any(|(_, _, kid)| *kid == header.kid);
        match header.kid {
            Some(kid) if !named(&self.keys) && !remote.with_keys(named) => {
                Err(TokenError::UnknownKey(kid))
            }
            _ => Err(last),
        }
    }
}

fn base_validation(audience: Option<&str>, issuer: Option<&str>) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = TOKEN_LEEWAY_S;
    // `exp` is optional: tokens without it do not expire. `nbf` is checked when present.
    validation.required_spec_claims.clear();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // A configured audience or issuer must be present, not merely not wrong.
    match audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = issuer {
        validation.set_issuer(&[iss]);
        validation.required_spec_claims.insert("iss".into());
    }
    validation
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
        channels: None,
        channel: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Signs any claims (a JSON object) with an HS256 secret: channel tokens,
/// tokens with `aud`/`iss`, tests.
pub fn mint_claims(
    secret: &str,
    claims: &serde_json::Value,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 32 random alphanumeric characters (about 190 bits): generated secrets,
/// session ids.
pub fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| {
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [rng.random_range(0..62)],
            )
        })
        .collect()
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiScope {
    /// Every method.
    #[default]
    All,
    /// `publish` and `broadcast` only.
    Publish,
}

impl ApiScope {
    /// Whether this scope allows the API `method`.
    pub fn allows(self, method: &str) -> bool {
        match self {
            ApiScope::All => true,
            ApiScope::Publish => matches!(method, "publish" | "broadcast"),
        }
    }
}

/// The accepted API keys: (name, key, scope).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Vec<(String, String, ApiScope)>);

impl ApiKeys {
    /// The keys accepted on `/v1/api/*`.
    pub fn new(keys: Vec<(String, String, ApiScope)>) -> Self {
        Self(keys)
    }

    /// The name and scope of the key `Authorization: Bearer <key>` carries.
    pub fn check_header(&self, header: Option<&str>) -> Option<(&str, ApiScope)> {
        let key = header.and_then(|h| h.strip_prefix("Bearer "))?;
        // Compare with every key so the time taken does not tell which matched.
        let mut found = None;
        for (name, k, scope) in &self.0 {
            if constant_time_eq(k.as_bytes(), key.as_bytes()) {
                found = Some((name.as_str(), *scope));
            }
        }
        found
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
            channels: None,
            channel: None,
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
        let keys = ApiKeys::new(vec![
            ("backend".into(), "backend-key".into(), ApiScope::All),
            ("pusher".into(), "pusher-key".into(), ApiScope::Publish),
        ]);
        assert_eq!(
            keys.check_header(Some("Bearer backend-key")),
            Some(("backend", ApiScope::All))
        );
        assert_eq!(
            keys.check_header(Some("Bearer pusher-key")),
            Some(("pusher", ApiScope::Publish))
        );
        assert!(keys.check_header(Some("Bearer backend-kez")).is_none());
        assert!(keys.check_header(Some("backend-key")).is_none());
        assert!(keys.check_header(None).is_none());
    }
}
