//! A subscription: the app's end of one channel's event stream.

use std::fmt;

use tokio::sync::mpsc::{UnboundedReceiver, WeakUnboundedSender};

use tidings_protocol::{ClientInfo, Publication, SinceArg};

use crate::task::ToTask;

/// Options of [`Client::subscribe`](crate::Client::subscribe).
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Resume after this position (the app's own last offset and epoch): the
    /// publications after it come first, or [`SubEvent::NotRecovered`] when the
    /// server cannot recover them.
    pub since: Option<SinceArg>,
    /// Start from the channel's latest snapshot (a [`SubEvent::Snapshot`],
    /// then the publications after it). The server also falls back to the
    /// snapshot by itself when `since` cannot be recovered.
    pub snapshot: bool,
    /// Receive payloads as Fossil deltas where the server can (fewer bytes
    /// for state that changes a little at a time); applied here, events
    /// carry whole payloads.
    pub delta: bool,
    /// In a members channel: tell the server, by itself, that publications
    /// arrived (its `delivered` cursor), at most one `cursor` command per
    /// [`crate::CURSOR_COALESCE`], carrying the newest offset.
    pub receipts: bool,
}

/// What happens in a subscribed channel, in order.
///
/// The current epoch of a channel is the one of the latest `Subscribed` or
/// `NotRecovered` event: a publication always belongs to it.
#[derive(Debug, Clone)]
pub enum SubEvent {
    /// The (re)subscribe succeeded; sent on every resubscribe, the first included.
    Subscribed {
        /// Only when the subscribe carried `since`: whether the server could
        /// resume from it (`false` is followed by [`SubEvent::NotRecovered`]).
        recovered: Option<bool>,
        /// Top offset of the channel at subscribe time (absent in ephemeral channels).
        offset: Option<u64>,
        /// Epoch of the channel's history (absent in ephemeral channels).
        epoch: Option<String>,
    },
    /// A publication. Offsets only grow and never repeat: recovered
    /// publications come first, then live ones; duplicates are dropped.
    Publication(Publication),
    /// The channel's whole state (a publication made with `snapshot`):
    /// replace what the app holds; publications after it apply to it. It
    /// also comes instead of [`SubEvent::NotRecovered`] when the position
    /// was lost but the channel has a snapshot.
    Snapshot(Publication),
    /// Publications were lost (the server could not recover them, an offset gap,
    /// or the epoch changed): the app must reload this channel's state. The
    /// publications that follow have offsets above `offset` in `epoch`.
    NotRecovered {
        /// The stream continues after this offset.
        offset: u64,
        /// The epoch it continues in.
        epoch: String,
    },
    /// A member's cursors moved, or a large group's summary (members
    /// channels): what the sender's messages show as delivered and read.
    Receipt(tidings_protocol::Receipt),
    /// A client joined the channel (namespaces with join/leave events).
    Join(ClientInfo),
    /// A client left the channel.
    Leave(ClientInfo),
    /// The subscription ended for good: the server ended it with a code of
    /// 3500 or more (or a non-temporary reply error when resubscribing, e.g.
    /// 103), or the connection ended and will not come back (the disconnect
    /// code, 0 when there was none). The stream ends after this event.
    Unsubscribed {
        /// The `unsub`, reply-error or disconnect code.
        code: u16,
        /// Why.
        reason: String,
    },
}

/// One channel's subscription. Dropping it unsubscribes.
pub struct Subscription {
    channel: String,
    serial: u64,
    events: UnboundedReceiver<SubEvent>,
    task: WeakUnboundedSender<ToTask>,
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        serial: u64,
        events: UnboundedReceiver<SubEvent>,
        task: WeakUnboundedSender<ToTask>,
    ) -> Self {
        Self {
            channel,
            serial,
            events,
            task,
        }
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next event; `None` once the subscription has ended (after
    /// [`SubEvent::Unsubscribed`], [`Client::unsubscribe`](crate::Client::unsubscribe)
    /// or [`Client::close`](crate::Client::close)).
    pub async fn next(&mut self) -> Option<SubEvent> {
        self.events.recv().await
    }

    /// The next event if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<SubEvent> {
        self.events.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.task.upgrade() {
            let _ = task.send(ToTask::SubDropped {
                channel: std::mem::take(&mut self.channel),
                serial: self.serial,
            });
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}
