//! Per-message delivery state from a members channel's `receipt` pushes:
//! ✓ sent, ✓✓ delivered, read — or, in groups, how many members have it.

use std::collections::BTreeMap;

use tidings_protocol::{Cursors, Receipt};

/// Where one of my messages is, in a conversation with one other member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// The server has it (the publish was acknowledged).
    Sent,
    /// The other member's devices have it.
    Delivered,
    /// The other member saw it.
    Read,
}

/// Folds a channel's receipts (feed it every [`crate::SubEvent::Receipt`]).
#[derive(Debug, Default, Clone)]
pub struct Receipts {
    /// Each member's cursors, as the newest receipt said.
    members: BTreeMap<String, Cursors>,
    /// The newest summary of a large group: member count and counts.
    summary: Option<(u64, Cursors, Vec<[u64; 3]>)>,
}

impl Receipts {
    /// Takes one receipt (cursors only move forward: an older one changes nothing).
    pub fn apply(&mut self, r: &Receipt) {
        let to = Cursors {
            delivered: r.delivered,
            read: r.read,
        };
        match &r.user {
            Some(user) => {
                let c = self.members.entry(user.clone()).or_default();
                *c = c.advanced(to);
            }
            None => {
                self.summary = Some((
                    r.members.unwrap_or(0),
                    to,
                    r.counts.clone().unwrap_or_default(),
                ));
            }
        }
    }

    /// The state of my message at `offset` in a conversation of two: by
    /// the other member's cursors (`me` is my user id).
    pub fn state(&self, offset: u64, me: &str) -> DeliveryState {
        let other = self
            .members
            .iter()
            .filter(|(u, _)| *u != me)
            .map(|(_, c)| *c)
            .fold(Cursors::default(), Cursors::advanced);
        if other.read >= offset {
            DeliveryState::Read
        } else if other.delivered >= offset {
            DeliveryState::Delivered
        } else {
            DeliveryState::Sent
        }
    }

    /// In a group: how many members other than the sender have the
    /// message at `offset` delivered and read. From per-member receipts,
    /// or from a large group's summary (which counts the sender, so one is
    /// taken off for `sender`'s own message).
    pub fn counts(&self, offset: u64, sender: &str) -> (u64, u64) {
        if let Some((n, all, counts)) = &self.summary {
            // Those with a newer offset have this one too: the first
            // counted offset at or above it is a lower bound.
            let (d, r) = counts
                .iter()
                .find(|c| c[0] >= offset)
                .map_or((0, 0), |c| (c[1], c[2]));
            let every = |upto: u64, count: u64| if offset <= upto { *n } else { count };
            return (
                every(all.delivered, d).saturating_sub(1),
                every(all.read, r).saturating_sub(1),
            );
        }
        let others = self.members.iter().filter(|(u, _)| *u != sender);
        others.fold((0, 0), |(d, r), (_, c)| {
            (
                d + u64::from(c.delivered >= offset),
                r + u64::from(c.read >= offset),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(user: &str, delivered: u64, read: u64) -> Receipt {
        Receipt {
            channel: "dm:ab".into(),
            user: Some(user.into()),
            delivered,
            read,
            members: None,
            counts: None,
        }
    }

    #[test]
    fn one_to_one_ticks_follow_the_other_members_cursors() {
        let mut r = Receipts::default();
        r.apply(&receipt("alice", 9, 9));
        assert_eq!(r.state(3, "alice"), DeliveryState::Sent);
        r.apply(&receipt("bob", 3, 0));
        assert_eq!(r.state(3, "alice"), DeliveryState::Delivered);
        assert_eq!(r.state(4, "alice"), DeliveryState::Sent);
        r.apply(&receipt("bob", 4, 3));
        r.apply(&receipt("bob", 1, 1)); // late, older: ignored
        assert_eq!(r.state(3, "alice"), DeliveryState::Read);
        assert_eq!(r.state(4, "alice"), DeliveryState::Delivered);
    }

    #[test]
    fn group_counts_leave_out_the_sender() {
        let mut r = Receipts::default();
        r.apply(&receipt("alice", 5, 5));
        r.apply(&receipt("bob", 5, 2));
        r.apply(&receipt("carol", 4, 4));
        assert_eq!(r.counts(5, "alice"), (1, 0));
        assert_eq!(r.counts(4, "alice"), (2, 1));
        let summary = Receipt {
            channel: "g".into(),
            user: None,
            delivered: 3,
            read: 2,
            members: Some(3),
            counts: Some(vec![[3, 3, 2], [4, 2, 1]]),
        };
        r.apply(&summary);
        assert_eq!(r.counts(4, "alice"), (1, 0));
        assert_eq!(r.counts(2, "alice"), (2, 2));
    }
}
