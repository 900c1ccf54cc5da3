//! HTTP(S) transport: one GET with timeouts, stall detection and resume.
//!
//! Names are resolved by [`crate::dns`] (no NSS in the initramfs). Trust for
//! HTTPS comes from `rd.stateless.ca=` (only that CA), from a pin of the
//! server's public key (`rd.stateless.pin=sha256:…`, which alone is enough
//! for a self-signed server), or both. With neither, the caller may name the
//! initramfs's CA bundle as the CA file; without any trust at all, https is
//! refused with a message saying what to configure (no root store is
//! compiled in).
//!
//! URLs are parsed once, with the `url` crate, and every decision about the
//! transport (plain HTTP or not, trust needed or not) is taken on the parsed
//! scheme, never on the text (`HTTP://` is plain HTTP too).
//!
//! Redirects (301, 302, 303, 307, 308; at most [`MAX_REDIRECTS`]) are
//! followed here, not by the HTTP library, so that each hop is checked: the
//! transport never gets weaker than the URL the site configured (https to
//! http is refused; http to https is an upgrade and allowed), and a hop to
//! another host is followed with the same trust (the same CA or pin checks
//! its certificate, the same key authenticates the bundle), because the
//! server that sent the redirect could have served any bytes itself. The
//! URL the body finally came from is [`Body::url`]; the caller records it.
//!
//! [`Transport::open`] returns the response [`Body`] as a reader, so that the
//! caller verifies and extracts the bundle while it arrives. The body copies
//! every byte to an optional file as it goes (the cache keeps the bundle
//! exactly as received). A transfer that breaks after some bytes arrived is
//! resumed inside [`Body::read`] with `Range` and `If-Range`, so the reader
//! sees one unbroken stream and a large bundle on a flaky link is not
//! downloaded from the start again. A server that answers a resume with the
//! whole body cannot be spliced into a stream already consumed: the read
//! fails with [`FetchError::Restart`] and the caller starts over.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use url::Url;

use crate::dns::Resolver;

/// Longest wait for a TCP connection (and TLS handshake) to one server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A transfer with no byte for this long is stalled and abandoned.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a broken transfer is resumed before giving up on a server.
pub const MAX_RESUMES: u32 = 5;
/// How many redirects one download follows.
pub const MAX_REDIRECTS: u32 = 3;
/// Longest wait for a host name lookup when no request deadline is known.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The URL is not an http or https URL with a host.
    #[error("{url:?} is not an http:// or https:// URL with a host")]
    BadUrl {
        /// The URL as given.
        url: String,
    },
    /// The server answered with an unexpected HTTP status.
    #[error("HTTP {0}")]
    Status(u16),
    /// The body is larger than the limit.
    #[error("response larger than {0} bytes (limit)")]
    TooLarge(u64),
    /// An https URL while no CA or pin is configured (no root store is
    /// compiled in).
    #[error("no trust for https: set rd.stateless.ca= or rd.stateless.pin= (or use an encrypted bundle over http)")]
    NoTrust,
    /// A redirect was not followed ([`redirect_target`]).
    #[error("redirect from {from} to {location:?} refused: {why}")]
    Redirect {
        /// The URL that answered with the redirect.
        from: String,
        /// Its `Location` header, as sent.
        location: String,
        /// Why it is not followed.
        why: RedirectRefusal,
    },
    /// The server kept redirecting.
    #[error("more than {MAX_REDIRECTS} redirects from {url}")]
    TooManyRedirects {
        /// The URL first asked for.
        url: String,
    },
    /// Writing the downloaded bytes failed.
    #[error("writing download")]
    Io(#[source] io::Error),
    /// The budget ran out.
    #[error("network time budget exhausted")]
    Budget,
    /// A resume was answered with the whole body, not the rest (the server
    /// ignores `Range`, or the bundle changed): the transfer must start over.
    #[error("the server sent the whole bundle again instead of the rest")]
    Restart,
}

/// Why a redirect is not followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectRefusal {
    /// `Location` is not a URL, even relative to the one redirected.
    #[error("not a URL ({0})")]
    NotAUrl(#[source] url::ParseError),
    /// From https to plain http: the transport would get weaker.
    #[error("it would drop https for plain http")]
    Downgrade,
    /// Neither http nor https.
    #[error("scheme {0} is not http or https")]
    Scheme(String),
    /// The target names no host.
    #[error("no host")]
    NoHost,
    /// The target carries a user name or password.
    #[error("it carries credentials")]
    Credentials,
}

impl FetchError {
    /// A verdict on the server rather than on the transfer: its answer is
    /// refused as it is (a body over the limit, a redirect the loader does
    /// not follow, https without trust), so asking it again is no use.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FetchError::TooLarge(_)
                | FetchError::NoTrust
                | FetchError::Redirect { .. }
                | FetchError::TooManyRedirects { .. }
        )
    }

    /// Whether trying the same server again later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Transport(_) | FetchError::Budget | FetchError::Restart => true,
            FetchError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            _ => false,
        }
    }
}

/// What [`Transport::open`] found.
#[derive(Debug)]
pub enum Opened {
    /// 200: the body, to be read.
    Body(Box<Body>),
    /// 304: what we have is current.
    NotModified,
    /// 404: nothing at this path.
    NotFound,
}

/// One download for [`Transport::open`].
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
}

/// An HTTP client configured for the loader.
#[derive(Debug, Clone)]
pub struct Transport {
    agent: ureq::Agent,
    /// Whether any trust (CA or pin) is configured for https.
    trust: bool,
    /// The deadline of the request under way: host name lookups, which the
    /// HTTP library makes through a callback that cannot be given one, end
    /// by it too.
    deadline: SharedDeadline,
}

/// The current request's deadline, shared with the resolver callback.
#[derive(Debug, Clone, Default)]
struct SharedDeadline(Arc<Mutex<Option<Instant>>>);

impl SharedDeadline {
    fn set(&self, deadline: Instant) {
        // A poisoned lock only means a lookup thread panicked; the value is
        // still a plain Instant.
        let mut guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Some(deadline);
    }

    fn get(&self) -> Instant {
        let guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.unwrap_or_else(|| Instant::now() + LOOKUP_TIMEOUT)
    }
}

/// Parses a server URL: `http` or `https` (any case), with a host.
pub fn parse_url(url: &str) -> Result<Url, FetchError> {
    let bad = || FetchError::BadUrl { url: url.to_owned() };
    let parsed = Url::parse(url).map_err(|_| bad())?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => Ok(parsed),
        _ => Err(bad()),
    }
}

/// Whether `url` is fetched without TLS. Decided on the parsed scheme; a
/// URL that does not parse counts as plain (it is refused later anyway).
pub fn is_plain_http(url: &str) -> bool {
    Url::parse(url).map_or(true, |u| u.scheme() != "https")
}

/// Where a redirect from `from` to `location` leads, or why it is not
/// followed: the transport may stay or get stronger (http to https), never
/// weaker; only http and https; no credentials in the URL.
pub fn redirect_target(from: &Url, location: &str) -> Result<Url, FetchError> {
    let refuse = |why| FetchError::Redirect { from: from.to_string(), location: location.to_owned(), why };
    let to = from.join(location.trim()).map_err(|e| refuse(RedirectRefusal::NotAUrl(e)))?;
    match (from.scheme(), to.scheme()) {
        ("https", "https") | ("http", "http" | "https") => {}
        ("https", "http") => return Err(refuse(RedirectRefusal::Downgrade)),
        (_, other) => return Err(refuse(RedirectRefusal::Scheme(other.to_owned()))),
    }
    if to.host().is_none() {
        return Err(refuse(RedirectRefusal::NoHost));
    }
    if !to.username().is_empty() || to.password().is_some() {
        return Err(refuse(RedirectRefusal::Credentials));
    }
    Ok(to)
}

impl Transport {
    /// Builds a client from `cfg`.
    pub fn new(cfg: &TransportConfig) -> Result<Transport, FetchError> {
        let tls = tls_config(cfg)?;
        let resolver = Resolver::new(cfg.dns.clone());
        let deadline = SharedDeadline::default();
        let lookup_deadline = deadline.clone();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(cfg.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
            .timeout_read(cfg.stall_timeout.unwrap_or(STALL_TIMEOUT))
            .timeout_write(cfg.stall_timeout.unwrap_or(STALL_TIMEOUT))
            .tls_connector(Arc::new(stateless_tls::Connector::new(Arc::new(tls))))
            // Followed in `open`, hop by hop, under the loader's policy.
            .redirects(0)
            .user_agent(concat!("stateless-loader/", env!("CARGO_PKG_VERSION")))
            .resolver(move |netloc: &str| -> io::Result<Vec<SocketAddr>> {
                let (host, port) = split_netloc(netloc)?;
                let ips =
                    resolver.lookup_ip(host, lookup_deadline.get()).map_err(|e| io::Error::other(e.to_string()))?;
                Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
            })
            .build();
        Ok(Transport { agent, trust: cfg.ca.is_some() || !cfg.pins.is_empty(), deadline })
    }

    /// GETs `req.url`, following redirects as the module documentation
    /// says. On a 200, returns the body to read, which copies every byte to
    /// `tee` (truncated first) as it is read.
    pub fn open(&self, req: &Request<'_>, tee: Option<File>) -> Result<Opened, FetchError> {
        let Request { url, if_none_match, limit, deadline } = *req;
        let mut url = parse_url(url)?;
        let mut hops = 0;
        let resp = loop {
            if !self.trust && url.scheme() == "https" {
                return Err(FetchError::NoTrust);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(FetchError::Budget);
            }
            self.deadline.set(deadline);
            let mut get = self.agent.request_url("GET", &url).timeout(remaining);
            if let Some(tag) = if_none_match {
                get = get.set("If-None-Match", &format!("\"{tag}\""));
            }
            let resp = match get.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => return Ok(Opened::NotFound),
                Err(ureq::Error::Status(code, _)) => return Err(FetchError::Status(code)),
                Err(ureq::Error::Transport(t)) => return Err(FetchError::Transport(describe_transport(&t))),
            };
            if !matches!(resp.status(), 301 | 302 | 303 | 307 | 308) {
                break resp;
            }
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(FetchError::TooManyRedirects { url: req.url.to_owned() });
            }
            let Some(location) = resp.header("Location") else {
                return Err(FetchError::Status(resp.status()));
            };
            let next = redirect_target(&url, location)?;
            log::info!("{url}: {} redirect to {next}", resp.status());
            url = next;
        };
        match resp.status() {
            304 => return Ok(Opened::NotModified),
            200 => {}
            other => return Err(FetchError::Status(other)),
        }
        let total = content_length(&resp);
        if total.is_some_and(|t| t > limit) {
            return Err(FetchError::TooLarge(limit));
        }
        let tee = match tee {
            Some(mut f) => {
                f.set_len(0).map_err(FetchError::Io)?;
                f.seek(SeekFrom::Start(0)).map_err(FetchError::Io)?;
                Some(f)
            }
            None => None,
        };
        Ok(Opened::Body(Box::new(Body {
            agent: self.agent.clone(),
            lookup_deadline: self.deadline.clone(),
            url,
            limit,
            deadline,
            etag: resp.header("ETag").map(str::to_owned),
            reader: Some(resp.into_reader()),
            total,
            got: 0,
            resumes: 0,
            tee,
            failure: None,
        })))
    }
}

impl Transport {
    /// POSTs a small `body` to `url` with `headers`, waiting at most until
    /// `deadline`; the status of any HTTP answer (redirects are not
    /// followed: a report is not worth a second hop). An error means no
    /// server answered.
    pub fn post(&self, url: &Url, headers: &[(&str, &str)], body: &[u8], deadline: Instant) -> Result<u16, FetchError> {
        if !self.trust && url.scheme() == "https" {
            return Err(FetchError::NoTrust);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(FetchError::Budget);
        }
        self.deadline.set(deadline);
        let mut req = self.agent.request_url("POST", url).timeout(remaining);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        match req.send_bytes(body) {
            Ok(r) => Ok(r.status()),
            Err(ureq::Error::Status(code, _)) => Ok(code),
            Err(ureq::Error::Transport(t)) => Err(FetchError::Transport(describe_transport(&t))),
        }
    }
}

fn content_length(resp: &ureq::Response) -> Option<u64> {
    resp.header("Content-Length").and_then(|v| v.trim().parse().ok())
}

/// A response body, read as one stream across resumes (see the module
/// documentation). Limits: at most the request's `limit` bytes, each read
/// waits at most the stall timeout for a byte, and the whole transfer ends
/// at the request's deadline. The first error is kept ([`Body::failure`])
/// and every later read returns it again.
pub struct Body {
    agent: ureq::Agent,
    lookup_deadline: SharedDeadline,
    /// The URL the body comes from, after redirects.
    url: Url,
    limit: u64,
    deadline: Instant,
    etag: Option<String>,
    /// The current response's body; `None` after it broke.
    reader: Option<Box<dyn Read + Send + Sync + 'static>>,
    /// The whole body's length, when the server announced it.
    total: Option<u64>,
    got: u64,
    resumes: u32,
    tee: Option<File>,
    failure: Option<FetchError>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("url", &self.url.as_str())
            .field("total", &self.total)
            .field("got", &self.got)
            .field("resumes", &self.resumes)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl Body {
    /// The URL the body comes from, after redirects.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Whether the body comes over plain HTTP (decided on the final URL).
    pub fn plain_http(&self) -> bool {
        self.url.scheme() != "https"
    }

    /// The body's length as the server announced it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Bytes read so far.
    pub fn received(&self) -> u64 {
        self.got
    }

    /// How many times the transfer was resumed.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    /// Why reading failed, if it did. An error the caller got from reading
    /// the body is this one when it is set: the transfer failed, not the
    /// bytes.
    pub fn failure(&self) -> Option<&FetchError> {
        self.failure.as_ref()
    }

    /// Takes the failure out (see [`Body::failure`]).
    pub fn take_failure(&mut self) -> Option<FetchError> {
        self.failure.take()
    }

    fn read_body(&mut self, buf: &mut [u8]) -> Result<usize, FetchError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(reader) = self.reader.as_mut() else {
                self.resume()?;
                continue;
            };
            match reader.read(buf) {
                Ok(0) if self.total.is_none_or(|t| t == self.got) => return Ok(0),
                Ok(0) => {
                    log::warn!("{}: transfer ended at {} of {} bytes", self.url, self.got, self.total.unwrap_or(0));
                    self.reader = None;
                }
                Ok(n) => {
                    self.got += n as u64;
                    if self.got > self.limit {
                        return Err(FetchError::TooLarge(self.limit));
                    }
                    let chunk = buf.get(..n).unwrap_or_default();
                    if let Some(tee) = self.tee.as_mut() {
                        tee.write_all(chunk).map_err(FetchError::Io)?;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("{}: transfer broke at {} bytes: {e}", self.url, self.got);
                    self.reader = None;
                }
            }
        }
    }

    /// Asks for the rest of the body (`Range` from the bytes already read,
    /// `If-Range` with the entity tag), within the budget and the resume
    /// limit.
    fn resume(&mut self) -> Result<(), FetchError> {
        loop {
            if self.resumes >= MAX_RESUMES {
                return Err(FetchError::Transport(format!("transfer kept breaking ({} resumes)", self.resumes)));
            }
            self.resumes += 1;
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(FetchError::Budget);
            }
            self.lookup_deadline.set(self.deadline);
            // No redirects here: the resume goes to the URL the body came
            // from, and a 3xx is an unexpected status.
            let mut get = self.agent.request_url("GET", &self.url).timeout(remaining);
            if self.got > 0 {
                get = get.set("Range", &format!("bytes={}-", self.got));
                if let Some(tag) = &self.etag {
                    get = get.set("If-Range", tag);
                }
            }
            let resp = match get.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(code, _)) => return Err(FetchError::Status(code)),
                Err(ureq::Error::Transport(t)) => {
                    log::warn!("{}: resuming at {} bytes: {}", self.url, self.got, describe_transport(&t));
                    continue;
                }
            };
            let length = content_length(&resp);
            match resp.status() {
                // Nothing was read yet: a whole body is the stream.
                200 if self.got == 0 => {
                    self.etag = resp.header("ETag").map(str::to_owned);
                    self.total = length;
                }
                200 => return Err(FetchError::Restart),
                206 => {
                    let from = resp.header("Content-Range").and_then(content_range_start);
                    if from != Some(self.got) {
                        return Err(FetchError::Transport(format!(
                            "server resumed at the wrong offset ({from:?}, expected {})",
                            self.got
                        )));
                    }
                    self.total = length.map(|l| l + self.got);
                }
                other => return Err(FetchError::Status(other)),
            }
            if self.total.is_some_and(|t| t > self.limit) {
                return Err(FetchError::TooLarge(self.limit));
            }
            log::info!("{}: resumed at {} bytes", self.url, self.got);
            self.reader = Some(resp.into_reader());
            return Ok(());
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(io::Error::other(f.to_string()));
        }
        self.read_body(buf).map_err(|e| {
            let err = io::Error::other(e.to_string());
            self.failure = Some(e);
            err
        })
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
    let msg = t.message().map(str::to_owned).unwrap_or_else(|| t.kind().to_string());
    match std::error::Error::source(t) {
        // An I/O error with no words of ureq's own (a TLS handshake that
        // failed, see stateless_tls): its cause alone, not "Network Error: …".
        Some(s) if t.message().is_none() && t.kind() == ureq::ErrorKind::Io => stateless_bundle::error_chain(s),
        Some(s) => format!("{msg}: {}", stateless_bundle::error_chain(s)),
        None => msg,
    }
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
    fn urls_are_judged_on_the_parsed_scheme() {
        for plain in ["http://a/", "HTTP://a/", "Http://a:8080/x", "hTtP://A"] {
            assert!(is_plain_http(plain), "{plain}");
            assert_eq!(parse_url(plain).unwrap().scheme(), "http", "{plain}");
        }
        for tls in ["https://a/", "HTTPS://a/", "hTTps://a:8443"] {
            assert!(!is_plain_http(tls), "{tls}");
            assert_eq!(parse_url(tls).unwrap().scheme(), "https", "{tls}");
        }
        for bad in ["ftp://a/", "a/b", "http://", "file:///etc/passwd", "", "data:text/plain,x"] {
            assert!(matches!(parse_url(bad), Err(FetchError::BadUrl { .. })), "{bad}");
            assert!(is_plain_http(bad) || bad.starts_with("https"), "{bad}");
        }
    }

    #[test]
    fn redirects_never_weaken_the_transport() {
        let tls = Url::parse("https://cfg.example:8443/v1/nodes/n/bundle").unwrap();
        let plain = Url::parse("http://cfg.example/v1/nodes/n/bundle").unwrap();
        // (from, Location, expected target, or why it is refused)
        let scheme = |s: &str| Err(RedirectRefusal::Scheme(s.to_owned()));
        let cases: &[(&Url, &str, Result<&str, RedirectRefusal>)] = &[
            (&tls, "https://cfg.example:8443/other", Ok("https://cfg.example:8443/other")),
            (&tls, "/relative/bundle", Ok("https://cfg.example:8443/relative/bundle")),
            (&tls, "//mirror.example/b", Ok("https://mirror.example/b")),
            (&tls, "HTTPS://mirror.example/b", Ok("https://mirror.example/b")),
            (&tls, "http://cfg.example/b", Err(RedirectRefusal::Downgrade)),
            (&tls, "HTTP://cfg.example/b", Err(RedirectRefusal::Downgrade)),
            (&tls, "hTtP://127.0.0.1:80/b", Err(RedirectRefusal::Downgrade)),
            (&tls, "ftp://cfg.example/b", scheme("ftp")),
            (&tls, "file:///etc/shadow", scheme("file")),
            (&tls, "https://user:pw@cfg.example/b", Err(RedirectRefusal::Credentials)),
            (&plain, "https://cfg.example/b", Ok("https://cfg.example/b")),
            (&plain, "http://mirror.example:8080/b", Ok("http://mirror.example:8080/b")),
            (&plain, "b2", Ok("http://cfg.example/v1/nodes/n/b2")),
            (&plain, "gopher://x/", scheme("gopher")),
            (&plain, "http://[::1/b", Err(RedirectRefusal::NotAUrl(url::ParseError::InvalidIpv6Address))),
        ];
        for (from, location, want) in cases {
            let got = redirect_target(from, location);
            match want {
                Ok(w) => assert_eq!(got.unwrap().as_str(), *w, "{from} -> {location}"),
                Err(why) => match got {
                    Err(e @ FetchError::Redirect { .. }) => {
                        assert!(e.is_refusal() && !e.is_transient(), "{e}");
                        let line = e.to_string();
                        assert!(line.starts_with(&format!("redirect from {from} to ")), "{line}");
                        assert!(line.ends_with(&format!(" refused: {why}")), "{line}");
                        assert!(matches!(e, FetchError::Redirect { why: ref w, .. } if w == why), "{line}");
                    }
                    other => panic!("{from} -> {location}: {other:?}"),
                },
            }
        }
    }

    #[test]
    fn transient_errors() {
        assert!(FetchError::Status(503).is_transient());
        assert!(!FetchError::Status(403).is_transient());
        assert!(FetchError::Transport("refused".into()).is_transient());
        for refusal in
            [FetchError::NoTrust, FetchError::TooLarge(1), FetchError::TooManyRedirects { url: "https://a/".into() }]
        {
            assert!(refusal.is_refusal() && !refusal.is_transient(), "{refusal}");
        }
        assert!(!FetchError::Status(404).is_refusal());
    }
}
