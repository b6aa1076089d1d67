//! NaCl `box` and `secretbox` (spec §0): X25519 + HSalsa20 + XSalsa20-Poly1305.
//!
//! A box is a secretbox under the precomputed key `HSalsa20(X25519(sk, pk), 0)`
//! (`crypto_box_beforenm`), so [`BoxKey`] is that precomputed key and both share one
//! seal/open path. Ciphertexts use NaCl's "easy" layout: `tag(16) ‖ ciphertext`.

use core::fmt;

use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use rand_core::CryptoRngCore;
use salsa20::cipher::consts::U10;
use salsa20::cipher::generic_array::GenericArray;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of an XSalsa20 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// A 24-byte XSalsa20 nonce.
pub type Nonce = [u8; NONCE_LEN];

/// Why a box or secretbox operation failed. Deliberately uninformative about *why* a box did not
/// open: a wrong key and a flipped bit are indistinguishable, as they must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The box did not authenticate (wrong key, wrong nonce or tampered bytes).
    #[error("decryption failed: wrong key or tampered data")]
    Decrypt,
    /// The input is shorter than nonce and tag.
    #[error("encrypted data too short: {0} bytes")]
    TooShort(usize),
    /// A peer's public key is a low-order point, so the shared secret would be predictable.
    #[error("public key is a low-order point")]
    NonContributory,
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl PublicKey {
    /// The key's bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses a public key from a slice that must be exactly 32 bytes.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

/// An X25519 secret key (clamped by X25519 on use, as NaCl does). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretKey")
            .field(&self.public_key())
            .finish()
    }
}

impl SecretKey {
    /// Wraps raw secret bytes (for example a derived `dgpk` or an imported `CK`).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random secret key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = [0_u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The raw secret. Callers must not keep copies beyond their own zeroizing storage.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `X25519(self, basepoint)`.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// The NaCl box key shared with `peer` (`crypto_box_beforenm`).
    ///
    /// Does not reject low-order peer keys, exactly like NaCl; use
    /// [`SecretKey::box_key_contributory`] where the peer's key comes from the network.
    #[must_use]
    pub fn box_key(&self, peer: &PublicKey) -> BoxKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        SymmetricKey(hsalsa20(shared.as_bytes()))
    }

    /// Like [`SecretKey::box_key`], but refuses a low-order peer key whose shared secret any
    /// observer could compute.
    pub fn box_key_contributory(&self, peer: &PublicKey) -> Result<BoxKey, CryptoError> {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        if !shared.was_contributory() {
            return Err(CryptoError::NonContributory);
        }
        Ok(SymmetricKey(hsalsa20(shared.as_bytes())))
    }
}

/// `HSalsa20(key, 0^16)`: turns a raw X25519 output into a box key, as NaCl does.
fn hsalsa20(shared: &[u8; 32]) -> [u8; 32] {
    salsa20::hsalsa::<U10>(GenericArray::from_slice(shared), &GenericArray::default()).into()
}

/// A 32-byte symmetric key for `secretbox` (a derived subkey such as `dgrk`). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SymmetricKey(pub(crate) [u8; 32]);

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(..)")
    }
}

/// The precomputed key of a NaCl box between two parties. Zeroized on drop.
pub type BoxKey = SymmetricKey;

impl SymmetricKey {
    /// Wraps raw key bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key, for key derivation that uses it as BLAKE2b key material.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `secretbox(plaintext)` with NaCl's layout `tag ‖ ciphertext`.
    #[must_use]
    pub fn seal(&self, nonce: &Nonce, plaintext: &[u8]) -> Vec<u8> {
        let cipher = XSalsa20Poly1305::new(GenericArray::from_slice(&self.0));
        // Encryption with a 24-byte nonce cannot fail for inputs below 2^38 bytes; the only error
        // XSalsa20Poly1305 reports is a plaintext too long for the counter, which no caller
        // here can produce (frames are at most 64 KiB).
        cipher
            .encrypt(GenericArray::from_slice(nonce), plaintext)
            .unwrap_or_default()
    }

    /// Opens a secretbox in NaCl's layout `tag ‖ ciphertext`.
    pub fn open(&self, nonce: &Nonce, boxed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if boxed.len() < TAG_LEN {
            return Err(CryptoError::TooShort(boxed.len()));
        }
        let cipher = XSalsa20Poly1305::new(GenericArray::from_slice(&self.0));
        cipher
            .decrypt(GenericArray::from_slice(nonce), boxed)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// A fresh random nonce.
pub fn random_nonce(rng: &mut impl CryptoRngCore) -> Nonce {
    let mut nonce = [0_u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// Seals with a fresh random nonce in the "nonce-ahead" layout `nonce ‖ tag ‖ ciphertext` used by
/// every d2m/d2d blob (spec §0).
pub fn seal_nonce_ahead(
    key: &SymmetricKey,
    rng: &mut impl CryptoRngCore,
    plaintext: &[u8],
) -> Vec<u8> {
    let nonce = random_nonce(rng);
    let sealed = key.seal(&nonce, plaintext);
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a "nonce-ahead" blob (`nonce ‖ tag ‖ ciphertext`).
pub fn open_nonce_ahead(key: &SymmetricKey, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (nonce, boxed) = data
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(CryptoError::TooShort(data.len()))?;
    if boxed.len() < TAG_LEN {
        return Err(CryptoError::TooShort(data.len()));
    }
    key.open(nonce, boxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// RFC 7748 §6.1 keys; the box key is NaCl's `firstkey` from "Cryptography in NaCl".
    #[test]
    fn box_key_matches_nacl_firstkey() {
        let alice = SecretKey::from_bytes(h32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = SecretKey::from_bytes(h32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            alice.public_key().0,
            h32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public_key().0,
            h32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let firstkey = h32("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389");
        assert_eq!(alice.box_key(&bob.public_key()).0, firstkey);
        assert_eq!(bob.box_key(&alice.public_key()).0, firstkey);
    }

    #[test]
    fn low_order_peer_key_is_refused() {
        let alice = SecretKey::from_bytes([7; 32]);
        assert_eq!(
            alice.box_key_contributory(&PublicKey([0; 32])),
            Err(CryptoError::NonContributory)
        );
    }

    #[test]
    fn nonce_ahead_round_trip_and_tamper() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let key = SymmetricKey::from_bytes([9; 32]);
        let sealed = seal_nonce_ahead(&key, &mut rng, b"hello");
        assert_eq!(sealed.len(), NONCE_LEN + TAG_LEN + 5);
        assert_eq!(open_nonce_ahead(&key, &sealed).unwrap(), b"hello");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open_nonce_ahead(&key, &bad),
                Err(CryptoError::Decrypt),
                "bit flip at {i}"
            );
        }
        assert_eq!(
            open_nonce_ahead(&key, &sealed[..39]),
            Err(CryptoError::TooShort(39))
        );
        let other = SymmetricKey::from_bytes([8; 32]);
        assert_eq!(open_nonce_ahead(&other, &sealed), Err(CryptoError::Decrypt));
    }
}
