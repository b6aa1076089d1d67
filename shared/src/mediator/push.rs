//! Push tokens that let the chat server wake a device group without learning which group it is
//! (docs/protocol.md "CSP on demand", docs/worker.md "Waking a group").
//!
//! The chat server knows identities; only the mediator may know device group ids (DESIGN §1).
//! So the URL a leader registers at the chat server carries the group id sealed under a key only
//! the mediator deployment holds (`TANDEM_PUSH_KEY`): `hex(nonce ‖ secretbox(group id ‖ issued
//! at))`. The Worker opens it to find the object; anybody else sees 80 random-looking bytes,
//! different for every connection, so two tokens of one group cannot even be linked.

use rand_core::CryptoRngCore;

use crate::crypto::{open_nonce_ahead, seal_nonce_ahead, PublicKey, SymmetricKey};
use crate::encoding::{hex_decode, hex_encode};

/// Path prefix of push URLs on the Worker (`/push/<token>`).
pub const PUSH_PATH: &str = "/push/";

/// A token older than this is refused: the leader registers a fresh one at every chat server
/// login, so only a token the chat server kept for a device long gone gets this old.
pub const MAX_PUSH_TOKEN_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Plaintext: group id (32) ‖ issued at, ms (8, little-endian).
const PLAIN_LEN: usize = 40;
/// Hex of nonce (24) ‖ tag (16) ‖ plaintext (40).
const TOKEN_HEX_LEN: usize = 2 * (24 + 16 + PLAIN_LEN);

/// Why a push token was refused. The Worker answers every one the same way (404), so a prober
/// learns nothing; the variants are for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushTokenError {
    /// Not 160 lowercase hex digits.
    #[error("push token is not a token")]
    Malformed,
    /// Not sealed under this deployment's key (or altered).
    #[error("push token does not open")]
    Forged,
    /// Issued more than [`MAX_PUSH_TOKEN_AGE_MS`] ago.
    #[error("push token expired")]
    Expired,
}

/// The deployment's push key. Zeroized on drop (the inner key is).
#[derive(Clone)]
pub struct PushKey(SymmetricKey);

impl core::fmt::Debug for PushKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PushKey(..)")
    }
}

impl PushKey {
    /// From the 32 secret bytes the deployment keeps (`TANDEM_PUSH_KEY`, 64 hex digits).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SymmetricKey::from_bytes(bytes))
    }

    /// Parses 64 hex digits; `None` for anything else.
    #[must_use]
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes: [u8; 32] = hex_decode(text.trim()).ok()?.try_into().ok()?;
        Some(Self::from_bytes(bytes))
    }

    /// A fresh token for `group`, issued at `now_ms`.
    #[must_use]
    pub fn seal(&self, group: &PublicKey, now_ms: u64, rng: &mut impl CryptoRngCore) -> String {
        let mut plain = [0_u8; PLAIN_LEN];
        plain[..32].copy_from_slice(&group.0);
        plain[32..].copy_from_slice(&now_ms.to_le_bytes());
        hex_encode(&seal_nonce_ahead(&self.0, rng, &plain))
    }

    /// The group a token names, if this key sealed it no more than [`MAX_PUSH_TOKEN_AGE_MS`]
    /// before `now_ms`.
    pub fn open(&self, token: &str, now_ms: u64) -> Result<PublicKey, PushTokenError> {
        if token.len() != TOKEN_HEX_LEN {
            return Err(PushTokenError::Malformed);
        }
        let sealed = hex_decode(token).map_err(|_| PushTokenError::Malformed)?;
        let plain = open_nonce_ahead(&self.0, &sealed).map_err(|_| PushTokenError::Forged)?;
        let (group, issued) = plain
            .split_first_chunk::<32>()
            .ok_or(PushTokenError::Forged)?;
        let issued: [u8; 8] = issued.try_into().map_err(|_| PushTokenError::Forged)?;
        let issued = u64::from_le_bytes(issued);
        if now_ms.saturating_sub(issued) > MAX_PUSH_TOKEN_AGE_MS {
            return Err(PushTokenError::Expired);
        }
        Ok(PublicKey(*group))
    }
}

/// The URL a device registers as its push token: `base` (the Worker's origin, no trailing
/// slash) + [`PUSH_PATH`] + token.
#[must_use]
pub fn push_url(base: &str, token: &str) -> String {
    format!("{}{PUSH_PATH}{token}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const T: u64 = 1_800_000_000_000;

    fn key(b: u8) -> PushKey {
        PushKey::from_bytes([b; 32])
    }

    #[test]
    fn a_token_opens_to_its_group_and_fits_a_push_token() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let group = PublicKey([9; 32]);
        let token = key(1).seal(&group, T, &mut rng);
        assert_eq!(token.len(), TOKEN_HEX_LEN);
        assert_eq!(key(1).open(&token, T + 1000), Ok(group));
        let url = push_url("https://mediator.example.workers.dev/", &token);
        assert!(url.starts_with("https://mediator.example.workers.dev/push/"));
        // CSP push tokens are at most 255 bytes (spec §9.4 0x20).
        assert!(url.len() <= 255, "{}", url.len());
    }

    #[test]
    fn two_tokens_of_one_group_cannot_be_linked() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let group = PublicKey([9; 32]);
        let a = key(1).seal(&group, T, &mut rng);
        let b = key(1).seal(&group, T, &mut rng);
        assert_ne!(a, b);
        assert!(!a.contains(&hex_encode(&group.0)));
    }

    #[test]
    fn another_key_an_altered_token_or_an_old_one_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let token = key(1).seal(&PublicKey([9; 32]), T, &mut rng);
        assert_eq!(key(2).open(&token, T), Err(PushTokenError::Forged));
        let mut altered = token.clone().into_bytes();
        altered[100] = if altered[100] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(key(1).open(&altered, T), Err(PushTokenError::Forged));
        assert_eq!(
            key(1).open(&token, T + MAX_PUSH_TOKEN_AGE_MS + 1),
            Err(PushTokenError::Expired)
        );
        assert_eq!(
            key(1).open(&token, T + MAX_PUSH_TOKEN_AGE_MS),
            Ok(PublicKey([9; 32]))
        );
        assert_eq!(key(1).open("", T), Err(PushTokenError::Malformed));
        assert_eq!(
            key(1).open(&"zz".repeat(TOKEN_HEX_LEN / 2), T),
            Err(PushTokenError::Malformed)
        );
    }

    #[test]
    fn keys_parse_from_64_hex_digits_only() {
        assert!(PushKey::from_hex(&"ab".repeat(32)).is_some());
        assert!(PushKey::from_hex(&"ab".repeat(31)).is_none());
        assert!(PushKey::from_hex("not hex").is_none());
        assert_eq!(format!("{:?}", key(1)), "PushKey(..)");
    }

    proptest! {
        #[test]
        fn open_never_panics(token in "\\PC{0,200}", now in any::<u64>()) {
            let _ = key(1).open(&token, now);
        }
    }
}
