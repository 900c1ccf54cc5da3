//! Runs the key-derivation vectors in `tests/vectors/derive/` (made by
//! `keys/examples/gen_derive_vectors.rs`; the format is in its top comment
//! and in `tests/vectors/derive/README.md`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../examples/gen_derive_vectors.rs"]
#[allow(dead_code)]
mod generator;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use stateless_bundle::Key;
use stateless_bundle::key::{hex_decode, hex_encode};
use stateless_keys::derive::{Target, derive};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/derive")
}

fn vector_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.contains('.'))
        .collect();
    names.sort();
    names
}

fn fields(text: &str) -> BTreeMap<&str, &str> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once(": ").unwrap_or_else(|| panic!("not a name: value line: {line:?}"));
        if k != "comment" {
            assert!(out.insert(k, v).is_none(), "{k} given twice");
        }
    }
    out
}

fn bytes(hex: &str) -> Vec<u8> {
    let mut out = vec![0u8; hex.len() / 2];
    assert!(hex_decode(hex, &mut out), "not hex: {hex}");
    out
}

#[test]
fn derive_vectors() {
    let names = vector_names(&dir());
    assert!(names.len() >= 15, "only {} derive vectors in {}", names.len(), dir().display());
    let (mut ok, mut errors) = (0, 0);
    for name in &names {
        let text = fs::read_to_string(dir().join(name)).unwrap();
        let f = fields(&text);
        let site = Key::from_file_text(f["site-key"].as_bytes()).unwrap();
        assert_eq!(site.id().to_string(), f["site-key-id"], "{name}: site key id");
        let target_name = || String::from_utf8(bytes(f["name-hex"])).unwrap();
        let target = match f["kind"] {
            "node" => Target::Node(target_name()),
            "group" => Target::Group(target_name()),
            "default" => Target::Default,
            k => panic!("{name}: unknown kind {k}"),
        };
        match f["expect"] {
            "success" => {
                assert_eq!(hex_encode(&target.label().unwrap()), f["label-hex"], "{name}: label");
                let derived = derive(&site, &target).unwrap();
                let want = Key::from_file_text(f["derived-key"].as_bytes()).unwrap();
                assert_eq!(derived.as_bytes(), want.as_bytes(), "{name}: derived key");
                assert_eq!(derived.id().to_string(), f["derived-key-id"], "{name}: derived key id");
                assert_ne!(derived.id(), site.id(), "{name}: the derived key id must not be the site key's");
                ok += 1;
            }
            "error" => {
                let err = derive(&site, &target).unwrap_err().to_string();
                assert!(err.contains(f["error"]), "{name}: {err:?} should contain {:?}", f["error"]);
                errors += 1;
            }
            e => panic!("{name}: unknown expect {e}"),
        }
    }
    assert!(ok >= 8 && errors >= 5, "{ok} success and {errors} error vectors");
}

/// The vectors are deterministic: the generator must reproduce the
/// committed files byte for byte (a changed derivation, or a vector edited
/// by hand, shows up here).
#[test]
fn generator_reproduces_the_committed_vectors() {
    let out = tempfile::tempdir().unwrap();
    let n = generator::generate(out.path());
    let made = vector_names(out.path());
    assert_eq!(made.len(), n);
    assert_eq!(vector_names(&dir()), made, "the committed vectors are not the generator's");
    for name in &made {
        let want = fs::read(dir().join(name)).unwrap();
        assert!(fs::read(out.path().join(name)).unwrap() == want, "{name} differs from the generator's output");
    }
}
