//! Random interleavings of sends, reads, disconnects, stalled storage and crashes, with faults
//! aimed at the lock holder between any two steps of the world (its network drops, its tab dies,
//! its transaction's TTL runs out) while messages flow both ways; the lock stays exclusive
//! throughout, and after the world heals every device of an identity holds the same messages in
//! the same states, every message arrived exactly once, every message a device acked to the chat
//! server is on every device of its identity, and the chat server holds nothing unacked. In
//! `random_faults_converge_with_a_device_joining`, X3 joins empty halfway and must end with its
//! siblings' state and messages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod app_support;

use std::collections::BTreeMap;

use app_support::{Faults, World};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tandem_shared::app::{ConversationId, Direction, Identity, MessageKey, MessageState};

const DEVICES: [&str; 4] = ["X1", "X2", "Y1", "Y2"];

fn identity_of(name: &str) -> &'static str {
    if name.starts_with('X') {
        "XXXXXXXX"
    } else {
        "YYYYYYYY"
    }
}

/// Every message of a device, by key: (direction, text, state).
fn messages(w: &World, name: &str) -> BTreeMap<MessageKey, (Direction, String, MessageState)> {
    w.app_ref(name)
        .state()
        .messages()
        .values()
        .map(|m| (m.key, (m.direction, m.text.clone(), m.state)))
        .collect()
}

/// The idle window of CSP on demand in `random_faults_converge_with_csp_on_demand`: short, so
/// that connections close and open often within a run.
const IDLE_MS: u64 = 5_000;

fn simulate(seed: u64, steps: usize, join: bool, on_demand: bool) {
    let mut w = World::new(seed);
    if on_demand {
        w.csp_idle_ms = Some(IDLE_MS);
    }
    let x = w.identity("XXXXXXXX");
    let y = w.identity("YYYYYYYY");
    for name in DEVICES {
        let identity: Identity = identity_of(name).parse().unwrap();
        w.device(name, identity);
        w.connect(name);
    }
    w.app("X1").add_contact(y).unwrap();
    w.app("Y1").add_contact(x).unwrap();
    w.run();
    w.faults = Some(Faults::new(seed ^ 0xfa17, 0.2));
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let mut sent = 0;
    // With `join`, X3 joins halfway, empty: a sibling answers it while messages flow and faults
    // strike (the answering device among them).
    let mut all: Vec<&'static str> = DEVICES.to_vec();
    for step in 0..steps {
        if join && step == steps / 2 {
            w.device("X3", x);
            w.connect("X3");
            all.push("X3");
        }
        if on_demand {
            // Now and then long enough for every chat server connection to fall idle, and
            // sometimes past the mediator's wake poll (a lost push costs that long).
            let ms = match rng.gen_range(0..10) {
                0..=6 => rng.gen_range(1..2_000),
                7 | 8 => rng.gen_range(IDLE_MS..3 * IDLE_MS),
                _ => w.group_config.wake_poll_ms,
            };
            w.tick(ms);
        } else {
            w.advance(rng.gen_range(1..2_000));
        }
        // Several actions before the world moves, so that they overlap (a send from Y while X1
        // holds the lock).
        for action in 0..rng.gen_range(1..=4) {
            let name = DEVICES[rng.gen_range(0..DEVICES.len())];
            let now = w.now;
            let up = w.devices[name].app.is_some();
            let peer = if name.starts_with('X') { y } else { x };
            // Siblings learn the contact through sync; until then sending is refused.
            let knows_peer = up && w.app_ref(name).state().contact(&peer).is_some();
            match rng.gen_range(0..12) {
                0..=3 if knows_peer => {
                    w.app(name)
                        .send_text(
                            ConversationId::Contact(peer),
                            &format!("{name}#{step}.{action}"),
                            now,
                            &mut rng,
                        )
                        .unwrap();
                    sent += 1;
                }
                4 if up => {
                    w.app(name)
                        .mark_read(ConversationId::Contact(peer), now, &mut rng);
                }
                5 if up => w.disconnect(name),
                6 if up => w.dev(name).confirm_budget = Some(rng.gen_range(0..3)),
                7 if up => w.crash(name),
                8 if knows_peer => {
                    w.app(name)
                        .rename_contact(
                            peer,
                            Some(&format!("{name}@{step}.{action}")),
                            None,
                            now,
                            &mut rng,
                        )
                        .unwrap();
                }
                9 if up => {
                    w.app(name)
                        .set_nickname(&format!("{name}~{step}.{action}"), now, &mut rng)
                }
                _ => {}
            }
        }
        // Bring devices back now and then.
        for &name in &all {
            if rng.gen_bool(0.3) {
                if w.devices[name].app.is_none() {
                    w.reopen(name);
                }
                if w.devices[name].conn.is_none() {
                    w.connect(name);
                }
            }
        }
        w.run();
        w.check_lock();
    }

    // Heal: no more faults, storage keeps up again, every device comes back.
    let faults = w.faults.take().unwrap().injected;
    if std::env::var_os("APP_SIM_VERBOSE").is_some() {
        eprintln!(
            "seed {seed}: faults (drops, crashes, TTL) {faults:?}, pushes lost {}",
            w.pushes_lost
        );
        for &name in &all {
            for e in &w.devices[name].events {
                if matches!(
                    e,
                    tandem_shared::app::AppEvent::SyncFailed { .. }
                        | tandem_shared::app::AppEvent::NewDeviceSyncSent { .. }
                ) {
                    eprintln!("  {name}: {e:?}");
                }
            }
        }
    }
    for &name in &all {
        if w.devices[name].app.is_none() {
            w.reopen(name);
        } else {
            w.release(name);
        }
        if w.devices[name].conn.is_none() {
            w.connect(name);
        }
    }
    for &name in &all {
        w.disconnect(name);
        w.connect(name);
    }
    w.run();

    // What a device acked to the chat server exists nowhere else: every device has it. (Texts
    // are the acked messages their sender's devices store; receipts are not stored as messages.)
    for (receiver, sender, id) in &w.chat.acked {
        let key = MessageKey {
            sender: Identity::new(*sender).unwrap(),
            id: *id,
        };
        let is_text = all.iter().any(|name| {
            w.devices[name].identity.as_bytes() == sender
                && w.app_ref(name).state().message(&key).is_some()
        });
        for &name in &all {
            if is_text && w.devices[name].identity.as_bytes() == receiver {
                assert!(
                    w.app_ref(name).state().message(&key).is_some(),
                    "seed {seed}: {name} lacks {key:?}, acked to the chat server"
                );
            }
        }
    }
    assert_eq!(w.chat.queued(&x), 0, "seed {seed}: X's queue");
    assert_eq!(w.chat.queued(&y), 0, "seed {seed}: Y's queue");
    let pairs: &[(&str, &str)] = if all.contains(&"X3") {
        &[("X1", "X2"), ("X1", "X3"), ("Y1", "Y2")]
    } else {
        &[("X1", "X2"), ("Y1", "Y2")]
    };
    for &(a, b) in pairs {
        let (a, b) = (w.app_ref(a).state(), w.app_ref(b).state());
        assert_eq!(a.contacts(), b.contacts(), "seed {seed}: contacts");
        assert_eq!(a.profile(), b.profile(), "seed {seed}: profile");
        assert_eq!(a.settings(), b.settings(), "seed {seed}: settings");
    }
    for &name in &all {
        assert_eq!(
            w.app(name).pending_sync(),
            0,
            "seed {seed}: {name} synced everything"
        );
        for m in w.app_ref(name).state().messages().values() {
            assert!(m.reflected_at.is_some(), "seed {seed}: {name} {m:?}");
            assert!(m.pending.is_empty(), "seed {seed}: {name} {m:?}");
            assert!(!m.read_unsynced, "seed {seed}: {name} {m:?}");
            assert_eq!(m.receipt_due, None, "seed {seed}: {name} {m:?}");
        }
    }
    assert_eq!(
        messages(&w, "X1"),
        messages(&w, "X2"),
        "seed {seed}: X1 vs X2"
    );
    assert_eq!(
        messages(&w, "Y1"),
        messages(&w, "Y2"),
        "seed {seed}: Y1 vs Y2"
    );
    if all.contains(&"X3") {
        assert_eq!(
            messages(&w, "X1"),
            messages(&w, "X3"),
            "seed {seed}: X1 vs X3, which joined halfway"
        );
    }
    if on_demand {
        asleep_group_is_woken_by_a_push(&mut w, seed, &all, x, y);
        sent += 1;
    }
    let on_x = messages(&w, "X1");
    let on_y = messages(&w, "Y1");
    // A send whose batch never became durable died with its tab; everything else arrived once.
    assert!(on_x.len() <= sent, "seed {seed}");
    let texts: std::collections::BTreeSet<&String> = on_x.values().map(|(_, t, _)| t).collect();
    assert_eq!(texts.len(), on_x.len(), "seed {seed}: no text stored twice");
    assert_eq!(
        on_x.keys().collect::<Vec<_>>(),
        on_y.keys().collect::<Vec<_>>()
    );
    for (key, (direction, text, state)) in &on_x {
        let (their_direction, their_text, their_state) = &on_y[key];
        assert_ne!(direction, their_direction, "seed {seed}: {key:?}");
        assert_eq!(text, their_text, "seed {seed}: {key:?}");
        let (mine, theirs) = if *direction == Direction::Outgoing {
            (state, their_state)
        } else {
            (their_state, state)
        };
        // The receiver's view decides the sender's: read there means read here.
        match theirs {
            MessageState::Read => assert_eq!(*mine, MessageState::Read, "seed {seed}: {key:?}"),
            _ => assert_eq!(*mine, MessageState::Delivered, "seed {seed}: {key:?}"),
        }
    }
}

/// After the world healed: every chat server connection falls idle and closes; a message to X
/// then waits at the chat server, which pushes, and reaches both of X's devices and is acked.
fn asleep_group_is_woken_by_a_push(
    w: &mut World,
    seed: u64,
    all: &[&'static str],
    x: Identity,
    y: Identity,
) {
    w.tick(IDLE_MS);
    w.tick(IDLE_MS);
    for &name in all {
        assert!(
            w.app_ref(name).is_csp_asleep(),
            "seed {seed}: {name}'s chat server connection is idle"
        );
    }
    let now = w.now;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    w.app("Y1")
        .send_text(ConversationId::Contact(x), "while X sleeps", now, &mut rng)
        .unwrap();
    w.run();
    for name in ["X1", "X2"] {
        assert!(
            w.conversation(name, &ConversationId::Contact(y))
                .iter()
                .any(|m| m.text == "while X sleeps"),
            "seed {seed}: {name} got the message through a push"
        );
    }
    assert_eq!(w.chat.queued(&x), 0, "seed {seed}: acked");
}

/// CSP on demand throughout (docs/protocol.md): connections close when idle and open for each
/// send, on promotion and on a `Wake`; the chat server pushes and 30 % of pushes are lost
/// (the mediator's poll, or the next connection, finds those messages). Everything above holds.
#[test]
fn random_faults_converge_with_csp_on_demand() {
    run_seeds_with(false, true);
}

/// `APP_SIM_SEEDS=5000 APP_SIM_STEPS=100 cargo test --test app_simulation` explores further;
/// `APP_SIM_SEED=N` replays one seed (each failure message names its seed), `APP_SIM_VERBOSE=1`
/// prints the faults each seed injected.
#[test]
fn random_faults_converge() {
    run_seeds(false);
}

/// The same world, with a device X3 that joins empty halfway: it ends with its siblings' state
/// and every message (the answer survives the answering device's crash, and is read from a
/// state that has every commit before its lock).
#[test]
fn random_faults_converge_with_a_device_joining() {
    run_seeds(true);
}

fn run_seeds(join: bool) {
    run_seeds_with(join, false);
}

fn run_seeds_with(join: bool, on_demand: bool) {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let seeds = var("APP_SIM_SEEDS").unwrap_or(200);
    let steps = var("APP_SIM_STEPS").map_or(40, |s| usize::try_from(s).unwrap());
    match var("APP_SIM_SEED") {
        Some(seed) => simulate(seed, steps, join, on_demand),
        None => (0..seeds).for_each(|seed| simulate(seed, steps, join, on_demand)),
    }
}
