//! The SQLite backend: one file in the data directory, one node. The worker thread owns the
//! connection, so the sequence counter, the queue sizes and the receiving epochs can live in
//! this struct: nothing else writes the file.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tandem_shared::crypto::PublicKey;
use tandem_shared::csp::MessageFlags;
use tracing::{debug, error, warn};

use crate::directory::{generate_identity, IdentityRecord};
use crate::mailbox::{MailItem, StoreOutcome};
use crate::types::{Identity, QueuedMessage};

use super::sqlite_schema::{from_sql, to_sql};
use super::worker::Output;
use super::{
    identity_record, Backend, Command, Created, Enqueue, LoginInfo, PushTarget, StoreConfig,
    StoreError,
};

/// Attempts to draw an unused identity.
pub(super) const IDENTITY_ATTEMPTS: u32 = 32;

/// The connection and what the worker keeps beside it.
pub(super) struct SqliteBackend {
    conn: Connection,
    config: StoreConfig,
    next_seq: u64,
    /// Messages per receiver queue, for the queue limit.
    counts: HashMap<Identity, u32>,
    /// The receiving epoch per identity (one process: memory is the truth).
    epochs: HashMap<Identity, u64>,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("next_seq", &self.next_seq)
            .field("receivers", &self.counts.len())
            .finish_non_exhaustive()
    }
}

/// Mutable parts one command may touch inside the transaction.
struct Counters<'a> {
    config: &'a StoreConfig,
    counts: &'a mut HashMap<Identity, u32>,
    epochs: &'a mut HashMap<Identity, u64>,
    next_seq: &'a mut u64,
}

impl SqliteBackend {
    /// Reads the sequence counter and queue sizes.
    pub(super) fn load(conn: Connection, config: StoreConfig) -> Result<Self, StoreError> {
        let max: Option<i64> = conn.query_row("SELECT MAX(seq) FROM queue", [], |r| r.get(0))?;
        let counts = count_queues(&conn)?;
        Ok(Self {
            conn,
            config,
            next_seq: max.map_or(1, |m| from_sql(m).saturating_add(1)),
            counts,
            epochs: HashMap::new(),
        })
    }

    /// Recounts the queues from the database (after a failed batch).
    fn recount(&mut self) -> Result<(), StoreError> {
        self.counts = count_queues(&self.conn)?;
        Ok(())
    }
}

impl Backend for SqliteBackend {
    fn queued(&mut self) -> Result<u64, StoreError> {
        Ok(self.counts.values().map(|&c| u64::from(c)).sum())
    }

    /// Applies a batch in one transaction; on a failed commit every answer becomes a failure.
    fn apply(&mut self, batch: &mut Vec<Command>, now: u64) -> Vec<Output> {
        let next_seq_before = self.next_seq;
        let epochs_before = self.epochs.clone();
        let mut outputs = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction()?;
            let mut counters = Counters {
                config: &self.config,
                counts: &mut self.counts,
                epochs: &mut self.epochs,
                next_seq: &mut self.next_seq,
            };
            for command in batch.drain(..) {
                if let Some(out) = apply_one(&tx, &mut counters, command, now) {
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
            self.epochs = epochs_before;
            for out in &mut outputs {
                out.fail();
            }
        }
        outputs
    }
}

/// Every identity in the file (the directory's copy is loaded at start).
pub(super) fn load_identities(conn: &Connection) -> Result<Vec<IdentityRecord>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT identity, public_key, device_cookie, cookie_changed FROM identities")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, Vec<u8>>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, Option<Vec<u8>>>(2)?,
            row.get::<_, bool>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (identity, public_key, cookie, changed) = row?;
        out.push(identity_record(identity, &public_key, cookie, changed)?);
    }
    Ok(out)
}

fn lookup(tx: &Transaction<'_>, identity: &Identity) -> Result<Option<IdentityRecord>, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT identity, public_key, device_cookie, cookie_changed FROM identities WHERE identity = ?1",
        )?
        .query_row(params![&identity[..]], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Option<Vec<u8>>>(2)?,
                row.get::<_, bool>(3)?,
            ))
        })
        .optional()?;
    row.map(|(identity, public_key, cookie, changed)| {
        identity_record(identity, &public_key, cookie, changed)
    })
    .transpose()
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
    c: &mut Counters<'_>,
    command: Command,
    now: u64,
) -> Option<Output> {
    match command {
        Command::Enqueue(enqueue) => {
            let (outcome, seq) =
                match enqueue_one(tx, c.config, c.counts, c.next_seq, &enqueue, now) {
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
                remote: None,
            })
        }
        Command::Remove {
            receiver,
            seq,
            epoch,
        } => {
            if c.epochs.get(&receiver).copied().unwrap_or(0) != epoch {
                debug!(seq, "remove by a demoted session; ignored");
                return None;
            }
            if let Err(e) = remove(tx, c.counts, &receiver, seq) {
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
            ..
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
            if let Err(e) = purge(tx, c.counts, c.config, now) {
                warn!(error = %e, "purge failed");
            }
            None
        }
        Command::Flush(reply) => Some(Output::Flushed(reply)),
        Command::Login { identity, reply } => Some(Output::Login {
            reply,
            result: lookup(tx, &identity).map(|record| LoginInfo {
                record,
                queued: c.counts.get(&identity).copied().unwrap_or(0),
            }),
        }),
        Command::Lookup { identity, reply } => Some(Output::Looked {
            reply,
            result: lookup(tx, &identity),
        }),
        Command::Claim {
            identity, reply, ..
        } => {
            let epoch = c.epochs.entry(identity).or_insert(0);
            *epoch = epoch.saturating_add(1);
            Some(Output::Claimed {
                reply,
                result: Ok((*epoch, false)),
                identity,
                previous: None,
            })
        }
        // One node: nobody to relay to, nobody to tell.
        Command::Relay { .. } | Command::Release { .. } => None,
        // One node: the directory keeps its tokens in memory and never sends these.
        Command::IssueToken { reply, .. } => Some(Output::Issued {
            reply,
            result: Err(StoreError::Unsupported("shared tokens")),
        }),
        Command::RedeemToken { reply, .. } => Some(Output::Redeemed {
            reply,
            result: Err(StoreError::Unsupported("shared tokens")),
        }),
        Command::SetPushUrl { identity, url } => {
            if let Err(e) = tx
                .prepare_cached("UPDATE identities SET push_url = ?1 WHERE identity = ?2")
                .and_then(|mut s| s.execute(params![url, &identity[..]]))
            {
                warn!(error = %e, "push URL update failed");
            }
            None
        }
        Command::PushTarget { identity, reply } => Some(Output::Pushing {
            reply,
            result: tx
                .prepare_cached("SELECT push_url FROM identities WHERE identity = ?1")
                .and_then(|mut s| {
                    s.query_row(params![&identity[..]], |row| {
                        row.get::<_, Option<String>>(0)
                    })
                    .optional()
                })
                .map(|url| PushTarget {
                    url: url.flatten(),
                    queued: c.counts.get(&identity).copied().unwrap_or(0),
                })
                .map_err(StoreError::from),
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
