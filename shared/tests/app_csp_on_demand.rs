//! CSP on demand on the device (docs/protocol.md "CSP on demand"): the chat server connection
//! closes when idle, opens for a send, on promotion and on a `Wake`, and the push URL reaches
//! the chat server at every login. Real app cores, the real mediator, the test chat server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use app_support::World;
use tandem_shared::app::{ConversationId, Identity};

const IDLE: u64 = 60_000;

/// X (X1, X2) and Y (Y1), all speaking CSP on demand, connected, knowing each other.
fn world() -> (World, Identity, Identity) {
    let mut w = World::new(11);
    w.csp_idle_ms = Some(IDLE);
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    for (name, identity) in [("X1", x), ("X2", x), ("Y1", y)] {
        w.device(name, identity);
        w.connect(name);
    }
    w.app("X1").add_contact(y).unwrap();
    w.app("Y1").add_contact(x).unwrap();
    w.run();
    (w, x, y)
}

fn has_text(w: &World, name: &str, peer: Identity, text: &str) -> bool {
    w.conversation(name, &ConversationId::Contact(peer))
        .iter()
        .any(|m| m.text == text)
}

#[test]
fn an_idle_connection_closes_after_the_window_and_not_before() {
    let (mut w, x, _) = world();
    assert_eq!(
        w.chat.push_urls.get(x.as_bytes()).map(String::as_str),
        Some("push:XXXXXXXX"),
        "the login registered the mediator's push URL"
    );
    w.tick(IDLE - 1_000);
    assert!(!w.app_ref("X1").is_csp_asleep());
    w.tick(1_000);
    for name in ["X1", "X2", "Y1"] {
        assert!(w.app_ref(name).is_csp_asleep(), "{name}");
        assert!(
            w.app_ref(name).is_connected(),
            "{name} stays at the mediator"
        );
    }
}

#[test]
fn a_send_opens_the_connection_and_a_push_wakes_the_receiver() {
    let (mut w, x, y) = world();
    w.tick(IDLE);
    assert!(w.app_ref("Y1").is_csp_asleep() && w.app_ref("X1").is_csp_asleep());
    let now = w.now;
    w.app("Y1")
        .send_text(
            ConversationId::Contact(x),
            "wake up",
            now,
            &mut rand::thread_rng(),
        )
        .unwrap();
    w.run();
    assert!(!w.app_ref("Y1").is_csp_asleep(), "the send opened Y1's");
    for name in ["X1", "X2"] {
        assert!(has_text(&w, name, y, "wake up"), "{name}");
    }
    assert_eq!(w.chat.queued(&x), 0, "X's leader acked it");
    assert!(
        !w.app_ref("X1").is_csp_asleep(),
        "the push woke X's leader, X1"
    );
    assert!(w.app_ref("X2").is_csp_asleep(), "not its sibling");
    // The login after the wake registered the push URL again.
    assert!(w.chat.push_urls.contains_key(x.as_bytes()));
}

#[test]
fn a_connection_with_something_unanswered_stays_open() {
    let (mut w, x, _) = world();
    // The chat server does not ack Y1's send: the job waits for its ack.
    let now = w.now;
    w.chat.withhold_acks = true;
    w.app("Y1")
        .send_text(
            ConversationId::Contact(x),
            "held",
            now,
            &mut rand::thread_rng(),
        )
        .unwrap();
    w.run();
    w.tick(IDLE);
    w.tick(IDLE);
    assert!(
        !w.app_ref("Y1").is_csp_asleep(),
        "a job in flight keeps it open"
    );
    // On the next connection the job goes out again and is acked; then it may close.
    w.chat.withhold_acks = false;
    w.disconnect("Y1");
    w.connect("Y1");
    w.tick(IDLE);
    assert!(w.app_ref("Y1").is_csp_asleep(), "{:?}", w.app_ref("Y1"));
}

#[test]
fn a_new_leader_opens_its_connection() {
    let (mut w, _, _) = world();
    w.tick(IDLE);
    assert!(w.app_ref("X2").is_csp_asleep());
    w.disconnect("X1");
    w.run();
    assert!(w.app_ref("X2").is_leader());
    assert!(!w.app_ref("X2").is_csp_asleep(), "the leader receives");
}

#[test]
fn without_csp_on_demand_the_connection_stays_open() {
    let mut w = World::new(12);
    let x = w.identity("XXXXXXXX");
    w.device("X1", x);
    w.connect("X1");
    w.tick(10 * IDLE);
    assert!(!w.app_ref("X1").is_csp_asleep());
    assert!(w.chat.push_urls.is_empty());
}
