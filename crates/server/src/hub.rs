//! The node-local channel registry: who is subscribed where, and fanout.
//!
//! A publication is encoded once and the same `Bytes` go to every
//! subscriber's outbox. Sharded by channel; no lock is held while writing to
//! sockets (the writers do that).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tidings_protocol::{Publication, Push, encode_pub, encode_push};

use crate::engine::PresenceEvent;
use crate::mailbox::{Control, Mailbox};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Pushed};

const SHARDS: usize = 64;

/// A connection id, unique within this node.
pub type ConnId = u64;

enum SubState {
    /// Pushes go straight to the outbox, but for publications at or below
    /// `floor` (the subscribe reply's top): a node fed by a remote broker
    /// may hand over, after the reply, publications the reply already held.
    Live { floor: Option<u64> },
    /// Subscribing: live pushes wait here (with their offsets) until the
    /// subscribe reply is queued.
    Buffering(Vec<(Option<u64>, Bytes)>),
    /// Continuity was lost: nothing more is pushed; the connection's task
    /// ends the subscription with `unsub` 3003.
    Lost,
}

/// One connection's subscription to one channel.
pub struct Subscriber {
    /// Unique on this node: tells this subscription from a later one of
    /// the same connection and channel.
    id: u64,
    outbox: Arc<Outbox>,
    control: Arc<Mailbox>,
    state: Mutex<SubState>,
}

/// Ids of [`Subscriber`]s.
static NEXT_SUBSCRIBER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Live publications seen while subscribing skipped an offset.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap;

impl Subscriber {
    fn offer(&self, offset: Option<u64>, bytes: &Bytes) -> Pushed {
        let mut state = self.state.lock();
        match &mut *state {
            SubState::Live { floor } => match (offset, *floor) {
                // In the reply already: not queued (nor counted as sent).
                (Some(o), Some(f)) if o <= f => Pushed::Closed,
                _ => self.outbox.push(bytes.clone()),
            },
            SubState::Buffering(buf) => {
                buf.push((offset, bytes.clone()));
                Pushed::Queued
            }
            SubState::Lost => Pushed::Closed,
        }
    }

    /// Stops pushes and asks the connection's task to end the subscription
    /// with `unsub` 3003 (the client subscribes again with `since`).
    fn lose(&self, channel: &str) {
        let mut state = self.state.lock();
        if matches!(*state, SubState::Lost) {
            return;
        }
        *state = SubState::Lost;
        self.control.send(Control::Lost {
            channel: channel.to_string(),
            subscriber: self.id,
        });
    }

    /// This subscription's id (see [`Control::Lost`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Ends buffering: queues `reply` (if any), then the buffered publications newer
    /// than `top` (older ones are in the reply or before the client's
    /// position), and switches to live delivery — all under the state lock,
    /// so no live publication can overtake. Fails on an offset gap after `top`.
    pub fn go_live(&self, reply: Option<Bytes>, top: Option<u64>) -> Result<(), Gap> {
        let mut state = self.state.lock();
        let buf = match std::mem::replace(&mut *state, SubState::Live { floor: top }) {
            SubState::Buffering(buf) => buf,
            live @ SubState::Live { .. } => {
                *state = live;
                return Ok(());
            }
            SubState::Lost => {
                // Answered, then ended: the caller sends `unsub` 3003.
                *state = SubState::Lost;
                if let Some(reply) = reply {
                    self.outbox.push_reply(reply);
                }
                return Err(Gap);
            }
        };
        if let Some(reply) = reply {
            self.outbox.push_reply(reply);
        }
        // Only publications have offsets; `join`/`leave` pass through in place.
        let mut expect = top.map(|t| t + 1);
        for (offset, bytes) in buf {
            if let (Some(o), Some(e)) = (offset, expect) {
                if o < e {
                    continue; // in the reply, or before the client's position
                }
                if o != e {
                    return Err(Gap);
                }
                expect = Some(o + 1);
            }
            self.outbox.push(bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn go_live_skips_what_the_reply_holds_across_presence_events() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let outbox = Arc::new(Outbox::new(1 << 20));
        let mailbox = Arc::new(Mailbox::default());
        let (sub, _) = hub
            .subscribe("c", 1, outbox.clone(), mailbox.clone())
            .unwrap();
        let msg = |s: &'static str| Bytes::from_static(s.as_bytes());
        sub.offer(None, &msg("join"));
        sub.offer(Some(5), &msg("pub5"));
        sub.offer(None, &msg("leave"));
        sub.offer(Some(6), &msg("pub6"));
        // The reply was built at top 5: offset 5 is in it, 6 is not.
        sub.go_live(Some(msg("reply")), Some(5)).unwrap();
        let mut batch = Vec::new();
        outbox.try_batch(&mut batch);
        assert_eq!(
            batch,
            ["reply", "join", "leave", "pub6"].map(|s| Bytes::from_static(s.as_bytes()))
        );

        let (gappy, _) = hub.subscribe("d", 1, outbox.clone(), mailbox).unwrap();
        gappy.offer(Some(8), &msg("pub8"));
        assert_eq!(
            gappy.go_live(None, Some(6)),
            Err(Gap),
            "offset 7 is missing"
        );
    }
}

struct Channel {
    subscribers: HashMap<ConnId, Arc<Subscriber>>,
}

/// The hub.
pub struct Hub {
    shards: Vec<RwLock<HashMap<String, Channel>>>,
    hasher: std::collections::hash_map::RandomState,
    metrics: Arc<Metrics>,
}

/// A subscription could not be added.
#[derive(Debug, PartialEq, Eq)]
pub struct AlreadySubscribed;

impl Hub {
    /// An empty hub counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
            metrics,
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<String, Channel>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Adds a subscriber in buffering state; call [`Subscriber::go_live`]
    /// once the reply is ready. Returns whether it is the channel's first.
    pub fn subscribe(
        &self,
        channel: &str,
        conn: ConnId,
        outbox: Arc<Outbox>,
        control: Arc<Mailbox>,
    ) -> Result<(Arc<Subscriber>, bool), AlreadySubscribed> {
        let mut shard = self.shard(channel).write();
        let first = !shard.contains_key(channel);
        let entry = shard.entry(channel.to_string()).or_insert_with(|| Channel {
            subscribers: HashMap::new(),
        });
        if entry.subscribers.contains_key(&conn) {
            return Err(AlreadySubscribed);
        }
        let sub = Arc::new(Subscriber {
            id: NEXT_SUBSCRIBER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            outbox,
            control,
            state: Mutex::new(SubState::Buffering(Vec::new())),
        });
        entry.subscribers.insert(conn, sub.clone());
        if first {
            self.metrics.channels.inc();
        }
        self.metrics.subscriptions.inc();
        Ok((sub, first))
    }

    /// Removes a subscriber. Returns `Some(last)` when it was there, `last`
    /// telling whether the channel has no local subscriber left.
    pub fn unsubscribe(&self, channel: &str, conn: ConnId) -> Option<bool> {
        let mut shard = self.shard(channel).write();
        let entry = shard.get_mut(channel)?;
        entry.subscribers.remove(&conn)?;
        self.metrics.subscriptions.dec();
        let last = entry.subscribers.is_empty();
        if last {
            shard.remove(channel);
            self.metrics.channels.dec();
        }
        Some(last)
    }

    /// Channels with local subscribers, sorted by name: those starting with
    /// `prefix`, after `cursor`, at most `limit`.
    pub fn channels(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .filter(|(name, _)| {
                        name.starts_with(prefix) && cursor.is_none_or(|c| name.as_str() > c)
                    })
                    .map(|(name, ch)| (name.clone(), ch.subscribers.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable();
        all.truncate(limit);
        all
    }

    /// Whether `channel` has local subscribers.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.shard(channel).read().contains_key(channel)
    }

    /// Number of channels and of subscriptions on this node.
    pub fn counts(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(c, s), shard| {
            let shard = shard.read();
            (
                c + shard.len(),
                s + shard.values().map(|ch| ch.subscribers.len()).sum::<usize>(),
            )
        })
    }
}

impl Hub {
    /// Offers one encoded message (with its offset, if any) to every local
    /// subscriber of `channel`.
    fn fan_out(&self, channel: &str, offset: Option<u64>, make: impl FnOnce() -> Bytes) {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return;
        };
        let bytes = make();
        let mut queued = 0u64;
        for sub in entry.subscribers.values() {
            match sub.offer(offset, &bytes) {
                Pushed::Queued => queued += 1,
                Pushed::Overflow => {
                    self.metrics.slow_consumer_disconnects.inc();
                }
                Pushed::Closed => {}
            }
        }
        self.metrics.messages_out.inc_by(queued);
    }
}

impl Hub {
    /// Pushes a publication to the channel's local subscribers (called by
    /// the engine in offset order per channel).
    pub fn deliver(&self, channel: &str, epoch: Option<&str>, publication: &Arc<Publication>) {
        // Encoded once, and only when someone here listens.
        self.fan_out(channel, publication.offset, || {
            encode_pub(channel, epoch, publication)
        });
    }

    /// Pushes `join` or `leave`, in the channel's order.
    pub fn deliver_presence(&self, channel: &str, event: PresenceEvent) {
        self.fan_out(channel, None, || {
            let channel = channel.to_string();
            encode_push(&match event {
                PresenceEvent::Join(info) => Push::Join { channel, info },
                PresenceEvent::Leave(info) => Push::Leave { channel, info },
            })
        });
    }

    /// Continuity of `channel` is lost on this node: every local subscriber
    /// gets `unsub` 3003 and nothing more until it subscribes again.
    pub fn lost(&self, channel: &str) {
        let shard = self.shard(channel).read();
        if let Some(entry) = shard.get(channel) {
            for sub in entry.subscribers.values() {
                sub.lose(channel);
            }
        }
    }
}
