//! Writing a directory tree as the payload's tar stream.
//!
//! The walk is sorted by name so the same tree always gives the same tar.
//! Owners are numeric (names are never looked up: the initramfs has no NSS).
//! Hard links inside the tree become tar hard links; an overlayfs whiteout
//! (a 0:0 character device) becomes an OCI whiteout entry; any other device,
//! fifo or socket is refused, as is a symlink that escapes the tree.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::limits::Limits;
use crate::path::{PathError, RelPath, check_symlink_target};

/// Counts of what was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeSummary {
    /// Tar entries written.
    pub entries: u32,
    /// Bytes of regular file data.
    pub file_bytes: u64,
}

/// Why a tree could not be packed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// A path in the tree breaks a rule.
    #[error("{path}: {err}")]
    Path {
        /// The path.
        path: String,
        /// The rule.
        err: PathError,
    },
    /// A symlink points outside the tree.
    #[error("symlink {path} -> {target} escapes the root")]
    LinkEscapes {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A file type that bundles never carry.
    #[error("{path}: {kind} cannot be put in a bundle")]
    Forbidden {
        /// The path.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// A file named as a whiteout has content.
    #[error("{0}: whiteout files (.wh.NAME) must be empty")]
    BadWhiteout(String),
    /// A deletion names a path the tree also contains (or something under
    /// it): readers refuse such a bundle.
    #[error("{entry}: the tree both deletes {path} and contains it")]
    DeleteConflict {
        /// The whiteout entry (`DIR/.wh.NAME`).
        entry: String,
        /// The path it deletes.
        path: String,
    },
    /// Over a limit.
    #[error("{0}")]
    Limit(String),
    /// Reading the tree or writing the stream failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        err: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> TreeError {
    let context = context.into();
    move |err| TreeError::Io { context, err }
}

/// Writes `root` (its contents, not the directory itself) and a whiteout
/// for each path in `deletions` as a tar stream into `out`.
pub fn write_tree<W: Write>(
    root: &Path,
    deletions: &[RelPath],
    out: W,
    limits: &Limits,
) -> Result<(W, TreeSummary), TreeError> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    let mut state = Walk {
        limits,
        summary: TreeSummary::default(),
        links: HashMap::new(),
        paths: BTreeSet::new(),
        deleted: BTreeSet::new(),
        name_bytes: 0,
    };
    state.walk(&mut b, root, None)?;
    // The same rule as readers: no path both deleted and contained, and no
    // deletion under a deleted path.
    for del in deletions.iter().chain(state.deleted.iter()) {
        let under_deleted =
            del.ancestors().any(|a| RelPath::parse(a, usize::MAX).is_ok_and(|a| state.deleted.contains(&a)));
        if state.contains_or_under(del) || under_deleted {
            return Err(TreeError::DeleteConflict { entry: del.whiteout_entry().to_string(), path: del.to_string() });
        }
    }
    let mut implied = 0u32;
    for del in deletions {
        let entry = del.whiteout_entry();
        if state.paths.contains(&entry) {
            continue;
        }
        // Parents the tree lacks are implied; readers bound them by the
        // entry limit too.
        for anc in entry.ancestors() {
            let anc = RelPath::parse(anc, usize::MAX).map_err(|err| TreeError::Path { path: del.to_string(), err })?;
            let anc_name = anc.file_name().len();
            if state.paths.insert(anc) {
                state.names(anc_name)?;
                implied += 1;
                if implied > limits.max_entries {
                    return Err(TreeError::Limit(format!(
                        "more than {} parent directories implied by deletions (limit)",
                        limits.max_entries
                    )));
                }
            }
        }
        state.paths.insert(entry.clone());
        state.count()?;
        state.names(entry.file_name().len())?;
        let mut h = base_header(tar::EntryType::Regular, 0o644, 0, 0, 0);
        h.set_size(0);
        b.append_data(&mut h, entry.as_path(), io::empty()).map_err(io_err(format!("writing {entry}")))?;
    }
    let out = b.into_inner().map_err(io_err("finishing archive"))?;
    Ok((out, state.summary))
}

struct Walk<'a> {
    limits: &'a Limits,
    summary: TreeSummary,
    links: HashMap<(u64, u64), RelPath>,
    /// Every tar entry path written.
    paths: BTreeSet<RelPath>,
    /// The paths the tree's whiteouts delete.
    deleted: BTreeSet<RelPath>,
    /// Bytes of entry names so far (readers bound them).
    name_bytes: u64,
}

fn base_header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_size(0);
    h
}

impl Walk<'_> {
    /// Whether the tree has `path`, or anything under it.
    fn contains_or_under(&self, path: &RelPath) -> bool {
        let mut prefix = path.as_bytes().to_vec();
        prefix.push(b'/');
        // In byte order, `path-x` and `path.x` come between `path` and
        // `path/…`: find the first path at or past the prefix.
        self.paths.contains(path)
            || self
                .paths
                .range(path.clone()..)
                .find(|p| p.as_bytes() >= prefix.as_slice())
                .is_some_and(|p| p.as_bytes().starts_with(&prefix))
    }

    /// Adds a name to the total that readers bound.
    fn names(&mut self, n: usize) -> Result<(), TreeError> {
        self.name_bytes = self.name_bytes.saturating_add(n as u64);
        if self.name_bytes > crate::limits::MAX_NAME_BYTES {
            return Err(TreeError::Limit(format!(
                "more than {} bytes of entry names in all (limit)",
                crate::limits::MAX_NAME_BYTES
            )));
        }
        Ok(())
    }

    fn count(&mut self) -> Result<(), TreeError> {
        self.summary.entries += 1;
        if self.summary.entries > self.limits.max_entries {
            return Err(TreeError::Limit(format!("more than {} entries (limit)", self.limits.max_entries)));
        }
        Ok(())
    }

    fn walk<W: Write>(&mut self, b: &mut tar::Builder<W>, dir: &Path, rel: Option<&RelPath>) -> Result<(), TreeError> {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_err(format!("reading {}", dir.display())))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err(format!("reading {}", dir.display())))?;
        names.sort();
        for full in names {
            let name = full.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
            let mut raw = rel.map(|r| r.as_bytes().to_vec()).unwrap_or_default();
            if !raw.is_empty() {
                raw.push(b'/');
            }
            raw.extend_from_slice(&name);
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let path = RelPath::parse(&raw, self.limits.max_path)
                .map_err(|err| TreeError::Path { path: shown.clone(), err })?;
            let meta = fs::symlink_metadata(&full).map_err(io_err(format!("reading {shown}")))?;
            self.entry(b, &full, &path, &shown, &meta)?;
            if meta.is_dir() {
                self.walk(b, &full, Some(&path))?;
            }
        }
        Ok(())
    }

    fn entry<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        full: &Path,
        path: &RelPath,
        shown: &str,
        meta: &fs::Metadata,
    ) -> Result<(), TreeError> {
        let ft = meta.file_type();
        let (mode, uid, gid, mtime) = (meta.mode(), meta.uid(), meta.gid(), meta.mtime());
        let werr = || io_err(format!("writing {shown}"));
        if ft.is_char_device() && meta.rdev() == 0 {
            // An overlayfs whiteout, as found in an upper directory.
            let entry = path.whiteout_entry();
            self.deleted.insert(path.clone());
            if !self.paths.insert(entry.clone()) {
                // An empty `.wh.NAME` file said the same.
                return Ok(());
            }
            self.count()?;
            self.names(entry.file_name().len())?;
            let mut h = base_header(tar::EntryType::Regular, 0o644, 0, 0, mtime);
            return b.append_data(&mut h, entry.as_path(), io::empty()).map_err(werr());
        }
        self.paths.insert(path.clone());
        let forbidden = if ft.is_char_device() || ft.is_block_device() {
            Some("device node")
        } else if ft.is_fifo() {
            Some("fifo")
        } else if ft.is_socket() {
            Some("socket")
        } else {
            None
        };
        if let Some(kind) = forbidden {
            return Err(TreeError::Forbidden { path: shown.to_owned(), kind });
        }
        // Only an empty regular file may carry a whiteout name; readers
        // refuse a directory or link named `.wh.*` (and anything under one).
        if !ft.is_file() {
            if let Some(err) = path.whiteout().map(|w| w.err().unwrap_or(PathError::BadWhiteout)) {
                return Err(TreeError::Path { path: shown.to_owned(), err });
            }
        }
        self.count()?;
        self.names(path.file_name().len())?;
        if ft.is_dir() {
            let mut h = base_header(tar::EntryType::Directory, mode, uid, gid, mtime);
            return b.append_data(&mut h, path.as_path(), io::empty()).map_err(werr());
        }
        if ft.is_symlink() {
            let target = fs::read_link(full).map_err(io_err(format!("reading link {shown}")))?;
            let tb = target.as_os_str().as_bytes();
            check_symlink_target(path, tb, self.limits.max_path).map_err(|err| match err {
                PathError::LinkEscapes => {
                    TreeError::LinkEscapes { path: shown.to_owned(), target: target.display().to_string() }
                }
                err => TreeError::Path { path: shown.to_owned(), err },
            })?;
            let mut h = base_header(tar::EntryType::Symlink, mode, uid, gid, mtime);
            return b.append_link(&mut h, path.as_path(), &target).map_err(werr());
        }
        if let Some(w) = path.whiteout().transpose().map_err(|err| TreeError::Path { path: shown.to_owned(), err })? {
            if meta.len() != 0 {
                return Err(TreeError::BadWhiteout(shown.to_owned()));
            }
            if let crate::path::Whiteout::Path(target) = w {
                self.deleted.insert(target);
            }
        }
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                let mut h = base_header(tar::EntryType::Link, mode, uid, gid, mtime);
                return b.append_link(&mut h, path.as_path(), first.as_path()).map_err(werr());
            }
            self.links.insert((meta.dev(), meta.ino()), path.clone());
        }
        let file = File::open(full).map_err(io_err(format!("opening {shown}")))?;
        let mut h = base_header(tar::EntryType::Regular, mode, uid, gid, mtime);
        h.set_size(meta.len());
        // Take exactly the size in the header even if the file changes under us.
        let mut data = io::Read::take(file, meta.len());
        b.append_data(&mut h, path.as_path(), &mut data).map_err(werr())?;
        if data.limit() != 0 {
            return Err(TreeError::Io {
                context: format!("reading {shown}"),
                err: io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being packed"),
            });
        }
        self.summary.file_bytes += meta.len();
        Ok(())
    }
}
