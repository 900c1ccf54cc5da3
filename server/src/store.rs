//! Publishing bundles into the data directory, atomically and only forwards,
//! with a short history; and the append-only audit log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use stateless_bundle::header::HEADER_LEN;
use stateless_bundle::io::read_full;
use stateless_bundle::{RawHeader, Scope};

use crate::layout::{DataDir, Target};

/// How many earlier bundles of each target `publish` keeps by default.
pub const DEFAULT_HISTORY: usize = 5;

/// Why a bundle could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The file is not a bundle.
    #[error("{}: not a bundle", path.display())]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        err: stateless_bundle::HeaderError,
    },
    /// The file is shorter or longer than its header declares.
    #[error("{}: {len} bytes, but its header declares {declared}", path.display())]
    Length {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// 320 + the declared payload length.
        declared: u64,
    },
    /// The bundle's scope does not fit where it is published.
    #[error("bundle is scoped {scope}; it cannot be published as the {target} bundle")]
    Scope {
        /// The bundle's scope.
        scope: Scope,
        /// Where it was to go.
        target: Target,
    },
    /// The generation does not increase.
    #[error("generation {new} is not newer than the published generation {current} (loaders refuse to go back)")]
    NotNewer {
        /// The bundle's generation.
        new: u64,
        /// The published one.
        current: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PublishError + '_ {
    move |err| PublishError::Io { path: path.to_owned(), err }
}

/// What the header of a bundle file says (unauthenticated: the server has
/// no key; the loader authenticates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    /// Generation.
    pub generation: u64,
    /// The digest (header tag, hex), the entity tag.
    pub digest: String,
    /// Scope.
    pub scope: Scope,
    /// Key id, hex (all zero when unencrypted).
    pub key_id: String,
    /// File length.
    pub len: u64,
}

/// Reads the header of a bundle file and checks its length. Only a
/// regular file is read: the open does not block (a FIFO would wait for a
/// writer forever), and anything else is refused.
pub fn bundle_info(path: &Path) -> Result<BundleInfo, PublishError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io_err(path))?;
    info_of(f, path)
}

fn info_of(mut f: File, path: &Path) -> Result<BundleInfo, PublishError> {
    let meta = f.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        let err = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(PublishError::Io { path: path.to_owned(), err });
    }
    let len = meta.len();
    let mut head = [0u8; HEADER_LEN];
    let got = read_full(&mut f, &mut head).map_err(io_err(path))?;
    let raw = RawHeader::parse(head.get(..got).unwrap_or_default())
        .map_err(|err| PublishError::NotABundle { path: path.to_owned(), err })?;
    let h = raw.unverified();
    let declared = h.payload_len.saturating_add(HEADER_LEN as u64);
    if declared != len {
        return Err(PublishError::Length { path: path.to_owned(), len, declared });
    }
    Ok(BundleInfo {
        generation: h.generation,
        digest: raw.digest_hex(),
        scope: h.scope.clone(),
        key_id: raw.key_id().to_string(),
        len,
    })
}

/// The generation published for a target, if any (a file that is not a
/// bundle counts as none, so a broken file can be replaced).
pub fn published(data: &DataDir, target: &Target) -> Option<BundleInfo> {
    // As the server opens it to serve it: no links, no FIFOs.
    let f = data.open_bundle(target).ok()?;
    info_of(f, &data.bundle(target)).ok()
}

/// An exclusive lock on the data directory's publications, held until
/// dropped. `publish`, `accept-push` and the server's push handler take it so
/// that two publications never race past the generation check.
#[derive(Debug)]
pub struct PublishLock(#[allow(dead_code)] File);

impl PublishLock {
    /// Waits for the lock.
    pub fn take(data: &DataDir) -> io::Result<PublishLock> {
        let path = data.lock_file();
        let f = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(PublishLock(f))
    }
}

/// What `publish` did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The new bundle.
    pub info: BundleInfo,
    /// The generation it replaced.
    pub previous: Option<u64>,
}

/// Publishes the bundle at `src` as `target`'s bundle: checks it is a bundle
/// of the right scope with a higher generation than the published one,
/// writes it to a temporary file beside the target, syncs it, keeps the old
/// one in the history (the newest `keep`), and renames it into place. The
/// caller holds the [`PublishLock`].
pub fn publish(
    data: &DataDir,
    target: &Target,
    src: &Path,
    keep: usize,
    lock: &PublishLock,
) -> Result<Published, PublishError> {
    let info = bundle_info(src)?;
    if !target.accepts(&info.scope) {
        return Err(PublishError::Scope { scope: info.scope, target: target.clone() });
    }
    let dest = data.bundle(target);
    // The server refuses to serve through links (DataDir::open_bundle);
    // publishing through one would write outside the data directory.
    refuse_links(data, target)?;
    let current = published(data, target);
    if let Some(cur) = &current {
        if info.generation <= cur.generation {
            return Err(PublishError::NotNewer { new: info.generation, current: cur.generation });
        }
    }
    let dir = dest.parent().unwrap_or(data.root()).to_owned();
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // A publication killed before its rename left its temporary here.
    crate::cleanup::publish_temps(&dir, lock);
    let mut tmp =
        tempfile::Builder::new().prefix(crate::cleanup::PUBLISH_PREFIX).tempfile_in(&dir).map_err(io_err(&dest))?;
    let mut input = File::open(src).map_err(io_err(src))?;
    copy_to(&mut input, src, tmp.as_file_mut(), &dest)?;
    tmp.as_file().sync_all().map_err(io_err(&dest))?;
    // Web servers read the file as whoever they run as; the bundle is
    // encrypted (or deliberately public), so world-readable is right.
    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(io_err(tmp.path()))?;
    if let Some(cur) = &current {
        let hist = data.history(target);
        fs::create_dir_all(&hist).map_err(io_err(&hist))?;
        let old = hist.join(format!("{:020}.bundle", cur.generation));
        // A hard link keeps the old bytes without copying; the rename
        // below then only replaces the name in the public tree.
        if !old.exists() {
            fs::hard_link(&dest, &old).or_else(|_| fs::copy(&dest, &old).map(|_| ())).map_err(io_err(&old))?;
        }
        prune_history(&hist, keep).map_err(io_err(&hist))?;
    }
    tmp.persist(&dest).map_err(|e| PublishError::Io { path: dest.clone(), err: e.error })?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
    Ok(Published { info, previous: current.map(|c| c.generation) })
}

/// Withdraws `target`'s published bundle: it is kept in the history (the
/// newest `keep`) and its public name removed, so the server and any mirror
/// answer 404 for it from then on. Returns the withdrawn bundle, `None` when
/// nothing was published. The caller holds the [`PublishLock`].
pub fn withdraw(
    data: &DataDir,
    target: &Target,
    keep: usize,
    _lock: &PublishLock,
) -> Result<Option<BundleInfo>, PublishError> {
    refuse_links(data, target)?;
    let Some(current) = published(data, target) else { return Ok(None) };
    let dest = data.bundle(target);
    let hist = data.history(target);
    fs::create_dir_all(&hist).map_err(io_err(&hist))?;
    let old = hist.join(format!("{:020}.bundle", current.generation));
    if !old.exists() {
        fs::hard_link(&dest, &old).or_else(|_| fs::copy(&dest, &old).map(|_| ())).map_err(io_err(&old))?;
    }
    File::open(&hist).and_then(|d| d.sync_all()).map_err(io_err(&hist))?;
    prune_history(&hist, keep.max(1)).map_err(io_err(&hist))?;
    fs::remove_file(&dest).map_err(io_err(&dest))?;
    let dir = dest.parent().unwrap_or(data.root()).to_owned();
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
    Ok(Some(current))
}

/// Fails if any path component below the data directory on the way to
/// `target`'s bundle (the bundle included) is a symbolic link.
fn refuse_links(data: &DataDir, target: &Target) -> Result<(), PublishError> {
    let mut path = data.root().to_owned();
    for part in target.rel_path().split('/') {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let err =
                    io::Error::new(io::ErrorKind::InvalidInput, "a symbolic link: the server does not follow links");
                return Err(PublishError::Io { path, err });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(PublishError::Io { path, err }),
        }
    }
    Ok(())
}

/// Copies `input` to `out`, naming the file that failed: `src` for a read
/// error, `dest` (where the bytes were going) for a write error, so a full
/// disk is reported against the destination.
fn copy_to(input: &mut File, src: &Path, out: &mut File, dest: &Path) -> Result<(), PublishError> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match io::Read::read(input, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(PublishError::Io { path: src.to_owned(), err }),
        };
        out.write_all(buf.get(..n).unwrap_or_default()).map_err(io_err(dest))?;
    }
}

fn prune_history(dir: &Path, keep: usize) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bundle"))
        .collect();
    // Zero-padded generations sort numerically as strings.
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in names.iter().take(excess) {
        fs::remove_file(dir.join(n))?;
    }
    Ok(())
}

/// The history of a target: (generation, path), oldest first.
pub fn history(data: &DataDir, target: &Target) -> Vec<(u64, PathBuf)> {
    let dir = data.history(target);
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let g = name.strip_suffix(".bundle")?.parse().ok()?;
            Some((g, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry<'a> {
    /// RFC 3339 UTC.
    pub time: String,
    /// `publish`, `approve`, `reject`, `push-received`, `accept-push`, …
    pub action: &'a str,
    /// The node, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<&'a str>,
    /// Free-form details (target, generation, digest, group, address).
    pub detail: String,
    /// Who: `uid N` for commands, `server` for the server.
    pub by: String,
}

/// Appends one JSON line to the audit log (opened with `O_APPEND`, synced),
/// so entries are never rewritten.
pub fn audit(data: &DataDir, action: &str, node: Option<&str>, detail: String, by: String) -> io::Result<()> {
    let entry = AuditEntry { time: rfc3339(SystemTime::now()), action, node, detail, by };
    let mut line = serde_json::to_string(&entry).map_err(io::Error::other)?;
    line.push('\n');
    let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(data.audit_log())?;
    // One write per entry: concurrent writers never interleave lines.
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// Who is running this command, for the audit log.
pub fn by_uid() -> String {
    format!("uid {}", rustix::process::getuid().as_raw())
}

/// RFC 3339, seconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
