//! The device group key (`dgk`) and its five subkeys.
//!
//! Tandem derives `dgk` from the identity's secret key (DESIGN §2.2, the 2020 design) so that any
//! device holding the identity computes the same group, and the mediator can change none of it.

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{blake2b_256, Blake2bParams, PublicKey, SecretKey, SymmetricKey};

const MDEV: &str = "3ma-mdev";

fn derive(key: &[u8; 32], salt: &'static str, personal: &'static str) -> [u8; 32] {
    // Key length (32) and parameter lengths (≤ 8) are fixed here, so this cannot fail; the
    // fallback only exists to keep the function total.
    blake2b_256(key, Blake2bParams { salt, personal }, &[]).unwrap_or([0; 32])
}

/// The 32-byte device group key. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct DeviceGroupKey([u8; 32]);

impl fmt::Debug for DeviceGroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceGroupKey(..)")
    }
}

impl DeviceGroupKey {
    /// Wraps raw key bytes (a test vector, or a key received from elsewhere).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// `dgk = BLAKE2b-256(key = CK.secret, salt = "dgk", personal = "3ma-mdev")` (DESIGN §2.2).
    #[must_use]
    pub fn from_client_key(ck: &SecretKey) -> Self {
        Self(derive(ck.as_bytes(), "dgk", MDEV))
    }

    /// The raw key.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Derives the five subkeys (spec §1.1).
    #[must_use]
    pub fn derive_keys(&self) -> DeviceGroupKeys {
        let dgpk = SecretKey::from_bytes(derive(&self.0, "p", MDEV));
        let dgpk_public = dgpk.public_key();
        DeviceGroupKeys {
            dgpk,
            dgpk_public,
            dgrk: SymmetricKey::from_bytes(derive(&self.0, "r", MDEV)),
            dgdik: SymmetricKey::from_bytes(derive(&self.0, "di", MDEV)),
            dgsddk: SymmetricKey::from_bytes(derive(&self.0, "sdd", MDEV)),
            dgtsk: SymmetricKey::from_bytes(derive(&self.0, "ts", MDEV)),
        }
    }
}

/// The subkeys of a device group (spec §1.1 table).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeviceGroupKeys {
    /// Device Group Path Key: answers the mediator's challenge.
    pub dgpk: SecretKey,
    /// `DGPK.public`: the anonymous device group id the mediator knows the group by.
    pub dgpk_public: PublicKey,
    /// Device Group Reflect Key: encrypts reflected `d2d.Envelope`s.
    pub dgrk: SymmetricKey,
    /// Device Group Device Info Key: encrypts `d2d.DeviceInfo`.
    pub dgdik: SymmetricKey,
    /// Device Group Shared Device Data Key: encrypts `d2d.SharedDeviceData`.
    pub dgsddk: SymmetricKey,
    /// Device Group Transaction Scope Key: encrypts `d2d.TransactionScope`.
    pub dgtsk: SymmetricKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The DGK vector of spec §10.
    #[test]
    fn derives_spec_vector() {
        let dgk = DeviceGroupKey::from_bytes(h32("1b35ed7e1ba9993171fe4a7eed30c2831905c3a583616d61e93782da900bf8ba"));
        let keys = dgk.derive_keys();
        assert_eq!(keys.dgpk.as_bytes(), &h32("60c0ed9098902c0b6093be4a819bf344900bc7473504ccdb61004b1b58aa2233"));
        assert_eq!(keys.dgrk.as_bytes(), &h32("a4bf34ff67ed3b731a2aa6e023335f7eba6c914e877da3d15bff41d84f7f75f8"));
        assert_eq!(keys.dgdik.as_bytes(), &h32("5953fb9775d8c23fae573e245534dac2c7aa16b62ea73b954ea4177d192e8c50"));
        assert_eq!(keys.dgsddk.as_bytes(), &h32("7a91ad36bc9537ccfd6fd76b23d7f5319e506e6a5294c988c9a75c8e34a3c9dd"));
        assert_eq!(keys.dgtsk.as_bytes(), &h32("7c6b94affb171c564bfd375d50c4781d72ab2671ae4035ab4307dedce67ef30e"));
        assert_eq!(keys.dgpk_public.0, h32("e77d9b02195b880c1374650ec136b44e7b0b6d9e47b479dbd5d97c470acb0b40"));
    }

    /// Expected value from Python: `hashlib.blake2b(key=b"\x42"*32, salt=b"dgk",
    /// person=b"3ma-mdev", digest_size=32)`.
    #[test]
    fn dgk_from_client_key_is_keyed_blake2b() {
        let ck = SecretKey::from_bytes([0x42; 32]);
        let dgk = DeviceGroupKey::from_client_key(&ck);
        let expected = h32("0705d190e81ade2804a02e592c77a6a9460f05e0228364dadab11687581a8ea7");
        assert_eq!(dgk.as_bytes(), &expected);
        assert_ne!(DeviceGroupKey::from_client_key(&SecretKey::from_bytes([0x43; 32])), dgk);
    }
}
