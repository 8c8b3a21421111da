//! SSE, long-poll and client HTTP actions over real sockets: stateless
//! resume by position vector, resets, parity with WebSocket, bad input, CORS.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A minimal SSE reader over a real HTTP response.
struct Sse {
    res: reqwest::Response,
    buf: String,
    /// The id of the last block that had one (what a browser would resend).
    last_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl Sse {
    async fn open(server: &tidings_server::Server, query: &str, last_id: Option<&str>) -> Sse {
        let mut req =
            reqwest::Client::new().get(format!("http://{}/v1/sse?{query}", server.local_addr()));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "sse opens");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Sse {
            res,
            buf: String::new(),
            last_id: None,
        }
    }

    /// The next event (comments and retry-only blocks skipped), 10 s at most.
    async fn next(&mut self) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = SseEvent::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        e.event = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        e.id = Some(v.into());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        e.data.push_str(v);
                    }
                }
                if e.id.is_some() {
                    self.last_id = e.id.clone();
                }
                // `connected` opens every stream; the tests read what follows.
                if !e.event.is_empty() && e.event != "connected" {
                    return Some(e);
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.res.chunk())
                .await
                .expect("an event within 10 s")
            {
                Ok(Some(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }
}

async fn publish(server: &tidings_server::Server, channel: &str, data: Value) -> Value {
    let (status, body) = api(server, "publish", json!({"channel": channel, "data": data})).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn poll(server: &tidings_server::Server, query: &str) -> (u16, Value) {
    let res = reqwest::get(format!("http://{}/v1/poll?{query}", server.local_addr()))
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn offsets_of(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["push"] == "pub")
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn sse_streams_and_resumes_from_last_event_id() {
    let server = start().await;
    let mut sse = Sse::open(&server, "channel=feed&channel=other", None).await;
    for i in 1..=3 {
        publish(&server, "feed", json!(i)).await;
    }
    let mut ids = Vec::new();
    for want in 1..=3 {
        let e = sse.next().await.unwrap();
        assert_eq!(e.event, "pub");
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(
            (data["offset"].as_u64(), data["data"].as_u64()),
            (Some(want), Some(want))
        );
        ids.push(e.id.expect("pub events carry the position vector"));
    }
    drop(sse);
    // Missed while away: 4 and 5. Resume from the first id: 2..=5, once each.
    publish(&server, "feed", json!(4)).await;
    publish(&server, "other", json!("x")).await;
    publish(&server, "feed", json!(5)).await;
    let mut sse = Sse::open(&server, "channel=feed&channel=other", Some(&ids[0])).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let e = sse.next().await.unwrap();
        let data: Value = serde_json::from_str(&e.data).unwrap();
        got.push((
            data["channel"].as_str().unwrap().to_string(),
            data["offset"].as_u64().unwrap(),
        ));
    }
    let feed: Vec<u64> = got
        .iter()
        .filter(|(c, _)| c == "feed")
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(feed, [2, 3, 4, 5]);
    assert_eq!(got.iter().filter(|(c, _)| c == "other").count(), 1);
}

#[tokio::test]
async fn sse_resets_a_channel_history_no_longer_covers() {
    let server = start().await;
    let mut sse = Sse::open(&server, "channel=small:t", None).await;
    publish(&server, "small:t", json!(1)).await;
    let first = sse.next().await.unwrap();
    drop(sse);
    for i in 2..=10 {
        publish(&server, "small:t", json!(i)).await;
    }
    let mut sse = Sse::open(&server, "channel=small:t", first.id.as_deref()).await;
    let e = sse.next().await.unwrap();
    assert_eq!(e.event, "reset");
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        (data["offset"].as_u64(), data["recovered"].as_bool()),
        (Some(10), Some(false))
    );
    publish(&server, "small:t", json!(11)).await;
    let e = sse.next().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&e.data).unwrap()["offset"],
        11
    );
}

#[tokio::test]
async fn long_poll_loop_never_loses_or_repeats() {
    let server = start().await;
    let (status, first) = poll(&server, "channel=feed").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["events"], json!([]));
    let mut position = first["position"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let mut published = 0u64;
    for round in 0..30u64 {
        for _ in 0..(round % 4) {
            published += 1;
            publish(&server, "feed", json!(published)).await;
        }
        if round % 4 == 0 {
            // Nothing pending: the poll is held, then a publish releases it.
            let addr = server.local_addr();
            let next = published + 1;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                reqwest::Client::new()
                    .post(format!("http://{addr}/v1/api/publish"))
                    .bearer_auth(API_KEY)
                    .json(&json!({"channel": "feed", "data": next}))
                    .send()
                    .await
                    .unwrap();
            });
            published += 1;
        }
        let (status, answer) = poll(
            &server,
            &format!("channel=feed&since={position}&timeout=10"),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        seen.extend(offsets_of(answer["events"].as_array().unwrap()));
        position = answer["position"].as_str().unwrap().to_string();
        // Catch up anything published while this answer was made.
        while (seen.len() as u64) < published {
            let (_, more) = poll(
                &server,
                &format!("channel=feed&since={position}&timeout=10"),
            )
            .await;
            seen.extend(offsets_of(more["events"].as_array().unwrap()));
            position = more["position"].as_str().unwrap().to_string();
        }
    }
    assert_eq!(seen, (1..=published).collect::<Vec<_>>());
    // Nothing pending: held until the timeout, then no events and the same position.
    let (_, idle) = poll(&server, &format!("channel=feed&since={position}&timeout=1")).await;
    assert_eq!(idle["events"], json!([]));
    assert_eq!(idle["position"], position.as_str());
}

#[tokio::test]
async fn long_poll_resets_when_history_was_trimmed() {
    let server = start().await;
    publish(&server, "small:p", json!(0)).await;
    let (_, first) = poll(&server, "channel=small:p").await;
    let position = first["position"].as_str().unwrap().to_string();
    for i in 1..=8 {
        publish(&server, "small:p", json!(i)).await;
    }
    let (_, answer) = poll(&server, &format!("channel=small:p&since={position}")).await;
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events[0]["push"], "reset", "{answer}");
    assert_eq!(events[0]["offset"], 9);
    assert_eq!(events[0]["recovered"], false);
}

#[tokio::test]
async fn parity_between_websocket_sse_and_long_poll() {
    let server = start().await;
    let mut ws = Raw::connect(&server, None).await;
    ws.call(json!({"op": "subscribe", "channel": "par"})).await;
    let mut sse = Sse::open(&server, "channel=par", None).await;
    let (_, first) = poll(&server, "channel=par").await;
    let mut position = first["position"].as_str().unwrap().to_string();
    let sent: Vec<Value> = (0..20)
        .map(|i| json!({"n": i, "s": "x".repeat(i)}))
        .collect();
    for d in &sent {
        publish(&server, "par", d.clone()).await;
    }
    let mut over_ws = Vec::new();
    while over_ws.len() < sent.len() {
        let m = ws.next_non_ping().await.unwrap();
        over_ws.push((m["channel"].clone(), m["offset"].clone(), m["data"].clone()));
    }
    let mut over_sse = Vec::new();
    while over_sse.len() < sent.len() {
        let m: Value = serde_json::from_str(&sse.next().await.unwrap().data).unwrap();
        over_sse.push((m["channel"].clone(), m["offset"].clone(), m["data"].clone()));
    }
    let mut over_poll = Vec::new();
    while over_poll.len() < sent.len() {
        let (_, a) = poll(&server, &format!("channel=par&since={position}&timeout=5")).await;
        for m in a["events"].as_array().unwrap() {
            over_poll.push((m["channel"].clone(), m["offset"].clone(), m["data"].clone()));
        }
        position = a["position"].as_str().unwrap().to_string();
    }
    assert_eq!(over_ws, over_sse);
    assert_eq!(over_ws, over_poll);
    assert_eq!(
        over_ws.iter().map(|t| t.2.clone()).collect::<Vec<_>>(),
        sent
    );
}

#[tokio::test]
async fn bad_positions_and_limits_answer_with_codes() {
    let server = start().await;
    for bad in ["%%%", "AQID", "Ag", "AAAAAAAA"] {
        let (status, body) = poll(&server, &format!("channel=feed&since={bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], 101);
        let res = reqwest::Client::new()
            .get(format!(
                "http://{}/v1/sse?channel=feed",
                server.local_addr()
            ))
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
    }
    // A forged but well-formed vector: the epoch does not match, so the
    // channel is reset to its current position — never a silent restart from zero.
    for i in 1..=3 {
        publish(&server, "feed", json!(i)).await;
    }
    let forged = tidings_protocol::position::encode([("feed", "not-the-epoch", 1)]);
    let (_, a) = poll(&server, &format!("channel=feed&since={forged}")).await;
    assert_eq!(a["events"][0]["push"], "reset", "{a}");
    assert_eq!(a["events"][0]["offset"], 3);

    let (status, body) = poll(&server, "").await;
    assert_eq!((status, body["error"]["code"].as_u64()), (400, Some(101)));
    let many: String = (0..65).map(|i| format!("channel=c{i}&")).collect();
    let (status, body) = poll(&server, &many).await;
    assert_eq!((status, body["error"]["code"].as_u64()), (413, Some(104)));
    let (status, body) = poll(&server, "channel=feed&timeout=61").await;
    assert_eq!((status, body["error"]["code"].as_u64()), (400, Some(101)));
    let (status, body) = poll(&server, "channel=chat:x").await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (403, Some(103)),
        "anonymous in chat"
    );
    let (status, body) = poll(&server, "channel=chat:x&token=bad").await;
    assert_eq!((status, body["error"]["code"].as_u64()), (403, Some(103)));
    let (status, _) = poll(&server, &format!("channel=chat:x&token={}", token("alice"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn held_polls_per_user_are_limited() {
    let mut config = config();
    config.client.max_polls_per_user = 2;
    let server = start_with(config).await;
    let (_, first) = poll(&server, "channel=feed").await;
    let position = first["position"].as_str().unwrap().to_string();
    let q = format!("channel=feed&since={position}&timeout=3");
    let a = tokio::spawn({
        let url = format!("http://{}/v1/poll?{q}", server.local_addr());
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    });
    let b = tokio::spawn({
        let url = format!("http://{}/v1/poll?{q}", server.local_addr());
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = poll(&server, &q).await;
    assert_eq!(
        (status, body["error"]["code"].as_u64()),
        (429, Some(105)),
        "{body}"
    );
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (200, 200));
    let (status, _) = poll(&server, &format!("channel=feed&since={position}&timeout=0")).await;
    assert_eq!(status, 200, "free again once they answered");
}

#[tokio::test]
async fn client_http_actions_use_the_connection_token() {
    let server = start().await;
    let url = |op: &str| format!("http://{}/v1/client/{op}", server.local_addr());
    let http = reqwest::Client::new();
    let res = http
        .post(url("publish"))
        .bearer_auth(token("alice"))
        .header("Idempotency-Key", "once")
        .json(&json!({"channel": "chat:room", "data": {"text": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let a: Value = res.json().await.unwrap();
    assert_eq!(a["offset"], 1);
    let again: Value = http
        .post(url("publish"))
        .bearer_auth(token("alice"))
        .header("Idempotency-Key", "once")
        .json(&json!({"channel": "chat:room", "data": {"text": "hi"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, a);
    let h: Value = http
        .post(url("history"))
        .bearer_auth(token("bob"))
        .json(&json!({"channel": "chat:room"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["publications"][0]["info"]["user"], "alice");
    assert_eq!(h["publications"].as_array().unwrap().len(), 1);
    // Anonymous in an authenticated namespace; a bad token; an unknown action; bad JSON.
    let res = http
        .post(url("publish"))
        .json(&json!({"channel": "chat:room", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = http
        .post(url("publish"))
        .bearer_auth("junk")
        .json(&json!({"channel": "chat:room", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = http
        .post(url("subscribe"))
        .json(&json!({"channel": "feed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .post(url("publish"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .post(url("publish"))
        .bearer_auth(token("alice"))
        .json(&json!({"channel": "api:x", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "client_publish = none");
    let res = http
        .post(url("presence_stats"))
        .bearer_auth(token("alice"))
        .json(&json!({"channel": "chat:room"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let mut config = config();
    config.cors_origins = vec!["https://app.example".into()];
    let server = start_with(config).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("http://{}/v1/client/publish", server.local_addr()),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        ok.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn sse_slow_reader_is_cut_off_and_resumes_without_loss() {
    let mut config = config();
    config.client.outbox_bytes = 64 * 1024;
    config.channels.max_message_size = 16 * 1024;
    // The resume below recovers about 11 MB in one answer.
    config.client.recovery_max_bytes = 16 * 1024 * 1024;
    let server = start_with(config).await;
    let mut sse = Sse::open(&server, "channel=bulk", None).await;
    publish(&server, "bulk", json!(0)).await;
    let first = sse.next().await.unwrap();
    // Stop reading; publish far more than socket buffers and the outbox hold.
    // Fewer than recovery_max (1000) in all, and fewer bytes than
    // recovery_max_bytes, so the resume recovers them.
    let blob = "y".repeat(12 * 1024);
    let total = 900u64;
    for i in 1..total {
        publish(&server, "bulk", json!({"i": i, "b": blob})).await;
    }
    let mut last_id = first.id.clone();
    let mut seen = vec![0u64];
    let mut cut = false;
    while let Some(e) = sse.next().await {
        if e.event == "disconnect" {
            assert_eq!(
                serde_json::from_str::<Value>(&e.data).unwrap()["code"],
                3002
            );
            cut = true;
            break;
        }
        let d: Value = serde_json::from_str(&e.data).unwrap();
        seen.push(d["offset"].as_u64().unwrap() - 1);
        last_id = e.id.clone();
    }
    assert!(cut, "the slow reader was cut off with 3002");
    let mut sse = Sse::open(&server, "channel=bulk", last_id.as_deref()).await;
    while (seen.len() as u64) < total {
        let e = sse.next().await.unwrap();
        let d: Value = serde_json::from_str(&e.data).unwrap();
        seen.push(d["offset"].as_u64().unwrap() - 1);
    }
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
}

#[tokio::test]
async fn sse_that_drops_before_its_first_publication_still_resumes() {
    let server = start().await;
    let mut sse = Sse::open(&server, "channel=quiet", None).await;
    // Read the opening block (retry hint and position), then drop the stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sse.last_id.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "an opening id");
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(200), sse.res.chunk()).await
        {
            sse.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        if let Some(end) = sse.buf.find("\n\n") {
            let block: String = sse.buf.drain(..end + 2).collect();
            sse.last_id = block
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(String::from);
        }
    }
    let id = sse.last_id.clone();
    drop(sse);
    publish(&server, "quiet", json!(1)).await;
    publish(&server, "quiet", json!(2)).await;
    let mut sse = Sse::open(&server, "channel=quiet", id.as_deref()).await;
    for want in [1, 2] {
        let e = sse.next().await.unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&e.data).unwrap()["offset"],
            want
        );
    }
}

/// Reads only the opening block of an SSE stream and returns its id.
async fn opening_id(server: &tidings_server::Server, query: &str, last: Option<&str>) -> String {
    let mut sse = Sse::open(server, query, last).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = sse.buf.find("\n\n") {
            let block: String = sse.buf.drain(..end + 2).collect();
            if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id: ")) {
                return id.to_string();
            }
        }
        let chunk = tokio::time::timeout_at(deadline, sse.res.chunk())
            .await
            .expect("an opening block");
        sse.buf
            .push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
}

#[tokio::test]
async fn the_opening_id_never_claims_what_was_not_delivered() {
    let server = start().await;
    for i in 1..=3 {
        publish(&server, "feed", json!(i)).await;
    }
    let v0 = opening_id(&server, "channel=feed&channel=other", None).await;
    for i in 4..=8 {
        publish(&server, "feed", json!(i)).await;
    }
    publish(&server, "other", json!("o")).await;
    // Resume, but drop right after the opening block, before the recovered events.
    let v1 = opening_id(&server, "channel=feed&channel=other", Some(&v0)).await;
    let mut sse = Sse::open(&server, "channel=feed&channel=other", Some(&v1)).await;
    let mut got = Vec::new();
    while got.len() < 6 {
        let e = sse.next().await.unwrap();
        let d: Value = serde_json::from_str(&e.data).unwrap();
        got.push(format!(
            "{}:{}",
            d["channel"].as_str().unwrap(),
            d["offset"]
        ));
    }
    got.sort();
    assert_eq!(
        got,
        ["feed:4", "feed:5", "feed:6", "feed:7", "feed:8", "other:1"]
    );
}

#[tokio::test]
async fn history_none_recovers_nothing_over_any_transport() {
    use tidings_server::config::{ClientAccess, ClientPublish, NamespaceOptions};
    let mut c = config();
    c.namespaces.insert(
        "sealed".into(),
        NamespaceOptions {
            history: ClientAccess::None,
            history_size: 5000,
            client_publish: ClientPublish::Any,
            anonymous: true,
            ..Default::default()
        },
    );
    let server = start_with(c).await;
    let first = publish(&server, "sealed:x", json!(0)).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for i in 1..50 {
        publish(&server, "sealed:x", json!(i)).await;
    }

    // WebSocket: recovered false, no publications; strict: 109.
    let mut ws = Raw::connect(&server, None).await;
    let since = json!({"offset": 1, "epoch": epoch});
    let r = ws
        .call(json!({"op": "subscribe", "channel": "sealed:x", "since": since}))
        .await;
    assert_eq!(r["ok"]["recovered"], false, "{r}");
    assert!(r["ok"].get("publications").is_none(), "{r}");
    assert_eq!(r["ok"]["offset"], 50, "{r}");
    let r = ws
        .call(json!({"op": "subscribe", "channel": "sealed:y", "since": since, "strict": true}))
        .await;
    assert_eq!(error_code(&r), 109, "{r}");

    // SSE: from an id at offset 1, a reset and no publication.
    let mut sse = Sse::open(&server, "channel=sealed:x", None).await;
    publish(&server, "sealed:x", json!(50)).await;
    let live = sse.next().await.unwrap();
    assert_eq!(live.event, "pub", "live publications still arrive");
    drop(sse);
    for i in 51..60 {
        publish(&server, "sealed:x", json!(i)).await;
    }
    let mut sse = Sse::open(&server, "channel=sealed:x", live.id.as_deref()).await;
    let e = sse.next().await.unwrap();
    assert_eq!(e.event, "reset", "{e:?}");
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data["offset"], 60, "{data}");

    // Long-poll: the same.
    let (status, answer) = poll(
        &server,
        &format!("channel=sealed:x&since={}", live.id.as_deref().unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert!(offsets_of(events).is_empty(), "nothing recovered: {answer}");
    assert!(events.iter().any(|e| e["push"] == "reset"), "{answer}");
}

#[tokio::test]
async fn an_sse_stream_ends_when_its_connection_token_expires() {
    let server = start().await;
    // Expired 3 s ago: still accepted for the 5 s leeway, so it ends in ~2 s.
    let exp = tidings_server::auth::unix_now() - 3;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut sse = Sse::open(&server, &format!("channel=news&token={token}"), None).await;
    let e = sse.next().await.expect("a disconnect event");
    assert_eq!(e.event, "disconnect", "{e:?}");
    let d: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        (d["code"].as_u64(), d["reconnect"].as_bool()),
        (Some(3005), Some(true)),
        "{d}"
    );
    assert!(sse.next().await.is_none(), "the stream ends");
}

/// A configuration with `board` (publications `low` by default) whose
/// backlog waits in the outbox rather than in kernel buffers.
fn board_config() -> tidings_server::config::Config {
    let mut c = config();
    c.client.outbox_bytes = 32 * 1024 * 1024;
    c.client.send_buffer = 16 * 1024;
    c.client.recovery_max = 10_000;
    c.client.recovery_max_bytes = 64 * 1024 * 1024;
    c.namespaces.insert(
        "board".into(),
        tidings_server::config::NamespaceOptions {
            anonymous: true,
            history_size: 10_000,
            history_max_bytes: 64 * 1024 * 1024,
            max_message_size: 16 * 1024,
            default_priority: tidings_protocol::Priority::Low,
            ..Default::default()
        },
    );
    c
}

/// Publishes one `critical` score into `board:score`.
async fn publish_goal(server: &tidings_server::Server) {
    let (status, body) = api(
        server,
        "publish",
        json!({"channel": "board:score", "data": "goal", "priority": "critical"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn sse_writes_a_critical_publication_before_a_low_backlog() {
    let server = start_with(board_config()).await;
    let mut sse = Sse::open(&server, "channel=board:stats&channel=board:score", None).await;
    // 1,000 statistics of 8 KB queue up behind a reader that does not
    // read; then one critical score.
    let blob = "l".repeat(8000);
    for i in 0..1000u64 {
        publish(&server, "board:stats", json!({"i": i, "b": blob})).await;
    }
    publish_goal(&server).await;
    let mut order = Vec::new();
    while order.len() < 1001 {
        let e = sse.next().await.expect("every event");
        let d: Value = serde_json::from_str(&e.data).unwrap();
        order.push((
            d["channel"].as_str().unwrap().to_string(),
            d["offset"].as_u64().unwrap(),
        ));
    }
    let score = order
        .iter()
        .position(|(c, _)| c == "board:score")
        .expect("the score");
    let stats: Vec<u64> = order
        .iter()
        .filter(|(c, _)| c == "board:stats")
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(
        stats,
        (1..=1000).collect::<Vec<_>>(),
        "statistics all come, in order"
    );
    assert!(
        score < 1000,
        "written before the statistics still queued (at {score})"
    );
}

#[tokio::test]
async fn a_poll_answers_the_channel_with_a_critical_publication_first() {
    let server = start_with(board_config()).await;
    let query = "channel=board:stats&channel=board:score";
    let (status, first) = poll(&server, query).await;
    assert_eq!(status, 200, "{first}");
    let position = first["position"].as_str().unwrap().to_string();
    for i in 0..50u64 {
        publish(&server, "board:stats", json!(i)).await;
    }
    publish_goal(&server).await;
    let (status, answer) = poll(&server, &format!("{query}&since={position}")).await;
    assert_eq!(status, 200, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 51, "{answer}");
    assert_eq!(
        events[0]["channel"], "board:score",
        "the critical one first"
    );
    assert_eq!(
        offsets_of(&events[1..]),
        (1..=50).collect::<Vec<_>>(),
        "then the statistics, in order"
    );
}

#[tokio::test]
async fn delivery_latency_is_measured_per_transport() {
    let server = start().await;
    let mut ws = Raw::connect(&server, None).await;
    let r = ws.call(json!({"op": "subscribe", "channel": "lat"})).await;
    assert!(r["ok"].is_object(), "{r}");
    let mut sse = Sse::open(&server, "channel=lat", None).await;
    publish(&server, "lat", json!({"n": 1})).await;
    assert_eq!(ws.next_non_ping().await.unwrap()["push"], "pub");
    assert_eq!(sse.next().await.unwrap().event, "pub");
    for transport in ["websocket", "sse"] {
        let count = metric(
            &server,
            &format!("tidings_delivery_latency_seconds_count{{transport=\"{transport}\"}}"),
        )
        .await;
        assert_eq!(count, Some(1.0), "{transport}");
    }
    let by_namespace = "tidings_namespace_publications_total{namespace=\"\"}";
    assert_eq!(metric(&server, by_namespace).await, Some(1.0));
    // Two subscribers here: two deliveries of the one publication.
    let delivered = "tidings_namespace_deliveries_total{namespace=\"\"}";
    assert_eq!(metric(&server, delivered).await, Some(2.0));
    // Each write of the two writers is one observation of its outbox's depth.
    for transport in ["websocket", "sse"] {
        let depth = format!("tidings_outbox_depth_count{{transport=\"{transport}\"}}");
        assert!(metric(&server, &depth).await >= Some(1.0), "{transport}");
    }
    // The engine's publish was timed once; every operation is listed.
    let publish = "tidings_engine_seconds_count{op=\"publish\"}";
    assert_eq!(metric(&server, publish).await, Some(1.0));
    let read = "tidings_engine_seconds_count{op=\"read\"}";
    assert!(metric(&server, read).await.is_some());
    // The client closes: counted under 1000.
    let closes = "tidings_closes_total{code=\"1000\"}";
    assert_eq!(metric(&server, closes).await, Some(0.0));
    let _ = futures_util::SinkExt::close(&mut ws.ws).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&server, closes).await != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the close was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}
