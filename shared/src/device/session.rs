//! [`DeviceSession`]: one device's connection to the mediator (see the module docs for the flow).

use core::fmt;
use std::collections::VecDeque;

use rand_core::CryptoRngCore;

use super::config::DeviceConfig;
use super::event::{
    CloseOrigin, ConnectionState, CspPayload, DeviceEntry, DeviceError, Event, ReflectedEnvelope,
    ServerInfo,
};
use super::reflect::Reflections;
use super::transaction::Transaction;
use crate::crypto::{Nonce, NONCE_LEN};
use crate::csp::{ClientEvent, CspClient};
use crate::d2d::{
    open_device_info, open_envelope, open_shared_device_data, open_transaction_scope,
    seal_device_info, seal_envelope, seal_shared_device_data, seal_transaction_scope, D2dError,
    Scope, SharedDeviceData,
};
use crate::d2m::{
    respond, validate_server_hello, CloseCode, D2mMessage, Reflect, ReflectFlags, Reflected,
    ReflectedAck, TANDEM_FEATURE_CSP_ON_DEMAND,
};
use crate::proto::d2d::Envelope;
use crate::proto::d2m as pb;
use crate::proto::d2m::devices_info::augmented_device_info::ConnectionState as PbConnState;

/// The only d2m version there is (spec §3.1: MIN = MAX = 0).
const PROTOCOL_VERSION: u32 = 0;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingServerHello,
    AwaitingServerInfo,
    /// Queued `Reflected` frames are arriving; `received` counts the non-ephemeral ones.
    Draining {
        received: u32,
        total: u32,
    },
    /// `ReflectionQueueDry` has arrived.
    Online {
        leader: bool,
    },
    Closed,
}

impl State {
    const fn name(self) -> &'static str {
        match self {
            Self::AwaitingServerHello => "AwaitingServerHello",
            Self::AwaitingServerInfo => "AwaitingServerInfo",
            Self::Draining { .. } => "Draining",
            Self::Online { .. } => "Online",
            Self::Closed => "Closed",
        }
    }

    /// Whether `ServerInfo` has arrived and the connection is still open.
    const fn is_authenticated(self) -> bool {
        matches!(self, Self::Draining { .. } | Self::Online { .. })
    }
}

/// One device's mediator connection, sans-IO: bytes, close codes and time in; containers and
/// events out.
pub struct DeviceSession {
    config: DeviceConfig,
    /// `encrypted_device_info`, sealed once at start.
    sealed_device_info: Vec<u8>,
    state: State,
    deadline: Option<u64>,
    csp: Option<CspClient>,
    /// `CspClose` was sent and the mediator has not confirmed it: proxy frames until then are
    /// the closed connection's last bytes, dropped.
    csp_closing: bool,
    /// `open_csp` was asked for while closing: opens when the close is confirmed.
    csp_reopen: bool,
    /// `ServerInfo.tandem_features`: what the mediator accepted.
    features: u32,
    reflections: Reflections,
    transaction: Transaction,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl fmt::Debug for DeviceSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSession")
            .field("device_id", &self.config.device_id)
            .field("state", &self.state)
            .field("transaction", &self.transaction)
            .field("csp", &self.csp)
            .field("transmits", &self.transmits.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl DeviceSession {
    /// Starts a session when the WebSocket has opened at `now_ms`. With CSP configured, the CSP
    /// client-hello is queued at once in a proxy container (spec §3.1).
    ///
    /// Fails if the device info cannot be sealed or the CSP configuration is invalid.
    pub fn new(
        config: DeviceConfig,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, DeviceError> {
        let sealed_device_info = seal_device_info(&config.keys.dgdik, &config.device_info, rng)
            .map_err(DeviceError::Seal)?;
        let deadline = Some(now_ms.saturating_add(config.handshake_timeout_ms));
        let mut session = Self {
            config,
            sealed_device_info,
            state: State::AwaitingServerHello,
            deadline,
            csp: None,
            csp_closing: false,
            csp_reopen: false,
            features: 0,
            reflections: Reflections::default(),
            transaction: Transaction::Idle,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        if session.config.csp.is_some() {
            session.start_csp(rng)?;
        }
        Ok(session)
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// One binary WebSocket message from the mediator. On `Err` with a close code the session is
    /// closed and the driver closes the WebSocket with that code.
    pub fn on_binary(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), DeviceError> {
        if self.state == State::Closed {
            return Err(DeviceError::Closed);
        }
        let result = self.check_deadline(now_ms).and_then(|()| {
            let message = D2mMessage::decode_at_device(bytes).map_err(DeviceError::Malformed)?;
            self.handle(message, rng)
        });
        self.fail_on_terminal(result)
    }

    /// The WebSocket closed with `code` (1006 when it dropped without a close frame).
    pub fn on_close(&mut self, code: CloseCode) {
        if self.state != State::Closed {
            self.close(code, CloseOrigin::Remote);
        }
    }

    /// Time passed; closes with 4013 if `ServerInfo` is overdue.
    pub fn on_timeout(&mut self, now_ms: u64) -> Result<(), DeviceError> {
        if self.state == State::Closed {
            return Ok(());
        }
        let result = self.check_deadline(now_ms);
        self.fail_on_terminal(result)
    }

    // ---- commands -----------------------------------------------------------------------------

    /// Seals `envelope` under `dgrk` (with `device_id` set to this device's) and reflects it.
    /// Returns the reflect id; non-ephemeral reflects get `ReflectAcked`, in order.
    pub fn reflect(
        &mut self,
        envelope: &Envelope,
        ephemeral: bool,
        rng: &mut impl CryptoRngCore,
    ) -> Result<u32, DeviceError> {
        self.reflect_owned(envelope.clone(), ephemeral, rng)
    }

    /// [`Self::reflect`] for an envelope the caller no longer needs (no copy of its body).
    pub fn reflect_owned(
        &mut self,
        mut envelope: Envelope,
        ephemeral: bool,
        rng: &mut impl CryptoRngCore,
    ) -> Result<u32, DeviceError> {
        self.require_authenticated()?;
        envelope.device_id = self.config.device_id;
        envelope.protocol_version = crate::d2d::PROTOCOL_VERSION;
        let sealed =
            seal_envelope(&self.config.keys.dgrk, envelope, rng).map_err(DeviceError::Seal)?;
        let flags = if ephemeral {
            ReflectFlags::EPHEMERAL
        } else {
            ReflectFlags::NONE
        };
        let id = self.reflections.peek_next()?;
        let bytes = D2mMessage::Reflect(Reflect::new(id, flags, sealed))
            .encode()
            .map_err(DeviceError::Encode)?;
        self.reflections.commit(id, ephemeral);
        self.transmits.push_back(bytes);
        Ok(id)
    }

    /// Acks a processed `Reflected` (spec §5). Ephemeral or unknown ids are refused, because the
    /// mediator would close with 4012.
    pub fn ack_reflected(&mut self, reflected_id: u32) -> Result<(), DeviceError> {
        self.require_authenticated()?;
        self.reflections.take_for_ack(reflected_id)?;
        self.send(ReflectedAck { reflected_id }.into())
    }

    /// Asks for the group lock for `scope`; `ttl_s` 0 means the mediator's maximum (spec §6).
    pub fn begin_transaction(
        &mut self,
        scope: Scope,
        ttl_s: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), DeviceError> {
        self.require_authenticated()?;
        if !self.transaction.may_begin() {
            return Err(DeviceError::TransactionInProgress);
        }
        let encrypted_scope = seal_transaction_scope(&self.config.keys.dgtsk, scope, rng);
        self.send(
            pb::BeginTransaction {
                encrypted_scope,
                ttl: ttl_s,
            }
            .into(),
        )?;
        self.transaction = Transaction::Beginning;
        Ok(())
    }

    /// Commits the held transaction; `CommitAcked` follows.
    pub fn commit_transaction(&mut self) -> Result<(), DeviceError> {
        self.require_authenticated()?;
        if self.transaction != Transaction::Held {
            return Err(DeviceError::NoTransaction);
        }
        self.send(pb::CommitTransaction {}.into())?;
        self.transaction = Transaction::Committing;
        Ok(())
    }

    /// Asks for `DevicesInfo`.
    pub fn get_devices_info(&mut self) -> Result<(), DeviceError> {
        self.require_authenticated()?;
        self.send(pb::GetDevicesInfo {}.into())
    }

    /// Drops a device's slot (own id: unlink this device; the mediator then closes with 4113).
    pub fn drop_device(&mut self, device_id: u64) -> Result<(), DeviceError> {
        self.require_authenticated()?;
        self.send(pb::DropDevice { device_id }.into())
    }

    /// Sets the group's shared device data, sealed under `dgsddk` (spec §3.4); no ack.
    pub fn set_shared_device_data(
        &mut self,
        version: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), DeviceError> {
        self.require_authenticated()?;
        let encrypted_shared_device_data =
            seal_shared_device_data(&self.config.keys.dgsddk, &SharedDeviceData { version }, rng);
        self.send(
            pb::SetSharedDeviceData {
                encrypted_shared_device_data,
            }
            .into(),
        )
    }

    /// Sends one CSP payload container through the proxy once the CSP login is done.
    pub fn csp_send(&mut self, payload_container: &[u8]) -> Result<(), DeviceError> {
        if self.state == State::Closed {
            return Err(DeviceError::Closed);
        }
        let client = self.csp.as_mut().ok_or(DeviceError::CspNotConfigured)?;
        if !client.is_established() {
            return Err(DeviceError::CspNotEstablished);
        }
        let result = client
            .send(payload_container)
            .map_err(DeviceError::Csp)
            .and_then(|()| self.pump_csp());
        self.fail_on_terminal(result)
    }

    /// Closes the chat server connection and keeps this one (CSP on demand, docs/protocol.md):
    /// sends `CspClose`; `Event::CspClosed` follows. Nothing to do if it is not open.
    pub fn close_csp(&mut self) -> Result<(), DeviceError> {
        self.require_authenticated()?;
        if self.features & TANDEM_FEATURE_CSP_ON_DEMAND == 0 {
            return Err(DeviceError::CspOnDemandNotNegotiated);
        }
        if self.csp.take().is_none() {
            return Ok(());
        }
        self.csp_reopen = false;
        self.csp_closing = true;
        let result = self.send(D2mMessage::CspClose);
        self.fail_on_terminal(result)
    }

    /// Opens the chat server connection again after `close_csp`: a new CSP login through the
    /// proxy (`Event::CspEstablished` follows). While the close is not yet confirmed it opens
    /// once it is.
    pub fn open_csp(&mut self, rng: &mut impl CryptoRngCore) -> Result<(), DeviceError> {
        self.require_authenticated()?;
        if self.config.csp.is_none() {
            return Err(DeviceError::CspNotConfigured);
        }
        if self.csp.is_some() {
            return Ok(());
        }
        if self.csp_closing {
            self.csp_reopen = true;
            return Ok(());
        }
        let result = self.start_csp(rng);
        self.fail_on_terminal(result)
    }

    /// A new CSP login through the proxy (the client-hello queued at once). One body for the
    /// first login and every later one: the wasm build pays for it once.
    fn start_csp(&mut self, rng: &mut impl CryptoRngCore) -> Result<(), DeviceError> {
        let config = self
            .config
            .csp
            .clone()
            .ok_or(DeviceError::CspNotConfigured)?;
        self.csp = Some(CspClient::new(config, rng).map_err(DeviceError::Csp)?);
        self.pump_csp()
    }

    /// Whether a chat server connection is open or opening (not closed by `close_csp`).
    #[must_use]
    pub const fn is_csp_open(&self) -> bool {
        self.csp.is_some()
    }

    /// Whether the mediator accepted CSP on demand on this connection.
    #[must_use]
    pub const fn csp_on_demand(&self) -> bool {
        self.features & TANDEM_FEATURE_CSP_ON_DEMAND != 0
    }

    // ---- outputs ------------------------------------------------------------------------------

    /// The next whole d2m container to send as a binary WebSocket message.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Self::on_timeout`].
    #[must_use]
    pub const fn poll_timeout(&self) -> Option<u64> {
        self.deadline
    }

    /// Whether `RolePromotedToLeader` has arrived on this connection.
    #[must_use]
    pub const fn is_leader(&self) -> bool {
        matches!(self.state, State::Online { leader: true })
    }

    /// Whether the session is over.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    // ---- internals ----------------------------------------------------------------------------

    fn handle(
        &mut self,
        message: D2mMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), DeviceError> {
        let unexpected = DeviceError::Unexpected {
            payload_type: message.payload_type(),
            state: self.state.name(),
        };
        match (self.state, message) {
            (_, D2mMessage::Proxy(bytes)) => self.on_proxy(&bytes),
            (state, D2mMessage::CspClose) if state.is_authenticated() && self.csp_closing => {
                self.csp_closing = false;
                self.events.push_back(Event::CspClosed);
                if core::mem::take(&mut self.csp_reopen) {
                    self.open_csp(rng)?;
                }
                Ok(())
            }
            (State::AwaitingServerHello, D2mMessage::ServerHello(hello)) => {
                self.on_server_hello(&hello, rng)
            }
            (State::AwaitingServerInfo, D2mMessage::ServerInfo(info)) => {
                self.on_server_info(info);
                Ok(())
            }
            (state, message) if state.is_authenticated() => {
                self.handle_online(message).map_err(|e| match e {
                    Some(e) => e,
                    None => unexpected,
                })
            }
            _ => Err(unexpected),
        }
    }

    /// Messages after `ServerInfo`; `Err(None)` means "unexpected here".
    fn handle_online(&mut self, message: D2mMessage) -> Result<(), Option<DeviceError>> {
        match message {
            D2mMessage::ReflectionQueueDry(_) => {
                if !matches!(self.state, State::Draining { .. }) {
                    return Err(None);
                }
                self.state = State::Online { leader: false };
                self.events.push_back(Event::QueueDry);
            }
            D2mMessage::RolePromotedToLeader(_) => match self.state {
                State::Draining { .. } => return Err(Some(DeviceError::PromotedBeforeDry)),
                State::Online { leader: false } => {
                    self.state = State::Online { leader: true };
                    self.events.push_back(Event::PromotedToLeader);
                }
                _ => return Err(None),
            },
            D2mMessage::Reflected(reflected) => self.on_reflected(reflected).map_err(Some)?,
            D2mMessage::ReflectAck(ack) => {
                self.reflections.on_ack(ack.reflect_id).map_err(Some)?;
                self.events.push_back(Event::ReflectAcked {
                    reflect_id: ack.reflect_id,
                    timestamp: ack.timestamp,
                });
            }
            D2mMessage::BeginTransactionAck(_) => {
                self.expect_transaction(Transaction::Beginning, Transaction::Held)?;
                self.events.push_back(Event::TransactionBegun);
            }
            D2mMessage::TransactionRejected(rejected) => {
                self.expect_transaction(Transaction::Beginning, Transaction::Rejected)?;
                let scope = self.open_scope(&rejected.encrypted_scope);
                self.events.push_back(Event::TransactionRejected {
                    holder: rejected.device_id,
                    scope,
                });
            }
            D2mMessage::CommitTransactionAck(_) => {
                self.expect_transaction(Transaction::Committing, Transaction::Idle)?;
                self.events.push_back(Event::CommitAcked);
            }
            D2mMessage::TransactionEnded(ended) => {
                if self.transaction == Transaction::Rejected {
                    self.transaction = Transaction::Idle;
                }
                let scope = self.open_scope(&ended.encrypted_scope);
                self.events.push_back(Event::TransactionEnded {
                    device_id: ended.device_id,
                    scope,
                });
            }
            D2mMessage::DevicesInfo(info) => {
                let entries = self.open_devices_info(info);
                self.events.push_back(Event::DevicesInfo(entries));
            }
            D2mMessage::DropDeviceAck(ack) => self.events.push_back(Event::DropDeviceAck {
                device_id: ack.device_id,
            }),
            D2mMessage::Wake if self.csp_on_demand() => self.events.push_back(Event::Wake),
            D2mMessage::PushUrl(url) if self.csp_on_demand() => {
                self.events.push_back(Event::PushUrl(url));
            }
            _ => return Err(None),
        }
        Ok(())
    }

    fn expect_transaction(
        &mut self,
        from: Transaction,
        to: Transaction,
    ) -> Result<(), Option<DeviceError>> {
        if self.transaction != from {
            return Err(None);
        }
        self.transaction = to;
        Ok(())
    }

    fn on_server_hello(
        &mut self,
        hello: &pb::ServerHello,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), DeviceError> {
        let (esk, challenge) = validate_server_hello(hello).map_err(DeviceError::BadServerHello)?;
        let response = respond(&self.config.keys.dgpk, &esk, &challenge, rng);
        let hello = pb::ClientHello {
            version: PROTOCOL_VERSION,
            response,
            device_id: self.config.device_id,
            device_slots_exhausted_policy: self.config.slots_exhausted_policy.into(),
            device_slot_expiration_policy: self.config.expiration_policy.into(),
            encrypted_device_info: self.sealed_device_info.clone(),
            expected_device_slot_state: self.config.expected_slot_state.into(),
            tandem_features: self.config.tandem_features,
        };
        self.send(hello.into())?;
        self.state = State::AwaitingServerInfo;
        Ok(())
    }

    fn on_server_info(&mut self, info: pb::ServerInfo) {
        self.deadline = None;
        let shared_device_data = if info.encrypted_shared_device_data.is_empty() {
            None
        } else {
            Some(open_shared_device_data(
                &self.config.keys.dgsddk,
                &info.encrypted_shared_device_data,
            ))
        };
        let device_slot_state = pb::DeviceSlotState::try_from(info.device_slot_state)
            .unwrap_or(pb::DeviceSlotState::Existing);
        self.state = State::Draining {
            received: 0,
            total: info.reflection_queue_length,
        };
        self.features = info.tandem_features & self.config.tandem_features;
        self.events.push_back(Event::ServerInfo(ServerInfo {
            max_device_slots: info.max_device_slots,
            device_slot_state,
            shared_device_data,
            current_time: info.current_time,
            reflection_queue_length: info.reflection_queue_length,
        }));
    }

    fn on_reflected(&mut self, reflected: Reflected) -> Result<(), DeviceError> {
        let ephemeral = reflected.flags.is_ephemeral();
        let Reflected {
            reflected_id,
            timestamp,
            envelope,
            ..
        } = reflected;
        let nonce: Option<Nonce> = envelope.get(..NONCE_LEN).and_then(|n| n.try_into().ok());
        match (open_envelope(&self.config.keys.dgrk, &envelope), nonce) {
            (Ok(opened), Some(nonce)) => {
                if !ephemeral {
                    self.reflections.delivered(reflected_id);
                }
                self.events.push_back(Event::Reflected {
                    reflected_id,
                    timestamp,
                    ephemeral,
                    nonce,
                    envelope: ReflectedEnvelope(Box::new(opened)),
                });
            }
            // An envelope that opens always has a nonce; the second arm only keeps this total.
            (Ok(_), None) => {
                if !ephemeral {
                    self.send(ReflectedAck { reflected_id }.into())?;
                }
                self.events.push_back(Event::DroppedReflected {
                    reflected_id,
                    timestamp,
                    reason: D2dError::NoContent,
                });
            }
            (Err(reason), _) => {
                if !ephemeral {
                    self.send(ReflectedAck { reflected_id }.into())?;
                }
                self.events.push_back(Event::DroppedReflected {
                    reflected_id,
                    timestamp,
                    reason,
                });
            }
        }
        if let (State::Draining { received, total }, false) = (self.state, ephemeral) {
            let received = received.saturating_add(1);
            self.state = State::Draining { received, total };
            self.events
                .push_back(Event::QueueProgress { received, total });
        }
        Ok(())
    }

    fn on_proxy(&mut self, bytes: &[u8]) -> Result<(), DeviceError> {
        if self.csp.is_none() && self.csp_closing {
            return Ok(());
        }
        let client = self.csp.as_mut().ok_or(DeviceError::UnexpectedProxy)?;
        client.receive(bytes).map_err(DeviceError::Csp)?;
        self.pump_csp()
    }

    /// Moves the CSP client's units into proxy containers and its events into ours.
    fn pump_csp(&mut self) -> Result<(), DeviceError> {
        let Some(client) = self.csp.as_mut() else {
            return Ok(());
        };
        let mut units = Vec::new();
        while let Some(unit) = client.poll_transmit() {
            units.push(unit);
        }
        while let Some(event) = client.poll_event() {
            self.events.push_back(match event {
                ClientEvent::Payload(bytes) => Event::CspPayload(CspPayload(bytes)),
                ClientEvent::Established(ack) => Event::CspEstablished(ack),
            });
        }
        for unit in units {
            self.send(D2mMessage::Proxy(unit))?;
        }
        Ok(())
    }

    fn open_scope(&self, encrypted_scope: &[u8]) -> Option<Scope> {
        open_transaction_scope(&self.config.keys.dgtsk, encrypted_scope).ok()
    }

    fn open_devices_info(&self, info: pb::DevicesInfo) -> Vec<DeviceEntry> {
        info.augmented_device_info
            .into_iter()
            .map(|(device_id, entry)| DeviceEntry {
                device_id,
                info: open_device_info(&self.config.keys.dgdik, &entry.encrypted_device_info),
                connection_state: match entry.connection_state {
                    Some(PbConnState::ConnectedSince(at)) => ConnectionState::ConnectedSince(at),
                    Some(PbConnState::LastDisconnectAt(at)) => {
                        ConnectionState::LastDisconnectAt(at)
                    }
                    None => ConnectionState::Unknown,
                },
                expiration_policy: pb::DeviceSlotExpirationPolicy::try_from(
                    entry.device_slot_expiration_policy,
                )
                .unwrap_or(pb::DeviceSlotExpirationPolicy::Volatile),
            })
            .collect()
    }

    fn send(&mut self, message: D2mMessage) -> Result<(), DeviceError> {
        let bytes = message.encode().map_err(DeviceError::Encode)?;
        self.transmits.push_back(bytes);
        Ok(())
    }

    const fn require_authenticated(&self) -> Result<(), DeviceError> {
        match self.state {
            State::Closed => Err(DeviceError::Closed),
            state if state.is_authenticated() => Ok(()),
            _ => Err(DeviceError::NotOnline),
        }
    }

    fn check_deadline(&self, now_ms: u64) -> Result<(), DeviceError> {
        match self.deadline {
            Some(deadline) if now_ms >= deadline => Err(DeviceError::HandshakeTimeout),
            _ => Ok(()),
        }
    }

    /// A terminal error closes the session locally; misuse changes nothing.
    fn fail_on_terminal(&mut self, result: Result<(), DeviceError>) -> Result<(), DeviceError> {
        if let Err(error) = &result {
            if let Some(code) = error.close_code() {
                self.close(code, CloseOrigin::Local);
            }
        }
        result
    }

    fn close(&mut self, code: CloseCode, origin: CloseOrigin) {
        self.state = State::Closed;
        self.deadline = None;
        self.transmits.clear();
        self.events.push_back(Event::Closed {
            code,
            reconnect: code.reconnect(),
            origin,
        });
    }
}
