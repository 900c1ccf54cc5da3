//! The staging directory: where a bundle is extracted while it is verified,
//! before anything of it is applied.
//!
//! It is a hidden directory directly under the root, `<sysroot>/.stateless-
//! staging.<random>`, mode 0700, so that it is on the root's own file system
//! and [`crate::apply`] moves each entry into place with one `rename`
//! instead of copying it and deleting the copy. With the overlay root
//! ([`crate::overlay`]) it is made through the overlay mount, so it lives in
//! the overlay's upper tmpfs like everything the bundle writes; nothing here
//! ever writes to the upper directory behind overlayfs's back.
//!
//! Invariants:
//!
//! - Nothing else in the root changes while a bundle is staged: the
//!   directory's name is new and random (a bundle cannot name it), and a
//!   [`Staging`] dropped or [`Staging::discard`]ed removes it and puts the
//!   root directory's own access and modification times back, so a bundle
//!   that fails to verify leaves the root as it was (only the root's ctime
//!   tells that a directory came and went).
//! - A staging directory left by a loader that was killed or lost power is
//!   removed by the next [`Staging::create`] (on a persistent root; the
//!   overlay's tmpfs does not survive a reboot).
//! - Apply never deletes it: whiteouts and opaque markers spare it.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

/// Name prefix of staging directories in the root.
pub const PREFIX: &str = ".stateless-staging.";

/// The staging directories this process has open: a stack holds one per
/// layer at once, and making the next must not remove the others as
/// leftovers of an earlier run.
/// With each, the root's times from before the first of them was made:
/// whichever is removed last puts those back.
static LIVE: std::sync::Mutex<Vec<(PathBuf, Timestamps)>> = std::sync::Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(PathBuf, Timestamps)>> {
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A staging directory in the root; removed when dropped.
#[derive(Debug)]
pub struct Staging {
    sysroot: PathBuf,
    path: PathBuf,
    /// The root directory's times before the staging directory was made.
    times: Timestamps,
    removed: bool,
}

impl Staging {
    /// Removes staging directories left behind by an earlier run, then
    /// makes a new one in `sysroot`.
    pub fn create(sysroot: &Path) -> io::Result<Staging> {
        remove_stale(sysroot);
        let md = fs::metadata(sysroot)?;
        let mut times = Timestamps {
            last_access: Timespec { tv_sec: md.atime(), tv_nsec: md.atime_nsec() },
            last_modification: Timespec { tv_sec: md.mtime(), tv_nsec: md.mtime_nsec() },
        };
        // Another staging directory of this run is already in this root:
        // its making changed the root's times, so the times to restore
        // are the ones it recorded.
        if let Some((_, t)) = live().iter().find(|(p, _)| p.parent() == Some(sysroot)) {
            times = Timestamps {
                last_access: Timespec { tv_sec: t.last_access.tv_sec, tv_nsec: t.last_access.tv_nsec },
                last_modification: Timespec {
                    tv_sec: t.last_modification.tv_sec,
                    tv_nsec: t.last_modification.tv_nsec,
                },
            };
        }
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(format!("reading the OS random source: {e}")))?;
        let path = sysroot.join(format!("{PREFIX}{:016x}", u64::from_le_bytes(bytes)));
        // Not recursive: the directory must be new, and the root must exist.
        DirBuilder::new().mode(0o700).create(&path)?;
        let copy = Timestamps {
            last_access: Timespec { tv_sec: times.last_access.tv_sec, tv_nsec: times.last_access.tv_nsec },
            last_modification: Timespec {
                tv_sec: times.last_modification.tv_sec,
                tv_nsec: times.last_modification.tv_nsec,
            },
        };
        live().push((path.clone(), copy));
        Ok(Staging { sysroot: sysroot.to_owned(), path, times, removed: false })
    }

    /// The directory to extract into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the staging directory after a failure, and gives the root
    /// back its times: the root is as it was.
    pub fn discard(mut self) {
        self.remove(true);
    }

    /// Removes what is left of the staging directory after apply moved its
    /// contents into the root (the root's times are the apply's).
    pub fn finish(mut self) {
        self.remove(false);
    }

    fn remove(&mut self, restore_times: bool) {
        if self.removed {
            return;
        }
        self.removed = true;
        live().retain(|(p, _)| p != &self.path);
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("removing {}: {e}", self.path.display());
            }
        }
        if restore_times {
            if let Err(e) = rustix::fs::utimensat(CWD, &self.sysroot, &self.times, AtFlags::empty()) {
                log::debug!("restoring the times of {}: {e}", self.sysroot.display());
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.remove(true);
    }
}

/// Removes `<sysroot>/.stateless-staging.*` directories (never following a
/// symlink: `remove_dir_all` does not).
fn remove_stale(sysroot: &Path) {
    let Ok(entries) = fs::read_dir(sysroot) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().starts_with(PREFIX.as_bytes()) || live().iter().any(|(p, _)| *p == entry.path()) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            log::info!("removing a staging directory left by an earlier run: {}", entry.path().display());
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                log::warn!("removing {}: {e}", entry.path().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discard_leaves_the_root_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("keep"), "x").unwrap();
        let t = Timespec { tv_sec: 1_000_000, tv_nsec: 5 };
        rustix::fs::utimensat(CWD, &root, &Timestamps { last_access: t, last_modification: t }, AtFlags::empty())
            .unwrap();
        let staging = Staging::create(&root).unwrap();
        let md = fs::metadata(staging.path()).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o700);
        assert!(staging.path().file_name().unwrap().to_str().unwrap().starts_with(PREFIX));
        fs::create_dir_all(staging.path().join("etc/sub")).unwrap();
        fs::write(staging.path().join("etc/sub/f"), "y").unwrap();
        staging.discard();
        let names: Vec<_> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["keep"]);
        let md = fs::metadata(&root).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000, 5));
    }

    #[test]
    fn drop_removes_and_create_clears_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let left = tmp.path().join(format!("{PREFIX}0123456789abcdef"));
        fs::create_dir_all(left.join("etc")).unwrap();
        // A file with the prefix is not ours to remove.
        fs::write(tmp.path().join(format!("{PREFIX}file")), "x").unwrap();
        let staging = Staging::create(tmp.path()).unwrap();
        assert!(!left.exists());
        let path = staging.path().to_owned();
        drop(staging);
        assert!(!path.exists());
        assert!(tmp.path().join(format!("{PREFIX}file")).exists());
    }
}
