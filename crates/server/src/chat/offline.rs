//! Offline notifications: a publication in a members channel is told to
//! the backend (webhook `offline_publication`) for each member with no
//! connection in the channel's presence, so it can send a mobile push.
//! The webhook queue batches, signs, retries and bounds them.

use std::collections::HashSet;

use tidings_protocol::{Publication, StreamPosition};

use crate::config::{NamespaceOptions, WebhookEvent};
use crate::engine::EngineError;
use crate::node::Node;

/// Presence entries read per round trip.
const PRESENCE_PAGE: usize = 1000;

/// Emits one `offline_publication` per member of `members` not present in
/// `channel` (the publisher excepted).
pub async fn notify(
    node: &Node,
    channel: &str,
    ns: &NamespaceOptions,
    position: &StreamPosition,
    publisher: Option<&str>,
    publication: Option<Publication>,
    members: impl Iterator<Item = String>,
) -> Result<(), EngineError> {
    let present = present_users(node, channel).await?;
    let publication = publication.filter(|_| ns.offline_payload);
    for user in members {
        if present.contains(&user) || Some(user.as_str()) == publisher {
            continue;
        }
        node.emit(WebhookEvent::OfflinePublication, || {
            let mut event = serde_json::json!({
                "user": user,
                "channel": channel,
                "offset": position.offset,
                "epoch": position.epoch,
            });
            if let Some(p) = &publication {
                event["publication"] = serde_json::to_value(p).unwrap_or_default();
            } else if let Some(sender) = publisher {
                event["from"] = sender.into();
            }
            event
        });
    }
    Ok(())
}

/// Users with a connection in `channel`'s presence, on any node.
async fn present_users(node: &Node, channel: &str) -> Result<HashSet<String>, EngineError> {
    let mut users = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = node
            .engine
            .list(channel, cursor.as_deref(), PRESENCE_PAGE)
            .await?;
        users.extend(page.into_values().map(|info| info.user));
        match next {
            Some(next) if cursor.as_ref() != Some(&next) => cursor = Some(next),
            _ => return Ok(users),
        }
    }
}
