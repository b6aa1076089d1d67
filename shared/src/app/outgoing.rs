//! Outgoing messages (spec §9.6 "Outgoing", §8.2), from any device: pre-generate one nonce per
//! receiver → reflect `OutgoingMessage` → on its `ReflectAck` send the CSP message to every
//! receiver → once every chat server ack is in, reflect `OutgoingMessageUpdate.sent` → Sent.
//!
//! Each send is a job. Jobs of stored messages are rebuilt from the store at open (a pending
//! message keeps its receivers and nonces), so a crash at any step resumes at that step; jobs of
//! receipts and typing indicators live in memory only.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRngCore;

use super::core::{App, Pending};
use super::event::{AppError, AppEvent};
use super::model::{ConversationId, Direction, Identity, Message, MessageKey, MessageState};
use super::state::State;
use crate::crypto::{random_nonce, Nonce};
use crate::csp::{
    seal_message_with_keys, CspPayload, DeliveryStatus, E2eMessageType, GroupMemberContainer,
    MessageAck, MessageFlags, MessageToSeal, SealError,
};
use crate::proto::d2d::{
    envelope::Content, outgoing_message_update, OutgoingMessage, OutgoingMessageUpdate,
};

/// Longest text accepted for one message, in UTF-8 bytes: what fits a CSP message with room
/// for the group container, metadata and the largest padding (spec §9.4 size table).
pub const MAX_TEXT_LEN: usize = 7_000;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// `OutgoingMessage` must be reflected.
    Unreflected,
    /// Waiting for its `ReflectAck`.
    Reflecting,
    /// Reflected; the CSP messages must go out.
    Unsent,
    /// Sent; waiting for the chat server's acks.
    AwaitingAcks,
    /// Every ack is in; `OutgoingMessageUpdate.sent` must be reflected.
    UnreflectedSent,
    /// Waiting for the update's `ReflectAck`.
    ReflectingSent,
}

/// One outgoing send.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) conversation: ConversationId,
    pub(super) message_id: u64,
    pub(super) created_at: u64,
    pub(super) message_type: E2eMessageType,
    /// The e2e body without padding.
    pub(super) body: Vec<u8>,
    /// Every receiver with the nonce reflected for it.
    pub(super) receivers: Vec<(Identity, Nonce)>,
    pub(super) flags: MessageFlags,
    /// A [`Message`] with key (own identity, `message_id`) tracks this job.
    pub(super) stored: bool,
    /// Typing indicators: reflected ephemeral, never acked.
    pub(super) ephemeral: bool,
    pub(super) stage: Stage,
    /// Receivers whose chat server ack is outstanding.
    pub(super) unacked: BTreeSet<Identity>,
    /// See [`Unstored::receipt_for`].
    pub(super) receipt_for: Option<(DeliveryStatus, Vec<MessageKey>)>,
}

/// A send that is not a stored message.
#[derive(Debug, Clone)]
pub(super) struct Unstored {
    pub(super) conversation: ConversationId,
    pub(super) receivers: Vec<Identity>,
    pub(super) message_type: E2eMessageType,
    pub(super) body: Vec<u8>,
    pub(super) flags: MessageFlags,
    /// Reflected ephemeral and dropped on disconnect (typing indicators).
    pub(super) ephemeral: bool,
    pub(super) created_at: u64,
    /// A delivery receipt: the messages whose `receipt_due` it settles once acked.
    pub(super) receipt_for: Option<(DeliveryStatus, Vec<MessageKey>)>,
}

/// The jobs, in the order they were started, with two indexes so that one input costs the same
/// with two or two thousand jobs in flight (a burst of incoming messages leaves one delivery
/// receipt job per message waiting for its ack; scanning them all on every input made such a
/// burst quadratic, BENCHMARKS.md "Browser device").
#[derive(Debug, Default)]
pub(super) struct Jobs {
    next: u64,
    jobs: BTreeMap<u64, Job>,
    /// Jobs that may have a step to take, ascending: every job whose stage became one
    /// `drive_jobs` acts on. A superset; `drive_jobs` drops the ids whose job waits for an ack
    /// or is gone. Sorted vectors rather than B-tree sets: a new B-tree key type costs the
    /// browser package ≈ 9 KB gzipped of monomorphised code (docs/client.md "Size").
    ready: Vec<u64>,
    /// `(message id, job id)` of every job, ascending, to find the job a chat server ack is
    /// for.
    by_message: Vec<(u64, u64)>,
}

impl Jobs {
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn add(&mut self, job: Job) -> u64 {
        self.next = self.next.saturating_add(1);
        insert_sorted(&mut self.by_message, (job.message_id, self.next));
        self.jobs.insert(self.next, job);
        self.wake(self.next);
        self.next
    }

    /// The job's stage became one `drive_jobs` acts on.
    fn wake(&mut self, id: u64) {
        insert_sorted(&mut self.ready, id);
    }

    fn remove(&mut self, id: u64) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        if let Ok(at) = self.ready.binary_search(&id) {
            self.ready.remove(at);
        }
        if let Ok(at) = self.by_message.binary_search(&(job.message_id, id)) {
            self.by_message.remove(at);
        }
        Some(job)
    }

    /// Rebuilds the jobs of stored outgoing messages that are not yet sent. Only the device
    /// that wrote a message keeps its receivers and nonces; a sibling's copy waits for `sent`.
    pub(super) fn resume_from(&mut self, state: &State) {
        let own = state.own().identity;
        for message in state.messages().values() {
            if message.direction != Direction::Outgoing
                || message.state != MessageState::Pending
                || message.key.sender != own
                || message.pending.is_empty()
            {
                continue;
            }
            let Some((message_type, body)) = text_body(&message.conversation, &message.text) else {
                continue;
            };
            let stage = if message.reflected_at.is_some() {
                Stage::Unsent
            } else {
                Stage::Unreflected
            };
            self.add(Job {
                conversation: message.conversation,
                message_id: message.key.id,
                created_at: message.created_at,
                message_type,
                body,
                receivers: message.pending.clone(),
                flags: MessageFlags::SEND_PUSH,
                stored: true,
                ephemeral: false,
                stage,
                unacked: message.pending.iter().map(|(r, _)| *r).collect(),
                receipt_for: None,
            });
        }
    }

    /// The connection ended: every step in flight is repeated on the next one. Jobs that need no
    /// durability (receipts not yet reflected, typing) are kept or dropped accordingly.
    pub(super) fn on_disconnect(&mut self) {
        self.jobs.retain(|_, job| !job.ephemeral);
        self.ready = self.jobs.keys().copied().collect();
        let jobs = &self.jobs;
        self.by_message.retain(|(_, id)| jobs.contains_key(id));
        for job in self.jobs.values_mut() {
            job.stage = match job.stage {
                Stage::Reflecting => Stage::Unreflected,
                Stage::AwaitingAcks => Stage::Unsent,
                Stage::ReflectingSent => Stage::UnreflectedSent,
                other => other,
            };
        }
    }
}

/// Inserts into an ascending vector unless present.
fn insert_sorted<T: Ord>(sorted: &mut Vec<T>, value: T) {
    if let Err(at) = sorted.binary_search(&value) {
        sorted.insert(at, value);
    }
}

/// The e2e type and body of a text in a conversation (spec §9.5: group texts carry the
/// member container); `None` for a distribution list, which sends 1:1 messages instead.
pub(super) fn text_body(
    conversation: &ConversationId,
    text: &str,
) -> Option<(E2eMessageType, Vec<u8>)> {
    match conversation {
        ConversationId::Contact(_) => Some((E2eMessageType::TEXT, text.as_bytes().to_vec())),
        ConversationId::Group(group) => Some((
            E2eMessageType::GROUP_TEXT,
            GroupMemberContainer {
                creator: *group.creator.as_bytes(),
                group_id: group.id,
                inner: text.as_bytes().to_vec(),
            }
            .encode(),
        )),
        ConversationId::DistributionList(_) => None,
    }
}

/// A text one message may carry: not empty, at most [`MAX_TEXT_LEN`] bytes.
pub(super) fn check_text(text: &str) -> Result<(), AppError> {
    if text.is_empty() {
        return Err(AppError::EmptyText);
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(AppError::TextTooLong {
            len: text.len(),
            max: MAX_TEXT_LEN,
        });
    }
    Ok(())
}

impl App {
    /// Sends a text to a contact or a group. The message is stored (and shown) at once and goes
    /// out when the device is online; returns its key.
    pub fn send_text(
        &mut self,
        conversation: ConversationId,
        text: &str,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<MessageKey, AppError> {
        check_text(text)?;
        let receivers = self.receivers_of(&conversation)?;
        let (message_type, body) = text_body(&conversation, text)
            .ok_or(AppError::UnsupportedConversation(conversation))?;
        let own = self.state.own().identity;
        let message_id = self.fresh_message_id(rng);
        let receivers: Vec<(Identity, Nonce)> = receivers
            .into_iter()
            .map(|r| (r, random_nonce(rng)))
            .collect();
        for (_, nonce) in &receivers {
            self.state.use_nonce(super::nonce::NonceScope::Csp, nonce);
        }
        let key = MessageKey {
            sender: own,
            id: message_id,
        };
        self.state.add_message(Message {
            seq: 0,
            conversation,
            key,
            direction: Direction::Outgoing,
            text: text.to_owned(),
            created_at: now_ms,
            state: MessageState::Pending,
            reflected_at: None,
            state_at: None,
            pending: receivers.clone(),
            read_unsynced: false,
            receipt_due: None,
            edited_at: None,
            deleted_at: None,
            hidden: false,
            reactions: Vec::new(),
        });
        self.events
            .push_back(AppEvent::MessageAdded { conversation, key });
        self.jobs.add(Job {
            conversation,
            message_id,
            created_at: now_ms,
            message_type,
            body,
            unacked: receivers.iter().map(|(r, _)| *r).collect(),
            receivers,
            flags: MessageFlags::SEND_PUSH,
            stored: true,
            ephemeral: false,
            stage: Stage::Unreflected,
            receipt_for: None,
        });
        self.pump(now_ms, rng);
        Ok(key)
    }

    /// Starts an unstored send (receipt, typing indicator, group control).
    pub(super) fn start_unstored(&mut self, send: Unstored, rng: &mut impl CryptoRngCore) {
        let message_id = self.fresh_message_id(rng);
        let receivers: Vec<(Identity, Nonce)> = send
            .receivers
            .into_iter()
            .map(|r| (r, random_nonce(rng)))
            .collect();
        if !send.ephemeral {
            for (_, nonce) in &receivers {
                self.state.use_nonce(super::nonce::NonceScope::Csp, nonce);
            }
        }
        self.jobs.add(Job {
            conversation: send.conversation,
            message_id,
            created_at: send.created_at,
            message_type: send.message_type,
            body: send.body,
            unacked: if send.flags.contains(MessageFlags::DONT_ACK) {
                BTreeSet::new()
            } else {
                receivers.iter().map(|(r, _)| *r).collect()
            },
            receivers,
            flags: send.flags,
            stored: false,
            ephemeral: send.ephemeral,
            stage: Stage::Unreflected,
            receipt_for: send.receipt_for,
        });
    }

    /// The receivers of a conversation: the contact, or the group's members except this user.
    pub(super) fn receivers_of(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<Identity>, AppError> {
        let own = self.state.own().identity;
        match conversation {
            ConversationId::Contact(identity) => {
                if *identity == own {
                    return Err(AppError::OwnIdentity);
                }
                if self.state.contact(identity).is_none() {
                    return Err(AppError::UnknownContact(*identity));
                }
                Ok(vec![*identity])
            }
            ConversationId::Group(id) => {
                let group = self.state.group(id).ok_or(AppError::UnknownGroup(*id))?;
                if group.user_state != super::model::UserState::Member {
                    return Err(AppError::NotAMember(*id));
                }
                let mut receivers: BTreeSet<Identity> = group.members.clone();
                receivers.insert(id.creator);
                receivers.remove(&own);
                Ok(receivers.into_iter().collect())
            }
            ConversationId::DistributionList(_) => {
                Err(AppError::UnsupportedConversation(*conversation))
            }
        }
    }

    /// A random message id not used by this identity before.
    pub(super) fn fresh_message_id(&self, rng: &mut impl CryptoRngCore) -> u64 {
        let own = self.state.own().identity;
        loop {
            let id = rng.next_u64();
            if self
                .state
                .message(&MessageKey { sender: own, id })
                .is_none()
            {
                return id;
            }
        }
    }

    /// Advances every job the connection allows.
    ///
    /// Runs after every input, while a burst may keep thousands of jobs in flight (a delivery
    /// receipt per incoming message): only the `ready` jobs are looked at, so a step costs the
    /// same however many jobs wait for acks (`shared/benches/incoming.rs`).
    pub(super) fn drive_jobs(&mut self, _now_ms: u64, rng: &mut impl CryptoRngCore) {
        let csp_ready = self.conn.csp_ready;
        let Jobs { jobs, ready, .. } = &mut self.jobs;
        let mut ids = Vec::new();
        ready.retain(|id| match jobs.get(id).map(|job| job.stage) {
            Some(Stage::Unreflected | Stage::UnreflectedSent) => {
                ids.push(*id);
                true
            }
            Some(Stage::Unsent) => {
                if csp_ready {
                    ids.push(*id);
                }
                true
            }
            _ => false,
        });
        for id in ids {
            if self.session.is_none() {
                return;
            }
            let Some(stage) = self.jobs.jobs.get(&id).map(|j| j.stage) else {
                continue;
            };
            match stage {
                Stage::Unreflected => self.reflect_job(id, rng),
                Stage::Unsent if self.conn.csp_ready => self.send_job(id, rng),
                Stage::UnreflectedSent => self.reflect_sent(id, rng),
                _ => {}
            }
        }
    }

    fn reflect_job(&mut self, id: u64, rng: &mut impl CryptoRngCore) {
        let Some(job) = self.jobs.jobs.get(&id) else {
            return;
        };
        let content = Content::OutgoingMessage(OutgoingMessage {
            conversation: Some(job.conversation.to_proto()),
            message_id: job.message_id,
            thread_message_id: None,
            created_at: job.created_at,
            r#type: i32::from(job.message_type.0),
            body: job.body.clone(),
            nonces: job.receivers.iter().map(|(_, n)| n.to_vec()).collect(),
        });
        let ephemeral = job.ephemeral;
        let pending = (!ephemeral).then_some(Pending::Outgoing(id));
        if self.reflect(content, ephemeral, pending, rng) {
            if let Some(job) = self.jobs.jobs.get_mut(&id) {
                job.stage = if ephemeral {
                    Stage::Unsent
                } else {
                    Stage::Reflecting
                };
                if ephemeral {
                    self.jobs.wake(id);
                }
            }
            if ephemeral && self.conn.csp_ready {
                self.send_job(id, rng);
            }
        }
    }

    /// `OutgoingMessage` is stored by the mediator: record it, then send.
    pub(super) fn on_outgoing_reflected(
        &mut self,
        id: u64,
        timestamp: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        let Some(job) = self.jobs.jobs.get_mut(&id) else {
            return;
        };
        job.stage = Stage::Unsent;
        self.jobs.wake(id);
        let Some(job) = self.jobs.jobs.get(&id) else {
            return;
        };
        if job.stored {
            let key = MessageKey {
                sender: self.state.own().identity,
                id: job.message_id,
            };
            self.state.update_message(&key, |m| {
                m.reflected_at.get_or_insert(timestamp);
                true
            });
        }
        if self.conn.csp_ready {
            self.send_job(id, rng);
        }
    }

    fn send_job(&mut self, id: u64, rng: &mut impl CryptoRngCore) {
        let Some(job) = self.jobs.jobs.get(&id) else {
            return;
        };
        // Seal first, send after: the job, the own identity and the key cache are borrowed from
        // separate fields, so nothing (the body, the client key) is copied per message.
        let own = self.state.own();
        let nickname = self.state.profile().nickname.as_str();
        let mut failed = Vec::new();
        let mut sealed_all = Vec::with_capacity(job.receivers.len());
        for (receiver, nonce) in &job.receivers {
            if !job.unacked.contains(receiver) && !job.flags.contains(MessageFlags::DONT_ACK) {
                continue;
            }
            let Some(contact) = self.state.contact(receiver) else {
                if matches!(job.conversation, ConversationId::Contact(_)) {
                    // A 1:1 message to someone this device does not know yet (a receipt for a
                    // message from a sender whose contact is still on its way here through
                    // sync) waits for the contact; dropping it would settle the receipt that
                    // no one sent. Group members without a key are skipped, as below.
                    return;
                }
                failed.push(*receiver);
                continue;
            };
            let sealed = self
                .peer_keys
                .get(&own.client_key, &contact.public_key)
                .map_err(SealError::ReceiverKey)
                .and_then(|keys| {
                    seal_message_with_keys(
                        keys,
                        &MessageToSeal {
                            sender: *own.identity.as_bytes(),
                            receiver: *receiver.as_bytes(),
                            receiver_public_key: contact.public_key,
                            message_id: job.message_id,
                            created_at_ms: job.created_at,
                            flags: job.flags,
                            nickname: (!nickname.is_empty()).then_some(nickname),
                            message_type: job.message_type,
                            body: &job.body,
                        },
                        nonce,
                        rng,
                    )
                });
            match sealed {
                Ok(message) => sealed_all.push(message),
                Err(_) => failed.push(*receiver),
            }
        }
        for message in sealed_all {
            if !self.csp_send(&CspPayload::OutgoingMessage(message)) {
                return;
            }
        }
        let Some(job) = self.jobs.jobs.get_mut(&id) else {
            return;
        };
        for receiver in failed {
            job.unacked.remove(&receiver);
        }
        job.stage = Stage::AwaitingAcks;
        if job.unacked.is_empty() {
            self.acks_complete(id, rng);
        }
    }

    /// 0x81 from the chat server: one receiver has the message.
    pub(super) fn on_outgoing_message_ack(
        &mut self,
        ack: &MessageAck,
        rng: &mut impl CryptoRngCore,
    ) {
        let Ok(receiver) = Identity::new(ack.identity) else {
            return;
        };
        let jobs = &self.jobs.jobs;
        let by_message = &self.jobs.by_message;
        let first = by_message.partition_point(|(message_id, _)| *message_id < ack.message_id);
        let found = by_message
            .get(first..)
            .unwrap_or_default()
            .iter()
            .take_while(|(message_id, _)| *message_id == ack.message_id)
            .map(|(_, id)| *id)
            .find(|id| {
                jobs.get(id).is_some_and(|job| {
                    job.stage == Stage::AwaitingAcks && job.unacked.contains(&receiver)
                })
            });
        let Some((id, job)) = found.and_then(|id| Some((id, self.jobs.jobs.get_mut(&id)?))) else {
            return;
        };
        job.unacked.remove(&receiver);
        if job.unacked.is_empty() {
            self.acks_complete(id, rng);
        }
    }

    fn acks_complete(&mut self, id: u64, rng: &mut impl CryptoRngCore) {
        let Some(job) = self.jobs.jobs.get_mut(&id) else {
            return;
        };
        if job.stored {
            job.stage = Stage::UnreflectedSent;
            self.jobs.wake(id);
            self.reflect_sent(id, rng);
        } else if let Some(job) = self.jobs.remove(id) {
            if let Some((status, keys)) = job.receipt_for {
                for key in keys {
                    self.state.update_message(&key, |m| {
                        let settled = m.receipt_due == Some(status);
                        if settled {
                            m.receipt_due = None;
                        }
                        settled
                    });
                }
            }
        }
    }

    fn reflect_sent(&mut self, id: u64, rng: &mut impl CryptoRngCore) {
        let Some(job) = self.jobs.jobs.get(&id) else {
            return;
        };
        let content = Content::OutgoingMessageUpdate(OutgoingMessageUpdate {
            updates: vec![outgoing_message_update::Update {
                conversation: Some(job.conversation.to_proto()),
                message_id: job.message_id,
                update: Some(outgoing_message_update::update::Update::Sent(
                    outgoing_message_update::Sent {},
                )),
            }],
        });
        if self.reflect(content, false, Some(Pending::OutgoingSent(id)), rng) {
            if let Some(job) = self.jobs.jobs.get_mut(&id) {
                job.stage = Stage::ReflectingSent;
            }
        }
    }

    /// The `sent` update is stored by the mediator: the message is Sent everywhere.
    pub(super) fn on_sent_reflected(&mut self, id: u64, timestamp: u64) {
        let Some(job) = self.jobs.remove(id) else {
            return;
        };
        let key = MessageKey {
            sender: self.state.own().identity,
            id: job.message_id,
        };
        self.mark_sent(&key, timestamp);
    }

    /// Moves an own message to Sent (if that is progress) and forgets its nonces.
    pub(super) fn mark_sent(&mut self, key: &MessageKey, at: u64) {
        let mut new_state = None;
        self.state.update_message(key, |m| {
            let mut changed = !m.pending.is_empty();
            m.pending.clear();
            if m.state.advances_to(MessageState::Sent) {
                m.state = MessageState::Sent;
                m.state_at = Some(at);
                new_state = Some(m.state);
                changed = true;
            }
            changed
        });
        if let Some(state) = new_state {
            self.events
                .push_back(AppEvent::MessageState { key: *key, state });
        }
    }

    /// Reflects an envelope; non-ephemeral ones are remembered with `pending` until acked.
    /// `false` when the session refused (it then reports why).
    ///
    /// While this device awaits or holds the group lock, the mediator stages every
    /// non-ephemeral reflect of it and acks it at once, but throws the staged ones away if the
    /// transaction dies. An ack the app relies on (the CSP message-ack, "sent") must never be for
    /// something the mediator may still discard (`docs/app.md` "Transactions and other
    /// reflects"), so every reflect that is not the transaction's own waits in
    /// [`super::core::Conn::deferred`] until the lock is released, and goes out then, in order.
    pub(super) fn reflect(
        &mut self,
        content: Content,
        ephemeral: bool,
        pending: Option<Pending>,
        rng: &mut impl CryptoRngCore,
    ) -> bool {
        if self.session.is_none() {
            return false;
        }
        let transactional = matches!(pending, Some(Pending::Sync));
        if !ephemeral && !transactional && self.sync.locks_reflects() {
            self.conn.deferred.push_back((content, pending));
            return true;
        }
        self.reflect_now(content, ephemeral, pending, rng)
    }

    /// Reflects the envelopes deferred while the lock was awaited or held, oldest first.
    pub(super) fn release_deferred(&mut self, rng: &mut impl CryptoRngCore) {
        while !self.sync.locks_reflects() {
            let Some((content, pending)) = self.conn.deferred.pop_front() else {
                return;
            };
            if !self.reflect_now(content.clone(), false, pending.clone(), rng) {
                // The session refused and is closing; teardown requeues what is left, this one
                // included.
                self.conn.deferred.push_front((content, pending));
                return;
            }
        }
    }

    fn reflect_now(
        &mut self,
        content: Content,
        ephemeral: bool,
        pending: Option<Pending>,
        rng: &mut impl CryptoRngCore,
    ) -> bool {
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        let envelope = crate::proto::d2d::Envelope {
            padding: Vec::new(),
            device_id: 0,
            protocol_version: crate::d2d::PROTOCOL_VERSION,
            content: Some(content),
        };
        let Ok(id) = session.reflect_owned(envelope, ephemeral, rng) else {
            return false;
        };
        if let (false, Some(pending)) = (ephemeral, pending) {
            self.conn.reflects.insert(id, pending);
        }
        true
    }
}
