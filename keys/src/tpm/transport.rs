//! Getting command bytes to a TPM and its response back: the kernel's
//! resource-managed character device, or swtpm's TCP server for tests.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::wire::{HEADER_LEN, MAX_MESSAGE};

/// The default TPM: the kernel's resource manager, so that the loader's
/// transient objects and sessions never collide with another user's and are
/// flushed by the kernel if the process dies.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";
/// How long to wait for a TCP TPM to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take on a TCP TPM (key creation on a slow TPM
/// takes seconds; swtpm milliseconds).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Which TPM to talk to, as written on the command line:
/// `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321` (the names of
/// tpm2-tools' TCTIs, so the same string works with `TPM2TOOLS_TCTI`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmSelector {
    /// A character device (`/dev/tpmrm0`).
    Device(PathBuf),
    /// swtpm's TCP server (raw TPM commands on the data port).
    Swtpm {
        /// Host name or address.
        host: String,
        /// Data port.
        port: u16,
    },
}

impl Default for TpmSelector {
    fn default() -> TpmSelector {
        TpmSelector::Device(PathBuf::from(DEFAULT_DEVICE))
    }
}

impl fmt::Display for TpmSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmSelector::Device(p) => write!(f, "device:{}", p.display()),
            TpmSelector::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
        }
    }
}

impl FromStr for TpmSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<TpmSelector, String> {
        if let Some(path) = s.strip_prefix("device:") {
            if !path.starts_with('/') {
                return Err(format!("{s}: the device must be an absolute path"));
            }
            return Ok(TpmSelector::Device(PathBuf::from(path)));
        }
        if let Some(conf) = s.strip_prefix("swtpm:").or(if s == "swtpm" { Some("") } else { None }) {
            // tpm2-tools' default port; the address rather than its
            // `localhost`, since the loader is a static binary without a
            // name service in the initramfs.
            let (mut host, mut port) = ("127.0.0.1".to_owned(), 2321u16);
            for kv in conf.split(',').filter(|kv| !kv.is_empty()) {
                match kv.split_once('=') {
                    Some(("host", h)) if !h.is_empty() => host = h.to_owned(),
                    Some(("port", p)) => {
                        port = p.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{s}: bad port {p:?}"))?;
                    }
                    _ => return Err(format!("{s}: want swtpm:host=HOST,port=PORT")),
                }
            }
            return Ok(TpmSelector::Swtpm { host, port });
        }
        Err(format!("{s}: want device:/dev/tpmrm0 or swtpm:host=HOST,port=PORT"))
    }
}

/// An open connection to a TPM.
#[derive(Debug)]
pub enum Transport {
    /// A character device: one `write` per command, one `read` per response.
    Device(File),
    /// A TCP stream speaking raw TPM commands.
    Tcp(TcpStream),
}

impl Transport {
    /// Opens the TPM `sel` names.
    pub fn open(sel: &TpmSelector) -> io::Result<Transport> {
        match sel {
            TpmSelector::Device(p) => Ok(Transport::Device(OpenOptions::new().read(true).write(true).open(p)?)),
            TpmSelector::Swtpm { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
                // An address needs no resolver (none in the initramfs); a
                // name is resolved by the C library, for workstations.
                let addrs: Vec<std::net::SocketAddr> = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => vec![std::net::SocketAddr::new(ip, *port)],
                    Err(_) => (host.as_str(), *port).to_socket_addrs()?.collect(),
                };
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            s.set_read_timeout(Some(IO_TIMEOUT))?;
                            s.set_write_timeout(Some(IO_TIMEOUT))?;
                            s.set_nodelay(true)?;
                            return Ok(Transport::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    /// Sends one command and returns the whole response.
    pub fn transact(&mut self, cmd: &[u8]) -> io::Result<Vec<u8>> {
        self.transact_inner(cmd).map_err(|e| match e.kind() {
            // A socket timeout reads as "resource temporarily unavailable".
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} s (is another client connected to swtpm?)", IO_TIMEOUT.as_secs()),
            ),
            _ => e,
        })
    }

    fn transact_inner(&mut self, cmd: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Transport::Device(f) => {
                // The driver takes a command only in a single write().
                let n = f.write(cmd)?;
                if n != cmd.len() {
                    return Err(io::Error::other(format!("TPM device took {n} of {} bytes", cmd.len())));
                }
                let mut buf = vec![0u8; MAX_MESSAGE];
                let n = f.read(&mut buf)?;
                buf.truncate(n);
                Ok(buf)
            }
            Transport::Tcp(s) => {
                s.write_all(cmd)?;
                let mut head = [0u8; HEADER_LEN];
                s.read_exact(&mut head)?;
                let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
                if !(HEADER_LEN..=MAX_MESSAGE).contains(&size) {
                    return Err(io::Error::other(format!("TPM response of {size} bytes")));
                }
                let mut buf = head.to_vec();
                buf.resize(size, 0);
                s.read_exact(buf.get_mut(HEADER_LEN..).unwrap_or_default())?;
                Ok(buf)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let ok = [
            ("device:/dev/tpmrm0", TpmSelector::Device("/dev/tpmrm0".into())),
            ("swtpm:host=127.0.0.1,port=2321", TpmSelector::Swtpm { host: "127.0.0.1".into(), port: 2321 }),
            ("swtpm:port=4000", TpmSelector::Swtpm { host: "127.0.0.1".into(), port: 4000 }),
            ("swtpm", TpmSelector::Swtpm { host: "127.0.0.1".into(), port: 2321 }),
        ];
        for (s, want) in ok.clone() {
            assert_eq!(s.parse::<TpmSelector>().as_ref(), Ok(&want), "{s}");
        }
        assert_eq!(ok[1].1.to_string(), ok[1].0);
        for bad in ["", "device:tpm0", "swtpm:port=0", "swtpm:port=x", "swtpm:hots=a", "mssim:port=1", "tabrmd"] {
            assert!(bad.parse::<TpmSelector>().is_err(), "{bad}");
        }
    }
}
