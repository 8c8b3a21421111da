//! Presence over real sockets: join/leave in channel order, multi-device
//! users, paged presence, typing rate limit, last seen across a restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tidings_server::config::{ClientPublish, Config, NamespaceOptions};

fn presence_config() -> Config {
    let mut c = config();
    let room = NamespaceOptions {
        presence: true,
        join_leave: true,
        client_publish: ClientPublish::Any,
        anonymous: true,
        ..Default::default()
    };
    c.namespaces.insert("room".into(), room.clone());
    c.namespaces.insert(
        "pu".into(),
        NamespaceOptions {
            presence_per_user: true,
            ..room
        },
    );
    c.namespaces.insert(
        "typing".into(),
        NamespaceOptions {
            history_size: 0,
            client_publish: ClientPublish::Any,
            anonymous: true,
            client_publish_rate: 2,
            ..Default::default()
        },
    );
    c
}

/// The channel's pub/join/leave events as one watcher saw them (the
/// watchers' own joins, which depend on when each subscribed, left out).
fn story(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|m| m["user"] != "watcher")
        .filter_map(|m| match m["push"].as_str()? {
            "pub" => Some(format!("pub {}", m["offset"])),
            "join" | "leave" => Some(format!("{} {}", m["push"].as_str()?, m["client"].as_str()?)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn join_and_leave_are_ordered_with_publications() {
    let server = start_with(presence_config()).await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut w = Raw::connect(&server, Some("watcher")).await;
        w.call(json!({"op": "subscribe", "channel": "room:a"}))
            .await;
        watchers.push(w);
    }
    // Churn (subscribe/unsubscribe) while the API publishes.
    let addr = server.local_addr();
    let publisher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for i in 0..60 {
            http.post(format!("http://{addr}/v1/api/publish"))
                .bearer_auth(API_KEY)
                .json(&json!({"channel": "room:a", "data": i}))
                .send()
                .await
                .unwrap();
        }
    });
    for round in 0..10 {
        let mut c = Raw::connect(&server, Some(&format!("churn{round}"))).await;
        c.call(json!({"op": "subscribe", "channel": "room:a"}))
            .await;
        c.call(json!({"op": "unsubscribe", "channel": "room:a"}))
            .await;
    }
    publisher.await.unwrap();
    // The last publication marks the end of the story for every watcher.
    let (_, last) = api(
        &server,
        "publish",
        json!({"channel": "room:a", "data": "end"}),
    )
    .await;
    let end = last["offset"].as_u64().unwrap();
    let mut stories = Vec::new();
    for w in &mut watchers {
        let mut events = Vec::new();
        loop {
            let m = w.next_non_ping().await.unwrap();
            let done = m["push"] == "pub" && m["offset"] == end;
            events.push(m);
            if done {
                break;
            }
        }
        stories.push(story(&events));
    }
    assert_eq!(
        stories[0].iter().filter(|s| s.starts_with("join")).count(),
        10
    );
    assert_eq!(
        stories[0].iter().filter(|s| s.starts_with("leave")).count(),
        10
    );
    assert_eq!(stories[0], stories[1], "every watcher saw the same order");
    assert_eq!(stories[1], stories[2]);
}

#[tokio::test]
async fn a_user_with_three_connections_counts_once_and_leaves_last() {
    let server = start_with(presence_config()).await;
    let mut watcher = Raw::connect(&server, Some("watcher")).await;
    watcher
        .call(json!({"op": "subscribe", "channel": "pu:a"}))
        .await;
    let mut devices = Vec::new();
    for _ in 0..3 {
        let mut d = Raw::connect(&server, Some("alice")).await;
        d.call(json!({"op": "subscribe", "channel": "pu:a"})).await;
        devices.push(d);
    }
    let (_, stats) = api(&server, "presence_stats", json!({"channel": "pu:a"})).await;
    assert_eq!(stats, json!({"clients": 4, "users": 2}));
    // A subscriber also sees its own join, right after its subscribe reply.
    let own = watcher.next_non_ping().await.unwrap();
    assert_eq!(
        (own["push"].as_str(), own["user"].as_str()),
        (Some("join"), Some("watcher"))
    );
    let joined = watcher.next_non_ping().await.unwrap();
    assert_eq!(
        (joined["push"].as_str(), joined["user"].as_str()),
        (Some("join"), Some("alice"))
    );
    devices.pop();
    devices.pop();
    api(
        &server,
        "publish",
        json!({"channel": "pu:a", "data": "mark"}),
    )
    .await;
    let m = watcher.next_non_ping().await.unwrap();
    assert_eq!(
        m["push"], "pub",
        "no leave while alice still has a connection: {m}"
    );
    devices.pop();
    let left = watcher.next_non_ping().await.unwrap();
    assert_eq!(
        (left["push"].as_str(), left["user"].as_str()),
        (Some("leave"), Some("alice"))
    );
    let (_, stats) = api(&server, "presence_stats", json!({"channel": "pu:a"})).await;
    assert_eq!(stats, json!({"clients": 1, "users": 1}));
}

#[tokio::test]
async fn presence_is_paged() {
    let server = start_with(presence_config()).await;
    let mut members = Vec::new();
    for i in 0..250 {
        let mut c = Raw::connect(&server, Some(&format!("u{i}"))).await;
        c.send(json!({"op": "subscribe", "channel": "room:big"}))
            .await;
        members.push(c);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, s) = api(&server, "presence_stats", json!({"channel": "room:big"})).await;
        if s["clients"] == 250 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut body = json!({"channel": "room:big", "limit": 100});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let (status, page) = api(&server, "presence", body).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for k in page["clients"].as_object().unwrap().keys() {
            assert!(all.insert(k.clone()), "{k} listed twice");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!((all.len(), pages), (250, 3));
}

#[tokio::test]
async fn typing_is_rate_limited_per_connection() {
    let server = start_with(presence_config()).await;
    let mut a = Raw::connect(&server, None).await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = a
            .call(json!({"op": "publish", "channel": "typing:doc", "data": {"typing": true}}))
            .await;
        codes.push(r["error"]["code"].as_u64().unwrap_or(0));
    }
    assert_eq!(codes, [0, 0, 105]);
    assert_eq!(
        a.call(json!({"op": "publish", "channel": "typing:doc", "data": 1}))
            .await["error"]["temporary"],
        true
    );
    // Another connection has its own allowance.
    let mut b = Raw::connect(&server, None).await;
    let r = b
        .call(json!({"op": "publish", "channel": "typing:doc", "data": {"typing": true}}))
        .await;
    assert!(r.get("ok").is_some(), "{r}");
    // After the window, the first connection may type again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = a
        .call(json!({"op": "publish", "channel": "typing:doc", "data": {"typing": false}}))
        .await;
    assert!(r.get("ok").is_some(), "{r}");
}

#[tokio::test]
async fn last_seen_survives_a_restart() {
    let mut config = presence_config();
    config.data_dir = data_dir();
    let server = start_with(config.clone()).await;
    let before = tidings_server::engine::now_ms();
    let mut a = Raw::connect(&server, Some("alice")).await;
    let r = a
        .call(json!({"op": "last_seen", "users": ["alice", "nobody"]}))
        .await;
    let seen = r["ok"]["users"]["alice"].as_u64().unwrap();
    assert!(seen >= before, "{r}");
    assert_eq!(r["ok"]["users"]["nobody"], Value::Null);
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, answer) = api(&server, "last_seen", json!({"users": ["alice"]})).await;
    let at_disconnect = answer["users"]["alice"].as_u64().unwrap();
    assert!(at_disconnect >= seen);
    server.shutdown().await;
    let server = start_with(config).await;
    let (_, answer) = api(&server, "last_seen", json!({"users": ["alice"]})).await;
    assert_eq!(answer["users"]["alice"].as_u64(), Some(at_disconnect));
    server.shutdown().await;
}

#[tokio::test]
async fn a_live_connection_keeps_renewing_its_presence_lease() {
    let mut config = presence_config();
    // Renewed every 200 ms; an unrenewed entry would be gone within ~0.9 s.
    config.presence_ttl = Duration::from_millis(600);
    let server = start_with(config).await;
    let mut member = Raw::connect(&server, Some("bob")).await;
    member
        .call(json!({"op": "subscribe", "channel": "room:lease"}))
        .await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (_, stats) = api(&server, "presence_stats", json!({"channel": "room:lease"})).await;
        assert_eq!(stats, json!({"clients": 1, "users": 1}), "the lease lapsed");
    }
    drop(member);
}
