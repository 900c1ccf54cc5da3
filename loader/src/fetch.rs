//! HTTP(S) transport: one GET with timeouts, stall detection and resume.
//!
//! Names are resolved by [`crate::dns`] (no NSS in the initramfs). Trust for
//! HTTPS comes from `rd.stateless.ca=` (only that CA), from a pin of the
//! server's public key (`rd.stateless.pin=sha256:…`, which alone is enough
//! for a self-signed server), or both. With neither, the caller may name the
//! initramfs's CA bundle as the CA file; without any trust at all, https is
//! refused with a message saying what to configure (no root store is
//! compiled in). A transfer that breaks after some bytes arrived
//! is resumed with `Range` and `If-Range`, so a large bundle on a flaky link
//! is not downloaded from the start again.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::dns::Resolver;

/// Longest wait for a TCP connection (and TLS handshake) to one server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A transfer with no byte for this long is stalled and abandoned.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a broken transfer is resumed before giving up on a server.
pub const MAX_RESUMES: u32 = 5;

/// How to reach servers.
#[derive(Debug, Clone, Default)]
pub struct TransportConfig {
    /// PEM file of the CA that signs the servers' certificates.
    pub ca: Option<std::path::PathBuf>,
    /// Accepted SHA-256 hashes of the server's SubjectPublicKeyInfo.
    pub pins: Vec<[u8; 32]>,
    /// Name servers for host names in URLs.
    pub dns: Vec<SocketAddr>,
    /// Connect timeout (default [`CONNECT_TIMEOUT`]).
    pub connect_timeout: Option<Duration>,
    /// Stall timeout (default [`STALL_TIMEOUT`]).
    pub stall_timeout: Option<Duration>,
}

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The trust configuration could not be loaded.
    #[error("loading CA file {path}")]
    Ca {
        /// The CA file.
        path: String,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The server could not be reached or the transfer broke.
    #[error("{0}")]
    Transport(String),
    /// The server answered with an unexpected HTTP status.
    #[error("HTTP {0}")]
    Status(u16),
    /// The body is larger than the limit.
    #[error("response larger than {0} bytes (limit)")]
    TooLarge(u64),
    /// The body was refused by the caller's check (bad header, wrong scope, …).
    #[error("{0}")]
    Refused(String),
    /// Writing the downloaded bytes failed.
    #[error("writing download")]
    Io(#[source] io::Error),
    /// The budget ran out.
    #[error("network time budget exhausted")]
    Budget,
}

impl FetchError {
    /// Whether trying the same server again later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Transport(_) | FetchError::Budget => true,
            FetchError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            _ => false,
        }
    }
}

/// What a GET produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 (or 206 after resumes): the body is in the file.
    Fetched {
        /// Bytes written.
        bytes: u64,
        /// The server's entity tag, if any.
        etag: Option<String>,
        /// How many times the transfer was resumed.
        resumes: u32,
    },
    /// 304: what we have is current.
    NotModified,
    /// 404: nothing at this path.
    NotFound,
}

/// One download for [`Transport::get`].
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The URL.
    pub url: &'a str,
    /// The entity tag of what we already have, sent as `If-None-Match`.
    pub if_none_match: Option<&'a str>,
    /// The largest body accepted.
    pub limit: u64,
    /// When the whole transfer, resumes included, must be done.
    pub deadline: Instant,
    /// How many leading bytes `check` wants to see.
    pub check_len: usize,
}

/// Looks at the first bytes of a body and the announced total length, and
/// refuses it early with a reason.
pub type HeadCheck<'a> = dyn FnMut(&[u8], Option<u64>) -> Result<(), String> + 'a;

/// An HTTP client configured for the loader.
#[derive(Debug, Clone)]
pub struct Transport {
    agent: ureq::Agent,
    /// Whether any trust (CA or pin) is configured for https.
    trust: bool,
}

impl Transport {
    /// Builds a client from `cfg`.
    pub fn new(cfg: &TransportConfig) -> Result<Transport, FetchError> {
        let tls = tls_config(cfg)?;
        let resolver = Resolver::new(cfg.dns.clone());
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(cfg.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
            .timeout_read(cfg.stall_timeout.unwrap_or(STALL_TIMEOUT))
            .timeout_write(cfg.stall_timeout.unwrap_or(STALL_TIMEOUT))
            .tls_config(Arc::new(tls))
            .redirects(3)
            .user_agent(concat!("stateless-loader/", env!("CARGO_PKG_VERSION")))
            .resolver(move |netloc: &str| -> io::Result<Vec<SocketAddr>> {
                let (host, port) = split_netloc(netloc)?;
                let deadline = Instant::now() + Duration::from_secs(5);
                let ips = resolver.lookup_ip(host, deadline).map_err(|e| io::Error::other(e.to_string()))?;
                Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
            })
            .build();
        Ok(Transport { agent, trust: cfg.ca.is_some() || !cfg.pins.is_empty() })
    }

    /// GETs `req.url` into `out` (truncated first). `check` sees the first
    /// bytes as they arrive (at least `req.check_len` of them, or the whole
    /// body if shorter) with the announced total length, and may refuse the
    /// body before the rest is downloaded.
    pub fn get(&self, req: &Request<'_>, out: &mut File, check: &mut HeadCheck<'_>) -> Result<Outcome, FetchError> {
        let Request { url, if_none_match, limit, deadline, check_len } = *req;
        if !self.trust && url.starts_with("https://") {
            return Err(FetchError::Refused(
                "no trust for https: set rd.stateless.ca= or rd.stateless.pin= (or use an encrypted bundle over http)"
                    .into(),
            ));
        }
        out.set_len(0).map_err(FetchError::Io)?;
        out.seek(SeekFrom::Start(0)).map_err(FetchError::Io)?;
        let mut got: u64 = 0;
        let mut etag: Option<String> = None;
        let mut resumes = 0;
        let mut head: Vec<u8> = Vec::with_capacity(check_len);
        let mut checked = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(FetchError::Budget);
            }
            let mut req = self.agent.get(url).timeout(remaining);
            if got == 0 {
                if let Some(tag) = if_none_match {
                    req = req.set("If-None-Match", &format!("\"{tag}\""));
                }
            } else {
                req = req.set("Range", &format!("bytes={got}-"));
                if let Some(tag) = &etag {
                    req = req.set("If-Range", tag);
                }
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) if got == 0 => return Ok(Outcome::NotFound),
                Err(ureq::Error::Status(code, _)) => return Err(FetchError::Status(code)),
                Err(ureq::Error::Transport(t)) => {
                    if got > 0 && resumes < MAX_RESUMES {
                        resumes += 1;
                        continue;
                    }
                    return Err(FetchError::Transport(describe_transport(&t)));
                }
            };
            let status = resp.status();
            let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.trim().parse().ok());
            match status {
                304 if got == 0 => return Ok(Outcome::NotModified),
                200 => {
                    // A fresh full body: start over (also when a resume
                    // request was answered with the whole file).
                    out.set_len(0).map_err(FetchError::Io)?;
                    out.seek(SeekFrom::Start(0)).map_err(FetchError::Io)?;
                    got = 0;
                    head.clear();
                    checked = false;
                    etag = resp.header("ETag").map(str::to_owned);
                }
                206 if got > 0 => {
                    let from = resp.header("Content-Range").and_then(content_range_start);
                    if from != Some(got) {
                        return Err(FetchError::Transport(format!(
                            "server resumed at the wrong offset ({from:?}, expected {got})"
                        )));
                    }
                }
                other => return Err(FetchError::Status(other)),
            }
            let total = length.map(|l| l + got);
            if let Some(t) = total {
                if t > limit {
                    return Err(FetchError::TooLarge(limit));
                }
            }
            let mut body = resp.into_reader();
            let mut buf = vec![0u8; 64 * 1024];
            let broke = loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Some(e),
                };
                let chunk = buf.get(..n).unwrap_or_default();
                got += n as u64;
                if got > limit {
                    return Err(FetchError::TooLarge(limit));
                }
                if !checked {
                    let want = check_len.saturating_sub(head.len()).min(chunk.len());
                    head.extend_from_slice(chunk.get(..want).unwrap_or_default());
                    if head.len() >= check_len {
                        check(&head, total).map_err(FetchError::Refused)?;
                        checked = true;
                    }
                }
                out.write_all(chunk).map_err(FetchError::Io)?;
            };
            match broke {
                None if total.is_none_or(|t| t == got) => {
                    if !checked {
                        check(&head, total).map_err(FetchError::Refused)?;
                    }
                    return Ok(Outcome::Fetched { bytes: got, etag, resumes });
                }
                None => log::warn!("{url}: transfer ended at {got} of {} bytes", total.unwrap_or(0)),
                Some(e) => log::warn!("{url}: transfer broke at {got} bytes: {e}"),
            }
            if resumes >= MAX_RESUMES {
                return Err(FetchError::Transport(format!("transfer kept breaking ({resumes} resumes)")));
            }
            resumes += 1;
        }
    }
}

fn content_range_start(v: &str) -> Option<u64> {
    // "bytes 100-199/200"
    v.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

fn split_netloc(netloc: &str) -> io::Result<(&str, u16)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad host:port {netloc}"));
    let (host, port) = netloc.rsplit_once(':').ok_or_else(bad)?;
    Ok((host, port.parse().map_err(|_| bad())?))
}

fn describe_transport(t: &ureq::Transport) -> String {
    // ureq's message includes the URL, which the caller already names.
    let mut msg = t.message().map(str::to_owned).unwrap_or_else(|| t.kind().to_string());
    let mut src = std::error::Error::source(t);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

fn tls_config(cfg: &TransportConfig) -> Result<rustls::ClientConfig, FetchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    let roots = match &cfg.ca {
        Some(path) => load_ca(path)?,
        None => RootCertStore::empty(),
    };
    let config = match (cfg.pins.is_empty(), &cfg.ca) {
        (false, ca) => {
            let inner = match ca {
                Some(_) => Some(
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| FetchError::Transport(e.to_string()))?,
                ),
                None => None,
            };
            let verifier = PinVerifier { pins: cfg.pins.clone(), inner, provider };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        (true, _) => builder.with_root_certificates(roots).with_no_client_auth(),
    };
    Ok(config)
}

fn load_ca(path: &Path) -> Result<RootCertStore, FetchError> {
    use rustls::pki_types::pem::PemObject;
    let ca_err = |err| FetchError::Ca { path: path.display().to_string(), err };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca_err(io::Error::other(e.to_string())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ca_err(io::Error::other(e.to_string())))?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ca_err(io::Error::new(io::ErrorKind::InvalidData, "no usable certificate in the file")));
    }
    Ok(store)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, as pinned.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(ee.subject_public_key_info().as_ref()));
    Some(out)
}

/// Accepts a server whose key matches the pin (and, with a CA, whose chain
/// also verifies). Handshake signatures are always checked, so presenting a
/// pinned certificate without its private key fails.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<[u8; 32]>,
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        match spki_sha256(end_entity) {
            Some(h) if self.pins.contains(&h) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General("server key does not match rd.stateless.pin".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netloc_and_ranges() {
        assert_eq!(split_netloc("10.0.2.2:8080").unwrap(), ("10.0.2.2", 8080));
        assert_eq!(split_netloc("[::1]:443").unwrap(), ("[::1]", 443));
        assert!(split_netloc("nohost").is_err());
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
    }

    #[test]
    fn transient_errors() {
        assert!(FetchError::Status(503).is_transient());
        assert!(!FetchError::Status(403).is_transient());
        assert!(FetchError::Transport("refused".into()).is_transient());
        assert!(!FetchError::Refused("wrong scope".into()).is_transient());
    }
}
