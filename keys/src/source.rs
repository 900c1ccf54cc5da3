//! Key sources: where the loader looks for keys, behind one trait.

use std::path::{Path, PathBuf};

use stateless_bundle::{Key, KeyId};

use crate::file::{KeyFileError, read_key_file};

/// Why a source could not offer keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeySourceError {
    /// A key file was unreadable or malformed.
    #[error(transparent)]
    File(#[from] KeyFileError),
    /// The source is not present (no stick, no TPM, no file).
    #[error("{0}")]
    Absent(String),
    /// The source is there but could not give its keys (an unreadable
    /// stick, a TPM that refused to unseal).
    #[error("{0}")]
    Failed(String),
}

/// What a source has for a bundle that needs one key id.
#[derive(Debug)]
pub enum Lookup {
    /// The key the bundle needs.
    Found(Key),
    /// The source has only these keys.
    Offered(Vec<KeyId>),
}

/// A place keys can come from (boot image, USB stick, TPM, …).
pub trait KeySource {
    /// A short name for messages, e.g. `file /etc/stateless/keys`.
    fn describe(&self) -> String;
    /// The keys this source offers. Bounded in time: a source that is not
    /// there says so quickly.
    fn keys(&self) -> Result<Vec<Key>, KeySourceError>;
    /// Looks for the key `needed`. Sources that can tell a key's id without
    /// reading the key (a TPM-sealed key names its id) override this to
    /// touch only the key the bundle needs.
    fn lookup(&self, needed: KeyId) -> Result<Lookup, KeySourceError> {
        let keys = self.keys()?;
        let ids = keys.iter().map(Key::id).collect();
        Ok(keys.into_iter().find(|k| k.id() == needed).map_or(Lookup::Offered(ids), Lookup::Found))
    }
}

/// One key file.
#[derive(Debug, Clone)]
pub struct FileSource(pub PathBuf);

impl KeySource for FileSource {
    fn describe(&self) -> String {
        format!("key file {}", self.0.display())
    }

    fn keys(&self) -> Result<Vec<Key>, KeySourceError> {
        match std::fs::metadata(&self.0) {
            Err(_) => return Err(KeySourceError::Absent(format!("{} does not exist", self.0.display()))),
            // A FIFO would block the read forever; a directory is a mistake.
            Ok(m) if !m.is_file() => {
                return Err(KeySourceError::Failed(format!("{}: not a regular file", self.0.display())));
            }
            Ok(_) => {}
        }
        Ok(vec![read_key_file(&self.0)?])
    }
}

/// Every `*.key` file in a directory (several keys allow rotation).
#[derive(Debug, Clone)]
pub struct DirSource(pub PathBuf);

impl KeySource for DirSource {
    fn describe(&self) -> String {
        format!("key directory {}", self.0.display())
    }

    fn keys(&self) -> Result<Vec<Key>, KeySourceError> {
        let entries = match std::fs::read_dir(&self.0) {
            Ok(e) => e,
            Err(_) => return Err(KeySourceError::Absent(format!("{} does not exist", self.0.display()))),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "key"))
            // Links to key files are fine in the boot image; a FIFO would
            // block the read forever.
            .filter(|p| {
                let regular = std::fs::metadata(p).is_ok_and(|m| m.is_file());
                if !regular {
                    log::warn!("skipping {}: not a regular file", p.display());
                }
                regular
            })
            .collect();
        paths.sort();
        let mut keys = Vec::new();
        for p in &paths {
            match read_key_file(Path::new(p)) {
                Ok(k) => keys.push(k),
                // One bad file must not hide the good ones beside it.
                Err(e) => log::warn!("skipping {e}"),
            }
        }
        Ok(keys)
    }
}

/// What each source offered, for the error message when no key matches.
#[derive(Debug, Default)]
pub struct Offered(pub Vec<(String, Result<Vec<KeyId>, String>)>);

impl std::fmt::Display for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, r)| match r {
                Ok(ids) if ids.is_empty() => format!("{name} had no keys"),
                Ok(ids) => format!("{name} had {}", ids.iter().map(KeyId::short).collect::<Vec<_>>().join(", ")),
                Err(e) => format!("{name}: {e}"),
            })
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// Walks `sources` in order and returns the first key whose id is `needed`,
/// with the source's description; otherwise what every source offered.
pub fn find_key(needed: KeyId, sources: &[&dyn KeySource]) -> Result<(Key, String), Offered> {
    let mut offered = Offered::default();
    for src in sources {
        match src.lookup(needed) {
            Ok(Lookup::Found(k)) => return Ok((k, src.describe())),
            Ok(Lookup::Offered(ids)) => offered.0.push((src.describe(), Ok(ids))),
            Err(e) => offered.0.push((src.describe(), Err(stateless_bundle::error_chain(&e)))),
        }
    }
    Err(offered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write_key_file;

    #[test]
    fn rotation_picks_the_key_the_bundle_names() {
        let dir = tempfile::tempdir().unwrap();
        let old = Key::generate().unwrap();
        let new = Key::generate().unwrap();
        write_key_file(&dir.path().join("a-old.key"), &old, false).unwrap();
        write_key_file(&dir.path().join("b-new.key"), &new, false).unwrap();
        std::fs::write(dir.path().join("c-bad.key"), "junk").unwrap();
        let src = DirSource(dir.path().to_owned());
        let (k, from) = find_key(new.id(), &[&src]).unwrap();
        assert_eq!(k.id(), new.id());
        assert!(from.contains("key directory"));
        let (k, _) = find_key(old.id(), &[&src]).unwrap();
        assert_eq!(k.id(), old.id());
    }

    #[test]
    fn special_files_are_skipped_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::generate().unwrap();
        write_key_file(&dir.path().join("b.key"), &k, false).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(dir.path().join("a.key")).status().unwrap().success());
        std::fs::create_dir(dir.path().join("c.key")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.path().to_owned();
        std::thread::spawn(move || {
            let dir_keys = DirSource(d.clone()).keys().map(|v| v.iter().map(Key::id).collect::<Vec<_>>());
            let fifo = FileSource(d.join("a.key")).keys().map(|v| v.len());
            let _ = tx.send((dir_keys.unwrap(), fifo.unwrap_err().to_string()));
        });
        let (ids, fifo) = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("a FIFO hung the key source");
        assert_eq!(ids, [k.id()]);
        assert!(fifo.ends_with("a.key: not a regular file"), "{fifo}");
    }

    #[test]
    fn no_match_says_what_each_source_had() {
        let dir = tempfile::tempdir().unwrap();
        let have = Key::generate().unwrap();
        write_key_file(&dir.path().join("site.key"), &have, false).unwrap();
        let file = FileSource(dir.path().join("site.key"));
        let missing = FileSource(dir.path().join("nope.key"));
        let needed = Key::generate().unwrap().id();
        let err = find_key(needed, &[&file, &missing]).unwrap_err().to_string();
        assert!(err.contains(&have.id().short()), "{err}");
        assert!(err.contains("nope.key does not exist"), "{err}");
    }
}
