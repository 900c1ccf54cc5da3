//! Block devices and the untrusted file systems on them: the one place that
//! lists devices, reads superblocks, tells a removable (USB) device from a
//! fixed one, mounts a device the node does not trust, and opens files on it.
//! The USB key source ([`crate::usb`]) and the loader's cache device both use
//! it.
//!
//! Everything here treats what it reads as hostile: a superblock is a few
//! bytes at fixed offsets, never a length to follow; files are opened
//! without following links and without blocking (a FIFO planted where a file
//! should be must not hang the boot) and must be regular files; mounts are
//! `nosuid,nodev,noexec,nosymfollow`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;

/// Most block devices looked at in one scan.
pub const MAX_DEVICES: usize = 256;
/// A sysfs attribute file is at most a page.
const MAX_ATTR: u64 = 4096;

/// The ext2/3/4 superblock starts 1024 bytes into the device.
const EXT4_SB_AT: u64 = 1024;
/// Bytes of the ext4 superblock read: up to the end of the volume name.
const EXT4_SB_LEN: usize = 136;
/// `s_magic` (little-endian u16) within the superblock.
const EXT4_MAGIC_AT: usize = 56;
/// `s_uuid` (16 bytes) within the superblock.
const EXT4_UUID_AT: usize = 104;
/// `s_volume_name` (16 bytes, NUL padded) within the superblock.
const EXT4_LABEL_AT: usize = 120;
/// ISO 9660: the primary volume descriptor is sector 16 of 2048 bytes.
const ISO_PVD_AT: u64 = 16 * 2048;

/// A file system found on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// FAT12/16/32.
    Vfat,
    /// ext2/3/4.
    Ext4,
    /// ISO 9660.
    Iso9660,
}

impl FsKind {
    /// The kernel's name for the file system type.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Vfat => "vfat",
            FsKind::Ext4 => "ext4",
            FsKind::Iso9660 => "iso9660",
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a device's superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The file system type.
    pub kind: FsKind,
    /// The volume label, possibly empty (trailing blanks removed).
    pub label: String,
    /// The file system UUID, lower case 8-4-4-4-12 (ext2/3/4 only).
    pub uuid: Option<String>,
}

/// Opens a device node or image file for reading without blocking (a FIFO
/// in a device directory must not hang a scan); anything but a block device
/// or a regular file is refused.
pub fn open_device(dev: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(OFlags::NONBLOCK.bits() as i32).open(dev)?;
    let t = file.metadata()?.file_type();
    if !(t.is_block_device() || t.is_file()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a block device or a file"));
    }
    Ok(file)
}

fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, at) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn label_text(raw: &[u8]) -> String {
    let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(raw).trim_end_matches(' ').to_owned()
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

/// Reads the file system type, label and (ext4) UUID of `dev`, a block
/// device or an image file. `Ok(None)`: none of vfat, ext2/3/4, iso9660.
pub fn probe(dev: &Path) -> io::Result<Option<Probe>> {
    let file = open_device(dev)?;
    let mut sb = [0u8; EXT4_SB_LEN];
    if read_at(&file, &mut sb, EXT4_SB_AT)? && sb.get(EXT4_MAGIC_AT..EXT4_MAGIC_AT + 2) == Some(&[0x53, 0xEF][..]) {
        return Ok(Some(Probe {
            kind: FsKind::Ext4,
            label: label_text(sb.get(EXT4_LABEL_AT..EXT4_LABEL_AT + 16).unwrap_or_default()),
            uuid: Some(format_uuid(sb.get(EXT4_UUID_AT..EXT4_UUID_AT + 16).unwrap_or_default())),
        }));
    }
    let mut pvd = [0u8; 72];
    if read_at(&file, &mut pvd, ISO_PVD_AT)? && pvd.first() == Some(&1) && pvd.get(1..6) == Some(&b"CD001"[..]) {
        let label = label_text(pvd.get(40..72).unwrap_or_default());
        return Ok(Some(Probe { kind: FsKind::Iso9660, label, uuid: None }));
    }
    // FAT: boot sector signature, then the extended BPB of FAT32 or FAT12/16
    // (boot signature 0x29 says the label field is valid).
    let mut bs = [0u8; 512];
    if !read_at(&file, &mut bs, 0)? || bs.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return Ok(None);
    }
    let label_at = if bs.get(82..87) == Some(&b"FAT32"[..]) && bs.get(66) == Some(&0x29) {
        71
    } else if bs.get(54..57) == Some(&b"FAT"[..]) && bs.get(38) == Some(&0x29) {
        43
    } else {
        return Ok(None);
    };
    let label = label_text(bs.get(label_at..label_at + 11).unwrap_or_default());
    let label = if label == "NO NAME" { String::new() } else { label };
    Ok(Some(Probe { kind: FsKind::Vfat, label, uuid: None }))
}

/// Reads a small sysfs attribute, trimmed.
fn attr(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    File::open(path).ok()?.take(MAX_ATTR).read_to_string(&mut text).ok()?;
    Some(text.trim().to_owned())
}

/// The names in `sys/class/block` (whole disks and partitions), in name
/// order, at most [`MAX_DEVICES`], leaving out empty devices (an unused
/// loop device, a CD drive with no disc: size 0).
pub fn block_names(sys: &Path) -> Vec<String> {
    let class = sys.join("class/block");
    let rd = match fs::read_dir(&class) {
        Ok(rd) => rd,
        Err(e) => {
            log::debug!("reading {}: {e}", class.display());
            return Vec::new();
        }
    };
    let mut names: Vec<String> =
        rd.take(MAX_DEVICES).flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort_unstable();
    names.retain(|n| attr(&class.join(n).join("size")).is_none_or(|s| s != "0"));
    names
}

/// The device nodes below `dev` of [`block_names`] that exist and are block
/// devices (or, in a test's fake tree, image files).
pub fn list_devices(sys: &Path, dev: &Path) -> Vec<PathBuf> {
    block_names(sys)
        .into_iter()
        .map(|n| dev.join(n))
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device() || m.is_file()))
        .collect()
}

/// The GPT partition name of block device `name` (`PARTNAME=` in its
/// sysfs `uevent`).
pub fn partname(sys: &Path, name: &str) -> Option<String> {
    let text = attr(&sys.join("class/block").join(name).join("uevent"))?;
    text.lines().find_map(|l| l.strip_prefix("PARTNAME=")).map(str::to_owned)
}

/// Why a device counts as removable, or `None` for a fixed disk: its disk's
/// sysfs `removable` flag is 1, or its sysfs path runs through a USB bus
/// (`…/usb1/1-2/…`; USB disks often say `removable` 0). `name` is the
/// device's name in `sys/class/block` (a partition's disk is its parent
/// directory in sysfs).
pub fn removable(sys: &Path, name: &str) -> Option<&'static str> {
    let link = sys.join("class/block").join(name);
    let real = fs::canonicalize(&link).unwrap_or(link);
    let on_usb = real.components().any(|c| match c {
        Component::Normal(s) => s
            .to_str()
            .and_then(|s| s.strip_prefix("usb"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    });
    if on_usb {
        return Some("on a USB bus");
    }
    // A partition has no `removable` file of its own; its disk (the parent
    // directory) has.
    let flag = attr(&real.join("removable")).or_else(|| real.parent().and_then(|p| attr(&p.join("removable"))));
    (flag.as_deref() == Some("1")).then_some("removable")
}

/// How a file system the node does not trust is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only; an ext4 journal is not replayed (`noload`), so nothing
    /// is written to the device, not even by journal recovery.
    ReadOnly,
    /// Read-write (the cache disk).
    ReadWrite,
}

/// Mounts `kind` on `dev` at `at` with `nosuid,nodev,noexec,nosymfollow`
/// (and `ro` plus `noload` for an ext4 [`Access::ReadOnly`] mount): nothing
/// on the device is executed, taken as a device or set-id, and no link on
/// it is followed, whoever opens files there. `nosymfollow` needs Linux
/// 5.10; an older kernel refuses the flag with `EINVAL`, and the mount is
/// retried without it (a debug line says so).
pub fn mount_untrusted(dev: &Path, at: &Path, kind: FsKind, access: Access) -> io::Result<()> {
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let mut data: Option<&std::ffi::CStr> = None;
    if access == Access::ReadOnly {
        flags |= MountFlags::RDONLY;
        if kind == FsKind::Ext4 {
            data = Some(c"noload");
        }
    }
    match rustix::mount::mount(dev, at, kind.name(), flags | MountFlags::NOSYMFOLLOW, data) {
        Err(Errno::INVAL) => {
            log::debug!(
                "mounting {} with nosymfollow: EINVAL (kernel before 5.10?); mounting without it",
                dev.display()
            );
            rustix::mount::mount(dev, at, kind.name(), flags, data).map_err(io::Error::from)
        }
        other => other.map_err(io::Error::from),
    }
}

/// Creates the directory `at` (mode 0700, parents as needed) to mount on,
/// and refuses it when it is anything but a real directory: `mount(2)`
/// follows a link, so a link planted at the mount point in the run
/// directory would put the device wherever it pointed.
pub fn make_mount_point(at: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(at)?;
    let meta = at.symlink_metadata()?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a symbolic link (not followed); not mounting there", at.display()),
        ));
    }
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory; not mounting there", at.display()),
        ));
    }
    Ok(())
}

/// Opens `name` in the directory `dir` for reading, without following a
/// link there (`O_NOFOLLOW`) and without blocking (`O_NONBLOCK`: a FIFO
/// opens at once), and refuses anything that is not a regular file.
pub fn open_regular_at(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(dir, name, read_flags(), Mode::empty())?;
    regular(File::from(fd))
}

/// [`open_regular_at`] for a path: the last component is not followed if it
/// is a link (directories above it are).
pub fn open_regular(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(path, read_flags(), Mode::empty())?;
    regular(File::from(fd))
}

/// Opens the directory `name` below `dir` without following a link. A
/// link there is an error that says "a symbolic link (not followed)" (the
/// kernel says ENOTDIR or ELOOP).
pub fn open_dir_at(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(e @ (Errno::NOTDIR | Errno::LOOP)) => {
            let link = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink);
            let what = if link { "a symbolic link (not followed)" } else { "not a directory" };
            Err(io::Error::new(io::Error::from(e).kind(), what))
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens a directory by path (the path's own links are followed: the caller
/// names it).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

fn regular(file: File) -> io::Result<File> {
    let t = file.metadata()?.file_type();
    if t.is_file() {
        return Ok(file);
    }
    let what = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({what})")))
}

/// A link where a file was expected reads as "a symbolic link", not as the
/// kernel's "Too many levels of symbolic links" (ELOOP, what `O_NOFOLLOW`
/// gives).
pub fn describe_open_error(e: &io::Error) -> String {
    if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) {
        "not a regular file (a symbolic link)".to_owned()
    } else if e.kind() == io::ErrorKind::NotFound {
        "missing".to_owned()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn mount_points_that_are_links_or_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let fresh = d.path().join("run/cache");
        make_mount_point(&fresh).unwrap();
        assert!(fresh.is_dir());
        make_mount_point(&fresh).unwrap();
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = d.path().join("run/usb");
        symlink(&elsewhere, &link).unwrap();
        let err = make_mount_point(&link).unwrap_err().to_string();
        assert!(err.ends_with("usb is a symbolic link (not followed); not mounting there"), "{err}");
        let file = d.path().join("run/file");
        std::fs::write(&file, "").unwrap();
        assert!(make_mount_point(&file).is_err());
    }

    #[test]
    fn ext4_superblock_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ext.img");
        let mut img = vec![0u8; 4096];
        img[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        for (i, b) in img[1024 + 104..1024 + 120].iter_mut().enumerate() {
            *b = i as u8 * 0x11;
        }
        img[1024 + 120..1024 + 136].copy_from_slice(b"0123456789abcdef");
        fs::write(&p, &img).unwrap();
        let got = probe(&p).unwrap().unwrap();
        assert_eq!(got.kind, FsKind::Ext4);
        assert_eq!(got.uuid.as_deref(), Some("00112233-4455-6677-8899-aabbccddeeff"));
        assert_eq!(got.label, "0123456789abcdef");
        fs::write(&p, [0u8; 100]).unwrap();
        assert_eq!(probe(&p).unwrap(), None);
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fifo = d.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        fs::write(d.join("outside"), "x").unwrap();
        symlink(&fifo, d.join("to-fifo")).unwrap();
        symlink(d.join("outside"), d.join("to-file")).unwrap();
        fs::create_dir(d.join("dir")).unwrap();
        for (name, want) in [
            ("fifo", "not a regular file (a FIFO)"),
            ("to-fifo", "not a regular file (a symbolic link)"),
            ("to-file", "not a regular file (a symbolic link)"),
            ("dir", "not a regular file (a directory)"),
            ("none", "missing"),
        ] {
            let e = open_regular(&d.join(name)).unwrap_err();
            assert_eq!(describe_open_error(&e), want, "{name}");
            let e = open_regular_at(&open_dir(d).unwrap(), name).unwrap_err();
            assert_eq!(describe_open_error(&e), want, "{name} (at)");
        }
        assert!(open_regular(&d.join("outside")).is_ok());
        assert!(open_dir_at(&open_dir(d).unwrap(), "dir").is_ok());
        symlink(d.join("dir"), d.join("to-dir")).unwrap();
        let e = open_dir_at(&open_dir(d).unwrap(), "to-dir").unwrap_err();
        assert_eq!(e.to_string(), "a symbolic link (not followed)");
        let e = open_dir_at(&open_dir(d).unwrap(), "outside").unwrap_err();
        assert_eq!(e.to_string(), "not a directory");
        assert!(probe(&fifo).is_err(), "a FIFO is not probed");
    }

    #[test]
    fn removable_and_usb_devices_in_a_fake_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let class = sys.join("class/block");
        fs::create_dir_all(&class).unwrap();
        let disks = [
            ("devices/pci0000:00/0000:00:04.0/virtio2/block/vda", "0"),
            ("devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb", "0"),
            ("devices/platform/mmc0/block/mmcblk0", "1"),
        ];
        for (path, flag) in disks {
            let disk = sys.join(path);
            let name = disk.file_name().unwrap().to_str().unwrap().to_owned();
            fs::create_dir_all(disk.join(format!("{name}1"))).unwrap();
            fs::write(disk.join("removable"), format!("{flag}\n")).unwrap();
            symlink(sys.join(path), class.join(&name)).unwrap();
            symlink(disk.join(format!("{name}1")), class.join(format!("{name}1"))).unwrap();
        }
        assert_eq!(removable(sys, "vda"), None);
        assert_eq!(removable(sys, "vda1"), None);
        assert_eq!(removable(sys, "sdb"), Some("on a USB bus"));
        assert_eq!(removable(sys, "sdb1"), Some("on a USB bus"));
        assert_eq!(removable(sys, "mmcblk0"), Some("removable"));
        assert_eq!(removable(sys, "mmcblk01"), Some("removable"));
        assert_eq!(removable(sys, "nosuch"), None);
        assert_eq!(block_names(sys), ["mmcblk0", "mmcblk01", "sdb", "sdb1", "vda", "vda1"]);
    }
}
