//! Publisher signatures: the Ed25519 keys that sign bundle headers, their
//! text key files, and the signer id a signed header carries.
//!
//! The site key ([`crate::key`]) is on every node, so it proves only that a
//! bundle was made by someone holding the site key: anyone who lifts it off
//! one node can seal bundles every other node accepts. A publisher signature
//! closes that gap. Only the publisher holds the signing key; nodes and
//! admin tools hold its public key, and when they are given one they refuse
//! a bundle unless its header carries a valid signature by that key and its
//! payload matches the signed digest.
//!
//! The signature is Ed25519 over header bytes 0..208, which hold every field
//! including the flags (bit 0 set), the signer id and the payload SHA-256, so
//! it covers the whole payload. The signer id is
//! `SHA-256("stateless-bundle/v1/signer" || public key)[0..8]`, shown as 16
//! lowercase hex digits: it lets a reader tell "signed by someone else" from
//! "tampered" without trying keys.
//!
//! Key files are text like site key files, at most
//! [`MAX_KEY_FILE_LEN`](crate::key::MAX_KEY_FILE_LEN) bytes, `#` comments and blank lines ignored:
//!
//! ```text
//! # Stateless Loader publisher signing key. Keep this file secret (mode 0600).
//! # signer: 5d0c3a4f1e2b7a69
//! stateless-signing-key-v1:<64 hex digits: the Ed25519 seed>
//! ```
//!
//! ```text
//! # Stateless Loader publisher public key (Ed25519). Not secret.
//! # signer: 5d0c3a4f1e2b7a69
//! stateless-public-key-v1:<64 hex digits: the Ed25519 public key>
//! ```

use std::fmt;

use ed25519_dalek::{Signature, Signer as _};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::key::{KeyKind, LineError, hex_decode, hex_encode, key_line, short_hex};

/// Length of a signer id in bytes.
pub const SIGNER_ID_LEN: usize = 8;
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Prefix of the key line in a publisher signing key file.
pub const SIGNING_KEY_FILE_PREFIX: &str = "stateless-signing-key-v1:";
/// Prefix of the key line in a publisher public key file.
pub const PUBLIC_KEY_FILE_PREFIX: &str = "stateless-public-key-v1:";

const SIGNER_ID_DOMAIN: &[u8] = b"stateless-bundle/v1/signer";

/// A publisher's Ed25519 signing key. The secret is zeroized on drop
/// (`ed25519-dalek`'s `zeroize` feature); `Debug` shows only the signer id.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// Draws a new key from the operating system's random source.
    pub fn generate() -> Result<Self, PublisherKeyError> {
        let mut seed = Zeroizing::new([0u8; ed25519_dalek::SECRET_KEY_LENGTH]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| PublisherKeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// The key whose 32-byte Ed25519 seed (RFC 8032 private key) is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The id written into the headers this key signs.
    pub fn signer_id(&self) -> SignerId {
        self.public_key().signer_id()
    }

    /// Signs `message` (the header bytes 0..208, see [`crate::Header::sign`]).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }

    /// Serialises the key as the text of a signing key file. The text holds
    /// the secret: keep it in a `Zeroizing` and write it with mode 0600.
    pub fn to_file_text(&self) -> String {
        let seed = Zeroizing::new(self.0.to_bytes());
        format!(
            "# Stateless Loader publisher signing key. Keep this file secret (mode 0600).\n\
             # signer: {}\n\
             # public key: {}\n\
             {}{}\n",
            self.signer_id(),
            self.public_key().to_line(),
            SIGNING_KEY_FILE_PREFIX,
            hex_encode(seed.as_slice())
        )
    }

    /// Parses the text of a signing key file.
    pub fn from_file_text(text: &[u8]) -> Result<Self, PublisherKeyError> {
        let hex = key_line(text, KeyKind::Signing).map_err(|e| match e {
            LineError::Version => PublisherKeyError::UnsupportedVersion(SIGNING_KEY_FILE_PREFIX),
            LineError::Other(KeyKind::Public) => {
                PublisherKeyError::NotASigningKey("this is a publisher public key, not a signing key")
            }
            LineError::Other(_) => PublisherKeyError::NotASigningKey("this is a site key, not a publisher signing key"),
            e => PublisherKeyError::NotASigningKey(e.message(KeyKind::Signing)),
        })?;
        let mut seed = Zeroizing::new([0u8; 32]);
        if !hex_decode(hex, seed.as_mut_slice()) {
            return Err(PublisherKeyError::NotASigningKey("key must be 64 hex digits"));
        }
        Ok(Self::from_seed(&seed))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(signer {})", self.signer_id())
    }
}

/// A publisher's Ed25519 public key: what a reader needs to check signatures.
/// Never a weak (small-order) point.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Parses a 32-byte Ed25519 public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, PublisherKeyError> {
        match ed25519_dalek::VerifyingKey::from_bytes(bytes) {
            Ok(k) if !k.is_weak() => Ok(PublicKey(k)),
            _ => Err(PublisherKeyError::NotAPublicKey("not a valid Ed25519 public key")),
        }
    }

    /// The 32 bytes of the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// `SHA-256("stateless-bundle/v1/signer" || key)[0..8]`.
    pub fn signer_id(&self) -> SignerId {
        let digest = Sha256::new().chain_update(SIGNER_ID_DOMAIN).chain_update(self.0.as_bytes()).finalize();
        let mut id = [0u8; SIGNER_ID_LEN];
        for (o, d) in id.iter_mut().zip(digest.iter()) {
            *o = *d;
        }
        SignerId(id)
    }

    /// The key line of a public key file: `stateless-public-key-v1:<hex>`.
    pub fn to_line(&self) -> String {
        format!("{PUBLIC_KEY_FILE_PREFIX}{}", hex_encode(self.0.as_bytes()))
    }

    /// Serialises the key as the text of a public key file.
    pub fn to_file_text(&self) -> String {
        format!(
            "# Stateless Loader publisher public key (Ed25519). Not secret.\n# signer: {}\n{}\n",
            self.signer_id(),
            self.to_line()
        )
    }

    /// Parses the text of a public key file (or its key line alone).
    pub fn from_file_text(text: &[u8]) -> Result<Self, PublisherKeyError> {
        let hex = key_line(text, KeyKind::Public).map_err(|e| match e {
            LineError::Version => PublisherKeyError::UnsupportedVersion(PUBLIC_KEY_FILE_PREFIX),
            LineError::Other(KeyKind::Signing) => PublisherKeyError::NotAPublicKey(
                "this is a publisher signing key (secret); give its public key (statelessctl key pub)",
            ),
            LineError::Other(_) => PublisherKeyError::NotAPublicKey("this is a site key, not a publisher public key"),
            e => PublisherKeyError::NotAPublicKey(e.message(KeyKind::Public)),
        })?;
        let mut bytes = [0u8; 32];
        if !hex_decode(hex, &mut bytes) {
            return Err(PublisherKeyError::NotAPublicKey("key must be 64 hex digits"));
        }
        Self::from_bytes(&bytes)
    }

    /// Checks `signature` over `message` (strict RFC 8032 verification:
    /// non-canonical signatures are refused).
    pub fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        self.0.verify_strict(message, &Signature::from_bytes(signature)).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(signer {})", self.signer_id())
    }
}

/// The public id of a publisher key, carried in bytes 208..216 of a signed
/// header. Shown as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SignerId(pub [u8; SIGNER_ID_LEN]);

impl SignerId {
    /// The first 8 hex digits and an ellipsis, for console messages.
    pub fn short(&self) -> String {
        short_hex(&self.0)
    }
}

impl fmt::Display for SignerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl fmt::Debug for SignerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerId({self})")
    }
}

/// Errors from making or reading publisher key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublisherKeyError {
    /// The text is not a publisher signing key file.
    #[error("not a publisher signing key: {0}")]
    NotASigningKey(&'static str),
    /// The text is not a publisher public key file, or the key is invalid.
    #[error("not a publisher public key: {0}")]
    NotAPublicKey(&'static str),
    /// The key file uses a format version this build does not know.
    #[error("key file uses an unknown format version (expected {0})")]
    UnsupportedVersion(&'static str),
    /// The operating system's random source failed.
    #[error("reading the OS random source: {0}")]
    Random(String),
}

/// Why a bundle's publisher signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// A signature is required and the header carries none.
    #[error("bundle is not signed; a publisher signature is required")]
    Unsigned,
    /// The header names another publisher.
    #[error("bundle is signed by publisher {}, expected {}", found.short(), expected.short())]
    WrongSigner {
        /// The signer id in the header.
        found: SignerId,
        /// The id of the key the reader was given.
        expected: SignerId,
    },
    /// The header names a publisher that is not in the trusted set (several
    /// trusted publishers; with one, [`SignatureError::WrongSigner`]).
    #[error("bundle is signed by publisher {}, not one of the trusted publishers {}", found.short(), short_list(trusted))]
    UntrustedSigner {
        /// The signer id in the header.
        found: SignerId,
        /// The ids of the keys the reader was given (empty: none).
        trusted: Vec<SignerId>,
    },
    /// The signature does not verify over the header as received.
    #[error("publisher signature does not verify: the header was modified or is corrupt")]
    BadSignature,
    /// The payload read does not hash to the digest the signature covers.
    #[error("payload digest mismatch: the payload is not the one publisher {} signed", signer.short())]
    PayloadDigest {
        /// The publisher whose signature covered the digest.
        signer: SignerId,
    },
}

/// Short signer ids, comma-separated, for a console line.
fn short_list(ids: &[SignerId]) -> String {
    if ids.is_empty() {
        return "(none configured)".to_owned();
    }
    ids.iter().map(SignerId::short).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::MAX_KEY_FILE_LEN;

    #[test]
    fn key_files_round_trip() {
        let sk = SigningKey::generate().unwrap();
        let text = sk.to_file_text();
        let back = SigningKey::from_file_text(text.as_bytes()).unwrap();
        assert_eq!(back.public_key(), sk.public_key());
        assert!(text.contains(&sk.signer_id().to_string()), "{text}");
        let pk = sk.public_key();
        let pub_text = pk.to_file_text();
        assert_eq!(PublicKey::from_file_text(pub_text.as_bytes()).unwrap(), pk);
        assert_eq!(PublicKey::from_file_text(pk.to_line().as_bytes()).unwrap(), pk);
        // The signing key file's comment carries the public key line, which
        // is a comment there and does not make it a public key file.
        assert!(text.contains(&pk.to_line()));
        assert!(text.lines().filter(|l| !l.starts_with('#')).all(|l| l.starts_with(SIGNING_KEY_FILE_PREFIX)));
        assert!(text.len() < MAX_KEY_FILE_LEN);
    }

    #[test]
    fn signer_id_is_the_documented_digest() {
        // RFC 8032 test 1: seed 9d61b19d..., public key d75a9801...
        let mut seed = [0u8; 32];
        assert!(hex_decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", &mut seed));
        let sk = SigningKey::from_seed(&seed);
        let pk = sk.public_key();
        assert_eq!(hex_encode(&pk.to_bytes()), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let mut h = Sha256::new();
        h.update(b"stateless-bundle/v1/signer");
        h.update(pk.to_bytes());
        assert_eq!(sk.signer_id().0[..], h.finalize()[..8]);
        // RFC 8032 test 1 signs the empty message.
        assert_eq!(
            hex_encode(&sk.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert_eq!(sk.signer_id().to_string().len(), 16);
        assert_eq!(sk.signer_id().short().chars().count(), 9);
    }

    #[test]
    fn verify_is_strict_about_message_and_signature() {
        let sk = SigningKey::from_seed(&[7; 32]);
        let pk = sk.public_key();
        let msg = b"header bytes".to_vec();
        let sig = sk.sign(&msg);
        assert!(pk.verify(&msg, &sig));
        for i in 0..msg.len() {
            let mut m = msg.clone();
            m[i] ^= 0x40;
            assert!(!pk.verify(&m, &sig), "byte {i} of the message");
        }
        for i in 0..SIGNATURE_LEN {
            let mut s = sig;
            s[i] ^= 1;
            assert!(!pk.verify(&msg, &s), "byte {i} of the signature");
        }
        assert!(!SigningKey::from_seed(&[8; 32]).public_key().verify(&msg, &sig));
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let sk = SigningKey::from_seed(&[0xab; 32]);
        let dbg = format!("{sk:?} {:?}", sk.public_key());
        assert!(!dbg.contains("abab") && !dbg.contains("171"), "{dbg}");
        assert!(dbg.contains(&sk.signer_id().to_string()), "{dbg}");
    }

    #[test]
    fn rejects_what_is_not_a_publisher_key() {
        let sk = SigningKey::from_seed(&[1; 32]);
        let site = crate::Key::from_bytes([2; 32]).to_file_text();
        let signing = sk.to_file_text();
        let public = sk.public_key().to_file_text();
        let cases: &[(&[u8], &str)] = &[
            (b"", "no stateless-signing-key-v1: line"),
            (b"hello\n", "no stateless-signing-key-v1: line"),
            (b"stateless-signing-key-v1:abcd\n", "64 hex"),
            (b"stateless-signing-key-v2:00\n", "unknown format version (expected stateless-signing-key-v1:)"),
            (&[0xff, 0xfe], "not text"),
            (public.as_bytes(), "this is a publisher public key, not a signing key"),
            (site.as_bytes(), "this is a site key, not a publisher signing key"),
        ];
        for (text, want) in cases {
            let err = SigningKey::from_file_text(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(err.starts_with("not a publisher signing key") || err.contains("format version"), "{err}");
        }
        let cases: &[(&[u8], &str)] = &[
            (b"", "no stateless-public-key-v1: line"),
            (b"stateless-public-key-v1:zz\n", "64 hex"),
            (signing.as_bytes(), "this is a publisher signing key (secret)"),
            (site.as_bytes(), "this is a site key, not a publisher public key"),
        ];
        for (text, want) in cases {
            let err = PublicKey::from_file_text(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let two = format!("{}\n{}\n", sk.public_key().to_line(), sk.public_key().to_line());
        assert!(PublicKey::from_file_text(two.as_bytes()).unwrap_err().to_string().contains("more than one"));
        assert!(PublicKey::from_file_text(&vec![b'#'; 5000]).unwrap_err().to_string().contains("too large"));
        // The identity point is a weak key: no signature should be checked with it.
        let identity = format!("{PUBLIC_KEY_FILE_PREFIX}01{}", "0".repeat(62));
        let err = PublicKey::from_file_text(identity.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("not a valid Ed25519 public key"), "{err}");
    }
}
