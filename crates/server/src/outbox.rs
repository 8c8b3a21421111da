//! A connection's outbox: bounded in bytes, filled by the hub and the
//! session, drained in batches by the transport's writer.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;
use tidings_protocol::{Disconnect, DisconnectCode};
use tokio::sync::Notify;

/// How the connection ends.
#[derive(Debug, Clone)]
pub struct Close {
    /// Sent as a `disconnect` push, then as the close code.
    pub disconnect: Disconnect,
    /// Whether queued messages are written first.
    pub flush: bool,
}

/// What became of a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// The outbox was full: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection is already closing; dropped.
    Closed,
}

struct Inner {
    queue: VecDeque<Bytes>,
    bytes: usize,
    close: Option<Close>,
}

/// The outbox. Share it in an `Arc`.
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Wakes the writer.
    notify: Notify,
    /// Wakes the reader when the connection starts closing.
    closing: Notify,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                close: None,
            }),
            notify: Notify::new(),
            closing: Notify::new(),
            max_bytes,
        }
    }

    /// Queues one encoded push. Never blocks; overflow closes the connection.
    pub fn push(&self, message: Bytes) -> Pushed {
        self.push_inner(message, false)
    }

    /// Queues a reply. Like [`Outbox::push`], except that a reply larger than
    /// the bound is accepted when nothing else is queued: a recovery answer
    /// (bounded by `recovery_max`) can be bigger than the outbox, and a client
    /// that was cut off as a slow consumer must still be able to recover.
    pub fn push_reply(&self, message: Bytes) -> Pushed {
        self.push_inner(message, true)
    }

    fn push_inner(&self, message: Bytes, reply: bool) -> Pushed {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return Pushed::Closed;
        }
        // An oversized reply into an empty queue is not charged against the
        // bound, so the pushes that follow it still have the whole bound.
        let oversized_reply = reply && inner.queue.is_empty() && message.len() > self.max_bytes;
        if !oversized_reply && inner.bytes + message.len() > self.max_bytes {
            inner.queue.clear();
            inner.bytes = 0;
            inner.close = Some(Close {
                disconnect: Disconnect::new(DisconnectCode::SLOW_CONSUMER, None),
                flush: false,
            });
            drop(inner);
            self.notify.notify_one();
            self.closing.notify_one();
            return Pushed::Overflow;
        }
        let wake = inner.queue.is_empty();
        if !oversized_reply {
            inner.bytes += message.len();
        }
        inner.queue.push_back(message);
        drop(inner);
        if wake {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Asks the writer to end the connection. The first close wins.
    pub fn close(&self, disconnect: Disconnect, flush: bool) -> bool {
        let mut inner = self.inner.lock();
        if inner.close.is_some() {
            return false;
        }
        inner.close = Some(Close { disconnect, flush });
        drop(inner);
        self.notify.notify_one();
        self.closing.notify_one();
        true
    }

    /// Resolves once the connection starts closing (one waiter: the reader).
    pub async fn closing(&self) {
        self.closing.notified().await
    }

    /// Whether the connection is closing.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().close.is_some()
    }

    /// Moves whatever is queued into `batch` without waiting; returns the
    /// close when the connection is closing.
    pub fn try_batch(&self, batch: &mut Vec<Bytes>) -> Option<Close> {
        let mut inner = self.inner.lock();
        batch.extend(inner.queue.drain(..));
        inner.bytes = 0;
        inner.close.clone()
    }

    /// Waits until something is queued or the connection closes, then moves
    /// every queued message into `batch`. Returns the close when closing
    /// (after this batch, if it is to be flushed).
    pub async fn next_batch(&self, batch: &mut Vec<Bytes>) -> Option<Close> {
        loop {
            let notified = self.notify.notified();
            {
                let mut inner = self.inner.lock();
                let close = inner.close.clone();
                if close.as_ref().is_some_and(|c| !c.flush) {
                    inner.queue.clear();
                    inner.bytes = 0;
                    return close;
                }
                if !inner.queue.is_empty() || close.is_some() {
                    batch.extend(inner.queue.drain(..));
                    inner.bytes = 0;
                    return close;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_and_overflows() {
        let o = Outbox::new(10);
        assert_eq!(o.push(Bytes::from_static(b"aaaa")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"bbbb")), Pushed::Queued);
        let mut batch = Vec::new();
        assert!(o.next_batch(&mut batch).await.is_none());
        assert_eq!(batch.len(), 2);
        assert_eq!(o.push(Bytes::from_static(b"cccccccc")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"ddd")), Pushed::Overflow);
        assert_eq!(o.push(Bytes::from_static(b"e")), Pushed::Closed);
        batch.clear();
        let close = o.next_batch(&mut batch).await.unwrap();
        assert!(batch.is_empty());
        assert_eq!(close.disconnect.code, 3002);
    }

    #[tokio::test]
    async fn flushing_close_keeps_queue() {
        let o = Outbox::new(100);
        o.push(Bytes::from_static(b"x"));
        o.close(Disconnect::new(DisconnectCode::SHUTDOWN, Some(5)), true);
        let mut batch = Vec::new();
        let close = o.next_batch(&mut batch).await.unwrap();
        assert_eq!((batch.len(), close.disconnect.code), (1, 3001));
    }
}
