//! `disconnect` and `unsubscribe`: instructions for a user's connections
//! on every node.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tidings_protocol::DisconnectCode;
use tidings_protocol::reply::Empty;

use super::{ApiError, Call, bad};
use crate::engine::UserControl;
use crate::node::Node;
use crate::session;

/// Whose connections to close.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    /// User id.
    user: String,
    /// Only this connection of the user.
    client: Option<String>,
    /// Close code, 3000–3999 (default 3006: reconnect).
    #[schema(minimum = 3000, maximum = 3999)]
    code: Option<u16>,
}

/// Whose subscription to end.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeBody {
    /// User id.
    user: String,
    /// Channel name.
    channel: String,
}

/// Closes a user's connections (or one of them) on every node.
#[utoipa::path(post, path = "/v1/api/disconnect", tag = "server API", operation_id = "api_disconnect",
    request_body = DisconnectBody,
    responses((status = 200, description = "Every node was told.", body = Empty)),
    security(("api_key" = [])))]
pub async fn disconnect(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<DisconnectBody>,
) -> Result<Json<Empty>, ApiError> {
    if b.user.is_empty() {
        return Err(bad("`user` must not be empty"));
    }
    let code = DisconnectCode(b.code.unwrap_or(DisconnectCode::FORCE_RECONNECT.0));
    if !(3000..4000).contains(&code.0) {
        return Err(bad("`code` must be within 3000..3999"));
    }
    let control = UserControl::Disconnect {
        user: b.user,
        client: b.client,
        code: code.0,
    };
    node.engine
        .control(control)
        .await
        .map_err(session::internal)?;
    Ok(Json(Empty {}))
}

/// Ends a user's subscription to a channel on every node.
#[utoipa::path(post, path = "/v1/api/unsubscribe", tag = "server API", operation_id = "api_unsubscribe",
    request_body = UnsubscribeBody,
    responses((status = 200, description = "Every node was told.", body = Empty)),
    security(("api_key" = [])))]
pub async fn unsubscribe(
    State(node): State<Arc<Node>>,
    Call { body: b, .. }: Call<UnsubscribeBody>,
) -> Result<Json<Empty>, ApiError> {
    if b.user.is_empty() {
        return Err(bad("`user` must not be empty"));
    }
    node.resolve(&b.channel)?;
    let control = UserControl::Unsubscribe {
        user: b.user,
        channel: b.channel,
        code: DisconnectCode::FORBIDDEN.0,
    };
    node.engine
        .control(control)
        .await
        .map_err(session::internal)?;
    Ok(Json(Empty {}))
}
