//! HTTPS for ureq over a rustls configuration the caller builds, for the
//! loader and the node agent.
//!
//! ureq's own `tls` feature does the same, and also links the Mozilla root
//! store (webpki-roots, ~54 KB of certificates that barely compress) for the
//! agents that set no configuration. Ours always set one (the site's CA, or
//! a pinned key), so the store was dead weight in the initramfs
//! (docs/performance.md, "Size"). [`Connector`] is that adapter without it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use ureq::{ReadWrite, TlsConnector};

/// A [`TlsConnector`] for `ureq::AgentBuilder::tls_connector`.
#[derive(Debug, Clone)]
pub struct Connector(Arc<ClientConfig>);

impl Connector {
    /// Connects with `config` (its roots or verifier decide whom to trust).
    pub fn new(config: Arc<ClientConfig>) -> Connector {
        Connector(config)
    }
}

/// The TLS handshake failed; the source says how (a rustls error inside an
/// `io::Error`: unknown issuer, pin mismatch, alert, reset).
#[derive(Debug)]
struct Handshake(io::Error);

impl fmt::Display for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TLS handshake failed")
    }
}

impl std::error::Error for Handshake {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The server name rustls checks the certificate against: `[::1]` is the
/// IP address `::1`.
fn server_name(host: &str) -> Result<ServerName<'static>, io::Error> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(bare)
        .map(|n| n.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?} is not a TLS server name: {e}")))
}

impl TlsConnector for Connector {
    fn connect(&self, host: &str, mut io: Box<dyn ReadWrite>) -> Result<Box<dyn ReadWrite>, ureq::Error> {
        let name = server_name(host)?;
        let mut conn = ClientConnection::new(self.0.clone(), name).map_err(io::Error::other)?;
        conn.complete_io(&mut io).map_err(|e| io::Error::other(Handshake(e)))?;
        Ok(Box::new(TlsStream(StreamOwned::new(conn, io))))
    }
}

struct TlsStream(StreamOwned<ClientConnection, Box<dyn ReadWrite>>);

impl ReadWrite for TlsStream {
    fn socket(&self) -> Option<&TcpStream> {
        self.0.get_ref().socket()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsStream").finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert_eq!(server_name("cfg.example").unwrap(), ServerName::try_from("cfg.example").unwrap());
        assert_eq!(server_name("[::1]").unwrap(), ServerName::try_from("::1").unwrap());
        assert_eq!(server_name("127.0.0.1").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        let err = server_name("bad name").unwrap_err().to_string();
        assert!(err.starts_with("\"bad name\" is not a TLS server name"), "{err}");
    }

    #[test]
    fn a_handshake_error_keeps_its_cause() {
        let cause = io::Error::new(io::ErrorKind::InvalidData, "invalid peer certificate: UnknownIssuer");
        let err = io::Error::other(Handshake(cause));
        let inner = err.get_ref().unwrap();
        assert_eq!(inner.to_string(), "TLS handshake failed");
        assert_eq!(std::error::Error::source(inner).unwrap().to_string(), "invalid peer certificate: UnknownIssuer");
    }
}
