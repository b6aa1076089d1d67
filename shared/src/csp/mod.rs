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
mod extension;
mod frame;
mod handshake;
mod server;
mod unit;

#[cfg(test)]
mod testkit;

pub use client::{ClientEvent, CspClient, CspClientConfig};
pub use extension::{
    DeviceCookie, ExtensionError, Extensions, EXT_CLIENT_INFO, EXT_CSP_DEVICE_ID,
    EXT_DEVICE_COOKIE, EXT_MESSAGE_PAYLOAD_VERSION, MAX_EXTENSIONS_LEN,
    MESSAGE_PAYLOAD_VERSION_WITH_METADATA,
};
pub use frame::{
    encode_frame, frame_box_len, nonce, CipherState, DIAGNOSIS_WINDOW, FRAME_HEADER_LEN,
    MAX_FRAME_BOX_LEN, MAX_FRAME_LEN, MAX_FRAME_PLAINTEXT_LEN,
};
pub use handshake::{
    check_extensions_box_len, validate_identity, vouch, ClientHello, ClientInfoField, Cookie,
    CspError, LoginData, ServerChallengeResponse, ServerHello, CLIENT_HELLO_LEN, COOKIE_LEN,
    EXTENSION_MAGIC, LOGIN_ACK_LEN, LOGIN_ACK_PLAINTEXT, LOGIN_BOX_LEN, LOGIN_DATA_LEN,
    MAX_EXTENSIONS_BOX_LEN, SERVER_CHALLENGE_RESPONSE_LEN, SERVER_HELLO_LEN,
};
pub use server::{CspServer, CspServerConfig, ServerEvent};
pub use unit::ServerUnitSplitter;
