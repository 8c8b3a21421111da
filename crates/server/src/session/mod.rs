//! One connection's state machine, independent of the transport:
//! authentication, subscriptions, command handling, limits — one concern a
//! file: [`connect`] (who the connection is), [`access`] (who may use
//! what), [`subscribe`] (subscriptions and
//! recovery), [`commands`] (the client's publish, history and presence,
//! with their limits), [`shared`] (the typed handlers the server API calls
//! too), [`hooks`] (asking the backend), [`typed`] (the same commands,
//! typed, for transports of another protocol).

mod access;
mod chat;
mod commands;
mod connect;
mod hooks;
mod shared;
mod subscribe;
mod typed;

use subscribe::ReplyBudget;

pub(crate) use shared::internal;
pub use shared::{history, last_seen, presence_list, presence_stats, publish};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use tidings_protocol::reply::Empty;
use tidings_protocol::{
    ClientInfo, Command, CommandKind, Disconnect, DisconnectCode, ErrorBody, ErrorCode, Push,
    decode_commands, encode_error_reply, encode_ok_reply, encode_push,
};

use crate::auth::{TOKEN_LEEWAY_S, unix_now};
use crate::config::WebhookEvent;
use crate::engine::PublishRequest;
use crate::hooks::Peer;
use crate::hub::{ConnId, Subscriber};
use crate::node::{ConnHandle, Control, Mailbox, Node};
use crate::outbox::{Outbox, Pushed};

/// Longest timer set for a token's expiry (ten years).
const MAX_TIMER_S: u64 = 10 * 365 * 24 * 3600;
/// Rooms up to this size list who is here in the subscribe reply.
const PRESENCE_IN_REPLY: usize = 1000;
/// Default and largest page of a `presence` answer.
const PRESENCE_PAGE: usize = 100;
const PRESENCE_PAGE_MAX: usize = 1000;

struct Identity {
    user: String,
    info: Option<Box<RawValue>>,
    /// Unix seconds when the token expires.
    expires_at: Option<u64>,
    anonymous: bool,
    /// The connect hook admitted it (the refresh hook extends it).
    proxied: bool,
}

/// A connection's session.
pub struct Session {
    node: Arc<Node>,
    conn: ConnId,
    client: String,
    outbox: Arc<Outbox>,
    control: Arc<Mailbox>,
    identity: Option<Identity>,
    subs: HashMap<String, Arc<Subscriber>>,
    /// When each subscription's channel token expires (Unix seconds).
    sub_expiry: HashMap<String, u64>,
    /// Subscriptions the subscribe hook allowed (the sub_refresh hook extends them).
    proxied_subs: std::collections::HashSet<String>,
    /// Transport, address and headers, for the backend's hooks.
    peer: Peer,
    /// Channels the transport authorised by its own protocol (a Pusher
    /// app's signature on a private or presence channel).
    authorized: std::collections::HashSet<String>,
    /// A request over plain HTTP (no socket to subscribe on): in
    /// `client_publish = "subscribers"` namespaces, being allowed to
    /// subscribe is enough to publish.
    stateless: bool,
    /// A short-lived session (one long-poll): it takes no part in presence.
    transient: bool,
    /// An operator watching a channel (the admin UI's tail): it may
    /// subscribe to any channel and, being transient, is seen by no one.
    observer: bool,
    /// Publications per channel in the current one-second window (for
    /// namespaces with `client_publish_rate`).
    publish_window: HashMap<String, (Instant, u32)>,
    /// Command token bucket: (tokens, last refill).
    commands: (f64, Instant),
    /// Commands refused in a row for the rate.
    refused: u32,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message)
}

impl Session {
    /// A session for a new connection, and its control mailbox.
    pub fn new(node: Arc<Node>, outbox: Arc<Outbox>) -> (Self, Arc<Mailbox>) {
        let control = Arc::new(Mailbox::default());
        let rate = node.config.client.max_commands_per_second;
        let conn = node.next_conn_id();
        let client = format!("{}-{conn}", node.id);
        node.register(
            conn,
            ConnHandle {
                client: client.clone(),
                user: String::new(),
                outbox: outbox.clone(),
                control: control.clone(),
            },
        );
        let session = Self {
            node,
            conn,
            client,
            outbox,
            control: control.clone(),
            identity: None,
            subs: HashMap::new(),
            sub_expiry: HashMap::new(),
            proxied_subs: Default::default(),
            authorized: Default::default(),
            peer: Peer {
                transport: "websocket",
                ..Peer::default()
            },
            stateless: false,
            transient: false,
            observer: false,
            publish_window: HashMap::new(),
            commands: (f64::from(rate), Instant::now()),
            refused: 0,
        };
        (session, control)
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client
    }

    /// Takes a token for one command; false over `max_commands_per_second`
    /// (a bucket with a burst of one second's worth).
    fn take_command_token(&mut self) -> bool {
        let rate = self.node.config.client.max_commands_per_second;
        if rate == 0 {
            return true;
        }
        let now = Instant::now();
        let (tokens, at) = &mut self.commands;
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * f64::from(rate))
            .min(f64::from(rate));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Who is on the other side (for the backend's hooks).
    pub fn set_peer(&mut self, peer: Peer) {
        self.peer = peer;
    }

    /// Marks the session as serving one HTTP request (see `stateless`).
    pub fn set_stateless(&mut self) {
        self.stateless = true;
        self.transient = true;
    }

    /// Marks the session as short-lived (a long-poll): no presence.
    pub fn set_transient(&mut self) {
        self.transient = true;
    }

    /// Marks the session as an operator's observer (see `observer`).
    pub fn set_observer(&mut self) {
        self.transient = true;
        self.observer = true;
    }

    /// The authenticated user, once connected ("" when anonymous).
    pub fn user(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user.as_str())
    }

    /// Whether `connect` succeeded.
    pub fn is_connected(&self) -> bool {
        self.identity.is_some()
    }

    /// When the connection token expires (Unix seconds), if it does.
    pub fn expires_at(&self) -> Option<u64> {
        self.identity.as_ref().and_then(|i| i.expires_at)
    }

    /// When the next token of this connection runs out, leeway included:
    /// its connection token or a subscription's channel token.
    pub fn next_expiry(&self) -> Option<tokio::time::Instant> {
        let at = self
            .expires_at()
            .into_iter()
            .chain(self.sub_expiry.values().copied())
            .min()?;
        let left = at.saturating_add(TOKEN_LEEWAY_S).saturating_sub(unix_now());
        // Clamped: a token may claim an expiry past what an Instant can hold.
        Some(tokio::time::Instant::now() + std::time::Duration::from_secs(left.min(MAX_TIMER_S)))
    }

    /// Ends what has expired: the connection (disconnect 3005) when its
    /// token has, else each subscription whose channel token has (`unsub` 3005).
    pub async fn expire(&mut self) {
        let now = unix_now();
        if self
            .expires_at()
            .is_some_and(|at| at.saturating_add(TOKEN_LEEWAY_S) <= now)
        {
            self.refresh_by_backend(now).await;
            return;
        }
        self.expire_subscriptions(now).await;
    }

    fn send(&self, bytes: Bytes) {
        match self.outbox.push_reply(bytes) {
            Pushed::Queued | Pushed::Replaced(_) | Pushed::Skipped => {
                self.node.metrics.messages_out.inc();
            }
            Pushed::Overflow => {
                self.node.metrics.slow_consumer_disconnects.inc();
            }
            Pushed::Closed => {}
        }
    }

    fn reply<T: Serialize>(&self, id: u32, result: Result<T, ErrorBody>) {
        match result {
            Ok(body) => self.send(encode_ok_reply(id, &body)),
            Err(e) => self.reply_error(id, &e),
        }
    }

    fn reply_error(&self, id: u32, e: &ErrorBody) {
        self.node.metrics.command_error(e.code);
        self.send(encode_error_reply(id, e));
    }

    /// Closes the connection with `code`.
    pub fn disconnect(&self, code: DisconnectCode) {
        self.close(Disconnect::new(code, None));
    }

    /// Closes the connection with `disconnect`.
    pub fn close(&self, disconnect: Disconnect) {
        self.outbox.close(disconnect, true);
    }

    /// Whether this connection is in the presence of any channel.
    pub fn in_presence(&self) -> bool {
        !self.transient
            && self
                .subs
                .keys()
                .any(|c| self.node.resolve(c).is_ok_and(|(_, ns)| ns.presence))
    }

    /// Handles one frame of `\n`-separated commands.
    pub async fn handle_frame(&mut self, frame: &[u8]) {
        self.handle_commands(decode_commands(frame)).await
    }

    /// Handles one binary frame of `tidings.v1.msgpack` commands.
    pub async fn handle_msgpack_frame(&mut self, frame: &[u8]) {
        self.handle_commands(tidings_protocol::msgpack::decode_commands(frame))
            .await
    }

    /// Handles decoded commands in order, within the command rate.
    async fn handle_commands(
        &mut self,
        commands: impl Iterator<Item = Result<Command, tidings_protocol::DecodeError>>,
    ) {
        for command in commands {
            if self.outbox.is_closed() {
                return;
            }
            // One command at a time counts against the task's budget, so a
            // frame of thousands of commands lets other connections run.
            tokio::task::consume_budget().await;
            if !self.take_command_token() {
                let id = command
                    .as_ref()
                    .map_or_else(|e| e.id.unwrap_or(0), |c| c.id);
                self.refused += 1;
                // Refused for a whole second's worth in a row: it goes on, so go.
                let rate = self.node.config.client.max_commands_per_second;
                if self.refused > rate {
                    self.node.metrics.limit_rejected("commands");
                    self.outbox.close(
                        Disconnect {
                            reason: "command flood".into(),
                            ..Disconnect::new(DisconnectCode::BAD_REQUEST, None)
                        },
                        true,
                    );
                    return;
                }
                if !matches!(
                    &command,
                    Ok(Command {
                        kind: CommandKind::Pong,
                        ..
                    })
                ) {
                    self.reply_error(
                        id,
                        &err(
                            ErrorCode::RateLimited,
                            format!("at most {rate} commands per second"),
                        ),
                    );
                }
                continue;
            }
            self.refused = 0;
            match command {
                Ok(c) => self.handle(c).await,
                Err(e) => {
                    self.reply_error(e.id.unwrap_or(0), &err(ErrorCode::BadRequest, e.message));
                    if self.identity.is_none() {
                        self.disconnect(DisconnectCode::BAD_REQUEST);
                    }
                }
            }
        }
    }

    /// Handles one decoded command (HTTP client actions call it directly).
    pub(crate) async fn handle(&mut self, command: Command) {
        let id = command.id;
        if self.identity.is_none() {
            let CommandKind::Connect {
                token, subscribe, ..
            } = command.kind
            else {
                self.reply_error(
                    id,
                    &err(ErrorCode::BadRequest, "the first command must be `connect`"),
                );
                self.disconnect(DisconnectCode::BAD_REQUEST);
                return;
            };
            return self.connect(id, token, subscribe).await;
        }
        match command.kind {
            CommandKind::Connect { .. } => {
                self.reply_error(id, &err(ErrorCode::BadRequest, "already connected"))
            }
            CommandKind::Subscribe(arg) => {
                let mut budget = ReplyBudget::single(self.node.config.client.recovery_max_bytes);
                match self.subscribe(&arg, &mut budget).await {
                    Ok((sub, ok)) => {
                        let reply = encode_ok_reply(id, &ok);
                        let base = subscribe::base_of(&ok);
                        self.go_live(&arg.channel, &sub, Some(reply), ok.offset, base)
                            .await
                    }
                    Err(e) => self.reply_error(id, &e),
                }
            }
            CommandKind::Unsubscribe { channel } => {
                let r = self.unsubscribe(&channel).await.map(|()| Empty {});
                self.reply(id, r)
            }
            CommandKind::Publish {
                channel,
                data,
                idempotency_key,
                tags,
                key,
                priority,
                snapshot,
            } => {
                let request = PublishRequest {
                    data,
                    info: None,
                    tags,
                    idempotency_key,
                    key,
                    priority,
                    snapshot,
                };
                let r = self.publish(&channel, request).await;
                self.reply(id, r)
            }
            CommandKind::History {
                channel,
                since,
                limit,
                reverse,
            } => {
                let r = self.history(&channel, since, limit, reverse).await;
                self.reply(id, r)
            }
            CommandKind::Presence {
                channel,
                limit,
                cursor,
            } => {
                let r = self.presence(&channel, limit, cursor).await;
                self.reply(id, r)
            }
            CommandKind::LastSeen { users } => {
                // Who was online when is for signed-in users, not anonymous ones.
                let r = match self.user() {
                    Some(u) if !u.is_empty() => last_seen(&self.node, &users).await,
                    _ => Err(err(
                        ErrorCode::PermissionDenied,
                        "last_seen needs an authenticated connection",
                    )),
                };
                self.reply(id, r)
            }
            CommandKind::PresenceStats { channel } => {
                let r = self.presence_stats(&channel).await;
                self.reply(id, r)
            }
            CommandKind::Refresh { token, channel } => {
                let r = match channel {
                    Some(channel) => self.refresh_channel(&token, &channel).await,
                    None => self.refresh(&token).await,
                };
                self.reply(id, r)
            }
            CommandKind::Cursor {
                channel,
                delivered,
                read,
            } => {
                let r = self.cursor(&channel, delivered, read).await;
                self.reply(id, r)
            }
            CommandKind::Inbox { limit, cursor } => {
                let r = self.inbox(limit, cursor.as_deref()).await;
                self.reply(id, r)
            }
            CommandKind::Members {
                channel,
                limit,
                cursor,
            } => {
                let r = self.members(&channel, limit, cursor.as_deref()).await;
                self.reply(id, r)
            }
            CommandKind::Keys(arg) => {
                let r = self.keys(arg).await;
                self.reply(id, r)
            }
            CommandKind::Pong => {}
        }
    }

    /// Handles an instruction from the server API.
    pub async fn handle_control(&mut self, control: Control) {
        match control {
            Control::Unsubscribe { channel, code } => {
                if self.drop_subscription(&channel).await {
                    self.send(encode_push(&Push::Unsub {
                        channel,
                        code,
                        reason: "unsubscribed by the server".into(),
                    }));
                }
            }
            Control::Lost {
                channel,
                subscriber,
            } => {
                // A later subscription of the same channel is not concerned.
                if self.subs.get(&channel).map(|s| s.id()) == Some(subscriber)
                    && self.drop_subscription(&channel).await
                {
                    let code = DisconnectCode::INSUFFICIENT_STATE;
                    self.send(encode_push(&Push::Unsub {
                        channel,
                        code: code.0,
                        reason: code.reason().into(),
                    }));
                }
            }
        }
    }

    /// Releases everything the connection held.
    pub async fn end(mut self) {
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.drop_subscription(&channel).await;
        }
        self.node.unregister(self.conn);
        self.touch().await;
        if self.transient {
            return;
        }
        // A socket that went without a close has the abnormal-closure code.
        let (code, reason) = self
            .outbox
            .closed_with()
            .map_or((1006, String::new()), |d| (d.code, d.reason));
        self.node.metrics.closed(code);
        if let Some(identity) = self.identity.as_ref() {
            self.node.emit(WebhookEvent::ClientDisconnected, || {
                json!({
                    "client": self.client,
                    "user": identity.user,
                    "transport": self.peer.transport,
                    "code": code,
                    "reason": reason,
                })
            });
        }
    }

    /// Records the user as seen now (at connect and at disconnect).
    async fn touch(&self) {
        if let Some(user) = self.user().filter(|u| !u.is_empty())
            && !self.transient
            && let Err(e) = self.node.engine.touch(user, crate::engine::now_ms()).await
        {
            tracing::warn!(error = %e, "recording last seen failed");
        }
    }

    /// Renews the presence leases of every subscribed channel that has presence.
    pub async fn renew_presence(&self) {
        let Some(identity) = &self.identity else {
            return;
        };
        if self.transient {
            return;
        }
        let info = ClientInfo {
            client: self.client.clone(),
            user: identity.user.clone(),
            info: identity.info.clone(),
        };
        for channel in self.subs.keys() {
            if let Ok((_, ns)) = self.node.resolve(channel)
                && ns.presence
                && let Err(e) = self
                    .node
                    .engine
                    .join(channel, &info, &self.node.policy(&ns))
                    .await
            {
                tracing::warn!(channel, error = %e, "renewing presence failed");
            }
        }
    }
}

impl Drop for Session {
    /// A session dropped without [`Session::end`] (its request was cancelled)
    /// still leaves nothing behind: subscriptions and registration go now,
    /// node-level unsubscribes and presence entries in a spawned task.
    fn drop(&mut self) {
        if self.subs.is_empty() && !self.node.is_registered(self.conn) {
            return; // ended properly
        }
        self.node.unregister(self.conn);
        let channels: Vec<String> = self.subs.drain().map(|(c, _)| c).collect();
        if channels.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            for channel in &channels {
                self.node.hub.unsubscribe(channel, self.conn);
            }
            return;
        };
        let node = self.node.clone();
        let (client, conn, transient) = (self.client.clone(), self.conn, self.transient);
        let user = self.user().unwrap_or_default().to_string();
        rt.spawn(async move {
            for channel in channels {
                node.unsubscribe(&channel, conn).await;
                if transient {
                    continue;
                }
                if let Ok((_, ns)) = node.resolve(&channel)
                    && ns.presence
                {
                    subscribe::leave_presence(&node, &channel, &client, &user, &ns).await;
                }
            }
        });
    }
}
