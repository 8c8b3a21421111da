//! Hop 2 behind traits: the broker (publish: offsets, history, idempotency,
//! fanout to every node), history reads, and presence.
//!
//! The traits are async so that a remote engine (Redis) implements them
//! without reshaping. Implementations: [`memory::MemoryEngine`].

pub mod memory;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use thiserror::Error;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};

/// What the engine needs to know of a channel's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// Publications kept; 0 = ephemeral (no offsets, no history).
    pub history_size: usize,
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
    /// The backing store failed.
    #[error("engine backend failed: {0}")]
    Backend(String),
}

/// Where the engine hands publications for this node's subscribers (the hub).
pub trait PublicationSink: Send + Sync {
    /// Called in offset order per channel, never concurrently for the same channel.
    fn deliver(&self, channel: &str, epoch: Option<&str>, publication: &Arc<Publication>);
    /// An encoded push with no offset (`join`, `leave`), in the channel's order.
    fn deliver_event(&self, channel: &str, message: bytes::Bytes);
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

    /// This node has its first local subscriber of `channel`.
    async fn node_subscribe(&self, channel: &str) -> Result<(), EngineError>;

    /// This node has no more local subscribers of `channel`.
    async fn node_unsubscribe(&self, channel: &str) -> Result<(), EngineError>;
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
}

/// Who is in a channel, and when users were last seen.
#[async_trait]
pub trait Presence: Send + Sync {
    /// Adds a connection's entry, or renews its lease (`policy.presence.ttl`).
    /// A new entry is announced with a `join` push in the channel's order.
    async fn join(
        &self,
        channel: &str,
        info: &ClientInfo,
        policy: &ChannelPolicy,
    ) -> Result<(), EngineError>;
    /// Removes a connection's entry, announced with a `leave` push.
    async fn leave(
        &self,
        channel: &str,
        client: &str,
        policy: &ChannelPolicy,
    ) -> Result<(), EngineError>;
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

/// A complete engine.
pub trait Engine: Broker + History + Presence {}

impl<T: Broker + History + Presence> Engine for T {}

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
