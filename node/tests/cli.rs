//! The public contract of `stateless-node`: its commands against real files
//! and a real config server on 127.0.0.1 (the `stateless-server` library,
//! started by the test), exit codes and the lines people read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stateless_bundle::{BundleReader, Key, Limits, OpenOptions, Scope};
use stateless_server::push_auth::PushSigner;
use stateless_server::registry::{self, Approval};
use stateless_server::{DataDir, Server, ServerConfig, Target};

fn node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stateless-node")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = node(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a command that must fail with exit code 1 and one line on stderr.
fn fails(args: &[&str]) -> String {
    let o = node(args);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail: {}", String::from_utf8_lossy(&o.stdout));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    err
}

/// A status file as the loader writes it after a boot from the server.
const APPLIED: &str = r#"{
  "result": "applied",
  "source": "server",
  "server": "http://127.0.0.1:8080/v1/nodes/node42/bundle",
  "node": "node42",
  "generation": 7,
  "digest": "6f1c0e2b9d4a7c3e5f6a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e",
  "key_id": "3b0e6c5f1a2d4e7f8091a2b3c4d5e6f7",
  "key_source": "key file /etc/stateless/site.key",
  "fetched": 1767225600,
  "timings_ms": [["fetch", 12], ["total", 40]],
  "attempts": ["http://127.0.0.1:8080/v1/nodes/node42/bundle: 200"],
  "warnings": ["cache device LABEL=slcache not found; booting without a cache"],
  "message": "applied generation 7 from http://127.0.0.1:8080/v1/nodes/node42/bundle (key 3b0e6c5f… from key file /etc/stateless/site.key) in 0.0 s",
  "onfail": null
}"#;

#[test]
fn status_shows_the_boot_for_a_person() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("status.json");
    fs::write(&file, APPLIED).unwrap();
    let out = ok(&["status", "--status", file.to_str().unwrap()]);
    let want = "\
result:     applied
source:     server (http://127.0.0.1:8080/v1/nodes/node42/bundle)
node:       node42
generation: 7
digest:     6f1c0e2b9d4a7c3e5f6a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e
key:        3b0e6c5f1a2d4e7f8091a2b3c4d5e6f7 from key file /etc/stateless/site.key
fetched:    2026-01-01T00:00:00Z
warnings:   1
  - cache device LABEL=slcache not found; booting without a cache
console:    applied generation 7 from http://127.0.0.1:8080/v1/nodes/node42/bundle (key 3b0e6c5f… from key file /etc/stateless/site.key) in 0.0 s
";
    assert_eq!(out, want);

    // A failed boot: what is missing shows as `-`, and the onfail action.
    fs::write(&file, r#"{"result":"failed","source":"none","warnings":[],"message":"no usable key (tried: key file /etc/stateless/site.key: not found); onfail=emergency","onfail":"emergency"}"#)
        .unwrap();
    let out = ok(&["status", "--status", file.to_str().unwrap()]);
    assert!(out.starts_with("result:     failed (onfail=emergency)\nsource:     none\nnode:       -\n"), "{out}");
    assert!(out.contains("warnings:   none\nconsole:    no usable key (tried: key file /etc/stateless/site.key: not found); onfail=emergency\n"), "{out}");
}

#[test]
fn status_json_is_the_file_as_written() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("status.json");
    fs::write(&file, APPLIED).unwrap();
    let out = ok(&["status", "--json", "--status", file.to_str().unwrap()]);
    assert_eq!(out, format!("{APPLIED}\n"));
    fs::write(&file, format!("{APPLIED}\n")).unwrap();
    assert_eq!(ok(&["status", "--json", "--status", file.to_str().unwrap()]), format!("{APPLIED}\n"));
}

#[test]
fn status_without_a_file_says_why_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("status.json");
    for json in [&[][..], &["--json"]] {
        let mut args = vec!["status", "--status", file.to_str().unwrap()];
        args.extend_from_slice(json);
        let err = fails(&args);
        assert_eq!(
            err.trim(),
            format!(
                "stateless-node: no status file at {}: the loader did not run on this boot (or --status names another file)",
                file.display()
            )
        );
    }
    // A torn or foreign file is refused, in both modes, rather than shown.
    fs::write(&file, &APPLIED[..40]).unwrap();
    for json in [&[][..], &["--json"]] {
        let mut args = vec!["status", "--status", file.to_str().unwrap()];
        args.extend_from_slice(json);
        let err = fails(&args);
        assert!(err.contains("is not a loader status file"), "{err}");
    }
}

#[test]
fn help_lists_the_node_commands() {
    let help = ok(&["--help"]);
    assert!(help.contains("persist") && help.contains("status"), "{help}");
    assert_eq!(node(&[]).status.code(), Some(2));
}

/// A node's running root holding a host key, and its site key file.
struct NodeRoot {
    dir: tempfile::TempDir,
    key: Key,
}

impl NodeRoot {
    fn new() -> NodeRoot {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("root/etc/ssh")).unwrap();
        fs::write(dir.path().join("root/etc/ssh/ssh_host_ed25519_key"), "host key\n").unwrap();
        let key = Key::generate().unwrap();
        stateless_keys::write_key_file(&dir.path().join("site.key"), &key, false).unwrap();
        NodeRoot { dir, key }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// `persist` with no config file and the given status file.
    fn persist(&self, status: &str, extra: &[&str]) -> Output {
        let (none, root, key) = (self.path("none"), self.path("root"), self.path("site.key"));
        let mut args = vec!["persist", "--config", &none, "--status", status, "--root", &root, "--key", &key];
        args.extend_from_slice(extra);
        node(&args)
    }

    /// Opens a bundle with the site key into a new directory.
    fn open(&self, bundle: &[u8]) -> (u64, tempfile::TempDir) {
        let out = tempfile::tempdir().unwrap();
        let reader = BundleReader::new(bundle).unwrap();
        let generation = reader.raw_header().unverified().generation;
        assert_eq!(reader.raw_header().unverified().scope, Scope::Node("node42".into()));
        let b = reader.authenticate(Some(&self.key), &Limits::default()).unwrap();
        b.extract(OpenOptions { dest: Some(out.path()), owners: false, threaded: false }).unwrap();
        (generation, out)
    }
}

#[test]
fn persist_prints_the_push_public_key_and_never_the_key() {
    let n = NodeRoot::new();
    let out = n.persist(&n.path("none"), &["--node", "node42", "--print-public-key"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = PushSigner::new(&n.key, "node42").unwrap().public_key_hex();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{want}\n"));
}

#[test]
fn persist_writes_a_bundle_from_the_status_file_settings() {
    let n = NodeRoot::new();
    // Node and generation come from the loader's status file (no server
    // there, or persist would fetch the current bundle's header from it).
    let status = n.path("status.json");
    fs::write(&status, r#"{"result":"applied","node":"node42","generation":7}"#).unwrap();
    let bundle = n.path("out.bundle");
    let out = n.persist(&status, &["--output", &bundle, "--only-paths", "/etc/ssh/ssh_host_ed25519_key", "/etc/gone"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with(&format!("wrote {bundle} (generation 8, digest ")), "{stdout}");
    let (generation, opened) = n.open(&fs::read(&bundle).unwrap());
    assert_eq!(generation, 8);
    assert_eq!(fs::read_to_string(opened.path().join("etc/ssh/ssh_host_ed25519_key")).unwrap(), "host key\n");

    // Without a node anywhere: one line saying where to give it.
    let err = n.persist(&n.path("none"), &["--output", &bundle, "/etc/ssh"]);
    assert_eq!(err.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(err.stderr).unwrap(),
        "stateless-node: no node id: give --node or set node = in the config file\n"
    );
}

/// The reference server from the `stateless-server` library on an
/// ephemeral port of 127.0.0.1, serving `data` until the test ends.
fn serve(data: &Path) -> u16 {
    let cfg = ServerConfig::new(DataDir::open(data).unwrap());
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || server.run());
    port
}

#[test]
fn persist_pushes_to_the_config_server() {
    let n = NodeRoot::new();
    let data: PathBuf = n.dir.path().join("data");
    let port = serve(&data);
    let dir = DataDir::open(&data).unwrap();
    let public = PushSigner::new(&n.key, "node42").unwrap().public_key_hex();
    let approval = Approval { push_public_key: Some(public), auto_accept: true, ..Approval::default() };
    registry::approve(&dir, "node42", approval, "test".into()).unwrap();

    let server = format!("http://127.0.0.1:{port}");
    let out = n.persist(&n.path("none"), &["--server", &server, "--node", "node42", "/etc/ssh/ssh_host_ed25519_key"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("pushed generation 1 (digest ") && stdout.ends_with(": HTTP 201 published generation 1\n"),
        "{stdout}"
    );
    let published = stateless_server::store::published(&dir, &Target::node("node42").unwrap()).unwrap();
    assert_eq!(published.generation, 1);
    let bundle = fs::read(data.join("v1/nodes/node42/bundle")).unwrap();
    let (_, opened) = n.open(&bundle);
    assert_eq!(fs::read_to_string(opened.path().join("etc/ssh/ssh_host_ed25519_key")).unwrap(), "host key\n");

    // The next push starts from the published bundle: generation 2.
    fs::write(n.dir.path().join("root/etc/ssh/ssh_host_ed25519_key"), "new host key\n").unwrap();
    let out = n.persist(&n.path("none"), &["--server", &server, "--node", "node42", "/etc/ssh/ssh_host_ed25519_key"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pushed generation 2 "), "{out:?}");
}

/// A server that answers every request with a redirect to plain HTTP
/// elsewhere: persist neither follows it nor pushes anything there.
#[test]
fn persist_does_not_follow_redirects() {
    use std::io::{Read as _, Write as _};
    let n = NodeRoot::new();
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    trap.set_nonblocking(true).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{trap_port}/v1/nodes/node42/bundle\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = c.write_all(answer.as_bytes());
        }
    });
    let server = format!("http://127.0.0.1:{port}");
    let out = n.persist(&n.path("none"), &["--server", &server, "--node", "node42", "/etc/ssh/ssh_host_ed25519_key"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP 302: the server redirects to http://127.0.0.1:"), "{err}");
    assert!(err.contains("redirects are not followed"), "{err}");
    // Nothing reached the place the redirect named.
    assert!(matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

/// Runs `stateless-node` with its stdout a pipe whose reader is already
/// gone: every command that prints must end quietly with 0, never by a
/// panic or an error line.
fn into_closed_pipe(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stateless-node"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("status.json");
    fs::write(&file, APPLIED).unwrap();
    let n = NodeRoot::new();
    let none = n.path("none");
    let status = file.to_str().unwrap();
    let persist = ["persist", "--config", &none, "--status", &none, "--key", &n.path("site.key")];
    let runs: Vec<Vec<&str>> = vec![
        vec!["status", "--status", status],
        vec!["status", "--json", "--status", status],
        [&persist[..], &["--node", "node42", "--print-public-key"]].concat(),
        vec!["--help"],
        vec!["status", "--help"],
    ];
    for args in runs {
        let out = into_closed_pipe(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
    // A failure whose stderr is a pipe with no reader (closed before the
    // command starts, so there is no race) still ends with 1, not a panic.
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_stateless-node"))
        .args(["status", "--status", "/nonexistent/status.json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(writer))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn report_sends_kept_reports_oldest_first_and_stops_when_no_server_answers() {
    let t = tempfile::tempdir().unwrap();
    let key = Key::generate().unwrap();
    let key_file = t.path().join("node.key");
    stateless_keys::write_key_file(&key_file, &key, false).unwrap();
    let kept = t.path().join("reports");
    let dir_s = kept.to_str().unwrap().to_owned();
    let key_s = key_file.to_str().unwrap().to_owned();
    // Nothing kept: nothing to do, and no key needed.
    assert_eq!(ok(&["report", "--dir", &dir_s, "--config", "/nonexistent"]), format!("no kept reports in {dir_s}\n"));
    fs::create_dir_all(&kept).unwrap();
    for (i, g) in [(1, 5), (2, 6)] {
        let body = format!(
            r#"{{"node":"node42","result":"applied","generation":{g},"server":"http://127.0.0.1:1/v1/nodes/node42/bundle"}}"#
        );
        fs::write(kept.join(format!("{i:013}-1.json")), body).unwrap();
    }
    // The server each report names is down: an error, and both stay.
    let err = fails(&["report", "--dir", &dir_s, "--key", &key_s, "--config", "/nonexistent"]);
    assert!(err.contains("sending") && err.contains("0 sent before"), "{err}");
    assert_eq!(fs::read_dir(&kept).unwrap().count(), 2);
    // A server that takes them (the node enrolled for push).
    let data = t.path().join("data");
    let port = serve(&data);
    let public = PushSigner::new(&key, "node42").unwrap().public_key_hex();
    let dir = DataDir::open(&data).unwrap();
    registry::approve(&dir, "node42", Approval { push_public_key: Some(public), ..Approval::default() }, "t".into())
        .unwrap();
    let server = format!("http://127.0.0.1:{port}");
    let out = ok(&["report", "--dir", &dir_s, "--key", &key_s, "--server", &server, "--config", "/nonexistent"]);
    assert_eq!(out, "sent 2 kept report(s)\n");
    assert_eq!(fs::read_dir(&kept).unwrap().count(), 0);
    let stored = stateless_server::reports::list(&dir, "node42", 10);
    assert_eq!(stored.len(), 2);
    // Newest first on the server: the oldest was sent first.
    assert_eq!(stored[0].report["generation"], 6);
}
