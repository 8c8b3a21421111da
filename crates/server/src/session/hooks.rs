//! Asking the backend: one call per proxy hook, and what its answer (or
//! its failure, by the configured `fail` mode) means for the request.

use serde_json::value::RawValue;
use tidings_protocol::ErrorBody;

use super::Session;
use crate::config::ProxyFail;
use crate::hooks::{Allow, HookError, HookRequest};

/// What a hook decided.
pub(super) enum Verdict {
    /// Allowed, with the backend's overrides.
    Allow(Allow),
    /// The backend failed and `fail = "open"`: allowed as asked.
    FailedOpen,
    /// The backend failed and `fail = "rules"`: the namespace's own rules decide.
    Rules,
}

impl Session {
    /// Calls `hook` at `url` about this connection (and `channel`, `data`),
    /// and applies `fail` when the backend fails.
    pub(super) async fn ask_backend(
        &self,
        hook: &'static str,
        url: &str,
        fail: ProxyFail,
        channel: Option<&str>,
        data: Option<&RawValue>,
    ) -> Result<Verdict, ErrorBody> {
        let (user, info) = match &self.identity {
            Some(identity) => (identity.user.as_str(), identity.info.as_deref()),
            None => ("", None),
        };
        let request = HookRequest {
            client: &self.client,
            user,
            peer: &self.peer,
            channel,
            data,
            info,
        };
        match self.node.proxy.call(hook, url, &request).await {
            Ok(allow) => Ok(Verdict::Allow(allow)),
            Err(HookError::Refused(e)) => Err(e),
            Err(HookError::Unavailable(_)) => match fail {
                ProxyFail::Closed => Err(HookError::temporary()),
                ProxyFail::Open => Ok(Verdict::FailedOpen),
                ProxyFail::Rules => Ok(Verdict::Rules),
            },
        }
    }
}
