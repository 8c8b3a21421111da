//! The node-local channel registry: who is subscribed where, and fanout.
//!
//! A publication is encoded once, by the channel's [`ChannelDelivery`], and
//! the same entry goes to every subscriber's outbox. Sharded by channel; no
//! lock is held while writing to sockets (the writers do that).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use tidings_protocol::{Publication, Push, encode_push};

use crate::delivery::ChannelDelivery;
use crate::delta::DeltaForms;
use crate::engine::PresenceEvent;
use crate::mailbox::{Control, Mailbox};
use crate::metrics::Metrics;
use crate::outbox::{Entry, Lane, Outbox, Pushed};

const SHARDS: usize = 64;

/// A connection id, unique within this node.
pub type ConnId = u64;

enum SubState {
    /// Pushes go straight to the outbox, but for publications at or below
    /// `floor` (the subscribe reply's top): a node fed by a remote broker
    /// may hand over, after the reply, publications the reply already held.
    /// `last`: the newest offset queued (what a delta may build on).
    Live {
        floor: Option<u64>,
        last: Option<u64>,
    },
    /// Subscribing: live pushes wait here until the subscribe reply is queued.
    Buffering(Vec<Entry>),
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
    /// Publications come as deltas where they can (`delta: "fossil"`).
    delta: bool,
}

/// Ids of [`Subscriber`]s.
static NEXT_SUBSCRIBER: AtomicU64 = AtomicU64::new(1);

/// Live publications seen while subscribing skipped an offset.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap;

impl Subscriber {
    fn offer(&self, entry: &Entry) -> Pushed {
        let mut state = self.state.lock();
        match &mut *state {
            SubState::Live { floor, last } => match (offset_of(entry), *floor) {
                // In the reply already: not queued (nor counted as sent).
                (Some(o), Some(f)) if o <= f => Pushed::Closed,
                (offset, _) => self.outbox.push_entry(self.form(entry, last, offset)),
            },
            SubState::Buffering(buf) => {
                buf.push(entry.clone());
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

    /// The entry as this subscriber gets it: delta subscribers get the
    /// publication's delta or full form (and `last` moves on).
    fn form(&self, entry: &Entry, last: &mut Option<u64>, offset: Option<u64>) -> Entry {
        if !self.delta || offset.is_none() {
            return entry.clone();
        }
        let formed = crate::delta::form_for(entry, *last);
        *last = offset;
        formed
    }

    /// This subscription's id (see [`Control::Lost`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Ends buffering: queues `reply` (if any), then the buffered publications newer
    /// than `top` (older ones are in the reply or before the client's
    /// position), and switches to live delivery — all under the state lock,
    /// so no live publication can overtake. Fails on an offset gap after `top`.
    /// `base`: the newest publication the reply holds, which the first
    /// delta may build on.
    pub fn go_live(
        &self,
        reply: Option<Bytes>,
        top: Option<u64>,
        base: Option<u64>,
    ) -> Result<(), Gap> {
        let mut state = self.state.lock();
        let live = SubState::Live {
            floor: top,
            last: base,
        };
        let buf = match std::mem::replace(&mut *state, live) {
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
        let mut last = base;
        for entry in buf {
            let offset = offset_of(&entry);
            if let (Some(o), Some(e)) = (offset, expect) {
                if o < e {
                    continue; // in the reply, or before the client's position
                }
                if o != e {
                    return Err(Gap);
                }
                expect = Some(o + 1);
            }
            self.outbox.push_entry(self.form(&entry, &mut last, offset));
        }
        if let SubState::Live { last: l, .. } = &mut *state {
            *l = last;
        }
        Ok(())
    }
}

/// The offset of a publication entry.
fn offset_of(entry: &Entry) -> Option<u64> {
    entry.publication.as_ref().and_then(|p| p.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn go_live_skips_what_the_reply_holds_across_presence_events() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let outbox = Arc::new(Outbox::new(1 << 20));
        let mailbox = Arc::new(Mailbox::default());
        let delivery = ChannelDelivery::default();
        let (sub, _) = hub
            .subscribe("c", 1, outbox.clone(), mailbox.clone(), delivery, false)
            .unwrap();
        let msg = |s: &'static str| Bytes::from_static(s.as_bytes());
        let publ = |offset: u64, s: &'static str| {
            let meta = crate::outbox::PubMeta {
                channel: "c".into(),
                offset: Some(offset),
                epoch: None,
                key: None,
                mode: crate::outbox::Mode::Stream,
                ..Default::default()
            };
            Entry::publication(msg(s), Lane::Normal, Arc::new(meta))
        };
        let presence = |s: &'static str| Entry::of_channel(msg(s), Lane::Normal, "c".into());
        sub.offer(&presence("join"));
        sub.offer(&publ(5, "pub5"));
        sub.offer(&presence("leave"));
        sub.offer(&publ(6, "pub6"));
        // The reply was built at top 5: offset 5 is in it, 6 is not.
        sub.go_live(Some(msg("reply")), Some(5), None).unwrap();
        let mut batch = Vec::new();
        outbox.try_batch(&mut batch);
        let texts: Vec<Bytes> = batch.into_iter().map(|e| e.bytes).collect();
        assert_eq!(
            texts,
            ["reply", "join", "leave", "pub6"].map(|s| Bytes::from_static(s.as_bytes()))
        );

        let (gappy, _) = hub
            .subscribe("d", 1, outbox.clone(), mailbox, delivery, false)
            .unwrap();
        gappy.offer(&publ(8, "pub8"));
        assert_eq!(
            gappy.go_live(None, Some(6), None),
            Err(Gap),
            "offset 7 is missing"
        );
    }
}

struct Channel {
    /// The name, shared by its entries.
    name: Arc<str>,
    subscribers: HashMap<ConnId, Arc<Subscriber>>,
    /// How its publications are delivered (its namespace's policy, as of
    /// the latest subscribe).
    delivery: ChannelDelivery,
    /// Publications delivered here since the channel got its first local
    /// subscriber (the admin UI's rates).
    publications: AtomicU64,
    /// Its namespace's `tidings_namespace_deliveries_total`.
    deliveries: Counter<u64, AtomicU64>,
    /// Subscribers that get deltas; while there are any, `last` is kept.
    delta_subscribers: usize,
    /// The newest publication delivered, with its epoch (a delta's base).
    last: Mutex<Option<Delivered>>,
}

/// A channel as the admin UI lists it: name, local subscribers, and
/// publications delivered here while it had them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelActivity {
    /// Channel name.
    pub channel: String,
    /// Subscribers on this node.
    pub subscribers: usize,
    /// Publications delivered on this node (a counter: rates come from two reads).
    pub publications: u64,
}

/// A publication delivered in a channel, with the channel's epoch.
type Delivered = (Option<Arc<str>>, Arc<Publication>);

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
        delivery: ChannelDelivery,
        delta: bool,
    ) -> Result<(Arc<Subscriber>, bool), AlreadySubscribed> {
        let mut shard = self.shard(channel).write();
        let first = !shard.contains_key(channel);
        let entry = shard.entry(channel.to_string()).or_insert_with(|| Channel {
            name: Arc::from(channel),
            subscribers: HashMap::new(),
            delivery,
            publications: AtomicU64::new(0),
            deliveries: self
                .metrics
                .deliveries(channel.split_once(':').map_or("", |(ns, _)| ns)),
            delta_subscribers: 0,
            last: Mutex::new(None),
        });
        if entry.subscribers.contains_key(&conn) {
            return Err(AlreadySubscribed);
        }
        entry.delivery = delivery;
        let sub = Arc::new(Subscriber {
            id: NEXT_SUBSCRIBER.fetch_add(1, Ordering::Relaxed),
            outbox,
            control,
            state: Mutex::new(SubState::Buffering(Vec::new())),
            delta: delta && delivery.allows_delta(),
        });
        entry.delta_subscribers += usize::from(sub.delta);
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
        let sub = entry.subscribers.remove(&conn)?;
        entry.delta_subscribers -= usize::from(sub.delta);
        if entry.delta_subscribers == 0 {
            // Not kept up to date without them: never a stale base later.
            *entry.last.lock() = None;
        }
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

    /// The local channels starting with `prefix`, with their activity; at
    /// most `limit`, the most subscribed first.
    pub fn activity(&self, prefix: &str, limit: usize) -> Vec<ChannelActivity> {
        let mut all: Vec<ChannelActivity> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .filter(|(name, _)| name.starts_with(prefix))
                    .map(|(name, ch)| ChannelActivity {
                        channel: name.clone(),
                        subscribers: ch.subscribers.len(),
                        publications: ch.publications.load(Ordering::Relaxed),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable_by(|a, b| (b.subscribers, &a.channel).cmp(&(a.subscribers, &b.channel)));
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
    /// Offers one entry, made for the channel, to every local subscriber
    /// of `channel`.
    fn fan_out(&self, channel: &str, make: impl FnOnce(&Channel) -> Entry) {
        let shard = self.shard(channel).read();
        let Some(ch) = shard.get(channel) else {
            return;
        };
        let entry = make(ch);
        let mut queued = 0u64;
        for sub in ch.subscribers.values() {
            match sub.offer(&entry) {
                Pushed::Queued => queued += 1,
                Pushed::Replaced(n) => {
                    queued += 1;
                    self.metrics.conflated.inc_by(u64::from(n));
                }
                Pushed::Skipped => {
                    self.metrics.gaps.inc();
                }
                Pushed::Overflow => {
                    self.metrics.slow_consumer_disconnects.inc();
                }
                Pushed::Closed => {}
            }
        }
        self.metrics.messages_out.inc_by(queued);
        if entry.publication.is_some() {
            ch.deliveries.inc_by(queued);
        }
    }
}

impl Hub {
    /// Pushes a publication to the channel's local subscribers (called by
    /// the engine in offset order per channel).
    pub fn deliver(&self, channel: &str, epoch: Option<&str>, publication: &Arc<Publication>) {
        // Encoded once, and only when someone here listens.
        self.fan_out(channel, |ch| {
            ch.publications.fetch_add(1, Ordering::Relaxed);
            let delta = (ch.delta_subscribers > 0).then(|| {
                let this = (epoch.map(Arc::from), publication.clone());
                // A base of another epoch is no base.
                let previous = ch
                    .last
                    .lock()
                    .replace(this)
                    .filter(|(e, _)| e.as_deref() == epoch)
                    .map(|(_, p)| p);
                let style = ch.delivery.style();
                let p = publication.clone();
                DeltaForms::new(ch.name.clone(), epoch, style, p, previous)
            });
            ch.delivery.entry_with(&ch.name, epoch, publication, delta)
        });
    }

    /// Pushes `join` or `leave`, in the channel's order (lane `low`).
    pub fn deliver_presence(&self, channel: &str, event: PresenceEvent) {
        self.fan_out(channel, |ch| {
            let channel = ch.name.to_string();
            let bytes = encode_push(&match event {
                PresenceEvent::Join(info) => Push::Join { channel, info },
                PresenceEvent::Leave(info) => Push::Leave { channel, info },
                PresenceEvent::Receipt(receipt) => Push::Receipt(receipt),
            });
            Entry::of_channel(bytes, Lane::Low, ch.name.clone())
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
