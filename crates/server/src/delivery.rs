//! Per-channel delivery: what a namespace's policy makes of a publication
//! between the engine and each subscriber's outbox. The hub asks a
//! channel's [`ChannelDelivery`] for the one [`Entry`] that every local
//! subscriber gets (encoded once); the outbox then applies its mode.

use std::sync::Arc;

use tidings_protocol::{Priority, PubStyle, Publication, encode_pub};

use crate::config::{Delivery, NamespaceOptions, SlowConsumer};
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
        }
    }

    /// The entry every local subscriber of `channel` gets for `p`.
    pub fn entry(&self, channel: &Arc<str>, epoch: Option<&str>, p: &Publication) -> Entry {
        let style = PubStyle {
            time: self.push_time,
            // Values may be skipped without a notice: pushes say so.
            latest: matches!(self.mode, Mode::Latest | Mode::Conflate),
        };
        let bytes = encode_pub(channel, epoch, p, style);
        let meta = PubMeta {
            channel: channel.clone(),
            offset: p.offset,
            epoch: epoch.map(Arc::from),
            key: p.key.as_deref().map(Arc::from),
            mode: self.mode,
        };
        let lane = p.priority.map_or(self.lane, lane_of);
        Entry::publication(bytes, lane, Arc::new(meta))
    }
}
