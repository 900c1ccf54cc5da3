//! Temporary files a crash leaves behind, and removing them safely.
//!
//! Three kinds of temporaries are written in the data directory, each
//! under a name only this crate makes (a prefix and tempfile's six random
//! letters and digits):
//!
//! | name | where | written by | stale when |
//! |---|---|---|---|
//! | `.publishXXXXXX` | beside a bundle in `v1/` | `publish`, `accept-push`, an auto-accepted push | always, while the publication lock is held |
//! | `.pushXXXXXX` | `state/spool/` | the server, receiving a push | its `flock` is free (the receiver holds it) |
//! | `.tmpXXXXXX` | `state/` and below | small atomic writes | older than [`STALE_TMP`] |
//!
//! Only regular files with these exact name shapes are removed, never
//! through a symbolic link. `serve` cleans all three at start and
//! `publish` cleans the directory it publishes into.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{FlockOperation, flock};

use crate::layout::DataDir;
use crate::store::PublishLock;

/// Prefix of a publication's temporary file.
pub const PUBLISH_PREFIX: &str = ".publish";
/// Prefix of a push being received.
pub const SPOOL_PREFIX: &str = ".push";
/// Prefix of a small file written atomically.
pub const TMP_PREFIX: &str = ".tmp";
/// A `.tmp` file this old is left over from a crash (such writes take
/// milliseconds).
pub const STALE_TMP: Duration = Duration::from_secs(600);

/// Whether `name` is `prefix` followed by tempfile's six random characters.
fn ours(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Regular files (not links) in `dir` whose name `keep` selects.
fn candidates(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| ours(n, prefix)))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect()
}

fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => log::info!("removed {}, left over from an interrupted run", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("removing {}: {e}", path.display()),
    }
}

/// Removes the `.publishXXXXXX` files in `dir`. The caller holds the
/// publication lock, so no publication is writing one.
pub fn publish_temps(dir: &Path, _lock: &PublishLock) {
    for p in candidates(dir, PUBLISH_PREFIX) {
        remove(&p);
    }
}

/// A new spool file for a push, locked until it is dropped or persisted,
/// so that [`stale_files`] in another server never takes it for a
/// leftover.
pub fn spool_file(data: &DataDir) -> io::Result<tempfile::NamedTempFile> {
    let tmp = tempfile::Builder::new().prefix(SPOOL_PREFIX).tempfile_in(data.spool())?;
    flock(tmp.as_file(), FlockOperation::NonBlockingLockExclusive)?;
    Ok(tmp)
}

/// Removes the spool files no running receiver holds.
fn spool_leftovers(data: &DataDir) {
    use rustix::fs::{Mode, OFlags, open};
    for p in candidates(&data.spool(), SPOOL_PREFIX) {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = open(&p, flags, Mode::empty()) else { continue };
        let f = File::from(fd);
        if f.metadata().is_ok_and(|m| m.is_file()) && flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
            remove(&p);
        }
    }
}

/// Removes `.tmpXXXXXX` files older than [`STALE_TMP`] in `dir`.
fn old_tmps(dir: &Path, now: SystemTime) {
    for p in candidates(dir, TMP_PREFIX) {
        let age =
            fs::symlink_metadata(&p).and_then(|m| m.modified()).map(|t| now.duration_since(t).unwrap_or_default());
        if age.is_ok_and(|a| a >= STALE_TMP) {
            remove(&p);
        }
    }
}

fn subdirs(dir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Removes what crashed runs left in the data directory: publication
/// temporaries (under the publication lock), unlocked spool files, and old
/// `.tmp` files. Failures are logged, never fatal.
pub fn stale_files(data: &DataDir) {
    match PublishLock::take(data) {
        Ok(lock) => {
            let root = data.root();
            let mut dirs = vec![root.join("v1/default")];
            dirs.extend(subdirs(&root.join("v1/nodes")));
            dirs.extend(subdirs(&root.join("v1/groups")));
            for d in dirs {
                publish_temps(&d, &lock);
            }
        }
        Err(e) => log::warn!("locking {}: {e}", data.lock_file().display()),
    }
    spool_leftovers(data);
    let now = SystemTime::now();
    let state = data.state();
    let mut dirs = vec![state.clone(), state.join("nodes"), state.join("rejected")];
    dirs.extend(subdirs(&state.join("pushes")));
    for d in dirs {
        old_tmps(&d, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_stale_regular_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let node = dir.path().join("v1/nodes/n1");
        fs::create_dir_all(&node).unwrap();
        for n in [".publishAbC123", ".publishx", ".publishABCDEFG", "bundle", ".pushAAAAAA"] {
            fs::write(node.join(n), b"x").unwrap();
        }
        // A link with our name shape is not followed or removed.
        let outside = dir.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, node.join(".publishLINK00")).unwrap();
        // A held spool file stays; a free one goes.
        let held = spool_file(&data).unwrap();
        fs::write(data.spool().join(".pushFREE01"), b"x").unwrap();
        // An old .tmp goes, a fresh one stays.
        let old = data.state().join(".tmpOLD001");
        let f = File::create(&old).unwrap();
        f.set_modified(SystemTime::now() - STALE_TMP - Duration::from_secs(1)).unwrap();
        fs::write(data.state().join(".tmpNEW001"), b"x").unwrap();
        stale_files(&data);
        let mut left: Vec<String> =
            fs::read_dir(&node).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [".publishABCDEFG", ".publishLINK00", ".publishx", ".pushAAAAAA", "bundle"]);
        assert!(held.path().exists());
        assert!(!data.spool().join(".pushFREE01").exists());
        assert!(!old.exists());
        assert!(data.state().join(".tmpNEW001").exists());
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
    }
}
