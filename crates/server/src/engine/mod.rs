//! Hop 2 behind traits: the broker (publish: offsets, history, idempotency,
//! fanout to every node), history reads, and presence.
//!
//! The traits are async so that a remote engine implements them without
//! reshaping. Implementations: [`memory::MemoryEngine`] (one node: memory
//! plus the on-disk [`store`]) and [`redis::RedisEngine`] (several nodes).
//! The server holds an engine only as `Arc<dyn Engine>`, built by [`build`].

pub mod members;
pub mod memory;
pub mod redis;
pub mod store;
pub mod timed;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use thiserror::Error;
use tidings_protocol::chat::DeviceKey;
use tidings_protocol::{ClientInfo, Cursors, Publication, StreamPosition};

/// What the engine needs to know of a channel's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// Publications kept; 0 = ephemeral (no offsets, no history).
    pub history_size: usize,
    /// Bytes of publications kept (0: no bound); the oldest go first.
    pub history_max_bytes: usize,
    /// Channels of this namespace a node keeps at once (0: no bound).
    pub max_channels: usize,
    /// How long publications stay.
    pub history_ttl: Duration,
    /// How long idempotency keys are remembered.
    pub idempotency_window: Duration,
    /// Whether history is written to the on-disk store (when there is one).
    pub durable: bool,
    /// How presence behaves in the channel.
    pub presence: PresencePolicy,
}

/// How a namespace's presence behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresencePolicy {
    /// Whether the namespace tracks presence at all.
    pub enabled: bool,
    /// An entry not renewed within this is gone (a crashed node's ghosts).
    pub ttl: Duration,
    /// Whether `join` and `leave` are pushed to subscribers.
    pub join_leave: bool,
    /// Above this many members, `join` and `leave` are not pushed.
    pub join_leave_max: usize,
    /// `join` on a user's first connection only, `leave` on their last.
    pub per_user: bool,
}

impl Default for PresencePolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: Duration::from_secs(60),
            join_leave: false,
            join_leave_max: 1000,
            per_user: false,
        }
    }
}

/// A publication to be made.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Opaque JSON payload.
    pub data: Box<RawValue>,
    /// The publishing client, when a client published.
    pub info: Option<ClientInfo>,
    /// Free-form tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// Retries with the same key (per channel, within the window) publish nothing new.
    pub idempotency_key: Option<String>,
    /// What the publication is the latest value of (conflation key).
    pub key: Option<String>,
    /// Its priority on the way to subscribers.
    pub priority: Option<tidings_protocol::Priority>,
    /// The channel's whole state: kept as its snapshot beyond trimming.
    pub snapshot: bool,
}

/// The result of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Offset and epoch given (None in ephemeral channels).
    pub position: Option<StreamPosition>,
    /// True when an earlier publish with the same idempotency key answered.
    pub duplicate: bool,
}

/// A history read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only publications with an offset greater than this.
    pub after: Option<u64>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// The answer to a history read.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Publications, in the order asked.
    pub publications: Vec<Arc<Publication>>,
    /// The channel's top position now.
    pub position: StreamPosition,
}

/// An engine failure (never the client's fault).
#[derive(Debug, Clone, Error)]
pub enum EngineError {
    /// The backend cannot be reached or did not answer in time (Redis down,
    /// failing over): the same command, retried later, may succeed.
    #[error("engine backend unavailable: {0}")]
    Unavailable(String),
    /// The backend failed a write (a disk error, a store that stopped):
    /// nothing was published; a retry with the same idempotency key is safe.
    #[error("engine backend failed: {0}")]
    Backend(String),
    /// The backend refused the command for good (a misconfiguration such as
    /// an ACL without the needed commands): retrying will not help.
    #[error("engine backend refused: {0}")]
    Refused(String),
    /// A bound of this node refuses the command (it keeps its most
    /// channels): the client's request, not the engine, is over the line.
    #[error("{0}")]
    Limit(String),
}

impl EngineError {
    /// Whether retrying the same command later may succeed (clients and
    /// SDKs retry with the same idempotency key).
    pub fn temporary(&self) -> bool {
        !matches!(self, EngineError::Refused(_) | EngineError::Limit(_))
    }
}

/// What a channel's subscribers are told besides publications: who came
/// and went (in order with the publications), and members' receipts.
#[derive(Debug, Clone)]
pub enum PresenceEvent {
    /// A connection (or, per user, a user's first connection) joined.
    Join(ClientInfo),
    /// A connection (or, per user, a user's last connection) left.
    Leave(ClientInfo),
    /// A member's cursors moved (or a large group's summary): pushed in the
    /// channel like presence.
    Receipt(tidings_protocol::Receipt),
}

/// An instruction for connections wherever they are: one user's (the
/// server API reaching a user connected anywhere), or one SSE stream's.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserControl {
    /// Close the user's connections (or only `client`) with `code`.
    Disconnect {
        /// The user.
        user: String,
        /// Only this connection, when set.
        client: Option<String>,
        /// The close code.
        code: u16,
    },
    /// End the user's subscription to `channel` with an `unsub` push.
    Unsubscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
        /// The `unsub` code.
        code: u16,
    },
    /// Push one of the user's conversations, as it changed, to each of
    /// their connections.
    Inbox {
        /// The user.
        user: String,
        /// The `inbox` push, encoded (its publication's data is raw JSON,
        /// which a tagged enum cannot carry through serde).
        push: String,
    },
    /// Renew the presence lease of an SSE stream, on the node that holds it
    /// (a heartbeat that reached another node).
    Heartbeat {
        /// The lease id.
        lease: String,
    },
}

/// What a node tells the others about itself (the API's `info`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    /// The node's name (`node_name`).
    pub name: String,
    /// The node's id (changes at every start).
    pub id: String,
    /// The address it serves on.
    pub address: String,
    /// The Tidings version it runs.
    pub version: String,
    /// Open connections.
    pub connections: usize,
    /// Channels with subscribers on this node.
    pub channels: usize,
    /// Subscriptions on this node.
    pub subscriptions: usize,
    /// Seconds since the node started.
    pub uptime_s: u64,
}

/// Where the engine hands what this node's connections must see.
pub trait PublicationSink: Send + Sync {
    /// Called in offset order per channel, never concurrently for the same channel.
    fn deliver(&self, channel: &str, epoch: Option<&str>, publication: &Arc<Publication>);
    /// A presence change, in the channel's order with its publications.
    fn deliver_presence(&self, channel: &str, event: PresenceEvent);
    /// The engine lost publications of `channel` it cannot fill in (they
    /// left history, or the backend lost its data): the node's subscribers
    /// must subscribe again with `since` (and learn `recovered: false`).
    fn lost(&self, channel: &str);
    /// An instruction for one user's connections on this node.
    fn control(&self, control: &UserControl);
    /// Whether `channel` has subscribers on this node (an engine keeps
    /// such a channel's state).
    fn has_subscribers(&self, channel: &str) -> bool;
    /// This node's id, as it announces itself (see [`Cluster::announce`]).
    fn node_id(&self) -> String {
        String::new()
    }
    /// This node's channels with subscribers, sorted by name: those
    /// starting with `prefix`, after `cursor`, at most `limit`, with their
    /// number of local subscribers (for the cluster-wide `channels`).
    fn channels(&self, prefix: &str, cursor: Option<&str>, limit: usize) -> Vec<(String, usize)>;

    /// The engine refused a command for one of the node's bounds (`limit`
    /// names it, as in `tidings_limit_rejections_total`).
    fn refused(&self, limit: &str) {
        let _ = limit;
    }
}

/// Hop 2's write path.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes into `channel`: checks the idempotency key, assigns the next
    /// offset, appends to history and hands the publication to every node's
    /// sink — all under one per-channel serialization, so no subscriber sees
    /// offset 8 before 7 and racing retries with one key publish once.
    async fn publish(
        &self,
        channel: &str,
        request: PublishRequest,
        policy: &ChannelPolicy,
    ) -> Result<PublishOutcome, EngineError>;

    /// This node has its first local subscriber of `channel`: from when this
    /// returns, every publication of the channel reaches this node's sink.
    /// The caller serialises it per channel with [`Broker::node_unsubscribe`].
    /// True when no other node had subscribers: the channel became occupied
    /// in the cluster (each occupation is told to exactly one node).
    async fn node_subscribe(&self, channel: &str) -> Result<bool, EngineError>;

    /// This node has no more local subscribers of `channel`. True when no
    /// other node has any: the channel became vacant in the cluster.
    async fn node_unsubscribe(&self, channel: &str) -> Result<bool, EngineError>;

    /// Hands `control` to every node's sink, this one's included.
    async fn control(&self, control: UserControl) -> Result<(), EngineError>;

    /// Hands a receipt of `channel` to every node's sink (no order with
    /// the channel's publications is promised).
    async fn receipt(
        &self,
        channel: &str,
        receipt: tidings_protocol::Receipt,
    ) -> Result<(), EngineError>;
}

/// Hop 2's read path.
#[async_trait]
pub trait History: Send + Sync {
    /// Reads a channel's retained publications.
    async fn read(
        &self,
        channel: &str,
        query: HistoryQuery,
        policy: &ChannelPolicy,
    ) -> Result<HistoryPage, EngineError>;

    /// The channel's top offset and epoch.
    async fn position(
        &self,
        channel: &str,
        policy: &ChannelPolicy,
    ) -> Result<StreamPosition, EngineError>;

    /// The channel's latest snapshot in its current epoch (a publication
    /// made with `snapshot`), kept however history is trimmed.
    async fn snapshot(
        &self,
        channel: &str,
        policy: &ChannelPolicy,
    ) -> Result<Option<Arc<Publication>>, EngineError>;
}

/// Who is in a channel, and when users were last seen.
#[async_trait]
pub trait Presence: Send + Sync {
    /// Adds a connection's entry, or renews its lease (`policy.presence.ttl`).
    /// A new entry is announced with a `join` push in the channel's order.
    /// True when the entry is the user's first in the channel (in the cluster).
    async fn join(
        &self,
        channel: &str,
        info: &ClientInfo,
        policy: &ChannelPolicy,
    ) -> Result<bool, EngineError>;
    /// Removes a connection's entry, announced with a `leave` push. True
    /// when it was the user's last in the channel (in the cluster).
    async fn leave(
        &self,
        channel: &str,
        client: &str,
        policy: &ChannelPolicy,
    ) -> Result<bool, EngineError>;
    /// One page of entries by client id, after `cursor`; and the next cursor.
    async fn list(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(BTreeMap<String, ClientInfo>, Option<String>), EngineError>;
    /// Number of connections and of distinct users, in O(1).
    async fn stats(&self, channel: &str) -> Result<(u64, u64), EngineError>;
    /// Records that `user` was seen at `at_ms` (ms since the Unix epoch).
    async fn touch(&self, user: &str, at_ms: u64) -> Result<(), EngineError>;
    /// When each user was last seen (None: never).
    async fn last_seen(
        &self,
        users: &[String],
    ) -> Result<BTreeMap<String, Option<u64>>, EngineError>;
}

/// A user's membership of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The channel.
    pub channel: String,
    /// When the user became a member (ms since the Unix epoch).
    pub since_ms: u64,
    /// The user's cursors there.
    pub cursors: Cursors,
    /// The channel epoch the cursors' offsets belong to.
    pub epoch: String,
}

impl Membership {
    /// The cursors as offsets of `epoch`: none yet when they are of
    /// another one (the channel started over: offsets begin again).
    pub fn cursors_in(&self, epoch: &str) -> Cursors {
        if self.epoch == epoch {
            self.cursors
        } else {
            Cursors::default()
        }
    }
}

/// The chat layer's state: who belongs to a channel, how far each member
/// has received and read, and the device-key directory. Durable where the
/// engine is (the on-disk store, Redis).
#[async_trait]
pub trait Chat: Send + Sync {
    /// Makes `users` members of `channel` since `at_ms`; members already
    /// stay as they were. Returns the users newly added.
    async fn add_members(
        &self,
        channel: &str,
        users: &[String],
        at_ms: u64,
    ) -> Result<Vec<String>, EngineError>;
    /// Removes `users` from `channel` (and their cursors). Returns those
    /// that were members.
    async fn remove_members(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<Vec<String>, EngineError>;
    /// Members sorted by user id, after `cursor`, at most `limit`.
    async fn members(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, EngineError>;
    /// `user`'s membership of `channel`, if any.
    async fn membership(
        &self,
        channel: &str,
        user: &str,
    ) -> Result<Option<Membership>, EngineError>;
    /// Every member's cursors as offsets of `epoch` (receipt summaries,
    /// inbox pushes, offline notifications).
    async fn member_cursors(
        &self,
        channel: &str,
        epoch: &str,
    ) -> Result<Vec<(String, Cursors)>, EngineError>;
    /// How many members `channel` has, in O(1).
    async fn member_count(&self, channel: &str) -> Result<usize, EngineError>;
    /// Raises a member's cursors to at least `to` (see
    /// [`Cursors::advanced`]), offsets of the channel's `epoch` (cursors
    /// of another epoch start from none): the cursors before and after.
    /// None when `user` is not a member.
    async fn advance(
        &self,
        channel: &str,
        user: &str,
        epoch: &str,
        to: Cursors,
    ) -> Result<Option<(Cursors, Cursors)>, EngineError>;
    /// Every channel `user` is a member of.
    async fn conversations(&self, user: &str) -> Result<Vec<Membership>, EngineError>;
    /// Registers (or replaces) a device's public key. False, nothing
    /// stored, when the device is new and `user` has `max` already.
    async fn put_key(
        &self,
        user: &str,
        device: &str,
        key: &str,
        max: usize,
    ) -> Result<bool, EngineError>;
    /// The devices' keys of each of `users` that has any.
    async fn keys(&self, users: &[String])
    -> Result<BTreeMap<String, Vec<DeviceKey>>, EngineError>;
}

/// The nodes of the cluster, as the engine knows them.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Records this node as live (until it stops announcing).
    async fn announce(&self, node: &NodeInfo) -> Result<(), EngineError>;
    /// Every live node.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError>;
    /// Records that `user` has `count` connections on node `node` (one just
    /// opened), unless with those on the other live nodes that is more than
    /// `max` (false, nothing recorded). Counts are absolute and `seq`
    /// (increasing per node) keeps only the newest, so calls may be lost,
    /// repeated or reordered and the next one mends the count.
    async fn claim_user(
        &self,
        node: &str,
        user: &str,
        count: usize,
        seq: u64,
        max: usize,
    ) -> Result<bool, EngineError>;
    /// Records that `user` has `count` connections left on node `node`.
    async fn release_user(
        &self,
        node: &str,
        user: &str,
        count: usize,
        seq: u64,
    ) -> Result<(), EngineError>;
    /// Channels with subscribers on any node, as [`PublicationSink::channels`]
    /// pages them, subscribers summed over the nodes.
    async fn channels(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, usize)>, EngineError>;
}

/// Looks up the policy of a channel's namespace (None: no such namespace now).
pub type PolicyOf<'a> = &'a (dyn Fn(&str) -> Option<ChannelPolicy> + Send + Sync);

/// Starting, upkeep and stopping.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// Starts background work; from now on, publications for this node's
    /// subscribers go to `sink`.
    async fn start(&self, sink: Arc<dyn PublicationSink>) -> Result<(), EngineError>;
    /// Periodic upkeep: trims history by policy, expires presence leases
    /// (with `leave`), forgets channels idle for `idle`. Returns how many
    /// channels were forgotten.
    async fn maintain(&self, policy_of: PolicyOf<'_>, idle: Duration) -> usize;
    /// Commits what is pending and stops.
    async fn close(&self);
}

/// A complete engine.
pub trait Engine: Broker + History + Presence + Chat + Cluster + Lifecycle {}

impl<T: Broker + History + Presence + Chat + Cluster + Lifecycle> Engine for T {}

/// Why an engine could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The on-disk history store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The Redis settings are unusable.
    #[error("engine.redis: {0}")]
    Redis(String),
}

/// Builds the engine `config` asks for (`[engine] type`).
pub fn build(config: &crate::Config) -> Result<Arc<dyn Engine>, BuildError> {
    use crate::config::EngineType;
    Ok(match config.engine.r#type {
        EngineType::Memory if config.needs_store() => {
            let (store, loaded) =
                store::Store::open(&config.data_dir, config.fsync, config.fsync_interval)?;
            tracing::info!(channels = loaded.channels.len(), dir = %config.data_dir.display(), "history store opened");
            Arc::new(
                memory::MemoryEngine::with_store(store, loaded)
                    .with_limits(config.engine.memory.clone()),
            )
        }
        EngineType::Memory => {
            Arc::new(memory::MemoryEngine::new().with_limits(config.engine.memory.clone()))
        }
        EngineType::Redis => {
            use crate::config::WebhookEvent::{ChannelOccupied, ChannelVacated};
            let told = [ChannelOccupied, ChannelVacated]
                .iter()
                .any(|e| config.webhooks.enabled() && config.webhooks.events.contains(e));
            Arc::new(
                redis::RedisEngine::new(&config.engine.redis)
                    .map_err(BuildError::Redis)?
                    .with_occupancy(told),
            )
        }
    })
}

/// A page of presence from up to `limit + 1` entries: at most `limit`, and
/// the cursor of the next page when there was one more.
pub fn presence_page(
    mut page: BTreeMap<String, ClientInfo>,
    limit: usize,
) -> (BTreeMap<String, ClientInfo>, Option<String>) {
    let next = if page.len() > limit {
        page.pop_last();
        page.keys().next_back().cloned()
    } else {
        None
    };
    (page, next)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh random epoch name.
pub fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
