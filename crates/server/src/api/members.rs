//! `members/add`, `members/remove`, `members/list`: who belongs to a
//! members channel.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tidings_protocol::chat::MembersOk;
use tidings_protocol::reply::Empty;

use super::{ApiError, Call};
use crate::chat;
use crate::node::Node;

/// Users to add to or remove from a channel.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    /// Channel name (in a namespace with `members = true`).
    pub channel: String,
    /// User ids, 1 to 1000.
    pub users: Vec<String>,
}

/// One page of a channel's members.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersListBody {
    /// Channel name (in a namespace with `members = true`).
    pub channel: String,
    /// At most this many users (default 100, at most 1000).
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Makes users members of a channel; their devices get an `inbox` push.
#[utoipa::path(post, path = "/v1/api/members/add", tag = "server API", operation_id = "api_members_add",
    request_body = MembersBody,
    responses((status = 200, description = "They are members.", body = Empty)),
    security(("api_key" = [])))]
pub async fn add(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<MembersBody>,
) -> Result<Json<Empty>, ApiError> {
    chat::add_members(&node, &b.channel, &b.users).await?;
    Ok(Json(Empty {}))
}

/// Removes users from a channel: their subscriptions end with `unsub` 3502.
#[utoipa::path(post, path = "/v1/api/members/remove", tag = "server API", operation_id = "api_members_remove",
    request_body = MembersBody,
    responses((status = 200, description = "They are not members.", body = Empty)),
    security(("api_key" = [])))]
pub async fn remove(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<MembersBody>,
) -> Result<Json<Empty>, ApiError> {
    chat::remove_members(&node, &b.channel, &b.users).await?;
    Ok(Json(Empty {}))
}

/// A channel's members, sorted by user id, a page at a time.
#[utoipa::path(post, path = "/v1/api/members/list", tag = "server API", operation_id = "api_members_list",
    request_body = MembersListBody,
    responses((status = 200, description = "One page of members.", body = MembersOk)),
    security(("api_key" = [])))]
pub async fn list(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<MembersListBody>,
) -> Result<Json<MembersOk>, ApiError> {
    Ok(Json(
        chat::members(&node, &b.channel, b.limit, b.cursor.as_deref()).await?,
    ))
}
