//! The single-node engine: history, idempotency keys and presence in memory,
//! with durable namespaces written through to the on-disk [`Store`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};

use super::members::ChatState;
use super::store::{ChatWrite, Loaded, LoadedChannel, Record, Store};
use super::{
    Broker, ChannelPolicy, Chat, Cluster, EngineError, History, HistoryPage, HistoryQuery,
    Lifecycle, Membership, NodeInfo, PolicyOf, Presence, PresenceEvent, PublicationSink,
    PublishOutcome, PublishRequest, UserControl, new_epoch, now_ms,
};
use crate::config::MemoryConfig;
use tidings_protocol::Cursors;
use tidings_protocol::chat::DeviceKey;

const SHARDS: usize = 64;

/// How many channels the node keeps, in all and by namespace.
#[derive(Default)]
struct ChannelCounts {
    all: usize,
    by_namespace: HashMap<String, usize>,
}

/// The namespace part of a channel name (before `:`; "" for the default one).
fn namespace_of(channel: &str) -> &str {
    channel.split_once(':').map_or("", |(ns, _)| ns)
}

impl ChannelCounts {
    fn add(&mut self, channel: &str) {
        self.all += 1;
        *self
            .by_namespace
            .entry(namespace_of(channel).to_string())
            .or_default() += 1;
    }

    /// Counts a new channel unless a bound (0: none) is reached.
    fn admit(
        &mut self,
        channel: &str,
        max_all: usize,
        max_in_ns: usize,
    ) -> Result<(), EngineError> {
        if max_all > 0 && self.all >= max_all {
            return Err(EngineError::Limit(format!(
                "this node keeps its most channels ({max_all})"
            )));
        }
        let ns = namespace_of(channel);
        if max_in_ns > 0 && self.by_namespace.get(ns).copied().unwrap_or(0) >= max_in_ns {
            return Err(EngineError::Limit(format!(
                "namespace `{ns}` keeps its most channels ({max_in_ns})"
            )));
        }
        self.add(channel);
        Ok(())
    }

    fn remove(&mut self, channel: &str) {
        self.all = self.all.saturating_sub(1);
        let ns = namespace_of(channel);
        if let Some(n) = self.by_namespace.get_mut(ns) {
            *n -= 1;
            if *n == 0 {
                self.by_namespace.remove(ns);
            }
        }
    }
}

/// One channel's log: its position, retained publications and recent keys.
struct ChannelLog {
    epoch: String,
    top: u64,
    /// Offsets up to this are committed and delivered; reads see only those.
    /// Equals `top` except while durable publications await their commit.
    visible: tokio::sync::watch::Sender<u64>,
    /// Retained publications with the instant they were appended, oldest first.
    retained: VecDeque<(Instant, Arc<Publication>)>,
    /// Their size ([`retained_size`]), also counted in `total`.
    bytes: usize,
    /// The node's retained bytes over all channels.
    total: Arc<AtomicUsize>,
    /// The node's idempotency keys over all channels.
    keys_total: Arc<AtomicUsize>,
    /// Whether the channel's history is on disk too.
    durable: bool,
    keys: HashMap<String, PublishOutcome>,
    /// Keys by the instant they were made, or (when `key_deadlines`) expire.
    key_order: VecDeque<(Instant, String)>,
    /// Whether `key_order` holds expiry instants (keys loaded from the store).
    key_deadlines: bool,
    /// Last publish or read, for evicting idle empty logs.
    touched: Instant,
    /// Who is subscribed, with their leases.
    presence: Members,
    /// The latest snapshot in this epoch (kept beyond trimming).
    snapshot: Option<Arc<Publication>>,
}

/// A channel's presence: entries by client id with their lease, and how
/// many entries each user has (so counts by user are O(1)).
#[derive(Default)]
struct Members {
    members: BTreeMap<String, (ClientInfo, Instant)>,
    users: HashMap<String, usize>,
}

impl Members {
    /// Forgets one entry of `user`; true when it was their last.
    fn release(&mut self, user: &str) -> bool {
        match self.users.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.users.remove(user);
                true
            }
        }
    }
}

/// About what a retained publication costs in memory: its JSON and the
/// allocations around it.
fn retained_size(p: &Publication) -> usize {
    p.approx_size() + 64
}

impl ChannelLog {
    fn new(total: Arc<AtomicUsize>, keys_total: Arc<AtomicUsize>) -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            visible: tokio::sync::watch::Sender::new(0),
            retained: VecDeque::new(),
            bytes: 0,
            total,
            keys_total,
            durable: false,
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            key_deadlines: false,
            touched: Instant::now(),
            presence: Members::default(),
            snapshot: None,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: *self.visible.borrow(),
            epoch: self.epoch.clone(),
        }
    }

    /// Keeps `p`, appended at `at`.
    fn push(&mut self, at: Instant, p: Arc<Publication>) {
        let n = retained_size(&p);
        self.bytes += n;
        self.total.fetch_add(n, Ordering::Relaxed);
        self.retained.push_back((at, p));
    }

    /// Drops the oldest kept publication; its offset, if there was one.
    fn pop_front(&mut self) -> Option<u64> {
        let (_, p) = self.retained.pop_front()?;
        let n = retained_size(&p);
        self.bytes -= n;
        self.total.fetch_sub(n, Ordering::Relaxed);
        Some(p.offset.unwrap_or(0))
    }

    /// Remembers an idempotency key, ordered by `at`.
    fn add_key(&mut self, key: String, at: Instant, outcome: PublishOutcome) {
        self.key_order.push_back((at, key.clone()));
        if self.keys.insert(key, outcome).is_none() {
            self.keys_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets the oldest idempotency key; false when there is none.
    fn pop_key(&mut self) -> bool {
        let Some((_, key)) = self.key_order.pop_front() else {
            return false;
        };
        if self.keys.remove(&key).is_some() {
            self.keys_total.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// Rebuilds a log from the store.
    fn loaded(ch: LoadedChannel, total: Arc<AtomicUsize>, keys_total: Arc<AtomicUsize>) -> Self {
        let now = Instant::now();
        let now_ms = now_ms();
        let ago = |ms: u64| {
            now.checked_sub(Duration::from_millis(now_ms.saturating_sub(ms)))
                .unwrap_or(now)
        };
        // Keys are stored with their expiry; keep them in expiry order.
        let mut keys: Vec<(Instant, String, u64)> = ch
            .keys
            .into_iter()
            .map(|(key, offset, expire_ms)| {
                let at = now + Duration::from_millis(expire_ms.saturating_sub(now_ms));
                (at, key, offset)
            })
            .collect();
        keys.sort();
        let mut log = Self {
            epoch: ch.epoch,
            top: ch.top,
            visible: tokio::sync::watch::Sender::new(ch.top),
            retained: VecDeque::new(),
            bytes: 0,
            total,
            keys_total,
            durable: true,
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            key_deadlines: true,
            touched: now,
            presence: Members::default(),
            snapshot: ch.snapshot.map(Arc::new),
        };
        for (at, key, offset) in keys {
            let position = Some(StreamPosition {
                offset,
                epoch: log.epoch.clone(),
            });
            log.add_key(
                key,
                at,
                PublishOutcome {
                    position,
                    duplicate: false,
                },
            );
        }
        for p in ch.publications {
            log.push(ago(p.time), Arc::new(p));
        }
        log
    }

    /// Gives up this history: offsets were given that will never be
    /// delivered. A new epoch from the current top, no history, no keys.
    fn start_new_epoch(&mut self) {
        self.epoch = new_epoch();
        self.snapshot = None;
        while self.pop_front().is_some() {}
        while self.pop_key() {}
        let top = self.top;
        self.visible.send_replace(top);
    }

    /// Drops what is over size or past its TTL, and expired keys.
    fn trim(&mut self, policy: &ChannelPolicy, now: Instant) {
        self.touched = self.touched.max(now);
        // The byte bound never takes the newest: its offset was just given.
        while self.retained.len() > policy.history_size
            || (policy.history_max_bytes > 0
                && self.bytes > policy.history_max_bytes
                && self.retained.len() > 1)
        {
            self.pop_front();
        }
        while self
            .retained
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= policy.history_ttl)
        {
            self.pop_front();
        }
        while let Some((at, _)) = self.key_order.front() {
            let live = if self.key_deadlines {
                *at > now
            } else {
                now.duration_since(*at) < policy.idempotency_window
            };
            if live {
                break;
            }
            self.pop_key();
        }
    }
}

impl Drop for ChannelLog {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.keys_total
            .fetch_sub(self.keys.len(), Ordering::Relaxed);
    }
}

type Shard<V> = Mutex<HashMap<String, V>>;

/// Where a publish stands when the channel lock is released.
enum Step {
    /// Published and delivered.
    Done(PublishOutcome),
    /// A retry of a key: answer once the first publication is visible.
    Duplicate(tokio::sync::watch::Receiver<u64>, PublishOutcome),
    /// Waiting for the store to commit.
    Committing(
        tokio::sync::oneshot::Receiver<Result<(), EngineError>>,
        PublishOutcome,
    ),
}

/// The memory engine. Clone-free: share it in an `Arc`.
pub struct MemoryEngine {
    logs: Vec<Shard<Arc<Mutex<ChannelLog>>>>,
    /// What the node keeps at most.
    limits: MemoryConfig,
    /// Channels kept, in all and by namespace.
    channels: Mutex<ChannelCounts>,
    /// Retained bytes over all channels.
    retained: Arc<AtomicUsize>,
    /// Idempotency keys over all channels.
    keys: Arc<AtomicUsize>,
    /// When empty channels were last forgotten for room (at most once a second).
    made_room: Mutex<Option<Instant>>,
    /// Held while the oldest history is trimmed for the node's bound.
    trimming: Mutex<()>,
    /// When each user was last seen (ms since the Unix epoch).
    last_seen: Mutex<HashMap<String, u64>>,
    /// Members, cursors and device keys.
    chat: Mutex<ChatState>,
    hasher: std::collections::hash_map::RandomState,
    sink: OnceLock<Arc<dyn PublicationSink>>,
    store: Option<Arc<Store>>,
    /// This node, as last announced (the only node there is).
    node: Mutex<Option<NodeInfo>>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    /// An empty engine; call [`MemoryEngine::set_sink`] before publishing.
    pub fn new() -> Self {
        Self {
            logs: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            limits: MemoryConfig {
                max_channels: 0,
                history_max_bytes: 0,
                max_idempotency_keys: 0,
            },
            channels: Mutex::default(),
            retained: Arc::default(),
            keys: Arc::default(),
            made_room: Mutex::new(None),
            trimming: Mutex::new(()),
            last_seen: Mutex::new(HashMap::new()),
            chat: Mutex::default(),
            hasher: Default::default(),
            sink: OnceLock::new(),
            store: None,
            node: Mutex::new(None),
        }
    }

    /// An engine whose durable namespaces write through to `store`, starting
    /// from what the store held.
    pub fn with_store(store: Store, loaded: Loaded) -> Self {
        let mut engine = Self::new();
        *engine.last_seen.lock() = loaded.last_seen;
        {
            let mut chat = engine.chat.lock();
            for (channel, user, since_ms, cursors, epoch) in loaded.members {
                chat.add(&channel, &user, since_ms, (cursors, &epoch));
            }
            for (user, device, key) in loaded.device_keys {
                chat.put_key(&user, &device, &key, usize::MAX);
            }
        }
        for ch in loaded.channels {
            let shard = engine.shard(&ch.channel);
            let name = ch.channel.clone();
            engine.channels.lock().add(&name);
            let log = ChannelLog::loaded(ch, engine.retained.clone(), engine.keys.clone());
            engine.logs[shard]
                .lock()
                .insert(name, Arc::new(Mutex::new(log)));
        }
        engine.store = Some(Arc::new(store));
        engine
    }

    /// Bounds what the node keeps (none by default).
    pub fn with_limits(mut self, limits: MemoryConfig) -> Self {
        self.limits = limits;
        // What the store held may be more than the node now keeps.
        self.trim_node();
        self
    }

    /// Retained bytes over all channels.
    pub fn retained_bytes(&self) -> usize {
        self.retained.load(Ordering::Relaxed)
    }

    /// Trims the oldest history of any channel until the node keeps at most
    /// nine tenths of `engine.memory.history_max_bytes` (so it is not done
    /// at every publish): one pass over the channels, then a heap of their
    /// oldest publications. Durable channels are trimmed on disk too.
    fn trim_node(&self) {
        let max = self.limits.history_max_bytes;
        if max == 0 || self.retained_bytes() <= max {
            return;
        }
        let Some(_one) = self.trimming.try_lock() else {
            return; // another publish is at it
        };
        let target = max / 10 * 9;
        let logs: Vec<(String, Arc<Mutex<ChannelLog>>)> = self
            .logs
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut oldest: BinaryHeap<Reverse<(Instant, usize)>> = logs
            .iter()
            .enumerate()
            .filter_map(|(i, (_, log))| {
                log.lock().retained.front().map(|(at, _)| Reverse((*at, i)))
            })
            .collect();
        let mut trimmed: HashMap<usize, u64> = HashMap::new();
        while self.retained_bytes() > target {
            let Some(Reverse((_, i))) = oldest.pop() else {
                break;
            };
            let mut log = logs[i].1.lock();
            if let Some(offset) = log.pop_front()
                && log.durable
            {
                trimmed.insert(i, offset);
            }
            if let Some((at, _)) = log.retained.front() {
                oldest.push(Reverse((*at, i)));
            }
        }
        if let Some(store) = &self.store {
            for (i, through) in trimmed {
                store.trim(&logs[i].0, through);
            }
        }
    }

    /// What runs on the store's writer thread once a record is committed:
    /// make it visible and deliver it, under the channel lock (so in order
    /// and never interleaved with a history read), then answer the publisher.
    fn commit_callback(
        &self,
        channel: &str,
        log: Arc<Mutex<ChannelLog>>,
        epoch_at_publish: String,
        publication: Arc<Publication>,
        answer: tokio::sync::oneshot::Sender<Result<(), EngineError>>,
    ) -> super::store::Done {
        let channel = channel.to_string();
        let sink = self.sink.get().cloned();
        let store = self.store.clone();
        Box::new(move |result| {
            let mut log = log.lock();
            let offset = publication.offset.unwrap_or(0);
            let result = match result {
                // A failed commit earlier in this epoch already gave it up.
                Ok(()) if log.epoch != epoch_at_publish => Err(EngineError::Backend(
                    "an earlier write of this channel failed".into(),
                )),
                Ok(()) => {
                    log.visible.send_replace(offset);
                    if let Some(sink) = &sink {
                        sink.deliver(&channel, Some(&log.epoch), &publication);
                    }
                    Ok(())
                }
                Err(e) => {
                    // Offsets were given that will never be delivered: this
                    // history can no longer vouch for continuity. New epoch.
                    if log.epoch == epoch_at_publish {
                        log.start_new_epoch();
                        if let Some(store) = &store {
                            store.reset_channel(&channel, &log.epoch, log.top);
                        }
                    }
                    Err(e)
                }
            };
            drop(log);
            let _ = answer.send(result);
        })
    }

    /// Trims every channel (by `policy_of`) and forgets channels idle for
    /// `idle` with nothing left: no retained publication, no live key, no
    /// pending commit. A forgotten channel starts over with a new epoch, so
    /// memory follows the channels in use, not every name ever read.
    pub fn sweep(&self, policy_of: PolicyOf<'_>, idle: Duration) -> usize {
        self.forget(Some(policy_of), idle)
    }

    /// Forgets channels with nothing kept and nobody subscribed, however
    /// recently used, to make room under `max_channels` (at most once a
    /// second: each is a pass over every channel).
    fn make_room(&self) {
        {
            let mut last = self.made_room.lock();
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let forgotten = self.forget(None, Duration::ZERO);
        tracing::debug!(forgotten, "forgot empty channels to make room");
    }

    /// [`MemoryEngine::sweep`], trimming only with a `policy_of`.
    fn forget(&self, policy_of: Option<PolicyOf<'_>>, idle: Duration) -> usize {
        let now = Instant::now();
        let mut evicted = 0;
        for shard in &self.logs {
            shard.lock().retain(|name, log| {
                let in_use = Arc::strong_count(log) > 1;
                let Some(mut l) = log.try_lock() else {
                    return true;
                };
                let touched = l.touched;
                if let Some(policy) = policy_of.and_then(|of| of(name)) {
                    l.trim(&policy, now);
                    // Leases not renewed: the connection (or its node) is gone.
                    let expired: Vec<String> = l
                        .presence
                        .members
                        .iter()
                        .filter(|(_, (_, until))| *until <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for client in expired {
                        if let Some((info, _)) = l.presence.members.remove(&client) {
                            let last = l.presence.release(&info.user);
                            self.announce(name, &l, &info, last, &policy, false);
                        }
                    }
                }
                // A channel with subscribers keeps its epoch and offsets:
                // starting over under them would hand them offset 1 again.
                let subscribed = self.sink.get().is_some_and(|s| s.has_subscribers(name));
                let keep = in_use
                    || subscribed
                    || !l.presence.members.is_empty()
                    || !l.retained.is_empty()
                    || l.snapshot.is_some()
                    || !l.keys.is_empty()
                    || *l.visible.borrow() != l.top
                    || now.duration_since(touched) < idle;
                l.touched = touched;
                if !keep {
                    evicted += 1;
                    self.channels.lock().remove(name);
                }
                keep
            });
        }
        evicted
    }

    /// Pushes `join` or `leave` for `info` when the policy asks for it:
    /// join/leave on, the room not above `join_leave_max`, and (per user)
    /// only for a user's first or last connection. Called under the channel
    /// lock, so in order with the channel's publications.
    fn announce(
        &self,
        channel: &str,
        log: &ChannelLog,
        info: &ClientInfo,
        edge_of_user: bool,
        policy: &ChannelPolicy,
        joined: bool,
    ) {
        let p = &policy.presence;
        if !p.join_leave
            || log.presence.members.len() > p.join_leave_max
            || (p.per_user && !edge_of_user)
        {
            return;
        }
        let Some(sink) = self.sink.get() else {
            return;
        };
        let info = info.clone();
        let event = if joined {
            PresenceEvent::Join(info)
        } else {
            PresenceEvent::Leave(info)
        };
        sink.deliver_presence(channel, event);
    }

    /// Sets where publications go (this node's hub). Only the first call counts.
    pub fn set_sink(&self, sink: Arc<dyn PublicationSink>) {
        let _ = self.sink.set(sink);
    }

    fn shard(&self, channel: &str) -> usize {
        (self.hasher.hash_one(channel) as usize) % SHARDS
    }

    /// The log of `channel`, made when it is new and the node's and the
    /// namespace's channel bounds allow.
    fn log(
        &self,
        channel: &str,
        policy: &ChannelPolicy,
    ) -> Result<Arc<Mutex<ChannelLog>>, EngineError> {
        if let Some(log) = self.existing(channel) {
            return Ok(log);
        }
        let admit = || {
            self.channels
                .lock()
                .admit(channel, self.limits.max_channels, policy.max_channels)
        };
        if admit().is_err() {
            // Empty channels (read once, subscribed and left) make way.
            self.make_room();
            if let Err(e) = admit() {
                if let Some(sink) = self.sink.get() {
                    sink.refused("channels");
                }
                return Err(e);
            }
        }
        let mut shard = self.logs[self.shard(channel)].lock();
        if let Some(log) = shard.get(channel) {
            // Made by another task meanwhile: it is counted once.
            self.channels.lock().remove(channel);
            return Ok(log.clone());
        }
        let log = ChannelLog::new(self.retained.clone(), self.keys.clone());
        let log = Arc::new(Mutex::new(log));
        shard.insert(channel.to_string(), log.clone());
        Ok(log)
    }

    /// The log of `channel` if the node has one (reads that need none made).
    fn existing(&self, channel: &str) -> Option<Arc<Mutex<ChannelLog>>> {
        self.logs[self.shard(channel)].lock().get(channel).cloned()
    }
}

#[async_trait]
impl Broker for MemoryEngine {
    async fn publish(
        &self,
        channel: &str,
        request: PublishRequest,
        policy: &ChannelPolicy,
    ) -> Result<PublishOutcome, EngineError> {
        let log_arc = self.log(channel, policy)?;
        let step = {
            let mut log = log_arc.lock();
            let now = Instant::now();
            log.durable = policy.durable && self.store.is_some();
            log.trim(policy, now);
            if let Some(key) = &request.idempotency_key
                && let Some(first) = log.keys.get(key)
            {
                let first = PublishOutcome {
                    position: first.position.clone(),
                    duplicate: true,
                };
                // The first publish may still be committing: answer once it is visible.
                Step::Duplicate(log.visible.subscribe(), first)
            } else {
                let history = policy.history_size > 0;
                let offset = history.then(|| {
                    log.top += 1;
                    log.top
                });
                let publication = Arc::new(Publication {
                    offset,
                    data: request.data,
                    info: request.info,
                    tags: request.tags,
                    key: request.key,
                    priority: request.priority,
                    time: now_ms(),
                    snapshot: request.snapshot,
                });
                if history {
                    if publication.snapshot {
                        log.snapshot = Some(publication.clone());
                    }
                    log.push(now, publication.clone());
                    log.trim(policy, now);
                }
                let position = offset.map(|offset| StreamPosition {
                    offset,
                    epoch: log.epoch.clone(),
                });
                let outcome = PublishOutcome {
                    position,
                    duplicate: false,
                };
                if let Some(key) = &request.idempotency_key {
                    // Past the node's bound, a channel forgets its own
                    // oldest key for a new one: keys sent into many
                    // channels cannot grow memory past the bound plus
                    // one key a channel.
                    let max = self.limits.max_idempotency_keys;
                    if max > 0 && self.keys.load(Ordering::Relaxed) >= max {
                        log.pop_key();
                    }
                    let at = if log.key_deadlines {
                        now + policy.idempotency_window
                    } else {
                        now
                    };
                    log.add_key(key.clone(), at, outcome.clone());
                }
                match (&self.store, offset) {
                    (Some(store), Some(offset)) if policy.durable => {
                        // Queued under the channel lock, so the writer sees this
                        // channel's records in offset order; delivered after commit.
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        // Through what was trimmed, by count, bytes or age.
                        let trim_through = log
                            .retained
                            .front()
                            .map_or(offset, |(_, p)| p.offset.unwrap_or(1).saturating_sub(1));
                        let done = self.commit_callback(
                            channel,
                            log_arc.clone(),
                            log.epoch.clone(),
                            publication.clone(),
                            tx,
                        );
                        let appended = store.append(Record {
                            channel: channel.to_string(),
                            epoch: log.epoch.clone(),
                            publication,
                            expire_at_ms: now_ms() + policy.history_ttl.as_millis() as u64,
                            trim_through,
                            key: request.idempotency_key.map(|k| {
                                (k, now_ms() + policy.idempotency_window.as_millis() as u64)
                            }),
                            done,
                        });
                        if appended.is_err() {
                            // The store is closed (shutting down): the offset
                            // given will never exist. Start a new epoch now.
                            log.start_new_epoch();
                            return Err(EngineError::Backend("the history store is closed".into()));
                        }
                        Step::Committing(rx, outcome)
                    }
                    _ => {
                        // Delivered under the channel lock: this is the per-channel order.
                        let top = log.top;
                        log.visible.send_replace(top);
                        if let Some(sink) = self.sink.get() {
                            let epoch = history.then_some(log.epoch.as_str());
                            sink.deliver(channel, epoch, &publication);
                        }
                        Step::Done(outcome)
                    }
                }
            }
        };
        self.trim_node();
        match step {
            Step::Done(outcome) => Ok(outcome),
            Step::Duplicate(mut visible, first) => {
                if let Some(position) = &first.position {
                    let _ = visible.wait_for(|v| *v >= position.offset).await;
                    // A failed write gives the channel a new epoch: the first
                    // publish did not happen, so neither did this one.
                    if log_arc.lock().epoch != position.epoch {
                        return Err(EngineError::Backend(
                            "the first publish with this key failed".into(),
                        ));
                    }
                }
                Ok(first)
            }
            Step::Committing(rx, outcome) => match rx.await {
                Ok(Ok(())) => Ok(outcome),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(EngineError::Backend("the history store stopped".into())),
            },
        }
    }

    /// One node: its first subscriber occupies the channel.
    async fn node_subscribe(&self, _channel: &str) -> Result<bool, EngineError> {
        Ok(true)
    }

    async fn node_unsubscribe(&self, _channel: &str) -> Result<bool, EngineError> {
        Ok(true)
    }

    async fn control(&self, control: UserControl) -> Result<(), EngineError> {
        if let Some(sink) = self.sink.get() {
            sink.control(&control);
        }
        Ok(())
    }

    async fn receipt(
        &self,
        channel: &str,
        receipt: tidings_protocol::Receipt,
    ) -> Result<(), EngineError> {
        if let Some(sink) = self.sink.get() {
            sink.deliver_presence(channel, PresenceEvent::Receipt(receipt));
        }
        Ok(())
    }
}

impl MemoryEngine {
    /// Writes a chat change through to the store, when there is one.
    fn persist(&self, write: ChatWrite) {
        if let Some(store) = &self.store {
            store.chat(write);
        }
    }
}

#[async_trait]
impl Chat for MemoryEngine {
    async fn add_members(
        &self,
        channel: &str,
        users: &[String],
        at_ms: u64,
    ) -> Result<Vec<String>, EngineError> {
        let mut chat = self.chat.lock();
        let added: Vec<String> = users
            .iter()
            .filter(|u| chat.add(channel, u, at_ms, (Cursors::default(), "")))
            .cloned()
            .collect();
        for user in &added {
            self.persist(ChatWrite::Member {
                channel: channel.to_string(),
                user: user.clone(),
                since_ms: at_ms,
            });
        }
        Ok(added)
    }

    async fn remove_members(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<Vec<String>, EngineError> {
        let mut chat = self.chat.lock();
        let removed: Vec<String> = users
            .iter()
            .filter(|u| chat.remove(channel, u))
            .cloned()
            .collect();
        for user in &removed {
            self.persist(ChatWrite::Unmember {
                channel: channel.to_string(),
                user: user.clone(),
            });
        }
        Ok(removed)
    }

    async fn members(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, EngineError> {
        Ok(self.chat.lock().page(channel, cursor, limit))
    }

    async fn membership(
        &self,
        channel: &str,
        user: &str,
    ) -> Result<Option<Membership>, EngineError> {
        Ok(self.chat.lock().membership(channel, user))
    }

    async fn member_cursors(
        &self,
        channel: &str,
        epoch: &str,
    ) -> Result<Vec<(String, Cursors)>, EngineError> {
        Ok(self.chat.lock().cursors(channel, epoch))
    }

    async fn member_count(&self, channel: &str) -> Result<usize, EngineError> {
        Ok(self.chat.lock().count(channel))
    }

    async fn advance(
        &self,
        channel: &str,
        user: &str,
        epoch: &str,
        to: Cursors,
    ) -> Result<Option<(Cursors, Cursors)>, EngineError> {
        let Some((before, after)) = self.chat.lock().advance(channel, user, epoch, to) else {
            return Ok(None);
        };
        if after != before {
            self.persist(ChatWrite::Cursors {
                channel: channel.to_string(),
                user: user.to_string(),
                cursors: after,
                epoch: epoch.to_string(),
            });
        }
        Ok(Some((before, after)))
    }

    async fn conversations(&self, user: &str) -> Result<Vec<Membership>, EngineError> {
        Ok(self.chat.lock().conversations(user))
    }

    async fn put_key(
        &self,
        user: &str,
        device: &str,
        key: &str,
        max: usize,
    ) -> Result<bool, EngineError> {
        let stored = self.chat.lock().put_key(user, device, key, max);
        if stored {
            self.persist(ChatWrite::Key {
                user: user.to_string(),
                device: device.to_string(),
                key: key.to_string(),
            });
        }
        Ok(stored)
    }

    async fn keys(
        &self,
        users: &[String],
    ) -> Result<BTreeMap<String, Vec<DeviceKey>>, EngineError> {
        Ok(self.chat.lock().keys(users))
    }
}

#[async_trait]
impl Cluster for MemoryEngine {
    async fn announce(&self, node: &NodeInfo) -> Result<(), EngineError> {
        *self.node.lock() = Some(node.clone());
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        Ok(self.node.lock().iter().cloned().collect())
    }

    /// One node: the node's own count is the whole count.
    async fn claim_user(
        &self,
        _: &str,
        _: &str,
        _: usize,
        _: u64,
        _: usize,
    ) -> Result<bool, EngineError> {
        Ok(true)
    }

    async fn release_user(&self, _: &str, _: &str, _: usize, _: u64) -> Result<(), EngineError> {
        Ok(())
    }

    async fn channels(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, usize)>, EngineError> {
        Ok(self
            .sink
            .get()
            .map(|s| s.channels(prefix, cursor, limit))
            .unwrap_or_default())
    }
}

#[async_trait]
impl Lifecycle for MemoryEngine {
    async fn start(&self, sink: Arc<dyn PublicationSink>) -> Result<(), EngineError> {
        self.set_sink(sink);
        Ok(())
    }

    async fn maintain(&self, policy_of: PolicyOf<'_>, idle: Duration) -> usize {
        self.sweep(policy_of, idle)
    }

    /// Commits what is queued to disk and stops the store's writer.
    async fn close(&self) {
        if let Some(store) = self.store.clone() {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }
}

#[async_trait]
impl History for MemoryEngine {
    async fn read(
        &self,
        channel: &str,
        query: HistoryQuery,
        policy: &ChannelPolicy,
    ) -> Result<HistoryPage, EngineError> {
        let log = self.log(channel, policy)?;
        let mut log = log.lock();
        log.trim(policy, Instant::now());
        let after = query.after.unwrap_or(0);
        let limit = query.limit.unwrap_or(usize::MAX);
        let visible = *log.visible.borrow();
        let matching = log
            .retained
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.offset.unwrap_or(0) > after && p.offset.unwrap_or(0) <= visible);
        let publications = if query.reverse {
            matching.rev().take(limit).cloned().collect()
        } else {
            matching.take(limit).cloned().collect()
        };
        Ok(HistoryPage {
            publications,
            position: log.position(),
        })
    }

    async fn position(
        &self,
        channel: &str,
        policy: &ChannelPolicy,
    ) -> Result<StreamPosition, EngineError> {
        let log = self.log(channel, policy)?;
        let mut log = log.lock();
        log.touched = Instant::now();
        Ok(log.position())
    }

    async fn snapshot(
        &self,
        channel: &str,
        policy: &ChannelPolicy,
    ) -> Result<Option<Arc<Publication>>, EngineError> {
        let log = self.log(channel, policy)?;
        let log = log.lock();
        let visible = *log.visible.borrow();
        // A durable snapshot counts once it is committed, as reads do.
        Ok(log
            .snapshot
            .clone()
            .filter(|s| s.offset.unwrap_or(0) <= visible))
    }
}

#[async_trait]
impl Presence for MemoryEngine {
    async fn join(
        &self,
        channel: &str,
        info: &ClientInfo,
        policy: &ChannelPolicy,
    ) -> Result<bool, EngineError> {
        let log = self.log(channel, policy)?;
        let mut log = log.lock();
        let until = Instant::now() + policy.presence.ttl;
        if let Some(entry) = log.presence.members.get_mut(&info.client) {
            entry.1 = until; // a renewal
            return Ok(false);
        }
        log.presence
            .members
            .insert(info.client.clone(), (info.clone(), until));
        let count = log.presence.users.entry(info.user.clone()).or_default();
        *count += 1;
        let first_of_user = *count == 1;
        self.announce(channel, &log, info, first_of_user, policy, true);
        Ok(first_of_user)
    }

    async fn leave(
        &self,
        channel: &str,
        client: &str,
        policy: &ChannelPolicy,
    ) -> Result<bool, EngineError> {
        let Some(log) = self.existing(channel) else {
            return Ok(false);
        };
        let mut log = log.lock();
        let Some((info, _)) = log.presence.members.remove(client) else {
            return Ok(false);
        };
        let last_of_user = log.presence.release(&info.user);
        self.announce(channel, &log, &info, last_of_user, policy, false);
        Ok(last_of_user)
    }

    async fn list(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(BTreeMap<String, ClientInfo>, Option<String>), EngineError> {
        let Some(log) = self.existing(channel) else {
            return Ok((BTreeMap::new(), None));
        };
        let log = log.lock();
        let range = match cursor {
            Some(c) => log
                .presence
                .members
                .range::<str, _>((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)),
            None => log.presence.members.range::<str, _>(..),
        };
        let page: BTreeMap<String, ClientInfo> = range
            .take(limit.saturating_add(1))
            .map(|(k, (info, _))| (k.clone(), info.clone()))
            .collect();
        Ok(super::presence_page(page, limit))
    }

    async fn stats(&self, channel: &str) -> Result<(u64, u64), EngineError> {
        let Some(log) = self.existing(channel) else {
            return Ok((0, 0));
        };
        let log = log.lock();
        Ok((
            log.presence.members.len() as u64,
            log.presence.users.len() as u64,
        ))
    }

    async fn touch(&self, user: &str, at_ms: u64) -> Result<(), EngineError> {
        self.last_seen.lock().insert(user.to_string(), at_ms);
        if let Some(store) = &self.store {
            store.last_seen(user, at_ms);
        }
        Ok(())
    }

    async fn last_seen(
        &self,
        users: &[String],
    ) -> Result<BTreeMap<String, Option<u64>>, EngineError> {
        let seen = self.last_seen.lock();
        Ok(users
            .iter()
            .map(|u| (u.clone(), seen.get(u).copied()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    fn policy(size: usize, ttl_ms: u64) -> ChannelPolicy {
        ChannelPolicy {
            history_size: size,
            history_max_bytes: 0,
            max_channels: 0,
            history_ttl: Duration::from_millis(ttl_ms),
            idempotency_window: Duration::from_secs(300),
            durable: false,
            presence: Default::default(),
        }
    }

    fn req(n: u64, key: Option<&str>) -> PublishRequest {
        PublishRequest {
            data: RawValue::from_string(n.to_string()).unwrap(),
            info: None,
            tags: None,
            idempotency_key: key.map(String::from),
            key: None,
            priority: None,
            snapshot: false,
        }
    }

    #[tokio::test]
    async fn offsets_grow_and_keys_dedup() {
        let e = MemoryEngine::new();
        let p = policy(10, 60_000);
        let a = e.publish("c", req(1, Some("k")), &p).await.unwrap();
        let b = e.publish("c", req(2, Some("k")), &p).await.unwrap();
        let c = e.publish("c", req(3, None), &p).await.unwrap();
        assert_eq!(a.position.as_ref().unwrap().offset, 1);
        assert_eq!((b.position, b.duplicate), (a.position.clone(), true));
        assert_eq!(c.position.unwrap().offset, 2);
        let page = e.read("c", HistoryQuery::default(), &p).await.unwrap();
        let data: Vec<_> = page.publications.iter().map(|p| p.data.get()).collect();
        assert_eq!(data, ["1", "3"]);
    }

    #[tokio::test]
    async fn ephemeral_has_no_offsets() {
        let e = MemoryEngine::new();
        let out = e
            .publish("t", req(1, None), &policy(0, 1000))
            .await
            .unwrap();
        assert_eq!(out.position, None);
    }

    fn sized(n: u64, len: usize) -> PublishRequest {
        PublishRequest {
            data: RawValue::from_string(format!("\"{}\"", "x".repeat(len))).unwrap(),
            ..req(n, None)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Byte bounds against a model, over random publications of random
        /// sizes into a few channels: each channel keeps the newest
        /// publications that fit its bound (contiguous, ending with the
        /// newest), the node's total stays within its bound after every
        /// publish, and no publish is refused or loses its offset.
        #[test]
        fn byte_bounds_keep_the_newest(
            per_channel in 2_000usize..6_000,
            node in 6_000usize..20_000,
            pubs in proptest::collection::vec((0usize..4, 0usize..1_500), 1..120),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let e = MemoryEngine::new().with_limits(MemoryConfig { max_channels: 0, history_max_bytes: node, max_idempotency_keys: 0 });
                let p = ChannelPolicy { history_max_bytes: per_channel, ..policy(1000, 60_000) };
                let mut tops = [0u64; 4];
                for (c, len) in pubs {
                    let channel = format!("c{c}");
                    tops[c] += 1;
                    let out = e.publish(&channel, sized(tops[c], len), &p).await.unwrap();
                    prop_assert_eq!(out.position.unwrap().offset, tops[c]);
                    prop_assert!(e.retained_bytes() <= node, "node total {} > {node}", e.retained_bytes());
                    for (i, top) in tops.iter().enumerate() {
                        let page = e.read(&format!("c{i}"), HistoryQuery::default(), &p).await.unwrap();
                        let got: Vec<u64> = page.publications.iter().filter_map(|p| p.offset).collect();
                        let bytes: usize = page.publications.iter().map(|p| retained_size(p)).sum();
                        prop_assert!(bytes <= per_channel);
                        // Contiguous and ending with the newest (or empty).
                        if let Some(first) = got.first() {
                            prop_assert_eq!(got.clone(), (*first..=*top).collect::<Vec<_>>());
                        }
                    }
                    // The channel just published to keeps its newest publication.
                    let page = e.read(&channel, HistoryQuery::default(), &p).await.unwrap();
                    prop_assert_eq!(page.publications.last().and_then(|p| p.offset), Some(tops[c]));
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn new_channels_past_the_bounds_are_refused() {
        let e = MemoryEngine::new().with_limits(MemoryConfig {
            max_channels: 4,
            history_max_bytes: 0,
            max_idempotency_keys: 0,
        });
        let p = policy(10, 60_000);
        let in_ns = ChannelPolicy {
            max_channels: 2,
            ..p
        };
        for c in ["ns:a", "ns:b"] {
            e.publish(c, req(1, None), &in_ns).await.unwrap();
        }
        let refused = e.publish("ns:c", req(1, None), &in_ns).await;
        assert!(matches!(refused, Err(EngineError::Limit(_))), "{refused:?}");
        // Known channels still take publications; others fill the node.
        e.publish("ns:a", req(2, None), &in_ns).await.unwrap();
        for c in ["x", "y"] {
            e.publish(c, req(1, None), &p).await.unwrap();
        }
        let refused = e.position("z", &p).await;
        assert!(matches!(refused, Err(EngineError::Limit(_))), "{refused:?}");
        // Presence reads of unknown channels make none.
        assert_eq!(e.stats("z").await.unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn empty_channels_make_room_at_the_bound() {
        let e = MemoryEngine::new().with_limits(MemoryConfig {
            max_channels: 3,
            history_max_bytes: 0,
            max_idempotency_keys: 0,
        });
        let p = policy(10, 60_000);
        e.publish("kept", req(1, None), &p).await.unwrap();
        // Read once (a subscribe that left): nothing kept in them.
        for c in ["read1", "read2"] {
            e.position(c, &p).await.unwrap();
        }
        // They give way to a new channel; the one with history stays.
        e.publish("new", req(1, None), &p).await.unwrap();
        let page = e.read("kept", HistoryQuery::default(), &p).await.unwrap();
        assert_eq!(page.publications.len(), 1);
        e.publish("more", req(1, None), &p).await.unwrap();
        let refused = e.publish("most", req(1, None), &p).await;
        assert!(matches!(refused, Err(EngineError::Limit(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn idempotency_keys_stay_within_the_node_bound() {
        let e = MemoryEngine::new().with_limits(MemoryConfig {
            max_channels: 0,
            history_max_bytes: 0,
            max_idempotency_keys: 50,
        });
        let p = policy(10, 60_000);
        for i in 0..500u64 {
            let key = format!("k{i}");
            e.publish(&format!("c{}", i % 5), req(i, Some(&key)), &p)
                .await
                .unwrap();
            assert!(e.keys.load(Ordering::Relaxed) <= 50 + 5);
        }
        // The newest key of a channel still deduplicates.
        let again = e.publish("c4", req(0, Some("k499")), &p).await.unwrap();
        assert!(again.duplicate);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Publish,
        Sleep(u64),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Size trimming against a model: history is always the newest
        /// `min(size, published)` offsets, contiguous and in order.
        #[test]
        fn trims_like_the_model(size in 1usize..20, ops in proptest::collection::vec(
            prop_oneof![4 => Just(Op::Publish), 1 => (0u64..3).prop_map(Op::Sleep)], 1..80)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let e = MemoryEngine::new();
                let p = policy(size, 60_000);
                let mut published = 0u64;
                for op in ops {
                    match op {
                        Op::Publish => {
                            published += 1;
                            let out = e.publish("c", req(published, None), &p).await.unwrap();
                            prop_assert_eq!(out.position.unwrap().offset, published);
                        }
                        Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    }
                    let page = e.read("c", HistoryQuery::default(), &p).await.unwrap();
                    let got: Vec<u64> = page.publications.iter().filter_map(|p| p.offset).collect();
                    let first = published.saturating_sub(size as u64) + 1;
                    let want: Vec<u64> = (first..=published).collect();
                    prop_assert_eq!(got, want);
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn ttl_trims() {
        let e = MemoryEngine::new();
        let p = policy(100, 30);
        e.publish("c", req(1, None), &p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        e.publish("c", req(2, None), &p).await.unwrap();
        let page = e.read("c", HistoryQuery::default(), &p).await.unwrap();
        let offsets: Vec<_> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [Some(2)]);
        assert_eq!(page.position.offset, 2);
    }
}

#[cfg(test)]
mod presence_tests {
    use super::*;

    /// Records every event the engine hands to the hub.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl PublicationSink for Recorder {
        fn deliver(&self, _: &str, _: Option<&str>, p: &Arc<Publication>) {
            self.0.lock().push(format!("pub {}", p.offset.unwrap_or(0)));
        }
        fn deliver_presence(&self, _: &str, event: PresenceEvent) {
            self.0.lock().push(match event {
                PresenceEvent::Join(i) => format!("join {}", i.client),
                PresenceEvent::Leave(i) => format!("leave {}", i.client),
                PresenceEvent::Receipt(r) => format!("receipt {:?}", r.user),
            });
        }
        fn lost(&self, _: &str) {}
        fn control(&self, _: &UserControl) {}
        fn channels(&self, _: &str, _: Option<&str>, _: usize) -> Vec<(String, usize)> {
            Vec::new()
        }
        fn has_subscribers(&self, _: &str) -> bool {
            false
        }
    }

    fn policy(ttl_ms: u64, max: usize, per_user: bool) -> ChannelPolicy {
        ChannelPolicy {
            history_size: 10,
            history_max_bytes: 0,
            max_channels: 0,
            history_ttl: Duration::from_secs(60),
            idempotency_window: Duration::from_secs(60),
            durable: false,
            presence: super::super::PresencePolicy {
                enabled: true,
                ttl: Duration::from_millis(ttl_ms),
                join_leave: true,
                join_leave_max: max,
                per_user,
            },
        }
    }

    fn who(client: &str, user: &str) -> ClientInfo {
        ClientInfo {
            client: client.into(),
            user: user.into(),
            info: None,
        }
    }

    #[tokio::test]
    async fn ten_thousand_members_stats_and_pages() {
        let e = MemoryEngine::new();
        let p = policy(60_000, 1000, false);
        for i in 0..10_000 {
            e.join(
                "room",
                &who(&format!("c{i:05}"), &format!("u{}", i % 2500)),
                &p,
            )
            .await
            .unwrap();
        }
        assert_eq!(e.stats("room").await.unwrap(), (10_000, 2_500));
        let mut cursor = None;
        let mut seen = 0;
        let mut pages = 0;
        loop {
            let (page, next) = e.list("room", cursor.as_deref(), 1000).await.unwrap();
            seen += page.len();
            pages += 1;
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!((seen, pages), (10_000, 10));
    }

    #[tokio::test]
    async fn unrenewed_leases_expire_with_a_leave() {
        let e = MemoryEngine::new();
        let rec = Arc::new(Recorder::default());
        e.set_sink(rec.clone());
        let p = policy(50, 1000, false);
        e.join("room", &who("ghost", "g"), &p).await.unwrap();
        e.join("room", &who("live", "l"), &p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        e.join("room", &who("live", "l"), &p).await.unwrap(); // renewed
        tokio::time::sleep(Duration::from_millis(30)).await;
        e.sweep(&|_| Some(p), Duration::from_secs(3600));
        let (members, _) = e.list("room", None, 10).await.unwrap();
        assert_eq!(members.keys().collect::<Vec<_>>(), ["live"]);
        assert_eq!(*rec.0.lock(), ["join ghost", "join live", "leave ghost"]);
    }

    #[tokio::test]
    async fn per_user_and_large_rooms_limit_announcements() {
        let e = MemoryEngine::new();
        let rec = Arc::new(Recorder::default());
        e.set_sink(rec.clone());
        let p = policy(60_000, 3, true);
        for c in ["a1", "a2", "a3"] {
            e.join("room", &who(c, "alice"), &p).await.unwrap();
        }
        assert_eq!(e.stats("room").await.unwrap(), (3, 1), "alice counted once");
        e.leave("room", "a1", &p).await.unwrap();
        e.leave("room", "a2", &p).await.unwrap();
        assert_eq!(
            *rec.0.lock(),
            ["join a1"],
            "no leave while alice has a connection"
        );
        e.leave("room", "a3", &p).await.unwrap();
        assert_eq!(*rec.0.lock(), ["join a1", "leave a3"]);
        // Above join_leave_max (3) members, nothing is announced.
        rec.0.lock().clear();
        for i in 0..5 {
            e.join("room", &who(&format!("b{i}"), &format!("user{i}")), &p)
                .await
                .unwrap();
        }
        assert_eq!(*rec.0.lock(), ["join b0", "join b1", "join b2"]);
    }
}
