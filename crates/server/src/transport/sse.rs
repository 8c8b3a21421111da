//! Server-Sent Events, `GET /v1/sse?channel=…`: receive-only; each `pub`
//! event's `id:` is the position vector, so the browser's own reconnect
//! (`Last-Event-ID`) resumes with no loss, on any node, with no session.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use serde_json::json;
use tidings_protocol::{Disconnect, DisconnectCode, ErrorBody, ErrorCode};

use crate::api::ApiError;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use rand::Rng;

use super::http::{OpenStream, StreamEvent, StreamRequest, origin_allowed};
use crate::lease::Lease;
use crate::node::Node;

/// Keep-alive comment interval.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often a stream in presence is asked to send a heartbeat: three
/// chances within the lease (`presence_ttl`).
fn heartbeat_every(node: &Node) -> Duration {
    node.config.presence_ttl / 3
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

fn to_event(e: StreamEvent) -> Event {
    let data = String::from_utf8_lossy(&e.data);
    let event = Event::default().event(e.name).data(data);
    match e.id {
        Some(id) => event.id(id),
        None => event,
    }
}

/// `GET /v1/sse`.
pub async fn handle(
    State(node): State<Arc<Node>>,
    ConnectInfo(ip): ConnectInfo<std::net::SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !origin_allowed(&node, &headers) {
        let e = ErrorBody::new(ErrorCode::PermissionDenied, "this origin may not connect");
        return ApiError(e).into_response();
    }
    let req = match StreamRequest::parse(query.as_deref(), &headers) {
        Ok(r) => StreamRequest {
            peer: super::http::peer(&node, "sse", Some(ip.ip()), &headers),
            ..r
        },
        Err(e) => return e.into_response(),
    };
    let (open, opening, first) = match OpenStream::open(&node, &req, false).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    node.metrics.connections.inc();
    // A stream in presence stays there only while its reader sends heartbeats.
    let lease = open
        .session
        .as_ref()
        .is_some_and(|s| s.in_presence())
        .then(|| node.leases.open());
    let mut connected = json!({
        "client": open.session.as_ref().map(|s| s.client_id()),
    });
    if let Some(lease) = &lease {
        connected["lease"] = json!(lease.id());
        connected["heartbeat_ms"] = json!(heartbeat_every(&node).as_millis() as u64);
    }
    // Jitter the browser's reconnect delay so a restart does not bring everyone back at once.
    let retry = Duration::from_millis(rand::rng().random_range(1000..=3000));
    let head = stream::iter(
        // The first block carries the position vector as its id, so a stream
        // that drops before its first publication resumes from here too.
        std::iter::once(
            Event::default()
                .retry(retry)
                .id(opening)
                .event("connected")
                .data(connected.to_string()),
        )
        .chain(first.into_iter().map(to_event))
        .map(Ok::<_, Infallible>),
    );
    let live = live_events(open, node.clone(), lease)
        .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Sse::new(head.chain(live))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("ping"))
        .into_response()
}

/// Events as pushes arrive, until the session closes (slow consumer,
/// shutdown, API disconnect): the last batch ends with the `disconnect`
/// event, then the stream ends and the browser reconnects by itself.
fn live_events(
    open: OpenStream,
    node: Arc<Node>,
    lease: Option<Lease>,
) -> impl Stream<Item = Vec<Event>> {
    struct Live {
        open: OpenStream,
        node: Arc<Node>,
        next_renew: tokio::time::Instant,
        lease: Option<Lease>,
        latency: crate::metrics::Writes,
    }
    impl Drop for Live {
        fn drop(&mut self) {
            self.node.metrics.connections.dec();
        }
    }
    let next_renew = tokio::time::Instant::now() + node.config.presence_ttl / 3;
    let live = Live {
        open,
        latency: node.metrics.writes("sse"),
        node,
        next_renew,
        lease,
    };
    stream::unfold(Some(live), |state| async move {
        let mut live = state?;
        loop {
            let mut batch = Vec::new();
            let expiry = live.open.session.as_ref().and_then(|s| s.next_expiry());
            tokio::select! {
                _ = tokio::time::sleep_until(live.next_renew) => {
                    let ttl = live.node.config.presence_ttl;
                    if let Some(session) = live.open.session.as_ref() {
                        if live.lease.as_ref().is_some_and(|l| !l.alive_within(ttl)) {
                            // Frozen or gone: leave presence as a WebSocket without pong would.
                            session.close(Disconnect {
                                reason: "no heartbeat within the presence lease".into(),
                                ..Disconnect::new(DisconnectCode::NO_PONG, None)
                            });
                        } else {
                            session.renew_presence().await;
                        }
                    }
                    live.next_renew = tokio::time::Instant::now() + ttl / 3;
                }
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(far_future)), if expiry.is_some() => {
                    if let Some(session) = live.open.session.as_mut() {
                        session.expire().await;
                    }
                }
                close = live.open.outbox.next_batch(&mut batch) => {
                    live.latency.observe(&batch);
                    let mut events: Vec<Event> = batch
                        .into_iter()
                        .filter_map(|m| live.open.on_push(m))
                        .map(to_event)
                        .collect();
                    if let Some(close) = close {
                        let d = serde_json::to_string(&close.disconnect).unwrap_or_default();
                        events.push(Event::default().event("disconnect").data(d));
                        live.open.end().await;
                        return Some((events, None));
                    }
                    if events.is_empty() {
                        continue;
                    }
                    return Some((events, Some(live)));
                }
                control = live.open.control.recv() => {
                    if let Some(session) = live.open.session.as_mut() {
                        session.handle_control(control).await;
                    }
                }
            }
        }
    })
}
