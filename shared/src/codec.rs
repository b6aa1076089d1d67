//! A bounds-checked little-endian reader for the fixed layouts (structbuf, CSP structs).
//!
//! Every read returns [`Truncated`] instead of panicking, so decoders built on it are total.

/// The input ended before a field it must contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated: needed {needed} more bytes at offset {offset}")]
pub struct Truncated {
    /// Offset of the field that did not fit.
    pub offset: usize,
    /// Bytes the field needed beyond the end of input.
    pub needed: usize,
}

/// A cursor over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `data`.
    #[must_use]
    pub const fn new(data: &'a [u8]) -> Self {
        Self { data, offset: 0 }
    }

    /// Bytes consumed so far.
    #[must_use]
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// Bytes left.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.offset)
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let rest = self.data.get(self.offset..).unwrap_or_default();
        let out = rest.get(..n).ok_or_else(|| Truncated {
            offset: self.offset,
            needed: n.saturating_sub(rest.len()),
        })?;
        self.offset += n;
        Ok(out)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let bytes = self.take(N)?;
        let mut out = [0_u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.data.get(self.offset..).unwrap_or_default();
        self.offset = self.data.len();
        out
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16_le(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    /// Reads a little-endian `u32`.
    pub fn u32_le(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    /// Reads a little-endian `u64`.
    pub fn u64_le(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_reports_truncation() {
        let mut r = Reader::new(&[1, 2, 0, 3, 0, 0, 0]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16_le(), Ok(2));
        assert_eq!(r.u32_le(), Ok(3));
        assert_eq!(r.u8(), Err(Truncated { offset: 7, needed: 1 }));
        assert_eq!(r.remaining(), 0);
        let mut r = Reader::new(&[1, 2]);
        assert_eq!(r.u64_le(), Err(Truncated { offset: 0, needed: 6 }));
        assert_eq!(r.rest(), &[1, 2]);
    }
}
