//! Webhooks: what happened, told to the backend. An event is taken without
//! waiting (the caller is a connection or a publish); a flusher writes it
//! to the queue on disk within one batch window, whatever the sender is
//! doing; the sender POSTs the queue in batches `{"events": [...]}` signed
//! with `X-Tidings-Signature`. A failed request is retried with
//! exponential backoff and full jitter, up to `max_attempts`; only a 2xx
//! removes events from the queue, so the backend sees each event at least
//! once and deduplicates by `id`.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use super::queue::{Queue, QueueError, Queued};
use super::signature;
use crate::config::{WebhookConfig, WebhookEvent};
use crate::metrics::Metrics;

/// The file of the queue under `data_dir`.
pub const QUEUE_FILE: &str = "webhooks.sqlite3";

/// How the events are shaped and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// `{"events": [{"id", "event", "time", ...}]}`, `X-Tidings-Signature`.
    Tidings,
    /// Pusher's: `{"time_ms", "events": [{"name", "channel", ...}]}`,
    /// `X-Pusher-Key` and `X-Pusher-Signature` (hex HMAC-SHA256 of the body).
    Pusher {
        /// The app's key.
        key: String,
    },
}

/// The webhook sender of one node (for Tidings' webhooks, or one Pusher app's).
pub struct Webhooks {
    config: WebhookConfig,
    dialect: Dialect,
    url: String,
    secret: String,
    wanted: HashSet<WebhookEvent>,
    /// Events taken but not yet on disk (at most one batch window's).
    pending: Mutex<VecDeque<String>>,
    /// Wakes the flusher: events were taken.
    taken: Notify,
    /// Wakes the sender: events reached the disk.
    stored: Notify,
    queue: Arc<Queue>,
    /// Events on disk, kept here so the gauge needs no query.
    queued: AtomicI64,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// Opens the queue `file` under `data_dir`; None when webhooks are off.
    pub fn open(
        config: &WebhookConfig,
        dialect: Dialect,
        data_dir: &Path,
        file: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Self>>, QueueError> {
        let (Some(url), Some(secret)) = (&config.url, &config.secret) else {
            return Ok(None);
        };
        if let Err(e) = std::fs::create_dir_all(data_dir) {
            tracing::warn!(dir = %data_dir.display(), error = %e, "cannot create the data directory");
        }
        let queue = Queue::open(&data_dir.join(file), config.max_queue)?;
        let queued = queue.count()? as i64;
        metrics.webhook_queue.set(queued);
        Ok(Some(Arc::new(Self {
            config: config.clone(),
            dialect,
            url: url.clone(),
            secret: secret.clone(),
            wanted: config.events.iter().copied().collect(),
            pending: Mutex::new(VecDeque::new()),
            taken: Notify::new(),
            stored: Notify::new(),
            queue: Arc::new(queue),
            queued: AtomicI64::new(queued),
            metrics,
        })))
    }

    /// Whether `event` is sent.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.wanted.contains(&event)
    }

    /// Takes `event` with its `fields` (a JSON object): adds a unique `id`,
    /// the name and the `time` (ms). Never waits. The caller checks
    /// [`Webhooks::wants`] first.
    pub fn emit(&self, event: WebhookEvent, fields: Value) {
        let mut body = Map::new();
        match self.dialect {
            Dialect::Tidings => {
                body.insert(
                    "id".into(),
                    Value::String(format!("{:032x}", rand::rng().random::<u128>())),
                );
                body.insert("event".into(), Value::String(event.name().into()));
                body.insert("time".into(), Value::from(crate::engine::now_ms()));
            }
            Dialect::Pusher { .. } => {
                body.insert("name".into(), Value::String(event.name().into()));
            }
        }
        if let Value::Object(fields) = fields {
            body.extend(fields);
        }
        let text = Value::Object(body).to_string();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= self.config.max_queue {
                pending.pop_front();
                self.metrics.webhook("dropped_full", 1);
            }
            pending.push_back(text);
        }
        self.metrics.webhook("queued", 1);
        self.taken.notify_one();
    }

    /// Writes the taken events to disk (each window, and at shutdown).
    pub async fn flush(&self) {
        let events: Vec<String> = std::mem::take(&mut *self.pending.lock()).into();
        if events.is_empty() {
            return;
        }
        let n = events.len() as i64;
        let queue = self.queue.clone();
        match tokio::task::spawn_blocking(move || queue.push(&events)).await {
            Ok(Ok(dropped)) => {
                self.metrics.webhook("dropped_full", dropped);
                self.add_queued(n - dropped as i64);
                self.stored.notify_one();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "webhook events lost: the queue cannot be written")
            }
            Err(e) => tracing::error!(error = %e, "webhook queue write panicked"),
        }
    }

    fn add_queued(&self, n: i64) {
        let now = self.queued.fetch_add(n, Ordering::Relaxed) + n;
        self.metrics.webhook_queue.set(now.max(0));
    }

    async fn peek(&self) -> Vec<Queued> {
        let (queue, n) = (self.queue.clone(), self.config.max_batch);
        match tokio::task::spawn_blocking(move || queue.peek(n)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the webhook queue");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn remove(&self, batch: &[Queued]) {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return;
        };
        let (queue, first, last) = (self.queue.clone(), first.0, last.0);
        match tokio::task::spawn_blocking(move || queue.remove(first, last)).await {
            // Counted by what was still there: the bound may have dropped some.
            Ok(Ok(removed)) => self.add_queued(-(removed as i64)),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot remove sent webhook events"),
            Err(_) => {}
        }
    }

    /// The wait before try `attempt + 1`: full jitter over an exponential
    /// bound, so that many nodes retrying do not come back together.
    fn backoff(&self, attempt: u32) -> Duration {
        let bound = self
            .config
            .backoff_min
            .saturating_mul(1 << attempt.min(20))
            .min(self.config.backoff_max);
        bound.mul_f64(rand::rng().random::<f64>())
    }

    /// Writes taken events to disk one batch window after they come, so
    /// that they survive a crash even while the sender waits out a backoff.
    async fn flush_loop(self: Arc<Self>) {
        loop {
            self.taken.notified().await;
            tokio::time::sleep(self.config.batch_window).await;
            self.flush().await;
        }
    }

    /// Flushes and sends until the node stops: one request in flight, in
    /// queue order.
    pub async fn run(self: Arc<Self>) {
        let flusher = tokio::spawn(self.clone().flush_loop());
        // Ends the flusher with the sender (the node aborts the sender).
        struct Abort(tokio::task::JoinHandle<()>);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _flusher = Abort(flusher);
        let client = reqwest::Client::builder()
            .timeout(self.config.timeout)
            .build()
            .unwrap_or_default();
        let mut attempt = 0u32;
        let mut more = true; // the queue may hold events (from before a restart)
        loop {
            if !more {
                self.stored.notified().await;
            }
            let batch = self.peek().await;
            if batch.is_empty() {
                more = false;
                continue;
            }
            let events = batch
                .iter()
                .map(|(_, e)| e.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let request = client
                .post(&self.url)
                .header(http::header::CONTENT_TYPE, "application/json");
            let sent = match &self.dialect {
                Dialect::Tidings => {
                    let body = format!("{{\"events\":[{events}]}}");
                    let signed =
                        signature::sign(&self.secret, crate::auth::unix_now(), body.as_bytes());
                    request.header(signature::HEADER, signed).body(body)
                }
                Dialect::Pusher { key } => {
                    let body = format!(
                        "{{\"time_ms\":{},\"events\":[{events}]}}",
                        crate::engine::now_ms()
                    );
                    let signed = crate::pusher::sign::hmac_hex(&self.secret, &body);
                    request
                        .header("x-pusher-key", key)
                        .header("x-pusher-signature", signed)
                        .body(body)
                }
            }
            .send()
            .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("answered {}", r.status())),
                Err(e) => Some(e.without_url().to_string()),
            };
            match failure {
                None => {
                    self.remove(&batch).await;
                    self.metrics.webhook("delivered", batch.len() as u64);
                    attempt = 0;
                    more = batch.len() == self.config.max_batch;
                }
                Some(why) => {
                    attempt += 1;
                    self.metrics.webhook_failures.inc();
                    tracing::warn!(url = %self.url, attempt, error = %why, "webhook request failed");
                    if attempt >= self.config.max_attempts {
                        tracing::error!(
                            events = batch.len(),
                            "webhook events dropped after {attempt} tries"
                        );
                        self.remove(&batch).await;
                        self.metrics.webhook("dropped_attempts", batch.len() as u64);
                        attempt = 0;
                    } else {
                        tokio::time::sleep(self.backoff(attempt - 1)).await;
                    }
                    more = true;
                }
            }
        }
    }
}
