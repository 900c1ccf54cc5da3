//! A software TPM (`swtpm`) on 127.0.0.1 for tests, killed when dropped.
//! Shared by the test crates that talk to a TPM (`#[path]`-included).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Swtpm {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Swtpm {
    pub fn start() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        // tpm2-tools' swtpm TCTI expects the control port right after the
        // data port: find a free pair.
        let (port, ctrl) = loop {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = l.local_addr().unwrap().port();
            if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break (p, p + 1);
            }
        };
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm is not installed: scripts/test installs it (apt-get install swtpm swtpm-tools)");
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "swtpm did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Swtpm { port, child, _dir: dir }
    }

    /// The `rd.stateless.tpm=` / `--tpm` selector for this TPM.
    pub fn selector(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
