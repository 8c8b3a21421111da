//! An engine that times every round trip of the one it wraps, by
//! operation (`tidings_engine_seconds{op}`): how long publishing, reading
//! history or presence takes in the backend (Redis) or on disk.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::histogram::Histogram;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};

use super::Membership;
use super::{
    Broker, ChannelPolicy, Chat, Cluster, Engine, EngineError, History, HistoryPage, HistoryQuery,
    Lifecycle, NodeInfo, PolicyOf, Presence, PublicationSink, PublishOutcome, PublishRequest,
    UserControl,
};
use crate::metrics::Metrics;
use tidings_protocol::Cursors;
use tidings_protocol::chat::DeviceKey;

/// The operations timed, in the order of [`Timed::seconds`].
const OPS: [&str; 22] = [
    "publish",
    "node_subscribe",
    "node_unsubscribe",
    "control",
    "read",
    "position",
    "join",
    "leave",
    "list",
    "stats",
    "touch",
    "last_seen",
    "announce",
    "nodes",
    "claim_user",
    "release_user",
    "channels",
    "snapshot",
    "receipt",
    "members",
    "cursors",
    "keys",
];

/// Wraps an engine; holds one histogram per operation.
pub struct Timed {
    inner: Arc<dyn Engine>,
    seconds: Vec<Histogram>,
}

impl Timed {
    /// `inner`, timed into `metrics`.
    pub fn new(inner: Arc<dyn Engine>, metrics: &Metrics) -> Self {
        let seconds = OPS.iter().map(|op| metrics.engine_histogram(op)).collect();
        Self { inner, seconds }
    }

    async fn time<T>(&self, op: &'static str, call: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = call.await;
        if let Some(h) = OPS.iter().position(|o| *o == op).map(|i| &self.seconds[i]) {
            h.observe(start.elapsed().as_secs_f64());
        }
        out
    }
}

#[async_trait]
impl Broker for Timed {
    async fn publish(
        &self,
        channel: &str,
        request: PublishRequest,
        policy: &ChannelPolicy,
    ) -> Result<PublishOutcome, EngineError> {
        self.time("publish", self.inner.publish(channel, request, policy))
            .await
    }

    async fn node_subscribe(&self, channel: &str) -> Result<bool, EngineError> {
        self.time("node_subscribe", self.inner.node_subscribe(channel))
            .await
    }

    async fn node_unsubscribe(&self, channel: &str) -> Result<bool, EngineError> {
        self.time("node_unsubscribe", self.inner.node_unsubscribe(channel))
            .await
    }

    async fn control(&self, control: UserControl) -> Result<(), EngineError> {
        self.time("control", self.inner.control(control)).await
    }

    async fn receipt(
        &self,
        channel: &str,
        receipt: tidings_protocol::Receipt,
    ) -> Result<(), EngineError> {
        self.time("receipt", self.inner.receipt(channel, receipt))
            .await
    }
}

/// Members' reads and writes are timed as `members`, cursors' as
/// `cursors`, the key directory's as `keys`.
#[async_trait]
impl Chat for Timed {
    async fn add_members(
        &self,
        channel: &str,
        users: &[String],
        at_ms: u64,
    ) -> Result<Vec<String>, EngineError> {
        self.time("members", self.inner.add_members(channel, users, at_ms))
            .await
    }

    async fn remove_members(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<Vec<String>, EngineError> {
        self.time("members", self.inner.remove_members(channel, users))
            .await
    }

    async fn members(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, EngineError> {
        self.time("members", self.inner.members(channel, cursor, limit))
            .await
    }

    async fn membership(
        &self,
        channel: &str,
        user: &str,
    ) -> Result<Option<Membership>, EngineError> {
        self.time("members", self.inner.membership(channel, user))
            .await
    }

    async fn member_cursors(
        &self,
        channel: &str,
        epoch: &str,
    ) -> Result<Vec<(String, Cursors)>, EngineError> {
        self.time("cursors", self.inner.member_cursors(channel, epoch))
            .await
    }

    async fn member_count(&self, channel: &str) -> Result<usize, EngineError> {
        self.time("members", self.inner.member_count(channel)).await
    }

    async fn advance(
        &self,
        channel: &str,
        user: &str,
        epoch: &str,
        to: Cursors,
    ) -> Result<Option<(Cursors, Cursors)>, EngineError> {
        self.time("cursors", self.inner.advance(channel, user, epoch, to))
            .await
    }

    async fn conversations(&self, user: &str) -> Result<Vec<Membership>, EngineError> {
        self.time("members", self.inner.conversations(user)).await
    }

    async fn put_key(
        &self,
        user: &str,
        device: &str,
        key: &str,
        max: usize,
    ) -> Result<bool, EngineError> {
        self.time("keys", self.inner.put_key(user, device, key, max))
            .await
    }

    async fn keys(
        &self,
        users: &[String],
    ) -> Result<BTreeMap<String, Vec<DeviceKey>>, EngineError> {
        self.time("keys", self.inner.keys(users)).await
    }
}

#[async_trait]
impl History for Timed {
    async fn read(
        &self,
        channel: &str,
        query: HistoryQuery,
        policy: &ChannelPolicy,
    ) -> Result<HistoryPage, EngineError> {
        self.time("read", self.inner.read(channel, query, policy))
            .await
    }

    async fn position(
        &self,
        channel: &str,
        policy: &ChannelPolicy,
    ) -> Result<StreamPosition, EngineError> {
        self.time("position", self.inner.position(channel, policy))
            .await
    }

    async fn snapshot(
        &self,
        channel: &str,
        policy: &ChannelPolicy,
    ) -> Result<Option<Arc<Publication>>, EngineError> {
        self.time("snapshot", self.inner.snapshot(channel, policy))
            .await
    }
}

#[async_trait]
impl Presence for Timed {
    async fn join(
        &self,
        channel: &str,
        info: &ClientInfo,
        policy: &ChannelPolicy,
    ) -> Result<bool, EngineError> {
        self.time("join", self.inner.join(channel, info, policy))
            .await
    }

    async fn leave(
        &self,
        channel: &str,
        client: &str,
        policy: &ChannelPolicy,
    ) -> Result<bool, EngineError> {
        self.time("leave", self.inner.leave(channel, client, policy))
            .await
    }

    async fn list(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(BTreeMap<String, ClientInfo>, Option<String>), EngineError> {
        self.time("list", self.inner.list(channel, cursor, limit))
            .await
    }

    async fn stats(&self, channel: &str) -> Result<(u64, u64), EngineError> {
        self.time("stats", self.inner.stats(channel)).await
    }

    async fn touch(&self, user: &str, at_ms: u64) -> Result<(), EngineError> {
        self.time("touch", self.inner.touch(user, at_ms)).await
    }

    async fn last_seen(
        &self,
        users: &[String],
    ) -> Result<BTreeMap<String, Option<u64>>, EngineError> {
        self.time("last_seen", self.inner.last_seen(users)).await
    }
}

#[async_trait]
impl Cluster for Timed {
    async fn announce(&self, node: &NodeInfo) -> Result<(), EngineError> {
        self.time("announce", self.inner.announce(node)).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        self.time("nodes", self.inner.nodes()).await
    }

    async fn claim_user(
        &self,
        node: &str,
        user: &str,
        count: usize,
        seq: u64,
        max: usize,
    ) -> Result<bool, EngineError> {
        let call = self.inner.claim_user(node, user, count, seq, max);
        self.time("claim_user", call).await
    }

    async fn release_user(
        &self,
        node: &str,
        user: &str,
        count: usize,
        seq: u64,
    ) -> Result<(), EngineError> {
        let call = self.inner.release_user(node, user, count, seq);
        self.time("release_user", call).await
    }

    async fn channels(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, usize)>, EngineError> {
        self.time("channels", self.inner.channels(prefix, cursor, limit))
            .await
    }
}

#[async_trait]
impl Lifecycle for Timed {
    async fn start(&self, sink: Arc<dyn PublicationSink>) -> Result<(), EngineError> {
        self.inner.start(sink).await
    }

    async fn maintain(&self, policy_of: PolicyOf<'_>, idle: Duration) -> usize {
        self.inner.maintain(policy_of, idle).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
