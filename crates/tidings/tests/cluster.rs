//! A node killed with SIGKILL under publish load: its WebSocket client
//! resumes on another node with `since`, its SSE and long-poll clients with
//! the same position vector, and each ends with every publication once; its presence entries end with a `leave`
//! within the lease; `info` stops listing it. The SSE client sends its
//! presence heartbeats to another node than its stream's, which passes
//! them on.

#[allow(dead_code)]
#[path = "../../server/tests/common/redis.rs"]
mod redis;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_websockets::{ClientBuilder, Message};

const BIN: &str = env!("CARGO_BIN_EXE_tidings");
const KEY: &str = "cluster-api-key";
const SECRET: &str = "cluster-secret";

struct Node {
    child: Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(redis: &redis::Redis, dir: &std::path::Path, i: usize) -> Node {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.join(format!("node-{i}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:{port}"
node_name = "node-{i}"
presence_ttl = "2s"
[auth]
token_secret = "{SECRET}"
api_keys = ["{KEY}"]
[engine]
type = "redis"
[engine.redis]
urls = ["{}"]
position_check = "300ms"
[namespaces.chat]
history_size = 1000
presence = true
join_leave = true
"#,
            redis.url()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env_remove("TIDINGS_LISTEN")
        .env_remove("TIDINGS_API_KEYS")
        .env_remove("TIDINGS_TOKEN_SECRET")
        .env_remove("TIDINGS_ENGINE")
        .env_remove("TIDINGS_REDIS_URLS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "node {i} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Node { child, addr }
}

async fn api(http: &reqwest::Client, addr: &str, method: &str, body: Value) -> Value {
    let res = http
        .post(format!("http://{addr}/v1/api/{method}"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("api answers");
    assert!(res.status().is_success(), "{method}: {}", res.status());
    res.json().await.unwrap()
}

/// An SSE stream: offsets of `pub` events, the last `id:`, leaves seen,
/// and the presence lease of the last stream opened.
#[derive(Default)]
struct SseState {
    offsets: Vec<u64>,
    last_id: Option<String>,
    leaves: Vec<String>,
    lease: Option<(String, u64)>,
    buf: String,
}

impl SseState {
    fn feed(&mut self, chunk: &[u8]) {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = ("", None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = match v {
                        "pub" => "pub",
                        "leave" => "leave",
                        "connected" => "connected",
                        _ => "",
                    };
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str::<Value>(v).ok();
                }
            }
            if let Some(id) = id {
                self.last_id = Some(id);
            }
            match (event, data) {
                ("pub", Some(d)) => self.offsets.push(d["offset"].as_u64().unwrap()),
                ("leave", Some(d)) => self
                    .leaves
                    .push(d["info"]["client"].as_str().unwrap_or_default().into()),
                ("connected", Some(d)) => {
                    self.lease = d["lease"]
                        .as_str()
                        .zip(d["heartbeat_ms"].as_u64())
                        .map(|(l, ms)| (l.to_string(), ms));
                }
                _ => {}
            }
        }
    }
}

/// A WebSocket client: connected, subscribed to `chat:live` (from `since`);
/// the offsets it received and the channel's epoch.
struct WsClient {
    ws: tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<tokio::net::TcpStream>>,
    offsets: Vec<u64>,
    epoch: String,
}

impl WsClient {
    async fn open(addr: &str, token: &str, since: Option<(u64, &str)>) -> WsClient {
        let uri = format!("ws://{addr}/v1/ws").parse().unwrap();
        let (mut ws, _) = ClientBuilder::from_uri(uri)
            .connect()
            .await
            .expect("ws connects");
        let mut sub = json!({"id": 2, "op": "subscribe", "channel": "chat:live"});
        if let Some((offset, epoch)) = since {
            sub["since"] = json!({"offset": offset, "epoch": epoch});
        }
        let frame = format!(
            "{}\n{sub}",
            json!({"id": 1, "op": "connect", "token": token})
        );
        ws.send(Message::text(frame)).await.unwrap();
        let mut client = WsClient {
            ws,
            offsets: Vec::new(),
            epoch: String::new(),
        };
        while client.epoch.is_empty() {
            client.read(Duration::from_secs(10)).await;
        }
        client
    }

    /// Reads one frame (its messages), at most `t`.
    async fn read(&mut self, t: Duration) {
        let Ok(Some(Ok(frame))) = tokio::time::timeout(t, self.ws.next()).await else {
            return;
        };
        let Some(text) = frame.as_text() else {
            return;
        };
        for line in text.lines() {
            let m: Value = serde_json::from_str(line).unwrap();
            if m["id"] == 2 {
                let ok = &m["ok"];
                assert!(ok.is_object(), "subscribed: {m}");
                assert_ne!(ok["recovered"], false, "recovered: {m}");
                self.epoch = ok["epoch"].as_str().unwrap().to_string();
                for p in ok["publications"].as_array().into_iter().flatten() {
                    self.offsets.push(p["offset"].as_u64().unwrap());
                }
            } else if m["push"] == "pub" {
                self.offsets.push(m["offset"].as_u64().unwrap());
            }
        }
    }
}

/// Sends the presence heartbeats of `lease` to the node at `addr`, every
/// `every_ms`, for at most two minutes.
fn heartbeats(
    http: &reqwest::Client,
    addr: &str,
    (lease, every_ms): (String, u64),
) -> tokio::task::JoinHandle<()> {
    let (http, url) = (http.clone(), format!("http://{addr}/v1/client/heartbeat"));
    tokio::spawn(async move {
        for _ in 0..(120_000 / every_ms.max(1)) {
            let _ = http.post(&url).json(&json!({"lease": lease})).send().await;
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
        }
    })
}

async fn open_sse(
    http: &reqwest::Client,
    addr: &str,
    token: &str,
    last_id: Option<&str>,
) -> reqwest::Response {
    let mut req = http.get(format!(
        "http://{addr}/v1/sse?channel=chat:live&token={token}"
    ));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let res = req.send().await.expect("sse opens");
    assert_eq!(res.status(), 200);
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_websocket_sse_and_long_poll_clients_resume_elsewhere() {
    let redis = redis::Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| start(&redis, dir.path(), i)).collect();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = tidings_server::auth::mint_token(SECRET, "watcher", None, None).unwrap();

    // The three clients start on node 0.
    let mut ws = WsClient::open(&nodes[0].addr, &token, None).await;
    let mut sse = SseState::default();
    let mut stream = open_sse(&http, &nodes[0].addr, &token, None).await;
    while sse.last_id.is_none() {
        sse.feed(&stream.chunk().await.unwrap().expect("opening block"));
    }
    // In presence: heartbeats, through another node.
    let lease = sse.lease.take().expect("a presence lease");
    let beating = heartbeats(&http, &nodes[1].addr, lease);
    let poll = |addr: String, since: Option<String>| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let mut url = format!("http://{addr}/v1/poll?channel=chat:live&timeout=1");
            if let Some(s) = since {
                url.push_str(&format!("&since={s}"));
            }
            let res = http.get(url).bearer_auth(token).send().await.ok()?;
            res.json::<Value>().await.ok()
        }
    };
    let mut position = poll(nodes[0].addr.clone(), None).await.unwrap()["position"]
        .as_str()
        .unwrap()
        .to_string();
    let mut polled = Vec::new();

    // Publications through nodes 1 and 2 while node 0 dies.
    let total = 200u64;
    let publisher = {
        let (http, a, b) = (http.clone(), nodes[1].addr.clone(), nodes[2].addr.clone());
        tokio::spawn(async move {
            for n in 1..=total {
                let addr = if n % 2 == 0 { &a } else { &b };
                let r = api(
                    &http,
                    addr,
                    "publish",
                    json!({"channel": "chat:live", "data": n}),
                )
                .await;
                assert_eq!(r["offset"], n);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // Read from node 0 for a while, then kill it mid-stream.
    let until = Instant::now() + Duration::from_millis(250);
    while Instant::now() < until {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(50), stream.chunk()).await
        {
            sse.feed(&chunk);
        }
        ws.read(Duration::from_millis(20)).await;
    }
    if let Some(answer) = poll(nodes[0].addr.clone(), Some(position.clone())).await {
        for e in answer["events"].as_array().unwrap() {
            polled.push(e["offset"].as_u64().unwrap());
        }
        position = answer["position"].as_str().unwrap().to_string();
    }
    let killed = nodes.remove(0);
    drop(killed); // SIGKILL
    drop(stream);
    // The WebSocket client resumes from the last publication it processed.
    let last = ws.offsets.last().copied().unwrap_or(0);
    let mut ws_moved = WsClient::open(&nodes[1].addr, &token, Some((last, &ws.epoch))).await;
    let mut ws_seen = std::mem::take(&mut ws.offsets);

    // The SSE client resumes on node 1 with its last id; long-poll on node 2.
    let mut stream = open_sse(
        &http,
        &nodes[0].addr,
        &token,
        sse.last_id.clone().as_deref(),
    )
    .await;
    beating.abort();
    while sse.lease.is_none() {
        sse.feed(&stream.chunk().await.unwrap().expect("opening block"));
    }
    let lease = sse.lease.take().expect("a presence lease");
    let _beating = heartbeats(&http, &nodes[1].addr, lease);
    publisher.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sse.offsets.last() != Some(&total) && Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(200), stream.chunk()).await
        {
            sse.feed(&chunk);
        }
    }
    while ws_moved.offsets.last() != Some(&total) && Instant::now() < deadline {
        ws_moved.read(Duration::from_millis(200)).await;
    }
    ws_seen.extend(&ws_moved.offsets);
    while polled.last() != Some(&total) && Instant::now() < deadline {
        let answer = poll(nodes[1].addr.clone(), Some(position.clone()))
            .await
            .expect("poll answers");
        for e in answer["events"].as_array().unwrap() {
            polled.push(e["offset"].as_u64().unwrap());
        }
        position = answer["position"].as_str().unwrap().to_string();
    }
    let want: Vec<u64> = (1..=total).collect();
    assert_eq!(ws_seen, want, "WebSocket: every publication once, in order");
    assert_eq!(sse.offsets, want, "SSE: every publication once, in order");
    assert_eq!(polled, want, "long-poll: every publication once, in order");

    // The killed node's SSE presence entry ends with a leave, and `info`
    // stops listing the node.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut names = BTreeSet::new();
    while Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(200), stream.chunk()).await
        {
            sse.feed(&chunk);
        }
        let info = api(&http, &nodes[1].addr, "info", json!({})).await;
        names = info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        if sse.leaves.len() >= 2 && names.len() == 2 {
            break;
        }
    }
    assert_eq!(
        sse.leaves.len(),
        2,
        "two leaves: the killed node's WebSocket and stream"
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["node-1", "node-2"]);
    let presence = api(
        &http,
        &nodes[1].addr,
        "presence",
        json!({"channel": "chat:live"}),
    )
    .await;
    let clients: Vec<&String> = presence["clients"].as_object().unwrap().keys().collect();
    assert_eq!(
        clients.len(),
        2,
        "the resumed WebSocket and stream: {presence}"
    );
    assert!(sse.leaves.iter().all(|gone| !clients.contains(&gone)));
}
