//! `message-with-metadata-box` and `legacy-message` (spec §9.5), and sealing / opening them
//! end to end.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//!  0  sender identity (8)      24  created-at u32 seconds   30  metadata-length L u16
//!  8  receiver identity (8)    28  flags u8                 32  legacy nickname (32)
//! 16  message-id u64           29  reserved u8 (0)          64  metadata container (L)
//! 64+L nonce (24)             88+L message box (rest)
//! ```
//!
//! A legacy-message has the same bytes with L = 0, except that offset 30–31 is reserved. Which of
//! the two a session carries is fixed by the `message-payload-version` login extension (spec
//! §9.3), so decoding takes a [`MessagePayloadVersion`] instead of guessing from the bytes: a
//! legacy sender may leave garbage in the reserved bytes, which would otherwise read as a
//! metadata length.
//!
//! The codec checks the layout only. Identity syntax, `sender ≠ receiver` and everything
//! cryptographic are checked by [`seal_message`] and [`open_message`] (and by the chat server's
//! directory lookups), so that a server can still parse and acknowledge a message it rejects.

use core::fmt;

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::codec::{Reader, Truncated};
use crate::crypto::{random_nonce, CryptoError, Nonce, PublicKey, NONCE_LEN, TAG_LEN};
use crate::keys::{ClientKey, PeerKeys, IDENTITY_LEN};

use super::e2e::{encode_e2e, E2eContainer, E2eError, E2eMessageType};
use super::extension::CspFeatures;
use super::flags::MessageFlags;
use super::metadata::{new_metadata, open_metadata, seal_metadata, MetadataError};
use super::payload::MAX_PAYLOAD_DATA_LEN;

/// Length of the legacy sender nickname field.
pub const LEGACY_NICKNAME_LEN: usize = 32;

/// Bytes before the metadata container: identities, id, created-at, flags, reserved, L, nickname.
pub const MESSAGE_HEADER_LEN: usize = 64;

/// A message struct travels as the data of one payload container, so it is at most this long.
pub const MAX_MESSAGE_LEN: usize = MAX_PAYLOAD_DATA_LEN;

/// Which message struct a CSP session carries in payloads 0x01 / 0x02: bit 0 of the login's
/// feature byte (spec §9.3 `message-payload-version`, §12 feature bits; absent extension means
/// [`MessagePayloadVersion::Legacy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum MessagePayloadVersion {
    /// `legacy-message`: no metadata container.
    #[default]
    Legacy = 0x00,
    /// `message-with-metadata-box`: what Tandem and Threema Desktop send.
    WithMetadataBox = 0x01,
}

impl From<CspFeatures> for MessagePayloadVersion {
    /// Every byte value is a valid feature set, so no login is refused for it (spec §12).
    fn from(features: CspFeatures) -> Self {
        if features.message_with_metadata_box() {
            Self::WithMetadataBox
        } else {
            Self::Legacy
        }
    }
}

/// Whether an identity is well-formed (see [`crate::keys::is_valid_identity`]).
#[must_use]
pub fn is_valid_identity(identity: &[u8; IDENTITY_LEN]) -> bool {
    crate::keys::is_valid_identity(identity)
}

/// Why a message struct could not be encoded, decoded or converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The input ended inside a fixed field or inside the metadata container.
    #[error("message struct: {0}")]
    Truncated(#[from] Truncated),
    /// A non-empty metadata container shorter than a tag cannot be a secretbox (malformed).
    #[error("metadata container of {0} bytes is shorter than a tag")]
    MetadataTooShort(usize),
    /// The message box is shorter than a tag (malformed).
    #[error("message box of {0} bytes is shorter than a tag")]
    MessageBoxTooShort(usize),
    /// The metadata container does not fit the u16 length field (cannot be encoded).
    #[error("metadata container of {0} bytes does not fit a u16 length")]
    MetadataTooLong(usize),
    /// A message with metadata cannot be expressed as a legacy-message.
    #[error("a message with metadata has no legacy-message form")]
    HasMetadata,
}

/// The `message-with-metadata-box` struct, still encrypted.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageWithMetadataBox {
    /// Sender identity.
    pub sender: [u8; IDENTITY_LEN],
    /// Receiver identity.
    pub receiver: [u8; IDENTITY_LEN],
    /// Message id, the same for every member of a group send.
    pub message_id: u64,
    /// Unix seconds; the server overwrites it if it lies in the future or with `SHORT_LIVED`.
    pub created_at: u32,
    /// Delivery flags.
    pub flags: MessageFlags,
    /// Legacy sender nickname, zero-padded; filled only for Gateway IDs.
    pub legacy_nickname: [u8; LEGACY_NICKNAME_LEN],
    /// The encrypted metadata container; empty means "no metadata" (L = 0).
    pub metadata: Vec<u8>,
    /// The nonce shared by the metadata container and the message box.
    pub nonce: Nonce,
    /// The NaCl box of the e2e container.
    pub message_box: Vec<u8>,
}

/// The `legacy-message` struct: a [`MessageWithMetadataBox`] without metadata.
#[derive(Clone, PartialEq, Eq)]
pub struct LegacyMessage {
    /// Sender identity.
    pub sender: [u8; IDENTITY_LEN],
    /// Receiver identity.
    pub receiver: [u8; IDENTITY_LEN],
    /// Message id.
    pub message_id: u64,
    /// Unix seconds.
    pub created_at: u32,
    /// Delivery flags.
    pub flags: MessageFlags,
    /// Legacy sender nickname, zero-padded.
    pub legacy_nickname: [u8; LEGACY_NICKNAME_LEN],
    /// The message nonce.
    pub nonce: Nonce,
    /// The NaCl box of the e2e container.
    pub message_box: Vec<u8>,
}

/// The fields both structs share up to offset 30, read or written in one place.
struct Head {
    sender: [u8; IDENTITY_LEN],
    receiver: [u8; IDENTITY_LEN],
    message_id: u64,
    created_at: u32,
    flags: MessageFlags,
}

impl Head {
    fn read(reader: &mut Reader<'_>) -> Result<Self, Truncated> {
        let sender = reader.array()?;
        let receiver = reader.array()?;
        let message_id = reader.u64_le()?;
        let created_at = reader.u32_le()?;
        let flags = MessageFlags(reader.u8()?);
        // Offset 29: reserved, ignored on receipt.
        reader.u8()?;
        Ok(Self {
            sender,
            receiver,
            message_id,
            created_at,
            flags,
        })
    }

    fn write(&self, out: &mut Vec<u8>, metadata_len: u16) {
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&self.receiver);
        out.extend_from_slice(&self.message_id.to_le_bytes());
        out.extend_from_slice(&self.created_at.to_le_bytes());
        out.push(self.flags.bits());
        out.push(0);
        out.extend_from_slice(&metadata_len.to_le_bytes());
    }
}

fn check_box(message_box: &[u8]) -> Result<(), MessageError> {
    if message_box.len() < TAG_LEN {
        return Err(MessageError::MessageBoxTooShort(message_box.len()));
    }
    Ok(())
}

impl MessageWithMetadataBox {
    fn head(&self) -> Head {
        Head {
            sender: self.sender,
            receiver: self.receiver,
            message_id: self.message_id,
            created_at: self.created_at,
            flags: self.flags,
        }
    }

    /// Length of the encoded struct.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        MESSAGE_HEADER_LEN
            .saturating_add(self.metadata.len())
            .saturating_add(NONCE_LEN)
            .saturating_add(self.message_box.len())
    }

    /// Encodes the struct. With empty metadata the bytes are also a valid legacy-message.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let metadata_len = u16::try_from(self.metadata.len())
            .map_err(|_| MessageError::MetadataTooLong(self.metadata.len()))?;
        let mut out = Vec::with_capacity(self.encoded_len());
        self.head().write(&mut out, metadata_len);
        out.extend_from_slice(&self.legacy_nickname);
        out.extend_from_slice(&self.metadata);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.message_box);
        Ok(out)
    }

    /// Reads a `message-with-metadata-box`.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let mut reader = Reader::new(bytes);
        let head = Head::read(&mut reader)?;
        let metadata_len = usize::from(reader.u16_le()?);
        let legacy_nickname = reader.array()?;
        let metadata = reader.take(metadata_len)?;
        if !metadata.is_empty() && metadata.len() < TAG_LEN {
            return Err(MessageError::MetadataTooShort(metadata.len()));
        }
        let nonce = reader.array()?;
        let message_box = reader.rest();
        check_box(message_box)?;
        Ok(Self {
            sender: head.sender,
            receiver: head.receiver,
            message_id: head.message_id,
            created_at: head.created_at,
            flags: head.flags,
            legacy_nickname,
            metadata: metadata.to_vec(),
            nonce,
            message_box: message_box.to_vec(),
        })
    }

    /// Reads the message struct of the session's negotiated payload version; a legacy-message
    /// comes back as a box without metadata.
    pub fn decode_versioned(
        bytes: &[u8],
        version: MessagePayloadVersion,
    ) -> Result<Self, MessageError> {
        match version {
            MessagePayloadVersion::Legacy => LegacyMessage::decode(bytes).map(Self::from),
            MessagePayloadVersion::WithMetadataBox => Self::decode(bytes),
        }
    }
}

impl LegacyMessage {
    /// Length of the encoded struct.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        MESSAGE_HEADER_LEN
            .saturating_add(NONCE_LEN)
            .saturating_add(self.message_box.len())
    }

    /// Encodes the struct (offset 30–31 as reserved zeros).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        Head {
            sender: self.sender,
            receiver: self.receiver,
            message_id: self.message_id,
            created_at: self.created_at,
            flags: self.flags,
        }
        .write(&mut out, 0);
        out.extend_from_slice(&self.legacy_nickname);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.message_box);
        out
    }

    /// Reads a `legacy-message`; the reserved bytes at 29–31 are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let mut reader = Reader::new(bytes);
        let head = Head::read(&mut reader)?;
        reader.u16_le()?;
        let legacy_nickname = reader.array()?;
        let nonce = reader.array()?;
        let message_box = reader.rest();
        check_box(message_box)?;
        Ok(Self {
            sender: head.sender,
            receiver: head.receiver,
            message_id: head.message_id,
            created_at: head.created_at,
            flags: head.flags,
            legacy_nickname,
            nonce,
            message_box: message_box.to_vec(),
        })
    }
}

impl From<LegacyMessage> for MessageWithMetadataBox {
    fn from(legacy: LegacyMessage) -> Self {
        Self {
            sender: legacy.sender,
            receiver: legacy.receiver,
            message_id: legacy.message_id,
            created_at: legacy.created_at,
            flags: legacy.flags,
            legacy_nickname: legacy.legacy_nickname,
            metadata: Vec::new(),
            nonce: legacy.nonce,
            message_box: legacy.message_box,
        }
    }
}

impl TryFrom<MessageWithMetadataBox> for LegacyMessage {
    type Error = MessageError;

    fn try_from(message: MessageWithMetadataBox) -> Result<Self, MessageError> {
        if !message.metadata.is_empty() {
            return Err(MessageError::HasMetadata);
        }
        Ok(Self {
            sender: message.sender,
            receiver: message.receiver,
            message_id: message.message_id,
            created_at: message.created_at,
            flags: message.flags,
            legacy_nickname: message.legacy_nickname,
            nonce: message.nonce,
            message_box: message.message_box,
        })
    }
}

/// Shows an identity as text without trusting it to be ASCII.
fn identity_str(identity: &[u8; IDENTITY_LEN]) -> String {
    String::from_utf8_lossy(identity).into_owned()
}

impl fmt::Debug for MessageWithMetadataBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageWithMetadataBox")
            .field("sender", &identity_str(&self.sender))
            .field("receiver", &identity_str(&self.receiver))
            .field("message_id", &format_args!("{:#018x}", self.message_id))
            .field("created_at", &self.created_at)
            .field("flags", &self.flags)
            .field("metadata_len", &self.metadata.len())
            .field("message_box_len", &self.message_box.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for LegacyMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyMessage")
            .field("sender", &identity_str(&self.sender))
            .field("receiver", &identity_str(&self.receiver))
            .field("message_id", &format_args!("{:#018x}", self.message_id))
            .field("created_at", &self.created_at)
            .field("flags", &self.flags)
            .field("message_box_len", &self.message_box.len())
            .finish_non_exhaustive()
    }
}

/// Everything a device puts into one message to one receiver.
#[derive(Clone, Copy)]
pub struct MessageToSeal<'a> {
    /// Own identity.
    pub sender: [u8; IDENTITY_LEN],
    /// The receiver's identity.
    pub receiver: [u8; IDENTITY_LEN],
    /// The receiver's `CK.public` from the directory.
    pub receiver_public_key: PublicKey,
    /// Message id (shared by every member of a group send).
    pub message_id: u64,
    /// Creation time in Unix milliseconds; the header gets whole seconds.
    pub created_at_ms: u64,
    /// Delivery flags.
    pub flags: MessageFlags,
    /// Own nickname: `None` leaves the receiver's copy unchanged, `Some("")` removes it.
    pub nickname: Option<&'a str>,
    /// The e2e message type.
    pub message_type: E2eMessageType,
    /// The e2e body (before padding).
    pub body: &'a [u8],
}

impl fmt::Debug for MessageToSeal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageToSeal")
            .field("sender", &identity_str(&self.sender))
            .field("receiver", &identity_str(&self.receiver))
            .field("message_id", &format_args!("{:#018x}", self.message_id))
            .field("created_at_ms", &self.created_at_ms)
            .field("flags", &self.flags)
            .field("has_nickname", &self.nickname.is_some())
            .field("message_type", &self.message_type)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Why a message could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The sender identity is not `[0-9A-Z*][0-9A-Z]{7}`.
    #[error("invalid sender identity")]
    InvalidSender,
    /// The receiver identity is not `[0-9A-Z*][0-9A-Z]{7}`.
    #[error("invalid receiver identity")]
    InvalidReceiver,
    /// Sender and receiver are the same identity; the receiver would drop it (spec §9.6).
    #[error("sender and receiver are the same identity")]
    SenderIsReceiver,
    /// The receiver's public key is unusable (a low-order point).
    #[error("receiver public key: {0}")]
    ReceiverKey(#[source] CryptoError),
    /// The sealed struct would not fit one payload container.
    #[error("sealed message of {len} bytes exceeds {max}")]
    TooLarge {
        /// Length of the sealed struct.
        len: usize,
        /// The limit, [`MAX_MESSAGE_LEN`].
        max: usize,
    },
}

/// Seals a message with a fresh random nonce (spec §9.5).
pub fn seal_message(
    sender_key: &ClientKey,
    message: &MessageToSeal<'_>,
    rng: &mut impl CryptoRngCore,
) -> Result<MessageWithMetadataBox, SealError> {
    let nonce = random_nonce(rng);
    seal_message_with_nonce(sender_key, message, &nonce, rng)
}

/// Seals a message under a nonce chosen in advance, as the outgoing flow needs: the per-receiver
/// nonces are reflected in `d2d.OutgoingMessage` before anything is sent (spec §9.6).
///
/// The metadata container (MMK) and the message box (`box(sender CK, receiver CK.public)`) share
/// `nonce`. `rng` is used for the e2e padding only.
pub fn seal_message_with_nonce(
    sender_key: &ClientKey,
    message: &MessageToSeal<'_>,
    nonce: &Nonce,
    rng: &mut impl CryptoRngCore,
) -> Result<MessageWithMetadataBox, SealError> {
    check_seal_identities(message)?;
    let keys = sender_key
        .peer_keys(&message.receiver_public_key)
        .map_err(SealError::ReceiverKey)?;
    seal_message_with_keys(&keys, message, nonce, rng)
}

/// [`seal_message_with_nonce`] with the keys towards the receiver computed in advance
/// ([`ClientKey::peer_keys`], or a [`crate::keys::PeerKeyCache`]), so that a device does not
/// redo the X25519 agreement for every message. `keys` must be the ones for
/// `message.receiver_public_key`; the result is byte for byte what the uncached path gives.
pub fn seal_message_with_keys(
    keys: &PeerKeys,
    message: &MessageToSeal<'_>,
    nonce: &Nonce,
    rng: &mut impl CryptoRngCore,
) -> Result<MessageWithMetadataBox, SealError> {
    check_seal_identities(message)?;
    let metadata = new_metadata(message.nickname, message.message_id, message.created_at_ms);
    let metadata = seal_metadata(keys.metadata_key(), nonce, &metadata);
    let container = Zeroizing::new(encode_e2e(message.message_type, message.body, rng));
    let message_box = keys.box_key().seal(nonce, &container);

    let sealed = MessageWithMetadataBox {
        sender: message.sender,
        receiver: message.receiver,
        message_id: message.message_id,
        created_at: u32::try_from(message.created_at_ms / 1000).unwrap_or(u32::MAX),
        flags: message.flags,
        legacy_nickname: legacy_nickname(&message.sender, message.nickname),
        metadata,
        nonce: *nonce,
        message_box,
    };
    let len = sealed.encoded_len();
    if len > MAX_MESSAGE_LEN {
        return Err(SealError::TooLarge {
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    Ok(sealed)
}

/// Which identity check of a message header failed.
enum IdentityCheck {
    Sender,
    Receiver,
    Same,
}

/// Identity syntax of both ends and `sender ≠ receiver`, the first checks of sealing and opening.
/// The identity checks of both seal paths, before any key work.
fn check_seal_identities(message: &MessageToSeal<'_>) -> Result<(), SealError> {
    check_identities(&message.sender, &message.receiver).map_err(|e| match e {
        IdentityCheck::Sender => SealError::InvalidSender,
        IdentityCheck::Receiver => SealError::InvalidReceiver,
        IdentityCheck::Same => SealError::SenderIsReceiver,
    })
}

fn check_identities(
    sender: &[u8; IDENTITY_LEN],
    receiver: &[u8; IDENTITY_LEN],
) -> Result<(), IdentityCheck> {
    if !is_valid_identity(sender) {
        return Err(IdentityCheck::Sender);
    }
    if !is_valid_identity(receiver) {
        return Err(IdentityCheck::Receiver);
    }
    if sender == receiver {
        return Err(IdentityCheck::Same);
    }
    Ok(())
}

/// The legacy nickname field: filled only for Gateway IDs (`*…`), as Threema Desktop does,
/// truncated to 32 bytes at a character boundary; zeros otherwise.
fn legacy_nickname(
    sender: &[u8; IDENTITY_LEN],
    nickname: Option<&str>,
) -> [u8; LEGACY_NICKNAME_LEN] {
    let mut field = [0_u8; LEGACY_NICKNAME_LEN];
    if sender.first() != Some(&b'*') {
        return field;
    }
    let mut len = 0;
    for (i, c) in nickname.unwrap_or_default().char_indices() {
        let end = i + c.len_utf8();
        if end > LEGACY_NICKNAME_LEN {
            break;
        }
        len = end;
    }
    let bytes = nickname.unwrap_or_default().as_bytes();
    if let (Some(dst), Some(src)) = (field.get_mut(..len), bytes.get(..len)) {
        dst.copy_from_slice(src);
    }
    field
}

/// The legacy nickname field as text: up to the first zero byte, `None` if empty. Invalid UTF-8
/// is replaced rather than rejected; the field is cosmetic and carries no authentication.
fn legacy_nickname_text(field: &[u8; LEGACY_NICKNAME_LEN]) -> Option<String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let text = field.get(..end).unwrap_or_default();
    (!text.is_empty()).then(|| String::from_utf8_lossy(text).into_owned())
}

/// A message after [`open_message`]: authenticated, decrypted and unpadded.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenedMessage {
    /// Sender identity from the header; authentic only because the caller looked up
    /// `sender_public_key` for exactly this identity.
    pub sender: [u8; IDENTITY_LEN],
    /// Receiver identity (from the header; the caller checks that it is its own).
    pub receiver: [u8; IDENTITY_LEN],
    /// Message id (equal to the metadata's id when metadata is present).
    pub message_id: u64,
    /// Delivery flags (from the header, not authenticated).
    pub flags: MessageFlags,
    /// Creation time in Unix ms: the metadata's when present, else the header's seconds × 1000.
    pub created_at_ms: u64,
    /// Created-at of the header in Unix seconds, possibly overwritten by the server.
    pub header_created_at: u32,
    /// Nickname update: `None` = unchanged, `Some("")` = removed. From the metadata when present,
    /// else from the legacy nickname field (`None` when that is all zeros).
    pub nickname: Option<String>,
    /// Whether the message carried a metadata container.
    pub has_metadata: bool,
    /// The e2e message type.
    pub message_type: E2eMessageType,
    /// The unpadded e2e body.
    pub body: Vec<u8>,
}

impl fmt::Debug for OpenedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedMessage")
            .field("sender", &identity_str(&self.sender))
            .field("receiver", &identity_str(&self.receiver))
            .field("message_id", &format_args!("{:#018x}", self.message_id))
            .field("flags", &self.flags)
            .field("created_at_ms", &self.created_at_ms)
            .field("has_nickname", &self.nickname.is_some())
            .field("has_metadata", &self.has_metadata)
            .field("message_type", &self.message_type)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Why a received message was rejected. Each step of spec §9.6 "Incoming" 1–2 has its own
/// variant, so the caller can log which check failed before acknowledging and dropping it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The sender identity is not `[0-9A-Z*][0-9A-Z]{7}`.
    #[error("invalid sender identity")]
    InvalidSender,
    /// The receiver identity is not `[0-9A-Z*][0-9A-Z]{7}`.
    #[error("invalid receiver identity")]
    InvalidReceiver,
    /// Sender and receiver are the same identity.
    #[error("sender and receiver are the same identity")]
    SenderIsReceiver,
    /// The sender's public key is unusable (a low-order point).
    #[error("sender public key: {0}")]
    SenderKey(#[source] CryptoError),
    /// The metadata container did not decrypt under MMK.
    #[error("metadata container did not decrypt: {0}")]
    MetadataDecrypt(#[source] CryptoError),
    /// The metadata decrypted but is not a valid `MessageMetadata`.
    #[error("metadata is malformed: {0}")]
    MetadataMalformed(#[source] prost::DecodeError),
    /// The metadata names a different message id than the header.
    #[error("metadata message id {metadata:#018x} differs from header id {outer:#018x}")]
    MessageIdMismatch {
        /// The id in the header.
        outer: u64,
        /// The id in the metadata.
        metadata: u64,
    },
    /// The message box did not decrypt.
    #[error("message box did not decrypt: {0}")]
    BodyDecrypt(#[source] CryptoError),
    /// The decrypted e2e container is malformed.
    #[error("e2e container: {0}")]
    E2e(#[from] E2eError),
}

/// Opens a received message (spec §9.6 "Incoming" step 2): metadata first, then the id check,
/// then the body.
///
/// A message without metadata (L = 0) is accepted, as a legacy-message is; the caller decides
/// whether its session allows that. Checking `receiver` against the own identity, nonce reuse
/// and the contact lookup are the caller's (step 1).
pub fn open_message(
    receiver_key: &ClientKey,
    sender_public_key: &PublicKey,
    message: &MessageWithMetadataBox,
) -> Result<OpenedMessage, OpenError> {
    check_open_identities(message)?;
    let keys = receiver_key
        .peer_keys(sender_public_key)
        .map_err(OpenError::SenderKey)?;
    open_message_with_keys(&keys, message)
}

fn check_open_identities(message: &MessageWithMetadataBox) -> Result<(), OpenError> {
    check_identities(&message.sender, &message.receiver).map_err(|e| match e {
        IdentityCheck::Sender => OpenError::InvalidSender,
        IdentityCheck::Receiver => OpenError::InvalidReceiver,
        IdentityCheck::Same => OpenError::SenderIsReceiver,
    })
}

/// [`open_message`] with the keys shared with the sender computed in advance
/// ([`ClientKey::peer_keys`], or a [`crate::keys::PeerKeyCache`] keyed by the sender's public
/// key), so that a device does not redo the X25519 agreement for every message.
pub fn open_message_with_keys(
    keys: &PeerKeys,
    message: &MessageWithMetadataBox,
) -> Result<OpenedMessage, OpenError> {
    check_open_identities(message)?;
    let header_ms = u64::from(message.created_at).saturating_mul(1000);
    let (created_at_ms, nickname) = if message.metadata.is_empty() {
        (header_ms, legacy_nickname_text(&message.legacy_nickname))
    } else {
        let metadata = open_metadata(keys.metadata_key(), &message.nonce, &message.metadata)
            .map_err(|e| match e {
                MetadataError::Decrypt(e) => OpenError::MetadataDecrypt(e),
                MetadataError::Malformed(e) => OpenError::MetadataMalformed(e),
            })?;
        if metadata.message_id != message.message_id {
            return Err(OpenError::MessageIdMismatch {
                outer: message.message_id,
                metadata: metadata.message_id,
            });
        }
        (metadata.created_at, metadata.nickname)
    };

    let plain = Zeroizing::new(
        keys.box_key()
            .open(&message.nonce, &message.message_box)
            .map_err(OpenError::BodyDecrypt)?,
    );
    let container = E2eContainer::decode(&plain)?;
    Ok(OpenedMessage {
        sender: message.sender,
        receiver: message.receiver,
        message_id: message.message_id,
        flags: message.flags,
        created_at_ms,
        header_created_at: message.created_at,
        nickname,
        has_metadata: !message.metadata.is_empty(),
        message_type: container.message_type,
        body: container.body,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::proto::csp_e2e::MessageMetadata;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    pub(crate) fn arb_message_box() -> impl Strategy<Value = MessageWithMetadataBox> {
        (
            any::<([u8; 8], [u8; 8], u64, u32, u8)>(),
            any::<[u8; 32]>(),
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 16..200)
            ],
            any::<[u8; 24]>(),
            proptest::collection::vec(any::<u8>(), 16..300),
        )
            .prop_map(
                |(
                    (sender, receiver, message_id, created_at, flags),
                    legacy_nickname,
                    metadata,
                    nonce,
                    message_box,
                )| {
                    MessageWithMetadataBox {
                        sender,
                        receiver,
                        message_id,
                        created_at,
                        flags: MessageFlags(flags),
                        legacy_nickname,
                        metadata,
                        nonce,
                        message_box,
                    }
                },
            )
    }

    fn arb_legacy() -> impl Strategy<Value = LegacyMessage> {
        arb_message_box().prop_map(|mut m| {
            m.metadata.clear();
            LegacyMessage::try_from(m).unwrap()
        })
    }

    struct Party {
        identity: [u8; 8],
        key: ClientKey,
    }

    fn party(identity: &[u8; 8], rng: &mut ChaCha20Rng) -> Party {
        Party {
            identity: *identity,
            key: ClientKey::new(SecretKey::generate(rng)),
        }
    }

    fn to_seal<'a>(alice: &Party, bob: &Party, body: &'a [u8]) -> MessageToSeal<'a> {
        MessageToSeal {
            sender: alice.identity,
            receiver: bob.identity,
            receiver_public_key: bob.key.public_key(),
            message_id: 0x1122_3344_5566_7788,
            created_at_ms: 1_700_000_000_123,
            flags: MessageFlags::SEND_PUSH,
            nickname: Some("Alice"),
            message_type: E2eMessageType::TEXT,
            body,
        }
    }

    fn setup() -> (ChaCha20Rng, Party, Party) {
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let alice = party(b"ALICE123", &mut rng);
        let bob = party(b"BOB45678", &mut rng);
        (rng, alice, bob)
    }

    proptest! {
        #[test]
        fn message_with_metadata_box_round_trips(message in arb_message_box()) {
            let encoded = message.encode().unwrap();
            prop_assert_eq!(encoded.len(), message.encoded_len());
            prop_assert_eq!(&MessageWithMetadataBox::decode(&encoded).unwrap(), &message);
            prop_assert_eq!(
                &MessageWithMetadataBox::decode_versioned(&encoded, MessagePayloadVersion::WithMetadataBox).unwrap(),
                &message
            );
        }

        #[test]
        fn legacy_message_round_trips(message in arb_legacy()) {
            let encoded = message.encode();
            prop_assert_eq!(encoded.len(), message.encoded_len());
            prop_assert_eq!(&LegacyMessage::decode(&encoded).unwrap(), &message);
        }

        #[test]
        fn legacy_and_metadata_box_convert_one_to_one(legacy in arb_legacy()) {
            let boxed = MessageWithMetadataBox::from(legacy.clone());
            prop_assert!(boxed.metadata.is_empty());
            // Same bytes on the wire either way (spec §9.5: converts 1:1 with L = 0).
            prop_assert_eq!(boxed.encode().unwrap(), legacy.encode());
            prop_assert_eq!(
                &MessageWithMetadataBox::decode_versioned(&legacy.encode(), MessagePayloadVersion::Legacy).unwrap(),
                &boxed
            );
            prop_assert_eq!(LegacyMessage::try_from(boxed).unwrap(), legacy);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = MessageWithMetadataBox::decode(&bytes);
            let _ = LegacyMessage::decode(&bytes);
        }

        #[test]
        fn seal_open_round_trips(
            body in proptest::collection::vec(any::<u8>(), 0..400),
            nickname in proptest::option::of("[a-zA-Zé ]{0,40}"),
            message_id: u64,
            created_at_ms in 0_u64..5_000_000_000_000,
            ty: u8,
            flags: u8,
            seed: u64,
        ) {
            let (_, alice, bob) = setup();
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let message = MessageToSeal {
                message_id,
                created_at_ms,
                flags: MessageFlags(flags),
                nickname: nickname.as_deref(),
                message_type: E2eMessageType(ty),
                ..to_seal(&alice, &bob, &body)
            };
            let sealed = seal_message(&alice.key, &message, &mut rng).unwrap();
            // Whole seconds, saturating in 2106 when u32 seconds run out.
            prop_assert_eq!(u64::from(sealed.created_at), (created_at_ms / 1000).min(u64::from(u32::MAX)));
            let decoded = MessageWithMetadataBox::decode(&sealed.encode().unwrap()).unwrap();
            let opened = open_message(&bob.key, &alice.key.public_key(), &decoded).unwrap();
            prop_assert_eq!(opened.sender, alice.identity);
            prop_assert_eq!(opened.receiver, bob.identity);
            prop_assert_eq!(opened.message_id, message_id);
            prop_assert_eq!(opened.flags, MessageFlags(flags));
            prop_assert_eq!(opened.created_at_ms, created_at_ms);
            prop_assert_eq!(opened.nickname, nickname);
            prop_assert!(opened.has_metadata);
            prop_assert_eq!(opened.message_type, E2eMessageType(ty));
            prop_assert_eq!(opened.body, body);
        }
    }

    #[test]
    fn header_layout_matches_the_spec_by_hand() {
        let message = MessageWithMetadataBox {
            sender: *b"ECHOECHO",
            receiver: *b"*GATEWAY",
            message_id: 0x0102_0304_0506_0708,
            created_at: 0x6553_f100,
            flags: MessageFlags(0x81),
            legacy_nickname: {
                let mut n = [0; 32];
                n[..3].copy_from_slice(b"Bot");
                n
            },
            metadata: vec![0xaa; 17],
            nonce: [0xbb; 24],
            message_box: vec![0xcc; 20],
        };
        let mut expected = Vec::new();
        expected.extend_from_slice(&hex::decode("4543484f4543484f").unwrap()); // 0: "ECHOECHO"
        expected.extend_from_slice(&hex::decode("2a47415445574159").unwrap()); // 8: "*GATEWAY"
        expected.extend_from_slice(&hex::decode("0807060504030201").unwrap()); // 16: id LE
        expected.extend_from_slice(&hex::decode("00f15365").unwrap()); // 24: created-at LE
        expected.extend_from_slice(&hex::decode("81").unwrap()); // 28: flags
        expected.extend_from_slice(&hex::decode("00").unwrap()); // 29: reserved
        expected.extend_from_slice(&hex::decode("1100").unwrap()); // 30: L = 17 LE
        expected.extend_from_slice(&hex::decode("426f74").unwrap()); // 32: "Bot"
        expected.extend_from_slice(&[0; 29]); //                        zero-padded to 32
        assert_eq!(expected.len(), 64);
        expected.extend_from_slice(&[0xaa; 17]); // 64: metadata
        expected.extend_from_slice(&[0xbb; 24]); // 81: nonce
        expected.extend_from_slice(&[0xcc; 20]); // 105: box
        assert_eq!(message.encode().unwrap(), expected);
        assert_eq!(MessageWithMetadataBox::decode(&expected).unwrap(), message);
    }

    #[test]
    fn legacy_decode_ignores_reserved_bytes_that_metadata_decode_reads_as_length() {
        let legacy = LegacyMessage {
            sender: *b"ALICE123",
            receiver: *b"BOB45678",
            message_id: 7,
            created_at: 8,
            flags: MessageFlags::NONE,
            legacy_nickname: [0; 32],
            nonce: [1; 24],
            message_box: vec![2; 40],
        };
        let mut bytes = legacy.encode();
        bytes[29] = 0xff;
        bytes[30] = 0x10; // reserved in legacy; "L = 16" for a metadata box
        assert_eq!(LegacyMessage::decode(&bytes).unwrap(), legacy);
        let as_legacy =
            MessageWithMetadataBox::decode_versioned(&bytes, MessagePayloadVersion::Legacy)
                .unwrap();
        assert!(as_legacy.metadata.is_empty());
        let as_metadata = MessageWithMetadataBox::decode(&bytes).unwrap();
        assert_eq!(as_metadata.metadata.len(), 16);
        assert_ne!(as_metadata.nonce, legacy.nonce);
    }

    #[test]
    fn payload_version_follows_bit_0_of_the_feature_byte() {
        for (bits, expected) in [
            (0, MessagePayloadVersion::Legacy),
            (1, MessagePayloadVersion::WithMetadataBox),
            (2, MessagePayloadVersion::Legacy),
            (3, MessagePayloadVersion::WithMetadataBox),
            (0xff, MessagePayloadVersion::WithMetadataBox),
        ] {
            assert_eq!(
                MessagePayloadVersion::from(CspFeatures(bits)),
                expected,
                "{bits}"
            );
        }
        assert_eq!(
            MessagePayloadVersion::default(),
            MessagePayloadVersion::Legacy
        );
    }

    #[test]
    fn malformed_structs_are_rejected() {
        let message = MessageWithMetadataBox {
            sender: *b"ALICE123",
            receiver: *b"BOB45678",
            message_id: 7,
            created_at: 8,
            flags: MessageFlags::NONE,
            legacy_nickname: [0; 32],
            metadata: vec![3; 16],
            nonce: [1; 24],
            message_box: vec![2; 16],
        };
        let bytes = message.encode().unwrap();
        // Cut inside the header, the metadata and the nonce.
        for cut in [0, 29, 63, 70, 90, 103] {
            assert!(
                matches!(
                    MessageWithMetadataBox::decode(&bytes[..cut]),
                    Err(MessageError::Truncated(_))
                ),
                "cut at {cut}"
            );
        }
        // Box shorter than a tag.
        assert_eq!(
            MessageWithMetadataBox::decode(&bytes[..bytes.len() - 1]),
            Err(MessageError::MessageBoxTooShort(15))
        );
        assert_eq!(
            LegacyMessage::decode(&bytes[..88 + 3]),
            Err(MessageError::MessageBoxTooShort(3))
        );
        // A non-empty metadata container shorter than a tag.
        let mut short = message.clone();
        short.metadata = vec![3; 15];
        assert_eq!(
            MessageWithMetadataBox::decode(&short.encode().unwrap()),
            Err(MessageError::MetadataTooShort(15))
        );
        // Metadata too long for the u16 length.
        let mut long = message.clone();
        long.metadata = vec![0; 65_536];
        assert_eq!(long.encode(), Err(MessageError::MetadataTooLong(65_536)));
        // No legacy form with metadata.
        assert_eq!(
            LegacyMessage::try_from(message),
            Err(MessageError::HasMetadata)
        );
    }

    #[test]
    fn identity_syntax() {
        assert!(is_valid_identity(b"ECHOECHO"));
        assert!(is_valid_identity(b"0123ABCZ"));
        assert!(is_valid_identity(b"*GATEWAY"));
        assert!(!is_valid_identity(b"echoecho"));
        assert!(!is_valid_identity(b"ECHO*CHO"));
        assert!(!is_valid_identity(b"ECHO ECH"));
        assert!(!is_valid_identity(b"ECHOECH\0"));
        assert!(!is_valid_identity(b"**GATEWA"));
    }

    #[test]
    fn seal_produces_header_fields_and_shared_nonce() {
        let (mut rng, alice, bob) = setup();
        let nonce = [0x5a; 24];
        let sealed = seal_message_with_nonce(
            &alice.key,
            &to_seal(&alice, &bob, b"hello"),
            &nonce,
            &mut rng,
        )
        .unwrap();
        assert_eq!(sealed.sender, *b"ALICE123");
        assert_eq!(sealed.receiver, *b"BOB45678");
        assert_eq!(sealed.message_id, 0x1122_3344_5566_7788);
        assert_eq!(sealed.created_at, 1_700_000_000);
        assert_eq!(sealed.flags, MessageFlags::SEND_PUSH);
        assert_eq!(sealed.nonce, nonce);
        // Not a Gateway ID: the legacy nickname stays zero.
        assert_eq!(sealed.legacy_nickname, [0; 32]);

        // The metadata opens with MMK computed from Bob's side, under the same nonce.
        let mmk = bob.key.metadata_key(&alice.key.public_key()).unwrap();
        let metadata = open_metadata(&mmk, &nonce, &sealed.metadata).unwrap();
        assert_eq!(
            metadata,
            MessageMetadata {
                padding: vec![0; 11],
                nickname: Some("Alice".to_owned()),
                message_id: 0x1122_3344_5566_7788,
                created_at: 1_700_000_000_123,
            }
        );
        // The body is a NaCl box between the two client keys, under the same nonce.
        let plain = bob
            .key
            .secret()
            .box_key(&alice.key.public_key())
            .open(&nonce, &sealed.message_box)
            .unwrap();
        assert_eq!(plain[0], 0x01);
        assert!(
            plain.len() >= 33,
            "type byte plus at least 32 bytes of padded-data"
        );
        assert_eq!(&plain[1..6], b"hello");
    }

    #[test]
    fn cached_keys_seal_and_open_byte_identically_to_the_uncached_path() {
        let (mut rng, alice, bob) = setup();
        let mut alice_cache = crate::keys::PeerKeyCache::new(4);
        let mut bob_cache = crate::keys::PeerKeyCache::new(4);
        for (i, body) in [&b"hello"[..], b"", &[0xee; 3000]].into_iter().enumerate() {
            let nonce = [u8::try_from(i).unwrap(); 24];
            let message = to_seal(&alice, &bob, body);
            let seed = 7 + u64::try_from(i).unwrap();
            let uncached = seal_message_with_nonce(
                &alice.key,
                &message,
                &nonce,
                &mut ChaCha20Rng::seed_from_u64(seed),
            )
            .unwrap();
            let keys = alice_cache.get(&alice.key, &bob.key.public_key()).unwrap();
            let cached = seal_message_with_keys(
                keys,
                &message,
                &nonce,
                &mut ChaCha20Rng::seed_from_u64(seed),
            )
            .unwrap();
            assert_eq!(cached.encode().unwrap(), uncached.encode().unwrap());

            let keys = bob_cache.get(&bob.key, &alice.key.public_key()).unwrap();
            let opened = open_message_with_keys(keys, &cached).unwrap();
            assert_eq!(
                opened,
                open_message(&bob.key, &alice.key.public_key(), &cached).unwrap()
            );
            assert_eq!(opened.body, body);
        }
        // The same receiver's keys open a message without metadata as the uncached path does.
        let mut stripped =
            seal_message(&alice.key, &to_seal(&alice, &bob, b"x"), &mut rng).unwrap();
        stripped.metadata.clear();
        let keys = bob_cache.get(&bob.key, &alice.key.public_key()).unwrap();
        assert_eq!(
            open_message_with_keys(keys, &stripped),
            open_message(&bob.key, &alice.key.public_key(), &stripped)
        );
        assert_eq!(alice_cache.len(), 1);
        assert_eq!(bob_cache.len(), 1);
    }

    #[test]
    fn a_changed_peer_key_is_not_served_from_the_cache() {
        let (mut rng, alice, bob) = setup();
        let mut bob_cache = crate::keys::PeerKeyCache::new(4);
        let old = bob_cache
            .get(&bob.key, &alice.key.public_key())
            .unwrap()
            .clone();
        // ALICE123 now has a new key (a new identity key under the same id, or a forged one).
        let alice2 = party(b"ALICE123", &mut rng);
        let sealed = seal_message(&alice2.key, &to_seal(&alice2, &bob, b"hi"), &mut rng).unwrap();
        assert_eq!(
            open_message_with_keys(&old, &sealed),
            Err(OpenError::MetadataDecrypt(CryptoError::Decrypt))
        );
        let fresh = bob_cache.get(&bob.key, &alice2.key.public_key()).unwrap();
        assert_eq!(open_message_with_keys(fresh, &sealed).unwrap().body, b"hi");
        // And the old key's entry still opens only the old key's messages.
        let from_old = seal_message(&alice.key, &to_seal(&alice, &bob, b"yo"), &mut rng).unwrap();
        let keys = bob_cache.get(&bob.key, &alice.key.public_key()).unwrap();
        assert_eq!(open_message_with_keys(keys, &from_old).unwrap().body, b"yo");
        let keys = bob_cache.get(&bob.key, &alice2.key.public_key()).unwrap();
        assert_eq!(
            open_message_with_keys(keys, &from_old),
            Err(OpenError::MetadataDecrypt(CryptoError::Decrypt))
        );
        assert_eq!(bob_cache.len(), 2);
    }

    #[test]
    fn gateway_sender_fills_the_legacy_nickname() {
        let (mut rng, _, bob) = setup();
        let gateway = party(b"*GATEWAY", &mut rng);
        let nick = "A gateway nickname that is too ölong";
        assert_eq!(nick.find('ö'), Some(31));
        let message = MessageToSeal {
            nickname: Some(nick),
            ..to_seal(&gateway, &bob, b"x")
        };
        let sealed = seal_message(&gateway.key, &message, &mut rng).unwrap();
        // 32 bytes would split "ö" (bytes 31–32), so the field stops after 31 bytes.
        assert_eq!(&sealed.legacy_nickname[..31], &nick.as_bytes()[..31]);
        assert_eq!(sealed.legacy_nickname[31], 0);
        // The metadata nickname still wins on open.
        let opened = open_message(&bob.key, &gateway.key.public_key(), &sealed).unwrap();
        assert_eq!(opened.nickname.as_deref(), Some(nick));
    }

    #[test]
    fn seal_rejects_bad_identities_keys_and_sizes() {
        let (mut rng, alice, bob) = setup();
        let base = to_seal(&alice, &bob, b"x");
        let seal = |m: MessageToSeal<'_>, rng: &mut ChaCha20Rng| seal_message(&alice.key, &m, rng);
        assert_eq!(
            seal(
                MessageToSeal {
                    sender: *b"alice123",
                    ..base
                },
                &mut rng
            ),
            Err(SealError::InvalidSender)
        );
        assert_eq!(
            seal(
                MessageToSeal {
                    receiver: *b"BOB 5678",
                    ..base
                },
                &mut rng
            ),
            Err(SealError::InvalidReceiver)
        );
        assert_eq!(
            seal(
                MessageToSeal {
                    receiver: alice.identity,
                    ..base
                },
                &mut rng
            ),
            Err(SealError::SenderIsReceiver)
        );
        assert_eq!(
            seal(
                MessageToSeal {
                    receiver_public_key: PublicKey([0; 32]),
                    ..base
                },
                &mut rng
            ),
            Err(SealError::ReceiverKey(CryptoError::NonContributory))
        );
        let big = vec![0; MAX_MESSAGE_LEN];
        assert!(matches!(
            seal(MessageToSeal { body: &big, ..base }, &mut rng),
            Err(SealError::TooLarge {
                max: MAX_MESSAGE_LEN,
                ..
            })
        ));
    }

    #[test]
    fn flipped_bit_in_metadata_nonce_or_box_is_rejected() {
        let (mut rng, alice, bob) = setup();
        let sealed = seal_message(&alice.key, &to_seal(&alice, &bob, b"hello"), &mut rng).unwrap();
        let bytes = sealed.encode().unwrap();
        assert!(open_message(&bob.key, &alice.key.public_key(), &sealed).is_ok());
        // Every bit after the 64-byte header: metadata, nonce, message box.
        let metadata_end = MESSAGE_HEADER_LEN + sealed.metadata.len();
        let nonce_end = metadata_end + NONCE_LEN;
        for i in MESSAGE_HEADER_LEN..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let decoded = MessageWithMetadataBox::decode(&bad).unwrap();
                let result = open_message(&bob.key, &alice.key.public_key(), &decoded);
                // The metadata is checked first, and the nonce covers it too.
                let expected = if i < nonce_end {
                    OpenError::MetadataDecrypt(CryptoError::Decrypt)
                } else {
                    OpenError::BodyDecrypt(CryptoError::Decrypt)
                };
                assert_eq!(result, Err(expected), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn wrong_sender_key_is_rejected() {
        let (mut rng, alice, bob) = setup();
        let mallory = party(b"MALLORY1", &mut rng);
        let sealed = seal_message(&alice.key, &to_seal(&alice, &bob, b"hello"), &mut rng).unwrap();
        assert_eq!(
            open_message(&bob.key, &mallory.key.public_key(), &sealed),
            Err(OpenError::MetadataDecrypt(CryptoError::Decrypt))
        );
        // Without metadata the body is the one to fail.
        let mut stripped = sealed;
        stripped.metadata.clear();
        assert_eq!(
            open_message(&bob.key, &mallory.key.public_key(), &stripped),
            Err(OpenError::BodyDecrypt(CryptoError::Decrypt))
        );
        assert_eq!(
            open_message(&bob.key, &PublicKey([0; 32]), &stripped),
            Err(OpenError::SenderKey(CryptoError::NonContributory))
        );
    }

    #[test]
    fn header_id_differing_from_metadata_id_is_its_own_error() {
        let (mut rng, alice, bob) = setup();
        let mut sealed =
            seal_message(&alice.key, &to_seal(&alice, &bob, b"hello"), &mut rng).unwrap();
        sealed.message_id ^= 1;
        assert_eq!(
            open_message(&bob.key, &alice.key.public_key(), &sealed),
            Err(OpenError::MessageIdMismatch {
                outer: 0x1122_3344_5566_7789,
                metadata: 0x1122_3344_5566_7788,
            })
        );
    }

    #[test]
    fn malformed_metadata_and_e2e_container_are_their_own_errors() {
        let (mut rng, alice, bob) = setup();
        let nonce = [9; 24];
        let mut sealed =
            seal_message_with_nonce(&alice.key, &to_seal(&alice, &bob, b"hi"), &nonce, &mut rng)
                .unwrap();
        let mmk = alice.key.metadata_key(&bob.key.public_key()).unwrap();
        let box_key = alice.key.secret().box_key(&bob.key.public_key());

        let mut bad_metadata = sealed.clone();
        bad_metadata.metadata = mmk.seal(&nonce, &[0xff]);
        assert!(matches!(
            open_message(&bob.key, &alice.key.public_key(), &bad_metadata),
            Err(OpenError::MetadataMalformed(_))
        ));

        sealed.message_box = box_key.seal(&nonce, &[0x01, b'h', b'i', 0x05]);
        assert_eq!(
            open_message(&bob.key, &alice.key.public_key(), &sealed),
            Err(OpenError::E2e(E2eError::Padding(
                crate::crypto::PaddingError::Length(5)
            )))
        );
        sealed.message_box = box_key.seal(&nonce, &[]);
        assert_eq!(
            open_message(&bob.key, &alice.key.public_key(), &sealed),
            Err(OpenError::E2e(E2eError::Empty))
        );
    }

    #[test]
    fn open_rejects_bad_identities() {
        let (mut rng, alice, bob) = setup();
        let sealed = seal_message(&alice.key, &to_seal(&alice, &bob, b"hi"), &mut rng).unwrap();
        let mut bad = sealed.clone();
        bad.sender = *b"alice123";
        assert_eq!(
            open_message(&bob.key, &alice.key.public_key(), &bad),
            Err(OpenError::InvalidSender)
        );
        let mut bad = sealed.clone();
        bad.receiver = *b"BOB\x004567";
        assert_eq!(
            open_message(&bob.key, &alice.key.public_key(), &bad),
            Err(OpenError::InvalidReceiver)
        );
        let mut bad = sealed;
        bad.receiver = bad.sender;
        assert_eq!(
            open_message(&bob.key, &alice.key.public_key(), &bad),
            Err(OpenError::SenderIsReceiver)
        );
    }

    #[test]
    fn message_without_metadata_uses_header_time_and_legacy_nickname() {
        let (mut rng, alice, bob) = setup();
        let mut sealed = seal_message(&alice.key, &to_seal(&alice, &bob, b"hi"), &mut rng).unwrap();
        sealed.metadata.clear();
        sealed.legacy_nickname[..4].copy_from_slice(b"Ali\xff");
        let opened = open_message(&bob.key, &alice.key.public_key(), &sealed).unwrap();
        assert!(!opened.has_metadata);
        assert_eq!(opened.created_at_ms, 1_700_000_000_000);
        assert_eq!(opened.header_created_at, 1_700_000_000);
        assert_eq!(opened.nickname.as_deref(), Some("Ali\u{fffd}"));
        assert_eq!(opened.body, b"hi");
        sealed.legacy_nickname = [0; 32];
        let opened = open_message(&bob.key, &alice.key.public_key(), &sealed).unwrap();
        assert_eq!(opened.nickname, None);
    }

    #[test]
    fn debug_does_not_dump_boxes_bodies_or_nicknames() {
        let (mut rng, alice, bob) = setup();
        let body = b"secret words";
        let message = to_seal(&alice, &bob, body);
        let sealed = seal_message(&alice.key, &message, &mut rng).unwrap();
        let text = format!("{sealed:?}");
        assert!(text.contains("ALICE123"));
        assert!(text.contains("message_box_len"));
        assert!(!text.contains(&format!("{:?}", sealed.nonce)));
        let opened = open_message(&bob.key, &alice.key.public_key(), &sealed).unwrap();
        for text in [format!("{message:?}"), format!("{opened:?}")] {
            assert!(text.contains("body_len: 12"), "{text}");
            assert!(!text.contains(&format!("{:?}", &body[..])), "{text}");
            assert!(!text.contains("Alice"), "{text}");
        }
    }
}
