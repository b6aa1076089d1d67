//! The directory's identity-creation challenge (DESIGN §2.5, spec §1.3 "dir" key).
//!
//! The directory proves that whoever registers a public key holds its secret: it hands out a
//! random token and an ephemeral `tokenRespKeyPub`; the client answers with
//! `BLAKE2b-256(key = dir key, input = token)`. Both sides compute the dir key from their own
//! secret and the other's public key.

use blake2::digest::{consts::U32, Mac};
use blake2::Blake2bMac;

use crate::crypto::{ct_eq, CryptoError, PublicKey, SecretKey};
use crate::keys::ClientKey;

/// The client's response to a directory token.
pub fn client_response(ck: &ClientKey, token_resp_key_pub: &PublicKey, token: &[u8]) -> Result<[u8; 32], CryptoError> {
    let key = ck.directory_key(token_resp_key_pub)?;
    Ok(mac(key.as_bytes(), token))
}

/// The directory's check of a response: recomputes it from the challenge secret and the
/// registering public key, and compares in constant time.
pub fn verify_response(
    token_resp_key: &SecretKey,
    client_public_key: &PublicKey,
    token: &[u8],
    response: &[u8],
) -> Result<bool, CryptoError> {
    let shared = token_resp_key.box_key_contributory(client_public_key)?;
    let key = crate::keys::csp_dir_key(&shared);
    Ok(ct_eq(&mac(key.as_bytes(), token), response))
}

fn mac(key: &[u8; 32], input: &[u8]) -> [u8; 32] {
    // A 32-byte key is always a valid BLAKE2b key.
    match <Blake2bMac<U32> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(input);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn client_and_directory_agree_and_reject_wrong_keys() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let ck = ClientKey::new(SecretKey::generate(&mut rng));
        let challenge = SecretKey::generate(&mut rng);
        let token = b"some token bytes";
        let response = client_response(&ck, &challenge.public_key(), token).unwrap();
        assert!(verify_response(&challenge, &ck.public_key(), token, &response).unwrap());
        let other = ClientKey::new(SecretKey::generate(&mut rng));
        assert!(!verify_response(&challenge, &other.public_key(), token, &response).unwrap());
        assert!(!verify_response(&challenge, &ck.public_key(), b"other token", &response).unwrap());
        assert!(!verify_response(&challenge, &ck.public_key(), token, &response[..31]).unwrap());
    }
}
