//! The identity directory (DESIGN §2.5): identities and their public keys, served over HTTP and
//! used for the vouch check at login. Every identity is in SQLite before it is handed out; this
//! in-memory copy only makes logins fast.

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

/// The in-memory copy of the identities table.
#[derive(Debug, Default)]
pub struct Directory {
    records: RwLock<HashMap<Identity, IdentityRecord>>,
}

impl Directory {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<Identity, IdentityRecord>> {
        self.records
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Identity, IdentityRecord>> {
        self.records
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces a record (after it is committed).
    pub fn insert(&self, record: IdentityRecord) {
        self.write().insert(record.identity, record);
    }

    /// The public key of an identity.
    #[must_use]
    pub fn public_key(&self, identity: &Identity) -> Option<PublicKey> {
        self.read().get(identity).map(|r| r.public_key)
    }

    /// Whether the identity exists.
    #[must_use]
    pub fn contains(&self, identity: &Identity) -> bool {
        self.read().contains_key(identity)
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
        let mut map = self.write();
        let Some(record) = map.get_mut(identity) else {
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
        let mut map = self.write();
        let record = map.get_mut(identity)?;
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
}
