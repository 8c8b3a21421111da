//! The chat layer against a real server: members-only channels, cursors
//! that never move back (a property over random updates from several
//! devices), receipts, unread counts and the inbox exact across random
//! publishes, reads, reconnects and a restart, offline notifications to a
//! real webhook receiver, the key directory, and bad input.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::receiver::{close_ws, hooked, receiver, receiver_at};
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use tidings_server::config::{ClientPublish, Config, NamespaceOptions, WebhookEvent};

/// The `dm` members namespace (clients publish where subscribed or, over
/// HTTP, where allowed), with `receipts_max_members`.
fn members_ns(receipts_max_members: usize) -> NamespaceOptions {
    NamespaceOptions {
        members: true,
        history_size: 1000,
        client_publish: ClientPublish::Subscribers,
        receipts_max_members,
        ..Default::default()
    }
}

fn with_dm(mut c: Config) -> Config {
    c.namespaces.insert("dm".into(), members_ns(100));
    c
}

async fn add(server: &tidings_server::Server, channel: &str, users: &[&str]) {
    let (status, body) = api(
        server,
        "members/add",
        json!({"channel": channel, "users": users}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Waits (at most 10 s) for the next push named `kind`, keeping order.
async fn push_of(raw: &mut Raw, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = raw
            .next_within(left)
            .await
            .unwrap_or_else(|()| panic!("no `{kind}` push in time"))
            .expect("connection open");
        if m["push"] == kind {
            return m;
        }
    }
}

/// Polls `check` until it is true (at most 10 s): what the server does
/// after answering (a publisher's own cursors) lands soon after.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn only_members_use_a_members_channel() {
    let server = start_with(with_dm(config())).await;
    add(&server, "dm:ab", &["alice", "bob"]).await;
    let mut alice = Raw::connect(&server, Some("alice")).await;
    let mut eve = Raw::connect(&server, Some("eve")).await;
    let ok = alice
        .call(json!({"op": "subscribe", "channel": "dm:ab"}))
        .await;
    assert!(ok["ok"].is_object(), "{ok}");
    for cmd in [
        json!({"op": "subscribe", "channel": "dm:ab"}),
        json!({"op": "publish", "channel": "dm:ab", "data": 1}),
        json!({"op": "history", "channel": "dm:ab"}),
        json!({"op": "presence", "channel": "dm:ab"}),
        json!({"op": "members", "channel": "dm:ab"}),
        json!({"op": "cursor", "channel": "dm:ab", "read": 0}),
        json!({"op": "keys", "channel": "dm:ab"}),
    ] {
        let r = eve.call(cmd.clone()).await;
        assert_eq!(error_code(&r), 103, "{cmd} → {r}");
    }
    let r = alice
        .call(json!({"op": "members", "channel": "dm:ab"}))
        .await;
    assert_eq!(r["ok"]["users"], json!(["alice", "bob"]));

    // Removed: the subscription ends for good, the inbox drops the channel.
    let (status, _) = api(
        &server,
        "members/remove",
        json!({"channel": "dm:ab", "users": ["alice"]}),
    )
    .await;
    assert_eq!(status, 200);
    // Both, in either order (the inbox push does not wait for the session).
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = alice.next_non_ping().await.expect("open");
        if m["push"] == "unsub" || m["push"] == "inbox" {
            seen.push(m);
        }
    }
    assert!(
        seen.contains(&json!({"push": "inbox", "channel": "dm:ab", "removed": true})),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|m| m["push"] == "unsub" && m["code"] == 3502),
        "{seen:?}"
    );
    let r = alice
        .call(json!({"op": "publish", "channel": "dm:ab", "data": 1}))
        .await;
    assert_eq!(error_code(&r), 103, "{r}");
    let (_, page) = api(&server, "members/list", json!({"channel": "dm:ab"})).await;
    assert_eq!(page["users"], json!(["bob"]));
    server.shutdown().await;
}

#[tokio::test]
async fn receipts_reach_the_sender_and_a_read_clears_the_badge_on_another_device() {
    let server = start_with(with_dm(config())).await;
    add(&server, "dm:ab", &["alice", "bob"]).await;
    let mut alice = Raw::connect(&server, Some("alice")).await;
    let mut phone = Raw::connect(&server, Some("bob")).await;
    let mut laptop = Raw::connect(&server, Some("bob")).await;
    alice
        .call(json!({"op": "subscribe", "channel": "dm:ab"}))
        .await;
    let sent = alice
        .call(json!({"op": "publish", "channel": "dm:ab", "data": {"text": "hi"}}))
        .await;
    assert_eq!(sent["ok"]["offset"], 1, "{sent}");
    // Bob's devices, subscribed to nothing, see the conversation change.
    for device in [&mut phone, &mut laptop] {
        let change = push_of(device, "inbox").await;
        assert_eq!(
            (change["unread"].clone(), change["top"].clone()),
            (json!(1), json!(1)),
            "{change}"
        );
        assert_eq!(change["last"]["data"]["text"], "hi");
    }
    // Her own publication moved her cursors: her receipt first.
    let own = push_of(&mut alice, "receipt").await;
    assert_eq!(own["user"], "alice");

    let r = phone
        .call(json!({"op": "cursor", "channel": "dm:ab", "delivered": 1}))
        .await;
    assert_eq!(r["ok"], json!({"delivered": 1, "read": 0}));
    let receipt = push_of(&mut alice, "receipt").await;
    assert_eq!(
        receipt,
        json!({"push": "receipt", "channel": "dm:ab", "user": "bob", "delivered": 1, "read": 0})
    );
    let r = phone
        .call(json!({"op": "cursor", "channel": "dm:ab", "read": 1}))
        .await;
    assert_eq!(r["ok"], json!({"delivered": 1, "read": 1}));
    let receipt = push_of(&mut alice, "receipt").await;
    assert_eq!(receipt["read"], 1);
    // The laptop's badge clears: a push, and the inbox says so.
    let change = push_of(&mut laptop, "inbox").await;
    assert_eq!(
        (change["unread"].clone(), change["read"].clone()),
        (json!(0), json!(1)),
        "{change}"
    );
    let inbox = laptop.call(json!({"op": "inbox"})).await;
    assert_eq!(inbox["ok"]["conversations"][0]["unread"], 0, "{inbox}");
    server.shutdown().await;
}

#[tokio::test]
async fn large_groups_get_a_summary_instead_of_each_receipt() {
    let mut c = config();
    c.namespaces.insert("g".into(), members_ns(2));
    let server = start_with(c).await;
    add(&server, "g:class", &["a", "b", "c", "d"]).await;
    let mut a = Raw::connect(&server, Some("a")).await;
    a.call(json!({"op": "subscribe", "channel": "g:class"}))
        .await;
    for n in 0..3 {
        a.call(json!({"op": "publish", "channel": "g:class", "data": n}))
            .await;
    }
    let mut b = Raw::connect(&server, Some("b")).await;
    let mut c = Raw::connect(&server, Some("c")).await;
    b.call(json!({"op": "cursor", "channel": "g:class", "read": 3}))
        .await;
    c.call(json!({"op": "cursor", "channel": "g:class", "delivered": 2}))
        .await;
    // Summaries until one shows both moves (a's own cursors land first).
    let deadline = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        let r = push_of(&mut a, "receipt").await;
        assert!(
            r.get("user").is_none(),
            "no per-user receipt in a large group: {r}"
        );
        if r["counts"] == json!([[1, 3, 2], [2, 3, 2], [3, 2, 2]]) {
            break r;
        }
        assert!(Instant::now() < deadline, "last summary {r}");
    };
    assert_eq!(summary["members"], 4);
    assert_eq!(
        (summary["delivered"].clone(), summary["read"].clone()),
        (json!(0), json!(0))
    );
    server.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    /// Random cursor updates from two devices of each of two members:
    /// every answer is the model's (the maximum so far, read raising
    /// delivered), never lower than the one before, and the other member
    /// sees the same cursors in its receipts, in order.
    #[test]
    fn cursors_never_move_back(
        updates in proptest::collection::vec(
            (0usize..4, proptest::option::of(0u64..=12), proptest::option::of(0u64..=12)),
            1..40,
        ),
    ) {
        runtime().block_on(async move {
            let server = start_with(with_dm(config())).await;
            add(&server, "dm:ab", &["alice", "bob"]).await;
            for n in 0..12 {
                api(&server, "publish", json!({"channel": "dm:ab", "data": n})).await;
            }
            let users = ["alice", "alice", "bob", "bob"];
            let mut devices = Vec::new();
            for user in users {
                devices.push(Raw::connect(&server, Some(user)).await);
            }
            let mut watcher = Raw::connect(&server, Some("alice")).await;
            watcher.call(json!({"op": "subscribe", "channel": "dm:ab"})).await;
            let mut model: HashMap<&str, (u64, u64)> = HashMap::new();
            let mut moves: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
            for (device, delivered, read) in updates {
                let user = users[device];
                let mut cmd = json!({"op": "cursor", "channel": "dm:ab"});
                if let Some(d) = delivered { cmd["delivered"] = json!(d); }
                if let Some(r) = read { cmd["read"] = json!(r); }
                let reply = devices[device].call(cmd).await;
                if delivered.is_none() && read.is_none() {
                    assert_eq!(error_code(&reply), 101, "{reply}");
                    continue;
                }
                let (d0, r0) = model.get(user).copied().unwrap_or((0, 0));
                let r1 = r0.max(read.unwrap_or(0));
                let d1 = d0.max(delivered.unwrap_or(0)).max(r1);
                assert_eq!(reply["ok"], json!({"delivered": d1, "read": r1}), "{user}");
                if (d1, r1) != (d0, r0) {
                    moves.entry(user).or_default().push((d1, r1));
                }
                model.insert(user, (d1, r1));
            }
            // Receipts, in order, are exactly the moves.
            let expected: usize = moves.values().map(Vec::len).sum();
            let mut seen: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
            for _ in 0..expected {
                let r = push_of(&mut watcher, "receipt").await;
                let user = r["user"].as_str().unwrap().to_string();
                seen.entry(user).or_default().push((
                    r["delivered"].as_u64().unwrap(),
                    r["read"].as_u64().unwrap(),
                ));
            }
            for (user, m) in &moves {
                assert_eq!(seen.get(*user), Some(m), "{user}");
            }
            server.shutdown().await;
        });
    }

    /// Unread counts and the inbox are exact after random publishes, reads,
    /// reconnects and a restart (durable history): three users, three
    /// conversations, a model of tops and cursors.
    #[test]
    fn unread_and_inbox_are_exact_across_reconnects_and_a_restart(
        ops in proptest::collection::vec((0u8..3, 0usize..3, 0usize..3, 0u64..100), 1..40),
    ) {
        runtime().block_on(async move {
            let dir = data_dir();
            let config = || {
                let mut c = with_dm(config());
                c.data_dir = dir.clone();
                c
            };
            let server = start_with(config()).await;
            let users = ["ann", "ben", "cat"];
            let channels: [(&str, &[&str]); 3] = [
                ("dm:ab", &["ann", "ben"]),
                ("dm:bc", &["ben", "cat"]),
                ("dm:abc", &["ann", "ben", "cat"]),
            ];
            for (ch, members) in channels {
                add(&server, ch, members).await;
            }
            let mut conns = Vec::new();
            for u in users {
                conns.push(Raw::connect(&server, Some(u)).await);
            }
            // Model: tops, and (read, delivered) per (user, channel).
            let mut top: BTreeMap<&str, u64> = BTreeMap::new();
            let mut cur: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
            for (kind, u, c, x) in ops {
                let (ch, members) = channels[c];
                let user = users[u];
                match kind {
                    // A member publishes: their own cursors follow.
                    0 => {
                        let user = members[u % members.len()];
                        let i = users.iter().position(|x| *x == user).unwrap();
                        let r = conns[i].call(json!({"op": "publish", "channel": ch, "data": x})).await;
                        let t = top.entry(ch).or_default();
                        *t += 1;
                        assert_eq!(r["ok"]["offset"], *t, "{r}");
                        cur.insert((user, ch), (*t, *t));
                    }
                    // A member reads up to some offset they have.
                    1 if members.contains(&user) => {
                        let t = top.get(ch).copied().unwrap_or(0);
                        let to = if t == 0 { 0 } else { x % (t + 1) };
                        conns[u].call(json!({"op": "cursor", "channel": ch, "read": to})).await;
                        let e = cur.entry((user, ch)).or_default();
                        *e = (e.0.max(to), e.1.max(to));
                    }
                    // A reconnect.
                    _ => {
                        close_ws(std::mem::replace(&mut conns[u], Raw::connect(&server, Some(user)).await)).await;
                    }
                }
            }
            let expect = |user: &str| -> BTreeMap<String, (u64, u64, u64)> {
                channels
                    .iter()
                    .filter(|(_, m)| m.contains(&user))
                    .map(|(ch, _)| {
                        let t = top.get(ch).copied().unwrap_or(0);
                        let (r, _) = cur.get(&(user, *ch)).copied().unwrap_or((0, 0));
                        (ch.to_string(), (t - r, r, t))
                    })
                    .collect()
            };
            let inbox_of = |raw: Value| -> Result<BTreeMap<String, (u64, u64, u64)>, String> {
                let list = raw["ok"]["conversations"].as_array().ok_or(format!("{raw}"))?.clone();
                let times: Vec<u64> = list.iter().map(|c| c["active_at"].as_u64().unwrap()).collect();
                if !times.windows(2).all(|w| w[0] >= w[1]) {
                    return Err(format!("not sorted by activity: {times:?}"));
                }
                Ok(list.iter().map(|c| {
                    let n = |k: &str| c[k].as_u64().unwrap();
                    (c["channel"].as_str().unwrap().to_string(), (n("unread"), n("read"), n("top")))
                }).collect())
            };
            for (i, user) in users.iter().enumerate() {
                let want = expect(user);
                let conn = &mut conns[i];
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let got = inbox_of(conn.call(json!({"op": "inbox"})).await);
                    if got.as_ref() == Ok(&want) { break; }
                    assert!(Instant::now() < deadline, "{user}: want {want:?}, got {got:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            for conn in conns {
                close_ws(conn).await;
            }
            server.shutdown().await;

            // After a restart, the same: cursors, members and tops were kept.
            let server = start_with(config()).await;
            for user in users {
                let want = expect(user);
                let mut raw = Raw::connect(&server, Some(user)).await;
                let got = inbox_of(raw.call(json!({"op": "inbox", "limit": 2})).await).unwrap();
                let mut all = got.clone();
                if want.len() > 2 {
                    let first = raw.call(json!({"op": "inbox", "limit": 2})).await;
                    let next = first["ok"]["next_cursor"].as_str().expect("a next page").to_string();
                    let rest = raw.call(json!({"op": "inbox", "limit": 2, "cursor": next})).await;
                    all.extend(inbox_of(rest).unwrap());
                }
                assert_eq!(all, want, "{user} after the restart");
            }
            server.shutdown().await;
        });
    }
}

#[tokio::test]
async fn offline_members_get_one_webhook_per_publication() {
    let (url, got) = receiver(0).await;
    let mut c = with_dm(hooked(&url));
    c.webhooks.events = vec![WebhookEvent::OfflinePublication];
    let server = start_with(c).await;
    add(&server, "dm:abc", &["alice", "bob", "carol"]).await;
    let mut bob = Raw::connect(&server, Some("bob")).await;
    bob.call(json!({"op": "subscribe", "channel": "dm:abc"}))
        .await;
    let mut alice = Raw::connect(&server, Some("alice")).await;
    alice
        .call(json!({"op": "subscribe", "channel": "dm:abc"}))
        .await;
    for n in 1..=3 {
        let r = alice
            .call(json!({"op": "publish", "channel": "dm:abc", "data": {"n": n}, "idempotency_key": format!("k{n}")}))
            .await;
        assert_eq!(r["ok"]["offset"], n);
    }
    // A retry publishes nothing new, and tells nothing new.
    let r = alice
        .call(json!({"op": "publish", "channel": "dm:abc", "data": {"n": 3}, "idempotency_key": "k3"}))
        .await;
    assert_eq!(r["ok"]["offset"], 3);
    got.wait_for("three for carol", |g| g.count("offline_publication") >= 3)
        .await;
    // Nothing more comes: a publication after it is the last event.
    api(
        &server,
        "publish",
        json!({"channel": "dm:abc", "data": "last"}),
    )
    .await;
    got.wait_for("the API's", |g| g.count("offline_publication") >= 4)
        .await;
    let events = got.unique();
    let told: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        told,
        [
            ("carol".into(), 1),
            ("carol".into(), 2),
            ("carol".into(), 3),
            ("carol".into(), 4)
        ],
        "{events:#?}"
    );
    assert_eq!(events[0]["publication"]["data"], json!({"n": 1}));
    assert_eq!(events[0]["channel"], "dm:abc");
    server.shutdown().await;
}

#[tokio::test]
async fn offline_notifications_wait_for_a_backend_that_is_down() {
    // Nothing listens on the backend's address for now.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let mut c = with_dm(hooked(&format!("http://{addr}/events")));
    c.webhooks.events = vec![WebhookEvent::OfflinePublication];
    let server = start_with(c).await;
    add(&server, "dm:ab", &["alice", "bob"]).await;
    for n in 1..=5 {
        api(&server, "publish", json!({"channel": "dm:ab", "data": n})).await;
    }
    // Tries fail meanwhile (connection refused), then the backend is back.
    eventually("failed tries", || async {
        match metric(&server, "tidings_webhook_failures_total").await {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (_, got) = receiver_at(&addr, 0).await;
    got.wait_for("ten events", |g| g.count("offline_publication") >= 10)
        .await;
    let mut told: Vec<(String, u64)> = got
        .unique()
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    told.sort();
    let want: Vec<(String, u64)> = ["alice", "bob"]
        .iter()
        .flat_map(|u| (1..=5).map(move |o| (u.to_string(), o)))
        .collect();
    assert_eq!(told, want, "one per (user, publication)");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_chat_input_is_refused_with_a_code_and_harms_nothing() {
    let server = start_with(with_dm(config())).await;
    add(&server, "dm:ab", &["alice", "bob"]).await;
    api(&server, "publish", json!({"channel": "dm:ab", "data": 1})).await;
    let mut alice = Raw::connect(&server, Some("alice")).await;
    let mut anon = Raw::connect(&server, None).await;
    let key = |first: u8| {
        use base64::Engine;
        let mut raw = [7u8; 65];
        raw[0] = first;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    for (cmd, code) in [
        (json!({"op": "cursor", "channel": "dm:ab", "read": 2}), 101),
        (
            json!({"op": "cursor", "channel": "dm:ab", "delivered": 99}),
            101,
        ),
        (json!({"op": "cursor", "channel": "dm:ab"}), 101),
        (
            json!({"op": "cursor", "channel": "chat:room", "read": 0}),
            101,
        ),
        (json!({"op": "cursor", "channel": "dm:xy", "read": 0}), 103),
        (json!({"op": "inbox", "cursor": "nonsense"}), 101),
        (
            json!({"op": "keys", "device": "d1", "key": key(4), "user": "bob"}),
            103,
        ),
        (json!({"op": "keys", "device": "d1", "key": key(2)}), 101),
        (json!({"op": "keys", "device": "a/b", "key": key(4)}), 101),
        (json!({"op": "keys", "users": []}), 101),
        (json!({"op": "keys"}), 101),
    ] {
        let r = alice.call(cmd.clone()).await;
        assert_eq!(error_code(&r), code, "{cmd} → {r}");
    }
    for n in 0..16 {
        let r = alice
            .call(json!({"op": "keys", "device": format!("d{n}"), "key": key(4)}))
            .await;
        assert_eq!(r["ok"], json!({}), "{r}");
    }
    let r = alice
        .call(json!({"op": "keys", "device": "d16", "key": key(4)}))
        .await;
    assert_eq!(error_code(&r), 104, "{r}");
    for cmd in [
        json!({"op": "inbox"}),
        json!({"op": "cursor", "channel": "dm:ab", "read": 0}),
        json!({"op": "keys", "users": ["alice"]}),
    ] {
        let r = anon.call(cmd.clone()).await;
        assert_eq!(error_code(&r), 103, "{cmd} → {r}");
    }
    for (method, body) in [
        (
            "members/add",
            json!({"channel": "chat:room", "users": ["a"]}),
        ),
        ("members/add", json!({"channel": "dm:ab", "users": []})),
        ("members/add", json!({"channel": "dm:ab", "users": [""]})),
        (
            "members/list",
            json!({"channel": "dm:ab", "limit": 1, "extra": 1}),
        ),
    ] {
        let (status, r) = api(&server, method, body.clone()).await;
        assert_eq!(
            (status, error_code(&json!({"error": r["error"]}))),
            (400, 101),
            "{method} {body} → {r}"
        );
    }
    // Nothing was harmed: the connection works, the cursors are what they were.
    let r = alice
        .call(json!({"op": "cursor", "channel": "dm:ab", "delivered": 1}))
        .await;
    assert_eq!(r["ok"], json!({"delivered": 1, "read": 0}));
    let keys = alice
        .call(json!({"op": "keys", "users": ["alice", "bob"]}))
        .await;
    assert_eq!(keys["ok"]["keys"]["alice"].as_array().unwrap().len(), 16);
    assert!(keys["ok"]["keys"].get("bob").is_none());
    server.shutdown().await;
}
