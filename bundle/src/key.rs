//! Site keys: the 256-bit secret, its public id, and the text key file format.
//!
//! A key file is one line `stateless-key-v1:<64 lowercase hex>` and may carry
//! `#` comment lines (the generator writes the key id as a comment). The id is
//! derived from the key with HKDF so it can be printed and stored in bundle
//! headers without revealing anything about the key. Publisher key files
//! ([`crate::sign`]) share the text layout and the line parser here, which
//! names the kind of a key file given where another kind was expected.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a site key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key id in bytes.
pub const KEY_ID_LEN: usize = 16;
/// Prefix of the key line in a key file; the `v1` names the file format.
pub const KEY_FILE_PREFIX: &str = "stateless-key-v1:";
/// A key file larger than this is not a key file (keeps a mistaken path
/// such as a disk image from being read into memory).
pub const MAX_KEY_FILE_LEN: usize = 4096;

const KEY_ID_INFO: &[u8] = b"stateless-bundle/v1/key-id";

/// A 256-bit site key. Zeroized on drop; `Debug` shows only the id.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Key(bytes)
    }

    /// Draws a new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Key(bytes))
    }

    /// The raw key bytes, for key derivation and sealing only.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The public id of this key.
    pub fn id(&self) -> KeyId {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut id = [0u8; KEY_ID_LEN];
        // HKDF-SHA256 can expand up to 8160 bytes; 16 always fits.
        if hk.expand(KEY_ID_INFO, &mut id).is_err() {
            unreachable!("HKDF output length 16 is always valid");
        }
        KeyId(id)
    }

    /// Serialises the key as the text of a key file.
    pub fn to_file_text(&self) -> String {
        format!(
            "# Stateless Loader site key. Keep this file secret (mode 0600).\n# key id: {}\n{}{}\n",
            self.id(),
            KEY_FILE_PREFIX,
            hex_encode(&self.0)
        )
    }

    /// Parses the text of a key file.
    pub fn from_file_text(text: &[u8]) -> Result<Self, KeyError> {
        let hex = key_line(text, KeyKind::Site).map_err(|e| match e {
            LineError::Version => KeyError::UnsupportedVersion,
            LineError::Other(KeyKind::Signing) => KeyError::NotAKey("this is a publisher signing key, not a site key"),
            LineError::Other(_) => KeyError::NotAKey("this is a publisher public key, not a site key"),
            e => KeyError::NotAKey(e.message(KeyKind::Site)),
        })?;
        let mut bytes = [0u8; KEY_LEN];
        if !hex_decode(hex, &mut bytes) {
            bytes.zeroize();
            return Err(KeyError::NotAKey("key must be 64 hex digits"));
        }
        let key = Key(bytes);
        bytes.zeroize();
        Ok(key)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

/// The public id of a key: HKDF-SHA256 of the key, 16 bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// The first 8 hex digits and an ellipsis, for console messages.
    pub fn short(&self) -> String {
        short_hex(&self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut id = [0u8; KEY_ID_LEN];
        hex_decode(s, &mut id).then_some(KeyId(id))
    }

    /// True for the all-zero id carried by unencrypted bundles.
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; KEY_ID_LEN]
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The kinds of Stateless Loader key file, told apart by the prefix of
/// their key line, so that a file of the wrong kind gets a message naming
/// what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// A site key (`stateless-key-v1:`).
    Site,
    /// A publisher signing key (`stateless-signing-key-v1:`).
    Signing,
    /// A publisher public key (`stateless-public-key-v1:`).
    Public,
}

impl KeyKind {
    const ALL: [KeyKind; 3] = [KeyKind::Site, KeyKind::Signing, KeyKind::Public];

    fn prefix(self) -> &'static str {
        match self {
            KeyKind::Site => KEY_FILE_PREFIX,
            KeyKind::Signing => crate::sign::SIGNING_KEY_FILE_PREFIX,
            KeyKind::Public => crate::sign::PUBLIC_KEY_FILE_PREFIX,
        }
    }

    /// The prefix without its version: a line with this stem and another
    /// version is a key file from another release.
    fn stem(self) -> &'static str {
        match self {
            KeyKind::Site => "stateless-key-",
            KeyKind::Signing => "stateless-signing-key-",
            KeyKind::Public => "stateless-public-key-",
        }
    }
}

/// Why [`key_line`] found no key line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineError {
    TooLarge,
    NotText,
    Missing,
    Duplicate,
    /// The key line has this kind's stem and another version.
    Version,
    /// The file is a key file of another kind.
    Other(KeyKind),
}

impl LineError {
    /// The message for the errors that read the same for every kind.
    pub(crate) fn message(self, kind: KeyKind) -> &'static str {
        match (self, kind) {
            (LineError::TooLarge, _) => "file is too large to be a key file",
            (LineError::NotText, _) => "not text",
            (LineError::Duplicate, _) => "more than one key line",
            (_, KeyKind::Site) => "no stateless-key-v1: line",
            (_, KeyKind::Signing) => "no stateless-signing-key-v1: line",
            (_, KeyKind::Public) => "no stateless-public-key-v1: line",
        }
    }
}

/// Finds the one key line of `kind` in the text of a key file and returns
/// what follows its prefix. `#` comment lines and blank lines are skipped;
/// any other line is an error.
pub(crate) fn key_line(text: &[u8], kind: KeyKind) -> Result<&str, LineError> {
    if text.len() > MAX_KEY_FILE_LEN {
        return Err(LineError::TooLarge);
    }
    let text = std::str::from_utf8(text).map_err(|_| LineError::NotText)?;
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(kind.prefix()) else {
            if line.starts_with(kind.stem()) {
                return Err(LineError::Version);
            }
            return Err(KeyKind::ALL
                .into_iter()
                .find(|k| line.starts_with(k.stem()))
                .map_or(LineError::Missing, LineError::Other));
        };
        if found.replace(rest).is_some() {
            return Err(LineError::Duplicate);
        }
    }
    found.ok_or(LineError::Missing)
}

/// Errors from making or reading keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not a Stateless Loader key file.
    #[error("not a key file: {0}")]
    NotAKey(&'static str),
    /// The key file uses a format version this build does not know.
    #[error("key file uses an unknown format version (expected {KEY_FILE_PREFIX})")]
    UnsupportedVersion,
    /// The operating system's random source failed.
    #[error("reading the OS random source: {0}")]
    Random(String),
}

/// Lowercase hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// The first 8 hex digits of `bytes` and an ellipsis: how console
/// messages show a public id.
pub(crate) fn short_hex(bytes: &[u8]) -> String {
    let full = hex_encode(bytes);
    format!("{}…", full.get(..8).unwrap_or(&full))
}

/// Decodes hex (either case) into `out`, which must be exactly half the
/// length of `s`. Returns `false` (with `out` partly written) when `s` is
/// not such hex. Constant-time in the digits, as key files are secret.
#[must_use]
pub fn hex_decode(s: &str, out: &mut [u8]) -> bool {
    s.len() == out.len() * 2 && base16ct::mixed::decode(s, out).is_ok_and(|d| d.len() == s.len() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_table() {
        assert_eq!(hex_encode(&[0x00, 0x9f, 0xff]), "009fff");
        assert_eq!(hex_encode(&[]), "");
        let mut out = [0u8; 3];
        for good in ["009fff", "009FFF", "009fFf"] {
            assert!(hex_decode(good, &mut out), "{good}");
            assert_eq!(out, [0x00, 0x9f, 0xff]);
        }
        for bad in ["009ff", "009fff0", "009fffff", "00 fff", "+09fff", "009ffg", "0x9fff", "é9fff"] {
            assert!(!hex_decode(bad, &mut out), "{bad}");
        }
        assert!(hex_decode("", &mut []));
    }

    #[test]
    fn key_file_round_trip() {
        let key = Key::generate().unwrap();
        let text = key.to_file_text();
        let back = Key::from_file_text(text.as_bytes()).unwrap();
        assert_eq!(key.as_bytes(), back.as_bytes());
        assert!(text.contains(&key.id().to_string()));
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let key = Key::from_bytes([0xab; 32]);
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("abab"), "{dbg}");
    }

    #[test]
    fn key_id_is_stable_and_distinct() {
        let a = Key::from_bytes([1; 32]);
        let b = Key::from_bytes([2; 32]);
        assert_eq!(a.id(), Key::from_bytes([1; 32]).id());
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().short().chars().count(), 9);
    }

    #[test]
    fn rejects_what_is_not_a_key() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "no stateless-key-v1"),
            (b"hello\n", "no stateless-key-v1"),
            (b"stateless-key-v1:abcd\n", "64 hex"),
            (b"stateless-key-v9:00\n", "unknown format version"),
            (&[0xff, 0xfe], "not text"),
        ];
        for (text, want) in cases {
            let err = Key::from_file_text(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let two = format!("{}{}\n{}{}\n", KEY_FILE_PREFIX, "0".repeat(64), KEY_FILE_PREFIX, "1".repeat(64));
        assert!(Key::from_file_text(two.as_bytes()).unwrap_err().to_string().contains("more than one"));
        assert!(Key::from_file_text(&vec![b'#'; 5000]).unwrap_err().to_string().contains("too large"));
    }

    #[test]
    fn a_publisher_key_file_is_named_as_such() {
        let sk = crate::SigningKey::from_seed(&[3; 32]);
        let err = Key::from_file_text(sk.to_file_text().as_bytes()).unwrap_err().to_string();
        assert_eq!(err, "not a key file: this is a publisher signing key, not a site key");
        let err = Key::from_file_text(sk.public_key().to_file_text().as_bytes()).unwrap_err().to_string();
        assert_eq!(err, "not a key file: this is a publisher public key, not a site key");
    }
}
