//! The background task: owns the WebSocket, matches replies to requests,
//! tracks subscriptions, reconnects.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_websockets::{ClientBuilder, CloseCode, MaybeTlsStream, Message, WebSocketStream};
use tracing::{debug, info, warn};

use tidings_protocol::reply::{ConnectOk, SubscribeOk};
use tidings_protocol::{
    DeltaFormat, Disconnect, ErrorBody, Publication, Push, Reply, SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK, ServerMessage, SinceArg, decode_server_messages,
};

use crate::backoff::{Backoff, jitter};
use crate::client::{ClientEvent, Shared};
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::subscription::SubEvent;
use crate::tracker::Tracker;
use crate::wire::{Op, PONG, encode, frames};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type ReplyTx = oneshot::Sender<Result<Box<RawValue>, ClientError>>;
type DoneTx = oneshot::Sender<Result<(), ClientError>>;

/// Outgoing frames are cut at about this size.
const MAX_FRAME: usize = 64 * 1024;
/// Extra time after `ping_interval` before a silent connection counts as dead.
const PING_GRACE: Duration = Duration::from_secs(10);
/// How many queued handle messages are folded into one outgoing frame at most.
const MAX_BATCH: usize = 512;
/// How long a client-side close waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// What the handles ask the task.
pub(crate) enum ToTask {
    /// A command with an `ok` reply.
    Request {
        op: Op,
        reply: ReplyTx,
        /// Send again after a reconnect if the connection drops before the reply.
        retry: bool,
    },
    Subscribe {
        channel: String,
        serial: u64,
        since: Option<SinceArg>,
        snapshot: bool,
        delta: bool,
        receipts: bool,
        events: mpsc::UnboundedSender<SubEvent>,
        reply: DoneTx,
    },
    Unsubscribe {
        channel: String,
        reply: DoneTx,
    },
    /// A [`Subscription`](crate::Subscription) was dropped.
    SubDropped {
        channel: String,
        serial: u64,
    },
    Close(oneshot::Sender<()>),
}

struct Queued {
    op: Op,
    reply: ReplyTx,
    retry: bool,
}

/// A command on the wire, waiting for its reply.
enum Pending {
    Connect,
    Request {
        reply: ReplyTx,
        /// The command again, when it is to be resent after a reconnect.
        retry: Option<Op>,
        /// The new token of a `refresh`.
        refresh: Option<String>,
    },
    Subscribe {
        channel: String,
        serial: u64,
    },
    Unsubscribe {
        reply: Option<DoneTx>,
    },
}

enum SubState {
    /// Not known to the server (not connected yet, or after a lost connection).
    Idle,
    /// `subscribe` sent; pushes are held until the reply says where the stream starts.
    Subscribing {
        id: u32,
        since: Option<SinceArg>,
        held: Vec<Push>,
    },
    Active,
    /// A resubscribe failed with a temporary error; try again then.
    RetryAt(Instant),
}

struct SubEntry {
    serial: u64,
    events: mpsc::UnboundedSender<SubEvent>,
    tracker: Tracker,
    state: SubState,
    /// The first `subscribe` call, until its answer.
    waiter: Option<DoneTx>,
    retries: u32,
    /// Asks for the snapshot (`snapshot`).
    snapshot: bool,
    /// Asks for deltas (`delta: "fossil"`).
    delta: bool,
    /// The last payload's text, which the next delta applies to.
    delta_base: Option<String>,
    /// Sends `delivered` cursors by itself (`receipts`).
    receipts: bool,
    /// The newest offset delivered and not yet told, since when.
    untold: Option<(u64, Instant)>,
    /// The newest offset told (reset when subscribing again: a command
    /// lost with a connection is told again).
    told: u64,
}

impl SubEntry {
    /// A delta subscription's `pub` push with its payload restored (its
    /// text, or the delta applied to the previous payload's); Err when a
    /// delta does not apply (a gap).
    fn decode(&mut self, push: Push) -> Result<Push, ()> {
        // Already delivered (queued before a resubscribe's reply): left for
        // the tracker to drop, before it can touch the delta base.
        if let Push::Pub {
            publication, epoch, ..
        } = &push
            && let (Some(offset), Some(pos)) = (publication.offset, self.tracker.since())
            && epoch.as_deref().is_none_or(|e| e == pos.epoch)
            && offset <= pos.offset
        {
            return Ok(push);
        }
        match push {
            Push::Pub {
                channel,
                epoch,
                mut publication,
                latest,
                delta: Some(is_delta),
            } => {
                self.apply_text(&mut publication, is_delta)?;
                Ok(Push::Pub {
                    channel,
                    epoch,
                    publication,
                    latest,
                    delta: None,
                })
            }
            other => Ok(other),
        }
    }

    /// Turns `p.data` (a JSON string: the payload's text, or a delta)
    /// into the payload, keeping its text as the next delta's base.
    fn apply_text(&mut self, p: &mut Publication, is_delta: bool) -> Result<(), ()> {
        let data: String = serde_json::from_str(p.data.get()).map_err(|_| ())?;
        let text = if is_delta {
            let base = self.delta_base.as_deref().ok_or(())?;
            apply_delta(base, &data).ok_or(())?
        } else {
            data
        };
        p.data = RawValue::from_string(text.clone()).map_err(|_| ())?;
        self.delta_base = Some(text);
        Ok(())
    }

    fn deliver(&mut self, events: Vec<SubEvent>) {
        for e in events {
            if self.receipts
                && let SubEvent::Publication(p) | SubEvent::Snapshot(p) = &e
                && let Some(offset) = p.offset.filter(|&o| o > self.told)
            {
                let since = self.untold.map_or_else(Instant::now, |(_, at)| at);
                let newest = self.untold.map_or(offset, |(o, _)| o.max(offset));
                self.untold = Some((newest, since));
            }
            if self.events.send(e).is_err() {
                break;
            }
        }
    }
}

/// Why a connection ended.
struct Lost {
    code: Option<u16>,
    reason: String,
    /// Whether the client may come back (the server's word, or a network failure).
    reconnect: bool,
    /// Whether the server itself asked to come back (retried even before the first connect).
    server_asked: bool,
    /// Wait at least this long (`delay_ms` of a `disconnect` push).
    delay: Option<Duration>,
    /// What the first `Client::connect` reports.
    error: ClientError,
    /// Whether the `connect` reply had come.
    connected: bool,
}

impl Lost {
    fn failed(error: ClientError) -> Self {
        let reason = match &error {
            ClientError::Disconnected { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        Self {
            code: None,
            reason,
            reconnect: true,
            server_asked: false,
            delay: None,
            error,
            connected: false,
        }
    }

    fn disconnect(d: Disconnect) -> Self {
        let reconnect = d.reconnect && !(3500..4000).contains(&d.code);
        Self {
            code: Some(d.code),
            reason: d.reason.clone(),
            reconnect,
            server_asked: reconnect,
            delay: d.delay_ms.map(Duration::from_millis),
            error: ClientError::Disconnected {
                code: Some(d.code),
                reason: d.reason,
            },
            connected: false,
        }
    }

    fn closed(code: u16, reason: &str) -> Self {
        let (reconnect, server_asked) = match code {
            3000..3500 => (true, true),
            3500..4000 => (false, false),
            _ => (true, false),
        };
        let reason = if reason.is_empty() {
            format!("closed with code {code}")
        } else {
            reason.to_string()
        };
        Self {
            code: Some(code),
            reason: reason.clone(),
            reconnect,
            server_asked,
            delay: None,
            error: ClientError::Disconnected {
                code: Some(code),
                reason,
            },
            connected: false,
        }
    }

    fn refused(e: ErrorBody) -> Self {
        Self {
            code: None,
            reason: e.message.clone(),
            reconnect: e.temporary,
            server_asked: e.temporary,
            delay: None,
            error: e.into(),
            connected: false,
        }
    }
}

enum End {
    /// `close()` was called or every handle is gone.
    Stop,
    Lost(Lost),
}

/// One WebSocket connection's state.
struct Session {
    connected: bool,
    /// Lines to send at the end of this turn.
    out: Vec<String>,
    end: Option<End>,
    last_rx: Instant,
    ping_interval: Duration,
    /// Until the `connect` reply: when to give up.
    handshake_deadline: Instant,
}

impl Session {
    fn deadline(&self) -> Option<Instant> {
        if !self.connected {
            Some(self.handshake_deadline)
        } else if self.ping_interval.is_zero() {
            None
        } else {
            Some(self.last_rx + self.ping_interval + PING_GRACE)
        }
    }

    fn lose(&mut self, lost: Lost) {
        if self.end.is_none() {
            self.end = Some(End::Lost(lost));
        }
    }
}

pub(crate) struct Task {
    uri: http::Uri,
    token: Option<String>,
    name: Option<String>,
    reconnect: bool,
    request_timeout: Duration,
    /// Speaks `tidings.v1.msgpack`.
    msgpack: bool,
    backoff: Backoff,
    rx: mpsc::UnboundedReceiver<ToTask>,
    shared: Arc<Shared>,
    subs: HashMap<String, SubEntry>,
    queue: VecDeque<Queued>,
    pending: HashMap<u32, Pending>,
    next_id: u32,
    /// Answers `Client::connect`, until the first connection is up.
    ready: Option<DoneTx>,
    close_ack: Option<oneshot::Sender<()>>,
}

impl Task {
    pub(crate) fn new(
        config: &ClientConfig,
        uri: http::Uri,
        rx: mpsc::UnboundedReceiver<ToTask>,
        shared: Arc<Shared>,
        ready: DoneTx,
    ) -> Self {
        Self {
            uri,
            token: config.token.clone(),
            name: config.name.clone(),
            reconnect: config.reconnect,
            request_timeout: config.request_timeout,
            msgpack: config.msgpack,
            backoff: Backoff::new(config.backoff_min, config.backoff_max),
            rx,
            shared,
            subs: HashMap::new(),
            queue: VecDeque::new(),
            pending: HashMap::new(),
            next_id: 0,
            ready: Some(ready),
            close_ack: None,
        }
    }

    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        if self.next_id == 0 {
            self.next_id = 1;
        }
        self.next_id
    }

    pub(crate) async fn run(mut self) {
        let first_deadline = Instant::now() + self.request_timeout;
        loop {
            let lost = match self.session(first_deadline).await {
                End::Stop => {
                    self.finish(None);
                    return;
                }
                End::Lost(lost) => lost,
            };
            let first = self.ready.is_some();
            // Before the first connect only server-asked reconnects are retried
            // (a network error or a refused handshake fails `Client::connect` at once).
            let retry = self.reconnect
                && if first {
                    lost.server_asked
                } else {
                    lost.reconnect
                };
            if lost.connected || (!first && !retry) {
                info!(code = ?lost.code, reason = %lost.reason, reconnect = retry, "disconnected");
                self.shared.emit(ClientEvent::Disconnected {
                    code: lost.code,
                    reason: lost.reason.clone(),
                    reconnect: retry,
                });
            } else {
                debug!(code = ?lost.code, reason = %lost.reason, "connect attempt failed");
            }
            self.connection_lost(&lost);
            let (mut delay, attempt) = self.backoff.next_delay();
            if let Some(min) = lost.delay {
                delay = delay.max(min);
            }
            if first && (!retry || Instant::now() + delay >= first_deadline) {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(lost.error));
                }
                self.finish(None);
                return;
            }
            if !retry {
                self.finish(Some(&lost));
                return;
            }
            self.shared
                .emit(ClientEvent::Reconnecting { attempt, delay });
            if self.wait_offline(delay).await {
                self.finish(None);
                return;
            }
        }
    }

    /// Sleeps `delay` while serving the handles. True when the task must stop.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return false,
                cmd = self.rx.recv() => match cmd {
                    None => return true,
                    Some(cmd) => if self.on_cmd(cmd, None) { return true },
                },
            }
        }
    }

    /// One connection, from dialing to its end.
    async fn session(&mut self, first_deadline: Instant) -> End {
        let handshake_deadline = if self.ready.is_some() {
            first_deadline
        } else {
            Instant::now() + self.request_timeout
        };
        let protocol = if self.msgpack {
            SUBPROTOCOL_MSGPACK
        } else {
            SUBPROTOCOL_JSON
        };
        let builder = match ClientBuilder::from_uri(self.uri.clone())
            .add_header(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol))
        {
            Ok(b) => b,
            Err(e) => return End::Lost(Lost::failed(e.into())),
        };
        debug!(uri = %self.uri, "dialing");
        let mut ws = {
            let dial = builder.connect();
            tokio::pin!(dial);
            loop {
                tokio::select! {
                    res = &mut dial => match res {
                        Ok((ws, _)) => {
                            // Commands are small and latency-bound: no Nagle delay.
                            let MaybeTlsStream::Plain(tcp) = ws.get_ref();
                            let _ = tcp.set_nodelay(true);
                            break ws;
                        }
                        Err(e) => return End::Lost(Lost::failed(e.into())),
                    },
                    cmd = self.rx.recv() => match cmd {
                        None => return End::Stop,
                        Some(cmd) => if self.on_cmd(cmd, None) { return End::Stop },
                    },
                    _ = sleep_until(handshake_deadline) => {
                        return End::Lost(Lost::failed(ClientError::Timeout));
                    }
                }
            }
        };

        let mut s = Session {
            connected: false,
            out: Vec::new(),
            end: None,
            last_rx: Instant::now(),
            ping_interval: Duration::ZERO,
            handshake_deadline,
        };
        let id = self.next_id();
        self.pending.insert(id, Pending::Connect);
        s.out.push(encode(
            Some(id),
            &Op::Connect {
                token: self.token.clone(),
                name: self.name.clone(),
                version: Some(concat!("tidings-client-rust/", env!("CARGO_PKG_VERSION")).into()),
                subscribe: Vec::new(),
            },
        ));

        loop {
            if !s.out.is_empty() {
                let lines = std::mem::take(&mut s.out);
                if let Err(e) = self.send_lines(&mut ws, lines).await {
                    s.lose(Lost::failed(e));
                }
            }
            if let Some(end) = s.end.take() {
                return match end {
                    End::Stop => {
                        if s.connected {
                            self.shared.emit(ClientEvent::Disconnected {
                                code: None,
                                reason: "closed by the client".into(),
                                reconnect: false,
                            });
                        }
                        close_gracefully(&mut ws).await;
                        End::Stop
                    }
                    End::Lost(mut lost) => {
                        lost.connected = s.connected;
                        End::Lost(lost)
                    }
                };
            }
            let deadline = s.deadline();
            let (retry_at, cursor_at) = if s.connected {
                (self.next_retry_at(), self.next_cursor_at())
            } else {
                (None, None)
            };
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(msg)) => {
                        s.last_rx = Instant::now();
                        if let Some(text) = msg.as_text() {
                            self.on_frame(text, &mut s);
                        } else if msg.is_binary() && self.msgpack {
                            match tidings_protocol::msgpack::to_json_messages(msg.as_payload()) {
                                Ok(messages) => {
                                    for json in messages {
                                        self.on_frame(&String::from_utf8_lossy(&json), &mut s);
                                    }
                                }
                                Err(e) => warn!(error = %e, "a frame that is not MessagePack ignored"),
                            }
                        } else if let Some((code, reason)) = msg.as_close() {
                            s.lose(Lost::closed(code.into(), reason));
                        }
                    }
                    Some(Err(e)) => s.lose(Lost::failed(e.into())),
                    None => s.lose(Lost::failed(ClientError::Disconnected {
                        code: None,
                        reason: "connection closed".into(),
                    })),
                },
                cmd = self.rx.recv() => {
                    let mut next = cmd;
                    let mut n = 0;
                    while let Some(cmd) = next {
                        let out = if s.connected { Some(&mut s.out) } else { None };
                        if self.on_cmd(cmd, out) {
                            s.end = Some(End::Stop);
                            break;
                        }
                        n += 1;
                        next = if n < MAX_BATCH { self.rx.try_recv().ok() } else { None };
                    }
                    if n == 0 && s.end.is_none() {
                        // Every handle is gone.
                        s.end = Some(End::Stop);
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    let what = if s.connected { "no ping from the server" } else { "no connect reply" };
                    warn!("{what} in time; reconnecting");
                    s.lose(Lost::failed(if s.connected {
                        ClientError::Disconnected { code: None, reason: what.into() }
                    } else {
                        ClientError::Timeout
                    }));
                }
                _ = sleep_until(retry_at.unwrap_or_else(far_future)), if retry_at.is_some() => {
                    self.retry_subscribes(&mut s.out);
                }
                _ = sleep_until(cursor_at.unwrap_or_else(far_future)), if cursor_at.is_some() => {
                    self.tell_cursors(&mut s.out);
                }
            }
        }
    }

    async fn send_lines(&self, ws: &mut Ws, lines: Vec<String>) -> Result<(), ClientError> {
        let send = async {
            if self.msgpack {
                // One binary frame of MessagePack values back to back.
                let mut frame = Vec::new();
                for line in &lines {
                    match tidings_protocol::msgpack::from_json(line.as_bytes()) {
                        Ok(mp) => frame.extend_from_slice(&mp),
                        Err(e) => warn!(error = %e, "a command could not be encoded"),
                    }
                }
                ws.feed(Message::binary(frame)).await?;
            } else {
                for frame in frames(lines, MAX_FRAME) {
                    ws.feed(Message::text(frame)).await?;
                }
            }
            ws.flush().await
        };
        match tokio::time::timeout(self.request_timeout, send).await {
            Ok(r) => r.map_err(ClientError::from),
            Err(_) => Err(ClientError::Disconnected {
                code: None,
                reason: "write timed out".into(),
            }),
        }
    }

    /// Handles a handle's message; `out` is `Some` when connected. True when the task must stop.
    fn on_cmd(&mut self, cmd: ToTask, out: Option<&mut Vec<String>>) -> bool {
        match cmd {
            ToTask::Request { op, reply, retry } => {
                let q = Queued { op, reply, retry };
                match out {
                    Some(out) => self.send_request(q, out),
                    None => {
                        if self.queue.len() >= 64 {
                            self.queue.retain(|q| !q.reply.is_closed());
                        }
                        self.queue.push_back(q);
                    }
                }
            }
            ToTask::Subscribe {
                channel,
                serial,
                since,
                snapshot,
                delta,
                receipts,
                events,
                reply,
            } => {
                if self.subs.contains_key(&channel) {
                    let _ = reply.send(Err(ClientError::Server {
                        code: 107,
                        message: "already subscribed".into(),
                        temporary: false,
                    }));
                    return false;
                }
                self.subs.insert(
                    channel.clone(),
                    SubEntry {
                        serial,
                        events,
                        tracker: Tracker::new(since),
                        state: SubState::Idle,
                        waiter: Some(reply),
                        retries: 0,
                        snapshot,
                        delta,
                        delta_base: None,
                        receipts,
                        untold: None,
                        told: 0,
                    },
                );
                if let Some(out) = out {
                    self.send_subscribe(&channel, out);
                }
            }
            ToTask::Unsubscribe { channel, reply } => match self.subs.remove(&channel) {
                None => {
                    let _ = reply.send(Err(ClientError::Server {
                        code: 108,
                        message: "not subscribed".into(),
                        temporary: false,
                    }));
                }
                Some(entry) => self.drop_sub(channel, entry, Some(reply), out),
            },
            ToTask::SubDropped { channel, serial } => {
                if self.subs.get(&channel).is_some_and(|e| e.serial == serial)
                    && let Some(entry) = self.subs.remove(&channel)
                {
                    debug!(%channel, "subscription dropped; unsubscribing");
                    self.drop_sub(channel, entry, None, out);
                }
            }
            ToTask::Close(ack) => {
                self.close_ack = Some(ack);
                return true;
            }
        }
        false
    }

    /// Forgets a subscription, telling the server when it knows it.
    fn drop_sub(
        &mut self,
        channel: String,
        entry: SubEntry,
        reply: Option<DoneTx>,
        out: Option<&mut Vec<String>>,
    ) {
        let on_server = matches!(entry.state, SubState::Subscribing { .. } | SubState::Active);
        match out {
            Some(out) if on_server => {
                let id = self.next_id();
                out.push(encode(Some(id), &Op::Unsubscribe { channel }));
                self.pending.insert(id, Pending::Unsubscribe { reply });
            }
            _ => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    fn send_request(&mut self, q: Queued, out: &mut Vec<String>) {
        if q.reply.is_closed() {
            // The caller gave up (timeout or cancel): do not send it late.
            return;
        }
        let id = self.next_id();
        out.push(encode(Some(id), &q.op));
        let refresh = match &q.op {
            Op::Refresh { token } => Some(token.clone()),
            _ => None,
        };
        let retry = q.retry.then_some(q.op);
        self.pending.insert(
            id,
            Pending::Request {
                reply: q.reply,
                retry,
                refresh,
            },
        );
    }

    fn send_subscribe(&mut self, channel: &str, out: &mut Vec<String>) {
        let id = self.next_id();
        let Some(entry) = self.subs.get_mut(channel) else {
            return;
        };
        let since = entry.tracker.since();
        // A `delivered` cursor lost with a connection is told again with the
        // next publication (the server keeps the highest); not before the
        // reply: the channel may have started over.
        entry.told = 0;
        out.push(encode(
            Some(id),
            &Op::Subscribe {
                channel: channel.to_string(),
                since: since.clone(),
                snapshot: entry.snapshot,
                delta: entry.delta.then_some(DeltaFormat::Fossil),
            },
        ));
        entry.state = SubState::Subscribing {
            id,
            since,
            held: Vec::new(),
        };
        self.pending.insert(
            id,
            Pending::Subscribe {
                channel: channel.to_string(),
                serial: entry.serial,
            },
        );
    }

    /// When the oldest untold `delivered` cursor is due.
    fn next_cursor_at(&self) -> Option<Instant> {
        self.subs
            .values()
            .filter_map(|e| e.untold.map(|(_, at)| at + crate::CURSOR_COALESCE))
            .min()
    }

    /// Tells the server the newest offsets delivered (replies unread).
    fn tell_cursors(&mut self, out: &mut Vec<String>) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (channel, e) in &mut self.subs {
            if let Some((offset, at)) = e.untold
                && at + crate::CURSOR_COALESCE <= now
            {
                e.untold = None;
                e.told = offset;
                due.push((channel.clone(), offset));
            }
        }
        for (channel, offset) in due {
            let id = self.next_id();
            let op = Op::Cursor {
                channel,
                delivered: Some(offset),
                read: None,
            };
            out.push(encode(Some(id), &op));
        }
    }

    fn next_retry_at(&self) -> Option<Instant> {
        self.subs
            .values()
            .filter_map(|e| match e.state {
                SubState::RetryAt(t) => Some(t),
                _ => None,
            })
            .min()
    }

    fn retry_subscribes(&mut self, out: &mut Vec<String>) {
        let now = Instant::now();
        let due: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, e)| matches!(e.state, SubState::RetryAt(t) if t <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in due {
            debug!(%channel, "retrying subscribe");
            self.send_subscribe(&channel, out);
        }
    }

    fn on_frame(&mut self, text: &str, s: &mut Session) {
        for msg in decode_server_messages(text.as_bytes()) {
            match msg {
                Ok(ServerMessage::Reply(r)) => self.on_reply(r, s),
                Ok(ServerMessage::Push(p)) => self.on_push(p, s),
                Err(e) => warn!(error = %e, "undecodable server message ignored"),
            }
            if s.end.is_some() {
                break;
            }
        }
    }

    fn on_reply(&mut self, r: Reply, s: &mut Session) {
        let Some(pending) = self.pending.remove(&r.id) else {
            debug!(id = r.id, "reply to no pending command ignored");
            return;
        };
        match pending {
            Pending::Connect => self.on_connect_reply(r.result, s),
            Pending::Request { reply, refresh, .. } => {
                if let (Some(token), Ok(_)) = (refresh, &r.result) {
                    self.token = Some(token);
                }
                let _ = reply.send(r.result.map_err(ClientError::from));
            }
            Pending::Subscribe { channel, serial } => {
                self.on_subscribe_reply(channel, serial, r.id, r.result, s)
            }
            Pending::Unsubscribe { reply } => {
                if let Some(reply) = reply {
                    let res = match r.result {
                        Ok(_) => Ok(()),
                        // The server had already forgotten it: what was asked is done.
                        Err(e) if e.code == 108 => Ok(()),
                        Err(e) => Err(e.into()),
                    };
                    let _ = reply.send(res);
                }
            }
        }
    }

    fn on_connect_reply(&mut self, result: Result<Box<RawValue>, ErrorBody>, s: &mut Session) {
        let ok = match result {
            Err(e) => {
                warn!(code = e.code, message = %e.message, "connect refused");
                s.lose(Lost::refused(e));
                return;
            }
            Ok(raw) => match serde_json::from_str::<ConnectOk>(raw.get()) {
                Ok(ok) => ok,
                Err(e) => {
                    s.lose(Lost::failed(ClientError::Protocol(format!(
                        "bad connect reply: {e}"
                    ))));
                    return;
                }
            },
        };
        info!(client = %ok.client, user = %ok.user, "connected");
        s.connected = true;
        s.last_rx = Instant::now();
        s.ping_interval = Duration::from_secs(ok.ping_interval);
        self.backoff.reset();
        self.shared.set_client_id(Some(ok.client.clone()));
        self.shared
            .emit(ClientEvent::Connected { client: ok.client });
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(()));
        }
        let mut channels: Vec<String> = self.subs.keys().cloned().collect();
        channels.sort();
        for channel in channels {
            self.send_subscribe(&channel, &mut s.out);
        }
        while let Some(q) = self.queue.pop_front() {
            self.send_request(q, &mut s.out);
        }
    }

    fn on_subscribe_reply(
        &mut self,
        channel: String,
        serial: u64,
        id: u32,
        result: Result<Box<RawValue>, ErrorBody>,
        s: &mut Session,
    ) {
        let Some(entry) = self.subs.get_mut(&channel) else {
            return;
        };
        let current = entry.serial == serial
            && matches!(entry.state, SubState::Subscribing { id: sid, .. } if sid == id);
        if !current {
            return;
        }
        let SubState::Subscribing { since, held, .. } =
            std::mem::replace(&mut entry.state, SubState::Active)
        else {
            return;
        };
        let parsed = result.map_err(ClientError::from).and_then(|raw| {
            serde_json::from_str::<SubscribeOk>(raw.get())
                .map_err(|e| ClientError::Protocol(format!("bad subscribe reply: {e}")))
        });
        match parsed {
            Ok(mut ok) => {
                entry.retries = 0;
                // A new subscription: deltas build on what this reply holds.
                entry.delta_base = None;
                if ok.delta {
                    for p in ok.publications.iter_mut().flatten() {
                        if entry.apply_text(p, false).is_err() {
                            warn!(%channel, "a subscribe reply's payload is not text");
                        }
                    }
                }
                let mut events = entry.tracker.on_subscribed(since.as_ref(), ok);
                let mut broken = false;
                for push in held {
                    match entry.decode(push) {
                        Ok(push) => events.extend(apply_push(&mut entry.tracker, push)),
                        Err(()) => {
                            broken = true;
                            break;
                        }
                    }
                }
                entry.deliver(events);
                if let Some(waiter) = entry.waiter.take() {
                    let _ = waiter.send(Ok(()));
                }
                if broken {
                    self.on_gap(channel.clone(), s);
                }
            }
            Err(err) => {
                if let Some(waiter) = entry.waiter.take() {
                    self.subs.remove(&channel);
                    let _ = waiter.send(Err(err));
                    return;
                }
                let temporary = matches!(
                    err,
                    ClientError::Server {
                        temporary: true,
                        ..
                    }
                );
                if temporary && s.connected {
                    entry.retries = entry.retries.saturating_add(1);
                    let delay = jitter(self.backoff.cap(entry.retries), &mut rand::rng())
                        .max(Duration::from_millis(100));
                    warn!(%channel, error = %err, ?delay, "resubscribe failed; retrying");
                    entry.state = SubState::RetryAt(Instant::now() + delay);
                    return;
                }
                warn!(%channel, error = %err, "resubscribe failed; subscription ended");
                let (code, reason) = match err {
                    ClientError::Server { code, message, .. } => (code, message),
                    other => (0, other.to_string()),
                };
                entry.deliver(vec![SubEvent::Unsubscribed { code, reason }]);
                self.subs.remove(&channel);
            }
        }
    }

    fn on_push(&mut self, push: Push, s: &mut Session) {
        let channel = match &push {
            Push::Ping => {
                s.out.push(PONG.to_string());
                return;
            }
            Push::Disconnect(d) => {
                info!(code = d.code, reason = %d.reason, reconnect = d.reconnect, "disconnect push");
                let Push::Disconnect(d) = push else { return };
                s.lose(Lost::disconnect(d));
                return;
            }
            Push::Unsub {
                channel,
                code,
                reason,
            } => {
                self.on_unsub(channel.clone(), *code, reason.clone(), s);
                return;
            }
            Push::Gap { channel, .. } => {
                self.on_gap(channel.clone(), s);
                return;
            }
            Push::Inbox(change) => {
                let _ = self.shared.inbox.send(change.clone());
                return;
            }
            Push::Receipt(r) => r.channel.clone(),
            Push::Pub { channel, .. }
            | Push::Join { channel, .. }
            | Push::Leave { channel, .. } => channel.clone(),
        };
        let Some(entry) = self.subs.get_mut(&channel) else {
            debug!(%channel, "push for a channel not subscribed ignored");
            return;
        };
        match &mut entry.state {
            SubState::Subscribing { held, .. } => held.push(push),
            SubState::Active => match entry.decode(push) {
                Ok(push) => {
                    let events = apply_push(&mut entry.tracker, push);
                    entry.deliver(events);
                }
                // A delta without its base: subscribe again from the position.
                Err(()) => self.on_gap(channel, s),
            },
            // Recovery on the next subscribe covers these.
            SubState::Idle | SubState::RetryAt(_) => {}
        }
    }

    /// The server skipped publications of `channel` for this slow
    /// connection: subscribe again from the last one processed, so that
    /// recovery fills the gap (publications already had are not repeated).
    fn on_gap(&mut self, channel: String, s: &mut Session) {
        if !s.connected || !self.subs.contains_key(&channel) {
            return;
        }
        info!(%channel, "gap notice; recovering");
        // Its reply is not waited for: the subscribe after it is what counts.
        let id = self.next_id();
        s.out.push(encode(
            Some(id),
            &Op::Unsubscribe {
                channel: channel.clone(),
            },
        ));
        self.send_subscribe(&channel, &mut s.out);
    }

    fn on_unsub(&mut self, channel: String, code: u16, reason: String, s: &mut Session) {
        let Some(entry) = self.subs.get_mut(&channel) else {
            return;
        };
        if (3000..3500).contains(&code) {
            info!(%channel, code, %reason, "server ended the subscription; resubscribing");
            if s.connected {
                self.send_subscribe(&channel, &mut s.out);
            } else {
                entry.state = SubState::Idle;
            }
            return;
        }
        info!(%channel, code, %reason, "server ended the subscription");
        if let Some(waiter) = entry.waiter.take() {
            let _ = waiter.send(Err(ClientError::Disconnected {
                code: Some(code),
                reason: reason.clone(),
            }));
        }
        entry.deliver(vec![SubEvent::Unsubscribed { code, reason }]);
        self.subs.remove(&channel);
    }

    /// After a connection ended: fail or requeue what was in flight.
    fn connection_lost(&mut self, lost: &Lost) {
        self.shared.set_client_id(None);
        let mut requeue = Vec::new();
        for (id, pending) in self.pending.drain() {
            match pending {
                Pending::Request {
                    reply,
                    retry: Some(op),
                    ..
                } => requeue.push((
                    id,
                    Queued {
                        op,
                        reply,
                        retry: true,
                    },
                )),
                Pending::Request { reply, .. } => {
                    let _ = reply.send(Err(ClientError::Disconnected {
                        code: lost.code,
                        reason: lost.reason.clone(),
                    }));
                }
                Pending::Unsubscribe { reply: Some(reply) } => {
                    // The server forgets every subscription of a closed connection.
                    let _ = reply.send(Ok(()));
                }
                Pending::Unsubscribe { reply: None }
                | Pending::Connect
                | Pending::Subscribe { .. } => {}
            }
        }
        requeue.sort_by_key(|(id, _)| *id);
        for (_, q) in requeue.into_iter().rev() {
            self.queue.push_front(q);
        }
        for entry in self.subs.values_mut() {
            entry.state = SubState::Idle;
        }
    }

    /// The task ends: fail everything still waiting. `lost` is the terminal
    /// disconnect, `None` for `close()` or dropped handles.
    fn finish(&mut self, lost: Option<&Lost>) {
        self.shared.set_client_id(None);
        let error = || match lost {
            Some(l) => ClientError::Disconnected {
                code: l.code,
                reason: l.reason.clone(),
            },
            None => ClientError::Closed,
        };
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error()));
        }
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::Request { reply, .. } => {
                    let _ = reply.send(Err(error()));
                }
                Pending::Unsubscribe { reply: Some(reply) } => {
                    let _ = reply.send(Ok(()));
                }
                _ => {}
            }
        }
        for q in self.queue.drain(..) {
            let _ = q.reply.send(Err(error()));
        }
        for (_, entry) in self.subs.drain() {
            if let Some(waiter) = entry.waiter {
                let _ = waiter.send(Err(error()));
            }
            if let Some(l) = lost {
                let _ = entry.events.send(SubEvent::Unsubscribed {
                    code: l.code.unwrap_or(0),
                    reason: l.reason.clone(),
                });
            }
        }
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                ToTask::Request { reply, .. } => {
                    let _ = reply.send(Err(error()));
                }
                ToTask::Subscribe { reply, .. } | ToTask::Unsubscribe { reply, .. } => {
                    let _ = reply.send(Err(error()));
                }
                ToTask::Close(ack) => {
                    let _ = ack.send(());
                }
                ToTask::SubDropped { .. } => {}
            }
        }
        if let Some(ack) = self.close_ack.take() {
            let _ = ack.send(());
        }
        debug!("client task ended");
    }
}

/// A push's effect on a subscription's event stream.
fn apply_push(tracker: &mut Tracker, push: Push) -> Vec<SubEvent> {
    match push {
        Push::Pub {
            epoch,
            publication,
            latest,
            ..
        } => tracker.on_publication(epoch.as_deref(), publication, latest),
        Push::Join { info, .. } => vec![SubEvent::Join(info)],
        Push::Leave { info, .. } => vec![SubEvent::Leave(info)],
        Push::Receipt(r) => vec![SubEvent::Receipt(r)],
        _ => Vec::new(),
    }
}

/// The largest output a delta may declare: no payload is larger.
const MAX_DELTA_OUTPUT: usize = 64 * 1024 * 1024;

/// Applies a Fossil delta; None when it does not apply (the crate
/// panics on some malformed deltas, so that is caught too; it allocates
/// what the delta declares, so that is bounded first).
fn apply_delta(base: &str, delta: &str) -> Option<String> {
    // The header: the output size in Fossil's base-64 digits, then `\n`.
    let (size, _) = delta.split_once('\n')?;
    let declared = size.bytes().try_fold(0usize, |n, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'_' => 36,
            b'a'..=b'z' => b - b'a' + 37,
            b'~' => 63,
            _ => return None,
        };
        n.checked_mul(64)?.checked_add(usize::from(digit))
    })?;
    if size.is_empty() || declared > MAX_DELTA_OUTPUT {
        return None;
    }
    let applied = std::panic::catch_unwind(|| fossil_delta::apply(base, delta.as_bytes()));
    String::from_utf8(applied.ok()?.ok()?).ok()
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

async fn close_gracefully(ws: &mut Ws) {
    let close = async {
        ws.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), ""))
            .await?;
        // Wait for the server's close frame (or the end of the stream).
        while let Some(msg) = ws.next().await {
            msg?;
        }
        Ok::<(), tokio_websockets::Error>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(CLOSE_WAIT, close).await {
        debug!(error = %e, "close handshake failed");
    }
}
