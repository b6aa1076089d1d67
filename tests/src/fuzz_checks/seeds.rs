//! Valid inputs for every fuzz target, built with the library's own encoders: the starting corpus
//! and the "known good" half of `fuzz/regressions/` (written by the ignored test
//! `write_seed_inputs` in `tests/tests/fuzz_regressions.rs`).
//!
//! The stream targets read a mode byte and chunk sizes first; the layouts here mirror
//! [`super::csp_stream`] and [`super::input::Chunking`].

use prost::Message;
use tandem_shared::crypto::{seal_nonce_ahead, SecretKey};
use tandem_shared::csp::{
    encode_e2e, CspFeatures, CspPayload, DeliveryReceipt, DeliveryStatus, DeviceCookie,
    E2eMessageType, Extensions, GroupMemberContainer, MessageAck, MessageFlags,
    MessageWithMetadataBox, PushToken, PushTokenType,
};
use tandem_shared::d2d;
use tandem_shared::d2m::{D2mMessage, Reflect, ReflectAck, ReflectFlags, Reflected, ReflectedAck};
use tandem_shared::id_backup;
use tandem_shared::keys::ClientUrlInfo;
use tandem_shared::proto::{common, d2d as d2d_pb, d2m as d2m_pb, sync};

use super::input::{group_keys, rng};

/// One seed: its target, a file name (without the `seed-` prefix) and the bytes.
pub type Seed = (&'static str, &'static str, Vec<u8>);

/// Every seed of every target.
#[must_use]
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    out.extend(d2m_container());
    out.extend(d2m_structbuf());
    out.extend(d2d_envelope());
    out.extend(csp_server());
    out.extend(csp_client());
    out.extend(csp_payload());
    out.extend(url_and_backup());
    out
}

fn d2m(message: D2mMessage) -> Vec<u8> {
    message.encode().expect("seed message fits a container")
}

fn d2m_container() -> Vec<Seed> {
    let t = "d2m_container";
    let augmented = d2m_pb::devices_info::AugmentedDeviceInfo {
        encrypted_device_info: vec![0xaa; 60],
        device_slot_expiration_policy: d2m_pb::DeviceSlotExpirationPolicy::Persistent as i32,
        connection_state: Some(
            d2m_pb::devices_info::augmented_device_info::ConnectionState::ConnectedSince(
                1_700_000_000_000,
            ),
        ),
    };
    vec![
        (
            t,
            "server-hello",
            d2m(d2m_pb::ServerHello {
                version: 0,
                esk: SecretKey::from_bytes([0x11; 32]).public_key().0.to_vec(),
                challenge: vec![0x22; 32],
            }
            .into()),
        ),
        (
            t,
            "client-hello",
            d2m(d2m_pb::ClientHello {
                version: 0,
                response: vec![0x33; 72],
                device_id: 0x0102_0304_0506_0708,
                device_slots_exhausted_policy: 1,
                device_slot_expiration_policy: 1,
                encrypted_device_info: vec![0x44; 80],
                expected_device_slot_state: 1,
                tandem_features: 1,
            }
            .into()),
        ),
        (
            t,
            "server-info",
            d2m(d2m_pb::ServerInfo {
                max_device_slots: 4,
                device_slot_state: 1,
                encrypted_shared_device_data: vec![0x55; 42],
                current_time: 1_700_000_000_000,
                reflection_queue_length: 3,
                tandem_features: 1,
            }
            .into()),
        ),
        (
            t,
            "devices-info",
            d2m(d2m_pb::DevicesInfo {
                augmented_device_info: [(7, augmented)].into(),
            }
            .into()),
        ),
        (
            t,
            "begin-transaction",
            d2m(d2m_pb::BeginTransaction {
                encrypted_scope: vec![0x66; 42],
                ttl: 30,
            }
            .into()),
        ),
        (
            t,
            "transaction-rejected",
            d2m(d2m_pb::TransactionRejected {
                device_id: 9,
                encrypted_scope: vec![0x77; 42],
            }
            .into()),
        ),
        (
            t,
            "drop-device",
            d2m(d2m_pb::DropDevice { device_id: 5 }.into()),
        ),
        (
            t,
            "reflection-queue-dry",
            d2m(d2m_pb::ReflectionQueueDry {}.into()),
        ),
        (t, "proxy", d2m(D2mMessage::Proxy(vec![0x99; 48]))),
        (t, "csp-close", d2m(D2mMessage::CspClose)),
        (t, "wake", d2m(D2mMessage::Wake)),
        (
            t,
            "push-url",
            d2m(D2mMessage::PushUrl(
                "https://mediator.example/push/00".into(),
            )),
        ),
        (
            t,
            "reflect",
            d2m(Reflect::new(1, ReflectFlags::EPHEMERAL, vec![0x88; 64]).into()),
        ),
        (
            t,
            "reflect-ack",
            d2m(ReflectAck {
                reflect_id: 1,
                timestamp: 1_700_000_000_000,
            }
            .into()),
        ),
        (
            t,
            "reflected",
            d2m(Reflected::new(2, ReflectFlags::NONE, 1_700_000_000_000, vec![0x77; 64]).into()),
        ),
        (
            t,
            "reflected-ack",
            d2m(ReflectedAck { reflected_id: 2 }.into()),
        ),
    ]
}

fn d2m_structbuf() -> Vec<Seed> {
    let t = "d2m_structbuf";
    let mut long_header = Reflect::new(3, ReflectFlags::NONE, vec![0xab; 40]);
    long_header.header_length = 12;
    let payload = |message: D2mMessage| d2m(message).split_off(4);
    vec![
        (t, "reflect-long-header", payload(long_header.into())),
        (
            t,
            "reflected",
            payload(Reflected::new(4, ReflectFlags::EPHEMERAL, 7, vec![0xcd; 40]).into()),
        ),
        (
            t,
            "reflect-ack",
            payload(
                ReflectAck {
                    reflect_id: 3,
                    timestamp: 8,
                }
                .into(),
            ),
        ),
        (
            t,
            "reflected-ack",
            payload(ReflectedAck { reflected_id: 4 }.into()),
        ),
    ]
}

fn contact(identity: &str) -> sync::Contact {
    sync::Contact {
        identity: identity.to_owned(),
        public_key: Some(vec![0x12; 32]),
        first_name: Some("Ada".to_owned()),
        ..Default::default()
    }
}

fn d2d_envelope() -> Vec<Seed> {
    let t = "d2d_envelope";
    let envelope = |content: d2d_pb::envelope::Content| d2d_pb::Envelope {
        padding: vec![0; 5],
        device_id: 0x1111_2222_3333_4444,
        protocol_version: 1,
        content: Some(content),
    };
    let outgoing = envelope(d2d_pb::envelope::Content::OutgoingMessage(
        d2d_pb::OutgoingMessage {
            conversation: Some(d2d_pb::ConversationId {
                id: Some(d2d_pb::conversation_id::Id::Group(common::GroupIdentity {
                    group_id: 77,
                    creator_identity: "ECHOECHO".to_owned(),
                })),
            }),
            message_id: 1,
            thread_message_id: Some(2),
            created_at: 1_700_000_000_000,
            r#type: 1,
            body: b"hello".to_vec(),
            nonces: vec![vec![0x24; 24]],
        },
    ));
    let incoming = envelope(d2d_pb::envelope::Content::IncomingMessage(
        d2d_pb::IncomingMessage {
            sender_identity: "ECHOECHO".to_owned(),
            message_id: 3,
            created_at: 1_700_000_000_000,
            r#type: 1,
            body: b"hi".to_vec(),
            nonce: vec![0x25; 24],
        },
    ));
    let contact_sync = envelope(d2d_pb::envelope::Content::ContactSync(
        d2d_pb::ContactSync {
            action: Some(d2d_pb::contact_sync::Action::Create(
                d2d_pb::contact_sync::Create {
                    contact: Some(contact("ECHOECHO")),
                },
            )),
        },
    ));
    let settings = envelope(d2d_pb::envelope::Content::SettingsSync(
        d2d_pb::SettingsSync {
            action: Some(d2d_pb::settings_sync::Action::Update(
                d2d_pb::settings_sync::Update {
                    settings: Some(sync::Settings {
                        contact_sync_policy: Some(1),
                        ..Default::default()
                    }),
                },
            )),
        },
    ));
    let new_device = envelope(d2d_pb::envelope::Content::NewDeviceSyncRequest(
        d2d_pb::NewDeviceSyncRequest {
            max_history_messages: 100,
        },
    ));
    let keys = group_keys();
    let mut rng = rng(0x5eed);
    let sealed =
        d2d::seal_envelope(&keys.dgrk, incoming.clone(), &mut rng).expect("small envelope");
    vec![
        (t, "outgoing-message", outgoing.encode_to_vec()),
        (t, "incoming-message", incoming.encode_to_vec()),
        (t, "contact-sync-create", contact_sync.encode_to_vec()),
        (t, "settings-sync", settings.encode_to_vec()),
        (t, "new-device-sync-request", new_device.encode_to_vec()),
        (
            t,
            "device-info",
            d2d_pb::DeviceInfo {
                padding: vec![3; 3],
                platform: d2d_pb::device_info::Platform::Web as i32,
                platform_details: "Firefox on Linux".to_owned(),
                app_version: "0.1.0".to_owned(),
                label: "laptop".to_owned(),
            }
            .encode_to_vec(),
        ),
        (
            t,
            "transaction-scope",
            d2d_pb::TransactionScope { scope: 2 }.encode_to_vec(),
        ),
        (t, "sealed-envelope", sealed),
        (
            t,
            "sealed-device-info",
            seal_nonce_ahead(&keys.dgdik, &mut rng, b"\x10\x01"),
        ),
    ]
}

/// Mode byte, no chunk sizes (count 0) or the given ones, then the rest.
fn stream(mode: u8, sizes: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = vec![mode, u8::try_from(sizes.len()).unwrap_or(0)];
    out.extend_from_slice(sizes);
    out.extend_from_slice(rest);
    out
}

/// Frame payloads in the layout `payloads()` reads: count, then u16-le length and bytes each.
fn frames(payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![u8::try_from(payloads.len()).unwrap_or(0)];
    for payload in payloads {
        let len = u16::try_from(payload.len()).unwrap_or(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fn echo(data: &[u8]) -> Vec<u8> {
    CspPayload::EchoRequest(data.to_vec())
        .encode()
        .expect("small echo")
}

fn csp_server() -> Vec<Seed> {
    let t = "csp_server";
    let client_hello = {
        let mut hello = SecretKey::from_bytes([0x03; 32]).public_key().0.to_vec();
        hello.extend_from_slice(&[0x04; 16]);
        hello
    };
    let mut raw = vec![0]; // identity key: CK
    raw.extend_from_slice(&client_hello);
    raw.extend_from_slice(&[0x5a; 144]);
    let extensions = Extensions {
        client_info: Some("Tandem fuzz seed".to_owned()),
        csp_device_id: Some(0x0102_0304_0506_0708),
        features: Some(CspFeatures(1)),
        device_cookie: Some(DeviceCookie([0x0c; 16])),
    }
    .encode()
    .expect("small extensions");
    let mut valid = b"ECHOECHO".to_vec();
    valid.extend_from_slice(&u16::try_from(extensions.len()).unwrap_or(0).to_le_bytes());
    valid.extend_from_slice(&extensions);
    valid.extend(frames(&[&echo(b"ping"), &[0xd0, 0, 0, 0]]));
    let mut login = b"ECHOECHO".to_vec();
    login.extend_from_slice(b"threema-clever-extension-field\x16\x00");
    login.extend_from_slice(&[0; 88]);
    login.extend_from_slice(&[0x00, 0x03, 0x00, b'a', b'b', b'c']);
    vec![
        (t, "raw-client-hello", stream(0, &[7, 0], &raw)),
        (t, "after-client-hello", stream(1, &[], &[0x5a; 144])),
        (t, "fuzzed-login", stream(2, &[13], &login)),
        (t, "valid-login-two-frames", stream(3, &[], &valid)),
        (t, "valid-login-chunked", stream(3, &[1, 3, 200], &valid)),
    ]
}

fn csp_client() -> Vec<Seed> {
    let t = "csp_client";
    let payloads = frames(&[
        &echo(b"pong"),
        &CspPayload::QueueSendComplete
            .encode()
            .expect("empty payload"),
    ]);
    vec![
        (t, "raw-server-hello", stream(0, &[], &[0x5b; 80])),
        (t, "after-server-hello", stream(1, &[5], &[0x5c; 32])),
        (t, "established-two-frames", stream(2, &[], &payloads)),
        (t, "established-chunked", stream(2, &[2, 50, 0], &payloads)),
    ]
}

fn message_box() -> MessageWithMetadataBox {
    MessageWithMetadataBox {
        sender: *b"ECHOECHO",
        receiver: *b"*GATEWAY",
        message_id: 0x0102_0304_0506_0708,
        created_at: 1_700_000_000,
        flags: MessageFlags(0x01),
        legacy_nickname: [0; 32],
        metadata: vec![0x6d; 40],
        nonce: [0x6e; 24],
        message_box: vec![0x6f; 48],
    }
}

fn csp_payload() -> Vec<Seed> {
    let t = "csp_payload";
    let payload = |p: CspPayload| p.encode().expect("seed payload fits a container");
    let legacy = MessageWithMetadataBox {
        metadata: Vec::new(),
        ..message_box()
    };
    let ack = MessageAck {
        identity: *b"ECHOECHO",
        message_id: 42,
    };
    let token = PushToken::new(PushTokenType::FCM, b"token".to_vec()).expect("short token");
    let mut splitter_stream = vec![3, 30, 1, 0];
    splitter_stream.extend_from_slice(&[0x5d; 80 + 32]);
    splitter_stream.extend_from_slice(&[20, 0]);
    splitter_stream.extend_from_slice(&[0x5e; 20]);
    let group_body = GroupMemberContainer {
        creator: *b"ECHOECHO",
        group_id: 77,
        inner: b"group text".to_vec(),
    }
    .encode();
    vec![
        (
            t,
            "outgoing-message-with-metadata",
            payload(CspPayload::OutgoingMessage(message_box())),
        ),
        (
            t,
            "incoming-legacy-message",
            payload(CspPayload::IncomingMessage(legacy)),
        ),
        (
            t,
            "outgoing-message-ack",
            payload(CspPayload::OutgoingMessageAck(ack)),
        ),
        (
            t,
            "set-push-token",
            payload(CspPayload::SetPushNotificationToken(token)),
        ),
        (
            t,
            "delete-push-tokens",
            payload(CspPayload::DeletePushNotificationToken(vec![1, 2])),
        ),
        (
            t,
            "idle-timeout",
            payload(CspPayload::SetConnectionIdleTimeout(300)),
        ),
        (
            t,
            "close-error",
            payload(CspPayload::CloseError {
                can_reconnect: true,
                message: "bye".to_owned(),
            }),
        ),
        (t, "alert", payload(CspPayload::Alert("héllo".to_owned()))),
        (
            t,
            "e2e-text",
            encode_e2e(E2eMessageType(0x01), b"hello", &mut rng(0xe2e)),
        ),
        (
            t,
            "delivery-receipt",
            DeliveryReceipt::new(DeliveryStatus::Read, vec![7, 8])
                .expect("ids")
                .encode(),
        ),
        (t, "group-member-container", group_body),
        (
            t,
            "extensions",
            Extensions::new("Tandem fuzz seed")
                .encode()
                .expect("small extensions"),
        ),
        (t, "server-unit-stream", splitter_stream),
    ]
}

fn url_and_backup() -> Vec<Seed> {
    let t = "url_and_backup";
    let info = ClientUrlInfo::new(SecretKey::from_bytes([0x07; 32]).public_key(), "ab")
        .expect("valid server group");
    let backup = id_backup::encode(
        "ECHOECHO",
        &SecretKey::from_bytes([0x01; 32]),
        "correct horse",
        &mut rng(0xb4c),
    )
    .expect("valid backup");
    vec![
        (t, "mediator-path", format!("/{}", info.path()).into_bytes()),
        (
            t,
            "id-backup",
            format!("{backup}\ncorrect horse").into_bytes(),
        ),
    ]
}
