//! Property: under random interleavings of publishes, disconnects,
//! reconnects with `since` and history trimming, every subscriber sees each
//! offset exactly once and in order, or is told `recovered: false` — and is
//! told so only when history really lost what it missed.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::json;
use tidings_server::config::{ClientPublish, NamespaceOptions};

#[derive(Debug, Clone)]
enum Op {
    /// Publish this many publications through the API.
    Publish(u8),
    /// Close client i's socket.
    Disconnect(usize),
    /// Reconnect client i (if disconnected) with `since` its last position.
    Reconnect(usize),
}

const CLIENTS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u8..6).prop_map(Op::Publish),
        2 => (0..CLIENTS).prop_map(Op::Disconnect),
        2 => (0..CLIENTS).prop_map(Op::Reconnect),
    ]
}

struct Client {
    raw: Option<Raw>,
    /// Last offset this client has seen (its position).
    last: u64,
    epoch: String,
    resets: u32,
}

/// Reads pushes until the client's position reaches `top`, checking each offset is the next.
async fn catch_up(c: &mut Client, top: u64) {
    let raw = c.raw.as_mut().expect("connected");
    while c.last < top {
        let m = raw.next_non_ping().await.expect("open");
        if m["push"] == "pub" {
            let o = m["offset"].as_u64().unwrap();
            assert_eq!(o, c.last + 1, "gap or duplicate: got {o} after {}", c.last);
            c.last = o;
        }
    }
}

async fn subscribe(server: &tidings_server::Server, c: &mut Client, history_size: u64, top: u64) {
    let mut raw = Raw::connect(server, None).await;
    let r = raw
        .call(json!({"op": "subscribe", "channel": "p:c", "since": {"offset": c.last, "epoch": c.epoch}}))
        .await;
    let ok = &r["ok"];
    let missed = top - c.last;
    if ok["recovered"] == true {
        for p in ok["publications"].as_array().unwrap() {
            let o = p["offset"].as_u64().unwrap();
            assert_eq!(o, c.last + 1, "recovered publications are contiguous");
            c.last = o;
        }
        assert_eq!(
            c.last,
            ok["offset"].as_u64().unwrap(),
            "recovery reaches the top"
        );
    } else {
        assert_eq!(ok["recovered"], false, "{r}");
        assert!(
            missed > history_size,
            "told to reload although only {missed} were missed (history {history_size})"
        );
        assert!(ok.get("publications").is_none(), "never a partial answer");
        c.resets += 1;
        c.last = ok["offset"].as_u64().unwrap();
    }
    c.raw = Some(raw);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn every_offset_once_in_order_or_told(history_size in 3usize..12, ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let mut config = config();
            config.namespaces.insert("p".into(), NamespaceOptions {
                history_size,
                client_publish: ClientPublish::Any,
                anonymous: true,
                ..Default::default()
            });
            let server = start_with(config).await;
            let mut clients = Vec::new();
            for _ in 0..CLIENTS {
                let mut raw = Raw::connect(&server, None).await;
                let r = raw.call(json!({"op": "subscribe", "channel": "p:c"})).await;
                clients.push(Client {
                    raw: Some(raw),
                    last: r["ok"]["offset"].as_u64().unwrap(),
                    epoch: r["ok"]["epoch"].as_str().unwrap().to_string(),
                    resets: 0,
                });
            }
            let mut top = 0u64;
            for op in ops.into_iter().chain((0..CLIENTS).map(Op::Reconnect)).chain([Op::Publish(1)]) {
                match op {
                    Op::Publish(n) => {
                        for _ in 0..n {
                            let (status, body) = api(&server, "publish", json!({"channel": "p:c", "data": top + 1})).await;
                            assert_eq!(status, 200, "{body}");
                            top = body["offset"].as_u64().unwrap();
                        }
                    }
                    Op::Disconnect(i) => clients[i].raw = None,
                    Op::Reconnect(i) => {
                        if clients[i].raw.is_none() {
                            subscribe(&server, &mut clients[i], history_size as u64, top).await;
                        }
                    }
                }
                for c in clients.iter_mut().filter(|c| c.raw.is_some()) {
                    catch_up(c, top).await;
                }
            }
            for c in &clients {
                assert_eq!(c.last, top);
            }
            drop(clients);
            server.shutdown().await;
        });
    }
}
