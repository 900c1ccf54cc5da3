//! Image layers on the admin's side: making an EROFS image from a tree with
//! `mkfs.erofs` (erofs-utils), and turning an image back into a tree for
//! `bundle open`. Why erofs-utils and not a Rust writer, and which options
//! make the image reproducible: docs/bundle-format.md, *Image payload*.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use stateless_bundle::RelPath;

/// The compression inside the image. Only what the kernels the harness
/// boots can mount (Debian 6.1: EROFS lz4, no lzma).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageCompress {
    /// lz4 (written with lz4hc: the same decompressor, smaller images).
    Lz4,
    /// Uncompressed blocks.
    None,
}

/// Builds the EROFS image of `dir` at `image`. Deletions (`--delete`) and
/// OCI-style whiteout files in the tree (`.wh.NAME`, `.wh..wh..opq`) become
/// what overlayfs reads from a lower layer: a 0/0 character device and the
/// `trusted.overlay.opaque` xattr. That needs a copy of the tree (and root,
/// for mknod and trusted.* xattrs); a tree that already uses overlayfs
/// whiteouts is packed as it is.
pub fn make_image(dir: &Path, deletions: &[RelPath], compress: ImageCompress, image: &Path) -> anyhow::Result<()> {
    // From the tree as given: staging below changes directory mtimes.
    let stamp = timestamp(dir)?;
    let staging;
    let source = if deletions.is_empty() && !has_oci_whiteouts(dir)? {
        dir.to_owned()
    } else {
        let parent = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        staging = tempfile::Builder::new()
            .prefix(".statelessctl-image")
            .tempdir_in(parent)
            .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
        let tree = staging.path().join("tree");
        copy_tree(dir, &tree)?;
        convert_oci_whiteouts(&tree)?;
        for d in deletions {
            add_whiteout(&tree, d)?;
        }
        tree
    };
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--quiet")
        .arg("-U")
        .arg("00000000-0000-0000-0000-000000000000")
        .arg("-T")
        .arg(stamp.to_string())
        .env("SOURCE_DATE_EPOCH", stamp.to_string());
    if compress == ImageCompress::Lz4 {
        // 64 KiB physical clusters: on the bench's large set the image is
        // 51 MiB instead of 59 MiB with the 4 KiB default (0.49 of the
        // extracted tree, the RAM goal is at most 0.5), at the price of
        // decompressing up to 64 KiB for a small first read. Big clusters
        // are read by every kernel since 5.13.
        cmd.arg("-zlz4hc").arg("-C").arg("65536");
    }
    cmd.arg(image).arg(&source);
    run(cmd, "mkfs.erofs", "install erofs-utils: packing an image layer needs mkfs.erofs (the loader does not)")
}

/// The one timestamp every inode gets: `SOURCE_DATE_EPOCH` when set, else
/// the newest mtime in the tree (a function of the tree, so the image is
/// reproducible without it).
fn timestamp(dir: &Path) -> anyhow::Result<u64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let s = v.to_string_lossy();
        return s.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={s} is not a number of seconds"));
    }
    let mut newest = 0u64;
    walk(dir, &mut |_, meta| {
        newest = newest.max(u64::try_from(meta.mtime()).unwrap_or(0));
        Ok(())
    })?;
    Ok(newest)
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let meta = fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    f(dir, &meta)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        entries.sort();
        for e in entries {
            walk(&e, f)?;
        }
    }
    Ok(())
}

fn has_oci_whiteouts(dir: &Path) -> anyhow::Result<bool> {
    let mut found = false;
    walk(dir, &mut |p, _| {
        found |= p.file_name().is_some_and(|n| n.as_bytes().starts_with(b".wh."));
        Ok(())
    })?;
    Ok(found)
}

/// `cp -a`: keeps modes, owners, links, xattrs (capabilities included)
/// and hard links, which is all an image must carry.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg("--").arg(from).arg(to);
    run(cmd, "cp -a", "coreutils cp is needed to stage the tree")
}

fn convert_oci_whiteouts(tree: &Path) -> anyhow::Result<()> {
    let mut found = Vec::new();
    walk(tree, &mut |p, meta| {
        if meta.is_file() && p.file_name().is_some_and(|n| n.as_bytes().starts_with(b".wh.")) {
            if meta.len() != 0 {
                bail!("{}: whiteout files (.wh.NAME) must be empty", p.display());
            }
            found.push(p.to_owned());
        }
        Ok(())
    })?;
    for p in found {
        let name = p.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let dir = p.parent().unwrap_or(tree).to_owned();
        fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        if name == b".wh..wh..opq" {
            set_opaque(&dir)?;
        } else if let Some(target) = name.strip_prefix(b".wh.").filter(|t| !t.is_empty() && *t != b"." && *t != b"..") {
            mknod_whiteout(&dir.join(OsStr::from_bytes(target)))?;
        } else {
            bail!("{}: a whiteout must name something", p.display());
        }
    }
    Ok(())
}

fn add_whiteout(tree: &Path, path: &RelPath) -> anyhow::Result<()> {
    let full = tree.join(path.as_path());
    if fs::symlink_metadata(&full).is_ok() {
        bail!("--delete {path}: the tree also contains {path}");
    }
    if let Some(parent) = full.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    mknod_whiteout(&full)
}

fn mknod_whiteout(path: &Path) -> anyhow::Result<()> {
    use rustix::fs::{FileType, Mode, mknodat};
    mknodat(rustix::fs::CWD, path, FileType::CharacterDevice, Mode::from_raw_mode(0o644), 0).with_context(|| {
        format!(
            "making the whiteout {} (a 0/0 character device: packing deletions into an image needs root)",
            path.display()
        )
    })
}

fn set_opaque(dir: &Path) -> anyhow::Result<()> {
    rustix::fs::setxattr(dir, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).with_context(|| {
        format!(
            "marking {} opaque (trusted.overlay.opaque: packing an opaque directory into an image needs root)",
            dir.display()
        )
    })
}

/// Turns the image at `image` into the tree `dest` (which must not exist).
/// As root with a kernel that mounts EROFS: mount it read-only (nodev,
/// nosuid) on a temporary directory and `cp -a` out of it, which keeps
/// xattrs (capabilities, opaque markers) and whiteouts. Otherwise
/// `fsck.erofs --extract`, which needs neither root nor the kernel but (in
/// erofs-utils 1.5) does not restore xattrs; a warning says so.
pub fn image_to_dir(image: &Path, dest: &Path) -> anyhow::Result<()> {
    let root = rustix::process::geteuid().is_root();
    if root && kernel_has_erofs() {
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mnt = tempfile::Builder::new()
            .prefix(".statelessctl-mnt")
            .tempdir_in(parent)
            .with_context(|| format!("creating a mount point in {}", parent.display()))?;
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "erofs", "-o", "ro,loop,nodev,nosuid"]).arg(image).arg(mnt.path());
        run(cmd, "mount", "util-linux mount is needed")?;
        let copied = copy_tree(mnt.path(), dest);
        let mut umount = Command::new("umount");
        umount.arg(mnt.path());
        let unmounted = run(umount, "umount", "util-linux umount is needed");
        copied?;
        return unmounted;
    }
    log::warn!("not root or no EROFS in this kernel: extracting with fsck.erofs, which does not restore xattrs");
    let mut cmd = Command::new("fsck.erofs");
    cmd.arg(format!("--extract={}", dest.display())).arg(image);
    run(cmd, "fsck.erofs", "install erofs-utils to open an image bundle as a directory")
}

/// Whether this kernel mounts EROFS now or can load it.
pub fn kernel_has_erofs() -> bool {
    let listed = || fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.ends_with("\terofs")));
    if listed() {
        return true;
    }
    let _ = Command::new("modprobe").arg("-q").arg("erofs").status();
    listed()
}

fn run(mut cmd: Command, what: &str, missing: &str) -> anyhow::Result<()> {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{what} not found: {missing}"),
        Err(e) => return Err(e).with_context(|| format!("running {what}")),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, err.trim());
    }
    Ok(())
}
