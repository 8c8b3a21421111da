//! Client actions over plain HTTP, `POST /v1/client/<op>`: for SSE and
//! long-poll clients. Each is the typed command a WebSocket client sends,
//! run by a one-request session: the same token checks, permissions,
//! codes and idempotency keys.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, Path, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;
use tidings_protocol::reply::{
    Empty, HistoryOk, LastSeenOk, PresenceOk, PresenceStatsOk, PublishOk,
};
use tidings_protocol::{Command, CommandKind, ErrorBody, ErrorCode, ServerMessage};

use crate::api::{
    ApiError, ChannelBody, HistoryBody, LastSeenBody, MembersListBody, PresenceBody, PublishBody,
    bad, parse, read_body,
};
use crate::engine::UserControl;
use crate::hooks::Peer;
use crate::lease::Beat;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::session::{Session, internal};
use tidings_protocol::Cursors;
use tidings_protocol::chat::{InboxOk, KeysArg, KeysOk, MembersOk};

/// The client action routes, `/v1/client/*`.
pub fn router(node: &Arc<Node>) -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/client/publish", post(publish))
        .route("/v1/client/history", post(history))
        .route("/v1/client/presence", post(presence))
        .route("/v1/client/presence_stats", post(presence_stats))
        .route("/v1/client/last_seen", post(last_seen))
        .route("/v1/client/heartbeat", post(heartbeat))
        .route("/v1/client/cursor", post(cursor))
        .route("/v1/client/inbox", post(inbox))
        .route("/v1/client/members", post(members))
        .route("/v1/client/keys", post(keys))
        .route("/v1/client/{op}", post(unknown))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            crate::api::count_errors,
        ))
}

/// A client action's request: who asks (token, address) and its body.
pub struct Action<T> {
    node: Arc<Node>,
    token: Option<String>,
    peer: Peer,
    idempotency_key: Option<String>,
    body: T,
}

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for Action<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, ApiError> {
        let headers = req.headers();
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let peer = crate::transport::http::peer(node, "http", ip, headers);
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let token = header(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(String::from);
        let idempotency_key =
            header(header::HeaderName::from_static("idempotency-key")).map(String::from);
        let body = parse(&read_body(node, req.into_body()).await?)?;
        Ok(Action {
            node: node.clone(),
            token,
            peer,
            idempotency_key,
            body,
        })
    }
}

impl<T> Action<T> {
    /// Runs `kind` as the token's connection would; the answer is the
    /// command's `ok` body as the WebSocket reply carries it.
    async fn run(self, kind: CommandKind) -> Result<Response, ApiError> {
        let outbox = Arc::new(Outbox::new(self.node.config.client.outbox_bytes));
        let (mut session, _control) = Session::new(self.node.clone(), outbox.clone());
        session.set_stateless();
        session.set_peer(self.peer);
        session.connect_with(self.token).await;
        // A refused connect closed the outbox; its error is the answer.
        if !outbox.is_closed() {
            session.handle(Command { id: 1, kind }).await;
        }
        session.end().await;
        let mut batch = Vec::new();
        outbox.try_batch(&mut batch);
        for message in batch {
            if let Ok(ServerMessage::Reply(reply)) = ServerMessage::decode(&message.bytes) {
                match reply.result {
                    // The session counted it already.
                    Err(e) => return Ok(ApiError(e).uncounted()),
                    Ok(ok) if reply.id == 1 => {
                        let json = [(header::CONTENT_TYPE, "application/json")];
                        return Ok((json, ok.get().to_string()).into_response());
                    }
                    Ok(_) => {}
                }
            }
        }
        Err(ApiError(ErrorBody::new(ErrorCode::Internal, "no answer")))
    }
}

/// Publishes as the token's user, under the namespace's client rules.
#[utoipa::path(post, path = "/v1/client/publish", tag = "client actions", operation_id = "client_publish",
    request_body = PublishBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Used when the body has no `idempotency_key`.")),
    responses((status = 200, description = "Published (or a retry of a publication).", body = PublishOk)),
    security((), ("token" = [])))]
pub async fn publish(action: Action<PublishBody>) -> Result<Response, ApiError> {
    let key = action.idempotency_key.clone();
    let b = &action.body;
    let kind = CommandKind::Publish {
        channel: b.channel.clone(),
        data: b.data.clone(),
        idempotency_key: b.idempotency_key.clone().or(key),
        tags: b.tags.clone(),
        key: b.key.clone(),
        priority: b.priority,
        snapshot: b.snapshot,
    };
    action.run(kind).await
}

/// Reads a channel's history, where the namespace lets clients.
#[utoipa::path(post, path = "/v1/client/history", tag = "client actions", operation_id = "client_history",
    request_body = HistoryBody,
    responses((status = 200, description = "The publications asked for and the channel's position.", body = HistoryOk)),
    security((), ("token" = [])))]
pub async fn history(action: Action<HistoryBody>) -> Result<Response, ApiError> {
    let b = &action.body;
    let kind = CommandKind::History {
        channel: b.channel.clone(),
        since: b.since.clone(),
        limit: b.limit,
        reverse: b.reverse,
    };
    action.run(kind).await
}

/// One page of a channel's presence, where the namespace lets clients.
#[utoipa::path(post, path = "/v1/client/presence", tag = "client actions", operation_id = "client_presence",
    request_body = PresenceBody,
    responses((status = 200, description = "One page of connections by client id.", body = PresenceOk)),
    security((), ("token" = [])))]
pub async fn presence(action: Action<PresenceBody>) -> Result<Response, ApiError> {
    let b = &action.body;
    let kind = CommandKind::Presence {
        channel: b.channel.clone(),
        limit: b.limit,
        cursor: b.cursor.clone(),
    };
    action.run(kind).await
}

/// How many connections and users are in a channel.
#[utoipa::path(post, path = "/v1/client/presence_stats", tag = "client actions", operation_id = "client_presence_stats",
    request_body = ChannelBody,
    responses((status = 200, description = "Counts.", body = PresenceStatsOk)),
    security((), ("token" = [])))]
pub async fn presence_stats(action: Action<ChannelBody>) -> Result<Response, ApiError> {
    let channel = action.body.channel.clone();
    action.run(CommandKind::PresenceStats { channel }).await
}

/// When users were last seen (signed-in connections only).
#[utoipa::path(post, path = "/v1/client/last_seen", tag = "client actions", operation_id = "client_last_seen",
    request_body = LastSeenBody,
    responses((status = 200, description = "Per user: ms since the Unix epoch, or null.", body = LastSeenOk)),
    security((), ("token" = [])))]
pub async fn last_seen(action: Action<LastSeenBody>) -> Result<Response, ApiError> {
    let users = action.body.users.clone();
    action.run(CommandKind::LastSeen { users }).await
}

/// An SSE stream's lease (see [`crate::lease`]).
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct HeartbeatBody {
    /// The `lease` the stream's `connected` event gave.
    lease: String,
}

/// An SSE stream's reader is alive; the lease id is the credential.
#[utoipa::path(post, path = "/v1/client/heartbeat", tag = "client actions", operation_id = "client_heartbeat",
    request_body = HeartbeatBody,
    responses((status = 200, description = "The stream's lease was renewed.", body = Empty)))]
pub async fn heartbeat(action: Action<HeartbeatBody>) -> Result<axum::Json<Empty>, ApiError> {
    let Action { node, body, .. } = action;
    let lease = body.lease;
    match node.leases.beat(&lease) {
        Beat::Renewed => Ok(axum::Json(Empty {})),
        Beat::Elsewhere => {
            // Another node holds the stream (no sticky sessions): pass it on.
            let control = UserControl::Heartbeat { lease };
            node.engine
                .control(control)
                .await
                .map_err(|e| ApiError(internal(e)))?;
            Ok(axum::Json(Empty {}))
        }
        Beat::Unknown => Err(ApiError(ErrorBody::new(
            ErrorCode::NotSubscribed,
            "no open stream has this lease (it ended)",
        ))),
    }
}

/// Cursors to raise.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorBody {
    /// Channel name (in a namespace with `members = true`).
    channel: String,
    /// Raise `delivered` to this offset.
    delivered: Option<u64>,
    /// Raise `read` to this offset (it raises `delivered` too).
    read: Option<u64>,
}

/// Moves the user's cursors in a members channel.
#[utoipa::path(post, path = "/v1/client/cursor", tag = "client actions", operation_id = "client_cursor",
    request_body = CursorBody,
    responses((status = 200, description = "The cursors stored.", body = Cursors)),
    security(("token" = [])))]
pub async fn cursor(action: Action<CursorBody>) -> Result<Response, ApiError> {
    let b = &action.body;
    let kind = CommandKind::Cursor {
        channel: b.channel.clone(),
        delivered: b.delivered,
        read: b.read,
    };
    action.run(kind).await
}

/// A page of the inbox.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxBody {
    /// At most this many conversations (default 100, at most 1000).
    limit: Option<u32>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// The user's conversations, the most recently active first.
#[utoipa::path(post, path = "/v1/client/inbox", tag = "client actions", operation_id = "client_inbox",
    request_body = InboxBody,
    responses((status = 200, description = "One page of conversations.", body = InboxOk)),
    security(("token" = [])))]
pub async fn inbox(action: Action<InboxBody>) -> Result<Response, ApiError> {
    let b = &action.body;
    let kind = CommandKind::Inbox {
        limit: b.limit,
        cursor: b.cursor.clone(),
    };
    action.run(kind).await
}

/// A members channel's members, for its members.
#[utoipa::path(post, path = "/v1/client/members", tag = "client actions", operation_id = "client_members",
    request_body = MembersListBody,
    responses((status = 200, description = "One page of members.", body = MembersOk)),
    security(("token" = [])))]
pub async fn members(action: Action<MembersListBody>) -> Result<Response, ApiError> {
    let b = &action.body;
    let kind = CommandKind::Members {
        channel: b.channel.clone(),
        limit: b.limit,
        cursor: b.cursor.clone(),
    };
    action.run(kind).await
}

/// A `keys` request: `device` and `key`, or `users`, or `channel`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysBody {
    /// Register this device's key (with `key`).
    device: Option<String>,
    /// The device's ECDH P-256 public key, uncompressed, base64url.
    key: Option<String>,
    /// Refused unless the token's own user.
    user: Option<String>,
    /// Look up these users' keys.
    users: Option<Vec<String>>,
    /// Look up the keys of this channel's members.
    channel: Option<String>,
}

/// The device-key directory: register a key, or look keys up.
#[utoipa::path(post, path = "/v1/client/keys", tag = "client actions", operation_id = "client_keys",
    request_body = KeysBody,
    responses((status = 200, description = "The keys looked up (`{}` for a registration).", body = KeysOk)),
    security(("token" = [])))]
pub async fn keys(action: Action<KeysBody>) -> Result<Response, ApiError> {
    let b = &action.body;
    let arg = KeysArg::from_fields(
        b.device.clone(),
        b.key.clone(),
        b.user.clone(),
        b.users.clone(),
        b.channel.clone(),
    )
    .map_err(bad)?;
    action.run(CommandKind::Keys(arg)).await
}

/// An action clients do not have.
async fn unknown(Path(op): Path<String>) -> ApiError {
    bad(format!(
        "unknown client action `{}`; one of publish, history, presence, presence_stats, last_seen, heartbeat, cursor, inbox, members or keys",
        op.escape_default()
    ))
}
