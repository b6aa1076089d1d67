//! The chat server protocol (CSP, spec §9): handshake state machines for both sides, frame
//! encryption, payload container and payload types, and the end-to-end message structures.
//!
//! Split by layer so a reader finds each struct of the spec by name:
//! - handshake: `client-hello`, `server-hello`, `login`, `login-ack`, extensions, vouch;
//!   the client and server state machines.
//! - frame / session: length-prefixed, encrypted post-handshake frames with cookies and
//!   sequence numbers.
//! - payload: the payload container and every payload type of §9.4.
//! - message / metadata / e2e / receipt / group / flags: §9.5.

mod client;
mod clock;
mod e2e;
mod extension;
mod flags;
mod frame;
mod group;
mod handshake;
mod message;
mod metadata;
mod payload;
mod receipt;
mod server;
mod unit;

#[cfg(test)]
mod testkit;

pub use client::{ClientEvent, CspClient, CspClientConfig};
pub use clock::{clock_offset_ms, clock_warning, MAX_CLOCK_OFFSET_MS};
pub use e2e::{encode_e2e, E2eContainer, E2eError, E2eMessageType, E2E_MIN_PADDED_LEN};
pub use extension::{
    CspFeatures, DeviceCookie, ExtensionError, Extensions, EXT_CLIENT_INFO, EXT_CSP_DEVICE_ID,
    EXT_DEVICE_COOKIE, EXT_FEATURES, MAX_EXTENSIONS_LEN,
};
pub use flags::MessageFlags;
pub use frame::{
    encode_frame, frame_box_len, nonce, CipherState, DIAGNOSIS_WINDOW, FRAME_HEADER_LEN,
    MAX_FRAME_BOX_LEN, MAX_FRAME_LEN, MAX_FRAME_PLAINTEXT_LEN,
};
pub use group::{GroupCreatorContainer, GroupMemberContainer};
pub use handshake::{
    check_extensions_box_len, validate_identity, vouch, ClientHello, ClientInfoField, Cookie,
    CspError, LoginAck, LoginData, ServerChallengeResponse, ServerHello, CLIENT_HELLO_LEN,
    COOKIE_LEN, EXTENSION_MAGIC, LOGIN_ACK_LEN, LOGIN_ACK_PLAINTEXT_LEN, LOGIN_BOX_LEN,
    LOGIN_DATA_LEN, MAX_EXTENSIONS_BOX_LEN, SERVER_CHALLENGE_RESPONSE_LEN, SERVER_HELLO_LEN,
};
pub use message::{
    is_valid_identity, open_message, open_message_with_keys, seal_message, seal_message_with_keys,
    seal_message_with_nonce, LegacyMessage, MessageError, MessagePayloadVersion, MessageToSeal,
    MessageWithMetadataBox, OpenError, OpenedMessage, SealError, LEGACY_NICKNAME_LEN,
    MAX_MESSAGE_LEN, MESSAGE_HEADER_LEN,
};
pub use metadata::{
    new_metadata, open_metadata, seal_metadata, MetadataError, METADATA_MIN_NICKNAME_AND_PADDING,
};
pub use payload::{
    check_idle_timeout, CspPayload, MessageAck, PayloadContainer, PayloadDirection, PayloadError,
    PayloadType, PushToken, PushTokenType, DEFAULT_IDLE_TIMEOUT_S, IDLE_TIMEOUT_RANGE_S,
    MAX_PAYLOAD_CONTAINER_LEN, MAX_PAYLOAD_DATA_LEN, MAX_PUSH_TOKEN_LEN,
};
pub use receipt::{DeliveryReceipt, DeliveryStatus, ReceiptError};
pub use server::{CspServer, CspServerConfig, ServerEvent};
pub use unit::ServerUnitSplitter;
