//! A software TPM (`swtpm`) on 127.0.0.1 for tests, killed when dropped.
//! Shared by the test crates that talk to a TPM (`#[path]`-included).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Swtpm {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Swtpm {
    pub fn start() -> Swtpm {
        Self::start_with(|_| {})
    }

    /// Starts a TPM whose state directory `prepare` fills first (e.g. with
    /// `swtpm_setup --create-ek-cert`).
    pub fn start_with(prepare: impl Fn(&std::path::Path)) -> Swtpm {
        // Tests of one binary start TPMs on parallel threads. Port picking
        // binds probe listeners, so one thread's probe could sit on the port
        // another thread's swtpm is about to bind: that swtpm exits with
        // EADDRINUSE while its readiness check connects to the probe. One
        // start at a time, and a start that lost its port anyway (to another
        // process) is retried on a new pair.
        static STARTING: Mutex<()> = Mutex::new(());
        let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..5 {
            if let Some(tpm) = Self::try_start(&prepare) {
                return tpm;
            }
        }
        panic!("swtpm did not start on 127.0.0.1 after 5 tries");
    }

    fn try_start(prepare: &impl Fn(&std::path::Path)) -> Option<Swtpm> {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        // tpm2-tools' swtpm TCTI expects the control port right after the
        // data port: find a free pair.
        let (port, ctrl) = loop {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = l.local_addr().unwrap().port();
            if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break (p, p + 1);
            }
        };
        let mut child = Command::new("swtpm")
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
        loop {
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            let up = [port, ctrl].iter().all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                break;
            }
            assert!(Instant::now() < until, "swtpm did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A swtpm that failed to bind may still be on its way out while
        // someone else answers on its port: make sure it is still running.
        std::thread::sleep(Duration::from_millis(50));
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        Some(Swtpm { port, child, _dir: dir })
    }

    /// A reboot as the TPM sees it: power cycle (swtpm's `CMD_INIT` on the
    /// control port) and `TPM2_Startup(CLEAR)`. NV stays; PCRs, sessions
    /// and `STCLEAR` locks are reset.
    pub fn reboot(&self) {
        use std::io::{Read, Write};
        let mut ctrl = TcpStream::connect(("127.0.0.1", self.port + 1)).unwrap();
        ctrl.write_all(&[0, 0, 0, 2, 0, 0, 0, 0]).unwrap();
        let mut rc = [0u8; 4];
        ctrl.read_exact(&mut rc).unwrap();
        assert_eq!(rc, [0; 4], "swtpm CMD_INIT");
        let mut data = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        data.write_all(&[0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0]).unwrap();
        let mut resp = [0u8; 10];
        data.read_exact(&mut resp).unwrap();
        assert_eq!(&resp[6..10], &[0, 0, 0, 0], "TPM2_Startup(CLEAR)");
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
