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
    assert_eq!(
        crate::proto::common::CspFeatureMaskFlag::GroupSupport as i32,
        0x0002
    );
}
