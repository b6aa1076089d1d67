//! The mediator's per-group state machine (DESIGN §3), sans-IO in the quinn-proto way: the
//! driver (a Durable Object, or a test) feeds connection events, bytes and time into a
//! [`Group`], and carries out the [`Effect`]s it polls; [`Group::poll_timeout`] says when to
//! call [`Group::on_timeout`]. Durable state goes through the synchronous [`GroupStore`].
//!
//! One connection's life (details and every decision in `docs/mediator.md`):
//!
//! ```text
//!  on_connect ──► ServerHello{v0, esk, challenge}
//!      │
//!      ▼
//!  Handshake ── proxy ──► held (bounded; over → 4010)
//!      │  ── text / other frame / bad response ──► 4010     version ≠ 0 ──► 4110
//!      │  ── no ClientHello in time ──► 4013
//!      │ ClientHello ok
//!      ▼
//!  slot check: NEW/EXISTING ≠ expected ──► 4115
//!              same device online ──► older connection 4112
//!              no free slot: REJECT ──► 4111 │ DROP_LEAST_RECENT ──► evict oldest offline (none ──► 4111)
//!      │
//!      ▼
//!  Online: ServerInfo ─► Reflected… (window of max_in_flight, acks move it) ─► ReflectionQueueDry
//!      │                                                    └─► RolePromotedToLeader if no leader
//!      ├─ proxy ──► OpenCsp (first) + CspSend;  chat server bytes ──► one proxy frame per CSP unit
//!      ├─ Reflect ──► store once, queue for every other slot, ReflectAck, deliver to online ones
//!      │    (ephemeral: online siblings only; holder of the lock: staged until commit)
//!      ├─ ReflectedAck ──► remove from this slot's queue (unknown id ──► 4012)
//!      ├─ BeginTransaction ──► Ack │ TransactionRejected;  CommitTransaction ──► queues + Ack
//!      │    + TransactionEnded to the others;  TTL ──► 4011
//!      ├─ GetDevicesInfo / DropDevice (target ──► 4113) / SetSharedDeviceData
//!      └─ disconnect / close ──► slot offline, CloseCsp, lock released, next leader promoted
//! ```
//!
//! Files: [`config`](GroupConfig), [`store`](GroupStore) and [`MemoryStore`], the
//! [`Effect`]s, and the rules by topic (`handshake`, `reflection`, `transaction`, `leader`,
//! `devices`, `proxy`) as `impl` blocks of [`Group`].

mod config;
mod devices;
mod effect;
mod group;
mod handshake;
mod hibernation;
mod leader;
mod memory_store;
mod proxy;
mod push;
mod reflection;
mod store;
mod transaction;
mod wake;

#[cfg(test)]
mod testkit;

pub use config::GroupConfig;
pub use devices::MAX_SHARED_DEVICE_DATA_LEN;
pub use effect::{CloseCause, ConnId, Effect};
pub use group::{frame_fits, Group, PROTOCOL_VERSION};
pub use handshake::MAX_ENCRYPTED_DEVICE_INFO_LEN;
pub use hibernation::{
    decode_attachment, encode_attachment, AttachmentError, ConnSnapshot, SNAPSHOT_EPHEMERAL_IDS,
};
pub use memory_store::{MemoryStore, MemoryStoreError};
pub use proxy::{MAX_HELD_PROXY_BYTES, MAX_WAITING_PROXY_BYTES};
pub use push::{push_url, PushKey, PushTokenError, MAX_PUSH_TOKEN_AGE_MS, PUSH_PATH};
pub use reflection::{
    EPHEMERAL_IDS, EPHEMERAL_IDS_REMEMBERED, FIRST_EPHEMERAL_ID, MIN_ENCRYPTED_ENVELOPE_LEN,
};
pub use store::{DeviceId, GroupStore, QueueInfo, QueuedReflection, SlotRecord};
pub use transaction::MAX_ENCRYPTED_SCOPE_LEN;
pub use wake::{
    PushOutcome, SUPPORTED_TANDEM_FEATURES, TANDEM_FEATURE_CSP_ON_DEMAND, WAKE_DEBOUNCE_MS,
};
