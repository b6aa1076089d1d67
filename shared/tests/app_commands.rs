//! Commands the core refuses (each `AppError` variant), keepalive, directory outages, devices.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use std::collections::BTreeSet;

use app_support::World;
use tandem_shared::app::{
    AppError, AppEvent, ConversationId, GroupId, Identity, ECHO_INTERVAL_MS, ECHO_TIMEOUT_MS,
    MAX_TEXT_LEN,
};
use tandem_shared::device::DeviceError;

fn world() -> (World, Identity, Identity) {
    let mut w = World::new(6);
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    w.device("X1", x);
    w.device("Y1", y);
    (w, x, y)
}

#[test]
fn every_refused_command_says_why_and_changes_nothing() {
    let (mut w, x, y) = world();
    let mut rng = rand::thread_rng();
    let now = w.now;
    let stranger: Identity = "STRANGER".parse().unwrap();
    let app = w.app("X1");
    assert_eq!(app.add_contact(x), Err(AppError::OwnIdentity));
    assert_eq!(
        app.send_text(ConversationId::Contact(x), "me", now, &mut rng),
        Err(AppError::OwnIdentity)
    );
    assert_eq!(
        app.send_text(ConversationId::Contact(stranger), "hi", now, &mut rng),
        Err(AppError::UnknownContact(stranger))
    );
    assert_eq!(
        app.rename_contact(stranger, Some("S"), None, now, &mut rng),
        Err(AppError::UnknownContact(stranger))
    );
    assert_eq!(
        app.send_typing(stranger, true, now, &mut rng),
        Err(AppError::UnknownContact(stranger))
    );
    assert_eq!(
        app.create_group("g", BTreeSet::from([stranger]), now, &mut rng),
        Err(AppError::UnknownContact(stranger))
    );
    assert_eq!(
        app.create_group("g", BTreeSet::from([x]), now, &mut rng),
        Err(AppError::NoMembers),
        "the own identity is not a member to add"
    );
    assert_eq!(
        app.create_distribution_list("l", BTreeSet::new(), now, &mut rng),
        Err(AppError::NoMembers)
    );
    assert_eq!(
        app.update_distribution_list(7, Some("l"), None, now, &mut rng),
        Err(AppError::UnknownDistributionList(7))
    );
    assert_eq!(
        app.delete_distribution_list(7, now, &mut rng),
        Err(AppError::UnknownDistributionList(7))
    );
    let group = GroupId { creator: y, id: 1 };
    assert_eq!(
        app.send_text(ConversationId::Group(group), "hi", now, &mut rng),
        Err(AppError::UnknownGroup(group))
    );
    assert_eq!(
        app.leave_group(group, now, &mut rng),
        Err(AppError::UnknownGroup(group))
    );
    assert_eq!(
        app.rename_group(group, "n", now, &mut rng),
        Err(AppError::UnknownGroup(group))
    );
    assert_eq!(
        app.send_text(ConversationId::DistributionList(7), "hi", now, &mut rng),
        Err(AppError::UnsupportedConversation(
            ConversationId::DistributionList(7)
        ))
    );
    assert_eq!(app.on_persisted(999), Err(AppError::UnknownBatch(999)));
    assert_eq!(
        app.request_devices(now, &mut rng),
        Err(AppError::NotConnected)
    );
    assert_eq!(
        app.drop_device(1, now, &mut rng),
        Err(AppError::NotConnected)
    );
    app.connect(now, &mut rng).unwrap();
    assert_eq!(app.connect(now, &mut rng), Err(AppError::AlreadyConnected));
    assert_eq!(
        app.request_devices(now, &mut rng),
        Err(AppError::Device(DeviceError::NotOnline)),
        "the handshake has not completed"
    );
    assert!(app.state().messages().is_empty());
    assert_eq!(app.pending_sync(), 0);

    w.dev("X1").conn = None;
    let app = w.app("X1");
    app.on_close(
        tandem_shared::d2m::CloseCode::AbnormalClosure,
        now,
        &mut rng,
    );
    w.connect("X1");
    w.connect("Y1");
    w.app("X1").add_contact(y).unwrap();
    w.run();
    let app = w.app("X1");
    let to_y = ConversationId::Contact(y);
    assert_eq!(
        app.send_text(to_y, "", now, &mut rng),
        Err(AppError::EmptyText)
    );
    let long = "a".repeat(MAX_TEXT_LEN + 1);
    assert_eq!(
        app.send_text(to_y, &long, now, &mut rng),
        Err(AppError::TextTooLong {
            len: MAX_TEXT_LEN + 1,
            max: MAX_TEXT_LEN
        })
    );
    assert_eq!(app.add_contact(y), Err(AppError::ContactExists(y)));
    let group = app
        .create_group("g", BTreeSet::from([y]), now, &mut rng)
        .unwrap();
    w.run();
    w.app("X1").leave_group(group, now, &mut rng).unwrap();
    w.run();
    assert_eq!(
        w.app("X1")
            .send_text(ConversationId::Group(group), "anyone?", now, &mut rng),
        Err(AppError::NotAMember(group))
    );
    let on_y = w.app("Y1");
    assert_eq!(
        on_y.rename_group(group, "mine", now, &mut rng),
        Err(AppError::NotTheCreator(group))
    );
}

#[test]
fn the_longest_text_fits_one_message() {
    let (mut w, _, y) = world();
    w.connect("X1");
    w.connect("Y1");
    w.app("X1").add_contact(y).unwrap();
    w.run();
    let now = w.now;
    let text = "\u{1F600}".repeat(MAX_TEXT_LEN / 4);
    w.app("X1")
        .send_text(
            ConversationId::Contact(y),
            &text,
            now,
            &mut rand::thread_rng(),
        )
        .unwrap();
    w.run();
    let x = w.devices["X1"].identity;
    let got = w.conversation("Y1", &ConversationId::Contact(x));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, text);
}

#[test]
fn chat_server_connection_is_kept_alive_with_echoes() {
    let (mut w, _, _) = world();
    w.connect("X1");
    let now = w.now;
    let app = w.app("X1");
    assert_eq!(app.poll_timeout(), Some(now + ECHO_INTERVAL_MS));
    while app.poll_transmit().is_some() {}
    app.on_timeout(now + ECHO_INTERVAL_MS - 1, &mut rand::thread_rng());
    assert_eq!(app.poll_transmit(), None);
    app.on_timeout(now + ECHO_INTERVAL_MS, &mut rand::thread_rng());
    let echo = app
        .poll_transmit()
        .expect("an echo-request in a proxy container");
    assert_eq!(echo[0], 0x00, "proxy container");
    // Next: the echo's deadline, before the next echo.
    assert_eq!(
        app.poll_timeout(),
        Some(now + ECHO_INTERVAL_MS + ECHO_TIMEOUT_MS)
    );
}

#[test]
fn an_answered_echo_keeps_the_connection() {
    let (mut w, _, _) = world();
    w.connect("X1");
    w.advance(ECHO_INTERVAL_MS);
    let now = w.now;
    w.app("X1").on_timeout(now, &mut rand::thread_rng());
    w.run();
    w.advance(ECHO_TIMEOUT_MS);
    let now = w.now;
    w.app("X1").on_timeout(now, &mut rand::thread_rng());
    w.run();
    assert!(w.app_ref("X1").is_connected(), "the chat server answered");
    assert_eq!(
        w.app_ref("X1").poll_timeout(),
        Some(now - ECHO_TIMEOUT_MS + ECHO_INTERVAL_MS),
        "only the next echo is due"
    );
}

#[test]
fn an_unanswered_echo_ends_a_half_open_connection() {
    let (mut w, _, _) = world();
    w.connect("X1");
    let now = w.now;
    let app = w.app("X1");
    app.on_timeout(now + ECHO_INTERVAL_MS, &mut rand::thread_rng());
    // The path swallows the echo-request: no answer ever comes, no socket closes.
    while app.poll_transmit().is_some() {}
    while app.poll_effect().is_some() {}
    app.on_timeout(
        now + ECHO_INTERVAL_MS + ECHO_TIMEOUT_MS - 1,
        &mut rand::thread_rng(),
    );
    assert!(app.is_connected());
    app.on_timeout(
        now + ECHO_INTERVAL_MS + ECHO_TIMEOUT_MS,
        &mut rand::thread_rng(),
    );
    assert!(!app.is_connected());
    let code = tandem_shared::d2m::CloseCode::CspClosed;
    let effects: Vec<_> = std::iter::from_fn(|| app.poll_effect()).collect();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, tandem_shared::app::Effect::CloseWebSocket(c) if *c == code)),
        "{effects:?}"
    );
    let events: Vec<_> = std::iter::from_fn(|| app.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            AppEvent::Disconnected {
                code: c,
                next: tandem_shared::app::ReconnectDecision::RetryAt(_)
            } if *c == code
        )),
        "{events:?}"
    );
}

#[test]
fn directory_outage_leaves_the_message_for_later() {
    let (mut w, x, y) = world();
    w.connect("X1");
    w.connect("Y1");
    w.app("X1").add_contact(y).unwrap();
    w.run();
    w.dev("Y1").directory_down = true;
    let now = w.now;
    w.app("X1")
        .send_text(
            ConversationId::Contact(y),
            "patience",
            now,
            &mut rand::thread_rng(),
        )
        .unwrap();
    w.run();
    assert!(w.conversation("Y1", &ConversationId::Contact(x)).is_empty());
    assert_eq!(w.chat.queued(&y), 1, "not acked, not dropped");
    w.app("Y1").add_contact(x).unwrap();
    w.run();
    assert!(w.take_events("Y1").contains(&AppEvent::LookupFailed(x)));

    w.dev("Y1").directory_down = false;
    w.disconnect("Y1");
    w.connect("Y1");
    assert_eq!(w.conversation("Y1", &ConversationId::Contact(x)).len(), 1);
    assert_eq!(w.chat.queued(&y), 0);
}

#[test]
fn devices_are_listed() {
    let (mut w, x, _) = world();
    w.device("X2", x);
    w.connect("X1");
    w.connect("X2");
    let now = w.now;
    w.app("X1")
        .request_devices(now, &mut rand::thread_rng())
        .unwrap();
    w.run();
    let events = w.take_events("X1");
    let Some(AppEvent::Devices(devices)) =
        events.iter().find(|e| matches!(e, AppEvent::Devices(_)))
    else {
        panic!("{events:?}")
    };
    let labels: BTreeSet<String> = devices
        .iter()
        .map(|d| d.info.as_ref().unwrap().label.clone())
        .collect();
    assert_eq!(labels, BTreeSet::from(["X1".to_owned(), "X2".to_owned()]));
}
