//! A JWKS fetched from the identity provider's https URL: loaded at start,
//! fetched again when its cache headers say, and when a token names a key
//! id it does not hold (a rotation) — at most once per `min_interval`, so a
//! flood of made-up key ids does not flood the provider.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use parking_lot::RwLock;
use tokio::time::Instant;

use super::VerifyKey;

/// Longest the keys are kept without asking again, whatever the headers say.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why the key set could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The request failed (connection, TLS, status).
    #[error("fetching the JWKS failed: {0}")]
    Fetch(String),
    /// The answer is not a usable key set.
    #[error("the JWKS is not a usable key set: {0}")]
    Invalid(String),
    /// The CA file cannot be used.
    #[error("the JWKS CA file {path}: {why}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The remote key set and its fetcher.
pub struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Vec<VerifyKey>>,
    /// When the last fetch was started; held across each fetch, so that
    /// fetches never overlap and an older answer never replaces a newer one.
    last: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
    default_ttl: Duration,
    /// How long until the next scheduled fetch (set by each fetch).
    next: parking_lot::Mutex<Duration>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .finish()
    }
}

impl RemoteJwks {
    /// A fetcher of `url`, trusting the public roots and the CAs in `ca`.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        min_interval: Duration,
        default_ttl: Duration,
    ) -> Result<Self, JwksError> {
        let mut builder = reqwest::Client::builder()
            // A connect with an unknown key id may wait for this fetch.
            .timeout(Duration::from_secs(5))
            .https_only(true);
        if let Some(path) = ca {
            let ca_err = |why: String| JwksError::Ca {
                path: path.display().to_string(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        Ok(Self {
            url: url.to_string(),
            client,
            keys: RwLock::new(Vec::new()),
            last: tokio::sync::Mutex::new(None),
            min_interval,
            default_ttl,
            next: parking_lot::Mutex::new(min_interval),
        })
    }

    /// Runs `f` over the keys held now.
    pub(super) fn with_keys<T>(&self, f: impl FnOnce(&[VerifyKey]) -> T) -> T {
        f(&self.keys.read())
    }

    /// Fetches the set now; returns how long it may be kept.
    pub async fn fetch(&self) -> Result<Duration, JwksError> {
        let mut last = self.last.lock().await;
        *last = Some(Instant::now());
        self.fetch_now().await
    }

    /// Fetches; the caller holds `last`.
    async fn fetch_now(&self) -> Result<Duration, JwksError> {
        let fetched = self.get().await;
        // A failure is tried again after `min_interval`; the old keys stay.
        *self.next.lock() = *fetched.as_ref().unwrap_or(&self.min_interval);
        fetched
    }

    async fn get(&self) -> Result<Duration, JwksError> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        let ttl = max_age(response.headers()).unwrap_or(self.default_ttl);
        let body = response
            .bytes()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| JwksError::Invalid(e.to_string()))?;
        let keys = super::keys_of_set(&set).map_err(JwksError::Invalid)?;
        *self.keys.write() = keys;
        Ok(ttl.clamp(self.min_interval, MAX_TTL))
    }

    /// A token named a key id not held: fetch again, unless a fetch began
    /// less than `min_interval` ago (then the keys stay as they are).
    pub async fn refetch_unknown(&self) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_interval) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch_now().await {
            tracing::warn!(url = %self.url, error = %e, "fetching the JWKS for an unknown key id failed");
        }
    }

    /// Keeps the keys fresh: fetches again when they expire (the first
    /// fetch is the caller's), retries a failure after `min_interval`.
    pub async fn run(self: Arc<Self>) {
        loop {
            let wait = *self.next.lock();
            tokio::time::sleep(wait).await;
            if let Err(e) = self.fetch().await {
                tracing::warn!(url = %self.url, error = %e, "fetching the JWKS failed; keeping the old keys");
            }
        }
    }
}

/// `Cache-Control: max-age=N` (none for `no-store`/`no-cache`).
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some(n) = directive.strip_prefix("max-age=") {
            age = n.parse().ok().map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_max_age() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=120".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(120)));
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
    }
}
