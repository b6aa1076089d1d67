//! The end-to-end container inside the message box (spec §9.5): `type u8 ‖ padded-data`, and the
//! e2e message types of `common.CspE2eMessageType`.
//!
//! The padding is PKCS#7-style with 1–255 random bytes, raised so that padded-data is at least
//! 32 bytes, which hides the length of short messages. On receipt the padding must be consistent
//! but the 32-byte minimum is not enforced: older senders pad less, and the box already
//! authenticated the bytes.

use core::fmt;

use rand_core::CryptoRngCore;

use crate::crypto::{pad, unpad, PaddingError};
use crate::proto::common::CspE2eMessageType;

/// Minimum length of padded-data (body plus padding) that a sender produces.
pub const E2E_MIN_PADDED_LEN: usize = 32;

/// The type byte of an e2e container (spec §9.5 table, `common.CspE2eMessageType`).
///
/// A newtype rather than an enum: an unknown type is not malformed, the receiver decides what to
/// do with it (usually acknowledge and drop).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E2eMessageType(pub u8);

impl E2eMessageType {
    /// 1:1 text message.
    pub const TEXT: Self = Self(0x01);
    /// Deprecated 1:1 image message (Threema's `CspE2eConversationType`); still seen on receipt.
    pub const DEPRECATED_IMAGE: Self = Self(0x02);
    /// 1:1 location message.
    pub const LOCATION: Self = Self(0x10);
    /// Deprecated 1:1 video message (Threema's `CspE2eConversationType`).
    pub const DEPRECATED_VIDEO: Self = Self(0x13);
    /// Deprecated 1:1 audio message (Threema's `CspE2eConversationType`).
    pub const DEPRECATED_AUDIO: Self = Self(0x14);
    /// 1:1 poll setup.
    pub const POLL_SETUP: Self = Self(0x15);
    /// 1:1 poll vote.
    pub const POLL_VOTE: Self = Self(0x16);
    /// 1:1 file message.
    pub const FILE: Self = Self(0x17);
    /// Contact control: set profile picture.
    pub const CONTACT_SET_PROFILE_PICTURE: Self = Self(0x18);
    /// Contact control: delete profile picture.
    pub const CONTACT_DELETE_PROFILE_PICTURE: Self = Self(0x19);
    /// Contact control: request profile picture.
    pub const CONTACT_REQUEST_PROFILE_PICTURE: Self = Self(0x1a);
    /// Group text message.
    pub const GROUP_TEXT: Self = Self(0x41);
    /// Group location message.
    pub const GROUP_LOCATION: Self = Self(0x42);
    /// Group image message.
    pub const GROUP_IMAGE: Self = Self(0x43);
    /// Group video message.
    pub const GROUP_VIDEO: Self = Self(0x44);
    /// Group audio message.
    pub const GROUP_AUDIO: Self = Self(0x45);
    /// Group file message.
    pub const GROUP_FILE: Self = Self(0x46);
    /// Group control: setup (members).
    pub const GROUP_SETUP: Self = Self(0x4a);
    /// Group control: name.
    pub const GROUP_NAME: Self = Self(0x4b);
    /// Group control: leave.
    pub const GROUP_LEAVE: Self = Self(0x4c);
    /// Group control: group call start.
    pub const GROUP_CALL_START: Self = Self(0x4f);
    /// Group control: set profile picture.
    pub const GROUP_SET_PROFILE_PICTURE: Self = Self(0x50);
    /// Group control: sync request.
    pub const GROUP_SYNC_REQUEST: Self = Self(0x51);
    /// Group poll setup.
    pub const GROUP_POLL_SETUP: Self = Self(0x52);
    /// Group poll vote.
    pub const GROUP_POLL_VOTE: Self = Self(0x53);
    /// Group control: delete profile picture.
    pub const GROUP_DELETE_PROFILE_PICTURE: Self = Self(0x54);
    /// Call offer.
    pub const CALL_OFFER: Self = Self(0x60);
    /// Call answer.
    pub const CALL_ANSWER: Self = Self(0x61);
    /// Call ICE candidate.
    pub const CALL_ICE_CANDIDATE: Self = Self(0x62);
    /// Call hangup.
    pub const CALL_HANGUP: Self = Self(0x63);
    /// Call ringing.
    pub const CALL_RINGING: Self = Self(0x64);
    /// 1:1 delivery receipt (see [`crate::csp::DeliveryReceipt`]).
    pub const DELIVERY_RECEIPT: Self = Self(0x80);
    /// Group delivery receipt.
    pub const GROUP_DELIVERY_RECEIPT: Self = Self(0x81);
    /// 1:1 reaction (`csp_e2e.Reaction`; protocol version 23, Tandem does not act on it).
    pub const REACTION: Self = Self(0x82);
    /// Group reaction.
    pub const GROUP_REACTION: Self = Self(0x83);
    /// Typing indicator.
    pub const TYPING_INDICATOR: Self = Self(0x90);
    /// 1:1 edit message.
    pub const EDIT_MESSAGE: Self = Self(0x91);
    /// 1:1 delete message.
    pub const DELETE_MESSAGE: Self = Self(0x92);
    /// Group edit message.
    pub const GROUP_EDIT: Self = Self(0x93);
    /// Group delete message.
    pub const GROUP_DELETE: Self = Self(0x94);
    /// Forward-security envelope.
    pub const FORWARD_SECURITY_ENVELOPE: Self = Self(0xa0);
    /// Empty message (no content, used to carry metadata or flags alone).
    pub const EMPTY: Self = Self(0xfc);
    /// Threema Work's sync delta (`csp_e2e.WorkSyncDelta`; protocol version 23).
    pub const WORK_SYNC_DELTA: Self = Self(0xfd);
    /// Web session resume.
    pub const WEB_SESSION_RESUME: Self = Self(0xfe);

    /// The name of this type in `common.CspE2eMessageType` (the schema is the one list of
    /// names), if it has one.
    #[must_use]
    pub fn name(self) -> Option<&'static str> {
        CspE2eMessageType::try_from(i32::from(self.0))
            .ok()
            .filter(|ty| *ty != CspE2eMessageType::InvalidType)
            .map(|ty| ty.as_str_name())
    }
}

impl fmt::Debug for E2eMessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "E2eMessageType::{name}"),
            None => write!(f, "E2eMessageType({:#04x})", self.0),
        }
    }
}

impl From<u8> for E2eMessageType {
    fn from(value: u8) -> Self {
        Self(value)
    }
}

/// Why an e2e container could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// Not even the type byte is present.
    #[error("e2e container is empty")]
    Empty,
    /// The padding of padded-data is malformed.
    #[error("e2e container padding: {0}")]
    Padding(#[from] PaddingError),
}

/// A decrypted e2e container: the message type and the unpadded body.
#[derive(Clone, PartialEq, Eq)]
pub struct E2eContainer {
    /// What the body is.
    pub message_type: E2eMessageType,
    /// The type-specific body, without padding.
    pub body: Vec<u8>,
}

impl fmt::Debug for E2eContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2eContainer")
            .field("message_type", &self.message_type)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl E2eContainer {
    /// Encodes `type ‖ body ‖ padding` with fresh random padding.
    pub fn encode(&self, rng: &mut impl CryptoRngCore) -> Vec<u8> {
        encode_e2e(self.message_type, &self.body, rng)
    }

    /// Reads a container and strips its padding.
    pub fn decode(bytes: &[u8]) -> Result<Self, E2eError> {
        let (&message_type, padded) = bytes.split_first().ok_or(E2eError::Empty)?;
        let body = unpad(padded)?;
        Ok(Self {
            message_type: E2eMessageType(message_type),
            body: body.to_vec(),
        })
    }
}

/// Encodes an e2e container from borrowed parts (spec §9.5): padded-data ≥ 32 bytes.
pub fn encode_e2e(
    message_type: E2eMessageType,
    body: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Vec<u8> {
    let padded = pad(body, rng, E2E_MIN_PADDED_LEN);
    let mut out = Vec::with_capacity(1 + padded.len());
    out.push(message_type.0);
    out.extend_from_slice(&padded);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #[test]
        fn e2e_container_round_trips(ty: u8, body in proptest::collection::vec(any::<u8>(), 0..600), seed: u64) {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let container = E2eContainer { message_type: E2eMessageType(ty), body };
            let encoded = container.encode(&mut rng);
            prop_assert_eq!(encoded[0], ty);
            prop_assert_eq!(E2eContainer::decode(&encoded).unwrap(), container);
        }

        #[test]
        fn padded_data_is_at_least_32_and_at_most_255_longer(body in proptest::collection::vec(any::<u8>(), 0..600), seed: u64) {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let encoded = encode_e2e(E2eMessageType::TEXT, &body, &mut rng);
            let padded_len = encoded.len() - 1;
            prop_assert!(padded_len >= 32, "padded-data {} < 32", padded_len);
            prop_assert!(padded_len > body.len());
            prop_assert!(padded_len <= body.len() + 255);
            // Every padding byte holds the padding length (PKCS#7).
            let n = padded_len - body.len();
            prop_assert!(encoded[1 + body.len()..].iter().all(|&b| usize::from(b) == n));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = E2eContainer::decode(&bytes);
        }
    }

    #[test]
    fn empty_container_is_rejected() {
        assert_eq!(E2eContainer::decode(&[]), Err(E2eError::Empty));
    }

    #[test]
    fn bad_padding_is_rejected() {
        // Type only, no padded-data.
        assert_eq!(
            E2eContainer::decode(&[0x01]),
            Err(E2eError::Padding(PaddingError::Empty))
        );
        // Padding length 0.
        assert_eq!(
            E2eContainer::decode(&[0x01, b'a', 0x00]),
            Err(E2eError::Padding(PaddingError::Length(0)))
        );
        // Padding bytes disagree with the length byte.
        assert_eq!(
            E2eContainer::decode(&[0x01, b'a', 0x03, 0x02, 0x03]),
            Err(E2eError::Padding(PaddingError::Inconsistent))
        );
    }

    #[test]
    fn short_padding_from_older_senders_is_accepted() {
        // "hi" with one padding byte: padded-data is 3 bytes, below the sender minimum of 32.
        let decoded = E2eContainer::decode(&[0x01, b'h', b'i', 0x01]).unwrap();
        assert_eq!(decoded.message_type, E2eMessageType::TEXT);
        assert_eq!(decoded.body, b"hi");
    }

    #[test]
    fn type_values_match_the_spec_table() {
        let expected: &[(u8, &str)] = &[
            (0x01, "TEXT"),
            (0x10, "LOCATION"),
            (0x17, "FILE"),
            (0x15, "POLL_SETUP"),
            (0x16, "POLL_VOTE"),
            (0x60, "CALL_OFFER"),
            (0x61, "CALL_ANSWER"),
            (0x62, "CALL_ICE_CANDIDATE"),
            (0x63, "CALL_HANGUP"),
            (0x64, "CALL_RINGING"),
            (0x80, "DELIVERY_RECEIPT"),
            (0x90, "TYPING_INDICATOR"),
            (0x91, "EDIT_MESSAGE"),
            (0x92, "DELETE_MESSAGE"),
            (0x18, "CONTACT_SET_PROFILE_PICTURE"),
            (0x19, "CONTACT_DELETE_PROFILE_PICTURE"),
            (0x1a, "CONTACT_REQUEST_PROFILE_PICTURE"),
            (0x4a, "GROUP_SETUP"),
            (0x4b, "GROUP_NAME"),
            (0x4c, "GROUP_LEAVE"),
            (0x50, "GROUP_SET_PROFILE_PICTURE"),
            (0x54, "GROUP_DELETE_PROFILE_PICTURE"),
            (0x51, "GROUP_SYNC_REQUEST"),
            (0x4f, "GROUP_CALL_START"),
            (0x41, "GROUP_TEXT"),
            (0x42, "GROUP_LOCATION"),
            (0x43, "GROUP_IMAGE"),
            (0x44, "GROUP_VIDEO"),
            (0x45, "GROUP_AUDIO"),
            (0x46, "GROUP_FILE"),
            (0x52, "GROUP_POLL_SETUP"),
            (0x53, "GROUP_POLL_VOTE"),
            (0x81, "GROUP_DELIVERY_RECEIPT"),
            (0x82, "REACTION"),
            (0x83, "GROUP_REACTION"),
            (0x93, "GROUP_EDIT_MESSAGE"),
            (0x94, "GROUP_DELETE_MESSAGE"),
            (0xa0, "FORWARD_SECURITY_ENVELOPE"),
            (0xfc, "EMPTY"),
            (0xfd, "WORK_SYNC_DELTA"),
            (0xfe, "WEB_SESSION_RESUME"),
        ];
        for &(value, name) in expected {
            assert_eq!(E2eMessageType(value).name(), Some(name), "{value:#04x}");
        }
        assert_eq!(E2eMessageType(0x7f).name(), None);
        // Group join request and response lost their names in protocol version 23.
        assert_eq!(E2eMessageType(0x4d).name(), None);
        assert_eq!(E2eMessageType(0x4e).name(), None);
        assert_eq!(
            format!("{:?}", E2eMessageType::TEXT),
            "E2eMessageType::TEXT"
        );
        assert_eq!(
            format!("{:?}", E2eMessageType(0x7f)),
            "E2eMessageType(0x7f)"
        );
    }
}
