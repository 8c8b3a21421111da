//! `[[consumers]]`: records from the systems backends already write to
//! (a PostgreSQL outbox table, Redis Streams, NATS JetStream, MQTT),
//! published into channels exactly once per record.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerType {
    /// A transactional outbox table in PostgreSQL.
    PostgresOutbox,
    /// A Redis stream, through a consumer group.
    RedisStream,
    /// A NATS JetStream stream, through a durable consumer.
    NatsJetstream,
    /// Topic filters on an MQTT broker (QoS 1).
    Mqtt,
}

/// Where a consumer starts when it has no position yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// Every record still kept.
    #[default]
    Earliest,
    /// Only records written from now on.
    Latest,
}

/// Which field of a record holds each part of the publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldMap {
    /// The channel's name.
    pub channel: String,
    /// The data (JSON text).
    pub data: String,
    /// The idempotency key (else one derived from the record's id).
    pub idempotency_key: String,
    /// The key (latest value of).
    pub key: String,
    /// The priority (`critical`, `high`, `normal`, `low`).
    pub priority: String,
}

impl Default for FieldMap {
    fn default() -> Self {
        Self {
            channel: "channel".into(),
            data: "data".into(),
            idempotency_key: "idempotency_key".into(),
            key: "key".into(),
            priority: "priority".into(),
        }
    }
}

/// One `[[consumers]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Names the consumer in logs, metrics and derived idempotency keys.
    pub name: String,
    /// The source.
    #[serde(rename = "type")]
    pub kind: ConsumerType,
    /// The source's address (`postgres://`, `redis://`, `nats://`, `mqtt://`).
    pub url: String,
    /// Postgres: the outbox table; Redis: the stream key; NATS: the stream.
    #[serde(default)]
    pub stream: String,
    /// NATS: the subject filter (default: the whole stream).
    #[serde(default)]
    pub subject: Option<String>,
    /// MQTT: the topic filters.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Redis: the consumer group; NATS: the durable consumer's name;
    /// MQTT: the client id (a persistent session).
    #[serde(default = "default_group")]
    pub group: String,
    /// Where to start without a stored position.
    #[serde(default)]
    pub start: StartAt,
    /// Records taken at once.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Postgres: partitions consumed in parallel (rows carry `partition`,
    /// 0 to `partitions - 1`; order is kept within each).
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Postgres: poll this often when no NOTIFY arrives (the safety net).
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Redis: pending entries idle this long, of a consumer that died, are
    /// claimed by another.
    #[serde(default = "default_claim", with = "humantime_serde")]
    pub claim_after: Duration,
    /// Postgres: create the outbox and dead-letter tables if missing.
    #[serde(default)]
    pub create: bool,
    /// Where records that cannot be published go (Postgres: a table;
    /// Redis: a stream; NATS: a subject; MQTT: a topic). Default: the
    /// source's name with `_dead` (Postgres), `:dead` (Redis) or `.dead`
    /// (NATS, MQTT) appended.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Which record field holds what.
    #[serde(default)]
    pub fields: FieldMap,
    /// The channel from the topic or subject instead of a field: `{1}`,
    /// `{2}`… are the topic's `+` levels (MQTT) or the subject's tokens
    /// (NATS), e.g. `"iot:sensor.{1}"` for `sensors/+/temp`.
    #[serde(default)]
    pub channel_template: Option<String>,
}

fn default_group() -> String {
    "tidings".into()
}

fn default_batch() -> usize {
    100
}

fn default_partitions() -> u32 {
    1
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_claim() -> Duration {
    Duration::from_secs(30)
}

impl ConsumerConfig {
    /// The dead-letter place, configured or derived.
    pub fn dead_letter(&self) -> String {
        if let Some(d) = &self.dead_letter {
            return d.clone();
        }
        match self.kind {
            ConsumerType::PostgresOutbox => format!("{}_dead", self.stream),
            ConsumerType::RedisStream => format!("{}:dead", self.stream),
            ConsumerType::NatsJetstream => format!("{}.dead", self.stream),
            ConsumerType::Mqtt => format!("tidings/dead/{}", self.name),
        }
    }
}

/// What is wrong with the consumers (`node_name`: the node's configured name).
pub(super) fn problems(consumers: &[ConsumerConfig], node_name: Option<&str>) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, c) in consumers.iter().enumerate() {
        let at = format!("`consumers[{i}]`");
        if c.name.is_empty()
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_-".contains(ch))
        {
            bad.push(format!(
                "{at}.name: letters, digits, `_` and `-`, not empty"
            ));
        }
        if consumers[..i].iter().any(|o| o.name == c.name) {
            bad.push(format!("{at}.name: {:?} is used twice", c.name));
        }
        let scheme = match c.kind {
            ConsumerType::PostgresOutbox => ["postgres://", "postgresql://"].as_slice(),
            ConsumerType::RedisStream => ["redis://", "rediss://"].as_slice(),
            ConsumerType::NatsJetstream => ["nats://"].as_slice(),
            ConsumerType::Mqtt => ["mqtt://", "tcp://"].as_slice(),
        };
        if !scheme.iter().any(|s| c.url.starts_with(s)) {
            bad.push(format!("{at}.url: must start with {}", scheme.join(" or ")));
        }
        match c.kind {
            ConsumerType::Mqtt if c.topics.is_empty() => {
                bad.push(format!("{at}.topics: at least one topic filter"));
            }
            ConsumerType::Mqtt => {}
            _ if c.stream.is_empty() => bad.push(format!("{at}.stream: needed")),
            ConsumerType::PostgresOutbox
                if !is_identifier(&c.stream) || !is_identifier(&c.dead_letter()) =>
            {
                bad.push(format!(
                    "{at}.stream, dead_letter: table names of letters, digits and `_`"
                ));
            }
            _ => {}
        }
        if c.batch_size == 0 || c.batch_size > 10_000 {
            bad.push(format!("{at}.batch_size: 1 to 10000"));
        }
        if c.partitions == 0 || c.partitions > 1024 {
            bad.push(format!("{at}.partitions: 1 to 1024"));
        }
        if c.poll_interval.is_zero() || c.claim_after.is_zero() {
            bad.push(format!("{at}.poll_interval, claim_after: greater than 0"));
        }
        if c.group.is_empty() {
            bad.push(format!("{at}.group: not empty"));
        }
        if c.dead_letter() == c.stream || c.topics.contains(&c.dead_letter()) {
            bad.push(format!("{at}.dead_letter: not the source itself"));
        }
        if c.kind == ConsumerType::RedisStream && node_name.is_none() {
            // The consumer's name in the group: it must survive a restart,
            // for the node to read its own pending entries first.
            bad.push(format!(
                "{at}: a redis_stream consumer needs `node_name` (stable across restarts)"
            ));
        }
        let same_client = consumers[..i].iter().any(|o| {
            o.kind == ConsumerType::Mqtt && c.kind == ConsumerType::Mqtt && o.group == c.group
        });
        if same_client {
            bad.push(format!(
                "{at}.group: another MQTT consumer has client id {:?}",
                c.group
            ));
        }
        if c.channel_template.is_some()
            && !matches!(c.kind, ConsumerType::Mqtt | ConsumerType::NatsJetstream)
        {
            bad.push(format!(
                "{at}.channel_template: only for mqtt and nats_jetstream"
            ));
        }
    }
    bad
}

/// A plain lowercase SQL identifier (put in statements as is; `LISTEN`
/// folds case, `pg_notify` does not).
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}
