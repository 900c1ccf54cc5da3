//! Zero-touch TPM enrolment through `statelessctl serve` on 127.0.0.1 and
//! two swtpms: a node posts its TPM's keys, `approve --tpm-key` shows the
//! EK hash and publishes a key only that TPM can import, `reject` withdraws
//! it; another TPM can neither use the key nor take the node's place.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use stateless_bundle::Key;
use stateless_keys::tpm::enrol::ek_hash;
use stateless_keys::tpm::import::WrappedKey;
use stateless_keys::tpm::{Tpm, TpmError};
use swtpm::Swtpm;

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
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
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
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn open(s: &Swtpm) -> Tpm {
    Tpm::open(&s.selector().parse().unwrap()).unwrap()
}

#[test]
fn enrol_approve_import_reject() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let d = data.to_str().unwrap();
    let key = Key::generate().unwrap();
    let keyfile = dir.path().join("n1.key");
    stateless_keys::write_key_file(&keyfile, &key, false).unwrap();
    let k = keyfile.to_str().unwrap();
    let serve = Serve::start(&data, &[]);
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let (mut ta, mut tb) = (open(&a), open(&b));
    let ea = ta.enrolment().unwrap();
    let eb = tb.enrolment().unwrap();

    // Nothing to approve before the node enrolled.
    let err = fails(&["approve", "--data", d, "n1", "--tpm-key", k]);
    assert!(err.contains("node n1 has not enrolled a TPM"), "{err}");
    assert_eq!(http(serve.port, "GET", "/v1/nodes/n1/tpm-key", b"").0, 404);

    let (status, body) = http(serve.port, "POST", "/v1/nodes/n1/enrol", ea.to_json().as_bytes());
    assert_eq!(status, 201, "{body}");
    // The node reboots and enrols again while it waits: fine.
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n1/enrol", ea.to_json().as_bytes()).0, 200);
    // Another TPM claiming the node: refused.
    let (status, body) = http(serve.port, "POST", "/v1/nodes/n1/enrol", eb.to_json().as_bytes());
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already enrolled another TPM"), "{body}");
    // Bad bodies: a clear 422.
    let (status, body) = http(serve.port, "POST", "/v1/nodes/n2/enrol", br#"{"ek_public":"zz"}"#);
    assert_eq!(status, 422, "{body}");
    // The node is listed as pending with its TPM enrolled.
    let list = ok(&["nodes", "--data", d, "--json"]);
    assert!(list.contains(&format!("enrolled (EK {})", ek_hash(&ea.ek_public))), "{list}");

    // An inventory that lists another EK: not approved.
    let wrong = ek_hash(&eb.ek_public);
    let err = fails(&["approve", "--data", d, "n1", "--tpm-key", k, "--ek-hash", &wrong]);
    assert!(err.contains("is not the one given with --ek-hash"), "{err}");
    assert!(!data.join("state/nodes/n1.json").exists());
    // The TPM has no EK certificate: --ek-ca cannot pass.
    let err = fails(&["approve", "--data", d, "n1", "--tpm-key", k, "--ek-ca", "/dev/null"]);
    assert!(err.contains("sent no EK certificate"), "{err}");

    let right = ek_hash(&ea.ek_public);
    let out = ok(&["approve", "--data", d, "n1", "--tpm-key", k, "--ek-hash", &right]);
    assert!(out.contains(&format!("TPM of n1: EK SHA-256 {right}")), "{out}");
    assert!(out.contains(&format!("published key {} wrapped for n1's TPM to PCR 7", key.id())), "{out}");
    assert!(out.contains("the storage key is bound to the EK"), "{out}");
    let (status, text) = http(serve.port, "GET", "/v1/nodes/n1/tpm-key", b"");
    assert_eq!(status, 200);
    let wrapped = WrappedKey::parse(text.as_bytes()).unwrap();
    assert!(wrapped.credential.is_some(), "approve binds the SRK to the EK");
    let sealed = ta.import(&wrapped).unwrap();
    assert_eq!(ta.unseal(&sealed).unwrap().as_bytes(), key.as_bytes());
    // The blob is useless to TPM B.
    assert!(matches!(tb.import(&wrapped), Err(TpmError::SrkMismatch)));
    let audit = fs::read_to_string(data.join("state/audit.log")).unwrap();
    assert!(audit.contains("\"tpm-key\"") && audit.contains(&right), "{audit}");

    // A PCR list the node did not report, and a bad one.
    let err = fails(&["approve", "--data", d, "n1", "--tpm-key", k, "--tpm-pcrs", "25"]);
    assert!(err.contains("--tpm-pcrs 25"), "{err}");

    // Reject: the blob is withdrawn and the enrolment forgotten; the node
    // can no longer enrol while rejected.
    let out = ok(&["reject", "--data", d, "n1"]);
    assert!(out.contains("its TPM key is withdrawn"), "{out}");
    assert_eq!(http(serve.port, "GET", "/v1/nodes/n1/tpm-key", b"").0, 404);
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n1/enrol", eb.to_json().as_bytes()).0, 403);
    // Approved again (without a key), it may enrol a new TPM; approve says
    // there is one waiting for a key.
    ok(&["approve", "--data", d, "n1"]);
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n1/enrol", eb.to_json().as_bytes()).0, 201);
    let out = ok(&["approve", "--data", d, "n1"]);
    assert!(out.contains(&format!("n1 enrolled a TPM (EK SHA-256 {wrong}); give --tpm-key")), "{out}");
}

#[test]
fn enrolments_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--enrol-per-minute", "3"]);
    let swtpm = Swtpm::start();
    let e = open(&swtpm).enrolment().unwrap();
    // A new enrolment counts once; repeating it (a node rebooting while it
    // waits) does not.
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n1/enrol", e.to_json().as_bytes()).0, 201);
    for _ in 0..5 {
        assert_eq!(http(serve.port, "POST", "/v1/nodes/n1/enrol", e.to_json().as_bytes()).0, 200);
    }
    let big = vec![b'a'; 20 * 1024];
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n2/enrol", &big).0, 413);
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n2/enrol", b"{}").0, 422);
    let (status, body) = http(serve.port, "POST", "/v1/nodes/n2/enrol", b"{}");
    assert_eq!(status, 429, "{body}");
    // Now even a good enrolment from that address waits.
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n1/enrol", e.to_json().as_bytes()).0, 429);
    // Other paths are not enrolments.
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n1/other", b"{}").0, 405);
}

// ---- the loader, end to end ----

fn loader_bin() -> std::path::PathBuf {
    // target/debug/deps/enrol-HASH -> target/debug/stateless-loader.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("stateless-loader");
    assert!(bin.exists(), "{} is missing: run cargo build -p stateless-loader", bin.display());
    bin
}

/// One loader run on a node root in `dir` with the TPM `tpm`: exit code,
/// stderr, status.json.
fn boot(dir: &Path, port: u16, tpm: &Swtpm) -> (i32, String, serde_json::Value) {
    boot_with(dir, port, tpm, false)
}

/// [`boot`], with a cache disk (a directory) when `cache`.
fn boot_with(dir: &Path, port: u16, tpm: &Swtpm, cache: bool) -> (i32, String, serde_json::Value) {
    boot_servers(dir, &format!("http://127.0.0.1:{port}"), tpm, cache)
}

/// [`boot_with`] with `rd.stateless.server=` `servers`.
fn boot_servers(dir: &Path, servers: &str, tpm: &Swtpm, cache: bool) -> (i32, String, serde_json::Value) {
    for d in ["sysroot/etc", "run", "cache"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let _ = fs::remove_file(dir.join("sysroot/etc/motd"));
    let _ = fs::remove_file(dir.join("run/status.json"));
    let cmdline = format!(
        "rd.stateless.server={servers} rd.stateless.node=node42 rd.stateless.key=tpm \
         rd.stateless.tpm={} rd.stateless.timeout=5",
        tpm.selector()
    );
    let mut cmd = Command::new(loader_bin());
    if cache {
        cmd.arg("--cache-dir").arg(dir.join("cache"));
    }
    let out = cmd
        .arg("--cmdline")
        .arg(&cmdline)
        .arg("--sysroot")
        .arg(dir.join("sysroot"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--sealed-dir")
        .arg(dir.join("tpm"))
        .env("STATELESS_LOG_STDERR", "1")
        .output()
        .unwrap();
    let status = fs::read(dir.join("run/status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), status)
}

#[test]
fn a_node_enrols_waits_for_approval_and_boots_with_the_key_its_tpm_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let d = data.to_str().unwrap();
    let key = Key::generate().unwrap();
    let keyfile = dir.path().join("node42.key");
    stateless_keys::write_key_file(&keyfile, &key, false).unwrap();
    // The node's bundle, sealed with the key no initramfs holds.
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/motd"), "from the TPM-delivered key\n").unwrap();
    let opts = stateless_bundle::PackOptions {
        key: Some(&key),
        generation: 1,
        created: 1_760_000_000,
        expires: None,
        scope: stateless_bundle::Scope::Node("node42".into()),
        level: 3,
        threads: 0,
        deletions: vec![],
        limits: stateless_bundle::Limits::default(),
    };
    let bundle = dir.path().join("b1");
    stateless_bundle::pack(&tree, fs::File::create(&bundle).unwrap(), &opts).unwrap();
    ok(&["publish", "--data", d, "--node", "node42", bundle.to_str().unwrap()]);
    let serve = Serve::start(&data, &[]);
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let node_a = dir.path().join("node-a");

    // First boot: no key anywhere; the node enrols and says it waits.
    let (code, err, status) = boot(&node_a, serve.port, &a);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("TPM enrolled with http://127.0.0.1:"), "{err}");
    assert!(err.contains("waiting for approval (statelessctl approve node42 --tpm-key KEYFILE)"), "{err}");
    let warnings = status["warnings"].to_string();
    assert!(warnings.contains("waiting for approval"), "{status}");
    assert!(data.join("state/enrol/node42.json").exists());
    // A second boot before approval: still waiting, nothing new for the server.
    let (code, err, _) = boot(&node_a, serve.port, &a);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("waiting for approval"), "{err}");

    // The admin approves with the key.
    let out = ok(&["approve", "--data", d, "node42", "--tpm-key", keyfile.to_str().unwrap()]);
    assert!(out.contains("published key"), "{out}");

    // Next boot: the wrapped key is imported, unsealed, and the bundle applies.
    let (code, err, status) = boot(&node_a, serve.port, &a);
    assert_eq!(code, 0, "{err}\n{status}");
    assert!(err.contains(&format!("imported key {}", key.id().short())), "{err}");
    assert_eq!(fs::read_to_string(node_a.join("sysroot/etc/motd")).unwrap(), "from the TPM-delivered key\n");

    // Another machine claiming to be node42 with its own TPM gets the same
    // blob and cannot use it.
    let node_b = dir.path().join("node-b");
    let (code, err, _) = boot(&node_b, serve.port, &b);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("TPM key from http://127.0.0.1:"), "{err}");
    assert!(err.contains("not the one the key was sealed under"), "{err}");
    assert!(!node_b.join("sysroot/etc/motd").exists());

    // A node with a cache disk keeps the imported key there: when no
    // server answers, the cached bundle still opens.
    let node_c = dir.path().join("node-c");
    let (code, err, _) = boot_with(&node_c, serve.port, &a, true);
    assert_eq!(code, 0, "{err}");
    assert!(node_c.join("cache/tpm/enrolled.sealed").is_file());
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _ = fs::remove_file(node_c.join("tpm/enrolled.sealed"));
    let (code, err, status) = boot_with(&node_c, dead, &a, true);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("using the TPM key imported on an earlier boot"), "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert_eq!(status["key_source"], "TPM", "{status}");

    // Reject: the blob is withdrawn; a node that reaches the server drops
    // its imported copies and falls back (here: fails).
    ok(&["reject", "--data", d, "node42"]);
    let (code, err, _) = boot(&node_a, serve.port, &a);
    assert_ne!(code, 0, "{err}");
    assert!(!node_a.join("sysroot/etc/motd").exists());
    assert!(err.contains("no longer publishes a TPM key for node42"), "{err}");
    let (code, err, _) = boot_with(&node_c, serve.port, &a, true);
    assert_ne!(code, 0, "{err}");
    assert!(!node_c.join("cache/tpm/enrolled.sealed").exists());
}

// ---- EK certificates ----

/// A local CA (swtpm_localca's root and issuer, created on first use in
/// `ca`) and the swtpm_setup configuration that uses it.
fn local_ca(ca: &Path) -> std::path::PathBuf {
    fs::create_dir_all(ca).unwrap();
    let d = ca.display();
    fs::write(
        ca.join("localca.conf"),
        format!("statedir = {d}\nsigningkey = {d}/signkey.pem\nissuercert = {d}/issuercert.pem\ncertserial = {d}/certserial\n"),
    )
    .unwrap();
    let setup = ca.join("setup.conf");
    fs::write(
        &setup,
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {d}/localca.conf\n\
             create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n"
        ),
    )
    .unwrap();
    setup
}

/// A swtpm manufactured with an EK certificate signed by the CA in `ca`.
fn tpm_with_ek_cert(ca: &Path) -> Swtpm {
    let setup = local_ca(ca);
    Swtpm::start_with(|state| {
        let out = Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
            .arg(state)
            .arg("--config")
            .arg(&setup)
            .output()
            .expect("swtpm_setup is not installed (swtpm-tools)");
        assert!(out.status.success(), "swtpm_setup: {}", String::from_utf8_lossy(&out.stderr));
    })
}

/// The CA file an admin gives `--ek-ca`: the local CA's issuer and root.
fn ca_file(ca: &Path) -> String {
    let mut pem = fs::read_to_string(ca.join("issuercert.pem")).unwrap();
    pem.push_str(&fs::read_to_string(ca.join("swtpm-localca-rootca-cert.pem")).unwrap());
    let path = ca.join("ek-ca.pem");
    fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn the_ek_certificate_is_checked_against_the_manufacturer_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let d = data.to_str().unwrap();
    let keyfile = dir.path().join("n.key");
    stateless_keys::write_key_file(&keyfile, &Key::generate().unwrap(), false).unwrap();
    let k = keyfile.to_str().unwrap();
    let (ca1, ca2) = (dir.path().join("ca1"), dir.path().join("ca2"));
    let (a, b) = (tpm_with_ek_cert(&ca1), tpm_with_ek_cert(&ca2));
    let ea = open(&a).enrolment().unwrap();
    let eb = open(&b).enrolment().unwrap();
    let cert = ea.ek_cert.clone().expect("swtpm_setup --create-ek-cert provisions an EK certificate");
    assert_eq!(cert.first(), Some(&0x30), "DER");
    let serve = Serve::start(&data, &[]);

    // A's EK, certified by CA 1.
    assert_eq!(http(serve.port, "POST", "/v1/nodes/a/enrol", ea.to_json().as_bytes()).0, 201);
    let out = ok(&["approve", "--data", d, "a", "--tpm-key", k, "--ek-ca", &ca_file(&ca1)]);
    assert!(out.contains("EK certificate: verified against"), "{out}");
    assert!(out.contains("published key"), "{out}");
    // Present but not checked: said so.
    let out = ok(&["approve", "--data", d, "a", "--tpm-key", k]);
    assert!(out.contains("EK certificate: present, not checked (give --ek-ca)"), "{out}");

    // B's certificate is from another CA: refused, and b is not approved.
    assert_eq!(http(serve.port, "POST", "/v1/nodes/b/enrol", eb.to_json().as_bytes()).0, 201);
    let err = fails(&["approve", "--data", d, "b", "--tpm-key", k, "--ek-ca", &ca_file(&ca1)]);
    assert!(err.contains("the EK certificate of b does not chain to"), "{err}");
    assert!(!data.join("state/nodes/b.json").exists());
    assert!(!data.join("v1/nodes/b/tpm-key").exists());

    // A node that sends a genuine certificate for another TPM's EK (A's
    // certificate with B's keys): refused.
    let mut forged = eb.clone();
    forged.ek_cert = Some(cert);
    assert_eq!(http(serve.port, "POST", "/v1/nodes/c/enrol", forged.to_json().as_bytes()).0, 201);
    let err = fails(&["approve", "--data", d, "c", "--tpm-key", k, "--ek-ca", &ca_file(&ca1)]);
    assert!(err.contains("certifies another key than its EK"), "{err}");
}

/// A plain web server with nothing on it (a mirror without enrolments):
/// 404 to every GET, 405 to every POST. Returns its port.
fn plain_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            let status = if head.starts_with(b"POST") { "405 Method Not Allowed" } else { "404 Not Found" };
            let _ =
                c.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    port
}

#[test]
fn a_node_enrols_with_the_first_server_that_takes_enrolments_and_mirrors_carry_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let d = data.to_str().unwrap();
    let keyfile = dir.path().join("k.key");
    stateless_keys::write_key_file(&keyfile, &Key::generate().unwrap(), false).unwrap();
    let serve = Serve::start(&data, &[]);
    let plain = plain_server();
    let a = Swtpm::start();
    let node = dir.path().join("node");
    let servers = format!("http://127.0.0.1:{plain},http://127.0.0.1:{}", serve.port);
    let (code, err, _) = boot_servers(&node, &servers, &a, false);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&format!("TPM enrolled with http://127.0.0.1:{}", serve.port)), "{err}");
    assert!(data.join("state/enrol/node42.json").exists());

    // approve publishes the key; mirror copies it; reject then mirror
    // --delete withdraws it from the mirror too.
    ok(&["approve", "--data", d, "node42", "--tpm-key", keyfile.to_str().unwrap()]);
    let m = dir.path().join("mirror");
    let out = ok(&["mirror", "--data", d, "--to", m.to_str().unwrap()]);
    assert!(out.contains("copy v1/nodes/node42/tpm-key"), "{out}");
    assert_eq!(
        fs::read(m.join("v1/nodes/node42/tpm-key")).unwrap(),
        fs::read(data.join("v1/nodes/node42/tpm-key")).unwrap()
    );
    let out = ok(&["mirror", "--data", d, "--to", m.to_str().unwrap()]);
    assert!(!out.contains("copy"), "{out}");
    ok(&["reject", "--data", d, "node42"]);
    let out = ok(&["mirror", "--data", d, "--to", m.to_str().unwrap(), "--delete"]);
    assert!(out.contains("remove v1/nodes/node42/tpm-key"), "{out}");
    assert!(!m.join("v1/nodes/node42/tpm-key").exists());
}

#[test]
fn published_signed_policies_are_served_in_the_clear_and_open_a_sealed_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let d = data.to_str().unwrap();
    let key = Key::generate().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/motd"), "opened with a published policy\n").unwrap();
    let opts = stateless_bundle::PackOptions {
        key: Some(&key),
        generation: 1,
        created: 1_760_000_000,
        expires: None,
        scope: stateless_bundle::Scope::Node("node42".into()),
        level: 3,
        threads: 0,
        deletions: vec![],
        limits: stateless_bundle::Limits::default(),
    };
    stateless_bundle::pack(&tree, fs::File::create(p("b1")).unwrap(), &opts).unwrap();
    ok(&["publish", "--data", d, "--node", "node42", &p("b1")]);
    let tpm = Swtpm::start();
    let sel = tpm.selector();
    ok(&["tpm", "new-policy-key", "-o", &p("policy.sign")]);
    ok(&["tpm", "new-policy-key", "-o", &p("other.sign")]);
    let public = stateless_keys::tpm::policy::read_policy_public_file(&dir.path().join("policy.pub")).unwrap();
    let node = dir.path().join("node");
    fs::create_dir_all(node.join("tpm")).unwrap();
    fs::write(node.join("tpm/node42.sealed"), open(&tpm).seal_authorized(&key, &public).unwrap().to_text()).unwrap();
    for (signer, out) in [("policy.sign", "good.signed"), ("other.sign", "foreign.signed")] {
        let args = ["--pcrs", "7", "--current", "--tpm", &sel, "--no-lock", "-o", &p(out)];
        ok(&[&["tpm", "sign-policy", "--policy-key", &p(signer)][..], &args].concat());
    }

    // Checked against the policy key before anything is published.
    let err = fails(&["tpm", "publish-policy", "--data", d, "--policy-pub", &p("policy.pub"), &p("foreign.signed")]);
    assert!(err.contains("foreign.signed: not signed by the policy key"), "{err}");
    fs::write(p("junk.signed"), "junk\n").unwrap();
    let err = fails(&["tpm", "publish-policy", "--data", d, &p("junk.signed")]);
    assert!(err.contains("junk.signed"), "{err}");
    assert!(!data.join("v1/default/tpm-policies").exists());
    let err = fails(&["tpm", "publish-policy", "--data", d, "--node", "../x", &p("good.signed")]);
    assert!(err.contains("node"), "{err}");

    // Another key's policy for every node, this key's for node42 (given
    // twice: published once).
    let out = ok(&["tpm", "publish-policy", "--data", d, &p("foreign.signed")]);
    assert!(out.contains("1 signed policies -> "), "{out}");
    let args = ["--policy-pub", &p("policy.pub"), &p("good.signed"), &p("good.signed")];
    let out = ok(&[&["tpm", "publish-policy", "--data", d, "--node", "node42"][..], &args].concat());
    assert!(out.contains("1 signed policies -> "), "{out}");
    let serve = Serve::start(&data, &[]);
    let (status, body) = http(serve.port, "GET", "/v1/nodes/node42/tpm-policies", b"");
    assert_eq!(status, 200);
    assert_eq!(body, fs::read_to_string(p("good.signed")).unwrap());
    assert_eq!(http(serve.port, "GET", "/v1/default/tpm-policies", b"").0, 200);
    assert_eq!(http(serve.port, "HEAD", "/v1/default/tpm-policies", b"").0, 200);
    assert_eq!(http(serve.port, "GET", "/v1/nodes/other/tpm-policies", b"").0, 404);

    // The node boots with the node's policy; the foreign one is only named.
    let (code, err, _) = boot_with(&node, serve.port, &tpm, true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(node.join("sysroot/etc/motd")).unwrap(), "opened with a published policy\n");
    // Offline: the policies kept on the cache disk.
    let port = serve.port;
    drop(serve);
    let (code, err, _) = boot_with(&node, port, &tpm, true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(node.join("sysroot/etc/motd")).unwrap(), "opened with a published policy\n");

    // Withdrawn: the server has none; the node's cached copy goes too.
    let out = ok(&["tpm", "publish-policy", "--data", d, "--node", "node42", "--remove"]);
    assert!(out.contains("removed"), "{out}");
    let serve = Serve::start(&data, &[]);
    assert_eq!(http(serve.port, "GET", "/v1/nodes/node42/tpm-policies", b"").0, 404);
    let (code, err, _) = boot_with(&node, serve.port, &tpm, true);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("default.policies #1: signed by another policy key"), "{err}");
    assert!(!node.join("cache/tpm/policies/node.policies").exists());
}

// ---- key tpm-check --wrapped ----

#[test]
fn tpm_check_imports_and_unseals_a_wrapped_key_under_signed_policies() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let d = data.to_str().unwrap();
    let key = Key::generate().unwrap();
    stateless_keys::write_key_file(&dir.path().join("n1.key"), &key, false).unwrap();
    let serve = Serve::start(&data, &[]);
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let ea = open(&a).enrolment().unwrap();
    assert_eq!(http(serve.port, "POST", "/v1/nodes/n1/enrol", ea.to_json().as_bytes()).0, 201);
    ok(&["tpm", "new-policy-key", "-o", &p("pol.sign")]);
    let out = ok(&["approve", "--data", d, "n1", "--tpm-key", &p("n1.key"), "--tpm-policy-key", &p("pol.pub")]);
    assert!(out.contains("published key"), "{out}");
    let (status, blob) = http(serve.port, "GET", "/v1/nodes/n1/tpm-key", b"");
    assert_eq!(status, 200);
    fs::write(p("n1.tpm-key"), blob).unwrap();
    let (sa, sb) = (a.selector(), b.selector());
    ok(&[
        "tpm",
        "sign-policy",
        "--policy-key",
        &p("pol.sign"),
        "--pcrs",
        "7",
        "--current",
        "--tpm",
        &sa,
        "-o",
        &p("a.signed"),
    ]);

    let check = |tpm: &str, policies: &[&str]| {
        let mut args = vec!["key".to_owned(), "tpm-check".to_owned(), p("n1.tpm-key"), "--wrapped".to_owned()];
        for s in policies {
            args.extend(["--policy".to_owned(), p(s)]);
        }
        args.extend(["--tpm".to_owned(), tpm.to_owned()]);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Imported and unsealed on the TPM it was wrapped for; only the id is printed.
    let out = check(&sa, &["a.signed"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("key {} unseals", key.id())), "{stdout}");
    assert!(!stdout.contains(&stateless_bundle::key::hex_encode(key.as_bytes())));
    // Again: a boot imports it every time.
    assert!(check(&sa, &["a.signed"]).status.success());
    // Without a signed policy it stays sealed.
    let out = check(&sa, &[]);
    assert!(!out.status.success());
    // Another TPM cannot import it.
    let out = check(&sb, &["a.signed"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("importing") && err.contains("another TPM"), "{err}");
    // A sealed-key file is not a wrapped key: a clear refusal.
    fs::write(p("junk"), "stateless-sealed-v1\n").unwrap();
    let out = run(&["key", "tpm-check", &p("junk"), "--wrapped", "--tpm", &sa]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk"), "{}", String::from_utf8_lossy(&out.stderr));
}
