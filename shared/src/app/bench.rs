//! Benchmark workloads (feature `bench`), run unchanged natively (`shared/benches/incoming.rs`)
//! and in wasm in a browser (`client-wasm`'s feature `bench`, driven by
//! `client-wasm/bench/run.mjs`), so the two figures compare the very same code (BENCHMARKS.md,
//! "Browser device").
//!
//! - [`IncomingBench`]: a leader device receiving N 1:1 texts from a contact. [`IncomingBench::prepare`]
//!   runs the whole exchange once in memory — the device (`App` over an in-memory store), the
//!   real mediator state machine ([`crate::mediator::Group`]) and a minimal chat server on
//!   [`CspServer`] — and records every d2m container the device received. It then builds a
//!   fresh device from the same seed and replays the setup part of the recording into it.
//!   [`IncomingBench::process`] replays the rest: exactly what a browser tab does with the
//!   mediator's containers (decrypt the d2m and CSP layers, open the message, dedupe, store,
//!   reflect `IncomingMessage`, persist each step's batch and confirm it, CSP ack, delivery
//!   receipt: reflect, send, `sent` update). Only the device works during `process`; the
//!   mediator and chat server did theirs during `prepare`. The device is deterministic (seeded
//!   rng, fixed clock), so the replay reproduces the recorded run byte for byte;
//!   [`IncomingBench::verify`] checks that, so a replay that diverged cannot pass as fast.
//! - [`populated_device`]: the records of a device with many contacts and messages, for the
//!   open-time budget.
//!
//! Bench-only: the shipped client is built without this module.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};

use super::model::{
    Contact, ConversationId, Direction, Identity, Message, MessageKey, MessageState, OwnIdentity,
};
use super::nonce::NonceScope;
use super::records::{Batch, RecordError};
use super::state::State;
use super::{App, AppConfig, AppError, Effect, MemoryStore};
use crate::crypto::{PublicKey, SecretKey};
use crate::csp::{
    seal_message_with_nonce, CspPayload, CspServer, CspServerConfig, E2eMessageType, MessageAck,
    MessageFlags, MessagePayloadVersion, MessageToSeal, MessageWithMetadataBox, SealError,
    ServerEvent,
};
use crate::d2d::{DeviceInfo, Platform};
use crate::keys::{ClientKey, DeviceGroupKey};
use crate::mediator::{
    ConnId, Effect as GroupEffect, Group, GroupConfig, MemoryStore as GroupMemoryStore,
    MemoryStoreError,
};

/// The fixed clock of the workload (device, mediator and chat server alike).
const NOW_MS: u64 = 1_700_000_000_000;
/// The device under test.
const OWN: &str = "TANDEM01";
/// The contact sending the messages.
const PEER: &str = "PEER0001";
/// Bounds the in-memory world's loop; far above what N messages need.
const MAX_ROUNDS: usize = 10_000_000;

/// Why a workload could not be prepared or did not reproduce.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The in-memory mediator's store refused (it cannot, short of memory).
    #[error("mediator store: {0}")]
    Mediator(#[from] MemoryStoreError),
    /// Sealing a peer message failed.
    #[error("sealing a message: {0}")]
    Seal(#[from] SealError),
    /// The device refused an input.
    #[error("device: {0}")]
    App(#[from] AppError),
    /// Stored records did not load.
    #[error("records: {0}")]
    Record(#[from] RecordError),
    /// The in-memory world did not settle, or settled in the wrong place.
    #[error("workload: {0}")]
    Workload(String),
    /// The replay produced other containers than the recorded run: the timing would be
    /// meaningless.
    #[error("the replay diverged from the recording at container {0}")]
    Diverged(usize),
}

/// A deterministic [`CryptoRngCore`]: SHA-512 of (seed, counter). Deterministic on purpose (the
/// replay must repeat the recorded run); it is never used outside benchmarks.
#[derive(Debug, Clone)]
pub struct SeededRng {
    seed: [u8; 32],
    counter: u64,
    buffer: [u8; 64],
    used: usize,
}

impl SeededRng {
    /// A stream for `seed` and `stream` (separate streams for the device and the world).
    #[must_use]
    pub fn new(seed: u64, stream: u8) -> Self {
        let mut s = [0; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        s[8] = stream;
        Self {
            seed: s,
            counter: 0,
            buffer: [0; 64],
            used: 64,
        }
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            if self.used == self.buffer.len() {
                let mut h = Sha512::new();
                h.update(self.seed);
                h.update(self.counter.to_le_bytes());
                self.buffer.copy_from_slice(&h.finalize());
                self.counter = self.counter.wrapping_add(1);
                self.used = 0;
            }
            if let Some(b) = self.buffer.get(self.used) {
                *byte = *b;
            }
            self.used += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for SeededRng {}

fn identity(text: &str) -> Result<Identity, BenchError> {
    text.parse()
        .map_err(|_| BenchError::Workload(format!("bad identity {text}")))
}

fn device_info() -> DeviceInfo {
    DeviceInfo {
        platform: Platform::Web,
        platform_details: "bench".into(),
        app_version: "0".into(),
        label: "bench".into(),
    }
}

/// The device as an adapter drives it: after every input, drain effects (persist each batch
/// into memory and confirm it, answer directory lookups), events and containers until nothing
/// moves. Recording and replay both go through this, so they make the same calls in the same
/// order.
struct Driver {
    app: App,
    store: MemoryStore,
    rng: SeededRng,
    directory: BTreeMap<Identity, PublicKey>,
    events: usize,
}

impl Driver {
    fn create(
        own: Identity,
        key: &ClientKey,
        config: &AppConfig,
        seed: u64,
        directory: BTreeMap<Identity, PublicKey>,
    ) -> Result<(Self, Vec<Vec<u8>>), BenchError> {
        let mut rng = SeededRng::new(seed, 0);
        let app = App::create(own, key.clone(), config.clone(), &mut rng);
        let mut driver = Self {
            app,
            store: MemoryStore::new(),
            rng,
            directory,
            events: 0,
        };
        let mut out = Vec::new();
        driver.settle(&mut out)?;
        driver.app.connect(NOW_MS, &mut driver.rng)?;
        driver.settle(&mut out)?;
        Ok((driver, out))
    }

    fn feed(&mut self, frame: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), BenchError> {
        self.app.on_binary(frame, NOW_MS, &mut self.rng);
        self.settle(out)
    }

    fn settle(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), BenchError> {
        loop {
            let mut moved = false;
            while let Some(effect) = self.app.poll_effect() {
                moved = true;
                match effect {
                    Effect::Persist(batch) => {
                        let id = batch.id;
                        self.store.apply(batch);
                        self.app.on_persisted(id)?;
                    }
                    Effect::LookupIdentity(identity) => {
                        let key = self.directory.get(&identity).copied();
                        self.app
                            .on_identity_lookup(identity, key, NOW_MS, &mut self.rng);
                    }
                    _ => {}
                }
            }
            while self.app.poll_event().is_some() {
                self.events += 1;
            }
            while let Some(bytes) = self.app.poll_transmit() {
                moved = true;
                out.push(bytes);
            }
            if !moved {
                return Ok(());
            }
        }
    }
}

/// The chat server's side, as little as the device needs: login, acks for what the device
/// sends, one queue for the device delivered after unblock, removal on ack.
struct Chat {
    key: SecretKey,
    directory: BTreeMap<Identity, PublicKey>,
    session: Option<CspServer>,
    unblocked: bool,
    queue: VecDeque<(u64, MessageWithMetadataBox)>,
    delivered: BTreeSet<u64>,
    next_seq: u64,
}

impl Chat {
    fn receive(&mut self, bytes: &[u8]) -> Result<(), BenchError> {
        let session = self.session.as_mut().ok_or_else(|| no("CSP session"))?;
        session
            .receive(bytes)
            .map_err(|e| BenchError::Workload(format!("chat server: {e}")))?;
        loop {
            let session = self.session.as_mut().ok_or_else(|| no("CSP session"))?;
            let Some(event) = session.poll_event() else {
                return Ok(());
            };
            match event {
                ServerEvent::NeedIdentityKey { identity } => {
                    let key = Identity::new(identity)
                        .ok()
                        .and_then(|i| self.directory.get(&i).copied());
                    session
                        .provide_identity_key(key)
                        .map_err(|e| BenchError::Workload(format!("chat login: {e}")))?;
                }
                ServerEvent::Payload(bytes) => self.on_payload(&bytes)?,
                _ => {}
            }
        }
    }

    fn send(&mut self, payload: &CspPayload) -> Result<(), BenchError> {
        let bytes = payload
            .encode()
            .map_err(|e| BenchError::Workload(format!("chat encode: {e}")))?;
        self.session
            .as_mut()
            .ok_or_else(|| no("CSP session"))?
            .send(&bytes)
            .map_err(|e| BenchError::Workload(format!("chat send: {e}")))
    }

    fn on_payload(&mut self, bytes: &[u8]) -> Result<(), BenchError> {
        let Ok(payload) = CspPayload::decode(bytes, MessagePayloadVersion::WithMetadataBox) else {
            return Ok(());
        };
        match payload {
            // Receipts to the peer: accepted (the peer has no device here).
            CspPayload::OutgoingMessage(message)
                if !message.flags.contains(MessageFlags::DONT_ACK) =>
            {
                self.send(&CspPayload::OutgoingMessageAck(MessageAck {
                    identity: message.receiver,
                    message_id: message.message_id,
                }))?;
            }
            CspPayload::UnblockIncomingMessages => {
                self.unblocked = true;
                self.deliver()?;
                self.send(&CspPayload::QueueSendComplete)?;
            }
            CspPayload::IncomingMessageAck(ack) => self
                .queue
                .retain(|(_, m)| !(m.sender == ack.identity && m.message_id == ack.message_id)),
            CspPayload::EchoRequest(data) => self.send(&CspPayload::EchoResponse(data))?,
            _ => {}
        }
        Ok(())
    }

    fn enqueue(&mut self, message: MessageWithMetadataBox) -> Result<(), BenchError> {
        self.next_seq += 1;
        self.queue.push_back((self.next_seq, message));
        self.deliver()
    }

    fn deliver(&mut self) -> Result<(), BenchError> {
        if !self.unblocked {
            return Ok(());
        }
        let pending: Vec<MessageWithMetadataBox> = self
            .queue
            .iter()
            .filter(|(seq, _)| self.delivered.insert(*seq))
            .map(|(_, m)| m.clone())
            .collect();
        for message in pending {
            self.send(&CspPayload::IncomingMessage(message))?;
        }
        Ok(())
    }
}

fn no(what: &str) -> BenchError {
    BenchError::Workload(format!("{what} missing"))
}

/// The recording world: device, mediator group, chat server.
struct World {
    rng: SeededRng,
    device: Driver,
    group: Group<GroupMemoryStore>,
    chat: Chat,
    conn: ConnId,
    /// Device output not yet handed to the mediator.
    outbox: Vec<Vec<u8>>,
    /// Every container the device received, in order.
    frames: Vec<Vec<u8>>,
    /// Every container the device sent, in order.
    sent: Vec<Vec<u8>>,
}

impl World {
    fn run(&mut self) -> Result<(), BenchError> {
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            for bytes in std::mem::take(&mut self.outbox) {
                moved = true;
                self.group.on_binary(self.conn, &bytes, NOW_MS);
                self.sent.push(bytes);
            }
            while let Some(effect) = self.group.poll_effect() {
                moved = true;
                match effect {
                    GroupEffect::Send { bytes, .. } => {
                        self.device.feed(&bytes, &mut self.outbox)?;
                        self.frames.push(bytes);
                    }
                    GroupEffect::OpenCsp { .. } => {
                        self.chat.session = Some(CspServer::new(
                            CspServerConfig {
                                server_key: self.chat.key.clone(),
                            },
                            &mut self.rng,
                        ));
                    }
                    GroupEffect::CspSend { bytes, .. } => self.chat.receive(&bytes)?,
                    GroupEffect::Close { code, .. } => {
                        return Err(BenchError::Workload(format!(
                            "the mediator closed the device: {code:?}"
                        )))
                    }
                    GroupEffect::CloseCsp { .. } => self.chat.session = None,
                }
            }
            let mut to_device = Vec::new();
            if let Some(session) = self.chat.session.as_mut() {
                while let Some(unit) = session.poll_transmit() {
                    to_device.extend(unit);
                }
            }
            if !to_device.is_empty() {
                moved = true;
                self.group.on_csp_bytes(self.conn, &to_device, NOW_MS);
            }
            if !moved {
                return Ok(());
            }
        }
        Err(BenchError::Workload("the world does not settle".into()))
    }
}

/// N incoming 1:1 texts, recorded and ready to be replayed into a device (module docs).
pub struct IncomingBench {
    device: Driver,
    frames: Vec<Vec<u8>>,
    expected: Vec<Vec<u8>>,
    messages: usize,
    processed: Option<Vec<Vec<u8>>>,
}

impl core::fmt::Debug for IncomingBench {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IncomingBench")
            .field("messages", &self.messages)
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

impl IncomingBench {
    /// Records the exchange of `messages` texts (plus one first message, untimed, that makes
    /// the sender a contact) and prepares a fresh device that has replayed everything before
    /// them.
    ///
    /// # Errors
    /// If the in-memory world fails, which would be a bug.
    pub fn prepare(messages: usize, seed: u64) -> Result<Self, BenchError> {
        let mut rng = SeededRng::new(seed, 1);
        let own = identity(OWN)?;
        let peer = identity(PEER)?;
        let own_key = ClientKey::new(SecretKey::generate(&mut rng));
        let peer_key = ClientKey::new(SecretKey::generate(&mut rng));
        let chat_key = SecretKey::generate(&mut rng);
        let directory =
            BTreeMap::from([(own, own_key.public_key()), (peer, peer_key.public_key())]);
        let config = AppConfig::new(device_info(), chat_key.public_key());
        let dgpk = DeviceGroupKey::from_client_key(own_key.secret())
            .derive_keys()
            .dgpk_public;
        let mut group = Group::new(
            GroupConfig::default(),
            dgpk,
            GroupMemoryStore::new(),
            NOW_MS,
        )?;
        let conn = ConnId(1);
        group.on_connect(conn, NOW_MS, &mut rng);
        let (device, outbox) = Driver::create(own, &own_key, &config, seed, directory.clone())?;
        let mut world = World {
            rng,
            device,
            group,
            chat: Chat {
                key: chat_key,
                directory: directory.clone(),
                session: None,
                unblocked: false,
                queue: VecDeque::new(),
                delivered: BTreeSet::new(),
                next_seq: 0,
            },
            conn,
            outbox,
            frames: Vec::new(),
            sent: Vec::new(),
        };
        world.run()?;
        let sealed = |id: u64, rng: &mut SeededRng| -> Result<MessageWithMetadataBox, BenchError> {
            let text = format!("message {id}: an ordinary chat line of about sixty characters");
            let mut nonce = [0; 24];
            rng.fill_bytes(&mut nonce);
            Ok(seal_message_with_nonce(
                &peer_key,
                &MessageToSeal {
                    sender: *peer.as_bytes(),
                    receiver: *own.as_bytes(),
                    receiver_public_key: own_key.public_key(),
                    message_id: id,
                    created_at_ms: NOW_MS - 1_000,
                    flags: MessageFlags::SEND_PUSH,
                    nickname: None,
                    message_type: E2eMessageType::TEXT,
                    body: text.as_bytes(),
                },
                &nonce,
                rng,
            )?)
        };
        // The first message makes the sender a contact (directory lookup, CONTACT_SYNC).
        let first = sealed(u64::MAX, &mut world.rng)?;
        world.chat.enqueue(first)?;
        world.run()?;
        let (frames_before, sent_before) = (world.frames.len(), world.sent.len());
        let mut batch = Vec::with_capacity(messages);
        for i in 0..messages {
            batch.push(sealed(i as u64 + 1, &mut world.rng)?);
        }
        for message in batch {
            world.chat.enqueue(message)?;
        }
        world.run()?;
        world.sent.append(&mut world.outbox);
        let stored = world
            .device
            .app
            .state()
            .conversation(&ConversationId::Contact(peer))
            .count();
        if stored != messages + 1 || !world.chat.queue.is_empty() {
            return Err(BenchError::Workload(format!(
                "recording: {stored} stored, {} unacked",
                world.chat.queue.len()
            )));
        }

        // A fresh device, same seed: replays the setup untimed.
        let (mut device, mut out) = Driver::create(own, &own_key, &config, seed, directory)?;
        for frame in world.frames.get(..frames_before).unwrap_or_default() {
            device.feed(frame, &mut out)?;
        }
        if out.len() != sent_before || out.iter().zip(&world.sent).any(|(a, b)| a != b) {
            return Err(BenchError::Diverged(0));
        }
        let frames = world.frames.split_off(frames_before);
        let expected = world.sent.split_off(sent_before);
        Ok(Self {
            device,
            frames,
            expected,
            messages,
            processed: None,
        })
    }

    /// The d2m containers [`Self::process`] feeds.
    #[must_use]
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Feeds the recorded containers to the device, draining it after each as an adapter does.
    /// This is the timed part. Call once.
    ///
    /// # Errors
    /// If the device refuses a confirmation (a bug).
    pub fn process(&mut self) -> Result<(), BenchError> {
        let mut out = Vec::with_capacity(self.expected.len());
        for frame in &self.frames {
            self.device.feed(frame, &mut out)?;
        }
        self.processed = Some(out);
        Ok(())
    }

    /// Checks after [`Self::process`] that the device sent exactly what the recorded run sent
    /// and stored every message. Returns the number of containers the device sent.
    ///
    /// # Errors
    /// [`BenchError::Diverged`] if the replay differs from the recording.
    pub fn verify(&self) -> Result<usize, BenchError> {
        let out = self
            .processed
            .as_ref()
            .ok_or_else(|| no("process() result"))?;
        if let Some(i) =
            (0..out.len().max(self.expected.len())).find(|&i| out.get(i) != self.expected.get(i))
        {
            return Err(BenchError::Diverged(i));
        }
        let peer = identity(PEER)?;
        let stored = self
            .device
            .app
            .state()
            .conversation(&ConversationId::Contact(peer))
            .count();
        if stored != self.messages + 1 {
            return Err(BenchError::Workload(format!("{stored} messages stored")));
        }
        Ok(out.len())
    }
}

/// One batch that writes a device with `contacts` contacts and `messages` stored messages
/// (alternating incoming and outgoing, spread over the contacts, all read/delivered), with the
/// nonce hashes such a history leaves (one CSP nonce per incoming message, one D2D nonce per
/// message). The identity is connected once, so opening it expects an existing slot.
///
/// # Errors
/// Never for sane sizes; identities are generated from the index.
pub fn populated_device(
    own: Identity,
    client_key: ClientKey,
    contacts: usize,
    messages: usize,
    seed: u64,
) -> Result<Batch, BenchError> {
    let mut rng = SeededRng::new(seed, 2);
    let mut state = State::new(OwnIdentity {
        identity: own,
        client_key,
        device_id: rng.next_u64(),
        csp_device_id: rng.next_u64(),
        connected_once: true,
        wants_new_device_sync: false,
    });
    let mut ids = Vec::with_capacity(contacts);
    for i in 0..contacts {
        let id = identity(&format!("C{i:07}"))?;
        let mut key = [0; 32];
        rng.fill_bytes(&mut key);
        let mut contact = Contact::new(id, PublicKey(key), NOW_MS);
        contact.first_name = format!("First{i}");
        contact.last_name = "Last".into();
        state.put_contact(contact);
        ids.push(id);
    }
    for i in 0..messages {
        let Some(&contact) = ids.get(i % ids.len().max(1)) else {
            break;
        };
        let incoming = i % 2 == 0;
        let created_at = NOW_MS - (messages - i) as u64 * 1_000;
        state.add_message(Message {
            seq: 0,
            conversation: ConversationId::Contact(contact),
            key: MessageKey {
                sender: if incoming { contact } else { own },
                id: rng.next_u64(),
            },
            direction: if incoming {
                Direction::Incoming
            } else {
                Direction::Outgoing
            },
            text: format!("message {i}, an ordinary chat line of about sixty characters"),
            created_at,
            state: if incoming {
                MessageState::Read
            } else {
                MessageState::Delivered
            },
            reflected_at: Some(created_at),
            state_at: Some(created_at),
            pending: Vec::new(),
            read_unsynced: false,
            receipt_due: None,
            edited_at: None,
            deleted_at: None,
            hidden: false,
            reactions: Vec::new(),
        });
        let mut nonce = [0; 24];
        if incoming {
            rng.fill_bytes(&mut nonce);
            state.use_nonce(NonceScope::Csp, &nonce);
        }
        rng.fill_bytes(&mut nonce);
        state.use_nonce(NonceScope::D2d, &nonce);
    }
    Ok(Batch {
        id: 0,
        ops: state.take_ops(),
    })
}

/// `n` X25519 key agreements as the message path makes them
/// ([`crate::crypto::SecretKey::box_key_contributory`]: the ladder, then HSalsa20), for the
/// breakdown of [`IncomingBench`]: opening a message and sealing its delivery receipt make four
/// (box key and metadata key, each way). Returns a byte of the last key so nothing is optimised
/// away.
///
/// # Errors
/// Never with these keys (both are generated, so never low-order).
pub fn x25519_agreements(n: usize, seed: u64) -> Result<u8, BenchError> {
    let mut rng = SeededRng::new(seed, 4);
    let own = SecretKey::generate(&mut rng);
    let peer = SecretKey::generate(&mut rng).public_key();
    let mut last = 0;
    for _ in 0..n {
        let key = own
            .box_key_contributory(&peer)
            .map_err(|e| BenchError::Workload(format!("x25519: {e}")))?;
        last ^= key.as_bytes().first().copied().unwrap_or(0);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replay must reproduce the recording, or the timed part measures something else.
    #[test]
    fn replay_reproduces_the_recording_and_stores_every_message() {
        let mut bench = IncomingBench::prepare(25, 3).unwrap();
        assert_eq!(
            bench.frames(),
            4 * 25,
            "message, two ReflectAcks, the receipt's ack"
        );
        bench.process().unwrap();
        assert_eq!(bench.verify().unwrap(), 4 * 25);
    }

    #[test]
    fn verify_refuses_a_replay_that_was_not_processed_or_diverged() {
        let mut bench = IncomingBench::prepare(3, 4).unwrap();
        assert!(bench.verify().is_err());
        bench.process().unwrap();
        if let Some(out) = bench.processed.as_mut().and_then(|o| o.last_mut()) {
            out.push(0);
        }
        assert!(matches!(bench.verify(), Err(BenchError::Diverged(_))));
    }

    #[test]
    fn populated_device_opens_with_every_record() {
        let own: Identity = "TANDEM01".parse().unwrap();
        let key = ClientKey::new(SecretKey::from_bytes([5; 32]));
        let batch = populated_device(own, key, 10, 100, 1).unwrap();
        let mut store = MemoryStore::new();
        store.apply(batch);
        let state = State::load(store.records()).unwrap();
        assert_eq!(state.contacts().len(), 10);
        assert_eq!(state.messages().len(), 100);
        assert_eq!(state.conversation_list().len(), 10);
    }
}
