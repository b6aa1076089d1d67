//! The d2m handshake's challenge response (spec §3.2): the device proves it holds the device group
//! key by boxing the mediator's challenge from `DGPK` to the mediator's ephemeral key `ESK`.

use rand_core::CryptoRngCore;

use crate::crypto::{
    ct_eq, open_nonce_ahead, seal_nonce_ahead, PublicKey, SecretKey, NONCE_LEN, TAG_LEN,
};
use crate::proto::d2m as pb;

/// Length of `ServerHello.challenge` (spec §2.5; desktop rejects any other length).
pub const CHALLENGE_LEN: usize = 32;
/// Length of `ServerHello.esk`, an X25519 public key.
pub const ESK_LEN: usize = 32;
/// Length of `ClientHello.response`: `nonce(24) ‖ tag(16) ‖ box(challenge)(32)` (spec §3.2).
pub const RESPONSE_LEN: usize = NONCE_LEN + TAG_LEN + CHALLENGE_LEN;

/// Why a `ServerHello` or a challenge response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    /// `ServerHello.esk` is not 32 bytes.
    #[error("ServerHello.esk must be {ESK_LEN} bytes, got {0}")]
    EskLength(usize),
    /// `ServerHello.challenge` is not 32 bytes.
    #[error("ServerHello.challenge must be {CHALLENGE_LEN} bytes, got {0}")]
    ChallengeLength(usize),
    /// `ClientHello.response` is not 72 bytes.
    #[error("challenge response must be {RESPONSE_LEN} bytes, got {0}")]
    ResponseLength(usize),
    /// The peer's key (device group id or ESK) is a low-order point: the box key would be
    /// predictable, so the response would prove nothing.
    #[error("low-order public key")]
    LowOrderKey,
    /// The response does not open under the box key of ESK and the device group id.
    #[error("challenge response does not decrypt")]
    Undecryptable,
    /// The response opens but holds something other than the challenge.
    #[error("challenge response does not match the challenge")]
    ChallengeMismatch,
}

/// The device's `ClientHello.response`: `nonce ‖ box_{DGPK → ESK}(challenge)` (spec §3.2).
///
/// Does not check `esk`; [`validate_server_hello`] refuses a low-order one first.
pub fn respond(
    dgpk: &SecretKey,
    esk: &PublicKey,
    challenge: &[u8; CHALLENGE_LEN],
    rng: &mut impl CryptoRngCore,
) -> Vec<u8> {
    seal_nonce_ahead(&dgpk.box_key(esk), rng, challenge)
}

/// The mediator's check of a `ClientHello.response` against the challenge it sent; the
/// device group id comes from the connection URL (spec §1.2). Compares in constant time.
pub fn verify(
    esk_secret: &SecretKey,
    device_group_id: &PublicKey,
    challenge: &[u8; CHALLENGE_LEN],
    response: &[u8],
) -> Result<(), ChallengeError> {
    if response.len() != RESPONSE_LEN {
        return Err(ChallengeError::ResponseLength(response.len()));
    }
    let key = esk_secret
        .box_key_contributory(device_group_id)
        .map_err(|_| ChallengeError::LowOrderKey)?;
    let plaintext = open_nonce_ahead(&key, response).map_err(|_| ChallengeError::Undecryptable)?;
    if ct_eq(&plaintext, challenge) {
        Ok(())
    } else {
        Err(ChallengeError::ChallengeMismatch)
    }
}

/// The device's check of a `ServerHello`: returns ESK and the challenge, refusing lengths other
/// than 32 and a low-order ESK. The version is left to the caller's negotiation (spec §3.1).
pub fn validate_server_hello(
    hello: &pb::ServerHello,
) -> Result<(PublicKey, [u8; CHALLENGE_LEN]), ChallengeError> {
    let esk =
        PublicKey::from_slice(&hello.esk).ok_or(ChallengeError::EskLength(hello.esk.len()))?;
    let challenge = <[u8; CHALLENGE_LEN]>::try_from(hello.challenge.as_slice())
        .map_err(|_| ChallengeError::ChallengeLength(hello.challenge.len()))?;
    if is_low_order(&esk) {
        return Err(ChallengeError::LowOrderKey);
    }
    Ok((esk, challenge))
}

/// A fixed clamped scalar: multiplying a low-order point by any clamped scalar (a multiple of
/// the cofactor 8) gives the identity, which is what `box_key_contributory` refuses.
const LOW_ORDER_PROBE: [u8; 32] = [0x5a; 32];

/// Whether `key` is a point of small order (on the curve or its twist).
fn is_low_order(key: &PublicKey) -> bool {
    SecretKey::from_bytes(LOW_ORDER_PROBE)
        .box_key_contributory(key)
        .is_err()
}

/// The mediator's half of one handshake: a fresh ESK and challenge, kept until the
/// `ClientHello` arrives.
#[derive(Debug)]
pub struct ServerChallenge {
    esk: SecretKey,
    challenge: [u8; CHALLENGE_LEN],
}

impl ServerChallenge {
    /// A fresh ephemeral key and random challenge.
    pub fn new(rng: &mut impl CryptoRngCore) -> Self {
        let esk = SecretKey::generate(rng);
        let mut challenge = [0_u8; CHALLENGE_LEN];
        rng.fill_bytes(&mut challenge);
        Self { esk, challenge }
    }

    /// The `ServerHello` carrying this challenge.
    #[must_use]
    pub fn server_hello(&self, version: u32) -> pb::ServerHello {
        pb::ServerHello {
            version,
            esk: self.esk.public_key().0.to_vec(),
            challenge: self.challenge.to_vec(),
        }
    }

    /// Checks the device's response; see [`verify`].
    pub fn verify(
        &self,
        device_group_id: &PublicKey,
        response: &[u8],
    ) -> Result<(), ChallengeError> {
        verify(&self.esk, device_group_id, &self.challenge, response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::seal_nonce_ahead;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The spec's DGK vector (§10): dgpk and DGPK.public.
    fn dgpk() -> SecretKey {
        SecretKey::from_bytes(h32(
            "60c0ed9098902c0b6093be4a819bf344900bc7473504ccdb61004b1b58aa2233",
        ))
    }
    const DGPK_PUBLIC: &str = "e77d9b02195b880c1374650ec136b44e7b0b6d9e47b479dbd5d97c470acb0b40";

    fn challenge() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    /// Low-order points on Curve25519 (u-coordinates): 0, 1, and a point of order 8.
    const LOW_ORDER: [&str; 3] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    ];

    #[test]
    fn response_matches_pynacl() {
        // esk secret = 32 × 0x11. Reference from PyNaCl:
        //   nacl.public.Box(PrivateKey(dgpk), PrivateKey(b"\x11"*32).public_key)
        //       .encrypt(bytes(range(32)), nonce)
        // with the nonce this RNG draws (the first 24 bytes of the output).
        let esk_secret = SecretKey::from_bytes([0x11; 32]);
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let response = respond(&dgpk(), &esk_secret.public_key(), &challenge(), &mut rng);
        assert_eq!(response.len(), RESPONSE_LEN);
        assert_eq!(hex::encode(&response), PYNACL_RESPONSE);
        let dgpk_public = PublicKey(h32(DGPK_PUBLIC));
        assert_eq!(
            verify(&esk_secret, &dgpk_public, &challenge(), &response),
            Ok(())
        );
    }
    const PYNACL_RESPONSE: &str = concat!(
        "19454a27b752f905909507d6160ddc888e2df8b773098ef3",
        "992c2db00b1c5be0183663ea9ccce16cb8175df6fd91d2f00004ef37f5c47749",
        "e9de18dde5cc6c7f4c05de80cfb44e84",
    );

    #[test]
    fn round_trip_through_server_challenge() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let server = ServerChallenge::new(&mut rng);
        let hello = server.server_hello(0);
        let (esk, challenge) = validate_server_hello(&hello).unwrap();
        let response = respond(&dgpk(), &esk, &challenge, &mut rng);
        assert_eq!(server.verify(&dgpk().public_key(), &response), Ok(()));
    }

    #[test]
    fn wrong_dgpk_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let server = ServerChallenge::new(&mut rng);
        let (esk, challenge) = validate_server_hello(&server.server_hello(0)).unwrap();
        let other = SecretKey::generate(&mut rng);
        let response = respond(&other, &esk, &challenge, &mut rng);
        assert_eq!(
            server.verify(&dgpk().public_key(), &response),
            Err(ChallengeError::Undecryptable)
        );
    }

    #[test]
    fn flipped_bit_is_refused_anywhere() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let server = ServerChallenge::new(&mut rng);
        let (esk, challenge) = validate_server_hello(&server.server_hello(0)).unwrap();
        let response = respond(&dgpk(), &esk, &challenge, &mut rng);
        for i in 0..RESPONSE_LEN {
            let mut bad = response.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                server.verify(&dgpk().public_key(), &bad),
                Err(ChallengeError::Undecryptable),
                "byte {i}"
            );
        }
    }

    #[test]
    fn wrong_length_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let server = ServerChallenge::new(&mut rng);
        let (esk, challenge) = validate_server_hello(&server.server_hello(0)).unwrap();
        let response = respond(&dgpk(), &esk, &challenge, &mut rng);
        let group = dgpk().public_key();
        assert_eq!(
            server.verify(&group, &response[..71]),
            Err(ChallengeError::ResponseLength(71))
        );
        let mut long = response.clone();
        long.push(0);
        assert_eq!(
            server.verify(&group, &long),
            Err(ChallengeError::ResponseLength(73))
        );
        assert_eq!(
            server.verify(&group, &[]),
            Err(ChallengeError::ResponseLength(0))
        );
    }

    #[test]
    fn response_to_another_challenge_is_a_mismatch() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let esk = SecretKey::generate(&mut rng);
        // Correct key, correct length, other plaintext.
        let key = dgpk().box_key(&esk.public_key());
        let response = seal_nonce_ahead(&key, &mut rng, &[0xff; 32]);
        assert_eq!(
            verify(&esk, &dgpk().public_key(), &challenge(), &response),
            Err(ChallengeError::ChallengeMismatch)
        );
    }

    #[test]
    fn low_order_group_id_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let esk = SecretKey::generate(&mut rng);
        for point in LOW_ORDER {
            let group = PublicKey(h32(point));
            // Anyone can compute this box key, so a response made with it proves nothing.
            let response = seal_nonce_ahead(&esk.box_key(&group), &mut rng, &challenge());
            assert_eq!(
                verify(&esk, &group, &challenge(), &response),
                Err(ChallengeError::LowOrderKey),
                "{point}"
            );
        }
    }

    #[test]
    fn server_hello_with_bad_lengths_is_refused() {
        let good = pb::ServerHello {
            version: 0,
            esk: dgpk().public_key().0.to_vec(),
            challenge: vec![7; 32],
        };
        assert!(validate_server_hello(&good).is_ok());
        for len in [0, 31, 33] {
            let hello = pb::ServerHello {
                esk: vec![9; len],
                ..good.clone()
            };
            assert_eq!(
                validate_server_hello(&hello),
                Err(ChallengeError::EskLength(len))
            );
            let hello = pb::ServerHello {
                challenge: vec![7; len],
                ..good.clone()
            };
            assert_eq!(
                validate_server_hello(&hello),
                Err(ChallengeError::ChallengeLength(len))
            );
        }
    }

    #[test]
    fn server_hello_returns_its_fields() {
        let hello = pb::ServerHello {
            version: 3,
            esk: hex::decode(DGPK_PUBLIC).unwrap(),
            challenge: challenge().to_vec(),
        };
        assert_eq!(
            validate_server_hello(&hello),
            Ok((PublicKey(h32(DGPK_PUBLIC)), challenge()))
        );
    }

    #[test]
    fn server_hello_with_low_order_esk_is_refused() {
        for point in LOW_ORDER {
            let hello = pb::ServerHello {
                version: 0,
                esk: hex::decode(point).unwrap(),
                challenge: vec![1; 32],
            };
            assert_eq!(
                validate_server_hello(&hello),
                Err(ChallengeError::LowOrderKey),
                "{point}"
            );
        }
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            response in proptest::collection::vec(any::<u8>(), 0..100),
            group: [u8; 32],
        ) {
            let esk = SecretKey::from_bytes([3; 32]);
            let _ = verify(&esk, &PublicKey(group), &challenge(), &response);
        }

        #[test]
        fn random_keys_are_not_low_order(secret: [u8; 32]) {
            prop_assert!(!is_low_order(&SecretKey::from_bytes(secret).public_key()));
        }
    }
}
