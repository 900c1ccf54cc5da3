//! Applying a verified staging tree to the root file system.
//!
//! The staging directory is the bundle's extracted tree, already
//! authenticated and checked by `stateless-bundle` (no `..`, no devices, no
//! links escaping the root, whiteouts well formed). This module lays it over
//! the real root (`/sysroot`), in two passes:
//!
//! 1. Deletions: opaque markers (`DIR/.wh..wh..opq` empties `DIR`), then
//!    whiteouts (`DIR/.wh.NAME` removes `DIR/NAME` and whatever is under it).
//! 2. Directories, files and links, in a pre-order walk of staging (names in
//!    byte order), then the metadata of every directory the root already had
//!    (merged), deepest first, so that writing into a directory does not
//!    disturb its mtime afterwards.
//!
//! The loader stages on the root's own file system (see
//! [`crate::staging`]), so pass 2 moves rather than copies: a file or
//! symlink is `rename`d from staging over its place in the root, and a
//! directory the root does not have is renamed in whole, with everything
//! under it, unless a deletion marker lies below it or a hard link under it
//! names a file outside it (those are merged entry by entry). Staging already
//! carries the bundle's modes, owners and times, which a rename keeps. Where
//! a rename fails with `EXDEV` (a directory of the root is another mount, or
//! staging is elsewhere) the entry is copied instead: written under a
//! temporary name in its target directory and renamed over the old one.
//!
//! Invariants:
//!
//! - Every path is resolved inside the root the way the booted system will
//!   see it: parents are opened with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)` on a descriptor of the root, so an absolute
//!   symlink (`var/run -> /run`) or one that climbs (`x -> ../../..`) stays in
//!   the root, and merged-/usr links (`lib -> usr/lib`) are kept and followed.
//!   Everything else is a `*at` call on the parent's descriptor, and the final
//!   component is never followed. Staging is walked with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
//! - A reader never sees a half-written file or a missing link: each one
//!   replaces the old one with a single rename.
//! - `.wh.*` entries are never written into the root.
//! - A deletion never crosses a mount point, never removes the root, and
//!   never removes the staging directory (which may be inside the root).
//! - Everything about the staging tree is checked before the root is
//!   touched; a failure half-way through leaves the root partly applied (the
//!   caller's `onfail` policy decides what happens next).
//!
//! Memory and time are linear in the number of entries, whatever the
//! paths' length or depth: the plan keeps, per entry, its name and its
//! parent's index rather than its path (the path of the entry being applied
//! is made when it is needed), does not keep symlink targets, and staging is
//! walked with an explicit stack and read through descriptors, so a path of
//! the full 4,096 bytes under a long staging path works.
//!
//! Files are not fsynced: the root is rebuilt on every boot, and a power
//! cut before switch-root reruns the loader.

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::fs::{
    AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, RenameFlags, ResolveFlags, StatxAttributes, StatxFlags, Timespec,
    Timestamps, Uid,
};
use rustix::io::Errno;

/// Name of an OCI opaque-directory marker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of an OCI whiteout.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// How often to retry an `openat2` that failed with `EAGAIN` (the kernel
/// returns it for `RESOLVE_IN_ROOT` when a rename raced the lookup).
const OPENAT2_RETRIES: u32 = 16;
/// How many temporary names to try before giving up.
const TEMP_ATTEMPTS: u32 = 64;

/// Options for [`apply`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Give files the owners (uid/gid) they have in staging. Needs root;
    /// staging must have been extracted with owners too.
    pub owners: bool,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated (kept symlinks are not counted).
    pub dirs: u64,
    /// Symbolic links written.
    pub symlinks: u64,
    /// Hard links made.
    pub hardlinks: u64,
    /// Entries removed from the root by whiteouts and opaque markers,
    /// counting everything under a removed directory.
    pub deleted: u64,
    /// Bytes of regular file data written.
    pub bytes: u64,
}

/// Why [`apply`] stopped. Paths are shown as the booted system will see
/// them (`/etc/motd`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The root directory could not be opened.
    #[error("opening the root {}", path.display())]
    OpenRoot {
        /// The root as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The staging tree could not be read.
    #[error("reading staging {}", path.display())]
    Staging {
        /// The path in staging.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Staging holds something the loader never applies (a device, fifo or
    /// socket, a malformed whiteout, a whiteout that is not a file).
    #[error("staging {}: {what} refused", path.display())]
    Unsupported {
        /// The path in staging.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// The root has a directory where the bundle has a file or link; the
    /// bundle must delete the directory first.
    #[error("{path}: the root has a directory where the bundle has a {kind}; the bundle must delete it first")]
    DirectoryInTheWay {
        /// The path in the root.
        path: String,
        /// What the bundle has there.
        kind: &'static str,
    },
    /// The root has a symlink where the bundle has a directory, and it does
    /// not lead to a directory.
    #[error("{path}: the root has a symlink that does not lead to a directory where the bundle has a directory")]
    SymlinkNotDirectory {
        /// The path in the root.
        path: String,
    },
    /// A file system operation on the root failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done ("creating", "renaming", …).
        op: &'static str,
        /// The path in the root.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Applies the tree at `staging` to the root at `sysroot`. See the module
/// documentation for the order and the guarantees. Entries are moved out of
/// staging where they can be, so what is left of it afterwards is only good
/// for removing.
pub fn apply(staging: &Path, sysroot: &Path, opts: &ApplyOptions) -> Result<ApplySummary, ApplyError> {
    let stage = Stage::open(staging)?;
    let plan = Plan::scan(&stage)?;
    let mut root = Root::open(sysroot)?;
    root.spare = Some((stage.node.dev, stage.node.ino));
    let mut summary = ApplySummary::default();
    for &dir in &plan.opaque {
        root.clear_opaque(&plan.rel(dir), &mut summary)?;
    }
    for &(parent, name) in &plan.whiteouts {
        root.delete(&plan.rel(parent).join(OsStr::from_bytes(plan.name(name))), &mut summary)?;
    }
    let tainted = plan.tainted();
    // Indices of the directories merged (not moved), for their metadata.
    let mut dirs: Vec<u32> = Vec::new();
    let mut next = 0;
    while let Some(stored) = plan.get(next) {
        let index = next;
        next += 1;
        let entry = plan.entry(index);
        match stored.op {
            Stored::Dir => {
                // Looked at only for a directory the root lacks.
                let movable = || {
                    !tainted.get(index).copied().unwrap_or(true)
                        && plan.subtree(index).all(|j| match plan.get(j).map(|e| e.op) {
                            // The first name is inside this directory.
                            Some(Stored::HardLink(first)) => plan.subtree(index).contains(&(first as usize)),
                            _ => true,
                        })
                };
                match root.make_dir(&stage, &entry.rel, movable)? {
                    Made::Moved => {
                        let below = plan.subtree(index);
                        summary.dirs += 1;
                        next += below.len();
                        for e in below.filter_map(|j| plan.get(j)) {
                            summary.count(e);
                        }
                    }
                    Made::Dir => {
                        dirs.push(u32::try_from(index).unwrap_or(u32::MAX));
                        summary.dirs += 1;
                    }
                    Made::KeptSymlink => {}
                }
            }
            Stored::File => {
                summary.bytes += root.place_file(&stage, &entry, opts)?;
                summary.files += 1;
            }
            Stored::Symlink => {
                root.place_symlink(&stage, &entry, opts)?;
                summary.symlinks += 1;
            }
            Stored::HardLink(first) => {
                root.write_hardlink(&entry.rel, &plan.rel(first))?;
                summary.hardlinks += 1;
            }
        }
    }
    // Deepest first: setting a directory's metadata must come after
    // everything written into it, and a read-only parent must not block a
    // child.
    for &i in dirs.iter().rev() {
        root.finish_dir(&plan.entry(i as usize), opts)?;
    }
    log::debug!(
        "applied {} files, {} dirs, {} symlinks, {} hard links, {} deletions, {} bytes ({} moved, {} copied)",
        summary.files,
        summary.dirs,
        summary.symlinks,
        summary.hardlinks,
        summary.deleted,
        summary.bytes,
        root.moved.get(),
        root.copied.get()
    );
    Ok(summary)
}

impl ApplySummary {
    /// Counts an entry that was moved into the root inside its directory.
    fn count(&mut self, e: &StoredEntry) {
        match e.op {
            Stored::Dir => self.dirs += 1,
            Stored::File => {
                self.files += 1;
                self.bytes += e.meta.size;
            }
            Stored::Symlink => self.symlinks += 1,
            Stored::HardLink(_) => self.hardlinks += 1,
        }
    }
}

/// What [`Root::make_dir`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    /// The directory was there or was made; its contents follow entry by
    /// entry and its metadata is set at the end.
    Dir,
    /// The staging directory was renamed into the root with all it holds.
    Moved,
    /// The root has a symlink to a directory there, which is kept.
    KeptSymlink,
}

/// What to do with one staging entry, as the plan keeps it.
#[derive(Debug, Clone, Copy)]
enum Stored {
    Dir,
    File,
    Symlink,
    /// A second name for the file at this index of the plan.
    HardLink(u32),
}

/// The parent index of an entry directly in the root.
const ROOT: u32 = u32::MAX;

/// A span of [`Plan::names`].
#[derive(Debug, Clone, Copy)]
struct NameRef {
    start: u32,
    len: u16,
}

/// One entry of staging as the plan keeps it: its name and its parent's
/// index, not its path, so that what the plan holds per entry does not grow
/// with path length (100,000 entries of 3.9 KB paths once took 400 MiB).
#[derive(Debug)]
struct StoredEntry {
    parent: u32,
    name: NameRef,
    op: Stored,
    meta: Meta,
    /// For a directory: the index after the last entry below it.
    end: u32,
}

/// Metadata taken from staging.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    /// Bytes (regular files).
    size: u64,
}

impl Meta {
    fn of_statx(st: &rustix::fs::Statx) -> Meta {
        Meta {
            mode: u32::from(st.stx_mode) & 0o7777,
            uid: st.stx_uid,
            gid: st.stx_gid,
            mtime: Timespec { tv_sec: st.stx_mtime.tv_sec, tv_nsec: st.stx_mtime.tv_nsec.into() },
            size: st.stx_size,
        }
    }

    fn times(&self) -> Timestamps {
        Timestamps { last_access: self.mtime, last_modification: self.mtime }
    }

    fn owner(&self) -> (Option<Uid>, Option<Gid>) {
        // -1 means "leave unchanged" to chown; never pass it on.
        (
            (self.uid != u32::MAX).then(|| Uid::from_raw(self.uid)),
            (self.gid != u32::MAX).then(|| Gid::from_raw(self.gid)),
        )
    }
}

/// One entry of staging, other than deletions, with its path: made from
/// the plan for the entry being applied.
#[derive(Debug)]
struct Entry {
    /// Relative to the staging root and to the root.
    rel: PathBuf,
    meta: Meta,
}

/// Everything staging asks for, read before the root is touched.
#[derive(Debug, Default)]
struct Plan {
    /// Directories to empty (indices; [`ROOT`] is the root).
    opaque: Vec<u32>,
    /// Paths to delete: parent index and name.
    whiteouts: Vec<(u32, NameRef)>,
    /// Directories, files and links in pre-order, in chunks of
    /// [`ENTRY_CHUNK`] (a growing Vec would briefly hold its old and new
    /// buffers: half as much again at the peak).
    entries: Vec<Vec<StoredEntry>>,
    /// How many entries.
    len: usize,
    /// Every name, one after the other, in chunks of [`NAME_CHUNK`] bytes
    /// (a name never straddles two).
    names: Vec<Vec<u8>>,
}

/// A directory's names: all of them one after the other, and the (start,
/// length) span of each, sorted by name.
type Listing = (Vec<u8>, Vec<(u32, usize)>);

/// Entries per chunk of [`Plan::entries`].
const ENTRY_CHUNK: usize = 4096;
/// Bytes per chunk of [`Plan::names`].
const NAME_CHUNK: usize = 1 << 20;

impl Plan {
    fn get(&self, i: usize) -> Option<&StoredEntry> {
        self.entries.get(i / ENTRY_CHUNK)?.get(i % ENTRY_CHUNK)
    }

    fn push(&mut self, e: StoredEntry) {
        match self.entries.last_mut().filter(|c| c.len() < ENTRY_CHUNK) {
            Some(chunk) => chunk.push(e),
            None => {
                let mut chunk = Vec::with_capacity(ENTRY_CHUNK);
                chunk.push(e);
                self.entries.push(chunk);
            }
        }
        self.len += 1;
    }

    fn name(&self, n: NameRef) -> &[u8] {
        let (chunk, off) = (n.start as usize / NAME_CHUNK, n.start as usize % NAME_CHUNK);
        self.names.get(chunk).and_then(|c| c.get(off..off + usize::from(n.len))).unwrap_or_default()
    }

    fn add_name(&mut self, name: &[u8]) -> NameRef {
        if self.names.last().is_none_or(|c| c.len() + name.len() > NAME_CHUNK) {
            self.names.push(Vec::with_capacity(NAME_CHUNK));
        }
        let chunks = self.names.len().saturating_sub(1);
        let last = self.names.last_mut();
        let off = last.as_ref().map_or(0, |c| c.len());
        if let Some(c) = last {
            c.extend_from_slice(name);
        }
        let start = u32::try_from(chunks * NAME_CHUNK + off).unwrap_or(u32::MAX);
        NameRef { start, len: u16::try_from(name.len()).unwrap_or(u16::MAX) }
    }

    /// The path of entry `i` (or of the root, for [`ROOT`]), made by
    /// walking up its parents.
    fn rel(&self, i: u32) -> PathBuf {
        let mut names = Vec::new();
        let mut cur = i;
        while let Some(e) = self.get(cur as usize) {
            names.push(self.name(e.name));
            cur = e.parent;
        }
        let mut out = PathBuf::new();
        for n in names.iter().rev() {
            out.push(OsStr::from_bytes(n));
        }
        out
    }

    /// Entry `i` with its path, to apply.
    fn entry(&self, i: usize) -> Entry {
        let index = u32::try_from(i).unwrap_or(ROOT);
        let meta = self.get(i).map(|e| e.meta).unwrap_or_default();
        Entry { rel: self.rel(index), meta }
    }

    /// Whether each entry is a directory at or below which a deletion marker
    /// sits: such a directory must be merged, never moved whole, or the
    /// marker would land in the root.
    fn tainted(&self) -> Vec<bool> {
        let mut out = vec![false; self.len];
        for &start in self.opaque.iter().chain(self.whiteouts.iter().map(|(p, _)| p)) {
            let mut cur = start;
            // Once a directory is marked, so are all of its ancestors:
            // stopping there keeps this linear in the number of entries.
            while let Some(flag) = out.get_mut(cur as usize) {
                if *flag {
                    break;
                }
                *flag = true;
                cur = self.get(cur as usize).map_or(ROOT, |e| e.parent);
            }
        }
        out
    }

    /// The indices of the entries under the directory at `i` (they follow
    /// it, the walk being in pre-order).
    fn subtree(&self, i: usize) -> std::ops::Range<usize> {
        let end = self.get(i).map_or(0, |e| e.end as usize);
        i + 1..end.max(i + 1)
    }

    /// Walks staging in pre-order, names in byte order. The walk keeps its
    /// own stack (a bundle's tree can be 2,000 levels deep) holding, for
    /// each directory on the way down, the names still to visit.
    fn scan(stage: &Stage) -> Result<Plan, ApplyError> {
        let mut plan = Plan::default();
        let res = plan.scan_all(stage);
        stage.forget();
        res.map(|()| plan)
    }

    fn scan_all(&mut self, stage: &Stage) -> Result<(), ApplyError> {
        let mut inodes: HashMap<((u32, u32), u64), u32> = HashMap::new();
        let mut stack = vec![(ROOT, self.read_dir(stage, ROOT)?, 0usize)];
        while let Some((dir, (arena, spans), pos)) = stack.last_mut() {
            let dir = *dir;
            let Some(name) = spans.get(*pos).and_then(|&(start, len)| arena.get(start as usize..start as usize + len))
            else {
                let end = u32::try_from(self.len).unwrap_or(ROOT);
                if let Some(e) =
                    self.entries.get_mut(dir as usize / ENTRY_CHUNK).and_then(|c| c.get_mut(dir as usize % ENTRY_CHUNK))
                {
                    e.end = end;
                }
                stack.pop();
                continue;
            };
            *pos += 1;
            let name = name.to_vec();
            let rel = self.rel(dir).join(OsStr::from_bytes(&name));
            let full = || stage.path.join(&rel);
            let (parent, _) = stage.parent(&rel)?;
            let st = rustix::fs::statx(
                &*parent,
                OsStr::from_bytes(&name),
                AtFlags::SYMLINK_NOFOLLOW,
                StatxFlags::BASIC_STATS,
            )
            .map_err(|e| ApplyError::Staging { path: full(), source: e.into() })?;
            let index = u32::try_from(self.len).unwrap_or(ROOT);
            let op = match FileType::from_raw_mode(u32::from(st.stx_mode)) {
                FileType::Directory => Stored::Dir,
                FileType::Symlink => Stored::Symlink,
                // Staging holds a bundle's hard links as real hard links:
                // the first name walked becomes the file, later ones links.
                FileType::RegularFile if st.stx_nlink > 1 => {
                    match inodes.entry(((st.stx_dev_major, st.stx_dev_minor), st.stx_ino)) {
                        std::collections::hash_map::Entry::Occupied(first) => Stored::HardLink(*first.get()),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(index);
                            Stored::File
                        }
                    }
                }
                FileType::RegularFile => Stored::File,
                other => {
                    let what = match other {
                        FileType::BlockDevice | FileType::CharacterDevice => "device node",
                        FileType::Fifo => "fifo",
                        _ => "special file",
                    };
                    return Err(ApplyError::Unsupported { path: full(), what });
                }
            };
            let name = self.add_name(&name);
            self.push(StoredEntry { parent: dir, name, op, meta: Meta::of_statx(&st), end: index + 1 });
            if matches!(op, Stored::Dir) {
                let below = self.read_dir(stage, index)?;
                stack.push((index, below, 0));
            }
        }
        Ok(())
    }

    /// Reads the staging directory at index `dir` (or the root): records
    /// its deletion markers and returns its other names, sorted: all the
    /// names one after the other, and (start, length) spans in order. It is
    /// reached through its parent's descriptor
    /// (the staging directory's path plus an entry's may pass `PATH_MAX`),
    /// and no descriptor is kept (a deep tree would run out).
    fn read_dir(&mut self, stage: &Stage, dir: u32) -> Result<Listing, ApplyError> {
        let rel = self.rel(dir);
        let err = |path: PathBuf| move |e: Errno| ApplyError::Staging { path, source: e.into() };
        let read = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dirfd = if rel.as_os_str().is_empty() {
            rustix::fs::openat(&stage.fd, ".", read, Mode::empty())
        } else {
            let (parent, name) = stage.parent(&rel)?;
            rustix::fs::openat(&*parent, name, read, Mode::empty())
        }
        .map_err(err(stage.path.join(&rel)))?;
        // One buffer of names and a span per name: a directory may hold
        // 100,000 entries.
        let mut arena: Vec<u8> = Vec::new();
        let mut spans: Vec<(u32, usize)> = Vec::new();
        let mut listing = Dir::read_from(&dirfd).map_err(err(stage.path.join(&rel)))?;
        while let Some(e) = listing.read() {
            let e = e.map_err(err(stage.path.join(&rel)))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                spans.push((u32::try_from(arena.len()).unwrap_or(u32::MAX), n.len()));
                arena.extend_from_slice(n);
            }
        }
        drop(listing);
        let slice = |&(start, len): &(u32, usize)| arena.get(start as usize..start as usize + len).unwrap_or_default();
        spans.sort_unstable_by(|a, b| slice(a).cmp(slice(b)));
        let mut kept = Vec::with_capacity(spans.len());
        for span in spans {
            let name = slice(&span).to_vec();
            if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
                let full = || stage.path.join(&rel).join(OsStr::from_bytes(&name));
                let st =
                    rustix::fs::statx(&dirfd, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)
                        .map_err(err(full()))?;
                if FileType::from_raw_mode(u32::from(st.stx_mode)) != FileType::RegularFile {
                    return Err(ApplyError::Unsupported { path: full(), what: "whiteout that is not a regular file" });
                }
                if name == OPAQUE_MARKER {
                    self.opaque.push(dir);
                } else if target.is_empty() || target == b"." || target == b".." || target.starts_with(WHITEOUT_PREFIX)
                {
                    return Err(ApplyError::Unsupported { path: full(), what: "malformed whiteout name" });
                } else {
                    let target = self.add_name(target);
                    self.whiteouts.push((dir, target));
                }
                continue;
            }
            kept.push(span);
        }
        Ok((arena, kept))
    }
}

/// `/rel`, for messages.
fn shown(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// Wraps an error from an operation on `rel` in the root.
fn ctx<E: Into<io::Error>>(op: &'static str, rel: &Path) -> impl FnOnce(E) -> ApplyError {
    let path = shown(rel);
    move |err| ApplyError::Io { op, path, source: err.into() }
}

/// What `statx` says about a name in a directory.
#[derive(Debug, Clone, Copy)]
struct Node {
    kind: FileType,
    dev: (u32, u32),
    ino: u64,
    mount_root: bool,
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> Result<Option<Node>, Errno> {
    stat_fd(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

fn stat_fd(dir: &OwnedFd, name: &OsStr, flags: AtFlags) -> Result<Option<Node>, Errno> {
    match rustix::fs::statx(dir, name, flags, StatxFlags::TYPE | StatxFlags::INO) {
        Ok(st) => Ok(Some(Node {
            kind: FileType::from_raw_mode(u32::from(st.stx_mode)),
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            mount_root: st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
                && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT),
        })),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Counter for temporary names, unique within the process.
static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `make` with fresh temporary names until one does not exist yet.
fn with_temp_name<T>(mut make: impl FnMut(&OsStr) -> Result<T, Errno>) -> Result<(OsString, T), Errno> {
    let pid = std::process::id();
    for _ in 0..TEMP_ATTEMPTS {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = OsString::from(format!(".#stateless-apply.{pid}.{n}"));
        match make(&name) {
            Ok(t) => return Ok((name, t)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EXIST)
}

/// `openat2`, retried while the kernel says a rename raced the lookup.
fn openat2_retry(dir: &OwnedFd, rel: &Path, flags: OFlags, resolve: ResolveFlags) -> Result<OwnedFd, Errno> {
    let path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < OPENAT2_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// The staging tree, open as a directory descriptor, to move entries out
/// of. Only the extractor wrote it, so it holds no symlinked directories:
/// lookups refuse every symlink and never leave it.
struct Stage {
    path: PathBuf,
    fd: OwnedFd,
    node: Node,
    /// The parent directory last opened by [`Stage::parent`].
    last_parent: RefCell<Option<(PathBuf, Rc<OwnedFd>)>>,
}

impl Stage {
    fn open(staging: &Path) -> Result<Stage, ApplyError> {
        let err = |source: io::Error| ApplyError::Staging { path: staging.to_owned(), source };
        let fd = rustix::fs::openat(
            CWD,
            staging,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(e.into()))?;
        let node = stat_fd(&fd, OsStr::new(""), AtFlags::EMPTY_PATH)
            .map_err(|e| err(e.into()))?
            .ok_or_else(|| err(io::ErrorKind::NotFound.into()))?;
        Ok(Stage { path: staging.to_owned(), fd, node, last_parent: RefCell::new(None) })
    }

    /// The parent of `rel` in staging, reused between siblings like
    /// [`Root::entry_parent`].
    fn parent<'a>(&self, rel: &'a Path) -> Result<(Rc<OwnedFd>, &'a OsStr), ApplyError> {
        let err = |e: Errno| ApplyError::Staging { path: self.path.join(rel), source: e.into() };
        let name = rel.file_name().ok_or_else(|| err(Errno::INVAL))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let mut last = self.last_parent.borrow_mut();
        if let Some((path, fd)) = last.as_ref() {
            if path == parent {
                return Ok((Rc::clone(fd), name));
            }
        }
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd = Rc::new(openat2_retry(&self.fd, parent, OFlags::PATH | OFlags::DIRECTORY, resolve).map_err(err)?);
        *last = Some((parent.to_owned(), Rc::clone(&fd)));
        Ok((fd, name))
    }

    /// Forgets the cached parent (after a directory moved out of staging).
    fn forget(&self) {
        *self.last_parent.borrow_mut() = None;
    }
}

/// The root, open as a directory descriptor.
struct Root {
    fd: OwnedFd,
    node: Node,
    /// A directory no deletion may remove: the staging tree, which the
    /// loader keeps inside the root.
    spare: Option<((u32, u32), u64)>,
    /// The parent directory last opened by [`Root::entry_parent`].
    last_parent: RefCell<Option<(PathBuf, Rc<OwnedFd>)>>,
    /// Entries renamed out of staging (a directory counts once).
    moved: Cell<u64>,
    /// Entries copied because a rename crossed file systems.
    copied: Cell<u64>,
}

impl Root {
    fn open(sysroot: &Path) -> Result<Root, ApplyError> {
        let err = |source: io::Error| ApplyError::OpenRoot { path: sysroot.to_owned(), source };
        let fd = rustix::fs::openat(CWD, sysroot, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| err(e.into()))?;
        let node = stat_fd(&fd, OsStr::new(""), AtFlags::EMPTY_PATH)
            .map_err(|e| err(e.into()))?
            .ok_or_else(|| err(io::ErrorKind::NotFound.into()))?;
        Ok(Root { fd, node, spare: None, last_parent: RefCell::new(None), moved: Cell::new(0), copied: Cell::new(0) })
    }

    /// Whether `node` is the directory no deletion may remove.
    fn spared(&self, node: &Node) -> bool {
        self.spare == Some((node.dev, node.ino))
    }

    /// Opens `rel` (a path relative to the root; empty for the root itself)
    /// resolving every symlink inside the root.
    fn open_in_root(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
        openat2_retry(&self.fd, rel, flags, ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS)
    }

    /// Opens the parent of `rel` (as `O_PATH`) and returns it with the final
    /// component.
    fn parent<'a>(&self, rel: &'a Path) -> Result<(OwnedFd, &'a OsStr), Errno> {
        let name = rel.file_name().ok_or(Errno::INVAL)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self.open_in_root(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok((fd, name))
    }

    /// [`Root::parent`] for the directories, files and links pass. The walk
    /// is in pre-order with names sorted, so siblings come one after the
    /// other: the last parent opened is kept and reused rather than resolved
    /// again for each of them (a third of the system calls for a tree of
    /// small files). Reusing it is safe in that pass: deletions are over, a
    /// directory's own entry comes before its children, and `make_dir` only
    /// ever replaces a non-directory, which cannot be a cached parent.
    fn entry_parent<'a>(&self, rel: &'a Path) -> Result<(Rc<OwnedFd>, &'a OsStr), Errno> {
        let name = rel.file_name().ok_or(Errno::INVAL)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let mut last = self.last_parent.borrow_mut();
        if let Some((path, fd)) = last.as_ref() {
            if path == parent {
                return Ok((Rc::clone(fd), name));
            }
        }
        let fd = Rc::new(self.open_in_root(parent, OFlags::PATH | OFlags::DIRECTORY)?);
        *last = Some((parent.to_owned(), Rc::clone(&fd)));
        Ok((fd, name))
    }

    /// Removes `rel` and everything under it. Absent is fine.
    fn delete(&self, rel: &Path, summary: &mut ApplySummary) -> Result<(), ApplyError> {
        let (parent, name) = match self.parent(rel) {
            Ok(p) => p,
            Err(Errno::NOENT | Errno::NOTDIR) => {
                log::debug!("whiteout {}: not present", shown(rel));
                return Ok(());
            }
            Err(e) => return Err(ctx("opening the parent of", rel)(e)),
        };
        let Some(node) = stat_at(&parent, name).map_err(ctx("inspecting", rel))? else {
            log::debug!("whiteout {}: not present", shown(rel));
            return Ok(());
        };
        if node.kind != FileType::Directory {
            rustix::fs::unlinkat(&parent, name, AtFlags::empty()).map_err(ctx("deleting", rel))?;
            summary.deleted += 1;
            return Ok(());
        }
        if (node.dev, node.ino) == (self.node.dev, self.node.ino) {
            log::warn!("whiteout {}: refusing to delete the root", shown(rel));
            return Ok(());
        }
        if self.spared(&node) {
            log::warn!("whiteout {}: refusing to delete the staging directory", shown(rel));
            return Ok(());
        }
        let parent_node = stat_fd(&parent, OsStr::new(""), AtFlags::EMPTY_PATH)
            .map_err(ctx("inspecting", rel))?
            .ok_or_else(|| ctx("inspecting", rel)(Errno::NOENT))?;
        if node.mount_root || node.dev != parent_node.dev {
            log::warn!("whiteout {}: is a mount point, not deleted", shown(rel));
            return Ok(());
        }
        let dir = rustix::fs::openat(&parent, name, dir_flags(), Mode::empty()).map_err(ctx("opening", rel))?;
        if self.clear_dir(&dir, node.dev, rel, summary)? {
            log::warn!("whiteout {}: a mount point below it was kept, so was the directory", shown(rel));
            return Ok(());
        }
        rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR).map_err(ctx("deleting", rel))?;
        summary.deleted += 1;
        Ok(())
    }

    /// Empties the directory `rel` for an opaque marker. Absent is fine.
    fn clear_opaque(&self, rel: &Path, summary: &mut ApplySummary) -> Result<(), ApplyError> {
        let dir = match self.open_in_root(rel, dir_flags()) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => {
                log::debug!("opaque {}: no such directory", shown(rel));
                return Ok(());
            }
            Err(e) => return Err(ctx("opening", rel)(e)),
        };
        let node = stat_fd(&dir, OsStr::new(""), AtFlags::EMPTY_PATH)
            .map_err(ctx("inspecting", rel))?
            .ok_or_else(|| ctx("inspecting", rel)(Errno::NOENT))?;
        if self.spared(&node) {
            log::warn!("opaque {}: refusing to empty the staging directory", shown(rel));
            return Ok(());
        }
        if self.clear_dir(&dir, node.dev, rel, summary)? {
            log::warn!("opaque {}: mount points in it were kept", shown(rel));
        }
        Ok(())
    }

    /// Removes everything in `dir` (on device `dev`) except mount points.
    /// Returns true when something had to be kept.
    fn clear_dir(
        &self,
        dir: &OwnedFd,
        dev: (u32, u32),
        rel: &Path,
        summary: &mut ApplySummary,
    ) -> Result<bool, ApplyError> {
        // Read all names first: deleting while reading a directory may skip
        // entries.
        let mut names = Vec::new();
        for entry in Dir::read_from(dir).map_err(ctx("reading", rel))? {
            let entry = entry.map_err(ctx("reading", rel))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        let mut kept = false;
        for name in names {
            let child = rel.join(&name);
            let Some(node) = stat_at(dir, &name).map_err(ctx("inspecting", &child))? else { continue };
            if node.kind != FileType::Directory {
                rustix::fs::unlinkat(dir, &name, AtFlags::empty()).map_err(ctx("deleting", &child))?;
                summary.deleted += 1;
                continue;
            }
            if self.spared(&node) {
                log::debug!("{}: the staging directory, not deleted", shown(&child));
                kept = true;
                continue;
            }
            if node.mount_root || node.dev != dev || (node.dev, node.ino) == (self.node.dev, self.node.ino) {
                log::warn!("{}: is a mount point, not deleted", shown(&child));
                kept = true;
                continue;
            }
            let sub = rustix::fs::openat(dir, &name, dir_flags(), Mode::empty()).map_err(ctx("opening", &child))?;
            if self.clear_dir(&sub, dev, &child, summary)? {
                kept = true;
                continue;
            }
            drop(sub);
            rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR).map_err(ctx("deleting", &child))?;
            summary.deleted += 1;
        }
        Ok(kept)
    }

    /// Makes sure `rel` is a directory: keeps the root's, or moves the
    /// staging directory in whole when the root has none and `movable` says
    /// it may be, or makes an empty one.
    fn make_dir(&self, stage: &Stage, rel: &Path, movable: impl FnOnce() -> bool) -> Result<Made, ApplyError> {
        let (parent, name) = self.entry_parent(rel).map_err(ctx("opening the parent of", rel))?;
        match stat_at(&parent, name).map_err(ctx("inspecting", rel))? {
            None => {}
            Some(node) if node.kind == FileType::Directory => return Ok(Made::Dir),
            Some(node) if node.kind == FileType::Symlink => {
                // A merged-/usr link (`lib -> usr/lib`) or similar: the
                // booted system sees a directory there, so keep the link.
                return match self.open_in_root(rel, OFlags::PATH | OFlags::DIRECTORY) {
                    Ok(_) => {
                        log::debug!("{}: keeping the symlink the root has there", shown(rel));
                        Ok(Made::KeptSymlink)
                    }
                    Err(_) => Err(ApplyError::SymlinkNotDirectory { path: shown(rel) }),
                };
            }
            Some(_) => {
                log::debug!("{}: replacing a file with a directory", shown(rel));
                rustix::fs::unlinkat(&parent, name, AtFlags::empty()).map_err(ctx("deleting", rel))?;
            }
        }
        if movable() {
            let (from, from_name) = stage.parent(rel)?;
            // NOREPLACE: the name was free a moment ago; never merge by
            // accident. Any refusal (EXDEV across mounts, overlayfs that
            // cannot mark the directory opaque, EACCES on a read-only
            // directory for a non-root caller) falls back to merging.
            match rustix::fs::renameat_with(&*from, from_name, &*parent, name, RenameFlags::NOREPLACE) {
                Ok(()) => {
                    stage.forget();
                    self.moved.set(self.moved.get() + 1);
                    return Ok(Made::Moved);
                }
                Err(e) => log::debug!("{}: not moved in whole ({e}); merging", shown(rel)),
            }
        }
        // Private until finish_dir sets the bundle's owner and mode.
        rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)).map_err(ctx("creating", rel))?;
        Ok(Made::Dir)
    }

    /// Sets a directory's owner, mode and mtime from staging.
    fn finish_dir(&self, entry: &Entry, opts: &ApplyOptions) -> Result<(), ApplyError> {
        let fd = self.open_in_root(&entry.rel, dir_flags()).map_err(ctx("opening", &entry.rel))?;
        set_meta(&fd, &entry.meta, opts).map_err(ctx("setting metadata of", &entry.rel))
    }

    /// Fails when the root has a directory at `name`.
    fn refuse_dir(parent: &OwnedFd, name: &OsStr, rel: &Path, kind: &'static str) -> Result<(), ApplyError> {
        match stat_at(parent, name).map_err(ctx("inspecting", rel))? {
            Some(node) if node.kind == FileType::Directory => {
                Err(ApplyError::DirectoryInTheWay { path: shown(rel), kind })
            }
            _ => Ok(()),
        }
    }

    /// Renames a staging entry (a file or a symlink) over `entry.rel`.
    /// Returns false when the rename crossed file systems and nothing was
    /// done.
    fn place(&self, stage: &Stage, entry: &Entry, kind: &'static str) -> Result<bool, ApplyError> {
        let rel = &entry.rel;
        let (parent, name) = self.entry_parent(rel).map_err(ctx("opening the parent of", rel))?;
        let (from, from_name) = stage.parent(rel)?;
        match rustix::fs::renameat(&*from, from_name, &*parent, name) {
            Ok(()) => {
                self.moved.set(self.moved.get() + 1);
                Ok(true)
            }
            // rename() will not put a non-directory over a directory.
            Err(Errno::ISDIR) => Err(ApplyError::DirectoryInTheWay { path: shown(rel), kind }),
            Err(Errno::XDEV) => {
                self.copied.set(self.copied.get() + 1);
                Ok(false)
            }
            Err(e) => Err(ctx("replacing", rel)(e)),
        }
    }

    /// Moves a regular file from staging over `entry.rel`, or copies it
    /// where a rename cannot reach. Returns its size.
    fn place_file(&self, stage: &Stage, entry: &Entry, opts: &ApplyOptions) -> Result<u64, ApplyError> {
        if self.place(stage, entry, "file")? { Ok(entry.meta.size) } else { self.write_file(stage, entry, opts) }
    }

    /// Moves a symlink from staging over `entry.rel`, or makes a new one
    /// where a rename cannot reach.
    fn place_symlink(&self, stage: &Stage, entry: &Entry, opts: &ApplyOptions) -> Result<(), ApplyError> {
        if self.place(stage, entry, "symlink")? {
            return Ok(());
        }
        // The target is read only here: the plan does not keep it (up to
        // 4,096 bytes per link).
        let (parent, name) = stage.parent(&entry.rel)?;
        let target = rustix::fs::readlinkat(&*parent, name, Vec::new())
            .map_err(|e| ApplyError::Staging { path: stage.path.join(&entry.rel), source: e.into() })?;
        self.write_symlink(entry, Path::new(OsStr::from_bytes(target.as_bytes())), opts)
    }

    /// Writes a regular file under a temporary name and renames it over
    /// `entry.rel`. Returns the bytes written.
    fn write_file(&self, stage: &Stage, entry: &Entry, opts: &ApplyOptions) -> Result<u64, ApplyError> {
        let rel = &entry.rel;
        let (parent, name) = self.entry_parent(rel).map_err(ctx("opening the parent of", rel))?;
        Self::refuse_dir(&parent, name, rel, "file")?;
        // Through the staging parent's descriptor: staging's path plus
        // `rel` may pass PATH_MAX.
        let (sparent, sname) = stage.parent(rel)?;
        let mut src =
            rustix::fs::openat(&*sparent, sname, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                .map(File::from)
                .map_err(|e| ApplyError::Staging { path: stage.path.join(rel), source: e.into() })?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (tmp, fd) = with_temp_name(|tmp| rustix::fs::openat(&parent, tmp, flags, Mode::from_raw_mode(0o600)))
            .map_err(ctx("creating a temporary file for", rel))?;
        let mut dst = File::from(fd);
        let written = copy_data(&mut src, &mut dst, entry.meta.size)
            .map_err(ctx("writing", rel))
            .and_then(|n| set_meta(&dst, &entry.meta, opts).map(|()| n).map_err(ctx("setting metadata of", rel)))
            .and_then(|n| {
                rustix::fs::renameat(&parent, &tmp, &parent, name).map(|()| n).map_err(ctx("replacing", rel))
            });
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&parent, &tmp, AtFlags::empty());
        }
        written
    }

    /// Makes a symlink under a temporary name and renames it over
    /// `entry.rel`.
    fn write_symlink(&self, entry: &Entry, target: &Path, opts: &ApplyOptions) -> Result<(), ApplyError> {
        let rel = &entry.rel;
        let (parent, name) = self.entry_parent(rel).map_err(ctx("opening the parent of", rel))?;
        Self::refuse_dir(&parent, name, rel, "symlink")?;
        let (tmp, ()) =
            with_temp_name(|tmp| rustix::fs::symlinkat(target, &parent, tmp)).map_err(ctx("creating symlink", rel))?;
        let result = (|| {
            if opts.owners {
                let (uid, gid) = entry.meta.owner();
                rustix::fs::chownat(&parent, &tmp, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
            }
            rustix::fs::utimensat(&parent, &tmp, &entry.meta.times(), AtFlags::SYMLINK_NOFOLLOW)
        })()
        .map_err(ctx("setting metadata of", rel))
        .and_then(|()| rustix::fs::renameat(&parent, &tmp, &parent, name).map_err(ctx("replacing", rel)));
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&parent, &tmp, AtFlags::empty());
        }
        result
    }

    /// Links `rel` to the already applied file at `first`.
    fn write_hardlink(&self, rel: &Path, first: &Path) -> Result<(), ApplyError> {
        let (parent, name) = self.entry_parent(rel).map_err(ctx("opening the parent of", rel))?;
        Self::refuse_dir(&parent, name, rel, "hard link")?;
        let (first_parent, first_name) = self.parent(first).map_err(ctx("opening the parent of", first))?;
        let (tmp, ()) =
            with_temp_name(|tmp| rustix::fs::linkat(&first_parent, first_name, &parent, tmp, AtFlags::empty()))
                .map_err(ctx("creating hard link", rel))?;
        let result = rustix::fs::renameat(&parent, &tmp, &parent, name).map_err(ctx("replacing", rel));
        // rename() between two names of the same inode succeeds without
        // doing anything, which would leave the temporary name behind.
        let _ = rustix::fs::unlinkat(&parent, &tmp, AtFlags::empty());
        result
    }
}

/// Copies the `len` bytes of a staging file with `copy_file_range`, called
/// directly: `io::copy` would first `statx` both files, every file. Falls
/// back to `io::copy` where the kernel refuses to copy between the two file
/// systems. Staging is private to the loader, so its files keep the size the
/// scan saw.
fn copy_data(src: &mut File, dst: &mut File, len: u64) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::copy_file_range(&*src, None, &*dst, None, want) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM) if done == 0 => {
                return io::copy(src, dst);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Flags to open a directory for reading, not following a final symlink.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Owner (when asked), then mode (chown clears set-id bits), then mtime.
fn set_meta<Fd: std::os::fd::AsFd>(fd: &Fd, meta: &Meta, opts: &ApplyOptions) -> Result<(), Errno> {
    if opts.owners {
        let (uid, gid) = meta.owner();
        rustix::fs::fchown(fd, uid, gid)?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    rustix::fs::futimens(fd, &meta.times())
}
