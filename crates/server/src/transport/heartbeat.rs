//! What the WebSocket transports (Tidings' and Pusher's) share around their
//! reader loops: one set of timers (pings, the pong deadline, presence
//! renewal) waking the task once, and the writer's grace at the end.

use std::sync::Arc;
use std::time::Duration;

use tidings_protocol::{Disconnect, DisconnectCode};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::node::Node;
use crate::outbox::Outbox;

/// How long a closing connection's writer may take to deliver what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A connection's timers. One wake-up for all: each pending `Sleep` is part
/// of every idle connection's task.
pub(super) struct Heartbeat {
    ping_every: Duration,
    pong_timeout: Duration,
    renew_every: Duration,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    next_renew: Instant,
}

impl Heartbeat {
    /// The timers of a connection opened now.
    pub(super) fn new(node: &Node) -> Self {
        let now = Instant::now();
        let ping_every = node.config.client.ping_interval;
        let renew_every = node.config.presence_ttl / 3;
        Self {
            ping_every,
            pong_timeout: node.config.client.pong_timeout,
            renew_every,
            next_ping: now + ping_every,
            pong_deadline: None,
            next_renew: now + renew_every,
        }
    }

    /// When the loop must wake next (`also`: the transport's own deadline).
    pub(super) fn wake(&self, also: Option<Instant>) -> Instant {
        [self.pong_deadline, also, Some(self.next_renew)]
            .into_iter()
            .flatten()
            .fold(self.next_ping, Instant::min)
    }

    /// The peer was heard: no pong is awaited.
    pub(super) fn heard(&mut self) {
        self.pong_deadline = None;
    }

    /// The next ping waits a whole interval from now.
    pub(super) fn delay_ping(&mut self) {
        self.next_ping = Instant::now() + self.ping_every;
    }

    /// Whether the pong deadline has passed (then it is forgotten).
    pub(super) fn pong_missed(&mut self, now: Instant) -> bool {
        let missed = self.pong_deadline.is_some_and(|d| d <= now);
        if missed {
            self.pong_deadline = None;
        }
        missed
    }

    /// Whether a ping is due; when it is, the next one and (unless one is
    /// awaited already) the pong deadline are set.
    pub(super) fn ping_due(&mut self, now: Instant) -> bool {
        if self.next_ping > now {
            return false;
        }
        self.next_ping = now + self.ping_every;
        self.pong_deadline.get_or_insert(now + self.pong_timeout);
        true
    }

    /// Whether the presence leases are due for renewal.
    pub(super) fn renew_due(&self, now: Instant) -> bool {
        self.next_renew <= now
    }

    /// The leases were renewed: the next renewal is a third of the TTL away.
    pub(super) fn renewed(&mut self) {
        self.next_renew = Instant::now() + self.renew_every;
    }
}

/// Lets the writer send what is queued (a disconnect, replies) before the
/// socket goes, but not forever: a peer that stopped reading is dropped.
pub(super) async fn finish_writer(outbox: &Arc<Outbox>, writer: &mut JoinHandle<()>) {
    if writer.is_finished() {
        return;
    }
    outbox.close(Disconnect::new(DisconnectCode::FORCE_RECONNECT, None), true);
    if tokio::time::timeout(CLOSE_GRACE, &mut *writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}
