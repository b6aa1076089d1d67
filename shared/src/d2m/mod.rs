//! Device-to-mediator framing (spec §2, §3): containers, payloads, close codes and the handshake
//! challenge. Pure codecs; the connection state machines build on them.

mod challenge;
mod close;
mod container;
mod message;
mod reflect;

pub use challenge::{
    respond, validate_server_hello, verify, ChallengeError, ServerChallenge, CHALLENGE_LEN,
    ESK_LEN, RESPONSE_LEN,
};
pub use close::{CloseCode, Reconnect};
pub use container::{
    Container, ContainerError, PayloadEncoding, PayloadType, CONTAINER_HEADER_LEN,
    MAX_CONTAINER_LEN, MAX_ENCRYPTED_ENVELOPE_LEN, MAX_PAYLOAD_LEN, MAX_PLAIN_ENVELOPE_LEN,
    MIN_CONTAINER_LEN,
};
pub use message::{D2mDecodeError, D2mEncodeError, D2mMessage};
pub use reflect::{
    Reflect, ReflectAck, ReflectFlags, Reflected, ReflectedAck, StructbufError, REFLECTED_ACK_LEN,
    REFLECTED_HEADER_LEN, REFLECT_ACK_LEN, REFLECT_HEADER_LEN,
};

/// `ClientHello.tandem_features` / `ServerInfo.tandem_features` bit (Tandem's extension,
/// docs/protocol.md "CSP on demand"): the chat server connection may close while the device
/// stays connected (`CspClose`), and the mediator wakes the leader (`Wake`).
pub const TANDEM_FEATURE_CSP_ON_DEMAND: u32 = crate::proto::d2m::TandemFeature::CspOnDemand as u32;
