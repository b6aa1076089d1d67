//! `d2d.TransactionScope` sealed under `dgtsk` (spec §6): carried by BeginTransaction,
//! TransactionRejected and TransactionEnded, so a device turned away learns what is changing.

use prost::Message;
use rand_core::CryptoRngCore;

use super::D2dError;
use crate::crypto::{open_nonce_ahead, seal_nonce_ahead, SymmetricKey};
use crate::proto;

pub use crate::proto::d2d::transaction_scope::Scope;

/// Seals `scope` under `dgtsk`. The message has no padding field, so the blob is 40 bytes for
/// `USER_PROFILE_SYNC` (value 0 is not encoded) and 42 for every other scope.
#[must_use]
pub fn seal_transaction_scope(
    dgtsk: &SymmetricKey,
    scope: Scope,
    rng: &mut impl CryptoRngCore,
) -> Vec<u8> {
    let message = proto::d2d::TransactionScope {
        scope: scope.into(),
    };
    seal_nonce_ahead(dgtsk, rng, &message.encode_to_vec())
}

/// Opens a transaction scope sealed under `dgtsk`; a value outside the spec's enum is refused.
pub fn open_transaction_scope(dgtsk: &SymmetricKey, data: &[u8]) -> Result<Scope, D2dError> {
    let plain = open_nonce_ahead(dgtsk, data).map_err(D2dError::Decrypt)?;
    let message =
        proto::d2d::TransactionScope::decode(plain.as_slice()).map_err(D2dError::Decode)?;
    Scope::try_from(message.scope).map_err(|_| D2dError::UnknownScope(message.scope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CryptoError;
    use crate::keys::DeviceGroupKey;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn dgtsk() -> SymmetricKey {
        DeviceGroupKey::from_bytes([7; 32]).derive_keys().dgtsk
    }

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    const ALL: [Scope; 9] = [
        Scope::UserProfileSync,
        Scope::ContactSync,
        Scope::GroupSync,
        Scope::DistributionListSync,
        Scope::SettingsSync,
        Scope::MdmParameterSync,
        Scope::NewDeviceSync,
        Scope::DropDevice,
        Scope::WorkSyncDelta,
    ];

    proptest! {
        #[test]
        fn transaction_scope_round_trips(scope in proptest::sample::select(&ALL[..]), seed: u64) {
            let sealed = seal_transaction_scope(&dgtsk(), scope, &mut rng(seed));
            prop_assert_eq!(open_transaction_scope(&dgtsk(), &sealed), Ok(scope));
        }

        #[test]
        fn arbitrary_sealed_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = open_transaction_scope(&dgtsk(), &data);
        }

        #[test]
        fn arbitrary_plaintext_never_panics(plain in proptest::collection::vec(any::<u8>(), 0..300), seed: u64) {
            let sealed = seal_nonce_ahead(&dgtsk(), &mut rng(seed), &plain);
            let _ = open_transaction_scope(&dgtsk(), &sealed);
        }
    }

    #[test]
    fn scope_values_are_the_spec_table() {
        let values: Vec<i32> = ALL.iter().map(|&s| i32::from(s)).collect();
        // 7 and 8 are protocol version 23's additions.
        assert_eq!(values, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn sealed_lengths() {
        assert_eq!(
            seal_transaction_scope(&dgtsk(), Scope::UserProfileSync, &mut rng(0)).len(),
            40
        );
        assert_eq!(
            seal_transaction_scope(&dgtsk(), Scope::NewDeviceSync, &mut rng(0)).len(),
            42
        );
    }

    #[test]
    fn unknown_scope_is_refused() {
        // scope: field 1 varint -> 0x08, value 9 (8 is the last one protocol version 23 has).
        let sealed = seal_nonce_ahead(&dgtsk(), &mut rng(0), &[0x08, 0x09]);
        assert_eq!(
            open_transaction_scope(&dgtsk(), &sealed),
            Err(D2dError::UnknownScope(9))
        );
        // -1 as a ten-byte varint.
        let minus_one = hex::decode("08ffffffffffffffffff01").unwrap();
        let sealed = seal_nonce_ahead(&dgtsk(), &mut rng(0), &minus_one);
        assert_eq!(
            open_transaction_scope(&dgtsk(), &sealed),
            Err(D2dError::UnknownScope(-1))
        );
    }

    #[test]
    fn wrong_key_is_a_decrypt_error() {
        let sealed = seal_transaction_scope(&dgtsk(), Scope::ContactSync, &mut rng(0));
        let dgrk = DeviceGroupKey::from_bytes([7; 32]).derive_keys().dgrk;
        assert_eq!(
            open_transaction_scope(&dgrk, &sealed),
            Err(D2dError::Decrypt(CryptoError::Decrypt))
        );
    }

    #[test]
    fn undecodable_plaintext_is_a_decode_error() {
        // Field 1 announced as LEN (0x0a) with 5 bytes that are not there.
        let sealed = seal_nonce_ahead(&dgtsk(), &mut rng(0), &[0x0a, 0x05]);
        assert!(matches!(
            open_transaction_scope(&dgtsk(), &sealed),
            Err(D2dError::Decode(_))
        ));
    }

    #[test]
    fn opens_a_scope_sealed_by_pynacl() {
        // PyNaCl 1.6: SecretBox(dgtsk of spec §10).encrypt(bytes.fromhex("0806"),
        // nonce = bytes(range(24))): scope NEW_DEVICE_SYNC (field 1 varint 6).
        let dgtsk = SymmetricKey::from_bytes(
            hex::decode("7c6b94affb171c564bfd375d50c4781d72ab2671ae4035ab4307dedce67ef30e")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let sealed = hex::decode(
            "000102030405060708090a0b0c0d0e0f1011121314151617a5d6b3e282197888e9991fcb5f4bfafc0292",
        )
        .unwrap();
        assert_eq!(
            open_transaction_scope(&dgtsk, &sealed),
            Ok(Scope::NewDeviceSync)
        );
    }
}
