//! Proptest strategies for every d2d, sync and common shape, shared by the tests of this layer
//! (and available to other test modules of the crate).

use proptest::collection::{btree_map, vec};
use proptest::option::of;
use proptest::prelude::*;

use super::{DeviceInfo, Platform};
use crate::proto::common::{self, delta_image, DeltaImage, GroupIdentity, Identities, Unit};
use crate::proto::d2d::{self, envelope::Content, Envelope};
use crate::proto::sync;

pub(crate) fn identity() -> BoxedStrategy<String> {
    "[*0-9A-Z]{8}".boxed()
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// Enum fields are open in proto3: besides the defined values, unknown ones must survive too.
fn enum_value(defined: i32) -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..defined, 1 => any::<i32>()]
}

fn unit() -> impl Strategy<Value = Unit> {
    Just(Unit {})
}

/// Protocol version 23's Work availability (category 0..=2, or an unknown one).
fn work_availability() -> impl Strategy<Value = sync::WorkAvailabilityStatus> {
    (enum_value(3), text()).prop_map(|(category, description)| sync::WorkAvailabilityStatus {
        category,
        description,
    })
}

pub(crate) fn identities() -> BoxedStrategy<Identities> {
    vec(identity(), 0..4)
        .prop_map(|identities| Identities { identities })
        .boxed()
}

pub(crate) fn group_identity() -> BoxedStrategy<GroupIdentity> {
    (any::<u64>(), identity())
        .prop_map(|(group_id, creator_identity)| GroupIdentity {
            group_id,
            creator_identity,
        })
        .boxed()
}

fn blob() -> impl Strategy<Value = common::Blob> {
    (bytes(16), bytes(24), bytes(32), any::<u64>()).prop_map(|(id, nonce, key, uploaded_at)| {
        common::Blob {
            id,
            nonce,
            key,
            uploaded_at,
        }
    })
}

fn delta_image() -> impl Strategy<Value = DeltaImage> {
    let image =
        (enum_value(1), of(blob())).prop_map(|(r#type, blob)| common::Image { r#type, blob });
    of(prop_oneof![
        unit().prop_map(delta_image::Image::Removed),
        image.prop_map(delta_image::Image::Updated),
    ])
    .prop_map(|image| DeltaImage { image })
}

fn conversation_id() -> impl Strategy<Value = d2d::ConversationId> {
    use d2d::conversation_id::Id;
    of(prop_oneof![
        identity().prop_map(Id::Contact),
        any::<u64>().prop_map(Id::DistributionList),
        group_identity().prop_map(Id::Group),
    ])
    .prop_map(|id| d2d::ConversationId { id })
}

fn message_type() -> impl Strategy<Value = i32> {
    enum_value(0x100)
}

pub(crate) fn outgoing_message() -> BoxedStrategy<d2d::OutgoingMessage> {
    (
        of(conversation_id()),
        any::<u64>(),
        of(any::<u64>()),
        any::<u64>(),
        message_type(),
        bytes(64),
        vec(bytes(24), 0..4),
    )
        .prop_map(
            |(conversation, message_id, thread_message_id, created_at, r#type, body, nonces)| {
                d2d::OutgoingMessage {
                    conversation,
                    message_id,
                    thread_message_id,
                    created_at,
                    r#type,
                    body,
                    nonces,
                }
            },
        )
        .boxed()
}

pub(crate) fn outgoing_message_update() -> BoxedStrategy<d2d::OutgoingMessageUpdate> {
    use d2d::outgoing_message_update::{update, Sent, Update};
    let one = (of(conversation_id()), any::<u64>(), any::<bool>()).prop_map(
        |(conversation, message_id, sent)| Update {
            conversation,
            message_id,
            update: sent.then_some(update::Update::Sent(Sent {})),
        },
    );
    vec(one, 0..4)
        .prop_map(|updates| d2d::OutgoingMessageUpdate { updates })
        .boxed()
}

pub(crate) fn incoming_message() -> BoxedStrategy<d2d::IncomingMessage> {
    (
        identity(),
        any::<u64>(),
        any::<u64>(),
        message_type(),
        bytes(64),
        bytes(24),
    )
        .prop_map(
            |(sender_identity, message_id, created_at, r#type, body, nonce)| d2d::IncomingMessage {
                sender_identity,
                message_id,
                created_at,
                r#type,
                body,
                nonce,
            },
        )
        .boxed()
}

pub(crate) fn incoming_message_update() -> BoxedStrategy<d2d::IncomingMessageUpdate> {
    use d2d::incoming_message_update::{update, Read, Update};
    let one = (of(conversation_id()), any::<u64>(), of(any::<u64>())).prop_map(
        |(conversation, message_id, read_at)| Update {
            conversation,
            message_id,
            update: read_at.map(|at| update::Update::Read(Read { at })),
        },
    );
    vec(one, 0..4)
        .prop_map(|updates| d2d::IncomingMessageUpdate { updates })
        .boxed()
}

pub(crate) fn user_profile() -> BoxedStrategy<sync::UserProfile> {
    use sync::user_profile::ProfilePictureShareWith;
    use sync::user_profile::{identity_links, profile_picture_share_with, IdentityLinks};
    let share_with = of(prop_oneof![
        unit().prop_map(profile_picture_share_with::Policy::Nobody),
        unit().prop_map(profile_picture_share_with::Policy::Everyone),
        identities().prop_map(profile_picture_share_with::Policy::AllowList),
    ])
    .prop_map(|policy| ProfilePictureShareWith { policy });
    let link = (
        of(prop_oneof![
            "[0-9]{6,12}".prop_map(identity_links::identity_link::Type::PhoneNumber),
            "[a-z]{1,8}@[a-z]{1,8}\\.ch".prop_map(identity_links::identity_link::Type::Email),
        ]),
        text(),
    )
        .prop_map(|(r#type, description)| identity_links::IdentityLink {
            r#type,
            description,
        });
    let links = vec(link, 0..3).prop_map(|links| IdentityLinks { links });
    (
        of(text()),
        of(delta_image()),
        of(share_with),
        of(links),
        of(work_availability()),
    )
        .prop_map(
            |(
                nickname,
                profile_picture,
                profile_picture_share_with,
                identity_links,
                work_availability_status,
            )| {
                sync::UserProfile {
                    nickname,
                    profile_picture,
                    profile_picture_share_with,
                    identity_links,
                    work_availability_status,
                }
            },
        )
        .boxed()
}

pub(crate) fn contact() -> BoxedStrategy<sync::Contact> {
    use sync::contact::{
        deprecated_notification_sound_policy_override as sound,
        notification_trigger_policy_override as trigger, read_receipt_policy_override as read,
        typing_indicator_policy_override as typing,
    };
    use sync::contact::{
        DeprecatedNotificationSoundPolicyOverride, NotificationTriggerPolicyOverride,
        ReadReceiptPolicyOverride, TypingIndicatorPolicyOverride,
    };
    let read = of(prop_oneof![
        unit().prop_map(read::Override::Default),
        enum_value(2).prop_map(read::Override::Policy),
    ])
    .prop_map(|r#override| ReadReceiptPolicyOverride { r#override });
    let typing = of(prop_oneof![
        unit().prop_map(typing::Override::Default),
        enum_value(2).prop_map(typing::Override::Policy),
    ])
    .prop_map(|r#override| TypingIndicatorPolicyOverride { r#override });
    let trigger = of(prop_oneof![
        unit().prop_map(trigger::Override::Default),
        (enum_value(1), of(any::<u64>())).prop_map(|(policy, expires_at)| {
            trigger::Override::Policy(trigger::Policy { policy, expires_at })
        }),
    ])
    .prop_map(|r#override| NotificationTriggerPolicyOverride { r#override });
    let sound = of(unit().prop_map(sound::Override::Default))
        .prop_map(|r#override| DeprecatedNotificationSoundPolicyOverride { r#override });

    let names = (
        identity(),
        of(bytes(32)),
        of(any::<u64>()),
        of(text()),
        of(text()),
        of(text()),
    );
    let levels = (
        of(enum_value(3)),
        of(enum_value(2)),
        of(enum_value(2)),
        of(enum_value(2)),
        of(enum_value(3)),
        of(any::<u64>()),
        of(enum_value(3)),
    );
    let policies = (of(read), of(typing), of(trigger), of(sound));
    let work = (of(any::<u64>()), of(work_availability()));
    let looks = (
        of(delta_image()),
        of(delta_image()),
        of(enum_value(2)),
        of(enum_value(3)),
    );
    (names, levels, policies, looks, work)
        .prop_map(
            |(
                (identity, public_key, created_at, first_name, last_name, nickname),
                (
                    verification_level,
                    work_verification_level,
                    identity_type,
                    acquaintance_level,
                    activity_state,
                    feature_mask,
                    sync_state,
                ),
                (
                    read_receipt_policy_override,
                    typing_indicator_policy_override,
                    notification_trigger_policy_override,
                    deprecated_notification_sound_policy_override,
                ),
                (
                    contact_defined_profile_picture,
                    user_defined_profile_picture,
                    conversation_category,
                    conversation_visibility,
                ),
                (work_last_full_sync_at, work_availability_status),
            )| sync::Contact {
                identity,
                public_key,
                created_at,
                first_name,
                last_name,
                nickname,
                verification_level,
                work_verification_level,
                identity_type,
                acquaintance_level,
                activity_state,
                feature_mask,
                sync_state,
                read_receipt_policy_override,
                typing_indicator_policy_override,
                notification_trigger_policy_override,
                deprecated_notification_sound_policy_override,
                contact_defined_profile_picture,
                user_defined_profile_picture,
                conversation_category,
                conversation_visibility,
                work_last_full_sync_at,
                work_availability_status,
            },
        )
        .boxed()
}

pub(crate) fn group() -> BoxedStrategy<sync::Group> {
    use sync::group::{
        deprecated_notification_sound_policy_override as sound,
        notification_trigger_policy_override as trigger,
    };
    use sync::group::{
        DeprecatedNotificationSoundPolicyOverride, NotificationTriggerPolicyOverride,
    };
    let trigger = of(prop_oneof![
        unit().prop_map(trigger::Override::Default),
        (enum_value(2), of(any::<u64>())).prop_map(|(policy, expires_at)| {
            trigger::Override::Policy(trigger::Policy { policy, expires_at })
        }),
    ])
    .prop_map(|r#override| NotificationTriggerPolicyOverride { r#override });
    let sound = of(unit().prop_map(sound::Override::Default))
        .prop_map(|r#override| DeprecatedNotificationSoundPolicyOverride { r#override });
    (
        of(group_identity()),
        of(text()),
        of(any::<u64>()),
        of(enum_value(2)),
        of(enum_value(3)),
        of(enum_value(3)),
        of(delta_image()),
        of(identities()),
        of(trigger),
        of(sound),
    )
        .prop_map(
            |(
                group_identity,
                name,
                created_at,
                conversation_category,
                conversation_visibility,
                user_state,
                profile_picture,
                member_identities,
                notification_trigger_policy_override,
                deprecated_notification_sound_policy_override,
            )| sync::Group {
                group_identity,
                name,
                created_at,
                conversation_category,
                conversation_visibility,
                user_state,
                profile_picture,
                member_identities,
                notification_trigger_policy_override,
                deprecated_notification_sound_policy_override,
            },
        )
        .boxed()
}

pub(crate) fn distribution_list() -> BoxedStrategy<sync::DistributionList> {
    (
        any::<u64>(),
        of(text()),
        of(any::<u64>()),
        of(enum_value(2)),
        of(enum_value(3)),
        of(identities()),
    )
        .prop_map(
            |(
                distribution_list_id,
                name,
                created_at,
                conversation_category,
                conversation_visibility,
                member_identities,
            )| sync::DistributionList {
                distribution_list_id,
                name,
                created_at,
                conversation_category,
                conversation_visibility,
                member_identities,
            },
        )
        .boxed()
}

pub(crate) fn settings() -> BoxedStrategy<sync::Settings> {
    let policy = || of(enum_value(2));
    (
        (policy(), policy(), policy(), policy(), policy(), policy()),
        (policy(), policy(), policy(), policy()),
        (of(identities()), of(identities())),
    )
        .prop_map(
            |(
                (
                    contact_sync_policy,
                    unknown_contact_policy,
                    read_receipt_policy,
                    typing_indicator_policy,
                    o2o_call_policy,
                    o2o_call_connection_policy,
                ),
                (
                    o2o_call_video_policy,
                    group_call_policy,
                    screenshot_policy,
                    keyboard_data_collection_policy,
                ),
                (blocked_identities, exclude_from_sync_identities),
            )| sync::Settings {
                contact_sync_policy,
                unknown_contact_policy,
                read_receipt_policy,
                typing_indicator_policy,
                o2o_call_policy,
                o2o_call_connection_policy,
                o2o_call_video_policy,
                group_call_policy,
                screenshot_policy,
                keyboard_data_collection_policy,
                blocked_identities,
                exclude_from_sync_identities,
            },
        )
        .boxed()
}

pub(crate) fn mdm_parameters() -> BoxedStrategy<sync::MdmParameters> {
    use sync::mdm_parameters::{parameter::Value, Parameter};
    let parameter = of(prop_oneof![
        text().prop_map(Value::StringValue),
        any::<bool>().prop_map(Value::BooleanValue),
        any::<u64>().prop_map(Value::IntegerValue),
    ])
    .prop_map(|value| Parameter { value });
    let map = || btree_map("th_[a-z_]{1,10}", parameter.clone(), 0..4);
    (map(), map(), enum_value(2))
        .prop_map(
            |(external_parameters, threema_parameters, parameter_precedence)| sync::MdmParameters {
                external_parameters,
                threema_parameters,
                parameter_precedence,
            },
        )
        .boxed()
}

pub(crate) fn user_profile_sync() -> BoxedStrategy<d2d::UserProfileSync> {
    use d2d::user_profile_sync::{Action, Update};
    of(user_profile())
        .prop_map(|user_profile| d2d::UserProfileSync {
            action: Some(Action::Update(Update { user_profile })),
        })
        .boxed()
}

pub(crate) fn contact_sync() -> BoxedStrategy<d2d::ContactSync> {
    use d2d::contact_sync::{Action, Create, Update};
    prop_oneof![
        of(contact()).prop_map(|contact| Action::Create(Create { contact })),
        of(contact()).prop_map(|contact| Action::Update(Update { contact })),
    ]
    .prop_map(|action| d2d::ContactSync {
        action: Some(action),
    })
    .boxed()
}

pub(crate) fn group_sync() -> BoxedStrategy<d2d::GroupSync> {
    use d2d::group_sync::{Action, Create, Delete, Update};
    prop_oneof![
        of(group()).prop_map(|group| Action::Create(Create { group })),
        (
            of(group()),
            proptest::collection::btree_map(identity(), 0..3_i32, 0..3)
        )
            .prop_map(|(group, member_state_changes)| Action::Update(Update {
                group,
                member_state_changes
            })),
        of(group_identity()).prop_map(|group_identity| Action::Delete(Delete { group_identity })),
    ]
    .prop_map(|action| d2d::GroupSync {
        action: Some(action),
    })
    .boxed()
}

pub(crate) fn distribution_list_sync() -> BoxedStrategy<d2d::DistributionListSync> {
    use d2d::distribution_list_sync::{Action, Create, Delete, Update};
    prop_oneof![
        of(distribution_list())
            .prop_map(|distribution_list| Action::Create(Create { distribution_list })),
        of(distribution_list())
            .prop_map(|distribution_list| Action::Update(Update { distribution_list })),
        any::<u64>().prop_map(|distribution_list_id| Action::Delete(Delete {
            distribution_list_id
        })),
    ]
    .prop_map(|action| d2d::DistributionListSync {
        action: Some(action),
    })
    .boxed()
}

pub(crate) fn settings_sync() -> BoxedStrategy<d2d::SettingsSync> {
    use d2d::settings_sync::{Action, Update};
    of(settings())
        .prop_map(|settings| d2d::SettingsSync {
            action: Some(Action::Update(Update { settings })),
        })
        .boxed()
}

pub(crate) fn mdm_parameter_sync() -> BoxedStrategy<d2d::MdmParameterSync> {
    use d2d::mdm_parameter_sync::{Action, Update};
    of(mdm_parameters())
        .prop_map(|parameters| d2d::MdmParameterSync {
            action: Some(Action::Update(Update { parameters })),
        })
        .boxed()
}

pub(crate) fn new_device_sync_request() -> BoxedStrategy<d2d::NewDeviceSyncRequest> {
    any::<u32>()
        .prop_map(|max_history_messages| d2d::NewDeviceSyncRequest {
            max_history_messages,
        })
        .boxed()
}

pub(crate) fn content() -> BoxedStrategy<Content> {
    prop_oneof![
        outgoing_message().prop_map(Content::OutgoingMessage),
        outgoing_message_update().prop_map(Content::OutgoingMessageUpdate),
        incoming_message().prop_map(Content::IncomingMessage),
        incoming_message_update().prop_map(Content::IncomingMessageUpdate),
        user_profile_sync().prop_map(Content::UserProfileSync),
        contact_sync().prop_map(Content::ContactSync),
        group_sync().prop_map(Content::GroupSync),
        distribution_list_sync().prop_map(Content::DistributionListSync),
        settings_sync().prop_map(Content::SettingsSync),
        mdm_parameter_sync().prop_map(Content::MdmParameterSync),
        new_device_sync_request().prop_map(Content::NewDeviceSyncRequest),
    ]
    .boxed()
}

/// An envelope with content and no padding: what [`super::open_envelope`] returns.
pub(crate) fn envelope() -> BoxedStrategy<Envelope> {
    // Protocol version 23's `protocol_version`: the known values and any other.
    let version = prop_oneof![0..=3_u32, any::<u32>()];
    (any::<u64>(), version, content())
        .prop_map(|(device_id, protocol_version, content)| Envelope {
            padding: Vec::new(),
            device_id,
            protocol_version,
            content: Some(content),
        })
        .boxed()
}

pub(crate) fn device_info() -> BoxedStrategy<DeviceInfo> {
    let platform = proptest::sample::select(
        &[
            Platform::Unspecified,
            Platform::Android,
            Platform::Ios,
            Platform::Desktop,
            Platform::Web,
        ][..],
    );
    (platform, text(), "[0-9.a-z]{0,12}", "\\PC{0,64}")
        .prop_map(
            |(platform, platform_details, app_version, label)| DeviceInfo {
                platform,
                platform_details,
                app_version,
                label,
            },
        )
        .boxed()
}
