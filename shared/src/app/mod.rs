//! The device application core (DESIGN §5), sans-IO: identity, contacts, groups, distribution
//! lists, conversations and messages, settings and profile, kept in sync across the device
//! group and exchanged with contacts through the mediator. The browser (`client-wasm`) and the
//! native harness only move bytes, persist records and tell the time; `docs/app.md` has the why.
//!
//! - [`model`]: the typed state the UI reads.
//! - [`records`]: the storage boundary: record kinds, keys, batches, codecs.
//! - [`state`]: the state in memory and the writes every change makes.
//! - [`nonce`]: the nonce replay store (spec §0).
//! - [`memory`]: an in-memory store for tests.

pub mod memory;
pub mod model;
pub mod nonce;
pub mod records;
pub mod state;

pub use memory::MemoryStore;
pub use model::{
    Contact, ConversationId, Direction, DistributionList, Group, GroupId, Identity, Message,
    MessageKey, MessageState, ModelError, OwnIdentity, Profile, Settings,
};
pub use nonce::{nonce_hash, NonceScope, NonceStore};
pub use records::{Batch, Op, Record, RecordError, RecordKind, SINGLETON_KEY};
pub use state::State;
