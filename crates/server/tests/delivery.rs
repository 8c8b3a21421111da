//! Delivery policies per namespace, over real sockets: `latest` (newest
//! per key for a subscriber that falls behind), `slow_consumer = "skip"`
//! (a gap notice, then recovery without loss), priority lanes, and the
//! server's `time` on live pushes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tidings_protocol::Priority;
use tidings_server::config::{ClientPublish, Config, Delivery, NamespaceOptions, SlowConsumer};

/// A config with namespaces `ticker` (latest), `feed` (skip), `timed`
/// (push_time) and `board`, all open to anonymous clients.
fn delivery_config() -> Config {
    let mut c = config();
    c.client.outbox_bytes = 256 * 1024;
    c.client.recovery_max = 10_000;
    c.client.recovery_max_bytes = 64 * 1024 * 1024;
    c.client.ping_interval = Duration::from_secs(600);
    c.client.pong_timeout = Duration::from_secs(600);
    let ns = |f: &dyn Fn(&mut NamespaceOptions)| {
        let mut ns = NamespaceOptions {
            anonymous: true,
            client_publish: ClientPublish::Any,
            history_size: 10_000,
            history_max_bytes: 64 * 1024 * 1024,
            max_message_size: 16 * 1024,
            ..Default::default()
        };
        f(&mut ns);
        ns
    };
    c.namespaces
        .insert("ticker".into(), ns(&|n| n.delivery = Delivery::Latest));
    c.namespaces
        .insert("feed".into(), ns(&|n| n.slow_consumer = SlowConsumer::Skip));
    c.namespaces
        .insert("timed".into(), ns(&|n| n.push_time = true));
    c.namespaces
        .insert("board".into(), ns(&|n| n.default_priority = Priority::Low));
    c
}

async fn publish(server: &tidings_server::Server, body: Value) -> Value {
    let (status, reply) = api(server, "publish", body).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

/// Every message until nothing comes for `quiet`.
async fn read_until_quiet(raw: &mut Raw, quiet: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Ok(Some(m)) = raw.next_within(quiet).await {
        if m["push"] != "ping" {
            got.push(m);
        }
    }
    got
}

#[tokio::test]
async fn live_pushes_carry_time_and_key_where_asked() {
    let server = start_with(delivery_config()).await;
    let mut raw = Raw::connect(&server, None).await;
    for channel in ["timed:x", "feed:x"] {
        raw.call(json!({"op": "subscribe", "channel": channel}))
            .await;
        publish(&server, json!({"channel": channel, "data": 1, "key": "k"})).await;
        let m = raw.next_non_ping().await.expect("a publication");
        assert_eq!(m["key"], "k", "{m}");
        if channel == "timed:x" {
            assert!(
                m["time"].as_u64().is_some_and(|t| t > 1_700_000_000_000),
                "{m}"
            );
        } else {
            assert!(m.get("time").is_none(), "only with push_time: {m}");
        }
        assert!(m.get("latest").is_none(), "a stream channel: {m}");
    }
}

#[tokio::test]
async fn a_stalled_latest_subscriber_gets_the_newest_per_key_and_stays() {
    let server = start_with(delivery_config()).await;
    let mut raw = Raw::connect(&server, None).await;
    raw.call(json!({"op": "subscribe", "channel": "ticker:t"}))
        .await;
    // It reads nothing while 2,000 publications of 8 KB (16 MB: far more
    // than socket buffers and its 256 KiB outbox) go by, over five keys.
    let blob = "q".repeat(8000);
    let mut newest = BTreeMap::new();
    for i in 0..2000u64 {
        let key = format!("k{}", i % 5);
        let r = publish(
            &server,
            json!({"channel": "ticker:t", "data": {"i": i, "b": blob}, "key": key}),
        )
        .await;
        newest.insert(key, r["offset"].as_u64().unwrap());
    }
    let got = read_until_quiet(&mut raw, Duration::from_millis(500)).await;
    let mut last_per_key: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = 0;
    for m in &got {
        assert_eq!(m["push"], "pub", "never disconnected: {m}");
        assert_eq!(m["latest"], true, "the push says values may be skipped");
        let (key, offset) = (m["key"].as_str().unwrap(), m["offset"].as_u64().unwrap());
        assert!(offset > last, "offsets only grow");
        last = offset;
        if let Some(prev) = last_per_key.insert(key.to_string(), offset) {
            assert!(offset > prev, "never an older value after a newer one");
        }
    }
    assert_eq!(last_per_key, newest, "each key ends with its newest");
    assert!(
        got.len() < 2000,
        "values were skipped: {} of 2000",
        got.len()
    );
    // And it is still subscribed.
    let r = publish(
        &server,
        json!({"channel": "ticker:t", "data": "after", "key": "k0"}),
    )
    .await;
    let m = raw.next_non_ping().await.unwrap();
    assert_eq!(m["offset"], r["offset"]);
}

#[tokio::test]
async fn skip_sends_a_gap_and_recovery_gives_every_offset_once() {
    let server = start_with(delivery_config()).await;
    let mut raw = Raw::connect(&server, None).await;
    raw.call(json!({"op": "subscribe", "channel": "feed:f"}))
        .await;
    let blob = "s".repeat(8000);
    let mut epoch = String::new();
    for i in 0..2000u64 {
        let r = publish(
            &server,
            json!({"channel": "feed:f", "data": {"i": i, "b": blob}}),
        )
        .await;
        epoch = r["epoch"].as_str().unwrap().to_string();
    }
    // Read what came: publications in order, then a gap notice.
    let got = read_until_quiet(&mut raw, Duration::from_millis(500)).await;
    let mut seen = BTreeSet::new();
    let mut position = 0;
    let mut gap = None;
    for m in &got {
        match m["push"].as_str() {
            Some("pub") if gap.is_none() => {
                let offset = m["offset"].as_u64().unwrap();
                assert_eq!(offset, position + 1, "in order before the gap");
                position = offset;
                seen.insert(offset);
            }
            Some("pub") => {
                seen.insert(m["offset"].as_u64().unwrap());
            }
            Some("gap") => {
                assert_eq!(m["channel"], "feed:f");
                assert_eq!(m["epoch"], epoch.as_str());
                gap = Some(m["offset"].as_u64().unwrap());
            }
            _ => panic!("unexpected {m}"),
        }
    }
    let gap = gap.expect("a gap notice");
    assert!(gap > position, "the gap is past what was delivered");
    // What an SDK does: subscribe again from its position.
    raw.call(json!({"op": "unsubscribe", "channel": "feed:f"}))
        .await;
    let r = raw
        .call(json!({"op": "subscribe", "channel": "feed:f", "since": {"offset": position, "epoch": epoch}}))
        .await;
    assert_eq!(r["ok"]["recovered"], true, "{}", r["ok"]["offset"]);
    let mut delivered: Vec<u64> = (1..=position).collect();
    for p in r["ok"]["publications"].as_array().unwrap() {
        delivered.push(p["offset"].as_u64().unwrap());
    }
    assert_eq!(
        delivered,
        (1..=2000).collect::<Vec<_>>(),
        "every offset once, in order"
    );
}

#[tokio::test]
async fn a_critical_publication_overtakes_a_low_backlog() {
    let mut config = delivery_config();
    config.client.outbox_bytes = 32 * 1024 * 1024;
    let server = start_with(config).await;
    let mut raw = Raw::connect(&server, None).await;
    for channel in ["board:stats", "board:score"] {
        raw.call(json!({"op": "subscribe", "channel": channel}))
            .await;
    }
    // 1,000 statistics of 8 KB (the namespace's default: low) queue up
    // behind a reader that does not read; then one critical score.
    let blob = "l".repeat(8000);
    for i in 0..1000u64 {
        publish(
            &server,
            json!({"channel": "board:stats", "data": {"i": i, "b": blob}}),
        )
        .await;
    }
    publish(
        &server,
        json!({"channel": "board:score", "data": "goal", "priority": "critical"}),
    )
    .await;
    let got = read_until_quiet(&mut raw, Duration::from_millis(500)).await;
    let score = got
        .iter()
        .position(|m| m["channel"] == "board:score")
        .expect("the score arrives");
    let stats: Vec<u64> = got
        .iter()
        .filter(|m| m["channel"] == "board:stats")
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        stats,
        (1..=1000).collect::<Vec<_>>(),
        "statistics all come, in order"
    );
    let after = got.len() - 1 - score;
    assert!(
        after > 0,
        "written before the statistics still queued ({after} came after it)"
    );
}
