//! A small read-only FAT12/16/32 reader for key sticks.
//!
//! A key stick is untrusted input read before anything else has been
//! verified, so this reader is written to be boring: every offset is computed
//! with checked arithmetic from a boot sector that is validated first, every
//! cluster number is range-checked before it is used, every cluster chain is
//! refused when it comes back to a cluster (a corrupt FAT can make a chain
//! loop), and every directory and file read is bounded by a byte limit. It
//! reads with `pread` on a descriptor opened read-only; it has no way to
//! write. It understands what a stick made by `mkfs.vfat` and `mcopy` (or any
//! desktop) holds: short (8.3) names, long file names (VFAT), and the
//! Windows NT lower-case flags.
//!
//! It only navigates by name and reads files; it keeps no cache, so a file
//! is read with one `pread` per cluster plus one per FAT entry. That is
//! plenty for a few key files of a few hundred bytes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use zeroize::Zeroizing;

/// Size of a directory entry.
const DIRENT: usize = 32;
/// Attribute bits of a directory entry.
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
/// The attribute value that marks a long-file-name entry.
const ATTR_LFN: u8 = 0x0F;
/// Most bytes of one directory that are read (32,768 entries): far more than
/// a stick's directory needs, and it bounds a corrupt, looping chain.
const MAX_DIR_BYTES: u64 = 1 << 20;
/// Most UTF-16 units of a long name (20 entries of 13).
const MAX_LFN_UNITS: usize = 20 * 13;

fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not a readable FAT file system: {what}"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_le_bytes([x, y]),
        _ => 0,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// Where a directory's entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirLoc {
    /// The fixed root directory region of FAT12/16: byte offset and length.
    Fixed { at: u64, len: u64 },
    /// A cluster chain (every subdirectory, and the root of FAT32).
    Chain(u32),
}

/// A directory entry, as far as this reader cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The long name if there is a valid one, else the short name.
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    first_cluster: u32,
    size: u32,
}

/// An open FAT volume.
#[derive(Debug)]
pub struct Volume {
    file: File,
    fat_type: FatType,
    /// Byte offset of the first FAT.
    fat_at: u64,
    /// Byte length of one FAT.
    fat_len: u64,
    /// Byte offset of cluster 2.
    data_at: u64,
    cluster_size: u64,
    /// Number of data clusters; valid cluster numbers are 2..cluster_count+2.
    cluster_count: u32,
    root: DirLoc,
}

impl Volume {
    /// Opens the FAT file system on `file` (a block device or an image),
    /// validating its boot sector.
    pub fn open(mut file: File) -> io::Result<Volume> {
        let dev_len = file.seek(SeekFrom::End(0))?;
        let mut bs = [0u8; 512];
        match file.read_exact_at(&mut bs, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(corrupt("shorter than a boot sector")),
            Err(e) => return Err(e),
        }
        if bs.get(510..512) != Some(&[0x55, 0xAA][..]) {
            return Err(corrupt("no boot sector signature"));
        }
        let bytes_per_sector = u64::from(u16_at(&bs, 11));
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(corrupt(format_args!("bytes per sector {bytes_per_sector}")));
        }
        let sectors_per_cluster = u64::from(bs.get(13).copied().unwrap_or(0));
        if !sectors_per_cluster.is_power_of_two() || bytes_per_sector * sectors_per_cluster > 64 * 1024 {
            return Err(corrupt(format_args!("sectors per cluster {sectors_per_cluster}")));
        }
        let reserved = u64::from(u16_at(&bs, 14));
        let fats = u64::from(bs.get(16).copied().unwrap_or(0));
        let root_entries = u64::from(u16_at(&bs, 17));
        let total = match u16_at(&bs, 19) {
            0 => u64::from(u32_at(&bs, 32)),
            n => u64::from(n),
        };
        let fat_sectors = match u16_at(&bs, 22) {
            0 => u64::from(u32_at(&bs, 36)),
            n => u64::from(n),
        };
        if reserved == 0 || fats == 0 || fat_sectors == 0 || total == 0 {
            return Err(corrupt("zero reserved sectors, FATs, FAT size or total sectors"));
        }
        // All in sectors; the values are at most 2^32 * 255, far from overflow
        // in u64, but checked anyway so no input can make it wrap.
        let root_sectors = (root_entries * DIRENT as u64).div_ceil(bytes_per_sector);
        let data_start = fats
            .checked_mul(fat_sectors)
            .and_then(|f| f.checked_add(reserved))
            .and_then(|s| s.checked_add(root_sectors))
            .ok_or_else(|| corrupt("layout overflows"))?;
        let data_sectors = total.checked_sub(data_start).ok_or_else(|| corrupt("FATs larger than the volume"))?;
        let clusters = data_sectors / sectors_per_cluster;
        // The FAT type follows from the cluster count alone (Microsoft's FAT
        // specification); the labels in the boot sector are informational.
        let fat_type = match clusters {
            0 => return Err(corrupt("no data clusters")),
            1..4085 => FatType::Fat12,
            4085..65525 => FatType::Fat16,
            _ => FatType::Fat32,
        };
        let cluster_count = u32::try_from(clusters).map_err(|_| corrupt("too many clusters"))?;
        if fat_type == FatType::Fat32 && cluster_count > 0x0FFF_FFF5 {
            return Err(corrupt("too many clusters"));
        }
        let fat_len = fat_sectors * bytes_per_sector;
        // The FAT must have an entry for every cluster.
        let needed_bits = (u64::from(cluster_count) + 2)
            * match fat_type {
                FatType::Fat12 => 12,
                FatType::Fat16 => 16,
                FatType::Fat32 => 32,
            };
        if fat_len * 8 < needed_bits {
            return Err(corrupt("FAT too small for the volume"));
        }
        let root = match fat_type {
            FatType::Fat32 => {
                if root_entries != 0 {
                    return Err(corrupt("FAT32 with a fixed root directory"));
                }
                DirLoc::Chain(u32_at(&bs, 44))
            }
            _ => {
                if root_entries == 0 {
                    return Err(corrupt("no root directory"));
                }
                DirLoc::Fixed {
                    at: (reserved + fats * fat_sectors) * bytes_per_sector,
                    len: root_entries * DIRENT as u64,
                }
            }
        };
        let vol = Volume {
            file,
            fat_type,
            fat_at: reserved * bytes_per_sector,
            fat_len,
            data_at: data_start * bytes_per_sector,
            cluster_size: sectors_per_cluster * bytes_per_sector,
            cluster_count,
            root,
        };
        if vol.data_at > dev_len {
            return Err(corrupt("volume larger than the device"));
        }
        if let DirLoc::Chain(c) = root {
            vol.check_cluster(c)?;
        }
        Ok(vol)
    }

    fn check_cluster(&self, c: u32) -> io::Result<()> {
        if c < 2 || c - 2 >= self.cluster_count {
            return Err(corrupt(format_args!("cluster {c} out of range")));
        }
        Ok(())
    }

    /// The cluster after `c` in its chain; `None` at the end of the chain.
    fn next_cluster(&self, c: u32) -> io::Result<Option<u32>> {
        self.check_cluster(c)?;
        let c64 = u64::from(c);
        let (raw, eoc) = match self.fat_type {
            FatType::Fat12 => {
                let mut b = [0u8; 2];
                self.read_fat(c64 + c64 / 2, &mut b)?;
                let v = u16::from_le_bytes(b);
                (u32::from(if c % 2 == 1 { v >> 4 } else { v & 0x0FFF }), 0x0FF8)
            }
            FatType::Fat16 => {
                let mut b = [0u8; 2];
                self.read_fat(c64 * 2, &mut b)?;
                (u32::from(u16::from_le_bytes(b)), 0xFFF8)
            }
            FatType::Fat32 => {
                let mut b = [0u8; 4];
                self.read_fat(c64 * 4, &mut b)?;
                (u32::from_le_bytes(b) & 0x0FFF_FFFF, 0x0FFF_FFF8)
            }
        };
        if raw >= eoc {
            return Ok(None);
        }
        self.check_cluster(raw).map_err(|_| corrupt(format_args!("cluster chain breaks after cluster {c}")))?;
        Ok(Some(raw))
    }

    fn read_fat(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.fat_len {
            return Err(corrupt("FAT entry beyond the FAT"));
        }
        self.read_exact_at(buf, self.fat_at + offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, at).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof { corrupt("data beyond the end of the device") } else { e }
        })
    }

    /// Reads up to `limit` bytes of the chain starting at `first` into a
    /// zeroized buffer (key files pass through here).
    fn read_chain(&self, first: u32, limit: u64) -> io::Result<Zeroizing<Vec<u8>>> {
        let cap = usize::try_from(limit).map_err(|_| corrupt("file too large"))?;
        let mut out = Zeroizing::new(Vec::with_capacity(cap));
        let mut cluster = Some(first);
        // A chain visits each cluster at most once. The set stays small: the
        // byte limit caps the clusters read (2,048 for a directory at most).
        let mut seen = HashSet::new();
        while let Some(c) = cluster {
            let have = out.len() as u64;
            if have >= limit {
                break;
            }
            if !seen.insert(c) {
                return Err(corrupt(format_args!("cluster chain loops at cluster {c}")));
            }
            self.check_cluster(c)?;
            let n = (limit - have).min(self.cluster_size);
            let at = self.data_at + u64::from(c - 2) * self.cluster_size;
            let start = out.len();
            // n ≤ limit ≤ cap, which fits usize (checked above).
            out.resize(start + n as usize, 0);
            let dst = out.get_mut(start..).ok_or_else(|| corrupt("buffer"))?;
            self.read_exact_at(dst, at)?;
            cluster = self.next_cluster(c)?;
        }
        Ok(out)
    }

    fn dir_bytes(&self, loc: DirLoc) -> io::Result<Zeroizing<Vec<u8>>> {
        match loc {
            DirLoc::Fixed { at, len } => {
                let len = len.min(MAX_DIR_BYTES);
                let mut buf = Zeroizing::new(vec![0u8; len as usize]);
                self.read_exact_at(&mut buf, at)?;
                Ok(buf)
            }
            DirLoc::Chain(c) => self.read_chain(c, MAX_DIR_BYTES),
        }
    }

    /// The entries of the root directory.
    pub fn root(&self) -> io::Result<Vec<Entry>> {
        Ok(parse_dir(&self.dir_bytes(self.root)?))
    }

    /// The entries of the subdirectory `dir`.
    pub fn list(&self, dir: &Entry) -> io::Result<Vec<Entry>> {
        if !dir.is_dir {
            return Err(corrupt(format_args!("{} is not a directory", dir.name)));
        }
        Ok(parse_dir(&self.dir_bytes(DirLoc::Chain(dir.first_cluster))?))
    }

    /// Reads the file `entry`, at most `limit` bytes of it.
    pub fn read(&self, entry: &Entry, limit: u64) -> io::Result<Zeroizing<Vec<u8>>> {
        if entry.is_dir {
            return Err(corrupt(format_args!("{} is a directory", entry.name)));
        }
        let len = u64::from(entry.size).min(limit);
        if len == 0 {
            return Ok(Zeroizing::new(Vec::new()));
        }
        let data = self.read_chain(entry.first_cluster, len)?;
        if (data.len() as u64) < len {
            return Err(corrupt(format_args!("{} is shorter than its size", entry.name)));
        }
        Ok(data)
    }
}

/// The checksum of a short name that its long-name entries carry.
fn lfn_checksum(short: &[u8]) -> u8 {
    short.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// The display form of an 8.3 name, honouring the NT lower-case flags.
fn short_name(raw: &[u8], nt_flags: u8) -> String {
    let part = |b: &[u8], lower: bool| {
        let s: String = b.iter().map(|&c| char::from(c)).collect::<String>().trim_end_matches(' ').to_owned();
        if lower { s.to_ascii_lowercase() } else { s }
    };
    let mut base: Vec<u8> = raw.get(..8).unwrap_or_default().to_vec();
    // 0x05 stands for a leading 0xE5 (which marks deleted entries).
    if let Some(first) = base.first_mut().filter(|b| **b == 0x05) {
        *first = 0xE5;
    }
    let base = part(&base, nt_flags & 0x08 != 0);
    let ext = part(raw.get(8..11).unwrap_or_default(), nt_flags & 0x10 != 0);
    if ext.is_empty() { base } else { format!("{base}.{ext}") }
}

/// A long name being assembled from its entries, which come last part
/// first.
struct Lfn {
    units: Vec<u16>,
    checksum: u8,
    /// The sequence number expected next (counting down to 1).
    next: u8,
}

/// Parses the 32-byte entries of a directory. Entries that do not make
/// sense are skipped; the listing ends at the end marker or the data.
fn parse_dir(bytes: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut lfn: Option<Lfn> = None;
    for e in bytes.chunks_exact(DIRENT) {
        let first = e.first().copied().unwrap_or(0);
        let attr = e.get(11).copied().unwrap_or(0);
        if first == 0 {
            break;
        }
        if first == 0xE5 {
            lfn = None;
            continue;
        }
        if attr & 0x3F == ATTR_LFN {
            let seq = first & 0x1F;
            let checksum = e.get(13).copied().unwrap_or(0);
            if first & 0x40 != 0 {
                lfn = (1..=20).contains(&seq).then(|| Lfn {
                    units: vec![0xFFFF; usize::from(seq) * 13],
                    checksum,
                    next: seq,
                });
            }
            lfn = lfn.filter(|l| l.next == seq && l.checksum == checksum && seq >= 1);
            if let Some(l) = lfn.as_mut() {
                let base = (usize::from(seq) - 1) * 13;
                let pieces = e.get(1..11).into_iter().chain(e.get(14..26)).chain(e.get(28..32));
                for (i, unit) in pieces.flat_map(|p| p.chunks_exact(2)).enumerate() {
                    if let (Some(slot), [lo, hi]) = (l.units.get_mut(base + i), unit) {
                        *slot = u16::from_le_bytes([*lo, *hi]);
                    }
                }
                l.next = seq - 1;
            }
            continue;
        }
        let long = lfn.take();
        if attr & ATTR_VOLUME_ID != 0 {
            continue;
        }
        let raw_name = e.get(..11).unwrap_or_default();
        if raw_name == b".          " || raw_name == b"..         " {
            continue;
        }
        let name = long
            .filter(|l| l.next == 0 && l.checksum == lfn_checksum(raw_name) && l.units.len() <= MAX_LFN_UNITS)
            .and_then(|l| {
                let end = l.units.iter().position(|&u| u == 0 || u == 0xFFFF).unwrap_or(l.units.len());
                String::from_utf16(l.units.get(..end)?).ok()
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| short_name(raw_name, e.get(12).copied().unwrap_or(0)));
        let first_cluster = (u32::from(u16_at(e, 20)) << 16) | u32::from(u16_at(e, 26));
        entries.push(Entry { name, is_dir: attr & ATTR_DIRECTORY != 0, first_cluster, size: u32_at(e, 28) });
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_the_specification() {
        // Computed by hand from the specification's algorithm for "KEY~1   TXT".
        let mut sum = 0u8;
        for &b in b"KEY~1   TXT" {
            sum = (if sum & 1 != 0 { 0x80 } else { 0 }) + (sum >> 1);
            sum = sum.wrapping_add(b);
        }
        assert_eq!(lfn_checksum(b"KEY~1   TXT"), sum);
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name(b"README  TXT", 0), "README.TXT");
        assert_eq!(short_name(b"KEYS       ", 0x08), "keys");
        assert_eq!(short_name(b"A       KEY", 0x18), "a.key");
        assert_eq!(short_name(b"\x05BC     ", 0), "\u{e5}BC");
    }

    #[test]
    fn garbage_directories_parse_without_panicking() {
        let mut junk = vec![0u8; 4096];
        for (i, b) in junk.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8 | 1;
        }
        let _ = parse_dir(&junk);
        // A lone long-name entry with a bad sequence number.
        let mut e = [0u8; 32];
        e[0] = 0x40;
        e[11] = ATTR_LFN;
        assert!(parse_dir(&e).is_empty());
    }
}
