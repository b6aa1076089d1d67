//! The write-ahead gate: a d2m container leaves the device only once every batch issued before it
//! was queued is confirmed durable. That one rule covers "ack after persist" for `ReflectedAck`s
//! and CSP message-acks, and also keeps siblings from seeing state this device could still lose.

use std::collections::VecDeque;

use super::event::AppError;

/// Containers waiting for their batch, in send order.
#[derive(Debug, Default)]
pub(super) struct Gate {
    queue: VecDeque<(u64, Vec<u8>)>,
    issued: u64,
    confirmed: u64,
}

impl Gate {
    /// Numbers a new batch.
    pub(super) fn issue(&mut self) -> u64 {
        self.issued = self.issued.saturating_add(1);
        self.issued
    }

    /// Queues a container behind every batch issued so far.
    pub(super) fn push(&mut self, bytes: Vec<u8>) {
        self.queue.push_back((self.issued, bytes));
    }

    /// A batch (and, since they are applied in order, every earlier one) is durable.
    pub(super) fn confirm(&mut self, id: u64) -> Result<(), AppError> {
        if id == 0 || id > self.issued {
            return Err(AppError::UnknownBatch(id));
        }
        self.confirmed = self.confirmed.max(id);
        Ok(())
    }

    /// The next container whose batches are durable.
    pub(super) fn pop(&mut self) -> Option<Vec<u8>> {
        match self.queue.front() {
            Some((barrier, _)) if *barrier <= self.confirmed => {
                self.queue.pop_front().map(|(_, bytes)| bytes)
            }
            _ => None,
        }
    }

    /// Containers still held.
    pub(super) fn held(&self) -> usize {
        self.queue.len()
    }

    /// Whether batches are unconfirmed.
    pub(super) const fn unconfirmed(&self) -> bool {
        self.confirmed < self.issued
    }

    /// The connection ended: its containers can never be sent.
    pub(super) fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_wait_for_every_earlier_batch() {
        let mut gate = Gate::default();
        gate.push(vec![0]);
        assert_eq!(gate.pop(), Some(vec![0]), "nothing to wait for");
        let b1 = gate.issue();
        gate.push(vec![1]);
        let b2 = gate.issue();
        gate.push(vec![2]);
        assert!(gate.unconfirmed());
        assert_eq!(gate.pop(), None);
        gate.confirm(b1).unwrap();
        assert_eq!(gate.pop(), Some(vec![1]));
        assert_eq!(gate.pop(), None);
        assert_eq!(gate.held(), 1);
        gate.confirm(b2).unwrap();
        assert_eq!(gate.pop(), Some(vec![2]));
        assert!(!gate.unconfirmed());
    }

    #[test]
    fn unknown_batches_are_refused() {
        let mut gate = Gate::default();
        assert_eq!(gate.confirm(1), Err(AppError::UnknownBatch(1)));
        assert_eq!(gate.confirm(0), Err(AppError::UnknownBatch(0)));
        gate.issue();
        gate.push(vec![1]);
        gate.clear();
        gate.confirm(1).unwrap();
        assert_eq!(gate.pop(), None);
    }
}
