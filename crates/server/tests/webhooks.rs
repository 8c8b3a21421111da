//! Webhooks against a real HTTP receiver started by the test: each event
//! once by id despite failing tries, signatures that verify (and a
//! tampered body that does not), occupied/vacated pairs under churn.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::receiver::{WHSEC, close_ws, hooked, receiver};
use common::*;
use serde_json::json;
use tidings_server::config::WebhookEvent;
use tidings_server::hooks::signature;

#[tokio::test]
async fn each_event_reaches_the_backend_once_by_id_despite_failures() {
    let (url, got) = receiver(3).await;
    let mut c = hooked(&url);
    c.webhooks.events.push(WebhookEvent::Publication);
    let server = start_with(c).await;

    let mut alice = Raw::connect(&server, Some("alice")).await;
    let r = alice
        .call(json!({"op": "subscribe", "channel": "chat:room"}))
        .await;
    assert!(r["ok"].is_object(), "{r}");
    let (status, _) = api(
        &server,
        "publish",
        json!({"channel": "chat:room", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(status, 200);
    close_ws(alice).await;

    got.wait_for("six events", |g| g.count("client_disconnected") == 1)
        .await;
    let unique = got.unique();
    let kinds: BTreeMap<String, usize> = unique.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["event"].as_str().unwrap().to_string())
            .or_default() += 1;
        m
    });
    let expected: BTreeMap<String, usize> = [
        "channel_occupied",
        "channel_vacated",
        "client_connected",
        "client_disconnected",
        "member_added",
        "member_removed",
        "publication",
    ]
    .into_iter()
    .map(|k| (k.to_string(), 1))
    .collect();
    assert_eq!(kinds, expected, "{unique:#?}");
    let by = |kind: &str| unique.iter().find(|e| e["event"] == kind).unwrap().clone();
    assert_eq!(by("member_added")["user"], "alice");
    assert_eq!(by("member_added")["channel"], "chat:room");
    assert_eq!(by("client_disconnected")["code"], 1000);
    assert_eq!(by("publication")["offset"], 1);
    assert_eq!(by("publication")["data"]["text"], "hi");
    assert!(by("channel_occupied")["time"].as_u64().unwrap() > 0);
    assert_eq!(
        got.fail_next.load(Ordering::SeqCst),
        0,
        "three tries failed"
    );
    assert_eq!(got.bad_signatures.load(Ordering::SeqCst), 0);
    assert!(
        metric(&server, "tidings_webhook_failures_total")
            .await
            .unwrap()
            >= 3.0
    );

    // A body changed on the way does not verify.
    let (header, body) = got.requests.lock()[0].clone();
    let now = tidings_server::auth::unix_now();
    assert!(signature::verify(WHSEC, &header, &body, now, 300).is_ok());
    let mut tampered = body.to_vec();
    let at = tampered.iter().position(|b| *b == b'1').unwrap_or(0);
    tampered[at] ^= 1;
    assert_eq!(
        signature::verify(WHSEC, &header, &tampered, now, 300),
        Err(signature::SignatureError::Mismatch)
    );
    assert!(signature::verify("another-secret", &header, &body, now, 300).is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn occupied_and_vacated_pair_up_under_churn() {
    const TASKS: usize = 25;
    const ROUNDS: usize = 40; // 1,000 connects and disconnects
    let (url, got) = receiver(0).await;
    let server = Arc::new(start_with(hooked(&url)).await);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let mut raw = Raw::connect(&server, None).await;
                let reply = raw
                    .call(json!({"op": "subscribe", "channel": "lobby"}))
                    .await;
                assert!(reply["ok"].is_object(), "{reply}");
                // Some leave at once, some stay a moment: the channel empties
                // and fills again many times.
                if (t + r) % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                close_ws(raw).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = TASKS * ROUNDS;
    got.wait_for("every disconnect", |g| {
        g.count("client_disconnected") == total
    })
    .await;
    assert_eq!(got.count("client_connected"), total);
    // In the order sent: occupied, vacated, occupied, ... ending vacated.
    let pairs: Vec<String> = got
        .unique()
        .iter()
        .filter(|e| e["channel"] == "lobby")
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert!(!pairs.is_empty());
    assert_eq!(pairs.len() % 2, 0, "{pairs:?}");
    for (i, kind) in pairs.iter().enumerate() {
        let want = if i % 2 == 0 {
            "channel_occupied"
        } else {
            "channel_vacated"
        };
        assert_eq!(kind, want, "event {i} of {pairs:?}");
    }
    Arc::into_inner(server).unwrap().shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts_them() {
    // Nothing listens: every event stays queued, and the bound holds.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", l.local_addr().unwrap());
    drop(l);
    let mut c = hooked(&url);
    c.webhooks.max_queue = 5;
    // Retried all along: nothing leaves the queue but by the bound.
    c.webhooks.max_attempts = 1_000_000;
    let server = start_with(c).await;
    for _ in 0..12 {
        close_ws(Raw::connect(&server, None).await).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued = metric(&server, "tidings_webhook_queue")
            .await
            .unwrap_or(0.0);
        let dropped = metric(
            &server,
            "tidings_webhook_events_total{outcome=\"dropped_full\"}",
        )
        .await
        .unwrap_or(0.0);
        // 24 events (connected and disconnected), 5 kept.
        if queued == 5.0 && dropped == 19.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queued {queued}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}
