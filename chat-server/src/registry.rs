//! Who is online: identity → csp-device-id → session, and which session of an identity receives
//! (DESIGN §4). At most one session per (identity, device id): a newer one replaces the older.
//! At most one receiving session per identity: the one that sent unblock most recently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::mailbox::{CloseRequest, MailItem, Mailbox};
use crate::types::Identity;

/// A session's registry entry.
#[derive(Debug)]
struct Entry {
    session_id: u64,
    mailbox: Arc<Mailbox>,
}

#[derive(Debug, Default)]
struct Sessions {
    devices: HashMap<u64, Entry>,
    /// The receiving session: device id, session id, and the epoch storage gave it.
    receiver: Option<Receiver>,
    /// The newest epoch another node has released this identity for (its old receiving
    /// session's commands are committed).
    released: u64,
}

#[derive(Debug, Clone)]
struct Receiver {
    device_id: u64,
    session_id: u64,
    epoch: u64,
    /// The highest sequence number the session has taken from its queue, published by the
    /// session for the catch-up sweep.
    cursor: Arc<AtomicU64>,
}

/// The online sessions.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<HashMap<Identity, Sessions>>,
    next_session_id: AtomicU64,
    /// Wakes sessions waiting for a release from another node.
    releases: tokio::sync::Notify,
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Identity, Sessions>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a session; an older session with the same device id is told to close (replaced) and
    /// stops receiving. Returns the new session's id.
    pub fn register(&self, identity: Identity, device_id: u64, mailbox: Arc<Mailbox>) -> u64 {
        let session_id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        let sessions = map.entry(identity).or_default();
        if let Some(old) = sessions.devices.insert(
            device_id,
            Entry {
                session_id,
                mailbox,
            },
        ) {
            if sessions
                .receiver
                .as_ref()
                .is_some_and(|r| r.session_id == old.session_id)
            {
                sessions.receiver = None;
            }
            old.mailbox.push(MailItem::Close(CloseRequest::Replaced));
        }
        session_id
    }

    /// Removes a session if it is still the registered one for its device id.
    pub fn unregister(&self, identity: &Identity, device_id: u64, session_id: u64) {
        let mut map = self.lock();
        let Some(sessions) = map.get_mut(identity) else {
            return;
        };
        if sessions
            .devices
            .get(&device_id)
            .is_some_and(|e| e.session_id == session_id)
        {
            sessions.devices.remove(&device_id);
        }
        if sessions
            .receiver
            .as_ref()
            .is_some_and(|r| r.session_id == session_id)
        {
            sessions.receiver = None;
        }
        if sessions.devices.is_empty() {
            map.remove(identity);
        }
    }

    /// Makes a registered session the receiving one with the epoch storage gave it; the
    /// previous receiving session is demoted. Returns where the session publishes its cursor,
    /// or `None` if the session is no longer registered (it was replaced meanwhile) or a newer
    /// epoch receives already.
    pub fn make_receiver(
        &self,
        identity: &Identity,
        device_id: u64,
        session_id: u64,
        epoch: u64,
    ) -> Option<Arc<AtomicU64>> {
        let mut map = self.lock();
        let sessions = map.get_mut(identity)?;
        if sessions
            .devices
            .get(&device_id)
            .is_none_or(|e| e.session_id != session_id)
        {
            return None;
        }
        if let Some(old) = &sessions.receiver {
            if old.epoch > epoch {
                return None;
            }
            if old.session_id != session_id {
                if let Some(entry) = sessions.devices.get(&old.device_id) {
                    entry.mailbox.push(MailItem::Demoted);
                }
            }
        }
        let cursor = Arc::new(AtomicU64::new(0));
        sessions.receiver = Some(Receiver {
            device_id,
            session_id,
            epoch,
            cursor: Arc::clone(&cursor),
        });
        Some(cursor)
    }

    /// Another node's session of `identity` took over with `epoch`: a local receiving session
    /// with an older epoch stops receiving.
    pub fn demote_before(&self, identity: &Identity, epoch: u64) {
        let mut map = self.lock();
        let Some(sessions) = map.get_mut(identity) else {
            return;
        };
        let Some(old) = sessions.receiver.take_if(|r| r.epoch < epoch) else {
            return;
        };
        if let Some(entry) = sessions.devices.get(&old.device_id) {
            entry.mailbox.push(MailItem::Demoted);
        }
    }

    /// The node that held `identity`'s receiving session before has committed everything that
    /// session handed it, and the database names `epoch` now.
    pub fn released(&self, identity: &Identity, epoch: u64) {
        if let Some(sessions) = self.lock().get_mut(identity) {
            sessions.released = sessions.released.max(epoch);
        }
        self.releases.notify_waiters();
    }

    /// Waits (at most `limit`) until another node released `identity` for `epoch`; returns
    /// whether it did (false: timed out, e.g. that node is dead).
    pub async fn wait_released(&self, identity: &Identity, epoch: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.releases.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .lock()
                .get(identity)
                .is_some_and(|s| s.released >= epoch)
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Tells the receiving session of `identity`, if it is here, to read its queue again
    /// (another node committed a message to it).
    pub fn recheck(&self, identity: &Identity) {
        if let Some(mailbox) = self.receiver(identity) {
            mailbox.push(MailItem::Recheck);
        }
    }

    /// Tells every receiving session here to read its queue again (after the hint listener
    /// reconnected: hints sent meanwhile are lost).
    pub fn recheck_all(&self) {
        let receivers: Vec<Arc<Mailbox>> = {
            let map = self.lock();
            map.values()
                .filter_map(|s| {
                    let r = s.receiver.as_ref()?;
                    s.devices.get(&r.device_id).map(|e| Arc::clone(&e.mailbox))
                })
                .collect()
        };
        for mailbox in receivers {
            mailbox.push(MailItem::Recheck);
        }
    }

    /// Every receiving session here: identity, the cursor it published and its epoch (the
    /// catch-up sweep asks the database which of them are behind or were replaced).
    #[must_use]
    pub fn receiving_cursors(&self) -> Vec<(Identity, u64, u64)> {
        self.lock()
            .iter()
            .filter_map(|(identity, s)| {
                let r = s.receiver.as_ref()?;
                Some((*identity, r.cursor.load(Ordering::Relaxed), r.epoch))
            })
            .collect()
    }

    /// The receiving session's inbox, if one is online.
    #[must_use]
    pub fn receiver(&self, identity: &Identity) -> Option<Arc<Mailbox>> {
        let map = self.lock();
        let sessions = map.get(identity)?;
        let r = sessions.receiver.as_ref()?;
        sessions
            .devices
            .get(&r.device_id)
            .map(|e| Arc::clone(&e.mailbox))
    }

    /// Pairs each item with the receiving session of its identity (items whose identity has
    /// none online are dropped), under one lock; items keep their order.
    pub fn receivers_of<T>(
        &self,
        items: impl IntoIterator<Item = (Identity, T)>,
    ) -> Vec<(Arc<Mailbox>, T)> {
        let map = self.lock();
        items
            .into_iter()
            .filter_map(|(identity, item)| {
                let sessions = map.get(&identity)?;
                let r = sessions.receiver.as_ref()?;
                let entry = sessions.devices.get(&r.device_id)?;
                Some((Arc::clone(&entry.mailbox), item))
            })
            .collect()
    }

    /// Every online session's inbox (for shutdown).
    #[must_use]
    pub fn all(&self) -> Vec<Arc<Mailbox>> {
        self.lock()
            .values()
            .flat_map(|s| s.devices.values().map(|e| Arc::clone(&e.mailbox)))
            .collect()
    }

    /// Number of online sessions.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.lock().values().map(|s| s.devices.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(mailbox: &Mailbox) -> Vec<String> {
        mailbox
            .drain()
            .items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect()
    }

    #[test]
    fn same_device_id_replaces_the_older_session() {
        let registry = Registry::new();
        let (a, b) = (Mailbox::new(), Mailbox::new());
        let first = registry.register(*b"AAAAAAAA", 7, Arc::clone(&a));
        assert!(registry.make_receiver(b"AAAAAAAA", 7, first, 1).is_some());
        let second = registry.register(*b"AAAAAAAA", 7, Arc::clone(&b));
        assert_eq!(kinds(&a), vec!["Close(Replaced)"]);
        // The replaced session no longer receives and cannot become receiver again.
        assert!(registry.receiver(b"AAAAAAAA").is_none());
        assert!(registry.make_receiver(b"AAAAAAAA", 7, first, 2).is_none());
        // Its late unregister does not remove the new one.
        registry.unregister(b"AAAAAAAA", 7, first);
        assert_eq!(registry.session_count(), 1);
        assert!(registry.make_receiver(b"AAAAAAAA", 7, second, 3).is_some());
        assert!(registry.receiver(b"AAAAAAAA").is_some());
    }

    #[test]
    fn latest_unblock_receives_and_the_previous_receiver_is_demoted() {
        let registry = Registry::new();
        let (a, b) = (Mailbox::new(), Mailbox::new());
        let sa = registry.register(*b"AAAAAAAA", 1, Arc::clone(&a));
        let sb = registry.register(*b"AAAAAAAA", 2, Arc::clone(&b));
        assert_eq!(registry.session_count(), 2);
        assert!(registry.make_receiver(b"AAAAAAAA", 1, sa, 1).is_some());
        assert!(registry.make_receiver(b"AAAAAAAA", 2, sb, 2).is_some());
        assert_eq!(kinds(&a), vec!["Demoted"]);
        assert!(kinds(&b).is_empty());
        let receiver = registry.receiver(b"AAAAAAAA").unwrap();
        assert!(Arc::ptr_eq(&receiver, &b));
        registry.unregister(b"AAAAAAAA", 2, sb);
        assert!(registry.receiver(b"AAAAAAAA").is_none());
        registry.unregister(b"AAAAAAAA", 1, sa);
        assert_eq!(registry.session_count(), 0);
    }

    #[test]
    fn an_older_epoch_never_takes_over_and_remote_demotion_respects_epochs() {
        let registry = Registry::new();
        let (a, b) = (Mailbox::new(), Mailbox::new());
        let sa = registry.register(*b"AAAAAAAA", 1, Arc::clone(&a));
        let sb = registry.register(*b"AAAAAAAA", 2, Arc::clone(&b));
        assert!(registry.make_receiver(b"AAAAAAAA", 2, sb, 5).is_some());
        // A claim answered late with an older epoch does not take over.
        assert!(registry.make_receiver(b"AAAAAAAA", 1, sa, 4).is_none());
        assert!(kinds(&b).is_empty());
        // A remote takeover with an older epoch changes nothing; a newer one demotes.
        registry.demote_before(b"AAAAAAAA", 5);
        assert!(registry.receiver(b"AAAAAAAA").is_some());
        registry.recheck(b"AAAAAAAA");
        assert_eq!(kinds(&b), vec!["Recheck"]);
        registry.demote_before(b"AAAAAAAA", 6);
        assert_eq!(kinds(&b), vec!["Demoted"]);
        assert!(registry.receiver(b"AAAAAAAA").is_none());
        registry.recheck_all();
        assert!(kinds(&a).is_empty() && kinds(&b).is_empty());
        assert!(registry.receiving_cursors().is_empty());
        let cursor = registry.make_receiver(b"AAAAAAAA", 1, sa, 7).unwrap();
        cursor.store(42, Ordering::Relaxed);
        assert_eq!(registry.receiving_cursors(), vec![(*b"AAAAAAAA", 42, 7)]);
    }
}
