//! Test harness: a real server on 127.0.0.1:0 and a raw WebSocket client.
#![allow(dead_code)]

pub mod receiver;
pub mod redis;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_server::config::{AuthConfig, ClientPublish, Config, NamespaceOptions};
use tidings_server::{Server, auth};
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

pub const SECRET: &str = "test-secret-123";
pub const API_KEY: &str = "test-api-key";

/// A config with a secret, an API key, and a few namespaces:
/// default (anonymous, history 1000, any client may publish), `chat`
/// (authenticated, subscribers publish, presence),
/// `eph` (ephemeral), `small` (history 5).
pub fn config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir(),
        auth: AuthConfig {
            token_secret: Some(SECRET.into()),
            api_keys: vec![API_KEY.into()],
            ..Default::default()
        },
        channels: NamespaceOptions {
            anonymous: true,
            history_size: 1000,
            client_publish: ClientPublish::Any,
            ..Default::default()
        },
        ..Default::default()
    };
    c.namespaces.insert(
        "chat".into(),
        NamespaceOptions {
            history_size: 1000,
            client_publish: ClientPublish::Subscribers,
            anonymous: false,
            presence: true,
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "eph".into(),
        NamespaceOptions {
            history_size: 0,
            client_publish: ClientPublish::Any,
            anonymous: true,
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "small".into(),
        NamespaceOptions {
            history_size: 5,
            client_publish: ClientPublish::Any,
            anonymous: true,
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "api".into(),
        NamespaceOptions {
            client_publish: ClientPublish::None,
            anonymous: true,
            ..Default::default()
        },
    );
    c.shutdown_spread = Duration::from_millis(500);
    c.shutdown_timeout = Duration::from_secs(3);
    c
}

/// A fresh directory for a server's durable history (left in the temp dir).
pub fn data_dir() -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix("tidings-test-")
        .tempdir()
        .expect("temp dir")
        .keep()
}

/// A runtime for a property test's case (proptest bodies are not async).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn start() -> Server {
    start_with(config()).await
}

pub async fn start_with(config: Config) -> Server {
    Server::start(config).await.expect("server starts")
}

pub fn token(user: &str) -> String {
    auth::mint_token(SECRET, user, Some(Duration::from_secs(3600)), None).unwrap()
}

pub fn ws_url(server: &Server) -> String {
    format!("ws://{}/v1/ws", server.local_addr())
}

pub fn api_url(server: &Server, method: &str) -> String {
    format!("http://{}/v1/api/{method}", server.local_addr())
}

/// Calls the server API; returns (status, body).
pub async fn api(server: &Server, method: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(api_url(server, method))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("api request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A raw protocol client: sends JSON, reads messages one by one (splitting
/// frames on `\n`), answers nothing by itself.
pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: std::collections::VecDeque<Value>,
    next_id: u32,
    /// Speaks `tidings.v1.msgpack`: sends and reads MessagePack frames.
    pub msgpack: bool,
}

impl Raw {
    pub async fn open(server: &Server) -> Raw {
        let uri = ws_url(server).parse().unwrap();
        let (ws, _) = ClientBuilder::from_uri(uri)
            .limits(tokio_websockets::Limits::unlimited())
            .connect()
            .await
            .expect("websocket connects");
        Raw {
            ws,
            pending: Default::default(),
            next_id: 0,
            msgpack: false,
        }
    }

    /// Wraps a WebSocket opened some other way (headers, TLS).
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Raw {
        Raw {
            ws,
            pending: Default::default(),
            next_id: 0,
            msgpack: false,
        }
    }

    /// Opens a `tidings.v1.msgpack` connection.
    pub async fn open_msgpack(server: &Server) -> Raw {
        let uri = ws_url(server).parse().unwrap();
        let (ws, res) = ClientBuilder::from_uri(uri)
            .add_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static("tidings.v1.msgpack"),
            )
            .unwrap()
            .limits(tokio_websockets::Limits::unlimited())
            .connect()
            .await
            .expect("websocket connects");
        assert_eq!(
            res.headers()[http::header::SEC_WEBSOCKET_PROTOCOL],
            "tidings.v1.msgpack"
        );
        Raw {
            msgpack: true,
            ..Raw::from_stream(ws)
        }
    }

    /// Opens a `tidings.v1.msgpack` connection and connects.
    pub async fn connect_msgpack(server: &Server, user: Option<&str>) -> Raw {
        Raw::open_msgpack(server).await.connected(user).await
    }

    /// Opens and connects (anonymous when `user` is None).
    pub async fn connect(server: &Server, user: Option<&str>) -> Raw {
        Raw::open(server).await.connected(user).await
    }

    /// Sends `connect` (anonymous when `user` is None) and checks the answer.
    async fn connected(mut self, user: Option<&str>) -> Raw {
        let raw = &mut self;
        let mut cmd = json!({"op": "connect"});
        if let Some(u) = user {
            cmd["token"] = json!(token(u));
        }
        let reply = raw.call(cmd).await;
        assert!(reply.get("ok").is_some(), "connect failed: {reply}");
        self
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        let msg = if self.msgpack {
            let mp = tidings_protocol::msgpack::from_json(text.as_bytes()).expect("JSON");
            Message::binary(mp)
        } else {
            Message::text(text)
        };
        self.ws.send(msg).await.expect("send");
    }

    /// Sends a command, giving it the next id; returns the id.
    pub async fn send(&mut self, mut cmd: Value) -> u32 {
        self.next_id += 1;
        cmd["id"] = json!(self.next_id);
        self.send_text(cmd.to_string()).await;
        self.next_id
    }

    /// Sends a command and waits for its reply (pushes in between are kept).
    pub async fn call(&mut self, cmd: Value) -> Value {
        let id = self.send(cmd).await;
        self.reply(id).await
    }

    /// Waits for the reply with `id`, keeping other messages for `next`.
    pub async fn reply(&mut self, id: u32) -> Value {
        let mut skipped = Vec::new();
        let found = loop {
            let m = self
                .next()
                .await
                .expect("connection open while waiting for a reply");
            if m["id"] == json!(id) && m.get("push").is_none() {
                break m;
            }
            skipped.push(m);
        };
        for m in skipped.into_iter().rev() {
            self.pending.push_front(m);
        }
        found
    }

    /// The next message, or None when the connection closed (10 s timeout panics).
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a message within 10 s")
    }

    /// The next message within `t`: Err on timeout, Ok(None) when closed.
    pub async fn next_within(&mut self, t: Duration) -> Result<Option<Value>, ()> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(Some(m));
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| ())?;
            match msg {
                Some(Ok(m)) if m.is_text() => {
                    let text = m.as_text().unwrap_or_default();
                    for line in text.split('\n').filter(|l| !l.is_empty()) {
                        let v: Value = serde_json::from_str(line).expect("server sends JSON");
                        self.pending.push_back(v);
                    }
                    if let Some(m) = self.pending.pop_front() {
                        return Ok(Some(m));
                    }
                }
                Some(Ok(m)) if m.is_binary() && self.msgpack => {
                    let msgs = tidings_protocol::msgpack::to_json_messages(m.as_payload())
                        .expect("server sends MessagePack");
                    for json in msgs {
                        self.pending
                            .push_back(serde_json::from_slice(&json).unwrap());
                    }
                    if let Some(m) = self.pending.pop_front() {
                        return Ok(Some(m));
                    }
                }
                Some(Ok(m)) if m.is_close() => return Ok(None),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(None),
            }
        }
    }

    /// The next message that is not a ping.
    pub async fn next_non_ping(&mut self) -> Option<Value> {
        loop {
            let m = self.next().await?;
            if m["push"] != "ping" {
                return Some(m);
            }
        }
    }

    /// Reads until the `disconnect` push; returns it (panics if the socket closes without one).
    pub async fn expect_disconnect(&mut self) -> Value {
        loop {
            match self.next().await {
                Some(m) if m["push"] == "disconnect" => return m,
                Some(_) => continue,
                None => panic!("closed without a disconnect push"),
            }
        }
    }

    /// Reads until the socket closes; returns every message seen.
    pub async fn drain_until_closed(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(m) = self.next().await {
            seen.push(m);
        }
        seen
    }
}

/// The code of an error reply, or panics.
pub fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

// ---- Helpers added for api.rs and bad_input.rs ----

/// Calls the server API with full control: `auth` is the whole
/// `Authorization` header (None sends none), `headers` are extra headers and
/// `body` is sent as is. Returns (status, body text).
pub async fn api_raw(
    server: &Server,
    method: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(api_url(server, method))
        .header("content-type", "application/json")
        .body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(Duration::from_secs(30), req.send())
        .await
        .expect("api answers within 30 s")
        .expect("api request");
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// Like [`api`] with extra headers.
pub async fn api_with_headers(
    server: &Server,
    method: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, text) = api_raw(server, method, Some(&auth), headers, body.to_string()).await;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// The value of a metric line (`name` including labels) in `/metrics`, if present.
pub async fn metric(server: &Server, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", server.local_addr()))
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// What a raw client sees next, close frames included.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A JSON message (reply or push).
    Msg(Value),
    /// A close frame with its code (None when the frame had none) and reason.
    Close(Option<u16>, String),
    /// The stream ended or failed without a close frame (e.g. reset).
    Gone(String),
}

impl Raw {
    /// The next message or close within `t` (None on timeout). Unlike
    /// [`Raw::next_within`] it reports the close frame's code.
    pub async fn next_event(&mut self, t: Duration) -> Option<Event> {
        if let Some(m) = self.pending.pop_front() {
            return Some(Event::Msg(m));
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(m)) if m.is_text() => {
                    let text = m.as_text().unwrap_or_default();
                    for line in text.split('\n').filter(|l| !l.is_empty()) {
                        let v: Value = serde_json::from_str(line).expect("server sends JSON");
                        self.pending.push_back(v);
                    }
                    if let Some(m) = self.pending.pop_front() {
                        return Some(Event::Msg(m));
                    }
                }
                Some(Ok(m)) if m.is_close() => {
                    let (code, reason) = m
                        .as_close()
                        .map(|(c, r)| (Some(u16::from(c)), r.to_string()))
                        .unwrap_or((None, String::new()));
                    return Some(Event::Close(code, reason));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(Event::Gone(e.to_string())),
                None => return Some(Event::Gone("end of stream".into())),
            }
        }
    }

    /// Every event until the connection ends (a close frame or the stream's
    /// end), at most `max` events, each within `t`; panics on timeout.
    pub async fn events_until_closed(&mut self, max: usize, t: Duration) -> Vec<Event> {
        let mut seen = Vec::new();
        for _ in 0..max {
            let e = self
                .next_event(t)
                .await
                .unwrap_or_else(|| panic!("no event within {t:?}; seen so far: {seen:?}"));
            let end = !matches!(e, Event::Msg(_));
            seen.push(e);
            if end {
                return seen;
            }
        }
        panic!("connection still open after {max} events: {seen:?}")
    }
}

impl Raw {
    /// Opens a WebSocket with a client `config` (e.g. a larger frame size).
    pub async fn open_with_config(server: &Server, config: tokio_websockets::Config) -> Raw {
        let uri = ws_url(server).parse().unwrap();
        let (ws, _) = ClientBuilder::from_uri(uri)
            .limits(tokio_websockets::Limits::unlimited())
            .config(config)
            .connect()
            .await
            .expect("websocket connects");
        Raw {
            ws,
            pending: Default::default(),
            next_id: 0,
            msgpack: false,
        }
    }
}
