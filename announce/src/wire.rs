//! A bounds-checked reader for the byte-by-byte formats of this crate.
//!
//! Every decoder goes through it so that truncation, trailing bytes and
//! oversized lengths are refused the same way, before any allocation sized
//! by an attacker.

use crate::err::Error;

pub(crate) struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Reader { what, buf, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.malformed("length overflows"))?;
        if end > self.buf.len() {
            return Err(Error::Truncated {
                what: self.what,
                needed: end,
                got: self.buf.len(),
            });
        }
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A finite f64.
    pub(crate) fn f64(&mut self, field: &str) -> Result<f64, Error> {
        let v = f64::from_le_bytes(self.array()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(self.malformed(format!("{field} is not a finite number")))
        }
    }

    /// Bytes still unread; a caller checks them against a length before
    /// allocating.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn expect(&mut self, magic: &[u8], version: u8) -> Result<(), Error> {
        let got = self.take(magic.len())?;
        if got != magic {
            return Err(self.malformed("wrong magic"));
        }
        let v = self.u8()?;
        if v != version {
            return Err(self.malformed(format!("unsupported version {v} (expected {version})")));
        }
        Ok(())
    }

    pub(crate) fn malformed(&self, reason: impl Into<String>) -> Error {
        Error::Malformed {
            what: self.what,
            reason: reason.into(),
        }
    }

    pub(crate) fn finish(self) -> Result<(), Error> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(Error::TrailingBytes {
                what: self.what,
                extra,
            }),
        }
    }
}

/// Bit `i` of a little-endian bitmap.
pub(crate) fn get_bit(bits: &[u8], i: usize) -> bool {
    bits[i / 8] & (1 << (i % 8)) != 0
}

/// Set bit `i` of a little-endian bitmap.
pub(crate) fn set_bit(bits: &mut [u8], i: usize) {
    bits[i / 8] |= 1 << (i % 8);
}
