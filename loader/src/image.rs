//! Image layers (docs/bundle-format.md, *Image payload*): a bundle whose
//! payload is an EROFS image is not extracted. The loader decrypts the
//! image into the overlay's tmpfs, checks all of it, and only then mounts
//! it read-only (`nodev,nosuid`); [`stack_images`] then rebuilds the root
//! overlay as `upper (tmpfs) : image layers, last in the stack first :
//! base`.
//!
//! Images live in `{run_dir}/overlay/images/`, inside the tmpfs the overlay
//! already keeps across switch-root, so the mounts and their backing files
//! stay valid for the life of the system. An image layer needs the overlay
//! root: on a root that is not an overlay the layer is refused with a line
//! saying so (pack it as a tar bundle, or boot with
//! `rd.stateless.overlay=1`).
//!
//! The kernel mounts an image straight from its file where it can (EROFS
//! file-backed mounts, Linux 6.12), else through a loop device set up with
//! `LOOP_CONFIGURE` (src/sys.rs). A crafted image that authenticated but
//! is not valid EROFS is the kernel's to refuse; the loader then refuses
//! the layer with the kernel's error and never touches the image again.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use stateless_bundle::{Authenticated, OpenError};

use crate::overlay::OVERLAY_DIR;

/// Directory below the overlay's base that holds images and their mounts.
pub const IMAGES_DIR: &str = "images";
/// `statfs.f_type` of overlayfs.
const OVERLAYFS_MAGIC: i64 = 0x794C_7630;

/// Why an image layer could not be stored or mounted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The root is not the loader's overlay.
    #[error(
        "an image layer needs the overlay root ({} is not an overlay; boot with rd.stateless.overlay=1 or pack the layer as tar)",
        .0.display()
    )]
    NotOverlay(PathBuf),
    /// The declared image size does not fit the tmpfs.
    #[error("the image declares {declared} bytes, the tmpfs at {} has {free} bytes free", dir.display())]
    NoRoom {
        /// Bytes the header declares.
        declared: u64,
        /// Bytes free.
        free: u64,
        /// Where it would have been stored.
        dir: PathBuf,
    },
    /// The image did not verify (nothing of it is kept).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The kernel refused to mount the authenticated image.
    #[error("the kernel refused to mount the image ({errno}): not a valid EROFS image, or one this kernel cannot read")]
    Mount {
        /// The kernel's error.
        errno: io::Error,
    },
    /// A file or directory step failed.
    #[error("{step} {}", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_step(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io { step, path, source }
}

/// A verified image, mounted read-only. Dropped before
/// [`ImageLayer::keep`], it is unmounted and its file removed (a stack
/// refused after its images were verified leaves nothing behind).
#[derive(Debug)]
pub struct ImageLayer {
    /// The image file in the tmpfs.
    pub file: PathBuf,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// Bytes of the image.
    pub len: u64,
    kept: AtomicBool,
}

impl ImageLayer {
    /// The image is in the root now: leave it mounted for good.
    pub fn keep(&self) {
        self.kept.store(true, Ordering::Relaxed);
    }
}

impl Drop for ImageLayer {
    fn drop(&mut self) {
        if !self.kept.load(Ordering::Relaxed) {
            let _ = rustix::mount::unmount(&self.mount, UnmountFlags::DETACH);
            let _ = fs::remove_dir(&self.mount);
            let _ = fs::remove_file(&self.file);
        }
    }
}

/// Whether `sysroot` is the overlay [`crate::overlay`] built over `run_dir`.
pub fn overlay_root(sysroot: &Path, run_dir: &Path) -> bool {
    let upper = run_dir.join(OVERLAY_DIR).join("upper");
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let magic = rustix::fs::statfs(sysroot).map(|s| i64::from(s.f_type as i64)).unwrap_or(0);
    magic == OVERLAYFS_MAGIC && upper.is_dir()
}

/// Stores and mounts the image of `bundle` (an authenticated image
/// bundle) as `name`: checks that the root is the overlay and that the
/// declared size fits the tmpfs, before a byte is written; writes the
/// decrypted image, which [`Authenticated::write_image`] checks whole
/// (every chunk, digest, length, magic) before it returns; only then mounts
/// it. On any error nothing is left.
pub fn store_and_mount<R: Read + Send>(
    bundle: Authenticated<R>,
    sysroot: &Path,
    run_dir: &Path,
    name: &str,
) -> Result<ImageLayer, ImageError> {
    if !overlay_root(sysroot, run_dir) {
        return Err(ImageError::NotOverlay(sysroot.to_owned()));
    }
    let dir = run_dir.join(OVERLAY_DIR).join(IMAGES_DIR);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_step("creating", &dir))?;
    let declared = bundle.header().expanded_len;
    let vfs = rustix::fs::statvfs(&dir).map_err(|e| io_step("looking at", &dir)(e.into()))?;
    let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    if declared > free {
        return Err(ImageError::NoRoom { declared, free, dir });
    }
    // Unique per run: the same layer may be verified twice (a refused
    // download, then the cache).
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '.' }).collect();
    let file = dir.join(format!("{safe}.{n}.erofs"));
    let mount = dir.join(format!("{safe}.{n}"));
    let mut layer = ImageLayer { file: file.clone(), mount: mount.clone(), len: 0, kept: AtomicBool::new(false) };
    let out =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file).map_err(io_step("creating", &file))?;
    let summary = bundle.write_image(BufWriter::with_capacity(1 << 20, out))?;
    layer.len = summary.image_len;
    fs::DirBuilder::new().mode(0o755).create(&mount).map_err(io_step("creating", &mount))?;
    mount_image(&file, &mount)?;
    Ok(layer)
}

/// Mounts the image file read-only, `nodev,nosuid`: from the file when the
/// kernel can (EROFS file-backed mounts), else through a loop device.
fn mount_image(file: &Path, mount: &Path) -> Result<(), ImageError> {
    let flags = MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID;
    match rustix::mount::mount(file, mount, "erofs", flags, c"") {
        Ok(()) => return Ok(()),
        // Not a block device: this kernel mounts EROFS from block devices
        // only. Anything else is the kernel's verdict on the image.
        Err(Errno::NOTBLK) => {}
        Err(Errno::NODEV) => {
            return Err(ImageError::Mount { errno: io::Error::other("this kernel has no EROFS (modprobe erofs)") });
        }
        Err(e) => return Err(ImageError::Mount { errno: e.into() }),
    }
    let backing = File::open(file).map_err(io_step("opening", file))?;
    let dev = crate::sys::attach_read_only(&backing, Path::new("/dev"))
        .map_err(|e| io_step("attaching a loop device to", file)(e))?;
    drop(backing);
    // The loop device (autoclear) goes when this mount does.
    rustix::mount::mount(&dev.path, mount, "erofs", flags, c"").map_err(|e| ImageError::Mount { errno: e.into() })
}

/// Rebuilds the overlay on `sysroot` with `images` (in stack order, the
/// first is lowest) between the upper layer and the base: unmounts the
/// overlay and mounts it again with the same upper and work directories,
/// so what the upper layer holds stays. Then removes `/.stateless` from the
/// merged root (images carry their layer's metadata; it is never part of
/// the root). On failure the previous overlay is put back.
pub fn stack_images(sysroot: &Path, run_dir: &Path, images: &[&Path]) -> Result<(), ImageError> {
    if images.is_empty() {
        return Ok(());
    }
    if !overlay_root(sysroot, run_dir) {
        return Err(ImageError::NotOverlay(sysroot.to_owned()));
    }
    let base = run_dir.join(OVERLAY_DIR);
    let (lower, upper, work) = (base.join("lower"), base.join("upper"), base.join("work"));
    let mut lowers: Vec<String> = images.iter().rev().map(|p| p.display().to_string()).collect();
    lowers.push(lower.display().to_string());
    let options = |lowerdir: &str| {
        CString::new(format!("lowerdir={lowerdir},upperdir={},workdir={}", upper.display(), work.display()))
            .map_err(|e| ImageError::Mount { errno: io::Error::new(io::ErrorKind::InvalidInput, e) })
    };
    let with_images = options(&lowers.join(":"))?;
    let without = options(&lower.display().to_string())?;
    rustix::mount::unmount(sysroot, UnmountFlags::empty()).map_err(|e| ImageError::Io {
        step: "unmounting the overlay on",
        path: sysroot.to_owned(),
        source: e.into(),
    })?;
    if let Err(e) = rustix::mount::mount("overlay", sysroot, "overlay", MountFlags::empty(), with_images.as_c_str()) {
        let _ = rustix::mount::mount("overlay", sysroot, "overlay", MountFlags::empty(), without.as_c_str());
        return Err(ImageError::Io {
            step: "mounting the overlay with image layers on",
            path: sysroot.to_owned(),
            source: e.into(),
        });
    }
    let meta = sysroot.join(stateless_model::layer::META_DIR);
    match fs::symlink_metadata(&meta) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&meta).map_err(io_step("hiding", &meta))?,
        Ok(_) => fs::remove_file(&meta).map_err(io_step("hiding", &meta))?,
        Err(_) => {}
    }
    Ok(())
}

/// Copies the image's `.stateless/layer.toml` and `model.toml` (regular
/// files only, at most `MAX_META_LEN` bytes read) into `staging`, where the
/// stack reads and checks a layer's metadata as for an extracted layer.
pub fn copy_meta(image: &ImageLayer, staging: &Path) -> Result<(), ImageError> {
    use stateless_model::layer::{LAYER_FILE, MAX_META_LEN, META_DIR, MODEL_FILE};
    let src = image.mount.join(META_DIR);
    match fs::symlink_metadata(&src) {
        Ok(m) if m.is_dir() => {}
        // Absent, or not a directory: the stack's checks say so.
        Ok(_) | Err(_) => return Ok(()),
    }
    let dst = staging.join(META_DIR);
    fs::create_dir(&dst).map_err(io_step("creating", &dst))?;
    for rel in [LAYER_FILE, MODEL_FILE] {
        let from = image.mount.join(rel);
        let file = match stateless_keys::blockdev::open_regular(&from) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_step("reading", &from)(e)),
        };
        let mut text = Vec::new();
        file.take(MAX_META_LEN + 1).read_to_end(&mut text).map_err(io_step("reading", &from))?;
        let to = staging.join(rel);
        fs::write(&to, text).map_err(io_step("writing", &to))?;
    }
    Ok(())
}

/// Makes a stack's order hold for an extracted layer that comes before
/// image layers: the extracted layer is written to the upper layer, above
/// every image, so whatever of it a later image `covers` (docs/bundle-format.md,
/// *Image payload*) is removed from its staging tree first. The image then
/// shows through, as a later layer's file replaces an earlier one's.
/// Directories merge; an opaque marker or whiteout of the earlier layer
/// for a path a later image has is dropped (the image decides that path).
pub fn shadow(staging: &Path, later: &[&Path]) -> Result<(), ImageError> {
    if later.is_empty() {
        return Ok(());
    }
    shadow_dir(staging, Path::new(""), later)
}

fn shadow_dir(staging: &Path, rel: &Path, later: &[&Path]) -> Result<(), ImageError> {
    let dir = staging.join(rel);
    let mut entries: Vec<(std::ffi::OsString, fs::FileType)> = Vec::new();
    for e in fs::read_dir(&dir).map_err(io_step("reading", &dir))? {
        let e = e.map_err(io_step("reading", &dir))?;
        entries.push((e.file_name(), e.file_type().map_err(io_step("reading", &e.path()))?));
    }
    for (name, ft) in entries {
        let path = dir.join(&name);
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str());
        // What the entry is about in the root.
        let target = if bytes == b".wh..wh..opq" {
            rel.to_owned()
        } else if let Some(n) = bytes.strip_prefix(b".wh.") {
            rel.join(std::ffi::OsStr::from_bytes(n))
        } else {
            rel.join(&name)
        };
        let covered = later.iter().any(|m| covers(m, &target, ft.is_dir()));
        if covered {
            if ft.is_dir() {
                fs::remove_dir_all(&path).map_err(io_step("removing", &path))?;
            } else {
                fs::remove_file(&path).map_err(io_step("removing", &path))?;
            }
        } else if ft.is_dir() {
            shadow_dir(staging, &rel.join(&name), later)?;
        }
    }
    Ok(())
}

use std::os::unix::ffi::OsStrExt as _;

/// Whether the image mounted at `mount` decides `rel`: an ancestor of it
/// in the image is not a directory or is opaque, or the image has `rel`
/// itself (as a directory, only when `is_dir` is false: two directories
/// merge).
fn covers(mount: &Path, rel: &Path, is_dir: bool) -> bool {
    let mut at = mount.to_owned();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        let Ok(md) = fs::symlink_metadata(&at) else { return false };
        let last = i + 1 == parts.len();
        if last {
            return !(md.is_dir() && is_dir) || opaque(&at);
        }
        // Never resolve through a link of the image: it covers what is below.
        if !md.is_dir() || opaque(&at) {
            return true;
        }
    }
    false
}

fn opaque(dir: &Path) -> bool {
    let mut v = [0u8; 2];
    rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut v).is_ok_and(|n| v.get(..n) == Some(b"y".as_slice()))
}
