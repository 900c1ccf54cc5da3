//! Pack a tree, open it again, compare; and every way a bundle can be bad.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::Digest;
use stateless_bundle::header::HEADER_LEN;
use stateless_bundle::stream::{CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE};
use stateless_bundle::{
    BundleReader, Key, Limits, OpenError, OpenOptions, PackOptions, RawHeader, RelPath, Scope, pack, pack_frames,
};

#[path = "../../tests/support/noise.rs"]
mod noise;

fn opts<'a>(key: Option<&'a Key>) -> PackOptions<'a> {
    PackOptions {
        key,
        generation: 7,
        created: 1_700_000_000,
        expires: None,
        scope: Scope::Node("node42".into()),
        level: 3,
        threads: 0,
        deletions: vec![],
        limits: Limits::default(),
    }
}

fn pack_tree(root: &Path, o: &PackOptions<'_>) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    pack(root, &mut out, o).unwrap();
    out.into_inner()
}

fn open_bytes(
    bytes: &[u8],
    key: Option<&Key>,
    limits: &Limits,
    dest: Option<&Path>,
    threaded: bool,
) -> Result<stateless_bundle::OpenSummary, OpenError> {
    BundleReader::new(bytes)?.authenticate(key, limits)?.extract(OpenOptions { dest, owners: false, threaded })
}

/// path -> (kind, mode, content or link target), for comparing trees.
fn listing(root: &Path) -> BTreeMap<PathBuf, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            let entry = if m.file_type().is_symlink() {
                ('l', 0, fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes())
            } else if m.is_dir() {
                stack.push(p.clone());
                ('d', m.mode() & 0o7777, vec![])
            } else {
                ('f', m.mode() & 0o7777, fs::read(&p).unwrap())
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn round_trip(src: &Path, key: Option<&Key>) {
    let bundle = pack_tree(src, &opts(key));
    for threaded in [false, true] {
        let dest = tempfile::tempdir().unwrap();
        let out = dest.path().join("out");
        fs::create_dir(&out).unwrap();
        let s = open_bytes(&bundle, key, &Limits::default(), Some(&out), threaded).unwrap();
        assert_eq!(s.header.generation, 7);
        assert_eq!(listing(src), listing(&out), "threaded={threaded}");
    }
}

#[test]
fn size_classes_round_trip() {
    let key = Key::generate().unwrap();
    // File sizes around the chunk size, and incompressible data so that the
    // payload itself crosses chunk boundaries.
    for len in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 5 * CHUNK_SIZE + 3] {
        let src = tempfile::tempdir().unwrap();
        write(&src.path().join("data/blob"), &noise::incompressible(len, len as u64));
        round_trip(src.path(), Some(&key));
        round_trip(src.path(), None);
    }
}

#[test]
fn empty_tree_round_trip() {
    let key = Key::generate().unwrap();
    let src = tempfile::tempdir().unwrap();
    round_trip(src.path(), Some(&key));
    round_trip(src.path(), None);
}

#[test]
fn deep_tree_many_files_links_and_modes() {
    let key = Key::generate().unwrap();
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    let mut deep = root.join("deep");
    for i in 0..120 {
        deep.push(format!("d{i}"));
    }
    write(&deep.join("leaf"), b"bottom");
    for i in 0..3000 {
        write(&root.join(format!("etc/conf.d/{:02}/f{i}.conf", i % 50)), format!("key{i}=value{i}\n").as_bytes());
    }
    write(&root.join("etc/secret"), b"s");
    fs::set_permissions(root.join("etc/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    write(&root.join("usr/bin/tool"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir_all(root.join("srv/ro")).unwrap();
    write(&root.join("srv/ro/x"), b"x");
    fs::set_permissions(root.join("srv/ro"), fs::Permissions::from_mode(0o555)).unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", root.join("etc/localtime")).unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", root.join("etc/tool")).unwrap();
    fs::hard_link(root.join("etc/secret"), root.join("etc/secret.hard")).unwrap();
    // A long name needs the GNU long-name extension.
    write(&root.join("a".repeat(200)).join("b".repeat(200)), b"long");
    round_trip(root, Some(&key));
    fs::set_permissions(root.join("srv/ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn sparse_ish_large_file() {
    let key = Key::generate().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 24 << 20];
    for i in (0..data.len()).step_by(1 << 20) {
        data[i..i + 100].copy_from_slice(&noise::incompressible(100, i as u64));
    }
    write(&src.path().join("var/lib/image"), &data);
    let bundle = pack_tree(src.path(), &opts(Some(&key)));
    assert!(bundle.len() < 1 << 20, "zeros should compress: {}", bundle.len());
    round_trip(src.path(), Some(&key));
}

#[test]
fn deletions_are_whiteouts() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("etc/motd"), b"hi");
    let mut o = opts(None);
    o.deletions = vec![RelPath::parse(b"etc/issue", 4096).unwrap(), RelPath::parse(b"opt", 4096).unwrap()];
    let bundle = pack_tree(src.path(), &o);
    let dest = tempfile::tempdir().unwrap();
    let s = open_bytes(&bundle, None, &Limits::default(), Some(dest.path()), true).unwrap();
    assert_eq!(s.extract.whiteouts, 2);
    assert!(dest.path().join("etc/.wh.issue").exists());
    assert!(dest.path().join(".wh.opt").exists());
    o.deletions = vec![RelPath::parse(b"etc/motd", 4096).unwrap()];
    let err = pack(src.path(), Cursor::new(Vec::new()), &o).unwrap_err();
    assert!(err.to_string().contains("etc/.wh.motd: the tree both deletes etc/motd and contains it"), "{err}");
}

fn sample(key: Option<&Key>) -> Vec<u8> {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("etc/motd"), b"hello");
    write(&src.path().join("usr/lib/blob"), &noise::incompressible(3 * CHUNK_SIZE, 9));
    pack_tree(src.path(), &opts(key))
}

fn err_of(bytes: &[u8], key: Option<&Key>, limits: &Limits) -> String {
    let mut errs = vec![];
    for threaded in [false, true] {
        let dest = tempfile::tempdir().unwrap();
        let e = open_bytes(bytes, key, limits, Some(dest.path()), threaded).unwrap_err();
        errs.push(e.to_string());
    }
    assert_eq!(errs[0], errs[1], "threaded and inline disagree");
    errs.remove(0)
}

#[test]
fn wrong_key_names_both_ids() {
    let key = Key::generate().unwrap();
    let other = Key::generate().unwrap();
    let e = err_of(&sample(Some(&key)), Some(&other), &Limits::default());
    assert_eq!(e, format!("bundle is sealed for key {}, this key is {}", key.id().short(), other.id().short()));
    let e = err_of(&sample(Some(&key)), None, &Limits::default());
    assert!(e.contains("no key was given"), "{e}");
}

#[test]
fn tampered_payload_names_the_chunk() {
    let key = Key::generate().unwrap();
    let mut b = sample(Some(&key));
    b[320 + 2 * ENCRYPTED_CHUNK_SIZE + 10] ^= 0x40;
    let e = err_of(&b, Some(&key), &Limits::default());
    assert_eq!(e, "authentication failed in chunk 2: the payload was modified or is corrupt");
}

#[test]
fn tampered_header_fails_authentication() {
    let key = Key::generate().unwrap();
    let mut b = sample(Some(&key));
    b[64 + 7] ^= 1; // generation
    assert!(err_of(&b, Some(&key), &Limits::default()).contains("header authentication failed"));
    let mut u = sample(None);
    u[64 + 7] ^= 1;
    assert!(err_of(&u, None, &Limits::default()).contains("header checksum mismatch"));
}

#[test]
fn truncation_anywhere_is_reported_as_truncation() {
    let key = Key::generate().unwrap();
    let b = sample(Some(&key));
    for cut in [0, 7, 100, 319] {
        assert!(err_of(&b[..cut], Some(&key), &Limits::default()).starts_with("truncated"), "cut {cut}");
    }
    for cut in [320, 321, 320 + ENCRYPTED_CHUNK_SIZE, 320 + ENCRYPTED_CHUNK_SIZE + 5, b.len() - 1] {
        let e = err_of(&b[..cut], Some(&key), &Limits::default());
        assert!(e.starts_with("truncated"), "cut {cut}: {e}");
    }
    let u = sample(None);
    let e = err_of(&u[..u.len() - 100], None, &Limits::default());
    assert!(e.starts_with("truncated: payload is"), "{e}");
}

#[test]
fn trailing_garbage_is_refused() {
    let key = Key::generate().unwrap();
    for b in [sample(Some(&key)), sample(None)] {
        let mut g = b.clone();
        g.extend_from_slice(b"junk");
        let k = (b[10] == 1).then_some(&key);
        assert_eq!(err_of(&g, k, &Limits::default()), "trailing data after the end of the bundle");
    }
}

#[test]
fn corrupt_unencrypted_payload_is_a_digest_mismatch() {
    let mut u = sample(None);
    let n = u.len();
    u[n / 2] ^= 0x10;
    assert_eq!(err_of(&u, None, &Limits::default()), "corrupt bundle: payload digest mismatch");
}

#[test]
fn unknown_version_and_bad_magic() {
    let mut b = sample(None);
    b[9] = 2;
    assert!(err_of(&b, None, &Limits::default()).contains("unknown bundle format version 2"));
    let mut b = sample(None);
    b[0] = b'X';
    assert_eq!(err_of(&b, None, &Limits::default()), "not a stateless bundle (bad magic)");
}

#[test]
fn limits_refuse_before_reading_the_payload() {
    let key = Key::generate().unwrap();
    let b = sample(Some(&key));
    let small = Limits { max_payload: 1000, ..Limits::default() };
    assert!(err_of(&b, Some(&key), &small).starts_with("bundle payload of"), "payload");
    let small = Limits { max_expanded: 1000, ..Limits::default() };
    assert!(err_of(&b, Some(&key), &small).starts_with("bundle expanded size of"));
    let small = Limits { max_entries: 2, ..Limits::default() };
    assert!(err_of(&b, Some(&key), &small).starts_with("bundle entry count of"));
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("x"), b"x");
    let mut o = opts(None);
    o.limits.max_entries = 0;
    assert!(pack(src.path(), Cursor::new(Vec::new()), &o).unwrap_err().to_string().contains("limit"));
}

#[test]
fn pack_refuses_escaping_links_and_special_files() {
    let src = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("../../etc/shadow", src.path().join("evil")).unwrap();
    let err = pack(src.path(), Cursor::new(Vec::new()), &opts(None)).unwrap_err();
    assert_eq!(err.to_string(), "symlink evil -> ../../etc/shadow escapes the root");
    let src = tempfile::tempdir().unwrap();
    let fifo = src.path().join("pipe");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let err = pack(src.path(), Cursor::new(Vec::new()), &opts(None)).unwrap_err();
    assert_eq!(err.to_string(), "pipe: fifo cannot be put in a bundle");
}

#[test]
fn pack_refuses_whiteout_names_on_directories_and_links() {
    // A directory or a symlink named `.wh.*` (or `.wh..wh..opq`) would make a
    // bundle every reader refuses; pack says so instead.
    for (name, make) in [("etc/.wh.sub", 0), ("etc/.wh..wh..opq", 0), ("etc/.wh.link", 1)] {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("etc")).unwrap();
        let p = src.path().join(name);
        if make == 0 {
            fs::create_dir(&p).unwrap();
            write(&p.join("x"), b"x");
        } else {
            std::os::unix::fs::symlink("motd", &p).unwrap();
        }
        let err = pack(src.path(), Cursor::new(Vec::new()), &opts(None)).unwrap_err();
        assert_eq!(err.to_string(), format!("{name}: malformed whiteout name"));
    }
}

#[test]
fn pack_refuses_more_name_bytes_than_readers_accept() {
    // 33,000 names of 255 bytes: 8,415,000 bytes, over the 8 MiB readers
    // accept (stateless_bundle::limits::MAX_NAME_BYTES).
    let src = tempfile::tempdir().unwrap();
    for i in 0..33_000 {
        fs::File::create(src.path().join(format!("{i:0>255}"))).unwrap();
    }
    let err = pack(src.path(), Cursor::new(Vec::new()), &opts(None)).unwrap_err();
    assert!(err.to_string().contains("more than 8388608 bytes of entry names in all (limit)"), "{err}");
}

#[test]
fn verify_only_writes_nothing_and_agrees() {
    let key = Key::generate().unwrap();
    let b = sample(Some(&key));
    let s = open_bytes(&b, Some(&key), &Limits::default(), None, true).unwrap();
    assert_eq!(s.extract.files, 2);
    assert_eq!(s.header.scope, Scope::Node("node42".into()));
    let mut w = Vec::new();
    w.write_all(&b).unwrap();
    assert_eq!(BundleReader::new(&w[..]).unwrap().raw_header().digest_hex(), s.digest);
}

// -- zstd frames -------------------------------------------------------------

/// A tree of about 1.5 MiB, half compressible, half not.
fn multi_frame_tree() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    for i in 0..12u64 {
        let text: Vec<u8> = format!("line {i} of a config file\n").bytes().cycle().take(60_000 + i as usize).collect();
        write(&src.path().join(format!("etc/conf.d/{i}.conf")), &text);
        write(&src.path().join(format!("usr/lib/blob{i}")), &noise::incompressible(65_000 + 17 * i as usize, i));
    }
    src
}

fn pack_framed(root: &Path, key: Option<&Key>, frame_size: usize, threads: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    pack_frames(root, &mut out, &PackOptions { threads, ..opts(key) }, frame_size).unwrap();
    out.into_inner()
}

/// The content sizes the payload's frames declare (unencrypted bundles).
fn frame_sizes(bundle: &[u8]) -> Vec<Option<u64>> {
    let mut p = &bundle[HEADER_LEN..];
    let mut sizes = vec![];
    while !p.is_empty() {
        sizes.push(zstd::zstd_safe::get_frame_content_size(p).unwrap());
        p = &p[zstd::zstd_safe::find_frame_compressed_size(p).unwrap()..];
    }
    sizes
}

/// Every mode gives the source tree and the same summary.
fn open_all_ways(bundle: &[u8], key: Option<&Key>, src: &Path) {
    let mut summaries = vec![];
    for threaded in [false, true] {
        let dest = tempfile::tempdir().unwrap();
        let s = open_bytes(bundle, key, &Limits::default(), Some(dest.path()), threaded).unwrap();
        assert_eq!(listing(src), listing(dest.path()), "threaded={threaded}");
        summaries.push(s.extract);
    }
    assert_eq!(summaries[0], summaries[1]);
}

#[test]
fn multi_frame_round_trip() {
    let key = Key::generate().unwrap();
    let src = multi_frame_tree();
    for (frame_size, threads) in [(64 << 10, 0), (100_000, 2), (1 << 20, 3), (64 << 20, 2)] {
        let plain = pack_framed(src.path(), None, frame_size, threads);
        let sizes = frame_sizes(&plain);
        let expanded = u64::from_be_bytes(plain[96..104].try_into().unwrap());
        assert_eq!(sizes.len() as u64, expanded.div_ceil(frame_size as u64), "frame size {frame_size}");
        assert!(sizes.iter().all(|s| s.is_some_and(|s| s <= frame_size as u64)), "{sizes:?}");
        open_all_ways(&plain, None, src.path());
        open_all_ways(&pack_framed(src.path(), Some(&key), frame_size, threads), Some(&key), src.path());
    }
    // The frames do not depend on the number of threads.
    let a = pack_framed(src.path(), None, 100_000, 0);
    let b = pack_framed(src.path(), None, 100_000, 3);
    assert_eq!(a[HEADER_LEN..], b[HEADER_LEN..]);
}

/// An unencrypted bundle like `b` with `payload` (zstd frames of `tar`).
fn with_payload(b: &[u8], payload: Vec<u8>, expanded: u64) -> Vec<u8> {
    let (mut h, _) = RawHeader::parse(&b[..HEADER_LEN]).unwrap().authenticate(None).unwrap();
    h.payload_len = payload.len() as u64;
    h.expanded_len = expanded;
    h.payload_sha256 = sha2::Sha256::digest(&payload).into();
    let mut out = h.to_bytes(None).unwrap().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn tar_of(plain_bundle: &[u8]) -> Vec<u8> {
    zstd::decode_all(&plain_bundle[HEADER_LEN..]).unwrap()
}

#[test]
fn frames_with_and_without_content_size_mix() {
    let src = multi_frame_tree();
    let b = pack_framed(src.path(), None, 64 << 20, 0);
    let tar = tar_of(&b);
    // Frames as one-shot zstd writes them (with size), as a streaming
    // encoder writes them (without), a skippable frame, and a frame larger
    // than the reader's whole-frame limit would be, in turn.
    let mut payload = vec![];
    for (i, part) in tar.chunks(150_000).enumerate() {
        match i % 3 {
            0 => payload.extend(zstd::bulk::compress(part, 3).unwrap()),
            1 => payload.extend(zstd::encode_all(part, 3).unwrap()),
            _ => {
                payload.extend([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
                payload.extend(zstd::bulk::compress(part, 1).unwrap());
            }
        }
    }
    let mixed = with_payload(&b, payload, tar.len() as u64);
    assert!(frame_sizes(&mixed).len() > 10);
    open_all_ways(&mixed, None, src.path());
    // One old-style frame for everything, as bundles were packed before.
    open_all_ways(&with_payload(&b, zstd::encode_all(&tar[..], 9).unwrap(), tar.len() as u64), None, src.path());
}

#[test]
fn frame_claiming_a_huge_content_size_is_refused() {
    let src = multi_frame_tree();
    let b = pack_framed(src.path(), None, 64 << 20, 0);
    let tar = tar_of(&b);
    let first = zstd::bulk::compress(&tar[..100_000], 3).unwrap();
    // Magic, descriptor (8-byte content size, not single segment), window
    // 1 KiB, content size 2^40, then one raw block of 3 bytes.
    let mut huge = vec![0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x00];
    huge.extend((1u64 << 40).to_le_bytes());
    huge.extend([(3 << 3) | 1, 0, 0, b'a', b'b', b'c']);
    let mut payload = first.clone();
    payload.extend(&huge);
    let bundle = with_payload(&b, payload, tar.len() as u64);
    let dest = tempfile::tempdir().unwrap();
    let e = open_bytes(&bundle, None, &Limits::default(), Some(dest.path()), true).unwrap_err();
    assert_eq!(e.to_string(), "bundle expanded size of 2147483649 bytes is over the limit of 2147483648 bytes");
    assert!(open_bytes(&bundle, None, &Limits::default(), None, false).is_err());

    // Within the limit but more than the header's expanded size leaves.
    let mut second = zstd::bulk::compress(&tar[100_000..], 3).unwrap();
    let claimed = u32::try_from(tar.len() - 100_000).unwrap();
    assert_eq!(second[4] >> 6, 2, "a 4-byte content size");
    let at = if second[4] & 0x20 != 0 { 5 } else { 6 };
    second[at..at + 4].copy_from_slice(&(claimed + 1).to_le_bytes());
    let mut payload = first.clone();
    payload.extend(&second);
    let e = open_bytes(&with_payload(&b, payload, tar.len() as u64), None, &Limits::default(), None, true).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "corrupt bundle: zstd frame declares {} bytes, more than the {claimed} left of the header's expanded size",
            claimed + 1
        )
    );

    // Declaring less than it holds (a bomb in a small frame) is refused by zstd.
    second[at..at + 4].copy_from_slice(&(claimed - 1).to_le_bytes());
    let mut payload = first;
    payload.extend(&second);
    let e = err_of(&with_payload(&b, payload, tar.len() as u64), None, &Limits::default());
    assert!(e.starts_with("corrupt bundle: zstd: "), "{e}");
}

#[test]
fn tampered_chunk_in_a_multi_frame_payload_names_the_chunk() {
    let key = Key::generate().unwrap();
    let src = multi_frame_tree();
    let mut b = pack_framed(src.path(), Some(&key), 64 << 10, 2);
    let chunks = (b.len() - HEADER_LEN) / ENCRYPTED_CHUNK_SIZE;
    assert!(chunks > 8, "{chunks}");
    b[HEADER_LEN + 7 * ENCRYPTED_CHUNK_SIZE + 1000] ^= 0x02;
    assert_eq!(
        err_of(&b, Some(&key), &Limits::default()),
        "authentication failed in chunk 7: the payload was modified or is corrupt"
    );
    let mut last = pack_framed(src.path(), Some(&key), 64 << 10, 2);
    let n = last.len();
    last[n - 3] ^= 0x80;
    assert!(
        err_of(&last, Some(&key), &Limits::default()).starts_with(&format!("authentication failed in chunk {chunks}"))
    );
}
