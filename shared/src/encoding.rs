//! The three RFC 4648 text encodings the device needs: lowercase hex (the mediator URL, spec
//! §1.2), base32 without padding (the ID backup, DESIGN §2.3) and padded base64 (the directory's
//! JSON, DESIGN §2.5).
//!
//! Why not `data_encoding`, which the servers use: its `encode_mut`/`decode_mut` dispatch at run
//! time over every bit width, so linking one encoding links all of them, ≈ 15 KB of the browser
//! package gzipped (docs/client.md "Size"). One bit-width-generic loop here is a few hundred
//! bytes; the tests check it against `data_encoding` on random input. Decoding is strict: the
//! exact alphabet, canonical trailing bits and (base64) exact padding, like `data_encoding`'s
//! standard encodings, so a value has one text form.

/// Why a text did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodingError {
    /// A length no encoded value has.
    #[error("encoded text has an impossible length")]
    Length,
    /// A character outside the alphabet, misplaced padding or non-zero trailing bits.
    #[error("encoded text has an invalid character or non-canonical padding")]
    Symbol,
}

const HEX_LOWER: &[u8] = b"0123456789abcdef";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Lowercase hex.
#[must_use]
pub fn hex_encode(bytes: &[u8]) -> String {
    encode(bytes, HEX_LOWER, 4, 1)
}

/// Lowercase hex only (upper case is refused, as the mediator path requires).
pub fn hex_decode(text: &str) -> Result<Vec<u8>, EncodingError> {
    decode(text.as_bytes(), HEX_LOWER, 4, 1)
}

/// RFC 4648 base32, upper case, no padding.
#[must_use]
pub fn base32_encode(bytes: &[u8]) -> String {
    encode(bytes, BASE32, 5, 1)
}

/// RFC 4648 base32, upper case, no padding.
pub fn base32_decode(text: &str) -> Result<Vec<u8>, EncodingError> {
    decode(text.as_bytes(), BASE32, 5, 1)
}

/// RFC 4648 base64 with `=` padding.
#[must_use]
pub fn base64_encode(bytes: &[u8]) -> String {
    encode(bytes, BASE64, 6, 4)
}

/// RFC 4648 base64 with `=` padding.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, EncodingError> {
    decode(text.as_bytes(), BASE64, 6, 4)
}

/// `bits` per character (4, 5 or 6, `alphabet.len() == 1 << bits`), most significant bit first;
/// padded with `=` to a multiple of `block` characters.
fn encode(bytes: &[u8], alphabet: &[u8], bits: u32, block: usize) -> String {
    let mask = (1_u32 << bits) - 1;
    let mut out =
        String::with_capacity(bytes.len().saturating_mul(8).div_ceil(6).saturating_add(3));
    let mut acc = 0_u32;
    let mut have = 0_u32;
    let mut push = |index: u32| {
        let symbol = usize::try_from(index & mask)
            .ok()
            .and_then(|i| alphabet.get(i));
        out.push(char::from(symbol.copied().unwrap_or(b'=')));
    };
    for &byte in bytes {
        acc = (acc << 8) | u32::from(byte);
        have += 8;
        while have >= bits {
            have -= bits;
            push(acc >> have);
        }
        acc &= (1 << have) - 1;
    }
    if have > 0 {
        push(acc << (bits - have));
    }
    while out.len() % block != 0 {
        out.push('=');
    }
    out
}

fn decode(text: &[u8], alphabet: &[u8], bits: u32, block: usize) -> Result<Vec<u8>, EncodingError> {
    if text.len() % block != 0 {
        return Err(EncodingError::Length);
    }
    // Padding only at the end, and only as much as the last group can need.
    let data_len = text.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    let padding = text.len() - data_len;
    if block == 1 && padding > 0 || padding >= block.max(2) {
        return Err(EncodingError::Symbol);
    }
    let data = text.get(..data_len).unwrap_or_default();
    // Characters that end exactly inside a byte boundary's worth of bits are impossible lengths
    // (e.g. 1, 3 or 6 base32 characters): their extra bits could not all be zero padding.
    let total_bits = data_len.saturating_mul(usize::try_from(bits).unwrap_or(8));
    let byte_len = total_bits / 8;
    let spare = total_bits % 8;
    if spare >= usize::try_from(bits).unwrap_or(8) {
        return Err(EncodingError::Length);
    }
    if padding > 0 && data_len.saturating_add(padding) != data_len.next_multiple_of(block) {
        return Err(EncodingError::Symbol);
    }
    let mut out = Vec::with_capacity(byte_len);
    let mut acc = 0_u32;
    let mut have = 0_u32;
    for &c in data {
        let value = alphabet
            .iter()
            .position(|&a| a == c)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(EncodingError::Symbol)?;
        acc = (acc << bits) | value;
        have += bits;
        if have >= 8 {
            have -= 8;
            out.push(u8::try_from((acc >> have) & 0xff).unwrap_or(0));
            acc &= (1 << have) - 1;
        }
    }
    // The leftover bits are padding and must be zero, so that each value has one text form.
    if acc != 0 {
        return Err(EncodingError::Symbol);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc4648_vectors() {
        let cases: [(&str, &str, &str, &str); 7] = [
            ("", "", "", ""),
            ("f", "66", "MY", "Zg=="),
            ("fo", "666f", "MZXQ", "Zm8="),
            ("foo", "666f6f", "MZXW6", "Zm9v"),
            ("foob", "666f6f62", "MZXW6YQ", "Zm9vYg=="),
            ("fooba", "666f6f6261", "MZXW6YTB", "Zm9vYmE="),
            ("foobar", "666f6f626172", "MZXW6YTBOI", "Zm9vYmFy"),
        ];
        for (plain, hex, b32, b64) in cases {
            assert_eq!(hex_encode(plain.as_bytes()), hex);
            assert_eq!(base32_encode(plain.as_bytes()), b32);
            assert_eq!(base64_encode(plain.as_bytes()), b64);
            assert_eq!(hex_decode(hex).unwrap(), plain.as_bytes());
            assert_eq!(base32_decode(b32).unwrap(), plain.as_bytes());
            assert_eq!(base64_decode(b64).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn malformed_text_is_refused() {
        assert_eq!(hex_decode("abc"), Err(EncodingError::Length));
        assert_eq!(hex_decode("AB"), Err(EncodingError::Symbol));
        assert_eq!(hex_decode("0g"), Err(EncodingError::Symbol));
        assert_eq!(base32_decode("M"), Err(EncodingError::Length));
        assert_eq!(base32_decode("MZX"), Err(EncodingError::Length));
        assert_eq!(base32_decode("MZ"), Err(EncodingError::Symbol)); // trailing bits set
        assert_eq!(base32_decode("my"), Err(EncodingError::Symbol));
        assert_eq!(base32_decode("MY=="), Err(EncodingError::Symbol));
        assert_eq!(base64_decode("Zg="), Err(EncodingError::Length));
        assert_eq!(base64_decode("Zh=="), Err(EncodingError::Symbol)); // trailing bits set
        assert_eq!(base64_decode("Zg=a"), Err(EncodingError::Symbol));
        assert!(base64_decode("Z===").is_err());
        assert_eq!(base64_decode("===="), Err(EncodingError::Symbol));
        assert_eq!(base64_decode("Zm8=Zm8="), Err(EncodingError::Symbol));
        assert_eq!(base64_decode("Zm9v\n"), Err(EncodingError::Length));
        assert_eq!(base64_decode("Zm9-"), Err(EncodingError::Symbol));
    }

    fn text_of(alphabet: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                8 => proptest::sample::select(alphabet.as_bytes().to_vec()),
                1 => Just(b'='),
                1 => any::<u8>(),
            ],
            0..24,
        )
        .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    proptest! {
        #[test]
        fn encodes_like_data_encoding(bytes in proptest::collection::vec(any::<u8>(), 0..70)) {
            prop_assert_eq!(hex_encode(&bytes), data_encoding::HEXLOWER.encode(&bytes));
            prop_assert_eq!(base32_encode(&bytes), data_encoding::BASE32_NOPAD.encode(&bytes));
            prop_assert_eq!(base64_encode(&bytes), data_encoding::BASE64.encode(&bytes));
            prop_assert_eq!(hex_decode(&hex_encode(&bytes)).unwrap(), bytes.clone());
            prop_assert_eq!(base32_decode(&base32_encode(&bytes)).unwrap(), bytes.clone());
            prop_assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }

        /// Whatever decodes here decodes to the same bytes with `data_encoding`, and what
        /// `data_encoding` refuses is refused here.
        #[test]
        fn decodes_like_data_encoding(
            hex in text_of("0123456789abcdefA"),
            b32 in text_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567a"),
            b64 in text_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"),
        ) {
            let pairs = [
                (hex_decode(&hex), data_encoding::HEXLOWER.decode(hex.as_bytes())),
                (base32_decode(&b32), data_encoding::BASE32_NOPAD.decode(b32.as_bytes())),
                (base64_decode(&b64), data_encoding::BASE64.decode(b64.as_bytes())),
            ];
            for (ours, theirs) in pairs {
                match (ours, theirs) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Ok(a), Err(e)) => prop_assert!(false, "accepted {a:?}, data_encoding: {e}"),
                    (Err(_), _) => {}
                }
            }
        }
    }

    #[test]
    fn canonical_texts_data_encoding_accepts_are_accepted() {
        // Every length class of each encoding, all-ones bytes (the most bits set).
        for len in 0..12 {
            let bytes = vec![0xff_u8; len];
            for text in [
                data_encoding::HEXLOWER.encode(&bytes),
                data_encoding::BASE32_NOPAD.encode(&bytes),
                data_encoding::BASE64.encode(&bytes),
            ] {
                let decoded = [
                    hex_decode(&text),
                    base32_decode(&text),
                    base64_decode(&text),
                ];
                assert!(
                    decoded.iter().any(|d| d.as_deref() == Ok(&bytes[..])),
                    "{text}"
                );
            }
        }
    }
}
