//! Publisher signatures end to end: `pack_signed`, then opening with and
//! without `require_signature`, and every way a signed bundle can be wrong.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use sha2::Digest;
use stateless_bundle::header::HEADER_LEN;
use stateless_bundle::stream::{CHUNK_SIZE, StreamReader, StreamWriter};
use stateless_bundle::{
    BundleReader, Header, Key, Limits, OpenError, OpenOptions, OpenSummary, PackOptions, PublicKey, RawHeader, Scope,
    SigningKey, pack, pack_signed,
};

#[path = "../../tests/support/noise.rs"]
mod noise;

fn opts(key: Option<&Key>) -> PackOptions<'_> {
    PackOptions {
        key,
        generation: 7,
        created: 1_700_000_000,
        expires: None,
        scope: Scope::Any,
        level: 3,
        threads: 0,
        deletions: vec![],
        limits: Limits::default(),
    }
}

fn tree(len: usize) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("etc")).unwrap();
    fs::write(d.path().join("etc/motd"), b"hello\n").unwrap();
    fs::write(d.path().join("etc/blob"), noise::incompressible(len, len as u64)).unwrap();
    d
}

fn signed(root: &Path, key: Option<&Key>, sk: &SigningKey) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let summary = pack_signed(root, &mut out, &opts(key), sk).unwrap();
    let slot = summary.header.signature.as_ref().unwrap();
    assert_eq!(slot.signer, sk.signer_id().0);
    out.into_inner()
}

fn unsigned(root: &Path, key: Option<&Key>) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    pack(root, &mut out, &opts(key)).unwrap();
    out.into_inner()
}

/// Opens `bytes` in every mode (threaded and inline extraction, verify
/// only); all must agree. Returns the summary or the error's text.
fn open(bytes: &[u8], key: Option<&Key>, publisher: Option<&PublicKey>) -> Result<OpenSummary, String> {
    let mut results = Vec::new();
    for (extract, threaded) in [(true, true), (true, false), (false, false)] {
        let dest = tempfile::tempdir().unwrap();
        let opts = OpenOptions { dest: extract.then_some(dest.path()), owners: false, threaded };
        let r = BundleReader::new(bytes)
            .and_then(|r| r.authenticate(key, &Limits::default()))
            .and_then(|a| match publisher {
                Some(p) => a.require_signature(p),
                None => Ok(a),
            })
            .and_then(|a| a.extract(opts))
            .map_err(|e| stateless_bundle::error_chain(&e));
        if r.is_ok() && extract {
            assert_eq!(fs::read(dest.path().join("etc/motd")).unwrap(), b"hello\n");
        }
        results.push(r);
    }
    let texts: Vec<_> = results.iter().map(|r| r.as_ref().map(|s| s.digest.clone())).collect();
    assert!(texts.windows(2).all(|w| w[0] == w[1]), "modes disagree: {texts:?}");
    results.remove(0)
}

#[test]
fn signed_bundles_open_with_and_without_the_public_key() {
    let sk = SigningKey::generate().unwrap();
    let pk = sk.public_key();
    let key = Key::generate().unwrap();
    for len in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 3] {
        let src = tree(len);
        for k in [Some(&key), None] {
            let b = signed(src.path(), k, &sk);
            let s = open(&b, k, Some(&pk)).unwrap_or_else(|e| panic!("len {len}: {e}"));
            assert_eq!(s.header.signature.unwrap().signer, sk.signer_id().0);
            // Without a public key the signature is not checked, and the
            // bundle opens as any other.
            open(&b, k, None).unwrap();
            let raw = RawHeader::parse(&b).unwrap();
            assert_eq!(raw.signer(), Some(sk.signer_id()));
            assert_eq!(raw.verify_signature(&pk), Ok(sk.signer_id()));
        }
    }
}

#[test]
fn the_header_tag_covers_the_signature() {
    let sk = SigningKey::generate().unwrap();
    let key = Key::generate().unwrap();
    let src = tree(100);
    let mut b = signed(src.path(), Some(&key), &sk);
    b[216 + 10] ^= 1;
    let e = open(&b, Some(&key), None).unwrap_err();
    assert_eq!(e, "header authentication failed: the header was modified or is corrupt");
    let mut u = signed(src.path(), None, &sk);
    u[216 + 10] ^= 1;
    assert_eq!(open(&u, None, None).unwrap_err(), "header checksum mismatch: the header is corrupt");
}

#[test]
fn an_unsigned_bundle_is_refused_when_a_signature_is_required() {
    let pk = SigningKey::generate().unwrap().public_key();
    let key = Key::generate().unwrap();
    let src = tree(100);
    for k in [Some(&key), None] {
        let e = open(&unsigned(src.path(), k), k, Some(&pk)).unwrap_err();
        assert_eq!(e, "bundle is not signed; a publisher signature is required");
    }
}

#[test]
fn another_publisher_is_named() {
    let sk = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let key = Key::generate().unwrap();
    let b = signed(tree(100).path(), Some(&key), &sk);
    let e = open(&b, Some(&key), Some(&other.public_key())).unwrap_err();
    assert_eq!(
        e,
        format!("bundle is signed by publisher {}, expected {}", sk.signer_id().short(), other.signer_id().short())
    );
}

#[test]
fn the_signature_is_checked_before_the_payload_is_read() {
    // Only the header: reading any payload would report truncation.
    let sk = SigningKey::generate().unwrap();
    let b = signed(tree(100).path(), None, &sk);
    let header_only = &b[..HEADER_LEN];
    let other = SigningKey::generate().unwrap().public_key();
    let e = BundleReader::new(header_only)
        .and_then(|r| r.authenticate(None, &Limits::default()))
        .and_then(|a| a.require_signature(&other))
        .unwrap_err();
    assert!(matches!(e, OpenError::Signature(_)), "{e}");
    let e = open(header_only, None, Some(&sk.public_key())).unwrap_err();
    assert!(e.starts_with("truncated"), "{e}");
}

/// The header of `b` with `f` applied to its fields, re-serialised with a
/// valid tag (for the encrypted bundle, with the site key: what someone who
/// holds the site key, but not the signing key, can do).
fn reheadered(b: &[u8], key: Option<&Key>, f: impl FnOnce(&mut Header)) -> Vec<u8> {
    let (mut h, _) = RawHeader::parse(b).unwrap().authenticate(key).unwrap();
    f(&mut h);
    let mut out = h.to_bytes(key).unwrap().to_vec();
    out.extend_from_slice(&b[HEADER_LEN..]);
    out
}

#[test]
fn a_field_changed_after_signing_breaks_the_signature() {
    let sk = SigningKey::generate().unwrap();
    let pk = sk.public_key();
    let key = Key::generate().unwrap();
    let src = tree(100);
    for k in [Some(&key), None] {
        let b = signed(src.path(), k, &sk);
        let changes: [fn(&mut Header); 4] = [
            |h| h.generation += 1,
            |h| h.expires = Some(4_000_000_000),
            |h| h.scope = Scope::Group("web".into()),
            |h| h.payload_sha256[0] ^= 1,
        ];
        for change in changes {
            let t = reheadered(&b, k, change);
            let e = open(&t, k, Some(&pk)).unwrap_err();
            assert_eq!(e, "publisher signature does not verify: the header was modified or is corrupt");
        }
        // Without the public key the signature is ignored: a newer
        // generation, re-tagged, opens.
        open(&reheadered(&b, k, |h| h.generation += 1), k, None).unwrap();
    }
}

#[test]
fn a_signature_by_another_key_under_the_right_signer_id_does_not_verify() {
    let sk = SigningKey::generate().unwrap();
    let forger = SigningKey::generate().unwrap();
    let key = Key::generate().unwrap();
    let b = unsigned(tree(100).path(), Some(&key));
    let forged = reheadered(&b, Some(&key), |h| {
        h.sign(&forger).unwrap();
        h.signature.as_mut().unwrap().signer = sk.signer_id().0;
    });
    let e = open(&forged, Some(&key), Some(&sk.public_key())).unwrap_err();
    assert_eq!(e, "publisher signature does not verify: the header was modified or is corrupt");
}

#[test]
fn a_payload_swapped_by_a_site_key_holder_is_refused() {
    // The header (and so the signature and the tag) stays as signed; the
    // payload is decrypted, changed and encrypted again with the payload key
    // that anyone with the site key derives. STREAM accepts it; only the
    // signed digest can tell.
    let sk = SigningKey::generate().unwrap();
    let key = Key::generate().unwrap();
    let b = signed(tree(3 * CHUNK_SIZE).path(), Some(&key), &sk);
    let (h, pk) = RawHeader::parse(&b).unwrap().authenticate(Some(&key)).unwrap();
    let pk = pk.unwrap();
    let mut plain = Vec::new();
    StreamReader::new(&pk, &b[HEADER_LEN..], h.payload_len).read_to_end(&mut plain).unwrap();
    let n = plain.len();
    plain[n / 2] ^= 0x01;
    let mut w = StreamWriter::new(&pk, Vec::new());
    w.write_all(&plain).unwrap();
    let mut swapped = b[..HEADER_LEN].to_vec();
    swapped.extend_from_slice(&w.finish().unwrap());
    assert_eq!(swapped.len(), b.len());

    let e = open(&swapped, Some(&key), Some(&sk.public_key())).unwrap_err();
    assert_eq!(
        e,
        format!("payload digest mismatch: the payload is not the one publisher {} signed", sk.signer_id().short())
    );
    // A signed bundle's digest is checked even without the public key.
    assert_eq!(open(&swapped, Some(&key), None).unwrap_err(), "corrupt bundle: payload digest mismatch");

    // Updating the digest to match the new payload breaks the signature.
    let digest: [u8; 32] = sha2::Sha256::digest(&swapped[HEADER_LEN..]).into();
    let redigested = reheadered(&swapped, Some(&key), |h| h.payload_sha256 = digest);
    let e = open(&redigested, Some(&key), Some(&sk.public_key())).unwrap_err();
    assert_eq!(e, "publisher signature does not verify: the header was modified or is corrupt");
}

#[test]
fn a_corrupt_unencrypted_signed_payload_names_the_publisher() {
    let sk = SigningKey::generate().unwrap();
    let mut u = signed(tree(CHUNK_SIZE).path(), None, &sk);
    let n = u.len();
    u[n - 40] ^= 0x10;
    let e = open(&u, None, Some(&sk.public_key())).unwrap_err();
    assert!(e.starts_with("payload digest mismatch: the payload is not the one publisher"), "{e}");
    assert_eq!(open(&u, None, None).unwrap_err(), "corrupt bundle: payload digest mismatch");
}
