//! What can go wrong sealing or opening a d2d blob.

use crate::crypto::CryptoError;

/// Why a d2d blob could not be sealed or opened. The variants keep apart bytes that do not
/// decrypt, plaintext that is not the expected protobuf, and well-formed messages that are not
/// allowed or not supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum D2dError {
    /// Sealing: the envelope would not fit into a Reflected frame even without padding.
    #[error("plain envelope of {len} bytes exceeds the {max}-byte limit")]
    EnvelopeTooLarge {
        /// Encoded length of the envelope without padding.
        len: usize,
        /// [`crate::d2d::MAX_PLAIN_ENVELOPE_LEN`].
        max: usize,
    },
    /// Opening: the sealed envelope is longer than any Reflected frame can carry.
    #[error("sealed envelope of {len} bytes exceeds the {max}-byte limit")]
    SealedEnvelopeTooLarge {
        /// Length of the sealed input.
        len: usize,
        /// [`crate::d2d::MAX_SEALED_ENVELOPE_LEN`].
        max: usize,
    },
    /// The blob is too short or does not authenticate under the key (wrong key or tampered).
    #[error("cannot decrypt: {0}")]
    Decrypt(#[source] CryptoError),
    /// The blob decrypted, but the plaintext is not a valid protobuf message of the expected type.
    #[error("decrypted plaintext is not valid protobuf: {0}")]
    Decode(#[source] prost::DecodeError),
    /// The envelope decoded but carries no content this implementation knows: the `content`
    /// oneof is absent or uses a field number we do not support.
    #[error("envelope has no known content")]
    NoContent,
    /// Sealing: a text field is longer than Tandem allows.
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    FieldTooLong {
        /// The protobuf field name.
        field: &'static str,
        /// Its length in UTF-8 bytes.
        len: usize,
        /// The limit in UTF-8 bytes.
        max: usize,
    },
    /// The transaction scope is a value the spec's `Scope` enum (§6) does not define.
    #[error("unknown transaction scope {0}")]
    UnknownScope(i32),
}
