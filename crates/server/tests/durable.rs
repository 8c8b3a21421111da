//! Durable history across restarts: same epoch, same offsets, recovery with
//! `since`, idempotency keys remembered.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn history_epoch_and_keys_survive_a_restart() {
    let mut config = config();
    let dir = data_dir();
    config.data_dir = dir.clone();
    let server = start_with(config.clone()).await;
    let mut first = None;
    for i in 1..=10 {
        let (status, body) = api(
            &server,
            "publish",
            json!({"channel": "feed", "data": i, "idempotency_key": format!("k{i}")}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        first.get_or_insert(body["epoch"].as_str().unwrap().to_string());
    }
    let epoch = first.unwrap();
    server.shutdown().await;

    let server = start_with(config).await;
    let (_, h) = api(&server, "history", json!({"channel": "feed"})).await;
    assert_eq!(
        h["epoch"],
        epoch.as_str(),
        "epoch unchanged across the restart"
    );
    assert_eq!(h["offset"], 10);
    let data: Vec<_> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].as_u64().unwrap())
        .collect();
    assert_eq!(data, (1..=10).collect::<Vec<_>>());

    // A retry of a key from before the restart publishes nothing new.
    let (_, again) = api(
        &server,
        "publish",
        json!({"channel": "feed", "data": 7, "idempotency_key": "k7"}),
    )
    .await;
    assert_eq!(
        (again["offset"].as_u64(), again["epoch"].as_str()),
        (Some(7), Some(epoch.as_str()))
    );
    let (_, next) = api(&server, "publish", json!({"channel": "feed", "data": 11})).await;
    assert_eq!(next["offset"], 11);

    // A client that saw offset 5 before the restart recovers exactly 6..=11.
    let mut c = Raw::connect(&server, None).await;
    let r = c
        .call(json!({"op": "subscribe", "channel": "feed", "since": {"offset": 5, "epoch": epoch}}))
        .await;
    assert_eq!(r["ok"]["recovered"], true, "{r}");
    let offsets: Vec<_> = r["ok"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (6..=11).collect::<Vec<_>>());
    drop(c);
    server.shutdown().await;
}

#[tokio::test]
async fn memory_only_namespaces_start_over() {
    let mut config = config();
    config.data_dir = data_dir();
    config.namespaces.get_mut("small").unwrap().durable = false;
    let server = start_with(config.clone()).await;
    let (_, a) = api(&server, "publish", json!({"channel": "small:x", "data": 1})).await;
    server.shutdown().await;
    let server = start_with(config).await;
    let (_, h) = api(&server, "history", json!({"channel": "small:x"})).await;
    assert_eq!(h["offset"], 0);
    assert_ne!(h["epoch"], a["epoch"], "a new incarnation gets a new epoch");
    server.shutdown().await;
}

#[tokio::test]
async fn a_position_vector_stays_valid_after_a_restart() {
    let mut config = config();
    config.data_dir = data_dir();
    let server = start_with(config.clone()).await;
    let (_, a) = api(&server, "publish", json!({"channel": "feed", "data": 1})).await;
    assert_eq!(a["offset"], 1);
    let url =
        |s: &tidings_server::Server, q: &str| format!("http://{}/v1/poll?{q}", s.local_addr());
    let first: serde_json::Value = reqwest::get(url(&server, "channel=feed"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let position = first["position"].as_str().unwrap().to_string();
    server.shutdown().await;

    let server = start_with(config).await;
    api(&server, "publish", json!({"channel": "feed", "data": 2})).await;
    let answer: serde_json::Value =
        reqwest::get(url(&server, &format!("channel=feed&since={position}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{answer}");
    assert_eq!(
        (events[0]["push"].as_str(), events[0]["offset"].as_u64()),
        (Some("pub"), Some(2))
    );
    server.shutdown().await;
}
