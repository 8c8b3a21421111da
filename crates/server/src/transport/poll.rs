//! Long-polling, `GET /v1/poll?channel=…&since=…&timeout=…`: answers at
//! once when anything is pending after `since`, else holds the request (a
//! parked future: no thread, no busy loop) until something arrives or the
//! timeout passes. Stateless: each answer carries the next position.
//!
//! Being stateless, a poller has no outbox to throttle between requests:
//! in a throttled namespace (`max_rate`) a continuing poll (with `since`)
//! starts one interval after it arrives, and gets the newest value per key
//! of what it missed, as a connected subscriber would.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tidings_protocol::{ErrorBody, ErrorCode};

use super::http::{OpenStream, StreamEvent, StreamRequest};
use crate::api::ApiError;
use crate::delivery::ChannelDelivery;
use crate::node::Node;

/// Default and largest `timeout`, in seconds.
const DEFAULT_TIMEOUT_S: u64 = 25;
const MAX_TIMEOUT_S: u64 = 60;

/// `GET /v1/poll`.
pub async fn handle(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match poll(&node, peer, query.as_deref(), &headers).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn poll(
    node: &Arc<Node>,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Bytes, ApiError> {
    let req = StreamRequest {
        peer: super::http::peer(node, "http_poll", Some(peer.ip()), headers),
        ..StreamRequest::parse(query, headers)?
    };
    let timeout = match req.timeout.as_deref() {
        None => DEFAULT_TIMEOUT_S,
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|t| *t <= MAX_TIMEOUT_S)
            .ok_or_else(|| {
                ApiError(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("`timeout` is whole seconds, at most {MAX_TIMEOUT_S}"),
                ))
            })?,
    };
    if req.since.is_some() {
        let interval = req
            .channels
            .iter()
            .filter_map(|c| node.resolve(c).ok())
            .filter_map(|(_, ns)| ChannelDelivery::of(&ns).interval)
            .max();
        if let Some(interval) = interval {
            tokio::time::sleep(interval.min(Duration::from_secs(timeout))).await;
        }
    }
    let (mut open, _, mut events) = OpenStream::open(node, &req, true).await?;
    if req.since.is_some() && events.is_empty() && timeout > 0 {
        // Anonymous clients are counted by address, not as one user.
        let user = match open.session.as_ref().and_then(|s| s.user()) {
            Some(user) if !user.is_empty() => user.to_string(),
            _ => format!("anonymous@{}", peer.ip()),
        };
        let Some(_held) = node.hold_poll(&user) else {
            open.end().await;
            return Err(ApiError(ErrorBody::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} long-polls per user at once",
                    node.config.client.max_polls_per_user
                ),
            )));
        };
        let mut batch = Vec::new();
        let wait = open.outbox.next_batch(&mut batch);
        let _ = tokio::time::timeout(Duration::from_secs(timeout), wait).await;
        node.metrics.writes("http_poll").observe(&batch);
        events.extend(batch.into_iter().filter_map(|m| open.on_push(m)));
    }
    let position = open.vector();
    open.end().await;
    Ok(answer(&events, &position))
}

/// `{"events": [pushes...], "position": "..."}`, splicing the pushes' JSON as is.
fn answer(events: &[StreamEvent], position: &str) -> Bytes {
    let mut out =
        BytesMut::with_capacity(64 + events.iter().map(|e| e.data.len() + 1).sum::<usize>());
    out.put_slice(b"{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(&e.data);
    }
    out.put_slice(b"],\"position\":\"");
    out.put_slice(position.as_bytes()); // base64url: nothing to escape
    out.put_slice(b"\"}");
    out.freeze()
}
