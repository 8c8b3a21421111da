//! A connection's control mailbox: instructions from outside its task (the
//! server API, the hub when a channel's continuity is lost).

use parking_lot::Mutex;

/// An instruction from outside a connection's task.
#[derive(Debug)]
pub enum Control {
    /// End a subscription with an `unsub` push.
    Unsubscribe {
        /// Channel name.
        channel: String,
        /// Code of the `unsub` push.
        code: u16,
    },
    /// The engine lost continuity of a channel: end that subscription
    /// (only if it is still `subscriber`) with `unsub` 3003.
    Lost {
        /// Channel name.
        channel: String,
        /// The subscription's id ([`crate::hub::Subscriber::id`]).
        subscriber: u64,
    },
}

/// A connection's control mailbox. Allocates nothing while empty (a tokio
/// channel would hold a block of 32 slots per connection).
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<Vec<Control>>,
    notify: tokio::sync::Notify,
}

impl Mailbox {
    /// Leaves `control` for the connection's task.
    pub fn send(&self, control: Control) {
        self.queue.lock().push(control);
        self.notify.notify_one();
    }

    /// Waits for the next control (one waiter: the connection's task).
    pub async fn recv(&self) -> Control {
        loop {
            let notified = self.notify.notified();
            {
                let mut queue = self.queue.lock();
                if !queue.is_empty() {
                    return queue.remove(0);
                }
            }
            notified.await;
        }
    }
}
