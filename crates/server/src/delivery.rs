//! Per-channel delivery: what a namespace's policy makes of a publication
//! between the engine and each subscriber's outbox. The hub asks a
//! channel's [`ChannelDelivery`] for the one [`Entry`] that every local
//! subscriber gets (encoded once); the outbox then applies its mode.

use std::sync::Arc;
use std::time::Duration;

use tidings_protocol::{Priority, PubStyle, Publication, encode_pub, encode_pub_as};

use crate::config::{Delivery, NamespaceOptions, SlowConsumer};
use crate::delta::DeltaForms;
use crate::outbox::{Entry, Lane, Mode, PubMeta};

/// How one channel's publications are delivered (from its namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelDelivery {
    /// What an outbox may do with them.
    pub mode: Mode,
    /// The lane of publications without a priority.
    pub lane: Lane,
    /// Whether pushes carry `time`.
    pub push_time: bool,
    /// Throttled (`max_rate`): the least time between two deliveries of a
    /// channel and key to one subscriber.
    pub interval: Option<Duration>,
    /// How long pushes may wait to be written with others (`batch_delay`).
    pub hold: Duration,
}

/// The lane of a priority.
pub fn lane_of(priority: Priority) -> Lane {
    match priority {
        Priority::Critical => Lane::Critical,
        Priority::High => Lane::High,
        Priority::Normal => Lane::Normal,
        Priority::Low => Lane::Low,
    }
}

impl ChannelDelivery {
    /// The delivery of channels in `ns`.
    pub fn of(ns: &NamespaceOptions) -> Self {
        let mode = match (ns.delivery, ns.slow_consumer) {
            (Delivery::Latest, _) => Mode::Latest,
            (Delivery::Stream, SlowConsumer::Disconnect) => Mode::Stream,
            (Delivery::Stream, SlowConsumer::Conflate) => Mode::Conflate,
            (Delivery::Stream, SlowConsumer::Skip) => Mode::Skip,
        };
        Self {
            mode,
            lane: lane_of(ns.default_priority),
            push_time: ns.push_time,
            interval: (ns.max_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / ns.max_rate)),
            hold: ns.batch_delay,
        }
    }

    /// Whether a subscriber may get only some values (the newest per
    /// channel and key) without a notice: pushes then say `latest`.
    pub fn skips_values(&self) -> bool {
        matches!(self.mode, Mode::Latest | Mode::Conflate) || self.interval.is_some()
    }

    /// What a subscriber that is behind gets of `missed` (in offset
    /// order): all of it, or where values may be skipped, the newest per
    /// key, still in order.
    pub fn catch_up(&self, missed: Vec<Publication>) -> Vec<Publication> {
        if !self.skips_values() {
            return missed;
        }
        let mut seen = std::collections::HashSet::new();
        let mut newest: Vec<Publication> = missed
            .into_iter()
            .rev()
            .filter(|p| seen.insert(p.key.clone()))
            .collect();
        newest.reverse();
        newest
    }

    /// The lane of `p`: its priority, else the namespace's default.
    pub fn lane_for(&self, p: &Publication) -> Lane {
        p.priority.map_or(self.lane, lane_of)
    }

    /// Whether subscriptions may get deltas (`delta: "fossil"`): only
    /// where every publication reaches a subscriber or the connection
    /// ends, so a delta's base is always the one before.
    pub fn allows_delta(&self) -> bool {
        self.mode == Mode::Stream && self.interval.is_none()
    }

    /// How its `pub` pushes are written.
    pub fn style(&self) -> PubStyle {
        PubStyle {
            time: self.push_time,
            latest: self.skips_values(),
        }
    }

    /// The entry every local subscriber of `channel` gets for `p`.
    pub fn entry(&self, channel: &Arc<str>, epoch: Option<&str>, p: &Publication) -> Entry {
        self.entry_with(channel, epoch, p, None)
    }

    /// [`ChannelDelivery::entry`], with the forms delta subscribers get.
    pub fn entry_with(
        &self,
        channel: &Arc<str>,
        epoch: Option<&str>,
        p: &Publication,
        delta: Option<DeltaForms>,
    ) -> Entry {
        let bytes = encode_pub(channel, epoch, p, self.style());
        self.publication(bytes, channel, epoch, p, delta)
    }

    /// The entry of `p` whose `data` is already the payload's text (a
    /// delta subscription's reply publication), marked `"delta": false`.
    pub fn text_entry(&self, channel: &Arc<str>, epoch: Option<&str>, p: &Publication) -> Entry {
        let bytes = encode_pub_as(channel, epoch, p, self.style(), &p.data, Some(false));
        self.publication(bytes, channel, epoch, p, None)
    }

    /// The publication entry of `bytes`, encoding `p`.
    fn publication(
        &self,
        bytes: bytes::Bytes,
        channel: &Arc<str>,
        epoch: Option<&str>,
        p: &Publication,
        delta: Option<DeltaForms>,
    ) -> Entry {
        let meta = PubMeta {
            channel: channel.clone(),
            offset: p.offset,
            epoch: epoch.map(Arc::from),
            key: p.key.as_deref().map(Arc::from),
            mode: self.mode,
            interval: self.interval,
            hold: self.hold,
            translated: Default::default(),
            published_ms: p.time,
            delta,
            msgpack: Default::default(),
        };
        Entry::publication(bytes, self.lane_for(p), Arc::new(meta))
    }
}
