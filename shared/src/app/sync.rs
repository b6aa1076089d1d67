//! Changes to shared state go through the group lock (spec §6): begin a transaction for the
//! scope, check the precondition against the current state, reflect the sync envelope(s),
//! commit, and only then apply the change locally, with the same code a sibling uses. A
//! rejected attempt waits for `TransactionEnded` (by then the holder's envelopes have been
//! applied here) and tries again, re-checking the precondition: two devices changing the same
//! contact end with the same contact, the later change winning.

use std::collections::{BTreeSet, VecDeque};

use rand_core::CryptoRngCore;

use super::core::{App, Pending};
use super::event::AppError;
use super::groups::Announce;
use super::model::{Contact, DistributionList, Group, GroupId, Identity, MessageState};
use crate::d2d::Scope;
use crate::d2m::CloseCode;
use crate::proto::d2d::{
    contact_sync, distribution_list_sync, envelope::Content, group_sync, settings_sync,
    user_profile_sync, ContactSync, DistributionListSync, GroupSync, SettingsSync, UserProfileSync,
};
use crate::proto::sync;

/// One change to shared state.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SyncOp {
    /// Precondition: the contact does not exist yet. Afterwards parked messages resume.
    CreateContact(Box<Contact>),
    /// Precondition: the contact exists.
    UpdateContact(Identity, Box<sync::Contact>),
    /// Always applies.
    Settings(Box<sync::Settings>),
    /// Always applies.
    Nickname(String),
    /// Precondition: the list does not exist.
    CreateList(Box<DistributionList>),
    /// Precondition: the list exists.
    UpdateList(u64, Box<sync::DistributionList>),
    /// Precondition: the list exists.
    DeleteList(u64),
    /// Precondition: the group does not exist. Afterwards the members are told.
    CreateGroup(Box<Group>, Vec<Announce>),
    /// Precondition: the group exists. Afterwards the members are told.
    UpdateGroup(GroupId, Box<sync::Group>, Vec<Announce>),
    /// Envelopes of an own transaction that may have been committed before a crash: reflected
    /// again (idempotent for every device) and applied. No precondition.
    Replay(Vec<Content>),
    /// Answer a new device (DESIGN §2.4): the answer's first transaction; precondition: nobody
    /// answered yet. Which history messages the answer replays is fixed when it holds the lock
    /// (the holder has then applied every commit and reflection queued before its lock,
    /// `docs/mediator.md`); what is left goes into [`SyncOp::NewDeviceSyncPart`]s.
    NewDeviceSync {
        /// The new device.
        device_id: u64,
        /// Its history cap.
        max_history_messages: u32,
    },
    /// A later transaction of an answer to a new device, its envelopes read from the state when
    /// it holds the lock (a snapshot taken earlier could undo a sibling's change committed in
    /// between: a `create` of an existing contact overwrites it). Precondition: this device
    /// committed the answer's first transaction.
    NewDeviceSyncPart {
        /// The new device.
        device_id: u64,
        /// 1-based (the first transaction is the `NewDeviceSync` op itself).
        part: u32,
        /// Where this part starts.
        cursor: NdsCursor,
        /// Which messages the answer replays.
        history: NdsHistory,
        /// Messages an earlier part carried to carry again first (their state changed while
        /// that part was in flight), by sequence number.
        refresh: Vec<u64>,
    },
}

/// Where a part of an answer to a new device starts: the stage and the key after which it goes
/// on (keys, not positions, so that changes between parts shift nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NdsCursor {
    /// Profile and settings come first.
    Start,
    /// Contacts after this identity.
    Contacts(Option<Identity>),
    /// Groups after this one.
    Groups(Option<GroupId>),
    /// Distribution lists after this id.
    Lists(Option<u64>),
    /// History messages from this sequence number on.
    Messages(u64),
    /// Nothing left.
    Done,
}

/// What follows the part of an answer in flight.
#[derive(Debug)]
pub(super) struct NextPart {
    cursor: NdsCursor,
    history: NdsHistory,
    /// Messages still to carry again (did not fit the part).
    refresh: Vec<u64>,
    /// The messages the part carries, with the state it carries them in.
    carried: Vec<(u64, MessageState)>,
}

/// The history messages an answer replays: sequence numbers `first_seq..=last_seq` (fixed when
/// the answer starts; later messages reach the new device as ordinary reflections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NdsHistory {
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
    /// How many messages that is, for `NewDeviceSyncSent`.
    pub(super) count: u32,
}

impl SyncOp {
    /// A transaction of an answer to a new device (applied nowhere: every device has it).
    const fn is_answer(&self) -> bool {
        self.answers().is_some()
    }

    /// The new device this op answers.
    pub(super) const fn answers(&self) -> Option<u64> {
        match self {
            Self::NewDeviceSync { device_id, .. } | Self::NewDeviceSyncPart { device_id, .. } => {
                Some(*device_id)
            }
            _ => None,
        }
    }

    pub(super) fn scope(&self) -> Scope {
        match self {
            Self::CreateContact(_) | Self::UpdateContact(..) => Scope::ContactSync,
            Self::Settings(_) => Scope::SettingsSync,
            Self::Nickname(_) => Scope::UserProfileSync,
            Self::CreateList(_) | Self::UpdateList(..) | Self::DeleteList(_) => {
                Scope::DistributionListSync
            }
            Self::CreateGroup(..) | Self::UpdateGroup(..) => Scope::GroupSync,
            Self::NewDeviceSync { .. } | Self::NewDeviceSyncPart { .. } => Scope::NewDeviceSync,
            Self::Replay(contents) => match contents.first() {
                Some(Content::ContactSync(_)) => Scope::ContactSync,
                Some(Content::GroupSync(_)) => Scope::GroupSync,
                Some(Content::DistributionListSync(_)) => Scope::DistributionListSync,
                Some(Content::SettingsSync(_)) => Scope::SettingsSync,
                Some(Content::MdmParameterSync(_)) => Scope::MdmParameterSync,
                _ => Scope::UserProfileSync,
            },
        }
    }
}

/// Where this device stands with the lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Tx {
    #[default]
    Idle,
    Beginning,
    /// Another device holds the lock; wait for `TransactionEnded`.
    Rejected,
    /// Held; `outstanding` envelopes await their `ReflectAck`.
    Held {
        outstanding: usize,
    },
    Committing {
        executed: bool,
    },
}

/// The queue of changes and the lock state.
#[derive(Debug, Default)]
pub(super) struct SyncRunner {
    queue: VecDeque<SyncOp>,
    tx: Tx,
    /// The envelopes of the held transaction, applied locally at commit.
    staged: Vec<Content>,
    /// New devices some sibling already answered (seen as a NEW_DEVICE_SYNC transaction).
    answered: BTreeSet<u64>,
    /// The new device the current lock holder is taken to be answering.
    answering: Option<u64>,
    /// New devices whose answer this device began (its first part committed).
    answering_own: BTreeSet<u64>,
    /// The mediator close that ended the front op's transaction last, and how many times in a
    /// row it did.
    failures: Option<(CloseCode, u32)>,
    /// Where the next part of the answer being reflected starts (set when its part begins).
    next_part: Option<NextPart>,
}

/// An op whose transaction the mediator closed this many times in a row with the same code is
/// dropped (`AppEvent::SyncFailed`): it would fail again, and every op behind it would wait.
pub const MAX_SAME_CLOSE: u32 = 3;

/// Envelopes per NEW_DEVICE_SYNC transaction. A mediator stages at most its queue limit per
/// transaction (10 000 by default, `docs/mediator.md`), and every sibling's queue takes the
/// whole commit at once: small parts keep both far from their limits.
pub const NEW_DEVICE_SYNC_PART_ENVELOPES: usize = 200;

/// Envelope bytes (before sealing) per NEW_DEVICE_SYNC transaction, for the same reason.
pub const NEW_DEVICE_SYNC_PART_BYTES: usize = 256 * 1024;

/// History messages a device answers with at most, whatever the new device asked for (its
/// `max_history_messages` is any u32 on the wire).
pub const NEW_DEVICE_SYNC_MAX_HISTORY: u32 = 1_000;

impl SyncRunner {
    /// Another device holds the lock. If it is answering a new device while this device wants
    /// to answer one, it is taken to answer the same one (the scope names no device).
    pub(super) fn on_rejected(&mut self, scope: Option<Scope>) {
        if self.tx == Tx::Beginning {
            self.tx = Tx::Rejected;
            self.answering = match (scope, self.queue.front()) {
                (Some(Scope::NewDeviceSync), Some(SyncOp::NewDeviceSync { device_id, .. })) => {
                    Some(*device_id)
                }
                _ => None,
            };
        }
    }

    /// Another device's transaction ended: try again.
    pub(super) fn on_ended(&mut self, scope: Option<Scope>) {
        if self.tx == Tx::Rejected {
            if scope == Some(Scope::NewDeviceSync) {
                if let Some(device_id) = self.answering.take() {
                    self.answered.insert(device_id);
                }
            }
            self.tx = Tx::Idle;
        }
    }

    /// The mediator discards a transaction whose holder disconnects; the change is retried,
    /// unless the mediator closed its transaction [`MAX_SAME_CLOSE`] times in a row with the
    /// same code: then it is dropped and returned (with every later part of the same answer).
    pub(super) fn on_disconnect(&mut self, code: CloseCode) -> Option<SyncOp> {
        let active = self.locks_reflects();
        self.tx = Tx::Idle;
        self.staged.clear();
        // Only a close the mediator chose for the op says something about it; a network drop
        // does not, and neither does 4011: a part is bounded far below what a TTL allows, so a
        // TTL that runs out is the holder being slow (its storage, its network), which the ops
        // behind would meet just the same. Counting it dropped answers a flaky device would
        // finish on its next try.
        if !active || code.as_u16() < 4000 || code == CloseCode::TransactionTtlExceeded {
            return None;
        }
        let count = match self.failures {
            Some((last, n)) if last == code => n.saturating_add(1),
            _ => 1,
        };
        if count < MAX_SAME_CLOSE {
            self.failures = Some((code, count));
            return None;
        }
        self.failures = None;
        let dropped = self.queue.pop_front()?;
        if let SyncOp::NewDeviceSync { device_id, .. }
        | SyncOp::NewDeviceSyncPart { device_id, .. } = &dropped
        {
            let device_id = *device_id;
            self.queue.retain(
                |op| !matches!(op, SyncOp::NewDeviceSyncPart { device_id: d, .. } if *d == device_id),
            );
            // Answered as far as anyone will: another request for it is not taken up again.
            self.answered.insert(device_id);
            self.answering_own.remove(&device_id);
        }
        Some(dropped)
    }

    /// Whether the mediator may stage this device's reflects now: from `BeginTransaction` until
    /// `CommitTransactionAck` (a commit on its way is still discarded if the TTL ends first).
    pub(super) const fn locks_reflects(&self) -> bool {
        matches!(
            self.tx,
            Tx::Beginning | Tx::Held { .. } | Tx::Committing { .. }
        )
    }

    /// Changes not yet committed.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}

impl App {
    /// After a restart: a journaled transaction goes first, then the answers owed to new
    /// devices, each from its start (every envelope of an answer is idempotent).
    pub(super) fn resume_journal(&mut self) {
        if let Some(contents) = self.state.journal() {
            self.sync
                .queue
                .push_front(SyncOp::Replay(contents.to_vec()));
        }
        let owed = self.state.answers_owed().to_vec();
        for (device_id, max_history_messages) in owed {
            self.enqueue_sync(SyncOp::NewDeviceSync {
                device_id,
                max_history_messages,
            });
        }
    }

    pub(super) fn enqueue_sync(&mut self, op: SyncOp) {
        if !self.sync.queue.contains(&op) {
            self.sync.queue.push_back(op);
        }
    }

    fn precondition(&self, op: &SyncOp) -> bool {
        match op {
            SyncOp::CreateContact(c) => self.state.contact(&c.identity).is_none(),
            SyncOp::UpdateContact(identity, _) => self.state.contact(identity).is_some(),
            SyncOp::Settings(_) | SyncOp::Nickname(_) => true,
            SyncOp::CreateList(l) => !self.state.distribution_lists().contains_key(&l.id),
            SyncOp::UpdateList(id, _) | SyncOp::DeleteList(id) => {
                self.state.distribution_lists().contains_key(id)
            }
            SyncOp::CreateGroup(g, _) => self.state.group(&g.id).is_none(),
            SyncOp::UpdateGroup(id, ..) => self.state.group(id).is_some(),
            SyncOp::NewDeviceSync { device_id, .. } => !self.sync.answered.contains(device_id),
            SyncOp::NewDeviceSyncPart { device_id, .. } => {
                self.sync.answering_own.contains(device_id)
            }
            SyncOp::Replay(_) => true,
        }
    }

    /// The envelopes that carry a change.
    fn sync_envelopes(&self, op: &SyncOp) -> Vec<Content> {
        match op {
            SyncOp::CreateContact(c) => vec![Content::ContactSync(ContactSync {
                action: Some(contact_sync::Action::Create(contact_sync::Create {
                    contact: Some(c.to_sync()),
                })),
            })],
            SyncOp::UpdateContact(_, update) => vec![Content::ContactSync(ContactSync {
                action: Some(contact_sync::Action::Update(contact_sync::Update {
                    contact: Some((**update).clone()),
                })),
            })],
            SyncOp::Settings(update) => vec![Content::SettingsSync(SettingsSync {
                action: Some(settings_sync::Action::Update(settings_sync::Update {
                    settings: Some((**update).clone()),
                })),
            })],
            SyncOp::Nickname(nickname) => vec![Content::UserProfileSync(UserProfileSync {
                action: Some(user_profile_sync::Action::Update(
                    user_profile_sync::Update {
                        user_profile: Some(sync::UserProfile {
                            nickname: Some(nickname.clone()),
                            ..Default::default()
                        }),
                    },
                )),
            })],
            SyncOp::CreateList(l) => vec![Content::DistributionListSync(DistributionListSync {
                action: Some(distribution_list_sync::Action::Create(
                    distribution_list_sync::Create {
                        distribution_list: Some(l.to_sync()),
                    },
                )),
            })],
            SyncOp::UpdateList(_, update) => {
                vec![Content::DistributionListSync(DistributionListSync {
                    action: Some(distribution_list_sync::Action::Update(
                        distribution_list_sync::Update {
                            distribution_list: Some((**update).clone()),
                        },
                    )),
                })]
            }
            SyncOp::DeleteList(id) => vec![Content::DistributionListSync(DistributionListSync {
                action: Some(distribution_list_sync::Action::Delete(
                    distribution_list_sync::Delete {
                        distribution_list_id: *id,
                    },
                )),
            })],
            SyncOp::CreateGroup(g, _) => vec![Content::GroupSync(GroupSync {
                action: Some(group_sync::Action::Create(group_sync::Create {
                    group: Some(g.to_sync()),
                })),
            })],
            SyncOp::UpdateGroup(_, update, _) => vec![Content::GroupSync(GroupSync {
                action: Some(group_sync::Action::Update(group_sync::Update {
                    group: Some((**update).clone()),
                    // Protocol version 23's status-line hints; receivers derive the same from
                    // the member list, which is authoritative (docs/protocol.md).
                    member_state_changes: std::collections::BTreeMap::new(),
                })),
            })],
            // A part is read under its lock in `on_transaction_begun`, which also keeps where the
            // next one starts.
            SyncOp::NewDeviceSync { .. } | SyncOp::NewDeviceSyncPart { .. } => Vec::new(),
            SyncOp::Replay(contents) => contents.clone(),
        }
    }

    /// Begins the next transaction when the lock is free for this device.
    pub(super) fn drive_sync(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        while self.sync.tx == Tx::Idle {
            let Some(op) = self.sync.queue.front().cloned() else {
                return;
            };
            if !self.precondition(&op) {
                self.sync.queue.pop_front();
                // Its closes say nothing about the op behind it.
                self.sync.failures = None;
                self.after_sync(&op, false, now_ms, rng);
                continue;
            }
            let Some(session) = self.session.as_mut() else {
                return;
            };
            if session.begin_transaction(op.scope(), 0, rng).is_err() {
                return;
            }
            self.sync.tx = Tx::Beginning;
        }
    }

    /// The lock is held: check again, reflect, commit.
    pub(super) fn on_transaction_begun(&mut self, _now_ms: u64, rng: &mut impl CryptoRngCore) {
        if self.sync.tx != Tx::Beginning {
            return;
        }
        let Some(op) = self.sync.queue.front().cloned() else {
            self.commit(false);
            return;
        };
        if !self.precondition(&op) {
            self.commit(false);
            return;
        }
        let envelopes = match &op {
            SyncOp::NewDeviceSync {
                max_history_messages,
                ..
            } => {
                let history = self.new_device_sync_history(*max_history_messages);
                self.begin_answer_part(&NdsCursor::Start, history, &[])
            }
            SyncOp::NewDeviceSyncPart {
                cursor,
                history,
                refresh,
                ..
            } => self.begin_answer_part(cursor, *history, refresh),
            other => self.sync_envelopes(other),
        };
        if !op.is_answer() {
            // Durable before any of them leaves (the gate holds the reflects behind this batch).
            self.state.put_journal(envelopes.clone());
        }
        let mut outstanding = 0;
        for content in &envelopes {
            if self.reflect(content.clone(), false, Some(Pending::Sync), rng) {
                outstanding += 1;
            }
        }
        self.sync.staged = envelopes;
        if outstanding == 0 {
            self.commit(true);
        } else {
            self.sync.tx = Tx::Held { outstanding };
        }
    }

    /// Reads an answer's part under its lock and remembers what follows it.
    fn begin_answer_part(
        &mut self,
        cursor: &NdsCursor,
        history: NdsHistory,
        refresh: &[u64],
    ) -> Vec<Content> {
        let out = self.new_device_sync_part(cursor, &history, refresh);
        let carried = out
            .carried
            .iter()
            .filter_map(|seq| Some((*seq, self.state.messages().get(seq)?.state)))
            .collect();
        self.sync.next_part = Some(NextPart {
            cursor: out.next,
            history,
            refresh: out.refresh,
            carried,
        });
        out.contents
    }

    pub(super) fn on_sync_reflected(&mut self, _rng: &mut impl CryptoRngCore) {
        if let Tx::Held { outstanding } = self.sync.tx {
            let outstanding = outstanding.saturating_sub(1);
            if outstanding == 0 {
                self.commit(true);
            } else {
                self.sync.tx = Tx::Held { outstanding };
            }
        }
    }

    fn commit(&mut self, executed: bool) {
        if let Some(session) = self.session.as_mut() {
            if session.commit_transaction().is_ok() {
                self.sync.tx = Tx::Committing { executed };
            }
        }
    }

    /// The change is visible to every sibling: apply it here too, then start the next one.
    pub(super) fn on_commit_acked(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        let Tx::Committing { executed } = self.sync.tx else {
            return;
        };
        self.sync.tx = Tx::Idle;
        self.sync.failures = None;
        // What waited for the lock goes out before anything this commit leads to.
        self.release_deferred(rng);
        let staged = core::mem::take(&mut self.sync.staged);
        let next_part = self.sync.next_part.take();
        let Some(op) = self.sync.queue.pop_front() else {
            return;
        };
        let answer = match &op {
            SyncOp::NewDeviceSync { device_id, .. } => Some((*device_id, 0)),
            SyncOp::NewDeviceSyncPart {
                device_id, part, ..
            } => Some((*device_id, *part)),
            _ => None,
        };
        if let (true, Some((device_id, part)), Some(next)) = (executed, answer, next_part) {
            // Carried in a state that has moved on since: carry again (idempotent elsewhere).
            let mut refresh = next.refresh;
            refresh.extend(next.carried.into_iter().filter_map(|(seq, state)| {
                let now = self.state.messages().get(&seq).map(|m| m.state);
                (now.is_some() && now != Some(state)).then_some(seq)
            }));
            if next.cursor == NdsCursor::Done && refresh.is_empty() {
                self.sync.answering_own.remove(&device_id);
                self.state.clear_answer_owed(device_id);
                self.new_device_sync_done(device_id, next.history.count);
            } else {
                self.sync.queue.push_front(SyncOp::NewDeviceSyncPart {
                    device_id,
                    part: part.saturating_add(1),
                    cursor: next.cursor,
                    history: next.history,
                    refresh,
                });
            }
        }
        if executed && !op.is_answer() {
            for content in staged {
                // Own envelopes were built from valid state; a failure would only repeat what
                // a sibling reports when applying them.
                let _ = self.apply_sync(content);
            }
        }
        self.state.clear_journal();
        self.after_sync(&op, executed, now_ms, rng);
    }

    fn after_sync(
        &mut self,
        op: &SyncOp,
        executed: bool,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        if let (false, Some(device_id)) = (executed, op.answers()) {
            // Answered by a sibling (or this device's answer is over): not owed any more.
            self.state.clear_answer_owed(device_id);
        }
        match op {
            SyncOp::CreateContact(c) => self.resume_parked(c.identity, now_ms, rng),
            SyncOp::CreateGroup(_, announce) | SyncOp::UpdateGroup(_, _, announce) if executed => {
                self.announce(announce, now_ms, rng);
            }
            SyncOp::NewDeviceSync { device_id, .. } if executed => {
                self.sync.answered.insert(*device_id);
                // A later part is queued exactly when more is left (`on_commit_acked`).
                if self.sync.queue.front().is_some_and(|next| {
                    matches!(next, SyncOp::NewDeviceSyncPart { device_id: d, .. } if d == device_id)
                }) {
                    self.sync.answering_own.insert(*device_id);
                }
            }
            _ => {}
        }
    }

    // ---- commands -----------------------------------------------------------------------------

    /// Adds a contact: asks the directory, then creates it through a CONTACT_SYNC transaction.
    /// [`super::AppEvent::ContactChanged`] or [`super::AppEvent::ContactNotFound`] follows.
    pub fn add_contact(&mut self, identity: Identity) -> Result<(), AppError> {
        if identity == self.state.own().identity {
            return Err(AppError::OwnIdentity);
        }
        if self.state.contact(&identity).is_some() {
            return Err(AppError::ContactExists(identity));
        }
        if self
            .lookups
            .insert(identity, super::core::Lookup::User)
            .is_none()
        {
            self.effects
                .push_back(super::event::Effect::LookupIdentity(identity));
        }
        Ok(())
    }

    /// Renames a contact (first and last name as this user calls them); `None` keeps a field.
    pub fn rename_contact(
        &mut self,
        identity: Identity,
        first_name: Option<&str>,
        last_name: Option<&str>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        if self.state.contact(&identity).is_none() {
            return Err(AppError::UnknownContact(identity));
        }
        let update = sync::Contact {
            identity: identity.to_string(),
            first_name: first_name.map(str::to_owned),
            last_name: last_name.map(str::to_owned),
            sync_state: Some(sync::contact::SyncState::Custom.into()),
            ..Default::default()
        };
        self.enqueue_sync(SyncOp::UpdateContact(identity, Box::new(update)));
        self.pump(now_ms, rng);
        Ok(())
    }

    /// Changes settings: only the fields present in `update` (spec §8.3).
    pub fn update_settings(
        &mut self,
        update: sync::Settings,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        self.enqueue_sync(SyncOp::Settings(Box::new(update)));
        self.pump(now_ms, rng);
    }

    /// Sets the own nickname (sent in message metadata).
    pub fn set_nickname(&mut self, nickname: &str, now_ms: u64, rng: &mut impl CryptoRngCore) {
        self.enqueue_sync(SyncOp::Nickname(nickname.to_owned()));
        self.pump(now_ms, rng);
    }

    /// Creates a distribution list; returns its id.
    pub fn create_distribution_list(
        &mut self,
        name: &str,
        members: BTreeSet<Identity>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<u64, AppError> {
        if members.is_empty() {
            return Err(AppError::NoMembers);
        }
        let mut id = rng.next_u64();
        while self.state.distribution_lists().contains_key(&id) {
            id = rng.next_u64();
        }
        let list = DistributionList {
            id,
            name: name.to_owned(),
            created_at: now_ms,
            members,
            conversation_category: sync::ConversationCategory::Default,
            conversation_visibility: sync::ConversationVisibility::Normal,
        };
        self.enqueue_sync(SyncOp::CreateList(Box::new(list)));
        self.pump(now_ms, rng);
        Ok(id)
    }

    /// Renames a distribution list and/or replaces its members.
    pub fn update_distribution_list(
        &mut self,
        id: u64,
        name: Option<&str>,
        members: Option<BTreeSet<Identity>>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        if !self.state.distribution_lists().contains_key(&id) {
            return Err(AppError::UnknownDistributionList(id));
        }
        if members.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err(AppError::NoMembers);
        }
        let update = sync::DistributionList {
            distribution_list_id: id,
            name: name.map(str::to_owned),
            member_identities: members.map(|m| crate::proto::common::Identities {
                identities: m.iter().map(ToString::to_string).collect(),
            }),
            ..Default::default()
        };
        self.enqueue_sync(SyncOp::UpdateList(id, Box::new(update)));
        self.pump(now_ms, rng);
        Ok(())
    }

    /// Deletes a distribution list.
    pub fn delete_distribution_list(
        &mut self,
        id: u64,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AppError> {
        if !self.state.distribution_lists().contains_key(&id) {
            return Err(AppError::UnknownDistributionList(id));
        }
        self.enqueue_sync(SyncOp::DeleteList(id));
        self.pump(now_ms, rng);
        Ok(())
    }

    /// Whether this device holds the group lock (its transaction is open or committing).
    #[must_use]
    pub const fn holds_lock(&self) -> bool {
        matches!(self.sync.tx, Tx::Held { .. } | Tx::Committing { .. })
    }

    /// Changes not yet committed (for a "syncing…" indicator and tests).
    #[must_use]
    pub fn pending_sync(&self) -> usize {
        self.sync.len()
    }
}
