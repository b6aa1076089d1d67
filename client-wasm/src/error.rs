//! Why a client call failed, in words a person can act on; surfaced to JS as `Error`s.

use tandem_shared::app::{AppError, RecordError};
use tandem_shared::id_backup::IdBackupError;
use wasm_bindgen::JsValue;

/// Every failure of the adapter. The message is what the JS `Error` says.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// IndexedDB refused (quota, blocked upgrade, private mode without storage, …).
    #[error("storage: {0}")]
    Storage(String),
    /// The database holds no identity: create one or import a backup first.
    #[error("database {0:?} holds no identity: create one or import an ID backup first")]
    NoIdentity(String),
    /// The database already holds an identity: open it, or choose another database name.
    #[error("database {0:?} already holds identity {1}: open it or use another database name")]
    IdentityExists(String, String),
    /// A stored record does not decode.
    #[error("stored data is damaged ({0}); export a backup from another device and re-import")]
    Record(#[from] RecordError),
    /// The backup did not decode.
    #[error("{}", backup_message(.0))]
    Backup(#[from] IdBackupError),
    /// The directory does not know the identity.
    #[error("identity {0} not found in the directory")]
    IdentityNotFound(String),
    /// The directory (or the network to it) failed.
    #[error("directory at {url}: {reason}")]
    Directory {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// An argument from JS was not what the API expects.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The core refused the command.
    #[error("{0}")]
    App(#[from] AppError),
    /// The client was closed.
    #[error("this client was closed; open the database again")]
    Closed,
}

fn backup_message(e: &IdBackupError) -> String {
    match e {
        IdBackupError::WrongPassword => "wrong backup password (or a mistyped backup)".to_owned(),
        other => format!("ID backup: {other}"),
    }
}

impl ClientError {
    /// An invalid JS argument.
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// A storage failure from a JS value (a `DOMException` or an `Error`).
    pub(crate) fn storage(value: &JsValue) -> Self {
        Self::Storage(crate::js::describe(value))
    }
}

impl From<ClientError> for JsValue {
    fn from(e: ClientError) -> Self {
        js_sys::Error::new(&e.to_string()).into()
    }
}
