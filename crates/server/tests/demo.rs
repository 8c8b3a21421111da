//! The demo app and dev mode's token endpoint, on a real server.

mod common;

use common::*;
use serde_json::json;
use tidings_server::config::Config;

fn dev_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir(),
        ..Default::default()
    }
}

fn url(server: &tidings_server::Server, path: &str) -> String {
    format!("http://{}{path}", server.local_addr())
}

async fn ask_token(server: &tidings_server::Server, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(server, "/v1/dev/token"))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn dev_mode_serves_the_demo_and_mints_tokens_that_join_its_namespace() {
    let server = start_with(dev_config()).await;
    let http = reqwest::Client::new();
    let page = http.get(url(&server, "/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("Live classroom"));
    let sdk = http
        .get(url(&server, "/sdk/index.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(sdk.status(), 200);
    assert!(
        sdk.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let missing = http.get(url(&server, "/nothing.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // The static routes keep their own answers.
    let health = http.get(url(&server, "/health")).send().await.unwrap();
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap()["status"],
        "ok"
    );

    for bad in [
        json!({}),
        json!({"name": "  "}),
        json!({"name": "x".repeat(41)}),
    ] {
        let r = ask_token(&server, &bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
            101
        );
    }
    let r: serde_json::Value = ask_token(&server, &json!({"name": "Alice"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["user"], "alice");

    // The token joins the demo namespace, with presence carrying the name.
    let mut ws = Raw::open(&server).await;
    let reply = ws.call(json!({"op": "connect", "token": r["token"]})).await;
    assert_eq!(reply["ok"]["user"], "alice", "{reply}");
    let sub = ws
        .call(json!({"op": "subscribe", "channel": "demo:lobby"}))
        .await;
    let members: Vec<_> = sub["ok"]["presence"]
        .as_object()
        .expect("presence in the reply")
        .values()
        .cloned()
        .collect();
    assert_eq!(members.len(), 1, "{sub}");
    assert_eq!(members[0]["user"], "alice");
    assert_eq!(members[0]["info"]["name"], "Alice");
    let p = ws
        .call(json!({"op": "publish", "channel": "demo:lobby", "data": {"text": "hi"}}))
        .await;
    assert_eq!(p["ok"]["offset"], 1, "{p}");
    server.shutdown().await;
}

#[tokio::test]
async fn with_a_secret_there_is_no_token_endpoint_and_no_demo_unless_asked() {
    let server = start_with(config()).await;
    let http = reqwest::Client::new();
    let r = ask_token(&server, &json!({"name": "Mallory"})).await;
    assert_eq!(r.status(), 404);
    let page = http
        .get(url(&server, "/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("Live classroom"), "{page}");
    server.shutdown().await;

    let server = start_with(Config {
        demo: Some(true),
        ..config()
    })
    .await;
    let page = http
        .get(url(&server, "/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Live classroom"));
    let r = ask_token(&server, &json!({"name": "Mallory"})).await;
    assert_eq!(
        r.status(),
        404,
        "never a token endpoint with a configured secret"
    );
    server.shutdown().await;
}
