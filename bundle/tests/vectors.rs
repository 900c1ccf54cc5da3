//! Runs the test-vector catalogue in `tests/vectors/` (see its README and
//! `bundle/examples/gen_vectors.rs`) through the reader.
//!
//! A vector with a `pubkey:` line is opened with
//! `Authenticated::require_signature` for that publisher between
//! `authenticate` and `extract`. Each vector is opened three ways: extracting into a fresh directory with
//! `threaded: true`, the same with `threaded: false`, and verify-only
//! (`dest: None`). Each must meet the vector's expectation: the error's
//! `Display` contains the `error:` text, or the extracted tree's listing has
//! the `tree-sha256:` digest. An image bundle (payload kind 1) is opened
//! with `Authenticated::write_image` instead, and its listing is the one
//! line `image SHA256-OF-IMAGE`. A vector marked `known-bug:` must still fail
//! its expectation in at least one way (strict xfail), so a fix makes this
//! test fail until the marker is removed.
//!
//! The error text matched is the error's `Display` followed by its
//! `source()` chain, joined by `: `. Set `VECTORS_VERBOSE=1` to print what
//! every vector produced in every mode.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use stateless_bundle::error_chain as chain;
use std::fmt::Write as _;
use std::fs;
use std::io::{Cursor, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use stateless_bundle::key::hex_encode;
use stateless_bundle::{BundleReader, Key, Limits, OpenOptions, PayloadKind, PublicKey};

/// The catalogue must not shrink below this (it cannot pass vacuously).
const MIN_VECTORS: usize = 20;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

#[derive(Debug)]
enum Expect {
    Success { tree_sha256: String, tree: Vec<String> },
    Error(String),
}

struct Vector {
    name: String,
    expect: Expect,
    key: Option<Key>,
    pubkey: Option<PublicKey>,
    limits: Limits,
    known_bug: Option<String>,
    bundle: Vec<u8>,
}

fn parse_vector(path: &Path) -> Result<Vector, String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let data = fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    let split = data.windows(2).position(|w| w == b"\n\n").ok_or(format!("{name}: no empty line after the header"))?;
    let text = std::str::from_utf8(&data[..split]).map_err(|_| format!("{name}: header is not UTF-8"))?;
    let bundle = data[split + 2..].to_vec();

    let (mut expect, mut error, mut key, mut tree_sha, mut known_bug) = (None, None, None, None, None);
    let mut pubkey = None;
    let mut tree = Vec::new();
    let mut limits = Limits::default();
    for line in text.lines() {
        let (field, value) = line.split_once(": ").ok_or(format!("{name}: bad header line {line:?}"))?;
        match field {
            "expect" => expect = Some(value.to_owned()),
            "error" => error = Some(value.to_owned()),
            "key" => key = Some(Key::from_file_text(value.as_bytes()).map_err(|e| format!("{name}: key: {e}"))?),
            "pubkey" => {
                pubkey = Some(PublicKey::from_file_text(value.as_bytes()).map_err(|e| format!("{name}: pubkey: {e}"))?)
            }
            "tree-sha256" => tree_sha = Some(value.to_owned()),
            "tree" => tree.push(value.to_owned()),
            "known-bug" => known_bug = Some(value.to_owned()),
            "comment" => {}
            "limits" => {
                for item in value.split_whitespace() {
                    let (k, v) = item.split_once('=').ok_or(format!("{name}: bad limit {item:?}"))?;
                    let n: u64 = v.parse().map_err(|_| format!("{name}: bad limit {item:?}"))?;
                    match k {
                        "max_payload" => limits.max_payload = n,
                        "max_expanded" => limits.max_expanded = n,
                        "max_entries" => limits.max_entries = u32::try_from(n).unwrap(),
                        "max_path" => limits.max_path = usize::try_from(n).unwrap(),
                        _ => return Err(format!("{name}: unknown limit {k}")),
                    }
                }
            }
            _ => return Err(format!("{name}: unknown header field {field:?}")),
        }
    }
    let expect = match (expect.as_deref(), error, tree_sha) {
        (Some("success"), None, Some(tree_sha256)) => Expect::Success { tree_sha256, tree },
        (Some("error"), Some(e), None) if !e.is_empty() => Expect::Error(e),
        _ => return Err(format!("{name}: need `expect: success` + `tree-sha256:` or `expect: error` + `error:`")),
    };
    Ok(Vector { name, expect, key, pubkey, limits, known_bug, bundle })
}

/// The listing lines of an extracted tree (format in gen_vectors.rs).
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(Vec<u8>, String)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let full = entry.unwrap().path();
            let rel = full.strip_prefix(root).unwrap();
            let shown = String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned();
            let meta = fs::symlink_metadata(&full).unwrap();
            let (mode, mtime) = (meta.mode() & 0o7777, meta.mtime());
            let line = if meta.file_type().is_symlink() {
                let target = fs::read_link(&full).unwrap();
                format!("{shown} symlink {mtime} {}", sha_hex(target.as_os_str().as_bytes()))
            } else if meta.is_dir() {
                walk(root, &full, out);
                format!("{shown} dir {mode:04o} {mtime}")
            } else if meta.is_file() {
                let mut data = Vec::new();
                fs::File::open(&full).unwrap().read_to_end(&mut data).unwrap();
                format!("{shown} file {mode:04o} {mtime} {} {} {}", meta.nlink(), meta.len(), sha_hex(&data))
            } else {
                format!("{shown} other {:o}", meta.mode())
            };
            out.push((rel.as_os_str().as_bytes().to_vec(), line));
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out.into_iter().map(|(_, line)| line).collect()
}

fn sha_hex(data: &[u8]) -> String {
    hex_encode(&Sha256::digest(data))
}

/// Makes every directory writable again so the temporary tree can be removed.
fn make_removable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else { return };
    if meta.is_dir() {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                make_removable(&e.path());
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Threaded,
    Unthreaded,
    VerifyOnly,
}

/// Opens the vector; `Ok(listing)` (empty for verify-only) or the error text.
fn run(v: &Vector, mode: Mode) -> Result<Vec<String>, String> {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("staging");
    fs::create_dir(&dest).unwrap();
    let opts = match mode {
        Mode::Threaded => OpenOptions { dest: Some(&dest), owners: false, threaded: true },
        Mode::Unthreaded => OpenOptions { dest: Some(&dest), owners: false, threaded: false },
        Mode::VerifyOnly => OpenOptions { dest: None, owners: false, threaded: false },
    };
    let result = BundleReader::new(Cursor::new(&v.bundle[..]))
        .and_then(|r| r.authenticate(v.key.as_ref(), &v.limits))
        .and_then(|a| match &v.pubkey {
            Some(pk) => a.require_signature(pk),
            None => Ok(a),
        })
        .and_then(|a| {
            if a.header().kind == PayloadKind::ErofsImage {
                // An image is written out whole; its listing is one line.
                let mut image = Vec::new();
                return a.write_image(&mut image).map(|_| (false, vec![format!("image {}", sha_hex(&image))]));
            }
            a.extract(opts).map(|_| (true, Vec::new()))
        });
    let out = match result {
        Ok((false, lines)) if matches!(mode, Mode::VerifyOnly) => {
            let _ = lines;
            Ok(Vec::new())
        }
        Ok((false, lines)) => Ok(lines),
        Ok(_) if matches!(mode, Mode::VerifyOnly) => {
            assert_eq!(fs::read_dir(&dest).unwrap().count(), 0, "{}: verify-only wrote files", v.name);
            Ok(Vec::new())
        }
        Ok(_) => Ok(listing(&dest)),
        Err(e) => Err(chain(&e)),
    };
    make_removable(tmp.path());
    out
}

/// Checks one run against the expectation; `Err` describes the mismatch.
fn check(v: &Vector, mode: Mode) -> Result<(), String> {
    let got = run(v, mode);
    if std::env::var_os("VECTORS_VERBOSE").is_some() {
        match &got {
            Ok(_) => eprintln!("{} ({mode:?}): ok", v.name),
            Err(e) => eprintln!("{} ({mode:?}): error: {e}", v.name),
        }
    }
    match (&v.expect, got) {
        (Expect::Error(want), Err(e)) if e.contains(want.as_str()) => Ok(()),
        (Expect::Error(want), Err(e)) => Err(format!("error {e:?} does not contain {want:?}")),
        (Expect::Error(want), Ok(_)) => Err(format!("succeeded, expected an error containing {want:?}")),
        (Expect::Success { .. }, Err(e)) => Err(format!("failed: {e}")),
        (Expect::Success { .. }, Ok(_)) if matches!(mode, Mode::VerifyOnly) => Ok(()),
        (Expect::Success { tree_sha256, tree }, Ok(lines)) => {
            let mut all = String::new();
            for l in &lines {
                writeln!(all, "{l}").unwrap();
            }
            if &sha_hex(all.as_bytes()) == tree_sha256 {
                return Ok(());
            }
            let mut msg = String::from("tree digest differs; listing diff (- expected, + extracted):");
            for l in tree.iter().filter(|l| !lines.contains(l)) {
                write!(msg, "\n    - {l}").unwrap();
            }
            for l in lines.iter().filter(|l| !tree.contains(l)) {
                write!(msg, "\n    + {l}").unwrap();
            }
            Err(msg)
        }
    }
}

#[test]
fn vectors() {
    let dir = vectors_dir();
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().contains('.'))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= MIN_VECTORS,
        "{} holds {} vectors, fewer than {MIN_VECTORS}; regenerate them (see its README.md)",
        dir.display(),
        paths.len()
    );

    let mut failures = Vec::new();
    let (mut ok, mut err, mut xfail) = (0, 0, 0);
    for path in &paths {
        let v = match parse_vector(path) {
            Ok(v) => v,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let results: Vec<(Mode, Result<(), String>)> =
            [Mode::Threaded, Mode::Unthreaded, Mode::VerifyOnly].into_iter().map(|m| (m, check(&v, m))).collect();
        match &v.known_bug {
            None => {
                for (mode, r) in &results {
                    if let Err(e) = r {
                        failures.push(format!("{} ({mode:?}): {e}", v.name));
                    }
                }
                match v.expect {
                    Expect::Success { .. } => ok += 1,
                    Expect::Error(_) => err += 1,
                }
            }
            Some(bug) => {
                if results.iter().all(|(_, r)| r.is_ok()) {
                    failures.push(format!(
                        "{}: marked `known-bug: {bug}` but now meets its expectation in every mode; \
                         remove the known-bug line",
                        v.name
                    ));
                } else {
                    xfail += 1;
                    for (mode, r) in &results {
                        if let Err(e) = r {
                            eprintln!("known bug {} ({mode:?}): {e}", v.name);
                        }
                    }
                }
            }
        }
    }
    eprintln!("{} vectors: {ok} valid, {err} refused as expected, {xfail} known bugs", paths.len());
    assert!(failures.is_empty(), "{} vector failures:\n  {}", failures.len(), failures.join("\n  "));
}
