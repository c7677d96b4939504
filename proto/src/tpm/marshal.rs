//! Big-endian TPM marshalling helpers: a bounds-checked reader and a writer.
//!
//! Every read checks the remaining length first, so a parser built on [`Reader`] returns
//! [`TpmWireError::Truncated`] on short input instead of panicking.

use super::TpmWireError;

/// Cursor over received bytes. Never panics: every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the first byte of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TpmWireError> {
        let available = self.remaining();
        let end = self.pos.checked_add(n).filter(|_| n <= available);
        match end.and_then(|end| self.bytes.get(self.pos..end)) {
            Some(slice) => {
                self.pos += n;
                Ok(slice)
            }
            None => Err(TpmWireError::Truncated {
                what,
                needed: n,
                available,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], TpmWireError> {
        let available = self.remaining();
        self.take(N, what)?
            .try_into()
            .map_err(|_| TpmWireError::Truncated {
                what,
                needed: N,
                available,
            })
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, TpmWireError> {
        self.array(what).map(u16::from_be_bytes)
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, TpmWireError> {
        self.array(what).map(u32::from_be_bytes)
    }

    /// Reads a TPM2B: a `u16` size followed by that many bytes; returns the bytes.
    pub fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], TpmWireError> {
        let size = self.u16(what)?;
        self.take(usize::from(size), what)
    }

    /// Like [`Reader::tpm2b`] but rejects contents longer than `max`.
    pub fn tpm2b_max(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], TpmWireError> {
        let data = self.tpm2b(what)?;
        if data.len() > max {
            return Err(TpmWireError::FieldTooLarge {
                what,
                len: data.len(),
                max,
            });
        }
        Ok(data)
    }

    /// Fails if any byte is left unread.
    pub fn finish(&self, what: &'static str) -> Result<(), TpmWireError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(TpmWireError::TrailingBytes { what, count }),
        }
    }
}

/// Appends a big-endian `u16`.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a TPM2B (`u16` size ‖ bytes); fails when `data` is longer than 65535 bytes.
pub fn put_tpm2b(out: &mut Vec<u8>, data: &[u8], what: &'static str) -> Result<(), TpmWireError> {
    let len = u16::try_from(data.len()).map_err(|_| TpmWireError::FieldTooLarge {
        what,
        len: data.len(),
        max: usize::from(u16::MAX),
    })?;
    put_u16(out, len);
    out.extend_from_slice(data);
    Ok(())
}

/// Returns `data` as a TPM2B (`u16` size ‖ bytes).
pub fn tpm2b(data: &[u8], what: &'static str) -> Result<Vec<u8>, TpmWireError> {
    let mut out = Vec::with_capacity(data.len() + 2);
    put_tpm2b(&mut out, data, what)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let mut r = Reader::new(&[0x00, 0x03, 0xaa, 0xbb]);
        assert!(matches!(
            r.tpm2b("x"),
            Err(TpmWireError::Truncated {
                needed: 3,
                available: 2,
                ..
            })
        ));
        let mut r = Reader::new(&[0x00, 0x02, 0xaa, 0xbb, 0xcc]);
        assert_eq!(r.tpm2b("x").unwrap(), &[0xaa, 0xbb]);
        assert!(matches!(
            r.finish("x"),
            Err(TpmWireError::TrailingBytes { count: 1, .. })
        ));
        let mut r = Reader::new(&[]);
        assert!(r.u32("x").is_err());
        assert!(r.take(usize::MAX, "x").is_err());
    }

    #[test]
    fn writer_round_trips() {
        let mut out = Vec::new();
        put_u16(&mut out, 0x0102);
        put_u32(&mut out, 0x0304_0506);
        put_tpm2b(&mut out, b"ab", "x").unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 0, 2, b'a', b'b']);
        assert!(tpm2b(&vec![0; 70_000], "x").is_err());
    }
}
