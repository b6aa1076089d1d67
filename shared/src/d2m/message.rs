//! A whole d2m message: container plus typed payload (spec §2.2–§2.5).

use core::fmt;

use prost::Message as _;

use super::container::{container_with_capacity, Container, ContainerError, PayloadType};
use super::reflect::{
    Reflect, ReflectAck, Reflected, ReflectedAck, StructbufError, REFLECTED_ACK_LEN,
    REFLECT_ACK_LEN,
};
use crate::proto::d2m as pb;

/// Why bytes are not a valid d2m message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum D2mDecodeError {
    /// The container is shorter than 4 or longer than 65 536 bytes.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The type byte is none of the codes of spec §2.3 (unsupported, not malformed).
    #[error("unknown d2m payload type {0:#04x}")]
    UnknownPayloadType(u8),
    /// A protobuf payload does not decode.
    #[error("{payload_type} payload does not decode: {source}")]
    Protobuf {
        /// The container's type.
        payload_type: PayloadType,
        /// The decoder's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// A Tandem extension payload is malformed (`CspClose` and `Wake` carry nothing,
    /// `PushUrl` UTF-8).
    #[error("{payload_type} payload is malformed")]
    Extension {
        /// The container's type.
        payload_type: PayloadType,
    },
    /// A payload type the receiving side never gets (a device reading one only devices send,
    /// `D2mMessage::decode_to_device`).
    #[error("{0} is never sent this way")]
    WrongDirection(PayloadType),
    /// A structbuf payload is malformed.
    #[error("{payload_type} payload is malformed: {source}")]
    Structbuf {
        /// The container's type.
        payload_type: PayloadType,
        /// What was wrong.
        #[source]
        source: StructbufError,
    },
}

/// Why a message cannot be framed; nothing is ever framed into an invalid container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum D2mEncodeError {
    /// The container would exceed 65 536 bytes.
    #[error("{payload_type} would need a {len}-byte container (maximum 65536)")]
    TooLong {
        /// The message's type.
        payload_type: PayloadType,
        /// The length the container would have had.
        len: usize,
    },
    /// A structbuf header is invalid (a `header_length` below the spec's minimum).
    #[error("{payload_type} cannot be encoded: {source}")]
    Structbuf {
        /// The message's type.
        payload_type: PayloadType,
        /// What was wrong.
        #[source]
        source: StructbufError,
    },
}

/// Declares [`D2mMessage`] and its codec from the list of protobuf payloads, so that the variant,
/// the payload type and the generated struct can never disagree.
macro_rules! d2m_message {
    (to_device: [$($s:ident),+ $(,)?], to_mediator: [$($c:ident),+ $(,)?] $(,)?) => {
        /// One d2m message of any of the payload types of spec §2.3.
        ///
        /// Protobuf payloads hold the generated struct, so unknown fields are accepted on decode
        /// as proto3 requires (and dropped) and unknown enum values are kept as numbers.
        /// Exhaustive on purpose: spec §2.3 says no other codes exist (Tandem adds three), so a state machine that
        /// matches on it is told by the compiler when it forgets one.
        #[derive(Clone, PartialEq)]
        pub enum D2mMessage {
            /// 0x00: raw CSP bytes, relayed between the device and the chat server.
            Proxy(Vec<u8>),
            $(
                #[doc = concat!("Protobuf `d2m.", stringify!($s), "` (spec §2.5).")]
                $s(pb::$s),
            )+
$(
                #[doc = concat!("Protobuf `d2m.", stringify!($c), "` (spec §2.5).")]
                $c(pb::$c),
            )+
            /// 0x80 (spec §2.4).
            Reflect(Reflect),
            /// 0x81 (spec §2.4).
            ReflectAck(ReflectAck),
            /// 0x82 (spec §2.4).
            Reflected(Reflected),
            /// 0x83 (spec §2.4).
            ReflectedAck(ReflectedAck),
            /// 0xf0, Tandem: close my chat server connection / closed (docs/protocol.md "CSP on
            /// demand"). Empty payload.
            CspClose,
            /// 0xf1, Tandem: messages wait at the chat server. Empty payload.
            Wake,
            /// 0xf2, Tandem: the URL that wakes this group. Payload: the URL in UTF-8.
            PushUrl(String),
        }

        $(
            impl From<pb::$s> for D2mMessage {
                fn from(m: pb::$s) -> Self {
                    Self::$s(m)
                }
            }
        )+
$(
            impl From<pb::$c> for D2mMessage {
                fn from(m: pb::$c) -> Self {
                    Self::$c(m)
                }
            }
        )+

        impl D2mMessage {
            /// The container type this message travels in.
            #[must_use]
            pub const fn payload_type(&self) -> PayloadType {
                match self {
                    Self::Proxy(_) => PayloadType::Proxy,
                    $(Self::$s(_) => PayloadType::$s,)+
$(Self::$c(_) => PayloadType::$c,)+
                    Self::Reflect(_) => PayloadType::Reflect,
                    Self::ReflectAck(_) => PayloadType::ReflectAck,
                    Self::Reflected(_) => PayloadType::Reflected,
                    Self::ReflectedAck(_) => PayloadType::ReflectedAck,
                    Self::CspClose => PayloadType::CspClose,
                    Self::Wake => PayloadType::Wake,
                    Self::PushUrl(_) => PayloadType::PushUrl,
                }
            }

            /// The encoded payload's length, without the container header.
            fn payload_len(&self) -> usize {
                match self {
                    Self::Proxy(bytes) => bytes.len(),
                    $(Self::$s(m) => m.encoded_len(),)+
$(Self::$c(m) => m.encoded_len(),)+
                    Self::Reflect(r) => r.encoded_len(),
                    Self::ReflectAck(_) => REFLECT_ACK_LEN,
                    Self::Reflected(r) => r.encoded_len(),
                    Self::ReflectedAck(_) => REFLECTED_ACK_LEN,
                    Self::CspClose | Self::Wake => 0,
                    Self::PushUrl(url) => url.len(),
                }
            }

            /// Appends the payload; fails only for a structbuf header below its minimum.
            fn encode_payload_into(&self, out: &mut Vec<u8>) -> Result<(), StructbufError> {
                match self {
                    Self::Proxy(bytes) => out.extend_from_slice(bytes),
                    $(Self::$s(m) => out.extend_from_slice(&m.encode_to_vec()),)+
$(Self::$c(m) => out.extend_from_slice(&m.encode_to_vec()),)+
                    Self::Reflect(r) => r.encode_into(out)?,
                    Self::ReflectAck(a) => a.encode_into(out),
                    Self::Reflected(r) => r.encode_into(out)?,
                    Self::ReflectedAck(a) => a.encode_into(out),
                    Self::CspClose | Self::Wake => {}
                    Self::PushUrl(url) => out.extend_from_slice(url.as_bytes()),
                }
                Ok(())
            }

            /// Decodes a payload whose container has already been split off.
            pub fn decode_payload(
                payload_type: PayloadType,
                payload: &[u8],
            ) -> Result<Self, D2mDecodeError> {
                match Self::decode_to_device(payload_type, payload) {
                    Err(D2mDecodeError::WrongDirection(_)) => {
                        Self::decode_to_mediator(payload_type, payload)
                    }
                    decoded => decoded,
                }
            }

            /// Decodes a payload a mediator may send (S→C and both ways); a type only devices
            /// send is [`D2mDecodeError::WrongDirection`]. A device decodes with this alone, so
            /// its build carries no decoder of the messages it only writes (docs/client.md
            /// "Size").
            pub fn decode_to_device(
                payload_type: PayloadType,
                payload: &[u8],
            ) -> Result<Self, D2mDecodeError> {
                let structbuf = |source| D2mDecodeError::Structbuf { payload_type, source };
                let protobuf = |source| D2mDecodeError::Protobuf { payload_type, source };
                Ok(match payload_type {
                    PayloadType::Proxy => Self::Proxy(payload.to_vec()),
                    $(
                        PayloadType::$s => Self::$s(
                            pb::$s::decode(payload)
                                .map_err(protobuf)?,
                        ),
                    )+
                    PayloadType::ReflectAck => {
                        Self::ReflectAck(ReflectAck::decode(payload).map_err(structbuf)?)
                    }
                    PayloadType::Reflected => {
                        Self::Reflected(Reflected::decode(payload).map_err(structbuf)?)
                    }
                    PayloadType::CspClose | PayloadType::Wake if !payload.is_empty() => {
                        return Err(D2mDecodeError::Extension { payload_type });
                    }
                    PayloadType::CspClose => Self::CspClose,
                    PayloadType::Wake => Self::Wake,
                    PayloadType::PushUrl => Self::PushUrl(
                        String::from_utf8(payload.to_vec())
                            .map_err(|_| D2mDecodeError::Extension { payload_type })?,
                    ),
                    $(PayloadType::$c)|+ | PayloadType::Reflect | PayloadType::ReflectedAck => {
                        return Err(D2mDecodeError::WrongDirection(payload_type));
                    }
                })
            }

            /// Decodes a payload only devices send (`decode_payload` for the rest).
            fn decode_to_mediator(
                payload_type: PayloadType,
                payload: &[u8],
            ) -> Result<Self, D2mDecodeError> {
                let structbuf = |source| D2mDecodeError::Structbuf { payload_type, source };
                let protobuf = |source| D2mDecodeError::Protobuf { payload_type, source };
                Ok(match payload_type {
                    $(
                        PayloadType::$c => Self::$c(
                            pb::$c::decode(payload)
                                .map_err(protobuf)?,
                        ),
                    )+
                    PayloadType::Reflect => {
                        Self::Reflect(Reflect::decode(payload).map_err(structbuf)?)
                    }
                    PayloadType::ReflectedAck => {
                        Self::ReflectedAck(ReflectedAck::decode(payload).map_err(structbuf)?)
                    }
                    _ => return Err(D2mDecodeError::WrongDirection(payload_type)),
                })
            }
        }

        impl fmt::Debug for D2mMessage {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    Self::Proxy(bytes) => {
                        f.debug_struct("Proxy").field("len", &bytes.len()).finish()
                    }
                    $(Self::$s(m) => f.debug_tuple(stringify!($s)).field(m).finish(),)+
$(Self::$c(m) => f.debug_tuple(stringify!($c)).field(m).finish(),)+
                    Self::Reflect(r) => r.fmt(f),
                    Self::ReflectAck(a) => a.fmt(f),
                    Self::Reflected(r) => r.fmt(f),
                    Self::ReflectedAck(a) => a.fmt(f),
                    Self::CspClose => f.write_str("CspClose"),
                    Self::Wake => f.write_str("Wake"),
                    Self::PushUrl(url) => f.debug_tuple("PushUrl").field(&url.len()).finish(),
                }
            }
        }
    };
}

d2m_message!(
    to_device: [
        ServerHello,
        ServerInfo,
        ReflectionQueueDry,
        RolePromotedToLeader,
        DevicesInfo,
        DropDeviceAck,
        BeginTransactionAck,
        CommitTransactionAck,
        TransactionRejected,
        TransactionEnded,
    ],
    to_mediator: [
        ClientHello,
        GetDevicesInfo,
        DropDevice,
        SetSharedDeviceData,
        BeginTransaction,
        CommitTransaction,
    ],
);

impl D2mMessage {
    /// The whole container, ready to send as one binary WebSocket message.
    pub fn encode(&self) -> Result<Vec<u8>, D2mEncodeError> {
        let payload_type = self.payload_type();
        let too_long = |(ContainerError::TooLong { len } | ContainerError::TooShort { len })| {
            D2mEncodeError::TooLong { payload_type, len }
        };
        let mut out =
            container_with_capacity(payload_type.as_u8(), self.payload_len()).map_err(too_long)?;
        self.encode_payload_into(&mut out)
            .map_err(|source| D2mEncodeError::Structbuf {
                payload_type,
                source,
            })?;
        Ok(out)
    }

    /// Decodes one WebSocket message: the container, then the payload its type names.
    pub fn decode(bytes: &[u8]) -> Result<Self, D2mDecodeError> {
        let (payload_type, payload) = split(bytes)?;
        Self::decode_payload(payload_type, payload)
    }

    /// [`D2mMessage::decode`] for a device: only what a mediator sends
    /// ([`D2mMessage::decode_to_device`]).
    pub fn decode_at_device(bytes: &[u8]) -> Result<Self, D2mDecodeError> {
        let (payload_type, payload) = split(bytes)?;
        Self::decode_to_device(payload_type, payload)
    }
}

/// The container's payload type and payload.
fn split(bytes: &[u8]) -> Result<(PayloadType, &[u8]), D2mDecodeError> {
    let container = Container::decode(bytes)?;
    let payload_type = PayloadType::from_u8(container.payload_type)
        .ok_or(D2mDecodeError::UnknownPayloadType(container.payload_type))?;
    Ok((payload_type, container.payload))
}

impl From<Reflect> for D2mMessage {
    fn from(m: Reflect) -> Self {
        Self::Reflect(m)
    }
}

impl From<ReflectAck> for D2mMessage {
    fn from(m: ReflectAck) -> Self {
        Self::ReflectAck(m)
    }
}

impl From<Reflected> for D2mMessage {
    fn from(m: Reflected) -> Self {
        Self::Reflected(m)
    }
}

impl From<ReflectedAck> for D2mMessage {
    fn from(m: ReflectedAck) -> Self {
        Self::ReflectedAck(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::d2m::container::{MAX_CONTAINER_LEN, MAX_PAYLOAD_LEN};
    use crate::d2m::reflect::ReflectFlags;
    use pb::devices_info::augmented_device_info::ConnectionState;
    use pb::devices_info::AugmentedDeviceInfo;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use proptest::sample::select;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn round_trip(m: &D2mMessage) -> D2mMessage {
        let bytes = m.encode().unwrap();
        assert_eq!(bytes.first().copied(), Some(m.payload_type().as_u8()));
        D2mMessage::decode(&bytes).unwrap()
    }

    #[test]
    fn reflect_container_matches_spec_example() {
        let m = D2mMessage::Reflect(Reflect::new(1, ReflectFlags::NONE, vec![0x42; 40]));
        let bytes = m.encode().unwrap();
        assert_eq!(bytes.get(..12).unwrap(), h("80 000000 08 00 0000 01000000"));
        assert_eq!(bytes.len(), 12 + 40);
    }

    /// Hand-encoded protobuf: field 1, wire type 1 (fixed64) = tag 0x09, then 8 LE bytes.
    #[test]
    fn drop_device_uses_fixed64_field_1() {
        let m = D2mMessage::DropDevice(pb::DropDevice {
            device_id: 0x0102_0304_0506_0708,
        });
        assert_eq!(m.encode().unwrap(), h("32 000000 09 0807060504030201"));
        let ack = D2mMessage::decode(&h("33 000000 09 0807060504030201")).unwrap();
        assert_eq!(
            ack,
            D2mMessage::DropDeviceAck(pb::DropDeviceAck {
                device_id: 0x0102_0304_0506_0708
            })
        );
    }

    /// Hand-encoded DevicesInfo: one map entry (key 7 as fixed64 field 1, value field 2) whose
    /// value has encrypted_device_info (1) = aa, last_disconnect_at (4) = 5, policy (3) = 1.
    #[test]
    fn devices_info_decodes_hand_encoded_map_and_oneof() {
        let bytes = h("31 000000 0a12 09 0700000000000000 12 07 0a01aa 2005 1801");
        let expected = pb::DevicesInfo {
            augmented_device_info: [(
                7,
                AugmentedDeviceInfo {
                    encrypted_device_info: vec![0xaa],
                    device_slot_expiration_policy: pb::DeviceSlotExpirationPolicy::Persistent
                        as i32,
                    connection_state: Some(ConnectionState::LastDisconnectAt(5)),
                },
            )]
            .into(),
        };
        assert_eq!(
            D2mMessage::decode(&bytes).unwrap(),
            D2mMessage::DevicesInfo(expected)
        );
    }

    /// Hand-encoded: device_id (1, fixed64) and encrypted_scope (2, bytes).
    #[test]
    fn transaction_rejected_decodes_hand_encoded_fields() {
        let bytes = h("44 000000 09 0100000000000000 12 02 abcd");
        let expected = pb::TransactionRejected {
            device_id: 1,
            encrypted_scope: vec![0xab, 0xcd],
        };
        assert_eq!(
            D2mMessage::decode(&bytes).unwrap(),
            D2mMessage::TransactionRejected(expected)
        );
    }

    /// Hand-encoded ClientHello: version (1) = 0 is omitted; response (2), device_id (3, fixed64),
    /// exhausted policy (4) = 1, expiration policy (5) = 1, device info (6), slot state (7) = 1.
    #[test]
    fn client_hello_decodes_hand_encoded_fields() {
        let bytes = h("11 000000 1201ff 19 0200000000000000 2001 2801 3201ee 3801");
        let expected = pb::ClientHello {
            version: 0,
            response: vec![0xff],
            device_id: 2,
            device_slots_exhausted_policy:
                pb::client_hello::DeviceSlotsExhaustedPolicy::DropLeastRecent as i32,
            device_slot_expiration_policy: pb::DeviceSlotExpirationPolicy::Persistent as i32,
            encrypted_device_info: vec![0xee],
            expected_device_slot_state: pb::DeviceSlotState::Existing as i32,
            tandem_features: 0,
        };
        assert_eq!(
            D2mMessage::decode(&bytes).unwrap(),
            D2mMessage::ClientHello(expected)
        );
    }

    #[test]
    fn empty_messages_accept_unknown_fields() {
        // Field 1 varint 1 and field 15 bytes "x": unknown to an empty message, valid protobuf.
        for code in [0x20, 0x21, 0x30, 0x41, 0x42, 0x43] {
            let mut bytes = vec![code, 0, 0, 0];
            bytes.extend(h("0801 7a0178"));
            let m = D2mMessage::decode(&bytes).unwrap();
            assert_eq!(m.payload_type().as_u8(), code);
            // Re-encoding drops the unknown fields.
            assert_eq!(m.encode().unwrap(), [code, 0, 0, 0]);
        }
    }

    #[test]
    fn server_hello_accepts_unknown_field() {
        let m = D2mMessage::decode(&h("10 000000 0800 4a0101 1a01aa")).unwrap();
        assert_eq!(
            m,
            D2mMessage::ServerHello(pb::ServerHello {
                version: 0,
                esk: vec![],
                challenge: vec![0xaa]
            })
        );
    }

    #[test]
    fn too_short_container_is_a_container_error() {
        assert_eq!(
            D2mMessage::decode(&[0x80, 0, 0]),
            Err(D2mDecodeError::Container(ContainerError::TooShort {
                len: 3
            }))
        );
    }

    #[test]
    fn too_long_container_is_a_container_error() {
        let bytes = vec![0_u8; MAX_CONTAINER_LEN + 1];
        assert_eq!(
            D2mMessage::decode(&bytes),
            Err(D2mDecodeError::Container(ContainerError::TooLong {
                len: MAX_CONTAINER_LEN + 1
            }))
        );
    }

    #[test]
    fn unknown_type_carries_the_byte() {
        assert_eq!(
            D2mMessage::decode(&[0x13, 0, 0, 0]),
            Err(D2mDecodeError::UnknownPayloadType(0x13))
        );
        assert_eq!(
            D2mMessage::decode(&[0xff, 0, 0, 0, 1]),
            Err(D2mDecodeError::UnknownPayloadType(0xff))
        );
    }

    #[test]
    fn bad_protobuf_carries_the_type() {
        // Tag 0x0a (field 1, bytes) with a length past the end.
        let err = D2mMessage::decode(&h("31 000000 0a05")).unwrap_err();
        assert!(
            matches!(
                err,
                D2mDecodeError::Protobuf {
                    payload_type: PayloadType::DevicesInfo,
                    ..
                }
            ),
            "{err:?}"
        );
        // Invalid wire type 7 even in an empty message.
        let err = D2mMessage::decode(&h("20 000000 0f")).unwrap_err();
        assert!(matches!(
            err,
            D2mDecodeError::Protobuf {
                payload_type: PayloadType::ReflectionQueueDry,
                ..
            }
        ));
    }

    #[test]
    fn bad_structbuf_carries_type_and_cause() {
        assert_eq!(
            D2mMessage::decode(&h("83 000000 00000000 01000000 00")),
            Err(D2mDecodeError::Structbuf {
                payload_type: PayloadType::ReflectedAck,
                source: StructbufError::TrailingBytes {
                    expected: 8,
                    actual: 9
                },
            })
        );
        assert_eq!(
            D2mMessage::decode(&h("82 000000 08 00 0000 01000000 0000000000000000")),
            Err(D2mDecodeError::Structbuf {
                payload_type: PayloadType::Reflected,
                source: StructbufError::HeaderTooShort {
                    header_length: 8,
                    min: 16
                },
            })
        );
        let err = D2mMessage::decode(&h("81 000000 00")).unwrap_err();
        assert!(matches!(
            err,
            D2mDecodeError::Structbuf {
                payload_type: PayloadType::ReflectAck,
                source: StructbufError::Truncated(_)
            }
        ));
    }

    #[test]
    fn encode_refuses_oversize_proxy_and_reflect() {
        let m = D2mMessage::Proxy(vec![0; MAX_PAYLOAD_LEN + 1]);
        assert_eq!(
            m.encode(),
            Err(D2mEncodeError::TooLong {
                payload_type: PayloadType::Proxy,
                len: MAX_CONTAINER_LEN + 1
            })
        );
        assert_eq!(
            D2mMessage::Proxy(vec![0; MAX_PAYLOAD_LEN])
                .encode()
                .unwrap()
                .len(),
            MAX_CONTAINER_LEN
        );

        let m = D2mMessage::Reflect(Reflect::new(
            1,
            ReflectFlags::NONE,
            vec![0; MAX_PAYLOAD_LEN - 7],
        ));
        assert_eq!(
            m.encode(),
            Err(D2mEncodeError::TooLong {
                payload_type: PayloadType::Reflect,
                len: MAX_CONTAINER_LEN + 1
            })
        );
        let m = D2mMessage::Reflected(Reflected::new(
            1,
            ReflectFlags::NONE,
            0,
            vec![0; MAX_PAYLOAD_LEN - 16],
        ));
        assert_eq!(m.encode().unwrap().len(), MAX_CONTAINER_LEN);
    }

    #[test]
    fn encode_refuses_oversize_protobuf() {
        let m = D2mMessage::SetSharedDeviceData(pb::SetSharedDeviceData {
            encrypted_shared_device_data: vec![0; MAX_PAYLOAD_LEN],
        });
        let err = m.encode().unwrap_err();
        // 1 tag byte + 3 length bytes + data.
        assert_eq!(
            err,
            D2mEncodeError::TooLong {
                payload_type: PayloadType::SetSharedDeviceData,
                len: MAX_CONTAINER_LEN + 4
            }
        );
    }

    #[test]
    fn encode_refuses_invalid_structbuf_header() {
        let mut r = Reflect::new(1, ReflectFlags::NONE, vec![]);
        r.header_length = 4;
        assert_eq!(
            D2mMessage::Reflect(r).encode(),
            Err(D2mEncodeError::Structbuf {
                payload_type: PayloadType::Reflect,
                source: StructbufError::HeaderTooShort {
                    header_length: 4,
                    min: 8
                },
            })
        );
    }

    #[test]
    fn a_device_decodes_what_mediators_send_and_refuses_the_rest_by_direction() {
        for t in PayloadType::ALL {
            let bytes = [t.as_u8(), 0, 0, 0];
            let to_mediator = matches!(
                t,
                PayloadType::ClientHello
                    | PayloadType::GetDevicesInfo
                    | PayloadType::DropDevice
                    | PayloadType::SetSharedDeviceData
                    | PayloadType::BeginTransaction
                    | PayloadType::CommitTransaction
                    | PayloadType::Reflect
                    | PayloadType::ReflectedAck
            );
            let at_device = D2mMessage::decode_at_device(&bytes);
            if to_mediator {
                assert_eq!(at_device, Err(D2mDecodeError::WrongDirection(t)), "{t}");
            } else {
                assert_eq!(at_device, D2mMessage::decode(&bytes), "{t}");
            }
        }
    }

    #[test]
    fn proxy_debug_shows_length_only() {
        let s = format!("{:?}", D2mMessage::Proxy(vec![0x5a; 3]));
        assert_eq!(s, "Proxy { len: 3 }");
    }

    #[test]
    fn every_payload_type_has_a_variant() {
        // Decoding an empty payload of every type either succeeds with that type or fails as a
        // structbuf error of that type; never as an unknown type.
        for t in PayloadType::ALL {
            match D2mMessage::decode(&[t.as_u8(), 0, 0, 0]) {
                Ok(m) => assert_eq!(m.payload_type(), t),
                Err(D2mDecodeError::Structbuf { payload_type, .. }) => assert_eq!(payload_type, t),
                Err(e) => panic!("{t}: {e}"),
            }
        }
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..max)
    }

    fn arb_augmented() -> impl Strategy<Value = AugmentedDeviceInfo> {
        let state = prop_oneof![
            Just(None),
            any::<u64>().prop_map(|t| Some(ConnectionState::ConnectedSince(t))),
            any::<u64>().prop_map(|t| Some(ConnectionState::LastDisconnectAt(t))),
        ];
        (bytes(64), any::<i32>(), state).prop_map(
            |(encrypted_device_info, policy, connection_state)| AugmentedDeviceInfo {
                encrypted_device_info,
                device_slot_expiration_policy: policy,
                connection_state,
            },
        )
    }

    fn arb_message() -> impl Strategy<Value = D2mMessage> {
        prop_oneof![
            bytes(256).prop_map(D2mMessage::Proxy),
            (any::<u32>(), bytes(40), bytes(40)).prop_map(|(version, esk, challenge)| {
                pb::ServerHello {
                    version,
                    esk,
                    challenge,
                }
                .into()
            }),
            (
                any::<u32>(),
                bytes(80),
                any::<u64>(),
                any::<i32>(),
                any::<i32>(),
                bytes(80),
                any::<i32>()
            )
                .prop_map(
                    |(version, response, device_id, exhausted, expiration, info, state)| {
                        pb::ClientHello {
                            version,
                            response,
                            device_id,
                            device_slots_exhausted_policy: exhausted,
                            device_slot_expiration_policy: expiration,
                            encrypted_device_info: info,
                            expected_device_slot_state: state,
                            tandem_features: 0,
                        }
                        .into()
                    }
                ),
            (
                any::<u32>(),
                any::<i32>(),
                bytes(80),
                any::<u64>(),
                any::<u32>()
            )
                .prop_map(
                    |(
                        max_device_slots,
                        device_slot_state,
                        data,
                        current_time,
                        reflection_queue_length,
                    )| pb::ServerInfo {
                        max_device_slots,
                        device_slot_state,
                        encrypted_shared_device_data: data,
                        current_time,
                        reflection_queue_length,
                        tandem_features: 0,
                    }
                    .into()
                ),
            Just(pb::ReflectionQueueDry {}.into()),
            Just(pb::RolePromotedToLeader {}.into()),
            Just(pb::GetDevicesInfo {}.into()),
            btree_map(any::<u64>(), arb_augmented(), 0..6).prop_map(|augmented_device_info| {
                pb::DevicesInfo {
                    augmented_device_info,
                }
                .into()
            }),
            any::<u64>().prop_map(|device_id| pb::DropDevice { device_id }.into()),
            any::<u64>().prop_map(|device_id| pb::DropDeviceAck { device_id }.into()),
            bytes(80).prop_map(|d| pb::SetSharedDeviceData {
                encrypted_shared_device_data: d
            }
            .into()),
            (bytes(80), any::<u32>()).prop_map(|(encrypted_scope, ttl)| pb::BeginTransaction {
                encrypted_scope,
                ttl
            }
            .into()),
            Just(pb::BeginTransactionAck {}.into()),
            Just(pb::CommitTransaction {}.into()),
            Just(pb::CommitTransactionAck {}.into()),
            (any::<u64>(), bytes(80)).prop_map(|(device_id, encrypted_scope)| {
                pb::TransactionRejected {
                    device_id,
                    encrypted_scope,
                }
                .into()
            }),
            (any::<u64>(), bytes(80)).prop_map(|(device_id, encrypted_scope)| {
                pb::TransactionEnded {
                    device_id,
                    encrypted_scope,
                }
                .into()
            }),
            crate::d2m::reflect::tests::arb_reflect().prop_map(D2mMessage::from),
            (any::<u32>(), any::<u64>()).prop_map(|(reflect_id, timestamp)| ReflectAck {
                reflect_id,
                timestamp
            }
            .into()),
            crate::d2m::reflect::tests::arb_reflected().prop_map(D2mMessage::from),
            any::<u32>().prop_map(|reflected_id| ReflectedAck { reflected_id }.into()),
        ]
    }

    proptest! {
        #[test]
        fn every_variant_round_trips(m in arb_message()) {
            prop_assert_eq!(round_trip(&m), m);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in bytes(300)) {
            let _ = D2mMessage::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_known_type_with_arbitrary_payload(
            t in select(PayloadType::ALL.to_vec()),
            payload in bytes(300),
        ) {
            let mut bytes = vec![t.as_u8(), 0, 0, 0];
            bytes.extend(payload);
            if let Ok(m) = D2mMessage::decode(&bytes) {
                prop_assert_eq!(m.payload_type(), t);
            }
        }
    }
}
