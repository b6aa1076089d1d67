//! The device application core (DESIGN §5), sans-IO: identity, contacts, groups, distribution
//! lists, conversations and messages, settings and profile, kept in sync across the device
//! group and exchanged with contacts through the mediator. The browser (`client-wasm`) and the
//! native harness only move bytes, persist records and tell the time; `docs/app.md` has the why.
//!
//! - [`App`] (`core`): the state machine the adapter drives; it owns the connection's
//!   [`crate::device::DeviceSession`].
//! - [`model`]: the typed state the UI reads.
//! - [`records`]: the storage boundary: record kinds, keys, batches, codecs.
//! - [`state`]: the state in memory and the writes every change makes.
//! - [`nonce`]: the nonce replay store (spec §0).
//! - [`reconnect`]: the reconnect policy (spec §3.5).
//! - [`memory`]: an in-memory store for tests.
//!
//! The flows live in one file each, as `impl App` blocks: `outgoing` (spec §9.6 outgoing),
//! `incoming` (leader duties), `reflected` (applying siblings' envelopes), `receipts` (read
//! receipts, typing), `sync` (transactions), `groups`, `newdevice` (DESIGN §2.4).

#[cfg(feature = "bench")]
pub mod bench;
mod core;
mod event;
mod gate;
mod groups;
mod incoming;
pub mod memory;
pub mod model;
mod newdevice;
pub mod nonce;
mod on_demand;
mod outgoing;
mod receipts;
pub mod reconnect;
pub mod records;
mod reflected;
pub mod state;
mod sync;
mod updates;

pub use self::core::{App, AppConfig, ECHO_INTERVAL_MS, ECHO_TIMEOUT_MS};
pub use event::{AppError, AppEvent, Dropped, Effect};
pub use memory::MemoryStore;
pub use model::{
    Contact, ConversationId, Direction, DistributionList, Group, GroupId, Identity, Message,
    MessageKey, MessageState, ModelError, OwnIdentity, Profile, Settings,
};
pub use nonce::{nonce_hash, NonceHasher, NonceScope, NonceStore};
pub use on_demand::{CSP_IDLE_MS, TANDEM_PUSH_TOKEN_TYPE};
pub use outgoing::MAX_TEXT_LEN;
pub use reconnect::{ReconnectDecision, ReconnectPolicy, Reconnector, StopReason};
pub use records::{Batch, Op, Record, RecordError, RecordKind, SINGLETON_KEY};
pub use state::{ConversationSummary, State};
pub use sync::{
    MAX_SAME_CLOSE, NEW_DEVICE_SYNC_MAX_HISTORY, NEW_DEVICE_SYNC_PART_BYTES,
    NEW_DEVICE_SYNC_PART_ENVELOPES,
};
pub use updates::CHANGE_WINDOW_MS;
