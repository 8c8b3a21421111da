//! Configuration of the calls Tidings makes to the app's backend: proxy
//! hooks that decide (`[proxy]`, a namespace's `*_proxy` keys) and webhooks
//! that tell (`[webhooks]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a proxy hook does when the backend does not answer in time, is
/// down or answers garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyFail {
    /// Refuse with a temporary error (code 100): the client tries again.
    #[default]
    Closed,
    /// Let the request through as if the backend had allowed it.
    Open,
    /// Decide by the namespace's own rules (tokens, `client_publish`), as
    /// if no proxy were configured.
    Rules,
}

/// `[proxy]`: the connect and refresh hooks, and what every hook shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Called when a client connects without a token: the backend decides
    /// who it is (from its cookies or headers).
    pub connect: Option<String>,
    /// Called when a connection the connect hook allowed with `expire_at`
    /// expires: the backend extends it or ends it.
    pub refresh: Option<String>,
    /// How long one hook call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// What the connect and refresh hooks do when the backend fails
    /// (`closed` or `open`).
    pub fail: ProxyFail,
    /// The client's request headers passed to the backend (lowercase names).
    pub headers: Vec<String>,
    /// Hook calls in flight at once (more wait, within `timeout`).
    pub max_in_flight: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect: None,
            refresh: None,
            timeout: Duration::from_secs(1),
            fail: ProxyFail::Closed,
            headers: ["cookie", "authorization", "origin", "user-agent"]
                .map(String::from)
                .to_vec(),
            max_in_flight: 256,
        }
    }
}

/// An event a webhook reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A channel got its first subscriber (in the cluster).
    ChannelOccupied,
    /// A channel lost its last subscriber (in the cluster).
    ChannelVacated,
    /// A user's first connection joined a presence channel.
    MemberAdded,
    /// A user's last connection left a presence channel.
    MemberRemoved,
    /// A connection was established.
    ClientConnected,
    /// A connection ended (with its close code).
    ClientDisconnected,
    /// A publication was made (off unless listed: it is one event per publication).
    Publication,
    /// A Pusher client sent a `client-*` event (Pusher apps' webhooks).
    ClientEvent,
    /// A publication landed in a members channel while a member was not
    /// subscribed to it (one event per member and publication).
    OfflinePublication,
}

impl WebhookEvent {
    /// The name in `events` and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::ChannelOccupied => "channel_occupied",
            WebhookEvent::ChannelVacated => "channel_vacated",
            WebhookEvent::MemberAdded => "member_added",
            WebhookEvent::MemberRemoved => "member_removed",
            WebhookEvent::ClientConnected => "client_connected",
            WebhookEvent::ClientDisconnected => "client_disconnected",
            WebhookEvent::Publication => "publication",
            WebhookEvent::ClientEvent => "client_event",
            WebhookEvent::OfflinePublication => "offline_publication",
        }
    }
}

/// `[webhooks]`: events POSTed to the backend, signed, batched, retried and
/// queued on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed; no webhooks without it.
    pub url: Option<String>,
    /// The HMAC-SHA256 key of `X-Tidings-Signature`.
    pub secret: Option<String>,
    /// Which events are sent.
    pub events: Vec<WebhookEvent>,
    /// Events of this window go in one request.
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    /// Most events in one request.
    pub max_batch: usize,
    /// Most events queued (on disk); past it the oldest are dropped.
    pub max_queue: usize,
    /// Tries of one request before its events are dropped.
    pub max_attempts: u32,
    /// The first retry waits up to this long (full jitter), doubling each try.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    /// No retry waits longer than this.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        use WebhookEvent::*;
        Self {
            url: None,
            secret: None,
            events: vec![
                ChannelOccupied,
                ChannelVacated,
                MemberAdded,
                MemberRemoved,
                ClientConnected,
                ClientDisconnected,
            ],
            batch_window: Duration::from_millis(50),
            max_batch: 100,
            max_queue: 100_000,
            max_attempts: 12,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Whether `url` is an http(s) URL a hook may call.
pub(super) fn is_hook_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && reqwest::Url::parse(url).is_ok_and(|u| u.host().is_some())
}

impl ProxyConfig {
    /// What is wrong with this section.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for (key, url) in [("connect", &self.connect), ("refresh", &self.refresh)] {
            if let Some(url) = url
                && !is_hook_url(url)
            {
                bad.push(format!("`proxy.{key}`: {url:?} is not an http(s) URL"));
            }
        }
        if self.timeout.is_zero() {
            bad.push("`proxy.timeout`: must be greater than 0".into());
        }
        if self.max_in_flight == 0 {
            bad.push("`proxy.max_in_flight`: must be greater than 0".into());
        }
        if self.fail == ProxyFail::Rules {
            bad.push("`proxy.fail`: \"closed\" or \"open\" (\"rules\" is for namespaces)".into());
        }
        bad
    }
}

impl WebhookConfig {
    /// Whether webhooks are on.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// What is wrong with this section.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let Some(url) = &self.url else {
            return bad;
        };
        if !is_hook_url(url) {
            bad.push(format!("`webhooks.url`: {url:?} is not an http(s) URL"));
        }
        if self.secret.as_deref().is_none_or(|s| s.len() < 8) {
            bad.push("`webhooks.secret`: needed, at least 8 characters".into());
        }
        if self.max_batch == 0 || self.max_queue == 0 || self.max_attempts == 0 {
            bad.push(
                "`webhooks.max_batch`, `max_queue`, `max_attempts`: must be greater than 0".into(),
            );
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            bad.push("`webhooks.backoff_min`: greater than 0 and at most `backoff_max`".into());
        }
        if self.timeout.is_zero() {
            bad.push("`webhooks.timeout`: must be greater than 0".into());
        }
        bad
    }
}
