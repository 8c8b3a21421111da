//! Every command, reply, push and close code of the WebSocket protocol, over real sockets.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn connect_subscribe_publish_receive() {
    let server = start().await;
    let mut a = Raw::connect(&server, Some("alice")).await;
    let mut b = Raw::connect(&server, Some("bob")).await;
    for c in [&mut a, &mut b] {
        let r = c
            .call(json!({"op": "subscribe", "channel": "chat:room"}))
            .await;
        assert_eq!(r["ok"]["offset"], 0, "{r}");
        assert!(r["ok"]["epoch"].is_string());
    }
    let r = a
        .call(json!({"op": "publish", "channel": "chat:room", "data": {"text": "hi"}}))
        .await;
    assert_eq!(r["ok"]["offset"], 1, "{r}");
    let push = b.next_non_ping().await.unwrap();
    assert_eq!(push["push"], "pub");
    assert_eq!(push["channel"], "chat:room");
    assert_eq!(push["offset"], 1);
    assert_eq!(push["data"], json!({"text": "hi"}));
    assert_eq!(push["info"]["user"], "alice");
    // The publisher receives its own publication too.
    assert_eq!(a.next_non_ping().await.unwrap()["offset"], 1);
}

#[tokio::test]
async fn connect_reply_and_connect_subscribe() {
    let server = start().await;
    let mut a = Raw::open(&server).await;
    let r = a
        .call(
            json!({"op": "connect", "token": token("alice"), "name": "t", "version": "1",
            "subscribe": [{"channel": "chat:x"}, {"channel": "nope:x"}]}),
        )
        .await;
    let ok = &r["ok"];
    assert_eq!(ok["user"], "alice");
    assert_eq!(ok["ping_interval"], 25);
    assert!(ok["expires_in"].as_u64().unwrap() > 3500);
    assert!(ok["client"].is_string());
    assert_eq!(ok["subscribed"][0]["ok"]["offset"], 0);
    assert_eq!(ok["subscribed"][1]["error"]["code"], 102);
    let r = a.call(json!({"op": "connect"})).await;
    assert_eq!(error_code(&r), 101);
}

#[tokio::test]
async fn several_messages_per_frame_both_ways() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    a.send_text(concat!(
        r#"{"id":10,"op":"subscribe","channel":"news"}"#,
        "\n",
        r#"{"id":11,"op":"publish","channel":"news","data":1}"#,
        "\n",
        r#"{"id":12,"op":"publish","channel":"news","data":2}"#
    ))
    .await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let m = a.next_non_ping().await.unwrap();
        seen.push(m);
    }
    let ids: Vec<_> = seen.iter().filter_map(|m| m["id"].as_u64()).collect();
    assert_eq!(ids, [10, 11, 12]);
    let offsets: Vec<_> = seen
        .iter()
        .filter(|m| m["push"] == "pub")
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2]);
}

#[tokio::test]
async fn recovery_recovered_and_not() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    let r = a.call(json!({"op": "subscribe", "channel": "feed"})).await;
    let epoch = r["ok"]["epoch"].as_str().unwrap().to_string();
    for i in 1..=5 {
        a.call(json!({"op": "publish", "channel": "feed", "data": i}))
            .await;
    }
    let mut b = Raw::connect(&server, None).await;
    let r = b
        .call(json!({"op": "subscribe", "channel": "feed", "since": {"offset": 2, "epoch": epoch}}))
        .await;
    assert_eq!(r["ok"]["recovered"], true, "{r}");
    let offsets: Vec<_> = r["ok"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5]);
    assert_eq!(r["ok"]["publications"][0]["data"], 3);

    // Wrong epoch: not recovered, with the current position.
    let mut c = Raw::connect(&server, None).await;
    let r = c
        .call(
            json!({"op": "subscribe", "channel": "feed", "since": {"offset": 2, "epoch": "other"}}),
        )
        .await;
    assert_eq!(r["ok"]["recovered"], false);
    assert_eq!(r["ok"]["offset"], 5);
    assert!(r["ok"].get("publications").is_none());

    // Strict asks for an error instead.
    let mut c2 = Raw::connect(&server, None).await;
    let r = c2
        .call(json!({"op": "subscribe", "channel": "feed", "since": {"offset": 2, "epoch": "other"}, "strict": true}))
        .await;
    assert_eq!(error_code(&r), 109);

    // Trimmed beyond history (size 5): not recovered.
    let mut d = Raw::connect(&server, None).await;
    let r = d
        .call(json!({"op": "subscribe", "channel": "small:t"}))
        .await;
    let epoch = r["ok"]["epoch"].as_str().unwrap().to_string();
    for i in 0..8 {
        d.call(json!({"op": "publish", "channel": "small:t", "data": i}))
            .await;
    }
    let mut e = Raw::connect(&server, None).await;
    let r = e
        .call(json!({"op": "subscribe", "channel": "small:t", "since": {"offset": 2, "epoch": epoch.clone()}}))
        .await;
    assert_eq!(r["ok"]["recovered"], false, "{r}");
    let r = e
        .call(json!({"op": "subscribe", "channel": "small:t", "since": {"offset": 3, "epoch": epoch}}))
        .await;
    assert_eq!(error_code(&r), 107, "already subscribed");
}

#[tokio::test]
async fn recovery_is_capped() {
    let mut config = config();
    config.client.recovery_max = 3;
    let server = start_with(config).await;
    let mut a = Raw::connect(&server, None).await;
    let r = a.call(json!({"op": "subscribe", "channel": "feed"})).await;
    let epoch = r["ok"]["epoch"].as_str().unwrap().to_string();
    for i in 0..4 {
        a.call(json!({"op": "publish", "channel": "feed", "data": i}))
            .await;
    }
    let mut b = Raw::connect(&server, None).await;
    let r = b
        .call(json!({"op": "subscribe", "channel": "feed", "since": {"offset": 0, "epoch": epoch.clone()}}))
        .await;
    assert_eq!(
        r["ok"]["recovered"], false,
        "4 missed > recovery_max 3: {r}"
    );
    let mut c = Raw::connect(&server, None).await;
    let r = c
        .call(json!({"op": "subscribe", "channel": "feed", "since": {"offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(r["ok"]["recovered"], true, "3 missed: {r}");
}

#[tokio::test]
async fn live_publications_during_recovery_are_neither_lost_nor_doubled() {
    let server = start().await;
    let mut publisher = Raw::connect(&server, None).await;
    let r = publisher
        .call(json!({"op": "subscribe", "channel": "race"}))
        .await;
    let epoch = r["ok"]["epoch"].as_str().unwrap().to_string();
    for i in 0..50 {
        publisher
            .call(json!({"op": "publish", "channel": "race", "data": i}))
            .await;
    }
    // Publish continuously from the API while subscribers recover from offset 10.
    let addr = server.local_addr();
    let api = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..300 {
            client
                .post(format!("http://{addr}/v1/api/publish"))
                .bearer_auth(API_KEY)
                .json(&json!({"channel": "race", "data": i}))
                .send()
                .await
                .unwrap();
        }
    });
    let mut subs = Vec::new();
    for _ in 0..10 {
        let mut s = Raw::connect(&server, None).await;
        let id = s
            .send(json!({"op": "subscribe", "channel": "race", "since": {"offset": 10, "epoch": epoch}}))
            .await;
        subs.push((s, id));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    api.await.unwrap();
    for (mut s, id) in subs {
        let r = s.reply(id).await;
        assert_eq!(r["ok"]["recovered"], true, "{r}");
        let mut offsets: Vec<u64> = r["ok"]["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        while offsets.last() != Some(&350) {
            let m = s.next_non_ping().await.unwrap();
            if m["push"] == "pub" {
                offsets.push(m["offset"].as_u64().unwrap());
            }
        }
        let want: Vec<u64> = (11..=350).collect();
        assert_eq!(offsets, want);
    }
}

#[tokio::test]
async fn unsubscribe_history_and_errors() {
    let server = start().await;
    let mut a = Raw::connect(&server, Some("alice")).await;
    a.call(json!({"op": "subscribe", "channel": "chat:h"}))
        .await;
    for i in 1..=4 {
        a.call(json!({"op": "publish", "channel": "chat:h", "data": i}))
            .await;
    }
    let r = a
        .call(json!({"op": "history", "channel": "chat:h", "limit": 2}))
        .await;
    let data: Vec<_> = r["ok"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, [json!(1), json!(2)]);
    assert_eq!(r["ok"]["offset"], 4);
    let epoch = r["ok"]["epoch"].clone();
    let r = a
        .call(json!({"op": "history", "channel": "chat:h", "reverse": true, "limit": 1}))
        .await;
    assert_eq!(r["ok"]["publications"][0]["offset"], 4);
    let r = a
        .call(json!({"op": "history", "channel": "chat:h", "since": {"offset": 3, "epoch": epoch}}))
        .await;
    assert_eq!(r["ok"]["publications"].as_array().unwrap().len(), 1);
    let r = a
        .call(json!({"op": "history", "channel": "chat:h", "since": {"offset": 3, "epoch": "zz"}}))
        .await;
    assert_eq!(error_code(&r), 109);
    let r = a.call(json!({"op": "history", "channel": "eph:x"})).await;
    assert_eq!(error_code(&r), 101);

    let r = a
        .call(json!({"op": "unsubscribe", "channel": "chat:h"}))
        .await;
    assert_eq!(r["ok"], json!({}));
    let r = a
        .call(json!({"op": "unsubscribe", "channel": "chat:h"}))
        .await;
    assert_eq!(error_code(&r), 108);
    // `chat` lets only subscribers publish.
    let r = a
        .call(json!({"op": "publish", "channel": "chat:h", "data": 5}))
        .await;
    assert_eq!(error_code(&r), 103);
    let r = a
        .call(json!({"op": "publish", "channel": "api:x", "data": 5}))
        .await;
    assert_eq!(error_code(&r), 103, "client_publish = none");
    let r = a
        .call(json!({"op": "subscribe", "channel": "nope:x"}))
        .await;
    assert_eq!(error_code(&r), 102);
    let r = a
        .call(json!({"op": "subscribe", "channel": "bad channel"}))
        .await;
    assert_eq!(error_code(&r), 101);
    let r = a
        .call(json!({"op": "subscribe", "channel": "chat:dm#bob,carol"}))
        .await;
    assert_eq!(error_code(&r), 103);
    let r = a
        .call(json!({"op": "subscribe", "channel": "chat:dm#alice,bob"}))
        .await;
    assert!(r.get("ok").is_some(), "{r}");
    let big = "x".repeat(70 * 1024);
    let r = a
        .call(json!({"op": "publish", "channel": "chat:dm#alice,bob", "data": big}))
        .await;
    assert_eq!(error_code(&r), 104);

    // Anonymous connections may not use `chat`.
    let mut anon = Raw::connect(&server, None).await;
    let r = anon
        .call(json!({"op": "subscribe", "channel": "chat:h"}))
        .await;
    assert_eq!(error_code(&r), 103);
}

#[tokio::test]
async fn ephemeral_channels_have_no_offsets() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    let r = a
        .call(json!({"op": "subscribe", "channel": "eph:typing"}))
        .await;
    assert_eq!(r["ok"], json!({}));
    let r = a
        .call(json!({"op": "publish", "channel": "eph:typing", "data": "t"}))
        .await;
    assert_eq!(r["ok"], json!({}));
    let m = a.next_non_ping().await.unwrap();
    assert_eq!(m["push"], "pub");
    assert!(m.get("offset").is_none());
}

#[tokio::test]
async fn presence_commands() {
    let server = start().await;
    let mut a = Raw::connect(&server, Some("alice")).await;
    let mut b = Raw::connect(&server, Some("bob")).await;
    a.call(json!({"op": "subscribe", "channel": "chat:p"}))
        .await;
    let r = b
        .call(json!({"op": "subscribe", "channel": "chat:p"}))
        .await;
    assert_eq!(r["ok"]["presence"].as_object().unwrap().len(), 2);
    let r = a
        .call(json!({"op": "presence_stats", "channel": "chat:p"}))
        .await;
    assert_eq!(r["ok"], json!({"clients": 2, "users": 2}));
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = a.call(json!({"op": "presence", "channel": "chat:p"})).await;
    let users: Vec<_> = r["ok"]["clients"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["user"].clone())
        .collect();
    assert_eq!(users, [json!("alice")]);
    let r = a.call(json!({"op": "presence", "channel": "feed"})).await;
    assert_eq!(
        error_code(&r),
        101,
        "presence is off in the default namespace"
    );
}

#[tokio::test]
async fn refresh_renews_and_checks_user() {
    let server = start().await;
    let mut a = Raw::connect(&server, Some("alice")).await;
    let r = a
        .call(json!({"op": "refresh", "token": token("alice")}))
        .await;
    assert!(r["ok"]["expires_in"].as_u64().unwrap() > 3500);
    let r = a
        .call(json!({"op": "refresh", "token": token("mallory")}))
        .await;
    assert_eq!(error_code(&r), 103);
    let r = a.call(json!({"op": "refresh", "token": "junk"})).await;
    assert_eq!(error_code(&r), 103);
}

#[tokio::test]
async fn token_expiry_disconnects_with_3005() {
    let server = start().await;
    let short =
        tidings_server::auth::mint_token(SECRET, "alice", Some(Duration::from_secs(1)), None)
            .unwrap();
    let mut a = Raw::open(&server).await;
    let r = a.call(json!({"op": "connect", "token": short})).await;
    assert_eq!(r["ok"]["expires_in"], 1);
    let d = a.expect_disconnect().await;
    assert_eq!(d["code"], 3005);
    assert_eq!(d["reconnect"], true);
}

#[tokio::test]
async fn bad_tokens() {
    let server = start().await;
    let mut a = Raw::open(&server).await;
    let r = a.call(json!({"op": "connect", "token": "not-a-jwt"})).await;
    assert_eq!(error_code(&r), 103);
    let d = a.expect_disconnect().await;
    assert_eq!(
        (d["code"].as_u64(), d["reconnect"].as_bool()),
        (Some(3501), Some(false))
    );

    let expired = {
        use tidings_server::auth::{Claims, unix_now};
        let claims = Claims {
            sub: "a".into(),
            exp: Some(unix_now() - 600),
            info: None,
            channels: None,
            channel: None,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let mut b = Raw::open(&server).await;
    let r = b.call(json!({"op": "connect", "token": expired})).await;
    assert_eq!(error_code(&r), 106);
    assert_eq!(b.expect_disconnect().await["code"], 3005);
}

#[tokio::test]
async fn ping_pong_and_no_pong() {
    let mut config = config();
    config.client.ping_interval = Duration::from_millis(300);
    config.client.pong_timeout = Duration::from_millis(300);
    let server = start_with(config).await;
    let mut good = Raw::connect(&server, None).await;
    let mut silent = Raw::connect(&server, None).await;
    let watcher = tokio::spawn(async move {
        // Answers three pings, then checks it is still connected.
        for _ in 0..3 {
            let m = good.next().await.unwrap();
            assert_eq!(m["push"], "ping");
            good.send_text(r#"{"op":"pong"}"#).await;
        }
        let r = good
            .call(json!({"op": "subscribe", "channel": "alive"}))
            .await;
        assert!(r.get("ok").is_some(), "{r}");
    });
    let d = silent.expect_disconnect().await;
    assert_eq!(d["code"], 3004);
    watcher.await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_spreads_reconnects() {
    let server = start().await;
    let spread = server.node().config.shutdown_spread.as_millis() as u64;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Raw::connect(&server, None).await);
    }
    let stop = tokio::spawn(server.shutdown());
    let mut delays = Vec::new();
    for mut c in clients {
        let d = c.expect_disconnect().await;
        assert_eq!(d["code"], 3001);
        assert_eq!(d["reconnect"], true);
        let delay = d["delay_ms"].as_u64().unwrap();
        assert!(delay <= spread, "{delay} > {spread}");
        delays.push(delay);
        assert!(c.next().await.is_none(), "closed after the disconnect push");
    }
    stop.await.unwrap();
    delays.sort_unstable();
    delays.dedup();
    assert!(delays.len() > 1, "delays are spread, not all equal");
}

#[tokio::test]
async fn health_and_metrics() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    a.call(json!({"op": "subscribe", "channel": "m"})).await;
    a.call(json!({"op": "publish", "channel": "m", "data": 1}))
        .await;
    a.call(json!({"op": "subscribe", "channel": "nope:m"}))
        .await;
    let base = format!("http://{}", server.local_addr());
    let health: serde_json::Value = reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tidings_connections 1",
        "tidings_subscriptions 1",
        "tidings_channels 1",
        "tidings_publications_in_total 1",
        "tidings_command_errors_total{code=\"102\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("tidings_bytes_out_total"));
    assert!(text.contains("tidings_slow_consumer_disconnects_total"));
}
