//! Asking the backend: one call per proxy hook, and what its answer (or
//! its failure, by the configured `fail` mode) means for the request.

use serde_json::value::RawValue;
use tidings_protocol::{ErrorBody, ErrorCode};

use super::{Session, err};
use crate::auth::TOKEN_LEEWAY_S;
use crate::config::ProxyFail;
use crate::hooks::{Allow, HookError, HookRequest};

/// How long a connection or subscription whose refresh hook failed open
/// goes on before the hook is asked again.
const FAILED_OPEN_GRACE_S: u64 = 60;

/// What a refresh or sub_refresh hook made of an expiring connection or
/// subscription: its new end (None: none) and new info, or why it ends.
/// An `expire_at` already past ends it (no asking again in a loop).
pub(super) fn renewal(
    verdict: Result<Verdict, ErrorBody>,
    now: u64,
) -> Result<(Option<u64>, Option<Box<RawValue>>), ErrorBody> {
    let expired = || err(ErrorCode::TokenExpired, "expired");
    match verdict? {
        Verdict::Allow(allow) if allow.expire_at.is_some_and(|at| at <= now) => Err(expired()),
        Verdict::Allow(allow) => Ok((allow.expire_at, allow.info)),
        // No answer: go on for a while (the leeway comes on top), then ask again.
        Verdict::FailedOpen => Ok((Some(now + FAILED_OPEN_GRACE_S - TOKEN_LEEWAY_S), None)),
        Verdict::Rules => Err(expired()),
    }
}

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
