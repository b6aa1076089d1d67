//! Text inputs: the mediator URL path and the Threema ID backup.

use tandem_shared::id_backup::{self, IdBackupError, BACKUP_CHARS};
use tandem_shared::keys::ClientUrlInfo;

use super::input::rng;

/// `ClientUrlInfo::from_path` on the input as text and `ClientUrlInfo::decode` on the raw bytes;
/// `id_backup::decode` only when the text before the first newline is 80 base32 characters
/// (decoding runs PBKDF2 with 100 000 rounds, far too slow to run on every input).
pub fn url_and_backup(data: &[u8]) {
    if let Ok(info) = ClientUrlInfo::decode(data) {
        assert_eq!(ClientUrlInfo::decode(&info.encode()).as_ref(), Ok(&info));
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(info) = ClientUrlInfo::from_path(&text) {
        let path = info.path();
        assert_eq!(ClientUrlInfo::from_path(&path).as_ref(), Ok(&info));
        assert_eq!(
            ClientUrlInfo::from_path(&format!("/{path}")).as_ref(),
            Ok(&info)
        );
        assert_eq!(ClientUrlInfo::decode(&info.encode()).as_ref(), Ok(&info));
    }
    let (backup, password) = text.split_once('\n').unwrap_or((&text, ""));
    if is_backup_text(backup) {
        backup_round_trip(backup, password);
    } else {
        assert_eq!(
            id_backup::decode(backup, password).err(),
            Some(IdBackupError::Format),
            "the cheap pre-check must match the decoder's format check"
        );
    }
}

/// The decoder's format check without the PBKDF2: 80 base32 characters once dashes and white
/// space are removed, letters in either case.
fn is_backup_text(backup: &str) -> bool {
    let cleaned: Vec<char> = backup
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .collect();
    cleaned.len() == BACKUP_CHARS
        && cleaned
            .iter()
            .all(|c| c.is_ascii_alphabetic() || ('2'..='7').contains(c))
}

/// A backup that decodes encodes again under the same password and decodes to the same identity
/// and key. Costs up to three PBKDF2 runs, so only well-formed text gets here.
fn backup_round_trip(backup: &str, password: &str) {
    let Ok(decoded) = id_backup::decode(backup, password) else {
        return;
    };
    assert!(tandem_shared::keys::is_valid_identity(
        decoded.identity.as_bytes()
    ));
    let Ok(encoded) = id_backup::encode(&decoded.identity, &decoded.ck, password, &mut rng(0xb4))
    else {
        // Only a password too weak for new backups may refuse.
        assert!(password.chars().count() < id_backup::MIN_PASSWORD_CHARS);
        return;
    };
    let again = id_backup::decode(&encoded, password);
    assert!(again
        .as_ref()
        .is_ok_and(|again| again.identity == decoded.identity
            && again.ck.as_bytes() == decoded.ck.as_bytes()));
}
