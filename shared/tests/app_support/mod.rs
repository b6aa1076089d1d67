//! A deterministic in-process world for the app core: the real mediator state machine per
//! identity (`mediator::Group` over its `MemoryStore`), a small chat server built on
//! `csp::CspServer` (per-identity queues, delivery only to sessions that unblocked, acks), a
//! directory, and devices running `app::App` over an `app::MemoryStore`.
//!
//! The chat server here is test scaffolding: it keeps the rules the app relies on (store, ack
//! the sender, deliver in order after unblock, redeliver what was not acked, honour don't-queue
//! and don't-ack) and nothing else. The real one is exercised in `tests/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    unreachable_pub,
    missing_debug_implementations
)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tandem_shared::app::{
    App, AppConfig, AppEvent, Batch, ConversationId, Effect as AppEffect, Identity,
    MemoryStore as RecordStore, Message,
};
use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::csp::{
    CspPayload, CspServer, CspServerConfig, LoginAck, MessageAck, MessageFlags,
    MessagePayloadVersion, MessageWithMetadataBox, ServerEvent,
};
use tandem_shared::d2d::{DeviceInfo, Platform};
use tandem_shared::d2m::CloseCode;
use tandem_shared::keys::{ClientKey, DeviceGroupKey};
use tandem_shared::mediator::{ConnId, Effect as GroupEffect, Group, GroupConfig, MemoryStore};

/// One queued message for a receiver.
#[derive(Clone)]
pub struct Queued {
    pub seq: u64,
    pub message: MessageWithMetadataBox,
}

struct Session {
    server: CspServer,
    identity: Option<[u8; 8]>,
    unblocked: bool,
    /// Queue entries sent on this session and not acked.
    delivered: BTreeSet<u64>,
}

/// The chat server and directory.
pub struct ChatServer {
    pub key: SecretKey,
    pub directory: BTreeMap<Identity, PublicKey>,
    sessions: BTreeMap<ConnId, Session>,
    pub queues: BTreeMap<[u8; 8], VecDeque<Queued>>,
    next_seq: u64,
    /// Every message a client sent, in order (for replay tests).
    pub log: Vec<MessageWithMetadataBox>,
    /// `(receiver, sender, message id)` of every message a receiver acked: the chat server
    /// forgot it, so the receiver's devices are all that hold it.
    pub acked: Vec<([u8; 8], [u8; 8], u64)>,
    /// The time the server puts into login-ack (spec §12); `None`: the old zero layout.
    pub login_ack_time_ms: Option<u64>,
    /// Behave like a chat server of before protocol version 23: a feature byte other than 0 or
    /// 1 gets close-error "unsupported message payload version N" and the connection ends.
    pub payload_version_only: bool,
    /// The feature byte of every login, in order (`None`: no extension).
    pub logins: Vec<Option<u8>>,
    /// Sessions the server ended, for the world to tell their mediator.
    closed: Vec<ConnId>,
    /// Tandem push URLs (token type 0xa0) by identity, as the last login registered them.
    pub push_urls: BTreeMap<[u8; 8], String>,
    /// Pushes to carry out: a message was stored for an identity nobody receives for.
    pub pushes: Vec<String>,
    /// Store outgoing messages but never ack them to their senders.
    pub withhold_acks: bool,
}

impl ChatServer {
    fn new(rng: &mut ChaCha20Rng) -> Self {
        Self {
            key: SecretKey::generate(rng),
            directory: BTreeMap::new(),
            sessions: BTreeMap::new(),
            queues: BTreeMap::new(),
            next_seq: 0,
            log: Vec::new(),
            acked: Vec::new(),
            login_ack_time_ms: None,
            payload_version_only: false,
            logins: Vec::new(),
            closed: Vec::new(),
            push_urls: BTreeMap::new(),
            pushes: Vec::new(),
            withhold_acks: false,
        }
    }

    fn open(&mut self, conn: ConnId, rng: &mut ChaCha20Rng) {
        let server = CspServer::new(
            CspServerConfig {
                server_key: self.key.clone(),
            },
            rng,
        );
        self.sessions.insert(
            conn,
            Session {
                server,
                identity: None,
                unblocked: false,
                delivered: BTreeSet::new(),
            },
        );
    }

    fn close(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
    }

    fn receive(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.server.receive(bytes).is_err() {
            self.sessions.remove(&conn);
            return;
        }
        self.process(conn);
    }

    fn process(&mut self, conn: ConnId) {
        loop {
            let Some(session) = self.sessions.get_mut(&conn) else {
                return;
            };
            let Some(event) = session.server.poll_event() else {
                return;
            };
            match event {
                ServerEvent::NeedIdentityKey { identity } => {
                    let key = Identity::new(identity)
                        .ok()
                        .and_then(|i| self.directory.get(&i).copied());
                    let ack = LoginAck {
                        server_time_ms: self.login_ack_time_ms.unwrap_or(0),
                        queued_messages: u32::try_from(
                            self.queues.get(&identity).map_or(0, VecDeque::len),
                        )
                        .unwrap(),
                    };
                    let session = self.sessions.get_mut(&conn).unwrap();
                    if session
                        .server
                        .provide_identity_key_with_ack(key, ack)
                        .is_err()
                    {
                        self.sessions.remove(&conn);
                        return;
                    }
                }
                ServerEvent::Authenticated {
                    identity,
                    extensions,
                } => {
                    self.sessions.get_mut(&conn).unwrap().identity = Some(identity);
                    let bits = extensions.features.map(|f| f.0);
                    self.logins.push(bits);
                    if self.payload_version_only && bits.unwrap_or(0) > 1 {
                        let bits = bits.unwrap_or(0);
                        self.send(
                            conn,
                            &CspPayload::CloseError {
                                can_reconnect: false,
                                message: format!("unsupported message payload version {bits}"),
                            },
                        );
                        self.closed.push(conn);
                    }
                }
                ServerEvent::Payload(bytes) => self.on_payload(conn, &bytes),
                _ => {}
            }
        }
    }

    fn send(&mut self, conn: ConnId, payload: &CspPayload) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.server.send(&payload.encode().unwrap()).unwrap();
        }
    }

    fn on_payload(&mut self, conn: ConnId, bytes: &[u8]) {
        let Ok(payload) = CspPayload::decode(bytes, MessagePayloadVersion::WithMetadataBox) else {
            return;
        };
        let me = self.sessions[&conn].identity.unwrap();
        match payload {
            CspPayload::OutgoingMessage(message) => {
                self.log.push(message.clone());
                let receiver = message.receiver;
                let flags = message.flags;
                if message.sender == me {
                    self.enqueue(message);
                }
                if !flags.contains(MessageFlags::DONT_ACK) && !self.withhold_acks {
                    self.send(
                        conn,
                        &CspPayload::OutgoingMessageAck(MessageAck {
                            identity: receiver,
                            message_id: self.log.last().unwrap().message_id,
                        }),
                    );
                }
            }
            CspPayload::UnblockIncomingMessages => {
                self.sessions.get_mut(&conn).unwrap().unblocked = true;
                self.deliver(me);
                self.send(conn, &CspPayload::QueueSendComplete);
            }
            CspPayload::IncomingMessageAck(ack) => {
                if let Some(queue) = self.queues.get_mut(&me) {
                    let before = queue.len();
                    queue.retain(|q| {
                        !(q.message.sender == ack.identity
                            && q.message.message_id == ack.message_id)
                    });
                    if queue.len() < before {
                        self.acked.push((me, ack.identity, ack.message_id));
                    }
                }
            }
            CspPayload::EchoRequest(data) => self.send(conn, &CspPayload::EchoResponse(data)),
            CspPayload::SetPushNotificationToken(token)
                if token.token_type() == tandem_shared::app::TANDEM_PUSH_TOKEN_TYPE =>
            {
                let url = String::from_utf8(token.token().to_vec()).unwrap();
                self.push_urls.insert(me, url);
            }
            _ => {}
        }
    }

    /// Stores a message for its receiver (or, with don't-queue, hands it only to a session that
    /// is receiving right now) and delivers it.
    pub fn enqueue(&mut self, message: MessageWithMetadataBox) {
        let receiver = message.receiver;
        if message.flags.contains(MessageFlags::DONT_QUEUE) {
            let online: Vec<ConnId> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.unblocked && s.identity == Some(receiver))
                .map(|(c, _)| *c)
                .collect();
            for conn in online {
                self.send(conn, &CspPayload::IncomingMessage(message.clone()));
            }
            return;
        }
        self.next_seq += 1;
        self.queues.entry(receiver).or_default().push_back(Queued {
            seq: self.next_seq,
            message,
        });
        self.deliver(receiver);
        let receiving = self
            .sessions
            .values()
            .any(|s| s.unblocked && s.identity == Some(receiver));
        if let (false, Some(url)) = (receiving, self.push_urls.get(&receiver)) {
            self.pushes.push(url.clone());
        }
    }

    fn deliver(&mut self, receiver: [u8; 8]) {
        let queue: Vec<Queued> = self
            .queues
            .get(&receiver)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        let conns: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.unblocked && s.identity == Some(receiver))
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            for q in &queue {
                if self.sessions[&conn].delivered.contains(&q.seq) {
                    continue;
                }
                self.sessions
                    .get_mut(&conn)
                    .unwrap()
                    .delivered
                    .insert(q.seq);
                self.send(conn, &CspPayload::IncomingMessage(q.message.clone()));
            }
        }
    }

    /// Messages stored for `identity` and not yet acked.
    pub fn queued(&self, identity: &Identity) -> usize {
        self.queues
            .get(identity.as_bytes())
            .map_or(0, VecDeque::len)
    }

    fn transmits(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        let mut out = Vec::new();
        for (conn, session) in &mut self.sessions {
            let mut bytes = Vec::new();
            while let Some(unit) = session.server.poll_transmit() {
                bytes.extend(unit);
            }
            if !bytes.is_empty() {
                out.push((*conn, bytes));
            }
        }
        out
    }
}

/// One device: its app (absent while crashed), its store and what it reported.
pub struct Device {
    pub identity: Identity,
    pub client_key: ClientKey,
    pub app: Option<App>,
    pub store: RecordStore,
    pub config: AppConfig,
    pub conn: Option<ConnId>,
    /// Batches to confirm before holding the rest (`None`: confirm everything).
    pub confirm_budget: Option<usize>,
    /// Batches not confirmed (lost on a crash).
    pub held: Vec<Batch>,
    pub events: Vec<AppEvent>,
    /// The last `Reflected` container delivered to this device.
    pub last_reflected: Option<Vec<u8>>,
    /// Flip a byte of the next `Reflected` container delivered to this device.
    pub tamper_next_reflected: bool,
    /// The directory cannot be reached from this device.
    pub directory_down: bool,
}

/// Faults [`World::run`] injects between any two of its steps, aimed at the devices that hold
/// a group's lock: so that a transaction dies in the middle while messages flow.
pub struct Faults {
    pub rng: ChaCha20Rng,
    /// Chance of a fault after each step.
    pub per_step: f64,
    /// Faults injected so far: (network drops, crashes, TTL expiries).
    pub injected: (u32, u32, u32),
}

impl Faults {
    pub fn new(seed: u64, per_step: f64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            per_step,
            injected: (0, 0, 0),
        }
    }
}

/// The whole world, moved by [`World::run`].
pub struct World {
    pub rng: ChaCha20Rng,
    pub now: u64,
    pub chat: ChatServer,
    pub groups: BTreeMap<Identity, Group<MemoryStore>>,
    pub devices: BTreeMap<&'static str, Device>,
    /// The mediator's limits for groups created from now on.
    pub group_config: GroupConfig,
    pub faults: Option<Faults>,
    /// CSP on demand for devices created from now on (`AppConfig::csp_idle_ms`); groups created
    /// from now on get a push URL naming their identity.
    pub csp_idle_ms: Option<u64>,
    /// Pushes the chat server made and the world lost (only with faults).
    pub pushes_lost: u32,
    keys: BTreeMap<Identity, ClientKey>,
    next_conn: u64,
}

pub fn info(label: &str) -> DeviceInfo {
    DeviceInfo {
        platform: Platform::Web,
        platform_details: "test".into(),
        app_version: "0".into(),
        label: label.into(),
    }
}

impl World {
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let chat = ChatServer::new(&mut rng);
        Self {
            rng,
            now: 1_700_000_000_000,
            chat,
            groups: BTreeMap::new(),
            devices: BTreeMap::new(),
            group_config: GroupConfig::default(),
            faults: None,
            csp_idle_ms: None,
            pushes_lost: 0,
            keys: BTreeMap::new(),
            next_conn: 0,
        }
    }

    /// Registers an identity with the directory and starts its device group at the mediator.
    pub fn identity(&mut self, name: &str) -> Identity {
        let identity: Identity = name.parse().unwrap();
        let key = ClientKey::new(SecretKey::generate(&mut self.rng));
        self.chat.directory.insert(identity, key.public_key());
        let dgpk = DeviceGroupKey::from_client_key(key.secret())
            .derive_keys()
            .dgpk_public;
        let mut config = self.group_config.clone();
        if self.csp_idle_ms.is_some() {
            config.push_url = Some(format!("push:{name}"));
        }
        let group = Group::new(config, dgpk, MemoryStore::new(), self.now).unwrap();
        self.groups.insert(identity, group);
        self.keys.insert(identity, key);
        identity
    }

    pub fn client_key(&self, identity: &Identity) -> ClientKey {
        self.keys[identity].clone()
    }

    /// A new, empty device of `identity` (not connected).
    pub fn device(&mut self, name: &'static str, identity: Identity) {
        let client_key = self.keys[&identity].clone();
        let mut config = AppConfig::new(info(name), self.chat.key.public_key());
        config.csp_idle_ms = self.csp_idle_ms;
        let app = App::create(identity, client_key.clone(), config.clone(), &mut self.rng);
        self.devices.insert(
            name,
            Device {
                identity,
                client_key,
                app: Some(app),
                store: RecordStore::new(),
                config,
                conn: None,
                confirm_budget: None,
                held: Vec::new(),
                events: Vec::new(),
                last_reflected: None,
                tamper_next_reflected: false,
                directory_down: false,
            },
        );
        self.run();
    }

    pub fn dev(&mut self, name: &str) -> &mut Device {
        self.devices.get_mut(name).unwrap()
    }

    pub fn app(&mut self, name: &str) -> &mut App {
        self.dev(name).app.as_mut().unwrap()
    }

    pub fn app_ref(&self, name: &str) -> &App {
        self.devices[name].app.as_ref().unwrap()
    }

    /// Opens the WebSocket and runs until quiet.
    pub fn connect(&mut self, name: &str) {
        self.link(name);
        self.run();
    }

    /// Opens the WebSocket; nothing moves yet.
    pub fn link(&mut self, name: &str) {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let identity = self.devices[name].identity;
        self.dev(name).conn = Some(conn);
        let now = self.now;
        self.groups
            .get_mut(&identity)
            .unwrap()
            .on_connect(conn, now, &mut self.rng);
        let device = self.devices.get_mut(name).unwrap();
        device
            .app
            .as_mut()
            .unwrap()
            .connect(now, &mut self.rng)
            .unwrap();
    }

    /// The network drops: both ends see the connection go.
    pub fn disconnect(&mut self, name: &str) {
        self.drop_link(name);
        self.run();
    }

    fn drop_link(&mut self, name: &str) {
        let device = self.devices.get_mut(name).unwrap();
        if let Some(conn) = device.conn.take() {
            let identity = device.identity;
            if let Some(app) = device.app.as_mut() {
                app.on_close(CloseCode::AbnormalClosure, self.now, &mut self.rng);
            }
            self.groups
                .get_mut(&identity)
                .unwrap()
                .on_disconnect(conn, self.now);
        }
    }

    /// The tab dies: unconfirmed batches are lost, the connection drops.
    pub fn crash(&mut self, name: &str) {
        self.kill(name);
        self.run();
    }

    fn kill(&mut self, name: &str) {
        let device = self.devices.get_mut(name).unwrap();
        device.app = None;
        device.held.clear();
        if let Some(conn) = device.conn.take() {
            let identity = device.identity;
            self.groups
                .get_mut(&identity)
                .unwrap()
                .on_disconnect(conn, self.now);
        }
    }

    /// The device that holds `identity`'s lock at the mediator, if one does.
    pub fn lock_holder(&self, identity: &Identity) -> Option<&'static str> {
        let group = &self.groups[identity];
        let holder = group.transaction_holder()?;
        self.devices
            .iter()
            .find(|(_, d)| d.conn.is_some_and(|c| group.device_of(c) == Some(holder)))
            .map(|(name, _)| *name)
    }

    /// The lock is exclusive: a device that takes itself to hold it is the mediator's holder.
    pub fn check_lock(&self) {
        for (name, device) in &self.devices {
            let Some(app) = device.app.as_ref() else {
                continue;
            };
            if app.holds_lock() && device.conn.is_some() {
                assert_eq!(
                    self.lock_holder(&device.identity),
                    Some(*name),
                    "{name} takes itself to hold the lock"
                );
            }
        }
    }

    /// A fault, maybe: the lock holder's network drops, its tab dies, or its transaction's TTL
    /// runs out at the mediator.
    fn inject_fault(&mut self) {
        let Some(faults) = self.faults.as_mut() else {
            return;
        };
        if !rand::Rng::gen_bool(&mut faults.rng, faults.per_step) {
            return;
        }
        let kind = rand::Rng::gen_range(&mut faults.rng, 0..3);
        let identities: Vec<Identity> = self.groups.keys().copied().collect();
        let Some(name) = identities.iter().find_map(|i| self.lock_holder(i)) else {
            return;
        };
        let faults = self.faults.as_mut().unwrap();
        match kind {
            0 => {
                faults.injected.0 += 1;
                self.drop_link(name);
            }
            1 => {
                faults.injected.1 += 1;
                self.kill(name);
            }
            _ => {
                faults.injected.2 += 1;
                let ttl_ms = u64::from(self.group_config.max_transaction_ttl_s) * 1000;
                self.now += ttl_ms + 1;
                let now = self.now;
                for group in self.groups.values_mut() {
                    group.on_timeout(now);
                }
            }
        }
    }

    /// The tab starts again from what the store holds.
    pub fn reopen(&mut self, name: &str) {
        let device = self.devices.get_mut(name).unwrap();
        device.confirm_budget = None;
        let app = App::open(device.store.records(), device.config.clone()).unwrap();
        device.app = Some(app);
    }

    /// Confirms every held batch of a device.
    pub fn release(&mut self, name: &str) {
        let device = self.devices.get_mut(name).unwrap();
        device.confirm_budget = None;
        for batch in std::mem::take(&mut device.held) {
            let id = batch.id;
            device.store.apply(batch);
            device.app.as_mut().unwrap().on_persisted(id).unwrap();
        }
        self.run();
    }

    pub fn take_events(&mut self, name: &str) -> Vec<AppEvent> {
        std::mem::take(&mut self.dev(name).events)
    }

    /// The messages of a conversation on a device, oldest first.
    pub fn conversation(&self, name: &str, conversation: &ConversationId) -> Vec<Message> {
        self.app_ref(name)
            .state()
            .conversation(conversation)
            .cloned()
            .collect()
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    /// Advances the clock and gives every app and every group its timeout (keepalives, CSP
    /// idle close, wake polls), then runs.
    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now;
        for device in self.devices.values_mut() {
            if let Some(app) = device.app.as_mut() {
                app.on_timeout(now, &mut self.rng);
            }
        }
        for group in self.groups.values_mut() {
            group.on_timeout(now);
        }
        self.run();
    }

    /// Moves everything until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
            self.inject_fault();
        }
        panic!("the world does not settle");
    }

    /// Moves until `done` holds (true) or nothing moves (false).
    pub fn run_until(&mut self, done: impl Fn(&Self) -> bool) -> bool {
        for _ in 0..100_000 {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
            self.inject_fault();
        }
        panic!("the world does not settle");
    }

    fn step(&mut self) -> bool {
        let mut moved = false;
        let now = self.now;
        let names: Vec<&'static str> = self.devices.keys().copied().collect();
        for name in names {
            let device = self.devices.get_mut(name).unwrap();
            let Some(app) = device.app.as_mut() else {
                continue;
            };
            while let Some(effect) = app.poll_effect() {
                moved = true;
                match effect {
                    AppEffect::Persist(batch) => {
                        let confirm = match &mut device.confirm_budget {
                            None => true,
                            Some(0) => false,
                            Some(n) => {
                                *n -= 1;
                                true
                            }
                        };
                        if confirm && device.held.is_empty() {
                            let id = batch.id;
                            device.store.apply(batch);
                            app.on_persisted(id).unwrap();
                        } else {
                            device.held.push(batch);
                        }
                    }
                    AppEffect::LookupIdentity(identity) if device.directory_down => {
                        app.on_identity_lookup_failed(identity);
                    }
                    AppEffect::LookupIdentity(identity) => {
                        let key = self.chat.directory.get(&identity).copied();
                        app.on_identity_lookup(identity, key, now, &mut self.rng);
                    }
                    AppEffect::CloseWebSocket(_) => {
                        if let Some(conn) = device.conn.take() {
                            self.groups
                                .get_mut(&device.identity)
                                .unwrap()
                                .on_disconnect(conn, now);
                        }
                    }
                    _ => {}
                }
            }
            while let Some(event) = app.poll_event() {
                device.events.push(event);
            }
            if let Some(conn) = device.conn {
                let group = self.groups.get_mut(&device.identity).unwrap();
                while let Some(bytes) = app.poll_transmit() {
                    moved = true;
                    group.on_binary(conn, &bytes, now);
                }
            }
        }
        let identities: Vec<Identity> = self.groups.keys().copied().collect();
        for identity in identities {
            while let Some(effect) = self.groups.get_mut(&identity).unwrap().poll_effect() {
                moved = true;
                self.apply_group_effect(identity, effect);
            }
        }
        for (conn, bytes) in self.chat.transmits() {
            moved = true;
            let identity = self.identity_of(conn);
            if let Some(identity) = identity {
                self.groups
                    .get_mut(&identity)
                    .unwrap()
                    .on_csp_bytes(conn, &bytes, now);
            }
        }
        for url in std::mem::take(&mut self.chat.pushes) {
            moved = true;
            let lost = self
                .faults
                .as_mut()
                .is_some_and(|f| rand::Rng::gen_bool(&mut f.rng, 0.3));
            if lost {
                self.pushes_lost += 1;
                continue;
            }
            let name = url.strip_prefix("push:").unwrap();
            let identity: Identity = name.parse().unwrap();
            if let Some(group) = self.groups.get_mut(&identity) {
                group.on_push(now);
            }
        }
        for conn in std::mem::take(&mut self.chat.closed) {
            moved = true;
            self.chat.close(conn);
            if let Some(identity) = self.identity_of(conn) {
                self.groups
                    .get_mut(&identity)
                    .unwrap()
                    .on_csp_closed(conn, now);
            }
        }
        moved
    }

    fn identity_of(&self, conn: ConnId) -> Option<Identity> {
        self.groups
            .iter()
            .find(|(_, g)| g.is_open(conn))
            .map(|(i, _)| *i)
    }

    fn device_of(&mut self, conn: ConnId) -> Option<&mut Device> {
        self.devices.values_mut().find(|d| d.conn == Some(conn))
    }

    fn apply_group_effect(&mut self, _identity: Identity, effect: GroupEffect) {
        let now = self.now;
        match effect {
            GroupEffect::Send { conn, mut bytes } => {
                let mut rng = ChaCha20Rng::seed_from_u64(self.rng_seed());
                let Some(device) = self.device_of(conn) else {
                    return;
                };
                if bytes.first() == Some(&0x82) {
                    if device.tamper_next_reflected {
                        device.tamper_next_reflected = false;
                        *bytes.last_mut().unwrap() ^= 0x01;
                    }
                    device.last_reflected = Some(bytes.clone());
                }
                if let Some(app) = device.app.as_mut() {
                    app.on_binary(&bytes, now, &mut rng);
                }
            }
            GroupEffect::Close { conn, code, .. } => {
                let mut rng = ChaCha20Rng::seed_from_u64(self.rng_seed());
                if let Some(device) = self.device_of(conn) {
                    device.conn = None;
                    if let Some(app) = device.app.as_mut() {
                        app.on_close(code, now, &mut rng);
                    }
                }
            }
            GroupEffect::OpenCsp { conn } => self.chat.open(conn, &mut self.rng),
            GroupEffect::CspSend { conn, bytes } => self.chat.receive(conn, &bytes),
            GroupEffect::CloseCsp { conn } => self.chat.close(conn),
        }
    }

    fn rng_seed(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.rng)
    }
}

/// X (devices X1, X2) has created group "trio" with Y (Y1) and Z (Z1); only X knew the others
/// beforehand. The world, X, Y, Z and the group.
pub fn trio(seed: u64) -> (World, [Identity; 3], tandem_shared::app::GroupId) {
    let mut w = World::new(seed);
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    let z = w.identity("ZZZZZZZZ");
    for (name, identity) in [("X1", x), ("X2", x), ("Y1", y), ("Z1", z)] {
        w.device(name, identity);
        w.connect(name);
    }
    w.app("X1").add_contact(y).unwrap();
    w.app("X1").add_contact(z).unwrap();
    w.run();
    let now = w.now;
    let group = w
        .app("X1")
        .create_group("trio", BTreeSet::from([y, z]), now, &mut rand::thread_rng())
        .unwrap();
    w.run();
    (w, [x, y, z], group)
}

/// `(direction, sender, id, text, state)` of each message, for comparing devices.
pub fn summary(
    messages: &[Message],
) -> Vec<(
    tandem_shared::app::Direction,
    Identity,
    u64,
    String,
    tandem_shared::app::MessageState,
)> {
    messages
        .iter()
        .map(|m| (m.direction, m.key.sender, m.key.id, m.text.clone(), m.state))
        .collect()
}
