//! Tandem's protocol core, sans-IO.
//!
//! Everything that speaks the wire lives here once: key derivation, the NaCl primitives, the d2m,
//! d2d and CSP codecs and the protocol state machines. Nothing in this crate opens a socket, reads
//! a clock or draws randomness it was not handed: callers feed bytes, time and an RNG in and take
//! frames and effects out. That is what lets the Cloudflare Worker, the browser client and the
//! native test harness share one implementation, and what makes deterministic simulation possible.
//!
//! Layout follows the protocol layers (see `docs/protocol.md` for every decision where the
//! published protocol is silent):
//! - [`crypto`]: BLAKE2b KDF, NaCl box/secretbox, nonce-ahead layout, random padding.
//! - [`keys`]: the device group key and its subkeys, the mediator URL.
//! - [`d2m`]: device-to-mediator containers and payloads, close codes.
//! - [`d2d`]: the device-to-device envelope and sync shapes.
//! - [`csp`]: the chat server protocol: handshake (both sides), frames, payloads, messages.
//! - [`id_backup`]: the Threema ID backup format.
//! - [`directory`]: the directory's challenge-response.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod app;
pub mod codec;
pub use tandem_crypto as crypto;
pub mod csp;
pub mod d2d;
pub mod d2m;
pub mod device;
pub mod directory;
pub mod encoding;
pub mod id_backup;
pub mod keys;
pub mod mediator;
pub mod proto;
