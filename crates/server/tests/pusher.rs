//! Bad input on the Pusher endpoints: malformed messages, forged and
//! malformed presence data, client events where they are not allowed or
//! too large, wrong and stale API signatures. Each gets Pusher's answer,
//! and a bystander on the same server notices nothing.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_server::config::{Config, PusherApp};
use tidings_server::pusher::sign::hmac_hex;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const KEY: &str = "app-key";
const SECRET: &str = "app-secret-123";

fn pusher_config() -> Config {
    let mut c = config();
    c.pusher.apps.push(PusherApp {
        id: "app-id".into(),
        key: KEY.into(),
        secret: SECRET.into(),
        client_events: true,
        max_connections: 0,
        namespace: "pusher".into(),
        webhook_url: None,
        webhook_events: Vec::new(),
    });
    c
}

/// A Pusher client: connects and returns the socket and its socket id.
async fn open(server: &tidings_server::Server) -> (Socket, String) {
    let url = format!("ws://{}/app/{KEY}?protocol=7", server.local_addr());
    let (mut ws, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    let hello = next(&mut ws).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    let socket = data["socket_id"].as_str().unwrap().to_string();
    (ws, socket)
}

async fn next(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("a frame");
        if let Some(text) = msg.as_text() {
            return serde_json::from_str(text).expect("JSON");
        }
    }
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn subscribe(ws: &mut Socket, data: Value) -> Value {
    send(ws, json!({"event": "pusher:subscribe", "data": data})).await;
    next(ws).await
}

fn data_of(msg: &Value) -> Value {
    match &msg["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

/// Signs an HTTP API call as the Pusher server SDKs do.
fn signed(method: &str, path: &str, body: &str, t: u64) -> String {
    let md5 = md5_hex(body.as_bytes());
    let mut query = format!("auth_key={KEY}&auth_timestamp={t}&auth_version=1.0");
    if !body.is_empty() {
        query.push_str(&format!("&body_md5={md5}"));
    }
    let signature = hmac_hex(SECRET, &format!("{method}\n{path}\n{query}"));
    format!("{query}&auth_signature={signature}")
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn bad_input_gets_pushers_answers_and_bystanders_notice_nothing() {
    let server = start_with(pusher_config()).await;
    let (mut bystander, _) = open(&server).await;
    let ok = subscribe(&mut bystander, json!({"channel": "news"})).await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");

    let (mut ws, socket) = open(&server).await;
    // Not JSON: an error, and the connection goes on.
    ws.send(Message::text("{not json")).await.unwrap();
    let e = next(&mut ws).await;
    assert_eq!(e["event"], "pusher:error", "{e}");
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut ws).await["event"], "pusher:pong");

    // A forged signature.
    let r = subscribe(
        &mut ws,
        json!({"channel": "private-x", "auth": format!("{KEY}:{}", "0".repeat(64))}),
    )
    .await;
    assert_eq!(r["event"], "pusher:subscription_error");
    assert_eq!(data_of(&r)["status"], 401);

    // Presence data signed but malformed (no user_id): refused.
    let channel_data = r#"{"user_info":{"name":"x"}}"#;
    let auth = format!(
        "{KEY}:{}",
        hmac_hex(SECRET, &format!("{socket}:presence-r:{channel_data}"))
    );
    let r = subscribe(
        &mut ws,
        json!({"channel": "presence-r", "auth": auth, "channel_data": channel_data}),
    )
    .await;
    assert_eq!(r["event"], "pusher:subscription_error", "{r}");
    assert_eq!(data_of(&r)["status"], 400);

    // Another user's events channel (this socket has not signed in as zoe).
    let r = subscribe(&mut ws, json!({"channel": "#server-to-user-zoe"})).await;
    assert_eq!(r["event"], "pusher:subscription_error", "{r}");
    assert_eq!(data_of(&r)["status"], 403);
    // A presence member id is no sign-in: zoe's events channel stays closed.
    let channel_data = r#"{"user_id":"zoe"}"#;
    let auth = format!(
        "{KEY}:{}",
        hmac_hex(SECRET, &format!("{socket}:presence-z:{channel_data}"))
    );
    let r = subscribe(
        &mut ws,
        json!({"channel": "presence-z", "auth": auth, "channel_data": channel_data}),
    )
    .await;
    assert_eq!(r["event"], "pusher_internal:subscription_succeeded", "{r}");
    let r = subscribe(&mut ws, json!({"channel": "#server-to-user-zoe"})).await;
    assert_eq!(r["event"], "pusher:subscription_error", "{r}");
    assert_eq!(data_of(&r)["status"], 403);
    // A signin with a forged signature.
    send(
        &mut ws,
        json!({"event": "pusher:signin", "data": {"user_data": "{\"id\":\"zoe\"}", "auth": format!("{KEY}:{}", "0".repeat(64))}}),
    )
    .await;
    let e = next(&mut ws).await;
    assert_eq!(e["event"], "pusher:error", "{e}");
    assert_eq!(e["data"]["code"], 4009);

    // A bad channel name.
    let r = subscribe(&mut ws, json!({"channel": "semi;colon"})).await;
    assert_eq!(r["event"], "pusher:subscription_error");

    // Client events: not on public channels, not too large.
    subscribe(&mut ws, json!({"channel": "news"})).await;
    send(
        &mut ws,
        json!({"event": "client-x", "channel": "news", "data": {}}),
    )
    .await;
    let e = next(&mut ws).await;
    assert_eq!(e["event"], "pusher:error");
    assert!(e["data"]["message"].as_str().unwrap().contains("private"));
    let auth = format!(
        "{KEY}:{}",
        hmac_hex(SECRET, &format!("{socket}:private-big"))
    );
    subscribe(&mut ws, json!({"channel": "private-big", "auth": auth})).await;
    send(
        &mut ws,
        json!({"event": "client-x", "channel": "private-big", "data": "y".repeat(11 * 1024)}),
    )
    .await;
    let e = next(&mut ws).await;
    assert_eq!(e["event"], "pusher:error");
    assert!(e["data"]["message"].as_str().unwrap().contains("larger"));

    // The HTTP API: unsigned, stale and tampered requests are refused.
    let addr = server.local_addr();
    let http = reqwest::Client::new();
    let body = json!({"name": "e", "channel": "news", "data": "{}"}).to_string();
    let path = "/apps/app-id/events";
    let now = tidings_server::auth::unix_now();
    for (query, body, why) in [
        (String::new(), body.clone(), "missing auth_signature"),
        (
            signed("POST", path, &body, now - 3600),
            body.clone(),
            "timestamp expired",
        ),
        (
            signed("POST", path, &body, now),
            body.replace("news", "nows"),
            "body_md5",
        ),
    ] {
        let res = http
            .post(format!("http://{addr}{path}?{query}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let text = res.text().await.unwrap();
        assert!(text.contains(why), "{text}");
    }
    // A good one reaches the bystander, which saw nothing else.
    let res = http
        .post(format!(
            "http://{addr}{path}?{}",
            signed("POST", path, &body, now)
        ))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got = next(&mut bystander).await;
    assert_eq!(got["event"], "e", "{got}");
    assert_eq!(got["channel"], "news");
    server.shutdown().await;
}

#[tokio::test]
async fn an_app_over_its_connection_quota_refuses_with_4004() {
    let mut c = pusher_config();
    c.pusher.apps[0].max_connections = 2;
    let server = start_with(c).await;
    let (_a, _) = open(&server).await;
    let (b, _) = open(&server).await;
    let url = format!("ws://{}/app/{KEY}?protocol=7", server.local_addr());
    let (mut third, _) = ClientBuilder::from_uri(url.parse().unwrap())
        .connect()
        .await
        .unwrap();
    let e = next(&mut third).await;
    assert_eq!(e["event"], "pusher:error", "{e}");
    assert_eq!(e["data"]["code"], 4004);
    // A place freed is a place taken.
    drop(b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (mut ws, _) = ClientBuilder::from_uri(url.parse().unwrap())
            .connect()
            .await
            .unwrap();
        if next(&mut ws).await["event"] == "pusher:connection_established" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_socket_over_the_command_rate_is_told_with_4301() {
    let mut c = pusher_config();
    c.client.max_commands_per_second = 5;
    let server = start_with(c).await;
    let (mut ws, _) = open(&server).await;
    for _ in 0..20 {
        send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    }
    let mut limited = false;
    for _ in 0..20 {
        let m = next(&mut ws).await;
        if m["event"] == "pusher:error" && m["data"]["code"] == 4301 {
            limited = true;
            break;
        }
    }
    assert!(limited, "20 messages at once against 5 per second");
    server.shutdown().await;
}
