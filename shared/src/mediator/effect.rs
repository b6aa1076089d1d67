//! What the group asks its driver to do, and why a connection was closed.

use core::fmt;

use crate::d2m::CloseCode;

/// A device connection, numbered by the driver; never reused within one [`super::Group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// One instruction for the driver, in the order they must be carried out.
#[derive(Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send one binary WebSocket message (a whole d2m container).
    Send {
        /// The device connection.
        conn: ConnId,
        /// The container.
        bytes: Vec<u8>,
    },
    /// Close the WebSocket; the group has already forgotten the connection, so later input for
    /// it is ignored.
    Close {
        /// The device connection.
        conn: ConnId,
        /// The close code (spec §3.5).
        code: CloseCode,
        /// Why; [`CloseCause::reason`] is the close frame's reason text.
        cause: CloseCause,
    },
    /// Open the TCP connection to the chat server for this device (DESIGN §3 "CSP proxy").
    /// `CspSend` effects may follow at once: the driver writes them when the socket is open.
    OpenCsp {
        /// The device connection the chat server connection belongs to.
        conn: ConnId,
    },
    /// Write device bytes to the device's chat server connection.
    CspSend {
        /// The device connection.
        conn: ConnId,
        /// One CSP unit as the device sent it.
        bytes: Vec<u8>,
    },
    /// Close the device's chat server connection.
    CloseCsp {
        /// The device connection.
        conn: ConnId,
    },
}

impl fmt::Debug for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Send { conn, bytes } => f
                .debug_struct("Send")
                .field("conn", conn)
                .field(
                    "type",
                    &format_args!("{:#04x}", bytes.first().unwrap_or(&0)),
                )
                .field("len", &bytes.len())
                .finish(),
            Self::Close { conn, code, cause } => f
                .debug_struct("Close")
                .field("conn", conn)
                .field("code", &code.as_u16())
                .field("cause", cause)
                .finish(),
            Self::OpenCsp { conn } => f.debug_struct("OpenCsp").field("conn", conn).finish(),
            Self::CspSend { conn, bytes } => f
                .debug_struct("CspSend")
                .field("conn", conn)
                .field("len", &bytes.len())
                .finish(),
            Self::CloseCsp { conn } => f.debug_struct("CloseCsp").field("conn", conn).finish(),
        }
    }
}

/// Why the group closed a connection; the close code follows from the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCause {
    /// A text WebSocket message (spec §2.1).
    TextFrame,
    /// Bytes that are not a valid container or payload.
    MalformedFrame,
    /// A binary frame longer than any container (`MAX_CONTAINER_LEN`): refused by its length,
    /// before the adapter copies it out of the runtime (docs/worker.md "Limits").
    FrameTooLarge,
    /// A type byte spec §2.3 does not define.
    UnknownPayloadType,
    /// A payload type only the mediator sends.
    ServerPayloadFromClient,
    /// A Tandem extension message (`CspClose`) on a connection that did not negotiate it.
    ExtensionNotNegotiated,
    /// A d2m message other than proxy or `ClientHello` before the handshake completed.
    FrameBeforeHandshake,
    /// More proxy data before the handshake than the group holds.
    TooMuchBeforeHandshake,
    /// A second `ClientHello`.
    RepeatedClientHello,
    /// `ClientHello.response` did not prove the device group key (spec §3.2).
    ChallengeFailed,
    /// `ClientHello` has an unknown enum value or an oversize device info.
    InvalidClientHello,
    /// `ClientHello.version` is not one the mediator speaks.
    UnsupportedVersion,
    /// `expected_device_slot_state` differs from the mediator's view.
    SlotStateMismatch,
    /// No free slot and the device's policy (or the lack of an offline slot) forbids eviction.
    DeviceLimitReached,
    /// The same device id connected again; this is the older connection.
    DeviceIdReused,
    /// Another device (or this one) dropped the slot.
    DeviceDropped,
    /// The slot's reflection queue overflowed; the slot and its queue are deleted.
    QueueLimitReached,
    /// A reflected envelope shorter than nonce and tag or longer than fits a `Reflected`.
    EnvelopeSize,
    /// A `ReflectedAck` for an id not delivered on this connection.
    UnexpectedAck,
    /// `BeginTransaction` while already holding the lock.
    NestedTransaction,
    /// `CommitTransaction` without holding the lock.
    CommitWithoutLock,
    /// More writes inside one transaction than any queue could take.
    TransactionTooLarge,
    /// The transaction's TTL ran out.
    TransactionTtlExceeded,
    /// A blob (scope, shared device data) too long for the frames that echo it.
    OversizeField,
    /// No `ClientHello` within the handshake timeout.
    HandshakeTimeout,
    /// `GroupConfig::max_handshakes` connections of the group are already in their handshake.
    TooManyHandshakes,
    /// The chat server closed its connection.
    CspClosed,
    /// The chat server connection could not be opened.
    CspUnreachable,
    /// The chat server sent bytes that do not split into CSP units.
    CspStreamInvalid,
    /// Chat server data waiting behind this device's unsent queue entries passed its bound
    /// (`MAX_HELD_PROXY_BYTES`): the device does not keep up.
    CspBacklog,
    /// More than `GroupConfig::max_unanswered_bytes` were sent to the device since its last
    /// frame: it does not read.
    NotReading,
    /// A store call failed.
    StorageFailure,
    /// A frame to send did not fit a container.
    EncodeFailure,
}

impl CloseCause {
    /// The close code of spec §3.5 for this cause.
    #[must_use]
    pub const fn code(self) -> CloseCode {
        match self {
            Self::TextFrame
            | Self::MalformedFrame
            | Self::FrameTooLarge
            | Self::UnknownPayloadType
            | Self::ServerPayloadFromClient
            | Self::ExtensionNotNegotiated
            | Self::FrameBeforeHandshake
            | Self::TooMuchBeforeHandshake
            | Self::RepeatedClientHello
            | Self::ChallengeFailed
            | Self::InvalidClientHello
            | Self::EnvelopeSize
            | Self::NestedTransaction
            | Self::CommitWithoutLock
            | Self::TransactionTooLarge
            | Self::OversizeField => CloseCode::ProtocolError,
            Self::UnsupportedVersion => CloseCode::UnsupportedProtocolVersion,
            Self::SlotStateMismatch => CloseCode::ExpectedDeviceSlotStateMismatch,
            Self::DeviceLimitReached => CloseCode::DeviceLimitReached,
            Self::DeviceIdReused => CloseCode::DeviceIdReused,
            Self::DeviceDropped => CloseCode::DeviceDropped,
            Self::QueueLimitReached => CloseCode::ReflectionQueueLengthLimitReached,
            Self::UnexpectedAck => CloseCode::UnexpectedAck,
            Self::TransactionTtlExceeded => CloseCode::TransactionTtlExceeded,
            Self::HandshakeTimeout => CloseCode::ClientTimeout,
            Self::TooManyHandshakes => CloseCode::TryAgainLater,
            Self::CspClosed => CloseCode::CspClosed,
            Self::CspUnreachable => CloseCode::CspUnableToEstablish,
            Self::CspStreamInvalid | Self::CspBacklog | Self::NotReading => {
                CloseCode::CspInternalError
            }
            Self::StorageFailure | Self::EncodeFailure => CloseCode::ServerInternalError,
        }
    }

    /// Close frame reason text (well under RFC 6455's 123 bytes; no ids, no payload).
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            Self::TextFrame => "text frame",
            Self::MalformedFrame => "malformed frame",
            Self::FrameTooLarge => "frame too large",
            Self::UnknownPayloadType => "unknown payload type",
            Self::ServerPayloadFromClient => "server payload type from client",
            Self::ExtensionNotNegotiated => "extension not negotiated",
            Self::FrameBeforeHandshake => "frame before handshake",
            Self::TooMuchBeforeHandshake => "too much proxy data before handshake",
            Self::RepeatedClientHello => "repeated client hello",
            Self::ChallengeFailed => "challenge response invalid",
            Self::InvalidClientHello => "invalid client hello",
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::SlotStateMismatch => "expected device slot state mismatch",
            Self::DeviceLimitReached => "device limit reached",
            Self::DeviceIdReused => "device id reused",
            Self::DeviceDropped => "device dropped",
            Self::QueueLimitReached => "reflection queue length limit reached",
            Self::EnvelopeSize => "envelope size out of range",
            Self::UnexpectedAck => "unexpected ack",
            Self::NestedTransaction => "transaction already held",
            Self::CommitWithoutLock => "commit without transaction",
            Self::TransactionTooLarge => "transaction too large",
            Self::TransactionTtlExceeded => "transaction ttl exceeded",
            Self::OversizeField => "field too long",
            Self::HandshakeTimeout => "handshake timeout",
            Self::TooManyHandshakes => "too many connections in their handshake",
            Self::CspClosed => "chat server connection closed",
            Self::CspUnreachable => "chat server unreachable",
            Self::CspStreamInvalid => "chat server stream invalid",
            Self::CspBacklog => "chat server data backlog",
            Self::NotReading => "device not reading",
            Self::StorageFailure => "storage failure",
            Self::EncodeFailure => "internal error",
        }
    }
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}
