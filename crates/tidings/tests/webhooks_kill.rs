//! kill -9 with webhook events queued: they are delivered after the
//! restart, each once by id.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::start;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tidings_server::hooks::signature;

const WHSEC: &str = "whsec-kill-test";
const CLIENTS: usize = 10;

async fn queued(addr: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tidings_webhook_queue "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn events_queued_at_kill_9_are_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver's port is chosen now; nothing listens there until the restart.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("tidings.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[auth]\ntoken_secret = \"kill-test-secret\"\napi_keys = [\"kill-test-key\"]\n[channels]\nanonymous = true\n[webhooks]\nurl = \"http://127.0.0.1:{port}/events\"\nsecret = \"{WHSEC}\"\nbatch_window = \"10ms\"\nbackoff_min = \"20s\"\nbackoff_max = \"60s\"\nmax_attempts = 1000\nevents = [\"client_connected\"]\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start(&config, &data);

    // Connections whose `client_connected` events cannot be delivered yet.
    let mut clients = Vec::new();
    let mut ids = HashSet::new();
    for _ in 0..CLIENTS {
        let uri = format!("ws://{addr}/v1/ws").parse().unwrap();
        let (mut ws, _) = tokio_websockets::ClientBuilder::from_uri(uri)
            .connect()
            .await
            .unwrap();
        ws.send(tokio_websockets::Message::text(
            json!({"id": 1, "op": "connect"}).to_string(),
        ))
        .await
        .unwrap();
        use futures_util::StreamExt;
        let reply = ws.next().await.unwrap().unwrap();
        let reply: Value = serde_json::from_str(reply.as_text().unwrap()).unwrap();
        ids.insert(reply["ok"]["client"].as_str().unwrap().to_string());
        clients.push(ws);
    }
    // On disk — while the sender waits out a long backoff — then killed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while queued(&addr).await < CLIENTS as f64 {
        assert!(Instant::now() < deadline, "events never reached the queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(clients);

    // The receiver comes up, then the server again on the same data.
    let got: Arc<parking_lot::Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/events",
            post(
                |State(got): State<Arc<parking_lot::Mutex<Vec<Value>>>>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let header = headers
                        .get(signature::HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let now = tidings_server::auth::unix_now();
                    if signature::verify(WHSEC, header, &body, now, 300).is_err() {
                        return StatusCode::UNAUTHORIZED;
                    }
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    got.lock()
                        .extend(v["events"].as_array().unwrap().iter().cloned());
                    StatusCode::OK
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the receiver's port is still free");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (mut child, _addr) = start(&config, &data);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let clients: HashSet<String> = got
            .lock()
            .iter()
            .filter(|e| e["event"] == "client_connected")
            .map(|e| e["client"].as_str().unwrap().to_string())
            .collect();
        if clients == ids {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivered {} of {CLIENTS} after the restart",
            clients.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unique: HashSet<String> = got
        .lock()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(unique.len(), CLIENTS, "one event per connection");
    child.kill().unwrap();
    child.wait().unwrap();
}
