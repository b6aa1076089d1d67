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
