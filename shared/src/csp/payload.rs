//! The CSP payload container and every payload type of spec §9.4.
//!
//! A payload container is the plaintext of one post-handshake frame:
//! `type u8 ‖ reserved (3 zero bytes) ‖ data`, at most 8176 bytes. The reserved bytes are sent
//! as zeros and ignored on receipt. Payloads whose data is empty or of fixed size must match it
//! exactly; trailing bytes are malformed, not silently dropped.
//!
//! The message payloads (0x01 / 0x02) carry a `message-with-metadata-box` or a `legacy-message`,
//! depending on the session's negotiated `message-payload-version`, so [`CspPayload::decode`]
//! takes that version. Encoding needs none: a box without metadata is byte-identical to its
//! legacy-message (see [`crate::csp::LegacyMessage`]); a session on the legacy version must only
//! send messages without metadata.

use core::fmt;
use core::ops::RangeInclusive;

use crate::codec::{Reader, Truncated};
use crate::keys::IDENTITY_LEN;

use super::message::{MessageError, MessagePayloadVersion, MessageWithMetadataBox};

/// Largest payload container: a frame's 8192 bytes minus the 16-byte tag.
pub const MAX_PAYLOAD_CONTAINER_LEN: usize = 8176;
/// Largest payload data: the container minus its 4-byte header.
pub const MAX_PAYLOAD_DATA_LEN: usize = MAX_PAYLOAD_CONTAINER_LEN - 4;
/// Largest push token (spec §9.4, 0x20 / 0x24).
pub const MAX_PUSH_TOKEN_LEN: usize = 255;
/// Connection idle timeouts the server accepts, in seconds (spec §9.4, 0x30).
pub const IDLE_TIMEOUT_RANGE_S: RangeInclusive<u16> = 30..=600;
/// The server's idle timeout when the client never sets one, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_S: u16 = 300;

/// Payload types that Threema retired; receiving one is an error, not an unknown type.
const OBSOLETE_TYPES: [u8; 4] = [0x21, 0x22, 0x23, 0x31];

/// Who may send a payload type (spec §9.4 "Dir").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadDirection {
    /// Client to server only.
    ClientToServer,
    /// Server to client only.
    ServerToClient,
    /// Either side.
    Both,
}

/// The type byte of a payload container (spec §9.4 table), without the obsolete types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadType {
    /// 0x00 echo-request.
    EchoRequest = 0x00,
    /// 0x01 outgoing message (client → server).
    OutgoingMessage = 0x01,
    /// 0x02 incoming message (server → client).
    IncomingMessage = 0x02,
    /// 0x03 unblock-incoming-messages.
    UnblockIncomingMessages = 0x03,
    /// 0x20 set-push-notification-token.
    SetPushNotificationToken = 0x20,
    /// 0x24 set high-priority push notification token.
    SetHighPriorityPushNotificationToken = 0x24,
    /// 0x25 delete-push-notification-token.
    DeletePushNotificationToken = 0x25,
    /// 0x30 set-connection-idle-timeout.
    SetConnectionIdleTimeout = 0x30,
    /// 0x80 echo-response.
    EchoResponse = 0x80,
    /// 0x81 outgoing message-ack (server → client).
    OutgoingMessageAck = 0x81,
    /// 0x82 incoming message-ack (client → server).
    IncomingMessageAck = 0x82,
    /// 0xd0 queue-send-complete.
    QueueSendComplete = 0xd0,
    /// 0xd1 last-ephemeral-key-hash.
    LastEphemeralKeyHash = 0xd1,
    /// 0xd2 device-cookie-change-indication.
    DeviceCookieChangeIndication = 0xd2,
    /// 0xd3 clear-device-cookie-change-indication.
    ClearDeviceCookieChangeIndication = 0xd3,
    /// 0xe0 close-error.
    CloseError = 0xe0,
    /// 0xe1 alert.
    Alert = 0xe1,
}

impl PayloadType {
    /// Every payload type, for tests and exhaustive tables.
    pub const ALL: [Self; 17] = [
        Self::EchoRequest,
        Self::OutgoingMessage,
        Self::IncomingMessage,
        Self::UnblockIncomingMessages,
        Self::SetPushNotificationToken,
        Self::SetHighPriorityPushNotificationToken,
        Self::DeletePushNotificationToken,
        Self::SetConnectionIdleTimeout,
        Self::EchoResponse,
        Self::OutgoingMessageAck,
        Self::IncomingMessageAck,
        Self::QueueSendComplete,
        Self::LastEphemeralKeyHash,
        Self::DeviceCookieChangeIndication,
        Self::ClearDeviceCookieChangeIndication,
        Self::CloseError,
        Self::Alert,
    ];

    /// The wire byte.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Who may send this type; the session state machines reject the wrong direction.
    #[must_use]
    pub const fn direction(self) -> PayloadDirection {
        match self {
            Self::EchoRequest | Self::EchoResponse => PayloadDirection::Both,
            Self::OutgoingMessage
            | Self::IncomingMessageAck
            | Self::UnblockIncomingMessages
            | Self::SetPushNotificationToken
            | Self::SetHighPriorityPushNotificationToken
            | Self::DeletePushNotificationToken
            | Self::SetConnectionIdleTimeout
            | Self::ClearDeviceCookieChangeIndication => PayloadDirection::ClientToServer,
            Self::IncomingMessage
            | Self::OutgoingMessageAck
            | Self::QueueSendComplete
            | Self::LastEphemeralKeyHash
            | Self::DeviceCookieChangeIndication
            | Self::CloseError
            | Self::Alert => PayloadDirection::ServerToClient,
        }
    }
}

impl TryFrom<u8> for PayloadType {
    type Error = PayloadError;

    fn try_from(value: u8) -> Result<Self, PayloadError> {
        if OBSOLETE_TYPES.contains(&value) {
            return Err(PayloadError::ObsoleteType(value));
        }
        Self::ALL
            .into_iter()
            .find(|ty| ty.as_u8() == value)
            .ok_or(PayloadError::UnknownType(value))
    }
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The container or a fixed field ended early (malformed).
    #[error("payload: {0}")]
    Truncated(#[from] Truncated),
    /// The container exceeds [`MAX_PAYLOAD_CONTAINER_LEN`].
    #[error("payload container of {0} bytes exceeds 8176")]
    TooLarge(usize),
    /// A retired payload type (0x21–0x23, 0x31): unsupported.
    #[error("obsolete payload type {0:#04x}")]
    ObsoleteType(u8),
    /// A payload type not in the spec's table: unsupported.
    #[error("unknown payload type {0:#04x}")]
    UnknownType(u8),
    /// The data of an empty or fixed-size payload has the wrong length (malformed).
    #[error("{payload_type:?} data must be {expected} bytes, got {actual}")]
    Length {
        /// The payload's type.
        payload_type: PayloadType,
        /// The only valid length.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// The device id list is not a whole number of u64s (malformed).
    #[error("device id list of {0} bytes is not a multiple of 8")]
    DeviceIdListLength(usize),
    /// A push token longer than 255 bytes.
    #[error("push token of {0} bytes exceeds 255")]
    TokenTooLong(usize),
    /// The text of a close-error or alert is not UTF-8 (malformed).
    #[error("{0:?} text is not valid UTF-8")]
    InvalidUtf8(PayloadType),
    /// An idle timeout outside 30–600 s (well-formed, not allowed; see [`check_idle_timeout`]).
    #[error("idle timeout of {0} s is outside 30..=600")]
    IdleTimeoutOutOfRange(u16),
    /// The message struct inside 0x01 / 0x02 is malformed.
    #[error("message payload: {0}")]
    Message(#[from] MessageError),
}

/// The server's range check for `set-connection-idle-timeout` (spec §9.4: 30–600 s).
pub fn check_idle_timeout(seconds: u16) -> Result<u16, PayloadError> {
    if IDLE_TIMEOUT_RANGE_S.contains(&seconds) {
        Ok(seconds)
    } else {
        Err(PayloadError::IdleTimeoutOutOfRange(seconds))
    }
}

/// The raw payload container: a type byte and borrowed data, before any type-specific parsing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PayloadContainer<'a> {
    /// The type byte, unchecked.
    pub payload_type: u8,
    /// Everything after the reserved bytes.
    pub data: &'a [u8],
}

impl fmt::Debug for PayloadContainer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadContainer")
            .field("payload_type", &format_args!("{:#04x}", self.payload_type))
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl<'a> PayloadContainer<'a> {
    /// `type ‖ 0 0 0 ‖ data`, refusing containers over [`MAX_PAYLOAD_CONTAINER_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, PayloadError> {
        let len = self.data.len().saturating_add(4);
        if len > MAX_PAYLOAD_CONTAINER_LEN {
            return Err(PayloadError::TooLarge(len));
        }
        let mut out = Vec::with_capacity(len);
        out.push(self.payload_type);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(self.data);
        Ok(out)
    }

    /// Splits a container; the reserved bytes are ignored.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, PayloadError> {
        if bytes.len() > MAX_PAYLOAD_CONTAINER_LEN {
            return Err(PayloadError::TooLarge(bytes.len()));
        }
        let mut reader = Reader::new(bytes);
        let payload_type = reader.u8()?;
        reader.take(3)?;
        Ok(Self {
            payload_type,
            data: reader.rest(),
        })
    }
}

/// `message-ack` (spec §9.5): the identity is the receiver for 0x81 and the sender for 0x82.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageAck {
    /// The other party of the acknowledged message.
    pub identity: [u8; IDENTITY_LEN],
    /// The acknowledged message's id.
    pub message_id: u64,
}

impl MessageAck {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// `identity ‖ message-id u64-le`.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0_u8; Self::LEN];
        let (identity, id) = out.split_at_mut(IDENTITY_LEN);
        identity.copy_from_slice(&self.identity);
        id.copy_from_slice(&self.message_id.to_le_bytes());
        out
    }

    /// Reads exactly 16 bytes; the payload type only labels the length error.
    fn decode(payload_type: PayloadType, data: &[u8]) -> Result<Self, PayloadError> {
        let bytes: [u8; Self::LEN] = data.try_into().map_err(|_| PayloadError::Length {
            payload_type,
            expected: Self::LEN,
            actual: data.len(),
        })?;
        let mut reader = Reader::new(&bytes);
        Ok(Self {
            identity: reader.array()?,
            message_id: reader.u64_le()?,
        })
    }
}

impl fmt::Debug for MessageAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageAck")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("message_id", &format_args!("{:#018x}", self.message_id))
            .finish()
    }
}

/// The push service a token belongs to (spec §9.4, 0x20). Kept open: the server stores the byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PushTokenType(pub u8);

impl PushTokenType {
    /// No push (removes the token).
    pub const NONE: Self = Self(0x00);
    /// APNs, production.
    pub const APNS_PRODUCTION: Self = Self(0x01);
    /// APNs, development.
    pub const APNS_DEVELOPMENT: Self = Self(0x02);
    /// APNs production with content-available.
    pub const APNS_PRODUCTION_CONTENT_AVAILABLE: Self = Self(0x03);
    /// APNs development with content-available.
    pub const APNS_DEVELOPMENT_CONTENT_AVAILABLE: Self = Self(0x04);
    /// APNs production with mutable-content.
    pub const APNS_PRODUCTION_MUTABLE_CONTENT: Self = Self(0x05);
    /// APNs development with mutable-content.
    pub const APNS_DEVELOPMENT_MUTABLE_CONTENT: Self = Self(0x06);
    /// FCM with an empty payload.
    pub const FCM: Self = Self(0x11);
    /// HMS with an empty payload.
    pub const HMS: Self = Self(0x13);
}

/// `type u8 ‖ token` of payloads 0x20 and 0x24; the token is at most 255 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct PushToken {
    token_type: PushTokenType,
    token: Vec<u8>,
}

impl PushToken {
    /// A token of at most [`MAX_PUSH_TOKEN_LEN`] bytes.
    pub fn new(token_type: PushTokenType, token: Vec<u8>) -> Result<Self, PayloadError> {
        if token.len() > MAX_PUSH_TOKEN_LEN {
            return Err(PayloadError::TokenTooLong(token.len()));
        }
        Ok(Self { token_type, token })
    }

    /// The push service.
    #[must_use]
    pub const fn token_type(&self) -> PushTokenType {
        self.token_type
    }

    /// The token bytes.
    #[must_use]
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.token.len());
        out.push(self.token_type.0);
        out.extend_from_slice(&self.token);
        out
    }

    fn decode(data: &[u8]) -> Result<Self, PayloadError> {
        let mut reader = Reader::new(data);
        let token_type = PushTokenType(reader.u8()?);
        Self::new(token_type, reader.rest().to_vec())
    }
}

impl fmt::Debug for PushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushToken")
            .field("token_type", &self.token_type)
            .field("token_len", &self.token.len())
            .finish()
    }
}

/// A decoded CSP payload (spec §9.4), one variant per type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CspPayload {
    /// 0x00: arbitrary data to be echoed (Desktop sends u64-le Unix ms).
    EchoRequest(Vec<u8>),
    /// 0x80: the echoed data.
    EchoResponse(Vec<u8>),
    /// 0x01: a message from this client.
    OutgoingMessage(MessageWithMetadataBox),
    /// 0x02: a message for this client.
    IncomingMessage(MessageWithMetadataBox),
    /// 0x81: the server stored an outgoing message (identity = receiver).
    OutgoingMessageAck(MessageAck),
    /// 0x82: the client processed an incoming message (identity = sender).
    IncomingMessageAck(MessageAck),
    /// 0x03: the client (the leader) is ready for incoming messages.
    UnblockIncomingMessages,
    /// 0x20: set the push token.
    SetPushNotificationToken(PushToken),
    /// 0x24: set the high-priority push token.
    SetHighPriorityPushNotificationToken(PushToken),
    /// 0x25: delete the push tokens of these CSP device ids; empty = every device but the sender.
    DeletePushNotificationToken(Vec<u64>),
    /// 0x30: idle timeout in seconds; the server checks it with [`check_idle_timeout`].
    SetConnectionIdleTimeout(u16),
    /// 0xd0: the server delivered its queue backlog.
    QueueSendComplete,
    /// 0xd1: obsolete server notice; kept as raw bytes so a client can discard it.
    LastEphemeralKeyHash(Vec<u8>),
    /// 0xd2: another device logged in with a different device cookie.
    DeviceCookieChangeIndication,
    /// 0xd3: the user has seen the indication.
    ClearDeviceCookieChangeIndication,
    /// 0xe0: the server is closing the connection.
    CloseError {
        /// Whether the client may reconnect (any non-zero byte on the wire).
        can_reconnect: bool,
        /// Reason for the UI or log.
        message: String,
    },
    /// 0xe1: a message for the UI.
    Alert(String),
}

fn expect_len(payload_type: PayloadType, data: &[u8], expected: usize) -> Result<(), PayloadError> {
    if data.len() == expected {
        Ok(())
    } else {
        Err(PayloadError::Length {
            payload_type,
            expected,
            actual: data.len(),
        })
    }
}

fn utf8(payload_type: PayloadType, bytes: &[u8]) -> Result<String, PayloadError> {
    core::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| PayloadError::InvalidUtf8(payload_type))
}

impl CspPayload {
    /// The payload's type byte.
    #[must_use]
    pub const fn payload_type(&self) -> PayloadType {
        match self {
            Self::EchoRequest(_) => PayloadType::EchoRequest,
            Self::EchoResponse(_) => PayloadType::EchoResponse,
            Self::OutgoingMessage(_) => PayloadType::OutgoingMessage,
            Self::IncomingMessage(_) => PayloadType::IncomingMessage,
            Self::OutgoingMessageAck(_) => PayloadType::OutgoingMessageAck,
            Self::IncomingMessageAck(_) => PayloadType::IncomingMessageAck,
            Self::UnblockIncomingMessages => PayloadType::UnblockIncomingMessages,
            Self::SetPushNotificationToken(_) => PayloadType::SetPushNotificationToken,
            Self::SetHighPriorityPushNotificationToken(_) => {
                PayloadType::SetHighPriorityPushNotificationToken
            }
            Self::DeletePushNotificationToken(_) => PayloadType::DeletePushNotificationToken,
            Self::SetConnectionIdleTimeout(_) => PayloadType::SetConnectionIdleTimeout,
            Self::QueueSendComplete => PayloadType::QueueSendComplete,
            Self::LastEphemeralKeyHash(_) => PayloadType::LastEphemeralKeyHash,
            Self::DeviceCookieChangeIndication => PayloadType::DeviceCookieChangeIndication,
            Self::ClearDeviceCookieChangeIndication => {
                PayloadType::ClearDeviceCookieChangeIndication
            }
            Self::CloseError { .. } => PayloadType::CloseError,
            Self::Alert(_) => PayloadType::Alert,
        }
    }

    /// The data part, before the container header is added.
    fn encode_data(&self) -> Result<Vec<u8>, PayloadError> {
        Ok(match self {
            Self::EchoRequest(data)
            | Self::EchoResponse(data)
            | Self::LastEphemeralKeyHash(data) => data.clone(),
            Self::OutgoingMessage(message) | Self::IncomingMessage(message) => message.encode()?,
            Self::OutgoingMessageAck(ack) | Self::IncomingMessageAck(ack) => ack.encode().to_vec(),
            Self::UnblockIncomingMessages
            | Self::QueueSendComplete
            | Self::DeviceCookieChangeIndication
            | Self::ClearDeviceCookieChangeIndication => Vec::new(),
            Self::SetPushNotificationToken(token)
            | Self::SetHighPriorityPushNotificationToken(token) => token.encode(),
            Self::DeletePushNotificationToken(ids) => {
                let mut out = Vec::with_capacity(ids.len().saturating_mul(8));
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
                out
            }
            Self::SetConnectionIdleTimeout(seconds) => seconds.to_le_bytes().to_vec(),
            Self::CloseError {
                can_reconnect,
                message,
            } => {
                let mut out = Vec::with_capacity(1 + message.len());
                out.push(u8::from(*can_reconnect));
                out.extend_from_slice(message.as_bytes());
                out
            }
            Self::Alert(message) => message.as_bytes().to_vec(),
        })
    }

    /// The full payload container, ready to be framed.
    pub fn encode(&self) -> Result<Vec<u8>, PayloadError> {
        let data = self.encode_data()?;
        PayloadContainer {
            payload_type: self.payload_type().as_u8(),
            data: &data,
        }
        .encode()
    }

    /// Reads a payload container. `version` is the session's negotiated message payload version
    /// and matters only for 0x01 / 0x02.
    pub fn decode(bytes: &[u8], version: MessagePayloadVersion) -> Result<Self, PayloadError> {
        let container = PayloadContainer::decode(bytes)?;
        let payload_type = PayloadType::try_from(container.payload_type)?;
        let data = container.data;
        Ok(match payload_type {
            PayloadType::EchoRequest => Self::EchoRequest(data.to_vec()),
            PayloadType::EchoResponse => Self::EchoResponse(data.to_vec()),
            PayloadType::LastEphemeralKeyHash => Self::LastEphemeralKeyHash(data.to_vec()),
            PayloadType::OutgoingMessage => {
                Self::OutgoingMessage(MessageWithMetadataBox::decode_versioned(data, version)?)
            }
            PayloadType::IncomingMessage => {
                Self::IncomingMessage(MessageWithMetadataBox::decode_versioned(data, version)?)
            }
            PayloadType::OutgoingMessageAck => {
                Self::OutgoingMessageAck(MessageAck::decode(payload_type, data)?)
            }
            PayloadType::IncomingMessageAck => {
                Self::IncomingMessageAck(MessageAck::decode(payload_type, data)?)
            }
            PayloadType::UnblockIncomingMessages => {
                expect_len(payload_type, data, 0)?;
                Self::UnblockIncomingMessages
            }
            PayloadType::QueueSendComplete => {
                expect_len(payload_type, data, 0)?;
                Self::QueueSendComplete
            }
            PayloadType::DeviceCookieChangeIndication => {
                expect_len(payload_type, data, 0)?;
                Self::DeviceCookieChangeIndication
            }
            PayloadType::ClearDeviceCookieChangeIndication => {
                expect_len(payload_type, data, 0)?;
                Self::ClearDeviceCookieChangeIndication
            }
            PayloadType::SetPushNotificationToken => {
                Self::SetPushNotificationToken(PushToken::decode(data)?)
            }
            PayloadType::SetHighPriorityPushNotificationToken => {
                Self::SetHighPriorityPushNotificationToken(PushToken::decode(data)?)
            }
            PayloadType::DeletePushNotificationToken => {
                if data.len() % 8 != 0 {
                    return Err(PayloadError::DeviceIdListLength(data.len()));
                }
                Self::DeletePushNotificationToken(
                    data.chunks_exact(8)
                        .map(|chunk| {
                            let mut id = [0_u8; 8];
                            id.copy_from_slice(chunk);
                            u64::from_le_bytes(id)
                        })
                        .collect(),
                )
            }
            PayloadType::SetConnectionIdleTimeout => {
                expect_len(payload_type, data, 2)?;
                Self::SetConnectionIdleTimeout(Reader::new(data).u16_le()?)
            }
            PayloadType::CloseError => {
                let mut reader = Reader::new(data);
                let can_reconnect = reader.u8()? != 0;
                Self::CloseError {
                    can_reconnect,
                    message: utf8(payload_type, reader.rest())?,
                }
            }
            PayloadType::Alert => Self::Alert(utf8(payload_type, data)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csp::message::tests::arb_message_box;
    use proptest::prelude::*;

    fn arb_ack() -> impl Strategy<Value = MessageAck> {
        any::<([u8; 8], u64)>().prop_map(|(identity, message_id)| MessageAck {
            identity,
            message_id,
        })
    }

    fn arb_token() -> impl Strategy<Value = PushToken> {
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..=255))
            .prop_map(|(ty, token)| PushToken::new(PushTokenType(ty), token).unwrap())
    }

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..300)
    }

    fn arb_payload() -> impl Strategy<Value = CspPayload> {
        prop_oneof![
            arb_bytes().prop_map(CspPayload::EchoRequest),
            arb_bytes().prop_map(CspPayload::EchoResponse),
            arb_message_box().prop_map(CspPayload::OutgoingMessage),
            arb_message_box().prop_map(CspPayload::IncomingMessage),
            arb_ack().prop_map(CspPayload::OutgoingMessageAck),
            arb_ack().prop_map(CspPayload::IncomingMessageAck),
            Just(CspPayload::UnblockIncomingMessages),
            arb_token().prop_map(CspPayload::SetPushNotificationToken),
            arb_token().prop_map(CspPayload::SetHighPriorityPushNotificationToken),
            proptest::collection::vec(any::<u64>(), 0..40)
                .prop_map(CspPayload::DeletePushNotificationToken),
            any::<u16>().prop_map(CspPayload::SetConnectionIdleTimeout),
            Just(CspPayload::QueueSendComplete),
            arb_bytes().prop_map(CspPayload::LastEphemeralKeyHash),
            Just(CspPayload::DeviceCookieChangeIndication),
            Just(CspPayload::ClearDeviceCookieChangeIndication),
            (any::<bool>(), ".{0,60}").prop_map(|(can_reconnect, message)| {
                CspPayload::CloseError {
                    can_reconnect,
                    message,
                }
            }),
            ".{0,60}".prop_map(CspPayload::Alert),
        ]
    }

    proptest! {
        #[test]
        fn every_payload_round_trips(payload in arb_payload()) {
            let encoded = payload.encode().unwrap();
            prop_assert_eq!(encoded[0], payload.payload_type().as_u8());
            prop_assert_eq!(&encoded[1..4], &[0, 0, 0]);
            let decoded = CspPayload::decode(&encoded, MessagePayloadVersion::WithMetadataBox).unwrap();
            prop_assert_eq!(&decoded, &payload);
        }

        #[test]
        fn message_payloads_without_metadata_round_trip_on_a_legacy_session(mut message in arb_message_box(), incoming: bool) {
            message.metadata.clear();
            let payload = if incoming {
                CspPayload::IncomingMessage(message)
            } else {
                CspPayload::OutgoingMessage(message)
            };
            let encoded = payload.encode().unwrap();
            prop_assert_eq!(CspPayload::decode(&encoded, MessagePayloadVersion::Legacy).unwrap(), payload);
        }

        #[test]
        fn reserved_bytes_are_ignored_on_receipt(payload in arb_payload(), reserved: [u8; 3]) {
            let mut encoded = payload.encode().unwrap();
            encoded[1..4].copy_from_slice(&reserved);
            prop_assert_eq!(CspPayload::decode(&encoded, MessagePayloadVersion::WithMetadataBox).unwrap(), payload);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), legacy: bool) {
            let version = if legacy { MessagePayloadVersion::Legacy } else { MessagePayloadVersion::WithMetadataBox };
            let _ = CspPayload::decode(&bytes, version);
        }

        #[test]
        fn decode_never_panics_for_any_type(ty: u8, data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = vec![ty, 0, 0, 0];
            bytes.extend_from_slice(&data);
            let _ = CspPayload::decode(&bytes, MessagePayloadVersion::WithMetadataBox);
            let _ = CspPayload::decode(&bytes, MessagePayloadVersion::Legacy);
        }
    }

    #[test]
    fn message_ack_layout_by_hand() {
        let ack = MessageAck {
            identity: *b"ECHOECHO",
            message_id: 0x0102_0304_0506_0708,
        };
        // "ECHOECHO" in ASCII, then the id little-endian.
        let expected = hex::decode("4543484f4543484f0807060504030201").unwrap();
        assert_eq!(ack.encode().to_vec(), expected);
        let mut container = vec![0x82, 0, 0, 0];
        container.extend_from_slice(&expected);
        let payload = CspPayload::IncomingMessageAck(ack);
        assert_eq!(payload.encode().unwrap(), container);
        assert_eq!(
            CspPayload::decode(&container, MessagePayloadVersion::WithMetadataBox).unwrap(),
            payload
        );
    }

    #[test]
    fn type_bytes_match_the_spec_table() {
        let expected = [
            (PayloadType::EchoRequest, 0x00),
            (PayloadType::OutgoingMessage, 0x01),
            (PayloadType::IncomingMessage, 0x02),
            (PayloadType::UnblockIncomingMessages, 0x03),
            (PayloadType::SetPushNotificationToken, 0x20),
            (PayloadType::SetHighPriorityPushNotificationToken, 0x24),
            (PayloadType::DeletePushNotificationToken, 0x25),
            (PayloadType::SetConnectionIdleTimeout, 0x30),
            (PayloadType::EchoResponse, 0x80),
            (PayloadType::OutgoingMessageAck, 0x81),
            (PayloadType::IncomingMessageAck, 0x82),
            (PayloadType::QueueSendComplete, 0xd0),
            (PayloadType::LastEphemeralKeyHash, 0xd1),
            (PayloadType::DeviceCookieChangeIndication, 0xd2),
            (PayloadType::ClearDeviceCookieChangeIndication, 0xd3),
            (PayloadType::CloseError, 0xe0),
            (PayloadType::Alert, 0xe1),
        ];
        assert_eq!(expected.len(), PayloadType::ALL.len());
        for (ty, byte) in expected {
            assert_eq!(ty.as_u8(), byte);
            assert_eq!(PayloadType::try_from(byte), Ok(ty));
        }
    }

    #[test]
    fn directions_match_the_spec_table() {
        use PayloadDirection::{Both, ClientToServer, ServerToClient};
        assert_eq!(PayloadType::EchoRequest.direction(), Both);
        assert_eq!(PayloadType::OutgoingMessage.direction(), ClientToServer);
        assert_eq!(PayloadType::OutgoingMessageAck.direction(), ServerToClient);
        assert_eq!(PayloadType::IncomingMessage.direction(), ServerToClient);
        assert_eq!(PayloadType::IncomingMessageAck.direction(), ClientToServer);
        assert_eq!(
            PayloadType::ClearDeviceCookieChangeIndication.direction(),
            ClientToServer
        );
        assert_eq!(
            PayloadType::DeviceCookieChangeIndication.direction(),
            ServerToClient
        );
        assert_eq!(PayloadType::CloseError.direction(), ServerToClient);
    }

    #[test]
    fn obsolete_and_unknown_types_carry_their_byte() {
        for byte in [0x21, 0x22, 0x23, 0x31] {
            assert_eq!(
                CspPayload::decode(&[byte, 0, 0, 0], MessagePayloadVersion::WithMetadataBox),
                Err(PayloadError::ObsoleteType(byte))
            );
        }
        for byte in [0x04, 0x26, 0x83, 0xd4, 0xe2, 0xff] {
            assert_eq!(
                CspPayload::decode(&[byte, 0, 0, 0], MessagePayloadVersion::WithMetadataBox),
                Err(PayloadError::UnknownType(byte))
            );
        }
    }

    #[test]
    fn container_limits() {
        let v = MessagePayloadVersion::WithMetadataBox;
        assert!(matches!(
            CspPayload::decode(&[0x00, 0, 0], v),
            Err(PayloadError::Truncated(_))
        ));
        assert_eq!(
            CspPayload::decode(&[0x00, 0, 0, 0], v),
            Ok(CspPayload::EchoRequest(vec![]))
        );
        let max = CspPayload::EchoRequest(vec![7; MAX_PAYLOAD_DATA_LEN]);
        let encoded = max.encode().unwrap();
        assert_eq!(encoded.len(), 8176);
        assert_eq!(CspPayload::decode(&encoded, v).unwrap(), max);
        assert_eq!(
            CspPayload::EchoRequest(vec![7; MAX_PAYLOAD_DATA_LEN + 1]).encode(),
            Err(PayloadError::TooLarge(8177))
        );
        let mut too_long = encoded;
        too_long.push(0);
        assert_eq!(
            CspPayload::decode(&too_long, v),
            Err(PayloadError::TooLarge(8177))
        );
    }

    #[test]
    fn fixed_and_empty_payloads_reject_other_lengths() {
        let v = MessagePayloadVersion::WithMetadataBox;
        assert_eq!(
            CspPayload::decode(&[0x81, 0, 0, 0, 1, 2], v),
            Err(PayloadError::Length {
                payload_type: PayloadType::OutgoingMessageAck,
                expected: 16,
                actual: 2
            })
        );
        let mut long_ack = vec![0x82, 0, 0, 0];
        long_ack.extend_from_slice(&[b'A'; 17]);
        assert_eq!(
            CspPayload::decode(&long_ack, v),
            Err(PayloadError::Length {
                payload_type: PayloadType::IncomingMessageAck,
                expected: 16,
                actual: 17
            })
        );
        for ty in [0x03, 0xd0, 0xd2, 0xd3] {
            let Err(PayloadError::Length {
                expected: 0,
                actual: 1,
                payload_type,
            }) = CspPayload::decode(&[ty, 0, 0, 0, 9], v)
            else {
                panic!("type {ty:#04x} accepted trailing data");
            };
            assert_eq!(payload_type.as_u8(), ty);
        }
        assert_eq!(
            CspPayload::decode(&[0x30, 0, 0, 0, 30], v),
            Err(PayloadError::Length {
                payload_type: PayloadType::SetConnectionIdleTimeout,
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(
            CspPayload::decode(&[0x30, 0, 0, 0, 0x2c, 0x01], v),
            Ok(CspPayload::SetConnectionIdleTimeout(300))
        );
    }

    #[test]
    fn delete_push_token_list_must_be_whole_u64s() {
        let v = MessagePayloadVersion::WithMetadataBox;
        assert_eq!(
            CspPayload::decode(&[0x25, 0, 0, 0, 1, 2, 3], v),
            Err(PayloadError::DeviceIdListLength(3))
        );
        // Empty list: valid, deletes every other device's token.
        assert_eq!(
            CspPayload::decode(&[0x25, 0, 0, 0], v),
            Ok(CspPayload::DeletePushNotificationToken(vec![]))
        );
        let mut bytes = vec![0x25, 0, 0, 0];
        bytes.extend_from_slice(&hex::decode("0100000000000000ffffffffffffffff").unwrap());
        assert_eq!(
            CspPayload::decode(&bytes, v),
            Ok(CspPayload::DeletePushNotificationToken(vec![1, u64::MAX]))
        );
    }

    #[test]
    fn push_tokens_are_limited_to_255_bytes() {
        let v = MessagePayloadVersion::WithMetadataBox;
        assert_eq!(
            PushToken::new(PushTokenType::FCM, vec![0; 256]),
            Err(PayloadError::TokenTooLong(256))
        );
        let mut bytes = vec![0x20, 0, 0, 0, 0x11];
        bytes.extend_from_slice(&[b'x'; 256]);
        assert_eq!(
            CspPayload::decode(&bytes, v),
            Err(PayloadError::TokenTooLong(256))
        );
        assert!(matches!(
            CspPayload::decode(&[0x24, 0, 0, 0], v),
            Err(PayloadError::Truncated(_))
        ));
        let token = PushToken::new(PushTokenType::HMS, b"tok".to_vec()).unwrap();
        assert_eq!(
            CspPayload::SetHighPriorityPushNotificationToken(token)
                .encode()
                .unwrap(),
            [0x24, 0, 0, 0, 0x13, b't', b'o', b'k']
        );
    }

    #[test]
    fn texts_must_be_utf8() {
        let v = MessagePayloadVersion::WithMetadataBox;
        assert_eq!(
            CspPayload::decode(&[0xe1, 0, 0, 0, 0xff], v),
            Err(PayloadError::InvalidUtf8(PayloadType::Alert))
        );
        assert_eq!(
            CspPayload::decode(&[0xe0, 0, 0, 0, 1, 0xc3], v),
            Err(PayloadError::InvalidUtf8(PayloadType::CloseError))
        );
        assert!(matches!(
            CspPayload::decode(&[0xe0, 0, 0, 0], v),
            Err(PayloadError::Truncated(_))
        ));
        // Any non-zero byte means "may reconnect".
        assert_eq!(
            CspPayload::decode(&[0xe0, 0, 0, 0, 7, b'b', b'y', b'e'], v),
            Ok(CspPayload::CloseError {
                can_reconnect: true,
                message: "bye".to_owned()
            })
        );
        assert_eq!(
            CspPayload::CloseError {
                can_reconnect: false,
                message: "x".to_owned()
            }
            .encode()
            .unwrap(),
            [0xe0, 0, 0, 0, 0, b'x']
        );
    }

    #[test]
    fn malformed_message_payload_is_a_message_error() {
        let v = MessagePayloadVersion::WithMetadataBox;
        assert!(matches!(
            CspPayload::decode(&[0x02, 0, 0, 0, 1, 2, 3], v),
            Err(PayloadError::Message(MessageError::Truncated(_)))
        ));
    }

    #[test]
    fn idle_timeout_range_check() {
        assert_eq!(check_idle_timeout(30), Ok(30));
        assert_eq!(check_idle_timeout(600), Ok(600));
        assert_eq!(check_idle_timeout(DEFAULT_IDLE_TIMEOUT_S), Ok(300));
        assert_eq!(
            check_idle_timeout(29),
            Err(PayloadError::IdleTimeoutOutOfRange(29))
        );
        assert_eq!(
            check_idle_timeout(601),
            Err(PayloadError::IdleTimeoutOutOfRange(601))
        );
    }

    #[test]
    fn container_decode_borrows_data_after_reserved_bytes() {
        let bytes = [0x99, 1, 2, 3, 4, 5];
        let container = PayloadContainer::decode(&bytes).unwrap();
        assert_eq!(container.payload_type, 0x99);
        assert_eq!(container.data, &[4, 5]);
        assert_eq!(
            PayloadContainer {
                payload_type: 0x99,
                data: &[4, 5]
            }
            .encode()
            .unwrap(),
            [0x99, 0, 0, 0, 4, 5]
        );
    }
}
