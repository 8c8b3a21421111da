//! Webhooks against a real HTTP receiver started by the test: each event
//! once by id despite failing tries, signatures that verify (and a
//! tampered body that does not), occupied/vacated pairs under churn.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use futures_util::SinkExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tidings_server::config::{Config, WebhookEvent};
use tidings_server::hooks::signature;

const WHSEC: &str = "whsec-test-123";

/// What the receiver got: events in arrival order (duplicates included),
/// the raw requests, and how many it refused on purpose.
#[derive(Default)]
struct Received {
    events: Mutex<Vec<Value>>,
    requests: Mutex<Vec<(String, Bytes)>>,
    bad_signatures: AtomicUsize,
    fail_next: AtomicUsize,
}

impl Received {
    /// Events by id, first arrival kept (what a deduplicating backend keeps).
    fn unique(&self) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.events
            .lock()
            .iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_string()))
            .cloned()
            .collect()
    }

    fn count(&self, event: &str) -> usize {
        self.unique().iter().filter(|e| e["event"] == event).count()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receiver(fail_first: usize) -> (String, Arc<Received>) {
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/events"), got)
}

fn hooked(url: &str) -> Config {
    let mut c = config();
    c.webhooks.url = Some(url.to_string());
    c.webhooks.secret = Some(WHSEC.into());
    c.webhooks.batch_window = Duration::from_millis(20);
    c.webhooks.backoff_min = Duration::from_millis(20);
    c.webhooks.backoff_max = Duration::from_millis(200);
    c.webhooks.max_attempts = 30;
    c
}

async fn close(mut raw: Raw) {
    let _ = raw.ws.close().await;
    // Read until the server's close answer: the session is ending.
    let _ = raw.drain_until_closed().await;
}

#[tokio::test]
async fn each_event_reaches_the_backend_once_by_id_despite_failures() {
    let (url, got) = receiver(3).await;
    let mut c = hooked(&url);
    c.webhooks.events.push(WebhookEvent::Publication);
    let server = start_with(c).await;

    let mut alice = Raw::connect(&server, Some("alice")).await;
    let r = alice
        .call(json!({"op": "subscribe", "channel": "chat:room"}))
        .await;
    assert!(r["ok"].is_object(), "{r}");
    let (status, _) = api(
        &server,
        "publish",
        json!({"channel": "chat:room", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(status, 200);
    close(alice).await;

    got.wait_for("six events", |g| g.count("client_disconnected") == 1)
        .await;
    let unique = got.unique();
    let kinds: BTreeMap<String, usize> = unique.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["event"].as_str().unwrap().to_string())
            .or_default() += 1;
        m
    });
    let expected: BTreeMap<String, usize> = [
        "channel_occupied",
        "channel_vacated",
        "client_connected",
        "client_disconnected",
        "member_added",
        "member_removed",
        "publication",
    ]
    .into_iter()
    .map(|k| (k.to_string(), 1))
    .collect();
    assert_eq!(kinds, expected, "{unique:#?}");
    let by = |kind: &str| unique.iter().find(|e| e["event"] == kind).unwrap().clone();
    assert_eq!(by("member_added")["user"], "alice");
    assert_eq!(by("member_added")["channel"], "chat:room");
    assert_eq!(by("client_disconnected")["code"], 1000);
    assert_eq!(by("publication")["offset"], 1);
    assert_eq!(by("publication")["data"]["text"], "hi");
    assert!(by("channel_occupied")["time"].as_u64().unwrap() > 0);
    assert_eq!(
        got.fail_next.load(Ordering::SeqCst),
        0,
        "three tries failed"
    );
    assert_eq!(got.bad_signatures.load(Ordering::SeqCst), 0);
    assert!(
        metric(&server, "tidings_webhook_failures_total")
            .await
            .unwrap()
            >= 3.0
    );

    // A body changed on the way does not verify.
    let (header, body) = got.requests.lock()[0].clone();
    let now = tidings_server::auth::unix_now();
    assert!(signature::verify(WHSEC, &header, &body, now, 300).is_ok());
    let mut tampered = body.to_vec();
    let at = tampered.iter().position(|b| *b == b'1').unwrap_or(0);
    tampered[at] ^= 1;
    assert_eq!(
        signature::verify(WHSEC, &header, &tampered, now, 300),
        Err(signature::SignatureError::Mismatch)
    );
    assert!(signature::verify("another-secret", &header, &body, now, 300).is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn occupied_and_vacated_pair_up_under_churn() {
    const TASKS: usize = 25;
    const ROUNDS: usize = 40; // 1,000 connects and disconnects
    let (url, got) = receiver(0).await;
    let server = Arc::new(start_with(hooked(&url)).await);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let mut raw = Raw::connect(&server, None).await;
                let reply = raw
                    .call(json!({"op": "subscribe", "channel": "lobby"}))
                    .await;
                assert!(reply["ok"].is_object(), "{reply}");
                // Some leave at once, some stay a moment: the channel empties
                // and fills again many times.
                if (t + r) % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                close(raw).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = TASKS * ROUNDS;
    got.wait_for("every disconnect", |g| {
        g.count("client_disconnected") == total
    })
    .await;
    assert_eq!(got.count("client_connected"), total);
    // In the order sent: occupied, vacated, occupied, ... ending vacated.
    let pairs: Vec<String> = got
        .unique()
        .iter()
        .filter(|e| e["channel"] == "lobby")
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert!(!pairs.is_empty());
    assert_eq!(pairs.len() % 2, 0, "{pairs:?}");
    for (i, kind) in pairs.iter().enumerate() {
        let want = if i % 2 == 0 {
            "channel_occupied"
        } else {
            "channel_vacated"
        };
        assert_eq!(kind, want, "event {i} of {pairs:?}");
    }
    Arc::into_inner(server).unwrap().shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts_them() {
    // Nothing listens: every event stays queued, and the bound holds.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", l.local_addr().unwrap());
    drop(l);
    let mut c = hooked(&url);
    c.webhooks.max_queue = 5;
    let server = start_with(c).await;
    for _ in 0..12 {
        close(Raw::connect(&server, None).await).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued = metric(&server, "tidings_webhook_queue")
            .await
            .unwrap_or(0.0);
        let dropped = metric(
            &server,
            "tidings_webhook_events_total{outcome=\"dropped_full\"}",
        )
        .await
        .unwrap_or(0.0);
        // 24 events (connected and disconnected), 5 kept.
        if queued == 5.0 && dropped == 19.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queued {queued}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}
