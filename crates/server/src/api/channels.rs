//! `channels` and `info`: what the cluster is serving.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tidings_protocol::reply::Empty;

use super::{ApiError, Call};
use crate::engine::NodeInfo;
use crate::node::Node;
use crate::session;

/// Most channels one `channels` page returns.
const MAX_CHANNELS_PAGE: usize = 1000;

/// One page of the channels with subscribers.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelsBody {
    /// Only channels whose names start with this.
    #[serde(default)]
    prefix: String,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
    /// At most this many channels (1–1000, default 100).
    limit: Option<usize>,
}

/// A channel and its subscribers across the cluster.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelEntry {
    channel: String,
    subscribers: usize,
}

/// `channels` → ok.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelsOk {
    channels: Vec<ChannelEntry>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `info` → ok.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InfoOk {
    /// Every node that announced itself lately, by name.
    nodes: Vec<NodeInfo>,
}

/// Channels with subscribers on any node, by name, a page at a time.
#[utoipa::path(post, path = "/v1/api/channels", tag = "server API", operation_id = "api_channels",
    request_body = ChannelsBody,
    responses((status = 200, description = "One page of channels.", body = ChannelsOk)),
    security(("api_key" = [])))]
pub async fn channels(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<ChannelsBody>,
) -> Result<Json<ChannelsOk>, ApiError> {
    let limit = b.limit.unwrap_or(100).clamp(1, MAX_CHANNELS_PAGE);
    // One more than asked tells whether another page follows; with the
    // Redis engine, a survey of the nodes.
    let mut page = node
        .engine
        .channels(&b.prefix, b.cursor.as_deref(), limit + 1)
        .await
        .map_err(session::internal)?;
    let next_cursor = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|(c, _)| c.clone()).unwrap_or_default()
    });
    let channels = page
        .into_iter()
        .map(|(channel, subscribers)| ChannelEntry {
            channel,
            subscribers,
        })
        .collect();
    Ok(Json(ChannelsOk {
        channels,
        next_cursor,
    }))
}

/// The nodes serving, with their connections and subscriptions.
#[utoipa::path(post, path = "/v1/api/info", tag = "server API", operation_id = "api_info",
    request_body(content = Empty, description = "Empty, or `{}`."),
    responses((status = 200, description = "Every live node.", body = InfoOk)),
    security(("api_key" = [])))]
pub async fn info(State(node): State<Arc<Node>>, _: Call<Empty>) -> Result<Json<InfoOk>, ApiError> {
    // Every node that announced itself lately; this one as it is now.
    let mut nodes = node.engine.nodes().await.map_err(session::internal)?;
    nodes.retain(|n| n.id != node.id);
    nodes.push(node.info());
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(InfoOk { nodes }))
}
