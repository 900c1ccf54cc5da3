//! Generates the bundle test-vector catalogue in `tests/vectors/`.
//!
//! ```text
//! cargo run -p stateless-bundle --example gen_vectors -- tests/vectors
//! cargo run -p stateless-bundle --example gen_vectors -- tests/vectors sig_ ok_signed
//! ```
//!
//! Every run draws fresh keys and salts, so every vector file changes; the
//! expectations do not. Stale vector files (any file in the directory without
//! a `.` in its name) are deleted first. Nothing but the vector files is
//! written: each test key lives only in the text header of its own vector.
//! Name prefixes after the directory limit the run to the vectors whose
//! names start with one of them (and deletes only stale files with those
//! prefixes), so that adding vectors does not rewrite the whole catalogue:
//! the publisher signature vectors were added with `sig_ ok_signed`.
//!
//! # File format
//!
//! A small UTF-8 text header of `name: value` lines, one empty line, then the
//! raw bundle bytes (like rage's testkit). Header lines:
//!
//! * `expect: success` or `expect: error`
//! * `error: TEXT` — TEXT is a substring of the `Display` of the error that
//!   `BundleReader::new(..)?.authenticate(key, &limits)?.extract(..)` returns.
//! * `key: stateless-key-v1:HEX` — the site key to open with (omitted: none).
//! * `pubkey: stateless-public-key-v1:HEX` — the publisher public key whose
//!   signature the reader requires (`Authenticated::require_signature`
//!   between `authenticate` and `extract`); omitted: no signature is
//!   required, and one that is present is not checked.
//! * `limits: NAME=N ...` — overrides of [`Limits::default`]
//!   (`max_payload`, `max_expanded`, `max_entries`, `max_path`).
//! * `tree-sha256: HEX` — for success: the digest of the tree listing below.
//! * `tree: LINE` — for success: the listing lines themselves, for diagnosis.
//! * `known-bug: TEXT` — the library does not behave as `expect` says yet;
//!   the test then requires that it still misbehaves (strict xfail), so that
//!   fixing the bug forces this line to be removed.
//! * `comment: TEXT` — free text, any number of lines.
//!
//! # Tree listing
//!
//! The extracted tree (the destination directory itself excluded) is listed
//! one line per path, sorted by the path's bytes, each line ending in `\n`;
//! `tree-sha256` is the SHA-256 of the concatenated lines. Paths are relative,
//! `/`-separated and never contain whitespace in these vectors. Modes are
//! `st_mode & 0o7777` in four octal digits, times are `st_mtime` seconds:
//!
//! ```text
//! PATH dir MODE MTIME
//! PATH file MODE MTIME NLINK SIZE SHA256-OF-CONTENT
//! PATH symlink MTIME SHA256-OF-TARGET-BYTES
//! ```
//!
//! The generator computes the listing from its own model of the tree it put
//! in the tar (not by extracting), so a vector checks the extractor against
//! an independent expectation. Every valid tree lists its directories
//! explicitly: an implicitly created parent would get the umask's mode and
//! the current time.
//!
//! # How the bundles are made
//!
//! Only the crate's public API and its own dependencies are used:
//!
//! 1. a tar stream is written with `tar::Builder::append` over hand-made
//!    `tar::Header`s (raw name fields, so that `..`, absolute paths and
//!    other things `tar::Builder::append_data` refuses can be written), plus
//!    hand-written pax (`x`, `g`) and GNU long-name (`L`) members;
//! 2. it is compressed with `zstd::Encoder` at level 3 (window log 24 for
//!    `zstd_window_too_large`);
//! 3. for an encrypted bundle the header is built with the final payload
//!    length, serialised with `Header::to_bytes(Some(&key))`, and
//!    `RawHeader::parse(..).authenticate(Some(&key))` yields the `PayloadKey`
//!    for `StreamWriter` (the key depends only on the key and the salt);
//! 4. the header is serialised again with the payload's length and SHA-256.
//!
//! Broken vectors then change exactly one thing. Header fields that
//! `Header::to_bytes` cannot express (reserved bytes, unknown codes, ...) are
//! patched into the bytes and the tag is recomputed with an independent
//! implementation of the header MAC (HKDF-SHA256(salt, key) with info
//! `stateless-bundle/v1/header`, then HMAC-SHA256 over bytes 0..288; plain
//! SHA-256 when unencrypted), which is checked against `Header::to_bytes`
//! first, so that only the named rule is broken. Payloads of an exact number
//! of 64 KiB chunks are made by growing a file of random hex digits until the
//! compressed tar has exactly that length. STREAM chunks sealed with the wrong "last"
//! flag are taken from a second encryption of a longer plaintext under the
//! same payload key (chunk `i` of both encryptions uses the same nonce).
//!
//! Signed vectors (`ok_signed*`, `sig_*`) are signed with
//! `Header::sign` once the payload digest is in the header, checked against
//! an independent signature: ed25519-dalek over bytes 0..208 of the header
//! with the flag and signer set, the signer id being
//! `SHA-256("stateless-bundle/v1/signer" || public key)[0..8]`. Each uses a
//! publisher key drawn for it; the vector carries only the public key. A
//! payload "swapped by a site-key holder" is the same plaintext with one bit
//! flipped, encrypted again under the payload key the site key and salt give,
//! with the signed header left as it was.
//!
//! The per-vector comments say what each vector breaks.

// A generator: failing loudly on an unexpected state is the right behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::path::Path;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use stateless_bundle::header::HEADER_LEN;
use stateless_bundle::key::{KEY_FILE_PREFIX, hex_encode};
use stateless_bundle::stream::{CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, PayloadKey, StreamWriter, encrypted_len};
use stateless_bundle::{
    Cipher, Header, Key, KeyId, Limits, PackOptions, PublicKey, RawHeader, RelPath, Scope, SigningKey, pack,
};

const MTIME: u64 = 1_700_000_000;
const CREATED: i64 = 1_700_000_000;
const MAX_VECTOR: usize = 200 * 1024;
const MAX_TOTAL: usize = 2 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Small helpers

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn sha_hex(data: &[u8]) -> String {
    hex_encode(&sha256(data))
}

/// Deterministic incompressible bytes (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn compress(data: &[u8], window_log: Option<u32>) -> Vec<u8> {
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    if let Some(w) = window_log {
        enc.window_log(w).unwrap();
    }
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn key_line(key: &Key) -> String {
    format!("{KEY_FILE_PREFIX}{}", hex_encode(key.as_bytes()))
}

// ---------------------------------------------------------------------------
// Tar writing with an independent model of the expected tree

enum Node {
    Dir { mode: u32 },
    File { inode: usize },
    Symlink { target: Vec<u8> },
}

struct Inode {
    mode: u32,
    mtime: u64,
    data: Vec<u8>,
}

/// A tar stream under construction, plus the tree extraction should give.
struct Tar {
    b: tar::Builder<Vec<u8>>,
    entries: u32,
    nodes: BTreeMap<String, (Node, u64)>,
    inodes: Vec<Inode>,
}

fn tar_header(kind: tar::EntryType, name: &[u8], link: &[u8], mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    let old = h.as_old_mut();
    assert!(name.len() <= old.name.len() && link.len() <= old.linkname.len());
    old.name[..name.len()].copy_from_slice(name);
    old.linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    h
}

impl Tar {
    fn new() -> Tar {
        Tar { b: tar::Builder::new(Vec::new()), entries: 0, nodes: BTreeMap::new(), inodes: Vec::new() }
    }

    /// Appends one member exactly as given, outside the model.
    fn raw(&mut self, kind: tar::EntryType, name: &[u8], link: &[u8], mode: u32, data: &[u8]) -> &mut Tar {
        let h = tar_header(kind, name, link, mode, data.len() as u64);
        self.raw_header(&h, data)
    }

    fn raw_header(&mut self, h: &tar::Header, data: &[u8]) -> &mut Tar {
        self.b.append(h, data).unwrap();
        if !matches!(
            h.entry_type(),
            tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink
        ) {
            self.entries += 1;
        }
        self
    }

    /// A pax `x` (or `g`) member carrying `records`; it describes the next member.
    fn pax(&mut self, kind: tar::EntryType, records: &[(&str, &[u8])]) -> &mut Tar {
        let mut data = Vec::new();
        for (k, v) in records {
            // "LEN KEY=VALUE\n" where LEN counts the whole record, itself included.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let name: &[u8] = if kind == tar::EntryType::XGlobalHeader { b"pax_global_header" } else { b"PaxHeader" };
        self.raw(kind, name, b"", 0o644, &data)
    }

    /// A GNU long-name member (`L`) naming the next member.
    fn gnu_longname(&mut self, name: &[u8]) -> &mut Tar {
        let mut data = name.to_vec();
        data.push(0);
        self.raw(tar::EntryType::GNULongName, b"././@LongLink", b"", 0o644, &data)
    }

    fn model(&mut self, path: &str, node: Node, mtime: u64) {
        let norm = RelPath::parse(path.as_bytes(), 4096).unwrap().to_string();
        assert!(self.nodes.insert(norm, (node, mtime)).is_none(), "model path {path} twice");
    }

    fn dir(&mut self, path: &str, mode: u32) -> &mut Tar {
        self.raw(tar::EntryType::Directory, format!("{path}/").as_bytes(), b"", mode, b"");
        self.model(path, Node::Dir { mode }, MTIME);
        self
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Tar {
        self.file_mtime(path, mode, MTIME, data)
    }

    fn file_mtime(&mut self, path: &str, mode: u32, mtime: u64, data: &[u8]) -> &mut Tar {
        let mut h = tar_header(tar::EntryType::Regular, path.as_bytes(), b"", mode, data.len() as u64);
        h.set_mtime(mtime);
        h.set_cksum();
        self.raw_header(&h, data);
        self.inodes.push(Inode { mode, mtime, data: data.to_vec() });
        let inode = self.inodes.len() - 1;
        self.model(path, Node::File { inode }, mtime);
        self
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Tar {
        self.raw(tar::EntryType::Symlink, path.as_bytes(), target.as_bytes(), 0o777, b"");
        self.model(path, Node::Symlink { target: target.as_bytes().to_vec() }, MTIME);
        self
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Tar {
        self.raw(tar::EntryType::Link, path.as_bytes(), target.as_bytes(), 0o644, b"");
        let Some((Node::File { inode }, mtime)) = self.nodes.get(target) else { panic!("hard link to a non-file") };
        let (inode, mtime) = (*inode, *mtime);
        self.model(path, Node::File { inode }, mtime);
        self
    }

    /// The tar stream with its end-of-archive marker.
    fn finish(&mut self) -> Vec<u8> {
        let mut out = self.b.get_ref().clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// The tar stream without an end-of-archive marker.
    fn unterminated(&self) -> Vec<u8> {
        self.b.get_ref().clone()
    }

    /// The listing lines of the model (see the module documentation).
    fn listing(&self) -> Vec<String> {
        let mut nlink = vec![0u64; self.inodes.len()];
        for (node, _) in self.nodes.values() {
            if let Node::File { inode } = node {
                nlink[*inode] += 1;
            }
        }
        self.nodes
            .iter()
            .map(|(path, (node, mtime))| match node {
                Node::Dir { mode } => format!("{path} dir {mode:04o} {mtime}"),
                Node::File { inode } => {
                    let i = &self.inodes[*inode];
                    format!(
                        "{path} file {:04o} {} {} {} {}",
                        i.mode,
                        i.mtime,
                        nlink[*inode],
                        i.data.len(),
                        sha_hex(&i.data)
                    )
                }
                Node::Symlink { target } => format!("{path} symlink {mtime} {}", sha_hex(target)),
            })
            .collect()
    }
}

/// A representative configuration tree: every kind of entry a bundle carries.
fn small_tree() -> Tar {
    let mut t = Tar::new();
    t.dir("etc", 0o755)
        .file("etc/hostname", 0o644, b"node42\n")
        .file("etc/motd", 0o644, b"Welcome to a stateless node.\n")
        .file("etc/.wh.issue", 0o644, b"")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .symlink("etc/motd.link", "motd")
        .dir("etc/ssh", 0o755)
        .dir("etc/ssh/sshd_config.d", 0o700)
        .file("etc/ssh/sshd_config.d/10-site.conf", 0o600, b"PermitRootLogin no\nPasswordAuthentication no\n")
        .file("etc/empty.conf", 0o644, b"")
        .dir("opt", 0o755)
        .file("opt/.wh..wh..opq", 0o644, b"")
        .dir("usr", 0o755)
        .dir("usr/local", 0o755)
        .dir("usr/local/bin", 0o755)
        .file("usr/local/bin/hello", 0o755, b"#!/bin/sh\necho hello\n")
        .hardlink("usr/local/bin/hi", "usr/local/bin/hello")
        .symlink("usr/local/bin/greet", "../../local/bin/hello");
    t
}

/// A tree of one file of random hex digits whose compressed tar is exactly
/// `target` bytes. Hex digits cost about half a byte each once compressed,
/// so the compressed length can be tuned byte by byte (random binary data
/// cannot: zstd stores it in steps of about 256 bytes).
fn exact_compressed(target: usize, seed: u64) -> (Tar, Vec<u8>, Vec<u8>) {
    let build = |n: usize| {
        let data: Vec<u8> = noise(n, seed).iter().map(|b| b"0123456789abcdef"[usize::from(b & 15)]).collect();
        let mut t = Tar::new();
        t.dir("data", 0o755).file("data/blob.hex", 0o644, &data);
        let tar = t.finish();
        let z = compress(&tar, None);
        (t, tar, z)
    };
    let mut n = 2 * target;
    for _ in 0..20 {
        let (t, tar, z) = build(n);
        if z.len() == target {
            return (t, tar, z);
        }
        let diff = target as i64 - z.len() as i64;
        if diff.abs() < 16 {
            break;
        }
        n = (n as i64 + 2 * diff) as usize;
    }
    for m in n.saturating_sub(200)..n + 200 {
        let (t, tar, z) = build(m);
        if z.len() == target {
            return (t, tar, z);
        }
    }
    panic!("no file size compresses to exactly {target} bytes");
}

// ---------------------------------------------------------------------------
// Bundles

#[derive(Clone)]
struct Bundle {
    key: Option<Key>,
    header: Header,
    payload: Vec<u8>,
}

fn base_header(key: Option<&Key>) -> Header {
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt).unwrap();
    Header {
        cipher: if key.is_some() { Cipher::Aes256GcmStream } else { Cipher::None },
        key_id: key.map(Key::id).unwrap_or_default(),
        salt,
        generation: 7,
        created: CREATED,
        expires: None,
        kind: stateless_bundle::PayloadKind::TarZstd,
        payload_len: 0,
        expanded_len: 0,
        entry_count: 0,
        scope: Scope::Any,
        payload_sha256: [0; 32],
        signature: None,
    }
}

fn payload_key(header: &Header, key: &Key) -> PayloadKey {
    let bytes = header.to_bytes(Some(key)).unwrap();
    RawHeader::parse(&bytes).unwrap().authenticate(Some(key)).unwrap().1.unwrap()
}

fn encrypt(pk: &PayloadKey, plain: &[u8]) -> Vec<u8> {
    let mut w = StreamWriter::new(pk, Vec::new());
    w.write_all(plain).unwrap();
    w.finish().unwrap()
}

impl Bundle {
    fn new(key: Option<&Key>, tar: &[u8], entries: u32) -> Bundle {
        Bundle::from_compressed(key, compress(tar, None), tar.len() as u64, entries)
    }

    fn from_tar(key: Option<&Key>, t: &mut Tar) -> Bundle {
        let entries = t.entries;
        Bundle::new(key, &t.finish(), entries)
    }

    fn from_compressed(key: Option<&Key>, plain: Vec<u8>, expanded_len: u64, entries: u32) -> Bundle {
        let mut header = base_header(key);
        header.expanded_len = expanded_len;
        header.entry_count = entries;
        let payload = match key {
            None => plain,
            Some(k) => {
                header.payload_len = encrypted_len(plain.len() as u64);
                encrypt(&payload_key(&header, k), &plain)
            }
        };
        let mut b = Bundle { key: key.cloned(), header, payload };
        b.seal_payload();
        b
    }

    /// Sets the header's payload length and digest from `self.payload`.
    fn seal_payload(&mut self) {
        self.header.payload_len = self.payload.len() as u64;
        self.header.payload_sha256 = sha256(&self.payload);
    }

    fn payload_key(&self) -> PayloadKey {
        payload_key(&self.header, self.key.as_ref().unwrap())
    }

    /// Signs the header as `sk` (after `seal_payload`: the digest is signed),
    /// checking the crate's signature against an independent one.
    fn signed(mut self, sk: &SigningKey) -> Bundle {
        self.header.sign(sk).unwrap();
        let h = self.header_bytes();
        let seed = sk_seed(sk);
        let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = dalek.verifying_key().to_bytes();
        let mut id = Sha256::new();
        id.update(b"stateless-bundle/v1/signer");
        id.update(public);
        assert_eq!(h[12..16], [0, 0, 0, 1], "signed flag");
        assert_eq!(h[208..216], id.finalize()[..8], "signer id differs from the documented derivation");
        use ed25519_dalek::Signer;
        assert_eq!(h[216..280], dalek.sign(&h[..208]).to_bytes(), "signature differs from an independent one");
        self
    }

    fn header_bytes(&self) -> [u8; HEADER_LEN] {
        self.header.to_bytes(self.key.as_ref()).unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.header_bytes().to_vec();
        out.extend_from_slice(&self.payload);
        out
    }

    /// The bytes with the header patched by `f` and re-tagged, so that only
    /// the patched rule is broken.
    fn patched(&self, f: impl FnOnce(&mut [u8; HEADER_LEN])) -> Vec<u8> {
        let mut h = self.header_bytes();
        f(&mut h);
        retag(&mut h, self.key.as_ref());
        let mut out = h.to_vec();
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Recomputes the header tag (independently of the crate; see the module doc).
fn retag(h: &mut [u8; HEADER_LEN], key: Option<&Key>) {
    let tag: [u8; 32] = match key {
        None => sha256(&h[..288]),
        Some(key) => {
            let hk = Hkdf::<Sha256>::new(Some(&h[32..64]), key.as_bytes());
            let mut hkey = [0u8; 32];
            hk.expand(b"stateless-bundle/v1/header", &mut hkey).unwrap();
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&hkey).unwrap();
            mac.update(&h[..288]);
            mac.finalize().into_bytes().into()
        }
    };
    h[288..].copy_from_slice(&tag);
}

// ---------------------------------------------------------------------------
// Vectors

/// The Ed25519 seed of a signing key, read back from its key file text (the
/// crate gives no other way to the secret).
fn sk_seed(sk: &SigningKey) -> [u8; 32] {
    let text = sk.to_file_text();
    let hex = text.lines().find_map(|l| l.strip_prefix("stateless-signing-key-v1:")).unwrap();
    let mut seed = [0u8; 32];
    assert!(stateless_bundle::key::hex_decode(hex, &mut seed));
    seed
}

#[derive(Default)]
struct Vector {
    name: &'static str,
    bytes: Vec<u8>,
    key: Option<Key>,
    pubkey: Option<PublicKey>,
    error: Option<String>,
    tree: Option<Vec<String>>,
    limits: Vec<(&'static str, u64)>,
    known_bug: Option<String>,
    comments: Vec<String>,
}

impl Vector {
    fn ok(name: &'static str, b: &Bundle, tree: Vec<String>, comment: &str) -> Vector {
        Vector {
            name,
            bytes: b.bytes(),
            key: b.key.clone(),
            tree: Some(tree),
            comments: vec![comment.to_owned()],
            ..Default::default()
        }
    }

    fn err(name: &'static str, bytes: Vec<u8>, key: Option<&Key>, error: impl Into<String>, comment: &str) -> Vector {
        Vector {
            name,
            bytes,
            key: key.cloned(),
            error: Some(error.into()),
            comments: vec![comment.to_owned()],
            ..Default::default()
        }
    }

    /// Requires a signature by `pk` when the vector is opened.
    fn pubkey(mut self, pk: PublicKey) -> Vector {
        self.pubkey = Some(pk);
        self
    }

    fn limits(mut self, limits: &[(&'static str, u64)]) -> Vector {
        self.limits = limits.to_vec();
        self
    }

    /// Marks a vector whose expectation the library does not meet yet (none
    /// at the moment; kept so that a bug found later is recorded, not lost).
    #[allow(dead_code)]
    fn known_bug(mut self, text: &str) -> Vector {
        self.known_bug = Some(text.to_owned());
        self
    }

    fn text_header(&self) -> String {
        let mut s = String::new();
        match (&self.error, &self.tree) {
            (Some(e), None) => s += &format!("expect: error\nerror: {e}\n"),
            (None, Some(_)) => s += "expect: success\n",
            _ => panic!("{}: exactly one of error and tree", self.name),
        }
        if let Some(k) = &self.key {
            s += &format!("key: {}\n", key_line(k));
        }
        if let Some(pk) = &self.pubkey {
            s += &format!("pubkey: {}\n", pk.to_line());
        }
        if !self.limits.is_empty() {
            let l: Vec<String> = self.limits.iter().map(|(n, v)| format!("{n}={v}")).collect();
            s += &format!("limits: {}\n", l.join(" "));
        }
        if let Some(tree) = &self.tree {
            let mut all = String::new();
            for line in tree {
                all += line;
                all.push('\n');
            }
            s += &format!("tree-sha256: {}\n", sha_hex(all.as_bytes()));
            for line in tree {
                s += &format!("tree: {line}\n");
            }
        }
        if let Some(b) = &self.known_bug {
            s += &format!("known-bug: {b}\n");
        }
        for c in &self.comments {
            s += &format!("comment: {c}\n");
        }
        assert!(!s.contains("\n\n") && !s.contains('\r'), "{}: a header value spans lines", self.name);
        s.push('\n');
        s
    }
}

fn short(id: KeyId) -> String {
    id.short()
}

fn vectors() -> Vec<Vector> {
    let mut v = Vec::new();
    let k = || Key::generate().unwrap();

    // -- valid bundles ------------------------------------------------------
    {
        let key = k();
        let mut t = small_tree();
        let b = Bundle::from_tar(Some(&key), &mut t);
        v.push(Vector::ok(
            "ok_small_tree",
            &b,
            t.listing(),
            "encrypted: dirs with modes, files, empty file, absolute and relative symlinks, a hard link, a whiteout and an opaque marker",
        ));
    }
    {
        let mut t = small_tree();
        let b = Bundle::from_tar(None, &mut t);
        v.push(Vector::ok(
            "ok_unencrypted",
            &b,
            t.listing(),
            "the small tree, unencrypted (SHA-256 header checksum and payload digest)",
        ));
    }
    {
        let key = k();
        let mut t = Tar::new();
        let b = Bundle::from_tar(Some(&key), &mut t);
        v.push(Vector::ok(
            "ok_empty_tree",
            &b,
            t.listing(),
            "encrypted; the tar holds only its end-of-archive marker; 0 entries",
        ));
    }
    {
        let mut t = Tar::new();
        let b = Bundle::from_tar(None, &mut t);
        v.push(Vector::ok(
            "ok_empty_tree_unencrypted",
            &b,
            t.listing(),
            "unencrypted; the tar holds only its end-of-archive marker",
        ));
    }
    let (exact_t, exact_tar, exact_z) = exact_compressed(CHUNK_SIZE, 1);
    {
        let key = k();
        let b = Bundle::from_compressed(Some(&key), exact_z.clone(), exact_tar.len() as u64, exact_t.entries);
        assert_eq!(b.payload.len(), ENCRYPTED_CHUNK_SIZE);
        v.push(Vector::ok(
            "ok_exact_chunk",
            &b,
            exact_t.listing(),
            "compressed payload is exactly 65536 bytes: one full chunk, sealed as the last",
        ));
    }
    let (two_t, two_tar, two_z) = exact_compressed(2 * CHUNK_SIZE, 2);
    {
        let key = k();
        let b = Bundle::from_compressed(Some(&key), two_z.clone(), two_tar.len() as u64, two_t.entries);
        assert_eq!(b.payload.len(), 2 * ENCRYPTED_CHUNK_SIZE);
        v.push(Vector::ok(
            "ok_two_exact_chunks",
            &b,
            two_t.listing(),
            "compressed payload is exactly 131072 bytes: chunk 0 not last, chunk 1 full and last",
        ));
    }
    {
        let mut t = Tar::new();
        t.raw(tar::EntryType::Directory, b"./", b"", 0o700, b"");
        t.raw(tar::EntryType::Directory, b"./etc/", b"", 0o755, b"");
        t.model("etc", Node::Dir { mode: 0o755 }, MTIME);
        let mut h = tar_header(tar::EntryType::Regular, b"./etc//hosts", b"", 0o644, 10);
        h.set_cksum();
        t.raw_header(&h, b"127.0.0.1\n");
        t.inodes.push(Inode { mode: 0o644, mtime: MTIME, data: b"127.0.0.1\n".to_vec() });
        t.model("etc/hosts", Node::File { inode: 0 }, MTIME);
        let key = k();
        let b = Bundle::from_tar(Some(&key), &mut t);
        v.push(Vector::ok(
            "ok_dot_prefixed_paths",
            &b,
            t.listing(),
            "GNU tar style: a ./ root entry (counted, its mode ignored) and ./etc//hosts normalised to etc/hosts",
        ));
    }
    {
        let mut t = Tar::new();
        t.dir("ro", 0o555).dir("ro/sub", 0o500).file("ro/sub/file", 0o400, b"read only\n").file("ro/x", 0o444, b"x\n");
        let key = k();
        let b = Bundle::from_tar(Some(&key), &mut t);
        v.push(Vector::ok(
            "ok_readonly_dirs",
            &b,
            t.listing(),
            "read-only directories: their modes must be applied after their contents are written",
        ));
    }
    {
        let long_dir = format!("etc/{}", "d".repeat(120));
        let long_file = format!("{long_dir}/{}.conf", "f".repeat(200));
        let pax_file = format!("{long_dir}/{}.pax", "p".repeat(150));
        let mut t = Tar::new();
        t.dir("etc", 0o755);
        t.gnu_longname(format!("{long_dir}/").as_bytes());
        t.raw(tar::EntryType::Directory, b"etc/truncated-name", b"", 0o755, b"");
        t.model(&long_dir, Node::Dir { mode: 0o755 }, MTIME);
        t.gnu_longname(long_file.as_bytes());
        t.raw(tar::EntryType::Regular, b"etc/truncated-name2", b"", 0o644, b"long\n");
        t.inodes.push(Inode { mode: 0o644, mtime: MTIME, data: b"long\n".to_vec() });
        t.model(&long_file, Node::File { inode: 0 }, MTIME);
        t.pax(tar::EntryType::XHeader, &[("path", pax_file.as_bytes())]);
        t.raw(tar::EntryType::Regular, b"etc/pax-ustar-name", b"", 0o640, b"pax\n");
        t.inodes.push(Inode { mode: 0o640, mtime: MTIME, data: b"pax\n".to_vec() });
        t.model(&pax_file, Node::File { inode: 1 }, MTIME);
        let key = k();
        let b = Bundle::from_tar(Some(&key), &mut t);
        v.push(Vector::ok(
            "ok_long_names",
            &b,
            t.listing(),
            "paths over 100 bytes: a GNU long-name (L) directory and file, and a pax path record",
        ));
    }
    {
        let key = k();
        let mut t = small_tree();
        let mut b = Bundle::from_tar(Some(&key), &mut t);
        b.header.scope = Scope::Node("web-01.example".into());
        b.header.expires = Some(CREATED + 86_400);
        b.header.generation = u64::MAX;
        v.push(Vector::ok(
            "ok_header_fields",
            &b,
            t.listing(),
            "node scope, an expiry and generation u64::MAX: the reader parses them (policy is the loader's)",
        ));
    }
    {
        let key = k();
        let (b, tree) = packed(&key);
        v.push(Vector::ok(
            "ok_pack_output",
            &b,
            tree,
            "made by stateless_bundle::pack from a real directory (a deletion of etc/motd included): reader and writer agree",
        ));
    }

    // -- header -------------------------------------------------------------
    let key = k();
    let small = Bundle::from_tar(Some(&key), &mut small_tree());
    let plain_small = Bundle::from_tar(None, &mut small_tree());
    {
        let mut bytes = small.bytes();
        bytes[7] = b'X';
        v.push(Vector::err(
            "header_bad_magic",
            bytes,
            Some(&key),
            "not a stateless bundle (bad magic)",
            "magic STLSBNDX",
        ));
        v.push(Vector::err(
            "header_empty_file",
            Vec::new(),
            Some(&key),
            "truncated: bundle is 0 bytes, shorter than the 320-byte header",
            "a zero-byte file",
        ));
        let mut bytes = small.bytes();
        bytes[HEADER_LEN - 1] ^= 0x01;
        v.push(Vector::err(
            "header_bad_tag",
            bytes,
            Some(&key),
            "header authentication failed: the header was modified or is corrupt",
            "last bit of the HMAC tag flipped",
        ));
        let mut bytes = small.bytes();
        bytes[71] ^= 0x01;
        v.push(Vector::err(
            "header_modified_field",
            bytes,
            Some(&key),
            "header authentication failed: the header was modified or is corrupt",
            "generation changed from 7 to 6 without re-tagging (a rollback attempt)",
        ));
        let mut bytes = plain_small.bytes();
        bytes[71] ^= 0x01;
        v.push(Vector::err(
            "header_bad_checksum_unencrypted",
            bytes,
            None,
            "header checksum mismatch: the header is corrupt",
            "unencrypted; generation changed without recomputing the SHA-256 checksum",
        ));
        let bytes = small.patched(|h| h[8..10].copy_from_slice(&2u16.to_be_bytes()));
        v.push(Vector::err(
            "header_unknown_version",
            bytes,
            Some(&key),
            "unknown bundle format version 2 (this build reads version 1)",
            "format version 2, tag valid",
        ));
        let other = k();
        v.push(Vector::err(
            "header_wrong_key",
            small.bytes(),
            Some(&other),
            format!("bundle is sealed for key {}, this key is {}", short(key.id()), short(other.id())),
            "sealed for one key, the vector's key is another",
        ));
        v.push(Vector::err(
            "header_key_required",
            small.bytes(),
            None,
            format!("bundle is encrypted for key {}; no key was given", short(key.id())),
            "encrypted bundle opened without a key (no key line in this vector)",
        ));
        let bytes = small.bytes()[..200].to_vec();
        v.push(Vector::err(
            "header_truncated",
            bytes,
            Some(&key),
            "truncated: bundle is 200 bytes, shorter than the 320-byte header",
            "the file ends inside the header",
        ));
        let bytes = small.patched(|h| h[207] = 1);
        v.push(Vector::err(
            "header_reserved_nonzero",
            bytes,
            Some(&key),
            "malformed header: reserved bytes are not zero",
            "reserved byte 207 is 1, tag valid (byte 206 is the payload kind)",
        ));
        let bytes = small.patched(|h| h[287] = 0x80);
        v.push(Vector::err(
            "header_reserved_tail_nonzero",
            bytes,
            Some(&key),
            "malformed header: reserved bytes are not zero",
            "reserved byte 287 is 0x80, tag valid",
        ));
        let bytes = small.patched(|h| h[10] = 2);
        v.push(Vector::err("header_unknown_cipher", bytes, Some(&key), "unknown cipher 2", "cipher code 2, tag valid"));
        let bytes = small.patched(|h| h[11] = 0);
        v.push(Vector::err(
            "header_unknown_compression",
            bytes,
            Some(&key),
            "unknown compression 0",
            "compression code 0, tag valid",
        ));
        let bytes = small.patched(|h| h[15] = 0x02);
        v.push(Vector::err(
            "header_unknown_flags",
            bytes,
            Some(&key),
            "unknown header flags 0x2",
            "flag bit 1 set, tag valid",
        ));
        let bytes = plain_small.patched(|h| h[16] = 1);
        v.push(Vector::err(
            "header_key_id_unencrypted",
            bytes,
            None,
            "malformed header: key id must be zero exactly when unencrypted",
            "cipher none with a non-zero key id, checksum valid",
        ));
        let bytes = small.patched(|h| h[88..96].copy_from_slice(&(ENCRYPTED_CHUNK_SIZE as u64 + 16).to_be_bytes()));
        v.push(Vector::err(
            "header_invalid_stream_length",
            bytes,
            Some(&key),
            "malformed header: payload length is not a valid STREAM length",
            "payload length 65568 = a full chunk plus a bare tag, which no plaintext encrypts to; tag valid",
        ));
        let bytes = small.patched(|h| {
            h[108] = 1;
            h[109] = 3;
            h[110..113].copy_from_slice(b"web");
            h[113] = b'x';
        });
        v.push(Vector::err(
            "header_scope_padding_nonzero",
            bytes,
            Some(&key),
            "malformed header: scope name padding is not zero",
            "scope node:web with a byte after the name, tag valid",
        ));
        let bytes = small.patched(|h| {
            h[108] = 2;
            h[109] = 4;
            h[110..114].copy_from_slice(b"../x");
        });
        v.push(Vector::err(
            "header_scope_bad_name",
            bytes,
            Some(&key),
            "bad scope: name may use only A-Z a-z 0-9 . _ : - and must not start with a dot",
            "group scope named ../x, tag valid",
        ));
        let bytes = small.patched(|h| {
            h[109] = 3;
            h[110..113].copy_from_slice(b"web");
        });
        v.push(Vector::err(
            "header_scope_any_with_name",
            bytes,
            Some(&key),
            "bad scope: scope any carries a name",
            "scope any with a name, tag valid",
        ));
        let bytes = small.patched(|h| h[109] = 65);
        v.push(Vector::err(
            "header_scope_name_too_long",
            bytes,
            Some(&key),
            "bad scope: name length over 64",
            "scope name length 65, tag valid",
        ));
        let bytes = small.patched(|h| h[216] = 1);
        v.push(Vector::err(
            "header_signature_without_flag",
            bytes,
            Some(&key),
            "malformed header: signature slot is filled but the signed flag is clear",
            "a byte of the signature slot set while the signed flag is clear, tag valid",
        ));
    }

    // -- STREAM payload -----------------------------------------------------
    {
        // The exact-chunk payload again, but its only chunk sealed as "not last".
        let key = k();
        let mut b = Bundle::from_compressed(Some(&key), exact_z.clone(), exact_tar.len() as u64, exact_t.entries);
        let mut longer = exact_z.clone();
        longer.push(0);
        let ct = encrypt(&b.payload_key(), &longer);
        b.payload = ct[..ENCRYPTED_CHUNK_SIZE].to_vec();
        b.seal_payload();
        v.push(Vector::err(
            "stream_no_final_chunk",
            b.bytes(),
            Some(&key),
            "authentication failed in chunk 0: the payload was modified or is corrupt",
            "the ok_exact_chunk payload with its only chunk sealed as not-last (the last chunk was cut off)",
        ));
    }
    {
        let key = k();
        let (t, tar, z) = exact_compressed(2 * CHUNK_SIZE + 700, 3);
        let mut b = Bundle::from_compressed(Some(&key), z, tar.len() as u64, t.entries);
        assert_eq!(b.payload.len(), 2 * ENCRYPTED_CHUNK_SIZE + 716);
        b.payload[ENCRYPTED_CHUNK_SIZE + 1000] ^= 0x10;
        b.seal_payload();
        v.push(Vector::err(
            "stream_flipped_bit_chunk1",
            b.bytes(),
            Some(&key),
            "authentication failed in chunk 1: the payload was modified or is corrupt",
            "three chunks; one ciphertext bit flipped in chunk 1 (of 0..2); header tag valid",
        ));
    }
    {
        let key = k();
        let mut b = Bundle::from_tar(Some(&key), &mut small_tree());
        let last = b.payload.len() - 1;
        b.payload[last] ^= 0x80;
        b.seal_payload();
        v.push(Vector::err(
            "stream_flipped_tag_last_chunk",
            b.bytes(),
            Some(&key),
            "authentication failed in chunk 0: the payload was modified or is corrupt",
            "single chunk; a bit of its GCM tag flipped",
        ));
    }
    {
        let key = k();
        let b = Bundle::from_tar(Some(&key), &mut small_tree());
        let mut bytes = b.bytes();
        bytes.truncate(bytes.len() - 10);
        let got = b.payload.len() - 10;
        v.push(Vector::err(
            "stream_truncated",
            bytes,
            Some(&key),
            format!("truncated: payload is {got} bytes, the header declares {}", b.payload.len()),
            "the file ends 10 bytes before the declared payload length",
        ));
        let mut bytes = b.bytes();
        bytes.extend_from_slice(b"garbage");
        v.push(Vector::err(
            "stream_trailing_garbage",
            bytes,
            Some(&key),
            "trailing data after the end of the bundle",
            "7 bytes after the declared payload",
        ));
    }
    {
        // Chunk 0 sealed as last (a whole valid bundle), then chunk 1.
        let key = k();
        let mut b = Bundle::from_compressed(Some(&key), exact_z.clone(), exact_tar.len() as u64, exact_t.entries);
        let mut longer = exact_z.clone();
        longer.extend_from_slice(&[0u8; 100]);
        let second = encrypt(&b.payload_key(), &longer);
        let extra = second[ENCRYPTED_CHUNK_SIZE..].to_vec();
        let mut undeclared = b.bytes();
        undeclared.extend_from_slice(&extra);
        b.payload.extend_from_slice(&extra);
        b.seal_payload();
        v.push(Vector::err(
            "stream_extra_chunk_after_final",
            b.bytes(),
            Some(&key),
            "authentication failed in chunk 0: the payload was modified or is corrupt",
            "chunk 0 sealed as last, then a valid chunk 1 (100 bytes, last); the header declares both",
        ));
        v.push(Vector::err(
            "stream_extra_chunk_after_final_undeclared",
            undeclared,
            Some(&key),
            "trailing data after the end of the bundle",
            "a valid one-chunk bundle followed by a valid chunk 1 the header does not declare",
        ));
    }
    {
        let key = k();
        let mut b = Bundle::from_compressed(Some(&key), two_z.clone(), two_tar.len() as u64, two_t.entries);
        let (c0, c1) = b.payload.split_at(ENCRYPTED_CHUNK_SIZE);
        b.payload = [c1, c0].concat();
        b.seal_payload();
        v.push(Vector::err(
            "stream_chunks_reordered",
            b.bytes(),
            Some(&key),
            "authentication failed in chunk 0: the payload was modified or is corrupt",
            "the ok_two_exact_chunks payload with its two chunks swapped",
        ));
    }
    {
        let key = k();
        let a = Bundle::from_tar(Some(&key), &mut small_tree());
        let other = Bundle::from_tar(Some(&key), &mut small_tree());
        assert_eq!(a.payload.len(), other.payload.len());
        let mut b = a.clone();
        b.payload = other.payload.clone();
        b.seal_payload();
        v.push(Vector::err(
            "stream_payload_from_other_bundle",
            b.bytes(),
            Some(&key),
            "authentication failed in chunk 0: the payload was modified or is corrupt",
            "same key and tree, the payload of another bundle (other salt, so other payload key); header tag valid",
        ));
    }
    {
        let key = k();
        let b = Bundle::from_compressed(Some(&key), Vec::new(), 0, 0);
        v.push(Vector::err(
            "stream_empty_plaintext",
            b.bytes(),
            Some(&key),
            "corrupt bundle: payload ended unexpectedly",
            "a valid STREAM of empty plaintext: there is no zstd frame at all, which pack never writes",
        ));
        let b = Bundle::from_compressed(None, Vec::new(), 0, 0);
        v.push(Vector::err(
            "unencrypted_empty_payload",
            b.bytes(),
            None,
            "corrupt bundle: payload ended unexpectedly",
            "unencrypted, zero-byte payload with a matching digest: no zstd frame at all",
        ));
    }

    // -- unencrypted payload ------------------------------------------------
    {
        let mut b = Bundle::from_tar(None, &mut small_tree());
        b.header.payload_sha256[0] ^= 1;
        v.push(Vector::err(
            "unencrypted_digest_mismatch",
            b.bytes(),
            None,
            "corrupt bundle: payload digest mismatch",
            "the header's payload SHA-256 has one bit flipped; header checksum recomputed",
        ));
        let b = Bundle::from_tar(None, &mut small_tree());
        let mut bytes = b.bytes();
        let i = bytes.len() - 20;
        bytes[i] ^= 1;
        v.push(Vector::err(
            "unencrypted_payload_modified",
            bytes,
            None,
            "corrupt bundle: payload digest mismatch",
            "a payload byte flipped after the header was made",
        ));
        let mut bytes = b.bytes();
        bytes.truncate(bytes.len() - 5);
        v.push(Vector::err(
            "unencrypted_truncated",
            bytes,
            None,
            format!("truncated: payload is {} bytes, the header declares {}", b.payload.len() - 5, b.payload.len()),
            "unencrypted; the file ends 5 bytes early",
        ));
    }

    // -- tar rules ----------------------------------------------------------
    let tar_vec = |name: &'static str, t: &mut Tar, error: &str, comment: &str| {
        let key = Key::generate().unwrap();
        let b = Bundle::from_tar(Some(&key), t);
        Vector::err(name, b.bytes(), Some(&key), error, comment)
    };
    let base = || {
        let mut t = Tar::new();
        t.dir("etc", 0o755).file("etc/motd", 0o644, b"hi\n");
        t
    };
    {
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"../evil", b"", 0o644, b"x");
        v.push(tar_vec("tar_dotdot_path", &mut t, "../evil: path escapes the root (contains ..)", "entry ../evil"));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"etc/../../evil", b"", 0o644, b"x");
        v.push(tar_vec(
            "tar_dotdot_inner",
            &mut t,
            "etc/../../evil: path escapes the root (contains ..)",
            "entry etc/../../evil",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"/etc/passwd", b"", 0o644, b"root::0:0::/:/bin/sh\n");
        v.push(tar_vec("tar_absolute_path", &mut t, "/etc/passwd: absolute path refused", "entry /etc/passwd"));
        let mut t = base();
        t.pax(tar::EntryType::XHeader, &[("path", b"../pax-evil")]);
        t.raw(tar::EntryType::Regular, b"etc/innocent", b"", 0o644, b"x");
        v.push(tar_vec(
            "tar_pax_path_dotdot",
            &mut t,
            "../pax-evil: path escapes the root (contains ..)",
            "ustar name etc/innocent, overridden by a pax path record ../pax-evil",
        ));
        let mut t = base();
        t.gnu_longname(b"etc/a\0b");
        t.raw(tar::EntryType::Regular, b"etc/ab", b"", 0o644, b"x");
        v.push(tar_vec("tar_nul_in_path", &mut t, "path contains a NUL byte", "a GNU long name etc/a<NUL>b"));
        let mut t = base();
        t.gnu_longname(format!("etc/{}", "c".repeat(256)).as_bytes());
        t.raw(tar::EntryType::Regular, b"etc/c", b"", 0o644, b"x");
        v.push(tar_vec(
            "tar_component_too_long",
            &mut t,
            "path component longer than 255 bytes",
            "a 256-byte path component (GNU long name)",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"etc/this-path-is-long", b"", 0o644, b"x");
        v.push(
            tar_vec(
                "limit_path_length",
                &mut t,
                "etc/this-path-is-long: path longer than 16 bytes",
                "max_path=16; a 21-byte path",
            )
            .limits(&[("max_path", 16)]),
        );
        let mut t = base();
        t.raw(tar::EntryType::Char, b"etc/sda", b"", 0o600, b"");
        v.push(tar_vec("tar_device_node", &mut t, "etc/sda: device node refused", "a character device"));
        let mut t = base();
        t.raw(tar::EntryType::Block, b"etc/loop0", b"", 0o600, b"");
        v.push(tar_vec("tar_block_device", &mut t, "etc/loop0: device node refused", "a block device"));
        let mut t = base();
        t.raw(tar::EntryType::Fifo, b"etc/pipe", b"", 0o600, b"");
        v.push(tar_vec("tar_fifo", &mut t, "etc/pipe: fifo refused", "a fifo"));
        let mut t = base();
        t.raw(tar::EntryType::Symlink, b"etc/evil", b"../../outside", 0o777, b"");
        v.push(tar_vec(
            "tar_symlink_escape",
            &mut t,
            "symlink etc/evil -> ../../outside escapes the root",
            "a relative symlink climbing out of the root",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Link, b"etc/shadow", b"../../etc/shadow", 0o644, b"");
        v.push(tar_vec(
            "tar_hardlink_escape",
            &mut t,
            "hard link etc/shadow -> ../../etc/shadow: target is not an earlier regular file",
            "a hard link whose target climbs out of the root",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Link, b"etc/shadow", b"/etc/shadow", 0o644, b"");
        v.push(tar_vec(
            "tar_hardlink_absolute",
            &mut t,
            "hard link etc/shadow -> /etc/shadow: target is not an earlier regular file",
            "a hard link to an absolute path (a host file)",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Symlink, b"etc/sl", b"motd", 0o777, b"");
        t.raw(tar::EntryType::Link, b"etc/hl", b"etc/sl", 0o644, b"");
        v.push(tar_vec(
            "tar_hardlink_to_symlink",
            &mut t,
            "hard link etc/hl -> etc/sl: target is not an earlier regular file",
            "a hard link to a symlink",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Link, b"etc/hl", b"etc/later", 0o644, b"");
        t.raw(tar::EntryType::Regular, b"etc/later", b"", 0o644, b"x");
        v.push(tar_vec(
            "tar_hardlink_forward",
            &mut t,
            "hard link etc/hl -> etc/later: target is not an earlier regular file",
            "a hard link to a file that comes later",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Link, b"etc/hl", b"etc", 0o644, b"");
        v.push(tar_vec(
            "tar_hardlink_to_dir",
            &mut t,
            "hard link etc/hl -> etc: target is not an earlier regular file",
            "a hard link to a directory",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Symlink, b"host", b"/etc", 0o777, b"");
        t.raw(tar::EntryType::Regular, b"host/passwd", b"", 0o644, b"x");
        v.push(tar_vec(
            "tar_write_through_symlink",
            &mut t,
            "host/passwd: parent host is a symlink, not a directory",
            "symlink host -> /etc (allowed), then a file host/passwd under it",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Symlink, b"etc/dir", b".", 0o777, b"");
        t.raw(tar::EntryType::Regular, b"etc/dir/sub/file", b"", 0o644, b"x");
        v.push(tar_vec(
            "tar_write_through_relative_symlink",
            &mut t,
            "etc/dir/sub/file: parent etc/dir is a symlink, not a directory",
            "symlink etc/dir -> . (allowed), then etc/dir/sub/file below it",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"etc/motd/x", b"", 0o644, b"x");
        v.push(tar_vec(
            "tar_file_under_file",
            &mut t,
            "etc/motd/x: parent etc/motd is a file, not a directory",
            "an entry below a regular file",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"etc/motd", b"", 0o644, b"second\n");
        v.push(tar_vec("tar_duplicate_entry", &mut t, "etc/motd: duplicate entry", "etc/motd twice"));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"./etc//motd", b"", 0o644, b"second\n");
        v.push(tar_vec(
            "tar_duplicate_normalised",
            &mut t,
            "./etc//motd: duplicate entry",
            "etc/motd, then ./etc//motd, which normalises to the same path",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Directory, b"etc/", b"", 0o700, b"");
        v.push(tar_vec(
            "tar_duplicate_dir",
            &mut t,
            "etc/: duplicate entry",
            "directory etc twice, second time with mode 0700",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"etc/.wh.passwd", b"", 0o644, b"not empty");
        v.push(tar_vec(
            "tar_whiteout_with_data",
            &mut t,
            "etc/.wh.passwd: whiteout must be an empty regular file",
            "a whiteout entry with 9 bytes of data",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"etc/.wh.", b"", 0o644, b"");
        v.push(tar_vec(
            "tar_whiteout_malformed",
            &mut t,
            "etc/.wh.: malformed whiteout name",
            "a whiteout naming nothing",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Symlink, b"etc/.wh.passwd", b"motd", 0o777, b"");
        v.push(tar_vec(
            "tar_whiteout_as_symlink",
            &mut t,
            "etc/.wh.passwd",
            "a symlink named like a whiteout (etc/.wh.passwd -> motd)",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Link, b"etc/.wh.passwd", b"etc/motd", 0o644, b"");
        v.push(tar_vec(
            "tar_whiteout_as_hardlink",
            &mut t,
            "etc/.wh.passwd",
            "a hard link named like a whiteout, to the non-empty etc/motd",
        ));
        let mut t = base();
        t.raw(tar::EntryType::Directory, b"etc/.wh..wh..opq/", b"", 0o755, b"");
        v.push(tar_vec("tar_whiteout_as_dir", &mut t, "etc/.wh..wh..opq", "a directory named like the opaque marker"));
        let mut t = base();
        t.raw(tar::EntryType::Regular, b"late/file", b"", 0o644, b"x");
        t.raw(tar::EntryType::Directory, b"late/", b"", 0o755, b"");
        v.push(
            tar_vec(
                "tar_child_before_parent_dir",
                &mut t,
                "late/: duplicate entry",
                "late/file, then the directory late/: extraction creates late implicitly and then refuses the explicit entry",
            ),
        );
        let mut t = base();
        t.pax(tar::EntryType::XGlobalHeader, &[("comment", b"hi")]);
        v.push(tar_vec(
            "tar_pax_global_header",
            &mut t,
            "pax_global_header: pax global header refused",
            "a pax global header (g)",
        ));
        let mut t = base();
        let mut h = tar_header(tar::EntryType::GNUSparse, b"etc/sparse", b"", 0o644, 0);
        h.as_gnu_mut().unwrap().set_real_size(0);
        h.set_cksum();
        t.raw_header(&h, b"");
        v.push(tar_vec("tar_gnu_sparse", &mut t, "etc/sparse: sparse file entry refused", "a GNU sparse entry"));
        // Metadata members the tar reader holds whole are bounded before
        // their data is read: zeros compress to almost nothing.
        for (name, kind, what) in [
            ("tar_longname_member_too_large", tar::EntryType::GNULongName, "GNU long-name"),
            ("tar_longlink_member_too_large", tar::EntryType::GNULongLink, "GNU long-link"),
            ("tar_pax_member_too_large", tar::EntryType::XHeader, "PAX extended header"),
            ("tar_pax_global_member_too_large", tar::EntryType::XGlobalHeader, "PAX global header"),
        ] {
            let mut t = base();
            t.raw(kind, b"././@LongLink", b"", 0o644, &vec![0u8; (1 << 20) + 1]);
            t.raw(tar::EntryType::Regular, b"etc/after", b"", 0o644, b"");
            v.push(tar_vec(
                name,
                &mut t,
                &format!("a tar {what} member of 1048577 bytes is over the limit of 1048576 bytes"),
                &format!("a {what} member of 1 MiB + 1 byte of zeros (the tar reader would hold it whole)"),
            ));
        }
        let mut t = base();
        t.raw(tar::EntryType::new(b'Z'), b"etc/odd", b"", 0o644, b"");
        v.push(tar_vec("tar_unknown_type", &mut t, "etc/odd: unsupported entry type refused", "entry type 'Z'"));
        let mut t = base();
        let mut h = tar_header(tar::EntryType::Regular, b"etc/bad-sum", b"", 0o644, 1);
        h.as_old_mut().cksum[0] ^= 1;
        t.raw_header(&h, b"x");
        v.push(tar_vec(
            "tar_bad_checksum",
            &mut t,
            "reading archive: archive header checksum mismatch",
            "a tar header with a wrong checksum",
        ));
    }
    {
        // After the end-of-archive marker.
        let key = k();
        let mut t = base();
        let mut tar = t.finish();
        tar.extend_from_slice(b"garbage after the end of the archive");
        tar.resize(tar.len().next_multiple_of(512), 0);
        let b = Bundle::new(Some(&key), &tar, t.entries);
        v.push(Vector::err(
            "tar_garbage_after_end",
            b.bytes(),
            Some(&key),
            "corrupt bundle: data after the end of the archive",
            "non-zero bytes after the two zero blocks",
        ));
        let key = k();
        let mut t = base();
        let mut tar = t.finish();
        let mut hidden = Tar::new();
        hidden.raw(tar::EntryType::Regular, b"etc/hidden", b"", 0o644, b"only some tar readers see this\n");
        tar.extend_from_slice(&hidden.finish());
        let b = Bundle::new(Some(&key), &tar, t.entries);
        v.push(Vector::err(
            "tar_entry_after_end_marker",
            b.bytes(),
            Some(&key),
            "corrupt bundle: data after the end of the archive",
            "a valid member after the end-of-archive marker (tar --ignore-zeros would extract it)",
        ));
        let key = k();
        let mut t = base();
        let full = t.finish();
        // Cut inside the data of the last member (header 512 + "hi\n").
        let cut = &full[..512 + 512 + 2];
        let b = Bundle::new(Some(&key), cut, t.entries);
        v.push(Vector::err(
            "tar_truncated_member",
            b.bytes(),
            Some(&key),
            "reading archive: unexpected EOF",
            "the tar ends inside the data of etc/motd (sizes in the header consistent with the short tar)",
        ));
        let key = k();
        let t = base();
        let tar = t.unterminated();
        let b = Bundle::new(Some(&key), &tar, t.entries);
        v.push(Vector::err(
            "tar_missing_end_marker",
            b.bytes(),
            Some(&key),
            "corrupt bundle",
            "a complete member and no end-of-archive marker",
        ));
    }

    {
        // Numeric fields: negative or out of range is refused, never wrapped.
        let base256 = |v: i128, len: usize| -> Vec<u8> {
            let mut out: Vec<u8> = (0..len).rev().map(|i| (v >> (8 * i)) as u8).collect();
            out[0] |= 0x80;
            out
        };
        let numeric: &[(&'static str, usize, usize, i128, &str, &str)] = &[
            ("tar_mtime_negative", 136, 12, -1, "etc/x: mtime -1 is out of range", "mtime base-256 -1 (all 0xff)"),
            (
                "tar_mtime_negative_large",
                136,
                12,
                -(1 << 40),
                "etc/x: mtime -1099511627776 is out of range",
                "mtime base-256 -2^40",
            ),
            (
                "tar_mtime_too_large",
                136,
                12,
                1 << 70,
                "etc/x: mtime 1180591620717411303424 is out of range",
                "mtime base-256 2^70, past i64",
            ),
            ("tar_uid_negative", 108, 8, -1, "etc/x: uid -1 is out of range", "uid base-256 -1"),
            ("tar_gid_too_large", 116, 8, 1 << 32, "etc/x: gid 4294967296 is out of range", "gid base-256 2^32"),
            ("tar_mode_negative", 100, 8, -2, "etc/x: mode -2 is out of range", "mode base-256 -2"),
            (
                "tar_size_negative",
                124,
                12,
                -(1 << 40),
                "etc/x: size -1099511627776 is out of range",
                "size base-256 -2^40",
            ),
            ("tar_devmajor_negative", 329, 8, -1, "etc/x: device major -1 is out of range", "devmajor base-256 -1"),
        ];
        for &(name, off, len, value, error, comment) in numeric {
            let mut t = base();
            let mut h = tar_header(tar::EntryType::Regular, b"etc/x", b"", 0o644, 2);
            h.as_mut_bytes()[off..off + len].copy_from_slice(&base256(value, len));
            h.set_cksum();
            t.raw_header(&h, b"hi");
            v.push(tar_vec(name, &mut t, error, comment));
        }
        let pax_cases: &[(&'static str, &str, &[u8], &str)] = &[
            ("tar_pax_mtime_negative", "mtime", b"-1", "etc/x: pax mtime -1 is out of range"),
            ("tar_pax_uid_malformed", "uid", b"0x10", "etc/x: pax uid \"0x10\" is out of range"),
            ("tar_pax_size_negative", "size", b"-5", "etc/x: pax size -5 is out of range"),
        ];
        for &(name, key, value, error) in pax_cases {
            let mut t = base();
            t.pax(tar::EntryType::XHeader, &[(key, value)]);
            t.raw(tar::EntryType::Regular, b"etc/x", b"", 0o644, b"");
            v.push(tar_vec(name, &mut t, error, &format!("a pax record {key}={}", String::from_utf8_lossy(value))));
        }
        // In range: base-256 mtime past what 11 octal digits hold, and a pax
        // mtime with a fraction (dropped).
        let key = k();
        let mut t = base();
        let mut h = tar_header(tar::EntryType::Regular, b"etc/late", b"", 0o644, 2);
        h.as_mut_bytes()[136..148].copy_from_slice(&base256(1 << 33, 12));
        h.set_cksum();
        t.raw_header(&h, b"hi");
        t.inodes.push(Inode { mode: 0o644, mtime: 1 << 33, data: b"hi".to_vec() });
        let inode = t.inodes.len() - 1;
        t.model("etc/late", Node::File { inode }, 1 << 33);
        t.pax(tar::EntryType::XHeader, &[("mtime", b"1234567890.75")]);
        let mut h = tar_header(tar::EntryType::Regular, b"etc/paxtime", b"", 0o644, 2);
        h.set_cksum();
        t.raw_header(&h, b"hi");
        t.inodes.push(Inode { mode: 0o644, mtime: 1_234_567_890, data: b"hi".to_vec() });
        let inode = t.inodes.len() - 1;
        t.model("etc/paxtime", Node::File { inode }, 1_234_567_890);
        let b = Bundle::from_tar(Some(&key), &mut t);
        v.push(Vector::ok(
            "ok_tar_mtime_base256",
            &b,
            t.listing(),
            "mtime 2^33 in base-256 (past 11 octal digits), and a pax mtime of 1234567890.75 (whole seconds used)",
        ));
    }
    {
        // Deletions: a bundle may not both delete a path and contain it (or
        // anything under it), in either order.
        let cases: &[(&'static str, &[&str], &str)] = &[
            (
                "tar_delete_after_write",
                &["etc/x", "etc/.wh.x"],
                "etc/.wh.x: the bundle both deletes etc/x and contains it",
            ),
            (
                "tar_delete_before_write",
                &["etc/.wh.x", "etc/x"],
                "etc/x: the bundle both deletes etc/x and contains it",
            ),
            (
                "tar_delete_dir_then_child",
                &["etc/.wh.sub", "etc/sub/x"],
                "etc/sub/x: the bundle both deletes etc/sub and contains it",
            ),
            (
                "tar_child_then_delete_dir",
                &["etc/sub/x", "etc/.wh.sub"],
                "etc/.wh.sub: the bundle both deletes etc/sub and contains it",
            ),
            (
                "tar_delete_dir_then_opaque",
                &[".wh.etc2", "etc2/.wh..wh..opq"],
                "etc2/.wh..wh..opq: the bundle both deletes etc2 and contains it",
            ),
            ("tar_whiteout_as_parent", &["etc/.wh.sub/x"], "etc/.wh.sub/x: malformed whiteout name"),
            ("tar_opaque_as_parent", &["etc/.wh..wh..opq/x"], "etc/.wh..wh..opq/x: malformed whiteout name"),
        ];
        for &(name, entries, error) in cases {
            let mut t = base();
            for e in entries {
                t.raw(tar::EntryType::Regular, e.as_bytes(), b"", 0o644, b"");
            }
            v.push(tar_vec(name, &mut t, error, &format!("entries {}", entries.join(", "))));
        }
    }
    {
        // An unsigned encrypted bundle's payload digest is not checked
        // (STREAM authenticates the payload): all zeros is accepted.
        let key = k();
        let mut t = base();
        let mut b = Bundle::from_tar(Some(&key), &mut t);
        b.header.payload_sha256 = [0; 32];
        v.push(Vector::ok(
            "ok_encrypted_unsigned_zero_digest",
            &b,
            t.listing(),
            "encrypted, unsigned, payload SHA-256 all zero: readers do not check it there (writers fill it)",
        ));
        // Skippable zstd frames are ignored wherever they are.
        let key = k();
        let mut t = base();
        let tar = t.finish();
        let skippable = |magic_low: u8, data: &[u8]| {
            let mut f = vec![0x50 | magic_low, 0x2a, 0x4d, 0x18];
            f.extend_from_slice(&(data.len() as u32).to_le_bytes());
            f.extend_from_slice(data);
            f
        };
        let mut plain = skippable(0, b"skip me");
        plain.extend_from_slice(&compress(&tar, None));
        plain.extend_from_slice(&skippable(0xf, &[0u8; 100]));
        let b = Bundle::from_compressed(Some(&key), plain, tar.len() as u64, t.entries);
        v.push(Vector::ok(
            "ok_zstd_skippable_frames",
            &b,
            t.listing(),
            "a skippable frame before and one after the data frame (RFC 8878 3.1.2): ignored",
        ));
    }
    {
        // Zero padding after the archive: at most MAX_TAR_TAIL bytes.
        let key = k();
        let t = base();
        let mut tar = t.unterminated();
        tar.extend(std::iter::repeat_n(0u8, stateless_bundle::MAX_TAR_TAIL as usize));
        let b = Bundle::new(Some(&key), &tar, t.entries);
        v.push(Vector::ok(
            "ok_tar_padding_max",
            &b,
            t.listing(),
            "65,536 zero bytes after the last entry (end-of-archive marker included): the most allowed",
        ));
        let key = k();
        let t = base();
        let mut tar = t.unterminated();
        tar.extend(std::iter::repeat_n(0u8, stateless_bundle::MAX_TAR_TAIL as usize + 512));
        let b = Bundle::new(Some(&key), &tar, t.entries);
        v.push(Vector::err(
            "tar_padding_too_long",
            b.bytes(),
            Some(&key),
            "corrupt bundle: more than 65536 bytes of zeros after the last entry of the archive",
            "65,536 + 512 zero bytes after the last entry",
        ));
    }

    // -- zstd ---------------------------------------------------------------
    {
        let key = k();
        let mut t = base();
        let tar = t.finish();
        let z = compress(&tar, Some(24));
        // Frame header descriptor: no single-segment flag, window byte present.
        assert_eq!(z[4] & 0x20, 0, "single-segment frame: the window would not be declared");
        let b = Bundle::from_compressed(Some(&key), z, tar.len() as u64, t.entries);
        v.push(Vector::err(
            "zstd_window_too_large",
            b.bytes(),
            Some(&key),
            "Frame requires too much memory for decoding",
            "a zstd frame declaring a 16 MiB window (window log 24); the decoder allows 8 MiB",
        ));
        let key = k();
        let b = Bundle::from_compressed(Some(&key), noise(300, 9), 1024, 0);
        v.push(Vector::err(
            "zstd_not_a_frame",
            b.bytes(),
            Some(&key),
            "corrupt bundle: zstd: Unknown frame descriptor",
            "an authenticated payload that is not zstd",
        ));
        let mut t = base();
        let tar = t.finish();
        let z = compress(&tar, None);
        let cut = z[..z.len() - 4].to_vec();
        let b = Bundle::from_compressed(None, cut, tar.len() as u64, t.entries);
        v.push(Vector::err(
            "zstd_truncated_frame",
            b.bytes(),
            None,
            "corrupt bundle: payload ended unexpectedly",
            "unencrypted, digest valid: the zstd frame is cut 4 bytes short",
        ));
        let mut t = base();
        let tar = t.finish();
        let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        enc.write_all(&tar).unwrap();
        let mut z = enc.finish().unwrap();
        let last = z.len() - 1;
        z[last] ^= 1;
        let key = k();
        let b = Bundle::from_compressed(Some(&key), z, tar.len() as u64, t.entries);
        v.push(Vector::err(
            "zstd_checksum_mismatch",
            b.bytes(),
            Some(&key),
            "corrupt bundle: zstd: Restored data doesn't match checksum",
            "a zstd frame with a content checksum that does not match (payload authenticated)",
        ));
    }

    // -- limits and declared sizes -----------------------------------------
    {
        let key = k();
        let mut t = base();
        t.file("etc/a", 0o644, b"a").file("etc/b", 0o644, b"b").file("etc/c", 0o644, b"c");
        let b = Bundle::from_tar(Some(&key), &mut t);
        assert_eq!(b.header.entry_count, 5);
        v.push(
            Vector::err(
                "limit_entry_count",
                b.bytes(),
                Some(&key),
                "bundle entry count of 5",
                "the header declares 5 entries; this vector's limit is 3 (refused before the payload is read)",
            )
            .limits(&[("max_entries", 3)]),
        );
        let longest = "etc/motd".len() as u64;
        v.push(
            Vector::ok(
                "ok_limits_exact",
                &b,
                t.listing(),
                "every limit set to exactly what the bundle uses (payload, expanded size, entries, longest path): limits are inclusive",
            )
            .limits(&[
                ("max_payload", b.payload.len() as u64),
                ("max_expanded", b.header.expanded_len),
                ("max_entries", 5),
                ("max_path", longest),
            ]),
        );
        let mut lying = b.clone();
        lying.header.entry_count = 3;
        v.push(
            Vector::err(
                "limit_entry_count_undeclared",
                lying.bytes(),
                Some(&key),
                "more than 3 entries (limit)",
                "the header declares 3 entries (within the limit of 3) but the tar has 5",
            )
            .limits(&[("max_entries", 3)]),
        );
        v.push(Vector::err(
            "entry_count_mismatch",
            lying.bytes(),
            Some(&key),
            "corrupt bundle: 5 entries, the header says 3",
            "the header declares 3 entries, the tar has 5 (default limits)",
        ));
        let mut big = Tar::new();
        big.dir("data", 0o755).file("data/zeros", 0o644, &[0u8; 10_000]);
        let tar = big.finish();
        let b = Bundle::new(Some(&key), &tar, big.entries);
        v.push(
            Vector::err(
                "limit_expanded_declared",
                b.bytes(),
                Some(&key),
                format!("bundle expanded size of {} bytes is over the limit of 4096 bytes", tar.len()),
                "the header declares the true expanded size, over this vector's limit of 4096",
            )
            .limits(&[("max_expanded", 4096)]),
        );
        let mut lying = b.clone();
        lying.header.expanded_len = 2048;
        v.push(
            Vector::err(
                "limit_expanded_actual",
                lying.bytes(),
                Some(&key),
                "corrupt bundle: the tar stream is longer than the header's expanded size of 2048 bytes",
                "the header declares 2048 expanded bytes (within the limit of 4096); the tar is 12288 (a zstd bomb): \
                 reading stops at byte 2049, whatever the limit",
            )
            .limits(&[("max_expanded", 4096)]),
        );
        let mut wrong = b.clone();
        wrong.header.expanded_len += 512;
        v.push(Vector::err(
            "expanded_size_mismatch",
            wrong.bytes(),
            Some(&key),
            format!("corrupt bundle: expanded size {} differs from the header's {}", tar.len(), tar.len() + 512),
            "the header declares 512 more expanded bytes than the tar has",
        ));
        v.push(
            Vector::err(
                "limit_payload",
                b.bytes(),
                Some(&key),
                format!("bundle payload of {} bytes is over the limit of 64 bytes", b.payload.len()),
                "payload over this vector's max_payload of 64",
            )
            .limits(&[("max_payload", 64)]),
        );
        let mut huge = b.clone();
        huge.header.payload_len = encrypted_len(1 << 40);
        v.push(Vector::err(
            "limit_payload_declared_huge",
            huge.bytes(),
            Some(&key),
            format!("bundle payload of {} bytes is over the limit of 536870912 bytes", encrypted_len(1 << 40)),
            "the header declares a 1 TiB payload (default limits)",
        ));
    }

    // -- publisher signatures -----------------------------------------------
    {
        let sign = || SigningKey::generate().unwrap();
        let key = k();
        let sk = sign();
        let b = Bundle::from_tar(Some(&key), &mut small_tree()).signed(&sk);
        v.push(
            Vector::ok(
                "ok_signed",
                &b,
                small_tree().listing(),
                "the small tree, encrypted and signed; the reader requires the publisher's signature",
            )
            .pubkey(sk.public_key()),
        );
        v.push(Vector::ok(
            "ok_signed_without_pubkey",
            &b,
            small_tree().listing(),
            "the same signed bundle opened with no publisher key: the signature is not checked",
        ));
        let u = Bundle::from_tar(None, &mut small_tree()).signed(&sk);
        v.push(
            Vector::ok(
                "ok_signed_unencrypted",
                &u,
                small_tree().listing(),
                "the small tree, unencrypted and signed; the signature is its only proof of origin",
            )
            .pubkey(sk.public_key()),
        );

        let plain = Bundle::from_tar(Some(&key), &mut small_tree());
        v.push(
            Vector::err(
                "sig_unsigned",
                plain.bytes(),
                Some(&key),
                "bundle is not signed; a publisher signature is required",
                "an unsigned (but otherwise valid) bundle where a publisher signature is required",
            )
            .pubkey(sk.public_key()),
        );

        let other = sign();
        v.push(
            Vector::err(
                "sig_wrong_signer",
                b.bytes(),
                Some(&key),
                format!(
                    "bundle is signed by publisher {}, expected {}",
                    sk.signer_id().short(),
                    other.signer_id().short()
                ),
                "validly signed by another publisher than the one required",
            )
            .pubkey(other.public_key()),
        );

        let bytes = b.patched(|h| h[71] ^= 1);
        v.push(
            Vector::err(
                "sig_bad_signature",
                bytes,
                Some(&key),
                "publisher signature does not verify: the header was modified or is corrupt",
                "the generation changed after signing, header tag recomputed with the site key",
            )
            .pubkey(sk.public_key()),
        );

        let forger = sign();
        let mut forged = Bundle::from_tar(Some(&key), &mut small_tree()).signed(&forger);
        forged.header.signature.as_mut().unwrap().signer = sk.signer_id().0;
        v.push(
            Vector::err(
                "sig_forged_signer",
                forged.bytes(),
                Some(&key),
                "publisher signature does not verify: the header was modified or is corrupt",
                "signed by another key, with the required publisher's signer id written over its own",
            )
            .pubkey(sk.public_key()),
        );

        // s + L, where L is the order of the Ed25519 base point: the same
        // signature to a lax verifier, refused by a strict one (RFC 8032 5.1.7).
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let bytes = b.patched(|h| {
            let mut carry = 0u16;
            for (i, l) in L.iter().enumerate() {
                let sum = u16::from(h[248 + i]) + u16::from(*l) + carry;
                h[248 + i] = sum as u8;
                carry = sum >> 8;
            }
            assert_eq!(carry, 0);
        });
        v.push(
            Vector::err(
                "sig_noncanonical_s",
                bytes,
                Some(&key),
                "publisher signature does not verify: the header was modified or is corrupt",
                "the signature's S plus the group order L (a malleated signature), header tag recomputed",
            )
            .pubkey(sk.public_key()),
        );

        let mut swapped = b.clone();
        let mut z = compress(&small_tree().finish(), None);
        let mid = z.len() / 2;
        z[mid] ^= 1;
        swapped.payload = encrypt(&b.payload_key(), &z);
        assert_eq!(swapped.payload.len(), b.payload.len());
        let msg =
            format!("payload digest mismatch: the payload is not the one publisher {} signed", sk.signer_id().short());
        v.push(
            Vector::err(
                "sig_payload_digest_mismatch",
                swapped.bytes(),
                Some(&key),
                msg.clone(),
                "the signed header as it was, over a payload with one bit flipped and encrypted again under the \
                 bundle's payload key (what a holder of the site key can do)",
            )
            .pubkey(sk.public_key()),
        );

        let mut bytes = u.bytes();
        let i = bytes.len() - 20;
        bytes[i] ^= 1;
        v.push(
            Vector::err(
                "sig_payload_digest_mismatch_unencrypted",
                bytes,
                None,
                msg,
                "a payload byte of the signed unencrypted bundle flipped after signing",
            )
            .pubkey(sk.public_key()),
        );
    }
    image_vectors(&mut v);
    v
}

/// A stand-in EROFS image: noise with the superblock magic at byte 1024.
/// The reader checks the magic and the bytes, never the file system (the
/// kernel does that when the loader mounts it), so noise is enough here.
fn fake_image(len: usize, seed: u64) -> Vec<u8> {
    let mut img = noise(len, seed);
    img[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
    img
}

impl Bundle {
    /// A bundle of payload kind 1: `image` stored whole (encrypted when
    /// `key` is given).
    fn image(key: Option<&Key>, image: &[u8]) -> Bundle {
        let mut header = base_header(key);
        header.kind = stateless_bundle::PayloadKind::ErofsImage;
        header.expanded_len = image.len() as u64;
        header.entry_count = 0;
        let payload = match key {
            None => image.to_vec(),
            Some(k) => {
                header.payload_len = encrypted_len(image.len() as u64);
                encrypt(&payload_key(&header, k), image)
            }
        };
        let mut b = Bundle { key: key.cloned(), header, payload };
        b.seal_payload();
        b
    }
}

/// The listing of an image bundle: one line naming the image's SHA-256.
fn image_listing(image: &[u8]) -> Vec<String> {
    vec![format!("image {}", sha_hex(image))]
}

fn image_vectors(v: &mut Vec<Vector>) {
    let k = || Key::generate().unwrap();
    // One chunk and a bit: the image crosses a chunk boundary.
    let img = fake_image(CHUNK_SIZE + 3000, 0x1e5);
    {
        let key = k();
        let b = Bundle::image(Some(&key), &img);
        let h = b.header_bytes();
        assert_eq!((h[11], h[206], h[207]), (0, 1, 0), "image kind bytes");
        v.push(Vector::ok(
            "ok_image",
            &b,
            image_listing(&img),
            "payload kind 1 (EROFS image), encrypted: the decrypted image is written out whole",
        ));
        let bytes = b.patched(|h| h[206] = 2);
        v.push(Vector::err(
            "header_unknown_payload_kind",
            bytes,
            Some(&key),
            "unknown payload kind 2",
            "payload kind byte 206 is 2, which no reader knows; tag valid",
        ));
        let bytes = b.patched(|h| h[11] = 1);
        v.push(Vector::err(
            "header_image_compressed",
            bytes,
            Some(&key),
            "malformed header: an image payload has compression 0 (none)",
            "payload kind 1 with compression byte 1 (zstd); tag valid",
        ));
        let bytes = b.patched(|h| h[107] = 1);
        v.push(Vector::err(
            "header_image_entry_count",
            bytes,
            Some(&key),
            "malformed header: an image payload has entry count 0",
            "payload kind 1 with entry count 1; tag valid",
        ));
        v.push(
            Vector::err(
                "limit_image_declared",
                b.bytes(),
                Some(&key),
                format!("bundle expanded size of {} bytes is over the limit of {} bytes", img.len(), img.len() - 1),
                "the image is one byte over max_expanded: refused from the header, before any byte is written",
            )
            .limits(&[("max_expanded", img.len() as u64 - 1)]),
        );
        let mut t = b.clone();
        t.payload[ENCRYPTED_CHUNK_SIZE + 77] ^= 0x01;
        t.seal_payload();
        v.push(Vector::err(
            "image_tampered",
            t.bytes(),
            Some(&key),
            "authentication failed in chunk 1: the payload was modified or is corrupt",
            "one ciphertext bit of the image flipped in chunk 1; header tag valid: never written out as a whole",
        ));
    }
    {
        let key = k();
        let sk = SigningKey::generate().unwrap();
        let b = Bundle::image(Some(&key), &img).signed(&sk);
        v.push(
            Vector::ok(
                "ok_image_signed",
                &b,
                image_listing(&img),
                "an encrypted image bundle signed by the publisher; the reader requires the signature",
            )
            .pubkey(sk.public_key()),
        );
        let b = Bundle::image(None, &img);
        v.push(Vector::ok("ok_image_unencrypted", &b, image_listing(&img), "an unencrypted image bundle"));
    }
    {
        let key = k();
        let mut not_erofs = img.clone();
        not_erofs[1024] ^= 0xff;
        v.push(Vector::err(
            "image_not_erofs",
            Bundle::image(Some(&key), &not_erofs).bytes(),
            Some(&key),
            "the image is not EROFS (no superblock magic at byte 1024)",
            "payload kind 1, authenticates, but byte 1024 does not start the EROFS magic",
        ));
        let mut b = Bundle::image(Some(&key), &img);
        b.header.expanded_len += 1;
        v.push(Vector::err(
            "image_length_short",
            b.bytes(),
            Some(&key),
            format!("the image is {} bytes, the header says {}", img.len(), img.len() + 1),
            "the header declares one byte more than the image holds",
        ));
        let mut b = Bundle::image(Some(&key), &img);
        b.header.expanded_len -= 1;
        v.push(Vector::err(
            "image_length_long",
            b.bytes(),
            Some(&key),
            format!("the image is longer than the header's {} bytes", img.len() - 1),
            "the header declares one byte less than the image holds: the reader stops writing at the declared size",
        ));
    }
}

/// A bundle written by `pack` from a real directory, and its expected listing.
fn packed(key: &Key) -> (Bundle, Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut model = Tar::new();
    let set_time = |p: &Path| {
        let t = rustix::fs::Timespec { tv_sec: MTIME as i64, tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
        rustix::fs::utimensat(rustix::fs::CWD, p, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
    };
    let files: &[(&str, u32, &[u8])] = &[
        ("etc/hostname", 0o644, b"node42\n"),
        ("srv/app.conf", 0o640, b"listen = 8080\n"),
        ("srv/run.sh", 0o755, b"#!/bin/sh\n"),
    ];
    for (d, mode) in [("etc", 0o755), ("srv", 0o750)] {
        fs::create_dir(root.join(d)).unwrap();
        model.model(d, Node::Dir { mode }, MTIME);
    }
    for (p, mode, data) in files {
        let full = root.join(p);
        fs::write(&full, data).unwrap();
        fs::set_permissions(&full, fs::Permissions::from_mode(*mode)).unwrap();
        set_time(&full);
        model.inodes.push(Inode { mode: *mode, mtime: MTIME, data: data.to_vec() });
        model.model(p, Node::File { inode: model.inodes.len() - 1 }, MTIME);
    }
    fs::hard_link(root.join("srv/app.conf"), root.join("srv/app.conf.bak")).unwrap();
    model.model("srv/app.conf.bak", Node::File { inode: 1 }, MTIME);
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", root.join("etc/localtime")).unwrap();
    set_time(&root.join("etc/localtime"));
    model.model("etc/localtime", Node::Symlink { target: b"/usr/share/zoneinfo/UTC".to_vec() }, MTIME);
    // pack writes deletions as empty 0644 whiteouts with mtime 0.
    model.inodes.push(Inode { mode: 0o644, mtime: 0, data: Vec::new() });
    model.model("etc/.wh.motd", Node::File { inode: model.inodes.len() - 1 }, 0);
    for (d, mode) in [("etc", 0o755), ("srv", 0o750)] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(mode)).unwrap();
        set_time(&root.join(d));
    }
    let mut out = Cursor::new(Vec::new());
    let opts = PackOptions {
        key: Some(key),
        generation: 3,
        created: CREATED,
        expires: None,
        scope: Scope::Group("web".into()),
        level: 9,
        threads: 0,
        deletions: vec![RelPath::parse(b"etc/motd", 4096).unwrap()],
        limits: Limits::default(),
    };
    let summary = pack(root, &mut out, &opts).unwrap();
    let bytes = out.into_inner();
    let payload = bytes[HEADER_LEN..].to_vec();
    let b = Bundle { key: Some(key.clone()), header: summary.header, payload };
    assert_eq!(b.bytes(), bytes, "pack's header must round-trip through Header::to_bytes");
    (b, model.listing())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().cloned().unwrap_or_else(|| "tests/vectors".into());
    let dir = Path::new(&dir);
    // Name prefixes to write (all vectors when none are given).
    let only: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|p| name.starts_with(p));
    fs::create_dir_all(dir).unwrap();

    // The independent tag must agree with the crate's, or the patched
    // vectors would break more than their named rule.
    for key in [Some(Key::generate().unwrap()), None] {
        let b = Bundle::from_tar(key.as_ref(), &mut small_tree());
        let mut h = b.header_bytes();
        let want = h;
        h[288..].fill(0);
        retag(&mut h, key.as_ref());
        assert_eq!(h, want, "independent header tag differs from Header::to_bytes");
    }

    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_file() && !name.contains('.') && wanted(&name) {
            fs::remove_file(entry.path()).unwrap();
        }
    }
    let (mut total, mut written) = (0, 0);
    let mut names = std::collections::BTreeSet::new();
    let all = vectors();
    for vec in &all {
        assert!(names.insert(vec.name), "vector {} twice", vec.name);
        let mut out = vec.text_header().into_bytes();
        out.extend_from_slice(&vec.bytes);
        assert!(out.len() < MAX_VECTOR, "{} is {} bytes", vec.name, out.len());
        // The limit is on the whole catalogue, written or not.
        total += out.len();
        if wanted(vec.name) {
            fs::write(dir.join(vec.name), &out).unwrap();
            written += 1;
        }
    }
    assert!(total < MAX_TOTAL, "vectors total {total} bytes");
    println!("wrote {written} of {} vectors ({total} bytes in all) to {}", all.len(), dir.display());
}
