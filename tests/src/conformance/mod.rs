//! The conformance shim: the library's codecs and derivations behind a tiny command line, the
//! way rustls exposes itself to BoGo, so an external test suite can check them byte for byte.
//!
//! Every command answers one JSON object, or fails with a [`ShimError`] whose `Display` is a
//! single line.

mod csp;
mod d2m;
mod json;
mod keys;

use serde_json::Value;

pub use csp::{csp_extensions_decode, csp_login_ack_decode};
pub use d2m::{d2m_decode, d2m_encode};
pub use json::{proto_decode, proto_encode, PROTO_NAMES};
pub use keys::{dgk, group_keys, id_backup_decode, id_backup_encode};

/// A shim command, as parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `group-keys <dgk-hex>`
    GroupKeys { dgk_hex: String },
    /// `dgk <ck-secret-hex>`
    Dgk { ck_hex: String },
    /// `d2m-decode <container-hex>`
    D2mDecode { hex: String },
    /// `d2m-encode <json>`
    D2mEncode { json: String },
    /// `proto-decode <name> <hex>`
    ProtoDecode { name: String, hex: String },
    /// `proto-encode <name> <json>`
    ProtoEncode { name: String, json: String },
    /// `csp-extensions-decode <hex>`
    CspExtensionsDecode { hex: String },
    /// `csp-login-ack-decode <hex>`
    CspLoginAckDecode { hex: String },
    /// `id-backup-decode <backup> <password>`
    IdBackupDecode { backup: String, password: String },
    /// `id-backup-encode <identity> <ck-hex> <password>`
    IdBackupEncode {
        identity: String,
        ck_hex: String,
        password: String,
    },
}

/// Why a shim command failed; the message is printed on one line to stderr.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShimError {
    /// An argument is not valid hex or has the wrong length.
    #[error("{what}: {reason}")]
    Argument { what: &'static str, reason: String },
    /// The message name is not one the shim maps.
    #[error("unknown message name {0:?}")]
    UnknownName(String),
    /// The JSON argument does not parse or does not fit the message.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The library's decoder refused the bytes.
    #[error("decode failed: {0}")]
    Decode(String),
    /// The library refused to encode.
    #[error("encode failed: {0}")]
    Encode(String),
    /// The library refused an ID backup.
    #[error("{0}")]
    IdBackup(#[from] tandem_shared::id_backup::IdBackupError),
}

impl Command {
    /// Replaces a hex or JSON argument given as `-` by the contents of `input` (trimmed).
    pub fn read_stdin_arguments(self, input: &mut impl std::io::Read) -> std::io::Result<Self> {
        fn fill(value: String, input: &mut impl std::io::Read) -> std::io::Result<String> {
            if value != "-" {
                return Ok(value);
            }
            let mut text = String::new();
            input.read_to_string(&mut text)?;
            Ok(text.trim().to_owned())
        }
        Ok(match self {
            Self::D2mDecode { hex } => Self::D2mDecode {
                hex: fill(hex, input)?,
            },
            Self::D2mEncode { json } => Self::D2mEncode {
                json: fill(json, input)?,
            },
            Self::ProtoDecode { name, hex } => Self::ProtoDecode {
                name,
                hex: fill(hex, input)?,
            },
            Self::ProtoEncode { name, json } => Self::ProtoEncode {
                name,
                json: fill(json, input)?,
            },
            other => other,
        })
    }
}

/// Runs one command.
pub fn run(command: &Command) -> Result<Value, ShimError> {
    match command {
        Command::GroupKeys { dgk_hex } => group_keys(dgk_hex),
        Command::Dgk { ck_hex } => dgk(ck_hex),
        Command::D2mDecode { hex } => d2m_decode(&decode_hex("container", hex)?),
        Command::D2mEncode { json } => d2m_encode(&parse_json(json)?),
        Command::ProtoDecode { name, hex } => proto_decode(name, &decode_hex("hex", hex)?),
        Command::ProtoEncode { name, json } => proto_encode(name, &parse_json(json)?),
        Command::CspExtensionsDecode { hex } => {
            csp_extensions_decode(&decode_hex("extensions", hex)?)
        }
        Command::CspLoginAckDecode { hex } => csp_login_ack_decode(&decode_hex("login-ack", hex)?),
        Command::IdBackupDecode { backup, password } => id_backup_decode(backup, password),
        Command::IdBackupEncode {
            identity,
            ck_hex,
            password,
        } => id_backup_encode(identity, ck_hex, password),
    }
}

pub(crate) fn decode_hex(what: &'static str, text: &str) -> Result<Vec<u8>, ShimError> {
    hex::decode(text.trim()).map_err(|e| ShimError::Argument {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn decode_hex32(what: &'static str, text: &str) -> Result<[u8; 32], ShimError> {
    let bytes = decode_hex(what, text)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| ShimError::Argument {
        what,
        reason: format!("must be 32 bytes, got {}", bytes.len()),
    })
}

pub(crate) fn parse_json(text: &str) -> Result<Value, ShimError> {
    serde_json::from_str(text).map_err(|e| ShimError::Json(e.to_string()))
}
