//! The Threema ID backup format (DESIGN §2.3): how an identity moves to a new device.
//!
//! ```text
//! salt(8) ‖ XSalsa20_{PBKDF2-HMAC-SHA256(password, salt, 100 000, 32)}, nonce 0 (
//!     identity(8) ‖ CK.secret(32) ‖ SHA-256(identity ‖ CK.secret)[..2] )
//! → RFC 4648 base32 without padding (80 characters), shown in dash-separated groups of 4
//! ```
//!
//! The format has no MAC: the 2-byte checksum is what tells a wrong password apart, so one wrong
//! password in 65 536 passes it. Decoding therefore also insists on a well-formed identity,
//! which makes such a false accept far rarer still.

use core::fmt;

use rand_core::CryptoRngCore;
use salsa20::cipher::{KeyIvInit, StreamCipher};
use salsa20::XSalsa20;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::SecretKey;
use crate::keys::{is_valid_identity, IDENTITY_LEN};

/// PBKDF2 rounds fixed by the format.
pub const PBKDF2_ROUNDS: u32 = 100_000;
/// Minimum password length for new backups (Threema's apps require 8 characters as well).
pub const MIN_PASSWORD_CHARS: usize = 8;

const SALT_LEN: usize = 8;
const DATA_LEN: usize = IDENTITY_LEN + 32 + 2;
const BACKUP_LEN: usize = SALT_LEN + DATA_LEN;
/// Length of the base32 text without dashes.
pub const BACKUP_CHARS: usize = 80;

/// Why a backup could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdBackupError {
    /// The text is not 80 base32 characters (dashes and white space aside).
    #[error("backup must be 80 base32 characters (A-Z, 2-7), optionally in dash-separated groups")]
    Format,
    /// The checksum does not match: almost always a wrong password.
    #[error("wrong password (or a mistyped backup)")]
    WrongPassword,
    /// The identity is not 8 characters of `0-9` and `A-Z` (or `*` first).
    #[error("identity must be 8 characters of 0-9 and A-Z (or * first)")]
    Identity,
    /// The password is too short to protect an identity.
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
}

/// What a backup holds: the identity and its secret key.
pub struct IdBackup {
    /// The 8-character identity.
    pub identity: String,
    /// `CK.secret`.
    pub ck: SecretKey,
}

impl fmt::Debug for IdBackup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdBackup")
            .field("identity", &self.identity)
            .field("ck", &self.ck)
            .finish()
    }
}

fn key_from_password(password: &str, salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0_u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, PBKDF2_ROUNDS, key.as_mut());
    key
}

fn apply_keystream(key: &[u8; 32], data: &mut [u8]) {
    let mut cipher = XSalsa20::new(key.into(), &[0_u8; 24].into());
    cipher.apply_keystream(data);
}

fn checksum(identity: &[u8], ck: &[u8; 32]) -> [u8; 2] {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(identity)
        .chain_update(ck)
        .finalize()
        .into();
    let [first, second, ..] = digest;
    [first, second]
}

/// Encodes a backup: 80 base32 characters in 20 dash-separated groups of 4.
pub fn encode(
    identity: &str,
    ck: &SecretKey,
    password: &str,
    rng: &mut impl CryptoRngCore,
) -> Result<String, IdBackupError> {
    if !is_valid_identity(identity.as_bytes()) {
        return Err(IdBackupError::Identity);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(IdBackupError::WeakPassword);
    }
    let mut salt = [0_u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    let mut data = Zeroizing::new(Vec::with_capacity(DATA_LEN));
    data.extend_from_slice(identity.as_bytes());
    data.extend_from_slice(ck.as_bytes());
    data.extend_from_slice(&checksum(identity.as_bytes(), ck.as_bytes()));
    apply_keystream(&key_from_password(password, &salt), data.as_mut());
    let mut raw = Vec::with_capacity(BACKUP_LEN);
    raw.extend_from_slice(&salt);
    raw.extend_from_slice(&data);
    let text = crate::encoding::base32_encode(&raw);
    let groups: Vec<&str> = text
        .as_bytes()
        .chunks(4)
        .filter_map(|c| core::str::from_utf8(c).ok())
        .collect();
    Ok(groups.join("-"))
}

/// Decodes a backup. Dashes and white space are ignored and letters may be lower case, since
/// people type these by hand.
pub fn decode(backup: &str, password: &str) -> Result<IdBackup, IdBackupError> {
    let cleaned: String = backup
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if cleaned.len() != BACKUP_CHARS {
        return Err(IdBackupError::Format);
    }
    let raw = crate::encoding::base32_decode(&cleaned).map_err(|_| IdBackupError::Format)?;
    let (salt, encrypted) = raw
        .split_at_checked(SALT_LEN)
        .ok_or(IdBackupError::Format)?;
    let mut data: Zeroizing<[u8; DATA_LEN]> =
        Zeroizing::new(encrypted.try_into().map_err(|_| IdBackupError::Format)?);
    apply_keystream(&key_from_password(password, salt), data.as_mut());
    let (identity, rest) = data.split_at(IDENTITY_LEN);
    let (ck_bytes, check) = rest.split_at(32);
    let mut ck = [0_u8; 32];
    ck.copy_from_slice(ck_bytes);
    let ok = crate::crypto::ct_eq(&checksum(identity, &ck), check);
    let result = if !ok {
        Err(IdBackupError::WrongPassword)
    } else if !is_valid_identity(identity) {
        Err(IdBackupError::Identity)
    } else {
        Ok(IdBackup {
            identity: String::from_utf8_lossy(identity).into_owned(),
            ck: SecretKey::from_bytes(ck),
        })
    };
    ck.zeroize();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn round_trip_and_wrong_password() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let ck = SecretKey::generate(&mut rng);
        let backup = encode("ECHOECHO", &ck, "correct horse", &mut rng).unwrap();
        assert_eq!(backup.len(), 80 + 19);
        assert!(backup.split('-').all(|g| g.len() == 4));
        let restored = decode(&backup, "correct horse").unwrap();
        assert_eq!(restored.identity, "ECHOECHO");
        assert_eq!(restored.ck.as_bytes(), ck.as_bytes());
        // People retype backups: lower case, spaces instead of dashes.
        let retyped = backup.to_ascii_lowercase().replace('-', " ");
        assert_eq!(
            decode(&retyped, "correct horse").unwrap().identity,
            "ECHOECHO"
        );
        assert_eq!(
            decode(&backup, "wrong horse").unwrap_err(),
            IdBackupError::WrongPassword
        );
    }

    /// Made independently of this code with Python: `hashlib.pbkdf2_hmac` and a pure-Python
    /// XSalsa20 checked against libsodium's secretbox keystream (salt 0102030405060708).
    #[test]
    fn decodes_reference_backup() {
        let restored = decode(REFERENCE_BACKUP, "tandem-test-pw").unwrap();
        assert_eq!(restored.identity, "TNDM0001");
        assert_eq!(restored.ck.as_bytes(), &[0x11; 32]);
    }

    const REFERENCE_BACKUP: &str =
        "AEBA-GBAF-AYDQ-QKJK-E5O6-OKLH-IGOD-PWLK-32QH-IVL2-YHN4-4AWG-TA5Y-FMW7-L7Z6-7IP3-74SM-UPGV-QJAM-DQ4O";

    #[test]
    fn rejects_bad_input() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let ck = SecretKey::generate(&mut rng);
        assert_eq!(
            encode("short", &ck, "long enough", &mut rng).unwrap_err(),
            IdBackupError::Identity
        );
        assert_eq!(
            encode("lowercas", &ck, "long enough", &mut rng).unwrap_err(),
            IdBackupError::Identity
        );
        assert_eq!(
            encode("ECHOECHO", &ck, "short", &mut rng).unwrap_err(),
            IdBackupError::WeakPassword
        );
        assert_eq!(decode("ABCD", "x").unwrap_err(), IdBackupError::Format);
        assert_eq!(
            decode(&"1".repeat(80), "x").unwrap_err(),
            IdBackupError::Format
        );
    }
}
