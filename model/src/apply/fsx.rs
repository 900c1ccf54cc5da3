//! Reading and writing inside a root without following symlinks planted in
//! it: every path is walked one component at a time from the root's
//! directory descriptor with `O_NOFOLLOW`, so a link at `etc/shadow` or at
//! `home/alice` is refused instead of leading out of the root.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::ApplyError;

/// Files the model edits are configuration, not data.
const MAX_READ: u64 = 16 << 20;

/// Ownership and mode of a file or directory the model creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Perm {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// When replacing an existing file, keep its mode and owner
    /// (/etc/shadow is 0000 on Fedora, 0640 root:shadow on Debian).
    pub keep_existing: bool,
}

impl Perm {
    pub const CONFIG: Perm = Perm { mode: 0o644, uid: 0, gid: 0, keep_existing: true };
}

/// What is at a path, looked at without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Missing,
    Dir,
    File,
    Symlink,
    Other,
}

#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
}

fn io_err(path: &str, e: impl Into<io::Error>) -> ApplyError {
    ApplyError::Io { path: path.to_owned(), source: e.into() }
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

impl Root {
    pub fn open(root: &Path) -> Result<Root, ApplyError> {
        let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io_err(&root.display().to_string(), e))?;
        Ok(Root { fd })
    }

    /// Opens directory `rel` ("" is the root). `create`: make missing
    /// components (root-owned 0755 for parents, `create` for the last).
    /// `Ok(None)`: a component is missing and `create` is `None`.
    fn dir(&self, rel: &str, create: Option<Perm>) -> Result<Option<OwnedFd>, ApplyError> {
        let mut fd =
            rustix::fs::openat(&self.fd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io_err(rel, e))?;
        let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut walked = String::new();
        for (i, seg) in segs.iter().enumerate() {
            if *seg == ".." || *seg == "." {
                return Err(io_err(rel, Errno::INVAL));
            }
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(seg);
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&fd, *seg, flags, Mode::empty()) {
                Ok(n) => n,
                Err(Errno::NOENT) => {
                    let Some(last) = create else { return Ok(None) };
                    let perm = if i + 1 == segs.len() {
                        last
                    } else {
                        Perm { mode: 0o755, uid: 0, gid: 0, keep_existing: false }
                    };
                    rustix::fs::mkdirat(&fd, *seg, Mode::from_raw_mode(0o700)).map_err(|e| io_err(&walked, e))?;
                    let n = rustix::fs::openat(&fd, *seg, flags, Mode::empty()).map_err(|e| io_err(&walked, e))?;
                    set_perm(&n, perm).map_err(|e| io_err(&walked, e))?;
                    n
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(match self.kind_in(&fd, seg) {
                        Kind::Symlink => ApplyError::Symlink { path: walked },
                        _ => ApplyError::NotDir { path: walked },
                    });
                }
                Err(e) => return Err(io_err(&walked, e)),
            };
            fd = next;
        }
        Ok(Some(fd))
    }

    fn kind_in(&self, dir: &OwnedFd, name: &str) -> Kind {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => Kind::Dir,
                FileType::RegularFile => Kind::File,
                FileType::Symlink => Kind::Symlink,
                _ => Kind::Other,
            },
            Err(_) => Kind::Missing,
        }
    }

    /// What is at `rel`; an error if a parent component is a symlink.
    pub fn kind(&self, rel: &str) -> Result<Kind, ApplyError> {
        let (parent, name) = split(rel);
        match self.dir(parent, None)? {
            None => Ok(Kind::Missing),
            Some(d) => Ok(self.kind_in(&d, name)),
        }
    }

    /// Reads a regular file; `None` when it does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, ApplyError> {
        let (parent, name) = split(rel);
        let Some(d) = self.dir(parent, None)? else {
            return Ok(None);
        };
        // NONBLOCK: a FIFO planted in the root must not hang the boot.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&d, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(ApplyError::Symlink { path: rel.to_owned() }),
            Err(e) => return Err(io_err(rel, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(rel, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(ApplyError::NotFile { path: rel.to_owned() });
        }
        let mut buf = Vec::new();
        std::fs::File::from(fd).take(MAX_READ + 1).read_to_end(&mut buf).map_err(|e| io_err(rel, e))?;
        if buf.len() as u64 > MAX_READ {
            return Err(ApplyError::TooLarge { path: rel.to_owned() });
        }
        Ok(Some(buf))
    }

    pub fn readlink(&self, rel: &str) -> Result<Option<String>, ApplyError> {
        let (parent, name) = split(rel);
        let Some(d) = self.dir(parent, None)? else {
            return Ok(None);
        };
        match rustix::fs::readlinkat(&d, name, Vec::new()) {
            Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
            Err(Errno::NOENT | Errno::INVAL) => Ok(None),
            Err(e) => Err(io_err(rel, e)),
        }
    }

    /// Names in directory `rel` (empty when it does not exist).
    pub fn list(&self, rel: &str) -> Result<Vec<String>, ApplyError> {
        let Some(d) = self.dir(rel, None)? else {
            return Ok(Vec::new());
        };
        let dir = rustix::fs::Dir::read_from(&d).map_err(|e| io_err(rel, e))?;
        let mut out = Vec::new();
        for ent in dir {
            let ent = ent.map_err(|e| io_err(rel, e))?;
            let n = ent.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates directory `rel` (and root-owned parents) unless it exists.
    pub fn mkdir(&self, rel: &str, perm: Perm) -> Result<(), ApplyError> {
        self.dir(rel, Some(perm)).map(|_| ())
    }

    /// Replaces `rel` atomically: temp file, fsync, rename, fsync the dir.
    pub fn write(&self, rel: &str, bytes: &[u8], perm: Perm) -> Result<(), ApplyError> {
        let (parent, name) = split(rel);
        let d = self
            .dir(parent, Some(Perm { keep_existing: false, ..Perm::CONFIG }.with_mode(0o755)))?
            .ok_or_else(|| io_err(rel, Errno::NOENT))?;
        let mut perm = perm;
        if perm.keep_existing {
            if let Ok(st) = rustix::fs::statat(&d, name, AtFlags::SYMLINK_NOFOLLOW) {
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                    perm.mode = st.st_mode & 0o7777;
                    perm.uid = st.st_uid;
                    perm.gid = st.st_gid;
                }
            }
        }
        let tmp = format!(".{name}.stateless-tmp");
        let _ = rustix::fs::unlinkat(&d, tmp.as_str(), AtFlags::empty());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&d, tmp.as_str(), flags, Mode::from_raw_mode(0o600)).map_err(|e| io_err(rel, e))?;
        let result = (|| -> io::Result<()> {
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = rustix::io::write(&fd, rest)?;
                rest = rest.get(n..).unwrap_or_default();
            }
            set_perm(&fd, perm)?;
            rustix::fs::fsync(&fd)?;
            rustix::fs::renameat(&d, tmp.as_str(), &d, name)?;
            rustix::fs::fsync(&d)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&d, tmp.as_str(), AtFlags::empty());
        }
        result.map_err(|e| io_err(rel, e))
    }

    /// Points `rel` at `target`, replacing what is there (not a directory).
    pub fn symlink(&self, rel: &str, target: &str) -> Result<(), ApplyError> {
        let (parent, name) = split(rel);
        let d = self
            .dir(parent, Some(Perm { keep_existing: false, ..Perm::CONFIG }.with_mode(0o755)))?
            .ok_or_else(|| io_err(rel, Errno::NOENT))?;
        let tmp = format!(".{name}.stateless-tmp");
        let _ = rustix::fs::unlinkat(&d, tmp.as_str(), AtFlags::empty());
        rustix::fs::symlinkat(target, &d, tmp.as_str()).map_err(|e| io_err(rel, e))?;
        rustix::fs::renameat(&d, tmp.as_str(), &d, name).map_err(|e| io_err(rel, e))?;
        rustix::fs::fsync(&d).map_err(|e| io_err(rel, e))
    }

    /// Removes the file or link at `rel`, if any.
    pub fn remove(&self, rel: &str) -> Result<(), ApplyError> {
        let (parent, name) = split(rel);
        let Some(d) = self.dir(parent, None)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&d, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(rel, e)),
        }
    }
}

impl Perm {
    pub fn with_mode(self, mode: u32) -> Perm {
        Perm { mode, ..self }
    }
}

fn set_perm(fd: &OwnedFd, perm: Perm) -> io::Result<()> {
    rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(perm.uid)), Some(rustix::fs::Gid::from_raw(perm.gid)))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(perm.mode))?;
    Ok(())
}
