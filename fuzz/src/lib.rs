//! The bodies of the fuzz targets, shared by the libFuzzer binaries in
//! `fuzz_targets/` and by the plain `replay` binary (which runs the same code
//! over files on a stable toolchain, without libFuzzer).
//!
//! Every target panics only on a property violation: the library is expected
//! to return errors for bad input, never to panic, and a few round-trip and
//! agreement properties are asserted on top. Set `STATELESS_FUZZ_STRICT=1` to
//! also assert that verify-only (`dest: None`) and extraction give the same
//! outcome, error text included, and that a payload sealed two ways fails the
//! same way. The catalogue holds every mode to the same expectation
//! (`bundle/tests/vectors.rs` runs each vector extracting, single-threaded
//! and verify-only; in `tar_child_before_parent_dir`, for one, verify-only
//! refuses the late directory entry just as extraction does), but the library's
//! contract is only that each mode refuses what is wrong, so the
//! reproducible run does not assert the stronger property.
//!
//! No key file is ever read: keys are fixed constants or bytes of the input.

pub mod loader;

use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use stateless_bundle::extract::{self, ExtractOptions, ExtractSummary};
use stateless_bundle::header::HEADER_LEN;
use stateless_bundle::stream::{self, CHUNK_SIZE, PayloadKey, StreamReader, StreamWriter};
use stateless_bundle::{
    BundleReader, Cipher, Header, Key, KeyId, Limits, OpenOptions, PublicKey, RawHeader, Scope, SigningKey,
};

mod ignition;
mod model;
mod trust;
pub use ignition::{import_ignition, import_ignition_seeds};
pub use model::{model_toml, model_toml_seeds};
pub use trust::{keys_pubkey_arg, keys_pubkey_arg_seeds};

/// The key `bundle_open` tries and seals with (a constant, not a secret).
pub const FUZZ_KEY: [u8; 32] = *b"stateless-fuzz: not a secret key";
/// The seed of the publisher key `header_parse` signs and verifies with.
pub const FUZZ_SIGNING_SEED: [u8; 32] = *b"stateless-fuzz: publisher seed!!";

/// Limits small enough that one input cannot fill the disk or take seconds.
pub fn limits() -> Limits {
    Limits { max_payload: 64 << 20, max_expanded: 16 << 20, max_entries: 4096, max_path: 4096 }
}

fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("STATELESS_FUZZ_STRICT").is_some_and(|v| v != "0"))
}

/// The payload key for `key` with an all-zero salt, obtained through the
/// crate's public API (a header sealed for the key, then authenticated).
pub fn payload_key(key: &Key) -> PayloadKey {
    payload_key_for(key, [0; 32])
}

fn payload_key_for(key: &Key, salt: [u8; 32]) -> PayloadKey {
    let header = Header {
        cipher: Cipher::Aes256GcmStream,
        key_id: key.id(),
        salt,
        generation: 0,
        created: 0,
        expires: None,
        kind: stateless_bundle::PayloadKind::TarZstd,
        payload_len: stream::encrypted_len(0),
        expanded_len: 0,
        entry_count: 0,
        scope: Scope::Any,
        payload_sha256: [0; 32],
        signature: None,
    };
    let bytes = header.to_bytes(Some(key)).expect("a plain header serialises");
    let (_, pk) = RawHeader::parse(&bytes).and_then(|r| r.authenticate(Some(key))).expect("own header authenticates");
    pk.expect("an encrypted header yields a payload key")
}

/// Encrypts `plain` as a STREAM payload.
pub fn encrypt(pk: &PayloadKey, plain: &[u8]) -> Vec<u8> {
    let mut w = StreamWriter::new(pk, Vec::new());
    w.write_all(plain).expect("writing to a Vec");
    w.finish().expect("writing to a Vec")
}

fn decrypt(pk: &PayloadKey, ct: &[u8], declared: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    StreamReader::new(pk, ct, declared).read_to_end(&mut out)?;
    Ok(out)
}

/// Wraps `payload` (compressed, not encrypted) in a bundle whose header is
/// `fields` with valid lengths, digest and tag: unencrypted when `key` is
/// `None`, else sealed for `key` with the header's salt.
pub fn seal(fields: &Header, key: Option<&Key>, payload: &[u8]) -> Vec<u8> {
    let mut h = fields.clone();
    let body = match key {
        None => {
            h.cipher = Cipher::None;
            h.key_id = KeyId::default();
            payload.to_vec()
        }
        Some(k) => {
            h.cipher = Cipher::Aes256GcmStream;
            h.key_id = k.id();
            encrypt(&payload_key_for(k, h.salt), payload)
        }
    };
    h.payload_len = body.len() as u64;
    h.payload_sha256 = Sha256::digest(&body).into();
    let mut out = h.to_bytes(key).expect("a parsed header re-serialises").to_vec();
    out.extend_from_slice(&body);
    out
}

// ---------------------------------------------------------------------------
// Scratch directories

/// A fresh `outer/dest` to extract into, with an empty sibling `outer/outside`
/// that must still be empty afterwards (nothing may escape `dest`).
struct Scratch {
    outer: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let outer = tempfile::tempdir().expect("creating a temporary directory");
        fs::create_dir(outer.path().join("dest")).expect("creating dest");
        fs::create_dir(outer.path().join("outside")).expect("creating outside");
        Scratch { outer }
    }

    fn dest(&self) -> std::path::PathBuf {
        self.outer.path().join("dest")
    }

    fn check_contained(&self) {
        let mut names: Vec<_> = fs::read_dir(self.outer.path())
            .expect("listing scratch")
            .map(|e| e.expect("listing scratch").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["dest", "outside"], "extraction wrote next to its destination");
        let outside = fs::read_dir(self.outer.path().join("outside")).expect("listing outside").count();
        assert_eq!(outside, 0, "extraction wrote outside its destination");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Read-only directories from the archive would stop removal as non-root.
        make_writable(self.outer.path());
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(dir) else { return };
    if meta.is_dir() {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Targets

/// `RawHeader::parse` and `authenticate` over arbitrary bytes. The key is
/// bytes 320..352 of the input (zero-padded), so seeds can carry the key of
/// their bundle. Whatever parses must re-serialise to the same bytes, and
/// sign and verify under a fixed publisher key.
pub fn header_parse(data: &[u8]) {
    text_parsers(data);
    let mut kb = [0u8; 32];
    if let Some(tail) = data.get(HEADER_LEN..) {
        let n = tail.len().min(32);
        kb[..n].copy_from_slice(&tail[..n]);
    }
    let key = Key::from_bytes(kb);
    let Ok(raw) = RawHeader::parse(data) else { return };
    let _ = (raw.digest_hex(), raw.key_id(), raw.cipher(), Header::signed_bytes(raw.bytes()));
    let without_key = raw.authenticate(None);
    let with_key = raw.authenticate(Some(&key));

    // Re-serialise the parsed fields (sealed for our key when encrypted).
    let mut fields = raw.unverified().clone();
    let k = (fields.cipher == Cipher::Aes256GcmStream).then_some(&key);
    if k.is_some() {
        fields.key_id = key.id();
    }
    let bytes = fields.to_bytes(k).unwrap_or_else(|e| panic!("parse accepted a header that to_bytes refuses: {e}"));
    let mut want = *raw.bytes();
    want[16..32].copy_from_slice(&fields.key_id.0);
    assert!(bytes[..288] == want[..288], "re-serialised header fields differ from the parsed bytes");
    let (again, pk) = RawHeader::parse(&bytes)
        .and_then(|r| r.authenticate(k))
        .unwrap_or_else(|e| panic!("a re-serialised header does not open: {e}"));
    assert_eq!(again, fields);
    assert_eq!(pk.is_some(), k.is_some());

    // Whatever the signature slot holds, checking it returns; and the same
    // fields signed by our publisher verify, with the tag still valid.
    let publisher = SigningKey::from_seed(&FUZZ_SIGNING_SEED);
    let _ = raw.verify_signature(&publisher.public_key());
    fields.sign(&publisher).unwrap_or_else(|e| panic!("a serialisable header does not sign: {e}"));
    let signed = fields.to_bytes(k).unwrap_or_else(|e| panic!("a signed header does not serialise: {e}"));
    let signed = RawHeader::parse(&signed).unwrap_or_else(|e| panic!("a signed header does not parse: {e}"));
    assert_eq!(signed.verify_signature(&publisher.public_key()), Ok(publisher.signer_id()));
    assert!(signed.authenticate(k).is_ok(), "a signed header does not authenticate");

    // What authenticated as received must be byte-for-byte what to_bytes makes.
    let authed = match raw.cipher() {
        Cipher::None => without_key.ok(),
        Cipher::Aes256GcmStream => with_key.ok(),
    };
    if let Some((h, _)) = authed {
        assert_eq!(&h, raw.unverified());
        assert_eq!(&bytes, raw.bytes(), "an authenticated header is not canonical");
    }
}

/// Key files, key ids and scopes from text.
fn text_parsers(data: &[u8]) {
    if let Ok(key) = Key::from_file_text(data) {
        let again = Key::from_file_text(key.to_file_text().as_bytes()).expect("a written key file parses");
        assert_eq!(again.as_bytes(), key.as_bytes());
    }
    if let Ok(sk) = SigningKey::from_file_text(data) {
        let again = SigningKey::from_file_text(sk.to_file_text().as_bytes()).expect("a written signing key parses");
        assert_eq!(again.public_key(), sk.public_key());
    }
    if let Ok(pk) = PublicKey::from_file_text(data) {
        let again = PublicKey::from_file_text(pk.to_file_text().as_bytes()).expect("a written public key parses");
        assert_eq!(again, pk);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(id) = KeyId::from_hex(s) {
            assert_eq!(id.to_string(), s.to_ascii_lowercase());
        }
        if let Ok(scope) = Scope::parse(s) {
            assert_eq!(scope.to_string(), s, "Scope::parse does not round-trip");
        }
    }
}

/// `StreamReader` over arbitrary bytes under a key made of input bytes
/// 0..32; then a round trip of the rest of the input (cycled to a length the
/// input picks, up to two chunks and a bit) with truncation and a bit flip.
pub fn stream_decrypt(data: &[u8]) {
    let Some((kb, rest)) = data.split_first_chunk::<32>() else { return };
    let pk = payload_key(&Key::from_bytes(*kb));

    // Arbitrary ciphertext, read as the header would declare it, and with a
    // declared length the input picks.
    let declared = rest.len() as u64;
    if let Ok(plain) = decrypt(&pk, rest, declared) {
        assert_eq!(stream::plaintext_len(declared), Some(plain.len() as u64));
    }
    let other = u64::from(u16::from_le_bytes([kb[3], kb[4]]));
    let _ = decrypt(&pk, rest, other);
    if let Some(p) = stream::plaintext_len(other) {
        assert_eq!(stream::encrypted_len(p), other);
    }

    // Round trip.
    let n = usize::from(u16::from_le_bytes([kb[0], kb[1]])) * 3 % (2 * CHUNK_SIZE + 64);
    let plain: Vec<u8> = if rest.is_empty() { vec![0; n] } else { rest.iter().copied().cycle().take(n).collect() };
    let ct = encrypt(&pk, &plain);
    assert_eq!(ct.len() as u64, stream::encrypted_len(n as u64));
    assert_eq!(stream::plaintext_len(ct.len() as u64), Some(n as u64));
    assert!(decrypt(&pk, &ct, ct.len() as u64).expect("own ciphertext decrypts") == plain);
    // Missing bytes: either the declared length is short (a chunk ends early
    // or the last chunk is not sealed as last) or the input is.
    assert!(decrypt(&pk, &ct[..ct.len() - 1], ct.len() as u64 - 1).is_err(), "a shortened payload decrypted");
    assert!(decrypt(&pk, &ct[..ct.len() - 1], ct.len() as u64).is_err(), "a truncated payload decrypted");
    let mut flipped = ct.clone();
    let at = usize::from(kb[2]) * 997 % flipped.len();
    flipped[at] ^= 1 << (kb[5] % 8);
    assert!(decrypt(&pk, &flipped, ct.len() as u64).is_err(), "a flipped bit went unnoticed");
}

/// The outcome of opening a bundle: the summary, or the error text.
type Outcome = Result<ExtractSummary, String>;

fn open(bundle: &[u8], key: Option<&Key>, dest: bool, threaded: bool) -> Outcome {
    let scratch = dest.then(Scratch::new);
    let dest_path = scratch.as_ref().map(Scratch::dest);
    let opts = OpenOptions { dest: dest_path.as_deref(), owners: false, threaded };
    let out = BundleReader::new(Cursor::new(bundle))
        .and_then(|r| r.authenticate(key, &limits()))
        .and_then(|a| a.extract(opts))
        .map(|s| s.extract)
        .map_err(|e| e.to_string());
    if let Some(s) = &scratch {
        s.check_contained();
    }
    out
}

/// `BundleReader` over arbitrary bytes, without a key (the unencrypted path)
/// and with [`FUZZ_KEY`], extracting into a temporary directory. Then the
/// input's payload is resealed (valid checksum, digest and tag, the input's
/// other header fields) both unencrypted and for `FUZZ_KEY`, so mutations
/// reach zstd and tar on both paths; both must give the same result.
pub fn bundle_open(data: &[u8]) {
    let key = Key::from_bytes(FUZZ_KEY);
    let _ = open(data, None, true, false);
    let _ = open(data, Some(&key), true, true);

    let Ok(raw) = RawHeader::parse(data) else { return };
    let payload = data.get(HEADER_LEN..).unwrap_or_default();
    let plain = seal(raw.unverified(), None, payload);
    let sealed = seal(raw.unverified(), Some(&key), payload);
    let a = open(&plain, None, true, true);
    let b = open(&sealed, Some(&key), true, false);
    assert_eq!(a.is_ok(), b.is_ok(), "unencrypted {a:?} but encrypted {b:?}");
    if let (Ok(x), Ok(y)) = (&a, &b) {
        assert_eq!(x, y);
    }
    if strict() {
        assert_eq!(a, b, "the same payload sealed two ways fails differently");
        let verify = open(&plain, None, false, false);
        assert_eq!(verify, a, "verify-only and extraction disagree");
    }
}

/// What the loader parses of an image bundle (payload kind 1; it never
/// parses the EROFS image itself, the kernel does when mounting):
/// `BundleReader` + `write_image` over the input as it is, without a key
/// and with [`FUZZ_KEY`]; then the input's bytes after the header, resealed
/// as an image payload (the header's declared size kept when the first
/// input byte is odd, else the true size) unencrypted and for `FUZZ_KEY`.
/// Both seals must agree, and an image written out must be exactly the
/// payload, of the declared size, with the EROFS magic.
pub fn image_open(data: &[u8]) {
    let key = Key::from_bytes(FUZZ_KEY);
    let run = |bytes: &[u8], key: Option<&Key>| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        stateless_bundle::BundleReader::new(bytes)
            .and_then(|r| r.authenticate(key, &limits()))
            .and_then(|a| a.write_image(&mut out))
            .map_err(|e| e.to_string())?;
        Ok(out)
    };
    let _ = run(data, None);
    let _ = run(data, Some(&key));

    let Ok(raw) = RawHeader::parse(data) else { return };
    let image = data.get(HEADER_LEN..).unwrap_or_default();
    let mut fields = raw.unverified().clone();
    fields.kind = stateless_bundle::PayloadKind::ErofsImage;
    fields.entry_count = 0;
    if data.first().is_some_and(|b| b % 2 == 0) {
        fields.expanded_len = image.len() as u64;
    }
    fields.expanded_len = fields.expanded_len.min(limits().max_expanded);
    let a = run(&seal(&fields, None, image), None);
    let b = run(&seal(&fields, Some(&key), image), Some(&key));
    assert_eq!(a, b, "the same image sealed two ways");
    if let Ok(out) = a {
        assert_eq!(out, image);
        assert_eq!(out.len() as u64, fields.expanded_len);
        assert_eq!(out.get(1024..1028), Some(stateless_bundle::EROFS_MAGIC.as_slice()));
    }
}

/// `stateless_bundle::extract::extract` over arbitrary tar bytes into a
/// temporary directory (and verify-only).
pub fn tar_extract(data: &[u8]) {
    let limits = limits();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let written =
        extract::extract(data, ExtractOptions { dest: Some(&dest), limits: &limits, owners: false, cancel: None });
    scratch.check_contained();
    let verify = extract::extract(data, ExtractOptions { dest: None, limits: &limits, owners: false, cancel: None });
    if strict() {
        assert_eq!(
            written.as_ref().map_err(ToString::to_string),
            verify.as_ref().map_err(ToString::to_string),
            "verify-only and extraction disagree"
        );
    }
}

/// `stateless_keys::sealed::SealedKey::parse` over arbitrary text: an
/// accepted file must serialise and parse back to the same value.
pub fn keys_sealed(data: &[u8]) {
    use stateless_keys::sealed::SealedKey;
    if let Ok(s) = SealedKey::parse(data) {
        let again = SealedKey::parse(s.to_text().as_bytes()).expect("a parsed sealed file re-parses");
        assert_eq!(again, s, "sealed file round trip");
    }
}

/// `stateless_keys::tpm::import::WrappedKey::parse` (the key wrapped for
/// one TPM, served in the clear at `v1/nodes/NODE/tpm-key`) over arbitrary
/// text: an accepted file serialises and parses back to the same value. The
/// same bytes as an SRK public area (sent by an enrolling node) must never
/// panic either.
pub fn keys_tpm_wrapped(data: &[u8]) {
    use stateless_keys::tpm::import::{SrkPublic, WrappedKey};
    if let Ok(w) = WrappedKey::parse(data) {
        let again = WrappedKey::parse(w.to_text().as_bytes()).expect("a parsed wrapped key re-parses");
        assert_eq!(again, w, "wrapped key round trip");
    }
    if let Ok(srk) = SrkPublic::parse(data) {
        assert_eq!(srk.public, data, "SRK public area kept as sent");
    }
}

/// `stateless_keys::cpio::read_archives` over arbitrary bytes: the stop
/// offset and every entry lie within the input.
pub fn keys_cpio(data: &[u8]) {
    if let Ok((entries, end)) = stateless_keys::cpio::read_archives(data) {
        assert!(end <= data.len(), "stopped past the end");
        for e in &entries {
            assert!(e.data.len() + e.name.len() <= data.len(), "an entry larger than the input");
        }
    }
}

/// The USB stick reader over an arbitrary device image: superblock probe and
/// the user-space FAT reader (`stateless_keys::fat`), from a file as the loader reads a
/// device. Errors are fine; panics and hangs are not.
pub fn keys_usb(data: &[u8]) {
    let scratch = Scratch::new();
    let img = scratch.dest().with_extension("img");
    fs::write(&img, data).expect("writing the image");
    let _ = stateless_keys::usb::probe(&img);
    let _ = stateless_keys::usb::read_fat_keys(&img);
    let _ = fs::remove_file(&img);
}

/// TPM response parsing (a TPM device or a TCP peer is not trusted to be
/// well formed): the header, handle and parameter areas, and the TPM2B
/// readers over what is left.
pub fn keys_tpm_response(data: &[u8]) {
    use stateless_keys::tpm::wire::{Parsed, Reader, parse_response};
    for handles in 0..3 {
        if let Ok(Parsed::Ok(mut r)) = parse_response(data, handles) {
            assert_eq!(r.handles.len(), handles);
            while r.params.tpm2b().is_ok() {}
        }
    }
    let mut r = Reader::new(data);
    while r.tpm2b_whole().is_ok() {}
}

/// The parsers of the TPM's answers about the rollback counters
/// (`stateless_keys::tpm::nv`) over arbitrary bytes: the first byte picks
/// the parser (NV_ReadPublic for the handle in the next four bytes, a
/// counter read, a handle list, a property list), the rest are the
/// response parameters. What parses re-encodes and parses back the same;
/// a public area parses only with the name of its own bytes.
pub fn keys_tpm_nv(data: &[u8]) {
    use stateless_keys::tpm::nv::{parse_capability, parse_counter, parse_nv_public};
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            let Some((handle, params)) = rest.split_first_chunk::<4>() else { return };
            let handle = u32::from_be_bytes(*handle);
            let Some(public) = parse_nv_public(params, handle) else { return };
            assert_eq!(public.index, handle, "a public area for another handle");
            let bytes = public.to_bytes();
            let name = public.name();
            let mut again = u16::try_from(bytes.len()).expect("a small public area").to_be_bytes().to_vec();
            again.extend_from_slice(&bytes);
            again.extend_from_slice(&u16::try_from(name.len()).expect("a name").to_be_bytes());
            again.extend_from_slice(&name);
            assert_eq!(parse_nv_public(&again, handle).as_ref(), Some(&public), "NV public round trip");
        }
        1 => {
            let Some(v) = parse_counter(rest) else { return };
            let mut again = vec![0, 8];
            again.extend_from_slice(&v.to_be_bytes());
            assert_eq!(again, rest, "a counter is exactly eight bytes");
        }
        n => {
            let capability = if n == 2 { 1 } else { 6 };
            if let Some((_, list)) = parse_capability(rest, capability, 256) {
                assert!(list.len() <= 256, "more entries than allowed");
            }
        }
    }
}

/// `stateless_keys::tpm::parse_pcr_read` (the values the loader compares
/// with a sealed key's PCRs, from the TPM's answer) over arbitrary bytes:
/// the first byte picks the bank, the rest are the response parameters.
/// What parses holds one digest of the bank's length per PCR; PCRs in
/// ascending order re-encode (one selection) and parse back the same.
pub fn keys_tpm_pcr_read(data: &[u8]) {
    use stateless_keys::sealed::Bank;
    use stateless_keys::tpm::parse_pcr_read;
    let Some((&b, params)) = data.split_first() else { return };
    let bank = [Bank::Sha1, Bank::Sha256, Bank::Sha384][usize::from(b % 3)];
    let Some(values) = parse_pcr_read(params, bank) else { return };
    assert!(values.iter().all(|(_, v)| v.len() == bank.digest_len()), "a digest of the wrong length");
    if !values.windows(2).all(|w| w[0].0 < w[1].0) {
        return;
    }
    let mut bits = vec![0u8; values.last().map_or(0, |(p, _)| usize::from(*p / 8) + 1)];
    for (p, _) in &values {
        bits[usize::from(p / 8)] |= 1 << (p % 8);
    }
    let mut again = vec![0, 0, 0, 9, 0, 0, 0, 1];
    again.extend_from_slice(&bank.alg().to_be_bytes());
    again.push(u8::try_from(bits.len()).expect("PCR numbers fit a u8"));
    again.extend_from_slice(&bits);
    again.extend_from_slice(&u32::try_from(values.len()).expect("few PCRs").to_be_bytes());
    for (_, v) in &values {
        again.extend_from_slice(&u16::try_from(v.len()).expect("a digest").to_be_bytes());
        again.extend_from_slice(v);
    }
    assert_eq!(parse_pcr_read(&again, bank).as_ref(), Some(&values), "PCR read round trip");
}

/// The SRK public area the TPM answers `TPM2_CreatePrimary` with
/// (`stateless_keys::tpm::parse_srk_public`; the loader sends its salt to
/// that point): what parses is our template with a P-256-sized point, its
/// name is `000b` and the SHA-256 of the area, and it re-encodes to the
/// same bytes. The salt is then made for the point (refused, not a panic,
/// when the point is not on the curve).
pub fn keys_tpm_srk_public(data: &[u8]) {
    use sha2::{Digest, Sha256};
    use stateless_keys::tpm::{parse_srk_public, salt, srk_template};
    let Some((name, x, y)) = parse_srk_public(data) else { return };
    let size = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let public = &data[2..2 + size];
    assert_eq!(name[..2], [0, 0x0b]);
    assert_eq!(name[2..], Sha256::digest(public)[..], "the name is not the area's hash");
    let t = srk_template();
    let mut again = t[..t.len() - 4].to_vec();
    for c in [&x, &y] {
        again.extend_from_slice(&u16::try_from(c.len()).expect("a coordinate").to_be_bytes());
        again.extend_from_slice(c);
    }
    assert_eq!(again, public, "SRK public round trip");
    let mut counter = 0u8;
    let mut random = |out: &mut [u8]| {
        counter = counter.wrapping_add(1);
        out.fill(counter);
        Ok(())
    };
    if let Ok(s) = salt::make_salt(&x, &y, &mut random) {
        assert_eq!((s.encrypted.len(), s.salt.len()), (68, 32));
    }
}

/// The response HMAC check of a salted session
/// (`stateless_keys::tpm::check_response_auth`) over a whole response as
/// it comes off the wire: the first 32 bytes are the session key, the next
/// 16 the caller's nonce, two bytes pick the command, the rest is the
/// response. A response it accepts must be refused again once any byte of
/// its parameters or authorization area is changed.
pub fn keys_tpm_hmac(data: &[u8]) {
    use stateless_keys::tpm::check_response_auth;
    use stateless_keys::tpm::wire::{Parsed, parse_response};
    if data.len() < 50 {
        return;
    }
    let (key, rest) = data.split_at(32);
    let (nonce, rest) = rest.split_at(16);
    let (pick, response) = rest.split_at(2);
    let cc = [0x15E, 0x153, 0x13C][usize::from(pick[0] % 3)];
    let Ok(Parsed::Ok(r)) = parse_response(response, usize::from(pick[1] % 2)) else { return };
    let (params, auth) = (r.params.rest().to_vec(), r.auth.rest().to_vec());
    let Ok(nonce_tpm) = check_response_auth(key, cc, &params, &auth, nonce) else { return };
    assert!(auth.len() >= 2 + nonce_tpm.len() + 1 + 2 + 32, "accepted without a full HMAC");
    for i in 0..params.len().min(64) {
        let mut p = params.clone();
        p[i] ^= 1;
        assert!(check_response_auth(key, cc, &p, &auth, nonce).is_err(), "parameter byte {i} not covered");
    }
    for i in 0..auth.len().min(128) {
        let mut a = auth.clone();
        a[i] ^= 1;
        assert!(check_response_auth(key, cc, &params, &a, nonce).is_err(), "auth byte {i} not covered");
    }
}

/// A response accepted by [`keys_tpm_hmac`]: a TPM2_Unseal answer (4
/// bytes of outData) with the HMAC the TPM would compute, for the seeds.
pub fn keys_tpm_hmac_seed() -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let (key, nonce, nonce_tpm) = ([7u8; 32], [9u8; 16], [0x5a; 16]);
    let params = [0u8, 4, 1, 2, 3, 4];
    let rp: [u8; 32] = Sha256::new()
        .chain_update(0u32.to_be_bytes())
        .chain_update(0x15Eu32.to_be_bytes())
        .chain_update(params)
        .finalize()
        .into();
    let hmac = stateless_keys::tpm::salt::hmac(&key, &[&rp, &nonce_tpm, &nonce, &[0x40]]).expect("HMAC");
    let mut auth = vec![0, 16];
    auth.extend_from_slice(&nonce_tpm);
    auth.push(0x40);
    auth.extend_from_slice(&[0, 32]);
    auth.extend_from_slice(&hmac);
    let mut resp = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
    resp.extend_from_slice(&u32::try_from(params.len()).expect("small").to_be_bytes());
    resp.extend_from_slice(&params);
    resp.extend_from_slice(&auth);
    let len = u32::try_from(resp.len()).expect("small").to_be_bytes();
    resp[2..6].copy_from_slice(&len);
    let mut out = key.to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&resp);
    out
}

/// Signed PCR policy and policy public key files
/// (`stateless_keys::tpm::policy`) over arbitrary text: what parses
/// serialises and parses back the same. The same text as a policy list
/// (what a server publishes): each entry that parses round-trips, and the
/// entries that parse, written one after another, read back as a list of
/// exactly those.
pub fn keys_tpm_signed_policy(data: &[u8]) {
    use stateless_keys::tpm::policy::{MAX_POLICY_LIST_LEN, PolicyPublicKey, SignedPolicy, parse_signed_policy_list};
    if let Ok(entries) = parse_signed_policy_list(data) {
        let good: Vec<SignedPolicy> = entries.into_iter().filter_map(Result::ok).collect();
        let text: String = good.iter().map(SignedPolicy::to_text).collect();
        // Written out with its comments a list may outgrow the limit its
        // compact input fitted.
        if text.len() <= MAX_POLICY_LIST_LEN {
            let back = parse_signed_policy_list(text.as_bytes()).expect("a list of parsed policies re-parses");
            assert_eq!(back, good.into_iter().map(Ok).collect::<Vec<_>>(), "policy list round trip");
        }
    }
    if let Ok(p) = SignedPolicy::parse(data) {
        let again = SignedPolicy::parse(p.to_text().as_bytes()).expect("a parsed signed policy re-parses");
        assert_eq!(again, p, "signed policy round trip");
    }
    if let Ok(k) = PolicyPublicKey::parse(data) {
        let again = PolicyPublicKey::parse(k.to_text().as_bytes()).expect("a parsed policy key re-parses");
        assert_eq!(again, k, "policy public key round trip");
    }
}

/// The server's HTTP request-head parser (`stateless_server::http`), fed
/// as the server feeds it: the bytes a client sent so far. Beyond not
/// panicking: a head it accepts has one unambiguous framing (at most one
/// `Content-Length`, no `Transfer-Encoding`, no bare CR or LF), and every
/// shorter prefix of an accepted head only asks for more bytes, so the
/// answer cannot depend on how the client split its writes. The `Range`
/// and entity-tag helpers run over every header value.
pub fn http_head(data: &[u8]) {
    use stateless_server::http::{self, RangeAnswer};
    let Ok(Some((head, n))) = http::parse_head(data) else { return };
    assert!(n <= data.len() && n <= http::MAX_HEAD);
    let bytes = &data[..n];
    assert!(bytes.ends_with(b"\r\n\r\n"));
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR accepted"),
            b'\n' => assert_eq!(i.checked_sub(1).and_then(|p| bytes.get(p)), Some(&b'\r'), "bare LF accepted"),
            _ => {}
        }
    }
    assert!(head.path.starts_with('/'));
    assert!(head.headers.iter().filter(|(k, _)| k == "content-length").count() <= 1);
    assert_eq!(head.has_content_length, head.header("content-length").is_some());
    assert!(head.header("transfer-encoding").is_none());
    // Nor a framing field spelt with `_` (a gateway's `-`).
    assert!(head.header("content_length").is_none() && head.header("transfer_encoding").is_none());
    for (k, _) in &head.headers {
        assert!(!k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()), "{k:?}");
    }
    assert_eq!(http::parse_head(bytes), Ok(Some((head.clone(), n))));
    for cut in [n - 1, n / 2, 1] {
        assert_eq!(http::parse_head(&bytes[..cut]), Ok(None), "prefix of {cut} bytes");
    }
    // A body length the input picks, up to very large.
    let len = (data.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for (_, v) in &head.headers {
        for l in [0, 1, 1000, len] {
            if let RangeAnswer::Partial { start, end } = http::parse_range(v, l) {
                assert!(start <= end && end < l, "{v:?} of {l}: {start}-{end}");
            }
        }
        let _ = http::none_match(v, "\"abc\"");
        let _ = http::if_range_matches(v, "\"abc\"");
    }
    let _ = head.keep_alive();
}

/// The targets by name, for `replay`.
/// The bodies the server reads from nodes before it keeps anything: a TPM
/// enrolment (`POST /v1/nodes/{node}/enrol`) and a boot report (`POST
/// /v1/nodes/{node}/report`). Whatever is accepted is within the bounds
/// the server documents.
pub fn server_bodies(data: &[u8]) {
    use stateless_server::enrol::{EnrolRequest, MAX_EK_CERT, MAX_EK_PUBLIC, MAX_SRK_PUBLIC};
    use stateless_server::reports::UnverifiedReport;
    let lower_hex = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() % 2 == 0
            && s.len() / 2 <= max
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if let Ok(r) = EnrolRequest::parse(data) {
        assert!(lower_hex(&r.ek_public, MAX_EK_PUBLIC), "ek_public");
        assert!(lower_hex(&r.srk_public, MAX_SRK_PUBLIC), "srk_public");
        assert!(r.ek_cert.as_deref().is_none_or(|c| lower_hex(c, MAX_EK_CERT)), "ek_cert");
        assert!(r.pcrs.len() <= 24);
        for (i, v) in &r.pcrs {
            assert!(i.parse::<u8>().is_ok_and(|i| i < 24), "pcr index {i:?}");
            assert!(v.len() == 64 && lower_hex(v, 32), "pcr value");
        }
    }
    // A report naming another node is refused; one naming none, or this
    // one, is kept under the path's node.
    if (UnverifiedReport { node: "node42", body: data }).check().is_ok() {
        let v: serde_json::Value = serde_json::from_slice(data).expect("accepted but not JSON");
        let named = v.get("node").and_then(|n| n.as_str());
        assert!(named.is_none_or(|n| n == "node42"), "report for {named:?} kept under node42");
    }
}

pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("header_parse", header_parse),
    ("stream_decrypt", stream_decrypt),
    ("bundle_open", bundle_open),
    ("image_open", image_open),
    ("tar_extract", tar_extract),
    ("keys_sealed", keys_sealed),
    ("keys_tpm_wrapped", keys_tpm_wrapped),
    ("keys_cpio", keys_cpio),
    ("keys_usb", keys_usb),
    ("keys_tpm_response", keys_tpm_response),
    ("keys_pubkey_arg", keys_pubkey_arg),
    ("dns_answer", loader::dns_answer),
    ("cmdline_split", loader::cmdline_split),
    ("keys_tpm_pcr_read", keys_tpm_pcr_read),
    ("keys_tpm_nv", keys_tpm_nv),
    ("keys_tpm_srk_public", keys_tpm_srk_public),
    ("keys_tpm_hmac", keys_tpm_hmac),
    ("keys_tpm_signed_policy", keys_tpm_signed_policy),
    ("http_head", http_head),
    ("server_bodies", server_bodies),
    ("model_toml", model_toml),
    ("import_ignition", import_ignition),
];
