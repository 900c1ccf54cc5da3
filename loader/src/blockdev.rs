//! Finding and mounting the last-known-good cache device.
//!
//! `rd.stateless.cache=` names the device as `LABEL=…`, `UUID=…`,
//! `PARTLABEL=…`, `/dev/…` or `none` ([`CacheSpec`]; `PARTUUID=` becomes a
//! `/dev/disk/by-partuuid/…` path). [`find_device`] looks at every device in
//! `/sys/class/block`: labels and UUIDs from the ext4 superblock, partition
//! labels from the partition's `uevent` (`PARTNAME=`), through
//! [`stateless_keys::blockdev`], the probing the USB key source uses too;
//! udev's `/dev/disk/by-*` link, when there is one, adds the device it names.
//! The `/dev` and `/sys` roots are parameters so that tests can use fake
//! trees.
//!
//! A label is not an identity: anyone can write one on a USB stick. So a
//! label, UUID or partition label that two or more devices carry names no
//! device ([`FindError::Ambiguous`]), and one on a removable or USB device
//! is refused ([`FindError::Removable`]): such a device becomes the cache
//! only when the site names it by `PARTUUID=` or `/dev/…`. Either way the
//! boot goes on without a cache, and the console line says why.
//!
//! [`Mounted`] mounts the device (ext4, `nosuid,nodev,noexec,nosymfollow`)
//! and unmounts it when dropped, so an early return cannot leave the cache
//! mounted across switch-root.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustix::mount::UnmountFlags;
use stateless_keys::blockdev::{self as probe, Access, FsKind};

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

/// Why [`find_device`] names no device. The Display is the console line's
/// start; the loader adds "; booting without a cache".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FindError {
    /// No device carries the name (or `spec` is `none`).
    #[error("cache device {spec} not found")]
    NotFound {
        /// What was looked for.
        spec: String,
    },
    /// Two or more devices carry it: which one would be used is chance.
    #[error(
        "cache device {spec} is on {} devices ({}): refusing to guess; name one by PARTUUID= or /dev/… in rd.stateless.cache=",
        devices.len(),
        join(devices)
    )]
    Ambiguous {
        /// What was looked for.
        spec: String,
        /// Every device that carries it.
        devices: Vec<PathBuf>,
    },
    /// The only device that carries it is removable or on USB.
    #[error(
        "cache device {spec} is {}, which is {why}: not used as the cache unless rd.stateless.cache= names it by PARTUUID= or /dev/…",
        device.display()
    )]
    Removable {
        /// What was looked for.
        spec: String,
        /// The device.
        device: PathBuf,
        /// "removable" or "on a USB bus".
        why: &'static str,
    },
}

fn join(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Finds the device that `spec` names, below the `/dev` directory `dev` and
/// the sysfs root `sys` (`/dev` and `/sys` on a real machine). A device
/// named by path is used as named. A label, UUID or partition label must be
/// on exactly one device, and that device must be neither removable nor on
/// USB (see the module documentation).
pub fn find_device(spec: &CacheSpec, dev: &Path, sys: &Path) -> Result<PathBuf, FindError> {
    let not_found = || FindError::NotFound { spec: spec.to_string() };
    let (by, key) = match spec {
        CacheSpec::None => return Err(not_found()),
        CacheSpec::Path(p) => {
            // `/dev/sdb1` is looked up below `dev`, so tests can use a fake tree.
            let p = p.strip_prefix("/dev").map(|rel| dev.join(rel)).unwrap_or_else(|_| p.clone());
            return match fs::metadata(&p) {
                Ok(_) => Ok(p),
                Err(err) => {
                    log::debug!("cache device {}: {err}", p.display());
                    Err(not_found())
                }
            };
        }
        CacheSpec::Label(l) => ("by-label", udev_encode(l)),
        CacheSpec::Uuid(u) => ("by-uuid", u.to_ascii_lowercase()),
        CacheSpec::PartLabel(l) => ("by-partlabel", udev_encode(l)),
    };
    // (device node, name in sys/class/block)
    let mut found: Vec<(PathBuf, String)> = probe::block_names(sys)
        .into_iter()
        .filter(|name| matches(spec, &dev.join(name), sys, name))
        .map(|name| (dev.join(&name), name))
        .collect();
    let link = dev.join("disk").join(by).join(&key);
    if let Ok(target) = fs::canonicalize(&link) {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        log::debug!("cache device {spec}: {} via {}", target.display(), link.display());
        if !found.iter().any(|(_, n)| *n == name) {
            found.push((target, name));
        }
    }
    match found.as_slice() {
        [] => {
            log::debug!("cache device {spec}: no match in {} or {}", link.display(), sys.display());
            Err(not_found())
        }
        [(device, name)] => match probe::removable(sys, name) {
            Some(why) => Err(FindError::Removable { spec: spec.to_string(), device: device.clone(), why }),
            None => {
                log::debug!("cache device {spec}: {}", device.display());
                Ok(device.clone())
            }
        },
        more => {
            Err(FindError::Ambiguous { spec: spec.to_string(), devices: more.iter().map(|(d, _)| d.clone()).collect() })
        }
    }
}

/// Whether the device node `node` (`name` in `sys/class/block`) is what
/// `spec` names.
fn matches(spec: &CacheSpec, node: &Path, sys: &Path, name: &str) -> bool {
    match spec {
        CacheSpec::Label(want) | CacheSpec::Uuid(want) => match probe::probe(node) {
            Ok(Some(info)) if info.kind == FsKind::Ext4 => match spec {
                CacheSpec::Label(_) => info.label == *want,
                _ => info.uuid.is_some_and(|u| u.eq_ignore_ascii_case(want)),
            },
            Ok(_) => false,
            Err(err) => {
                log::debug!("reading the superblock of {}: {err}", node.display());
                false
            }
        },
        CacheSpec::PartLabel(want) => probe::partname(sys, name).is_some_and(|n| n == *want),
        CacheSpec::None | CacheSpec::Path(_) => false,
    }
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
    /// missing), read-write with `nosuid,nodev,noexec,nosymfollow`: nothing
    /// on the cache disk is ever executed, interpreted as a device or
    /// followed as a link (`nosymfollow` is left out on kernels before
    /// 5.10, see [`stateless_keys::blockdev::mount_untrusted`]; the cache
    /// opens its files without following links either way).
    pub fn mount(device: &Path, mount_point: &Path) -> Result<Mounted, MountError> {
        probe::make_mount_point(mount_point)
            .map_err(|source| MountError::MountPoint { path: mount_point.to_owned(), source })?;
        probe::mount_untrusted(device, mount_point, FsKind::Ext4, Access::ReadWrite)
            .map_err(|source| MountError::Mount { device: device.to_owned(), path: mount_point.to_owned(), source })?;
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
}

/// A file system labelled for local media (`rd.stateless.server=media:LABEL`),
/// mounted read-only with `nosuid,nodev,noexec,nosymfollow` (ext4 without
/// journal replay); unmounted when dropped.
#[derive(Debug)]
pub struct MediaMount {
    path: PathBuf,
    mounted: bool,
}

/// The devices among `devices` whose file system has the label `label`
/// (vfat labels compare without case, as FAT tools upper-case them), with
/// their kind.
pub fn find_media(devices: &[PathBuf], label: &str) -> Vec<(PathBuf, FsKind)> {
    devices
        .iter()
        .filter_map(|d| match probe::probe(d) {
            Ok(Some(p)) => {
                let same = if p.kind == FsKind::Vfat { p.label.eq_ignore_ascii_case(label) } else { p.label == label };
                same.then(|| (d.clone(), p.kind))
            }
            _ => None,
        })
        .collect()
}

impl MediaMount {
    /// Mounts `device` (of `kind`) read-only at `mount_point`.
    pub fn mount(device: &Path, kind: FsKind, mount_point: &Path) -> Result<MediaMount, MountError> {
        probe::make_mount_point(mount_point)
            .map_err(|source| MountError::MountPoint { path: mount_point.to_owned(), source })?;
        probe::mount_untrusted(device, mount_point, kind, Access::ReadOnly).map_err(|source| MountError::Mount {
            device: device.to_owned(),
            path: mount_point.to_owned(),
            source,
        })?;
        log::debug!("media {} ({kind}) mounted read-only on {}", device.display(), mount_point.display());
        Ok(MediaMount { path: mount_point.to_owned(), mounted: true })
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MediaMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        if let Err(err) = rustix::mount::unmount(&self.path, UnmountFlags::empty()) {
            log::warn!("unmounting {}: {err}; detaching", self.path.display());
            if let Err(err) = rustix::mount::unmount(&self.path, UnmountFlags::DETACH) {
                log::warn!("detaching {}: {err}", self.path.display());
            }
        }
    }
}
