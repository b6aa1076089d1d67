//! What a device knows (DESIGN §5): identities, contacts, groups, distribution lists, messages,
//! settings and the profile, as the app and the UI see them. The sync shapes of spec §8.4 are the
//! wire form; these are the validated, typed form held in memory.

use core::fmt;
use core::str::FromStr;
use std::collections::BTreeSet;

use crate::crypto::{Nonce, PublicKey};
use crate::csp::DeliveryStatus;
use crate::keys::{is_valid_identity, ClientKey, IDENTITY_LEN};
use crate::proto::common::GroupIdentity;
use crate::proto::d2d::{conversation_id, ConversationId as PbConversationId};
use crate::proto::sync;

pub use crate::proto::sync::contact::{
    AcquaintanceLevel, ActivityState, IdentityType, SyncState, VerificationLevel,
};
pub use crate::proto::sync::group::UserState;
pub use crate::proto::sync::{
    ConversationCategory, ConversationVisibility, ReadReceiptPolicy, TypingIndicatorPolicy,
};

/// Why a value from the wire or the store is not a valid model value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Not `[0-9A-Z*][0-9A-Z]{7}`.
    #[error("invalid identity")]
    InvalidIdentity,
    /// A public key that is not 32 bytes.
    #[error("public key of {0} bytes")]
    PublicKeyLength(usize),
    /// A contact without its public key (the key is fixed once known, spec §8.4).
    #[error("contact has no public key")]
    MissingPublicKey,
    /// A conversation id with no variant set.
    #[error("conversation id is empty")]
    EmptyConversation,
    /// An envelope with no content.
    #[error("envelope has no content")]
    EmptyEnvelope,
    /// A group identity is missing.
    #[error("group identity missing")]
    MissingGroupIdentity,
    /// A nonce that is not 24 bytes.
    #[error("nonce of {0} bytes")]
    NonceLength(usize),
    /// An enum value outside the schema.
    #[error("unknown {field} value {value}")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The value.
        value: i32,
    },
}

/// A Threema-style identity: 8 characters `[0-9A-Z*][0-9A-Z]{7}`, checked on construction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity([u8; IDENTITY_LEN]);

impl Identity {
    /// Checks and wraps 8 bytes.
    pub fn new(bytes: [u8; IDENTITY_LEN]) -> Result<Self, ModelError> {
        if is_valid_identity(&bytes) {
            Ok(Self(bytes))
        } else {
            Err(ModelError::InvalidIdentity)
        }
    }

    /// Checks and wraps a slice (must be exactly 8 bytes).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ModelError> {
        let array: [u8; IDENTITY_LEN] =
            bytes.try_into().map_err(|_| ModelError::InvalidIdentity)?;
        Self::new(array)
    }

    /// The 8 ASCII bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; IDENTITY_LEN] {
        &self.0
    }

    /// The identity as text (always ASCII).
    #[must_use]
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl FromStr for Identity {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        Self::from_slice(s.as_bytes())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.as_str())
    }
}

/// A group is named by its creator and the creator's 64-bit id (spec §8.2 `GroupIdentity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId {
    /// The creator.
    pub creator: Identity,
    /// The creator-chosen id.
    pub id: u64,
}

impl GroupId {
    /// From the protobuf shape.
    pub fn from_proto(identity: &GroupIdentity) -> Result<Self, ModelError> {
        Ok(Self {
            creator: identity.creator_identity.parse()?,
            id: identity.group_id,
        })
    }

    /// To the protobuf shape.
    #[must_use]
    pub fn to_proto(&self) -> GroupIdentity {
        GroupIdentity {
            group_id: self.id,
            creator_identity: self.creator.to_string(),
        }
    }
}

/// Which conversation a message belongs to (spec §8.2 `ConversationId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    /// A 1:1 conversation.
    Contact(Identity),
    /// A group conversation.
    Group(GroupId),
    /// A distribution list.
    DistributionList(u64),
}

impl ConversationId {
    /// From the protobuf shape.
    pub fn from_proto(id: &PbConversationId) -> Result<Self, ModelError> {
        match &id.id {
            Some(conversation_id::Id::Contact(identity)) => Ok(Self::Contact(identity.parse()?)),
            Some(conversation_id::Id::Group(group)) => Ok(Self::Group(GroupId::from_proto(group)?)),
            Some(conversation_id::Id::DistributionList(id)) => Ok(Self::DistributionList(*id)),
            None => Err(ModelError::EmptyConversation),
        }
    }

    /// To the protobuf shape.
    #[must_use]
    pub fn to_proto(&self) -> PbConversationId {
        PbConversationId {
            id: Some(match self {
                Self::Contact(identity) => conversation_id::Id::Contact(identity.to_string()),
                Self::Group(group) => conversation_id::Id::Group(group.to_proto()),
                Self::DistributionList(id) => conversation_id::Id::DistributionList(*id),
            }),
        }
    }
}

/// A contact (spec §8.4 `sync.Contact`, the fields this app uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The contact's identity.
    pub identity: Identity,
    /// `CK.public` from the directory; fixed once known.
    pub public_key: PublicKey,
    /// Unix ms the contact was added.
    pub created_at: u64,
    /// Given by this user.
    pub first_name: String,
    /// Given by this user.
    pub last_name: String,
    /// The contact's own nickname (from message metadata); empty when none.
    pub nickname: String,
    /// How far the public key is verified.
    pub verification_level: VerificationLevel,
    /// Regular or work identity.
    pub identity_type: IdentityType,
    /// Direct contact or known only through a group.
    pub acquaintance_level: AcquaintanceLevel,
    /// Active, inactive or invalid in the directory.
    pub activity_state: ActivityState,
    /// CSP feature bits.
    pub feature_mask: u64,
    /// Where the data came from; only moves up.
    pub sync_state: SyncState,
    /// `None` follows the setting.
    pub read_receipt_policy: Option<ReadReceiptPolicy>,
    /// `None` follows the setting.
    pub typing_indicator_policy: Option<TypingIndicatorPolicy>,
    /// Private chat or not.
    pub conversation_category: ConversationCategory,
    /// Normal, archived or pinned.
    pub conversation_visibility: ConversationVisibility,
}

impl Contact {
    /// A new direct contact with defaults, as created from a directory answer.
    #[must_use]
    pub fn new(identity: Identity, public_key: PublicKey, created_at: u64) -> Self {
        Self {
            identity,
            public_key,
            created_at,
            first_name: String::new(),
            last_name: String::new(),
            nickname: String::new(),
            verification_level: VerificationLevel::ServerVerified,
            identity_type: IdentityType::Regular,
            acquaintance_level: AcquaintanceLevel::Direct,
            activity_state: ActivityState::Active,
            feature_mask: 0,
            sync_state: SyncState::Initial,
            read_receipt_policy: None,
            typing_indicator_policy: None,
            conversation_category: ConversationCategory::Default,
            conversation_visibility: ConversationVisibility::Normal,
        }
    }

    /// A name to show: first and last name, else the nickname, else the identity.
    #[must_use]
    pub fn display_name(&self) -> String {
        let full = format!("{} {}", self.first_name, self.last_name);
        let full = full.trim();
        if !full.is_empty() {
            full.to_owned()
        } else if !self.nickname.is_empty() {
            self.nickname.clone()
        } else {
            self.identity.to_string()
        }
    }

    /// The whole contact as a sync shape (every field present): a `create`, or a record.
    #[must_use]
    pub fn to_sync(&self) -> sync::Contact {
        use sync::contact::{
            read_receipt_policy_override as rr, typing_indicator_policy_override as ti,
        };
        sync::Contact {
            identity: self.identity.to_string(),
            public_key: Some(self.public_key.0.to_vec()),
            created_at: Some(self.created_at),
            first_name: Some(self.first_name.clone()),
            last_name: Some(self.last_name.clone()),
            nickname: Some(self.nickname.clone()),
            verification_level: Some(self.verification_level.into()),
            work_verification_level: None,
            identity_type: Some(self.identity_type.into()),
            acquaintance_level: Some(self.acquaintance_level.into()),
            activity_state: Some(self.activity_state.into()),
            feature_mask: Some(self.feature_mask),
            sync_state: Some(self.sync_state.into()),
            read_receipt_policy_override: Some(sync::contact::ReadReceiptPolicyOverride {
                r#override: Some(match self.read_receipt_policy {
                    None => rr::Override::Default(crate::proto::common::Unit {}),
                    Some(p) => rr::Override::Policy(p.into()),
                }),
            }),
            typing_indicator_policy_override: Some(sync::contact::TypingIndicatorPolicyOverride {
                r#override: Some(match self.typing_indicator_policy {
                    None => ti::Override::Default(crate::proto::common::Unit {}),
                    Some(p) => ti::Override::Policy(p.into()),
                }),
            }),
            notification_trigger_policy_override: None,
            #[cfg(not(target_arch = "wasm32"))]
            deprecated_notification_sound_policy_override: None,
            contact_defined_profile_picture: None,
            user_defined_profile_picture: None,
            conversation_category: Some(self.conversation_category.into()),
            conversation_visibility: Some(self.conversation_visibility.into()),
            #[cfg(not(target_arch = "wasm32"))]
            work_last_full_sync_at: None,
            #[cfg(not(target_arch = "wasm32"))]
            work_availability_status: None,
        }
    }

    /// A contact from a `create` (or a stored record): identity and public key are required,
    /// absent fields take their defaults.
    pub fn from_sync(contact: &sync::Contact) -> Result<Self, ModelError> {
        let identity: Identity = contact.identity.parse()?;
        let key = contact
            .public_key
            .as_deref()
            .ok_or(ModelError::MissingPublicKey)?;
        let public_key =
            PublicKey::from_slice(key).ok_or(ModelError::PublicKeyLength(key.len()))?;
        let mut out = Self::new(identity, public_key, contact.created_at.unwrap_or(0));
        out.verification_level = VerificationLevel::Unverified;
        out.apply_update(contact)?;
        Ok(out)
    }

    /// Applies a partial update: only present fields change (spec §8.3). The public key is fixed
    /// once known and the sync state only moves up. Invalid enum values are refused as a whole,
    /// before anything changes.
    pub fn apply_update(&mut self, update: &sync::Contact) -> Result<(), ModelError> {
        use sync::contact::{
            read_receipt_policy_override as rr, typing_indicator_policy_override as ti,
        };
        let verification = opt_enum(update.verification_level, "verification_level")?;
        let identity_type = opt_enum(update.identity_type, "identity_type")?;
        let acquaintance = opt_enum(update.acquaintance_level, "acquaintance_level")?;
        let activity = opt_enum(update.activity_state, "activity_state")?;
        let sync_state: Option<SyncState> = opt_enum(update.sync_state, "sync_state")?;
        let category = opt_enum(update.conversation_category, "conversation_category")?;
        let visibility = opt_enum(update.conversation_visibility, "conversation_visibility")?;
        let read_receipt = match update
            .read_receipt_policy_override
            .as_ref()
            .and_then(|o| o.r#override.as_ref())
        {
            None => None,
            Some(rr::Override::Default(_)) => Some(None),
            Some(rr::Override::Policy(p)) => Some(Some(enum_value(*p, "read_receipt_policy")?)),
        };
        let typing = match update
            .typing_indicator_policy_override
            .as_ref()
            .and_then(|o| o.r#override.as_ref())
        {
            None => None,
            Some(ti::Override::Default(_)) => Some(None),
            Some(ti::Override::Policy(p)) => Some(Some(enum_value(*p, "typing_indicator_policy")?)),
        };
        if let Some(v) = update.created_at {
            self.created_at = v;
        }
        if let Some(v) = &update.first_name {
            self.first_name.clone_from(v);
        }
        if let Some(v) = &update.last_name {
            self.last_name.clone_from(v);
        }
        if let Some(v) = &update.nickname {
            self.nickname.clone_from(v);
        }
        if let Some(v) = verification {
            self.verification_level = v;
        }
        if let Some(v) = identity_type {
            self.identity_type = v;
        }
        if let Some(v) = acquaintance {
            self.acquaintance_level = v;
        }
        if let Some(v) = activity {
            self.activity_state = v;
        }
        if let Some(v) = update.feature_mask {
            self.feature_mask = v;
        }
        if let Some(v) = sync_state {
            if v as i32 > self.sync_state as i32 {
                self.sync_state = v;
            }
        }
        if let Some(v) = read_receipt {
            self.read_receipt_policy = v;
        }
        if let Some(v) = typing {
            self.typing_indicator_policy = v;
        }
        if let Some(v) = category {
            self.conversation_category = v;
        }
        if let Some(v) = visibility {
            self.conversation_visibility = v;
        }
        Ok(())
    }
}

fn enum_value<T: TryFrom<i32>>(value: i32, field: &'static str) -> Result<T, ModelError> {
    T::try_from(value).map_err(|_| ModelError::UnknownEnum { field, value })
}

fn opt_enum<T: TryFrom<i32>>(
    value: Option<i32>,
    field: &'static str,
) -> Result<Option<T>, ModelError> {
    value.map(|v| enum_value(v, field)).transpose()
}

/// Parses a list of identities, refusing any invalid one.
pub(crate) fn identities(list: &[String]) -> Result<BTreeSet<Identity>, ModelError> {
    list.iter().map(|s| s.parse()).collect()
}

fn identity_list(set: &BTreeSet<Identity>) -> crate::proto::common::Identities {
    crate::proto::common::Identities {
        identities: set.iter().map(ToString::to_string).collect(),
    }
}

/// A group (spec §8.4 `sync.Group`, the fields this app uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Creator and id.
    pub id: GroupId,
    /// Empty means "show the members".
    pub name: String,
    /// Unix ms.
    pub created_at: u64,
    /// Member, kicked or left.
    pub user_state: UserState,
    /// Members other than the creator and this user.
    pub members: BTreeSet<Identity>,
    /// Private chat or not.
    pub conversation_category: ConversationCategory,
    /// Normal, archived or pinned.
    pub conversation_visibility: ConversationVisibility,
}

impl Group {
    /// The whole group as a sync shape.
    #[must_use]
    pub fn to_sync(&self) -> sync::Group {
        sync::Group {
            group_identity: Some(self.id.to_proto()),
            name: Some(self.name.clone()),
            created_at: Some(self.created_at),
            conversation_category: Some(self.conversation_category.into()),
            conversation_visibility: Some(self.conversation_visibility.into()),
            user_state: Some(self.user_state.into()),
            profile_picture: None,
            member_identities: Some(identity_list(&self.members)),
            notification_trigger_policy_override: None,
            #[cfg(not(target_arch = "wasm32"))]
            deprecated_notification_sound_policy_override: None,
        }
    }

    /// A group from a `create` or a record.
    pub fn from_sync(group: &sync::Group) -> Result<Self, ModelError> {
        let id = GroupId::from_proto(
            group
                .group_identity
                .as_ref()
                .ok_or(ModelError::MissingGroupIdentity)?,
        )?;
        let mut out = Self {
            id,
            name: String::new(),
            created_at: 0,
            user_state: UserState::Member,
            members: BTreeSet::new(),
            conversation_category: ConversationCategory::Default,
            conversation_visibility: ConversationVisibility::Normal,
        };
        out.apply_update(group)?;
        Ok(out)
    }

    /// Applies a partial update (spec §8.3); refused as a whole on an invalid value.
    pub fn apply_update(&mut self, update: &sync::Group) -> Result<(), ModelError> {
        let user_state = opt_enum(update.user_state, "user_state")?;
        let category = opt_enum(update.conversation_category, "conversation_category")?;
        let visibility = opt_enum(update.conversation_visibility, "conversation_visibility")?;
        let members = update
            .member_identities
            .as_ref()
            .map(|m| identities(&m.identities))
            .transpose()?;
        if let Some(v) = &update.name {
            self.name.clone_from(v);
        }
        if let Some(v) = update.created_at {
            self.created_at = v;
        }
        if let Some(v) = user_state {
            self.user_state = v;
        }
        if let Some(v) = members {
            self.members = v;
        }
        if let Some(v) = category {
            self.conversation_category = v;
        }
        if let Some(v) = visibility {
            self.conversation_visibility = v;
        }
        Ok(())
    }
}

/// A distribution list (spec §8.4 `sync.DistributionList`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributionList {
    /// The list's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Unix ms.
    pub created_at: u64,
    /// Receivers.
    pub members: BTreeSet<Identity>,
    /// Private chat or not.
    pub conversation_category: ConversationCategory,
    /// Normal, archived or pinned.
    pub conversation_visibility: ConversationVisibility,
}

impl DistributionList {
    /// The whole list as a sync shape.
    #[must_use]
    pub fn to_sync(&self) -> sync::DistributionList {
        sync::DistributionList {
            distribution_list_id: self.id,
            name: Some(self.name.clone()),
            created_at: Some(self.created_at),
            conversation_category: Some(self.conversation_category.into()),
            conversation_visibility: Some(self.conversation_visibility.into()),
            member_identities: Some(identity_list(&self.members)),
        }
    }

    /// A list from a `create` or a record.
    pub fn from_sync(list: &sync::DistributionList) -> Result<Self, ModelError> {
        let mut out = Self {
            id: list.distribution_list_id,
            name: String::new(),
            created_at: 0,
            members: BTreeSet::new(),
            conversation_category: ConversationCategory::Default,
            conversation_visibility: ConversationVisibility::Normal,
        };
        out.apply_update(list)?;
        Ok(out)
    }

    /// Applies a partial update (spec §8.3); refused as a whole on an invalid value.
    pub fn apply_update(&mut self, update: &sync::DistributionList) -> Result<(), ModelError> {
        let category = opt_enum(update.conversation_category, "conversation_category")?;
        let visibility = opt_enum(update.conversation_visibility, "conversation_visibility")?;
        let members = update
            .member_identities
            .as_ref()
            .map(|m| identities(&m.identities))
            .transpose()?;
        if let Some(v) = &update.name {
            self.name.clone_from(v);
        }
        if let Some(v) = update.created_at {
            self.created_at = v;
        }
        if let Some(v) = members {
            self.members = v;
        }
        if let Some(v) = category {
            self.conversation_category = v;
        }
        if let Some(v) = visibility {
            self.conversation_visibility = v;
        }
        Ok(())
    }
}

/// The user's own profile (spec §8.4 `sync.UserProfile`; pictures and links are not kept).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// The nickname sent in message metadata; empty shows the identity.
    pub nickname: String,
}

/// App settings: the `sync.Settings` shape itself, every field optional, merged field by field.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings(pub sync::Settings);

impl Settings {
    /// Applies a partial update (spec §8.3): every present field replaces the stored one.
    pub fn apply_update(&mut self, update: &sync::Settings) {
        let s = &mut self.0;
        macro_rules! merge {
            ($($field:ident),*) => {$(
                if update.$field.is_some() {
                    s.$field.clone_from(&update.$field);
                }
            )*};
        }
        merge!(
            contact_sync_policy,
            unknown_contact_policy,
            read_receipt_policy,
            typing_indicator_policy,
            o2o_call_policy,
            o2o_call_connection_policy,
            screenshot_policy,
            keyboard_data_collection_policy,
            blocked_identities,
            exclude_from_sync_identities,
            group_call_policy,
            o2o_call_video_policy
        );
    }

    /// Whether read receipts go out by default (absent = send).
    #[must_use]
    pub fn sends_read_receipts(&self) -> bool {
        self.0.read_receipt_policy != Some(ReadReceiptPolicy::DontSendReadReceipt.into())
    }

    /// Whether typing indicators go out by default (absent = send).
    #[must_use]
    pub fn sends_typing_indicators(&self) -> bool {
        self.0.typing_indicator_policy
            != Some(TypingIndicatorPolicy::DontSendTypingIndicator.into())
    }

    /// Whether messages from unknown identities are dropped.
    #[must_use]
    pub fn blocks_unknown(&self) -> bool {
        self.0.unknown_contact_policy
            == Some(sync::settings::UnknownContactPolicy::BlockUnknown.into())
    }

    /// Whether `identity` is on the block list.
    #[must_use]
    pub fn is_blocked(&self, identity: &Identity) -> bool {
        self.0
            .blocked_identities
            .as_ref()
            .is_some_and(|b| b.identities.iter().any(|i| i == identity.as_str()))
    }
}

/// Who sent a message and its id: unique per sender (spec §9.6 dedupe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// The sender (the own identity for outgoing messages).
    pub sender: Identity,
    /// The message id.
    pub id: u64,
}

/// Whether this user sent or received the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received from the chat server (by the leader) or from a sibling's reflection.
    Incoming,
    /// Written on one of this user's devices.
    Outgoing,
}

/// Where a message stands. Outgoing: pending → sent → delivered → read; incoming: received →
/// read. States only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageState {
    /// Outgoing, not yet acknowledged by the chat server.
    Pending,
    /// Outgoing, stored by the chat server.
    Sent,
    /// Outgoing, arrived on the receiver's device (delivery receipt).
    Delivered,
    /// Incoming, not yet read.
    Received,
    /// Read (by this user for incoming, by the receiver for outgoing).
    Read,
}

impl MessageState {
    /// Whether moving from `self` to `next` is progress (never backwards, never across
    /// directions except into `Read`).
    #[must_use]
    pub fn advances_to(self, next: Self) -> bool {
        use MessageState::{Delivered, Pending, Read, Received, Sent};
        matches!(
            (self, next),
            (Pending, Sent | Delivered | Read)
                | (Sent, Delivered | Read)
                | (Delivered | Received, Read)
        )
    }
}

/// A text message of a conversation.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Local order: messages are shown by `seq` within a conversation.
    pub seq: u64,
    /// Where it belongs.
    pub conversation: ConversationId,
    /// Sender and id.
    pub key: MessageKey,
    /// Sent or received.
    pub direction: Direction,
    /// The text.
    pub text: String,
    /// The sender's creation time, Unix ms.
    pub created_at: u64,
    /// Where it stands.
    pub state: MessageState,
    /// When the mediator stored its reflection (spec §5); `None` until then.
    pub reflected_at: Option<u64>,
    /// When the state last changed, Unix ms (the reflection time of the change).
    pub state_at: Option<u64>,
    /// Outgoing and not yet sent: the receivers and the nonces reflected for them (spec §8.2).
    pub pending: Vec<(Identity, Nonce)>,
    /// Incoming, read on this device, and the siblings have not been told yet.
    pub read_unsynced: bool,
    /// Incoming: a delivery receipt this device still owes the sender (sent, not yet acked).
    pub receipt_due: Option<DeliveryStatus>,
    /// When the sender last edited it (the `EditMessage`'s `created_at`, Unix ms; `app::updates`).
    pub edited_at: Option<u64>,
    /// When the sender deleted it for everyone (the `DeleteMessage`'s `created_at`); its text
    /// is gone then.
    pub deleted_at: Option<u64>,
    /// Deleted on this device only: a tombstone without text that no conversation lists (kept
    /// so that the same message id is never taken for a new message).
    pub hidden: bool,
    /// Emoji reactions (Threema's `Reaction`): who put which emoji on it, in the order they
    /// came; one person may put several.
    pub reactions: Vec<(Identity, String)>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("seq", &self.seq)
            .field("conversation", &self.conversation)
            .field("key", &self.key)
            .field("direction", &self.direction)
            .field("text_len", &self.text.len())
            .field("created_at", &self.created_at)
            .field("state", &self.state)
            .field("reflected_at", &self.reflected_at)
            .field("edited_at", &self.edited_at)
            .field("deleted_at", &self.deleted_at)
            .finish_non_exhaustive()
    }
}

/// This device's identity and ids: what it was given at join and what it chose itself.
#[derive(Clone)]
pub struct OwnIdentity {
    /// The user's identity.
    pub identity: Identity,
    /// `CK`: secret, zeroized on drop (inside [`ClientKey`]).
    pub client_key: ClientKey,
    /// The d2m device id, drawn once at join (spec §2.5).
    pub device_id: u64,
    /// The CSP device id, drawn once at join (spec §9.3).
    pub csp_device_id: u64,
    /// Whether a `ServerInfo` ever arrived: the next `ClientHello` expects EXISTING (spec §3.3).
    pub connected_once: bool,
    /// Whether this device still has to ask its siblings for their state (DESIGN §2.4).
    pub wants_new_device_sync: bool,
}

impl PartialEq for OwnIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
            && crate::crypto::ct_eq(
                self.client_key.secret().as_bytes(),
                other.client_key.secret().as_bytes(),
            )
            && self.device_id == other.device_id
            && self.csp_device_id == other.csp_device_id
            && self.connected_once == other.connected_once
            && self.wants_new_device_sync == other.wants_new_device_sync
    }
}

impl Eq for OwnIdentity {}

impl fmt::Debug for OwnIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnIdentity")
            .field("identity", &self.identity)
            .field("device_id", &format_args!("{:#018x}", self.device_id))
            .field(
                "csp_device_id",
                &format_args!("{:#018x}", self.csp_device_id),
            )
            .field("connected_once", &self.connected_once)
            .field("wants_new_device_sync", &self.wants_new_device_sync)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    #[test]
    fn identity_refuses_bad_syntax() {
        assert_eq!(
            "abcdefgh".parse::<Identity>(),
            Err(ModelError::InvalidIdentity)
        );
        assert_eq!(
            "ABCDEFG".parse::<Identity>(),
            Err(ModelError::InvalidIdentity)
        );
        assert_eq!(
            "AB*DEFGH".parse::<Identity>(),
            Err(ModelError::InvalidIdentity)
        );
        assert_eq!(id("*GATEWAY").as_str(), "*GATEWAY");
        assert_eq!(format!("{:?}", id("ECHOECHO")), "Identity(ECHOECHO)");
    }

    #[test]
    fn conversation_id_round_trips_and_refuses_empty() {
        for c in [
            ConversationId::Contact(id("ECHOECHO")),
            ConversationId::Group(GroupId {
                creator: id("ABCDEFGH"),
                id: 7,
            }),
            ConversationId::DistributionList(9),
        ] {
            assert_eq!(ConversationId::from_proto(&c.to_proto()).unwrap(), c);
        }
        assert_eq!(
            ConversationId::from_proto(&PbConversationId { id: None }),
            Err(ModelError::EmptyConversation)
        );
    }

    #[test]
    fn contact_update_is_partial_and_sync_state_only_moves_up() {
        let mut c = Contact::new(id("ECHOECHO"), PublicKey([1; 32]), 5);
        c.sync_state = SyncState::Custom;
        let update = sync::Contact {
            identity: "ECHOECHO".into(),
            first_name: Some("Ann".into()),
            sync_state: Some(SyncState::Imported.into()),
            ..Default::default()
        };
        c.apply_update(&update).unwrap();
        assert_eq!(c.first_name, "Ann");
        assert_eq!(c.last_name, "");
        assert_eq!(c.sync_state, SyncState::Custom);
        assert_eq!(c.display_name(), "Ann");
    }

    #[test]
    fn contact_update_with_unknown_enum_changes_nothing() {
        let mut c = Contact::new(id("ECHOECHO"), PublicKey([1; 32]), 5);
        let before = c.clone();
        let update = sync::Contact {
            identity: "ECHOECHO".into(),
            first_name: Some("Ann".into()),
            verification_level: Some(77),
            ..Default::default()
        };
        assert_eq!(
            c.apply_update(&update),
            Err(ModelError::UnknownEnum {
                field: "verification_level",
                value: 77
            })
        );
        assert_eq!(c, before);
    }

    #[test]
    fn contact_from_sync_needs_a_32_byte_key() {
        let mut s = Contact::new(id("ECHOECHO"), PublicKey([1; 32]), 5).to_sync();
        s.public_key = None;
        assert_eq!(Contact::from_sync(&s), Err(ModelError::MissingPublicKey));
        s.public_key = Some(vec![1; 31]);
        assert_eq!(Contact::from_sync(&s), Err(ModelError::PublicKeyLength(31)));
    }

    #[test]
    fn contact_overrides_round_trip_through_sync() {
        let mut c = Contact::new(id("ECHOECHO"), PublicKey([1; 32]), 5);
        c.read_receipt_policy = Some(ReadReceiptPolicy::DontSendReadReceipt);
        c.nickname = "e".into();
        assert_eq!(Contact::from_sync(&c.to_sync()).unwrap(), c);
    }

    #[test]
    fn group_without_identity_is_refused() {
        assert_eq!(
            Group::from_sync(&sync::Group::default()),
            Err(ModelError::MissingGroupIdentity)
        );
        let bad = sync::Group {
            group_identity: Some(GroupIdentity {
                group_id: 1,
                creator_identity: "nope".into(),
            }),
            ..Default::default()
        };
        assert_eq!(Group::from_sync(&bad), Err(ModelError::InvalidIdentity));
    }

    #[test]
    fn message_state_only_moves_forward() {
        use MessageState::*;
        assert!(Pending.advances_to(Sent));
        assert!(Sent.advances_to(Read));
        assert!(!Delivered.advances_to(Sent));
        assert!(!Read.advances_to(Delivered));
        assert!(Received.advances_to(Read));
        assert!(!Received.advances_to(Sent));
        assert!(!Sent.advances_to(Sent));
    }

    #[test]
    fn settings_merge_only_present_fields() {
        let mut s = Settings::default();
        s.apply_update(&sync::Settings {
            read_receipt_policy: Some(ReadReceiptPolicy::DontSendReadReceipt.into()),
            ..Default::default()
        });
        s.apply_update(&sync::Settings {
            typing_indicator_policy: Some(TypingIndicatorPolicy::DontSendTypingIndicator.into()),
            ..Default::default()
        });
        assert!(!s.sends_read_receipts());
        assert!(!s.sends_typing_indicators());
        assert!(!s.blocks_unknown());
    }
}
