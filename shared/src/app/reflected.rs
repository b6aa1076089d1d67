//! Envelopes from siblings (spec §5, §8): check the D2D nonce, apply idempotently, persist, and
//! ack behind the batch. Whatever does not apply is still acked so the queue keeps moving.

use rand_core::CryptoRngCore;

use super::core::App;
use super::event::{AppEvent, Dropped};
use super::incoming::parse_text;
use super::model::{
    Contact, ConversationId, Direction, DistributionList, Group, GroupId, Identity, Message,
    MessageKey, MessageState, Profile,
};
use super::nonce::NonceScope;
use super::updates::{is_update, parse_update};
use crate::crypto::Nonce;
use crate::csp::{DeliveryReceipt, DeliveryStatus, E2eMessageType};
use crate::proto::d2d::{
    contact_sync, distribution_list_sync, envelope::Content, group_sync, incoming_message_update,
    outgoing_message_update, settings_sync, user_profile_sync, Envelope, IncomingMessage,
    OutgoingMessage,
};

/// The `Reflected` frame's facts besides the envelope.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReflectedIn {
    pub(super) reflected_id: u32,
    pub(super) timestamp: u64,
    pub(super) ephemeral: bool,
    pub(super) nonce: Nonce,
}

/// Why an envelope did not apply.
pub(super) type ApplyResult = Result<(), &'static str>;

impl App {
    pub(super) fn on_reflected(
        &mut self,
        reflected: ReflectedIn,
        envelope: Envelope,
        rng: &mut impl CryptoRngCore,
    ) {
        if reflected.ephemeral {
            self.apply_ephemeral(&envelope);
            return;
        }
        if self.state.use_nonce(NonceScope::D2d, &reflected.nonce) {
            if let Err(reason) = self.apply_envelope(envelope, reflected.timestamp, rng) {
                self.events
                    .push_back(AppEvent::Dropped(Dropped::InvalidEnvelope(reason)));
            }
        } else {
            self.events
                .push_back(AppEvent::Dropped(Dropped::ReplayedEnvelope));
        }
        if let Some(session) = self.session.as_mut() {
            // Refused only for ids not awaiting an ack, which cannot happen here.
            let _ = session.ack_reflected(reflected.reflected_id);
        }
    }

    /// Ephemeral envelopes only ever carry typing indicators (spec §5).
    fn apply_ephemeral(&mut self, envelope: &Envelope) {
        if let Some(Content::IncomingMessage(m)) = &envelope.content {
            if m.r#type == i32::from(E2eMessageType::TYPING_INDICATOR.0) {
                if let (Ok(identity), [flag @ (0 | 1)]) =
                    (m.sender_identity.parse::<Identity>(), m.body.as_slice())
                {
                    self.events.push_back(AppEvent::Typing {
                        identity,
                        typing: *flag == 1,
                    });
                }
            }
        }
    }

    /// Applies one envelope's content; the same code applies an own transaction at commit.
    pub(super) fn apply_envelope(
        &mut self,
        envelope: Envelope,
        timestamp: u64,
        rng: &mut impl CryptoRngCore,
    ) -> ApplyResult {
        let from = envelope.device_id;
        match envelope.content {
            Some(Content::OutgoingMessage(m)) => self.apply_outgoing(&m, timestamp),
            Some(Content::OutgoingMessageUpdate(u)) => {
                let own = self.state.own().identity;
                for update in u.updates {
                    if let Some(outgoing_message_update::update::Update::Sent(_)) = update.update {
                        self.mark_sent(
                            &MessageKey {
                                sender: own,
                                id: update.message_id,
                            },
                            timestamp,
                        );
                    }
                }
                Ok(())
            }
            Some(Content::IncomingMessage(m)) => self.apply_incoming(&m, timestamp),
            Some(Content::IncomingMessageUpdate(u)) => {
                for update in u.updates {
                    let Some(incoming_message_update::update::Update::Read(read)) = update.update
                    else {
                        continue;
                    };
                    let conversation = update
                        .conversation
                        .as_ref()
                        .and_then(|c| ConversationId::from_proto(c).ok())
                        .ok_or("read update without conversation")?;
                    self.apply_read(&conversation, update.message_id, read.at);
                }
                Ok(())
            }
            Some(Content::NewDeviceSyncRequest(request)) => {
                self.on_new_device_sync_request(from, request.max_history_messages, rng);
                Ok(())
            }
            Some(Content::MdmParameterSync(_)) => Ok(()),
            Some(other) => self.apply_sync(other),
            None => Err("no content"),
        }
    }

    fn apply_outgoing(&mut self, m: &OutgoingMessage, timestamp: u64) -> ApplyResult {
        let conversation = m
            .conversation
            .as_ref()
            .and_then(|c| ConversationId::from_proto(c).ok())
            .ok_or("outgoing message without conversation")?;
        for nonce in &m.nonces {
            if let Ok(nonce) = Nonce::try_from(nonce.as_slice()) {
                self.state.use_nonce(NonceScope::Csp, &nonce);
            }
        }
        let message_type = E2eMessageType(u8::try_from(m.r#type).map_err(|_| "message type")?);
        let own = self.state.own().identity;
        match message_type {
            E2eMessageType::TEXT | E2eMessageType::GROUP_TEXT => {
                let (group, text) =
                    parse_text(message_type, &m.body).ok_or("outgoing text body")?;
                if group
                    .map(ConversationId::Group)
                    .is_some_and(|g| g != conversation)
                {
                    return Err("group text for another conversation");
                }
                let key = MessageKey {
                    sender: own,
                    id: m.message_id,
                };
                let added = self.state.add_message(Message {
                    seq: 0,
                    conversation,
                    key,
                    direction: Direction::Outgoing,
                    text,
                    created_at: m.created_at,
                    state: MessageState::Pending,
                    reflected_at: Some(timestamp),
                    state_at: None,
                    pending: Vec::new(),
                    read_unsynced: false,
                    receipt_due: None,
                    edited_at: None,
                    deleted_at: None,
                    hidden: false,
                    reactions: Vec::new(),
                });
                if added.is_some() {
                    self.events
                        .push_back(AppEvent::MessageAdded { conversation, key });
                }
                Ok(())
            }
            t if is_update(t) => self.apply_reflected_update(
                message_type,
                &m.body,
                Some(conversation),
                own,
                m.created_at,
            ),
            E2eMessageType::DELIVERY_RECEIPT => {
                // A sibling told a contact it read messages; keep this device's view in step.
                let receipt = DeliveryReceipt::decode(&m.body).map_err(|_| "receipt body")?;
                if receipt.status() == DeliveryStatus::Read {
                    for id in receipt.message_ids() {
                        self.apply_read(&conversation, *id, m.created_at);
                    }
                } else {
                    // A Threema sibling's legacy reaction (👍/👎 as a receipt) to the contact.
                    self.apply_legacy_reactions(
                        conversation,
                        own,
                        receipt.message_ids(),
                        receipt.status(),
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn apply_incoming(&mut self, m: &IncomingMessage, timestamp: u64) -> ApplyResult {
        let sender: Identity = m
            .sender_identity
            .parse()
            .map_err(|_| "incoming message sender")?;
        if let Ok(nonce) = Nonce::try_from(m.nonce.as_slice()) {
            self.state.use_nonce(NonceScope::Csp, &nonce);
        }
        let message_type = E2eMessageType(u8::try_from(m.r#type).map_err(|_| "message type")?);
        match message_type {
            E2eMessageType::TEXT | E2eMessageType::GROUP_TEXT => {
                let (group, text) =
                    parse_text(message_type, &m.body).ok_or("incoming text body")?;
                let conversation =
                    group.map_or(ConversationId::Contact(sender), ConversationId::Group);
                let key = MessageKey {
                    sender,
                    id: m.message_id,
                };
                // Stored here before (as leader) but its own reflection was never acked: this
                // one from the new leader stands in for it.
                self.state.update_message(&key, |m| {
                    let unset = m.reflected_at.is_none();
                    if unset {
                        m.reflected_at = Some(timestamp);
                    }
                    unset
                });
                let added = self.state.add_message(Message {
                    seq: 0,
                    conversation,
                    key,
                    direction: Direction::Incoming,
                    text,
                    created_at: m.created_at,
                    state: MessageState::Received,
                    reflected_at: Some(timestamp),
                    state_at: None,
                    pending: Vec::new(),
                    read_unsynced: false,
                    receipt_due: None,
                    edited_at: None,
                    deleted_at: None,
                    hidden: false,
                    reactions: Vec::new(),
                });
                if added.is_some() {
                    self.events
                        .push_back(AppEvent::MessageAdded { conversation, key });
                }
                Ok(())
            }
            E2eMessageType::DELIVERY_RECEIPT => {
                let receipt = DeliveryReceipt::decode(&m.body).map_err(|_| "receipt body")?;
                self.apply_receipt(sender, &receipt, m.created_at);
                Ok(())
            }
            t if is_update(t) => {
                self.apply_reflected_update(message_type, &m.body, None, sender, m.created_at)
            }
            E2eMessageType::GROUP_SETUP
            | E2eMessageType::GROUP_NAME
            | E2eMessageType::GROUP_LEAVE => {
                self.apply_group_control(sender, message_type, &m.body)
            }
            _ => Ok(()),
        }
    }

    /// A sibling sent (`conversation` given) or received an edit or delete of `sender`'s message:
    /// applied as where it first arrived (an update for a message not here is discarded there
    /// too, so it is no error).
    fn apply_reflected_update(
        &mut self,
        message_type: E2eMessageType,
        body: &[u8],
        conversation: Option<ConversationId>,
        sender: Identity,
        at: u64,
    ) -> ApplyResult {
        let (group, id, update) = parse_update(message_type, body).ok_or("update body")?;
        let from_body = group.map_or(ConversationId::Contact(sender), ConversationId::Group);
        let conversation = conversation.unwrap_or(from_body);
        if group.is_some() && conversation != from_body {
            return Err("group update for another conversation");
        }
        self.apply_update(conversation, sender, id, update, at);
        Ok(())
    }

    /// A contact's delivery receipt moves own messages of the 1:1 conversation forward.
    pub(super) fn apply_receipt(&mut self, sender: Identity, receipt: &DeliveryReceipt, at: u64) {
        let target = match receipt.status() {
            DeliveryStatus::Received => MessageState::Delivered,
            DeliveryStatus::Read => MessageState::Read,
            status @ (DeliveryStatus::Acknowledged | DeliveryStatus::Declined) => {
                let conversation = ConversationId::Contact(sender);
                return self.apply_legacy_reactions(
                    conversation,
                    sender,
                    receipt.message_ids(),
                    status,
                );
            }
        };
        let own = self.state.own().identity;
        for id in receipt.message_ids() {
            let key = MessageKey {
                sender: own,
                id: *id,
            };
            let mut changed = false;
            self.state.update_message(&key, |m| {
                if m.conversation == ConversationId::Contact(sender) && m.state.advances_to(target)
                {
                    m.state = target;
                    m.state_at = Some(at);
                    m.pending.clear();
                    changed = true;
                }
                changed
            });
            if changed {
                self.events
                    .push_back(AppEvent::MessageState { key, state: target });
            }
        }
    }

    /// An incoming message of `conversation` was read (here or on a sibling).
    pub(super) fn apply_read(&mut self, conversation: &ConversationId, message_id: u64, at: u64) {
        let Some(key) = self
            .state
            .conversation(conversation)
            .find(|m| m.key.id == message_id && m.direction == Direction::Incoming)
            .map(|m| m.key)
        else {
            return;
        };
        let mut changed = false;
        self.state.update_message(&key, |m| {
            if m.state.advances_to(MessageState::Read) {
                m.state = MessageState::Read;
                m.state_at = Some(at);
                changed = true;
            }
            changed
        });
        if changed {
            self.events.push_back(AppEvent::MessageState {
                key,
                state: MessageState::Read,
            });
        }
    }

    /// Contact, group, distribution list, settings and profile sync (spec §8.3), idempotent:
    /// a `create` of something known merges, an `update` changes only present fields.
    pub(super) fn apply_sync(&mut self, content: Content) -> ApplyResult {
        match content {
            Content::ContactSync(sync) => match sync.action {
                Some(contact_sync::Action::Create(contact_sync::Create { contact: Some(c) }))
                | Some(contact_sync::Action::Update(contact_sync::Update { contact: Some(c) })) => {
                    let identity: Identity = c.identity.parse().map_err(|_| "contact identity")?;
                    if identity == self.state.own().identity {
                        return Err("contact is the own identity");
                    }
                    let contact = match self.state.contact(&identity) {
                        Some(existing) => {
                            let mut updated = existing.clone();
                            updated.apply_update(&c).map_err(|_| "contact update")?;
                            updated
                        }
                        None => Contact::from_sync(&c).map_err(|_| "contact without key")?,
                    };
                    self.state.put_contact(contact);
                    self.events.push_back(AppEvent::ContactChanged(identity));
                    Ok(())
                }
                _ => Err("empty contact sync"),
            },
            Content::GroupSync(sync) => match sync.action {
                Some(group_sync::Action::Create(group_sync::Create { group: Some(g) }))
                | Some(group_sync::Action::Update(group_sync::Update { group: Some(g), .. })) => {
                    let id = GroupId::from_proto(g.group_identity.as_ref().ok_or("group id")?)
                        .map_err(|_| "group id")?;
                    let group = match self.state.group(&id) {
                        Some(existing) => {
                            let mut updated = existing.clone();
                            updated.apply_update(&g).map_err(|_| "group update")?;
                            updated
                        }
                        None => Group::from_sync(&g).map_err(|_| "group")?,
                    };
                    self.state.put_group(group);
                    self.events.push_back(AppEvent::GroupChanged(id));
                    Ok(())
                }
                Some(group_sync::Action::Delete(group_sync::Delete {
                    group_identity: Some(gid),
                })) => {
                    let id = GroupId::from_proto(&gid).map_err(|_| "group id")?;
                    self.state.delete_group(&id);
                    self.events.push_back(AppEvent::GroupRemoved(id));
                    Ok(())
                }
                _ => Err("empty group sync"),
            },
            Content::DistributionListSync(sync) => match sync.action {
                Some(distribution_list_sync::Action::Create(distribution_list_sync::Create {
                    distribution_list: Some(l),
                }))
                | Some(distribution_list_sync::Action::Update(distribution_list_sync::Update {
                    distribution_list: Some(l),
                })) => {
                    let list = match self.state.distribution_lists().get(&l.distribution_list_id) {
                        Some(existing) => {
                            let mut updated = existing.clone();
                            updated.apply_update(&l).map_err(|_| "list update")?;
                            updated
                        }
                        None => DistributionList::from_sync(&l).map_err(|_| "list")?,
                    };
                    let id = list.id;
                    self.state.put_list(list);
                    self.events.push_back(AppEvent::DistributionListChanged(id));
                    Ok(())
                }
                Some(distribution_list_sync::Action::Delete(distribution_list_sync::Delete {
                    distribution_list_id,
                })) => {
                    self.state.delete_list(distribution_list_id);
                    self.events
                        .push_back(AppEvent::DistributionListRemoved(distribution_list_id));
                    Ok(())
                }
                _ => Err("empty distribution list sync"),
            },
            Content::SettingsSync(sync) => match sync.action {
                Some(settings_sync::Action::Update(settings_sync::Update {
                    settings: Some(update),
                })) => {
                    let mut settings = self.state.settings().clone();
                    settings.apply_update(&update);
                    self.state.put_settings(settings);
                    self.events.push_back(AppEvent::SettingsChanged);
                    Ok(())
                }
                _ => Err("empty settings sync"),
            },
            Content::UserProfileSync(sync) => match sync.action {
                Some(user_profile_sync::Action::Update(user_profile_sync::Update {
                    user_profile: Some(update),
                })) => {
                    if let Some(nickname) = update.nickname {
                        self.state.put_profile(Profile { nickname });
                        self.events.push_back(AppEvent::ProfileChanged);
                    }
                    Ok(())
                }
                _ => Err("empty profile sync"),
            },
            _ => Err("not a sync envelope"),
        }
    }
}
