//! Incoming CSP messages, leader only (spec §9.6 "Incoming", §8.2): check receiver, sender,
//! duplicates and the nonce; find the sender (or ask the directory and create the contact in a
//! CONTACT_SYNC transaction); open; persist; reflect `IncomingMessage`; on its `ReflectAck` mark
//! the nonce, send the CSP ack and a delivery receipt. The gate holds the ack until the batch
//! with the message and the nonce is durable, so a crash before that makes the chat server
//! deliver the message again, and the dedupe by (sender, id) stores it once.

use rand_core::CryptoRngCore;

use super::core::{App, Lookup, Pending};
use super::event::{AppEvent, Dropped};
use super::model::AcquaintanceLevel;
use super::model::{
    Contact, ConversationId, Direction, GroupId, Identity, Message, MessageKey, MessageState,
};
use super::nonce::NonceScope;
use super::outgoing::text_body;
use super::sync::SyncOp;
use super::updates::{is_update, parse_update};
use crate::crypto::{Nonce, PublicKey};
use crate::csp::{
    open_message_with_keys, CspPayload, DeliveryReceipt, DeliveryStatus, E2eMessageType,
    GroupMemberContainer, MessageAck, MessageFlags, MessageWithMetadataBox, OpenError,
    OpenedMessage,
};
use crate::proto::d2d::{envelope::Content, IncomingMessage};

/// What to do once an `IncomingMessage` reflect is acked.
#[derive(Debug, Clone)]
pub(super) struct IncomingAck {
    pub(super) sender: Identity,
    pub(super) message_id: u64,
    /// The message's nonce as the replay store keeps it (hashed once, on arrival).
    pub(super) nonce_hash: [u8; 32],
    pub(super) flags: MessageFlags,
    /// A stored message gets its reflection time.
    pub(super) stored: bool,
    /// Send a delivery receipt (RECEIVED) afterwards.
    pub(super) receipt: bool,
}

/// The text of a text body, or `None` if it is not one (or not UTF-8). Group texts must name a
/// group this device knows the sender to be in; that is checked by the caller.
pub(super) fn parse_text(
    message_type: E2eMessageType,
    body: &[u8],
) -> Option<(Option<GroupId>, String)> {
    match message_type {
        E2eMessageType::TEXT => Some((None, String::from_utf8(body.to_vec()).ok()?)),
        E2eMessageType::GROUP_TEXT => {
            let container = GroupMemberContainer::decode(body).ok()?;
            let creator = Identity::new(container.creator).ok()?;
            let text = String::from_utf8(container.inner).ok()?;
            Some((
                Some(GroupId {
                    creator,
                    id: container.group_id,
                }),
                text,
            ))
        }
        _ => None,
    }
}

/// The `IncomingMessage` that reflects a stored incoming message (again).
pub(super) fn incoming_content(stored: &Message, nonce: &[u8]) -> Option<Content> {
    let (message_type, body) = text_body(&stored.conversation, &stored.text)?;
    Some(Content::IncomingMessage(IncomingMessage {
        sender_identity: stored.key.sender.to_string(),
        message_id: stored.key.id,
        created_at: stored.created_at,
        r#type: i32::from(message_type.0),
        body,
        nonce: nonce.to_vec(),
    }))
}

impl App {
    /// After a restart, incoming messages stored here whose reflection was never acked are
    /// reflected again (without a CSP ack: that is the leader's, on redelivery), so siblings
    /// surely have them and this device may reflect reads of them.
    pub(super) fn drive_unreflected(&mut self, rng: &mut impl CryptoRngCore) {
        for key in core::mem::take(&mut self.unreflected) {
            let content = self
                .state
                .message(&key)
                .filter(|m| m.reflected_at.is_none())
                .and_then(|m| incoming_content(m, &[]));
            let Some(content) = content else {
                continue;
            };
            if !self.reflect(content, false, Some(Pending::Unreflected(key)), rng) {
                self.unreflected.insert(key);
            }
        }
    }

    /// The reflection of a stored incoming message is stored by the mediator.
    pub(super) fn on_unreflected_reflected(&mut self, key: MessageKey, timestamp: u64) {
        self.state.update_message(&key, |m| {
            let unset = m.reflected_at.is_none();
            if unset {
                m.reflected_at = Some(timestamp);
            }
            unset
        });
    }

    /// Step 1–3 of spec §9.6 "Incoming" for one message from the chat server.
    pub(super) fn on_incoming_message(
        &mut self,
        message: MessageWithMetadataBox,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let own = self.state.own().identity;
        let sender = match Identity::new(message.sender) {
            Ok(sender) if sender != own && message.receiver == *own.as_bytes() => sender,
            _ => return self.drop_and_ack(&message, Dropped::NotForUs),
        };
        let key = MessageKey {
            sender,
            id: message.message_id,
        };
        if let Some(stored) = self.state.message(&key) {
            // Delivered again (after a crash or a lost ack) or a reused id: never stored twice.
            if stored.reflected_at.is_none() && stored.direction == Direction::Incoming {
                let stored = stored.clone();
                return self.reflect_stored_incoming(&stored, &message, rng);
            }
            // Whoever stored it may have died before its delivery receipt went out; a second
            // receipt is harmless (states only move forward), a missing one is not.
            let owes_receipt = stored.direction == Direction::Incoming
                && stored.conversation == ConversationId::Contact(sender)
                && stored.receipt_due.is_none()
                && !message.flags.contains(MessageFlags::NO_DELIVERY_RECEIPTS);
            self.state.use_nonce(NonceScope::Csp, &message.nonce);
            self.ack_incoming(sender, message.message_id, message.flags);
            if owes_receipt {
                self.send_receipt(sender, DeliveryStatus::Received, vec![key], now_ms, rng);
            }
            return;
        }
        let nonce_hash = self.state.nonce_hash(&message.nonce);
        if self.state.nonce_hash_used(NonceScope::Csp, &nonce_hash) {
            return self.drop_and_ack(&message, Dropped::ReplayedNonce);
        }
        if self.state.settings().is_blocked(&sender) {
            return self.drop_and_ack(&message, Dropped::Blocked(sender));
        }
        let Some(contact) = self.state.contact(&sender) else {
            if self.state.settings().blocks_unknown() {
                return self.drop_and_ack(&message, Dropped::Blocked(sender));
            }
            self.parked.entry(sender).or_default().push(message);
            if let std::collections::btree_map::Entry::Vacant(entry) = self.lookups.entry(sender) {
                entry.insert(Lookup::Sender);
                self.effects
                    .push_back(super::event::Effect::LookupIdentity(sender));
            }
            return;
        };
        let contact_nickname = contact.nickname.clone();
        let opened = match self
            .peer_keys
            .get(&self.state.own().client_key, &contact.public_key)
            .map_err(OpenError::SenderKey)
            .and_then(|keys| open_message_with_keys(keys, &message))
        {
            Ok(opened) => opened,
            Err(e) => return self.drop_and_ack(&message, Dropped::Undecryptable(e)),
        };
        if let Some(nickname) = &opened.nickname {
            if *nickname != contact_nickname {
                let update = crate::proto::sync::Contact {
                    identity: sender.to_string(),
                    nickname: Some(nickname.clone()),
                    ..Default::default()
                };
                self.enqueue_sync(SyncOp::UpdateContact(sender, Box::new(update)));
            }
        }
        self.process_opened(sender, &message.nonce, nonce_hash, opened, now_ms, rng);
    }

    fn process_opened(
        &mut self,
        sender: Identity,
        nonce: &Nonce,
        nonce_hash: [u8; 32],
        opened: OpenedMessage,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let created_at = opened.created_at_ms.min(now_ms);
        let ack = IncomingAck {
            sender,
            message_id: opened.message_id,
            nonce_hash,
            flags: opened.flags,
            stored: false,
            receipt: false,
        };
        let content = Content::IncomingMessage(IncomingMessage {
            sender_identity: sender.to_string(),
            message_id: opened.message_id,
            created_at,
            r#type: i32::from(opened.message_type.0),
            body: opened.body.clone(),
            nonce: nonce.to_vec(),
        });
        match opened.message_type {
            E2eMessageType::TEXT | E2eMessageType::GROUP_TEXT => {
                let Some((group, text)) = parse_text(opened.message_type, &opened.body) else {
                    return self.drop_ack(ack, Dropped::BadBody(opened.message_type));
                };
                let conversation = match group {
                    None => ConversationId::Contact(sender),
                    Some(group) => {
                        if !self.group_accepts(&group, &sender) {
                            return self.drop_ack(ack, Dropped::Unsupported(opened.message_type));
                        }
                        ConversationId::Group(group)
                    }
                };
                let key = MessageKey {
                    sender,
                    id: opened.message_id,
                };
                self.state.add_message(Message {
                    seq: 0,
                    conversation,
                    key,
                    direction: Direction::Incoming,
                    text,
                    created_at,
                    state: MessageState::Received,
                    reflected_at: None,
                    state_at: None,
                    pending: Vec::new(),
                    read_unsynced: false,
                    receipt_due: None,
                    edited_at: None,
                    deleted_at: None,
                    hidden: false,
                    reactions: Vec::new(),
                });
                self.events
                    .push_back(AppEvent::MessageAdded { conversation, key });
                let ack = IncomingAck {
                    stored: true,
                    receipt: group.is_none()
                        && !opened.flags.contains(MessageFlags::NO_DELIVERY_RECEIPTS),
                    ..ack
                };
                self.reflect(content, false, Some(Pending::Incoming(ack)), rng);
            }
            E2eMessageType::DELIVERY_RECEIPT => {
                let Ok(receipt) = DeliveryReceipt::decode(&opened.body) else {
                    return self.drop_ack(ack, Dropped::BadBody(opened.message_type));
                };
                self.apply_receipt(sender, &receipt, created_at);
                self.reflect(content, false, Some(Pending::Incoming(ack)), rng);
            }
            E2eMessageType::TYPING_INDICATOR => {
                let typing = match opened.body.as_slice() {
                    [0] => false,
                    [1] => true,
                    _ => return self.drop_ack(ack, Dropped::BadBody(opened.message_type)),
                };
                self.events.push_back(AppEvent::Typing {
                    identity: sender,
                    typing,
                });
                // Ephemeral (spec §5): no ReflectAck will come, so the ack goes out now.
                self.reflect(content, true, None, rng);
                self.state.use_nonce_hash(NonceScope::Csp, nonce_hash);
                self.ack_incoming(sender, opened.message_id, opened.flags);
            }
            E2eMessageType::GROUP_SETUP
            | E2eMessageType::GROUP_NAME
            | E2eMessageType::GROUP_LEAVE => {
                self.on_group_control(sender, &opened, content, ack, now_ms, rng);
            }
            t if is_update(t) => {
                let Some((group, id, update)) = parse_update(opened.message_type, &opened.body)
                else {
                    return self.drop_ack(ack, Dropped::BadBody(opened.message_type));
                };
                let conversation = match group {
                    None => ConversationId::Contact(sender),
                    Some(group) if self.group_accepts(&group, &sender) => {
                        ConversationId::Group(group)
                    }
                    Some(_) => {
                        return self.drop_ack(ack, Dropped::Unsupported(opened.message_type))
                    }
                };
                // No delivery receipt and no `sent` update for either (Threema's properties).
                if self.apply_update(conversation, sender, id, update, created_at) {
                    self.reflect(content, false, Some(Pending::Incoming(ack)), rng);
                } else {
                    self.drop_ack(ack, Dropped::UnknownMessage(opened.message_type));
                }
            }
            other => self.drop_ack(ack, Dropped::Unsupported(other)),
        }
    }

    /// A stored incoming message whose reflection never got acked: reflect it again.
    fn reflect_stored_incoming(
        &mut self,
        stored: &Message,
        message: &MessageWithMetadataBox,
        rng: &mut impl CryptoRngCore,
    ) {
        let Some(content) = incoming_content(stored, &message.nonce) else {
            return self.ack_incoming(stored.key.sender, stored.key.id, message.flags);
        };
        let ack = IncomingAck {
            sender: stored.key.sender,
            message_id: stored.key.id,
            nonce_hash: self.state.nonce_hash(&message.nonce),
            flags: message.flags,
            stored: true,
            receipt: matches!(stored.conversation, ConversationId::Contact(_))
                && !message.flags.contains(MessageFlags::NO_DELIVERY_RECEIPTS),
        };
        self.reflect(content, false, Some(Pending::Incoming(ack)), rng);
    }

    /// Step 5–6: the reflection is stored; mark the nonce, ack, send the receipt.
    pub(super) fn on_incoming_reflected(
        &mut self,
        ack: IncomingAck,
        timestamp: u64,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let key = MessageKey {
            sender: ack.sender,
            id: ack.message_id,
        };
        if ack.stored {
            self.state.update_message(&key, |m| {
                m.reflected_at.get_or_insert(timestamp);
                true
            });
        }
        self.state.use_nonce_hash(NonceScope::Csp, ack.nonce_hash);
        self.ack_incoming(ack.sender, ack.message_id, ack.flags);
        if ack.receipt {
            self.send_receipt(ack.sender, DeliveryStatus::Received, vec![key], now_ms, rng);
        }
    }

    /// Sends the CSP message-ack (0x82) unless the sender asked for none.
    pub(super) fn ack_incoming(&mut self, sender: Identity, message_id: u64, flags: MessageFlags) {
        if !flags.contains(MessageFlags::DONT_ACK) {
            self.csp_send(&CspPayload::IncomingMessageAck(MessageAck {
                identity: *sender.as_bytes(),
                message_id,
            }));
        }
    }

    /// Spec §9.6: invalid messages are acked (and the nonce marked) and dropped.
    fn drop_and_ack(&mut self, message: &MessageWithMetadataBox, reason: Dropped) {
        self.state.use_nonce(NonceScope::Csp, &message.nonce);
        if !message.flags.contains(MessageFlags::DONT_ACK) {
            self.csp_send(&CspPayload::IncomingMessageAck(MessageAck {
                identity: message.sender,
                message_id: message.message_id,
            }));
        }
        self.events.push_back(AppEvent::Dropped(reason));
    }

    pub(super) fn drop_ack(&mut self, ack: IncomingAck, reason: Dropped) {
        self.state.use_nonce_hash(NonceScope::Csp, ack.nonce_hash);
        self.ack_incoming(ack.sender, ack.message_id, ack.flags);
        self.events.push_back(AppEvent::Dropped(reason));
    }

    /// The directory answered: create the contact (through a transaction) or drop what waited.
    pub(super) fn lookup_answered(
        &mut self,
        identity: Identity,
        public_key: Option<PublicKey>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let Some(reason) = self.lookups.remove(&identity) else {
            return;
        };
        match public_key {
            Some(key) if identity != self.state.own().identity => {
                if self.state.contact(&identity).is_some() {
                    self.resume_parked(identity, now_ms, rng);
                } else {
                    let mut contact = Contact::new(identity, key, now_ms);
                    if reason == Lookup::GroupMember {
                        contact.acquaintance_level = AcquaintanceLevel::GroupOrDeleted;
                    }
                    self.enqueue_sync(SyncOp::CreateContact(Box::new(contact)));
                }
            }
            _ => {
                if reason == Lookup::User {
                    self.events.push_back(AppEvent::ContactNotFound(identity));
                }
                for message in self.parked.remove(&identity).unwrap_or_default() {
                    self.drop_and_ack(&message, Dropped::UnknownSender(identity));
                }
            }
        }
    }

    /// The sender's contact exists now: process what waited for it, in order.
    pub(super) fn resume_parked(
        &mut self,
        identity: Identity,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        for message in self.parked.remove(&identity).unwrap_or_default() {
            if self.conn.leader {
                self.on_incoming_message(message, now_ms, rng);
            }
        }
    }
}
