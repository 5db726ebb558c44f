//! Plain CDR, little-endian, as rmw_zenoh puts it on the wire: a 4-byte encapsulation header
//! `00 01 00 00` (CDR_LE, no options), then the fields, each primitive aligned to its own
//! size counted from the byte after the header. Strings are a u32 length that counts a
//! closing NUL, the bytes and the NUL; sequences a u32 count and the elements.
//!
//! The writer fills a caller-owned buffer and never allocates (the publisher thread encodes
//! every tick); the reader borrows from the payload and checks every length against what is
//! left before it reads, so no input makes it panic or allocate by a length it was given.

/// The encapsulation header of little-endian plain CDR.
pub const CDR_LE_HEADER: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdrError {
    #[error("CDR: {len} bytes, shorter than the 4-byte encapsulation header")]
    NoHeader { len: usize },
    #[error("CDR: encapsulation {found:02x?} is not little-endian plain CDR (00 01)")]
    Encapsulation { found: [u8; 2] },
    #[error("CDR: {field} needs {needed} bytes at offset {at}, {left} left")]
    Truncated {
        field: &'static str,
        at: usize,
        needed: usize,
        left: usize,
    },
    #[error("CDR: {field}: string without its closing NUL")]
    NoNul { field: &'static str },
    #[error("CDR: {field}: string of length 0 (the length counts the closing NUL)")]
    ZeroLengthString { field: &'static str },
    #[error("CDR: {field}: not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("CDR: {field}: {value} is not a bool (0 or 1)")]
    NotBool { field: &'static str, value: u8 },
    #[error("CDR: {left} bytes after the message")]
    Trailing { left: usize },
    #[error("CDR: the message needs more than the {capacity}-byte buffer")]
    Overflow { capacity: usize },
}

/// Reads one CDR payload.
pub struct CdrReader<'a> {
    /// The payload after the encapsulation header.
    body: &'a [u8],
    at: usize,
}

impl<'a> CdrReader<'a> {
    /// Checks the encapsulation header (little-endian plain CDR only).
    pub fn new(payload: &'a [u8]) -> Result<Self, CdrError> {
        if payload.len() < 4 {
            return Err(CdrError::NoHeader { len: payload.len() });
        }
        if payload[0..2] != CDR_LE_HEADER[0..2] {
            return Err(CdrError::Encapsulation {
                found: [payload[0], payload[1]],
            });
        }
        Ok(Self {
            body: &payload[4..],
            at: 0,
        })
    }

    fn take(&mut self, field: &'static str, align: usize, n: usize) -> Result<&'a [u8], CdrError> {
        let padding = (align - self.at % align) % align;
        let left = self.body.len().saturating_sub(self.at);
        let needed = padding.saturating_add(n);
        if needed > left {
            return Err(CdrError::Truncated {
                field,
                at: self.at,
                needed,
                left,
            });
        }
        let start = self.at + padding;
        self.at = start + n;
        Ok(&self.body[start..start + n])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CdrError> {
        let bytes = self.take(field, N, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, CdrError> {
        Ok(self.take(field, 1, 1)?[0])
    }

    pub fn bool(&mut self, field: &'static str) -> Result<bool, CdrError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CdrError::NotBool { field, value }),
        }
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, CdrError> {
        self.array::<4>(field).map(u32::from_le_bytes)
    }

    pub fn i32(&mut self, field: &'static str) -> Result<i32, CdrError> {
        self.array::<4>(field).map(i32::from_le_bytes)
    }

    pub fn f64(&mut self, field: &'static str) -> Result<f64, CdrError> {
        self.array::<8>(field).map(f64::from_le_bytes)
    }

    /// A string's bytes without the closing NUL, borrowed; its length is checked against
    /// what is left before anything is read.
    pub fn string_bytes(&mut self, field: &'static str) -> Result<&'a [u8], CdrError> {
        let len = self.u32(field)? as usize;
        if len == 0 {
            return Err(CdrError::ZeroLengthString { field });
        }
        let bytes = self.take(field, 1, len)?;
        match bytes.split_last() {
            Some((&0, text)) => Ok(text),
            _ => Err(CdrError::NoNul { field }),
        }
    }

    /// A string, borrowed, checked as UTF-8.
    pub fn string(&mut self, field: &'static str) -> Result<&'a str, CdrError> {
        std::str::from_utf8(self.string_bytes(field)?).map_err(|_| CdrError::NotUtf8 { field })
    }

    /// The length a string field declares, without reading it (the reader does not move):
    /// lets a caller refuse an oversized string from its length alone.
    pub fn peek_string_len(&self) -> Option<usize> {
        let padding = (4 - self.at % 4) % 4;
        let start = self.at + padding;
        let bytes = self.body.get(start..start + 4)?;
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        Some(len.saturating_sub(1))
    }

    /// A `uint8[]`, borrowed.
    pub fn byte_sequence(&mut self, field: &'static str) -> Result<&'a [u8], CdrError> {
        let len = self.u32(field)? as usize;
        self.take(field, 1, len)
    }

    /// The end of the message: trailing bytes beyond alignment padding are refused.
    pub fn finish(&self) -> Result<(), CdrError> {
        let left = self.body.len().saturating_sub(self.at);
        // A sender may pad the message to a multiple of 4 (or 8) bytes.
        if left >= 8 {
            return Err(CdrError::Trailing { left });
        }
        Ok(())
    }
}

/// Writes one CDR payload into a caller-owned buffer; never allocates.
pub struct CdrWriter<'a> {
    out: &'a mut [u8],
    /// Bytes written, header included.
    len: usize,
}

impl<'a> CdrWriter<'a> {
    /// Starts with the encapsulation header.
    pub fn new(out: &'a mut [u8]) -> Result<Self, CdrError> {
        let mut writer = Self { out, len: 0 };
        writer.put(&CDR_LE_HEADER)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CdrError> {
        let end = self.len + bytes.len();
        let Some(target) = self.out.get_mut(self.len..end) else {
            return Err(CdrError::Overflow {
                capacity: self.out.len(),
            });
        };
        target.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn align(&mut self, align: usize) -> Result<(), CdrError> {
        let body = self.len - 4;
        let padding = (align - body % align) % align;
        self.put(&[0u8; 8][..padding])
    }

    pub fn u8(&mut self, value: u8) -> Result<(), CdrError> {
        self.put(&[value])
    }

    pub fn bool(&mut self, value: bool) -> Result<(), CdrError> {
        self.u8(u8::from(value))
    }

    pub fn u32(&mut self, value: u32) -> Result<(), CdrError> {
        self.align(4)?;
        self.put(&value.to_le_bytes())
    }

    pub fn i32(&mut self, value: i32) -> Result<(), CdrError> {
        self.align(4)?;
        self.put(&value.to_le_bytes())
    }

    pub fn f64(&mut self, value: f64) -> Result<(), CdrError> {
        self.align(8)?;
        self.put(&value.to_le_bytes())
    }

    pub fn string(&mut self, value: &str) -> Result<(), CdrError> {
        let len = u32::try_from(value.len() + 1).map_err(|_| CdrError::Overflow {
            capacity: self.out.len(),
        })?;
        self.u32(len)?;
        self.put(value.as_bytes())?;
        self.put(&[0])
    }

    /// A sequence's element count (the elements follow).
    pub fn sequence_len(&mut self, count: usize) -> Result<(), CdrError> {
        let count = u32::try_from(count).map_err(|_| CdrError::Overflow {
            capacity: self.out.len(),
        })?;
        self.u32(count)
    }

    pub fn byte_sequence(&mut self, bytes: &[u8]) -> Result<(), CdrError> {
        self.sequence_len(bytes.len())?;
        self.put(bytes)
    }

    /// Bytes written, header included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_counts_from_after_the_header() {
        let mut buffer = [0u8; 64];
        let mut w = CdrWriter::new(&mut buffer).unwrap();
        w.u8(7).unwrap();
        w.f64(1.0).unwrap();
        w.string("ab").unwrap();
        let len = w.len();
        // header 4, u8 at 4, padding to body offset 8 (absolute 12), f64 12..20,
        // u32 length 20..24, "ab\0" 24..27.
        assert_eq!(len, 27);
        assert_eq!(&buffer[..5], &[0, 1, 0, 0, 7]);
        assert_eq!(&buffer[12..20], &1.0f64.to_le_bytes());
        assert_eq!(&buffer[20..27], &[3, 0, 0, 0, b'a', b'b', 0]);
        let mut r = CdrReader::new(&buffer[..len]).unwrap();
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.f64("b").unwrap(), 1.0);
        assert_eq!(r.string("c").unwrap(), "ab");
        r.finish().unwrap();
    }

    #[test]
    fn lengths_beyond_the_payload_are_refused_before_reading() {
        let mut payload = CDR_LE_HEADER.to_vec();
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = CdrReader::new(&payload).unwrap();
        assert!(matches!(
            r.string("s"),
            Err(CdrError::Truncated { field: "s", .. })
        ));
        let mut r = CdrReader::new(&payload).unwrap();
        assert!(matches!(
            r.byte_sequence("d"),
            Err(CdrError::Truncated { .. })
        ));
        assert_eq!(
            CdrReader::new(&[0, 0, 0, 0]).err(),
            Some(CdrError::Encapsulation { found: [0, 0] })
        );
        assert_eq!(
            CdrReader::new(&[0, 1]).err(),
            Some(CdrError::NoHeader { len: 2 })
        );
        let no_nul = [0, 1, 0, 0, 2, 0, 0, 0, b'a', b'b'];
        assert_eq!(
            CdrReader::new(&no_nul).unwrap().string("s"),
            Err(CdrError::NoNul { field: "s" })
        );
    }

    #[test]
    fn the_writer_refuses_to_overflow_its_buffer() {
        let mut buffer = [0u8; 10];
        let mut w = CdrWriter::new(&mut buffer).unwrap();
        assert_eq!(
            w.string("too long for it"),
            Err(CdrError::Overflow { capacity: 10 })
        );
    }
}
