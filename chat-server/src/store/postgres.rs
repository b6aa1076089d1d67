//! The PostgreSQL backend: several chat-server nodes on one database (docs/chat-server.md
//! "Several nodes").
//!
//! The database holds everything that must be the same on every node: identities, creation
//! tokens, queues, dedupe keys and which session receives each identity (with an epoch). A
//! node keeps only its own connections in memory. Per receiver, sequence numbers come from a
//! counter row (`mailboxes.next_seq`) that the enqueuing transaction locks until it commits, so
//! a receiver's sequence numbers are gapless and commit in order on every node: a session that
//! follows its queue by cursor never passes a message that another node has yet to commit.
//!
//! A batch is one transaction: its removals in one statement, its messages in one call of
//! `tandem_enqueue` (sorted by receiver, so two nodes' batches lock counter rows in the same
//! order and cannot deadlock), the rest pipelined; a few statements per batch instead of a few
//! per message is what keeps PostgreSQL's CPU per message near SQLite's. A batch is answered
//! only after `COMMIT` returns (with a synchronous standby, after the standby has it). Other
//! nodes hear about new messages and demotions through `NOTIFY`, sent by [`notifier`] on its own
//! connection after the commit; a lost notification costs latency only, because every node
//! checks its receiving sessions against the database every sweep interval ([`sweep`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::{join4, join_all};
use tandem_shared::crypto::PublicKey;
use tandem_shared::csp::MessageFlags;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tracing::{debug, error, info, warn};

use crate::directory::{generate_identity, IdentityRecord, TOKEN_LEN, TOKEN_TTL};
use crate::mailbox::{MailItem, StoreOutcome};
use crate::registry::Registry;
use crate::types::{Identity, QueuedMessage};

use super::hints::{apply_hints, chunk_payload, Hint};
use super::sqlite::IDENTITY_ATTEMPTS;
use super::sqlite_schema::{from_sql, to_sql};
use super::worker::Output;
use super::{
    identity_record, Backend, Command, Created, Enqueue, LoginInfo, PendingToken, PushTarget,
    StoreConfig, StoreError,
};

/// Connections per node besides the storage threads': the notifier's, the sweep's,
/// housekeeping, and one spare while a broken one is replaced.
const POOL_EXTRA: usize = 4;
/// Tries of a batch that the database aborted for a deadlock or a serialization failure.
const BATCH_ATTEMPTS: u32 = 5;
/// Advisory lock held while migrations run (any 64-bit constant unique to Tandem).
const MIGRATION_LOCK: i64 = 0x7461_6e64_656d_0001;
/// Advisory lock of the node doing housekeeping right now.
pub const HOUSEKEEPING_LOCK: i64 = 0x7461_6e64_656d_0002;
/// Most creation tokens pending in the whole server group.
const MAX_SHARED_TOKENS: i64 = 100_000;

/// The schema, one entry per version; a database is brought to the newest in order, each
/// version in its own transaction, and a database newer than this binary is refused.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("postgres_v1.sql")),
    (2, include_str!("postgres_v2.sql")),
];

/// Where the database is and how nodes talk.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user@host1:port1,host2:port2/db?target_session_attrs=read-write`.
    pub url: String,
    /// How often each node checks its receiving sessions against the database (catch-up sweep).
    pub sweep_interval: Duration,
    /// Whether nodes hint each other through `LISTEN`/`NOTIFY` (else the sweep alone).
    pub hints: bool,
    /// Storage threads (each with its own connection and batches).
    pub connections: usize,
}

/// The `NOTIFY` channel of a node.
#[must_use]
pub(super) fn channel(node: i64) -> String {
    format!("tandem_node_{node}")
}

/// Builds the pool from a URL (`postgres://…` or a key=value string).
pub(super) fn pool(url: &str, storage_threads: usize) -> Result<Pool, StoreError> {
    let config: tokio_postgres::Config =
        url.parse().map_err(|e| StoreError::Url(format!("{e}")))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(storage_threads + POOL_EXTRA)
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get()
        .await
        .map_err(|e| StoreError::Pool(e.to_string()))
}

/// Brings the schema to the newest version, one node at a time.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = client(pool).await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tandem_schema (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        let current: i32 = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM tandem_schema", &[])
            .await?
            .get(0);
        let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if current > newest {
            return Err(StoreError::Url(format!(
                "the database has schema version {current}; this server knows up to {newest}"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO tandem_schema (version, applied_at) VALUES ($1, $2)",
                &[version, &to_sql(crate::types::now_ms())],
            )
            .await?;
            tx.commit().await?;
            info!(version, "database schema migrated");
        }
        Ok(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

/// Every statement a batch runs, prepared on each connection before its first batch: the
/// statements of a batch are pipelined in command order, which holds only if none of them has
/// to wait for its own preparation first.
const SQL: [&str; 19] = [
    REMOVE,
    SET_COOKIE,
    SET_PUSH_URL,
    PUSH_URL,
    RECEIVING_NODE,
    QUEUED,
    CLAIM_PREVIOUS,
    CLAIM,
    RELEASE,
    READING,
    ISSUE_TOKEN,
    REDEEM_TOKEN,
    ENQUEUE,
    MAX_SEQ,
    PAGE,
    PAGES,
    LOOKUP,
    BY_PUBLIC_KEY,
    INSERT_IDENTITY,
];

const REMOVE: &str = "DELETE FROM queue q \
     USING UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[]) AS r(receiver, seq, epoch), receiving e \
     WHERE q.receiver = r.receiver AND q.seq = r.seq \
     AND e.identity = r.receiver AND r.epoch >= e.reading AND r.epoch <= e.epoch";
const SET_COOKIE: &str =
    "UPDATE identities SET device_cookie = $1, cookie_changed = $2 WHERE identity = $3";
const RECEIVING_NODE: &str = "SELECT node FROM receiving WHERE identity = $1";
const QUEUED: &str = "SELECT COUNT(*) FROM queue WHERE receiver = $1";
const SET_PUSH_URL: &str = "UPDATE identities SET push_url = $1 WHERE identity = $2";
const PUSH_URL: &str = "SELECT push_url FROM identities WHERE identity = $1";
const READING: &str =
    "UPDATE receiving SET reading = GREATEST(reading, $2) WHERE identity = $1 AND epoch = $2";
// The outer SELECT sees the row as it was before the UPDATE: the node that holds it now.
const RELEASE: &str = "WITH u AS (UPDATE receiving SET node = NULL \
     WHERE identity = $1 AND node = $2 AND session = $3 RETURNING 1) \
     SELECT node, epoch FROM receiving WHERE identity = $1";
// Two statements: a CTE cannot read the row the same statement's upsert changes.
const CLAIM_PREVIOUS: &str = "SELECT node FROM receiving WHERE identity = $1 FOR UPDATE";
const CLAIM: &str =
    "INSERT INTO receiving AS r (identity, node, session, epoch) VALUES ($1, $2, $3, 1) \
     ON CONFLICT (identity) DO UPDATE \
     SET node = EXCLUDED.node, session = EXCLUDED.session, epoch = r.epoch + 1 \
     RETURNING r.epoch";
const ISSUE_TOKEN: &str = "INSERT INTO tokens (token, public_key, challenge, issued_at) \
                         SELECT $1, $2, $3, $4 WHERE (SELECT COUNT(*) FROM tokens WHERE issued_at > $5) < $6";
const REDEEM_TOKEN: &str =
    "DELETE FROM tokens WHERE token = $1 RETURNING token, public_key, challenge, issued_at";
const ENQUEUE: &str =
    "SELECT o_outcome, o_seq, o_node FROM tandem_enqueue($1, $2, $3, $4, $5, $6, $7, $8)";
const MAX_SEQ: &str = "SELECT MAX(seq) FROM queue WHERE receiver = $1";
const PAGE: &str = "SELECT seq, sender, message_id, flags, expires_at, body FROM queue \
             WHERE receiver = $1 AND seq > $2 AND (expires_at IS NULL OR expires_at > $3) \
             ORDER BY seq LIMIT $4";
const PAGES: &str = "SELECT f.i, q.seq, q.sender, q.message_id, q.flags, q.expires_at, q.body \
     FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[]) WITH ORDINALITY AS f(receiver, after, lim, i) \
     CROSS JOIN LATERAL (SELECT * FROM queue q WHERE q.receiver = f.receiver AND q.seq > f.after \
     AND (q.expires_at IS NULL OR q.expires_at > $4) ORDER BY q.seq LIMIT f.lim) q \
     ORDER BY f.i, q.seq";
const LOOKUP: &str = "SELECT identity, public_key, device_cookie, cookie_changed FROM identities WHERE identity = $1";
const BY_PUBLIC_KEY: &str = "SELECT identity FROM identities WHERE public_key = $1";
const INSERT_IDENTITY: &str =
    "INSERT INTO identities (identity, public_key, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING";

/// The PostgreSQL side of a storage worker (one per storage thread; they share the pool).
#[derive(Clone)]
pub(super) struct PgBackend {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    node: i64,
    config: StoreConfig,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What one command produced inside the transaction (its answer is built after the commit).
enum Done {
    Nothing,
    Enqueued(StoreOutcome, u64, Option<i64>),
    Fetched(MailItem),
    Created(Created),
    Login(LoginInfo),
    Claimed(u64, Option<i64>),
    Looked(Option<IdentityRecord>),
    Issued(bool),
    Redeemed(Option<PendingToken>),
    Pushing(PushTarget),
    /// The other node that receives for a relayed message's receiver.
    Relayed(Option<i64>),
    /// The other node (and its epoch) that holds an identity a released session held.
    Released(Option<(i64, u64)>),
}

/// Whether a command runs in one of the batch-wide statements rather than on its own.
const fn batched(command: &Command) -> bool {
    matches!(
        command,
        Command::Enqueue(_) | Command::Remove { .. } | Command::Fetch { backlog: false, .. }
    )
}

/// The order in which a batch's commands run, so that every batch (on any node) takes its row
/// locks in one global order and two batches cannot wait for each other: queue and counter
/// rows first (removals, enqueues), in receiver order; then `receiving` rows (claims,
/// releases, the first read that sets `reading`), in identity order; then `identities` rows
/// (device cookies), in identity order; the rest after. The sort is stable, so one identity's
/// commands keep their order.
fn lock_order(command: &Command) -> (u8, Identity) {
    match command {
        Command::Enqueue(e) => (0, e.receiver),
        Command::Remove { receiver, .. } => (0, *receiver),
        Command::Claim { identity, .. }
        | Command::Release { identity, .. }
        | Command::Fetch {
            receiver: identity,
            backlog: true,
            ..
        } => (1, *identity),
        Command::SetDeviceCookie { identity, .. } | Command::SetPushUrl { identity, .. } => {
            (2, *identity)
        }
        _ => (3, [0; 8]),
    }
}

impl PgBackend {
    /// Connects, migrates, and registers this node (a fresh node id per start).
    pub(super) async fn connect(
        settings: &PgSettings,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        let pool = pool(&settings.url, settings.connections)?;
        migrate(&pool).await?;
        let node: i64 = client(&pool)
            .await?
            .query_one("SELECT nextval('tandem_nodes')", &[])
            .await?
            .get(0);
        info!(node, "chat server node registered");
        Ok(Self {
            pool,
            runtime: tokio::runtime::Handle::current(),
            node,
            config,
        })
    }

    /// This node's id (its `NOTIFY` channel is [`channel`] of it).
    pub(super) const fn node(&self) -> i64 {
        self.node
    }

    /// A clone of the pool, for the notifier and housekeeping.
    pub(super) fn pool(&self) -> Pool {
        self.pool.clone()
    }

    pub(super) async fn queued_total(&self) -> Result<u64, StoreError> {
        let total: i64 = client(&self.pool)
            .await?
            .query_one("SELECT COUNT(*) FROM queue", &[])
            .await?
            .get(0);
        Ok(u64::try_from(total).unwrap_or(0))
    }

    async fn apply_async(&self, batch: &mut Vec<Command>, now: u64) -> Vec<Output> {
        let mut commands: Vec<Command> = Vec::with_capacity(batch.len());
        let mut purge = false;
        for command in batch.drain(..) {
            if matches!(command, Command::Purge) {
                purge = true;
            } else {
                commands.push(command);
            }
        }
        commands.sort_by_key(lock_order);
        let mut attempt = 1;
        let dones = loop {
            match self.transaction(&commands, now).await {
                // The database rolled the whole batch back and nothing of it was answered, so
                // running it again is safe; without this its messages would not be acked and
                // its sessions closed for a conflict that a second try resolves.
                Err(e) if attempt < BATCH_ATTEMPTS && e.is_conflict() => {
                    warn!(attempt, error = %e, "storage batch aborted by a lock conflict; retrying");
                    attempt += 1;
                }
                done => break done,
            }
        };
        let failed = dones.is_err();
        if let Err(e) = &dones {
            error!(error = %e, "storage batch failed; nothing in it is acked");
        }
        let mut dones = dones.unwrap_or_default().into_iter();
        let mut outputs = Vec::with_capacity(commands.len());
        for command in commands {
            let done = dones.next().unwrap_or(Done::Nothing);
            if let Some(mut out) = output(command, done) {
                if failed {
                    out.fail();
                }
                outputs.push(out);
            }
        }
        if purge {
            // On its own connection and task: the storage thread goes on with the next batch.
            let (pool, config) = (self.pool.clone(), self.config.clone());
            self.runtime.spawn(async move {
                if let Err(e) = housekeeping(&pool, &config, now).await {
                    warn!(error = %e, "housekeeping failed");
                }
            });
        }
        outputs
    }

    /// Runs every command in one transaction and commits: all removals in one statement (so
    /// that they make room before the enqueues count), all enqueues in one statement, the next
    /// page of every following session in one statement, then the other commands, pipelined in
    /// order.
    async fn transaction(&self, commands: &[Command], now: u64) -> Result<Vec<Done>, StoreError> {
        let mut client = client(&self.pool).await?;
        let tx = client.transaction().await?;
        for sql in SQL {
            tx.prepare_cached(sql).await?;
        }
        let enqueues: Vec<&Enqueue> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Enqueue(e) => Some(&**e),
                _ => None,
            })
            .collect();
        let removes: Vec<(&Identity, u64, u64)> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Remove {
                    receiver,
                    seq,
                    epoch,
                } => Some((receiver, *seq, *epoch)),
                _ => None,
            })
            .collect();
        let pages: Vec<(&Identity, u64, usize)> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Fetch {
                    receiver,
                    after,
                    limit,
                    backlog: false,
                    ..
                } => Some((receiver, *after, *limit)),
                _ => None,
            })
            .collect();
        let others = commands.iter().filter(|c| !batched(c));
        // Polled in this order, so sent in this order: each sends its statement when first
        // polled (every statement is prepared already).
        let (removed, stored, fetched, rest) = join4(
            remove_all(&tx, &removes),
            enqueue_all(&tx, &enqueues, now, self.config.max_queue, self.node),
            fetch_all(&tx, &pages, now),
            join_all(others.map(|c| self.run(&tx, c, now))),
        )
        .await;
        // The statements after a failed one fail only because the transaction is aborted:
        // report the conflict, if one caused it, so that the batch runs again.
        let conflict = [
            removed.as_ref().err(),
            stored.as_ref().err(),
            fetched.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        .chain(rest.iter().filter_map(|r| r.as_ref().err()))
        .any(StoreError::is_conflict);
        if conflict {
            return Err([removed.err(), stored.err(), fetched.err()]
                .into_iter()
                .flatten()
                .chain(rest.into_iter().filter_map(Result::err))
                .find(StoreError::is_conflict)
                .unwrap_or(StoreError::Stopped));
        }
        let mut stored = stored?.into_iter();
        removed?;
        let mut fetched = fetched?.into_iter();
        let mut rest = rest.into_iter();
        let mut dones = Vec::with_capacity(commands.len());
        for command in commands {
            dones.push(match command {
                Command::Enqueue(_) => stored
                    .next()
                    .ok_or(StoreError::Corrupt("tandem_enqueue rows"))?,
                Command::Remove { .. } => Done::Nothing,
                Command::Fetch { backlog: false, .. } => {
                    fetched.next().ok_or(StoreError::Corrupt("page count"))?
                }
                _ => rest.next().unwrap_or(Ok(Done::Nothing))?,
            });
        }
        tx.commit().await?;
        Ok(dones)
    }

    async fn run(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        command: &Command,
        now: u64,
    ) -> Result<Done, StoreError> {
        match command {
            // Both go in one statement each (`transaction`).
            Command::Enqueue(_) | Command::Remove { .. } => Ok(Done::Nothing),
            Command::Fetch {
                receiver,
                after,
                limit,
                backlog,
                epoch,
                ..
            } => {
                if *backlog {
                    // This session reads from now on: older epochs' removals stop counting.
                    let stmt = tx.prepare_cached(READING).await?;
                    tx.execute(&stmt, &[&&receiver[..], &to_sql(*epoch)])
                        .await?;
                }
                Ok(Done::Fetched(
                    fetch(tx, receiver, *after, *limit, *backlog, now).await?,
                ))
            }
            Command::CreateIdentity { public_key, .. } => {
                Ok(Done::Created(create_identity(tx, public_key, now).await?))
            }
            Command::SetDeviceCookie {
                identity,
                cookie,
                changed,
            } => {
                let stmt = tx.prepare_cached(SET_COOKIE).await?;
                tx.execute(&stmt, &[&&cookie[..], changed, &&identity[..]])
                    .await?;
                Ok(Done::Nothing)
            }
            Command::Purge | Command::Flush(_) => Ok(Done::Nothing),
            Command::Release {
                identity,
                session_id,
            } => {
                let stmt = tx.prepare_cached(RELEASE).await?;
                let holder = tx
                    .query_opt(&stmt, &[&&identity[..], &self.node, &to_sql(*session_id)])
                    .await?
                    .and_then(|r| {
                        let node: Option<i64> = r.get(0);
                        Some((node?, from_sql(r.get(1))))
                    });
                Ok(Done::Released(holder.filter(|&(n, _)| n != self.node)))
            }
            Command::Relay { receiver, .. } => {
                let stmt = tx.prepare_cached(RECEIVING_NODE).await?;
                let node: Option<i64> = tx
                    .query_opt(&stmt, &[&&receiver[..]])
                    .await?
                    .map(|r| r.get(0));
                Ok(Done::Relayed(node.filter(|&n| n != self.node)))
            }
            Command::Login { identity, .. } => {
                let stmt = tx.prepare_cached(QUEUED).await?;
                let queued: i64 = tx.query_one(&stmt, &[&&identity[..]]).await?.get(0);
                Ok(Done::Login(LoginInfo {
                    record: lookup(tx, identity).await?,
                    queued: u32::try_from(queued).unwrap_or(0),
                }))
            }
            Command::Lookup { identity, .. } => Ok(Done::Looked(lookup(tx, identity).await?)),
            Command::Claim {
                identity,
                session_id,
                ..
            } => {
                let stmt = tx.prepare_cached(CLAIM_PREVIOUS).await?;
                let previous: Option<i64> = tx
                    .query_opt(&stmt, &[&&identity[..]])
                    .await?
                    .and_then(|r| r.get(0));
                let stmt = tx.prepare_cached(CLAIM).await?;
                let epoch: i64 = tx
                    .query_one(&stmt, &[&&identity[..], &self.node, &to_sql(*session_id)])
                    .await?
                    .get(0);
                Ok(Done::Claimed(
                    from_sql(epoch),
                    previous.filter(|&n| n != self.node),
                ))
            }
            Command::IssueToken { token, .. } => {
                let cutoff = to_sql(now.saturating_sub(ttl_ms()));
                let stmt = tx.prepare_cached(ISSUE_TOKEN).await?;
                let inserted = tx
                    .execute(
                        &stmt,
                        &[
                            &&token.token[..],
                            &&token.public_key.as_bytes()[..],
                            &&token.challenge[..],
                            &to_sql(token.issued_at_ms),
                            &cutoff,
                            &MAX_SHARED_TOKENS,
                        ],
                    )
                    .await?;
                Ok(Done::Issued(inserted == 1))
            }
            Command::RedeemToken { token, .. } => {
                let stmt = tx.prepare_cached(REDEEM_TOKEN).await?;
                let row = tx.query_opt(&stmt, &[&&token[..]]).await?;
                let pending = match row {
                    None => None,
                    Some(r) => Some(PendingToken {
                        token: <[u8; TOKEN_LEN]>::try_from(r.get::<_, &[u8]>(0))
                            .map_err(|_| StoreError::Corrupt("tokens.token"))?,
                        public_key: PublicKey::from_slice(r.get::<_, &[u8]>(1))
                            .ok_or(StoreError::Corrupt("tokens.public_key"))?,
                        challenge: <[u8; 32]>::try_from(r.get::<_, &[u8]>(2))
                            .map_err(|_| StoreError::Corrupt("tokens.challenge"))?,
                        issued_at_ms: from_sql(r.get(3)),
                    }),
                };
                Ok(Done::Redeemed(pending))
            }
            Command::SetPushUrl { identity, url } => {
                let stmt = tx.prepare_cached(SET_PUSH_URL).await?;
                tx.execute(&stmt, &[url, &&identity[..]]).await?;
                Ok(Done::Nothing)
            }
            Command::PushTarget { identity, .. } => {
                let stmt = tx.prepare_cached(PUSH_URL).await?;
                let url: Option<String> = tx
                    .query_opt(&stmt, &[&&identity[..]])
                    .await?
                    .and_then(|r| r.get(0));
                let stmt = tx.prepare_cached(QUEUED).await?;
                let queued: i64 = tx.query_one(&stmt, &[&&identity[..]]).await?.get(0);
                Ok(Done::Pushing(PushTarget {
                    url,
                    queued: u32::try_from(queued).unwrap_or(0),
                }))
            }
        }
    }
}

fn ttl_ms() -> u64 {
    u64::try_from(TOKEN_TTL.as_millis()).unwrap_or(u64::MAX)
}

/// The answer to a command once the transaction is over.
fn output(command: Command, done: Done) -> Option<Output> {
    Some(match (command, done) {
        (Command::Enqueue(enqueue), Done::Enqueued(outcome, seq, remote)) => Output::Stored {
            enqueue,
            outcome,
            seq,
            remote,
        },
        (Command::Enqueue(enqueue), _) => Output::Stored {
            enqueue,
            outcome: StoreOutcome::Failed,
            seq: 0,
            remote: None,
        },
        (Command::Fetch { reply, .. }, done) => Output::Fetched {
            reply,
            result: match done {
                Done::Fetched(item) => Ok(item),
                _ => Err(StoreError::Stopped),
            },
        },
        (Command::CreateIdentity { reply, .. }, done) => Output::Created {
            reply,
            result: match done {
                Done::Created(c) => Ok(c),
                _ => Err(StoreError::Stopped),
            },
        },
        (Command::Flush(reply), _) => Output::Flushed(reply),
        (Command::Login { reply, .. }, done) => Output::Login {
            reply,
            result: match done {
                Done::Login(info) => Ok(info),
                _ => Err(StoreError::Stopped),
            },
        },
        (
            Command::Claim {
                reply, identity, ..
            },
            done,
        ) => {
            let (result, previous) = match done {
                Done::Claimed(epoch, previous) => (Ok((epoch, previous.is_some())), previous),
                _ => (Err(StoreError::Stopped), None),
            };
            Output::Claimed {
                reply,
                result,
                identity,
                previous,
            }
        }
        (Command::Lookup { reply, .. }, done) => Output::Looked {
            reply,
            result: match done {
                Done::Looked(r) => Ok(r),
                _ => Err(StoreError::Stopped),
            },
        },
        (Command::IssueToken { reply, .. }, done) => Output::Issued {
            reply,
            result: match done {
                Done::Issued(ok) => Ok(ok),
                _ => Err(StoreError::Stopped),
            },
        },
        (Command::RedeemToken { reply, .. }, done) => Output::Redeemed {
            reply,
            result: match done {
                Done::Redeemed(t) => Ok(t),
                _ => Err(StoreError::Stopped),
            },
        },
        (Command::PushTarget { reply, .. }, done) => Output::Pushing {
            reply,
            result: match done {
                Done::Pushing(t) => Ok(t),
                _ => Err(StoreError::Stopped),
            },
        },
        (Command::Release { identity, .. }, Done::Released(Some((node, epoch)))) => {
            Output::Relay(Hint::Released {
                node,
                identity,
                epoch,
            })
        }
        (Command::Relay { receiver, body }, Done::Relayed(Some(node))) => {
            Output::Relay(Hint::Transient {
                node,
                receiver,
                body,
            })
        }
        (
            Command::Remove { .. }
            | Command::SetDeviceCookie { .. }
            | Command::SetPushUrl { .. }
            | Command::Purge
            | Command::Relay { .. }
            | Command::Release { .. },
            _,
        ) => return None,
    })
}

impl Backend for PgBackend {
    fn apply(&mut self, batch: &mut Vec<Command>, now: u64) -> Vec<Output> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.apply_async(batch, now))
    }

    fn queued(&mut self) -> Result<u64, StoreError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.queued_total())
    }
}

/// Queues every message of a batch with one statement (in command order, which is receiver
/// order); one answer per message.
async fn enqueue_all(
    tx: &deadpool_postgres::Transaction<'_>,
    enqueues: &[&Enqueue],
    now: u64,
    max_queue: u32,
    node: i64,
) -> Result<Vec<Done>, StoreError> {
    if enqueues.is_empty() {
        return Ok(Vec::new());
    }
    let receivers: Vec<&[u8]> = enqueues.iter().map(|e| &e.receiver[..]).collect();
    let senders: Vec<&[u8]> = enqueues.iter().map(|e| &e.sender[..]).collect();
    let ids: Vec<i64> = enqueues.iter().map(|e| to_sql(e.message_id)).collect();
    let flags: Vec<i16> = enqueues.iter().map(|e| i16::from(e.flags.bits())).collect();
    let expires: Vec<Option<i64>> = enqueues
        .iter()
        .map(|e| e.expires_at_ms.map(to_sql))
        .collect();
    let bodies: Vec<&[u8]> = enqueues.iter().map(|e| &e.body[..]).collect();
    let max = i32::try_from(max_queue).unwrap_or(i32::MAX);
    let stmt = tx.prepare_cached(ENQUEUE).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &receivers,
                &senders,
                &ids,
                &flags,
                &expires,
                &bodies,
                &to_sql(now),
                &max,
            ],
        )
        .await?;
    if rows.len() != enqueues.len() {
        return Err(StoreError::Corrupt("tandem_enqueue rows"));
    }
    rows.into_iter()
        .map(|row| {
            let outcome = match row.get::<_, i16>(0) {
                0 => StoreOutcome::Stored,
                1 => StoreOutcome::Duplicate,
                2 => StoreOutcome::QueueFull,
                _ => return Err(StoreError::Corrupt("tandem_enqueue outcome")),
            };
            let receiving: Option<i64> = row.get(2);
            Ok(Done::Enqueued(
                outcome,
                from_sql(row.get(1)),
                receiving.filter(|&n| n != node),
            ))
        })
        .collect()
}

/// Removes delivered messages with one statement; a removal whose epoch is no longer the
/// receiver's receiving epoch does nothing.
async fn remove_all(
    tx: &deadpool_postgres::Transaction<'_>,
    removes: &[(&Identity, u64, u64)],
) -> Result<(), StoreError> {
    if removes.is_empty() {
        return Ok(());
    }
    let receivers: Vec<&[u8]> = removes.iter().map(|(r, _, _)| &r[..]).collect();
    let seqs: Vec<i64> = removes.iter().map(|(_, s, _)| to_sql(*s)).collect();
    let epochs: Vec<i64> = removes.iter().map(|(_, _, e)| to_sql(*e)).collect();
    let stmt = tx.prepare_cached(REMOVE).await?;
    tx.execute(&stmt, &[&receivers, &seqs, &epochs]).await?;
    Ok(())
}

async fn fetch(
    tx: &deadpool_postgres::Transaction<'_>,
    receiver: &Identity,
    after: u64,
    limit: usize,
    backlog: bool,
    now: u64,
) -> Result<MailItem, StoreError> {
    let backlog_end = if backlog {
        let stmt = tx.prepare_cached(MAX_SEQ).await?;
        let max: Option<i64> = tx.query_one(&stmt, &[&&receiver[..]]).await?.get(0);
        Some(max.map(from_sql))
    } else {
        None
    };
    let stmt = tx.prepare_cached(PAGE).await?;
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = tx
        .query(
            &stmt,
            &[&&receiver[..], &to_sql(after), &to_sql(now), &limit_sql],
        )
        .await?;
    let messages = rows
        .iter()
        .map(|r| queued_message(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let complete = messages.len() < limit;
    Ok(MailItem::Fetched {
        messages,
        complete,
        backlog_end,
    })
}

/// A queue row (seq, sender, message id, flags, expires at, body from column `first`).
fn queued_message(r: &tokio_postgres::Row, first: usize) -> Result<Arc<QueuedMessage>, StoreError> {
    let flags: i16 = r.get(first + 3);
    Ok(Arc::new(QueuedMessage {
        seq: from_sql(r.get(first)),
        sender: <Identity>::try_from(r.get::<_, &[u8]>(first + 1))
            .map_err(|_| StoreError::Corrupt("queue.sender"))?,
        message_id: from_sql(r.get(first + 2)),
        flags: MessageFlags(u8::try_from(flags).map_err(|_| StoreError::Corrupt("queue.flags"))?),
        expires_at_ms: r.get::<_, Option<i64>>(first + 4).map(from_sql),
        body: Arc::from(r.get::<_, &[u8]>(first + 5)),
    }))
}

/// Reads the next page of every following session's queue with one statement (after a hint,
/// many sessions read at once); one `Fetched` per request, in order.
async fn fetch_all(
    tx: &deadpool_postgres::Transaction<'_>,
    requests: &[(&Identity, u64, usize)],
    now: u64,
) -> Result<Vec<Done>, StoreError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let receivers: Vec<&[u8]> = requests.iter().map(|(r, _, _)| &r[..]).collect();
    let afters: Vec<i64> = requests.iter().map(|(_, a, _)| to_sql(*a)).collect();
    let limits: Vec<i64> = requests
        .iter()
        .map(|(_, _, l)| i64::try_from(*l).unwrap_or(i64::MAX))
        .collect();
    let stmt = tx.prepare_cached(PAGES).await?;
    let rows = tx
        .query(&stmt, &[&receivers, &afters, &limits, &to_sql(now)])
        .await?;
    let mut pages: Vec<Vec<Arc<QueuedMessage>>> = vec![Vec::new(); requests.len()];
    for r in &rows {
        let index = usize::try_from(r.get::<_, i64>(0))
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| pages.get_mut(i))
            .ok_or(StoreError::Corrupt("page index"))?;
        index.push(queued_message(r, 1)?);
    }
    Ok(pages
        .into_iter()
        .zip(requests)
        .map(|(messages, (_, _, limit))| {
            let complete = messages.len() < *limit;
            Done::Fetched(MailItem::Fetched {
                messages,
                complete,
                backlog_end: None,
            })
        })
        .collect())
}

async fn lookup(
    tx: &deadpool_postgres::Transaction<'_>,
    identity: &Identity,
) -> Result<Option<IdentityRecord>, StoreError> {
    let stmt = tx.prepare_cached(LOOKUP).await?;
    tx.query_opt(&stmt, &[&&identity[..]])
        .await?
        .map(|r| identity_record(r.get(0), r.get::<_, &[u8]>(1), r.get(2), r.get(3)))
        .transpose()
}

async fn create_identity(
    tx: &deadpool_postgres::Transaction<'_>,
    public_key: &PublicKey,
    now: u64,
) -> Result<Created, StoreError> {
    let existing = tx.prepare_cached(BY_PUBLIC_KEY).await?;
    let insert = tx.prepare_cached(INSERT_IDENTITY).await?;
    let key = &public_key.as_bytes()[..];
    for _ in 0..IDENTITY_ATTEMPTS {
        if let Some(row) = tx.query_opt(&existing, &[&key]).await? {
            let identity = <Identity>::try_from(row.get::<_, &[u8]>(0))
                .map_err(|_| StoreError::Corrupt("identities.identity"))?;
            return Ok(Created {
                identity,
                existed: true,
            });
        }
        let identity = generate_identity(&mut rand::thread_rng());
        if tx
            .execute(&insert, &[&&identity[..], &key, &to_sql(now)])
            .await?
            == 1
        {
            return Ok(Created {
                identity,
                existed: false,
            });
        }
        // An identity collision, or another node registered this key meanwhile: look again.
    }
    Err(StoreError::IdentitySpace(IDENTITY_ATTEMPTS))
}

/// Expiry, dedupe and token purge, on one node at a time: the node that gets the advisory lock
/// does it, the others skip this round.
async fn housekeeping(pool: &Pool, config: &StoreConfig, now: u64) -> Result<(), StoreError> {
    let mut client = client(pool).await?;
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&HOUSEKEEPING_LOCK],
        )
        .await?
        .get(0);
    if !locked {
        debug!("housekeeping runs on another node");
        return Ok(());
    }
    let expired = tx
        .execute(
            "DELETE FROM queue WHERE expires_at IS NOT NULL AND expires_at <= $1",
            &[&to_sql(now)],
        )
        .await?;
    let cutoff = to_sql(now.saturating_sub(config.dedupe_window_ms));
    let forgotten = tx
        .execute("DELETE FROM seen WHERE at < $1", &[&cutoff])
        .await?;
    let tokens = tx
        .execute(
            "DELETE FROM tokens WHERE issued_at <= $1",
            &[&to_sql(now.saturating_sub(ttl_ms()))],
        )
        .await?;
    tx.commit().await?;
    if expired > 0 || forgotten > 0 || tokens > 0 {
        debug!(expired, forgotten, tokens, "purged");
    }
    Ok(())
}

/// Sends the hints of committed batches as `NOTIFY`, grouped per node, every payload of a
/// round in one statement (autocommit on the notifier's connection: its own transaction, never
/// the data transaction). Runs until the storage worker is gone.
pub(super) async fn notifier(pool: Pool, mut hints: mpsc::Receiver<Hint>) {
    let mut waiting = Vec::new();
    while hints.recv_many(&mut waiting, 4096).await > 0 {
        let mut payloads: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        let mut seen: HashSet<(i64, String)> = HashSet::new();
        for hint in waiting.drain(..) {
            let Some((node, text)) = hint.encode() else {
                debug!("don't-queue message too large to relay; dropped");
                continue;
            };
            // Several "read your queue" hints for one receiver in a round need one; carried and
            // relayed messages are each their own.
            if text.starts_with(['m', 't']) || seen.insert((node, text.clone())) {
                payloads.entry(node).or_default().push(text);
            }
        }
        let mut channels = Vec::new();
        let mut chunks = Vec::new();
        for (node, texts) in payloads {
            for chunk in chunk_payload(&texts) {
                channels.push(channel(node));
                chunks.push(chunk);
            }
        }
        let Ok(client) = client(&pool).await else {
            warn!("no database connection for hints; the sweep delivers instead");
            continue;
        };
        let sent = match client.prepare_cached(NOTIFY_ALL).await {
            Ok(stmt) => client.execute(&stmt, &[&channels, &chunks]).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            warn!(error = %e, "hints not sent; the sweep delivers instead");
        }
    }
}

/// Every notification of a notifier round, in order, in one statement.
const NOTIFY_ALL: &str =
    "SELECT pg_notify(t.c, t.p) FROM UNNEST($1::TEXT[], $2::TEXT[]) AS t(c, p)";

/// Listens on this node's channel and hands hints to the sessions; reconnects (to whichever
/// host is the primary now) when the connection drops. Every (re)connect is followed by a
/// sweep, since hints sent meanwhile are lost.
pub(super) async fn listener(url: String, node: i64, registry: Arc<Registry>) {
    use futures_util::{FutureExt, StreamExt};
    let channel = channel(node);
    loop {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut connection)) => {
                let sessions = Arc::clone(&registry);
                let mut pump = tokio::spawn(async move {
                    let mut stream =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    let mut arrived = Vec::new();
                    while let Some(message) = stream.next().await {
                        let mut next = Some(message);
                        // Every notification that has arrived goes in one pass, so a session
                        // is woken once for all of them.
                        while let Some(message) = next {
                            match message {
                                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                    arrived.push(n);
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    warn!(error = %e, "hint connection failed");
                                    return;
                                }
                            }
                            next = stream.next().now_or_never().flatten();
                        }
                        apply_hints(&sessions, arrived.iter().map(|n| n.payload()));
                        arrived.clear();
                    }
                });
                if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
                    warn!(error = %e, "LISTEN failed");
                    pump.abort();
                } else {
                    debug!(node, "listening for hints");
                    registry.recheck_all();
                    let _ = (&mut pump).await;
                }
            }
            Err(e) => warn!(error = %e, "hint connection failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The catch-up sweep: every interval, one statement asks the database which receiving
/// sessions on this node are behind their queue (the receiver's newest sequence number beyond
/// the cursor the session published) and which were replaced by a newer epoch; the first read
/// their queue again, the second are demoted. A lost hint therefore costs at most one interval,
/// and a node pays one indexed lookup per receiving session per interval, not a queue read.
pub(super) async fn sweep(pool: Pool, registry: Arc<Registry>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sessions = registry.receiving_cursors();
        if sessions.is_empty() {
            continue;
        }
        match sweep_query(&pool, &sessions).await {
            Ok(found) => {
                for (identity, behind, epoch) in found {
                    if let Some(epoch) = epoch {
                        registry.demote_before(&identity, epoch);
                    }
                    if behind {
                        registry.recheck(&identity);
                    }
                }
            }
            Err(e) => warn!(error = %e, "catch-up sweep failed"),
        }
    }
}

/// For each receiving session that is behind or replaced: its identity, whether it is behind,
/// and the newer epoch if one took over.
async fn sweep_query(
    pool: &Pool,
    sessions: &[(Identity, u64, u64)],
) -> Result<Vec<(Identity, bool, Option<u64>)>, StoreError> {
    let identities: Vec<&[u8]> = sessions.iter().map(|(i, _, _)| &i[..]).collect();
    let cursors: Vec<i64> = sessions.iter().map(|(_, c, _)| to_sql(*c)).collect();
    let epochs: Vec<i64> = sessions.iter().map(|(_, _, e)| to_sql(*e)).collect();
    let client = client(pool).await?;
    let stmt = client
        .prepare_cached(
            "SELECT s.identity, COALESCE(m.next_seq - 1 > s.cursor, FALSE), \
                    CASE WHEN r.epoch > s.epoch THEN r.epoch END \
             FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[]) AS s(identity, cursor, epoch) \
             LEFT JOIN mailboxes m ON m.receiver = s.identity \
             LEFT JOIN receiving r ON r.identity = s.identity \
             WHERE m.next_seq - 1 > s.cursor OR r.epoch > s.epoch",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&identities, &cursors, &epochs])
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let identity = Identity::try_from(r.get::<_, &[u8]>(0)).ok()?;
            let epoch: Option<i64> = r.get(2);
            Some((identity, r.get(1), epoch.map(from_sql)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_lock_counter_rows_in_receiver_order() {
        let (reply, _rx) = tokio::sync::oneshot::channel();
        let mut commands = [
            Command::Flush(reply),
            Command::Remove {
                receiver: *b"BBBBBBBB",
                seq: 1,
                epoch: 1,
            },
            Command::Remove {
                receiver: *b"AAAAAAAA",
                seq: 2,
                epoch: 1,
            },
            Command::Remove {
                receiver: *b"AAAAAAAA",
                seq: 1,
                epoch: 1,
            },
        ];
        commands.sort_by_key(lock_order);
        let order: Vec<(u8, Identity, u64)> = commands
            .iter()
            .map(|c| match c {
                Command::Remove { receiver, seq, .. } => (0, *receiver, *seq),
                _ => (2, [0; 8], 0),
            })
            .collect();
        assert_eq!(
            order,
            vec![
                (0, *b"AAAAAAAA", 2),
                (0, *b"AAAAAAAA", 1),
                (0, *b"BBBBBBBB", 1),
                (2, [0; 8], 0)
            ],
            "receiver order, and a receiver's own commands keep theirs"
        );
    }

    #[test]
    fn receiving_rows_are_locked_in_identity_order_whatever_the_command() {
        // Node A's batch: claim X, release Y; node B's: claim Y, release X. Claims first and
        // releases after would lock X then Y on A and Y then X on B: a deadlock.
        let batch = |claim: Identity, release: Identity| {
            let (reply, _rx) = tokio::sync::oneshot::channel();
            let mut commands = [
                Command::Release {
                    identity: release,
                    session_id: 1,
                },
                Command::Claim {
                    identity: claim,
                    session_id: 2,
                    reply,
                },
                Command::Fetch {
                    receiver: *b"WWWWWWWW",
                    after: 0,
                    limit: 1,
                    backlog: true,
                    epoch: 1,
                    reply: crate::mailbox::Mailbox::new(),
                },
            ];
            commands.sort_by_key(lock_order);
            commands
                .iter()
                .map(|c| match c {
                    Command::Claim { identity, .. }
                    | Command::Release { identity, .. }
                    | Command::Fetch {
                        receiver: identity, ..
                    } => *identity,
                    _ => [0; 8],
                })
                .collect::<Vec<_>>()
        };
        let expected = vec![*b"WWWWWWWW", *b"XXXXXXXX", *b"YYYYYYYY"];
        assert_eq!(batch(*b"XXXXXXXX", *b"YYYYYYYY"), expected);
        assert_eq!(batch(*b"YYYYYYYY", *b"XXXXXXXX"), expected);
    }
}
