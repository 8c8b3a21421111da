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

/// Who is in a channel.
#[async_trait]
pub trait Presence: Send + Sync {
    /// Adds or renews a connection's entry; it expires after `ttl` unless renewed.
    async fn add(&self, channel: &str, info: &ClientInfo, ttl: Duration)
    -> Result<(), EngineError>;
    /// Removes a connection's entry.
    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError>;
    /// Every live entry, by client id.
    async fn list(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, EngineError>;
    /// Number of connections and of distinct users.
    async fn stats(&self, channel: &str) -> Result<(u64, u64), EngineError>;
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
