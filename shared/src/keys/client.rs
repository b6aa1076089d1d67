//! The client key `CK` (the identity's permanent X25519 key) and what the CSP derives from it
//! (spec §1.3, personal `3ma-csp`).

use core::fmt;

use crate::crypto::{
    blake2b_256, Blake2bParams, BoxKey, CryptoError, PublicKey, SecretKey, SymmetricKey,
};

/// A Threema-style identity is 8 ASCII characters.
pub const IDENTITY_LEN: usize = 8;

const CSP: &str = "3ma-csp";

pub(super) fn kdf(key: &[u8], salt: &'static str) -> SymmetricKey {
    // Keys are 32 or 64 bytes and salts are fixed constants of ≤ 8 bytes: cannot fail.
    SymmetricKey::from_bytes(
        blake2b_256(
            key,
            Blake2bParams {
                salt,
                personal: CSP,
            },
            &[],
        )
        .unwrap_or([0; 32]),
    )
}

/// The identity's permanent secret key `CK`, from which everything else follows.
#[derive(Clone)]
pub struct ClientKey(SecretKey);

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientKey")
            .field(&self.0.public_key())
            .finish()
    }
}

impl ClientKey {
    /// Wraps the secret key.
    #[must_use]
    pub const fn new(secret: SecretKey) -> Self {
        Self(secret)
    }

    /// The secret key.
    #[must_use]
    pub const fn secret(&self) -> &SecretKey {
        &self.0
    }

    /// `CK.public`, published in the directory.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.0.public_key()
    }

    /// Vouch key (salt `v2`): `BLAKE2b-256(key = X25519HSalsa20(CK, SK) ‖ X25519HSalsa20(CK, TSK))`.
    ///
    /// The server checks the vouch with the same function from its side, because the box key is
    /// symmetric: `X25519HSalsa20(CK, SK) = X25519HSalsa20(SK, CK.public)`.
    #[must_use]
    pub fn vouch_key(ss1: &BoxKey, ss2: &BoxKey) -> SymmetricKey {
        let mut key = [0_u8; 64];
        key[..32].copy_from_slice(ss1.as_bytes());
        key[32..].copy_from_slice(ss2.as_bytes());
        let derived = kdf(&key, "v2");
        zeroize::Zeroize::zeroize(&mut key);
        derived
    }

    /// Message metadata key `MMK` towards (or from) `peer` (salt `mm`). A device that also needs
    /// the box key takes both from [`ClientKey::peer_keys`] with one agreement.
    pub fn metadata_key(&self, peer: &PublicKey) -> Result<SymmetricKey, CryptoError> {
        let shared = self.0.box_key_contributory(peer)?;
        Ok(kdf(shared.as_bytes(), "mm"))
    }

    /// Directory challenge-response key (salt `dir`) for the directory's `tokenRespKeyPub`.
    pub fn directory_key(
        &self,
        challenge_public_key: &PublicKey,
    ) -> Result<SymmetricKey, CryptoError> {
        let shared = self.0.box_key_contributory(challenge_public_key)?;
        Ok(kdf(shared.as_bytes(), "dir"))
    }
}

/// The directory key from the directory's side, which holds the challenge secret instead of `CK`.
#[must_use]
pub(crate) fn csp_dir_key(shared: &BoxKey) -> SymmetricKey {
    kdf(shared.as_bytes(), "dir")
}
