//! Generates the key-derivation vectors in `tests/vectors/derive/`.
//!
//! ```text
//! cargo run -p stateless-keys --example gen_derive_vectors -- tests/vectors/derive
//! ```
//!
//! Unlike the bundle vectors, these are deterministic: the site keys are
//! published test inputs made here from fixed labels (below), not drawn at
//! random, so a run writes the same bytes every time and a diff after a run
//! means the derivation changed. They protect nothing: they are the keys of
//! no site. Stale vector files (any file in the directory without a `.` in
//! its name) are deleted first.
//!
//! The expected outputs are computed here with HMAC-SHA256 alone, following
//! RFC 5869 step by step (Extract with a zero salt, one Expand block), and
//! with the labels spelled out as byte strings, so the vectors check
//! `stateless_keys::derive` against an independent implementation of
//! `docs/bundle-format.md` (*Key derivation*), not against itself.
//!
//! # File format
//!
//! `name: value` lines, like the bundle vectors' text header (there is no
//! binary part):
//!
//! * `comment: TEXT` — any number of lines;
//! * `site-key: stateless-key-v1:HEX` — the key derived from;
//! * `site-key-id: HEX` — its key id;
//! * `kind: node | group | default`;
//! * `name-hex: HEX` — the node id or group name as bytes (absent for
//!   `default`);
//! * `label-hex: HEX` — the HKDF info (success vectors only);
//! * `expect: success | error`;
//! * `derived-key: stateless-key-v1:HEX`, `derived-key-id: HEX` — for
//!   success;
//! * `error: TEXT` — for errors, a substring of the error's `Display`.
//!
//! `keys/tests/derive_vectors.rs` runs them.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::fs;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use stateless_bundle::Key;
use stateless_bundle::key::hex_encode;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// RFC 5869 HKDF-SHA256 with no salt (HashLen zero bytes), L = 32: one block.
fn hkdf32(ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hmac(&[0u8; 32], &[ikm]);
    hmac(&prk, &[info, &[1]])
}

/// The two published site keys: bytes 0x00..0x1f, and SHA-256 of a label.
fn site_keys() -> [(&'static str, [u8; 32]); 2] {
    let mut counting = [0u8; 32];
    for (b, i) in counting.iter_mut().zip(0u8..) {
        *b = i;
    }
    let hashed: [u8; 32] = Sha256::digest(b"stateless/v1/derive test vector site key B").into();
    [
        ("site key A: bytes 00 01 02 ... 1f", counting),
        ("site key B: SHA-256(\"stateless/v1/derive test vector site key B\")", hashed),
    ]
}

enum Want {
    Ok,
    Err(&'static str),
}

struct Vector {
    name: &'static str,
    comment: &'static str,
    site: usize,
    kind: &'static str,
    target: &'static [u8],
    want: Want,
}

const LONGEST: &[u8] = b"n234567890123456789012345678901234567890123456789012345678901234";
const TOO_LONG: &[u8] = b"n2345678901234567890123456789012345678901234567890123456789012345";

fn vectors() -> Vec<Vector> {
    let v = |name, comment, site, kind, target, want| Vector { name, comment, site, kind, target, want };
    vec![
        v("ok_node", "the key of node node42", 0, "node", b"node42", Want::Ok),
        v("ok_node_other", "node43: another node, another key", 0, "node", b"node43", Want::Ok),
        v("ok_node_case", "ids compare byte for byte: Node42 is not node42", 0, "node", b"Node42", Want::Ok),
        v("ok_node_named_default", "a node called default is not the default key", 0, "node", b"default", Want::Ok),
        v("ok_node_all_chars", "every character class a name may use", 0, "node", b"Az09._:-z", Want::Ok),
        v("ok_node_64_bytes", "the longest name", 0, "node", LONGEST, Want::Ok),
        v("ok_group", "the key of group rack7", 0, "group", b"rack7", Want::Ok),
        v("ok_group_named_like_a_node", "group node42 is not node node42", 0, "group", b"node42", Want::Ok),
        v("ok_default", "the fleet-default key, for the default bundle", 0, "default", b"", Want::Ok),
        v("ok_other_site_node", "node42 under another site key", 1, "node", b"node42", Want::Ok),
        v("ok_other_site_default", "the default key under another site key", 1, "default", b"", Want::Ok),
        v("name_empty", "an empty node id", 0, "node", b"", Want::Err("name must be 1 to 64 bytes")),
        v("name_too_long", "65 bytes", 0, "node", TOO_LONG, Want::Err("name must be 1 to 64 bytes")),
        v(
            "name_leading_dot",
            "a name may not start with a dot",
            0,
            "node",
            b".node42",
            Want::Err("must not start with a dot"),
        ),
        v("name_dotdot_slash", "a path, not a name", 0, "group", b"../rack7", Want::Err("name may use only")),
        v("name_slash", "a slash", 0, "node", b"rack7/node42", Want::Err("name may use only")),
        v("name_space", "a space", 0, "node", b"node 42", Want::Err("name may use only")),
        v("name_non_ascii", "UTF-8 beyond ASCII", 0, "group", "r\u{e4}ck7".as_bytes(), Want::Err("name may use only")),
        v("name_nul", "a NUL byte", 0, "node", b"node\x0042", Want::Err("name may use only")),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: gen_derive_vectors DIR");
        std::process::exit(2);
    };
    let n = generate(Path::new(dir));
    println!("wrote {n} vectors to {dir}");
}

/// Writes the catalogue into `dir` (created if need be) and returns how many
/// vectors it wrote. `keys/tests/derive_vectors.rs` calls it too, to check
/// that the committed files are exactly what it makes.
pub fn generate(dir: &Path) -> usize {
    fs::create_dir_all(dir).expect("creating the directory");
    for entry in fs::read_dir(dir).expect("listing the directory") {
        let entry = entry.expect("listing the directory");
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().expect("file type").is_file() && !name.contains('.') {
            fs::remove_file(entry.path()).expect("removing a stale vector");
        }
    }
    let sites = site_keys();
    let all = vectors();
    for v in &all {
        let (site_comment, site_bytes) = sites[v.site];
        let site = Key::from_bytes(site_bytes);
        let mut text = format!("comment: {}\ncomment: {site_comment}\n", v.comment);
        text += &format!("site-key: stateless-key-v1:{}\nsite-key-id: {}\n", hex_encode(&site_bytes), site.id());
        text += &format!("kind: {}\n", v.kind);
        if v.kind != "default" {
            text += &format!("name-hex: {}\n", hex_encode(v.target));
        }
        match v.want {
            Want::Ok => {
                let label = match v.kind {
                    "default" => b"stateless/v1/derive/default".to_vec(),
                    kind => [b"stateless/v1/derive/", kind.as_bytes(), b":", v.target].concat(),
                };
                let derived = hkdf32(&site_bytes, &label);
                let id = Key::from_bytes(derived).id();
                assert_ne!(id, site.id());
                text += &format!("label-hex: {}\nexpect: success\n", hex_encode(&label));
                text += &format!("derived-key: stateless-key-v1:{}\nderived-key-id: {id}\n", hex_encode(&derived));
            }
            Want::Err(e) => text += &format!("expect: error\nerror: {e}\n"),
        }
        fs::write(dir.join(v.name), text).expect("writing a vector");
    }
    all.len()
}
