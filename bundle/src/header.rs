//! The fixed 320-byte bundle header: parse and serialise over bytes.
//!
//! Layout (all integers big-endian; see docs/bundle-format.md):
//!
//! | offset | len | field |
//! |-------:|----:|-------|
//! | 0   | 8  | magic `STLSBNDL` |
//! | 8   | 2  | format version (1) |
//! | 10  | 1  | cipher: 0 none, 1 AES-256-GCM STREAM |
//! | 11  | 1  | compression: 1 zstd (tar payload), 0 none (image payload) |
//! | 12  | 4  | flags: bit 0 = signed; other bits zero |
//! | 16  | 16 | key id (zero when unencrypted) |
//! | 32  | 32 | salt |
//! | 64  | 8  | generation |
//! | 72  | 8  | created, Unix seconds |
//! | 80  | 8  | expires, Unix seconds, 0 = never |
//! | 88  | 8  | payload length in bytes |
//! | 96  | 8  | expanded (tar) length in bytes |
//! | 104 | 4  | tar entry count |
//! | 108 | 1  | scope kind: 0 any, 1 node, 2 group |
//! | 109 | 1  | scope name length |
//! | 110 | 64 | scope name, zero padded |
//! | 174 | 32 | SHA-256 of the payload |
//! | 206 | 1  | payload kind: 0 tar+zstd, 1 EROFS image |
//! | 207 | 1  | reserved, zero |
//! | 208 | 8  | signer: publisher signer id (zero when unsigned) |
//! | 216 | 64 | signature: Ed25519 over bytes 0..208 (zero when unsigned) |
//! | 280 | 8  | reserved, zero |
//! | 288 | 32 | header tag over bytes 0..288 |
//!
//! The tag is HMAC-SHA256 under a key derived from the site key and the salt
//! when the bundle is encrypted, and plain SHA-256 when it is not (a checksum
//! against corruption, not a proof of origin). Nothing parsed from the header
//! is trusted until [`RawHeader::authenticate`] has checked the tag over the
//! exact bytes received.
//!
//! A publisher signature ([`crate::sign`]) is optional: [`Header::sign`]
//! fills the slot before the tag is computed, so the tag covers it, and
//! [`RawHeader::verify_signature`] checks it over the bytes received. A
//! reader that is given no publisher key ignores the slot.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::key::{KEY_ID_LEN, Key, KeyId, hex_encode};
use crate::sign::{PublicKey, SIGNATURE_LEN, SIGNER_ID_LEN, SignatureError, SignerId, SigningKey};
use crate::stream::{self, PayloadKey};

/// The first eight bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"STLSBNDL";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 320;
/// Longest node or group name a scope may carry.
pub const MAX_SCOPE_NAME_LEN: usize = 64;
/// Length of the salt from which per-bundle keys are derived.
pub const SALT_LEN: usize = 32;

const TAGGED_LEN: usize = 288;
const SIGNED_LEN: usize = 208;
const FLAG_SIGNED: u32 = 1;
const HEADER_KEY_INFO: &[u8] = b"stateless-bundle/v1/header";
const PAYLOAD_KEY_INFO: &[u8] = b"stateless-bundle/v1/payload";

/// How the payload is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// Not encrypted; integrity by SHA-256 only.
    None,
    /// AES-256-GCM in the STREAM construction, 64 KiB chunks.
    Aes256GcmStream,
}

impl Cipher {
    fn code(self) -> u8 {
        match self {
            Cipher::None => 0,
            Cipher::Aes256GcmStream => 1,
        }
    }

    /// The name used in `inspect` output and docs.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::None => "none",
            Cipher::Aes256GcmStream => "aes-256-gcm-stream",
        }
    }
}

/// What the payload holds once decrypted (header byte 206).
///
/// Byte 206 was reserved and zero in every bundle written before image
/// payloads existed, so a tar bundle is byte-for-byte what it was; a reader
/// from before this kind refuses an image bundle ("reserved bytes are not
/// zero"), and this reader refuses any kind it does not know by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadKind {
    /// A tar stream compressed with zstd, extracted file by file.
    #[default]
    TarZstd,
    /// An EROFS file system image, stored as is (it compresses its own
    /// blocks): mounted read-only as an overlay lower layer, never
    /// extracted by the loader.
    ErofsImage,
}

impl PayloadKind {
    fn code(self) -> u8 {
        match self {
            PayloadKind::TarZstd => 0,
            PayloadKind::ErofsImage => 1,
        }
    }

    /// The compression byte (offset 11) this kind requires.
    fn compression(self) -> u8 {
        match self {
            PayloadKind::TarZstd => 1,
            PayloadKind::ErofsImage => 0,
        }
    }

    /// The name used in `inspect` output and docs.
    pub fn name(self) -> &'static str {
        match self {
            PayloadKind::TarZstd => "tar+zstd",
            PayloadKind::ErofsImage => "erofs-image",
        }
    }
}

/// Which nodes a bundle is meant for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any node.
    Any,
    /// One node, by id.
    Node(String),
    /// The nodes of one group.
    Group(String),
    /// One plugin's layer, by plugin name: a node applies it only when its
    /// stack names the plugin (docs/site.md), and it can never stand in
    /// for a node, group or default bundle.
    Plugin(String),
}

impl Scope {
    /// Parses `any`, `node:NAME`, `group:NAME` or `plugin:NAME`.
    pub fn parse(s: &str) -> Result<Scope, HeaderError> {
        let scope = match s.split_once(':') {
            None if s == "any" => Scope::Any,
            Some(("node", name)) => Scope::Node(name.to_owned()),
            Some(("group", name)) => Scope::Group(name.to_owned()),
            Some(("plugin", name)) => Scope::Plugin(name.to_owned()),
            _ => return Err(HeaderError::BadScope("scope must be any, node:NAME, group:NAME or plugin:NAME")),
        };
        if let Scope::Node(name) | Scope::Group(name) | Scope::Plugin(name) = &scope {
            validate_name(name.as_bytes())?;
        }
        Ok(scope)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Any => f.write_str("any"),
            Scope::Node(n) => write!(f, "node:{n}"),
            Scope::Group(g) => write!(f, "group:{g}"),
            Scope::Plugin(p) => write!(f, "plugin:{p}"),
        }
    }
}

/// Checks a node or group name: 1 to 64 bytes of `[A-Za-z0-9._:-]`, not
/// starting with a dot, so a name is always safe as one path component.
pub fn validate_name(name: &[u8]) -> Result<(), HeaderError> {
    let ok_char = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-');
    if name.is_empty() || name.len() > MAX_SCOPE_NAME_LEN {
        return Err(HeaderError::BadScope("name must be 1 to 64 bytes"));
    }
    if name.first() == Some(&b'.') || !name.iter().all(ok_char) {
        return Err(HeaderError::BadScope("name may use only A-Z a-z 0-9 . _ : - and must not start with a dot"));
    }
    Ok(())
}

/// The publisher signature slot of a signed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSlot {
    /// The publisher key's signer id ([`SigningKey::signer_id`]).
    pub signer: [u8; SIGNER_ID_LEN],
    /// Ed25519 signature over header bytes 0..208.
    pub signature: [u8; SIGNATURE_LEN],
}

/// The fields of a bundle header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// How the payload is protected.
    pub cipher: Cipher,
    /// Id of the key the bundle is sealed for (zero when unencrypted).
    pub key_id: KeyId,
    /// Random salt for the per-bundle keys.
    pub salt: [u8; SALT_LEN],
    /// Monotonic generation; loaders refuse to go backwards.
    pub generation: u64,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Expiry, Unix seconds.
    pub expires: Option<i64>,
    /// What the payload holds.
    pub kind: PayloadKind,
    /// Bytes of payload after the header.
    pub payload_len: u64,
    /// Bytes of the decompressed tar stream, or of the image.
    pub expanded_len: u64,
    /// Number of tar entries (0 for an image).
    pub entry_count: u32,
    /// Which nodes the bundle is for.
    pub scope: Scope,
    /// SHA-256 of the payload bytes.
    pub payload_sha256: [u8; 32],
    /// Publisher signature, when the bundle is signed.
    pub signature: Option<SignatureSlot>,
}

impl Header {
    /// Serialises the header with its tag. `key` must be the key the header
    /// names when the cipher is not `None`.
    pub fn to_bytes(&self, key: Option<&Key>) -> Result<[u8; HEADER_LEN], HeaderError> {
        let fields = self.field_bytes()?;
        let tag = match (self.cipher, key) {
            (Cipher::None, _) => sha256(&fields),
            (Cipher::Aes256GcmStream, Some(key)) => {
                if key.id() != self.key_id {
                    return Err(HeaderError::WrongKey { needed: self.key_id, have: key.id() });
                }
                hmac_tag(&derive_keys(key, &self.salt).0, &fields)
            }
            (Cipher::Aes256GcmStream, None) => return Err(HeaderError::KeyRequired { needed: self.key_id }),
        };
        let mut b = [0u8; HEADER_LEN];
        let (head, rest) = b.split_at_mut(TAGGED_LEN);
        head.copy_from_slice(&fields);
        rest.copy_from_slice(&tag);
        Ok(b)
    }

    /// Signs the header as `signer`: sets the signed flag and the signer id,
    /// then signs bytes 0..208 as they will be serialised. Call it once every
    /// other field has its final value (the payload digest included), then
    /// [`Header::to_bytes`], whose tag then covers the signature too.
    pub fn sign(&mut self, signer: &SigningKey) -> Result<(), HeaderError> {
        let mut slot = SignatureSlot { signer: signer.signer_id().0, signature: [0; SIGNATURE_LEN] };
        let mut unsigned = self.clone();
        unsigned.signature = Some(slot.clone());
        let fields = unsigned.field_bytes()?;
        slot.signature = signer.sign(fields.get(..SIGNED_LEN).unwrap_or_default());
        self.signature = Some(slot);
        Ok(())
    }

    /// Bytes 0..288: every field, without the tag.
    fn field_bytes(&self) -> Result<[u8; TAGGED_LEN], HeaderError> {
        if self.expires == Some(0) {
            return Err(HeaderError::BadField("expiry 0 is reserved for 'never'"));
        }
        let mut fields = [0u8; TAGGED_LEN];
        let mut w = Writer { buf: &mut fields, pos: 0 };
        w.put(MAGIC);
        w.put(&FORMAT_VERSION.to_be_bytes());
        w.put(&[self.cipher.code(), self.kind.compression()]);
        let flags = if self.signature.is_some() { FLAG_SIGNED } else { 0 };
        w.put(&flags.to_be_bytes());
        w.put(&self.key_id.0);
        w.put(&self.salt);
        w.put(&self.generation.to_be_bytes());
        w.put(&self.created.to_be_bytes());
        w.put(&self.expires.unwrap_or(0).to_be_bytes());
        w.put(&self.payload_len.to_be_bytes());
        w.put(&self.expanded_len.to_be_bytes());
        w.put(&self.entry_count.to_be_bytes());
        let (kind, name) = match &self.scope {
            Scope::Any => (0u8, ""),
            Scope::Node(n) => (1, n.as_str()),
            Scope::Group(g) => (2, g.as_str()),
            Scope::Plugin(p) => (3, p.as_str()),
        };
        if kind != 0 {
            validate_name(name.as_bytes())?;
        }
        let name_len = u8::try_from(name.len()).map_err(|_| HeaderError::BadScope("name too long"))?;
        w.put(&[kind, name_len]);
        let mut padded = [0u8; MAX_SCOPE_NAME_LEN];
        padded.get_mut(..name.len()).ok_or(HeaderError::BadScope("name too long"))?.copy_from_slice(name.as_bytes());
        w.put(&padded);
        if self.kind == PayloadKind::ErofsImage && self.entry_count != 0 {
            return Err(HeaderError::BadField("an image payload has entry count 0"));
        }
        w.put(&self.payload_sha256);
        w.put(&[self.kind.code(), 0]);
        match &self.signature {
            Some(s) => {
                w.put(&s.signer);
                w.put(&s.signature);
            }
            None => w.put(&[0u8; 72]),
        }
        w.put(&[0u8; 8]);
        debug_assert_eq!(w.pos, TAGGED_LEN);
        Ok(fields)
    }

    /// The bytes a publisher signature covers.
    pub fn signed_bytes(raw: &[u8; HEADER_LEN]) -> &[u8] {
        raw.get(..SIGNED_LEN).unwrap_or(&[])
    }
}

/// The received header bytes, parsed but not yet authenticated.
#[derive(Debug, Clone)]
pub struct RawHeader {
    bytes: [u8; HEADER_LEN],
    fields: Header,
}

impl RawHeader {
    /// Parses the fixed part of a header. The result is not authenticated:
    /// only [`RawHeader::key_id`] and [`RawHeader::cipher`] may be used to pick
    /// a key, and [`RawHeader::unverified`] only for display.
    pub fn parse(bytes: &[u8]) -> Result<RawHeader, HeaderError> {
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            return Err(HeaderError::Truncated { got: bytes.len() });
        }
        if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(HeaderError::BadMagic);
        }
        let b: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(HeaderError::Truncated { got: bytes.len() })?;
        let mut r = Reader { buf: &b, pos: MAGIC.len() };
        let version = u16::from_be_bytes(r.take());
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let [cipher, compression] = r.take();
        let cipher = match cipher {
            0 => Cipher::None,
            1 => Cipher::Aes256GcmStream,
            other => return Err(HeaderError::UnknownCipher(other)),
        };
        // Byte 206 decides how byte 11 is read, so look at it first: an
        // unknown kind is named as such rather than as a compression.
        let payload_kind = match b.get(206).copied().unwrap_or(0) {
            0 => PayloadKind::TarZstd,
            1 => PayloadKind::ErofsImage,
            other => return Err(HeaderError::UnknownPayloadKind(other)),
        };
        if compression != payload_kind.compression() {
            return Err(match payload_kind {
                PayloadKind::TarZstd => HeaderError::UnknownCompression(compression),
                PayloadKind::ErofsImage => HeaderError::BadField("an image payload has compression 0 (none)"),
            });
        }
        let flags = u32::from_be_bytes(r.take());
        if flags & !FLAG_SIGNED != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let key_id = KeyId(r.take::<KEY_ID_LEN>());
        if (cipher == Cipher::None) != key_id.is_zero() {
            return Err(HeaderError::BadField("key id must be zero exactly when unencrypted"));
        }
        let salt = r.take::<SALT_LEN>();
        let generation = u64::from_be_bytes(r.take());
        let created = i64::from_be_bytes(r.take());
        let expires = match i64::from_be_bytes(r.take()) {
            0 => None,
            t => Some(t),
        };
        let payload_len = u64::from_be_bytes(r.take());
        if cipher == Cipher::Aes256GcmStream && stream::plaintext_len(payload_len).is_none() {
            return Err(HeaderError::BadField("payload length is not a valid STREAM length"));
        }
        let expanded_len = u64::from_be_bytes(r.take());
        let entry_count = u32::from_be_bytes(r.take());
        let [kind, name_len] = r.take();
        let name_field = r.take::<MAX_SCOPE_NAME_LEN>();
        let name_len = usize::from(name_len);
        let (name, padding) =
            name_field.split_at_checked(name_len).ok_or(HeaderError::BadScope("name length over 64"))?;
        if padding.iter().any(|&c| c != 0) {
            return Err(HeaderError::BadField("scope name padding is not zero"));
        }
        let scope = match kind {
            0 if name.is_empty() => Scope::Any,
            0 => return Err(HeaderError::BadScope("scope any carries a name")),
            1..=3 => {
                validate_name(name)?;
                // validate_name admits ASCII only, so this cannot fail.
                let name = String::from_utf8_lossy(name).into_owned();
                match kind {
                    1 => Scope::Node(name),
                    2 => Scope::Group(name),
                    _ => Scope::Plugin(name),
                }
            }
            _ => return Err(HeaderError::BadScope("unknown scope kind")),
        };
        let payload_sha256 = r.take::<32>();
        let [_kind, reserved_a] = r.take::<2>();
        let signer = r.take::<8>();
        let signature = r.take::<64>();
        let reserved_b = r.take::<8>();
        if reserved_a != 0 || reserved_b != [0; 8] {
            return Err(HeaderError::BadField("reserved bytes are not zero"));
        }
        let signature = if flags & FLAG_SIGNED != 0 {
            Some(SignatureSlot { signer, signature })
        } else if signer != [0; 8] || signature != [0; 64] {
            return Err(HeaderError::BadField("signature slot is filled but the signed flag is clear"));
        } else {
            None
        };
        if payload_kind == PayloadKind::ErofsImage && entry_count != 0 {
            return Err(HeaderError::BadField("an image payload has entry count 0"));
        }
        let fields = Header {
            cipher,
            key_id,
            salt,
            generation,
            created,
            expires,
            kind: payload_kind,
            payload_len,
            expanded_len,
            entry_count,
            scope,
            payload_sha256,
            signature,
        };
        Ok(RawHeader { bytes: b, fields })
    }

    /// The cipher the header claims (unauthenticated).
    pub fn cipher(&self) -> Cipher {
        self.fields.cipher
    }

    /// The key id the header claims (unauthenticated), for choosing a key.
    pub fn key_id(&self) -> KeyId {
        self.fields.key_id
    }

    /// The fields, not authenticated: for display only.
    pub fn unverified(&self) -> &Header {
        &self.fields
    }

    /// The exact header bytes as received.
    pub fn bytes(&self) -> &[u8; HEADER_LEN] {
        &self.bytes
    }

    /// The header tag: identifies this exact bundle (used as its digest and
    /// HTTP entity tag).
    pub fn tag(&self) -> [u8; 32] {
        let mut tag = [0u8; 32];
        if let Some(t) = self.bytes.get(TAGGED_LEN..) {
            tag.copy_from_slice(t);
        }
        tag
    }

    /// The bundle digest as lowercase hex (the header tag).
    pub fn digest_hex(&self) -> String {
        hex_encode(&self.tag())
    }

    /// The signer id the header claims (unauthenticated), or `None` when the
    /// header is not signed.
    pub fn signer(&self) -> Option<SignerId> {
        self.fields.signature.as_ref().map(|s| SignerId(s.signer))
    }

    /// Checks the publisher signature over the bytes received: the header
    /// must be signed, by `publisher`, and the signature must verify over
    /// bytes 0..208. Needs no site key. The signature covers the payload's
    /// SHA-256, not the payload: a reader must still check the payload
    /// against it ([`crate::Authenticated::require_signature`] does).
    pub fn verify_signature(&self, publisher: &PublicKey) -> Result<SignerId, SignatureError> {
        self.verify_signature_by_any(std::slice::from_ref(publisher))
    }

    /// [`RawHeader::verify_signature`] with a set of trusted publishers (a
    /// site rotating its publisher key trusts the old and the new one): the
    /// header must be signed by one of them, chosen by the signer id it
    /// carries, and the signature must verify with that key.
    pub fn verify_signature_by_any(&self, publishers: &[PublicKey]) -> Result<SignerId, SignatureError> {
        let slot = self.fields.signature.as_ref().ok_or(SignatureError::Unsigned)?;
        let found = SignerId(slot.signer);
        let Some(publisher) = publishers.iter().find(|p| p.signer_id() == found) else {
            return Err(match publishers {
                [one] => SignatureError::WrongSigner { found, expected: one.signer_id() },
                _ => SignatureError::UntrustedSigner {
                    found,
                    trusted: publishers.iter().map(PublicKey::signer_id).collect(),
                },
            });
        };
        if !publisher.verify(Header::signed_bytes(&self.bytes), &slot.signature) {
            return Err(SignatureError::BadSignature);
        }
        Ok(found)
    }

    /// Checks the tag: with `key` for an encrypted bundle, as a checksum for
    /// an unencrypted one. Returns the trusted header and, when encrypted,
    /// the payload key.
    pub fn authenticate(&self, key: Option<&Key>) -> Result<(Header, Option<PayloadKey>), HeaderError> {
        let (fields, tag) = self.bytes.split_at(TAGGED_LEN);
        match self.fields.cipher {
            Cipher::None => {
                if !bool::from(sha256(fields).as_slice().ct_eq(tag)) {
                    return Err(HeaderError::BadChecksum);
                }
                Ok((self.fields.clone(), None))
            }
            Cipher::Aes256GcmStream => {
                let key = key.ok_or(HeaderError::KeyRequired { needed: self.fields.key_id })?;
                if key.id() != self.fields.key_id {
                    return Err(HeaderError::WrongKey { needed: self.fields.key_id, have: key.id() });
                }
                let (header_key, payload_key) = derive_keys(key, &self.fields.salt);
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(header_key.as_slice())
                    .map_err(|_| HeaderError::BadTag)?;
                mac.update(fields);
                mac.verify_slice(tag).map_err(|_| HeaderError::BadTag)?;
                Ok((self.fields.clone(), Some(payload_key)))
            }
        }
    }
}

/// The payload key for a bundle with this salt (used when packing).
pub(crate) fn payload_key(key: &Key, salt: &[u8; SALT_LEN]) -> PayloadKey {
    derive_keys(key, salt).1
}

fn derive_keys(key: &Key, salt: &[u8; SALT_LEN]) -> (Zeroizing<[u8; 32]>, PayloadKey) {
    let hk = Hkdf::<Sha256>::new(Some(salt), key.as_bytes());
    let mut header_key = Zeroizing::new([0u8; 32]);
    let mut payload_key = Zeroizing::new([0u8; 32]);
    // 32-byte outputs are always within HKDF-SHA256's limit.
    if hk.expand(HEADER_KEY_INFO, header_key.as_mut_slice()).is_err()
        || hk.expand(PAYLOAD_KEY_INFO, payload_key.as_mut_slice()).is_err()
    {
        unreachable!("HKDF output length 32 is always valid");
    }
    (header_key, PayloadKey::new(payload_key))
}

fn hmac_tag(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut tag = [0u8; 32];
    if let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        mac.update(data);
        tag.copy_from_slice(&mac.finalize().into_bytes());
    }
    tag
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(data));
    out
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

struct Reader<'a> {
    buf: &'a [u8; HEADER_LEN],
    pos: usize,
}

impl Reader<'_> {
    /// Reads the next N bytes. Every call site reads a fixed layout that fits
    /// in HEADER_LEN, so the zero fallback is never taken.
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }
}

/// Errors in a bundle header.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file does not start with the bundle magic.
    #[error("not a stateless bundle (bad magic)")]
    BadMagic,
    /// The file ends inside the header.
    #[error("truncated: bundle is {got} bytes, shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// Bytes available.
        got: usize,
    },
    /// A format version this build does not read.
    #[error("unknown bundle format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    /// An unknown cipher code.
    #[error("unknown cipher {0}")]
    UnknownCipher(u8),
    /// A payload kind this build does not know (byte 206).
    #[error("unknown payload kind {0} (this build reads 0 tar+zstd and 1 erofs-image)")]
    UnknownPayloadKind(u8),
    /// An unknown compression code.
    #[error("unknown compression {0}")]
    UnknownCompression(u8),
    /// Flag bits this version does not define.
    #[error("unknown header flags {0:#x}")]
    UnknownFlags(u32),
    /// A malformed scope.
    #[error("bad scope: {0}")]
    BadScope(&'static str),
    /// Another malformed field.
    #[error("malformed header: {0}")]
    BadField(&'static str),
    /// The bundle is encrypted and no key was given.
    #[error("bundle is encrypted for key {}; no key was given", needed.short())]
    KeyRequired {
        /// The key the bundle needs.
        needed: KeyId,
    },
    /// The key given is not the one the bundle is sealed for.
    #[error("bundle is sealed for key {}, this key is {}", needed.short(), have.short())]
    WrongKey {
        /// The key the bundle needs.
        needed: KeyId,
        /// The key that was offered.
        have: KeyId,
    },
    /// The header MAC did not verify.
    #[error("header authentication failed: the header was modified or is corrupt")]
    BadTag,
    /// The header checksum of an unencrypted bundle did not match.
    #[error("header checksum mismatch: the header is corrupt")]
    BadChecksum,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cipher: Cipher, key: &Key) -> Header {
        Header {
            cipher,
            key_id: if cipher == Cipher::None { KeyId::default() } else { key.id() },
            salt: [5; SALT_LEN],
            generation: 9,
            created: 1_700_000_000,
            expires: Some(1_800_000_000),
            kind: PayloadKind::TarZstd,
            payload_len: stream::encrypted_len(1000),
            expanded_len: 2048,
            entry_count: 3,
            scope: Scope::Group("web".into()),
            payload_sha256: [0x5a; 32],
            signature: None,
        }
    }

    #[test]
    fn signed_header_round_trips_and_every_signed_byte_counts() {
        let sk = SigningKey::from_seed(&[9; 32]);
        let pk = sk.public_key();
        let key = Key::from_bytes([1; 32]);
        for cipher in [Cipher::None, Cipher::Aes256GcmStream] {
            let mut h = header(cipher, &key);
            h.sign(&sk).unwrap();
            let bytes = h.to_bytes(Some(&key)).unwrap();
            assert_eq!(bytes.get(12..16), Some(&[0, 0, 0, 1][..]), "signed flag");
            let raw = RawHeader::parse(&bytes).unwrap();
            assert_eq!(raw.authenticate(Some(&key)).unwrap().0, h);
            assert_eq!(raw.verify_signature(&pk), Ok(sk.signer_id()));
            // Signing again gives the same bytes (Ed25519 is deterministic),
            // and a signed header re-signs cleanly.
            let mut again = h.clone();
            again.sign(&sk).unwrap();
            assert_eq!(again.to_bytes(Some(&key)).unwrap(), bytes);
            for i in 0..SIGNED_LEN + SIGNER_ID_LEN + SIGNATURE_LEN {
                let mut t = bytes;
                if let Some(b) = t.get_mut(i) {
                    *b ^= 0x01;
                }
                // A flipped byte either makes the header unparseable or
                // fails the signature check; it never verifies.
                if let Ok(raw) = RawHeader::parse(&t) {
                    assert!(raw.verify_signature(&pk).is_err(), "byte {i} of a {cipher:?} header");
                }
            }
        }
    }

    #[test]
    fn a_set_of_publishers_accepts_any_member_and_names_the_stranger() {
        let (old, new, stranger) =
            (SigningKey::from_seed(&[1; 32]), SigningKey::from_seed(&[2; 32]), SigningKey::from_seed(&[3; 32]));
        let key = Key::from_bytes([1; 32]);
        let trusted = [old.public_key(), new.public_key()];
        let signed_by = |sk: &SigningKey| {
            let mut h = header(Cipher::Aes256GcmStream, &key);
            h.sign(sk).unwrap();
            RawHeader::parse(&h.to_bytes(Some(&key)).unwrap()).unwrap()
        };
        assert_eq!(signed_by(&old).verify_signature_by_any(&trusted), Ok(old.signer_id()));
        assert_eq!(signed_by(&new).verify_signature_by_any(&trusted), Ok(new.signer_id()));
        let err = signed_by(&stranger).verify_signature_by_any(&trusted).unwrap_err();
        assert_eq!(
            err,
            SignatureError::UntrustedSigner {
                found: stranger.signer_id(),
                trusted: vec![old.signer_id(), new.signer_id()]
            }
        );
        let msg = err.to_string();
        assert!(msg.contains(&stranger.signer_id().short()) && msg.contains(&new.signer_id().short()), "{msg}");
        // One trusted key: the message `bundle verify --pubkey` prints.
        let one = signed_by(&stranger).verify_signature_by_any(&trusted[..1]).unwrap_err();
        assert_eq!(one, SignatureError::WrongSigner { found: stranger.signer_id(), expected: old.signer_id() });
        let none = signed_by(&stranger).verify_signature_by_any(&[]).unwrap_err().to_string();
        assert!(none.ends_with("(none configured)"), "{none}");
        let unsigned = RawHeader::parse(&header(Cipher::Aes256GcmStream, &key).to_bytes(Some(&key)).unwrap()).unwrap();
        assert_eq!(unsigned.verify_signature_by_any(&trusted), Err(SignatureError::Unsigned));
    }

    #[test]
    fn every_scope_kind_round_trips_and_parses_from_text() {
        let key = Key::from_bytes([1; 32]);
        for text in ["any", "node:n42", "group:rack7", "plugin:acme-agent"] {
            let scope = Scope::parse(text).unwrap();
            assert_eq!(scope.to_string(), text);
            let mut h = header(Cipher::Aes256GcmStream, &key);
            h.scope = scope.clone();
            let bytes = h.to_bytes(Some(&key)).unwrap();
            let (back, _) = RawHeader::parse(&bytes).unwrap().authenticate(Some(&key)).unwrap();
            assert_eq!(back.scope, scope, "{text}");
        }
        for bad in ["plugin:", "plugin:.x", "vendor:acme", "plugin:a/b"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_kind_round_trips_and_unknown_kinds_are_named() {
        let key = Key::from_bytes([1; 32]);
        let mut h = header(Cipher::Aes256GcmStream, &key);
        h.kind = PayloadKind::ErofsImage;
        assert!(matches!(h.to_bytes(Some(&key)), Err(HeaderError::BadField(_))), "an image has no tar entries");
        h.entry_count = 0;
        let bytes = h.to_bytes(Some(&key)).unwrap();
        assert_eq!((bytes[11], bytes[206], bytes[207]), (0, 1, 0));
        let (back, _) = RawHeader::parse(&bytes).unwrap().authenticate(Some(&key)).unwrap();
        assert_eq!(back, h);
        // A tar header is unchanged: byte 206 stays zero, compression 1.
        let tar = header(Cipher::Aes256GcmStream, &key).to_bytes(Some(&key)).unwrap();
        assert_eq!((tar[11], tar[206]), (1, 0));
        for kind in [2u8, 0x7f, 0xff] {
            let mut b = bytes;
            b[206] = kind;
            let err = RawHeader::parse(&b).unwrap_err();
            assert!(matches!(err, HeaderError::UnknownPayloadKind(k) if k == kind), "{err}");
        }
        let mut b = bytes;
        b[11] = 1;
        assert!(matches!(RawHeader::parse(&b), Err(HeaderError::BadField(_))));
    }

    #[test]
    fn unsigned_header_has_no_signer() {
        let key = Key::from_bytes([1; 32]);
        let bytes = header(Cipher::None, &key).to_bytes(None).unwrap();
        let raw = RawHeader::parse(&bytes).unwrap();
        assert_eq!(raw.signer(), None);
        let pk = SigningKey::from_seed(&[9; 32]).public_key();
        assert_eq!(raw.verify_signature(&pk), Err(SignatureError::Unsigned));
    }
}
