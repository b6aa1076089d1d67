//! The storage boundary (see `docs/app.md`): named record kinds with byte keys and compact byte
//! values, put and deleted in ordered batches that the adapter applies atomically.
//!
//! Values are protobuf (the spec's sync shapes where one exists, so a stored contact is exactly
//! what a sibling would reflect) or a short fixed layout; nothing is encrypted per record, so
//! opening 10 000 messages is a loop of small decodes.

use core::fmt;

use prost::Message as _;
use zeroize::Zeroizing;

use super::model::{
    Contact, ConversationId, Direction, DistributionList, Group, GroupId, Identity, Message,
    MessageKey, MessageState, ModelError, OwnIdentity, Profile, Settings,
};
use super::nonce::{NonceEntry, NonceScope};
use crate::codec::{Reader, Truncated};
use crate::crypto::{Nonce, SecretKey};
use crate::csp::DeliveryStatus;
use crate::keys::{ClientKey, IDENTITY_LEN};
use crate::proto::d2d::{envelope::Content, ConversationId as PbConversationId, Envelope};
use crate::proto::sync;

/// The object stores of the adapter; [`RecordKind::name`] is the store's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RecordKind {
    /// One record, key `self`: identity, `CK`, device ids, flags.
    Identity,
    /// Key: the identity (8 bytes). Value: `sync.Contact`.
    Contact,
    /// Key: creator (8) ‖ group id (u64 big-endian). Value: `sync.Group`.
    Group,
    /// Key: list id (u64 big-endian). Value: `sync.DistributionList`.
    DistributionList,
    /// Key: local sequence number (u64 big-endian, so stores sort by it).
    Message,
    /// Key: scope (1) ‖ HMAC (32). Value: empty.
    Nonce,
    /// One record, key `self`. Value: `sync.Settings`.
    Settings,
    /// One record, key `self`. Value: `sync.UserProfile` (nickname only).
    Profile,
    /// Sync work that must survive a restart. Key `self` (at most one): the envelopes of an own
    /// transaction that may have been committed but were not yet applied here; replayed after
    /// a restart. Key `answer` ‖ device id (u64 big-endian): a new device's request this
    /// device has seen and not seen answered in full; value: the request's `d2d.Envelope`.
    SyncJournal,
}

impl RecordKind {
    /// Every kind, in load order.
    pub const ALL: [Self; 9] = [
        Self::Identity,
        Self::Settings,
        Self::Profile,
        Self::SyncJournal,
        Self::Contact,
        Self::Group,
        Self::DistributionList,
        Self::Nonce,
        Self::Message,
    ];

    /// The name of the adapter's store for this kind.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Contact => "contacts",
            Self::Group => "groups",
            Self::DistributionList => "distribution_lists",
            Self::Message => "messages",
            Self::Nonce => "nonces",
            Self::Settings => "settings",
            Self::Profile => "profile",
            Self::SyncJournal => "sync_journal",
        }
    }

    /// The kind for a store name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The key of the singleton records.
pub const SINGLETON_KEY: &[u8] = b"self";

/// One stored record. The value is zeroized on drop: it may hold `CK` or message text.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// Which store.
    pub kind: RecordKind,
    /// The key within the store.
    pub key: Vec<u8>,
    /// The encoded value.
    pub value: Zeroizing<Vec<u8>>,
}

impl Record {
    /// A record from parts (as the adapter reads them back).
    #[must_use]
    pub fn new(kind: RecordKind, key: Vec<u8>, value: Vec<u8>) -> Self {
        Self {
            kind,
            key,
            value: Zeroizing::new(value),
        }
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("kind", &self.kind)
            .field("key_len", &self.key.len())
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put(Record),
    /// Remove (no error if absent).
    Delete {
        /// Which store.
        kind: RecordKind,
        /// The key.
        key: Vec<u8>,
    },
}

/// Writes the adapter applies atomically, in order, and then confirms with
/// [`super::App::on_persisted`]. Ids increase by one per batch of one [`super::App`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The id to confirm.
    pub id: u64,
    /// The writes, in order.
    pub ops: Vec<Op>,
}

/// Why a stored record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The value is not the protobuf its kind stores (bytes malformed).
    #[error("{kind:?} record: {source}")]
    Decode {
        /// The kind.
        kind: RecordKind,
        /// The decoder's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// A fixed layout ended early (bytes malformed).
    #[error("{kind:?} record: {source}")]
    Truncated {
        /// The kind.
        kind: RecordKind,
        /// Where.
        #[source]
        source: Truncated,
    },
    /// Bytes after a fixed layout (bytes malformed).
    #[error("{kind:?} record has {len} trailing bytes")]
    Trailing {
        /// The kind.
        kind: RecordKind,
        /// How many.
        len: usize,
    },
    /// Well-formed but not a valid value (bad identity, key length, enum value).
    #[error("{kind:?} record: {source}")]
    Invalid {
        /// The kind.
        kind: RecordKind,
        /// What is wrong.
        #[source]
        source: ModelError,
    },
    /// The key does not have the kind's shape, or does not match the value.
    #[error("{kind:?} record key does not fit")]
    Key {
        /// The kind.
        kind: RecordKind,
    },
    /// A layout version this code does not know (written by a newer version).
    #[error("{kind:?} record version {version} is not supported")]
    UnsupportedVersion {
        /// The kind.
        kind: RecordKind,
        /// The version byte.
        version: u8,
    },
    /// Two message records with the same sender and id.
    #[error("message {0:?} stored twice")]
    DuplicateMessage(MessageKey),
    /// The store holds no identity record: the device was never set up.
    #[error("no identity record")]
    MissingIdentity,
}

fn invalid(kind: RecordKind) -> impl Fn(ModelError) -> RecordError {
    move |source| RecordError::Invalid { kind, source }
}

fn decode_pb<M: prost::Message + Default>(
    kind: RecordKind,
    bytes: &[u8],
) -> Result<M, RecordError> {
    M::decode(bytes).map_err(|source| RecordError::Decode { kind, source })
}

fn put(kind: RecordKind, key: Vec<u8>, value: Vec<u8>) -> Record {
    Record::new(kind, key, value)
}

// ---- identity ---------------------------------------------------------------------------------

const IDENTITY_VERSION: u8 = 1;
const FLAG_CONNECTED_ONCE: u8 = 0x01;
const FLAG_WANTS_NEW_DEVICE_SYNC: u8 = 0x02;

/// `version (1) ‖ identity (8) ‖ CK (32) ‖ d2m device id (u64-le) ‖ CSP device id (u64-le) ‖
/// flags (1)`.
pub(crate) fn own_record(own: &OwnIdentity) -> Record {
    let mut value = Zeroizing::new(Vec::with_capacity(1 + IDENTITY_LEN + 32 + 8 + 8 + 1));
    value.push(IDENTITY_VERSION);
    value.extend_from_slice(own.identity.as_bytes());
    value.extend_from_slice(own.client_key.secret().as_bytes());
    value.extend_from_slice(&own.device_id.to_le_bytes());
    value.extend_from_slice(&own.csp_device_id.to_le_bytes());
    let mut flags = 0;
    if own.connected_once {
        flags |= FLAG_CONNECTED_ONCE;
    }
    if own.wants_new_device_sync {
        flags |= FLAG_WANTS_NEW_DEVICE_SYNC;
    }
    value.push(flags);
    Record {
        kind: RecordKind::Identity,
        key: SINGLETON_KEY.to_vec(),
        value,
    }
}

pub(crate) fn decode_own(record: &Record) -> Result<OwnIdentity, RecordError> {
    let kind = RecordKind::Identity;
    if record.key != SINGLETON_KEY {
        return Err(RecordError::Key { kind });
    }
    let truncated = |source| RecordError::Truncated { kind, source };
    let mut reader = Reader::new(&record.value);
    let version = reader.u8().map_err(truncated)?;
    if version != IDENTITY_VERSION {
        return Err(RecordError::UnsupportedVersion { kind, version });
    }
    let identity = Identity::new(reader.array().map_err(truncated)?).map_err(invalid(kind))?;
    let secret = Zeroizing::new(reader.array::<32>().map_err(truncated)?);
    let device_id = reader.u64_le().map_err(truncated)?;
    let csp_device_id = reader.u64_le().map_err(truncated)?;
    let flags = reader.u8().map_err(truncated)?;
    if reader.remaining() != 0 {
        return Err(RecordError::Trailing {
            kind,
            len: reader.remaining(),
        });
    }
    Ok(OwnIdentity {
        identity,
        client_key: ClientKey::new(SecretKey::from_bytes(*secret)),
        device_id,
        csp_device_id,
        connected_once: flags & FLAG_CONNECTED_ONCE != 0,
        wants_new_device_sync: flags & FLAG_WANTS_NEW_DEVICE_SYNC != 0,
    })
}

// ---- contacts, groups, lists, settings, profile -------------------------------------------

pub(crate) fn contact_key(identity: &Identity) -> Vec<u8> {
    identity.as_bytes().to_vec()
}

pub(crate) fn contact_record(contact: &Contact) -> Record {
    put(
        RecordKind::Contact,
        contact_key(&contact.identity),
        contact.to_sync().encode_to_vec(),
    )
}

pub(crate) fn decode_contact(record: &Record) -> Result<Contact, RecordError> {
    let kind = RecordKind::Contact;
    let contact = Contact::from_sync(&decode_pb::<sync::Contact>(kind, &record.value)?)
        .map_err(invalid(kind))?;
    if record.key != contact_key(&contact.identity) {
        return Err(RecordError::Key { kind });
    }
    Ok(contact)
}

pub(crate) fn group_key(id: &GroupId) -> Vec<u8> {
    let mut key = Vec::with_capacity(IDENTITY_LEN + 8);
    key.extend_from_slice(id.creator.as_bytes());
    key.extend_from_slice(&id.id.to_be_bytes());
    key
}

pub(crate) fn group_record(group: &Group) -> Record {
    put(
        RecordKind::Group,
        group_key(&group.id),
        group.to_sync().encode_to_vec(),
    )
}

pub(crate) fn decode_group(record: &Record) -> Result<Group, RecordError> {
    let kind = RecordKind::Group;
    let group =
        Group::from_sync(&decode_pb::<sync::Group>(kind, &record.value)?).map_err(invalid(kind))?;
    if record.key != group_key(&group.id) {
        return Err(RecordError::Key { kind });
    }
    Ok(group)
}

pub(crate) fn list_key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

pub(crate) fn list_record(list: &DistributionList) -> Record {
    put(
        RecordKind::DistributionList,
        list_key(list.id),
        list.to_sync().encode_to_vec(),
    )
}

pub(crate) fn decode_list(record: &Record) -> Result<DistributionList, RecordError> {
    let kind = RecordKind::DistributionList;
    let list =
        DistributionList::from_sync(&decode_pb::<sync::DistributionList>(kind, &record.value)?)
            .map_err(invalid(kind))?;
    if record.key != list_key(list.id) {
        return Err(RecordError::Key { kind });
    }
    Ok(list)
}

pub(crate) fn settings_record(settings: &Settings) -> Record {
    put(
        RecordKind::Settings,
        SINGLETON_KEY.to_vec(),
        settings.0.encode_to_vec(),
    )
}

pub(crate) fn decode_settings(record: &Record) -> Result<Settings, RecordError> {
    let kind = RecordKind::Settings;
    if record.key != SINGLETON_KEY {
        return Err(RecordError::Key { kind });
    }
    Ok(Settings(decode_pb(kind, &record.value)?))
}

pub(crate) fn profile_record(profile: &Profile) -> Record {
    let value = sync::UserProfile {
        nickname: Some(profile.nickname.clone()),
        ..Default::default()
    };
    put(
        RecordKind::Profile,
        SINGLETON_KEY.to_vec(),
        value.encode_to_vec(),
    )
}

pub(crate) fn decode_profile(record: &Record) -> Result<Profile, RecordError> {
    let kind = RecordKind::Profile;
    if record.key != SINGLETON_KEY {
        return Err(RecordError::Key { kind });
    }
    let profile: sync::UserProfile = decode_pb(kind, &record.value)?;
    Ok(Profile {
        nickname: profile.nickname.unwrap_or_default(),
    })
}

// ---- sync journal -----------------------------------------------------------------------------

/// The key prefix of an answer owed to a new device, in the journal's store.
const ANSWER_KEY_PREFIX: &[u8] = b"answer";

/// Whether a journal-store record is an answer owed (else it is the transaction journal).
pub(crate) fn is_answer_record(record: &Record) -> bool {
    record.key.starts_with(ANSWER_KEY_PREFIX)
}

/// The key of the answer owed to `device_id`.
pub(crate) fn answer_key(device_id: u64) -> Vec<u8> {
    [ANSWER_KEY_PREFIX, &device_id.to_be_bytes()].concat()
}

/// An answer owed to the new device `device_id`, which asked for `max_history_messages`.
pub(crate) fn answer_record(device_id: u64, max_history_messages: u32) -> Record {
    let value = Envelope {
        padding: Vec::new(),
        device_id,
        protocol_version: crate::d2d::PROTOCOL_VERSION,
        content: Some(Content::NewDeviceSyncRequest(
            crate::proto::d2d::NewDeviceSyncRequest {
                max_history_messages,
            },
        )),
    };
    put(
        RecordKind::SyncJournal,
        answer_key(device_id),
        value.encode_to_vec(),
    )
}

/// The new device and its history cap of an answer owed.
pub(crate) fn decode_answer(record: &Record) -> Result<(u64, u32), RecordError> {
    let kind = RecordKind::SyncJournal;
    let envelope: Envelope = decode_pb(kind, &record.value)?;
    match envelope.content {
        Some(Content::NewDeviceSyncRequest(request))
            if record.key == answer_key(envelope.device_id) =>
        {
            Ok((envelope.device_id, request.max_history_messages))
        }
        _ => Err(RecordError::Key { kind }),
    }
}

/// The stored shape of the journal: each entry an encoded `d2d.Envelope` with only `content`.
#[derive(Clone, PartialEq, prost::Message)]
struct JournalRecord {
    #[prost(bytes = "vec", repeated, tag = "1")]
    envelopes: Vec<Vec<u8>>,
}

pub(crate) fn journal_record(contents: &[Content]) -> Record {
    let value = JournalRecord {
        envelopes: contents
            .iter()
            .map(|content| {
                Envelope {
                    padding: Vec::new(),
                    device_id: 0,
                    protocol_version: crate::d2d::PROTOCOL_VERSION,
                    content: Some(content.clone()),
                }
                .encode_to_vec()
            })
            .collect(),
    };
    put(
        RecordKind::SyncJournal,
        SINGLETON_KEY.to_vec(),
        value.encode_to_vec(),
    )
}

pub(crate) fn decode_journal(record: &Record) -> Result<Vec<Content>, RecordError> {
    let kind = RecordKind::SyncJournal;
    if record.key != SINGLETON_KEY {
        return Err(RecordError::Key { kind });
    }
    let raw: JournalRecord = decode_pb(kind, &record.value)?;
    raw.envelopes
        .iter()
        .map(|bytes| {
            decode_pb::<Envelope>(kind, bytes)?
                .content
                .ok_or(RecordError::Invalid {
                    kind,
                    source: ModelError::EmptyEnvelope,
                })
        })
        .collect()
}

// ---- nonces -----------------------------------------------------------------------------------

pub(crate) fn nonce_key(entry: &NonceEntry) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(entry.0 as u8);
    key.extend_from_slice(&entry.1);
    key
}

pub(crate) fn nonce_record(entry: &NonceEntry) -> Record {
    put(RecordKind::Nonce, nonce_key(entry), Vec::new())
}

pub(crate) fn decode_nonce(record: &Record) -> Result<NonceEntry, RecordError> {
    let kind = RecordKind::Nonce;
    let (&scope, hash) = record.key.split_first().ok_or(RecordError::Key { kind })?;
    let scope = NonceScope::from_u8(scope).ok_or(RecordError::Key { kind })?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| RecordError::Key { kind })?;
    if !record.value.is_empty() {
        return Err(RecordError::Trailing {
            kind,
            len: record.value.len(),
        });
    }
    Ok((scope, hash))
}

// ---- messages ---------------------------------------------------------------------------------

/// The stored shape of a [`Message`]; the sequence number is the key.
#[derive(Clone, PartialEq, prost::Message)]
struct MessageRecord {
    #[prost(message, optional, tag = "1")]
    conversation: Option<PbConversationId>,
    #[prost(bytes = "vec", tag = "2")]
    sender: Vec<u8>,
    #[prost(fixed64, tag = "3")]
    message_id: u64,
    #[prost(bool, tag = "4")]
    outgoing: bool,
    #[prost(string, tag = "5")]
    text: String,
    #[prost(uint64, tag = "6")]
    created_at: u64,
    #[prost(uint32, tag = "7")]
    state: u32,
    #[prost(uint64, optional, tag = "8")]
    reflected_at: Option<u64>,
    #[prost(uint64, optional, tag = "9")]
    state_at: Option<u64>,
    /// Each entry: receiver identity (8) ‖ nonce (24).
    #[prost(bytes = "vec", repeated, tag = "10")]
    pending: Vec<Vec<u8>>,
    #[prost(bool, tag = "11")]
    read_unsynced: bool,
    /// 0 none, else the delivery status (spec §9.5) still owed.
    #[prost(uint32, tag = "12")]
    receipt_due: u32,
    #[prost(uint64, optional, tag = "13")]
    edited_at: Option<u64>,
    #[prost(uint64, optional, tag = "14")]
    deleted_at: Option<u64>,
    #[prost(bool, tag = "15")]
    hidden: bool,
    /// Each entry: identity (8) ‖ the emoji (UTF-8).
    #[prost(bytes = "vec", repeated, tag = "16")]
    reactions: Vec<Vec<u8>>,
}

const fn state_code(state: MessageState) -> u32 {
    match state {
        MessageState::Pending => 0,
        MessageState::Sent => 1,
        MessageState::Delivered => 2,
        MessageState::Received => 3,
        MessageState::Read => 4,
    }
}

fn state_from_code(code: u32) -> Result<MessageState, ModelError> {
    Ok(match code {
        0 => MessageState::Pending,
        1 => MessageState::Sent,
        2 => MessageState::Delivered,
        3 => MessageState::Received,
        4 => MessageState::Read,
        other => {
            return Err(ModelError::UnknownEnum {
                field: "state",
                value: i32::try_from(other).unwrap_or(i32::MAX),
            })
        }
    })
}

pub(crate) fn message_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

pub(crate) fn message_record(message: &Message) -> Record {
    let value = MessageRecord {
        conversation: Some(message.conversation.to_proto()),
        sender: message.key.sender.as_bytes().to_vec(),
        message_id: message.key.id,
        outgoing: message.direction == Direction::Outgoing,
        text: message.text.clone(),
        created_at: message.created_at,
        state: state_code(message.state),
        reflected_at: message.reflected_at,
        state_at: message.state_at,
        pending: message
            .pending
            .iter()
            .map(|(identity, nonce)| {
                let mut entry = Vec::with_capacity(IDENTITY_LEN + 24);
                entry.extend_from_slice(identity.as_bytes());
                entry.extend_from_slice(nonce);
                entry
            })
            .collect(),
        read_unsynced: message.read_unsynced,
        receipt_due: message.receipt_due.map_or(0, |s| u32::from(s as u8)),
        edited_at: message.edited_at,
        deleted_at: message.deleted_at,
        hidden: message.hidden,
        reactions: message
            .reactions
            .iter()
            .map(|(who, emoji)| [who.as_bytes(), emoji.as_bytes()].concat())
            .collect(),
    };
    let mut bytes = Zeroizing::new(Vec::with_capacity(value.encoded_len()));
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = value.encode(&mut *bytes);
    let mut text = value.text;
    zeroize::Zeroize::zeroize(&mut text);
    Record {
        kind: RecordKind::Message,
        key: message_key(message.seq),
        value: bytes,
    }
}

pub(crate) fn decode_message(record: &Record) -> Result<Message, RecordError> {
    let kind = RecordKind::Message;
    let seq = u64::from_be_bytes(
        record
            .key
            .as_slice()
            .try_into()
            .map_err(|_| RecordError::Key { kind })?,
    );
    let raw: MessageRecord = decode_pb(kind, &record.value)?;
    let conversation = ConversationId::from_proto(
        raw.conversation
            .as_ref()
            .ok_or(ModelError::EmptyConversation)
            .map_err(invalid(kind))?,
    )
    .map_err(invalid(kind))?;
    let sender = Identity::from_slice(&raw.sender).map_err(invalid(kind))?;
    let state = state_from_code(raw.state).map_err(invalid(kind))?;
    let receipt_due = match raw.receipt_due {
        0 => None,
        code => Some(
            u8::try_from(code)
                .ok()
                .and_then(|c| DeliveryStatus::try_from(c).ok())
                .ok_or(ModelError::UnknownEnum {
                    field: "receipt_due",
                    value: i32::try_from(code).unwrap_or(i32::MAX),
                })
                .map_err(invalid(kind))?,
        ),
    };
    let pending = raw
        .pending
        .iter()
        .map(|entry| {
            let (identity, nonce) = entry
                .split_at_checked(IDENTITY_LEN)
                .ok_or(ModelError::InvalidIdentity)?;
            let nonce: Nonce = nonce
                .try_into()
                .map_err(|_| ModelError::NonceLength(nonce.len()))?;
            Ok((Identity::from_slice(identity)?, nonce))
        })
        .collect::<Result<Vec<_>, ModelError>>()
        .map_err(invalid(kind))?;
    let reactions = raw
        .reactions
        .iter()
        .map(|entry| {
            let (identity, emoji) = entry
                .split_at_checked(IDENTITY_LEN)
                .ok_or(ModelError::InvalidIdentity)?;
            // Only valid UTF-8 is ever stored (`app::updates` checks it on receipt).
            let emoji = String::from_utf8_lossy(emoji).into_owned();
            Ok((Identity::from_slice(identity)?, emoji))
        })
        .collect::<Result<Vec<_>, ModelError>>()
        .map_err(invalid(kind))?;
    Ok(Message {
        seq,
        conversation,
        key: MessageKey {
            sender,
            id: raw.message_id,
        },
        direction: if raw.outgoing {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        text: raw.text,
        created_at: raw.created_at,
        state,
        reflected_at: raw.reflected_at,
        state_at: raw.state_at,
        pending,
        read_unsynced: raw.read_unsynced,
        receipt_due,
        edited_at: raw.edited_at,
        deleted_at: raw.deleted_at,
        hidden: raw.hidden,
        reactions,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::PublicKey;
    use crate::proto::sync::contact::VerificationLevel;
    use proptest::prelude::*;

    fn arb_identity() -> impl Strategy<Value = Identity> {
        "[0-9A-Z*][0-9A-Z]{7}".prop_map(|s| s.parse().unwrap())
    }

    fn arb_conversation() -> impl Strategy<Value = ConversationId> {
        prop_oneof![
            arb_identity().prop_map(ConversationId::Contact),
            (arb_identity(), any::<u64>())
                .prop_map(|(creator, id)| ConversationId::Group(GroupId { creator, id })),
            any::<u64>().prop_map(ConversationId::DistributionList),
        ]
    }

    fn arb_state() -> impl Strategy<Value = MessageState> {
        prop_oneof![
            Just(MessageState::Pending),
            Just(MessageState::Sent),
            Just(MessageState::Delivered),
            Just(MessageState::Received),
            Just(MessageState::Read),
        ]
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
        (
            any::<u64>(),
            arb_conversation(),
            arb_identity(),
            any::<u64>(),
            any::<bool>(),
            ".{0,40}",
            any::<u64>(),
            arb_state(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            (
                proptest::collection::vec((arb_identity(), any::<[u8; 24]>()), 0..3),
                any::<bool>(),
                proptest::option::of(proptest::sample::select(vec![
                    DeliveryStatus::Received,
                    DeliveryStatus::Read,
                ])),
                any::<Option<u64>>(),
                any::<Option<u64>>(),
                any::<bool>(),
                proptest::collection::vec((arb_identity(), "\\PC{1,4}"), 0..3),
            ),
        )
            .prop_map(
                |(
                    seq,
                    conversation,
                    sender,
                    id,
                    out,
                    text,
                    created_at,
                    state,
                    ra,
                    sa,
                    (pending, unsynced, due, edited_at, deleted_at, hidden, reactions),
                )| {
                    Message {
                        seq,
                        conversation,
                        key: MessageKey { sender, id },
                        direction: if out {
                            Direction::Outgoing
                        } else {
                            Direction::Incoming
                        },
                        text,
                        created_at,
                        state,
                        reflected_at: ra,
                        state_at: sa,
                        pending,
                        read_unsynced: unsynced,
                        receipt_due: due,
                        edited_at,
                        deleted_at,
                        hidden,
                        reactions,
                    }
                },
            )
    }

    fn arb_contact() -> impl Strategy<Value = Contact> {
        (
            arb_identity(),
            any::<[u8; 32]>(),
            any::<u64>(),
            ".{0,10}",
            ".{0,10}",
            ".{0,10}",
            0..3_i32,
            any::<u64>(),
            any::<Option<bool>>(),
        )
            .prop_map(|(identity, key, at, first, last, nick, level, mask, rr)| {
                let mut c = Contact::new(identity, PublicKey(key), at);
                c.first_name = first;
                c.last_name = last;
                c.nickname = nick;
                c.verification_level = VerificationLevel::try_from(level).unwrap();
                c.feature_mask = mask;
                c.read_receipt_policy = rr.map(|send| {
                    if send {
                        crate::proto::sync::ReadReceiptPolicy::SendReadReceipt
                    } else {
                        crate::proto::sync::ReadReceiptPolicy::DontSendReadReceipt
                    }
                });
                c
            })
    }

    fn arb_group() -> impl Strategy<Value = Group> {
        (
            arb_identity(),
            any::<u64>(),
            ".{0,10}",
            any::<u64>(),
            0..3_i32,
            proptest::collection::btree_set(arb_identity(), 0..4),
        )
            .prop_map(|(creator, id, name, at, state, members)| Group {
                id: GroupId { creator, id },
                name,
                created_at: at,
                user_state: crate::proto::sync::group::UserState::try_from(state).unwrap(),
                members,
                conversation_category: crate::proto::sync::ConversationCategory::Default,
                conversation_visibility: crate::proto::sync::ConversationVisibility::Pinned,
            })
    }

    fn arb_list() -> impl Strategy<Value = DistributionList> {
        (
            any::<u64>(),
            ".{0,10}",
            any::<u64>(),
            proptest::collection::btree_set(arb_identity(), 0..4),
        )
            .prop_map(|(id, name, at, members)| DistributionList {
                id,
                name,
                created_at: at,
                members,
                conversation_category: crate::proto::sync::ConversationCategory::Protected,
                conversation_visibility: crate::proto::sync::ConversationVisibility::Normal,
            })
    }

    fn arb_own() -> impl Strategy<Value = OwnIdentity> {
        (
            arb_identity(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(identity, ck, d, c, once, wants)| OwnIdentity {
                identity,
                client_key: ClientKey::new(SecretKey::from_bytes(ck)),
                device_id: d,
                csp_device_id: c,
                connected_once: once,
                wants_new_device_sync: wants,
            })
    }

    fn arb_kind() -> impl Strategy<Value = RecordKind> {
        proptest::sample::select(RecordKind::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn message_record_round_trips(m in arb_message()) {
            prop_assert_eq!(decode_message(&message_record(&m)).unwrap(), m);
        }

        #[test]
        fn contact_record_round_trips(c in arb_contact()) {
            prop_assert_eq!(decode_contact(&contact_record(&c)).unwrap(), c);
        }

        #[test]
        fn group_record_round_trips(g in arb_group()) {
            prop_assert_eq!(decode_group(&group_record(&g)).unwrap(), g);
        }

        #[test]
        fn list_record_round_trips(l in arb_list()) {
            prop_assert_eq!(decode_list(&list_record(&l)).unwrap(), l);
        }

        #[test]
        fn own_record_round_trips(o in arb_own()) {
            prop_assert_eq!(decode_own(&own_record(&o)).unwrap(), o);
        }

        #[test]
        fn profile_record_round_trips(nickname in ".{0,20}") {
            let p = Profile { nickname };
            prop_assert_eq!(decode_profile(&profile_record(&p)).unwrap(), p);
        }

        #[test]
        fn settings_record_round_trips(rr in any::<Option<bool>>(), blocked in proptest::collection::vec(arb_identity(), 0..3)) {
            let s = Settings(sync::Settings {
                read_receipt_policy: rr.map(i32::from),
                blocked_identities: Some(crate::proto::common::Identities {
                    identities: blocked.iter().map(ToString::to_string).collect(),
                }),
                ..Default::default()
            });
            prop_assert_eq!(decode_settings(&settings_record(&s)).unwrap(), s);
        }

        #[test]
        fn nonce_record_round_trips(scope in any::<bool>(), hash in any::<[u8; 32]>()) {
            let entry = (if scope { NonceScope::D2d } else { NonceScope::Csp }, hash);
            prop_assert_eq!(decode_nonce(&nonce_record(&entry)).unwrap(), entry);
        }

        #[test]
        fn journal_record_round_trips(names in proptest::collection::vec(".{0,12}", 1..4)) {
            let contents: Vec<Content> = names
                .iter()
                .map(|n| {
                    Content::UserProfileSync(crate::proto::d2d::UserProfileSync {
                        action: Some(crate::proto::d2d::user_profile_sync::Action::Update(
                            crate::proto::d2d::user_profile_sync::Update {
                                user_profile: Some(sync::UserProfile {
                                    nickname: Some(n.clone()),
                                    ..Default::default()
                                }),
                            },
                        )),
                    })
                })
                .collect();
            prop_assert_eq!(decode_journal(&journal_record(&contents)).unwrap(), contents);
        }

        #[test]
        fn arbitrary_records_never_panic(
            kind in arb_kind(),
            key in proptest::collection::vec(any::<u8>(), 0..40),
            value in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let r = Record::new(kind, key, value);
            let _ = decode_own(&r);
            let _ = decode_contact(&r);
            let _ = decode_group(&r);
            let _ = decode_list(&r);
            let _ = decode_settings(&r);
            let _ = decode_profile(&r);
            let _ = decode_nonce(&r);
            let _ = decode_message(&r);
            let _ = decode_journal(&r);
        }
    }

    fn own() -> OwnIdentity {
        OwnIdentity {
            identity: "ABCDEFGH".parse().unwrap(),
            client_key: ClientKey::new(SecretKey::from_bytes([3; 32])),
            device_id: 1,
            csp_device_id: 2,
            connected_once: true,
            wants_new_device_sync: false,
        }
    }

    #[test]
    fn own_record_layout_is_fixed() {
        let r = own_record(&own());
        let mut expected = vec![1];
        expected.extend_from_slice(b"ABCDEFGH");
        expected.extend_from_slice(&[3; 32]);
        expected.extend_from_slice(&1_u64.to_le_bytes());
        expected.extend_from_slice(&2_u64.to_le_bytes());
        expected.push(1);
        assert_eq!(*r.value, expected);
        assert_eq!(r.key, b"self");
    }

    #[test]
    fn own_record_errors() {
        let good = own_record(&own());
        let mut r = good.clone();
        r.value[0] = 2;
        assert_eq!(
            decode_own(&r),
            Err(RecordError::UnsupportedVersion {
                kind: RecordKind::Identity,
                version: 2
            })
        );
        let mut r = good.clone();
        r.value.push(0);
        assert_eq!(
            decode_own(&r),
            Err(RecordError::Trailing {
                kind: RecordKind::Identity,
                len: 1
            })
        );
        let mut r = good.clone();
        r.value.truncate(10);
        assert!(matches!(decode_own(&r), Err(RecordError::Truncated { .. })));
        let mut r = good.clone();
        r.value[1] = b'a';
        assert!(matches!(decode_own(&r), Err(RecordError::Invalid { .. })));
        let mut r = good;
        r.key = b"other".to_vec();
        assert_eq!(
            decode_own(&r),
            Err(RecordError::Key {
                kind: RecordKind::Identity
            })
        );
    }

    #[test]
    fn contact_record_under_the_wrong_key_is_refused() {
        let c = Contact::new("ECHOECHO".parse().unwrap(), PublicKey([1; 32]), 0);
        let mut r = contact_record(&c);
        r.key = b"OTHERONE".to_vec();
        assert_eq!(
            decode_contact(&r),
            Err(RecordError::Key {
                kind: RecordKind::Contact
            })
        );
    }

    #[test]
    fn message_record_with_unknown_state_is_invalid() {
        let raw = MessageRecord {
            conversation: Some(ConversationId::DistributionList(1).to_proto()),
            sender: b"ABCDEFGH".to_vec(),
            state: 9,
            ..Default::default()
        };
        let r = Record::new(RecordKind::Message, message_key(1), raw.encode_to_vec());
        assert!(matches!(
            decode_message(&r),
            Err(RecordError::Invalid {
                source: ModelError::UnknownEnum {
                    field: "state",
                    value: 9
                },
                ..
            })
        ));
        let r = Record::new(RecordKind::Message, vec![1, 2], raw.encode_to_vec());
        assert_eq!(
            decode_message(&r),
            Err(RecordError::Key {
                kind: RecordKind::Message
            })
        );
    }

    #[test]
    fn pending_receiver_with_a_short_nonce_is_invalid() {
        let raw = MessageRecord {
            conversation: Some(ConversationId::DistributionList(1).to_proto()),
            sender: b"ABCDEFGH".to_vec(),
            pending: vec![b"ABCDEFGH\x01\x02".to_vec()],
            ..Default::default()
        };
        let r = Record::new(RecordKind::Message, message_key(1), raw.encode_to_vec());
        assert!(matches!(
            decode_message(&r),
            Err(RecordError::Invalid {
                source: ModelError::NonceLength(2),
                ..
            })
        ));
    }

    #[test]
    fn garbage_protobuf_is_a_decode_error() {
        let r = Record::new(RecordKind::Contact, b"ECHOECHO".to_vec(), vec![0xff, 0xff]);
        assert!(matches!(
            decode_contact(&r),
            Err(RecordError::Decode { .. })
        ));
    }

    #[test]
    fn nonce_record_with_value_or_bad_scope_is_refused() {
        let mut r = nonce_record(&(NonceScope::Csp, [1; 32]));
        r.value.push(1);
        assert!(matches!(
            decode_nonce(&r),
            Err(RecordError::Trailing { .. })
        ));
        let mut r = nonce_record(&(NonceScope::Csp, [1; 32]));
        r.key[0] = 7;
        assert!(matches!(decode_nonce(&r), Err(RecordError::Key { .. })));
    }

    #[test]
    fn journal_entry_without_content_is_invalid() {
        let raw = JournalRecord {
            envelopes: vec![Envelope::default().encode_to_vec()],
        };
        let r = Record::new(
            RecordKind::SyncJournal,
            SINGLETON_KEY.to_vec(),
            raw.encode_to_vec(),
        );
        assert_eq!(
            decode_journal(&r),
            Err(RecordError::Invalid {
                kind: RecordKind::SyncJournal,
                source: ModelError::EmptyEnvelope
            })
        );
        let r = Record::new(RecordKind::SyncJournal, b"x".to_vec(), raw.encode_to_vec());
        assert_eq!(
            decode_journal(&r),
            Err(RecordError::Key {
                kind: RecordKind::SyncJournal
            })
        );
    }

    #[test]
    fn an_answer_owed_round_trips_beside_the_journal_and_a_mismatched_key_is_refused() {
        for (device_id, max) in [(0, 0), (7, 1_000), (u64::MAX, u32::MAX)] {
            let r = answer_record(device_id, max);
            assert!(is_answer_record(&r));
            assert_eq!(decode_answer(&r), Ok((device_id, max)));
        }
        assert!(!is_answer_record(&journal_record(&[])));
        let mut r = answer_record(7, 10);
        r.key = answer_key(8);
        assert_eq!(
            decode_answer(&r),
            Err(RecordError::Key {
                kind: RecordKind::SyncJournal
            })
        );
    }

    #[test]
    fn kinds_have_distinct_names() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(RecordKind::from_name("nope"), None);
    }
}
