//! Crafted tar streams that once got through or hurt: numeric fields out of
//! range, deep trees (cost), long paths (memory, PATH_MAX), deletions that
//! contradict entries, a stream longer than the header says, cancellation.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation, clippy::panic)]

use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sha2::Digest;
use stateless_bundle::{
    BundleReader, Cipher, Header, Limits, MAX_TAR_TAIL, OpenError, OpenOptions, OpenSummary, PackOptions, RelPath,
    Scope, error_chain, pack,
};

/// Builds a tar stream member by member, as a hostile packer would.
struct Tar {
    out: Vec<u8>,
    entries: u32,
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

impl Tar {
    fn new() -> Tar {
        Tar { out: Vec::new(), entries: 0 }
    }

    /// One member; `f` edits the header before its checksum is set.
    fn member(&mut self, kind: tar::EntryType, path: &str, data: &[u8], f: impl FnOnce(&mut tar::Header)) -> &mut Tar {
        let mut h = header(kind, data.len() as u64);
        if path.len() > 99 {
            let mut l = header(tar::EntryType::GNULongName, path.len() as u64 + 1);
            l.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            l.set_cksum();
            self.out.extend_from_slice(l.as_bytes());
            let mut name = path.as_bytes().to_vec();
            name.push(0);
            self.data(&name);
        } else {
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        }
        f(&mut h);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.data(data);
        self.entries += 1;
        self
    }

    fn pax(&mut self, records: &[(&str, &str)]) -> &mut Tar {
        let mut data = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {k}={v}\n").as_bytes());
        }
        let mut h = header(tar::EntryType::XHeader, data.len() as u64);
        h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.data(&data);
        self
    }

    fn data(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn dir(&mut self, path: &str) -> &mut Tar {
        self.member(tar::EntryType::Directory, &format!("{path}/"), b"", |h| h.set_mode(0o755))
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Tar {
        self.member(tar::EntryType::Regular, path, data, |_| {})
    }

    fn finish(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// An unencrypted bundle of `tar` (the header computed honestly).
fn bundle_of(tar: &[u8], entries: u32) -> Vec<u8> {
    bundle_declaring(tar, entries, tar.len() as u64)
}

fn bundle_declaring(tar: &[u8], entries: u32, expanded_len: u64) -> Vec<u8> {
    let payload = zstd::encode_all(tar, 3).unwrap();
    let header = Header {
        cipher: Cipher::None,
        key_id: Default::default(),
        salt: [7; 32],
        generation: 1,
        created: 1_700_000_000,
        expires: None,
        kind: stateless_bundle::PayloadKind::TarZstd,
        payload_len: payload.len() as u64,
        expanded_len,
        entry_count: entries,
        scope: Scope::Any,
        payload_sha256: sha2::Sha256::digest(&payload).into(),
        signature: None,
    };
    let mut out = header.to_bytes(None).unwrap().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn open(bytes: &[u8], dest: Option<&Path>, threaded: bool) -> Result<OpenSummary, OpenError> {
    BundleReader::new(bytes)?.authenticate(None, &Limits::default())?.extract(OpenOptions {
        dest,
        owners: false,
        threaded,
    })
}

/// Opens three ways (threaded, unthreaded, verify only); all must agree.
fn open_all(bytes: &[u8]) -> Result<OpenSummary, String> {
    let mut results = Vec::new();
    for (dest, threaded) in [(true, true), (true, false), (false, false)] {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        if dest {
            fs::create_dir(&out).unwrap();
        }
        results.push(open(bytes, dest.then_some(out.as_path()), threaded).map_err(|e| error_chain(&e)));
    }
    let first = results.remove(0);
    for r in &results {
        assert_eq!(r.as_ref().err(), first.as_ref().err(), "modes disagree");
    }
    first
}

fn refused(bytes: &[u8], want: &str) {
    match open_all(bytes) {
        Ok(_) => panic!("accepted; wanted an error containing {want:?}"),
        Err(e) => assert!(e.contains(want), "error {e:?} does not contain {want:?}"),
    }
}

/// A base-256 field of `len` bytes holding `v` (two's complement).
fn base256(v: i128, len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = (0..len).rev().map(|i| (v >> (8 * i)) as u8).collect();
    out[0] |= 0x80;
    out
}

#[test]
fn negative_and_huge_numeric_fields_are_refused_not_panics() {
    // (field offset, length, value, field name in the error)
    let cases: &[(usize, usize, i128, &str)] = &[
        (136, 12, -1, "mtime -1 is out of range"),
        (136, 12, -(1 << 40), "mtime -1099511627776 is out of range"),
        (136, 12, 1 << 70, "mtime 1180591620717411303424 is out of range"),
        (108, 8, -1, "uid -1 is out of range"),
        (108, 8, 1 << 32, "uid 4294967296 is out of range"),
        (116, 8, 4_294_967_295, "gid 4294967295 is out of range"),
        (100, 8, -2, "mode -2 is out of range"),
        (124, 12, -(1 << 40), "size -1099511627776 is out of range"),
        (329, 8, -1, "device major -1 is out of range"),
        (337, 8, 1 << 40, "device minor 1099511627776 is out of range"),
    ];
    for &(off, len, v, want) in cases {
        let mut t = Tar::new();
        t.dir("etc").member(tar::EntryType::Regular, "etc/x", b"hi", |h| {
            h.as_mut_bytes()[off..off + len].copy_from_slice(&base256(v, len));
        });
        refused(&bundle_of(&t.finish(), t.entries), &format!("etc/x: {want}"));
    }
    // Octal that is not a number.
    let mut t = Tar::new();
    t.member(tar::EntryType::Regular, "x", b"", |h| h.as_mut_bytes()[136..148].copy_from_slice(b"-0000000001\0"));
    refused(&bundle_of(&t.finish(), t.entries), "x: mtime");
}

#[test]
fn numeric_fields_in_range_are_used() {
    let mut t = Tar::new();
    t.member(tar::EntryType::Regular, "big", b"x", |h| {
        // Past what 11 octal digits hold, within what ext4 stores.
        h.as_mut_bytes()[136..148].copy_from_slice(&base256(1 << 33, 12));
    });
    t.member(tar::EntryType::Regular, "zero", b"x", |h| h.set_mtime(0));
    t.pax(&[("mtime", "1234567890.5")]).file("paxtime", b"x");
    let d = tempfile::tempdir().unwrap();
    let b = bundle_of(&t.finish(), t.entries);
    open(&b, Some(d.path()), false).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(d.path().join("big")).unwrap().mtime(), 1 << 33);
    assert_eq!(fs::metadata(d.path().join("zero")).unwrap().mtime(), 0);
    assert_eq!(fs::metadata(d.path().join("paxtime")).unwrap().mtime(), 1_234_567_890);
}

#[test]
fn pax_numeric_records_are_range_checked() {
    for (key, value, want) in [
        ("mtime", "-1", "x: pax mtime -1 is out of range"),
        ("mtime", "1e9", "x: pax mtime \"1e9\" is out of range"),
        ("uid", "-1", "x: pax uid -1 is out of range"),
        ("uid", "4294967296", "x: uid 4294967296 is out of range"),
        ("gid", "abc", "x: pax gid \"abc\" is out of range"),
        ("size", "-5", "x: pax size -5 is out of range"),
        ("size", "1.5", "x: pax size \"1.5\" is out of range"),
    ] {
        let mut t = Tar::new();
        t.pax(&[(key, value)]).file("x", b"");
        refused(&bundle_of(&t.finish(), t.entries), want);
    }
}

/// 1,500 nested directories and 1,200 files spread over them (the shape
/// that once took 24 s): it must complete, and be extracted right.
#[test]
fn deep_tree_is_extracted() {
    let mut t = Tar::new();
    let mut path = String::new();
    let mut dirs = Vec::new();
    for i in 0..1500 {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(if i % 2 == 0 { "d" } else { "e" });
        t.dir(&path);
        dirs.push(path.clone());
    }
    // Files in an order that jumps between depths.
    for i in 0..1200usize {
        let dir = &dirs[(i * 613) % dirs.len()];
        t.file(&format!("{dir}/f{i}"), b"x");
    }
    let b = bundle_of(&t.finish(), t.entries);
    let d = tempfile::tempdir().unwrap();
    let s = open(&b, Some(d.path()), true).unwrap();
    assert_eq!((s.extract.dirs, s.extract.files), (1500, 1200));
    let i = 1199usize;
    let dir = &dirs[(i * 613) % dirs.len()];
    // Read it back through a descriptor chain: the path may pass PATH_MAX
    // together with the temporary directory's.
    assert!(rel_exists(d.path(), &format!("{dir}/f{i}")));
    open_all(&b).unwrap();
}

/// Whether `rel` exists under `root`, walking one component at a time.
fn rel_exists(root: &Path, rel: &str) -> bool {
    use rustix::fs::{Mode, OFlags};
    let mut fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let comps: Vec<&str> = rel.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        let flags = if i + 1 == comps.len() { OFlags::PATH } else { OFlags::RDONLY | OFlags::DIRECTORY };
        match rustix::fs::openat(&fd, *c, flags, Mode::empty()) {
            Ok(next) => fd = next,
            Err(_) => return false,
        }
    }
    true
}

/// A path of exactly the limit (4,096 bytes) under a destination whose own
/// path is long: both extraction and a hard link to it work.
#[test]
fn max_length_path_is_extracted_whatever_the_destination() {
    let mut path = String::new();
    while path.len() + 201 < 4096 {
        path.push_str(&"p".repeat(200));
        path.push('/');
    }
    let dir = path.trim_end_matches('/').to_owned();
    let name = "f".repeat(4096 - path.len());
    let full = format!("{path}{name}");
    assert_eq!(full.len(), 4096);
    let link = format!("{dir}/{}", "h".repeat(4096 - path.len()));
    // The link target (4,096 bytes) goes in a GNU long-link member.
    let mut t = Tar::new();
    t.file(&full, b"long");
    let mut ll = header(tar::EntryType::GNULongLink, full.len() as u64 + 1);
    ll.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    ll.set_cksum();
    t.out.extend_from_slice(ll.as_bytes());
    let mut target = full.clone().into_bytes();
    target.push(0);
    t.data(&target);
    t.member(tar::EntryType::Link, &link, b"", |_| {});
    let b = bundle_of(&t.finish(), t.entries);
    let d = tempfile::tempdir().unwrap();
    // Make the destination's own path long: together over PATH_MAX.
    let mut dest = d.path().to_owned();
    for _ in 0..3 {
        dest.push("q".repeat(200));
    }
    fs::create_dir_all(&dest).unwrap();
    let s = open(&b, Some(&dest), false).unwrap();
    assert_eq!((s.extract.files, s.extract.hardlinks), (1, 1));
    assert!(rel_exists(&dest, &full) && rel_exists(&dest, &link));
}

/// Writes the stress bundles measured by hand (deep tree, 100,000 long
/// paths) into `$STRESS_OUT`.
#[test]
#[ignore = "writes large files; run by hand"]
fn write_stress_bundles() {
    let out = std::path::PathBuf::from(std::env::var("STRESS_OUT").unwrap());
    let mut t = Tar::new();
    let mut path = String::new();
    let mut dirs = Vec::new();
    for i in 0..1500 {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(if i % 2 == 0 { "d" } else { "e" });
        t.dir(&path);
        dirs.push(path.clone());
    }
    for i in 0..1200usize {
        let dir = &dirs[(i * 613) % dirs.len()];
        t.file(&format!("{dir}/f{i}"), b"x");
    }
    fs::write(out.join("deep.bundle"), bundle_of(&t.finish(), t.entries)).unwrap();
    // 100,000 entries of ~3.9 KB paths: a chain of 1,900 directories, then
    // 98,099 files in its last one, each named by 60 digits.
    let mut t = Tar::new();
    let mut path = String::new();
    for _ in 0..1900 {
        path.push_str("s/");
        t.dir(path.trim_end_matches('/'));
    }
    for i in 0..(100_000 - 1900) {
        t.file(&format!("{path}{i:060}"), b"");
    }
    fs::write(out.join("longpaths.bundle"), bundle_of(&t.finish(), t.entries)).unwrap();
    // One file whose path is exactly 4,096 bytes.
    let mut dirs = String::new();
    while dirs.len() + 201 < 4096 {
        dirs.push_str(&"p".repeat(200));
        dirs.push('/');
    }
    let mut t = Tar::new();
    t.file(&format!("{dirs}{}", "f".repeat(4096 - dirs.len())), b"max");
    fs::write(out.join("maxpath.bundle"), bundle_of(&t.finish(), t.entries)).unwrap();
}

/// The names of a bundle's entries and implied directories add up to at
/// most 8 MiB: the loader keeps every name while it applies the tree, and
/// 100,000 names of 255 bytes took it to 60 MiB. Paths of sixteen fresh
/// 255-byte components (all but the last implied) pass the bound after
/// about 2,050 entries, well inside the entry limit.
#[test]
fn total_name_bytes_are_bounded() {
    let make = |n: usize| {
        let mut t = Tar::new();
        for i in 0..n {
            let comps: Vec<String> = (0..16).map(|c| format!("{i:0>8}{c:x}").repeat(29)[..255].to_owned()).collect();
            t.file(&comps.join("/"), b"");
        }
        bundle_of(&t.finish(), t.entries)
    };
    // 2,050 entries: 2,050 x 16 x 255 = 8,364,000 bytes, under 8 MiB.
    open(&make(2050), None, true).unwrap();
    let over = make(2100);
    for threaded in [true, false] {
        let err = open(&over, None, threaded).unwrap_err();
        assert!(err.to_string().contains("more than 8388608 bytes of entry names in all (limit)"), "{err}");
    }
}

/// Writes `longnames.bundle` into `$STRESS_OUT`: 100,000 entries whose
/// last components are `$NAME_LEN` bytes (default 255; paths of up to
/// 4,095), symlinks with 4,000-byte targets, names given by GNU long-name
/// members and PAX `path` records, and PAX headers of 2 KB more records
/// each; measured by hand.
#[test]
#[ignore = "writes large files; run by hand"]
fn write_long_names_bundle() {
    let out = std::path::PathBuf::from(std::env::var("STRESS_OUT").unwrap());
    let width: usize = std::env::var("NAME_LEN").map_or(255, |v| v.parse().unwrap());
    let mut t = Tar::new();
    let mut dir = String::new();
    for i in 0..15 {
        if i > 0 {
            dir.push('/');
        }
        dir.push_str(&format!("{i:x}").repeat(255));
        t.dir(&dir);
    }
    let target = "x/".repeat(2000);
    let comment = "c".repeat(2000);
    for i in 0..(100_000 - 15) {
        let full = format!("{dir}/{i:0>width$}");
        match i % 3 {
            0 => {
                t.file(&full, b"");
            }
            1 => {
                t.pax(&[("path", &full), ("comment", &comment)]);
                t.member(tar::EntryType::Regular, "p", b"", |_| {});
            }
            _ => {
                t.pax(&[("path", &full), ("linkpath", &target), ("comment", &comment)]);
                t.member(tar::EntryType::Symlink, "p", b"", |_| {});
            }
        }
    }
    fs::write(out.join("longnames.bundle"), bundle_of(&t.finish(), t.entries)).unwrap();
}

/// 2,000 entries with 3.9 KB paths: what the extractor keeps per entry does
/// not grow with the path (checked by hand with /usr/bin/time; here that it
/// completes and implied parents are counted).
#[test]
fn long_paths_many_entries() {
    let mut t = Tar::new();
    let stem = "s/".repeat(1900);
    t.dir(stem.trim_end_matches('/'));
    for i in 0..2000 {
        t.file(&format!("{stem}{i:060}"), b"");
    }
    let b = bundle_of(&t.finish(), t.entries);
    let s = open_all(&b).unwrap();
    assert_eq!(s.extract.files, 2000);
}

#[test]
fn implied_parent_directories_count_against_the_entry_limit() {
    let mut t = Tar::new();
    for i in 0..3 {
        t.file(&format!("{i}/a/b/c/d/e/x"), b"");
    }
    let b = bundle_of(&t.finish(), t.entries);
    let limits = Limits { max_entries: 17, ..Limits::default() };
    let err = BundleReader::new(&b[..])
        .unwrap()
        .authenticate(None, &limits)
        .unwrap()
        .extract(OpenOptions { dest: None, owners: false, threaded: false })
        .unwrap_err();
    assert!(error_chain(&err).contains("more than 17 parent directories implied by entry paths"), "{err}");
    // 18 implied directories: more than 17. With 18 it passes.
    let limits = Limits { max_entries: 18, ..Limits::default() };
    BundleReader::new(&b[..])
        .unwrap()
        .authenticate(None, &limits)
        .unwrap()
        .extract(OpenOptions { dest: None, owners: false, threaded: false })
        .unwrap();
}

#[test]
fn a_bundle_may_not_delete_what_it_contains() {
    let cases: &[(&[&str], &str)] = &[
        (&["etc/", "etc/x", "etc/.wh.x"], "etc/.wh.x: the bundle both deletes etc/x and contains it"),
        (&["etc/", "etc/.wh.x", "etc/x"], "etc/x: the bundle both deletes etc/x and contains it"),
        (&["etc/", "etc/.wh.sub", "etc/sub/x"], "etc/sub/x: the bundle both deletes etc/sub and contains it"),
        (&["etc/", "etc/.wh.sub", "etc/sub/"], "etc/sub/: the bundle both deletes etc/sub and contains it"),
        (&["etc/sub/x", "etc/.wh.sub"], "etc/.wh.sub: the bundle both deletes etc/sub and contains it"),
        (&["etc/.wh.sub", "etc/sub/.wh.y"], "etc/sub/.wh.y: the bundle both deletes etc/sub and contains it"),
        (&[".wh.etc", "etc/.wh..wh..opq"], "etc/.wh..wh..opq: the bundle both deletes etc and contains it"),
    ];
    for (entries, want) in cases {
        let mut t = Tar::new();
        for e in *entries {
            match e.strip_suffix('/') {
                Some(d) => t.dir(d),
                None => t.file(e, b""),
            };
        }
        refused(&bundle_of(&t.finish(), t.entries), want);
    }
    // An opaque directory with contents is fine: the base's are removed,
    // the bundle's applied.
    let mut t = Tar::new();
    t.dir("etc").file("etc/.wh..wh..opq", b"").file("etc/x", b"").file("etc/.wh.y", b"");
    open_all(&bundle_of(&t.finish(), t.entries)).unwrap();
}

#[test]
fn pack_refuses_a_tree_with_a_path_and_its_whiteout() {
    for (files, want) in [
        (&["x", ".wh.x"][..], ".wh.x: the tree both deletes x and contains it"),
        (&["d/y", ".wh.d"][..], ".wh.d: the tree both deletes d and contains it"),
    ] {
        let src = tempfile::tempdir().unwrap();
        for f in files {
            let p = src.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        let opts = PackOptions {
            key: None,
            generation: 1,
            created: 1_700_000_000,
            expires: None,
            scope: Scope::Any,
            level: 3,
            threads: 0,
            deletions: vec![],
            limits: Limits::default(),
        };
        let err = pack(src.path(), Cursor::new(Vec::new()), &opts).unwrap_err();
        assert!(error_chain(&err).contains(want), "{err}");
    }
    // --delete of a path under a directory the tree has is a conflict too.
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/y"), b"").unwrap();
    let opts = PackOptions {
        key: None,
        generation: 1,
        created: 1_700_000_000,
        expires: None,
        scope: Scope::Any,
        level: 3,
        threads: 0,
        deletions: vec![RelPath::parse(b"d", 4096).unwrap()],
        limits: Limits::default(),
    };
    assert!(pack(src.path(), Cursor::new(Vec::new()), &opts).is_err());
}

/// A small payload that declares a small expanded size but inflates to far
/// more is stopped at the declared size, not at the end.
#[test]
fn stream_longer_than_declared_stops_at_the_declared_size() {
    let mut t = Tar::new();
    t.file("big", &vec![0u8; 64 << 20]);
    let tar = t.finish();
    let b = bundle_declaring(&tar, 1, 1 << 20);
    for threaded in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let err = open(&b, Some(d.path()), threaded).unwrap_err();
        assert!(
            error_chain(&err).contains("longer than the header's expanded size of 1048576 bytes"),
            "{}",
            error_chain(&err)
        );
        let written = fs::metadata(d.path().join("big")).map(|m| m.len()).unwrap_or(0);
        assert!(written <= 1 << 20, "wrote {written} bytes before refusing");
    }
}

#[test]
fn zero_padding_after_the_archive_is_bounded() {
    let mut t = Tar::new();
    t.file("x", b"1");
    let mut tar = t.out.clone();
    tar.extend(std::iter::repeat_n(0u8, MAX_TAR_TAIL as usize));
    open_all(&bundle_of(&tar, 1)).unwrap();
    tar.extend_from_slice(&[0u8; 512]);
    refused(&bundle_of(&tar, 1), "more than 65536 bytes of zeros after the last entry");
}

#[test]
fn cancel_stops_extraction() {
    let mut t = Tar::new();
    for i in 0..10 {
        t.file(&format!("f{i}"), b"x");
    }
    let b = bundle_of(&t.finish(), t.entries);
    let flag = Arc::new(AtomicBool::new(true));
    let d = tempfile::tempdir().unwrap();
    let err = BundleReader::new(&b[..])
        .unwrap()
        .authenticate(None, &Limits::default())
        .unwrap()
        .cancel_on(flag)
        .extract(OpenOptions { dest: Some(d.path()), owners: false, threaded: true })
        .unwrap_err();
    assert_eq!(error_chain(&err), "extraction cancelled");
}
