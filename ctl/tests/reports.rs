//! Node reports (`POST /v1/nodes/{node}/report`) against `statelessctl
//! serve` on 127.0.0.1: accepted when signed with the node's push key,
//! refused with a clear status when forged, unenrolled, oversized or
//! flooding, kept bounded, and listed by `statelessctl nodes`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use stateless_bundle::Key;
use stateless_server::push_auth::PushSigner;

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

struct Serve {
    port: u16,
    child: Child,
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
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(": serving ") {
                    let _ = tx.send(line.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()));
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).ok().flatten().expect("serve did not start");
        Serve { port, child }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw request on a fresh connection: (status, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Posts `body` as `node`'s report, signed with the push key derived from `key`.
fn post(port: u16, node: &str, key: &Key, body: &[u8]) -> (u16, String) {
    let path = format!("/v1/nodes/{node}/report");
    let signer = PushSigner::new(key, node).unwrap();
    let digest: [u8; 32] = Sha256::digest(body).into();
    let auth = signer.authorization("POST", &path, now(), &digest, body.len() as u64);
    http(port, "POST", &path, &[("Authorization", auth), ("Content-Type", "application/json".into())], body)
}

struct Site {
    dir: tempfile::TempDir,
    key: Key,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        stateless_keys::write_key_file(&dir.path().join("node.key"), &key, false).unwrap();
        fs::create_dir(dir.path().join("data")).unwrap();
        Site { dir, key }
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn data_s(&self) -> String {
        self.data().to_str().unwrap().to_owned()
    }
    fn enrol(&self, node: &str) {
        let key = self.dir.path().join("node.key");
        ok(&["approve", "--data", &self.data_s(), node, "--push-key", key.to_str().unwrap()]);
    }
    fn report_files(&self, node: &str) -> usize {
        fs::read_dir(self.data().join("state/reports").join(node)).map(|d| d.count()).unwrap_or(0)
    }
}

fn status_json(result: &str, generation: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "result": result, "source": "server", "node": "node42", "generation": generation,
        "message": format!("{result} generation {generation}"),
        "capabilities": {"cpus": 2, "tpm": {"present": true, "version": "2.0"}},
    }))
    .unwrap()
}

#[test]
fn a_signed_report_is_kept_and_bad_ones_are_refused_with_clear_statuses() {
    let site = Site::new();
    site.enrol("node42");
    let srv = Serve::start(&site.data(), &["--max-report", "4K", "--keep-reports", "3"]);

    let (status, body) = post(srv.port, "node42", &site.key, &status_json("applied", 7));
    assert_eq!(status, 201, "{body}");
    assert_eq!(site.report_files("node42"), 1);

    // Forged: another key for the same node.
    let other = Key::generate().unwrap();
    let (status, body) = post(srv.port, "node42", &other, &status_json("applied", 8));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bad signature"), "{body}");
    // No credentials at all.
    let (status, _) = http(srv.port, "POST", "/v1/nodes/node42/report", &[], b"{}");
    assert_eq!(status, 401);
    // Credentials of another node.
    let (status, _) = {
        let signer = PushSigner::new(&site.key, "node43").unwrap();
        let auth = signer.authorization("POST", "/v1/nodes/node42/report", now(), &[0; 32], 2);
        http(srv.port, "POST", "/v1/nodes/node42/report", &[("Authorization", auth)], b"{}")
    };
    assert_eq!(status, 401);
    // A push proof does not pass for a report (the method is signed).
    let (status, _) = {
        let body = status_json("applied", 9);
        let signer = PushSigner::new(&site.key, "node42").unwrap();
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let auth = signer.authorization("PUT", "/v1/nodes/node42/report", now(), &digest, body.len() as u64);
        http(srv.port, "POST", "/v1/nodes/node42/report", &[("Authorization", auth)], &body)
    };
    assert_eq!(status, 401);
    // Not enrolled for push.
    let (status, body) = post(srv.port, "stranger", &site.key, &status_json("applied", 1));
    assert_eq!(status, 403, "{body}");
    // Oversized: refused on its Content-Length.
    let big = serde_json::to_vec(&serde_json::json!({"pad": "x".repeat(5000)})).unwrap();
    let (status, body) = post(srv.port, "node42", &site.key, &big);
    assert_eq!(status, 413, "{body}");
    // Not a JSON object, or for another node.
    assert_eq!(post(srv.port, "node42", &site.key, b"[1,2]").0, 422);
    assert_eq!(post(srv.port, "node42", &site.key, br#"{"node":"node7"}"#).0, 422);
    // Only reports can be posted; a report path cannot be read.
    assert_eq!(http(srv.port, "POST", "/v1/nodes/node42/bundle", &[], b"{}").0, 405);
    assert_eq!(http(srv.port, "GET", "/v1/nodes/node42/report", &[], b"").0, 404);
    assert_eq!(site.report_files("node42"), 1);

    // Bounded in count: the three newest stay.
    for g in 10..15 {
        assert_eq!(post(srv.port, "node42", &site.key, &status_json("applied", g)).0, 201);
    }
    assert_eq!(site.report_files("node42"), 3);
    let reports: serde_json::Value =
        serde_json::from_str(&ok(&["nodes", "--data", &site.data_s(), "node42", "--reports", "--json"])).unwrap();
    assert_eq!(reports.as_array().unwrap().len(), 3);
    assert_eq!(reports[0]["report"]["generation"], 14);
}

#[test]
fn a_flood_of_unknown_ids_is_answered_429_and_keeps_nothing() {
    let site = Site::new();
    site.enrol("node42");
    let srv = Serve::start(&site.data(), &["--report-refusals-per-minute", "10"]);
    let mut statuses = Vec::new();
    for i in 0..40 {
        statuses.push(post(srv.port, &format!("unknown{i}"), &site.key, &status_json("applied", 1)).0);
    }
    assert!(statuses[..10].iter().all(|s| *s == 403), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    let kept = fs::read_dir(site.data().join("state/reports")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(kept, 0);
    // The same address is refused even for a good node until the window ends.
    assert_eq!(post(srv.port, "node42", &site.key, &status_json("applied", 1)).0, 429);
}
