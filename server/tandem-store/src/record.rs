//! The binary encoding every versioned record uses (accounts, files, history, activity,
//! webhooks; see `protocol-spec/storage.md`): integers little-endian, a *string* is a `u32`
//! byte length and that many bytes of UTF-8, an *optional string* a `u8` flag (0 absent,
//! 1 present) followed by the string when present.

/// Appends a string.
pub(crate) fn put_str(out: &mut Vec<u8>, text: &str) {
    put_u32(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Appends a length or count as a `u32`.
pub(crate) fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("lengths in a record are far below 4 GiB");
    out.extend_from_slice(&n.to_le_bytes());
}

/// Appends an optional string.
pub(crate) fn put_opt_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            out.push(1);
            put_str(out, text);
        }
        None => out.push(0),
    }
}

/// Reads a record front to back; every method returns `None` when the bytes run out or are not
/// what the encoding allows.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    /// Whether every byte was read (a record with trailing bytes is corrupt).
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// Exactly `N` bytes.
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    /// `Some(None)` for an absent value, `None` for bad bytes.
    pub(crate) fn opt_string(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.string().map(Some),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_reads_back_and_a_cut_record_reads_as_none() {
        let mut out = vec![7u8];
        out.extend_from_slice(&42u64.to_le_bytes());
        put_str(&mut out, "héllo");
        put_opt_str(&mut out, None);
        put_opt_str(&mut out, Some("x"));
        let mut reader = Reader::new(&out);
        assert_eq!(reader.u8(), Some(7));
        assert_eq!(reader.u64(), Some(42));
        assert_eq!(reader.string().as_deref(), Some("héllo"));
        assert_eq!(reader.opt_string(), Some(None));
        assert_eq!(reader.opt_string(), Some(Some("x".to_owned())));
        assert!(reader.is_empty());
        for cut in 0..out.len() {
            let mut reader = Reader::new(&out[..cut]);
            let complete = reader.u8().is_some()
                && reader.u64().is_some()
                && reader.string().is_some()
                && reader.opt_string().is_some()
                && reader.opt_string().is_some();
            assert!(!complete, "a record cut at {cut} read as complete");
        }
        assert_eq!(Reader::new(&[2]).opt_string(), None);
    }
}
