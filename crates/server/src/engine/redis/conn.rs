//! Where Redis is, and one handle for commands: one server, a Redis
//! Cluster, or the master that Sentinel names (followed across failovers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// The servers a shard may connect to.
pub(super) enum Endpoints {
    /// Fixed addresses (one server, or a Cluster's seeds: any will do).
    Fixed(Vec<redis::Client>),
    /// The current master, as the Sentinels say.
    Sentinel(Box<Watched>),
}

/// A master watched by Sentinels.
pub(super) struct Watched {
    /// The Sentinels.
    pub sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
    /// The monitored master's name.
    pub master: String,
    /// How to log in to the master (its credentials, not the Sentinels').
    pub node: redis::sentinel::SentinelNodeConnectionInfo,
}

impl Endpoints {
    /// A client for connection attempt `attempt` (fixed addresses in turn).
    pub(super) async fn client(&self, attempt: usize) -> RedisResult<redis::Client> {
        match self {
            Endpoints::Fixed(clients) => Ok(clients[attempt % clients.len()].clone()),
            Endpoints::Sentinel(w) => {
                w.sentinel
                    .lock()
                    .await
                    .async_master_for(&w.master, Some(&w.node))
                    .await
            }
        }
    }
}

/// A multiplexed command connection. Cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server (reconnecting by itself).
    Single(ConnectionManager),
    /// A Redis Cluster (routing each command by its keys' slot, following
    /// MOVED and failovers).
    Cluster(ClusterConnection),
    /// Sentinel's master: a failed command makes it ask again.
    Sentinel(Arc<Followed>),
}

/// The connection to the master Sentinel names, replaced after a failover.
pub(super) struct Followed {
    endpoints: Arc<Endpoints>,
    config: ConnectionManagerConfig,
    current: Mutex<(String, ConnectionManager)>,
    /// One re-resolution at a time, at most every [`RESOLVE_EVERY`].
    resolving: tokio::sync::Mutex<Instant>,
}

const RESOLVE_EVERY: Duration = Duration::from_millis(200);

impl Followed {
    pub(super) async fn connect(
        endpoints: Arc<Endpoints>,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Followed> {
        let client = endpoints.client(0).await?;
        let address = client.get_connection_info().addr().to_string();
        let manager = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        Ok(Followed {
            endpoints,
            config,
            current: Mutex::new((address, manager)),
            resolving: tokio::sync::Mutex::new(Instant::now()),
        })
    }

    fn manager(&self) -> ConnectionManager {
        self.current.lock().1.clone()
    }

    /// After a failure that may mean a failover: ask Sentinel where the
    /// master is and move there if it moved.
    async fn follow(&self, e: &RedisError) {
        if !super::transient(e) {
            return;
        }
        let Ok(mut last) = self.resolving.try_lock() else {
            return; // another command is asking already
        };
        if last.elapsed() < RESOLVE_EVERY {
            return;
        }
        *last = Instant::now();
        let Ok(client) = self.endpoints.client(0).await else {
            return;
        };
        let address = client.get_connection_info().addr().to_string();
        if address == self.current.lock().0 {
            return;
        }
        match client
            .get_connection_manager_with_config(self.config.clone())
            .await
        {
            Ok(manager) => {
                tracing::info!(%address, "redis master moved (Sentinel); following");
                *self.current.lock() = (address, manager);
            }
            Err(e) => tracing::warn!(%address, error = %e, "connecting to the new master failed"),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(f) => Box::pin(async move {
                let answer = f.manager().req_packed_command(cmd).await;
                if let Err(e) = &answer {
                    f.follow(e).await;
                }
                answer
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(f) => Box::pin(async move {
                let answer = f
                    .manager()
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                if let Err(e) = &answer {
                    f.follow(e).await;
                }
                answer
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(f) => f.manager().get_db(),
        }
    }
}
