//! Keys on a USB stick: a file system labelled `STATELESS` (or another
//! label) holding key files at `/stateless/keys/*.key`.
//!
//! **Finding the stick.** Every block device in `/sys/class/block` (whole
//! disks and partitions) is probed by reading its superblock directly
//! ([`crate::blockdev::probe`]): vfat (boot sector label), ext2/3/4
//! (`s_volume_name`) and iso9660 (the primary volume descriptor's volume
//! id). udev is not needed and may not have settled this early in boot.
//!
//! **Reading it.** A vfat stick, the usual case, is read in user space by
//! [`crate::fat`], a small bounded FAT reader, from a read-only file
//! descriptor: no kernel module, no mount, nothing the kernel's FAT driver
//! would parse, and no way to write. ext4 and iso9660 sticks are mounted
//! on a private mount point with `ro,nosuid,nodev,noexec,nosymfollow` (and
//! `noload` for ext4, so a journal that needs recovery is not replayed onto
//! the stick), read, and unmounted. `stateless`, `keys` and each key file
//! are opened without following links, so a stick cannot point the loader
//! at a directory or file elsewhere; a key file must be a regular file.
//!
//! Everything on a stick is untrusted: at most [`MAX_DIR_ENTRIES`] directory
//! entries are looked at, at most [`MAX_KEYS`] key files read, each at most
//! [`MAX_KEY_FILE_LEN`] bytes.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;
use stateless_bundle::Key;
use stateless_bundle::key::MAX_KEY_FILE_LEN;
use zeroize::Zeroizing;

use crate::blockdev::{self, Access};
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
/// Where ext4 and iso9660 sticks are mounted in the initramfs.
pub const DEFAULT_MOUNT_DIR: &str = "/run/stateless/usb";

pub use crate::blockdev::{FsKind, MAX_DEVICES};

/// Reads the file system type and label of `dev` (a block device or an
/// image file) from its superblock ([`blockdev::probe`]). `Ok(None)`: none
/// of vfat, ext2/3/4, iso9660.
pub fn probe(dev: &Path) -> io::Result<Option<(FsKind, String)>> {
    Ok(blockdev::probe(dev)?.map(|p| (p.kind, p.label)))
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
    let vol = fat::Volume::open(blockdev::open_device(dev)?)?;
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

/// Reads the key files below a mounted stick's root. Nothing on the stick
/// is followed: `stateless`, `keys` and each key file are opened relative to
/// their directory with `O_NOFOLLOW`, so a link (to a directory or file off
/// the stick) is refused, whatever the mount's `nosymfollow` does; a key
/// file must be a regular file (a FIFO is refused without blocking).
fn read_dir_keys(root: &Path, origin: &str) -> io::Result<Vec<Key>> {
    let mut dir = blockdev::open_dir(root)?;
    for part in STICK_KEY_DIR.split('/') {
        dir = match blockdev::open_dir_at(&dir, part) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{part}: {e}"))),
        };
    }
    let mut names: Vec<String> = rustix::fs::Dir::read_from(&dir)?
        .take(MAX_DIR_ENTRIES)
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n.ends_with(".key") && n.len() > ".key".len())
        .collect();
    names.sort();
    let mut files = Vec::new();
    for name in names.into_iter().take(MAX_KEYS) {
        let mut file = match blockdev::open_regular_at(&dir, &name) {
            Ok(f) => f,
            Err(e) => {
                // One planted link or FIFO must not hide the good keys beside it.
                log::warn!("{origin}: skipping {name}: {}", blockdev::describe_open_error(&e));
                continue;
            }
        };
        let mut text = Zeroizing::new(Vec::new());
        file.by_ref().take(MAX_KEY_FILE_LEN as u64 + 1).read_to_end(&mut text)?;
        files.push((name, text));
    }
    Ok(keys_from(files, origin))
}

/// A read-only mount, unmounted when dropped.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn mount(dev: &Path, kind: FsKind, at: &Path) -> io::Result<ReadOnlyMount> {
        blockdev::make_mount_point(at)?;
        // Nothing on a stick is ever executed, interpreted as a device,
        // honoured as set-id or followed as a link, and nothing is written:
        // not even atime, nor an ext4 journal replay (`noload`).
        blockdev::mount_untrusted(dev, at, kind, Access::ReadOnly)?;
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
            Devices::Scan { sys, dev } => blockdev::list_devices(sys, dev),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

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

    /// Tests that need root or a tool fail without it, unless
    /// `STATELESS_TEST_ALLOW_SKIP=1` (then they print "skipped" and pass).
    fn missing(why: &str) {
        if std::env::var_os("STATELESS_TEST_ALLOW_SKIP").is_some_and(|v| v == "1") {
            eprintln!("skipped: {why}");
            return;
        }
        panic!("prerequisite missing: {why} (set STATELESS_TEST_ALLOW_SKIP=1 to skip instead of failing)");
    }

    /// A loop device over an image, detached on drop.
    struct Loop(PathBuf);

    impl Loop {
        fn attach(img: &Path) -> Option<Loop> {
            if !rustix::process::geteuid().is_root() {
                missing("loop devices need root");
                return None;
            }
            let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(img).output().ok()?;
            if !out.status.success() {
                missing("losetup does not work here");
                return None;
            }
            Some(Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())))
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }

    /// An ext4 image labelled STATELESS holding the tree `src`, with a
    /// journal; `recovery` marks the journal as needing recovery, as a
    /// stick pulled out while mounted would be.
    fn ext4_stick(dir: &Path, src: &Path, recovery: bool) -> Option<PathBuf> {
        let img = dir.join("stick.img");
        std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "STATELESS", "-d"])
            .arg(src)
            .arg(&img)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            missing("mkfs.ext4 -d (e2fsprogs 1.43 or later)");
            return None;
        }
        if recovery {
            let st =
                std::process::Command::new("debugfs").args(["-w", "-R", "feature needs_recovery"]).arg(&img).output();
            assert!(st.is_ok_and(|o| o.status.success()), "debugfs");
        }
        Some(img)
    }

    fn sha(path: &Path) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
    }

    fn source(dir: &Path, dev: &Path) -> UsbSource {
        UsbSource {
            label: "STATELESS".into(),
            devices: Devices::List(vec![dev.to_owned()]),
            mount_dir: dir.join("mnt"),
        }
    }

    #[test]
    fn ext4_stick_needing_journal_recovery_is_read_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::generate().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join(STICK_KEY_DIR)).unwrap();
        std::fs::write(src.join(STICK_KEY_DIR).join("site.key"), k.to_file_text()).unwrap();
        let Some(img) = ext4_stick(dir.path(), &src, true) else { return };
        let before = sha(&img);
        let Some(lo) = Loop::attach(&img) else { return };
        let keys = source(dir.path(), &lo.0).keys().unwrap();
        assert_eq!(keys.iter().map(Key::id).collect::<Vec<_>>(), [k.id()]);
        drop(lo);
        assert!(sha(&img) == before, "the stick was written (journal replayed?)");
    }

    #[test]
    fn ext4_stick_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        // Keys off the stick, in the initramfs, that a stick must not be
        // able to point the loader at.
        let (off, good) = (Key::generate().unwrap(), Key::generate().unwrap());
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(elsewhere.join("keys")).unwrap();
        std::fs::write(elsewhere.join("keys/off.key"), off.to_file_text()).unwrap();
        std::fs::write(elsewhere.join("off.key"), off.to_file_text()).unwrap();

        // 1. `stateless/keys` is a link to a directory off the stick; 2. so
        // is `stateless`; 3. key files that are links (absolute, and
        // relative within the stick) and a FIFO beside a good key.
        type Layout = fn(&Path, &Path, &Key);
        let layouts: [(&str, Layout); 3] = [
            ("keys dir", |src, off, _| {
                std::fs::create_dir_all(src.join("stateless")).unwrap();
                std::os::unix::fs::symlink(off.join("keys"), src.join(STICK_KEY_DIR)).unwrap();
            }),
            ("stateless dir", |src, off, _| std::os::unix::fs::symlink(off, src.join("stateless")).unwrap()),
            ("key files", |src, off, good| {
                let keys = src.join(STICK_KEY_DIR);
                std::fs::create_dir_all(&keys).unwrap();
                std::fs::write(keys.join("b-good.key"), good.to_file_text()).unwrap();
                std::os::unix::fs::symlink(off.join("off.key"), keys.join("a-abs.key")).unwrap();
                std::os::unix::fs::symlink("b-good.key", keys.join("c-rel.key")).unwrap();
                assert!(std::process::Command::new("mkfifo").arg(keys.join("d-fifo.key")).status().unwrap().success());
            }),
        ];
        for (what, layout) in layouts {
            let case = dir.path().join(what.replace(' ', "-"));
            let src = case.join("src");
            std::fs::create_dir_all(&src).unwrap();
            layout(&src, &elsewhere, &good);
            let Some(img) = ext4_stick(&case, &src, false) else { return };
            let Some(lo) = Loop::attach(&img) else { return };
            let got = source(&case, &lo.0).keys();
            match what {
                "key files" => {
                    let ids: Vec<_> = got.unwrap().iter().map(Key::id).collect();
                    assert_eq!(ids, [good.id()], "{what}");
                }
                _ => {
                    let err = got.unwrap_err().to_string();
                    assert!(err.contains("a symbolic link (not followed)"), "{what}: {err}");
                }
            }
        }
    }
}
