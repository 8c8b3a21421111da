//! Who may use what: namespaces, anonymous connections, `#user` channels,
//! history and presence reads.

use tidings_protocol::{ErrorBody, ErrorCode};

use super::{Identity, Session, err};
use crate::config::{ClientAccess, NamespaceOptions, SubscribeRule};

fn limited() -> ErrorBody {
    err(
        ErrorCode::PermissionDenied,
        "this channel is limited to other users",
    )
}

impl Session {
    /// Checks that this connection may use `ns` at all.
    pub(super) fn check_access(&self, ns: &NamespaceOptions) -> Result<&Identity, ErrorBody> {
        let identity = self
            .identity
            .as_ref()
            .ok_or_else(|| err(ErrorCode::BadRequest, "not connected"))?;
        let anonymous_ok = ns.subscribe_rule() == SubscribeRule::Anonymous;
        if identity.anonymous && !anonymous_ok && !self.node.config.dev_mode() && !self.observer {
            return Err(err(
                ErrorCode::PermissionDenied,
                "anonymous connections may not use this namespace",
            ));
        }
        Ok(identity)
    }

    /// Checks namespace access and the `#user,...` rule; returns the namespace options.
    pub(super) fn check_channel(&self, channel: &str) -> Result<NamespaceOptions, ErrorBody> {
        let (name, ns) = self.node.resolve(channel)?;
        let identity = self.check_access(&ns)?;
        if !name.user_allowed(&identity.user) && !self.observer {
            return Err(limited());
        }
        Ok(ns)
    }

    /// Checks that this connection may read history or presence (`access`)
    /// of `channel`: open to those who may subscribe, and in private
    /// (`subscribe = "token"`) namespaces only to those subscribed.
    pub(super) fn check_read(
        &self,
        channel: &str,
        access: impl Fn(&NamespaceOptions) -> ClientAccess,
    ) -> Result<NamespaceOptions, ErrorBody> {
        let ns = self.check_channel(channel)?;
        if access(&ns) == ClientAccess::None {
            return Err(err(
                ErrorCode::PermissionDenied,
                "in this namespace only the server API reads this",
            ));
        }
        let private = ns.subscribe_rule() == SubscribeRule::Token
            || crate::pusher::is_private(&self.node.config, channel);
        if private && !self.subs.contains_key(channel) {
            return Err(err(
                ErrorCode::PermissionDenied,
                "subscribe with a channel token first",
            ));
        }
        Ok(ns)
    }
}
