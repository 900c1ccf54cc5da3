//! Safe extraction of the payload's tar stream into an empty directory.
//!
//! Every entry is checked against the path rules and limits before anything
//! is written. The destination must be a fresh, private directory (a staging
//! area): extraction never follows a symlink, because the only symlinks under
//! it are ones this extractor made, and it refuses any entry whose parent is
//! one of them.
//!
//! Cost and memory are linear in the archive, whatever its shape:
//!
//! - Paths are remembered as 128-bit keyed hashes, not as bytes, so memory
//!   does not grow with path length (a collision needs the per-process
//!   random key). Directories implied by entries' paths (parents the
//!   archive does not list) are bounded by the entry limit too, so a few
//!   long paths cannot make millions of them.
//! - Every entry is created relative to an open descriptor of its parent
//!   directory (`*at` calls), which is kept while entries stay in it: no
//!   per-entry walk of every ancestor, and no full path is ever handed to
//!   the kernel, so the destination's own path does not count against
//!   `PATH_MAX`.
//! - A directory's mode and mtime are applied whenever the extractor
//!   leaves it (and again if a later entry goes back into it), not kept in
//!   a list for the end.
//!
//! A caller may stop an extraction from another thread through
//! [`ExtractOptions::cancel`] (the loader's time budget).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::hash::{BuildHasher, DefaultHasher, Hasher, RandomState};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, Uid};

use crate::limits::Limits;
use crate::path::{PathError, RelPath, Whiteout, check_symlink_target};

/// What kind of thing an extracted path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Whiteout,
    /// A path a whiteout of this bundle deletes: the bundle may not also
    /// contain it, or anything under it.
    Deleted,
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
    /// Checked before every entry and every block of file data: once set,
    /// extraction stops with [`ExtractError::Cancelled`]. The loader sets it
    /// when its time budget runs out.
    pub cancel: Option<&'a AtomicBool>,
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
    /// Entry paths imply more parent directories (ones the archive does not
    /// list) than the entry limit.
    #[error("more than {0} parent directories implied by entry paths (limit)")]
    TooManyImplied(u32),
    /// The names of the entries (and of the directories they imply) add
    /// up to more than [`crate::limits::MAX_NAME_BYTES`].
    #[error("more than {0} bytes of entry names in all (limit)")]
    TooManyNameBytes(u64),
    /// The bundle both deletes a path and contains it (or something under
    /// it).
    #[error("{path}: the bundle both deletes {deleted} and contains it")]
    DeleteConflict {
        /// The entry, as found in the archive.
        path: String,
        /// The deleted path.
        deleted: String,
    },
    /// A numeric header field (or PAX record) is malformed or out of range.
    #[error("{path}: {field} {value} is out of range ({range})")]
    Numeric {
        /// The entry.
        path: String,
        /// Which field ("mtime", "uid", …).
        field: &'static str,
        /// The value as read (or the raw text when it is not a number).
        value: String,
        /// The accepted range.
        range: &'static str,
    },
    /// The caller cancelled the extraction (see [`ExtractOptions::cancel`]).
    #[error("extraction cancelled")]
    Cancelled,
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

/// A path's identity: 128 bits of SipHash under a per-extraction random key.
type PathKey = u128;

/// Mode and mtime of a directory the archive lists, applied when the
/// extractor leaves it.
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: i64,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    /// For directories the archive lists, when extracting.
    meta: Option<DirMeta>,
}

/// The per-extraction hash key.
struct Keyer(RandomState);

impl Keyer {
    /// The state for the root, to which components are pushed.
    fn start(&self) -> KeyState {
        let mut a = self.0.build_hasher();
        let mut b = self.0.build_hasher();
        a.write_u8(0);
        b.write_u8(1);
        KeyState { a, b }
    }

    fn key(&self, path: &RelPath) -> PathKey {
        let mut st = self.start();
        let mut key = 0;
        for comp in path.as_bytes().split(|&c| c == b'/') {
            key = st.push(comp);
        }
        key
    }
}

/// Hashing state after a path's components: pushing one more gives the
/// key of the child, in time proportional to the component only.
#[derive(Clone)]
struct KeyState {
    a: DefaultHasher,
    b: DefaultHasher,
}

impl KeyState {
    fn push(&mut self, comp: &[u8]) -> PathKey {
        self.a.write(comp);
        self.a.write_u8(b'/');
        self.b.write(comp);
        self.b.write_u8(b'/');
        (u128::from(self.a.finish()) << 64) | u128::from(self.b.finish())
    }
}

/// Numeric header fields, range-checked.
#[derive(Debug, Clone, Copy)]
struct Fields {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// The directory the last entry went into, held open.
struct Cur {
    fd: OwnedFd,
    meta: Option<DirMeta>,
}

/// Where entries are written: the destination and the open parent.
struct Dest {
    root: OwnedFd,
    owners: bool,
    cur: Option<Cur>,
}

/// Reads a tar stream and extracts it. Returns after the end-of-archive
/// marker; the caller must drain and check whatever follows.
pub fn extract<R: Read>(tar_stream: R, opts: ExtractOptions<'_>) -> Result<ExtractSummary, ExtractError> {
    // Long-name, long-link and PAX members are read whole by the tar crate:
    // bound them before it allocates.
    let mut archive = tar::Archive::new(crate::io::MemberGuard::new(tar_stream));
    let mut dest = match opts.dest {
        Some(d) => Some(Dest {
            root: rustix::fs::open(d, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| ExtractError::Io { context: format!("opening {}", d.display()), err: e.into() })?,
            owners: opts.owners,
            cur: None,
        }),
        None => None,
    };
    let keyer = Keyer(RandomState::new());
    let mut seen: HashMap<PathKey, Node> = HashMap::new();
    // The directory the previous entry went into (or the one it made) and
    // its hashing state: its ancestors are checked and exist, so an entry
    // in the same directory skips that work and hashes only its own name.
    let mut cur: Option<(Vec<u8>, KeyState)> = None;
    let mut keys: Vec<PathKey> = Vec::new();
    let mut implied: u32 = 0;
    let mut name_bytes: u64 = 0;
    let mut count_names = |n: usize| {
        name_bytes = name_bytes.saturating_add(n as u64);
        if name_bytes > crate::limits::MAX_NAME_BYTES {
            return Err(ExtractError::TooManyNameBytes(crate::limits::MAX_NAME_BYTES));
        }
        Ok(())
    };
    let mut summary = ExtractSummary::default();
    let mut buf = vec![0u8; 256 * 1024];
    let cancelled = || opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let entries = archive.entries().map_err(ExtractError::io("reading archive"))?;
    for entry in entries {
        if cancelled() {
            return Err(ExtractError::Cancelled);
        }
        let mut entry = entry.map_err(ExtractError::io("reading archive"))?;
        summary.entries += 1;
        if summary.entries > opts.limits.max_entries {
            return Err(ExtractError::TooManyEntries(opts.limits.max_entries));
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let etype = entry.header().entry_type();
        let fields = fields(&mut entry, &shown)?;
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
        // A whiteout or opaque marker is only meaningful as an empty regular
        // file; under any other type the name would slip past the deletion
        // rules and land in the root as an overlayfs marker.
        let regular = matches!(etype, tar::EntryType::Regular | tar::EntryType::Continuous);
        let whiteout = path.whiteout().transpose().map_err(|err| ExtractError::Path { path: shown.clone(), err })?;
        if whiteout.is_some() && !regular {
            return Err(ExtractError::BadWhiteout(shown));
        }

        let parent = path.parent();
        let parent_bytes = parent.as_ref().map(RelPath::as_bytes).unwrap_or_default();
        let name_bytes = path.file_name();
        let mut state = match cur.as_ref().filter(|(p, _)| p.as_slice() == parent_bytes) {
            Some((_, st)) => st.clone(),
            None => {
                let mut st = keyer.start();
                keys.clear();
                if !parent_bytes.is_empty() {
                    keys.extend(parent_bytes.split(|&c| c == b'/').map(|comp| st.push(comp)));
                }
                let ancestors = keys.as_slice();
                // Every ancestor must be a directory of the archive, or not
                // exist yet (then it is created, mode 0755). Implied
                // directories are recorded in verify-only mode too, so that
                // both modes refuse the same archives.
                let mut first_missing = ancestors.len();
                for (i, k) in ancestors.iter().enumerate() {
                    let kind = match seen.get(k).map(|n| n.kind) {
                        None => {
                            first_missing = i;
                            break;
                        }
                        Some(Kind::Dir) => continue,
                        Some(Kind::Deleted) => {
                            return Err(ExtractError::DeleteConflict { path: shown, deleted: prefix_shown(&path, i) });
                        }
                        Some(Kind::File) => "file",
                        Some(Kind::Symlink) => "symlink",
                        Some(Kind::Whiteout) => "whiteout",
                    };
                    return Err(ExtractError::BadParent { path: shown, parent: prefix_shown(&path, i), kind });
                }
                let missing = ancestors.get(first_missing..).unwrap_or_default();
                implied = implied.saturating_add(u32::try_from(missing.len()).unwrap_or(u32::MAX));
                if implied > opts.limits.max_entries {
                    return Err(ExtractError::TooManyImplied(opts.limits.max_entries));
                }
                for k in missing {
                    seen.insert(*k, Node { kind: Kind::Dir, meta: None });
                }
                for comp in parent_bytes.split(|&c| c == b'/').skip(first_missing) {
                    count_names(comp.len())?;
                }
                if let Some(d) = dest.as_mut() {
                    d.enter(parent_bytes, ancestors, first_missing, &seen)
                        .map_err(ExtractError::io(format!("creating the parent directories of {shown}")))?;
                }
                cur = Some((parent_bytes.to_vec(), st.clone()));
                st
            }
        };
        let parent_state = state.clone();
        let key = state.push(name_bytes);
        match seen.get(&key).map(|n| n.kind) {
            None => {}
            Some(Kind::Deleted) => {
                return Err(ExtractError::DeleteConflict { path: shown, deleted: path.to_string() });
            }
            Some(_) => return Err(ExtractError::Duplicate(shown)),
        }
        count_names(name_bytes_of(&path))?;
        let name = OsStr::from_bytes(path.file_name());
        let mut node = Node { kind: Kind::File, meta: None };
        match etype {
            tar::EntryType::Directory => {
                let meta = DirMeta { mode: fields.mode, mtime: fields.mtime };
                if let Some(d) = dest.as_mut() {
                    d.make_dir(name, meta, fields).map_err(ExtractError::io(format!("creating {shown}")))?;
                    node.meta = Some(meta);
                }
                // The extractor is now in the new directory (in verify-only
                // mode too, so that both modes do the same checks).
                cur = Some((path.as_bytes().to_vec(), state));
                summary.dirs += 1;
                node.kind = Kind::Dir;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(w) = &whiteout {
                    if entry.size() != 0 {
                        return Err(ExtractError::BadWhiteout(shown));
                    }
                    if let Whiteout::Path(target) = w {
                        // Its target is a sibling: same parent, checked above.
                        let tkey = parent_state.clone().push(target.file_name());
                        if seen.get(&tkey).is_some_and(|n| n.kind != Kind::Deleted) {
                            return Err(ExtractError::DeleteConflict { path: shown, deleted: target.to_string() });
                        }
                        seen.insert(tkey, Node { kind: Kind::Deleted, meta: None });
                    }
                    summary.whiteouts += 1;
                }
                let mut file = match dest.as_ref() {
                    Some(d) => Some(d.create_file(name).map_err(ExtractError::io(format!("creating {shown}")))?),
                    None => None,
                };
                let n = copy(&mut entry, file.as_mut(), &mut buf, opts.cancel).map_err(|e| {
                    if e.get_ref().is_some_and(|i| i.is::<CancelledIo>()) {
                        ExtractError::Cancelled
                    } else {
                        ExtractError::Io { context: format!("extracting {shown}"), err: e }
                    }
                })?;
                summary.file_bytes += n;
                if let (Some(f), Some(d)) = (&file, dest.as_ref()) {
                    finish_file(f.as_fd(), d.owners, fields)
                        .map_err(ExtractError::io(format!("setting metadata of {shown}")))?;
                }
                if whiteout.is_some() {
                    node.kind = Kind::Whiteout;
                } else {
                    summary.files += 1;
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
                if let Some(d) = dest.as_ref() {
                    d.make_symlink(name, OsStr::from_bytes(&link), fields)
                        .map_err(ExtractError::io(format!("creating {shown}")))?;
                }
                summary.symlinks += 1;
                node.kind = Kind::Symlink;
            }
            tar::EntryType::Link => {
                let link = entry.link_name_bytes().map(|c| c.into_owned()).unwrap_or_default();
                let shown_target = String::from_utf8_lossy(&link).into_owned();
                let bad = || ExtractError::BadHardLink { path: shown.clone(), target: shown_target.clone() };
                let link_path = RelPath::parse(&link, opts.limits.max_path).map_err(|_| bad())?;
                if seen.get(&keyer.key(&link_path)).map(|n| n.kind) != Some(Kind::File) {
                    return Err(bad());
                }
                if let Some(d) = dest.as_ref() {
                    d.make_hardlink(&link_path, name).map_err(ExtractError::io(format!("creating {shown}")))?;
                }
                summary.hardlinks += 1;
            }
            other => {
                let kind = match other {
                    tar::EntryType::GNUSparse => "sparse file entry",
                    tar::EntryType::XGlobalHeader => "pax global header",
                    _ => "unsupported entry type",
                };
                return Err(ExtractError::Forbidden { path: shown, kind });
            }
        }
        seen.insert(key, node);
    }
    if let Some(d) = dest.as_mut() {
        d.leave().map_err(ExtractError::io("setting metadata of a directory"))?;
    }
    Ok(summary)
}

/// The bytes of `path`'s last component.
fn name_bytes_of(path: &RelPath) -> usize {
    path.file_name().len()
}

/// The first `i + 1` components of `path`, for messages.
fn prefix_shown(path: &RelPath, i: usize) -> String {
    let bytes = path.as_bytes();
    let end = bytes.iter().enumerate().filter(|(_, c)| **c == b'/').nth(i).map_or(bytes.len(), |(n, _)| n);
    String::from_utf8_lossy(bytes.get(..end).unwrap_or_default()).into_owned()
}

impl Dest {
    /// Makes `parent` the current directory: applies the metadata of the
    /// one being left, creates the missing ancestors (from index
    /// `first_missing` of `ancestors` on) and opens it.
    fn enter(
        &mut self,
        parent: &[u8],
        ancestors: &[PathKey],
        first_missing: usize,
        seen: &HashMap<PathKey, Node>,
    ) -> io::Result<()> {
        self.leave()?;
        let comps: Vec<&[u8]> = if parent.is_empty() { Vec::new() } else { parent.split(|&c| c == b'/').collect() };
        let existing_len = comps.iter().take(first_missing).map(|c| c.len() + 1).sum::<usize>().saturating_sub(1);
        let mut fd = self.open_dir(parent.get(..existing_len).unwrap_or_default())?;
        if let Some(missing) = comps.get(first_missing..).filter(|m| !m.is_empty()) {
            // The deepest existing ancestor gets a new child: let its owner
            // write to it, and restore its mode and mtime afterwards.
            let meta = first_missing.checked_sub(1).and_then(|i| ancestors.get(i)).and_then(|k| seen.get(k)?.meta);
            grant(fd.as_fd(), meta)?;
            let top = fd;
            let mut below: Option<OwnedFd> = None;
            for comp in missing {
                let at = below.as_ref().unwrap_or(&top);
                let name = OsStr::from_bytes(comp);
                rustix::fs::mkdirat(at, name, Mode::from_raw_mode(0o755))?;
                let next = rustix::fs::openat(at, name, dir_flags(), Mode::empty())?;
                below = Some(next);
            }
            if let Some(m) = meta {
                finish_dir(top.as_fd(), m)?;
            }
            fd = below.unwrap_or(top);
        }
        let meta = ancestors.last().and_then(|k| seen.get(k)?.meta);
        grant(fd.as_fd(), meta)?;
        self.cur = Some(Cur { fd, meta });
        Ok(())
    }

    /// Applies the metadata of the current directory (it may have changed
    /// since it was last applied: entries were made in it).
    fn leave(&mut self) -> io::Result<()> {
        if let Some(Cur { fd, meta: Some(m) }) = self.cur.take() {
            finish_dir(fd.as_fd(), m)?;
        }
        Ok(())
    }

    fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { OsStr::new(".") } else { OsStr::from_bytes(rel) };
        Ok(rustix::fs::openat(&self.root, rel, dir_flags(), Mode::empty())?)
    }

    fn cur(&self) -> io::Result<BorrowedFd<'_>> {
        self.cur.as_ref().map(|c| c.fd.as_fd()).ok_or_else(|| io::Error::other("no current directory"))
    }

    /// Creates a directory in the current one and makes it the current one
    /// (its mode is applied when the extractor leaves it).
    fn make_dir(&mut self, name: &OsStr, meta: DirMeta, fields: Fields) -> io::Result<()> {
        let cur = self.cur()?;
        rustix::fs::mkdirat(cur, name, Mode::from_raw_mode(0o700))?;
        let fd = rustix::fs::openat(cur, name, dir_flags(), Mode::empty())?;
        if self.owners {
            rustix::fs::fchown(&fd, Some(uid(fields.uid)), Some(gid(fields.gid)))?;
        }
        self.leave()?;
        self.cur = Some(Cur { fd, meta: Some(meta) });
        Ok(())
    }

    fn create_file(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(self.cur()?, name, flags, Mode::from_raw_mode(0o600))?))
    }

    fn make_symlink(&self, name: &OsStr, target: &OsStr, fields: Fields) -> io::Result<()> {
        let cur = self.cur()?;
        rustix::fs::symlinkat(target, cur, name)?;
        if self.owners {
            rustix::fs::chownat(cur, name, Some(uid(fields.uid)), Some(gid(fields.gid)), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        rustix::fs::utimensat(cur, name, &times(fields.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Links `name` in the current directory to the earlier file `target`,
    /// through its parent's descriptor (a full path could pass `PATH_MAX`).
    fn make_hardlink(&self, target: &RelPath, name: &OsStr) -> io::Result<()> {
        let tdir = self.open_dir(target.parent().as_ref().map(RelPath::as_bytes).unwrap_or_default())?;
        let tname = OsStr::from_bytes(target.file_name());
        rustix::fs::linkat(&tdir, tname, self.cur()?, name, AtFlags::empty())?;
        Ok(())
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn uid(id: u32) -> Uid {
    Uid::from_raw(id)
}

fn gid(id: u32) -> Gid {
    Gid::from_raw(id)
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec { tv_sec: mtime, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

/// Lets the owner write into a directory whose mode would stop it (an
/// extractor that is not root); [`finish_dir`] restores the mode.
fn grant(fd: BorrowedFd<'_>, meta: Option<DirMeta>) -> io::Result<()> {
    if let Some(m) = meta.filter(|m| m.mode & 0o700 != 0o700) {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode | 0o700))?;
    }
    Ok(())
}

fn finish_dir(fd: BorrowedFd<'_>, meta: DirMeta) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    rustix::fs::futimens(fd, &times(meta.mtime))?;
    Ok(())
}

fn finish_file(fd: BorrowedFd<'_>, owners: bool, fields: Fields) -> io::Result<()> {
    // chown clears set-id bits, so it must come before chmod.
    if owners {
        rustix::fs::fchown(fd, Some(uid(fields.uid)), Some(gid(fields.gid)))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(fields.mode))?;
    rustix::fs::futimens(fd, &times(fields.mtime))?;
    Ok(())
}

/// The error [`copy`] returns when cancelled, carried inside `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
struct CancelledIo;

fn copy<R: Read>(
    src: &mut R,
    mut dst: Option<&mut File>,
    buf: &mut [u8],
    cancel: Option<&AtomicBool>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(io::Error::other(CancelledIo));
        }
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

// Ranges of the numeric fields (docs/bundle-format.md, "Numeric fields").
const MODE_MAX: i128 = 0o7777777;
const ID_MAX: i128 = u32::MAX as i128 - 1;
const TIME_MAX: i128 = i64::MAX as i128;
const DEV_MAX: i128 = u32::MAX as i128;

/// Reads and range-checks the numeric fields of an entry's header and its
/// PAX records. A value out of range is refused, never wrapped: a negative
/// base-256 mtime once became a huge unsigned one and a panic.
fn fields<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Fields, ExtractError> {
    let h = *entry.header().as_bytes();
    let field = |name: &'static str, range: std::ops::Range<usize>, max: i128, text: &'static str, empty_ok: bool| {
        let raw = h.get(range).unwrap_or_default();
        let bad = |value: String| ExtractError::Numeric { path: shown.to_owned(), field: name, value, range: text };
        match parse_numeric(raw, empty_ok) {
            Some(v) if (0..=max).contains(&v) => Ok(v),
            Some(v) => Err(bad(v.to_string())),
            None => Err(bad(format!("{:?}", String::from_utf8_lossy(raw).trim_end_matches('\0')))),
        }
    };
    let mode = field("mode", 100..108, MODE_MAX, "0 to 0o7777777", false)?;
    let mut uid = field("uid", 108..116, ID_MAX, "0 to 4294967294", false)?;
    let mut gid = field("gid", 116..124, ID_MAX, "0 to 4294967294", false)?;
    field("size", 124..136, TIME_MAX, "0 to 2^63-1", false)?;
    let mut mtime = field("mtime", 136..148, TIME_MAX, "0 to 2^63-1", false)?;
    field("device major", 329..337, DEV_MAX, "0 to 4294967295", true)?;
    field("device minor", 337..345, DEV_MAX, "0 to 4294967295", true)?;
    let exts = entry.pax_extensions().map_err(ExtractError::io(format!("{shown}: reading its pax header")))?;
    for ext in exts.into_iter().flatten() {
        let ext = ext.map_err(ExtractError::io(format!("{shown}: reading its pax header")))?;
        let value = ext.value_bytes();
        let (name, max, text, is_time): (&'static str, i128, &'static str, bool) = match ext.key_bytes() {
            b"size" => ("pax size", TIME_MAX, "0 to 2^63-1", false),
            b"uid" => ("pax uid", ID_MAX, "0 to 4294967294", false),
            b"gid" => ("pax gid", ID_MAX, "0 to 4294967294", false),
            b"mtime" => ("pax mtime", TIME_MAX, "0 to 2^63-1", true),
            _ => continue,
        };
        let bad = |value: String| ExtractError::Numeric { path: shown.to_owned(), field: name, value, range: text };
        let v = match parse_decimal(value, is_time) {
            Some(v) if (0..=max).contains(&v) => v,
            Some(v) => return Err(bad(v.to_string())),
            None => return Err(bad(format!("{:?}", String::from_utf8_lossy(value)))),
        };
        match name {
            "pax uid" => uid = v,
            "pax gid" => gid = v,
            "pax mtime" => mtime = v,
            _ => {}
        }
    }
    // The ranges above make these conversions exact; only the low 12 bits
    // of the mode (permissions and set-id bits) are used.
    Ok(Fields {
        mode: u32::try_from(mode & 0o7777).unwrap_or(0),
        uid: u32::try_from(uid).unwrap_or(0),
        gid: u32::try_from(gid).unwrap_or(0),
        mtime: i64::try_from(mtime).unwrap_or(0),
    })
}

/// A tar numeric field: octal digits (space or NUL terminated), or GNU
/// base-256 (high bit of the first byte set; the rest a big-endian two's
/// complement number, so a leading 0xff is negative). `None` when it is
/// neither; an empty field is 0 only where `empty_ok`.
fn parse_numeric(raw: &[u8], empty_ok: bool) -> Option<i128> {
    let first = *raw.first()?;
    if first & 0x80 != 0 {
        let mut v = i128::from(first & 0x7f);
        if first & 0x40 != 0 {
            v -= 0x80;
        }
        for &b in raw.get(1..)? {
            v = v.checked_mul(256)?.checked_add(i128::from(b))?;
        }
        return Some(v);
    }
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = raw.get(..end)?.trim_ascii();
    if text.is_empty() {
        return empty_ok.then_some(0);
    }
    let mut v: i128 = 0;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(i128::from(b - b'0'))?;
    }
    Some(v)
}

/// A PAX decimal value: digits, with a leading `-` (then out of range) and,
/// for times, a fraction that is dropped (times are whole seconds).
fn parse_decimal(value: &[u8], is_time: bool) -> Option<i128> {
    let (neg, rest) = match value.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, value),
    };
    let (int, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(i) if is_time => (rest.get(..i)?, rest.get(i + 1..)?),
        Some(_) => return None,
        None => (rest, &b""[..]),
    };
    if int.is_empty() || int.len() > 30 || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i128 = 0;
    for &b in int {
        v = v.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    Some(if neg { -v } else { v })
}
