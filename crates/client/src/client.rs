//! The public handle: [`Client`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc, oneshot};

use tidings_protocol::chat::{InboxOk, KeysOk, MembersOk};
use tidings_protocol::reply::Empty;
use tidings_protocol::reply::{HistoryOk, PresenceOk, PresenceStatsOk, PublishOk, RefreshOk};
use tidings_protocol::{Cursors, InboxChange, SinceArg};

use crate::config::{ClientConfig, parse_url};
use crate::error::ClientError;
use crate::subscription::{SubscribeOptions, Subscription};
use crate::task::{Task, ToTask};
use crate::wire::Op;

/// Options of [`Client::publish`].
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Dedup key: a retry with the same key publishes nothing new. Keyed
    /// publishes interrupted by a lost connection are sent again after the
    /// reconnect (within the request timeout); others fail with
    /// [`ClientError::Disconnected`].
    pub idempotency_key: Option<String>,
    /// Free-form string tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// What the publication is the latest value of within its channel: in
    /// `latest` namespaces, a subscriber that falls behind gets the newest
    /// value per key.
    pub key: Option<String>,
    /// Its priority on the way to subscribers (the namespace's default when
    /// absent).
    pub priority: Option<tidings_protocol::Priority>,
}

/// Options of [`Client::history`].
#[derive(Debug, Clone, Default)]
pub struct HistoryOptions {
    /// Only publications after this position.
    pub since: Option<SinceArg>,
    /// At most this many publications.
    pub limit: Option<u32>,
    /// Newest first.
    pub reverse: bool,
}

/// Connection state changes, from [`Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A connection is up (the `connect` reply came).
    Connected {
        /// This connection's client id.
        client: String,
    },
    /// A connection ended.
    Disconnected {
        /// The disconnect or close code, when there was one.
        code: Option<u16>,
        /// Why.
        reason: String,
        /// Whether the client will reconnect.
        reconnect: bool,
    },
    /// The client will try to connect again after `delay`.
    Reconnecting {
        /// 1 for the first retry after a connection ended, then 2, 3, …
        attempt: u32,
        /// How long it waits first.
        delay: Duration,
    },
}

/// State the background task shares with the handles.
pub(crate) struct Shared {
    pub(crate) client_id: Mutex<Option<String>>,
    pub(crate) events: broadcast::Sender<ClientEvent>,
    pub(crate) inbox: broadcast::Sender<InboxChange>,
}

/// How long a subscription with `receipts` gathers delivered offsets
/// before it tells the server the newest one.
pub const CURSOR_COALESCE: Duration = Duration::from_millis(500);

impl Shared {
    pub(crate) fn set_client_id(&self, id: Option<String>) {
        *self.client_id.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        tracing::debug!(?event, "client event");
        let _ = self.events.send(event);
    }
}

struct Inner {
    tx: mpsc::UnboundedSender<ToTask>,
    shared: Arc<Shared>,
    request_timeout: Duration,
    next_serial: AtomicU64,
}

/// A connection to a Tidings server that reconnects by itself.
///
/// A cheap handle to one background task that owns the WebSocket: clone it
/// freely. The connection closes when [`Client::close`] is called or every
/// handle is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Room for connection events not yet read by a slow receiver.
const EVENTS_CAPACITY: usize = 256;

impl Client {
    /// Connects and waits for the first successful `connect` reply.
    ///
    /// Fails when the first attempt fails with a terminal error (a network
    /// error, a refused handshake, a disconnect code of 3500 or more, a
    /// non-temporary `connect` error) or when no connection is up within
    /// `request_timeout`. Server-asked reconnects (codes 3000–3499, temporary
    /// errors) are retried within that time. Once connected, lost connections
    /// are re-established in the background.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let uri = parse_url(&config.url).map_err(ClientError::InvalidArgument)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let (inbox, _) = broadcast::channel(EVENTS_CAPACITY);
        let shared = Arc::new(Shared {
            client_id: Mutex::new(None),
            events,
            inbox,
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let request_timeout = config.request_timeout;
        let task = Task::new(&config, uri, rx, shared.clone(), ready_tx);
        tokio::spawn(task.run());
        let client = Client {
            inner: Arc::new(Inner {
                tx,
                shared,
                request_timeout,
                next_serial: AtomicU64::new(1),
            }),
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// The current connection's client id; `None` while disconnected.
    pub fn client_id(&self) -> Option<String> {
        self.inner
            .shared
            .client_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Subscribes to `channel` and waits for the server's answer.
    ///
    /// The first event is [`SubEvent::Subscribed`](crate::SubEvent::Subscribed).
    /// After a reconnect the client resubscribes from the last position
    /// delivered, so the stream has no duplicates and reports losses with
    /// [`SubEvent::NotRecovered`](crate::SubEvent::NotRecovered). Subscribing
    /// twice to the same channel fails with code 107 (already subscribed).
    /// While disconnected the subscribe waits for the next connection (within
    /// the request timeout).
    pub async fn subscribe(
        &self,
        channel: &str,
        opts: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let serial = self.inner.next_serial.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        // Built first: dropping it (on timeout or cancel) tells the task to unsubscribe.
        let sub = Subscription::new(
            channel.to_string(),
            serial,
            events_rx,
            self.inner.tx.downgrade(),
        );
        self.send(ToTask::Subscribe {
            channel: channel.to_string(),
            serial,
            since: opts.since,
            snapshot: opts.snapshot,
            delta: opts.delta,
            receipts: opts.receipts,
            events: events_tx,
            reply: reply_tx,
        })?;
        match tokio::time::timeout(self.inner.request_timeout, reply_rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(()))) => Ok(sub),
        }
    }

    /// Publishes `data` into `channel`.
    pub async fn publish(
        &self,
        channel: &str,
        data: &serde_json::Value,
        opts: PublishOptions,
    ) -> Result<PublishOk, ClientError> {
        let data = serde_json::value::to_raw_value(data)
            .map_err(|e| ClientError::InvalidArgument(format!("data: {e}")))?;
        self.publish_data(channel, data, opts).await
    }

    /// Publishes `data_json`, JSON text sent as is (line breaks between tokens
    /// are turned into spaces, as the framing needs). Fails with
    /// [`ClientError::InvalidArgument`] when it is not valid JSON.
    pub async fn publish_raw(
        &self,
        channel: &str,
        data_json: &str,
        opts: PublishOptions,
    ) -> Result<PublishOk, ClientError> {
        let data = raw_json(data_json)?;
        self.publish_data(channel, data, opts).await
    }

    async fn publish_data(
        &self,
        channel: &str,
        data: Box<RawValue>,
        opts: PublishOptions,
    ) -> Result<PublishOk, ClientError> {
        let retry = opts.idempotency_key.is_some();
        let op = Op::Publish {
            channel: channel.to_string(),
            data,
            idempotency_key: opts.idempotency_key,
            tags: opts.tags,
            key: opts.key,
            priority: opts.priority,
        };
        self.call(op, retry).await
    }

    /// Reads `channel`'s history. Like every read (and `refresh`), it is sent
    /// again after a reconnect when the connection drops before the reply.
    pub async fn history(
        &self,
        channel: &str,
        opts: HistoryOptions,
    ) -> Result<HistoryOk, ClientError> {
        self.call(
            Op::History {
                channel: channel.to_string(),
                since: opts.since,
                limit: opts.limit,
                reverse: opts.reverse,
            },
            true,
        )
        .await
    }

    /// Who is in `channel`.
    pub async fn presence(&self, channel: &str) -> Result<PresenceOk, ClientError> {
        self.call(
            Op::Presence {
                channel: channel.to_string(),
            },
            true,
        )
        .await
    }

    /// How many clients and users are in `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsOk, ClientError> {
        self.call(
            Op::PresenceStats {
                channel: channel.to_string(),
            },
            true,
        )
        .await
    }

    /// Renews the connection token; on success it is also the token used by
    /// later reconnects.
    pub async fn refresh(&self, token: &str) -> Result<RefreshOk, ClientError> {
        self.call(
            Op::Refresh {
                token: token.to_string(),
            },
            true,
        )
        .await
    }

    /// Leaves `channel`: its [`Subscription`] stream ends. Fails with code 108
    /// when the client is not subscribed to it.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), ClientError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(ToTask::Unsubscribe {
            channel: channel.to_string(),
            reply: reply_tx,
        })?;
        match tokio::time::timeout(self.inner.request_timeout, reply_rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(r)) => r,
        }
    }

    /// Connection events from now on (connected, disconnected, reconnecting).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.shared.events.subscribe()
    }

    /// The user's conversations as they change (`inbox` pushes), from now on.
    pub fn inbox_changes(&self) -> broadcast::Receiver<InboxChange> {
        self.inner.shared.inbox.subscribe()
    }

    /// Raises the user's cursors in members channel `channel` (they never
    /// go back); the cursors the server stores. `mark_read` is
    /// `cursor(channel, None, Some(offset))`.
    pub async fn cursor(
        &self,
        channel: &str,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> Result<Cursors, ClientError> {
        let op = Op::Cursor {
            channel: channel.to_string(),
            delivered,
            read,
        };
        self.call(op, true).await
    }

    /// The user has read everything in `channel` up to `offset`.
    pub async fn mark_read(&self, channel: &str, offset: u64) -> Result<Cursors, ClientError> {
        self.cursor(channel, None, Some(offset)).await
    }

    /// A page of the user's conversations, the most recently active first.
    pub async fn inbox(
        &self,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<InboxOk, ClientError> {
        self.call(Op::Inbox { limit, cursor }, true).await
    }

    /// A page of members channel `channel`'s members.
    pub async fn members(
        &self,
        channel: &str,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<MembersOk, ClientError> {
        let op = Op::Members {
            channel: channel.to_string(),
            limit,
            cursor,
        };
        self.call(op, true).await
    }

    /// Registers this device's public key (an uncompressed P-256 point in
    /// unpadded base64url) in the key directory, under the user's name.
    pub async fn register_key(&self, device: &str, key: &str) -> Result<(), ClientError> {
        let op = Op::Keys {
            device: Some(device.to_string()),
            key: Some(key.to_string()),
            users: None,
            channel: None,
        };
        self.call::<Empty>(op, true).await.map(drop)
    }

    /// The device keys of `users`.
    pub async fn keys(&self, users: &[String]) -> Result<KeysOk, ClientError> {
        let op = Op::Keys {
            device: None,
            key: None,
            users: Some(users.to_vec()),
            channel: None,
        };
        self.call(op, true).await
    }

    /// Registers `device`'s public key in the key directory (the
    /// connection must be `device`'s user).
    pub async fn register_device(
        &self,
        device: &crate::e2ee::DeviceKeys,
    ) -> Result<(), ClientError> {
        self.register_key(device.device(), &device.public_key())
            .await
    }

    /// Publishes `data` end-to-end encrypted: sealed by `device` for every
    /// device of `channel`'s members (its key directory, read now), so the
    /// server stores and relays only ciphertext. Open with [`Client::open`].
    pub async fn publish_sealed(
        &self,
        channel: &str,
        data: &serde_json::Value,
        device: &crate::e2ee::DeviceKeys,
        opts: PublishOptions,
    ) -> Result<PublishOk, ClientError> {
        let data = serde_json::value::to_raw_value(data)
            .map_err(|e| ClientError::InvalidArgument(format!("data: {e}")))?;
        let directory = self.channel_keys(channel).await?.keys;
        let envelope = device.seal(channel, &data, &directory)?;
        let sealed = serde_json::value::to_raw_value(&envelope)
            .map_err(|e| ClientError::InvalidArgument(format!("data: {e}")))?;
        self.publish_data(channel, sealed, opts).await
    }

    /// `publication` with its envelope opened by `device` (the sender's
    /// key looked up in the directory); one that is not an envelope is
    /// returned as it is.
    pub async fn open(
        &self,
        channel: &str,
        device: &crate::e2ee::DeviceKeys,
        mut publication: tidings_protocol::Publication,
    ) -> Result<tidings_protocol::Publication, ClientError> {
        let Some(envelope) = crate::e2ee::envelope_of(&publication.data) else {
            return Ok(publication);
        };
        let publisher = publication
            .info
            .as_ref()
            .map(|i| i.user.clone())
            .unwrap_or_default();
        let sender = &envelope.from;
        let keys = self.keys(std::slice::from_ref(&sender.user)).await?;
        let key = keys
            .keys
            .get(&sender.user)
            .and_then(|list| list.iter().find(|k| k.device == sender.device))
            .ok_or(crate::e2ee::E2eeError::NotForMe(
                "the sender's device has no key",
            ))?;
        publication.data = device.open(channel, &publisher, &envelope, &key.key)?;
        Ok(publication)
    }

    /// The device keys of members channel `channel`'s members.
    pub async fn channel_keys(&self, channel: &str) -> Result<KeysOk, ClientError> {
        let op = Op::Keys {
            device: None,
            key: None,
            users: None,
            channel: Some(channel.to_string()),
        };
        self.call(op, true).await
    }

    /// Closes the connection for good and waits until it is closed. Pending
    /// requests fail with [`ClientError::Closed`]; subscription streams end.
    pub async fn close(&self) {
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.inner.tx.send(ToTask::Close(ack_tx)).is_ok() {
            let _ = ack_rx.await;
        }
    }

    fn send(&self, msg: ToTask) -> Result<(), ClientError> {
        self.inner.tx.send(msg).map_err(|_| ClientError::Closed)
    }

    async fn call<T: DeserializeOwned>(&self, op: Op, retry: bool) -> Result<T, ClientError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(ToTask::Request {
            op,
            reply: reply_tx,
            retry,
        })?;
        let raw = match tokio::time::timeout(self.inner.request_timeout, reply_rx).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Err(_)) => return Err(ClientError::Closed),
            Ok(Ok(r)) => r?,
        };
        serde_json::from_str(raw.get())
            .map_err(|e| ClientError::Protocol(format!("unexpected reply {}: {e}", raw.get())))
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id())
            .finish_non_exhaustive()
    }
}

/// Validates JSON text and makes it safe for `\n`-separated framing: a line
/// break can only be whitespace between tokens in valid JSON, so it becomes a space.
pub(crate) fn raw_json(text: &str) -> Result<Box<RawValue>, ClientError> {
    let text = if text.contains(['\n', '\r']) {
        text.replace(['\n', '\r'], " ")
    } else {
        text.to_string()
    };
    RawValue::from_string(text)
        .map_err(|e| ClientError::InvalidArgument(format!("data is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_json_keeps_bytes_and_removes_line_breaks() {
        assert_eq!(raw_json(r#"{"a": 1}"#).unwrap().get(), r#"{"a": 1}"#);
        let pretty = "{\r\n  \"a\": \"x\\ny\",\n  \"b\": [1,\n2]\n}";
        let raw = raw_json(pretty).unwrap();
        assert!(!raw.get().contains('\n'));
        let v: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
        assert_eq!(v, serde_json::json!({"a": "x\ny", "b": [1, 2]}));
        assert!(matches!(
            raw_json("{nope"),
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(matches!(raw_json(""), Err(ClientError::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn connect_refuses_bad_urls_and_fails_fast_when_nothing_listens() {
        let e = Client::connect(ClientConfig::new("ftp://x"))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        // A port nothing listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let e = Client::connect(ClientConfig::new(format!("ws://127.0.0.1:{port}/v1/ws")))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Io(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
