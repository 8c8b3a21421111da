//! The admin UI at `/admin` (with `[admin] secret`): a login that sets an
//! `HttpOnly`, `SameSite=Strict` session cookie; every state-changing
//! request also carries the session's CSRF token in `X-CSRF-Token`. Its
//! calls are the server API's own handlers, granted by the session instead
//! of an API key; the live tail is an observer session on the channel.

mod tail;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use parking_lot::Mutex;
use rust_embed::RustEmbed;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use tidings_protocol::{ErrorBody, ErrorCode};
use tower::ServiceExt;

use crate::api::{AdminGrant, ApiError, ErrorResponse};
use crate::auth::{constant_time_eq, random_secret};
use crate::node::Node;

/// The session cookie's name.
const COOKIE: &str = "tidings_admin";
/// The header that carries the CSRF token.
const CSRF_HEADER: &str = "x-csrf-token";
/// Most logins held at once; the oldest goes first.
const MAX_SESSIONS: usize = 64;
/// A wrong secret is answered after this long (slows guessing).
const WRONG_SECRET_DELAY: Duration = Duration::from_millis(300);

/// The admin UI's pages (`web/admin/`).
#[derive(RustEmbed)]
#[folder = "../../web/admin/"]
struct Pages;

/// One login: its CSRF token and when it ends.
struct Login {
    csrf: String,
    expires: Instant,
}

/// The admin UI's state: its secret, the logins, and the API it calls.
pub struct Admin {
    secret: String,
    ttl: Duration,
    logins: Mutex<HashMap<String, Login>>,
    /// Held while a wrong secret is answered.
    guesses: tokio::sync::Mutex<()>,
    api: Router,
}

impl Admin {
    /// The CSRF token of the login `cookie` names, while it lasts.
    fn csrf_of(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers, COOKIE)?;
        let mut logins = self.logins.lock();
        let now = Instant::now();
        logins.retain(|_, l| l.expires > now);
        logins.get(id).map(|l| l.csrf.clone())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// An admin request refused: 401 (not logged in) or 403 (no CSRF token).
pub struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let error = ErrorBody::new(ErrorCode::PermissionDenied, self.1);
        (self.0, Json(ErrorResponse { error })).into_response()
    }
}

const NOT_LOGGED_IN: Refused = Refused(StatusCode::UNAUTHORIZED, "log in first");

/// A request from a logged-in operator (the cookie alone: reads).
pub struct Viewer;

impl FromRequestParts<Arc<Node>> for Viewer {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Node>) -> Result<Self, Refused> {
        logged_in(parts).map(|_| Viewer)
    }
}

/// A state-changing request from a logged-in operator: the cookie and the
/// login's CSRF token in `X-CSRF-Token` (another site's page can make the
/// browser send the cookie, but cannot read the token).
pub struct Operator;

impl FromRequestParts<Arc<Node>> for Operator {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Node>) -> Result<Self, Refused> {
        let csrf = logged_in(parts)?;
        let sent = parts.headers.get(CSRF_HEADER).map(HeaderValue::as_bytes);
        if !sent.is_some_and(|sent| constant_time_eq(sent, csrf.as_bytes())) {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token",
            ));
        }
        Ok(Operator)
    }
}

/// The login's CSRF token, or the refusal: not logged in.
fn logged_in(parts: &Parts) -> Result<String, Refused> {
    parts
        .extensions
        .get::<Arc<Admin>>()
        .and_then(|admin| admin.csrf_of(&parts.headers))
        .ok_or(NOT_LOGGED_IN)
}

/// The routes of the admin UI, when `[admin] secret` is set.
pub fn router(node: &Arc<Node>) -> Option<Router<Arc<Node>>> {
    let secret = node.config.admin.secret.clone()?;
    let admin = Arc::new(Admin {
        secret,
        ttl: node.config.admin.session_ttl,
        logins: Mutex::new(HashMap::new()),
        guesses: tokio::sync::Mutex::new(()),
        api: crate::api::router(node).with_state(node.clone()),
    });
    let router = Router::new()
        .route("/admin", get(|| async { page("index.html") }))
        .route("/admin/", get(|| async { page("index.html") }))
        .route(
            "/admin/assets/{file}",
            get(|Path(file): Path<String>| async move { page(&file) }),
        )
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/session", get(session))
        .route("/admin/api/{method}", post(call))
        .route("/admin/tail", get(tail::tail))
        .route("/admin/activity", get(activity))
        .layer(Extension(admin));
    Some(router)
}

/// A page or asset, never cached, never framed, scripts from here only.
fn page(path: &str) -> Response {
    let Some(file) = Pages::get(path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let kind = match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        file.data,
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginBody {
    secret: String,
}

/// `POST /admin/login {"secret"}`: a session cookie and its CSRF token.
async fn login(
    State(node): State<Arc<Node>>,
    Extension(admin): Extension<Arc<Admin>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Bounded in size and in time, like every other body.
    let body = match crate::api::read_body(&node, body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let Ok(LoginBody { secret }) = serde_json::from_slice(&body) else {
        let e = ErrorBody::new(ErrorCode::BadRequest, "expected {\"secret\": \"...\"}");
        return ApiError(e).into_response();
    };
    // Digests of equal length: the comparison tells nothing of the length.
    let digest = |s: &str| sha2::Sha256::digest(s.as_bytes());
    if !constant_time_eq(&digest(&secret), &digest(&admin.secret)) {
        // One wrong guess at a time for the whole node, each held for the
        // delay: parallel guessing is no faster than serial.
        let _turn = admin.guesses.lock().await;
        tracing::warn!("admin login refused: wrong secret");
        tokio::time::sleep(WRONG_SECRET_DELAY).await;
        return Refused(StatusCode::UNAUTHORIZED, "wrong secret").into_response();
    }
    let (id, csrf) = (random_secret(), random_secret());
    {
        let mut logins = admin.logins.lock();
        if logins.len() >= MAX_SESSIONS
            && let Some(oldest) = logins
                .iter()
                .min_by_key(|(_, l)| l.expires)
                .map(|(k, _)| k.clone())
        {
            logins.remove(&oldest);
        }
        let expires = Instant::now() + admin.ttl;
        let csrf = csrf.clone();
        logins.insert(id.clone(), Login { csrf, expires });
    }
    // Behind a TLS-terminating proxy the cookie is only ever sent over TLS.
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{}",
        admin.ttl.as_secs(),
        if https { "; Secure" } else { "" }
    );
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "csrf": csrf })),
    )
        .into_response()
}

/// `POST /admin/logout`: ends the login.
async fn logout(
    _: Operator,
    Extension(admin): Extension<Arc<Admin>>,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        admin.logins.lock().remove(id);
    }
    let clear = format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, clear)], Json(json!({}))).into_response()
}

/// `GET /admin/session`: the login's CSRF token (for a reloaded page).
async fn session(Extension(admin): Extension<Arc<Admin>>, headers: HeaderMap) -> Response {
    match admin.csrf_of(&headers) {
        Some(csrf) => Json(json!({ "csrf": csrf })).into_response(),
        None => NOT_LOGGED_IN.into_response(),
    }
}

/// `POST /admin/api/{method}`: the server API's method, as the operator.
async fn call(
    _: Operator,
    Extension(admin): Extension<Arc<Admin>>,
    Path(method): Path<String>,
    req: Request,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let named = !method.is_empty() && method.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let Some(uri) = named
        .then(|| format!("/v1/api/{method}").parse().ok())
        .flatten()
    else {
        let e = ErrorBody::new(ErrorCode::BadRequest, "bad method name");
        return ApiError(e).into_response();
    };
    parts.uri = uri;
    parts.headers.remove(header::AUTHORIZATION);
    parts.extensions.insert(AdminGrant);
    match admin
        .api
        .clone()
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

#[derive(Deserialize)]
struct ActivityQuery {
    #[serde(default)]
    prefix: String,
}

/// Most channels `/admin/activity` lists.
const MAX_ACTIVITY: usize = 1000;

/// `GET /admin/activity?prefix=`: this node's channels with their
/// publication counters, for rates.
async fn activity(
    _: Viewer,
    State(node): State<Arc<Node>>,
    Query(q): Query<ActivityQuery>,
) -> Response {
    let channels = node.hub.activity(&q.prefix, MAX_ACTIVITY);
    Json(json!({ "node": node.info().name, "channels": channels })).into_response()
}
