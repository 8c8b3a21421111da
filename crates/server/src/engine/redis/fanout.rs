//! One shard's pub/sub: subscribes to exactly the channels this node has
//! subscribers of, and delivers their publications in offset order.
//!
//! Redis pub/sub is at most once, so one task per shard owns every
//! channel's delivered position and never lets a gap through: an offset
//! ahead of the next expected, a reconnected pub/sub connection, or a
//! periodic position check that finds a quiet channel's top ahead all make
//! it read the missing publications from the channel's stream first. When
//! the stream no longer has them (or Redis lost the channel: a new epoch),
//! the channel's subscribers are told to subscribe again (`unsub` 3003),
//! and learn `recovered: false`. Redis handing out an offset twice in one
//! epoch (a restart that lost acknowledged writes, a failover to a replica
//! that lagged) is caught the same way: the channel gets a new epoch.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use rand::Rng;
use redis::aio::PubSubSink;
use tidings_protocol::{ClientInfo, Publication};
use tokio::sync::{mpsc, oneshot};

use super::conn::{Conn, Endpoints};
use super::keys::Keys;
use super::{ControlMessage, Entry, redis_error, scripts};
use crate::engine::{EngineError, PresenceEvent, PublicationSink};

/// Channels per SUBSCRIBE or UNSUBSCRIBE command, and per position check pipeline.
const BATCH: usize = 500;
/// Reconnect backoff bounds (full jitter between 0 and the bound).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the node asks of the task.
enum Command {
    Subscribe(String, oneshot::Sender<Result<(), EngineError>>),
    Unsubscribe(String),
}

/// Publications remembered per channel to notice an offset handed out twice.
const RECENT: usize = 32;
/// Epochs remembered per channel after it left them.
const RETIRED: usize = 4;

/// Where delivery of one channel stands.
#[derive(Debug, Default)]
struct Track {
    /// The epoch delivered in.
    epoch: String,
    /// The last offset delivered.
    last: u64,
    /// (offset, time) of the latest publications delivered, oldest first:
    /// one of these offsets arriving again with another time means Redis
    /// handed it out twice (a rollback).
    recent: VecDeque<(u64, u64)>,
    /// Epochs the channel left: their late messages are ignored.
    retired: Vec<String>,
}

impl Track {
    fn new(epoch: String, last: u64) -> Self {
        Self {
            epoch,
            last,
            ..Self::default()
        }
    }

    fn delivered(&mut self, offset: u64, time: u64) {
        self.last = offset;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((offset, time));
    }

    /// The time of the publication delivered at `offset`, if remembered.
    fn time_of(&self, offset: u64) -> Option<u64> {
        self.recent
            .iter()
            .rev()
            .find(|(o, _)| *o == offset)
            .map(|(_, t)| *t)
    }

    /// Moves to `epoch` at `top`, forgetting what was delivered.
    fn start_over(&mut self, epoch: String, top: u64) {
        if epoch != self.epoch {
            let old = std::mem::replace(&mut self.epoch, epoch);
            if self.retired.len() == RETIRED {
                self.retired.remove(0);
            }
            self.retired.push(old);
        }
        self.last = top;
        self.recent.clear();
    }
}

/// The handle the engine holds.
pub(super) struct Fanout {
    commands: mpsc::UnboundedSender<Command>,
}

/// What the task needs.
pub(super) struct Setup {
    /// Where the pub/sub connection may go.
    pub endpoints: Arc<Endpoints>,
    /// Reads (positions, catch-up) and answers (surveys).
    pub conn: Conn,
    /// Key names.
    pub keys: Keys,
    /// Where deliveries go.
    pub sink: Arc<dyn PublicationSink>,
    /// Whether this shard carries the control channel (shard 0).
    pub control: bool,
    /// Bounds connecting.
    pub connect_timeout: Duration,
    /// Bounds every pub/sub command (a half-open connection is noticed).
    pub command_timeout: Duration,
    /// How often positions are checked and the connection pinged.
    pub position_check: Duration,
    /// Lifetime of channel metadata created here (ms).
    pub meta_ttl_ms: u64,
}

impl Fanout {
    /// Starts the shard's task.
    pub(super) fn start(setup: Setup) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            setup,
            tracks: HashMap::new(),
        };
        tokio::spawn(task.run(rx));
        Self { commands: tx }
    }

    /// Subscribes the node; returns once Redis confirmed it.
    pub(super) async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(channel.to_string(), tx))
            .map_err(|_| EngineError::Unavailable("the pub/sub task stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the pub/sub task stopped".into()))?
    }

    /// Unsubscribes the node (in order with earlier subscribes).
    pub(super) fn unsubscribe(&self, channel: &str) {
        let _ = self
            .commands
            .send(Command::Unsubscribe(channel.to_string()));
    }
}

/// The pub/sub connection broke (or stopped answering).
struct Broken;

struct Task {
    setup: Setup,
    tracks: HashMap<String, Track>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut failures = 0u32;
        loop {
            // Sentinel's master may have moved: ask at every attempt.
            let connected = match self.setup.endpoints.client(failures as usize).await {
                Ok(client) => self.connect(client).await,
                Err(e) => Err(redis_error(e)),
            };
            match connected {
                Ok((sink, stream)) => {
                    failures = 0;
                    if !self.serve(sink, stream, &mut rx).await {
                        return; // the engine is gone
                    }
                    tracing::warn!("redis pub/sub connection lost; reconnecting");
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "redis pub/sub connect failed");
                }
            }
            // Full jitter: nodes that lost Redis together do not return together.
            let bound = BACKOFF_MIN
                .saturating_mul(1 << failures.min(6))
                .min(BACKOFF_MAX);
            let pause = rand::rng().random_range(Duration::ZERO..=bound);
            let until = tokio::time::Instant::now() + pause;
            // Meanwhile, subscribes fail fast (temporary) and unsubscribes apply.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    command = rx.recv() => match command {
                        None => return,
                        Some(command) => self.refuse(command),
                    },
                }
            }
        }
    }

    /// Applies `command` without a connection: subscribes fail (temporary),
    /// unsubscribes forget the channel (nothing to resubscribe later).
    fn refuse(&mut self, command: Command) {
        match command {
            Command::Subscribe(_, ack) => {
                let _ = ack.send(Err(EngineError::Unavailable(
                    "redis pub/sub is reconnecting".into(),
                )));
            }
            Command::Unsubscribe(channel) => self.forget(&channel),
        }
    }

    /// Runs one pub/sub command within `command_timeout`.
    async fn bounded<T>(
        &self,
        what: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, EngineError> {
        tokio::time::timeout(self.setup.command_timeout, what)
            .await
            .map_err(|_| EngineError::Unavailable("redis pub/sub did not answer".into()))?
            .map_err(redis_error)
    }

    async fn connect(
        &self,
        client: redis::Client,
    ) -> Result<(PubSubSink, redis::aio::PubSubStream), EngineError> {
        let pubsub = tokio::time::timeout(self.setup.connect_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| EngineError::Unavailable("connecting to redis timed out".into()))?
            .map_err(redis_error)?;
        let (mut sink, stream) = pubsub.split();
        if self.setup.control {
            self.bounded(sink.subscribe(self.setup.keys.control()))
                .await?;
        }
        let names: Vec<String> = self
            .tracks
            .keys()
            .map(|c| self.setup.keys.pubsub(c))
            .collect();
        for chunk in names.chunks(BATCH) {
            self.bounded(sink.subscribe(chunk)).await?;
        }
        Ok((sink, stream))
    }

    /// Serves one pub/sub connection until it breaks (true) or the engine
    /// is dropped (false).
    async fn serve(
        &mut self,
        mut sink: PubSubSink,
        mut stream: redis::aio::PubSubStream,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> bool {
        // Whatever was published while we were not listening.
        self.check().await;
        let mut tick = tokio::time::interval(self.setup.position_check);
        tick.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(m) => self.on_message(m.get_channel_name(), m.get_payload_bytes()).await,
                    None => return true,
                },
                command = rx.recv() => {
                    let Some(first) = command else { return false };
                    let mut batch = vec![first];
                    while batch.len() < BATCH
                        && let Ok(c) = rx.try_recv()
                    {
                        batch.push(c);
                    }
                    if self.apply(&mut sink, batch).await.is_err() {
                        return true;
                    }
                }
                _ = tick.tick() => {
                    // A connection that went quiet may be half-open: ping it.
                    let pong: Result<redis::Value, _> = self.bounded(sink.ping()).await;
                    if pong.is_err() {
                        return true;
                    }
                    self.check().await;
                }
            }
        }
    }

    /// Applies commands in order; runs of subscribes go as one SUBSCRIBE.
    /// After a failure, the rest are refused as if disconnected.
    async fn apply(&mut self, sink: &mut PubSubSink, batch: Vec<Command>) -> Result<(), Broken> {
        let mut pending = Vec::new();
        let mut broken = false;
        for command in batch {
            if broken {
                self.refuse(command);
                continue;
            }
            match command {
                Command::Subscribe(channel, ack) => pending.push((channel, ack)),
                Command::Unsubscribe(channel) => {
                    broken = self
                        .subscribe_all(sink, std::mem::take(&mut pending))
                        .await
                        .is_err();
                    self.forget(&channel);
                    if !broken {
                        let name = self.setup.keys.pubsub(&channel);
                        broken = self.bounded(sink.unsubscribe(name)).await.is_err();
                    }
                }
            }
        }
        if !broken {
            broken = self.subscribe_all(sink, pending).await.is_err();
        } else {
            for (channel, ack) in pending {
                self.refuse(Command::Subscribe(channel, ack));
            }
        }
        if broken { Err(Broken) } else { Ok(()) }
    }

    async fn subscribe_all(
        &mut self,
        sink: &mut PubSubSink,
        pending: Vec<(String, oneshot::Sender<Result<(), EngineError>>)>,
    ) -> Result<(), Broken> {
        if pending.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = pending
            .iter()
            .map(|(c, _)| self.setup.keys.pubsub(c))
            .collect();
        if let Err(e) = self.bounded(sink.subscribe(&names)).await {
            for (_, ack) in pending {
                let _ = ack.send(Err(e.clone()));
            }
            return Err(Broken);
        }
        // Listening now: where each channel stands (its epoch created if
        // need be, as a subscriber's reply would) is where delivery starts;
        // anything at or below it reaches subscribers through their reply,
        // which reads the position after this.
        let positions = join_all(pending.iter().map(|(c, _)| self.position(c, None))).await;
        for ((channel, ack), position) in pending.into_iter().zip(positions) {
            match position {
                Ok((top, epoch)) => {
                    self.tracks.insert(channel, Track::new(epoch, top));
                    let _ = ack.send(Ok(()));
                }
                Err(e) => {
                    let _ = ack.send(Err(e));
                    let name = self.setup.keys.pubsub(&channel);
                    let _ = self.bounded(sink.unsubscribe(name)).await;
                }
            }
        }
        Ok(())
    }

    fn forget(&mut self, channel: &str) {
        self.tracks.remove(channel);
    }

    /// The channel's (top, epoch), creating the epoch if it has none; with
    /// `replace`, an epoch equal to it is replaced by a new one first (its
    /// offsets can no longer be trusted).
    async fn position(
        &self,
        channel: &str,
        replace: Option<&str>,
    ) -> Result<(u64, String), EngineError> {
        let mut conn = self.setup.conn.clone();
        let (top, epoch, _): (u64, String, Vec<Entry>) = scripts::READ
            .key(self.setup.keys.stream(channel))
            .key(self.setup.keys.meta(channel))
            .arg(crate::engine::new_epoch())
            .arg(self.setup.meta_ttl_ms)
            .arg(1)
            .arg(0)
            .arg("0")
            .arg(replace.unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok((top, epoch))
    }

    /// The position check: catches up every channel whose top in Redis is
    /// ahead of what was delivered. A changed or vanished epoch, or an
    /// offset Redis handed out again (its top below what was delivered, or
    /// another publication at the last offset delivered), is a loss.
    async fn check(&mut self) {
        let channels: Vec<String> = self.tracks.keys().cloned().collect();
        type Answer = ((Option<String>, Option<u64>), Vec<Entry>);
        for chunk in channels.chunks(BATCH) {
            // One pipeline per channel (its keys share a Cluster slot), all
            // at once over the multiplexed connection.
            let reads = chunk.iter().map(|channel| {
                let last = self.tracks.get(channel).map_or(0, |t| t.last);
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET")
                    .arg(self.setup.keys.meta(channel))
                    .arg("e")
                    .arg("t")
                    .cmd("XRANGE")
                    .arg(self.setup.keys.stream(channel))
                    .arg(format!("{last}-0"))
                    .arg(format!("{last}-0"));
                let mut conn = self.setup.conn.clone();
                async move { pipe.query_async::<Answer>(&mut conn).await }
            });
            let answers = join_all(reads).await;
            for (channel, answer) in chunk.iter().zip(answers) {
                let ((epoch, top), at_last) = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "redis position check failed");
                        continue;
                    }
                };
                let Some(track) = self.tracks.get(channel) else {
                    continue;
                };
                let top = top.unwrap_or(0);
                let reused = at_last
                    .first()
                    .and_then(super::decode_entry)
                    .is_some_and(|p| track.time_of(track.last).is_some_and(|t| t != p.time));
                match epoch {
                    None => self.restart(channel, None).await,
                    Some(e) if e != track.epoch => self.lose(channel, e, top),
                    Some(e) if top < track.last || reused => self.restart(channel, Some(&e)).await,
                    Some(_) => {
                        self.catch_up(channel, top).await;
                    }
                }
            }
        }
    }

    /// Redis lost the channel, or reused its offsets: a new epoch, and
    /// subscribers start over.
    async fn restart(&mut self, channel: &str, replace: Option<&str>) {
        match self.position(channel, replace).await {
            Ok((top, epoch)) => self.lose(channel, epoch, top),
            Err(e) => tracing::warn!(channel, error = %e, "starting a new epoch failed"),
        }
    }

    /// Continuity is lost: subscribers start over from `epoch` at `top`.
    fn lose(&mut self, channel: &str, epoch: String, top: u64) {
        tracing::info!(
            channel,
            "publications lost in redis; subscribers must resubscribe"
        );
        self.setup.sink.lost(channel);
        if let Some(t) = self.tracks.get_mut(channel) {
            t.start_over(epoch, top);
        }
    }

    /// Delivers what the stream holds after the last delivered offset, up
    /// to `upto`. False when it could not (read failed: left for the next
    /// check; or the stream lost them: subscribers are told).
    async fn catch_up(&mut self, channel: &str, upto: u64) -> bool {
        let Some(track) = self.tracks.get(channel) else {
            return false;
        };
        if upto <= track.last {
            return true;
        }
        let (from, epoch) = (track.last + 1, track.epoch.clone());
        let mut conn = self.setup.conn.clone();
        let entries: Result<Vec<Entry>, _> = redis::cmd("XRANGE")
            .arg(self.setup.keys.stream(channel))
            .arg(format!("{from}-0"))
            .arg(format!("{upto}-0"))
            .query_async(&mut conn)
            .await;
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(channel, error = %e, "redis catch-up read failed");
                return false;
            }
        };
        let mut expect = from;
        for entry in &entries {
            match super::decode_entry(entry) {
                Some(p) if p.offset == Some(expect) => {
                    let time = p.time;
                    self.setup.sink.deliver(channel, Some(&epoch), &Arc::new(p));
                    if let Some(t) = self.tracks.get_mut(channel) {
                        t.delivered(expect, time);
                    }
                    expect += 1;
                }
                _ => break,
            }
        }
        if expect <= upto {
            self.lose(channel, epoch, upto);
            return false;
        }
        true
    }

    async fn on_message(&mut self, name: &str, payload: &[u8]) {
        let Some(channel) = self.setup.keys.channel_of(name) else {
            if name == self.setup.keys.control() {
                match serde_json::from_slice::<ControlMessage>(payload) {
                    Ok(ControlMessage::User(control)) => self.setup.sink.control(&control),
                    Ok(ControlMessage::Survey {
                        reply,
                        prefix,
                        cursor,
                        limit,
                    }) => self.answer_survey(reply, prefix, cursor, limit),
                    Err(e) => tracing::warn!(error = %e, "bad control message"),
                }
            }
            return;
        };
        if !self.tracks.contains_key(channel) {
            return; // unsubscribed meanwhile
        }
        match payload.split_first() {
            Some((b'p', rest)) => self.on_publication(channel, rest).await,
            Some((kind @ (b'j' | b'l'), rest)) => {
                let Ok(info) = serde_json::from_slice::<ClientInfo>(rest) else {
                    tracing::warn!(channel, "bad presence message");
                    return;
                };
                let event = if *kind == b'j' {
                    PresenceEvent::Join(info)
                } else {
                    PresenceEvent::Leave(info)
                };
                self.setup.sink.deliver_presence(channel, event);
            }
            Some((b'r', rest)) => match serde_json::from_slice(rest) {
                Ok(receipt) => self
                    .setup
                    .sink
                    .deliver_presence(channel, PresenceEvent::Receipt(receipt)),
                Err(e) => tracing::warn!(channel, error = %e, "bad receipt message"),
            },
            _ => tracing::warn!(channel, "unknown message"),
        }
    }

    /// Pushes this node's channels onto `reply`, off the delivery path.
    fn answer_survey(&self, reply: String, prefix: String, cursor: Option<String>, limit: usize) {
        let sink = self.setup.sink.clone();
        let mut conn = self.setup.conn.clone();
        tokio::spawn(async move {
            let page = sink.channels(&prefix, cursor.as_deref(), limit);
            let Ok(json) = serde_json::to_string(&page) else {
                return;
            };
            let answered: Result<(), _> = redis::pipe()
                .cmd("RPUSH")
                .arg(&reply)
                .arg(json)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&reply)
                .arg(10_000)
                .ignore()
                .query_async(&mut conn)
                .await;
            if let Err(e) = answered {
                tracing::debug!(error = %e, "answering a channels survey failed");
            }
        });
    }

    /// `offset:epoch:publication JSON` (offset 0 and no epoch: ephemeral).
    async fn on_publication(&mut self, channel: &str, rest: &[u8]) {
        let Some((offset, epoch, mut publication)) = decode_message(rest) else {
            tracing::warn!(channel, "bad publication message");
            return;
        };
        if offset == 0 {
            self.setup
                .sink
                .deliver(channel, None, &Arc::new(publication));
            return;
        }
        let Some(track) = self.tracks.get(channel) else {
            return;
        };
        if track.retired.iter().any(|e| e == epoch) {
            return; // sent before the channel left that epoch
        }
        if track.epoch != epoch {
            // A new epoch (made elsewhere): what was delivered no longer
            // continues; subscribers start over.
            return self.lose(channel, epoch.to_string(), offset);
        }
        if offset <= track.last {
            // Delivered already (by a catch-up), unless Redis handed the
            // offset out again to another publication.
            if track.time_of(offset).is_some_and(|t| t != publication.time) {
                let epoch = epoch.to_string();
                self.restart(channel, Some(&epoch)).await;
            }
            return;
        }
        if offset > track.last + 1 && !self.catch_up(channel, offset - 1).await {
            return; // the next check delivers it, or subscribers start over
        }
        publication.offset = Some(offset);
        let time = publication.time;
        self.setup
            .sink
            .deliver(channel, Some(epoch), &Arc::new(publication));
        if let Some(t) = self.tracks.get_mut(channel) {
            t.delivered(offset, time);
        }
    }
}

fn decode_message(rest: &[u8]) -> Option<(u64, &str, Publication)> {
    let text = std::str::from_utf8(rest).ok()?;
    let (offset, rest) = text.split_once(':')?;
    let (epoch, json) = rest.split_once(':')?;
    let publication: Publication = serde_json::from_str(json).ok()?;
    Some((offset.parse().ok()?, epoch, publication))
}
