//! `[[pusher.apps]]`: Pusher apps served beside the Tidings protocol.

use serde::{Deserialize, Serialize};

/// `[pusher]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The apps; none: no Pusher endpoints.
    pub apps: Vec<PusherApp>,
}

/// One Pusher app: its credentials and the namespace its channels live in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherApp {
    /// The app id (`/apps/{id}/...`).
    pub id: String,
    /// The public key clients connect with.
    pub key: String,
    /// The secret that signs API requests and channel authorisations.
    pub secret: String,
    /// Whether clients may send `client-*` events (private and presence channels).
    #[serde(default)]
    pub client_events: bool,
    /// Pusher connections this node holds for the app at once (0: no limit
    /// but the node's); one more is refused with `4004`.
    #[serde(default)]
    pub max_connections: usize,
    /// The Tidings namespace of the app's channels: Pusher channel `X` is
    /// Tidings channel `NAMESPACE:X`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Where the app's webhooks go, in Pusher's format (signed with the
    /// app's secret); none: no webhooks. Timing and retries are `[webhooks]`'s.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Which: `channel_occupied`, `channel_vacated`, `member_added`,
    /// `member_removed`, `client_event`.
    #[serde(default = "default_webhook_events")]
    pub webhook_events: Vec<super::WebhookEvent>,
}

fn default_namespace() -> String {
    "pusher".into()
}

fn default_webhook_events() -> Vec<super::WebhookEvent> {
    use super::WebhookEvent::*;
    vec![ChannelOccupied, ChannelVacated, MemberAdded, MemberRemoved]
}

impl PusherConfig {
    /// The app with `id`.
    pub fn app(&self, id: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// What is wrong with this section.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for app in &self.apps {
            if app.id.is_empty() || app.key.is_empty() {
                bad.push("`pusher.apps`: each app needs an `id` and a `key`".into());
            }
            if app.secret.len() < 8 {
                bad.push(format!(
                    "`pusher.apps` {:?}: `secret` needs at least 8 characters",
                    app.id
                ));
            }
            if app.namespace.is_empty()
                || !app
                    .namespace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bad.push(format!(
                    "`pusher.apps` {:?}: `namespace` is letters, digits, `_` and `-`",
                    app.id
                ));
            }
            if let Some(url) = &app.webhook_url
                && !super::backend::is_hook_url(url)
            {
                bad.push(format!(
                    "`pusher.apps` {:?}: `webhook_url` {url:?} is not an http(s) URL",
                    app.id
                ));
            }
            use super::WebhookEvent::*;
            let pusher_event = |e: &super::WebhookEvent| {
                matches!(
                    e,
                    ChannelOccupied | ChannelVacated | MemberAdded | MemberRemoved | ClientEvent
                )
            };
            if !app.webhook_events.iter().all(pusher_event) {
                bad.push(format!(
                    "`pusher.apps` {:?}: `webhook_events` are Pusher's: channel_occupied, channel_vacated, member_added, member_removed, client_event",
                    app.id
                ));
            }
            for (what, value) in [
                ("id", &app.id),
                ("key", &app.key),
                ("namespace", &app.namespace),
            ] {
                if !seen.insert((what, value.clone())) {
                    bad.push(format!(
                        "`pusher.apps`: two apps have the {what} {value:?} (each app is its own namespace)"
                    ));
                }
            }
        }
        bad
    }
}
