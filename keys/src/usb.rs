//! Keys on a USB stick: a file system labelled `STATELESS` (or another
//! label) holding key files at `/stateless/keys/*.key`.
//!
//! **Finding the stick.** Every block device in `/sys/class/block` (whole
//! disks and partitions) is probed by reading its superblock directly:
//! vfat (boot sector label), ext2/3/4 (`s_volume_name`) and iso9660 (the
//! primary volume descriptor's volume id). udev is not needed and may not
//! have settled this early in boot.
//!
//! **Reading it.** A vfat stick, the usual case, is read in user space by
//! [`crate::fat`], a small bounded FAT reader, from a read-only file
//! descriptor: no kernel module, no mount, nothing the kernel's FAT driver
//! would parse, and no way to write. ext4 and iso9660 sticks are mounted read-only with
//! `nosuid,nodev,noexec` on a private mount point, read, and unmounted.
//!
//! Everything on a stick is untrusted: at most [`MAX_DIR_ENTRIES`] directory
//! entries are looked at, at most [`MAX_KEYS`] key files read, each at most
//! [`MAX_KEY_FILE_LEN`] bytes.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};
use stateless_bundle::Key;
use stateless_bundle::key::MAX_KEY_FILE_LEN;
use zeroize::Zeroizing;

use crate::fat;
use crate::source::{KeySource, KeySourceError};

/// The label looked for when none is given.
pub const DEFAULT_LABEL: &str = "STATELESS";
/// Directory on the stick that holds the key files.
pub const STICK_KEY_DIR: &str = "stateless/keys";
/// Most key files read from one stick.
pub const MAX_KEYS: usize = 64;
/// Most directory entries looked at in any one directory of a stick (a
/// corrupt FAT can make a directory's cluster chain loop forever).
pub const MAX_DIR_ENTRIES: usize = 1024;
/// Most block devices probed.
pub const MAX_DEVICES: usize = 256;
/// Where ext4 and iso9660 sticks are mounted in the initramfs.
pub const DEFAULT_MOUNT_DIR: &str = "/run/stateless/usb";

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

/// Reads the file system type and label of `dev` (a block device or an
/// image file) from its superblock. `Ok(None)`: none of the three.
pub fn probe(dev: &Path) -> io::Result<Option<(FsKind, String)>> {
    let file = File::open(dev)?;
    // ext2/3/4: superblock at 1024, magic 0xEF53 at +56, label at +120.
    let mut sb = [0u8; 136];
    if read_at(&file, &mut sb, 1024)? && sb.get(56..58) == Some(&[0x53, 0xEF][..]) {
        return Ok(Some((FsKind::Ext4, label_text(sb.get(120..136).unwrap_or_default()))));
    }
    // ISO 9660: primary volume descriptor in sector 16 (2048-byte sectors).
    let mut pvd = [0u8; 72];
    if read_at(&file, &mut pvd, 16 * 2048)? && pvd.first() == Some(&1) && pvd.get(1..6) == Some(&b"CD001"[..]) {
        return Ok(Some((FsKind::Iso9660, label_text(pvd.get(40..72).unwrap_or_default()))));
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
    Ok(Some((FsKind::Vfat, if label == "NO NAME" { String::new() } else { label })))
}

/// Whether a probed label is the wanted one. FAT labels are upper case by
/// convention (tools upper-case them), so they compare without case.
fn label_matches(kind: FsKind, have: &str, want: &str) -> bool {
    match kind {
        FsKind::Vfat => have.eq_ignore_ascii_case(want),
        _ => have == want,
    }
}

/// Parses the key files in a list of (name, bytes), logging and skipping
/// the ones that are not keys.
fn keys_from(files: Vec<(String, Zeroizing<Vec<u8>>)>, origin: &str) -> Vec<Key> {
    let mut keys = Vec::new();
    for (name, text) in files {
        match Key::from_file_text(&text) {
            Ok(k) => keys.push(k),
            // One bad file must not hide the good ones beside it.
            Err(e) => log::warn!("{origin}: skipping {name}: {e}"),
        }
    }
    keys
}

/// Reads the key files of a FAT file system in user space ([`crate::fat`]).
pub fn read_fat_keys(dev: &Path) -> io::Result<Vec<Key>> {
    let vol = fat::Volume::open(File::open(dev)?)?;
    let mut dir = vol.root()?;
    for part in STICK_KEY_DIR.split('/') {
        let sub = dir.iter().take(MAX_DIR_ENTRIES).find(|e| e.is_dir && e.name.eq_ignore_ascii_case(part));
        match sub {
            Some(sub) => dir = vol.list(sub)?,
            None => return Ok(Vec::new()),
        }
    }
    let mut entries: Vec<_> = dir
        .into_iter()
        .take(MAX_DIR_ENTRIES)
        .filter(|e| !e.is_dir && e.name.to_ascii_lowercase().ends_with(".key"))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut files = Vec::new();
    for e in entries.into_iter().take(MAX_KEYS) {
        let text = vol.read(&e, MAX_KEY_FILE_LEN as u64 + 1)?;
        files.push((e.name, text));
    }
    Ok(keys_from(files, &dev.display().to_string()))
}

/// Reads the key files below a mounted stick's root.
fn read_dir_keys(root: &Path, origin: &str) -> io::Result<Vec<Key>> {
    let dir = root.join(STICK_KEY_DIR);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = rd
        .take(MAX_DIR_ENTRIES)
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    for p in paths.into_iter().take(MAX_KEYS) {
        let mut text = Zeroizing::new(Vec::new());
        File::open(&p)?.take(MAX_KEY_FILE_LEN as u64 + 1).read_to_end(&mut text)?;
        files.push((p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), text));
    }
    Ok(keys_from(files, origin))
}

/// A read-only mount, unmounted when dropped.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn mount(dev: &Path, kind: FsKind, at: &Path) -> io::Result<ReadOnlyMount> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(at)?;
        // Nothing on a stick is ever executed, interpreted as a device or
        // honoured as set-id, and nothing is written (not even atime).
        let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        rustix::mount::mount(dev, at, kind.name(), flags, None)?;
        Ok(ReadOnlyMount(at.to_owned()))
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.0, UnmountFlags::empty()) {
            log::warn!("unmounting {}: {e}; detaching", self.0.display());
            let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}

/// Where the USB source looks for devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// Every block device of `sys/class/block`, as nodes under `dev`
    /// (`/sys` and `/dev` on a machine).
    Scan {
        /// The sysfs root.
        sys: PathBuf,
        /// The device directory.
        dev: PathBuf,
    },
    /// Exactly these devices or image files (tests, and `--usb-device`).
    List(Vec<PathBuf>),
}

impl Default for Devices {
    fn default() -> Devices {
        Devices::Scan { sys: PathBuf::from("/sys"), dev: PathBuf::from("/dev") }
    }
}

impl Devices {
    /// The candidate devices now, in name order.
    pub fn list(&self) -> Vec<PathBuf> {
        match self {
            Devices::List(l) => l.clone(),
            Devices::Scan { sys, dev } => {
                let class = sys.join("class/block");
                let Ok(rd) = fs::read_dir(&class) else { return Vec::new() };
                let mut names: Vec<String> =
                    rd.take(MAX_DEVICES).flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
                names.sort_unstable();
                names
                    .into_iter()
                    // Empty devices (an unused loop device, a CD drive with
                    // no disc) have size 0 and nothing to probe.
                    .filter(|n| fs::read_to_string(class.join(n).join("size")).map_or(true, |s| s.trim() != "0"))
                    .map(|n| dev.join(n))
                    .filter(|p| fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device() || m.is_file()))
                    .collect()
            }
        }
    }
}

/// Keys from the USB stick(s) labelled `label`.
#[derive(Debug, Clone)]
pub struct UsbSource {
    /// The file system label looked for.
    pub label: String,
    /// Where devices are looked for.
    pub devices: Devices,
    /// Mount point for ext4 and iso9660 sticks.
    pub mount_dir: PathBuf,
}

impl UsbSource {
    /// A source for `label` scanning the machine's block devices.
    pub fn new(label: &str) -> UsbSource {
        UsbSource { label: label.to_owned(), devices: Devices::default(), mount_dir: PathBuf::from(DEFAULT_MOUNT_DIR) }
    }

    fn read_device(&self, dev: &Path, kind: FsKind) -> io::Result<Vec<Key>> {
        match kind {
            FsKind::Vfat => read_fat_keys(dev),
            FsKind::Ext4 | FsKind::Iso9660 => {
                let mount = ReadOnlyMount::mount(dev, kind, &self.mount_dir)?;
                let keys = read_dir_keys(&mount.0, &dev.display().to_string());
                drop(mount);
                keys
            }
        }
    }
}

impl KeySource for UsbSource {
    fn describe(&self) -> String {
        format!("USB stick {}", self.label)
    }

    fn keys(&self) -> Result<Vec<Key>, KeySourceError> {
        let mut keys = Vec::new();
        let mut matched = 0;
        let mut errors = Vec::new();
        for dev in self.devices.list() {
            let kind = match probe(&dev) {
                Ok(Some((kind, label))) if label_matches(kind, &label, &self.label) => kind,
                Ok(_) => continue,
                Err(e) => {
                    log::debug!("probing {}: {e}", dev.display());
                    continue;
                }
            };
            matched += 1;
            match self.read_device(&dev, kind) {
                Ok(k) => {
                    log::debug!("{} ({}): {} key(s)", dev.display(), kind.name(), k.len());
                    keys.extend(k);
                }
                Err(e) => errors.push(format!("{} ({}): {e}", dev.display(), kind.name())),
            }
        }
        if matched == 0 {
            return Err(KeySourceError::Absent("not found".into()));
        }
        if keys.is_empty() && !errors.is_empty() {
            return Err(KeySourceError::Failed(errors.join("; ")));
        }
        for e in errors {
            log::warn!("{e}");
        }
        Ok(keys)
    }
}

/// Why a label cannot be written to a FAT file system.
pub fn check_fat_label(label: &str) -> Result<[u8; 11], String> {
    let ok = !label.is_empty()
        && label.len() <= 11
        && label.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return Err(format!("label {label:?}: a FAT label is 1 to 11 upper-case letters, digits, '_' or '-'"));
    }
    let mut out = [b' '; 11];
    for (o, b) in out.iter_mut().zip(label.bytes()) {
        *o = b;
    }
    Ok(out)
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vfat image made by the standard tools, with `keys` at the
    /// documented path.
    fn image(dir: &Path, name: &str, label: &str, size: u64, keys: &[&Key], fat: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        let st = std::process::Command::new("mkfs.vfat").args(["-F", fat, "-n", label]).arg(&p).output().unwrap();
        assert!(st.status.success(), "mkfs.vfat (dosfstools): {}", String::from_utf8_lossy(&st.stderr));
        for k in keys {
            let text = k.to_file_text();
            let script = format!(
                "mmd -i {0} -D s ::/stateless ::/stateless/keys; printf '%s' \"$KEY\" | mcopy -i {0} - ::/stateless/keys/{1}.key",
                p.display(),
                k.id()
            );
            let st = std::process::Command::new("bash")
                .args(["-c", &script])
                .env("MTOOLS_SKIP_CHECK", "1")
                .env("KEY", &text)
                .output()
                .unwrap();
            assert!(st.status.success(), "mtools: {}", String::from_utf8_lossy(&st.stderr));
        }
        p
    }

    #[test]
    fn fat_image_with_rotated_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Key::generate().unwrap(), Key::generate().unwrap());
        let img = image(dir.path(), "usb.img", "STATELESS", 8 << 20, &[&old, &new], "12");
        assert_eq!(probe(&img).unwrap(), Some((FsKind::Vfat, "STATELESS".into())));
        let src = UsbSource {
            label: "stateless".into(),
            devices: Devices::List(vec![img.clone()]),
            mount_dir: dir.path().join("m"),
        };
        let mut ids: Vec<_> = src.keys().unwrap().iter().map(Key::id).collect();
        let mut want = vec![old.id(), new.id()];
        ids.sort_by_key(|i| i.0);
        want.sort_by_key(|i| i.0);
        assert_eq!(ids, want);
        let other = UsbSource { label: "KEYS".into(), ..src };
        assert_eq!(other.keys().unwrap_err().to_string(), "not found");
    }

    #[test]
    fn fat16_and_fat32_sticks_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::generate().unwrap();
        for (fat, size) in [("16", 32 << 20), ("32", 64 << 20)] {
            let img = image(dir.path(), &format!("fat{fat}.img"), "STATELESS", size, &[&k], fat);
            let keys = read_fat_keys(&img).unwrap();
            assert_eq!(keys.iter().map(Key::id).collect::<Vec<_>>(), vec![k.id()], "FAT{fat}");
        }
    }

    #[test]
    fn looping_cluster_chain_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::generate().unwrap();
        let img = image(dir.path(), "loop.img", "STATELESS", 32 << 20, &[&k], "16");
        // mkfs.vfat and mmd put /stateless in cluster 2 and /stateless/keys
        // in cluster 3; make cluster 3's FAT16 entry point back at itself.
        let bs = std::fs::read(&img).unwrap();
        let fat_at = u64::from(u16::from_le_bytes([bs[14], bs[15]])) * u64::from(u16::from_le_bytes([bs[11], bs[12]]));
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&3u16.to_le_bytes(), fat_at + 6).unwrap();
        let err = read_fat_keys(&img).unwrap_err().to_string();
        assert!(err.contains("cluster chain loops at cluster 3"), "{err}");
    }

    #[test]
    fn directory_naming_a_reserved_cluster_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::generate().unwrap();
        let img = image(dir.path(), "c1.img", "STATELESS", 8 << 20, &[&k], "12");
        // Point /stateless (short name STATEL~1) at cluster 1, which holds
        // no data: a corrupt stick once made a FAT library panic here.
        let bytes = std::fs::read(&img).unwrap();
        let at = bytes.windows(8).position(|w| w == b"STATEL~1").unwrap() as u64;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&1u16.to_le_bytes(), at + 26).unwrap();
        let err = read_fat_keys(&img).unwrap_err().to_string();
        assert!(err.contains("cluster 1 out of range"), "{err}");
    }

    #[test]
    fn big_fat32_label_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "big.img", "SITE-2", 300 << 20, &[], "32");
        assert_eq!(probe(&img).unwrap(), Some((FsKind::Vfat, "SITE-2".into())));
    }

    #[test]
    fn iso9660_and_ext4_labels() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("cd.iso");
        let mut img = vec![0u8; 17 * 2048];
        img[16 * 2048] = 1;
        img[16 * 2048 + 1..16 * 2048 + 6].copy_from_slice(b"CD001");
        let mut id = [b' '; 32];
        id[..9].copy_from_slice(b"STATELESS");
        img[16 * 2048 + 40..16 * 2048 + 72].copy_from_slice(&id);
        std::fs::write(&iso, &img).unwrap();
        assert_eq!(probe(&iso).unwrap(), Some((FsKind::Iso9660, "STATELESS".into())));
        let ext = dir.path().join("ext.img");
        let mut img = vec![0u8; 4096];
        img[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        img[1024 + 120..1024 + 129].copy_from_slice(b"stateless");
        std::fs::write(&ext, &img).unwrap();
        assert_eq!(probe(&ext).unwrap(), Some((FsKind::Ext4, "stateless".into())));
        // ext4 labels compare exactly, FAT labels without case.
        assert!(!label_matches(FsKind::Ext4, "stateless", "STATELESS"));
        assert!(label_matches(FsKind::Vfat, "stateless", "STATELESS"));
    }

    #[test]
    fn labels() {
        assert!(check_fat_label("STATELESS").is_ok());
        for bad in ["", "stateless", "TWELVE_CHARS", "A B"] {
            assert!(check_fat_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_stick() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        let mut junk = vec![0xA5u8; 70_000];
        junk[510] = 0x55;
        junk[511] = 0xAA;
        junk[54..57].copy_from_slice(b"FAT");
        junk[38] = 0x29;
        std::fs::write(&p, &junk).unwrap();
        // Probes as FAT by its signature, but the reader refuses the BPB: an error, no panic.
        assert_eq!(probe(&p).unwrap().map(|(k, _)| k), Some(FsKind::Vfat));
        assert!(read_fat_keys(&p).is_err());
        std::fs::write(&p, b"short").unwrap();
        assert_eq!(probe(&p).unwrap(), None);
    }
}
