//! How a check reads structure out of raw fuzz bytes: a cursor that never fails (missing bytes
//! read as zero or empty), chunk sizes for stream inputs, and the fixed keys and seeded RNG that
//! make every run reproducible.

use rand::rngs::StdRng;
use rand::SeedableRng;
use tandem_shared::crypto::SecretKey;
use tandem_shared::keys::{ClientKey, DeviceGroupKey, DeviceGroupKeys};

/// A cursor over fuzz input: every read succeeds, short input reads as zeros or empty.
#[derive(Debug, Clone)]
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) const fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte, or 0 at the end.
    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next little-endian u16 (missing bytes read as 0).
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self
            .data
            .split_at_checked(n)
            .unwrap_or((self.data, &[][..]));
        self.data = tail;
        head
    }

    /// Exactly `N` bytes, zero-filled past the end.
    pub(crate) fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0_u8; N];
        for (dst, src) in out.iter_mut().zip(self.take(N)) {
            *dst = *src;
        }
        out
    }

    /// Everything left.
    pub(crate) const fn rest(&self) -> &'a [u8] {
        self.data
    }
}

/// How a stream is cut into `receive` calls: up to seven sizes read from the input, cycled; a
/// size byte of 0 means "all that is left", and no sizes means one call.
#[derive(Debug, Clone)]
pub(crate) struct Chunking {
    sizes: Vec<u8>,
}

impl Chunking {
    /// Reads a count byte and that many (mod 8) size bytes.
    pub(crate) fn read(input: &mut Input<'_>) -> Self {
        let count = usize::from(input.byte() % 8);
        Self {
            sizes: input.take(count).to_vec(),
        }
    }

    /// The stream in one piece.
    pub(crate) const fn whole() -> Self {
        Self { sizes: Vec::new() }
    }

    /// Whether every chunk is "all that is left", i.e. the stream goes in one piece.
    pub(crate) fn is_whole(&self) -> bool {
        self.sizes.iter().all(|&size| size == 0)
    }

    /// Cuts `stream` into chunks; their concatenation is `stream`.
    pub(crate) fn split<'s>(&self, stream: &'s [u8]) -> Vec<&'s [u8]> {
        let mut out = Vec::new();
        let mut rest = stream;
        let mut sizes = self.sizes.iter().cycle();
        while !rest.is_empty() {
            let n = match sizes.next() {
                Some(&0) | None => rest.len(),
                Some(&n) => usize::from(n),
            };
            let (chunk, tail) = rest.split_at_checked(n).unwrap_or((rest, &[][..]));
            out.push(chunk);
            rest = tail;
        }
        out
    }
}

/// The RNG of every check: seeded, so a regression input replays exactly.
pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// The device group keys every d2d blob is sealed and opened under.
pub(crate) fn group_keys() -> DeviceGroupKeys {
    DeviceGroupKey::from_bytes([0x42; 32]).derive_keys()
}

/// The client's permanent key `CK` in the CSP checks.
pub(crate) fn client_key() -> ClientKey {
    ClientKey::new(SecretKey::from_bytes([0x01; 32]))
}

/// The chat server's permanent key `SK` in the CSP checks.
pub(crate) fn server_key() -> SecretKey {
    SecretKey::from_bytes([0x02; 32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_reads_as_zeros() {
        let mut input = Input::new(&[7]);
        assert_eq!(input.u16(), 7);
        assert_eq!(input.array::<3>(), [0; 3]);
        assert!(input.take(5).is_empty());
    }

    #[test]
    fn chunking_cycles_sizes_and_zero_takes_the_rest() {
        let stream = [1, 2, 3, 4, 5, 6, 7];
        let mut input = Input::new(&[2, 2, 3]);
        let chunks = Chunking::read(&mut input);
        assert_eq!(
            chunks.split(&stream),
            vec![&[1, 2][..], &[3, 4, 5], &[6, 7]]
        );
        let mut input = Input::new(&[2, 1, 0]);
        assert_eq!(
            Chunking::read(&mut input).split(&stream),
            vec![&[1][..], &[2, 3, 4, 5, 6, 7]]
        );
        assert_eq!(Chunking::whole().split(&stream), vec![&stream[..]]);
        assert!(Chunking::whole().is_whole());
        assert!(Chunking::read(&mut Input::new(&[2, 0, 0])).is_whole());
        assert!(!Chunking::read(&mut Input::new(&[2, 0, 1])).is_whole());
        assert!(Chunking::whole().split(&[]).is_empty());
    }
}
