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
    HmacSha256::new(key).mac(message)
}

/// HMAC-SHA256 with its key absorbed once. `hmac_sha256` hashes the two padded key blocks again
/// on every call; this keeps them, so a short message costs two SHA-256 blocks instead of four
/// (the nonce replay store hashes several nonces per message, and in the browser SHA-256 runs
/// without the CPU's SHA instructions).
///
/// The key-derived state is not zeroized: use it only with public keys (the store's key is the
/// own identity, which is public).
#[derive(Clone)]
pub struct HmacSha256(hmac::Hmac<sha2::Sha256>);

impl HmacSha256 {
    /// Absorbs `key` (any length).
    #[must_use]
    pub fn new(key: &[u8]) -> Self {
        use hmac::digest::KeyInit;
        // `Hmac` takes keys of any length: it hashes long ones, so this never fails.
        Self(
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| {
                <hmac::Hmac<sha2::Sha256> as KeyInit>::new(&Default::default())
            }),
        )
    }

    /// `HMAC-SHA256(key, message)`.
    #[must_use]
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = self.0.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }
}

impl core::fmt::Debug for HmacSha256 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HmacSha256")
    }
}

/// Constant-time equality for secrets and authenticators (cookies, challenges, responses).
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test cases 2 (short key) and 6 (a key longer than the block, hashed first).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let short = HmacSha256::new(b"Jefe");
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            hex::encode(short.mac(b"what do ya want for nothing?")),
            expected
        );
        // The kept key state is reused, not consumed: the same input gives the same tag.
        assert_eq!(
            hex::encode(short.mac(b"what do ya want for nothing?")),
            expected
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            expected
        );
        let long = HmacSha256::new(&[0xaa; 131]);
        assert_eq!(
            hex::encode(long.mac(b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
