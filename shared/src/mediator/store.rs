//! What the mediator keeps per device group (DESIGN §3), as a synchronous storage trait.
//!
//! The Worker implements it over Durable Object SQLite, tests over [`super::MemoryStore`]. The
//! schema it maps to and the full contract are in `docs/mediator.md`. The two rules every
//! implementation must keep:
//! - **Each call is atomic**: it either happens completely or not at all and returns `Err`. The
//!   state machine relies on this so that a failure can never leave one slot half-written.
//! - **Sequence numbers are per slot, start at 1 and never repeat** while the slot exists, also
//!   when entries are removed; [`GroupStore::delete_slot`] ends the slot and its counter.

use core::fmt;

use crate::proto::d2m::DeviceSlotExpirationPolicy;

/// A d2m device id (spec §2.5: `fixed64`), the key of a device slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u64);

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:016x})", self.0)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One device slot as stored; whether the device is online is not stored (a restarted group has
/// no connections).
#[derive(Clone, PartialEq, Eq)]
pub struct SlotRecord {
    /// The slot's key.
    pub device_id: DeviceId,
    /// From the latest `ClientHello` (spec §2.5).
    pub expiration_policy: DeviceSlotExpirationPolicy,
    /// `nonce ‖ secretbox_DGDIK(d2d.DeviceInfo)` from the latest `ClientHello`; opaque here.
    pub encrypted_device_info: Vec<u8>,
    /// Unix ms of the latest successful handshake.
    pub last_connected_at: u64,
    /// Unix ms of the latest disconnect; `None` while the first connection is still open.
    pub last_disconnected_at: Option<u64>,
}

impl fmt::Debug for SlotRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotRecord")
            .field("device_id", &self.device_id)
            .field("expiration_policy", &self.expiration_policy)
            .field(
                "encrypted_device_info_len",
                &self.encrypted_device_info.len(),
            )
            .field("last_connected_at", &self.last_connected_at)
            .field("last_disconnected_at", &self.last_disconnected_at)
            .finish()
    }
}

/// One entry of a slot's reflection queue.
#[derive(Clone, PartialEq, Eq)]
pub struct QueuedReflection {
    /// The slot's sequence number; the wire `reflected-id` is derived from it, outside the
    /// range kept for ephemeral frames (`docs/mediator.md` "Reflected ids").
    pub seq: u64,
    /// Unix ms when the envelope was stored (the `Reflected` timestamp, spec §2.4).
    pub stored_at: u64,
    /// `nonce ‖ secretbox_DGRK(d2d.Envelope)`; opaque here.
    pub envelope: Vec<u8>,
}

impl fmt::Debug for QueuedReflection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedReflection")
            .field("seq", &self.seq)
            .field("stored_at", &self.stored_at)
            .field("envelope_len", &self.envelope.len())
            .finish()
    }
}

/// Length and newest entry of one slot's reflection queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueInfo {
    /// Entries in the queue.
    pub len: u64,
    /// Sequence number of the newest entry; `None` when the queue is empty.
    pub last_seq: Option<u64>,
}

/// Durable state of one device group: slots, reflection queues, the staged writes of the open
/// transaction and the shared device data (DESIGN §3). Synchronous because Durable Object SQLite
/// is; every method is atomic (see the module documentation).
pub trait GroupStore {
    /// Why a call failed; the state machine closes the affected connection with 1011.
    type Error: core::error::Error + 'static;

    /// Every slot, in any order (read once when the group starts).
    fn load_slots(&self) -> Result<Vec<SlotRecord>, Self::Error>;

    /// Inserts the slot or replaces its record; an existing slot keeps its queue and counter.
    fn put_slot(&mut self, slot: &SlotRecord) -> Result<(), Self::Error>;

    /// Removes the slot, its queue and its counter, releasing envelopes no other queue holds.
    /// Removing a slot that does not exist is not an error.
    fn delete_slot(&mut self, device_id: DeviceId) -> Result<(), Self::Error>;

    /// Stores `envelope` once and appends it to the queue of every slot in `device_ids`, in that
    /// order. Returns the sequence number it got in each queue (same order). With no slots
    /// nothing is stored. A slot that does not exist fails the whole call.
    fn enqueue(
        &mut self,
        envelope: &[u8],
        stored_at: u64,
        device_ids: &[DeviceId],
    ) -> Result<Vec<u64>, Self::Error>;

    /// [`Self::enqueue`] for several envelopes, in order, all going to the same `device_ids`:
    /// one atomic call for the reflects of one coalesced batch (`docs/mediator.md` "Batched
    /// reflects"), so a store that pays per statement writes a batch in a constant number of
    /// them. Returns, per envelope, the sequence number it got in each queue (same order as
    /// `device_ids`); within a queue the envelopes keep their order. With no slots nothing is
    /// stored. A slot that does not exist fails the whole call.
    ///
    /// The default calls [`Self::enqueue`] per envelope; it is atomic only for a store whose
    /// `enqueue` can fail on the first envelope alone (an unknown slot). Stores that can fail
    /// otherwise override it.
    fn enqueue_batch(
        &mut self,
        envelopes: &[(&[u8], u64)],
        device_ids: &[DeviceId],
    ) -> Result<Vec<Vec<u64>>, Self::Error> {
        envelopes
            .iter()
            .map(|&(envelope, stored_at)| self.enqueue(envelope, stored_at, device_ids))
            .collect()
    }

    /// Up to `limit` entries of the slot's queue with a sequence number above `after` (all when
    /// `None`), oldest first.
    fn read_queue(
        &self,
        device_id: DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedReflection>, Self::Error>;

    /// Removes one entry; `Ok(false)` if it was not there.
    fn remove_from_queue(&mut self, device_id: DeviceId, seq: u64) -> Result<bool, Self::Error>;

    /// Removes every listed entry that is there, in one atomic call (a batch of acks, see
    /// `docs/mediator.md` "Ack batching"); returns how many were removed. An unknown slot fails
    /// the whole call.
    fn remove_from_queue_many(
        &mut self,
        device_id: DeviceId,
        seqs: &[u64],
    ) -> Result<u64, Self::Error>;

    /// [`Self::remove_from_queue_many`] for several slots in one atomic call (the batched acks
    /// of every sibling a reflect goes to); returns how many were removed per listed slot, in
    /// order. An unknown slot fails the whole call.
    fn remove_from_queues(
        &mut self,
        batches: &[(DeviceId, Vec<u64>)],
    ) -> Result<Vec<u64>, Self::Error>;

    /// Length and newest entry of the slot's queue (empty for an unknown slot).
    fn queue_info(&self, device_id: DeviceId) -> Result<QueueInfo, Self::Error>;

    /// Appends an envelope to the open transaction's staged writes (one list per group: one
    /// lock per group).
    fn stage(&mut self, envelope: &[u8], stored_at: u64) -> Result<(), Self::Error>;

    /// Moves every staged envelope, in staging order and keeping its `stored_at`, into the
    /// queue of every slot in `device_ids`, and empties the staged list. Returns each slot's
    /// newest sequence number afterwards (same order as `device_ids`). A slot that does not
    /// exist fails the whole call.
    fn commit_staged(&mut self, device_ids: &[DeviceId]) -> Result<Vec<u64>, Self::Error>;

    /// Forgets every staged envelope.
    fn discard_staged(&mut self) -> Result<(), Self::Error>;

    /// The blob last set with `SetSharedDeviceData`; empty if never set.
    fn shared_device_data(&self) -> Result<Vec<u8>, Self::Error>;

    /// Replaces the shared device data.
    fn set_shared_device_data(&mut self, data: &[u8]) -> Result<(), Self::Error>;
}
