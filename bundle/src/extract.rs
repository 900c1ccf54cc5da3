//! Safe extraction of the payload's tar stream into an empty directory.
//!
//! Every entry is checked against the path rules and limits before anything
//! is written. The destination must be a fresh, private directory (a staging
//! area): extraction never follows a symlink, because the only symlinks under
//! it are ones this extractor made, and it refuses any entry whose parent is
//! one of them. Directory modes and times are applied last, deepest first, so
//! a read-only directory does not block its own contents.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::limits::Limits;
use crate::path::{PathError, RelPath, check_symlink_target};

/// What kind of thing an extracted path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Whiteout,
}

/// Options for [`extract`].
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions<'a> {
    /// Where to write; `None` checks everything and writes nothing.
    pub dest: Option<&'a Path>,
    /// Limits on entry count and path length.
    pub limits: &'a Limits,
    /// Apply owners from the archive (needs root); otherwise files belong to
    /// the extracting user.
    pub owners: bool,
}

/// Counts of what an extraction found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Tar entries.
    pub entries: u32,
    /// Regular files.
    pub files: u32,
    /// Directories.
    pub dirs: u32,
    /// Symbolic links.
    pub symlinks: u32,
    /// Hard links.
    pub hardlinks: u32,
    /// Whiteouts (deletions), opaque markers included.
    pub whiteouts: u32,
    /// Bytes of regular file data.
    pub file_bytes: u64,
}

/// Why extraction stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// An entry path or link target broke a rule.
    #[error("{path}: {err}")]
    Path {
        /// The entry, as found in the archive.
        path: String,
        /// The rule it broke.
        err: PathError,
    },
    /// A symlink points outside the root.
    #[error("symlink {path} -> {target} escapes the root")]
    LinkEscapes {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// An entry type that is never allowed.
    #[error("{path}: {kind} refused")]
    Forbidden {
        /// The entry.
        path: String,
        /// What it is ("device node", "fifo", …).
        kind: &'static str,
    },
    /// The same path appears twice.
    #[error("{0}: duplicate entry")]
    Duplicate(String),
    /// An entry's parent is not a directory of the archive.
    #[error("{path}: parent {parent} is a {kind}, not a directory")]
    BadParent {
        /// The entry.
        path: String,
        /// The offending parent.
        parent: String,
        /// What the parent is.
        kind: &'static str,
    },
    /// A hard link to something that is not an earlier regular file.
    #[error("hard link {path} -> {target}: target is not an earlier regular file")]
    BadHardLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A whiteout with data.
    #[error("{0}: whiteout must be an empty regular file")]
    BadWhiteout(String),
    /// More entries than the limit.
    #[error("more than {0} entries (limit)")]
    TooManyEntries(u32),
    /// Reading the archive or writing the tree failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        err: io::Error,
    },
}

impl ExtractError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ExtractError {
        let context = context.into();
        move |err| ExtractError::Io { context, err }
    }
}

struct DirMeta {
    path: PathBuf,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// Reads a tar stream and extracts it. Returns after the end-of-archive
/// marker; the caller must drain and check whatever follows.
pub fn extract<R: Read>(tar_stream: R, opts: ExtractOptions<'_>) -> Result<ExtractSummary, ExtractError> {
    let mut archive = tar::Archive::new(tar_stream);
    let mut seen: HashMap<RelPath, Kind> = HashMap::new();
    let mut dirs: Vec<DirMeta> = Vec::new();
    let mut summary = ExtractSummary::default();
    let mut buf = vec![0u8; 256 * 1024];
    let entries = archive.entries().map_err(ExtractError::io("reading archive"))?;
    for entry in entries {
        let mut entry = entry.map_err(ExtractError::io("reading archive"))?;
        summary.entries += 1;
        if summary.entries > opts.limits.max_entries {
            return Err(ExtractError::TooManyEntries(opts.limits.max_entries));
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let etype = entry.header().entry_type();
        let path = match RelPath::parse(&raw_path, opts.limits.max_path) {
            Ok(p) => p,
            // The archive root (`./`) carries only the root's own mode,
            // which a bundle must not change.
            Err(PathError::Empty) if etype.is_dir() => continue,
            Err(err) => return Err(ExtractError::Path { path: shown, err }),
        };
        let forbidden = match etype {
            tar::EntryType::Char | tar::EntryType::Block => Some("device node"),
            tar::EntryType::Fifo => Some("fifo"),
            _ => None,
        };
        if let Some(kind) = forbidden {
            return Err(ExtractError::Forbidden { path: shown, kind });
        }
        check_parents(&path, &seen, &shown)?;
        if seen.contains_key(&path) {
            return Err(ExtractError::Duplicate(shown));
        }
        let header = entry.header();
        let mode = header.mode().map_err(ExtractError::io(format!("{shown}: mode")))? & 0o7777;
        let uid = header.uid().map_err(ExtractError::io(format!("{shown}: uid")))?;
        let gid = header.gid().map_err(ExtractError::io(format!("{shown}: gid")))?;
        let mtime = header.mtime().map_err(ExtractError::io(format!("{shown}: mtime")))?;
        let target = opts.dest.map(|d| d.join(path.as_path()));
        // A whiteout or opaque marker is only meaningful as an empty regular
        // file; under any other type the name would slip past the deletion
        // rules and land in the root as an overlayfs marker.
        let regular = matches!(etype, tar::EntryType::Regular | tar::EntryType::Continuous);
        if path.whiteout().is_some() && !regular {
            return Err(ExtractError::BadWhiteout(shown));
        }
        // Implicit parent directories are recorded in verify-only mode too, so
        // that both modes refuse the same archives.
        ensure_parents(opts.dest, &path, &mut seen)?;

        let kind = match etype {
            tar::EntryType::Directory => {
                if let Some(t) = &target {
                    fs::create_dir(t).map_err(ExtractError::io(format!("creating {shown}")))?;
                    dirs.push(DirMeta { path: t.clone(), mode, uid, gid, mtime });
                }
                summary.dirs += 1;
                Kind::Dir
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(w) = path.whiteout() {
                    w.map_err(|err| ExtractError::Path { path: shown.clone(), err })?;
                    if entry.size() != 0 {
                        return Err(ExtractError::BadWhiteout(shown));
                    }
                    summary.whiteouts += 1;
                }
                let mut file = match &target {
                    Some(t) => Some(
                        OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                            .open(t)
                            .map_err(ExtractError::io(format!("creating {shown}")))?,
                    ),
                    None => None,
                };
                let n = copy(&mut entry, file.as_mut(), &mut buf)
                    .map_err(ExtractError::io(format!("extracting {shown}")))?;
                summary.file_bytes += n;
                if let Some(f) = &file {
                    finish_file(f, opts.owners, mode, uid, gid, mtime)
                        .map_err(ExtractError::io(format!("setting metadata of {shown}")))?;
                }
                if path.whiteout().is_some() {
                    Kind::Whiteout
                } else {
                    summary.files += 1;
                    Kind::File
                }
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name_bytes().map(|c| c.into_owned()).unwrap_or_default();
                check_symlink_target(&path, &link, opts.limits.max_path).map_err(|err| match err {
                    PathError::LinkEscapes => ExtractError::LinkEscapes {
                        path: shown.clone(),
                        target: String::from_utf8_lossy(&link).into_owned(),
                    },
                    err => ExtractError::Path { path: shown.clone(), err },
                })?;
                if let Some(t) = &target {
                    use std::os::unix::ffi::OsStrExt;
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), t)
                        .map_err(ExtractError::io(format!("creating {shown}")))?;
                    finish_symlink(t, opts.owners, uid, gid, mtime)
                        .map_err(ExtractError::io(format!("setting metadata of {shown}")))?;
                }
                summary.symlinks += 1;
                Kind::Symlink
            }
            tar::EntryType::Link => {
                let link = entry.link_name_bytes().map(|c| c.into_owned()).unwrap_or_default();
                let shown_target = String::from_utf8_lossy(&link).into_owned();
                let bad = || ExtractError::BadHardLink { path: shown.clone(), target: shown_target.clone() };
                let link_path = RelPath::parse(&link, opts.limits.max_path).map_err(|_| bad())?;
                if seen.get(&link_path) != Some(&Kind::File) {
                    return Err(bad());
                }
                if let (Some(t), Some(d)) = (&target, opts.dest) {
                    fs::hard_link(d.join(link_path.as_path()), t)
                        .map_err(ExtractError::io(format!("creating {shown}")))?;
                }
                summary.hardlinks += 1;
                Kind::File
            }
            other => {
                let kind = match other {
                    tar::EntryType::GNUSparse => "sparse file entry",
                    tar::EntryType::XGlobalHeader => "pax global header",
                    _ => "unsupported entry type",
                };
                return Err(ExtractError::Forbidden { path: shown, kind });
            }
        };
        seen.insert(path, kind);
    }
    // Deepest first, so that making a parent read-only cannot block a child.
    for dir in dirs.iter().rev() {
        finish_dir(dir, opts.owners)
            .map_err(ExtractError::io(format!("setting metadata of {}", dir.path.display())))?;
    }
    Ok(summary)
}

/// Every ancestor of `path` must be a directory the archive made, or not
/// exist yet (it will be created with mode 0755).
fn check_parents(path: &RelPath, seen: &HashMap<RelPath, Kind>, shown: &str) -> Result<(), ExtractError> {
    for anc in path.ancestors() {
        let anc = RelPath::parse(anc, usize::MAX).map_err(|err| ExtractError::Path { path: shown.to_owned(), err })?;
        let kind = match seen.get(&anc) {
            None | Some(Kind::Dir) => continue,
            Some(Kind::File) => "file",
            Some(Kind::Symlink) => "symlink",
            Some(Kind::Whiteout) => "whiteout",
        };
        return Err(ExtractError::BadParent { path: shown.to_owned(), parent: anc.to_string(), kind });
    }
    Ok(())
}

/// Records the ancestors of `path` that the archive did not list as
/// directories, creating them (mode 0755 until the walk ends) when
/// extracting.
fn ensure_parents(dest: Option<&Path>, path: &RelPath, seen: &mut HashMap<RelPath, Kind>) -> Result<(), ExtractError> {
    for anc in path.ancestors() {
        let Ok(anc) = RelPath::parse(anc, usize::MAX) else { continue };
        if seen.contains_key(&anc) {
            continue;
        }
        if let Some(dest) = dest {
            let dir = dest.join(anc.as_path());
            fs::create_dir(&dir).map_err(ExtractError::io(format!("creating {anc}")))?;
        }
        seen.insert(anc, Kind::Dir);
    }
    Ok(())
}

fn copy<R: Read>(src: &mut R, mut dst: Option<&mut File>, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(f) = dst.as_mut() {
            f.write_all(buf.get(..n).unwrap_or_default())?;
        }
        total += n as u64;
    }
}

fn to_u32(id: u64) -> io::Result<u32> {
    u32::try_from(id).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "uid/gid out of range"))
}

fn systime(mtime: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(mtime)
}

fn finish_file(f: &File, owners: bool, mode: u32, uid: u64, gid: u64, mtime: u64) -> io::Result<()> {
    // chown clears set-id bits, so it must come before chmod.
    if owners {
        std::os::unix::fs::fchown(f, Some(to_u32(uid)?), Some(to_u32(gid)?))?;
    }
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.set_modified(systime(mtime))
}

fn finish_symlink(path: &Path, owners: bool, uid: u64, gid: u64, mtime: u64) -> io::Result<()> {
    if owners {
        std::os::unix::fs::lchown(path, Some(to_u32(uid)?), Some(to_u32(gid)?))?;
    }
    set_times_nofollow(path, mtime)
}

fn finish_dir(dir: &DirMeta, owners: bool) -> io::Result<()> {
    if owners {
        std::os::unix::fs::lchown(&dir.path, Some(to_u32(dir.uid)?), Some(to_u32(dir.gid)?))?;
    }
    fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))?;
    set_times_nofollow(&dir.path, dir.mtime)
}

fn set_times_nofollow(path: &Path, mtime: u64) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let t = Timespec { tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX), tv_nsec: 0 };
    let times = Timestamps { last_access: t, last_modification: t };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}
