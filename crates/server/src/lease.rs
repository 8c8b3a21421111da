//! Liveness leases of streams that cannot answer pings: an SSE stream's
//! socket stays open while its reader is frozen (a backgrounded tab, a
//! stopped process), so its presence follows heartbeats the client sends
//! over HTTP instead (`POST /v1/client/heartbeat`). A lease id starts with
//! its node's id, so a heartbeat that reached another node (no sticky
//! sessions) is passed on to the one that holds the stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

/// The open leases of this node, by id.
pub struct Leases {
    /// This node's id, the prefix of its lease ids.
    node: String,
    open: Mutex<HashMap<String, Arc<Mutex<Instant>>>>,
}

/// Where a heartbeat's lease is.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Here, and renewed.
    Renewed,
    /// On another node: pass it on.
    Elsewhere,
    /// Nowhere: the stream ended (or the id is made up).
    Unknown,
}

/// One stream's lease; forgotten on drop.
pub struct Lease {
    leases: Arc<Leases>,
    id: String,
    renewed: Arc<Mutex<Instant>>,
}

impl Leases {
    /// The leases of the node `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            open: Mutex::default(),
        }
    }

    /// Opens a lease, renewed now, under a new unguessable id.
    pub fn open(self: &Arc<Self>) -> Lease {
        let id = format!("{}.{:032x}", self.node, rand::rng().random::<u128>());
        let renewed = Arc::new(Mutex::new(Instant::now()));
        self.open.lock().insert(id.clone(), renewed.clone());
        Lease {
            leases: self.clone(),
            id,
            renewed,
        }
    }

    /// Renews the lease `id` if it is here.
    pub fn beat(&self, id: &str) -> Beat {
        if let Some(renewed) = self.open.lock().get(id) {
            *renewed.lock() = Instant::now();
            return Beat::Renewed;
        }
        match id.split_once('.') {
            Some((node, _)) if node != self.node => Beat::Elsewhere,
            _ => Beat::Unknown,
        }
    }
}

impl Lease {
    /// The id the client renews it by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether a heartbeat came within `ttl`.
    pub fn alive_within(&self, ttl: Duration) -> bool {
        self.renewed.lock().elapsed() <= ttl
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.open.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_renewed_by_its_id_until_dropped() {
        let leases = Arc::new(Leases::new("node1"));
        let lease = leases.open();
        assert!(lease.id().starts_with("node1."));
        assert!(lease.alive_within(Duration::from_secs(1)));
        assert_eq!(leases.beat(lease.id()), Beat::Renewed);
        assert_eq!(leases.beat("not-a-lease"), Beat::Unknown);
        assert_eq!(leases.beat("node2.abc"), Beat::Elsewhere);
        let id = lease.id().to_string();
        drop(lease);
        assert_eq!(
            leases.beat(&id),
            Beat::Unknown,
            "a dropped lease is forgotten"
        );
    }
}
