//! The end-to-end keys between the own identity and one peer, and a bounded cache of them.
//!
//! Both keys of a 1:1 message come from one X25519 agreement: the message box key is
//! `X25519HSalsa20(CK.secret, peer CK.public)` (`crypto_box_beforenm`) and the metadata key is
//! `MMK = BLAKE2b-256(key = that same box key, salt "mm", personal "3ma-csp")` (spec §1.3). The
//! box key is symmetric, so the keys that open a peer's messages also seal the messages (and
//! receipts) to it. An agreement is most of the cost of a message (≈ 60 % natively and in wasm
//! when each message made four, BENCHMARKS.md "Browser device"), so a device computes them once
//! per peer key and keeps them in a [`PeerKeyCache`], as NaCl clients keep `beforenm` results.

use core::fmt;

use crate::crypto::{BoxKey, CryptoError, PublicKey, SymmetricKey};

use super::client::{kdf, ClientKey};

/// The box key and the metadata key shared with one peer. Both zeroize on drop.
#[derive(Clone)]
pub struct PeerKeys {
    box_key: BoxKey,
    metadata_key: SymmetricKey,
}

impl fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerKeys(..)")
    }
}

impl PeerKeys {
    /// The NaCl box key (`crypto_box_beforenm`) of the message box.
    #[must_use]
    pub const fn box_key(&self) -> &BoxKey {
        &self.box_key
    }

    /// The message metadata key `MMK`.
    #[must_use]
    pub const fn metadata_key(&self) -> &SymmetricKey {
        &self.metadata_key
    }
}

impl ClientKey {
    /// Box key and metadata key towards (or from) `peer` with one X25519 agreement; refuses a
    /// low-order `peer` key whose shared secret anyone could compute.
    pub fn peer_keys(&self, peer: &PublicKey) -> Result<PeerKeys, CryptoError> {
        let box_key = self.secret().box_key_contributory(peer)?;
        let metadata_key = kdf(box_key.as_bytes(), "mm");
        Ok(PeerKeys {
            box_key,
            metadata_key,
        })
    }
}

/// A bounded, least-recently-used cache of [`PeerKeys`], keyed by the peer's public key.
///
/// The cache key is the peer's public key itself, the only input of the derivation besides the
/// own secret: a contact whose key changed finds no entry and gets freshly derived keys, never
/// the old ones. The own secret is passed in on each lookup and never stored here, so one cache
/// must serve only one own identity (the [`crate::app::App`] holding it has exactly one).
/// Failed derivations are not cached. Entries are boxed so that reordering moves pointers, not
/// key bytes; an evicted or cleared entry is dropped and so zeroized.
pub struct PeerKeyCache {
    /// Least recently used first.
    entries: Vec<(PublicKey, Box<PeerKeys>)>,
    capacity: usize,
}

impl fmt::Debug for PeerKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerKeyCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for PeerKeyCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl PeerKeyCache {
    /// Peers kept by default: 256 × ≈ 100 B. A chat with more active peers than that rederives
    /// (one agreement, ≈ 50 µs natively) for the least recently used one.
    pub const DEFAULT_CAPACITY: usize = 256;

    /// An empty cache that keeps at most `capacity` peers (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            entries: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// The keys shared between `own` and `peer`, derived on a miss. `own` must be the same key
    /// on every call (see the type's docs).
    pub fn get(&mut self, own: &ClientKey, peer: &PublicKey) -> Result<&PeerKeys, CryptoError> {
        let found = self.entries.iter().rposition(|(key, _)| key == peer);
        match found {
            Some(index) => {
                // Move to the most recently used end (a no-op for the peer used last).
                if index + 1 < self.entries.len() {
                    let entry = self.entries.remove(index);
                    self.entries.push(entry);
                }
            }
            None => {
                let keys = Box::new(own.peer_keys(peer)?);
                if self.entries.len() >= self.capacity {
                    self.entries.remove(0);
                }
                self.entries.push((*peer, keys));
            }
        }
        // The entry is the last one now; the error is unreachable (the vector was just pushed
        // to or reordered) and only avoids a panic path.
        self.entries
            .last()
            .map(|(_, keys)| &**keys)
            .ok_or(CryptoError::NonContributory)
    }

    /// How many peers are cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no peer is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops (and so zeroizes) every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    fn key(byte: u8) -> ClientKey {
        ClientKey::new(SecretKey::from_bytes([byte; 32]))
    }

    #[test]
    fn peer_keys_equal_the_separate_derivations_from_both_ends() {
        let (alice, bob) = (key(1), key(2));
        let keys = alice.peer_keys(&bob.public_key()).unwrap();
        let theirs = bob.peer_keys(&alice.public_key()).unwrap();
        assert_eq!(
            keys.box_key(),
            &alice
                .secret()
                .box_key_contributory(&bob.public_key())
                .unwrap()
        );
        assert_eq!(
            keys.metadata_key(),
            &alice.metadata_key(&bob.public_key()).unwrap()
        );
        assert_eq!(keys.box_key(), theirs.box_key());
        assert_eq!(keys.metadata_key(), theirs.metadata_key());
        assert_ne!(keys.box_key(), keys.metadata_key());
        assert_eq!(
            alice.peer_keys(&PublicKey([0; 32])).unwrap_err(),
            CryptoError::NonContributory
        );
    }

    #[test]
    fn cache_is_keyed_by_the_peer_key_and_bounded() {
        let own = key(1);
        let (p2, p3, p4) = (
            key(2).public_key(),
            key(3).public_key(),
            key(4).public_key(),
        );
        let mut cache = PeerKeyCache::new(2);
        let k2 = cache.get(&own, &p2).unwrap().clone();
        assert_eq!(k2.box_key(), own.peer_keys(&p2).unwrap().box_key());
        // A different peer key never gets another key's entry.
        let k3 = cache.get(&own, &p3).unwrap().clone();
        assert_ne!(k3.box_key(), k2.box_key());
        assert_eq!(
            k3.metadata_key(),
            own.peer_keys(&p3).unwrap().metadata_key()
        );
        assert_eq!(cache.len(), 2);
        // p2 used last, so p3 is evicted by p4.
        assert_eq!(cache.get(&own, &p2).unwrap().box_key(), k2.box_key());
        cache.get(&own, &p4).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.entries.iter().all(|(k, _)| *k != p3));
        assert!(cache.entries.iter().any(|(k, _)| *k == p2));
        // A refused key is not cached.
        assert!(cache.get(&own, &PublicKey([0; 32])).is_err());
        assert_eq!(cache.len(), 2);
        cache.clear();
        assert!(cache.is_empty());
    }
}
