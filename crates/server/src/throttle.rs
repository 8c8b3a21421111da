//! Throttling (`max_rate`) for one connection: at most one delivery per
//! interval per channel and `key`; a newer value replaces the held one (the
//! latest wins) and the last value always leaves once its slot comes (the
//! trailing edge).
//!
//! A channel's held values leave in offset order: a value whose key is free
//! still waits behind an older held value of its channel, so a subscriber
//! never sees a channel's offsets go back (clients drop those as already
//! delivered). The cost is that one key's wait can delay another key of
//! the same channel by at most one interval.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use crate::outbox::Entry;

/// The throttling state of one connection.
#[derive(Default)]
pub struct Throttle {
    channels: HashMap<Arc<str>, Channel>,
    /// Bytes of the held values.
    bytes: usize,
}

#[derive(Default)]
struct Channel {
    /// Values waiting for their slot, oldest first (one per key).
    held: VecDeque<Entry>,
    /// When each key may next be delivered.
    next: HashMap<Option<Arc<str>>, Instant>,
    /// Past this many keys, slots that have come are forgotten.
    sweep_at: usize,
}

fn key_of(e: &Entry) -> Option<Arc<str>> {
    e.publication.as_ref().and_then(|p| p.key.clone())
}

impl Throttle {
    /// Bytes of the held values.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes out the held value that `e` (a throttled publication) would
    /// replace; whether there was one.
    pub fn take_replaced(&mut self, e: &Entry) -> bool {
        let Some(channel) = e.channel.as_ref().and_then(|c| self.channels.get_mut(c)) else {
            return false;
        };
        let key = key_of(e);
        let old = channel
            .held
            .iter()
            .position(|h| key_of(h) == key)
            .and_then(|at| channel.held.remove(at));
        if let Some(old) = &old {
            self.bytes -= old.bytes.len();
        }
        old.is_some()
    }

    /// Holds `e` until its slot comes, then moves every value of its channel
    /// whose slot has come, in order, into `out`.
    pub fn hold(&mut self, e: Entry, now: Instant, out: &mut Vec<Entry>) {
        let Some(name) = e.channel.clone() else {
            out.push(e);
            return;
        };
        self.bytes += e.bytes.len();
        let channel = self.channels.entry(name).or_default();
        channel.held.push_back(e);
        if channel.next.len() > channel.sweep_at {
            channel.next.retain(|_, t| *t > now);
            channel.sweep_at = (channel.next.len() * 2).max(16);
        }
        self.bytes -= channel.release(now, out);
    }

    /// Moves every held value whose slot has come into `out`, in each
    /// channel's order.
    pub fn release(&mut self, now: Instant, out: &mut Vec<Entry>) {
        for channel in self.channels.values_mut() {
            self.bytes -= channel.release(now, out);
        }
        self.channels
            .retain(|_, c| !c.held.is_empty() || c.next.values().any(|t| *t > now));
    }

    /// When the next held value may leave.
    pub fn due(&self) -> Option<Instant> {
        self.channels
            .values()
            .filter_map(|c| c.held.front().map(|e| c.slot(e)))
            .flatten()
            .min()
    }

    /// Drops everything held.
    pub fn clear(&mut self) {
        self.channels.clear();
        self.bytes = 0;
    }
}

impl Channel {
    /// When `e`'s key may next be delivered (None: now).
    fn slot(&self, e: &Entry) -> Option<Instant> {
        self.next.get(&key_of(e)).copied()
    }

    /// Moves the values at the front whose slot has come into `out`;
    /// their bytes.
    fn release(&mut self, now: Instant, out: &mut Vec<Entry>) -> usize {
        let mut bytes = 0;
        while let Some(front) = self.held.front() {
            if self.slot(front).is_some_and(|t| t > now) {
                break;
            }
            let Some(e) = self.held.pop_front() else {
                break;
            };
            let interval = e
                .publication
                .as_ref()
                .and_then(|p| p.interval)
                .unwrap_or_default();
            self.next.insert(key_of(&e), now + interval);
            bytes += e.bytes.len();
            out.push(e);
        }
        bytes
    }
}
