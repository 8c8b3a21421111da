//! Prometheus metrics of one server instance (its own registry, so several
//! servers in one process, as in tests, do not mix their numbers).

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of `tidings_command_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The protocol error code.
    pub code: u16,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections: Gauge<i64, AtomicI64>,
    /// Open sockets, whatever they carry (upgraded or not).
    pub sockets: Gauge<i64, AtomicI64>,
    /// Sockets closed for not sending their first request head in time.
    pub request_timeouts: Counter<u64, AtomicU64>,
    /// Subscriptions across connections.
    pub subscriptions: Gauge<i64, AtomicI64>,
    /// Channels with at least one local subscriber.
    pub channels: Gauge<i64, AtomicI64>,
    /// Publications accepted (API and clients).
    pub publications_in: Counter<u64, AtomicU64>,
    /// Messages queued to clients (pushes and replies).
    pub messages_out: Counter<u64, AtomicU64>,
    /// Bytes written to client sockets.
    pub bytes_out: Counter<u64, AtomicU64>,
    /// Connections cut off because their outbox overflowed.
    pub slow_consumer_disconnects: Counter<u64, AtomicU64>,
    /// Queued values replaced by newer ones (`latest`, `conflate`).
    pub conflated: Counter<u64, AtomicU64>,
    /// Backlogs dropped for a `gap` notice (`skip`).
    pub gaps: Counter<u64, AtomicU64>,
    /// Error replies, by code.
    pub command_errors: Family<CodeLabel, Counter<u64, AtomicU64>>,
    /// Connections refused by a limit, by limit (`ip`, `node`, `user`, `rate`).
    pub limit_rejections: Family<LimitLabel, Counter<u64, AtomicU64>>,
    /// Times the engine lost a channel's continuity on this node (its
    /// subscribers were told to resubscribe, `unsub` 3003).
    pub channel_resets: Counter<u64, AtomicU64>,
    /// Proxy hook calls, by hook and result (`allow`, `refuse`, `unavailable`).
    pub proxy_calls: Family<HookLabel, Counter<u64, AtomicU64>>,
    /// Webhook events by outcome (`queued`, `delivered`, `dropped_full`,
    /// `dropped_attempts`).
    pub webhook_events: Family<OutcomeLabel, Counter<u64, AtomicU64>>,
    /// Webhook requests that failed (each is retried).
    pub webhook_failures: Counter<u64, AtomicU64>,
    /// Webhook events waiting on disk.
    pub webhook_queue: Gauge<i64, AtomicI64>,
    /// Seconds from a publication's acceptance to its write to a
    /// subscriber's connection, by transport.
    pub delivery_latency: Family<TransportLabel, Histogram>,
    /// Connections ended, by close code (1000 the client's close, 1006
    /// gone without one, 3xxx Tidings' disconnect codes).
    pub closes: Family<CodeLabel, Counter<u64, AtomicU64>>,
    /// Publications accepted, by namespace ("" for the default one).
    pub namespace_publications: Family<NamespaceLabel, Counter<u64, AtomicU64>>,
    /// Publications queued to subscribers on this node, by namespace.
    pub namespace_deliveries: Family<NamespaceLabel, Counter<u64, AtomicU64>>,
    /// Records consumers took from their sources, by consumer and outcome
    /// (`published`, `dead`, `retried`, `errors`).
    pub consumer_records: Family<ConsumerLabel, Counter<u64, AtomicU64>>,
    /// Records waiting at a consumer's source (read last, every few seconds).
    pub consumer_lag: Family<ConsumerNameLabel, Gauge<i64, AtomicI64>>,
    /// 1 while a consumer is connected to its source and reading.
    pub consumer_up: Family<ConsumerNameLabel, Gauge<i64, AtomicI64>>,
    /// Seconds an engine operation took (a Redis round trip, a disk read).
    pub engine_seconds: Family<OpLabel, Histogram>,
    /// Messages a connection's outbox held when its writer took them, by
    /// transport (one observation per write).
    pub outbox_depth: Family<TransportLabel, Histogram>,
}

/// Labels of `tidings_consumer_records_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    /// The consumer's name.
    pub consumer: String,
    /// What became of the records.
    pub outcome: &'static str,
}

/// Label of `tidings_consumer_lag`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerNameLabel {
    /// The consumer's name.
    pub consumer: String,
}

/// Label of `tidings_engine_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// The engine operation (`publish`, `read`, `join`, ...).
    pub op: &'static str,
}

/// Label of `tidings_namespace_publications_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    /// The namespace.
    pub namespace: String,
}

/// One transport's write histograms, delivery latency and outbox depth
/// (shared handles, kept by a writer).
#[derive(Clone)]
pub struct Writes {
    latency: Histogram,
    depth: Histogram,
}

impl Writes {
    /// Records one write of `entries`: its size as the outbox's depth, and
    /// the latency of each publication among them.
    pub fn observe(&self, entries: &[crate::outbox::Entry]) {
        if entries.is_empty() {
            return; // a long-poll that timed out wrote nothing
        }
        self.depth.observe(entries.len() as f64);
        let now = crate::engine::now_ms();
        for meta in entries.iter().filter_map(|e| e.publication.as_ref()) {
            if meta.published_ms > 0 {
                self.latency
                    .observe(now.saturating_sub(meta.published_ms) as f64 / 1000.0);
            }
        }
    }
}

/// Label of `tidings_delivery_latency_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `websocket`, `sse`, `http_poll`, `pusher`.
    pub transport: &'static str,
}

/// 100 µs to ~26 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 19,
    ))
}

/// 1 to 4096 messages, doubling.
fn depth_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 13,
    ))
}

/// Labels of `tidings_proxy_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    /// `connect`, `refresh`, `subscribe`, `publish`, `sub_refresh`.
    pub hook: &'static str,
    /// `allow`, `refuse`, `unavailable`.
    pub result: &'static str,
}

/// Label of `tidings_webhook_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What became of the events.
    pub outcome: &'static str,
}

/// Label of `tidings_limit_rejections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// Which limit.
    pub limit: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tidings");
        let m = Metrics {
            registry: Registry::default(),
            connections: Gauge::default(),
            sockets: Gauge::default(),
            request_timeouts: Counter::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            publications_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            slow_consumer_disconnects: Counter::default(),
            conflated: Counter::default(),
            gaps: Counter::default(),
            command_errors: Family::default(),
            limit_rejections: Family::default(),
            channel_resets: Counter::default(),
            proxy_calls: Family::default(),
            webhook_events: Family::default(),
            webhook_failures: Counter::default(),
            webhook_queue: Gauge::default(),
            delivery_latency: Family::new_with_constructor(latency_buckets),
            closes: Family::default(),
            namespace_publications: Family::default(),
            namespace_deliveries: Family::default(),
            consumer_records: Family::default(),
            consumer_lag: Family::default(),
            consumer_up: Family::default(),
            engine_seconds: Family::new_with_constructor(latency_buckets),
            outbox_depth: Family::new_with_constructor(depth_buckets),
        };
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "sockets",
            "Open sockets, upgraded or not",
            m.sockets.clone(),
        );
        registry.register(
            "request_timeouts",
            "Sockets closed for not sending a request head within client.header_timeout",
            m.request_timeouts.clone(),
        );
        registry.register("subscriptions", "Subscriptions", m.subscriptions.clone());
        registry.register(
            "channels",
            "Channels with local subscribers",
            m.channels.clone(),
        );
        registry.register(
            "publications_in",
            "Publications accepted",
            m.publications_in.clone(),
        );
        registry.register(
            "messages_out",
            "Messages queued to clients",
            m.messages_out.clone(),
        );
        registry.register("bytes_out", "Bytes written to clients", m.bytes_out.clone());
        registry.register(
            "slow_consumer_disconnects",
            "Connections cut off for a full outbox",
            m.slow_consumer_disconnects.clone(),
        );
        registry.register(
            "conflated",
            "Queued values replaced by newer ones of their channel and key (latest, conflate)",
            m.conflated.clone(),
        );
        registry.register(
            "gaps",
            "Backlogs of slow connections dropped for a gap notice (skip)",
            m.gaps.clone(),
        );
        registry.register(
            "command_errors",
            "Error replies by code",
            m.command_errors.clone(),
        );
        registry.register(
            "limit_rejections",
            "Connections refused by a limit",
            m.limit_rejections.clone(),
        );
        registry.register(
            "channel_resets",
            "Channels whose continuity the engine lost here (subscribers resubscribe)",
            m.channel_resets.clone(),
        );
        registry.register(
            "proxy_calls",
            "Proxy hook calls by hook and result",
            m.proxy_calls.clone(),
        );
        registry.register(
            "webhook_events",
            "Webhook events by outcome (queued, delivered, dropped_full, dropped_attempts)",
            m.webhook_events.clone(),
        );
        registry.register(
            "webhook_failures",
            "Webhook requests that failed and are retried",
            m.webhook_failures.clone(),
        );
        registry.register(
            "closes",
            "Connections ended, by close code",
            m.closes.clone(),
        );
        registry.register(
            "namespace_publications",
            "Publications accepted, by namespace",
            m.namespace_publications.clone(),
        );
        registry.register(
            "namespace_deliveries",
            "Publications queued to subscribers on this node, by namespace",
            m.namespace_deliveries.clone(),
        );
        registry.register(
            "consumer_records",
            "Records consumers took from their sources, by consumer and outcome",
            m.consumer_records.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records waiting at a consumer's source",
            m.consumer_lag.clone(),
        );
        registry.register(
            "consumer_up",
            "1 while a consumer is connected to its source and reading",
            m.consumer_up.clone(),
        );
        registry.register(
            "engine_seconds",
            "Seconds an engine operation took (Redis round trip, disk), by operation",
            m.engine_seconds.clone(),
        );
        registry.register(
            "outbox_depth",
            "Messages a connection's outbox held when its writer took them, by transport",
            m.outbox_depth.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Seconds from a publication's acceptance to its write to a subscriber, by transport",
            m.delivery_latency.clone(),
        );
        registry.register(
            "webhook_queue",
            "Webhook events queued on disk",
            m.webhook_queue.clone(),
        );
        // Every known label set from the start: a dashboard shows zeros, not
        // "no data", and /metrics lists each family before its first event.
        for code in tidings_protocol::ErrorCode::ALL {
            let _ = m
                .command_errors
                .get_or_create(&CodeLabel { code: code.code() });
        }
        for limit in ["ip", "node", "user", "rate", "commands", "channels"] {
            let limit = limit.to_string();
            let _ = m.limit_rejections.get_or_create(&LimitLabel { limit });
        }
        for hook in ["connect", "refresh", "subscribe", "publish", "sub_refresh"] {
            for result in ["allow", "refuse", "unavailable"] {
                let _ = m.proxy_calls.get_or_create(&HookLabel { hook, result });
            }
        }
        for outcome in ["queued", "delivered", "dropped_full", "dropped_attempts"] {
            let _ = m.webhook_events.get_or_create(&OutcomeLabel { outcome });
        }
        for transport in ["websocket", "sse", "http_poll", "pusher"] {
            let label = TransportLabel { transport };
            let _ = m.delivery_latency.get_or_create(&label);
            let _ = m.outbox_depth.get_or_create(&label);
        }
        for code in [1000, 1006, 3001, 3002, 3004, 3005, 3006] {
            let _ = m.closes.get_or_create(&CodeLabel { code });
        }
        Metrics { registry, ..m }
    }

    /// Counts an error reply.
    pub fn command_error(&self, code: u16) {
        self.command_errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts a connection refused by `limit`.
    pub fn limit_rejected(&self, limit: &str) {
        self.limit_rejections
            .get_or_create(&LimitLabel {
                limit: limit.to_string(),
            })
            .inc();
    }

    /// Counts one proxy hook call.
    pub fn proxy_call(&self, hook: &'static str, result: &'static str) {
        self.proxy_calls
            .get_or_create(&HookLabel { hook, result })
            .inc();
    }

    /// The write histograms of `transport`, for a writer to keep.
    pub fn writes(&self, transport: &'static str) -> Writes {
        let label = TransportLabel { transport };
        Writes {
            latency: self.delivery_latency.get_or_create(&label).clone(),
            depth: self.outbox_depth.get_or_create(&label).clone(),
        }
    }

    /// The histogram of engine operation `op`, for the engine's timer to keep.
    pub fn engine_histogram(&self, op: &'static str) -> Histogram {
        self.engine_seconds.get_or_create(&OpLabel { op }).clone()
    }

    /// The delivery counter of `namespace`, for a channel to keep.
    pub fn deliveries(&self, namespace: &str) -> Counter<u64, AtomicU64> {
        let namespace = namespace.to_string();
        self.namespace_deliveries
            .get_or_create(&NamespaceLabel { namespace })
            .clone()
    }

    /// Counts a connection ended with `code`.
    pub fn closed(&self, code: u16) {
        self.closes.get_or_create(&CodeLabel { code }).inc();
    }

    /// Lists `namespaces` in `tidings_namespace_publications_total` at zero.
    pub fn know_namespaces<'a>(&self, namespaces: impl Iterator<Item = &'a str>) {
        for namespace in namespaces {
            let label = NamespaceLabel {
                namespace: namespace.to_string(),
            };
            let _ = self.namespace_publications.get_or_create(&label);
            let _ = self.namespace_deliveries.get_or_create(&label);
        }
    }

    /// Lists `consumers` in the consumer families at zero.
    pub fn know_consumers<'a>(&self, consumers: impl Iterator<Item = &'a str>) {
        for consumer in consumers {
            for outcome in ["published", "dead", "retried", "errors"] {
                let _ = self.consumer_records.get_or_create(&ConsumerLabel {
                    consumer: consumer.to_string(),
                    outcome,
                });
            }
            self.consumer_lag(consumer, 0);
            self.consumer_up(consumer, false);
        }
    }

    /// Marks `consumer` connected to its source and reading, or not.
    pub fn consumer_up(&self, consumer: &str, up: bool) {
        self.consumer_up
            .get_or_create(&ConsumerNameLabel {
                consumer: consumer.to_string(),
            })
            .set(i64::from(up));
    }

    /// Counts one record of `consumer` with `outcome`.
    pub fn consumed(&self, consumer: &str, outcome: &'static str) {
        self.consumer_records
            .get_or_create(&ConsumerLabel {
                consumer: consumer.to_string(),
                outcome,
            })
            .inc();
    }

    /// Sets how many records wait at `consumer`'s source.
    pub fn consumer_lag(&self, consumer: &str, records: i64) {
        self.consumer_lag
            .get_or_create(&ConsumerNameLabel {
                consumer: consumer.to_string(),
            })
            .set(records);
    }

    /// Counts a publication accepted in `namespace`.
    pub fn published(&self, namespace: &str) {
        self.namespace_publications
            .get_or_create(&NamespaceLabel {
                namespace: namespace.to_string(),
            })
            .inc();
    }

    /// Counts `n` webhook events with `outcome`.
    pub fn webhook(&self, outcome: &'static str, n: u64) {
        self.webhook_events
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
