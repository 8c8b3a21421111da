//! NATS JetStream: a durable pull consumer on a stream (and subject
//! filter). A message's headers are its fields, its payload the `data`;
//! it is acknowledged after it is published or dead-lettered (published
//! to the dead-letter subject with a `Tidings-Reason` header). Messages are
//! processed and acknowledged in order, so one node at a time consumes a
//! durable consumer; after a restart it waits `ack_wait` for the messages
//! it had not acknowledged to come again, first.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use futures_util::StreamExt;

use super::{Backoff, Ingest, Offered, Record, SourceError};
use crate::config::StartAt;

fn nats(e: impl std::fmt::Display) -> SourceError {
    SourceError::Nats(e.to_string())
}

fn record(message: &async_nats::jetstream::Message) -> Record {
    let mut fields: std::collections::HashMap<String, String> = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .filter_map(|(name, values)| Some((name.to_string(), values.first()?.to_string())))
        .collect();
    if let Ok(data) = std::str::from_utf8(&message.payload) {
        fields.insert("data".into(), data.to_string());
    }
    Record {
        id: message.info().ok().map(|i| i.stream_sequence.to_string()),
        fields,
        captures: message.subject.split('.').map(String::from).collect(),
    }
}

/// Consumes until the connection fails.
pub async fn run(ingest: &Ingest, backoff: &mut Backoff) -> Result<(), SourceError> {
    let c = ingest.config();
    let client = async_nats::connect(c.url.as_str()).await.map_err(nats)?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&c.stream).await.map_err(nats)?;
    let config = |deliver_policy| pull::Config {
        durable_name: Some(c.group.clone()),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        // Messages of a consumer that stopped answering come again after this.
        ack_wait: c.claim_after,
        filter_subject: c.subject.clone().unwrap_or_default(),
        ..Default::default()
    };
    let start = match c.start {
        StartAt::Earliest => DeliverPolicy::All,
        StartAt::Latest => DeliverPolicy::New,
    };
    let mut consumer: PullConsumer = stream
        .get_or_create_consumer(&c.group, config(start))
        .await
        .map_err(nats)?;
    let pending = consumer.info().await.map_err(nats)?.num_ack_pending;
    if pending > 0 {
        // Messages were delivered and not acknowledged (Tidings stopped
        // mid-batch). JetStream redelivers them once `ack_wait` has passed,
        // before any new message: wait for that, so that order holds
        // (those already published carry the same idempotency keys).
        tracing::info!(consumer = %c.name, pending, "waiting for unacknowledged messages to come again");
        tokio::time::sleep(c.claim_after).await;
    }
    let dead = c.dead_letter();
    tracing::info!(consumer = %c.name, stream = %c.stream, durable = %c.group, "consuming a NATS JetStream stream");
    ingest.up();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(c.batch_size)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(nats)?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(nats)?;
            if message.subject.as_str() == dead {
                // Our own dead letter (the filter takes it in): never again.
                message.ack().await.map_err(nats)?;
                continue;
            }
            let record = record(&message);
            if let Offered::Dead(reason) = ingest.offer(&record).await {
                let mut headers = message.headers.clone().unwrap_or_default();
                headers.insert("Tidings-Reason", reason.as_str());
                let subject = dead.clone();
                client
                    .publish_with_headers(subject, headers, message.payload.clone())
                    .await
                    .map_err(nats)?;
            }
            message.ack().await.map_err(nats)?;
        }
        backoff.reset();
        if let Ok(info) = consumer.info().await {
            ingest.lag((info.num_pending + info.num_ack_pending as u64) as i64);
        }
    }
}
