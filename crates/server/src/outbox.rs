//! A connection's outbox: bounded in bytes, filled by the hub and the
//! session, drained in batches by the transport's writer.
//!
//! Entries are typed: each waits in a lane (replies and control first, then
//! publications from `critical` to `low`), and a publication carries its
//! channel, position and delivery mode ([`PubMeta`]), so that the
//! namespace's policy applies here, in one place, over every transport:
//! `latest` keeps one queued value per channel and key, and a full outbox
//! conflates, skips with a `gap` notice, or disconnects (3002).
//!
//! A channel's entries never overtake each other: an entry queued in a
//! higher lane first lifts the same channel's waiting entries into it.
//!
//! Two policies act in time: a throttled publication (`max_rate`) waits in
//! the connection's [`Throttle`] for its slot, and a publication of a
//! namespace with `batch_delay` may wait that long for others to be written
//! with it. Replies and control pushes are never held: they take whatever
//! is queued with them at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tidings_protocol::{Disconnect, DisconnectCode, Push, encode_push};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::throttle::Throttle;

/// How the connection ends.
#[derive(Debug, Clone)]
pub struct Close {
    /// Sent as a `disconnect` push, then as the close code.
    pub disconnect: Disconnect,
    /// Whether queued messages are written first.
    pub flush: bool,
}

/// What became of a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued in place of this many older values of conflating channels
    /// (its own channel and key's, or others' under pressure).
    Replaced(u32),
    /// The outbox was full: the channel's backlog was dropped for a `gap`
    /// notice (`slow_consumer = "skip"`).
    Skipped,
    /// The outbox was full: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection is already closing; dropped.
    Closed,
}

/// Where an entry waits: lower lanes are written first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Lane {
    /// Replies, pings, `unsub`, `gap`: never behind publications.
    Control = 0,
    /// Publications with priority `critical`.
    Critical = 1,
    /// Priority `high`.
    High = 2,
    /// Priority `normal` (the default).
    #[default]
    Normal = 3,
    /// Priority `low`; `join` and `leave`.
    Low = 4,
}

const LANES: usize = 5;

/// What a channel's publications may become in a subscriber's outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every publication; a full outbox disconnects (3002).
    #[default]
    Stream,
    /// Every publication while the outbox has room; when full, a newer
    /// value replaces the queued one of its channel and key.
    Conflate,
    /// Every publication while the outbox has room; when full, the
    /// channel's queued publications are dropped for a `gap` notice.
    Skip,
    /// Only the newest value per channel and key waits: a newer one
    /// replaces the queued one (a subscriber that keeps up gets all).
    Latest,
}

/// What a publication entry is: shared by every subscriber's copy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PubMeta {
    /// The channel.
    pub channel: Arc<str>,
    /// Its offset, in channels with history.
    pub offset: Option<u64>,
    /// The channel's epoch, in channels with history.
    pub epoch: Option<Arc<str>>,
    /// The publication's conflation key (`key`), if it has one.
    pub key: Option<Arc<str>>,
    /// Its delivery mode.
    pub mode: Mode,
    /// Throttled (`max_rate`): the least time between two deliveries of
    /// its channel and key to one subscriber.
    pub interval: Option<Duration>,
    /// How long it may wait to be written with others (`batch_delay`).
    pub hold: Duration,
    /// When it was published (Unix ms; 0: unknown), for the delivery
    /// latency histogram.
    pub published_ms: u64,
    /// The publication as another protocol writes it (None: it writes
    /// nothing for it), made by the first connection of that protocol that
    /// needs it and shared by the others: encoded once, like `bytes`.
    pub translated: std::sync::OnceLock<Option<Translated>>,
    /// Its forms for delta subscriptions, when its channel has some here.
    pub delta: Option<crate::delta::DeltaForms>,
    /// `bytes` in MessagePack, made by the first such connection that
    /// needs it (None: it could not be transcoded).
    pub msgpack: std::sync::OnceLock<Option<Bytes>>,
}

/// Which encoding of a publication an entry carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Form {
    /// What every subscriber gets (or not a publication).
    #[default]
    Main,
    /// A delta subscription's full form (the payload's text).
    Full,
    /// A delta subscription's delta.
    Delta,
}

/// `json` transcoded to MessagePack; None (logged) when it cannot be.
pub fn to_msgpack(json: &[u8]) -> Option<Bytes> {
    tidings_protocol::msgpack::from_json(json)
        .inspect_err(|e| tracing::warn!(error = %e, "a message could not be sent as MessagePack"))
        .ok()
}

/// A publication encoded for another protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// The client that made it (its own connection does not get it back).
    pub from: Option<Box<str>>,
    /// The message.
    pub bytes: Bytes,
}

/// One queued message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The encoded message, shared across subscribers.
    pub bytes: Bytes,
    /// Its lane.
    pub lane: Lane,
    /// For messages of one channel: which (publications carry their
    /// position too); keeps the channel's order across lanes.
    pub channel: Option<Arc<str>>,
    /// For publications: what they are.
    pub publication: Option<Arc<PubMeta>>,
    /// Which of the publication's encodings `bytes` is.
    pub form: Form,
}

impl Entry {
    /// A reply or control push.
    pub fn control(bytes: Bytes) -> Self {
        Self {
            bytes,
            lane: Lane::Control,
            channel: None,
            publication: None,
            form: Form::Main,
        }
    }

    /// A publication.
    pub fn publication(bytes: Bytes, lane: Lane, meta: Arc<PubMeta>) -> Self {
        Self {
            bytes,
            lane,
            channel: Some(meta.channel.clone()),
            publication: Some(meta),
            form: Form::Main,
        }
    }

    /// Another message of `channel` (`join`, `leave`) in `lane`.
    pub fn of_channel(bytes: Bytes, lane: Lane, channel: Arc<str>) -> Self {
        Self {
            bytes,
            lane,
            channel: Some(channel),
            publication: None,
            form: Form::Main,
        }
    }

    /// The message in MessagePack: a publication's made once and shared.
    pub fn msgpack(&self) -> Option<Bytes> {
        let Some(meta) = self.publication.as_deref() else {
            return to_msgpack(&self.bytes);
        };
        let cache = match (self.form, &meta.delta) {
            (Form::Full, Some(forms)) => forms.msgpack(false),
            (Form::Delta, Some(forms)) => forms.msgpack(true),
            _ => &meta.msgpack,
        };
        cache.get_or_init(|| to_msgpack(&self.bytes)).clone()
    }

    /// How long it may wait to be written with others (0: at once).
    fn hold(&self) -> Duration {
        self.publication.as_ref().map_or(Duration::ZERO, |p| p.hold)
    }

    /// The (channel, key) this entry replaces and is replaced by, when its
    /// mode conflates.
    fn conflation(&self) -> Option<(Arc<str>, Option<Arc<str>>)> {
        let p = self.publication.as_ref()?;
        matches!(p.mode, Mode::Latest | Mode::Conflate).then(|| (p.channel.clone(), p.key.clone()))
    }
}

struct Inner {
    lanes: [VecDeque<Entry>; LANES],
    /// Bytes queued (the throttle counts what it holds).
    bytes: usize,
    close: Option<Close>,
    /// Queued entries per channel and lane (to keep a channel's order).
    channels: HashMap<Arc<str>, [u32; LANES]>,
    /// Throttled publications waiting for their slot.
    throttle: Throttle,
    /// Something queued must be written at once.
    urgent: bool,
    /// Otherwise, when the queue must be written (`batch_delay`) ...
    hold_until: Option<Instant>,
    /// ... set by the shortest delay queued.
    hold_min: Duration,
}

impl Inner {
    fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }

    fn count(&mut self, e: &Entry, up: bool) {
        let Some(channel) = &e.channel else {
            return;
        };
        let counts = self.channels.entry(channel.clone()).or_default();
        if up {
            counts[e.lane as usize] += 1;
        } else {
            counts[e.lane as usize] -= 1;
            if counts.iter().all(|n| *n == 0) {
                self.channels.remove(channel);
            }
        }
    }

    fn append(&mut self, e: Entry) {
        self.bytes += e.bytes.len();
        self.count(&e, true);
        self.lanes[e.lane as usize].push_back(e);
    }

    /// Queues `e` after its channel's waiting entries and notes when it
    /// must be written; whether the writer must wake to see it.
    fn enqueue(&mut self, e: Entry, now: &mut Option<Instant>) -> bool {
        let mut wake = self.is_empty();
        let hold = e.hold();
        if hold.is_zero() {
            wake |= !self.urgent;
            self.urgent = true;
        } else if self.hold_until.is_none() || hold < self.hold_min {
            // Only a shorter delay can make the queue due sooner.
            let at = *now.get_or_insert_with(Instant::now) + hold;
            wake |= self.hold_until.is_some_and(|h| at < h);
            self.hold_until = Some(self.hold_until.map_or(at, |h| h.min(at)));
            self.hold_min = hold;
        }
        if let Some(channel) = &e.channel {
            self.lift(channel, e.lane);
        }
        self.append(e);
        wake
    }

    /// Whether the queue is to be written now.
    fn ready(&self, now: Instant) -> bool {
        !self.is_empty() && (self.urgent || self.hold_until.is_none_or(|h| h <= now))
    }

    /// When the writer must look again though nothing is pushed: the end of
    /// a batch delay or a throttled value's slot.
    fn wake_at(&self) -> Option<Instant> {
        let hold = self.hold_until.filter(|_| !self.is_empty());
        match (hold, self.throttle.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queues the throttled values whose slot has come.
    fn release(&mut self, now: Instant) {
        let mut out = Vec::new();
        self.throttle.release(now, &mut out);
        self.enqueue_released(out, &mut Some(now));
    }

    /// Queues values the throttle let go; whether the writer must wake.
    fn enqueue_released(&mut self, out: Vec<Entry>, now: &mut Option<Instant>) -> bool {
        out.into_iter()
            .fold(false, |wake, e| self.enqueue(e, now) | wake)
    }

    /// Bytes against the bound: queued and held by the throttle.
    fn used(&self) -> usize {
        self.bytes + self.throttle.bytes()
    }

    /// Moves `channel`'s entries waiting in lanes below `lane` into it, in
    /// their order, so that what comes next cannot overtake them.
    fn lift(&mut self, channel: &Arc<str>, lane: Lane) {
        let Some(counts) = self.channels.get(channel) else {
            return;
        };
        // Drained lane by lane, a channel's entries come in the order they
        // were queued: gathering them the same way keeps it.
        let lower: Vec<usize> = (lane as usize + 1..LANES)
            .filter(|l| counts[*l] > 0)
            .collect();
        let mut moved = Vec::new();
        for l in lower {
            let queue = std::mem::take(&mut self.lanes[l]);
            let (mine, rest): (VecDeque<Entry>, VecDeque<Entry>) = queue
                .into_iter()
                .partition(|e| e.channel.as_ref() == Some(channel));
            self.lanes[l] = rest;
            moved.extend(mine);
        }
        for mut e in moved {
            self.count(&e, false);
            self.bytes -= e.bytes.len();
            e.lane = lane;
            self.append(e);
        }
    }

    /// Takes out the queued entry that `e` replaces (same channel and key,
    /// in a conflating mode); whether there was one. `e` then goes at the
    /// end, so the channel's offsets still only grow.
    fn remove_replaced(&mut self, e: &Entry) -> bool {
        let Some(want) = e.conflation() else {
            return false;
        };
        for l in 0..LANES {
            let found = self.lanes[l]
                .iter()
                .position(|q| q.conflation().as_ref() == Some(&want));
            if let Some(at) = found
                && let Some(old) = self.lanes[l].remove(at)
            {
                self.bytes -= old.bytes.len();
                self.count(&old, false);
                return true;
            }
        }
        false
    }

    /// Keeps only the newest queued entry of each conflating channel and
    /// key (under pressure: before that, every value waits its turn); how
    /// many it dropped.
    fn keep_newest(&mut self) -> u32 {
        let mut dropped = 0;
        let mut newer = std::collections::HashSet::new();
        for l in (0..LANES).rev() {
            let queue = std::mem::take(&mut self.lanes[l]);
            let mut kept = VecDeque::with_capacity(queue.len());
            for e in queue.into_iter().rev() {
                if let Some(k) = e.conflation()
                    && !newer.insert(k)
                {
                    self.bytes -= e.bytes.len();
                    self.count(&e, false);
                    dropped += 1;
                } else {
                    kept.push_front(e);
                }
            }
            self.lanes[l] = kept;
        }
        dropped
    }

    /// Drops `channel`'s queued publications; the newest dropped, if any.
    fn drop_publications(&mut self, channel: &Arc<str>) -> Option<Arc<PubMeta>> {
        let mut newest: Option<Arc<PubMeta>> = None;
        for l in 0..LANES {
            let queue = std::mem::take(&mut self.lanes[l]);
            let (dropped, kept): (VecDeque<Entry>, VecDeque<Entry>) =
                queue.into_iter().partition(|e| {
                    e.publication
                        .as_ref()
                        .is_some_and(|p| p.channel == *channel)
                });
            self.lanes[l] = kept;
            for e in dropped {
                self.bytes -= e.bytes.len();
                self.count(&e, false);
                let p = e.publication.expect("partitioned on publications");
                if newest.as_ref().is_none_or(|n| p.offset > n.offset) {
                    newest = Some(p);
                }
            }
        }
        newest
    }

    fn drain_into(&mut self, batch: &mut Vec<Entry>) {
        for queue in self.lanes.iter_mut() {
            batch.extend(queue.drain(..));
        }
        self.channels.clear();
        self.bytes = 0;
        self.urgent = false;
        self.hold_until = None;
    }

    fn clear(&mut self) {
        self.drain_into(&mut Vec::new());
        self.throttle.clear();
    }
}

/// What a full outbox could do for a new entry.
enum Room {
    /// Room was made by dropping this many conflated values: queue it.
    Made(u32),
    /// It was dealt with (dropped for a `gap` notice).
    Taken,
    /// Nothing: the connection is a slow consumer (3002).
    None,
}

/// The outbox. Share it in an `Arc`.
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Wakes the writer.
    notify: Notify,
    /// Wakes the reader when the connection starts closing.
    closing: Notify,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lanes: Default::default(),
                bytes: 0,
                close: None,
                channels: HashMap::new(),
                throttle: Throttle::default(),
                urgent: false,
                hold_until: None,
                hold_min: Duration::ZERO,
            }),
            notify: Notify::new(),
            closing: Notify::new(),
            max_bytes,
        }
    }

    /// Queues one encoded control push (ping, `unsub`). Never blocks;
    /// overflow closes the connection.
    pub fn push(&self, message: Bytes) -> Pushed {
        self.push_entry(Entry::control(message))
    }

    /// Queues a reply. Like [`Outbox::push`], except that a reply larger than
    /// the bound is accepted when nothing else is queued: a recovery answer
    /// (bounded by `recovery_max`) can be bigger than the outbox, and a client
    /// that was cut off as a slow consumer must still be able to recover.
    pub fn push_reply(&self, message: Bytes) -> Pushed {
        self.push_inner(Entry::control(message), true)
    }

    /// Queues a typed entry by its lane and its publication's mode.
    pub fn push_entry(&self, entry: Entry) -> Pushed {
        self.push_inner(entry, false)
    }

    fn push_inner(&self, entry: Entry, reply: bool) -> Pushed {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return Pushed::Closed;
        }
        let throttled = entry
            .publication
            .as_ref()
            .is_some_and(|p| p.interval.is_some());
        // `latest`: the newest value waits instead of the queued one; and a
        // throttled one instead of the held one.
        let mut replaced = 0;
        if entry.publication.as_ref().map(|p| p.mode) == Some(Mode::Latest)
            && inner.remove_replaced(&entry)
        {
            replaced += 1;
        }
        if throttled && inner.throttle.take_replaced(&entry) {
            replaced += 1;
        }
        let len = entry.bytes.len();
        // An oversized reply into an empty queue is not charged against the
        // bound, so the pushes that follow it still have the whole bound.
        let oversized_reply = reply && inner.is_empty() && len > self.max_bytes;
        if !oversized_reply && inner.used() + len > self.max_bytes {
            match self.make_room(&mut inner, &entry) {
                Room::Made(n) => replaced += n,
                Room::Taken => return Pushed::Skipped,
                Room::None => {
                    inner.clear();
                    inner.close = Some(Close {
                        disconnect: Disconnect::new(DisconnectCode::SLOW_CONSUMER, None),
                        flush: false,
                    });
                    drop(inner);
                    self.notify.notify_one();
                    self.closing.notify_one();
                    return Pushed::Overflow;
                }
            }
        }
        let mut now = None;
        let wake = if oversized_reply {
            inner.urgent = true;
            inner.lanes[Lane::Control as usize].push_back(entry);
            true
        } else if throttled {
            let due = inner.throttle.due();
            let mut out = Vec::new();
            let at = *now.get_or_insert_with(Instant::now);
            inner.throttle.hold(entry, at, &mut out);
            let moved = inner.throttle.due() != due;
            inner.enqueue_released(out, &mut now) || moved
        } else {
            inner.enqueue(entry, &mut now)
        };
        drop(inner);
        if wake {
            self.notify.notify_one();
        }
        if replaced > 0 {
            Pushed::Replaced(replaced)
        } else {
            Pushed::Queued
        }
    }

    /// A full outbox and `entry` to queue: what its channel's mode allows
    /// instead of disconnecting.
    fn make_room(&self, inner: &mut Inner, entry: &Entry) -> Room {
        let len = entry.bytes.len();
        // Whatever the new entry, queued values that a newer one of their
        // channel and key replaces go first (conflating namespaces).
        let dropped = inner.keep_newest();
        if inner.used() + len <= self.max_bytes {
            return Room::Made(dropped);
        }
        let Some(p) = entry.publication.as_ref() else {
            return Room::None;
        };
        match p.mode {
            Mode::Stream | Mode::Latest => Room::None,
            Mode::Conflate => {
                let own = u32::from(inner.remove_replaced(entry));
                if inner.used() + len <= self.max_bytes {
                    Room::Made(dropped + own)
                } else {
                    Room::None
                }
            }
            Mode::Skip => {
                // The channel's backlog and this publication go; the client
                // is told where it stands and recovers from history.
                let dropped = inner.drop_publications(&p.channel);
                let newest = match dropped {
                    Some(d) if d.offset > p.offset => d,
                    _ => p.clone(),
                };
                let gap = Entry::of_channel(
                    encode_push(&Push::Gap {
                        channel: newest.channel.to_string(),
                        offset: newest.offset,
                        epoch: newest.epoch.as_deref().map(str::to_string),
                    }),
                    Lane::Control,
                    p.channel.clone(),
                );
                if inner.used() + gap.bytes.len() > self.max_bytes {
                    return Room::None;
                }
                if inner.enqueue(gap, &mut None) {
                    self.notify.notify_one();
                }
                Room::Taken
            }
        }
    }

    /// Asks the writer to end the connection. The first close wins.
    pub fn close(&self, disconnect: Disconnect, flush: bool) -> bool {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return false;
        }
        inner.close = Some(Close { disconnect, flush });
        drop(inner);
        self.notify.notify_one();
        self.closing.notify_one();
        true
    }

    /// Resolves once the connection starts closing (one waiter: the reader).
    pub async fn closing(&self) {
        self.closing.notified().await
    }

    /// Whether the connection is closing.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().close.is_some()
    }

    /// Why the connection was closed, once it was.
    pub fn closed_with(&self) -> Option<Disconnect> {
        self.inner
            .lock()
            .close
            .as_ref()
            .map(|c| c.disconnect.clone())
    }

    /// Moves whatever is queued into `batch` (by lane) without waiting;
    /// returns the close when the connection is closing.
    pub fn try_batch(&self, batch: &mut Vec<Entry>) -> Option<Close> {
        let mut inner = self.inner.lock();
        inner.drain_into(batch);
        inner.close.clone()
    }

    /// Waits until something is queued or the connection closes, then moves
    /// every queued message into `batch`, lane by lane. Returns the close
    /// when closing (after this batch, if it is to be flushed).
    pub async fn next_batch(&self, batch: &mut Vec<Entry>) -> Option<Close> {
        loop {
            let notified = self.notify.notified();
            let wake_at = {
                let mut inner = self.inner.lock();
                let close = inner.close.clone();
                if close.as_ref().is_some_and(|c| !c.flush) {
                    inner.clear();
                    return close;
                }
                let now = inner.wake_at().map(|_| Instant::now());
                if let Some(now) = now {
                    inner.release(now);
                }
                let ready = match now {
                    Some(now) => inner.ready(now),
                    None => inner.urgent && !inner.is_empty(),
                };
                if ready || close.is_some() {
                    inner.drain_into(batch);
                    return close;
                }
                inner.wake_at()
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn texts(batch: &[Entry]) -> Vec<&[u8]> {
        batch.iter().map(|e| &e.bytes[..]).collect()
    }

    fn publication(
        channel: &str,
        offset: u64,
        key: Option<&str>,
        mode: Mode,
        text: &'static str,
        lane: Lane,
    ) -> Entry {
        let meta = PubMeta {
            channel: channel.into(),
            offset: Some(offset),
            epoch: Some("e".into()),
            key: key.map(Into::into),
            mode,
            ..Default::default()
        };
        Entry::publication(bytes(text), lane, Arc::new(meta))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Publish(usize),
        Read,
    }

    proptest! {
        /// `latest` and `conflate` against a model: for any interleaving of
        /// publications (three keys, one channel) and reads, the values a
        /// subscriber sees per key have increasing offsets, the channel's
        /// offsets only grow, and it ends with the newest of every key.
        /// `conflate` runs with an outbox that holds three values only.
        #[test]
        fn latest_and_conflate_never_go_back_and_end_with_the_newest(
            latest in proptest::bool::ANY,
            ops in proptest::collection::vec(
                prop_oneof![3 => (0usize..3).prop_map(Op::Publish), 1 => Just(Op::Read)],
                1..200,
            ),
        ) {
            let (mode, max) = if latest { (Mode::Latest, 1 << 20) } else { (Mode::Conflate, 3 * 8) };
            let o = Outbox::new(max);
            let keys = ["k0", "k1", "k2"];
            let mut newest: [Option<u64>; 3] = [None; 3];
            let mut seen: Vec<(usize, u64)> = Vec::new();
            let read = |o: &Outbox, seen: &mut Vec<(usize, u64)>| {
                let mut batch = Vec::new();
                o.try_batch(&mut batch);
                for e in batch {
                    let p = e.publication.expect("publications only");
                    let k = keys.iter().position(|k| Some(*k) == p.key.as_deref()).expect("a key");
                    seen.push((k, p.offset.expect("an offset")));
                }
            };
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Publish(k) => {
                        let offset = i as u64 + 1;
                        newest[k] = Some(offset);
                        let meta = PubMeta {
                            channel: "t".into(),
                            offset: Some(offset),
                            epoch: None,
                            key: Some(keys[k].into()),
                            mode,
                            ..Default::default()
                        };
                        // Eight bytes each: the bound holds three.
                        let bytes = Bytes::from(format!("{offset:08}"));
                        let pushed = o.push_entry(Entry::publication(bytes, Lane::Normal, Arc::new(meta)));
                        prop_assert!(matches!(pushed, Pushed::Queued | Pushed::Replaced(_)), "{:?}", pushed);
                    }
                    Op::Read => read(&o, &mut seen),
                }
            }
            read(&o, &mut seen);
            for w in seen.windows(2) {
                prop_assert!(w[0].1 < w[1].1, "the channel's offsets only grow: {:?}", seen);
            }
            for (k, want) in newest.iter().enumerate() {
                let last = seen.iter().rev().find(|(key, _)| *key == k).map(|(_, o)| *o);
                prop_assert_eq!(last, *want, "key {} ends with its newest", k);
            }
        }
    }

    #[tokio::test]
    async fn batches_and_overflows() {
        let o = Outbox::new(10);
        assert_eq!(o.push(bytes("aaaa")), Pushed::Queued);
        assert_eq!(o.push(bytes("bbbb")), Pushed::Queued);
        let mut batch = Vec::new();
        assert!(o.next_batch(&mut batch).await.is_none());
        assert_eq!(batch.len(), 2);
        assert_eq!(o.push(bytes("cccccccc")), Pushed::Queued);
        assert_eq!(o.push(bytes("ddd")), Pushed::Overflow);
        assert_eq!(o.push(bytes("e")), Pushed::Closed);
        batch.clear();
        let close = o.next_batch(&mut batch).await.unwrap();
        assert!(batch.is_empty());
        assert_eq!(close.disconnect.code, 3002);
    }

    #[tokio::test]
    async fn flushing_close_keeps_queue() {
        let o = Outbox::new(100);
        o.push(bytes("x"));
        o.close(Disconnect::new(DisconnectCode::SHUTDOWN, Some(5)), true);
        let mut batch = Vec::new();
        let close = o.next_batch(&mut batch).await.unwrap();
        assert_eq!((batch.len(), close.disconnect.code), (1, 3001));
    }

    #[test]
    fn lanes_go_by_priority_but_a_channel_keeps_its_order() {
        let o = Outbox::new(1000);
        o.push_entry(publication("stats", 1, None, Mode::Stream, "s1", Lane::Low));
        o.push_entry(publication(
            "score",
            1,
            None,
            Mode::Stream,
            "a1",
            Lane::Normal,
        ));
        o.push_entry(publication("stats", 2, None, Mode::Stream, "s2", Lane::Low));
        o.push_entry(publication(
            "goal",
            1,
            None,
            Mode::Stream,
            "g1",
            Lane::Critical,
        ));
        o.push(bytes("reply"));
        // A critical one in `score` lifts `score`'s queued one with it.
        o.push_entry(publication(
            "score",
            2,
            None,
            Mode::Stream,
            "a2",
            Lane::Critical,
        ));
        let mut batch = Vec::new();
        o.try_batch(&mut batch);
        assert_eq!(
            texts(&batch),
            [&b"reply"[..], b"g1", b"a1", b"a2", b"s1", b"s2"]
        );
    }

    #[test]
    fn latest_keeps_one_value_per_channel_and_key() {
        let o = Outbox::new(1000);
        o.push_entry(publication(
            "t",
            1,
            Some("AAPL"),
            Mode::Latest,
            "a1",
            Lane::Normal,
        ));
        o.push_entry(publication(
            "t",
            2,
            Some("MSFT"),
            Mode::Latest,
            "m2",
            Lane::Normal,
        ));
        o.push_entry(publication(
            "t",
            3,
            Some("AAPL"),
            Mode::Latest,
            "a3",
            Lane::Normal,
        ));
        let mut batch = Vec::new();
        o.try_batch(&mut batch);
        assert_eq!(texts(&batch), [&b"m2"[..], b"a3"], "offsets still grow");
    }

    #[test]
    fn a_full_outbox_conflates_skips_or_disconnects_by_mode() {
        // Conflate: room is made by replacing the same key's value.
        let o = Outbox::new(4);
        o.push_entry(publication(
            "t",
            1,
            Some("k"),
            Mode::Conflate,
            "v1",
            Lane::Normal,
        ));
        o.push_entry(publication(
            "t",
            2,
            Some("j"),
            Mode::Conflate,
            "w2",
            Lane::Normal,
        ));
        assert_eq!(
            o.push_entry(publication(
                "t",
                3,
                Some("k"),
                Mode::Conflate,
                "v3",
                Lane::Normal
            )),
            Pushed::Replaced(1)
        );
        let mut batch = Vec::new();
        o.try_batch(&mut batch);
        assert_eq!(texts(&batch), [&b"w2"[..], b"v3"]);

        // Skip: the channel's backlog goes; a gap notice says up to where.
        let o = Outbox::new(200);
        let big = "p_______________________________________"; // 40 bytes
        for i in 1..=3 {
            o.push_entry(publication("c", i, None, Mode::Skip, big, Lane::Normal));
        }
        o.push(bytes(
            "f_____________________________________________________________________",
        )); // 70
        assert_eq!(
            o.push_entry(publication("c", 4, None, Mode::Skip, big, Lane::Normal)),
            Pushed::Skipped
        );
        let mut batch = Vec::new();
        assert!(o.try_batch(&mut batch).is_none());
        assert_eq!(batch.len(), 2, "{batch:?}");
        let gap: serde_json::Value = serde_json::from_slice(&batch[1].bytes).unwrap();
        assert_eq!(
            gap,
            serde_json::json!({"push": "gap", "channel": "c", "offset": 4, "epoch": "e"})
        );

        // Any entry: conflating values with a newer one queued go first.
        let o = Outbox::new(6);
        o.push_entry(publication(
            "t",
            1,
            Some("k"),
            Mode::Conflate,
            "v1",
            Lane::Low,
        ));
        o.push_entry(publication(
            "t",
            2,
            Some("k"),
            Mode::Conflate,
            "v2",
            Lane::Low,
        ));
        o.push_entry(publication("s", 1, None, Mode::Stream, "x1", Lane::Normal));
        assert_eq!(
            o.push_entry(publication("s", 2, None, Mode::Stream, "x2", Lane::Normal)),
            Pushed::Replaced(1)
        );
        let mut batch = Vec::new();
        o.try_batch(&mut batch);
        assert_eq!(texts(&batch), [&b"x1"[..], b"x2", b"v2"]);

        // Stream: disconnect.
        let o = Outbox::new(4);
        o.push_entry(publication("s", 1, None, Mode::Stream, "x1", Lane::Normal));
        o.push_entry(publication("s", 2, None, Mode::Stream, "x2", Lane::Normal));
        assert_eq!(
            o.push_entry(publication("s", 3, None, Mode::Stream, "x3", Lane::Normal)),
            Pushed::Overflow
        );
    }

    fn timed(channel: &str, offset: u64, key: &str, interval: u64, hold: u64) -> Entry {
        let meta = PubMeta {
            channel: channel.into(),
            offset: Some(offset),
            epoch: Some("e".into()),
            key: Some(key.into()),
            interval: (interval > 0).then(|| Duration::from_millis(interval)),
            hold: Duration::from_millis(hold),
            translated: Default::default(),
            ..Default::default()
        };
        Entry::publication(
            Bytes::from(format!("{key}{offset}")),
            Lane::Normal,
            Arc::new(meta),
        )
    }

    /// Closes `o` and returns what its recording writer saw: when each
    /// entry left, since `start`, and its bytes.
    async fn recorded(
        o: &Outbox,
        writer: tokio::task::JoinHandle<Vec<(Instant, Entry)>>,
        start: Instant,
    ) -> Vec<(Duration, Bytes)> {
        o.close(Disconnect::new(DisconnectCode::SHUTDOWN, None), false);
        let got = writer.await.expect("the writer");
        got.into_iter().map(|(t, e)| (t - start, e.bytes)).collect()
    }

    /// A writer that records when each entry leaves the outbox (paused time).
    fn record(o: Arc<Outbox>) -> tokio::task::JoinHandle<Vec<(Instant, Entry)>> {
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut batch = Vec::new();
            while o.next_batch(&mut batch).await.is_none() {
                let now = Instant::now();
                out.extend(batch.drain(..).map(|e| (now, e)));
            }
            out
        })
    }

    proptest! {
        /// Throttling and batching against a model: for any timing of
        /// publications of three keys (one channel, at most 10 per second
        /// per key), each key's deliveries are at least the interval apart
        /// (less the batch delay),
        /// the channel's offsets only grow, each key ends with its newest
        /// value, and no value waits longer than the interval plus the
        /// batch delay after it was published.
        #[test]
        fn throttled_values_keep_the_rate_order_and_trailing_edge(
            hold in prop_oneof![Just(0u64), Just(10u64)],
            ops in proptest::collection::vec((0u64..150, 0usize..3), 1..60),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime");
            let (sent, got) = rt.block_on(async {
                let o = Arc::new(Outbox::new(1 << 20));
                let writer = record(o.clone());
                let mut sent = Vec::new();
                for (i, (gap, k)) in ops.iter().enumerate() {
                    tokio::time::sleep(Duration::from_millis(*gap)).await;
                    let offset = i as u64 + 1;
                    sent.push((Instant::now(), *k, offset));
                    o.push_entry(timed("t", offset, ["a", "b", "c"][*k], 100, hold));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                o.close(Disconnect::new(DisconnectCode::SHUTDOWN, None), false);
                (sent, writer.await.expect("the writer"))
            });
            let interval = Duration::from_millis(100);
            let got: Vec<(Instant, usize, u64)> = got
                .into_iter()
                .map(|(t, e)| {
                    let p = e.publication.expect("publications only");
                    let k = ["a", "b", "c"].iter().position(|k| Some(*k) == p.key.as_deref()).expect("a key");
                    (t, k, p.offset.expect("an offset"))
                })
                .collect();
            for w in got.windows(2) {
                prop_assert!(w[0].2 < w[1].2, "offsets only grow: {:?}", got);
            }
            for k in 0..3 {
                let mine: Vec<_> = got.iter().filter(|g| g.1 == k).collect();
                // Slots are counted when values are queued; a batch is
                // written when its first entry is due, so a write may come
                // up to the batch delay early.
                for w in mine.windows(2) {
                    prop_assert!(w[1].0 - w[0].0 + Duration::from_millis(hold) >= interval, "key {} twice within the interval: {:?}", k, mine);
                }
                let newest = sent.iter().rev().find(|s| s.1 == k).map(|s| s.2);
                prop_assert_eq!(mine.last().map(|g| g.2), newest, "key {} ends with its newest", k);
            }
            for (t, _, offset) in &got {
                let (at, _, _) = sent.iter().find(|s| s.2 == *offset).expect("sent");
                prop_assert!(*t - *at <= interval + Duration::from_millis(hold), "offset {} waited {:?}", offset, *t - *at);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_delivers_the_trailing_value_once_per_interval() {
        let o = Arc::new(Outbox::new(1 << 20));
        let writer = record(o.clone());
        let start = Instant::now();
        for offset in 1..=5 {
            o.push_entry(timed("t", offset, "k", 100, 0));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = recorded(&o, writer, start).await;
        assert_eq!(
            got,
            [
                (Duration::ZERO, Bytes::from("k1")),
                (Duration::from_millis(100), Bytes::from("k5"))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batch_delay_holds_publications_but_never_replies() {
        let o = Arc::new(Outbox::new(1 << 20));
        let writer = record(o.clone());
        let start = Instant::now();
        o.push_entry(timed("t", 1, "a", 0, 10));
        tokio::time::sleep(Duration::from_millis(4)).await;
        o.push_entry(timed("t", 2, "b", 0, 10));
        tokio::time::sleep(Duration::from_millis(20)).await;
        o.push_entry(timed("t", 3, "c", 0, 10));
        tokio::time::sleep(Duration::from_millis(2)).await;
        o.push(bytes("reply"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = recorded(&o, writer, start).await;
        let ms = Duration::from_millis;
        assert_eq!(
            got,
            [
                // Written together when the first has waited its 10 ms.
                (ms(10), Bytes::from("a1")),
                (ms(10), Bytes::from("b2")),
                // A reply takes the held one with it at once.
                (ms(26), Bytes::from("reply")),
                (ms(26), Bytes::from("c3")),
            ]
        );
    }
}
