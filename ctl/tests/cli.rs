//! The public contract of `statelessctl key` and `statelessctl bundle`:
//! exit codes and the one-line messages people read.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn ctl(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_statelessctl")).args(args).current_dir(cwd).output().unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let o = ctl(args, cwd);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a command that must fail with exit code 1 and one line on stderr.
fn fails(args: &[&str], cwd: &Path) -> String {
    let o = ctl(args, cwd);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail: {}", String::from_utf8_lossy(&o.stdout));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    err
}

fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/motd"), "hello\n").unwrap();
    // Incompressible, so that the payload spans several chunks.
    let mut x = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    fs::write(tree.join("etc/big"), noise).unwrap();
    ok(&["key", "new", "-o", "site.key"], d.path());
    d
}

#[test]
fn key_new_and_id() {
    let d = tempfile::tempdir().unwrap();
    let id = ok(&["key", "new", "-o", "site.key"], d.path());
    assert_eq!(id.trim().len(), 32);
    let mode = fs::metadata(d.path().join("site.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(ok(&["key", "id", "site.key"], d.path()), id);
    let err = fails(&["key", "new", "-o", "site.key"], d.path());
    assert!(err.contains("exists"), "{err}");
    let text = fs::read_to_string(d.path().join("site.key")).unwrap();
    assert!(text.starts_with("# Stateless Loader site key"));
}

#[test]
fn readable_key_file_warns() {
    let d = tempfile::tempdir().unwrap();
    ok(&["key", "new", "-o", "site.key"], d.path());
    fs::set_permissions(d.path().join("site.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let o = ctl(&["key", "id", "site.key"], d.path());
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: key file site.key is readable by group or others (mode 0644)"), "{err}");
}

#[test]
fn not_a_key_file() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("notes.txt"), "hello\n").unwrap();
    let err = fails(&["key", "id", "notes.txt"], d.path());
    assert_eq!(err.trim(), "statelessctl: reading key file: notes.txt: not a key file: no stateless-key-v1: line");
}

#[test]
fn pack_inspect_verify_open() {
    let d = setup();
    let p = d.path();
    let out = ok(
        &[
            "bundle",
            "pack",
            "tree",
            "-o",
            "n.bundle",
            "--key",
            "site.key",
            "--generation",
            "7",
            "--scope",
            "node:node42",
            "--expires",
            "2027-01-01T00:00:00Z",
            "--delete",
            "/etc/issue",
        ],
        p,
    );
    assert!(out.contains("generation 7"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["bundle", "inspect", "n.bundle", "--json"], p)).unwrap();
    assert_eq!(json["generation"], 7);
    assert_eq!(json["scope"], "node:node42");
    assert_eq!(json["cipher"], "aes-256-gcm-stream");
    assert_eq!(json["expires"], "2027-01-01T00:00:00Z");
    assert_eq!(json["key_id"].as_str().unwrap(), ok(&["key", "id", "site.key"], p).trim());
    let text = ok(&["bundle", "inspect", "n.bundle"], p);
    assert!(text.contains("not authenticated (needs the key"), "{text}");
    assert!(ok(&["bundle", "verify", "n.bundle", "--key", "site.key"], p).contains(": OK"));
    ok(&["bundle", "open", "n.bundle", "--key", "site.key", "-o", "out"], p);
    assert_eq!(fs::read_to_string(p.join("out/etc/motd")).unwrap(), "hello\n");
    assert!(p.join("out/etc/.wh.issue").exists());
    let err = fails(&["bundle", "open", "n.bundle", "--key", "site.key", "-o", "out"], p);
    assert!(err.contains("out exists"), "{err}");
}

#[test]
fn unencrypted_needs_no_key() {
    let d = setup();
    let p = d.path();
    ok(&["bundle", "pack", "tree", "-o", "u.bundle", "--unencrypted", "--generation", "1"], p);
    assert!(ok(&["bundle", "verify", "u.bundle"], p).contains("unencrypted"));
    assert!(ok(&["bundle", "inspect", "u.bundle"], p).contains("checksum OK"));
    ok(&["bundle", "open", "u.bundle", "-o", "out"], p);
    // --key and --unencrypted together, or neither, is a usage error.
    let o = ctl(&["bundle", "pack", "tree", "-o", "x.bundle", "--generation", "1"], p);
    assert_eq!(o.status.code(), Some(2));
    let o = ctl(&["bundle", "pack", "tree", "-o", "x", "--unencrypted", "--key", "site.key", "--generation", "1"], p);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_bundles_fail_cleanly_and_leave_nothing() {
    let d = setup();
    let p = d.path();
    ok(&["bundle", "pack", "tree", "-o", "n.bundle", "--key", "site.key", "--generation", "3", "--level", "1"], p);
    ok(&["key", "new", "-o", "other.key"], p);
    let good = fs::read(p.join("n.bundle")).unwrap();

    let err = fails(&["bundle", "open", "n.bundle", "--key", "other.key", "-o", "out"], p);
    assert!(err.contains("bundle is sealed for key") && err.contains("this key is"), "{err}");

    let mut tampered = good.clone();
    let at = 320 + 65552 + 100;
    tampered[at] ^= 1;
    fs::write(p.join("t.bundle"), &tampered).unwrap();
    let err = fails(&["bundle", "open", "t.bundle", "--key", "site.key", "-o", "out"], p);
    assert!(err.contains("authentication failed in chunk 1"), "{err}");

    fs::write(p.join("tr.bundle"), &good[..good.len() - 1000]).unwrap();
    let err = fails(&["bundle", "open", "tr.bundle", "--key", "site.key", "-o", "out"], p);
    assert!(err.contains("truncated"), "{err}");

    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    fs::write(p.join("g.bundle"), &trailing).unwrap();
    let err = fails(&["bundle", "verify", "g.bundle", "--key", "site.key"], p);
    assert!(err.contains("trailing data"), "{err}");

    let mut version = good.clone();
    version[9] = 9;
    fs::write(p.join("v.bundle"), &version).unwrap();
    let err = fails(&["bundle", "inspect", "v.bundle"], p);
    assert!(err.contains("unknown bundle format version 9"), "{err}");

    let err = fails(&["bundle", "verify", "n.bundle", "--key", "site.key", "--max-payload", "64K"], p);
    assert!(err.contains("over the limit of 65536 bytes"), "{err}");

    // Nothing was left behind by the failed opens: no output, no staging.
    let names: Vec<String> = fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!names.iter().any(|n| n == "out" || n.starts_with(".statelessctl")), "{names:?}");
}

/// Makes a publisher key pair `NAME.sign` / `NAME.pub`; returns the signer id.
fn publisher(name: &str, cwd: &Path) -> String {
    let out = ok(&["key", "new-signing", "-o", &format!("{name}.sign"), "--pub-out", &format!("{name}.pub")], cwd);
    out.trim().to_owned()
}

fn short_id(id: &str) -> String {
    format!("{}…", &id[..8])
}

#[test]
fn key_new_signing_and_pub() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let id = publisher("p", p);
    assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(fs::metadata(p.join("p.sign")).unwrap().permissions().mode() & 0o777, 0o600);
    let public = fs::read_to_string(p.join("p.pub")).unwrap();
    assert!(public.contains(&format!("# signer: {id}\n")) && public.contains("\nstateless-public-key-v1:"), "{public}");
    // key pub prints the same public key file, or writes it and prints the id.
    assert_eq!(ok(&["key", "pub", "p.sign"], p), public);
    assert_eq!(ok(&["key", "pub", "p.sign", "-o", "again.pub"], p).trim(), id);
    assert_eq!(fs::read_to_string(p.join("again.pub")).unwrap(), public);
    let err = fails(&["key", "pub", "p.sign", "-o", "again.pub"], p);
    assert!(err.contains("exists"), "{err}");

    // Refused as a whole when either file exists: no half pair is left.
    let err = fails(&["key", "new-signing", "-o", "q.sign", "--pub-out", "p.pub"], p);
    assert_eq!(err.trim(), "statelessctl: p.pub exists (use --force to replace it)");
    assert!(!p.join("q.sign").exists());
    let new_id = ok(&["key", "new-signing", "-o", "p.sign", "--pub-out", "p.pub", "--force"], p);
    assert_ne!(new_id.trim(), id);

    // Each kind of key file is named when given where another is expected.
    let err = fails(&["key", "id", "p.sign"], p);
    assert_eq!(
        err.trim(),
        "statelessctl: reading key file: p.sign: not a key file: this is a publisher signing key, not a site key"
    );
    let err = fails(&["key", "pub", "p.pub"], p);
    assert_eq!(
        err.trim(),
        "statelessctl: reading signing key file: p.pub: not a publisher signing key: \
         this is a publisher public key, not a signing key"
    );

    fs::set_permissions(p.join("p.sign"), fs::Permissions::from_mode(0o640)).unwrap();
    let o = ctl(&["key", "pub", "p.sign"], p);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: signing key file p.sign is readable by group or others (mode 0640)"), "{err}");
}

#[test]
fn signed_pack_inspect_verify_open() {
    let d = setup();
    let p = d.path();
    let id = publisher("p", p);
    let run = |args: &[&str], key: &[&'static str]| ok(&[args, key].concat(), p);
    for (name, key) in [("e.bundle", &["--key", "site.key"][..]), ("u.bundle", &["--unencrypted"][..])] {
        let out = run(&["bundle", "pack", "tree", "-o", name, "--generation", "5", "--sign", "p.sign"], key);
        assert!(out.trim().ends_with(&format!(", signed by publisher {id}")), "{out}");
        let text = ok(&["bundle", "inspect", name], p);
        assert!(text.contains(&format!("signature:       signed by {id}")), "{text}");
        let json: serde_json::Value = serde_json::from_str(&ok(&["bundle", "inspect", name, "--json"], p)).unwrap();
        assert_eq!(json["signer"], id.as_str());
        assert_eq!(json["signed"], true);

        let key = if name == "e.bundle" { key } else { &[] };
        let out = run(&["bundle", "verify", name, "--pubkey", "p.pub"], key);
        assert!(out.contains(": OK,") && out.trim().ends_with(&format!("signed by publisher {id}")), "{out}");
        // Without --pubkey the signature is not checked; it still opens.
        let out = run(&["bundle", "verify", name], key);
        assert!(out.trim().ends_with(&format!("signed by publisher {id} (not checked)")), "{out}");
        let dest = format!("out-{name}");
        run(&["bundle", "open", name, "--pubkey", "p.pub", "-o", &dest], key);
        assert_eq!(fs::read_to_string(p.join(dest).join("etc/motd")).unwrap(), "hello\n");
    }
    ok(&["bundle", "pack", "tree", "-o", "plain.bundle", "--unencrypted", "--generation", "1"], p);
    assert!(ok(&["bundle", "inspect", "plain.bundle"], p).contains("signature:       unsigned"));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["bundle", "inspect", "plain.bundle", "--json"], p)).unwrap();
    assert_eq!(json["signer"], serde_json::Value::Null);
    assert!(ok(&["bundle", "verify", "plain.bundle"], p).trim().ends_with(", unsigned"));
}

/// Replaces the SHA-256 header checksum of an unencrypted bundle.
fn rechecksum(b: &mut [u8]) {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(&b[..288]);
    b[288..320].copy_from_slice(&sum);
}

#[test]
fn signature_failures_are_one_line_and_leave_nothing() {
    let d = setup();
    let p = d.path();
    let id = publisher("p", p);
    let other = publisher("other", p);
    let pack = |name: &str, extra: &[&str]| {
        let args = [&["bundle", "pack", "tree", "-o", name, "--generation", "4", "--level", "1"][..], extra].concat();
        ok(&args, p);
    };
    pack("s.bundle", &["--key", "site.key", "--sign", "p.sign"]);
    pack("u-signed.bundle", &["--unencrypted", "--sign", "p.sign"]);
    pack("n.bundle", &["--key", "site.key"]);
    let open = |name: &str, pubkey: &str| -> String {
        let key: &[&str] = if name.starts_with("u-") { &[] } else { &["--key", "site.key"] };
        let args = [&["bundle", "open", name, "--pubkey", pubkey, "-o", "out"][..], key].concat();
        fails(&args, p).trim().to_owned()
    };

    assert_eq!(
        open("n.bundle", "p.pub"),
        "statelessctl: n.bundle: bundle is not signed; a publisher signature is required"
    );
    assert_eq!(
        open("s.bundle", "other.pub"),
        format!(
            "statelessctl: s.bundle: bundle is signed by publisher {}, expected {}",
            short_id(&id),
            short_id(&other)
        )
    );
    assert_eq!(
        open("s.bundle", "site.key"),
        "statelessctl: reading public key file: site.key: not a publisher public key: \
         this is a site key, not a publisher public key"
    );

    // A header field changed after signing, checksum made valid again.
    let good = fs::read(p.join("u-signed.bundle")).unwrap();
    let mut t = good.clone();
    t[71] ^= 1; // generation
    rechecksum(&mut t);
    fs::write(p.join("u-tampered.bundle"), &t).unwrap();
    assert_eq!(
        open("u-tampered.bundle", "p.pub"),
        "statelessctl: u-tampered.bundle: publisher signature does not verify: the header was modified or is corrupt"
    );
    // Without --pubkey the signature is ignored, as for any signed bundle.
    assert!(ok(&["bundle", "verify", "u-tampered.bundle"], p).contains(": OK, generation 5"));

    // The payload changed: its digest no longer matches the signed one.
    let mut c = good.clone();
    let n = c.len();
    c[n - 30] ^= 0x08;
    fs::write(p.join("u-corrupt.bundle"), &c).unwrap();
    assert_eq!(
        open("u-corrupt.bundle", "p.pub"),
        format!(
            "statelessctl: u-corrupt.bundle: payload digest mismatch: the payload is not the one publisher {} signed",
            short_id(&id)
        )
    );

    // An encrypted payload swapped by someone with the site key: the header
    // and STREAM check out, the signed digest does not.
    let swapped = swap_payload(&fs::read(p.join("s.bundle")).unwrap(), &p.join("site.key"));
    fs::write(p.join("w.bundle"), swapped).unwrap();
    assert_eq!(
        open("w.bundle", "p.pub"),
        format!(
            "statelessctl: w.bundle: payload digest mismatch: the payload is not the one publisher {} signed",
            short_id(&id)
        )
    );

    let names: Vec<String> = fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!names.iter().any(|n| n == "out" || n.starts_with(".statelessctl")), "{names:?}");
}

/// Decrypts the payload of `bundle` with the site key, flips a bit of the
/// plaintext and encrypts it again under the same payload key, keeping the
/// header as it is.
fn swap_payload(bundle: &[u8], key: &Path) -> Vec<u8> {
    use stateless_bundle::stream::{StreamReader, StreamWriter};
    use std::io::{Read, Write};
    let key = stateless_bundle::Key::from_file_text(&fs::read(key).unwrap()).unwrap();
    let (h, pk) = stateless_bundle::RawHeader::parse(bundle).unwrap().authenticate(Some(&key)).unwrap();
    let pk = pk.unwrap();
    let mut plain = Vec::new();
    StreamReader::new(&pk, &bundle[320..], h.payload_len).read_to_end(&mut plain).unwrap();
    let n = plain.len();
    plain[n / 2] ^= 1;
    let mut w = StreamWriter::new(&pk, bundle[..320].to_vec());
    w.write_all(&plain).unwrap();
    w.finish().unwrap()
}

// ---------------------------------------------------------------- key derive

#[test]
fn key_derive_is_deterministic_0600_and_distinct_per_target() {
    let d = setup();
    let p = d.path();
    let site_id = ok(&["key", "id", "site.key"], p).trim().to_owned();
    let targets: &[(&[&str], &str)] = &[
        (&["--node", "node42"], "node42.key"),
        (&["--node", "node43"], "node43.key"),
        (&["--group", "rack7"], "rack7.key"),
        (&["--group", "node42"], "group-node42.key"),
        (&["--default"], "default.key"),
    ];
    let mut ids = vec![site_id.clone()];
    for (target, out) in targets {
        let args = [&["key", "derive", "--site", "site.key"][..], target, &["-o", out]].concat();
        let id = ok(&args, p).trim().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        let path = p.join(out);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{out}");
        // The same file format as `key new`: `key id` reads it.
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# Stateless Loader site key") && text.contains(&format!("# key id: {id}\n")),
            "{text}"
        );
        assert_eq!(ok(&["key", "id", out], p).trim(), id);
        // Deterministic: the same site key and target give the same key.
        let again = [&["key", "derive", "--site", "site.key"][..], target, &["-o", "again.key"]].concat();
        assert_eq!(ok(&again, p).trim(), id);
        assert_eq!(fs::read(p.join("again.key")).unwrap(), fs::read(&path).unwrap());
        fs::remove_file(p.join("again.key")).unwrap();
        ids.push(id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "every derived key has its own id, none the site key's: {ids:?}");

    // Exactly what the library derives, and the library what the vectors say.
    let site = stateless_keys::read_key_file(&p.join("site.key")).unwrap();
    let lib = stateless_keys::derive::derive(&site, &stateless_keys::derive::Target::Node("node42".into())).unwrap();
    assert_eq!(lib.id().to_string(), ids[1]);
}

#[test]
fn a_node_key_opens_only_that_nodes_bundles() {
    let d = setup();
    let p = d.path();
    for n in ["node42", "node43"] {
        ok(&["key", "derive", "--site", "site.key", "--node", n, "-o", &format!("{n}.key")], p);
    }
    let pack = |key: &str, scope: &str, out: &str| {
        ok(
            &["bundle", "pack", "tree", "-o", out, "--key", key, "--scope", scope, "--generation", "1", "--level", "1"],
            p,
        )
    };
    pack("node42.key", "node:node42", "n42.bundle");
    let id = |k: &str| ok(&["key", "id", k], p).trim().to_owned();
    let (id42, id43, site) = (id("node42.key"), id("node43.key"), id("site.key"));
    for (other, other_id) in [("node43.key", &id43), ("site.key", &site)] {
        let err = fails(&["bundle", "open", "n42.bundle", "--key", other, "-o", "out"], p);
        let want = format!("bundle is sealed for key {}, this key is {}", short_id(&id42), short_id(other_id));
        assert!(err.contains(&want), "{other}: {err}");
        assert!(!p.join("out").exists());
    }
    ok(&["bundle", "open", "n42.bundle", "--key", "node42.key", "-o", "out"], p);
    assert_eq!(fs::read_to_string(p.join("out/etc/motd")).unwrap(), "hello\n");
    // A bundle the site packs with the site key opens with the site key only.
    pack("site.key", "any", "site.bundle");
    for k in ["node42.key", "node43.key"] {
        let err = fails(&["bundle", "open", "site.bundle", "--key", k, "-o", "out2"], p);
        assert!(err.contains(&format!("bundle is sealed for key {}", short_id(&site))), "{err}");
    }
    ok(&["bundle", "verify", "site.bundle", "--key", "site.key"], p);
}

#[test]
fn key_derive_refusals() {
    let d = setup();
    let p = d.path();
    let long = "n".repeat(65);
    let cases: &[(&[&str], &str)] = &[
        (&["--node", "../etc"], "deriving a key: node \"../etc\": name may use only A-Z a-z 0-9 . _ : -"),
        (
            &["--group", ".rack7"],
            "group \".rack7\": name may use only A-Z a-z 0-9 . _ : - and must not start with a dot",
        ),
        (&["--node", ""], "node \"\": name must be 1 to 64 bytes"),
        (&["--node", &long], "name must be 1 to 64 bytes"),
        (&["--node", "node 42"], "name may use only"),
        (&["--node", "n/42"], "name may use only"),
    ];
    for (target, want) in cases {
        let args = [&["key", "derive", "--site", "site.key"][..], target, &["-o", "x.key"]].concat();
        let err = fails(&args, p);
        assert!(err.contains(want), "{target:?}: {err}");
        assert!(!p.join("x.key").exists());
    }
    // A bad name is named even before the site key is read.
    let err = fails(&["key", "derive", "--site", "missing.key", "--node", "a/b", "-o", "x.key"], p);
    assert!(err.contains("name may use only"), "{err}");
    let err = fails(&["key", "derive", "--site", "missing.key", "--node", "a", "-o", "x.key"], p);
    assert!(err.starts_with("statelessctl: reading site key file: missing.key"), "{err}");
    // A publisher key is not a site key.
    publisher("p", p);
    let err = fails(&["key", "derive", "--site", "p.sign", "--default", "-o", "x.key"], p);
    assert!(err.contains("this is a publisher signing key, not a site key"), "{err}");
    // No silent overwrite; never over the site key, even with --force.
    ok(&["key", "derive", "--site", "site.key", "--node", "a", "-o", "a.key"], p);
    let err = fails(&["key", "derive", "--site", "site.key", "--node", "a", "-o", "a.key"], p);
    assert!(err.contains("exists"), "{err}");
    ok(&["key", "derive", "--site", "site.key", "--node", "b", "-o", "a.key", "--force"], p);
    let before = fs::read(p.join("site.key")).unwrap();
    let err = fails(&["key", "derive", "--site", "site.key", "--node", "a", "-o", "./site.key", "--force"], p);
    assert!(err.contains("is the site key itself"), "{err}");
    assert_eq!(fs::read(p.join("site.key")).unwrap(), before);
    // Exactly one target: none, or two, is a usage error.
    for target in [&[][..], &["--node", "a", "--group", "b"], &["--default", "--node", "a"]] {
        let args = [&["key", "derive", "--site", "site.key", "-o", "y.key"][..], target].concat();
        assert_eq!(ctl(&args, p).status.code(), Some(2), "{target:?}");
    }
    assert!(!p.join("y.key").exists());
}

/// `persist` runs on a node: it moved to `stateless-node`. The old command
/// is not in the help and refuses, whatever its arguments, with a usage
/// error that names the new one.
#[test]
fn persist_moved_to_the_node_agent() {
    let d = tempfile::tempdir().unwrap();
    for args in [&["persist"][..], &["persist", "--only-paths", "/etc/ssh"], &["-v", "persist", "--print-public-key"]] {
        let o = ctl(args, d.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(
            err.trim(),
            "statelessctl: persist moved to the node agent: run `stateless-node persist` on the node"
        );
        assert!(o.stdout.is_empty());
    }
    let help = ok(&["--help"], d.path());
    assert!(!help.contains("persist"), "{help}");
}

#[test]
fn packed_bundles_are_world_readable() {
    // A bundle copied into a web server's document root must be readable by
    // the server's user (docs/protocol.md); the key protects its content.
    use std::os::unix::fs::PermissionsExt;
    let d = setup();
    let p = d.path();
    ok(&["bundle", "pack", "tree", "-o", "n.bundle", "--key", "site.key", "--generation", "1"], p);
    ok(&["bundle", "pack", "tree", "-o", "u.bundle", "--unencrypted", "--generation", "1"], p);
    for b in ["n.bundle", "u.bundle"] {
        assert_eq!(fs::metadata(p.join(b)).unwrap().permissions().mode() & 0o777, 0o644, "{b}");
    }
}
