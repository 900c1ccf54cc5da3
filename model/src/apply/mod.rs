//! Apply a model to a root directory.
//!
//! Two phases: every part of the model is first planned against the root
//! as it is (reading files, checking clashes, resolving units, refusing
//! symlinks), producing a list of [`Action`]s; only when the whole plan is
//! sound are the actions carried out. A refused model therefore changes
//! nothing. Nothing from the root is ever executed.

mod edits;
mod files;
mod fsx;
mod services;
mod users;

use std::collections::BTreeSet;
use std::path::Path;

use crate::Model;
use fsx::{Kind, Perm, Root};

/// What [`apply`] changed, as paths relative to the root.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Files written (replaced atomically).
    pub written: Vec<String>,
    /// Directories created (homes, ~/.ssh).
    pub created: Vec<String>,
    /// Symlinks created or replaced (units enabled or masked).
    pub linked: Vec<String>,
    /// Symlinks removed (units disabled).
    pub removed: Vec<String>,
}

/// Why [`apply`] refused or failed. `Display` is one console line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Reading or writing a path in the root failed.
    #[error("{path}: {source}")]
    Io {
        /// Path relative to the root.
        path: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A symlink where the model reads or writes: refused, never followed.
    #[error("{path}: is a symlink; refusing to follow it")]
    Symlink {
        /// Path relative to the root.
        path: String,
    },
    /// A path component that should be a directory is not one.
    #[error("{path}: not a directory")]
    NotDir {
        /// Path relative to the root.
        path: String,
    },
    /// A path that should be a regular file is not one.
    #[error("{path}: not a regular file")]
    NotFile {
        /// Path relative to the root.
        path: String,
    },
    /// A file larger than the model reads.
    #[error("{path}: larger than 16 MiB")]
    TooLarge {
        /// Path relative to the root.
        path: String,
    },
    /// A file the model needs is not in the root.
    #[error("{path}: missing in the root")]
    Missing {
        /// Path relative to the root.
        path: String,
    },
    /// A line of a file in the root cannot be understood.
    #[error("{path}:{line}: {why}")]
    Parse {
        /// Path relative to the root.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A user or group clashes with an existing entry (or another model entry).
    #[error("{path}: {ours} clashes with {theirs}")]
    Clash {
        /// etc/passwd or etc/group.
        path: String,
        /// The model's entry, e.g. `user alice (uid 2001)`.
        ours: String,
        /// The entry it clashes with, e.g. `user bob (uid 2001)`.
        theirs: String,
    },
    /// A user names a group that neither the root nor the model has.
    #[error("user {user}: group {group} does not exist")]
    UnknownGroup {
        /// The user.
        user: String,
        /// The group.
        group: String,
    },
    /// A unit to enable, disable or mask is not in the root's unit dirs.
    #[error("unit {unit}: not found in etc/systemd/system, usr/lib/systemd/system or lib/systemd/system")]
    UnknownUnit {
        /// The unit.
        unit: String,
    },
    /// A unit cannot be enabled or masked as asked.
    #[error("unit {unit}: {why}")]
    Unit {
        /// The unit.
        unit: String,
        /// What is wrong.
        why: String,
    },
    /// An edited file cannot be edited as asked.
    #[error("{path}: {why}")]
    Edit {
        /// Path relative to the root.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Two parts of the model would write the same path.
    #[error("{path}: written by two parts of the model")]
    Conflict {
        /// Path relative to the root.
        path: String,
    },
}

/// One change to the root, planned before any is made.
#[derive(Debug)]
pub(crate) enum Action {
    Write { path: String, bytes: Vec<u8>, perm: Perm },
    Mkdir { path: String, perm: Perm },
    Symlink { path: String, target: String },
    Remove { path: String },
}

impl Action {
    fn path(&self) -> &str {
        match self {
            Action::Write { path, .. }
            | Action::Mkdir { path, .. }
            | Action::Symlink { path, .. }
            | Action::Remove { path } => path,
        }
    }
}

/// Renders `model` into the root directory `root` (e.g. /sysroot).
///
/// Refuses, changing nothing, when any part cannot be applied: a clash in
/// passwd/group, a unit that does not exist, an edit of a missing file, a
/// symlink planted where the model reads or writes. An I/O error while
/// writing can leave earlier actions done; each file is replaced
/// atomically.
pub fn apply(model: &Model, root: &Path) -> Result<Applied, ApplyError> {
    let root = Root::open(root)?;
    let mut actions = Vec::new();
    users::plan(model, &root, &mut actions)?;
    services::plan(model, &root, &mut actions)?;
    files::plan(model, &mut actions)?;
    edits::plan(model, &root, &mut actions)?;

    let mut seen = BTreeSet::new();
    for a in &actions {
        if matches!(a, Action::Write { .. } | Action::Symlink { .. }) && !seen.insert(a.path()) {
            return Err(ApplyError::Conflict { path: a.path().to_owned() });
        }
        // A link planted where a file goes would otherwise be replaced
        // quietly; refuse it like a link in the path.
        match (a, root.kind(a.path())?) {
            (Action::Write { .. }, Kind::Symlink) => {
                return Err(ApplyError::Symlink { path: a.path().to_owned() });
            }
            (Action::Write { .. }, Kind::Dir | Kind::Other) => {
                return Err(ApplyError::NotFile { path: a.path().to_owned() });
            }
            (Action::Mkdir { .. }, Kind::Symlink) => {
                return Err(ApplyError::Symlink { path: a.path().to_owned() });
            }
            (Action::Mkdir { .. }, Kind::File | Kind::Other) => {
                return Err(ApplyError::NotDir { path: a.path().to_owned() });
            }
            _ => {}
        }
    }

    let mut done = Applied::default();
    for a in actions {
        match a {
            Action::Write { path, bytes, perm } => {
                root.write(&path, &bytes, perm)?;
                done.written.push(path);
            }
            Action::Mkdir { path, perm } => {
                if root.kind(&path)? == Kind::Missing {
                    root.mkdir(&path, perm)?;
                    done.created.push(path);
                }
            }
            Action::Symlink { path, target } => {
                if root.readlink(&path)?.as_deref() != Some(target.as_str()) {
                    root.symlink(&path, &target)?;
                    done.linked.push(path);
                }
            }
            Action::Remove { path } => {
                root.remove(&path)?;
                done.removed.push(path);
            }
        }
    }
    Ok(done)
}
