//! The chat server's permanent key `SK` (DESIGN §4): generated on first start, kept in the data
//! directory, readable by the owner only.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use tandem_shared::crypto::SecretKey;

/// File name of the key inside the data directory: 32 raw bytes.
pub const SERVER_KEY_FILE: &str = "server.key";

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerKeyError {
    /// Reading or writing the file failed.
    #[error("server key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists but is not 32 bytes (corrupt or not ours).
    #[error("server key {path} has {len} bytes, expected 32")]
    Length {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

/// Loads `SK` from `dir`, or creates it there (mode 0600, written to a temporary file first and
/// renamed, so a crash never leaves half a key).
pub fn load_or_create(dir: &Path) -> Result<SecretKey, ServerKeyError> {
    let path = dir.join(SERVER_KEY_FILE);
    let io = |source| ServerKeyError::Io {
        path: path.clone(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let raw: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| ServerKeyError::Length {
                        path: path.clone(),
                        len: bytes.len(),
                    })?;
            Ok(SecretKey::from_bytes(raw))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate(&mut OsRng);
            let tmp = dir.join(format!("{SERVER_KEY_FILE}.tmp"));
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(io)?;
            file.write_all(key.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        assert_eq!(
            fs::read(dir.path().join(SERVER_KEY_FILE)).unwrap(),
            first.as_bytes().to_vec()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(SERVER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn key_file_of_the_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SERVER_KEY_FILE), [1; 31]).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(ServerKeyError::Length { len: 31, .. })
        ));
    }
}
