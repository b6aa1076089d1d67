//! What a [`super::DeviceSession`] reports, and why it fails.

use core::fmt;

use crate::crypto::Nonce;
use crate::csp::{CspError, LoginAck};
use crate::d2d::{D2dError, DeviceInfo, Scope, SharedDeviceData};
use crate::d2m::{
    ChallengeError, CloseCode, D2mDecodeError, D2mEncodeError, PayloadType, Reconnect,
};
use crate::proto::d2d::Envelope;
use crate::proto::d2m::{DeviceSlotExpirationPolicy, DeviceSlotState};

/// `ServerInfo` as the device understands it (spec §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Slots the group may hold.
    pub max_device_slots: u32,
    /// The mediator's view of this device's slot; an unknown value reads as EXISTING.
    pub device_slot_state: DeviceSlotState,
    /// The group's shared data: `None` while nobody set it, `Err` if it does not open.
    pub shared_device_data: Option<Result<SharedDeviceData, D2dError>>,
    /// The mediator's clock, Unix ms.
    pub current_time: u64,
    /// `Reflected` frames that come before `ReflectionQueueDry`.
    pub reflection_queue_length: u32,
}

/// A decrypted `d2d.Envelope`; its `Debug` names only the sender and the content kind.
#[derive(Clone, PartialEq)]
pub struct ReflectedEnvelope(pub Box<Envelope>);

impl fmt::Debug for ReflectedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.0.content.as_ref().map(|c| {
            let name = format!("{c:?}");
            name.split('(').next().unwrap_or_default().to_owned()
        });
        f.debug_struct("Envelope")
            .field("device_id", &self.0.device_id)
            .field("content", &kind)
            .finish()
    }
}

/// One CSP payload container; its `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct CspPayload(pub Vec<u8>);

impl fmt::Debug for CspPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CspPayload({} bytes)", self.0.len())
    }
}

/// Whether a sibling is online (spec §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Online since, Unix ms.
    ConnectedSince(u64),
    /// Offline since, Unix ms.
    LastDisconnectAt(u64),
    /// The mediator sent neither.
    Unknown,
}

/// One entry of `DevicesInfo`, its device info opened with `dgdik`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The sibling's d2m device id.
    pub device_id: u64,
    /// Its description, or why it did not open.
    pub info: Result<DeviceInfo, D2dError>,
    /// Online or since when offline.
    pub connection_state: ConnectionState,
    /// Its slot's policy; an unknown value reads as VOLATILE.
    pub expiration_policy: DeviceSlotExpirationPolicy,
}

/// Who closed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOrigin {
    /// The device decided to close: the driver closes the WebSocket with the code.
    Local,
    /// The mediator (or the network) closed it.
    Remote,
}

/// What the app is told, in the order things happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed (spec §3.4).
    ServerInfo(ServerInfo),
    /// One more queued `Reflected` arrived while draining (for a loading screen).
    QueueProgress {
        /// Queued frames received so far on this connection.
        received: u32,
        /// `reflection_queue_length` from `ServerInfo`.
        total: u32,
    },
    /// `ReflectionQueueDry`: every queued envelope has been delivered.
    QueueDry,
    /// `RolePromotedToLeader` (spec §4): time to unblock incoming CSP messages.
    PromotedToLeader,
    /// A sibling's envelope, decrypted. Ack it with `ack_reflected` after processing unless
    /// `ephemeral`.
    Reflected {
        /// The per-slot id to ack.
        reflected_id: u32,
        /// When the mediator stored it, Unix ms.
        timestamp: u64,
        /// Sent to online devices only; never acked.
        ephemeral: bool,
        /// The nonce the envelope was sealed with, for the D2D nonce replay store (spec §0).
        nonce: Nonce,
        /// The envelope.
        envelope: ReflectedEnvelope,
    },
    /// A `Reflected` that does not open or decode; already acked (unless ephemeral) so the queue
    /// keeps moving (spec §5).
    DroppedReflected {
        /// Its id.
        reflected_id: u32,
        /// Its timestamp.
        timestamp: u64,
        /// Why it was dropped.
        reason: D2dError,
    },
    /// The mediator stored an own reflect (spec §5).
    ReflectAcked {
        /// The id `reflect` returned.
        reflect_id: u32,
        /// The authoritative "reflected at" time, Unix ms.
        timestamp: u64,
    },
    /// `BeginTransactionAck`: the group lock is held.
    TransactionBegun,
    /// Another device holds the lock; wait for `TransactionEnded` and try again (spec §6).
    TransactionRejected {
        /// The holder's device id.
        holder: u64,
        /// Its scope, `None` if it does not open.
        scope: Option<Scope>,
    },
    /// Another device's transaction ended (committed or aborted).
    TransactionEnded {
        /// The former holder.
        device_id: u64,
        /// Its scope, `None` if it does not open.
        scope: Option<Scope>,
    },
    /// `CommitTransactionAck`: the lock is released and the writes are visible.
    CommitAcked,
    /// The answer to `get_devices_info`.
    DevicesInfo(Vec<DeviceEntry>),
    /// The answer to `drop_device`.
    DropDeviceAck {
        /// The dropped device.
        device_id: u64,
    },
    /// CSP login-ack arrived through the proxy, with the server's time and queue length when
    /// the server sent them (spec §12).
    CspEstablished(LoginAck),
    /// One decrypted CSP payload container.
    CspPayload(CspPayload),
    /// The mediator closed the chat server connection `close_csp` asked it to close; proxy
    /// frames from now on belong to the next one.
    CspClosed,
    /// The chat server has messages and nobody receives them: open the chat server connection
    /// (`open_csp`). Only with CSP on demand negotiated.
    Wake,
    /// Where the chat server can wake this device group: register it as a push token of
    /// Tandem's type at the next chat server login (docs/protocol.md "CSP on demand").
    PushUrl(String),
    /// The connection is over; nothing more comes.
    Closed {
        /// The close code (spec §3.5).
        code: CloseCode,
        /// Whether to reconnect on one's own.
        reconnect: Reconnect,
        /// Who closed.
        origin: CloseOrigin,
    },
}

/// Why a call or an input failed.
///
/// Errors from the wire are terminal: the session is closed and [`DeviceError::close_code`] is
/// the code to close the WebSocket with. Misuse of the API (calling at the wrong time) changes
/// nothing and has no close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The mediator sent bytes that are not a d2m message.
    #[error("malformed d2m message: {0}")]
    Malformed(#[source] D2mDecodeError),
    /// `ServerHello` carries a bad key or challenge.
    #[error("invalid ServerHello: {0}")]
    BadServerHello(#[source] ChallengeError),
    /// A well-formed message that is not allowed now (or never from a mediator).
    #[error("unexpected {payload_type} in state {state}")]
    Unexpected {
        /// The message's type.
        payload_type: PayloadType,
        /// The session's state.
        state: &'static str,
    },
    /// `RolePromotedToLeader` before `ReflectionQueueDry` (spec §4).
    #[error("promoted to leader before the reflection queue was dry")]
    PromotedBeforeDry,
    /// A `ReflectAck` that is not for the oldest unacked reflect (spec §5).
    #[error("ReflectAck for {got}, expected {expected:?}")]
    ReflectAckOutOfOrder {
        /// The oldest unacked reflect id, if any.
        expected: Option<u32>,
        /// The id acked.
        got: u32,
    },
    /// A proxy frame arrived but the session is d2m-only.
    #[error("proxy frame for a d2m-only session")]
    UnexpectedProxy,
    /// The CSP client failed (bad unit from the chat server).
    #[error("CSP: {0}")]
    Csp(#[source] CspError),
    /// No `ServerInfo` within the handshake timeout.
    #[error("no ServerInfo in time")]
    HandshakeTimeout,
    /// Misuse: the session is closed.
    #[error("session is closed")]
    Closed,
    /// Misuse: the handshake has not completed yet.
    #[error("handshake not complete")]
    NotOnline,
    /// Misuse: all 2^32 − 1 reflect ids of this connection are used up; reconnect.
    #[error("reflect ids exhausted")]
    ReflectIdsExhausted,
    /// Misuse: the id was not delivered on this connection, is ephemeral or already acked.
    #[error("reflected id {0} is not awaiting an ack")]
    NotAwaitingAck(u32),
    /// Misuse: no CSP client configured.
    #[error("no CSP configured")]
    CspNotConfigured,
    /// Misuse: the CSP login has not completed.
    #[error("CSP not established")]
    CspNotEstablished,
    /// Misuse: the mediator did not accept CSP on demand for this connection.
    #[error("CSP on demand not negotiated")]
    CspOnDemandNotNegotiated,
    /// Misuse: a transaction is being begun, held or committed.
    #[error("a transaction is already in progress")]
    TransactionInProgress,
    /// Misuse: no transaction is held.
    #[error("no transaction held")]
    NoTransaction,
    /// Something could not be sealed (e.g. a device info field too long, an empty envelope).
    #[error("cannot seal: {0}")]
    Seal(#[source] D2dError),
    /// A message would not fit a container.
    #[error("cannot encode: {0}")]
    Encode(#[source] D2mEncodeError),
}

impl DeviceError {
    /// The code to close the WebSocket with, for errors that end the session.
    #[must_use]
    pub const fn close_code(&self) -> Option<CloseCode> {
        match self {
            Self::Malformed(_)
            | Self::BadServerHello(_)
            | Self::Unexpected { .. }
            | Self::PromotedBeforeDry
            | Self::ReflectAckOutOfOrder { .. }
            | Self::UnexpectedProxy => Some(CloseCode::ProtocolError),
            Self::Csp(_) => Some(CloseCode::CspInternalError),
            Self::HandshakeTimeout => Some(CloseCode::ClientTimeout),
            _ => None,
        }
    }
}
