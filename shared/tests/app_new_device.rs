//! A new device gets its state from its siblings (DESIGN §2.4), and the connection's life:
//! reconnect with backoff, stop on 41xx, restarts resume where they stopped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use std::collections::BTreeSet;

use app_support::{summary, World};
use tandem_shared::app::{
    AppEvent, ConversationId, Effect, MessageState, ReconnectDecision, StopReason,
};
use tandem_shared::d2m::CloseCode;
use tandem_shared::proto::sync;

/// X1 has a full life: contacts, a group, a list, settings, a nickname and a history with Y
/// in every state.
fn lived_in() -> World {
    let mut w = World::new(4);
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    let z = w.identity("ZZZZZZZZ");
    w.device("X1", x);
    w.device("Y1", y);
    w.device("Z1", z);
    for name in ["X1", "Y1", "Z1"] {
        w.connect(name);
    }
    let mut rng = rand::thread_rng();
    w.app("X1").add_contact(y).unwrap();
    w.app("X1").add_contact(z).unwrap();
    w.run();
    let now = w.now;
    w.app("X1").set_nickname("Xena", now, &mut rng);
    w.app("X1").update_settings(
        sync::Settings {
            unknown_contact_policy: Some(sync::settings::UnknownContactPolicy::AllowUnknown.into()),
            read_receipt_policy: Some(sync::ReadReceiptPolicy::SendReadReceipt.into()),
            ..Default::default()
        },
        now,
        &mut rng,
    );
    w.app("X1")
        .create_group("team", BTreeSet::from([y, z]), now, &mut rng)
        .unwrap();
    w.app("X1")
        .create_distribution_list("all", BTreeSet::from([y, z]), now, &mut rng)
        .unwrap();
    w.run();
    let to_y = ConversationId::Contact(y);
    let to_x = ConversationId::Contact(x);
    for i in 0..4 {
        w.advance(1_000);
        let now = w.now;
        w.app("X1")
            .send_text(to_y, &format!("x{i}"), now, &mut rng)
            .unwrap();
        w.app("Y1")
            .send_text(to_x, &format!("y{i}"), now, &mut rng)
            .unwrap();
        w.run();
        if i == 1 {
            let now = w.now;
            w.app("Y1").mark_read(to_x, now, &mut rng);
            w.app("X1").mark_read(to_y, now, &mut rng);
            w.run();
        }
    }
    // The last one stays pending: Y's chat server session is gone.
    w.disconnect("Y1");
    w.crash("Y1");
    let states: BTreeSet<MessageState> = w
        .conversation("X1", &to_y)
        .iter()
        .map(|m| m.state)
        .collect();
    assert_eq!(
        states,
        BTreeSet::from([
            MessageState::Received,
            MessageState::Read,
            MessageState::Delivered
        ]),
        "a history in several states"
    );
    w
}

#[test]
fn new_device_receives_state_and_history_from_a_sibling() {
    let mut w = lived_in();
    let x = w.devices["X1"].identity;
    w.device("X2", x);
    w.connect("X2");
    let events = w.take_events("X1");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AppEvent::NewDeviceSyncSent { messages: 8, .. })),
        "{events:?}"
    );
    let a = w.app_ref("X1").state();
    let b = w.app_ref("X2").state();
    assert_eq!(a.contacts(), b.contacts());
    assert_eq!(a.groups(), b.groups());
    assert_eq!(a.distribution_lists(), b.distribution_lists());
    assert_eq!(a.settings(), b.settings());
    assert_eq!(a.profile(), b.profile());
    let y = w.devices["Y1"].identity;
    let to_y = ConversationId::Contact(y);
    assert_eq!(
        summary(&w.conversation("X2", &to_y)),
        summary(&w.conversation("X1", &to_y))
    );
    assert!(
        !w.app_ref("X2").state().own().wants_new_device_sync,
        "asked once"
    );

    // Asked once: reconnecting asks nothing again, and the siblings replay nothing.
    w.disconnect("X2");
    w.connect("X2");
    assert!(!w
        .take_events("X1")
        .iter()
        .any(|e| matches!(e, AppEvent::NewDeviceSyncSent { .. })));
}

/// The same new device, asking for `cap` history messages.
fn with_history_cap(w: &mut World, name: &str, cap: u32) {
    let identity = w.devices[name].identity;
    let mut config = w.devices[name].config.clone();
    config.max_history_messages = cap;
    let key = w.client_key(&identity);
    let app = tandem_shared::app::App::create(identity, key, config.clone(), &mut w.rng);
    let device = w.dev(name);
    device.app = Some(app);
    device.config = config;
    w.run();
}

#[test]
fn history_is_capped_to_the_most_recent_messages() {
    let mut w = lived_in();
    let x = w.devices["X1"].identity;
    w.device("X2", x);
    with_history_cap(&mut w, "X2", 3);
    w.connect("X2");
    let y = w.devices["Y1"].identity;
    let to_y = ConversationId::Contact(y);
    let all = summary(&w.conversation("X1", &to_y));
    assert_eq!(
        summary(&w.conversation("X2", &to_y)),
        all[all.len() - 3..].to_vec()
    );
    assert_eq!(
        w.app_ref("X2").state().contacts(),
        w.app_ref("X1").state().contacts(),
        "state is complete whatever the history cap"
    );
}

#[test]
fn sibling_restart_does_not_mark_a_reflected_pending_message_sent() {
    let mut w = lived_in();
    let x = w.devices["X1"].identity;
    w.device("X2", x);
    w.connect("X2");
    let y = w.devices["Y1"].identity;
    let to_y = ConversationId::Contact(y);
    // X1's adapter confirms the message, then stalls: the reflect goes out, the CSP send
    // (behind the reflected-at batch) does not.
    w.dev("X1").confirm_budget = Some(1);
    let now = w.now;
    let key = w
        .app("X1")
        .send_text(to_y, "in flight", now, &mut rand::thread_rng())
        .unwrap();
    w.run();
    let state_of = |w: &World, name: &str| {
        w.conversation(name, &to_y)
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.state)
    };
    assert_eq!(state_of(&w, "X2"), Some(MessageState::Pending));
    w.crash("X2");
    w.reopen("X2");
    w.connect("X2");
    assert_eq!(
        state_of(&w, "X2"),
        Some(MessageState::Pending),
        "a sibling never decides that X1's message is sent"
    );
    assert_eq!(state_of(&w, "X1"), Some(MessageState::Pending));
    w.release("X1");
    assert_eq!(state_of(&w, "X1"), Some(MessageState::Sent));
    assert_eq!(state_of(&w, "X2"), Some(MessageState::Sent));
}

#[test]
fn drops_reconnect_with_backoff_and_41xx_waits_for_the_user() {
    let mut w = World::new(5);
    let x = w.identity("XXXXXXXX");
    w.device("X1", x);
    w.device("X2", x);
    w.connect("X1");
    w.connect("X2");
    w.take_events("X1");
    w.disconnect("X1");
    let events = w.take_events("X1");
    let Some(AppEvent::Disconnected {
        next: ReconnectDecision::RetryAt(at),
        ..
    }) = events.last()
    else {
        panic!("{events:?}")
    };
    let at = *at;
    let policy = tandem_shared::app::ReconnectPolicy::default();
    assert!(
        (w.now + policy.floor_ms..=w.now + policy.bound_ms(1)).contains(&at),
        "first retry within the first window: {}",
        at - w.now
    );
    let app = w.app("X1");
    assert_eq!(app.poll_timeout(), Some(at));
    let mut rng = rand::thread_rng();
    app.on_timeout(at - 1, &mut rng);
    assert_eq!(app.poll_effect(), None);
    app.on_timeout(at, &mut rng);
    assert_eq!(app.poll_effect(), Some(Effect::Connect));
    w.connect("X1");
    assert!(w.app("X1").is_online());

    // X2 drops X1 from the group: 4113 needs the user.
    let x1_id = w.app_ref("X1").state().own().device_id;
    let now = w.now;
    w.app("X2").drop_device(x1_id, now, &mut rng).unwrap();
    w.run();
    let events = w.take_events("X1");
    assert!(
        events.iter().any(|e| matches!(
            e,
            AppEvent::Disconnected {
                next: ReconnectDecision::Stop(StopReason::NeedsUserAction(code)),
                ..
            } if *code == CloseCode::DeviceDropped
        )),
        "{events:?}"
    );
    assert_eq!(w.app("X1").poll_timeout(), None, "no retry scheduled");

    // The user may still ask: `retry_now` connects at once after a stop.
    w.app("X1").retry_now();
    assert_eq!(w.app("X1").poll_effect(), Some(Effect::Connect));
}

/// `retry_now` while a retry timer is pending cancels the timer and connects at once; many
/// failures in a row never stop the retries.
#[test]
fn retry_now_skips_a_pending_retry_and_failures_never_stop() {
    let mut w = World::new(6);
    let x = w.identity("XXXXXXXX");
    w.device("X1", x);
    w.connect("X1");
    w.disconnect("X1");
    let mut rng = rand::thread_rng();
    let now = w.now;
    let app = w.app("X1");
    for n in 0..200 {
        // The socket could not be opened (5001): a failure like any other.
        app.on_close(CloseCode::from_u16(5001), now, &mut rng);
        assert_eq!(app.poll_effect(), None, "failure {n}: only the timer");
        let Some(at) = app.poll_timeout() else {
            panic!("failure {n}: no retry scheduled");
        };
        assert!(at > now && at <= now + 60_000, "failure {n}: {}", at - now);
    }
    let events: Vec<AppEvent> = std::iter::from_fn(|| app.poll_event()).collect();
    assert!(
        !events.iter().any(|e| matches!(
            e,
            AppEvent::Disconnected {
                next: ReconnectDecision::Stop(_),
                ..
            }
        )),
        "{events:?}"
    );
    assert!(app.poll_timeout().is_some(), "a retry is pending");
    app.retry_now();
    assert_eq!(app.poll_timeout(), None, "the pending retry is cancelled");
    assert_eq!(app.poll_effect(), Some(Effect::Connect), "connects now");
    assert_eq!(app.poll_effect(), None);
    w.connect("X1");
    assert!(w.app("X1").is_online());
}

/// X1 has `n` texts to Y, each delivered: three envelopes apiece in a new device's answer.
fn long_history(n: usize, max_queue_len: u64) -> World {
    let mut w = World::new(7);
    w.group_config.max_queue_len = max_queue_len;
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    w.device("X1", x);
    w.device("Y1", y);
    w.connect("X1");
    w.connect("Y1");
    w.app("X1").add_contact(y).unwrap();
    w.run();
    let mut rng = rand::thread_rng();
    for i in 0..n {
        let now = w.now;
        w.app("X1")
            .send_text(ConversationId::Contact(y), &format!("x{i}"), now, &mut rng)
            .unwrap();
    }
    w.run();
    assert_eq!(w.app_ref("X1").state().messages().len(), n);
    w
}

/// Connects X1 again whenever the mediator closed it, up to `times`; returns the close codes
/// it saw and every other event.
fn keep_x1_connected(w: &mut World, times: usize) -> (Vec<u16>, Vec<AppEvent>) {
    let mut codes = Vec::new();
    let mut events = Vec::new();
    for _ in 0..times {
        for event in w.take_events("X1") {
            match event {
                AppEvent::Disconnected { code, .. } => codes.push(code.as_u16()),
                other => events.push(other),
            }
        }
        if w.devices["X1"].conn.is_none() {
            w.connect("X1");
        }
    }
    (codes, events)
}

#[test]
fn a_history_larger_than_a_transaction_goes_in_parts() {
    // The mediator stages at most 300 reflects per transaction: a part (200) fits, the whole
    // answer (600) does not. Before parts, X1 was closed with 4010 at every try, for ever.
    let mut w = long_history(200, 300);
    let x = w.devices["X1"].identity;
    let y = w.devices["Y1"].identity;
    w.device("X2", x);
    w.connect("X2");
    let (codes, events) = keep_x1_connected(&mut w, 5);
    assert!(codes.is_empty(), "X1 was closed: {codes:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AppEvent::NewDeviceSyncSent { messages: 200, .. })),
        "{events:?}"
    );
    let to_y = ConversationId::Contact(y);
    assert_eq!(
        summary(&w.conversation("X2", &to_y)),
        summary(&w.conversation("X1", &to_y))
    );
    // The lock is free again: a later change reaches the new device.
    let now = w.now;
    w.app("X1")
        .rename_contact(y, Some("Yann"), None, now, &mut rand::thread_rng())
        .unwrap();
    w.run();
    let name = |w: &World, d: &str| w.app_ref(d).state().contact(&y).unwrap().first_name.clone();
    assert_eq!(name(&w, "X2"), "Yann");
    assert_eq!(name(&w, "X1"), name(&w, "X2"));
}

#[test]
fn an_answer_cut_short_by_a_crash_resumes_when_the_answering_device_opens_again() {
    // 300 messages: 900 envelopes, five parts. X1's tab dies after the first parts are in.
    let n = 300;
    let mut w = long_history(n, 10_000);
    let x = w.devices["X1"].identity;
    let y = w.devices["Y1"].identity;
    w.device("X2", x);
    w.link("X2");
    let part_of_it = w.run_until(|w| {
        let got = w.app_ref("X2").state().messages().len();
        got > 0 && got < n
    });
    assert!(part_of_it, "the answer came in one piece: nothing to cut");
    w.crash("X1");
    let got = w.app_ref("X2").state().messages().len();
    assert!(got < n, "{got}");
    // Before the answer was stored as owed, X1 opened without it and X2 kept a part for ever.
    w.reopen("X1");
    w.connect("X1");
    w.run();
    let to_y = ConversationId::Contact(y);
    assert_eq!(w.app_ref("X2").state().messages().len(), n);
    assert_eq!(
        summary(&w.conversation("X2", &to_y)),
        summary(&w.conversation("X1", &to_y))
    );
    assert!(
        w.take_events("X1").iter().any(
            |e| matches!(e, AppEvent::NewDeviceSyncSent { messages, .. } if *messages as usize == n)
        ),
        "the answer ran to its end"
    );
    assert_eq!(w.app("X1").pending_sync(), 0);
    // Nothing is owed any more: another restart answers nobody.
    w.crash("X1");
    w.reopen("X1");
    assert_eq!(
        w.app("X1").pending_sync(),
        0,
        "the owed answer was forgotten"
    );
}

#[test]
fn a_part_the_mediator_keeps_refusing_is_dropped_visibly_and_the_next_change_goes_on() {
    // 50 staged reflects at most: even one part (200) is refused with 4010, every time.
    let mut w = long_history(100, 50);
    let x = w.devices["X1"].identity;
    let y = w.devices["Y1"].identity;
    w.device("X2", x);
    w.connect("X2");
    // A change queued behind the answer.
    let now = w.now;
    w.app("X1")
        .set_nickname("Xena", now, &mut rand::thread_rng());
    w.run();
    let (codes, events) = keep_x1_connected(&mut w, 10);
    let max = usize::try_from(tandem_shared::app::MAX_SAME_CLOSE).unwrap();
    assert_eq!(
        codes,
        vec![4010; max],
        "closed until the answer was dropped"
    );
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            AppEvent::SyncFailed { scope, code } => Some((*scope, code.as_u16())),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        vec![(tandem_shared::d2d::Scope::NewDeviceSync, 4010)],
        "the user is told once"
    );
    let nickname = |w: &World, d: &str| w.app_ref(d).state().profile().nickname.clone();
    assert_eq!(nickname(&w, "X1"), "Xena");
    assert_eq!(
        nickname(&w, "X2"),
        "Xena",
        "the change behind it went through"
    );
    assert_eq!(w.app("X1").pending_sync(), 0);
    // Nothing of the refused part was committed: the new device has no contact from it.
    assert!(w.app_ref("X2").state().contact(&y).is_none());
}

#[test]
fn an_answer_is_capped_whatever_the_new_device_asks_for() {
    let cap = tandem_shared::app::NEW_DEVICE_SYNC_MAX_HISTORY;
    let n = usize::try_from(cap).unwrap() + 20;
    let mut w = long_history(n, 10_000);
    let x = w.devices["X1"].identity;
    w.device("X2", x);
    with_history_cap(&mut w, "X2", u32::MAX);
    w.connect("X2");
    let events = w.take_events("X1");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AppEvent::NewDeviceSyncSent { messages, .. } if *messages == cap)),
        "{events:?}"
    );
    assert_eq!(
        w.app_ref("X2").state().messages().len(),
        usize::try_from(cap).unwrap()
    );
}
