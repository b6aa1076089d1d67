//! Post-handshake frames (spec §9.4): `u16-le box length ‖ box`, and the per-direction cipher
//! state that numbers every box with `cookie ‖ u64-le(sequence number)`.
//!
//! Both directions share one key, `X25519HSalsa20(TCK, TSK)`, and are kept apart by their
//! cookies (CCK client→server, SCK server→client) and by separate counters. A counter starts at
//! 1 and is never wrapped: running out is an error. The handshake boxes (login, extensions box,
//! login-ack) draw from the same counters, so the first frame in each direction uses 3.

use core::fmt;

use crate::crypto::{BoxKey, Nonce, NONCE_LEN, TAG_LEN};

use super::handshake::{Cookie, CspError, COOKIE_LEN};

/// Length of the frame header (the u16-le box length).
pub const FRAME_HEADER_LEN: usize = 2;
/// Largest box a frame may carry (DESIGN §4, spec §9.4 "Frame 8192").
pub const MAX_FRAME_BOX_LEN: usize = 8192;
/// Largest plaintext of a frame box: the payload container limit of spec §9.4.
pub const MAX_FRAME_PLAINTEXT_LEN: usize = MAX_FRAME_BOX_LEN - TAG_LEN;
/// Largest whole frame on the wire.
pub const MAX_FRAME_LEN: usize = FRAME_HEADER_LEN + MAX_FRAME_BOX_LEN;

/// How many sequence numbers either side of the expected one a failed frame is tried under, to
/// tell a replay or a reordering from tampering.
pub const DIAGNOSIS_WINDOW: u64 = 16;

/// The CSP transport nonce `cookie ‖ u64-le(seq)` (spec §0).
#[must_use]
pub fn nonce(cookie: &Cookie, seq: u64) -> Nonce {
    let mut out = [0_u8; NONCE_LEN];
    let (head, tail) = out.split_at_mut(COOKIE_LEN);
    head.copy_from_slice(&cookie.0);
    tail.copy_from_slice(&seq.to_le_bytes());
    out
}

/// Reads a frame header and checks the box length it announces (≥ one tag, ≤ 8192).
pub fn frame_box_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, CspError> {
    let len = usize::from(u16::from_le_bytes(header));
    if len > MAX_FRAME_BOX_LEN {
        return Err(CspError::FrameTooLarge(len));
    }
    if len < TAG_LEN {
        return Err(CspError::FrameTooShort(len));
    }
    Ok(len)
}

/// Prefixes a box with its u16-le length.
pub fn encode_frame(boxed: &[u8]) -> Result<Vec<u8>, CspError> {
    let len = u16::try_from(boxed.len())
        .ok()
        .filter(|&len| usize::from(len) <= MAX_FRAME_BOX_LEN)
        .ok_or(CspError::FrameTooLarge(boxed.len()))?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + boxed.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(boxed);
    Ok(out)
}

/// One direction's box key, cookie and next sequence number. Not `Clone`: a copy would reuse nonces.
pub struct CipherState {
    key: BoxKey,
    cookie: Cookie,
    next_seq: u64,
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState")
            .field("cookie", &self.cookie)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl CipherState {
    /// A fresh direction whose first box uses sequence number 1 (spec §9.1 "first value used is 1").
    #[must_use]
    pub const fn new(key: BoxKey, cookie: Cookie) -> Self {
        Self::starting_at(key, cookie, 1)
    }

    /// A direction whose next box uses `next_seq` (the server's own direction starts at 2: its
    /// server-hello used 1 under another key).
    #[must_use]
    pub const fn starting_at(key: BoxKey, cookie: Cookie, next_seq: u64) -> Self {
        Self {
            key,
            cookie,
            next_seq,
        }
    }

    /// The sequence number the next box will use.
    #[must_use]
    pub const fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Takes the next sequence number; `u64::MAX` is never used so the counter cannot wrap.
    fn advance(&mut self) -> Result<u64, CspError> {
        let seq = self.next_seq;
        self.next_seq = seq.checked_add(1).ok_or(CspError::SequenceExhausted)?;
        Ok(seq)
    }

    /// Seals `plaintext` under the next sequence number.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, CspError> {
        let seq = self.advance()?;
        Ok(self.key.seal(&nonce(&self.cookie, seq), plaintext))
    }

    /// Seals a payload container (at most 8176 bytes) into a whole frame, header included.
    pub fn seal_frame(&mut self, payload_container: &[u8]) -> Result<Vec<u8>, CspError> {
        if payload_container.len() > MAX_FRAME_PLAINTEXT_LEN {
            return Err(CspError::FrameTooLarge(
                payload_container.len().saturating_add(TAG_LEN),
            ));
        }
        encode_frame(&self.seal(payload_container)?)
    }

    /// Opens a handshake box under the next sequence number; `None` when it does not decrypt (the
    /// caller names the error after the handshake struct).
    pub(crate) fn open_handshake(&mut self, boxed: &[u8]) -> Result<Option<Vec<u8>>, CspError> {
        let seq = self.advance()?;
        Ok(self.key.open(&nonce(&self.cookie, seq), boxed).ok())
    }

    /// Opens a frame box under the next sequence number. One that does not decrypt is tried under
    /// the last and next [`DIAGNOSIS_WINDOW`] numbers to report a replay or a reordering.
    pub fn open_frame(&mut self, boxed: &[u8]) -> Result<Vec<u8>, CspError> {
        let seq = self.next_seq;
        if let Ok(plain) = self.key.open(&nonce(&self.cookie, seq), boxed) {
            self.advance()?;
            return Ok(plain);
        }
        let opens = |candidate: u64| {
            self.key
                .open(&nonce(&self.cookie, candidate), boxed)
                .is_ok()
        };
        let mut past = (1..=DIAGNOSIS_WINDOW)
            .filter_map(|d| seq.checked_sub(d))
            .filter(|&s| s >= 1);
        if past.any(opens) {
            return Err(CspError::ReplayedFrame);
        }
        let mut future = (1..=DIAGNOSIS_WINDOW).filter_map(|d| seq.checked_add(d));
        if future.any(opens) {
            return Err(CspError::ReorderedFrame);
        }
        Err(CspError::FrameDecrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (CipherState, CipherState) {
        let key = BoxKey::from_bytes([7; 32]);
        let cookie = Cookie([3; 16]);
        (
            CipherState::new(key.clone(), cookie),
            CipherState::new(key, cookie),
        )
    }

    #[test]
    fn nonce_is_cookie_then_little_endian_sequence() {
        let n = nonce(&Cookie([0xaa; 16]), 0x0102_0304_0506_0708);
        assert_eq!(
            hex::encode(n),
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0807060504030201"
        );
    }

    #[test]
    fn frames_round_trip_in_order() {
        let (mut tx, mut rx) = pair();
        for i in 0..20_u8 {
            let boxed = tx.seal(&[i; 5]).unwrap();
            assert_eq!(rx.open_frame(&boxed).unwrap(), vec![i; 5]);
        }
        assert_eq!(tx.next_seq(), 21);
        assert_eq!(rx.next_seq(), 21);
    }

    #[test]
    fn replayed_box_is_reported_as_replay() {
        let (mut tx, mut rx) = pair();
        let first = tx.seal(b"one").unwrap();
        rx.open_frame(&first).unwrap();
        assert_eq!(rx.open_frame(&first), Err(CspError::ReplayedFrame));
    }

    #[test]
    fn skipped_box_is_reported_as_reordering() {
        let (mut tx, mut rx) = pair();
        let _first = tx.seal(b"one").unwrap();
        let second = tx.seal(b"two").unwrap();
        assert_eq!(rx.open_frame(&second), Err(CspError::ReorderedFrame));
    }

    #[test]
    fn box_far_outside_the_window_is_a_decrypt_failure() {
        let (mut tx, mut rx) = pair();
        for _ in 0..=DIAGNOSIS_WINDOW {
            tx.seal(b"x").unwrap();
        }
        let far = tx.seal(b"far").unwrap();
        assert_eq!(rx.open_frame(&far), Err(CspError::FrameDecrypt));
    }

    #[test]
    fn tampered_or_foreign_box_is_a_decrypt_failure() {
        let (mut tx, mut rx) = pair();
        let mut boxed = tx.seal(b"hello").unwrap();
        boxed[0] ^= 1;
        assert_eq!(rx.open_frame(&boxed), Err(CspError::FrameDecrypt));
        let mut other = CipherState::new(BoxKey::from_bytes([8; 32]), Cookie([3; 16]));
        let foreign = other.seal(b"hello").unwrap();
        assert_eq!(rx.open_frame(&foreign), Err(CspError::FrameDecrypt));
        // The other direction's cookie: same key, same number, still refused.
        let mut reverse = CipherState::new(BoxKey::from_bytes([7; 32]), Cookie([4; 16]));
        assert_eq!(
            rx.open_frame(&reverse.seal(b"hello").unwrap()),
            Err(CspError::FrameDecrypt)
        );
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let key = BoxKey::from_bytes([7; 32]);
        let mut tx = CipherState::starting_at(key.clone(), Cookie([1; 16]), u64::MAX - 1);
        assert!(tx.seal(b"last").is_ok());
        assert_eq!(tx.seal(b"wrap"), Err(CspError::SequenceExhausted));
        let mut rx = CipherState::starting_at(key, Cookie([1; 16]), u64::MAX);
        assert_eq!(
            rx.open_frame(b"0123456789abcdef"),
            Err(CspError::FrameDecrypt)
        );
        assert_eq!(
            rx.open_handshake(b"0123456789abcdef"),
            Err(CspError::SequenceExhausted)
        );
    }

    #[test]
    fn frame_header_limits() {
        assert_eq!(frame_box_len(8192_u16.to_le_bytes()), Ok(8192));
        assert_eq!(frame_box_len(16_u16.to_le_bytes()), Ok(16));
        assert_eq!(
            frame_box_len(8193_u16.to_le_bytes()),
            Err(CspError::FrameTooLarge(8193))
        );
        assert_eq!(
            frame_box_len([0xff, 0xff]),
            Err(CspError::FrameTooLarge(65535))
        );
        assert_eq!(
            frame_box_len(15_u16.to_le_bytes()),
            Err(CspError::FrameTooShort(15))
        );
        assert_eq!(encode_frame(&[9; 3]).unwrap(), vec![3, 0, 9, 9, 9]);
        assert_eq!(encode_frame(&[0; 8193]), Err(CspError::FrameTooLarge(8193)));
        assert_eq!(
            encode_frame(&[0; 70000]),
            Err(CspError::FrameTooLarge(70000))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_boxes_never_open_or_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (_, mut rx) = pair();
            prop_assert!(rx.open_frame(&data).is_err());
        }

        #[test]
        fn any_payload_round_trips(data in proptest::collection::vec(any::<u8>(), 0..MAX_FRAME_PLAINTEXT_LEN)) {
            let (mut tx, mut rx) = pair();
            let frame = encode_frame(&tx.seal(&data).unwrap()).unwrap();
            let len = frame_box_len([frame[0], frame[1]]).unwrap();
            prop_assert_eq!(len, frame.len() - 2);
            prop_assert_eq!(rx.open_frame(&frame[2..]).unwrap(), data);
        }
    }
}
