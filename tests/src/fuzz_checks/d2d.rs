//! d2d checks: the four sealed blobs opened under fixed group keys, and the raw protobuf decode
//! of every message that travels inside them.
//!
//! Fuzz bytes almost never authenticate, so each blob is checked twice: as received (must be
//! refused cleanly) and sealed under the right key first, which hands the bytes to the decoder
//! behind the MAC. There the raw protobuf decode is the oracle for what `open_*` must accept.

use core::fmt::Debug;

use prost::Message;
use tandem_shared::crypto::seal_nonce_ahead;
use tandem_shared::d2d::{
    self, D2dError, DeviceInfo, Scope, SharedDeviceData, MAX_APP_VERSION_LEN, MAX_LABEL_LEN,
    MAX_PLAIN_ENVELOPE_LEN, MAX_PLATFORM_DETAILS_LEN, MAX_SEALED_ENVELOPE_LEN,
};
use tandem_shared::proto::{common, d2d as pb, sync};

use super::input::{group_keys, rng};

/// Every `open_*` on the input as received and on the input sealed under its key, then the raw
/// decode of every d2d, sync and common message.
pub fn d2d_envelope(data: &[u8]) {
    let keys = group_keys();
    let mut rng = rng(0xd2d);

    if let Ok(envelope) = d2d::open_envelope(&keys.dgrk, data) {
        check_envelope(&keys.dgrk, &envelope);
    }
    let _ = d2d::open_device_info(&keys.dgdik, data);
    let _ = d2d::open_shared_device_data(&keys.dgsddk, data);
    let _ = d2d::open_transaction_scope(&keys.dgtsk, data);

    // Sealed under the right key: the result must follow from the protobuf alone.
    let sealed = seal_nonce_ahead(&keys.dgrk, &mut rng, data);
    let opened = d2d::open_envelope(&keys.dgrk, &sealed);
    let expected = match pb::Envelope::decode(data) {
        _ if sealed.len() > MAX_SEALED_ENVELOPE_LEN => None,
        Err(_) => None,
        Ok(envelope) if envelope.content.is_none() => None,
        Ok(envelope) => Some(pb::Envelope {
            padding: Vec::new(),
            ..envelope
        }),
    };
    assert_eq!(opened.as_ref().ok(), expected.as_ref());
    if let Ok(envelope) = opened {
        check_envelope(&keys.dgrk, &envelope);
    }

    let sealed = seal_nonce_ahead(&keys.dgdik, &mut rng, data);
    let opened = d2d::open_device_info(&keys.dgdik, &sealed);
    assert_eq!(opened.is_ok(), pb::DeviceInfo::decode(data).is_ok());
    if let Ok(info) = opened {
        check_device_info(&keys.dgdik, &info);
    }

    let sealed = seal_nonce_ahead(&keys.dgsddk, &mut rng, data);
    let opened = d2d::open_shared_device_data(&keys.dgsddk, &sealed);
    assert_eq!(
        opened.as_ref().ok(),
        pb::SharedDeviceData::decode(data)
            .ok()
            .map(|m| SharedDeviceData { version: m.version })
            .as_ref()
    );
    if let Ok(shared) = opened {
        let resealed = d2d::seal_shared_device_data(&keys.dgsddk, &shared, &mut rng);
        assert_eq!(
            d2d::open_shared_device_data(&keys.dgsddk, &resealed),
            Ok(shared)
        );
    }

    let sealed = seal_nonce_ahead(&keys.dgtsk, &mut rng, data);
    let opened = d2d::open_transaction_scope(&keys.dgtsk, &sealed);
    let expected = pb::TransactionScope::decode(data)
        .ok()
        .and_then(|m| Scope::try_from(m.scope).ok());
    assert_eq!(opened.as_ref().ok(), expected.as_ref());
    if let Ok(scope) = opened {
        let resealed = d2d::seal_transaction_scope(&keys.dgtsk, scope, &mut rng);
        assert_eq!(
            d2d::open_transaction_scope(&keys.dgtsk, &resealed),
            Ok(scope)
        );
    }

    raw_messages(data);
}

/// An opened envelope seals again (with fresh padding) unless it is too large, and opens to
/// itself.
fn check_envelope(dgrk: &tandem_shared::crypto::SymmetricKey, envelope: &pb::Envelope) {
    assert!(envelope.padding.is_empty() && envelope.content.is_some());
    let mut rng = rng(0xe11);
    match d2d::seal_envelope(dgrk, envelope.clone(), &mut rng) {
        Ok(sealed) => assert_eq!(d2d::open_envelope(dgrk, &sealed).as_ref(), Ok(envelope)),
        Err(D2dError::EnvelopeTooLarge { len, max }) => {
            assert_eq!(max, MAX_PLAIN_ENVELOPE_LEN);
            assert_eq!(len, envelope.encoded_len());
            assert!(len > MAX_PLAIN_ENVELOPE_LEN);
        }
        Err(e) => panic!("opened envelope does not seal again: {e}"),
    }
}

/// An opened device info seals again unless a text field is over its limit, and opens to itself.
fn check_device_info(dgdik: &tandem_shared::crypto::SymmetricKey, info: &DeviceInfo) {
    let mut rng = rng(0xd1);
    let over = info.label.len() > MAX_LABEL_LEN
        || info.platform_details.len() > MAX_PLATFORM_DETAILS_LEN
        || info.app_version.len() > MAX_APP_VERSION_LEN;
    match d2d::seal_device_info(dgdik, info, &mut rng) {
        Ok(sealed) => {
            assert!(!over);
            assert_eq!(d2d::open_device_info(dgdik, &sealed).as_ref(), Ok(info));
        }
        Err(D2dError::FieldTooLong { .. }) => assert!(over),
        Err(e) => panic!("opened device info does not seal again: {e}"),
    }
}

/// Decodes `data` as `M`; what decodes encodes to `encoded_len` bytes that decode to itself.
pub(crate) fn prost_round_trip<M: Message + Default + PartialEq + Debug>(data: &[u8]) {
    if let Ok(message) = M::decode(data) {
        let encoded = message.encode_to_vec();
        assert_eq!(encoded.len(), message.encoded_len());
        assert_eq!(M::decode(encoded.as_slice()).ok().as_ref(), Some(&message));
    }
}

/// The raw decode of every top-level message of `d2d.proto`, `sync.proto` and `common.proto`.
fn raw_messages(data: &[u8]) {
    prost_round_trip::<pb::Envelope>(data);
    prost_round_trip::<pb::SharedDeviceData>(data);
    prost_round_trip::<pb::DeviceInfo>(data);
    prost_round_trip::<pb::TransactionScope>(data);
    prost_round_trip::<pb::ConversationId>(data);
    prost_round_trip::<pb::OutgoingMessage>(data);
    prost_round_trip::<pb::OutgoingMessageUpdate>(data);
    prost_round_trip::<pb::IncomingMessage>(data);
    prost_round_trip::<pb::IncomingMessageUpdate>(data);
    prost_round_trip::<pb::UserProfileSync>(data);
    prost_round_trip::<pb::ContactSync>(data);
    prost_round_trip::<pb::GroupSync>(data);
    prost_round_trip::<pb::DistributionListSync>(data);
    prost_round_trip::<pb::SettingsSync>(data);
    prost_round_trip::<pb::MdmParameterSync>(data);
    prost_round_trip::<pb::NewDeviceSyncRequest>(data);
    prost_round_trip::<sync::UserProfile>(data);
    prost_round_trip::<sync::Contact>(data);
    prost_round_trip::<sync::Group>(data);
    prost_round_trip::<sync::DistributionList>(data);
    prost_round_trip::<sync::Settings>(data);
    prost_round_trip::<sync::MdmParameters>(data);
    prost_round_trip::<common::Identities>(data);
    prost_round_trip::<common::GroupIdentity>(data);
    prost_round_trip::<common::Blob>(data);
    prost_round_trip::<common::Image>(data);
    prost_round_trip::<common::DeltaImage>(data);
}
