//! Client actions over plain HTTP, `POST /v1/client/<op>`: for SSE and
//! long-poll clients. Authorised by the connection token, with the same
//! permission checks, codes and idempotency keys as the WebSocket commands.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidings_protocol::{ErrorBody, ErrorCode, ServerMessage};

use crate::api::ApiError;
use crate::engine::UserControl;
use crate::lease::Beat;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::session::Session;
use crate::session::internal;

/// The commands open to HTTP clients.
const OPS: [&str; 5] = [
    "publish",
    "history",
    "presence",
    "presence_stats",
    "last_seen",
];

fn bad(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError(ErrorBody::new(code, message))
}

/// `POST /v1/client/{op}`.
pub async fn handle(
    State(node): State<Arc<Node>>,
    ConnectInfo(ip): ConnectInfo<std::net::SocketAddr>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = crate::transport::http::peer(&node, "http", Some(ip.ip()), &headers);
    match call(&node, &op, &headers, peer, body).await {
        Ok(ok) => ([(header::CONTENT_TYPE, "application/json")], ok).into_response(),
        Err(e) => {
            node.metrics.command_error(e.0.code);
            e.into_response()
        }
    }
}

/// `heartbeat` `{"lease"}`: an SSE stream's reader is alive (see
/// [`crate::lease`]); the lease id is the credential.
async fn heartbeat(node: &Arc<Node>, body: Body) -> Result<String, ApiError> {
    #[derive(serde::Deserialize)]
    struct Heartbeat {
        lease: String,
    }
    let body = crate::api::read_body(node, body).await?;
    let beat: Heartbeat = serde_json::from_slice(&body)
        .map_err(|e| bad(ErrorCode::BadRequest, format!("malformed body: {e}")))?;
    match node.leases.beat(&beat.lease) {
        Beat::Renewed => Ok("{}".into()),
        Beat::Elsewhere => {
            // Another node holds the stream (no sticky sessions): pass it on.
            let control = UserControl::Heartbeat { lease: beat.lease };
            node.engine
                .control(control)
                .await
                .map_err(|e| ApiError(internal(e)))?;
            Ok("{}".into())
        }
        Beat::Unknown => Err(bad(
            ErrorCode::NotSubscribed,
            "no open stream has this lease (it ended)",
        )),
    }
}

async fn call(
    node: &Arc<Node>,
    op: &str,
    headers: &HeaderMap,
    peer: crate::hooks::Peer,
    body: Body,
) -> Result<String, ApiError> {
    if op == "heartbeat" {
        return heartbeat(node, body).await;
    }
    if !OPS.contains(&op) {
        return Err(bad(
            ErrorCode::BadRequest,
            format!(
                "unknown client action `{}`; one of {OPS:?} or \"heartbeat\"",
                op.escape_default()
            ),
        ));
    }
    let body = crate::api::read_body(node, body).await?;
    let mut command: serde_json::Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|e| bad(ErrorCode::BadRequest, format!("malformed body: {e}")))?;
    command.insert("id".into(), json!(1));
    command.insert("op".into(), json!(op));
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        command
            .entry("idempotency_key")
            .or_insert_with(|| json!(key));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let frame = format!(
        "{}\n{}",
        json!({"id": 0, "op": "connect", "token": token}),
        Value::Object(command)
    );
    let outbox = Arc::new(Outbox::new(node.config.client.outbox_bytes));
    let (mut session, _control) = Session::new(node.clone(), outbox.clone());
    session.set_stateless();
    session.set_peer(peer);
    session.handle_frame(frame.as_bytes()).await;
    session.end().await;
    let mut batch = Vec::new();
    outbox.try_batch(&mut batch);
    for message in batch {
        if let Ok(ServerMessage::Reply(reply)) = ServerMessage::decode(&message.bytes) {
            match reply.result {
                Err(e) => return Err(ApiError(e)),
                Ok(ok) if reply.id == 1 => return Ok(ok.get().to_string()),
                Ok(_) => {}
            }
        }
    }
    Err(bad(ErrorCode::Internal, "no answer"))
}
