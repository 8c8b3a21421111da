//! The Pusher protocol beside Tidings' own, on the same channels: a Pusher
//! app's channel `X` is the Tidings channel `NAMESPACE:X` (namespace
//! `pusher` unless the app names another). [`api`] serves the HTTP API of
//! the Pusher server SDKs, signed as [`sign`] checks; [`frame`] is the
//! WebSocket protocol's messages (the connection is
//! `crate::transport::pusher`).

pub mod api;
pub mod frame;
pub mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{Config, PusherApp};

/// The configured apps, each with its count of open Pusher connections.
pub struct Apps(Vec<Arc<App>>);

/// One app at run time.
pub struct App {
    /// Its configuration.
    pub config: PusherApp,
    connections: AtomicUsize,
}

/// One open connection of an app, counted until dropped.
pub struct Held(Arc<App>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::ops::Deref for Held {
    type Target = PusherApp;

    fn deref(&self) -> &PusherApp {
        &self.0.config
    }
}

impl Apps {
    /// The apps of `config`.
    pub fn of(config: &Config) -> Self {
        Self(
            config
                .pusher
                .apps
                .iter()
                .map(|a| {
                    Arc::new(App {
                        config: a.clone(),
                        connections: AtomicUsize::new(0),
                    })
                })
                .collect(),
        )
    }

    /// The app with `key`.
    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.0.iter().find(|a| a.config.key == key)
    }
}

impl App {
    /// Counts a new connection; None past `max_connections`.
    pub fn hold(self: &Arc<Self>) -> Option<Held> {
        let max = self.config.max_connections;
        let n = self.connections.fetch_add(1, Ordering::Relaxed);
        let held = Held(self.clone());
        (max == 0 || n < max).then_some(held)
    }
}

/// Longest Pusher channel name (Pusher's limit).
const MAX_CHANNEL: usize = 164;

/// The prefix of the channel a signed-in user's connections get events on.
const TO_USER: &str = "#server-to-user-";

/// The Tidings channel of the app's Pusher channel `channel`, or why the
/// name cannot be one. `#server-to-user-ID` is `NAMESPACE:server-to-user-ID#ID`:
/// a channel only user `ID` may subscribe to.
pub fn tidings_channel(app: &PusherApp, channel: &str) -> Result<String, String> {
    if channel.is_empty() || channel.len() > MAX_CHANNEL {
        return Err(format!("a channel name is 1 to {MAX_CHANNEL} characters"));
    }
    let (name, user) = match channel.strip_prefix(TO_USER) {
        Some(id) if !id.is_empty() => (&channel[1..], Some(id)),
        _ => (channel, None),
    };
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.')))
    {
        return Err(format!(
            "channel name {channel:?} has {c:?}: this server takes A-Z a-z 0-9 _ - = @ , ."
        ));
    }
    Ok(match user {
        Some(id) => format!("{}:{name}#{id}", app.namespace),
        None => format!("{}:{channel}", app.namespace),
    })
}

/// The Pusher name of a Tidings channel of an app (`NAMESPACE:X` → `X`).
pub fn pusher_channel(channel: &str) -> String {
    let rest = channel.split_once(':').map_or(channel, |(_, rest)| rest);
    match rest.split_once('#') {
        Some((name, _)) if name.starts_with(&TO_USER[1..]) => format!("#{name}"),
        _ => rest.to_string(),
    }
}

/// Whether `channel` (a Tidings name) is a private or presence channel of
/// a Pusher app: subscribing needs the app's signature (Pusher clients) or
/// a channel token (Tidings clients).
pub fn is_private(config: &Config, channel: &str) -> bool {
    let Some((ns, rest)) = channel.split_once(':') else {
        return false;
    };
    (rest.starts_with("private-") || rest.starts_with("presence-"))
        && config.pusher.apps.iter().any(|a| a.namespace == ns)
}

/// Whether `channel` belongs to a Pusher app but is not a presence
/// channel: Pusher tracks members in `presence-` channels only.
pub fn without_presence(config: &Config, channel: &str) -> bool {
    let Some((ns, rest)) = channel.split_once(':') else {
        return false;
    };
    !rest.starts_with("presence-") && config.pusher.apps.iter().any(|a| a.namespace == ns)
}
