//! The chat layer of members channels (namespaces with `members = true`):
//! membership, cursors and their [`receipts`], the inbox, [`offline`]
//! notifications and the device-key directory. Typed handlers shared by
//! the client's commands (WebSocket and HTTP actions) and the server API;
//! the engine keeps the state.

pub mod offline;
pub mod receipts;

use std::cmp::Reverse;
use std::sync::Arc;

use tidings_protocol::chat::{InboxOk, KeysOk, MembersOk, valid_device_id, valid_device_key};
use tidings_protocol::{Conversation, Cursors, ErrorBody, ErrorCode, InboxChange, StreamPosition};

use crate::config::NamespaceOptions;
use crate::engine::{EngineError, HistoryQuery, Membership, UserControl, now_ms};
use crate::node::Node;
use crate::session::internal;

/// Default and largest page of `inbox` and of member lists.
const PAGE: usize = 100;
const PAGE_MAX: usize = 1000;
/// Most users one call names (members added or removed, keys looked up).
pub const MAX_USERS: usize = 1000;
/// Most devices with a key per user.
const MAX_DEVICES: usize = 16;
/// Most members whose keys one `keys {channel}` answers.
const MAX_KEY_MEMBERS: usize = 10_000;
/// Close code of a subscription ended because its user stopped being a
/// member (as the API's `unsubscribe`: do not subscribe again).
const REMOVED: u16 = tidings_protocol::DisconnectCode::FORBIDDEN.0;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message)
}

fn not_member() -> ErrorBody {
    err(
        ErrorCode::PermissionDenied,
        "only the channel's members may use it",
    )
}

/// The options of `channel`'s namespace, which must have members.
pub fn members_namespace(node: &Node, channel: &str) -> Result<NamespaceOptions, ErrorBody> {
    let (_, ns) = node.resolve(channel)?;
    if !ns.members {
        return Err(err(
            ErrorCode::BadRequest,
            format!("`{channel}` is not in a namespace with `members = true`"),
        ));
    }
    Ok(ns)
}

/// Checks that `user` is a member of `channel` (in a members namespace).
pub async fn check_member(node: &Node, channel: &str, user: &str) -> Result<(), ErrorBody> {
    if user.is_empty() {
        return Err(not_member());
    }
    match node.engine.membership(channel, user).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(not_member()),
        Err(e) => Err(internal(e)),
    }
}

/// `cursor`: raises `user`'s cursors in `channel`; the cursors stored.
/// Offsets beyond the channel's top are refused.
pub async fn cursor(
    node: &Arc<Node>,
    channel: &str,
    user: &str,
    delivered: Option<u64>,
    read: Option<u64>,
) -> Result<Cursors, ErrorBody> {
    let ns = members_namespace(node, channel)?;
    if delivered.is_none() && read.is_none() {
        return Err(err(
            ErrorCode::BadRequest,
            "cursor: give `delivered`, `read` or both",
        ));
    }
    // Before anything of the channel is read: its top is for members.
    check_member(node, channel, user).await?;
    let position = node
        .engine
        .position(channel, &node.policy(&ns))
        .await
        .map_err(internal)?;
    let to = Cursors {
        delivered: delivered.unwrap_or(0),
        read: read.unwrap_or(0),
    };
    if to.delivered.max(to.read) > position.offset {
        return Err(err(
            ErrorCode::BadRequest,
            format!("cursor: the channel's top offset is {}", position.offset),
        ));
    }
    advance(node, channel, &ns, user, &position, to)
        .await
        .map_err(internal)?
        .ok_or_else(not_member)
}

/// Raises `user`'s cursors (offsets of `position`'s epoch) and tells whom
/// it concerns: the channel (a receipt) and, when `read` moved, the user's
/// own connections (their inbox). None when `user` is not a member.
pub async fn advance(
    node: &Arc<Node>,
    channel: &str,
    ns: &NamespaceOptions,
    user: &str,
    position: &StreamPosition,
    to: Cursors,
) -> Result<Option<Cursors>, EngineError> {
    let Some((before, after)) = node
        .engine
        .advance(channel, user, &position.epoch, to)
        .await?
    else {
        return Ok(None);
    };
    if after != before {
        receipts::moved(node, channel, ns, user, after).await?;
    }
    if after.read != before.read
        && let Some(membership) = node.engine.membership(channel, user).await?
    {
        let conversation = conversation(node, ns, &membership).await?;
        tell_user(node, user, InboxChange::Changed(Box::new(conversation))).await;
    }
    Ok(Some(after))
}

/// Pushes an inbox change to `user`'s connections on every node.
async fn tell_user(node: &Node, user: &str, change: InboxChange) {
    let push = tidings_protocol::encode_push(&tidings_protocol::Push::Inbox(change));
    let control = UserControl::Inbox {
        user: user.to_string(),
        push: String::from_utf8_lossy(&push).into_owned(),
    };
    if let Err(e) = node.engine.control(control).await {
        tracing::warn!(user, error = %e, "pushing an inbox change failed");
    }
}

/// One conversation as `membership`'s user sees it now.
async fn conversation(
    node: &Node,
    ns: &NamespaceOptions,
    membership: &Membership,
) -> Result<Conversation, EngineError> {
    let query = HistoryQuery {
        after: None,
        limit: Some(1),
        reverse: true,
    };
    let page = node
        .engine
        .read(&membership.channel, query, &node.policy(ns))
        .await?;
    Ok(entry(
        membership,
        membership.cursors_in(&page.position.epoch),
        &page.position,
        page.publications.first().map(|p| (**p).clone()),
    ))
}

/// An inbox entry: a membership, its cursors now, the channel's position
/// and last publication.
fn entry(
    membership: &Membership,
    c: Cursors,
    position: &StreamPosition,
    last: Option<tidings_protocol::Publication>,
) -> Conversation {
    let top = position.offset;
    Conversation {
        channel: membership.channel.clone(),
        unread: top.saturating_sub(c.read),
        read: c.read,
        delivered: c.delivered,
        top,
        epoch: position.epoch.clone(),
        active_at: last
            .as_ref()
            .map_or(membership.since_ms, |p| p.time.max(membership.since_ms)),
        last,
    }
}

/// `inbox`: a page of `user`'s conversations, the most recently active
/// first (then by channel); `cursor` is the previous page's `next_cursor`.
pub async fn inbox(
    node: &Node,
    user: &str,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<InboxOk, ErrorBody> {
    if user.is_empty() {
        return Err(err(
            ErrorCode::PermissionDenied,
            "inbox needs an authenticated connection",
        ));
    }
    let limit = limit.map_or(PAGE, |l| (l as usize).clamp(1, PAGE_MAX));
    let after = match cursor {
        None => None,
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(at, channel)| Some((Reverse(at.parse::<u64>().ok()?), channel)))
                .ok_or_else(|| err(ErrorCode::BadRequest, "inbox: malformed `cursor`"))?,
        ),
    };
    let memberships = node.engine.conversations(user).await.map_err(internal)?;
    let mut all = Vec::with_capacity(memberships.len());
    for m in &memberships {
        // A namespace no longer configured with members shows nothing.
        let Ok(ns) = members_namespace(node, &m.channel) else {
            continue;
        };
        // One channel the node refuses (its bound) does not hide the others.
        match conversation(node, &ns, m).await {
            Ok(c) => all.push(c),
            Err(EngineError::Limit(why)) => {
                tracing::warn!(
                    channel = m.channel,
                    why,
                    "a conversation left out of an inbox"
                );
            }
            Err(e) => return Err(internal(e)),
        }
    }
    all.sort_unstable_by(|a, b| {
        (Reverse(a.active_at), &a.channel).cmp(&(Reverse(b.active_at), &b.channel))
    });
    let mut page: Vec<Conversation> = all
        .into_iter()
        .filter(|c| after.is_none_or(|a| (Reverse(c.active_at), c.channel.as_str()) > a))
        .take(limit + 1)
        .collect();
    let next_cursor = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last()
            .map(|c| format!("{}:{}", c.active_at, c.channel))
            .unwrap_or_default()
    });
    Ok(InboxOk {
        conversations: page,
        next_cursor,
    })
}

/// A page of `channel`'s members.
pub async fn members(
    node: &Node,
    channel: &str,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<MembersOk, ErrorBody> {
    members_namespace(node, channel)?;
    let limit = limit.map_or(PAGE, |l| (l as usize).clamp(1, PAGE_MAX));
    let mut users = node
        .engine
        .members(channel, cursor, limit + 1)
        .await
        .map_err(internal)?;
    let next_cursor = (users.len() > limit).then(|| {
        users.truncate(limit);
        users.last().cloned().unwrap_or_default()
    });
    Ok(MembersOk { users, next_cursor })
}

fn check_users(users: &[String]) -> Result<(), ErrorBody> {
    if users.is_empty() || users.len() > MAX_USERS {
        return Err(err(
            ErrorCode::BadRequest,
            format!("`users`: 1 to {MAX_USERS} user ids"),
        ));
    }
    if users.iter().any(|u| u.is_empty() || u.len() > 256) {
        return Err(err(
            ErrorCode::BadRequest,
            "`users`: each user id is 1 to 256 bytes",
        ));
    }
    Ok(())
}

/// Makes `users` members of `channel`; each new member's devices learn of
/// the conversation (an `inbox` push).
pub async fn add_members(node: &Node, channel: &str, users: &[String]) -> Result<(), ErrorBody> {
    let ns = members_namespace(node, channel)?;
    check_users(users)?;
    let added = node
        .engine
        .add_members(channel, users, now_ms())
        .await
        .map_err(internal)?;
    for user in added {
        if let Ok(Some(m)) = node.engine.membership(channel, &user).await {
            match conversation(node, &ns, &m).await {
                Ok(c) => tell_user(node, &user, InboxChange::Changed(Box::new(c))).await,
                Err(e) => tracing::warn!(channel, error = %e, "reading a new conversation failed"),
            }
        }
    }
    Ok(())
}

/// Removes `users` from `channel`: their subscriptions end (`unsub` 3502)
/// and their devices drop the conversation.
pub async fn remove_members(node: &Node, channel: &str, users: &[String]) -> Result<(), ErrorBody> {
    members_namespace(node, channel)?;
    check_users(users)?;
    let removed = node
        .engine
        .remove_members(channel, users)
        .await
        .map_err(internal)?;
    for user in removed {
        let unsubscribe = UserControl::Unsubscribe {
            user: user.clone(),
            channel: channel.to_string(),
            code: REMOVED,
        };
        if let Err(e) = node.engine.control(unsubscribe).await {
            tracing::warn!(channel, error = %e, "ending a removed member's subscriptions failed");
        }
        let change = InboxChange::Removed {
            channel: channel.to_string(),
            removed: true,
        };
        tell_user(node, &user, change).await;
    }
    Ok(())
}

/// Registers `user`'s device key. A `named` user other than `user` is
/// refused: nobody places a key under another's name.
pub async fn register_key(
    node: &Node,
    user: &str,
    device: &str,
    key: &str,
    named: Option<&str>,
) -> Result<(), ErrorBody> {
    if user.is_empty() || named.is_some_and(|n| n != user) {
        return Err(err(
            ErrorCode::PermissionDenied,
            "a device key is registered by its own user only",
        ));
    }
    if !valid_device_id(device) {
        return Err(err(
            ErrorCode::BadRequest,
            "keys: `device` is 1 to 64 of A-Z a-z 0-9 _ -",
        ));
    }
    if !valid_device_key(key) {
        return Err(err(
            ErrorCode::BadRequest,
            "keys: `key` is an uncompressed P-256 point (65 bytes) in unpadded base64url",
        ));
    }
    let stored = node
        .engine
        .put_key(user, device, key, MAX_DEVICES)
        .await
        .map_err(internal)?;
    if !stored {
        return Err(err(
            ErrorCode::LimitExceeded,
            format!("at most {MAX_DEVICES} devices per user"),
        ));
    }
    Ok(())
}

/// The device keys of `users`.
pub async fn keys_of(node: &Node, users: &[String]) -> Result<KeysOk, ErrorBody> {
    check_users(users)?;
    let keys = node.engine.keys(users).await.map_err(internal)?;
    Ok(KeysOk { keys })
}

/// The device keys of `channel`'s members (asked by a member).
pub async fn channel_keys(node: &Node, channel: &str, user: &str) -> Result<KeysOk, ErrorBody> {
    members_namespace(node, channel)?;
    check_member(node, channel, user).await?;
    let users = node
        .engine
        .members(channel, None, MAX_KEY_MEMBERS + 1)
        .await
        .map_err(internal)?;
    if users.len() > MAX_KEY_MEMBERS {
        return Err(err(
            ErrorCode::LimitExceeded,
            format!("keys: more than {MAX_KEY_MEMBERS} members; look them up by `users`"),
        ));
    }
    let keys = node.engine.keys(&users).await.map_err(internal)?;
    Ok(KeysOk { keys })
}

/// A publication landed in members channel `channel` at `offset`: its
/// publisher has read up to it, small groups' members see their inbox
/// change, members not subscribed are told to the backend. Off the
/// publish path (the publisher has its answer).
pub fn published(
    node: &Arc<Node>,
    channel: &str,
    ns: &NamespaceOptions,
    position: StreamPosition,
    publisher: Option<String>,
) {
    let (node, channel, ns) = (node.clone(), channel.to_string(), ns.clone());
    tokio::spawn(async move {
        if let Err(e) = after_publish(&node, &channel, &ns, &position, publisher.as_deref()).await {
            tracing::warn!(channel, error = %e, "telling members of a publication failed");
        }
    });
}

async fn after_publish(
    node: &Arc<Node>,
    channel: &str,
    ns: &NamespaceOptions,
    position: &StreamPosition,
    publisher: Option<&str>,
) -> Result<(), EngineError> {
    let offset = position.offset;
    // Each step on its own: one failing does not keep the others from members.
    if let Some(user) = publisher.filter(|u| !u.is_empty()) {
        let to = Cursors {
            delivered: offset,
            read: offset,
        };
        if let Err(e) = advance(node, channel, ns, user, position, to).await {
            tracing::warn!(channel, error = %e, "moving a publisher's cursors failed");
        }
    }
    let small = node.engine.member_count(channel).await? <= ns.receipts_max_members;
    let offline = node.wants(crate::config::WebhookEvent::OfflinePublication);
    if !small && !offline {
        return Ok(());
    }
    let query = HistoryQuery {
        after: Some(offset.saturating_sub(1)),
        limit: Some(1),
        reverse: false,
    };
    let page = node.engine.read(channel, query, &node.policy(ns)).await?;
    let publication = page
        .publications
        .first()
        .filter(|p| p.offset == Some(offset))
        .map(|p| (**p).clone());
    let members = node.engine.member_cursors(channel, &position.epoch).await?;
    if small {
        let top = page.position.offset;
        for (user, cursors) in &members {
            if Some(user.as_str()) == publisher {
                continue;
            }
            let membership = Membership {
                channel: channel.to_string(),
                since_ms: 0,
                cursors: *cursors,
                epoch: position.epoch.clone(),
            };
            let conversation = match publication.clone().filter(|_| top == offset) {
                Some(last) => Ok(entry(&membership, *cursors, &page.position, Some(last))),
                // Another publication came meanwhile: read the newest.
                None => conversation(node, ns, &membership).await,
            };
            match conversation {
                Ok(c) => tell_user(node, user, InboxChange::Changed(Box::new(c))).await,
                Err(e) => tracing::warn!(channel, error = %e, "reading a conversation failed"),
            }
        }
    }
    if offline {
        let users = members.into_iter().map(|(u, _)| u);
        offline::notify(node, channel, ns, position, publisher, publication, users).await?;
    }
    Ok(())
}
