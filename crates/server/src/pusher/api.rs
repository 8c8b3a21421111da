//! Pusher's HTTP API under `/apps/{app_id}/` (and `/users/` for one SDK), as the Pusher server SDKs
//! call it: trigger events (one or a batch), query channels and their
//! users, terminate a user's connections. Each request is signed
//! ([`super::sign`]); answers and errors are Pusher's (JSON bodies, plain
//! text errors with Pusher's statuses).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tidings_protocol::{DisconnectCode, ErrorCode};

use super::{sign, tidings_channel};
use crate::config::PusherApp;
use crate::engine::{PublishRequest, UserControl};
use crate::node::Node;
use crate::session;

/// Most channels one event names (Pusher's limit).
const MAX_CHANNELS: usize = 100;
/// Most events in one batch (Pusher's limit).
const MAX_BATCH: usize = 10;
/// Longest event name (Pusher's limit).
const MAX_NAME: usize = 200;
/// Most channels listed by `GET /channels`.
const MAX_LISTED: usize = 10_000;

/// An error as Pusher answers it: a status and a line of text.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1 + "\n",
        )
            .into_response()
    }
}

fn bad(message: impl Into<String>) -> Fail {
    Fail(StatusCode::BAD_REQUEST, message.into())
}

/// A refusal of Tidings (a limit, a bad channel) as Pusher's status.
fn refused(e: tidings_protocol::ErrorBody) -> Fail {
    let status = match ErrorCode::try_from(e.code) {
        Ok(ErrorCode::LimitExceeded) => StatusCode::PAYLOAD_TOO_LARGE,
        Ok(ErrorCode::BadRequest | ErrorCode::UnknownChannel) => StatusCode::BAD_REQUEST,
        Ok(ErrorCode::PermissionDenied) => StatusCode::FORBIDDEN,
        Ok(ErrorCode::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
        Ok(ErrorCode::Internal) if e.temporary => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Fail(status, e.message)
}

/// `/apps/{app_id}/...`, every method.
pub async fn handle(State(node): State<Arc<Node>>, req: Request) -> Response {
    match call(&node, req).await {
        Ok(body) => (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
        Err(fail) => fail.into_response(),
    }
}

async fn call(node: &Arc<Node>, req: Request) -> Result<Value, Fail> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode(s).ok_or_else(|| bad(format!("bad percent-encoding in {path}"))))
        .collect::<Result<_, _>>()?;
    // `/apps/{id}/...`; and `/users/{id}/terminate_connections` as the
    // Python SDK (3.3) sends it, without the app: its `auth_key` names it.
    let (app, rest_from) = if segments.first().map(String::as_str) == Some("users") {
        let key = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "auth_key")
            .map(|(_, v)| v.into_owned());
        let app = key.and_then(|k| node.pusher.by_key(&k).map(|a| &a.config));
        (app, 0)
    } else {
        (segments.get(1).and_then(|id| node.config.pusher.app(id)), 2)
    };
    let Some(app) = app else {
        return Err(Fail(StatusCode::NOT_FOUND, "unknown app".into()));
    };
    let body = read(node, body).await?;
    sign::check(
        app,
        parts.method.as_str(),
        &path,
        &query,
        &body,
        crate::auth::unix_now(),
    )
    .map_err(|e| Fail(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let rest: Vec<&str> = segments
        .iter()
        .skip(rest_from)
        .map(String::as_str)
        .collect();
    match (&parts.method, rest.as_slice()) {
        (&Method::POST, ["events"]) => {
            let event: Event = parse(&body)?;
            let event = check(node, app, event)?;
            trigger(node, event).await.map(Value::Object)
        }
        (&Method::POST, ["batch_events"]) => {
            #[derive(Deserialize)]
            struct Batch {
                batch: Vec<Event>,
            }
            let batch: Batch = parse(&body)?;
            if batch.batch.len() > MAX_BATCH {
                return Err(bad(format!("at most {MAX_BATCH} events in a batch")));
            }
            let checked = batch
                .batch
                .into_iter()
                .map(|event| check(node, app, event))
                .collect::<Result<Vec<_>, _>>()?;
            let mut answers = Vec::with_capacity(checked.len());
            for event in checked {
                let info = event.info.is_some();
                let mut answer = trigger(node, event).await?;
                // A batch answers each event's channel info flat.
                let flat = match answer.remove("channels") {
                    Some(Value::Object(channels)) if info => {
                        channels.into_iter().next().map(|(_, v)| v)
                    }
                    _ => None,
                };
                answers.push(flat.unwrap_or_else(|| json!({})));
            }
            Ok(json!({ "batch": answers }))
        }
        (&Method::GET, ["channels"]) => list_channels(node, app, &params).await,
        (&Method::GET, ["channels", channel]) => channel_info(node, app, channel, &params).await,
        (&Method::GET, ["channels", channel, "users"]) => users(node, app, channel).await,
        (&Method::POST, ["users", user, "terminate_connections"]) => {
            node.engine
                .control(UserControl::Disconnect {
                    user: (*user).to_string(),
                    client: None,
                    code: DisconnectCode::FORBIDDEN.0,
                })
                .await
                .map_err(|e| refused(session::internal(e)))?;
            Ok(json!({}))
        }
        _ => Err(Fail(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {path}", parts.method),
        )),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    // Path segments: `+` stays `+`, so decode by hand around form_urlencoded.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn read(node: &Arc<Node>, body: Body) -> Result<bytes::Bytes, Fail> {
    crate::api::read_body(node, body)
        .await
        .map_err(|e| refused(e.0))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Fail> {
    serde_json::from_slice(body).map_err(|e| bad(format!("malformed body: {e}")))
}

/// One event of `events` or of a batch.
#[derive(Deserialize)]
struct Event {
    name: String,
    data: String,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    /// The triggering client's socket, excluded from the delivery.
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// An event checked whole before anything of it (or of its batch) is
/// published: a refusal never leaves a part published for a retry to repeat.
struct Checked {
    channels: Vec<(String, String, crate::config::NamespaceOptions)>,
    data: Box<serde_json::value::RawValue>,
    socket_id: Option<String>,
    info: Option<String>,
}

fn check(node: &Arc<Node>, app: &PusherApp, event: Event) -> Result<Checked, Fail> {
    let channels: Vec<String> = match (event.channels, event.channel) {
        (Some(c), None) => c,
        (None, Some(c)) => vec![c],
        _ => return Err(bad("give `channels` (an array) or `channel`")),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err(bad(format!("name 1 to {MAX_CHANNELS} channels")));
    }
    if event.name.is_empty() || event.name.len() > MAX_NAME {
        return Err(bad(format!("an event name is 1 to {MAX_NAME} characters")));
    }
    if let Some(info) = &event.info {
        for attribute in info.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match attribute {
                "subscription_count" => {}
                "user_count" if channels.iter().all(|c| c.starts_with("presence-")) => {}
                "user_count" => return Err(bad("user_count is only for presence channels")),
                other => return Err(bad(format!("unknown info attribute {other:?}"))),
            }
        }
    }
    let data = serde_json::value::to_raw_value(&json!({"event": event.name, "data": event.data}))
        .map_err(|e| bad(e.to_string()))?;
    let mut resolved = Vec::with_capacity(channels.len());
    for channel in channels {
        let full = tidings_channel(app, &channel).map_err(bad)?;
        let (_, ns) = node.resolve(&full).map_err(refused)?;
        if data.get().len() > ns.max_message_size {
            return Err(Fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("data is larger than {} bytes", ns.max_message_size),
            ));
        }
        resolved.push((channel, full, ns));
    }
    Ok(Checked {
        channels: resolved,
        data,
        socket_id: event.socket_id,
        info: event.info,
    })
}

/// Publishes a checked event into each of its channels: Tidings
/// subscribers of `NAMESPACE:channel` get `{"event": name, "data": "<the
/// data string>"}`.
async fn trigger(node: &Arc<Node>, event: Checked) -> Result<Map<String, Value>, Fail> {
    // The publication names the excluded socket as its maker: Pusher
    // connections do not deliver a publication to the socket that made it.
    let info = event.socket_id.map(|socket| tidings_protocol::ClientInfo {
        client: socket,
        user: String::new(),
        info: None,
    });
    for (_, full, ns) in &event.channels {
        let request = PublishRequest {
            data: event.data.clone(),
            info: info.clone(),
            tags: None,
            idempotency_key: None,
            key: None,
            priority: None,
            snapshot: false,
        };
        session::publish(node, full, ns, request)
            .await
            .map_err(refused)?;
    }
    let Some(info) = event.info else {
        return Ok(Map::new());
    };
    let mut out = Map::new();
    for (channel, full, ns) in &event.channels {
        out.insert(
            channel.clone(),
            Value::Object(counts(node, channel, full, ns, &info).await?),
        );
    }
    Ok(Map::from_iter([("channels".into(), Value::Object(out))]))
}

/// `subscription_count` and `user_count` of a channel, as `info` asks.
async fn counts(
    node: &Arc<Node>,
    channel: &str,
    full: &str,
    ns: &crate::config::NamespaceOptions,
    info: &str,
) -> Result<Map<String, Value>, Fail> {
    let mut out = Map::new();
    for attribute in info.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match attribute {
            "subscription_count" => {
                out.insert(attribute.into(), json!(subscribers(node, full).await?));
            }
            "user_count" => {
                if !channel.starts_with("presence-") {
                    return Err(bad("user_count is only for presence channels"));
                }
                let stats = session::presence_stats(node, full, ns)
                    .await
                    .map_err(refused)?;
                out.insert(attribute.into(), json!(stats.users));
            }
            other => return Err(bad(format!("unknown info attribute {other:?}"))),
        }
    }
    Ok(out)
}

/// Subscribers of `full` across the nodes.
async fn subscribers(node: &Arc<Node>, full: &str) -> Result<usize, Fail> {
    let page = node
        .engine
        .channels(full, None, 2)
        .await
        .map_err(|e| refused(session::internal(e)))?;
    Ok(page
        .into_iter()
        .find(|(c, _)| c == full)
        .map_or(0, |(_, n)| n))
}

/// `GET /channels`: occupied channels, optionally by prefix.
async fn list_channels(
    node: &Arc<Node>,
    app: &PusherApp,
    params: &BTreeMap<String, String>,
) -> Result<Value, Fail> {
    let filter = params.get("filter_by_prefix").map_or("", String::as_str);
    let info = params.get("info").map_or("", String::as_str);
    if info.split(',').any(|a| a.trim() == "user_count") && !filter.starts_with("presence-") {
        return Err(bad("info=user_count needs filter_by_prefix=presence-"));
    }
    let prefix = format!("{}:", app.namespace);
    let page = node
        .engine
        .channels(&format!("{prefix}{filter}"), None, MAX_LISTED)
        .await
        .map_err(|e| refused(session::internal(e)))?;
    let mut channels = Map::new();
    for (full, _) in page {
        if !full.starts_with(&prefix) {
            continue;
        }
        let name = &super::pusher_channel(&full);
        let attributes = if info.is_empty() {
            Map::new()
        } else {
            let (_, ns) = node.resolve(&full).map_err(refused)?;
            counts(node, name, &full, &ns, info).await?
        };
        channels.insert(name.to_string(), Value::Object(attributes));
    }
    Ok(json!({ "channels": channels }))
}

/// `GET /channels/{name}`: whether it is occupied, and counts.
async fn channel_info(
    node: &Arc<Node>,
    app: &PusherApp,
    channel: &str,
    params: &BTreeMap<String, String>,
) -> Result<Value, Fail> {
    let full = tidings_channel(app, channel).map_err(bad)?;
    let (_, ns) = node.resolve(&full).map_err(refused)?;
    let mut out = Map::new();
    out.insert(
        "occupied".into(),
        json!(subscribers(node, &full).await? > 0),
    );
    if let Some(info) = params.get("info") {
        out.extend(counts(node, channel, &full, &ns, info).await?);
    }
    Ok(Value::Object(out))
}

/// `GET /channels/{name}/users`: the users of a presence channel.
async fn users(node: &Arc<Node>, app: &PusherApp, channel: &str) -> Result<Value, Fail> {
    if !channel.starts_with("presence-") {
        return Err(bad("users are listed for presence channels only"));
    }
    let full = tidings_channel(app, channel).map_err(bad)?;
    let (_, ns) = node.resolve(&full).map_err(refused)?;
    let mut users = std::collections::BTreeSet::new();
    let mut cursor = None;
    loop {
        let page = session::presence_list(node, &full, &ns, Some(1000), cursor)
            .await
            .map_err(refused)?;
        users.extend(page.clients.into_values().map(|c| c.user));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let users: Vec<Value> = users.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(json!({ "users": users }))
}
