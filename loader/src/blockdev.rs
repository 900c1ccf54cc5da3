//! Finding and mounting the last-known-good cache device.
//!
//! `rd.stateless.cache=` names the device as `LABEL=…`, `UUID=…`,
//! `PARTLABEL=…`, `/dev/…` or `none` ([`CacheSpec`]). [`find_device`]
//! resolves it through udev's `/dev/disk/by-*` links when they exist, and
//! otherwise (udev not settled yet, or no udev in the initramfs) by scanning
//! `/sys/class/block`: labels and UUIDs from the ext4 superblock, partition
//! labels from the partition's `uevent` (`PARTNAME=`). The `/dev` and `/sys`
//! roots are parameters so that tests can use fake trees.
//!
//! [`Mounted`] mounts the device (ext4, `nosuid,nodev,noexec`) and unmounts
//! it when dropped, so an early return cannot leave the cache mounted across
//! switch-root.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustix::mount::{MountFlags, UnmountFlags};

/// The ext4 superblock starts 1024 bytes into the device.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock we read (up to the end of the volume name).
const SUPERBLOCK_READ: usize = 136;
/// `s_magic` (little-endian u16) offset within the superblock.
const MAGIC_AT: usize = 56;
/// The ext2/3/4 magic number.
const EXT4_MAGIC: u16 = 0xEF53;
/// `s_uuid` offset within the superblock (16 bytes).
const UUID_AT: usize = 104;
/// `s_volume_name` offset within the superblock (16 bytes, NUL padded).
const LABEL_AT: usize = 120;
/// Length of `s_volume_name`.
const LABEL_LEN: usize = 16;
/// A sysfs `uevent` file is at most a page.
const MAX_UEVENT: u64 = 4096;

/// Which device holds the cache (`rd.stateless.cache=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSpec {
    /// `none`: no cache.
    None,
    /// `LABEL=…`: the file system label.
    Label(String),
    /// `UUID=…`: the file system UUID.
    Uuid(String),
    /// `PARTLABEL=…`: the GPT partition name.
    PartLabel(String),
    /// `/dev/…`: a device node.
    Path(PathBuf),
}

/// Why a `rd.stateless.cache=` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Not one of the accepted forms.
    #[error("cache device {0:?}: want LABEL=…, UUID=…, PARTLABEL=…, /dev/… or none")]
    Unknown(String),
    /// `LABEL=`, `UUID=` or `PARTLABEL=` with nothing after it.
    #[error("cache device {0:?}: empty value")]
    Empty(String),
}

impl FromStr for CacheSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<CacheSpec, SpecError> {
        let tagged = |value: &str, make: fn(String) -> CacheSpec| {
            if value.is_empty() { Err(SpecError::Empty(s.to_owned())) } else { Ok(make(value.to_owned())) }
        };
        if s == "none" {
            Ok(CacheSpec::None)
        } else if let Some(v) = s.strip_prefix("LABEL=") {
            tagged(v, CacheSpec::Label)
        } else if let Some(v) = s.strip_prefix("UUID=") {
            tagged(v, CacheSpec::Uuid)
        } else if let Some(v) = s.strip_prefix("PARTLABEL=") {
            tagged(v, CacheSpec::PartLabel)
        } else if s.starts_with("/dev/") && s.len() > "/dev/".len() {
            Ok(CacheSpec::Path(PathBuf::from(s)))
        } else {
            Err(SpecError::Unknown(s.to_owned()))
        }
    }
}

impl fmt::Display for CacheSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheSpec::None => f.write_str("none"),
            CacheSpec::Label(l) => write!(f, "LABEL={l}"),
            CacheSpec::Uuid(u) => write!(f, "UUID={u}"),
            CacheSpec::PartLabel(l) => write!(f, "PARTLABEL={l}"),
            CacheSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What an ext2/3/4 superblock says about a file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    /// The volume label (`e2label`), possibly empty.
    pub label: String,
    /// The UUID, lower case, 8-4-4-4-12.
    pub uuid: String,
}

/// Reads the ext4 superblock of `dev` (a block device or an image file).
/// `Ok(None)` when there is no ext2/3/4 file system on it.
pub fn read_ext4_superblock(dev: &Path) -> io::Result<Option<Ext4Info>> {
    let file = File::open(dev)?;
    let mut sb = [0u8; SUPERBLOCK_READ];
    match file.read_exact_at(&mut sb, SUPERBLOCK_OFFSET) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(parse_superblock(&sb))
}

/// Parses the first bytes of an ext4 superblock.
fn parse_superblock(sb: &[u8; SUPERBLOCK_READ]) -> Option<Ext4Info> {
    let magic = sb.get(MAGIC_AT..MAGIC_AT + 2)?;
    if u16::from_le_bytes([*magic.first()?, *magic.get(1)?]) != EXT4_MAGIC {
        return None;
    }
    let uuid = sb.get(UUID_AT..UUID_AT + 16)?;
    let label = sb.get(LABEL_AT..LABEL_AT + LABEL_LEN)?;
    let label = label.split(|&b| b == 0).next().unwrap_or_default();
    Some(Ext4Info { label: String::from_utf8_lossy(label).into_owned(), uuid: format_uuid(uuid) })
}

/// Formats 16 bytes as a lower-case 8-4-4-4-12 UUID.
fn format_uuid(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Encodes a label the way udev names it under `/dev/disk/by-label`:
/// ASCII letters, digits and `#+-.:=@_` and multi-byte UTF-8 stay, every
/// other byte becomes `\xNN` (so `my disk` is `my\x20disk`).
pub fn udev_encode(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for c in label.chars() {
        if c.len_utf8() > 1 || c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        }
    }
    out
}

/// Finds the device that `spec` names, below the `/dev` directory `dev` and
/// the sysfs root `sys` (`/dev` and `/sys` on a real machine). `None` when
/// `spec` is `none` or no device matches: a missing device means no cache.
pub fn find_device(spec: &CacheSpec, dev: &Path, sys: &Path) -> Option<PathBuf> {
    let (by, key) = match spec {
        CacheSpec::None => return None,
        CacheSpec::Path(p) => {
            // `/dev/sdb1` is looked up below `dev`, so tests can use a fake tree.
            let p = p.strip_prefix("/dev").map(|rel| dev.join(rel)).unwrap_or_else(|_| p.clone());
            return match fs::metadata(&p) {
                Ok(_) => Some(p),
                Err(err) => {
                    log::debug!("cache device {}: {err}", p.display());
                    None
                }
            };
        }
        CacheSpec::Label(l) => ("by-label", udev_encode(l)),
        CacheSpec::Uuid(u) => ("by-uuid", u.to_ascii_lowercase()),
        CacheSpec::PartLabel(l) => ("by-partlabel", udev_encode(l)),
    };
    let link = dev.join("disk").join(by).join(&key);
    if let Ok(target) = fs::canonicalize(&link) {
        log::debug!("cache device {spec}: {} via {}", target.display(), link.display());
        return Some(target);
    }
    let found = scan(spec, dev, sys);
    match &found {
        Some(p) => log::debug!("cache device {spec}: {} (found by scanning {})", p.display(), sys.display()),
        None => log::debug!("cache device {spec}: no match in {} or {}", link.display(), sys.display()),
    }
    found
}

/// Looks at every block device in `sys/class/block`, in name order.
fn scan(spec: &CacheSpec, dev: &Path, sys: &Path) -> Option<PathBuf> {
    let class = sys.join("class/block");
    let mut names: Vec<String> = match fs::read_dir(&class) {
        Ok(rd) => rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect(),
        Err(err) => {
            log::debug!("reading {}: {err}", class.display());
            return None;
        }
    };
    names.sort_unstable();
    names.into_iter().find(|name| matches(spec, &dev.join(name), &class.join(name))).map(|name| dev.join(name))
}

/// Whether the device node `node` (sysfs directory `sysdir`) is what `spec`
/// names.
fn matches(spec: &CacheSpec, node: &Path, sysdir: &Path) -> bool {
    match spec {
        CacheSpec::Label(want) | CacheSpec::Uuid(want) => match read_ext4_superblock(node) {
            Ok(Some(info)) => match spec {
                CacheSpec::Label(_) => info.label == *want,
                _ => info.uuid.eq_ignore_ascii_case(want),
            },
            Ok(None) => false,
            Err(err) => {
                log::debug!("reading the superblock of {}: {err}", node.display());
                false
            }
        },
        CacheSpec::PartLabel(want) => partname(sysdir).is_some_and(|name| name == *want),
        CacheSpec::None | CacheSpec::Path(_) => false,
    }
}

/// The GPT partition name from a partition's `uevent` (`PARTNAME=`).
fn partname(sysdir: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    File::open(sysdir.join("uevent")).ok()?.take(MAX_UEVENT).read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| l.strip_prefix("PARTNAME=")).map(str::to_owned)
}

/// Why mounting or unmounting the cache failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// The mount point could not be created.
    #[error("creating mount point {}", path.display())]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// mount(2) failed.
    #[error("mounting {} on {}", device.display(), path.display())]
    Mount {
        /// The device.
        device: PathBuf,
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// umount(2) failed.
    #[error("unmounting {}", path.display())]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A mounted cache file system; unmounted when dropped.
#[derive(Debug)]
#[must_use = "the file system is unmounted when this is dropped"]
pub struct Mounted {
    path: PathBuf,
    mounted: bool,
}

impl Mounted {
    /// Mounts the ext4 file system on `device` at `mount_point` (created if
    /// missing), read-write with `nosuid,nodev,noexec`: nothing on the cache
    /// disk is ever executed or interpreted as a device.
    pub fn mount(device: &Path, mount_point: &Path) -> Result<Mounted, MountError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(mount_point)
            .map_err(|source| MountError::MountPoint { path: mount_point.to_owned(), source })?;
        let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        rustix::mount::mount(device, mount_point, "ext4", flags, None).map_err(|e| MountError::Mount {
            device: device.to_owned(),
            path: mount_point.to_owned(),
            source: e.into(),
        })?;
        log::debug!("mounted {} on {}", device.display(), mount_point.display());
        Ok(Mounted { path: mount_point.to_owned(), mounted: true })
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts now, reporting failure (dropping unmounts too, but can only
    /// log).
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.mounted = false;
        rustix::mount::unmount(&self.path, UnmountFlags::empty())
            .map_err(|e| MountError::Unmount { path: self.path.clone(), source: e.into() })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        if let Err(err) = rustix::mount::unmount(&self.path, UnmountFlags::empty()) {
            // Busy: detach it so it does not survive into the booted system's
            // view; the kernel finishes once the last user closes it.
            log::warn!("unmounting {}: {err}; detaching", self.path.display());
            if let Err(err) = rustix::mount::unmount(&self.path, UnmountFlags::DETACH) {
                log::warn!("detaching {}: {err}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn spec_parse_table() {
        let ok: &[(&str, CacheSpec)] = &[
            ("none", CacheSpec::None),
            ("LABEL=LKG", CacheSpec::Label("LKG".into())),
            ("LABEL=my disk", CacheSpec::Label("my disk".into())),
            ("UUID=0A1B-2c3d", CacheSpec::Uuid("0A1B-2c3d".into())),
            ("PARTLABEL=stateless-cache", CacheSpec::PartLabel("stateless-cache".into())),
            ("/dev/vdb1", CacheSpec::Path("/dev/vdb1".into())),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<CacheSpec>().as_ref(), Ok(want), "{s}");
            assert_eq!(want.to_string(), *s);
        }
        for s in ["", "LABEL=", "UUID=", "PARTLABEL=", "/dev/", "sdb1", "/tmp/x", "label=x", "None"] {
            assert!(s.parse::<CacheSpec>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn udev_encoding() {
        assert_eq!(udev_encode("LKG"), "LKG");
        assert_eq!(udev_encode("my disk"), "my\\x20disk");
        assert_eq!(udev_encode("a/b"), "a\\x2fb");
        assert_eq!(udev_encode("a\\b"), "a\\x5cb");
        assert_eq!(udev_encode("x#+-.:=@_y"), "x#+-.:=@_y");
        assert_eq!(udev_encode("café"), "café");
    }

    #[test]
    fn superblock_table() {
        let mut sb = [0u8; SUPERBLOCK_READ];
        assert_eq!(parse_superblock(&sb), None);
        sb[MAGIC_AT] = 0x53;
        sb[MAGIC_AT + 1] = 0xEF;
        for (i, b) in sb[UUID_AT..UUID_AT + 16].iter_mut().enumerate() {
            *b = i as u8 * 0x11;
        }
        let info = parse_superblock(&sb).unwrap();
        assert_eq!(info.uuid, "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(info.label, "");
        sb[LABEL_AT..LABEL_AT + 3].copy_from_slice(b"LKG");
        assert_eq!(parse_superblock(&sb).unwrap().label, "LKG");
        sb[LABEL_AT..LABEL_AT + 16].copy_from_slice(b"0123456789abcdef");
        assert_eq!(parse_superblock(&sb).unwrap().label, "0123456789abcdef");
    }
}
