//! Typed commands for transports that speak another protocol (Pusher):
//! the transport authenticates and authorises by its own rules, then calls
//! these — the same checks, limits and engine paths as Tidings' commands,
//! with no JSON built and parsed back.

use bytes::Bytes;
use serde_json::value::RawValue;
use tidings_protocol::reply::SubscribeOk;
use tidings_protocol::{Command, CommandKind, ErrorBody, ErrorCode, SubscribeArg};

use super::subscribe::ReplyBudget;
use super::{Identity, Session, err};

impl Session {
    /// Opens the connection the way a client's `connect` (id 0) would: its
    /// token, else the connect hook, else anonymous; the answer is queued.
    /// Sent by the server for the client (an HTTP action, an SSE stream),
    /// it takes nothing from the connection's command rate.
    pub async fn connect_with(&mut self, token: Option<String>) {
        let kind = CommandKind::Connect {
            token,
            name: None,
            version: None,
            subscribe: Vec::new(),
        };
        self.handle(Command { id: 0, kind }).await;
    }

    /// Opens the connection as `user` ("" for anonymous), whom the
    /// transport has authenticated.
    pub async fn open_as(
        &mut self,
        user: String,
        info: Option<Box<RawValue>>,
    ) -> Result<(), ErrorBody> {
        let identity = Identity {
            anonymous: user.is_empty(),
            user,
            info,
            expires_at: None,
            proxied: false,
        };
        self.establish(identity).await
    }

    /// An anonymous connection becomes `user` (a Pusher presence
    /// subscription names its member); the same user again changes only
    /// the info. Another user is refused: one connection is one user.
    pub async fn become_user(
        &mut self,
        user: &str,
        info: Option<Box<RawValue>>,
    ) -> Result<(), ErrorBody> {
        let current = self.user().unwrap_or_default();
        if current == user {
            if let Some(identity) = self.identity.as_mut() {
                identity.info = info;
            }
            return Ok(());
        }
        if !current.is_empty() {
            return Err(err(
                ErrorCode::PermissionDenied,
                "this connection is already another user",
            ));
        }
        if !self.node.claim_user(self.conn, user).await {
            return Err(err(
                ErrorCode::LimitExceeded,
                "this user has the most connections allowed",
            ));
        }
        if let Some(identity) = self.identity.as_mut() {
            identity.user = user.to_string();
            identity.info = info;
            identity.anonymous = false;
        }
        Ok(())
    }

    /// Subscribes `channel` (no recovery); `reply` makes the transport's
    /// answer from the subscribe reply, queued before the channel's first
    /// push.
    pub async fn subscribe_then(
        &mut self,
        channel: &str,
        reply: impl FnOnce(&SubscribeOk) -> Bytes,
    ) -> Result<(), ErrorBody> {
        let arg = SubscribeArg {
            channel: channel.to_string(),
            ..Default::default()
        };
        let mut budget = ReplyBudget::single(self.node.config.client.recovery_max_bytes);
        let (sub, ok) = self.subscribe(&arg, &mut budget).await?;
        let answer = reply(&ok);
        let base = super::subscribe::base_of(&ok);
        self.go_live(channel, &sub, Some(answer), ok.offset, base)
            .await;
        Ok(())
    }

    /// The transport has authorised this connection for `channel` (a
    /// private or presence channel of a Pusher app) by its own protocol.
    pub fn authorize(&mut self, channel: &str) {
        self.authorized.insert(channel.to_string());
    }

    /// Leaves `channel`.
    pub async fn unsubscribe_from(&mut self, channel: &str) -> Result<(), ErrorBody> {
        self.unsubscribe(channel).await
    }

    /// Whether the connection is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.subs.contains_key(channel)
    }

    /// Takes one command of the connection's rate
    /// (`client.max_commands_per_second`); false when over it.
    pub fn allow_command(&mut self) -> bool {
        self.take_command_token()
    }

    /// Queues a message of the transport's own protocol.
    pub fn send_raw(&self, bytes: Bytes) {
        self.send(bytes);
    }
}
