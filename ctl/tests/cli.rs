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
