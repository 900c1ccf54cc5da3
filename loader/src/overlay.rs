//! The overlay root: a tmpfs upper layer over the original root, so that a
//! bundle is applied without ever writing the base image.
//!
//! [`prepare`] runs before the pipeline. It decides from `rd.stateless.overlay=`
//! and the root's mount ([`decide`]):
//!
//! - `rd.stateless.overlay=1`: overlay, whatever the root;
//! - `rd.stateless.overlay=0`: never; a root mounted read-only is remounted
//!   read-write so that the bundle can be applied;
//! - unset: overlay when the root cannot be written: a read-only file system
//!   type (squashfs, iso9660, erofs, cramfs), a read-only NFS mount, or a
//!   read-only mount that refuses to be remounted read-write (a read-only
//!   block device). A root that is only *mounted* read-only (`ro` on the
//!   kernel command line, as Debian boots) is remounted read-write instead.
//!
//! The overlay is built where it survives switch-root: a tmpfs at
//! `{run_dir}/overlay` (`/run/stateless/overlay`, which dracut and systemd
//! move into the new root's `/run`) holding `upper/` and `work/`, and a
//! read-only bind mount of the original root at `lower/`. The overlayfs is
//! then mounted on top of the sysroot, shadowing the original mount. A bind
//! instead of a move because systemd makes `/` a shared mount in the
//! initramfs, and a mount under a shared parent cannot be moved.
//!
//! Nothing here touches the original root's contents: the bind is remounted
//! read-only before the overlay is made, so even a bug above could not write
//! through to the base image.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

/// Directory below the run directory where the overlay's parts live.
pub const OVERLAY_DIR: &str = "overlay";

/// File system magic numbers (`statfs.f_type`) of read-only file systems.
const READ_ONLY_FS: [(i64, &str); 4] =
    [(0x7371_7368, "squashfs"), (0x9660, "iso9660"), (0xE0F5_E1E2, "erofs"), (0x28CD_3D45, "cramfs")];
/// NFS, which says read-only only through the mount flag.
const NFS_MAGIC: i64 = 0x6969;

/// What the root looks like, as far as the decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootState {
    /// Mounted read-only.
    pub read_only_mount: bool,
    /// A file system that cannot be written at all (squashfs, …), by name.
    pub read_only_fs: Option<&'static str>,
    /// An NFS mount.
    pub nfs: bool,
}

/// What [`prepare`] is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Leave the root as it is.
    Nothing,
    /// Remount read-write; if that is refused and `overlay_on_refusal`, make
    /// the overlay instead.
    RemountRw {
        /// Fall back to the overlay when the remount is refused.
        overlay_on_refusal: bool,
    },
    /// Make the overlay.
    Overlay,
}

/// The decision table (see the module docs).
pub fn decide(want: Option<bool>, root: RootState) -> Plan {
    match want {
        Some(true) => Plan::Overlay,
        Some(false) if root.read_only_mount => Plan::RemountRw { overlay_on_refusal: false },
        Some(false) => Plan::Nothing,
        None if root.read_only_fs.is_some() || (root.nfs && root.read_only_mount) => Plan::Overlay,
        None if root.read_only_mount => Plan::RemountRw { overlay_on_refusal: true },
        None => Plan::Nothing,
    }
}

/// Why the overlay could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// statfs/statvfs on the root failed.
    #[error("looking at the root {}", path.display())]
    Stat {
        /// The root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// One step of building the overlay failed.
    #[error("{step} {}", path.display())]
    Step {
        /// What was being done, as a gerund.
        step: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn step(step: &'static str, path: &Path) -> impl FnOnce(Errno) -> OverlayError {
    let path = path.to_owned();
    move |e| OverlayError::Step { step, path, source: e.into() }
}

/// Looks at the root mounted at `sysroot`.
pub fn root_state(sysroot: &Path) -> Result<RootState, OverlayError> {
    let stat_err = |e: Errno| OverlayError::Stat { path: sysroot.to_owned(), source: e.into() };
    let vfs = rustix::fs::statvfs(sysroot).map_err(stat_err)?;
    let fs = rustix::fs::statfs(sysroot).map_err(stat_err)?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let magic = i64::from(fs.f_type as i64);
    Ok(RootState {
        read_only_mount: vfs.f_flag.contains(StatVfsMountFlags::RDONLY),
        read_only_fs: READ_ONLY_FS.iter().find(|(m, _)| *m == magic).map(|(_, name)| *name),
        nfs: magic == NFS_MAGIC,
    })
}

/// Makes the root writable as `rd.stateless.overlay=` and the root's state
/// ask. Returns a short note for the log when something was done.
pub fn prepare(sysroot: &Path, run_dir: &Path, want: Option<bool>) -> Result<Option<String>, OverlayError> {
    let root = root_state(sysroot)?;
    log::debug!("root {}: {root:?}, rd.stateless.overlay={want:?}", sysroot.display());
    match decide(want, root) {
        Plan::Nothing => Ok(None),
        Plan::RemountRw { overlay_on_refusal } => {
            match rustix::mount::mount_remount(sysroot, MountFlags::empty(), "") {
                Ok(()) => Ok(Some(format!("remounted {} read-write", sysroot.display()))),
                Err(e) if overlay_on_refusal && matches!(e, Errno::ROFS | Errno::ACCESS | Errno::PERM) => {
                    let base = make_overlay(sysroot, run_dir)?;
                    Ok(Some(format!(
                        "root cannot be written ({e}): overlay on {} with a tmpfs upper layer in {}",
                        sysroot.display(),
                        base.display()
                    )))
                }
                Err(e) => Err(step("remounting read-write", sysroot)(e)),
            }
        }
        Plan::Overlay => {
            let base = make_overlay(sysroot, run_dir)?;
            let why = match (want, root.read_only_fs) {
                (Some(true), _) => "rd.stateless.overlay=1".to_owned(),
                (_, Some(fs)) => format!("read-only {fs} root"),
                _ => "read-only root".to_owned(),
            };
            Ok(Some(format!("{why}: overlay on {} with a tmpfs upper layer in {}", sysroot.display(), base.display())))
        }
    }
}

/// Builds the overlay (see the module docs) and returns its base directory.
fn make_overlay(sysroot: &Path, run_dir: &Path) -> Result<PathBuf, OverlayError> {
    let base = run_dir.join(OVERLAY_DIR);
    mkdir(&base, 0o755)?;
    mount_upper_tmpfs(&base)?;
    let (lower, upper, work) = (base.join("lower"), base.join("upper"), base.join("work"));
    let built = (|| {
        for d in [&lower, &upper, &work] {
            mkdir(d, 0o755)?;
        }
        rustix::mount::mount_bind(sysroot, &lower).map_err(step("bind-mounting the root on", &lower))?;
        // A read-only bind: the overlay reads the lower layer and nothing else
        // gets to write it.
        rustix::mount::mount_remount(&lower, MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(step("making read-only", &lower))?;
        let data = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        let data = CString::new(data).map_err(|e| OverlayError::Step {
            step: "naming the overlay layers for",
            path: sysroot.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        rustix::mount::mount("overlay", sysroot, "overlay", MountFlags::empty(), data.as_c_str())
            .map_err(step("mounting the overlay on", sysroot))
    })();
    if let Err(e) = built {
        // Leave the root as it was: the caller reports and the boot goes on
        // to apply (and fail) or to onfail.
        let _ = rustix::mount::unmount(&lower, UnmountFlags::DETACH);
        let _ = rustix::mount::unmount(&base, UnmountFlags::DETACH);
        return Err(e);
    }
    Ok(base)
}

/// Mounts the tmpfs that holds the upper layer. Files that fill whole 2 MiB
/// pages get transparent huge pages (`huge=within_size`): a large bundle's
/// binaries are then written with a fraction of the page allocations, which
/// made extracting 100 MiB about a fifth faster in our measurements, while a
/// small file still takes 4 KiB pages. A kernel without huge-page tmpfs
/// refuses the option; the upper layer then uses plain pages.
fn mount_upper_tmpfs(base: &Path) -> Result<(), OverlayError> {
    let flags = MountFlags::NOSUID | MountFlags::NODEV;
    match rustix::mount::mount("tmpfs", base, "tmpfs", flags, c"mode=0755,huge=within_size") {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) => {
            log::debug!("tmpfs without huge=within_size on {}: not supported here", base.display());
            rustix::mount::mount("tmpfs", base, "tmpfs", flags, c"mode=0755").map_err(step("mounting a tmpfs on", base))
        }
        Err(e) => Err(step("mounting a tmpfs on", base)(e)),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), OverlayError> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(|source| OverlayError::Step {
        step: "creating",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decision_table() {
        let rw = RootState { read_only_mount: false, read_only_fs: None, nfs: false };
        let ro = RootState { read_only_mount: true, ..rw };
        let squash = RootState { read_only_mount: true, read_only_fs: Some("squashfs"), nfs: false };
        let nfs_ro = RootState { read_only_mount: true, read_only_fs: None, nfs: true };
        let nfs_rw = RootState { read_only_mount: false, read_only_fs: None, nfs: true };
        let cases = [
            (None, rw, Plan::Nothing),
            (None, ro, Plan::RemountRw { overlay_on_refusal: true }),
            (None, squash, Plan::Overlay),
            (None, nfs_ro, Plan::Overlay),
            (None, nfs_rw, Plan::Nothing),
            (Some(true), rw, Plan::Overlay),
            (Some(true), ro, Plan::Overlay),
            (Some(false), rw, Plan::Nothing),
            (Some(false), ro, Plan::RemountRw { overlay_on_refusal: false }),
            (Some(false), squash, Plan::RemountRw { overlay_on_refusal: false }),
        ];
        for (want, root, plan) in cases {
            assert_eq!(decide(want, root), plan, "{want:?} {root:?}");
        }
    }

    #[test]
    fn root_state_of_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = root_state(dir.path()).unwrap();
        assert_eq!(state.read_only_fs, None);
    }

    #[test]
    fn missing_root_is_an_error() {
        let err = root_state(Path::new("/nonexistent/sysroot")).unwrap_err();
        assert!(err.to_string().starts_with("looking at the root /nonexistent/sysroot"), "{err}");
    }
}
