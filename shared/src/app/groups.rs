//! Groups (spec §9.5 group containers, §8.4 `sync.Group`, DESIGN §5).
//!
//! Own changes (create, rename, members, leave) go through a GROUP_SYNC transaction like every
//! shared change, and are then announced to the members with ordinary outgoing messages
//! (`GROUP_SETUP`, `GROUP_NAME`, `GROUP_LEAVE`), reflected first like any send. Control messages
//! from others are applied by the leader and, from the reflected `IncomingMessage`, by every
//! sibling with the same function, so all devices reach the same group without a transaction.
//! Group texts carry the member container and go to every member but this user, one message id
//! for all.

use std::collections::BTreeSet;

use rand_core::CryptoRngCore;

use super::core::{App, Pending};
use super::event::{AppError, AppEvent, Dropped};
use super::incoming::IncomingAck;
use super::model::{
    ConversationCategory, ConversationId, ConversationVisibility, Group, GroupId, Identity,
    UserState,
};
use super::outgoing::Unstored;
use super::reflected::ApplyResult;
use super::sync::SyncOp;
use crate::csp::{
    E2eMessageType, GroupCreatorContainer, GroupMemberContainer, MessageFlags, OpenedMessage,
};
use crate::keys::IDENTITY_LEN;
use crate::proto::d2d::envelope::Content;
use crate::proto::sync;

/// A control message to send once a group change is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Announce {
    pub(super) group: GroupId,
    pub(super) receivers: Vec<Identity>,
    pub(super) message_type: E2eMessageType,
    pub(super) body: Vec<u8>,
}

/// `GROUP_SETUP` inner body: the members other than the creator, 8 bytes each.
fn encode_members(members: &BTreeSet<Identity>) -> Vec<u8> {
    members.iter().flat_map(|m| *m.as_bytes()).collect()
}

fn decode_members(bytes: &[u8]) -> Option<BTreeSet<Identity>> {
    if bytes.len() % IDENTITY_LEN != 0 {
        return None;
    }
    bytes
        .chunks_exact(IDENTITY_LEN)
        .map(|chunk| Identity::from_slice(chunk).ok())
        .collect()
}

impl Announce {
    fn setup(group: &GroupId, members: &BTreeSet<Identity>, receivers: Vec<Identity>) -> Self {
        Self {
            group: *group,
            receivers,
            message_type: E2eMessageType::GROUP_SETUP,
            body: GroupCreatorContainer {
                group_id: group.id,
                inner: encode_members(members),
            }
            .encode(),
        }
    }

    fn name(group: &GroupId, name: &str, receivers: Vec<Identity>) -> Self {
        Self {
            group: *group,
            receivers,
            message_type: E2eMessageType::GROUP_NAME,
            body: GroupCreatorContainer {
                group_id: group.id,
                inner: name.as_bytes().to_vec(),
            }
            .encode(),
        }
    }

    fn leave(group: &GroupId, receivers: Vec<Identity>) -> Self {
        Self {
            group: *group,
            receivers,
            message_type: E2eMessageType::GROUP_LEAVE,
            body: GroupMemberContainer {
                creator: *group.creator.as_bytes(),
                group_id: group.id,
                inner: Vec::new(),
            }
            .encode(),
        }
    }
}

impl App {
    /// Creates a group with this user as creator; every member must be a contact. Returns its id.
    pub fn create_group(
        &mut self,
        name: &str,
        members: BTreeSet<Identity>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<GroupId, AppError> {
        let own = self.state.own().identity;
        let mut members = members;
        members.remove(&own);
        if members.is_empty() {
            return Err(AppError::NoMembers);
        }
        if let Some(unknown) = members.iter().find(|m| self.state.contact(m).is_none()) {
            return Err(AppError::UnknownContact(*unknown));
        }
        let mut id = GroupId {
            creator: own,
            id: rng.next_u64(),
        };
        while self.state.group(&id).is_some() {
            id.id = rng.next_u64();
        }
        let group = Group {
            id,
            name: name.to_owned(),
            created_at: now_ms,
            user_state: UserState::Member,
            members: members.clone(),
            conversation_category: ConversationCategory::Default,
            conversation_visibility: ConversationVisibility::Normal,
        };
        let receivers: Vec<Identity> = members.iter().copied().collect();
        let announce = vec![
            Announce::setup(&id, &members, receivers.clone()),
            Announce::name(&id, name, receivers),
        ];
        self.enqueue_sync(SyncOp::CreateGroup(Box::new(group), announce));
        self.pump(now_ms, rng);
        Ok(id)
    }

    /// Renames a group this user created.
    pub fn rename_group(
        &mut self,
        id: GroupId,
        name: &str,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        let group = self.own_group(&id)?;
        let receivers = group.members.iter().copied().collect();
        let update = sync::Group {
            group_identity: Some(id.to_proto()),
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let announce = vec![Announce::name(&id, name, receivers)];
        self.enqueue_sync(SyncOp::UpdateGroup(id, Box::new(update), announce));
        self.pump(now_ms, rng);
        Ok(())
    }

    /// Replaces the members of a group this user created; removed members learn it from the
    /// setup they get (it no longer names them).
    pub fn set_group_members(
        &mut self,
        id: GroupId,
        members: BTreeSet<Identity>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        let own = self.state.own().identity;
        let group = self.own_group(&id)?;
        let mut members = members;
        members.remove(&own);
        if let Some(unknown) = members.iter().find(|m| self.state.contact(m).is_none()) {
            return Err(AppError::UnknownContact(*unknown));
        }
        let receivers: Vec<Identity> = group.members.union(&members).copied().collect();
        let update = sync::Group {
            group_identity: Some(id.to_proto()),
            member_identities: Some(crate::proto::common::Identities {
                identities: members.iter().map(ToString::to_string).collect(),
            }),
            ..Default::default()
        };
        let mut announce = vec![Announce::setup(&id, &members, receivers)];
        let added: Vec<Identity> = members.difference(&group.members).copied().collect();
        if !added.is_empty() {
            announce.push(Announce::name(&id, &group.name.clone(), added));
        }
        self.enqueue_sync(SyncOp::UpdateGroup(id, Box::new(update), announce));
        self.pump(now_ms, rng);
        Ok(())
    }

    /// Leaves a group. For its creator this dissolves it: the members get an empty setup.
    pub fn leave_group(
        &mut self,
        id: GroupId,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        let own = self.state.own().identity;
        let group = self.state.group(&id).ok_or(AppError::UnknownGroup(id))?;
        if group.user_state != UserState::Member {
            return Err(AppError::NotAMember(id));
        }
        let mut receivers: BTreeSet<Identity> = group.members.clone();
        receivers.insert(id.creator);
        receivers.remove(&own);
        let receivers: Vec<Identity> = receivers.into_iter().collect();
        let update = sync::Group {
            group_identity: Some(id.to_proto()),
            user_state: Some(UserState::Left.into()),
            ..Default::default()
        };
        let announce = if id.creator == own {
            vec![Announce::setup(&id, &BTreeSet::new(), receivers)]
        } else {
            vec![Announce::leave(&id, receivers)]
        };
        self.enqueue_sync(SyncOp::UpdateGroup(id, Box::new(update), announce));
        self.pump(now_ms, rng);
        Ok(())
    }

    fn own_group(&self, id: &GroupId) -> Result<&Group, AppError> {
        let group = self.state.group(id).ok_or(AppError::UnknownGroup(*id))?;
        if id.creator != self.state.own().identity {
            return Err(AppError::NotTheCreator(*id));
        }
        if group.user_state != UserState::Member {
            return Err(AppError::NotAMember(*id));
        }
        Ok(group)
    }

    /// Sends the control messages of a committed group change.
    pub(super) fn announce(
        &mut self,
        announce: &[Announce],
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        for a in announce {
            if a.receivers.is_empty() {
                continue;
            }
            self.start_unstored(
                Unstored {
                    conversation: ConversationId::Group(a.group),
                    receivers: a.receivers.clone(),
                    message_type: a.message_type,
                    body: a.body.clone(),
                    flags: MessageFlags::NO_DELIVERY_RECEIPTS,
                    ephemeral: false,
                    created_at: now_ms,
                    receipt_for: None,
                },
                rng,
            );
        }
    }

    /// Whether a group text from `sender` belongs to a group this user is in with them.
    pub(super) fn group_accepts(&self, group: &GroupId, sender: &Identity) -> bool {
        self.state.group(group).is_some_and(|g| {
            g.user_state == UserState::Member
                && (g.id.creator == *sender || g.members.contains(sender))
        })
    }

    /// The leader received a group control message: apply it, look up members it does not
    /// know, reflect it for the siblings (which apply it the same way), ack after.
    pub(super) fn on_group_control(
        &mut self,
        sender: Identity,
        opened: &OpenedMessage,
        content: Content,
        ack: IncomingAck,
        _now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        if self
            .apply_group_control(sender, opened.message_type, &opened.body)
            .is_err()
        {
            return self.drop_ack(ack, Dropped::BadBody(opened.message_type));
        }
        if opened.message_type == E2eMessageType::GROUP_SETUP {
            let own = self.state.own().identity;
            let unknown: Vec<Identity> = GroupCreatorContainer::decode(&opened.body)
                .ok()
                .and_then(|c| decode_members(&c.inner))
                .unwrap_or_default()
                .into_iter()
                .filter(|m| *m != own && self.state.contact(m).is_none())
                .collect();
            for member in unknown {
                if let std::collections::btree_map::Entry::Vacant(entry) =
                    self.lookups.entry(member)
                {
                    entry.insert(super::core::Lookup::GroupMember);
                    self.effects
                        .push_back(super::event::Effect::LookupIdentity(member));
                }
            }
        }
        self.reflect(content, false, Some(Pending::Incoming(ack)), rng);
    }

    /// Applies `GROUP_SETUP`, `GROUP_NAME` or `GROUP_LEAVE` from `sender` (leader and siblings).
    pub(super) fn apply_group_control(
        &mut self,
        sender: Identity,
        message_type: E2eMessageType,
        body: &[u8],
    ) -> ApplyResult {
        let own = self.state.own().identity;
        match message_type {
            E2eMessageType::GROUP_SETUP => {
                let container = GroupCreatorContainer::decode(body).map_err(|_| "group setup")?;
                let members = decode_members(&container.inner).ok_or("group setup members")?;
                let id = GroupId {
                    creator: sender,
                    id: container.group_id,
                };
                let existing = self.state.group(&id).cloned();
                let group = if members.contains(&own) {
                    let mut members = members;
                    members.remove(&own);
                    let mut group = existing.unwrap_or(Group {
                        id,
                        name: String::new(),
                        created_at: 0,
                        user_state: UserState::Member,
                        members: BTreeSet::new(),
                        conversation_category: ConversationCategory::Default,
                        conversation_visibility: ConversationVisibility::Normal,
                    });
                    group.members = members;
                    group.user_state = UserState::Member;
                    group
                } else {
                    // Not (or no longer) a member: a group never joined is ignored.
                    let Some(mut group) = existing else {
                        return Ok(());
                    };
                    group.user_state = UserState::Kicked;
                    group.members.clear();
                    group
                };
                self.state.put_group(group);
                self.events.push_back(AppEvent::GroupChanged(id));
                Ok(())
            }
            E2eMessageType::GROUP_NAME => {
                let container = GroupCreatorContainer::decode(body).map_err(|_| "group name")?;
                let id = GroupId {
                    creator: sender,
                    id: container.group_id,
                };
                let name = String::from_utf8(container.inner).map_err(|_| "group name text")?;
                let Some(mut group) = self.state.group(&id).cloned() else {
                    return Ok(());
                };
                group.name = name;
                self.state.put_group(group);
                self.events.push_back(AppEvent::GroupChanged(id));
                Ok(())
            }
            E2eMessageType::GROUP_LEAVE => {
                let container = GroupMemberContainer::decode(body).map_err(|_| "group leave")?;
                let id = GroupId {
                    creator: Identity::new(container.creator).map_err(|_| "group creator")?,
                    id: container.group_id,
                };
                let Some(mut group) = self.state.group(&id).cloned() else {
                    return Ok(());
                };
                if group.members.remove(&sender) {
                    self.state.put_group(group);
                    self.events.push_back(AppEvent::GroupChanged(id));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_round_trip_and_refuse_partial_or_invalid_entries() {
        let members: BTreeSet<Identity> = ["AAAAAAAA", "BBBBBBBB"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let bytes = encode_members(&members);
        assert_eq!(bytes, b"AAAAAAAABBBBBBBB");
        assert_eq!(decode_members(&bytes), Some(members));
        assert_eq!(decode_members(b"AAAAAAAABBB"), None);
        assert_eq!(decode_members(b"aaaaaaaa"), None);
        assert_eq!(decode_members(b""), Some(BTreeSet::new()));
    }
}
