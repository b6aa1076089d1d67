//! New device sync (DESIGN §2.4, `docs/protocol.md` "NewDeviceSyncRequest"): a device created
//! empty reflects `NewDeviceSyncRequest` once it is online; the first sibling to see it opens a
//! NEW_DEVICE_SYNC transaction and reflects profile, settings, contacts, groups, distribution
//! lists and the most recent messages as ordinary envelopes, which every device applies
//! idempotently (the siblings that already have it all change nothing).

use rand_core::CryptoRngCore;

use super::core::{App, Pending};
use super::event::AppEvent;
use super::model::{ConversationId, Direction, Identity, Message, MessageState, Settings};
use super::outgoing::text_body;
use super::sync::{
    NdsCursor, NdsHistory, SyncOp, NEW_DEVICE_SYNC_MAX_HISTORY, NEW_DEVICE_SYNC_PART_BYTES,
    NEW_DEVICE_SYNC_PART_ENVELOPES,
};
use super::updates::{update_body, Update};
use crate::csp::{DeliveryReceipt, DeliveryStatus, E2eMessageType};
use crate::proto::d2d::{
    contact_sync, distribution_list_sync, envelope::Content, group_sync, incoming_message_update,
    outgoing_message_update, settings_sync, user_profile_sync, ContactSync, DistributionListSync,
    GroupSync, IncomingMessage, IncomingMessageUpdate, NewDeviceSyncRequest, OutgoingMessage,
    OutgoingMessageUpdate, SettingsSync, UserProfileSync,
};
use crate::proto::sync;
use core::ops::Bound::{Excluded, Unbounded};
use std::collections::BTreeMap;

impl App {
    /// A device created empty asks its siblings once, after its queue is dry; the flag is
    /// cleared (and persisted) when the mediator has stored the request.
    pub(super) fn request_new_device_sync(&mut self, rng: &mut impl CryptoRngCore) {
        if !self.state.own().wants_new_device_sync || self.conn.new_device_sync_requested {
            return;
        }
        let content = Content::NewDeviceSyncRequest(NewDeviceSyncRequest {
            max_history_messages: self.config.max_history_messages,
        });
        if self.reflect(content, false, Some(Pending::NewDeviceSyncRequest), rng) {
            self.conn.new_device_sync_requested = true;
        }
    }

    /// A sibling asked: answer through a NEW_DEVICE_SYNC transaction (unless another sibling
    /// answers first).
    pub(super) fn on_new_device_sync_request(
        &mut self,
        device_id: u64,
        max_history_messages: u32,
        _rng: &mut impl CryptoRngCore,
    ) {
        if device_id == self.state.own().device_id {
            return;
        }
        // Stored with the batch that acks the request: an answer that dies with this device
        // (a crash mid-answer) resumes when it opens again, though the siblings it rejected
        // take the request as answered.
        self.state.put_answer_owed(device_id, max_history_messages);
        self.enqueue_sync(SyncOp::NewDeviceSync {
            device_id,
            max_history_messages,
        });
    }

    /// Which history messages an answer replays: the newest `max_history_messages` (capped)
    /// of this moment. Fixed when the answer's first transaction holds the lock: by then this
    /// device has every message reflected before the new device's slot existed (the mediator
    /// acks a lock only after the queue entries before it, `docs/mediator.md`); later ones
    /// reach the new device as ordinary reflections.
    pub(super) fn new_device_sync_history(&self, max_history_messages: u32) -> NdsHistory {
        let want = max_history_messages.min(NEW_DEVICE_SYNC_MAX_HISTORY);
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        let messages = self.state.messages();
        let newest: Vec<u64> = messages.keys().rev().take(want).copied().collect();
        NdsHistory {
            first_seq: newest.last().copied().unwrap_or(u64::MAX),
            last_seq: newest.first().copied().unwrap_or(0),
            count: u32::try_from(newest.len()).unwrap_or(u32::MAX),
        }
    }

    /// The envelopes of the part starting at `cursor`, read from the current state, and where
    /// the next part starts. Items are whole (a message with its updates is never split); a
    /// part holds at least one item and stops before [`NEW_DEVICE_SYNC_PART_ENVELOPES`] or
    /// [`NEW_DEVICE_SYNC_PART_BYTES`] would be passed. Cursors are keys, not positions: an item
    /// added or removed meanwhile shifts nothing (one added behind the cursor reaches the new
    /// device as an ordinary reflection, its slot exists by now).
    ///
    /// `refresh` (sequence numbers) go first: messages an earlier part carried whose state
    /// changed while that part was in flight (see [`PartOut::carried`]).
    pub(super) fn new_device_sync_part(
        &self,
        cursor: &NdsCursor,
        history: &NdsHistory,
        refresh: &[u64],
    ) -> PartOut {
        let mut part = Part::default();
        let mut carried = Vec::new();
        let mut refresh = refresh.iter().copied().peekable();
        while let Some(&seq) = refresh.peek() {
            let mut item = Vec::new();
            if let Some(message) = self.state.messages().get(&seq) {
                history_envelopes(message, self.state.own().identity, &mut item);
            }
            if !part.fits(&item) {
                break;
            }
            if !item.is_empty() {
                carried.push(seq);
            }
            part.add(item);
            refresh.next();
        }
        let refresh: Vec<u64> = refresh.collect();
        let mut cursor = cursor.clone();
        if !refresh.is_empty() {
            return PartOut {
                contents: part.contents,
                next: cursor,
                refresh,
                carried,
            };
        }
        loop {
            let (item, next) = match &cursor {
                NdsCursor::Start => (self.profile_and_settings(), NdsCursor::Contacts(None)),
                NdsCursor::Contacts(after) => match next_after(self.state.contacts(), *after) {
                    Some((id, contact)) => (
                        vec![Content::ContactSync(ContactSync {
                            action: Some(contact_sync::Action::Create(contact_sync::Create {
                                contact: Some(contact.to_sync()),
                            })),
                        })],
                        NdsCursor::Contacts(Some(id)),
                    ),
                    None => (Vec::new(), NdsCursor::Groups(None)),
                },
                NdsCursor::Groups(after) => match next_after(self.state.groups(), *after) {
                    Some((id, group)) => (
                        vec![Content::GroupSync(GroupSync {
                            action: Some(group_sync::Action::Create(group_sync::Create {
                                group: Some(group.to_sync()),
                            })),
                        })],
                        NdsCursor::Groups(Some(id)),
                    ),
                    None => (Vec::new(), NdsCursor::Lists(None)),
                },
                NdsCursor::Lists(after) => {
                    match next_after(self.state.distribution_lists(), *after) {
                        Some((id, list)) => (
                            vec![Content::DistributionListSync(DistributionListSync {
                                action: Some(distribution_list_sync::Action::Create(
                                    distribution_list_sync::Create {
                                        distribution_list: Some(list.to_sync()),
                                    },
                                )),
                            })],
                            NdsCursor::Lists(Some(id)),
                        ),
                        None => (Vec::new(), NdsCursor::Messages(history.first_seq)),
                    }
                }
                NdsCursor::Messages(from) => {
                    let found = self
                        .state
                        .messages()
                        .range(*from..)
                        .next()
                        .filter(|(seq, _)| **seq <= history.last_seq);
                    match found {
                        Some((seq, message)) => {
                            let mut out = Vec::new();
                            history_envelopes(message, self.state.own().identity, &mut out);
                            (out, NdsCursor::Messages(seq.saturating_add(1)))
                        }
                        None => (Vec::new(), NdsCursor::Done),
                    }
                }
                NdsCursor::Done => {
                    return PartOut {
                        contents: part.contents,
                        next: NdsCursor::Done,
                        refresh: Vec::new(),
                        carried,
                    }
                }
            };
            if !part.fits(&item) {
                return PartOut {
                    contents: part.contents,
                    next: cursor,
                    refresh: Vec::new(),
                    carried,
                };
            }
            if let (NdsCursor::Messages(_), NdsCursor::Messages(after)) = (&cursor, &next) {
                if !item.is_empty() {
                    carried.push(after.saturating_sub(1));
                }
            }
            part.add(item);
            cursor = next;
        }
    }

    /// The own nickname (if set) and settings (if not default).
    fn profile_and_settings(&self) -> Vec<Content> {
        let mut out = Vec::new();
        let profile = self.state.profile();
        if !profile.nickname.is_empty() {
            out.push(Content::UserProfileSync(UserProfileSync {
                action: Some(user_profile_sync::Action::Update(
                    user_profile_sync::Update {
                        user_profile: Some(sync::UserProfile {
                            nickname: Some(profile.nickname.clone()),
                            ..Default::default()
                        }),
                    },
                )),
            }));
        }
        if *self.state.settings() != Settings::default() {
            out.push(Content::SettingsSync(SettingsSync {
                action: Some(settings_sync::Action::Update(settings_sync::Update {
                    settings: Some(self.state.settings().0.clone()),
                })),
            }));
        }
        out
    }

    /// The answer's last part is committed.
    pub(super) fn new_device_sync_done(&mut self, device_id: u64, messages: u32) {
        self.events.push_back(AppEvent::NewDeviceSyncSent {
            device_id,
            messages,
        });
    }
}

/// One stored message as the envelopes that produce it, state included: an outgoing message
/// with its `sent` update and the contact's receipt; an incoming one with its read update.
/// Replayed envelopes carry no nonces: the new device has no use for nonce hashes of messages
/// it never received.
fn history_envelopes(message: &Message, own: Identity, out: &mut Vec<Content>) {
    if message.deleted_at.is_some() || message.hidden {
        // Deleted (for everyone, or here): nothing of it is shown, so nothing is sent.
        return;
    }
    let Some((message_type, body)) = text_body(&message.conversation, &message.text) else {
        return;
    };
    history_message(message, message_type, body, out);
    // An edited message: its edit too (same text), so the new device marks it edited; and its
    // reactions, each as its author sent it.
    let author = (message.direction == Direction::Incoming).then_some(message.key.sender);
    if let Some(at) = message.edited_at {
        out.extend(update_envelope(
            message,
            author,
            &Update::Edit(message.text.clone()),
            at,
        ));
    }
    for (who, emoji) in &message.reactions {
        let update = Update::React(emoji.clone(), true);
        let from = (*who != own).then_some(*who);
        out.extend(update_envelope(message, from, &update, message.created_at));
    }
}

/// An update of `message` as the envelope that carries it: sent by this identity
/// (`OutgoingMessage`, `from` = `None`) or received from `from` (`IncomingMessage`); no message id
/// or nonces (history only).
fn update_envelope(
    message: &Message,
    from: Option<Identity>,
    update: &Update,
    at: u64,
) -> Option<Content> {
    let (message_type, body) = update_body(&message.conversation, message.key.id, update)?;
    Some(match from {
        None => Content::OutgoingMessage(OutgoingMessage {
            conversation: Some(message.conversation.to_proto()),
            message_id: 0,
            thread_message_id: None,
            created_at: at,
            r#type: i32::from(message_type.0),
            body,
            nonces: Vec::new(),
        }),
        Some(sender) => Content::IncomingMessage(IncomingMessage {
            sender_identity: sender.to_string(),
            message_id: 0,
            created_at: at,
            r#type: i32::from(message_type.0),
            body,
            nonce: Vec::new(),
        }),
    })
}

/// The envelopes of one stored message as it was sent or received, with its state.
fn history_message(
    message: &Message,
    message_type: E2eMessageType,
    body: Vec<u8>,
    out: &mut Vec<Content>,
) {
    let conversation = Some(message.conversation.to_proto());
    let at = message.state_at.unwrap_or(message.created_at);
    match message.direction {
        Direction::Outgoing => {
            out.push(Content::OutgoingMessage(OutgoingMessage {
                conversation: conversation.clone(),
                message_id: message.key.id,
                thread_message_id: None,
                created_at: message.created_at,
                r#type: i32::from(message_type.0),
                body,
                nonces: Vec::new(),
            }));
            if message.state == MessageState::Pending {
                return;
            }
            out.push(Content::OutgoingMessageUpdate(OutgoingMessageUpdate {
                updates: vec![outgoing_message_update::Update {
                    conversation,
                    message_id: message.key.id,
                    update: Some(outgoing_message_update::update::Update::Sent(
                        outgoing_message_update::Sent {},
                    )),
                }],
            }));
            let status = match message.state {
                MessageState::Delivered => DeliveryStatus::Received,
                MessageState::Read => DeliveryStatus::Read,
                _ => return,
            };
            let (ConversationId::Contact(contact), Ok(receipt)) = (
                message.conversation,
                DeliveryReceipt::new(status, vec![message.key.id]),
            ) else {
                return;
            };
            out.push(Content::IncomingMessage(IncomingMessage {
                sender_identity: contact.to_string(),
                message_id: 0,
                created_at: at,
                r#type: i32::from(E2eMessageType::DELIVERY_RECEIPT.0),
                body: receipt.encode(),
                nonce: Vec::new(),
            }));
        }
        Direction::Incoming => {
            out.push(Content::IncomingMessage(IncomingMessage {
                sender_identity: message.key.sender.to_string(),
                message_id: message.key.id,
                created_at: message.created_at,
                r#type: i32::from(message_type.0),
                body,
                nonce: Vec::new(),
            }));
            if message.state == MessageState::Read {
                out.push(Content::IncomingMessageUpdate(IncomingMessageUpdate {
                    updates: vec![incoming_message_update::Update {
                        conversation,
                        message_id: message.key.id,
                        update: Some(incoming_message_update::update::Update::Read(
                            incoming_message_update::Read { at },
                        )),
                    }],
                }));
            }
        }
    }
}

/// One part of an answer, read under its lock.
pub(super) struct PartOut {
    pub(super) contents: Vec<Content>,
    /// Where the next part starts.
    pub(super) next: NdsCursor,
    /// Messages to carry again that did not fit this part.
    pub(super) refresh: Vec<u64>,
    /// The messages this part carries (sequence numbers). Their state may still change before
    /// the part is committed (a read, a receipt, `sent`: none of them waits for the lock); the
    /// new device may then have got that update before the message and ignored it, so the
    /// next part carries every message whose state changed again.
    pub(super) carried: Vec<u64>,
}

/// The envelopes of one part being filled, and their size.
#[derive(Default)]
struct Part {
    contents: Vec<Content>,
    bytes: usize,
}

impl Part {
    /// Whether `item` still fits; an empty part takes any item, so every part moves on.
    fn fits(&self, item: &[Content]) -> bool {
        if self.contents.is_empty() {
            return true;
        }
        let bytes: usize = item.iter().map(Content::encoded_len).sum();
        self.contents.len() + item.len() <= NEW_DEVICE_SYNC_PART_ENVELOPES
            && self.bytes + bytes <= NEW_DEVICE_SYNC_PART_BYTES
    }

    fn add(&mut self, item: Vec<Content>) {
        self.bytes += item.iter().map(Content::encoded_len).sum::<usize>();
        self.contents.extend(item);
    }
}

/// The first entry of `map` after the key `after` (the first of all for `None`): one cursor
/// step of an answer.
fn next_after<K: Ord + Copy, V>(map: &BTreeMap<K, V>, after: Option<K>) -> Option<(K, &V)> {
    match after {
        Some(a) => map.range((Excluded(a), Unbounded)).next(),
        None => map.iter().next(),
    }
    .map(|(k, v)| (*k, v))
}
