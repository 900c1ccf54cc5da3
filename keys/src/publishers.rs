//! Which publishers a node trusts: the value of `rd.stateless.pubkey=`.
//!
//! The value is a comma-separated list of at most [`MAX_PUBKEY_ENTRIES`]
//! entries, each one of
//!
//! - `file:PATH`: a publisher public key file (`statelessctl key pub`), by
//!   absolute path in the initramfs, e.g.
//!   `file:/etc/stateless/publishers/5d0c3a4f1e2b7a69.pub`;
//! - `ed25519:HEX`: the key itself, the 64 hex digits that follow
//!   `stateless-public-key-v1:` in its public key file.
//!
//! Several entries let a site rotate publishers without a flag day: a bundle
//! signed by any one of them is accepted. [`parse_pubkey_arg`] is pure (no
//! file is read), so the loader can reject a malformed command line before
//! it does anything else; [`PubkeySpec::load`] then reads the files. Inline
//! keys are hex, not base64, so that they are the same digits as the key
//! files' and no second encoding enters the project. `docs/keys.md`
//! describes the syntax; the loader takes the word in a later step of issue
//! 13 (`docs/security.md` says what that closes).

use std::fmt;
use std::path::PathBuf;

use stateless_bundle::PublicKey;
use stateless_bundle::key::hex_decode;

use crate::file::{KeyFileError, read_public_key_file};

/// Most entries one `rd.stateless.pubkey=` value may list (a rotation needs
/// two or three; the kernel command line is a few KiB in all).
pub const MAX_PUBKEY_ENTRIES: usize = 16;
/// Longest value accepted, in bytes: a whole kernel command line is at most
/// 2 KiB on x86 and 4 KiB on arm64, so anything longer is not one.
pub const MAX_PUBKEY_ARG_LEN: usize = 4096;
/// The prefix of an entry naming a public key file.
pub const FILE_PREFIX: &str = "file:";
/// The prefix of an entry carrying the key inline.
pub const ED25519_PREFIX: &str = "ed25519:";

/// One entry of `rd.stateless.pubkey=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubkeySpec {
    /// `file:PATH`: read the public key file at this absolute path.
    File(PathBuf),
    /// `ed25519:HEX`: the key, given inline.
    Inline(PublicKey),
}

impl PubkeySpec {
    /// The public key: read from its file (with the checks of
    /// [`read_public_key_file`]) or the inline one.
    pub fn load(&self) -> Result<PublicKey, KeyFileError> {
        match self {
            PubkeySpec::File(path) => read_public_key_file(path),
            PubkeySpec::Inline(key) => Ok(*key),
        }
    }
}

impl fmt::Display for PubkeySpec {
    /// The entry as it is written on the command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PubkeySpec::File(path) => write!(f, "{FILE_PREFIX}{}", path.display()),
            PubkeySpec::Inline(key) => {
                write!(f, "{ED25519_PREFIX}{}", stateless_bundle::key::hex_encode(&key.to_bytes()))
            }
        }
    }
}

/// Why a `rd.stateless.pubkey=` value was refused. Entries are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PubkeyArgError {
    /// The value is empty.
    #[error("no publisher key given (expected file:PATH or ed25519:HEX, comma-separated)")]
    Empty,
    /// The value is longer than [`MAX_PUBKEY_ARG_LEN`].
    #[error("publisher key list is {0} bytes, more than {MAX_PUBKEY_ARG_LEN}")]
    TooLong(usize),
    /// More entries than [`MAX_PUBKEY_ENTRIES`].
    #[error("{0} publisher keys listed, more than {MAX_PUBKEY_ENTRIES}")]
    TooMany(usize),
    /// An entry is empty: two commas in a row, or one at either end.
    #[error("publisher key entry {0} is empty (stray comma)")]
    EmptyEntry(usize),
    /// An entry starts with neither `file:` nor `ed25519:`.
    #[error("publisher key entry {index} {entry:?}: expected file:PATH or ed25519:HEX")]
    UnknownKind {
        /// Which entry.
        index: usize,
        /// The entry (shortened when long).
        entry: String,
    },
    /// A `file:` entry whose path is not absolute.
    #[error("publisher key entry {index}: file:{path:?} is not an absolute path")]
    RelativePath {
        /// Which entry.
        index: usize,
        /// The path given (shortened when long).
        path: String,
    },
    /// An `ed25519:` entry that is not a valid public key.
    #[error("publisher key entry {index}: {reason}")]
    BadInlineKey {
        /// Which entry.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Parses a `rd.stateless.pubkey=` value (see the module documentation).
/// Reads no file: `file:` entries are checked for form only.
pub fn parse_pubkey_arg(value: &str) -> Result<Vec<PubkeySpec>, PubkeyArgError> {
    if value.is_empty() {
        return Err(PubkeyArgError::Empty);
    }
    if value.len() > MAX_PUBKEY_ARG_LEN {
        return Err(PubkeyArgError::TooLong(value.len()));
    }
    let count = value.split(',').count();
    if count > MAX_PUBKEY_ENTRIES {
        return Err(PubkeyArgError::TooMany(count));
    }
    value.split(',').zip(1..).map(|(entry, index)| parse_entry(entry, index)).collect()
}

fn parse_entry(entry: &str, index: usize) -> Result<PubkeySpec, PubkeyArgError> {
    if entry.is_empty() {
        return Err(PubkeyArgError::EmptyEntry(index));
    }
    if let Some(path) = entry.strip_prefix(FILE_PREFIX) {
        // The loader runs with `/` as the initramfs root and no working
        // directory a site could rely on: a relative path is a mistake.
        if !path.starts_with('/') {
            return Err(PubkeyArgError::RelativePath { index, path: shorten(path) });
        }
        return Ok(PubkeySpec::File(PathBuf::from(path)));
    }
    if let Some(hex) = entry.strip_prefix(ED25519_PREFIX) {
        let mut bytes = [0u8; 32];
        if !hex_decode(hex, &mut bytes) {
            return Err(PubkeyArgError::BadInlineKey {
                index,
                reason: "ed25519: wants the 64 hex digits of a publisher public key",
            });
        }
        let key = PublicKey::from_bytes(&bytes)
            .map_err(|_| PubkeyArgError::BadInlineKey { index, reason: "not a valid Ed25519 public key" })?;
        return Ok(PubkeySpec::Inline(key));
    }
    Err(PubkeyArgError::UnknownKind { index, entry: shorten(entry) })
}

/// Loads every key of `specs` in order, each publisher once (a key listed
/// both inline and by file counts once). Fails on the first file that cannot
/// be read: a trust anchor that is not there must not quietly narrow, or
/// widen, what is accepted.
pub fn load_publishers(specs: &[PubkeySpec]) -> Result<Vec<PublicKey>, KeyFileError> {
    let mut keys: Vec<PublicKey> = Vec::with_capacity(specs.len());
    for spec in specs {
        let key = spec.load()?;
        if !keys.iter().any(|k| k.signer_id() == key.signer_id()) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// The signer ids of `keys`, short, comma-separated: how console lines name
/// the configured publishers.
pub fn describe_publishers(keys: &[PublicKey]) -> String {
    keys.iter().map(|k| k.signer_id().short()).collect::<Vec<_>>().join(", ")
}

/// An entry or path for an error message: at most 64 characters, so a
/// pasted blob does not fill the console.
fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stateless_bundle::SigningKey;
    use stateless_bundle::key::hex_encode;

    fn pk(seed: u8) -> PublicKey {
        SigningKey::from_seed(&[seed; 32]).public_key()
    }

    fn inline(seed: u8) -> String {
        format!("ed25519:{}", hex_encode(&pk(seed).to_bytes()))
    }

    #[test]
    fn accepts_lists_of_files_and_inline_keys() {
        let value = format!("file:/etc/stateless/publishers/a.pub,{},file:/x y/b.pub", inline(1));
        let specs = parse_pubkey_arg(&value).unwrap();
        assert_eq!(
            specs,
            [
                PubkeySpec::File("/etc/stateless/publishers/a.pub".into()),
                PubkeySpec::Inline(pk(1)),
                PubkeySpec::File("/x y/b.pub".into()),
            ]
        );
        // Display gives back the entries, so a parsed list prints as given.
        assert_eq!(specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), value);
        // Upper-case hex is the same key.
        let upper = inline(2).replace("ed25519:", "").to_uppercase();
        assert_eq!(parse_pubkey_arg(&format!("ed25519:{upper}")).unwrap(), [PubkeySpec::Inline(pk(2))]);
        let sixteen = vec![inline(3); MAX_PUBKEY_ENTRIES].join(",");
        assert_eq!(parse_pubkey_arg(&sixteen).unwrap().len(), MAX_PUBKEY_ENTRIES);
    }

    #[test]
    fn refusals_are_typed_and_one_line() {
        let weak = format!("ed25519:01{}", "0".repeat(62));
        let seventeen = vec!["file:/a"; MAX_PUBKEY_ENTRIES + 1].join(",");
        let long = format!("file:/{}", "a".repeat(MAX_PUBKEY_ARG_LEN));
        let cases: Vec<(&str, PubkeyArgError, &str)> = vec![
            ("", PubkeyArgError::Empty, "no publisher key given"),
            (",", PubkeyArgError::EmptyEntry(1), "entry 1 is empty"),
            ("file:/a,", PubkeyArgError::EmptyEntry(2), "entry 2 is empty (stray comma)"),
            ("file:/a,,file:/b", PubkeyArgError::EmptyEntry(2), "entry 2 is empty"),
            (
                "/etc/p.pub",
                PubkeyArgError::UnknownKind { index: 1, entry: "/etc/p.pub".into() },
                "entry 1 \"/etc/p.pub\": expected file:PATH or ed25519:HEX",
            ),
            ("FILE:/a", PubkeyArgError::UnknownKind { index: 1, entry: "FILE:/a".into() }, "expected file:PATH"),
            (" file:/a", PubkeyArgError::UnknownKind { index: 1, entry: " file:/a".into() }, "expected file:PATH"),
            (
                "file:etc/p.pub",
                PubkeyArgError::RelativePath { index: 1, path: "etc/p.pub".into() },
                "file:\"etc/p.pub\" is not an absolute path",
            ),
            ("file:", PubkeyArgError::RelativePath { index: 1, path: String::new() }, "not an absolute path"),
            (
                "ed25519:abcd",
                PubkeyArgError::BadInlineKey {
                    index: 1,
                    reason: "ed25519: wants the 64 hex digits of a publisher public key",
                },
                "64 hex digits",
            ),
            (
                &weak,
                PubkeyArgError::BadInlineKey { index: 1, reason: "not a valid Ed25519 public key" },
                "entry 1: not a valid Ed25519 public key",
            ),
            (&seventeen, PubkeyArgError::TooMany(17), "17 publisher keys listed, more than 16"),
            (&long, PubkeyArgError::TooLong(long.len()), "more than 4096"),
        ];
        for (value, want, text) in cases {
            let err = parse_pubkey_arg(value).unwrap_err();
            assert_eq!(err, want, "{value:?}");
            let msg = err.to_string();
            assert!(msg.contains(text), "{value:?}: {msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
        // The second entry is named when the first is fine.
        let err = parse_pubkey_arg(&format!("{},ed25519:zz", inline(1))).unwrap_err();
        assert!(matches!(err, PubkeyArgError::BadInlineKey { index: 2, .. }), "{err}");
        // A pasted blob is shortened in the message.
        let blob = format!("x{}", "y".repeat(1000));
        assert!(parse_pubkey_arg(&blob).unwrap_err().to_string().len() < 200);
    }

    /// A cheap, deterministic sweep over values built from the parser's own
    /// tokens (the fuzz target `keys_pubkey_arg` explores further): no
    /// panic, and whatever parses prints back to itself.
    #[test]
    fn token_soup_never_panics_and_round_trips() {
        let key = inline(6);
        let tokens =
            ["file:", "ed25519:", "/", ",", "a", "é", "..", &key, &key[8..40], "FILE:", " ", ":", "\u{0}", "0"];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut value = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for i in 0..(x % 9) {
                value.push_str(tokens[((x >> (i * 4 + 8)) % tokens.len() as u64) as usize]);
            }
            if let Ok(specs) = parse_pubkey_arg(&value) {
                let printed = specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
                assert_eq!(printed, value);
            }
        }
    }

    #[test]
    fn loading_reads_files_and_counts_each_publisher_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pub");
        crate::write_public_key_file(&a, &pk(1), false).unwrap();
        let site = dir.path().join("site.key");
        crate::write_key_file(&site, &stateless_bundle::Key::from_bytes([9; 32]), false).unwrap();
        let value = format!("file:{},{},{}", a.display(), inline(1), inline(2));
        let keys = load_publishers(&parse_pubkey_arg(&value).unwrap()).unwrap();
        assert_eq!(keys, [pk(1), pk(2)]);
        assert_eq!(describe_publishers(&keys), format!("{}, {}", pk(1).signer_id().short(), pk(2).signer_id().short()));
        // A missing file, or a file of another kind, fails the whole list.
        let missing = format!("{},file:{}", inline(1), dir.path().join("gone.pub").display());
        let err = stateless_bundle::error_chain(&load_publishers(&parse_pubkey_arg(&missing).unwrap()).unwrap_err());
        assert!(err.contains("gone.pub") && err.contains("No such file"), "{err}");
        let wrong = format!("file:{}", site.display());
        let err = stateless_bundle::error_chain(&load_publishers(&parse_pubkey_arg(&wrong).unwrap()).unwrap_err());
        assert!(err.contains("this is a site key, not a publisher public key"), "{err}");
    }

    /// A FIFO named by `file:` or planted among the embedded `*.pub` files
    /// is refused at once, never waited on (it would hang the boot before
    /// any deadline runs), and so is a directory.
    #[test]
    fn a_fifo_or_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.pub");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (f, d) = (fifo.clone(), dir.path().to_owned());
        std::thread::spawn(move || {
            let one = load_publishers(&parse_pubkey_arg(&format!("file:{}", f.display())).unwrap())
                .map_err(|e| stateless_bundle::error_chain(&e));
            let all = crate::read_public_key_dir(&d).map_err(|e| stateless_bundle::error_chain(&e));
            let as_dir = load_publishers(&parse_pubkey_arg(&format!("file:{}", d.display())).unwrap())
                .map_err(|e| stateless_bundle::error_chain(&e));
            let _ = tx.send((one, all, as_dir));
        });
        let (one, all, as_dir) = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("blocked on a FIFO");
        for got in [one, all, as_dir] {
            let err = got.unwrap_err();
            assert!(err.contains("not a regular file") || err.contains("Is a directory"), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
