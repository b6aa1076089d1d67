//! `d2d.Envelope` sealed under `dgrk`: the payload of every Reflect and Reflected (spec §5, §8.1).
//!
//! Size budget (spec §2.1, §2.4): a container is at most 65 536 bytes; minus the 4-byte container
//! header and the 16-byte Reflected header, the sealed envelope has 65 516 bytes; minus nonce (24)
//! and tag (16), the plain envelope has 65 476. The spec's table says 65 492 for the plain
//! envelope, which forgets the tag: an envelope that size would not fit into a Reflected frame.

use prost::Message;
use rand_core::CryptoRngCore;

use super::D2dError;
use crate::crypto::{open_nonce_ahead, seal_nonce_ahead, SymmetricKey};
use crate::proto::d2d::Envelope;

/// Largest sealed envelope a Reflected frame can carry: 65 536 − 4 (container) − 16 (header).
pub use crate::d2m::MAX_ENCRYPTED_ENVELOPE_LEN as MAX_SEALED_ENVELOPE_LEN;

/// Largest plain (encoded, padded) envelope: the sealed budget minus nonce and tag.
pub use crate::d2m::MAX_PLAIN_ENVELOPE_LEN;

/// Most zero bytes of padding [`seal_envelope`] adds (desktop draws 0–255, spec §5).
pub const MAX_ENVELOPE_PADDING: usize = 255;

/// Encodes `envelope` with 0–255 zero bytes of random padding and seals it under `dgrk`
/// (`nonce ‖ tag ‖ ciphertext`).
///
/// Whatever `envelope.padding` holds is replaced. Padding shrinks as needed to stay within
/// [`MAX_PLAIN_ENVELOPE_LEN`]; an envelope over the limit without padding, or one with no
/// content, is refused, because [`open_envelope`] would refuse it.
///
/// Takes the envelope: a message body is encoded straight from it, not copied first.
pub fn seal_envelope(
    dgrk: &SymmetricKey,
    mut padded: Envelope,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, D2dError> {
    if padded.content.is_none() {
        return Err(D2dError::NoContent);
    }
    padded.padding = Vec::new();
    let bare = padded.encoded_len();
    let room = MAX_PLAIN_ENVELOPE_LEN
        .checked_sub(bare)
        .ok_or(D2dError::EnvelopeTooLarge {
            len: bare,
            max: MAX_PLAIN_ENVELOPE_LEN,
        })?;
    let mut byte = [0_u8; 1];
    rng.fill_bytes(&mut byte);
    let mut padding = usize::from(byte[0]).min(MAX_ENVELOPE_PADDING);
    while padding > 0 && padding_field_len(padding) > room {
        padding -= 1;
    }
    padded.padding = vec![0; padding];
    Ok(seal_nonce_ahead(dgrk, rng, &padded.encode_to_vec()))
}

/// Opens an envelope sealed under `dgrk`. The returned envelope has its padding removed.
pub fn open_envelope(dgrk: &SymmetricKey, data: &[u8]) -> Result<Envelope, D2dError> {
    if data.len() > MAX_SEALED_ENVELOPE_LEN {
        return Err(D2dError::SealedEnvelopeTooLarge {
            len: data.len(),
            max: MAX_SEALED_ENVELOPE_LEN,
        });
    }
    let plain = open_nonce_ahead(dgrk, data).map_err(D2dError::Decrypt)?;
    let mut envelope = Envelope::decode(plain.as_slice()).map_err(D2dError::Decode)?;
    if envelope.content.is_none() {
        return Err(D2dError::NoContent);
    }
    envelope.padding = Vec::new();
    Ok(envelope)
}

/// Bytes that `padding` bytes of field 1 add to the encoding: nothing when empty (proto3 omits
/// it), else tag, length varint and the bytes.
fn padding_field_len(padding: usize) -> usize {
    if padding == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(padding as u64) + padding
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CryptoError;
    use crate::d2d::strategies;
    use crate::keys::DeviceGroupKey;
    use crate::proto::common::GroupIdentity;
    use crate::proto::d2d::{
        distribution_list_sync, envelope::Content, ContactSync, DistributionListSync,
        IncomingMessage, NewDeviceSyncRequest,
    };
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn dgrk() -> SymmetricKey {
        DeviceGroupKey::from_bytes([7; 32]).derive_keys().dgrk
    }

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn with_content(device_id: u64, content: Content) -> Envelope {
        Envelope {
            padding: Vec::new(),
            device_id,
            protocol_version: 0,
            content: Some(content),
        }
    }

    fn delete_list(id: u64) -> Content {
        Content::DistributionListSync(DistributionListSync {
            action: Some(distribution_list_sync::Action::Delete(
                distribution_list_sync::Delete {
                    distribution_list_id: id,
                },
            )),
        })
    }

    /// `ContactSync.delete` of the Desktop snapshot (protocol version 23 dropped it), as the
    /// vectors below were made with it: read now as a contact sync without an action.
    fn old_contact_delete() -> Content {
        Content::ContactSync(ContactSync { action: None })
    }

    fn incoming_with_body(len: usize) -> Envelope {
        with_content(
            u64::MAX,
            Content::IncomingMessage(IncomingMessage {
                body: vec![0xab; len],
                ..Default::default()
            }),
        )
    }

    /// An envelope whose encoding without padding is exactly `target` bytes.
    fn envelope_of_len(target: usize) -> Envelope {
        let mut len = target.saturating_sub(30);
        loop {
            let envelope = incoming_with_body(len);
            match envelope.encoded_len().cmp(&target) {
                core::cmp::Ordering::Equal => return envelope,
                core::cmp::Ordering::Less => len += 1,
                core::cmp::Ordering::Greater => panic!("no body length hits {target}"),
            }
        }
    }

    /// Decrypts with the raw primitive to look at the padding the code under test chose.
    fn raw_plain(sealed: &[u8]) -> Envelope {
        Envelope::decode(open_nonce_ahead(&dgrk(), sealed).unwrap().as_slice()).unwrap()
    }

    macro_rules! round_trip_per_variant {
        ($($name:ident => $strategy:expr;)*) => {
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(64))]
                $(
                    #[test]
                    fn $name(device_id: u64, content in $strategy, seed: u64) {
                        let envelope = with_content(device_id, content);
                        let sealed = seal_envelope(&dgrk(), envelope.clone(), &mut rng(seed)).unwrap();
                        prop_assert_eq!(open_envelope(&dgrk(), &sealed).unwrap(), envelope);
                    }
                )*
            }
        };
    }

    round_trip_per_variant! {
        outgoing_message_round_trips => strategies::outgoing_message().prop_map(Content::OutgoingMessage);
        outgoing_message_update_round_trips => strategies::outgoing_message_update().prop_map(Content::OutgoingMessageUpdate);
        incoming_message_round_trips => strategies::incoming_message().prop_map(Content::IncomingMessage);
        incoming_message_update_round_trips => strategies::incoming_message_update().prop_map(Content::IncomingMessageUpdate);
        user_profile_sync_round_trips => strategies::user_profile_sync().prop_map(Content::UserProfileSync);
        contact_sync_round_trips => strategies::contact_sync().prop_map(Content::ContactSync);
        group_sync_round_trips => strategies::group_sync().prop_map(Content::GroupSync);
        distribution_list_sync_round_trips => strategies::distribution_list_sync().prop_map(Content::DistributionListSync);
        settings_sync_round_trips => strategies::settings_sync().prop_map(Content::SettingsSync);
        mdm_parameter_sync_round_trips => strategies::mdm_parameter_sync().prop_map(Content::MdmParameterSync);
        new_device_sync_request_round_trips => strategies::new_device_sync_request().prop_map(Content::NewDeviceSyncRequest);
    }

    proptest! {
        #[test]
        fn any_content_round_trips_and_padding_is_zero_bytes(envelope in strategies::envelope(), seed: u64) {
            let sealed = seal_envelope(&dgrk(), envelope.clone(), &mut rng(seed)).unwrap();
            let plain = raw_plain(&sealed);
            prop_assert!(plain.padding.len() <= MAX_ENVELOPE_PADDING);
            prop_assert!(plain.padding.iter().all(|&b| b == 0));
            prop_assert_eq!(open_envelope(&dgrk(), &sealed).unwrap(), envelope);
        }

        #[test]
        fn arbitrary_sealed_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = open_envelope(&dgrk(), &data);
        }

        #[test]
        fn arbitrary_plaintext_never_panics(plain in proptest::collection::vec(any::<u8>(), 0..300), seed: u64) {
            let sealed = seal_nonce_ahead(&dgrk(), &mut rng(seed), &plain);
            let _ = open_envelope(&dgrk(), &sealed);
        }
    }

    #[test]
    fn padding_length_varies_between_seals() {
        let envelope = with_content(1, delete_list(0x4142_4344_4546_4748));
        let lengths: std::collections::BTreeSet<usize> = (0..32)
            .map(|seed| {
                raw_plain(&seal_envelope(&dgrk(), envelope.clone(), &mut rng(seed)).unwrap())
                    .padding
                    .len()
            })
            .collect();
        assert!(lengths.len() > 8, "padding lengths {lengths:?}");
    }

    #[test]
    fn caller_padding_is_replaced() {
        let mut envelope = with_content(1, delete_list(0x4142_4344_4546_4748));
        envelope.padding = vec![0xff; 1000];
        let plain = raw_plain(&seal_envelope(&dgrk(), envelope.clone(), &mut rng(1)).unwrap());
        assert!(plain.padding.len() <= MAX_ENVELOPE_PADDING);
        assert!(plain.padding.iter().all(|&b| b == 0));
    }

    #[test]
    fn limits_follow_the_frame_budget() {
        // 65536 container − 4 container header − 16 Reflected header, then − 24 nonce − 16 tag.
        assert_eq!(MAX_SEALED_ENVELOPE_LEN, 65_516);
        assert_eq!(MAX_PLAIN_ENVELOPE_LEN, 65_476);
    }

    #[test]
    fn envelope_at_the_limit_seals_without_padding() {
        let envelope = envelope_of_len(MAX_PLAIN_ENVELOPE_LEN);
        for seed in 0..8 {
            let sealed = seal_envelope(&dgrk(), envelope.clone(), &mut rng(seed)).unwrap();
            assert_eq!(sealed.len(), MAX_SEALED_ENVELOPE_LEN);
            assert_eq!(open_envelope(&dgrk(), &sealed).unwrap(), envelope);
        }
    }

    #[test]
    fn envelope_near_the_limit_gets_only_the_padding_that_fits() {
        // 100 bytes of room: tag (1) + length (1) + 98 bytes of padding fill it exactly.
        let envelope = envelope_of_len(MAX_PLAIN_ENVELOPE_LEN - 100);
        let mut longest = 0;
        for seed in 0..16 {
            let sealed = seal_envelope(&dgrk(), envelope.clone(), &mut rng(seed)).unwrap();
            assert!(sealed.len() <= MAX_SEALED_ENVELOPE_LEN);
            longest = longest.max(raw_plain(&sealed).padding.len());
        }
        assert_eq!(longest, 98);
    }

    #[test]
    fn padding_shrinks_across_the_length_varint_boundary() {
        // 130 bytes of room: 128 bytes of padding need 1 + 2 + 128 = 131, so at most 127 fit
        // (1 + 1 + 127 = 129), leaving one byte unused.
        let envelope = envelope_of_len(MAX_PLAIN_ENVELOPE_LEN - 130);
        let mut longest = 0;
        for seed in 0..16 {
            let sealed = seal_envelope(&dgrk(), envelope.clone(), &mut rng(seed)).unwrap();
            longest = longest.max(raw_plain(&sealed).padding.len());
        }
        assert_eq!(longest, 127);
    }

    #[test]
    fn envelope_over_the_limit_is_refused() {
        let envelope = envelope_of_len(MAX_PLAIN_ENVELOPE_LEN + 1);
        assert_eq!(
            seal_envelope(&dgrk(), envelope.clone(), &mut rng(0)),
            Err(D2dError::EnvelopeTooLarge {
                len: MAX_PLAIN_ENVELOPE_LEN + 1,
                max: MAX_PLAIN_ENVELOPE_LEN
            })
        );
    }

    #[test]
    fn oversize_sealed_input_is_refused_before_decrypting() {
        let data = vec![0; MAX_SEALED_ENVELOPE_LEN + 1];
        assert_eq!(
            open_envelope(&dgrk(), &data),
            Err(D2dError::SealedEnvelopeTooLarge {
                len: MAX_SEALED_ENVELOPE_LEN + 1,
                max: MAX_SEALED_ENVELOPE_LEN
            })
        );
    }

    #[test]
    fn wrong_key_is_a_decrypt_error() {
        let envelope = with_content(5, delete_list(0x4142_4344_4546_4748));
        let sealed = seal_envelope(&dgrk(), envelope.clone(), &mut rng(3)).unwrap();
        let other = DeviceGroupKey::from_bytes([8; 32]).derive_keys().dgrk;
        assert_eq!(
            open_envelope(&other, &sealed),
            Err(D2dError::Decrypt(CryptoError::Decrypt))
        );
        // The other subkeys of the same group do not open it either.
        let dgtsk = DeviceGroupKey::from_bytes([7; 32]).derive_keys().dgtsk;
        assert_eq!(
            open_envelope(&dgtsk, &sealed),
            Err(D2dError::Decrypt(CryptoError::Decrypt))
        );
    }

    #[test]
    fn short_input_is_a_decrypt_error() {
        assert_eq!(
            open_envelope(&dgrk(), &[0; 39]),
            Err(D2dError::Decrypt(CryptoError::TooShort(39)))
        );
    }

    #[test]
    fn undecodable_plaintext_is_a_decode_error() {
        // 0xff 0xff: a tag varint that never ends.
        let sealed = seal_nonce_ahead(&dgrk(), &mut rng(0), &[0xff, 0xff]);
        assert!(matches!(
            open_envelope(&dgrk(), &sealed),
            Err(D2dError::Decode(_))
        ));
    }

    #[test]
    fn envelope_without_content_is_refused_both_ways() {
        let bare = Envelope {
            padding: vec![0; 3],
            device_id: 9,
            protocol_version: 0,
            content: None,
        };
        assert_eq!(
            seal_envelope(&dgrk(), bare.clone(), &mut rng(0)),
            Err(D2dError::NoContent)
        );
        let sealed = seal_nonce_ahead(&dgrk(), &mut rng(0), &bare.encode_to_vec());
        assert_eq!(open_envelope(&dgrk(), &sealed), Err(D2dError::NoContent));
    }

    #[test]
    fn unknown_content_field_is_no_content() {
        // device_id = 1, then field 14 (tag (14 << 3) | 2 = 0x72) with two bytes: a content
        // field number nobody defines yet.
        let plain = hex::decode("6901000000000000007202abcd").unwrap();
        let sealed = seal_nonce_ahead(&dgrk(), &mut rng(0), &plain);
        assert_eq!(open_envelope(&dgrk(), &sealed), Err(D2dError::NoContent));
    }

    // Hand-encoded bytes, from the protobuf rules (tag = field << 3 | wire type):
    // - device_id: field 13, fixed64 (1) -> 0x69, then 8 bytes little-endian.
    // - contact_sync: field 6, LEN (2) -> 0x32; ContactSync.delete: field 3 -> 0x1a;
    //   Delete.delete_identity: field 1 -> 0x0a.
    // - new_device_sync_request: field 100, LEN -> 802 = varint a2 06;
    //   max_history_messages: field 1, varint (0) -> 0x08; 300 = varint ac 02.
    #[test]
    fn device_id_is_field_13_fixed64() {
        let envelope = Envelope {
            device_id: 1,
            ..Default::default()
        };
        assert_eq!(hex::encode(envelope.encode_to_vec()), "690100000000000000");
    }

    #[test]
    fn contact_sync_delete_of_the_desktop_snapshot_reads_as_no_action() {
        // ContactSync (field 6) { delete (3) { delete_identity (1): "ABCDEFGH" } }.
        let old = "320c1a0a0a084142434445464748";
        assert_eq!(
            Envelope::decode(hex::decode(old).unwrap().as_slice()).unwrap(),
            with_content(0, old_contact_delete())
        );
    }

    #[test]
    fn protocol_version_is_field_3() {
        let envelope = Envelope {
            protocol_version: 1,
            ..with_content(0, old_contact_delete())
        };
        // prost writes the oneof last; field order does not matter on decode.
        assert_eq!(hex::encode(envelope.encode_to_vec()), "32001801");
        for bytes in ["32001801", "18013200"] {
            assert_eq!(
                Envelope::decode(hex::decode(bytes).unwrap().as_slice()).unwrap(),
                envelope
            );
        }
    }

    #[test]
    fn new_device_sync_request_is_field_100() {
        let envelope = with_content(
            0,
            Content::NewDeviceSyncRequest(NewDeviceSyncRequest {
                max_history_messages: 300,
            }),
        );
        let expected = "a2060308ac02";
        assert_eq!(hex::encode(envelope.encode_to_vec()), expected);
        assert_eq!(
            Envelope::decode(hex::decode(expected).unwrap().as_slice()).unwrap(),
            envelope
        );
    }

    #[test]
    fn group_sync_delete_carries_the_group_identity() {
        use crate::proto::d2d::{group_sync, GroupSync};
        // group_sync: field 7 LEN -> 0x3a; delete: field 3 -> 0x1a; group_identity: field 1 -> 0x0a;
        // group_id: field 1 fixed64 -> 0x09 + 8 bytes LE; creator_identity: field 2 -> 0x12.
        let envelope = with_content(
            0,
            Content::GroupSync(GroupSync {
                action: Some(group_sync::Action::Delete(group_sync::Delete {
                    group_identity: Some(GroupIdentity {
                        group_id: 0x0102_0304_0506_0708,
                        creator_identity: "ABCDEFGH".to_owned(),
                    }),
                })),
            }),
        );
        let expected = "3a17_1a15_0a13_090807060504030201_1208_4142434445464748".replace('_', "");
        assert_eq!(hex::encode(envelope.encode_to_vec()), expected);
    }

    #[test]
    fn opens_an_envelope_sealed_by_pynacl() {
        // PyNaCl 1.6: SecretBox(dgrk of spec §10).encrypt(plain, nonce = bytes(range(24))) with
        // plain = "690100000000000000" + "320c1a0a0a084142434445464748" (hand-encoded above).
        let dgrk = SymmetricKey::from_bytes(
            hex::decode("a4bf34ff67ed3b731a2aa6e023335f7eba6c914e877da3d15bff41d84f7f75f8")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let sealed = hex::decode(
            "000102030405060708090a0b0c0d0e0f1011121314151617\
             e09e8f1db89d918344bb34659fc2972944dca5db8c41d70886115cc359369b66bc047119e8f5e3",
        )
        .unwrap();
        assert_eq!(
            open_envelope(&dgrk, &sealed).unwrap(),
            with_content(1, old_contact_delete())
        );
    }
}
