//! Edits and deletes of messages with Threema's wire formats (EditMessage 0x91/0x93,
//! DeleteMessage 0x92/0x94; docs/protocol.md "Message updates"), through the real mediator state
//! machine and a test chat server (see `app_support`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use app_support::{summary, World};
use prost::Message as _;
use tandem_shared::app::{
    AppError, AppEvent, ConversationId, Dropped, Identity, MessageKey, CHANGE_WINDOW_MS,
};
use tandem_shared::csp::{seal_message_with_nonce, E2eMessageType, MessageFlags, MessageToSeal};
use tandem_shared::proto::csp_e2e;

/// X has devices X1 and X2, Y has Y1 and Y2; X1 sent Y "hello" (its key is returned).
fn world() -> (World, ConversationId, ConversationId, MessageKey) {
    let mut w = World::new(5);
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    for (name, identity) in [("X1", x), ("X2", x), ("Y1", y), ("Y2", y)] {
        w.device(name, identity);
        w.connect(name);
    }
    w.app("X1").add_contact(y).unwrap();
    w.run();
    let now = w.now;
    let key = w
        .app("X1")
        .send_text(
            ConversationId::Contact(y),
            "hello",
            now,
            &mut rand::thread_rng(),
        )
        .unwrap();
    w.run();
    (
        w,
        ConversationId::Contact(y),
        ConversationId::Contact(x),
        key,
    )
}

/// Y's Threema-style messages to X, straight into the chat server's queue for X (ids from
/// `first_id`, nonces filled with `nonce_byte` + their index).
fn enqueue_from_y(
    w: &mut World,
    (y, x): (Identity, Identity),
    messages: &[(E2eMessageType, Vec<u8>)],
    first_id: u64,
    nonce_byte: u8,
) {
    let now = w.now;
    let x_key = w.client_key(&x).public_key();
    let y_key = w.client_key(&y);
    for (i, (message_type, body)) in (0_u8..).zip(messages) {
        let sealed = seal_message_with_nonce(
            &y_key,
            &MessageToSeal {
                sender: *y.as_bytes(),
                receiver: *x.as_bytes(),
                receiver_public_key: x_key,
                message_id: first_id + u64::from(i),
                created_at_ms: now,
                flags: MessageFlags::NONE,
                nickname: None,
                message_type: *message_type,
                body,
            },
            &[nonce_byte + i; 24],
            &mut rand::thread_rng(),
        )
        .unwrap();
        w.chat.enqueue(sealed);
    }
}

/// (text, edited at, deleted at) of one message.
type Seen = Option<(String, Option<u64>, Option<u64>)>;

/// The message `key` in `conversation` on every named device: (text, edited at, deleted at).
fn seen(w: &World, names: &[&str], conversation: &ConversationId, key: MessageKey) -> Vec<Seen> {
    names
        .iter()
        .map(|name| {
            w.conversation(name, conversation)
                .into_iter()
                .find(|m| m.key == key)
                .map(|m| (m.text, m.edited_at, m.deleted_at))
        })
        .collect()
}

fn changed(events: &[AppEvent], key: MessageKey) -> bool {
    events
        .iter()
        .any(|e| matches!(e, AppEvent::MessageChanged { key: k, .. } if *k == key))
}

#[test]
fn an_edit_reaches_the_contact_and_every_device() {
    let (mut w, to_y, to_x, key) = world();
    w.advance(60_000);
    let at = w.now;
    w.take_events("Y2");
    w.app("X1")
        .edit_message(key, "hello, edited", at, &mut rand::thread_rng())
        .unwrap();
    w.run();
    let want = Some(("hello, edited".to_owned(), Some(at), None));
    assert_eq!(
        seen(&w, &["X1", "X2"], &to_y, key),
        [want.clone(), want.clone()]
    );
    assert_eq!(seen(&w, &["Y1", "Y2"], &to_x, key), [want.clone(), want]);
    assert!(changed(&w.take_events("Y2"), key), "Y2 is told");
    assert_eq!(
        w.conversation("Y1", &to_x).len(),
        1,
        "an edit is no new message"
    );
    assert_eq!(
        w.chat.queued(&key.sender),
        0,
        "no delivery receipt is owed for it"
    );
    // Stored: a reopened device still has the edit.
    w.crash("Y1");
    w.reopen("Y1");
    w.connect("Y1");
    let want = Some(("hello, edited".to_owned(), Some(at), None));
    assert_eq!(seen(&w, &["Y1"], &to_x, key), [want]);
}

#[test]
fn a_delete_for_everyone_clears_the_text_everywhere_and_ends_further_changes() {
    let (mut w, to_y, to_x, key) = world();
    let at = w.now;
    let mut rng = rand::thread_rng();
    w.app("X2").delete_message(key, true, at, &mut rng).unwrap();
    w.run();
    let want = Some((String::new(), None, Some(at)));
    assert_eq!(
        seen(&w, &["X1", "X2"], &to_y, key),
        [want.clone(), want.clone()]
    );
    assert_eq!(seen(&w, &["Y1", "Y2"], &to_x, key), [want.clone(), want]);
    assert_eq!(
        w.app("X1").edit_message(key, "again", at, &mut rng),
        Err(AppError::UnknownMessage)
    );
    assert_eq!(
        w.app("X1").delete_message(key, true, at, &mut rng),
        Err(AppError::UnknownMessage)
    );
}

#[test]
fn only_the_sender_may_change_a_message_and_only_for_six_hours() {
    let (mut w, _, _, key) = world();
    let mut rng = rand::thread_rng();
    let now = w.now;
    assert_eq!(
        w.app("Y1").edit_message(key, "not mine", now, &mut rng),
        Err(AppError::NotOwnMessage)
    );
    assert_eq!(
        w.app("Y1").delete_message(key, true, now, &mut rng),
        Err(AppError::NotOwnMessage)
    );
    assert_eq!(
        w.app("X1").edit_message(key, "", now, &mut rng),
        Err(AppError::EmptyText)
    );
    // The same text again changes nothing and sends nothing.
    w.take_events("Y1");
    w.app("X1")
        .edit_message(key, "hello", now, &mut rng)
        .unwrap();
    w.run();
    assert!(!changed(&w.take_events("Y1"), key));
    w.advance(CHANGE_WINDOW_MS + 1);
    let late = w.now;
    assert_eq!(
        w.app("X1").edit_message(key, "too late", late, &mut rng),
        Err(AppError::TooLateToChange)
    );
    assert_eq!(
        w.app("X1").delete_message(key, true, late, &mut rng),
        Err(AppError::TooLateToChange)
    );
}

/// An edit or delete from the chat server that refers to a message of someone else (Y sends an
/// edit of X's message id) or to no message is discarded: acked, `Dropped::UnknownMessage`,
/// nothing changes, nothing is reflected.
#[test]
fn an_update_for_someone_elses_or_an_unknown_message_is_discarded() {
    let (mut w, to_y, _, key) = world();
    let x = key.sender;
    let ConversationId::Contact(y) = to_y else {
        panic!()
    };
    let bodies = [
        (
            E2eMessageType::EDIT_MESSAGE,
            csp_e2e::EditMessage {
                message_id: key.id,
                text: "forged".to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            E2eMessageType::DELETE_MESSAGE,
            csp_e2e::DeleteMessage { message_id: key.id }.encode_to_vec(),
        ),
        (
            E2eMessageType::DELETE_MESSAGE,
            csp_e2e::DeleteMessage { message_id: 12_345 }.encode_to_vec(),
        ),
    ];
    w.take_events("X1");
    enqueue_from_y(&mut w, (y, x), &bodies, 9_001, 0x41);
    w.run();
    let want = Some(("hello".to_owned(), None, None));
    assert_eq!(seen(&w, &["X1", "X2"], &to_y, key), [want.clone(), want]);
    assert_eq!(w.chat.queued(&x), 0, "every one was acked");
    let dropped: Vec<AppEvent> = w
        .take_events("X1")
        .into_iter()
        .filter(|e| matches!(e, AppEvent::Dropped(_)))
        .collect();
    let expected: Vec<AppEvent> = bodies
        .iter()
        .map(|(t, _)| AppEvent::Dropped(Dropped::UnknownMessage(*t)))
        .collect();
    assert_eq!(dropped, expected);
}

#[test]
fn group_messages_are_edited_and_deleted_for_every_member_and_device() {
    let (mut w, _, group) = app_support::trio(6);
    let now = w.now;
    let mut rng = rand::thread_rng();
    let conversation = ConversationId::Group(group);
    // A member (not the creator) writes, edits one text and deletes another.
    let first = w
        .app("Y1")
        .send_text(conversation, "first", now, &mut rng)
        .unwrap();
    let second = w
        .app("Y1")
        .send_text(conversation, "second", now, &mut rng)
        .unwrap();
    w.run();
    w.advance(1_000);
    let at = w.now;
    w.app("Y1")
        .edit_message(first, "first, edited", at, &mut rng)
        .unwrap();
    w.app("Y1")
        .delete_message(second, true, at, &mut rng)
        .unwrap();
    w.run();
    let all = ["X1", "X2", "Y1", "Z1"];
    let edited = Some(("first, edited".to_owned(), Some(at), None));
    let deleted = Some((String::new(), None, Some(at)));
    assert_eq!(seen(&w, &all, &conversation, first), vec![edited; 4]);
    assert_eq!(seen(&w, &all, &conversation, second), vec![deleted; 4]);
    // The creator cannot change the member's text.
    assert_eq!(
        w.app("X1").edit_message(first, "mine now", at, &mut rng),
        Err(AppError::NotOwnMessage)
    );
}

#[test]
fn delete_for_me_removes_the_message_and_its_text_on_this_device_only_for_good() {
    let (mut w, to_y, to_x, key) = world();
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.take_events("Y1");
    w.app("Y1")
        .delete_message(key, false, now, &mut rng)
        .unwrap();
    w.run();
    assert!(changed(&w.take_events("Y1"), key));
    assert_eq!(seen(&w, &["Y1"], &to_x, key), [None]);
    let kept = Some(("hello".to_owned(), None, None));
    assert_eq!(seen(&w, &["Y2"], &to_x, key), std::slice::from_ref(&kept));
    assert_eq!(seen(&w, &["X1", "X2"], &to_y, key), [kept.clone(), kept]);
    assert!(
        w.app_ref("Y1").state().conversation_list().is_empty(),
        "its only message gone, so is the conversation"
    );
    w.crash("Y1");
    w.reopen("Y1");
    w.connect("Y1");
    assert_eq!(
        seen(&w, &["Y1"], &to_x, key),
        [None],
        "gone after a reopen too"
    );
    let tombstone = w.app_ref("Y1").state().message(&key).cloned().unwrap();
    assert!(
        tombstone.hidden && tombstone.text.is_empty(),
        "the stored record keeps no text, only the id: {tombstone:?}"
    );
    // The sender's later edit of it is discarded here, applied elsewhere.
    let later = w.now;
    w.app("X1")
        .edit_message(key, "edited", later, &mut rng)
        .unwrap();
    w.run();
    assert_eq!(seen(&w, &["Y1"], &to_x, key), [None]);
    assert_eq!(
        seen(&w, &["Y2"], &to_x, key),
        [Some(("edited".to_owned(), Some(later), None))]
    );
}

#[test]
fn a_new_device_gets_edited_messages_marked_reactions_and_no_deleted_ones() {
    let (mut w, to_y, _, key) = world();
    let x: Identity = key.sender;
    let now = w.now;
    let mut rng = rand::thread_rng();
    let gone = w.app("X1").send_text(to_y, "oops", now, &mut rng).unwrap();
    w.run();
    w.advance(5_000);
    let at = w.now;
    w.app("X1")
        .edit_message(key, "hello again", at, &mut rng)
        .unwrap();
    w.app("X1")
        .delete_message(gone, true, at, &mut rng)
        .unwrap();
    let ConversationId::Contact(y) = to_y else {
        panic!()
    };
    w.app("Y1").react(key, "👍", true, at, &mut rng).unwrap();
    w.app("X2").react(key, "🎉", true, at, &mut rng).unwrap();
    w.run();
    w.device("X3", x);
    w.connect("X3");
    let on_x3 = w.conversation("X3", &to_y);
    assert_eq!(on_x3.len(), 1, "the deleted message is not sent: {on_x3:?}");
    assert_eq!(
        seen(&w, &["X3"], &to_y, key),
        [Some(("hello again".to_owned(), Some(at), None))]
    );
    let on_x1 = reactions(&w, "X1", &to_y, key);
    assert_eq!(reactions(&w, "X3", &to_y, key), on_x1, "the reactions too");
    let mut sorted = on_x1;
    sorted.sort();
    assert_eq!(sorted, [(x, "🎉".to_owned()), (y, "👍".to_owned())]);
    assert_eq!(
        summary(&on_x3),
        summary(
            &w.conversation("X1", &to_y)
                .into_iter()
                .filter(|m| m.key != gone)
                .collect::<Vec<_>>()
        )
    );
}

/// The reactions on message `key` in `conversation` on a device.
fn reactions(
    w: &World,
    name: &str,
    conversation: &ConversationId,
    key: MessageKey,
) -> Vec<(Identity, String)> {
    w.conversation(name, conversation)
        .into_iter()
        .find(|m| m.key == key)
        .map(|m| m.reactions)
        .unwrap_or_default()
}

#[test]
fn reactions_are_put_on_and_taken_off_for_everyone_and_every_device() {
    let (mut w, to_y, to_x, key) = world();
    let x = key.sender;
    let ConversationId::Contact(y) = to_y else {
        panic!()
    };
    let now = w.now;
    let mut rng = rand::thread_rng();
    // Y reacts to X's message (anyone may), X to its own; one person may put several.
    w.app("Y1").react(key, "👍", true, now, &mut rng).unwrap();
    w.app("Y2").react(key, "😂", true, now, &mut rng).unwrap();
    w.app("X2").react(key, "❤️", true, now, &mut rng).unwrap();
    w.run();
    let all = vec![
        (y, "👍".to_owned()),
        (y, "😂".to_owned()),
        (x, "❤️".to_owned()),
    ];
    for (name, conversation) in [("X1", &to_y), ("X2", &to_y), ("Y1", &to_x), ("Y2", &to_x)] {
        let mut seen = reactions(&w, name, conversation, key);
        seen.sort();
        let mut want = all.clone();
        want.sort();
        assert_eq!(seen, want, "{name}");
    }
    // Taken off again (from the other device of Y); a second "put on" changes nothing.
    w.app("Y2").react(key, "👍", false, now, &mut rng).unwrap();
    w.app("Y1").react(key, "😂", true, now, &mut rng).unwrap();
    w.run();
    for (name, conversation) in [("X1", &to_y), ("Y1", &to_x), ("Y2", &to_x)] {
        let mut seen = reactions(&w, name, conversation, key);
        seen.sort();
        assert_eq!(seen, [(x, "❤️".to_owned()), (y, "😂".to_owned())], "{name}");
    }
    assert_eq!(
        w.app("Y1").react(key, "", true, now, &mut rng),
        Err(AppError::InvalidReaction)
    );
    assert_eq!(
        w.app("Y1")
            .react(key, &"👍".repeat(17), true, now, &mut rng),
        Err(AppError::InvalidReaction),
        "68 bytes: over Threema's 64"
    );
    // Kept in the store; a delete for everyone takes them with the text.
    w.crash("Y1");
    w.reopen("Y1");
    w.connect("Y1");
    assert_eq!(reactions(&w, "Y1", &to_x, key).len(), 2);
    let later = w.now;
    w.app("X1")
        .delete_message(key, true, later, &mut rng)
        .unwrap();
    w.run();
    assert!(reactions(&w, "Y2", &to_x, key).is_empty());
    assert_eq!(
        w.app("Y1").react(key, "👍", true, later, &mut rng),
        Err(AppError::UnknownMessage),
        "no reactions on a deleted message"
    );
}

#[test]
fn group_reactions_reach_every_member() {
    let (mut w, [_, y, z], group) = app_support::trio(7);
    let conversation = ConversationId::Group(group);
    let now = w.now;
    let mut rng = rand::thread_rng();
    let key = w
        .app("X1")
        .send_text(conversation, "vote", now, &mut rng)
        .unwrap();
    w.run();
    w.app("Y1").react(key, "👍", true, now, &mut rng).unwrap();
    w.app("Z1").react(key, "👎", true, now, &mut rng).unwrap();
    w.run();
    for name in ["X1", "X2", "Y1", "Z1"] {
        let mut seen = reactions(&w, name, &conversation, key);
        seen.sort();
        assert_eq!(seen, [(y, "👍".to_owned()), (z, "👎".to_owned())], "{name}");
    }
}

/// A reaction from the chat server as a current Threema client sends it (`Reaction` with
/// `apply`, then `withdraw`), and one for a message that is not there (discarded).
#[test]
fn a_threema_reaction_applies_and_one_for_an_unknown_message_is_discarded() {
    let (mut w, to_y, _, key) = world();
    let x = key.sender;
    let ConversationId::Contact(y) = to_y else {
        panic!()
    };
    let thumbs = "👍".as_bytes().to_vec();
    let bodies = [
        csp_e2e::Reaction {
            message_id: key.id,
            action: Some(csp_e2e::reaction::Action::Apply(thumbs.clone())),
        },
        csp_e2e::Reaction {
            message_id: 4_242,
            action: Some(csp_e2e::reaction::Action::Apply(thumbs)),
        },
    ];
    w.take_events("X1");
    let bodies: Vec<(E2eMessageType, Vec<u8>)> = bodies
        .iter()
        .map(|b| (E2eMessageType::REACTION, b.encode_to_vec()))
        .collect();
    enqueue_from_y(&mut w, (y, x), &bodies, 9_101, 0x61);
    w.run();
    for name in ["X1", "X2"] {
        assert_eq!(
            reactions(&w, name, &to_y, key),
            [(y, "👍".to_owned())],
            "{name}"
        );
    }
    let dropped: Vec<AppEvent> = w
        .take_events("X1")
        .into_iter()
        .filter(|e| matches!(e, AppEvent::Dropped(_)))
        .collect();
    assert_eq!(
        dropped,
        [AppEvent::Dropped(Dropped::UnknownMessage(
            E2eMessageType::REACTION
        ))]
    );
}

/// Threema's legacy reactions: a delivery receipt ACKNOWLEDGED is a 👍, DECLINED a 👎, and each
/// replaces all of the sender's reactions on the message (what Threema sends to an app without
/// reaction support).
#[test]
fn acknowledge_and_decline_receipts_are_thumbs_that_replace_the_senders_reactions() {
    use tandem_shared::csp::{DeliveryReceipt, DeliveryStatus};
    let (mut w, to_y, _, key) = world();
    let x = key.sender;
    let ConversationId::Contact(y) = to_y else {
        panic!()
    };
    let now = w.now;
    w.app("Y1")
        .react(key, "😂", true, now, &mut rand::thread_rng())
        .unwrap();
    w.run();
    let receipt = |status| {
        vec![(
            E2eMessageType::DELIVERY_RECEIPT,
            DeliveryReceipt::new(status, vec![key.id]).unwrap().encode(),
        )]
    };
    for (i, (status, thumb)) in [
        (DeliveryStatus::Acknowledged, "👍"),
        (DeliveryStatus::Declined, "👎"),
    ]
    .into_iter()
    .enumerate()
    {
        let i = u8::try_from(i).unwrap();
        enqueue_from_y(
            &mut w,
            (y, x),
            &receipt(status),
            9_201 + u64::from(i),
            0x71 + i,
        );
        w.run();
        for name in ["X1", "X2"] {
            assert_eq!(
                reactions(&w, name, &to_y, key),
                [(y, thumb.to_owned())],
                "{name}"
            );
        }
    }
}
