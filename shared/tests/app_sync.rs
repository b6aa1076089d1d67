//! Shared state through transactions with preconditions (spec §6, §8.3): contacts, settings,
//! profile, distribution lists; concurrent changes converge.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use std::collections::BTreeSet;

use app_support::World;
use tandem_shared::app::{AppEvent, Identity};
use tandem_shared::proto::sync;

fn world() -> (World, Identity, Identity) {
    let mut w = World::new(2);
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    w.device("X1", x);
    w.device("X2", x);
    w.connect("X1");
    w.connect("X2");
    (w, x, y)
}

#[test]
fn contact_added_on_one_device_appears_on_the_other() {
    let (mut w, _, y) = world();
    w.app("X1").add_contact(y).unwrap();
    w.run();
    let on_x1 = w.app_ref("X1").state().contact(&y).cloned().unwrap();
    assert_eq!(on_x1.public_key, w.client_key(&y).public_key());
    assert_eq!(w.app_ref("X2").state().contact(&y), Some(&on_x1));
    assert_eq!(w.app("X1").pending_sync(), 0);
    assert!(w.take_events("X2").contains(&AppEvent::ContactChanged(y)));
    assert!(matches!(
        w.app("X2").add_contact(y),
        Err(tandem_shared::app::AppError::ContactExists(_))
    ));
}

#[test]
fn unknown_identity_is_reported_and_not_added() {
    let (mut w, _, _) = world();
    let nobody: Identity = "NOBODY00".parse().unwrap();
    w.app("X1").add_contact(nobody).unwrap();
    w.run();
    assert!(w
        .take_events("X1")
        .contains(&AppEvent::ContactNotFound(nobody)));
    assert!(w.app("X1").state().contacts().is_empty());
}

#[test]
fn concurrent_renames_of_one_contact_converge() {
    let (mut w, _, y) = world();
    w.app("X1").add_contact(y).unwrap();
    w.run();
    let now = w.now;
    let mut rng = rand::thread_rng();
    // Both devices change the same contact before either hears of the other's change.
    w.app("X1")
        .rename_contact(y, Some("Yvonne"), Some("One"), now, &mut rng)
        .unwrap();
    w.app("X2")
        .rename_contact(y, Some("Yves"), None, now, &mut rng)
        .unwrap();
    w.run();
    let a = w.app_ref("X1").state().contact(&y).cloned().unwrap();
    let b = w.app_ref("X2").state().contact(&y).cloned().unwrap();
    assert_eq!(a, b, "both devices hold the same contact");
    assert!(["Yvonne", "Yves"].contains(&a.first_name.as_str()));
    assert_eq!(
        a.last_name, "One",
        "a field only one device changed survives"
    );
    assert_eq!(w.app("X1").pending_sync(), 0);
    assert_eq!(w.app("X2").pending_sync(), 0);
}

#[test]
fn settings_nickname_and_lists_sync_and_survive_a_reopen() {
    let (mut w, _, y) = world();
    let z = w.identity("ZZZZZZZZ");
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("X1").update_settings(
        sync::Settings {
            typing_indicator_policy: Some(
                sync::TypingIndicatorPolicy::DontSendTypingIndicator.into(),
            ),
            ..Default::default()
        },
        now,
        &mut rng,
    );
    w.app("X2").set_nickname("Xavier", now, &mut rng);
    let list = w
        .app("X1")
        .create_distribution_list("friends", BTreeSet::from([y, z]), now, &mut rng)
        .unwrap();
    w.run();
    for name in ["X1", "X2"] {
        let state = w.app_ref(name).state();
        assert!(!state.settings().sends_typing_indicators(), "{name}");
        assert!(
            state.settings().sends_read_receipts(),
            "{name}: untouched field"
        );
        assert_eq!(state.profile().nickname, "Xavier", "{name}");
        assert_eq!(state.distribution_lists()[&list].name, "friends", "{name}");
    }
    let now = w.now;
    w.app("X2")
        .update_distribution_list(
            list,
            Some("close friends"),
            Some(BTreeSet::from([z])),
            now,
            &mut rng,
        )
        .unwrap();
    w.run();
    let on_x1 = w.app_ref("X1").state().distribution_lists()[&list].clone();
    assert_eq!(on_x1.name, "close friends");
    assert_eq!(on_x1.members, BTreeSet::from([z]));

    let before = w.app_ref("X1").state().clone();
    w.crash("X1");
    w.reopen("X1");
    assert_eq!(w.app_ref("X1").state(), &before, "everything was persisted");

    let now = w.now;
    w.app("X2")
        .delete_distribution_list(list, now, &mut rng)
        .unwrap();
    w.run();
    assert!(w.app_ref("X2").state().distribution_lists().is_empty());
    w.connect("X1");
    assert!(
        w.app_ref("X1").state().distribution_lists().is_empty(),
        "caught up"
    );
}

#[test]
fn changes_made_offline_go_out_on_connect() {
    let (mut w, _, _) = world();
    w.disconnect("X1");
    let now = w.now;
    w.app("X1")
        .set_nickname("later", now, &mut rand::thread_rng());
    w.run();
    assert_eq!(w.app("X1").pending_sync(), 1);
    assert_eq!(w.app_ref("X2").state().profile().nickname, "");
    w.connect("X1");
    assert_eq!(w.app_ref("X2").state().profile().nickname, "later");
    assert_eq!(w.app_ref("X1").state().profile().nickname, "later");
}

#[test]
fn crash_between_commit_and_its_batch_replays_the_change() {
    let (mut w, _, _) = world();
    // X1 confirms the journal batch (before the reflect), then stalls: the commit is acked by
    // the mediator, but the batch applying the change here is never confirmed.
    w.dev("X1").confirm_budget = Some(1);
    let now = w.now;
    w.app("X1")
        .set_nickname("durable", now, &mut rand::thread_rng());
    w.run();
    assert_eq!(
        w.app_ref("X2").state().profile().nickname,
        "durable",
        "committed"
    );
    w.crash("X1");
    w.reopen("X1");
    assert_eq!(
        w.app_ref("X1").state().profile().nickname,
        "",
        "the apply was lost"
    );
    assert!(w.app_ref("X1").state().journal().is_some());
    w.connect("X1");
    assert_eq!(
        w.app_ref("X1").state().profile().nickname,
        "durable",
        "replayed"
    );
    assert!(w.app_ref("X1").state().journal().is_none());
    assert_eq!(w.app_ref("X2").state().profile().nickname, "durable");
}
