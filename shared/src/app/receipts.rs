//! Read receipts and typing indicators (spec §8.2, §9.5). Reading is shown here at once, then
//! reflected as `IncomingMessageUpdate.read` for the siblings, then (policy permitting) told to
//! the contact with a read receipt, itself an outgoing message reflected first. Typing
//! indicators are ephemeral: reflected ephemeral, sent without queueing or ack, never stored.

use std::collections::VecDeque;

use rand_core::CryptoRngCore;

use super::core::{App, Pending};
use super::event::AppError;
use super::model::{ConversationId, Direction, Identity, MessageKey, MessageState};
use super::outgoing::Unstored;
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
            self.apply_read(&conversation, key.id, now_ms);
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
    pub(super) fn drive_reads(&mut self, rng: &mut impl CryptoRngCore) {
        while let Some(update) = self.reads.queue.front().cloned() {
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
            if self
                .reflect(content, false, Some(Pending::Read(update)), rng)
                .is_none()
            {
                return;
            }
            self.reads.queue.pop_front();
        }
    }

    /// The siblings know; tell the contact unless read receipts are off for it.
    pub(super) fn on_read_reflected(
        &mut self,
        update: ReadUpdate,
        _timestamp: u64,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let ConversationId::Contact(identity) = update.conversation else {
            return;
        };
        if !self.sends_read_receipts(&identity) {
            return;
        }
        if let Ok(receipt) = DeliveryReceipt::new(DeliveryStatus::Read, update.message_ids) {
            self.start_unstored(
                Unstored {
                    conversation: update.conversation,
                    receivers: vec![identity],
                    message_type: E2eMessageType::DELIVERY_RECEIPT,
                    body: receipt.encode(),
                    flags: MessageFlags::NO_DELIVERY_RECEIPTS,
                    ephemeral: false,
                    created_at: now_ms,
                },
                rng,
            );
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
            },
            rng,
        );
        self.pump(now_ms, rng);
        Ok(())
    }
}
