//! Configuration: defaults < file < environment < command line, validated at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::engine::store::Fsync;

mod admin;
mod backend;
mod consumers;
mod pusher;
pub use admin::AdminConfig;
pub use backend::{ProxyConfig, ProxyFail, WebhookConfig, WebhookEvent};
pub use consumers::{ConsumerConfig, ConsumerType, FieldMap, StartAt};
pub use pusher::{PusherApp, PusherConfig};

/// Who may publish from a client connection in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientPublish {
    /// Only the server API publishes.
    None,
    /// Clients subscribed to the channel may publish.
    Subscribers,
    /// Any connected client may publish.
    Any,
}

/// One API key in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ApiKeyConfig {
    /// A key allowed every method.
    Plain(String),
    /// A named key with a scope.
    Named {
        /// Name, for logs.
        name: String,
        /// The key.
        key: String,
        /// What it may do.
        #[serde(default)]
        scope: crate::auth::ApiScope,
    },
}

impl ApiKeyConfig {
    /// (name, key, scope).
    pub fn parts(&self) -> (String, String, crate::auth::ApiScope) {
        match self {
            ApiKeyConfig::Plain(k) => ("unnamed".into(), k.clone(), crate::auth::ApiScope::All),
            ApiKeyConfig::Named { name, key, scope } => (name.clone(), key.clone(), *scope),
        }
    }
}

impl From<&str> for ApiKeyConfig {
    fn from(key: &str) -> Self {
        ApiKeyConfig::Plain(key.to_string())
    }
}

/// Who may subscribe in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeRule {
    /// Anyone, connections without a token included.
    Anonymous,
    /// Connections with a valid connection token.
    Authenticated,
    /// Only with a channel token for this user and channel (private channels).
    Token,
}

/// Who may read a namespace's history or presence from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAccess {
    /// Connections allowed to subscribe to the channel.
    Subscribers,
    /// Nobody: only the server API.
    None,
}

/// How a namespace's publications reach subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Every publication, in order (chat, feeds).
    #[default]
    Stream,
    /// A subscriber that keeps up gets every publication; one that falls
    /// behind only the newest per channel and `key` (tickers, locations).
    Latest,
}

/// What a full outbox does with a namespace's publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// Close the connection (3002); the client reconnects and recovers.
    #[default]
    Disconnect,
    /// Keep only the newest queued value per channel and `key`.
    Conflate,
    /// Drop the channel's backlog and send a `gap` notice; the client
    /// recovers from history.
    Skip,
}

/// Options of one namespace (`[channels]` for the default one, `[namespaces.NAME]` for others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Publications kept per channel; 0 makes the namespace ephemeral (no offsets).
    pub history_size: usize,
    /// How long a publication stays in history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Who may publish from a client connection.
    pub client_publish: ClientPublish,
    /// Whether connections without a token may subscribe and publish.
    pub anonymous: bool,
    /// Largest accepted `data`, in bytes.
    pub max_message_size: usize,
    /// Deepest nesting of arrays and objects accepted in `data` (0: no
    /// limit); deeper JSON breaks common client parsers.
    pub max_data_depth: usize,
    /// Pushes at least this large are compressed for connections that
    /// negotiated permessage-deflate (0: never).
    pub compress_min_size: usize,
    /// Whether the channel tracks presence (who is subscribed).
    pub presence: bool,
    /// Channels have members (added by the server API): only they may
    /// use them; each keeps their delivered and read cursors.
    pub members: bool,
    /// Members channels up to this many members push each member's
    /// receipts (and inbox changes on each publication); larger ones a
    /// summary at most once a second.
    pub receipts_max_members: usize,
    /// Whether `offline_publication` webhooks carry the publication
    /// (false: its channel, offset and sender only).
    pub offline_payload: bool,
    /// Whether history is kept on disk (survives restarts) or in memory only.
    pub durable: bool,
    /// Who may subscribe; when absent, `anonymous` decides (anonymous or authenticated).
    pub subscribe: Option<SubscribeRule>,
    /// Who may read history from a client connection.
    pub history: ClientAccess,
    /// Who may recover missed publications when subscribing with `since`;
    /// when absent, `history` decides (recovery reads history).
    pub recovery: Option<ClientAccess>,
    /// Who may read presence from a client connection.
    pub presence_access: ClientAccess,
    /// Whether `join` and `leave` are pushed to subscribers (needs `presence`).
    pub join_leave: bool,
    /// Above this many members, `join` and `leave` are not pushed.
    pub join_leave_max: usize,
    /// `join` for a user's first connection only, `leave` for their last.
    pub presence_per_user: bool,
    /// Publications per second one connection may make in one channel (0 = no limit).
    pub client_publish_rate: u32,
    /// Bytes of publications one channel's history keeps (0: no bound
    /// beyond `history_size`); past it the oldest are trimmed.
    pub history_max_bytes: usize,
    /// Channels of this namespace one node keeps at once (0: only the
    /// node's `engine.memory.max_channels`); a new one past it is refused (104).
    pub max_channels: usize,
    /// `stream` (every publication) or `latest` (the newest per channel and
    /// key for subscribers that fall behind).
    pub delivery: Delivery,
    /// What a subscriber's full outbox does: `disconnect`, `conflate`, `skip`.
    pub slow_consumer: SlowConsumer,
    /// The priority of publications that give none.
    pub default_priority: tidings_protocol::Priority,
    /// Whether live `pub` pushes carry the server's `time` (ms).
    pub push_time: bool,
    /// Deliveries per second one subscriber gets per channel and `key`
    /// (0: no limit): a newer value replaces the waiting one and the last
    /// is always delivered.
    pub max_rate: f64,
    /// How long a connection's pushes of this namespace may wait to be
    /// written together with others (0: at once; replies never wait).
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// The backend decides each subscribe (a URL; see `[proxy]`).
    pub subscribe_proxy: Option<String>,
    /// The backend validates, and may rewrite, each client publication.
    pub publish_proxy: Option<String>,
    /// The backend extends subscriptions the subscribe hook gave an `expire_at`.
    pub sub_refresh_proxy: Option<String>,
    /// What this namespace's hooks do when the backend fails: `closed`,
    /// `open` or `rules` (the namespace's own rules decide).
    pub proxy_fail: ProxyFail,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            client_publish: ClientPublish::Subscribers,
            anonymous: false,
            max_message_size: 64 * 1024,
            max_data_depth: 64,
            compress_min_size: 1024,
            presence: false,
            members: false,
            receipts_max_members: 100,
            offline_payload: true,
            durable: true,
            subscribe: None,
            history: ClientAccess::Subscribers,
            recovery: None,
            presence_access: ClientAccess::Subscribers,
            join_leave: false,
            join_leave_max: 1000,
            presence_per_user: false,
            client_publish_rate: 0,
            history_max_bytes: 8 * 1024 * 1024,
            max_channels: 0,
            delivery: Delivery::Stream,
            slow_consumer: SlowConsumer::Disconnect,
            default_priority: tidings_protocol::Priority::Normal,
            push_time: false,
            max_rate: 0.0,
            batch_delay: Duration::ZERO,
            subscribe_proxy: None,
            publish_proxy: None,
            sub_refresh_proxy: None,
            proxy_fail: ProxyFail::Closed,
        }
    }
}

impl NamespaceOptions {
    /// The subscribe rule in force (`subscribe`, else from `anonymous`).
    pub fn subscribe_rule(&self) -> SubscribeRule {
        self.subscribe.unwrap_or(if self.anonymous {
            SubscribeRule::Anonymous
        } else {
            SubscribeRule::Authenticated
        })
    }

    /// Who may recover with `since` (`recovery`, else `history`).
    pub fn recovery_rule(&self) -> ClientAccess {
        self.recovery.unwrap_or(self.history)
    }

    /// Whether channels of this namespace have history and offsets.
    pub fn has_history(&self) -> bool {
        self.history_size > 0
    }
}

/// Connection tokens and API keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for connection tokens. None = dev mode.
    pub token_secret: Option<String>,
    /// Keys accepted on `/v1/api/*`: plain strings (every method) or
    /// `{ name, key, scope = "all" | "publish" }`.
    pub api_keys: Vec<ApiKeyConfig>,
    /// PEM files of public keys for RS/PS/ES/EdDSA connection tokens.
    pub token_public_keys: Vec<PathBuf>,
    /// A JWKS file (JSON Web Key Set) of public keys for connection and
    /// channel tokens, re-read every `token_jwks_refresh`.
    pub token_jwks: Option<PathBuf>,
    /// How often the JWKS file is re-read.
    #[serde(with = "humantime_serde")]
    pub token_jwks_refresh: Duration,
    /// An https URL of the identity provider's JWKS: fetched at start,
    /// again when its cache headers say, and on a token with an unknown `kid`.
    pub token_jwks_url: Option<String>,
    /// A PEM file of CA certificates trusted for `token_jwks_url` (besides
    /// the public roots): a private or self-signed provider.
    pub token_jwks_ca: Option<PathBuf>,
    /// Fewest seconds between two fetches of `token_jwks_url` caused by
    /// unknown `kid`s: a flood of made-up keys does not flood the provider.
    #[serde(with = "humantime_serde")]
    pub token_jwks_min_interval: Duration,
    /// When set, tokens must carry this `aud`.
    pub token_audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub token_issuer: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_secret: None,
            api_keys: Vec::new(),
            token_public_keys: Vec::new(),
            token_jwks: None,
            token_jwks_refresh: Duration::from_secs(300),
            token_jwks_url: None,
            token_jwks_ca: None,
            token_jwks_min_interval: Duration::from_secs(10),
            token_audience: None,
            token_issuer: None,
        }
    }
}

/// Per-connection limits and timers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Interval between server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long the server waits for a pong after a ping.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Bytes a connection's outbox may hold before it is cut off as a slow consumer.
    pub outbox_bytes: usize,
    /// The kernel send buffer of each connection, in bytes (`SO_SNDBUF`;
    /// 0: the kernel's autotuning, up to `net.ipv4.tcp_wmem`'s maximum).
    /// Small values bound memory per connection and make a slow client's
    /// backlog wait in its outbox, where the delivery policy acts on it.
    pub send_buffer: usize,
    /// Largest WebSocket frame accepted from a client.
    pub max_frame_size: usize,
    /// Accept permessage-deflate (RFC 7692) from clients that offer it;
    /// frames over the smallest namespace `compress_min_size` are compressed.
    pub deflate: bool,
    /// Keep deflate state between messages (a better ratio, but hundreds
    /// of KiB per connection); off: no context takeover both ways, and
    /// deflate state is shared between connections between messages.
    pub deflate_context_takeover: bool,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Publications a recovery may return; beyond it, `recovered: false`.
    pub recovery_max: usize,
    /// Bytes of publications one reply may recover: a `subscribe`'s
    /// recovery beyond it is `recovered: false`; the subscriptions of one
    /// `connect` share it (those past it are refused with a temporary 104,
    /// to be subscribed on their own).
    pub recovery_max_bytes: usize,
    /// Channels one SSE stream or long-poll may read.
    pub max_stream_channels: usize,
    /// Long-polls one user may hold open at once.
    pub max_polls_per_user: usize,
    /// Commands per second one connection may send, with a burst of as many
    /// (0: no limit). Over it: error 105; a second's worth refused in a row
    /// closes the connection (3500, "command flood").
    pub max_commands_per_second: u32,
    /// Open sockets from one IP address, whatever they carry (WebSocket,
    /// SSE, long-poll, a request not yet finished, an idle keep-alive;
    /// 0: no limit).
    pub max_connections_per_ip: usize,
    /// Open sockets on this node (0: as many as the open-file limit allows
    /// after `reserved_fds`). Past it, only `/health`, `/metrics` and the
    /// server API are served, from the reserve.
    pub max_connections: usize,
    /// File descriptors kept below the process's open-file limit: half for
    /// sockets that serve `/health`, `/metrics` and the API when clients
    /// hold `max_connections`, half for files and the engine's connections.
    pub reserved_fds: usize,
    /// A new socket's first request head must arrive within this; a socket
    /// that sends nothing, or half a request, is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// An idle keep-alive socket is closed when its next request head has
    /// not arrived within this.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// A request body (API, client actions) must arrive whole within this.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Connections of one user (0: no limit).
    pub max_connections_per_user: usize,
    /// New WebSocket connections per second, node-wide, with a burst of as
    /// many (0: no limit) — the reconnect-storm guard.
    pub new_connections_per_second: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            outbox_bytes: 1024 * 1024,
            send_buffer: 0,
            max_frame_size: 1024 * 1024,
            deflate: true,
            deflate_context_takeover: false,
            max_subscriptions: 1024,
            recovery_max: 1000,
            recovery_max_bytes: 1024 * 1024,
            max_stream_channels: 64,
            max_polls_per_user: 16,
            max_commands_per_second: 0,
            max_connections_per_ip: 0,
            max_connections: 0,
            reserved_fds: 64,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections_per_user: 0,
            new_connections_per_second: 0,
        }
    }
}

/// Which engine carries publications, history and presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineType {
    /// One node: memory, with durable history on disk (the default).
    #[default]
    Memory,
    /// Several nodes sharing a Redis.
    Redis,
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `memory` (default) or `redis`.
    #[serde(rename = "type")]
    pub r#type: EngineType,
    /// Bounds of the memory engine.
    pub memory: MemoryConfig,
    /// Settings of the Redis engine.
    pub redis: RedisConfig,
}

/// `[engine.memory]`: what one node keeps, whatever clients do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Channels the node keeps at once (with history, keys or presence); a
    /// new one past it is refused with 104 until idle ones are forgotten.
    pub max_channels: usize,
    /// Bytes of history the node keeps over all channels; past it the
    /// oldest publications of any channel are trimmed first.
    pub history_max_bytes: usize,
    /// Idempotency keys the node remembers over all channels; past it a
    /// channel forgets its own oldest key for each new one.
    pub max_idempotency_keys: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_channels: 100_000,
            history_max_bytes: 256 * 1024 * 1024,
            max_idempotency_keys: 1_000_000,
        }
    }
}

/// `[engine.redis]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; several shard channels
    /// across independent Redis servers by consistent hashing.
    pub urls: Vec<String>,
    /// The urls are seeds of one Redis Cluster.
    pub cluster: bool,
    /// The urls point at Sentinels monitoring the master of this name.
    pub sentinel_master: Option<String>,
    /// With `sentinel_master`: the ACL user of the master (and replicas)
    /// the Sentinels name (the urls' credentials are the Sentinels').
    pub master_username: Option<String>,
    /// With `sentinel_master`: the master's password.
    pub master_password: Option<String>,
    /// Prefix of every key and pub/sub channel Tidings uses.
    pub prefix: String,
    /// With `rediss://` urls: the CA certificate(s) to trust (PEM); not
    /// set: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://` urls: a client certificate (PEM) for servers that
    /// ask for one (`tls-auth-clients yes`), with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// Connecting gives up after this.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A command without an answer within this fails (temporary error).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How often each channel with subscribers here is checked against
    /// Redis for publications pub/sub did not deliver.
    #[serde(with = "humantime_serde")]
    pub position_check: Duration,
    /// How long history metadata (epoch, top offset) outlives a channel's
    /// last publication; after it, the channel starts a new epoch.
    #[serde(with = "humantime_serde")]
    pub meta_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            sentinel_master: None,
            master_username: None,
            master_password: None,
            prefix: "tidings".into(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            position_check: Duration::from_secs(2),
            meta_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl RedisConfig {
    /// What is wrong with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.urls.is_empty() {
            bad.push("`engine.redis.urls`: at least one address".into());
        }
        for full in &self.urls {
            let url = crate::engine::redis::redact(full);
            match full.split_once("://").map(|(scheme, _)| scheme) {
                Some("redis" | "rediss") => {
                    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(full.as_str()) {
                        bad.push(format!("`engine.redis.urls`: {url:?}: {e}"));
                    }
                }
                _ => bad.push(format!(
                    "`engine.redis.urls`: {url:?} is not a redis://host:port (or rediss://) address"
                )),
            }
        }
        let tls = self.urls.iter().any(|u| u.starts_with("rediss://"));
        if tls && self.urls.iter().any(|u| u.starts_with("redis://")) {
            bad.push("`engine.redis.urls`: all rediss:// or all redis://".into());
        }
        if tls && self.sentinel_master.is_some() {
            bad.push(
                "`engine.redis.sentinel_master`: TLS to Sentinels is not supported yet".into(),
            );
        }
        if self.urls.iter().any(|u| u.contains("#insecure")) {
            bad.push("`engine.redis.urls`: `#insecure` would turn certificate checks off; set `tls_ca_file` to the CA that signed the server's certificate".into());
        }
        if self.sentinel_master.is_none()
            && (self.master_username.is_some() || self.master_password.is_some())
        {
            bad.push("`engine.redis.master_username`/`master_password`: only with `sentinel_master` (otherwise credentials go in the urls)".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            bad.push("`engine.redis.tls_cert_file` and `tls_key_file` go together".into());
        }
        for (key, file) in [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                bad.push(format!(
                    "`engine.redis.{key}`: {} is not a file",
                    f.display()
                ));
            }
        }
        if self.sentinel_master.is_some() && self.cluster {
            bad.push("`engine.redis.sentinel_master`: Sentinel watches one master, not a Cluster: set one of `cluster` and `sentinel_master`".into());
        }
        if self.sentinel_master.as_deref() == Some("") {
            bad.push(
                "`engine.redis.sentinel_master`: the name of the master the Sentinels monitor"
                    .into(),
            );
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            bad.push("`engine.redis.prefix`: not empty, no braces or spaces".into());
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("position_check", self.position_check),
            ("meta_ttl", self.meta_ttl),
        ] {
            if d.is_zero() {
                bad.push(format!("`engine.redis.{key}`: must be greater than 0"));
            }
        }
        bad
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for durable data.
    pub data_dir: PathBuf,
    /// Tokens and API keys.
    pub auth: AuthConfig,
    /// Options of the default namespace.
    pub channels: NamespaceOptions,
    /// Named namespaces: channels `NAME:...`.
    pub namespaces: BTreeMap<String, NamespaceOptions>,
    /// Per-connection limits.
    pub client: ClientConfig,
    /// How long an idempotency key is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Clients are told to come back at random within this spread on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_spread: Duration,
    /// Upper bound on how long a graceful shutdown waits for connections to close.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// When a publish to a durable namespace is acknowledged: `always` (after
    /// fsync), `interval` (written to the OS, synced every `fsync_interval`),
    /// `never` (written to the OS).
    pub fsync: Fsync,
    /// A presence entry not renewed within this is removed (crashed
    /// connections leave no ghosts); live connections renew at a third of it.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// Browser origins allowed to open WebSocket and SSE connections, beyond
    /// the server's own host (and, in dev mode, localhost). Requests with no
    /// `Origin` header (non-browser clients) are not affected. `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// Browser origins allowed to call SSE, long-poll and client HTTP
    /// actions (CORS; credentials are not allowed). `"*"` allows any.
    pub cors_origins: Vec<String>,
    /// How often `fsync = "interval"` syncs.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Serve the demo app at `/` and declare its namespaces (`demo`,
    /// `demo_typing`) unless the file declares them. Not set: on in dev mode.
    pub demo: Option<bool>,
    /// This node's name in `info` (default: host name and port); distinct per node.
    pub node_name: Option<String>,
    /// The engine: memory (one node) or Redis (several).
    pub engine: EngineConfig,
    /// Dev mode's credentials, when they must not be generated (several
    /// local nodes sharing one secret).
    pub dev: DevConfig,
    /// Proxy hooks: the backend decides connects and refreshes.
    pub proxy: ProxyConfig,
    /// Webhooks: the backend is told what happened.
    pub webhooks: WebhookConfig,
    /// Pusher apps served beside the Tidings protocol.
    pub pusher: PusherConfig,
    /// The admin UI at `/admin` (off without a secret).
    pub admin: AdminConfig,
    /// Consumers that publish what other systems write (`[[consumers]]`).
    pub consumers: Vec<ConsumerConfig>,
}

/// `[dev]`: in dev mode, fixed credentials instead of generated ones.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// The dev token secret (generated when not set).
    pub token_secret: Option<String>,
    /// The dev API key (generated when not set).
    pub api_key: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("./data"),
            auth: AuthConfig::default(),
            channels: NamespaceOptions::default(),
            namespaces: BTreeMap::new(),
            client: ClientConfig::default(),
            idempotency_window: Duration::from_secs(300),
            shutdown_spread: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            cors_origins: Vec::new(),
            allowed_origins: Vec::new(),
            presence_ttl: Duration::from_secs(60),
            fsync: Fsync::Interval,
            fsync_interval: Duration::from_millis(10),
            demo: None,
            node_name: None,
            engine: EngineConfig::default(),
            dev: DevConfig::default(),
            proxy: ProxyConfig::default(),
            webhooks: WebhookConfig::default(),
            pusher: PusherConfig::default(),
            admin: AdminConfig::default(),
            consumers: Vec::new(),
        }
    }
}

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed.
    #[error("{0}")]
    Parse(String),
    /// One or more keys have bad values; each is named.
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Overrides given on the command line (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// The size from which a connection that negotiated permessage-deflate
    /// gets compressed frames: the smallest `compress_min_size` of any
    /// namespace (frames batch several channels' pushes). None: deflate is
    /// off, or no namespace compresses.
    pub fn deflate_threshold(&self) -> Option<usize> {
        if !self.client.deflate {
            return None;
        }
        std::iter::once(&self.channels)
            .chain(self.namespaces.values())
            .map(|ns| ns.compress_min_size)
            .filter(|n| *n > 0)
            .min()
    }

    /// Loads defaults < `file` < environment (`TIDINGS_*`) < `overrides`, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Parse(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = merge_env(fig, |k| std::env::var(k).ok());
        if let Some(listen) = overrides.listen {
            fig = fig.merge(("listen", listen.to_string()));
        }
        if let Some(dir) = &overrides.data_dir {
            fig = fig.merge(("data_dir", dir.display().to_string()));
        }
        let config: Config = fig.extract().map_err(|e| {
            ConfigError::Parse(
                e.into_iter()
                    .map(|e| {
                        let key = e.path.join(".");
                        let source = e
                            .metadata
                            .as_ref()
                            .map(|m| m.name.to_string())
                            .unwrap_or_default();
                        if key.is_empty() {
                            format!("{source}: {}", e.kind)
                        } else {
                            format!("`{key}` ({source}): {}", e.kind)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense; names every bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut bad = Vec::new();
        let mut check_ns = |key: &str, ns: &NamespaceOptions| {
            if ns.max_message_size == 0 {
                bad.push(format!("`{key}.max_message_size`: must be greater than 0"));
            }
            if ns.max_message_size > self.client.max_frame_size {
                bad.push(format!(
                    "`{key}.max_message_size`: {} is larger than `client.max_frame_size` ({})",
                    ns.max_message_size, self.client.max_frame_size
                ));
            }
            if ns.max_message_size.saturating_mul(2) > self.client.outbox_bytes {
                bad.push(format!(
                    "`{key}.max_message_size`: {} is more than half of `client.outbox_bytes` ({}): one publication would cut subscribers off",
                    ns.max_message_size, self.client.outbox_bytes
                ));
            }
            if ns.has_history()
                && ns.history_max_bytes > 0
                && ns.history_max_bytes < ns.max_message_size
            {
                bad.push(format!(
                    "`{key}.history_max_bytes`: {} is smaller than `max_message_size` ({}): the largest publication would not be kept",
                    ns.history_max_bytes, ns.max_message_size
                ));
            }
            if ns.members && !ns.has_history() {
                bad.push(format!(
                    "`{key}.members`: members channels need history (history_size > 0): unread counts are offsets"
                ));
            }
            if ns.has_history() && ns.history_ttl.is_zero() {
                bad.push(format!(
                    "`{key}.history_ttl`: must be greater than 0 when history_size > 0"
                ));
            }
            if !ns.max_rate.is_finite() || ns.max_rate < 0.0 || ns.max_rate > 1000.0 {
                bad.push(format!(
                    "`{key}.max_rate`: deliveries per second, from 0 (no limit) to 1000"
                ));
            }
            if ns.batch_delay > Duration::from_secs(1) {
                bad.push(format!("`{key}.batch_delay`: at most 1s"));
            }
            for (hook, url) in [
                ("subscribe_proxy", &ns.subscribe_proxy),
                ("publish_proxy", &ns.publish_proxy),
                ("sub_refresh_proxy", &ns.sub_refresh_proxy),
            ] {
                if let Some(url) = url
                    && !backend::is_hook_url(url)
                {
                    bad.push(format!("`{key}.{hook}`: {url:?} is not an http(s) URL"));
                }
            }
            if ns.history_size > 1_000_000 {
                bad.push(format!("`{key}.history_size`: at most 1000000"));
            }
        };
        check_ns("channels", &self.channels);
        for (name, ns) in &self.namespaces {
            check_ns(&format!("namespaces.{name}"), ns);
        }
        for name in self.namespaces.keys() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bad.push(format!(
                    "`namespaces.{name}`: a namespace name is letters, digits, `_` and `-`"
                ));
            }
        }
        if self.fsync == Fsync::Interval && self.fsync_interval.is_zero() {
            bad.push("`fsync_interval`: must be greater than 0".into());
        }
        if self.client.ping_interval.is_zero() {
            bad.push("`client.ping_interval`: must be greater than 0".into());
        }
        if self.client.pong_timeout.is_zero() {
            bad.push("`client.pong_timeout`: must be greater than 0".into());
        }
        if self.client.outbox_bytes < 1024 {
            bad.push("`client.outbox_bytes`: at least 1024".into());
        }
        if self.client.max_frame_size < 1024 {
            bad.push("`client.max_frame_size`: at least 1024".into());
        }
        if self.presence_ttl < Duration::from_secs(1) {
            bad.push("`presence_ttl`: at least 1s".into());
        }
        if self.client.max_stream_channels == 0 {
            bad.push("`client.max_stream_channels`: must be greater than 0".into());
        }
        if self.client.max_polls_per_user == 0 {
            bad.push("`client.max_polls_per_user`: must be greater than 0".into());
        }
        for origin in self.cors_origins.iter().chain(&self.allowed_origins) {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !ok {
                bad.push(format!(
                    "`cors_origins`/`allowed_origins`: {origin:?} is not an origin like \"https://app.example\" (scheme and host, no path) or \"*\""
                ));
            }
        }
        for (key, d) in [
            ("header_timeout", self.client.header_timeout),
            ("keepalive_timeout", self.client.keepalive_timeout),
            ("body_timeout", self.client.body_timeout),
        ] {
            if d.is_zero() {
                bad.push(format!("`client.{key}`: must be greater than 0"));
            }
        }
        if self.client.keepalive_timeout < self.client.header_timeout {
            // hyper's one timer also bounds the first request head.
            bad.push("`client.keepalive_timeout`: at least `client.header_timeout`".into());
        }
        if self.client.recovery_max_bytes < 1024 {
            bad.push("`client.recovery_max_bytes`: at least 1024".into());
        }
        if self.client.reserved_fds < 8 {
            bad.push("`client.reserved_fds`: at least 8".into());
        }
        if self.client.max_subscriptions == 0 {
            bad.push("`client.max_subscriptions`: must be greater than 0".into());
        }
        if self.auth.api_keys.iter().any(|k| k.parts().1.len() < 8) {
            bad.push("`auth.api_keys`: each key needs at least 8 characters".into());
        }
        if self
            .auth
            .token_secret
            .as_deref()
            .is_some_and(|s| s.len() < 8)
        {
            bad.push("`auth.token_secret`: at least 8 characters".into());
        }
        bad.extend(self.proxy.problems());
        bad.extend(self.webhooks.problems());
        bad.extend(self.pusher.problems());
        bad.extend(self.admin.problems());
        bad.extend(consumers::problems(
            &self.consumers,
            self.node_name.as_deref(),
        ));
        for app in &self.pusher.apps {
            if let Some(ns) = self.namespaces.get(&app.namespace)
                && ns.client_publish != ClientPublish::None
            {
                bad.push(format!(
                    "`namespaces.{}.client_publish`: \"none\" in a Pusher app's namespace (Pusher clients publish client events; Tidings clients would bypass them)",
                    app.namespace
                ));
            }
        }
        if self.auth.token_jwks_refresh.is_zero() {
            bad.push("`auth.token_jwks_refresh`: must be greater than 0".into());
        }
        if self.auth.token_jwks_min_interval < Duration::from_secs(1) {
            bad.push("`auth.token_jwks_min_interval`: at least 1s".into());
        }
        if let Some(url) = &self.auth.token_jwks_url
            && !url.starts_with("https://")
        {
            bad.push(format!(
                "`auth.token_jwks_url`: {url:?} is not an https URL (keys must come over TLS)"
            ));
        }
        if self.engine.r#type == EngineType::Redis {
            bad.extend(self.engine.redis.problems());
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(bad))
        }
    }

    /// The options of the namespace `ns` ("" = default), if it exists.
    pub fn namespace(&self, ns: &str) -> Option<&NamespaceOptions> {
        if ns.is_empty() {
            Some(&self.channels)
        } else {
            self.namespaces.get(ns)
        }
    }

    /// The largest `max_message_size` of any namespace.
    pub fn largest_message_size(&self) -> usize {
        self.namespaces
            .values()
            .map(|ns| ns.max_message_size)
            .fold(self.channels.max_message_size, usize::max)
    }

    /// This node's name: `node_name`, else the host name and `addr`'s port.
    pub fn node_name(&self, addr: SocketAddr) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("{host}:{}", addr.port())
        })
    }

    /// Whether any namespace keeps history on disk (memory engine only:
    /// with Redis, history lives in Redis).
    pub fn needs_store(&self) -> bool {
        self.engine.r#type == EngineType::Memory
            && std::iter::once(&self.channels)
                .chain(self.namespaces.values())
                .any(|ns| ns.durable && ns.has_history())
    }

    /// Whether the demo app is served: `demo`, or dev mode when not set.
    pub fn demo_enabled(&self) -> bool {
        self.demo.unwrap_or_else(|| self.dev_mode())
    }

    /// Adds the demo's namespaces, unless declared: `demo` (chat, Q&A and polls,
    /// with presence and a day of history to fold state from), `dm` (the
    /// chat page's conversations: members, a week of history) and
    /// `demo_typing` (ephemeral typing signals).
    pub fn add_demo_namespaces(&mut self) {
        self.namespaces
            .entry("demo".into())
            .or_insert_with(|| NamespaceOptions {
                history_size: 1000,
                history_ttl: Duration::from_secs(24 * 3600),
                presence: true,
                join_leave: true,
                presence_per_user: true,
                max_message_size: 4096,
                ..NamespaceOptions::default()
            });
        self.namespaces
            .entry("dm".into())
            .or_insert_with(|| NamespaceOptions {
                members: true,
                history_size: 1000,
                history_ttl: Duration::from_secs(7 * 24 * 3600),
                max_message_size: 16 * 1024,
                ..NamespaceOptions::default()
            });
        self.namespaces
            .entry("demo_typing".into())
            .or_insert_with(|| NamespaceOptions {
                history_size: 0,
                client_publish: ClientPublish::Any,
                client_publish_rate: 2,
                max_message_size: 1024,
                ..NamespaceOptions::default()
            });
    }

    /// Declares each Pusher app's namespace that the file does not: the
    /// channels of Pusher's model (anyone may subscribe to public channels;
    /// presence per user; only the API and client events publish).
    pub fn add_pusher_namespaces(&mut self) {
        for app in &self.pusher.apps {
            self.namespaces
                .entry(app.namespace.clone())
                .or_insert_with(|| NamespaceOptions {
                    anonymous: true,
                    client_publish: ClientPublish::None,
                    presence: true,
                    join_leave: true,
                    presence_per_user: true,
                    max_message_size: 10 * 1024,
                    ..NamespaceOptions::default()
                });
        }
    }

    /// Dev mode: no token secret configured.
    pub fn dev_mode(&self) -> bool {
        self.auth.token_secret.is_none()
            && self.auth.token_public_keys.is_empty()
            && self.auth.token_jwks.is_none()
            && self.auth.token_jwks_url.is_none()
    }
}

/// Parses a duration such as `90s`, `10m`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Merges the documented `TIDINGS_*` variables (read through `var`, for tests).
fn merge_env(mut fig: Figment, var: impl Fn(&str) -> Option<String>) -> Figment {
    for (env, key) in [
        ("TIDINGS_LISTEN", "listen"),
        ("TIDINGS_DATA_DIR", "data_dir"),
        ("TIDINGS_TOKEN_SECRET", "auth.token_secret"),
        ("TIDINGS_ENGINE", "engine.type"),
        ("TIDINGS_NODE_NAME", "node_name"),
        ("TIDINGS_DEV_TOKEN_SECRET", "dev.token_secret"),
        ("TIDINGS_DEV_API_KEY", "dev.api_key"),
        ("TIDINGS_ADMIN_SECRET", "admin.secret"),
    ] {
        if let Some(v) = var(env).filter(|v| !v.is_empty()) {
            fig = fig.merge((key, v));
        }
    }
    if let Some(keys) = var("TIDINGS_API_KEYS").filter(|v| !v.is_empty()) {
        let keys: Vec<String> = keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect();
        fig = fig.merge(("auth.api_keys", keys));
    }
    if let Some(urls) = var("TIDINGS_REDIS_URLS").filter(|v| !v.is_empty()) {
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        fig = fig.merge(("engine.redis.urls", urls));
    }
    fig
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pusher_namespace_lets_no_tidings_client_publish() {
        let mut c = Config::default();
        c.pusher.apps.push(PusherApp {
            id: "1".into(),
            key: "k".into(),
            secret: "secret-123".into(),
            client_events: false,
            max_connections: 0,
            namespace: "pusher".into(),
            webhook_url: None,
            webhook_events: Vec::new(),
        });
        c.add_pusher_namespaces();
        assert!(c.validate().is_ok());
        c.namespaces.get_mut("pusher").unwrap().client_publish = ClientPublish::Subscribers;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("client_publish"), "{e}");
        c.namespaces.get_mut("pusher").unwrap().client_publish = ClientPublish::None;
        c.pusher.apps[0].namespace = "a:b".into();
        assert!(c.validate().unwrap_err().to_string().contains("namespace"));
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("tidings.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            r#"
listen = "127.0.0.1:9000"
[auth]
token_secret = "file-secret"
[namespaces.chat]
history_size = 1000
history_ttl = "24h"
client_publish = "any"
"#,
        );
        let c = Config::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 9000);
        let chat = c.namespace("chat").unwrap();
        assert_eq!(chat.history_ttl, Duration::from_secs(86400));
        assert_eq!(chat.client_publish, ClientPublish::Any);

        let fig = merge_env(
            Figment::from(Serialized::defaults(c.clone())),
            |k| match k {
                "TIDINGS_LISTEN" => Some("127.0.0.1:9100".into()),
                "TIDINGS_API_KEYS" => Some("key-one-1, key-two-2".into()),
                _ => None,
            },
        );
        let from_env: Config = fig.extract().unwrap();
        assert_eq!(from_env.listen.port(), 9100);
        assert_eq!(
            from_env.auth.api_keys,
            vec![
                ApiKeyConfig::from("key-one-1"),
                ApiKeyConfig::from("key-two-2")
            ]
        );
        assert_eq!(from_env.auth.token_secret.as_deref(), Some("file-secret"));

        let flags = Overrides {
            listen: Some("127.0.0.1:9200".parse().unwrap()),
            data_dir: None,
        };
        assert_eq!(Config::load(Some(&p), &flags).unwrap().listen.port(), 9200);
    }

    #[test]
    fn names_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "[channels]\nhistory_sise = 3\n");
        let e = Config::load(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("history_sise"), "{e}");

        let p = write(&dir, "[namespaces.chat]\nclient_publish = \"everyone\"\n");
        let e = Config::load(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespaces.chat.client_publish"), "{e}");

        let p = write(
            &dir,
            "[channels]\nmax_message_size = 0\n[client]\nping_interval = \"0s\"\n",
        );
        let e = Config::load(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("channels.max_message_size"), "{e}");
        assert!(e.contains("client.ping_interval"), "{e}");

        let p = write(
            &dir,
            "[admin]\nsecret = \"short\"\nsession_ttl = \"0s\"\n[auth]\ntoken_jwks_refresh = \"0s\"\n",
        );
        let e = Config::load(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        for key in [
            "admin.secret",
            "admin.session_ttl",
            "auth.token_jwks_refresh",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
        let p = write(
            &dir,
            "[[consumers]]\nname = \"a b\"\ntype = \"redis_stream\"\nurl = \"http://x\"\nstream = \"s\"\ndead_letter = \"s\"\nchannel_template = \"x:{1}\"\n\
             [[consumers]]\nname = \"m1\"\ntype = \"mqtt\"\nurl = \"mqtt://h\"\ntopics = [\"t/+\"]\n\
             [[consumers]]\nname = \"m2\"\ntype = \"mqtt\"\nurl = \"mqtt://h\"\ntopics = [\"u/+\"]\n\
             [[consumers]]\nname = \"pg\"\ntype = \"postgres_outbox\"\nurl = \"postgres://h/db\"\nstream = \"Outbox\"\nbatch_size = 0\n",
        );
        let e = Config::load(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        for wrong in [
            "consumers[0]`.name",
            "consumers[0]`.url",
            "consumers[0]`.dead_letter",
            "needs `node_name`",
            "consumers[0]`.channel_template",
            "consumers[2]`.group",
            "consumers[3]`.stream, dead_letter",
            "consumers[3]`.batch_size",
        ] {
            assert!(e.contains(wrong), "{wrong} in {e}");
        }
        let p = write(&dir, "[admin]\nsecret = \"sixteen-chars-ok\"\n");
        let c = Config::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.admin.secret.as_deref(), Some("sixteen-chars-ok"));
    }
}
