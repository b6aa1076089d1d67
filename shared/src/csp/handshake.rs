//! The CSP handshake structs (spec §9.2) and the vouch (spec §1.3, §9.2), plus [`CspError`], the
//! one error type of the handshake machines and frames.
//!
//! ```text
//! client                                             server
//!   client-hello   TCK.public ‖ CCK            ──►
//!                                              ◄──   server-hello   SCK ‖ box(SK·TCK, SCK‖1)[TSK.public ‖ CCK]
//!   login          box(TCK·TSK, CCK‖1)[login-data] ‖ box(TCK·TSK, CCK‖2)[extensions]  ──►
//!                                              ◄──   login-ack      box(TCK·TSK, SCK‖2)[16 × 0]
//!   frames         CCK‖3, CCK‖4, …             ◄─►   frames         SCK‖3, SCK‖4, …
//! ```

use core::fmt;

use crate::codec::Reader;
use crate::crypto::{blake2b_256, Blake2bParams, BoxKey, PublicKey, SymmetricKey, TAG_LEN};
use crate::keys::IDENTITY_LEN;

use super::extension::ExtensionError;
use super::frame::{nonce, MAX_FRAME_BOX_LEN};

/// Length of a connection cookie (CCK, SCK).
pub const COOKIE_LEN: usize = 16;
/// Length of client-hello.
pub const CLIENT_HELLO_LEN: usize = 48;
/// Length of server-hello.
pub const SERVER_HELLO_LEN: usize = 80;
/// Length of the server-challenge-response inside server-hello.
pub const SERVER_CHALLENGE_RESPONSE_LEN: usize = 48;
/// Length of the encrypted login-data at the start of login.
pub const LOGIN_BOX_LEN: usize = LOGIN_DATA_LEN + TAG_LEN;
/// Length of the login-data plaintext.
pub const LOGIN_DATA_LEN: usize = 128;
/// Length of login-ack.
pub const LOGIN_ACK_LEN: usize = 32;
/// Largest extensions box we accept (the frame bound: a login is no bigger than 144 + 8192).
pub const MAX_EXTENSIONS_BOX_LEN: usize = MAX_FRAME_BOX_LEN;
/// Magic at the start of the extension indicator (spec §9.2).
pub const EXTENSION_MAGIC: &[u8; 30] = b"threema-clever-extension-field";
/// Length of the login-ack plaintext (both layouts, see [`LoginAck`]).
pub const LOGIN_ACK_PLAINTEXT_LEN: usize = 16;

/// Why a CSP connection cannot go on. Every variant is terminal for the machine that reports it;
/// `Display` is short and stable because the chat server turns it into a close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CspError {
    /// server-hello did not open with `SK.public`: wrong server key, or tampered.
    #[error("server-hello does not decrypt")]
    ServerHelloDecrypt,
    /// The CCK echoed inside server-hello is not the client's.
    #[error("client cookie mismatch")]
    ClientCookieMismatch,
    /// The SCK echoed inside login is not the server's.
    #[error("server cookie mismatch")]
    ServerCookieMismatch,
    /// CCK equals SCK, which would reuse nonces across directions.
    #[error("equal cookies")]
    EqualCookies,
    /// An ephemeral (or directory) public key is a low-order point.
    #[error("low-order public key")]
    LowOrderKey,
    /// The vouch does not match the identity's public key.
    #[error("bad vouch")]
    BadVouch,
    /// The directory does not know the identity.
    #[error("unknown identity")]
    UnknownIdentity,
    /// The identity is not 8 characters of `[0-9A-Z*]`.
    #[error("invalid identity")]
    InvalidIdentity,
    /// The login box did not open.
    #[error("login does not decrypt")]
    LoginDecrypt,
    /// The extensions box did not open.
    #[error("extensions do not decrypt")]
    ExtensionsDecrypt,
    /// The extension indicator announces a box shorter than a tag or longer than 8192.
    #[error("extensions box length {0} out of range")]
    ExtensionsBoxLength(usize),
    /// reserved1 of login-data is not zero: the pre-2023 vouch format, which we refuse.
    #[error("legacy vouch format")]
    LegacyVouchFormat,
    /// reserved2 of login-data is not zero.
    #[error("login reserved bytes not zero")]
    LoginReserved,
    /// The extensions (or the legacy client-info) are malformed.
    #[error("malformed extensions: {0}")]
    MalformedExtensions(ExtensionError),
    /// login-ack did not open.
    #[error("login-ack does not decrypt")]
    LoginAckDecrypt,
    /// login-ack opened but its plaintext is not 16 bytes.
    #[error("login-ack malformed")]
    LoginAckMalformed,
    /// A fixed-size unit was handed over with the wrong length.
    #[error("{unit} has {len} bytes, expected {expected}")]
    UnitLength {
        /// Which struct.
        unit: &'static str,
        /// Bytes handed over.
        len: usize,
        /// Bytes it has.
        expected: usize,
    },
    /// A frame header announces a box larger than 8192 bytes (or a payload too large to send).
    #[error("frame too large: {0} bytes")]
    FrameTooLarge(usize),
    /// A frame header announces a box shorter than a tag.
    #[error("frame too short: {0} bytes")]
    FrameTooShort(usize),
    /// A frame opened under an already used sequence number.
    #[error("replayed frame")]
    ReplayedFrame,
    /// A frame opened under a later sequence number: frames were lost or swapped.
    #[error("reordered frame")]
    ReorderedFrame,
    /// A frame did not open under any nearby sequence number (tampered or wrong key).
    #[error("frame does not decrypt")]
    FrameDecrypt,
    /// A direction's sequence number would wrap.
    #[error("sequence number exhausted")]
    SequenceExhausted,
    /// More bytes arrived while the server waited for the identity's key than one frame.
    #[error("too much data before login-ack")]
    EarlyData,
    /// The machine failed before; it takes no more input.
    #[error("connection already failed")]
    AfterFailure,
    /// `send` before the handshake completed.
    #[error("handshake not complete")]
    NotEstablished,
    /// `provide_identity_key` when no identity key was asked for.
    #[error("identity key not requested")]
    UnexpectedIdentityKey,
}

impl From<ExtensionError> for CspError {
    fn from(e: ExtensionError) -> Self {
        Self::MalformedExtensions(e)
    }
}

/// A 16-byte connection cookie. Not secret (it travels in the clear in the hellos), but the
/// echoes are still compared in constant time.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cookie(pub [u8; COOKIE_LEN]);

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cookie(")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

impl Cookie {
    /// A fresh random cookie.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut bytes = [0_u8; COOKIE_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Constant-time equality, for checking an echo.
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        crate::crypto::ct_eq(&self.0, &other.0)
    }
}

/// Checks the identity alphabet: 8 characters of `[0-9A-Z*]` (Threema-style IDs).
pub fn validate_identity(identity: &[u8; IDENTITY_LEN]) -> Result<(), CspError> {
    if crate::keys::is_valid_identity(identity) {
        Ok(())
    } else {
        Err(CspError::InvalidIdentity)
    }
}

fn exact<const N: usize>(unit: &'static str, bytes: &[u8]) -> Result<[u8; N], CspError> {
    <[u8; N]>::try_from(bytes).map_err(|_| CspError::UnitLength {
        unit,
        len: bytes.len(),
        expected: N,
    })
}

/// client-hello (C→S, 48): `TCK.public ‖ CCK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The client's ephemeral public key.
    pub tck_public: PublicKey,
    /// The client's cookie.
    pub cck: Cookie,
}

impl ClientHello {
    /// Writes the 48 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; CLIENT_HELLO_LEN] {
        let mut out = [0_u8; CLIENT_HELLO_LEN];
        let (key, cookie) = out.split_at_mut(32);
        key.copy_from_slice(self.tck_public.as_bytes());
        cookie.copy_from_slice(&self.cck.0);
        out
    }

    /// Reads exactly 48 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CspError> {
        let bytes: [u8; CLIENT_HELLO_LEN] = exact("client-hello", bytes)?;
        let (key, cookie) = bytes.split_at(32);
        let mut tck_public = [0_u8; 32];
        let mut cck = [0_u8; COOKIE_LEN];
        tck_public.copy_from_slice(key);
        cck.copy_from_slice(cookie);
        let (tck_public, cck) = (PublicKey(tck_public), Cookie(cck));
        Ok(Self { tck_public, cck })
    }
}

/// server-challenge-response (48 plain, inside server-hello): `TSK.public ‖ CCK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerChallengeResponse {
    /// The server's ephemeral public key.
    pub tsk_public: PublicKey,
    /// The client's cookie, repeated.
    pub cck: Cookie,
}

impl ServerChallengeResponse {
    /// Seals into server-hello with `key = X25519HSalsa20(SK, TCK.public)`, nonce `SCK ‖ 1`.
    #[must_use]
    pub fn seal(&self, key: &BoxKey, sck: Cookie) -> ServerHello {
        let plain = ClientHello {
            tck_public: self.tsk_public,
            cck: self.cck,
        }
        .encode();
        let sealed = key.seal(&nonce(&sck, 1), &plain);
        let mut boxed = [0_u8; SERVER_HELLO_LEN - COOKIE_LEN];
        // The seal of 48 bytes is always 64 bytes; a mismatch would leave zeros that never open.
        if let Some(dst) = boxed.get_mut(..sealed.len()) {
            dst.copy_from_slice(&sealed);
        }
        ServerHello { sck, boxed }
    }
}

/// server-hello (S→C, 80): `SCK ‖ box(64)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// The server's cookie.
    pub sck: Cookie,
    /// The sealed server-challenge-response.
    pub boxed: [u8; SERVER_HELLO_LEN - COOKIE_LEN],
}

impl ServerHello {
    /// Writes the 80 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; SERVER_HELLO_LEN] {
        let mut out = [0_u8; SERVER_HELLO_LEN];
        let (cookie, boxed) = out.split_at_mut(COOKIE_LEN);
        cookie.copy_from_slice(&self.sck.0);
        boxed.copy_from_slice(&self.boxed);
        out
    }

    /// Reads exactly 80 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CspError> {
        let bytes: [u8; SERVER_HELLO_LEN] = exact("server-hello", bytes)?;
        let (cookie, boxed) = bytes
            .split_first_chunk::<COOKIE_LEN>()
            .ok_or(CspError::ServerHelloDecrypt)?;
        Ok(Self {
            sck: Cookie(*cookie),
            boxed: exact("server-hello", boxed)?,
        })
    }

    /// Opens the box with `key = X25519HSalsa20(TCK, SK.public)`.
    pub fn open(&self, key: &BoxKey) -> Result<ServerChallengeResponse, CspError> {
        let plain = key
            .open(&nonce(&self.sck, 1), &self.boxed)
            .map_err(|_| CspError::ServerHelloDecrypt)?;
        let inner = ClientHello::decode(&plain).map_err(|_| CspError::ServerHelloDecrypt)?;
        Ok(ServerChallengeResponse {
            tsk_public: inner.tck_public,
            cck: inner.cck,
        })
    }
}

/// The 32-byte field after the identity in login-data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientInfoField {
    /// `threema-clever-extension-field ‖ u16-le` byte length of the extensions box.
    ExtensionIndicator {
        /// Length of the extensions box that follows the login box.
        extensions_box_len: u16,
    },
    /// A legacy client-info string, zero-padded to 32 bytes; no extensions box follows.
    Legacy([u8; 32]),
}

impl ClientInfoField {
    fn encode(&self) -> [u8; 32] {
        match self {
            Self::ExtensionIndicator { extensions_box_len } => {
                let mut out = [0_u8; 32];
                let (magic, len) = out.split_at_mut(EXTENSION_MAGIC.len());
                magic.copy_from_slice(EXTENSION_MAGIC);
                len.copy_from_slice(&extensions_box_len.to_le_bytes());
                out
            }
            Self::Legacy(raw) => *raw,
        }
    }

    fn decode(raw: [u8; 32]) -> Self {
        match raw.split_first_chunk::<30>() {
            Some((magic, &[lo, hi])) if magic == EXTENSION_MAGIC => Self::ExtensionIndicator {
                extensions_box_len: u16::from_le_bytes([lo, hi]),
            },
            _ => Self::Legacy(raw),
        }
    }

    /// The legacy client-info as text: trailing zero padding removed, UTF-8 required.
    pub fn legacy_client_info(raw: &[u8; 32]) -> Result<String, ExtensionError> {
        let end = raw
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i.saturating_add(1));
        let text = raw.get(..end).unwrap_or_default();
        core::str::from_utf8(text)
            .map(str::to_owned)
            .map_err(|_| ExtensionError::ClientInfoUtf8)
    }
}

/// login-data (128 plain, inside the login box).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LoginData {
    /// The identity logging in.
    pub identity: [u8; IDENTITY_LEN],
    /// Extension indicator or legacy client-info.
    pub client_info: ClientInfoField,
    /// The server's cookie, repeated.
    pub sck: Cookie,
    /// `BLAKE2b(key = VouchKey, SCK ‖ TCK.public)`.
    pub vouch: [u8; 32],
}

impl fmt::Debug for LoginData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginData")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("client_info", &self.client_info)
            .field("sck", &self.sck)
            .finish_non_exhaustive()
    }
}

impl LoginData {
    /// Writes the 128 bytes, reserved fields zero (the current vouch format).
    #[must_use]
    pub fn encode(&self) -> [u8; LOGIN_DATA_LEN] {
        let mut out = Vec::with_capacity(LOGIN_DATA_LEN);
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(&self.client_info.encode());
        out.extend_from_slice(&self.sck.0);
        out.extend_from_slice(&[0; 24]);
        out.extend_from_slice(&self.vouch);
        out.extend_from_slice(&[0; 16]);
        let mut fixed = [0_u8; LOGIN_DATA_LEN];
        if let Some(dst) = fixed.get_mut(..out.len()) {
            dst.copy_from_slice(&out);
        }
        fixed
    }

    /// Reads exactly 128 bytes; non-zero reserved1 is the legacy vouch format and refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, CspError> {
        let bytes: [u8; LOGIN_DATA_LEN] = exact("login-data", bytes)?;
        let short = |_| CspError::UnitLength {
            unit: "login-data",
            len: LOGIN_DATA_LEN,
            expected: LOGIN_DATA_LEN,
        };
        let mut r = Reader::new(&bytes);
        let identity = r.array().map_err(short)?;
        let client_info = ClientInfoField::decode(r.array().map_err(short)?);
        let sck = Cookie(r.array().map_err(short)?);
        let reserved1: [u8; 24] = r.array().map_err(short)?;
        let vouch = r.array().map_err(short)?;
        let reserved2: [u8; 16] = r.array().map_err(short)?;
        if reserved1 != [0; 24] {
            return Err(CspError::LegacyVouchFormat);
        }
        if reserved2 != [0; 16] {
            return Err(CspError::LoginReserved);
        }
        Ok(Self {
            identity,
            client_info,
            sck,
            vouch,
        })
    }
}

/// The login-ack plaintext (spec §9.2, §12). The Desktop snapshot sends 16 zero bytes; current
/// servers send `reserved (4) ‖ server time u64-le (ms) ‖ queued messages u32-le`. One reading
/// covers both: a zero time means "unknown" (no server is at the Unix epoch), so a client accepts
/// either layout. The reserved bytes are written as zeros and ignored on receipt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginAck {
    /// The server's clock in ms since the Unix epoch; 0 = not sent (old layout).
    pub server_time_ms: u64,
    /// Messages waiting in the identity's queue at login (0 in the old layout too).
    pub queued_messages: u32,
}

impl LoginAck {
    /// The 16 plaintext bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; LOGIN_ACK_PLAINTEXT_LEN] {
        let mut out = [0; LOGIN_ACK_PLAINTEXT_LEN];
        let fields = self
            .server_time_ms
            .to_le_bytes()
            .into_iter()
            .chain(self.queued_messages.to_le_bytes());
        for (slot, byte) in out.iter_mut().skip(4).zip(fields) {
            *slot = byte;
        }
        out
    }

    /// Reads either layout; anything but 16 bytes is [`CspError::LoginAckMalformed`].
    pub fn decode(plain: &[u8]) -> Result<Self, CspError> {
        if plain.len() != LOGIN_ACK_PLAINTEXT_LEN {
            return Err(CspError::LoginAckMalformed);
        }
        let mut r = Reader::new(plain);
        let mut parse = || -> Result<Self, crate::codec::Truncated> {
            r.take(4)?;
            Ok(Self {
                server_time_ms: r.u64_le()?,
                queued_messages: r.u32_le()?,
            })
        };
        parse().map_err(|_| CspError::LoginAckMalformed)
    }

    /// The server's time, if the server sent one.
    #[must_use]
    pub const fn server_time_ms(&self) -> Option<u64> {
        if self.server_time_ms == 0 {
            None
        } else {
            Some(self.server_time_ms)
        }
    }
}

/// `vouch = BLAKE2b-256(key = VouchKey, input = SCK ‖ TCK.public)` (spec §9.2), no salt or personal.
#[must_use]
pub fn vouch(vouch_key: &SymmetricKey, sck: &Cookie, tck_public: &PublicKey) -> [u8; 32] {
    let mut input = [0_u8; COOKIE_LEN + 32];
    let (cookie, key) = input.split_at_mut(COOKIE_LEN);
    cookie.copy_from_slice(&sck.0);
    key.copy_from_slice(tck_public.as_bytes());
    // A 32-byte key and empty salt/personal are always accepted.
    blake2b_256(
        vouch_key.as_bytes(),
        Blake2bParams {
            salt: "",
            personal: "",
        },
        &input,
    )
    .unwrap_or([0; 32])
}

/// Checks the extension indicator's box length against the bounds we accept.
pub fn check_extensions_box_len(len: u16) -> Result<usize, CspError> {
    let len = usize::from(len);
    if (TAG_LEN..=MAX_EXTENSIONS_BOX_LEN).contains(&len) {
        Ok(len)
    } else {
        Err(CspError::ExtensionsBoxLength(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conformance vectors written by hand from spec §9.2 (old layout) and §12 (current).
    #[test]
    fn login_ack_reads_both_layouts() {
        // Old layout: 16 zero bytes, no time, no count.
        let old = LoginAck::decode(&[0; 16]).unwrap();
        assert_eq!(old, LoginAck::default());
        assert_eq!(old.server_time_ms(), None);
        // Current layout: reserved ‖ 2026-12-07T15:00:00Z (1 796 655 600 000 ms) ‖ 3 queued.
        let bytes = hex::decode("00000000 80d10451 a2010000 03000000".replace(' ', "")).unwrap();
        let ack = LoginAck::decode(&bytes).unwrap();
        assert_eq!(
            ack,
            LoginAck {
                server_time_ms: 1_796_655_600_000,
                queued_messages: 3
            }
        );
        assert_eq!(ack.server_time_ms(), Some(1_796_655_600_000));
        assert_eq!(ack.encode().to_vec(), bytes);
        // Reserved bytes are ignored on receipt.
        let mut reserved = bytes.clone();
        reserved[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(LoginAck::decode(&reserved), Ok(ack));
        // Any other length is malformed.
        for len in [0, 15, 17, 32] {
            assert_eq!(
                LoginAck::decode(&vec![0; len]),
                Err(CspError::LoginAckMalformed)
            );
        }
    }
    use crate::crypto::SecretKey;
    use crate::keys::ClientKey;
    use proptest::prelude::*;

    fn h<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// Reference computed with PyNaCl and hashlib:
    /// ```python
    /// from nacl.public import PrivateKey, Box; import hashlib
    /// ck, sk, tsk, tck = (PrivateKey(bytes([b]*32)) for b in (1, 2, 3, 5))
    /// ss1 = Box(ck, sk.public_key).shared_key(); ss2 = Box(ck, tsk.public_key).shared_key()
    /// vk = hashlib.blake2b(b"", key=ss1+ss2, salt=b"v2", person=b"3ma-csp", digest_size=32).digest()
    /// hashlib.blake2b(bytes([4]*16) + bytes(tck.public_key), key=vk, digest_size=32).hexdigest()
    /// ```
    #[test]
    fn vouch_matches_independent_reference() {
        let ck = ClientKey::new(SecretKey::from_bytes([1; 32]));
        let sk = SecretKey::from_bytes([2; 32]);
        let tsk = SecretKey::from_bytes([3; 32]);
        let tck = SecretKey::from_bytes([5; 32]);
        let client_side = ClientKey::vouch_key(
            &ck.secret().box_key(&sk.public_key()),
            &ck.secret().box_key(&tsk.public_key()),
        );
        let server_side = ClientKey::vouch_key(
            &sk.box_key(&ck.public_key()),
            &tsk.box_key(&ck.public_key()),
        );
        let expected: [u8; 32] = h(VOUCH_REFERENCE);
        assert_eq!(
            vouch(&client_side, &Cookie([4; 16]), &tck.public_key()),
            expected
        );
        assert_eq!(
            vouch(&server_side, &Cookie([4; 16]), &tck.public_key()),
            expected
        );
    }

    const VOUCH_REFERENCE: &str =
        "c6c9a92819cd21f592e4dd20d09efcad229247d1ac851e4ee1c4501ebc955347";

    /// Reference computed with PyNaCl:
    /// ```python
    /// from nacl.public import PrivateKey, Box
    /// sk, tsk, tck = (PrivateKey(bytes([b]*32)) for b in (2, 3, 5))
    /// sck, cck = bytes([4]*16), bytes([6]*16)
    /// boxed = Box(sk, tck.public_key).encrypt(bytes(tsk.public_key) + cck, sck + (1).to_bytes(8, "little"))
    /// (sck + boxed.ciphertext).hex()
    /// ```
    #[test]
    fn server_hello_matches_independent_reference() {
        let sk = SecretKey::from_bytes([2; 32]);
        let tsk = SecretKey::from_bytes([3; 32]);
        let tck = SecretKey::from_bytes([5; 32]);
        let response = ServerChallengeResponse {
            tsk_public: tsk.public_key(),
            cck: Cookie([6; 16]),
        };
        let hello = response.seal(&sk.box_key(&tck.public_key()), Cookie([4; 16]));
        let expected: [u8; SERVER_HELLO_LEN] = h(SERVER_HELLO_REFERENCE);
        assert_eq!(hello.encode(), expected);
        let decoded = ServerHello::decode(&expected).unwrap();
        assert_eq!(
            decoded.open(&tck.box_key(&sk.public_key())).unwrap(),
            response
        );
        let wrong = SecretKey::from_bytes([9; 32]).public_key();
        assert_eq!(
            decoded.open(&tck.box_key(&wrong)),
            Err(CspError::ServerHelloDecrypt)
        );
    }

    const SERVER_HELLO_REFERENCE: &str = concat!(
        "04040404040404040404040404040404a6f6e8a6542221c2cf0d909e5897071511bc9ea37145975bafaae7",
        "60f8653c7961218f2f5a3beff1ae273b26fa3adaf1fd5c58da35f236eff20812d1451e974d"
    );

    #[test]
    fn login_data_layout_matches_spec_offsets() {
        let data = LoginData {
            identity: *b"ECHOECHO",
            client_info: ClientInfoField::ExtensionIndicator {
                extensions_box_len: 0x0123,
            },
            sck: Cookie([0x5c; 16]),
            vouch: [0x77; 32],
        };
        let bytes = data.encode();
        let expected = hex::decode(concat!(
            "4543484f4543484f",                                                 // 0: identity
            "74687265656d612d636c657665722d657874656e73696f6e2d6669656c64",     // 8: magic (30)
            "2301",                                                             // 38: u16-le
            "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c",                                 // 40: SCK
            "000000000000000000000000000000000000000000000000",                 // 56: reserved1
            "7777777777777777777777777777777777777777777777777777777777777777", // 80: vouch
            "00000000000000000000000000000000",                                 // 112: reserved2
        ))
        .unwrap();
        assert_eq!(bytes.to_vec(), expected);
        assert_eq!(LoginData::decode(&bytes).unwrap(), data);
    }

    #[test]
    fn login_data_refuses_legacy_vouch_and_reserved_bytes() {
        let data = LoginData {
            identity: *b"ECHOECHO",
            client_info: ClientInfoField::ExtensionIndicator {
                extensions_box_len: 20,
            },
            sck: Cookie([1; 16]),
            vouch: [2; 32],
        };
        let mut bytes = data.encode();
        bytes[60] = 1;
        assert_eq!(LoginData::decode(&bytes), Err(CspError::LegacyVouchFormat));
        let mut bytes = data.encode();
        bytes[127] = 1;
        assert_eq!(LoginData::decode(&bytes), Err(CspError::LoginReserved));
        assert_eq!(
            LoginData::decode(&bytes[..127]),
            Err(CspError::UnitLength {
                unit: "login-data",
                len: 127,
                expected: 128
            })
        );
    }

    #[test]
    fn legacy_client_info_is_read_without_padding() {
        let mut raw = [0_u8; 32];
        raw[..11].copy_from_slice(b"1.0;Q;de/CH");
        assert_eq!(ClientInfoField::decode(raw), ClientInfoField::Legacy(raw));
        assert_eq!(
            ClientInfoField::legacy_client_info(&raw).unwrap(),
            "1.0;Q;de/CH"
        );
        assert_eq!(ClientInfoField::legacy_client_info(&[0; 32]).unwrap(), "");
        raw[0] = 0xff;
        assert_eq!(
            ClientInfoField::legacy_client_info(&raw),
            Err(ExtensionError::ClientInfoUtf8)
        );
        // A magic with one byte changed is legacy client-info, not an indicator.
        let mut near = ClientInfoField::ExtensionIndicator {
            extensions_box_len: 5,
        }
        .encode();
        near[0] = b'T';
        assert_eq!(ClientInfoField::decode(near), ClientInfoField::Legacy(near));
    }

    #[test]
    fn hellos_round_trip_and_check_length() {
        let hello = ClientHello {
            tck_public: PublicKey([1; 32]),
            cck: Cookie([2; 16]),
        };
        let bytes = hello.encode();
        assert_eq!(bytes[..32], [1; 32]);
        assert_eq!(bytes[32..], [2; 16]);
        assert_eq!(ClientHello::decode(&bytes).unwrap(), hello);
        assert_eq!(
            ClientHello::decode(&bytes[..47]),
            Err(CspError::UnitLength {
                unit: "client-hello",
                len: 47,
                expected: 48
            })
        );
        assert_eq!(
            ServerHello::decode(&[0; 81]),
            Err(CspError::UnitLength {
                unit: "server-hello",
                len: 81,
                expected: 80
            })
        );
    }

    #[test]
    fn identity_alphabet() {
        assert_eq!(validate_identity(b"ECHOECHO"), Ok(()));
        assert_eq!(validate_identity(b"*GATEWAY"), Ok(()));
        assert_eq!(validate_identity(b"01234567"), Ok(()));
        assert_eq!(
            validate_identity(b"echoecho"),
            Err(CspError::InvalidIdentity)
        );
        assert_eq!(
            validate_identity(b"ECHO ECH"),
            Err(CspError::InvalidIdentity)
        );
        assert_eq!(validate_identity(&[0; 8]), Err(CspError::InvalidIdentity));
    }

    #[test]
    fn extensions_box_length_bounds() {
        assert_eq!(check_extensions_box_len(16), Ok(16));
        assert_eq!(check_extensions_box_len(8192), Ok(8192));
        assert_eq!(
            check_extensions_box_len(15),
            Err(CspError::ExtensionsBoxLength(15))
        );
        assert_eq!(
            check_extensions_box_len(8193),
            Err(CspError::ExtensionsBoxLength(8193))
        );
    }

    proptest! {
        #[test]
        fn login_data_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = LoginData::decode(&data);
        }

        #[test]
        fn login_data_round_trips(identity: [u8; 8], len: u16, sck: [u8; 16], vouch_bytes: [u8; 32]) {
            let data = LoginData {
                identity,
                client_info: ClientInfoField::ExtensionIndicator { extensions_box_len: len },
                sck: Cookie(sck),
                vouch: vouch_bytes,
            };
            prop_assert_eq!(LoginData::decode(&data.encode()).unwrap(), data);
        }
    }
}
