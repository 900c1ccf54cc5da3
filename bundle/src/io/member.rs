//! Bounds the tar members that a tar reader holds in memory whole.
//!
//! The `tar` crate reads a GNU long-name (`L`) or long-link (`K`) member and
//! a PAX extended header (`x`, and a global `g` when asked for its records)
//! into one buffer of the member's declared size before anyone can look at
//! it. A member of zeros compresses to almost nothing, so a bundle of a few
//! KiB could make a reader allocate up to the expanded-size limit (2 GiB).
//! [`MemberGuard`] follows the tar framing as the bytes pass and refuses
//! such a member larger than [`MAX_METADATA_MEMBER`] when its header goes
//! by, before a byte of its data is handed on.
//!
//! The framing is followed the way the `tar` crate follows it (the same
//! size field parser, a PAX `size` record applying to the next member that
//! is not itself an extension). Where it cannot follow (a header the crate
//! will refuse, a GNU sparse member with extension blocks, the end of the
//! archive) it stops checking and passes the bytes on: the tar reader
//! refuses the first two, and what follows the end marker is checked by the
//! bundle reader.

use std::io::{self, Read};

/// Largest GNU long-name, long-link or PAX header member accepted, in bytes
/// (docs/bundle-format.md, "The tar stream").
pub const MAX_METADATA_MEMBER: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// A metadata member over [`MAX_METADATA_MEMBER`].
#[derive(Debug, thiserror::Error)]
#[error("a tar {kind} member of {size} bytes is over the limit of {MAX_METADATA_MEMBER} bytes")]
pub struct MemberTooLarge {
    /// What the member is.
    pub kind: &'static str,
    /// Its declared size.
    pub size: u64,
}

/// A reader of a tar stream that refuses oversized metadata members.
#[derive(Debug)]
pub struct MemberGuard<R> {
    inner: R,
    /// Bytes passed on so far.
    pos: u64,
    /// Where the next header starts; `None` once checking stopped.
    next: Option<u64>,
    header: [u8; BLOCK as usize],
    /// The PAX member being passed on (its records are needed for the next
    /// member's size), and where it ends.
    pax: Option<(Vec<u8>, u64)>,
    /// The records of the last PAX member, for the next ordinary member.
    pending: Option<Vec<u8>>,
}

impl<R: Read> MemberGuard<R> {
    /// Wraps the start of a tar stream.
    pub fn new(inner: R) -> Self {
        MemberGuard { inner, pos: 0, next: Some(0), header: [0; BLOCK as usize], pax: None, pending: None }
    }

    /// Looks at a complete header; returns where the next one starts, or
    /// `None` to stop checking.
    fn on_header(&mut self) -> io::Result<Option<u64>> {
        if self.header.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let h = tar::Header::from_byte_slice(&self.header);
        let Ok(mut size) = h.entry_size() else { return Ok(None) };
        let kind = match self.header.get(156).copied().unwrap_or(0) {
            b'L' => Some("GNU long-name"),
            b'K' => Some("GNU long-link"),
            b'x' => Some("PAX extended header"),
            b'g' => Some("PAX global header"),
            b'S' => return Ok(None),
            _ => None,
        };
        if let Some(kind) = kind {
            if size > MAX_METADATA_MEMBER {
                return Err(io::Error::new(io::ErrorKind::InvalidData, MemberTooLarge { kind, size }));
            }
        } else if let Some(records) = self.pending.take() {
            if let Some(s) = pax_size(&records) {
                size = s;
            }
        }
        let data = self.pos;
        if self.header.get(156) == Some(&b'x') {
            self.pax = Some((Vec::new(), data + size));
        }
        Ok(size.checked_add(BLOCK - 1).map(|s| s & !(BLOCK - 1)).and_then(|s| data.checked_add(s)))
    }
}

/// The `size` record of PAX records, parsed as the `tar` crate does.
fn pax_size(records: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(records) {
        let ext = ext.ok()?;
        if ext.key_bytes() == b"size" {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for MemberGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(next) = self.next else { return self.inner.read(out) };
        // Stop each read at the end of a header block, so that a header is
        // looked at before anything after it is passed on.
        let header_end = next + BLOCK;
        let want = if self.pos < next {
            usize::try_from(next - self.pos).unwrap_or(usize::MAX)
        } else {
            usize::try_from(header_end - self.pos).unwrap_or(usize::MAX)
        };
        let len = out.len().min(want);
        let buf = out.get_mut(..len).unwrap_or_default();
        let n = self.inner.read(buf)?;
        let got = buf.get(..n).unwrap_or_default();
        if self.pos >= next {
            let at = usize::try_from(self.pos - next).unwrap_or(0);
            if let Some(dst) = self.header.get_mut(at..at + n) {
                dst.copy_from_slice(got);
            }
        } else if let Some((records, end)) = self.pax.as_mut() {
            if self.pos < *end {
                let keep = usize::try_from((*end - self.pos).min(n as u64)).unwrap_or(0);
                records.extend_from_slice(got.get(..keep).unwrap_or_default());
            }
        }
        self.pos += n as u64;
        if n > 0 && self.pos == header_end {
            if let Some((records, _)) = self.pax.take() {
                self.pending = Some(records);
            }
            self.next = self.on_header()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn header(kind: u8, name: &[u8], size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_path(std::str::from_utf8(name).unwrap()).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        *h.as_bytes()
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(512) * 512, 0);
        v
    }

    /// Reads everything through the guard in small odd pieces.
    fn read_all(stream: &[u8]) -> io::Result<Vec<u8>> {
        let mut g = MemberGuard::new(stream);
        let mut out = Vec::new();
        let mut buf = [0u8; 333];
        loop {
            let n = g.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn oversized_metadata_members_are_refused_at_their_header() {
        for kind in [b'L', b'K', b'x', b'g'] {
            let mut s = header(b'0', b"a", 3).to_vec();
            s.extend(padded(b"abc"));
            s.extend(header(kind, b"././@LongLink", MAX_METADATA_MEMBER + 1));
            // The data is not there: the guard must refuse at the header.
            let err = read_all(&s).unwrap_err();
            assert!(err.to_string().contains("over the limit"), "{err}");
        }
    }

    #[test]
    fn the_framing_follows_pax_sizes_and_passes_good_streams_unchanged() {
        // A PAX header whose size record (2000) overrides the next member's
        // header size (0), then a long-name member, then a too-large one.
        let mut s = Vec::new();
        let rec = b"13 size=2000\n";
        s.extend(header(b'x', b"pax", rec.len() as u64));
        s.extend(padded(rec));
        s.extend(header(b'0', b"f", 0));
        s.extend(padded(&[b'L'; 2000]));
        s.extend(header(b'L', b"././@LongLink", 6));
        s.extend(padded(b"x/y/z\0"));
        s.extend(header(b'0', b"ignored", 0));
        assert_eq!(read_all(&s).unwrap(), s);
        s.extend(header(b'K', b"././@LongLink", MAX_METADATA_MEMBER * 4));
        assert!(read_all(&s).is_err());
    }
}
