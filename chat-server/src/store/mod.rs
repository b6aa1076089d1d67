//! Durable storage: one thread owns the SQLite connection and applies commands in batches, one
//! transaction per batch (group commit), then answers every command of the batch. An outgoing
//! message is acked only after the commit that holds it (DESIGN §4 "stored durably → ack").

mod schema;
mod worker;

use std::path::Path;
use std::sync::Arc;

use tandem_shared::crypto::PublicKey;
use tandem_shared::csp::MessageFlags;
use tokio::sync::{mpsc, oneshot};

use crate::config::SyncMode;
use crate::directory::{Directory, IdentityRecord};
use crate::mailbox::Mailbox;
use crate::registry::Registry;
use crate::types::Identity;

pub use schema::{from_sql, to_sql};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "chat.sqlite3";

/// Commands waiting for the worker; senders wait when it is full (back pressure).
const COMMAND_CAPACITY: usize = 16_384;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
    /// Remove a delivered message from its receiver's queue.
    Remove {
        /// The receiver.
        receiver: Identity,
        /// Its sequence number.
        seq: u64,
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
    /// Drop expired short-lived messages and old dedupe entries.
    Purge,
    /// Answered once everything before it is committed (tests, shutdown).
    Flush(oneshot::Sender<()>),
    /// How many messages wait in a receiver's queue (for login-ack, spec §12).
    QueueLength {
        /// The receiver.
        receiver: Identity,
        /// Where the count goes.
        reply: oneshot::Sender<u32>,
    },
}

/// A handle to the storage worker.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
}

/// What the database held at startup.
#[derive(Debug)]
pub struct Loaded {
    /// The handle.
    pub store: Store,
    /// The worker thread, finished when every handle is dropped.
    pub worker: std::thread::JoinHandle<()>,
    /// Queued messages at startup.
    pub queued: u64,
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// SQLite synchronous mode.
    pub sync: SyncMode,
    /// Most messages per receiver queue.
    pub max_queue: u32,
    /// How long dedupe entries live, in ms.
    pub dedupe_window_ms: u64,
}

impl Store {
    /// Opens the database in `dir`, loads the directory into `directory`, and starts the worker.
    pub fn open(
        dir: &Path,
        config: StoreConfig,
        directory: &Directory,
        registry: Arc<Registry>,
    ) -> Result<Loaded, StoreError> {
        let conn = schema::open(&dir.join(DATABASE_FILE), config.sync)?;
        for record in load_identities(&conn)? {
            directory.insert(record);
        }
        let state = worker::State::load(conn, config, registry)?;
        let queued = state.queued();
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let worker = std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || worker::run(state, rx))
            .map_err(|_| StoreError::Stopped)?;
        Ok(Loaded {
            store: Self { tx },
            worker,
            queued,
        })
    }

    /// Sends a command, waiting while the worker is busy.
    pub async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.tx.send(command).await.map_err(|_| StoreError::Stopped)
    }

    /// Creates (or finds) the identity of a public key.
    pub async fn create_identity(&self, public_key: PublicKey) -> Result<Created, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::CreateIdentity { public_key, reply })
            .await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// How many messages wait in `receiver`'s queue, counted after everything sent before is
    /// committed (short-lived ones not yet purged included).
    pub async fn queue_length(&self, receiver: Identity) -> Result<u32, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::QueueLength { receiver, reply }).await?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Waits until everything sent before is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Flush(reply)).await?;
        rx.await.map_err(|_| StoreError::Stopped)
    }
}

fn load_identities(conn: &rusqlite::Connection) -> Result<Vec<IdentityRecord>, StoreError> {
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
        let identity: Identity = identity
            .try_into()
            .map_err(|_| StoreError::Corrupt("identities.identity"))?;
        let public_key = PublicKey::from_slice(&public_key)
            .ok_or(StoreError::Corrupt("identities.public_key"))?;
        let device_cookie = match cookie {
            Some(c) => Some(
                <[u8; 16]>::try_from(c).map_err(|_| StoreError::Corrupt("identities.cookie"))?,
            ),
            None => None,
        };
        out.push(IdentityRecord {
            identity,
            public_key,
            device_cookie,
            cookie_changed: changed,
        });
    }
    Ok(out)
}
