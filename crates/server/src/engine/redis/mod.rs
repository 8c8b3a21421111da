//! The Redis engine: several nodes share publications, history, presence
//! and the cluster's membership through Redis.
//!
//! Publishing is one Lua script per publication (idempotency key, epoch,
//! next offset, append to the channel's stream, PUBLISH to the nodes), so it
//! is atomic per channel and one round trip; concurrent publishes pipeline
//! over one multiplexed connection. Each node listens to the channels it has
//! subscribers of ([`fanout`]). Several `urls` shard channels across
//! independent servers; the control channel, node list and last-seen times
//! live on the first. With `cluster`, the urls are seeds of one Redis
//! Cluster: commands follow their keys' slots (every key of a channel
//! shares the slot of `{channel}`), and pub/sub goes over one connection to
//! any of its nodes (classic pub/sub reaches every node of a Cluster).

mod chat;
mod conn;
mod fanout;
mod keys;
mod scripts;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManagerConfig;
use tidings_protocol::{ClientInfo, Publication, StreamPosition};

use self::conn::{Conn, Endpoints, Followed, Watched};
use self::fanout::Fanout;
use self::keys::{Keys, shard_of};
use super::{
    Broker, ChannelPolicy, Cluster, EngineError, History, HistoryPage, HistoryQuery, Lifecycle,
    NodeInfo, PolicyOf, Presence, PublicationSink, PublishOutcome, PublishRequest, UserControl,
    new_epoch, now_ms,
};
use crate::config::RedisConfig;

/// A stream entry as XRANGE answers it: id, then field/value pairs.
type Entry = (String, Vec<Vec<u8>>);

/// How long a node's announcement lives without renewal.
const NODE_TTL: Duration = Duration::from_secs(10);
/// The longest a survey of the nodes waits for their answers.
const SURVEY_WAIT: Duration = Duration::from_secs(1);

/// What travels on the control channel to every node.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum ControlMessage {
    /// For one user's connections, wherever they are.
    User(UserControl),
    /// Each node pushes its channels (as [`PublicationSink::channels`]
    /// pages them) as JSON onto the list `reply`.
    Survey {
        reply: String,
        prefix: String,
        cursor: Option<String>,
        limit: usize,
    },
}

/// One Redis server's part (or the whole Cluster's, or Sentinel's
/// master's): its connections and its pub/sub task.
struct Shard {
    /// Where to connect.
    endpoints: Arc<Endpoints>,
    conn: OnceLock<Conn>,
    fanout: OnceLock<Fanout>,
}

/// The Redis engine. Connects in [`Lifecycle::start`].
pub struct RedisEngine {
    config: RedisConfig,
    /// For `rediss://`: what to trust and what to present.
    certs: Option<redis::TlsCertificates>,
    /// This node, once started (for presence upkeep: its channels).
    sink: OnceLock<Arc<dyn PublicationSink>>,
    keys: Keys,
    shards: Vec<Shard>,
    /// Whether to record which nodes have subscribers of each channel (for
    /// the occupied/vacated webhooks; two round trips per first subscriber).
    occupancy: bool,
}

/// An error of the Redis client as the engine reports it: unreachable,
/// timed out, loading or failing over are temporary; refusals are not.
pub(crate) fn redis_error(e: redis::RedisError) -> EngineError {
    if transient(&e) {
        EngineError::Unavailable(e.to_string())
    } else {
        // Anything else Redis answered (NOPERM, WRONGTYPE, a script error) or
        // an answer of the wrong shape will answer the same to a retry.
        EngineError::Refused(e.to_string())
    }
}

/// The certificates of `rediss://` urls (None for redis://), read from
/// the configured files.
fn tls_certificates(config: &RedisConfig) -> Result<Option<redis::TlsCertificates>, String> {
    if !config.urls.iter().any(|u| u.starts_with("rediss://")) {
        return Ok(None);
    }
    // rustls is built with ring only (aws-lc-rs, its post-quantum default,
    // needs cmake and a long C build); make ring the process's provider.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
    };
    let root_cert = match &config.tls_ca_file {
        Some(p) => Some(read("tls_ca_file", p)?),
        None => None,
    };
    let client_tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("tls_cert_file", cert)?,
            client_key: read("tls_key_file", key)?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Whether `e` says Redis is away, slow or moving (unreachable, timed out,
/// loading, failing over): the same command may succeed later, perhaps on
/// another master.
fn transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.code(),
            Some(
                "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "READONLY" | "CLUSTERDOWN" | "OOM"
            )
        )
}

/// `url` without its credentials, for messages.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://…@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A publication from its stream entry (`offset-0`, `d` = JSON).
fn decode_entry((id, fields): &Entry) -> Option<Publication> {
    let offset: u64 = id.split_once('-')?.0.parse().ok()?;
    let data = fields.chunks(2).find(|kv| kv[0] == b"d")?.get(1)?;
    let mut publication: Publication = serde_json::from_slice(data).ok()?;
    publication.offset = Some(offset);
    Some(publication)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl RedisEngine {
    /// An engine for `config` (checked by `RedisConfig::problems`); connects
    /// when started.
    pub fn new(config: &RedisConfig) -> Result<Self, String> {
        if let Some(problem) = config.problems().into_iter().next() {
            return Err(problem);
        }
        let certs = tls_certificates(config)?;
        let clients = config
            .urls
            .iter()
            .map(|url| {
                match &certs {
                    Some(c) => redis::Client::build_with_tls(url.as_str(), c.clone()),
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(|e| format!("{}: {e}", redact(url)))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let shard = |endpoints| Shard {
            endpoints: Arc::new(endpoints),
            conn: OnceLock::new(),
            fanout: OnceLock::new(),
        };
        let shards = if let Some(master) = &config.sentinel_master {
            let sentinel = redis::sentinel::Sentinel::build(config.urls.clone())
                .map_err(|e| format!("the Sentinels: {e}"))?;
            // The master's own credentials (the urls' are the Sentinels').
            let mut auth = redis::RedisConnectionInfo::default();
            if let Some(user) = &config.master_username {
                auth = auth.set_username(user);
            }
            if let Some(password) = &config.master_password {
                auth = auth.set_password(password);
            }
            vec![shard(Endpoints::Sentinel(Box::new(Watched {
                sentinel: tokio::sync::Mutex::new(sentinel),
                master: master.clone(),
                node: redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(auth),
            })))]
        } else if config.cluster {
            vec![shard(Endpoints::Fixed(clients))]
        } else {
            clients
                .into_iter()
                .map(|c| shard(Endpoints::Fixed(vec![c])))
                .collect()
        };
        Ok(Self {
            keys: Keys::new(&config.prefix),
            config: config.clone(),
            certs,
            sink: OnceLock::new(),
            shards,
            occupancy: false,
        })
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[shard_of(channel, self.shards.len())]
    }

    fn conn_of(shard: &Shard) -> Result<Conn, EngineError> {
        shard
            .conn
            .get()
            .cloned()
            .ok_or_else(|| EngineError::Unavailable("the redis engine is not started".into()))
    }

    fn conn(&self, channel: &str) -> Result<Conn, EngineError> {
        Self::conn_of(self.shard(channel))
    }

    /// The first server: control channel, nodes, last seen.
    fn main_conn(&self) -> Result<Conn, EngineError> {
        Self::conn_of(&self.shards[0])
    }

    /// Publishes `message` on the control channel.
    async fn broadcast(&self, message: &ControlMessage) -> Result<(), EngineError> {
        let message =
            serde_json::to_string(message).map_err(|e| EngineError::Backend(e.to_string()))?;
        redis::cmd("PUBLISH")
            .arg(self.keys.control())
            .arg(message)
            .query_async(&mut self.main_conn()?)
            .await
            .map(|_: u64| ())
            .map_err(redis_error)
    }

    fn meta_ttl(&self, policy: &ChannelPolicy) -> u64 {
        // Metadata outlives history and keys, or a retry could publish twice
        // in a channel that started over.
        millis(
            self.config
                .meta_ttl
                .max(policy.history_ttl)
                .max(policy.idempotency_window),
        )
    }

    /// The command connection of `shard`.
    async fn connect(&self, shard: &Shard) -> redis::RedisResult<Conn> {
        if self.config.cluster {
            let seeds: Vec<&str> = self.config.urls.iter().map(String::as_str).collect();
            let mut builder = redis::cluster::ClusterClient::builder(seeds)
                .connection_timeout(self.config.connect_timeout)
                .response_timeout(self.config.command_timeout)
                .retries(2);
            if let Some(certs) = &self.certs {
                builder = builder.certs(certs.clone());
            }
            let client = builder.build()?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        match &*shard.endpoints {
            Endpoints::Sentinel(_) => Ok(Conn::Sentinel(Arc::new(
                Followed::connect(shard.endpoints.clone(), config).await?,
            ))),
            Endpoints::Fixed(clients) => Ok(Conn::Single(
                clients[0]
                    .get_connection_manager_with_config(config)
                    .await?,
            )),
        }
    }

    /// Runs the USER script: `count` connections of `user` on `node` as of
    /// `seq`, checked against `max` (0: not checked).
    async fn user_script(
        &self,
        node: &str,
        user: &str,
        count: usize,
        seq: u64,
        max: usize,
    ) -> Result<bool, EngineError> {
        let done: u8 = scripts::USER
            .key(self.keys.user(user))
            .key(self.keys.nodes())
            .arg(node)
            .arg(count)
            .arg(max)
            .arg(now_ms())
            .arg(seq)
            .invoke_async(&mut self.main_conn()?)
            .await
            .map_err(redis_error)?;
        Ok(done == 1)
    }

    /// Tells [`Broker::node_subscribe`] and [`Broker::node_unsubscribe`]
    /// to report when a channel becomes occupied or vacant in the cluster.
    pub fn with_occupancy(mut self, on: bool) -> Self {
        self.occupancy = on;
        self
    }

    /// Records that this node has (`add`) or no longer has (`rem`)
    /// subscribers of `channel`; true when that occupied or vacated the
    /// channel in the cluster. A failure is logged, not the subscriber's
    /// problem: only a webhook is missed.
    async fn occupancy(&self, channel: &str, op: &str) -> bool {
        if !self.occupancy {
            return false;
        }
        self.occupancy_script(channel, op)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(channel, error = %e, "recording the channel's occupancy failed");
                false
            })
    }

    async fn occupancy_script(&self, channel: &str, op: &str) -> Result<bool, EngineError> {
        let me = self.sink.get().map(|s| s.node_id()).unwrap_or_default();
        let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.nodes())
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut self.main_conn()?)
            .await
            .map_err(redis_error)?;
        let changed: u8 = scripts::OCCUPANCY
            .key(self.keys.occupancy(channel))
            .arg(op)
            .arg(me)
            .arg(live)
            .invoke_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        Ok(changed == 1)
    }

    /// Runs the LEAVE script for one client or for expired leases.
    async fn leave_script(
        &self,
        channel: &str,
        mode: &str,
        arg: &str,
        policy: &ChannelPolicy,
    ) -> Result<u64, EngineError> {
        let p = &policy.presence;
        let mut invocation = scripts::LEAVE.prepare_invoke();
        for key in self.keys.presence(channel) {
            invocation.key(key);
        }
        invocation
            .arg(mode)
            .arg(arg)
            .arg(if p.join_leave { "1" } else { "0" })
            .arg(p.join_leave_max)
            .arg(if p.per_user { "1" } else { "0" })
            .arg(self.keys.pubsub(channel));
        invocation
            .invoke_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)
    }
}

#[async_trait]
impl Broker for RedisEngine {
    async fn publish(
        &self,
        channel: &str,
        request: PublishRequest,
        policy: &ChannelPolicy,
    ) -> Result<PublishOutcome, EngineError> {
        let snapshot = request.snapshot;
        let payload = serde_json::to_string(&Publication {
            offset: None,
            data: request.data,
            info: request.info,
            tags: request.tags,
            key: request.key,
            priority: request.priority,
            time: now_ms(),
            snapshot: request.snapshot,
        })
        .map_err(|e| EngineError::Backend(e.to_string()))?;
        let key = request.idempotency_key.as_deref();
        let (offset, epoch, duplicate): (u64, String, u8) = scripts::PUBLISH
            .key(self.keys.stream(channel))
            .key(self.keys.meta(channel))
            .key(self.keys.idempotency(channel, key.unwrap_or("")))
            .arg(payload)
            .arg(policy.history_size)
            .arg(millis(policy.history_ttl).max(1))
            .arg(self.meta_ttl(policy))
            .arg(millis(policy.idempotency_window).max(1))
            .arg(new_epoch())
            .arg(if key.is_some() { "1" } else { "0" })
            .arg(self.keys.pubsub(channel))
            .arg(if snapshot { "1" } else { "0" })
            .invoke_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        Ok(PublishOutcome {
            position: (offset > 0).then_some(StreamPosition { offset, epoch }),
            duplicate: duplicate == 1,
        })
    }

    async fn node_subscribe(&self, channel: &str) -> Result<bool, EngineError> {
        match self.shard(channel).fanout.get() {
            Some(f) => f.subscribe(channel).await?,
            None => {
                return Err(EngineError::Unavailable(
                    "the redis engine is not started".into(),
                ));
            }
        }
        Ok(self.occupancy(channel, "add").await)
    }

    async fn node_unsubscribe(&self, channel: &str) -> Result<bool, EngineError> {
        if let Some(f) = self.shard(channel).fanout.get() {
            f.unsubscribe(channel);
        }
        Ok(self.occupancy(channel, "rem").await)
    }

    async fn control(&self, control: UserControl) -> Result<(), EngineError> {
        self.broadcast(&ControlMessage::User(control)).await
    }

    async fn receipt(
        &self,
        channel: &str,
        receipt: tidings_protocol::Receipt,
    ) -> Result<(), EngineError> {
        let mut message = b"r".to_vec();
        serde_json::to_writer(&mut message, &receipt)
            .map_err(|e| EngineError::Backend(e.to_string()))?;
        redis::cmd("PUBLISH")
            .arg(self.keys.pubsub(channel))
            .arg(message)
            .query_async(&mut self.conn(channel)?)
            .await
            .map(|_: u64| ())
            .map_err(redis_error)
    }
}

#[async_trait]
impl History for RedisEngine {
    async fn read(
        &self,
        channel: &str,
        query: HistoryQuery,
        policy: &ChannelPolicy,
    ) -> Result<HistoryPage, EngineError> {
        let count = query
            .limit
            .unwrap_or(policy.history_size)
            .min(policy.history_size);
        let from = query.after.unwrap_or(0).saturating_add(1);
        let (top, epoch, entries): (u64, String, Vec<Entry>) = scripts::READ
            .key(self.keys.stream(channel))
            .key(self.keys.meta(channel))
            .arg(new_epoch())
            .arg(self.meta_ttl(policy))
            .arg(from)
            .arg(count)
            .arg(if query.reverse { "1" } else { "0" })
            .arg("")
            .invoke_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        // The stream expires whole; single publications past the TTL are
        // left out here, as the memory engine trims them.
        let oldest = now_ms().saturating_sub(millis(policy.history_ttl));
        let publications = entries
            .iter()
            .filter_map(decode_entry)
            .filter(|p| p.time > oldest)
            .map(Arc::new)
            .collect();
        Ok(HistoryPage {
            publications,
            position: StreamPosition { offset: top, epoch },
        })
    }

    async fn position(
        &self,
        channel: &str,
        policy: &ChannelPolicy,
    ) -> Result<StreamPosition, EngineError> {
        let query = HistoryQuery {
            limit: Some(0),
            ..Default::default()
        };
        Ok(self.read(channel, query, policy).await?.position)
    }

    async fn snapshot(
        &self,
        channel: &str,
        _policy: &ChannelPolicy,
    ) -> Result<Option<Arc<Publication>>, EngineError> {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(self.keys.meta(channel))
            .arg("s")
            .query_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        let Some((offset, payload)) = stored.as_deref().and_then(|s| s.split_once(':')) else {
            return Ok(None);
        };
        let mut p: Publication = serde_json::from_str(payload)
            .map_err(|e| EngineError::Backend(format!("a stored snapshot is damaged: {e}")))?;
        p.offset = offset.parse().ok();
        Ok(Some(Arc::new(p)))
    }
}

#[async_trait]
impl Presence for RedisEngine {
    async fn join(
        &self,
        channel: &str,
        info: &ClientInfo,
        policy: &ChannelPolicy,
    ) -> Result<bool, EngineError> {
        let p = &policy.presence;
        let json = serde_json::to_string(info).map_err(|e| EngineError::Backend(e.to_string()))?;
        let mut invocation = scripts::JOIN.prepare_invoke();
        for key in self.keys.presence(channel) {
            invocation.key(key);
        }
        invocation
            .arg(&info.client)
            .arg(&info.user)
            .arg(json)
            .arg(now_ms() + millis(p.ttl))
            // Keys outlive the longest lease; all go if nobody renews.
            .arg(millis(p.ttl) * 3)
            .arg(if p.join_leave { "1" } else { "0" })
            .arg(p.join_leave_max)
            .arg(if p.per_user { "1" } else { "0" })
            .arg(self.keys.pubsub(channel));
        let joined: u8 = invocation
            .invoke_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        Ok(joined == 2)
    }

    async fn leave(
        &self,
        channel: &str,
        client: &str,
        policy: &ChannelPolicy,
    ) -> Result<bool, EngineError> {
        self.leave_script(channel, "client", client, policy)
            .await
            .map(|gone| gone == 2)
    }

    async fn list(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(BTreeMap<String, ClientInfo>, Option<String>), EngineError> {
        let [_, names, infos, _] = self.keys.presence(channel);
        let (ids, found): (Vec<String>, Vec<Option<String>>) = scripts::LIST
            .key(names)
            .key(infos)
            .arg(cursor.unwrap_or(""))
            .arg(limit)
            .invoke_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        let page = ids
            .into_iter()
            .zip(found)
            .filter_map(|(id, info)| Some((id, serde_json::from_str(&info?).ok()?)))
            .collect();
        Ok(super::presence_page(page, limit))
    }

    async fn stats(&self, channel: &str) -> Result<(u64, u64), EngineError> {
        let [leases, _, _, users] = self.keys.presence(channel);
        redis::pipe()
            .cmd("ZCARD")
            .arg(leases)
            .cmd("HLEN")
            .arg(users)
            .query_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)
    }

    async fn touch(&self, user: &str, at_ms: u64) -> Result<(), EngineError> {
        redis::cmd("HSET")
            .arg(self.keys.last_seen())
            .arg(user)
            .arg(at_ms)
            .query_async(&mut self.main_conn()?)
            .await
            .map(|_: u64| ())
            .map_err(redis_error)
    }

    async fn last_seen(
        &self,
        users: &[String],
    ) -> Result<BTreeMap<String, Option<u64>>, EngineError> {
        if users.is_empty() {
            return Ok(BTreeMap::new());
        }
        let seen: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.keys.last_seen())
            .arg(users)
            .query_async(&mut self.main_conn()?)
            .await
            .map_err(redis_error)?;
        Ok(users.iter().cloned().zip(seen).collect())
    }
}

#[async_trait]
impl Cluster for RedisEngine {
    async fn announce(&self, node: &NodeInfo) -> Result<(), EngineError> {
        let json = serde_json::to_string(node).map_err(|e| EngineError::Backend(e.to_string()))?;
        redis::pipe()
            .cmd("SET")
            .arg(self.keys.node(&node.id))
            .arg(json)
            .arg("PX")
            .arg(millis(NODE_TTL))
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(now_ms() + millis(NODE_TTL))
            .arg(&node.id)
            .ignore()
            .query_async(&mut self.main_conn()?)
            .await
            .map_err(redis_error)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let mut conn = self.main_conn()?;
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.nodes())
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.node(id)).collect();
        let found: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(found
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }

    async fn claim_user(
        &self,
        node: &str,
        user: &str,
        count: usize,
        seq: u64,
        max: usize,
    ) -> Result<bool, EngineError> {
        self.user_script(node, user, count, seq, max).await
    }

    async fn release_user(
        &self,
        node: &str,
        user: &str,
        count: usize,
        seq: u64,
    ) -> Result<(), EngineError> {
        self.user_script(node, user, count, seq, 0)
            .await
            .map(|_| ())
    }

    /// Asks every node for its first `limit` channels after `cursor` and
    /// merges them: the cluster's first `limit` are among them, and each
    /// node that has one of those counts it, so the sums are exact.
    async fn channels(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, usize)>, EngineError> {
        let expected = self.nodes().await?.len().max(1);
        let reply = self.keys.survey(&new_epoch());
        self.broadcast(&ControlMessage::Survey {
            reply: reply.clone(),
            prefix: prefix.to_string(),
            cursor: cursor.map(String::from),
            limit,
        })
        .await?;
        let mut conn = self.main_conn()?;
        let deadline = tokio::time::Instant::now() + SURVEY_WAIT;
        let answers: Vec<String> = loop {
            let answers: Vec<String> = redis::cmd("LRANGE")
                .arg(&reply)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            // A node that died since it last announced never answers.
            if answers.len() >= expected || tokio::time::Instant::now() >= deadline {
                break answers;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let _: Result<u64, _> = redis::cmd("DEL").arg(&reply).query_async(&mut conn).await;
        let mut merged = BTreeMap::<String, usize>::new();
        for answer in answers {
            let Ok(page) = serde_json::from_str::<Vec<(String, usize)>>(&answer) else {
                continue;
            };
            for (channel, n) in page {
                *merged.entry(channel).or_default() += n;
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

#[async_trait]
impl Lifecycle for RedisEngine {
    async fn start(&self, sink: Arc<dyn PublicationSink>) -> Result<(), EngineError> {
        let _ = self.sink.set(sink.clone());
        for (i, shard) in self.shards.iter().enumerate() {
            let conn = tokio::time::timeout(self.config.connect_timeout * 2, self.connect(shard))
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|c| c.map_err(|e| e.to_string()))
                .map_err(|e| {
                    // Name where, for the operator reading why the node stopped.
                    let urls: Vec<String> = self.config.urls.iter().map(|u| redact(u)).collect();
                    let urls = urls.join(", ");
                    EngineError::Unavailable(format!("connecting to {urls}: {e}"))
                })?;
            let fanout = Fanout::start(fanout::Setup {
                endpoints: shard.endpoints.clone(),
                conn: conn.clone(),
                keys: self.keys.clone(),
                sink: sink.clone(),
                control: i == 0,
                connect_timeout: self.config.connect_timeout,
                command_timeout: self.config.command_timeout,
                position_check: self.config.position_check,
                meta_ttl_ms: millis(self.config.meta_ttl),
            });
            let _ = shard.conn.set(conn);
            let _ = shard.fanout.set(fanout);
        }
        Ok(())
    }

    async fn maintain(&self, policy_of: PolicyOf<'_>, _idle: Duration) -> usize {
        // Leases not renewed (a connection or a whole node gone) end with a
        // `leave`; every node sweeps the channels it has subscribers of, so
        // the ones somebody watches are swept. Nothing is kept per channel
        // here: the node's hub knows its channels.
        let Some(sink) = self.sink.get() else {
            return 0;
        };
        let now = now_ms().to_string();
        for (channel, _) in sink.channels("", None, usize::MAX) {
            let Some(policy) = policy_of(&channel).filter(|p| p.presence.enabled) else {
                continue;
            };
            if let Err(e) = self.leave_script(&channel, "expire", &now, &policy).await {
                tracing::debug!(channel, error = %e, "presence expiry failed");
            }
        }
        0
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_never_show_credentials() {
        assert_eq!(
            super::redact("redis://app:s3cret@db:6379/0"),
            "redis://…@db:6379/0"
        );
        assert_eq!(super::redact("rediss://db:6380"), "rediss://db:6380");
    }
}
