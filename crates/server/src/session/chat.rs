//! The client's chat commands (`cursor`, `inbox`, `members`, `keys`) and
//! the members-only rule, over the shared handlers of [`crate::chat`].

use tidings_protocol::chat::{InboxOk, KeysOk, MembersOk};
use tidings_protocol::reply::Empty;
use tidings_protocol::{Cursors, ErrorBody, ErrorCode, KeysArg, Push, encode_push};

use super::{Session, err};
use crate::chat;
use crate::config::NamespaceOptions;

impl Session {
    /// The connection's user, who must be signed in (chat is per user).
    fn chat_user(&self) -> Result<String, ErrorBody> {
        match self.user() {
            Some(u) if !u.is_empty() => Ok(u.to_string()),
            _ => Err(err(
                ErrorCode::PermissionDenied,
                "chat commands need an authenticated connection",
            )),
        }
    }

    /// In a members namespace, only members use a channel, checked at
    /// each use: a removed member's subscription may outlive the removal
    /// (its `unsub` travels), their publishing must not. An operator's
    /// observer may watch anything.
    pub(super) async fn check_member(
        &self,
        channel: &str,
        ns: &NamespaceOptions,
    ) -> Result<(), ErrorBody> {
        if !ns.members || self.observer {
            return Ok(());
        }
        chat::check_member(&self.node, channel, self.user().unwrap_or_default()).await
    }

    /// A new subscription of a small members channel starts with where
    /// its members are: a receipt per member who received anything (large
    /// groups: the next summary, within a second of a move).
    pub(super) async fn send_receipts(&self, channel: &str) {
        let Ok((_, ns)) = self.node.resolve(channel) else {
            return;
        };
        if !ns.members {
            return;
        }
        match chat::receipts::current(&self.node, channel, &ns).await {
            Ok(receipts) => {
                for r in receipts {
                    self.send(encode_push(&Push::Receipt(r)));
                }
            }
            Err(e) => tracing::warn!(channel, error = %e, "reading members' cursors failed"),
        }
    }

    pub(super) async fn cursor(
        &self,
        channel: &str,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> Result<Cursors, ErrorBody> {
        let user = self.chat_user()?;
        self.check_channel(channel)?;
        chat::cursor(&self.node, channel, &user, delivered, read).await
    }

    pub(super) async fn inbox(
        &self,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<InboxOk, ErrorBody> {
        let user = self.chat_user()?;
        chat::inbox(&self.node, &user, limit, cursor).await
    }

    pub(super) async fn members(
        &self,
        channel: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<MembersOk, ErrorBody> {
        let user = self.chat_user()?;
        self.check_channel(channel)?;
        chat::members_namespace(&self.node, channel)?;
        if !self.observer {
            chat::check_member(&self.node, channel, &user).await?;
        }
        chat::members(&self.node, channel, limit, cursor).await
    }

    pub(super) async fn keys(&self, arg: KeysArg) -> Result<KeysOrEmpty, ErrorBody> {
        let user = self.chat_user()?;
        match arg {
            KeysArg::Register {
                device,
                key,
                user: named,
            } => chat::register_key(&self.node, &user, &device, &key, named.as_deref())
                .await
                .map(|()| KeysOrEmpty::Empty(Empty {})),
            KeysArg::Users(users) => chat::keys_of(&self.node, &users)
                .await
                .map(KeysOrEmpty::Keys),
            KeysArg::Channel(channel) => {
                self.check_channel(&channel)?;
                chat::channel_keys(&self.node, &channel, &user)
                    .await
                    .map(KeysOrEmpty::Keys)
            }
        }
    }
}

/// A `keys` answer: `{}` for a registration, the keys for a lookup.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub(super) enum KeysOrEmpty {
    /// A registration's.
    Empty(Empty),
    /// A lookup's.
    Keys(KeysOk),
}
