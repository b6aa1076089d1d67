//! The group containers that prefix group e2e bodies (spec §9.5).
//!
//! A group is named by its creator's identity and a creator-chosen u64 id. Messages from the
//! creator (group control such as setup or name) carry only the id, because the sender is the
//! creator; messages from any member carry both. The creator identity is taken as 8 raw bytes
//! here; the group layer checks it against its contacts.

use core::fmt;

use crate::codec::{Reader, Truncated};
use crate::keys::IDENTITY_LEN;

/// `group-id u64-le ‖ inner`: a body sent by the group's creator.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupCreatorContainer {
    /// The creator-chosen group id.
    pub group_id: u64,
    /// The type-specific body.
    pub inner: Vec<u8>,
}

/// `creator identity (8) ‖ group-id u64-le ‖ inner`: a body sent by any member.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupMemberContainer {
    /// Identity of the group's creator.
    pub creator: [u8; IDENTITY_LEN],
    /// The creator-chosen group id.
    pub group_id: u64,
    /// The type-specific body.
    pub inner: Vec<u8>,
}

impl GroupCreatorContainer {
    /// Encodes the container.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.inner.len());
        out.extend_from_slice(&self.group_id.to_le_bytes());
        out.extend_from_slice(&self.inner);
        out
    }

    /// Reads the container; everything after the id is the inner body.
    pub fn decode(bytes: &[u8]) -> Result<Self, Truncated> {
        let mut reader = Reader::new(bytes);
        let group_id = reader.u64_le()?;
        Ok(Self {
            group_id,
            inner: reader.rest().to_vec(),
        })
    }
}

impl GroupMemberContainer {
    /// Encodes the container.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(IDENTITY_LEN + 8 + self.inner.len());
        out.extend_from_slice(&self.creator);
        out.extend_from_slice(&self.group_id.to_le_bytes());
        out.extend_from_slice(&self.inner);
        out
    }

    /// Reads the container; everything after the id is the inner body.
    pub fn decode(bytes: &[u8]) -> Result<Self, Truncated> {
        let mut reader = Reader::new(bytes);
        let creator = reader.array()?;
        let group_id = reader.u64_le()?;
        Ok(Self {
            creator,
            group_id,
            inner: reader.rest().to_vec(),
        })
    }
}

impl fmt::Debug for GroupCreatorContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCreatorContainer")
            .field("group_id", &format_args!("{:#018x}", self.group_id))
            .field("inner_len", &self.inner.len())
            .finish()
    }
}

impl fmt::Debug for GroupMemberContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMemberContainer")
            .field("creator", &String::from_utf8_lossy(&self.creator))
            .field("group_id", &format_args!("{:#018x}", self.group_id))
            .field("inner_len", &self.inner.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn creator_container_round_trips(group_id: u64, inner in proptest::collection::vec(any::<u8>(), 0..200)) {
            let container = GroupCreatorContainer { group_id, inner };
            let encoded = container.encode();
            prop_assert_eq!(encoded.len(), 8 + container.inner.len());
            prop_assert_eq!(GroupCreatorContainer::decode(&encoded).unwrap(), container);
        }

        #[test]
        fn member_container_round_trips(creator: [u8; 8], group_id: u64, inner in proptest::collection::vec(any::<u8>(), 0..200)) {
            let container = GroupMemberContainer { creator, group_id, inner };
            let encoded = container.encode();
            prop_assert_eq!(encoded.len(), 16 + container.inner.len());
            prop_assert_eq!(GroupMemberContainer::decode(&encoded).unwrap(), container);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = GroupCreatorContainer::decode(&bytes);
            let _ = GroupMemberContainer::decode(&bytes);
        }
    }

    #[test]
    fn member_container_layout_is_creator_then_id_then_inner() {
        let container = GroupMemberContainer {
            creator: *b"ECHOECHO",
            group_id: 0x1122_3344_5566_7788,
            inner: b"hi".to_vec(),
        };
        let expected = hex::decode(concat!(
            "4543484f4543484f", // "ECHOECHO"
            "8877665544332211", // group id, little-endian
            "6869"              // "hi"
        ))
        .unwrap();
        assert_eq!(container.encode(), expected);
        let creator = GroupCreatorContainer {
            group_id: 0x1122_3344_5566_7788,
            inner: b"hi".to_vec(),
        };
        assert_eq!(creator.encode(), expected[8..]);
    }

    #[test]
    fn short_containers_are_truncated() {
        assert_eq!(
            GroupCreatorContainer::decode(&[0; 7]),
            Err(Truncated {
                offset: 0,
                needed: 1
            })
        );
        assert_eq!(
            GroupMemberContainer::decode(&[0; 15]),
            Err(Truncated {
                offset: 8,
                needed: 1
            })
        );
        // An empty inner body is allowed: the type decides whether it may be empty.
        assert_eq!(GroupMemberContainer::decode(&[0; 16]).unwrap().inner, b"");
    }
}
