//! A webhook receiver for tests: a real HTTP server that checks each
//! request's signature and keeps the events.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures_util::SinkExt;
use parking_lot::Mutex;
use serde_json::Value;
use tidings_server::config::Config;
use tidings_server::hooks::signature;

use super::{Raw, config};

pub const WHSEC: &str = "whsec-test-123";

/// What the receiver got: events in arrival order (duplicates included),
/// the raw requests, and how many it refused on purpose.
#[derive(Default)]
pub struct Received {
    pub events: Mutex<Vec<Value>>,
    pub requests: Mutex<Vec<(String, Bytes)>>,
    pub bad_signatures: AtomicUsize,
    pub fail_next: AtomicUsize,
}

impl Received {
    /// Events by id, first arrival kept (what a deduplicating backend keeps).
    pub fn unique(&self) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.events
            .lock()
            .iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_string()))
            .cloned()
            .collect()
    }

    pub fn count(&self, event: &str) -> usize {
        self.unique().iter().filter(|e| e["event"] == event).count()
    }

    pub async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn receiver(fail_first: usize) -> (String, Arc<Received>) {
    receiver_at("127.0.0.1:0", fail_first).await
}

/// [`receiver`] listening on `addr` (a backend coming back on its address).
pub async fn receiver_at(addr: &str, fail_first: usize) -> (String, Arc<Received>) {
    let got = Arc::new(Received::default());
    got.fail_next.store(fail_first, Ordering::SeqCst);
    let app = Router::new()
        .route(
            "/events",
            post(
                |State(got): State<Arc<Received>>, headers: HeaderMap, body: Bytes| async move {
                    if got
                        .fail_next
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let header = headers
                        .get(signature::HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let now = tidings_server::auth::unix_now();
                    if signature::verify(WHSEC, &header, &body, now, 300).is_err() {
                        got.bad_signatures.fetch_add(1, Ordering::SeqCst);
                        return StatusCode::UNAUTHORIZED;
                    }
                    let parsed: Value = serde_json::from_slice(&body).unwrap();
                    got.events
                        .lock()
                        .extend(parsed["events"].as_array().unwrap().iter().cloned());
                    got.requests.lock().push((header, body));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/events"), got)
}

/// The test config with webhooks to `url`, fast batches and retries.
pub fn hooked(url: &str) -> Config {
    let mut c = config();
    c.webhooks.url = Some(url.to_string());
    c.webhooks.secret = Some(WHSEC.into());
    c.webhooks.batch_window = Duration::from_millis(20);
    c.webhooks.backoff_min = Duration::from_millis(20);
    c.webhooks.backoff_max = Duration::from_millis(200);
    c.webhooks.max_attempts = 30;
    c
}

/// Closes a WebSocket the way a client does and reads until the server's answer.
pub async fn close_ws(mut raw: Raw) {
    let _ = raw.ws.close().await;
    // Read until the server's close answer: the session is ending.
    let _ = raw.drain_until_closed().await;
}
