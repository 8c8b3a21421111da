//! WebSocket transport, `GET /v1/ws`, on tokio-websockets (zero-copy
//! payloads, small buffers) over a hyper upgrade.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tidings_protocol::{
    Disconnect, DisconnectCode, Push, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, encode_push,
};
use tokio::time::{Instant, sleep_until};

use super::heartbeat::{Heartbeat, finish_writer};
use super::socket::{self, Incoming, Outgoing};
use crate::node::Node;
use crate::outbox::{Entry, Outbox};
use crate::session::Session;

/// Largest frame the writer builds from a batch; more is sent as several frames.
const MAX_BATCH_FRAME: usize = 64 * 1024;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// How a connection's messages are written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// `tidings.v1.json` (or no subprotocol): JSON text frames.
    Json,
    /// `tidings.v1.msgpack`: MessagePack binary frames.
    MsgPack,
}

/// `GET /v1/ws`: validates the upgrade and hands the socket to a connection task.
pub async fn upgrade(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    // The client's first subprotocol that we speak; offering only others is refused.
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .find(|p| *p == SUBPROTOCOL_JSON || *p == SUBPROTOCOL_MSGPACK)
        .map(|p| {
            if p == SUBPROTOCOL_JSON {
                (SUBPROTOCOL_JSON, Wire::Json)
            } else {
                (SUBPROTOCOL_MSGPACK, Wire::MsgPack)
            }
        });
    let any_offered = req.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL);
    let (protocol, wire) = match offered {
        Some((p, wire)) => (Some(p), wire),
        None if !any_offered => (None, Wire::Json),
        None => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "unsupported subprotocol; this server speaks {SUBPROTOCOL_JSON} and {SUBPROTOCOL_MSGPACK}"
                ),
            )
                .into_response();
        }
    };
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let peer = super::http::peer(&node, "websocket", ip, req.headers());
    let deflate = socket::negotiate(
        req.headers()
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        node.config.deflate_threshold(),
        node.config.client.deflate_context_takeover,
    );
    let agreed = deflate.as_ref().map(|d| d.agreed.clone());
    let task_node = node.clone();
    accept(&node, &mut req, protocol, agreed, move |io| {
        let max = task_node.config.client.max_frame_size;
        // Each library's halves as they are (no boxes, no deflate terms
        // held): this future lives as long as the connection.
        match deflate {
            None => Either::Left(async move {
                let (stream, sink) = socket::plain(io, max);
                run(task_node, stream, sink, peer, wire).await
            }),
            Some(terms) => Either::Right(Box::pin(async move {
                match socket::deflate(io, max, &terms) {
                    Ok((stream, sink)) => run(task_node, stream, sink, peer, wire).await,
                    Err(e) => tracing::warn!(error = %e, "permessage-deflate could not start"),
                }
            })),
        }
    })
}

/// Validates a WebSocket upgrade (origin, version, the new-connection
/// rate), answers it with `protocol` and the `extensions` agreed, and runs
/// `connection` on the socket.
pub(super) fn accept<F, Fut>(
    node: &Node,
    req: &mut Request,
    protocol: Option<&'static str>,
    extensions: Option<String>,
    connection: F,
) -> Response
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let headers = req.headers();
    let is_upgrade = header_has(headers, header::CONNECTION, "upgrade")
        && header_has(headers, header::UPGRADE, "websocket");
    if !super::http::origin_allowed(node, headers) {
        return (StatusCode::FORBIDDEN, "this origin may not connect").into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    if !is_upgrade
        || headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
    {
        return (
            StatusCode::BAD_REQUEST,
            "expected a WebSocket (version 13) upgrade",
        )
            .into_response();
    }
    if !node.take_connect_token() {
        node.metrics.limit_rejected("rate");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many new connections; retry shortly",
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => connection(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    let mut res = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        res = res.header(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    if let Some(e) = extensions {
        res = res.header(header::SEC_WEBSOCKET_EXTENSIONS, e);
    }
    res.body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Runs one connection: a reader loop (commands, pings, expiry, control)
/// and a writer task that drains the outbox.
async fn run<St, Si>(
    node: Arc<Node>,
    mut stream: St,
    sink: Si,
    peer: crate::hooks::Peer,
    wire: Wire,
) where
    St: futures_util::Stream<Item = socket::Read> + Unpin + Send,
    Si: futures_util::Sink<Outgoing, Error = ()> + Unpin + Send + 'static,
{
    let outbox = Arc::new(Outbox::new(node.config.client.outbox_bytes));
    let (mut session, control) = Session::new(node.clone(), outbox.clone());
    session.set_peer(peer);
    node.metrics.connections.inc();
    let mut writer = tokio::spawn(write_loop(node.clone(), outbox.clone(), sink, wire));

    let mut beat = Heartbeat::new(&node);

    // Once the outbox is closing, stop reading: the writer sends the rest.
    while !outbox.is_closed() {
        let expiry = session.next_expiry();
        let wake = beat.wake(expiry);
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Incoming::Data { payload, binary })) => {
                    beat.heard();
                    // Boxed: the command futures are large and only live while one runs,
                    // so idle connections do not carry their space.
                    if binary && wire == Wire::MsgPack {
                        Box::pin(session.handle_msgpack_frame(&payload)).await;
                    } else {
                        Box::pin(session.handle_frame(&payload)).await;
                    }
                }
                Some(Ok(Incoming::Close)) => {
                    // The client ends it: answer its close, no disconnect push.
                    outbox.close(Disconnect { code: 1000, reason: String::new(), reconnect: false, delay_ms: None }, false);
                    break;
                }
                Some(Ok(Incoming::Skip)) => {}
                Some(Err(disconnect)) => {
                    tracing::debug!(client = session.client_id(), reason = %disconnect.reason, "websocket read failed");
                    outbox.close(disconnect, true);
                    break;
                }
                None => break,
            },
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if beat.pong_missed(now) {
                    session.disconnect(DisconnectCode::NO_PONG);
                }
                if expiry.is_some_and(|e| e <= now) {
                    Box::pin(session.expire()).await;
                }
                // A connection that was just closed gets no ping and no renewal.
                if !outbox.is_closed() && beat.ping_due(now) {
                    // A client must send `connect` within one ping interval.
                    if !session.is_connected() {
                        outbox.close(Disconnect { reason: "no connect command in time".into(), ..Disconnect::new(DisconnectCode::BAD_REQUEST, None) }, true);
                    }
                    outbox.push(encode_push(&Push::Ping));
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

/// Drains the outbox into frames: each batch becomes as few frames as it
/// can (JSON messages joined by `\n`; MessagePack values back to back),
/// flushed together.
async fn write_loop<Si>(node: Arc<Node>, outbox: Arc<Outbox>, mut sink: Si, wire: Wire)
where
    Si: futures_util::Sink<Outgoing, Error = ()> + Unpin,
{
    let mut batch: Vec<Entry> = Vec::new();
    let latency = node.metrics.writes("websocket");
    // (payload, binary): MessagePack where it can be; a message that cannot
    // (a JSON string with an unpaired surrogate escape) goes as JSON text,
    // which both SDKs read on either subprotocol: nothing is dropped.
    let encode = |e: Entry| match wire {
        Wire::MsgPack => match e.msgpack() {
            Some(mp) => (mp, true),
            None => (e.bytes, false),
        },
        Wire::Json => (e.bytes, false),
    };
    let frame_of = |(payload, binary): (Bytes, bool)| Outgoing::Data { payload, binary };
    loop {
        let close = outbox.next_batch(&mut batch).await;
        latency.observe(&batch);
        let mut written = 0u64;
        let mut frames = batch.drain(..).map(encode).peekable();
        let mut failed = false;
        while let Some((first, binary)) = frames.next() {
            // JSON messages are joined by `\n`; MessagePack values back to back.
            let separator: &[u8] = if binary { b"" } else { b"\n" };
            let frame = if first.len() >= MAX_BATCH_FRAME
                || frames.peek().is_none_or(|(_, b)| *b != binary)
            {
                first
            } else {
                let mut buf = BytesMut::with_capacity(MAX_BATCH_FRAME.min(first.len() * 8));
                buf.extend_from_slice(&first);
                while let Some((next, _)) =
                    frames.next_if(|(n, b)| *b == binary && buf.len() + n.len() < MAX_BATCH_FRAME)
                {
                    buf.extend_from_slice(separator);
                    buf.extend_from_slice(&next);
                }
                buf.freeze()
            };
            written += frame.len() as u64;
            if sink.feed(frame_of((frame, binary))).await.is_err() {
                failed = true;
                break;
            }
        }
        drop(frames);
        batch.clear();
        if failed || sink.flush().await.is_err() {
            return;
        }
        node.metrics.bytes_out.inc_by(written);
        if let Some(close) = close {
            if close.disconnect.code == DisconnectCode::SLOW_CONSUMER.0 {
                tracing::info!("closing a slow consumer");
            }
            let d = close.disconnect;
            // Codes below 3000 answer the client's own close: no push.
            if d.code >= 3000 {
                let push = encode(Entry::control(encode_push(&Push::Disconnect(d.clone()))));
                let _ = sink.feed(frame_of(push)).await;
            }
            let reason = super::close_reason(&d.reason).to_string();
            let _ = sink.feed(Outgoing::Close(d.code, reason)).await;
            let _ = sink.flush().await;
            let _ = sink.close().await;
            return;
        }
    }
}
