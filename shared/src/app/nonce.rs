//! The nonce replay store (spec §0, DESIGN §5): every nonce a device has accepted or used is
//! remembered as `HMAC-SHA256(key = own identity, msg = nonce)` in one of two scopes, so a
//! replayed CSP message or reflected envelope is recognised without storing the nonce itself.

use std::collections::HashSet;

use super::model::Identity;
use crate::crypto::{HmacSha256, Nonce};

/// Which protocol a nonce belongs to (spec §0 `NonceScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum NonceScope {
    /// CSP message nonces (incoming and outgoing end-to-end messages).
    Csp = 0,
    /// Nonces of reflected d2d envelopes.
    D2d = 1,
}

impl NonceScope {
    /// The scope for its stored byte.
    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Csp),
            1 => Some(Self::D2d),
            _ => None,
        }
    }
}

/// `HMAC-SHA256(key = identity as 8 ASCII bytes, msg = nonce)`.
#[must_use]
pub fn nonce_hash(identity: &Identity, nonce: &Nonce) -> [u8; 32] {
    NonceHasher::new(identity).hash(nonce)
}

/// [`nonce_hash`] for one identity with the HMAC key absorbed once: half the SHA-256 work per
/// nonce, and a device hashes several nonces per message.
#[derive(Clone)]
pub struct NonceHasher {
    identity: Identity,
    mac: HmacSha256,
}

impl NonceHasher {
    /// The hasher for `identity`'s store.
    #[must_use]
    pub fn new(identity: &Identity) -> Self {
        Self {
            identity: *identity,
            mac: HmacSha256::new(identity.as_bytes()),
        }
    }

    /// `HMAC-SHA256(key = identity, msg = nonce)`.
    #[must_use]
    pub fn hash(&self, nonce: &Nonce) -> [u8; 32] {
        self.mac.mac(nonce)
    }
}

/// Equal when keyed by the same identity (the HMAC state follows from it).
impl PartialEq for NonceHasher {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

impl core::fmt::Debug for NonceHasher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NonceHasher")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// One stored entry: the scope and the hash.
pub type NonceEntry = (NonceScope, [u8; 32]);

/// The hashes of used nonces, per scope.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NonceStore {
    used: HashSet<NonceEntry>,
}

impl NonceStore {
    /// Whether the hash is already known.
    #[must_use]
    pub fn contains(&self, entry: &NonceEntry) -> bool {
        self.used.contains(entry)
    }

    /// Records a hash; `false` if it was known.
    pub fn insert(&mut self, entry: NonceEntry) -> bool {
        self.used.insert(entry)
    }

    /// How many hashes are stored.
    #[must_use]
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether none are stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Every entry (for a new device's join data and for tests).
    pub fn iter(&self) -> impl Iterator<Item = &NonceEntry> {
        self.used.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §10: HMAC-SHA256(key = "MEMEMEME", msg = 24 × 0x2a), as Threema Desktop's test has it
    /// and as Python's `hmac.new(b"MEMEMEME", b"\x2a"*24, "sha256").hexdigest()` gives.
    #[test]
    fn nonce_hash_matches_the_spec_vector() {
        let me: Identity = "MEMEMEME".parse().unwrap();
        assert_eq!(
            hex::encode(nonce_hash(&me, &[0x2a; 24])),
            "4aaf69e4c59736b055da601179251312dac3f85b6a36c06d08d04f9dc9ee75e6"
        );
    }

    #[test]
    fn the_kept_hasher_matches_a_fresh_hmac_for_every_nonce() {
        let me: Identity = "MEMEMEME".parse().unwrap();
        let hasher = NonceHasher::new(&me);
        for i in 0..=255u8 {
            let nonce = [i; 24];
            assert_eq!(
                hasher.hash(&nonce),
                crate::crypto::hmac_sha256(me.as_bytes(), &nonce)
            );
        }
        let other: Identity = "OTHER001".parse().unwrap();
        assert_ne!(
            NonceHasher::new(&other).hash(&[1; 24]),
            hasher.hash(&[1; 24])
        );
    }

    #[test]
    fn scopes_are_separate() {
        let me: Identity = "MEMEMEME".parse().unwrap();
        let h = nonce_hash(&me, &[1; 24]);
        let mut store = NonceStore::default();
        assert!(store.insert((NonceScope::Csp, h)));
        assert!(!store.insert((NonceScope::Csp, h)));
        assert!(!store.contains(&(NonceScope::D2d, h)));
        assert_eq!(store.len(), 1);
        assert_eq!(NonceScope::from_u8(1), Some(NonceScope::D2d));
        assert_eq!(NonceScope::from_u8(2), None);
    }
}
