//! The storage thread: group commit over one database connection, whatever the backend.
//!
//! Loop: wait for one command, take whatever else is waiting (up to [`MAX_BATCH`]), let the
//! [`Backend`] apply all of them in one transaction and commit, then answer them in order. A
//! failed commit answers every message of the batch with `Failed` (none of them was acked, so
//! nothing acked is lost).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::directory::IdentityRecord;
use crate::mailbox::{CloseRequest, MailItem, Mailbox, StoreOutcome};
use crate::registry::Registry;
use crate::types::{now_ms, Identity, QueuedMessage};

use super::hints::Hint;
use super::{
    name_unreceived, Backend, Command, Created, Enqueue, LoginInfo, PendingToken, PushTarget,
    StoreError,
};

/// Most commands per transaction.
pub(super) const MAX_BATCH: usize = 4096;

/// An answer held until the batch is committed.
#[derive(Debug)]
pub(crate) enum Output {
    Stored {
        enqueue: Box<Enqueue>,
        outcome: StoreOutcome,
        seq: u64,
        /// The node whose session receives this receiver, when it is another node.
        remote: Option<i64>,
    },
    Fetched {
        reply: Arc<Mailbox>,
        result: Result<MailItem, StoreError>,
    },
    Created {
        reply: oneshot::Sender<Result<Created, StoreError>>,
        result: Result<Created, StoreError>,
    },
    Flushed(oneshot::Sender<()>),
    Login {
        reply: oneshot::Sender<Result<LoginInfo, StoreError>>,
        result: Result<LoginInfo, StoreError>,
    },
    Claimed {
        reply: oneshot::Sender<Result<(u64, bool), StoreError>>,
        result: Result<(u64, bool), StoreError>,
        identity: Identity,
        /// The node that held the receiving session before, when it is another node.
        previous: Option<i64>,
    },
    Looked {
        reply: oneshot::Sender<Result<Option<IdentityRecord>, StoreError>>,
        result: Result<Option<IdentityRecord>, StoreError>,
    },
    Issued {
        reply: oneshot::Sender<Result<bool, StoreError>>,
        result: Result<bool, StoreError>,
    },
    Redeemed {
        reply: oneshot::Sender<Result<Option<PendingToken>, StoreError>>,
        result: Result<Option<PendingToken>, StoreError>,
    },
    Pushing {
        reply: oneshot::Sender<Result<PushTarget, StoreError>>,
        result: Result<PushTarget, StoreError>,
    },
    /// A don't-queue message for another node (best effort, like its delivery on one node).
    Relay(Hint),
}

impl Output {
    /// The batch did not commit: this answer becomes a failure.
    pub(super) fn fail(&mut self) {
        match self {
            Self::Stored { outcome, .. } => *outcome = StoreOutcome::Failed,
            Self::Fetched { result, .. } => *result = Err(StoreError::Stopped),
            Self::Created { result, .. } => *result = Err(StoreError::Stopped),
            Self::Login { result, .. } => *result = Err(StoreError::Stopped),
            Self::Claimed { result, .. } => *result = Err(StoreError::Stopped),
            Self::Looked { result, .. } => *result = Err(StoreError::Stopped),
            Self::Issued { result, .. } => *result = Err(StoreError::Stopped),
            Self::Redeemed { result, .. } => *result = Err(StoreError::Stopped),
            Self::Pushing { result, .. } => *result = Err(StoreError::Stopped),
            Self::Flushed(_) | Self::Relay(_) => {}
        }
    }
}

/// Starts the storage thread over `backend`.
pub(super) fn spawn<B: Backend>(
    backend: B,
    rx: mpsc::Receiver<Command>,
    registry: Arc<Registry>,
    hints: Option<mpsc::Sender<Hint>>,
    unreceived: Option<crate::push::WakeSender>,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("storage".into())
        .spawn(move || run(backend, rx, &registry, hints.as_ref(), unreceived.as_ref()))
        .map_err(|_| StoreError::Stopped)
}

/// Runs until every [`super::Store`] handle is dropped.
fn run<B: Backend>(
    mut backend: B,
    mut rx: mpsc::Receiver<Command>,
    registry: &Registry,
    hints: Option<&mpsc::Sender<Hint>>,
    unreceived: Option<&crate::push::WakeSender>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let size = batch.len();
        let started = std::time::Instant::now();
        let outputs = backend.apply(&mut batch, now_ms());
        batch.clear();
        let applied = started.elapsed();
        answer(registry, hints, unreceived, outputs);
        tracing::trace!(
            size,
            apply_us = applied.as_micros(),
            total_us = started.elapsed().as_micros(),
            "batch"
        );
    }
    debug!("storage worker stopped");
}

/// Answers the commands of a committed (or failed) batch, in order; new queue entries are
/// offered to the receivers' sessions last, and other nodes get their hints after that (each
/// in its own transaction, never in the data transaction). Everything for one inbox goes in
/// with one wake-up: waking a session once per message from this thread would cost more than
/// the SQL.
fn answer(
    registry: &Registry,
    hints: Option<&mpsc::Sender<Hint>>,
    unreceived: Option<&crate::push::WakeSender>,
    outputs: Vec<Output>,
) {
    let mut control = Grouped::default();
    let mut queued: Vec<(Identity, MailItem)> = Vec::new();
    let mut remote: Vec<Hint> = Vec::new();
    // Receivers of stored messages that no other node receives for: if none receives here
    // either, the push task wakes their device group (docs/chat-server.md "Push").
    let mut no_node: Vec<Identity> = Vec::new();
    // Answered last: whoever waits for a flush then finds every answer before it in its inbox.
    let mut flushed = Vec::new();
    for out in outputs {
        match out {
            Output::Stored {
                enqueue,
                outcome,
                seq,
                remote: node,
            } => {
                let e = *enqueue;
                control.add(
                    &e.reply,
                    MailItem::Stored {
                        receiver: e.receiver,
                        message_id: e.message_id,
                        ack: e.ack,
                        outcome,
                    },
                );
                if outcome == StoreOutcome::Stored {
                    let message = Arc::new(QueuedMessage {
                        seq,
                        sender: e.sender,
                        message_id: e.message_id,
                        flags: e.flags,
                        expires_at_ms: e.expires_at_ms,
                        body: e.body,
                    });
                    if let Some(node) = node {
                        // Committed (this runs after the commit), so the other node may
                        // deliver it from the hint.
                        remote.push(Hint::Queued {
                            node,
                            receiver: e.receiver,
                            message: Arc::clone(&message),
                        });
                    } else if unreceived.is_some() {
                        no_node.push(e.receiver);
                    }
                    queued.push((e.receiver, MailItem::Queued(message)));
                }
            }
            Output::Fetched { reply, result } => match result {
                Ok(item) => control.add(&reply, item),
                Err(e) => {
                    warn!(error = %e, "queue fetch failed");
                    control.add(&reply, MailItem::Close(CloseRequest::StorageFailure));
                }
            },
            Output::Created { reply, result } => {
                let _ = reply.send(result);
            }
            Output::Flushed(reply) => flushed.push(reply),
            Output::Login { reply, result } => {
                let _ = reply.send(result);
            }
            Output::Claimed {
                reply,
                result,
                identity,
                previous,
            } => {
                if let (Ok((epoch, _)), Some(node)) = (&result, previous) {
                    remote.push(Hint::Demote {
                        node,
                        identity,
                        epoch: *epoch,
                    });
                }
                let _ = reply.send(result);
            }
            Output::Looked { reply, result } => {
                let _ = reply.send(result);
            }
            Output::Issued { reply, result } => {
                let _ = reply.send(result);
            }
            Output::Redeemed { reply, result } => {
                let _ = reply.send(result);
            }
            Output::Pushing { reply, result } => {
                let _ = reply.send(result);
            }
            Output::Relay(hint) => remote.push(hint),
        }
    }
    for (mailbox, items) in control.groups {
        mailbox.push_all(items);
    }
    deliver(registry, queued);
    // Sorted and deduplicated once, not searched per message: a batch holds up to 4 096.
    no_node.sort_unstable();
    no_node.dedup();
    for identity in no_node {
        if registry.receiver(&identity).is_none() {
            name_unreceived(unreceived, identity);
        }
    }
    for reply in flushed {
        let _ = reply.send(());
    }
    if let Some(hints) = hints {
        for hint in remote {
            // A full hint channel loses the hint, not the message: the catch-up sweep finds it.
            if hints.try_send(hint).is_err() {
                debug!("hint channel full; the sweep delivers instead");
            }
        }
    }
}

/// Hands new messages to the receiving sessions of their identities that are on this node,
/// each inbox woken once.
pub(super) fn deliver(registry: &Registry, items: Vec<(Identity, MailItem)>) {
    if items.is_empty() {
        return;
    }
    let mut deliveries = Grouped::default();
    for (mailbox, item) in registry.receivers_of(items) {
        deliveries.add(&mailbox, item);
    }
    for (mailbox, items) in deliveries.groups {
        mailbox.push_deliveries(items);
    }
}

/// Items grouped by inbox, inboxes in order of first appearance, items in order.
#[derive(Default)]
struct Grouped {
    groups: Vec<(Arc<Mailbox>, Vec<MailItem>)>,
    index: HashMap<*const Mailbox, usize>,
}

impl Grouped {
    fn add(&mut self, mailbox: &Arc<Mailbox>, item: MailItem) {
        let groups = &mut self.groups;
        let i = *self.index.entry(Arc::as_ptr(mailbox)).or_insert_with(|| {
            groups.push((Arc::clone(mailbox), Vec::new()));
            groups.len() - 1
        });
        if let Some((_, items)) = self.groups.get_mut(i) {
            items.push(item);
        }
    }
}
