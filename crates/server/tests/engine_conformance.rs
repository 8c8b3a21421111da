//! One conformance suite that every engine passes: the memory engine and the
//! Redis engine (on a real redis-server, and on a real three-master Redis
//! Cluster) run the same checks of offsets,
//! epochs, trims, idempotency under racing retries, recovery reads,
//! presence leases and last seen.

mod common;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::value::RawValue;
use tidings_protocol::{ClientInfo, Publication};
use tidings_server::config::RedisConfig;
use tidings_server::engine::memory::MemoryEngine;
use tidings_server::engine::redis::RedisEngine;
use tidings_server::engine::{
    ChannelPolicy, Engine, HistoryQuery, PresenceEvent, PresencePolicy, PublicationSink,
    PublishRequest, UserControl,
};

/// Records what an engine hands to the node.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    /// Channels with a subscriber on this (pretend) node, as a hub knows them.
    subscribed: Mutex<std::collections::BTreeSet<String>>,
    changed: tokio::sync::Notify,
}

impl Recorder {
    fn push(&self, event: String) {
        self.events.lock().push(event);
        self.changed.notify_waiters();
    }

    /// Waits (at most 10 s) until `n` events were recorded; returns them.
    async fn wait_for(&self, n: usize) -> Vec<String> {
        self.wait_for_in("", n).await
    }

    /// Waits (at most 10 s) until `n` events starting with `prefix` were
    /// recorded (the memory engine hands over every channel's events, the
    /// Redis engine only those of channels the node subscribed to).
    async fn wait_for_in(&self, prefix: &str, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let matching = || -> Vec<String> {
            let events = self.events.lock();
            events
                .iter()
                .filter(|e| e.starts_with(prefix))
                .cloned()
                .collect()
        };
        loop {
            let notified = self.changed.notified();
            let events = matching();
            if events.len() >= n {
                return events;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return matching();
            }
        }
    }
}

impl PublicationSink for Recorder {
    fn deliver(&self, channel: &str, _epoch: Option<&str>, p: &Arc<Publication>) {
        self.push(format!("{channel} pub {}", p.offset.unwrap_or(0)));
    }
    fn deliver_presence(&self, channel: &str, event: PresenceEvent) {
        self.push(match event {
            PresenceEvent::Join(i) => format!("{channel} join {}", i.client),
            PresenceEvent::Leave(i) => format!("{channel} leave {}", i.client),
            PresenceEvent::Receipt(r) => format!(
                "{channel} receipt {} {} {}",
                r.user.unwrap_or_default(),
                r.delivered,
                r.read
            ),
        });
    }
    fn lost(&self, channel: &str) {
        self.push(format!("{channel} lost"));
    }
    fn control(&self, control: &UserControl) {
        self.push(format!("control {control:?}"));
    }
    fn channels(&self, _: &str, _: Option<&str>, _: usize) -> Vec<(String, usize)> {
        self.subscribed
            .lock()
            .iter()
            .map(|c| (c.clone(), 1))
            .collect()
    }
    fn has_subscribers(&self, _: &str) -> bool {
        false
    }
}

/// An engine under test, its recorder, and what keeps its backend alive.
struct Subject {
    engine: Arc<dyn Engine>,
    sink: Arc<Recorder>,
    _backend: Option<Box<dyn std::any::Any>>,
}

impl Subject {
    /// A subscriber of `channel` on this node: the node subscribes, and its
    /// hub (the recorder) lists the channel.
    async fn subscribe(&self, channel: &str) {
        self.sink.subscribed.lock().insert(channel.to_string());
        self.engine.node_subscribe(channel).await.unwrap();
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Redis,
    /// Two independent servers, channels sharded across them.
    Sharded,
    Cluster,
}

async fn subject(kind: Kind) -> Subject {
    let sink = Arc::new(Recorder::default());
    let redis = |urls: Vec<String>, cluster: bool| -> Arc<dyn Engine> {
        let config = RedisConfig {
            urls,
            cluster,
            position_check: Duration::from_millis(200),
            ..Default::default()
        };
        Arc::new(RedisEngine::new(&config).unwrap())
    };
    let (engine, backend): (Arc<dyn Engine>, Option<Box<dyn std::any::Any>>) = match kind {
        Kind::Memory => (Arc::new(MemoryEngine::new()), None),
        Kind::Redis => {
            let server = common::redis::Redis::start();
            (redis(vec![server.url()], false), Some(Box::new(server)))
        }
        Kind::Sharded => {
            let servers = [common::redis::Redis::start(), common::redis::Redis::start()];
            let urls = servers.iter().map(|r| r.url()).collect();
            (redis(urls, false), Some(Box::new(servers)))
        }
        Kind::Cluster => {
            let cluster = common::redis::RedisCluster::start();
            (redis(cluster.urls(), true), Some(Box::new(cluster)))
        }
    };
    engine.start(sink.clone()).await.expect("engine starts");
    Subject {
        engine,
        sink,
        _backend: backend,
    }
}

fn policy(size: usize, ttl: Duration) -> ChannelPolicy {
    ChannelPolicy {
        history_size: size,
        history_max_bytes: 0,
        max_channels: 0,
        history_ttl: ttl,
        idempotency_window: Duration::from_secs(300),
        durable: false,
        presence: PresencePolicy {
            enabled: true,
            ttl: Duration::from_secs(60),
            join_leave: true,
            join_leave_max: 1000,
            per_user: false,
        },
    }
}

fn req(n: u64, key: Option<&str>) -> PublishRequest {
    PublishRequest {
        data: RawValue::from_string(n.to_string()).unwrap(),
        info: None,
        tags: None,
        idempotency_key: key.map(String::from),
        key: None,
        priority: None,
        snapshot: false,
    }
}

fn who(client: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client: client.into(),
        user: user.into(),
        info: None,
    }
}

async fn offsets_epochs_and_keys(kind: Kind) {
    let s = subject(kind).await;
    let e = &s.engine;
    let p = policy(10, Duration::from_secs(60));
    // A position read before any publish names the epoch the publish uses.
    let before = e.position("c", &p).await.unwrap();
    assert_eq!(before.offset, 0);
    let a = e.publish("c", req(1, Some("k")), &p).await.unwrap();
    let b = e.publish("c", req(2, Some("k")), &p).await.unwrap();
    let c = e.publish("c", req(3, None), &p).await.unwrap();
    let a_pos = a.position.clone().unwrap();
    assert_eq!(
        (a_pos.offset, a_pos.epoch.as_str()),
        (1, before.epoch.as_str())
    );
    assert!(!a.duplicate);
    assert_eq!((b.position, b.duplicate), (a.position.clone(), true));
    assert_eq!(c.position.unwrap().offset, 2);
    let page = e.read("c", HistoryQuery::default(), &p).await.unwrap();
    let data: Vec<_> = page.publications.iter().map(|p| p.data.get()).collect();
    assert_eq!(data, ["1", "3"]);
    assert_eq!(page.position.offset, 2);
    assert_eq!(page.position.epoch, before.epoch);
    // Ephemeral: no offsets, and keys still dedup.
    let eph = policy(0, Duration::from_secs(60));
    let out = e.publish("t", req(1, Some("k")), &eph).await.unwrap();
    assert_eq!(out.position, None);
    assert!(
        e.publish("t", req(1, Some("k")), &eph)
            .await
            .unwrap()
            .duplicate
    );
}

async fn racing_retries_publish_once(kind: Kind) {
    let s = subject(kind).await;
    let p = policy(100, Duration::from_secs(60));
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let e = s.engine.clone();
        // Four keys, each retried eight times at once.
        let key = format!("k{}", i % 4);
        tasks.push(tokio::spawn(async move {
            e.publish("race", req(i, Some(&key)), &p).await.unwrap()
        }));
    }
    let mut firsts = std::collections::BTreeMap::new();
    for t in tasks {
        let out = t.await.unwrap();
        let offset = out.position.unwrap().offset;
        *firsts.entry(offset).or_insert(0) += 1;
    }
    assert_eq!(firsts.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(firsts.values().all(|n| *n == 8), "{firsts:?}");
    let page = s
        .engine
        .read("race", HistoryQuery::default(), &p)
        .await
        .unwrap();
    assert_eq!(page.publications.len(), 4);
}

async fn trims_by_size_and_ttl(kind: Kind) {
    let s = subject(kind).await;
    let e = &s.engine;
    let p = policy(5, Duration::from_secs(60));
    for i in 1..=12 {
        e.publish("sized", req(i, None), &p).await.unwrap();
    }
    let page = e.read("sized", HistoryQuery::default(), &p).await.unwrap();
    let got: Vec<u64> = page.publications.iter().filter_map(|p| p.offset).collect();
    assert_eq!(got, [8, 9, 10, 11, 12]);
    // Newest first, limited.
    let q = HistoryQuery {
        limit: Some(2),
        reverse: true,
        ..Default::default()
    };
    let page = e.read("sized", q, &p).await.unwrap();
    let got: Vec<u64> = page.publications.iter().filter_map(|p| p.offset).collect();
    assert_eq!(got, [12, 11]);

    let short = policy(100, Duration::from_millis(300));
    e.publish("ttl", req(1, None), &short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    e.publish("ttl", req(2, None), &short).await.unwrap();
    let page = e
        .read("ttl", HistoryQuery::default(), &short)
        .await
        .unwrap();
    let got: Vec<u64> = page.publications.iter().filter_map(|p| p.offset).collect();
    assert_eq!(got, [2]);
    assert_eq!(page.position.offset, 2);
}

async fn delivers_in_order_with_presence(kind: Kind) {
    let s = subject(kind).await;
    let e = &s.engine;
    let p = policy(100, Duration::from_secs(60));
    s.subscribe("room").await;
    e.join("room", &who("a", "alice"), &p).await.unwrap();
    for i in 1..=3 {
        e.publish("room", req(i, None), &p).await.unwrap();
    }
    e.leave("room", "a", &p).await.unwrap();
    let events = s.sink.wait_for(5).await;
    assert_eq!(
        events,
        [
            "room join a",
            "room pub 1",
            "room pub 2",
            "room pub 3",
            "room leave a"
        ]
    );
    // Instructions for users reach this node too.
    e.control(UserControl::Disconnect {
        user: "bob".into(),
        client: None,
        code: 3000,
    })
    .await
    .unwrap();
    let events = s.sink.wait_for(6).await;
    assert!(events[5].starts_with("control Disconnect"), "{events:?}");
}

async fn presence_leases_stats_and_pages(kind: Kind) {
    let s = subject(kind).await;
    let e = &s.engine;
    let mut p = policy(10, Duration::from_secs(60));
    for i in 0..250 {
        let (c, u) = (format!("c{i:03}"), format!("u{}", i % 50));
        e.join("big", &who(&c, &u), &p).await.unwrap();
    }
    assert_eq!(e.stats("big").await.unwrap(), (250, 50));
    let (mut cursor, mut seen, mut pages) = (None, Vec::new(), 0);
    loop {
        let (page, next) = e.list("big", cursor.as_deref(), 100).await.unwrap();
        seen.extend(page.into_keys());
        pages += 1;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..250).map(|i| format!("c{i:03}")).collect();
    assert_eq!(seen, want);

    // Leases: an entry not renewed is gone after its TTL, with a leave.
    p.presence.ttl = Duration::from_millis(300);
    s.subscribe("lease").await;
    e.join("lease", &who("ghost", "g"), &p).await.unwrap();
    e.join("lease", &who("live", "l"), &p).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.join("lease", &who("live", "l"), &p).await.unwrap(); // renewed
    tokio::time::sleep(Duration::from_millis(200)).await;
    let policy_of = move |_: &str| Some(p);
    e.maintain(&policy_of, Duration::from_secs(3600)).await;
    let (members, _) = e.list("lease", None, 10).await.unwrap();
    assert_eq!(members.keys().collect::<Vec<_>>(), ["live"]);
    assert_eq!(e.stats("lease").await.unwrap(), (1, 1));
    let events = s.sink.wait_for_in("lease ", 3).await;
    assert_eq!(
        events,
        ["lease join ghost", "lease join live", "lease leave ghost"]
    );
}

async fn per_user_presence_and_last_seen(kind: Kind) {
    let s = subject(kind).await;
    let e = &s.engine;
    let mut p = policy(10, Duration::from_secs(60));
    p.presence.per_user = true;
    s.subscribe("dev").await;
    for c in ["a1", "a2"] {
        e.join("dev", &who(c, "alice"), &p).await.unwrap();
    }
    e.leave("dev", "a1", &p).await.unwrap();
    e.leave("dev", "a2", &p).await.unwrap();
    assert_eq!(s.sink.wait_for(2).await, ["dev join a1", "dev leave a2"]);

    e.touch("alice", 1_000).await.unwrap();
    e.touch("alice", 2_000).await.unwrap();
    let seen = e
        .last_seen(&["alice".to_string(), "nobody".to_string()])
        .await
        .unwrap();
    assert_eq!(seen["alice"], Some(2_000));
    assert_eq!(seen["nobody"], None);
}

/// Per-user connection counts across nodes: the newest count of each node
/// wins whatever order the calls arrive in, and the sum is the limit.
async fn user_counts_keep_the_newest(kind: Kind) {
    let s = subject(kind).await;
    let e = &s.engine;
    let node = |id: &str| tidings_server::engine::NodeInfo {
        name: id.into(),
        id: id.into(),
        address: "127.0.0.1:1".into(),
        version: "test".into(),
        connections: 0,
        channels: 0,
        subscriptions: 0,
        uptime_s: 0,
    };
    e.announce(&node("a")).await.unwrap();
    e.announce(&node("b")).await.unwrap();
    // Node a: 1 then 2 connections of alice; a late, older write (seq 1,
    // count 0) must not undo the newer one.
    assert!(e.claim_user("a", "alice", 1, 2, 3).await.unwrap());
    assert!(e.claim_user("a", "alice", 2, 3, 3).await.unwrap());
    e.release_user("a", "alice", 0, 1).await.unwrap();
    // Node b: a third is allowed, a fourth is not (2 on a + 2 on b > 3).
    assert!(e.claim_user("b", "alice", 1, 1, 3).await.unwrap());
    assert!(!e.claim_user("b", "alice", 2, 2, 3).await.unwrap());
    // Node a lets go of both: room again on b.
    e.release_user("a", "alice", 0, 4).await.unwrap();
    assert!(e.claim_user("b", "alice", 2, 3, 3).await.unwrap());
}

/// What only engines shared by several nodes promise (the memory engine is
/// one node: its counts are the node's own).
macro_rules! shared_engines {
    ($($name:ident),*) => {
        mod shared_redis {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Redis).await })*
        }
        mod shared_cluster {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Cluster).await })*
        }
    };
}

shared_engines!(user_counts_keep_the_newest);

macro_rules! conformance {
    ($($name:ident),*) => {
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Memory).await })*
        }
        mod redis {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Redis).await })*
        }
        mod sharded {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Sharded).await })*
        }
        mod cluster {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Cluster).await })*
        }
    };
}

/// Several `urls`: every channel lives on one of the servers, both get some,
/// and each channel reads back what was published into it.
#[tokio::test]
async fn sharded_servers_each_hold_some_channels() {
    let servers = [common::redis::Redis::start(), common::redis::Redis::start()];
    let config = RedisConfig {
        urls: servers.iter().map(|r| r.url()).collect(),
        ..Default::default()
    };
    let engine: Arc<dyn Engine> = Arc::new(RedisEngine::new(&config).unwrap());
    engine.start(Arc::new(Recorder::default())).await.unwrap();
    let p = policy(10, Duration::from_secs(60));
    for c in 0..20 {
        let channel = format!("spread:{c}");
        for n in 1..=2 {
            engine.publish(&channel, req(n, None), &p).await.unwrap();
        }
    }
    for c in 0..20 {
        let page = engine
            .read(&format!("spread:{c}"), HistoryQuery::default(), &p)
            .await
            .unwrap();
        let data: Vec<_> = page.publications.iter().map(|p| p.data.get()).collect();
        assert_eq!(data, ["1", "2"]);
    }
    for server in &servers {
        let keys: u64 = server.cli(&["DBSIZE"]).parse().unwrap();
        assert!(keys > 0, "server {} holds some channels", server.port);
    }
}

/// Members, cursors that only move forward, conversations, the key
/// directory's bound, and receipts handed to the subscribed node.
async fn members_cursors_and_keys(kind: Kind) {
    use tidings_protocol::Cursors;
    let s = subject(kind).await;
    let e = &s.engine;
    let users = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let added = e
        .add_members("dm:1", &users(&["carol", "alice", "bob"]), 7)
        .await
        .unwrap();
    assert_eq!(added.len(), 3);
    assert!(
        e.add_members("dm:1", &users(&["alice"]), 9)
            .await
            .unwrap()
            .is_empty()
    );
    e.add_members("dm:2", &users(&["alice"]), 8).await.unwrap();
    assert_eq!(e.member_count("dm:1").await.unwrap(), 3);
    assert_eq!(
        e.members("dm:1", None, 2).await.unwrap(),
        users(&["alice", "bob"])
    );
    assert_eq!(
        e.members("dm:1", Some("bob"), 2).await.unwrap(),
        users(&["carol"])
    );
    let m = e.membership("dm:1", "alice").await.unwrap().unwrap();
    assert_eq!((m.since_ms, m.cursors), (7, Cursors::default()));
    assert!(e.membership("dm:1", "dave").await.unwrap().is_none());

    let c = |delivered, read| Cursors { delivered, read };
    assert_eq!(
        e.advance("dm:1", "alice", "e1", c(5, 2)).await.unwrap(),
        Some((c(0, 0), c(5, 2)))
    );
    // Lower values change nothing; read raises delivered.
    assert_eq!(
        e.advance("dm:1", "alice", "e1", c(3, 1)).await.unwrap(),
        Some((c(5, 2), c(5, 2)))
    );
    assert_eq!(
        e.advance("dm:1", "alice", "e1", c(0, 9)).await.unwrap(),
        Some((c(5, 2), c(9, 9)))
    );
    assert_eq!(
        e.advance("dm:1", "dave", "e1", c(1, 1)).await.unwrap(),
        None
    );
    let mut all = e.member_cursors("dm:1", "e1").await.unwrap();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(all[0], ("alice".to_string(), c(9, 9)));
    assert_eq!(all[1], ("bob".to_string(), c(0, 0)));
    // The channel started over (a new epoch): its offsets begin again.
    let fresh = e.member_cursors("dm:1", "e2").await.unwrap();
    assert!(
        fresh.iter().all(|(_, c)| *c == Cursors::default()),
        "{fresh:?}"
    );
    assert_eq!(
        e.advance("dm:1", "alice", "e2", c(2, 1)).await.unwrap(),
        Some((c(0, 0), c(2, 1)))
    );
    assert_eq!(
        e.membership("dm:1", "alice").await.unwrap().unwrap().epoch,
        "e2"
    );
    e.advance("dm:1", "alice", "e1", c(9, 9)).await.unwrap();
    let mut mine: Vec<String> = e
        .conversations("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.channel)
        .collect();
    mine.sort();
    assert_eq!(mine, users(&["dm:1", "dm:2"]));

    assert_eq!(
        e.remove_members("dm:1", &users(&["bob", "dave"]))
            .await
            .unwrap(),
        users(&["bob"])
    );
    assert!(e.membership("dm:1", "bob").await.unwrap().is_none());
    assert!(e.conversations("bob").await.unwrap().is_empty());
    assert_eq!(e.member_count("dm:1").await.unwrap(), 2);

    assert!(e.put_key("alice", "d1", "k1", 2).await.unwrap());
    assert!(e.put_key("alice", "d2", "k2", 2).await.unwrap());
    assert!(!e.put_key("alice", "d3", "k3", 2).await.unwrap());
    assert!(e.put_key("alice", "d1", "k1b", 2).await.unwrap());
    let keys = e.keys(&users(&["alice", "nobody"])).await.unwrap();
    assert_eq!(keys.len(), 1);
    let alice: Vec<(&str, &str)> = keys["alice"]
        .iter()
        .map(|k| (k.device.as_str(), k.key.as_str()))
        .collect();
    assert_eq!(alice, [("d1", "k1b"), ("d2", "k2")]);

    s.subscribe("dm:1").await;
    let receipt = tidings_protocol::Receipt {
        channel: "dm:1".into(),
        user: Some("alice".into()),
        delivered: 9,
        read: 9,
        members: None,
        counts: None,
    };
    e.receipt("dm:1", receipt).await.unwrap();
    let got = s.sink.wait_for_in("dm:1 receipt", 1).await;
    assert_eq!(got, ["dm:1 receipt alice 9 9"]);
}

conformance!(
    members_cursors_and_keys,
    offsets_epochs_and_keys,
    racing_retries_publish_once,
    trims_by_size_and_ttl,
    delivers_in_order_with_presence,
    presence_leases_stats_and_pages,
    per_user_presence_and_last_seen
);

#[derive(Debug, Clone)]
enum Op {
    Publish(Option<u8>),
    Read(u8),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Random publishes (some retried with a key) and recovery reads give the
    /// same answers on both engines: offsets without gaps, each key published
    /// once, and every read after `k` the contiguous run k+1..=top.
    #[test]
    fn engines_agree(ops in proptest::collection::vec(prop_oneof![
        3 => proptest::option::of(0u8..6).prop_map(Op::Publish),
        1 => (0u8..40).prop_map(Op::Read)], 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let memory = subject(Kind::Memory).await;
            let redis = subject(Kind::Redis).await;
            let p = policy(16, Duration::from_secs(60));
            let mut top = 0u64;
            let mut keys = std::collections::HashMap::new();
            for (n, op) in ops.iter().enumerate() {
                match op {
                    Op::Publish(key) => {
                        let key = key.map(|k| format!("key{k}"));
                        let m = memory.engine.publish("c", req(n as u64, key.as_deref()), &p).await.unwrap();
                        let r = redis.engine.publish("c", req(n as u64, key.as_deref()), &p).await.unwrap();
                        let (mo, ro) = (m.position.unwrap().offset, r.position.unwrap().offset);
                        prop_assert_eq!(mo, ro);
                        prop_assert_eq!(m.duplicate, r.duplicate);
                        match key {
                            Some(k) if keys.contains_key(&k) => prop_assert_eq!(keys[&k], mo),
                            Some(k) => { top += 1; prop_assert_eq!(mo, top); keys.insert(k, mo); }
                            None => { top += 1; prop_assert_eq!(mo, top); }
                        }
                    }
                    Op::Read(after) => {
                        let q = || HistoryQuery { after: Some(u64::from(*after)), limit: Some(100), reverse: false };
                        let m = memory.engine.read("c", q(), &p).await.unwrap();
                        let r = redis.engine.read("c", q(), &p).await.unwrap();
                        let mo: Vec<u64> = m.publications.iter().filter_map(|p| p.offset).collect();
                        let ro: Vec<u64> = r.publications.iter().filter_map(|p| p.offset).collect();
                        prop_assert_eq!(&mo, &ro);
                        let first = (u64::from(*after) + 1).max(top.saturating_sub(15));
                        let want: Vec<u64> = (first..=top).collect();
                        prop_assert_eq!(mo, want);
                        prop_assert_eq!(m.position.offset, r.position.offset);
                    }
                }
            }
            Ok(())
        })?;
    }
}
