//! Client configuration.

use std::fmt;
use std::time::Duration;

/// How to reach the server and how to behave when the connection drops.
///
/// Build it with [`ClientConfig::new`] and the setters:
///
/// ```
/// # use std::time::Duration;
/// # use tidings_client::ClientConfig;
/// let config = ClientConfig::new("ws://127.0.0.1:8000/v1/ws")
///     .token("eyJ...")
///     .backoff_max(Duration::from_secs(5));
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    /// WebSocket URL, `ws://host:port/v1/ws`. A URL without a path gets `/v1/ws`;
    /// `http://` is read as `ws://`.
    pub url: String,
    /// Connection token (JWT) sent in `connect`.
    pub token: Option<String>,
    /// Client name sent in `connect` (free text).
    pub name: Option<String>,
    /// Smallest reconnect backoff cap (default 500 ms).
    pub backoff_min: Duration,
    /// Largest reconnect delay (default 20 s).
    pub backoff_max: Duration,
    /// Whether to reconnect after a lost connection (default true).
    pub reconnect: bool,
    /// How long a request may wait for its reply, and how long the first
    /// connect may take (default 10 s).
    pub request_timeout: Duration,
    /// `tidings.v1.msgpack` (MessagePack binary frames) instead of JSON.
    pub msgpack: bool,
}

impl ClientConfig {
    /// A configuration for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            name: None,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(20),
            reconnect: true,
            request_timeout: Duration::from_secs(10),
            msgpack: false,
        }
    }

    /// Speaks `tidings.v1.msgpack`: the same messages as MessagePack.
    pub fn msgpack(mut self) -> Self {
        self.msgpack = true;
        self
    }

    /// Sets the connection token.
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.token = Some(t.into());
        self
    }

    /// Sets the client name sent in `connect`.
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = Some(n.into());
        self
    }

    /// Sets the smallest reconnect backoff cap.
    pub fn backoff_min(mut self, d: Duration) -> Self {
        self.backoff_min = d;
        self
    }

    /// Sets the largest reconnect delay.
    pub fn backoff_max(mut self, d: Duration) -> Self {
        self.backoff_max = d;
        self
    }

    /// Enables or disables reconnecting.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// Sets the request (and first connect) timeout.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("reconnect", &self.reconnect)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Parses the configured URL into the URI to dial.
pub(crate) fn parse_url(url: &str) -> Result<http::Uri, String> {
    let url = url.trim();
    let url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_string()
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid url `{url}`: {e}"))?;
    match uri.scheme_str() {
        Some("ws") | Some("wss") => {}
        _ => {
            return Err(format!(
                "invalid url `{url}`: the scheme must be ws:// or wss://"
            ));
        }
    }
    if uri.host().is_none() {
        return Err(format!("invalid url `{url}`: no host"));
    }
    let path_empty = uri
        .path_and_query()
        .is_none_or(|pq| pq.as_str().is_empty() || pq.as_str() == "/");
    if path_empty {
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/ws"));
        return http::Uri::from_parts(parts).map_err(|e| format!("invalid url `{url}`: {e}"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = ClientConfig::new("ws://a:1/v1/ws");
        assert_eq!(c.backoff_min, Duration::from_millis(500));
        assert_eq!(c.backoff_max, Duration::from_secs(20));
        assert!(c.reconnect);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        let c = c.token("secret").name("n").reconnect(false);
        assert_eq!(c.token.as_deref(), Some("secret"));
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("ws://127.0.0.1:8000/v1/ws").unwrap().to_string(),
            "ws://127.0.0.1:8000/v1/ws"
        );
        assert_eq!(
            parse_url("ws://127.0.0.1:8000").unwrap().to_string(),
            "ws://127.0.0.1:8000/v1/ws"
        );
        assert_eq!(
            parse_url("http://h:1/").unwrap().to_string(),
            "ws://h:1/v1/ws"
        );
        assert_eq!(
            parse_url("ws://h/x?y=1").unwrap().to_string(),
            "ws://h/x?y=1"
        );
        assert!(parse_url("ftp://h/").is_err());
        assert!(parse_url("not a url").is_err());
        assert!(parse_url("/v1/ws").is_err());
    }
}
