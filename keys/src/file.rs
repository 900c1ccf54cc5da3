//! Reading and writing key files: site keys, and publisher signing and
//! public keys ([`stateless_bundle::sign`]).

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use stateless_bundle::key::MAX_KEY_FILE_LEN;
use stateless_bundle::{Key, KeyError, PublicKey, PublisherKeyError, SigningKey};
use zeroize::Zeroizing;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The error.
        #[source]
        err: io::Error,
    },
    /// The file is not a key file.
    #[error("{}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        err: KeyError,
    },
    /// The file is not a publisher key file of the kind asked for.
    #[error("{}", path.display())]
    PublisherKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        err: PublisherKeyError,
    },
}

/// Reads a key file. Logs a warning when the file is readable by group or
/// others, and refuses anything larger than a key file can be.
pub fn read_key_file(path: &Path) -> Result<Key, KeyFileError> {
    let (text, mode) = read_small(path)?;
    let key = Key::from_file_text(&text).map_err(|err| KeyFileError::Key { path: path.to_owned(), err })?;
    // Only a real key deserves the warning; a wrong path gets the error alone.
    warn_if_readable("key file", path, mode);
    Ok(key)
}

/// Writes `key` to a new file with mode 0600. Refuses to replace an existing
/// file unless `overwrite` is set (then the old file is replaced atomically).
pub fn write_key_file(path: &Path, key: &Key, overwrite: bool) -> Result<(), KeyFileError> {
    write_text(path, &Zeroizing::new(key.to_file_text()), 0o600, overwrite)
}

/// Reads a publisher signing key file, with the same checks and warning as
/// [`read_key_file`].
pub fn read_signing_key_file(path: &Path) -> Result<SigningKey, KeyFileError> {
    let (text, mode) = read_small(path)?;
    let key =
        SigningKey::from_file_text(&text).map_err(|err| KeyFileError::PublisherKey { path: path.to_owned(), err })?;
    warn_if_readable("signing key file", path, mode);
    Ok(key)
}

/// Writes a publisher signing key to a file with mode 0600 (like
/// [`write_key_file`]).
pub fn write_signing_key_file(path: &Path, key: &SigningKey, overwrite: bool) -> Result<(), KeyFileError> {
    write_text(path, &Zeroizing::new(key.to_file_text()), 0o600, overwrite)
}

/// Reads a publisher public key file. Public keys are not secret: no mode
/// warning.
pub fn read_public_key_file(path: &Path) -> Result<PublicKey, KeyFileError> {
    let (text, _) = read_small(path)?;
    PublicKey::from_file_text(&text).map_err(|err| KeyFileError::PublisherKey { path: path.to_owned(), err })
}

/// Most public key files [`read_public_key_dir`] reads from one directory.
pub const MAX_PUBLIC_KEY_FILES: usize = 64;

/// Reads every `*.pub` file in `dir` (the publishers embedded in a boot
/// image, [`crate::PUBLISHER_DIR`]), sorted by file name, each publisher
/// once. A directory that does not exist holds no keys (`Ok` and empty); any
/// file that is not a valid public key, or more than
/// [`MAX_PUBLIC_KEY_FILES`] of them, is an error naming it: unlike site keys,
/// where a bad file is skipped, a trust anchor that cannot be read must stop
/// the caller rather than silently change which publishers are accepted.
pub fn read_public_key_dir(dir: &Path) -> Result<Vec<PublicKey>, KeyFileError> {
    let io_err = |err| KeyFileError::Io { path: dir.to_owned(), err };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err)?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            if paths.len() == MAX_PUBLIC_KEY_FILES {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_PUBLIC_KEY_FILES} public key files"),
                )));
            }
            paths.push(path);
        }
    }
    paths.sort();
    let mut keys: Vec<PublicKey> = Vec::with_capacity(paths.len());
    for path in &paths {
        let key = read_public_key_file(path)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Writes a publisher public key to a file with mode 0644.
pub fn write_public_key_file(path: &Path, key: &PublicKey, overwrite: bool) -> Result<(), KeyFileError> {
    write_text(path, &Zeroizing::new(key.to_file_text()), 0o644, overwrite)
}

/// The contents of a regular file of at most a key file's size (one byte
/// more, so that the parser reports a larger file as too large), and its mode.
fn read_small(path: &Path) -> Result<(Zeroizing<Vec<u8>>, u32), KeyFileError> {
    let io_err = |err| KeyFileError::Io { path: path.to_owned(), err };
    // Non-blocking: opening a FIFO (planted, or named by mistake) would
    // otherwise wait for a writer forever; it is refused just below.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let mut text = Zeroizing::new(Vec::with_capacity(256));
    file.take(MAX_KEY_FILE_LEN as u64 + 1).read_to_end(&mut text).map_err(io_err)?;
    Ok((text, meta.mode()))
}

fn warn_if_readable(what: &str, path: &Path, mode: u32) {
    if mode & 0o077 != 0 {
        log::warn!(
            "{what} {} is readable by group or others (mode {:04o}); run: chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
}

/// Writes `text` to a new file with `mode`; with `overwrite`, replaces an
/// existing file atomically (temporary file beside it, then rename).
fn write_text(path: &Path, text: &str, mode: u32, overwrite: bool) -> Result<(), KeyFileError> {
    let io_err = |err| KeyFileError::Io { path: path.to_owned(), err };
    if !overwrite {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io_err)?;
        f.write_all(text.as_bytes()).map_err(io_err)?;
        return f.sync_all().map_err(io_err);
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use stateless_bundle::error_chain as chain;

    #[test]
    fn written_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.key");
        let key = Key::generate().unwrap();
        write_key_file(&path, &key, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_key_file(&path).unwrap().id(), key.id());
        let err = chain(&write_key_file(&path, &key, false).unwrap_err());
        assert!(err.contains("exists"), "{err}");
        let other = Key::generate().unwrap();
        write_key_file(&path, &other, true).unwrap();
        assert_eq!(read_key_file(&path).unwrap().id(), other.id());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn not_a_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "hello\n").unwrap();
        let err = chain(&read_key_file(&path).unwrap_err());
        assert!(err.contains("notes.txt") && err.contains("not a key file"), "{err}");
        let big = dir.path().join("disk.img");
        std::fs::write(&big, vec![b'#'; 10_000]).unwrap();
        assert!(chain(&read_key_file(&big).unwrap_err()).contains("too large"));
    }

    #[test]
    fn public_key_dir_reads_all_or_fails_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("publishers");
        assert!(read_public_key_dir(&d).unwrap().is_empty(), "a missing directory holds no keys");
        std::fs::create_dir(&d).unwrap();
        assert!(read_public_key_dir(&d).unwrap().is_empty());
        let (a, b) = (SigningKey::from_seed(&[1; 32]).public_key(), SigningKey::from_seed(&[2; 32]).public_key());
        write_public_key_file(&d.join("b.pub"), &b, false).unwrap();
        write_public_key_file(&d.join("a.pub"), &a, false).unwrap();
        write_public_key_file(&d.join("a-again.pub"), &a, false).unwrap();
        std::fs::write(d.join("README"), "not a key, not read\n").unwrap();
        assert_eq!(read_public_key_dir(&d).unwrap(), [a, b]);
        std::fs::write(d.join("c.pub"), "junk\n").unwrap();
        let err = chain(&read_public_key_dir(&d).unwrap_err());
        assert!(err.contains("c.pub") && err.contains("no stateless-public-key-v1: line"), "{err}");
        std::fs::remove_file(d.join("c.pub")).unwrap();
        for i in 0..MAX_PUBLIC_KEY_FILES {
            write_public_key_file(&d.join(format!("x{i}.pub")), &a, false).unwrap();
        }
        let err = chain(&read_public_key_dir(&d).unwrap_err());
        assert!(err.contains("more than 64 public key files"), "{err}");
        let file = d.join("a.pub");
        assert!(chain(&read_public_key_dir(&file).unwrap_err()).contains("a.pub"));
    }

    #[test]
    fn publisher_keys_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (sign, public) = (dir.path().join("p.sign"), dir.path().join("p.pub"));
        let sk = SigningKey::generate().unwrap();
        write_signing_key_file(&sign, &sk, false).unwrap();
        write_public_key_file(&public, &sk.public_key(), false).unwrap();
        assert_eq!(std::fs::metadata(&sign).unwrap().permissions().mode() & 0o777, 0o600);
        // 0644 less the umask: never more than that.
        assert_eq!(std::fs::metadata(&public).unwrap().permissions().mode() & 0o777 & !0o644, 0);
        assert_eq!(read_signing_key_file(&sign).unwrap().public_key(), sk.public_key());
        assert_eq!(read_public_key_file(&public).unwrap(), sk.public_key());
        assert!(chain(&write_signing_key_file(&sign, &sk, false).unwrap_err()).contains("exists"));
        let other = SigningKey::generate().unwrap();
        write_signing_key_file(&sign, &other, true).unwrap();
        assert_eq!(read_signing_key_file(&sign).unwrap().signer_id(), other.signer_id());
        assert_eq!(std::fs::metadata(&sign).unwrap().permissions().mode() & 0o777, 0o600);
        // Each reader names the kind of file it was given instead.
        let err = chain(&read_public_key_file(&sign).unwrap_err());
        assert!(err.contains("p.sign") && err.contains("this is a publisher signing key (secret)"), "{err}");
        let err = chain(&read_signing_key_file(&public).unwrap_err());
        assert!(err.contains("p.pub") && err.contains("this is a publisher public key"), "{err}");
        let err = chain(&read_key_file(&sign).unwrap_err());
        assert!(err.contains("this is a publisher signing key, not a site key"), "{err}");
    }
}
