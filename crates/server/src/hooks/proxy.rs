//! Proxy hooks: the backend decides a connect, subscribe, publish or
//! refresh. One POST of JSON per decision over a pooled keep-alive client;
//! `{"result": {...}}` allows (with overrides), `{"error": {...}}` refuses,
//! anything else — a timeout, a refused connection, a 5xx, garbage — is
//! the backend failing, and the caller applies the configured `fail` mode.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tidings_protocol::{ErrorBody, ErrorCode};

use crate::metrics::Metrics;

/// Longest message of a refusal passed on to the client.
const MAX_MESSAGE: usize = 256;

/// Who is asking, as the backend is told: the transport, the client's
/// address and the request headers the configuration lets through.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peer {
    /// `websocket`, `sse`, `http_poll` or `http`.
    pub transport: &'static str,
    /// The client's address (the socket's peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::IpAddr>,
    /// Request headers by lowercase name (only those in `proxy.headers`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Peer {
    /// A peer of `transport` with the `allowed` headers of `headers`.
    pub fn from_request(
        transport: &'static str,
        ip: Option<std::net::IpAddr>,
        headers: &http::HeaderMap,
        allowed: &[String],
    ) -> Self {
        let headers = allowed
            .iter()
            .filter_map(|name| {
                let value = headers.get(name.as_str())?.to_str().ok()?;
                Some((name.clone(), value.to_string()))
            })
            .collect();
        Self {
            transport,
            ip,
            headers,
        }
    }
}

/// The body of a hook call.
#[derive(Debug, Serialize)]
pub struct HookRequest<'a> {
    /// The connection's client id.
    pub client: &'a str,
    /// The user ("" before the connect hook names one, or anonymous).
    pub user: &'a str,
    /// Transport, address and headers.
    #[serde(flatten)]
    pub peer: &'a Peer,
    /// The channel (subscribe, publish, sub_refresh).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    /// The publication's data (publish).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// The connection's info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// What an allowing backend may override; each hook uses what applies to it.
#[derive(Debug, Default, Deserialize)]
pub struct Allow {
    /// The user the connection is (connect).
    #[serde(default)]
    pub user: Option<String>,
    /// The connection's info, attached to its publications and presence.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
    /// connect: data for the client in the connect reply; publish: the data
    /// subscribers get instead of the client's.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// When the connection or subscription ends unless refreshed (Unix seconds).
    #[serde(default)]
    pub expire_at: Option<u64>,
    /// Channels to subscribe the connection to (connect).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
}

/// Why a hook did not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The backend refused; the error goes to the client as it is.
    #[error("refused by the backend: {}", .0.message)]
    Refused(ErrorBody),
    /// The backend failed (timeout, down, bad answer).
    #[error("the backend failed: {0}")]
    Unavailable(String),
}

impl HookError {
    /// The error a client gets when a fail-closed hook's backend failed.
    pub fn temporary() -> ErrorBody {
        ErrorBody {
            temporary: true,
            ..ErrorBody::new(ErrorCode::Internal, "the backend did not answer; try again")
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    result: Option<Allow>,
    #[serde(default)]
    error: Option<Value>,
}

/// The backend's `error`, read leniently: anything it says there refuses
/// (a refusal must never pass for a failure, which may fail open).
fn refusal(error: &Value) -> ErrorBody {
    let code = error["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(0);
    let ours = ErrorCode::ALL.iter().any(|c| c.code() == code);
    // One of this protocol's codes or the range kept for applications
    // (1000–1999), else 103.
    let code = if ours || (1000..2000).contains(&code) {
        code
    } else {
        ErrorCode::PermissionDenied.code()
    };
    let mut message = error["message"]
        .as_str()
        .unwrap_or("refused by the backend")
        .to_string();
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    ErrorBody {
        code,
        message,
        temporary: error["temporary"].as_bool().unwrap_or(false),
    }
}

/// The HTTP client every hook call goes through (pooled, keep-alive).
#[derive(Clone)]
pub struct Proxy {
    client: reqwest::Client,
    timeout: Duration,
    /// Calls in flight at once: a connect storm waits here instead of
    /// opening thousands of connections to the backend.
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    metrics: std::sync::Arc<Metrics>,
}

impl Proxy {
    /// A client whose calls each take at most `timeout`, waiting included,
    /// with at most `max_in_flight` at once.
    pub fn new(timeout: Duration, max_in_flight: usize, metrics: std::sync::Arc<Metrics>) -> Self {
        // The call's whole time, the wait for a slot included, is bounded in
        // `call`; the client bounds connecting only.
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_in_flight)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self {
            client,
            timeout,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
            metrics,
        }
    }

    /// POSTs `request` to `url` for `hook` and reads the backend's answer.
    pub async fn call(
        &self,
        hook: &'static str,
        url: &str,
        request: &HookRequest<'_>,
    ) -> Result<Allow, HookError> {
        let call = async {
            let _permit = self.in_flight.acquire().await;
            self.ask(url, request).await
        };
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(HookError::Unavailable("timed out".into())));
        let outcome = match &result {
            Ok(_) => "allow",
            Err(HookError::Refused(_)) => "refuse",
            Err(HookError::Unavailable(why)) => {
                tracing::warn!(hook, url, error = %why, "proxy hook failed");
                "unavailable"
            }
        };
        self.metrics.proxy_call(hook, outcome);
        result
    }

    async fn ask(&self, url: &str, request: &HookRequest<'_>) -> Result<Allow, HookError> {
        let unavailable = |e: reqwest::Error| HookError::Unavailable(e.without_url().to_string());
        let response = self
            .client
            .post(url)
            .json(request)
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unavailable)?;
        let answer: Option<Answer> = serde_json::from_slice(&body).ok();
        match answer {
            Some(Answer {
                error: Some(error), ..
            }) => Err(HookError::Refused(refusal(&error))),
            // A 4xx is the backend saying no, even without our body.
            _ if status.is_client_error() => Err(HookError::Refused(ErrorBody::new(
                ErrorCode::PermissionDenied,
                format!("refused by the backend ({status})"),
            ))),
            _ if !status.is_success() => Err(HookError::Unavailable(format!("answered {status}"))),
            Some(Answer {
                result: Some(allow),
                ..
            }) => Ok(allow),
            Some(_) => Err(HookError::Unavailable(
                "answered neither `result` nor `error`".into(),
            )),
            None => Err(HookError::Unavailable("answered garbage".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn any_error_refuses_with_our_codes_or_the_apps() {
        let code = |e: Value| refusal(&e).code;
        assert_eq!(code(json!({"code": 103, "message": "no"})), 103);
        assert_eq!(code(json!({"code": 1001, "message": "no"})), 1001);
        assert_eq!(code(json!({"code": 3000})), 103);
        assert_eq!(code(json!({"code": 70000})), 103);
        assert_eq!(code(json!({})), 103);
        assert_eq!(
            refusal(&json!({"code": 1001})).message,
            "refused by the backend"
        );
        let long = refusal(&json!({"code": 1000, "message": "é".repeat(300)}));
        assert!(long.message.len() <= MAX_MESSAGE);
        assert!(refusal(&json!({"code": 1000, "temporary": true})).temporary);
    }
}
