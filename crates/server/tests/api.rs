//! The HTTP server API, `POST /v1/api/<method>`, over real sockets: every
//! method's answer, its errors and their codes, paging, what it does to
//! connections, and idempotency (also under races).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Offsets of an array of publications.
fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of publications, got {publications}"))
        .iter()
        .map(|p| p["offset"].as_u64().expect("publication has an offset"))
        .collect()
}

/// Keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// Asserts an API error answer: status and `{"error": {"code", "message"}}`.
#[track_caller]
fn assert_api_error(answer: &(u16, Value), status: u16, code: u64) {
    let (s, body) = answer;
    assert_eq!(*s, status, "status of {body}");
    assert_eq!(body["error"]["code"], code, "code of {body}");
    assert!(
        body["error"]["message"].is_string(),
        "an error carries a message: {body}"
    );
}

/// The next `pub` push (skipping pings), or panics.
async fn next_pub(raw: &mut Raw) -> Value {
    let m = raw
        .next_non_ping()
        .await
        .expect("connection open while waiting for a publication");
    assert_eq!(m["push"], "pub", "expected a publication, got {m}");
    m
}

/// Subscribes and returns the epoch of the channel.
async fn subscribe(raw: &mut Raw, channel: &str) -> Value {
    let r = raw
        .call(json!({"op": "subscribe", "channel": channel}))
        .await;
    assert!(r.get("ok").is_some(), "subscribe {channel}: {r}");
    r["ok"]["epoch"].clone()
}

/// Connects as `user`; returns the connection and its client id from the connect reply.
async fn connect_with_id(server: &tidings_server::Server, user: &str) -> (Raw, String) {
    let mut raw = Raw::open(server).await;
    let r = raw
        .call(json!({"op": "connect", "token": token(user)}))
        .await;
    let client = r["ok"]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("connect failed: {r}"))
        .to_string();
    (raw, client)
}

#[tokio::test]
async fn publish_answers_offset_and_epoch_and_reaches_subscribers() {
    let server = start().await;
    let mut sub = Raw::connect(&server, None).await;
    let epoch = subscribe(&mut sub, "news").await;

    let (status, body) = api(
        &server,
        "publish",
        json!({"channel": "news", "data": {"text": "hi"}, "tags": {"kind": "greeting"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["epoch", "offset"], "{body}");
    assert_eq!(body["offset"], 1);
    assert_eq!(body["epoch"], epoch, "the epoch the subscriber was given");

    let p = next_pub(&mut sub).await;
    assert_eq!(p["channel"], "news");
    assert_eq!(p["offset"], 1);
    assert_eq!(p["epoch"], epoch);
    assert_eq!(p["data"], json!({"text": "hi"}));
    assert_eq!(p["tags"], json!({"kind": "greeting"}));
    assert!(
        p.get("info").is_none(),
        "the server API publishes as no client: {p}"
    );

    // Ephemeral channels: accepted, no offset, no epoch.
    let (status, body) = api(&server, "publish", json!({"channel": "eph:x", "data": 1})).await;
    assert_eq!((status, body), (200, json!({})));

    // Any JSON value is data, kept as sent.
    for data in [
        json!(null),
        json!([1, "two", {"3": 4}]),
        json!("s"),
        json!(2.5),
    ] {
        let (status, body) =
            api(&server, "publish", json!({"channel": "news", "data": data})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(next_pub(&mut sub).await["data"], data);
    }
}

#[tokio::test]
async fn broadcast_answers_one_result_per_channel() {
    let server = start().await;
    let mut a = Raw::connect(&server, None).await;
    let epoch_a = subscribe(&mut a, "b.one").await;
    let mut b = Raw::connect(&server, None).await;
    subscribe(&mut b, "eph:two").await;

    let (status, body) = api(
        &server,
        "broadcast",
        json!({"channels": ["b.one", "eph:two", "nope:x", "bad channel", "b.one"], "data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["results"]);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{body}");
    assert_eq!(results[0], json!({"offset": 1, "epoch": epoch_a}));
    assert_eq!(results[1], json!({}), "ephemeral: no offset");
    assert_eq!(results[2]["error"]["code"], 102, "{body}");
    assert_eq!(results[3]["error"]["code"], 101, "{body}");
    assert_eq!(results[4], json!({"offset": 2, "epoch": epoch_a}));

    assert_eq!(next_pub(&mut a).await["offset"], 1);
    assert_eq!(next_pub(&mut a).await["offset"], 2);
    let p = next_pub(&mut b).await;
    assert_eq!(
        (p["channel"].clone(), p["data"].clone()),
        (json!("eph:two"), json!({"n": 1}))
    );
    assert!(p.get("offset").is_none());

    // Data over the limit: every channel answers 104, the call itself is fine.
    let big = "x".repeat(70 * 1024);
    let (status, body) = api(
        &server,
        "broadcast",
        json!({"channels": ["b.one", "eph:two"], "data": big}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for r in body["results"].as_array().unwrap() {
        assert_eq!(r["error"]["code"], 104, "{body}");
    }
    // A missing `channels` is a bad request.
    assert_api_error(
        &api(&server, "broadcast", json!({"data": 1})).await,
        400,
        101,
    );
}

#[tokio::test]
async fn history_answers() {
    let server = start().await;
    // A channel nobody published to: empty, at offset 0, with an epoch.
    let (status, body) = api(&server, "history", json!({"channel": "h.empty"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["epoch", "offset", "publications"]);
    assert_eq!(body["publications"], json!([]));
    assert_eq!(body["offset"], 0);
    assert!(body["epoch"].is_string());

    for i in 1..=5 {
        let (status, body) = api(&server, "publish", json!({"channel": "h", "data": i})).await;
        assert_eq!((status, body["offset"].as_u64()), (200, Some(i)));
    }
    let (status, body) = api(&server, "history", json!({"channel": "h"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(offsets(&body["publications"]), [1, 2, 3, 4, 5]);
    assert_eq!(body["offset"], 5);
    let epoch = body["epoch"].clone();
    let first = &body["publications"][0];
    assert_eq!(first["data"], 1);
    assert!(first["time"].as_u64().unwrap() > 0, "{first}");

    let (_, body) = api(&server, "history", json!({"channel": "h", "limit": 2})).await;
    assert_eq!(offsets(&body["publications"]), [1, 2]);
    assert_eq!(body["offset"], 5, "the top, not the last returned");
    let (_, body) = api(
        &server,
        "history",
        json!({"channel": "h", "limit": 2, "reverse": true}),
    )
    .await;
    assert_eq!(offsets(&body["publications"]), [5, 4]);
    let (_, body) = api(
        &server,
        "history",
        json!({"channel": "h", "since": {"offset": 3, "epoch": epoch}}),
    )
    .await;
    assert_eq!(offsets(&body["publications"]), [4, 5]);

    assert_api_error(
        &api(
            &server,
            "history",
            json!({"channel": "h", "since": {"offset": 3, "epoch": "another"}}),
        )
        .await,
        409,
        109,
    );
    assert_api_error(
        &api(&server, "history", json!({"channel": "eph:h"})).await,
        400,
        101,
    );
    assert_api_error(
        &api(&server, "history", json!({"channel": "nope:h"})).await,
        404,
        102,
    );
    assert_api_error(&api(&server, "history", json!({})).await, 400, 101);

    // History size 5: older publications are gone.
    for i in 0..8 {
        api(&server, "publish", json!({"channel": "small:h", "data": i})).await;
    }
    let (_, body) = api(&server, "history", json!({"channel": "small:h"})).await;
    assert_eq!(offsets(&body["publications"]), [4, 5, 6, 7, 8]);
}

#[tokio::test]
async fn presence_and_presence_stats_answers() {
    let server = start().await;
    let (mut a, client_a) = connect_with_id(&server, "alice").await;
    let (mut b1, client_b1) = connect_with_id(&server, "bob").await;
    let (mut b2, client_b2) = connect_with_id(&server, "bob").await;
    for c in [&mut a, &mut b1, &mut b2] {
        subscribe(c, "chat:p").await;
    }
    let (status, body) = api(&server, "presence", json!({"channel": "chat:p"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["clients"]);
    let clients = &body["clients"];
    let mut want = vec![client_a.clone(), client_b1.clone(), client_b2.clone()];
    want.sort();
    assert_eq!(keys(clients), want);
    assert_eq!(clients[&client_a]["user"], "alice");
    assert_eq!(clients[&client_b1]["user"], "bob");
    assert_eq!(clients[&client_b2]["client"], client_b2);

    let (status, body) = api(&server, "presence_stats", json!({"channel": "chat:p"})).await;
    assert_eq!((status, body), (200, json!({"clients": 3, "users": 2})));

    // Leaving is seen once the unsubscribe is answered.
    let r = b2
        .call(json!({"op": "unsubscribe", "channel": "chat:p"}))
        .await;
    assert_eq!(r["ok"], json!({}));
    let (_, body) = api(&server, "presence_stats", json!({"channel": "chat:p"})).await;
    assert_eq!(body, json!({"clients": 2, "users": 2}));

    let (status, body) = api(&server, "presence", json!({"channel": "chat:nobody"})).await;
    assert_eq!((status, body), (200, json!({"clients": {}})));
    let (status, body) = api(&server, "presence_stats", json!({"channel": "chat:nobody"})).await;
    assert_eq!((status, body), (200, json!({"clients": 0, "users": 0})));

    for method in ["presence", "presence_stats"] {
        // Presence is off in the default namespace.
        assert_api_error(
            &api(&server, method, json!({"channel": "feed"})).await,
            400,
            101,
        );
        assert_api_error(
            &api(&server, method, json!({"channel": "nope:p"})).await,
            404,
            102,
        );
        assert_api_error(&api(&server, method, json!({})).await, 400, 101);
    }
}

#[tokio::test]
async fn api_key_is_required() {
    let server = start().await;
    let wrong = "Bearer not-the-key".to_string();
    let basic = format!("Basic {API_KEY}");
    let bare = API_KEY.to_string();
    let methods = [
        "publish",
        "broadcast",
        "history",
        "channels",
        "disconnect",
        "unsubscribe",
        "info",
        "presence",
        "presence_stats",
        "no_such_method",
    ];
    for method in methods {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(basic.as_str()),
            Some(bare.as_str()),
        ] {
            let (status, text) = api_raw(
                &server,
                method,
                auth,
                &[],
                json!({"channel": "locked", "data": 1}).to_string(),
            )
            .await;
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {auth:?}: not JSON ({e}): {text}"));
            assert_api_error(&(status, body), 401, 103);
        }
    }
    // Nothing was published by the refused calls.
    let (status, body) = api(&server, "history", json!({"channel": "locked"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["offset"], 0, "{body}");
}

#[tokio::test]
async fn unknown_method_and_malformed_bodies_are_400_101() {
    let server = start().await;
    let auth = format!("Bearer {API_KEY}");
    assert_api_error(&api(&server, "publsh", json!({})).await, 400, 101);
    assert_api_error(&api(&server, "PUBLISH", json!({})).await, 400, 101);

    let cases: &[(&str, &[u8])] = &[
        ("publish", b"{not json"),
        ("publish", b"[]"),
        ("publish", b"\"publish\""),
        ("publish", b""),
        ("publish", b"{}"),
        ("publish", br#"{"channel": 5, "data": 1}"#),
        ("publish", br#"{"channel": "a"}"#),
        ("publish", br#"{"data": 1}"#),
        (
            "publish",
            br#"{"channel": "a", "data": 1, "surprise": true}"#,
        ),
        (
            "publish",
            br#"{"channel": "a", "data": 1, "tags": {"k": 1}}"#,
        ),
        ("publish", br#"{"channel": "a", "data": 1}{"#),
        ("publish", b"{\"channel\": \"\xff\", \"data\": 1}"),
        ("publish", br#"{"channel": "bad channel", "data": 1}"#),
        ("publish", br#"{"channel": "", "data": 1}"#),
        (
            "publish",
            br#"{"channel": "a", "data": 1, "idempotency_key": ""}"#,
        ),
        ("broadcast", br#"{"channels": "a", "data": 1}"#),
        ("history", br#"{"channel": "a", "limit": "ten"}"#),
        ("history", br#"{"channel": "a", "limit": -1}"#),
        ("history", br#"{"channel": "a", "since": {"offset": 1}}"#),
        ("channels", br#"{"limit": "x"}"#),
        ("channels", br#"{"prefix": 1}"#),
        ("disconnect", b"{}"),
        ("disconnect", br#"{"user": "u", "code": 1000}"#),
        ("disconnect", br#"{"user": "u", "code": 4000}"#),
        ("disconnect", br#"{"user": "u", "code": 70000}"#),
        ("disconnect", br#"{"user": ""}"#),
        ("unsubscribe", br#"{"user": "", "channel": "a"}"#),
        ("unsubscribe", br#"{"user": "u"}"#),
        ("unsubscribe", br#"{"channel": "a"}"#),
        ("presence", b"{}"),
        ("presence_stats", br#"{"channel": ["chat:a"]}"#),
    ];
    for (method, body) in cases {
        let (status, text) = api_raw(&server, method, Some(&auth), &[], body.to_vec()).await;
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{method} {:?}: not JSON ({e}): {text}",
                String::from_utf8_lossy(body)
            )
        });
        assert_eq!(
            (status, v["error"]["code"].as_u64()),
            (400, Some(101)),
            "{method} {:?} → {text}",
            String::from_utf8_lossy(body)
        );
    }
    // None of that published anything.
    let (_, body) = api(&server, "history", json!({"channel": "a"})).await;
    assert_eq!(body["offset"], 0, "{body}");
    // An empty body is `{}` where every field is optional.
    let (status, text) = api_raw(&server, "info", Some(&auth), &[], "").await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = api_raw(&server, "channels", Some(&auth), &[], " \n").await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn unknown_namespace_is_404_102() {
    let server = start().await;
    let cases = [
        ("publish", json!({"channel": "nope:x", "data": 1})),
        ("history", json!({"channel": "nope:x"})),
        ("presence", json!({"channel": "nope:x"})),
        ("presence_stats", json!({"channel": "nope:x"})),
        ("unsubscribe", json!({"user": "u", "channel": "nope:x"})),
    ];
    for (method, body) in cases {
        let answer = api(&server, method, body).await;
        assert_api_error(&answer, 404, 102);
        assert!(
            answer.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("nope"),
            "the message names the namespace: {}",
            answer.1
        );
    }
}

#[tokio::test]
async fn data_over_max_message_size_is_413_104() {
    let server = start().await;
    let max = server.node().config.channels.max_message_size;
    // `data` is measured as its JSON text: a string of max - 2 characters fits exactly.
    let fits = "x".repeat(max - 2);
    let (status, body) = api(&server, "publish", json!({"channel": "big", "data": fits})).await;
    assert_eq!((status, body["offset"].as_u64()), (200, Some(1)), "{body}");
    let over = "x".repeat(max - 1);
    let answer = api(&server, "publish", json!({"channel": "big", "data": over})).await;
    assert_api_error(&answer, 413, 104);
    let answer = api(
        &server,
        "publish",
        json!({"channel": "big", "data": {"text": "y".repeat(70 * 1024)}}),
    )
    .await;
    assert_api_error(&answer, 413, 104);
    let (_, body) = api(&server, "history", json!({"channel": "big"})).await;
    assert_eq!(offsets(&body["publications"]), [1]);
}

/// A config with a namespace `large` allowing 4 MiB of data.
fn large_config() -> tidings_server::config::Config {
    let mut config = config();
    config.client.max_frame_size = 8 * 1024 * 1024;
    config.client.outbox_bytes = 16 * 1024 * 1024;
    config.namespaces.insert(
        "large".into(),
        tidings_server::config::NamespaceOptions {
            max_message_size: 4 * 1024 * 1024,
            anonymous: true,
            ..Default::default()
        },
    );
    config.validate().expect("a valid config");
    config
}

/// Data a namespace allows is accepted by the API, even above the HTTP layer's
/// own default body limit (2 MB).
#[tokio::test]

async fn api_accepts_data_up_to_the_namespace_limit() {
    let server = start_with(large_config()).await;
    let data = "x".repeat(3 * 1024 * 1024);
    let (status, body) = api_with_headers(
        &server,
        "publish",
        &[],
        json!({"channel": "large:x", "data": data}),
    )
    .await;
    assert_eq!(status, 200, "3 MiB within a 4 MiB max_message_size: {body}");
    assert_eq!(body["offset"], 1, "{body}");
}

/// A body over any limit still gets the API's JSON error.
#[tokio::test]

async fn oversized_body_answers_a_json_error() {
    let server = start().await;
    let data = "x".repeat(3 * 1024 * 1024);
    let (status, body) = api_with_headers(
        &server,
        "publish",
        &[],
        json!({"channel": "x", "data": data}),
    )
    .await;
    assert_api_error(&(status, body), 413, 104);
}

#[tokio::test]
async fn channels_pages_with_prefix_cursor_and_limit() {
    let server = start().await;
    let mut all = Raw::connect(&server, None).await;
    let names: Vec<String> = (0..25).map(|i| format!("room.{i:02}")).collect();
    for n in &names {
        subscribe(&mut all, n).await;
    }
    // Two subscribers on the first five rooms; channels outside the prefix.
    let mut second = Raw::connect(&server, None).await;
    for n in &names[..5] {
        subscribe(&mut second, n).await;
    }
    subscribe(&mut second, "lobby").await;
    subscribe(&mut second, "rooms").await;
    subscribe(&mut second, "small:room.00").await;

    // Walk the pages.
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "paging does not end: {seen:?}");
        let mut body = json!({"prefix": "room.", "limit": 10});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let (status, page) = api(&server, "channels", body).await;
        assert_eq!(status, 200, "{page}");
        let entries = page["channels"].as_array().unwrap();
        assert!(entries.len() <= 10, "{page}");
        for e in entries {
            assert_eq!(keys(e), ["channel", "subscribers"], "{e}");
            seen.push((
                e["channel"].as_str().unwrap().to_string(),
                e["subscribers"].as_u64().unwrap(),
            ));
        }
        match page.get("next_cursor") {
            Some(c) => {
                assert_eq!(entries.len(), 10, "a full page before a next one: {page}");
                cursor = Some(c.as_str().expect("next_cursor is a string").to_string());
            }
            None => break,
        }
    }
    assert_eq!(pages, 3, "25 channels by 10");
    let want: Vec<(String, u64)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), if i < 5 { 2 } else { 1 }))
        .collect();
    assert_eq!(
        seen, want,
        "every channel once, sorted, with its subscribers"
    );

    // A page that ends exactly at the last channel has no next cursor.
    let (_, page) = api(
        &server,
        "channels",
        json!({"prefix": "room.1", "limit": 10}),
    )
    .await;
    assert_eq!(page["channels"].as_array().unwrap().len(), 10, "{page}");
    assert!(page.get("next_cursor").is_none(), "{page}");

    // No prefix: everything, including other namespaces.
    let (_, page) = api(&server, "channels", json!({"limit": 1000})).await;
    let names_all: Vec<&str> = page["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names_all.len(), 28, "{page}");
    assert!(names_all.contains(&"lobby") && names_all.contains(&"small:room.00"));
    assert!(page.get("next_cursor").is_none());

    // The default page answers without a body.
    let (status, page) = api(&server, "channels", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(page["channels"].as_array().unwrap().len(), 28);

    // A cursor past everything: empty page, no next.
    let (_, page) = api(
        &server,
        "channels",
        json!({"prefix": "room.", "cursor": "room.99"}),
    )
    .await;
    assert_eq!(page, json!({"channels": []}));

    // A channel nobody is subscribed to any more is not listed.
    let r = second
        .call(json!({"op": "unsubscribe", "channel": "lobby"}))
        .await;
    assert_eq!(r["ok"], json!({}));
    let (_, page) = api(&server, "channels", json!({"prefix": "lobby"})).await;
    assert_eq!(page, json!({"channels": []}));
}

/// Reads until the connection ends; returns the `disconnect` push and the close frame's code.
async fn disconnect_and_close(raw: &mut Raw) -> (Value, Option<u16>) {
    let events = raw.events_until_closed(100, Duration::from_secs(10)).await;
    let push = events
        .iter()
        .find_map(|e| match e {
            Event::Msg(m) if m["push"] == "disconnect" => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no disconnect push before the close: {events:?}"));
    let close = match events.last() {
        Some(Event::Close(code, _)) => *code,
        other => panic!("expected a close frame after the disconnect push, got {other:?}"),
    };
    (push, close)
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user() {
    let server = start().await;
    let mut a1 = Raw::connect(&server, Some("alice")).await;
    let mut a2 = Raw::connect(&server, Some("alice")).await;
    subscribe(&mut a2, "chat:room").await;
    let mut b = Raw::connect(&server, Some("bob")).await;
    subscribe(&mut b, "chat:room").await;

    let (status, body) = api(&server, "disconnect", json!({"user": "alice"})).await;
    assert_eq!((status, body), (200, json!({})));
    for a in [&mut a1, &mut a2] {
        let (push, close) = disconnect_and_close(a).await;
        assert_eq!(push["code"], 3006, "{push}");
        assert_eq!(push["reconnect"], true, "{push}");
        assert!(push["reason"].is_string(), "{push}");
        assert_eq!(close, Some(3006));
    }
    // Bob is untouched and still receives.
    let r = b
        .call(json!({"op": "publish", "channel": "chat:room", "data": "still here"}))
        .await;
    assert!(r.get("ok").is_some(), "{r}");
    assert_eq!(next_pub(&mut b).await["data"], "still here");

    // An explicit code, here one that says "do not come back".
    let (status, _) = api(&server, "disconnect", json!({"user": "bob", "code": 3502})).await;
    assert_eq!(status, 200);
    let (push, close) = disconnect_and_close(&mut b).await;
    assert_eq!(push["code"], 3502, "{push}");
    assert_eq!(push["reconnect"], false, "{push}");
    assert_eq!(close, Some(3502));

    // One client of a user, by id.
    let (mut c1, id1) = connect_with_id(&server, "carol").await;
    let (mut c2, _) = connect_with_id(&server, "carol").await;
    let (status, _) = api(
        &server,
        "disconnect",
        json!({"user": "carol", "client": id1, "code": 3003}),
    )
    .await;
    assert_eq!(status, 200);
    let (push, close) = disconnect_and_close(&mut c1).await;
    assert_eq!((push["code"].clone(), close), (json!(3003), Some(3003)));
    let r = c2
        .call(json!({"op": "subscribe", "channel": "chat:c"}))
        .await;
    assert!(
        r.get("ok").is_some(),
        "the other connection of carol stays: {r}"
    );

    // Another user's client id does not match.
    let (status, _) = api(
        &server,
        "disconnect",
        json!({"user": "alice", "client": id1}),
    )
    .await;
    assert_eq!(status, 200);
    // A bad code is refused and disconnects nobody.
    assert_api_error(
        &api(
            &server,
            "disconnect",
            json!({"user": "carol", "code": 1000}),
        )
        .await,
        400,
        101,
    );
    // Unknown users: nothing to do, still fine.
    let (status, body) = api(&server, "disconnect", json!({"user": "nobody"})).await;
    assert_eq!((status, body), (200, json!({})));
    let r = c2
        .call(json!({"op": "publish", "channel": "chat:c", "data": 1}))
        .await;
    assert!(r.get("ok").is_some(), "{r}");
}

#[tokio::test]
async fn unsubscribe_sends_unsub_and_stops_delivery() {
    let server = start().await;
    let mut a1 = Raw::connect(&server, Some("alice")).await;
    let mut a2 = Raw::connect(&server, Some("alice")).await;
    let mut b = Raw::connect(&server, Some("bob")).await;
    for c in [&mut a1, &mut a2, &mut b] {
        subscribe(c, "chat:a").await;
        subscribe(c, "chat:b").await;
    }
    let (status, body) = api(
        &server,
        "unsubscribe",
        json!({"user": "alice", "channel": "chat:a"}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    for a in [&mut a1, &mut a2] {
        let m = a.next_non_ping().await.expect("open");
        assert_eq!(m["push"], "unsub", "{m}");
        assert_eq!(m["channel"], "chat:a", "{m}");
        // The server took the subscription away on purpose: not to be resubscribed by itself.
        assert_eq!(m["code"], 3502, "{m}");
        assert!(m["reason"].is_string(), "{m}");
    }
    // Presence follows.
    let (_, body) = api(&server, "presence_stats", json!({"channel": "chat:a"})).await;
    assert_eq!(body, json!({"clients": 1, "users": 1}));

    // Publish into the removed channel, then into the kept one: alice sees only the second.
    for ch in ["chat:a", "chat:b"] {
        let (status, _) = api(&server, "publish", json!({"channel": ch, "data": ch})).await;
        assert_eq!(status, 200);
    }
    for a in [&mut a1, &mut a2] {
        let p = next_pub(a).await;
        assert_eq!(p["channel"], "chat:b", "no chat:a after the unsub: {p}");
    }
    // Bob keeps both.
    assert_eq!(next_pub(&mut b).await["channel"], "chat:a");
    assert_eq!(next_pub(&mut b).await["channel"], "chat:b");

    // Alice's connection itself is fine: it may subscribe again, and unsubscribing
    // what is no longer subscribed says so.
    let r = a1
        .call(json!({"op": "unsubscribe", "channel": "chat:a"}))
        .await;
    assert_eq!(error_code(&r), 108);
    subscribe(&mut a1, "chat:a").await;

    // A user with no such subscription: nothing is pushed, still `{}`.
    let (status, body) = api(
        &server,
        "unsubscribe",
        json!({"user": "bob", "channel": "chat:none"}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    api(
        &server,
        "publish",
        json!({"channel": "chat:b", "data": "after"}),
    )
    .await;
    let p = next_pub(&mut b).await;
    assert_eq!(
        p["data"], "after",
        "no unsub push for an unknown channel: {p}"
    );
}

async fn info(server: &tidings_server::Server) -> Value {
    let (status, body) = api(server, "info", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), ["nodes"]);
    let nodes = body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "one node: {body}");
    let node = nodes[0].clone();
    assert_eq!(
        keys(&node),
        [
            "address",
            "channels",
            "connections",
            "id",
            "name",
            "subscriptions",
            "uptime_s",
            "version"
        ]
    );
    assert_eq!(node["address"], server.local_addr().to_string());
    assert!(node["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(node["uptime_s"].is_u64());
    node
}

fn counts(node: &Value) -> (u64, u64, u64) {
    (
        node["connections"].as_u64().unwrap(),
        node["subscriptions"].as_u64().unwrap(),
        node["channels"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn info_counts_connections_subscriptions_channels() {
    let server = start().await;
    let first = info(&server).await;
    assert_eq!(counts(&first), (0, 0, 0));

    let mut a = Raw::connect(&server, None).await;
    let mut b = Raw::connect(&server, Some("bob")).await;
    let c = Raw::connect(&server, None).await;
    subscribe(&mut a, "x").await;
    subscribe(&mut a, "y").await;
    subscribe(&mut b, "x").await;
    subscribe(&mut b, "chat:z").await;
    let node = info(&server).await;
    assert_eq!(counts(&node), (3, 4, 3));
    assert_eq!(node["id"], first["id"], "the same node");

    let r = b.call(json!({"op": "unsubscribe", "channel": "x"})).await;
    assert_eq!(r["ok"], json!({}));
    assert_eq!(counts(&info(&server).await), (3, 3, 3));
    let r = a.call(json!({"op": "unsubscribe", "channel": "y"})).await;
    assert_eq!(r["ok"], json!({}));
    assert_eq!(counts(&info(&server).await), (3, 2, 2));

    // Connections that go away are forgotten, with their subscriptions.
    drop(c);
    drop(b);
    let mut last = (0, 0, 0);
    for _ in 0..100 {
        last = counts(&info(&server).await);
        if last == (1, 1, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, (1, 1, 1), "after two connections closed");
}

#[tokio::test]
async fn idempotency_key_header_and_field_dedupe() {
    let server = start().await;
    let mut sub = Raw::connect(&server, None).await;
    subscribe(&mut sub, "idem").await;

    let (status, first) = api(
        &server,
        "publish",
        json!({"channel": "idem", "data": "one", "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["offset"], 1);
    // The same key as a field, as a header, with other data: the first answer.
    let (_, again) = api(
        &server,
        "publish",
        json!({"channel": "idem", "data": "one", "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(again, first);
    let (_, again) = api_with_headers(
        &server,
        "publish",
        &[("Idempotency-Key", "k1")],
        json!({"channel": "idem", "data": "other"}),
    )
    .await;
    assert_eq!(again, first);
    // A header key first, then the same key as a field.
    let (_, second) = api_with_headers(
        &server,
        "publish",
        &[("Idempotency-Key", "k2")],
        json!({"channel": "idem", "data": "two"}),
    )
    .await;
    assert_eq!(second["offset"], 2, "{second}");
    let (_, again) = api(
        &server,
        "publish",
        json!({"channel": "idem", "data": "two", "idempotency_key": "k2"}),
    )
    .await;
    assert_eq!(again, second);
    // A client publishing with the same key gets the same answer too.
    let r = sub
        .call(json!({"op": "publish", "channel": "idem", "data": "two", "idempotency_key": "k2"}))
        .await;
    assert_eq!(r["ok"], second, "{r}");
    // Keys are per channel.
    let (_, elsewhere) = api(
        &server,
        "publish",
        json!({"channel": "idem.other", "data": "one", "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(elsewhere["offset"], 1);
    assert_ne!(elsewhere["epoch"], first["epoch"]);

    let (_, h) = api(&server, "history", json!({"channel": "idem"})).await;
    assert_eq!(offsets(&h["publications"]), [1, 2]);
    assert_eq!(h["publications"][0]["data"], "one");
    assert_eq!(h["publications"][1]["data"], "two");

    // Exactly one push per publication.
    let (_, third) = api(
        &server,
        "publish",
        json!({"channel": "idem", "data": "three"}),
    )
    .await;
    assert_eq!(third["offset"], 3);
    let mut got = Vec::new();
    while got.last() != Some(&3) {
        assert!(got.len() < 10, "{got:?}");
        got.push(next_pub(&mut sub).await["offset"].as_u64().unwrap());
    }
    assert_eq!(got, [1, 2, 3]);

    // Broadcast dedupes per channel.
    let body = json!({"channels": ["idem", "idem.other"], "data": "b", "idempotency_key": "kb"});
    let (_, r1) = api(&server, "broadcast", body.clone()).await;
    let (_, r2) = api(&server, "broadcast", body).await;
    assert_eq!(r1["results"][0]["offset"], 4, "{r1}");
    assert_eq!(r1["results"][1]["offset"], 2, "{r1}");
    assert_eq!(r1, r2);

    // Keys must be 1 to 256 bytes.
    assert_api_error(
        &api(
            &server,
            "publish",
            json!({"channel": "idem", "data": 1, "idempotency_key": "k".repeat(257)}),
        )
        .await,
        400,
        101,
    );
    let (status, _) = api(
        &server,
        "publish",
        json!({"channel": "idem", "data": 1, "idempotency_key": "k".repeat(256)}),
    )
    .await;
    assert_eq!(status, 200);
}

/// 8 WebSocket clients and 8 API calls publish with one key at once: one publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_under_races() {
    let server = start().await;
    const CHANNEL: &str = "race.idem";
    const KEY: &str = "the-one-key";
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = Raw::connect(&server, None).await;
        subscribe(&mut c, CHANNEL).await;
        clients.push(c);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut ws_tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        ws_tasks.push(tokio::spawn(async move {
            let cmd = json!({"op": "publish", "channel": CHANNEL, "data": {"from": format!("ws{i}")}, "idempotency_key": KEY});
            barrier.wait().await;
            let id = c.send(cmd).await;
            let r = c.reply(id).await;
            (c, r)
        }));
    }
    let addr = server.local_addr();
    let mut api_tasks = Vec::new();
    for i in 0..8 {
        let barrier = barrier.clone();
        api_tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut req = client
                .post(format!("http://{addr}/v1/api/publish"))
                .bearer_auth(API_KEY);
            let mut body = json!({"channel": CHANNEL, "data": {"from": format!("api{i}")}});
            // Half give the key as a header, half as a field.
            if i % 2 == 0 {
                req = req.header("Idempotency-Key", KEY);
            } else {
                body["idempotency_key"] = json!(KEY);
            }
            let req = req.json(&body);
            barrier.wait().await;
            let res = req.send().await.expect("api request");
            let status = res.status().as_u16();
            let v: Value = res.json().await.expect("json answer");
            (status, v)
        }));
    }
    let within = Duration::from_secs(30);
    let api_answers = tokio::time::timeout(within, futures_util::future::join_all(api_tasks))
        .await
        .expect("api calls answer");
    let ws_answers = tokio::time::timeout(within, futures_util::future::join_all(ws_tasks))
        .await
        .expect("clients are answered");

    let mut positions = Vec::new();
    for a in api_answers {
        let (status, v) = a.expect("api task");
        assert_eq!(status, 200, "{v}");
        positions.push(v);
    }
    let mut clients = Vec::new();
    for a in ws_answers {
        let (c, r) = a.expect("client task");
        assert!(r.get("ok").is_some(), "{r}");
        positions.push(r["ok"].clone());
        clients.push(c);
    }
    assert_eq!(positions.len(), 16);
    let first = positions[0].clone();
    assert_eq!(first["offset"], 1, "{first}");
    assert!(first["epoch"].is_string(), "{first}");
    for p in &positions {
        assert_eq!(p, &first, "every answer carries the same offset and epoch");
    }

    let (_, h) = api(&server, "history", json!({"channel": CHANNEL})).await;
    assert_eq!(offsets(&h["publications"]), [1], "{h}");

    // Every subscriber got exactly one publication before the next one.
    let (_, next) = api(
        &server,
        "publish",
        json!({"channel": CHANNEL, "data": "next"}),
    )
    .await;
    assert_eq!(next["offset"], 2);
    for c in &mut clients {
        let mut got = Vec::new();
        while got.last() != Some(&2) {
            assert!(got.len() < 20, "{got:?}");
            got.push(next_pub(c).await["offset"].as_u64().unwrap());
        }
        assert_eq!(got, [1, 2]);
    }
}
