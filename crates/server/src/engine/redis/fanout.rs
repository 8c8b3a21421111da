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
//! and learn `recovered: false`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use redis::aio::{ConnectionManager, PubSubSink};
use tidings_protocol::{ClientInfo, Publication};
use tokio::sync::{mpsc, oneshot};

use super::keys::Keys;
use super::{ControlMessage, Entry, redis_error};
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

/// Where delivery of one channel stands.
#[derive(Debug, Default)]
struct Track {
    /// The epoch delivered in (None: the channel had none yet).
    epoch: Option<String>,
    /// The last offset delivered.
    last: u64,
}

/// The handle the engine holds.
pub(super) struct Fanout {
    commands: mpsc::UnboundedSender<Command>,
    /// Channels subscribed here (what presence upkeep looks at).
    channels: Arc<Mutex<HashSet<String>>>,
}

/// What the task needs.
pub(super) struct Setup {
    pub client: redis::Client,
    pub conn: ConnectionManager,
    pub keys: Keys,
    pub sink: Arc<dyn PublicationSink>,
    /// Whether this shard carries the control channel (shard 0).
    pub control: bool,
    pub connect_timeout: Duration,
    pub position_check: Duration,
}

impl Fanout {
    /// Starts the shard's task.
    pub(super) fn start(setup: Setup) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let channels = Arc::new(Mutex::new(HashSet::new()));
        let task = Task {
            setup,
            tracks: HashMap::new(),
            channels: channels.clone(),
        };
        tokio::spawn(task.run(rx));
        Self {
            commands: tx,
            channels,
        }
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

    /// The channels subscribed here.
    pub(super) fn channels(&self) -> Vec<String> {
        self.channels.lock().iter().cloned().collect()
    }
}

struct Task {
    setup: Setup,
    tracks: HashMap<String, Track>,
    channels: Arc<Mutex<HashSet<String>>>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut failures = 0u32;
        loop {
            match self.connect().await {
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
                        Some(Command::Subscribe(_, ack)) => {
                            let _ = ack.send(Err(EngineError::Unavailable(
                                "redis pub/sub is reconnecting".into(),
                            )));
                        }
                        Some(Command::Unsubscribe(channel)) => self.forget(&channel),
                    },
                }
            }
        }
    }

    async fn connect(&self) -> Result<(PubSubSink, redis::aio::PubSubStream), EngineError> {
        let pubsub = tokio::time::timeout(
            self.setup.connect_timeout,
            self.setup.client.get_async_pubsub(),
        )
        .await
        .map_err(|_| EngineError::Unavailable("connecting to redis timed out".into()))?
        .map_err(redis_error)?;
        let (mut sink, stream) = pubsub.split();
        if self.setup.control {
            sink.subscribe(self.setup.keys.control())
                .await
                .map_err(redis_error)?;
        }
        let names: Vec<String> = self
            .tracks
            .keys()
            .map(|c| self.setup.keys.pubsub(c))
            .collect();
        for chunk in names.chunks(BATCH) {
            sink.subscribe(chunk).await.map_err(redis_error)?;
        }
        Ok((sink, stream))
    }

    /// Serves one pub/sub connection until it drops (true) or the engine
    /// is dropped (false).
    async fn serve(
        &mut self,
        mut sink: PubSubSink,
        mut stream: redis::aio::PubSubStream,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> bool {
        // Whatever was published while we were not listening.
        let all: Vec<String> = self.tracks.keys().cloned().collect();
        self.check(&all).await;
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
                    let all: Vec<String> = self.tracks.keys().cloned().collect();
                    self.check(&all).await;
                }
            }
        }
    }

    /// Applies commands in order; runs of subscribes go as one SUBSCRIBE.
    async fn apply(&mut self, sink: &mut PubSubSink, batch: Vec<Command>) -> Result<(), ()> {
        let mut pending: Vec<(String, oneshot::Sender<Result<(), EngineError>>)> = Vec::new();
        for command in batch {
            match command {
                Command::Subscribe(channel, ack) => pending.push((channel, ack)),
                Command::Unsubscribe(channel) => {
                    self.subscribe_all(sink, std::mem::take(&mut pending))
                        .await?;
                    self.forget(&channel);
                    if let Err(e) = sink.unsubscribe(self.setup.keys.pubsub(&channel)).await {
                        tracing::warn!(error = %e, "redis unsubscribe failed");
                        return Err(());
                    }
                }
            }
        }
        self.subscribe_all(sink, pending).await
    }

    async fn subscribe_all(
        &mut self,
        sink: &mut PubSubSink,
        pending: Vec<(String, oneshot::Sender<Result<(), EngineError>>)>,
    ) -> Result<(), ()> {
        if pending.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = pending
            .iter()
            .map(|(c, _)| self.setup.keys.pubsub(c))
            .collect();
        if let Err(e) = sink.subscribe(&names).await {
            let e = redis_error(e);
            for (_, ack) in pending {
                let _ = ack.send(Err(e.clone()));
            }
            return Err(());
        }
        // Listening now: where each channel stands is where delivery starts
        // (anything at or below it reaches subscribers through their
        // subscribe reply, which reads the position after this).
        let channels: Vec<&str> = pending.iter().map(|(c, _)| c.as_str()).collect();
        let positions = self.positions(&channels).await;
        for (i, (channel, ack)) in pending.into_iter().enumerate() {
            let track = match &positions {
                Ok(p) => match &p[i] {
                    (Some(epoch), top) => Track {
                        epoch: Some(epoch.clone()),
                        last: *top,
                    },
                    (None, _) => Track::default(),
                },
                Err(e) => {
                    let _ = ack.send(Err(e.clone()));
                    let _ = sink.unsubscribe(self.setup.keys.pubsub(&channel)).await;
                    continue;
                }
            };
            self.channels.lock().insert(channel.clone());
            self.tracks.insert(channel, track);
            let _ = ack.send(Ok(()));
        }
        Ok(())
    }

    fn forget(&mut self, channel: &str) {
        self.tracks.remove(channel);
        self.channels.lock().remove(channel);
    }

    /// Each channel's (epoch, top) in Redis now.
    async fn positions(
        &self,
        channels: &[&str],
    ) -> Result<Vec<(Option<String>, u64)>, EngineError> {
        let mut out = Vec::with_capacity(channels.len());
        for chunk in channels.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for channel in chunk {
                pipe.cmd("HMGET")
                    .arg(self.setup.keys.meta(channel))
                    .arg("e")
                    .arg("t");
            }
            let mut conn = self.setup.conn.clone();
            let got: Vec<(Option<String>, Option<u64>)> =
                pipe.query_async(&mut conn).await.map_err(redis_error)?;
            out.extend(got.into_iter().map(|(e, t)| (e, t.unwrap_or(0))));
        }
        Ok(out)
    }

    /// The position check: catches up every channel whose top in Redis is
    /// ahead of what was delivered; a changed or vanished epoch is a loss.
    async fn check(&mut self, channels: &[String]) {
        let names: Vec<&str> = channels.iter().map(String::as_str).collect();
        let positions = match self.positions(&names).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "redis position check failed");
                return;
            }
        };
        for (channel, (epoch, top)) in channels.iter().zip(positions) {
            let Some(track) = self.tracks.get(channel) else {
                continue;
            };
            match (&track.epoch, epoch) {
                (Some(had), Some(now)) if *had != now => self.lose(channel, Some(now), top),
                (Some(_), None) => self.lose(channel, None, 0),
                (None, Some(now)) => {
                    if let Some(t) = self.tracks.get_mut(channel) {
                        t.epoch = Some(now);
                    }
                    self.catch_up(channel, top).await;
                }
                (Some(_), Some(_)) => {
                    self.catch_up(channel, top).await;
                }
                (None, None) => {}
            }
        }
    }

    /// Continuity is lost: subscribers start over from `epoch` at `top`.
    fn lose(&mut self, channel: &str, epoch: Option<String>, top: u64) {
        tracing::info!(
            channel,
            "publications lost in redis; subscribers must resubscribe"
        );
        self.setup.sink.lost(channel);
        if let Some(t) = self.tracks.get_mut(channel) {
            *t = Track { epoch, last: top };
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
        let mut publications = Vec::with_capacity(entries.len());
        for entry in &entries {
            match super::decode_entry(entry) {
                Some(p) if p.offset == Some(expect) => {
                    publications.push(Arc::new(p));
                    expect += 1;
                }
                _ => break,
            }
        }
        for p in &publications {
            self.setup.sink.deliver(channel, epoch.as_deref(), p);
        }
        if expect <= upto {
            self.lose(channel, epoch, upto);
            return false;
        }
        if let Some(t) = self.tracks.get_mut(channel) {
            t.last = upto;
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
                    }) => self.answer_survey(reply, &prefix, cursor.as_deref(), limit),
                    Err(e) => tracing::warn!(error = %e, "bad control message"),
                }
            }
            return;
        };
        if !self.tracks.contains_key(channel) {
            return; // unsubscribed meanwhile
        }
        let channel = channel.to_string();
        match payload.split_first() {
            Some((b'p', rest)) => self.on_publication(&channel, rest).await,
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
                self.setup.sink.deliver_presence(&channel, event);
            }
            _ => tracing::warn!(channel, "unknown message"),
        }
    }

    /// Pushes this node's channels onto `reply` (without holding up delivery).
    fn answer_survey(&self, reply: String, prefix: &str, cursor: Option<&str>, limit: usize) {
        let page = self.setup.sink.channels(prefix, cursor, limit);
        let Ok(json) = serde_json::to_string(&page) else {
            return;
        };
        let mut conn = self.setup.conn.clone();
        tokio::spawn(async move {
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
        let Some(track) = self.tracks.get_mut(channel) else {
            return;
        };
        match &track.epoch {
            Some(had) if had != epoch => {
                let epoch = epoch.to_string();
                return self.lose(channel, Some(epoch), offset);
            }
            Some(_) => {}
            None => track.epoch = Some(epoch.to_string()),
        }
        if offset <= track.last {
            return; // delivered already (by a catch-up)
        }
        if offset > track.last + 1 && !self.catch_up(channel, offset - 1).await {
            return; // the next check delivers it, or subscribers start over
        }
        publication.offset = Some(offset);
        self.setup
            .sink
            .deliver(channel, Some(epoch), &Arc::new(publication));
        if let Some(t) = self.tracks.get_mut(channel) {
            t.last = offset;
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
