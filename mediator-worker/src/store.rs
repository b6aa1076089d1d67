//! [`GroupStore`] over the Durable Object's SQLite (`docs/mediator.md`, "The store").
//!
//! Atomicity: every call that runs more than one statement runs inside the runtime's
//! `ctx.storage.transactionSync(fn)`; the Rust closure signals failure by throwing, which rolls
//! the whole call back. A single statement is atomic in SQLite by itself.
//!
//! Numbers cross JavaScript on their way into SQLite, and JS numbers are exact only up to 2^53.
//! Device ids are random u64 (bit-cast to i64 in the table), so they travel as decimal text and
//! are converted by SQLite (`CAST(? AS INTEGER)` in, `CAST(device_id AS TEXT)` out). Sequence
//! numbers, times and envelope ids stay far below 2^53 and travel as numbers; a larger value is
//! refused with [`SqlStoreError::OutOfRange`] rather than rounded.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use tandem_shared::crypto::PublicKey;
use tandem_shared::mediator::{DeviceId, GroupStore, QueueInfo, QueuedReflection, SlotRecord};
use tandem_shared::proto::d2m::DeviceSlotExpirationPolicy;
use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, SqlStorage, SqlStorageValue};

use crate::runtime::RawStorage;
use crate::schema;

/// `sql.exec` calls and `transactionSync` calls made by every store in this isolate, for the
/// development stats (docs/worker.md "Where the time goes": statements per envelope).
static STATEMENTS: AtomicU64 = AtomicU64::new(0);
static TRANSACTIONS: AtomicU64 = AtomicU64::new(0);

/// `enqueue_batch` calls and the envelopes they stored (development stats).
static BATCHES: AtomicU64 = AtomicU64::new(0);
static BATCHED: AtomicU64 = AtomicU64::new(0);

/// `(enqueue_batch calls, envelopes stored by them)` so far (development stats).
#[cfg(feature = "dev")]
pub(crate) fn batch_calls() -> (u64, u64) {
    (
        BATCHES.load(Ordering::Relaxed),
        BATCHED.load(Ordering::Relaxed),
    )
}

/// `(statements, transactions)` so far (development stats).
#[cfg(feature = "dev")]
pub(crate) fn sql_calls() -> (u64, u64) {
    (
        STATEMENTS.load(Ordering::Relaxed),
        TRANSACTIONS.load(Ordering::Relaxed),
    )
}

/// The largest integer JavaScript represents exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_EXACT: u64 = (1 << 53) - 1;

/// Why a [`SqlGroupStore`] call failed. Messages carry no stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SqlStoreError {
    /// SQLite (or the runtime's SQL API) refused or failed a statement.
    #[error("SQL statement failed: {0}")]
    Statement(String),
    /// The runtime could not run or commit the transaction.
    #[error("transaction failed: {0}")]
    Transaction(String),
    /// A queue operation named a slot that does not exist (the call changed nothing).
    #[error("no slot for device {0}")]
    UnknownSlot(DeviceId),
    /// A stored row does not have the shape the schema promises.
    #[error("stored row malformed: {0}")]
    MalformedRow(&'static str),
    /// A number too large to pass through JavaScript exactly.
    #[error("value {0} is above 2^53 and cannot be stored exactly")]
    OutOfRange(u64),
}

impl From<worker::Error> for SqlStoreError {
    fn from(err: worker::Error) -> Self {
        Self::Statement(err.to_string())
    }
}

/// One result row, columns in `SELECT` order.
type Row = Vec<SqlStorageValue>;

/// The group's durable state in the Durable Object's SQLite (schema in `schema.rs`).
///
/// The schema is created by the first write that needs it, with the group id, never before: a
/// WebSocket upgrade with any group id, or a peer that never completes its handshake, leaves no
/// storage behind (docs/worker.md "Storage only for a group that exists"). Until then every read
/// finds an empty group.
pub(crate) struct SqlGroupStore {
    sql: SqlStorage,
    storage: RawStorage,
    /// The schema exists; shared with the object, which empties the storage when the last slot
    /// is gone and clears it.
    created: Rc<Cell<bool>>,
    /// Stored with the schema.
    group_id: Option<PublicKey>,
}

impl std::fmt::Debug for SqlGroupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlGroupStore").finish_non_exhaustive()
    }
}

impl SqlGroupStore {
    /// A store over the object's SQL and storage whose schema exists (`schema::create`): the
    /// development stats and the store self-test.
    #[cfg(feature = "dev")]
    pub(crate) fn new(sql: SqlStorage, storage: RawStorage) -> Self {
        Self {
            sql,
            storage,
            created: Rc::new(Cell::new(true)),
            group_id: None,
        }
    }

    /// A store of group `group_id` whose schema exists if `created` says so, and is otherwise
    /// created (with the group id) by the first write.
    pub(crate) const fn lazy(
        sql: SqlStorage,
        storage: RawStorage,
        created: Rc<Cell<bool>>,
        group_id: PublicKey,
    ) -> Self {
        Self {
            sql,
            storage,
            created,
            group_id: Some(group_id),
        }
    }

    /// Creates the schema (and stores the group id) if it does not exist yet.
    fn ensure_created(&self) -> Result<(), SqlStoreError> {
        if self.created.get() {
            return Ok(());
        }
        schema::create(&self.sql)?;
        if let Some(id) = &self.group_id {
            schema::remember_group_id(&self.sql, id)?;
        }
        self.created.set(true);
        Ok(())
    }

    /// Runs `body` in one SQLite transaction: all of it is kept, or none of it.
    fn atomically<T>(
        &self,
        body: impl FnOnce(&SqlStorage) -> Result<T, SqlStoreError>,
    ) -> Result<T, SqlStoreError> {
        let mut body = Some(body);
        let mut outcome: Option<Result<T, SqlStoreError>> = None;
        let sql = &self.sql;
        let mut run = || -> Result<JsValue, JsValue> {
            let result = match body.take() {
                Some(body) => body(sql),
                None => Err(SqlStoreError::Transaction("callback ran twice".into())),
            };
            let failed = result.is_err();
            outcome = Some(result);
            if failed {
                // Throwing is how transactionSync is told to roll back.
                Err(js_sys::Error::new("tandem: rolled back").into())
            } else {
                Ok(JsValue::UNDEFINED)
            }
        };
        TRANSACTIONS.fetch_add(1, Ordering::Relaxed);
        let ran = self.storage.transaction_sync(&mut run);
        match (ran, outcome) {
            (Ok(_), Some(Ok(value))) => Ok(value),
            (_, Some(Err(err))) => Err(err),
            (Err(thrown), _) => Err(SqlStoreError::Transaction(describe(&thrown))),
            (Ok(_), None) => Err(SqlStoreError::Transaction(
                "transactionSync returned without running the callback".into(),
            )),
        }
    }

    /// Rows of every table, for the development stats route.
    #[cfg(feature = "dev")]
    pub(crate) fn counts(&self) -> Result<StoreCounts, SqlStoreError> {
        if !self.created.get() {
            return Ok(StoreCounts::default());
        }
        let count = |table: &'static str| -> Result<u64, SqlStoreError> {
            let rows = run(&self.sql, &format!("SELECT COUNT(*) FROM {table}"), vec![])?;
            first_u64(&rows)
        };
        Ok(StoreCounts {
            slots: count("slot")?,
            queued: count("queue")?,
            envelopes: count("envelope")?,
            staged: count("staged")?,
        })
    }
}

/// Row counts of the store's tables.
#[cfg(feature = "dev")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StoreCounts {
    pub(crate) slots: u64,
    pub(crate) queued: u64,
    pub(crate) envelopes: u64,
    pub(crate) staged: u64,
}

impl GroupStore for SqlGroupStore {
    type Error = SqlStoreError;

    fn load_slots(&self) -> Result<Vec<SlotRecord>, Self::Error> {
        if !self.created.get() {
            return Ok(Vec::new());
        }
        let rows = run(
            &self.sql,
            "SELECT CAST(device_id AS TEXT), expiration_policy, encrypted_device_info, \
             last_connected_at, last_disconnected_at FROM slot",
            vec![],
        )?;
        rows.into_iter().map(slot_of).collect()
    }

    fn put_slot(&mut self, slot: &SlotRecord) -> Result<(), Self::Error> {
        self.ensure_created()?;
        let disconnected = match slot.last_disconnected_at {
            Some(at) => int(at)?,
            None => JsValue::NULL,
        };
        run(
            &self.sql,
            "INSERT INTO slot (device_id, expiration_policy, encrypted_device_info, \
             last_connected_at, last_disconnected_at) VALUES (CAST(? AS INTEGER), ?, ?, ?, ?) \
             ON CONFLICT (device_id) DO UPDATE SET \
             expiration_policy = excluded.expiration_policy, \
             encrypted_device_info = excluded.encrypted_device_info, \
             last_connected_at = excluded.last_connected_at, \
             last_disconnected_at = excluded.last_disconnected_at",
            vec![
                device(slot.device_id),
                JsValue::from(slot.expiration_policy as i32),
                blob(&slot.encrypted_device_info),
                int(slot.last_connected_at)?,
                disconnected,
            ],
        )?;
        Ok(())
    }

    fn delete_slot(&mut self, device_id: DeviceId) -> Result<(), Self::Error> {
        if !self.created.get() {
            return Ok(());
        }
        // The `queue_release` trigger releases the bodies of the removed entries.
        self.atomically(|sql| {
            run(
                sql,
                "DELETE FROM queue WHERE device_id = CAST(? AS INTEGER)",
                vec![device(device_id)],
            )?;
            run(
                sql,
                "DELETE FROM slot WHERE device_id = CAST(? AS INTEGER)",
                vec![device(device_id)],
            )?;
            Ok(())
        })
    }

    fn enqueue(
        &mut self,
        envelope: &[u8],
        stored_at: u64,
        device_ids: &[DeviceId],
    ) -> Result<Vec<u64>, Self::Error> {
        self.ensure_created()?;
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        let refs = int(u64::try_from(device_ids.len()).unwrap_or(u64::MAX))?;
        let stored_at = int(stored_at)?;
        let body = blob(envelope);
        let ids = device_list(device_ids);
        // Three statements whatever the number of slots: each statement costs a crossing into
        // the runtime and back, which dominates the Worker's time per reflect (docs/worker.md
        // "Where the time goes").
        self.atomically(|sql| {
            let rows = run(
                sql,
                "INSERT INTO envelope (body, stored_at, refs) VALUES (?, ?, ?) RETURNING id",
                vec![body, stored_at, refs],
            )?;
            let envelope_id = int(first_u64(&rows)?)?;
            let taken = run(
                sql,
                "UPDATE slot SET next_seq = next_seq + 1 WHERE device_id IN \
                 (SELECT CAST(value AS INTEGER) FROM json_each(?)) \
                 RETURNING CAST(device_id AS TEXT), next_seq - 1",
                vec![ids.clone()],
            )?;
            run(
                sql,
                "INSERT INTO queue (device_id, seq, envelope_id) \
                 SELECT device_id, next_seq - 1, ? FROM slot WHERE device_id IN \
                 (SELECT CAST(value AS INTEGER) FROM json_each(?))",
                vec![envelope_id, ids],
            )?;
            let taken = taken
                .iter()
                .map(|row| Ok((device_at(row, 0)?, u64_at(row, 1)?)))
                .collect::<Result<Vec<_>, SqlStoreError>>()?;
            // Unknown ids fail the call (rolled back); listed twice counts once.
            device_ids
                .iter()
                .map(|&id| {
                    taken
                        .iter()
                        .find(|(taken_id, _)| *taken_id == id)
                        .map(|&(_, seq)| seq)
                        .ok_or(SqlStoreError::UnknownSlot(id))
                })
                .collect()
        })
    }

    fn enqueue_batch(
        &mut self,
        envelopes: &[(&[u8], u64)],
        device_ids: &[DeviceId],
    ) -> Result<Vec<Vec<u64>>, Self::Error> {
        self.ensure_created()?;
        if device_ids.is_empty() || envelopes.is_empty() {
            return Ok(vec![Vec::new(); envelopes.len()]);
        }
        let n = u64::try_from(envelopes.len()).unwrap_or(u64::MAX);
        let refs = int(u64::try_from(device_ids.len()).unwrap_or(u64::MAX))?;
        let ids = device_list(device_ids);
        // One JSON text per chunk of at most MAX_BATCH_BODY_BYTES of bodies: workerd's SQLite
        // refuses a string over its length limit with SQLITE_TOOBIG (a coalesced turn can hold
        // thousands of reflects; docs/worker.md trap 17).
        let mut chunks: Vec<(u64, JsValue)> = Vec::new();
        let mut start = 0;
        while let Some(rest) = envelopes.get(start..).filter(|rest| !rest.is_empty()) {
            let mut bytes = 0_usize;
            let len = rest
                .iter()
                .take_while(|(body, _)| {
                    bytes = bytes.saturating_add(body.len());
                    bytes <= MAX_BATCH_BODY_BYTES
                })
                .count()
                .max(1);
            let chunk = rest.get(..len).unwrap_or(rest);
            let count = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
            chunks.push((count, JsValue::from_str(&envelope_list(chunk)?)));
            start = start.saturating_add(len);
        }
        // Three statements per chunk, whatever the number of envelopes and slots
        // (docs/worker.md "Where the time goes"), all in one transaction.
        self.atomically(|sql| {
            let mut seqs = Vec::with_capacity(envelopes.len());
            for (count, bodies) in &chunks {
                seqs.extend(enqueue_chunk(sql, *count, bodies, &refs, &ids, device_ids)?);
            }
            Ok(seqs)
        })
        .inspect(|_| {
            BATCHES.fetch_add(1, Ordering::Relaxed);
            BATCHED.fetch_add(n, Ordering::Relaxed);
        })
    }

    fn read_queue(
        &self,
        device_id: DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedReflection>, Self::Error> {
        if !self.created.get() {
            return Ok(Vec::new());
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX).min(MAX_EXACT);
        let rows = run(
            &self.sql,
            "SELECT q.seq, e.stored_at, e.body FROM queue q JOIN envelope e ON e.id = q.envelope_id \
             WHERE q.device_id = CAST(? AS INTEGER) AND q.seq > ? ORDER BY q.seq LIMIT ?",
            vec![device(device_id), int(after.unwrap_or(0))?, int(limit)?],
        )?;
        rows.into_iter()
            .map(|mut row| {
                Ok(QueuedReflection {
                    seq: u64_at(&row, 0)?,
                    stored_at: u64_at(&row, 1)?,
                    envelope: take_blob(&mut row, 2)?,
                })
            })
            .collect()
    }

    fn remove_from_queue(&mut self, device_id: DeviceId, seq: u64) -> Result<bool, Self::Error> {
        if !self.created.get() {
            return Ok(false);
        }
        let seq = int(seq)?;
        self.atomically(|sql| remove_one(sql, device_id, seq))
    }

    fn remove_from_queue_many(
        &mut self,
        device_id: DeviceId,
        seqs: &[u64],
    ) -> Result<u64, Self::Error> {
        if !self.created.get() {
            return Ok(0);
        }
        let count = seqs.len();
        let seqs = number_list(seqs)?;
        // One statement for the whole batch; the `queue_release` trigger releases the bodies
        // (one statement per entry plus the reference count was ≈ 2.3 statements per ack).
        // A single statement is atomic by itself, so no `transactionSync`: when the slot does
        // not exist the DELETE removed nothing, and the check after it only reads.
        let removed = run(
            &self.sql,
            "DELETE FROM queue WHERE device_id = CAST(? AS INTEGER) \
             AND seq IN (SELECT value FROM json_each(?)) RETURNING seq",
            vec![device(device_id), seqs],
        )?
        .len();
        // Absent entries are fine, an absent slot is not.
        if (removed < count || count == 0) && !slot_exists(&self.sql, device_id)? {
            return Err(SqlStoreError::UnknownSlot(device_id));
        }
        Ok(u64::try_from(removed).unwrap_or(u64::MAX))
    }

    fn remove_from_queues(
        &mut self,
        batches: &[(DeviceId, Vec<u64>)],
    ) -> Result<Vec<u64>, Self::Error> {
        if !self.created.get() {
            return Ok(vec![0; batches.len()]);
        }
        let mut pairs = String::from("[");
        for (device_id, seqs) in batches {
            let slot = i64::from_ne_bytes(device_id.0.to_ne_bytes());
            for &seq in seqs {
                if seq > MAX_EXACT {
                    return Err(SqlStoreError::OutOfRange(seq));
                }
                if pairs.len() > 1 {
                    pairs.push(',');
                }
                pairs.push_str(&format!("[\"{slot}\",{seq}]"));
            }
        }
        pairs.push(']');
        // One statement for the acks of every listed slot (the `queue_release` trigger releases
        // the bodies). In a transaction only because an unknown slot, found after the DELETE,
        // must undo the other slots' removals.
        let pairs = JsValue::from_str(&pairs);
        self.atomically(|sql| {
            let removed = run(
                sql,
                "DELETE FROM queue WHERE (device_id, seq) IN \
                 (SELECT CAST(json_extract(value, '$[0]') AS INTEGER), json_extract(value, '$[1]') \
                  FROM json_each(?)) RETURNING CAST(device_id AS TEXT)",
                vec![pairs],
            )?
            .iter()
            .map(|row| device_at(row, 0))
            .collect::<Result<Vec<_>, _>>()?;
            batches
                .iter()
                .map(|(device_id, seqs)| {
                    let n = removed.iter().filter(|id| *id == device_id).count();
                    if (n < seqs.len() || seqs.is_empty()) && !slot_exists(sql, *device_id)? {
                        return Err(SqlStoreError::UnknownSlot(*device_id));
                    }
                    Ok(u64::try_from(n).unwrap_or(u64::MAX))
                })
                .collect()
        })
    }

    fn queue_info(&self, device_id: DeviceId) -> Result<QueueInfo, Self::Error> {
        if !self.created.get() {
            return Ok(QueueInfo::default());
        }
        let rows = run(
            &self.sql,
            "SELECT COUNT(*), MAX(seq) FROM queue WHERE device_id = CAST(? AS INTEGER)",
            vec![device(device_id)],
        )?;
        let row = rows
            .first()
            .ok_or(SqlStoreError::MalformedRow("no row from COUNT"))?;
        Ok(QueueInfo {
            len: u64_at(row, 0)?,
            last_seq: opt_u64_at(row, 1)?,
        })
    }

    fn stage(&mut self, envelope: &[u8], stored_at: u64) -> Result<(), Self::Error> {
        self.ensure_created()?;
        run(
            &self.sql,
            "INSERT INTO staged (body, stored_at) VALUES (?, ?)",
            vec![blob(envelope), int(stored_at)?],
        )?;
        Ok(())
    }

    fn commit_staged(&mut self, device_ids: &[DeviceId]) -> Result<Vec<u64>, Self::Error> {
        self.ensure_created()?;
        let refs = int(u64::try_from(device_ids.len()).unwrap_or(u64::MAX))?;
        self.atomically(|sql| {
            for &id in device_ids {
                if !slot_exists(sql, id)? {
                    return Err(SqlStoreError::UnknownSlot(id));
                }
            }
            if !device_ids.is_empty() {
                // Bodies are copied inside SQLite (a transaction may stage thousands of 64 KiB
                // envelopes; none passes through wasm memory). New envelope ids are above `base`
                // and ascend in staging order, which numbers the queue entries.
                let base = int(first_u64(&run(
                    sql,
                    "SELECT COALESCE(MAX(id), 0) FROM envelope",
                    vec![],
                )?)?)?;
                let staged = int(first_u64(&run(sql, "SELECT COUNT(*) FROM staged", vec![])?)?)?;
                run(
                    sql,
                    "INSERT INTO envelope (body, stored_at, refs) \
                     SELECT body, stored_at, ? FROM staged ORDER BY position",
                    vec![refs],
                )?;
                for &id in device_ids {
                    run(
                        sql,
                        "INSERT INTO queue (device_id, seq, envelope_id) \
                         SELECT s.device_id, s.next_seq - 1 + ROW_NUMBER() OVER (ORDER BY e.id), e.id \
                         FROM slot s, envelope e \
                         WHERE s.device_id = CAST(? AS INTEGER) AND e.id > ?",
                        vec![device(id), base.clone()],
                    )?;
                    run(
                        sql,
                        "UPDATE slot SET next_seq = next_seq + ? WHERE device_id = CAST(? AS INTEGER)",
                        vec![staged.clone(), device(id)],
                    )?;
                }
            }
            run(sql, "DELETE FROM staged", vec![])?;
            device_ids
                .iter()
                .map(|&id| {
                    first_u64(&run(
                        sql,
                        "SELECT COALESCE(MAX(seq), 0) FROM queue WHERE device_id = CAST(? AS INTEGER)",
                        vec![device(id)],
                    )?)
                })
                .collect()
        })
    }

    fn discard_staged(&mut self) -> Result<(), Self::Error> {
        if !self.created.get() {
            return Ok(());
        }
        run(&self.sql, "DELETE FROM staged", vec![])?;
        Ok(())
    }

    fn shared_device_data(&self) -> Result<Vec<u8>, Self::Error> {
        if !self.created.get() {
            return Ok(Vec::new());
        }
        let rows = run(&self.sql, "SELECT data FROM shared WHERE id = 0", vec![])?;
        match rows.into_iter().next() {
            Some(mut row) => take_blob(&mut row, 0),
            None => Ok(Vec::new()),
        }
    }

    fn set_shared_device_data(&mut self, data: &[u8]) -> Result<(), Self::Error> {
        self.ensure_created()?;
        run(
            &self.sql,
            "INSERT INTO shared (id, data) VALUES (0, ?) \
             ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            vec![blob(data)],
        )?;
        Ok(())
    }
}

/// Runs one statement and reads every row it returns (a cursor left unread may leave a write
/// statement unfinished).
fn run(sql: &SqlStorage, query: &str, bindings: Vec<JsValue>) -> Result<Vec<Row>, SqlStoreError> {
    STATEMENTS.fetch_add(1, Ordering::Relaxed);
    let cursor = sql.exec_raw(query, bindings)?;
    cursor
        .raw()
        .map(|row| row.map_err(SqlStoreError::from))
        .collect()
}

/// Bodies per `enqueue_batch` statement: their hex (twice this) stays well under the 2 MB that
/// Cloudflare gives as the SQLite limit for one value, and one 65 516-byte envelope always fits.
const MAX_BATCH_BODY_BYTES: usize = 512 * 1024;

/// Stores `count` envelopes given as one JSON text `[["<hex>", stored_at], …]` and queues them,
/// in order, for every slot in `device_ids` (listed as `ids`): three statements, inside the
/// caller's transaction. Per envelope, each slot's sequence number.
fn enqueue_chunk(
    sql: &SqlStorage,
    count: u64,
    bodies: &JsValue,
    refs: &JsValue,
    ids: &JsValue,
    device_ids: &[DeviceId],
) -> Result<Vec<Vec<u64>>, SqlStoreError> {
    let n = int(count)?;
    // Inserted in array order, so the new ids ascend in that order (INTEGER PRIMARY KEY without
    // AUTOINCREMENT: each new row gets the largest id + 1).
    let mut envelope_ids = run(
        sql,
        "INSERT INTO envelope (body, stored_at, refs) \
         SELECT unhex(json_extract(value, '$[0]')), json_extract(value, '$[1]'), ? \
         FROM json_each(?) ORDER BY key RETURNING id",
        vec![refs.clone(), bodies.clone()],
    )?
    .iter()
    .map(|row| u64_at(row, 0))
    .collect::<Result<Vec<_>, _>>()?;
    envelope_ids.sort_unstable();
    let (Some(&low), Some(&high)) = (envelope_ids.first(), envelope_ids.last()) else {
        return Err(SqlStoreError::MalformedRow("no envelope ids returned"));
    };
    if u64::try_from(envelope_ids.len()).ok() != Some(count)
        || high.checked_sub(low).and_then(|d| d.checked_add(1)) != Some(count)
    {
        return Err(SqlStoreError::MalformedRow("envelope ids not consecutive"));
    }
    let taken = run(
        sql,
        "UPDATE slot SET next_seq = next_seq + ? WHERE device_id IN \
         (SELECT CAST(value AS INTEGER) FROM json_each(?)) \
         RETURNING CAST(device_id AS TEXT), next_seq - ?",
        vec![n.clone(), ids.clone(), n.clone()],
    )?;
    run(
        sql,
        "INSERT INTO queue (device_id, seq, envelope_id) \
         SELECT s.device_id, \
                s.next_seq - ? - 1 + ROW_NUMBER() OVER (PARTITION BY s.device_id ORDER BY e.id), \
                e.id \
         FROM slot s, envelope e \
         WHERE s.device_id IN (SELECT CAST(value AS INTEGER) FROM json_each(?)) \
         AND e.id BETWEEN ? AND ?",
        vec![n, ids.clone(), int(low)?, int(high)?],
    )?;
    let taken = taken
        .iter()
        .map(|row| Ok((device_at(row, 0)?, u64_at(row, 1)?)))
        .collect::<Result<Vec<_>, SqlStoreError>>()?;
    // Unknown ids fail the call (rolled back); listed twice counts once.
    let firsts = device_ids
        .iter()
        .map(|&id| {
            taken
                .iter()
                .find(|(taken_id, _)| *taken_id == id)
                .map(|&(_, first)| first)
                .ok_or(SqlStoreError::UnknownSlot(id))
        })
        .collect::<Result<Vec<u64>, _>>()?;
    Ok((0..count)
        .map(|k| firsts.iter().map(|first| first.saturating_add(k)).collect())
        .collect())
}

/// Removes one queue entry (the `queue_release` trigger releases its body when no queue holds
/// it any more); `false` if the entry was not there. Runs inside the caller's transaction.
fn remove_one(sql: &SqlStorage, device_id: DeviceId, seq: JsValue) -> Result<bool, SqlStoreError> {
    let removed = run(
        sql,
        "DELETE FROM queue WHERE device_id = CAST(? AS INTEGER) AND seq = ? RETURNING seq",
        vec![device(device_id), seq],
    )?;
    if removed.is_empty() {
        return if slot_exists(sql, device_id)? {
            Ok(false)
        } else {
            Err(SqlStoreError::UnknownSlot(device_id))
        };
    }
    Ok(true)
}

fn slot_exists(sql: &SqlStorage, device_id: DeviceId) -> Result<bool, SqlStoreError> {
    let rows = run(
        sql,
        "SELECT 1 FROM slot WHERE device_id = CAST(? AS INTEGER)",
        vec![device(device_id)],
    )?;
    Ok(!rows.is_empty())
}

fn slot_of(mut row: Row) -> Result<SlotRecord, SqlStoreError> {
    let policy = i32::try_from(i64_at(&row, 1)?)
        .ok()
        .and_then(|p| DeviceSlotExpirationPolicy::try_from(p).ok())
        .ok_or(SqlStoreError::MalformedRow("unknown expiration policy"))?;
    Ok(SlotRecord {
        device_id: device_at(&row, 0)?,
        expiration_policy: policy,
        encrypted_device_info: take_blob(&mut row, 2)?,
        last_connected_at: u64_at(&row, 3)?,
        last_disconnected_at: opt_u64_at(&row, 4)?,
    })
}

/// A device id for `CAST(? AS INTEGER)`: the u64 bit-cast to i64, in decimal.
fn device(id: DeviceId) -> JsValue {
    JsValue::from_str(&i64::from_ne_bytes(id.0.to_ne_bytes()).to_string())
}

/// Device ids as a JSON array of decimal strings, for `json_each` (`CAST(value AS INTEGER)`).
fn device_list(ids: &[DeviceId]) -> JsValue {
    let mut list = String::with_capacity(ids.len().saturating_mul(22).saturating_add(2));
    list.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push('"');
        list.push_str(&i64::from_ne_bytes(id.0.to_ne_bytes()).to_string());
        list.push('"');
    }
    list.push(']');
    JsValue::from_str(&list)
}

/// Envelopes as a JSON array of `["<hex body>", stored_at]` for `json_each` and `unhex`: one
/// text crosses into the runtime instead of one `Uint8Array` per envelope.
fn envelope_list(envelopes: &[(&[u8], u64)]) -> Result<String, SqlStoreError> {
    let bytes: usize = envelopes.iter().map(|(body, _)| body.len()).sum();
    let mut list = String::with_capacity(
        bytes
            .saturating_mul(2)
            .saturating_add(envelopes.len().saturating_mul(24))
            .saturating_add(2),
    );
    list.push('[');
    for (i, &(body, stored_at)) in envelopes.iter().enumerate() {
        if stored_at > MAX_EXACT {
            return Err(SqlStoreError::OutOfRange(stored_at));
        }
        if i > 0 {
            list.push(',');
        }
        list.push_str("[\"");
        for &byte in body {
            list.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            list.push(char::from_digit(u32::from(byte & 0x0f), 16).unwrap_or('0'));
        }
        list.push_str("\",");
        list.push_str(&stored_at.to_string());
        list.push(']');
    }
    list.push(']');
    Ok(list)
}

/// Numbers as a JSON array for `json_each`; each must be exact in JavaScript too.
fn number_list(values: &[u64]) -> Result<JsValue, SqlStoreError> {
    let mut list = String::with_capacity(values.len().saturating_mul(8).saturating_add(2));
    list.push('[');
    for (i, &value) in values.iter().enumerate() {
        if value > MAX_EXACT {
            return Err(SqlStoreError::OutOfRange(value));
        }
        if i > 0 {
            list.push(',');
        }
        list.push_str(&value.to_string());
    }
    list.push(']');
    Ok(JsValue::from_str(&list))
}

/// A number that JavaScript carries exactly.
fn int(value: u64) -> Result<JsValue, SqlStoreError> {
    if value > MAX_EXACT {
        return Err(SqlStoreError::OutOfRange(value));
    }
    // Exact: value ≤ 2^53 - 1.
    Ok(JsValue::from_f64(value as f64))
}

/// Bytes as a `Uint8Array` (copied into the JS heap, as the runtime needs them).
fn blob(bytes: &[u8]) -> JsValue {
    js_sys::Uint8Array::from(bytes).into()
}

fn describe(thrown: &JsValue) -> String {
    thrown
        .dyn_ref::<js_sys::Error>()
        .map(|err| String::from(err.message()))
        .or_else(|| thrown.as_string())
        .unwrap_or_else(|| "non-Error exception".to_owned())
}

fn i64_at(row: &[SqlStorageValue], column: usize) -> Result<i64, SqlStoreError> {
    match row.get(column) {
        Some(SqlStorageValue::Integer(value)) => Ok(*value),
        Some(SqlStorageValue::Boolean(value)) => Ok(i64::from(*value)),
        _ => Err(SqlStoreError::MalformedRow("expected an integer")),
    }
}

fn u64_at(row: &[SqlStorageValue], column: usize) -> Result<u64, SqlStoreError> {
    u64::try_from(i64_at(row, column)?)
        .map_err(|_| SqlStoreError::MalformedRow("negative where a count or time belongs"))
}

fn opt_u64_at(row: &[SqlStorageValue], column: usize) -> Result<Option<u64>, SqlStoreError> {
    match row.get(column) {
        Some(SqlStorageValue::Null) => Ok(None),
        _ => u64_at(row, column).map(Some),
    }
}

fn first_u64(rows: &[Row]) -> Result<u64, SqlStoreError> {
    let row = rows
        .first()
        .ok_or(SqlStoreError::MalformedRow("expected one row"))?;
    u64_at(row, 0)
}

fn take_blob(row: &mut [SqlStorageValue], column: usize) -> Result<Vec<u8>, SqlStoreError> {
    match row.get_mut(column) {
        Some(SqlStorageValue::Blob(bytes)) => Ok(std::mem::take(bytes)),
        _ => Err(SqlStoreError::MalformedRow("expected a blob")),
    }
}

/// A device id read back as `CAST(device_id AS TEXT)`.
fn device_at(row: &[SqlStorageValue], column: usize) -> Result<DeviceId, SqlStoreError> {
    match row.get(column) {
        Some(SqlStorageValue::String(text)) => text
            .parse::<i64>()
            .map(|id| DeviceId(u64::from_ne_bytes(id.to_ne_bytes())))
            .map_err(|_| SqlStoreError::MalformedRow("device id is not a decimal i64")),
        _ => Err(SqlStoreError::MalformedRow("expected a device id as text")),
    }
}
