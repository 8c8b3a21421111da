//! The client's publish, history and presence commands: its checks and
//! limits, then the handlers shared with the server API.

use std::time::Instant;

use tidings_protocol::reply::{HistoryOk, PresenceOk, PresenceStatsOk, PublishOk};
use tidings_protocol::{ClientInfo, ErrorBody, ErrorCode, SinceArg};

use super::hooks::Verdict;
use super::shared::{history, presence_list, presence_stats, publish};
use super::{Session, err};
use crate::config::{ClientPublish, SubscribeRule};
use crate::engine::PublishRequest;
use crate::hooks::Allow;

impl Session {
    /// `publish`: `request.info` is set to this connection's.
    pub(super) async fn publish(
        &mut self,
        channel: &str,
        mut request: PublishRequest,
    ) -> Result<PublishOk, ErrorBody> {
        let ns = &self.check_channel(channel)?;
        self.check_member(channel, ns).await?;
        let identity = self.check_access(ns)?;
        let private = ns.subscribe_rule() == SubscribeRule::Token
            || crate::pusher::is_private(&self.node.config, channel);
        if private && !self.subs.contains_key(channel) {
            return Err(err(
                ErrorCode::PermissionDenied,
                "subscribe with a channel token before publishing",
            ));
        }
        match ns.client_publish {
            ClientPublish::None => {
                return Err(err(
                    ErrorCode::PermissionDenied,
                    "clients may not publish in this namespace",
                ));
            }
            // In a members namespace, membership (checked above) is enough.
            ClientPublish::Subscribers
                if !self.stateless && !ns.members && !self.subs.contains_key(channel) =>
            {
                return Err(err(
                    ErrorCode::PermissionDenied,
                    "subscribe to the channel before publishing",
                ));
            }
            _ => {}
        }
        request.info = Some(ClientInfo {
            client: self.client.clone(),
            user: identity.user.clone(),
            info: identity.info.clone(),
        });
        if ns.client_publish_rate > 0 {
            // A fixed one-second window per connection and channel (typing, cursors).
            let now = Instant::now();
            if self.publish_window.len() > 64 {
                self.publish_window
                    .retain(|_, (start, _)| now.duration_since(*start).as_secs() < 1);
            }
            let window = self
                .publish_window
                .entry(channel.to_string())
                .or_insert((now, 0));
            if now.duration_since(window.0).as_secs() >= 1 {
                *window = (now, 0);
            }
            if window.1 >= ns.client_publish_rate {
                return Err(err(
                    ErrorCode::RateLimited,
                    format!(
                        "at most {} publications per second in this channel",
                        ns.client_publish_rate
                    ),
                ));
            }
            window.1 += 1;
        }
        if let Some(url) = &ns.publish_proxy {
            let verdict = self
                .ask_backend(
                    "publish",
                    url,
                    ns.proxy_fail,
                    Some(channel),
                    Some(&request.data),
                )
                .await?;
            // What the backend rewrote is what subscribers get.
            if let Verdict::Allow(Allow {
                data: Some(data), ..
            }) = verdict
            {
                request.data = data;
            }
        }
        publish(&self.node, channel, ns, request).await
    }

    pub(super) async fn history(
        &self,
        channel: &str,
        since: Option<SinceArg>,
        limit: Option<u32>,
        reverse: bool,
    ) -> Result<HistoryOk, ErrorBody> {
        let ns = &self.check_read(channel, |ns| ns.history)?;
        self.check_member(channel, ns).await?;
        history(&self.node, channel, ns, since, limit, reverse).await
    }

    pub(super) async fn presence(
        &self,
        channel: &str,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<PresenceOk, ErrorBody> {
        let ns = &self.check_read(channel, |ns| ns.presence_access)?;
        self.check_member(channel, ns).await?;
        presence_list(&self.node, channel, ns, limit, cursor).await
    }

    pub(super) async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsOk, ErrorBody> {
        let ns = &self.check_read(channel, |ns| ns.presence_access)?;
        self.check_member(channel, ns).await?;
        presence_stats(&self.node, channel, ns).await
    }
}
