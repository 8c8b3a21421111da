//! Names of the keys and pub/sub channels the Redis engine uses, and where
//! a channel lives when channels are sharded over several Redis servers.

/// Key names under one prefix. A channel's keys share the hash tag
/// `{channel}` (channel names cannot hold braces).
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    fn of(&self, channel: &str, what: &str) -> String {
        format!("{}:{{{channel}}}:{what}", self.prefix)
    }

    /// The channel's history (a stream whose ids are `offset-0`).
    pub(super) fn stream(&self, channel: &str) -> String {
        self.of(channel, "s")
    }

    /// The channel's metadata: `e` epoch, `t` top offset.
    pub(super) fn meta(&self, channel: &str) -> String {
        self.of(channel, "m")
    }

    /// An idempotency key of the channel.
    pub(super) fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:{key}", self.of(channel, "k"))
    }

    /// Presence: leases, names, infos, users (see the `JOIN` script).
    pub(super) fn presence(&self, channel: &str) -> [String; 4] {
        ["pz", "pl", "pi", "pu"].map(|w| self.of(channel, w))
    }

    /// The nodes with subscribers of the channel (a set of node ids).
    pub(super) fn occupancy(&self, channel: &str) -> String {
        self.of(channel, "o")
    }

    /// The pub/sub channel carrying the channel's publications and presence.
    pub(super) fn pubsub(&self, channel: &str) -> String {
        format!("{}:c:{channel}", self.prefix)
    }

    /// The channel of a pub/sub channel name, if it is one of ours.
    pub(super) fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub.strip_prefix(&self.prefix)?.strip_prefix(":c:")
    }

    /// The pub/sub channel of instructions to every node.
    pub(super) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// A key of the whole cluster of nodes; all share the hash tag
    /// `{nodes}` (one slot, so that one command may name several).
    fn global(&self, what: &str) -> String {
        format!("{}:{{nodes}}:{what}", self.prefix)
    }

    /// Live nodes: a sorted set of node ids by expiry (ms).
    pub(super) fn nodes(&self) -> String {
        self.global("nodes")
    }

    /// One node's announcement.
    pub(super) fn node(&self, id: &str) -> String {
        self.global(&format!("node:{id}"))
    }

    /// Where the nodes answer the survey `id` (a list).
    pub(super) fn survey(&self, id: &str) -> String {
        self.global(&format!("survey:{id}"))
    }

    /// A user's connections: a hash node id → count.
    pub(super) fn user(&self, user: &str) -> String {
        self.global(&format!("user:{user}"))
    }

    /// The channel's members: a hash user → `since:delivered:read`.
    pub(super) fn members(&self, channel: &str) -> String {
        self.of(channel, "mb")
    }

    /// One user's key of `what` (their own hash tag).
    fn of_user(&self, user: &str, what: &str) -> String {
        format!("{}:{{u:{user}}}:{what}", self.prefix)
    }

    /// The channels a user is a member of (a set).
    pub(super) fn conversations(&self, user: &str) -> String {
        self.of_user(user, "cv")
    }

    /// A user's device keys: a hash device → key.
    pub(super) fn device_keys(&self, user: &str) -> String {
        self.of_user(user, "dk")
    }

    /// When users were last seen: a hash user → ms.
    pub(super) fn last_seen(&self) -> String {
        self.global("seen")
    }
}

/// The shard of `channel` among `shards`: a stable hash (the same on every
/// node) and jump consistent hashing, so adding a server moves only the
/// channels it takes.
pub(super) fn shard_of(channel: &str, shards: usize) -> usize {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut key = channel.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // Jump consistent hash (Lamping and Veach, 2014).
    let (mut b, mut j) = (-1_i64, 0_i64);
    while j < shards as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1_i64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_move_little() {
        let names: Vec<String> = (0..10_000).map(|i| format!("room:{i}")).collect();
        let three: Vec<usize> = names.iter().map(|n| shard_of(n, 3)).collect();
        let four: Vec<usize> = names.iter().map(|n| shard_of(n, 4)).collect();
        for s in 0..3 {
            let n = three.iter().filter(|&&x| x == s).count();
            assert!((2_800..3_900).contains(&n), "shard {s} has {n} of 10000");
        }
        // Adding a fourth server moves only what the fourth takes (~1/4).
        let moved = three.iter().zip(&four).filter(|(a, b)| a != b).count();
        assert!(four.iter().zip(&three).all(|(f, t)| f == t || *f == 3));
        assert!((1_800..3_200).contains(&moved), "moved {moved}");
        assert_eq!(shard_of("room:1", 1), 0);
    }

    #[test]
    fn pubsub_names_round_trip() {
        let k = Keys::new("t");
        assert_eq!(k.channel_of(&k.pubsub("chat:a")), Some("chat:a"));
        assert_eq!(k.channel_of("t:control"), None);
        assert_eq!(k.stream("x"), "t:{x}:s");
    }
}
