//! The mediator URL (spec §1.2): `{base}/{prefix8}/{hex(ClientUrlInfo)}`.
//!
//! The path carries only the anonymous group id (`DGPK.public`) and the chat server group, which
//! is all the mediator needs to route a device to its group's Durable Object and its chat server.

use prost::Message;

use crate::crypto::PublicKey;
use crate::proto;

/// Why a mediator path or `ClientUrlInfo` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The path is not `/{prefix8}/{hex}`.
    #[error("mediator path must be /<2 hex chars>/<lowercase hex ClientUrlInfo>")]
    PathShape,
    /// The hex part is not lowercase hex.
    #[error("ClientUrlInfo is not lowercase hex")]
    Hex,
    /// The protobuf does not decode.
    #[error("ClientUrlInfo does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// `device_group_id` is not 32 bytes.
    #[error("device group id must be 32 bytes, got {0}")]
    GroupIdLength(usize),
    /// `server_group` is empty or not `^[0-9a-zA-Z]+$`.
    #[error("server group must match ^[0-9a-zA-Z]+$ (1 to 32 characters)")]
    ServerGroup,
    /// The prefix does not match the group id's first byte.
    #[error("path prefix does not match the device group id")]
    Prefix,
}

/// Longest server group accepted. The spec gives only the character class; 32 keeps URLs short.
const MAX_SERVER_GROUP_LEN: usize = 32;

/// The validated content of the mediator URL path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientUrlInfo {
    /// `DGPK.public`, the device group id.
    pub device_group_id: PublicKey,
    /// The chat server group, `^[0-9a-zA-Z]+$`.
    pub server_group: String,
}

impl ClientUrlInfo {
    /// Builds a validated info.
    pub fn new(device_group_id: PublicKey, server_group: &str) -> Result<Self, UrlError> {
        validate_server_group(server_group)?;
        Ok(Self {
            device_group_id,
            server_group: server_group.to_owned(),
        })
    }

    /// The protobuf encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        proto::d2m::ClientUrlInfo {
            device_group_id: self.device_group_id.0.to_vec(),
            server_group: self.server_group.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes and validates the protobuf encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, UrlError> {
        let raw = proto::d2m::ClientUrlInfo::decode(bytes)?;
        let id = PublicKey::from_slice(&raw.device_group_id)
            .ok_or(UrlError::GroupIdLength(raw.device_group_id.len()))?;
        Self::new(id, &raw.server_group)
    }

    /// The path below the mediator base: `{prefix8}/{hex(ClientUrlInfo)}`, without a leading
    /// slash so that it resolves relative to a base URL ending in `/` as the spec describes.
    #[must_use]
    pub fn path(&self) -> String {
        mediator_path(self)
    }

    /// Parses the request path of a mediator WebSocket upgrade (`/{prefix8}/{hex}`, with or
    /// without the leading slash). The prefix may be one hex digit when the group id's first
    /// byte is below 0x10: some current clients do not zero-pad it, and the prefix is only a
    /// routing hint that must name the same byte (docs/protocol.md "Protocol version 23").
    pub fn from_path(path: &str) -> Result<Self, UrlError> {
        let path = path.strip_prefix('/').unwrap_or(path);
        let (prefix, hex_part) = path.split_once('/').ok_or(UrlError::PathShape)?;
        if !(1..=2).contains(&prefix.len()) || hex_part.is_empty() || hex_part.contains('/') {
            return Err(UrlError::PathShape);
        }
        if !is_lower_hex(prefix) || !is_lower_hex(hex_part) {
            return Err(UrlError::Hex);
        }
        let bytes = crate::encoding::hex_decode(hex_part).map_err(|_| UrlError::Hex)?;
        let info = Self::decode(&bytes)?;
        let first = info.device_group_id.0.first().copied();
        if u8::from_str_radix(prefix, 16).ok() != first {
            return Err(UrlError::Prefix);
        }
        Ok(info)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn validate_server_group(group: &str) -> Result<(), UrlError> {
    if group.is_empty()
        || group.len() > MAX_SERVER_GROUP_LEN
        || !group.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(UrlError::ServerGroup);
    }
    Ok(())
}

/// The spellings of a server group to look its chat server up under, in order: as sent, then
/// for a decimal group its two-digit zero-padded and its unpadded spellings. Some current
/// clients send `"1"` where the configuration (and Threema's own) says `01`; both can only mean
/// one group (docs/protocol.md "Protocol version 23", leniencies). Other groups: as sent.
#[must_use]
pub fn server_group_spellings(group: &str) -> Vec<String> {
    let mut out = vec![group.to_owned()];
    if group.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = group.parse::<u64>() {
            for spelling in [format!("{n:02}"), n.to_string()] {
                if !out.contains(&spelling) {
                    out.push(spelling);
                }
            }
        }
    }
    out
}

/// `{prefix8}/{lowercase hex(ClientUrlInfo)}` (spec §1.2).
#[must_use]
pub fn mediator_path(info: &ClientUrlInfo) -> String {
    let prefix = crate::encoding::hex_encode(&info.device_group_id.0[..1]);
    format!("{prefix}/{}", crate::encoding::hex_encode(&info.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §1.2 worked example.
    #[test]
    fn spec_url_example() {
        let id: [u8; 32] =
            hex::decode("e77d9b02195b880c1374650ec136b44e7b0b6d9e47b479dbd5d97c470acb0b40")
                .unwrap()
                .try_into()
                .unwrap();
        let info = ClientUrlInfo::new(PublicKey(id), "01").unwrap();
        let path = info.path();
        assert_eq!(
            path,
            "e7/0a20e77d9b02195b880c1374650ec136b44e7b0b6d9e47b479dbd5d97c470acb0b401a023031"
        );
        assert_eq!(ClientUrlInfo::from_path(&format!("/{path}")).unwrap(), info);
    }

    /// Leniency (protocol version 23 clients): a first byte below 0x10 may come without its
    /// leading zero; both spellings name the same group, any other digit is still refused.
    #[test]
    fn one_digit_prefix_is_accepted_for_a_first_byte_below_0x10() {
        let mut id = [0x11; 32];
        id[0] = 0x07;
        let info = ClientUrlInfo::new(PublicKey(id), "1").unwrap();
        let hex_part = data_encoding::HEXLOWER.encode(&info.encode());
        assert_eq!(
            info.path(),
            format!("07/{hex_part}"),
            "we still write two digits"
        );
        for prefix in ["07", "7"] {
            assert_eq!(
                ClientUrlInfo::from_path(&format!("/{prefix}/{hex_part}")),
                Ok(info.clone()),
                "{prefix}"
            );
        }
        for prefix in ["8", "70", "0"] {
            assert_eq!(
                ClientUrlInfo::from_path(&format!("/{prefix}/{hex_part}")),
                Err(UrlError::Prefix),
                "{prefix}"
            );
        }
    }

    /// Leniency: a decimal server group is also looked up zero-padded and unpadded.
    #[test]
    fn decimal_server_groups_have_their_padded_spellings() {
        assert_eq!(server_group_spellings("1"), ["1", "01"]);
        assert_eq!(server_group_spellings("01"), ["01", "1"]);
        assert_eq!(server_group_spellings("001"), ["001", "01", "1"]);
        assert_eq!(server_group_spellings("12"), ["12"]);
        assert_eq!(server_group_spellings("0"), ["0", "00"]);
        assert_eq!(server_group_spellings("1a"), ["1a"]);
        assert_eq!(
            server_group_spellings("99999999999999999999"),
            ["99999999999999999999"]
        );
    }

    #[test]
    fn rejects_bad_paths() {
        let info = ClientUrlInfo::new(PublicKey([0xab; 32]), "01").unwrap();
        let hex_part = data_encoding::HEXLOWER.encode(&info.encode());
        assert_eq!(
            ClientUrlInfo::from_path(&format!("/ac/{hex_part}")),
            Err(UrlError::Prefix)
        );
        assert_eq!(
            ClientUrlInfo::from_path(&format!("/AB/{hex_part}")),
            Err(UrlError::Hex)
        );
        assert_eq!(ClientUrlInfo::from_path("/ab"), Err(UrlError::PathShape));
        assert_eq!(
            ClientUrlInfo::from_path(&format!("/b/{hex_part}")),
            Err(UrlError::Prefix)
        );
        assert_eq!(
            ClientUrlInfo::from_path(&format!("/0ab/{hex_part}")),
            Err(UrlError::PathShape)
        );
        assert_eq!(
            ClientUrlInfo::from_path("/ab/0a"),
            Err(UrlError::Decode(
                proto::d2m::ClientUrlInfo::decode(&[0x0a][..]).unwrap_err()
            ))
        );
        assert_eq!(
            ClientUrlInfo::new(PublicKey([1; 32]), "a-b"),
            Err(UrlError::ServerGroup)
        );
        assert_eq!(
            ClientUrlInfo::new(PublicKey([1; 32]), ""),
            Err(UrlError::ServerGroup)
        );
        let short = proto::d2m::ClientUrlInfo {
            device_group_id: vec![1; 31],
            server_group: "01".into(),
        }
        .encode_to_vec();
        assert_eq!(
            ClientUrlInfo::decode(&short),
            Err(UrlError::GroupIdLength(31))
        );
    }
}
