//! The `tidings.v1.msgpack` subprotocol against a real server: the same
//! scenario over JSON and MessagePack gives the same (channel, offset,
//! data); bad frames get error 101 and the connection goes on.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_websockets::Message;

/// Payloads of every JSON type, non-ASCII and nested included.
fn payloads() -> Vec<Value> {
    vec![
        json!({"text": "héllo €😀", "n": 1}),
        json!([1, -2, 3.25, 1e300, -9007199254740993i64, u64::MAX]),
        json!(null),
        json!("a string"),
        json!({"deep": {"er": [{"x": true}, false, {}]}}),
        json!(0),
    ]
}

async fn pubs(raw: &mut Raw, n: usize) -> Vec<(Value, Value, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = raw.next_non_ping().await.expect("open");
        if m["push"] == "pub" {
            out.push((m["channel"].clone(), m["offset"].clone(), m["data"].clone()));
        }
    }
    out
}

#[tokio::test]
async fn json_and_msgpack_subscribers_see_the_same_publications() {
    let server = start().await;
    let mut j = Raw::connect(&server, None).await;
    let mut m = Raw::connect_msgpack(&server, None).await;
    for raw in [&mut j, &mut m] {
        let r = raw
            .call(json!({"op": "subscribe", "channel": "both"}))
            .await;
        assert!(r["ok"].is_object(), "{r}");
    }
    // Half through the API, half published by the MessagePack client.
    let all = payloads();
    for (i, data) in all.iter().enumerate() {
        if i % 2 == 0 {
            let (status, body) =
                api(&server, "publish", json!({"channel": "both", "data": data})).await;
            assert_eq!(status, 200, "{body}");
        } else {
            let r = m
                .call(json!({"op": "publish", "channel": "both", "data": data}))
                .await;
            assert_eq!(r["ok"]["offset"], json!(i + 1), "{r}");
        }
    }
    let over_json = pubs(&mut j, all.len()).await;
    let over_msgpack = pubs(&mut m, all.len()).await;
    assert_eq!(over_json, over_msgpack);
    let data: Vec<Value> = over_json.into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(data, all);
    // Recovery and history read the same too.
    let since = json!({"offset": 2, "epoch": j.call(json!({"op": "history", "channel": "both", "limit": 0})).await["ok"]["epoch"]});
    let a = j
        .call(json!({"op": "history", "channel": "both", "since": since}))
        .await;
    let b = m
        .call(json!({"op": "history", "channel": "both", "since": since}))
        .await;
    assert_eq!(a["ok"], b["ok"]);
    assert_eq!(
        a["ok"]["publications"].as_array().unwrap().len(),
        all.len() - 2
    );
    server.shutdown().await;
}

#[tokio::test]
async fn deltas_over_msgpack_apply_like_over_json() {
    let server = start().await;
    let mut m = Raw::connect_msgpack(&server, None).await;
    let r = m
        .call(json!({"op": "subscribe", "channel": "dm", "delta": "fossil"}))
        .await;
    assert_eq!(r["ok"]["delta"], true);
    let mut book: Vec<Value> = (0..50).map(|i| json!([100 + i, i])).collect();
    let mut texts = Vec::new();
    for i in 0..5 {
        book[i * 7] = json!([0, i]);
        let data = json!({"book": book});
        texts.push(serde_json::to_string(&data).unwrap());
        api(&server, "publish", json!({"channel": "dm", "data": data})).await;
    }
    let mut base: Option<String> = None;
    let mut deltas = 0;
    for want in texts {
        let p = m.next_non_ping().await.unwrap();
        let data = p["data"].as_str().unwrap();
        let text = if p["delta"] == true {
            deltas += 1;
            let out = fossil_delta::apply(base.as_deref().unwrap(), data.as_bytes()).unwrap();
            String::from_utf8(out).unwrap()
        } else {
            data.to_string()
        };
        assert_eq!(text, want);
        base = Some(text);
    }
    assert_eq!(deltas, 4, "all but the first as deltas");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_msgpack_frames_get_101_and_the_connection_goes_on() {
    let server = start().await;
    let mut m = Raw::connect_msgpack(&server, None).await;
    // A map with an integer key (not a command), then garbage, then a truncated value.
    for frame in [vec![0x81, 0x01, 0x02], vec![0xc1], vec![0x82, 0xa2, b'i']] {
        m.ws.send(Message::binary(frame)).await.unwrap();
        let e = m.next_non_ping().await.unwrap();
        assert_eq!(e["error"]["code"], 101, "{e}");
    }
    let r = m.call(json!({"op": "subscribe", "channel": "fine"})).await;
    assert!(r["ok"].is_object(), "{r}");
    // Before `connect`, a bad frame ends the connection (as bad JSON does).
    let mut fresh = Raw::open_msgpack(&server).await;
    fresh.ws.send(Message::binary(vec![0xc1])).await.unwrap();
    let e = fresh.next_non_ping().await.unwrap();
    assert_eq!(e["error"]["code"], 101);
    let closed = fresh.drain_until_closed().await;
    assert!(
        closed.iter().any(|m| m["push"] == "disconnect"),
        "{closed:?}"
    );
    // An unknown subprotocol only is refused.
    let uri = ws_url(&server).parse().unwrap();
    let refused = tokio_websockets::ClientBuilder::from_uri(uri)
        .add_header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("tidings.v2.cbor"),
        )
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn a_message_without_a_msgpack_form_comes_as_json_text_not_dropped() {
    use futures_util::StreamExt;
    let server = start().await;
    let mut m = Raw::connect_msgpack(&server, None).await;
    m.call(json!({"op": "subscribe", "channel": "odd"})).await;
    // An unpaired surrogate escape: valid JSON text, no MessagePack string.
    let res = reqwest::Client::new()
        .post(api_url(&server, "publish"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(r#"{"channel": "odd", "data": {"a": "\ud800"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    api(&server, "publish", json!({"channel": "odd", "data": 2})).await;
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), m.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = frame.as_text().expect("a JSON text frame");
    assert!(
        text.contains(r#""offset":1"#) && text.contains(r#"\ud800"#),
        "{text}"
    );
    // The next one is MessagePack again.
    let next = m.next_non_ping().await.unwrap();
    assert_eq!(
        (next["offset"].clone(), next["data"].clone()),
        (json!(2), json!(2))
    );
    server.shutdown().await;
}
