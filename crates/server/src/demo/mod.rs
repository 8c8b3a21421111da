//! The demo app "Live classroom" and the browser SDK, embedded in the binary,
//! and dev mode's token endpoint that lets the demo join with a name.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rust_embed::RustEmbed;
use serde::Deserialize;
use tidings_protocol::ErrorCode;

use crate::node::Node;

pub mod snapshots;

/// The demo's pages (`web/`). Debug builds read them from disk, so edits show
/// without a rebuild; release builds carry them.
#[derive(RustEmbed)]
#[folder = "../../web/"]
struct Web;

/// The browser SDK as built (`sdk/js/dist/`), served under `/sdk/`.
#[derive(RustEmbed)]
#[folder = "../../sdk/js/dist/"]
struct Sdk;

/// Routes of the demo: `/`, `/<page>`, `/sdk/<file>`.
pub fn router() -> Router<Arc<Node>> {
    Router::new()
        .route("/", get(|| async { asset::<Web>("index.html") }))
        .route(
            "/sdk/{*file}",
            get(|Path(file): Path<String>| async move { asset::<Sdk>(&file) }),
        )
        .route(
            "/{file}",
            get(|Path(file): Path<String>| async move { asset::<Web>(&file) }),
        )
}

/// Routes of dev mode: `POST /v1/dev/token` mints a connection token for a
/// name, signed with the generated secret; `POST /v1/dev/dm` opens the
/// demo chat's conversation of the caller with others. Never mounted with a
/// configured secret.
pub fn dev_router(secret: String) -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/v1/dev/token",
            post(move |body: axum::body::Bytes| dev_token(body, secret.clone())),
        )
        .route("/v1/dev/dm", post(dev_dm))
}

#[derive(Deserialize)]
struct DevDmRequest {
    /// The other members' user ids.
    with: Vec<String>,
}

/// Makes the token's user and `with` members of their conversation in the
/// demo's `dm` namespace (the same people, the same channel); answers
/// `{"channel"}`. What a backend would do with the server API.
async fn dev_dm(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(Ok(claims)) = (match token {
        Some(t) => Some(node.verify_token(t).await),
        None => None,
    }) else {
        return (StatusCode::UNAUTHORIZED, "a dev token is needed\n").into_response();
    };
    let Ok(req) = serde_json::from_slice::<DevDmRequest>(&body) else {
        return bad_request("body must be {\"with\": [\"user\", ...]}");
    };
    let mut users: Vec<String> = req.with.iter().map(|u| u.trim().to_lowercase()).collect();
    users.push(claims.sub);
    users.sort();
    users.dedup();
    if users.len() < 2 || users.iter().any(String::is_empty) {
        return bad_request("name at least one other user");
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(users.join("\n").as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let channel = format!("dm:{hex}");
    match crate::chat::add_members(&node, &channel, &users).await {
        Ok(()) => axum::Json(serde_json::json!({ "channel": channel })).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": e })),
        )
            .into_response(),
    }
}

fn asset<E: RustEmbed>(path: &str) -> Response {
    match E::get(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                // The demo is small and changes with the binary; no stale tabs.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            file.data,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json" | "map") => "application/json",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[derive(Deserialize)]
struct DevTokenRequest {
    /// The display name; also the user id, lowercased.
    name: String,
}

/// Lifetime of a dev token: long enough for a class, short enough to show refresh.
const DEV_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

async fn dev_token(body: axum::body::Bytes, secret: String) -> Response {
    let Ok(req) = serde_json::from_slice::<DevTokenRequest>(&body) else {
        return bad_request("body must be {\"name\": \"...\"}");
    };
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 40 {
        return bad_request("name must be 1 to 40 characters");
    }
    let user = name.to_lowercase();
    let info = serde_json::value::to_raw_value(&serde_json::json!({ "name": name })).ok();
    match crate::auth::mint_token(&secret, &user, Some(DEV_TOKEN_TTL), info) {
        Ok(token) => {
            axum::Json(serde_json::json!({ "token": token, "user": user })).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": { "code": ErrorCode::BadRequest.code(), "message": message } })),
    )
        .into_response()
}
