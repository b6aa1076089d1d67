//! A harness for the rule tests: one group, devices that speak real d2m bytes with the real
//! device group keys, and a store that fails on demand.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::{
    CloseCause, ConnId, DeviceId, Effect, Group, GroupConfig, GroupStore, MemoryStore, QueueInfo,
    QueuedReflection, SlotRecord,
};
use crate::crypto::seal_nonce_ahead;
use crate::d2d::{seal_device_info, DeviceInfo, Platform};
use crate::d2m::{respond, validate_server_hello, D2mMessage, Reflect, ReflectFlags, Reflected};
use crate::keys::{DeviceGroupKey, DeviceGroupKeys};
use crate::proto::d2m::{self as pb, client_hello::DeviceSlotsExhaustedPolicy};
use crate::proto::d2m::{DeviceSlotExpirationPolicy, DeviceSlotState};

/// A plausible start time (Unix ms).
pub(super) const T0: u64 = 1_700_000_000_000;

pub(super) fn keys() -> DeviceGroupKeys {
    DeviceGroupKey::from_bytes([0x42; 32]).derive_keys()
}

pub(super) struct Harness<S: GroupStore = MemoryStore> {
    pub(super) group: Group<S>,
    pub(super) keys: DeviceGroupKeys,
    pub(super) rng: ChaCha20Rng,
    pub(super) now: u64,
    next_conn: u64,
    next_reflect_id: u32,
    hellos: BTreeMap<ConnId, pb::ServerHello>,
    inbox: BTreeMap<ConnId, Vec<D2mMessage>>,
    pub(super) closes: BTreeMap<ConnId, CloseCause>,
    /// Every `OpenCsp`, `CspSend` and `CloseCsp`, in order.
    pub(super) csp: Vec<Effect>,
}

impl Harness<MemoryStore> {
    pub(super) fn new() -> Self {
        Self::with_config(GroupConfig::default())
    }

    pub(super) fn with_config(config: GroupConfig) -> Self {
        Self::with_store(config, MemoryStore::new())
    }
}

impl Harness<FlakyStore> {
    pub(super) fn flaky(config: GroupConfig) -> Self {
        Self::with_store(config, FlakyStore::default())
    }

    pub(super) fn fail_writes(&mut self, fail: bool) {
        self.group.store.fail_writes = fail;
    }

    pub(super) fn fail_reads(&mut self, fail: bool) {
        self.group.store.fail_reads = fail;
    }
}

impl<S: GroupStore> Harness<S> {
    pub(super) fn with_store(config: GroupConfig, store: S) -> Self {
        let keys = keys();
        let group = Group::new(config, keys.dgpk_public, store, T0)
            .unwrap_or_else(|e| panic!("store: {e}"));
        Self {
            group,
            keys,
            rng: ChaCha20Rng::seed_from_u64(1),
            now: T0,
            next_conn: 1,
            next_reflect_id: 1,
            hellos: BTreeMap::new(),
            inbox: BTreeMap::new(),
            closes: BTreeMap::new(),
            csp: Vec::new(),
        }
    }

    pub(super) fn tick(&mut self, ms: u64) {
        self.now += ms;
    }

    /// Opens a WebSocket; the `ServerHello` is kept for the `ClientHello`.
    pub(super) fn connect(&mut self) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.group.on_connect(conn, self.now, &mut self.rng);
        self.drain();
        let first = self.take(conn).into_iter().next();
        let Some(D2mMessage::ServerHello(hello)) = first else {
            panic!("expected ServerHello, got {first:?}");
        };
        self.hellos.insert(conn, hello);
        conn
    }

    /// A correct `ClientHello` for `conn`: expected slot state from the group's view, REJECT,
    /// PERSISTENT, a sealed device info naming the device.
    pub(super) fn client_hello(&mut self, conn: ConnId, device: u64) -> pb::ClientHello {
        let hello = &self.hellos[&conn];
        let (esk, challenge) = validate_server_hello(hello).unwrap();
        let response = respond(&self.keys.dgpk, &esk, &challenge, &mut self.rng);
        let known = self.group.slots().any(|s| s.device_id == DeviceId(device));
        let info = DeviceInfo {
            platform: Platform::Web,
            platform_details: "test".into(),
            app_version: "0".into(),
            label: format!("device {device}"),
        };
        pb::ClientHello {
            version: 0,
            response,
            device_id: device,
            device_slots_exhausted_policy: DeviceSlotsExhaustedPolicy::Reject.into(),
            device_slot_expiration_policy: DeviceSlotExpirationPolicy::Persistent.into(),
            encrypted_device_info: seal_device_info(&self.keys.dgdik, &info, &mut self.rng)
                .unwrap(),
            expected_device_slot_state: if known {
                DeviceSlotState::Existing.into()
            } else {
                DeviceSlotState::New.into()
            },
            tandem_features: 0,
        }
    }

    pub(super) fn login(&mut self, device: u64) -> ConnId {
        self.login_with(device, |_| {})
    }

    pub(super) fn login_with(
        &mut self,
        device: u64,
        edit: impl FnOnce(&mut pb::ClientHello),
    ) -> ConnId {
        let conn = self.connect();
        let mut hello = self.client_hello(conn, device);
        edit(&mut hello);
        self.send(conn, hello);
        conn
    }

    pub(super) fn send(&mut self, conn: ConnId, message: impl Into<D2mMessage>) {
        let bytes = message.into().encode().unwrap();
        self.send_bytes(conn, &bytes);
    }

    pub(super) fn send_bytes(&mut self, conn: ConnId, bytes: &[u8]) {
        self.group.on_binary(conn, bytes, self.now);
        self.drain();
    }

    pub(super) fn disconnect(&mut self, conn: ConnId) {
        self.group.on_disconnect(conn, self.now);
        self.drain();
    }

    pub(super) fn timeout(&mut self) {
        self.group.on_timeout(self.now);
        self.drain();
    }

    /// A fresh sealed envelope (real nonce-ahead secretbox under dgrk) holding `body`.
    pub(super) fn envelope(&mut self, body: &[u8]) -> Vec<u8> {
        seal_nonce_ahead(&self.keys.dgrk, &mut self.rng, body)
    }

    /// Reflects a fresh envelope; returns the reflect id and the envelope.
    pub(super) fn reflect(&mut self, conn: ConnId, body: &[u8]) -> (u32, Vec<u8>) {
        self.reflect_flags(conn, body, ReflectFlags::NONE)
    }

    pub(super) fn reflect_flags(
        &mut self,
        conn: ConnId,
        body: &[u8],
        flags: ReflectFlags,
    ) -> (u32, Vec<u8>) {
        let envelope = self.envelope(body);
        let id = self.next_reflect_id;
        self.next_reflect_id += 1;
        self.send(conn, Reflect::new(id, flags, envelope.clone()));
        (id, envelope)
    }

    pub(super) fn ack(&mut self, conn: ConnId, reflected_id: u32) {
        self.send(conn, crate::d2m::ReflectedAck { reflected_id });
    }

    /// Moves effects into the per-connection inboxes.
    pub(super) fn drain(&mut self) {
        while let Some(effect) = self.group.poll_effect() {
            match effect {
                Effect::Send { conn, bytes } => {
                    let message = D2mMessage::decode(&bytes).unwrap();
                    self.inbox.entry(conn).or_default().push(message);
                }
                Effect::Close { conn, code, cause } => {
                    assert_eq!(code, cause.code());
                    assert!(
                        self.closes.insert(conn, cause).is_none(),
                        "{conn:?} closed twice"
                    );
                }
                other => self.csp.push(other),
            }
        }
    }

    /// Messages received on `conn` since the last call.
    pub(super) fn take(&mut self, conn: ConnId) -> Vec<D2mMessage> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    pub(super) fn closed(&self, conn: ConnId) -> Option<CloseCause> {
        self.closes.get(&conn).copied()
    }

    pub(super) fn queue(&self, device: u64) -> QueueInfo {
        self.group
            .store()
            .queue_info(DeviceId(device))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub(super) fn queued(&self, device: u64) -> Vec<QueuedReflection> {
        self.group
            .store()
            .read_queue(DeviceId(device), None, usize::MAX)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub(super) fn slot(&self, device: u64) -> Option<SlotRecord> {
        self.group
            .slots()
            .find(|s| s.device_id == DeviceId(device))
            .cloned()
    }
}

/// The `Reflected` frames among `messages`.
pub(super) fn reflected(messages: &[D2mMessage]) -> Vec<Reflected> {
    messages
        .iter()
        .filter_map(|m| match m {
            D2mMessage::Reflected(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// A short name per message, for asserting sequences.
pub(super) fn names(messages: &[D2mMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| format!("{:?}", m.payload_type()))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected store failure")]
pub(super) struct Injected;

/// A [`MemoryStore`] whose reads or writes fail while a flag is set (nothing changes then).
#[derive(Debug, Default)]
pub(super) struct FlakyStore {
    pub(super) inner: MemoryStore,
    pub(super) fail_writes: bool,
    pub(super) fail_reads: bool,
    /// `read_queue` calls so far.
    pub(super) queue_reads: std::cell::Cell<u64>,
    /// Only `remove_from_queues` fails (the acks of several siblings at once).
    pub(super) fail_multi_slot_acks: bool,
    /// Envelopes per `enqueue` / `enqueue_batch` call, in order.
    pub(super) enqueue_calls: std::cell::RefCell<Vec<usize>>,
    /// Calls of writing methods so far (each a durable write and commit in the Worker).
    pub(super) writes: std::cell::Cell<u64>,
}

impl FlakyStore {
    fn write(&self) -> Result<(), Injected> {
        self.writes.set(self.writes.get() + 1);
        if self.fail_writes {
            Err(Injected)
        } else {
            Ok(())
        }
    }

    fn read(&self) -> Result<(), Injected> {
        if self.fail_reads {
            Err(Injected)
        } else {
            Ok(())
        }
    }
}

fn ok<T>(r: Result<T, super::MemoryStoreError>) -> Result<T, Injected> {
    Ok(r.unwrap())
}

impl GroupStore for FlakyStore {
    type Error = Injected;

    fn load_slots(&self) -> Result<Vec<SlotRecord>, Injected> {
        self.read()?;
        ok(self.inner.load_slots())
    }
    fn put_slot(&mut self, slot: &SlotRecord) -> Result<(), Injected> {
        self.write()?;
        ok(self.inner.put_slot(slot))
    }
    fn delete_slot(&mut self, device_id: DeviceId) -> Result<(), Injected> {
        self.write()?;
        ok(self.inner.delete_slot(device_id))
    }
    fn enqueue(
        &mut self,
        envelope: &[u8],
        stored_at: u64,
        device_ids: &[DeviceId],
    ) -> Result<Vec<u64>, Injected> {
        self.write()?;
        self.enqueue_calls.borrow_mut().push(1);
        ok(self.inner.enqueue(envelope, stored_at, device_ids))
    }
    fn enqueue_batch(
        &mut self,
        envelopes: &[(&[u8], u64)],
        device_ids: &[DeviceId],
    ) -> Result<Vec<Vec<u64>>, Injected> {
        self.write()?;
        self.enqueue_calls.borrow_mut().push(envelopes.len());
        ok(self.inner.enqueue_batch(envelopes, device_ids))
    }
    fn read_queue(
        &self,
        device_id: DeviceId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QueuedReflection>, Injected> {
        self.queue_reads.set(self.queue_reads.get() + 1);
        self.read()?;
        ok(self.inner.read_queue(device_id, after, limit))
    }
    fn remove_from_queue(&mut self, device_id: DeviceId, seq: u64) -> Result<bool, Injected> {
        self.write()?;
        ok(self.inner.remove_from_queue(device_id, seq))
    }
    fn remove_from_queue_many(
        &mut self,
        device_id: DeviceId,
        seqs: &[u64],
    ) -> Result<u64, Injected> {
        self.write()?;
        ok(self.inner.remove_from_queue_many(device_id, seqs))
    }
    fn remove_from_queues(
        &mut self,
        batches: &[(DeviceId, Vec<u64>)],
    ) -> Result<Vec<u64>, Injected> {
        self.write()?;
        if self.fail_multi_slot_acks {
            return Err(Injected);
        }
        ok(self.inner.remove_from_queues(batches))
    }
    fn queue_info(&self, device_id: DeviceId) -> Result<QueueInfo, Injected> {
        self.read()?;
        ok(self.inner.queue_info(device_id))
    }
    fn stage(&mut self, envelope: &[u8], stored_at: u64) -> Result<(), Injected> {
        self.write()?;
        ok(self.inner.stage(envelope, stored_at))
    }
    fn commit_staged(&mut self, device_ids: &[DeviceId]) -> Result<Vec<u64>, Injected> {
        self.write()?;
        ok(self.inner.commit_staged(device_ids))
    }
    fn discard_staged(&mut self) -> Result<(), Injected> {
        self.write()?;
        ok(self.inner.discard_staged())
    }
    fn shared_device_data(&self) -> Result<Vec<u8>, Injected> {
        self.read()?;
        ok(self.inner.shared_device_data())
    }
    fn set_shared_device_data(&mut self, data: &[u8]) -> Result<(), Injected> {
        self.write()?;
        ok(self.inner.set_shared_device_data(data))
    }
}

impl Harness {
    /// Devices 1 and 2 online under queue limit `max_queue_len`; 1 has reflected two entries,
    /// 2 has received both and acked the first `acked`, and those acks are still held in
    /// memory (not yet stored). Returns the harness and the connections of 1 and 2.
    pub(super) fn two_queued_with_held_acks(
        max_queue_len: u64,
        acked: usize,
    ) -> (Self, ConnId, ConnId) {
        let config = GroupConfig {
            max_queue_len,
            ..GroupConfig::default()
        };
        let mut h = Self::with_config(config);
        let a = h.login(1);
        let b = h.login(2);
        h.take(b);
        h.reflect(a, b"1");
        h.reflect(a, b"2");
        for r in reflected(&h.take(b)).iter().take(acked) {
            h.ack(b, r.reflected_id);
        }
        assert_eq!(h.queue(2).len, 2, "acks held in memory, not stored");
        (h, a, b)
    }
}

impl<S: GroupStore> Harness<S> {
    pub(super) fn hellos_of(&self, conn: ConnId) -> pb::ServerHello {
        self.hellos[&conn].clone()
    }
}
