//! `presence`, `presence_stats` and `last_seen`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tidings_protocol::reply::{LastSeenOk, PresenceOk, PresenceStatsOk};

use super::{ApiError, Call};
use crate::node::Node;
use crate::session;

/// One page of a channel's presence.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceBody {
    /// Channel name.
    pub channel: String,
    /// At most this many connections.
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A channel.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelBody {
    /// Channel name.
    pub channel: String,
}

/// Users to look up.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LastSeenBody {
    /// User ids.
    pub users: Vec<String>,
}

/// Who is in a channel, a page at a time.
#[utoipa::path(post, path = "/v1/api/presence", tag = "server API", operation_id = "api_presence",
    request_body = PresenceBody,
    responses((status = 200, description = "One page of connections by client id.", body = PresenceOk)),
    security(("api_key" = [])))]
pub async fn presence(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<PresenceBody>,
) -> Result<Json<PresenceOk>, ApiError> {
    let (_, ns) = node.resolve(&b.channel)?;
    Ok(Json(
        session::presence_list(&node, &b.channel, &ns, b.limit, b.cursor).await?,
    ))
}

/// How many connections and users are in a channel.
#[utoipa::path(post, path = "/v1/api/presence_stats", tag = "server API", operation_id = "api_presence_stats",
    request_body = ChannelBody,
    responses((status = 200, description = "Counts.", body = PresenceStatsOk)),
    security(("api_key" = [])))]
pub async fn presence_stats(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<ChannelBody>,
) -> Result<Json<PresenceStatsOk>, ApiError> {
    let (_, ns) = node.resolve(&b.channel)?;
    Ok(Json(session::presence_stats(&node, &b.channel, &ns).await?))
}

/// When users were last seen.
#[utoipa::path(post, path = "/v1/api/last_seen", tag = "server API", operation_id = "api_last_seen",
    request_body = LastSeenBody,
    responses((status = 200, description = "Per user: ms since the Unix epoch, or null.", body = LastSeenOk)),
    security(("api_key" = [])))]
pub async fn last_seen(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<LastSeenBody>,
) -> Result<Json<LastSeenOk>, ApiError> {
    Ok(Json(session::last_seen(&node, &b.users).await?))
}
