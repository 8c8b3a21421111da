//! Several nodes on one real redis-server behave as one server: every
//! subscriber sees every publication once and in order wherever it was
//! published and wherever the subscriber (re)connects; idempotency keys
//! hold across nodes; pub/sub connection loss and Redis restarts never hand
//! a subscriber a gap or a wrong offset; presence, `disconnect` and `info`
//! span the nodes. Every test that does not restart Redis runs twice: on
//! one redis-server, and on a three-master Redis Cluster.

mod common;

use std::time::Duration;

use common::redis::{Redis, RedisCluster};
use common::{Raw, api, config};
use proptest::prelude::*;
use serde_json::{Value, json};
use tidings_server::Server;
use tidings_server::config::{EngineType, RedisConfig};

/// What the nodes share: one Redis, or a Redis Cluster.
enum Backend {
    Single(Redis),
    Cluster(RedisCluster),
}

impl Backend {
    fn single() -> Backend {
        Backend::Single(Redis::start())
    }

    fn cluster() -> Backend {
        Backend::Cluster(RedisCluster::start())
    }

    /// Runs a command with redis-cli on every server; their outputs.
    fn cli_each(&self, args: &[&str]) -> Vec<String> {
        match self {
            Backend::Single(r) => vec![r.cli(args)],
            Backend::Cluster(c) => c.nodes.iter().map(|r| r.cli(args)).collect(),
        }
    }

    /// The one server (the tests that restart Redis run on one).
    fn server(&mut self) -> &mut Redis {
        match self {
            Backend::Single(r) => r,
            Backend::Cluster(_) => unreachable!("restart tests run on one server"),
        }
    }
}

/// Starts `n` nodes on `backend`.
async fn nodes(backend: &Backend, n: usize) -> Vec<Server> {
    nodes_with(backend, n, |_| {}).await
}

/// Starts `n` nodes on `backend`, each configured by `change` too.
async fn nodes_with(
    backend: &Backend,
    n: usize,
    change: impl Fn(&mut tidings_server::Config),
) -> Vec<Server> {
    let (urls, cluster) = match backend {
        Backend::Single(r) => (vec![r.url()], false),
        Backend::Cluster(c) => (c.urls(), true),
    };
    let mut out = Vec::new();
    for i in 0..n {
        let mut c = config();
        c.engine.r#type = EngineType::Redis;
        c.engine.redis = RedisConfig {
            urls: urls.clone(),
            cluster,
            position_check: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        c.node_name = Some(format!("node-{i}"));
        c.presence_ttl = Duration::from_secs(2);
        change(&mut c);
        out.push(common::start_with(c).await);
    }
    out
}

/// Subscribes (with `since`, when given); returns the client, the offsets
/// recovered in the reply, and the channel's epoch.
async fn subscribe(
    server: &Server,
    user: Option<&str>,
    channel: &str,
    since: Option<(u64, &str)>,
) -> (Raw, Value) {
    let mut raw = Raw::connect(server, user).await;
    let mut cmd = json!({"op": "subscribe", "channel": channel});
    if let Some((offset, epoch)) = since {
        cmd["since"] = json!({"offset": offset, "epoch": epoch});
    }
    // As SDKs do: a temporary error (the node still reconnecting to Redis)
    // is retried after a pause.
    for _ in 0..50 {
        let reply = raw.call(cmd.clone()).await;
        if reply["error"]["temporary"] == true {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert!(reply.get("ok").is_some(), "subscribe failed: {reply}");
        return (raw, reply["ok"].clone());
    }
    panic!("subscribe kept failing with temporary errors");
}

fn offsets_of(ok: &Value) -> Vec<u64> {
    ok["publications"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default()
}

/// Reads pushes until the channel's publications reach `top` (or `t`
/// passes); returns every offset received, and any other push.
async fn collect(raw: &mut Raw, top: u64, last: &mut u64, t: Duration) -> (Vec<u64>, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + t;
    let (mut got, mut other) = (Vec::new(), Vec::new());
    while *last < top {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.next_within(left).await {
            Ok(Some(m)) if m["push"] == "pub" => {
                let o = m["offset"].as_u64().expect("offset");
                got.push(o);
                *last = (*last).max(o);
            }
            Ok(Some(m)) if m["push"] == "ping" => {}
            Ok(Some(m)) => other.push(m),
            Ok(None) | Err(()) => break,
        }
    }
    (got, other)
}

/// Reads whatever arrives within `quiet` of the previous message.
async fn drain(raw: &mut Raw, last: &mut u64, quiet: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    while let Ok(Some(m)) = raw.next_within(quiet).await {
        if m["push"] == "pub" {
            let o = m["offset"].as_u64().expect("offset");
            got.push(o);
            *last = (*last).max(o);
        }
    }
    got
}

/// Waits (10 s at most) for `unsub` 3003, and no publication before it.
async fn expect_unsub_3003(raw: &mut Raw) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = raw
            .next_within(left)
            .await
            .expect("an unsub within 10 s")
            .expect("open");
        assert_ne!(m["push"], "pub", "no publication before the unsub: {m}");
        if m["push"] == "unsub" {
            assert_eq!(m["code"], 3003, "{m}");
            return;
        }
    }
}

async fn publish_api(server: &Server, channel: &str, data: Value, key: Option<&str>) -> Value {
    let mut body = json!({"channel": channel, "data": data});
    if let Some(k) = key {
        body["idempotency_key"] = json!(k);
    }
    let (status, reply) = api(server, "publish", body).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

#[derive(Debug, Clone)]
enum Op {
    /// Publish through node i's server API.
    Api(usize),
    /// Publish from a client connected to node i.
    Client(usize),
    /// Subscriber s drops and resumes with `since` on node i.
    Move(usize, usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    /// Three nodes, a subscriber on each; publications through every node's
    /// API and from clients on every node; subscribers drop and resume on
    /// random nodes. Every subscriber ends with every offset exactly once,
    /// in order.
    #[test]
    fn every_subscriber_sees_every_publication_once_in_order(ops in proptest::collection::vec(
        prop_oneof![
            3 => (0usize..3).prop_map(Op::Api),
            3 => (0usize..3).prop_map(Op::Client),
            1 => (0usize..3, 0usize..3).prop_map(|(s, n)| Op::Move(s, n)),
        ], 1..30)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            // Half the cases on one server, half on a Cluster.
            let backend = if ops.len() % 2 == 0 { Backend::single() } else { Backend::cluster() };
            let servers = nodes(&backend, 3).await;
            let mut subs = Vec::new();
            let mut epoch = String::new();
            for s in &servers {
                let (raw, ok) = subscribe(s, None, "room", None).await;
                epoch = ok["epoch"].as_str().unwrap().to_string();
                subs.push((raw, Vec::<u64>::new(), 0u64));
            }
            let mut publishers = Vec::new();
            for s in &servers {
                publishers.push(Raw::connect(s, None).await);
            }
            let mut top = 0u64;
            for (n, op) in ops.iter().enumerate() {
                match op {
                    Op::Api(i) => {
                        let r = publish_api(&servers[*i], "room", json!(n), None).await;
                        top = r["offset"].as_u64().unwrap();
                    }
                    Op::Client(i) => {
                        let r = publishers[*i].call(json!({"op": "publish", "channel": "room", "data": n})).await;
                        top = r["ok"]["offset"].as_u64().expect("published");
                    }
                    Op::Move(s, i) => {
                        let (raw, seen, last) = &mut subs[*s];
                        let got = drain(raw, last, Duration::from_millis(30)).await;
                        seen.extend(got);
                        let (fresh, ok) = subscribe(&servers[*i], None, "room", Some((*last, &epoch))).await;
                        prop_assert_eq!(&ok["recovered"], &json!(true));
                        let recovered = offsets_of(&ok);
                        if let Some(&o) = recovered.last() { *last = (*last).max(o); }
                        seen.extend(recovered);
                        *raw = fresh;
                    }
                }
            }
            for (raw, seen, last) in &mut subs {
                let (got, other) = collect(raw, top, last, Duration::from_secs(10)).await;
                seen.extend(got);
                prop_assert!(other.is_empty(), "unexpected pushes: {:?}", other);
                let want: Vec<u64> = (1..=top).collect();
                prop_assert_eq!(&*seen, &want);
            }
            Ok(())
        })?;
    }
}

async fn one_idempotency_key_retried_on_every_node_publishes_once(redis: Backend) {
    let servers = nodes(&redis, 3).await;
    let mut tasks = Vec::new();
    for round in 0..5 {
        for s in &servers {
            let (addr, data) = (s.local_addr(), json!({"round": round}));
            tasks.push(tokio::spawn(async move {
                let res = reqwest::Client::new()
                    .post(format!("http://{addr}/v1/api/publish"))
                    .bearer_auth(common::API_KEY)
                    .json(&json!({"channel": "once", "data": data, "idempotency_key": "order-42"}))
                    .send()
                    .await
                    .unwrap();
                res.json::<Value>().await.unwrap()
            }));
        }
    }
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.push(t.await.unwrap()["offset"].as_u64().unwrap());
    }
    assert!(offsets.iter().all(|o| *o == 1), "{offsets:?}");
    let (_, history) = api(&servers[2], "history", json!({"channel": "once"})).await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 1);
}

async fn killed_pubsub_connections_lose_nothing(redis: Backend) {
    let servers = nodes(&redis, 2).await;
    let (mut sub, _) = subscribe(&servers[1], None, "busy", None).await;
    let mut last = 0;
    let mut seen = Vec::new();
    let total = 300u64;
    for n in 1..=total {
        publish_api(&servers[0], "busy", json!(n), None).await;
        if n % 100 == 50 {
            // Both nodes listen again (after the previous cut)...
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while redis
                .cli_each(&["CLIENT", "LIST", "TYPE", "pubsub"])
                .iter()
                .map(|l| l.lines().count())
                .sum::<usize>()
                < 2
            {
                assert!(std::time::Instant::now() < deadline, "nodes reconnect");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // ...then every node's pub/sub connection is cut while publishing goes on.
            let killed: usize = redis
                .cli_each(&["CLIENT", "KILL", "TYPE", "pubsub"])
                .iter()
                .map(|n| n.parse::<usize>().unwrap_or(0))
                .sum();
            assert_eq!(killed, 2, "both nodes' pub/sub connections were killed");
        }
    }
    let (got, other) = collect(&mut sub, total, &mut last, Duration::from_secs(15)).await;
    seen.extend(got);
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}

/// Publishes until Redis answers again (after a restart).
async fn publish_when_back(server: &Server, channel: &str, data: Value) -> Value {
    for _ in 0..100 {
        let (status, reply) = api(
            server,
            "publish",
            json!({"channel": channel, "data": data.clone()}),
        )
        .await;
        if status == 200 {
            return reply;
        }
        // Unavailable is temporary: 503 with `temporary: true`.
        assert_eq!(status, 503, "{reply}");
        assert_eq!(reply["error"]["temporary"], true, "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("redis did not come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_aof_recovers() {
    let mut redis = Backend::Single(Redis::start_with(true));
    let servers = nodes(&redis, 2).await;
    let (mut sub, ok) = subscribe(&servers[1], None, "kept", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for n in 1..=5 {
        publish_api(&servers[0], "kept", json!(n), None).await;
    }
    let mut last = 0;
    let (got, _) = collect(&mut sub, 5, &mut last, Duration::from_secs(10)).await;
    assert_eq!(got, [1, 2, 3, 4, 5]);
    drop(sub);
    redis.server().restart();
    let r = publish_when_back(&servers[0], "kept", json!(6)).await;
    assert_eq!(r["offset"], 6);
    assert_eq!(
        r["epoch"],
        epoch.as_str(),
        "the same epoch after an AOF restart"
    );
    // A subscriber resuming on the other node recovers what it missed.
    let (_, ok) = subscribe(&servers[0], None, "kept", Some((5, &epoch))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(offsets_of(&ok), [6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_persistence_resets_subscribers() {
    let mut redis = Backend::single();
    let servers = nodes(&redis, 2).await;
    let (mut stays, ok) = subscribe(&servers[1], None, "gone", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for n in 1..=5 {
        publish_api(&servers[0], "gone", json!(n), None).await;
    }
    let mut last = 0;
    collect(&mut stays, 5, &mut last, Duration::from_secs(10)).await;
    redis.server().restart();
    let r = publish_when_back(&servers[0], "gone", json!("after")).await;
    assert_ne!(
        r["epoch"],
        epoch.as_str(),
        "Redis lost the channel: a new epoch"
    );
    assert_eq!(r["offset"], 1);
    // The subscriber that stayed is told to subscribe again, never handed
    // offset 1 of the new epoch as if it followed 5.
    expect_unsub_3003(&mut stays).await;
    assert_eq!(
        common::metric(&servers[1], "tidings_channel_resets_total").await,
        Some(1.0)
    );
    // Resuming from the old position: not recovered.
    let (_, ok) = subscribe(&servers[0], None, "gone", Some((5, &epoch))).await;
    assert_eq!(ok["recovered"], false, "{ok}");
}

async fn presence_disconnect_and_info_span_the_nodes(redis: Backend) {
    let servers = nodes(&redis, 3).await;
    let (mut alice, _) = subscribe(&servers[0], Some("alice"), "chat:room", None).await;
    let (_bob, _) = subscribe(&servers[1], Some("bob"), "chat:room", None).await;
    let (status, presence) = api(&servers[2], "presence", json!({"channel": "chat:room"})).await;
    assert_eq!(status, 200, "{presence}");
    let mut users: Vec<&str> = presence["clients"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    let (_, stats) = api(
        &servers[2],
        "presence_stats",
        json!({"channel": "chat:room"}),
    )
    .await;
    assert_eq!(
        (stats["clients"].as_u64(), stats["users"].as_u64()),
        (Some(2), Some(2))
    );

    let (_, info) = api(&servers[0], "info", json!({})).await;
    let mut names: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["node-0", "node-1", "node-2"]);

    // The API of node 2 disconnects alice, who is connected to node 0.
    let (status, _) = api(
        &servers[2],
        "disconnect",
        json!({"user": "alice", "code": 3500}),
    )
    .await;
    assert_eq!(status, 200);
    let d = alice.expect_disconnect().await;
    assert_eq!(d["code"], 3500, "{d}");
}

async fn subscribes_racing_unsubscribes_leave_the_node_subscribed_exactly_when_needed(
    redis: Backend,
) {
    let servers = nodes(&redis, 1).await;
    let server = &servers[0];
    // Eight clients flip between subscribed and not, all at once; the even
    // ones end subscribed.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Raw::connect(server, None).await);
    }
    let flips = clients.into_iter().enumerate().map(|(i, mut raw)| {
        tokio::spawn(async move {
            for _ in 0..15 {
                let r = raw
                    .call(json!({"op": "subscribe", "channel": "flip"}))
                    .await;
                assert!(r.get("ok").is_some(), "{r}");
                let r = raw
                    .call(json!({"op": "unsubscribe", "channel": "flip"}))
                    .await;
                assert!(r.get("ok").is_some(), "{r}");
            }
            if i % 2 == 0 {
                let r = raw
                    .call(json!({"op": "subscribe", "channel": "flip"}))
                    .await;
                assert!(r.get("ok").is_some(), "{r}");
            }
            raw
        })
    });
    let mut clients = Vec::new();
    for f in flips.collect::<Vec<_>>() {
        clients.push(f.await.unwrap());
    }
    // The node's subscriptions, on whichever server its pub/sub connection is.
    let numsub = |redis: &Backend| -> usize {
        redis
            .cli_each(&["PUBSUB", "NUMSUB", "tidings:c:flip"])
            .iter()
            .filter_map(|out| out.lines().nth(1)?.parse::<usize>().ok())
            .sum()
    };
    assert_eq!(numsub(&redis), 1);
    publish_api(server, "flip", json!("hi"), None).await;
    for (i, raw) in clients.iter_mut().enumerate() {
        let m = raw
            .next_within(Duration::from_millis(if i % 2 == 0 { 5000 } else { 300 }))
            .await;
        match m {
            Ok(Some(m)) if i % 2 == 0 => assert_eq!(m["push"], "pub", "{m}"),
            Err(()) if i % 2 == 1 => {}
            other => panic!("client {i}: {other:?}"),
        }
    }
    // The last unsubscribe unsubscribes the node.
    for raw in clients.iter_mut().step_by(2) {
        raw.call(json!({"op": "unsubscribe", "channel": "flip"}))
            .await;
    }
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = numsub(&redis);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0);
}

async fn channels_lists_every_nodes_subscribers(redis: Backend) {
    let servers = nodes(&redis, 3).await;
    let mut held = Vec::new();
    for (node, channel) in [(0, "x1"), (0, "x1"), (1, "x2"), (2, "x1"), (2, "y")] {
        held.push(subscribe(&servers[node], None, channel, None).await.0);
    }
    let (status, page) = api(&servers[1], "channels", json!({"prefix": "x", "limit": 1})).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["channels"],
        json!([{"channel": "x1", "subscribers": 3}])
    );
    let cursor = page["next_cursor"].as_str().expect("another page");
    let (_, page) = api(
        &servers[1],
        "channels",
        json!({"prefix": "x", "limit": 1, "cursor": cursor}),
    )
    .await;
    assert_eq!(
        page["channels"],
        json!([{"channel": "x2", "subscribers": 1}])
    );
    assert!(page.get("next_cursor").is_none_or(Value::is_null), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_handed_out_again_after_a_rollback_start_a_new_epoch() {
    let mut redis = Backend::single();
    let servers = nodes(&redis, 2).await;
    let (mut stays, ok) = subscribe(&servers[1], None, "rolled", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for n in 1..=3 {
        publish_api(&servers[0], "rolled", json!(n), None).await;
    }
    // A snapshot at offset 3; 4 and 5 are acknowledged, then lost by a
    // restart from that snapshot (as `appendfsync everysec` or a lagging
    // replica can lose them): Redis comes back with the same epoch at 3.
    assert_eq!(redis.server().cli(&["SAVE"]), "OK");
    for n in 4..=5 {
        publish_api(&servers[0], "rolled", json!(n), None).await;
    }
    let mut last = 0;
    let (got, _) = collect(&mut stays, 5, &mut last, Duration::from_secs(10)).await;
    assert_eq!(got, [1, 2, 3, 4, 5]);
    redis.server().restart();
    // Offsets 4 and 5 again, and past them, before any position check.
    publish_when_back(&servers[0], "rolled", json!("after")).await;
    for n in 0..3 {
        publish_api(&servers[0], "rolled", json!(n), None).await;
    }
    // The subscriber is never handed a second offset 4; it is told to
    // subscribe again, and its old position does not recover.
    expect_unsub_3003(&mut stays).await;
    let (_, ok) = subscribe(&servers[0], None, "rolled", Some((5, &epoch))).await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_ne!(ok["epoch"], epoch.as_str());
}

/// Chat across nodes: a member on node 0 publishes, the other member's
/// devices on nodes 1 and 2 see their inbox change (with the publication);
/// a read on node 1 reaches the sender as a receipt and clears the badge
/// on node 2; members and cursors live in Redis.
async fn chat_receipts_and_inbox_span_the_nodes(redis: Backend) {
    let servers = nodes_with(&redis, 3, |c| {
        c.namespaces.insert(
            "dm".into(),
            tidings_server::config::NamespaceOptions {
                members: true,
                history_size: 100,
                ..Default::default()
            },
        );
    })
    .await;
    let (status, _) = api(
        &servers[2],
        "members/add",
        json!({"channel": "dm:ab", "users": ["alice", "bob"]}),
    )
    .await;
    assert_eq!(status, 200);
    let (mut alice, _) = subscribe(&servers[0], Some("alice"), "dm:ab", None).await;
    let mut phone = Raw::connect(&servers[1], Some("bob")).await;
    let mut laptop = Raw::connect(&servers[2], Some("bob")).await;
    let sent = alice
        .call(json!({"op": "publish", "channel": "dm:ab", "data": {"text": "hi"}}))
        .await;
    assert_eq!(sent["ok"]["offset"], 1, "{sent}");
    async fn push_of(raw: &mut Raw, kind: &str, check: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = raw.next_non_ping().await.expect("open");
            if m["push"] == kind && check(&m) {
                return m;
            }
        }
    }
    for device in [&mut phone, &mut laptop] {
        let change = push_of(device, "inbox", |_| true).await;
        assert_eq!(change["unread"], 1, "{change}");
        assert_eq!(change["last"]["data"]["text"], "hi", "{change}");
    }
    let r = phone
        .call(json!({"op": "cursor", "channel": "dm:ab", "read": 1}))
        .await;
    assert_eq!(r["ok"], json!({"delivered": 1, "read": 1}));
    let receipt = push_of(&mut alice, "receipt", |m| m["user"] == "bob").await;
    assert_eq!(
        (receipt["delivered"].clone(), receipt["read"].clone()),
        (json!(1), json!(1))
    );
    let change = push_of(&mut laptop, "inbox", |m| m["read"] == 1).await;
    assert_eq!(change["unread"], 0, "{change}");
    let inbox = laptop.call(json!({"op": "inbox"})).await;
    assert_eq!(inbox["ok"]["conversations"][0]["unread"], 0, "{inbox}");
}

macro_rules! on_both {
    ($($name:ident),*) => {
        mod standalone {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::single()).await })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::cluster()).await })*
        }
    };
}

on_both!(
    one_idempotency_key_retried_on_every_node_publishes_once,
    killed_pubsub_connections_lose_nothing,
    presence_disconnect_and_info_span_the_nodes,
    subscribes_racing_unsubscribes_leave_the_node_subscribed_exactly_when_needed,
    channels_lists_every_nodes_subscribers,
    connections_per_user_count_across_nodes,
    webhooks_tell_occupied_vacated_and_members_once_for_the_cluster,
    chat_receipts_and_inbox_span_the_nodes
);

/// Three nodes, one receiver: a channel is occupied and vacated once, a
/// user added and removed once, whichever nodes their connections are on.
async fn webhooks_tell_occupied_vacated_and_members_once_for_the_cluster(backend: Backend) {
    use common::receiver::{close_ws, receiver};
    let (url, got) = receiver(0).await;
    let servers = nodes_with(&backend, 3, |c| {
        let hooked = common::receiver::hooked(&url);
        c.webhooks = hooked.webhooks;
    })
    .await;
    let mut clients = Vec::new();
    for (node, user) in [(0, "alice"), (1, "alice"), (2, "bob")] {
        let mut raw = Raw::connect(&servers[node], Some(user)).await;
        let r = raw
            .call(json!({"op": "subscribe", "channel": "chat:webhooks"}))
            .await;
        assert!(r["ok"].is_object(), "{r}");
        clients.push(raw);
    }
    for raw in clients {
        close_ws(raw).await;
    }
    let of = |kind: &str| {
        got.unique()
            .iter()
            .filter(|e| e["event"] == kind && e["channel"] == "chat:webhooks")
            .map(|e| e["user"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    got.wait_for("vacated and both users removed", |_| {
        of("channel_vacated").len() == 1 && of("member_removed").len() == 2
    })
    .await;
    // Anything told twice would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(of("channel_occupied").len(), 1);
    assert_eq!(of("channel_vacated").len(), 1);
    let mut added = of("member_added");
    added.sort();
    assert_eq!(added, ["alice", "bob"]);
    let mut removed = of("member_removed");
    removed.sort();
    assert_eq!(removed, ["alice", "bob"]);
    for s in servers {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_gracefully_sends_its_clients_to_the_others() {
    let redis = Backend::single();
    let mut servers = nodes(&redis, 2).await;
    let (mut client, ok) = subscribe(&servers[0], None, "moving", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for n in 1..=3 {
        publish_api(&servers[1], "moving", json!(n), None).await;
    }
    let mut last = 0;
    let (mut seen, _) = collect(&mut client, 3, &mut last, Duration::from_secs(10)).await;
    // SIGTERM's path: the node tells its clients to come back after a
    // random delay (3001), while the other node goes on publishing.
    let stopping = tokio::spawn(servers.remove(0).shutdown());
    let disconnect = loop {
        let m = client
            .next()
            .await
            .expect("a disconnect push before the close");
        match m["push"].as_str() {
            Some("pub") => {
                last = m["offset"].as_u64().unwrap();
                seen.push(last);
            }
            Some("disconnect") => break m,
            _ => {}
        }
    };
    assert_eq!(disconnect["code"], 3001, "{disconnect}");
    let delay = disconnect["delay_ms"].as_u64().expect("a delay");
    assert!(delay <= 500, "within shutdown_spread: {delay}");
    for n in 4..=6 {
        publish_api(&servers[0], "moving", json!(n), None).await;
    }
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let (_, ok) = subscribe(&servers[0], None, "moving", Some((last, &epoch))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    seen.extend(offsets_of(&ok));
    assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
    stopping.await.unwrap();
}

async fn connections_per_user_count_across_nodes(redis: Backend) {
    let servers = nodes_with(&redis, 2, |c| c.client.max_connections_per_user = 2).await;
    let _a = Raw::connect(&servers[0], Some("alice")).await;
    let b = Raw::connect(&servers[1], Some("alice")).await;
    // A third, on either node, is one too many.
    let mut third = Raw::open(&servers[1]).await;
    let reply = third
        .call(json!({"op": "connect", "token": common::token("alice")}))
        .await;
    assert_eq!(reply["error"]["code"], 104, "{reply}");
    // One closes: room for another, on the other node.
    drop(b);
    let mut ok = false;
    for _ in 0..100 {
        let mut again = Raw::open(&servers[0]).await;
        let reply = again
            .call(json!({"op": "connect", "token": common::token("alice")}))
            .await;
        if reply.get("ok").is_some() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a closed connection gives its place back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_every_publication() {
    // Master and replica with a password, which the Sentinels are given too.
    const PASSWORD: &str = "data-secret";
    let auth = ["--requirepass", PASSWORD, "--masterauth", PASSWORD];
    let mut master = Redis::start_with_args(&auth);
    let replica = Redis::start_replica_of(&master, &auth);
    let sentinel = common::redis::Sentinel::start(&master, Some(PASSWORD));
    let servers = {
        let mut out = Vec::new();
        for i in 0..2 {
            let mut c = config();
            c.engine.r#type = EngineType::Redis;
            c.engine.redis = RedisConfig {
                urls: vec![sentinel.url()],
                sentinel_master: Some("mymaster".into()),
                master_password: Some(PASSWORD.into()),
                position_check: Duration::from_millis(300),
                connect_timeout: Duration::from_millis(500),
                command_timeout: Duration::from_millis(500),
                ..Default::default()
            };
            c.node_name = Some(format!("node-{i}"));
            out.push(common::start_with(c).await);
        }
        out
    };
    let (mut sub, ok) = subscribe(&servers[1], None, "failover", None).await;
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for n in 1..=5 {
        publish_api(&servers[0], "failover", json!(n), None).await;
    }
    // The replica has it all before the master dies.
    let offset = |r: &Redis, key: &str| -> String {
        r.cli(&["INFO", "replication"])
            .lines()
            .find_map(|l| l.strip_prefix(key).map(str::to_string))
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while offset(&replica, "slave_repl_offset:") != offset(&master, "master_repl_offset:")
        || !sentinel
            .cli(&["SENTINEL", "REPLICAS", "mymaster"])
            .contains(&replica.port.to_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "replica caught up and known to the Sentinel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    master.kill();
    // Publishing fails (temporary) until Sentinel promotes the replica and
    // the nodes follow it; then it goes on in the same epoch.
    let mut reply = Value::Null;
    for _ in 0..300 {
        let (status, r) = api(
            &servers[0],
            "publish",
            // One key for every try: a try that published but timed out
            // is answered by the next, not published again.
            json!({"channel": "failover", "data": 6, "idempotency_key": "six"}),
        )
        .await;
        if status == 200 {
            reply = r;
            break;
        }
        assert_eq!(r["error"]["temporary"], true, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply["offset"], 6, "{reply}");
    assert_eq!(reply["epoch"], epoch.as_str());
    let mut last = 0;
    let (got, other) = collect(&mut sub, 6, &mut last, Duration::from_secs(15)).await;
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    let (_, ok) = subscribe(&servers[0], None, "failover", Some((4, &epoch))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(offsets_of(&ok), [5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_redis_over_tls() {
    let redis = Backend::Single(Redis::start_tls());
    let Backend::Single(server) = &redis else {
        unreachable!()
    };
    let (url, ca) = (server.tls_url(), server.ca());
    let servers = nodes_with(&redis, 2, |c| {
        c.engine.redis.urls = vec![url.clone()];
        c.engine.redis.tls_ca_file = Some(ca.clone());
    })
    .await;
    let (mut sub, _) = subscribe(&servers[1], None, "secret", None).await;
    for n in 1..=3 {
        publish_api(&servers[0], "secret", json!(n), None).await;
    }
    let mut last = 0;
    let (got, _) = collect(&mut sub, 3, &mut last, Duration::from_secs(10)).await;
    assert_eq!(got, [1, 2, 3]);
    // The server's certificate is checked: without its CA, no start.
    let mut c = config();
    c.engine.r#type = EngineType::Redis;
    c.engine.redis.urls = vec![url];
    c.engine.redis.connect_timeout = Duration::from_millis(500);
    let refused = Server::start(c).await.err().map(|e| e.to_string());
    let refused = refused.expect("a certificate from an unknown CA is refused");
    assert!(refused.contains("certificate"), "{refused}");
}
