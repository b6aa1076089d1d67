//! Durable storage: one thread owns the database connection and applies commands in batches, one
//! transaction per batch (group commit), then answers every command of the batch. An outgoing
//! message is acked only after the commit that holds it (DESIGN §4 "stored durably → ack").
//!
//! Two backends sit behind [`Backend`]: SQLite (one node, the embedded default) and PostgreSQL
//! (several nodes on one database, `postgres.rs`). The batching loop and how answers reach the
//! sessions (`worker.rs`) are the same for both.

mod hints;
mod postgres;
mod sqlite;
mod sqlite_schema;
mod worker;

use std::sync::Arc;

use tandem_shared::crypto::PublicKey;
use tandem_shared::csp::MessageFlags;
use tokio::sync::{mpsc, oneshot};

use crate::config::SyncMode;
use crate::directory::{Directory, IdentityRecord};
use crate::mailbox::Mailbox;
use crate::registry::Registry;
use crate::types::Identity;

pub use hints::Hint;

/// How a storage thread tells the push task about a stored message nobody receives.
pub(crate) fn name_unreceived(unreceived: Option<&crate::push::WakeSender>, identity: Identity) {
    if let Some(tx) = unreceived {
        // Full: the name is dropped; the next message names it again.
        let _ = tx.try_send(identity);
    }
}
pub use postgres::{PgSettings, HOUSEKEEPING_LOCK};
pub use sqlite_schema::{from_sql, to_sql};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "chat.sqlite3";

/// Commands waiting for the worker; senders wait when it is full (back pressure).
const COMMAND_CAPACITY: usize = 16_384;
/// Hints waiting for the notifier; when it is full, hints are dropped (the sweep covers).
const HINT_CAPACITY: usize = 65_536;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error (or the connection failed).
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("postgres pool: {0}")]
    Pool(String),
    /// The `--database` URL is not one this server reads.
    #[error("database URL: {0}")]
    Url(String),
    /// The backend does not do this (shared tokens on SQLite).
    #[error("not supported by this backend: {0}")]
    Unsupported(&'static str),
    /// The storage worker is gone (it failed or the server is shutting down).
    #[error("storage worker stopped")]
    Stopped,
    /// A row holds something this version cannot read.
    #[error("corrupt row in {0}")]
    Corrupt(&'static str),
    /// No unused identity was found (the ID space is nearly full, or the RNG is broken).
    #[error("no free identity after {0} attempts")]
    IdentitySpace(u32),
}

impl StoreError {
    /// Whether PostgreSQL aborted the transaction for a deadlock or a serialization failure:
    /// it rolled everything back, and the same work may succeed when run again.
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(self, Self::Postgres(e) if e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        }))
    }
}

/// An outgoing message to queue.
#[derive(Debug)]
pub struct Enqueue {
    /// The receiver, whose queue gets the message.
    pub receiver: Identity,
    /// The sender.
    pub sender: Identity,
    /// The message id.
    pub message_id: u64,
    /// The header flags.
    pub flags: MessageFlags,
    /// When a short-lived message expires (Unix ms).
    pub expires_at_ms: Option<u64>,
    /// The message struct as it will be delivered.
    pub body: Arc<[u8]>,
    /// Whether the sender wants a message-ack.
    pub ack: bool,
    /// The sender session's inbox, for the outcome.
    pub reply: Arc<Mailbox>,
}

/// The result of creating an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// The identity holding the public key.
    pub identity: Identity,
    /// Whether it existed already (the same public key registered before).
    pub existed: bool,
}

/// What the worker does.
#[derive(Debug)]
pub enum Command {
    /// Queue a message (boxed: the largest command by far).
    Enqueue(Box<Enqueue>),
    /// Remove a delivered message from its receiver's queue, if `epoch` is still the receiver's
    /// current receiving epoch (a demoted session's late acks do nothing).
    Remove {
        /// The receiver.
        receiver: Identity,
        /// Its sequence number.
        seq: u64,
        /// The receiving epoch of the session that removes it ([`Command::Claim`]).
        epoch: u64,
    },
    /// Make a session the receiving one of its identity: a new epoch, stored before the session
    /// reads its queue, so that every node sees which session receives.
    Claim {
        /// The identity.
        identity: Identity,
        /// The session (unique on this node).
        session_id: u64,
        /// The new epoch, and whether a session on another node held it until now.
        reply: oneshot::Sender<Result<(u64, bool), StoreError>>,
    },
    /// A receiving session has closed: the database stops naming this node as the identity's
    /// receiver, unless a newer session took over meanwhile (PostgreSQL only).
    Release {
        /// The identity.
        identity: Identity,
        /// The session that closed.
        session_id: u64,
    },
    /// Look up an identity in the database (another node may have created it).
    Lookup {
        /// The identity.
        identity: Identity,
        /// The record, if there is one.
        reply: oneshot::Sender<Result<Option<IdentityRecord>, StoreError>>,
    },
    /// Read a page of a receiver's queue into the session's inbox.
    Fetch {
        /// The receiver.
        receiver: Identity,
        /// Read sequence numbers after this one.
        after: u64,
        /// At most this many.
        limit: usize,
        /// Whether to report the end of the backlog (first fetch after unblock).
        backlog: bool,
        /// The reading session's receiving epoch: from its first read on, removals by older
        /// epochs do nothing.
        epoch: u64,
        /// The receiving session's inbox.
        reply: Arc<Mailbox>,
    },
    /// Store a new identity for a public key (or find the existing one).
    CreateIdentity {
        /// The identity's public key.
        public_key: PublicKey,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Created, StoreError>>,
    },
    /// Remember an identity's device cookie and its changed flag (spec §9.3).
    SetDeviceCookie {
        /// The identity.
        identity: Identity,
        /// The last cookie seen.
        cookie: [u8; 16],
        /// Whether a change is pending acknowledgement.
        changed: bool,
    },
    /// Hand a don't-queue message to the receiver's receiving session on another node, if it
    /// has one (never stored; PostgreSQL only, SQLite has no other nodes).
    Relay {
        /// The receiver.
        receiver: Identity,
        /// The message struct as it will be delivered.
        body: Arc<[u8]>,
    },
    /// Drop expired short-lived messages and old dedupe entries.
    Purge,
    /// Answered once everything before it is committed (tests, shutdown).
    Flush(oneshot::Sender<()>),
    /// What a login needs: the identity's record as stored (another node may have changed its
    /// cookie) and how many messages wait in its queue (login-ack, spec §12).
    Login {
        /// The identity.
        identity: Identity,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<LoginInfo, StoreError>>,
    },
    /// Keep an identity-creation token where every node finds it (PostgreSQL only; SQLite
    /// keeps tokens in memory).
    IssueToken {
        /// The pending token.
        token: PendingToken,
        /// Whether it was stored (false: too many pending).
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Remember (or, with `None`, forget) the URL that wakes an identity's device group
    /// (docs/chat-server.md "Push"); the last login's registration wins.
    SetPushUrl {
        /// The identity.
        identity: Identity,
        /// The URL, already checked against `--push-origin`.
        url: Option<String>,
    },
    /// What the push task needs: the identity's push URL and how many messages wait for it.
    PushTarget {
        /// The identity.
        identity: Identity,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<PushTarget, StoreError>>,
    },
    /// Take a token out of the shared table (single use, PostgreSQL only).
    RedeemToken {
        /// The token bytes as the client echoed them.
        token: Vec<u8>,
        /// The pending token, if it existed.
        reply: oneshot::Sender<Result<Option<PendingToken>, StoreError>>,
    },
}

/// An identity-creation token kept in the database.
#[derive(Debug, Clone)]
pub struct PendingToken {
    /// The token bytes.
    pub token: [u8; crate::directory::TOKEN_LEN],
    /// The public key it was issued for.
    pub public_key: PublicKey,
    /// The challenge secret (`tokenRespKey`), valid for the token's lifetime only.
    pub challenge: [u8; 32],
    /// When it was issued (Unix ms).
    pub issued_at_ms: u64,
}

/// The answer to [`Command::PushTarget`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// The registered push URL, if any.
    pub url: Option<String>,
    /// Messages waiting in its queue.
    pub queued: u32,
}

/// The answer to [`Command::Login`].
#[derive(Debug, Clone)]
pub struct LoginInfo {
    /// The identity's record, `None` if it does not exist.
    pub record: Option<IdentityRecord>,
    /// Messages waiting in its queue.
    pub queued: u32,
}

/// Which database the server keeps its state in.
#[derive(Debug, Clone)]
pub enum Database {
    /// `chat.sqlite3` in the data directory (one node).
    Sqlite {
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// A PostgreSQL database shared by every node of the server group.
    Postgres(PgSettings),
}

/// One database engine behind the storage worker: applies a batch of commands in one
/// transaction and commits it before anything in it is answered.
pub(crate) trait Backend: Send + 'static {
    /// Applies `batch` (drained) in one transaction and commits; the answers say what happened
    /// (after a failed commit, every answer is a failure).
    fn apply(&mut self, batch: &mut Vec<Command>, now: u64) -> Vec<worker::Output>;
    /// Messages queued in total (the start line's count).
    fn queued(&mut self) -> Result<u64, StoreError>;
}

/// A handle to the storage worker.
#[derive(Debug, Clone)]
pub struct Store {
    /// One per storage thread; a receiver's (or identity's) commands always go to the same one,
    /// so its order holds.
    txs: Arc<[mpsc::Sender<Command>]>,
    shared_tokens: bool,
}

/// What the database held at startup.
#[derive(Debug)]
pub struct Loaded {
    /// The handle.
    pub store: Store,
    /// The worker threads, finished when every handle is dropped.
    pub workers: Vec<std::thread::JoinHandle<()>>,
    /// Queued messages at startup.
    pub queued: u64,
    /// This node's id in a PostgreSQL server group (`None`: SQLite, one node).
    pub node: Option<i64>,
    /// The node's background tasks (hints, sweep).
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database.
    pub database: Database,
    /// SQLite synchronous mode.
    pub sync: SyncMode,
    /// Most messages per receiver queue.
    pub max_queue: u32,
    /// How long dedupe entries live, in ms.
    pub dedupe_window_ms: u64,
    /// Where a storage thread names the receiver of a stored message that no session receives
    /// (the push task, `crate::push`); `None`: push is off.
    pub unreceived: Option<crate::push::WakeSender>,
}

impl Store {
    /// Opens the database, loads the directory into `directory` (SQLite; with PostgreSQL it is
    /// a cache filled on use), and starts the worker (with PostgreSQL also the node's hint
    /// listener, hint sender and catch-up sweep).
    pub async fn open(
        config: StoreConfig,
        directory: &Directory,
        registry: Arc<Registry>,
    ) -> Result<Loaded, StoreError> {
        let mut tasks = Vec::new();
        let mut txs = Vec::new();
        let mut workers = Vec::new();
        let (queued, node) = match &config.database {
            Database::Sqlite { dir } => {
                let conn = sqlite_schema::open(&dir.join(DATABASE_FILE), config.sync)?;
                for record in sqlite::load_identities(&conn)? {
                    directory.insert(record);
                }
                let mut backend = sqlite::SqliteBackend::load(conn, config.clone())?;
                let queued = backend.queued()?;
                let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
                txs.push(tx);
                workers.push(worker::spawn(
                    backend,
                    rx,
                    registry,
                    None,
                    config.unreceived.clone(),
                )?);
                (queued, None)
            }
            Database::Postgres(settings) => {
                // No identity is loaded: the directory caches them as they are used.
                let backend = postgres::PgBackend::connect(settings, config.clone()).await?;
                let queued = backend.queued_total().await?;
                let node = backend.node();
                let hint_tx = if settings.hints {
                    let (hint_tx, hint_rx) = mpsc::channel(HINT_CAPACITY);
                    tasks.push(tokio::spawn(postgres::notifier(backend.pool(), hint_rx)));
                    tasks.push(tokio::spawn(postgres::listener(
                        settings.url.clone(),
                        node,
                        Arc::clone(&registry),
                    )));
                    Some(hint_tx)
                } else {
                    None
                };
                tasks.push(tokio::spawn(postgres::sweep(
                    backend.pool(),
                    Arc::clone(&registry),
                    settings.sweep_interval,
                )));
                // One storage thread per connection, each owning the receivers that hash to
                // it: one PostgreSQL backend runs a batch on one core, so a node with one
                // connection would wait for it.
                for _ in 0..settings.connections.max(1) {
                    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
                    txs.push(tx);
                    workers.push(worker::spawn(
                        backend.clone(),
                        rx,
                        Arc::clone(&registry),
                        hint_tx.clone(),
                        config.unreceived.clone(),
                    )?);
                }
                (queued, Some(node))
            }
        };
        Ok(Loaded {
            store: Self {
                txs: Arc::from(txs),
                shared_tokens: node.is_some(),
            },
            workers,
            queued,
            node,
            tasks,
        })
    }

    /// Whether identity-creation tokens live in the database (several nodes) rather than in
    /// this process's memory.
    #[must_use]
    pub const fn shares_tokens(&self) -> bool {
        self.shared_tokens
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(command(reply)).await?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Makes a session the receiving one of its identity; returns its epoch and whether a
    /// session on another node held it until now.
    pub async fn claim(
        &self,
        identity: Identity,
        session_id: u64,
    ) -> Result<(u64, bool), StoreError> {
        self.ask(|reply| Command::Claim {
            identity,
            session_id,
            reply,
        })
        .await?
    }

    /// The identity's record in the database.
    pub async fn lookup(&self, identity: Identity) -> Result<Option<IdentityRecord>, StoreError> {
        self.ask(|reply| Command::Lookup { identity, reply })
            .await?
    }

    /// The record and queue length of an identity logging in, read after everything sent
    /// before is committed (short-lived messages not yet purged are counted).
    pub async fn login(&self, identity: Identity) -> Result<LoginInfo, StoreError> {
        self.ask(|reply| Command::Login { identity, reply }).await?
    }

    /// The identity's push URL and queue length (the push task, `crate::push`).
    pub async fn push_target(&self, identity: Identity) -> Result<PushTarget, StoreError> {
        self.ask(|reply| Command::PushTarget { identity, reply })
            .await?
    }

    /// Stores a creation token for every node; false if too many are pending.
    pub async fn issue_token(&self, token: PendingToken) -> Result<bool, StoreError> {
        self.ask(|reply| Command::IssueToken { token, reply })
            .await?
    }

    /// Takes a creation token out of the database (single use).
    pub async fn redeem_token(&self, token: Vec<u8>) -> Result<Option<PendingToken>, StoreError> {
        self.ask(|reply| Command::RedeemToken { token, reply })
            .await?
    }

    /// Sends a command, waiting while the worker is busy.
    pub async fn send(&self, command: Command) -> Result<(), StoreError> {
        let index = self.shard(&command);
        self.txs
            .get(index)
            .ok_or(StoreError::Stopped)?
            .send(command)
            .await
            .map_err(|_| StoreError::Stopped)
    }

    /// The storage thread of a command: by the identity whose queue or row it touches.
    fn shard(&self, command: &Command) -> usize {
        let identity = match command {
            Command::Enqueue(e) => &e.receiver,
            Command::Remove { receiver, .. }
            | Command::Fetch { receiver, .. }
            | Command::Relay { receiver, .. } => receiver,
            Command::Claim { identity, .. }
            | Command::Release { identity, .. }
            | Command::Lookup { identity, .. }
            | Command::Login { identity, .. }
            | Command::SetDeviceCookie { identity, .. }
            | Command::SetPushUrl { identity, .. }
            | Command::PushTarget { identity, .. } => identity,
            Command::CreateIdentity { .. }
            | Command::IssueToken { .. }
            | Command::RedeemToken { .. }
            | Command::Purge
            | Command::Flush(_) => return 0,
        };
        let hash = identity.iter().fold(0_usize, |h, &b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        hash % self.txs.len().max(1)
    }

    /// Creates (or finds) the identity of a public key.
    pub async fn create_identity(&self, public_key: PublicKey) -> Result<Created, StoreError> {
        self.ask(|reply| Command::CreateIdentity { public_key, reply })
            .await?
    }

    /// Waits until everything sent before is committed (on every storage thread).
    pub async fn flush(&self) -> Result<(), StoreError> {
        for tx in self.txs.iter() {
            let (reply, rx) = oneshot::channel();
            tx.send(Command::Flush(reply))
                .await
                .map_err(|_| StoreError::Stopped)?;
            rx.await.map_err(|_| StoreError::Stopped)?;
        }
        Ok(())
    }
}

/// An identity row as the database returns it, checked.
pub(crate) fn identity_record(
    identity: Vec<u8>,
    public_key: &[u8],
    cookie: Option<Vec<u8>>,
    cookie_changed: bool,
) -> Result<IdentityRecord, StoreError> {
    let identity: Identity = identity
        .try_into()
        .map_err(|_| StoreError::Corrupt("identities.identity"))?;
    let public_key =
        PublicKey::from_slice(public_key).ok_or(StoreError::Corrupt("identities.public_key"))?;
    let device_cookie = match cookie {
        Some(c) => {
            Some(<[u8; 16]>::try_from(c).map_err(|_| StoreError::Corrupt("identities.cookie"))?)
        }
        None => None,
    };
    Ok(IdentityRecord {
        identity,
        public_key,
        device_cookie,
        cookie_changed,
    })
}
