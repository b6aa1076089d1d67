//! What the core tells its adapter (effects) and the UI (events), and why a command fails.

use super::model::{ConversationId, GroupId, Identity, MessageKey, MessageState};
use super::reconnect::ReconnectDecision;
use super::records::Batch;
use crate::csp::{E2eMessageType, OpenError};
use crate::d2d::D2dError;
use crate::d2m::CloseCode;
use crate::device::{DeviceEntry, DeviceError};

/// Work for the adapter, in the order it must be done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Effect {
    /// Apply the writes atomically, then call [`super::App::on_persisted`] with the id. Batches
    /// must be applied in the order they are polled.
    Persist(Batch),
    /// Ask the directory for the identity's public key, then call
    /// [`super::App::on_identity_lookup`] (or [`super::App::on_identity_lookup_failed`] when the
    /// directory cannot be reached).
    LookupIdentity(Identity),
    /// Close the WebSocket with this code (the core ended the connection).
    CloseWebSocket(CloseCode),
    /// Open a WebSocket to the mediator, then call [`super::App::connect`] (or
    /// [`super::App::on_close`] with 5001 if it cannot be opened).
    Connect,
}

/// Why an incoming message or a reflected envelope was dropped (and acknowledged).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dropped {
    /// The receiver is not this identity, or the sender is this identity or malformed.
    NotForUs,
    /// The nonce was used before and the message is not known: a replay.
    ReplayedNonce,
    /// The sender is blocked, or unknown while unknown senders are blocked.
    Blocked(Identity),
    /// The directory does not know the sender.
    UnknownSender(Identity),
    /// The message does not open (spec §9.6 step 2).
    Undecryptable(OpenError),
    /// It opened, but the body is not valid for its type.
    BadBody(E2eMessageType),
    /// A type this core does not handle.
    Unsupported(E2eMessageType),
    /// An edit or delete for a message this device does not have from that sender (Threema
    /// discards those too).
    UnknownMessage(E2eMessageType),
    /// A reflected envelope whose nonce was used before.
    ReplayedEnvelope,
    /// A reflected envelope that does not open (already acked by the session).
    UndecryptableEnvelope(D2dError),
    /// A reflected envelope that opened but whose content is invalid.
    InvalidEnvelope(&'static str),
}

/// What the UI is told.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppEvent {
    /// The mediator accepted the device; queued reflections follow.
    Connected,
    /// Queued reflections are being applied (for a loading screen).
    Loading {
        /// Received so far.
        received: u32,
        /// Announced in `ServerInfo`.
        total: u32,
    },
    /// Everything queued has been applied; the device is up to date.
    Online,
    /// This device now receives from the chat server for the whole group (spec §4).
    Leader,
    /// A message was added to a conversation.
    MessageAdded {
        /// Where.
        conversation: ConversationId,
        /// Which.
        key: MessageKey,
    },
    /// A message was edited or deleted (for everyone, or on this device: then it is gone).
    MessageChanged {
        /// Where.
        conversation: ConversationId,
        /// Which.
        key: MessageKey,
    },
    /// A message's state moved forward.
    MessageState {
        /// Which.
        key: MessageKey,
        /// The new state.
        state: MessageState,
    },
    /// A contact was added or changed.
    ContactChanged(Identity),
    /// A contact was removed. Not emitted since protocol version 23 dropped
    /// `ContactSync.delete` (docs/protocol.md); kept so that the JS event API stays the same.
    ContactRemoved(Identity),
    /// The directory does not know an identity the user tried to add.
    ContactNotFound(Identity),
    /// The directory could not be reached for an identity the user tried to add.
    LookupFailed(Identity),
    /// A group was added or changed.
    GroupChanged(GroupId),
    /// A group was removed.
    GroupRemoved(GroupId),
    /// A distribution list was added or changed.
    DistributionListChanged(u64),
    /// A distribution list was removed.
    DistributionListRemoved(u64),
    /// The settings changed.
    SettingsChanged,
    /// The profile changed.
    ProfileChanged,
    /// A contact started or stopped typing (never stored).
    Typing {
        /// Who.
        identity: Identity,
        /// Whether they are typing now.
        typing: bool,
    },
    /// Something from the network was dropped; for diagnostics.
    Dropped(Dropped),
    /// The group's devices, as asked for with [`super::App::request_devices`].
    Devices(Vec<DeviceEntry>),
    /// A sibling asked for this device's state and it was sent (DESIGN §2.4).
    NewDeviceSyncSent {
        /// The new device.
        device_id: u64,
        /// History messages replayed.
        messages: u32,
    },
    /// A change to shared state was given up, because the mediator closed its transaction
    /// with the same code [`super::MAX_SAME_CLOSE`] times in a row (for a new device's
    /// answer: the rest of that answer). The ops queued behind it go on.
    SyncFailed {
        /// What the change was about.
        scope: crate::d2d::Scope,
        /// The close that kept ending it.
        code: CloseCode,
    },
    /// The chat server sent a message for the user (spec §9.4 0xe1).
    Alert(String),
    /// The chat server's clock (from login-ack, spec §12) differs from this device's by more
    /// than [`crate::csp::MAX_CLOCK_OFFSET_MS`]; the user should set the clock. Nothing stops:
    /// it is a notice.
    ClockOffset {
        /// This device's clock minus the server's, in ms (positive: this device is ahead).
        offset_ms: i64,
    },
    /// The connection ended.
    Disconnected {
        /// The close code.
        code: CloseCode,
        /// What happens next.
        next: ReconnectDecision,
    },
}

/// Why a command was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The contact is not known (add it first).
    #[error("unknown contact {0}")]
    UnknownContact(Identity),
    /// The group is not known.
    #[error("unknown group {0:?}")]
    UnknownGroup(GroupId),
    /// The distribution list is not known.
    #[error("unknown distribution list {0}")]
    UnknownDistributionList(u64),
    /// The user is not (or no longer) a member of the group.
    #[error("not a member of group {0:?}")]
    NotAMember(GroupId),
    /// Only the creator may do this to a group.
    #[error("only the creator may change group {0:?}")]
    NotTheCreator(GroupId),
    /// The contact already exists.
    #[error("contact {0} already exists")]
    ContactExists(Identity),
    /// Sending to oneself is not possible (spec §9.6).
    #[error("cannot message the own identity")]
    OwnIdentity,
    /// An empty text.
    #[error("empty text")]
    EmptyText,
    /// A text too long for one message.
    #[error("text of {len} bytes exceeds {max}")]
    TextTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list or group needs members.
    #[error("no members")]
    NoMembers,
    /// No such message (or it was deleted).
    #[error("unknown message")]
    UnknownMessage,
    /// Only the sender may edit or delete a message for everyone.
    #[error("only the sender may change a message")]
    NotOwnMessage,
    /// The message is still being sent.
    #[error("message not sent yet")]
    NotSentYet,
    /// A reaction must be one emoji of 1 to 64 bytes.
    #[error("invalid reaction")]
    InvalidReaction,
    /// Edits and deletes for everyone are for 6 hours after a message was written.
    #[error("message too old to change")]
    TooLateToChange,
    /// A conversation kind this core cannot send to yet.
    #[error("cannot send to {0:?}")]
    UnsupportedConversation(ConversationId),
    /// A batch id that was never issued.
    #[error("batch {0} was never issued")]
    UnknownBatch(u64),
    /// No connection is open.
    #[error("not connected")]
    NotConnected,
    /// A connection is already open.
    #[error("already connected")]
    AlreadyConnected,
    /// The device session refused.
    #[error("device session: {0}")]
    Device(#[source] DeviceError),
}

impl From<DeviceError> for AppError {
    fn from(e: DeviceError) -> Self {
        Self::Device(e)
    }
}
