//! The metadata container of a `message-with-metadata-box` (spec §9.5):
//! `secretbox_MMK(csp_e2e.MessageMetadata)` under the message's nonce.
//!
//! MMK comes from [`crate::keys::ClientKey::metadata_key`] (spec §1.3, salt `mm`); it is the
//! same from both ends because the X25519 shared secret is. The metadata and the message box
//! share one nonce, which is safe because their keys differ.

use prost::Message as _;

use crate::crypto::{CryptoError, Nonce, SymmetricKey};
use crate::proto::csp_e2e::MessageMetadata;

/// A sender pads with zeros until nickname and padding together reach this many bytes, so the
/// length of the metadata box does not reveal a short nickname.
pub const METADATA_MIN_NICKNAME_AND_PADDING: usize = 16;

/// Why a metadata container could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The container did not authenticate under MMK (wrong key or tampered bytes).
    #[error("metadata container: {0}")]
    Decrypt(#[source] CryptoError),
    /// The plaintext is not a valid `csp_e2e.MessageMetadata`.
    #[error("metadata is not a valid MessageMetadata: {0}")]
    Malformed(#[source] prost::DecodeError),
}

/// Builds the metadata for a message, with the zero padding of spec §9.5.
///
/// `nickname`: `None` leaves the receiver's stored nickname unchanged, `Some("")` removes it.
#[must_use]
pub fn new_metadata(
    nickname: Option<&str>,
    message_id: u64,
    created_at_ms: u64,
) -> MessageMetadata {
    let nickname_len = nickname.map_or(0, str::len);
    MessageMetadata {
        padding: vec![0; METADATA_MIN_NICKNAME_AND_PADDING.saturating_sub(nickname_len)],
        nickname: nickname.map(str::to_owned),
        message_id,
        created_at: created_at_ms,
    }
}

/// Encrypts `metadata` with MMK under the message nonce.
#[must_use]
pub fn seal_metadata(mmk: &SymmetricKey, nonce: &Nonce, metadata: &MessageMetadata) -> Vec<u8> {
    mmk.seal(nonce, &metadata.encode_to_vec())
}

/// Decrypts and parses a metadata container.
pub fn open_metadata(
    mmk: &SymmetricKey,
    nonce: &Nonce,
    sealed: &[u8],
) -> Result<MessageMetadata, MetadataError> {
    let plain = mmk.open(nonce, sealed).map_err(MetadataError::Decrypt)?;
    MessageMetadata::decode(plain.as_slice()).map_err(MetadataError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TAG_LEN;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn metadata_round_trips_and_pads_to_16(nickname in proptest::option::of(".{0,40}"), id: u64, at: u64) {
            let key = SymmetricKey::from_bytes([3; 32]);
            let nonce = [5; 24];
            let metadata = new_metadata(nickname.as_deref(), id, at);
            let nick_len = nickname.as_ref().map_or(0, String::len);
            prop_assert!(nick_len + metadata.padding.len() >= 16);
            prop_assert!(metadata.padding.len() <= 16);
            prop_assert!(metadata.padding.iter().all(|&b| b == 0));
            let sealed = seal_metadata(&key, &nonce, &metadata);
            prop_assert_eq!(open_metadata(&key, &nonce, &sealed).unwrap(), metadata);
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let key = SymmetricKey::from_bytes([3; 32]);
            let _ = open_metadata(&key, &[0; 24], &bytes);
        }
    }

    #[test]
    fn padding_fills_up_to_sixteen_bytes() {
        assert_eq!(new_metadata(None, 1, 2).padding, vec![0; 16]);
        assert_eq!(new_metadata(Some(""), 1, 2).padding, vec![0; 16]);
        assert_eq!(new_metadata(Some("Anna"), 1, 2).padding, vec![0; 12]);
        // "Zoë" is 4 bytes of UTF-8: the rule counts bytes, not characters.
        assert_eq!(new_metadata(Some("Zoë"), 1, 2).padding, vec![0; 12]);
        assert_eq!(
            new_metadata(Some("a nickname of 20"), 1, 2).padding,
            vec![0; 0]
        );
    }

    #[test]
    fn metadata_encodes_with_the_spec_field_numbers() {
        let metadata = MessageMetadata {
            padding: vec![0; 2],
            nickname: Some("A".to_owned()),
            message_id: 0x0807_0605_0403_0201,
            created_at: 300,
        };
        // Hand-built protobuf: field 1 bytes (0x0a, len 2), field 2 string (0x12, len 1, "A"),
        // field 3 fixed64 (0x19, 8 bytes little-endian), field 4 varint (0x20, 300 = ac 02).
        let expected = hex::decode(concat!(
            "0a020000",
            "120141",
            "190102030405060708",
            "20ac02"
        ))
        .unwrap();
        assert_eq!(metadata.encode_to_vec(), expected);
    }

    #[test]
    fn wrong_key_and_garbage_are_distinct_errors() {
        let key = SymmetricKey::from_bytes([3; 32]);
        let nonce = [5; 24];
        let sealed = seal_metadata(&key, &nonce, &new_metadata(Some("x"), 9, 10));
        let other = SymmetricKey::from_bytes([4; 32]);
        assert_eq!(
            open_metadata(&other, &nonce, &sealed),
            Err(MetadataError::Decrypt(CryptoError::Decrypt))
        );
        assert_eq!(
            open_metadata(&key, &nonce, &sealed[..TAG_LEN - 1]),
            Err(MetadataError::Decrypt(CryptoError::TooShort(TAG_LEN - 1)))
        );
        // A correctly sealed plaintext that is not protobuf (field 0 is invalid).
        let garbage = key.seal(&nonce, &[0x00, 0x01]);
        assert!(matches!(
            open_metadata(&key, &nonce, &garbage),
            Err(MetadataError::Malformed(_))
        ));
    }
}
