//! Login extensions (spec §9.3): the plaintext of the extensions box is a packed list of
//! `type u8 ‖ u16-le length ‖ payload`.
//!
//! Decoding rules where the spec is silent:
//! - An unknown type is skipped (its length still has to fit), so a newer client can add
//!   extensions without being locked out by an older server.
//! - A known type that appears twice is refused: two device ids or two cookies in one login have
//!   no meaning we could pick from.
//! - Fixed-size payloads must have exactly their size (csp-device-id 8, features 1,
//!   device-cookie 16); client-info must be UTF-8.
//!
//! Encoding writes the known extensions in the order Desktop sends them (client-info,
//! csp-device-id, features, device-cookie), leaving out the absent ones.
//!
//! Extension 0x02 was `message-payload-version` in the Desktop snapshot (0 legacy, 1 with
//! metadata box, anything else refused); Threema's current clients send a feature bit field in
//! the same byte (spec §12). Both readings agree on 0 and 1, so Tandem reads the byte as
//! [`CspFeatures`] only: bit 0 chooses the message struct exactly as the old version did, bit 1
//! allows the server to send echo requests, unknown bits are ignored (docs/protocol.md
//! "Protocol version 23").

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::Reader;
use crate::crypto::ct_eq;

use super::frame::MAX_FRAME_PLAINTEXT_LEN;

/// Extension type of client-info (UTF-8 string).
pub const EXT_CLIENT_INFO: u8 = 0x00;
/// Extension type of csp-device-id (u64-le).
pub const EXT_CSP_DEVICE_ID: u8 = 0x01;
/// Extension type of the feature bit field (u8), formerly message-payload-version.
pub const EXT_FEATURES: u8 = 0x02;
/// Extension type of device-cookie (16 bytes).
pub const EXT_DEVICE_COOKIE: u8 = 0x03;

/// Largest extensions plaintext: its box must fit the 8192-byte bound we also apply to frames.
pub const MAX_EXTENSIONS_LEN: usize = MAX_FRAME_PLAINTEXT_LEN;

/// The CSP features a client announces in login extension 0x02 (spec §12): a bit field whose
/// bit 0 is the old message-payload-version 1, so Desktop's `1` keeps its meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CspFeatures(pub u8);

impl CspFeatures {
    /// Bit 0: the session carries message-with-metadata-box (else legacy-message).
    pub const MESSAGE_WITH_METADATA_BOX: u8 = 0b0000_0001;
    /// Bit 1: the client answers echo requests the server sends.
    pub const RECEIVES_ECHO_REQUESTS: u8 = 0b0000_0010;
    /// What Tandem's client announces, and what Android and libthreema send: both bits.
    pub const CURRENT: Self = Self(Self::MESSAGE_WITH_METADATA_BOX | Self::RECEIVES_ECHO_REQUESTS);
    /// What Threema Desktop's snapshot (and iOS) sends: message-payload-version 1.
    pub const DESKTOP: Self = Self(Self::MESSAGE_WITH_METADATA_BOX);

    /// Whether messages travel as message-with-metadata-box.
    #[must_use]
    pub const fn message_with_metadata_box(self) -> bool {
        self.0 & Self::MESSAGE_WITH_METADATA_BOX != 0
    }

    /// Whether the server may send echo requests to this client.
    #[must_use]
    pub const fn receives_echo_requests(self) -> bool {
        self.0 & Self::RECEIVES_ECHO_REQUESTS != 0
    }
}

/// Why a packed extension list could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtensionError {
    /// Fewer than the 3 header bytes are left.
    #[error("extension header truncated")]
    TruncatedHeader,
    /// The payload length runs past the end of the list.
    #[error("extension 0x{ext_type:02x} payload truncated")]
    TruncatedPayload {
        /// Type of the extension.
        ext_type: u8,
    },
    /// A fixed-size extension has the wrong size.
    #[error("extension 0x{ext_type:02x} has {len} bytes, expected {expected}")]
    Length {
        /// Type of the extension.
        ext_type: u8,
        /// Length found.
        len: usize,
        /// Length the type requires.
        expected: usize,
    },
    /// client-info is not UTF-8.
    #[error("client-info is not UTF-8")]
    ClientInfoUtf8,
    /// A known extension type appears more than once.
    #[error("extension 0x{0:02x} appears twice")]
    Duplicate(u8),
    /// The encoded list would not fit the extensions box.
    #[error("extensions take {0} bytes, more than fit a login")]
    TooLarge(usize),
}

/// The device cookie (spec §9.3): stored only on its device, so kept out of `Debug` and zeroized.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DeviceCookie(pub [u8; 16]);

impl fmt::Debug for DeviceCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceCookie(..)")
    }
}

impl PartialEq for DeviceCookie {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for DeviceCookie {}

/// The login extensions a client sends and a server reads; absent ones are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// `<app-version>;<platform>;<lang>/<country>;<rest>` (0x00).
    pub client_info: Option<String>,
    /// Which of the group's devices owns this session (0x01).
    pub csp_device_id: Option<u64>,
    /// The feature bit field (0x02); absent reads as no features (spec §9.3: version 0).
    pub features: Option<CspFeatures>,
    /// The device's cookie, if it has one (0x03).
    pub device_cookie: Option<DeviceCookie>,
}

impl Extensions {
    /// What a current client sends: client-info and both feature bits (spec §12).
    #[must_use]
    pub fn new(client_info: impl Into<String>) -> Self {
        Self {
            client_info: Some(client_info.into()),
            features: Some(CspFeatures::CURRENT),
            ..Self::default()
        }
    }

    /// The features the server must assume: none when the extension is absent (spec §9.3).
    #[must_use]
    pub fn effective_features(&self) -> CspFeatures {
        self.features.unwrap_or_default()
    }

    /// Packs the present extensions in Desktop's order.
    pub fn encode(&self) -> Result<Vec<u8>, ExtensionError> {
        let mut out = Vec::new();
        if let Some(info) = &self.client_info {
            push(&mut out, EXT_CLIENT_INFO, info.as_bytes())?;
        }
        if let Some(id) = self.csp_device_id {
            push(&mut out, EXT_CSP_DEVICE_ID, &id.to_le_bytes())?;
        }
        if let Some(features) = self.features {
            push(&mut out, EXT_FEATURES, &[features.0])?;
        }
        if let Some(cookie) = &self.device_cookie {
            push(&mut out, EXT_DEVICE_COOKIE, &cookie.0)?;
        }
        Ok(out)
    }

    /// Unpacks a list: unknown types skipped, duplicates and wrong sizes refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, ExtensionError> {
        let mut out = Self::default();
        let mut r = Reader::new(bytes);
        while r.remaining() > 0 {
            let (ext_type, len) = match (r.u8(), r.u16_le()) {
                (Ok(t), Ok(len)) => (t, usize::from(len)),
                _ => return Err(ExtensionError::TruncatedHeader),
            };
            let payload = r
                .take(len)
                .map_err(|_| ExtensionError::TruncatedPayload { ext_type })?;
            match ext_type {
                EXT_CLIENT_INFO => {
                    let info = core::str::from_utf8(payload)
                        .map_err(|_| ExtensionError::ClientInfoUtf8)?;
                    set_once(&mut out.client_info, ext_type, info.to_owned())?;
                }
                EXT_CSP_DEVICE_ID => {
                    let id = u64::from_le_bytes(fixed(ext_type, payload)?);
                    set_once(&mut out.csp_device_id, ext_type, id)?;
                }
                EXT_FEATURES => {
                    let [bits] = fixed(ext_type, payload)?;
                    set_once(&mut out.features, ext_type, CspFeatures(bits))?;
                }
                EXT_DEVICE_COOKIE => {
                    let cookie = DeviceCookie(fixed(ext_type, payload)?);
                    set_once(&mut out.device_cookie, ext_type, cookie)?;
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

fn push(out: &mut Vec<u8>, ext_type: u8, payload: &[u8]) -> Result<(), ExtensionError> {
    let total = out.len().saturating_add(3).saturating_add(payload.len());
    let len = u16::try_from(payload.len()).map_err(|_| ExtensionError::TooLarge(total))?;
    if total > MAX_EXTENSIONS_LEN {
        return Err(ExtensionError::TooLarge(total));
    }
    out.push(ext_type);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

fn fixed<const N: usize>(ext_type: u8, payload: &[u8]) -> Result<[u8; N], ExtensionError> {
    <[u8; N]>::try_from(payload).map_err(|_| ExtensionError::Length {
        ext_type,
        len: payload.len(),
        expected: N,
    })
}

fn set_once<T>(slot: &mut Option<T>, ext_type: u8, value: T) -> Result<(), ExtensionError> {
    if slot.is_some() {
        return Err(ExtensionError::Duplicate(ext_type));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full() -> Extensions {
        Extensions {
            client_info: Some("2.0;Q;de/CH;tandem".into()),
            csp_device_id: Some(0x0102_0304_0506_0708),
            features: Some(CspFeatures(1)),
            device_cookie: Some(DeviceCookie([0xdc; 16])),
        }
    }

    /// The bytes are written out by hand from the spec's table, not by the encoder.
    #[test]
    fn encodes_in_desktop_order_with_spec_layout() {
        let expected = hex::decode(concat!(
            "00",
            "1200",
            "322e303b513b64652f43483b74616e64656d", // client-info, 18 bytes
            "01",
            "0800",
            "0807060504030201", // csp-device-id
            "02",
            "0100",
            "01", // features (message-payload-version 1 in Desktop's reading)
            "03",
            "1000",
            "dcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdc", // device-cookie
        ))
        .unwrap();
        assert_eq!(full().encode().unwrap(), expected);
        assert_eq!(Extensions::decode(&expected).unwrap(), full());
    }

    /// Conformance vectors, written by hand from spec §9.3 and §12: the one byte of extension
    /// 0x02 under both readings.
    #[test]
    fn feature_byte_reads_the_same_under_both_readings() {
        // (bytes, metadata box, echo requests)
        for (hex_bytes, metadata_box, echo) in [
            ("02010000", false, false), // Desktop: message-payload-version 0 (legacy)
            ("02010001", true, false),  // Desktop and iOS: version 1
            ("02010003", true, true),   // Android and libthreema: bits 0 and 1
            ("02010002", false, true),  // legacy messages, echo requests
            ("020100fd", true, false),  // unknown bits ignored
        ] {
            let ext = Extensions::decode(&hex::decode(hex_bytes).unwrap()).unwrap();
            let features = ext.effective_features();
            assert_eq!(
                features.message_with_metadata_box(),
                metadata_box,
                "{hex_bytes}"
            );
            assert_eq!(features.receives_echo_requests(), echo, "{hex_bytes}");
            assert_eq!(hex::encode(ext.encode().unwrap()), hex_bytes);
        }
        // Absent extension: version 0, no echo requests.
        let none = Extensions::decode(&[]).unwrap().effective_features();
        assert!(!none.message_with_metadata_box() && !none.receives_echo_requests());
        // What Tandem's client sends.
        assert_eq!(
            hex::encode(
                Extensions {
                    features: Some(CspFeatures::CURRENT),
                    ..Extensions::default()
                }
                .encode()
                .unwrap()
            ),
            "02010003"
        );
    }

    #[test]
    fn empty_list_is_no_extensions() {
        assert_eq!(Extensions::default().encode().unwrap(), Vec::<u8>::new());
        assert_eq!(Extensions::decode(&[]).unwrap(), Extensions::default());
        assert_eq!(Extensions::default().effective_features(), CspFeatures(0));
        assert_eq!(Extensions::new("x").effective_features(), CspFeatures(3));
    }

    #[test]
    fn unknown_types_are_skipped() {
        let bytes = hex::decode(
            "7f0300aabbcc" /* unknown */
                .to_owned()
                + "02010000"
                + "ff0000",
        )
        .unwrap();
        let ext = Extensions::decode(&bytes).unwrap();
        assert_eq!(
            ext,
            Extensions {
                features: Some(CspFeatures(0)),
                ..Extensions::default()
            }
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let bytes = hex::decode("0201000002010001").unwrap();
        assert_eq!(
            Extensions::decode(&bytes),
            Err(ExtensionError::Duplicate(2))
        );
        let bytes = hex::decode("0001004100010042").unwrap();
        assert_eq!(
            Extensions::decode(&bytes),
            Err(ExtensionError::Duplicate(0))
        );
    }

    #[test]
    fn malformed_lists_are_refused() {
        assert_eq!(
            Extensions::decode(&[0x02]),
            Err(ExtensionError::TruncatedHeader)
        );
        assert_eq!(
            Extensions::decode(&[0x02, 0x01]),
            Err(ExtensionError::TruncatedHeader)
        );
        assert_eq!(
            Extensions::decode(&[0x00, 0x05, 0x00, b'a']),
            Err(ExtensionError::TruncatedPayload { ext_type: 0 })
        );
        assert_eq!(
            Extensions::decode(&[0x01, 0x04, 0x00, 1, 2, 3, 4]),
            Err(ExtensionError::Length {
                ext_type: 1,
                len: 4,
                expected: 8
            })
        );
        assert_eq!(
            Extensions::decode(&[0x02, 0x00, 0x00]),
            Err(ExtensionError::Length {
                ext_type: 2,
                len: 0,
                expected: 1
            })
        );
        assert_eq!(
            Extensions::decode(&[
                0x03, 0x11, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]),
            Err(ExtensionError::Length {
                ext_type: 3,
                len: 17,
                expected: 16
            })
        );
        assert_eq!(
            Extensions::decode(&[0x00, 0x02, 0x00, 0xc3, 0x28]),
            Err(ExtensionError::ClientInfoUtf8)
        );
    }

    #[test]
    fn oversize_lists_are_not_encoded() {
        let ext = Extensions::new("x".repeat(MAX_EXTENSIONS_LEN - 3));
        assert_eq!(
            ext.encode(),
            Err(ExtensionError::TooLarge(MAX_EXTENSIONS_LEN + 4))
        );
        let ext = Extensions {
            features: None,
            ..Extensions::new("x".repeat(MAX_EXTENSIONS_LEN - 3))
        };
        assert_eq!(ext.encode().unwrap().len(), MAX_EXTENSIONS_LEN);
        let ext = Extensions::new("x".repeat(70_000));
        assert_eq!(ext.encode(), Err(ExtensionError::TooLarge(70_003)));
    }

    #[test]
    fn device_cookie_debug_hides_the_bytes() {
        assert_eq!(
            format!("{:?}", DeviceCookie([0xab; 16])),
            "DeviceCookie(..)"
        );
    }

    fn arb_extensions() -> impl Strategy<Value = Extensions> {
        (
            proptest::option::of(".{0,40}"),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<[u8; 16]>()),
        )
            .prop_map(
                |(client_info, csp_device_id, features, cookie)| Extensions {
                    client_info,
                    csp_device_id,
                    features: features.map(CspFeatures),
                    device_cookie: cookie.map(DeviceCookie),
                },
            )
    }

    proptest! {
        #[test]
        fn extensions_round_trip(ext in arb_extensions()) {
            let bytes = ext.encode().unwrap();
            prop_assert_eq!(Extensions::decode(&bytes).unwrap(), ext);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Extensions::decode(&data);
        }
    }
}
