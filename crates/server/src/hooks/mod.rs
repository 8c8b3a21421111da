//! The backend in the loop: [`proxy`] hooks that decide, [`webhook`]s that
//! tell (signed by [`signature`], queued on disk by [`queue`]).

pub mod proxy;
pub mod queue;
pub mod signature;
pub mod webhook;

pub use proxy::{Allow, HookError, HookRequest, Peer, Proxy};
pub use webhook::{Dialect, Webhooks};

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, WebhookEvent};
use crate::metrics::Metrics;

/// Every webhook sender of a node: Tidings' own, and each Pusher app's
/// (by the app's namespace), each with its queue on disk.
#[derive(Default)]
pub struct Senders {
    /// `[webhooks]`.
    pub tidings: Option<Arc<Webhooks>>,
    /// Pusher apps with a `webhook_url`, by namespace.
    pub pusher: HashMap<String, Arc<Webhooks>>,
}

impl Senders {
    /// Opens the queues of `config`'s webhooks.
    pub fn open(config: &Config, metrics: &Arc<Metrics>) -> Result<Self, queue::QueueError> {
        let tidings = Webhooks::open(
            &config.webhooks,
            Dialect::Tidings,
            &config.data_dir,
            webhook::QUEUE_FILE,
            metrics.clone(),
        )?;
        let mut pusher = HashMap::new();
        for app in &config.pusher.apps {
            let Some(url) = &app.webhook_url else {
                continue;
            };
            let hooks = crate::config::WebhookConfig {
                url: Some(url.clone()),
                secret: Some(app.secret.clone()),
                events: app.webhook_events.clone(),
                ..config.webhooks.clone()
            };
            let file = format!("pusher-{}-webhooks.sqlite3", app.namespace);
            let dialect = Dialect::Pusher {
                key: app.key.clone(),
            };
            if let Some(w) =
                Webhooks::open(&hooks, dialect, &config.data_dir, &file, metrics.clone())?
            {
                pusher.insert(app.namespace.clone(), w);
            }
        }
        Ok(Self { tidings, pusher })
    }

    /// Every sender.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Webhooks>> {
        self.tidings.iter().chain(self.pusher.values())
    }

    /// Hands `event` to the senders that want it: Tidings' with `fields`,
    /// the Pusher app of `fields.channel` in Pusher's words.
    pub fn emit(&self, event: WebhookEvent, fields: impl FnOnce() -> serde_json::Value) {
        let tidings = self.tidings.as_ref().filter(|w| w.wants(event));
        if tidings.is_none() && self.pusher.is_empty() {
            return;
        }
        let fields = fields();
        let app = fields["channel"]
            .as_str()
            .and_then(|c| Some((self.pusher.get(c.split_once(':')?.0)?, c)))
            .filter(|(w, _)| w.wants(event));
        if let Some((w, channel)) = app {
            let name = crate::pusher::pusher_channel(channel);
            w.emit(event, pusher_fields(&name, &fields));
        }
        if let Some(w) = tidings {
            w.emit(event, fields);
        }
    }

    /// Whether any sender reports `event`.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.all().any(|w| w.wants(event))
    }
}

/// An event's fields as Pusher's webhooks name them.
fn pusher_fields(channel: &str, fields: &serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::json!({ "channel": channel });
    for (ours, theirs) in [
        ("user", "user_id"),
        ("event", "event"),
        ("data", "data"),
        ("socket_id", "socket_id"),
    ] {
        if let Some(v) = fields.get(ours).filter(|v| !v.is_null()) {
            out[theirs] = v.clone();
        }
    }
    out
}
