//! Groups across identities and devices: setup, name, group text, members, leave.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use std::collections::BTreeSet;

use app_support::{summary, World};
use tandem_shared::app::model::UserState;
use tandem_shared::app::{ConversationId, GroupId, Identity};
use tandem_shared::proto::sync::contact::AcquaintanceLevel;

struct Setup {
    w: World,
    x: Identity,
    y: Identity,
    z: Identity,
    group: GroupId,
}

/// X (X1, X2) creates a group with Y (Y1) and Z (Z1). Only X knows everyone beforehand.
fn setup() -> Setup {
    let (w, [x, y, z], group) = app_support::trio(3);
    Setup { w, x, y, z, group }
}

#[test]
fn created_group_reaches_members_and_siblings() {
    let Setup {
        mut w,
        x,
        y,
        z,
        group,
    } = setup();
    assert_eq!(group.creator, x);
    for name in ["X1", "X2", "Y1", "Z1"] {
        let g = w.app_ref(name).state().group(&group).cloned();
        let g = g.unwrap_or_else(|| panic!("{name} has no group"));
        assert_eq!(g.name, "trio", "{name}");
        assert_eq!(g.user_state, UserState::Member, "{name}");
    }
    assert_eq!(
        w.app_ref("X2").state().group(&group).unwrap().members,
        BTreeSet::from([y, z])
    );
    assert_eq!(
        w.app_ref("Y1").state().group(&group).unwrap().members,
        BTreeSet::from([z])
    );
    // Y learned Z (and X) only through the group: looked up, acquainted through the group.
    let z_on_y = w.app_ref("Y1").state().contact(&z).cloned().unwrap();
    assert_eq!(z_on_y.public_key, w.client_key(&z).public_key());
    assert_eq!(z_on_y.acquaintance_level, AcquaintanceLevel::GroupOrDeleted);
    assert!(w.app_ref("Y1").state().contact(&x).is_some());
    assert_eq!(w.app("X1").pending_sync(), 0);
}

#[test]
fn group_text_reaches_every_member_and_device_once() {
    let Setup { mut w, group, .. } = setup();
    let conversation = ConversationId::Group(group);
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("Y1")
        .send_text(conversation, "hi all", now, &mut rng)
        .unwrap();
    w.run();
    w.app("X2")
        .send_text(conversation, "hi from X2", now, &mut rng)
        .unwrap();
    w.run();
    let on_x1 = summary(&w.conversation("X1", &conversation));
    assert_eq!(on_x1.len(), 2, "{on_x1:?}");
    assert_eq!(on_x1[0].3, "hi all");
    assert_eq!(on_x1[1].3, "hi from X2");
    assert_eq!(summary(&w.conversation("X2", &conversation)), on_x1);
    for name in ["Y1", "Z1"] {
        let texts: Vec<String> = w
            .conversation(name, &conversation)
            .iter()
            .map(|m| m.text.clone())
            .collect();
        assert_eq!(texts, vec!["hi all", "hi from X2"], "{name}");
        let ids: Vec<u64> = w
            .conversation(name, &conversation)
            .iter()
            .map(|m| m.key.id)
            .collect();
        assert_eq!(
            ids,
            on_x1.iter().map(|m| m.2).collect::<Vec<_>>(),
            "{name}: same ids"
        );
    }
    for name in ["X1", "Y1", "Z1"] {
        let identity = w.devices[name].identity;
        assert_eq!(w.chat.queued(&identity), 0, "{name}: everything acked");
    }
}

#[test]
fn rename_members_and_leave_reach_everyone() {
    let Setup {
        mut w,
        x,
        y,
        z,
        group,
    } = setup();
    let now = w.now;
    let mut rng = rand::thread_rng();
    w.app("X2")
        .rename_group(group, "quartet?", now, &mut rng)
        .unwrap();
    w.run();
    for name in ["X1", "X2", "Y1", "Z1"] {
        assert_eq!(
            w.app_ref(name).state().group(&group).unwrap().name,
            "quartet?",
            "{name}"
        );
    }
    assert!(matches!(
        w.app("Y1").rename_group(group, "mine", now, &mut rng),
        Err(tandem_shared::app::AppError::NotTheCreator(_))
    ));

    w.app("Z1").leave_group(group, now, &mut rng).unwrap();
    w.run();
    assert_eq!(
        w.app_ref("Z1").state().group(&group).unwrap().user_state,
        UserState::Left
    );
    assert_eq!(
        w.app_ref("X1").state().group(&group).unwrap().members,
        BTreeSet::from([y])
    );
    assert_eq!(
        w.app_ref("X2").state().group(&group).unwrap().members,
        BTreeSet::from([y])
    );
    assert!(w
        .app_ref("Y1")
        .state()
        .group(&group)
        .unwrap()
        .members
        .is_empty());

    // The creator removes Y: Y is told it is out.
    w.app("X1")
        .set_group_members(group, BTreeSet::new(), now, &mut rng)
        .unwrap();
    w.run();
    assert_eq!(
        w.app_ref("Y1").state().group(&group).unwrap().user_state,
        UserState::Kicked
    );
    assert!(w
        .app_ref("X2")
        .state()
        .group(&group)
        .unwrap()
        .members
        .is_empty());
    let _ = (x, z);
}
