//! Device sessions against the real mediator group state machine: real keys, real bytes, a tiny
//! in-memory pump that moves d2m containers both ways, and an in-memory CSP server behind the
//! mediator's proxy.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    unreachable_pub,
    missing_debug_implementations
)]

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tandem_shared::crypto::SecretKey;
use tandem_shared::csp::{CspClientConfig, CspServer, CspServerConfig, Extensions, ServerEvent};
use tandem_shared::d2d::{seal_envelope, DeviceInfo, Platform, Scope};
use tandem_shared::d2m::{
    CloseCode, D2mMessage, Reconnect, ReflectAck, TANDEM_FEATURE_CSP_ON_DEMAND,
};
use tandem_shared::device::{CloseOrigin, DeviceConfig, DeviceError, DeviceSession, Event};
use tandem_shared::keys::{ClientKey, DeviceGroupKey, DeviceGroupKeys};
use tandem_shared::mediator::{ConnId, Effect, Group, GroupConfig, MemoryStore};
use tandem_shared::proto::d2d as d2d_pb;
use tandem_shared::proto::d2m::DeviceSlotState;

const IDENTITY: [u8; 8] = *b"TANDEM01";

fn client_key() -> ClientKey {
    ClientKey::new(SecretKey::from_bytes([0x11; 32]))
}

fn server_key() -> SecretKey {
    SecretKey::from_bytes([0x22; 32])
}

fn group_keys() -> DeviceGroupKeys {
    DeviceGroupKey::from_client_key(&SecretKey::from_bytes([0x11; 32])).derive_keys()
}

fn info(label: &str) -> DeviceInfo {
    DeviceInfo {
        platform: Platform::Web,
        platform_details: "test".into(),
        app_version: "0".into(),
        label: label.into(),
    }
}

fn config(device_id: u64, expected: DeviceSlotState) -> DeviceConfig {
    let mut c = DeviceConfig::new(group_keys(), device_id, info(&format!("dev{device_id}")));
    c.expected_slot_state = expected;
    c
}

/// `config` with a CSP login for the test identity at the test chat server.
fn with_csp(mut config: DeviceConfig) -> DeviceConfig {
    config.csp = Some(CspClientConfig {
        identity: IDENTITY,
        client_key: client_key(),
        server_public_key: server_key().public_key(),
        extensions: Extensions::new("tandem-test"),
    });
    config
}

fn text(tag: u64) -> d2d_pb::Envelope {
    d2d_pb::Envelope {
        padding: Vec::new(),
        device_id: 0,
        protocol_version: 0,
        content: Some(d2d_pb::envelope::Content::OutgoingMessage(
            d2d_pb::OutgoingMessage {
                message_id: tag,
                body: tag.to_le_bytes().to_vec(),
                ..Default::default()
            },
        )),
    }
}

fn tag_of(envelope: &d2d_pb::Envelope) -> u64 {
    match &envelope.content {
        Some(d2d_pb::envelope::Content::OutgoingMessage(m)) => m.message_id,
        other => panic!("unexpected content {other:?}"),
    }
}

/// One group, its devices and their chat server sessions, moved by hand.
struct Net {
    group: Group<MemoryStore>,
    devices: BTreeMap<u64, DeviceSession>,
    events: BTreeMap<u64, Vec<Event>>,
    errors: BTreeMap<u64, Vec<DeviceError>>,
    csp: BTreeMap<u64, CspServer>,
    csp_events: BTreeMap<u64, Vec<ServerEvent>>,
    rng: ChaCha20Rng,
    now: u64,
    next_conn: u64,
    conn_of: BTreeMap<u64, u64>,
}

impl Net {
    fn new() -> Self {
        let group = Group::new(
            GroupConfig::default(),
            group_keys().dgpk_public,
            MemoryStore::new(),
            1_000,
        )
        .unwrap();
        Self {
            group,
            devices: BTreeMap::new(),
            events: BTreeMap::new(),
            errors: BTreeMap::new(),
            csp: BTreeMap::new(),
            csp_events: BTreeMap::new(),
            rng: ChaCha20Rng::seed_from_u64(7),
            now: 1_000,
            next_conn: 0,
            conn_of: BTreeMap::new(),
        }
    }

    /// Connects a device under the name `key` (the pump's handle) and runs until quiet.
    fn connect(&mut self, key: u64, config: DeviceConfig) {
        self.next_conn += 1;
        let conn = self.next_conn;
        self.conn_of.insert(key, conn);
        let session = DeviceSession::new(config, self.now, &mut self.rng).unwrap();
        self.devices.insert(key, session);
        self.events.insert(key, Vec::new());
        self.group.on_connect(ConnId(conn), self.now, &mut self.rng);
        self.run();
    }

    fn disconnect(&mut self, key: u64) {
        let conn = self.conn_of.remove(&key).unwrap();
        self.devices.remove(&key);
        self.csp.remove(&key);
        self.group.on_disconnect(ConnId(conn), self.now);
        self.run();
    }

    fn key_of(&self, conn: ConnId) -> Option<u64> {
        self.conn_of
            .iter()
            .find(|(_, &c)| c == conn.0)
            .map(|(&k, _)| k)
    }

    fn dev(&mut self, key: u64) -> &mut DeviceSession {
        self.devices.get_mut(&key).unwrap()
    }

    /// Takes the events a device reported so far.
    fn take(&mut self, key: u64) -> Vec<Event> {
        std::mem::take(self.events.get_mut(&key).unwrap())
    }

    /// Moves everything until nothing moves.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            let keys: Vec<u64> = self.devices.keys().copied().collect();
            for key in keys {
                let conn = ConnId(self.conn_of[&key]);
                let device = self.devices.get_mut(&key).unwrap();
                while let Some(event) = device.poll_event() {
                    self.events.get_mut(&key).unwrap().push(event);
                }
                while let Some(bytes) = device.poll_transmit() {
                    moved = true;
                    self.group.on_binary(conn, &bytes, self.now);
                }
            }
            while let Some(effect) = self.group.poll_effect() {
                moved = true;
                self.apply(effect);
            }
            let keys: Vec<u64> = self.csp.keys().copied().collect();
            for key in keys {
                let server = self.csp.get_mut(&key).unwrap();
                while let Some(event) = server.poll_event() {
                    moved = true;
                    if matches!(event, ServerEvent::NeedIdentityKey { .. }) {
                        server
                            .provide_identity_key(Some(client_key().public_key()))
                            .unwrap();
                    }
                    self.csp_events.entry(key).or_default().push(event);
                }
                let mut out = Vec::new();
                while let Some(bytes) = server.poll_transmit() {
                    out.extend(bytes);
                }
                if !out.is_empty() {
                    moved = true;
                    let conn = ConnId(self.conn_of[&key]);
                    self.group.on_csp_bytes(conn, &out, self.now);
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Send { conn, bytes } => {
                let Some(key) = self.key_of(conn) else { return };
                let now = self.now;
                let device = self.devices.get_mut(&key).unwrap();
                if let Err(e) = device.on_binary(&bytes, now, &mut self.rng) {
                    self.errors.entry(key).or_default().push(e);
                }
                while let Some(event) = device.poll_event() {
                    self.events.get_mut(&key).unwrap().push(event);
                }
            }
            Effect::Close { conn, code, .. } => {
                let Some(key) = self.key_of(conn) else { return };
                let device = self.devices.get_mut(&key).unwrap();
                device.on_close(code);
                while let Some(event) = device.poll_event() {
                    self.events.get_mut(&key).unwrap().push(event);
                }
            }
            Effect::OpenCsp { conn } => {
                let key = self.key_of(conn).unwrap();
                let server = CspServer::new(
                    CspServerConfig {
                        server_key: server_key(),
                    },
                    &mut self.rng,
                );
                self.csp.insert(key, server);
            }
            Effect::CspSend { conn, bytes } => {
                let key = self.key_of(conn).unwrap();
                self.csp.get_mut(&key).unwrap().receive(&bytes).unwrap();
            }
            Effect::CloseCsp { conn } => {
                if let Some(key) = self.key_of(conn) {
                    self.csp.remove(&key);
                }
            }
        }
    }
}

/// Tags of the decrypted `Reflected` events, in order, with their ids.
fn reflected(events: &[Event]) -> Vec<(u32, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Reflected {
                reflected_id,
                envelope,
                ..
            } => Some((*reflected_id, tag_of(&envelope.0))),
            _ => None,
        })
        .collect()
}

#[test]
fn handshake_completes_and_first_device_leads_after_queue_dry() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    let events = net.take(1);
    assert!(
        matches!(&events[..], [Event::ServerInfo(info), Event::QueueDry, Event::PromotedToLeader]
            if info.reflection_queue_length == 0
            && info.device_slot_state == DeviceSlotState::New
            && info.max_device_slots == 8
            && info.shared_device_data.is_none()),
        "{events:?}"
    );
    assert!(net.dev(1).is_leader());
    assert_eq!(net.dev(1).poll_timeout(), None);

    net.connect(2, config(2, DeviceSlotState::New));
    let events = net.take(2);
    assert!(
        matches!(&events[..], [Event::ServerInfo(_), Event::QueueDry]),
        "second device is not leader: {events:?}"
    );
}

#[test]
fn reflections_reach_online_and_offline_siblings_in_order() {
    const N: u64 = 5;
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    net.connect(2, config(2, DeviceSlotState::New));
    net.connect(3, config(3, DeviceSlotState::New));
    net.disconnect(3);
    net.take(1);
    net.take(2);

    let mut rng = ChaCha20Rng::seed_from_u64(100);
    let mut ids = Vec::new();
    for tag in 0..N {
        ids.push(net.dev(1).reflect(&text(tag), false, &mut rng).unwrap());
    }
    assert_eq!(ids, (1..=N as u32).collect::<Vec<_>>());
    net.run();

    let acked: Vec<u32> = net
        .take(1)
        .iter()
        .filter_map(|e| match e {
            Event::ReflectAcked { reflect_id, .. } => Some(*reflect_id),
            _ => None,
        })
        .collect();
    assert_eq!(acked, ids);

    let got = net.take(2);
    let tags: Vec<u64> = reflected(&got).iter().map(|&(_, t)| t).collect();
    assert_eq!(tags, (0..N).collect::<Vec<_>>());
    for e in &got {
        if let Event::Reflected { envelope, .. } = e {
            assert_eq!(envelope.0.device_id, 1, "sender id is set on reflect");
        }
    }
    for (id, _) in reflected(&got) {
        net.dev(2).ack_reflected(id).unwrap();
    }
    net.run();
    assert!(net.errors.is_empty(), "{:?}", net.errors);

    // Offline device 3 comes back: progress, all N in order, then dry.
    net.connect(3, config(3, DeviceSlotState::Existing));
    let events = net.take(3);
    let Event::ServerInfo(info) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(info.reflection_queue_length, N as u32);
    assert_eq!(info.device_slot_state, DeviceSlotState::Existing);
    let progress: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::QueueProgress { received, total } => Some((*received, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(
        progress,
        (1..=N as u32).map(|r| (r, N as u32)).collect::<Vec<_>>()
    );
    assert!(matches!(events.last(), Some(Event::QueueDry)), "{events:?}");
    let got = reflected(&events);
    assert_eq!(
        got.iter().map(|&(_, t)| t).collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    for (id, _) in &got {
        net.dev(3).ack_reflected(*id).unwrap();
    }
    assert_eq!(
        net.dev(3).ack_reflected(got[0].0),
        Err(DeviceError::NotAwaitingAck(got[0].0)),
        "a second ack is refused locally"
    );
    net.run();
    net.disconnect(3);

    net.connect(3, config(3, DeviceSlotState::Existing));
    let events = net.take(3);
    assert!(
        matches!(&events[..], [Event::ServerInfo(i), Event::QueueDry] if i.reflection_queue_length == 0),
        "nothing left after acking: {events:?}"
    );
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn ephemeral_reflects_get_no_ack_and_cannot_be_acked() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    net.connect(2, config(2, DeviceSlotState::New));
    net.take(1);
    net.take(2);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let id = net.dev(1).reflect(&text(9), true, &mut rng).unwrap();
    assert_eq!(id, 1);
    net.run();
    assert!(net.take(1).is_empty(), "no ReflectAck for ephemeral");
    let events = net.take(2);
    let [Event::Reflected {
        reflected_id,
        ephemeral: true,
        ..
    }] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        net.dev(2).ack_reflected(*reflected_id),
        Err(DeviceError::NotAwaitingAck(*reflected_id))
    );
}

#[test]
fn undecryptable_reflection_is_acked_and_dropped() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    net.connect(2, config(2, DeviceSlotState::New));
    net.disconnect(2);
    // Device 1 reflects an envelope sealed under a different key, at the d2m layer directly.
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let wrong = DeviceGroupKey::from_bytes([9; 32]).derive_keys();
    let sealed = seal_envelope(&wrong.dgrk, text(1), &mut rng).unwrap();
    let conn = ConnId(net.conn_of[&1]);
    let bytes = D2mMessage::Reflect(tandem_shared::d2m::Reflect::new(
        77,
        tandem_shared::d2m::ReflectFlags::NONE,
        sealed,
    ))
    .encode()
    .unwrap();
    net.group.on_binary(conn, &bytes, net.now);
    // Discard the ReflectAck for 77 (device 1 did not reflect it through its session).
    while net.group.poll_effect().is_some() {}
    net.connect(2, config(2, DeviceSlotState::Existing));
    let events = net.take(2);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::DroppedReflected { .. })),
        "{events:?}"
    );
    net.disconnect(2);
    net.connect(2, config(2, DeviceSlotState::Existing));
    let events = net.take(2);
    assert!(
        matches!(&events[..], [Event::ServerInfo(i), Event::QueueDry] if i.reflection_queue_length == 0),
        "the dropped entry was acked: {events:?}"
    );
}

#[test]
fn transaction_blocks_sibling_until_commit() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    net.connect(2, config(2, DeviceSlotState::New));
    net.take(1);
    net.take(2);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    net.dev(1)
        .begin_transaction(Scope::ContactSync, 0, &mut rng)
        .unwrap();
    net.run();
    assert_eq!(net.take(1), vec![Event::TransactionBegun]);
    assert_eq!(
        net.dev(1).begin_transaction(Scope::GroupSync, 0, &mut rng),
        Err(DeviceError::TransactionInProgress)
    );

    net.dev(2)
        .begin_transaction(Scope::GroupSync, 0, &mut rng)
        .unwrap();
    net.run();
    assert_eq!(
        net.take(2),
        vec![Event::TransactionRejected {
            holder: 1,
            scope: Some(Scope::ContactSync)
        }]
    );

    net.dev(1).reflect(&text(42), false, &mut rng).unwrap();
    net.run();
    assert!(net.take(2).is_empty(), "staged until commit");
    net.dev(1).commit_transaction().unwrap();
    net.run();
    let events = net.take(1);
    assert!(events.contains(&Event::CommitAcked), "{events:?}");
    let events = net.take(2);
    assert_eq!(reflected(&events).len(), 1);
    assert!(
        matches!(
            events.last(),
            Some(Event::TransactionEnded {
                device_id: 1,
                scope: Some(Scope::ContactSync)
            })
        ),
        "{events:?}"
    );
    // Retry succeeds now.
    net.dev(2)
        .begin_transaction(Scope::GroupSync, 0, &mut rng)
        .unwrap();
    net.run();
    assert_eq!(net.take(2), vec![Event::TransactionBegun]);
    assert_eq!(
        net.dev(1).commit_transaction(),
        Err(DeviceError::NoTransaction)
    );
}

#[test]
fn wrong_device_group_key_sees_close_4010() {
    let mut net = Net::new();
    let wrong = DeviceGroupKey::from_bytes([9; 32]).derive_keys();
    let config = DeviceConfig::new(wrong, 1, info("wrong"));
    net.connect(1, config);
    let events = net.take(1);
    assert_eq!(
        events,
        vec![Event::Closed {
            code: CloseCode::ProtocolError,
            reconnect: Reconnect::Automatic,
            origin: CloseOrigin::Remote
        }]
    );
    assert!(net.dev(1).is_closed());
}

#[test]
fn slot_state_mismatch_needs_user_action() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::Existing));
    let events = net.take(1);
    assert!(
        matches!(&events[..], [Event::Closed { code, reconnect: Reconnect::NeedsUserAction, .. }]
            if code.as_u16() == 4115),
        "{events:?}"
    );
}

#[test]
fn reflect_ack_out_of_order_is_a_protocol_error() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    net.take(1);
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    // Reflected but not delivered to the mediator: the acks are crafted instead.
    let device = net.dev(1);
    device.reflect(&text(1), false, &mut rng).unwrap();
    device.reflect(&text(2), false, &mut rng).unwrap();
    while device.poll_transmit().is_some() {}
    let crafted = D2mMessage::ReflectAck(ReflectAck {
        reflect_id: 2,
        timestamp: 5,
    })
    .encode()
    .unwrap();
    let err = device.on_binary(&crafted, 1_000, &mut rng).unwrap_err();
    assert_eq!(
        err,
        DeviceError::ReflectAckOutOfOrder {
            expected: Some(1),
            got: 2
        }
    );
    assert_eq!(err.close_code(), Some(CloseCode::ProtocolError));
    assert_eq!(
        device.poll_event(),
        Some(Event::Closed {
            code: CloseCode::ProtocolError,
            reconnect: Reconnect::Automatic,
            origin: CloseOrigin::Local
        })
    );
    assert!(device.is_closed());
    assert!(device.poll_transmit().is_none());
    assert_eq!(
        device.on_binary(&crafted, 1_000, &mut rng),
        Err(DeviceError::Closed)
    );
}

#[test]
fn devices_info_and_drop_device() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    net.connect(2, config(2, DeviceSlotState::New));
    net.take(1);
    net.take(2);
    net.dev(1).get_devices_info().unwrap();
    net.run();
    let events = net.take(1);
    let [Event::DevicesInfo(entries)] = &events[..] else {
        panic!("{events:?}")
    };
    let labels: Vec<(u64, String)> = entries
        .iter()
        .map(|e| (e.device_id, e.info.as_ref().unwrap().label.clone()))
        .collect();
    assert_eq!(labels, vec![(1, "dev1".into()), (2, "dev2".into())]);

    net.dev(1).drop_device(2).unwrap();
    net.run();
    assert_eq!(net.take(1), vec![Event::DropDeviceAck { device_id: 2 }]);
    let events = net.take(2);
    assert!(
        matches!(&events[..], [Event::Closed { code, reconnect: Reconnect::NeedsUserAction, origin: CloseOrigin::Remote }]
            if code.as_u16() == 4113),
        "{events:?}"
    );
}

#[test]
fn shared_device_data_arrives_in_later_server_info() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    net.dev(1).set_shared_device_data(3, &mut rng).unwrap();
    net.run();
    net.connect(2, config(2, DeviceSlotState::New));
    let events = net.take(2);
    let Event::ServerInfo(info) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        info.shared_device_data
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .version,
        3
    );
}

#[test]
fn commands_before_server_info_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut device = DeviceSession::new(config(1, DeviceSlotState::New), 0, &mut rng).unwrap();
    assert_eq!(
        device.reflect(&text(1), false, &mut rng),
        Err(DeviceError::NotOnline)
    );
    assert_eq!(device.get_devices_info(), Err(DeviceError::NotOnline));
    assert_eq!(device.csp_send(&[1]), Err(DeviceError::CspNotConfigured));
    assert!(
        device.poll_transmit().is_none(),
        "d2m-only sends nothing first"
    );
    assert!(!device.is_closed());
}

#[test]
fn server_info_overdue_closes_with_4013() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let mut device = DeviceSession::new(config(1, DeviceSlotState::New), 0, &mut rng).unwrap();
    assert_eq!(device.poll_timeout(), Some(30_000));
    device.on_timeout(29_999).unwrap();
    assert_eq!(
        device.on_timeout(30_000),
        Err(DeviceError::HandshakeTimeout)
    );
    assert!(matches!(
        device.poll_event(),
        Some(Event::Closed {
            code: CloseCode::ClientTimeout,
            origin: CloseOrigin::Local,
            ..
        })
    ));
}

#[test]
fn anything_but_server_info_after_client_hello_is_a_protocol_error() {
    let mut net = Net::new();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut device = DeviceSession::new(config(1, DeviceSlotState::New), 0, &mut rng).unwrap();
    net.group.on_connect(ConnId(99), 0, &mut rng);
    let Some(Effect::Send { bytes, .. }) = net.group.poll_effect() else {
        panic!()
    };
    device.on_binary(&bytes, 0, &mut rng).unwrap();
    assert!(device.poll_transmit().is_some(), "ClientHello");
    let dry = D2mMessage::from(tandem_shared::proto::d2m::ReflectionQueueDry {})
        .encode()
        .unwrap();
    let err = device.on_binary(&dry, 0, &mut rng).unwrap_err();
    assert!(matches!(err, DeviceError::Unexpected { .. }), "{err:?}");
    assert_eq!(err.close_code(), Some(CloseCode::ProtocolError));
}

#[test]
fn promotion_before_queue_dry_is_a_protocol_error() {
    let mut net = Net::new();
    net.connect(1, config(1, DeviceSlotState::New));
    net.connect(2, config(2, DeviceSlotState::New));
    net.disconnect(2);
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    net.dev(1).reflect(&text(1), false, &mut rng).unwrap();
    net.run();
    // Device 2 reconnects; intercept its frames and inject a promotion before the dry.
    let mut device = DeviceSession::new(config(2, DeviceSlotState::Existing), 0, &mut rng).unwrap();
    net.group.on_connect(ConnId(50), net.now, &mut rng);
    let mut frames = Vec::new();
    loop {
        while let Some(Effect::Send { bytes, .. }) = net.group.poll_effect() {
            frames.push(bytes);
        }
        let Some(bytes) = frames.first().cloned() else {
            break;
        };
        frames.remove(0);
        device.on_binary(&bytes, net.now, &mut rng).unwrap();
        if matches!(
            D2mMessage::decode(&bytes).unwrap(),
            D2mMessage::ServerInfo(_)
        ) {
            break;
        }
        while let Some(out) = device.poll_transmit() {
            net.group.on_binary(ConnId(50), &out, net.now);
        }
    }
    let promote = D2mMessage::from(tandem_shared::proto::d2m::RolePromotedToLeader {})
        .encode()
        .unwrap();
    assert_eq!(
        device.on_binary(&promote, net.now, &mut rng),
        Err(DeviceError::PromotedBeforeDry)
    );
}

#[test]
fn csp_handshake_and_payloads_through_the_mediator() {
    let mut net = Net::new();
    net.connect(1, with_csp(config(1, DeviceSlotState::New)));
    let events = net.take(1);
    assert!(
        events.iter().any(|e| matches!(e, Event::CspEstablished(_))),
        "{events:?}"
    );
    assert!(matches!(events[0], Event::ServerInfo(_)), "{events:?}");
    assert!(net.csp[&1].is_established());
    assert!(net.csp_events[&1].iter().any(
        |e| matches!(e, ServerEvent::Authenticated { identity, .. } if *identity == IDENTITY)
    ));

    // Device → chat server: an echo-request payload container (type 0x00 + data).
    let up = vec![0x00, 0x00, 0x00, 0x00, 1, 2, 3];
    net.dev(1).csp_send(&up).unwrap();
    net.run();
    assert!(net.csp_events[&1]
        .iter()
        .any(|e| *e == ServerEvent::Payload(up.clone())));

    // Chat server → device.
    let down = vec![0x80, 0x00, 0x00, 0x00, 4, 5, 6];
    net.csp.get_mut(&1).unwrap().send(&down).unwrap();
    net.run();
    let events = net.take(1);
    assert_eq!(
        events,
        vec![Event::CspPayload(tandem_shared::device::CspPayload(down))]
    );
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

/// A device that speaks CSP on demand (docs/protocol.md "CSP on demand"), logged in at the chat
/// server through a group that has a push URL.
fn on_demand_net() -> (Net, DeviceConfig) {
    let mut net = Net::new();
    let mut group_config = GroupConfig::default();
    group_config.push_url = Some("https://mediator.example/push/abc".into());
    net.group = Group::new(
        group_config,
        group_keys().dgpk_public,
        MemoryStore::new(),
        1_000,
    )
    .unwrap();
    let mut config = with_csp(config(1, DeviceSlotState::New));
    config.tandem_features = TANDEM_FEATURE_CSP_ON_DEMAND;
    (net, config)
}

#[test]
fn csp_on_demand_closes_wakes_and_reopens_the_chat_server_connection() {
    let (mut net, config) = on_demand_net();
    net.connect(1, config);
    let events = net.take(1);
    assert!(
        events.contains(&Event::PushUrl("https://mediator.example/push/abc".into())),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::CspEstablished(_))));
    assert!(net.dev(1).csp_on_demand());

    // Bytes the chat server sent just before the close reach the device after it asked to
    // close: they belong to the closed connection and are dropped, not fed to the next login.
    let down = vec![0x80, 0x00, 0x00, 0x00, 4, 5, 6];
    net.csp.get_mut(&1).unwrap().send(&down).unwrap();
    let mut stale = Vec::new();
    while let Some(bytes) = net.csp.get_mut(&1).unwrap().poll_transmit() {
        stale.extend(bytes);
    }
    net.group
        .on_csp_bytes(ConnId(net.conn_of[&1]), &stale, net.now);
    let held: Vec<Effect> = std::iter::from_fn(|| net.group.poll_effect()).collect();
    net.dev(1).close_csp().unwrap();
    assert!(!net.dev(1).is_csp_open());
    for effect in held {
        net.apply(effect);
    }
    net.run();
    assert!(
        !net.csp.contains_key(&1),
        "the chat server socket is closed"
    );
    assert_eq!(
        net.take(1),
        vec![Event::CspClosed],
        "the stale payload is dropped"
    );

    // The chat server has something: a push wakes the leader, which logs in again.
    net.group.on_push(net.now);
    net.run();
    assert_eq!(net.take(1), vec![Event::Wake]);
    net.devices
        .get_mut(&1)
        .unwrap()
        .open_csp(&mut net.rng)
        .unwrap();
    net.run();
    assert!(net
        .take(1)
        .iter()
        .any(|e| matches!(e, Event::CspEstablished(_))));
    net.csp.get_mut(&1).unwrap().send(&down).unwrap();
    net.run();
    assert_eq!(
        net.take(1),
        vec![Event::CspPayload(tandem_shared::device::CspPayload(down))]
    );
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn opening_while_the_close_is_unconfirmed_waits_for_it() {
    let (mut net, config) = on_demand_net();
    net.connect(1, config);
    net.take(1);
    net.dev(1).close_csp().unwrap();
    net.devices
        .get_mut(&1)
        .unwrap()
        .open_csp(&mut net.rng)
        .unwrap();
    assert!(
        !net.dev(1).is_csp_open(),
        "not before the close is confirmed"
    );
    net.run();
    let events = net.take(1);
    assert_eq!(events.first(), Some(&Event::CspClosed), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Event::CspEstablished(_))));
    assert!(net.dev(1).is_csp_open());
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn without_the_extension_there_is_no_push_url_and_no_close() {
    let (mut net, mut config) = on_demand_net();
    config.tandem_features = 0;
    net.connect(1, config);
    let events = net.take(1);
    assert!(!events.iter().any(|e| matches!(e, Event::PushUrl(_))));
    assert!(!net.dev(1).csp_on_demand());
    assert_eq!(
        net.dev(1).close_csp(),
        Err(DeviceError::CspOnDemandNotNegotiated)
    );
    assert!(net.dev(1).is_csp_open());
}
