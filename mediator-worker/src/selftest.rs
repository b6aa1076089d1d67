//! The [`GroupStore`] contract checked against the real Durable Object SQLite (development
//! route `/_dev/store-selftest`, run by the smoke test): the store cannot run outside workerd,
//! so these are its unit tests. They mirror `shared`'s `MemoryStore` tests, plus what only SQL
//! can get wrong: a call that fails half-way must leave nothing behind (transactionSync rolls
//! it back), device ids above 2^53 must come back exactly, and commits must keep staging order.

use tandem_shared::mediator::{DeviceId, GroupStore, QueueInfo, SlotRecord};
use tandem_shared::proto::d2m::DeviceSlotExpirationPolicy;
use worker::SqlStorage;

use crate::schema;
use crate::store::{SqlGroupStore, SqlStoreError, StoreCounts};

/// Ids that only survive JavaScript as text: 0, 1, 2^53 + 1, 2^63 and 2^64 - 1.
const IDS: [u64; 5] = [0, 1, (1 << 53) + 1, 1 << 63, u64::MAX];
const A: DeviceId = DeviceId(1);
const B: DeviceId = DeviceId(u64::MAX);
const C: DeviceId = DeviceId(1 << 63);
const MISSING: DeviceId = DeviceId(404);

/// One named check.
type Check = (&'static str, fn(&mut SqlGroupStore) -> Result<(), String>);

/// Wipes the object's tables and runs every check; the names of those that passed, or the
/// first failure.
pub(crate) fn run(
    sql: &SqlStorage,
    store: &mut SqlGroupStore,
) -> Result<Vec<&'static str>, String> {
    schema::create(sql).map_err(|err| format!("creating the tables: {err}"))?;
    schema::wipe(sql).map_err(|err| format!("wiping the tables: {err}"))?;
    let checks: [Check; 11] = [
        ("device ids round-trip exactly", ids_round_trip),
        (
            "put_slot replaces the record and keeps the queue",
            put_keeps_queue,
        ),
        (
            "enqueue stores the body once and numbers per slot",
            enqueue_once,
        ),
        (
            "a failed enqueue leaves nothing behind",
            failed_enqueue_rolls_back,
        ),
        (
            "acks, one, a batch or batches of several slots (an unknown slot undoes all), \
             release the body with the last reference",
            acks_release,
        ),
        ("read_queue pages after a sequence number", read_pages),
        (
            "a failed commit leaves the staged list and the queues as they were",
            failed_commit_rolls_back,
        ),
        (
            "commit keeps staging order, times and numbering",
            commit_in_order,
        ),
        (
            "shared device data starts empty and is replaced",
            shared_data,
        ),
        (
            "enqueue_batch keeps order, bodies and times, numbers per slot; a failed one \
             leaves nothing",
            enqueue_batch_in_order,
        ),
        ("deleting every slot frees every body", delete_frees_all),
    ];
    let mut passed = Vec::with_capacity(checks.len());
    for (name, check) in checks {
        check(store).map_err(|failure| format!("{name}: {failure}"))?;
        passed.push(name);
    }
    Ok(passed)
}

fn ensure(holds: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(what())
    }
}

fn call<T>(what: &str, result: Result<T, SqlStoreError>) -> Result<T, String> {
    result.map_err(|err| format!("{what}: {err}"))
}

fn slot(id: u64, info: Vec<u8>) -> SlotRecord {
    SlotRecord {
        device_id: DeviceId(id),
        expiration_policy: if id.is_multiple_of(2) {
            DeviceSlotExpirationPolicy::Volatile
        } else {
            DeviceSlotExpirationPolicy::Persistent
        },
        encrypted_device_info: info,
        last_connected_at: 1_700_000_000_000 + (id % 1000),
        last_disconnected_at: (id != 0).then_some(1_700_000_000_500),
    }
}

fn counts(store: &SqlGroupStore) -> Result<StoreCounts, String> {
    call("counts", store.counts())
}

fn seqs(store: &SqlGroupStore, id: DeviceId) -> Result<Vec<u64>, String> {
    Ok(call("read_queue", store.read_queue(id, None, usize::MAX))?
        .iter()
        .map(|entry| entry.seq)
        .collect())
}

fn ids_round_trip(store: &mut SqlGroupStore) -> Result<(), String> {
    let mut records: Vec<SlotRecord> = IDS
        .iter()
        .map(|&id| {
            slot(
                id,
                if id == 0 {
                    Vec::new()
                } else {
                    id.to_le_bytes().to_vec()
                },
            )
        })
        .collect();
    for record in &records {
        call("put_slot", store.put_slot(record))?;
    }
    let mut loaded = call("load_slots", store.load_slots())?;
    loaded.sort_by_key(|r| r.device_id);
    records.sort_by_key(|r| r.device_id);
    ensure(loaded == records, || {
        format!("loaded {loaded:?}, stored {records:?}")
    })?;
    for &id in &IDS {
        if id != A.0 && id != B.0 && id != C.0 {
            call("delete_slot", store.delete_slot(DeviceId(id)))?;
        }
    }
    // Deleting a slot that does not exist is fine.
    call("delete_slot", store.delete_slot(MISSING))
}

fn put_keeps_queue(store: &mut SqlGroupStore) -> Result<(), String> {
    call("enqueue", store.enqueue(&[7; 40], 3, &[A]))?;
    let record = slot(A.0, vec![9, 9]);
    call("put_slot", store.put_slot(&record))?;
    ensure(seqs(store, A)? == [1], || "queue of A changed".into())?;
    let loaded = call("load_slots", store.load_slots())?;
    ensure(loaded.contains(&record), || "record not replaced".into())?;
    ensure(call("remove", store.remove_from_queue(A, 1))?, || {
        "entry 1 missing".into()
    })
}

fn enqueue_once(store: &mut SqlGroupStore) -> Result<(), String> {
    let before = counts(store)?;
    let got = call("enqueue", store.enqueue(b"envelope body", 5, &[A, B]))?;
    ensure(got == [2, 1], || {
        format!("sequence numbers {got:?}, expected [2, 1]")
    })?;
    let after = counts(store)?;
    ensure(after.envelopes == before.envelopes + 1, || {
        format!("{after:?}")
    })?;
    ensure(after.queued == before.queued + 2, || format!("{after:?}"))?;
    let entries = call("read_queue", store.read_queue(B, None, 10))?;
    let entry = entries.first().ok_or("B's queue is empty")?;
    ensure(
        entries.len() == 1
            && entry.seq == 1
            && entry.stored_at == 5
            && entry.envelope == b"envelope body",
        || format!("B's queue: {entries:?}"),
    )
}

fn failed_enqueue_rolls_back(store: &mut SqlGroupStore) -> Result<(), String> {
    let before = counts(store)?;
    let info_a = call("queue_info", store.queue_info(A))?;
    // A exists and comes first: its queue row and the body are written before the missing slot
    // is found, so only a rollback can undo them.
    let result = store.enqueue(&[1; 64], 6, &[A, MISSING]);
    ensure(result == Err(SqlStoreError::UnknownSlot(MISSING)), || {
        format!("{result:?}")
    })?;
    let after = counts(store)?;
    ensure(after == before, || {
        format!("before {before:?}, after {after:?}")
    })?;
    let info = call("queue_info", store.queue_info(A))?;
    ensure(info == info_a, || {
        format!("A's queue {info:?}, was {info_a:?}")
    })?;
    let got = call("enqueue", store.enqueue(&[2; 40], 7, &[A]))?;
    ensure(got == [3], || {
        format!("A's counter moved: next is {got:?}, expected [3]")
    })
}

fn acks_release(store: &mut SqlGroupStore) -> Result<(), String> {
    // A holds 2 (shared with B) and 3; B holds 1 (the shared body).
    let before = counts(store)?;
    ensure(call("remove", store.remove_from_queue(A, 2))?, || {
        "A's entry 2 missing".into()
    })?;
    ensure(counts(store)?.envelopes == before.envelopes, || {
        "shared body freed early".into()
    })?;
    ensure(!call("remove", store.remove_from_queue(A, 2))?, || {
        "entry removed twice".into()
    })?;
    ensure(call("remove", store.remove_from_queue(B, 1))?, || {
        "B's entry 1 missing".into()
    })?;
    let after = counts(store)?;
    ensure(after.envelopes + 1 == before.envelopes, || {
        format!("{before:?} → {after:?}")
    })?;
    let many = call("remove many", store.remove_from_queue_many(A, &[]))?;
    ensure(many == 0, || format!("nothing listed, {many} removed"))?;
    let missing = store.remove_from_queue_many(MISSING, &[1]);
    ensure(missing == Err(SqlStoreError::UnknownSlot(MISSING)), || {
        format!("{missing:?}")
    })?;
    let missing = store.remove_from_queue(MISSING, 1);
    ensure(missing == Err(SqlStoreError::UnknownSlot(MISSING)), || {
        format!("{missing:?}")
    })?;
    let info = call("queue_info", store.queue_info(A))?;
    ensure(
        info == QueueInfo {
            len: 1,
            last_seq: Some(3),
        },
        || format!("A: {info:?}"),
    )?;
    let empty = call("queue_info", store.queue_info(MISSING))?;
    ensure(empty == QueueInfo::default(), || {
        format!("unknown slot: {empty:?}")
    })?;
    batched_acks_release(store)?;
    acks_of_several_slots(store)
}

fn acks_of_several_slots(store: &mut SqlGroupStore) -> Result<(), String> {
    // Slots of their own (one above 2^63), deleted at the end.
    const E: DeviceId = DeviceId(78);
    const F: DeviceId = DeviceId(u64::MAX - 5);
    const MISSING: DeviceId = DeviceId(79);
    call("put_slot", store.put_slot(&slot(E.0, vec![1])))?;
    call("put_slot", store.put_slot(&slot(F.0, vec![1])))?;
    let before = counts(store)?;
    let mut e = Vec::new();
    let mut f = Vec::new();
    for body in [[4_u8; 40], [5; 40]] {
        let seqs = call("enqueue", store.enqueue(&body, 5, &[E, F]))?;
        e.extend(seqs.first().copied());
        f.extend(seqs.get(1).copied());
    }
    let failed = store.remove_from_queues(&[(E, e.clone()), (MISSING, vec![1])]);
    ensure(failed == Err(SqlStoreError::UnknownSlot(MISSING)), || {
        format!("unknown slot: {failed:?}")
    })?;
    let kept = seqs(store, E)?;
    ensure(kept == e, || format!("rolled back: {kept:?} != {e:?}"))?;
    let absent = f.iter().max().copied().unwrap_or(0).saturating_add(100);
    let removed = call(
        "remove_from_queues",
        store.remove_from_queues(&[(E, e.clone()), (F, [f.clone(), vec![absent]].concat())]),
    )?;
    ensure(removed == [2, 2], || format!("removed {removed:?}"))?;
    let after = counts(store)?;
    ensure(after == before, || {
        format!("bodies or rows not released: {before:?} → {after:?}")
    })?;
    call("delete_slot", store.delete_slot(E))?;
    call("delete_slot", store.delete_slot(F))
}

fn batched_acks_release(store: &mut SqlGroupStore) -> Result<(), String> {
    // A slot of its own, deleted at the end, so the other checks' counters stay as they were.
    const D: DeviceId = DeviceId(77);
    call("put_slot", store.put_slot(&slot(D.0, vec![1])))?;
    let before = counts(store)?;
    let mut added = Vec::new();
    for body in [[7_u8; 40], [8; 40], [9; 40]] {
        added.extend(call("enqueue", store.enqueue(&body, 5, &[D]))?);
    }
    let absent = added.iter().max().copied().unwrap_or(0).saturating_add(100);
    let listed = [added.clone(), vec![absent]].concat();
    let removed = call("remove many", store.remove_from_queue_many(D, &listed))?;
    ensure(removed == 3, || format!("{removed} removed of {listed:?}"))?;
    let after = counts(store)?;
    ensure(after == before, || {
        format!("bodies or rows not released: {before:?} → {after:?}")
    })?;
    let left = seqs(store, D)?;
    ensure(left.is_empty(), || format!("queue left {left:?}"))?;
    call("delete_slot", store.delete_slot(D))
}

fn read_pages(store: &mut SqlGroupStore) -> Result<(), String> {
    for i in 0..5_u8 {
        call("enqueue", store.enqueue(&[i; 40], 10 + u64::from(i), &[A]))?;
    }
    ensure(seqs(store, A)? == [3, 4, 5, 6, 7, 8], || "A's queue".into())?;
    let page: Vec<u64> = call("read_queue", store.read_queue(A, Some(4), 2))?
        .iter()
        .map(|e| e.seq)
        .collect();
    ensure(page == [5, 6], || format!("page after 4: {page:?}"))?;
    let none = call("read_queue", store.read_queue(A, None, 0))?;
    ensure(none.is_empty(), || "limit 0 returned entries".into())?;
    let big = vec![0xa5; 65_516];
    call("enqueue", store.enqueue(&big, 20, &[A]))?;
    let last = call("read_queue", store.read_queue(A, Some(8), 1))?;
    ensure(last.first().is_some_and(|e| e.envelope == big), || {
        "64 KiB body changed".into()
    })
}

fn failed_commit_rolls_back(store: &mut SqlGroupStore) -> Result<(), String> {
    for (body, at) in [(b"t1", 31), (b"t2", 32), (b"t3", 33)] {
        call("stage", store.stage(body, at))?;
    }
    let before = counts(store)?;
    let queue_a = seqs(store, A)?;
    let result = store.commit_staged(&[A, MISSING]);
    ensure(result == Err(SqlStoreError::UnknownSlot(MISSING)), || {
        format!("{result:?}")
    })?;
    let after = counts(store)?;
    ensure(after == before && after.staged == 3, || {
        format!("{before:?} → {after:?}")
    })?;
    ensure(seqs(store, A)? == queue_a, || "A's queue changed".into())
}

fn commit_in_order(store: &mut SqlGroupStore) -> Result<(), String> {
    call("put_slot", store.put_slot(&slot(C.0, vec![3])))?;
    let before = counts(store)?;
    let last_a = call("queue_info", store.queue_info(A))?
        .last_seq
        .unwrap_or(0);
    let tails = call("commit_staged", store.commit_staged(&[A, C]))?;
    ensure(tails == [last_a + 3, 3], || {
        format!("tails {tails:?}, A was at {last_a}")
    })?;
    let got: Vec<(u64, u64, Vec<u8>)> = call("read_queue", store.read_queue(C, None, 10))?
        .into_iter()
        .map(|e| (e.seq, e.stored_at, e.envelope))
        .collect();
    let expected = vec![
        (1, 31, b"t1".to_vec()),
        (2, 32, b"t2".to_vec()),
        (3, 33, b"t3".to_vec()),
    ];
    ensure(got == expected, || format!("C's queue {got:?}"))?;
    let after = counts(store)?;
    ensure(
        after.staged == 0
            && after.envelopes == before.envelopes + 3
            && after.queued == before.queued + 6,
        || format!("{before:?} → {after:?}"),
    )?;
    // Without slots the staged list is emptied and nothing is stored.
    call("stage", store.stage(b"t4", 34))?;
    let tails = call("commit_staged", store.commit_staged(&[]))?;
    let now = counts(store)?;
    ensure(
        tails.is_empty() && now.staged == 0 && now.envelopes == after.envelopes,
        || format!("{now:?}"),
    )?;
    call("stage", store.stage(b"t5", 35))?;
    call("discard_staged", store.discard_staged())?;
    ensure(counts(store)?.staged == 0, || {
        "discard left staged rows".into()
    })
}

fn shared_data(store: &mut SqlGroupStore) -> Result<(), String> {
    let empty = call("shared", store.shared_device_data())?;
    ensure(empty.is_empty(), || "shared data not empty at first".into())?;
    call("set", store.set_shared_device_data(b"x"))?;
    call("set", store.set_shared_device_data(b"yz"))?;
    let data = call("shared", store.shared_device_data())?;
    ensure(data == b"yz", || format!("shared data {data:?}"))
}

fn enqueue_batch_in_order(store: &mut SqlGroupStore) -> Result<(), String> {
    // Every byte value, the largest body a container carries, and bodies with zeros.
    let large: Vec<u8> = (0..65_516_u32).map(|i| (i % 251) as u8).collect();
    let all: Vec<u8> = (0..=255_u8).collect();
    let batch: [(&[u8], u64); 3] = [(&all, 11), (&large, 12), (&[0, 0, 0], 13)];
    // Counters may be ahead of the queues (entries acked): a probe entry, removed again at
    // once, tells where they are.
    let (first_a, first_b) = match call("enqueue", store.enqueue(b"probe", 10, &[A, B]))?[..] {
        [a, b] => {
            let removed = call("remove", store.remove_from_queue(A, a))?
                && call("remove", store.remove_from_queue(B, b))?;
            ensure(removed, || "probe entries missing".into())?;
            (a + 1, b + 1)
        }
        ref other => return Err(format!("probe numbered {other:?}")),
    };
    let before = counts(store)?;
    let got = call("enqueue_batch", store.enqueue_batch(&batch, &[A, B]))?;
    let expected: Vec<Vec<u64>> = (0..3).map(|k| vec![first_a + k, first_b + k]).collect();
    ensure(got == expected, || {
        format!("sequence numbers {got:?}, expected {expected:?}")
    })?;
    let after = counts(store)?;
    ensure(
        after.envelopes == before.envelopes + 3 && after.queued == before.queued + 6,
        || format!("before {before:?}, after {after:?}"),
    )?;
    for (id, first) in [(A, first_a), (B, first_b)] {
        let entries = call("read_queue", store.read_queue(id, Some(first - 1), 10))?;
        let read: Vec<(u64, u64, &[u8])> = entries
            .iter()
            .map(|e| (e.seq, e.stored_at, e.envelope.as_slice()))
            .collect();
        let want: Vec<(u64, u64, &[u8])> = batch
            .iter()
            .zip(first..)
            .map(|(&(body, at), seq)| (seq, at, body))
            .collect();
        ensure(read == want, || {
            format!(
                "{id:?} reads back {} entries, not the batch in order",
                read.len()
            )
        })?;
    }
    // Over 2 MB of bodies (a long coalesced turn): split into several statements, still one
    // call, in order.
    let big: Vec<(&[u8], u64)> = (0..40).map(|i| (large.as_slice(), 100 + i)).collect();
    let got = call("enqueue_batch (2.6 MB)", store.enqueue_batch(&big, &[A]))?;
    let firsts: Vec<u64> = got
        .iter()
        .filter_map(|seqs| seqs.first().copied())
        .collect();
    let start = first_a + 3;
    ensure(firsts == (start..start + 40).collect::<Vec<_>>(), || {
        format!("2.6 MB batch numbered {firsts:?}")
    })?;
    let entries = call("read_queue", store.read_queue(A, Some(start - 1), 50))?;
    ensure(
        entries.len() == 40
            && entries
                .iter()
                .zip(100..)
                .all(|(e, at)| e.stored_at == at && e.envelope == large),
        || format!("2.6 MB batch reads back {} entries", entries.len()),
    )?;
    call(
        "remove_from_queue_many",
        store.remove_from_queue_many(A, &(start..start + 40).collect::<Vec<_>>()),
    )?;
    let after = counts(store)?;
    // A exists and comes first: only a rollback undoes its rows and the bodies.
    let result = store.enqueue_batch(&batch, &[A, MISSING]);
    ensure(result == Err(SqlStoreError::UnknownSlot(MISSING)), || {
        format!("{result:?}")
    })?;
    let failed = counts(store)?;
    ensure(failed == after, || {
        format!("after the failed batch {failed:?}, was {after:?}")
    })?;
    let seq = match call("enqueue", store.enqueue(b"probe", 14, &[A]))?[..] {
        [seq] => seq,
        ref other => return Err(format!("probe numbered {other:?}")),
    };
    ensure(call("remove", store.remove_from_queue(A, seq))?, || {
        "probe entry missing".into()
    })?;
    ensure(seq == first_a + 43, || {
        format!("A's counter moved in the failed batch: next is {seq}")
    })
}

fn delete_frees_all(store: &mut SqlGroupStore) -> Result<(), String> {
    for id in [A, B, C] {
        call("delete_slot", store.delete_slot(id))?;
    }
    let after = counts(store)?;
    ensure(after == StoreCounts::default(), || {
        format!("left behind: {after:?}")
    })?;
    let seq = call(
        "enqueue",
        store
            .put_slot(&slot(A.0, vec![1]))
            .and_then(|()| store.enqueue(&[0; 40], 1, &[A])),
    )?;
    ensure(seq == [1], || {
        format!("a new slot's counter starts at {seq:?}")
    })
}
