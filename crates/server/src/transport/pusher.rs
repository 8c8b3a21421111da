//! Pusher protocol 7 over WebSocket, `GET /app/{key}`: pusher-js and the
//! other Pusher clients, on the same channels, sessions and engine as
//! Tidings' own protocol. The connection authorises private and presence
//! channels with the app's signature, then uses the session's typed
//! commands; its writer turns Tidings' pushes into Pusher events (each
//! publication encoded once for every Pusher subscriber).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_protocol::{ClientInfo, Disconnect, DisconnectCode};
use tokio::time::{Instant, sleep_until};
use tokio_websockets::{CloseCode, Limits, Message, ServerBuilder};

use super::heartbeat::{Heartbeat, finish_writer};
use crate::config::WebhookEvent;
use crate::engine::PublishRequest;
use crate::node::Node;
use crate::outbox::{Entry, Outbox};
use crate::pusher::{Held, frame, sign, tidings_channel};
use crate::session::Session;

/// Seconds of silence after which pusher-js pings (sent at connect).
const ACTIVITY_TIMEOUT_S: u64 = 120;
/// Largest client event `data` (Pusher's limit).
const MAX_CLIENT_EVENT: usize = 10 * 1024;

/// `GET /app/{key}?protocol=7`.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    mut req: Request,
) -> Response {
    let app = node.pusher.by_key(&key).cloned();
    let protocol = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "protocol")
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .unwrap_or(7);
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let peer = super::http::peer(&node, "pusher", ip, req.headers());
    let task_node = node.clone();
    super::ws::accept(&node, &mut req, None, None, move |io| async move {
        let ws = ServerBuilder::new()
            .limits(Limits::default().max_payload_len(Some(task_node.config.client.max_frame_size)))
            .serve(io);
        // Pusher's way to refuse: an error, then a close in 4000-4099 (do not retry).
        let held = app.as_ref().and_then(|a| a.hold());
        let refusal = match (&app, protocol, &held) {
            (None, _, _) => Some((4001, format!("App key {key} does not exist"))),
            (_, p, _) if !(5..=7).contains(&p) => {
                Some((4007, format!("Unsupported protocol version {p}")))
            }
            (Some(_), _, None) => Some((4004, "Over connection quota".to_string())),
            _ => None,
        };
        match (held, refusal) {
            (Some(held), None) => run(task_node, ws, held, peer).await,
            (_, Some((code, message))) => {
                let (mut sink, _) = ws.split();
                let _ = sink
                    .send(Message::text(frame::error(Some(code), &message)))
                    .await;
                let close = CloseCode::try_from(code).unwrap_or(CloseCode::POLICY_VIOLATION);
                let _ = sink
                    .send(Message::close(Some(close), super::close_reason(&message)))
                    .await;
            }
            (None, None) => {}
        }
    })
}

type Ws<S> = tokio_websockets::WebSocketStream<S>;

/// The socket id Pusher clients and SDKs see: two numbers (`NODE.CONN`).
fn socket_id(node: &Node, client: &str) -> String {
    // FNV-1a of the node id: stable, and numeric as Pusher's format wants.
    let node_part = node.id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let conn = client.rsplit('-').next().unwrap_or("0");
    format!("{node_part}.{conn}")
}

async fn run<S>(node: Arc<Node>, ws: Ws<S>, app: Held, peer: crate::hooks::Peer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let outbox = Arc::new(Outbox::new(node.config.client.outbox_bytes));
    let (mut session, control) = Session::new(node.clone(), outbox.clone());
    session.set_peer(peer);
    node.metrics.connections.inc();
    let socket = socket_id(&node, session.client_id());
    let me = session.client_id().to_string();
    let mut writer = tokio::spawn(write_loop(
        node.clone(),
        outbox.clone(),
        sink,
        socket.clone(),
        me,
    ));
    // Boxed: opening is a large future that only lives at the start, so
    // idle connections do not carry its space.
    if let Err(e) = Box::pin(session.open_as(String::new(), None)).await {
        session.send_raw(frame::error(Some(4009), &e.message));
        session.close(Disconnect::new(DisconnectCode::CONNECTION_LIMIT, None));
    } else {
        session.send_raw(frame::encode(
            "pusher:connection_established",
            None,
            &json!({ "socket_id": socket, "activity_timeout": ACTIVITY_TIMEOUT_S }),
        ));
    }
    let mut conn = Conn {
        node: node.clone(),
        app,
        socket,
        signed_in: None,
    };
    let mut beat = Heartbeat::new(&node);
    while !outbox.is_closed() {
        let wake = beat.wake(None);
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(msg)) if msg.is_text() => {
                    beat.heard();
                    beat.delay_ping();
                    Box::pin(conn.handle(&mut session, msg.as_payload())).await;
                }
                Some(Ok(msg)) if msg.is_close() => {
                    outbox.close(Disconnect { code: 1000, reason: String::new(), reconnect: false, delay_ms: None }, false);
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if beat.pong_missed(now) {
                    session.disconnect(DisconnectCode::NO_PONG);
                }
                if !outbox.is_closed() && beat.ping_due(now) {
                    session.send_raw(frame::encode("pusher:ping", None, &json!({})));
                }
                if !outbox.is_closed() && beat.renew_due(now) {
                    Box::pin(session.renew_presence()).await;
                    beat.renewed();
                }
            }
            c = control.recv() => Box::pin(session.handle_control(c)).await,
            _ = outbox.closing() => {}
            _ = &mut writer => break,
        }
    }
    Box::pin(session.end()).await;
    finish_writer(&outbox, &mut writer).await;
    node.metrics.connections.dec();
}

/// One Pusher connection's handling of client messages.
struct Conn {
    node: Arc<Node>,
    /// The app, its connection counted while this lives.
    app: Held,
    socket: String,
    /// The user `pusher:signin` made this socket: only theirs is
    /// `#server-to-user-ID` (a presence member id does not sign in).
    signed_in: Option<String>,
}

impl Conn {
    async fn handle(&mut self, session: &mut Session, text: &[u8]) {
        if !session.allow_command() {
            // Pusher's code for a client over its rate.
            return session.send_raw(frame::error(Some(4301), "too many messages; slow down"));
        }
        let msg: frame::Incoming = match serde_json::from_slice(text) {
            Ok(m) => m,
            Err(e) => {
                return session.send_raw(frame::error(None, &format!("malformed message: {e}")));
            }
        };
        match msg.event.as_str() {
            "pusher:ping" => session.send_raw(frame::encode("pusher:pong", None, &json!({}))),
            "pusher:pong" => {}
            "pusher:subscribe" => self.subscribe(session, &msg.data).await,
            "pusher:signin" => self.signin(session, &msg.data).await,
            "pusher:unsubscribe" => {
                if let Some(channel) = msg.data["channel"].as_str()
                    && let Ok(full) = tidings_channel(&self.app, channel)
                {
                    let _ = session.unsubscribe_from(&full).await;
                }
            }
            e if e.starts_with("client-") => self.client_event(session, msg).await,
            other => session.send_raw(frame::error(None, &format!("unsupported event {other:?}"))),
        }
    }

    async fn subscribe(&mut self, session: &mut Session, data: &Value) {
        let Some(channel) = data["channel"].as_str() else {
            return session.send_raw(frame::error(None, "pusher:subscribe needs a channel"));
        };
        let refuse = |status: u16, error: &str| {
            frame::encode(
                "pusher:subscription_error",
                Some(channel),
                &json!({ "type": "AuthError", "error": error, "status": status }),
            )
        };
        let full = match tidings_channel(&self.app, channel) {
            Ok(full) => full,
            Err(e) => return session.send_raw(refuse(400, &e)),
        };
        if let Some(id) = channel.strip_prefix("#server-to-user-")
            && self.signed_in.as_deref() != Some(id)
        {
            return session.send_raw(refuse(403, "sign in as this user first"));
        }
        let presence = channel.starts_with("presence-");
        if presence || channel.starts_with("private-") {
            let auth = data["auth"].as_str().unwrap_or_default();
            let channel_data = data["channel_data"].as_str();
            let signed = presence.then_some(channel_data.unwrap_or_default());
            if !sign::channel_auth_ok(&self.app, &self.socket, channel, signed, auth) {
                return session
                    .send_raw(refuse(401, "invalid signature for this socket and channel"));
            }
            if presence {
                // The member: `user_id` (a string or a number) and `user_info`.
                let member: Option<(String, Option<Box<serde_json::value::RawValue>>)> =
                    channel_data
                        .and_then(|d| serde_json::from_str::<Value>(d).ok())
                        .and_then(|v| {
                            let id = match &v["user_id"] {
                                Value::String(s) if !s.is_empty() => s.clone(),
                                Value::Number(n) => n.to_string(),
                                _ => return None,
                            };
                            let info = v
                                .get("user_info")
                                .and_then(|i| serde_json::value::to_raw_value(i).ok());
                            Some((id, info))
                        });
                let Some((user, info)) = member else {
                    return session.send_raw(refuse(400, "channel_data needs a user_id"));
                };
                if let Err(e) = session.become_user(&user, info).await {
                    return session.send_raw(refuse(403, &e.message));
                }
            }
            session.authorize(&full);
        }
        let result = session
            .subscribe_then(&full, |ok| frame::subscribed(channel, ok, presence))
            .await;
        if let Err(e) = result {
            // Subscribed already is not an error in Pusher.
            if e.code != tidings_protocol::ErrorCode::AlreadySubscribed.code() {
                session.send_raw(refuse(if e.temporary { 503 } else { 403 }, &e.message));
            }
        }
    }

    /// `pusher:signin`: the app's signature makes the connection the user
    /// of `user_data`, who may then subscribe to `#server-to-user-ID`.
    async fn signin(&mut self, session: &mut Session, data: &Value) {
        let auth = data["auth"].as_str().unwrap_or_default();
        let user_data = data["user_data"].as_str().unwrap_or_default();
        if !sign::user_auth_ok(&self.app, &self.socket, user_data, auth) {
            return session.send_raw(frame::error(Some(4009), "signin: invalid signature"));
        }
        let user: Option<(String, Value)> = serde_json::from_str::<Value>(user_data)
            .ok()
            .and_then(|v| Some((v["id"].as_str().filter(|id| !id.is_empty())?.to_string(), v)));
        let Some((id, user_data_value)) = user else {
            return session.send_raw(frame::error(Some(4009), "signin: user_data needs an id"));
        };
        let info = user_data_value
            .get("user_info")
            .and_then(|i| serde_json::value::to_raw_value(i).ok());
        if let Err(e) = session.become_user(&id, info).await {
            return session.send_raw(frame::error(Some(4009), &e.message));
        }
        self.signed_in = Some(id);
        session.send_raw(frame::encode(
            "pusher:signin_success",
            None,
            &json!({ "user_data": user_data }),
        ));
    }

    /// `client-*`: from a subscribed connection, in a private or presence
    /// channel of an app that allows them; every other subscriber gets it.
    async fn client_event(&mut self, session: &mut Session, msg: frame::Incoming) {
        let channel = msg.channel.unwrap_or_default();
        let refuse = |message: &str| session.send_raw(frame::error(None, message));
        if !self.app.client_events {
            return refuse("client events are not enabled for this app");
        }
        let private = channel.starts_with("private-") || channel.starts_with("presence-");
        if !private || channel.starts_with("private-encrypted-") {
            return refuse("client events are only for private and presence channels");
        }
        let Ok(full) = tidings_channel(&self.app, &channel) else {
            return refuse("bad channel name");
        };
        if !session.is_subscribed(&full) {
            return refuse("subscribe to the channel before sending client events");
        }
        let data = match msg.data {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if data.len() > MAX_CLIENT_EVENT {
            return refuse("client event data is larger than 10 KiB");
        }
        let user = session.user().unwrap_or_default().to_string();
        let mut body = json!({ "event": msg.event, "data": data });
        // Pusher names the sender's user in presence channels only.
        let in_presence = channel.starts_with("presence-");
        let told = json!({
            "channel": full,
            "event": msg.event,
            "data": data,
            "socket_id": self.socket,
            "user": (in_presence && !user.is_empty()).then_some(&user),
        });
        if channel.starts_with("presence-") {
            body["user_id"] = json!(user);
        }
        let Ok(data) = serde_json::value::to_raw_value(&body) else {
            return;
        };
        let Ok((_, ns)) = self.node.resolve(&full) else {
            return refuse("unknown channel");
        };
        let request = PublishRequest {
            data,
            // The socket that made it: it does not get it back.
            info: Some(ClientInfo {
                client: self.socket.clone(),
                user,
                info: None,
            }),
            tags: None,
            idempotency_key: None,
            key: None,
            priority: None,
            snapshot: false,
        };
        match crate::session::publish(&self.node, &full, &ns, request).await {
            Ok(_) => self.node.emit(WebhookEvent::ClientEvent, || told),
            Err(e) => refuse(&e.message),
        }
    }
}

/// The close code a Pusher client gets for a Tidings disconnect:
/// 4000–4099 do not reconnect, 4100–4199 reconnect after a while,
/// 4200–4299 reconnect at once.
fn pusher_close(code: u16) -> u16 {
    match code {
        c if c < 3000 => c,
        c if c == DisconnectCode::SLOW_CONSUMER.0 => 4100,
        c if c == DisconnectCode::NO_PONG.0 => 4201,
        c if c >= 3500 => 4009,
        _ => 4200,
    }
}

/// Drains the outbox as Pusher messages, one per frame.
async fn write_loop<S>(
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    mut sink: futures_util::stream::SplitSink<Ws<S>, Message>,
    socket: String,
    me: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut batch: Vec<Entry> = Vec::new();
    let latency = node.metrics.writes("pusher");
    loop {
        let close = outbox.next_batch(&mut batch).await;
        latency.observe(&batch);
        let mut written = 0u64;
        for entry in batch.drain(..) {
            let bytes: Option<Bytes> = match &entry.publication {
                Some(meta) => meta
                    .translated
                    .get_or_init(|| frame::translate_pub(&entry.bytes))
                    .as_ref()
                    .filter(|t| t.from.as_deref() != Some(socket.as_str()))
                    .map(|t| t.bytes.clone()),
                None if frame::is_pusher(&entry.bytes) => Some(entry.bytes),
                None => frame::translate_push(&entry.bytes, &me),
            };
            let Some(bytes) = bytes else { continue };
            written += bytes.len() as u64;
            if sink.feed(Message::text(bytes)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        node.metrics.bytes_out.inc_by(written);
        if let Some(close) = close {
            let d = close.disconnect;
            let code = pusher_close(d.code);
            if code >= 4000 {
                let _ = sink
                    .feed(Message::text(frame::error(Some(code), &d.reason)))
                    .await;
            }
            let close_code = CloseCode::try_from(code).unwrap_or(CloseCode::POLICY_VIOLATION);
            let _ = sink
                .feed(Message::close(
                    Some(close_code),
                    super::close_reason(&d.reason),
                ))
                .await;
            let _ = sink.flush().await;
            let _ = sink.close().await;
            return;
        }
    }
}
