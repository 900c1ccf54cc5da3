//! The HTTP(S) server: front threads that accept connections and read
//! request heads for many connections at once ([`crate::front`]), and
//! worker threads that serve one connection each with blocking I/O, up to a
//! bounded number of connections, threads reused from connection to
//! connection.
//!
//! Why both: the request of a power-cut storm (a node that already has its
//! bundle, answered `304`) is answered by a front thread from the
//! entity-tag cache without waking another thread; every other request is
//! a file send (with `sendfile(2)` on plain HTTP, so bytes go from the page
//! cache to the socket without passing through user space), a small upload
//! or a TLS handshake, for which a blocked worker costs a small stack and
//! no work. When `max_connections` are open, no connection is accepted and
//! further clients wait in the kernel's listen backlog, which is the
//! back-pressure a boot storm needs, and one address may hold at most
//! `max_connections_per_address` of them. Every read and write has a
//! deadline: the TLS handshake and the request head together must arrive
//! within `head_timeout` (slowloris), an idle keep-alive connection is
//! closed after `idle_timeout`, and a response or an upload must move
//! 64 KiB in every `io_timeout`.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use stateless_bundle::error_chain as chain;
use stateless_bundle::header::HEADER_LEN;
use stateless_bundle::{RawHeader, Scope};

use crate::enrol::{EnrolError, EnrolLimits, EnrolRequest};
use crate::http::{self, HeadError, RangeAnswer, RequestHead};
use crate::layout::{DataDir, Target};
use crate::push_auth::{AuthError, Proof, UsedProofs};
use crate::registry::{self, SeenTable, now};
use crate::reports::{RefusalQuota, ReportLimits, UnverifiedReport};
use crate::store::{self, PublishLock};
use crate::{push_review, tls};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data directory.
    pub data: DataDir,
    /// TLS, or plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one address (an IPv6 /64 counts
    /// as one address); 0 for no limit.
    pub max_connections_per_address: usize,
    /// Time allowed for a request head (and the TLS handshake) to arrive.
    pub head_timeout: Duration,
    /// A keep-alive connection idle this long is closed.
    pub idle_timeout: Duration,
    /// A response or an upload that moves less than 64 KiB in this long is
    /// abandoned.
    pub io_timeout: Duration,
    /// Most node ids remembered in `seen.json`.
    pub max_seen: usize,
    /// Most unapproved node ids remembered per address (an IPv6 /64 counts
    /// as one address).
    pub max_seen_per_address: usize,
    /// Largest pushed bundle accepted.
    pub max_push: u64,
    /// How many earlier bundles `accept` keeps when a push is auto-accepted.
    pub keep_history: usize,
    /// How often the table of seen nodes is written.
    pub flush_interval: Duration,
    /// Bounds on node reports (`POST /v1/nodes/{node}/report`).
    pub reports: ReportLimits,
    /// Bounds on TPM enrolments (`POST /v1/nodes/{node}/enrol`).
    pub enrol: EnrolLimits,
}

impl ServerConfig {
    /// Defaults for `data`.
    pub fn new(data: DataDir) -> ServerConfig {
        ServerConfig {
            data,
            tls: None,
            max_connections: 4096,
            max_connections_per_address: DEFAULT_PER_ADDRESS,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            io_timeout: Duration::from_secs(30),
            max_seen: registry::MAX_SEEN,
            max_seen_per_address: registry::MAX_SEEN_PER_ADDRESS,
            max_push: 256 << 20,
            keep_history: store::DEFAULT_HISTORY,
            flush_interval: Duration::from_secs(1),
            reports: ReportLimits::default(),
            enrol: EnrolLimits::default(),
        }
    }
}

/// Connections one address may hold by default: far more than a node
/// needs (one), far fewer than `max_connections`, so that one address
/// cannot take every slot. A site behind a NAT or a proxy raises it.
pub const DEFAULT_PER_ADDRESS: usize = 256;
/// Requests served on one connection before it is closed (so a single
/// client cannot hold a slot forever).
pub(crate) const MAX_REQUESTS_PER_CONNECTION: usize = 1000;
/// Listen backlog: a boot storm connects all at once, and the standard
/// library's 128 would drop SYNs (clients then retry after a second). The
/// kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;
/// `TCP_DEFER_ACCEPT`: a client that connects and sends nothing reaches
/// `accept` (and its head deadline) after about this long.
const DEFER_ACCEPT_SECS: u32 = 1;
/// Workers started with the server.
const INITIAL_WORKERS: usize = 16;
/// Most front threads (one per CPU up to this): each accepts and reads
/// request heads for thousands of connections.
const MAX_FRONTS: usize = 16;
/// Idle workers kept for the next burst; more exit. A storm of 1,000
/// nodes that each fetch a bundle leaves hundreds of workers idle for an
/// instant between requests: with a lower bound they exited and were
/// started again thousands of times a second (clone, stack mapping and
/// unmapping were a tenth of the server's time in a storm). An idle worker
/// costs its touched stack pages.
const MAX_IDLE_WORKERS: usize = 1024;
/// Stack of a connection thread: the request path is shallow.
const THREAD_STACK: usize = 256 * 1024;
/// How often an idle keep-alive connection checks whether its slot is
/// wanted by a client waiting in the backlog.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Entity tags remembered (by file identity) before the cache is cleared.
const ETAG_CACHE: usize = 10_000;

/// Device, inode, size and modification time: a published file's identity.
pub(crate) type FileId = (u64, u64, u64, i64, i64);
/// Entity tags by path, valid while the file's identity is unchanged.
type EtagCache = HashMap<PathBuf, (FileId, Option<Arc<str>>)>;
/// A front thread's copy of the [`EtagCache`] entries it answered from.
pub(crate) type LocalEtags = HashMap<PathBuf, (FileId, Arc<str>)>;

pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    /// Connections open per source address (see [`addr_key`]).
    per_address: Mutex<HashMap<IpAddr, usize>>,
    pub(crate) seen: SeenTable,
    /// Push proofs already accepted (each is good once).
    used_proofs: UsedProofs,
    /// Refused report requests per address.
    report_quota: RefusalQuota,
    /// Enrolment requests per address (every one counts: each may write).
    enrol_quota: RefusalQuota,
    /// Counters for `GET /metrics`.
    pub(crate) metrics: crate::metrics::Metrics,
    etags: Mutex<EtagCache>,
    /// Connections open (at most `max_connections`), whether a front
    /// thread or a worker holds them.
    pub(crate) open: AtomicUsize,
    /// Set while clients wait in the listen backlog because every
    /// connection slot is taken (see [`Shared::full`]).
    pub(crate) waiting: AtomicBool,
    /// Connections handed over to the workers, oldest first.
    queue: Mutex<VecDeque<Job>>,
    /// Signalled when a job is queued.
    ready: Condvar,
    /// Connection workers alive.
    workers: AtomicUsize,
    /// Workers waiting for a job.
    idle: AtomicUsize,
}

/// A bound server; [`Server::run`] serves until the process ends.
#[allow(missing_debug_implementations)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `addr` and loads the server's state.
    pub fn bind(addr: SocketAddr, cfg: ServerConfig) -> io::Result<Server> {
        let listener = listen(addr)?;
        crate::cleanup::stale_files(&cfg.data);
        let seen = SeenTable::load(&cfg.data, cfg.max_seen, cfg.max_seen_per_address);
        let shared = Arc::new(Shared {
            cfg,
            per_address: Mutex::new(HashMap::new()),
            seen,
            used_proofs: UsedProofs::default(),
            report_quota: RefusalQuota::default(),
            enrol_quota: RefusalQuota::default(),
            metrics: crate::metrics::Metrics::default(),
            etags: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            workers: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
        });
        Ok(Server { listener, shared })
    }

    /// The address actually bound (for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves forever: starts the front threads (see [`crate::front`]) and
    /// the first connection workers, then writes the table of seen nodes
    /// every `flush_interval` on this thread.
    pub fn run(self) -> io::Result<()> {
        raise_fd_limit(self.shared.cfg.max_connections);
        self.listener.set_nonblocking(true)?;
        let listener = Arc::new(self.listener);
        let initial = INITIAL_WORKERS.min(self.shared.cfg.max_connections.max(1));
        for _ in 0..initial {
            // More start when connections are handed over and none is
            // idle: a refusal here only means the system is short of threads.
            if !spawn_worker(&self.shared) {
                if self.shared.workers.load(Ordering::Acquire) == 0 {
                    return Err(io::Error::other("cannot start connection threads"));
                }
                break;
            }
        }
        let fronts = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_FRONTS);
        let mut running = Vec::with_capacity(fronts);
        for i in 0..fronts {
            let (sh, l) = (self.shared.clone(), listener.clone());
            let front = crate::front::Front::new(sh, l)?;
            let handle = std::thread::Builder::new()
                .name(format!("front{i}"))
                .stack_size(THREAD_STACK)
                .spawn(move || front.run())
                .map_err(|e| io::Error::other(format!("starting a front thread: {e}")))?;
            running.push(handle);
        }
        loop {
            std::thread::sleep(self.shared.cfg.flush_interval);
            // A front thread never returns; one that ended has panicked,
            // and a server accepting with fewer threads than it started
            // should stop loudly (and be restarted) rather than slow down.
            if running.iter().any(std::thread::JoinHandle::is_finished) {
                let _ = self.shared.seen.flush(&self.shared.cfg.data);
                return Err(io::Error::other(
                    "a front thread stopped; the server cannot accept connections as it should",
                ));
            }
            if let Err(e) = self.shared.seen.flush(&self.shared.cfg.data) {
                log::warn!("writing {}: {e}", self.shared.cfg.data.seen().display());
            }
        }
    }
}

/// Each connection holds a socket and, while sending, the bundle file; the
/// usual soft limit of 1,024 descriptors (systemd's default) would make
/// `accept` fail long before `max_connections`. Raise it as far as the
/// hard limit allows.
fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let want = (max_connections as u64).saturating_mul(2).saturating_add(64);
    let lim = getrlimit(Resource::Nofile);
    let target = lim.maximum.map_or(want, |hard| want.min(hard));
    if lim.current.is_some_and(|cur| cur < target) {
        if let Err(e) = setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(target), ..lim }) {
            log::warn!("raising the open file limit to {target}: {e}");
        }
    }
}

/// Starts a worker if fewer than `max_connections` exist; counts it idle.
fn spawn_worker(shared: &Arc<Shared>) -> bool {
    let max = shared.cfg.max_connections.max(1);
    if shared.workers.fetch_add(1, Ordering::AcqRel) >= max {
        shared.workers.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    shared.idle.fetch_add(1, Ordering::AcqRel);
    let sh = shared.clone();
    match std::thread::Builder::new().stack_size(THREAD_STACK).spawn(move || worker(&sh)) {
        Ok(_) => true,
        Err(e) => {
            log::warn!("starting a connection thread: {e}");
            shared.idle.fetch_sub(1, Ordering::AcqRel);
            shared.workers.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }
}

/// Gives a connection to a worker: the front threads never block, so
/// everything that may (a file sent, a body read, a TLS handshake, a
/// disk write) is served on a worker thread. When no worker is idle,
/// another starts (up to `max_connections`, which also bounds the open
/// connections, so a job never waits for a worker that cannot start).
pub(crate) fn hand_over(shared: &Arc<Shared>, job: Job) {
    if let Ok(mut q) = shared.queue.lock() {
        q.push_back(job);
    }
    if shared.idle.load(Ordering::Acquire) == 0 {
        spawn_worker(shared);
    }
    shared.ready.notify_one();
}

/// A connection worker: serves the connections handed over to it, one at
/// a time, each to its end. Workers beyond [`MAX_IDLE_WORKERS`] idle ones
/// exit. Reusing threads keeps thread creation off the path of every
/// connection.
fn worker(shared: &Arc<Shared>) {
    loop {
        let job = {
            let Ok(mut q) = shared.queue.lock() else { return };
            loop {
                if let Some(job) = q.pop_front() {
                    break job;
                }
                q = match shared.ready.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        if shared.idle.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last idle worker took this job: one more for the next.
            spawn_worker(shared);
        }
        serve_connection(shared, job);
        if shared.idle.fetch_add(1, Ordering::AcqRel) >= MAX_IDLE_WORKERS {
            shared.idle.fetch_sub(1, Ordering::AcqRel);
            shared.workers.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    }
}

/// The key connection and registration limits count by: the IPv4
/// address, or the /64 of an IPv6 address (one host's usual allocation, so
/// its 2^64 addresses count as one).
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// An accepted connection and the slots it holds.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    slot: Slot,
}

/// One of `max_connections` and one of an address's connection slots,
/// given back when dropped.
struct Slot {
    shared: Arc<Shared>,
    /// The address counted, when there is a per-address limit.
    key: Option<IpAddr>,
}

impl Accepted {
    /// Takes the slots for a connection just accepted (already counted in
    /// `open`, which the caller checked against `max_connections`); `None`,
    /// after a short 503, when its address holds too many.
    pub(crate) fn new(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> Option<Accepted> {
        let limit = shared.cfg.max_connections_per_address;
        // Without a limit (a site whose nodes share an address, or a
        // benchmark) nothing is counted.
        let key = (limit != 0).then(|| addr_key(peer.ip()));
        let taken = key.is_none_or(|key| {
            shared.per_address.lock().is_ok_and(|mut map| {
                let n = map.entry(key).or_insert(0);
                if *n >= limit {
                    return false;
                }
                *n += 1;
                true
            })
        });
        if !taken {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            refuse_busy(stream, peer, shared.cfg.tls.is_none());
            return None;
        }
        shared.metrics.opened();
        Some(Accepted { stream, peer, slot: Slot { shared: shared.clone(), key } })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if let Ok(mut map) = self.shared.per_address.lock() {
                if let Some(n) = map.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        map.remove(&key);
                    }
                }
            }
        }
        self.shared.metrics.closed();
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection handed from a front thread to a worker.
pub(crate) struct Job {
    pub(crate) conn: Accepted,
    /// Bytes already read (plain HTTP): a request head not yet answered.
    pub(crate) buf: Vec<u8>,
    /// Requests already answered on the connection.
    pub(crate) served: usize,
    /// When the head (and TLS handshake) of the next request must be in.
    pub(crate) deadline: Instant,
    pub(crate) start: Start,
}

/// What a worker does first with a [`Job`].
pub(crate) enum Start {
    /// Serve requests from `buf` and the socket.
    Serve,
    /// The head deadline passed with part of a head read: answer 408.
    HeadTimedOut,
    /// Write these bytes (the rest of an answer), then go on as `Serve`,
    /// or close (`false`).
    Finish(Vec<u8>, bool),
}

/// An address over its connection limit gets a short 503 without a
/// thread waiting on it: the answer fits in an empty socket buffer, so the
/// non-blocking write either goes at once or is dropped. Over TLS (no
/// handshake yet) the connection is only closed.
fn refuse_busy(stream: TcpStream, peer: SocketAddr, plain: bool) {
    log::debug!("{peer}: too many connections from this address");
    if !plain {
        return;
    }
    let _ = stream.set_nonblocking(true);
    let body = "too many connections from your address\n";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = (&stream).write_all(head.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    // A restarted server must not wait for old connections in TIME_WAIT.
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, LISTEN_BACKLOG)?;
    // Accept a connection once its request (or ClientHello) is there: see
    // `sys`. Without it (an old kernel) every connection waits in epoll
    // for its first bytes instead, which is correct, only slower.
    if let Err(e) = crate::sys::set_defer_accept(&fd, DEFER_ACCEPT_SECS) {
        log::debug!("TCP_DEFER_ACCEPT: {e}");
    }
    Ok(TcpListener::from(fd))
}

/// A client's socket with an optional deadline. While the deadline is
/// set, every read and write waits at most until it: this is what bounds
/// the TLS handshake and the request head together, however the client
/// doles out its bytes (rustls reads the socket in a loop until a record is
/// whole, so a per-read timeout alone would restart with every byte).
///
/// Without a deadline, writes are measured instead: a response must move
/// [`MIN_PROGRESS`] bytes within every `io_timeout`, or the connection is
/// closed. A socket timeout alone would not do: a client that never reads
/// still lets the kernel trickle a few kilobytes now and then (receive
/// queue collapsing), and each trickle would restart it; a 30 MB bundle
/// then holds a connection for minutes.
struct Sock {
    tcp: TcpStream,
    deadline: Option<Instant>,
    progress: Progress,
    /// The status of the last response head written (for the metrics).
    status: u16,
    /// Bytes written so far (for the metrics).
    sent: u64,
}

/// Bytes a response must move within each `io_timeout` to count as
/// progress (a node on the slowest link moves this in well under a second).
const MIN_PROGRESS: u64 = 64 * 1024;

/// The write progress of the current response.
struct Progress {
    io_timeout: Duration,
    /// When the last [`MIN_PROGRESS`] bytes were completed.
    mark: Instant,
    /// Bytes since `mark`.
    bytes: u64,
}

impl Progress {
    fn new(io_timeout: Duration) -> Progress {
        Progress { io_timeout, mark: Instant::now(), bytes: 0 }
    }

    fn until(&self) -> Instant {
        self.mark + self.io_timeout
    }

    fn moved(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_add(n as u64);
        if self.bytes >= MIN_PROGRESS {
            self.mark = Instant::now();
            self.bytes = 0;
        }
    }
}

/// Waits until the socket takes more bytes, at most until `until`.
fn wait_writable(tcp: &TcpStream, until: Instant) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"));
    }
    let ts = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
    let mut fds = [PollFd::new(tcp, PollFlags::OUT)];
    match poll(&mut fds, Some(&ts)) {
        Ok(0) => Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")),
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Sock {
    /// Time left before the deadline, `None` without one.
    fn left(&self) -> io::Result<Option<Duration>> {
        let Some(d) = self.deadline else { return Ok(None) };
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() { Err(io::ErrorKind::TimedOut.into()) } else { Ok(Some(left)) }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = self.left()? {
            self.tcp.set_read_timeout(Some(left))?;
        }
        self.tcp.read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    /// Several buffers in one system call: rustls hands over every TLS
    /// record it has ready at once (a handshake flight, an answer and its
    /// `close_notify`), which then leave in one segment instead of one each.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if let Some(left) = self.left()? {
            self.tcp.set_write_timeout(Some(left))?;
            let n = (&self.tcp).write_vectored(bufs)?;
            self.sent += n as u64;
            return Ok(n);
        }
        use rustix::net::{SendAncillaryBuffer, SendFlags, sendmsg};
        loop {
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            match sendmsg(&self.tcp, bufs, &mut SendAncillaryBuffer::default(), flags) {
                Ok(n) => {
                    self.progress.moved(n);
                    self.sent += n as u64;
                    return Ok(n);
                }
                Err(rustix::io::Errno::AGAIN) => wait_writable(&self.tcp, self.progress.until())?,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A client connection, plain or TLS.
enum Conn {
    Plain(Sock),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, Sock>>),
}

impl Conn {
    fn sock(&self) -> &Sock {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    fn sock_mut(&mut self) -> &mut Sock {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &mut t.sock,
        }
    }

    fn tcp(&self) -> &TcpStream {
        &self.sock().tcp
    }

    /// Sets (or with `None` clears) the deadline of every read and write;
    /// clearing it starts measuring the progress of a new response.
    fn set_deadline(&mut self, deadline: Option<Instant>, io_timeout: Duration) {
        let sock = self.sock_mut();
        sock.deadline = deadline;
        if deadline.is_none() {
            sock.progress = Progress::new(io_timeout);
        }
    }

    /// A TLS connection whose handshake is not finished: nothing can be
    /// answered on it.
    fn handshaking(&self) -> bool {
        matches!(self, Conn::Tls(t) if t.conn.is_handshaking())
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            // Into rustls's buffer only: the records leave on `flush` (or
            // when the buffer is full), so an answer's head, body and
            // `close_notify` go out together.
            Conn::Tls(t) => {
                let n = t.conn.writer().write(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                t.flush()?;
                t.conn.writer().write(buf)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }
}

fn serve_connection(shared: &Shared, job: Job) {
    let cfg = &shared.cfg;
    let Job { conn: Accepted { stream, peer, slot: _slot }, mut buf, served, deadline, start } = job;
    // The front threads read with non-blocking sockets; here every read
    // and write blocks with a deadline (see `Sock`).
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(cfg.io_timeout)).is_err() {
        return;
    }
    let sock = Sock { tcp: stream, deadline: None, progress: Progress::new(cfg.io_timeout), status: 0, sent: 0 };
    let mut conn = match &cfg.tls {
        None => Conn::Plain(sock),
        Some(tls) => match rustls::ServerConnection::new(tls.clone()) {
            Ok(c) => Conn::Tls(Box::new(rustls::StreamOwned::new(c, sock))),
            Err(e) => {
                log::warn!("{peer}: TLS: {e}");
                return;
            }
        },
    };
    match start {
        Start::Serve => {}
        Start::HeadTimedOut => {
            let _ = simple(&mut conn, 408, "request head not received in time", false, None);
            linger(&mut conn);
            return;
        }
        Start::Finish(rest, keep) => {
            if conn.write_all(&rest).and_then(|()| conn.flush()).is_err() {
                return;
            }
            shared.metrics.sent(rest.len() as u64);
            if !keep {
                if !buf.is_empty() {
                    linger(&mut conn);
                }
                return;
            }
        }
    }
    buf.reserve(2048);
    for i in served..MAX_REQUESTS_PER_CONNECTION {
        let wait = if i == 0 { deadline } else { Instant::now() + cfg.idle_timeout };
        // One deadline for the TLS handshake (on the first request) and
        // the whole request head.
        let read = read_head(&mut conn, &mut buf, wait, (i > 0).then_some(shared));
        conn.set_deadline(None, cfg.io_timeout);
        let head = match read {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(ReadHeadError::Timeout { partial: true }) if !conn.handshaking() => {
                let _ = simple(&mut conn, 408, "request head not received in time", false, None);
                linger(&mut conn);
                return;
            }
            Err(ReadHeadError::Timeout { .. }) => return,
            Err(ReadHeadError::Io(e)) => {
                log::debug!("{peer}: {e}");
                return;
            }
            Err(ReadHeadError::Head(e)) => {
                log::debug!("{peer}: {e}");
                let _ = simple(&mut conn, e.status(), &e.to_string(), false, None);
                linger(&mut conn);
                return;
            }
        };
        conn.sock_mut().status = 0;
        let sent_before = conn.sock().sent;
        let handled = handle(shared, &mut conn, &head, &mut buf, peer, i + 1 < MAX_REQUESTS_PER_CONNECTION);
        let sock = conn.sock();
        if sock.status != 0 {
            shared.metrics.request(crate::metrics::kind(&head.method, &head.path), sock.status);
        }
        shared.metrics.sent(sock.sent.saturating_sub(sent_before));
        match handled {
            Ok(true) => {}
            Ok(false) => {
                // Closing with unread input resets the connection, and the
                // client may lose the answer: drain first.
                if !buf.is_empty() || head.content_length > 0 {
                    linger(&mut conn);
                    return;
                }
                break;
            }
            Err(e) => {
                log::debug!("{peer}: {e}");
                return;
            }
        }
    }
    if let Conn::Tls(t) = &mut conn {
        t.conn.send_close_notify();
        let _ = t.flush();
    }
}

enum ReadHeadError {
    Timeout { partial: bool },
    Head(HeadError),
    Io(io::Error),
}

/// Reads until `buf` starts with a whole request head, which is removed
/// from `buf`; bytes after it (a pipelined request or a body) stay. `None`
/// when the client closed the connection between requests.
///
/// With `idle` (between requests on a keep-alive connection), it wakes
/// every [`IDLE_CHECK`] while nothing has arrived, and gives the slot up
/// (`None`) when every connection slot is taken: clients waiting in the
/// backlog are worth more than a connection that may never send again
/// (nginx does the same).
fn read_head(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    deadline: Instant,
    idle: Option<&Shared>,
) -> Result<Option<RequestHead>, ReadHeadError> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((head, n)) = http::parse_head(buf).map_err(ReadHeadError::Head)? {
            buf.drain(..n);
            return Ok(Some(head));
        }
        let waiting = idle.filter(|_| buf.is_empty());
        conn.sock_mut().deadline =
            Some(if waiting.is_some() { deadline.min(Instant::now() + IDLE_CHECK) } else { deadline });
        match conn.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(ReadHeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if let Some(shared) = waiting.filter(|_| Instant::now() < deadline) {
                    if shared.full() {
                        return Ok(None);
                    }
                    continue;
                }
                return Err(ReadHeadError::Timeout { partial: !buf.is_empty() });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadHeadError::Io(e)),
        }
    }
}

/// A response head. `extra` lines end in `\r\n`.
pub(crate) fn head_text(status: u16, len: Option<u64>, extra: &str, keep: bool) -> String {
    let len = len.map(|n| format!("Content-Length: {n}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {}\r\nServer: statelessctl\r\nDate: {}\r\n{len}{extra}{}\r\n",
        http::reason(status),
        http::http_date(SystemTime::now()),
        if keep { "" } else { "Connection: close\r\n" },
    )
}

/// Writes a response head. `extra` lines end in `\r\n`.
fn write_head(conn: &mut Conn, status: u16, len: Option<u64>, extra: &str, keep: bool) -> io::Result<()> {
    conn.sock_mut().status = status;
    conn.write_all(head_text(status, len, extra, keep).as_bytes())
}

/// Sends what is buffered of an answer; on a TLS connection that closes
/// after it, with the `close_notify` in the same write.
fn end_answer(conn: &mut Conn, keep: bool) -> io::Result<()> {
    if let (Conn::Tls(t), false) = (&mut *conn, keep) {
        t.conn.send_close_notify();
    }
    conn.flush()
}

/// A response with a one-line text body.
fn simple(conn: &mut Conn, status: u16, msg: &str, keep: bool, extra: Option<&str>) -> io::Result<bool> {
    let body = format!("{msg}\n");
    let extra = format!("Content-Type: text/plain; charset=utf-8\r\n{}", extra.unwrap_or(""));
    write_head(conn, status, Some(body.len() as u64), &extra, keep)?;
    conn.write_all(body.as_bytes())?;
    end_answer(conn, keep)?;
    Ok(keep)
}

fn handle(
    shared: &Shared,
    conn: &mut Conn,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
    may_keep: bool,
) -> io::Result<bool> {
    let mut keep = may_keep && head.keep_alive();
    // The parser refused every ambiguous framing (several lengths,
    // Transfer-Encoding): this is the body's length.
    let content_length = head.has_content_length.then_some(head.content_length);
    let target = Target::from_url_path(&head.path);
    if head.method == "PUT" {
        return match target {
            Some(Target::Node(node)) => handle_push(shared, conn, head, buf, peer, &node, content_length),
            _ => simple(conn, 405, "only node bundles can be pushed", false, Some("Allow: GET, HEAD\r\n")),
        };
    }
    if head.method == "POST" {
        if let Some(node) = crate::enrol::enrol_path(&head.path) {
            return handle_enrol(shared, conn, head, buf, peer, node, content_length);
        }
        return match crate::reports::report_path(&head.path) {
            Some(node) => handle_report(shared, conn, head, buf, peer, node, content_length),
            None => {
                simple(conn, 405, "only node reports and enrolments can be posted", false, Some("Allow: GET, HEAD\r\n"))
            }
        };
    }
    // A body on anything else is not read: answer, then close so the
    // unread bytes are never taken for the next request.
    if head.content_length > 0 {
        keep = false;
    }
    let get = head.method == "GET";
    if !get && head.method != "HEAD" {
        return simple(conn, 405, "method not allowed", keep, Some("Allow: GET, HEAD, PUT, POST\r\n"));
    }
    if head.path == "/metrics" {
        let text = shared.metrics.render(&shared.cfg.data, now());
        let extra = "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\nCache-Control: no-store\r\n";
        write_head(conn, 200, Some(text.len() as u64), extra, keep)?;
        if get {
            conn.write_all(text.as_bytes())?;
        }
        end_answer(conn, keep)?;
        return Ok(keep);
    }
    let Some((rel, node)) = public_file(&head.path) else {
        return simple(conn, 404, "not found", keep, None);
    };
    if let Some(node) = node {
        shared.seen.saw(&node, &peer.ip().to_string());
    }
    serve_bundle(shared, conn, head, &rel, get, keep)
}

/// The published file a `GET` or `HEAD` of `path` is answered with, and
/// the node whose bundle it is (recorded as seen).
pub(crate) fn public_file(path: &str) -> Option<(String, Option<String>)> {
    if let Some(node) = crate::enrol::tpm_key_path(path) {
        // Served like a bundle, in the clear: only the node's TPM can use it.
        return Some((format!("v1/nodes/{node}/{}", crate::enrol::TPM_KEY_FILE), None));
    }
    if let Some(rel) = crate::enrol::tpm_policies_path(path) {
        // Signed PCR policies, in the clear: each authorises only with the
        // policy key it was signed by.
        return Some((rel, None));
    }
    let target = Target::from_url_path(path)?;
    let node = match &target {
        Target::Node(node) => Some(node.clone()),
        _ => None,
    };
    Some((target.rel_path(), node))
}

fn serve_bundle(
    shared: &Shared,
    conn: &mut Conn,
    head: &RequestHead,
    rel: &str,
    get: bool,
    keep: bool,
) -> io::Result<bool> {
    let path = shared.cfg.data.root().join(rel);
    let (file, st) = match shared.cfg.data.open_public_stat(rel) {
        Ok(f) => f,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return simple(conn, 404, "no bundle here", keep, None);
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            log::warn!("{}: a symbolic link in the data directory is not followed", path.display());
            return simple(conn, 404, "no bundle here", keep, None);
        }
        Err(e) => {
            log::warn!("{}: {e}", path.display());
            return simple(conn, 500, "cannot read the bundle", keep, None);
        }
    };
    let len = u64::try_from(st.st_size).unwrap_or(0);
    let etag = shared.etag(&path, &file, file_id(&st));
    let last_modified = http::http_date(mtime(&st));
    let mut extra = format!("Last-Modified: {last_modified}\r\n");
    if let Some(tag) = &etag {
        extra.push_str(&format!("ETag: {tag}\r\n"));
    }
    if let (Some(inm), Some(tag)) = (head.header("if-none-match"), &etag) {
        if http::none_match(inm, tag) {
            // No Content-Length: on a 304 it would describe the body not sent.
            write_head(conn, 304, None, &extra, keep)?;
            end_answer(conn, keep)?;
            return Ok(keep);
        }
    }
    let mut range = RangeAnswer::Full;
    if let Some(r) = head.header("range") {
        let applies = match head.header("if-range") {
            None => true,
            Some(ir) => etag.as_deref().is_some_and(|t| http::if_range_matches(ir, t)),
        };
        if applies {
            range = http::parse_range(r, len);
        }
    }
    extra.push_str("Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nCache-Control: no-cache\r\n");
    let (status, start, count) = match range {
        RangeAnswer::Full => (200, 0, len),
        RangeAnswer::Partial { start, end } => {
            extra.push_str(&format!("Content-Range: bytes {start}-{end}/{len}\r\n"));
            (206, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            return simple(
                conn,
                416,
                "range not satisfiable",
                keep,
                Some(&format!("Content-Range: bytes */{len}\r\n")),
            );
        }
    };
    write_head(conn, status, Some(count), &extra, keep)?;
    if get {
        send_file(conn, &file, start, count)?;
    }
    end_answer(conn, keep)?;
    Ok(keep)
}

impl Shared {
    /// Whether every connection slot is taken while new clients wait in
    /// the backlog: idle keep-alive connections then give theirs up.
    fn full(&self) -> bool {
        self.waiting.load(Ordering::Acquire) && self.open.load(Ordering::Acquire) >= self.cfg.max_connections.max(1)
    }

    /// The quoted bundle digest of a file, cached by file identity so a boot
    /// storm reads each header once.
    fn etag(&self, path: &Path, file: &File, id: FileId) -> Option<Arc<str>> {
        if let Ok(cache) = self.etags.lock() {
            if let Some((cid, tag)) = cache.get(path) {
                if *cid == id {
                    return tag.clone();
                }
            }
        }
        let mut head = [0u8; HEADER_LEN];
        // Not a bundle (or too short): serve it without an entity tag, as
        // a plain web server would; the loader refuses it.
        let tag: Option<Arc<str>> = file
            .read_exact_at(&mut head, 0)
            .ok()
            .and_then(|()| RawHeader::parse(&head).ok())
            .map(|r| Arc::from(format!("\"{}\"", r.digest_hex())));
        if let Ok(mut cache) = self.etags.lock() {
            if cache.len() >= ETAG_CACHE {
                cache.clear();
            }
            cache.insert(path.to_owned(), (id, tag.clone()));
        }
        tag
    }

    /// The entity tag and modification time of the published file at `rel`
    /// from the cache alone, when the file there is still the one a worker
    /// opened and tagged: one `stat` and no open. The path is resolved
    /// without the worker's refusal of links, which is safe because only
    /// the same inode (same device, inode, size and modification time)
    /// matches, and that file was opened without following any link.
    ///
    /// `local` is the calling thread's copy of the entries it used, checked
    /// the same way, so that the shared cache's lock is taken only when a
    /// file changed.
    pub(crate) fn cached_etag(&self, rel: &str, local: &mut LocalEtags) -> Option<(Arc<str>, SystemTime)> {
        use rustix::fs::{AtFlags, CWD, FileType, statat};
        let path = self.cfg.data.root().join(rel);
        let st = statat(CWD, &path, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if !FileType::from_raw_mode(st.st_mode).is_file() {
            return None;
        }
        let id = file_id(&st);
        if let Some((cid, tag)) = local.get(&path) {
            if *cid == id {
                return Some((tag.clone(), mtime(&st)));
            }
        }
        let tag = {
            let cache = self.etags.lock().ok()?;
            let (cid, tag) = cache.get(&path)?;
            if *cid != id {
                return None;
            }
            tag.clone()?
        };
        if local.len() >= ETAG_CACHE {
            local.clear();
        }
        local.insert(path, (id, tag.clone()));
        Some((tag, mtime(&st)))
    }
}

/// A file's identity for the entity-tag cache.
fn file_id(st: &rustix::fs::Stat) -> FileId {
    (
        st.st_dev,
        st.st_ino,
        u64::try_from(st.st_size).unwrap_or(0),
        st.st_mtime,
        i64::try_from(st.st_mtime_nsec).unwrap_or(0),
    )
}

/// A file's modification time.
fn mtime(st: &rustix::fs::Stat) -> SystemTime {
    u64::try_from(st.st_mtime).map_or(SystemTime::UNIX_EPOCH, |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// Sends `count` bytes of `file` from `start`: `sendfile(2)` on plain
/// connections, a read/encrypt loop on TLS.
fn send_file(conn: &mut Conn, file: &File, start: u64, count: u64) -> io::Result<()> {
    let end = start.saturating_add(count);
    let mut off = start;
    match conn {
        Conn::Plain(sock) => {
            // Non-blocking, so that progress is measured here (see Sock);
            // on an error the connection is dropped anyway.
            sock.tcp.set_nonblocking(true)?;
            while off < end {
                let want = (end - off).min(1 << 30) as usize;
                match rustix::fs::sendfile(&sock.tcp, file, Some(&mut off), want) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        sock.progress.moved(n);
                        sock.sent += n as u64;
                    }
                    Err(rustix::io::Errno::AGAIN) => wait_writable(&sock.tcp, sock.progress.until())?,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            sock.tcp.set_nonblocking(false)?;
        }
        Conn::Tls(t) => {
            let mut buf = vec![0u8; 64 * 1024];
            while off < end {
                let want = ((end - off) as usize).min(buf.len());
                let chunk = buf.get_mut(..want).ok_or_else(|| io::Error::other("buffer"))?;
                let n = file.read_at(chunk, off)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                t.write_all(chunk.get(..n).unwrap_or_default())?;
                off += n as u64;
            }
        }
    }
    Ok(())
}

/// Receives a node's push: proof checked before the body is read, the
/// signature after it is hashed, then the bundle's header, then the
/// generation; only then is anything kept.
fn handle_push(
    shared: &Shared,
    conn: &mut Conn,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
    node: &str,
    content_length: Option<u64>,
) -> io::Result<bool> {
    let cfg = &shared.cfg;
    let data = &cfg.data;
    // Refusals before the body is read close the connection; the unread
    // body is drained first so the client sees the answer, not a reset.
    let unauthorized = |conn: &mut Conn, e: AuthError| {
        log::info!("push for {node} from {peer} refused: {e}");
        let www = format!("WWW-Authenticate: {}\r\n", crate::push_auth::SCHEME);
        refuse_early(conn, 401, &e.to_string(), Some(&www))
    };
    let proof = match Proof::parse(head.header("authorization")) {
        Ok(p) => p,
        Err(e) => return unauthorized(conn, e),
    };
    if proof.node != node {
        return unauthorized(conn, AuthError::WrongNode);
    }
    let record = registry::node_record(data, node).filter(|_| !registry::is_rejected(data, node));
    let Some((record, public)) = record.and_then(|r| r.push_public_key.clone().map(|p| (r, p))) else {
        return unauthorized(conn, AuthError::NotEnrolled);
    };
    if let Err(e) = proof.check_time(now()) {
        return unauthorized(conn, e);
    }
    let Some(len) = content_length else {
        return simple(conn, 411, "send the bundle with a Content-Length", false, None);
    };
    if len > cfg.max_push {
        return refuse_early(conn, 413, &format!("pushed bundles are limited to {} bytes", cfg.max_push), None);
    }
    // Never to an HTTP/1.0 client, which does not know 1xx (RFC 9110 15.2).
    if head.minor > 0 && head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        conn.flush()?;
    }
    let full = |conn: &mut Conn, e: &io::Error| {
        log::warn!("push for {node} from {peer} refused: {}: {e}", data.spool().display());
        refuse_early(conn, 507, "the server has no room for this bundle", None)
    };
    // A push that cannot fit is refused before its body is read. (Room for
    // its review copy is not reserved: a write that fails later is
    // answered the same way, with nothing kept.)
    if room(&data.spool()).is_some_and(|free| free < len) {
        return full(conn, &io::Error::from(io::ErrorKind::StorageFull));
    }
    let mut tmp = match crate::cleanup::spool_file(data) {
        Ok(t) => t,
        Err(e) if out_of_room(&e) => return full(conn, &e),
        Err(e) => return Err(e),
    };
    let mut hasher = Sha256::new();
    let from_buf = (len.min(buf.len() as u64)) as usize;
    let first: Vec<u8> = buf.drain(..from_buf).collect();
    hasher.update(&first);
    if let Err(e) = tmp.as_file_mut().write_all(&first) {
        drop(tmp);
        return if out_of_room(&e) { full(conn, &e) } else { Err(e) };
    }
    let mut left = len - from_buf as u64;
    let mut chunk = vec![0u8; 64 * 1024];
    // The upload must move as a response must (see Sock): MIN_PROGRESS
    // bytes in every io_timeout, so a trickle cannot hold the connection.
    let mut progress = Progress::new(cfg.io_timeout);
    while left > 0 {
        let wait = progress.until().saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "upload stalled"));
        }
        conn.tcp().set_read_timeout(Some(wait))?;
        let want = (left as usize).min(chunk.len());
        let part = chunk.get_mut(..want).ok_or_else(|| io::Error::other("buffer"))?;
        let n = match conn.read(part) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                progress.moved(n);
                n
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let got = part.get(..n).unwrap_or_default();
        hasher.update(got);
        if let Err(e) = tmp.as_file_mut().write_all(got) {
            drop(tmp);
            return if out_of_room(&e) { full(conn, &e) } else { Err(e) };
        }
        left -= n as u64;
    }
    if let Err(e) = tmp.as_file().sync_all() {
        drop(tmp);
        return if out_of_room(&e) { full(conn, &e) } else { Err(e) };
    }
    let digest: [u8; 32] = hasher.finalize().into();
    // Every refusal below removes the upload before answering, so a client
    // that sees the answer never finds it in the spool.
    if let Err(e) =
        proof.verify(&public, "PUT", &head.path, &digest, len).and_then(|()| shared.used_proofs.use_once(&proof, now()))
    {
        drop(tmp);
        return unauthorized(conn, e);
    }
    let keep = head.keep_alive();
    let info = match store::bundle_info(tmp.path()) {
        Ok(i) => i,
        Err(e) => {
            drop(tmp);
            return simple(conn, 422, &format!("not a complete bundle: {}", chain(&e)), keep, None);
        }
    };
    let lock = PublishLock::take(data)?;
    let current = store::published(data, &Target::Node(node.to_owned())).map(|i| i.generation);
    let newest = current.into_iter().chain(push_review::highest(data, node)).max();
    let refusal = if info.scope != Scope::Node(node.to_owned()) {
        Some((422, format!("bundle is scoped {}; a push must be scoped node:{node}", info.scope)))
    } else if let Some(k) = record.key_id.as_deref().filter(|k| *k != info.key_id) {
        Some((422, format!("bundle is sealed for key {}, node {node} uses key {k}", info.key_id)))
    } else if let Some(newest) = newest.filter(|g| info.generation <= *g) {
        let g = info.generation;
        Some((409, format!("generation {g} is not newer than generation {newest} (published or awaiting review)")))
    } else {
        None
    };
    if let Some((status, msg)) = refusal {
        drop(tmp);
        drop(lock);
        return simple(conn, status, &msg, keep, None);
    }
    let address = peer.ip().to_string();
    match push_review::store(data, node, tmp, &info, &address, store::rfc3339(SystemTime::now())) {
        Ok(_) => {}
        Err(e) if out_of_room(&e) => {
            drop(lock);
            return full(conn, &e);
        }
        Err(e) => return Err(e),
    }
    let detail = format!("generation {} digest {} from {address}", info.generation, info.digest);
    store::audit(data, "push-received", Some(node), detail, "server".into())?;
    let (status, msg) = if record.auto_accept {
        match push_review::accept(data, node, info.generation, cfg.keep_history, &lock) {
            Ok(p) => {
                let detail = format!("generation {} digest {} (auto-accept)", p.info.generation, p.info.digest);
                store::audit(data, "accept-push", Some(node), detail, "server".into())?;
                (201, format!("published generation {}", info.generation))
            }
            Err(e) => {
                log::warn!("auto-accepting push of {node}: {}", chain(&e));
                (500, "stored for review; publishing failed".to_owned())
            }
        }
    } else {
        log::info!("push of {node} generation {} from {address} awaits review", info.generation);
        (202, format!("generation {} awaits review", info.generation))
    };
    // Not held while a slow client reads the answer.
    drop(lock);
    simple(conn, status, &msg, keep, None)
}

/// Receives a node's boot report (see [`crate::reports`]): the quota,
/// then the proof, enrolment and time before the body is read, the size
/// bound, then the signature over the body, then the body's shape.
fn handle_report(
    shared: &Shared,
    conn: &mut Conn,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
    node: &str,
    content_length: Option<u64>,
) -> io::Result<bool> {
    let cfg = &shared.cfg;
    let limits = &cfg.reports;
    let addr = addr_key(peer.ip());
    // Every early answer closes the connection (the body stays unread).
    let refuse = |conn: &mut Conn, status: u16, msg: &str, extra: Option<&str>| {
        shared.report_quota.refused(addr, now());
        log::info!("report for {node} from {peer} refused: {msg}");
        refuse_early(conn, status, msg, extra)
    };
    if shared.report_quota.exhausted(addr, limits.refusals_per_minute, now()) {
        log::debug!("report for {node} from {peer}: address over its refusal quota");
        return refuse_early(conn, 429, "too many refused reports from your address", Some("Retry-After: 60\r\n"));
    }
    let www = format!("WWW-Authenticate: {}\r\n", crate::push_auth::SCHEME);
    let proof = match Proof::parse(head.header("authorization")) {
        Ok(p) if p.node == node => p,
        Ok(_) => return refuse(conn, 401, &AuthError::WrongNode.to_string(), Some(&www)),
        Err(e) => return refuse(conn, 401, &e.to_string(), Some(&www)),
    };
    let record = registry::node_record(&cfg.data, node).filter(|_| !registry::is_rejected(&cfg.data, node));
    let Some(public) = record.and_then(|r| r.push_public_key) else {
        return refuse(conn, 403, "node is not enrolled for push, so it cannot report", None);
    };
    if let Err(e) = proof.check_time(now()) {
        return refuse(conn, 401, &e.to_string(), Some(&www));
    }
    let Some(len) = content_length else {
        return refuse(conn, 411, "send the report with a Content-Length", None);
    };
    if len > limits.max_body {
        return refuse(conn, 413, &format!("reports are limited to {} bytes", limits.max_body), None);
    }
    if head.minor > 0 && head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        conn.flush()?;
    }
    let body = read_body(conn, buf, len, cfg.io_timeout)?;
    let digest: [u8; 32] = Sha256::digest(&body).into();
    if let Err(e) = proof
        .verify(&public, "POST", &head.path, &digest, len)
        .and_then(|()| shared.used_proofs.use_once(&proof, now()))
    {
        shared.report_quota.refused(addr, now());
        log::info!("report for {node} from {peer} refused: {e}");
        return simple(conn, 401, &e.to_string(), head.keep_alive(), Some(&www));
    }
    let keep = head.keep_alive();
    let report = match (UnverifiedReport { node, body: &body }).check() {
        Ok(r) => r,
        Err(e) => return simple(conn, 422, &e.to_string(), keep, None),
    };
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    match crate::reports::store(&cfg.data, report, &peer.ip().to_string(), now_ms, limits) {
        Ok(_) => simple(conn, 201, "report kept", keep, None),
        Err(e) if out_of_room(&e) => simple(conn, 507, "the server has no room for this report", keep, None),
        Err(e) => {
            log::warn!("keeping the report of {node}: {e}");
            simple(conn, 500, "cannot keep the report", keep, None)
        }
    }
}

/// Receives a TPM enrolment (see [`crate::enrol`]): the per-address rate
/// (refusals and new enrolments count, as each new one writes), a rejected
/// node, the size bound, then the body's shape. It also records the node as seen, so it is
/// listed as pending with its enrolment.
fn handle_enrol(
    shared: &Shared,
    conn: &mut Conn,
    head: &RequestHead,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
    node: &str,
    content_length: Option<u64>,
) -> io::Result<bool> {
    let cfg = &shared.cfg;
    let addr = addr_key(peer.ip());
    let early = |conn: &mut Conn, status: u16, msg: &str, extra: Option<&str>| {
        log::info!("enrolment of {node} from {peer} refused: {msg}");
        refuse_early(conn, status, msg, extra)
    };
    // Counted: refusals and new enrolments (each writes a file); the same
    // enrolment again, from a node rebooting while it waits, is not.
    let early = |conn: &mut Conn, status: u16, msg: &str, extra: Option<&str>| {
        shared.enrol_quota.refused(addr, now());
        early(conn, status, msg, extra)
    };
    if shared.enrol_quota.exhausted(addr, cfg.enrol.per_minute, now()) {
        log::debug!("enrolment of {node} from {peer}: address over its quota");
        return refuse_early(conn, 429, "too many enrolments from your address", Some("Retry-After: 60\r\n"));
    }
    if registry::is_rejected(&cfg.data, node) {
        return early(conn, 403, "node is rejected", None);
    }
    let Some(len) = content_length else {
        return early(conn, 411, "send the enrolment with a Content-Length", None);
    };
    if len > crate::enrol::MAX_BODY {
        return early(conn, 413, &format!("enrolments are limited to {} bytes", crate::enrol::MAX_BODY), None);
    }
    if head.minor > 0 && head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        conn.flush()?;
    }
    let body = read_body(conn, buf, len, cfg.io_timeout)?;
    let keep = head.keep_alive();
    let req = match EnrolRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            shared.enrol_quota.refused(addr, now());
            return simple(conn, 422, &e.to_string(), keep, None);
        }
    };
    let address = peer.ip().to_string();
    shared.seen.saw(node, &address);
    let stored = crate::enrol::store(&cfg.data, node, req, &address, now(), &cfg.enrol);
    if !matches!(stored, Ok(false)) {
        shared.enrol_quota.refused(addr, now());
    }
    match stored {
        Ok(true) => {
            log::info!("{node} enrolled its TPM from {peer}; waiting for approval");
            simple(conn, 201, "enrolment kept; waiting for approval", keep, None)
        }
        Ok(false) => simple(conn, 200, "enrolment unchanged; waiting for approval", keep, None),
        Err(e @ EnrolError::Conflict(_)) => simple(conn, 409, &e.to_string(), keep, None),
        Err(e @ EnrolError::Full) => simple(conn, 503, &e.to_string(), keep, None),
        Err(EnrolError::Io(e)) if out_of_room(&e) => simple(conn, 507, "the server has no room", keep, None),
        Err(e) => {
            log::warn!("keeping the enrolment of {node}: {e}");
            simple(conn, 500, "cannot keep the enrolment", keep, None)
        }
    }
}

/// Reads a small body of `len` bytes (bounded by the caller) that must
/// move as an upload must (see [`Sock`]).
fn read_body(conn: &mut Conn, buf: &mut Vec<u8>, len: u64, io_timeout: Duration) -> io::Result<Vec<u8>> {
    let from_buf = (len.min(buf.len() as u64)) as usize;
    let mut body: Vec<u8> = buf.drain(..from_buf).collect();
    let want = usize::try_from(len).map_err(io::Error::other)?;
    let mut progress = Progress::new(io_timeout);
    let mut chunk = [0u8; 16 * 1024];
    while body.len() < want {
        let wait = progress.until().saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "upload stalled"));
        }
        conn.tcp().set_read_timeout(Some(wait))?;
        let n = (want - body.len()).min(chunk.len());
        let part = chunk.get_mut(..n).ok_or_else(|| io::Error::other("buffer"))?;
        match conn.read(part) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                progress.moved(n);
                body.extend_from_slice(part.get(..n).unwrap_or_default());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(body)
}

/// Bytes free for an unprivileged writer on the filesystem of `dir`, if
/// known.
fn room(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether a write failed for want of space (or quota).
fn out_of_room(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || e.kind() == io::ErrorKind::FileTooLarge
        || [Errno::NOSPC, Errno::DQUOT, Errno::FBIG].iter().any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

/// After an early answer on a connection that is closing: stop sending,
/// then read and discard what the client still sends, for a short while, so
/// that closing with unread data does not reset the connection before the
/// client has read the answer.
/// Answers `status` and ends the connection before its body is read (the
/// client still sees the answer: see [`linger`]). Always `Ok(false)`: the
/// connection is not kept.
fn refuse_early(conn: &mut Conn, status: u16, msg: &str, extra: Option<&str>) -> io::Result<bool> {
    simple(conn, status, msg, false, extra)?;
    linger(conn);
    Ok(false)
}

fn linger(conn: &mut Conn) {
    if let Conn::Tls(t) = conn {
        t.conn.send_close_notify();
        let _ = t.flush();
    }
    let sock = conn.tcp();
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 16 * 1024];
    let mut raw: &TcpStream = sock;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || raw.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match raw.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Loads a certificate chain and private key (PEM) for the server.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, tls::TlsError> {
    tls::load(cert, key)
}
