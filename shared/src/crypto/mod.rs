//! Cryptographic building blocks, all from RustCrypto crates.
//!
//! Every key type zeroizes on drop and prints only its public half (or nothing) in `Debug`.
//! Randomness is always passed in as a [`rand_core::CryptoRngCore`], never drawn here.

mod kdf;
mod nacl;
mod padding;

pub use kdf::{blake2b_256, Blake2bParams, KdfError};
pub use nacl::{
    open_nonce_ahead, random_nonce, seal_nonce_ahead, BoxKey, CryptoError, Nonce, PublicKey,
    SecretKey, SymmetricKey, NONCE_LEN, TAG_LEN,
};
pub use padding::{pad, unpad, PaddingError};

/// Constant-time equality for secrets and authenticators (cookies, challenges, responses).
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
