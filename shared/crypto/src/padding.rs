//! PKCS#7-style random padding (spec §9.5 e2e container, §3.3 `DeviceInfo.padding`).
//!
//! `n` bytes of value `n` (1..=255) are appended, with `n` random, then raised as needed so the
//! padded data reaches a minimum length. Random padding hides the length of short messages.

use rand_core::CryptoRngCore;

/// Why padding could not be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaddingError {
    /// No bytes at all, so no padding length byte.
    #[error("padded data is empty")]
    Empty,
    /// The last byte is 0 or larger than the data.
    #[error("invalid padding length {0}")]
    Length(u8),
    /// The padding bytes do not all equal the length byte.
    #[error("inconsistent padding bytes")]
    Inconsistent,
}

/// Appends 1..=255 padding bytes, random in number but at least enough for `min_total` bytes.
///
/// If `data` is already 255 or more bytes shorter than `min_total`, the result is shorter than
/// `min_total`: the format cannot express more than 255 bytes of padding.
pub fn pad(data: &[u8], rng: &mut impl CryptoRngCore, min_total: usize) -> Vec<u8> {
    let mut byte = [0_u8; 1];
    rng.fill_bytes(&mut byte);
    let random = byte[0].max(1);
    let needed = min_total.saturating_sub(data.len()).min(255);
    let n = random.max(u8::try_from(needed).unwrap_or(u8::MAX));
    let mut out = Vec::with_capacity(data.len() + usize::from(n));
    out.extend_from_slice(data);
    out.resize(data.len() + usize::from(n), n);
    out
}

/// Strips the padding, checking that every padding byte is the length byte.
pub fn unpad(padded: &[u8]) -> Result<&[u8], PaddingError> {
    let &n = padded.last().ok_or(PaddingError::Empty)?;
    if n == 0 || usize::from(n) > padded.len() {
        return Err(PaddingError::Length(n));
    }
    let (data, padding) = padded.split_at(padded.len() - usize::from(n));
    if padding.iter().any(|&b| b != n) {
        return Err(PaddingError::Inconsistent);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    proptest! {
        #[test]
        fn pad_unpad_round_trip(data in proptest::collection::vec(any::<u8>(), 0..600), seed: u64, min in 0_usize..300) {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let padded = pad(&data, &mut rng, min);
            prop_assert!(padded.len() > data.len());
            prop_assert!(padded.len() >= min.min(data.len() + 255));
            prop_assert_eq!(unpad(&padded).unwrap(), &data[..]);
        }

        #[test]
        fn unpad_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = unpad(&data);
        }
    }

    #[test]
    fn rejects_bad_padding() {
        assert_eq!(unpad(&[]), Err(PaddingError::Empty));
        assert_eq!(unpad(&[1, 0]), Err(PaddingError::Length(0)));
        assert_eq!(unpad(&[3, 3]), Err(PaddingError::Length(3)));
        assert_eq!(unpad(&[9, 2, 3, 3, 3]), Ok(&[9, 2][..]));
        assert_eq!(unpad(&[9, 2, 3, 3]), Err(PaddingError::Inconsistent));
    }
}
