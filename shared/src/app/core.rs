//! [`App`]: the device core. It owns the [`DeviceSession`] of the current connection, so that the
//! rules that span layers (ack after persist, reflect before send, leader duties, transactions)
//! live in one state machine instead of in every adapter.
//!
//! ```text
//!  create / open(records) ──► offline ──connect──► session handshake ──ServerInfo──► Connected
//!     ──Reflected…──► apply + persist, ReflectedAck behind the batch ──QueueDry──► Online
//!     ──RolePromotedToLeader + CSP login──► unblock-incoming-messages ──► leader duties
//!  Online: outgoing jobs (reflect → CSP send → acks → reflect sent), transactions, receipts
//!  close ──► Disconnected{next: RetryAt (jittered backoff) | Stop (41xx, refused)}
//!     ──timeout or retry_now──► Effect::Connect
//! ```
//!
//! Every input ends with `flush`: the writes of the step become one [`Batch`] and the containers
//! the step produced wait in the [`Gate`] until that batch is confirmed.

use std::collections::{BTreeMap, HashMap, VecDeque};

use rand_core::CryptoRngCore;

use super::event::{AppError, AppEvent, Dropped, Effect};
use super::gate::Gate;
use super::incoming::IncomingAck;
use super::model::{Identity, OwnIdentity};
use super::outgoing::Jobs;
use super::reconnect::{ReconnectDecision, ReconnectPolicy, Reconnector};
use super::records::{Batch, Record, RecordError};
use super::state::State;
use super::sync::SyncRunner;
use crate::crypto::PublicKey;
use crate::csp::{
    clock_warning, CspClientConfig, CspFeatures, CspPayload, Extensions, MessagePayloadVersion,
    MessageWithMetadataBox,
};
use crate::d2d::DeviceInfo;
use crate::d2m::CloseCode;
use crate::device::{DeviceConfig, DeviceSession, Event};
use crate::keys::{ClientKey, ClientUrlInfo, DeviceGroupKey, DeviceGroupKeys, UrlError};
use crate::proto::d2m::DeviceSlotState;

/// What the app needs besides its stored state.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AppConfig {
    /// What this device tells its siblings about itself.
    pub device_info: DeviceInfo,
    /// The chat server's permanent public key.
    pub server_public_key: PublicKey,
    /// The CSP client-info string (spec §9.3).
    pub client_info: String,
    /// History a new device asks its siblings for (DESIGN §2.4).
    pub max_history_messages: u32,
    /// Reconnect backoff (exponential, full jitter, no limit on attempts).
    pub reconnect: ReconnectPolicy,
    /// Interval of CSP echo-requests ([`ECHO_INTERVAL_MS`] by default).
    pub echo_interval_ms: u64,
    /// An echo-request unanswered this long ends the connection ([`ECHO_TIMEOUT_MS`] by
    /// default): the path to the chat server is dead though no socket says so (half-open).
    pub echo_timeout_ms: u64,
    /// CSP on demand (docs/protocol.md): the chat server connection closes after this long
    /// without anything but keepalives and opens again when needed; the device asks the
    /// mediator for the extension. `None` keeps it open for the whole connection, as Threema's
    /// devices do (the default until a chat server wakes groups by push).
    pub csp_idle_ms: Option<u64>,
}

impl AppConfig {
    /// Defaults: 1 000 history messages, the default backoff.
    #[must_use]
    pub fn new(device_info: DeviceInfo, server_public_key: PublicKey) -> Self {
        Self {
            device_info,
            server_public_key,
            client_info: "0.1;Q;en/US;tandem".to_owned(),
            max_history_messages: 1_000,
            reconnect: ReconnectPolicy::default(),
            echo_interval_ms: ECHO_INTERVAL_MS,
            echo_timeout_ms: ECHO_TIMEOUT_MS,
            csp_idle_ms: None,
        }
    }
}

/// Interval of CSP echo-requests: well inside the chat server's default idle timeout of 300 s
/// (spec §9.4 0x30).
pub const ECHO_INTERVAL_MS: u64 = 60_000;

/// How long an echo-request may go unanswered. The mediator's TCP socket to the chat server
/// can be half-open (a NAT or a dead host drops the path silently): no close ever comes, while
/// outgoing messages wait for acks and incoming ones never arrive. 20 s is far above any round
/// trip and bounds such a dead path to interval + timeout (80 s) instead of TCP's minutes.
pub const ECHO_TIMEOUT_MS: u64 = 20_000;

/// What a non-ephemeral reflect of this connection was for; resumed on its `ReflectAck`.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    /// `OutgoingMessage` of an outgoing job.
    Outgoing(u64),
    /// `OutgoingMessageUpdate.sent` of an outgoing job.
    OutgoingSent(u64),
    /// `IncomingMessage` of a message received as leader.
    Incoming(IncomingAck),
    /// `IncomingMessageUpdate.read`: the messages, when, and the read receipt to send after.
    Read(super::receipts::ReadUpdate),
    /// An envelope of the held transaction.
    Sync,
    /// The `NewDeviceSyncRequest` of this device.
    NewDeviceSyncRequest,
    /// An `IncomingMessage` reflected again after a restart.
    Unreflected(super::model::MessageKey),
}

/// Why the directory was asked about an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// The user adds a contact.
    User,
    /// A message arrived from it.
    Sender,
    /// A group setup names it.
    GroupMember,
}

/// What belongs to one connection and dies with it.
#[derive(Debug, Default)]
pub(super) struct Conn {
    /// `ServerInfo` arrived.
    pub(super) authenticated: bool,
    /// `ReflectionQueueDry` arrived.
    pub(super) online: bool,
    /// `RolePromotedToLeader` arrived.
    pub(super) leader: bool,
    /// The CSP login completed.
    pub(super) csp_ready: bool,
    /// `unblock-incoming-messages` was sent.
    pub(super) unblocked: bool,
    /// The chat server's `close-error` can-reconnect byte, if one came.
    pub(super) csp_close: Option<bool>,
    /// Non-ephemeral reflects awaiting their ack.
    pub(super) reflects: HashMap<u32, Pending>,
    /// When the next CSP echo-request keeps the chat server connection alive.
    pub(super) next_echo_at: Option<u64>,
    /// When the oldest unanswered echo-request makes the path count as dead.
    pub(super) echo_deadline: Option<u64>,
    /// This device's `NewDeviceSyncRequest` went out on this connection.
    pub(super) new_device_sync_requested: bool,
    /// Reflects made while this device awaited or held the lock, in order: the mediator would
    /// stage them with the transaction and could still discard them (see `App::reflect`).
    pub(super) deferred: VecDeque<(crate::proto::d2d::envelope::Content, Option<Pending>)>,
    /// The chat server connection is closed for being idle (CSP on demand).
    pub(super) csp_asleep: bool,
    /// Last time a message, receipt or ack went either way on the chat server connection
    /// (keepalives do not count).
    pub(super) csp_active_at: u64,
    /// Something went either way since `csp_active_at` was last set (set where no clock is at
    /// hand, turned into a time by `pump`).
    pub(super) csp_touched: bool,
    /// Where the chat server can wake the group (`PushUrl` from the mediator).
    pub(super) push_url: Option<String>,
}

/// How a chat server of before protocol version 23 starts its close-error when it reads the
/// feature byte as a message payload version and does not know the value.
const OLD_SERVER_REFUSES_FEATURES: &str = "unsupported message payload version";

/// The device core; see the module docs.
pub struct App {
    pub(super) config: AppConfig,
    pub(super) state: State,
    pub(super) keys: DeviceGroupKeys,
    pub(super) session: Option<DeviceSession>,
    pub(super) conn: Conn,
    pub(super) gate: Gate,
    pub(super) effects: VecDeque<Effect>,
    pub(super) events: VecDeque<AppEvent>,
    pub(super) jobs: Jobs,
    pub(super) sync: SyncRunner,
    pub(super) reads: super::receipts::Reads,
    /// Owed receipts of the store are turned into sends once an rng is at hand.
    pub(super) receipts_to_resume: bool,
    /// Stored incoming messages to reflect again (their reflection was never acked).
    pub(super) unreflected: std::collections::BTreeSet<super::model::MessageKey>,
    /// Incoming messages from senders being looked up, in arrival order.
    pub(super) parked: BTreeMap<Identity, Vec<MessageWithMetadataBox>>,
    /// Directory lookups asked for and not answered, and why.
    pub(super) lookups: BTreeMap<Identity, Lookup>,
    pub(super) reconnect: Reconnector,
    pub(super) reconnect_at: Option<u64>,
    /// A chat server of before protocol version 23 refused the feature bits (close-error
    /// "unsupported message payload version 3"): later logins announce Desktop's byte `1`.
    pub(super) desktop_features: bool,
    /// Box and metadata keys per contact key: one X25519 agreement per peer, not per message.
    pub(super) peer_keys: crate::keys::PeerKeyCache,
}

impl core::fmt::Debug for App {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("App")
            .field("identity", &self.state.own().identity)
            .field("session", &self.session)
            .field("conn", &self.conn)
            .field("held", &self.gate.held())
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

impl App {
    /// A new device for `identity`: draws its d2m and CSP device ids; the identity record is the
    /// first batch. The device will ask its siblings for their state (DESIGN §2.4).
    pub fn create(
        identity: Identity,
        client_key: ClientKey,
        config: AppConfig,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let own = OwnIdentity {
            identity,
            client_key,
            device_id: rng.next_u64(),
            csp_device_id: rng.next_u64(),
            connected_once: false,
            wants_new_device_sync: true,
        };
        let mut app = Self::with_state(config, State::new(own));
        app.flush();
        app
    }

    /// Opens a device from every stored record (in any order). Nothing is decrypted: opening is
    /// one decode per record.
    pub fn open(
        records: impl IntoIterator<Item = Record>,
        config: AppConfig,
    ) -> Result<Self, RecordError> {
        let state = State::load(records)?;
        let mut app = Self::with_state(config, state);
        app.jobs.resume_from(&app.state);
        app.reads.resume_from(&app.state);
        app.receipts_to_resume = true;
        app.resume_journal();
        app.unreflected = app
            .state
            .messages()
            .values()
            .filter(|m| {
                m.direction == super::model::Direction::Incoming
                    && m.reflected_at.is_none()
                    && !m.hidden
            })
            .map(|m| m.key)
            .collect();
        Ok(app)
    }

    fn with_state(config: AppConfig, state: State) -> Self {
        let keys = DeviceGroupKey::from_client_key(state.own().client_key.secret()).derive_keys();
        let reconnect = Reconnector::new(config.reconnect);
        Self {
            config,
            state,
            keys,
            session: None,
            conn: Conn::default(),
            gate: Gate::default(),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            jobs: Jobs::default(),
            sync: SyncRunner::default(),
            reads: super::receipts::Reads::default(),
            receipts_to_resume: false,
            unreflected: std::collections::BTreeSet::new(),
            parked: BTreeMap::new(),
            lookups: BTreeMap::new(),
            reconnect,
            reconnect_at: None,
            desktop_features: false,
            peer_keys: crate::keys::PeerKeyCache::default(),
        }
    }

    // ---- reads --------------------------------------------------------------------------------

    /// Everything the device knows.
    #[must_use]
    pub const fn state(&self) -> &State {
        &self.state
    }

    /// The mediator URL info for `server_group` (spec §1.2); its `path()` goes after the base.
    pub fn client_url_info(&self, server_group: &str) -> Result<ClientUrlInfo, UrlError> {
        ClientUrlInfo::new(self.keys.dgpk_public, server_group)
    }

    /// Whether a connection is open (from `connect` until it closes).
    #[must_use]
    pub const fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    /// Whether the reflection queue has been drained on this connection.
    #[must_use]
    pub const fn is_online(&self) -> bool {
        self.conn.online
    }

    /// Whether this device is the leader on this connection.
    #[must_use]
    pub const fn is_leader(&self) -> bool {
        self.conn.leader
    }

    /// Whether batches await confirmation (an adapter may warn before the tab closes).
    #[must_use]
    pub const fn has_unconfirmed_batches(&self) -> bool {
        self.gate.unconfirmed()
    }

    /// Containers held until their batches are confirmed.
    #[must_use]
    pub fn held_transmits(&self) -> usize {
        self.gate.held()
    }

    // ---- outputs ------------------------------------------------------------------------------

    /// The next container to send as a binary WebSocket message.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.gate.pop()
    }

    /// The next effect for the adapter.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next event for the UI.
    pub fn poll_event(&mut self) -> Option<AppEvent> {
        self.events.pop_front()
    }

    /// When to call [`Self::on_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.session.as_ref().and_then(DeviceSession::poll_timeout),
            self.reconnect_at,
            self.conn.next_echo_at,
            self.conn.echo_deadline,
            self.csp_idle_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// The WebSocket to the mediator is open: starts the handshake (and the CSP login through
    /// the proxy).
    pub fn connect(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) -> Result<(), AppError> {
        if self.session.is_some() {
            return Err(AppError::AlreadyConnected);
        }
        self.reconnect_at = None;
        let own = self.state.own();
        let mut config = DeviceConfig::new(
            self.keys.clone(),
            own.device_id,
            self.config.device_info.clone(),
        );
        config.expected_slot_state = if own.connected_once {
            DeviceSlotState::Existing
        } else {
            DeviceSlotState::New
        };
        let mut extensions = Extensions::new(self.config.client_info.clone());
        extensions.csp_device_id = Some(own.csp_device_id);
        if self.desktop_features {
            extensions.features = Some(CspFeatures::DESKTOP);
        }
        if self.config.csp_idle_ms.is_some() {
            config.tandem_features = crate::d2m::TANDEM_FEATURE_CSP_ON_DEMAND;
        }
        config.csp = Some(CspClientConfig {
            identity: *own.identity.as_bytes(),
            client_key: own.client_key.clone(),
            server_public_key: self.config.server_public_key,
            extensions,
        });
        let session = DeviceSession::new(config, now_ms, rng)?;
        self.session = Some(session);
        self.conn = Conn::default();
        self.pump(now_ms, rng);
        Ok(())
    }

    /// One binary WebSocket message from the mediator.
    pub fn on_binary(&mut self, bytes: &[u8], now_ms: u64, rng: &mut impl CryptoRngCore) {
        if let Some(session) = self.session.as_mut() {
            // A wire error closes the session; its `Closed` event carries everything.
            let _ = session.on_binary(bytes, now_ms, rng);
        }
        self.pump(now_ms, rng);
    }

    /// The WebSocket closed (or could not be opened: 5001).
    pub fn on_close(&mut self, code: CloseCode, now_ms: u64, rng: &mut impl CryptoRngCore) {
        match self.session.as_mut() {
            Some(session) => {
                session.on_close(code);
                self.pump(now_ms, rng);
            }
            None => {
                self.closed(code, now_ms, rng);
                self.flush();
            }
        }
    }

    /// Time passed: handshake timeout, reconnect timer.
    pub fn on_timeout(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        if let Some(session) = self.session.as_mut() {
            let _ = session.on_timeout(now_ms);
        }
        if self.session.is_some() && self.conn.echo_deadline.is_some_and(|at| now_ms >= at) {
            // The chat server stopped answering: end the connection, so that the mediator drops
            // its socket and the next connection gets a fresh one (docs/app.md §4).
            let code = CloseCode::CspClosed;
            self.effects.push_back(Effect::CloseWebSocket(code));
            self.closed(code, now_ms, rng);
            self.flush();
            return;
        }
        if self.conn.next_echo_at.is_some_and(|at| now_ms >= at) {
            // Keeps the chat server connection from idling out (spec §9.4 0x00).
            self.csp_send(&CspPayload::EchoRequest(now_ms.to_le_bytes().to_vec()));
            self.conn.next_echo_at = Some(now_ms.saturating_add(self.config.echo_interval_ms));
            if self.conn.echo_deadline.is_none() {
                self.conn.echo_deadline = Some(now_ms.saturating_add(self.config.echo_timeout_ms));
            }
        }
        self.close_idle_csp(now_ms);
        if self.reconnect_at.is_some_and(|at| now_ms >= at) && self.session.is_none() {
            self.reconnect_at = None;
            self.effects.push_back(Effect::Connect);
        }
        self.pump(now_ms, rng);
    }

    /// The user wants to connect now: after a stop (41xx, a refused login), or instead of
    /// waiting for a pending retry, whose timer this cancels. Always available: the backoff
    /// starts over and, unless a connection is open, `Effect::Connect` follows at once (the
    /// wasm adapter drops a socket it was still opening, so a second `Connect` does no harm).
    pub fn retry_now(&mut self) {
        self.reconnect.reset();
        self.reconnect_at = None;
        if self.session.is_none() {
            self.effects.push_back(Effect::Connect);
        }
    }

    /// Replaces what this device tells its siblings about itself (label, platform, version).
    ///
    /// d2m has no message to change it mid-session: the mediator keeps the `DeviceInfo` of the
    /// device's last `ClientHello` (spec §7). So a connected (or handshaking) device ends its
    /// connection (`Effect::CloseWebSocket(1000)`, `AppEvent::Disconnected` with a retry at
    /// `now_ms`) and asks for a new one at once (`Effect::Connect`); the new `ClientHello`
    /// carries the new info, and once [`AppEvent::Connected`] follows, every sibling's
    /// `request_devices` sees it. Offline, the info simply goes out with the next connection.
    /// Returns whether a reconnect was started.
    pub fn set_device_info(&mut self, info: DeviceInfo, now_ms: u64) -> bool {
        self.config.device_info = info;
        if self.session.is_none() {
            return false;
        }
        let code = CloseCode::Normal;
        self.effects.push_back(Effect::CloseWebSocket(code));
        // A deliberate close is no failure: no backoff, reconnect now.
        self.teardown(code, ReconnectDecision::RetryAt(now_ms));
        self.reconnect.reset();
        self.reconnect_at = None;
        self.effects.push_back(Effect::Connect);
        self.flush();
        true
    }

    /// What this device tells its siblings about itself (see [`App::set_device_info`]).
    #[must_use]
    pub fn device_info(&self) -> &DeviceInfo {
        &self.config.device_info
    }

    /// Asks the mediator for the group's devices; [`AppEvent::Devices`] follows.
    pub fn request_devices(
        &mut self,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        let session = self.session.as_mut().ok_or(AppError::NotConnected)?;
        session.get_devices_info()?;
        self.pump(now_ms, rng);
        Ok(())
    }

    /// Removes a device from the group (this device's own id unlinks it; spec §7).
    pub fn drop_device(
        &mut self,
        device_id: u64,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        let session = self.session.as_mut().ok_or(AppError::NotConnected)?;
        session.drop_device(device_id)?;
        self.pump(now_ms, rng);
        Ok(())
    }

    /// The adapter made batch `id` (and every earlier one) durable.
    pub fn on_persisted(&mut self, id: u64) -> Result<(), AppError> {
        self.gate.confirm(id)
    }

    /// The directory's answer for an identity asked for with [`Effect::LookupIdentity`]:
    /// `None` when the directory does not know it.
    pub fn on_identity_lookup(
        &mut self,
        identity: Identity,
        public_key: Option<PublicKey>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        self.lookup_answered(identity, public_key, now_ms, rng);
        self.pump(now_ms, rng);
    }

    /// The directory could not be asked (network error): messages waiting for this sender are
    /// forgotten unacked, so the chat server delivers them again on the next connection.
    pub fn on_identity_lookup_failed(&mut self, identity: Identity) {
        if self.lookups.remove(&identity) == Some(Lookup::User) {
            self.events.push_back(AppEvent::LookupFailed(identity));
        }
        self.parked.remove(&identity);
    }

    // ---- internals ----------------------------------------------------------------------------

    /// Handles every session event, moves the jobs on, and flushes.
    pub(super) fn pump(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        self.drain_session(now_ms, rng);
        self.drive(now_ms, rng);
        // `drive` may have closed the session (a failing send); that is reported too.
        self.drain_session(now_ms, rng);
        if core::mem::take(&mut self.conn.csp_touched) {
            self.conn.csp_active_at = now_ms;
        }
        self.flush();
    }

    fn drain_session(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        while let Some(event) = self.session.as_mut().and_then(DeviceSession::poll_event) {
            self.on_session_event(event, now_ms, rng);
        }
    }

    /// The step's writes become a batch; the step's containers wait behind it.
    pub(super) fn flush(&mut self) {
        if self.state.has_ops() {
            let id = self.gate.issue();
            let ops = self.state.take_ops();
            self.effects.push_back(Effect::Persist(Batch { id, ops }));
        }
        if let Some(session) = self.session.as_mut() {
            while let Some(bytes) = session.poll_transmit() {
                self.gate.push(bytes);
            }
        }
    }

    fn on_session_event(&mut self, event: Event, now_ms: u64, rng: &mut impl CryptoRngCore) {
        match event {
            Event::ServerInfo(_) => {
                self.conn.authenticated = true;
                self.reconnect.on_connected();
                self.state.update_own(|own| own.connected_once = true);
                self.events.push_back(AppEvent::Connected);
            }
            Event::QueueProgress { received, total } => {
                self.events.push_back(AppEvent::Loading { received, total });
            }
            Event::QueueDry => {
                self.conn.online = true;
                self.events.push_back(AppEvent::Online);
            }
            Event::PromotedToLeader => {
                self.conn.leader = true;
                self.events.push_back(AppEvent::Leader);
                // The leader receives: a connection closed for being idle opens again.
                self.wake_csp(rng);
            }
            Event::Wake => self.wake_csp(rng),
            Event::PushUrl(url) => {
                self.conn.push_url = Some(url);
                self.register_push_url();
            }
            Event::CspEstablished(ack) => {
                if let Some(offset_ms) = clock_warning(&ack, now_ms) {
                    self.events.push_back(AppEvent::ClockOffset { offset_ms });
                }
                self.conn.csp_ready = true;
                self.conn.csp_active_at = now_ms;
                self.conn.next_echo_at = Some(now_ms.saturating_add(self.config.echo_interval_ms));
                self.register_push_url();
            }
            Event::CspPayload(payload) => self.on_csp_payload(&payload.0, now_ms, rng),
            Event::Reflected {
                reflected_id,
                timestamp,
                ephemeral,
                nonce,
                envelope,
            } => self.on_reflected(
                super::reflected::ReflectedIn {
                    reflected_id,
                    timestamp,
                    ephemeral,
                    nonce,
                },
                *envelope.0,
                rng,
            ),
            Event::DroppedReflected { reason, .. } => {
                self.events
                    .push_back(AppEvent::Dropped(Dropped::UndecryptableEnvelope(reason)));
            }
            Event::ReflectAcked {
                reflect_id,
                timestamp,
            } => {
                if let Some(pending) = self.conn.reflects.remove(&reflect_id) {
                    self.on_reflect_acked(pending, timestamp, now_ms, rng);
                }
            }
            Event::TransactionBegun => self.on_transaction_begun(now_ms, rng),
            Event::TransactionRejected { scope, .. } => {
                self.sync.on_rejected(scope);
                self.release_deferred(rng);
            }
            Event::TransactionEnded { scope, .. } => self.sync.on_ended(scope),
            Event::CommitAcked => self.on_commit_acked(now_ms, rng),
            Event::DevicesInfo(devices) => self.events.push_back(AppEvent::Devices(devices)),
            Event::Closed { code, origin, .. } => {
                if origin == crate::device::CloseOrigin::Local && !code.is_local_only() {
                    self.effects.push_back(Effect::CloseWebSocket(code));
                }
                self.closed(code, now_ms, rng);
            }
            _ => {}
        }
    }

    fn on_reflect_acked(
        &mut self,
        pending: Pending,
        timestamp: u64,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        match pending {
            Pending::Outgoing(job) => self.on_outgoing_reflected(job, timestamp, rng),
            Pending::OutgoingSent(job) => self.on_sent_reflected(job, timestamp),
            Pending::Incoming(ack) => self.on_incoming_reflected(ack, timestamp, now_ms, rng),
            Pending::Read(update) => self.on_read_reflected(update, timestamp, now_ms, rng),
            Pending::Sync => self.on_sync_reflected(rng),
            Pending::Unreflected(key) => self.on_unreflected_reflected(key, timestamp),
            Pending::NewDeviceSyncRequest => {
                self.state
                    .update_own(|own| own.wants_new_device_sync = false);
            }
        }
    }

    fn on_csp_payload(&mut self, bytes: &[u8], now_ms: u64, rng: &mut impl CryptoRngCore) {
        let Ok(payload) = CspPayload::decode(bytes, MessagePayloadVersion::WithMetadataBox) else {
            return;
        };
        if !matches!(
            payload,
            CspPayload::EchoRequest(_) | CspPayload::EchoResponse(_)
        ) {
            self.conn.csp_touched = true;
        }
        match payload {
            // Spec §4: only the leader receives; anything else is ignored, never acked.
            CspPayload::IncomingMessage(message) if self.conn.leader => {
                self.on_incoming_message(message, now_ms, rng);
            }
            CspPayload::OutgoingMessageAck(ack) => self.on_outgoing_message_ack(&ack, rng),
            CspPayload::EchoRequest(data) => {
                self.csp_send(&CspPayload::EchoResponse(data));
            }
            // Any answer shows the path lives; the chat server answers in order.
            CspPayload::EchoResponse(_) => self.conn.echo_deadline = None,
            CspPayload::CloseError {
                can_reconnect,
                message,
            } => {
                // An older Tandem chat server reads the feature byte as a payload version and
                // refuses 3; its text is the only signal it gives. Retry with Desktop's byte,
                // which every server accepts (docs/protocol.md "Protocol version 23").
                let refused_features =
                    !self.desktop_features && message.starts_with(OLD_SERVER_REFUSES_FEATURES);
                if refused_features {
                    self.desktop_features = true;
                }
                self.conn.csp_close = Some(can_reconnect || refused_features);
            }
            CspPayload::Alert(text) => self.events.push_back(AppEvent::Alert(text)),
            _ => {}
        }
    }

    /// Sends one CSP payload; a failure closes the session, which reports itself.
    pub(super) fn csp_send(&mut self, payload: &CspPayload) -> bool {
        let (Some(session), Ok(bytes)) = (self.session.as_mut(), payload.encode()) else {
            return false;
        };
        if !matches!(
            payload,
            CspPayload::EchoRequest(_)
                | CspPayload::EchoResponse(_)
                | CspPayload::SetPushNotificationToken(_)
        ) {
            self.conn.csp_touched = true;
        }
        session.csp_send(&bytes).is_ok()
    }

    /// Moves everything that waits for the connection: leader unblock, queued jobs, the sync
    /// queue, the new-device request.
    fn drive(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        if self.session.is_none() {
            return;
        }
        if self.conn.leader && self.conn.csp_ready && !self.conn.unblocked {
            self.conn.unblocked = self.csp_send(&CspPayload::UnblockIncomingMessages);
        }
        if !self.conn.online {
            return;
        }
        self.wake_csp_if_needed(rng);
        self.release_deferred(rng);
        if core::mem::take(&mut self.receipts_to_resume) {
            self.resume_receipts(now_ms, rng);
        }
        self.drive_unreflected(rng);
        self.request_new_device_sync(rng);
        self.drive_reads(rng);
        self.drive_jobs(now_ms, rng);
        self.drive_sync(now_ms, rng);
    }

    /// The connection is gone; `rng` draws the retry's jitter (see [`Reconnector::on_closed`]).
    fn closed(&mut self, code: CloseCode, now_ms: u64, rng: &mut impl CryptoRngCore) {
        let next = self
            .reconnect
            .on_closed(code, self.conn.csp_close, now_ms, rng);
        self.teardown(code, next);
    }

    /// Drops everything of the connection; `next` is what the reconnect logic decided.
    fn teardown(&mut self, code: CloseCode, next: ReconnectDecision) {
        // Read updates and re-reflections in flight go out again on the next connection.
        // Deferred ones come after every reflect in flight (ids beyond any real one); the rest
        // (outgoing jobs, incoming messages) restart from their own state.
        let mut in_flight = Vec::new();
        let deferred = core::mem::take(&mut self.conn.deferred)
            .into_iter()
            .filter_map(|(_, pending)| pending)
            .zip(u64::from(u32::MAX) + 1..);
        let reflects = self.conn.reflects.drain().map(|(id, p)| (p, u64::from(id)));
        for (pending, order) in reflects.chain(deferred) {
            match pending {
                Pending::Read(update) => in_flight.push((order, update)),
                Pending::Unreflected(key) => {
                    self.unreflected.insert(key);
                }
                // Stored here, its reflection lost with the connection: the chat server
                // delivers it again, but maybe to another leader, which finds it reflected (the
                // mediator may have stored this reflect after all) and does not reflect it; this
                // device then never learns its reflection is stored and would hold back reads of
                // it. So it reflects it again itself, as after a restart.
                Pending::Incoming(ack) if ack.stored => {
                    self.unreflected.insert(super::model::MessageKey {
                        sender: ack.sender,
                        id: ack.message_id,
                    });
                }
                _ => {}
            }
        }
        in_flight.sort_by_key(|(order, _)| *order);
        for (_, update) in in_flight.into_iter().rev() {
            self.reads.queue.push_front(update);
        }
        self.session = None;
        self.conn = Conn::default();
        self.gate.clear();
        self.jobs.on_disconnect();
        if let Some(op) = self.sync.on_disconnect(code) {
            if let Some(device_id) = op.answers() {
                self.state.clear_answer_owed(device_id);
            }
            self.events.push_back(AppEvent::SyncFailed {
                scope: op.scope(),
                code,
            });
        }
        // Parked messages were never acked: the chat server sends them again.
        self.parked.clear();
        if let ReconnectDecision::RetryAt(at) = next {
            self.reconnect_at = Some(at);
        }
        self.events.push_back(AppEvent::Disconnected { code, next });
    }
}
