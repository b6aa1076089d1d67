//! The group: connections, cached slots, the leader and the lock, and the input/output surface.
//! The rules live in the sibling files (`handshake`, `reflection`, `transaction`, `devices`,
//! `leader`, `proxy`); this file dispatches to them and owns closing and timers.

use std::collections::{BTreeMap, VecDeque};

use rand_core::CryptoRngCore;

use super::config::GroupConfig;
use super::effect::{CloseCause, ConnId, Effect};
use super::store::{DeviceId, GroupStore, QueuedReflection, SlotRecord};
use crate::crypto::PublicKey;
use crate::csp::ServerUnitSplitter;
use crate::d2m::{D2mDecodeError, D2mMessage, Reflected, ServerChallenge, MAX_CONTAINER_LEN};
use crate::proto::d2m::{self as pb, DeviceSlotExpirationPolicy};

/// The only d2m protocol version (spec §2.5 `ProtocolVersion.INITIAL`, `V0` since protocol version 23).
pub const PROTOCOL_VERSION: u32 = 0;

/// Whether a binary frame of `len` bytes can be a d2m container at all. Adapters ask before
/// copying a frame out of their runtime and report a frame that cannot with
/// [`Group::on_oversize_frame`].
#[must_use]
pub const fn frame_fits(len: usize) -> bool {
    len <= MAX_CONTAINER_LEN
}

/// One device group's mediator, sans-IO (DESIGN §3): feed it connection events, bytes and time;
/// take [`Effect`]s and the next deadline out. See the module documentation for the flow.
pub struct Group<S: GroupStore> {
    pub(super) config: GroupConfig,
    pub(super) device_group_id: PublicKey,
    pub(super) store: S,
    /// Every slot, mirrored from the store (changed only after the store call succeeded).
    pub(super) slots: BTreeMap<DeviceId, Slot>,
    pub(super) conns: BTreeMap<ConnId, Conn>,
    /// The authenticated connection of each online device.
    pub(super) online: BTreeMap<DeviceId, ConnId>,
    pub(super) leader: Option<ConnId>,
    pub(super) lock: Option<Lock>,
    /// A `discard_staged` failed: the store may still hold staged writes of a dead transaction.
    pub(super) staged_dirty: bool,
    pub(super) effects: VecDeque<Effect>,
    pub(super) store_errors: VecDeque<S::Error>,
    /// Connections to close once the current input is handled (a frame that did not encode).
    pub(super) deferred_closes: Vec<(ConnId, CloseCause)>,
    /// The latest time seen; never goes back.
    pub(super) now: u64,
    /// Between [`Group::begin_batch`] and [`Group::end_batch`]: reflects wait in
    /// `pending_reflects` and are stored together (`docs/mediator.md` "Batched reflects").
    pub(super) batching: bool,
    /// A chat server socket closed during this input: waiting devices may get it at `settle`
    /// (only then, so an input that frees none does not scan the connections).
    pub(super) csp_freed: bool,
    /// Reflects received and not yet stored (neither acked nor visible), in arrival order.
    pub(super) pending_reflects: Vec<PendingReflect>,
}

/// A reflect waiting to be stored with the rest of its batch.
#[derive(Debug)]
pub(super) struct PendingReflect {
    pub(super) conn: ConnId,
    pub(super) device: DeviceId,
    pub(super) reflect_id: u32,
    pub(super) envelope: Vec<u8>,
}

impl<S: GroupStore> core::fmt::Debug for Group<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Group")
            .field("device_group_id", &self.device_group_id)
            .field("slots", &self.slots.len())
            .field("connections", &self.conns.len())
            .field("leader", &self.leader)
            .field("lock", &self.lock.as_ref().map(|l| l.holder))
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// A slot with what the group keeps in memory about its queue.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) record: SlotRecord,
    pub(super) queue_len: u64,
    /// Newest sequence number in the queue, `None` if it was empty when last known.
    pub(super) tail: Option<u64>,
    /// A failed expiry is retried no earlier than this.
    pub(super) expiry_retry_at: Option<u64>,
}

#[derive(Debug)]
pub(super) enum Conn {
    Handshake(Handshake),
    /// Boxed: most of a group's connections are online, and a session is several times a
    /// handshake's size.
    Online(Box<Session>),
}

/// Between `ServerHello` and a valid `ClientHello`.
#[derive(Debug)]
pub(super) struct Handshake {
    pub(super) challenge: ServerChallenge,
    pub(super) held: Vec<Vec<u8>>,
    pub(super) held_bytes: usize,
    pub(super) deadline: u64,
}

/// An authenticated device connection.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) device_id: DeviceId,
    pub(super) connected_since: u64,
    /// The chat server connection; `None` before the first proxy frame.
    pub(super) csp: Option<CspLink>,
    pub(super) delivery: Delivery,
    /// Bytes sent to it since its last frame (`GroupConfig::max_unanswered_bytes`).
    pub(super) unanswered: usize,
    /// Tandem extensions negotiated in its handshake (`ClientHello.tandem_features`).
    pub(super) features: u32,
    /// Its chat server connection was closed by `CspClose` and not reopened: as the leader it
    /// is sent `Wake` at this time unless a push comes first (`GroupConfig::wake_poll_ms`).
    pub(super) wake_at: Option<u64>,
    /// When it was last sent `Wake` (`WAKE_DEBOUNCE_MS`); not kept across hibernation, which
    /// costs at most one more `Wake`.
    pub(super) woken_at: Option<u64>,
}

/// A device's chat server connection.
#[derive(Debug)]
pub(super) struct CspLink {
    pub(super) splitter: ServerUnitSplitter,
    /// `Some` while every connection the group may have is taken: the socket is not asked for
    /// yet, and the device's proxy payloads wait here, in order.
    pub(super) waiting: Option<CspWait>,
}

/// A device waiting for a chat server connection.
#[derive(Debug)]
pub(super) struct CspWait {
    /// After this the device is closed with 4001.
    pub(super) deadline: u64,
    pub(super) held: Vec<Vec<u8>>,
    pub(super) held_bytes: usize,
}

/// Where this connection is in its slot's queue.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    /// Sequence number of the last entry sent on this connection.
    pub(super) cursor: Option<u64>,
    /// The queue's newest entry at the handshake: `ReflectionQueueDry` follows it.
    pub(super) dry_boundary: Option<u64>,
    /// `ReflectionQueueDry` was sent.
    pub(super) dry: bool,
    /// Sent and not acked: wire id and sequence number, oldest first.
    pub(super) in_flight: VecDeque<(u32, u64)>,
    /// Ids of recent ephemeral frames, whose (forbidden but common) acks are ignored.
    pub(super) ephemeral_ids: VecDeque<u32>,
    /// Ephemeral frames given an id on this connection so far (wrapping): the next one gets
    /// the id after it in the ephemeral range (`reflection::EPHEMERAL_IDS`).
    pub(super) ephemeral_count: u32,
    /// Ephemeral frames waiting until the queue entries before them are sent.
    pub(super) pending_ephemeral: VecDeque<PendingEphemeral>,
    /// `Some(after)`: this connection holds the lock, and its `BeginTransactionAck` waits
    /// until the queue entries up to `after` (the slot's newest at the grant) are sent
    /// (`docs/mediator.md` "The lock holder has seen every commit before its lock").
    pub(super) lock_ack_after: Option<Option<u64>>,
    /// Chat server units waiting until the queue entries stored before they arrived are sent
    /// (`docs/mediator.md` "Chat server data after the reflections before it"), oldest first.
    pub(super) pending_proxy: VecDeque<(Option<u64>, Vec<u8>)>,
    /// Bytes in `pending_proxy`.
    pub(super) pending_proxy_bytes: usize,
    /// Sequence numbers acked but not yet removed from the store: removed in one call before
    /// the next frame to this connection (`docs/mediator.md` "Ack batching").
    pub(super) acked: Vec<u64>,
    /// When `Some`: exactly the slot's queue entries after `cursor`, oldest first, kept from
    /// the reflects that stored them, so that a connection that is caught up gets new entries
    /// without reading them back from the store (`docs/mediator.md` "Delivery from memory").
    /// `None`: not known in memory; the store is read.
    pub(super) ahead: Option<VecDeque<QueuedReflection>>,
    /// Envelope bytes in `ahead`.
    pub(super) ahead_bytes: usize,
}

/// An ephemeral frame placed after queue entry `after`.
#[derive(Debug)]
pub(super) struct PendingEphemeral {
    pub(super) after: Option<u64>,
    pub(super) reflected: Reflected,
}

/// The group's transaction lock (spec §6).
#[derive(Debug)]
pub(super) struct Lock {
    pub(super) holder: ConnId,
    pub(super) device_id: DeviceId,
    pub(super) scope: Vec<u8>,
    pub(super) deadline: u64,
    /// Envelopes staged so far.
    pub(super) staged: u64,
}

impl<S: GroupStore> Group<S> {
    /// Starts the group over `store`, which may hold the slots and queues of an earlier run.
    ///
    /// Staged writes of a transaction that died with the earlier run are discarded, and slots
    /// that were online then count as disconnected at `now_ms`.
    pub fn new(
        config: GroupConfig,
        device_group_id: PublicKey,
        store: S,
        now_ms: u64,
    ) -> Result<Self, S::Error> {
        Self::start(config, device_group_id, store, now_ms, &[])
    }

    /// [`Group::new`], except that the devices in `still_online` keep counting as connected
    /// (their connections are resumed after hibernation, [`Group::resume`]).
    pub(super) fn start(
        config: GroupConfig,
        device_group_id: PublicKey,
        mut store: S,
        now_ms: u64,
        still_online: &[DeviceId],
    ) -> Result<Self, S::Error> {
        store.discard_staged()?;
        let slots = Self::load_slots(&mut store, now_ms, still_online)?;
        Ok(Self {
            config,
            device_group_id,
            store,
            slots,
            conns: BTreeMap::new(),
            online: BTreeMap::new(),
            leader: None,
            lock: None,
            staged_dirty: false,
            effects: VecDeque::new(),
            store_errors: VecDeque::new(),
            deferred_closes: Vec::new(),
            now: now_ms,
            batching: false,
            csp_freed: false,
            pending_reflects: Vec::new(),
        })
    }

    /// The slots kept in memory for `Group::new`/`Group::resume`: slots whose device is not in
    /// `still_online` and looks connected in the store count as disconnected at `now_ms`.
    fn load_slots(
        store: &mut S,
        now_ms: u64,
        still_online: &[DeviceId],
    ) -> Result<std::collections::BTreeMap<DeviceId, Slot>, S::Error> {
        let mut slots = std::collections::BTreeMap::new();
        for mut record in store.load_slots()? {
            let looks_connected = record
                .last_disconnected_at
                .is_none_or(|at| at < record.last_connected_at);
            if looks_connected && !still_online.contains(&record.device_id) {
                record.last_disconnected_at = Some(now_ms);
                store.put_slot(&record)?;
            }
            let info = store.queue_info(record.device_id)?;
            slots.insert(
                record.device_id,
                Slot {
                    record,
                    queue_len: info.len,
                    tail: info.last_seq,
                    expiry_retry_at: None,
                },
            );
        }
        Ok(slots)
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// A WebSocket was accepted: sends `ServerHello` with a fresh ESK and challenge (spec §3.1).
    /// A `conn` already in use is ignored.
    pub fn on_connect(&mut self, conn: ConnId, now_ms: u64, rng: &mut impl CryptoRngCore) {
        self.advance(now_ms);
        let handshakes = self
            .conns
            .values()
            .filter(|c| matches!(c, Conn::Handshake(_)))
            .count();
        if !self.conns.contains_key(&conn) && handshakes >= self.config.max_handshakes.max(1) {
            // Never registered: nothing else to undo (no ServerHello, no timer).
            let cause = CloseCause::TooManyHandshakes;
            self.effects.push_back(Effect::Close {
                conn,
                code: cause.code(),
                cause,
            });
        } else if !self.conns.contains_key(&conn) {
            let challenge = ServerChallenge::new(rng);
            let hello = challenge.server_hello(PROTOCOL_VERSION);
            self.conns.insert(
                conn,
                Conn::Handshake(Handshake {
                    challenge,
                    held: Vec::new(),
                    held_bytes: 0,
                    deadline: now_ms.saturating_add(self.config.handshake_timeout_ms),
                }),
            );
            self.send(conn, hello);
        }
        self.settle();
    }

    /// One binary WebSocket message from a device.
    pub fn on_binary(&mut self, conn: ConnId, bytes: &[u8], now_ms: u64) {
        self.advance(now_ms);
        self.dispatch(conn, bytes);
        self.settle();
    }

    /// A text WebSocket message: a protocol error (spec §2.1).
    pub fn on_text(&mut self, conn: ConnId, now_ms: u64) {
        self.refuse_frame(conn, CloseCause::TextFrame, now_ms);
    }

    /// A binary message longer than [`MAX_CONTAINER_LEN`], reported by its length alone: an
    /// adapter checks [`frame_fits`] before it copies a frame, so a runtime that accepts 32 MiB
    /// frames (Cloudflare) never has one copied into the isolate's memory.
    pub fn on_oversize_frame(&mut self, conn: ConnId, now_ms: u64) {
        self.refuse_frame(conn, CloseCause::FrameTooLarge, now_ms);
    }

    fn refuse_frame(&mut self, conn: ConnId, cause: CloseCause, now_ms: u64) {
        self.advance(now_ms);
        self.store_pending_reflects();
        self.close(conn, cause);
        self.settle();
    }

    /// The device's WebSocket closed or failed.
    pub fn on_disconnect(&mut self, conn: ConnId, now_ms: u64) {
        self.advance(now_ms);
        // Its reflects still waiting can never be acked: dropped like frames still in flight
        // when the socket died (the device reflects them again, spec §5).
        // The others are stored after it is gone, so nothing is sent to the dead socket.
        self.pending_reflects.retain(|p| p.conn != conn);
        self.detach(conn);
        self.store_pending_reflects();
        self.settle();
    }

    /// The deadline from [`Group::poll_timeout`] (or any later time) was reached.
    pub fn on_timeout(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.store_pending_reflects();
        self.settle();
    }

    /// Starts a batch: until [`Group::end_batch`], reflects (not ephemeral, not inside the
    /// sender's own transaction) are held and then stored in as few store calls as possible,
    /// acked only once stored (`docs/mediator.md` "Batched reflects"). The Worker wraps every
    /// coalesced turn in a batch; without one each reflect is stored as it comes. Inputs that
    /// could see the held reflects store them first (every d2m frame but a reflect, a
    /// `ReflectedAck`, a proxy frame or a `ClientHello`; text, disconnect, timeout). A slot
    /// created meanwhile gets them too; a sender that disconnects or is closed meanwhile has
    /// its held reflects dropped unacked, like frames in flight when a socket dies.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Ends the batch: stores the held reflects, acks them and delivers them.
    pub fn end_batch(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.batching = false;
        self.store_pending_reflects();
        self.settle();
    }

    // ---- outputs ------------------------------------------------------------------------------

    /// The next effect, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// A store failure since the last call, for the driver's log; the affected connection has
    /// already been closed with 1011.
    pub fn poll_store_error(&mut self) -> Option<S::Error> {
        self.store_errors.pop_front()
    }

    /// When [`Group::on_timeout`] must be called next: transaction TTL, handshake timeout or a
    /// VOLATILE slot's expiry.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let lock = self.lock.as_ref().map(|l| l.deadline);
        let handshakes = self.conns.values().filter_map(|c| match c {
            Conn::Handshake(h) => Some(h.deadline),
            Conn::Online(_) => None,
        });
        let expiries = self.slots.values().filter_map(|slot| self.expiry_of(slot));
        let csp_waits = self.conns.values().filter_map(|c| match c {
            Conn::Online(s) => s.csp.as_ref()?.waiting.as_ref().map(|w| w.deadline),
            Conn::Handshake(_) => None,
        });
        lock.into_iter()
            .chain(handshakes)
            .chain(expiries)
            .chain(csp_waits)
            .chain(self.leader_wake_at())
            .min()
    }

    // ---- inspection ---------------------------------------------------------------------------

    /// The leader's device id.
    #[must_use]
    pub fn leader(&self) -> Option<DeviceId> {
        self.leader.and_then(|conn| self.device_of(conn))
    }

    /// The device holding the transaction lock.
    #[must_use]
    pub fn transaction_holder(&self) -> Option<DeviceId> {
        self.lock.as_ref().map(|l| l.device_id)
    }

    /// Every slot's record, by device id.
    pub fn slots(&self) -> impl Iterator<Item = &SlotRecord> {
        self.slots.values().map(|s| &s.record)
    }

    /// The device id of an authenticated connection.
    #[must_use]
    pub fn device_of(&self, conn: ConnId) -> Option<DeviceId> {
        match self.conns.get(&conn) {
            Some(Conn::Online(session)) => Some(session.device_id),
            _ => None,
        }
    }

    /// Whether the group still knows the connection (handshaking or authenticated).
    #[must_use]
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The store, for inspection.
    #[must_use]
    pub const fn store(&self) -> &S {
        &self.store
    }

    // ---- dispatch -----------------------------------------------------------------------------

    fn dispatch(&mut self, conn: ConnId, bytes: &[u8]) {
        if let Some(session) = self.session_mut(conn) {
            session.unanswered = 0;
        }
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        let message = match D2mMessage::decode(bytes) {
            Ok(message) => message,
            Err(D2mDecodeError::UnknownPayloadType(_)) => {
                return self.close(conn, CloseCause::UnknownPayloadType);
            }
            Err(_) => return self.close(conn, CloseCause::MalformedFrame),
        };
        match state {
            Conn::Handshake(_) => match message {
                D2mMessage::Proxy(payload) => self.hold_proxy(conn, payload),
                // Held reflects are not stored first: a slot this creates simply gets them too
                // (they were reflected to every slot there is when they are stored), and a
                // sender it replaces has its held reflects dropped unacked.
                D2mMessage::ClientHello(hello) => self.on_client_hello(conn, &hello),
                other if is_server_to_client(&other) => {
                    self.close(conn, CloseCause::ServerPayloadFromClient);
                }
                _ => self.close(conn, CloseCause::FrameBeforeHandshake),
            },
            Conn::Online(session) => {
                let device = session.device_id;
                // Held reflects (earlier frames) are stored before anything whose handling
                // could see them; that may have closed this connection.
                if !matches!(
                    message,
                    D2mMessage::ReflectedAck(_) | D2mMessage::Proxy(_) | D2mMessage::Reflect(_)
                ) {
                    self.store_pending_reflects();
                    if !self.conns.contains_key(&conn) {
                        return;
                    }
                }
                // Batched acks go to the store before a frame whose handling writes and then
                // answers, so a failure closes the connection before anything else is stored.
                if !matches!(message, D2mMessage::ReflectedAck(_) | D2mMessage::Proxy(_))
                    && !self.flush_acks(conn)
                {
                    return;
                }
                match message {
                    D2mMessage::Proxy(payload) => self.forward_proxy(conn, payload),
                    D2mMessage::ClientHello(_) => {
                        self.close(conn, CloseCause::RepeatedClientHello);
                    }
                    D2mMessage::Reflect(reflect) => self.on_reflect(conn, device, reflect),
                    D2mMessage::ReflectedAck(ack) => self.on_reflected_ack(conn, ack.reflected_id),
                    D2mMessage::GetDevicesInfo(_) => self.on_get_devices_info(conn),
                    D2mMessage::DropDevice(drop) => {
                        self.on_drop_device(conn, device, DeviceId(drop.device_id));
                    }
                    D2mMessage::SetSharedDeviceData(set) => {
                        self.on_set_shared_device_data(conn, &set.encrypted_shared_device_data);
                    }
                    D2mMessage::BeginTransaction(begin) => {
                        self.on_begin_transaction(conn, device, begin);
                    }
                    D2mMessage::CommitTransaction(_) => self.on_commit_transaction(conn),
                    D2mMessage::CspClose => self.on_csp_close(conn),
                    D2mMessage::ServerHello(_)
                    | D2mMessage::ServerInfo(_)
                    | D2mMessage::ReflectionQueueDry(_)
                    | D2mMessage::RolePromotedToLeader(_)
                    | D2mMessage::DevicesInfo(_)
                    | D2mMessage::DropDeviceAck(_)
                    | D2mMessage::BeginTransactionAck(_)
                    | D2mMessage::CommitTransactionAck(_)
                    | D2mMessage::TransactionRejected(_)
                    | D2mMessage::TransactionEnded(_)
                    | D2mMessage::ReflectAck(_)
                    | D2mMessage::Reflected(_)
                    | D2mMessage::Wake
                    | D2mMessage::PushUrl(_) => {
                        self.close(conn, CloseCause::ServerPayloadFromClient);
                    }
                }
            }
        }
    }

    // ---- shared helpers -----------------------------------------------------------------------

    /// Encodes and queues a frame; a frame that does not fit a container closes the connection
    /// with 1011 once the current input is handled.
    ///
    /// Acks of this connection still held in memory are made durable first, so a device that
    /// sees any later frame knows its acks are stored; if that fails the connection is closed
    /// with 1011 and the frame dropped.
    pub(super) fn send(&mut self, conn: ConnId, message: impl Into<D2mMessage>) {
        if !self.flush_acks(conn) {
            return;
        }
        let bytes = match message.into().encode() {
            Ok(bytes) => bytes,
            Err(_) => return self.deferred_closes.push((conn, CloseCause::EncodeFailure)),
        };
        let max = self.config.max_unanswered_bytes;
        if let Some(session) = self.session_mut(conn) {
            let before = session.unanswered;
            session.unanswered = before.saturating_add(bytes.len());
            if session.unanswered > max {
                // Dropped: the connection is closed at the end of this input.
                if before <= max {
                    self.deferred_closes.push((conn, CloseCause::NotReading));
                }
                return;
            }
        }
        self.effects.push_back(Effect::Send { conn, bytes });
    }

    /// Removes this connection's batched acks from the store in one call. `false` if the store
    /// failed: the connection is then closed with 1011 (the entries come again).
    pub(super) fn flush_acks(&mut self, conn: ConnId) -> bool {
        let Some(session) = self.session_mut(conn) else {
            return true;
        };
        if session.delivery.acked.is_empty() {
            return true;
        }
        let device = session.device_id;
        let seqs = core::mem::take(&mut session.delivery.acked);
        match self.remove_acked(device, &seqs) {
            Ok(()) => true,
            Err(error) => {
                self.store_failed(conn, error);
                false
            }
        }
    }

    /// [`Self::flush_acks`] for the online connections of `devices`, in one store call. If it
    /// fails, every one of those connections is closed with 1011 (their entries come again).
    pub(super) fn flush_acks_of(&mut self, devices: &[DeviceId]) {
        let mut conns = Vec::new();
        let mut batches = Vec::new();
        for device in devices {
            let Some(&conn) = self.online.get(device) else {
                continue;
            };
            if !self.slots.contains_key(device) {
                continue;
            }
            let Some(session) = self.session_mut(conn) else {
                continue;
            };
            if session.delivery.acked.is_empty() {
                continue;
            }
            batches.push((*device, core::mem::take(&mut session.delivery.acked)));
            conns.push(conn);
        }
        if batches.len() <= 1 {
            // One slot (or none): the plain call, no list of pairs to build.
            if let (Some((device, seqs)), Some(conn)) = (batches.pop(), conns.pop()) {
                if let Err(error) = self.remove_acked(device, &seqs) {
                    self.store_failed(conn, error);
                }
            }
            return;
        }
        match self.store.remove_from_queues(&batches) {
            Ok(removed) => {
                for ((device, _), n) in batches.iter().zip(removed) {
                    if let Some(slot) = self.slots.get_mut(device) {
                        slot.queue_len = slot.queue_len.saturating_sub(n);
                    }
                }
            }
            Err(error) => {
                self.store_errors.push_back(error);
                for conn in conns {
                    self.close(conn, CloseCause::StorageFailure);
                }
            }
        }
    }

    /// Removes acked entries of `device` and keeps the queue length; a slot that is gone took
    /// its entries with it.
    fn remove_acked(&mut self, device: DeviceId, seqs: &[u64]) -> Result<(), S::Error> {
        if seqs.is_empty() || !self.slots.contains_key(&device) {
            return Ok(());
        }
        let removed = self.store.remove_from_queue_many(device, seqs)?;
        if let Some(slot) = self.slots.get_mut(&device) {
            slot.queue_len = slot.queue_len.saturating_sub(removed);
        }
        Ok(())
    }

    /// Closes a connection (if the group still knows it) and forgets it at once.
    pub(super) fn close(&mut self, conn: ConnId, cause: CloseCause) {
        if self.conns.contains_key(&conn) {
            self.effects.push_back(Effect::Close {
                conn,
                code: cause.code(),
                cause,
            });
            self.detach(conn);
        }
    }

    /// Records a store failure and closes the connection whose input needed the store.
    pub(super) fn store_failed(&mut self, conn: ConnId, error: S::Error) {
        self.store_errors.push_back(error);
        self.close(conn, CloseCause::StorageFailure);
    }

    /// Forgets a connection: its chat server link, its slot's online state, its lock and its
    /// leadership.
    fn detach(&mut self, conn: ConnId) {
        let Some(Conn::Online(session)) = self.conns.remove(&conn) else {
            return;
        };
        if session
            .csp
            .as_ref()
            .is_some_and(|link| link.waiting.is_none())
        {
            self.effects.push_back(Effect::CloseCsp { conn });
            self.csp_freed = true;
        }
        let device = session.device_id;
        if let Err(error) = self.remove_acked(device, &session.delivery.acked) {
            // Not removed: the entries come again on the next connection (spec §5: devices
            // dedupe).
            self.store_errors.push_back(error);
        }
        if self.online.get(&device) == Some(&conn) {
            self.online.remove(&device);
        }
        if let Some(slot) = self.slots.get_mut(&device) {
            // The cache is right whatever the store says: the device is offline now. A slot
            // whose write failed is repaired when the group next starts.
            slot.record.last_disconnected_at = Some(self.now);
            if let Err(error) = self.store.put_slot(&slot.record) {
                self.store_errors.push_back(error);
            }
        }
        if self.lock.as_ref().is_some_and(|l| l.holder == conn) {
            self.abandon_transaction();
        }
        if self.leader == Some(conn) {
            self.leader = None;
            self.promote_next();
        }
    }

    /// Removes a slot and its queue, closing its connection with `cause` if it is online.
    pub(super) fn drop_slot(
        &mut self,
        device: DeviceId,
        cause: CloseCause,
    ) -> Result<(), S::Error> {
        self.store.delete_slot(device)?;
        self.slots.remove(&device);
        if let Some(conn) = self.online.remove(&device) {
            self.close(conn, cause);
        }
        Ok(())
    }

    /// Moves time forward and fires every deadline that has passed: TTL, handshake timeouts,
    /// volatile expiry. Runs before every input, so the outcome does not depend on when the
    /// driver's alarm fires.
    pub(super) fn advance(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
        let now = self.now;
        if let Some(lock) = &self.lock {
            if lock.deadline <= now {
                let holder = lock.holder;
                self.close(holder, CloseCause::TransactionTtlExceeded);
            }
        }
        let timed_out: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(&conn, c)| match c {
                Conn::Handshake(h) if h.deadline <= now => Some(conn),
                _ => None,
            })
            .collect();
        for conn in timed_out {
            self.close(conn, CloseCause::HandshakeTimeout);
        }
        for conn in self.csp_waits_over(now) {
            self.close(conn, CloseCause::CspUnreachable);
        }
        self.poll_wake(now);
        let expired: Vec<DeviceId> = self
            .slots
            .iter()
            .filter(|(_, slot)| self.expiry_of(slot).is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        for device in expired {
            if let Err(error) = self.store.delete_slot(device) {
                self.store_errors.push_back(error);
                if let Some(slot) = self.slots.get_mut(&device) {
                    slot.expiry_retry_at = Some(now.saturating_add(self.config.store_retry_ms));
                }
            } else {
                self.slots.remove(&device);
            }
        }
    }

    /// When an offline VOLATILE slot disappears.
    fn expiry_of(&self, slot: &Slot) -> Option<u64> {
        let record = &slot.record;
        if record.expiration_policy != DeviceSlotExpirationPolicy::Volatile
            || self.online.contains_key(&record.device_id)
        {
            return None;
        }
        let at = record
            .last_disconnected_at?
            .saturating_add(self.config.volatile_grace_ms);
        Some(slot.expiry_retry_at.map_or(at, |retry| retry.max(at)))
    }

    /// Closes what had to wait for the end of the current input.
    pub(super) fn settle(&mut self) {
        while let Some((conn, cause)) = self.deferred_closes.pop() {
            self.close(conn, cause);
        }
        if std::mem::take(&mut self.csp_freed) {
            self.open_waiting_csp();
        }
    }

    /// Every authenticated connection except `except`, in connection order.
    pub(super) fn online_conns_except(&self, except: ConnId) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(&conn, c)| conn != except && matches!(c, Conn::Online(_)))
            .map(|(&conn, _)| conn)
            .collect()
    }

    pub(super) fn session(&self, conn: ConnId) -> Option<&Session> {
        match self.conns.get(&conn) {
            Some(Conn::Online(session)) => Some(session),
            _ => None,
        }
    }

    pub(super) fn session_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        match self.conns.get_mut(&conn) {
            Some(Conn::Online(session)) => Some(session),
            _ => None,
        }
    }
}

/// Payload types only the mediator sends (spec §2.3 direction S→C).
fn is_server_to_client(message: &D2mMessage) -> bool {
    matches!(
        message,
        D2mMessage::ServerHello(_)
            | D2mMessage::ServerInfo(_)
            | D2mMessage::ReflectionQueueDry(_)
            | D2mMessage::RolePromotedToLeader(_)
            | D2mMessage::DevicesInfo(_)
            | D2mMessage::DropDeviceAck(_)
            | D2mMessage::BeginTransactionAck(_)
            | D2mMessage::CommitTransactionAck(_)
            | D2mMessage::TransactionRejected(_)
            | D2mMessage::TransactionEnded(_)
            | D2mMessage::ReflectAck(_)
            | D2mMessage::Reflected(_)
            | D2mMessage::Wake
            | D2mMessage::PushUrl(_)
    )
}

/// `ServerInfo.device_slot_state` and `ClientHello.expected_device_slot_state` values.
pub(super) const fn slot_state(existing: bool) -> pb::DeviceSlotState {
    if existing {
        pb::DeviceSlotState::Existing
    } else {
        pb::DeviceSlotState::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::d2m::{CloseCode, PayloadType, MAX_CONTAINER_LEN};
    use crate::mediator::testkit::{reflected, Harness, T0};
    use crate::mediator::MemoryStore;

    #[test]
    fn text_frames_close_4010_before_and_after_the_handshake() {
        let mut h = Harness::new();
        let early = h.connect();
        let late = h.login(1);
        for conn in [early, late] {
            h.group.on_text(conn, h.now);
            h.drain();
            assert_eq!(h.closed(conn), Some(CloseCause::TextFrame));
        }
        assert_eq!(CloseCause::TextFrame.code(), CloseCode::ProtocolError);
    }

    #[test]
    fn connections_past_the_handshake_cap_are_closed_1013_and_the_group_goes_on() {
        let mut h = Harness::with_config(GroupConfig {
            max_handshakes: 2,
            ..GroupConfig::default()
        });
        let a = h.login(1);
        let (p1, _p2) = (h.connect(), h.connect());
        let over = ConnId(9_999);
        h.group.on_connect(over, h.now, &mut h.rng);
        h.drain();
        assert_eq!(h.closed(over), Some(CloseCause::TooManyHandshakes));
        assert!(
            h.take(over).is_empty(),
            "no ServerHello for a refused connection"
        );
        assert_eq!(CloseCause::TooManyHandshakes.code().as_u16(), 1013);
        assert_eq!(h.closed(a), None);
        // A handshake that ends makes room; a device still logs in.
        h.disconnect(p1);
        let b = h.login(2);
        assert_eq!(h.closed(b), None);
        let (_, _) = h.reflect(a, b"still reflecting");
        assert_eq!(reflected(&h.take(b)).len(), 1);
    }

    #[test]
    fn frames_too_long_for_a_container_are_refused_by_length_with_4010() {
        assert!(frame_fits(MAX_CONTAINER_LEN));
        assert!(!frame_fits(MAX_CONTAINER_LEN + 1));
        let mut h = Harness::new();
        let early = h.connect();
        let late = h.login(1);
        let other = h.login(2);
        for conn in [early, late] {
            h.group.on_oversize_frame(conn, h.now);
            h.drain();
            assert_eq!(h.closed(conn), Some(CloseCause::FrameTooLarge));
        }
        assert_eq!(h.closed(other), None, "the group's other device stays");
        assert_eq!(CloseCause::FrameTooLarge.code(), CloseCode::ProtocolError);
        assert_eq!(CloseCause::FrameTooLarge.reason(), "frame too large");
    }

    #[test]
    fn containers_outside_4_to_65536_bytes_close_4010() {
        for len in [0, 3, MAX_CONTAINER_LEN + 1] {
            let mut h = Harness::new();
            let conn = h.login(1);
            let mut bytes = vec![0; len];
            if let Some(first) = bytes.first_mut() {
                *first = PayloadType::GetDevicesInfo.as_u8();
            }
            h.send_bytes(conn, &bytes);
            assert_eq!(h.closed(conn), Some(CloseCause::MalformedFrame), "{len}");
        }
    }

    #[test]
    fn a_65536_byte_proxy_container_is_accepted() {
        let mut h = Harness::new();
        let conn = h.login(1);
        let mut bytes = vec![0; MAX_CONTAINER_LEN];
        bytes[0] = PayloadType::Proxy.as_u8();
        h.send_bytes(conn, &bytes);
        assert_eq!(h.closed(conn), None);
    }

    #[test]
    fn unknown_payload_types_close_4010() {
        for code in [0x01_u8, 0x13, 0x35, 0x84, 0xff] {
            let mut h = Harness::new();
            let conn = h.login(1);
            h.send_bytes(conn, &[code, 0, 0, 0]);
            assert_eq!(
                h.closed(conn),
                Some(CloseCause::UnknownPayloadType),
                "{code:#x}"
            );
        }
    }

    #[test]
    fn malformed_payloads_close_4010() {
        let mut h = Harness::new();
        let conn = h.login(1);
        // ReflectedAck with 9 bytes (fixed size 8).
        h.send_bytes(conn, &[0x83, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(h.closed(conn), Some(CloseCause::MalformedFrame));
    }

    #[test]
    fn server_to_client_payload_types_from_a_client_close_4010() {
        let server_only = [
            PayloadType::ServerHello,
            PayloadType::ServerInfo,
            PayloadType::ReflectionQueueDry,
            PayloadType::RolePromotedToLeader,
            PayloadType::DevicesInfo,
            PayloadType::DropDeviceAck,
            PayloadType::BeginTransactionAck,
            PayloadType::CommitTransactionAck,
            PayloadType::TransactionRejected,
            PayloadType::TransactionEnded,
            PayloadType::ReflectAck,
            PayloadType::Reflected,
        ];
        for t in server_only {
            let bytes = match t {
                PayloadType::ReflectAck => [vec![t.as_u8(), 0, 0, 0], vec![0; 16]].concat(),
                PayloadType::Reflected => [vec![t.as_u8(), 0, 0, 0, 16], vec![0; 15 + 40]].concat(),
                _ => vec![t.as_u8(), 0, 0, 0],
            };
            for authenticated in [false, true] {
                let mut h = Harness::new();
                let conn = if authenticated {
                    h.login(1)
                } else {
                    h.connect()
                };
                h.send_bytes(conn, &bytes);
                assert_eq!(
                    h.closed(conn),
                    Some(CloseCause::ServerPayloadFromClient),
                    "{t} (authenticated: {authenticated})"
                );
            }
        }
    }

    #[test]
    fn input_for_a_closed_or_unknown_connection_is_ignored() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        h.disconnect(a);
        h.take(b);
        h.send(
            a,
            crate::d2m::Reflect::new(1, crate::d2m::ReflectFlags::NONE, vec![0; 48]),
        );
        h.send_bytes(ConnId(999), &[0x30, 0, 0, 0]);
        h.group.on_disconnect(ConnId(999), h.now);
        h.drain();
        assert!(h.take(b).is_empty());
        assert!(h.closes.is_empty());
    }

    #[test]
    fn a_restarted_group_keeps_queues_and_counts_online_slots_as_disconnected() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        let c = h.login(3);
        h.disconnect(c);
        h.send(
            a,
            crate::proto::d2m::BeginTransaction {
                encrypted_scope: vec![],
                ttl: 0,
            },
        );
        h.reflect(a, b"staged, dies with the process");
        h.reflect(b, b"queued for 1 and 3");
        let store: MemoryStore = h.group.store().clone();
        assert_eq!(store.staged_count(), 1);

        let keys = crate::mediator::testkit::keys();
        let group = Group::new(GroupConfig::default(), keys.dgpk_public, store, T0 + 500).unwrap();
        assert_eq!(group.store().staged_count(), 0);
        let slots: Vec<(u64, Option<u64>)> = group
            .slots()
            .map(|s| (s.device_id.0, s.last_disconnected_at))
            .collect();
        assert_eq!(
            slots,
            [(1, Some(T0 + 500)), (2, Some(T0 + 500)), (3, Some(T0))]
        );
        assert_eq!(group.leader(), None);
        assert_eq!(group.transaction_holder(), None);
        let mut h2 = Harness::with_store(GroupConfig::default(), group.store().clone());
        let c = h2.login(3);
        assert_eq!(reflected(&h2.take(c)).len(), 1);
    }

    #[test]
    fn effects_do_not_print_payload_bytes() {
        let effect = Effect::CspSend {
            conn: ConnId(1),
            bytes: vec![0xab; 3],
        };
        assert_eq!(format!("{effect:?}"), "CspSend { conn: ConnId(1), len: 3 }");
    }
}
