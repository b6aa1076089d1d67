//! New device sync (DESIGN §2.4, `docs/protocol.md` "NewDeviceSyncRequest"): a device created
//! empty reflects `NewDeviceSyncRequest` once it is online; the first sibling to see it opens a
//! NEW_DEVICE_SYNC transaction and reflects profile, settings, contacts, groups, distribution
//! lists and the most recent messages as ordinary envelopes, which every device applies
//! idempotently (the siblings that already have it all change nothing).

use rand_core::CryptoRngCore;

use super::core::{App, Pending};
use super::event::AppEvent;
use super::model::{ConversationId, Direction, Message, MessageState, Settings};
use super::outgoing::text_body;
use super::sync::{
    SyncOp, NEW_DEVICE_SYNC_MAX_HISTORY, NEW_DEVICE_SYNC_PART_BYTES, NEW_DEVICE_SYNC_PART_ENVELOPES,
};
use crate::csp::{DeliveryReceipt, DeliveryStatus, E2eMessageType};
use crate::proto::d2d::{
    contact_sync, distribution_list_sync, envelope::Content, group_sync, incoming_message_update,
    outgoing_message_update, settings_sync, user_profile_sync, ContactSync, DistributionListSync,
    GroupSync, IncomingMessage, IncomingMessageUpdate, NewDeviceSyncRequest, OutgoingMessage,
    OutgoingMessageUpdate, SettingsSync, UserProfileSync,
};
use crate::proto::sync;

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
        self.enqueue_sync(SyncOp::NewDeviceSync {
            device_id,
            max_history_messages,
        });
    }

    /// The answer to a new device as transactions of bounded size, in order: profile,
    /// settings, contacts, groups and lists first, then the history, oldest first. Every
    /// envelope is idempotent, so a part that a sibling already applied changes nothing there.
    pub(super) fn new_device_sync_parts(
        &self,
        device_id: u64,
        max_history_messages: u32,
    ) -> Vec<SyncOp> {
        let history = max_history_messages.min(NEW_DEVICE_SYNC_MAX_HISTORY);
        let (contents, messages) = self.new_device_sync_envelopes(history);
        let mut parts: Vec<Vec<Content>> = vec![Vec::new()];
        let mut bytes = 0;
        for content in contents {
            let len = content.encoded_len();
            if let Some(current) = parts.last_mut() {
                let full = current.len() >= NEW_DEVICE_SYNC_PART_ENVELOPES
                    || (!current.is_empty() && bytes + len > NEW_DEVICE_SYNC_PART_BYTES);
                if !full {
                    bytes += len;
                    current.push(content);
                    continue;
                }
            }
            bytes = len;
            parts.push(vec![content]);
        }
        let count = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, contents)| SyncOp::NewDeviceSyncPart {
                device_id,
                part: u32::try_from(i).unwrap_or(u32::MAX),
                contents,
                last_of: (i + 1 == count).then_some(messages),
            })
            .collect()
    }

    /// Everything a new device needs, as the envelopes a sibling would have reflected, and the
    /// number of history messages among them.
    pub(super) fn new_device_sync_envelopes(
        &self,
        max_history_messages: u32,
    ) -> (Vec<Content>, u32) {
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
        for contact in self.state.contacts().values() {
            out.push(Content::ContactSync(ContactSync {
                action: Some(contact_sync::Action::Create(contact_sync::Create {
                    contact: Some(contact.to_sync()),
                })),
            }));
        }
        for group in self.state.groups().values() {
            out.push(Content::GroupSync(GroupSync {
                action: Some(group_sync::Action::Create(group_sync::Create {
                    group: Some(group.to_sync()),
                })),
            }));
        }
        for list in self.state.distribution_lists().values() {
            out.push(Content::DistributionListSync(DistributionListSync {
                action: Some(distribution_list_sync::Action::Create(
                    distribution_list_sync::Create {
                        distribution_list: Some(list.to_sync()),
                    },
                )),
            }));
        }
        let history = usize::try_from(max_history_messages).unwrap_or(usize::MAX);
        let mut recent: Vec<&Message> =
            self.state.messages().values().rev().take(history).collect();
        recent.reverse();
        let messages = u32::try_from(recent.len()).unwrap_or(u32::MAX);
        for message in recent {
            history_envelopes(message, &mut out);
        }
        (out, messages)
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
fn history_envelopes(message: &Message, out: &mut Vec<Content>) {
    let Some((message_type, body)) = text_body(&message.conversation, &message.text) else {
        return;
    };
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
