//! Cutting a CSP byte stream into units (spec §9.1): the handshake structs have fixed sizes and
//! frames carry their length, so a stream can be split without keys.
//!
//! The mediator needs this for server→client only: the chat server writes a TCP stream, and each
//! unit must travel in its own proxy container (DESIGN §3). For client→server nothing is split:
//! the device already sends whole units (one per `poll_transmit`), and the mediator writes them to
//! TCP as they come; a splitter could not cut that direction anyway, because the login's length
//! is inside its encrypted login-data.

use std::collections::VecDeque;

use super::frame::{frame_box_len, FRAME_HEADER_LEN};
use super::handshake::{CspError, LOGIN_ACK_LEN, SERVER_HELLO_LEN};

/// The shape of the next unit on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A handshake struct of this many bytes.
    Fixed(usize),
    /// A length-prefixed frame (box at most 8192 bytes).
    Frame,
}

/// Collects bytes until one unit is whole. Holds at most one unit, so the buffer is bounded by the
/// largest unit the caller asks for.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    buf: Vec<u8>,
}

impl Assembler {
    /// Moves bytes from `input` until a unit of shape `expect` is whole and returns it (frames
    /// with their header). `Ok(None)`: `input` ran out first. An oversize frame length is an
    /// error as soon as its two header bytes are in.
    pub(crate) fn pull(
        &mut self,
        input: &mut &[u8],
        expect: Expect,
    ) -> Result<Option<Vec<u8>>, CspError> {
        let target = match expect {
            Expect::Fixed(len) => len,
            Expect::Frame => {
                self.fill(input, FRAME_HEADER_LEN);
                match self.buf.first_chunk::<FRAME_HEADER_LEN>() {
                    Some(&header) => FRAME_HEADER_LEN.saturating_add(frame_box_len(header)?),
                    None => return Ok(None),
                }
            }
        };
        self.fill(input, target);
        if self.buf.len() >= target {
            Ok(Some(core::mem::take(&mut self.buf)))
        } else {
            Ok(None)
        }
    }

    /// Whether no partial unit is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn fill(&mut self, input: &mut &[u8], target: usize) {
        let want = target.saturating_sub(self.buf.len()).min(input.len());
        let (head, tail) = input.split_at_checked(want).unwrap_or((input, &[]));
        self.buf.extend_from_slice(head);
        *input = tail;
    }
}

/// Which server→client unit comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SplitState {
    ServerHello,
    LoginAck,
    Frames,
    Failed,
}

/// Splits the chat server's byte stream into server-hello (80), login-ack (32), then frames, one
/// unit per proxy container (DESIGN §3 "CSP proxy").
#[derive(Debug)]
pub struct ServerUnitSplitter {
    state: SplitState,
    assembler: Assembler,
    units: VecDeque<Vec<u8>>,
}

impl Default for ServerUnitSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerUnitSplitter {
    /// A splitter at the start of a connection.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: SplitState::ServerHello,
            assembler: Assembler::default(),
            units: VecDeque::new(),
        }
    }

    /// Feeds bytes read from the chat server. After an error (an oversize or undersize frame
    /// length) the splitter takes nothing more.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), CspError> {
        loop {
            let expect = match self.state {
                SplitState::ServerHello => Expect::Fixed(SERVER_HELLO_LEN),
                SplitState::LoginAck => Expect::Fixed(LOGIN_ACK_LEN),
                SplitState::Frames => Expect::Frame,
                SplitState::Failed => return Err(CspError::AfterFailure),
            };
            match self.assembler.pull(&mut bytes, expect) {
                Ok(Some(unit)) => {
                    self.units.push_back(unit);
                    self.state = match self.state {
                        SplitState::ServerHello => SplitState::LoginAck,
                        SplitState::LoginAck => SplitState::Frames,
                        other => other,
                    };
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.state = SplitState::Failed;
                    return Err(e);
                }
            }
        }
    }

    /// The next whole unit, in order.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        self.units.pop_front()
    }

    /// Whether a partial unit is waiting for more bytes (a stream that ends now was cut short).
    #[must_use]
    pub fn has_partial_unit(&self) -> bool {
        !self.assembler.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream() -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut units = vec![vec![1; 80], vec![2; 32]];
        for len in [16_u16, 17, 100, 8192] {
            let mut frame = len.to_le_bytes().to_vec();
            frame.extend(std::iter::repeat_n(len as u8, usize::from(len)));
            units.push(frame);
        }
        (units.concat(), units)
    }

    fn drain(s: &mut ServerUnitSplitter) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| s.pop()).collect()
    }

    #[test]
    fn splits_a_whole_stream() {
        let (bytes, units) = stream();
        let mut s = ServerUnitSplitter::new();
        s.feed(&bytes).unwrap();
        assert_eq!(drain(&mut s), units);
        assert!(!s.has_partial_unit());
    }

    #[test]
    fn splits_byte_by_byte() {
        let (bytes, units) = stream();
        let mut s = ServerUnitSplitter::new();
        let mut out = Vec::new();
        for b in &bytes {
            s.feed(std::slice::from_ref(b)).unwrap();
            out.extend(drain(&mut s));
        }
        assert_eq!(out, units);
    }

    #[test]
    fn partial_unit_is_reported() {
        let mut s = ServerUnitSplitter::new();
        s.feed(&[0; 79]).unwrap();
        assert!(s.pop().is_none());
        assert!(s.has_partial_unit());
        s.feed(&[0; 1]).unwrap();
        assert_eq!(s.pop().unwrap().len(), 80);
    }

    #[test]
    fn oversize_frame_fails_on_its_header() {
        let mut s = ServerUnitSplitter::new();
        s.feed(&[0; 112]).unwrap();
        s.feed(&[0x01]).unwrap();
        assert_eq!(s.feed(&[0x20]), Err(CspError::FrameTooLarge(8193)));
        assert_eq!(s.feed(&[0]), Err(CspError::AfterFailure));
        assert_eq!(drain(&mut s).len(), 2);
    }

    #[test]
    fn undersize_frame_fails() {
        let mut s = ServerUnitSplitter::new();
        assert_eq!(
            s.feed(&[[0; 112].as_slice(), &[15, 0]].concat()),
            Err(CspError::FrameTooShort(15))
        );
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_units(cuts in proptest::collection::vec(0_usize..9000, 0..12)) {
            let (bytes, units) = stream();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut s = ServerUnitSplitter::new();
            let mut out = Vec::new();
            for pair in cuts.windows(2) {
                s.feed(&bytes[pair[0]..pair[1]]).unwrap();
                out.extend(drain(&mut s));
            }
            prop_assert_eq!(out, units);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut s = ServerUnitSplitter::new();
            let _ = s.feed(&data);
            while let Some(unit) = s.pop() {
                prop_assert!(unit.len() <= 8194);
            }
        }
    }
}
