//! Everything a device holds, in memory, and the writes each change makes.
//!
//! The state is loaded once from the adapter's records ([`State::load`]); from then on it is the
//! truth, and every mutation goes through a method here that also queues the record writes
//! ([`State::take_ops`]), so memory and store never drift apart.

use std::collections::{BTreeMap, HashMap};

use super::model::{
    Contact, ConversationId, DistributionList, Group, GroupId, Identity, Message, MessageKey,
    MessageState, OwnIdentity, Profile, Settings,
};
use super::nonce::{NonceEntry, NonceHasher, NonceScope, NonceStore};
use super::records::{
    answer_key, answer_record, contact_record, decode_answer, decode_contact, decode_group,
    decode_journal, decode_list, decode_message, decode_nonce, decode_own, decode_profile,
    decode_settings, group_key, group_record, is_answer_record, journal_record, list_key,
    list_record, message_record, nonce_record, own_record, profile_record, settings_record, Op,
    Record, RecordError, RecordKind,
};
use crate::crypto::Nonce;
use crate::proto::d2d::envelope::Content;

/// One line of the conversation list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation.
    pub id: ConversationId,
    /// Sequence number of its last message (see [`State::messages`]).
    pub last_seq: u64,
    /// Incoming messages not yet read.
    pub unread: usize,
}

/// The device's whole state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    own: OwnIdentity,
    contacts: BTreeMap<Identity, Contact>,
    groups: BTreeMap<GroupId, Group>,
    lists: BTreeMap<u64, DistributionList>,
    settings: Settings,
    profile: Profile,
    messages: BTreeMap<u64, Message>,
    by_key: HashMap<MessageKey, u64>,
    by_conversation: HashMap<ConversationId, Vec<u64>>,
    nonces: NonceStore,
    /// Keyed by `own.identity`, which never changes for a state.
    nonce_hasher: NonceHasher,
    journal: Option<Vec<Content>>,
    /// New devices owed an answer: (device id, history cap) (`RecordKind::SyncJournal`). A
    /// vector: there are a handful at most, and a map of its own would cost the browser
    /// package a monomorphised B-tree.
    answers_owed: Vec<(u64, u32)>,
    next_seq: u64,
    ops: Vec<Op>,
}

impl State {
    /// A fresh device: only the identity, whose record is the first write.
    pub(crate) fn new(own: OwnIdentity) -> Self {
        let mut state = Self {
            nonce_hasher: NonceHasher::new(&own.identity),
            own,
            contacts: BTreeMap::new(),
            groups: BTreeMap::new(),
            lists: BTreeMap::new(),
            settings: Settings::default(),
            profile: Profile::default(),
            messages: BTreeMap::new(),
            by_key: HashMap::new(),
            by_conversation: HashMap::new(),
            nonces: NonceStore::default(),
            journal: None,
            answers_owed: Vec::new(),
            next_seq: 1,
            ops: Vec::new(),
        };
        state.ops.push(Op::Put(own_record(&state.own)));
        state
    }

    /// Rebuilds the state from every stored record, in any order.
    pub(crate) fn load(records: impl IntoIterator<Item = Record>) -> Result<Self, RecordError> {
        let mut own = None;
        let mut contacts = BTreeMap::new();
        let mut groups = BTreeMap::new();
        let mut lists = BTreeMap::new();
        let mut settings = Settings::default();
        let mut profile = Profile::default();
        let mut messages = BTreeMap::new();
        let mut nonces = NonceStore::default();
        let mut journal = None;
        let mut answers_owed = Vec::new();
        for record in records {
            match record.kind {
                RecordKind::Identity => own = Some(decode_own(&record)?),
                RecordKind::Contact => {
                    let c = decode_contact(&record)?;
                    contacts.insert(c.identity, c);
                }
                RecordKind::Group => {
                    let g = decode_group(&record)?;
                    groups.insert(g.id, g);
                }
                RecordKind::DistributionList => {
                    let l = decode_list(&record)?;
                    lists.insert(l.id, l);
                }
                RecordKind::Settings => settings = decode_settings(&record)?,
                RecordKind::Profile => profile = decode_profile(&record)?,
                RecordKind::Nonce => {
                    nonces.insert(decode_nonce(&record)?);
                }
                RecordKind::Message => {
                    let m = decode_message(&record)?;
                    messages.insert(m.seq, m);
                }
                RecordKind::SyncJournal if is_answer_record(&record) => {
                    let (device_id, max) = decode_answer(&record)?;
                    answers_owed.push((device_id, max));
                }
                RecordKind::SyncJournal => journal = Some(decode_journal(&record)?),
            }
        }
        let own = own.ok_or(RecordError::MissingIdentity)?;
        let mut by_key = HashMap::with_capacity(messages.len());
        let mut by_conversation: HashMap<ConversationId, Vec<u64>> = HashMap::new();
        for (seq, m) in &messages {
            if by_key.insert(m.key, *seq).is_some() {
                return Err(RecordError::DuplicateMessage(m.key));
            }
            if m.hidden {
                continue;
            }
            by_conversation
                .entry(m.conversation)
                .or_default()
                .push(*seq);
        }
        let next_seq = messages
            .last_key_value()
            .map_or(1, |(seq, _)| seq.saturating_add(1));
        Ok(Self {
            nonce_hasher: NonceHasher::new(&own.identity),
            own,
            contacts,
            groups,
            lists,
            settings,
            profile,
            messages,
            by_key,
            by_conversation,
            nonces,
            journal,
            answers_owed,
            next_seq,
            ops: Vec::new(),
        })
    }

    /// The writes queued since the last call.
    pub(crate) fn take_ops(&mut self) -> Vec<Op> {
        core::mem::take(&mut self.ops)
    }

    /// Whether writes are queued.
    pub(crate) fn has_ops(&self) -> bool {
        !self.ops.is_empty()
    }

    // ---- reads --------------------------------------------------------------------------------

    /// Identity, keys and device ids.
    #[must_use]
    pub const fn own(&self) -> &OwnIdentity {
        &self.own
    }

    /// Every contact, by identity.
    #[must_use]
    pub const fn contacts(&self) -> &BTreeMap<Identity, Contact> {
        &self.contacts
    }

    /// One contact.
    #[must_use]
    pub fn contact(&self, identity: &Identity) -> Option<&Contact> {
        self.contacts.get(identity)
    }

    /// Every group.
    #[must_use]
    pub const fn groups(&self) -> &BTreeMap<GroupId, Group> {
        &self.groups
    }

    /// One group.
    #[must_use]
    pub fn group(&self, id: &GroupId) -> Option<&Group> {
        self.groups.get(id)
    }

    /// Every distribution list.
    #[must_use]
    pub const fn distribution_lists(&self) -> &BTreeMap<u64, DistributionList> {
        &self.lists
    }

    /// The settings.
    #[must_use]
    pub const fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The profile.
    #[must_use]
    pub const fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Every message, by local sequence number.
    #[must_use]
    pub const fn messages(&self) -> &BTreeMap<u64, Message> {
        &self.messages
    }

    /// One message by sender and id.
    #[must_use]
    pub fn message(&self, key: &MessageKey) -> Option<&Message> {
        self.by_key.get(key).and_then(|seq| self.messages.get(seq))
    }

    /// The messages of a conversation, oldest first.
    pub fn conversation(&self, id: &ConversationId) -> impl Iterator<Item = &Message> {
        self.by_conversation
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|seq| self.messages.get(seq))
    }

    /// Every conversation that has messages.
    pub fn conversation_ids(&self) -> impl Iterator<Item = &ConversationId> {
        self.by_conversation.keys()
    }

    /// A conversation list for the UI: every conversation with messages, the most recently
    /// active first, with its last message and unread count.
    #[must_use]
    pub fn conversation_list(&self) -> Vec<ConversationSummary> {
        let mut list: Vec<ConversationSummary> = self
            .by_conversation
            .iter()
            .filter_map(|(id, seqs)| {
                let last = *seqs.last()?;
                let unread = seqs
                    .iter()
                    .filter_map(|seq| self.messages.get(seq))
                    .filter(|m| m.state == MessageState::Received)
                    .count();
                Some(ConversationSummary {
                    id: *id,
                    last_seq: last,
                    unread,
                })
            })
            .collect();
        list.sort_by_key(|s| core::cmp::Reverse(s.last_seq));
        list
    }

    /// The nonce store.
    #[must_use]
    pub const fn nonces(&self) -> &NonceStore {
        &self.nonces
    }

    /// Whether a nonce was used in `scope`.
    #[must_use]
    pub fn nonce_used(&self, scope: NonceScope, nonce: &Nonce) -> bool {
        self.nonce_hash_used(scope, &self.nonce_hash(nonce))
    }

    /// A nonce as the replay store keeps it, for a caller that checks and later marks the same
    /// nonce (one HMAC instead of two).
    #[must_use]
    pub fn nonce_hash(&self, nonce: &Nonce) -> [u8; 32] {
        self.nonce_hasher.hash(nonce)
    }

    /// Whether a hashed nonce ([`Self::nonce_hash`]) was used in `scope`.
    #[must_use]
    pub fn nonce_hash_used(&self, scope: NonceScope, hash: &[u8; 32]) -> bool {
        self.nonces.contains(&(scope, *hash))
    }

    /// The envelopes of an own transaction that may be committed and are not applied here.
    #[must_use]
    pub fn journal(&self) -> Option<&[Content]> {
        self.journal.as_deref()
    }

    // ---- writes -------------------------------------------------------------------------------

    /// Records the envelopes of the transaction about to be reflected (before they leave).
    pub(crate) fn put_journal(&mut self, contents: Vec<Content>) {
        self.ops.push(Op::Put(journal_record(&contents)));
        self.journal = Some(contents);
    }

    /// The journaled transaction is applied here.
    pub(crate) fn clear_journal(&mut self) {
        if self.journal.take().is_some() {
            self.ops.push(Op::Delete {
                kind: RecordKind::SyncJournal,
                key: super::records::SINGLETON_KEY.to_vec(),
            });
        }
    }

    /// New devices this device owes an answer (device id → history cap).
    pub(crate) fn answers_owed(&self) -> &[(u64, u32)] {
        &self.answers_owed
    }

    /// A new device asked: until its answer is seen in full (or taken over by a sibling), a
    /// restart must not forget it.
    pub(crate) fn put_answer_owed(&mut self, device_id: u64, max_history_messages: u32) {
        let entry = (device_id, max_history_messages);
        if self.answers_owed.contains(&entry) {
            return;
        }
        self.answers_owed.retain(|(id, _)| *id != device_id);
        self.answers_owed.push(entry);
        self.ops
            .push(Op::Put(answer_record(device_id, max_history_messages)));
    }

    /// The answer to `device_id` is no longer this device's to give.
    pub(crate) fn clear_answer_owed(&mut self, device_id: u64) {
        let before = self.answers_owed.len();
        self.answers_owed.retain(|(id, _)| *id != device_id);
        if self.answers_owed.len() != before {
            self.ops.push(Op::Delete {
                kind: RecordKind::SyncJournal,
                key: answer_key(device_id),
            });
        }
    }

    /// Changes the own identity record's flags.
    pub(crate) fn update_own(&mut self, f: impl FnOnce(&mut OwnIdentity)) {
        let before = (self.own.connected_once, self.own.wants_new_device_sync);
        f(&mut self.own);
        if before != (self.own.connected_once, self.own.wants_new_device_sync) {
            self.ops.push(Op::Put(own_record(&self.own)));
        }
    }

    /// Inserts or replaces a contact.
    pub(crate) fn put_contact(&mut self, contact: Contact) {
        if self.contacts.get(&contact.identity) == Some(&contact) {
            return;
        }
        self.ops.push(Op::Put(contact_record(&contact)));
        self.contacts.insert(contact.identity, contact);
    }

    /// Inserts or replaces a group.
    pub(crate) fn put_group(&mut self, group: Group) {
        if self.groups.get(&group.id) == Some(&group) {
            return;
        }
        self.ops.push(Op::Put(group_record(&group)));
        self.groups.insert(group.id, group);
    }

    /// Removes a group (its messages stay).
    pub(crate) fn delete_group(&mut self, id: &GroupId) {
        if self.groups.remove(id).is_some() {
            self.ops.push(Op::Delete {
                kind: RecordKind::Group,
                key: group_key(id),
            });
        }
    }

    /// Inserts or replaces a distribution list.
    pub(crate) fn put_list(&mut self, list: DistributionList) {
        if self.lists.get(&list.id) == Some(&list) {
            return;
        }
        self.ops.push(Op::Put(list_record(&list)));
        self.lists.insert(list.id, list);
    }

    /// Removes a distribution list.
    pub(crate) fn delete_list(&mut self, id: u64) {
        if self.lists.remove(&id).is_some() {
            self.ops.push(Op::Delete {
                kind: RecordKind::DistributionList,
                key: list_key(id),
            });
        }
    }

    /// Replaces the settings.
    pub(crate) fn put_settings(&mut self, settings: Settings) {
        if self.settings != settings {
            self.ops.push(Op::Put(settings_record(&settings)));
            self.settings = settings;
        }
    }

    /// Replaces the profile.
    pub(crate) fn put_profile(&mut self, profile: Profile) {
        if self.profile != profile {
            self.ops.push(Op::Put(profile_record(&profile)));
            self.profile = profile;
        }
    }

    /// Marks a nonce used; `false` if it already was.
    pub(crate) fn use_nonce(&mut self, scope: NonceScope, nonce: &Nonce) -> bool {
        self.use_nonce_hash(scope, self.nonce_hash(nonce))
    }

    /// [`Self::use_nonce`] for a nonce hashed by [`Self::nonce_hash`].
    pub(crate) fn use_nonce_hash(&mut self, scope: NonceScope, hash: [u8; 32]) -> bool {
        let entry: NonceEntry = (scope, hash);
        if self.nonces.insert(entry) {
            self.ops.push(Op::Put(nonce_record(&entry)));
            true
        } else {
            false
        }
    }

    /// Appends a new message at the end of its conversation and returns its sequence number.
    /// `message.seq` is ignored; a message with a known key is not added (returns `None`).
    pub(crate) fn add_message(&mut self, mut message: Message) -> Option<u64> {
        if self.by_key.contains_key(&message.key) {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        message.seq = seq;
        self.ops.push(Op::Put(message_record(&message)));
        self.by_key.insert(message.key, seq);
        self.by_conversation
            .entry(message.conversation)
            .or_default()
            .push(seq);
        self.messages.insert(seq, message);
        Some(seq)
    }

    /// Deletes a message on this device only: its text goes, and it leaves its conversation
    /// (a conversation left empty is no longer listed). The record stays as a tombstone, so the
    /// id is still known (a removal from the B-tree would cost the browser package ≈ 2.6 KB
    /// gzipped of monomorphised code, docs/client.md "Size").
    pub(crate) fn hide_message(&mut self, key: &MessageKey) {
        let Some(&seq) = self.by_key.get(key) else {
            return;
        };
        let Some(message) = self.messages.get_mut(&seq) else {
            return;
        };
        zeroize::Zeroize::zeroize(&mut message.text);
        message.text.clear();
        message.hidden = true;
        self.ops.push(Op::Put(message_record(message)));
        if let Some(seqs) = self.by_conversation.get_mut(&message.conversation) {
            seqs.retain(|s| *s != seq);
        }
    }

    /// Changes a stored message; `f` returns whether it changed anything.
    pub(crate) fn update_message(
        &mut self,
        key: &MessageKey,
        f: impl FnOnce(&mut Message) -> bool,
    ) -> bool {
        let Some(message) = self
            .by_key
            .get(key)
            .and_then(|seq| self.messages.get_mut(seq))
        else {
            return false;
        };
        let changed = f(message);
        if changed {
            self.ops.push(Op::Put(message_record(message)));
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::memory::MemoryStore;
    use crate::app::model::{Direction, MessageState};
    use crate::crypto::{PublicKey, SecretKey};
    use crate::keys::ClientKey;

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    pub(crate) fn own() -> OwnIdentity {
        OwnIdentity {
            identity: id("MEMEMEME"),
            client_key: ClientKey::new(SecretKey::from_bytes([5; 32])),
            device_id: 11,
            csp_device_id: 12,
            connected_once: false,
            wants_new_device_sync: true,
        }
    }

    fn text(conversation: ConversationId, sender: Identity, id: u64) -> Message {
        Message {
            seq: 0,
            conversation,
            key: MessageKey { sender, id },
            direction: Direction::Incoming,
            text: format!("hello {id}"),
            created_at: id,
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
        }
    }

    fn persist(state: &mut State, store: &mut MemoryStore) {
        let ops = state.take_ops();
        store.apply(super::super::records::Batch { id: 0, ops });
    }

    #[test]
    fn mutate_persist_reopen_gives_equal_state() {
        let mut store = MemoryStore::default();
        let mut state = State::new(own());
        let echo = id("ECHOECHO");
        let mut c = Contact::new(echo, PublicKey([9; 32]), 1);
        state.put_contact(c.clone());
        c.first_name = "Echo".into();
        state.put_contact(c);
        let gid = GroupId {
            creator: echo,
            id: 3,
        };
        state.put_group(
            Group::from_sync(
                &Group {
                    id: gid,
                    name: "g".into(),
                    created_at: 2,
                    user_state: crate::proto::sync::group::UserState::Member,
                    members: [id("ABCDEFGH")].into(),
                    conversation_category: crate::proto::sync::ConversationCategory::Default,
                    conversation_visibility: crate::proto::sync::ConversationVisibility::Normal,
                }
                .to_sync(),
            )
            .unwrap(),
        );
        state.put_list(
            DistributionList::from_sync(&crate::proto::sync::DistributionList {
                distribution_list_id: 8,
                name: Some("l".into()),
                ..Default::default()
            })
            .unwrap(),
        );
        state.delete_list(8);
        let mut settings = Settings::default();
        settings.0.read_receipt_policy = Some(1);
        state.put_settings(settings);
        state.put_profile(Profile {
            nickname: "me".into(),
        });
        assert!(state.use_nonce(NonceScope::Csp, &[1; 24]));
        assert!(!state.use_nonce(NonceScope::Csp, &[1; 24]));
        assert!(state.use_nonce(NonceScope::D2d, &[1; 24]));
        let conv = ConversationId::Contact(echo);
        assert_eq!(state.add_message(text(conv, echo, 1)), Some(1));
        assert_eq!(
            state.add_message(text(conv, echo, 1)),
            None,
            "dedupe by key"
        );
        assert_eq!(
            state.add_message(text(ConversationId::Group(gid), echo, 2)),
            Some(2)
        );
        assert!(state.update_message(
            &MessageKey {
                sender: echo,
                id: 1
            },
            |m| {
                m.state = MessageState::Read;
                true
            }
        ));
        state.update_own(|o| o.connected_once = true);
        persist(&mut state, &mut store);

        let reopened = State::load(store.records()).unwrap();
        assert_eq!(reopened, state);
        assert!(reopened.nonce_used(NonceScope::D2d, &[1; 24]));
        assert!(!reopened.nonce_used(NonceScope::D2d, &[2; 24]));
        assert_eq!(reopened.conversation(&conv).count(), 1);
        assert_eq!(
            reopened.conversation_list(),
            vec![
                ConversationSummary {
                    id: ConversationId::Group(gid),
                    last_seq: 2,
                    unread: 1
                },
                ConversationSummary {
                    id: conv,
                    last_seq: 1,
                    unread: 0
                }
            ]
        );
        assert_eq!(reopened.next_seq, 3);
        assert_eq!(reopened.messages()[&1].state, MessageState::Read);
        assert_eq!(reopened.distribution_lists().len(), 0);
    }

    #[test]
    fn unchanged_puts_write_nothing() {
        let mut state = State::new(own());
        state.take_ops();
        let c = Contact::new(id("ECHOECHO"), PublicKey([9; 32]), 1);
        state.put_contact(c.clone());
        assert_eq!(state.take_ops().len(), 1);
        state.put_contact(c);
        state.put_settings(Settings::default());
        state.put_profile(Profile::default());
        state.update_own(|_| {});
        assert!(!state.has_ops());
    }

    /// The brief's budget: 1 000 contacts and 10 000 messages (plus a nonce per message in each
    /// scope) open well under a second natively, even in a debug build.
    #[test]
    fn thousand_contacts_and_ten_thousand_messages_open_fast() {
        let mut state = State::new(own());
        let contacts: Vec<Identity> = (0..1_000)
            .map(|i| format!("C{i:07}").parse().unwrap())
            .collect();
        for (i, identity) in contacts.iter().enumerate() {
            let mut c = Contact::new(*identity, PublicKey([i as u8; 32]), i as u64);
            c.first_name = format!("First {i}");
            c.last_name = "Last".into();
            state.put_contact(c);
        }
        for i in 0..10_000_u64 {
            let sender = contacts[(i % 1_000) as usize];
            let mut m = text(ConversationId::Contact(sender), sender, i);
            m.text = format!("message number {i}, of an ordinary length for a chat");
            state.add_message(m);
            state.use_nonce(
                NonceScope::Csp,
                &[(i % 251) as u8; 24].map(|b| b ^ (i >> 8) as u8),
            );
            let mut n = [0; 24];
            n[..8].copy_from_slice(&i.to_le_bytes());
            state.use_nonce(NonceScope::D2d, &n);
        }
        let mut store = MemoryStore::default();
        persist(&mut state, &mut store);
        let records = store.records();
        assert!(records.len() > 20_000);
        let bytes: usize = records.iter().map(|r| r.key.len() + r.value.len()).sum();
        let started = std::time::Instant::now();
        let loaded = State::load(records).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(loaded.messages().len(), 10_000);
        assert_eq!(loaded.contacts().len(), 1_000);
        println!("opened {bytes} bytes of records in {elapsed:?}");
        assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
    }

    #[test]
    fn load_without_identity_fails() {
        assert_eq!(State::load(Vec::new()), Err(RecordError::MissingIdentity));
    }

    #[test]
    fn load_refuses_two_records_of_one_message() {
        let mut state = State::new(own());
        let echo = id("ECHOECHO");
        state.add_message(text(ConversationId::Contact(echo), echo, 1));
        let mut records: Vec<Record> = state
            .take_ops()
            .into_iter()
            .filter_map(|op| match op {
                Op::Put(r) => Some(r),
                Op::Delete { .. } => None,
            })
            .collect();
        let mut copy = records.last().unwrap().clone();
        copy.key = super::super::records::message_key(9);
        records.push(copy);
        assert_eq!(
            State::load(records),
            Err(RecordError::DuplicateMessage(MessageKey {
                sender: echo,
                id: 1
            }))
        );
    }
}
