//! Connection tokens: every algorithm family, and each way a token must be
//! refused (wrong key, `alg: none`, HS signed with the RS public key,
//! expired, not yet valid, wrong audience or issuer), over real sockets.

mod common;

use std::path::PathBuf;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tidings_server::auth::unix_now;

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(key(name)).unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "alice", "exp": unix_now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

async fn server() -> tidings_server::Server {
    let mut c = config();
    c.auth.token_public_keys = vec![key("rsa.pub"), key("ec.pub"), key("ed.pub")];
    c.auth.token_audience = Some("tidings-test".into());
    c.auth.token_issuer = Some("https://auth.example".into());
    start_with(c).await
}

/// Connects with `token`; returns the reply and, on refusal, the disconnect code.
async fn connect(server: &tidings_server::Server, token: &str) -> (Value, Option<u64>) {
    let mut raw = Raw::open(server).await;
    let r = raw.call(json!({"op": "connect", "token": token})).await;
    if r.get("ok").is_some() {
        return (r, None);
    }
    let d = raw.expect_disconnect().await;
    (r, d["code"].as_u64())
}

fn good() -> Value {
    claims(json!({"aud": "tidings-test", "iss": "https://auth.example"}))
}

#[tokio::test]
async fn every_algorithm_family_is_accepted_with_its_key() {
    let server = server().await;
    let tokens = [
        sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(&pem("rsa.key")).unwrap(),
            good(),
        ),
        sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(&pem("ec.key")).unwrap(),
            good(),
        ),
        sign(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_pem(&pem("ed.key")).unwrap(),
            good(),
        ),
        sign(
            Algorithm::HS384,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            good(),
        ),
        sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            good(),
        ),
    ];
    for t in tokens {
        let (r, _) = connect(&server, &t).await;
        assert_eq!(r["ok"]["user"], "alice", "{r}");
    }
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let server = server().await;
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa.key")).unwrap();
    let cases = [
        (
            "wrong key",
            sign(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(&pem("rsa-other.key")).unwrap(),
                good(),
            ),
        ),
        ("alg none", {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(good().to_string())
            )
        }),
        (
            "HS256 signed with the RS public key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&pem("rsa.pub")),
                good(),
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                &rsa,
                claims(
                    json!({"aud": "tidings-test", "iss": "https://auth.example", "nbf": unix_now() + 600}),
                ),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                &rsa,
                claims(json!({"aud": "someone-else", "iss": "https://auth.example"})),
            ),
        ),
        (
            "no audience",
            sign(
                Algorithm::RS256,
                &rsa,
                claims(json!({"iss": "https://auth.example"})),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                &rsa,
                claims(json!({"aud": "tidings-test", "iss": "https://evil.example"})),
            ),
        ),
        ("garbage", "a.b.c".to_string()),
    ];
    for (what, token) in cases {
        let (r, code) = connect(&server, &token).await;
        assert!(r.get("error").is_some(), "{what} was accepted: {r}");
        assert_eq!((error_code(&r), code), (103, Some(3501)), "{what}: {r}");
    }
    let expired = sign(
        Algorithm::RS256,
        &rsa,
        claims(
            json!({"aud": "tidings-test", "iss": "https://auth.example", "exp": unix_now() - 600}),
        ),
    );
    let (r, code) = connect(&server, &expired).await;
    assert_eq!((error_code(&r), code), (106, Some(3005)), "expired: {r}");
}

#[tokio::test]
async fn a_channels_claim_subscribes_at_connect() {
    let server = server().await;
    let mut c = good();
    c["channels"] = json!(["news", "chat:room"]);
    let token = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(&pem("ed.key")).unwrap(),
        c,
    );
    let (r, _) = connect(&server, &token).await;
    let subscribed: Vec<_> = r["ok"]["subscribed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["channel"].clone())
        .collect();
    assert_eq!(subscribed, [json!("news"), json!("chat:room")], "{r}");
    assert!(r["ok"]["subscribed"][1]["ok"].is_object(), "{r}");
}

#[tokio::test]
async fn a_public_key_that_is_not_one_stops_startup() {
    let mut c = config();
    c.auth.token_public_keys = vec![key("rsa.key").with_file_name("missing.pem")];
    let err = tidings_server::Server::start(c)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

fn channel_token(user: &str, channel: &str, exp_in: i64) -> String {
    let exp = (unix_now() as i64 + exp_in) as u64;
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        json!({"sub": user, "channel": channel, "exp": exp}),
    )
}

async fn private_server() -> tidings_server::Server {
    use tidings_server::config::{ClientAccess, ClientPublish, NamespaceOptions, SubscribeRule};
    let mut c = config();
    c.namespaces.insert(
        "private".into(),
        NamespaceOptions {
            subscribe: Some(SubscribeRule::Token),
            client_publish: ClientPublish::Any,
            presence: true,
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "sealed".into(),
        NamespaceOptions {
            history: ClientAccess::None,
            presence: true,
            presence_access: ClientAccess::None,
            client_publish: ClientPublish::Any,
            anonymous: true,
            ..Default::default()
        },
    );
    start_with(c).await
}

#[tokio::test]
async fn private_channels_need_the_right_channel_token() {
    let server = private_server().await;
    let mut a = Raw::connect(&server, Some("alice")).await;
    let sub = |token: Option<String>| {
        let mut cmd = json!({"op": "subscribe", "channel": "private:plans"});
        if let Some(t) = token {
            cmd["token"] = json!(t);
        }
        cmd
    };
    // Without, with one for another channel, for another user, expired, signed wrong.
    assert_eq!(error_code(&a.call(sub(None)).await), 103);
    assert_eq!(
        error_code(
            &a.call(sub(Some(channel_token("alice", "private:other", 60))))
                .await
        ),
        103
    );
    assert_eq!(
        error_code(
            &a.call(sub(Some(channel_token("bob", "private:plans", 60))))
                .await
        ),
        103
    );
    assert_eq!(
        error_code(
            &a.call(sub(Some(channel_token("alice", "private:plans", -600))))
                .await
        ),
        106
    );
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret"),
        json!({"sub": "alice", "channel": "private:plans", "exp": unix_now() + 60}),
    );
    assert_eq!(error_code(&a.call(sub(Some(forged))).await), 103);
    // Reading and publishing need the subscription too.
    let r = a
        .call(json!({"op": "history", "channel": "private:plans"}))
        .await;
    assert_eq!(error_code(&r), 103);
    let r = a
        .call(json!({"op": "publish", "channel": "private:plans", "data": 1}))
        .await;
    assert_eq!(error_code(&r), 103);
    // The right token.
    let r = a
        .call(sub(Some(channel_token("alice", "private:plans", 60))))
        .await;
    assert!(r.get("ok").is_some(), "{r}");
    let r = a
        .call(json!({"op": "publish", "channel": "private:plans", "data": 1}))
        .await;
    assert_eq!(r["ok"]["offset"], 1, "{r}");
    let r = a
        .call(json!({"op": "history", "channel": "private:plans"}))
        .await;
    assert!(r.get("ok").is_some(), "{r}");
}

#[tokio::test]
async fn history_and_presence_can_be_for_the_api_only() {
    let server = private_server().await;
    let mut a = Raw::connect(&server, None).await;
    a.call(json!({"op": "subscribe", "channel": "sealed:x"}))
        .await;
    a.call(json!({"op": "publish", "channel": "sealed:x", "data": 1}))
        .await;
    for op in ["history", "presence", "presence_stats"] {
        let r = a.call(json!({"op": op, "channel": "sealed:x"})).await;
        assert_eq!(error_code(&r), 103, "{op}: {r}");
    }
    let (status, h) = api(&server, "history", json!({"channel": "sealed:x"})).await;
    assert_eq!(
        (status, h["publications"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let (status, p) = api(&server, "presence_stats", json!({"channel": "sealed:x"})).await;
    assert_eq!((status, p["clients"].as_u64()), (200, Some(1)));
}

#[tokio::test]
async fn browser_origins_are_checked_for_websocket_and_sse() {
    let mut c = config();
    c.allowed_origins = vec!["https://app.example".into()];
    let server = start_with(c).await;
    let addr = server.local_addr();
    let http = reqwest::Client::new();
    let ws = |origin: Option<String>| {
        let mut req = http
            .get(format!("http://{addr}/v1/ws"))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        req.send()
    };
    let sse = |origin: Option<String>| {
        let mut req = http.get(format!("http://{addr}/v1/sse?channel=news"));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        req.send()
    };
    for (origin, allowed) in [
        (None, true),
        (Some("https://app.example".to_string()), true),
        (Some(format!("http://{addr}")), true),
        (Some("https://evil.example".to_string()), false),
        (Some("http://localhost:3000".to_string()), false),
    ] {
        let ws_status = ws(origin.clone()).await.unwrap().status().as_u16();
        let sse_status = sse(origin.clone()).await.unwrap().status().as_u16();
        if allowed {
            assert_eq!((ws_status, sse_status), (101, 200), "{origin:?}");
        } else {
            assert_eq!((ws_status, sse_status), (403, 403), "{origin:?}");
        }
    }
}

#[tokio::test]
async fn a_publish_only_api_key_cannot_disconnect() {
    use tidings_server::auth::ApiScope;
    use tidings_server::config::ApiKeyConfig;
    let mut c = config();
    c.auth.api_keys.push(ApiKeyConfig::Named {
        name: "pusher".into(),
        key: "pusher-key-1".into(),
        scope: ApiScope::Publish,
    });
    let server = start_with(c).await;
    let http = reqwest::Client::new();
    let call = |key: &'static str, method: &'static str, body: Value| {
        http.post(format!("http://{}/v1/api/{method}", server.local_addr()))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let r = call(
        "pusher-key-1",
        "publish",
        json!({"channel": "news", "data": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(
        "pusher-key-1",
        "broadcast",
        json!({"channels": ["news"], "data": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = call("pusher-key-1", "disconnect", json!({"user": "alice"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 103);
    let r = call("pusher-key-1", "history", json!({"channel": "news"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = call(API_KEY, "disconnect", json!({"user": "alice"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the full-scope key may");
    let r = call(
        "wrong-key-123",
        "publish",
        json!({"channel": "news", "data": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_channel_token_is_not_a_connection_token() {
    let server = private_server().await;
    let (r, code) = connect(&server, &channel_token("alice", "private:plans", 60)).await;
    assert_eq!((error_code(&r), code), (103, Some(3501)), "{r}");
}

/// A WebSocket handshake from `source` (a loopback address); the HTTP status.
async fn upgrade_from(
    server: &tidings_server::Server,
    source: &str,
) -> (u16, Option<tokio::net::TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut tcp = sock.connect(server.local_addr()).await.unwrap();
    tcp.write_all(
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            server.local_addr()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let n = tcp.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, Some(tcp))
}

#[tokio::test]
async fn connections_per_ip_are_limited_while_another_ip_connects() {
    let mut c = config();
    c.client.max_connections_per_ip = 3;
    let server = start_with(c).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (status, tcp) = upgrade_from(&server, "127.0.0.1").await;
        assert_eq!(status, 101);
        held.push(tcp);
    }
    let (status, _) = upgrade_from(&server, "127.0.0.1").await;
    assert_eq!(status, 503, "a fourth from the same address");
    let (status, _other) = upgrade_from(&server, "127.0.0.2").await;
    assert_eq!(status, 101, "another address still connects");
    let sse = reqwest::get(format!(
        "http://{}/v1/sse?channel=news",
        server.local_addr()
    ))
    .await
    .unwrap();
    assert_eq!(
        sse.status(),
        503,
        "an SSE stream counts against the address too"
    );
    // Every socket from the address counts, plain requests included.
    let health = reqwest::get(format!("http://{}/health", server.local_addr()))
        .await
        .unwrap();
    assert_eq!(health.status(), 503, "a plain request counts too");
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let text = other
        .get(format!("http://{}/metrics", server.local_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("tidings_limit_rejections_total{limit=\"ip\"} 3"),
        "{text}"
    );
    // A closed connection frees its slot.
    held.pop();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, _) = upgrade_from(&server, "127.0.0.1").await;
    assert_eq!(status, 101);
}

#[tokio::test]
async fn connections_per_user_are_limited() {
    let mut c = config();
    c.client.max_connections_per_user = 2;
    let server = start_with(c).await;
    let _a1 = Raw::connect(&server, Some("alice")).await;
    let _a2 = Raw::connect(&server, Some("alice")).await;
    let mut a3 = Raw::open(&server).await;
    let r = a3
        .call(json!({"op": "connect", "token": token("alice")}))
        .await;
    assert_eq!(error_code(&r), 104);
    assert_eq!(a3.expect_disconnect().await["code"], 3503);
    let _b = Raw::connect(&server, Some("bob")).await;
    drop(_a1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _a4 = Raw::connect(&server, Some("alice")).await;
}

#[tokio::test]
async fn a_connect_storm_is_slowed_with_retry_after() {
    let mut c = config();
    c.client.new_connections_per_second = 5;
    let server = start_with(c).await;
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for _ in 0..20 {
        let (status, tcp) = upgrade_from(&server, "127.0.0.1").await;
        statuses.push(status);
        held.push(tcp);
    }
    assert!(statuses[..5].iter().all(|s| *s == 101), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    let refused = reqwest::Client::new()
        .get(format!("http://{}/v1/ws", server.local_addr()))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
}

#[tokio::test]
async fn a_command_flood_is_limited_while_others_are_served() {
    let mut c = config();
    c.client.max_commands_per_second = 50;
    let server = start_with(c).await;
    let mut calm = Raw::connect(&server, None).await;
    calm.call(json!({"op": "subscribe", "channel": "news"}))
        .await;
    let mut flooder = Raw::connect(&server, None).await;
    // 300 commands in one frame: the burst passes, then 105, then the door.
    let frame: Vec<String> = (1..=300)
        .map(|i| json!({"id": 1000 + i, "op": "history", "channel": "news"}).to_string())
        .collect();
    flooder.send_text(frame.join("\n")).await;
    let mut ok = 0;
    let mut limited = 0;
    let disconnect = loop {
        let m = flooder.next().await.expect("a disconnect before the close");
        if m["push"] == "disconnect" {
            break m;
        }
        if m.get("ok").is_some() {
            ok += 1;
        } else if m["error"]["code"] == 105 {
            limited += 1;
        }
    };
    assert!((45..=55).contains(&ok), "about the burst passes: {ok}");
    assert!(limited >= 40, "{limited} refused with 105");
    assert_eq!(
        (disconnect["code"].as_u64(), disconnect["reason"].as_str()),
        (Some(3500), Some("command flood"))
    );
    // The calm connection is served all along.
    api(
        &server,
        "publish",
        json!({"channel": "news", "data": "still here"}),
    )
    .await;
    let m = calm.next_non_ping().await.unwrap();
    assert_eq!(m["data"], "still here");
}

#[tokio::test]
async fn keys_from_a_jwks_file_are_used_and_refreshed() {
    use base64::Engine as _;
    // The Ed25519 public key: the last 32 bytes of its SubjectPublicKeyInfo.
    let pem_text = String::from_utf8(pem("ed.pub")).unwrap();
    let body: String = pem_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let set =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]});
    std::fs::write(&jwks, set.to_string()).unwrap();
    let mut c = config();
    c.auth.token_jwks = Some(jwks.clone());
    c.auth.token_jwks_refresh = std::time::Duration::from_millis(200);
    let server = start_with(c).await;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(json!({})),
        &EncodingKey::from_ed_pem(&pem("ed.key")).unwrap(),
    )
    .unwrap();
    let (r, _) = connect(&server, &token).await;
    assert_eq!(r["ok"]["user"], "alice", "{r}");
    // The key leaves the set: after a refresh, its tokens are refused.
    std::fs::write(&jwks, json!({"keys": []}).to_string()).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (r, code) = loop {
        let (r, code) = connect(&server, &token).await;
        if r.get("error").is_some() || tokio::time::Instant::now() > deadline {
            break (r, code);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((error_code(&r), code), (103, Some(3501)), "{r}");
}

#[tokio::test]
async fn a_subscription_ends_when_its_channel_token_expires_unless_refreshed() {
    let server = private_server().await;
    let mut a = Raw::connect(&server, Some("alice")).await;
    // Expired 3 s ago: still accepted for the 5 s leeway, so both end in ~2 s.
    for channel in ["private:short", "private:renewed"] {
        let r = a
            .call(json!({"op": "subscribe", "channel": channel, "token": channel_token("alice", channel, -3)}))
            .await;
        assert!(r.get("ok").is_some(), "{r}");
    }
    let r = a
        .call(json!({"op": "refresh", "channel": "private:renewed", "token": channel_token("alice", "private:renewed", 600)}))
        .await;
    assert!(
        r["ok"]["expires_in"].as_u64().is_some_and(|s| s > 500),
        "{r}"
    );
    // Refreshing what is not subscribed, or with another channel's token, is refused.
    let r = a
        .call(json!({"op": "refresh", "channel": "private:other", "token": channel_token("alice", "private:other", 600)}))
        .await;
    assert_eq!(error_code(&r), 108, "{r}");
    let r = a
        .call(json!({"op": "refresh", "channel": "private:renewed", "token": channel_token("alice", "private:other", 600)}))
        .await;
    assert_eq!(error_code(&r), 103, "{r}");

    let m = a.next_non_ping().await.expect("an unsub push");
    assert_eq!(
        (
            m["push"].as_str(),
            m["channel"].as_str(),
            m["code"].as_u64()
        ),
        (Some("unsub"), Some("private:short"), Some(3005)),
        "{m}"
    );
    // The expired one receives nothing more; the refreshed one does.
    for channel in ["private:short", "private:renewed"] {
        let (status, _) = api(
            &server,
            "publish",
            json!({"channel": channel, "data": channel}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let m = a.next_non_ping().await.expect("a publication");
    assert_eq!(
        (m["push"].as_str(), m["channel"].as_str()),
        (Some("pub"), Some("private:renewed")),
        "{m}"
    );
    assert!(
        a.next_within(std::time::Duration::from_millis(300))
            .await
            .is_err(),
        "nothing else arrives"
    );
}
