//! The d2m container (spec §2.2): `type(1) ‖ reserved(3) ‖ payload`, one per WebSocket
//! message.

use core::fmt;

/// Bytes before the payload: the type byte and three reserved bytes (spec §2.2).
pub const CONTAINER_HEADER_LEN: usize = 4;
/// Smallest valid container: a header with an empty payload (spec §2.1).
pub const MIN_CONTAINER_LEN: usize = CONTAINER_HEADER_LEN;
/// Largest valid container (spec §2.1, `MEDIATOR_FRAME_MAX_BYTE_LENGTH`).
pub const MAX_CONTAINER_LEN: usize = 65_536;
/// Largest payload that fits a container (spec §2.1).
pub const MAX_PAYLOAD_LEN: usize = MAX_CONTAINER_LEN - CONTAINER_HEADER_LEN;
/// Largest encrypted `d2d.Envelope` (nonce ‖ tag ‖ ct) that still fits a `Reflected` with its
/// 16-byte header (spec §2.1). A `Reflect` could carry 8 bytes more, but could not be delivered.
pub const MAX_ENCRYPTED_ENVELOPE_LEN: usize = 65_516;
/// Largest plain `d2d.Envelope` whose nonce-ahead secretbox still fits a `Reflected`.
///
/// The spec's table says 65 492, but that subtracts only the 24-byte nonce from
/// [`MAX_ENCRYPTED_ENVELOPE_LEN`]; with the 16-byte tag the true ceiling is 65 476
/// (docs/protocol.md).
pub const MAX_PLAIN_ENVELOPE_LEN: usize =
    MAX_ENCRYPTED_ENVELOPE_LEN - crate::crypto::NONCE_LEN - crate::crypto::TAG_LEN;

/// Why bytes are not a container, or a payload does not fit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// Fewer than [`MIN_CONTAINER_LEN`] bytes.
    #[error("d2m container too short: {len} bytes, minimum {MIN_CONTAINER_LEN}")]
    TooShort {
        /// Length of the whole container.
        len: usize,
    },
    /// More than [`MAX_CONTAINER_LEN`] bytes.
    #[error("d2m container too long: {len} bytes, maximum {MAX_CONTAINER_LEN}")]
    TooLong {
        /// Length of the whole container (header included).
        len: usize,
    },
}

/// A container split into its raw type byte and payload; the type is not interpreted here, so an
/// unknown type can still be logged or skipped by the caller.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Container<'a> {
    /// The type byte (spec §2.3); see [`PayloadType::from_u8`].
    pub payload_type: u8,
    /// Everything after the four header bytes.
    pub payload: &'a [u8],
}

impl fmt::Debug for Container<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("payload_type", &format_args!("{:#04x}", self.payload_type))
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl<'a> Container<'a> {
    /// Splits a WebSocket message into type and payload, ignoring the reserved bytes (§2.2).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ContainerError> {
        if bytes.len() > MAX_CONTAINER_LEN {
            return Err(ContainerError::TooLong { len: bytes.len() });
        }
        match bytes {
            [payload_type, _, _, _, payload @ ..] => Ok(Self {
                payload_type: *payload_type,
                payload,
            }),
            _ => Err(ContainerError::TooShort { len: bytes.len() }),
        }
    }

    /// Frames the payload, reserved bytes zero. Refuses a payload over [`MAX_PAYLOAD_LEN`] rather
    /// than produce a container the peer must reject.
    pub fn encode(&self) -> Result<Vec<u8>, ContainerError> {
        let mut out = container_with_capacity(self.payload_type, self.payload.len())?;
        out.extend_from_slice(self.payload);
        Ok(out)
    }
}

/// A buffer holding the header of a container whose payload will be `payload_len` bytes, for
/// encoders that write the payload in place.
pub(crate) fn container_with_capacity(
    payload_type: u8,
    payload_len: usize,
) -> Result<Vec<u8>, ContainerError> {
    let len = payload_len.saturating_add(CONTAINER_HEADER_LEN);
    if len > MAX_CONTAINER_LEN {
        return Err(ContainerError::TooLong { len });
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[payload_type, 0, 0, 0]);
    Ok(out)
}

/// How the payload is encoded (spec §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadEncoding {
    /// Raw CSP bytes.
    Raw,
    /// A protobuf message of package `d2m`.
    Protobuf,
    /// A fixed little-endian layout (spec §2.4).
    Structbuf,
}

/// Every payload type code of spec §2.3, and Tandem's three extensions (0xf0–0xf2,
/// docs/protocol.md "CSP on demand"); no other codes exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PayloadType {
    /// 0x00, C↔S: raw CSP bytes.
    Proxy = 0x00,
    /// 0x10, S→C.
    ServerHello = 0x10,
    /// 0x11, C→S.
    ClientHello = 0x11,
    /// 0x12, S→C.
    ServerInfo = 0x12,
    /// 0x20, S→C.
    ReflectionQueueDry = 0x20,
    /// 0x21, S→C.
    RolePromotedToLeader = 0x21,
    /// 0x30, C→S.
    GetDevicesInfo = 0x30,
    /// 0x31, S→C.
    DevicesInfo = 0x31,
    /// 0x32, C→S.
    DropDevice = 0x32,
    /// 0x33, S→C.
    DropDeviceAck = 0x33,
    /// 0x34, C→S.
    SetSharedDeviceData = 0x34,
    /// 0x40, C→S.
    BeginTransaction = 0x40,
    /// 0x41, S→C.
    BeginTransactionAck = 0x41,
    /// 0x42, C→S.
    CommitTransaction = 0x42,
    /// 0x43, S→C.
    CommitTransactionAck = 0x43,
    /// 0x44, S→C.
    TransactionRejected = 0x44,
    /// 0x45, S→C.
    TransactionEnded = 0x45,
    /// 0x80, C→S, structbuf.
    Reflect = 0x80,
    /// 0x81, S→C, structbuf.
    ReflectAck = 0x81,
    /// 0x82, S→C, structbuf.
    Reflected = 0x82,
    /// 0x83, C→S, structbuf.
    ReflectedAck = 0x83,
    /// 0xf0, C→S, Tandem extension (docs/protocol.md "CSP on demand").
    CspClose = 0xf0,
    /// 0xf1, S→C, Tandem extension.
    Wake = 0xf1,
    /// 0xf2, S→C, Tandem extension.
    PushUrl = 0xf2,
}

impl PayloadType {
    /// Every payload type, in code order.
    pub const ALL: [Self; 24] = [
        Self::Proxy,
        Self::ServerHello,
        Self::ClientHello,
        Self::ServerInfo,
        Self::ReflectionQueueDry,
        Self::RolePromotedToLeader,
        Self::GetDevicesInfo,
        Self::DevicesInfo,
        Self::DropDevice,
        Self::DropDeviceAck,
        Self::SetSharedDeviceData,
        Self::BeginTransaction,
        Self::BeginTransactionAck,
        Self::CommitTransaction,
        Self::CommitTransactionAck,
        Self::TransactionRejected,
        Self::TransactionEnded,
        Self::Reflect,
        Self::ReflectAck,
        Self::Reflected,
        Self::ReflectedAck,
        Self::CspClose,
        Self::Wake,
        Self::PushUrl,
    ];

    /// The type byte.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The payload type of a type byte; `None` for a code the spec does not define.
    #[must_use]
    pub const fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0x00 => Self::Proxy,
            0x10 => Self::ServerHello,
            0x11 => Self::ClientHello,
            0x12 => Self::ServerInfo,
            0x20 => Self::ReflectionQueueDry,
            0x21 => Self::RolePromotedToLeader,
            0x30 => Self::GetDevicesInfo,
            0x31 => Self::DevicesInfo,
            0x32 => Self::DropDevice,
            0x33 => Self::DropDeviceAck,
            0x34 => Self::SetSharedDeviceData,
            0x40 => Self::BeginTransaction,
            0x41 => Self::BeginTransactionAck,
            0x42 => Self::CommitTransaction,
            0x43 => Self::CommitTransactionAck,
            0x44 => Self::TransactionRejected,
            0x45 => Self::TransactionEnded,
            0x80 => Self::Reflect,
            0x81 => Self::ReflectAck,
            0x82 => Self::Reflected,
            0x83 => Self::ReflectedAck,
            0xf0 => Self::CspClose,
            0xf1 => Self::Wake,
            0xf2 => Self::PushUrl,
            _ => return None,
        })
    }

    /// The name used for this type in logs, the conformance shim and docs (spec §2.3, with
    /// `proxy` capitalised like the others).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Proxy => "Proxy",
            Self::ServerHello => "ServerHello",
            Self::ClientHello => "ClientHello",
            Self::ServerInfo => "ServerInfo",
            Self::ReflectionQueueDry => "ReflectionQueueDry",
            Self::RolePromotedToLeader => "RolePromotedToLeader",
            Self::GetDevicesInfo => "GetDevicesInfo",
            Self::DevicesInfo => "DevicesInfo",
            Self::DropDevice => "DropDevice",
            Self::DropDeviceAck => "DropDeviceAck",
            Self::SetSharedDeviceData => "SetSharedDeviceData",
            Self::BeginTransaction => "BeginTransaction",
            Self::BeginTransactionAck => "BeginTransactionAck",
            Self::CommitTransaction => "CommitTransaction",
            Self::CommitTransactionAck => "CommitTransactionAck",
            Self::TransactionRejected => "TransactionRejected",
            Self::TransactionEnded => "TransactionEnded",
            Self::Reflect => "Reflect",
            Self::ReflectAck => "ReflectAck",
            Self::Reflected => "Reflected",
            Self::ReflectedAck => "ReflectedAck",
            Self::CspClose => "CspClose",
            Self::Wake => "Wake",
            Self::PushUrl => "PushUrl",
        }
    }

    /// The inverse of [`PayloadType::name`] (exact, case-sensitive).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// How this type's payload is encoded (spec §2.3).
    #[must_use]
    pub const fn encoding(self) -> PayloadEncoding {
        match self {
            Self::Proxy | Self::CspClose | Self::Wake | Self::PushUrl => PayloadEncoding::Raw,
            Self::Reflect | Self::ReflectAck | Self::Reflected | Self::ReflectedAck => {
                PayloadEncoding::Structbuf
            }
            _ => PayloadEncoding::Protobuf,
        }
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), self.as_u8())
    }
}

impl From<PayloadType> for u8 {
    fn from(t: PayloadType) -> Self {
        t.as_u8()
    }
}

impl TryFrom<u8> for PayloadType {
    type Error = u8;

    /// Fails with the byte itself when the code is unknown.
    fn try_from(code: u8) -> Result<Self, u8> {
        Self::from_u8(code).ok_or(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn size_budget_matches_spec_table() {
        assert_eq!(MAX_CONTAINER_LEN, 65_536);
        assert_eq!(MAX_PAYLOAD_LEN, 65_532);
        assert_eq!(MAX_ENCRYPTED_ENVELOPE_LEN, 65_532 - 16);
        assert_eq!(MAX_PLAIN_ENVELOPE_LEN, 65_476);
        assert_eq!(MIN_CONTAINER_LEN, 4);
    }

    #[test]
    fn codes_and_names_match_spec_table() {
        // Spec §2.3, transcribed by hand.
        let table: [(u8, &str); 24] = [
            (0x00, "Proxy"),
            (0x10, "ServerHello"),
            (0x11, "ClientHello"),
            (0x12, "ServerInfo"),
            (0x20, "ReflectionQueueDry"),
            (0x21, "RolePromotedToLeader"),
            (0x30, "GetDevicesInfo"),
            (0x31, "DevicesInfo"),
            (0x32, "DropDevice"),
            (0x33, "DropDeviceAck"),
            (0x34, "SetSharedDeviceData"),
            (0x40, "BeginTransaction"),
            (0x41, "BeginTransactionAck"),
            (0x42, "CommitTransaction"),
            (0x43, "CommitTransactionAck"),
            (0x44, "TransactionRejected"),
            (0x45, "TransactionEnded"),
            (0x80, "Reflect"),
            (0x81, "ReflectAck"),
            (0x82, "Reflected"),
            (0x83, "ReflectedAck"),
            // Tandem's extensions (docs/protocol.md "CSP on demand").
            (0xf0, "CspClose"),
            (0xf1, "Wake"),
            (0xf2, "PushUrl"),
        ];
        for (code, name) in table {
            let t = PayloadType::from_u8(code).unwrap();
            assert_eq!(t.as_u8(), code);
            assert_eq!(t.name(), name);
            assert_eq!(PayloadType::from_name(name), Some(t));
            assert_eq!(PayloadType::try_from(code), Ok(t));
        }
        let known = (0..=255_u8)
            .filter(|c| PayloadType::from_u8(*c).is_some())
            .count();
        assert_eq!(known, 24);
        assert_eq!(PayloadType::ALL.len(), 24);
    }

    #[test]
    fn unknown_codes_and_names_are_refused() {
        assert_eq!(PayloadType::from_u8(0x01), None);
        assert_eq!(PayloadType::from_u8(0x84), None);
        assert_eq!(PayloadType::from_u8(0xff), None);
        assert_eq!(PayloadType::try_from(0x13), Err(0x13));
        assert_eq!(PayloadType::from_name("proxy"), None);
        assert_eq!(PayloadType::from_name("REFLECT"), None);
        assert_eq!(PayloadType::from_name(""), None);
    }

    #[test]
    fn encodings_follow_spec_table() {
        assert_eq!(PayloadType::Proxy.encoding(), PayloadEncoding::Raw);
        assert_eq!(
            PayloadType::ReflectedAck.encoding(),
            PayloadEncoding::Structbuf
        );
        assert_eq!(PayloadType::Reflect.encoding(), PayloadEncoding::Structbuf);
        assert_eq!(
            PayloadType::TransactionEnded.encoding(),
            PayloadEncoding::Protobuf
        );
        assert_eq!(
            PayloadType::ServerHello.encoding(),
            PayloadEncoding::Protobuf
        );
        assert_eq!(
            PayloadType::ALL
                .iter()
                .filter(|t| t.encoding() == PayloadEncoding::Protobuf)
                .count(),
            16,
            "spec §2.3's sixteen (Tandem's three are raw)"
        );
    }

    #[test]
    fn reserved_bytes_are_zero_on_encode_and_ignored_on_decode() {
        let bytes = Container {
            payload_type: 0x83,
            payload: &[9, 8],
        }
        .encode()
        .unwrap();
        assert_eq!(bytes, [0x83, 0, 0, 0, 9, 8]);
        let c = Container::decode(&[0x83, 0xaa, 0xbb, 0xcc, 9, 8]).unwrap();
        assert_eq!(
            c,
            Container {
                payload_type: 0x83,
                payload: &[9, 8]
            }
        );
    }

    #[test]
    fn empty_payload_is_the_minimum_container() {
        let c = Container::decode(&[0x20, 0, 0, 0]).unwrap();
        assert_eq!(c.payload_type, 0x20);
        assert!(c.payload.is_empty());
    }

    #[test]
    fn short_container_is_refused() {
        for len in 0..4 {
            let bytes = vec![0_u8; len];
            assert_eq!(
                Container::decode(&bytes),
                Err(ContainerError::TooShort { len })
            );
        }
    }

    #[test]
    fn long_container_is_refused_and_limit_is_accepted() {
        let max = vec![0_u8; MAX_CONTAINER_LEN];
        assert_eq!(
            Container::decode(&max).unwrap().payload.len(),
            MAX_PAYLOAD_LEN
        );
        let over = vec![0_u8; MAX_CONTAINER_LEN + 1];
        assert_eq!(
            Container::decode(&over),
            Err(ContainerError::TooLong {
                len: MAX_CONTAINER_LEN + 1
            })
        );
    }

    #[test]
    fn encode_refuses_payload_over_limit() {
        let payload = vec![0_u8; MAX_PAYLOAD_LEN + 1];
        let c = Container {
            payload_type: 0,
            payload: &payload,
        };
        assert_eq!(
            c.encode(),
            Err(ContainerError::TooLong {
                len: MAX_CONTAINER_LEN + 1
            })
        );
        let payload = vec![0_u8; MAX_PAYLOAD_LEN];
        assert_eq!(
            Container {
                payload_type: 0,
                payload: &payload
            }
            .encode()
            .unwrap()
            .len(),
            MAX_CONTAINER_LEN
        );
    }

    #[test]
    fn debug_shows_length_not_bytes() {
        let c = Container {
            payload_type: 0x80,
            payload: &[0xde, 0xad],
        };
        assert_eq!(
            format!("{c:?}"),
            "Container { payload_type: 0x80, payload_len: 2 }"
        );
    }

    proptest! {
        #[test]
        fn container_round_trips(
            payload_type: u8,
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let c = Container { payload_type, payload: &payload };
            let bytes = c.encode().unwrap();
            prop_assert_eq!(Container::decode(&bytes).unwrap(), c);
        }

        #[test]
        fn container_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Container::decode(&bytes);
        }
    }
}
