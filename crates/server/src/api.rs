//! The HTTP server API for backends: `POST /v1/api/<method>` with an API key.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::PublishRequest;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tidings_protocol::reply::Empty;
use tidings_protocol::{DisconnectCode, ErrorBody, ErrorCode, SinceArg};

use crate::engine::UserControl;
use crate::node::Node;
use crate::session;

/// An API error: the HTTP status follows the protocol code.
pub struct ApiError(pub ErrorBody);

impl From<ErrorBody> for ApiError {
    fn from(e: ErrorBody) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match ErrorCode::try_from(self.0.code) {
            Ok(ErrorCode::BadRequest) => StatusCode::BAD_REQUEST,
            Ok(ErrorCode::UnknownChannel) => StatusCode::NOT_FOUND,
            Ok(ErrorCode::PermissionDenied) => StatusCode::FORBIDDEN,
            Ok(ErrorCode::LimitExceeded) => StatusCode::PAYLOAD_TOO_LARGE,
            Ok(ErrorCode::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
            Ok(ErrorCode::TokenExpired) => StatusCode::UNAUTHORIZED,
            Ok(ErrorCode::Unrecoverable) => StatusCode::CONFLICT,
            Ok(ErrorCode::AlreadySubscribed | ErrorCode::NotSubscribed) => StatusCode::CONFLICT,
            // An engine that cannot reach its backend: retry.
            Ok(ErrorCode::Internal) if self.0.temporary => StatusCode::SERVICE_UNAVAILABLE,
            Ok(ErrorCode::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
            // A refusal in the backend's own codes (a proxy hook's).
            Err(_) if (1000..2000).contains(&self.0.code) => StatusCode::FORBIDDEN,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(serde_json::json!({ "error": self.0 }))).into_response()
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(ErrorBody::new(ErrorCode::BadRequest, message))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad(format!("malformed body: {e}")))
}

fn ok<T: Serialize>(body: &T) -> Result<Response, ApiError> {
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    key: Option<String>,
    priority: Option<tidings_protocol::Priority>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    channels: Vec<String>,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    key: Option<String>,
    priority: Option<tidings_protocol::Priority>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryBody {
    channel: String,
    since: Option<SinceArg>,
    limit: Option<u32>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    channel: String,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LastSeenBody {
    users: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsBody {
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    client: Option<String>,
    code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    user: String,
    channel: String,
}

#[derive(Serialize)]
struct ChannelEntry {
    channel: String,
    subscribers: usize,
}

#[derive(Serialize)]
struct ChannelsOk {
    channels: Vec<ChannelEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Bytes a request body may have beyond the largest `max_message_size`.
pub(crate) const BODY_ENVELOPE: usize = 64 * 1024;

/// Reads a request body of at most the largest `data` any namespace accepts
/// plus the envelope; over it, a JSON 104 (axum's own limit answers in plain text).
pub(crate) async fn read_body(node: &Node, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = node.namespaces().largest_message_size() + BODY_ENVELOPE;
    // A body trickled in a byte at a time must not hold its socket forever.
    let within = node.config.client.body_timeout;
    match tokio::time::timeout(within, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError(ErrorBody::new(
            ErrorCode::LimitExceeded,
            format!("request body is larger than {limit} bytes"),
        ))),
        Err(_) => Err(ApiError(ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(within)
            ),
        ))),
    }
}

/// Most channels one `channels` page returns.
const MAX_CHANNELS_PAGE: usize = 1000;

/// `POST /v1/api/{method}`.
pub async fn handle(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let checked = node.api_keys.read().check_header(auth).map(|(_, s)| s);
    let Some(scope) = checked else {
        let e = ErrorBody::new(ErrorCode::PermissionDenied, "a valid API key is required");
        let mut res = ApiError(e).into_response();
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return res;
    };
    if !scope.allows(&method) {
        let e = ErrorBody::new(
            ErrorCode::PermissionDenied,
            format!("this API key may not call `{}`", method.escape_default()),
        );
        return ApiError(e).into_response();
    }
    let body = match read_body(&node, body).await {
        Ok(b) => b,
        Err(e) => {
            node.metrics.command_error(e.0.code);
            return e.into_response();
        }
    };
    let header_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    match call(&node, &method, &body, header_key).await {
        Ok(res) => res,
        Err(e) => {
            node.metrics.command_error(e.0.code);
            e.into_response()
        }
    }
}

async fn call(
    node: &Node,
    method: &str,
    body: &[u8],
    header_key: Option<String>,
) -> Result<Response, ApiError> {
    match method {
        "publish" => {
            let b: PublishBody = parse(body)?;
            let (_, ns) = node.resolve(&b.channel)?;
            let request = PublishRequest {
                data: b.data,
                info: None,
                tags: b.tags,
                idempotency_key: b.idempotency_key.or(header_key),
                key: b.key,
                priority: b.priority,
            };
            ok(&session::publish(node, &b.channel, &ns, request).await?)
        }
        "broadcast" => {
            let b: BroadcastBody = parse(body)?;
            let key = b.idempotency_key.or(header_key);
            let mut results = Vec::with_capacity(b.channels.len());
            for channel in &b.channels {
                let r = match node.resolve(channel) {
                    Ok((_, ns)) => {
                        let request = PublishRequest {
                            data: b.data.clone(),
                            info: None,
                            tags: b.tags.clone(),
                            idempotency_key: key.clone(),
                            key: b.key.clone(),
                            priority: b.priority,
                        };
                        session::publish(node, channel, &ns, request).await
                    }
                    Err(e) => Err(e),
                };
                results.push(match r {
                    Ok(p) => serde_json::to_value(p).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                });
            }
            ok(&serde_json::json!({ "results": results }))
        }
        "history" => {
            let b: HistoryBody = parse(body)?;
            let (_, ns) = node.resolve(&b.channel)?;
            ok(&session::history(node, &b.channel, &ns, b.since, b.limit, b.reverse).await?)
        }
        "presence" => {
            let b: PresenceBody = parse(body)?;
            let (_, ns) = node.resolve(&b.channel)?;
            ok(&session::presence_list(node, &b.channel, &ns, b.limit, b.cursor).await?)
        }
        "last_seen" => {
            let b: LastSeenBody = parse(body)?;
            ok(&session::last_seen(node, &b.users).await?)
        }
        "presence_stats" => {
            let b: ChannelBody = parse(body)?;
            let (_, ns) = node.resolve(&b.channel)?;
            ok(&session::presence_stats(node, &b.channel, &ns).await?)
        }
        "channels" => {
            let b: ChannelsBody = parse(body)?;
            let limit = b.limit.unwrap_or(100).clamp(1, MAX_CHANNELS_PAGE);
            // One more than asked tells whether another page follows.
            // Every node's channels (with the Redis engine, a survey of the nodes).
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
            ok(&ChannelsOk {
                channels,
                next_cursor,
            })
        }
        "disconnect" => {
            let b: DisconnectBody = parse(body)?;
            if b.user.is_empty() {
                return Err(bad("`user` must not be empty"));
            }
            let code = DisconnectCode(b.code.unwrap_or(DisconnectCode::FORCE_RECONNECT.0));
            if !(3000..4000).contains(&code.0) {
                return Err(bad("`code` must be within 3000..3999"));
            }
            // Every node closes the user's connections it holds.
            node.engine
                .control(UserControl::Disconnect {
                    user: b.user,
                    client: b.client,
                    code: code.0,
                })
                .await
                .map_err(session::internal)?;
            ok(&Empty {})
        }
        "unsubscribe" => {
            let b: UnsubscribeBody = parse(body)?;
            if b.user.is_empty() {
                return Err(bad("`user` must not be empty"));
            }
            node.resolve(&b.channel)?;
            node.engine
                .control(UserControl::Unsubscribe {
                    user: b.user,
                    channel: b.channel,
                    code: DisconnectCode::FORBIDDEN.0,
                })
                .await
                .map_err(session::internal)?;
            ok(&Empty {})
        }
        "info" => {
            let Empty {} = parse(body)?;
            // Every node that announced itself lately; this one as it is now.
            let mut nodes = node.engine.nodes().await.map_err(session::internal)?;
            nodes.retain(|n| n.id != node.id);
            nodes.push(node.info());
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            ok(&serde_json::json!({ "nodes": nodes }))
        }
        other => Err(ApiError(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("unknown API method `{}`", other.escape_default()),
        ))),
    }
}
