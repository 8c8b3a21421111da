//! Liveness leases of streams that cannot answer pings: an SSE stream's
//! socket stays open while its reader is frozen (a backgrounded tab, a
//! stopped process), so its presence follows heartbeats the client sends
//! over HTTP instead (`POST /v1/client/heartbeat`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

/// The open leases of this node, by id.
#[derive(Default)]
pub struct Leases {
    open: Mutex<HashMap<String, Arc<Mutex<Instant>>>>,
}

/// One stream's lease; forgotten on drop.
pub struct Lease {
    leases: Arc<Leases>,
    id: String,
    renewed: Arc<Mutex<Instant>>,
}

impl Leases {
    /// Opens a lease, renewed now, under a new unguessable id.
    pub fn open(self: &Arc<Self>) -> Lease {
        let id = format!("{:032x}", rand::rng().random::<u128>());
        let renewed = Arc::new(Mutex::new(Instant::now()));
        self.open.lock().insert(id.clone(), renewed.clone());
        Lease {
            leases: self.clone(),
            id,
            renewed,
        }
    }

    /// Renews the lease `id`; false when no such lease is open.
    pub fn beat(&self, id: &str) -> bool {
        match self.open.lock().get(id) {
            Some(renewed) => {
                *renewed.lock() = Instant::now();
                true
            }
            None => false,
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
        let leases = Arc::new(Leases::default());
        let lease = leases.open();
        assert!(lease.alive_within(Duration::from_secs(1)));
        assert!(leases.beat(lease.id()));
        assert!(!leases.beat("not-a-lease"));
        let id = lease.id().to_string();
        drop(lease);
        assert!(!leases.beat(&id), "a dropped lease is forgotten");
    }
}
