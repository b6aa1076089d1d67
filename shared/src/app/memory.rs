//! An in-memory record store for tests and native harnesses: the reference behaviour an
//! IndexedDB or SQLite adapter must match (atomic batches, applied in order).

use std::collections::HashMap;

use zeroize::Zeroizing;

use super::records::{Batch, Op, Record, RecordKind};

/// Records by kind and key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryStore {
    /// Hashed, not ordered: a device puts several records per message, and `records` (read once,
    /// at open) sorts.
    records: HashMap<(RecordKind, Vec<u8>), Zeroizing<Vec<u8>>>,
    last_batch: Option<u64>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies every write of a batch, in order. Takes the batch so the records move in
    /// instead of being copied (and the copies zeroized).
    pub fn apply(&mut self, batch: Batch) {
        for op in batch.ops {
            match op {
                Op::Put(record) => {
                    self.records.insert((record.kind, record.key), record.value);
                }
                Op::Delete { kind, key } => {
                    self.records.remove(&(kind, key));
                }
            }
        }
        self.last_batch = Some(batch.id);
    }

    /// Every record, ordered by kind and key, as an adapter reads them back at open.
    #[must_use]
    pub fn records(&self) -> Vec<Record> {
        let mut records: Vec<Record> = self
            .records
            .iter()
            .map(|((kind, key), value)| Record {
                kind: *kind,
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        records.sort_unstable_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        records
    }

    /// How many records of a kind are stored.
    #[must_use]
    pub fn count(&self, kind: RecordKind) -> usize {
        self.records.keys().filter(|(k, _)| *k == kind).count()
    }

    /// The id of the last batch applied.
    #[must_use]
    pub const fn last_batch(&self) -> Option<u64> {
        self.last_batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_replace_and_deletes_remove_in_order() {
        let mut store = MemoryStore::new();
        let r = |v: u8| Record::new(RecordKind::Nonce, vec![1], vec![v]);
        store.apply(Batch {
            id: 1,
            ops: vec![
                Op::Put(r(1)),
                Op::Put(r(2)),
                Op::Delete {
                    kind: RecordKind::Nonce,
                    key: vec![1],
                },
                Op::Put(r(3)),
            ],
        });
        assert_eq!(store.records(), vec![r(3)]);
        assert_eq!(store.count(RecordKind::Nonce), 1);
        assert_eq!(store.count(RecordKind::Message), 0);
        assert_eq!(store.last_batch(), Some(1));
    }
}
