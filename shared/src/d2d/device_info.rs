//! `d2d.DeviceInfo` sealed under `dgdik` (spec §3.3): what a device tells its siblings about
//! itself in ClientHello, and what they read back from DevicesInfo.

use prost::Message;
use rand_core::CryptoRngCore;

use super::D2dError;
use crate::crypto::{open_nonce_ahead, pad, seal_nonce_ahead, SymmetricKey};
use crate::proto;

pub use crate::proto::d2d::device_info::Platform;

/// Longest label [`seal_device_info`] accepts, in UTF-8 bytes. libthreema recommends at most 64
/// grapheme clusters; 256 bytes holds 64 clusters of up to four bytes (any single code point)
/// without making the crate count grapheme clusters.
pub const MAX_LABEL_LEN: usize = 256;

/// Longest `platform_details` [`seal_device_info`] accepts, in UTF-8 bytes.
pub const MAX_PLATFORM_DETAILS_LEN: usize = 256;

/// Longest `app_version` [`seal_device_info`] accepts, in UTF-8 bytes.
pub const MAX_APP_VERSION_LEN: usize = 256;

/// A device's description of itself, without the padding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// Which kind of app; an unknown value on the wire reads as [`Platform::Unspecified`].
    pub platform: Platform,
    /// Runtime and OS, e.g. "Firefox 128 on Linux".
    pub platform_details: String,
    /// The app's build version.
    pub app_version: String,
    /// The user's name for the device; may be empty.
    pub label: String,
}

/// Seals `info` under `dgdik` with 1..255 bytes of PKCS#7-style random padding (spec §3.3).
///
/// Refuses text fields longer than [`MAX_LABEL_LEN`], [`MAX_PLATFORM_DETAILS_LEN`] or
/// [`MAX_APP_VERSION_LEN`].
pub fn seal_device_info(
    dgdik: &SymmetricKey,
    info: &DeviceInfo,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, D2dError> {
    check_len("label", &info.label, MAX_LABEL_LEN)?;
    check_len(
        "platform_details",
        &info.platform_details,
        MAX_PLATFORM_DETAILS_LEN,
    )?;
    check_len("app_version", &info.app_version, MAX_APP_VERSION_LEN)?;
    let message = proto::d2d::DeviceInfo {
        padding: pad(&[], rng, 0),
        platform: info.platform.into(),
        platform_details: info.platform_details.clone(),
        app_version: info.app_version.clone(),
        label: info.label.clone(),
    };
    Ok(seal_nonce_ahead(dgdik, rng, &message.encode_to_vec()))
}

/// Opens a device info sealed under `dgdik`.
///
/// Lenient where the data is only shown to the user: the padding is ignored (as the spec tells
/// receivers), text lengths are not checked, and an unknown platform reads as unspecified, so a
/// sibling running a newer or different app still appears in the device list.
pub fn open_device_info(dgdik: &SymmetricKey, data: &[u8]) -> Result<DeviceInfo, D2dError> {
    let plain = open_nonce_ahead(dgdik, data).map_err(D2dError::Decrypt)?;
    let message = proto::d2d::DeviceInfo::decode(plain.as_slice()).map_err(D2dError::Decode)?;
    Ok(DeviceInfo {
        platform: Platform::try_from(message.platform).unwrap_or(Platform::Unspecified),
        platform_details: message.platform_details,
        app_version: message.app_version,
        label: message.label,
    })
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), D2dError> {
    if value.len() > max {
        return Err(D2dError::FieldTooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CryptoError;
    use crate::d2d::strategies;
    use crate::keys::DeviceGroupKey;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn dgdik() -> SymmetricKey {
        DeviceGroupKey::from_bytes([7; 32]).derive_keys().dgdik
    }

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn desktop(label: &str) -> DeviceInfo {
        DeviceInfo {
            platform: Platform::Desktop,
            platform_details: "Firefox 128 on Linux".to_owned(),
            app_version: "0.1.0".to_owned(),
            label: label.to_owned(),
        }
    }

    proptest! {
        #[test]
        fn device_info_round_trips(info in strategies::device_info(), seed: u64) {
            let sealed = seal_device_info(&dgdik(), &info, &mut rng(seed)).unwrap();
            prop_assert_eq!(open_device_info(&dgdik(), &sealed).unwrap(), info);
        }

        #[test]
        fn padding_is_pkcs7_style(info in strategies::device_info(), seed: u64) {
            let sealed = seal_device_info(&dgdik(), &info, &mut rng(seed)).unwrap();
            let plain = open_nonce_ahead(&dgdik(), &sealed).unwrap();
            let padding = proto::d2d::DeviceInfo::decode(plain.as_slice()).unwrap().padding;
            prop_assert!(!padding.is_empty() && padding.len() <= 255);
            prop_assert!(padding.iter().all(|&b| usize::from(b) == padding.len()));
        }

        #[test]
        fn arbitrary_sealed_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = open_device_info(&dgdik(), &data);
        }

        #[test]
        fn arbitrary_plaintext_never_panics(plain in proptest::collection::vec(any::<u8>(), 0..300), seed: u64) {
            let sealed = seal_nonce_ahead(&dgdik(), &mut rng(seed), &plain);
            let _ = open_device_info(&dgdik(), &sealed);
        }
    }

    #[test]
    fn label_at_the_limit_is_accepted_and_one_byte_more_refused() {
        let at_limit = desktop(&"é".repeat(MAX_LABEL_LEN / 2));
        assert!(seal_device_info(&dgdik(), &at_limit, &mut rng(0)).is_ok());
        let over = desktop(&format!("{}x", "é".repeat(MAX_LABEL_LEN / 2)));
        assert_eq!(
            seal_device_info(&dgdik(), &over, &mut rng(0)),
            Err(D2dError::FieldTooLong {
                field: "label",
                len: MAX_LABEL_LEN + 1,
                max: MAX_LABEL_LEN
            })
        );
    }

    #[test]
    fn long_platform_details_and_app_version_are_refused() {
        let mut info = desktop("PC");
        info.platform_details = "x".repeat(MAX_PLATFORM_DETAILS_LEN + 1);
        assert!(matches!(
            seal_device_info(&dgdik(), &info, &mut rng(0)),
            Err(D2dError::FieldTooLong {
                field: "platform_details",
                ..
            })
        ));
        let mut info = desktop("PC");
        info.app_version = "x".repeat(MAX_APP_VERSION_LEN + 1);
        assert!(matches!(
            seal_device_info(&dgdik(), &info, &mut rng(0)),
            Err(D2dError::FieldTooLong {
                field: "app_version",
                ..
            })
        ));
    }

    #[test]
    fn wrong_key_is_a_decrypt_error() {
        let sealed = seal_device_info(&dgdik(), &desktop("PC"), &mut rng(1)).unwrap();
        let dgrk = DeviceGroupKey::from_bytes([7; 32]).derive_keys().dgrk;
        assert_eq!(
            open_device_info(&dgrk, &sealed),
            Err(D2dError::Decrypt(CryptoError::Decrypt))
        );
        assert_eq!(
            open_device_info(&dgdik(), &[1; 20]),
            Err(D2dError::Decrypt(CryptoError::TooShort(20)))
        );
    }

    #[test]
    fn undecodable_plaintext_is_a_decode_error() {
        let sealed = seal_nonce_ahead(&dgdik(), &mut rng(0), &[0x2a, 0x05, b'P']);
        assert!(matches!(
            open_device_info(&dgdik(), &sealed),
            Err(D2dError::Decode(_))
        ));
    }

    #[test]
    fn unknown_platform_reads_as_unspecified() {
        // platform: field 2 varint -> 0x10, value 9; label: field 5 LEN -> 0x2a, "PC".
        let sealed = seal_nonce_ahead(&dgdik(), &mut rng(0), &hex::decode("10092a025043").unwrap());
        let info = open_device_info(&dgdik(), &sealed).unwrap();
        assert_eq!(info.platform, Platform::Unspecified);
        assert_eq!(info.label, "PC");
    }

    #[test]
    fn opens_a_device_info_sealed_by_pynacl() {
        // PyNaCl 1.6: SecretBox(dgdik of spec §10).encrypt(plain, nonce = bytes(range(24))) with
        // plain = padding [2, 2] ("0a020202") + platform DESKTOP ("1003") + label "PC" ("2a025043").
        let dgdik = SymmetricKey::from_bytes(
            hex::decode("5953fb9775d8c23fae573e245534dac2c7aa16b62ea73b954ea4177d192e8c50")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let sealed = hex::decode(
            "000102030405060708090a0b0c0d0e0f1011121314151617\
             7a83afe93d4ef2aecc331236d39fddfc74e1e3170d5c8cae5781",
        )
        .unwrap();
        let info = open_device_info(&dgdik, &sealed).unwrap();
        assert_eq!(
            info,
            DeviceInfo {
                platform: Platform::Desktop,
                label: "PC".to_owned(),
                ..Default::default()
            }
        );
    }
}
