//! `d2d.SharedDeviceData` sealed under `dgsddk` (spec §3.4): the group-wide blob a device sets
//! with SetSharedDeviceData and the mediator hands to every device in ServerInfo.

use prost::Message;
use rand_core::CryptoRngCore;

use super::D2dError;
use crate::crypto::{open_nonce_ahead, pad, seal_nonce_ahead, SymmetricKey};
use crate::proto;

/// Data shared by every device of the group, without the padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SharedDeviceData {
    /// The lowest d2d protocol version every device of the group must support.
    pub version: u32,
}

/// Seals `data` under `dgsddk` with 1..255 bytes of PKCS#7-style random padding, as for
/// `DeviceInfo` (the spec only says "padding").
#[must_use]
pub fn seal_shared_device_data(
    dgsddk: &SymmetricKey,
    data: &SharedDeviceData,
    rng: &mut impl CryptoRngCore,
) -> Vec<u8> {
    let message = proto::d2d::SharedDeviceData {
        padding: pad(&[], rng, 0),
        version: data.version,
    };
    seal_nonce_ahead(dgsddk, rng, &message.encode_to_vec())
}

/// Opens shared device data sealed under `dgsddk`; the padding is ignored, whatever its form.
pub fn open_shared_device_data(
    dgsddk: &SymmetricKey,
    data: &[u8],
) -> Result<SharedDeviceData, D2dError> {
    let plain = open_nonce_ahead(dgsddk, data).map_err(D2dError::Decrypt)?;
    let message =
        proto::d2d::SharedDeviceData::decode(plain.as_slice()).map_err(D2dError::Decode)?;
    Ok(SharedDeviceData {
        version: message.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CryptoError;
    use crate::keys::DeviceGroupKey;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn dgsddk() -> SymmetricKey {
        DeviceGroupKey::from_bytes([7; 32]).derive_keys().dgsddk
    }

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    proptest! {
        #[test]
        fn shared_device_data_round_trips(version: u32, seed: u64) {
            let data = SharedDeviceData { version };
            let sealed = seal_shared_device_data(&dgsddk(), &data, &mut rng(seed));
            prop_assert_eq!(open_shared_device_data(&dgsddk(), &sealed).unwrap(), data);
            let plain = open_nonce_ahead(&dgsddk(), &sealed).unwrap();
            let padding = proto::d2d::SharedDeviceData::decode(plain.as_slice()).unwrap().padding;
            prop_assert!(!padding.is_empty() && padding.iter().all(|&b| usize::from(b) == padding.len()));
        }

        #[test]
        fn arbitrary_sealed_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = open_shared_device_data(&dgsddk(), &data);
        }

        #[test]
        fn arbitrary_plaintext_never_panics(plain in proptest::collection::vec(any::<u8>(), 0..300), seed: u64) {
            let sealed = seal_nonce_ahead(&dgsddk(), &mut rng(seed), &plain);
            let _ = open_shared_device_data(&dgsddk(), &sealed);
        }
    }

    #[test]
    fn wrong_key_is_a_decrypt_error() {
        let sealed =
            seal_shared_device_data(&dgsddk(), &SharedDeviceData { version: 3 }, &mut rng(0));
        let dgdik = DeviceGroupKey::from_bytes([7; 32]).derive_keys().dgdik;
        assert_eq!(
            open_shared_device_data(&dgdik, &sealed),
            Err(D2dError::Decrypt(CryptoError::Decrypt))
        );
    }

    #[test]
    fn undecodable_plaintext_is_a_decode_error() {
        // version (field 2, varint) with a truncated varint.
        let sealed = seal_nonce_ahead(&dgsddk(), &mut rng(0), &[0x10, 0x80]);
        assert!(matches!(
            open_shared_device_data(&dgsddk(), &sealed),
            Err(D2dError::Decode(_))
        ));
    }

    #[test]
    fn opens_shared_device_data_sealed_by_pynacl() {
        // PyNaCl 1.6: SecretBox(dgsddk of spec §10).encrypt(plain, nonce = bytes(range(24))) with
        // plain = padding [1] ("0a0101") + version 2 (field 2 varint: "1002").
        let dgsddk = SymmetricKey::from_bytes(
            hex::decode("7a91ad36bc9537ccfd6fd76b23d7f5319e506e6a5294c988c9a75c8e34a3c9dd")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let sealed = hex::decode(
            "000102030405060708090a0b0c0d0e0f1011121314151617\
             a9fbf3250589ba6f3d82b299cb93d92bbcfdec6d87",
        )
        .unwrap();
        assert_eq!(
            open_shared_device_data(&dgsddk, &sealed),
            Ok(SharedDeviceData { version: 2 })
        );
    }
}
