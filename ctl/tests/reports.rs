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

// ---- the loader and the node agent ----

fn loader_bin() -> PathBuf {
    // target/debug/deps/reports-HASH -> target/debug/stateless-loader.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("stateless-loader");
    assert!(bin.exists(), "{} is missing: run cargo build -p stateless-loader", bin.display());
    bin
}

impl Site {
    fn key_s(&self) -> String {
        self.dir.path().join("node.key").to_str().unwrap().to_owned()
    }
    fn publish(&self, node: &str, generation: u64) {
        let tree = tempfile::tempdir().unwrap();
        fs::create_dir_all(tree.path().join("etc")).unwrap();
        fs::write(tree.path().join("etc/motd"), format!("generation {generation}\n")).unwrap();
        let opts = stateless_bundle::PackOptions {
            key: Some(&self.key),
            generation,
            created: 1_760_000_000,
            expires: None,
            scope: stateless_bundle::Scope::Node(node.into()),
            level: 3,
            threads: 0,
            deletions: vec![],
            limits: stateless_bundle::Limits::default(),
        };
        let out = self.dir.path().join(format!("b{generation}"));
        stateless_bundle::pack(tree.path(), fs::File::create(&out).unwrap(), &opts).unwrap();
        ok(&["publish", "--data", &self.data_s(), "--node", node, out.to_str().unwrap()]);
    }
}

/// A node's scratch root for the loader; `cache` says whether it has a cache disk.
struct Node {
    dir: tempfile::TempDir,
    cache: bool,
}

impl Node {
    fn new(cache: bool) -> Node {
        let dir = tempfile::tempdir().unwrap();
        for d in ["sysroot/etc", "run", "cache"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Node { dir, cache }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Boots; returns the exit code, stderr, status.json and how long the run took.
    fn boot(&self, cmdline: &str) -> (i32, String, serde_json::Value, Duration) {
        let _ = fs::remove_file(self.p("run/status.json"));
        let mut cmd = Command::new(loader_bin());
        cmd.arg("--cmdline").arg(cmdline).arg("--sysroot").arg(self.p("sysroot")).arg("--run-dir").arg(self.p("run"));
        if self.cache {
            cmd.arg("--cache-dir").arg(self.p("cache"));
        }
        let t = std::time::Instant::now();
        let out = cmd.env("STATELESS_LOG_STDERR", "1").output().unwrap();
        let took = t.elapsed();
        let status = fs::read(self.p("run/status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), status, took)
    }

    fn kept(&self, rel: &str) -> usize {
        fs::read_dir(self.p(rel))
            .map(|d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some()).count())
            .unwrap_or(0)
    }
}

fn nodes_json(data: &[&str], extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["nodes"];
    for d in data {
        args.extend(["--data", d]);
    }
    args.extend(extra);
    args.push("--json");
    serde_json::from_str(&ok(&args)).unwrap()
}

fn cmdline(port: u16, site: &Site) -> String {
    format!(
        "rd.stateless.server=http://127.0.0.1:{port} rd.stateless.node=node42 rd.stateless.key=file:{} rd.stateless.timeout=10",
        site.key_s()
    )
}

#[test]
fn a_loader_run_reports_and_a_report_kept_while_the_server_was_down_arrives_next_run() {
    let site = Site::new();
    site.enrol("node42");
    site.publish("node42", 5);
    let srv = Serve::start(&site.data(), &[]);
    let node = Node::new(true);
    let (code, err, status, _) = node.boot(&cmdline(srv.port, &site));
    assert_eq!(code, 0, "{err}");
    // The probe is in status.json.
    let caps = &status["capabilities"];
    assert_eq!(caps["loader_version"], env!("CARGO_PKG_VERSION"), "{status}");
    assert!(caps["cpus"].as_u64().unwrap() >= 1, "{caps}");
    assert_eq!(caps["cache"]["found"], true, "{caps}");
    assert!(caps["cache"]["free_bytes"].as_u64().is_some(), "{caps}");
    assert!(caps["tpm"]["present"].is_boolean() && caps["overlayfs"].is_boolean(), "{caps}");
    // The server kept the report; nodes shows it.
    let list = nodes_json(&[&site.data_s()], &[]);
    let n = list.as_array().unwrap().iter().find(|n| n["node"] == "node42").unwrap().clone();
    assert_eq!(n["generation"], 5, "{n}");
    assert_eq!(n["source"], "server");
    assert_eq!(n["result"], "applied");
    assert!(n["age_seconds"].as_i64().unwrap() < 60);
    let text = ok(&["nodes", "--data", &site.data_s()]);
    assert!(text.contains("node42") && text.contains("applied") && text.contains("server"), "{text}");
    let reports = ok(&["nodes", "--data", &site.data_s(), "node42", "--reports"]);
    assert!(reports.contains("generation 5"), "{reports}");

    // The server goes away: the node boots from its cache and keeps the report on the cache disk,
    // within the 2 s budget (the connection is refused at once).
    let port = srv.port;
    drop(srv);
    let (code, err, status, _) = node.boot(&cmdline(port, &site));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert_eq!(node.kept("cache/reports"), 1, "{err}");
    assert!(err.contains("boot report not sent"), "{err}");

    // Next run, the server is back (on another port): both reports arrive.
    let srv = Serve::start(&site.data(), &[]);
    let (code, err, _, _) = node.boot(&cmdline(srv.port, &site));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.kept("cache/reports"), 0, "{err}");
    let reports = nodes_json(&[&site.data_s()], &["node42", "--reports"]);
    let sources: Vec<&str> =
        reports.as_array().unwrap().iter().map(|r| r["report"]["source"].as_str().unwrap()).collect();
    assert_eq!(sources.len(), 3, "{reports}");
    assert!(sources.contains(&"cache-current"), "{sources:?}");

    // --failed: none failed; --since keeps them all.
    assert_eq!(nodes_json(&[&site.data_s()], &["--failed"]).as_array().unwrap().len(), 0);
    assert_eq!(nodes_json(&[&site.data_s()], &["--since", "1h"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_stalling_server_costs_at_most_the_report_budget_and_the_node_agent_sends_the_kept_report() {
    let site = Site::new();
    site.enrol("node42");
    site.publish("node42", 5);
    let srv = Serve::start(&site.data(), &[]);
    // A proxy that forwards bundle requests but swallows reports: it accepts
    // and never answers a POST.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let upstream = srv.port;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                let n = c.read(&mut buf).unwrap_or(0);
                if buf[..n].starts_with(b"POST") {
                    std::thread::sleep(Duration::from_secs(30));
                    return;
                }
                let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                up.write_all(&buf[..n]).unwrap();
                let mut back = up.try_clone().unwrap();
                let mut c2 = c.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut back, &mut c2);
                });
                let _ = std::io::copy(&mut c, &mut up);
            });
        }
    });
    let node = Node::new(false);
    let (code, err, status, took) = node.boot(&cmdline(proxy_port, &site));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 5);
    // The fetch itself is fast on loopback; the report adds at most 2 s.
    assert!(took < Duration::from_secs(5), "{took:?}: {err}");
    // Without a cache disk the report is kept in the run directory, for the node agent.
    assert_eq!(node.kept("run/reports"), 1, "{err}");

    // After switch-root, the node agent sends it.
    let args = stateless_node::cli::ReportArgs {
        dir: node.p("run/reports"),
        config: node.p("no-such.conf"),
        server: Some(format!("http://127.0.0.1:{}", srv.port)),
        node: None,
        key: Some(PathBuf::from(site.key_s())),
        ca: None,
    };
    let line = stateless_node::report::run(&args).unwrap();
    assert_eq!(line, "sent 1 kept report(s)");
    assert_eq!(node.kept("run/reports"), 0);
    assert_eq!(site.report_files("node42"), 1);
}

// ---- GET /metrics ----

/// A GET with headers; (status, ETag).
fn get_etag(port: u16, path: &str, inm: Option<&str>) -> (u16, Option<String>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let extra = inm.map(|t| format!("If-None-Match: {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let etag = text.lines().find_map(|l| l.strip_prefix("ETag: ").map(str::to_owned));
    (text[9..12].parse().unwrap(), etag)
}

#[test]
fn metrics_parse_with_a_prometheus_parser_and_count_what_happened() {
    use prometheus_parse::{Scrape, Value};
    let site = Site::new();
    site.enrol("node42");
    site.publish("node42", 3);
    let srv = Serve::start(&site.data(), &[]);
    let (status, etag) = get_etag(srv.port, "/v1/nodes/node42/bundle", None);
    assert_eq!(status, 200);
    for _ in 0..3 {
        assert_eq!(get_etag(srv.port, "/v1/nodes/node42/bundle", etag.as_deref()).0, 304);
    }
    assert_eq!(get_etag(srv.port, "/v1/default/bundle", None).0, 404);
    assert_eq!(post(srv.port, "node42", &site.key, &status_json("applied", 3)).0, 201);
    let mut failed = serde_json::from_slice::<serde_json::Value>(&status_json("failed", 3)).unwrap();
    failed["node"] = "node43".into();
    site.enrol("node43");
    let body = serde_json::to_vec(&failed).unwrap();
    assert_eq!(post(srv.port, "node43", &site.key, &body).0, 201);

    // A connection is counted until its server thread has closed it, which
    // on a loaded machine can come a moment after the client read its
    // answer: scrape until only the scrape's own connection is open.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (text, scrape) = loop {
        let (status, text) = http(srv.port, "GET", "/metrics", &[], b"");
        assert_eq!(status, 200);
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let open = scrape.samples.iter().find(|s| s.metric == "stateless_open_connections").map(|s| &s.value);
        if matches!(open, Some(Value::Gauge(v) | Value::Untyped(v)) if *v == 1.0) || std::time::Instant::now() > until {
            break (text, scrape);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
        match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(value("stateless_requests_total", &[("kind", "node"), ("status", "200")]), 1.0);
    assert_eq!(value("stateless_requests_total", &[("kind", "node"), ("status", "304")]), 3.0);
    assert_eq!(value("stateless_requests_total", &[("kind", "default"), ("status", "404")]), 1.0);
    assert_eq!(value("stateless_requests_total", &[("kind", "report"), ("status", "201")]), 2.0);
    assert_eq!(value("stateless_not_modified_total", &[]), 3.0);
    assert!(value("stateless_sent_bytes_total", &[]) > 0.0);
    // The scrape's own connection is open.
    assert_eq!(value("stateless_open_connections", &[]), 1.0);
    assert_eq!(value("stateless_nodes", &[("result", "applied")]), 1.0);
    assert_eq!(value("stateless_nodes", &[("result", "failed")]), 1.0);
    let hist = scrape.samples.iter().find(|s| s.metric == "stateless_report_age_seconds").unwrap();
    let Value::Histogram(buckets) = &hist.value else { panic!("{:?}", hist.value) };
    assert_eq!(buckets.first().unwrap().less_than, 60.0);
    assert_eq!(buckets.first().unwrap().count, 2.0);
    // HEAD works too; no node id appears.
    assert_eq!(http(srv.port, "HEAD", "/metrics", &[], b"").0, 200);
    assert!(!text.contains("node42"), "{text}");
}

// ---- publish --from-history: a deliberate rollback ----

#[test]
fn republishing_an_earlier_generation_moves_nodes_back_by_moving_forward() {
    let site = Site::new();
    let data = site.data_s();
    for g in [5, 6, 7] {
        site.publish("node42", g);
    }
    let srv = Serve::start(&site.data(), &[]);
    let node = Node::new(true);
    let (code, err, status, _) = node.boot(&cmdline(srv.port, &site));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 7);

    let out = ok(&["publish", "--data", &data, "--node", "node42", "--from-history", "5", "--key", &site.key_s()]);
    assert!(out.contains("published generation 8") && out.contains("content of generation 5"), "{out}");
    let (code, err, status, _) = node.boot(&cmdline(srv.port, &site));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 8, "{status}");
    assert_eq!(fs::read_to_string(node.p("sysroot/etc/motd")).unwrap(), "generation 5\n");
    let audit = fs::read_to_string(site.data().join("state/audit.log")).unwrap();
    assert!(audit.contains("content of generation 5"), "{audit}");

    // An explicit generation must be higher; a generation not kept is named with what is kept.
    let out = run(&[
        "publish",
        "--data",
        &data,
        "--node",
        "node42",
        "--from-history",
        "6",
        "--key",
        &site.key_s(),
        "--generation",
        "8",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not higher than generation 8"), "{out:?}");
    let out = run(&["publish", "--data", &data, "--node", "node42", "--from-history", "2", "--key", &site.key_s()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("generation 2 of the node node42 bundle is not in the history (kept: 5, 6, 7;"), "{err}");
    // The wrong key cannot open it.
    let other = site.dir.path().join("other.key");
    stateless_keys::write_key_file(&other, &Key::generate().unwrap(), false).unwrap();
    let out =
        run(&["publish", "--data", &data, "--node", "node42", "--from-history", "6", "--key", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // --from-history needs the key; a bundle and --from-history exclude each other.
    assert_eq!(run(&["publish", "--data", &data, "--node", "node42", "--from-history", "6"]).status.code(), Some(2));

    // Signed: the new generation is signed with the given publisher key.
    let signing = site.dir.path().join("pub.sign");
    ok(&["key", "new-signing", "-o", signing.to_str().unwrap()]);
    let out = ok(&[
        "publish",
        "--data",
        &data,
        "--node",
        "node42",
        "--from-history",
        "6",
        "--key",
        &site.key_s(),
        "--sign",
        signing.to_str().unwrap(),
        "--generation",
        "20",
    ]);
    assert!(out.contains("published generation 20"), "{out}");
    let bundle = site.data().join("v1/nodes/node42/bundle");
    let view: serde_json::Value =
        serde_json::from_str(&ok(&["bundle", "inspect", "--json", bundle.to_str().unwrap()])).unwrap();
    assert!(view["signer"].is_string(), "{view}");
    // Republishing a signed generation without --sign is refused.
    let out = run(&["publish", "--data", &data, "--node", "node42", "--from-history", "20", "--key", &site.key_s()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --sign"), "{out:?}");
}

// ---- mirror ----

impl Site {
    fn publish_to(&self, target: &[&str], scope: stateless_bundle::Scope, generation: u64) {
        let tree = tempfile::tempdir().unwrap();
        fs::create_dir_all(tree.path().join("etc")).unwrap();
        fs::write(tree.path().join("etc/motd"), format!("{scope} generation {generation}\n")).unwrap();
        let opts = stateless_bundle::PackOptions {
            key: Some(&self.key),
            generation,
            created: 1_760_000_000,
            expires: None,
            scope,
            level: 3,
            threads: 0,
            deletions: vec![],
            limits: stateless_bundle::Limits::default(),
        };
        let out = self.dir.path().join(format!("m{generation}"));
        stateless_bundle::pack(tree.path(), fs::File::create(&out).unwrap(), &opts).unwrap();
        let data = self.data_s();
        let mut args = vec!["publish", "--data", &data];
        args.extend(target);
        args.push(out.to_str().unwrap());
        ok(&args);
    }
}

#[test]
fn mirror_copies_layers_before_node_views_and_a_loader_boots_from_the_mirror() {
    use stateless_bundle::Scope;
    let site = Site::new();
    let data = site.data_s();
    let mirror = site.dir.path().join("mirror");
    let to = mirror.to_str().unwrap().to_owned();
    site.publish_to(&["--default"], Scope::Any, 1);
    site.publish_to(&["--group", "rack7"], Scope::Group("rack7".into()), 1);
    site.publish_to(&["--node", "node42"], Scope::Node("node42".into()), 1);
    let out = ok(&["mirror", "--data", &data, "--to", &to]);
    assert!(out.ends_with("3 copied, 0 unchanged, 0 removed\n"), "{out}");
    for rel in ["v1/default/bundle", "v1/groups/rack7/bundle", "v1/nodes/node42/bundle"] {
        assert_eq!(fs::read(site.data().join(rel)).unwrap(), fs::read(mirror.join(rel)).unwrap(), "{rel}");
    }
    assert!(!mirror.join("state").exists(), "state/ is never mirrored");

    // New generations of a node and of its group: the group (a layer) goes first.
    site.publish_to(&["--node", "node42"], Scope::Node("node42".into()), 2);
    site.publish_to(&["--group", "rack7"], Scope::Group("rack7".into()), 2);
    let out = ok(&["mirror", "--data", &data, "--to", &to]);
    let group = out.find("copy v1/groups/rack7/bundle generation 2 (was 1)").unwrap_or_else(|| panic!("{out}"));
    let node = out.find("copy v1/nodes/node42/bundle generation 2 (was 1)").unwrap_or_else(|| panic!("{out}"));
    assert!(group < node, "{out}");
    assert!(out.ends_with("2 copied, 1 unchanged, 0 removed\n"), "{out}");
    assert!(ok(&["mirror", "--data", &data, "--to", &to]).ends_with("0 copied, 3 unchanged, 0 removed\n"));
    // No temporary file is left beside the bundles.
    let leftovers: Vec<_> =
        fs::read_dir(mirror.join("v1/nodes/node42")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // A loader boots from a server serving the mirror.
    let srv = Serve::start(&mirror, &[]);
    let node = Node::new(false);
    let (code, err, status, _) = node.boot(&cmdline(srv.port, &site));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 2);

    // --delete: nodes first, then layers; --dry-run changes nothing.
    fs::remove_file(site.data().join("v1/nodes/node42/bundle")).unwrap();
    fs::remove_file(site.data().join("v1/groups/rack7/bundle")).unwrap();
    let out = ok(&["mirror", "--data", &data, "--to", &to, "--delete", "--dry-run"]);
    assert!(out.contains("(dry run)") && mirror.join("v1/nodes/node42/bundle").exists(), "{out}");
    let out = ok(&["mirror", "--data", &data, "--to", &to, "--delete"]);
    let node = out.find("remove v1/nodes/node42/bundle").unwrap_or_else(|| panic!("{out}"));
    let group = out.find("remove v1/groups/rack7/bundle").unwrap_or_else(|| panic!("{out}"));
    assert!(node < group, "{out}");
    assert!(!mirror.join("v1/nodes/node42/bundle").exists());
}

// ---- many nodes at once ----

#[test]
fn a_thousand_nodes_reporting_at_once_lose_none() {
    use stateless_server::registry::{self, Approval};
    let site = Site::new();
    let data = stateless_server::DataDir::open(&site.data()).unwrap();
    const NODES: usize = 1000;
    let names: Vec<String> = (0..NODES).map(|i| format!("blade{i:04}")).collect();
    for n in &names {
        let public = PushSigner::new(&site.key, n).unwrap().public_key_hex();
        registry::approve(&data, n, Approval { push_public_key: Some(public), ..Approval::default() }, "test".into())
            .unwrap();
    }
    let srv = Serve::start(&site.data(), &[]);
    let port = srv.port;
    let key = &site.key;
    // 100 clients at a time, each a few reports in a row on new connections.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = names
            .chunks(NODES / 100)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|n| {
                            let body = serde_json::to_vec(&serde_json::json!({
                                "node": n, "result": "applied", "source": "server", "generation": 1,
                                "message": "applied generation 1",
                            }))
                            .unwrap();
                            post(port, n, key, &body).0
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(statuses.len(), NODES);
    assert!(statuses.iter().all(|s| *s == 201), "{:?}", statuses.iter().filter(|s| **s != 201).collect::<Vec<_>>());
    let list = nodes_json(&[&site.data_s()], &[]);
    let reported = list.as_array().unwrap().iter().filter(|n| n["result"] == "applied").count();
    assert_eq!(reported, NODES);
    let (_, text) = http(port, "GET", "/metrics", &[], b"");
    assert!(text.contains(&format!("stateless_nodes{{result=\"applied\"}} {NODES}")), "{text}");
}

// ---- a plain web server ----

#[test]
fn behind_a_plain_web_server_the_node_moves_on_without_a_warning_or_a_kept_report() {
    let site = Site::new();
    site.publish("node42", 4);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.path().display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi; default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ return 404; }} location /v1/ {{ }} }} }}
",
        root = site.data().display()
    );
    fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists()).expect("nginx");
    let mut child = Command::new(nginx)
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < until, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let node = Node::new(true);
    let (code, err, status, _) = node.boot(&cmdline(port, &site));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 4);
    assert!(err.contains("does not take reports"), "{err}");
    assert!(!err.contains("warning: boot report"), "{err}");
    assert_eq!(node.kept("cache/reports"), 0);
}

// ---- several servers ----

#[test]
fn nodes_merges_several_data_dirs_by_time() {
    let a = Site::new();
    let b = Site { dir: tempfile::tempdir().unwrap(), key: a.key.clone() };
    fs::create_dir(b.data()).unwrap();
    stateless_keys::write_key_file(&b.dir.path().join("node.key"), &b.key, false).unwrap();
    for s in [&a, &b] {
        s.enrol("node42");
    }
    a.enrol("node7");
    let (sa, sb) = (Serve::start(&a.data(), &[]), Serve::start(&b.data(), &[]));
    let body = |result: &str, g: u64| status_json(result, g);
    assert_eq!(post(sa.port, "node42", &a.key, &body("failed", 4)).0, 201);
    assert_eq!(
        post(sa.port, "node7", &a.key, &{
            let mut v: serde_json::Value = serde_json::from_slice(&body("applied", 2)).unwrap();
            v["node"] = "node7".into();
            serde_json::to_vec(&v).unwrap()
        })
        .0,
        201
    );
    // A second later, node42 boots again from the other mirror.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(post(sb.port, "node42", &b.key, &body("applied", 5)).0, 201);

    let (da, db) = (a.data_s(), b.data_s());
    let list = nodes_json(&[&da, &db], &[]);
    let row = |id: &str| list.as_array().unwrap().iter().find(|n| n["node"] == id).unwrap().clone();
    assert_eq!(row("node42")["result"], "applied", "{list}");
    assert_eq!(row("node42")["generation"], 5);
    assert_eq!(row("node42")["reported_to"], db.as_str());
    assert_eq!(row("node7")["generation"], 2);
    // The order of the directories does not matter.
    let list = nodes_json(&[&db, &da], &["node42"]);
    assert_eq!(list[0]["generation"], 5, "{list}");
    // --reports merges both servers' reports, newest first.
    let reports = nodes_json(&[&da, &db], &["node42", "--reports"]);
    let gens: Vec<u64> =
        reports.as_array().unwrap().iter().map(|r| r["report"]["generation"].as_u64().unwrap()).collect();
    assert_eq!(gens, [5, 4]);
    // --failed: only A knows node42's failure, and it is older.
    assert_eq!(nodes_json(&[&da, &db], &["--failed"]).as_array().unwrap().len(), 0);
    assert_eq!(nodes_json(&[&da], &["--failed"]).as_array().unwrap().len(), 1);
}
