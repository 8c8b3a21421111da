//! The HTTP server API for backends: `POST /v1/api/<method>` with an API
//! key. One handler per method, each with typed body and answer; the same
//! types describe the API in OpenAPI ([`openapi`]).

mod channels;
mod history;
mod members;
pub mod openapi;
mod presence;
mod publish;
mod users;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tidings_protocol::{ErrorBody, ErrorCode};

use crate::auth::ApiScope;
use crate::node::Node;

pub use history::HistoryBody;
pub use members::MembersListBody;
pub use presence::{ChannelBody, LastSeenBody, PresenceBody};
pub use publish::PublishBody;

/// An API error: the HTTP status follows the protocol code.
pub struct ApiError(pub ErrorBody);

impl From<ErrorBody> for ApiError {
    fn from(e: ErrorBody) -> Self {
        ApiError(e)
    }
}

/// Every error's body: `{"error": {"code", "message", "temporary"}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// What went wrong, with its protocol code.
    pub error: ErrorBody,
}

/// The protocol code of an error answer, for [`count_errors`].
#[derive(Clone, Copy)]
struct AnsweredCode(u16);

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
        let code = AnsweredCode(self.0.code);
        let mut res = (status, Json(ErrorResponse { error: self.0 })).into_response();
        res.extensions_mut().insert(code);
        res
    }
}

impl ApiError {
    /// The answer, left out of `tidings_command_errors_total` (counted
    /// elsewhere, or not a command error).
    pub(crate) fn uncounted(self) -> Response {
        let mut res = self.into_response();
        res.extensions_mut().remove::<AnsweredCode>();
        res
    }
}

/// A 400 with `message`.
pub(crate) fn bad(message: impl Into<String>) -> ApiError {
    ApiError(ErrorBody::new(ErrorCode::BadRequest, message))
}

/// Parses a JSON body; an empty one reads as `{}`.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad(format!("malformed body: {e}")))
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

/// Marks a request the admin UI forwards for a logged-in operator: every
/// method is allowed, no API key needed. Only set inside the process.
#[derive(Clone, Copy)]
pub struct AdminGrant;

/// An authorised API call: the key allows the method (the path's last
/// segment), and the body parsed as `T`.
pub struct Call<T> {
    /// The request body.
    pub body: T,
    /// The `Idempotency-Key` header, for bodies without `idempotency_key`.
    pub idempotency_key: Option<String>,
}

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for Call<T> {
    type Rejection = Response;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, Response> {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let granted = req.extensions().get::<AdminGrant>().map(|_| ApiScope::All);
        let checked = granted.or_else(|| node.api_keys.read().check_header(auth).map(|(_, s)| s));
        let Some(scope) = checked else {
            // Refused keys are not command errors (scanners would swell them).
            let e = ErrorBody::new(ErrorCode::PermissionDenied, "a valid API key is required");
            let mut res = ApiError(e).uncounted();
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            return Err(res);
        };
        if !scope.allows(method) {
            let e = ErrorBody::new(
                ErrorCode::PermissionDenied,
                format!("this API key may not call `{}`", method.escape_default()),
            );
            return Err(ApiError(e).uncounted());
        }
        let idempotency_key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let parsed = async { parse(&read_body(node, req.into_body()).await?) };
        match parsed.await {
            Ok(body) => Ok(Call {
                body,
                idempotency_key,
            }),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// The API's routes, `/v1/api/*`.
pub fn router(node: &Arc<Node>) -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/api/publish", post(publish::publish))
        .route("/v1/api/broadcast", post(publish::broadcast))
        .route("/v1/api/history", post(history::history))
        .route("/v1/api/presence", post(presence::presence))
        .route("/v1/api/presence_stats", post(presence::presence_stats))
        .route("/v1/api/last_seen", post(presence::last_seen))
        .route("/v1/api/channels", post(channels::channels))
        .route("/v1/api/info", post(channels::info))
        .route("/v1/api/disconnect", post(users::disconnect))
        .route("/v1/api/unsubscribe", post(users::unsubscribe))
        .route("/v1/api/members/add", post(members::add))
        .route("/v1/api/members/remove", post(members::remove))
        .route("/v1/api/members/list", post(members::list))
        .route("/v1/api/{method}", post(unknown))
        .layer(middleware::from_fn_with_state(node.clone(), count_errors))
        // `read_body` bounds bodies by the namespaces' limits instead.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// Counts every error answer by its protocol code (`/v1/api` and
/// `/v1/client`).
pub(crate) async fn count_errors(
    State(node): State<Arc<Node>>,
    req: Request,
    next: Next,
) -> Response {
    let res = next.run(req).await;
    if let Some(AnsweredCode(code)) = res.extensions().get::<AnsweredCode>() {
        node.metrics.command_error(*code);
    }
    res
}

/// A method the API does not have (after the key is checked).
async fn unknown(Path(method): Path<String>, _: Call<serde::de::IgnoredAny>) -> ApiError {
    bad(format!("unknown API method `{}`", method.escape_default()))
}
