//! Subscriptions: access, the node-level subscription, the reply with
//! recovery and presence, going live without a gap, and ending.

use std::sync::Arc;

use bytes::Bytes;
use tidings_protocol::reply::{RefreshOk, SubscribeOk};
use tidings_protocol::{
    ClientInfo, DisconnectCode, ErrorBody, ErrorCode, Publication, Push, SubscribeArg, encode_push,
};

use serde_json::json;

use super::hooks::Verdict;
use super::{PRESENCE_IN_REPLY, Session, err, internal};
use crate::auth::{TOKEN_LEEWAY_S, TokenError, unix_now};
use crate::config::WebhookEvent;
use crate::config::{ClientAccess, NamespaceOptions, SubscribeRule};
use crate::delivery::ChannelDelivery;
use crate::engine::HistoryQuery;
use crate::hub::Subscriber;
use crate::node::Node;
use crate::node::SubscribeError;

/// Bytes of recovered publications one reply may still carry
/// (`client.recovery_max_bytes`): a `connect` that subscribes many channels
/// shares one budget among them, a `subscribe` has its own.
pub(super) struct ReplyBudget {
    left: usize,
    /// Shared by several subscriptions of one `connect` reply.
    shared: bool,
}

impl ReplyBudget {
    /// The budget of one `subscribe` reply.
    pub(super) fn single(max: usize) -> Self {
        Self {
            left: max,
            shared: false,
        }
    }

    /// The budget a `connect` reply's subscriptions share.
    pub(super) fn shared(max: usize) -> Self {
        Self {
            left: max,
            shared: true,
        }
    }
}

/// Whether `arg`'s subscription gets deltas: asked, and in a namespace
/// with offsets where every publication reaches every subscriber.
fn wants_delta(arg: &SubscribeArg, ns: &NamespaceOptions) -> bool {
    arg.delta.is_some() && ns.has_history() && ChannelDelivery::of(ns).allows_delta()
}

/// Whether `page` holds every publication after `after` up to its top,
/// at most `max` of them.
fn contiguous(page: &crate::engine::HistoryPage, after: u64, max: usize) -> bool {
    let top = page.position.offset;
    let missed = top.saturating_sub(after);
    after <= top
        && missed as usize <= max
        && page.publications.len() as u64 == missed
        && page
            .publications
            .first()
            .is_none_or(|p| p.offset == Some(after + 1))
}

/// The newest publication a subscribe reply holds: what a delta
/// subscription's first live delta may build on.
pub(super) fn base_of(ok: &SubscribeOk) -> Option<u64> {
    ok.publications.as_ref()?.last()?.offset
}

/// Takes a connection out of a channel's presence; the user's last
/// connection there makes a `member_removed` webhook.
pub(super) async fn leave_presence(
    node: &Node,
    channel: &str,
    client: &str,
    user: &str,
    ns: &NamespaceOptions,
) {
    match node.engine.leave(channel, client, &node.policy(ns)).await {
        Ok(true) => node.emit(
            WebhookEvent::MemberRemoved,
            || json!({"channel": channel, "user": user, "client": client}),
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(channel, error = %e, "presence removal failed"),
    }
}

impl Session {
    /// Registers a subscription (buffering) and builds its reply, with
    /// recovered publications within `budget`.
    pub(super) async fn subscribe(
        &mut self,
        arg: &SubscribeArg,
        budget: &mut ReplyBudget,
    ) -> Result<(Arc<Subscriber>, SubscribeOk), ErrorBody> {
        let node = self.node.clone();
        let ns = &self.check_channel(&arg.channel)?;
        let identity = self.check_access(ns)?;
        let presence_info = ClientInfo {
            client: self.client.clone(),
            user: identity.user.clone(),
            info: identity.info.clone(),
        };
        if self.subs.contains_key(&arg.channel) {
            return Err(err(ErrorCode::AlreadySubscribed, "already subscribed"));
        }
        self.check_member(&arg.channel, ns).await?;
        if self.subs.len() >= node.config.client.max_subscriptions {
            return Err(err(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection",
                    node.config.client.max_subscriptions
                ),
            ));
        }
        let (expiry, proxied) = self.admit(arg, ns).await?;
        let sub = node
            .subscribe(
                &arg.channel,
                self.conn,
                self.outbox.clone(),
                self.control.clone(),
                wants_delta(arg, ns),
            )
            .await
            .map_err(|e| match e {
                SubscribeError::AlreadySubscribed => {
                    err(ErrorCode::AlreadySubscribed, "already subscribed")
                }
                SubscribeError::Engine(e) => internal(e),
            })?;
        self.subs.insert(arg.channel.clone(), sub.clone());
        if let Some(at) = expiry {
            self.sub_expiry.insert(arg.channel.clone(), at);
        }
        if proxied {
            self.proxied_subs.insert(arg.channel.clone());
        }
        match self.answer_subscribe(arg, ns, budget).await {
            Ok(mut ok) if ns.presence && !self.transient => {
                let show = ns.presence_access == ClientAccess::Subscribers;
                let engine = &node.engine;
                let policy = node.policy(ns);
                let joined = async {
                    if engine.join(&arg.channel, &presence_info, &policy).await? {
                        node.emit(WebhookEvent::MemberAdded, || {
                            json!({"channel": arg.channel, "user": presence_info.user, "client": presence_info.client})
                        });
                    }
                    // Small rooms get who is here in the reply; large ones page.
                    let (clients, _) = engine.stats(&arg.channel).await?;
                    if !show || clients as usize > PRESENCE_IN_REPLY {
                        return Ok(None);
                    }
                    engine
                        .list(&arg.channel, None, PRESENCE_IN_REPLY)
                        .await
                        .map(|(members, _)| Some(members))
                };
                match joined.await {
                    Ok(members) => {
                        ok.presence = members;
                        Ok((sub, ok))
                    }
                    Err(e) => {
                        self.drop_subscription(&arg.channel).await;
                        Err(internal(e))
                    }
                }
            }
            Ok(ok) => Ok((sub, ok)),
            Err(e) => {
                self.drop_subscription(&arg.channel).await;
                Err(e)
            }
        }
    }

    /// Whether this connection may subscribe `arg.channel`: the namespace's
    /// subscribe hook decides when it has one, else (or when it fails with
    /// `proxy_fail = "rules"`) its rules. Returns when the subscription
    /// expires and whether the hook allowed it.
    async fn admit(
        &self,
        arg: &SubscribeArg,
        ns: &NamespaceOptions,
    ) -> Result<(Option<u64>, bool), ErrorBody> {
        if self.observer {
            return Ok((None, false));
        }
        if let Some(url) = &ns.subscribe_proxy {
            let channel = Some(arg.channel.as_str());
            match self
                .ask_backend("subscribe", url, ns.proxy_fail, channel, None)
                .await?
            {
                Verdict::Allow(allow) => return Ok((allow.expire_at, true)),
                Verdict::FailedOpen => return Ok((None, false)),
                Verdict::Rules => {}
            }
        }
        // A Pusher app's private and presence channels: authorised by the
        // Pusher transport (the app's signature), else as private channels.
        let pusher_private = crate::pusher::is_private(&self.node.config, &arg.channel);
        if pusher_private && self.authorized.contains(&arg.channel) {
            return Ok((None, false));
        }
        if ns.subscribe_rule() != SubscribeRule::Token && !pusher_private {
            return Ok((None, false));
        }
        // A private channel: a channel token for this user and channel.
        let token = arg.token.as_deref().ok_or_else(|| {
            err(
                ErrorCode::PermissionDenied,
                "this channel needs a channel token",
            )
        })?;
        Ok((self.check_channel_token(token, &arg.channel).await?, false))
    }

    /// Checks a channel token for this connection's user and `channel`;
    /// returns its expiry (Unix seconds), if it has one.
    async fn check_channel_token(
        &self,
        token: &str,
        channel: &str,
    ) -> Result<Option<u64>, ErrorBody> {
        let claims = self
            .node
            .verify_channel_token(token)
            .await
            .map_err(|e| match e {
                TokenError::Expired => err(ErrorCode::TokenExpired, "channel token expired"),
                e => err(ErrorCode::PermissionDenied, e.into_message()),
            })?;
        if claims.channel != channel || Some(claims.sub.as_str()) != self.user() {
            return Err(err(
                ErrorCode::PermissionDenied,
                "the channel token is for another channel or user",
            ));
        }
        Ok(claims.exp)
    }

    /// `refresh` with a `channel`: a new channel token for that subscription.
    pub(super) async fn refresh_channel(
        &mut self,
        token: &str,
        channel: &str,
    ) -> Result<RefreshOk, ErrorBody> {
        if !self.subs.contains_key(channel) {
            return Err(err(ErrorCode::NotSubscribed, "not subscribed"));
        }
        let (_, ns) = self.node.resolve(channel)?;
        if ns.subscribe_rule() != SubscribeRule::Token {
            return Err(err(
                ErrorCode::BadRequest,
                "this channel takes no channel token",
            ));
        }
        let exp = self.check_channel_token(token, channel).await?;
        match exp {
            Some(at) => self.sub_expiry.insert(channel.to_string(), at),
            None => self.sub_expiry.remove(channel),
        };
        Ok(RefreshOk {
            expires_in: exp.map(|e| e.saturating_sub(unix_now())),
        })
    }

    /// Ends subscriptions whose channel token has run out (with the
    /// leeway), each with `unsub` 3005: a new channel token subscribes again.
    pub(super) async fn expire_subscriptions(&mut self, now: u64) {
        let expired: Vec<String> = self
            .sub_expiry
            .iter()
            .filter(|(_, at)| at.saturating_add(TOKEN_LEEWAY_S) <= now)
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in expired {
            let reason = match self.refresh_subscription(&channel, now).await {
                Ok(()) => continue,
                Err(reason) => reason,
            };
            if self.drop_subscription(&channel).await {
                self.send(encode_push(&Push::Unsub {
                    channel,
                    code: DisconnectCode::TOKEN_EXPIRED.0,
                    reason,
                }));
            }
        }
    }

    /// An expired subscription: the sub_refresh hook may extend one the
    /// subscribe hook allowed. Err with the reason it ends.
    async fn refresh_subscription(&mut self, channel: &str, now: u64) -> Result<(), String> {
        let expired = || "channel token expired".to_string();
        let url = match self.node.resolve(channel) {
            Ok((_, ns)) if self.proxied_subs.contains(channel) => {
                ns.sub_refresh_proxy.clone().map(|url| (url, ns.proxy_fail))
            }
            _ => None,
        };
        let Some((url, fail)) = url else {
            return Err(expired());
        };
        let verdict = self
            .ask_backend("sub_refresh", &url, fail, Some(channel), None)
            .await;
        let (until, _) = super::hooks::renewal(verdict, now).map_err(|e| e.message)?;
        match until {
            Some(at) => self.sub_expiry.insert(channel.to_string(), at),
            None => self.sub_expiry.remove(channel),
        };
        Ok(())
    }

    pub(super) async fn answer_subscribe(
        &self,
        arg: &SubscribeArg,
        ns: &NamespaceOptions,
        budget: &mut ReplyBudget,
    ) -> Result<SubscribeOk, ErrorBody> {
        let delta = wants_delta(arg, ns);
        let mut ok = self.recover(arg, ns, budget).await?;
        if delta {
            // Every payload as text: the exact bytes the next delta builds on.
            for p in ok.publications.iter_mut().flatten() {
                p.data = crate::delta::as_text(&p.data);
            }
            ok.delta = true;
        }
        Ok(ok)
    }

    /// The subscribe reply's position and recovery: the publications after
    /// `since`, else (or when asked) the latest snapshot and those after it.
    async fn recover(
        &self,
        arg: &SubscribeArg,
        ns: &NamespaceOptions,
        budget: &mut ReplyBudget,
    ) -> Result<SubscribeOk, ErrorBody> {
        let engine = &self.node.engine;
        if !ns.has_history() {
            return Ok(SubscribeOk::default());
        }
        let policy = self.node.policy(ns);
        // Recovery reads history: where clients may not read it, they may
        // not recover either.
        let barred =
            (arg.since.is_some() || arg.snapshot) && ns.recovery_rule() == ClientAccess::None;
        if barred && arg.strict {
            return Err(err(
                ErrorCode::Unrecoverable,
                "clients may not recover in this namespace",
            ));
        }
        let Some(since) = arg.since.as_ref().filter(|_| !barred) else {
            if arg.snapshot
                && !barred
                && let Some(ok) = self.snapshot_reply(arg, &policy, budget, true).await?
            {
                return Ok(ok);
            }
            let top = engine
                .position(&arg.channel, &policy)
                .await
                .map_err(internal)?;
            return Ok(SubscribeOk {
                offset: Some(top.offset),
                epoch: Some(top.epoch),
                recovered: barred.then_some(false),
                ..Default::default()
            });
        };
        let max = self.node.config.client.recovery_max;
        let page = engine
            .read(
                &arg.channel,
                HistoryQuery {
                    after: Some(since.offset),
                    limit: Some(max + 1),
                    reverse: false,
                },
                &policy,
            )
            .await
            .map_err(internal)?;
        // Recovered only when every publication after `since` is here, in one epoch.
        let mut complete =
            page.position.epoch == since.epoch && contiguous(&page, since.offset, max);
        let top = page.position;
        let size: usize = page.publications.iter().map(|p| p.approx_size()).sum();
        let max_bytes = self.node.config.client.recovery_max_bytes;
        if complete && size > budget.left {
            if budget.shared && size <= max_bytes {
                // Fits a reply of its own: the client subscribes it again.
                return Err(ErrorBody {
                    temporary: true,
                    ..err(
                        ErrorCode::LimitExceeded,
                        "the connect reply is full: subscribe to this channel with its own command",
                    )
                });
            }
            complete = false;
        }
        if complete {
            budget.left -= size;
        }
        if !complete && arg.strict {
            return Err(err(
                ErrorCode::Unrecoverable,
                "the position cannot be recovered",
            ));
        }
        if !complete && let Some(ok) = self.snapshot_reply(arg, &policy, budget, false).await? {
            return Ok(SubscribeOk {
                recovered: Some(false),
                ..ok
            });
        }
        Ok(SubscribeOk {
            offset: Some(top.offset),
            epoch: Some(top.epoch),
            recovered: Some(complete),
            publications: complete.then(|| {
                page.publications
                    .iter()
                    .map(|p| Publication::clone(p))
                    .collect()
            }),
            ..Default::default()
        })
    }

    /// The channel's latest snapshot and every publication after it, when
    /// history still holds them all within the reply's limits; else None.
    /// `from_start`: a channel without a snapshot starts at its first
    /// publication instead (the whole state while history holds it all).
    async fn snapshot_reply(
        &self,
        arg: &SubscribeArg,
        policy: &crate::engine::ChannelPolicy,
        budget: &mut ReplyBudget,
        from_start: bool,
    ) -> Result<Option<SubscribeOk>, ErrorBody> {
        let engine = &self.node.engine;
        let snapshot = engine
            .snapshot(&arg.channel, policy)
            .await
            .map_err(internal)?;
        let (snapshot, at) = match snapshot.and_then(|s| s.offset.map(|o| (s, o))) {
            Some((s, at)) => (Some(s), at),
            None if from_start => (None, 0),
            None => return Ok(None),
        };
        let max = self.node.config.client.recovery_max;
        let query = HistoryQuery {
            after: Some(at),
            limit: Some(max + 1),
            reverse: false,
        };
        let page = engine
            .read(&arg.channel, query, policy)
            .await
            .map_err(internal)?;
        let complete = contiguous(&page, at, max);
        let top = page.position;
        let size: usize = snapshot.as_ref().map_or(0, |s| s.approx_size())
            + page
                .publications
                .iter()
                .map(|p| p.approx_size())
                .sum::<usize>();
        if !complete || size > budget.left {
            return Ok(None);
        }
        budget.left -= size;
        let publications = snapshot
            .iter()
            .chain(&page.publications)
            .map(|p| Publication::clone(p))
            .collect();
        Ok(Some(SubscribeOk {
            offset: Some(top.offset),
            epoch: Some(top.epoch),
            publications: Some(publications),
            ..Default::default()
        }))
    }

    pub(super) async fn go_live(
        &mut self,
        channel: &str,
        sub: &Subscriber,
        reply: Option<Bytes>,
        top: Option<u64>,
        base: Option<u64>,
    ) {
        if sub.go_live(reply, top, base).is_err() {
            // Live publications skipped an offset: the client must recover.
            tracing::warn!(
                channel,
                "gap while subscribing; ending the subscription with 3003"
            );
            self.drop_subscription(channel).await;
            self.send(encode_push(&Push::Unsub {
                channel: channel.to_string(),
                code: DisconnectCode::INSUFFICIENT_STATE.0,
                reason: DisconnectCode::INSUFFICIENT_STATE.reason().into(),
            }));
            return;
        }
        self.send_receipts(channel).await;
    }

    pub(super) async fn drop_subscription(&mut self, channel: &str) -> bool {
        if !self.subs.contains_key(channel) {
            return false;
        }
        // Forgotten only once the node let go: a session dropped meanwhile
        // still unsubscribes (see `Drop`).
        self.node.unsubscribe(channel, self.conn).await;
        self.subs.remove(channel);
        self.sub_expiry.remove(channel);
        self.proxied_subs.remove(channel);
        if let Ok((_, ns)) = self.node.resolve(channel)
            && ns.presence
            && !self.transient
        {
            let user = self.user().unwrap_or_default();
            leave_presence(&self.node, channel, &self.client, user, &ns).await;
        }
        true
    }

    pub(super) async fn unsubscribe(&mut self, channel: &str) -> Result<(), ErrorBody> {
        if self.drop_subscription(channel).await {
            Ok(())
        } else {
            Err(err(ErrorCode::NotSubscribed, "not subscribed"))
        }
    }
}
