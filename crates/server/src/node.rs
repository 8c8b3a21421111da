//! What every connection and request of this node shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tidings_protocol::{ChannelName, Disconnect, ErrorBody, ErrorCode};

use serde_json::json;

use crate::auth::{ApiKeys, TokenError, TokenVerifier};
use crate::config::{Config, NamespaceOptions, WebhookEvent};
use crate::engine::{
    ChannelPolicy, Engine, EngineError, NodeInfo, PresenceEvent, PublicationSink, UserControl,
};
use crate::hub::{ConnId, Hub, Subscriber};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Pushed};

pub use crate::mailbox::{Control, Mailbox};

/// A registered connection, as the API sees it.
pub struct ConnHandle {
    /// The client id.
    pub client: String,
    /// The user ("" when anonymous).
    pub user: String,
    /// Its outbox (to disconnect it).
    pub outbox: Arc<Outbox>,
    /// Its control mailbox.
    pub control: Arc<Mailbox>,
}

/// Shared node state.
pub struct Node {
    /// The validated configuration.
    pub config: Config,
    /// Hop 2.
    pub engine: Arc<dyn Engine>,
    /// Local subscribers.
    pub hub: Arc<Hub>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Connection token verifier (always set: dev mode generates a secret).
    pub tokens: RwLock<TokenVerifier>,
    /// API keys.
    pub api_keys: RwLock<ApiKeys>,
    /// This node's id (random, new at every start; prefixes client ids).
    pub id: String,
    /// This node's name (`node_name`), as `info` reports it.
    pub name: String,
    /// The address this node serves on.
    pub address: std::net::SocketAddr,
    /// Serialises node-level subscribe/unsubscribe of a channel with the
    /// hub's subscriber count (striped by channel).
    channel_locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// When the node started.
    pub started: Instant,
    /// Liveness leases of SSE streams in presence.
    pub leases: Arc<crate::lease::Leases>,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    next_conn: AtomicU64,
    /// Orders this node's writes of per-user connection counts.
    user_seq: AtomicU64,
    /// Long-polls held open, by user.
    polls: Arc<Mutex<HashMap<String, usize>>>,
    /// Namespace options in force: the default one and the named ones
    /// (swapped whole on SIGHUP).
    namespaces: RwLock<Arc<Namespaces>>,
    /// Registered connections by user: what counts them and finds them.
    users: Mutex<HashMap<String, Vec<ConnId>>>,
    /// Calls to the backend's proxy hooks.
    pub proxy: crate::hooks::Proxy,
    /// The webhook senders: Tidings' and each Pusher app's.
    pub webhooks: crate::hooks::Senders,
    /// The identity provider's keys, when fetched from a URL.
    pub jwks: Option<Arc<crate::auth::jwks::RemoteJwks>>,
    /// Pusher apps and their connection counts.
    pub pusher: crate::pusher::Apps,
    /// Token bucket of new connections: (tokens, last refill).
    new_conns: Mutex<(f64, std::time::Instant)>,
    /// Large groups whose receipts summary is due.
    pub summaries: crate::chat::receipts::Summaries,
}

/// Stripes of [`Node::subscribe`]'s per-channel serialisation.
const CHANNEL_LOCKS: usize = 1024;

/// Takes back a local subscriber whose [`Node::subscribe`] was cancelled,
/// still holding the channel's lock: nobody may see the subscriber as the
/// channel's first before the node subscription it stood for is settled.
struct UndoSubscribe {
    node: Arc<Node>,
    channel: String,
    conn: ConnId,
    /// The channel's lock; taken back (disarmed) when the subscribe completes.
    serial: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UndoSubscribe {
    fn drop(&mut self) {
        let Some(serial) = self.serial.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.node.hub.unsubscribe(&self.channel, self.conn);
            return;
        };
        let (node, channel, conn) = (
            self.node.clone(),
            std::mem::take(&mut self.channel),
            self.conn,
        );
        rt.spawn(async move {
            node.unsubscribe_locked(&channel, conn).await;
            drop(serial);
        });
    }
}

/// Why a local subscription could not be added.
#[derive(Debug)]
pub enum SubscribeError {
    /// This connection is already subscribed.
    AlreadySubscribed,
    /// The engine could not subscribe the node.
    Engine(EngineError),
}

/// What the engine hands to this node: publications and presence to the
/// hub, instructions for users' connections to the node.
pub struct NodeSink {
    hub: Arc<Hub>,
    node: std::sync::Weak<Node>,
}

impl NodeSink {
    /// The sink of `node`.
    pub fn new(node: &Arc<Node>) -> Self {
        Self {
            hub: node.hub.clone(),
            node: Arc::downgrade(node),
        }
    }
}

impl PublicationSink for NodeSink {
    fn deliver(
        &self,
        channel: &str,
        epoch: Option<&str>,
        publication: &Arc<tidings_protocol::Publication>,
    ) {
        self.hub.deliver(channel, epoch, publication);
    }

    fn deliver_presence(&self, channel: &str, event: PresenceEvent) {
        self.hub.deliver_presence(channel, event);
    }

    fn lost(&self, channel: &str) {
        if let Some(node) = self.node.upgrade() {
            node.metrics.channel_resets.inc();
        }
        self.hub.lost(channel);
    }

    fn channels(&self, prefix: &str, cursor: Option<&str>, limit: usize) -> Vec<(String, usize)> {
        self.hub.channels(prefix, cursor, limit)
    }

    fn has_subscribers(&self, channel: &str) -> bool {
        self.hub.has_subscribers(channel)
    }

    fn node_id(&self) -> String {
        self.node
            .upgrade()
            .map(|n| n.id.clone())
            .unwrap_or_default()
    }

    fn refused(&self, limit: &str) {
        if let Some(node) = self.node.upgrade() {
            node.metrics.limit_rejected(limit);
        }
    }

    fn control(&self, control: &UserControl) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        match control {
            UserControl::Disconnect { user, client, code } => {
                let disconnect = Disconnect::new(tidings_protocol::DisconnectCode(*code), None);
                node.disconnect_user(user, client.as_deref(), &disconnect);
            }
            UserControl::Unsubscribe {
                user,
                channel,
                code,
            } => {
                node.control_user(user, || Control::Unsubscribe {
                    channel: channel.clone(),
                    code: *code,
                });
            }
            UserControl::Inbox { user, push } => {
                node.push_user(user, &Bytes::copy_from_slice(push.as_bytes()));
            }
            UserControl::Heartbeat { lease } => {
                node.leases.beat(lease);
            }
        }
    }
}

/// A held long-poll; counted until dropped.
pub struct HeldPoll {
    polls: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        let mut polls = self.polls.lock();
        if let Some(n) = polls.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                polls.remove(&self.user);
            }
        }
    }
}

impl Node {
    /// Assembles a node.
    pub fn new(
        config: Config,
        address: std::net::SocketAddr,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        (tokens, api_keys): (TokenVerifier, ApiKeys),
        webhooks: crate::hooks::Senders,
        jwks: Option<Arc<crate::auth::jwks::RemoteJwks>>,
    ) -> Self {
        let hub = Arc::new(Hub::new(metrics.clone()));
        let name = config.node_name(address);
        // The bucket starts full: a burst of one second's worth.
        let burst = f64::from(config.client.new_connections_per_second);
        let namespaces = RwLock::new(Arc::new(Namespaces::of(&config)));
        let id = crate::engine::new_epoch();
        let pusher = crate::pusher::Apps::of(&config);
        metrics.know_namespaces(
            std::iter::once("").chain(config.namespaces.keys().map(String::as_str)),
        );
        metrics.know_consumers(config.consumers.iter().map(|c| c.name.as_str()));
        let proxy = crate::hooks::Proxy::new(
            config.proxy.timeout,
            config.proxy.max_in_flight,
            metrics.clone(),
        );
        Self {
            config,
            engine,
            hub,
            metrics,
            tokens: RwLock::new(tokens),
            api_keys: RwLock::new(api_keys),
            leases: Arc::new(crate::lease::Leases::new(&id)),
            id,
            name,
            address,
            channel_locks: (0..CHANNEL_LOCKS)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            started: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            user_seq: AtomicU64::new(1),
            polls: Arc::default(),
            namespaces,
            users: Mutex::default(),
            new_conns: Mutex::new((burst, Instant::now())),
            proxy,
            webhooks,
            jwks,
            pusher,
            summaries: Default::default(),
        }
    }

    fn channel_lock(&self, channel: &str) -> &Arc<tokio::sync::Mutex<()>> {
        use std::hash::BuildHasher;
        let hasher = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
        &self.channel_locks[hasher.hash_one(channel) as usize % CHANNEL_LOCKS]
    }

    /// Adds a local subscriber of `channel` (buffering; see
    /// [`Subscriber::go_live`]); the channel's first makes the engine send
    /// this node the channel's publications. Serialised per channel with
    /// [`Node::unsubscribe`], so a subscribe racing the last unsubscribe
    /// ends with the node subscribed.
    pub async fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        conn: ConnId,
        outbox: Arc<Outbox>,
        control: Arc<Mailbox>,
        delta: bool,
    ) -> Result<Arc<Subscriber>, SubscribeError> {
        let serial = self.channel_lock(channel).clone().lock_owned().await;
        let delivery = self
            .resolve(channel)
            .map(|(_, ns)| crate::delivery::ChannelDelivery::of(&ns))
            .unwrap_or_default();
        let (sub, first) = self
            .hub
            .subscribe(channel, conn, outbox, control, delivery, delta)
            .map_err(|_| SubscribeError::AlreadySubscribed)?;
        // Dropped while the engine subscribes (the request went away): the
        // subscriber goes again, as an unsubscribe would take it.
        let mut undo = UndoSubscribe {
            node: self.clone(),
            channel: channel.to_string(),
            conn,
            serial: Some(serial),
        };
        let subscribed = if first {
            self.engine.node_subscribe(channel).await
        } else {
            Ok(false)
        };
        let _serial = undo.serial.take();
        match subscribed {
            Err(e) => {
                self.hub.unsubscribe(channel, conn);
                Err(SubscribeError::Engine(e))
            }
            Ok(occupied) => {
                if occupied {
                    self.emit(
                        WebhookEvent::ChannelOccupied,
                        || json!({ "channel": channel }),
                    );
                }
                Ok(sub)
            }
        }
    }

    /// Removes a local subscriber; the channel's last unsubscribes the node.
    pub async fn unsubscribe(&self, channel: &str, conn: ConnId) {
        let _serial = self.channel_lock(channel).lock().await;
        self.unsubscribe_locked(channel, conn).await;
    }

    /// [`Node::unsubscribe`], the channel's lock held.
    async fn unsubscribe_locked(&self, channel: &str, conn: ConnId) {
        if self.hub.unsubscribe(channel, conn) == Some(true) {
            match self.engine.node_unsubscribe(channel).await {
                Ok(true) => self.emit(
                    WebhookEvent::ChannelVacated,
                    || json!({ "channel": channel }),
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(channel, error = %e, "node unsubscribe failed"),
            }
        }
    }

    /// Hands a webhook `event` to the sender, its fields built only when
    /// the event is sent.
    pub fn emit(&self, event: WebhookEvent, fields: impl FnOnce() -> serde_json::Value) {
        self.webhooks.emit(event, fields);
    }

    /// Whether webhooks report `event`.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.webhooks.wants(event)
    }

    /// Verifies a connection token; a key id no key has fetches the
    /// identity provider's keys again (rate-limited) and tries once more.
    pub async fn verify_token(&self, token: &str) -> Result<crate::auth::Claims, TokenError> {
        let first = self.tokens.read().verify(token);
        self.retry_unknown_key(first, || self.tokens.read().verify(token))
            .await
    }

    /// [`Node::verify_token`] for a channel token.
    pub async fn verify_channel_token(
        &self,
        token: &str,
    ) -> Result<crate::auth::ChannelClaims, TokenError> {
        let first = self.tokens.read().verify_channel(token);
        self.retry_unknown_key(first, || self.tokens.read().verify_channel(token))
            .await
    }

    async fn retry_unknown_key<T>(
        &self,
        first: Result<T, TokenError>,
        again: impl FnOnce() -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let retried = match (first, &self.jwks) {
            (Err(TokenError::UnknownKey(_)), Some(jwks)) => {
                jwks.refetch_unknown().await;
                again()
            }
            (first, _) => first,
        };
        // Callers see an unknown key as the invalid token it is.
        retried.map_err(|e| match e {
            TokenError::UnknownKey(_) => TokenError::Invalid(e.to_string()),
            e => e,
        })
    }

    /// What this node tells the cluster about itself.
    pub fn info(&self) -> NodeInfo {
        let (channels, subscriptions) = self.hub.counts();
        NodeInfo {
            name: self.name.clone(),
            id: self.id.clone(),
            address: self.address.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            connections: self.connection_count(),
            channels,
            subscriptions,
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connected client.
    pub fn register(&self, conn: ConnId, handle: ConnHandle) {
        self.conns.lock().insert(conn, handle);
    }

    /// Records the user a connection authenticated as; false (and nothing
    /// recorded) when the user already has `max_connections_per_user`, on
    /// this node or (with a shared engine) on all live nodes together.
    pub async fn claim_user(&self, conn: ConnId, user: &str) -> bool {
        if !self.set_user(conn, user) {
            return false;
        }
        let max = self.config.client.max_connections_per_user;
        if max == 0 || user.is_empty() {
            return true;
        }
        let (count, seq) = self.user_count(user);
        match self
            .engine
            .claim_user(&self.id, user, count, seq, max)
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                self.release_local(conn);
                false
            }
            Err(e) => {
                // Limits protect; they do not stop users when Redis is away.
                tracing::warn!(error = %e, "counting the user's connections across nodes failed; allowed");
                true
            }
        }
    }

    /// This node's count of `user`'s connections, with a sequence number
    /// taken under the same lock: the engine keeps only the newest count,
    /// whatever order concurrent calls reach it in.
    fn user_count(&self, user: &str) -> (usize, u64) {
        let users = self.users.lock();
        let seq = self.user_seq.fetch_add(1, Ordering::Relaxed);
        (users.get(user).map_or(0, Vec::len), seq)
    }

    /// Forgets the user of `conn` in this node's counts.
    fn release_local(&self, conn: ConnId) {
        let user = match self.conns.lock().get_mut(&conn) {
            Some(h) => std::mem::take(&mut h.user),
            None => return,
        };
        self.uncount_user(&user, conn);
    }

    fn uncount_user(&self, user: &str, conn: ConnId) {
        if user.is_empty() {
            return;
        }
        let mut users = self.users.lock();
        if let Some(conns) = users.get_mut(user) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Records the user of `conn` in this node's counts (see [`Node::claim_user`]).
    fn set_user(&self, conn: ConnId, user: &str) -> bool {
        let max = self.config.client.max_connections_per_user;
        if !user.is_empty() {
            let mut users = self.users.lock();
            let conns = users.entry(user.to_string()).or_default();
            if max > 0 && conns.len() >= max {
                return false;
            }
            conns.push(conn);
        }
        if let Some(h) = self.conns.lock().get_mut(&conn) {
            h.user = user.to_string();
        }
        true
    }

    /// Takes a token for a new connection; false over `new_connections_per_second`.
    pub fn take_connect_token(&self) -> bool {
        let rate = f64::from(self.config.client.new_connections_per_second);
        if rate == 0.0 {
            return true;
        }
        let mut bucket = self.new_conns.lock();
        let now = Instant::now();
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * rate).min(rate);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a connection is registered.
    pub fn is_registered(&self, conn: ConnId) -> bool {
        self.conns.lock().contains_key(&conn)
    }

    /// Forgets a connection (and releases its count with the engine).
    pub fn unregister(&self, conn: ConnId) {
        let Some(handle) = self.conns.lock().remove(&conn) else {
            return;
        };
        self.uncount_user(&handle.user, conn);
        if self.config.client.max_connections_per_user > 0
            && !handle.user.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (count, seq) = self.user_count(&handle.user);
            let (engine, id, user) = (self.engine.clone(), self.id.clone(), handle.user);
            rt.spawn(async move {
                if let Err(e) = engine.release_user(&id, &user, count, seq).await {
                    tracing::warn!(error = %e, "recording a user's connections failed");
                }
            });
        }
    }

    /// Counts a held long-poll of `user`; None when they hold the most allowed.
    pub fn hold_poll(&self, user: &str) -> Option<HeldPoll> {
        let mut polls = self.polls.lock();
        let n = polls.entry(user.to_string()).or_default();
        if *n >= self.config.client.max_polls_per_user {
            return None;
        }
        *n += 1;
        Some(HeldPoll {
            polls: self.polls.clone(),
            user: user.to_string(),
        })
    }

    /// Number of registered connections.
    pub fn connection_count(&self) -> usize {
        self.conns.lock().len()
    }

    /// Calls `f` with each connection of signed-in `user`, found by the
    /// user index (not a pass over every connection); how many `f` took.
    fn each_conn_of(&self, user: &str, mut f: impl FnMut(&ConnHandle) -> bool) -> usize {
        let ids = self.users.lock().get(user).cloned().unwrap_or_default();
        let conns = self.conns.lock();
        ids.iter()
            .filter_map(|id| conns.get(id))
            .filter(|h| f(h))
            .count()
    }

    /// Closes every connection of `user` (or only `client`) with `disconnect`.
    pub fn disconnect_user(
        &self,
        user: &str,
        client: Option<&str>,
        disconnect: &Disconnect,
    ) -> usize {
        self.each_conn_of(user, |h| {
            client.is_none_or(|c| c == h.client) && h.outbox.close(disconnect.clone(), true)
        })
    }

    /// Queues `push` to every connection of `user`.
    pub fn push_user(&self, user: &str, push: &Bytes) {
        let queued = self.each_conn_of(user, |h| {
            matches!(h.outbox.push(push.clone()), Pushed::Queued)
        });
        self.metrics.messages_out.inc_by(queued as u64);
    }

    /// Sends `control` to every connection of `user`.
    pub fn control_user(&self, user: &str, make: impl Fn() -> Control) -> usize {
        self.each_conn_of(user, |h| {
            h.control.send(make());
            true
        })
    }

    /// Closes every connection; `delay` gives each one its `delay_ms`.
    pub fn disconnect_all(&self, mut disconnect: impl FnMut() -> Disconnect) {
        for h in self.conns.lock().values() {
            h.outbox.close(disconnect(), true);
        }
    }

    /// Whether a browser at `origin` may open a WebSocket or SSE connection
    /// to this server reached as `host`: its own host, an origin of
    /// `allowed_origins` or `cors_origins`, or localhost in dev mode. No `Origin` header: not a browser, allowed.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let configured = self
            .config
            .allowed_origins
            .iter()
            .chain(&self.config.cors_origins);
        if configured.into_iter().any(|o| o == "*" || o == origin) {
            return true;
        }
        let origin_host = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        if host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host)) {
            return true;
        }
        let name = origin_host
            .rsplit_once(':')
            .map_or(origin_host, |(name, _)| name);
        self.config.dev_mode() && matches!(name, "localhost" | "127.0.0.1" | "[::1]")
    }

    /// The engine policy of a namespace.
    pub fn policy(&self, ns: &NamespaceOptions) -> ChannelPolicy {
        ChannelPolicy {
            history_size: ns.history_size,
            history_max_bytes: ns.history_max_bytes,
            max_channels: ns.max_channels,
            history_ttl: ns.history_ttl,
            idempotency_window: self.config.idempotency_window,
            durable: ns.durable,
            presence: crate::engine::PresencePolicy {
                enabled: ns.presence,
                ttl: self.config.presence_ttl,
                join_leave: ns.join_leave,
                join_leave_max: ns.join_leave_max,
                per_user: ns.presence_per_user,
            },
        }
    }
}

/// The namespace options in force.
#[derive(Debug)]
pub struct Namespaces {
    default: NamespaceOptions,
    named: std::collections::BTreeMap<String, NamespaceOptions>,
}

impl Namespaces {
    /// The namespaces of `config`.
    pub fn of(config: &Config) -> Self {
        Self {
            default: config.channels.clone(),
            named: config.namespaces.clone(),
        }
    }

    /// The largest `max_message_size` of any namespace.
    pub fn largest_message_size(&self) -> usize {
        self.named
            .values()
            .map(|ns| ns.max_message_size)
            .fold(self.default.max_message_size, usize::max)
    }
}

impl Node {
    /// Resolves `channel` to its parsed name and (a copy of) its namespace
    /// options: 101 for a bad name, 102 for an unknown namespace.
    pub fn resolve<'c>(
        &self,
        channel: &'c str,
    ) -> Result<(ChannelName<'c>, NamespaceOptions), ErrorBody> {
        let name = ChannelName::parse(channel)
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
        let namespaces = self.namespaces.read();
        let ns = if name.namespace.is_empty() {
            Some(&namespaces.default)
        } else {
            namespaces.named.get(name.namespace)
        };
        let mut ns = ns.cloned().ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::UnknownChannel,
                format!("unknown namespace `{}`", name.namespace),
            )
        })?;
        // A Pusher app's channels have presence only when named `presence-`.
        if ns.presence && crate::pusher::without_presence(&self.config, channel) {
            ns.presence = false;
        }
        // Offline notifications need to know who is subscribed.
        ns.presence |= ns.members;
        Ok((name, ns))
    }

    /// The namespaces in force.
    pub fn namespaces(&self) -> Arc<Namespaces> {
        self.namespaces.read().clone()
    }

    /// Swaps in the namespaces of `config` (SIGHUP).
    pub fn set_namespaces(&self, config: &Config) {
        *self.namespaces.write() = Arc::new(Namespaces::of(config));
    }
}
