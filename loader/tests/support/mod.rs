//! Real servers for the loader's tests: nginx and dnsmasq started on
//! 127.0.0.1 by the test and stopped when dropped, bundles made with the
//! project's own library, and fault-injecting TCP proxies.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../../tests/support/noise.rs"]
pub mod noise;
#[path = "../../../tests/support/swtpm.rs"]
pub mod swtpm;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stateless_bundle::{Key, Limits, PackOptions, Scope};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_tcp(port: u16, what: &str, log: &Path) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not start on port {port}: {}", fs::read_to_string(log).unwrap_or_default());
}

fn require(bin: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} is not installed: scripts/test installs it (apt-get install nginx-light dnsmasq-base openssl)");
}

/// nginx serving `root` on 127.0.0.1, optionally with TLS.
pub struct Nginx {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(root: &Path, tls: Option<(&Path, &Path)>, extra_location: &str) -> Nginx {
        let bin = require("nginx");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let (listen, tls_conf) = match tls {
            Some((cert, key)) => (
                format!("127.0.0.1:{port} ssl"),
                format!("ssl_certificate {}; ssl_certificate_key {};", cert.display(), key.display()),
            ),
            None => (format!("127.0.0.1:{port}"), String::new()),
        };
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off; sendfile on; tcp_nopush off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  default_type application/octet-stream;
  server {{ listen {listen}; {tls_conf} root {root}; location / {{ {extra_location} }} }}
}}
",
            root = root.display()
        );
        fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_tcp(port, "nginx", &dir.path().join("error.log"));
        Nginx { port, child, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq answering for `lab.test` on 127.0.0.1 (UDP and TCP).
pub struct Dnsmasq {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// `srv`: (priority, weight, port, target); `hosts`: (name, ip).
    pub fn start(srv: &[(u16, u16, u16, &str)], hosts: &[(&str, &str)]) -> Dnsmasq {
        let bin = require("dnsmasq");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--listen-address=127.0.0.1".into(),
            "--bind-interfaces".into(),
            format!("--port={port}"),
            "--user=root".into(),
            format!("--pid-file={}/dnsmasq.pid", dir.path().display()),
            format!("--log-facility={}/dnsmasq.log", dir.path().display()),
        ];
        for (prio, weight, p, target) in srv {
            args.push(format!("--srv-host=_stateless._tcp.lab.test,{target},{p},{prio},{weight}"));
        }
        for (name, ip) in hosts {
            args.push(format!("--host-record={name},{ip}"));
        }
        let child = Command::new(bin).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        wait_tcp(port, "dnsmasq", &dir.path().join("dnsmasq.log"));
        Dnsmasq { port, child, _dir: dir }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `upstream` that misbehaves: cuts the first `cuts`
/// connections after `cut_after` response bytes, or (stall) accepts and
/// never answers.
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub connections: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn cutting(upstream: u16, cut_after: usize, cuts: usize) -> Proxy {
        Self::spawn(Some(upstream), cut_after, cuts, false, None)
    }

    /// Passes the response on at about `bytes_per_second`.
    pub fn throttled(upstream: u16, bytes_per_second: usize) -> Proxy {
        Self::spawn(Some(upstream), 0, 0, false, Some(bytes_per_second))
    }

    /// Like [`Proxy::cutting`], and removes `Range` and `If-Range` from
    /// every request, as a server that does not do ranges.
    pub fn cutting_without_ranges(upstream: u16, cut_after: usize, cuts: usize) -> Proxy {
        Self::spawn(Some(upstream), cut_after, cuts, true, None)
    }

    pub fn stalling() -> Proxy {
        Self::spawn(None, 0, 0, false, None)
    }

    fn spawn(upstream: Option<u16>, cut_after: usize, cuts: usize, strip_ranges: bool, rate: Option<usize>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop2, conns) = (stop.clone(), connections.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let n = conns.fetch_add(1, Ordering::Relaxed);
                let Some(up) = upstream else {
                    held.push(client); // never answered
                    continue;
                };
                let limit = if n < cuts { Some(cut_after) } else { None };
                std::thread::spawn(move || pipe(client, up, limit, strip_ranges, rate));
            }
        });
        Proxy { port, stop, connections }
    }
}

fn pipe(mut client: TcpStream, up: u16, limit: Option<usize>, strip_ranges: bool, rate: Option<usize>) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", up)) else { return };
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        if strip_ranges {
            // One request per connection is enough for the loader's tests:
            // read its head, drop the range lines, pass the rest on.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match c2.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let kept: String = text
                .split_inclusive("\r\n")
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    !l.starts_with("range:") && !l.starts_with("if-range:")
                })
                .collect();
            if s2.write_all(kept.as_bytes()).is_err() {
                return;
            }
        }
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(Shutdown::Write);
    });
    let mut sent = 0usize;
    let mut buf = [0u8; 16 * 1024];
    let started = Instant::now();
    loop {
        if let Some(rate) = rate {
            // Not ahead of `rate`: wait until what was sent is due.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = match limit {
            Some(l) if sent + n >= l => {
                let _ = client.write_all(&buf[..l - sent]);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            _ => n,
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = client.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A self-signed certificate for 127.0.0.1 and its SPKI pin (base64).
/// A private CA and a server certificate for 127.0.0.1 signed by it, as a
/// site would make them. Returns (CA certificate, server certificate chain,
/// server key, base64 SHA-256 of the server's public key for `pin=`).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf, PathBuf, String) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n").unwrap();
    let d = dir.display();
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
    require("openssl");
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let _ = (ca_key, csr);
    let script = format!(
        "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let pin = Command::new("sh").args(["-c", &script]).output().unwrap();
    (ca, cert, key, String::from_utf8(pin.stdout).unwrap().trim().to_owned())
}

/// A data directory laid out as docs/protocol.md says.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub key: Key,
    pub key_file: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        let key_file = dir.path().join("site.key");
        stateless_keys::write_key_file(&key_file, &key, false).unwrap();
        fs::create_dir_all(dir.path().join("www")).unwrap();
        Site { dir, key, key_file }
    }

    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Packs a tree holding `files` and publishes it at `rel` (e.g.
    /// `v1/nodes/node42/bundle`). Returns the bundle bytes.
    pub fn publish(
        &self,
        rel: &str,
        generation: u64,
        scope: Scope,
        files: &[(&str, &[u8])],
        encrypted: bool,
    ) -> Vec<u8> {
        let bytes = self.make(generation, scope, files, encrypted);
        self.put(rel, &bytes);
        bytes
    }

    pub fn put(&self, rel: &str, bytes: &[u8]) {
        let path = self.www().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes).unwrap();
        fs::rename(tmp, path).unwrap();
    }

    pub fn make(&self, generation: u64, scope: Scope, files: &[(&str, &[u8])], encrypted: bool) -> Vec<u8> {
        self.make_with(generation, scope, files, &[], encrypted)
    }

    /// [`Site::make`] with paths of the base image to delete.
    pub fn make_with(
        &self,
        generation: u64,
        scope: Scope,
        files: &[(&str, &[u8])],
        deletions: &[&str],
        encrypted: bool,
    ) -> Vec<u8> {
        self.make_sealed(generation, scope, files, deletions, encrypted.then_some(&self.key))
    }

    /// [`Site::make_with`] sealed for `key` (none: unencrypted).
    pub fn make_sealed(
        &self,
        generation: u64,
        scope: Scope,
        files: &[(&str, &[u8])],
        deletions: &[&str],
        key: Option<&Key>,
    ) -> Vec<u8> {
        let tree = tempfile::tempdir().unwrap();
        for (p, data) in files {
            let path = tree.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        let opts = PackOptions {
            key,
            generation,
            created: 1_760_000_000,
            expires: None,
            scope,
            level: 3,
            threads: 0,
            deletions: deletions
                .iter()
                .map(|d| stateless_bundle::RelPath::parse(d.as_bytes(), 4096).unwrap())
                .collect(),
            limits: Limits::default(),
        };
        let mut out = std::io::Cursor::new(Vec::new());
        stateless_bundle::pack(tree.path(), &mut out, &opts).unwrap();
        out.into_inner()
    }
}

/// A node: a scratch sysroot, run dir and cache dir.
pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        for d in ["sysroot/etc", "run", "cache"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join("sysroot/etc/base"), "from the image\n").unwrap();
        Node { dir }
    }

    pub fn sysroot(&self) -> PathBuf {
        self.dir.path().join("sysroot")
    }

    pub fn fresh_sysroot(&self) {
        let _ = fs::remove_dir_all(self.sysroot());
        fs::create_dir_all(self.sysroot().join("etc")).unwrap();
        fs::write(self.sysroot().join("etc/base"), "from the image\n").unwrap();
    }

    /// Runs the loader; returns (exit code, stderr, status.json).
    pub fn boot(&self, cmdline: &str) -> (i32, String, serde_json::Value) {
        self.boot_with(cmdline, true)
    }

    /// Runs the loader, with `--cache-dir` or (`cache_dir` false) leaving
    /// the cache to `rd.stateless.cache=`.
    pub fn boot_with(&self, cmdline: &str, cache_dir: bool) -> (i32, String, serde_json::Value) {
        self.boot_env(cmdline, cache_dir, &[])
    }

    /// Runs the loader with extra environment variables (for example the
    /// debug build's `STATELESS_LOADER_FAULT`).
    pub fn boot_env(&self, cmdline: &str, cache_dir: bool, env: &[(&str, &str)]) -> (i32, String, serde_json::Value) {
        self.boot_args(cmdline, cache_dir, env, &[])
    }

    /// Runs the loader with extra arguments (`--usb-device PATH`).
    pub fn boot_args(
        &self,
        cmdline: &str,
        cache_dir: bool,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> (i32, String, serde_json::Value) {
        let _ = fs::remove_file(self.dir.path().join("run/status.json"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stateless-loader"));
        cmd.arg("--cmdline")
            .arg(cmdline)
            .arg("--sysroot")
            .arg(self.sysroot())
            .arg("--run-dir")
            .arg(self.dir.path().join("run"));
        if cache_dir {
            cmd.arg("--cache-dir").arg(self.dir.path().join("cache"));
        }
        cmd.args(args).envs(env.iter().copied());
        let out: Output = cmd.env("STATELESS_LOG_STDERR", "1").output().unwrap();
        let status = fs::read(self.dir.path().join("run/status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), status)
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.sysroot().join(rel)).ok()
    }

    /// Staging directories left in the sysroot.
    pub fn staging_dirs(&self) -> Vec<String> {
        fs::read_dir(self.sysroot())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(stateless_loader::staging::PREFIX))
            .collect()
    }

    /// A digest of the whole sysroot tree, to prove it untouched (the root
    /// directory's own mtime included).
    pub fn tree_digest(&self) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg("find . -printf '%p %m %s %T@\\n' | sort; find . -type f -exec sha256sum {} + | sort")
            .current_dir(self.sysroot())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A vfat stick image with `keys` at /stateless/keys, made by the standard
/// tools (`statelessctl key usb --image` does the same; ctl/tests/keys.rs
/// checks that the loader's source reads its images).
pub fn stick(dir: &Path, label: &str, keys: &[&Key]) -> PathBuf {
    let img = dir.join(format!("{label}.img"));
    fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
    let mut script = format!(
        "set -e; mkfs.vfat -n {label} {0} >/dev/null; mmd -i {0} ::/stateless ::/stateless/keys\n",
        img.display()
    );
    for (i, k) in keys.iter().enumerate() {
        let f = dir.join(format!("k{i}"));
        stateless_keys::write_key_file(&f, k, true).unwrap();
        script.push_str(&format!("mcopy -i {} {} ::/stateless/keys/{}.key\n", img.display(), f.display(), k.id()));
    }
    let out = Command::new("bash").args(["-c", &script]).env("MTOOLS_SKIP_CHECK", "1").output().unwrap();
    assert!(out.status.success(), "dosfstools/mtools: {}", String::from_utf8_lossy(&out.stderr));
    img
}
