//! Cryptographic building blocks, all from RustCrypto crates.
//!
//! Every key type zeroizes on drop and prints only its public half (or nothing) in `Debug`.
//! Randomness is always passed in as a [`rand_core::CryptoRngCore`], never drawn here.
//!
//! Its own crate (re-exported as `tandem_shared::crypto`) only so that the browser build can
//! compile it at opt-level 3 while the rest stays small: see `Cargo.toml`.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod kdf;
mod nacl;
mod padding;

pub use kdf::{blake2b_256, Blake2bParams, KdfError};
pub use nacl::{
    open_nonce_ahead, random_nonce, seal_nonce_ahead, BoxKey, CryptoError, Nonce, PublicKey,
    SecretKey, SymmetricKey, NONCE_LEN, TAG_LEN,
};
pub use padding::{pad, unpad, PaddingError};

/// `HMAC-SHA256(key, message)` (the nonce replay store's hash, spec §0).
#[must_use]
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

/// Constant-time equality for secrets and authenticators (cookies, challenges, responses).
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
