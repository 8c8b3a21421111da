//! The typed handlers behind both client commands and the server API:
//! publish, history, presence, last seen.

use crate::config::WebhookEvent;
use tidings_protocol::reply::{HistoryOk, LastSeenOk, PresenceOk, PresenceStatsOk, PublishOk};
use tidings_protocol::{ErrorBody, ErrorCode, Publication, SinceArg};

use super::{PRESENCE_PAGE, PRESENCE_PAGE_MAX, err};
use crate::config::NamespaceOptions;
use crate::engine::{EngineError, HistoryQuery, PublishRequest};
use crate::node::Node;
use std::sync::Arc;

/// An engine failure as the client sees it: code 100, `temporary` when a
/// retry (with the same idempotency key) may succeed; a node bound, 104.
pub(crate) fn internal(e: EngineError) -> ErrorBody {
    if let EngineError::Limit(why) = e {
        return err(ErrorCode::LimitExceeded, why);
    }
    tracing::error!(error = %e, "engine failed");
    let message = if e.temporary() {
        "temporarily unavailable: retry"
    } else {
        "internal error"
    };
    ErrorBody {
        temporary: e.temporary(),
        ..err(ErrorCode::Internal, message)
    }
}

/// Publishes through the engine after the namespace's checks; shared by
/// client commands and the server API.
pub async fn publish(
    node: &Arc<Node>,
    channel: &str,
    ns: &NamespaceOptions,
    request: PublishRequest,
) -> Result<PublishOk, ErrorBody> {
    let data = &request.data;
    if data.get().len() > ns.max_message_size {
        return Err(err(
            ErrorCode::LimitExceeded,
            format!("data is larger than {} bytes", ns.max_message_size),
        ));
    }
    if ns.max_data_depth > 0 && tidings_protocol::nests_deeper_than(data.get(), ns.max_data_depth) {
        return Err(err(
            ErrorCode::LimitExceeded,
            format!("data nests deeper than {} levels", ns.max_data_depth),
        ));
    }
    for (name, value) in [
        ("idempotency_key", &request.idempotency_key),
        ("key", &request.key),
    ] {
        if value
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 256)
        {
            return Err(err(
                ErrorCode::BadRequest,
                format!("{name} must be 1 to 256 bytes"),
            ));
        }
    }
    let publisher = request.info.as_ref().map(|i| i.user.clone());
    // Kept only when the `publication` webhook wants it.
    let event = node.wants(WebhookEvent::Publication).then(|| {
        (
            request.data.clone(),
            request.info.as_ref().map(|i| i.user.clone()),
        )
    });
    let outcome = node
        .engine
        .publish(channel, request, &node.policy(ns))
        .await
        .map_err(internal)?;
    if !outcome.duplicate {
        if ns.members
            && let Some(position) = &outcome.position
        {
            crate::chat::published(node, channel, ns, position.clone(), publisher);
        }
        node.metrics.publications_in.inc();
        node.metrics
            .published(channel.split_once(':').map_or("", |(ns, _)| ns));
        if let Some((data, user)) = event {
            node.emit(WebhookEvent::Publication, || {
                serde_json::json!({
                    "channel": channel,
                    "offset": outcome.position.as_ref().map(|p| p.offset),
                    "user": user,
                    "data": data,
                })
            });
        }
    }
    Ok(match outcome.position {
        Some(p) => PublishOk {
            offset: Some(p.offset),
            epoch: Some(p.epoch),
        },
        None => PublishOk::default(),
    })
}

/// Reads history after the namespace's checks; shared by commands and the API.
pub async fn history(
    node: &Node,
    channel: &str,
    ns: &NamespaceOptions,
    since: Option<SinceArg>,
    limit: Option<u32>,
    reverse: bool,
) -> Result<HistoryOk, ErrorBody> {
    if !ns.has_history() {
        return Err(err(
            ErrorCode::BadRequest,
            "this namespace keeps no history",
        ));
    }
    // One answer carries at most `recovery_max` publications; page with `since`.
    let cap = node.config.client.recovery_max;
    let limit = limit.map_or(cap, |l| (l as usize).min(cap));
    let page = node
        .engine
        .read(
            channel,
            HistoryQuery {
                after: since.as_ref().map(|s| s.offset),
                limit: Some(limit),
                reverse,
            },
            &node.policy(ns),
        )
        .await
        .map_err(internal)?;
    if let Some(since) = since {
        if since.epoch != page.position.epoch {
            return Err(err(
                ErrorCode::Unrecoverable,
                "`since` belongs to another epoch of this channel",
            ));
        }
        // Never a silently partial answer: a forward read starts right after `since`.
        let starts_right = match page.publications.first() {
            Some(p) => p.offset == Some(since.offset + 1),
            None => since.offset >= page.position.offset,
        };
        if !reverse && limit > 0 && !starts_right {
            return Err(err(
                ErrorCode::Unrecoverable,
                "history no longer holds what follows `since`",
            ));
        }
    }
    // At most `recovery_max_bytes` (but always one publication): the
    // client pages on from the last one it got.
    let mut bytes = 0;
    let fits = page
        .publications
        .iter()
        .take_while(|p| {
            bytes += p.approx_size();
            bytes <= node.config.client.recovery_max_bytes
        })
        .count()
        .max(1);
    Ok(HistoryOk {
        publications: page
            .publications
            .iter()
            .take(fits)
            .map(|p| Publication::clone(p))
            .collect(),
        offset: page.position.offset,
        epoch: page.position.epoch,
    })
}

/// Presence members after the namespace's checks.
pub async fn presence_list(
    node: &Node,
    channel: &str,
    ns: &NamespaceOptions,
    limit: Option<u32>,
    cursor: Option<String>,
) -> Result<PresenceOk, ErrorBody> {
    if !ns.presence {
        return Err(err(
            ErrorCode::BadRequest,
            "presence is off in this namespace",
        ));
    }
    let limit = limit.map_or(PRESENCE_PAGE, |l| (l as usize).clamp(1, PRESENCE_PAGE_MAX));
    let (clients, next_cursor) = node
        .engine
        .list(channel, cursor.as_deref(), limit)
        .await
        .map_err(internal)?;
    Ok(PresenceOk {
        clients,
        next_cursor,
    })
}

/// When users were last seen; at most 1000 users per call.
pub async fn last_seen(node: &Node, users: &[String]) -> Result<LastSeenOk, ErrorBody> {
    if users.len() > 1000 {
        return Err(err(ErrorCode::LimitExceeded, "at most 1000 users per call"));
    }
    let users = node.engine.last_seen(users).await.map_err(internal)?;
    Ok(LastSeenOk { users })
}

/// Presence counts after the namespace's checks.
pub async fn presence_stats(
    node: &Node,
    channel: &str,
    ns: &NamespaceOptions,
) -> Result<PresenceStatsOk, ErrorBody> {
    if !ns.presence {
        return Err(err(
            ErrorCode::BadRequest,
            "presence is off in this namespace",
        ));
    }
    let (clients, users) = node.engine.stats(channel).await.map_err(internal)?;
    Ok(PresenceStatsOk { clients, users })
}
