//! Snapshots and Fossil deltas over a real server and WebSocket:
//! properties over random histories and payloads.

mod common;

use std::collections::VecDeque;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use tidings_server::config::{ClientPublish, Delivery, NamespaceOptions};

fn with_namespace(name: &str, ns: NamespaceOptions) -> tidings_server::config::Config {
    let mut config = config();
    config.namespaces.insert(name.into(), ns);
    config
}

fn open_ns(history_size: usize) -> NamespaceOptions {
    NamespaceOptions {
        history_size,
        client_publish: ClientPublish::Any,
        anonymous: true,
        ..Default::default()
    }
}

/// What the reply must hold for a subscriber at `since`, from a model of
/// the channel: offsets 1..=top, history keeps the newest `size`, the
/// snapshots were published at `snapshots`.
fn expected(
    since: Option<u64>,
    snapshot: bool,
    top: u64,
    size: u64,
    snapshots: &[u64],
) -> Vec<u64> {
    let oldest = top.saturating_sub(size) + 1;
    if let Some(s) = since
        && s + 1 >= oldest
    {
        return (s + 1..=top).collect();
    }
    if since.is_none() && !snapshot {
        return Vec::new();
    }
    match snapshots.last() {
        Some(&s) if s + 1 >= oldest => (s..=top).collect(),
        // Asked without a position and no snapshot: the channel from its start.
        None if since.is_none() && oldest == 1 => (1..=top).collect(),
        _ => Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// A subscriber that lost more than history holds gets the latest
    /// snapshot and every publication after it, once, in order, then live
    /// ones; one that can recover gets exactly what it missed.
    #[test]
    fn snapshot_then_every_publication_once_in_order(
        size in 2u64..8,
        kinds in proptest::collection::vec(any::<bool>(), 1..30),
        since_frac in 0.0f64..1.0,
        ask in any::<bool>(),
    ) {
        runtime().block_on(async move {
            let server = start_with(with_namespace("s", open_ns(size as usize))).await;
            let mut snapshots = Vec::new();
            let mut epoch = String::new();
            for (i, snapshot) in kinds.iter().enumerate() {
                let (status, body) = api(&server, "publish", json!({
                    "channel": "s:c", "data": {"n": i + 1}, "snapshot": snapshot,
                })).await;
                assert_eq!(status, 200, "{body}");
                epoch = body["epoch"].as_str().unwrap().to_string();
                if *snapshot {
                    snapshots.push(body["offset"].as_u64().unwrap());
                }
            }
            let top = kinds.len() as u64;
            let since = ((since_frac * top as f64) as u64).min(top);
            let mut raw = Raw::connect(&server, None).await;
            let mut cmd = json!({"op": "subscribe", "channel": "s:c", "snapshot": ask});
            let with_since = !ask || since_frac < 0.5;
            if with_since {
                cmd["since"] = json!({"offset": since, "epoch": epoch});
            }
            let r = raw.call(cmd).await;
            let ok = &r["ok"];
            let got: Vec<u64> = ok["publications"].as_array().map_or(Vec::new(), |ps| {
                ps.iter().map(|p| p["offset"].as_u64().unwrap()).collect()
            });
            let want = expected(with_since.then_some(since), ask, top, size, &snapshots);
            assert_eq!(got, want, "reply {r}");
            if let Some(first) = ok["publications"].as_array().and_then(|p| p.first()) {
                // Not recovered: it starts with the snapshot (or the channel's start).
                if ok["recovered"] != true {
                    assert!(first["snapshot"] == true || first["offset"] == 1, "{r}");
                }
                // Each carries what was published at its offset.
                for p in ok["publications"].as_array().unwrap() {
                    assert_eq!(p["data"]["n"], p["offset"]);
                }
            }
            // Live publications follow with no gap and no duplicate.
            let (_, body) = api(&server, "publish", json!({"channel": "s:c", "data": {"n": top + 1}})).await;
            assert_eq!(body["offset"], json!(top + 1));
            let m = raw.next_non_ping().await.unwrap();
            assert_eq!((m["push"].clone(), m["offset"].clone()), (json!("pub"), json!(top + 1)), "{m}");
            server.shutdown().await;
        });
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        "[a-z é€😀\"]{0,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,5}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Payloads that change a little at a time (so deltas are worth it) mixed
/// with unrelated ones.
fn payloads() -> impl Strategy<Value = Vec<String>> {
    (
        json_value(),
        proptest::collection::vec((any::<bool>(), json_value()), 1..15),
    )
        .prop_map(|(base, steps)| {
            let mut state = json!({"book": base, "rows": (0..30).collect::<Vec<_>>()});
            let mut out = vec![serde_json::to_string(&state).unwrap()];
            for (i, (small, v)) in steps.into_iter().enumerate() {
                if small {
                    state["rows"][i % 30] = v;
                    out.push(serde_json::to_string(&state).unwrap());
                } else {
                    out.push(serde_json::to_string(&v).unwrap());
                }
            }
            out
        })
}

/// Reads `pub` pushes of a delta subscription, applying deltas: returns
/// each payload's text and how many came as deltas.
async fn read_payloads(raw: &mut Raw, n: usize, mut base: Option<String>) -> (Vec<String>, usize) {
    let mut texts = Vec::new();
    let mut deltas = 0;
    while texts.len() < n {
        let m = raw.next_non_ping().await.expect("open");
        if m["push"] != "pub" {
            continue;
        }
        let data = m["data"]
            .as_str()
            .expect("a delta subscription gets strings");
        let text = if m["delta"] == true {
            deltas += 1;
            let b = base.as_deref().expect("a delta comes after a full payload");
            String::from_utf8(fossil_delta::apply(b, data.as_bytes()).unwrap()).unwrap()
        } else {
            data.to_string()
        };
        base = Some(text.clone());
        texts.push(text);
    }
    (texts, deltas)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// For random sequences of JSON payloads, applying the server's deltas
    /// in order reproduces every payload exactly, for a subscriber that
    /// was there from the start and one that recovered midway.
    #[test]
    fn applying_deltas_reproduces_every_payload(texts in payloads(), cut in 0usize..15) {
        runtime().block_on(async move {
            let server = start().await;
            let mut live = Raw::connect(&server, None).await;
            let r = live.call(json!({"op": "subscribe", "channel": "d", "delta": "fossil"})).await;
            assert_eq!(r["ok"]["delta"], true, "{r}");
            let epoch = r["ok"]["epoch"].clone();
            let cut = cut.min(texts.len() - 1);
            for (i, t) in texts.iter().enumerate() {
                let data: Value = serde_json::from_str(t).unwrap();
                let (status, _) = api(&server, "publish", json!({"channel": "d", "data": data})).await;
                assert_eq!(status, 200, "payload {i}");
            }
            let (got, deltas) = read_payloads(&mut live, texts.len(), None).await;
            assert_eq!(&got, &texts);
            let state = |t: &String| t.starts_with("{\"book\"");
            let small_steps = texts.windows(2).filter(|w| state(&w[0]) && state(&w[1])).count();
            if small_steps > 0 {
                assert!(deltas > 0, "similar large payloads went without a single delta");
            }
            // A late subscriber recovering from `cut`: the recovered ones in
            // full (as text), then live deltas build on the last of them.
            let mut late = Raw::connect(&server, None).await;
            let r = late.call(json!({"op": "subscribe", "channel": "d", "delta": "fossil",
                "since": {"offset": cut, "epoch": epoch}})).await;
            let recovered: Vec<String> = r["ok"]["publications"].as_array().unwrap().iter()
                .map(|p| p["data"].as_str().unwrap().to_string()).collect();
            assert_eq!(&recovered[..], &texts[cut..]);
            // A fresh subscriber (nothing in its reply) gets its first in full.
            let mut fresh = Raw::connect(&server, None).await;
            fresh.call(json!({"op": "subscribe", "channel": "d", "delta": "fossil"})).await;
            let more = texts[0].clone();
            let (_, _) = api(&server, "publish", json!({"channel": "d", "data": serde_json::from_str::<Value>(&more).unwrap()})).await;
            let (got, _) = read_payloads(&mut late, 1, recovered.last().cloned()).await;
            assert_eq!(got, vec![more.clone()]);
            let (got, _) = read_payloads(&mut fresh, 1, None).await;
            assert_eq!(got, vec![more]);
            server.shutdown().await;
        });
    }
}

#[tokio::test]
async fn deltas_are_off_where_values_may_be_skipped() {
    let ns = NamespaceOptions {
        delivery: Delivery::Latest,
        ..open_ns(10)
    };
    let server = start_with(with_namespace("l", ns)).await;
    let mut raw = Raw::connect(&server, None).await;
    let r = raw
        .call(json!({"op": "subscribe", "channel": "l:x", "delta": "fossil"}))
        .await;
    assert!(r["ok"].get("delta").is_none(), "{r}");
    api(
        &server,
        "publish",
        json!({"channel": "l:x", "data": {"a": 1}}),
    )
    .await;
    let m = raw.next_non_ping().await.unwrap();
    assert_eq!(m["data"], json!({"a": 1}), "full JSON, as without delta");
    // An unknown format is a bad request.
    let r = raw
        .call(json!({"op": "subscribe", "channel": "l:y", "delta": "bsdiff"}))
        .await;
    assert_eq!(error_code(&r), 101, "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_snapshot_outlives_history_and_a_restart() {
    let dir = data_dir();
    let ns = NamespaceOptions {
        durable: true,
        ..open_ns(3)
    };
    let mut config = with_namespace("s", ns);
    config.data_dir = dir.clone();
    let server = start_with(config.clone()).await;
    api(
        &server,
        "publish",
        json!({"channel": "s:a", "data": {"state": "v1"}, "snapshot": true}),
    )
    .await;
    for i in 0..5 {
        api(
            &server,
            "publish",
            json!({"channel": "s:a", "data": {"d": i}}),
        )
        .await;
    }
    api(
        &server,
        "publish",
        json!({"channel": "s:a", "data": {"state": "v2"}, "snapshot": true}),
    )
    .await;
    // History (3) keeps what follows the snapshot, not the snapshot itself.
    for i in 9..12 {
        api(
            &server,
            "publish",
            json!({"channel": "s:a", "data": {"d": i}}),
        )
        .await;
    }
    server.shutdown().await;
    let server = start_with(config).await;
    let mut raw = Raw::connect(&server, None).await;
    let r = raw
        .call(json!({"op": "subscribe", "channel": "s:a", "snapshot": true}))
        .await;
    let pubs: VecDeque<Value> = r["ok"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    let want = [
        json!({"state": "v2"}),
        json!({"d": 9}),
        json!({"d": 10}),
        json!({"d": 11}),
    ];
    assert_eq!(pubs, want, "{r}");
    assert_eq!(r["ok"]["publications"][0]["snapshot"], true);
    server.shutdown().await;
}

#[tokio::test]
async fn no_snapshot_where_clients_may_not_read_history() {
    let ns = NamespaceOptions {
        history: tidings_server::config::ClientAccess::None,
        ..open_ns(10)
    };
    let server = start_with(with_namespace("h", ns)).await;
    api(
        &server,
        "publish",
        json!({"channel": "h:x", "data": 1, "snapshot": true}),
    )
    .await;
    api(&server, "publish", json!({"channel": "h:x", "data": 2})).await;
    let mut raw = Raw::connect(&server, None).await;
    let r = raw
        .call(json!({"op": "subscribe", "channel": "h:x", "snapshot": true}))
        .await;
    assert!(r["ok"].get("publications").is_none(), "{r}");
    assert_eq!(r["ok"]["offset"], 2);
    server.shutdown().await;
}
