//! The OpenAPI 3.1 description of the server API and the client actions,
//! `GET /v1/openapi.json`, generated from the handlers' own types.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi};

use super::ErrorResponse;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidings HTTP API",
        description = "The server API for backends (`/v1/api/*`, an API key) and the actions of \
                       SSE and long-poll clients (`/v1/client/*`, the connection token). Every \
                       error answers `{\"error\": {\"code\", \"message\", \"temporary\"}}` with \
                       the protocol's code; see docs/protocol.md."
    ),
    paths(
        super::publish::publish,
        super::publish::broadcast,
        super::history::history,
        super::presence::presence,
        super::presence::presence_stats,
        super::presence::last_seen,
        super::channels::channels,
        super::channels::info,
        super::users::disconnect,
        super::users::unsubscribe,
        super::members::add,
        super::members::remove,
        super::members::list,
        crate::client_api::publish,
        crate::client_api::history,
        crate::client_api::presence,
        crate::client_api::presence_stats,
        crate::client_api::last_seen,
        crate::client_api::heartbeat,
        crate::client_api::cursor,
        crate::client_api::inbox,
        crate::client_api::members,
        crate::client_api::keys,
    ),
    components(schemas(ErrorResponse)),
    modifiers(&Errors, &Security, &ChannelNames),
    tags(
        (name = "server API", description = "For backends: `Authorization: Bearer <API key>`."),
        (name = "client actions", description = "For SSE and long-poll clients: `Authorization: Bearer <connection token>`, or none for anonymous access where the namespace allows it."),
    )
)]
struct ApiDoc;

/// The error answers every operation may give, by HTTP status.
const ERRORS: [(&str, &str); 9] = [
    ("400", "Malformed body or arguments (code 101)."),
    ("401", "No valid API key (103), or an expired token (106)."),
    (
        "403",
        "Not allowed: API key scope, permissions, or a backend's refusal (103, 1000–1999).",
    ),
    ("404", "No namespace has this channel (102)."),
    (
        "409",
        "Already subscribed (107), not subscribed or a lease that ended (108), or a position that cannot be recovered (109).",
    ),
    ("413", "Body or data over a limit (104)."),
    ("429", "Rate limited (105)."),
    ("500", "An internal error (100): a bug, never expected."),
    (
        "503",
        "The engine cannot reach its backend; retry (100, temporary).",
    ),
];

/// Adds [`ERRORS`] to every operation, all with [`ErrorResponse`] bodies.
struct Errors;

impl Modify for Errors {
    fn modify(&self, openapi: &mut Document) {
        let body = ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "ErrorResponse",
            ))))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let Some(op) = item.post.as_mut() else {
                continue;
            };
            for (status, description) in ERRORS {
                let response = ResponseBuilder::new()
                    .description(description)
                    .content("application/json", body.clone())
                    .build();
                op.responses
                    .responses
                    .insert(status.to_string(), RefOr::T(response));
            }
        }
    }
}

/// A channel name (see `tidings_protocol::channel`).
const CHANNEL_PATTERN: &str = r"^[A-Za-z0-9_.:@#,=-]{1,255}$";

/// Gives every `channel` property of a request body the channel-name pattern.
struct ChannelNames;

impl Modify for ChannelNames {
    fn modify(&self, openapi: &mut Document) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for schema in components.schemas.values_mut() {
            let RefOr::T(Schema::Object(object)) = schema else {
                continue;
            };
            if let Some(RefOr::T(Schema::Object(channel))) = object.properties.get_mut("channel") {
                channel.pattern = Some(CHANNEL_PATTERN.into());
            }
        }
    }
}

/// The two bearer schemes: API keys and connection tokens.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let mut jwt = Http::new(HttpAuthScheme::Bearer);
        jwt.bearer_format = Some("JWT".into());
        components.add_security_scheme("token", SecurityScheme::Http(jwt));
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").into();
        doc.to_json().unwrap_or_default()
    })
}

/// `GET /v1/openapi.json` (no auth).
pub async fn handle() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}
