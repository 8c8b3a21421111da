//! What SSE and long-poll share: reading the request (channels, token,
//! position vector), opening a session that subscribes with recovery, and
//! turning pushes into position-tracked events.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tidings_protocol::reply::SubscribeOk;
use tidings_protocol::{
    Command, CommandKind, DeltaFormat, ErrorBody, ErrorCode, Publication, ServerMessage, SinceArg,
    SubscribeArg, position,
};

use crate::api::ApiError;
use crate::delivery::ChannelDelivery;
use crate::node::{Mailbox, Node};
use crate::outbox::{Entry, Lane, Outbox};
use crate::session::Session;

/// The peer of an HTTP request for the backend's hooks: `transport`, the
/// socket's address and the headers `proxy.headers` lets through.
pub fn peer(
    node: &Node,
    transport: &'static str,
    ip: Option<std::net::IpAddr>,
    headers: &HeaderMap,
) -> crate::hooks::Peer {
    crate::hooks::Peer::from_request(transport, ip, headers, &node.config.proxy.headers)
}

/// Whether the request's browser origin (if any) may open a connection.
pub fn origin_allowed(node: &Node, headers: &HeaderMap) -> bool {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    node.origin_allowed(get(header::ORIGIN), get(header::HOST))
}

/// A parsed `GET /v1/sse` or `/v1/poll` request.
#[derive(Debug, Default)]
pub struct StreamRequest {
    /// Channels to read, in order, without duplicates.
    pub channels: Vec<String>,
    /// Connection token (`Authorization: Bearer`, else `?token=`).
    pub token: Option<String>,
    /// Position vector (`Last-Event-ID`, else `?since=`).
    pub since: Option<String>,
    /// `?timeout=` in seconds (long-poll).
    pub timeout: Option<String>,
    /// `?delta=fossil`: publications as deltas where they can.
    pub delta: Option<DeltaFormat>,
    /// `?snapshot=true`: start each channel from its latest snapshot.
    pub snapshot: bool,
    /// Who asks (for the backend's hooks); set by the transport.
    pub peer: crate::hooks::Peer,
}

fn bad(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError(ErrorBody::new(code, message))
}

impl StreamRequest {
    /// Reads the query string and headers.
    pub fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut req = StreamRequest::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "channel" if !req.channels.iter().any(|c| *c == v) => {
                    req.channels.push(v.into_owned());
                }
                "token" => req.token = Some(v.into_owned()),
                "since" => req.since = Some(v.into_owned()),
                "timeout" => req.timeout = Some(v.into_owned()),
                "delta" if v == "fossil" => req.delta = Some(DeltaFormat::Fossil),
                "delta" => {
                    return Err(bad(ErrorCode::BadRequest, "`delta` may only be `fossil`"));
                }
                "snapshot" => req.snapshot = matches!(&*v, "true" | "1"),
                _ => {}
            }
        }
        if let Some(t) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            req.token = Some(t.to_string());
        }
        if let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok())
            && !id.is_empty()
        {
            req.since = Some(id.to_string());
        }
        if req.channels.is_empty() {
            return Err(bad(ErrorCode::BadRequest, "name at least one `channel`"));
        }
        Ok(req)
    }
}

/// Where the client stands in one channel.
struct ChannelPos {
    name: String,
    /// `None` in ephemeral channels.
    epoch: Option<String>,
    offset: u64,
}

/// An opening message, decoded.
enum Opening {
    Reply(String, SubscribeOk, ChannelDelivery),
    Push(Entry),
}

/// Orders the channels' recovered publications as an outbox orders lanes:
/// a channel whose missed publications include a higher priority comes
/// first, whole (its own order kept); pushes keep their places.
fn order_by_lane(decoded: &mut Vec<Opening>) {
    // The highest lane among a channel's recovered publications.
    let lane = |item: &Opening| match item {
        Opening::Reply(_, ok, delivery) => ok
            .publications
            .iter()
            .flatten()
            .map(|p| delivery.lane_for(p))
            .min()
            .unwrap_or(delivery.lane),
        Opening::Push(_) => Lane::Control, // not sorted: pushes keep their places
    };
    let slots: Vec<usize> = (0..decoded.len())
        .filter(|&i| matches!(decoded[i], Opening::Reply(..)))
        .collect();
    let mut replies: Vec<Opening> = slots.iter().rev().map(|&i| decoded.remove(i)).collect();
    replies.reverse();
    replies.sort_by_key(lane); // stable: equal lanes keep the request's order
    for (slot, reply) in slots.into_iter().zip(replies) {
        decoded.insert(slot, reply);
    }
}

/// A publication of a subscribe reply, pushed as live ones are (marked as
/// full text in a delta subscription).
fn reply_entry(
    delivery: &ChannelDelivery,
    channel: &Arc<str>,
    epoch: &str,
    p: &Publication,
    delta: bool,
) -> Entry {
    if delta {
        delivery.text_entry(channel, Some(epoch), p)
    } else {
        delivery.entry(channel, Some(epoch), p)
    }
}

/// An epoch no channel has: a vector holding it resets that channel again.
const NOT_YET_RESET: &str = "-";

impl ChannelPos {
    /// Where the client stands before any opening event is delivered.
    fn start(channel: &str, ok: &SubscribeOk) -> Self {
        let (Some(top), Some(epoch)) = (ok.offset, ok.epoch.clone()) else {
            return Self {
                name: channel.to_string(),
                epoch: None,
                offset: 0,
            };
        };
        let first = ok
            .publications
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.offset);
        let (epoch, offset) = match (first, ok.recovered) {
            // Recovered publications, or a snapshot and those after it, follow.
            (Some(first), _) => (epoch, first.saturating_sub(1)),
            // Until the reset event is delivered, a reconnect must reset again.
            (None, Some(false)) => (NOT_YET_RESET.to_string(), top),
            (None, _) => (epoch, top),
        };
        Self {
            name: channel.to_string(),
            epoch: Some(epoch),
            offset,
        }
    }
}

/// An open HTTP stream: a session subscribed to every channel, and the
/// position vector it has delivered up to.
pub struct OpenStream {
    /// The session (ends its subscriptions when [`OpenStream::end`] runs).
    pub session: Option<Session>,
    /// Its outbox.
    pub outbox: Arc<Outbox>,
    /// Its control mailbox.
    pub control: Arc<Mailbox>,
    positions: Vec<ChannelPos>,
}

/// One event to send: its SSE name, the push JSON, and the position vector
/// after it (for `pub` events in channels with history).
pub struct StreamEvent {
    /// `pub`, `join`, `leave`, `reset`, `unsub`, `disconnect`.
    pub name: String,
    /// The JSON payload.
    pub data: Bytes,
    /// The position vector after this event, when it moved.
    pub id: Option<String>,
}

#[derive(Deserialize)]
struct PushHead {
    push: String,
}

impl OpenStream {
    /// Connects with the token and subscribes every channel, recovering from
    /// the position vector. Fails (before anything is streamed) with the
    /// first error. Returns the stream, the vector before any event, and the
    /// events to send first.
    pub async fn open(
        node: &Arc<Node>,
        req: &StreamRequest,
        transient: bool,
    ) -> Result<(Self, String, Vec<StreamEvent>), ApiError> {
        let max = node.config.client.max_stream_channels;
        if req.channels.len() > max {
            return Err(bad(
                ErrorCode::LimitExceeded,
                format!("at most {max} channels per stream"),
            ));
        }
        let since: HashMap<u32, position::Entry> = match &req.since {
            None => HashMap::new(),
            Some(v) => position::decode(v)
                .map_err(|e| bad(ErrorCode::BadRequest, format!("bad position: {e}")))?
                .into_iter()
                .map(|e| (e.channel, e))
                .collect(),
        };
        let outbox = Arc::new(Outbox::new(node.config.client.outbox_bytes));
        let (mut session, control) = Session::new(node.clone(), outbox.clone());
        session.set_peer(req.peer.clone());
        if transient {
            session.set_transient();
        }
        // Each command is handled and its reply taken before the next, so no
        // reply waits behind another in the outbox (a recovery may be large).
        let mut batch = Vec::new();
        // Typed commands, not the client's: they take nothing from the
        // connection's command rate.
        session.connect_with(req.token.clone()).await;
        let mut close = outbox.try_batch(&mut batch);
        for (i, channel) in req.channels.iter().enumerate() {
            if close.is_some() {
                break;
            }
            let mut arg = SubscribeArg {
                channel: channel.clone(),
                delta: req.delta,
                snapshot: req.snapshot,
                ..Default::default()
            };
            if let Some(entry) = since.get(&position::hash(channel)) {
                // The vector holds a hash of the epoch: name the current epoch
                // when it matches, anything else when it does not.
                let current = match node.resolve(channel) {
                    Ok((_, ns)) if ns.has_history() => node
                        .engine
                        .position(channel, &node.policy(&ns))
                        .await
                        .map(|p| p.epoch)
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let epoch = if position::hash(&current) == entry.epoch {
                    current
                } else {
                    "-".to_string()
                };
                arg.since = Some(SinceArg {
                    offset: entry.offset,
                    epoch,
                });
            }
            let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let kind = CommandKind::Subscribe(arg);
            session.handle(Command { id, kind }).await;
            close = outbox.try_batch(&mut batch);
        }
        let mut stream = OpenStream {
            session: Some(session),
            outbox,
            control,
            positions: Vec::new(),
        };
        // Pass 1: every channel's starting position, from the replies, so
        // that every id sent (the opening one included) covers all channels
        // and claims nothing the client has not received yet.
        let mut decoded = Vec::with_capacity(batch.len());
        for message in batch {
            match ServerMessage::decode(&message.bytes) {
                Ok(ServerMessage::Reply(reply)) => {
                    let ok = match reply.result {
                        Ok(ok) => ok,
                        Err(e) => {
                            stream.end().await;
                            return Err(ApiError(e));
                        }
                    };
                    let Some(channel) = (reply.id as usize)
                        .checked_sub(1)
                        .and_then(|i| req.channels.get(i))
                    else {
                        continue; // the connect reply
                    };
                    let ok: SubscribeOk = serde_json::from_str(ok.get()).map_err(|e| {
                        bad(ErrorCode::Internal, format!("bad subscribe reply: {e}"))
                    })?;
                    stream.positions.push(ChannelPos::start(channel, &ok));
                    let delivery = node
                        .resolve(channel)
                        .map(|(_, ns)| ChannelDelivery::of(&ns))
                        .unwrap_or_default();
                    decoded.push(Opening::Reply(channel.clone(), ok, delivery));
                }
                Ok(ServerMessage::Push(_)) => decoded.push(Opening::Push(message)),
                Err(_) => {}
            }
        }
        if let Some(close) = close {
            stream.end().await;
            let code = if close.disconnect.code == tidings_protocol::DisconnectCode::SLOW_CONSUMER.0
            {
                ErrorCode::LimitExceeded
            } else {
                ErrorCode::PermissionDenied
            };
            return Err(bad(code, close.disconnect.reason));
        }
        order_by_lane(&mut decoded);
        // Pass 2: the events, each with the whole vector after it.
        let opening = stream.vector();
        let mut events = Vec::new();
        for item in decoded {
            match item {
                Opening::Reply(channel, ok, delivery) => {
                    stream.on_subscribed(channel, ok, delivery, &mut events)
                }
                Opening::Push(message) => events.extend(stream.on_push(message)),
            }
        }
        Ok((stream, opening, events))
    }

    fn on_subscribed(
        &mut self,
        channel: String,
        ok: SubscribeOk,
        delivery: ChannelDelivery,
        events: &mut Vec<StreamEvent>,
    ) {
        let (Some(offset), Some(epoch)) = (ok.offset, ok.epoch) else {
            return;
        };
        // Publications without `recovered: true`: the snapshot (or the
        // channel from its start) and what follows.
        let snapshot = ok.publications.as_ref().is_some_and(|p| !p.is_empty());
        match ok.recovered {
            Some(true) => {
                // Pushed as live ones are; where values may be skipped, the
                // newest per key only.
                let name: Arc<str> = channel.into();
                for p in delivery.catch_up(ok.publications.unwrap_or_default()) {
                    events
                        .extend(self.on_push(reply_entry(&delivery, &name, &epoch, &p, ok.delta)));
                }
            }
            // The latest snapshot and every publication after it.
            _ if snapshot => {
                let name: Arc<str> = channel.into();
                for p in ok.publications.unwrap_or_default() {
                    events
                        .extend(self.on_push(reply_entry(&delivery, &name, &epoch, &p, ok.delta)));
                }
            }
            Some(false) => {
                if let Some(pos) = self.positions.iter_mut().find(|p| p.name == channel) {
                    pos.epoch = Some(epoch.clone());
                    pos.offset = offset;
                }
                let data = json!({"push": "reset", "channel": channel, "offset": offset, "epoch": epoch, "recovered": false});
                events.push(StreamEvent {
                    name: "reset".into(),
                    data: Bytes::from(data.to_string()),
                    id: Some(self.vector()),
                });
            }
            None => {}
        }
    }

    /// The position vector now.
    pub fn vector(&self) -> String {
        position::encode(
            self.positions
                .iter()
                .filter_map(|p| p.epoch.as_deref().map(|e| (p.name.as_str(), e, p.offset))),
        )
    }

    /// Turns a queued entry into an event, moving the vector on `pub`: a
    /// publication's position comes with its entry; other pushes are read
    /// for their name.
    pub fn on_push(&mut self, entry: Entry) -> Option<StreamEvent> {
        let Some(p) = entry.publication.as_deref() else {
            let head: PushHead = serde_json::from_slice(&entry.bytes).ok()?;
            return (head.push != "ping").then(|| StreamEvent {
                name: head.push,
                data: entry.bytes,
                id: None,
            });
        };
        let mut id = None;
        if let (Some(offset), Some(epoch)) = (p.offset, p.epoch.as_deref())
            && let Some(pos) = self.positions.iter_mut().find(|c| *c.name == *p.channel)
        {
            if pos.epoch.as_deref() == Some(epoch) && offset <= pos.offset {
                return None; // already delivered
            }
            pos.epoch = Some(epoch.to_string());
            pos.offset = offset;
            id = Some(self.vector());
        }
        Some(StreamEvent {
            name: "pub".into(),
            data: entry.bytes,
            id,
        })
    }

    /// Ends the session: unsubscribes everything.
    pub async fn end(&mut self) {
        if let Some(session) = self.session.take() {
            session.end().await;
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        // A client that goes away drops the stream mid-await: clean up anyway.
        if let Some(session) = self.session.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(session.end());
        }
    }
}
