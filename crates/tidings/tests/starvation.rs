//! Sockets that never finish a request, a node at its connection cap, and
//! a flood of large publications into fresh channels,
//! against the real binary with its open-file limit lowered (so a few
//! hundred sockets exhaust it): the server closes what idles, keeps other
//! addresses served, and always answers `/health`, `/metrics` and the API.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, Message};

const BIN: &str = env!("CARGO_BIN_EXE_tidings");
const KEY: &str = "starvation-api-key";

struct Node {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with `nofile` as its open-file limit (soft and hard)
/// and `extra` at the end of its configuration.
fn start(nofile: u64, extra: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("tidings.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:{port}"
data_dir = "{}"
[auth]
token_secret = "starvation-secret"
api_keys = ["{KEY}"]
[channels]
anonymous = true
{extra}
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--config", path.to_str().unwrap()])
        .env_remove("TIDINGS_LISTEN")
        .env_remove("TIDINGS_API_KEYS")
        .env_remove("TIDINGS_TOKEN_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            rlimit::setrlimit(rlimit::Resource::NOFILE, nofile, nofile)
        });
    }
    let child = cmd.spawn().expect("binary starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Node {
        child,
        addr,
        _dir: dir,
    }
}

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// An HTTP client whose connections come from `from`.
fn http_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(Some(from.parse().unwrap()))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

type Ws = tokio_websockets::WebSocketStream<TcpStream>;

/// A WebSocket from `from`, connected and subscribed to `channel`; None
/// when the server refused the upgrade.
async fn subscriber(from: &str, to: SocketAddr, channel: &str) -> Option<Ws> {
    let tcp = tcp_from(from, to).await.ok()?;
    let uri = format!("ws://{to}/v1/ws").parse().unwrap();
    let (mut ws, _) = ClientBuilder::from_uri(uri).connect_on(tcp).await.ok()?;
    for cmd in [
        json!({"id": 1, "op": "connect"}),
        json!({"id": 2, "op": "subscribe", "channel": channel}),
    ] {
        ws.send(Message::text(cmd.to_string())).await.ok()?;
        let id = cmd["id"].clone();
        loop {
            let m = next_json(&mut ws).await?;
            if m["id"] == id {
                assert!(m.get("ok").is_some(), "{m}");
                break;
            }
        }
    }
    Some(ws)
}

/// The next JSON message (one per frame here), within 10 s.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
            .ok()?;
        if let Some(text) = msg.as_text() {
            let v: Value = serde_json::from_str(text.lines().next()?).ok()?;
            if v["push"] != "ping" {
                return Some(v);
            }
        }
    }
}

async fn publish(http: &reqwest::Client, addr: SocketAddr, channel: &str, data: Value) -> u16 {
    http.post(format!("http://{addr}/v1/api/publish"))
        .bearer_auth(KEY)
        .json(&json!({"channel": channel, "data": data}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn metric(http: &reqwest::Client, addr: SocketAddr, line: &str) -> f64 {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Opens sockets from 127.0.0.1 that send half a request and wait, again
/// and again until `until`; returns how long the longest one was held
/// open by the server, and how many were opened.
async fn slowloris(addr: SocketAddr, sockets: usize, until: Instant) -> (Duration, usize) {
    let tasks: Vec<_> = (0..sockets)
        .map(|_| {
            tokio::spawn(async move {
                let (mut longest, mut opened) = (Duration::ZERO, 0);
                // Bounded in count as well as time.
                for _ in 0..50 {
                    if Instant::now() >= until {
                        break;
                    }
                    let Ok(mut tcp) = tcp_from("127.0.0.1", addr).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    opened += 1;
                    let t0 = Instant::now();
                    let _ = tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
                    let mut buf = [0u8; 512];
                    // Held until the server closes it (or 20 s, a failure).
                    let end = tokio::time::timeout(Duration::from_secs(20), async {
                        loop {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    })
                    .await;
                    assert!(end.is_ok(), "a half-sent request was held over 20 s");
                    longest = longest.max(t0.elapsed());
                }
                (longest, opened)
            })
        })
        .collect();
    let mut result = (Duration::ZERO, 0);
    for t in tasks {
        let (longest, opened) = t.await.expect("slowloris task");
        result = (result.0.max(longest), result.1 + opened);
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_other_addresses_keep_being_served() {
    // 256 descriptors: 224 sockets, 16 of them for the reserve.
    let node = start(
        256,
        "[client]\nheader_timeout = \"1s\"\nmax_connections_per_ip = 100\nreserved_fds = 32",
    );
    let addr = node.addr;
    let ops = http_from("127.0.0.3");
    let mut watcher = subscriber("127.0.0.2", addr, "news")
        .await
        .expect("a subscriber before the attack");

    // 300 sockets at a time from one address, for 6 s: more than the
    // process has descriptors for.
    let until = Instant::now() + Duration::from_secs(6);
    let attack = tokio::spawn(slowloris(addr, 300, until));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Throughout, another address connects, subscribes and receives.
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let mut late = subscriber("127.0.0.2", addr, "news")
            .await
            .unwrap_or_else(|| panic!("a new subscriber from another address, round {n}"));
        assert_eq!(publish(&ops, addr, "news", json!(n)).await, 200);
        for ws in [&mut watcher, &mut late] {
            let m = next_json(ws).await.expect("the publication arrives");
            assert_eq!(
                (m["push"].as_str(), m["data"].as_i64()),
                (Some("pub"), Some(n))
            );
        }
        let health = ops.get(format!("http://{addr}/health")).send().await;
        assert_eq!(health.map(|r| r.status().as_u16()).ok(), Some(200));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (longest, opened) = attack.await.expect("attack");
    assert!(opened >= 300, "the attack ran: {opened} sockets");
    assert!(
        longest < Duration::from_secs(4),
        "half-sent requests are closed within the header timeout (1 s; longest held {longest:?})"
    );
    assert!(n >= 5, "rounds of the other address: {n}");
    let timeouts = metric(&ops, addr, "tidings_request_timeouts_total").await;
    let refused = metric(&ops, addr, "tidings_limit_rejections_total{limit=\"ip\"}").await;
    assert!(timeouts >= 100.0, "closed for a late head: {timeouts}");
    assert!(refused > 0.0, "refused past the address's limit: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_health_metrics_and_the_api_still_answer() {
    let node = start(200, "[client]\nmax_connections = 40\nreserved_fds = 64");
    let addr = node.addr;
    let mut subs = Vec::new();
    for i in 0..40 {
        let ws = subscriber("127.0.0.1", addr, "room")
            .await
            .unwrap_or_else(|| panic!("subscriber {i} within the cap"));
        subs.push(ws);
    }
    // The 41st client is refused with a 503 from the reserve...
    let tcp = tcp_from("127.0.0.1", addr).await.expect("tcp");
    let uri = format!("ws://{addr}/v1/ws").parse().unwrap();
    let refused = ClientBuilder::from_uri(uri).connect_on(tcp).await;
    assert!(refused.is_err(), "no 41st WebSocket");
    let http = http_from("127.0.0.1");
    let sse = http
        .get(format!("http://{addr}/v1/sse?channel=room"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(sse.status(), 503, "no SSE stream past the cap either");
    // ...while operators and the backend are still served.
    for path in ["/health", "/metrics"] {
        let r = http.get(format!("http://{addr}{path}")).send().await;
        assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200), "{path}");
    }
    assert_eq!(publish(&http, addr, "room", json!("still here")).await, 200);
    for ws in &mut subs {
        let m = next_json(ws).await.expect("the publication arrives");
        assert_eq!(m["data"], "still here");
    }
    let open = metric(&http, addr, "tidings_sockets").await;
    assert!(open >= 40.0, "sockets counted: {open}");
    // A closed connection frees its place.
    subs.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if subscriber("127.0.0.1", addr, "room").await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "a freed place is taken again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Publishes `data` into `channel` over `ws`; the reply.
async fn ws_publish(ws: &mut Ws, id: u32, channel: &str, data: &str) -> Value {
    let cmd = json!({"id": id, "op": "publish", "channel": channel, "data": data});
    ws.send(Message::text(cmd.to_string())).await.expect("send");
    loop {
        let m = next_json(ws).await.expect("a reply");
        if m["id"] == id {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_into_fresh_channels_stops_at_the_bounds() {
    const BOUND: u64 = 32 * 1024 * 1024;
    let node = start(
        1024,
        "client_publish = \"any\"\n[engine.memory]\nmax_channels = 300\nhistory_max_bytes = 33554432",
    );
    let addr = node.addr;
    let http = http_from("127.0.0.1");
    let mut ws = subscriber("127.0.0.1", addr, "watch")
        .await
        .expect("a client");
    // Warm up (allocator arenas, buffers), then measure.
    for i in 0..20 {
        assert_eq!(publish(&http, addr, "warm", json!(i)).await, 200);
    }
    let before = rss(node.child.id());
    let blob = "z".repeat(64_000);

    // 2,000 publications of 64 KB, each into a new channel, from one
    // anonymous connection: past the channel bound each is refused.
    let (mut accepted, mut refused) = (0u32, 0u32);
    for i in 0..2000u32 {
        let reply = ws_publish(&mut ws, 100 + i, &format!("flood-{i}"), &blob).await;
        if reply.get("ok").is_some() {
            accepted += 1;
        } else {
            assert_eq!(reply["error"]["code"], 104, "{reply}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(message.contains("most channels"), "{reply}");
            refused += 1;
        }
    }
    // The channel bound (two are taken: `watch` and `warm`); each of
    // these channels keeps its publication, so none is forgotten for room.
    assert_eq!(accepted, 298, "accepted until the node kept 300 channels");
    assert_eq!(refused, 1702);
    let counted = metric(
        &http,
        addr,
        "tidings_limit_rejections_total{limit=\"channels\"}",
    )
    .await;
    assert_eq!(counted, 1702.0);

    // 1,500 more into the channels the node keeps (115 MB in all, if
    // nothing bounded it): the node keeps 32 MiB of history, the oldest
    // publications of any channel trimmed first.
    for i in 0..1500u32 {
        let reply = ws_publish(&mut ws, 5000 + i, &format!("flood-{}", i % 298), &blob).await;
        assert!(
            reply.get("ok").is_some(),
            "publishing is never refused for bytes: {reply}"
        );
    }
    let after = rss(node.child.id());
    let history = |channel: String| {
        let http = http.clone();
        async move {
            http.post(format!("http://{addr}/v1/api/history"))
                .bearer_auth(KEY)
                .json(&json!({"channel": channel}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    // The channel published to last (1,499 % 298 = 9: offsets 1 to 7)
    // keeps its newest; its first, among the oldest of all, went first.
    let newest = history("flood-9".into()).await;
    let offsets: Vec<u64> = newest["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets.last(), Some(&7), "the newest is kept: {offsets:?}");
    assert!(!offsets.contains(&1), "the oldest went first: {offsets:?}");
    let grown = after.saturating_sub(before);
    eprintln!("RSS grew by {} KiB over the flood", grown / 1024);
    assert!(
        grown < BOUND + 32 * 1024 * 1024,
        "memory grew by {} MiB (bound 32 MiB plus overhead)",
        grown / (1024 * 1024)
    );
}
