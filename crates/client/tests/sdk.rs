//! The Rust SDK against a real server: publish acks, reconnect with
//! recovery (no gap, no duplicate), reload when history lost it, terminal codes.

use std::time::Duration;

use serde_json::json;
use tidings_client::{
    Client, ClientConfig, ClientEvent, HistoryOptions, PublishOptions, SubEvent, SubscribeOptions,
};
use tidings_server::Server;
use tidings_server::config::{AuthConfig, ClientPublish, Config, NamespaceOptions};

const SECRET: &str = "sdk-test-secret";
const API_KEY: &str = "sdk-test-api-key";

async fn start() -> Server {
    Server::start(test_config()).await.unwrap()
}

fn test_config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: tempfile::tempdir().unwrap().keep(),
        auth: AuthConfig {
            token_secret: Some(SECRET.into()),
            api_keys: vec![API_KEY.into()],
            ..Default::default()
        },
        channels: NamespaceOptions {
            anonymous: true,
            history_size: 10_000,
            ..Default::default()
        },
        ..Default::default()
    };
    c.namespaces.insert(
        "small".into(),
        NamespaceOptions {
            history_size: 3,
            client_publish: ClientPublish::Any,
            anonymous: true,
            ..Default::default()
        },
    );
    c.shutdown_spread = Duration::from_millis(200);
    c
}

fn token(user: &str) -> String {
    tidings_server::auth::mint_token(SECRET, user, Some(Duration::from_secs(3600)), None).unwrap()
}

async fn api(server: &Server, method: &str, body: serde_json::Value) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("http://{}/v1/api/{method}", server.local_addr()))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn config(server: &Server, user: &str) -> ClientConfig {
    ClientConfig::new(format!("ws://{}/v1/ws", server.local_addr()))
        .token(token(user))
        .backoff_min(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(200))
}

async fn next(sub: &mut tidings_client::Subscription) -> SubEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("subscription open")
}

#[tokio::test]
async fn publish_ack_subscribe_and_history() {
    let server = start().await;
    let client = Client::connect(config(&server, "alice")).await.unwrap();
    assert!(client.client_id().is_some());
    let mut sub = client
        .subscribe("news", SubscribeOptions::default())
        .await
        .unwrap();
    assert!(matches!(next(&mut sub).await, SubEvent::Subscribed { .. }));
    let ack = client
        .publish("news", &json!({"n": 1}), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(ack.offset, Some(1));
    match next(&mut sub).await {
        SubEvent::Publication(p) => {
            assert_eq!(p.offset, Some(1));
            assert_eq!(p.data.get(), r#"{"n":1}"#);
            assert_eq!(p.info.unwrap().user, "alice");
        }
        other => panic!("unexpected {other:?}"),
    }
    let h = client
        .history("news", HistoryOptions::default())
        .await
        .unwrap();
    assert_eq!(h.publications.len(), 1);
    let err = client
        .publish("nope:x", &json!(1), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, tidings_client::ClientError::Server { code: 102, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn reconnects_and_recovers_without_gap_or_duplicate() {
    let server = start().await;
    let client = Client::connect(config(&server, "bob")).await.unwrap();
    let mut events = client.events();
    let mut sub = client
        .subscribe("feed", SubscribeOptions::default())
        .await
        .unwrap();
    assert!(matches!(next(&mut sub).await, SubEvent::Subscribed { .. }));

    // Publish 300 from the API while the server kicks bob three times (3006: come back).
    let total = 300u64;
    for i in 1..=total {
        api(&server, "publish", json!({"channel": "feed", "data": i})).await;
        if i % 100 == 50 {
            api(&server, "disconnect", json!({"user": "bob"})).await;
        }
    }
    let mut seen = Vec::new();
    let mut recovered = 0;
    while seen.len() < total as usize {
        match next(&mut sub).await {
            SubEvent::Publication(p) => seen.push(p.offset.unwrap()),
            SubEvent::Subscribed {
                recovered: Some(true),
                ..
            } => recovered += 1,
            SubEvent::Subscribed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    assert!(
        recovered >= 1,
        "resubscribed with recovery after a disconnect"
    );
    let mut reconnects = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(e, ClientEvent::Connected { .. }) {
            reconnects += 1;
        }
    }
    // Kicks that land while it is still reconnecting find nothing to close.
    assert!(reconnects >= 1, "reconnected after being disconnected");
}

#[tokio::test]
async fn told_to_reload_when_history_lost_it() {
    let server = start().await;
    let client = Client::connect(config(&server, "carol")).await.unwrap();
    let first = client
        .publish("small:x", &json!(0), PublishOptions::default())
        .await
        .unwrap();
    let epoch = first.epoch.unwrap();
    // History keeps 3; publish 5 more, so offset 1's successors are partly gone.
    for i in 1..=5 {
        client
            .publish("small:x", &json!(i), PublishOptions::default())
            .await
            .unwrap();
    }
    let since = tidings_client::SinceArg {
        offset: 1,
        epoch: epoch.clone(),
    };
    let mut sub = client
        .subscribe(
            "small:x",
            SubscribeOptions {
                since: Some(since),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut told = None;
    for _ in 0..3 {
        match next(&mut sub).await {
            SubEvent::NotRecovered { offset, epoch: e } => {
                told = Some((offset, e));
                break;
            }
            SubEvent::Subscribed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        told,
        Some((6, epoch.clone())),
        "told to reload at the current top"
    );
    // And it continues live from there.
    client
        .publish("small:x", &json!(6), PublishOptions::default())
        .await
        .unwrap();
    match next(&mut sub).await {
        SubEvent::Publication(p) => assert_eq!(p.offset, Some(7)),
        other => panic!("unexpected {other:?}"),
    }
    // Within history: recovered, every missed one delivered.
    let since = tidings_client::SinceArg { offset: 5, epoch };
    let other = Client::connect(config(&server, "erin")).await.unwrap();
    let mut sub = other
        .subscribe(
            "small:x",
            SubscribeOptions {
                since: Some(since),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        next(&mut sub).await,
        SubEvent::Subscribed {
            recovered: Some(true),
            ..
        }
    ));
    for want in [6, 7] {
        match next(&mut sub).await {
            SubEvent::Publication(p) => assert_eq!(p.offset, Some(want)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn terminal_code_stops_reconnecting() {
    let server = start().await;
    let client = Client::connect(config(&server, "dave")).await.unwrap();
    let mut events = client.events();
    let mut sub = client
        .subscribe("news", SubscribeOptions::default())
        .await
        .unwrap();
    assert!(matches!(next(&mut sub).await, SubEvent::Subscribed { .. }));
    api(&server, "disconnect", json!({"user": "dave", "code": 3502})).await;
    let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        e,
        ClientEvent::Disconnected {
            code: Some(3502),
            reason: "forbidden".into(),
            reconnect: false
        }
    );
    assert!(matches!(
        next(&mut sub).await,
        SubEvent::Unsubscribed { code: 3502, .. }
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (info,) = (api(&server, "info", json!({})).await,);
    assert_eq!(
        info["nodes"][0]["connections"], 0,
        "no reconnect after 3502"
    );
}

#[tokio::test]
async fn subscribed_across_a_restart_recovers_what_it_missed() {
    let mut server_config = test_config();
    let server = Server::start(server_config.clone()).await.unwrap();
    // The second incarnation listens where the first did, on the same data.
    server_config.listen = server.local_addr();
    let client = Client::connect(config(&server, "frank")).await.unwrap();
    let mut sub = client
        .subscribe("feed", SubscribeOptions::default())
        .await
        .unwrap();
    assert!(matches!(next(&mut sub).await, SubEvent::Subscribed { .. }));
    for i in 1..=3 {
        api(&server, "publish", json!({"channel": "feed", "data": i})).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        if let SubEvent::Publication(p) = next(&mut sub).await {
            seen.push(p.offset.unwrap());
        }
    }
    server.shutdown().await;
    let server = Server::start(server_config).await.unwrap();
    // Published while the client is away (it waits out the 3001 delay and its backoff).
    for i in 4..=8 {
        api(&server, "publish", json!({"channel": "feed", "data": i})).await;
    }
    let mut recovered = None;
    while seen.len() < 8 {
        match next(&mut sub).await {
            SubEvent::Publication(p) => seen.push(p.offset.unwrap()),
            SubEvent::Subscribed { recovered: r, .. } => recovered = r,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        recovered,
        Some(true),
        "resubscribed with since and recovered"
    );
    assert_eq!(seen, (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn typing_indicator_throttles_and_stops_by_itself() {
    let mut c = test_config();
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
    let server = Server::start(c).await.unwrap();
    let watcher = Client::connect(config(&server, "watcher")).await.unwrap();
    let mut sub = watcher
        .subscribe("typing:doc", SubscribeOptions::default())
        .await
        .unwrap();
    assert!(matches!(next(&mut sub).await, SubEvent::Subscribed { .. }));
    let typist = Client::connect(config(&server, "typist")).await.unwrap();
    let typing = tidings_client::Typing::new(
        typist,
        "typing:doc",
        Duration::from_millis(500),
        Duration::from_millis(300),
    );
    // Ten keystrokes in ~100 ms: one `true`, then one `false` once idle.
    for _ in 0..10 {
        typing.keystroke().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let SubEvent::Publication(p) = next(&mut sub).await {
            seen.push(p.data.get().to_string());
        }
    }
    assert_eq!(seen, [r#"{"typing":true}"#, r#"{"typing":false}"#]);
}

#[tokio::test]
async fn snapshot_deltas_and_msgpack() {
    let server = start().await;
    let client = Client::connect(config(&server, "dana").msgpack())
        .await
        .unwrap();
    let publish = |data: serde_json::Value, snapshot: bool| {
        let server = &server;
        async move {
            api(
                server,
                "publish",
                json!({"channel": "small:s", "data": data, "snapshot": snapshot}),
            )
            .await
        }
    };
    let book = |n: u64| json!({"bids": (0..60).map(|i| [100 + i, if i == n { 0 } else { i }]).collect::<Vec<_>>()});
    let epoch = publish(book(99), false).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    publish(book(98), false).await;
    publish(book(3), true).await;
    for n in 4..7 {
        publish(book(n), false).await;
    }
    // Offset 1 is lost (history keeps 3): the snapshot at 3 and 4..6 come instead.
    let since = tidings_client::SinceArg { offset: 1, epoch };
    let mut sub = client
        .subscribe(
            "small:s",
            SubscribeOptions {
                since: Some(since),
                delta: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(next(&mut sub).await, SubEvent::Subscribed { .. }));
    match next(&mut sub).await {
        SubEvent::Snapshot(p) => {
            assert_eq!(p.offset, Some(3));
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(p.data.get()).unwrap(),
                book(3)
            );
        }
        other => panic!("a snapshot, not {other:?}"),
    }
    for n in 4..7 {
        match next(&mut sub).await {
            SubEvent::Publication(p) => assert_eq!(
                serde_json::from_str::<serde_json::Value>(p.data.get()).unwrap(),
                book(n)
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Live ones come as deltas (similar books) and are applied.
    for n in 7..15 {
        publish(book(n), false).await;
    }
    for n in 7..15 {
        match next(&mut sub).await {
            SubEvent::Publication(p) => {
                assert_eq!(p.offset, Some(n));
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(p.data.get()).unwrap(),
                    book(n)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Publishing over MessagePack works as over JSON.
    let ack = client
        .publish("small:s", &json!({"hi": "é"}), PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(ack.offset, Some(15));
}

/// A server with the members namespace `dm` and alice and bob members
/// of `dm:ab`.
async fn chat_server() -> Server {
    let mut c = test_config();
    c.namespaces.insert(
        "dm".into(),
        NamespaceOptions {
            members: true,
            history_size: 100,
            ..Default::default()
        },
    );
    let server = Server::start(c).await.unwrap();
    api(
        &server,
        "members/add",
        json!({"channel": "dm:ab", "users": ["alice", "bob"]}),
    )
    .await;
    server
}

/// Chat: a subscription with `receipts` tells the server its delivered
/// cursor by itself (coalesced: fewer commands than publications), the
/// sender sees it as a receipt, and a read on one client clears the
/// unread count the user's other client is told of.
#[tokio::test]
async fn receipts_by_themselves_and_an_inbox_that_follows_reads() {
    let server = chat_server().await;
    let alice = Client::connect(config(&server, "alice")).await.unwrap();
    let phone = Client::connect(config(&server, "bob")).await.unwrap();
    let laptop = Client::connect(config(&server, "bob")).await.unwrap();
    let mut laptop_inbox = laptop.inbox_changes();
    let mut sent = alice
        .subscribe("dm:ab", SubscribeOptions::default())
        .await
        .unwrap();
    let receipts = SubscribeOptions {
        receipts: true,
        ..Default::default()
    };
    let mut got = phone.subscribe("dm:ab", receipts).await.unwrap();
    assert!(matches!(next(&mut got).await, SubEvent::Subscribed { .. }));
    for n in 1..=5 {
        alice
            .publish("dm:ab", &json!({"n": n}), PublishOptions::default())
            .await
            .unwrap();
    }
    // Bob's phone gets all five and says so, once or twice, not five times.
    let mut offsets = Vec::new();
    while offsets.len() < 5 {
        if let SubEvent::Publication(p) = next(&mut got).await {
            offsets.push(p.offset.unwrap());
        }
    }
    let mut told = 0;
    let bob_delivered = loop {
        if let SubEvent::Receipt(r) = next(&mut sent).await
            && r.user.as_deref() == Some("bob")
        {
            told += 1;
            if r.delivered == 5 {
                break r;
            }
        }
    };
    assert_eq!(bob_delivered.read, 0);
    assert!(
        told < 5,
        "coalesced: {told} cursor moves for 5 publications"
    );
    // Bob reads on the phone: the laptop's inbox says nothing is unread.
    phone.mark_read("dm:ab", 5).await.unwrap();
    let change = loop {
        let change = tokio::time::timeout(Duration::from_secs(10), laptop_inbox.recv())
            .await
            .expect("an inbox change")
            .unwrap();
        if let tidings_client::InboxChange::Changed(c) = &change
            && c.read == 5
        {
            break c.clone();
        }
    };
    assert_eq!((change.unread, change.top), (0, 5));
    let inbox = laptop.inbox(None, None).await.unwrap();
    assert_eq!(inbox.conversations[0].unread, 0);
    let keys = alice.channel_keys("dm:ab").await.unwrap();
    assert!(keys.keys.is_empty());
}

/// End-to-end encryption in the Rust SDK, against a real server: every
/// device of both members opens what one sealed; the server's history
/// holds only the envelope.
#[tokio::test]
async fn sealed_messages_open_on_every_device_and_the_server_sees_ciphertext() {
    use tidings_client::e2ee::DeviceKeys;
    let server = chat_server().await;
    let devices = [
        DeviceKeys::generate("alice", "laptop"),
        DeviceKeys::generate("alice", "phone"),
        DeviceKeys::generate("bob", "laptop"),
        DeviceKeys::generate("bob", "phone"),
    ];
    let mut clients = Vec::new();
    for d in &devices {
        let client = Client::connect(config(&server, d.user())).await.unwrap();
        client.register_device(d).await.unwrap();
        clients.push(client);
    }
    let mut subs = Vec::new();
    for client in &clients {
        subs.push(
            client
                .subscribe("dm:ab", SubscribeOptions::default())
                .await
                .unwrap(),
        );
    }
    let marker = "the-marker-7f3a";
    clients[0]
        .publish_sealed(
            "dm:ab",
            &json!({"text": marker}),
            &devices[0],
            PublishOptions::default(),
        )
        .await
        .unwrap();
    for ((client, device), sub) in clients.iter().zip(&devices).zip(&mut subs) {
        let p = loop {
            if let SubEvent::Publication(p) = next(sub).await {
                break p;
            }
        };
        assert!(!p.data.get().contains(marker), "ciphertext on the wire");
        let open = client.open("dm:ab", device, p).await.unwrap();
        assert_eq!(open.data.get(), format!(r#"{{"text":"{marker}"}}"#));
    }
    let history = api(&server, "history", json!({"channel": "dm:ab"})).await;
    assert!(!history.to_string().contains(marker), "{history}");
    assert_eq!(history["publications"][0]["data"]["e2ee"], 1);
}
