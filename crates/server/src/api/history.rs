//! `history`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tidings_protocol::SinceArg;
use tidings_protocol::reply::HistoryOk;

use super::{ApiError, Call};
use crate::node::Node;
use crate::session;

/// Which of a channel's stored publications to read.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryBody {
    /// Channel name.
    pub channel: String,
    /// Only publications after this position (its epoch must match).
    pub since: Option<SinceArg>,
    /// At most this many publications.
    pub limit: Option<u32>,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// Reads a channel's history.
#[utoipa::path(post, path = "/v1/api/history", tag = "server API", operation_id = "api_history",
    request_body = HistoryBody,
    responses((status = 200, description = "The publications asked for and the channel's position.", body = HistoryOk)),
    security(("api_key" = [])))]
pub async fn history(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<HistoryBody>,
) -> Result<Json<HistoryOk>, ApiError> {
    let (_, ns) = node.resolve(&b.channel)?;
    Ok(Json(
        session::history(&node, &b.channel, &ns, b.since, b.limit, b.reverse).await?,
    ))
}
