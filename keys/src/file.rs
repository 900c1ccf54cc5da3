//! Reading and writing key files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use stateless_bundle::key::MAX_KEY_FILE_LEN;
use stateless_bundle::{Key, KeyError};
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
}

/// Reads a key file. Logs a warning when the file is readable by group or
/// others, and refuses anything larger than a key file can be.
pub fn read_key_file(path: &Path) -> Result<Key, KeyFileError> {
    let io_err = |err| KeyFileError::Io { path: path.to_owned(), err };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let mut text = Zeroizing::new(Vec::with_capacity(256));
    file.take(MAX_KEY_FILE_LEN as u64 + 1).read_to_end(&mut text).map_err(io_err)?;
    let key = Key::from_file_text(&text).map_err(|err| KeyFileError::Key { path: path.to_owned(), err })?;
    // Only a real key deserves the warning; a wrong path gets the error alone.
    if meta.mode() & 0o077 != 0 {
        log::warn!(
            "key file {} is readable by group or others (mode {:04o}); run: chmod 600 {}",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    Ok(key)
}

/// Writes `key` to a new file with mode 0600. Refuses to replace an existing
/// file unless `overwrite` is set (then the old file is replaced atomically).
pub fn write_key_file(path: &Path, key: &Key, overwrite: bool) -> Result<(), KeyFileError> {
    let io_err = |err| KeyFileError::Io { path: path.to_owned(), err };
    let text = Zeroizing::new(key.to_file_text());
    if !overwrite {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err)?;
        f.write_all(text.as_bytes()).map_err(io_err)?;
        return f.sync_all().map_err(io_err);
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
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
}
