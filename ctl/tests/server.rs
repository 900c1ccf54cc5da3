//! `statelessctl serve` and friends against real clients on 127.0.0.1: raw
//! HTTP requests, the node agent's `persist` (`stateless-node`, run
//! in-process), the loader binary, and nginx serving (and accepting WebDAV
//! PUTs into) the same data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/noise.rs"]
mod noise;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stateless_bundle::{Key, Limits, PackOptions, Scope};

fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_statelessctl"))
}

fn run(args: &[&str]) -> Output {
    ctl().args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

/// `statelessctl serve` on an ephemeral port, killed when dropped. Its
/// stderr is read to the end by a thread (so a log line never meets a
/// closed pipe) and kept in `log`.
struct Serve {
    port: u16,
    child: Child,
    log: Arc<std::sync::Mutex<String>>,
}

impl Serve {
    fn start(data: &Path, extra: &[&str]) -> Serve {
        let mut child = ctl()
            .args(["serve", "--data", data.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(": serving ") {
                    let port = line.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).ok().flatten();
        let port = port.unwrap_or_else(|| panic!("serve did not start: {}", log.lock().unwrap()));
        Serve { port, child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 exchange on a fresh connection: (status, head, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    parse_response(&resp)
}

fn parse_response(resp: &[u8]) -> (u16, String, Vec<u8>) {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("{resp:?}")) + 4;
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, resp[end..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

struct Site {
    dir: tempfile::TempDir,
    key: Key,
    key_file: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        let key_file = dir.path().join("site.key");
        stateless_keys::write_key_file(&key_file, &key, false).unwrap();
        Site { dir, key, key_file }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn data_s(&self) -> String {
        self.data().display().to_string()
    }

    fn key_s(&self) -> String {
        self.key_file.display().to_string()
    }

    /// Packs a bundle file holding `files`; returns its path.
    fn bundle(&self, name: &str, generation: u64, scope: Scope, files: &[(&str, &[u8])]) -> PathBuf {
        let tree = tempfile::tempdir().unwrap();
        for (p, data) in files {
            let path = tree.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        let opts = PackOptions {
            key: Some(&self.key),
            generation,
            created: 1_760_000_000,
            expires: None,
            scope,
            level: 3,
            threads: 0,
            deletions: vec![],
            limits: Limits::default(),
        };
        let out = self.dir.path().join(name);
        stateless_bundle::pack(tree.path(), fs::File::create(&out).unwrap(), &opts).unwrap();
        out
    }

    fn publish(&self, target: &[&str], bundle: &Path) -> String {
        let mut args = vec!["publish", "--data"];
        let data = self.data_s();
        args.push(&data);
        args.extend_from_slice(target);
        let b = bundle.display().to_string();
        args.push(&b);
        ok(&args)
    }

    fn digest(path: &Path) -> String {
        let bytes = fs::read(path).unwrap();
        stateless_bundle::BundleReader::new(&bytes[..]).unwrap().raw_header().digest_hex()
    }

    /// Opens a bundle file with the site key into a new directory.
    fn open(&self, bytes: &[u8]) -> tempfile::TempDir {
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("x");
        fs::create_dir(&dest).unwrap();
        let reader = stateless_bundle::BundleReader::new(bytes).unwrap();
        let b = reader.authenticate(Some(&self.key), &Limits::default()).unwrap();
        b.extract(stateless_bundle::OpenOptions { dest: Some(&dest), owners: false, threaded: false }).unwrap();
        out
    }
}

fn node_scope() -> Scope {
    Scope::Node("node42".into())
}

const NODE_PATH: &str = "/v1/nodes/node42/bundle";

#[test]
fn publish_and_fetch_with_etag_304_and_range() {
    let site = Site::new();
    let b3 = site.bundle("b3", 3, node_scope(), &[("etc/motd", b"gen3\n")]);
    let out = site.publish(&["--node", "node42"], &b3);
    assert!(out.contains("published generation 3 as the node node42 bundle"), "{out}");
    let srv = Serve::start(&site.data(), &[]);
    let want = fs::read(&b3).unwrap();
    let digest = Site::digest(&b3);
    let etag = format!("\"{digest}\"");

    let (status, head, body) = http(srv.port, "GET", NODE_PATH, &[], b"");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, want);
    assert_eq!(header(&head, "etag"), Some(etag.as_str()));
    assert_eq!(header(&head, "content-length"), Some(want.len().to_string().as_str()));

    // HEAD: same head, no body.
    let (status, head, body) = http(srv.port, "HEAD", NODE_PATH, &[], b"");
    assert_eq!((status, body.len()), (200, 0), "{head}");
    assert_eq!(header(&head, "etag"), Some(etag.as_str()));

    // The loader's If-None-Match (quoted digest), a list, a weak tag, and a stale tag.
    for inm in [etag.clone(), format!("\"0000\", {etag}"), format!("W/{etag}")] {
        let (status, head, body) = http(srv.port, "GET", NODE_PATH, &[("If-None-Match", &inm)], b"");
        assert_eq!((status, body.len()), (304, 0), "{inm}: {head}");
        assert_eq!(header(&head, "etag"), Some(etag.as_str()));
    }
    let (status, _, body) = http(srv.port, "GET", NODE_PATH, &[("If-None-Match", "\"stale\"")], b"");
    assert_eq!((status, body), (200, want.clone()));

    // Range, as the loader resumes: from an offset, with If-Range.
    let (status, head, body) = http(srv.port, "GET", NODE_PATH, &[("Range", "bytes=100-"), ("If-Range", &etag)], b"");
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, want[100..]);
    assert_eq!(header(&head, "content-range"), Some(format!("bytes 100-{}/{}", want.len() - 1, want.len()).as_str()));
    let (status, _, body) = http(srv.port, "GET", NODE_PATH, &[("Range", "bytes=0-319")], b"");
    assert_eq!((status, body.len()), (206, 320));
    let (status, _, body) = http(srv.port, "GET", NODE_PATH, &[("Range", "bytes=-10")], b"");
    assert_eq!((status, body), (206, want[want.len() - 10..].to_vec()));
    // If-Range naming another version: the whole new body.
    let (status, _, body) = http(srv.port, "GET", NODE_PATH, &[("Range", "bytes=100-"), ("If-Range", "\"old\"")], b"");
    assert_eq!((status, body), (200, want.clone()));
    let far = format!("bytes={}-", want.len());
    let (status, head, _) = http(srv.port, "GET", NODE_PATH, &[("Range", &far)], b"");
    assert_eq!(status, 416);
    assert_eq!(header(&head, "content-range"), Some(format!("bytes */{}", want.len()).as_str()));

    // Nothing but the three protocol paths, with valid names, is served.
    for path in ["/v1/groups/rack7/bundle", "/v1/default/bundle", "/state/seen.json", "/v1/nodes/../state/audit.log"] {
        assert_eq!(http(srv.port, "GET", path, &[], b"").0, 404, "{path}");
    }
    assert_eq!(http(srv.port, "DELETE", NODE_PATH, &[], b"").0, 405);

    // Publishing: the generation must increase; the old bundle is kept.
    let again = site.bundle("b3b", 3, node_scope(), &[("etc/motd", b"other 3\n")]);
    let err = fails(&["publish", "--data", &site.data_s(), "--node", "node42", again.to_str().unwrap()]);
    assert!(err.contains("generation 3 is not newer than the published generation 3"), "{err}");
    let wrong = site.bundle("w", 9, Scope::Node("node43".into()), &[("etc/motd", b"x\n")]);
    let err = fails(&["publish", "--data", &site.data_s(), "--node", "node42", wrong.to_str().unwrap()]);
    assert!(err.contains("scoped node:node43; it cannot be published as the node node42 bundle"), "{err}");
    let err = fails(&["publish", "--data", &site.data_s(), "--node", "../x", again.to_str().unwrap()]);
    assert!(err.contains("invalid name"), "{err}");
    let b4 = site.bundle("b4", 4, node_scope(), &[("etc/motd", b"gen4\n")]);
    let out = site.publish(&["--node", "node42"], &b4);
    assert!(out.contains("replacing generation 3"), "{out}");
    let (status, head, body) = http(srv.port, "GET", NODE_PATH, &[("If-None-Match", &etag)], b"");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, fs::read(&b4).unwrap());
    let hist = site.data().join("state/history/nodes/node42/00000000000000000003.bundle");
    assert_eq!(fs::read(hist).unwrap(), want);
    // Default and group bundles.
    let d = site.bundle("d1", 1, Scope::Any, &[("etc/motd", b"default\n")]);
    site.publish(&["--default"], &d);
    let g = site.bundle("g1", 1, Scope::Group("rack7".into()), &[("etc/motd", b"rack7\n")]);
    site.publish(&["--group", "rack7"], &g);
    assert_eq!(http(srv.port, "GET", "/v1/default/bundle", &[], b"").2, fs::read(&d).unwrap());
    assert_eq!(http(srv.port, "GET", "/v1/groups/rack7/bundle", &[], b"").2, fs::read(&g).unwrap());
    let audit = fs::read_to_string(site.data().join("state/audit.log")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains("\"publish\"")).count(), 4, "{audit}");
}

#[test]
fn hostile_requests_are_bounded() {
    let site = Site::new();
    let srv = Serve::start(&site.data(), &["--head-timeout", "1"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.write_all(format!("GET /{} HTTP/1.1\r\n", "a".repeat(10_000)).as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert_eq!(parse_response(&resp).0, 431);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert_eq!(parse_response(&resp).0, 400);
    // A client that starts a request and stalls is answered 408 and dropped.
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v1/default/bundle HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert_eq!(parse_response(&resp).0, 408);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Plain HTTP off loopback must be asked for explicitly.
    let err = fails(&["serve", "--data", &site.data_s(), "--listen", "0.0.0.0:0"]);
    assert!(err.contains("refusing plain HTTP"), "{err}");
}

fn nodes_json(site: &Site) -> serde_json::Value {
    serde_json::from_str(&ok(&["nodes", "--data", &site.data_s(), "--json"])).unwrap()
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn unknown_nodes_are_pending_until_approved_or_rejected() {
    let site = Site::new();
    let srv = Serve::start(&site.data(), &[]);
    assert_eq!(http(srv.port, "GET", "/v1/nodes/newnode/bundle", &[], b"").0, 404);
    assert_eq!(http(srv.port, "GET", "/v1/nodes/intruder/bundle", &[], b"").0, 404);
    wait_for(|| nodes_json(&site).as_array().unwrap().len() == 2, "two pending nodes");
    let list = nodes_json(&site);
    let n = list.as_array().unwrap().iter().find(|n| n["node"] == "newnode").unwrap().clone();
    assert_eq!(n["state"], "pending");
    assert_eq!(n["address"], "127.0.0.1");
    assert!(n["first_seen"].as_str().unwrap().ends_with('Z'), "{n}");
    let text = ok(&["nodes", "--data", &site.data_s()]);
    assert!(text.contains("newnode") && text.contains("pending"), "{text}");

    let out = ok(&["approve", "--data", &site.data_s(), "newnode", "--group", "rack7"]);
    assert!(out.contains("approved newnode in group rack7"), "{out}");
    ok(&["reject", "--data", &site.data_s(), "intruder"]);
    // The server keeps recording requests; states come from the admin.
    assert_eq!(http(srv.port, "GET", "/v1/nodes/intruder/bundle", &[], b"").0, 404);
    let list = nodes_json(&site);
    let state = |id: &str| list.as_array().unwrap().iter().find(|n| n["node"] == id).unwrap().clone();
    assert_eq!(state("newnode")["state"], "known");
    assert_eq!(state("newnode")["group"], "rack7");
    assert_eq!(state("intruder")["state"], "rejected");
    let audit = fs::read_to_string(site.data().join("state/audit.log")).unwrap();
    assert!(audit.contains("\"approve\"") && audit.contains("\"reject\""), "{audit}");
    assert!(fails(&["approve", "--data", &site.data_s(), "../etc"]).contains("invalid name"));
}

/// A node's running root and its `stateless-node persist` command line.
struct NodeRoot {
    dir: tempfile::TempDir,
}

impl NodeRoot {
    fn new() -> NodeRoot {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc/ssh")).unwrap();
        fs::write(dir.path().join("etc/ssh/ssh_host_ed25519_key"), "host key\n").unwrap();
        NodeRoot { dir }
    }

    /// The line `stateless-node persist` prints, or its one-line error.
    fn persist(&self, site: &Site, server: &str, extra: &[&str]) -> Result<String, String> {
        use clap::Parser;
        use stateless_node::cli::{Cli, Command};
        let root = self.dir.path().display().to_string();
        let none = self.dir.path().join("none").display().to_string();
        let mut args = vec![
            "stateless-node",
            "persist",
            "--config",
            &none,
            "--status",
            &none,
            "--root",
            &root,
            "--server",
            server,
            "--node",
            "node42",
        ];
        let key = site.key_s();
        args.extend_from_slice(&["--key", &key]);
        args.extend_from_slice(extra);
        args.push("/etc/ssh/ssh_host_ed25519_key");
        let Command::Persist(a) = Cli::try_parse_from(&args).unwrap().command else { unreachable!() };
        stateless_node::persist::run(&a).map(|o| o.to_string()).map_err(|e| format!("{e:#}"))
    }
}

fn spool_and_pushes_empty(site: &Site) {
    let spool: Vec<_> = fs::read_dir(site.data().join("state/spool")).unwrap().collect();
    assert!(spool.is_empty(), "{spool:?}");
    let pushes = site.data().join("state/pushes/node42");
    assert!(!pushes.exists() || fs::read_dir(&pushes).unwrap().next().is_none());
}

#[test]
fn push_waits_for_review_then_auto_accept() {
    let site = Site::new();
    let b3 = site.bundle("b3", 3, node_scope(), &[("etc/motd", b"from the admin\n")]);
    site.publish(&["--node", "node42"], &b3);
    let srv = Serve::start(&site.data(), &[]);
    let server = format!("http://127.0.0.1:{}", srv.port);
    let node = NodeRoot::new();
    // Not enrolled yet: 401, nothing kept.
    let err = node.persist(&site, &server, &[]).unwrap_err();
    assert!(err.contains("HTTP 401: node is not enrolled for push"), "{err}");
    spool_and_pushes_empty(&site);

    let out = ok(&["approve", "--data", &site.data_s(), "node42", "--push-key", &site.key_s()]);
    assert!(out.contains("push enrolled (review)"), "{out}");
    let record = fs::read_to_string(site.data().join("state/nodes/node42.json")).unwrap();
    assert!(!record.contains(&stateless_bundle::key::hex_encode(site.key.as_bytes())), "the key must not be stored");
    let stdout = node.persist(&site, &server, &[]).unwrap();
    assert!(stdout.contains("pushed generation 4") && stdout.contains("HTTP 202"), "{stdout}");
    // Awaiting review: the published bundle is unchanged.
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").2, fs::read(&b3).unwrap());
    let pushes: serde_json::Value = serde_json::from_str(&ok(&["pushes", "--data", &site.data_s(), "--json"])).unwrap();
    assert_eq!(pushes[0]["node"], "node42");
    assert_eq!(pushes[0]["generation"], 4);
    assert!(ok(&["pushes", "--data", &site.data_s()]).contains("node42"));
    let err = fails(&["accept-push", "--data", &site.data_s(), "node42", "5"]);
    assert!(err.contains("no pushed bundle of generation 5"), "{err}");
    ok(&["accept-push", "--data", &site.data_s(), "node42", "4"]);
    let (_, _, body) = http(srv.port, "GET", NODE_PATH, &[], b"");
    let opened = site.open(&body);
    let x = opened.path().join("x");
    // The admin's content and the persisted path, both.
    assert_eq!(fs::read_to_string(x.join("etc/motd")).unwrap(), "from the admin\n");
    assert_eq!(fs::read_to_string(x.join("etc/ssh/ssh_host_ed25519_key")).unwrap(), "host key\n");
    assert!(ok(&["pushes", "--data", &site.data_s(), "--json"]).trim() == "[]");

    // Auto-accept: published on arrival.
    ok(&["approve", "--data", &site.data_s(), "node42", "--auto-accept"]);
    fs::write(node.dir.path().join("etc/ssh/ssh_host_ed25519_key"), "new host key\n").unwrap();
    let out = node.persist(&site, &server, &[]).unwrap();
    assert!(out.contains("HTTP 201"), "{out}");
    let (_, _, body) = http(srv.port, "GET", NODE_PATH, &[], b"");
    let opened = site.open(&body);
    assert_eq!(fs::read_to_string(opened.path().join("x/etc/ssh/ssh_host_ed25519_key")).unwrap(), "new host key\n");
    let audit = fs::read_to_string(site.data().join("state/audit.log")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains("\"accept-push\"")).count(), 2, "{audit}");
    assert_eq!(audit.lines().filter(|l| l.contains("\"push-received\"")).count(), 2, "{audit}");
}

#[test]
fn push_with_bad_proof_or_lower_generation_is_refused() {
    let site = Site::new();
    let b3 = site.bundle("b3", 3, node_scope(), &[("etc/motd", b"gen3\n")]);
    site.publish(&["--node", "node42"], &b3);
    ok(&["approve", "--data", &site.data_s(), "node42", "--push-key", &site.key_s(), "--auto-accept"]);
    let srv = Serve::start(&site.data(), &[]);
    let push = site.bundle("p5", 5, node_scope(), &[("etc/motd", b"pushed\n")]);
    let body = fs::read(&push).unwrap();
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let len = body.len() as u64;

    // Signed with a key derived from another key.
    let other = stateless_server::push_auth::PushSigner::new(&Key::generate().unwrap(), "node42").unwrap();
    let auth = other.authorization("PUT", NODE_PATH, now, &sha, len);
    let (status, head, _) = http(srv.port, "PUT", NODE_PATH, &[("Authorization", &auth)], &body);
    assert_eq!(status, 401, "{head}");
    // The right key, but the body changed after signing.
    let good = stateless_server::push_auth::PushSigner::new(&site.key, "node42").unwrap();
    let auth = good.authorization("PUT", NODE_PATH, now, &sha, len);
    let mut tampered = body.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(http(srv.port, "PUT", NODE_PATH, &[("Authorization", &auth)], &tampered).0, 401);
    // Too old a timestamp.
    let stale = good.authorization("PUT", NODE_PATH, now - 3600, &sha, len);
    assert_eq!(http(srv.port, "PUT", NODE_PATH, &[("Authorization", &stale)], &body).0, 401);
    // No credentials; credentials for another node's path.
    assert_eq!(http(srv.port, "PUT", NODE_PATH, &[], &body).0, 401);
    let (status, _, _) = http(srv.port, "PUT", "/v1/nodes/node43/bundle", &[("Authorization", &auth)], &body);
    assert_eq!(status, 401);
    spool_and_pushes_empty(&site);
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").2, fs::read(&b3).unwrap(), "nothing published");

    // A correctly signed push of a lower generation: 409, nothing kept.
    let low = site.bundle("p2", 2, node_scope(), &[("etc/motd", b"old\n")]);
    let low_body = fs::read(&low).unwrap();
    let low_sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&low_body).into();
    let auth = good.authorization("PUT", NODE_PATH, now, &low_sha, low_body.len() as u64);
    let (status, _, msg) = http(srv.port, "PUT", NODE_PATH, &[("Authorization", &auth)], &low_body);
    assert_eq!(status, 409);
    assert!(String::from_utf8_lossy(&msg).contains("generation 2 is not newer than generation 3"), "{msg:?}");
    let node = NodeRoot::new();
    let err = node.persist(&site, &format!("http://127.0.0.1:{}", srv.port), &["--generation", "3"]).unwrap_err();
    assert!(err.contains("HTTP 409"), "{err}");
    // A bundle for another node, correctly signed: refused.
    let alien = site.bundle("a", 9, Scope::Node("node43".into()), &[("etc/motd", b"x\n")]);
    let alien_body = fs::read(&alien).unwrap();
    let alien_sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&alien_body).into();
    let auth = good.authorization("PUT", NODE_PATH, now, &alien_sha, alien_body.len() as u64);
    assert_eq!(http(srv.port, "PUT", NODE_PATH, &[("Authorization", &auth)], &alien_body).0, 422);
    spool_and_pushes_empty(&site);
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").2, fs::read(&b3).unwrap(), "nothing published");
    // And the good one goes through (auto-accept).
    let auth = good.authorization("PUT", NODE_PATH, now, &sha, len);
    assert_eq!(http(srv.port, "PUT", NODE_PATH, &[("Authorization", &auth)], &body).0, 201);
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").2, body);
    // The captured push, replayed within its 300 s: refused as a replay
    // (each proof is good once), whatever the state of the generations.
    let (status, _, msg) = http(srv.port, "PUT", NODE_PATH, &[("Authorization", &auth)], &body);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&msg));
    assert!(String::from_utf8_lossy(&msg).contains("already used"), "{msg:?}");
    spool_and_pushes_empty(&site);
    // A new proof (another second) for the same bundle is judged as a push.
    let again = good.authorization("PUT", NODE_PATH, now + 1, &sha, len);
    assert_eq!(http(srv.port, "PUT", NODE_PATH, &[("Authorization", &again)], &body).0, 409);
}

// ---- the loader binary and nginx ----

fn loader_bin() -> PathBuf {
    // target/debug/deps/server-HASH -> target/debug/stateless-loader; built by
    // `cargo test --workspace` (or `cargo build -p stateless-loader`).
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("stateless-loader");
    assert!(bin.exists(), "{} is missing: run cargo build -p stateless-loader", bin.display());
    bin
}

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        for d in ["sysroot/etc", "run", "cache"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Node { dir }
    }

    fn boot(&self, cmdline: &str) -> (i32, String, serde_json::Value) {
        let _ = fs::remove_file(self.dir.path().join("run/status.json"));
        let out = Command::new(loader_bin())
            .arg("--cmdline")
            .arg(cmdline)
            .arg("--sysroot")
            .arg(self.dir.path().join("sysroot"))
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .env("STATELESS_LOG_STDERR", "1")
            .output()
            .unwrap();
        let status = fs::read(self.dir.path().join("run/status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), status)
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.dir.path().join("sysroot").join(rel)).ok()
    }
}

fn require(bin: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{bin} is not installed: scripts/test installs it"))
}

/// nginx serving `root` on 127.0.0.1 (`location_conf` inside `location /`).
struct Nginx {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path, location_conf: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off; sendfile on; tcp_nopush off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {root};
    location / {{ return 404; }}
    location /v1/ {{ {location_conf} }}
  }}
}}
",
            root = root.display()
        );
        fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(require("nginx"))
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "nginx: {}",
                fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { port, child, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA and a server certificate for 127.0.0.1: (CA, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    require("openssl");
    let d = dir.display();
    fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n").unwrap();
    let script = format!(
        "set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=test-ca \
  -keyout {d}/ca.key -out {d}/ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
  -keyout {d}/server.key -out {d}/server.csr
openssl x509 -req -in {d}/server.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 2 \
  -extfile {d}/server.ext -out {d}/server.pem
"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[test]
fn loader_fetches_from_serve_over_http_and_https() {
    let site = Site::new();
    let b = site.bundle("b5", 5, node_scope(), &[("etc/motd", b"served by statelessctl\n")]);
    site.publish(&["--node", "node42"], &b);
    let srv = Serve::start(&site.data(), &[]);
    let node = Node::new();
    let cmd = format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.key=file:{} rd.stateless.timeout=30",
        srv.port,
        site.key_s()
    );
    let (code, err, status) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("served by statelessctl\n"));
    assert_eq!(status["source"], "server");
    assert_eq!(status["generation"], 5);
    // The second boot sends the cached digest and gets 304.
    let (code, err, status) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert!(status["attempts"].to_string().contains(": 304"), "{status}");

    // HTTPS with the site's CA.
    let (ca, cert, key) = certificates(site.dir.path());
    let tls = Serve::start(&site.data(), &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=https://127.0.0.1:{} rd.stateless.ca={} rd.stateless.node=node42 rd.stateless.key=file:{} rd.stateless.timeout=30",
        tls.port,
        ca.display(),
        site.key_s()
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "server");
    assert_eq!(node.read("etc/motd").as_deref(), Some("served by statelessctl\n"));
    // And persist pushes over https with --ca.
    ok(&["approve", "--data", &site.data_s(), "node42", "--push-key", &site.key_s()]);
    let root = NodeRoot::new();
    let out = root.persist(&site, &format!("https://127.0.0.1:{}", tls.port), &["--ca", ca.to_str().unwrap()]).unwrap();
    assert!(out.contains("pushed generation 6"), "{out}");
}

/// A TCP proxy to `upstream` that cuts its first `cuts` connections after
/// `cut_after` response bytes. Returns its port and the count of response
/// bytes it passed on.
fn cutting_proxy(upstream: u16, cut_after: usize, cuts: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let total = Arc::new(AtomicUsize::new(0));
    let counter = total.clone();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { return };
            let limit = (n < cuts).then_some(cut_after);
            let counter = counter.clone();
            std::thread::spawn(move || {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                });
                let mut sent = 0;
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = server.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let n = limit.map_or(n, |l| n.min(l - sent));
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    counter.fetch_add(n, Ordering::Relaxed);
                    if limit == Some(sent) {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, total)
}

#[test]
fn loader_resumes_a_cut_transfer_from_serve() {
    let site = Site::new();
    // Incompressible (xorshift), so the bundle is as large as the file.
    let big = noise::incompressible(2_000_000, 0x9E37_79B9_7F4A_7C15);
    let b = site.bundle("big", 1, node_scope(), &[("usr/lib/big", &big)]);
    site.publish(&["--node", "node42"], &b);
    let srv = Serve::start(&site.data(), &[]);
    // The first connection is cut after ~700 kB: the loader resumes with
    // Range and If-Range carrying the server's entity tag, and gets a 206.
    let (proxy, passed) = cutting_proxy(srv.port, 700_000, 1);
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{proxy} rd.stateless.node=node42 rd.stateless.key=file:{} rd.stateless.timeout=30",
        site.key_s()
    ));
    assert_eq!(code, 0, "{err}");
    assert!(status["attempts"][0].as_str().unwrap().contains("1 resumes"), "{status}");
    assert_eq!(fs::read(node.dir.path().join("sysroot/usr/lib/big")).unwrap(), big);
    // Resumed, not restarted: the bundle crossed the proxy once, plus heads.
    let len = fs::metadata(&b).unwrap().len() as usize;
    let passed = passed.load(Ordering::Relaxed);
    assert!(passed < len + 10_000, "{passed} bytes passed for a {len}-byte bundle");
}

#[test]
fn loader_fetches_from_nginx_serving_the_same_data_dir() {
    let site = Site::new();
    let d = site.bundle("d1", 1, Scope::Any, &[("etc/motd", b"default via nginx\n")]);
    site.publish(&["--default"], &d);
    // The server's state is beside the bundles; nginx must not serve it.
    let nginx = Nginx::start(&site.data(), "");
    assert_eq!(http(nginx.port, "GET", "/state/audit.log", &[], b"").0, 404);
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.key=file:{} rd.stateless.timeout=30",
        nginx.port,
        site.key_s()
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("default via nginx\n"));
    assert!(status["attempts"].to_string().contains("nodes/node42/bundle: 404"), "{status}");
}

#[test]
fn persist_puts_to_nginx_webdav() {
    let site = Site::new();
    let b = site.bundle("b1", 1, node_scope(), &[("etc/motd", b"gen1\n")]);
    site.publish(&["--node", "node42"], &b);
    // A plain site: nginx's WebDAV PUT writes the node's bundle directly
    // (the site's own access control decides who may; nginx ignores the proof).
    let nginx = Nginx::start(
        &site.data(),
        "dav_methods PUT; create_full_put_path on; dav_access user:rw group:r all:r; client_max_body_size 64m;",
    );
    let root = NodeRoot::new();
    let out = root.persist(&site, &format!("http://127.0.0.1:{}", nginx.port), &[]).unwrap();
    assert!(out.contains("pushed generation 2"), "{out}");
    let stored = fs::read(site.data().join("v1/nodes/node42/bundle")).unwrap();
    let opened = site.open(&stored);
    assert_eq!(fs::read_to_string(opened.path().join("x/etc/ssh/ssh_host_ed25519_key")).unwrap(), "host key\n");
    // The loader applies what was pushed.
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.key=file:{} rd.stateless.timeout=30",
        nginx.port,
        site.key_s()
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 2);
    assert_eq!(node.read("etc/ssh/ssh_host_ed25519_key").as_deref(), Some("host key\n"));
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen1\n"));
}

// ---- hostile clients, faults and crashes ----

/// A TCP connection to the server on 127.0.0.1 from another loopback
/// address (Linux routes all of 127/8 to lo), to play a second host.
fn connect_from(src: [u8; 4], port: u16) -> TcpStream {
    connect_from_with(src, port, None)
}

/// [`connect_from`], with a fixed receive buffer.
fn connect_from_with(src: [u8; 4], port: u16, rcvbuf: Option<usize>) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket, sockopt};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        sockopt::set_socket_recv_buffer_size(&fd, n).unwrap();
    }
    bind(&fd, &std::net::SocketAddr::from((src, 0))).unwrap();
    connect(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    TcpStream::from(fd)
}

/// Sends raw bytes, reads until the server closes: (status of the first
/// answer, number of answers, everything read).
fn raw(port: u16, req: &[u8]) -> (u16, usize, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let answers = text.split("\r\n").filter(|l| l.starts_with("HTTP/1.1 ")).count();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answers, text)
}

/// Pseudo-random bytes (xorshift): incompressible, so a bundle of them is
/// as large as they are.
fn noise_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn seen_nodes(site: &Site) -> Vec<String> {
    let v = nodes_json(site);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|n| !n["first_seen"].is_null())
        .map(|n| n["node"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let site = Site::new();
    let b = site.bundle("b1", 1, node_scope(), &[("etc/motd", b"x\n")]);
    site.publish(&["--node", "node42"], &b);
    let srv = Serve::start(&site.data(), &[]);
    for (req, want) in stateless_server::http::AMBIGUOUS_HEADS {
        // Whatever follows the head would be the smuggled request.
        let mut bytes = req.to_vec();
        bytes.extend_from_slice(b"GET /v1/nodes/smuggled/bundle HTTP/1.1\r\nHost: a\r\n\r\n");
        let (status, answers, text) = raw(srv.port, &bytes);
        assert_eq!((status, answers), (*want, 1), "{:?}: {text}", String::from_utf8_lossy(req));
        assert!(text.contains("Connection: close"), "{text}");
    }
    // The reproduction: two lengths, the body a second request.
    let smuggle = b"GET /v1/nodes/node42/bundle HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 56\r\n\r\nGET /v1/nodes/smuggled2/bundle HTTP/1.1\r\nHost: a\r\n\r\n";
    let (status, answers, _) = raw(srv.port, smuggle);
    assert_eq!((status, answers), (400, 1));
    // A good keep-alive request still works, and pipelining is kept.
    let two = b"HEAD /v1/nodes/node42/bundle HTTP/1.1\r\nHost: a\r\n\r\nHEAD /v1/nodes/node42/bundle HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let (status, answers, _) = raw(srv.port, two);
    assert_eq!((status, answers), (200, 2));
    std::thread::sleep(Duration::from_millis(1500));
    let seen = seen_nodes(&site);
    assert!(!seen.iter().any(|n| n.starts_with("smuggled")), "{seen:?}");
    // A byte range past anything a u64 holds is still past the end.
    // In any case of the unit, and when every range of a list is past it.
    for r in [
        "bytes=99999999999999999999999-",
        "bytes=18446744073709551616-",
        "BYTES=99999999999999999999999-",
        "Bytes=-0",
        "bytes=99999999999999999999999-,18446744073709551616-",
    ] {
        let (status, head, _) = http(srv.port, "GET", NODE_PATH, &[("Range", r)], b"");
        assert_eq!(status, 416, "{r}: {head}");
    }
    let (status, _, body) = http(srv.port, "GET", NODE_PATH, &[("Range", "bytes=0-99999999999999999999999")], b"");
    assert_eq!((status, body), (206, fs::read(&b).unwrap()));
}

#[test]
fn push_proofs_with_repeated_or_unknown_parameters_are_refused() {
    let site = Site::new();
    let b3 = site.bundle("b3", 3, node_scope(), &[("etc/motd", b"gen3\n")]);
    site.publish(&["--node", "node42"], &b3);
    ok(&["approve", "--data", &site.data_s(), "node42", "--push-key", &site.key_s(), "--auto-accept"]);
    let srv = Serve::start(&site.data(), &[]);
    let push = site.bundle("p5", 5, node_scope(), &[("etc/motd", b"pushed\n")]);
    let body = fs::read(&push).unwrap();
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let good = stateless_server::push_auth::PushSigner::new(&site.key, "node42").unwrap();
    let auth = good.authorization("PUT", NODE_PATH, now, &sha, body.len() as u64);
    let params = auth.strip_prefix("Stateless-Push-Ed25519 ").unwrap();
    for bad in [
        format!("Stateless-Push-Ed25519 {params},node=node42"),
        format!("Stateless-Push-Ed25519 node=node43,{params}"),
        format!("Stateless-Push-Ed25519 {params},ts={now}"),
        format!("Stateless-Push-Ed25519 {params},extra=1"),
        format!("Stateless-Push-Ed25519 {}", params.replace(&format!("ts={now}"), &format!("ts=+{now}"))),
    ] {
        let (status, head, _) = http(srv.port, "PUT", NODE_PATH, &[("Authorization", &bad)], &body);
        assert_eq!(status, 401, "{bad}: {head}");
    }
    // Two Authorization headers are not a way around it either.
    let mut req = format!("PUT {NODE_PATH} HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nAuthorization: {auth}\r\n");
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    assert_eq!(raw(srv.port, &bytes).0, 400);
    spool_and_pushes_empty(&site);
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").2, fs::read(&b3).unwrap(), "nothing published");
    assert_eq!(http(srv.port, "PUT", NODE_PATH, &[("Authorization", &auth)], &body).0, 201);
}

#[test]
fn a_registration_flood_never_crowds_out_real_nodes() {
    let site = Site::new();
    ok(&["approve", "--data", &site.data_s(), "approved1"]);
    let srv = Serve::start(&site.data(), &["--max-seen", "40", "--max-seen-per-address", "10"]);
    // 500 invented ids from 127.0.0.2, on one keep-alive connection.
    let mut s = connect_from([127, 0, 0, 2], srv.port);
    let mut reqs = String::new();
    for i in 0..500 {
        reqs.push_str(&format!("HEAD /v1/nodes/junk{i}/bundle HTTP/1.1\r\nHost: a\r\n\r\n"));
    }
    reqs.push_str("HEAD /v1/nodes/junk-last/bundle HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    s.write_all(reqs.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert_eq!(String::from_utf8_lossy(&resp).matches("HTTP/1.1 404").count(), 501);
    // Many more addresses, each a few ids: the table fills.
    for a in 3..40u8 {
        let mut s = connect_from([127, 0, 0, a], srv.port);
        s.write_all(
            format!("HEAD /v1/nodes/spread{a}/bundle HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }
    // Real nodes arriving now are recorded, and so is an approved one.
    assert_eq!(http(srv.port, "GET", "/v1/nodes/real1/bundle", &[], b"").0, 404);
    let mut s = connect_from([127, 0, 1, 1], srv.port);
    s.write_all(b"HEAD /v1/nodes/approved1/bundle HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    wait_for(
        || {
            let s = seen_nodes(&site);
            s.contains(&"real1".to_owned()) && s.contains(&"approved1".to_owned())
        },
        "real nodes recorded",
    );
    let seen = seen_nodes(&site);
    assert!(seen.len() <= 41, "{}", seen.len());
    let junk = seen.iter().filter(|n| n.starts_with("junk")).count();
    assert!(junk <= 10, "{junk} junk ids kept");
    assert!(seen.contains(&"junk-last".to_owned()), "the flooder's newest ids replace its oldest");
}

#[test]
fn slow_readers_cannot_hold_the_server() {
    let site = Site::new();
    let blob = noise_bytes(32 << 20, 7);
    let b = site.bundle("big", 1, node_scope(), &[("blob", &blob)]);
    site.publish(&["--node", "node42"], &b);
    let want = fs::read(&b).unwrap();
    let args = ["--max-connections", "8", "--max-connections-per-address", "4", "--io-timeout", "2"];
    let srv = Serve::start(&site.data(), &args);
    // 16 clients from one address ask for the 32 MB bundle and never read,
    // with a small fixed receive window (on loopback an autotuned window
    // would swallow the whole bundle).
    let mut attackers = Vec::new();
    for _ in 0..16 {
        let mut s = connect_from_with([127, 0, 0, 2], srv.port, Some(16 * 1024));
        s.write_all(format!("GET {NODE_PATH} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).unwrap();
        attackers.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut srv = srv;
    assert!(srv.child.try_wait().unwrap().is_none(), "server exited: {}", srv.log());
    // Legitimate nodes are served during the attack, at once.
    for _ in 0..3 {
        let t = Instant::now();
        let (status, _, body) = http(srv.port, "GET", NODE_PATH, &[], b"");
        assert_eq!(status, 200);
        assert!(body == want, "whole bundle");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    // Past the write deadline, every attacker's connection is closed:
    // reading now drains what was in flight and ends, short of the bundle.
    std::thread::sleep(Duration::from_secs(4));
    for (i, mut s) in attackers.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    break false;
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "attacker {i} still connected after {got} bytes");
        assert!(got < want.len(), "attacker {i} got the whole bundle");
    }
}

/// Drips `bytes` one at a time every `gap`; returns how long until the
/// server closed the connection (`None`: still open after 15 s).
fn drip(s: &mut TcpStream, bytes: &[u8], gap: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(gap)).unwrap();
    let mut sink = [0u8; 4096];
    for b in bytes.iter().cycle() {
        if start.elapsed() > Duration::from_secs(15) {
            return None;
        }
        if s.write_all(&[*b]).is_err() {
            return Some(start.elapsed());
        }
        match s.read(&mut sink) {
            Ok(0) => return Some(start.elapsed()),
            // An answer (408): the close follows.
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// The first flight of a real TLS client.
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn one_deadline_bounds_the_handshake_and_the_head() {
    let site = Site::new();
    let certs = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = certificates(certs.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls = Serve::start(&site.data(), &["--tls-cert", &cert, "--tls-key", &key, "--head-timeout", "2"]);
    let plain = Serve::start(&site.data(), &["--head-timeout", "2"]);
    let hello = client_hello();
    assert!(hello.len() > 100);
    let within = |t: Option<Duration>, what: &str| {
        let t = t.unwrap_or_else(|| panic!("{what}: never cut"));
        // The upper bound leaves room for a loaded machine: an uncut drip
        // would take 20 s or more (over 100 bytes at 200 ms each).
        assert!(t >= Duration::from_millis(1500) && t < Duration::from_secs(8), "{what}: cut after {t:?}");
    };
    // A real ClientHello, one byte every 200 ms: cut at the head deadline.
    let mut s = TcpStream::connect(("127.0.0.1", tls.port)).unwrap();
    within(drip(&mut s, &hello, Duration::from_millis(200)), "dripped ClientHello");
    // A 5-byte partial record, then nothing.
    let mut s = TcpStream::connect(("127.0.0.1", tls.port)).unwrap();
    let t = Instant::now();
    s.write_all(&hello[..5]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.read(&mut [0u8; 64]);
    within(Some(t.elapsed()), "partial record");
    // A whole handshake done slowly but in time still counts against the
    // same deadline as the head: a plain-HTTP head dripped byte by byte.
    let head = format!("GET /v1/default/bundle HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n", "a".repeat(200));
    let mut s = TcpStream::connect(("127.0.0.1", plain.port)).unwrap();
    within(drip(&mut s, head.as_bytes(), Duration::from_millis(200)), "dripped head");
    // Both still serve everyone else.
    assert_eq!(http(plain.port, "GET", "/v1/default/bundle", &[], b"").0, 404);
}

/// A small tmpfs mounted for one test (tests run as root), unmounted when
/// dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running mount: {e} (this test mounts a tmpfs and must run as root)"));
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test must run as root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_answers_507_and_keeps_nothing() {
    let site = Site::new();
    let disk = Tmpfs::new("4m");
    let data = disk.path().join("data");
    let data_s = data.display().to_string();
    let b3 = site.bundle("b3", 3, node_scope(), &[("etc/motd", b"gen3\n")]);
    ok(&["publish", "--data", &data_s, "--node", "node42", b3.to_str().unwrap()]);
    ok(&["approve", "--data", &data_s, "node42", "--push-key", &site.key_s()]);
    let srv = Serve::start(&data, &[]);
    let push = site.bundle("p5", 5, node_scope(), &[("blob", &noise_bytes(6 << 20, 3))]);
    let body = fs::read(&push).unwrap();
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let good = stateless_server::push_auth::PushSigner::new(&site.key, "node42").unwrap();
    let auth = good.authorization("PUT", NODE_PATH, now, &sha, body.len() as u64);
    let (status, head, msg) = http(srv.port, "PUT", NODE_PATH, &[("Authorization", &auth)], &body);
    assert_eq!(status, 507, "{head}");
    assert!(String::from_utf8_lossy(&msg).contains("no room"), "{msg:?}");
    assert_eq!(fs::read_dir(data.join("state/spool")).unwrap().count(), 0);
    assert!(
        !data.join("state/pushes/node42").exists()
            || fs::read_dir(data.join("state/pushes/node42")).unwrap().count() == 0
    );
    // The server goes on serving.
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").2, fs::read(&b3).unwrap());

    // publish names the file it could not write, and leaves no temporary.
    let big = site.bundle("n43", 1, Scope::Node("node43".into()), &[("blob", &noise_bytes(6 << 20, 4))]);
    let err = fails(&["publish", "--data", &data_s, "--node", "node43", big.to_str().unwrap()]);
    let dest = data.join("v1/nodes/node43/bundle");
    assert!(err.contains(&format!("{}: No space left on device", dest.display())), "{err}");
    let left: Vec<_> = fs::read_dir(data.join("v1/nodes/node43")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn crash_leftovers_are_removed_on_start() {
    let site = Site::new();
    let b3 = site.bundle("b3", 3, node_scope(), &[("etc/motd", b"gen3\n")]);
    site.publish(&["--node", "node42"], &b3);
    let node_dir = site.data().join("v1/nodes/node42");
    // What `publish` killed with -9 leaves beside the bundle, and things
    // that only look like it.
    fs::write(node_dir.join(".publishAb12Cd"), b"half a bundle").unwrap();
    fs::write(node_dir.join("notes.publish"), b"mine").unwrap();
    fs::write(site.dir.path().join("outside"), b"keep").unwrap();
    std::os::unix::fs::symlink(site.dir.path().join("outside"), node_dir.join(".publishLnk123")).unwrap();
    let b4 = site.bundle("b4", 4, node_scope(), &[("etc/motd", b"gen4\n")]);
    site.publish(&["--node", "node42"], &b4);
    let mut names: Vec<String> =
        fs::read_dir(&node_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [".publishLnk123", "bundle", "notes.publish"]);
    // Another target's leftover goes when the server starts.
    fs::create_dir_all(site.data().join("v1/groups/rack7")).unwrap();
    fs::write(site.data().join("v1/groups/rack7/.publishZZ99zz"), b"x").unwrap();

    // A push cut by a server crash leaves its spool file; a restart removes it.
    ok(&["approve", "--data", &site.data_s(), "node42", "--push-key", &site.key_s()]);
    let mut srv = Serve::start(&site.data(), &[]);
    assert!(!site.data().join("v1/groups/rack7/.publishZZ99zz").exists());
    let push = site.bundle("p5", 5, node_scope(), &[("blob", &noise_bytes(1 << 20, 5))]);
    let body = fs::read(&push).unwrap();
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let good = stateless_server::push_auth::PushSigner::new(&site.key, "node42").unwrap();
    let auth = good.authorization("PUT", NODE_PATH, now, &sha, body.len() as u64);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let head = format!(
        "PUT {NODE_PATH} HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    let spool = site.data().join("state/spool");
    wait_for(|| fs::read_dir(&spool).unwrap().count() == 1, "the push in the spool");
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    assert_eq!(fs::read_dir(&spool).unwrap().count(), 1, "the crash leaves the spool file");
    let _srv = Serve::start(&site.data(), &[]);
    assert_eq!(fs::read_dir(&spool).unwrap().count(), 0);
    assert_eq!(fs::read(site.dir.path().join("outside")).unwrap(), b"keep");
}

#[test]
fn only_regular_files_inside_the_data_directory_are_served() {
    let site = Site::new();
    let b = site.bundle("b1", 1, node_scope(), &[("etc/motd", b"x\n")]);
    site.publish(&["--node", "node42"], &b);
    let srv = Serve::start(&site.data(), &[]);
    let nodes = site.data().join("v1/nodes");
    // A FIFO in place of a bundle: answered at once, never opened for a writer.
    fs::create_dir_all(nodes.join("fifo1")).unwrap();
    let st = Command::new("mkfifo").arg(nodes.join("fifo1/bundle")).status().unwrap();
    assert!(st.success());
    let t = Instant::now();
    assert_eq!(http(srv.port, "GET", "/v1/nodes/fifo1/bundle", &[], b"").0, 404);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Links out of the data directory: in place of the bundle, of a node's
    // directory, of a group's.
    let outside = site.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::copy(&b, outside.join("bundle")).unwrap();
    fs::create_dir_all(nodes.join("link1")).unwrap();
    std::os::unix::fs::symlink(outside.join("bundle"), nodes.join("link1/bundle")).unwrap();
    std::os::unix::fs::symlink(&outside, nodes.join("link2")).unwrap();
    std::os::unix::fs::symlink(&outside, site.data().join("v1/groups/rack7")).unwrap();
    for path in ["/v1/nodes/link1/bundle", "/v1/nodes/link2/bundle", "/v1/groups/rack7/bundle"] {
        assert_eq!(http(srv.port, "GET", path, &[], b"").0, 404, "{path}");
    }
    wait_for(|| srv.log().contains("symbolic link"), "the link logged");
    // publish does not write through a link either.
    let g = site.bundle("g1", 1, Scope::Group("rack7".into()), &[("etc/motd", b"g\n")]);
    let err = fails(&["publish", "--data", &site.data_s(), "--group", "rack7", g.to_str().unwrap()]);
    assert!(err.contains("v1/groups/rack7: a symbolic link"), "{err}");
    let b2 = site.bundle("b2", 2, Scope::Node("link1".into()), &[("etc/motd", b"y\n")]);
    let err = fails(&["publish", "--data", &site.data_s(), "--node", "link1", b2.to_str().unwrap()]);
    assert!(err.contains("v1/nodes/link1/bundle: a symbolic link"), "{err}");
    assert_eq!(fs::read(outside.join("bundle")).unwrap(), fs::read(&b).unwrap());
    // Publishing over the FIFO, and to a FIFO as the source, never waits.
    let f1 = site.bundle("f1", 1, Scope::Node("fifo1".into()), &[("etc/motd", b"f\n")]);
    let t = Instant::now();
    site.publish(&["--node", "fifo1"], &f1);
    assert_eq!(http(srv.port, "GET", "/v1/nodes/fifo1/bundle", &[], b"").2, fs::read(&f1).unwrap());
    let src_fifo = site.dir.path().join("src.fifo");
    assert!(Command::new("mkfifo").arg(&src_fifo).status().unwrap().success());
    let err = fails(&["publish", "--data", &site.data_s(), "--node", "fifo2", src_fifo.to_str().unwrap()]);
    assert!(err.contains("not a regular file"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // A directory in place of a bundle.
    fs::create_dir_all(nodes.join("dir1/bundle")).unwrap();
    assert_eq!(http(srv.port, "GET", "/v1/nodes/dir1/bundle", &[], b"").0, 404);
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").2, fs::read(&b).unwrap());
}

#[test]
fn a_damaged_seen_file_is_reported_and_kept() {
    let site = Site::new();
    ok(&["nodes", "--data", &site.data_s()]);
    let seen = site.data().join("state/seen.json");
    fs::write(&seen, b"{\"node1\": {\"first_seen\": 17").unwrap();
    let srv = Serve::start(&site.data(), &[]);
    let log = srv.log();
    assert!(log.contains("warning") && log.contains(&seen.display().to_string()), "{log}");
    assert_eq!(fs::read(site.data().join("state/seen.json.corrupt")).unwrap(), b"{\"node1\": {\"first_seen\": 17");
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let site = Site::new();
    ok(&["nodes", "--data", &site.data_s()]);
    // Enough nodes that the output overflows the pipe.
    let mut table = serde_json::Map::new();
    for i in 0..5000 {
        table.insert(
            format!("node{i}"),
            serde_json::json!({"first_seen": 1, "last_seen": 2, "address": "10.0.0.1", "requests": 1}),
        );
    }
    fs::write(site.data().join("state/seen.json"), serde_json::to_vec(&table).unwrap()).unwrap();
    let ctl = env!("CARGO_BIN_EXE_statelessctl");
    for args in ["nodes", "nodes --json"] {
        let script = format!("{ctl} {args} --data {} | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}", site.data_s());
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{args}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A command that prints with println!: its reader is gone before it writes.
    let b = site.bundle("b1", 1, node_scope(), &[("etc/motd", b"x\n")]);
    let mut child = ctl_piped(&["bundle", "inspect", b.to_str().unwrap()]);
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // A failure whose stderr is a closed pipe is still a failure (1), never
    // a success or a panic: the closed pipe only loses the line.
    let wrong = site.data().join("wrong.key");
    ok(&["key", "new", "-o", wrong.to_str().unwrap()]);
    let failing: [&[&str]; 3] = [
        &["bundle", "verify", b.to_str().unwrap(), "--key", wrong.to_str().unwrap()],
        &["bundle", "inspect", "/nonexistent/bundle"],
        &["key", "id", "/nonexistent/site.key"],
    ];
    for args in failing {
        // The pipe's reader is gone before the command starts: no race.
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        drop(reader);
        let status = Command::new(ctl).args(args).stdout(Stdio::null()).stderr(Stdio::from(writer)).status().unwrap();
        assert_eq!(status.code(), Some(1), "{args:?}");
    }
}

fn ctl_piped(args: &[&str]) -> Child {
    ctl().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn idle_keep_alive_connections_give_way_when_the_server_is_full() {
    let site = Site::new();
    let b = site.bundle("b1", 1, node_scope(), &[("etc/motd", b"x\n")]);
    site.publish(&["--node", "node42"], &b);
    let srv = Serve::start(&site.data(), &["--max-connections", "4"]);
    // Four clients (four addresses) take every slot: one request each,
    // answered, then the connections stay open and silent.
    let mut idle = Vec::new();
    for a in 2..6u8 {
        let mut s = connect_from([127, 0, 0, a], srv.port);
        s.write_all(format!("HEAD {NODE_PATH} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        idle.push(s);
    }
    // A node arriving now is served within seconds, not after the 15 s
    // idle timeout of the others.
    let t = Instant::now();
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").0, 200);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn trickled_uploads_and_slow_tls_readers_are_cut() {
    let site = Site::new();
    let blob = noise_bytes(32 << 20, 9);
    let b = site.bundle("big", 1, node_scope(), &[("blob", &blob)]);
    site.publish(&["--node", "node42"], &b);
    ok(&["approve", "--data", &site.data_s(), "node42", "--push-key", &site.key_s()]);
    let want_len = fs::metadata(&b).unwrap().len() as usize;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let args = ["--tls-cert", &cert, "--tls-key", &key, "--io-timeout", "2"];
    let srv = Serve::start(&site.data(), &args);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let tls = |sock: TcpStream| {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        rustls::StreamOwned::new(rustls::ClientConnection::new(cfg.clone(), name).unwrap(), sock)
    };

    // A reader that stops after the first bytes, with a small window.
    let mut slow = tls(connect_from_with([127, 0, 0, 2], srv.port, Some(16 * 1024)));
    slow.write_all(format!("GET {NODE_PATH} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).unwrap();
    let mut first = [0u8; 1024];
    slow.read_exact(&mut first).unwrap();
    // An enrolled node's push whose body trickles in at 2 KB/s.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let signer = stateless_server::push_auth::PushSigner::new(&site.key, "node42").unwrap();
    let auth = signer.authorization("PUT", NODE_PATH, now, &[0; 32], 1 << 20);
    let mut up = tls(TcpStream::connect(("127.0.0.1", srv.port)).unwrap());
    let head =
        format!("PUT {NODE_PATH} HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n", 1 << 20);
    up.write_all(head.as_bytes()).unwrap();
    let t = Instant::now();
    let cut = loop {
        if up.write_all(&[b'x'; 1024]).and_then(|()| up.flush()).is_err() {
            break t.elapsed();
        }
        up.sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        match up.read(&mut first) {
            Ok(0) => break t.elapsed(),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            _ => break t.elapsed(),
        }
        assert!(t.elapsed() < Duration::from_secs(15), "a trickled upload is never cut");
    };
    assert!(cut < Duration::from_secs(6), "upload cut after {cut:?}");
    wait_for(|| fs::read_dir(site.data().join("state/spool")).unwrap().count() == 0, "the spool emptied");

    // By now the reader has been cut too: reading drains what was in
    // flight, then ends, short of the bundle.
    std::thread::sleep(Duration::from_secs(3));
    slow.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = first.len();
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match slow.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break false,
            Err(_) => break true,
        }
    };
    assert!(closed && got < want_len, "TLS reader: closed {closed} after {got} of {want_len} bytes");
}

/// Reads one answer from a kept-alive connection: (status, head, body).
/// `body` tells whether one follows (not for HEAD or 304).
fn read_answer(s: &mut TcpStream, body: bool) -> (u16, String, Vec<u8>) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let status = head[9..12].parse().unwrap();
    let mut data = Vec::new();
    if body {
        let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
        data.resize(len, 0);
        s.read_exact(&mut data).unwrap();
    }
    (status, head, data)
}

/// The head without its `Date` line (which moves with the clock).
fn undated(head: &str) -> String {
    head.lines().filter(|l| !l.starts_with("Date:")).collect::<Vec<_>>().join("\n")
}

#[test]
fn cached_304s_are_answered_like_every_other_and_follow_a_publish() {
    let site = Site::new();
    let b1 = site.bundle("b1", 1, node_scope(), &[("etc/motd", b"gen1\n")]);
    site.publish(&["--node", "node42"], &b1);
    let srv = Serve::start(&site.data(), &[]);
    let etag = format!("\"{}\"", Site::digest(&b1));
    let want = fs::read(&b1).unwrap();
    let inm = [("If-None-Match", etag.as_str())];

    // The first 304 comes from a worker (nothing is cached yet), the next
    // ones from the front thread's cache: the same answer.
    let first = http(srv.port, "GET", NODE_PATH, &inm, b"");
    assert_eq!(first.0, 304, "{}", first.1);
    for _ in 0..3 {
        let again = http(srv.port, "GET", NODE_PATH, &inm, b"");
        assert_eq!(undated(&again.1), undated(&first.1));
        assert!(again.2.is_empty());
    }
    assert_eq!(header(&first.1, "etag"), Some(etag.as_str()));
    assert_eq!(header(&first.1, "connection"), Some("close"));
    assert!(header(&first.1, "last-modified").is_some(), "{}", first.1);
    let (_, full, _) = http(srv.port, "HEAD", NODE_PATH, &[], b"");
    assert_eq!(header(&first.1, "last-modified"), header(&full, "last-modified"));

    // One kept-alive connection moves between the front thread and a
    // worker: 304, the whole bundle, 304 again, then two pipelined
    // requests, the second closing.
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let get = |inm: bool, close: bool, method: &str| {
        format!(
            "{method} {NODE_PATH} HTTP/1.1\r\nHost: a\r\n{}{}\r\n",
            if inm { format!("If-None-Match: {etag}\r\n") } else { String::new() },
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    s.write_all(get(true, false, "GET").as_bytes()).unwrap();
    let (status, head, _) = read_answer(&mut s, false);
    assert_eq!(status, 304);
    assert_eq!(header(&head, "connection"), None, "kept alive: {head}");
    s.write_all(get(false, false, "GET").as_bytes()).unwrap();
    let (status, head, body) = read_answer(&mut s, true);
    assert_eq!((status, header(&head, "etag")), (200, Some(etag.as_str())));
    assert!(body == want, "the whole bundle");
    s.write_all(get(true, false, "GET").as_bytes()).unwrap();
    assert_eq!(read_answer(&mut s, false).0, 304);
    s.write_all((get(true, false, "HEAD") + &get(true, true, "GET")).as_bytes()).unwrap();
    assert_eq!(read_answer(&mut s, false).0, 304);
    let (status, head, _) = read_answer(&mut s, false);
    assert_eq!((status, header(&head, "connection")), (304, Some("close")));
    assert_eq!(s.read(&mut [0u8; 16]).unwrap(), 0, "closed after the last answer");

    // Two pipelined on a new connection (both from the cache).
    let (status, answers, text) = raw(srv.port, (get(true, false, "GET") + &get(true, true, "GET")).as_bytes());
    assert_eq!((status, answers), (304, 2), "{text}");

    // A publish replaces the file: the old tag gets the new bundle at once.
    let b2 = site.bundle("b2", 2, node_scope(), &[("etc/motd", b"gen2\n")]);
    site.publish(&["--node", "node42"], &b2);
    let (status, head, body) = http(srv.port, "GET", NODE_PATH, &inm, b"");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, fs::read(&b2).unwrap());
    let etag2 = format!("\"{}\"", Site::digest(&b2));
    assert_eq!(header(&head, "etag"), Some(etag2.as_str()));
    for _ in 0..2 {
        assert_eq!(http(srv.port, "GET", NODE_PATH, &[("If-None-Match", &etag2)], b"").0, 304);
        assert_eq!(http(srv.port, "GET", NODE_PATH, &inm, b"").0, 200);
    }

    // Every request counted as the node's, the cached 304s too: 1 + 3 +
    // 1 (HEAD) + 5 (kept-alive) + 2 (pipelined) + 1 + 4.
    wait_for(
        || {
            nodes_json(&site)
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["node"] == "node42" && n["requests"].as_u64() == Some(17))
        },
        "node42 seen 17 times",
    );
}

#[test]
fn connections_held_by_the_front_threads_keep_the_deadlines_and_the_limits() {
    let site = Site::new();
    let b = site.bundle("b1", 1, node_scope(), &[("etc/motd", b"x\n")]);
    site.publish(&["--node", "node42"], &b);
    let srv = Serve::start(&site.data(), &["--head-timeout", "2", "--max-connections", "4"]);
    let etag = format!("\"{}\"", Site::digest(&b));
    // Cached from now on: the front threads answer.
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[("If-None-Match", &etag)], b"").0, 304);

    // Part of a head, then nothing: 408 at the head deadline.
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(format!("GET {NODE_PATH} HT").as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(8), "partial head cut after {took:?}");

    // Nothing at all: the kernel holds the connection about a second
    // (deferred accept), then the head deadline runs; closed, no answer.
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let took = t.elapsed();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "silent connection cut after {took:?}"
    );

    // Four clients take every slot with a kept-alive 304 and stay; a node
    // arriving now is served at once, not after their idle timeout.
    let mut idle = Vec::new();
    for a in 2..6u8 {
        let mut s = connect_from([127, 0, 0, a], srv.port);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(format!("GET {NODE_PATH} HTTP/1.1\r\nHost: a\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_answer(&mut s, false).0, 304);
        idle.push(s);
    }
    let t = Instant::now();
    assert_eq!(http(srv.port, "GET", NODE_PATH, &[], b"").0, 200);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Idle ones were closed to make room.
    for s in &idle {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    let closed = idle.iter_mut().map(|s| s.read(&mut [0u8; 16])).filter(|r| matches!(r, Ok(0) | Err(_))).count();
    assert!(closed >= 1, "no idle connection gave its slot up");
}
