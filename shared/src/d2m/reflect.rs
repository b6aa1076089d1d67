//! The four structbuf payloads of spec §2.4: `Reflect`, `ReflectAck`, `Reflected`, `ReflectedAck`.
//!
//! `Reflect` and `Reflected` start with a `header_length` byte so that the header can grow: a
//! decoder skips header bytes it does not know, and the envelope starts at `header_length`.

use core::fmt;

use crate::codec::{Reader, Truncated};

/// Header length of a `Reflect` as sent today, and the smallest accepted (spec §2.4).
pub const REFLECT_HEADER_LEN: u8 = 8;
/// Header length of a `Reflected` as sent today, and the smallest accepted (spec §2.4).
pub const REFLECTED_HEADER_LEN: u8 = 16;
/// Size of a `ReflectAck` payload (spec §2.4).
pub const REFLECT_ACK_LEN: usize = 16;
/// Size of a `ReflectedAck` payload (spec §2.4).
pub const REFLECTED_ACK_LEN: usize = 8;

/// Why a structbuf payload is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StructbufError {
    /// The payload ended inside a field, or before the `header_length` it announced.
    #[error(transparent)]
    Truncated(#[from] Truncated),
    /// `header_length` is smaller than the fields the spec defines.
    #[error("header length {header_length} is below the minimum {min}")]
    HeaderTooShort {
        /// The announced header length.
        header_length: u8,
        /// The smallest valid header length for this payload.
        min: u8,
    },
    /// A fixed-size payload has bytes after its last field.
    #[error("fixed-size payload has {actual} bytes, expected {expected}")]
    TrailingBytes {
        /// The payload's fixed size.
        expected: usize,
        /// The size received.
        actual: usize,
    },
}

/// The `flags` field of `Reflect` and `Reflected`; unknown bits are kept as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReflectFlags(pub u16);

impl ReflectFlags {
    /// No flag set: the message is stored in every sibling's reflection queue and acked.
    pub const NONE: Self = Self(0);
    /// Deliver only to devices online now; no `ReflectAck`, no `ReflectedAck` (spec §5).
    pub const EPHEMERAL: Self = Self(0x0001);

    /// Whether every bit of `other` is set.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the ephemeral bit is set.
    #[must_use]
    pub const fn is_ephemeral(self) -> bool {
        self.contains(Self::EPHEMERAL)
    }
}

impl core::ops::BitOr for ReflectFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Checks a decoded header length and skips the header bytes this version does not know.
fn skip_header(r: &mut Reader<'_>, header_length: u8, min: u8) -> Result<(), StructbufError> {
    if header_length < min {
        return Err(StructbufError::HeaderTooShort { header_length, min });
    }
    r.take(usize::from(header_length - min))?;
    Ok(())
}

/// Checks `header_length` before encoding and returns how many zero bytes pad the known fields
/// up to it.
fn check_header(header_length: u8, min: u8) -> Result<usize, StructbufError> {
    if header_length < min {
        return Err(StructbufError::HeaderTooShort { header_length, min });
    }
    Ok(usize::from(header_length - min))
}

/// Refuses bytes after a fixed-size payload's last field.
fn expect_end(r: &Reader<'_>, expected: usize) -> Result<(), StructbufError> {
    if r.remaining() == 0 {
        Ok(())
    } else {
        Err(StructbufError::TrailingBytes {
            expected,
            actual: expected.saturating_add(r.remaining()),
        })
    }
}

/// Reflect (0x80, C→S): an encrypted `d2d.Envelope` for every other device of the group.
#[derive(Clone, PartialEq, Eq)]
pub struct Reflect {
    /// Bytes before the envelope; at least [`REFLECT_HEADER_LEN`]. Bytes past the known fields
    /// are skipped on decode and written as zeros on encode.
    pub header_length: u8,
    /// Flags; see [`ReflectFlags::EPHEMERAL`].
    pub flags: ReflectFlags,
    /// Unique per connection, echoed in the `ReflectAck` (spec §5: desktop starts at 1).
    pub reflect_id: u32,
    /// `nonce(24) ‖ secretbox_DGRK(d2d.Envelope)`; not interpreted here.
    pub envelope: Vec<u8>,
}

impl fmt::Debug for Reflect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reflect")
            .field("header_length", &self.header_length)
            .field("flags", &self.flags)
            .field("reflect_id", &self.reflect_id)
            .field("envelope_len", &self.envelope.len())
            .finish()
    }
}

impl Reflect {
    /// A reflect with today's header length.
    #[must_use]
    pub const fn new(reflect_id: u32, flags: ReflectFlags, envelope: Vec<u8>) -> Self {
        Self {
            header_length: REFLECT_HEADER_LEN,
            flags,
            reflect_id,
            envelope,
        }
    }

    /// The encoded payload's length.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        usize::from(self.header_length).saturating_add(self.envelope.len())
    }

    /// Appends the payload; fails only for a `header_length` below [`REFLECT_HEADER_LEN`].
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), StructbufError> {
        let padding = check_header(self.header_length, REFLECT_HEADER_LEN)?;
        out.push(self.header_length);
        out.push(0);
        out.extend_from_slice(&self.flags.0.to_le_bytes());
        out.extend_from_slice(&self.reflect_id.to_le_bytes());
        out.resize(out.len().saturating_add(padding), 0);
        out.extend_from_slice(&self.envelope);
        Ok(())
    }

    /// Decodes the payload; the reserved byte is ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, StructbufError> {
        let mut r = Reader::new(payload);
        let header_length = r.u8()?;
        let _reserved = r.u8()?;
        let flags = ReflectFlags(r.u16_le()?);
        let reflect_id = r.u32_le()?;
        skip_header(&mut r, header_length, REFLECT_HEADER_LEN)?;
        Ok(Self {
            header_length,
            flags,
            reflect_id,
            envelope: r.rest().to_vec(),
        })
    }
}

/// ReflectAck (0x81, S→C): the reflect with this id is stored for every other device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReflectAck {
    /// The id from the `Reflect`.
    pub reflect_id: u32,
    /// Unix ms when the mediator stored the message: the authoritative "reflected at" time.
    pub timestamp: u64,
}

impl ReflectAck {
    /// Appends the 16-byte payload, reserved bytes zero.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.reflect_id.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
    }

    /// Decodes exactly [`REFLECT_ACK_LEN`] bytes; the reserved bytes are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, StructbufError> {
        let mut r = Reader::new(payload);
        let _reserved = r.array::<4>()?;
        let reflect_id = r.u32_le()?;
        let timestamp = r.u64_le()?;
        expect_end(&r, REFLECT_ACK_LEN)?;
        Ok(Self {
            reflect_id,
            timestamp,
        })
    }
}

/// Reflected (0x82, S→C): one entry of this device's reflection queue.
#[derive(Clone, PartialEq, Eq)]
pub struct Reflected {
    /// Bytes before the envelope; at least [`REFLECTED_HEADER_LEN`]. Bytes past the known fields
    /// are skipped on decode and written as zeros on encode.
    pub header_length: u8,
    /// Flags; an ephemeral `Reflected` must not be acked (spec §5).
    pub flags: ReflectFlags,
    /// Monotonic per device slot, may wrap; echoed in the `ReflectedAck`.
    pub reflected_id: u32,
    /// Unix ms when the mediator stored the message in the reflection queue.
    pub timestamp: u64,
    /// `nonce(24) ‖ secretbox_DGRK(d2d.Envelope)`; not interpreted here.
    pub envelope: Vec<u8>,
}

impl fmt::Debug for Reflected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reflected")
            .field("header_length", &self.header_length)
            .field("flags", &self.flags)
            .field("reflected_id", &self.reflected_id)
            .field("timestamp", &self.timestamp)
            .field("envelope_len", &self.envelope.len())
            .finish()
    }
}

impl Reflected {
    /// A reflected message with today's header length.
    #[must_use]
    pub const fn new(
        reflected_id: u32,
        flags: ReflectFlags,
        timestamp: u64,
        envelope: Vec<u8>,
    ) -> Self {
        Self {
            header_length: REFLECTED_HEADER_LEN,
            flags,
            reflected_id,
            timestamp,
            envelope,
        }
    }

    /// The encoded payload's length.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        usize::from(self.header_length).saturating_add(self.envelope.len())
    }

    /// Appends the payload; fails only for a `header_length` below [`REFLECTED_HEADER_LEN`].
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), StructbufError> {
        let padding = check_header(self.header_length, REFLECTED_HEADER_LEN)?;
        out.push(self.header_length);
        out.push(0);
        out.extend_from_slice(&self.flags.0.to_le_bytes());
        out.extend_from_slice(&self.reflected_id.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.resize(out.len().saturating_add(padding), 0);
        out.extend_from_slice(&self.envelope);
        Ok(())
    }

    /// Decodes the payload; the reserved byte is ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, StructbufError> {
        let mut r = Reader::new(payload);
        let header_length = r.u8()?;
        let _reserved = r.u8()?;
        let flags = ReflectFlags(r.u16_le()?);
        let reflected_id = r.u32_le()?;
        let timestamp = r.u64_le()?;
        skip_header(&mut r, header_length, REFLECTED_HEADER_LEN)?;
        Ok(Self {
            header_length,
            flags,
            reflected_id,
            timestamp,
            envelope: r.rest().to_vec(),
        })
    }
}

/// ReflectedAck (0x83, C→S): this device has processed the `Reflected` with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReflectedAck {
    /// The id from the `Reflected`.
    pub reflected_id: u32,
}

impl ReflectedAck {
    /// Appends the 8-byte payload, reserved bytes zero.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.reflected_id.to_le_bytes());
    }

    /// Decodes exactly [`REFLECTED_ACK_LEN`] bytes; the reserved bytes are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, StructbufError> {
        let mut r = Reader::new(payload);
        let _reserved = r.array::<4>()?;
        let reflected_id = r.u32_le()?;
        expect_end(&r, REFLECTED_ACK_LEN)?;
        Ok(Self { reflected_id })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_reflect(r: &Reflect) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode_into(&mut out).unwrap();
        out
    }

    fn encode_reflected(r: &Reflected) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode_into(&mut out).unwrap();
        out
    }

    #[test]
    fn reflect_header_matches_spec_example() {
        let r = Reflect::new(1, ReflectFlags::NONE, vec![0xee; 3]);
        assert_eq!(
            encode_reflect(&r),
            hex::decode("0800000001000000eeeeee").unwrap()
        );
    }

    #[test]
    fn reflect_layout_is_little_endian() {
        let r = Reflect::new(
            0x0403_0201,
            ReflectFlags::EPHEMERAL | ReflectFlags(0x8000),
            vec![0xaa],
        );
        assert_eq!(
            encode_reflect(&r),
            hex::decode("0800018001020304aa").unwrap()
        );
    }

    #[test]
    fn reflected_layout_is_little_endian() {
        let r = Reflected::new(
            0x0403_0201,
            ReflectFlags::EPHEMERAL,
            0x0807_0605_0403_0201,
            vec![0xbb, 0xcc],
        );
        assert_eq!(
            encode_reflected(&r),
            hex::decode("10000100010203040102030405060708bbcc").unwrap()
        );
    }

    #[test]
    fn acks_have_fixed_layout() {
        let mut out = Vec::new();
        ReflectAck {
            reflect_id: 0x0403_0201,
            timestamp: 0x0807_0605_0403_0201,
        }
        .encode_into(&mut out);
        // reserved(4) ‖ id ‖ timestamp
        assert_eq!(
            out,
            hex::decode("00000000010203040102030405060708").unwrap()
        );
        let mut out = Vec::new();
        ReflectedAck {
            reflected_id: 0x0403_0201,
        }
        .encode_into(&mut out);
        assert_eq!(out, hex::decode("0000000001020304").unwrap());
    }

    #[test]
    fn reserved_bytes_are_ignored_on_decode() {
        let r = Reflect::decode(&hex::decode("08ff000001000000").unwrap()).unwrap();
        assert_eq!(r, Reflect::new(1, ReflectFlags::NONE, vec![]));
        let a = ReflectedAck::decode(&hex::decode("ffffffff07000000").unwrap()).unwrap();
        assert_eq!(a, ReflectedAck { reflected_id: 7 });
        let a =
            ReflectAck::decode(&hex::decode("ffffffff070000000900000000000000").unwrap()).unwrap();
        assert_eq!(
            a,
            ReflectAck {
                reflect_id: 7,
                timestamp: 9
            }
        );
    }

    #[test]
    fn longer_header_is_skipped_and_kept() {
        // header_length 10: two unknown header bytes (0x99 0x99) before the envelope.
        let r = Reflect::decode(&hex::decode("0a000000050000009999eeee").unwrap()).unwrap();
        assert_eq!(r.header_length, 10);
        assert_eq!(r.reflect_id, 5);
        assert_eq!(r.envelope, [0xee, 0xee]);
        // Re-encoding keeps the length and zeroes the unknown bytes.
        assert_eq!(
            encode_reflect(&r),
            hex::decode("0a000000050000000000eeee").unwrap()
        );

        let r = Reflected::decode(&hex::decode("11000000050000000600000000000000ffdd").unwrap())
            .unwrap();
        assert_eq!((r.header_length, r.reflected_id, r.timestamp), (17, 5, 6));
        assert_eq!(r.envelope, [0xdd]);
        assert_eq!(
            encode_reflected(&r),
            hex::decode("1100000005000000060000000000000000dd").unwrap()
        );
    }

    #[test]
    fn short_header_length_is_refused() {
        assert_eq!(
            Reflect::decode(&hex::decode("0700000001000000ee").unwrap()),
            Err(StructbufError::HeaderTooShort {
                header_length: 7,
                min: 8
            })
        );
        assert_eq!(
            Reflected::decode(&hex::decode("0f000000010000000100000000000000").unwrap()),
            Err(StructbufError::HeaderTooShort {
                header_length: 15,
                min: 16
            })
        );
        let mut r = Reflect::new(1, ReflectFlags::NONE, vec![]);
        r.header_length = 0;
        assert_eq!(
            r.encode_into(&mut Vec::new()),
            Err(StructbufError::HeaderTooShort {
                header_length: 0,
                min: 8
            })
        );
        let mut r = Reflected::new(1, ReflectFlags::NONE, 0, vec![]);
        r.header_length = 8;
        assert_eq!(
            r.encode_into(&mut Vec::new()),
            Err(StructbufError::HeaderTooShort {
                header_length: 8,
                min: 16
            })
        );
    }

    #[test]
    fn header_length_beyond_payload_is_truncated() {
        assert_eq!(
            Reflect::decode(&hex::decode("0c0000000100000099").unwrap()),
            Err(StructbufError::Truncated(Truncated {
                offset: 8,
                needed: 3
            }))
        );
    }

    #[test]
    fn truncated_fields_are_refused() {
        assert!(matches!(
            Reflect::decode(&[8, 0, 0]),
            Err(StructbufError::Truncated(_))
        ));
        assert!(matches!(
            Reflected::decode(&[16, 0, 0, 0, 1, 0, 0, 0, 1]),
            Err(StructbufError::Truncated(_))
        ));
        assert_eq!(
            ReflectAck::decode(&[0; 15]),
            Err(StructbufError::Truncated(Truncated {
                offset: 8,
                needed: 1
            }))
        );
        assert_eq!(
            ReflectedAck::decode(&[0; 7]),
            Err(StructbufError::Truncated(Truncated {
                offset: 4,
                needed: 1
            }))
        );
        assert!(matches!(
            Reflect::decode(&[]),
            Err(StructbufError::Truncated(_))
        ));
    }

    #[test]
    fn trailing_bytes_after_fixed_acks_are_refused() {
        assert_eq!(
            ReflectAck::decode(&[0; 17]),
            Err(StructbufError::TrailingBytes {
                expected: 16,
                actual: 17
            })
        );
        assert_eq!(
            ReflectedAck::decode(&[0; 12]),
            Err(StructbufError::TrailingBytes {
                expected: 8,
                actual: 12
            })
        );
    }

    #[test]
    fn flags_helpers() {
        assert!(ReflectFlags::EPHEMERAL.is_ephemeral());
        assert!(ReflectFlags(0x0003).is_ephemeral());
        assert!(!ReflectFlags::NONE.is_ephemeral());
        assert!(!ReflectFlags(0x0100).is_ephemeral());
    }

    #[test]
    fn debug_hides_envelope_bytes() {
        let r = Reflect::new(1, ReflectFlags::NONE, vec![0xab; 40]);
        let s = format!("{r:?}");
        assert!(s.contains("envelope_len: 40"), "{s}");
        assert!(!s.contains("171"), "{s}");
        let s = format!(
            "{:?}",
            Reflected::new(1, ReflectFlags::NONE, 2, vec![0xab; 40])
        );
        assert!(s.contains("envelope_len: 40") && !s.contains("171"), "{s}");
    }

    pub(crate) fn arb_reflect() -> impl Strategy<Value = Reflect> {
        (
            8_u8..=255,
            any::<u16>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(header_length, flags, reflect_id, envelope)| Reflect {
                header_length,
                flags: ReflectFlags(flags),
                reflect_id,
                envelope,
            })
    }

    pub(crate) fn arb_reflected() -> impl Strategy<Value = Reflected> {
        (
            16_u8..=255,
            any::<u16>(),
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(
                |(header_length, flags, reflected_id, timestamp, envelope)| Reflected {
                    header_length,
                    flags: ReflectFlags(flags),
                    reflected_id,
                    timestamp,
                    envelope,
                },
            )
    }

    proptest! {
        #[test]
        fn reflect_round_trips(r in arb_reflect()) {
            let bytes = encode_reflect(&r);
            prop_assert_eq!(bytes.len(), r.encoded_len());
            prop_assert_eq!(Reflect::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn reflected_round_trips(r in arb_reflected()) {
            let bytes = encode_reflected(&r);
            prop_assert_eq!(bytes.len(), r.encoded_len());
            prop_assert_eq!(Reflected::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn acks_round_trip(reflect_id: u32, timestamp: u64, reflected_id: u32) {
            let mut out = Vec::new();
            let a = ReflectAck { reflect_id, timestamp };
            a.encode_into(&mut out);
            prop_assert_eq!(out.len(), REFLECT_ACK_LEN);
            prop_assert_eq!(ReflectAck::decode(&out).unwrap(), a);
            let mut out = Vec::new();
            let a = ReflectedAck { reflected_id };
            a.encode_into(&mut out);
            prop_assert_eq!(out.len(), REFLECTED_ACK_LEN);
            prop_assert_eq!(ReflectedAck::decode(&out).unwrap(), a);
        }

        #[test]
        fn structbuf_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Reflect::decode(&bytes);
            let _ = Reflected::decode(&bytes);
            let _ = ReflectAck::decode(&bytes);
            let _ = ReflectedAck::decode(&bytes);
        }
    }
}
