//! MQTT (for devices): subscribes to topic filters with QoS 1 in a
//! persistent session (`group` is the client id), so that the broker keeps
//! what arrives while Tidings is down. The payload is the `data`; the
//! topic's `+` levels fill `channel_template`. Each message is
//! acknowledged (PUBACK) after it is published or dead-lettered (a JSON
//! `{"topic", "payload", "reason"}` on the dead-letter topic). MQTT has no
//! message id that survives a redelivery: for exactly once, devices put one
//! in the payload (`fields.idempotency_key` names the member).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

use super::{Backoff, Ingest, Offered, Record, SourceError};

fn mqtt(e: impl std::fmt::Display) -> SourceError {
    SourceError::Mqtt(e.to_string())
}

/// The levels of `topic` that the wildcards of `filter` match, or None
/// when it does not match.
fn captures(filter: &str, topic: &str) -> Option<Vec<String>> {
    let mut levels = topic.split('/');
    let mut caught = Vec::new();
    for part in filter.split('/') {
        match part {
            "#" => {
                caught.push(levels.by_ref().collect::<Vec<_>>().join("/"));
                return Some(caught);
            }
            "+" => caught.push(levels.next()?.to_string()),
            literal => {
                if levels.next()? != literal {
                    return None;
                }
            }
        }
    }
    levels.next().is_none().then_some(caught)
}

/// Consumes until the connection fails.
pub async fn run(ingest: &Ingest, backoff: &mut Backoff) -> Result<(), SourceError> {
    let c = ingest.config();
    let address = c
        .url
        .trim_start_matches("mqtt://")
        .trim_start_matches("tcp://")
        .trim_end_matches('/');
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().map_err(mqtt)?),
        None => (address, 1883),
    };
    let mut options = MqttOptions::new(&c.group, host, port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15));
    let (client, mut events) = AsyncClient::new(options, c.batch_size.max(10));
    // The event loop must keep turning while a message is published, or
    // the acknowledgements queued for it would never leave: it runs in its
    // own task and hands messages over without ever waiting. How many wait
    // here is the broker's in-flight window for this client (mosquitto's
    // `max_inflight_messages`).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = {
        let client = client.clone();
        let topics = c.topics.clone();
        tokio::spawn(async move {
            loop {
                let handed = match events.poll().await.map_err(mqtt)? {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        for topic in &topics {
                            client
                                .try_subscribe(topic, QoS::AtLeastOnce)
                                .map_err(mqtt)?;
                        }
                        Ok(())
                    }
                    Event::Incoming(Packet::SubAck(ack)) => {
                        let refused = ack
                            .return_codes
                            .iter()
                            .any(|r| matches!(r, SubscribeReasonCode::Failure));
                        if refused {
                            return Err(SourceError::Mqtt(
                                "the broker refused a topic filter".into(),
                            ));
                        }
                        tx.send(None)
                    }
                    Event::Incoming(Packet::Publish(publish)) => tx.send(Some(publish)),
                    _ => Ok(()),
                };
                if handed.is_err() {
                    return Ok(()); // the consumer stopped
                }
            }
        })
    };
    let mut poller = AbortOnDrop(poller);
    let dead = c.dead_letter();
    while let Some(message) = rx.recv().await {
        // Subscribed: from now on the broker keeps what comes for us.
        let Some(publish) = message else {
            tracing::info!(consumer = %c.name, topics = ?c.topics, "consuming MQTT topics");
            ingest.up();
            backoff.reset();
            continue;
        };
        if publish.topic == dead {
            // Our own dead letter (a filter takes it in): never again.
            client.ack(&publish).await.map_err(mqtt)?;
            continue;
        }
        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
        let mut record = Record::default();
        record.fields.insert("data".into(), payload.clone());
        record.fields.insert("topic".into(), publish.topic.clone());
        record.captures = c
            .topics
            .iter()
            .find_map(|f| captures(f, &publish.topic))
            .unwrap_or_default();
        if let Offered::Dead(reason) = ingest.offer(&record).await {
            let letter = serde_json::json!({
                "topic": publish.topic,
                "payload": payload,
                "reason": reason,
            });
            client
                .publish(dead.clone(), QoS::AtLeastOnce, false, letter.to_string())
                .await
                .map_err(mqtt)?;
        }
        client.ack(&publish).await.map_err(mqtt)?;
    }
    // The event loop ended: its error is why.
    match (&mut poller.0).await {
        Ok(Err(e)) => Err(e),
        _ => Err(SourceError::Closed),
    }
}

/// Stops the event loop's task when the consumer stops.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), SourceError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::captures;

    #[test]
    fn wildcards_capture_levels() {
        assert_eq!(
            captures("sensors/+/temp", "sensors/42/temp"),
            Some(vec!["42".into()])
        );
        assert_eq!(captures("sensors/+/temp", "sensors/42/hum"), None);
        assert_eq!(captures("sensors/+/temp", "sensors/42/temp/x"), None);
        assert_eq!(captures("a/#", "a/b/c"), Some(vec!["b/c".into()]));
        assert_eq!(captures("a/b", "a/b"), Some(vec![]));
    }
}
