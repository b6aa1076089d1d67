//! Message updates with Threema's wire formats: edit (`EditMessage`, CSP e2e type 0x91, in a
//! group 0x93 inside the group-member container), delete for everyone (`DeleteMessage`, 0x92,
//! in a group 0x94) and reactions (`Reaction`, 0x82, in a group 0x83), and deleting a message
//! on this device only. `docs/protocol.md` "Message
//! updates" has the rules and where they differ from Threema's apps.
//!
//! Both kinds go out as unstored sends (no `sent` update, no delivery receipts: Threema's
//! properties for both), are reflected as `OutgoingMessage`/`IncomingMessage` like any other
//! e2e message, and apply the same way wherever they arrive: the referred message must exist in
//! the conversation, come from the update's sender and not be deleted; otherwise the update is
//! discarded.

use prost::Message as _;
use rand_core::CryptoRngCore;

use super::core::App;
use super::event::{AppError, AppEvent};
use super::model::{ConversationId, Direction, GroupId, Identity, MessageKey, MessageState};
use super::outgoing::{check_text, Unstored};
use crate::csp::{DeliveryStatus, E2eMessageType, GroupMemberContainer, MessageFlags};
use crate::proto::csp_e2e::{reaction, EditMessage, Reaction};

/// How long after its creation the sender may still edit or delete a message (Threema's
/// clients allow 6 hours, checked on the sender's side only).
pub const CHANGE_WINDOW_MS: u64 = 6 * 60 * 60 * 1000;

/// What an update does to the message it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Update {
    /// The new text.
    Edit(String),
    /// Removed for everyone.
    Delete,
    /// An emoji put on (`true`) or taken off (`false`) the message by the update's sender.
    React(String, bool),
}

/// The longest emoji a reaction may carry, in bytes (Threema discards longer ones).
pub(super) const MAX_REACTION_LEN: usize = 64;

/// Whether a type is one of the updates here: edit, delete, reaction (1:1 or group).
pub(super) const fn is_update(message_type: E2eMessageType) -> bool {
    matches!(
        message_type,
        E2eMessageType::EDIT_MESSAGE
            | E2eMessageType::GROUP_EDIT
            | E2eMessageType::DELETE_MESSAGE
            | E2eMessageType::GROUP_DELETE
            | E2eMessageType::REACTION
            | E2eMessageType::GROUP_REACTION
    )
}

/// An update's e2e body: its group (for 0x93/0x94), the referred message id and the update;
/// `None` when the type is not an update or the body does not decode.
pub(super) fn parse_update(
    message_type: E2eMessageType,
    body: &[u8],
) -> Option<(Option<GroupId>, u64, Update)> {
    let (group, inner) = match message_type {
        E2eMessageType::EDIT_MESSAGE
        | E2eMessageType::DELETE_MESSAGE
        | E2eMessageType::REACTION => (None, body),
        E2eMessageType::GROUP_EDIT
        | E2eMessageType::GROUP_DELETE
        | E2eMessageType::GROUP_REACTION => {
            let container = GroupMemberContainer::decode(body).ok()?;
            let creator = Identity::new(container.creator).ok()?;
            let group = GroupId {
                creator,
                id: container.group_id,
            };
            return parse_inner(message_type, &container.inner).map(|(id, u)| (Some(group), id, u));
        }
        _ => return None,
    };
    parse_inner(message_type, inner).map(|(id, u)| (group, id, u))
}

/// Both bodies decode as an `EditMessage`: a `DeleteMessage` is its field 1 alone (the same
/// number and type), so one prost decoder serves both — a second one would cost the browser
/// package its own monomorphised merge code (docs/client.md "Size"). Unknown fields are skipped
/// either way; a delete's body with a field 2 is still a delete.
fn parse_inner(message_type: E2eMessageType, inner: &[u8]) -> Option<(u64, Update)> {
    if matches!(
        message_type,
        E2eMessageType::REACTION | E2eMessageType::GROUP_REACTION
    ) {
        let reaction = Reaction::decode(inner).ok()?;
        let (emoji, apply) = match reaction.action? {
            reaction::Action::Apply(emoji) => (emoji, true),
            reaction::Action::Withdraw(emoji) => (emoji, false),
        };
        let emoji = String::from_utf8(emoji).ok()?;
        return valid_emoji(&emoji).then_some((reaction.message_id, Update::React(emoji, apply)));
    }
    let body = EditMessage::decode(inner).ok()?;
    let update = if matches!(
        message_type,
        E2eMessageType::EDIT_MESSAGE | E2eMessageType::GROUP_EDIT
    ) {
        Update::Edit(body.text)
    } else {
        Update::Delete
    };
    Some((body.message_id, update))
}

/// A reaction's emoji as Threema accepts it: not empty, at most [`MAX_REACTION_LEN`] bytes.
fn valid_emoji(emoji: &str) -> bool {
    !emoji.is_empty() && emoji.len() <= MAX_REACTION_LEN
}

/// The e2e type and body of an update of message `message_id` in `conversation`; `None` for a
/// distribution list.
pub(super) fn update_body(
    conversation: &ConversationId,
    message_id: u64,
    update: &Update,
) -> Option<(E2eMessageType, Vec<u8>)> {
    let (one_to_one, in_group, inner) = match update {
        Update::Edit(text) => (
            E2eMessageType::EDIT_MESSAGE,
            E2eMessageType::GROUP_EDIT,
            EditMessage {
                message_id,
                text: text.clone(),
            }
            .encode_to_vec(),
        ),
        // An `EditMessage` without text encodes to exactly `DeleteMessage { message_id }`
        // (proto3 leaves the empty string out; tested below).
        Update::Delete => (
            E2eMessageType::DELETE_MESSAGE,
            E2eMessageType::GROUP_DELETE,
            EditMessage {
                message_id,
                text: String::new(),
            }
            .encode_to_vec(),
        ),
        Update::React(emoji, apply) => (
            E2eMessageType::REACTION,
            E2eMessageType::GROUP_REACTION,
            Reaction {
                message_id,
                action: Some(if *apply {
                    reaction::Action::Apply(emoji.clone().into_bytes())
                } else {
                    reaction::Action::Withdraw(emoji.clone().into_bytes())
                }),
            }
            .encode_to_vec(),
        ),
    };
    match conversation {
        ConversationId::Contact(_) => Some((one_to_one, inner)),
        ConversationId::Group(group) => Some((
            in_group,
            GroupMemberContainer {
                creator: *group.creator.as_bytes(),
                group_id: group.id,
                inner,
            }
            .encode(),
        )),
        ConversationId::DistributionList(_) => None,
    }
}

impl App {
    /// Edits an own message for everyone (Threema's `EditMessage`): the text changes here at
    /// once and goes to the conversation's receivers and the other devices.
    pub fn edit_message(
        &mut self,
        key: MessageKey,
        text: &str,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        check_text(text)?;
        self.send_update(key, Update::Edit(text.to_owned()), now_ms, rng)
    }

    /// Deletes a message: for everyone (an own message, Threema's `DeleteMessage`), or on this
    /// device only (any message; the record is removed and nobody is told).
    pub fn delete_message(
        &mut self,
        key: MessageKey,
        for_everyone: bool,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        if for_everyone {
            return self.send_update(key, Update::Delete, now_ms, rng);
        }
        let message = self
            .state
            .message(&key)
            .filter(|m| !m.hidden)
            .ok_or(AppError::UnknownMessage)?;
        // An own message still being sent has a job that would send it anyway.
        if message.direction == Direction::Outgoing && !message.pending.is_empty() {
            return Err(AppError::NotSentYet);
        }
        let conversation = message.conversation;
        self.state.hide_message(&key);
        self.events
            .push_back(AppEvent::MessageChanged { conversation, key });
        self.pump(now_ms, rng);
        Ok(())
    }

    /// Puts an emoji on a message (`apply`) or takes it off again (Threema's `Reaction`): any
    /// message of a conversation one can write to, for everyone in it and every own device.
    pub fn react(
        &mut self,
        key: MessageKey,
        emoji: &str,
        apply: bool,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        if !valid_emoji(emoji) {
            return Err(AppError::InvalidReaction);
        }
        self.send_update(key, Update::React(emoji.to_owned(), apply), now_ms, rng)
    }

    /// A legacy reaction: a delivery receipt ACKNOWLEDGED (👍) or DECLINED (👎) from `reactor`
    /// for messages of a 1:1 `conversation` (what Threema sends to an app without reaction
    /// support, and what older Threema apps send). It replaces all of the reactor's reactions on
    /// each message (Threema's rule). Other statuses are not reactions.
    pub(super) fn apply_legacy_reactions(
        &mut self,
        conversation: ConversationId,
        reactor: Identity,
        message_ids: &[u64],
        status: DeliveryStatus,
    ) {
        let emoji = match status {
            DeliveryStatus::Acknowledged => "👍",
            DeliveryStatus::Declined => "👎",
            _ => return,
        };
        for id in message_ids {
            let Some(key) = self
                .state
                .conversation(&conversation)
                .find(|m| m.key.id == *id && m.deleted_at.is_none())
                .map(|m| m.key)
            else {
                continue;
            };
            self.state.update_message(&key, |m| {
                m.reactions.retain(|(who, _)| *who != reactor);
                m.reactions.push((reactor, emoji.to_owned()));
                true
            });
            self.events
                .push_back(AppEvent::MessageChanged { conversation, key });
        }
    }

    /// Threema's submit steps for an edit or a delete of an own message, or a reaction.
    fn send_update(
        &mut self,
        key: MessageKey,
        update: Update,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        let message = self
            .state
            .message(&key)
            .filter(|m| m.deleted_at.is_none() && !m.hidden)
            .ok_or(AppError::UnknownMessage)?;
        let own = self.state.own().identity;
        if !matches!(update, Update::React(..)) {
            if key.sender != own {
                return Err(AppError::NotOwnMessage);
            }
            if message.state == MessageState::Pending {
                return Err(AppError::NotSentYet);
            }
            if now_ms.saturating_sub(message.created_at) > CHANGE_WINDOW_MS {
                return Err(AppError::TooLateToChange);
            }
        }
        if update == Update::Edit(message.text.clone()) {
            // Threema: an edit that changes nothing is discarded.
            return Ok(());
        }
        let conversation = message.conversation;
        let receivers = self.receivers_of(&conversation)?;
        let (message_type, body) = update_body(&conversation, key.id, &update)
            .ok_or(AppError::UnsupportedConversation(conversation))?;
        self.apply_update(conversation, own, key.id, update, now_ms);
        self.start_unstored(
            Unstored {
                conversation,
                receivers,
                message_type,
                body,
                flags: MessageFlags::SEND_PUSH,
                ephemeral: false,
                created_at: now_ms,
                receipt_for: None,
            },
            rng,
        );
        self.pump(now_ms, rng);
        Ok(())
    }

    /// Threema's common receive steps of an edit, a delete or a reaction (sent here, received,
    /// or reflected by a sibling) from `sender` for message `id` of `conversation`: an edit or a
    /// delete refers to a message of its sender, a reaction to any message of the
    /// conversation. Whether the update applies; `false` means it is discarded (no such message
    /// here, another conversation, already deleted). An edit older than the last one applied,
    /// or a reaction already there (or not there to withdraw), changes nothing but still applies.
    pub(super) fn apply_update(
        &mut self,
        conversation: ConversationId,
        sender: Identity,
        id: u64,
        update: Update,
        at: u64,
    ) -> bool {
        let key = if matches!(update, Update::React(..)) {
            self.state
                .conversation(&conversation)
                .find(|m| m.key.id == id)
                .map(|m| m.key)
        } else {
            Some(MessageKey { sender, id })
        };
        let Some(key) = key.filter(|key| {
            self.state.message(key).is_some_and(|m| {
                m.conversation == conversation && m.deleted_at.is_none() && !m.hidden
            })
        }) else {
            return false;
        };
        let changed = self.state.update_message(&key, |m| match update {
            Update::Edit(text) => {
                if m.edited_at.is_some_and(|last| last > at) {
                    return false;
                }
                let changed = m.text != text || m.edited_at != Some(at);
                m.text = text;
                m.edited_at = Some(at);
                changed
            }
            Update::Delete => {
                zeroize::Zeroize::zeroize(&mut m.text);
                m.text.clear();
                m.reactions.clear();
                m.deleted_at = Some(at);
                true
            }
            Update::React(emoji, apply) => {
                let had = m
                    .reactions
                    .iter()
                    .position(|(who, e)| *who == sender && *e == emoji);
                match (had, apply) {
                    (None, true) => m.reactions.push((sender, emoji)),
                    (Some(i), false) => {
                        m.reactions.remove(i);
                    }
                    _ => return false,
                }
                true
            }
        });
        if changed {
            self.events
                .push_back(AppEvent::MessageChanged { conversation, key });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::csp_e2e::DeleteMessage;

    #[test]
    fn a_delete_is_encoded_and_decoded_exactly_as_threemas_delete_message() {
        let id = 0x0123_4567_89ab_cdef;
        let contact = ConversationId::Contact("ABCDEFGH".parse().unwrap());
        let (message_type, body) = update_body(&contact, id, &Update::Delete).unwrap();
        assert_eq!(message_type, E2eMessageType::DELETE_MESSAGE);
        assert_eq!(body, DeleteMessage { message_id: id }.encode_to_vec());
        assert_eq!(
            parse_update(message_type, &body),
            Some((None, id, Update::Delete))
        );
        // Threema's own encoding of both, and an edit of one.
        let threema = DeleteMessage { message_id: 7 }.encode_to_vec();
        assert_eq!(
            parse_update(E2eMessageType::DELETE_MESSAGE, &threema),
            Some((None, 7, Update::Delete))
        );
        let edit = EditMessage {
            message_id: 8,
            text: "new".to_owned(),
        }
        .encode_to_vec();
        assert_eq!(
            parse_update(E2eMessageType::EDIT_MESSAGE, &edit),
            Some((None, 8, Update::Edit("new".to_owned())))
        );
        assert_eq!(parse_update(E2eMessageType::TEXT, &edit), None);
        assert_eq!(parse_update(E2eMessageType::EDIT_MESSAGE, &[0xff]), None);
    }

    #[test]
    fn group_updates_carry_the_group_member_container() {
        let group = GroupId {
            creator: "ABCDEFGH".parse().unwrap(),
            id: 42,
        };
        for (update, wanted) in [
            (Update::Edit("x".to_owned()), E2eMessageType::GROUP_EDIT),
            (Update::Delete, E2eMessageType::GROUP_DELETE),
        ] {
            let (message_type, body) =
                update_body(&ConversationId::Group(group), 9, &update).unwrap();
            assert_eq!(message_type, wanted);
            let container = GroupMemberContainer::decode(&body).unwrap();
            assert_eq!(
                (container.creator, container.group_id),
                (*group.creator.as_bytes(), 42)
            );
            assert_eq!(
                parse_update(message_type, &body),
                Some((Some(group), 9, update))
            );
        }
        let list = ConversationId::DistributionList(1);
        assert_eq!(update_body(&list, 9, &Update::Delete), None);
    }
}
