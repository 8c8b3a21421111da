//! Ingest: consumers that turn records other systems write (a PostgreSQL
//! outbox table, Redis Streams, NATS JetStream, MQTT) into publications.
//! Each source is one file with one job: read records in order, hand each
//! to [`Ingest::offer`], acknowledge it at the source only after that
//! returns. The mapping, the idempotency key that makes a redelivery
//! publish nothing new, and the dead-letter decision live here, once.

mod mqtt;
mod nats;
mod postgres;
mod redis_stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tidings_protocol::{ErrorBody, Priority};
use tokio::task::JoinHandle;

use crate::config::{ConsumerConfig, ConsumerType};
use crate::engine::PublishRequest;
use crate::node::Node;
use crate::session;

/// One record as a source read it.
#[derive(Debug, Default)]
pub struct Record {
    /// Its id at the source (stream id, row id, stream sequence), for the
    /// derived idempotency key; None where the source has none (MQTT).
    pub id: Option<String>,
    /// Its fields (columns, stream fields, headers), and `data`.
    pub fields: HashMap<String, String>,
    /// The `+` levels of the topic (MQTT) or the subject's tokens (NATS),
    /// for `channel_template`.
    pub captures: Vec<String>,
}

/// What became of an offered record.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Published (or a redelivery that published nothing new): acknowledge.
    Published,
    /// It can never be published, for this reason: dead-letter it, then
    /// acknowledge.
    Dead(String),
}

/// How a consumer's records become publications (its configuration's
/// fields and template).
struct Mapping<'a>(&'a ConsumerConfig);

impl Mapping<'_> {
    /// The record's idempotency key field; where the message is its
    /// payload (MQTT, NATS), else that member of the payload when it is a
    /// JSON object (a device's reading carrying its id).
    fn key_field(&self, record: &Record) -> Option<String> {
        let name = &self.0.fields.idempotency_key;
        if let Some(v) = record.fields.get(name) {
            return Some(v.clone());
        }
        if !matches!(
            self.0.kind,
            ConsumerType::Mqtt | ConsumerType::NatsJetstream
        ) {
            return None;
        }
        let data = record.fields.get(&self.0.fields.data)?;
        match serde_json::from_str::<serde_json::Value>(data)
            .ok()?
            .get(name)?
        {
            serde_json::Value::String(s) => Some(s.clone()),
            v @ serde_json::Value::Number(_) => Some(v.to_string()),
            _ => None,
        }
    }

    /// The channel: from the template and the captures, or the field.
    fn channel(&self, record: &Record) -> Result<String, String> {
        let Some(template) = &self.0.channel_template else {
            let name = &self.0.fields.channel;
            return record
                .fields
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no `{name}` field"));
        };
        let mut channel = template.clone();
        for (i, capture) in record.captures.iter().enumerate() {
            channel = channel.replace(&format!("{{{}}}", i + 1), capture);
        }
        if channel.contains('{') {
            return Err(format!("the topic does not fill {template:?}"));
        }
        Ok(channel)
    }

    /// The publication a record maps to, or why it has none.
    fn map(&self, record: &Record) -> Result<(String, PublishRequest), String> {
        let f = &self.0.fields;
        let channel = self.channel(record)?;
        let data = record
            .fields
            .get(&f.data)
            .ok_or_else(|| format!("no `{}` field", f.data))?;
        let data = RawValue::from_string(data.clone())
            .map_err(|e| format!("`{}` is not JSON: {e}", f.data))?;
        let priority = match record.fields.get(&f.priority) {
            None => None,
            Some(p) => Some(
                serde_json::from_value::<Priority>(serde_json::Value::String(p.clone()))
                    .map_err(|_| format!("unknown priority {p:?}"))?,
            ),
        };
        // The record's own key, else one from its id at the source: a
        // redelivery (after a crash, a claim, a restart) publishes nothing.
        let idempotency_key = self
            .key_field(record)
            .or_else(|| record.id.as_ref().map(|id| format!("{}:{id}", self.0.name)));
        let request = PublishRequest {
            data,
            info: None,
            tags: None,
            idempotency_key,
            key: record.fields.get(&f.key).cloned(),
            priority,
            snapshot: false,
        };
        Ok((channel, request))
    }
}

/// A consumer's way into the channels: the mapping and the publish.
pub struct Ingest {
    node: Arc<Node>,
    config: ConsumerConfig,
}

impl Ingest {
    /// Publishes `record`; while the engine is unavailable, tries again
    /// with backoff, so no record overtakes another of its source.
    pub async fn offer(&self, record: &Record) -> Offered {
        let mut backoff = Backoff::new();
        loop {
            match self.try_offer(record).await {
                Ok(offered) => return offered,
                Err(e) => {
                    tracing::debug!(consumer = %self.config.name, error = %e.message, "publish failed; trying again");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Publishes `record` once; `Err` is temporary.
    async fn try_offer(&self, record: &Record) -> Result<Offered, ErrorBody> {
        let (channel, request) = match Mapping(&self.config).map(record) {
            Ok(mapped) => mapped,
            Err(reason) => return Ok(self.dead(reason)),
        };
        let published = match self.node.resolve(&channel) {
            Ok((_, ns)) => session::publish(&self.node, &channel, &ns, request).await,
            Err(e) => Err(e),
        };
        match published {
            Ok(_) => {
                self.node.metrics.consumed(&self.config.name, "published");
                Ok(Offered::Published)
            }
            Err(e) if e.temporary => {
                self.node.metrics.consumed(&self.config.name, "retried");
                Err(e)
            }
            Err(e) => Ok(self.dead(format!("{} ({})", e.message, e.code))),
        }
    }

    fn dead(&self, reason: String) -> Offered {
        self.node.metrics.consumed(&self.config.name, "dead");
        tracing::warn!(consumer = %self.config.name, %reason, "record dead-lettered");
        Offered::Dead(reason)
    }

    /// The consumer is connected and reading (subscribed, group created).
    pub fn up(&self) {
        self.node.metrics.consumer_up(&self.config.name, true);
    }

    /// Records how many records wait at the source.
    pub fn lag(&self, records: i64) {
        self.node.metrics.consumer_lag(&self.config.name, records);
    }

    /// The consumer's configuration.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }
}

/// Why a consumer lost its source (it reconnects).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Redis refused or went away.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL refused or went away.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The source closed the connection.
    #[error("the connection closed")]
    Closed,
    /// NATS refused or went away.
    #[error("nats: {0}")]
    Nats(String),
    /// The MQTT broker refused or went away.
    #[error("mqtt: {0}")]
    Mqtt(String),
}

/// Waits before trying again: 100 ms doubling to 5 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }

    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

/// Starts every configured consumer; each reconnects on its own after a
/// failure (logged), with backoff.
pub fn start(node: &Arc<Node>) -> Vec<JoinHandle<()>> {
    node.config
        .consumers
        .iter()
        .map(|config| {
            let ingest = Arc::new(Ingest {
                node: node.clone(),
                config: config.clone(),
            });
            tokio::spawn(async move {
                let mut backoff = Backoff::new();
                loop {
                    let name = &ingest.config.name;
                    let ran = match ingest.config.kind {
                        ConsumerType::RedisStream => redis_stream::run(&ingest, &mut backoff).await,
                        ConsumerType::PostgresOutbox => postgres::run(&ingest, &mut backoff).await,
                        ConsumerType::NatsJetstream => nats::run(&ingest, &mut backoff).await,
                        ConsumerType::Mqtt => mqtt::run(&ingest, &mut backoff).await,
                    };
                    ingest.node.metrics.consumer_up(name, false);
                    if let Err(e) = ran {
                        ingest.node.metrics.consumed(name, "errors");
                        tracing::warn!(consumer = %name, error = %e, "consumer failed; reconnecting");
                    }
                    backoff.wait().await;
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(toml: &str) -> ConsumerConfig {
        use figment::providers::Format;
        #[derive(serde::Deserialize)]
        struct One {
            consumers: Vec<ConsumerConfig>,
        }
        let one: One = figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .unwrap();
        one.consumers.into_iter().next().unwrap()
    }

    fn record(id: Option<&str>, fields: &[(&str, &str)], captures: &[&str]) -> Record {
        Record {
            id: id.map(String::from),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            captures: captures.iter().map(|c| c.to_string()).collect(),
        }
    }

    const REDIS: &str = "[[consumers]]\nname = \"orders\"\ntype = \"redis_stream\"\nurl = \"redis://h\"\nstream = \"s\"\n";
    const MQTT: &str = "[[consumers]]\nname = \"sensors\"\ntype = \"mqtt\"\nurl = \"mqtt://h\"\ntopics = [\"sensors/+/temp\"]\nchannel_template = \"iot:sensor.{1}\"\n[consumers.fields]\nidempotency_key = \"id\"\n";

    #[test]
    fn keys_come_from_the_record_or_its_id() {
        let config = consumer(REDIS);
        let i = Mapping(&config);
        let data = r#"{"idempotency_key":"from-data","priority":"low"}"#;
        let (channel, req) = i
            .map(&record(
                Some("7-0"),
                &[("channel", "orders:1"), ("data", data)],
                &[],
            ))
            .unwrap();
        assert_eq!(channel, "orders:1");
        // A stream entry's data is business data: not where its key is.
        assert_eq!(req.idempotency_key.as_deref(), Some("orders:7-0"));
        assert_eq!(req.priority, None);
        let (_, req) = i
            .map(&record(
                Some("7-0"),
                &[
                    ("channel", "orders:1"),
                    ("data", "1"),
                    ("idempotency_key", "k"),
                    ("priority", "high"),
                ],
                &[],
            ))
            .unwrap();
        assert_eq!(req.idempotency_key.as_deref(), Some("k"));
        assert_eq!(req.priority, Some(Priority::High));
    }

    #[test]
    fn a_device_payload_names_its_key_and_the_topic_its_channel() {
        let config = consumer(MQTT);
        let i = Mapping(&config);
        let (channel, req) = i
            .map(&record(
                None,
                &[("data", r#"{"id":"r-9","c":21.5}"#)],
                &["42"],
            ))
            .unwrap();
        assert_eq!(channel, "iot:sensor.42");
        assert_eq!(req.idempotency_key.as_deref(), Some("r-9"));
        // Without an id anywhere: no key (at least once).
        let (_, req) = i.map(&record(None, &[("data", "21.5")], &["42"])).unwrap();
        assert_eq!(req.idempotency_key, None);
    }

    #[test]
    fn bad_records_say_why() {
        let config = consumer(REDIS);
        let i = Mapping(&config);
        let why = |fields: &[(&str, &str)]| i.map(&record(Some("1-0"), fields, &[])).unwrap_err();
        assert!(why(&[("data", "1")]).contains("no `channel` field"));
        assert!(why(&[("channel", "c")]).contains("no `data` field"));
        assert!(why(&[("channel", "c"), ("data", "{nope")]).contains("is not JSON"));
        assert!(
            why(&[("channel", "c"), ("data", "1"), ("priority", "urgent")])
                .contains("unknown priority")
        );
        let config = consumer(MQTT);
        let m = Mapping(&config);
        let e = m.map(&record(None, &[("data", "1")], &[])).unwrap_err();
        assert!(e.contains("does not fill"), "{e}");
    }
}
