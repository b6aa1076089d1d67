//! Read receipts and typing indicators (spec §8.2, §9.5). Reading is shown here at once, then
//! reflected as `IncomingMessageUpdate.read` for the siblings, then (policy permitting) told to
//! the contact with a read receipt, itself an outgoing message reflected first. Typing
//! indicators are ephemeral: reflected ephemeral, sent without queueing or ack, never stored.

use std::collections::VecDeque;

use rand_core::CryptoRngCore;

use super::core::{App, Pending};
use super::event::{AppError, AppEvent};
use super::model::{ConversationId, Direction, Identity, MessageKey, MessageState};
use super::outgoing::Unstored;
use super::state::State;
use crate::csp::{DeliveryReceipt, DeliveryStatus, E2eMessageType, MessageFlags};
use crate::proto::d2d::{envelope::Content, incoming_message_update, IncomingMessageUpdate};
use crate::proto::sync::{ReadReceiptPolicy, TypingIndicatorPolicy};

/// Messages read on this device, to reflect (and receipt) once online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadUpdate {
    pub(super) conversation: ConversationId,
    pub(super) message_ids: Vec<u64>,
    pub(super) at: u64,
}

/// Read updates waiting for the connection.
#[derive(Debug, Default)]
pub(super) struct Reads {
    pub(super) queue: VecDeque<ReadUpdate>,
}

impl Reads {
    /// Rebuilds the updates of messages read here whose reflection was never acked, one per
    /// conversation and read time.
    pub(super) fn resume_from(&mut self, state: &State) {
        // Grouped in a vector, in the order the messages are stored: there are a handful of
        // groups, and a map keyed by (conversation, time) would cost the browser package its
        // own monomorphised B-tree (docs/client.md "Size").
        for m in state.messages().values().filter(|m| m.read_unsynced) {
            let at = m.state_at.unwrap_or(0);
            match self
                .queue
                .iter_mut()
                .find(|u| u.conversation == m.conversation && u.at == at)
            {
                Some(update) => update.message_ids.push(m.key.id),
                None => self.queue.push_back(ReadUpdate {
                    conversation: m.conversation,
                    message_ids: vec![m.key.id],
                    at,
                }),
            }
        }
    }
}

impl App {
    /// Marks every unread incoming message of a conversation read; returns how many.
    pub fn mark_read(
        &mut self,
        conversation: ConversationId,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> usize {
        let unread: Vec<MessageKey> = self
            .state
            .conversation(&conversation)
            .filter(|m| m.direction == Direction::Incoming && m.state == MessageState::Received)
            .map(|m| m.key)
            .collect();
        if unread.is_empty() {
            return 0;
        }
        for key in &unread {
            self.state.update_message(key, |m| {
                m.state = MessageState::Read;
                m.state_at = Some(now_ms);
                m.read_unsynced = true;
                true
            });
            self.events.push_back(AppEvent::MessageState {
                key: *key,
                state: MessageState::Read,
            });
        }
        self.reads.queue.push_back(ReadUpdate {
            conversation,
            message_ids: unread.iter().map(|k| k.id).collect(),
            at: now_ms,
        });
        self.pump(now_ms, rng);
        unread.len()
    }

    /// Reflects queued read updates.
    ///
    /// A read of a message whose own reflection is not yet stored by the mediator waits: a
    /// sibling must never get the read before the message (it would have nothing to mark).
    pub(super) fn drive_reads(&mut self, rng: &mut impl CryptoRngCore) {
        let mut waiting = VecDeque::new();
        while let Some(update) = self.reads.queue.pop_front() {
            let (ready, later): (Vec<u64>, Vec<u64>) = update.message_ids.iter().partition(|id| {
                self.state
                    .conversation(&update.conversation)
                    .any(|m| m.key.id == **id && m.reflected_at.is_some())
            });
            if !later.is_empty() {
                waiting.push_back(ReadUpdate {
                    message_ids: later,
                    ..update.clone()
                });
            }
            if ready.is_empty() {
                continue;
            }
            let update = ReadUpdate {
                message_ids: ready,
                ..update
            };
            let content = Content::IncomingMessageUpdate(IncomingMessageUpdate {
                updates: update
                    .message_ids
                    .iter()
                    .map(|id| incoming_message_update::Update {
                        conversation: Some(update.conversation.to_proto()),
                        message_id: *id,
                        update: Some(incoming_message_update::update::Update::Read(
                            incoming_message_update::Read { at: update.at },
                        )),
                    })
                    .collect(),
            });
            if !self.reflect(content, false, Some(Pending::Read(update.clone())), rng) {
                waiting.push_back(update);
                break;
            }
        }
        waiting.extend(self.reads.queue.drain(..));
        self.reads.queue = waiting;
    }

    /// The siblings know; tell the contact unless read receipts are off for it.
    pub(super) fn on_read_reflected(
        &mut self,
        update: ReadUpdate,
        _timestamp: u64,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        for id in &update.message_ids {
            let key = self
                .state
                .conversation(&update.conversation)
                .find(|m| m.key.id == *id && m.direction == Direction::Incoming)
                .map(|m| m.key);
            if let Some(key) = key {
                self.state
                    .update_message(&key, |m| core::mem::replace(&mut m.read_unsynced, false));
            }
        }
        let ConversationId::Contact(identity) = update.conversation else {
            return;
        };
        if !self.sends_read_receipts(&identity) {
            return;
        }
        let keys = update
            .message_ids
            .iter()
            .map(|id| MessageKey {
                sender: identity,
                id: *id,
            })
            .collect();
        self.send_receipt(identity, DeliveryStatus::Read, keys, now_ms, rng);
    }

    /// Sends a delivery receipt for messages of `sender`, owed (and stored as owed, in the same
    /// batch as whatever made it due) until the chat server acks it.
    pub(super) fn send_receipt(
        &mut self,
        sender: Identity,
        status: DeliveryStatus,
        keys: Vec<MessageKey>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        for key in &keys {
            self.state.update_message(key, |m| {
                let owed = m.receipt_due != Some(status);
                m.receipt_due = Some(status);
                owed
            });
        }
        let Ok(receipt) = DeliveryReceipt::new(status, keys.iter().map(|k| k.id).collect()) else {
            return;
        };
        self.start_unstored(
            Unstored {
                conversation: ConversationId::Contact(sender),
                receivers: vec![sender],
                message_type: E2eMessageType::DELIVERY_RECEIPT,
                body: receipt.encode(),
                flags: MessageFlags::NO_DELIVERY_RECEIPTS,
                ephemeral: false,
                created_at: now_ms,
                receipt_for: Some((status, keys)),
            },
            rng,
        );
    }

    /// After a restart: send again every receipt still owed, one per sender and status.
    pub(super) fn resume_receipts(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        // Grouped in a vector (a handful of senders), not a B-tree map: see `Reads::resume_from`.
        let mut owed: Vec<(Identity, DeliveryStatus, Vec<MessageKey>)> = Vec::new();
        for m in self.state.messages().values() {
            if let (Some(status), ConversationId::Contact(sender)) = (m.receipt_due, m.conversation)
            {
                match owed
                    .iter_mut()
                    .find(|(who, s, _)| *who == sender && *s == status)
                {
                    Some((_, _, keys)) => keys.push(m.key),
                    None => owed.push((sender, status, vec![m.key])),
                }
            }
        }
        for (sender, status, keys) in owed {
            self.send_receipt(sender, status, keys, now_ms, rng);
        }
    }

    fn sends_read_receipts(&self, identity: &Identity) -> bool {
        match self
            .state
            .contact(identity)
            .and_then(|c| c.read_receipt_policy)
        {
            Some(policy) => policy == ReadReceiptPolicy::SendReadReceipt,
            None => self.state.settings().sends_read_receipts(),
        }
    }

    /// Tells a contact that the user is (or stopped) typing. Dropped silently when offline or
    /// when the policy says not to: typing indicators are best effort and never stored.
    pub fn send_typing(
        &mut self,
        identity: Identity,
        typing: bool,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        let contact = self
            .state
            .contact(&identity)
            .ok_or(AppError::UnknownContact(identity))?;
        let allowed = match contact.typing_indicator_policy {
            Some(policy) => policy == TypingIndicatorPolicy::SendTypingIndicator,
            None => self.state.settings().sends_typing_indicators(),
        };
        if !allowed || !self.conn.online || !self.conn.csp_ready {
            return Ok(());
        }
        self.start_unstored(
            Unstored {
                conversation: ConversationId::Contact(identity),
                receivers: vec![identity],
                message_type: E2eMessageType::TYPING_INDICATOR,
                body: vec![u8::from(typing)],
                flags: MessageFlags::DONT_QUEUE
                    | MessageFlags::DONT_ACK
                    | MessageFlags::NO_DELIVERY_RECEIPTS,
                ephemeral: true,
                created_at: now_ms,
                receipt_for: None,
            },
            rng,
        );
        self.pump(now_ms, rng);
        Ok(())
    }
}
