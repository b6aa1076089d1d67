//! A session's inbox: what the storage thread and other sessions hand to one connection task.
//!
//! Control items (storage replies, fetch results, close requests) are always accepted: each is
//! bounded by the session's own outstanding requests. Deliveries (new queued messages, don't-queue
//! messages) are bounded; one that does not fit is dropped and the overflow is reported, so the
//! session falls back to reading its queue from the database (nothing is lost: a queued message is
//! in SQLite before it is offered here).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::types::{Identity, QueuedMessage};

/// Most deliveries waiting in one inbox.
pub const MAX_DELIVERIES: usize = 1024;

/// What the storage worker answers to a stored outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Committed to the receiver's queue.
    Stored,
    /// The same (sender, receiver, message id) was stored before: not queued again.
    Duplicate,
    /// The receiver's queue is at its limit: not stored.
    QueueFull,
    /// The database failed: not stored.
    Failed,
}

/// Why another party asks a session to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRequest {
    /// A newer session with the same identity and csp-device-id logged in.
    Replaced,
    /// The server is shutting down.
    Shutdown,
    /// Storage failed while serving this session.
    StorageFailure,
}

/// One item for a session.
#[derive(Debug)]
pub enum MailItem {
    /// The fate of an outgoing message this session sent.
    Stored {
        /// Its receiver (the identity of the message-ack).
        receiver: Identity,
        /// Its id.
        message_id: u64,
        /// Whether the sender wants a message-ack.
        ack: bool,
        /// What happened.
        outcome: StoreOutcome,
    },
    /// A page of this session's queue, oldest first.
    Fetched {
        /// The messages.
        messages: Vec<Arc<QueuedMessage>>,
        /// Whether the page holds everything after the cursor that was queued at fetch time.
        complete: bool,
        /// For the first fetch after unblock: the newest sequence number queued then (`None`:
        /// the queue was empty), the end of the backlog that queue-send-complete waits for.
        backlog_end: Option<Option<u64>>,
    },
    /// A message was committed to this session's queue.
    Queued(Arc<QueuedMessage>),
    /// A message another node committed to this session's queue, carried in that node's hint
    /// (sent after its commit): taken if it follows the cursor directly, else the queue is read.
    Hinted(Arc<QueuedMessage>),
    /// A don't-queue message for a receiving session: deliver now or never.
    Transient(Arc<[u8]>),
    /// Messages may have been committed that this session was not offered (another node
    /// stored them, or the catch-up sweep): read the queue again from the cursor.
    Recheck,
    /// Another session of the identity sent unblock: this one no longer receives.
    Demoted,
    /// Close the session.
    Close(CloseRequest),
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<MailItem>,
    deliveries: usize,
    overflowed: bool,
}

/// The inbox shared between a session task and everyone who writes to it.
#[derive(Debug, Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    notify: Notify,
}

/// What a session takes out of its inbox in one go.
#[derive(Debug, Default)]
pub struct Drained {
    /// The items, in the order they were pushed.
    pub items: Vec<MailItem>,
    /// Whether a delivery was dropped since the last drain.
    pub overflowed: bool,
}

impl Mailbox {
    /// An empty inbox.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue inconsistent: keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pushes a control item (never dropped).
    pub fn push(&self, item: MailItem) {
        self.lock().items.push_back(item);
        self.notify.notify_one();
    }

    /// Pushes a delivery unless the inbox holds [`MAX_DELIVERIES`] already; returns whether it
    /// was kept.
    pub fn push_delivery(&self, item: MailItem) -> bool {
        let kept = {
            let mut inner = self.lock();
            if inner.deliveries >= MAX_DELIVERIES {
                inner.overflowed = true;
                false
            } else {
                inner.deliveries = inner.deliveries.saturating_add(1);
                inner.items.push_back(item);
                true
            }
        };
        self.notify.notify_one();
        kept
    }

    /// Pushes control items with one wake-up (the storage thread answers a whole batch).
    pub fn push_all(&self, items: impl IntoIterator<Item = MailItem>) {
        self.lock().items.extend(items);
        self.notify.notify_one();
    }

    /// Pushes deliveries with one wake-up, keeping at most [`MAX_DELIVERIES`] waiting; returns
    /// how many were kept.
    pub fn push_deliveries(&self, items: impl IntoIterator<Item = MailItem>) -> usize {
        let mut kept = 0;
        {
            let mut inner = self.lock();
            for item in items {
                if inner.deliveries >= MAX_DELIVERIES {
                    inner.overflowed = true;
                    break;
                }
                inner.deliveries = inner.deliveries.saturating_add(1);
                inner.items.push_back(item);
                kept += 1;
            }
        }
        self.notify.notify_one();
        kept
    }

    /// Takes everything.
    pub fn drain(&self) -> Drained {
        let mut inner = self.lock();
        inner.deliveries = 0;
        Drained {
            items: inner.items.drain(..).collect(),
            overflowed: core::mem::take(&mut inner.overflowed),
        }
    }

    /// Waits until something was pushed since the last wait (a push before the wait counts).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_bounded_and_overflow_is_reported_once() {
        let mailbox = Mailbox::new();
        for _ in 0..MAX_DELIVERIES {
            assert!(mailbox.push_delivery(MailItem::Transient(Arc::from(&b"x"[..]))));
        }
        assert!(!mailbox.push_delivery(MailItem::Transient(Arc::from(&b"y"[..]))));
        mailbox.push(MailItem::Demoted);
        let drained = mailbox.drain();
        assert_eq!(drained.items.len(), MAX_DELIVERIES + 1);
        assert!(drained.overflowed);
        let again = mailbox.drain();
        assert!(again.items.is_empty() && !again.overflowed);
        assert!(mailbox.push_delivery(MailItem::Transient(Arc::from(&b"z"[..]))));
    }

    #[test]
    fn batched_deliveries_respect_the_bound() {
        let mailbox = Mailbox::new();
        let items = (0..MAX_DELIVERIES + 3).map(|_| MailItem::Transient(Arc::from(&b"x"[..])));
        assert_eq!(mailbox.push_deliveries(items), MAX_DELIVERIES);
        mailbox.push_all([MailItem::Demoted, MailItem::Demoted]);
        let drained = mailbox.drain();
        assert_eq!(drained.items.len(), MAX_DELIVERIES + 2);
        assert!(drained.overflowed);
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let mailbox = Mailbox::new();
        mailbox.push(MailItem::Demoted);
        tokio::time::timeout(std::time::Duration::from_secs(5), mailbox.wait())
            .await
            .unwrap();
        assert_eq!(mailbox.drain().items.len(), 1);
    }
}
