//! 1:1 text, receipts and typing between devices of two identities, through the real mediator
//! state machine and a test chat server (see `app_support`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use app_support::{summary, World};
use tandem_shared::app::{
    AppEvent, ConversationId, Direction, Dropped, MessageState, ReconnectDecision, RecordKind,
};

/// X has devices X1 and X2, Y has Y1; everyone is online and knows everyone (Y learns X
/// from X's first message, except where a test adds it first).
fn world() -> (World, ConversationId, ConversationId) {
    let mut w = World::new(1);
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    w.device("X1", x);
    w.device("X2", x);
    w.device("Y1", y);
    w.connect("X1");
    w.connect("X2");
    w.connect("Y1");
    w.app("X1").add_contact(y).unwrap();
    w.run();
    (w, ConversationId::Contact(y), ConversationId::Contact(x))
}

fn states(w: &World, device: &str, conversation: &ConversationId) -> Vec<MessageState> {
    w.conversation(device, conversation)
        .iter()
        .map(|m| m.state)
        .collect()
}

#[test]
fn first_device_leads_and_siblings_learn_the_added_contact() {
    let (mut w, to_y, _) = world();
    assert!(w.app("X1").is_leader());
    assert!(!w.app("X2").is_leader());
    let ConversationId::Contact(y) = to_y else {
        panic!()
    };
    assert!(w.app("X1").state().contact(&y).is_some());
    assert_eq!(
        w.app_ref("X2").state().contact(&y),
        w.app_ref("X1").state().contact(&y),
        "the contact reached the sibling through CONTACT_SYNC"
    );
}

#[test]
fn text_is_sent_received_and_read_on_every_device() {
    let (mut w, to_y, to_x) = world();
    let now = w.now;
    let key = w
        .app("X1")
        .send_text(to_y, "hello Y", now, &mut rand::thread_rng())
        .unwrap();
    w.run();

    let on_x1 = w.conversation("X1", &to_y);
    let on_x2 = w.conversation("X2", &to_y);
    assert_eq!(on_x1.len(), 1);
    assert_eq!(on_x1[0].key, key);
    assert_eq!(on_x1[0].text, "hello Y");
    assert_eq!(on_x1[0].direction, Direction::Outgoing);
    assert!(on_x1[0].reflected_at.is_some());
    assert!(
        on_x1[0].pending.is_empty(),
        "nonces are forgotten once sent"
    );
    assert_eq!(summary(&on_x1), summary(&on_x2), "X2 shows it too");
    assert_eq!(
        states(&w, "X1", &to_y),
        vec![MessageState::Delivered],
        "Y's delivery receipt arrived"
    );

    let on_y = w.conversation("Y1", &to_x);
    assert_eq!(on_y.len(), 1);
    assert_eq!(on_y[0].key, key, "same sender and id on the receiving side");
    assert_eq!(on_y[0].text, "hello Y");
    assert_eq!(on_y[0].state, MessageState::Received);
    assert_eq!(w.chat.queued(&w.devices["Y1"].identity), 0, "acked");

    let now = w.now;
    assert_eq!(w.app("Y1").mark_read(to_x, now, &mut rand::thread_rng()), 1);
    w.run();
    assert_eq!(states(&w, "Y1", &to_x), vec![MessageState::Read]);
    assert_eq!(states(&w, "X1", &to_y), vec![MessageState::Read]);
    assert_eq!(states(&w, "X2", &to_y), vec![MessageState::Read]);
}

#[test]
fn offline_sibling_catches_up_to_exactly_the_same_conversation() {
    let (mut w, to_y, to_x) = world();
    w.disconnect("X2");
    let mut rng = rand::thread_rng();
    for i in 0..6 {
        w.advance(1_000);
        let now = w.now;
        if i % 2 == 0 {
            w.app("X1")
                .send_text(to_y, &format!("x{i}"), now, &mut rng)
                .unwrap();
        } else {
            w.app("Y1")
                .send_text(to_x, &format!("y{i}"), now, &mut rng)
                .unwrap();
        }
        w.run();
    }
    let now = w.now;
    w.app("X1").mark_read(to_y, now, &mut rng);
    w.app("Y1").mark_read(to_x, now, &mut rng);
    w.run();
    let x1 = summary(&w.conversation("X1", &to_y));
    assert_eq!(x1.len(), 6);
    assert_eq!(x1.last().unwrap().4, MessageState::Read);
    assert!(w.conversation("X2", &to_y).is_empty());

    w.connect("X2");
    assert_eq!(summary(&w.conversation("X2", &to_y)), x1);
    let events = w.take_events("X2");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AppEvent::Loading { total, .. } if *total > 0)),
        "{events:?}"
    );
}

#[test]
fn replayed_message_reused_nonce_and_duplicate_id_are_rejected() {
    let (mut w, to_y, to_x) = world();
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("X1").send_text(to_y, "once", now, &mut rng).unwrap();
    w.run();
    let original = w
        .chat
        .log
        .iter()
        .find(|m| m.receiver == *b"YYYYYYYY")
        .unwrap()
        .clone();
    w.take_events("Y1");

    // The very same bytes again.
    w.chat.enqueue(original.clone());
    w.run();
    // A fresh message under the same id (a sender reusing ids, or a forgery attempt).
    let x = w.devices["X1"].identity;
    let y = w.devices["Y1"].identity;
    let y_key = w.client_key(&y).public_key();
    let sealed = |id: u64, nonce: [u8; 24], text: &str, rng: &mut rand::rngs::ThreadRng| {
        tandem_shared::csp::seal_message_with_nonce(
            &w.client_key(&x),
            &tandem_shared::csp::MessageToSeal {
                sender: *x.as_bytes(),
                receiver: *y.as_bytes(),
                receiver_public_key: y_key,
                message_id: id,
                created_at_ms: 1,
                flags: tandem_shared::csp::MessageFlags::NONE,
                nickname: None,
                message_type: tandem_shared::csp::E2eMessageType::TEXT,
                body: text.as_bytes(),
            },
            &nonce,
            rng,
        )
        .unwrap()
    };
    let duplicate_id = sealed(original.message_id, [7; 24], "other text", &mut rng);
    let reused_nonce = sealed(4242, original.nonce, "new id, old nonce", &mut rng);
    w.chat.enqueue(duplicate_id);
    w.chat.enqueue(reused_nonce);
    w.run();

    let on_y = w.conversation("Y1", &to_x);
    assert_eq!(on_y.len(), 1, "nothing duplicated: {on_y:?}");
    assert_eq!(on_y[0].text, "once");
    assert_eq!(w.chat.queued(&y), 0, "every copy was acked away");
    let dropped: Vec<AppEvent> = w
        .take_events("Y1")
        .into_iter()
        .filter(|e| matches!(e, AppEvent::Dropped(_)))
        .collect();
    assert_eq!(
        dropped,
        vec![AppEvent::Dropped(Dropped::ReplayedNonce)],
        "the replay and the duplicate id are acked as known; the new id with an old nonce is \
         a replay"
    );
}

#[test]
fn unconfirmed_batch_blocks_the_ack_and_a_crash_brings_the_message_again_stored_once() {
    let (mut w, to_y, to_x) = world();
    w.device("Y2", w.devices["Y1"].identity);
    w.connect("Y2");
    let y = w.devices["Y1"].identity;
    let x = w.devices["X1"].identity;
    w.app("Y1").add_contact(x).unwrap();
    w.run();
    // Y1 stops confirming: its adapter is slow, then the tab dies.
    w.dev("Y1").confirm_budget = Some(0);
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("X1")
        .send_text(to_y, "survives", now, &mut rng)
        .unwrap();
    w.run();
    assert_eq!(w.conversation("Y1", &to_x).len(), 1, "shown at once");
    assert!(w.app("Y1").held_transmits() > 0, "reflect and ack wait");
    assert_eq!(w.chat.queued(&y), 1, "not acked to the chat server");
    assert!(w.conversation("Y2", &to_x).is_empty(), "not reflected yet");

    w.crash("Y1");
    w.reopen("Y1");
    assert!(w.conversation("Y1", &to_x).is_empty(), "the batch was lost");
    w.connect("Y1");
    // Y2 is leader now: it takes the message over.
    assert_eq!(w.chat.queued(&y), 0);
    assert_eq!(w.conversation("Y1", &to_x).len(), 1);
    assert_eq!(w.conversation("Y2", &to_x).len(), 1);
}

#[test]
fn crash_after_the_message_is_durable_but_before_the_ack_re_reflects_once() {
    let (mut w, to_y, to_x) = world();
    let y = w.devices["Y1"].identity;
    w.device("Y2", y);
    w.connect("Y2");
    let x = w.devices["X1"].identity;
    w.app("Y1").add_contact(x).unwrap();
    w.run();
    w.disconnect("Y2");
    // Y1 confirms the message batch, then nothing more (the ack batch stays unconfirmed).
    w.dev("Y1").confirm_budget = Some(1);
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("X1")
        .send_text(to_y, "exactly once", now, &mut rng)
        .unwrap();
    w.run();
    assert_eq!(w.chat.queued(&y), 1, "the ack waits for the second batch");
    w.crash("Y1");
    w.reopen("Y1");
    let stored = w.conversation("Y1", &to_x);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].reflected_at, None,
        "its reflection was never confirmed"
    );
    w.connect("Y1");
    assert_eq!(w.chat.queued(&y), 0);
    let stored = w.conversation("Y1", &to_x);
    assert_eq!(stored.len(), 1);
    assert!(stored[0].reflected_at.is_some());
    w.connect("Y2");
    assert_eq!(
        summary(&w.conversation("Y2", &to_x)),
        summary(&w.conversation("Y1", &to_x)),
        "the sibling got the reflection twice and stored it once"
    );
}

#[test]
fn tampered_reflection_is_dropped_and_acked_away() {
    let (mut w, to_y, _) = world();
    w.dev("X2").tamper_next_reflected = true;
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("X1")
        .send_text(to_y, "tampered", now, &mut rng)
        .unwrap();
    w.run();
    let events = w.take_events("X2");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AppEvent::Dropped(Dropped::UndecryptableEnvelope(_)))),
        "{events:?}"
    );
    // The OutgoingMessage was the tampered one; the later `sent` update finds no message.
    assert!(w.conversation("X2", &to_y).is_empty());
    w.disconnect("X2");
    w.connect("X2");
    let events = w.take_events("X2");
    assert!(
        !events.iter().any(|e| matches!(e, AppEvent::Loading { .. })),
        "nothing was left in the queue: {events:?}"
    );
    // Later messages still arrive.
    let now = w.now;
    w.app("X1").send_text(to_y, "after", now, &mut rng).unwrap();
    w.run();
    assert_eq!(w.conversation("X2", &to_y).len(), 1);
}

#[test]
fn replayed_reflection_is_dropped_without_changing_state() {
    let (mut w, to_y, _) = world();
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("X1").send_text(to_y, "one", now, &mut rng).unwrap();
    w.run();
    let before = w.app("X2").state().clone();
    let mut replay = w.devices["X2"].last_reflected.clone().unwrap();
    // Same sealed envelope, a new reflected id (as a malicious mediator would send it).
    replay[8..12].copy_from_slice(&9_999_u32.to_le_bytes());
    w.take_events("X2");
    let now = w.now;
    let app = w.app("X2");
    app.on_binary(&replay, now, &mut rng);
    // The ack for the injected id must not reach the real mediator.
    while app.poll_transmit().is_some() {}
    let mut events = Vec::new();
    while let Some(e) = app.poll_event() {
        events.push(e);
    }
    assert_eq!(events, vec![AppEvent::Dropped(Dropped::ReplayedEnvelope)]);
    let mut after = w.app("X2").state().clone();
    assert_eq!(
        after.messages(),
        before.messages(),
        "the replay changed nothing"
    );
    let _ = &mut after;
}

#[test]
fn typing_indicators_reach_the_contact_and_its_siblings_and_are_never_stored() {
    let (mut w, _, to_x) = world();
    let y = w.devices["Y1"].identity;
    w.device("Y2", y);
    w.connect("Y2");
    let x = w.devices["X1"].identity;
    w.app("Y2").add_contact(x).unwrap();
    w.run();
    for name in ["X1", "X2", "Y1", "Y2"] {
        w.take_events(name);
    }
    let messages_before = w.devices["X1"].store.count(RecordKind::Message);
    let now = w.now;
    w.app("Y1")
        .send_typing(x, true, now, &mut rand::thread_rng())
        .unwrap();
    w.run();
    let typing = AppEvent::Typing {
        identity: y,
        typing: true,
    };
    assert!(w.take_events("X1").contains(&typing), "the leader");
    assert!(
        w.take_events("X2").contains(&typing),
        "its sibling, ephemeral"
    );
    assert_eq!(
        w.devices["X1"].store.count(RecordKind::Message),
        messages_before
    );
    assert!(w.conversation("X1", &ConversationId::Contact(y)).is_empty());
    assert_eq!(w.chat.queued(&x), 0, "typing is never queued");
    let _ = to_x;
}

#[test]
fn read_receipts_follow_the_policy() {
    let (mut w, to_y, to_x) = world();
    let mut rng = rand::thread_rng();
    let now = w.now;
    w.app("Y1").update_settings(
        tandem_shared::proto::sync::Settings {
            read_receipt_policy: Some(
                tandem_shared::proto::sync::ReadReceiptPolicy::DontSendReadReceipt.into(),
            ),
            ..Default::default()
        },
        now,
        &mut rng,
    );
    w.run();
    w.app("X1")
        .send_text(to_y, "secret read", now, &mut rng)
        .unwrap();
    w.run();
    w.app("Y1").mark_read(to_x, now, &mut rng);
    w.run();
    assert_eq!(states(&w, "Y1", &to_x), vec![MessageState::Read]);
    assert_eq!(
        states(&w, "X1", &to_y),
        vec![MessageState::Delivered],
        "no read receipt went out"
    );
}

/// Spec §12: the server's time in login-ack; the device tells the user when its clock is more
/// than 20 minutes off, and says nothing when the server sent no time (old layout) or the clocks
/// agree well enough.
#[test]
fn a_clock_off_by_more_than_twenty_minutes_is_reported_once_per_login() {
    let clock_events = |w: &mut World, name: &str| -> Vec<i64> {
        w.take_events(name)
            .into_iter()
            .filter_map(|e| match e {
                AppEvent::ClockOffset { offset_ms } => Some(offset_ms),
                _ => None,
            })
            .collect()
    };
    let mut w = World::new(7);
    let x = w.identity("XXXXXXXX");
    w.device("X1", x);
    w.device("X2", x);
    w.device("X3", x);
    // Old layout (zero time): unknown, no notice.
    w.connect("X1");
    w.run();
    assert!(w.app("X1").is_leader(), "the CSP login went through");
    assert_eq!(clock_events(&mut w, "X1"), Vec::<i64>::new());
    // 19 minutes off: within the bound.
    w.chat.login_ack_time_ms = Some(w.now + 19 * 60 * 1000);
    w.connect("X2");
    w.run();
    assert_eq!(clock_events(&mut w, "X2"), Vec::<i64>::new());
    // The server is 21 minutes ahead: this device is behind, negative offset.
    w.chat.login_ack_time_ms = Some(w.now + 21 * 60 * 1000);
    w.connect("X3");
    w.run();
    assert_eq!(clock_events(&mut w, "X3"), vec![-21 * 60 * 1000]);
}

/// A chat server of before protocol version 23 reads the feature byte as a payload version and
/// refuses 3 with a close-error that forbids reconnecting. The device treats that one refusal
/// as reconnectable and announces Desktop's `1` from then on, so it logs in on the next try
/// (docs/protocol.md "Protocol version 23").
#[test]
fn an_old_chat_server_refusing_feature_bits_gets_desktops_byte_on_the_next_login() {
    let mut w = World::new(8);
    let x = w.identity("XXXXXXXX");
    w.device("X1", x);
    w.chat.payload_version_only = true;
    w.connect("X1");
    w.run();
    assert_eq!(w.chat.logins, vec![Some(3)]);
    let events = w.take_events("X1");
    assert!(
        events.iter().any(|e| matches!(
            e,
            AppEvent::Disconnected {
                next: ReconnectDecision::RetryAt(_),
                ..
            }
        )),
        "{events:?}"
    );
    assert!(!w.app("X1").is_leader());
    w.connect("X1");
    w.run();
    assert_eq!(w.chat.logins, vec![Some(3), Some(1)]);
    assert!(w.app("X1").is_leader(), "logged in with Desktop's byte");
}

/// Protocol version 23's message types Tandem does not act on (group call start, Work sync
/// delta; docs/protocol.md — edits, deletes and reactions it does act on since issue 15, tested
/// in `app_updates.rs`): from the chat server each is acked and dropped as `Unsupported` without
/// being stored or reflected; a sibling's reflection of one (as a current Threema device sends
/// it) applies as nothing. The messages around them are untouched.
#[test]
fn protocol_version_23_types_tandem_does_not_act_on_are_acked_and_skipped() {
    use prost::Message as _;
    use tandem_shared::app::Effect as AppEffect;
    use tandem_shared::csp::{
        seal_message_with_nonce, E2eMessageType, MessageFlags, MessageToSeal,
    };
    use tandem_shared::d2d::seal_envelope;
    use tandem_shared::d2m::{D2mMessage, ReflectFlags, Reflected};
    use tandem_shared::keys::DeviceGroupKey;
    use tandem_shared::proto::{common, csp_e2e, d2d};

    let (mut w, to_y, to_x) = world();
    let x = w.devices["X1"].identity;
    let y = w.devices["Y1"].identity;
    w.device("Y2", y);
    w.connect("Y2");
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("X1")
        .send_text(to_y, "before", now, &mut rng)
        .unwrap();
    w.run();
    w.take_events("Y1");

    let bodies: [(E2eMessageType, Vec<u8>); 3] = [
        (
            E2eMessageType::GROUP_CALL_START,
            csp_e2e::GroupCallStart {
                protocol_version: 1,
                gck: vec![7; 32],
                sfu_base_url: "https://sfu.example".to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            E2eMessageType::WORK_SYNC_DELTA,
            csp_e2e::WorkSyncDelta {
                action: Some(csp_e2e::work_sync_delta::Action::RequireWorkSync(
                    common::Unit {},
                )),
            }
            .encode_to_vec(),
        ),
        // Not even a valid body: still only skipped.
        (E2eMessageType::GROUP_CALL_START, vec![0xff]),
    ];
    let y_key = w.client_key(&y).public_key();
    for (i, (message_type, body)) in (1_u8..).zip(&bodies) {
        let sealed = seal_message_with_nonce(
            &w.client_key(&x),
            &MessageToSeal {
                sender: *x.as_bytes(),
                receiver: *y.as_bytes(),
                receiver_public_key: y_key,
                message_id: 7_000 + u64::from(i),
                created_at_ms: now,
                flags: MessageFlags::NONE,
                nickname: None,
                message_type: *message_type,
                body,
            },
            &[i; 24],
            &mut rng,
        )
        .unwrap();
        w.chat.enqueue(sealed);
    }
    let now = w.now;
    w.app("X1").send_text(to_y, "after", now, &mut rng).unwrap();
    w.run();

    for device in ["Y1", "Y2"] {
        let texts: Vec<String> = w
            .conversation(device, &to_x)
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(
            texts,
            ["before", "after"],
            "{device}: nothing edited, deleted or added"
        );
    }
    assert_eq!(w.chat.queued(&y), 0, "every one was acked");
    let dropped: Vec<AppEvent> = w
        .take_events("Y1")
        .into_iter()
        .filter(|e| matches!(e, AppEvent::Dropped(_)))
        .collect();
    let expected: Vec<AppEvent> = bodies
        .iter()
        .map(|(t, _)| AppEvent::Dropped(Dropped::Unsupported(*t)))
        .collect();
    assert_eq!(dropped, expected);

    // A current Threema sibling of X reflects its own group call start and Work sync delta as
    // OutgoingMessage, and as leader an incoming group call start as IncomingMessage.
    let dgrk = DeviceGroupKey::from_client_key(w.client_key(&x).secret())
        .derive_keys()
        .dgrk;
    let ConversationId::Contact(y_identity) = to_y else {
        panic!()
    };
    let conversation = d2d::ConversationId {
        id: Some(d2d::conversation_id::Id::Contact(y_identity.to_string())),
    };
    let outgoing = |(message_type, body): &(E2eMessageType, Vec<u8>)| {
        d2d::envelope::Content::OutgoingMessage(d2d::OutgoingMessage {
            conversation: Some(conversation.clone()),
            message_id: 8_000,
            created_at: now,
            r#type: i32::from(message_type.0),
            body: body.clone(),
            nonces: vec![vec![9; 24]],
            ..Default::default()
        })
    };
    let incoming = d2d::envelope::Content::IncomingMessage(d2d::IncomingMessage {
        sender_identity: y_identity.to_string(),
        message_id: 8_001,
        created_at: now,
        r#type: i32::from(E2eMessageType::GROUP_CALL_START.0),
        body: bodies[0].1.clone(),
        nonce: vec![10; 24],
    });
    let contents = [outgoing(&bodies[0]), outgoing(&bodies[1]), incoming];
    let state_before = w.app("X2").state().messages().clone();
    w.take_events("X2");
    let device = w.dev("X2");
    let app = device.app.as_mut().unwrap();
    for (reflected_id, content) in (9_000_u32..).zip(contents) {
        let envelope = d2d::Envelope {
            device_id: 1,
            protocol_version: tandem_shared::d2d::PROTOCOL_VERSION,
            content: Some(content),
            ..Default::default()
        };
        let sealed = seal_envelope(&dgrk, envelope, &mut rng).unwrap();
        let container = D2mMessage::Reflected(Reflected::new(
            reflected_id,
            ReflectFlags::NONE,
            now,
            sealed,
        ))
        .encode()
        .unwrap();
        app.on_binary(&container, now, &mut rng);
    }
    // Confirm the storage batches here; the ReflectedAcks they release are for ids the real
    // mediator never sent, so they must not reach it.
    loop {
        let mut moved = false;
        while let Some(effect) = app.poll_effect() {
            moved = true;
            if let AppEffect::Persist(batch) = effect {
                let id = batch.id;
                device.store.apply(batch);
                app.on_persisted(id).unwrap();
            }
        }
        while app.poll_transmit().is_some() {
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let mut events = Vec::new();
    while let Some(e) = app.poll_event() {
        events.push(e);
    }
    assert!(
        !events.iter().any(|e| matches!(e, AppEvent::Dropped(_))),
        "applied as nothing, not refused: {events:?}"
    );
    assert_eq!(w.app("X2").state().messages(), &state_before);
    // Later messages still flow both ways.
    let now = w.now;
    w.app("Y2").send_text(to_x, "reply", now, &mut rng).unwrap();
    w.run();
    let on_x2: Vec<String> = w
        .conversation("X2", &to_y)
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(on_x2, ["before", "after", "reply"]);
    assert!(
        !w.take_events("X2")
            .iter()
            .any(|e| matches!(e, AppEvent::Disconnected { .. })),
        "X2 stayed connected"
    );
}
