//! [`GroupStore`] in memory: for tests, the simulation and as the reference for the contract.
//!
//! Envelopes are stored once and reference-counted by the queues that hold them, the layout the
//! SQLite store uses too (`docs/mediator.md`).

use std::collections::BTreeMap;

use super::store::{DeviceId, GroupStore, QueueInfo, QueuedReflection, SlotRecord};

/// Why a [`MemoryStore`] call failed: only a caller breaking the contract can cause one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryStoreError {
    /// A queue operation named a slot that does not exist.
    #[error("no slot for device {0}")]
    UnknownSlot(DeviceId),
}

#[derive(Debug, Clone)]
struct MemorySlot {
    record: SlotRecord,
    /// The sequence number the next entry gets.
    next_seq: u64,
    /// Sequence number → envelope id.
    queue: BTreeMap<u64, u64>,
}

#[derive(Clone)]
struct StoredEnvelope {
    body: Vec<u8>,
    stored_at: u64,
    /// How many queue entries point at it.
    refs: u64,
}

impl core::fmt::Debug for StoredEnvelope {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoredEnvelope")
            .field("len", &self.body.len())
            .field("stored_at", &self.stored_at)
            .field("refs", &self.refs)
            .finish()
    }
}

/// A [`GroupStore`] in process memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    slots: BTreeMap<DeviceId, MemorySlot>,
    envelopes: BTreeMap<u64, StoredEnvelope>,
    next_envelope_id: u64,
    staged: Vec<(Vec<u8>, u64)>,
    shared_device_data: Vec<u8>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Distinct envelope bodies held (each stored once however many queues hold it).
    #[must_use]
    pub fn envelope_count(&self) -> usize {
        self.envelopes.len()
    }

    /// Envelopes staged by the open transaction.
    #[must_use]
    pub fn staged_count(&self) -> usize {
        self.staged.len()
    }

    fn slot_mut(&mut self, device_id: DeviceId) -> Result<&mut MemorySlot, MemoryStoreError> {
        self.slots
            .get_mut(&device_id)
            .ok_or(MemoryStoreError::UnknownSlot(device_id))
    }

    fn check_slots(&self, device_ids: &[DeviceId]) -> Result<(), MemoryStoreError> {
        match device_ids.iter().find(|id| !self.slots.contains_key(id)) {
            Some(&missing) => Err(MemoryStoreError::UnknownSlot(missing)),
            None => Ok(()),
        }
    }

    /// Stores a body referenced by `refs` queue entries and returns its id.
    fn store_envelope(&mut self, body: Vec<u8>, stored_at: u64, refs: u64) -> u64 {
        let id = self.next_envelope_id;
        self.next_envelope_id = self.next_envelope_id.saturating_add(1);
        self.envelopes.insert(
            id,
            StoredEnvelope {
                body,
                stored_at,
                refs,
            },
        );
        id
    }

    /// Appends an envelope id to every listed queue; the slots were checked to exist.
    fn append(&mut self, envelope_id: u64, device_ids: &[DeviceId]) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(device_ids.len());
        for device_id in device_ids {
            if let Some(slot) = self.slots.get_mut(device_id) {
                let seq = slot.next_seq;
                slot.next_seq = slot.next_seq.saturating_add(1);
                slot.queue.insert(seq, envelope_id);
                seqs.push(seq);
            }
        }
        seqs
    }

    fn release(&mut self, envelope_id: u64) {
        if let Some(envelope) = self.envelopes.get_mut(&envelope_id) {
            envelope.refs = envelope.refs.saturating_sub(1);
            if envelope.refs == 0 {
                self.envelopes.remove(&envelope_id);
            }
        }
    }
}

impl GroupStore for MemoryStore {
    type Error = MemoryStoreError;

    fn load_slots(&self) -> Result<Vec<SlotRecord>, Self::Error> {
        Ok(self.slots.values().map(|s| s.record.clone()).collect())
    }

    fn put_slot(&mut self, slot: &SlotRecord) -> Result<(), Self::Error> {
        match self.slots.get_mut(&slot.device_id) {
            Some(existing) => existing.record = slot.clone(),
            None => {
                self.slots.insert(
                    slot.device_id,
                    MemorySlot {
                        record: slot.clone(),
                        next_seq: 1,
                        queue: BTreeMap::new(),
                    },
                );
            }
        }
        Ok(())
    }

    fn delete_slot(&mut self, device_id: DeviceId) -> Result<(), Self::Error> {
        if let Some(slot) = self.slots.remove(&device_id) {
            for envelope_id in slot.queue.into_values() {
                self.release(envelope_id);
            }
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        envelope: &[u8],
        stored_at: u64,
        device_ids: &[DeviceId],
    ) -> Result<Vec<u64>, Self::Error> {
        self.check_slots(device_ids)?;
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        let refs = u64::try_from(device_ids.len()).unwrap_or(u64::MAX);
        let id = self.store_envelope(envelope.to_vec(), stored_at, refs);
        Ok(self.append(id, device_ids))
    }

    fn read_queue(
        &self,
        device_id: DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedReflection>, Self::Error> {
        let Some(slot) = self.slots.get(&device_id) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(seq) => core::ops::Bound::Excluded(seq),
            None => core::ops::Bound::Unbounded,
        };
        Ok(slot
            .queue
            .range((start, core::ops::Bound::Unbounded))
            .filter_map(|(&seq, envelope_id)| {
                self.envelopes
                    .get(envelope_id)
                    .map(|envelope| QueuedReflection {
                        seq,
                        stored_at: envelope.stored_at,
                        envelope: envelope.body.clone(),
                    })
            })
            .take(limit)
            .collect())
    }

    fn remove_from_queue(&mut self, device_id: DeviceId, seq: u64) -> Result<bool, Self::Error> {
        let Some(envelope_id) = self.slot_mut(device_id)?.queue.remove(&seq) else {
            return Ok(false);
        };
        self.release(envelope_id);
        Ok(true)
    }

    fn remove_from_queue_many(
        &mut self,
        device_id: DeviceId,
        seqs: &[u64],
    ) -> Result<u64, Self::Error> {
        let slot = self.slot_mut(device_id)?;
        let removed: Vec<u64> = seqs
            .iter()
            .filter_map(|seq| slot.queue.remove(seq))
            .collect();
        for &envelope_id in &removed {
            self.release(envelope_id);
        }
        Ok(u64::try_from(removed.len()).unwrap_or(u64::MAX))
    }

    fn remove_from_queues(
        &mut self,
        batches: &[(DeviceId, Vec<u64>)],
    ) -> Result<Vec<u64>, Self::Error> {
        // Atomic: every slot is checked before anything is removed.
        for (device_id, _) in batches {
            self.slot_mut(*device_id)?;
        }
        batches
            .iter()
            .map(|(device_id, seqs)| self.remove_from_queue_many(*device_id, seqs))
            .collect()
    }

    fn queue_info(&self, device_id: DeviceId) -> Result<QueueInfo, Self::Error> {
        Ok(self
            .slots
            .get(&device_id)
            .map(|slot| QueueInfo {
                len: u64::try_from(slot.queue.len()).unwrap_or(u64::MAX),
                last_seq: slot.queue.last_key_value().map(|(&seq, _)| seq),
            })
            .unwrap_or_default())
    }

    fn stage(&mut self, envelope: &[u8], stored_at: u64) -> Result<(), Self::Error> {
        self.staged.push((envelope.to_vec(), stored_at));
        Ok(())
    }

    fn commit_staged(&mut self, device_ids: &[DeviceId]) -> Result<Vec<u64>, Self::Error> {
        self.check_slots(device_ids)?;
        let refs = u64::try_from(device_ids.len()).unwrap_or(u64::MAX);
        for (body, stored_at) in core::mem::take(&mut self.staged) {
            if refs > 0 {
                let id = self.store_envelope(body, stored_at, refs);
                self.append(id, device_ids);
            }
        }
        Ok(device_ids
            .iter()
            .map(|id| {
                self.slots
                    .get(id)
                    .and_then(|s| s.queue.last_key_value().map(|(&seq, _)| seq))
                    .unwrap_or(0)
            })
            .collect())
    }

    fn discard_staged(&mut self) -> Result<(), Self::Error> {
        self.staged.clear();
        Ok(())
    }

    fn shared_device_data(&self) -> Result<Vec<u8>, Self::Error> {
        Ok(self.shared_device_data.clone())
    }

    fn set_shared_device_data(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        self.shared_device_data = data.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::d2m::DeviceSlotExpirationPolicy;

    fn slot(id: u64) -> SlotRecord {
        SlotRecord {
            device_id: DeviceId(id),
            expiration_policy: DeviceSlotExpirationPolicy::Persistent,
            encrypted_device_info: vec![id as u8],
            last_connected_at: 10,
            last_disconnected_at: None,
        }
    }

    fn store_with(ids: &[u64]) -> MemoryStore {
        let mut store = MemoryStore::new();
        for &id in ids {
            store.put_slot(&slot(id)).unwrap();
        }
        store
    }

    fn seqs(store: &MemoryStore, id: u64) -> Vec<u64> {
        store
            .read_queue(DeviceId(id), None, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn enqueue_stores_the_body_once_for_every_slot() {
        let mut store = store_with(&[1, 2, 3]);
        let got = store
            .enqueue(b"env", 5, &[DeviceId(1), DeviceId(3)])
            .unwrap();
        assert_eq!(got, vec![1, 1]);
        assert_eq!(store.envelope_count(), 1);
        assert_eq!(seqs(&store, 1), vec![1]);
        assert_eq!(seqs(&store, 2), Vec::<u64>::new());
        let entry = &store.read_queue(DeviceId(3), None, 1).unwrap()[0];
        assert_eq!(
            (entry.stored_at, entry.envelope.as_slice()),
            (5, &b"env"[..])
        );
    }

    #[test]
    fn enqueue_batch_numbers_each_queue_in_order_and_fails_whole_on_an_unknown_slot() {
        let mut store = store_with(&[1, 2]);
        store.enqueue(b"first", 4, &[DeviceId(2)]).unwrap();
        let got = store
            .enqueue_batch(
                &[(&b"a"[..], 5), (&b"b"[..], 6)],
                &[DeviceId(1), DeviceId(2)],
            )
            .unwrap();
        assert_eq!(got, vec![vec![1, 2], vec![2, 3]]);
        assert_eq!(seqs(&store, 2), vec![1, 2, 3]);
        let bodies: Vec<(u64, Vec<u8>)> = store
            .read_queue(DeviceId(1), None, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.stored_at, e.envelope))
            .collect();
        assert_eq!(bodies, vec![(5, b"a".to_vec()), (6, b"b".to_vec())]);
        let failed = store.enqueue_batch(&[(&b"c"[..], 7)], &[DeviceId(1), DeviceId(9)]);
        assert_eq!(failed, Err(MemoryStoreError::UnknownSlot(DeviceId(9))));
        assert_eq!(
            store.envelope_count(),
            3,
            "nothing of the failed call stored"
        );
        assert_eq!(
            store.enqueue_batch(&[(&b"d"[..], 8)], &[]).unwrap(),
            vec![Vec::<u64>::new()]
        );
    }

    #[test]
    fn removing_many_takes_the_listed_entries_that_exist_and_frees_their_bodies() {
        let mut store = store_with(&[1, 2]);
        for body in [&b"a"[..], b"b", b"c"] {
            store.enqueue(body, 5, &[DeviceId(1)]).unwrap();
        }
        store.enqueue(b"d", 6, &[DeviceId(1), DeviceId(2)]).unwrap();
        assert_eq!(
            store
                .remove_from_queue_many(DeviceId(1), &[3, 1, 9, 4])
                .unwrap(),
            3
        );
        assert_eq!(seqs(&store, 1), vec![2]);
        assert_eq!(store.envelope_count(), 2, "b, and d still held by slot 2");
        assert_eq!(store.remove_from_queue_many(DeviceId(1), &[]).unwrap(), 0);
        assert_eq!(
            store.remove_from_queue_many(DeviceId(7), &[1]),
            Err(MemoryStoreError::UnknownSlot(DeviceId(7)))
        );
    }

    #[test]
    fn body_is_freed_when_the_last_queue_lets_go() {
        let mut store = store_with(&[1, 2]);
        store
            .enqueue(b"env", 5, &[DeviceId(1), DeviceId(2)])
            .unwrap();
        assert!(store.remove_from_queue(DeviceId(1), 1).unwrap());
        assert_eq!(store.envelope_count(), 1);
        store.delete_slot(DeviceId(2)).unwrap();
        assert_eq!(store.envelope_count(), 0);
    }

    #[test]
    fn sequence_numbers_never_repeat_after_removal() {
        let mut store = store_with(&[1]);
        store.enqueue(b"a", 1, &[DeviceId(1)]).unwrap();
        store.remove_from_queue(DeviceId(1), 1).unwrap();
        assert_eq!(store.enqueue(b"b", 2, &[DeviceId(1)]).unwrap(), vec![2]);
        store.remove_from_queue(DeviceId(1), 2).unwrap();
        assert_eq!(store.enqueue(b"c", 3, &[DeviceId(1)]).unwrap(), vec![3]);
        assert_eq!(
            store.queue_info(DeviceId(1)).unwrap(),
            QueueInfo {
                len: 1,
                last_seq: Some(3)
            }
        );
    }

    #[test]
    fn put_slot_keeps_the_queue_of_an_existing_slot() {
        let mut store = store_with(&[1]);
        store.enqueue(b"a", 1, &[DeviceId(1)]).unwrap();
        let mut record = slot(1);
        record.encrypted_device_info = vec![9];
        store.put_slot(&record).unwrap();
        assert_eq!(seqs(&store, 1), vec![1]);
        assert_eq!(store.load_slots().unwrap(), vec![record]);
    }

    #[test]
    fn enqueue_to_an_unknown_slot_changes_nothing() {
        let mut store = store_with(&[1]);
        assert_eq!(
            store.enqueue(b"a", 1, &[DeviceId(1), DeviceId(7)]),
            Err(MemoryStoreError::UnknownSlot(DeviceId(7)))
        );
        assert_eq!(seqs(&store, 1), Vec::<u64>::new());
        assert_eq!(store.envelope_count(), 0);
    }

    #[test]
    fn acks_of_several_slots_are_removed_in_one_call_or_not_at_all() {
        let mut store = store_with(&[1, 2]);
        let s1 = store.enqueue(b"a", 1, &[DeviceId(1), DeviceId(2)]).unwrap();
        let s2 = store.enqueue(b"b", 1, &[DeviceId(1), DeviceId(2)]).unwrap();
        let failed =
            store.remove_from_queues(&[(DeviceId(1), vec![s1[0]]), (DeviceId(9), vec![1])]);
        assert_eq!(failed, Err(MemoryStoreError::UnknownSlot(DeviceId(9))));
        assert_eq!(seqs(&store, 1), vec![s1[0], s2[0]], "nothing removed");
        let removed = store
            .remove_from_queues(&[
                (DeviceId(1), vec![s1[0], s2[0]]),
                (DeviceId(2), vec![s1[1], 99]),
            ])
            .unwrap();
        assert_eq!(removed, vec![2, 1]);
        assert_eq!(store.envelope_count(), 1, "b is still queued for slot 2");
        assert_eq!(seqs(&store, 2), vec![s2[1]]);
    }

    #[test]
    fn read_queue_pages_after_a_sequence_number() {
        let mut store = store_with(&[1]);
        for i in 0..5_u8 {
            store.enqueue(&[i], 1, &[DeviceId(1)]).unwrap();
        }
        let page: Vec<u64> = store
            .read_queue(DeviceId(1), Some(2), 2)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(page, vec![3, 4]);
    }

    #[test]
    fn commit_moves_staged_envelopes_in_order() {
        let mut store = store_with(&[1, 2, 3]);
        store.enqueue(b"before", 1, &[DeviceId(2)]).unwrap();
        store.stage(b"t1", 7).unwrap();
        store.stage(b"t2", 8).unwrap();
        assert_eq!(store.staged_count(), 2);
        let tails = store.commit_staged(&[DeviceId(2), DeviceId(3)]).unwrap();
        assert_eq!(tails, vec![3, 2]);
        let bodies: Vec<(Vec<u8>, u64)> = store
            .read_queue(DeviceId(2), None, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.envelope, e.stored_at))
            .collect();
        assert_eq!(
            bodies,
            vec![
                (b"before".to_vec(), 1),
                (b"t1".to_vec(), 7),
                (b"t2".to_vec(), 8)
            ]
        );
        assert_eq!(store.staged_count(), 0);
        assert_eq!(store.envelope_count(), 3);
    }

    #[test]
    fn commit_to_an_unknown_slot_keeps_the_staged_list() {
        let mut store = store_with(&[1]);
        store.stage(b"t1", 7).unwrap();
        assert_eq!(
            store.commit_staged(&[DeviceId(9)]),
            Err(MemoryStoreError::UnknownSlot(DeviceId(9)))
        );
        assert_eq!(store.staged_count(), 1);
        store.discard_staged().unwrap();
        assert_eq!(store.staged_count(), 0);
    }

    #[test]
    fn shared_device_data_starts_empty_and_is_replaced() {
        let mut store = MemoryStore::new();
        assert!(store.shared_device_data().unwrap().is_empty());
        store.set_shared_device_data(b"x").unwrap();
        store.set_shared_device_data(b"yz").unwrap();
        assert_eq!(store.shared_device_data().unwrap(), b"yz");
    }
}
