//! `publish` and `broadcast`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tidings_protocol::reply::PublishOk;
use tidings_protocol::{ErrorBody, Priority};

use super::{ApiError, Call};
use crate::engine::PublishRequest;
use crate::node::Node;
use crate::session;

/// A publication into one channel (the server API's and a client's).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Channel name.
    pub channel: String,
    /// Any JSON: what subscribers get.
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
    /// A retry with the same key publishes nothing new (else the
    /// `Idempotency-Key` header).
    pub idempotency_key: Option<String>,
    /// Free-form string tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// What it is the latest value of within the channel.
    pub key: Option<String>,
    /// Its lane on the way to subscribers; the namespace's default when absent.
    pub priority: Option<Priority>,
    /// The channel's whole state: kept as its snapshot beyond history
    /// trimming, for subscribers that cannot recover.
    #[serde(default)]
    pub snapshot: bool,
}

/// The same publication into several channels.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    /// Channel names.
    channels: Vec<String>,
    /// Any JSON: what subscribers get.
    #[schema(value_type = serde_json::Value)]
    data: Box<RawValue>,
    /// Deduplicates per channel.
    idempotency_key: Option<String>,
    /// Free-form string tags.
    tags: Option<BTreeMap<String, String>>,
    /// What it is the latest value of within each channel.
    key: Option<String>,
    /// Its lane on the way to subscribers.
    priority: Option<Priority>,
}

/// One channel's outcome of a broadcast: its position, or its error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BroadcastResult {
    /// Offset given to the publication (absent in ephemeral channels and on error).
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// Epoch of the channel's history (absent in ephemeral channels and on error).
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
    /// Why this channel was not published into.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

/// `broadcast` → ok: one result per channel, in order.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BroadcastOk {
    results: Vec<BroadcastResult>,
}

/// Publishes into a channel: its offset and epoch (none in ephemeral channels).
#[utoipa::path(post, path = "/v1/api/publish", tag = "server API", operation_id = "api_publish",
    request_body = PublishBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Used when the body has no `idempotency_key`.")),
    responses((status = 200, description = "Published (or a retry of a publication).", body = PublishOk)),
    security(("api_key" = [])))]
pub async fn publish(
    State(node): State<Arc<Node>>,
    call: Call<PublishBody>,
) -> Result<Json<PublishOk>, ApiError> {
    let b = call.body;
    let (_, ns) = node.resolve(&b.channel)?;
    let request = PublishRequest {
        data: b.data,
        info: None,
        tags: b.tags,
        idempotency_key: b.idempotency_key.or(call.idempotency_key),
        key: b.key,
        priority: b.priority,
        snapshot: b.snapshot,
    };
    Ok(Json(
        session::publish(&node, &b.channel, &ns, request).await?,
    ))
}

/// Publishes the same data into several channels; each may fail alone.
#[utoipa::path(post, path = "/v1/api/broadcast", tag = "server API", operation_id = "api_broadcast",
    request_body = BroadcastBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Used when the body has no `idempotency_key`.")),
    responses((status = 200, description = "One result per channel, in order.", body = BroadcastOk)),
    security(("api_key" = [])))]
pub async fn broadcast(
    State(node): State<Arc<Node>>,
    call: Call<BroadcastBody>,
) -> Result<Json<BroadcastOk>, ApiError> {
    let b = call.body;
    let key = b.idempotency_key.or(call.idempotency_key);
    let mut results = Vec::with_capacity(b.channels.len());
    for channel in &b.channels {
        let published = match node.resolve(channel) {
            Ok((_, ns)) => {
                let request = PublishRequest {
                    data: b.data.clone(),
                    info: None,
                    tags: b.tags.clone(),
                    idempotency_key: key.clone(),
                    key: b.key.clone(),
                    priority: b.priority,
                    snapshot: false,
                };
                session::publish(&node, channel, &ns, request).await
            }
            Err(e) => Err(e),
        };
        results.push(match published {
            Ok(ok) => BroadcastResult {
                offset: ok.offset,
                epoch: ok.epoch,
                error: None,
            },
            Err(error) => BroadcastResult {
                offset: None,
                epoch: None,
                error: Some(error),
            },
        });
    }
    Ok(Json(BroadcastOk { results }))
}
