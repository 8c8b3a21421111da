//! Who a connection is: `connect` (its token, else the backend's connect
//! hook, else anonymous), `refresh` with a new token, and the refresh hook
//! when a hook-admitted connection expires.

use serde_json::json;
use serde_json::value::RawValue;
use tidings_protocol::reply::{ConnectOk, RefreshOk, SubscribeResult};
use tidings_protocol::{
    Disconnect, DisconnectCode, ErrorBody, ErrorCode, SubscribeArg, encode_ok_reply,
};

use super::hooks::{self, Verdict};
use super::subscribe::ReplyBudget;
use super::{Identity, Session, err};
use crate::auth::{TokenError, unix_now};
use crate::config::WebhookEvent;

impl Session {
    /// Who the connection is: from its token, else from the connect hook
    /// (when configured), else anonymous. Adds the channels the token or
    /// the hook subscribe it to; returns the hook's data for the client. On
    /// refusal the error is replied and the connection closed.
    async fn authenticate(
        &mut self,
        id: u32,
        token: Option<String>,
        subscribe: &mut Vec<SubscribeArg>,
    ) -> Option<(Identity, Option<Box<RawValue>>)> {
        let mut add = |channels: Option<Vec<String>>| {
            for channel in channels.unwrap_or_default() {
                if !subscribe.iter().any(|s| s.channel == channel) {
                    subscribe.push(SubscribeArg {
                        channel,
                        ..Default::default()
                    });
                }
            }
        };
        let anonymous = Identity {
            user: String::new(),
            info: None,
            expires_at: None,
            anonymous: true,
            proxied: false,
        };
        if let Some(token) = token {
            return match self.node.verify_token(&token).await {
                Ok(claims) => {
                    // The token's `channels` are subscribed server-side.
                    add(claims.channels);
                    let identity = Identity {
                        user: claims.sub,
                        info: claims.info,
                        expires_at: claims.exp,
                        anonymous: false,
                        proxied: false,
                    };
                    Some((identity, None))
                }
                Err(TokenError::Expired) => {
                    self.reply_error(id, &err(ErrorCode::TokenExpired, "token expired"));
                    self.disconnect(DisconnectCode::TOKEN_EXPIRED);
                    None
                }
                Err(e) => {
                    self.reply_error(id, &err(ErrorCode::PermissionDenied, e.into_message()));
                    self.disconnect(DisconnectCode::INVALID_TOKEN);
                    None
                }
            };
        }
        let Some(url) = self.node.config.proxy.connect.clone() else {
            return Some((anonymous, None));
        };
        let fail = self.node.config.proxy.fail;
        match self.ask_backend("connect", &url, fail, None, None).await {
            Ok(Verdict::Allow(allow)) => {
                add(allow.channels);
                let user = allow.user.unwrap_or_default();
                let identity = Identity {
                    anonymous: user.is_empty(),
                    user,
                    info: allow.info,
                    expires_at: allow.expire_at,
                    proxied: true,
                };
                Some((identity, allow.data))
            }
            Ok(Verdict::FailedOpen | Verdict::Rules) => Some((anonymous, None)),
            Err(e) => {
                self.reply_error(id, &e);
                let code = if e.temporary {
                    DisconnectCode::FORCE_RECONNECT
                } else {
                    DisconnectCode::FORBIDDEN
                };
                self.close(Disconnect {
                    reason: e.message,
                    ..Disconnect::new(code, None)
                });
                None
            }
        }
    }

    pub(super) async fn connect(
        &mut self,
        id: u32,
        token: Option<String>,
        mut subscribe: Vec<SubscribeArg>,
    ) {
        let Some((identity, data)) = self.authenticate(id, token, &mut subscribe).await else {
            return;
        };
        let expires_in = identity.expires_at.map(|e| e.saturating_sub(unix_now()));
        let user = identity.user.clone();
        if let Err(e) = self.establish(identity).await {
            self.reply_error(id, &e);
            self.disconnect(DisconnectCode::CONNECTION_LIMIT);
            return;
        }

        // Subscribe everything asked while buffering, queue the connect reply,
        // then let each channel go live: no push can precede the reply.
        let mut results = Vec::with_capacity(subscribe.len());
        let mut live = Vec::new();
        let mut budget = ReplyBudget::shared(self.node.config.client.recovery_max_bytes);
        for arg in &subscribe {
            match self.subscribe(arg, &mut budget).await {
                Ok((sub, ok)) => {
                    live.push((
                        arg.channel.clone(),
                        sub,
                        ok.offset,
                        super::subscribe::base_of(&ok),
                    ));
                    results.push(SubscribeResult {
                        channel: arg.channel.clone(),
                        ok: Some(ok),
                        error: None,
                    });
                }
                Err(e) => {
                    self.node.metrics.command_error(e.code);
                    results.push(SubscribeResult {
                        channel: arg.channel.clone(),
                        ok: None,
                        error: Some(e),
                    })
                }
            }
        }
        let ok = ConnectOk {
            client: self.client.clone(),
            user,
            ping_interval: self.node.config.client.ping_interval.as_secs().max(1),
            expires_in,
            subscribed: (!subscribe.is_empty()).then_some(results),
            data,
        };
        self.send(encode_ok_reply(id, &ok));
        for (channel, sub, top, base) in live {
            self.go_live(&channel, &sub, None, top, base).await;
        }
    }

    pub(super) async fn refresh(&mut self, token: &str) -> Result<RefreshOk, ErrorBody> {
        let claims = self.node.verify_token(token).await.map_err(|e| match e {
            TokenError::Expired => err(ErrorCode::TokenExpired, "token expired"),
            e => err(ErrorCode::PermissionDenied, e.into_message()),
        })?;
        let Some(identity) = self.identity.as_mut() else {
            return Err(err(ErrorCode::BadRequest, "not connected"));
        };
        if identity.anonymous || claims.sub != identity.user {
            return Err(err(
                ErrorCode::PermissionDenied,
                "a refresh token must be for the same user",
            ));
        }
        identity.expires_at = claims.exp;
        Ok(RefreshOk {
            expires_in: claims.exp.map(|e| e.saturating_sub(unix_now())),
        })
    }

    /// Makes `identity` the connection's: counted against the user's limit,
    /// seen now, told to the webhooks.
    pub(super) async fn establish(&mut self, identity: Identity) -> Result<(), ErrorBody> {
        if !self.node.claim_user(self.conn, &identity.user).await {
            self.node.metrics.limit_rejected("user");
            return Err(err(
                ErrorCode::LimitExceeded,
                "this user has the most connections allowed",
            ));
        }
        let user = identity.user.clone();
        self.identity = Some(identity);
        self.touch().await;
        if !self.transient {
            self.node.emit(
                WebhookEvent::ClientConnected,
                || json!({"client": self.client, "user": user, "transport": self.peer.transport}),
            );
        }
        Ok(())
    }

    /// An expired connection: the refresh hook may extend one the connect
    /// hook admitted; any other ends (3005).
    pub(super) async fn refresh_by_backend(&mut self, now: u64) {
        let url = match (&self.identity, &self.node.config.proxy.refresh) {
            (Some(identity), Some(url)) if identity.proxied => url.clone(),
            _ => return self.disconnect(DisconnectCode::TOKEN_EXPIRED),
        };
        let fail = self.node.config.proxy.fail;
        let verdict = self.ask_backend("refresh", &url, fail, None, None).await;
        let Some(identity) = self.identity.as_mut() else {
            return;
        };
        match hooks::renewal(verdict, now) {
            Ok((until, info)) => {
                identity.expires_at = until;
                if let Some(info) = info {
                    identity.info = Some(info);
                }
            }
            Err(e) => {
                let code = if e.temporary {
                    DisconnectCode::FORCE_RECONNECT
                } else {
                    DisconnectCode::TOKEN_EXPIRED
                };
                self.close(Disconnect {
                    reason: e.message,
                    ..Disconnect::new(code, None)
                });
            }
        }
    }
}
