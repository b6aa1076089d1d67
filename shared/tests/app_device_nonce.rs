//! The small addition the app core needed in `device`: `Event::Reflected` carries the nonce the
//! envelope was sealed with (for the D2D nonce store), and an envelope too short to hold one is
//! dropped like any other that does not open.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tandem_shared::crypto::SecretKey;
use tandem_shared::d2d::{seal_envelope, DeviceInfo};
use tandem_shared::d2m::{D2mMessage, ReflectFlags, Reflected};
use tandem_shared::device::{DeviceConfig, DeviceSession, Event};
use tandem_shared::keys::DeviceGroupKey;
use tandem_shared::mediator::{ConnId, Effect, Group, GroupConfig, MemoryStore};
use tandem_shared::proto::d2d as pb;

/// A device session that completed the handshake with a real mediator group.
fn online() -> (
    DeviceSession,
    tandem_shared::keys::DeviceGroupKeys,
    ChaCha20Rng,
) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let keys = DeviceGroupKey::from_client_key(&SecretKey::from_bytes([3; 32])).derive_keys();
    let mut group = Group::new(
        GroupConfig::default(),
        keys.dgpk_public,
        MemoryStore::new(),
        0,
    )
    .unwrap();
    let mut session = DeviceSession::new(
        DeviceConfig::new(keys.clone(), 1, DeviceInfo::default()),
        0,
        &mut rng,
    )
    .unwrap();
    group.on_connect(ConnId(1), 0, &mut rng);
    loop {
        let mut moved = false;
        while let Some(effect) = group.poll_effect() {
            if let Effect::Send { bytes, .. } = effect {
                moved = true;
                session.on_binary(&bytes, 0, &mut rng).unwrap();
            }
        }
        while let Some(bytes) = session.poll_transmit() {
            moved = true;
            group.on_binary(ConnId(1), &bytes, 0);
        }
        if !moved {
            break;
        }
    }
    while session.poll_event().is_some() {}
    (session, keys, rng)
}

fn reflected(envelope: Vec<u8>) -> Vec<u8> {
    D2mMessage::Reflected(Reflected {
        header_length: 16,
        flags: ReflectFlags::NONE,
        reflected_id: 5,
        timestamp: 9,
        envelope,
    })
    .encode()
    .unwrap()
}

#[test]
fn reflected_event_carries_the_sealing_nonce() {
    let (mut session, keys, mut rng) = online();
    let envelope = pb::Envelope {
        padding: Vec::new(),
        device_id: 2,
        protocol_version: 0,
        content: Some(pb::envelope::Content::NewDeviceSyncRequest(
            pb::NewDeviceSyncRequest {
                max_history_messages: 1,
            },
        )),
    };
    let sealed = seal_envelope(&keys.dgrk, envelope, &mut rng).unwrap();
    let expected: [u8; 24] = sealed[..24].try_into().unwrap();
    session.on_binary(&reflected(sealed), 0, &mut rng).unwrap();
    let Some(Event::Reflected { nonce, .. }) = session.poll_event() else {
        panic!("no Reflected event")
    };
    assert_eq!(nonce, expected);
}

#[test]
fn envelope_too_short_for_a_nonce_is_dropped_and_acked() {
    let (mut session, _, mut rng) = online();
    session
        .on_binary(&reflected(vec![1; 10]), 0, &mut rng)
        .unwrap();
    assert!(matches!(
        session.poll_event(),
        Some(Event::DroppedReflected {
            reflected_id: 5,
            ..
        })
    ));
    let ack = session.poll_transmit().expect("the ReflectedAck");
    assert_eq!(ack[0], 0x83);
}
