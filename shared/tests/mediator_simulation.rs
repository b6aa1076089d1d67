//! Deterministic simulation of the mediator's group state machine: random devices connecting,
//! reflecting, acking, dropping, beginning and committing transactions, misbehaving and
//! disconnecting at any point, over a simulated network (FIFO per connection and direction,
//! arbitrary interleaving across connections) with simulated time and injected store failures.
//!
//! Devices speak real bytes: envelopes sealed with the real `dgrk`, the challenge answered with
//! the real `dgpk`, scopes under `dgtsk`, every frame through the real d2m codec.
//!
//! After every group input the simulation checks, against a model built from the group's own
//! acknowledgements:
//! - at most one leader, promoted only after its `ReflectionQueueDry`, and one whenever a dry
//!   device is connected;
//! - the transaction lock is exclusive (a grant only while free; rejections name the holder),
//!   and its `BeginTransactionAck` reaches the holder only after every entry queued for it
//!   before the grant;
//! - every slot's stored queue is exactly the model's: each acked reflect, for every slot that
//!   existed when it became visible, in order, until that slot acks it or is dropped; stored
//!   bodies are freed when no queue holds them. Acks are batched (docs/mediator.md "Ack
//!   batching"): an entry whose ack the group took but has not yet stored may be in the store
//!   or not, but once the group emits any later frame to that connection (or the connection
//!   ends without a store failure) it must be gone, and it never comes again;
//! - transaction writes reach the queues all at once at commit, or never (discarded writes are
//!   never delivered).
//!
//! Devices check at receipt: each envelope exactly once per slot (redelivery of an unacked one on
//! a new connection is fine), in queue order, with the stored timestamp; `ReflectionQueueDry`
//! after exactly `reflection_queue_length` frames; `ReflectAck`s in reflect order; a
//! well-behaved device is never closed with 4010 or 4012. At the end every device drains its
//! queue and every queue must be empty.
//!
//! `MEDIATOR_SIM_SEEDS=n` runs seeds `0..n` (default 300), `MEDIATOR_SIM_STEPS` sets the steps
//! per seed (default 300), `MEDIATOR_SIM_SEED=s` replays one seed and prints its trace.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    unreachable_pub,
    missing_debug_implementations
)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tandem_shared::d2d::{open_envelope, seal_envelope, seal_transaction_scope, Scope};
use tandem_shared::d2m::{
    respond, validate_server_hello, CloseCode, D2mMessage, Reflect, ReflectFlags, ReflectedAck,
};
use tandem_shared::keys::{DeviceGroupKey, DeviceGroupKeys};
use tandem_shared::mediator::{
    CloseCause, ConnId, DeviceId, Effect, Group, GroupConfig, GroupStore, MemoryStore,
    MemoryStoreError, QueueInfo, QueuedReflection, SlotRecord,
};
use tandem_shared::proto::d2d as d2d_pb;
use tandem_shared::proto::d2m as pb;

type Tag = u64;
type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

// ---- a store that fails on demand ----------------------------------------------------------

#[derive(Debug)]
enum SimStoreError {
    Injected,
    Contract(MemoryStoreError),
}

impl fmt::Display for SimStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Injected => f.write_str("injected failure"),
            Self::Contract(e) => write!(f, "contract violation: {e}"),
        }
    }
}

impl std::error::Error for SimStoreError {}

/// A [`MemoryStore`] whose next write (or read) fails when armed.
#[derive(Debug, Default)]
struct SimStore {
    inner: MemoryStore,
    fail_write: Cell<bool>,
    fail_read: Cell<bool>,
    /// `enqueue_batch` calls that stored two or more envelopes (coverage of batched reflects).
    batched: Cell<u64>,
}

impl SimStore {
    fn write(&self) -> Result<(), SimStoreError> {
        if self.fail_write.take() {
            Err(SimStoreError::Injected)
        } else {
            Ok(())
        }
    }

    fn read(&self) -> Result<(), SimStoreError> {
        if self.fail_read.take() {
            Err(SimStoreError::Injected)
        } else {
            Ok(())
        }
    }
}

fn contract<T>(r: Result<T, MemoryStoreError>) -> Result<T, SimStoreError> {
    r.map_err(SimStoreError::Contract)
}

impl GroupStore for SimStore {
    type Error = SimStoreError;

    fn load_slots(&self) -> Result<Vec<SlotRecord>, SimStoreError> {
        self.read()?;
        contract(self.inner.load_slots())
    }
    fn put_slot(&mut self, slot: &SlotRecord) -> Result<(), SimStoreError> {
        self.write()?;
        contract(self.inner.put_slot(slot))
    }
    fn delete_slot(&mut self, device_id: DeviceId) -> Result<(), SimStoreError> {
        self.write()?;
        contract(self.inner.delete_slot(device_id))
    }
    fn enqueue(
        &mut self,
        envelope: &[u8],
        stored_at: u64,
        device_ids: &[DeviceId],
    ) -> Result<Vec<u64>, SimStoreError> {
        self.write()?;
        contract(self.inner.enqueue(envelope, stored_at, device_ids))
    }
    fn enqueue_batch(
        &mut self,
        envelopes: &[(&[u8], u64)],
        device_ids: &[DeviceId],
    ) -> Result<Vec<Vec<u64>>, SimStoreError> {
        self.write()?;
        let seqs = contract(self.inner.enqueue_batch(envelopes, device_ids))?;
        if envelopes.len() >= 2 {
            self.batched.set(self.batched.get() + 1);
        }
        Ok(seqs)
    }
    fn read_queue(
        &self,
        device_id: DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedReflection>, SimStoreError> {
        self.read()?;
        contract(self.inner.read_queue(device_id, after, limit))
    }
    fn remove_from_queue(&mut self, device_id: DeviceId, seq: u64) -> Result<bool, SimStoreError> {
        self.write()?;
        contract(self.inner.remove_from_queue(device_id, seq))
    }
    fn remove_from_queue_many(
        &mut self,
        device_id: DeviceId,
        seqs: &[u64],
    ) -> Result<u64, SimStoreError> {
        self.write()?;
        contract(self.inner.remove_from_queue_many(device_id, seqs))
    }
    fn remove_from_queues(
        &mut self,
        batches: &[(DeviceId, Vec<u64>)],
    ) -> Result<Vec<u64>, SimStoreError> {
        self.write()?;
        contract(self.inner.remove_from_queues(batches))
    }
    fn queue_info(&self, device_id: DeviceId) -> Result<QueueInfo, SimStoreError> {
        self.read()?;
        contract(self.inner.queue_info(device_id))
    }
    fn stage(&mut self, envelope: &[u8], stored_at: u64) -> Result<(), SimStoreError> {
        self.write()?;
        contract(self.inner.stage(envelope, stored_at))
    }
    fn commit_staged(&mut self, device_ids: &[DeviceId]) -> Result<Vec<u64>, SimStoreError> {
        self.write()?;
        contract(self.inner.commit_staged(device_ids))
    }
    fn discard_staged(&mut self) -> Result<(), SimStoreError> {
        self.write()?;
        contract(self.inner.discard_staged())
    }
    fn shared_device_data(&self) -> Result<Vec<u8>, SimStoreError> {
        self.read()?;
        contract(self.inner.shared_device_data())
    }
    fn set_shared_device_data(&mut self, data: &[u8]) -> Result<(), SimStoreError> {
        self.write()?;
        contract(self.inner.set_shared_device_data(data))
    }
}

// ---- the simulated world -------------------------------------------------------------------

/// A frame on its way from a device to the group.
#[derive(Debug)]
enum Up {
    Binary {
        bytes: Vec<u8>,
        note: Note,
    },
    /// A text WebSocket message (always misbehaviour).
    Text,
}

/// What the model learns if the group accepts a frame (the connection survives it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    Nothing,
    /// A `ReflectedAck` of a queued entry.
    Ack(Tag),
    /// `SetSharedDeviceData`.
    Shared(Vec<u8>),
    /// `BeginTransaction` (valid): granted when it arrives if the lock is free.
    Begin,
    /// Deliberately invalid: the group must close the connection.
    Bad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitInfo,
    Online,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Txn {
    Idle,
    Requested,
    Held(u8),
    Committing,
}

/// One WebSocket: both directions in flight, the device's view of it and what the group
/// emitted on it.
#[derive(Debug)]
struct Link {
    device: usize,
    to_server: VecDeque<Up>,
    to_device: VecDeque<Vec<u8>>,
    /// The group closed it: the close frame follows `to_device`.
    close: Option<CloseCode>,
    close_cause: Option<CloseCause>,
    /// The group still knows it.
    alive: bool,
    misbehaved: bool,
    // Device side.
    phase: Phase,
    announced: u32,
    before_dry: u32,
    dry: bool,
    received: Vec<Tag>,
    id_to_tag: BTreeMap<u32, Tag>,
    pending_acks: VecDeque<(u32, Option<Tag>)>,
    next_reflect_id: u32,
    outstanding: BTreeMap<u32, Tag>,
    txn: Txn,
    /// The entries queued for this slot when its lock was granted: the `BeginTransactionAck`
    /// may come only after every one of them.
    grant_queue: Option<Vec<Tag>>,
    /// Plain reflects sent while a `BeginTransaction` was pending: the group stages them too,
    /// so the device keeps the transaction below the queue limit.
    reflects_while_requested: u8,
    pre_auth_proxies: u8,
    csp_expected: VecDeque<Vec<u8>>,
    // Group side, from its effects.
    incarnation: Option<u64>,
    emitted_dry: bool,
    csp_open: bool,
    csp_closed: bool,
    csp_fed: bool,
    csp_next_unit: u32,
    csp_pending: Vec<u8>,
    proxy_sent: VecDeque<Vec<u8>>,
}

impl Link {
    fn new(device: usize) -> Self {
        Self {
            device,
            to_server: VecDeque::new(),
            to_device: VecDeque::new(),
            close: None,
            close_cause: None,
            alive: true,
            misbehaved: false,
            phase: Phase::AwaitHello,
            announced: 0,
            before_dry: 0,
            dry: false,
            received: Vec::new(),
            id_to_tag: BTreeMap::new(),
            pending_acks: VecDeque::new(),
            next_reflect_id: 1,
            outstanding: BTreeMap::new(),
            txn: Txn::Idle,
            grant_queue: None,
            reflects_while_requested: 0,
            pre_auth_proxies: 0,
            csp_expected: VecDeque::new(),
            incarnation: None,
            emitted_dry: false,
            csp_open: false,
            csp_closed: false,
            csp_fed: false,
            csp_next_unit: 0,
            csp_pending: Vec::new(),
            proxy_sent: VecDeque::new(),
        }
    }
}

#[derive(Debug)]
struct Device {
    id: DeviceId,
    volatile: bool,
    /// Has seen a `ServerInfo` for its current slot: expects EXISTING.
    knows_slot: bool,
    link: Option<ConnId>,
}

/// What must be true, built from the group's acknowledgements.
#[derive(Debug, Default)]
struct Model {
    /// Per slot: visible entries not yet acked, in queue order.
    queues: BTreeMap<DeviceId, VecDeque<Tag>>,
    /// Per slot: acks the group took, still in `queues` until a later frame to the device shows
    /// they are stored.
    pending: BTreeMap<DeviceId, BTreeSet<Tag>>,
    /// The connection that sent the acks in `pending`.
    pending_link: BTreeMap<DeviceId, ConnId>,
    acked: BTreeMap<DeviceId, BTreeSet<Tag>>,
    /// Bumped whenever a slot disappears; frames of an older incarnation are not checked.
    incarnation: BTreeMap<DeviceId, u64>,
    holder: Option<ConnId>,
    /// The connection whose `BeginTransaction` the group is handling on a free lock.
    granting: Option<ConnId>,
    staged: Vec<Tag>,
    discarded: BTreeSet<Tag>,
    last_ended: Option<DeviceId>,
    leader: Option<ConnId>,
    stored_at: BTreeMap<Tag, u64>,
    tag_of: HashMap<Vec<u8>, Tag>,
    ephemeral_from: BTreeMap<Tag, DeviceId>,
    ephemeral_seen: BTreeSet<(DeviceId, Tag)>,
    shared_device_data: Vec<u8>,
}

struct Sim {
    seed: u64,
    choice: ChaCha20Rng,
    crypto: ChaCha20Rng,
    keys: DeviceGroupKeys,
    group: Group<SimStore>,
    config: GroupConfig,
    now: u64,
    next_conn: u64,
    next_tag: Tag,
    devices: Vec<Device>,
    links: BTreeMap<ConnId, Link>,
    model: Model,
    slots_before: BTreeMap<DeviceId, SlotRecord>,
    faults: bool,
    /// Between `begin_batch` and `end_batch` (the Worker's coalesced turns): reflects are held
    /// and stored together, across any other input the simulation makes meanwhile.
    batching: bool,
    /// The input being fed is `end_batch`.
    ending_batch: bool,
    trace: Vec<String>,
    verbose: bool,
    /// How often each interesting thing happened, to show the run covers the rules.
    stats: BTreeMap<String, u64>,
}

const T0: u64 = 1_700_000_000_000;

impl Sim {
    fn new(seed: u64, verbose: bool) -> Self {
        let mut choice = ChaCha20Rng::seed_from_u64(seed);
        let crypto = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed_c0de_5eed_c0de);
        let mut config = GroupConfig::default();
        config.max_device_slots = choice.gen_range(2..=4);
        config.max_queue_len = choice.gen_range(6..=20);
        config.max_in_flight = choice.gen_range(1..=5);
        config.max_pending_ephemeral = choice.gen_range(1..=6);
        config.volatile_grace_ms = choice.gen_range(2_000..=15_000);
        config.max_transaction_ttl_s = choice.gen_range(1..=4);
        config.handshake_timeout_ms = 20_000;
        let device_count = choice.gen_range(3..=5);
        let devices = (0..device_count)
            .map(|i| Device {
                id: DeviceId(0x1000 + i),
                volatile: choice.gen_bool(0.3),
                knows_slot: false,
                link: None,
            })
            .collect();
        let keys = DeviceGroupKey::from_bytes([0x77; 32]).derive_keys();
        let group = Group::new(config.clone(), keys.dgpk_public, SimStore::default(), T0)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut sim = Self {
            seed,
            choice,
            crypto,
            keys,
            group,
            config,
            now: T0,
            next_conn: 1,
            next_tag: 1,
            devices,
            links: BTreeMap::new(),
            model: Model::default(),
            slots_before: BTreeMap::new(),
            faults: true,
            batching: false,
            ending_batch: false,
            trace: Vec::new(),
            verbose,
            stats: BTreeMap::new(),
        };
        sim.log(format!("seed {} config {:?}", sim.seed, sim.config));
        sim
    }

    fn log(&mut self, line: String) {
        if self.verbose {
            eprintln!("[{}] {line}", self.now - T0);
        }
        self.trace.push(format!("[{}] {line}", self.now - T0));
    }

    fn count(&mut self, what: impl Into<String>) {
        *self.stats.entry(what.into()).or_default() += 1;
    }

    fn dev_of_link(&self, conn: ConnId) -> DeviceId {
        self.devices[self.links[&conn].device].id
    }

    // ---- feeding the group ------------------------------------------------------------------

    /// Runs one group input, then checks its effects and every invariant.
    fn input(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Group<SimStore>, u64, &mut ChaCha20Rng),
    ) -> Check {
        self.feed(what, f)?;
        self.check_invariants()
    }

    /// Runs one group input and checks its effects; the caller checks the invariants once the
    /// model knows what the input meant.
    fn feed(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Group<SimStore>, u64, &mut ChaCha20Rng),
    ) -> Check {
        self.snapshot_slots();
        self.log(what.to_owned());
        let now = self.now;
        f(&mut self.group, now, &mut self.crypto);
        for _ in 0..self.group.store().batched.take() {
            self.count("reflects stored in one batch call");
        }
        self.reconcile_slots();
        self.process_effects()
    }

    fn snapshot_slots(&mut self) {
        self.slots_before = self
            .group
            .slots()
            .map(|s| (s.device_id, s.clone()))
            .collect();
    }

    /// The device's WebSocket drops: the group learns it without a Close effect, so the model
    /// does too, before the effects (a new leader, `TransactionEnded`) are checked.
    fn disconnect(&mut self, conn: ConnId) -> Check {
        self.snapshot_slots();
        self.log(format!("disconnect {conn:?}"));
        self.group.on_disconnect(conn, self.now);
        self.conn_gone(conn);
        self.reconcile_slots();
        self.process_effects()?;
        self.check_invariants()
    }

    /// A slot that disappeared takes its model with it.
    fn reconcile_slots(&mut self) {
        let now: BTreeSet<DeviceId> = self.group.slots().map(|s| s.device_id).collect();
        let gone: Vec<DeviceId> = self
            .slots_before
            .keys()
            .filter(|id| !now.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.log(format!("  slot {id} gone"));
            self.count("slot gone");
            let before = &self.slots_before[&id];
            let expired = before.expiration_policy == pb::DeviceSlotExpirationPolicy::Volatile
                && before
                    .last_disconnected_at
                    .is_some_and(|at| at + self.config.volatile_grace_ms <= self.now);
            let online = self.devices.iter().any(|d| {
                d.id == id
                    && d.link.is_some_and(|c| {
                        self.links.get(&c).is_some_and(|l| l.phase == Phase::Online)
                    })
            });
            if expired && !online {
                self.count("slot gone: volatile expiry");
            } else if !online {
                self.count("slot gone: offline (dropped or evicted)");
            }
            self.reset_slot_model(id);
        }
    }

    fn reset_slot_model(&mut self, id: DeviceId) {
        self.model.queues.remove(&id);
        self.model.pending.remove(&id);
        self.model.pending_link.remove(&id);
        self.model.acked.remove(&id);
        *self.model.incarnation.entry(id).or_default() += 1;
    }

    fn conn_gone(&mut self, conn: ConnId) {
        let device = self.dev_of_link(conn);
        if let Some(link) = self.links.get_mut(&conn) {
            link.alive = false;
        }
        // The group stores batched acks when the connection ends; if that failed, the entries
        // stay and come again.
        if self.model.pending_link.get(&device) == Some(&conn) {
            self.settle_acks(device);
        }
        if self.model.holder == Some(conn) {
            let staged = std::mem::take(&mut self.model.staged);
            self.log(format!(
                "  transaction of {device} discarded ({} writes)",
                staged.len()
            ));
            if !staged.is_empty() {
                self.count("transaction discarded with writes");
            }
            self.model.discarded.extend(staged);
            self.model.holder = None;
            self.model.last_ended = Some(device);
        }
        if self.model.leader == Some(conn) {
            self.model.leader = None;
        }
    }

    /// Acks of `device` the group took: those gone from the store count as acked for good,
    /// the others stay queued (they come again).
    fn settle_acks(&mut self, device: DeviceId) {
        self.model.pending_link.remove(&device);
        let Some(pending) = self.model.pending.remove(&device) else {
            return;
        };
        let stored = self.stored_tags(device);
        for tag in pending {
            if !stored.contains(&tag) {
                if let Some(queue) = self.model.queues.get_mut(&device) {
                    queue.retain(|&t| t != tag);
                }
                self.model.acked.entry(device).or_default().insert(tag);
                self.count("batched ack stored");
            } else {
                self.count("batched ack not stored (comes again)");
            }
        }
    }

    fn stored_tags(&self, device: DeviceId) -> Vec<Tag> {
        self.group
            .store()
            .inner
            .read_queue(device, None, usize::MAX)
            .unwrap_or_default()
            .iter()
            .map(|e| self.model.tag_of.get(&e.envelope).copied().unwrap_or(0))
            .collect()
    }

    fn process_effects(&mut self) -> Check {
        while let Some(effect) = self.group.poll_effect() {
            match effect {
                Effect::Send { conn, bytes } => {
                    let message = D2mMessage::decode(&bytes)
                        .map_err(|e| format!("group sent undecodable bytes: {e}"))?;
                    ensure!(
                        self.links.get(&conn).is_some_and(|l| l.alive),
                        "send to a connection the group closed: {conn:?} {message:?}"
                    );
                    // Any frame after an ack means the ack is stored.
                    let device = self.dev_of_link(conn);
                    if let Some(pending) = self
                        .model
                        .pending
                        .get(&device)
                        .filter(|_| self.model.pending_link.get(&device) == Some(&conn))
                    {
                        let stored = self.stored_tags(device);
                        let late: Vec<Tag> = pending
                            .iter()
                            .filter(|t| stored.contains(t))
                            .copied()
                            .collect();
                        ensure!(
                            late.is_empty(),
                            "{device}: {} sent while acks of {late:?} are not stored",
                            summary(&message)
                        );
                        self.settle_acks(device);
                    }
                    self.on_emitted(conn, &message)?;
                    self.links
                        .get_mut(&conn)
                        .unwrap()
                        .to_device
                        .push_back(bytes);
                }
                Effect::Close { conn, code, cause } => {
                    self.log(format!("  close {conn:?} {code} ({cause})"));
                    self.count(format!("close {}", code.as_u16()));
                    if self.ending_batch {
                        self.count(format!("close {} storing a batch", code.as_u16()));
                    }
                    let link = self.links.get_mut(&conn).ok_or("close of unknown conn")?;
                    ensure!(link.alive, "closed twice: {conn:?}");
                    ensure!(
                        link.misbehaved
                            || !matches!(code, CloseCode::ProtocolError | CloseCode::UnexpectedAck),
                        "well-behaved {conn:?} closed with {code} ({cause})"
                    );
                    link.close = Some(code);
                    link.close_cause = Some(cause);
                    self.conn_gone(conn);
                }
                Effect::OpenCsp { conn } => {
                    let link = self
                        .links
                        .get_mut(&conn)
                        .ok_or("OpenCsp for unknown conn")?;
                    ensure!(!link.csp_open, "OpenCsp twice on {conn:?}");
                    ensure!(link.alive, "OpenCsp for a closed connection");
                    link.csp_open = true;
                }
                Effect::CspSend { conn, bytes } => {
                    let link = self
                        .links
                        .get_mut(&conn)
                        .ok_or("CspSend for unknown conn")?;
                    ensure!(
                        link.csp_open && !link.csp_closed,
                        "CspSend without open socket"
                    );
                    let expected = link.proxy_sent.pop_front();
                    ensure!(
                        expected.as_ref() == Some(&bytes),
                        "CspSend out of order on {conn:?}"
                    );
                }
                Effect::CloseCsp { conn } => {
                    let link = self
                        .links
                        .get_mut(&conn)
                        .ok_or("CloseCsp for unknown conn")?;
                    ensure!(
                        link.csp_open && !link.csp_closed,
                        "CloseCsp without open socket"
                    );
                    link.csp_closed = true;
                }
            }
        }
        while let Some(error) = self.group.poll_store_error() {
            ensure!(
                matches!(error, SimStoreError::Injected),
                "store contract broken: {error}"
            );
        }
        Ok(())
    }

    /// What a frame the group just emitted means for the model.
    fn on_emitted(&mut self, conn: ConnId, message: &D2mMessage) -> Check {
        let device = self.dev_of_link(conn);
        match message {
            D2mMessage::ServerInfo(info) => {
                let new = info.device_slot_state == i32::from(pb::DeviceSlotState::New);
                if new {
                    if let Some(before) = self.slots_before.get(&device) {
                        // Only a VOLATILE slot past its grace may be replaced in one input.
                        ensure!(
                            before.expiration_policy == pb::DeviceSlotExpirationPolicy::Volatile
                                && before.last_disconnected_at.is_some_and(|at| {
                                    at + self.config.volatile_grace_ms <= self.now
                                }),
                            "ServerInfo NEW for the live slot of {device}"
                        );
                        self.reset_slot_model(device);
                        self.count("volatile slot replaced in one input");
                    }
                }
                let queued = self.model.queues.get(&device).map_or(0, VecDeque::len);
                ensure!(
                    info.reflection_queue_length as usize == queued,
                    "{device}: reflection_queue_length {} but {queued} queued",
                    info.reflection_queue_length
                );
                ensure!(info.current_time == self.now, "ServerInfo.current_time");
                ensure!(
                    info.max_device_slots == self.config.max_device_slots,
                    "ServerInfo.max_device_slots"
                );
                ensure!(
                    info.encrypted_shared_device_data == self.model.shared_device_data,
                    "ServerInfo lacks the latest shared device data"
                );
                let incarnation = *self.model.incarnation.entry(device).or_default();
                self.links.get_mut(&conn).unwrap().incarnation = Some(incarnation);
            }
            D2mMessage::ReflectionQueueDry(_) => {
                let link = self.links.get_mut(&conn).unwrap();
                ensure!(!link.emitted_dry, "second ReflectionQueueDry on {conn:?}");
                link.emitted_dry = true;
            }
            D2mMessage::RolePromotedToLeader(_) => {
                ensure!(
                    self.links[&conn].emitted_dry,
                    "{device} promoted before its ReflectionQueueDry"
                );
                ensure!(
                    self.model.leader.is_none(),
                    "{device} promoted while {:?} leads",
                    self.model.leader
                );
                self.log(format!("  leader {device}"));
                self.count("leader promoted");
                self.model.leader = Some(conn);
            }
            D2mMessage::ReflectAck(ack) => {
                ensure!(ack.timestamp == self.now, "ReflectAck timestamp is not now");
                let tag = *self.links[&conn]
                    .outstanding
                    .get(&ack.reflect_id)
                    .ok_or_else(|| format!("ReflectAck for unknown reflect {}", ack.reflect_id))?;
                self.model.stored_at.insert(tag, ack.timestamp);
                if self.model.holder == Some(conn) {
                    self.log(format!("  staged #{tag}"));
                    self.model.staged.push(tag);
                } else {
                    self.make_visible(device, &[tag]);
                }
            }
            D2mMessage::BeginTransactionAck(_) => {
                ensure!(
                    self.model.holder == Some(conn) || self.model.granting == Some(conn),
                    "lock acked to {device} while {:?} holds it",
                    self.model.holder
                );
            }
            D2mMessage::CommitTransactionAck(_) => {
                ensure!(
                    self.model.holder == Some(conn),
                    "commit ack without the lock"
                );
                let staged = std::mem::take(&mut self.model.staged);
                if !staged.is_empty() {
                    self.count("transaction committed with writes");
                }
                self.make_visible(device, &staged);
                self.model.holder = None;
                self.model.last_ended = Some(device);
            }
            D2mMessage::TransactionRejected(rejected) => {
                let holder = self.model.holder.ok_or("rejected while the lock is free")?;
                ensure!(holder != conn, "holder rejected by itself");
                ensure!(
                    DeviceId(rejected.device_id) == self.dev_of_link(holder),
                    "TransactionRejected names the wrong holder"
                );
            }
            D2mMessage::TransactionEnded(ended) => {
                ensure!(
                    self.model.last_ended == Some(DeviceId(ended.device_id)),
                    "TransactionEnded names {} but {:?} ended",
                    ended.device_id,
                    self.model.last_ended
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Appends tags to every other slot's model queue (reflect acked or transaction committed).
    fn make_visible(&mut self, sender: DeviceId, tags: &[Tag]) {
        let slots: Vec<DeviceId> = self
            .group
            .slots()
            .map(|s| s.device_id)
            .filter(|&id| id != sender)
            .collect();
        self.log(format!("  visible {tags:?} for {slots:?}"));
        for slot in slots {
            self.model
                .queues
                .entry(slot)
                .or_default()
                .extend(tags.iter().copied());
        }
    }

    fn check_invariants(&self) -> Check {
        let slots: Vec<DeviceId> = self.group.slots().map(|s| s.device_id).collect();
        ensure!(
            slots.len() <= self.config.max_device_slots as usize,
            "{} slots, max {}",
            slots.len(),
            self.config.max_device_slots
        );
        // Leader.
        let leader = self.model.leader.map(|c| self.dev_of_link(c));
        ensure!(
            self.group.leader() == leader,
            "group says leader {:?}, model {leader:?}",
            self.group.leader()
        );
        if self.model.leader.is_none() {
            let dry_online = self
                .links
                .iter()
                .find(|(_, l)| l.alive && l.emitted_dry)
                .map(|(c, _)| *c);
            ensure!(
                dry_online.is_none(),
                "no leader although {dry_online:?} is dry"
            );
        }
        // Lock.
        let holder = self.model.holder.map(|c| self.dev_of_link(c));
        ensure!(
            self.group.transaction_holder() == holder,
            "group says holder {:?}, model {holder:?}",
            self.group.transaction_holder()
        );
        let store = &self.group.store().inner;
        if self.model.holder.is_some() {
            ensure!(
                store.staged_count() == self.model.staged.len(),
                "{} staged in store, {} in model",
                store.staged_count(),
                self.model.staged.len()
            );
        }
        // Queues: exactly the model's, in order.
        for id in self.model.queues.keys() {
            ensure!(slots.contains(id), "model queue for vanished slot {id}");
        }
        let mut distinct = BTreeSet::new();
        for &id in &slots {
            let stored: Vec<Tag> = store
                .read_queue(id, None, usize::MAX)
                .map_err(|e| e.to_string())?
                .iter()
                .map(|e| self.model.tag_of.get(&e.envelope).copied().unwrap_or(0))
                .collect();
            let model: Vec<Tag> = self
                .model
                .queues
                .get(&id)
                .map(|q| q.iter().copied().collect())
                .unwrap_or_default();
            // Entries whose ack is taken but maybe not yet stored may be there or not.
            let pending = self.model.pending.get(&id);
            let maybe = |t: &Tag| pending.is_some_and(|p| p.contains(t));
            let expected: Vec<Tag> = model.iter().filter(|t| !maybe(t)).copied().collect();
            let certain: Vec<Tag> = stored.iter().filter(|t| !maybe(t)).copied().collect();
            let in_order = stored.iter().all(|t| model.contains(t))
                && stored.windows(2).all(|w| {
                    let at = |t: &Tag| model.iter().position(|m| m == t);
                    at(&w[0]) < at(&w[1])
                });
            ensure!(
                certain == expected && in_order,
                "queue of {id}: store {stored:?}, model {model:?}, acks not yet stored {pending:?}"
            );
            distinct.extend(stored);
        }
        ensure!(
            store.envelope_count() == distinct.len(),
            "{} bodies stored for {} distinct queued envelopes",
            store.envelope_count(),
            distinct.len()
        );
        Ok(())
    }

    // ---- the device side --------------------------------------------------------------------

    fn send_up(&mut self, conn: ConnId, message: impl Into<D2mMessage>, note: Note) {
        let bytes = message.into().encode().unwrap();
        self.send_bytes_up(conn, bytes, note);
    }

    fn send_bytes_up(&mut self, conn: ConnId, bytes: Vec<u8>, note: Note) {
        self.links
            .get_mut(&conn)
            .unwrap()
            .to_server
            .push_back(Up::Binary { bytes, note });
    }

    /// The device of `conn` handles its next frame from the group (or the close frame).
    fn deliver_to_device(&mut self, conn: ConnId) -> Check {
        let link = self.links.get_mut(&conn).unwrap();
        let Some(bytes) = link.to_device.pop_front() else {
            if let Some(code) = link.close {
                return self.device_sees_close(conn, code);
            }
            return Ok(());
        };
        let device_index = link.device;
        if self.devices[device_index].link != Some(conn) {
            return Ok(()); // an abandoned connection: the device no longer reads it
        }
        let me = self.devices[device_index].id;
        let message = D2mMessage::decode(&bytes).unwrap();
        let phase = link.phase;
        match (phase, message) {
            (Phase::AwaitHello, D2mMessage::ServerHello(hello)) => {
                ensure!(hello.version == 0, "ServerHello version");
                let (esk, challenge) =
                    validate_server_hello(&hello).map_err(|e| format!("ServerHello: {e}"))?;
                let response = respond(&self.keys.dgpk, &esk, &challenge, &mut self.crypto);
                let device = &self.devices[device_index];
                let drop_least_recent = self.choice.gen_bool(0.5);
                let client_hello = pb::ClientHello {
                    version: 0,
                    response,
                    device_id: me.0,
                    device_slots_exhausted_policy: if drop_least_recent {
                        pb::client_hello::DeviceSlotsExhaustedPolicy::DropLeastRecent.into()
                    } else {
                        pb::client_hello::DeviceSlotsExhaustedPolicy::Reject.into()
                    },
                    device_slot_expiration_policy: if device.volatile {
                        pb::DeviceSlotExpirationPolicy::Volatile.into()
                    } else {
                        pb::DeviceSlotExpirationPolicy::Persistent.into()
                    },
                    encrypted_device_info: vec![device_index as u8; 60],
                    expected_device_slot_state: if device.knows_slot {
                        pb::DeviceSlotState::Existing.into()
                    } else {
                        pb::DeviceSlotState::New.into()
                    },
                    tandem_features: 0,
                };
                self.links.get_mut(&conn).unwrap().phase = Phase::AwaitInfo;
                self.send_up(conn, client_hello, Note::Nothing);
            }
            (Phase::AwaitInfo, D2mMessage::ServerInfo(info)) => {
                self.devices[device_index].knows_slot = true;
                let link = self.links.get_mut(&conn).unwrap();
                link.announced = info.reflection_queue_length;
                link.phase = Phase::Online;
            }
            (Phase::Online, D2mMessage::Reflected(reflected)) => {
                let envelope = open_envelope(&self.keys.dgrk, &reflected.envelope)
                    .map_err(|e| format!("{me}: envelope does not open: {e}"))?;
                let Some(d2d_pb::envelope::Content::OutgoingMessage(body)) = envelope.content
                else {
                    return Err("unexpected envelope content".into());
                };
                let tag = body.message_id;
                if reflected.flags.is_ephemeral() {
                    let from = self.model.ephemeral_from.get(&tag).copied();
                    ensure!(from.is_some(), "{me}: ephemeral #{tag} nobody sent");
                    ensure!(from != Some(me), "{me}: got its own ephemeral #{tag}");
                    ensure!(
                        self.model.ephemeral_seen.insert((me, tag)),
                        "{me}: ephemeral #{tag} twice"
                    );
                    self.count("ephemeral received");
                    if self.choice.gen_bool(0.3) {
                        // Desktop acks every Reflected (spec §5).
                        self.links
                            .get_mut(&conn)
                            .unwrap()
                            .pending_acks
                            .push_back((reflected.reflected_id, None));
                    }
                    return Ok(());
                }
                ensure!(
                    !self.model.discarded.contains(&tag),
                    "{me}: got #{tag} of a discarded transaction"
                );
                ensure!(
                    self.model.stored_at.get(&tag) == Some(&reflected.timestamp),
                    "{me}: #{tag} timestamp differs from its ReflectAck"
                );
                let current = *self.model.incarnation.entry(me).or_default();
                let link = &self.links[&conn];
                if link.incarnation == Some(current) {
                    ensure!(
                        !self.model.acked.get(&me).is_some_and(|a| a.contains(&tag)),
                        "{me}: #{tag} delivered again after it was acked"
                    );
                    let expected = self
                        .model
                        .queues
                        .get(&me)
                        .and_then(|q| q.iter().find(|t| !link.received.contains(t)).copied());
                    ensure!(
                        expected == Some(tag),
                        "{me}: got #{tag}, expected {expected:?} (queue {:?})",
                        self.model.queues.get(&me)
                    );
                }
                if self.links[&conn].incarnation == Some(current)
                    && self.model.queues.get(&me).is_some_and(|q| q.contains(&tag))
                {
                    self.count("reflected received");
                }
                let link = self.links.get_mut(&conn).unwrap();
                if !link.dry {
                    link.before_dry += 1;
                }
                link.received.push(tag);
                link.id_to_tag.insert(reflected.reflected_id, tag);
                link.pending_acks
                    .push_back((reflected.reflected_id, Some(tag)));
            }
            (Phase::Online, D2mMessage::ReflectionQueueDry(_)) => {
                let link = self.links.get_mut(&conn).unwrap();
                ensure!(!link.dry, "{me}: ReflectionQueueDry twice");
                if link.announced > 0 {
                    *self
                        .stats
                        .entry("queue drained on connect".into())
                        .or_default() += 1;
                }
                ensure!(
                    link.before_dry == link.announced,
                    "{me}: {} Reflected before ReflectionQueueDry, ServerInfo said {}",
                    link.before_dry,
                    link.announced
                );
                link.dry = true;
            }
            (Phase::Online, D2mMessage::RolePromotedToLeader(_)) => {
                ensure!(self.links[&conn].dry, "{me}: promoted before dry");
            }
            (Phase::Online, D2mMessage::ReflectAck(ack)) => {
                let link = self.links.get_mut(&conn).unwrap();
                let first = link.outstanding.keys().next().copied();
                ensure!(
                    first == Some(ack.reflect_id),
                    "{me}: ReflectAck {} out of order (oldest outstanding {first:?})",
                    ack.reflect_id
                );
                link.outstanding.remove(&ack.reflect_id);
            }
            (Phase::Online, D2mMessage::BeginTransactionAck(_)) => {
                let link = self.links.get_mut(&conn).unwrap();
                ensure!(
                    link.txn == Txn::Requested,
                    "{me}: unasked BeginTransactionAck"
                );
                let queued = link.grant_queue.take().unwrap_or_default();
                let missing: Vec<Tag> = queued
                    .into_iter()
                    .filter(|tag| !link.received.contains(tag))
                    .collect();
                ensure!(
                    missing.is_empty(),
                    "{me}: BeginTransactionAck before {missing:?}, queued before the grant"
                );
                link.txn = Txn::Held(0);
                self.count("lock acked");
            }
            (Phase::Online, D2mMessage::TransactionRejected(_)) => {
                let link = self.links.get_mut(&conn).unwrap();
                ensure!(
                    link.txn == Txn::Requested,
                    "{me}: unasked TransactionRejected"
                );
                link.txn = Txn::Idle;
            }
            (Phase::Online, D2mMessage::CommitTransactionAck(_)) => {
                let link = self.links.get_mut(&conn).unwrap();
                ensure!(
                    link.txn == Txn::Committing,
                    "{me}: unasked CommitTransactionAck"
                );
                link.txn = Txn::Idle;
            }
            (Phase::Online, D2mMessage::DevicesInfo(info)) => {
                ensure!(
                    info.augmented_device_info.contains_key(&me.0),
                    "{me}: DevicesInfo without itself"
                );
            }
            (Phase::Online, D2mMessage::TransactionEnded(_) | D2mMessage::DropDeviceAck(_)) => {}
            (Phase::Online, D2mMessage::Proxy(unit)) => {
                let expected = self.links.get_mut(&conn).unwrap().csp_expected.pop_front();
                ensure!(expected == Some(unit), "{me}: proxy unit out of order");
            }
            (phase, message) => {
                return Err(format!("{me}: unexpected {message:?} in {phase:?}"));
            }
        }
        Ok(())
    }

    fn device_sees_close(&mut self, conn: ConnId, code: CloseCode) -> Check {
        let link = self.links.remove(&conn).unwrap();
        let device = &mut self.devices[link.device];
        if device.link == Some(conn) {
            device.link = None;
            match code {
                CloseCode::DeviceDropped | CloseCode::ReflectionQueueLengthLimitReached => {
                    device.knows_slot = false;
                }
                CloseCode::ExpectedDeviceSlotStateMismatch => {
                    device.knows_slot = !device.knows_slot;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The group handles the next frame `conn` sent.
    fn deliver_to_server(&mut self, conn: ConnId) -> Check {
        let Some(up) = self.links.get_mut(&conn).unwrap().to_server.pop_front() else {
            return Ok(());
        };
        let was_alive = self.links[&conn].alive;
        let note = match up {
            Up::Text => {
                self.feed(&format!("text from {conn:?}"), |g, now, _| {
                    g.on_text(conn, now)
                })?;
                Note::Bad
            }
            Up::Binary { bytes, note } => {
                if let (Note::Ack(tag), true) = (&note, was_alive) {
                    // Taken before anything the group emits for this input is checked: a frame
                    // it sends in the same input must already find the ack stored.
                    let me = self.dev_of_link(conn);
                    let queued = self.model.queues.get(&me).is_some_and(|q| q.contains(tag));
                    ensure!(queued, "{me}: acks #{tag}, which is not queued");
                    ensure!(
                        self.model.pending.entry(me).or_default().insert(*tag),
                        "{me}: acks #{tag} twice"
                    );
                    let previous = self.model.pending_link.insert(me, conn);
                    ensure!(
                        previous.is_none_or(|p| p == conn),
                        "{me}: acks on {conn:?} while those of {previous:?} are not settled"
                    );
                }
                // A begin is granted by this input if the lock is free once the reflects held
                // before it are stored (their acks are not staged; storing them may drop the
                // holder with 4114 and so free the lock).
                let granting = matches!(note, Note::Begin) && was_alive;
                if granting {
                    self.model.granting = Some(conn);
                }
                let what = D2mMessage::decode(&bytes)
                    .map_or_else(|e| format!("garbage ({e})"), |m| summary(&m));
                self.feed(&format!("{conn:?} -> {what}"), |g, now, _| {
                    g.on_binary(conn, &bytes, now);
                })?;
                self.model.granting = None;
                if granting && self.links[&conn].alive && self.model.holder.is_none() {
                    // The lock is the requester's from now; its ack waits for the entries
                    // queued before (docs/mediator.md).
                    let me = self.dev_of_link(conn);
                    let queued: Vec<Tag> = self
                        .model
                        .queues
                        .get(&me)
                        .map(|q| q.iter().copied().collect())
                        .unwrap_or_default();
                    self.model.holder = Some(conn);
                    self.model.staged.clear();
                    self.links.get_mut(&conn).unwrap().grant_queue = Some(queued);
                }
                note
            }
        };
        if !was_alive {
            return self.check_invariants();
        }
        let alive = self.links[&conn].alive;
        match note {
            Note::Bad => ensure!(!alive, "misbehaving {conn:?} was not closed"),
            // Batched (taken before the input): stored by the next frame to the device or when
            // the connection ends, which settles it by what the store holds.
            Note::Ack(_) => self.count("ack taken"),
            Note::Shared(data) if alive => self.model.shared_device_data = data,
            _ => {}
        }
        self.check_invariants()
    }

    // ---- actions ----------------------------------------------------------------------------

    fn online_links(&self, phases: &[Phase]) -> Vec<ConnId> {
        self.devices
            .iter()
            .filter_map(|d| d.link)
            .filter(|c| {
                self.links
                    .get(c)
                    .is_some_and(|l| l.alive && !l.misbehaved && phases.contains(&l.phase))
            })
            .collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.choice.gen_range(0..items.len())])
        }
    }

    fn connect(&mut self, device_index: usize) -> Check {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.links.insert(conn, Link::new(device_index));
        self.devices[device_index].link = Some(conn);
        let id = self.devices[device_index].id;
        self.input(&format!("connect {id} as {conn:?}"), |g, now, rng| {
            g.on_connect(conn, now, rng);
        })
    }

    fn reflect(&mut self, conn: ConnId, ephemeral: bool) {
        let tag = self.next_tag;
        self.next_tag += 1;
        let me = self.dev_of_link(conn);
        let body_len = self.choice.gen_range(0..64);
        let envelope = d2d_pb::Envelope {
            padding: Vec::new(),
            device_id: me.0,
            protocol_version: 0,
            content: Some(d2d_pb::envelope::Content::OutgoingMessage(
                d2d_pb::OutgoingMessage {
                    message_id: tag,
                    body: vec![0x61; body_len],
                    ..Default::default()
                },
            )),
        };
        let sealed = seal_envelope(&self.keys.dgrk, envelope, &mut self.crypto).unwrap();
        self.model.tag_of.insert(sealed.clone(), tag);
        let link = self.links.get_mut(&conn).unwrap();
        let id = link.next_reflect_id;
        link.next_reflect_id += 1;
        let flags = if ephemeral {
            self.model.ephemeral_from.insert(tag, me);
            ReflectFlags::EPHEMERAL
        } else {
            link.outstanding.insert(id, tag);
            ReflectFlags::NONE
        };
        self.log(format!(
            "{me} reflects #{tag} (id {id}, ephemeral {ephemeral})"
        ));
        self.send_up(conn, Reflect::new(id, flags, sealed), Note::Nothing);
    }

    /// Starts or ends a batch of inputs, as the Worker does around each coalesced turn.
    fn toggle_batch(&mut self) -> Check {
        if self.batching {
            self.batching = false;
            self.ending_batch = true;
            let ended = self.input("end batch", |g, now, _| g.end_batch(now));
            self.ending_batch = false;
            ended
        } else {
            self.batching = true;
            self.input("begin batch", |g, _, _| g.begin_batch())
        }
    }

    fn step(&mut self) -> Check {
        // Batches of a few to a few dozen inputs, about half of the time.
        if self.choice.gen_ratio(1, 12) {
            self.toggle_batch()?;
        }
        let roll = self.choice.gen_range(0..1000);
        match roll {
            0..=299 => {
                // Deliver to a device: any link with something for it.
                let ready: Vec<ConnId> = self
                    .links
                    .iter()
                    .filter(|(_, l)| !l.to_device.is_empty() || l.close.is_some())
                    .map(|(c, _)| *c)
                    .collect();
                if let Some(conn) = self.pick(&ready) {
                    self.deliver_to_device(conn)?;
                }
            }
            300..=549 => {
                let ready: Vec<ConnId> = self
                    .links
                    .iter()
                    .filter(|(_, l)| !l.to_server.is_empty())
                    .map(|(c, _)| *c)
                    .collect();
                if let Some(conn) = self.pick(&ready) {
                    self.deliver_to_server(conn)?;
                }
            }
            550..=609 => {
                let idle: Vec<usize> = (0..self.devices.len())
                    .filter(|&i| self.devices[i].link.is_none())
                    .collect();
                if let Some(i) = self.pick(&idle) {
                    self.connect(i)?;
                }
            }
            610..=709 => {
                let links = self.online_links(&[Phase::AwaitInfo, Phase::Online]);
                if let Some(conn) = self.pick(&links) {
                    let link = &self.links[&conn];
                    let allowed = match link.txn {
                        Txn::Idle => true,
                        Txn::Requested => link.reflects_while_requested < 2,
                        Txn::Held(_) | Txn::Committing => false,
                    };
                    if allowed {
                        let ephemeral = self.choice.gen_bool(0.15);
                        if !ephemeral && link.txn == Txn::Requested {
                            self.links.get_mut(&conn).unwrap().reflects_while_requested += 1;
                        }
                        self.reflect(conn, ephemeral);
                    }
                }
            }
            710..=829 => {
                let links: Vec<ConnId> = self
                    .online_links(&[Phase::Online])
                    .into_iter()
                    .filter(|c| !self.links[c].pending_acks.is_empty())
                    .collect();
                if let Some(conn) = self.pick(&links) {
                    let (id, tag) = self
                        .links
                        .get_mut(&conn)
                        .unwrap()
                        .pending_acks
                        .pop_front()
                        .unwrap();
                    let note = tag.map_or(Note::Nothing, Note::Ack);
                    self.send_up(conn, ReflectedAck { reflected_id: id }, note);
                }
            }
            830..=879 => self.transaction_step()?,
            880..=899 => {
                // Disconnect, after a random part of what is in flight reached the group.
                let links: Vec<ConnId> = self.links.keys().copied().collect();
                if let Some(conn) = self.pick(&links) {
                    let pending = self.links[&conn].to_server.len();
                    let deliver = self.choice.gen_range(0..=pending);
                    for _ in 0..deliver {
                        self.deliver_to_server(conn)?;
                    }
                    if let Some(link) = self.links.get(&conn) {
                        if link.alive {
                            self.disconnect(conn)?;
                        }
                    }
                    if let Some(link) = self.links.remove(&conn) {
                        let device = &mut self.devices[link.device];
                        if device.link == Some(conn) {
                            device.link = None;
                        }
                    }
                }
            }
            900..=909 => {
                // Reconnect while the old connection is still open (4112 on the old one).
                let busy: Vec<usize> = (0..self.devices.len())
                    .filter(|&i| self.devices[i].link.is_some())
                    .collect();
                if let Some(i) = self.pick(&busy) {
                    self.connect(i)?;
                }
            }
            910..=959 => {
                let jump = if self.choice.gen_bool(0.1) {
                    self.choice.gen_range(5_000..25_000)
                } else {
                    self.choice.gen_range(1..800)
                };
                self.now += jump;
                if self.group.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.input("timeout", |g, now, _| g.on_timeout(now))?;
                }
            }
            960..=974 => self.chat_server_step()?,
            975..=982 => {
                // Proxy from a device (also before the handshake, at most twice).
                let links =
                    self.online_links(&[Phase::AwaitHello, Phase::AwaitInfo, Phase::Online]);
                if let Some(conn) = self.pick(&links) {
                    let link = &self.links[&conn];
                    if link.phase == Phase::Online || link.pre_auth_proxies < 2 {
                        let len = self.choice.gen_range(1..60);
                        let payload = vec![self.choice.gen::<u8>(); len];
                        let link = self.links.get_mut(&conn).unwrap();
                        if link.phase != Phase::Online {
                            link.pre_auth_proxies += 1;
                        }
                        link.proxy_sent.push_back(payload.clone());
                        self.send_up(conn, D2mMessage::Proxy(payload), Note::Nothing);
                    }
                }
            }
            983..=989 => {
                let links = self.online_links(&[Phase::Online]);
                if let Some(conn) = self.pick(&links) {
                    match self.choice.gen_range(0..4) {
                        0 => {
                            let ids: Vec<DeviceId> = self.devices.iter().map(|d| d.id).collect();
                            let target = self.pick(&ids).unwrap();
                            self.log(format!("{} drops {target}", self.dev_of_link(conn)));
                            let drop = pb::DropDevice {
                                device_id: target.0,
                            };
                            self.send_up(conn, drop, Note::Nothing);
                        }
                        1 => {
                            let data = vec![self.choice.gen::<u8>(); 48];
                            let set = pb::SetSharedDeviceData {
                                encrypted_shared_device_data: data.clone(),
                            };
                            self.send_up(conn, set, Note::Shared(data));
                        }
                        _ => self.send_up(conn, pb::GetDevicesInfo {}, Note::Nothing),
                    }
                }
            }
            990..=994 => self.misbehave(),
            _ => {
                if self.faults {
                    if self.choice.gen_bool(0.7) {
                        self.log("arm write failure".into());
                        self.group.store().fail_write.set(true);
                    } else {
                        self.log("arm read failure".into());
                        self.group.store().fail_read.set(true);
                    }
                }
            }
        }
        Ok(())
    }

    fn transaction_step(&mut self) -> Check {
        let links = self.online_links(&[Phase::Online]);
        let Some(conn) = self.pick(&links) else {
            return Ok(());
        };
        match self.links[&conn].txn {
            Txn::Idle => {
                let scope =
                    seal_transaction_scope(&self.keys.dgtsk, Scope::ContactSync, &mut self.crypto);
                let ttl = self.choice.gen_range(0..=3);
                let link = self.links.get_mut(&conn).unwrap();
                link.txn = Txn::Requested;
                link.reflects_while_requested = 0;
                self.log(format!("{} begins (ttl {ttl})", self.dev_of_link(conn)));
                self.send_up(
                    conn,
                    pb::BeginTransaction {
                        encrypted_scope: scope,
                        ttl,
                    },
                    Note::Begin,
                );
            }
            Txn::Held(writes) if writes < 3 && self.choice.gen_bool(0.5) => {
                self.links.get_mut(&conn).unwrap().txn = Txn::Held(writes + 1);
                self.reflect(conn, false);
            }
            Txn::Held(_) => {
                self.links.get_mut(&conn).unwrap().txn = Txn::Committing;
                self.log(format!("{} commits", self.dev_of_link(conn)));
                self.send_up(conn, pb::CommitTransaction {}, Note::Nothing);
            }
            Txn::Requested | Txn::Committing => {}
        }
        Ok(())
    }

    fn chat_server_step(&mut self) -> Check {
        let open: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.alive && l.csp_open && !l.csp_closed)
            .map(|(c, _)| *c)
            .collect();
        let Some(conn) = self.pick(&open) else {
            return Ok(());
        };
        match self.choice.gen_range(0..100) {
            0..=89 => {
                let link = self.links.get_mut(&conn).unwrap();
                if link.csp_pending.is_empty() {
                    let unit = match link.csp_next_unit {
                        0 => vec![0x51; 80],
                        1 => vec![0x52; 32],
                        n => {
                            let len = 16 + (n % 24) as u16;
                            let mut frame = len.to_le_bytes().to_vec();
                            frame.extend(std::iter::repeat_n(n as u8, usize::from(len)));
                            frame
                        }
                    };
                    link.csp_next_unit += 1;
                    link.csp_pending.extend_from_slice(&unit);
                    link.csp_expected.push_back(unit);
                }
                let take = self
                    .choice
                    .gen_range(1..=self.links[&conn].csp_pending.len());
                let link = self.links.get_mut(&conn).unwrap();
                let chunk: Vec<u8> = link.csp_pending.drain(..take).collect();
                link.csp_fed = true;
                self.input(
                    &format!("chat server -> {conn:?} {} bytes", chunk.len()),
                    |g, now, _| {
                        g.on_csp_bytes(conn, &chunk, now);
                    },
                )?;
            }
            90..=94 => {
                self.links.get_mut(&conn).unwrap().csp_closed = true;
                self.input(&format!("chat server closes {conn:?}"), |g, now, _| {
                    g.on_csp_closed(conn, now);
                })?;
            }
            _ => {
                if !self.links[&conn].csp_fed {
                    self.links.get_mut(&conn).unwrap().csp_closed = true;
                    self.input(
                        &format!("chat server unreachable for {conn:?}"),
                        |g, now, _| {
                            g.on_csp_connect_failed(conn, now);
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    /// A device sends something invalid; the group must close it (4010/4012) and nobody else
    /// may notice.
    fn misbehave(&mut self) {
        let links = self.online_links(&[Phase::AwaitHello, Phase::AwaitInfo, Phase::Online]);
        let Some(conn) = self.pick(&links) else {
            return;
        };
        self.links.get_mut(&conn).unwrap().misbehaved = true;
        let kind = self.choice.gen_range(0..5);
        self.log(format!("{} misbehaves ({kind})", self.dev_of_link(conn)));
        match kind {
            0 => self
                .links
                .get_mut(&conn)
                .unwrap()
                .to_server
                .push_back(Up::Text),
            1 => {
                let code = self.choice.gen_range(0x01..=0x0f);
                let len = self.choice.gen_range(0..20);
                let mut bytes = vec![code, 0, 0, 0];
                bytes.extend(std::iter::repeat_n(0xee, len));
                self.send_bytes_up(conn, bytes, Note::Bad);
            }
            2 => {
                let len = self.choice.gen_range(0..4);
                self.send_bytes_up(conn, vec![0x80; len], Note::Bad);
            }
            3 if self.links[&conn].phase == Phase::Online => {
                let id = 0xdead_0000 | self.choice.gen_range(0..0xffff);
                self.send_up(conn, ReflectedAck { reflected_id: id }, Note::Bad);
            }
            _ => self.send_bytes_up(conn, vec![0x20, 0, 0, 0], Note::Bad),
        }
    }

    /// Ends the run: everything in flight arrives, every connection closes, then every device
    /// with a slot connects alone and drains its queue. Every queue must end empty.
    fn quiesce(&mut self) -> Check {
        self.faults = false;
        self.group.store().fail_write.set(false);
        self.group.store().fail_read.set(false);
        self.log("quiesce".into());
        if self.batching {
            self.toggle_batch()?;
        }
        let conns: Vec<ConnId> = self.links.keys().copied().collect();
        for conn in conns {
            while self
                .links
                .get(&conn)
                .is_some_and(|l| !l.to_server.is_empty())
            {
                self.deliver_to_server(conn)?;
            }
            if self.links[&conn].alive {
                self.disconnect(conn)?;
            }
            let link = self.links.remove(&conn).unwrap();
            self.devices[link.device].link = None;
        }
        for index in 0..self.devices.len() {
            let id = self.devices[index].id;
            for _attempt in 0..3 {
                if !self.group.slots().any(|s| s.device_id == id) {
                    break;
                }
                self.connect(index)?;
                let conn = self.devices[index].link.unwrap();
                self.drain_link(conn)?;
                if self.devices[index].link == Some(conn) {
                    ensure!(
                        self.links[&conn].dry,
                        "{id}: never dry while draining alone"
                    );
                    self.disconnect(conn)?;
                    let left = self.model.queues.get(&id).map_or(0, VecDeque::len);
                    ensure!(left == 0, "{id}: {left} entries never delivered");
                    self.links.remove(&conn);
                    self.devices[index].link = None;
                    break;
                }
            }
        }
        for slot in self.group.slots() {
            let info = self
                .group
                .store()
                .inner
                .queue_info(slot.device_id)
                .map_err(|e| e.to_string())?;
            ensure!(
                info.len == 0,
                "{}: {} entries left in the store",
                slot.device_id,
                info.len
            );
        }
        ensure!(
            self.group.store().inner.envelope_count() == 0,
            "{} bodies left in the store",
            self.group.store().inner.envelope_count()
        );
        Ok(())
    }

    /// Delivers, acks and delivers again until the connection is quiet (or closed).
    fn drain_link(&mut self, conn: ConnId) -> Check {
        loop {
            let Some(link) = self.links.get_mut(&conn) else {
                return Ok(());
            };
            if !link.to_device.is_empty() || link.close.is_some() {
                self.deliver_to_device(conn)?;
            } else if let Some((id, tag)) = link.pending_acks.pop_front() {
                let note = tag.map_or(Note::Nothing, Note::Ack);
                self.send_up(conn, ReflectedAck { reflected_id: id }, note);
            } else if !link.to_server.is_empty() {
                self.deliver_to_server(conn)?;
            } else {
                return Ok(());
            }
        }
    }
}

/// A frame in one short line for the trace (no key material, no long byte lists).
fn summary(message: &D2mMessage) -> String {
    match message {
        D2mMessage::ClientHello(h) => format!(
            "ClientHello(device {:x}, expected {}, exhausted {})",
            h.device_id, h.expected_device_slot_state, h.device_slots_exhausted_policy
        ),
        D2mMessage::Reflect(r) => format!(
            "Reflect(id {}, flags {}, {} bytes)",
            r.reflect_id,
            r.flags.0,
            r.envelope.len()
        ),
        D2mMessage::ReflectedAck(a) => format!("ReflectedAck({})", a.reflected_id),
        D2mMessage::DropDevice(d) => format!("DropDevice({:x})", d.device_id),
        D2mMessage::BeginTransaction(b) => format!("BeginTransaction(ttl {})", b.ttl),
        other => format!("{:?}", other.payload_type()),
    }
}

/// What a passing run leaves behind.
struct Outcome {
    trace: Vec<String>,
    stats: BTreeMap<String, u64>,
}

/// Runs one seed; on a violation returns it with the trace.
fn run(seed: u64, steps: usize, verbose: bool) -> Result<Outcome, (String, Vec<String>)> {
    let mut sim = Sim::new(seed, verbose);
    for step in 0..steps {
        if let Err(violation) = sim.step() {
            return Err((format!("step {step}: {violation}"), sim.trace));
        }
    }
    match sim.quiesce() {
        Ok(()) => Ok(Outcome {
            trace: sim.trace,
            stats: sim.stats,
        }),
        Err(violation) => Err((format!("quiesce: {violation}"), sim.trace)),
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn fail(seed: u64, message: &str, trace: &[String]) -> ! {
    let tail = trace.len().saturating_sub(80);
    panic!(
        "seed {seed} failed: {message}\n--- last trace lines ---\n{}\n--- replay: \
         MEDIATOR_SIM_SEED={seed} cargo test -p tandem-shared --test mediator_simulation -- \
         --nocapture",
        trace[tail..].join("\n")
    );
}

#[test]
fn mediator_simulation() {
    let steps = env_number("MEDIATOR_SIM_STEPS").map_or(300, |n| n as usize);
    if let Some(seed) = env_number("MEDIATOR_SIM_SEED") {
        match run(seed, steps, true) {
            Ok(outcome) => eprintln!("seed {seed}: ok {:?}", outcome.stats),
            Err((message, trace)) => fail(seed, &message, &trace),
        }
        return;
    }
    let seeds = env_number("MEDIATOR_SIM_SEEDS").unwrap_or(300);
    let start = std::time::Instant::now();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for seed in 0..seeds {
        match run(seed, steps, false) {
            Ok(outcome) => {
                for (what, n) in outcome.stats {
                    *totals.entry(what).or_default() += n;
                }
            }
            Err((message, trace)) => fail(seed, &message, &trace),
        }
    }
    eprintln!("{seeds} seeds x {steps} steps in {:?}", start.elapsed());
    for (what, n) in &totals {
        eprintln!("  {what}: {n}");
    }
    if seeds >= 100 {
        // The run must keep reaching every rule, or a passing result means little.
        for what in [
            "ack taken",
            "batched ack stored",
            "batched ack not stored (comes again)",
            "reflected received",
            "ephemeral received",
            "queue drained on connect",
            "leader promoted",
            "transaction committed with writes",
            "transaction discarded with writes",
            "slot gone",
            "close 1011",
            "close 4000",
            "close 4010",
            "close 4011",
            "close 4012",
            "close 4111",
            "close 4112",
            "close 4113",
            "close 4114",
            "close 4115",
            "reflects stored in one batch call",
            "close 4114 storing a batch",
            "close 1011 storing a batch",
        ] {
            assert!(
                totals.get(what).is_some_and(|&n| n > 0),
                "never happened: {what}"
            );
        }
    }
}

#[test]
fn a_seed_replays_identically() {
    let first = run(3, 200, false).unwrap_or_else(|(m, t)| fail(3, &m, &t));
    let second = run(3, 200, false).unwrap_or_else(|(m, t)| fail(3, &m, &t));
    assert_eq!(first.trace, second.trace);
    assert!(first.trace.len() > 100, "the trace records every input");
}
