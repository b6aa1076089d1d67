//! Pending identity-creation challenges (DESIGN §2.5 step one): random, single use, expiring,
//! bounded in number. They live in memory only: a lost token just means the client starts over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use tandem_shared::crypto::{PublicKey, SecretKey};

/// Random bytes in a token.
pub const TOKEN_LEN: usize = 32;
/// How long a token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// Most tokens pending at once.
pub const MAX_TOKENS: usize = 10_000;

/// Why a token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Never issued, already used, or expired.
    #[error("unknown, used or expired token")]
    Unknown,
    /// Issued for another public key.
    #[error("token was issued for another public key")]
    OtherKey,
    /// Too many tokens pending.
    #[error("too many pending tokens")]
    Full,
}

#[derive(Debug)]
struct Pending {
    public_key: PublicKey,
    challenge: SecretKey,
    issued: Instant,
}

/// The pending tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    pending: HashMap<[u8; TOKEN_LEN], Pending>,
}

impl Tokens {
    /// Issues a token for `public_key`: returns the token and `tokenRespKeyPub`.
    pub fn issue(
        &mut self,
        public_key: PublicKey,
        now: Instant,
        rng: &mut impl CryptoRngCore,
    ) -> Result<([u8; TOKEN_LEN], PublicKey), TokenError> {
        if self.pending.len() >= MAX_TOKENS {
            self.pending
                .retain(|_, p| now.saturating_duration_since(p.issued) < TOKEN_TTL);
            if self.pending.len() >= MAX_TOKENS {
                return Err(TokenError::Full);
            }
        }
        let mut token = [0_u8; TOKEN_LEN];
        rng.fill_bytes(&mut token);
        let challenge = SecretKey::generate(rng);
        let challenge_public = challenge.public_key();
        self.pending.insert(
            token,
            Pending {
                public_key,
                challenge,
                issued: now,
            },
        );
        Ok((token, challenge_public))
    }

    /// Takes a token (single use, even when the key does not match) and returns its challenge
    /// secret.
    pub fn redeem(
        &mut self,
        token: &[u8],
        public_key: &PublicKey,
        now: Instant,
    ) -> Result<SecretKey, TokenError> {
        let key: [u8; TOKEN_LEN] = token.try_into().map_err(|_| TokenError::Unknown)?;
        let pending = self.pending.remove(&key).ok_or(TokenError::Unknown)?;
        if now.saturating_duration_since(pending.issued) >= TOKEN_TTL {
            return Err(TokenError::Unknown);
        }
        if !tandem_shared::crypto::ct_eq(pending.public_key.as_bytes(), public_key.as_bytes()) {
            return Err(TokenError::OtherKey);
        }
        Ok(pending.challenge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(5)
    }

    #[test]
    fn token_is_single_use() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let key = PublicKey([1; 32]);
        let (token, challenge_public) = tokens.issue(key, now, &mut rng()).unwrap();
        let challenge = tokens.redeem(&token, &key, now).unwrap();
        assert_eq!(challenge.public_key(), challenge_public);
        assert_eq!(
            tokens.redeem(&token, &key, now).err(),
            Some(TokenError::Unknown)
        );
    }

    #[test]
    fn token_expires() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let key = PublicKey([1; 32]);
        let (token, _) = tokens.issue(key, now, &mut rng()).unwrap();
        assert_eq!(
            tokens.redeem(&token, &key, now + TOKEN_TTL).err(),
            Some(TokenError::Unknown)
        );
    }

    #[test]
    fn token_is_bound_to_its_public_key_and_burnt_by_a_wrong_one() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let (token, _) = tokens.issue(PublicKey([1; 32]), now, &mut rng()).unwrap();
        assert_eq!(
            tokens.redeem(&token, &PublicKey([2; 32]), now).err(),
            Some(TokenError::OtherKey)
        );
        assert_eq!(
            tokens.redeem(&token, &PublicKey([1; 32]), now).err(),
            Some(TokenError::Unknown)
        );
        assert_eq!(
            tokens.redeem(&[0; 5], &PublicKey([1; 32]), now).err(),
            Some(TokenError::Unknown)
        );
    }

    #[test]
    fn pending_tokens_are_bounded_and_expired_ones_make_room() {
        let mut tokens = Tokens::default();
        let mut rng = rng();
        let start = Instant::now();
        for _ in 0..MAX_TOKENS {
            tokens.issue(PublicKey([1; 32]), start, &mut rng).unwrap();
        }
        assert_eq!(
            tokens.issue(PublicKey([1; 32]), start, &mut rng),
            Err(TokenError::Full)
        );
        assert!(tokens
            .issue(PublicKey([1; 32]), start + TOKEN_TTL, &mut rng)
            .is_ok());
    }
}
