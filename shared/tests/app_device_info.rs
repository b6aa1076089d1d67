//! Renaming a device: the new label reaches the mediator with a fresh `ClientHello` (d2m has no
//! message to change it mid-session) and every sibling's device list shows it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use std::collections::BTreeMap;

use app_support::{info, World};
use tandem_shared::app::{AppEvent, ReconnectDecision};

/// Labels by device id, as `name`'s `request_devices` reports them.
fn labels_seen_by(w: &mut World, name: &str) -> BTreeMap<u64, String> {
    let now = w.now;
    w.take_events(name);
    w.app(name)
        .request_devices(now, &mut rand::thread_rng())
        .unwrap();
    w.run();
    let events = w.take_events(name);
    let Some(AppEvent::Devices(devices)) =
        events.iter().find(|e| matches!(e, AppEvent::Devices(_)))
    else {
        panic!("{events:?}")
    };
    devices
        .iter()
        .map(|d| (d.device_id, d.info.as_ref().unwrap().label.clone()))
        .collect()
}

#[test]
fn a_rename_reaches_the_siblings_device_list_after_the_reconnect() {
    let mut w = World::new(31);
    let x = w.identity("XXXXXXXX");
    w.device("X1", x);
    w.device("X2", x);
    w.connect("X1");
    w.connect("X2");
    let x1 = w.app_ref("X1").state().own().device_id;
    assert_eq!(labels_seen_by(&mut w, "X2")[&x1], "X1");

    let now = w.now;
    w.take_events("X1");
    assert!(w.app("X1").set_device_info(info("Kitchen tablet"), now));
    assert_eq!(w.app_ref("X1").device_info().label, "Kitchen tablet");
    // The core asked to close this connection and to open a new one right away.
    let mut effects = Vec::new();
    while let Some(effect) = w.app("X1").poll_effect() {
        effects.push(format!("{effect:?}"));
    }
    assert!(
        effects.iter().any(|e| e.starts_with("CloseWebSocket"))
            && effects.last().is_some_and(|e| e == "Connect"),
        "{effects:?}"
    );
    // The adapter closes the socket without reporting the close back (the core closed it).
    let conn = w.dev("X1").conn.take().unwrap();
    w.groups.get_mut(&x).unwrap().on_disconnect(conn, now);
    w.run();
    let events = w.take_events("X1");
    assert!(
        events.iter().any(|e| matches!(
            e,
            AppEvent::Disconnected { next: ReconnectDecision::RetryAt(at), .. } if *at == now
        )),
        "a deliberate close retries at once: {events:?}"
    );
    w.connect("X1");
    assert!(w.take_events("X1").contains(&AppEvent::Connected));

    assert_eq!(labels_seen_by(&mut w, "X2")[&x1], "Kitchen tablet");
    assert_eq!(labels_seen_by(&mut w, "X1")[&x1], "Kitchen tablet");
    // The sibling's own entry is untouched.
    let x2 = w.app_ref("X2").state().own().device_id;
    assert_eq!(labels_seen_by(&mut w, "X1")[&x2], "X2");
}

#[test]
fn an_offline_rename_goes_out_with_the_next_connection() {
    let mut w = World::new(32);
    let x = w.identity("XXXXXXXX");
    w.device("X1", x);
    w.device("X2", x);
    w.connect("X2");
    let now = w.now;
    assert!(!w.app("X1").set_device_info(info("Phone"), now));
    assert!(w.app("X1").poll_effect().is_none(), "nothing to reconnect");
    w.connect("X1");
    let x1 = w.app_ref("X1").state().own().device_id;
    assert_eq!(labels_seen_by(&mut w, "X2")[&x1], "Phone");
}
