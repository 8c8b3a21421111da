//! The memory engine's chat state: each channel's members with their
//! cursors, each user's conversations, and the device-key directory. Plain
//! data behind the engine's lock; the engine writes every change through
//! to the on-disk store when it has one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tidings_protocol::Cursors;
use tidings_protocol::chat::DeviceKey;

use super::Membership;

/// One member of a channel.
#[derive(Debug, Clone)]
struct Member {
    since_ms: u64,
    cursors: Cursors,
    /// The channel epoch of the cursors' offsets.
    epoch: String,
}

/// Members, conversations and keys.
#[derive(Debug, Default)]
pub struct ChatState {
    /// Channel → user → member.
    channels: HashMap<String, BTreeMap<String, Member>>,
    /// User → the channels they are a member of.
    users: HashMap<String, BTreeSet<String>>,
    /// User → device → public key.
    keys: HashMap<String, BTreeMap<String, String>>,
}

impl ChatState {
    /// Adds `user` to `channel` unless a member, with `cursors` of
    /// `epoch`; true when added.
    pub fn add(
        &mut self,
        channel: &str,
        user: &str,
        since_ms: u64,
        (cursors, epoch): (Cursors, &str),
    ) -> bool {
        let members = self.channels.entry(channel.to_string()).or_default();
        if members.contains_key(user) {
            return false;
        }
        let epoch = epoch.to_string();
        members.insert(
            user.to_string(),
            Member {
                since_ms,
                cursors,
                epoch,
            },
        );
        self.users
            .entry(user.to_string())
            .or_default()
            .insert(channel.to_string());
        true
    }

    /// Removes `user` from `channel`; true when they were a member.
    pub fn remove(&mut self, channel: &str, user: &str) -> bool {
        let Some(members) = self.channels.get_mut(channel) else {
            return false;
        };
        if members.remove(user).is_none() {
            return false;
        }
        if members.is_empty() {
            self.channels.remove(channel);
        }
        if let Some(set) = self.users.get_mut(user) {
            set.remove(channel);
            if set.is_empty() {
                self.users.remove(user);
            }
        }
        true
    }

    /// Members after `cursor`, at most `limit`.
    pub fn page(&self, channel: &str, cursor: Option<&str>, limit: usize) -> Vec<String> {
        let Some(members) = self.channels.get(channel) else {
            return Vec::new();
        };
        let after = cursor.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        members
            .range::<str, _>((after, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// `user`'s membership of `channel`.
    pub fn membership(&self, channel: &str, user: &str) -> Option<Membership> {
        let m = self.channels.get(channel)?.get(user)?;
        Some(Membership {
            channel: channel.to_string(),
            since_ms: m.since_ms,
            cursors: m.cursors,
            epoch: m.epoch.clone(),
        })
    }

    /// Every member's cursors as offsets of `epoch`.
    pub fn cursors(&self, channel: &str, epoch: &str) -> Vec<(String, Cursors)> {
        let in_epoch = |m: &Member| {
            if m.epoch == epoch {
                m.cursors
            } else {
                Cursors::default()
            }
        };
        self.channels.get(channel).map_or_else(Vec::new, |m| {
            m.iter().map(|(u, m)| (u.clone(), in_epoch(m))).collect()
        })
    }

    /// How many members `channel` has.
    pub fn count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, BTreeMap::len)
    }

    /// Raises a member's cursors, offsets of `epoch` (those of another
    /// epoch start from none): the cursors before and after. None when
    /// not a member.
    pub fn advance(
        &mut self,
        channel: &str,
        user: &str,
        epoch: &str,
        to: Cursors,
    ) -> Option<(Cursors, Cursors)> {
        let m = self.channels.get_mut(channel)?.get_mut(user)?;
        if m.epoch != epoch {
            m.epoch = epoch.to_string();
            m.cursors = Cursors::default();
        }
        let before = m.cursors;
        m.cursors = before.advanced(to);
        Some((before, m.cursors))
    }

    /// Every membership of `user`.
    pub fn conversations(&self, user: &str) -> Vec<Membership> {
        let Some(channels) = self.users.get(user) else {
            return Vec::new();
        };
        channels
            .iter()
            .filter_map(|c| self.membership(c, user))
            .collect()
    }

    /// Registers a device key; false when the device is new and `user`
    /// has `max` devices.
    pub fn put_key(&mut self, user: &str, device: &str, key: &str, max: usize) -> bool {
        let devices = self.keys.entry(user.to_string()).or_default();
        if !devices.contains_key(device) && devices.len() >= max {
            return false;
        }
        devices.insert(device.to_string(), key.to_string());
        true
    }

    /// The keys of each of `users` that has any.
    pub fn keys(&self, users: &[String]) -> BTreeMap<String, Vec<DeviceKey>> {
        users
            .iter()
            .filter_map(|u| {
                let devices = self.keys.get(u)?;
                let keys = devices
                    .iter()
                    .map(|(device, key)| DeviceKey {
                        device: device.clone(),
                        key: key.clone(),
                    })
                    .collect();
                Some((u.clone(), keys))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_conversations_and_pages_agree() {
        let mut s = ChatState::default();
        let none = (Cursors::default(), "");
        for u in ["c", "a", "b"] {
            assert!(s.add("dm:1", u, 5, none));
        }
        assert!(!s.add("dm:1", "a", 9, none));
        assert!(s.add("dm:2", "a", 7, none));
        assert_eq!(s.page("dm:1", None, 2), ["a", "b"]);
        assert_eq!(s.page("dm:1", Some("b"), 2), ["c"]);
        assert_eq!(s.conversations("a").len(), 2);
        assert!(s.remove("dm:2", "a"));
        assert!(!s.remove("dm:2", "a"));
        assert_eq!(s.count("dm:2"), 0);
        assert_eq!(s.conversations("a").len(), 1);
        assert_eq!(s.membership("dm:1", "a").unwrap().since_ms, 5);
    }

    #[test]
    fn cursors_of_another_epoch_count_as_none() {
        let mut s = ChatState::default();
        s.add("dm:1", "a", 0, (Cursors::default(), ""));
        let c = |d, r| Cursors {
            delivered: d,
            read: r,
        };
        assert_eq!(
            s.advance("dm:1", "a", "e1", c(9, 9)),
            Some((c(0, 0), c(9, 9)))
        );
        assert_eq!(s.cursors("dm:1", "e1"), [("a".to_string(), c(9, 9))]);
        // The channel started over: its offsets begin again.
        assert_eq!(s.cursors("dm:1", "e2"), [("a".to_string(), c(0, 0))]);
        assert_eq!(
            s.advance("dm:1", "a", "e2", c(2, 0)),
            Some((c(0, 0), c(2, 0)))
        );
        assert_eq!(s.membership("dm:1", "a").unwrap().epoch, "e2");
    }

    #[test]
    fn keys_are_bounded_per_user_and_replaced_per_device() {
        let mut s = ChatState::default();
        assert!(s.put_key("a", "d1", "k1", 2));
        assert!(s.put_key("a", "d2", "k2", 2));
        assert!(!s.put_key("a", "d3", "k3", 2));
        assert!(s.put_key("a", "d1", "k1b", 2));
        let keys = s.keys(&["a".into(), "nobody".into()]);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["a"][0].key, "k1b");
    }
}
