//! The BLAKE2b key derivation used throughout the protocol (spec §0, §1).
//!
//! `subkey = BLAKE2b(out = 32, key, salt, personal, input)`. Salt and personal are short ASCII
//! strings zero-padded to 16 bytes; the published implementation refuses values longer than 8
//! bytes, and so do we, so a typo in a constant is caught by a test rather than silently
//! producing a different key.

use blake2::digest::{consts::U32, Mac};
use blake2::Blake2bMac;

/// Salt and personalisation of one derivation (each at most 8 ASCII bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blake2bParams {
    /// Distinguishes the keys derived from one secret (`"p"`, `"r"`, `"v2"`, …).
    pub salt: &'static str,
    /// Distinguishes the protocol (`"3ma-mdev"`, `"3ma-csp"`).
    pub personal: &'static str,
}

/// Why a BLAKE2b derivation could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KdfError {
    /// BLAKE2b keys are 1..=64 bytes.
    #[error("BLAKE2b key must be 1 to 64 bytes, got {0}")]
    KeyLength(usize),
    /// Salt and personal are limited to 8 bytes by the protocol.
    #[error("BLAKE2b salt or personal longer than 8 bytes")]
    ParamLength,
}

/// Keyed BLAKE2b with a 32-byte output, salt and personal (spec §0 "deriveSharedKey").
pub fn blake2b_256(key: &[u8], params: Blake2bParams, input: &[u8]) -> Result<[u8; 32], KdfError> {
    if key.is_empty() || key.len() > 64 {
        return Err(KdfError::KeyLength(key.len()));
    }
    if params.salt.len() > 8 || params.personal.len() > 8 {
        return Err(KdfError::ParamLength);
    }
    let mut mac = Blake2bMac::<U32>::new_with_salt_and_personal(
        key,
        params.salt.as_bytes(),
        params.personal.as_bytes(),
    )
    .map_err(|_| KdfError::KeyLength(key.len()))?;
    mac.update(input);
    Ok(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_long_params_and_bad_keys() {
        let long = Blake2bParams {
            salt: "123456789",
            personal: "x",
        };
        assert_eq!(blake2b_256(&[1; 32], long, &[]), Err(KdfError::ParamLength));
        let ok = Blake2bParams {
            salt: "p",
            personal: "3ma-mdev",
        };
        assert_eq!(blake2b_256(&[], ok, &[]), Err(KdfError::KeyLength(0)));
        assert_eq!(blake2b_256(&[0; 65], ok, &[]), Err(KdfError::KeyLength(65)));
        assert!(blake2b_256(&[0; 64], ok, &[]).is_ok());
    }
}
