//! The storage thread: group commit over one SQLite connection.
//!
//! Loop: wait for one command, take whatever else is waiting (up to [`MAX_BATCH`]), apply all of
//! them in one transaction, commit, then answer them in order. A failed commit answers every
//! message of the batch with `Failed` (none of them was acked, so nothing acked is lost).

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tandem_shared::crypto::PublicKey;
use tandem_shared::csp::MessageFlags;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::directory::generate_identity;
use crate::mailbox::{CloseRequest, MailItem, Mailbox, StoreOutcome};
use crate::registry::Registry;
use crate::types::{now_ms, Identity, QueuedMessage};

use super::schema::{from_sql, to_sql};
use super::{Command, Created, Enqueue, StoreConfig, StoreError};

/// Most commands per transaction.
const MAX_BATCH: usize = 4096;
/// Attempts to draw an unused identity.
const IDENTITY_ATTEMPTS: u32 = 32;

/// The worker's state besides the connection.
pub(super) struct State {
    conn: Connection,
    config: StoreConfig,
    registry: Arc<Registry>,
    next_seq: u64,
    /// Messages per receiver queue, for the queue limit.
    counts: HashMap<Identity, u32>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("next_seq", &self.next_seq)
            .field("receivers", &self.counts.len())
            .finish_non_exhaustive()
    }
}

/// An answer held until the batch is committed.
enum Output {
    Stored {
        enqueue: Box<Enqueue>,
        outcome: StoreOutcome,
        seq: u64,
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
    QueueLength {
        reply: oneshot::Sender<u32>,
        count: u32,
    },
}

impl State {
    /// Reads the sequence counter and queue sizes.
    pub(super) fn load(
        conn: Connection,
        config: StoreConfig,
        registry: Arc<Registry>,
    ) -> Result<Self, StoreError> {
        let max: Option<i64> = conn.query_row("SELECT MAX(seq) FROM queue", [], |r| r.get(0))?;
        let counts = count_queues(&conn)?;
        Ok(Self {
            conn,
            config,
            registry,
            next_seq: max.map_or(1, |m| from_sql(m).saturating_add(1)),
            counts,
        })
    }

    /// Messages queued in total.
    pub(super) fn queued(&self) -> u64 {
        self.counts.values().map(|&c| u64::from(c)).sum()
    }
}

/// Runs until every [`super::Store`] handle is dropped.
pub(super) fn run(mut state: State, mut rx: mpsc::Receiver<Command>) {
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
        let outputs = state.apply(&mut batch);
        let applied = started.elapsed();
        state.answer(outputs);
        tracing::trace!(
            size,
            apply_us = applied.as_micros(),
            total_us = started.elapsed().as_micros(),
            "batch"
        );
    }
    debug!("storage worker stopped");
}

impl State {
    /// Applies a batch in one transaction; on a failed commit every answer becomes a failure.
    fn apply(&mut self, batch: &mut Vec<Command>) -> Vec<Output> {
        let now = now_ms();
        let next_seq_before = self.next_seq;
        let mut outputs = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction()?;
            for command in batch.drain(..) {
                if let Some(out) = apply_one(
                    &tx,
                    &self.config,
                    &mut self.counts,
                    &mut self.next_seq,
                    command,
                    now,
                ) {
                    outputs.push(out);
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            error!(error = %e, "storage batch failed; nothing in it is acked");
            if let Err(e) = self.recount() {
                error!(error = %e, "queue recount failed");
            }
            self.next_seq = next_seq_before.max(self.next_seq);
            for out in &mut outputs {
                match out {
                    Output::Stored { outcome, .. } => *outcome = StoreOutcome::Failed,
                    Output::Fetched { result, .. } => *result = Err(StoreError::Stopped),
                    Output::Created { result, .. } => *result = Err(StoreError::Stopped),
                    Output::Flushed(_) | Output::QueueLength { .. } => {}
                }
            }
        }
        outputs
    }

    /// Answers the commands of a committed (or failed) batch, in order; new queue entries are
    /// offered to the receivers' sessions last. Everything for one inbox goes in with one
    /// wake-up: waking a session once per message from this thread would cost more than the SQL.
    fn answer(&self, outputs: Vec<Output>) {
        let mut control = Grouped::default();
        let mut queued: Vec<(Identity, MailItem)> = Vec::new();
        for out in outputs {
            match out {
                Output::Stored {
                    enqueue,
                    outcome,
                    seq,
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
                        queued.push((
                            e.receiver,
                            MailItem::Queued(Arc::new(QueuedMessage {
                                seq,
                                sender: e.sender,
                                message_id: e.message_id,
                                flags: e.flags,
                                expires_at_ms: e.expires_at_ms,
                                body: e.body,
                            })),
                        ));
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
                Output::Flushed(reply) => {
                    let _ = reply.send(());
                }
                Output::QueueLength { reply, count } => {
                    let _ = reply.send(count);
                }
            }
        }
        for (mailbox, items) in control.groups {
            mailbox.push_all(items);
        }
        if !queued.is_empty() {
            let mut deliveries = Grouped::default();
            for (mailbox, item) in self.registry.receivers_of(queued) {
                deliveries.add(&mailbox, item);
            }
            for (mailbox, items) in deliveries.groups {
                mailbox.push_deliveries(items);
            }
        }
    }

    /// Recounts the queues from the database (after a failed batch).
    fn recount(&mut self) -> Result<(), StoreError> {
        self.counts = count_queues(&self.conn)?;
        Ok(())
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

fn count_queues(conn: &Connection) -> Result<HashMap<Identity, u32>, StoreError> {
    let mut counts = HashMap::new();
    let mut stmt = conn.prepare("SELECT receiver, COUNT(*) FROM queue GROUP BY receiver")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (receiver, count) = row?;
        let receiver: Identity = receiver
            .try_into()
            .map_err(|_| StoreError::Corrupt("queue.receiver"))?;
        counts.insert(receiver, u32::try_from(count).unwrap_or(u32::MAX));
    }
    Ok(counts)
}

fn apply_one(
    tx: &Transaction<'_>,
    config: &StoreConfig,
    counts: &mut HashMap<Identity, u32>,
    next_seq: &mut u64,
    command: Command,
    now: u64,
) -> Option<Output> {
    match command {
        Command::Enqueue(enqueue) => {
            let (outcome, seq) = match enqueue_one(tx, config, counts, next_seq, &enqueue, now) {
                Ok(v) => v,
                Err(e) => {
                    warn!(error = %e, "enqueue failed");
                    (StoreOutcome::Failed, 0)
                }
            };
            Some(Output::Stored {
                enqueue,
                outcome,
                seq,
            })
        }
        Command::Remove { receiver, seq } => {
            if let Err(e) = remove(tx, counts, &receiver, seq) {
                warn!(error = %e, seq, "remove failed");
            }
            None
        }
        Command::Fetch {
            receiver,
            after,
            limit,
            backlog,
            reply,
        } => Some(Output::Fetched {
            reply,
            result: fetch(tx, &receiver, after, limit, backlog, now),
        }),
        Command::CreateIdentity { public_key, reply } => Some(Output::Created {
            reply,
            result: create_identity(tx, &public_key, now),
        }),
        Command::SetDeviceCookie {
            identity,
            cookie,
            changed,
        } => {
            if let Err(e) = tx
                .prepare_cached(
                    "UPDATE identities SET device_cookie = ?1, cookie_changed = ?2 WHERE identity = ?3",
                )
                .and_then(|mut s| s.execute(params![&cookie[..], changed, &identity[..]]))
            {
                warn!(error = %e, "device cookie update failed");
            }
            None
        }
        Command::Purge => {
            if let Err(e) = purge(tx, counts, config, now) {
                warn!(error = %e, "purge failed");
            }
            None
        }
        Command::Flush(reply) => Some(Output::Flushed(reply)),
        Command::QueueLength { receiver, reply } => Some(Output::QueueLength {
            reply,
            count: counts.get(&receiver).copied().unwrap_or(0),
        }),
    }
}

fn enqueue_one(
    tx: &Transaction<'_>,
    config: &StoreConfig,
    counts: &mut HashMap<Identity, u32>,
    next_seq: &mut u64,
    e: &Enqueue,
    now: u64,
) -> Result<(StoreOutcome, u64), StoreError> {
    let fresh = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO seen (receiver, sender, message_id, at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            &e.receiver[..],
            &e.sender[..],
            to_sql(e.message_id),
            to_sql(now)
        ])?;
    if fresh == 0 {
        return Ok((StoreOutcome::Duplicate, 0));
    }
    let count = counts.get(&e.receiver).copied().unwrap_or(0);
    if count >= config.max_queue {
        tx.prepare_cached(
            "DELETE FROM seen WHERE receiver = ?1 AND sender = ?2 AND message_id = ?3",
        )?
        .execute(params![
            &e.receiver[..],
            &e.sender[..],
            to_sql(e.message_id)
        ])?;
        return Ok((StoreOutcome::QueueFull, 0));
    }
    let seq = *next_seq;
    tx.prepare_cached(
        "INSERT INTO queue (receiver, seq, sender, message_id, flags, expires_at, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        &e.receiver[..],
        to_sql(seq),
        &e.sender[..],
        to_sql(e.message_id),
        e.flags.bits(),
        e.expires_at_ms.map(to_sql),
        &e.body[..]
    ])?;
    *next_seq = seq.saturating_add(1);
    counts.insert(e.receiver, count.saturating_add(1));
    Ok((StoreOutcome::Stored, seq))
}

fn decrement(counts: &mut HashMap<Identity, u32>, receiver: &Identity) {
    if let Some(count) = counts.get_mut(receiver) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(receiver);
        }
    }
}

fn remove(
    tx: &Transaction<'_>,
    counts: &mut HashMap<Identity, u32>,
    receiver: &Identity,
    seq: u64,
) -> Result<(), StoreError> {
    let removed = tx
        .prepare_cached("DELETE FROM queue WHERE receiver = ?1 AND seq = ?2")?
        .execute(params![&receiver[..], to_sql(seq)])?;
    if removed > 0 {
        decrement(counts, receiver);
    }
    Ok(())
}

fn fetch(
    tx: &Transaction<'_>,
    receiver: &Identity,
    after: u64,
    limit: usize,
    backlog: bool,
    now: u64,
) -> Result<MailItem, StoreError> {
    let backlog_end = if backlog {
        let max: Option<i64> = tx
            .prepare_cached("SELECT MAX(seq) FROM queue WHERE receiver = ?1")?
            .query_row(params![&receiver[..]], |r| r.get(0))?;
        Some(max.map(from_sql))
    } else {
        None
    };
    let mut stmt = tx.prepare_cached(
        "SELECT seq, sender, message_id, flags, expires_at, body FROM queue \
         WHERE receiver = ?1 AND seq > ?2 AND (expires_at IS NULL OR expires_at > ?3) \
         ORDER BY seq LIMIT ?4",
    )?;
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(
        params![&receiver[..], to_sql(after), to_sql(now), limit_sql],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, u8>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
            ))
        },
    )?;
    let mut messages = Vec::new();
    for row in rows {
        let (seq, sender, message_id, flags, expires_at, body) = row?;
        messages.push(Arc::new(QueuedMessage {
            seq: from_sql(seq),
            sender: sender
                .try_into()
                .map_err(|_| StoreError::Corrupt("queue.sender"))?,
            message_id: from_sql(message_id),
            flags: MessageFlags(flags),
            expires_at_ms: expires_at.map(from_sql),
            body: Arc::from(body),
        }));
    }
    let complete = messages.len() < limit;
    Ok(MailItem::Fetched {
        messages,
        complete,
        backlog_end,
    })
}

fn create_identity(
    tx: &Transaction<'_>,
    public_key: &PublicKey,
    now: u64,
) -> Result<Created, StoreError> {
    let existing: Option<Vec<u8>> = tx
        .prepare_cached("SELECT identity FROM identities WHERE public_key = ?1")?
        .query_row(params![&public_key.as_bytes()[..]], |r| r.get(0))
        .optional()?;
    if let Some(identity) = existing {
        let identity = identity
            .try_into()
            .map_err(|_| StoreError::Corrupt("identities.identity"))?;
        return Ok(Created {
            identity,
            existed: true,
        });
    }
    let mut rng = rand::thread_rng();
    for _ in 0..IDENTITY_ATTEMPTS {
        let identity = generate_identity(&mut rng);
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO identities (identity, public_key, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                &identity[..],
                &public_key.as_bytes()[..],
                to_sql(now)
            ])?;
        if inserted == 1 {
            return Ok(Created {
                identity,
                existed: false,
            });
        }
        // Identity collision: draw again.
    }
    Err(StoreError::IdentitySpace(IDENTITY_ATTEMPTS))
}

fn purge(
    tx: &Transaction<'_>,
    counts: &mut HashMap<Identity, u32>,
    config: &StoreConfig,
    now: u64,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM queue WHERE expires_at IS NOT NULL AND expires_at <= ?1 RETURNING receiver",
    )?;
    let receivers = stmt.query_map(params![to_sql(now)], |r| r.get::<_, Vec<u8>>(0))?;
    let mut expired = 0_u64;
    for receiver in receivers {
        if let Ok(receiver) = Identity::try_from(receiver?) {
            decrement(counts, &receiver);
            expired = expired.saturating_add(1);
        }
    }
    let cutoff = now.saturating_sub(config.dedupe_window_ms);
    let forgotten = tx
        .prepare_cached("DELETE FROM seen WHERE at < ?1")?
        .execute(params![to_sql(cutoff)])?;
    if expired > 0 || forgotten > 0 {
        debug!(expired, forgotten, "purged");
    }
    Ok(())
}
