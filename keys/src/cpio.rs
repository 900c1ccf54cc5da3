//! The `newc` cpio format, as the Linux kernel unpacks an initramfs.
//!
//! [`Archive`] writes one archive (directories and small regular files, then
//! `TRAILER!!!`) so a key can be appended to an existing boot image: the
//! kernel unpacks concatenated archives, compressed or not, one after the
//! other (`init/initramfs.c`). Two kernel rules shape the writer:
//!
//! - an uncompressed archive must start at an offset that is a multiple of 4
//!   in the image; the kernel skips zero bytes between archives, so
//!   [`pad_to`] pads the existing image with zeros first;
//! - a directory entry is applied to an existing directory too (`mkdir`, then
//!   `chown` and `chmod`), so the entries for `/etc` and `/etc/stateless`
//!   carry the usual `root:root 0755` and never change what the image has.
//!
//! [`read_archives`] is the reading side, for tests and for checking a boot
//! image: it walks every uncompressed archive in a byte string (stopping at
//! the first compressed one) with a limit on the entries it returns.

use std::fmt;

/// The `newc` magic (no checksum variant).
const MAGIC: &[u8; 6] = b"070701";
/// Length of a `newc` header: the magic and 13 fields of 8 hex digits.
const HEADER_LEN: usize = 110;
/// The name of the last entry of every archive.
const TRAILER: &str = "TRAILER!!!";
/// File type bits.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
/// Most entries [`read_archives`] returns: a boot image's key part has a
/// handful; a whole initramfs a few thousand.
pub const MAX_ENTRIES: usize = 100_000;

/// One entry of an archive.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading `/` (`etc/stateless/keys/x.key`).
    pub name: String,
    /// Type and permission bits (`0o100600`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, Unix seconds.
    pub mtime: u32,
    /// Contents (empty for directories).
    pub data: Vec<u8>,
}

impl fmt::Debug for Entry {
    // The data may be a key: show only its length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Entry({} {:o} {}:{} {} bytes)", self.name, self.mode, self.uid, self.gid, self.data.len())
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

/// Why a byte string is not a valid `newc` archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CpioError {
    /// A header field is not hex, or the magic is wrong.
    #[error("bad cpio header at offset {0}")]
    BadHeader(usize),
    /// The data ends inside an entry.
    #[error("cpio archive truncated at offset {0}")]
    Truncated(usize),
    /// A name is not UTF-8 or lacks its NUL.
    #[error("bad entry name at offset {0}")]
    BadName(usize),
    /// More than [`MAX_ENTRIES`] entries.
    #[error("more than {MAX_ENTRIES} cpio entries")]
    TooManyEntries,
    /// A name or file is larger than the writer accepts.
    #[error("{0}: too large for a cpio entry")]
    TooLarge(String),
}

/// A `newc` archive being built in memory.
#[derive(Default)]
pub struct Archive {
    out: Vec<u8>,
    next_ino: u32,
    mtime: u32,
}

impl fmt::Debug for Archive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Archive({} bytes)", self.out.len())
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.out);
    }
}

impl Archive {
    /// A new archive whose entries carry `mtime` (Unix seconds).
    pub fn new(mtime: u32) -> Archive {
        // Inode 0 is avoided: some readers take it as "no inode".
        Archive { out: Vec::new(), next_ino: 1, mtime }
    }

    /// Adds a directory owned by root.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, &[])
    }

    /// Adds a regular file owned by root.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, data)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> Result<(), CpioError> {
        let name = name.trim_start_matches('/');
        let namesize = u32::try_from(name.len() + 1).map_err(|_| CpioError::TooLarge(name.to_owned()))?;
        let filesize = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.to_owned()))?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino = self.next_ino.wrapping_add(1);
        let mtime = if name == TRAILER { 0 } else { self.mtime };
        let fields = [ino, mode, 0, 0, nlink, mtime, filesize, 0, 0, 0, 0, namesize, 0];
        self.out.extend_from_slice(MAGIC);
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.align();
        self.out.extend_from_slice(data);
        self.align();
        Ok(())
    }

    fn align(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    /// Ends the archive with `TRAILER!!!` and returns its bytes (a multiple
    /// of 4 long).
    pub fn finish(mut self) -> Result<Vec<u8>, CpioError> {
        self.entry(TRAILER, 0, 1, &[])?;
        Ok(std::mem::take(&mut self.out))
    }
}

/// The number of zero bytes to append to an image of `len` bytes so that an
/// archive appended after them starts at a multiple of 4.
pub fn pad_to(len: u64) -> usize {
    // `len % 4` is below 4, so the cast cannot truncate.
    ((4 - len % 4) % 4) as usize
}

fn hex_field(buf: &[u8], at: usize, field: usize) -> Result<u32, CpioError> {
    let start = at + 6 + field * 8;
    let s = buf.get(start..start + 8).ok_or(CpioError::Truncated(at))?;
    let s = std::str::from_utf8(s).map_err(|_| CpioError::BadHeader(at))?;
    u32::from_str_radix(s, 16).map_err(|_| CpioError::BadHeader(at))
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Reads every uncompressed `newc` archive in `buf`, skipping the zero
/// padding between them, up to the end or up to the first thing that is not
/// an archive (a compressed archive, which this reader does not unpack).
/// Returns the entries (trailers left out) and the offset where reading
/// stopped.
pub fn read_archives(buf: &[u8]) -> Result<(Vec<Entry>, usize), CpioError> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        while buf.get(at) == Some(&0) {
            at += 1;
        }
        // As the kernel: an archive starts at a multiple of 4 with the magic.
        if at % 4 != 0 || buf.get(at..at + 6) != Some(MAGIC.as_slice()) {
            return Ok((entries, at));
        }
        loop {
            if buf.get(at..at + 6) != Some(MAGIC.as_slice()) {
                return Err(CpioError::BadHeader(at));
            }
            let field = |i| hex_field(buf, at, i);
            let (mode, uid, gid, mtime, filesize, namesize) =
                (field(1)?, field(2)?, field(3)?, field(5)?, field(6)?, field(11)?);
            let name_at = at + HEADER_LEN;
            let name_end = name_at.checked_add(namesize as usize).ok_or(CpioError::Truncated(at))?;
            let raw = buf.get(name_at..name_end).ok_or(CpioError::Truncated(at))?;
            let (last, raw) = raw.split_last().ok_or(CpioError::BadName(at))?;
            if *last != 0 {
                return Err(CpioError::BadName(at));
            }
            let name = std::str::from_utf8(raw).map_err(|_| CpioError::BadName(at))?.to_owned();
            let data_at = align4(name_end).min(buf.len());
            let data_end = data_at.checked_add(filesize as usize).ok_or(CpioError::Truncated(at))?;
            let data = buf.get(data_at..data_end).ok_or(CpioError::Truncated(at))?;
            // Padding may be missing at the very end of the input (after the
            // trailer); an offset past the end is never returned.
            at = align4(data_end).min(buf.len());
            if name == TRAILER {
                break;
            }
            if entries.len() >= MAX_ENTRIES {
                return Err(CpioError::TooManyEntries);
            }
            entries.push(Entry { name, mode, uid, gid, mtime, data: data.to_vec() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_padding_between_archives() {
        let mut a = Archive::new(1_700_000_000);
        a.dir("etc", 0o755).unwrap();
        a.file("/etc/x", 0o600, b"abc").unwrap();
        let first = a.finish().unwrap();
        assert_eq!(first.len() % 4, 0);
        let mut b = Archive::new(5);
        for len in [0usize, 1, 2, 3, 4, 5] {
            b.file(&format!("f{len}"), 0o644, &vec![b'z'; len]).unwrap();
        }
        let second = b.finish().unwrap();
        let mut image = first.clone();
        image.extend_from_slice(&[0; 8]);
        image.extend_from_slice(&second);
        let (entries, end) = read_archives(&image).unwrap();
        assert_eq!(end, image.len());
        assert_eq!(entries.len(), 8);
        assert_eq!(entries[0].mode, 0o040_755);
        assert_eq!(
            (entries[1].name.as_str(), entries[1].mode, entries[1].data.as_slice()),
            ("etc/x", 0o100_600, &b"abc"[..])
        );
        assert_eq!(entries[1].mtime, 1_700_000_000);
        for (i, len) in [0usize, 1, 2, 3, 4, 5].iter().enumerate() {
            assert_eq!(entries[2 + i].data.len(), *len);
        }
    }

    #[test]
    fn unpadded_end_stops_at_the_end() {
        let mut a = Archive::new(5);
        a.file("k", 0o600, b"x").unwrap();
        let mut image = a.finish().unwrap();
        // Strip the zero padding after the trailer's name.
        while image.last() == Some(&0) {
            image.pop();
        }
        image.push(0);
        let (entries, end) = read_archives(&image).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(end, image.len());
    }

    #[test]
    fn stops_at_what_is_not_an_archive() {
        let mut image = b"\x28\xb5\x2f\xfdzstd...".to_vec();
        let (entries, end) = read_archives(&image).unwrap();
        assert!(entries.is_empty());
        assert_eq!(end, 0);
        image.clear();
        assert_eq!(read_archives(&image).unwrap().0.len(), 0);
    }

    #[test]
    fn malformed_archives_are_errors_not_panics() {
        let mut a = Archive::new(0);
        a.file("etc/k", 0o600, b"0123456789").unwrap();
        let good = a.finish().unwrap();
        for cut in 1..good.len() {
            // Every truncation is refused or read as a shorter list; never a panic.
            let _ = read_archives(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[6 + 8] = b'G'; // the mode field
        assert_eq!(read_archives(&bad), Err(CpioError::BadHeader(0)));
        let mut huge = good.clone();
        huge[6 + 6 * 8..6 + 7 * 8].copy_from_slice(b"FFFFFFFF");
        assert!(matches!(read_archives(&huge), Err(CpioError::Truncated(_))));
    }

    #[test]
    fn padding_rule() {
        assert_eq!([0, 1, 2, 3, 4, 5].map(pad_to), [0, 3, 2, 1, 0, 3]);
    }
}
