//! The identity directory (DESIGN §2.5): identities and their public keys, served over HTTP and
//! used for the vouch check at login. Every identity is in the database before it is handed
//! out; this in-memory copy (all of SQLite's, a bounded cache of PostgreSQL's) only makes
//! lookups fast.

mod bulk;
mod http;
mod tokens;

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand::Rng;
use tandem_shared::crypto::PublicKey;

use crate::types::Identity;

pub use bulk::{
    fetch_bulk, BulkError, FEATURE_MASK, IDENTITY_STATE_ACTIVE, IDENTITY_TYPE_REGULAR,
    MAX_BULK_IDENTITIES,
};
pub use http::{router, HttpState};
pub use tokens::{TokenError, Tokens, MAX_TOKENS, TOKEN_LEN, TOKEN_TTL};

/// Identities a node caches with PostgreSQL (about 150 bytes each: 15 MB).
pub const PG_CACHE_CAPACITY: usize = 100_000;

/// Characters of a server-assigned identity.
pub const IDENTITY_ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A random identity of 8 characters `[0-9A-Z]`.
pub fn generate_identity(rng: &mut impl Rng) -> Identity {
    let mut out = [0_u8; 8];
    for c in &mut out {
        let i = rng.gen_range(0..IDENTITY_ALPHABET.len());
        *c = IDENTITY_ALPHABET.get(i).copied().unwrap_or(b'0');
    }
    out
}

/// Whether `bytes` is a server-assigned identity shape: 8 characters `[0-9A-Z]`.
#[must_use]
pub fn parse_identity(text: &str) -> Option<Identity> {
    let bytes: Identity = text.as_bytes().try_into().ok()?;
    bytes
        .iter()
        .all(|c| IDENTITY_ALPHABET.contains(c))
        .then_some(bytes)
}

/// What the server keeps per identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The identity.
    pub identity: Identity,
    /// Its permanent public key `CK.public`.
    pub public_key: PublicKey,
    /// The last device cookie a login presented (spec §9.3).
    pub device_cookie: Option<[u8; 16]>,
    /// Whether a cookie change is waiting for clear-device-cookie-change-indication.
    pub cookie_changed: bool,
}

/// The in-memory copy of the identities table: all of it on one node (SQLite, loaded at
/// start), a bounded cache of it with several nodes (PostgreSQL), where every miss is read
/// from the database by the caller and inserted here.
#[derive(Debug, Default)]
pub struct Directory {
    records: RwLock<Records>,
}

/// Two generations: inserts go to `current`; when it holds half the capacity it becomes
/// `previous` (the old `previous` is dropped), and a record found in `previous` moves back to
/// `current`. So at most `capacity` records are held and the ones in use stay.
#[derive(Debug, Default)]
struct Records {
    current: HashMap<Identity, IdentityRecord>,
    previous: HashMap<Identity, IdentityRecord>,
    /// `None`: unbounded (every identity is here).
    capacity: Option<usize>,
}

impl Records {
    fn insert(&mut self, record: IdentityRecord) {
        if let Some(capacity) = self.capacity {
            if !self.current.contains_key(&record.identity)
                && self.current.len() >= (capacity / 2).max(1)
            {
                self.previous = core::mem::take(&mut self.current);
            }
        }
        self.previous.remove(&record.identity);
        self.current.insert(record.identity, record);
    }

    /// The record, moved to the current generation.
    fn get_mut(&mut self, identity: &Identity) -> Option<&mut IdentityRecord> {
        if let Some(record) = self.previous.remove(identity) {
            self.insert(record);
        }
        self.current.get_mut(identity)
    }

    fn get(&self, identity: &Identity) -> Option<&IdentityRecord> {
        self.current
            .get(identity)
            .or_else(|| self.previous.get(identity))
    }
}

impl Directory {
    /// A cache of at most `capacity` identities (several nodes: the database has them all).
    #[must_use]
    pub fn bounded(capacity: usize) -> Self {
        Self {
            records: RwLock::new(Records {
                capacity: Some(capacity),
                ..Records::default()
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Records> {
        self.records
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Records> {
        self.records
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces a record (after it is committed).
    pub fn insert(&self, record: IdentityRecord) {
        self.write().insert(record);
    }

    /// The public key of an identity, if it is here.
    #[must_use]
    pub fn public_key(&self, identity: &Identity) -> Option<PublicKey> {
        let records = self.read();
        let record = records.get(identity)?;
        let key = record.public_key;
        if records.current.contains_key(identity) {
            return Some(key);
        }
        drop(records);
        // Found in the older generation: keep it, since it is in use.
        self.write().get_mut(identity);
        Some(key)
    }

    /// Whether the identity is here.
    #[must_use]
    pub fn contains(&self, identity: &Identity) -> bool {
        self.public_key(identity).is_some()
    }

    /// Identities held (all of them on one node, the cached ones with several).
    #[must_use]
    pub fn len(&self) -> usize {
        let records = self.read();
        records.current.len() + records.previous.len()
    }

    /// Whether no identity is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a login's device cookie (spec §9.3): returns the new (cookie, changed) state to
    /// persist if it changed, and whether the session must be told about a change.
    ///
    /// A missing cookie counts as all zeros once a cookie is stored. A different cookie sets the
    /// changed flag and becomes the remembered one; the flag stays until a client clears it.
    pub fn observe_cookie(
        &self,
        identity: &Identity,
        cookie: Option<[u8; 16]>,
    ) -> (Option<([u8; 16], bool)>, bool) {
        let mut records = self.write();
        let Some(record) = records.get_mut(identity) else {
            return (None, false);
        };
        let update = match (record.device_cookie, cookie) {
            (None, None) => None,
            (None, Some(new)) => Some((new, record.cookie_changed)),
            (Some(old), presented) => {
                let presented = presented.unwrap_or([0; 16]);
                if tandem_shared::crypto::ct_eq(&old, &presented) {
                    None
                } else {
                    Some((presented, true))
                }
            }
        };
        if let Some((new, changed)) = update {
            record.device_cookie = Some(new);
            record.cookie_changed = changed;
        }
        (update, record.cookie_changed)
    }

    /// Clears the changed flag; returns the state to persist if there was a flag to clear.
    pub fn clear_cookie_change(&self, identity: &Identity) -> Option<[u8; 16]> {
        let mut records = self.write();
        let record = records.get_mut(identity)?;
        if !record.cookie_changed {
            return None;
        }
        record.cookie_changed = false;
        Some(record.device_cookie.unwrap_or([0; 16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_identities_have_the_server_shape() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = generate_identity(&mut rng);
            assert!(id
                .iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
            assert_eq!(parse_identity(core::str::from_utf8(&id).unwrap()), Some(id));
            seen.insert(id);
        }
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn identity_parsing_refuses_other_shapes() {
        for bad in [
            "",
            "ABCDEFG",
            "ABCDEFGHI",
            "abcdefgh",
            "*ABCDEFG",
            "ABCD-FGH",
            "ÄBCDEFG",
        ] {
            assert_eq!(parse_identity(bad), None, "{bad}");
        }
    }

    fn directory_with_one() -> Directory {
        let directory = Directory::default();
        directory.insert(IdentityRecord {
            identity: *b"AAAAAAAA",
            public_key: PublicKey([9; 32]),
            device_cookie: None,
            cookie_changed: false,
        });
        directory
    }

    #[test]
    fn first_cookie_is_remembered_and_a_different_one_raises_the_flag() {
        let d = directory_with_one();
        let id = b"AAAAAAAA";
        assert_eq!(d.observe_cookie(id, None), (None, false));
        assert_eq!(
            d.observe_cookie(id, Some([1; 16])),
            (Some(([1; 16], false)), false)
        );
        assert_eq!(d.observe_cookie(id, Some([1; 16])), (None, false));
        assert_eq!(
            d.observe_cookie(id, Some([2; 16])),
            (Some(([2; 16], true)), true)
        );
        // The flag persists on later logins until cleared.
        assert_eq!(d.observe_cookie(id, Some([2; 16])), (None, true));
        assert_eq!(d.clear_cookie_change(id), Some([2; 16]));
        assert_eq!(d.clear_cookie_change(id), None);
        // A login without a cookie counts as all zeros once one is stored.
        assert_eq!(d.observe_cookie(id, None), (Some(([0; 16], true)), true));
    }

    fn record(i: u32) -> IdentityRecord {
        let mut identity = *b"00000000";
        identity[4..].copy_from_slice(format!("{i:04}").as_bytes());
        IdentityRecord {
            identity,
            public_key: PublicKey([1; 32]),
            device_cookie: None,
            cookie_changed: false,
        }
    }

    #[test]
    fn a_bounded_directory_holds_at_most_its_capacity_and_keeps_what_is_used() {
        let d = Directory::bounded(100);
        let used = record(0);
        d.insert(used.clone());
        for i in 1..1000 {
            d.insert(record(i));
            // In use all along (a session looks it up now and then): never evicted.
            if i % 40 == 0 {
                assert!(d.contains(&used.identity), "evicted at {i}");
            }
            assert!(d.len() <= 100, "{} held at {i}", d.len());
        }
        assert!(d.contains(&record(999).identity));
        assert!(!d.contains(&record(1).identity), "old, unused: evicted");
        // A cookie is observed on a record in either generation.
        assert_eq!(
            d.observe_cookie(&used.identity, Some([1; 16])),
            (Some(([1; 16], false)), false)
        );
        let unbounded = Directory::default();
        for i in 0..1000 {
            unbounded.insert(record(i));
        }
        assert_eq!(unbounded.len(), 1000);
    }
}
