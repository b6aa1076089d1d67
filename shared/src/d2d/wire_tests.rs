//! Schema checks against bytes encoded by hand from the protobuf rules (tag = field << 3 | wire
//! type; varint 0, fixed64 1, LEN 2), so a wrong field number, type or missing `optional` in the
//! `.proto` files fails here.

use prost::Message;

use crate::proto::common::{CspE2eMessageType, Unit};
use crate::proto::d2d::{self, envelope::Content, incoming_message_update, Envelope};
use crate::proto::sync::{self, contact, mdm_parameters};

fn hex_of(message: &impl Message) -> String {
    hex::encode(message.encode_to_vec())
}

#[test]
fn present_zero_setting_differs_from_absent() {
    // read_receipt_policy: field 3 varint -> 0x18, value SEND_READ_RECEIPT = 0.
    let set = sync::Settings {
        read_receipt_policy: Some(0),
        ..Default::default()
    };
    assert_eq!(hex_of(&set), "1800");
    assert_eq!(hex_of(&sync::Settings::default()), "");
}

#[test]
fn empty_contact_nickname_is_sent() {
    // identity: field 1 LEN -> 0a 08 "ABCDEFGH"; nickname: field 6 LEN -> 0x32, empty.
    let contact = sync::Contact {
        identity: "ABCDEFGH".to_owned(),
        nickname: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(hex_of(&contact), "0a0841424344454647483200");
}

#[test]
fn empty_profile_nickname_is_sent() {
    // nickname: field 1 LEN -> 0a 00.
    let profile = sync::UserProfile {
        nickname: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(hex_of(&profile), "0a00");
}

#[test]
fn contact_high_field_numbers() {
    // In field order (as prost writes):
    // read_receipt_policy_override: field 16 LEN -> 130 = varint 82 01, length 2, then
    // `default` (field 1 LEN, empty Unit) -> 0a 00;
    // work_verification_level: field 21 varint -> 168 = varint a8 01, value 1.
    let contact = sync::Contact {
        work_verification_level: Some(1),
        read_receipt_policy_override: Some(contact::ReadReceiptPolicyOverride {
            r#override: Some(contact::read_receipt_policy_override::Override::Default(
                Unit {},
            )),
        }),
        ..Default::default()
    };
    assert_eq!(hex_of(&contact), "8201020a00a80101");
}

#[test]
fn thread_message_id_zero_is_sent() {
    // thread_message_id: field 6 fixed64 -> 0x31, eight zero bytes.
    let message = d2d::OutgoingMessage {
        thread_message_id: Some(0),
        ..Default::default()
    };
    assert_eq!(hex_of(&message), "310000000000000000");
}

#[test]
fn incoming_message_update_read() {
    // Update: message_id (field 2 fixed64 -> 0x11) = 1, read (field 3 LEN -> 0x1a) { at (field 1
    // varint -> 0x08) = 2 } = 13 bytes; updates: field 1 LEN -> 0a 0d; Envelope field 11 LEN ->
    // 0x5a, 15 bytes.
    let envelope = Envelope {
        content: Some(Content::IncomingMessageUpdate(d2d::IncomingMessageUpdate {
            updates: vec![incoming_message_update::Update {
                conversation: None,
                message_id: 1,
                update: Some(incoming_message_update::update::Update::Read(
                    incoming_message_update::Read { at: 2 },
                )),
            }],
        })),
        ..Default::default()
    };
    assert_eq!(hex_of(&envelope), "5a0f0a0d1101000000000000001a020802");
}

#[test]
fn mdm_parameters_map_entry() {
    // external_parameters: field 1 LEN, one entry { key (1) "a", value (2) Parameter {
    // boolean_value (field 2 varint -> 0x10) = true } }.
    let mut parameters = sync::MdmParameters::default();
    parameters.external_parameters.insert(
        "a".to_owned(),
        mdm_parameters::Parameter {
            value: Some(mdm_parameters::parameter::Value::BooleanValue(true)),
        },
    );
    assert_eq!(hex_of(&parameters), "0a070a016112021001");
}

#[test]
fn csp_e2e_message_type_values() {
    let expected = [
        (CspE2eMessageType::InvalidType, 0x00),
        (CspE2eMessageType::Text, 0x01),
        (CspE2eMessageType::Location, 0x10),
        (CspE2eMessageType::PollSetup, 0x15),
        (CspE2eMessageType::PollVote, 0x16),
        (CspE2eMessageType::File, 0x17),
        (CspE2eMessageType::ContactSetProfilePicture, 0x18),
        (CspE2eMessageType::ContactDeleteProfilePicture, 0x19),
        (CspE2eMessageType::ContactRequestProfilePicture, 0x1a),
        (CspE2eMessageType::GroupText, 0x41),
        (CspE2eMessageType::GroupLocation, 0x42),
        (CspE2eMessageType::GroupImage, 0x43),
        (CspE2eMessageType::GroupVideo, 0x44),
        (CspE2eMessageType::GroupAudio, 0x45),
        (CspE2eMessageType::GroupFile, 0x46),
        (CspE2eMessageType::GroupSetup, 0x4a),
        (CspE2eMessageType::GroupName, 0x4b),
        (CspE2eMessageType::GroupLeave, 0x4c),
        (CspE2eMessageType::GroupCallStart, 0x4f),
        (CspE2eMessageType::GroupSetProfilePicture, 0x50),
        (CspE2eMessageType::GroupSyncRequest, 0x51),
        (CspE2eMessageType::GroupPollSetup, 0x52),
        (CspE2eMessageType::GroupPollVote, 0x53),
        (CspE2eMessageType::GroupDeleteProfilePicture, 0x54),
        (CspE2eMessageType::CallOffer, 0x60),
        (CspE2eMessageType::CallAnswer, 0x61),
        (CspE2eMessageType::CallIceCandidate, 0x62),
        (CspE2eMessageType::CallHangup, 0x63),
        (CspE2eMessageType::CallRinging, 0x64),
        (CspE2eMessageType::DeliveryReceipt, 0x80),
        (CspE2eMessageType::GroupDeliveryReceipt, 0x81),
        (CspE2eMessageType::TypingIndicator, 0x90),
        (CspE2eMessageType::EditMessage, 0x91),
        (CspE2eMessageType::DeleteMessage, 0x92),
        (CspE2eMessageType::GroupEditMessage, 0x93),
        (CspE2eMessageType::GroupDeleteMessage, 0x94),
        (CspE2eMessageType::ForwardSecurityEnvelope, 0xa0),
        (CspE2eMessageType::Empty, 0xfc),
        (CspE2eMessageType::WebSessionResume, 0xfe),
    ];
    for (kind, value) in expected {
        assert_eq!(i32::from(kind), value, "{kind:?}");
    }
}

#[test]
fn sync_enum_values() {
    assert_eq!(i32::from(sync::ConversationVisibility::Archived), 1);
    assert_eq!(i32::from(sync::ConversationVisibility::Pinned), 2);
    assert_eq!(i32::from(contact::ActivityState::Invalid), 2);
    assert_eq!(i32::from(contact::SyncState::Custom), 2);
    assert_eq!(i32::from(sync::group::UserState::Left), 2);
    assert_eq!(i32::from(sync::group::notification_trigger_policy_override::policy::NotificationTriggerPolicy::Never), 1);
    assert_eq!(i32::from(d2d::device_info::Platform::Web), 4);
}

/// Protocol version 23 (docs/protocol.md): `GroupSync.Update.member_state_changes` is field 2,
/// a map string → enum (entry: key field 1, value field 2).
#[test]
fn group_sync_update_member_state_changes_is_a_map_at_field_2() {
    use d2d::group_sync::{self, update::MemberStateChange};
    let envelope = Envelope {
        content: Some(Content::GroupSync(d2d::GroupSync {
            action: Some(group_sync::Action::Update(group_sync::Update {
                group: None,
                member_state_changes: [("ABCDEFGH".to_owned(), MemberStateChange::Kicked as i32)]
                    .into(),
            })),
        })),
        ..Default::default()
    };
    // entry 0a08 "ABCDEFGH" 1001 (12) → 120c…; Update (14) → GroupSync.update 120e…;
    // Envelope.group_sync field 7 → 3a10….
    let expected = "3a10120e120c0a0841424344454647481001";
    assert_eq!(hex_of(&envelope), expected);
    assert_eq!(
        Envelope::decode(hex::decode(expected).unwrap().as_slice()).unwrap(),
        envelope
    );
}

/// Protocol version 23: `TransactionScope` gains DROP_DEVICE = 7 and WORK_SYNC_DELTA = 8;
/// `AcquaintanceLevel` 1 is GROUP_OR_DELETED; `CspE2eMessageType` has WORK_SYNC_DELTA = 0xfd.
#[test]
fn protocol_version_23_enum_values() {
    use d2d::transaction_scope::Scope;
    let scope = |s: Scope| d2d::TransactionScope { scope: s as i32 };
    assert_eq!(hex_of(&scope(Scope::DropDevice)), "0807");
    assert_eq!(hex_of(&scope(Scope::WorkSyncDelta)), "0808");
    assert_eq!(
        d2d::TransactionScope::decode(&[0x08, 0x08][..])
            .unwrap()
            .scope(),
        Scope::WorkSyncDelta
    );
    assert_eq!(contact::AcquaintanceLevel::GroupOrDeleted as i32, 1);
    assert_eq!(CspE2eMessageType::WorkSyncDelta as i32, 0xfd);
    // Group join request and response (0x4d, 0x4e) are no longer named.
    assert!(CspE2eMessageType::try_from(0x4d).is_err());
    assert!(CspE2eMessageType::try_from(0x4e).is_err());
    assert_eq!(
        crate::proto::common::CspFeatureMaskFlag::GroupSupport as i32,
        0x0002
    );
}

/// Encodes to `expected` and decodes back to the same message.
fn assert_wire<M: Message + Default + PartialEq + core::fmt::Debug>(message: &M, expected: &str) {
    assert_eq!(hex_of(message), expected, "{message:?}");
    assert_eq!(
        &M::decode(hex::decode(expected).unwrap().as_slice()).unwrap(),
        message,
        "{expected}"
    );
}

/// Protocol version 23's `common` additions: `BlobData`, `Timespan`, `Resolution`.
#[test]
fn common_protocol_version_23_messages() {
    use crate::proto::common::{BlobData, Resolution, Timespan};
    // id: field 1 LEN 0a 02 0102; data: field 2 LEN 12 01 03.
    let blob = BlobData {
        id: vec![1, 2],
        data: vec![3],
    };
    assert_wire(&blob, "0a020102120103");
    // from: field 1 varint 08 01; to: field 2 varint 10 02.
    assert_wire(&Timespan { from: 1, to: 2 }, "08011002");
    // 640 = varint 80 05, 480 = varint e0 03.
    let resolution = Resolution {
        width: 640,
        height: 480,
    };
    assert_wire(&resolution, "08800510e003");
}

/// Protocol version 23's CSP e2e bodies (`csp_e2e`): edit, delete, group call start, reaction.
#[test]
fn csp_e2e_protocol_version_23_bodies() {
    use crate::proto::csp_e2e::{reaction, DeleteMessage, EditMessage, GroupCallStart, Reaction};
    // message_id: field 1 fixed64 -> 09 + 8 bytes little-endian; text: field 2 LEN -> 12.
    let edit = EditMessage {
        message_id: 0x0102_0304_0506_0708,
        text: "hi".to_owned(),
    };
    assert_wire(&edit, "09080706050403020112026869");
    assert_wire(&DeleteMessage { message_id: 1 }, "090100000000000000");
    // protocol_version: 08 01; gck: 12 02 aaaa; sfu_base_url: 1a 01 "x".
    let call = GroupCallStart {
        protocol_version: 1,
        gck: vec![0xaa, 0xaa],
        sfu_base_url: "x".to_owned(),
    };
    assert_wire(&call, "08011202aaaa1a0178");
    // The emoji 👍 (f0 9f 91 8d) applied (field 2) and withdrawn (field 3); an empty apply is
    // still present.
    let thumbs = vec![0xf0, 0x9f, 0x91, 0x8d];
    for (action, hex) in [
        (reaction::Action::Apply(thumbs.clone()), "12"),
        (reaction::Action::Withdraw(thumbs), "1a"),
    ] {
        let message = Reaction {
            message_id: 2,
            action: Some(action),
        };
        assert_wire(&message, &format!("090200000000000000{hex}04f09f918d"));
    }
    let empty = Reaction {
        message_id: 2,
        action: Some(reaction::Action::Apply(Vec::new())),
    };
    assert_wire(&empty, "0902000000000000001200");
}

/// `csp_e2e.WorkSyncDelta`, nested down to `sync.WorkAvailabilityStatus`.
#[test]
fn csp_e2e_work_sync_delta() {
    use crate::proto::csp_e2e::work_sync_delta::{self as wsd, contact_sync, delta};
    use crate::proto::csp_e2e::WorkSyncDelta;
    // require_work_sync: field 1 LEN, an empty Unit.
    let require = WorkSyncDelta {
        action: Some(wsd::Action::RequireWorkSync(Unit {})),
    };
    assert_wire(&require, "0a00");
    let busy = sync::WorkAvailabilityStatus {
        category: sync::WorkAvailabilityStatusCategory::Busy as i32,
        description: "x".to_owned(),
    };
    let update = wsd::ContactSync {
        action: Some(contact_sync::Action::Update(contact_sync::Update {
            identity: "ABCDEFGH".to_owned(),
            availability_status: Some(busy),
        })),
    };
    let apply = WorkSyncDelta {
        action: Some(wsd::Action::Apply(wsd::Apply {
            deltas: vec![wsd::Delta {
                applied_at: 5,
                action: Some(delta::Action::ContactSync(update)),
            }],
        })),
    };
    // status 0802 120178 (5) → Update: 0a08 "ABCDEFGH" 1205… (17) → ContactSync: 0a11… (19)
    // → Delta: 0805 1213… (23) → Apply: 0a17… (25) → WorkSyncDelta.apply: 1219….
    assert_wire(
        &apply,
        "12190a17080512130a110a08414243444546474812050802120178",
    );
}

/// Protocol version 23's Work fields in `sync` (Contact 26 and 27, UserProfile 5) and
/// `ThreemaWorkCredentials`.
#[test]
fn sync_work_fields() {
    // identity 0a08…; work_last_full_sync_at: field 26 varint -> tag 208 = d0 01, a present 0;
    // work_availability_status: field 27 LEN -> tag 218 = da 01, { category UNAVAILABLE 0801 }.
    let contact = sync::Contact {
        identity: "ABCDEFGH".to_owned(),
        work_last_full_sync_at: Some(0),
        work_availability_status: Some(sync::WorkAvailabilityStatus {
            category: sync::WorkAvailabilityStatusCategory::Unavailable as i32,
            description: String::new(),
        }),
        ..Default::default()
    };
    assert_wire(&contact, "0a084142434445464748d00100da01020801");
    // work_availability_status: field 5 LEN -> 2a; an all-default status (the reset) is present
    // and empty.
    let profile = sync::UserProfile {
        work_availability_status: Some(sync::WorkAvailabilityStatus::default()),
        ..Default::default()
    };
    assert_wire(&profile, "2a00");
    let credentials = sync::ThreemaWorkCredentials {
        username: "u".to_owned(),
        password: "p".to_owned(),
    };
    assert_wire(&credentials, "0a0175120170");
    assert_eq!(sync::WorkAvailabilityStatusCategory::Busy as i32, 2);
}

/// The notification sound override of protocol version 23 keeps only `default` (field 1). A
/// snapshot device's `policy MUTED` (field 2, varint 0) still decodes: the override is present
/// without a choice, the unknown field is skipped.
#[test]
fn deprecated_notification_sound_override() {
    use sync::contact::{
        deprecated_notification_sound_policy_override as sound,
        DeprecatedNotificationSoundPolicyOverride,
    };
    // Contact field 20 LEN -> tag 162 = a2 01.
    let default = sync::Contact {
        identity: "ABCDEFGH".to_owned(),
        deprecated_notification_sound_policy_override: Some(
            DeprecatedNotificationSoundPolicyOverride {
                r#override: Some(sound::Override::Default(Unit {})),
            },
        ),
        ..Default::default()
    };
    assert_wire(&default, "0a084142434445464748a201020a00");
    let muted = hex::decode("0a084142434445464748a201021000").unwrap();
    let contact = sync::Contact::decode(muted.as_slice()).unwrap();
    assert_eq!(
        contact.deprecated_notification_sound_policy_override,
        Some(DeprecatedNotificationSoundPolicyOverride { r#override: None })
    );
    // Group field 10 LEN -> 52.
    let group = sync::Group::decode(&[0x52, 0x02, 0x10, 0x00][..]).unwrap();
    assert_eq!(
        group.deprecated_notification_sound_policy_override,
        Some(sync::group::DeprecatedNotificationSoundPolicyOverride { r#override: None })
    );
}

/// d2m `ProtocolVersion` 0 is named `V0` since protocol version 23 (`INITIAL` before).
#[test]
fn d2m_protocol_version_v0() {
    use crate::proto::d2m::ProtocolVersion;
    assert_eq!(ProtocolVersion::V0 as i32, 0);
    assert_eq!(ProtocolVersion::V0.as_str_name(), "V0");
    assert_eq!(
        u32::try_from(ProtocolVersion::V0 as i32).ok(),
        Some(crate::mediator::PROTOCOL_VERSION)
    );
}
