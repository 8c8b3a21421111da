//! Proxy hooks against a real HTTP backend started by the test: connect,
//! subscribe, publish and refresh decided by the backend, and what happens
//! when the backend is slow, down or answers garbage.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tidings_server::config::{ClientPublish, Config, NamespaceOptions, ProxyFail, SubscribeRule};
use tokio_websockets::ClientBuilder;

/// What the backend saw and decides on: every call by hook, and the
/// auction's current price.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(String, Value)>>,
    price: Mutex<u64>,
}

impl Seen {
    fn calls_to(&self, hook: &str) -> Vec<Value> {
        self.calls
            .lock()
            .iter()
            .filter(|(h, _)| h == hook)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn now_s() -> u64 {
    tidings_server::auth::unix_now()
}

/// The app's backend: users from the `session` cookie, one secret channel,
/// bids above the current price only (stamped with the server's time).
async fn backend() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen {
        price: Mutex::new(100),
        ..Default::default()
    });
    async fn record(seen: &Seen, hook: &str, body: &Value) {
        seen.calls.lock().push((hook.into(), body.clone()));
    }
    let app = Router::new()
        .route(
            "/connect",
            post(
                |State(seen): State<Arc<Seen>>, Json(body): Json<Value>| async move {
                    record(&seen, "connect", &body).await;
                    // The client's headers come in the body.
                    let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
                    let user = cookie.strip_prefix("session=").unwrap_or("");
                    Json(match user {
                        "banned" => json!({"error": {"code": 1403, "message": "you are banned"}}),
                        "short" | "once" => json!({"result": {"user": user, "expire_at": now_s() + 1}}),
                        "" => json!({"result": {}}),
                        u => json!({"result": {
                            "user": u,
                            "info": {"role": "bidder"},
                            "data": {"welcome": u},
                            "channels": ["auction:news"],
                        }}),
                    })
                },
            ),
        )
        .route(
            "/refresh",
            post(|State(seen): State<Arc<Seen>>, Json(body): Json<Value>| async move {
                record(&seen, "refresh", &body).await;
                Json(if body["user"] == "once" {
                    json!({"error": {"code": 1401, "message": "session over"}})
                } else {
                    json!({"result": {"expire_at": now_s() + 3600}})
                })
            }),
        )
        .route(
            "/subscribe",
            post(|State(seen): State<Arc<Seen>>, Json(body): Json<Value>| async move {
                record(&seen, "subscribe", &body).await;
                let channel = body["channel"].as_str().unwrap_or("");
                Json(if channel == "auction:secret" {
                    json!({"error": {"code": 103, "message": "not for you"}})
                } else if channel.starts_with("auction:timed") {
                    json!({"result": {"expire_at": now_s() + 1}})
                } else {
                    json!({"result": {}})
                })
            }),
        )
        .route(
            "/sub_refresh",
            post(|State(seen): State<Arc<Seen>>, Json(body): Json<Value>| async move {
                record(&seen, "sub_refresh", &body).await;
                Json(match body["channel"].as_str().unwrap_or("") {
                    "auction:timed-ok" => json!({"result": {"expire_at": now_s() + 3600}}),
                    // An end already past: the subscription ends, nobody asks again.
                    "auction:timed-past" => json!({"result": {"expire_at": now_s() - 10}}),
                    _ => json!({"error": {"code": 1410, "message": "lot closed"}}),
                })
            }),
        )
        .route(
            "/publish",
            post(|State(seen): State<Arc<Seen>>, Json(body): Json<Value>| async move {
                record(&seen, "publish", &body).await;
                let bid = body["data"]["bid"].as_u64().unwrap_or(0);
                let mut price = seen.price.lock();
                Json(if bid <= *price {
                    json!({"error": {"code": 1001, "message": format!("bid below the current price {price}")}})
                } else {
                    *price = bid;
                    json!({"result": {"data": {"bid": bid, "server_time": now_s()}}})
                })
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Json(json!({"result": {}}))
            }),
        )
        .route("/garbage", post(|| async { "<html>oops</html>" }))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// A URL where nothing listens.
async fn down_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/hook")
}

fn auction(backend: &str, fail: ProxyFail) -> NamespaceOptions {
    NamespaceOptions {
        client_publish: ClientPublish::Subscribers,
        subscribe_proxy: Some(format!("{backend}/subscribe")),
        publish_proxy: Some(format!("{backend}/publish")),
        sub_refresh_proxy: Some(format!("{backend}/sub_refresh")),
        proxy_fail: fail,
        ..Default::default()
    }
}

fn hooked_config(backend: &str) -> Config {
    let mut c = config();
    c.proxy.connect = Some(format!("{backend}/connect"));
    c.proxy.refresh = Some(format!("{backend}/refresh"));
    c.proxy.timeout = Duration::from_millis(500);
    c.namespaces
        .insert("auction".into(), auction(backend, ProxyFail::Closed));
    c
}

/// Opens a WebSocket with a `session` cookie (none when empty) and sends
/// `connect` without a token; returns the socket and the reply.
async fn connect_as(server: &tidings_server::Server, session: &str) -> (Raw, Value) {
    let mut builder = ClientBuilder::from_uri(ws_url(server).parse().unwrap());
    if !session.is_empty() {
        builder = builder
            .add_header(
                "cookie".try_into().unwrap(),
                format!("session={session}").try_into().unwrap(),
            )
            .unwrap();
    }
    let (ws, _) = builder.connect().await.expect("websocket connects");
    let mut raw = Raw::from_stream(ws);
    let reply = raw.call(json!({"op": "connect"})).await;
    (raw, reply)
}

#[tokio::test]
async fn the_connect_hook_names_the_user_refuses_and_is_skipped_for_tokens() {
    let (backend, seen) = backend().await;
    let server = start_with(hooked_config(&backend)).await;

    let (_alice, reply) = connect_as(&server, "alice").await;
    let ok = &reply["ok"];
    assert_eq!(ok["user"], "alice", "{reply}");
    assert_eq!(ok["data"], json!({"welcome": "alice"}));
    // The hook's channels are subscribed server-side.
    assert_eq!(ok["subscribed"][0]["channel"], "auction:news");
    assert!(ok["subscribed"][0]["ok"].is_object(), "{reply}");

    // What the backend was told: the transport, the address, the cookie.
    let call = &seen.calls_to("connect")[0];
    assert_eq!(call["transport"], "websocket");
    assert_eq!(call["ip"], "127.0.0.1");
    assert_eq!(call["headers"]["cookie"], "session=alice");
    assert_eq!(call["user"], "");

    // A refusal reaches the client with the backend's code and message.
    let (mut banned, reply) = connect_as(&server, "banned").await;
    assert_eq!(error_code(&reply), 1403);
    assert_eq!(reply["error"]["message"], "you are banned");
    assert_eq!(banned.expect_disconnect().await["code"], 3502);

    // No cookie: the backend allows without a user, the connection is anonymous.
    let (_anon, reply) = connect_as(&server, "").await;
    assert_eq!(reply["ok"]["user"], "");

    // A connection token decides by itself: the hook is not asked.
    let before = seen.calls_to("connect").len();
    let _bob = Raw::connect(&server, Some("bob")).await;
    assert_eq!(seen.calls_to("connect").len(), before);
    server.shutdown().await;
}

#[tokio::test]
async fn the_subscribe_hook_refuses_one_channel() {
    let (backend, seen) = backend().await;
    let server = start_with(hooked_config(&backend)).await;
    let (mut alice, _) = connect_as(&server, "alice").await;
    let reply = alice
        .call(json!({"op": "subscribe", "channel": "auction:secret"}))
        .await;
    assert_eq!(error_code(&reply), 103);
    assert_eq!(reply["error"]["message"], "not for you");
    let reply = alice
        .call(json!({"op": "subscribe", "channel": "auction:lot1"}))
        .await;
    assert!(reply["ok"].is_object(), "{reply}");
    let asked: Vec<Value> = seen
        .calls_to("subscribe")
        .iter()
        .map(|c| c["channel"].clone())
        .collect();
    assert!(asked.contains(&json!("auction:lot1")));
    // The backend knows who asks.
    assert!(
        seen.calls_to("subscribe")
            .iter()
            .all(|c| c["user"] == "alice")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_publish_hook_validates_bids_and_rewrites_them() {
    let (backend, _seen) = backend().await;
    let server = start_with(hooked_config(&backend)).await;
    let (mut alice, _) = connect_as(&server, "alice").await;
    let (mut watcher, _) = connect_as(&server, "watcher").await;
    for c in [&mut alice, &mut watcher] {
        let r = c
            .call(json!({"op": "subscribe", "channel": "auction:lot1"}))
            .await;
        assert!(r["ok"].is_object(), "{r}");
    }
    let low = alice
        .call(json!({"op": "publish", "channel": "auction:lot1", "data": {"bid": 50}}))
        .await;
    assert_eq!(error_code(&low), 1001);
    assert_eq!(low["error"]["message"], "bid below the current price 100");
    let high = alice
        .call(json!({"op": "publish", "channel": "auction:lot1", "data": {"bid": 150}}))
        .await;
    assert!(high["ok"].is_object(), "{high}");
    // Subscribers get what the backend rewrote, and only the accepted bid.
    let pub_ = loop {
        let m = watcher.next_non_ping().await.expect("a push");
        if m["push"] == "pub" {
            break m;
        }
    };
    assert_eq!(pub_["data"]["bid"], 150);
    assert!(pub_["data"]["server_time"].as_u64().unwrap() > 0, "{pub_}");
    assert_eq!(pub_["offset"], 1, "the refused bid took no offset");

    // The client HTTP action goes through the same hook.
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/client/publish", server.local_addr()))
        .header("cookie", "session=carol")
        .json(&json!({"channel": "auction:lot1", "data": {"bid": 120}}))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], 1001, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_refresh_hook_extends_or_ends_a_connection() {
    let (backend, seen) = backend().await;
    let server = start_with(hooked_config(&backend)).await;
    let (mut short, reply) = connect_as(&server, "short").await;
    assert!(reply["ok"]["expires_in"].as_u64().unwrap() <= 1, "{reply}");
    let (mut once, _) = connect_as(&server, "once").await;
    // `once` is refused at its refresh: it is disconnected (3005) with the
    // backend's message.
    let d = once.expect_disconnect().await;
    assert_eq!(d["code"], 3005, "{d}");
    assert_eq!(d["reason"], "session over");
    // `short` was extended: it still answers after its first expiry.
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen
        .calls_to("refresh")
        .iter()
        .all(|c| c["user"] != "short")
    {
        assert!(
            Instant::now() < deadline,
            "the refresh hook was never called"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = short
        .call(json!({"op": "presence_stats", "channel": "chat:x"}))
        .await;
    assert!(r.get("id").is_some(), "{r}");
    assert!(
        short.next_within(Duration::from_millis(500)).await.is_err(),
        "no disconnect after the refresh"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_backend_fails_closed_open_or_by_the_rules() {
    let (backend, _seen) = backend().await;
    let down = down_url().await;
    let mut c = hooked_config(&backend);
    c.proxy.timeout = Duration::from_millis(300);
    let mut slow = auction(&backend, ProxyFail::Closed);
    slow.subscribe_proxy = Some(format!("{backend}/slow"));
    slow.publish_proxy = Some(format!("{backend}/garbage"));
    c.namespaces.insert("slow".into(), slow);
    let mut open = auction(&backend, ProxyFail::Open);
    open.subscribe_proxy = Some(down.clone());
    open.publish_proxy = Some(down.clone());
    c.namespaces.insert("open".into(), open);
    let mut rules = auction(&backend, ProxyFail::Rules);
    rules.subscribe_proxy = Some(format!("{backend}/garbage"));
    rules.subscribe = Some(SubscribeRule::Token);
    c.namespaces.insert("rules".into(), rules);
    // Publishing is checked in a namespace whose subscribe hook allows.
    let mut garbage_pub = auction(&backend, ProxyFail::Closed);
    garbage_pub.publish_proxy = Some(format!("{backend}/garbage"));
    c.namespaces.insert("garbage".into(), garbage_pub);
    let server = start_with(c).await;
    let mut bob = Raw::connect(&server, Some("bob")).await;

    // Closed: a temporary error, and no longer than the timeout.
    let started = Instant::now();
    let r = bob
        .call(json!({"op": "subscribe", "channel": "slow:1"}))
        .await;
    assert_eq!(error_code(&r), 100, "{r}");
    assert_eq!(r["error"]["temporary"], true);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited {:?} for a backend that takes 3 s",
        started.elapsed()
    );
    let r = bob
        .call(json!({"op": "subscribe", "channel": "garbage:1"}))
        .await;
    assert!(r["ok"].is_object(), "{r}");
    let r = bob
        .call(json!({"op": "publish", "channel": "garbage:1", "data": {"bid": 500}}))
        .await;
    assert_eq!(error_code(&r), 100, "garbage fails closed: {r}");

    // Open: let through.
    let r = bob
        .call(json!({"op": "subscribe", "channel": "open:1"}))
        .await;
    assert!(r["ok"].is_object(), "{r}");
    let r = bob
        .call(json!({"op": "publish", "channel": "open:1", "data": {"bid": 1}}))
        .await;
    assert!(r["ok"].is_object(), "{r}");

    // Rules: the namespace's own rule (a channel token) decides.
    let r = bob
        .call(json!({"op": "subscribe", "channel": "rules:1"}))
        .await;
    assert_eq!(error_code(&r), 103, "{r}");
    let channel_token =
        tidings_server::auth::mint_claims(SECRET, &json!({"sub": "bob", "channel": "rules:1"}))
            .unwrap();
    let r = bob
        .call(json!({"op": "subscribe", "channel": "rules:1", "token": channel_token}))
        .await;
    assert!(r["ok"].is_object(), "{r}");
    let failed = metric(
        &server,
        "tidings_proxy_calls_total{hook=\"subscribe\",result=\"unavailable\"}",
    )
    .await
    .unwrap_or(0.0);
    assert!(failed >= 3.0, "{failed}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_connect_hook_that_is_down_fails_closed_or_open() {
    let down = down_url().await;
    let mut c = config();
    c.proxy.connect = Some(down.clone());
    let server = start_with(c.clone()).await;
    let (mut client, reply) = connect_as(&server, "alice").await;
    assert_eq!(error_code(&reply), 100);
    assert_eq!(reply["error"]["temporary"], true);
    let d = client.expect_disconnect().await;
    assert_eq!(d["code"], 3006, "reconnect later: {d}");
    server.shutdown().await;

    c.proxy.fail = ProxyFail::Open;
    let server = start_with(c).await;
    let (_client, reply) = connect_as(&server, "alice").await;
    assert_eq!(reply["ok"]["user"], "", "let in, as anonymous: {reply}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_sub_refresh_hook_extends_or_ends_a_subscription() {
    let (backend, seen) = backend().await;
    let server = start_with(hooked_config(&backend)).await;
    let (mut alice, _) = connect_as(&server, "alice").await;
    for channel in [
        "auction:timed-ok",
        "auction:timed-end",
        "auction:timed-past",
    ] {
        let r = alice
            .call(json!({"op": "subscribe", "channel": channel}))
            .await;
        assert!(r["ok"].is_object(), "{r}");
    }
    // The subscribe hook gave each an end one second away; at it (plus the
    // leeway), the sub_refresh hook decides.
    let mut ended = std::collections::BTreeMap::new();
    while ended.len() < 2 {
        let m = alice.next_non_ping().await.expect("an unsub push");
        if m["push"] == "unsub" {
            ended.insert(m["channel"].as_str().unwrap().to_string(), m.clone());
        }
    }
    assert_eq!(ended["auction:timed-end"]["code"], 3005);
    assert_eq!(ended["auction:timed-end"]["reason"], "lot closed");
    assert_eq!(ended["auction:timed-past"]["code"], 3005);
    assert!(!ended.contains_key("auction:timed-ok"));
    // The extended one still delivers.
    let (status, _) = api(
        &server,
        "publish",
        json!({"channel": "auction:timed-ok", "data": {"bid": 1}}),
    )
    .await;
    assert_eq!(status, 200);
    let m = alice.next_non_ping().await.unwrap();
    assert_eq!(m["push"], "pub", "{m}");
    assert_eq!(m["channel"], "auction:timed-ok");
    let asked = |channel: &str| {
        seen.calls_to("sub_refresh")
            .iter()
            .filter(|c| c["channel"] == channel)
            .count()
    };
    assert_eq!(
        asked("auction:timed-past"),
        1,
        "an end in the past is not asked again"
    );
    assert_eq!(asked("auction:timed-ok"), 1);
    server.shutdown().await;
}
